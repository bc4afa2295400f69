//! The unfinished deployments as the writer sees them: each one's record and line count, which
//! deployment of each app runs (is past `queued`), which wait, in order, and whether queued ones
//! are still promoted.
//!
//! Pure: no engine, no hub, no thread, no clock (`now` is passed in). Every operation validates
//! against this state and returns the [`Change`]s it made, which the group commit turns into
//! engine ops and hub events; a refused operation changes nothing. DESIGN.md's rule lives here:
//! never two deployments of one app past `queued` at once, and the next queued one starts when
//! the running one ends.

use std::collections::{HashMap, VecDeque};

use time::OffsetDateTime;

use super::Target;
use crate::model::{AppId, Deployment, DeploymentId, Driver, LineNo};
use crate::status::{check_transition, Status, TransitionError};

/// A change to one deployment's record, for the group commit to store and announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A new deployment, `building` or `queued`: store and index it, announce it.
    Created(Deployment),
    /// The deployment moved to `record.status` (ended, or promoted from `queued`): store it and
    /// publish the status at its `last_line`.
    Moved(Deployment),
    /// Only a field without an event changed (the image size): store it.
    Updated(Deployment),
}

impl Change {
    /// The record as it is after the change.
    pub(crate) fn record(&self) -> &Deployment {
        match self {
            Change::Created(record) | Change::Moved(record) | Change::Updated(record) => record,
        }
    }
}

/// Why an operation on a deployment was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not an unfinished deployment: finished, or never existed (the caller looks which).
    NotLive,
    /// Queued behind the app's running deployment: only giving up is allowed.
    Queued,
    /// The state machine forbids the move.
    Illegal(TransitionError),
    /// A cancel is pending (by this user): the session may only end the deployment the way a
    /// cancel ends it (`aborted`, or `timeout-error` from `starting`).
    Cancelling(String),
}

/// Line numbers given to one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lines {
    pub(crate) app: AppId,
    /// The first new line (one past the previous last line, even when no line was added).
    pub(crate) first: LineNo,
    /// The deployment's last line after the append.
    pub(crate) last: LineNo,
}

/// A transition that was allowed.
#[derive(Debug)]
pub(crate) struct Transitioned {
    /// The first line of the note stored before the status (when the note has lines).
    pub(crate) note_first: LineNo,
    /// The deployment's record after the move.
    pub(crate) record: Deployment,
    /// The move itself, then the promotion of the app's next queued deployment, if any.
    pub(crate) changes: Vec<Change>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    /// Every unfinished deployment, with its current `last_line`.
    live: HashMap<DeploymentId, Deployment>,
    /// Per app, the one deployment past `queued`.
    running: HashMap<AppId, DeploymentId>,
    /// Per app, queued deployments, oldest first.
    queues: HashMap<AppId, VecDeque<DeploymentId>>,
    /// Set at shutdown: queued deployments are no longer promoted.
    draining: bool,
    /// Running deployments whose cancel is pending, with who asked (until they end).
    cancels: HashMap<DeploymentId, String>,
    /// At most this many executor deployments past `queued` at once (`None`: no limit).
    max_executors: Option<usize>,
    /// Executor deployments past `queued` now (each is in `running`).
    executors_running: usize,
}

/// What a cancel did.
#[derive(Debug)]
pub(crate) enum Cancel {
    /// The deployment was queued: it ended `aborted` at once (the note is before the status).
    Ended(Transitioned),
    /// The deployment runs: the request is now pending, its session must honour it. The note
    /// (who cancelled) takes the lines from `note_first`.
    Requested {
        note_first: LineNo,
        record: Deployment,
    },
    /// A cancel was already pending: nothing changed.
    Repeated(Deployment),
}

impl Lifecycle {
    /// An unfinished deployment.
    pub(crate) fn get(&self, id: DeploymentId) -> Option<&Deployment> {
        self.live.get(&id)
    }

    /// Every unfinished deployment, in no particular order.
    pub(crate) fn live(&self) -> impl Iterator<Item = &Deployment> {
        self.live.values()
    }

