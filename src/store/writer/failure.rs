//! What the writer does when a commit fails, and the health it reports (`/readyz`).
//!
//! A failed group is never acknowledged: its callers are told `Unavailable`, nothing of it is
//! published, and what it left on disk is never relied on. Then one of two things happens:
//!
//! - **Transient** (`EMFILE`, `ENFILE`, `ENOSPC`, `EINTR`, `EAGAIN`, `EDQUOT`, `ENOMEM` from a
//!   log file): nothing of the group reached the engine (log text is written before the index),
//!   so the engine still holds exactly the committed state. The writer drops its open log files
//!   (each is cut back to its indexed end when reopened, so a torn or unsynced tail is never
//!   synced as if it were safe: the next group rewrites those bytes from memory before its own
//!   `fdatasync`), rebuilds its in-memory state from the store, refuses every write while
//!   *failing*, and probes the log directory with backoff; once a probe write is durable it
//!   takes writes again, on its own.
//! - **Latched**: a failure that cannot be proven harmless (any engine failure: sled 0.34 may
//!   leave part of a failed batch visible, and a failed flush may leave a hole its own recovery
//!   cuts the log at; a log file shorter than its index, which is evidence of corruption; an
//!   `EIO`/`EROFS` or other error from a log file). Every write is refused until a restart, and
//!   `/readyz` and the log say why.
//!
//! This module only decides and records; the group commit (`group`) calls it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::group::WriterState;
use super::WriteError;
use crate::model::DeploymentId;
use crate::store::engine::EngineError;
use crate::store::logs::LogError;
use crate::store::replicate::ReplicateError;
use crate::store::StoreError;

/// The first wait before probing the store again after a transient failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between probes: a cleared fault is noticed within this.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long the writer sleeps between looks at its queue while failing (commands that arrive
/// are refused at once; this only bounds how late a probe runs).
const FAILING_POLL: Duration = Duration::from_millis(5);

/// `errno`s that say "not now" rather than "broken": the same write can succeed later.
const TRANSIENT_ERRNOS: &[i32] = &[
    libc::EMFILE,
    libc::ENFILE,
    libc::ENOSPC,
    libc::EINTR,
    libc::EAGAIN,
    libc::EDQUOT,
    libc::ENOMEM,
];

/// Why a group commit failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CommitFailure {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("engine batch: {0}")]
    EngineApply(EngineError),
    #[error("engine sync: {0}")]
    EngineSync(EngineError),
    /// Cluster mode: the write-ahead stream did not take the group (`store::replicate`).
    #[error(transparent)]
    Replicate(ReplicateError),
}

impl CommitFailure {
    /// Whether the failure may clear by itself with nothing lost (see the module doc).
    fn is_transient(&self) -> bool {
        match self {
            CommitFailure::Log(err) => {
                // A file shorter than its index is reported at open, with no errno.
                let errno = err.source.raw_os_error();
                errno.is_some_and(|code| TRANSIENT_ERRNOS.contains(&code))
            }
            CommitFailure::EngineApply(_) | CommitFailure::EngineSync(_) => false,
            // Nothing of the group reached the local store, and the stream refuses any later
            // append that does not follow what it holds: it can clear with nothing lost.
            CommitFailure::Replicate(err) => matches!(err, ReplicateError::Unavailable(_)),
        }
    }
}

/// The writer's health as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Commits succeed.
    Ready,
    /// A transient failure: writes are refused until a probe succeeds (on its own).
    Failing {
        reason: String,
        since: Instant,
        /// Probes that failed since.
        probes: u32,
    },
    /// A failure that cannot be proven harmless: writes are refused until a restart.
    Latched { reason: String },
}

/// The health shared by the writer thread (which sets it) and the handles (which read it).
#[derive(Debug, Clone)]
pub(super) struct HealthCell(Arc<Mutex<Health>>);

impl Default for HealthCell {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Health::Ready)))
    }
}

impl HealthCell {
    pub(super) fn get(&self) -> Health {
        match self.0.lock() {
            Ok(health) => health.clone(),
            // Only the writer thread writes it, and it never panics holding the lock; if it
            // did, the writer is gone: say so.
            Err(_) => Health::Latched {
                reason: "the writer thread panicked".into(),
            },
        }
    }

    fn set(&self, health: Health) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = health;
        }
    }
}

/// The writer's trouble, if any (the thread's own copy; `HealthCell` is what others read).
#[derive(Debug, Default)]
pub(super) enum Trouble {
    #[default]
    None,
    Failing {
        reason: String,
        since: Instant,
        backoff: Duration,
        probe_at: Instant,
        probes: u32,
    },
    Latched(String),
}

impl WriterState {
    /// The refusal for every write while the writer is failing or latched.
    pub(super) fn refusal(&self) -> Option<WriteError> {
        match &self.trouble {
            Trouble::None => None,
            Trouble::Failing { reason, .. } => Some(WriteError::Unavailable(format!(
                "the store is failing, retrying on its own: {reason}"
            ))),
            Trouble::Latched(reason) => Some(WriteError::Unavailable(format!(
                "the store refuses writes until deployd restarts: {reason}"
            ))),
        }
    }

    pub(super) fn is_failing(&self) -> bool {
        matches!(self.trouble, Trouble::Failing { .. })
    }

