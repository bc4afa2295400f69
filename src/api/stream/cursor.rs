//! The subscriber's deduplication cursor: what one socket already sent of each deployment, and
//! what to do with the next live event or catch-up so that, whatever interleaving of live
//! events, `Lagged` gaps and store reads a subscriber goes through, it sends each stored line
//! exactly once, in store order, and each status after the lines before it (DESIGN.md, "Hub and
//! the live stream").
//!
//! Pure: no I/O, no tokio, no store, no clock. It decides; `subscriber` reads the store, writes
//! the socket and reports back what it sent ([`Cursor::sent_lines`], [`Cursor::sent_status`]).
//! Statuses compare by `Status`'s `Ord`, since a deployment's statuses only increase.
//!
//! A subscriber may ask for fewer lines ([`Logs`]): none at all (statuses only), or only the
//! last N of each deployment in its first replay. Both are positions, not filters: the cursor
//! counts the lines it will never send as sent, so the rule above holds for what is sent.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{DeploymentId, LineNo};
use crate::status::Status;

/// Deployments a socket remembers (for deduplication) before it forgets finished ones, oldest
/// first. Events of a finished deployment stop coming, so forgetting it is safe.
pub(super) const MAX_TRACKED_DEPLOYMENTS: usize = 256;

/// What a socket already sent of one deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Sent {
    /// The last line sent (every line up to it was sent, in order).
    pub line: LineNo,
    /// The last status sent (statuses only increase, see `Status`).
    pub status: Option<Status>,
    /// The last status sent is terminal: nothing more will come.
    pub finished: bool,
}

/// A live hub event as the cursor needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Live {
    /// The deployment was created.
    New,
    /// The deployment moved to `status` after line `last_line`.
    Status { status: Status, last_line: LineNo },
    /// Lines `first..first + count` were stored.
    Logs { first: LineNo, count: u64 },
}

/// What the subscriber does with a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Already sent (or nothing to send).
    Skip,
    /// Send the event's frames from the `skip_frames`-th on. The cursor already counts them as
    /// sent.
    Send { skip_frames: usize },
    /// Something is missing before this event (a gap, an unknown deployment, an event too big
    /// to render for everyone): catch the deployment up from the store, with [`Cursor::catch_up`].
    /// `announce`: send `new` first if the deployment is unknown.
    CatchUp { announce: bool },
}

/// One step of a deployment's catch-up from the store, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CatchUpStep {
    /// Send the stored lines after the last one sent, up to `until` included (the read may end
    /// sooner; report what was sent with [`Cursor::sent_lines`]).
    Lines { until: LineNo },
    /// Send this status, at the last line sent, then [`Cursor::sent_status`].
    Status(Status),
}

/// Which log lines a subscriber asked for (the stream's `logs` and `tail` options).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Logs {
    /// Every line: the replay then live (what Scalingo's clients rely on).
    #[default]
    All,
    /// No log event at all, replayed or live: statuses (and `new`) only.
    Statuses,
    /// The first replay sends only the last N lines of each deployment it was not told to
    /// resume; everything after them (and every deployment created later) goes out whole.
    Tail(u64),
}

/// What one socket already sent, per deployment; see the module doc.
#[derive(Debug, Default)]
pub(super) struct Cursor {
    sent: BTreeMap<DeploymentId, Sent>,
    logs: Logs,
    /// Deployments whose first replay began and has yet to skip to its tail ([`Logs::Tail`]).
    tail_pending: BTreeSet<DeploymentId>,
}

impl Cursor {
    /// A cursor sending the lines `logs` asks for.
    pub fn new(logs: Logs) -> Self {
        Self {
            logs,
            ..Self::default()
        }
    }

    /// Starts `id` after line `after` (the client has everything up to it).
    pub fn resume(&mut self, id: DeploymentId, after: LineNo) {
        self.sent.insert(
            id,
            Sent {
                line: after,
                ..Sent::default()
            },
        );
    }