    /// The lifecycle of a server that runs at most `max_executors` executor deployments past
    /// `queued` at once (`None`: no limit; `Some(0)` is treated as no limit too).
    pub(crate) fn with_build_slots(max_executors: Option<usize>) -> Self {
        Self {
            max_executors: max_executors.filter(|max| *max > 0),
            ..Self::default()
        }
    }

    /// The build-slot limit, if any.
    pub(crate) fn max_executors(&self) -> Option<usize> {
        self.max_executors
    }

    /// Admits a new deployment from `draft`: `building` when its app has none running, else
    /// `queued` behind the others. The draft's status, end and line count are set here.
    #[cfg(test)]
    pub(crate) fn create(&mut self, draft: Deployment) -> Change {
        self.admit(draft, 0).0
    }

    /// [`Self::create`], and when the deployment must wait for a build slot (its app has none
    /// running but every slot is taken), gives `slot_note_lines` lines to a note saying so,
    /// returning the note's first line.
    pub(crate) fn admit(
        &mut self,
        mut draft: Deployment,
        slot_note_lines: u64,
    ) -> (Change, Option<LineNo>) {
        let id = draft.id;
        let app = draft.app_id;
        let executor = matches!(draft.driver, Driver::Executor { .. });
        draft.finished_at = None;
        draft.last_line = LineNo(0);
        let mut note = None;
        let app_waits = self.queues.get(&app).is_some_and(|queue| !queue.is_empty());
        if self.running.contains_key(&app) || app_waits {
            // Creation order within an app: behind its running one, or behind its own
            // deployments waiting for a build slot.
            self.queues.entry(app).or_default().push_back(id);
            draft.status = Status::Queued;
        } else if executor && !self.slot_free() {
            // First come, first served across apps: it waits in its app's queue, and the oldest
            // head of any queue takes the next free slot.
            self.queues.entry(app).or_default().push_back(id);
            draft.status = Status::Queued;
            note = Some(advance(&mut draft, slot_note_lines).first);
        } else {
            self.running.insert(app, id);
            if executor {
                self.executors_running += 1;
            }
            draft.status = Status::Building;
        }
        self.live.insert(id, draft.clone());
        (Change::Created(draft), note)
    }

    /// Whether one more executor deployment may start.
    fn slot_free(&self) -> bool {
        self.max_executors
            .is_none_or(|max| self.executors_running < max)
    }

    /// Gives the next `count` line numbers to a deployment's output. Refused when it is not
    /// unfinished or still queued.
    pub(crate) fn append(&mut self, id: DeploymentId, count: u64) -> Result<Lines, Refusal> {
        let record = self.live.get_mut(&id).ok_or(Refusal::NotLive)?;
        if record.status == Status::Queued {
            return Err(Refusal::Queued);
        }
        Ok(advance(record, count))
    }

    /// Moves a deployment: to `target`, after `note_lines` lines of a note (why it moved). On a
    /// terminal status the app's next queued deployment is promoted (unless draining).
    pub(crate) fn transition(
        &mut self,
        id: DeploymentId,
        target: Target,
        note_lines: u64,
        now: OffsetDateTime,
    ) -> Result<Transitioned, Refusal> {
        let record = self.live.get_mut(&id).ok_or(Refusal::NotLive)?;
        let from = record.status;
        let to = match target {
            Target::Status(to) => to,
            Target::SessionLost => from
                .on_session_lost()
                .expect("invariant: live deployments are unfinished"),
        };
        if let Some(by) = self.cancels.get(&id) {
            if Some(to) != from.on_session_lost() {
                return Err(Refusal::Cancelling(by.clone()));
            }
        }
        if from == Status::Queued && to != Status::Aborted {
            // Only the writer promotes a queued deployment, when the app's running one ends;
            // until then its session may only give up. Any other move is "wait", not "illegal"
            // (the push protocol's `queued` code), so a pusher knows to wait for `building`.
            return Err(Refusal::Queued);
        }
        check_transition(from, to).map_err(Refusal::Illegal)?;
        let note_first = advance(record, note_lines).first;
        let mut changes = Vec::new();
        let record = self.set_status(id, to, now, &mut changes);
        Ok(Transitioned {
            note_first,
            record,
            changes,
        })
    }

