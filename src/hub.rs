//! The hub: live fan-out of committed events, one broadcast channel per app.
//!
//! The writer publishes here only after a commit, so a subscriber never sees an event that is
//! not stored, and events arrive in store order. Publishing never blocks: a `tokio::broadcast`
//! channel keeps the last [`APP_CHANNEL_CAPACITY`] events and a subscriber that falls further
//! behind gets `Lagged`, after which it catches up from the store by line number (see
//! `api::stream`). Channels are created on the first subscription and dropped by the first
//! publish that finds no subscriber left.
//!
//! The hub also keeps a `watch` of the status of every unfinished deployment, so that the session
//! driving a queued deployment learns when it may start, and the recent status history of each
//! deployment (the store keeps only the current status), so that a subscriber catching up after
//! a lag still sends every status change, at its line number.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use crate::model::{AppId, DeploymentId, LineNo};
use crate::status::Status;

/// Events kept per app for subscribers that are behind. With segments capped at
/// `store::MAX_SEGMENT_BYTES` (1 MiB), an app's channel holds at most 256 MiB of log text in
/// the worst case, and usually far less (a batch is what arrived during one group commit).
pub const APP_CHANNEL_CAPACITY: usize = 256;

/// Finished deployments whose status history is kept (oldest forgotten first). A subscriber
/// needs the history only while catching up on a deployment that just changed, so this is
/// generous; it costs at most a few hundred KiB.
pub const MAX_FINISHED_HISTORIES: usize = 4096;

/// What happened, as stored.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A deployment was created.
    New,
    /// The deployment moved to `status`; `last_line` is its last line number at that moment
    /// (the stream spells it `seq` on the wire).
    Status { status: Status, last_line: LineNo },
    /// A committed segment: lines `first..first + count` (the segment's encoded bytes).
    Logs { first: LineNo, segment: Bytes },
}

/// One committed event of one deployment.
#[derive(Debug)]
pub struct Event {
    pub app_id: AppId,
    pub deployment_id: DeploymentId,
    pub kind: EventKind,
    /// The event rendered for the wire, once for all subscribers, by whoever reads it first.
    render_cache: RenderCache,
}

impl Event {
    pub fn new(app_id: AppId, deployment_id: DeploymentId, kind: EventKind) -> Self {
        Self {
            app_id,
            deployment_id,
            kind,
            render_cache: RenderCache::default(),
        }
    }

    /// Where the event's wire rendering is kept (see [`RenderCache`]).
    pub fn render_cache(&self) -> &RenderCache {
        &self.render_cache
    }
}

/// A once-per-event cache of the event's wire rendering, shared by every subscriber of the
/// event (fan-out to a thousand sockets renders each event once, not a thousand times). Its
/// concrete type belongs to the stream that renders (`api::stream`), so the hub stays a domain
/// module that knows nothing of frames.
///
/// Invariant: one cache holds one type; every reader asks for the same `T`.
#[derive(Default)]
pub struct RenderCache(OnceLock<Box<dyn Any + Send + Sync>>);

impl RenderCache {
    /// The cached value, made by `render` the first time anybody asks.
    pub fn get_or_init<T: Any + Send + Sync>(&self, render: impl FnOnce() -> T) -> &T {
        self.0
            .get_or_init(|| Box::new(render()))
            .downcast_ref::<T>()
            .expect("invariant: an event's render cache is read as one type only")
    }
}

impl std::fmt::Debug for RenderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.0.get().is_some() {
            "rendered"
        } else {
            "empty"
        };
        f.debug_tuple("RenderCache").field(&state).finish()
    }
}

/// Per-app broadcast channels and per-deployment status watches.
#[derive(Default)]
pub struct Hub {
    // std Mutex: held only for map lookups, never across an await.
    apps: Mutex<HashMap<AppId, broadcast::Sender<Arc<Event>>>>,
    statuses: Mutex<HashMap<DeploymentId, watch::Sender<Status>>>,
    histories: Mutex<Histories>,
}

