//! Startup recovery (DESIGN.md): every deployment a crash or restart left unfinished lost its
//! session, so it ends (`aborted`, or `timeout-error` from `starting`) with a line saying why;
//! queued executor deployments keep their place and the head of each app's queue starts. One
//! whose cancel was accepted but not yet honoured (a `0x0E` record) ends as the cancel says,
//! after the `Cancelled by` line its cancel stored, with no restart line.
//!
//! A damaged log file (shorter than its index, `store::damage`) never stops the start: an
//! unfinished deployment's index is cut back to the intact part and the line that ends it says
//! which lines were lost; a finished one gets the damage recorded in a meta record.
//!
//! Runs once, on the thread that calls `Writer::start`, before any command; the decisions are
//! the lifecycle's, this module reads the store and commits them as one durable group.

use std::collections::HashMap;

use super::group::{now, put, Group, Outcome, WriterState};
use super::segments::append_segments;
use super::{Recovery, Target};
use crate::lines::Lines;
use crate::model::DeploymentId;
use crate::model::{Driver, NewLine};
use crate::status::Status;
use crate::store::engine::BatchOp;
use crate::store::{codec, damage, StoreError};

impl WriterState {
    /// Ends what a crash left unfinished (DESIGN.md), then starts queued executor deployments.
    pub(super) fn recover(&mut self) -> Result<Recovery, StoreError> {
        let mut recovery = Recovery::default();
        let mut group = Group::default();
        let (finished, mut unfinished): (Vec<_>, Vec<_>) = self
            .store
            .all_deployments()?
            .into_iter()
            .partition(|d| d.status.is_terminal());
        for deployment in &finished {
            self.record_damage(deployment.id, &mut group, &mut recovery)?;
        }
        let mut damaged = HashMap::new();
        for deployment in &mut unfinished {
            let (last_line, log_end) = self.store.log_end(deployment.id)?;
            deployment.last_line = last_line;
            self.log_ends.insert(deployment.id, log_end);
            if let Some(damage) = damage::find(&self.store, deployment.id)? {
                // The index is cut back to the intact part: the file grows from there again,
                // and the line that ends the deployment says what was lost.
                tracing::error!(deployment = %deployment.id, damage = %damage.describe(),
                    "damaged log file of an unfinished deployment: ending it");
                deployment.last_line = damage.intact_last;
                self.log_ends.insert(deployment.id, damage.intact_end);
                group
                    .ops
                    .extend(damage.lost_keys.iter().cloned().map(BatchOp::Delete));
                recovery.damaged.push((deployment.id, damage.describe()));
                damaged.insert(deployment.id, damage);
            }
        }
        let lost = self.lifecycle.recover(unfinished);
        let mut cancels = self.store.cancel_requests()?;
        let now = now();
        let mut outcome = Outcome::quiet(());
        for id in lost {
            let pending = match damaged.contains_key(&id) {
                // A damaged log's line says what was lost; that end keeps the restart line.
                true => None,
                false => cancels.remove(&id),
            };
            if let Some(request) = pending {
                // A cancel was accepted (its line is stored) but not honoured before the
                // restart: it ends as the cancel would have, with no restart line.
                tracing::info!(deployment = %id, by = %request.by,
                    "ending a deployment whose cancel was pending when deployd stopped");
                let moved = self
                    .lifecycle
                    .transition(id, Target::SessionLost, 0, now)
                    .expect("invariant: a lost session may always end an unfinished deployment");
                recovery.ended.push((id, moved.record.status));
                for change in moved.changes {
                    self.stage(change, &mut group, &mut outcome);
                }
                continue;
            }
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
            let why = match damaged.get(&id) {
                Some(damage) => format!("{why}; {}", damage.describe()),
                None => why,
            };
            let note = Lines::from(NewLine::system(format!("!     Deployment {}: {why}", to)));
            let moved = self
                .lifecycle
                .transition(id, Target::SessionLost, note.len() as u64, now)
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
        // Requests of deployments that are not unfinished any more honour nothing.
        for id in cancels.into_keys() {
            if self.lifecycle.get(id).is_none() {
                group
                    .ops
                    .push(BatchOp::Delete(codec::cancel_request_key(id)));
            }
        }
        for change in self.lifecycle.promote_waiting(now) {
            self.stage(change, &mut group, &mut outcome);
        }
        let counts = std::mem::take(&mut group.counts);
        super::counts::resolve(&self.store, counts, &mut group.ops)?;
        if !group.ops.is_empty() {
            self.appender
                .write_durably(&self.logs, &group.appends)
                .map_err(|err| StoreError::LogFile(err.source))?;
            self.apply_batch(group.ops)?;
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

    /// Records the damage of a finished deployment's log file in its meta record (once), and
    /// changes nothing else: nothing is stored after a terminal status, and `/output` is
    /// aborted where the damage starts.
    fn record_damage(
        &self,
        id: DeploymentId,
        group: &mut Group,
        recovery: &mut Recovery,
    ) -> Result<(), StoreError> {
        let Some(damage) = damage::find(&self.store, id)? else {
            return Ok(());
        };
        let name = damage::damage_meta_name(id);
        let text = damage.describe();
        tracing::error!(deployment = %id, damage = %text, "damaged log file of a finished deployment");
        if self.store.meta(&name)?.as_deref() != Some(text.as_bytes()) {
            group
                .ops
                .push(put(codec::meta_key(&name), text.clone().into_bytes()));
        }
        recovery.damaged.push((id, text));
        Ok(())
    }
}