    /// Cancels a deployment on behalf of `by`, with a note of `note_lines` lines: a queued one
    /// ends `aborted` now; a running one gets a pending request that only lets its session end
    /// it (see [`Refusal::Cancelling`]); a repeated cancel changes nothing.
    pub(crate) fn cancel(
        &mut self,
        id: DeploymentId,
        by: &str,
        note_lines: u64,
        now: OffsetDateTime,
    ) -> Result<Cancel, Refusal> {
        let record = self.live.get_mut(&id).ok_or(Refusal::NotLive)?;
        if record.status == Status::Queued {
            return self
                .transition(id, Target::Status(Status::Aborted), note_lines, now)
                .map(Cancel::Ended);
        }
        if self.cancels.contains_key(&id) {
            return Ok(Cancel::Repeated(record.clone()));
        }
        let note_first = advance(record, note_lines).first;
        let record = record.clone();
        self.cancels.insert(id, by.to_owned());
        Ok(Cancel::Requested { note_first, record })
    }

    /// Records a deployment's image size.
    pub(crate) fn set_image_size(
        &mut self,
        id: DeploymentId,
        bytes: u64,
    ) -> Result<Change, Refusal> {
        let record = self.live.get_mut(&id).ok_or(Refusal::NotLive)?;
        record.image_size = bytes;
        Ok(Change::Updated(record.clone()))
    }

    /// Forgets a deleted app: returns its deployments that were unfinished.
    pub(crate) fn remove_app(&mut self, app: AppId) -> Vec<DeploymentId> {
        let mut removed: Vec<DeploymentId> = self
            .live
            .values()
            .filter(|d| d.app_id == app)
            .map(|d| d.id)
            .collect();
        removed.sort();
        if let Some(running) = self.running.get(&app) {
            if self
                .live
                .get(running)
                .is_some_and(|d| matches!(d.driver, Driver::Executor { .. }))
            {
                // Its slot is free again; the delete promotes the oldest waiting deployment
                // in its own commit (`records::delete_app`).
                self.executors_running = self.executors_running.saturating_sub(1);
            }
        }
        for id in &removed {
            self.live.remove(id);
            self.cancels.remove(id);
        }
        self.running.remove(&app);
        self.queues.remove(&app);
        removed
    }

    /// Shutdown has begun: queued deployments stay queued (and run after the restart).
    pub(crate) fn stop_promoting(&mut self) {
        self.draining = true;
    }

    /// The same lifecycle rebuilt from `unfinished` as the store holds them (after a failed
    /// commit changed memory only): the deployment of each app past `queued` runs, queued ones
    /// wait in id (creation) order, nothing is ended or promoted; draining carries over.
    pub(crate) fn rebuilt(&self, mut unfinished: Vec<Deployment>) -> Lifecycle {
        unfinished.retain(|d| !d.status.is_terminal());
        unfinished.sort_by_key(|d| d.id);
        // What only memory holds survives the rebuild: the build-slot limit and the pending
        // cancels (a 202 was answered for them); the slot count is recounted from the store.
        let mut rebuilt = Lifecycle {
            draining: self.draining,
            max_executors: self.max_executors,
            ..Lifecycle::default()
        };
        for deployment in unfinished {
            let (id, app) = (deployment.id, deployment.app_id);
            if deployment.status == Status::Queued {
                rebuilt.queues.entry(app).or_default().push_back(id);
            } else {
                rebuilt.running.insert(app, id);
                if matches!(deployment.driver, Driver::Executor { .. }) {
                    rebuilt.executors_running += 1;
                }
                if let Some(by) = self.cancels.get(&id) {
                    rebuilt.cancels.insert(id, by.clone());
                }
            }
            rebuilt.live.insert(id, deployment);
        }
        rebuilt
    }

