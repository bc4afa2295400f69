//! Startup recovery (DESIGN.md): every deployment a crash or restart left unfinished lost its
//! session, so it ends (`aborted`, or `timeout-error` from `starting`) with a line saying why;
//! queued executor deployments keep their place and the head of each app's queue starts.
//!
//! Runs once, on the thread that calls `Writer::start`, before any command; the decisions are
//! the lifecycle's, this module reads the store and commits them as one durable group.

use super::group::{now, Group, Outcome, WriterState};
use super::segments::{append_segments, line_count};
use super::{Recovery, Target};
use crate::model::{Driver, NewLine};
use crate::status::Status;
use crate::store::StoreError;

impl WriterState {
    /// Ends what a crash left unfinished (DESIGN.md), then starts queued executor deployments.
    pub(super) fn recover(&mut self) -> Result<Recovery, StoreError> {
        let mut recovery = Recovery::default();
        let mut unfinished = self.store.all_deployments()?;
        unfinished.retain(|d| !d.status.is_terminal());
        for deployment in &mut unfinished {
            let (last_line, log_end) = self.store.log_end(deployment.id)?;
            deployment.last_line = last_line;
            self.log_ends.insert(deployment.id, log_end);
        }
        let lost = self.lifecycle.recover(unfinished);
        let now = now();
        let mut group = Group::default();
        let mut outcome = Outcome::quiet(());
        for id in lost {
            let status = self
                .lifecycle
                .get(id)
                .map(|d| d.status)
                .expect("invariant: recover admitted it");
            let to = status.on_session_lost().expect("invariant: unfinished");
            let why = if status == Status::Queued {
                "its pusher's connection was lost when deployd restarted".to_string()
            } else {
                format!("deployd restarted while the deployment was {status}: its session was lost")
            };
            let note = [NewLine::system(format!("!     Deployment {}: {why}", to))];
            let moved = self
                .lifecycle
                .transition(id, Target::SessionLost, line_count(&note), now)
                .expect("invariant: a lost session may always end an unfinished deployment");
            let log_end = self.log_ends.entry(id).or_default();
            append_segments(
                (moved.record.app_id, id),
                moved.note_first,
                log_end,
                &note,
                now,
                &mut group,
            );
            for change in moved.changes {
                self.stage(change, &mut group, &mut outcome);
            }
            recovery.ended.push((id, to));
        }
        for change in self.lifecycle.promote_waiting(now) {
            self.stage(change, &mut group, &mut outcome);
        }
        if !group.ops.is_empty() {
            self.appender
                .write_durably(&self.logs, &group.appends)
                .map_err(|err| StoreError::LogFile(err.source))?;
            self.engine.apply(group.ops)?;
            self.engine.sync()?;
        }
        for (id, status) in &outcome.statuses {
            if status.is_terminal() {
                self.appender.close(*id);
            }
        }
        for (id, status) in &outcome.statuses {
            self.hub.record_status(*id, *status);
        }
        for deployment in self.lifecycle.live() {
            self.hub.record_status(deployment.id, deployment.status);
            if matches!(deployment.driver, Driver::Executor { .. }) {
                recovery.to_execute.push(deployment.clone());
            }
        }
        recovery.to_execute.sort_by_key(|d| d.id);
        Ok(recovery)
    }
}
