//! The writer thread: its loop and the group commit.
//!
//! Each group goes validate → write → sync → reply → publish: commands are validated one by one
//! against committed state and the [`Lifecycle`], their log text is written and `fdatasync`ed to
//! the log files *before* the engine batch holding the index entries that point into it is
//! applied and synced, and only then are callers answered and events published, in command
//! order. This is where commands meet the engine, the log files and the hub (the named records'
//! writes are in `records`, the deployment commands' in `deployments` and `control`); what a
//! deployment may do is decided by `lifecycle`, never here.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::failure::{CommitFailure, HealthCell, Trouble};
use super::handle::{Command, Reply};
use super::lifecycle::{Change, Lifecycle, Refusal};
use super::log_limit::LogLimit;
use super::prune::index_status;
use super::{Target, WriteError, MAX_GROUP_BYTES, MAX_GROUP_COMMANDS};
use crate::model::{AppId, Deployment, DeploymentId};
use crate::status::{Status, TransitionError};
use crate::store::codec;
use crate::store::engine::{BatchOp, Engine, EngineError};
use crate::store::events::{Event, EventKind, Publish};
use crate::store::logs::{Appender, LogFiles};
use crate::store::{Segment, Store};

/// What a validated command does once its group is durable.
struct Done {
    /// Each event goes to its own app's subscribers (`Event::app_id`): one command may move
    /// deployments of several apps (an end that frees a build slot promotes another app's).
    events: Vec<Event>,
    statuses: Vec<(DeploymentId, Status)>,
    reply: Box<dyn FnOnce(Option<WriteError>) + Send>,
}

/// A validated command's answer and effects, before its group commits.
pub(super) struct Outcome<T> {
    pub(super) value: T,
    /// Published once durable, each on the channel of its own `app_id`.
    pub(super) events: Vec<Event>,
    pub(super) statuses: Vec<(DeploymentId, Status)>,
}

impl<T> Outcome<T> {
    /// An answer with no events yet: the work adds those of the deployments it touches.
    pub(super) fn quiet(value: T) -> Self {
        Self {
            value,
            events: Vec::new(),
            statuses: Vec::new(),
        }
    }
}

/// Splits one command's events by app, keeping their order within each app (the only order a
/// subscriber sees: channels are per app). Apps come in the order of their first event.
fn by_app(events: Vec<Event>) -> Vec<(AppId, Vec<Event>)> {
    let mut split: Vec<(AppId, Vec<Event>)> = Vec::new();
    for event in events {
        match split.iter_mut().find(|(app, _)| *app == event.app_id) {
            Some((_, of_app)) => of_app.push(event),
            None => split.push((event.app_id, vec![event])),
        }
    }
    split
}

/// A group being built: log file appends, engine ops, and what to do after the commit.
#[derive(Default)]
pub(crate) struct Group {
    /// Segments to append to log files: (deployment, file offset, bytes), written and synced
    /// before `ops` (which hold their index entries) are committed.
    pub(crate) appends: Vec<(DeploymentId, u64, Segment)>,
    /// Log files to remove once `ops` (which drop their index) are committed.
    pub(super) removals: Vec<DeploymentId>,
    pub(crate) ops: Vec<BatchOp>,
    done: Vec<Done>,
    pub(crate) text_bytes: usize,
    /// Output lines appended by the group (for the metrics).
    pub(super) lines: u64,
    /// Deployment records created or moved by the group, with whether each was created (for
    /// the metrics and the deployment log lines, once durable).
    moved: Vec<(Deployment, bool)>,
    /// Changes to the status index, resolved into count ops just before the batch is applied.
    pub(super) counts: Vec<super::counts::CountChange>,
}

pub(crate) fn put(key: Vec<u8>, value: Vec<u8>) -> BatchOp {
    BatchOp::Put(key, Bytes::from(value))
}