    /// Admits what a crash left unfinished: queued executor deployments wait in their app's
    /// queue again, in id (creation) order; every other one lost its session and is returned,
    /// in id order, for the caller to end with [`Target::SessionLost`]. Afterwards,
    /// [`Lifecycle::promote_waiting`] starts the queues.
    pub(crate) fn recover(&mut self, mut unfinished: Vec<Deployment>) -> Vec<DeploymentId> {
        unfinished.retain(|d| !d.status.is_terminal());
        unfinished.sort_by_key(|d| d.id);
        let mut lost = Vec::new();
        for deployment in unfinished {
            let id = deployment.id;
            if deployment.status == Status::Queued
                && matches!(deployment.driver, Driver::Executor { .. })
            {
                self.queues
                    .entry(deployment.app_id)
                    .or_default()
                    .push_back(id);
            } else {
                lost.push(id);
            }
            self.live.insert(id, deployment);
        }
        lost
    }

    /// Starts the oldest queued deployment of every app that has none running (executor ones
    /// while build slots are free).
    pub(crate) fn promote_waiting(&mut self, now: OffsetDateTime) -> Vec<Change> {
        let mut changes = Vec::new();
        self.promote_all(now, &mut changes);
        changes
    }

    /// Writes a validated status change; on a terminal status, promotes the app's next queued
    /// deployment.
    fn set_status(
        &mut self,
        id: DeploymentId,
        to: Status,
        now: OffsetDateTime,
        changes: &mut Vec<Change>,
    ) -> Deployment {
        let record = self
            .live
            .get_mut(&id)
            .expect("invariant: caller checked liveness");
        let from = record.status;
        record.status = to;
        if to.is_terminal() {
            record.finished_at = Some(now);
        }
        let snapshot = record.clone();
        changes.push(Change::Moved(snapshot.clone()));
        if to.is_terminal() {
            let app = snapshot.app_id;
            self.live.remove(&id);
            self.cancels.remove(&id);
            if from == Status::Queued {
                let mut was_head = false;
                if let Some(queue) = self.queues.get_mut(&app) {
                    was_head = queue.front() == Some(&id);
                    queue.retain(|queued| *queued != id);
                }
                // The head of a queue whose app runs nothing waited for a build slot; the one
                // behind it may be an external pusher's, which needs none: it starts now.
                if was_head && !self.running.contains_key(&app) {
                    self.promote_all(now, changes);
                }
            } else if self.running.get(&app) == Some(&id) {
                self.running.remove(&app);
                if matches!(snapshot.driver, Driver::Executor { .. }) {
                    self.executors_running = self.executors_running.saturating_sub(1);
                }
                self.promote_all(now, changes);
            }
        }
        snapshot
    }

    /// Starts the head of every app's queue whose app has none running, oldest (lowest id:
    /// ids rise in creation order) first, so build slots go first come, first served across
    /// apps; an executor head waits while no slot is free, an external pusher's takes none.
    fn promote_all(&mut self, now: OffsetDateTime, changes: &mut Vec<Change>) {
        if self.draining {
            return;
        }
        let mut heads: Vec<(DeploymentId, AppId)> = self
            .queues
            .iter()
            .filter(|(app, _)| !self.running.contains_key(app))
            .filter_map(|(app, queue)| queue.front().map(|id| (*id, *app)))
            .collect();
        heads.sort();
        for (next, app) in heads {
            let executor = self
                .live
                .get(&next)
                .is_some_and(|d| matches!(d.driver, Driver::Executor { .. }));
            if executor && !self.slot_free() {
                continue;
            }
            if let Some(queue) = self.queues.get_mut(&app) {
                queue.pop_front();
            }
            self.running.insert(app, next);
            if executor {
                self.executors_running += 1;
            }
            self.set_status(next, Status::Building, now, changes);
        }
    }
}

