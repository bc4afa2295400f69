//! The order checker of bench subscribers: the ack instants a pusher shares with its
//! subscribers ([`Clock`]), and one subscriber's bookkeeping ([`Checker`]): that every line came
//! once and in order, that line `seq`s grew, and each line's latency from its batch's ack. It
//! reads no socket (`subscribe` feeds it the lines it finds) and prints nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::client::parse_index;
use super::report::{Histogram, Violations};
use super::system::MonoOrigin;
use super::SUBSCRIBERS_READY_TIMEOUT;

/// Ack instants shared between a pusher and its subscribers.
pub(super) struct Clock {
    pub(super) origin: MonoOrigin,
    /// Per batch: `CLOCK_MONOTONIC` microseconds at which the pusher got its ack, plus one (0:
    /// not acknowledged yet).
    acks: Vec<AtomicU64>,
    /// Subscribers that saw the deployment.
    pub(super) ready: AtomicUsize,
    ready_changed: tokio::sync::Notify,
    /// Notified (repeatedly) once the pusher is done: subscribers stop after a grace period.
    pub(super) pusher_done: tokio::sync::Notify,
}

impl Clock {
    pub(super) fn new(batches: u64) -> Arc<Clock> {
        Arc::new(Clock {
            origin: MonoOrigin::now(),
            acks: (0..batches).map(|_| AtomicU64::new(0)).collect(),
            ready: AtomicUsize::new(0),
            ready_changed: tokio::sync::Notify::new(),
            pusher_done: tokio::sync::Notify::new(),
        })
    }

    pub(super) fn ack_mono(&self, batch: u64, mono: u64) {
        if let Some(slot) = self.acks.get(batch as usize) {
            slot.store(mono + 1, Ordering::Release);
        }
    }

    pub(super) fn ack_of(&self, batch: u64) -> u64 {
        self.acks
            .get(batch as usize)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }

    pub(super) fn mark_ready(&self) {
        self.ready.fetch_add(1, Ordering::AcqRel);
        self.ready_changed.notify_one();
    }

    /// Waits until `want` subscribers saw the deployment, at most `SUBSCRIBERS_READY_TIMEOUT`.
    pub(super) async fn wait_ready(&self, want: usize) -> usize {
        let deadline = Instant::now() + SUBSCRIBERS_READY_TIMEOUT;
        while self.ready.load(Ordering::Acquire) < want {
            if tokio::time::timeout_at(deadline, self.ready_changed.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        self.ready.load(Ordering::Acquire)
    }

    /// Tells subscribers, every 100 ms until aborted, that the pusher is done.
    pub(super) fn wake_when_done(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let clock = self.clone();
        tokio::spawn(async move {
            loop {
                clock.pusher_done.notify_waiters();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

/// What one subscriber (or, merged, all of them) saw.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct SubscriberResult {
    pub(super) deliveries: u64,
    pub(super) latency: Histogram,
    pub(super) before_ack: u64,
    /// Deliveries whose batch ack the pusher never saw (left out of the latency).
    pub(super) never_acked: u64,
    /// `CLOCK_MONOTONIC` µs of the last line's arrival.
    pub(super) last_arrival_mono: Option<u64>,
    /// `CLOCK_MONOTONIC` µs at which the last line stored before the subscriber joined arrived
    /// (the latest of all subscribers, merged).
    pub(super) mark_arrival_mono: Option<u64>,
    pub(super) violations: Violations,
    /// CPU seconds of the subscriber child process, when there is one.
    pub(super) cpu_secs: f64,
}

impl SubscriberResult {
    pub(super) fn merge(&mut self, r: &SubscriberResult) {
        self.deliveries += r.deliveries;
        self.before_ack += r.before_ack;
        self.never_acked += r.never_acked;
        self.latency.merge(&r.latency);
        self.violations.add(&r.violations);
        self.last_arrival_mono = self.last_arrival_mono.max(r.last_arrival_mono);
        self.mark_arrival_mono = self.mark_arrival_mono.max(r.mark_arrival_mono);
        self.cpu_secs += r.cpu_secs;
    }
}

/// How long a subscriber keeps waiting for missing lines after the pusher finished.
pub(super) const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// One subscriber's bookkeeping: which lines came, in which order, and when.
pub(super) struct Checker {
    pub(super) clock: Arc<Clock>,
    lines: u64,
    batch: u64,
    /// Lines below this index were stored before the subscriber joined: counted and checked,
    /// but without a latency (their acks are not tracked); the last of them is the mark.
    joined_at: u64,
    expected: u64,
    received: Vec<bool>,
    unique: u64,
    last_seq: Option<u64>,
    /// (batch, arrival µs) of lines whose latency is not settled yet.
    pending: VecDeque<(u64, u64)>,
    pub(super) result: SubscriberResult,
}

impl Checker {
    pub(super) fn new(clock: Arc<Clock>, lines: u64, batch: u64, joined_at: Option<u64>) -> Self {
        Self {
            clock,
            lines,
            batch,
            joined_at: joined_at.unwrap_or(0),
            expected: 0,
            received: vec![false; lines as usize],
            unique: 0,
            last_seq: None,
            pending: VecDeque::new(),
            result: SubscriberResult::default(),
        }
    }

    /// A line whose content starts with its index arrived at `now` (monotonic µs).
    pub(super) fn line(&mut self, content: &[u8], now: u64) {
        let Some(index) = parse_index(content).filter(|i| *i < self.lines) else {
            self.result.violations.unparsable += 1;
            return;
        };
        let r = &mut self.result;
        r.deliveries += 1;
        r.last_arrival_mono = Some(now);
        if index + 1 == self.joined_at {
            r.mark_arrival_mono = Some(now);
        }
        if self.received[index as usize] {
            r.violations.duplicates += 1;
        } else {
            self.received[index as usize] = true;
            self.unique += 1;
            if index < self.expected {
                r.violations.out_of_order += 1;
            } else {
                self.expected = index + 1;
            }
        }
        if index >= self.joined_at {
            self.pending
                .push_back(((index - self.joined_at) / self.batch, now));
        }
    }

    pub(super) fn seq(&mut self, seq: u64) {
        if self.last_seq.is_some_and(|last| seq <= last) {
            self.result.violations.seq_regressions += 1;
        }
        self.last_seq = Some(seq);
    }

    pub(super) fn complete(&self) -> bool {
        self.unique == self.lines
    }

    /// Settles the latency of pending lines whose ack is known (all of them when `force`).
    pub(super) fn resolve(&mut self, force: bool) {
        while let Some(&(b, arrival)) = self.pending.front() {
            let ack = self.clock.ack_of(b);
            if ack == 0 && !force {
                break;
            }
            self.pending.pop_front();
            if ack == 0 {
                self.result.never_acked += 1;
                continue;
            }
            let ack = ack - 1;
            if arrival < ack {
                self.result.before_ack += 1;
            }
            self.result.latency.record(arrival.saturating_sub(ack));
        }
    }

    pub(super) async fn finish(mut self) -> SubscriberResult {
        // The last lines often arrive before the pusher has read their batch's ack: wait for
        // the pusher to finish (it has every ack then) before settling their latency.
        if self
            .pending
            .front()
            .is_some_and(|(b, _)| self.clock.ack_of(*b) == 0)
        {
            let _ = tokio::time::timeout(DRAIN_GRACE, self.clock.pusher_done.notified()).await;
        }
        self.resolve(true);
        self.result.violations.missing = self.lines - self.unique;
        self.result
    }
}