    /// What was sent of `id` (`None` when unknown, or forgotten).
    pub fn sent(&self, id: DeploymentId) -> Option<Sent> {
        self.sent.get(&id).copied()
    }

    /// Decides what to do with a live event of `id` whose rendered frames number `frames_len`
    /// (0 for an event too big to render for everyone). A `Send` is counted as sent at once.
    pub fn on_event(&mut self, id: DeploymentId, live: Live, frames_len: usize) -> Step {
        let Some(sent) = self.sent(id) else {
            return match live {
                Live::New => {
                    self.track(id, Sent::default());
                    Step::Send { skip_frames: 0 }
                }
                // A deployment we know nothing of (its `new` was missed): read it from the store.
                _ => Step::CatchUp { announce: true },
            };
        };
        match live {
            Live::New => Step::Skip,
            Live::Status { status, last_line } => {
                if last_line > sent.line {
                    // Lines before this status are missing: the store has them, and the status.
                    return Step::CatchUp { announce: false };
                }
                if sent.status.is_some_and(|s| s >= status) {
                    return Step::Skip;
                }
                self.sent_status(id, status);
                Step::Send { skip_frames: 0 }
            }
            Live::Logs { first, count } => {
                let end = (first.0 + count).saturating_sub(1);
                if count == 0 || end <= sent.line.0 {
                    return Step::Skip;
                }
                if self.logs == Logs::Statuses {
                    // Never sent, but counted: the statuses after them need not wait.
                    if let Some(entry) = self.sent.get_mut(&id) {
                        entry.line = LineNo(end);
                    }
                    return Step::Skip;
                }
                if first.0 > sent.line.0 + 1 || frames_len as u64 != count {
                    // A gap, or an event too big to render for everyone: read the store.
                    return Step::CatchUp { announce: false };
                }
                if let Some(entry) = self.sent.get_mut(&id) {
                    entry.line = LineNo(end);
                }
                Step::Send {
                    skip_frames: (sent.line.0 + 1 - first.0) as usize,
                }
            }
        }
    }

    /// Whether a replay (or a catch-up after a lag) should look at `id`: `None` when it is
    /// finished (everything was sent), else whether to announce it (`announce` and unknown).
    pub fn replay(&self, id: DeploymentId, announce: bool) -> Option<bool> {
        match self.sent.get(&id) {
            Some(sent) if sent.finished => None,
            known => Some(announce && known.is_none()),
        }
    }

    /// Forgets `id` (deleted, or another app's).
    pub fn forget(&mut self, id: DeploymentId) {
        self.sent.remove(&id);
        self.tail_pending.remove(&id);
    }

    /// Starts catching `id` up; returns whether to send its `new` first (`announce` and it was
    /// unknown). Then the subscriber reads the status history and asks [`Cursor::catch_up`].
    /// An unknown deployment caught up without `announce` is in the first replay: with
    /// [`Logs::Tail`], that catch-up starts at its tail.
    pub fn begin_catch_up(&mut self, id: DeploymentId, announce: bool) -> bool {
        let sent = self.sent(id);
        if sent.is_none() && !announce && matches!(self.logs, Logs::Tail(_)) {
            self.tail_pending.insert(id);
        }
        self.track(id, sent.unwrap_or_default());
        announce && sent.is_none()
    }