/// Gives `count` more lines to `record`.
fn advance(record: &mut Deployment, count: u64) -> Lines {
    let first = record.last_line.next();
    record.last_line = LineNo(record.last_line.0 + count);
    Lines {
        app: record.app_id,
        first,
        last: record.last_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Pusher, UserId};
    use proptest::prelude::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    fn executor() -> Driver {
        Driver::Executor {
            source_url: "http://example.com/a.tar.gz".into(),
            postdeploy_hook: None,
        }
    }

    /// A draft with a fresh id, ids rising in creation order as the store's do.
    fn draft(app: AppId, driver: Driver) -> Deployment {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Deployment {
            id: DeploymentId::from_bytes(u128::from(n).to_be_bytes()),
            app_id: app,
            created_at: now(),
            status: Status::Success,
            finished_at: Some(now()),
            git_ref: "r".into(),
            previous_git_ref: None,
            pusher: Pusher {
                id: UserId::generate(),
                username: "u".into(),
                email: "u@x".into(),
            },
            image_size: 0,
            driver,
            last_line: LineNo(9),
            image_kept: false,
        }
    }

    #[test]
    fn a_second_deployment_queues_and_takes_no_output_until_it_starts() {
        let mut life = Lifecycle::default();
        let app = AppId::generate();
        let first = life.create(draft(app, Driver::External)).record().clone();
        assert_eq!(first.status, Status::Building);
        assert_eq!(first.last_line, LineNo(0), "a draft's line count is reset");
        let second = life.create(draft(app, Driver::External)).record().clone();
        assert_eq!(second.status, Status::Queued);
        assert_eq!(life.append(second.id, 1), Err(Refusal::Queued));
        let lines = life.append(first.id, 3).expect("append");
        assert_eq!((lines.first, lines.last), (LineNo(1), LineNo(3)));
        let ended = life
            .transition(first.id, Target::Status(Status::BuildError), 1, now())
            .expect("end");
        assert_eq!(ended.note_first, LineNo(4));
        assert_eq!(ended.record.last_line, LineNo(4));
        assert_eq!(ended.changes.len(), 2, "the end, then the promotion");
        assert_eq!(ended.changes[1].record().id, second.id);
        assert_eq!(ended.changes[1].record().status, Status::Building);
        assert_eq!(
            life.append(first.id, 1),
            Err(Refusal::NotLive),
            "a finished deployment takes no output"
        );
    }

    #[test]
    fn a_pushers_deployment_behind_a_cancelled_slot_waiter_of_its_app_starts_instead_of_staying_queued(
    ) {
        let mut life = Lifecycle::with_build_slots(Some(1));
        let (holder, app) = (AppId::generate(), AppId::generate());
        life.create(draft(holder, executor()));
        let waiter = life.create(draft(app, executor())).record().id;
        let pushed = life.create(draft(app, Driver::External)).record().clone();
        assert_eq!(
            pushed.status,
            Status::Queued,
            "creation order within the app"
        );
        let Cancel::Ended(ended) = life.cancel(waiter, "ann", 1, now()).expect("cancel") else {
            panic!("a queued deployment ends at once");
        };
        let moved: Vec<_> = ended
            .changes
            .iter()
            .map(|c| (c.record().id, c.record().status))
            .collect();
        assert_eq!(
            moved,
            [(waiter, Status::Aborted), (pushed.id, Status::Building)],
            "a pusher takes no build slot"
        );
    }

    #[test]
    fn a_cancel_aborts_a_queued_deployment_at_once_and_leaves_a_running_one_only_the_cancel_end() {
        let mut life = Lifecycle::default();
        let app = AppId::generate();
        let running = life.create(draft(app, Driver::External)).record().id;
        let queued = life.create(draft(app, Driver::External)).record().id;
        let Cancel::Ended(ended) = life.cancel(queued, "ann", 1, now()).expect("cancel") else {
            panic!("a queued deployment ends at once");
        };
        assert_eq!(ended.record.status, Status::Aborted);
        assert_eq!(ended.record.last_line, LineNo(1), "the note is stored");

        life.transition(running, Target::Status(Status::Pushing), 0, now())
            .expect("pushing");
        let Cancel::Requested { note_first, record } =
            life.cancel(running, "ann", 1, now()).expect("cancel")
        else {
            panic!("a running deployment gets a pending request");
        };
        assert_eq!((note_first, record.status), (LineNo(1), Status::Pushing));
        assert!(matches!(
            life.cancel(running, "bob", 1, now()),
            Ok(Cancel::Repeated(record)) if record.last_line == LineNo(1)
        ));
        for refused in [Status::Starting, Status::Success] {
            assert_eq!(
                life.transition(running, Target::Status(refused), 0, now())
                    .map(|t| t.record.status),
                Err(Refusal::Cancelling("ann".into()))
            );
        }
        assert!(life.append(running, 2).is_ok(), "output still drains");
        let ended = life
            .transition(running, Target::Status(Status::Aborted), 0, now())
            .expect("the cancel's end");
        assert_eq!(ended.record.status, Status::Aborted);
        assert!(life.cancels.is_empty());
        assert_eq!(
            life.cancel(running, "ann", 1, now()).map(|_| ()),
            Err(Refusal::NotLive)
        );
    }

    #[test]
    fn a_rebuild_after_a_transient_store_failure_keeps_the_build_slots_and_pending_cancels() {
        let mut life = Lifecycle::with_build_slots(Some(1));
        let (a, b) = (AppId::generate(), AppId::generate());
        let (first, _) = life.admit(draft(a, executor()), 1);
        let (waiting, _) = life.admit(draft(b, executor()), 1);
        let first_id = first.record().id;
        assert!(matches!(
            life.cancel(first_id, "ann", 1, now()),
            Ok(Cancel::Requested { .. })
        ));
        let unfinished: Vec<Deployment> = life.live().cloned().collect();

        let mut rebuilt = life.rebuilt(unfinished);
        assert_eq!(rebuilt.max_executors(), Some(1));
        assert_eq!(
            rebuilt
                .transition(first_id, Target::Status(Status::Success), 0, now())
                .map(|t| t.record.status),
            Err(Refusal::Cancelling("ann".into())),
            "the 202 answered before the failure still holds"
        );
        let second = rebuilt.admit(draft(AppId::generate(), executor()), 1).0;
        assert_eq!(
            second.record().status,
            Status::Queued,
            "the one slot is taken"
        );
        let ended = rebuilt
            .transition(first_id, Target::Status(Status::Aborted), 0, now())
            .expect("the cancel's own end");
        assert_eq!(ended.changes[1].record().id, waiting.record().id);
    }

    #[test]
    fn build_slots_go_first_come_first_served_across_apps_and_pushers_take_none() {
        let mut life = Lifecycle::with_build_slots(Some(1));
        let (a, b, c) = (AppId::generate(), AppId::generate(), AppId::generate());
        let (first, note) = life.admit(draft(a, executor()), 1);
        assert_eq!((first.record().status, note), (Status::Building, None));
        let (waiting_b, note) = life.admit(draft(b, executor()), 1);
        assert_eq!(waiting_b.record().status, Status::Queued);
        assert_eq!(note, Some(LineNo(1)), "it says why it waits");
        let (waiting_c, _) = life.admit(draft(c, executor()), 1);
        assert_eq!(waiting_c.record().status, Status::Queued);
        let pusher = life.create(draft(c, Driver::External));
        assert_eq!(
            pusher.record().status,
            Status::Queued,
            "behind its app's own"
        );
        let other_pusher = life.create(draft(AppId::generate(), Driver::External));
        assert_eq!(
            other_pusher.record().status,
            Status::Building,
            "no slot needed"
        );

        let ended = life
            .transition(
                first.record().id,
                Target::Status(Status::BuildError),
                0,
                now(),
            )
            .expect("end");
        let started: Vec<_> = ended.changes[1..].iter().map(|c| c.record().id).collect();
        assert_eq!(
            started,
            vec![waiting_b.record().id],
            "the oldest waiter only"
        );
        let ended = life
            .transition(waiting_b.record().id, Target::SessionLost, 0, now())
            .expect("end");
        assert_eq!(ended.changes[1].record().id, waiting_c.record().id);
    }

    #[test]
    fn once_draining_an_ended_deployment_promotes_nothing() {
        let mut life = Lifecycle::default();
        let app = AppId::generate();
        let first = life.create(draft(app, Driver::External)).record().id;
        let second = life.create(draft(app, Driver::External)).record().id;
        life.stop_promoting();
        let ended = life
            .transition(first, Target::SessionLost, 0, now())
            .expect("lost");
        assert_eq!(ended.changes.len(), 1);
        assert_eq!(life.get(second).map(|d| d.status), Some(Status::Queued));
    }

    #[test]
    fn recovery_requeues_executor_deployments_and_returns_the_rest_to_end() {
        let mut life = Lifecycle::default();
        let app = AppId::generate();
        let mut running = draft(app, Driver::External);
        running.status = Status::Building;
        let mut waiting = draft(app, executor());
        waiting.status = Status::Queued;
        let mut external_waiting = draft(app, Driver::External);
        external_waiting.status = Status::Queued;
        let done = draft(app, Driver::External);
        let lost = life.recover(vec![
            external_waiting.clone(),
            done,
            waiting.clone(),
            running.clone(),
        ]);
        let mut expected = vec![running.id, external_waiting.id];
        expected.sort();
        assert_eq!(lost, expected);
        for id in lost {
            life.transition(id, Target::SessionLost, 1, now())
                .expect("end");
        }
        let started = life.promote_waiting(now());
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].record().id, waiting.id);
        assert_eq!(started[0].record().status, Status::Building);
    }

    /// One step of a random history over a few apps.
    #[derive(Debug, Clone)]
    enum Step {
        Create {
            app: usize,
            executor: bool,
        },
        /// Move the `pick`-th live deployment (mod their count) along the happy path.
        Advance {
            pick: usize,
        },
        /// End it with a terminal status.
        End {
            pick: usize,
            status: Status,
        },
        SessionLost {
            pick: usize,
        },
        Append {
            pick: usize,
            lines: u64,
        },
        /// The process dies and restarts: recovery.
        Crash,
    }

    const APPS: usize = 3;

    fn step() -> impl Strategy<Value = Step> {
        let terminal = prop::sample::select(vec![
            Status::Success,
            Status::BuildError,
            Status::Aborted,
            Status::CrashedError,
        ]);
        prop_oneof![
            4 => (0..APPS, any::<bool>()).prop_map(|(app, executor)| Step::Create { app, executor }),
            3 => any::<usize>().prop_map(|pick| Step::Advance { pick }),
            3 => (any::<usize>(), terminal).prop_map(|(pick, status)| Step::End { pick, status }),
            2 => any::<usize>().prop_map(|pick| Step::SessionLost { pick }),
            2 => (any::<usize>(), 0..4u64).prop_map(|(pick, lines)| Step::Append { pick, lines }),
            1 => Just(Step::Crash),
        ]
    }

    fn pick(life: &Lifecycle, pick: usize) -> Option<DeploymentId> {
        let mut ids: Vec<DeploymentId> = life.live().map(|d| d.id).collect();
        ids.sort();
        (!ids.is_empty()).then(|| ids[pick % ids.len()])
    }

    /// The rule, checked against the state and an independent model of the queues: per app at
    /// most one live deployment past `queued`; an app with queued deployments has one running;
    /// and every promotion starts the oldest queued deployment of its app.
    fn check(life: &Lifecycle, changes: &[Change], model: &mut HashMap<AppId, Vec<DeploymentId>>) {
        for change in changes {
            let record = change.record();
            if let Change::Moved(moved) = change {
                if moved.status == Status::Building {
                    if let Some(queue) = model.get_mut(&record.app_id) {
                        if queue.contains(&moved.id) {
                            assert_eq!(
                                queue.first(),
                                Some(&moved.id),
                                "promotions go in creation order"
                            );
                        }
                    }
                }
            }
            if record.status != Status::Queued {
                if let Some(queue) = model.get_mut(&record.app_id) {
                    queue.retain(|id| *id != record.id);
                }
            }
        }
        let mut past_queued: HashMap<AppId, usize> = HashMap::new();
        let mut waiting: HashMap<AppId, usize> = HashMap::new();
        for deployment in life.live() {
            if deployment.status == Status::Queued {
                *waiting.entry(deployment.app_id).or_default() += 1;
            } else {
                *past_queued.entry(deployment.app_id).or_default() += 1;
            }
        }
        for (app, count) in &past_queued {
            assert_eq!(*count, 1, "two deployments of {app} past queued");
            assert!(life.running.contains_key(app));
        }
        for app in waiting.keys() {
            assert!(
                past_queued.contains_key(app),
                "{app} has queued deployments and none running"
            );
        }
    }

    proptest! {
        #[test]
        fn never_two_deployments_of_one_app_past_queued_and_queued_ones_start_in_order(
            steps in prop::collection::vec(step(), 1..60)
        ) {
            let apps: Vec<AppId> = (0..APPS).map(|_| AppId::generate()).collect();
            let mut life = Lifecycle::default();
            // Per app, its queued deployments in creation order.
            let mut model: HashMap<AppId, Vec<DeploymentId>> = HashMap::new();
            for step in steps {
                let mut changes = Vec::new();
                match step {
                    Step::Create { app, executor: on_executor } => {
                        let driver = if on_executor {
                            executor()
                        } else {
                            Driver::External
                        };
                        let change = life.create(draft(apps[app], driver));
                        if change.record().status == Status::Queued {
                            model.entry(apps[app]).or_default().push(change.record().id);
                        }
                        changes.push(change);
                    }
                    Step::Advance { pick: n } => {
                        if let Some(id) = pick(&life, n) {
                            let next = match life.get(id).map(|d| d.status) {
                                Some(Status::Building) => Status::Pushing,
                                Some(Status::Pushing) => Status::Starting,
                                Some(Status::Starting) => Status::Success,
                                _ => Status::Building,
                            };
                            if let Ok(done) = life.transition(id, Target::Status(next), 0, now()) {
                                changes.extend(done.changes);
                            }
                        }
                    }
                    Step::End { pick: n, status } => {
                        if let Some(id) = pick(&life, n) {
                            if let Ok(done) = life.transition(id, Target::Status(status), 0, now()) {
                                changes.extend(done.changes);
                            }
                        }
                    }
                    Step::SessionLost { pick: n } => {
                        if let Some(id) = pick(&life, n) {
                            let done = life
                                .transition(id, Target::SessionLost, 1, now())
                                .expect("a lost session always ends a live deployment");
                            prop_assert!(done.record.status.is_terminal());
                            changes.extend(done.changes);
                        }
                    }
                    Step::Append { pick: n, lines } => {
                        if let Some(id) = pick(&life, n) {
                            let before = life.get(id).map(|d| (d.status, d.last_line));
                            match life.append(id, lines) {
                                Ok(got) => prop_assert_eq!(got.last.0, got.first.0 + lines - 1),
                                Err(refusal) => {
                                    prop_assert_eq!(refusal, Refusal::Queued);
                                    prop_assert_eq!(life.get(id).map(|d| (d.status, d.last_line)), before);
                                }
                            }
                        }
                    }
                    Step::Crash => {
                        let unfinished: Vec<Deployment> = life.live().cloned().collect();
                        life = Lifecycle::default();
                        for id in life.recover(unfinished) {
                            let done = life.transition(id, Target::SessionLost, 1, now())
                                .expect("recovery ends every lost session");
                            changes.extend(done.changes);
                        }
                        changes.extend(life.promote_waiting(now()));
                        // External queued deployments are aborted; executor ones keep their
                        // order.
                        for queue in model.values_mut() {
                            queue.retain(|id| life.get(*id).is_some_and(|d| d.status == Status::Queued)
                                || changes.iter().any(|c| c.record().id == *id && c.record().status == Status::Building));
                        }
                    }
                }
                check(&life, &changes, &mut model);
            }
            // Draining: ending each app's running deployment starts its queued ones, one at a
            // time, oldest first, until none is left.
            for app in &apps {
                let expected = model.get(app).cloned().unwrap_or_default();
                let mut started = Vec::new();
                loop {
                    let running = life.live().find(|d| d.app_id == *app && d.status != Status::Queued).map(|d| d.id);
                    let Some(id) = running else { break };
                    let done = life.transition(id, Target::SessionLost, 0, now()).expect("end");
                    started.extend(done.changes.iter().skip(1).map(|c| c.record().id));
                    check(&life, &done.changes, &mut model);
                }
                prop_assert_eq!(started, expected);
                prop_assert!(life.live().all(|d| d.app_id != *app), "every queued deployment ran");
            }
        }
    }
}
