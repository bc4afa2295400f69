//! What a commit changed, as it is published: the events the writer hands to its publisher
//! (the hub) once they are durable, in store order.
//!
//! They are defined here, beside the writer that makes them, and not in the hub, so that the
//! store depends on nothing above it: the writer publishes through the [`Publish`] trait, which
//! `hub::Hub` implements. Events are domain facts (a deployment was created, changed status,
//! got lines); how they look on the wire is the stream's business, cached once per event in
//! an opaque [`RenderCache`].

use std::any::Any;
use std::sync::OnceLock;

use super::Segment;
use crate::model::{AppId, DeploymentId, LineNo};
use crate::status::Status;

/// Where committed events go. Called on the writer thread right after each commit: it must
/// not block (the hub's broadcast and watches never do).
pub trait Publish: Send + Sync {
    /// Publishes one app's events of one commit, in order.
    fn publish(&self, app: AppId, events: Vec<Event>);
    /// Records a committed status of a deployment (every creation, recovery and change).
    fn record_status(&self, id: DeploymentId, status: Status);
}

/// What happened, as stored.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A deployment was created.
    New,
    /// The deployment moved to `status`; `last_line` is its last line number at that moment
    /// (the stream spells it `seq` on the wire).
    Status { status: Status, last_line: LineNo },
    /// A committed segment: lines `first..first + count` (the stored segment itself).
    Logs { first: LineNo, segment: Segment },
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