    /// The steps that bring `id` up to its stored record (`current` status after `last_line`):
    /// each status change it missed, from `history` (the hub's, read after the record), at its
    /// line number, then the current status after every line stored when the record was read.
    /// Lines the subscriber did not ask for ([`Logs`]) are counted as sent first, so the steps
    /// hold no `Lines` for them.
    pub fn catch_up(
        &mut self,
        id: DeploymentId,
        history: Vec<(Status, LineNo)>,
        current: Status,
        last_line: LineNo,
        announce: bool,
    ) -> Vec<CatchUpStep> {
        let skip_to = match self.logs {
            Logs::All => None,
            Logs::Statuses => Some(last_line),
            Logs::Tail(count) => self
                .tail_pending
                .remove(&id)
                .then(|| LineNo(last_line.0.saturating_sub(count))),
        };
        if let Some(skip_to) = skip_to {
            if let Some(entry) = self.sent.get_mut(&id) {
                entry.line = entry.line.max(skip_to);
            }
        }
        let sent = self.sent(id).unwrap_or_default();
        let mut statuses: Vec<(Status, LineNo)> = history
            .into_iter()
            .filter(|(status, _)| sent.status.is_none_or(|s| s < *status))
            .collect();
        if statuses.is_empty() || (sent.status.is_none() && !announce) {
            // A first replay sends the current status only (the spec's replay); so does a
            // catch-up without history (the process restarted since).
            statuses.retain(|(status, _)| *status == current);
        }
        if !statuses.iter().any(|(status, _)| *status == current)
            && sent.status.is_none_or(|s| s < current)
        {
            statuses.push((current, last_line));
        }
        let mut steps = Vec::with_capacity(2 * statuses.len() + 2);
        for (status, at_line) in statuses {
            steps.push(CatchUpStep::Lines { until: at_line });
            if status == current {
                // The current status goes after every line stored when it was read.
                steps.push(CatchUpStep::Lines { until: last_line });
            }
            steps.push(CatchUpStep::Status(status));
        }
        steps.push(CatchUpStep::Lines { until: last_line });
        steps
    }

    /// Records that every line of `id` up to `last` was sent.
    pub fn sent_lines(&mut self, id: DeploymentId, last: LineNo) {
        let sent = Sent {
            line: last,
            ..self.sent(id).unwrap_or_default()
        };
        self.track(id, sent);
    }

    /// Records that `status` was sent for `id` (a known deployment).
    pub fn sent_status(&mut self, id: DeploymentId, status: Status) {
        if let Some(sent) = self.sent.get_mut(&id) {
            sent.status = Some(status);
            sent.finished = status.is_terminal();
        }
    }

    /// Records what was sent of `id`, forgetting the oldest finished deployments beyond
    /// [`MAX_TRACKED_DEPLOYMENTS`].
    fn track(&mut self, id: DeploymentId, sent: Sent) {
        self.sent.insert(id, sent);
        while self.sent.len() > MAX_TRACKED_DEPLOYMENTS {
            let Some(oldest) = self
                .sent
                .iter()
                .find(|(other, s)| s.finished && **other != id)
                .map(|(other, _)| *other)
            else {
                break;
            };
            self.sent.remove(&oldest);
        }
    }
}