/// Status changes per deployment, `(status, last line number at that moment)`, in order.
#[derive(Default)]
struct Histories {
    by_deployment: HashMap<DeploymentId, Vec<(Status, LineNo)>>,
    finished: VecDeque<DeploymentId>,
}

impl Hub {
    /// Subscribes to an app's live events (creating its channel if needed).
    pub fn subscribe(&self, app: AppId) -> broadcast::Receiver<Arc<Event>> {
        let mut apps = self.apps.lock().expect("invariant: hub lock not poisoned");
        apps.entry(app)
            .or_insert_with(|| broadcast::channel(APP_CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Whether anybody listens to `app` (lets the writer skip building events nobody reads).
    pub fn has_subscribers(&self, app: AppId) -> bool {
        let apps = self.apps.lock().expect("invariant: hub lock not poisoned");
        apps.get(&app).is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Publishes committed events of one app, in order. Never blocks.
    pub fn publish(&self, app: AppId, events: impl IntoIterator<Item = Event>) {
        let events: Vec<Event> = events.into_iter().collect();
        self.record_history(&events);
        let mut apps = self.apps.lock().expect("invariant: hub lock not poisoned");
        let Some(tx) = apps.get(&app) else {
            return;
        };
        if tx.receiver_count() == 0 {
            apps.remove(&app);
            return;
        }
        for event in events {
            // Err only when the last receiver went away meanwhile: nothing to deliver.
            let _ = tx.send(Arc::new(event));
        }
    }

    fn record_history(&self, events: &[Event]) {
        let mut histories = self
            .histories
            .lock()
            .expect("invariant: hub lock not poisoned");
        for event in events {
            if let EventKind::Status { status, last_line } = event.kind {
                histories
                    .by_deployment
                    .entry(event.deployment_id)
                    .or_default()
                    .push((status, last_line));
                if status.is_terminal() {
                    histories.finished.push_back(event.deployment_id);
                    while histories.finished.len() > MAX_FINISHED_HISTORIES {
                        if let Some(old) = histories.finished.pop_front() {
                            histories.by_deployment.remove(&old);
                        }
                    }
                }
            }
        }
    }

    /// The status changes of a deployment published since this process started, in order, each
    /// with the last line number stored before it. Empty when unknown (older, or forgotten).
    pub fn status_history(&self, id: DeploymentId) -> Vec<(Status, LineNo)> {
        self.histories
            .lock()
            .expect("invariant: hub lock not poisoned")
            .by_deployment
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Number of apps with a live channel (for tests and metrics).
    pub fn channel_count(&self) -> usize {
        self.apps
            .lock()
            .expect("invariant: hub lock not poisoned")
            .len()
    }

    /// A watch on an unfinished deployment's status; `None` once it finished (or never existed).
    pub fn watch_status(&self, id: DeploymentId) -> Option<watch::Receiver<Status>> {
        let statuses = self
            .statuses
            .lock()
            .expect("invariant: hub lock not poisoned");
        statuses.get(&id).map(watch::Sender::subscribe)
    }

    /// Records a committed status (the writer calls it for every unfinished deployment it
    /// creates or recovers, and for every change). A terminal status drops the watch: receivers
    /// keep the last value and see the channel closed.
    pub fn record_status(&self, id: DeploymentId, status: Status) {
        let mut statuses = self
            .statuses
            .lock()
            .expect("invariant: hub lock not poisoned");
        if status.is_terminal() {
            if let Some(tx) = statuses.remove(&id) {
                tx.send_replace(status);
            }
        } else {
            statuses
                .entry(id)
                .or_insert_with(|| watch::channel(status).0)
                .send_replace(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_rendered_once_whoever_asks_and_however_often() {
        let event = Event::new(AppId::generate(), DeploymentId::generate(), EventKind::New);
        let renders = std::sync::atomic::AtomicUsize::new(0);
        let render = || {
            renders.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            vec![1u8, 2, 3]
        };
        let first: *const Vec<u8> = event.render_cache().get_or_init(render);
        let second: *const Vec<u8> = event.render_cache().get_or_init(render);
        assert_eq!(renders.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(first, second, "every reader shares the one rendering");
    }
}