pub(super) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The writer thread's state.
pub(super) struct WriterState {
    pub(super) store: Store,
    pub(super) engine: Arc<dyn Engine>,
    pub(super) logs: LogFiles,
    pub(super) appender: Appender,
    /// Per unfinished deployment, the end of its log file's indexed part.
    pub(super) log_ends: HashMap<DeploymentId, u64>,
    pub(super) hub: Arc<dyn Publish>,
    pub(super) lifecycle: Lifecycle,
    /// `[retention] max_log_bytes`, applied to every append.
    pub(super) log_limit: LogLimit,
    /// Set when a commit failed (`failure`): every write is refused while it lasts.
    pub(super) trouble: Trouble,
    /// What `/readyz` reads.
    pub(super) health: HealthCell,
    /// Live backup snapshots and the log files held back for them (`snapshot`).
    pub(super) snapshots: super::snapshot::Snapshots,
}

impl WriterState {
    pub(super) fn new(store: Store, hub: Arc<dyn Publish>, health: HealthCell) -> Self {
        Self {
            engine: store.engine().clone(),
            logs: store.logs().clone(),
            appender: Appender::default(),
            log_ends: HashMap::new(),
            store,
            hub,
            lifecycle: Lifecycle::default(),
            log_limit: LogLimit::default(),
            trouble: Trouble::None,
            health,
            snapshots: Default::default(),
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut carry: Option<Command> = None;
        loop {
            if self.is_failing() {
                // A command queued behind the failed group is refused like those sent while
                // failing: unchanged.
                if let Some(cmd) = carry.take() {
                    self.apply(cmd, &mut Group::default());
                }
                if !self.wait_while_failing(&mut rx) {
                    return;
                }
            }
            let first = match carry.take() {
                Some(cmd) => cmd,
                None => match rx.blocking_recv() {
                    Some(cmd) => cmd,
                    None => return,
                },
            };
            let mut group = Group::default();
            if first.commits_alone() {
                self.apply(first, &mut group);
            } else {
                self.apply(first, &mut group);
                while group.done.len() < MAX_GROUP_COMMANDS && group.text_bytes < MAX_GROUP_BYTES {
                    match rx.try_recv() {
                        Ok(cmd) if cmd.commits_alone() => {
                            carry = Some(cmd);
                            break;
                        }
                        Ok(cmd) => self.apply(cmd, &mut group),
                        Err(_) => break,
                    }
                }
            }
            self.commit(group);
        }
    }

    /// While failing: refuses every command that arrives and probes the store with backoff,
    /// until a probe succeeds (true) or every handle is gone (false: the writer stops).
    fn wait_while_failing(&mut self, rx: &mut mpsc::Receiver<Command>) -> bool {
        while let Some(pause) = self.probe_when_due() {
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.apply(cmd, &mut Group::default()),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return false,
                }
            }
            std::thread::sleep(pause);
        }
        true
    }

    /// Writes a group durably: log text first (written and synced), then the index that
    /// points into it.
    fn write_group(&mut self, group: &mut Group) -> Result<(), CommitFailure> {
        let counts = std::mem::take(&mut group.counts);
        super::counts::resolve(&self.store, counts, &mut group.ops)
            .map_err(|err| CommitFailure::EngineApply(EngineError(err.to_string())))?;
        if let Some(replication) = self.store.replication() {
            // A failure left by an apply outside a group (recovery, prune) must not be taken
            // for this group's.
            replication.take_failure();
            // Cluster mode: the log text goes to the write-ahead stream before it is written
            // here, as it is written here before the index (`store::replicate`).
            if !group.appends.is_empty() {
                let appends: Vec<_> = group
                    .appends
                    .iter()
                    .map(|(id, offset, segment)| (*id, *offset, segment.as_bytes()))
                    .collect();
                replication
                    .target()
                    .replicate(crate::store::replicate::Entry::Logs(&appends))
                    .map_err(CommitFailure::Replicate)?;
            }
        }
        self.appender.write_durably(&self.logs, &group.appends)?;
        self.save_before_images(&group.ops);
        self.apply_batch(std::mem::take(&mut group.ops))
            .map_err(|err| {
                // The replicated engine fails with an `EngineError`; what the replication
                // said decides whether it is transient.
                match self.store.replication().and_then(|r| r.take_failure()) {
                    Some(failure) => CommitFailure::Replicate(failure),
                    None => CommitFailure::EngineApply(err),
                }
            })?;
        self.engine.sync().map_err(CommitFailure::EngineSync)
    }

    fn commit(&mut self, mut group: Group) {
        let metrics = crate::metrics::metrics();
        metrics.group_commit_size.observe(group.done.len() as f64);
        let failure = if group.ops.is_empty() {
            None
        } else {
            let started = std::time::Instant::now();
            let written = self.write_group(&mut group);
            metrics
                .fsync_latency
                .observe(started.elapsed().as_secs_f64());
            match written {
                Ok(()) => None,
                Err(failure) => {
                    metrics.writer_ok.set(0);
                    Some(self.on_commit_failure(failure))
                }
            }
        };
        if failure.is_none() {
            metrics.lines_ingested.inc_by(group.lines);
            metrics.bytes_ingested.inc_by(group.text_bytes as u64);
            for (record, created) in &group.moved {
                crate::metrics::deployment_committed(record, *created);
            }
            if !group.moved.is_empty() {
                let queued = self.lifecycle.live().filter(|d| d.status == Status::Queued);
                metrics
                    .queue_length
                    .set(i64::try_from(queued.count()).unwrap_or(i64::MAX));
            }
            self.remove_log_files(group.removals);
        }
        for done in group.done {
            if failure.is_none() {
                for (id, status) in &done.statuses {
                    self.hub.record_status(*id, *status);
                    if status.is_terminal() {
                        self.appender.close(*id);
                    }
                }
                for (app, events) in by_app(done.events) {
                    self.hub.publish(app, events);
                }
            }
            (done.reply)(failure.clone());
        }
    }

    /// Validates one command into `group`, or answers its refusal at once.
    fn apply(&mut self, cmd: Command, group: &mut Group) {
        match cmd {
            Command::CreateUser {
                user,
                token,
                token_hash,
                reply,
            } => self.answer(group, reply, |s, g| {
                s.create_user(&user, &token, &token_hash, g)
            }),
            Command::CreateToken {
                token,
                token_hash,
                reply,
            } => self.answer(group, reply, |_, g| {
                g.ops.push(put(
                    codec::token_key(&token_hash),
                    codec::encode_token(&token),
                ));
                g.ops
                    .push(put(codec::token_id_key(token.id), token_hash.to_vec()));
                Ok(Outcome::quiet(()))
            }),
            Command::RevokeToken { user, token, reply } => {
                self.answer(group, reply, |s, g| s.revoke_token(user, token, g))
            }
            Command::CreateApp { app, reply } => {
                self.answer(group, reply, |s, g| s.create_app(&app, g))
            }
            Command::DeleteApp { app, reply } => {
                self.answer(group, reply, |s, g| s.delete_app(app, g))
            }
            Command::AddCollaborator {
                app,
                user,
                id,
                is_limited,
                reply,
            } => self.answer(group, reply, |s, g| {
                if s.store.is_collaborator(app, user)? {
                    return Err(WriteError::AlreadyCollaborator);
                }
                g.ops.push(put(
                    codec::collaborator_key(app, user),
                    codec::encode_collaborator(&codec::CollaboratorRecord {
                        id,
                        since: now(),
                        is_limited,
                    }),
                ));
                s.record_collaborator_event(app, user, None, "new_collaborator", g)?;
                Ok(Outcome::quiet(()))
            }),
            Command::RemoveCollaborator {
                app,
                user,
                by,
                reply,
            } => self.answer(group, reply, |s, g| {
                g.ops
                    .push(BatchOp::Delete(codec::collaborator_key(app, user)));
                s.record_collaborator_event(app, user, Some(by), "delete_collaborator", g)?;
                Ok(Outcome::quiet(()))
            }),
            Command::CreateDeployment {
                app,
                git_ref,
                pusher,
                driver,
                reply,
            } => self.answer(group, reply, |s, g| {
                s.create_deployment(app, git_ref, pusher, driver, g)
            }),
            Command::AppendLogs {
                deployment,
                lines,
                reply,
            } => self.answer(group, reply, |s, g| s.append_logs(deployment, lines, g)),
            Command::Transition {
                deployment,
                target,
                note,
                reply,
            } => self.answer(group, reply, |s, g| {
                s.transition(deployment, target, note, g)
            }),
            Command::Cancel {
                deployment,
                by,
                reply,
            } => self.answer(group, reply, |s, g| s.cancel(deployment, &by, g)),
            Command::SetImageSize {
                deployment,
                bytes,
                reply,
            } => self.answer(group, reply, |s, g| {
                let change = s
                    .lifecycle
                    .set_image_size(deployment, bytes)
                    .map_err(|refusal| s.refused(deployment, refusal, None))?;
                let mut outcome = Outcome::quiet(());
                s.stage(change, g, &mut outcome);
                Ok(outcome)
            }),
            Command::PutMeta { name, value, reply } => self.answer(group, reply, |_, g| {
                g.ops.push(put(codec::meta_key(&name), value));
                Ok(Outcome::quiet(()))
            }),
            Command::StopPromoting { reply } => self.answer(group, reply, |s, _| {
                s.lifecycle.stop_promoting();
                Ok(Outcome::quiet(()))
            }),
            Command::PutSource { source, reply } => self.answer(group, reply, |_, g| {
                g.ops.push(put(
                    codec::source_key(uuid::Uuid::from_bytes(source.id)),
                    codec::encode_source(&source),
                ));
                Ok(Outcome::quiet(()))
            }),
            Command::CreateScopedToken {
                token,
                token_hash,
                grant,
                reply,
            } => self.answer(group, reply, |s, g| {
                s.create_scoped_token(&token, &token_hash, &grant, g)
            }),
            Command::RenameApp {
                app,
                new_name,
                by,
                reply,
            } => self.answer(group, reply, |s, g| s.rename_app(app, new_name, by, g)),
            Command::SetCollaboratorLimited {
                app,
                user,
                is_limited,
                by,
                reply,
            } => self.answer(group, reply, |s, g| {
                s.set_collaborator_limited(app, user, is_limited, by, g)
            }),
            Command::PutNotifier {
                notifier,
                actor,
                created,
                reply,
            } => self.answer(group, reply, |s, g| {
                s.put_notifier(&notifier, &actor, created, g)
            }),
            Command::DeleteNotifier {
                app,
                id,
                actor,
                reply,
            } => self.answer(group, reply, |s, g| s.delete_notifier(app, id, &actor, g)),
            Command::RecordEvent { event, reply } => self.answer(group, reply, |s, g| {
                s.record_event(&event, true, g)?;
                Ok(Outcome::quiet(()))
            }),
            Command::FinishDelivery {
                entry,
                delivery,
                next,
                reply,
            } => self.answer(group, reply, |s, g| {
                s.finish_delivery(&entry, delivery.as_ref(), next.as_ref(), g)
            }),
            Command::Prune { keys, reply } => self.answer(group, reply, |s, g| s.prune(keys, g)),
            Command::PruneDeployments { ids, reply } => {
                self.answer(group, reply, |s, g| s.prune_deployments(&ids, g))
            }
            Command::DeleteSources { ids, reply } => {
                self.answer(group, reply, |s, g| s.delete_sources(&ids, g))
            }
            Command::KeepImage {
                deployment,
                bytes,
                reply,
            } => self.answer(group, reply, |s, g| s.keep_image(deployment, bytes, g)),
            Command::CreateRollback {
                app,
                target,
                pusher,
                reply,
            } => self.answer(group, reply, |s, g| {
                s.create_rollback(app, target, pusher, g)
            }),
            Command::PruneImages { ids, reply } => {
                self.answer(group, reply, |s, g| s.prune_images(&ids, g))
            }
            Command::Snapshot { reply } => self.answer(group, reply, |s, _| {
                let started = std::time::Instant::now();
                let snapshot = s.take_snapshot();
                tracing::info!(
                    micros = started.elapsed().as_micros() as u64,
                    "backup snapshot taken between two commits"
                );
                Ok(Outcome::quiet(snapshot))
            }),
        }
    }

    /// Runs `work` (unless an earlier commit failed), then queues its answer for after the
    /// commit, or answers a refusal now (a refusal adds nothing to the group).
    fn answer<T: Send + 'static>(
        &mut self,
        group: &mut Group,
        reply: Reply<T>,
        work: impl FnOnce(&mut Self, &mut Group) -> Result<Outcome<T>, WriteError>,
    ) {
        let result = match self.refusal() {
            Some(refused) => Err(refused),
            None => work(self, group),
        };
        match result {
            Ok(outcome) => {
                let value = outcome.value;
                group.done.push(Done {
                    events: outcome.events,
                    statuses: outcome.statuses,
                    reply: Box::new(move |failure| {
                        // The caller may have gone away (a closed connection): nothing to tell.
                        let _ = reply.send(match failure {
                            None => Ok(value),
                            Some(err) => Err(err),
                        });
                    }),
                });
            }
            Err(err) => {
                let _ = reply.send(Err(err));
            }
        }
    }

    /// Adds a lifecycle change to the group: the record, its index entries and its events.
    pub(super) fn stage<T>(&mut self, change: Change, group: &mut Group, outcome: &mut Outcome<T>) {
        let record = change.record();
        let (id, app) = (record.id, record.app_id);
        group.ops.push(put(
            codec::deployment_key(id),
            codec::encode_deployment(record),
        ));
        let status_event = Event::new(
            app,
            id,
            EventKind::Status {
                status: record.status,
                last_line: record.last_line,
            },
        );
        match &change {
            Change::Created(record) => {
                group.moved.push((record.clone(), true));
                group
                    .ops
                    .push(put(codec::app_deployment_key(app, id), Vec::new()));
                index_status(group, record, true);
                self.log_ends.insert(id, 0);
                outcome.events.push(Event::new(app, id, EventKind::New));
                outcome.events.push(status_event);
                outcome.statuses.push((id, record.status));
            }
            Change::Moved(record) => {
                index_status(group, record, false);
                group.moved.push((record.clone(), false));
                if record.status.is_terminal() {
                    // A pending cancel (if any) is honoured by this end.
                    group
                        .ops
                        .push(BatchOp::Delete(codec::cancel_request_key(id)));
                    self.log_ends.remove(&id);
                    self.record_deployment_event(record, group);
                    self.log_limit.forget(id);
                    self.images_on_end(record, group);
                }
                outcome.events.push(status_event);
                outcome.statuses.push((id, record.status));
            }
            Change::Updated(_) => {}
        }
    }

    /// The error for a refused deployment write. `target` is the transition asked for, if any:
    /// moving a finished deployment to a status is a transition error, anything else on it is
    /// [`WriteError::Finished`].
    pub(super) fn refused(
        &self,
        deployment: DeploymentId,
        refusal: Refusal,
        target: Option<Target>,
    ) -> WriteError {
        match refusal {
            Refusal::Queued => WriteError::Queued,
            Refusal::Cancelling(by) => WriteError::Cancelling { by },
            Refusal::Illegal(err) => err.into(),
            Refusal::NotLive => match self.store.deployment(deployment) {
                Ok(Some(stored)) => match target {
                    Some(Target::Status(to)) => TransitionError::AlreadyFinished {
                        from: stored.status,
                        to,
                    }
                    .into(),
                    _ => WriteError::Finished {
                        status: stored.status,
                    },
                },
                Ok(None) => WriteError::NotFound("deployment"),
                Err(err) => err.into(),
            },
        }
    }
}