/// Whether a deployment belongs in the replay after auth: it is not finished, or it finished
/// at most `window` before `now` (DESIGN: "not finished or finished in the last few minutes").
pub fn in_replay_window(
    finished_at: Option<time::OffsetDateTime>,
    now: time::OffsetDateTime,
    window: std::time::Duration,
) -> bool {
    finished_at.is_none_or(|at| at >= now - window)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    fn id(n: u8) -> DeploymentId {
        let mut bytes = [0; 16];
        bytes[15] = n;
        DeploymentId::from_bytes(bytes)
    }

    #[test]
    fn live_lines_already_sent_are_skipped_and_the_rest_sent_from_the_first_new_one() {
        let mut cursor = Cursor::default();
        cursor.resume(id(1), LineNo(5));
        let logs = |first, count| Live::Logs {
            first: LineNo(first),
            count,
        };
        assert_eq!(cursor.on_event(id(1), logs(1, 5), 5), Step::Skip);
        assert_eq!(
            cursor.on_event(id(1), logs(4, 4), 4),
            Step::Send { skip_frames: 2 }
        );
        assert_eq!(cursor.sent(id(1)).map(|s| s.line), Some(LineNo(7)));
        assert_eq!(
            cursor.on_event(id(1), logs(9, 1), 1),
            Step::CatchUp { announce: false },
            "line 8 is missing"
        );
        assert_eq!(
            cursor.on_event(id(1), logs(8, 3), 0),
            Step::CatchUp { announce: false },
            "an event too big to render is read from the store"
        );
        assert_eq!(
            cursor.on_event(id(2), logs(1, 1), 1),
            Step::CatchUp { announce: true },
            "an unknown deployment is read from the store and announced"
        );
    }

    #[test]
    fn a_status_goes_out_once_and_only_after_the_lines_before_it() {
        let mut cursor = Cursor::default();
        assert_eq!(
            cursor.on_event(id(1), Live::New, 1),
            Step::Send { skip_frames: 0 }
        );
        assert_eq!(cursor.on_event(id(1), Live::New, 1), Step::Skip);
        let status = |status, last_line| Live::Status {
            status,
            last_line: LineNo(last_line),
        };
        assert_eq!(
            cursor.on_event(id(1), status(Status::Building, 0), 1),
            Step::Send { skip_frames: 0 }
        );
        assert_eq!(
            cursor.on_event(id(1), status(Status::Building, 0), 1),
            Step::Skip
        );
        assert_eq!(
            cursor.on_event(id(1), status(Status::Pushing, 3), 1),
            Step::CatchUp { announce: false },
            "lines 1..=3 were not sent"
        );
        cursor.sent_lines(id(1), LineNo(3));
        assert_eq!(
            cursor.on_event(id(1), status(Status::Pushing, 3), 1),
            Step::Send { skip_frames: 0 }
        );
        assert_eq!(
            cursor.on_event(id(1), status(Status::Building, 0), 1),
            Step::Skip,
            "statuses only increase"
        );
        assert_eq!(
            cursor.on_event(id(1), status(Status::Success, 3), 1),
            Step::Send { skip_frames: 0 }
        );
        assert_eq!(cursor.replay(id(1), true), None, "finished: nothing more");
    }

    #[test]
    fn a_first_replay_sends_the_current_status_after_the_stored_lines() {
        let mut cursor = Cursor::default();
        assert!(!cursor.begin_catch_up(id(1), false));
        let history = vec![(Status::Building, LineNo(0)), (Status::Pushing, LineNo(4))];
        assert_eq!(
            cursor.catch_up(id(1), history, Status::Pushing, LineNo(9), false),
            [
                CatchUpStep::Lines { until: LineNo(4) },
                CatchUpStep::Lines { until: LineNo(9) },
                CatchUpStep::Status(Status::Pushing),
                CatchUpStep::Lines { until: LineNo(9) },
            ]
        );
    }

    #[test]
    fn a_catch_up_sends_every_missed_status_at_its_line() {
        let mut cursor = Cursor::default();
        cursor.resume(id(1), LineNo(2));
        cursor.sent_status(id(1), Status::Building);
        assert!(!cursor.begin_catch_up(id(1), true), "known: no new");
        let history = vec![
            (Status::Building, LineNo(0)),
            (Status::Pushing, LineNo(4)),
            (Status::Starting, LineNo(6)),
        ];
        assert_eq!(
            cursor.catch_up(id(1), history, Status::Starting, LineNo(6), false),
            [
                CatchUpStep::Lines { until: LineNo(4) },
                CatchUpStep::Status(Status::Pushing),
                CatchUpStep::Lines { until: LineNo(6) },
                CatchUpStep::Lines { until: LineNo(6) },
                CatchUpStep::Status(Status::Starting),
                CatchUpStep::Lines { until: LineNo(6) },
            ]
        );
        // No history (the server restarted since): the current status only.
        assert_eq!(
            cursor.catch_up(id(1), Vec::new(), Status::Success, LineNo(8), true),
            [
                CatchUpStep::Lines { until: LineNo(8) },
                CatchUpStep::Lines { until: LineNo(8) },
                CatchUpStep::Status(Status::Success),
                CatchUpStep::Lines { until: LineNo(8) },
            ]
        );
    }

    #[test]
    fn tracking_forgets_the_oldest_finished_deployments_never_unfinished_ones() {
        let mut cursor = Cursor::default();
        let many = |n: usize| {
            let mut bytes = [0; 16];
            bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
            DeploymentId::from_bytes(bytes)
        };
        for n in 0..MAX_TRACKED_DEPLOYMENTS {
            assert!(cursor.begin_catch_up(many(n), true));
            if n % 2 == 0 {
                cursor.sent_status(many(n), Status::Success);
            }
        }
        assert!(cursor.begin_catch_up(many(MAX_TRACKED_DEPLOYMENTS), true));
        assert_eq!(cursor.sent.len(), MAX_TRACKED_DEPLOYMENTS);
        assert_eq!(cursor.sent(many(0)), None, "the oldest finished one went");
        assert!(cursor.sent(many(1)).is_some(), "unfinished ones stay");
        assert!(cursor.sent(many(2)).is_some());

        // Only unfinished ones: nothing can be forgotten, the bound gives way.
        let mut cursor = Cursor::default();
        for n in 0..=MAX_TRACKED_DEPLOYMENTS {
            cursor.begin_catch_up(many(n), true);
        }
        assert_eq!(cursor.sent.len(), MAX_TRACKED_DEPLOYMENTS + 1);
    }

    #[test]
    fn statuses_only_sends_no_line_and_statuses_need_not_wait_for_lines() {
        let mut cursor = Cursor::new(Logs::Statuses);
        assert!(!cursor.begin_catch_up(id(1), false));
        let history = vec![(Status::Building, LineNo(0))];
        assert_eq!(
            cursor.catch_up(id(1), history, Status::Building, LineNo(40), false),
            [
                CatchUpStep::Lines { until: LineNo(0) },
                CatchUpStep::Lines { until: LineNo(40) },
                CatchUpStep::Status(Status::Building),
                CatchUpStep::Lines { until: LineNo(40) }
            ],
            "the Lines steps are no-ops: the cursor is at line 40 already"
        );
        assert_eq!(cursor.sent(id(1)).map(|s| s.line), Some(LineNo(40)));
        cursor.sent_status(id(1), Status::Building);
        let logs = Live::Logs {
            first: LineNo(41),
            count: 3,
        };
        assert_eq!(cursor.on_event(id(1), logs, 3), Step::Skip);
        let pushing = Live::Status {
            status: Status::Pushing,
            last_line: LineNo(43),
        };
        assert_eq!(
            cursor.on_event(id(1), pushing, 1),
            Step::Send { skip_frames: 0 }
        );
    }

    #[test]
    fn a_tail_replay_starts_n_lines_before_the_end_and_only_for_the_first_replay() {
        let mut cursor = Cursor::new(Logs::Tail(10));
        cursor.resume(id(2), LineNo(5));
        assert!(!cursor.begin_catch_up(id(1), false));
        let steps = cursor.catch_up(id(1), Vec::new(), Status::Building, LineNo(100), false);
        assert_eq!(cursor.sent(id(1)).map(|s| s.line), Some(LineNo(90)));
        assert_eq!(
            steps.last(),
            Some(&CatchUpStep::Lines { until: LineNo(100) })
        );
        // A resumed deployment resumes where it said.
        assert!(!cursor.begin_catch_up(id(2), false));
        cursor.catch_up(id(2), Vec::new(), Status::Building, LineNo(100), false);
        assert_eq!(cursor.sent(id(2)).map(|s| s.line), Some(LineNo(5)));
        // A later catch-up (after a lag) does not skip again.
        cursor.sent_lines(id(1), LineNo(95));
        assert!(!cursor.begin_catch_up(id(1), true));
        cursor.catch_up(id(1), Vec::new(), Status::Building, LineNo(200), true);
        assert_eq!(cursor.sent(id(1)).map(|s| s.line), Some(LineNo(95)));
        // A deployment first seen after the replay (announced) goes out whole.
        assert!(cursor.begin_catch_up(id(3), true));
        cursor.catch_up(id(3), Vec::new(), Status::Building, LineNo(50), true);
        assert_eq!(cursor.sent(id(3)).map(|s| s.line), Some(LineNo(0)));
    }

    // ---- the lossless rule, against a model store and hub ------------------------------------

    /// What a subscriber writes, as the test sees it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Wire {
        New(DeploymentId),
        Line(DeploymentId, u64),
        Status(DeploymentId, Status, LineNo),
    }

    /// A writer or subscriber action.
    #[derive(Debug, Clone)]
    enum Op {
        /// Commit a new deployment (its `new` and first status events wait for `Publish`).
        Create { queued: bool },
        /// Commit `count` lines to a deployment; `too_big`: its event carries no frames.
        Append {
            which: usize,
            count: u64,
            too_big: bool,
        },
        /// Commit a later status (the `pick`-th greater one).
        Advance { which: usize, pick: usize },
        /// Publish the oldest committed event (to the hub history and the channel).
        Publish,
        /// The subscriber connects: subscribes, then replays from the store.
        Subscribe,
        /// The subscriber takes the next thing from its channel.
        Receive,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => any::<bool>().prop_map(|queued| Op::Create { queued }),
            4 => (0..4usize, 1..5u64, prop::bool::weighted(0.2))
                .prop_map(|(which, count, too_big)| Op::Append { which, count, too_big }),
            1 => (0..4usize, 0..10usize).prop_map(|(which, pick)| Op::Advance { which, pick }),
            4 => Just(Op::Publish),
            1 => Just(Op::Subscribe),
            4 => Just(Op::Receive),
        ]
    }

    /// A committed event, as the hub would carry it.
    #[derive(Debug, Clone, Copy)]
    struct Published {
        id: DeploymentId,
        live: Live,
        frames_len: usize,
    }

    /// A model record: current status, last line, and every status with its line (truth).
    type Record = (Status, u64, Vec<(Status, u64)>);

    /// The model: a store (records and lines), the hub's status history, the writer's events
    /// not published yet, one subscriber's bounded channel, and what it wrote.
    struct Model {
        store: BTreeMap<DeploymentId, Record>,
        history: BTreeMap<DeploymentId, Vec<(Status, LineNo)>>,
        unpublished: VecDeque<Published>,
        channel: Option<VecDeque<Published>>,
        capacity: usize,
        lagged: bool,
        /// Lines one store read returns at most.
        read_lines: u64,
        cursor: Cursor,
        wire: Vec<Wire>,
        /// Each deployment's stored last line when the subscriber's first replay read it.
        replay_last: BTreeMap<DeploymentId, u64>,
    }

    impl Model {
        fn ids(&self) -> Vec<DeploymentId> {
            self.store.keys().copied().collect()
        }

        fn apply(&mut self, op: Op) {
            match op {
                Op::Create { queued } => {
                    let id = id(self.store.len() as u8 + 1);
                    let status = if queued {
                        Status::Queued
                    } else {
                        Status::Building
                    };
                    self.store.insert(id, (status, 0, vec![(status, 0)]));
                    self.commit(id, Live::New, 1);
                    let seq = LineNo(0);
                    self.commit(
                        id,
                        Live::Status {
                            status,
                            last_line: seq,
                        },
                        1,
                    );
                }
                Op::Append {
                    which,
                    count,
                    too_big,
                } => {
                    let Some(id) = self.ids().get(which).copied() else {
                        return;
                    };
                    let (status, last, _) = self.store[&id];
                    if status.is_terminal() {
                        return;
                    }
                    self.store.get_mut(&id).expect("exists").1 = last + count;
                    let live = Live::Logs {
                        first: LineNo(last + 1),
                        count,
                    };
                    self.commit(id, live, if too_big { 0 } else { count as usize });
                }
                Op::Advance { which, pick } => {
                    let Some(id) = self.ids().get(which).copied() else {
                        return;
                    };
                    let (current, last, _) = self.store[&id];
                    if current.is_terminal() {
                        return;
                    }
                    let later: Vec<Status> =
                        Status::ALL.into_iter().filter(|s| *s > current).collect();
                    let Some(status) = later.get(pick % later.len().max(1)).copied() else {
                        return;
                    };
                    let record = self.store.get_mut(&id).expect("exists");
                    record.0 = status;
                    record.2.push((status, last));
                    let seq = LineNo(last);
                    self.commit(
                        id,
                        Live::Status {
                            status,
                            last_line: seq,
                        },
                        1,
                    );
                }
                Op::Publish => {
                    let Some(event) = self.unpublished.pop_front() else {
                        return;
                    };
                    if let Live::Status {
                        status,
                        last_line: seq,
                    } = event.live
                    {
                        self.history
                            .entry(event.id)
                            .or_default()
                            .push((status, seq));
                    }
                    if let Some(channel) = self.channel.as_mut() {
                        if channel.len() == self.capacity {
                            channel.pop_front();
                            self.lagged = true;
                        }
                        channel.push_back(event);
                    }
                }
                Op::Subscribe => {
                    if self.channel.is_none() {
                        self.channel = Some(VecDeque::new());
                        self.replay_last = self
                            .store
                            .iter()
                            .map(|(id, record)| (*id, record.1))
                            .collect();
                        self.catch_up_app(false);
                    }
                }
                Op::Receive => {
                    if std::mem::take(&mut self.lagged) {
                        self.catch_up_app(true);
                    } else if let Some(event) = self.channel.as_mut().and_then(|c| c.pop_front()) {
                        self.on_event(event);
                    }
                }
            }
        }

        fn commit(&mut self, id: DeploymentId, live: Live, frames_len: usize) {
            self.unpublished.push_back(Published {
                id,
                live,
                frames_len,
            });
        }

        /// As `Subscriber::on_event`.
        fn on_event(&mut self, event: Published) {
            let id = event.id;
            match self.cursor.on_event(id, event.live, event.frames_len) {
                Step::Skip => {}
                Step::Send { skip_frames } => match event.live {
                    Live::New => self.wire.push(Wire::New(id)),
                    Live::Status {
                        status,
                        last_line: seq,
                    } => self.wire.push(Wire::Status(id, status, seq)),
                    Live::Logs { first, count } => {
                        for n in first.0 + skip_frames as u64..first.0 + count {
                            self.wire.push(Wire::Line(id, n));
                        }
                    }
                },
                Step::CatchUp { announce } => self.catch_up(id, announce),
            }
        }

        /// As `Subscriber::catch_up_app` (every deployment is within the replay window).
        fn catch_up_app(&mut self, announce: bool) {
            for id in self.ids() {
                if let Some(announce) = self.cursor.replay(id, announce) {
                    self.catch_up(id, announce);
                }
            }
        }

        /// As `Subscriber::catch_up`, reading the model store.
        fn catch_up(&mut self, id: DeploymentId, announce: bool) {
            let Some((current, last, _)) = self.store.get(&id).cloned() else {
                self.cursor.forget(id);
                return;
            };
            if self.cursor.begin_catch_up(id, announce) {
                self.wire.push(Wire::New(id));
            }
            let history = self.history.get(&id).cloned().unwrap_or_default();
            for step in self
                .cursor
                .catch_up(id, history, current, LineNo(last), announce)
            {
                match step {
                    CatchUpStep::Lines { until } => self.send_lines(id, until),
                    CatchUpStep::Status(status) => {
                        let line = self.cursor.sent(id).unwrap_or_default().line;
                        self.wire.push(Wire::Status(id, status, line));
                        self.cursor.sent_status(id, status);
                    }
                }
            }
        }

        /// As `Subscriber::send_lines`: bounded store reads until `until`.
        fn send_lines(&mut self, id: DeploymentId, until: LineNo) {
            loop {
                let from = self.cursor.sent(id).unwrap_or_default().line.0;
                let stored = self.store[&id].1;
                let last = until.0.min(stored).min(from + self.read_lines);
                if last <= from {
                    return;
                }
                for n in from + 1..=last {
                    self.wire.push(Wire::Line(id, n));
                }
                self.cursor.sent_lines(id, LineNo(last));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// DESIGN's rule: whatever the interleaving of commits, publications, live events,
        /// `Lagged` gaps and store replays, each stored line goes out exactly once and in store
        /// order, each status after the lines stored before it and only once, the last status
        /// sent is the stored one, and `new` comes at most once, before anything else of its
        /// deployment. With `logs=none` no line goes out at all; with `tail=N` the lines of a
        /// deployment replayed first start N lines before the end it had then (the lines before
        /// count as had, for the statuses).
        #[test]
        fn any_interleaving_sends_each_stored_line_once_in_order_and_statuses_after_their_lines(
            ops in prop::collection::vec(op(), 1..80),
            capacity in 1..6usize,
            read_lines in 1..6u64,
            logs in prop_oneof![
                Just(Logs::All),
                Just(Logs::Statuses),
                (0..6u64).prop_map(Logs::Tail),
            ],
        ) {
            let mut model = Model {
                store: BTreeMap::new(),
                history: BTreeMap::new(),
                unpublished: VecDeque::new(),
                channel: None,
                capacity,
                lagged: false,
                read_lines,
                cursor: Cursor::new(logs),
                wire: Vec::new(),
                replay_last: BTreeMap::new(),
            };
            for op in ops {
                model.apply(op);
            }
            // Everything committed is published and received in the end.
            model.apply(Op::Subscribe);
            while !model.unpublished.is_empty() {
                model.apply(Op::Publish);
            }
            while model.lagged || model.channel.as_ref().is_some_and(|c| !c.is_empty()) {
                model.apply(Op::Receive);
            }

            for (id, (current, last, changes)) in &model.store {
                let mine: Vec<(usize, Wire)> = model
                    .wire
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(_, w)| match w {
                        Wire::New(d) | Wire::Line(d, _) | Wire::Status(d, _, _) => d == id,
                    })
                    .collect();
                let lines: Vec<u64> = mine
                    .iter()
                    .filter_map(|(_, w)| match w {
                        Wire::Line(_, n) => Some(*n),
                        _ => None,
                    })
                    .collect();
                // Lines before `start` were never asked for.
                let start = match logs {
                    Logs::All | Logs::Statuses => 0,
                    Logs::Tail(count) => {
                        model.replay_last.get(id).map_or(0, |l| l.saturating_sub(count))
                    }
                };
                let expected: Vec<u64> = match logs {
                    Logs::Statuses => Vec::new(),
                    _ => (start + 1..=*last).collect(),
                };
                prop_assert_eq!(&lines, &expected, "lines of {}", id);

                let news: Vec<usize> = mine
                    .iter()
                    .filter(|(_, w)| matches!(w, Wire::New(_)))
                    .map(|(at, _)| *at)
                    .collect();
                prop_assert!(news.len() <= 1, "new sent {} times", news.len());
                if let Some(at) = news.first() {
                    prop_assert_eq!(Some(*at), mine.first().map(|(at, _)| *at));
                }

                // The line the subscriber is at: the last sent, or the first one skipped to.
                let mut position = start;
                let mut previous: Option<Status> = None;
                for (_, wire) in &mine {
                    match wire {
                        Wire::Line(_, n) => position = *n,
                        Wire::Status(_, status, seq) => {
                            let changed_at = changes
                                .iter()
                                .find(|(s, _)| s == status)
                                .map(|(_, line)| *line);
                            prop_assert!(changed_at.is_some(), "{:?} was never stored", status);
                            if logs != Logs::Statuses {
                                prop_assert!(
                                    changed_at.is_some_and(|line| line <= position),
                                    "{:?} (after line {:?}) sent at line {}",
                                    status, changed_at, position
                                );
                                prop_assert!(seq.0 <= position, "seq {} ahead of the lines", seq.0);
                            }
                            prop_assert!(seq.0 <= *last, "seq {} past the stored lines", seq.0);
                            prop_assert!(previous < Some(*status), "{:?} after {:?}", status, previous);
                            previous = Some(*status);
                        }
                        Wire::New(_) => {}
                    }
                }
                prop_assert_eq!(previous, Some(*current), "last status of {}", id);
            }
        }
    }
}
