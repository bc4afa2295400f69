//! The hub: live fan-out of committed events, one broadcast channel per app.
//!
//! The writer publishes here (through `store::events::Publish`, which the hub implements, so
//! that the store does not depend on the hub) only after a commit, so a subscriber never sees an event that is
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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use crate::model::{AppId, DeploymentId, LineNo};
use crate::status::Status;
use crate::store::events::Publish;
pub use crate::store::events::{Event, EventKind, RenderCache};

/// Events kept per app for subscribers that are behind. With segments capped at
/// `store::MAX_SEGMENT_BYTES` (1 MiB), an app's channel holds at most 256 MiB of log text in
/// the worst case, and usually far less (a batch is what arrived during one group commit).
pub const APP_CHANNEL_CAPACITY: usize = 256;

/// Finished deployments whose status history is kept (oldest forgotten first). A subscriber
/// needs the history only while catching up on a deployment that just changed, so this is
/// generous; it costs at most a few hundred KiB.
pub const MAX_FINISHED_HISTORIES: usize = 4096;

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

impl Publish for Hub {
    fn publish(&self, app: AppId, events: Vec<Event>) {
        Hub::publish(self, app, events);
    }

    fn record_status(&self, id: DeploymentId, status: Status) {
        Hub::record_status(self, id, status);
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
