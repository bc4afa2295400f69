//! The one writer: owns every write, every line number and every status change.
//!
//! Async callers send a [`Command`] over a bounded channel and await its reply. The writer thread
//! takes a command, then everything that queued up behind it (a *group*), validates each against
//! its in-memory state of unfinished deployments (the state machine, queueing, line numbers),
//! writes the whole group as one atomic engine batch, makes it durable with one `sync`, and only
//! then replies and publishes the group's events to the hub. So nothing is acknowledged or
//! broadcast before it is on disk, and the wire order is the store order.
//!
//! Commands that create or delete named things (users, tokens, apps, collaborators, deployments)
//! are committed on their own, so their uniqueness checks read committed state only; the hot
//! commands (log batches, status changes, image sizes) are grouped.
//!
//! Layout: `handle` is the async side (`Writer`, `Command`); `group` is the thread's loop and
//! the group commit (validate → write → sync → reply → publish), where commands meet the
//! engine, the log files and the hub; `lifecycle` is the pure bookkeeping of unfinished
//! deployments (who runs, who waits, line numbers), which says what changed and never does I/O;
//! `records` writes users, tokens and apps; `deployments` turns the deployment commands
//! (create, append, transition) into the group's writes, and `control` a cancel;
//! `segments` cuts lines into stored segments;
//! `recovery` ends what a crash left unfinished; `counts` turns a group's status index changes
//! into the deployment counts' ops; `failure` decides what a failed commit does
//! (transient: refuse, probe, resume; otherwise latch) and holds the health `/readyz` reports;
//! `snapshot` keeps a point-in-time view of the records for backups.

mod control;
mod counts;
mod deployments;
mod failure;
mod group;
mod handle;
mod images;
mod invalidate;
mod lifecycle;
mod log_limit;
mod notify;
mod prune;
mod records;
mod recovery;
mod segments;
mod snapshot;

#[cfg(test)]
mod tests;

pub use control::CancelReply;
pub use failure::Health;
pub use handle::{Command, Writer};
pub use images::NO_IMAGE;
pub use log_limit::DEFAULT_MAX_LOG_BYTES;
pub use notify::MAX_PRUNE_KEYS;
pub use snapshot::Snapshot;

use super::StoreError;
use crate::model::{Deployment, DeploymentId, LineNo};
use crate::status::{Status, TransitionError};

/// Commands waiting for the writer. Senders wait (asynchronously) when it is full: that is the
/// backpressure that keeps pushers from outrunning the disk.
pub const WRITER_QUEUE_CAPACITY: usize = 4096;

/// At most this many commands in one group commit, so one commit's latency stays bounded.
pub const MAX_GROUP_COMMANDS: usize = 4096;

/// At most this many bytes of log text in one group commit.
pub const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// Why a write was refused or failed. Refusals change nothing stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A user with this username exists.
    #[error("username {0:?} is already taken")]
    UsernameTaken(String),
    /// A user with this email exists.
    #[error("email {0:?} is already taken")]
    EmailTaken(String),
    /// An app with this name exists.
    #[error("an app named {0:?} already exists")]
    AppNameTaken(String),
    #[error("user is already a collaborator of the app")]
    AlreadyCollaborator,
    /// The deployment has ended (with `status`): it takes no more output or session changes.
    #[error("deployment already finished with status {status}")]
    Finished { status: Status },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("the deployment is queued behind another deployment of the app; wait until it starts")]
    Queued,
    /// A cancel is pending: the deployment may only end as cancelled.
    #[error("the deployment is being cancelled (by {by}); it can only end aborted")]
    Cancelling { by: String },
    /// The store failed (or failed earlier: the writer then refuses everything), or the writer
    /// has stopped.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for WriteError {
    fn from(err: StoreError) -> Self {
        WriteError::Unavailable(err.to_string())
    }
}

/// How a transition is asked for.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Move to this status (refused if the graph forbids it).
    Status(Status),
    /// The deployment's session ended: `aborted`, or `timeout-error` from `starting`.
    SessionLost,
}

/// What recovery did at startup, for the service to act on.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Deployments ended because their session was lost in the restart.
    pub ended: Vec<(DeploymentId, Status)>,
    /// Unfinished executor deployments (building or queued) that need an executor again.
    pub to_execute: Vec<Deployment>,
    /// Deployments whose log file is shorter than its index, with what was lost.
    pub damaged: Vec<(DeploymentId, String)>,
}

/// What an append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The deployment's last stored line after the append.
    pub last_line: LineNo,
    /// Lines of the append refused because the deployment reached `max_log_bytes`.
    pub dropped: u64,
}

/// The writer's settings (from `[retention]`).
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Most bytes of log one deployment stores; 0: unlimited.
    pub max_log_bytes: u64,
    /// At most this many executor deployments past `queued` at once (`[executor]
    /// max_concurrent`; `None` or 0: no limit), recovery included.
    pub max_executors: Option<usize>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            max_executors: None,
        }
    }
}