    /// A group failed: puts the writer into failing (transient) or latched, and returns what
    /// the group's callers are told. Memory is made to match the committed state again, or
    /// the writer latches.
    pub(super) fn on_commit_failure(&mut self, failure: CommitFailure) -> WriteError {
        let reason = failure.to_string();
        if failure.is_transient() {
            match self.reload() {
                Ok(()) => {
                    tracing::warn!(error = %reason, "commit failed with a transient error: nothing of it \
                        was acknowledged; refusing writes until the store takes a durable write again");
                    let now = Instant::now();
                    self.trouble = Trouble::Failing {
                        reason: reason.clone(),
                        since: now,
                        backoff: FIRST_BACKOFF,
                        probe_at: now + FIRST_BACKOFF,
                        probes: 0,
                    };
                    self.health.set(Health::Failing {
                        reason: reason.clone(),
                        since: now,
                        probes: 0,
                    });
                    return WriteError::Unavailable(format!(
                        "the store is failing, retrying on its own (nothing of this request was \
                         stored): {reason}"
                    ));
                }
                Err(err) => {
                    self.latch(format!("{reason}; then reloading the state failed: {err}"));
                }
            }
        } else {
            self.latch(reason);
        }
        self.refusal()
            .unwrap_or_else(|| WriteError::Unavailable("the store failed".into()))
    }

    fn latch(&mut self, reason: String) {
        tracing::error!(error = %reason, "store latched: a commit failed in a way that cannot be \
            proven harmless; refusing every write until deployd restarts (run `deployd check` first)");
        self.health.set(Health::Latched {
            reason: reason.clone(),
        });
        self.trouble = Trouble::Latched(reason);
    }

    /// Rebuilds the unfinished deployments and their log ends from the store, after a group
    /// that changed memory but not the store; the open log files are dropped (see the module
    /// doc).
    fn reload(&mut self) -> Result<(), StoreError> {
        self.appender.forget_open();
        let mut unfinished = self.store.all_deployments()?;
        unfinished.retain(|d| !d.status.is_terminal());
        let mut log_ends = std::collections::HashMap::<DeploymentId, u64>::new();
        for deployment in &mut unfinished {
            let (last_line, log_end) = self.store.log_end(deployment.id)?;
            deployment.last_line = last_line;
            log_ends.insert(deployment.id, log_end);
        }
        self.lifecycle = self.lifecycle.rebuilt(unfinished);
        self.log_ends = log_ends;
        Ok(())
    }

    /// While failing: the time left before the next probe, or `None` once a probe made the
    /// writer ready again (or it latched). Runs the probe when it is due.
    pub(super) fn probe_when_due(&mut self) -> Option<Duration> {
        let Trouble::Failing {
            reason,
            since,
            backoff,
            probe_at,
            probes,
        } = &mut self.trouble
        else {
            return None;
        };
        let now = Instant::now();
        if now < *probe_at {
            return Some((*probe_at - now).min(FAILING_POLL));
        }
        let probed = self
            .logs
            .probe()
            .map_err(|err| err.to_string())
            .and_then(|()| match self.store.replication() {
                Some(replication) => match replication.target().probe() {
                    Err(ReplicateError::Unavailable(why)) => Err(why),
                    other => Ok(other),
                },
                None => Ok(Ok(())),
            });
        match probed {
            Ok(Err(fatal)) => {
                // Another writer appended (or this one's given-up append landed): resuming
                // would fork the stream.
                self.latch(fatal.to_string());
                None
            }
            Ok(Ok(())) => {
                tracing::info!(
                    failing_for_ms = since.elapsed().as_millis() as u64,
                    probes = *probes,
                    "the store takes durable writes again; accepting writes"
                );
                self.trouble = Trouble::None;
                self.health.set(Health::Ready);
                crate::metrics::metrics().writer_ok.set(1);
                None
            }
            Err(err) => {
                *probes += 1;
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
                *probe_at = now + *backoff;
                *reason = format!(
                    "{reason_head}; last probe: {err}",
                    reason_head = head(reason)
                );
                self.health.set(Health::Failing {
                    reason: reason.clone(),
                    since: *since,
                    probes: *probes,
                });
                Some(FAILING_POLL)
            }
        }
    }
}

/// The first failure's text, without earlier probe results appended to it.
fn head(reason: &str) -> &str {
    reason.split("; last probe: ").next().unwrap_or(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::logs::LogStage;

    fn log_failure(stage: LogStage, errno: i32) -> CommitFailure {
        CommitFailure::Log(LogError {
            stage,
            source: std::io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn descriptor_and_space_exhaustion_are_transient_and_media_errors_or_engine_failures_latch() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOSPC,
            libc::EINTR,
            libc::EAGAIN,
        ] {
            for stage in [LogStage::Open, LogStage::Write, LogStage::Sync] {
                assert!(
                    log_failure(stage, errno).is_transient(),
                    "{errno} {stage:?}"
                );
            }
        }
        assert!(!log_failure(LogStage::Sync, libc::EIO).is_transient());
        assert!(!log_failure(LogStage::Write, libc::EROFS).is_transient());
        let short = CommitFailure::Log(LogError {
            stage: LogStage::Open,
            source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "index ends at 9"),
        });
        assert!(
            !short.is_transient(),
            "a file shorter than its index is corruption"
        );
        assert!(!CommitFailure::EngineApply(EngineError("x".into())).is_transient());
        assert!(!CommitFailure::EngineSync(EngineError("x".into())).is_transient());
    }

    #[test]
    fn an_unreachable_write_ahead_stream_is_transient_and_a_fenced_or_rejected_write_latches() {
        let failure = |err| CommitFailure::Replicate(err);
        assert!(failure(ReplicateError::Unavailable("down".into())).is_transient());
        assert!(!failure(ReplicateError::Fenced("deposed".into())).is_transient());
        assert!(!failure(ReplicateError::Rejected("too large".into())).is_transient());
    }

    #[test]
    fn probe_reasons_do_not_pile_up() {
        assert_eq!(head("a; last probe: b"), "a");
        assert_eq!(head("a"), "a");
    }
}
