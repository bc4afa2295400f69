//! The writer's deployment commands: create a deployment, append its log lines, move it to a
//! status. Each turns what the [`Lifecycle`](super::lifecycle::Lifecycle) decided into the
//! group's writes (the record, its line numbers and segments, the note line a transition
//! stores, the events); none decides what a deployment may do, and none does I/O (the group
//! commit writes what they add). Cancel is `control`'s.

use super::group::{now, put, Group, Outcome, WriterState};
use super::records::record_success;
use super::segments::append_segments;
use super::{Appended, Target, WriteError};
use crate::lines::Lines;
use crate::model::{AppId, Deployment, DeploymentId, Driver, LineNo, NewLine, Pusher};
use crate::status::Status;
use crate::store::codec;

impl WriterState {
    pub(super) fn create_deployment(
        &mut self,
        app_id: AppId,
        git_ref: String,
        pusher: Pusher,
        driver: Driver,
        group: &mut Group,
    ) -> Result<Outcome<Deployment>, WriteError> {
        let mut app = self.store.app(app_id)?.ok_or(WriteError::NotFound("app"))?;
        // `last_deployment` is the last successful one (see `record_success`).
        let previous_git_ref = match &app.last_deployment {
            Some(last) => self.store.deployment(last.id)?.map(|d| d.git_ref),
            None => None,
        };
        let created_at = now();
        let slot_note = self.lifecycle.max_executors().map(|max| {
            Lines::from(NewLine::system(format!(
                "-----> Waiting for a build slot: {max} deployments are running \
                 ([executor] max_concurrent = {max})"
            )))
        });
        let note_lines = slot_note.as_ref().map_or(0, |note| note.len() as u64);
        let (change, note_first) = self.lifecycle.admit(
            Deployment {
                id: DeploymentId::generate(),
                app_id,
                created_at,
                // Chosen by the lifecycle: building, or queued behind the app's running one.
                status: Status::Queued,
                finished_at: None,
                git_ref,
                previous_git_ref,
                pusher,
                image_size: 0,
                driver,
                last_line: LineNo(0),
                image_kept: false,
            },
            note_lines,
        );
        let deployment = change.record().clone();
        app.updated_at = created_at;
        let mut outcome = Outcome::quiet(deployment);
        let id = change.record().id;
        self.stage(change, group, &mut outcome);
        if let (Some(first), Some(note)) = (note_first, &slot_note) {
            let log_end = self.log_ends.entry(id).or_default();
            let events = append_segments((app_id, id), first, log_end, note, created_at, group);
            outcome.events.extend(events);
        }
        group
            .ops
            .push(put(codec::app_key(app_id), codec::encode_app(&app)));
        Ok(outcome)
    }

    pub(super) fn append_logs(
        &mut self,
        deployment: DeploymentId,
        mut lines: Lines,
        group: &mut Group,
    ) -> Result<Outcome<Appended>, WriteError> {
        let dropped = self.apply_log_limit(deployment, &mut lines);
        let count = lines.len() as u64;
        group.lines += count;
        let given = self
            .lifecycle
            .append(deployment, count)
            .map_err(|refusal| self.refused(deployment, refusal, None))?;
        let log_end = self.log_ends.entry(deployment).or_default();
        let events = append_segments(
            (given.app, deployment),
            given.first,
            log_end,
            &lines,
            now(),
            group,
        );
        let mut outcome = Outcome::quiet(Appended {
            last_line: given.last,
            dropped,
        });
        outcome.events = events;
        Ok(outcome)
    }

    pub(super) fn transition(
        &mut self,
        deployment: DeploymentId,
        target: Target,
        note: Option<NewLine>,
        group: &mut Group,
    ) -> Result<Outcome<Deployment>, WriteError> {
        let note = note.map(Lines::from);
        let note_lines = note.as_ref().map_or(0, |note| note.len() as u64);
        // Read before the lifecycle moves, so that a failed read refuses the whole command.
        let app_on_success = match target {
            Target::Status(Status::Success) => self.app_of(deployment, group)?,
            _ => None,
        };
        let now = now();
        let moved = self
            .lifecycle
            .transition(deployment, target, note_lines, now)
            .map_err(|refusal| self.refused(deployment, refusal, Some(target)))?;
        let app = moved.record.app_id;
        let mut outcome = Outcome::quiet(moved.record);
        if let Some(note) = &note {
            let log_end = self.log_ends.entry(deployment).or_default();
            outcome.events.extend(append_segments(
                (app, deployment),
                moved.note_first,
                log_end,
                note,
                now,
                group,
            ));
        }
        if let (Status::Success, Some(app)) = (outcome.value.status, app_on_success) {
            record_success(app, &outcome.value, group);
        }
        for change in moved.changes {
            self.stage(change, group, &mut outcome);
        }
        Ok(outcome)
    }
}
