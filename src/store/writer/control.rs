//! The writer's control operations on a running deployment: cancel.
//!
//! Owns turning a [`Cancel`] decided by the lifecycle into the group's writes (the note line,
//! the pending request's record under `0x0E`, the record, the events). It decides nothing itself (the lifecycle does) and never signals a
//! session: the caller does that once the commit is durable.

use super::group::{now, put, Group, Outcome, WriterState};
use super::lifecycle::Cancel;
use super::segments::append_segments;
use super::WriteError;
use crate::lines::Lines;
use crate::model::{Deployment, DeploymentId, NewLine};
use crate::store::codec;

/// What a committed cancel did.
#[derive(Debug, Clone)]
pub struct CancelReply {
    /// The deployment as this commit stored it.
    pub deployment: Deployment,
    /// True when the deployment runs and its session must now end it (the request is pending);
    /// false when the cancel ended it here (it was queued).
    pub pending: bool,
}

/// The line a cancel stores, once, in the cancel's own commit.
pub(crate) fn cancelled_note(by: &str) -> NewLine {
    NewLine::system(format!("!     Cancelled by {by}"))
}

impl WriterState {
    pub(super) fn cancel(
        &mut self,
        deployment: DeploymentId,
        by: &str,
        group: &mut Group,
    ) -> Result<Outcome<CancelReply>, WriteError> {
        let note = Lines::from(cancelled_note(by));
        let now = now();
        let decided = self
            .lifecycle
            .cancel(deployment, by, note.len() as u64, now)
            .map_err(|refusal| self.refused(deployment, refusal, None))?;
        let (note_first, record, changes, pending) = match decided {
            Cancel::Repeated(record) => {
                let reply = CancelReply {
                    deployment: record,
                    pending: true,
                };
                return Ok(Outcome::quiet(reply));
            }
            Cancel::Ended(moved) => (moved.note_first, moved.record, moved.changes, false),
            Cancel::Requested { note_first, record } => {
                // Stored with the note, so that a server killed before the session honours it
                // still ends the deployment as cancelled at restart (`recovery`); the commit
                // that ends the deployment deletes it (`WriterState::stage`).
                group.ops.push(put(
                    codec::cancel_request_key(deployment),
                    codec::encode_cancel_request(&codec::CancelRequest {
                        by: by.to_owned(),
                        at: now,
                    }),
                ));
                (note_first, record, Vec::new(), true)
            }
        };
        let app = record.app_id;
        let reply = CancelReply {
            deployment: record,
            pending,
        };
        let mut outcome = Outcome::quiet(reply);
        let log_end = self.log_ends.entry(deployment).or_default();
        outcome.events.extend(append_segments(
            (app, deployment),
            note_first,
            log_end,
            &note,
            now,
            group,
        ));
        for change in changes {
            self.stage(change, group, &mut outcome);
        }
        Ok(outcome)
    }
}
