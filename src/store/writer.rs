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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::codec;
use super::engine::{prefix_end, BatchOp, Engine};
use super::logs::{Appender, LogFiles};
use super::{Store, StoreError, MAX_SEGMENT_BYTES};
use crate::hub::{Event, EventKind, Hub};
use crate::model::{
    App, AppId, Deployment, DeploymentId, Driver, LastDeployment, LineNo, NewLine, Pusher, Token,
    TokenId, User, UserId,
};
use crate::status::{check_transition, Status, TransitionError};

/// Commands waiting for the writer. Senders wait (asynchronously) when it is full: that is the
/// backpressure that keeps pushers from outrunning the disk.
pub const WRITER_QUEUE_CAPACITY: usize = 4096;

/// At most this many commands in one group commit, so one commit's latency stays bounded.
pub const MAX_GROUP_COMMANDS: usize = 4096;

/// At most this many bytes of log text in one group commit.
pub const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// Longest stored log line in bytes; longer lines are cut on a char boundary.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Why a write was refused or failed. Refusals change nothing stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("the deployment is queued behind another deployment of the app; wait until it starts")]
    Queued,
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for WriteError {
    fn from(err: StoreError) -> Self {
        WriteError::Unavailable(err.to_string())
    }
}

type Reply<T> = oneshot::Sender<Result<T, WriteError>>;

/// How a transition is asked for.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Move to this status (refused if the graph forbids it).
    Status(Status),
    /// The deployment's session ended: `aborted`, or `timeout-error` from `starting`.
    SessionLost,
}

/// A write for the writer thread.
pub enum Command {
    CreateUser {
        user: User,
        token: Token,
        token_hash: [u8; 32],
        reply: Reply<()>,
    },
    CreateToken {
        token: Token,
        token_hash: [u8; 32],
        reply: Reply<()>,
    },
    RevokeToken {
        user: UserId,
        token: TokenId,
        reply: Reply<()>,
    },
    CreateApp {
        app: App,
        reply: Reply<()>,
    },
    DeleteApp {
        app: AppId,
        reply: Reply<()>,
    },
    AddCollaborator {
        app: AppId,
        user: UserId,
        id: uuid::Uuid,
        reply: Reply<()>,
    },
    RemoveCollaborator {
        app: AppId,
        user: UserId,
        reply: Reply<()>,
    },
    CreateDeployment {
        app: AppId,
        git_ref: String,
        pusher: Pusher,
        driver: Driver,
        reply: Reply<Deployment>,
    },
    AppendLogs {
        deployment: DeploymentId,
        lines: Vec<NewLine>,
        reply: Reply<LineNo>,
    },
    Transition {
        deployment: DeploymentId,
        target: Target,
        /// A line stored just before the status (e.g. why it was aborted).
        note: Option<NewLine>,
        reply: Reply<Deployment>,
    },
    SetImageSize {
        deployment: DeploymentId,
        bytes: u64,
        reply: Reply<()>,
    },
    PutMeta {
        name: String,
        value: Vec<u8>,
        reply: Reply<()>,
    },
    PutSource {
        source: codec::StoredSource,
        reply: Reply<()>,
    },
    /// Shutdown has begun: stop promoting queued deployments, so that they stay queued and run
    /// after the restart instead of starting a session that is about to be cut.
    StopPromoting {
        reply: Reply<()>,
    },
}

impl Command {
    /// Commands committed alone (they check uniqueness against committed state).
    fn commits_alone(&self) -> bool {
        !matches!(
            self,
            Command::AppendLogs { .. } | Command::Transition { .. } | Command::SetImageSize { .. }
        )
    }
}

/// The async handle to the writer. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
}

/// What recovery did at startup, for the service to act on.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Deployments ended because their session was lost in the restart.
    pub ended: Vec<(DeploymentId, Status)>,
    /// Unfinished executor deployments (building or queued) that need an executor again.
    pub to_execute: Vec<Deployment>,
}

impl Writer {
    /// Recovers unfinished deployments, then starts the writer thread.
    pub fn start(
        store: Store,
        hub: Arc<Hub>,
    ) -> Result<(Writer, Recovery, JoinHandle<()>), StoreError> {
        let mut state = WriterState {
            engine: store.engine().clone(),
            logs: store.logs().clone(),
            appender: Appender::default(),
            log_ends: HashMap::new(),
            store,
            hub,
            live: HashMap::new(),
            running: HashMap::new(),
            queues: HashMap::new(),
            failed: None,
            draining: false,
        };
        let recovery = state.recover()?;
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_CAPACITY);
        let handle = std::thread::Builder::new()
            .name("deployd-writer".into())
            .spawn(move || state.run(rx))
            .map_err(|e| StoreError::Engine(super::engine::EngineError(e.to_string())))?;
        Ok((Writer { tx }, recovery, handle))
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| WriteError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| WriteError::Unavailable("writer stopped".into()))?
    }

    pub async fn create_user(
        &self,
        user: User,
        token: Token,
        token_hash: [u8; 32],
    ) -> Result<(), WriteError> {
        self.call(|reply| Command::CreateUser {
            user,
            token,
            token_hash,
            reply,
        })
        .await
    }

    pub async fn create_token(&self, token: Token, token_hash: [u8; 32]) -> Result<(), WriteError> {
        self.call(|reply| Command::CreateToken {
            token,
            token_hash,
            reply,
        })
        .await
    }

    pub async fn revoke_token(&self, user: UserId, token: TokenId) -> Result<(), WriteError> {
        self.call(|reply| Command::RevokeToken { user, token, reply })
            .await
    }

    pub async fn create_app(&self, app: App) -> Result<(), WriteError> {
        self.call(|reply| Command::CreateApp { app, reply }).await
    }

    pub async fn delete_app(&self, app: AppId) -> Result<(), WriteError> {
        self.call(|reply| Command::DeleteApp { app, reply }).await
    }

    pub async fn add_collaborator(
        &self,
        app: AppId,
        user: UserId,
        id: uuid::Uuid,
    ) -> Result<(), WriteError> {
        self.call(|reply| Command::AddCollaborator {
            app,
            user,
            id,
            reply,
        })
        .await
    }

    pub async fn remove_collaborator(&self, app: AppId, user: UserId) -> Result<(), WriteError> {
        self.call(|reply| Command::RemoveCollaborator { app, user, reply })
            .await
    }

    /// Creates a deployment: `building`, or `queued` when the app has one in progress.
    pub async fn create_deployment(
        &self,
        app: AppId,
        git_ref: String,
        pusher: Pusher,
        driver: Driver,
    ) -> Result<Deployment, WriteError> {
        self.call(|reply| Command::CreateDeployment {
            app,
            git_ref,
            pusher,
            driver,
            reply,
        })
        .await
    }

    /// Appends lines; returns the last line number, durable when this returns.
    pub async fn append_logs(
        &self,
        deployment: DeploymentId,
        lines: Vec<NewLine>,
    ) -> Result<LineNo, WriteError> {
        self.call(|reply| Command::AppendLogs {
            deployment,
            lines,
            reply,
        })
        .await
    }

    /// Queues an append now and returns the future of its reply. Appends queued one after the
    /// other are stored in that order, whenever their replies are awaited: a pusher with several
    /// batches in flight keeps its line order.
    pub async fn queue_append(
        &self,
        deployment: DeploymentId,
        lines: Vec<NewLine>,
    ) -> Result<
        impl std::future::Future<Output = Result<LineNo, WriteError>> + Send + 'static,
        WriteError,
    > {
        let permit = self
            .tx
            .reserve()
            .await
            .map_err(|_| WriteError::Unavailable("writer stopped".into()))?;
        let (reply, rx) = oneshot::channel();
        permit.send(Command::AppendLogs {
            deployment,
            lines,
            reply,
        });
        Ok(async move {
            rx.await
                .map_err(|_| WriteError::Unavailable("writer stopped".into()))?
        })
    }

    /// Moves a deployment through the state machine; durable and broadcast when this returns.
    pub async fn transition(
        &self,
        deployment: DeploymentId,
        target: Target,
        note: Option<NewLine>,
    ) -> Result<Deployment, WriteError> {
        self.call(|reply| Command::Transition {
            deployment,
            target,
            note,
            reply,
        })
        .await
    }

    pub async fn set_image_size(
        &self,
        deployment: DeploymentId,
        bytes: u64,
    ) -> Result<(), WriteError> {
        self.call(|reply| Command::SetImageSize {
            deployment,
            bytes,
            reply,
        })
        .await
    }

    pub async fn put_meta(&self, name: String, value: Vec<u8>) -> Result<(), WriteError> {
        self.call(|reply| Command::PutMeta { name, value, reply })
            .await
    }

    /// See [`Command::StopPromoting`].
    pub async fn stop_promoting(&self) -> Result<(), WriteError> {
        self.call(|reply| Command::StopPromoting { reply }).await
    }

    pub async fn put_source(&self, source: codec::StoredSource) -> Result<(), WriteError> {
        self.call(|reply| Command::PutSource { source, reply })
            .await
    }
}

/// What a validated command does once its group is durable.
struct Done {
    app: Option<AppId>,
    events: Vec<Event>,
    statuses: Vec<(DeploymentId, Status)>,
    reply: Box<dyn FnOnce(Option<WriteError>) + Send>,
}

fn done<T: Send + 'static>(
    reply: Reply<T>,
    value: T,
) -> Box<dyn FnOnce(Option<WriteError>) + Send> {
    Box::new(move |failure| {
        // The caller may have gone away (a closed connection): nothing to tell.
        let _ = reply.send(match failure {
            None => Ok(value),
            Some(err) => Err(err),
        });
    })
}

/// A group being built: log file appends, engine ops, and what to do after the commit.
#[derive(Default)]
struct Group {
    /// Segments to append to log files: (deployment, file offset, bytes), written and synced
    /// before `ops` (which hold their index entries) are committed.
    appends: Vec<(DeploymentId, u64, Bytes)>,
    /// Log files to remove once `ops` (which drop their index) are committed.
    removals: Vec<DeploymentId>,
    ops: Vec<BatchOp>,
    done: Vec<Done>,
    text_bytes: usize,
}

struct WriterState {
    store: Store,
    engine: Arc<dyn Engine>,
    logs: LogFiles,
    appender: Appender,
    /// Per unfinished deployment, the end of its log file's indexed part.
    log_ends: HashMap<DeploymentId, u64>,
    hub: Arc<Hub>,
    /// Every unfinished deployment, with its current `last_line`.
    live: HashMap<DeploymentId, Deployment>,
    /// Per app, the one deployment past `queued`.
    running: HashMap<AppId, DeploymentId>,
    /// Per app, queued deployments, oldest first.
    queues: HashMap<AppId, VecDeque<DeploymentId>>,
    /// Set when a commit failed: memory may no longer match the disk, so refuse everything.
    failed: Option<String>,
    /// Set at shutdown: queued deployments are no longer promoted.
    draining: bool,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl WriterState {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut carry: Option<Command> = None;
        loop {
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

    fn commit(&mut self, group: Group) {
        let failure = if group.ops.is_empty() {
            None
        } else {
            // Log text first (written and synced), then the index that points into it.
            let written = self
                .appender
                .write_durably(&self.logs, &group.appends)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    self.engine
                        .apply(group.ops)
                        .and_then(|()| self.engine.sync())
                        .map_err(|e| e.to_string())
                });
            match written {
                Ok(()) => None,
                Err(err) => {
                    tracing::error!(error = %err, "commit failed; refusing further writes");
                    self.failed = Some(err.clone());
                    Some(WriteError::Unavailable(err))
                }
            }
        };
        if failure.is_none() {
            for id in group.removals {
                self.appender.close(id);
                self.logs.remove(id);
            }
        }
        for done in group.done {
            if failure.is_none() {
                for (id, status) in &done.statuses {
                    self.hub.set_status(*id, *status);
                    if status.is_terminal() {
                        self.appender.close(*id);
                    }
                }
                if let Some(app) = done.app {
                    if !done.events.is_empty() {
                        self.hub.publish(app, done.events);
                    }
                }
            }
            (done.reply)(failure.clone());
        }
    }

    fn apply(&mut self, cmd: Command, group: &mut Group) {
        if let Some(reason) = &self.failed {
            let err = WriteError::Unavailable(reason.clone());
            reply_err(cmd, err);
            return;
        }
        match cmd {
            Command::CreateUser {
                user,
                token,
                token_hash,
                reply,
            } => {
                let result = self.create_user(&user, &token, &token_hash, group);
                finish(group, result, reply, None);
            }
            Command::CreateToken {
                token,
                token_hash,
                reply,
            } => {
                group.ops.push(put(
                    codec::token_key(&token_hash),
                    codec::encode_token(&token),
                ));
                group
                    .ops
                    .push(put(codec::token_id_key(token.id), token_hash.to_vec()));
                finish(group, Ok(()), reply, None);
            }
            Command::RevokeToken { user, token, reply } => {
                let result = self.revoke_token(user, token, group);
                finish(group, result, reply, None);
            }
            Command::CreateApp { app, reply } => {
                let result = self.create_app(&app, group);
                finish(group, result, reply, None);
            }
            Command::DeleteApp { app, reply } => {
                let result = self.delete_app(app, group);
                finish(group, result, reply, None);
            }
            Command::AddCollaborator {
                app,
                user,
                id,
                reply,
            } => {
                let result = match self.store.is_collaborator(app, user) {
                    Ok(true) => Err(WriteError::Conflict(
                        "user is already a collaborator of the app".into(),
                    )),
                    Ok(false) => {
                        group.ops.push(put(
                            codec::collaborator_key(app, user),
                            codec::encode_collaborator(id, now()),
                        ));
                        Ok(())
                    }
                    Err(err) => Err(err.into()),
                };
                finish(group, result, reply, None);
            }
            Command::RemoveCollaborator { app, user, reply } => {
                group
                    .ops
                    .push(BatchOp::Delete(codec::collaborator_key(app, user)));
                finish(group, Ok(()), reply, None);
            }
            Command::CreateDeployment {
                app,
                git_ref,
                pusher,
                driver,
                reply,
            } => {
                let result = self.create_deployment(app, git_ref, pusher, driver, group);
                match result {
                    Ok((deployment, extra)) => {
                        group.done.push(Done {
                            app: Some(app),
                            events: extra.events,
                            statuses: extra.statuses,
                            reply: done(reply, deployment),
                        });
                    }
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
            }
            Command::AppendLogs {
                deployment,
                lines,
                reply,
            } => match self.append_logs(deployment, lines, group) {
                Ok((app, last, events)) => group.done.push(Done {
                    app: Some(app),
                    events,
                    statuses: Vec::new(),
                    reply: done(reply, last),
                }),
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
            Command::Transition {
                deployment,
                target,
                note,
                reply,
            } => match self.transition(deployment, target, note, group) {
                Ok((record, extra)) => group.done.push(Done {
                    app: Some(record.app_id),
                    events: extra.events,
                    statuses: extra.statuses,
                    reply: done(reply, record),
                }),
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
            Command::SetImageSize {
                deployment,
                bytes,
                reply,
            } => {
                let result = match self.live.get_mut(&deployment) {
                    Some(record) => {
                        record.image_size = bytes;
                        group.ops.push(put(
                            codec::deployment_key(deployment),
                            codec::encode_deployment(record),
                        ));
                        Ok(())
                    }
                    None => Err(self.not_live(deployment)),
                };
                finish(group, result, reply, None);
            }
            Command::PutMeta { name, value, reply } => {
                group.ops.push(put(codec::meta_key(&name), value));
                finish(group, Ok(()), reply, None);
            }
            Command::StopPromoting { reply } => {
                self.draining = true;
                finish(group, Ok(()), reply, None);
            }
            Command::PutSource { source, reply } => {
                group.ops.push(put(
                    codec::source_key(uuid::Uuid::from_bytes(source.id)),
                    codec::encode_source(&source),
                ));
                finish(group, Ok(()), reply, None);
            }
        }
    }

    fn create_user(
        &mut self,
        user: &User,
        token: &Token,
        token_hash: &[u8; 32],
        group: &mut Group,
    ) -> Result<(), WriteError> {
        if self.store.user_by_username(&user.username)?.is_some() {
            return Err(WriteError::Conflict(format!(
                "username {:?} is already taken",
                user.username
            )));
        }
        if self.store.user_by_email(&user.email)?.is_some() {
            return Err(WriteError::Conflict(format!(
                "email {:?} is already taken",
                user.email
            )));
        }
        group
            .ops
            .push(put(codec::user_key(user.id), codec::encode_user(user)));
        group.ops.push(put(
            codec::username_key(&user.username),
            user.id.as_bytes().to_vec(),
        ));
        group.ops.push(put(
            codec::email_key(&user.email),
            user.id.as_bytes().to_vec(),
        ));
        group.ops.push(put(
            codec::token_key(token_hash),
            codec::encode_token(token),
        ));
        group
            .ops
            .push(put(codec::token_id_key(token.id), token_hash.to_vec()));
        Ok(())
    }

    fn revoke_token(
        &mut self,
        user: UserId,
        token: TokenId,
        group: &mut Group,
    ) -> Result<(), WriteError> {
        let hash = self
            .store
            .token_hash(token)?
            .ok_or(WriteError::NotFound("token"))?;
        let record = self
            .store
            .token_by_hash(&hash)?
            .ok_or(WriteError::NotFound("token"))?;
        if record.user_id != user {
            return Err(WriteError::NotFound("token"));
        }
        group.ops.push(BatchOp::Delete(codec::token_key(&hash)));
        group.ops.push(BatchOp::Delete(codec::token_id_key(token)));
        Ok(())
    }

    fn create_app(&mut self, app: &App, group: &mut Group) -> Result<(), WriteError> {
        if self.store.app_by_name(&app.name)?.is_some() {
            return Err(WriteError::Conflict(format!(
                "an app named {:?} already exists",
                app.name
            )));
        }
        group
            .ops
            .push(put(codec::app_key(app.id), codec::encode_app(app)));
        group.ops.push(put(
            codec::app_name_key(&app.name),
            app.id.as_bytes().to_vec(),
        ));
        Ok(())
    }

    fn delete_app(&mut self, app_id: AppId, group: &mut Group) -> Result<(), WriteError> {
        let app = self.store.app(app_id)?.ok_or(WriteError::NotFound("app"))?;
        group.ops.push(BatchOp::Delete(codec::app_key(app_id)));
        group
            .ops
            .push(BatchOp::Delete(codec::app_name_key(&app.name)));
        let engine = self.engine.clone();
        let delete_prefix = |prefix: Vec<u8>, ops: &mut Vec<BatchOp>| -> Result<(), WriteError> {
            for entry in engine.range(&prefix, &prefix_end(&prefix), false) {
                let (key, _) = entry.map_err(StoreError::from)?;
                ops.push(BatchOp::Delete(key));
            }
            Ok(())
        };
        delete_prefix(codec::collaborators_prefix(app_id), &mut group.ops)?;
        let ids = self.store.deployment_ids(app_id, 0, u64::MAX)?;
        delete_prefix(codec::app_deployments_prefix(app_id), &mut group.ops)?;
        let mut statuses = Vec::new();
        for id in ids {
            group.ops.push(BatchOp::Delete(codec::deployment_key(id)));
            delete_prefix(codec::segments_prefix(id), &mut group.ops)?;
            group.removals.push(id);
            self.log_ends.remove(&id);
            if self.live.remove(&id).is_some() {
                // Its session sees the watch end and stops; its next write finds no deployment.
                statuses.push((id, Status::Aborted));
            }
        }
        self.running.remove(&app_id);
        self.queues.remove(&app_id);
        group.done.push(Done {
            app: None,
            events: Vec::new(),
            statuses,
            reply: Box::new(|_| {}),
        });
        Ok(())
    }

    fn create_deployment(
        &mut self,
        app_id: AppId,
        git_ref: String,
        pusher: Pusher,
        driver: Driver,
        group: &mut Group,
    ) -> Result<(Deployment, Effects), WriteError> {
        let mut app = self.store.app(app_id)?.ok_or(WriteError::NotFound("app"))?;
        let previous_git_ref = match &app.last_deployment {
            Some(last) => self.store.deployment(last.id)?.map(|d| d.git_ref),
            None => None,
        };
        let id = DeploymentId::generate();
        let created_at = now();
        let status = match self.running.entry(app_id) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.queues.entry(app_id).or_default().push_back(id);
                Status::Queued
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(id);
                Status::Building
            }
        };
        let deployment = Deployment {
            id,
            app_id,
            created_at,
            status,
            finished_at: None,
            git_ref,
            previous_git_ref,
            pusher,
            image_size: 0,
            driver,
            last_line: LineNo(0),
        };
        app.last_deployment = Some(LastDeployment {
            id,
            at: created_at,
            by: deployment.pusher.username.clone(),
        });
        app.updated_at = created_at;
        group.ops.push(put(
            codec::deployment_key(id),
            codec::encode_deployment(&deployment),
        ));
        group
            .ops
            .push(put(codec::app_deployment_key(app_id, id), Vec::new()));
        group
            .ops
            .push(put(codec::app_key(app_id), codec::encode_app(&app)));
        self.live.insert(id, deployment.clone());
        self.log_ends.insert(id, 0);
        let effects = Effects {
            events: vec![
                Event::new(app_id, id, EventKind::New),
                Event::new(
                    app_id,
                    id,
                    EventKind::Status {
                        status,
                        seq: LineNo(0),
                    },
                ),
            ],
            statuses: vec![(id, status)],
        };
        Ok((deployment, effects))
    }

    fn not_live(&self, deployment: DeploymentId) -> WriteError {
        match self.store.deployment(deployment) {
            Ok(Some(record)) => WriteError::Conflict(format!(
                "deployment already finished with status {}",
                record.status
            )),
            Ok(None) => WriteError::NotFound("deployment"),
            Err(err) => err.into(),
        }
    }

    fn append_logs(
        &mut self,
        deployment: DeploymentId,
        lines: Vec<NewLine>,
        group: &mut Group,
    ) -> Result<(AppId, LineNo, Vec<Event>), WriteError> {
        let Some(record) = self.live.get_mut(&deployment) else {
            return Err(self.not_live(deployment));
        };
        if record.status == Status::Queued {
            return Err(WriteError::Queued);
        }
        let app = record.app_id;
        let log_end = self.log_ends.entry(deployment).or_default();
        let events = append_segments(record, log_end, &lines, group);
        Ok((app, record.last_line, events))
    }

    fn transition(
        &mut self,
        deployment: DeploymentId,
        target: Target,
        note: Option<NewLine>,
        group: &mut Group,
    ) -> Result<(Deployment, Effects), WriteError> {
        let Some(record) = self.live.get(&deployment) else {
            return Err(match self.store.deployment(deployment)? {
                Some(stored) => match target {
                    Target::Status(to) => TransitionError::AlreadyFinished {
                        from: stored.status,
                        to,
                    }
                    .into(),
                    Target::SessionLost => WriteError::Conflict(format!(
                        "deployment already finished with status {}",
                        stored.status
                    )),
                },
                None => WriteError::NotFound("deployment"),
            });
        };
        let from = record.status;
        let to = match target {
            Target::Status(to) => to,
            Target::SessionLost => from
                .on_session_lost()
                .expect("invariant: live deployments are unfinished"),
        };
        if from == Status::Queued && to != Status::Aborted {
            // Only the writer promotes a queued deployment, when the app's running one ends;
            // until then its session may only give up. Any other move is "wait", not "illegal"
            // (the push protocol's `queued` code), so a pusher knows to wait for `building`.
            return Err(WriteError::Queued);
        }
        check_transition(from, to)?;
        let mut effects = Effects::default();
        let record = self.live.get_mut(&deployment).expect("checked above");
        if let Some(note) = note {
            let log_end = self.log_ends.entry(deployment).or_default();
            effects
                .events
                .extend(append_segments(record, log_end, &[note], group));
        }
        let record = self.set_status(deployment, to, group, &mut effects);
        Ok((record, effects))
    }

    /// Writes a validated status change; on a terminal status, promotes the app's next queued
    /// deployment.
    fn set_status(
        &mut self,
        deployment: DeploymentId,
        to: Status,
        group: &mut Group,
        effects: &mut Effects,
    ) -> Deployment {
        let record = self
            .live
            .get_mut(&deployment)
            .expect("invariant: caller checked liveness");
        let from = record.status;
        record.status = to;
        if to.is_terminal() {
            record.finished_at = Some(now());
        }
        group.ops.push(put(
            codec::deployment_key(deployment),
            codec::encode_deployment(record),
        ));
        effects.events.push(Event::new(
            record.app_id,
            deployment,
            EventKind::Status {
                status: to,
                seq: record.last_line,
            },
        ));
        effects.statuses.push((deployment, to));
        let snapshot = record.clone();
        if to.is_terminal() {
            let app = snapshot.app_id;
            self.live.remove(&deployment);
            self.log_ends.remove(&deployment);
            if from == Status::Queued {
                if let Some(queue) = self.queues.get_mut(&app) {
                    queue.retain(|id| *id != deployment);
                }
            } else if self.running.get(&app) == Some(&deployment) {
                self.running.remove(&app);
                self.promote_next(app, group, effects);
            }
        }
        snapshot
    }

    fn promote_next(&mut self, app: AppId, group: &mut Group, effects: &mut Effects) {
        if self.draining {
            return;
        }
        let Some(next) = self.queues.get_mut(&app).and_then(VecDeque::pop_front) else {
            return;
        };
        self.running.insert(app, next);
        self.set_status(next, Status::Building, group, effects);
    }

    /// Ends what a crash left unfinished (DESIGN.md), then starts queued executor deployments.
    fn recover(&mut self) -> Result<Recovery, StoreError> {
        let mut recovery = Recovery::default();
        let mut deployments = self.store.all_deployments()?;
        deployments.retain(|d| !d.status.is_terminal());
        deployments.sort_by_key(|d| d.id);
        let mut group = Group::default();
        let mut effects = Effects::default();
        for mut deployment in deployments {
            let (last_line, log_end) = self.store.log_end(deployment.id)?;
            deployment.last_line = last_line;
            self.log_ends.insert(deployment.id, log_end);
            let id = deployment.id;
            let status = deployment.status;
            let keep_queued =
                status == Status::Queued && matches!(deployment.driver, Driver::Executor { .. });
            self.live.insert(id, deployment);
            if keep_queued {
                self.queues
                    .entry(self.live[&id].app_id)
                    .or_default()
                    .push_back(id);
                continue;
            }
            let to = status.on_session_lost().expect("invariant: unfinished");
            let why = if status == Status::Queued {
                "its pusher's connection was lost when deployd restarted".to_string()
            } else {
                format!("deployd restarted while the deployment was {status}: its session was lost")
            };
            let note = NewLine::system(format!("!     Deployment {}: {why}", to));
            let record = self.live.get_mut(&id).expect("just inserted");
            let log_end = self.log_ends.entry(id).or_default();
            append_segments(record, log_end, &[note], &mut group);
            self.set_status(id, to, &mut group, &mut effects);
            recovery.ended.push((id, to));
        }
        let apps: Vec<AppId> = self.queues.keys().copied().collect();
        for app in apps {
            if !self.running.contains_key(&app) {
                self.promote_next(app, &mut group, &mut effects);
            }
        }
        if !group.ops.is_empty() {
            self.appender.write_durably(&self.logs, &group.appends)?;
            self.engine.apply(group.ops)?;
            self.engine.sync()?;
        }
        for (id, status) in &effects.statuses {
            if status.is_terminal() {
                self.appender.close(*id);
            }
        }
        for (id, status) in &effects.statuses {
            self.hub.set_status(*id, *status);
        }
        for deployment in self.live.values() {
            self.hub.set_status(deployment.id, deployment.status);
            if matches!(deployment.driver, Driver::Executor { .. }) {
                recovery.to_execute.push(deployment.clone());
            }
        }
        recovery.to_execute.sort_by_key(|d| d.id);
        Ok(recovery)
    }
}

#[derive(Default)]
struct Effects {
    events: Vec<Event>,
    statuses: Vec<(DeploymentId, Status)>,
}

fn put(key: Vec<u8>, value: Vec<u8>) -> BatchOp {
    BatchOp::Put(key, Bytes::from(value))
}

fn finish(group: &mut Group, result: Result<(), WriteError>, reply: Reply<()>, app: Option<AppId>) {
    match result {
        Ok(()) => group.done.push(Done {
            app,
            events: Vec::new(),
            statuses: Vec::new(),
            reply: done(reply, ()),
        }),
        Err(err) => {
            let _ = reply.send(Err(err));
        }
    }
}

fn reply_err(cmd: Command, err: WriteError) {
    let _ = match cmd {
        Command::CreateUser { reply, .. }
        | Command::CreateToken { reply, .. }
        | Command::RevokeToken { reply, .. }
        | Command::CreateApp { reply, .. }
        | Command::DeleteApp { reply, .. }
        | Command::AddCollaborator { reply, .. }
        | Command::RemoveCollaborator { reply, .. }
        | Command::SetImageSize { reply, .. }
        | Command::PutMeta { reply, .. }
        | Command::PutSource { reply, .. }
        | Command::StopPromoting { reply } => reply.send(Err(err)).is_ok(),
        Command::CreateDeployment { reply, .. } | Command::Transition { reply, .. } => {
            reply.send(Err(err)).is_ok()
        }
        Command::AppendLogs { reply, .. } => reply.send(Err(err)).is_ok(),
    };
}

/// Cuts `text` to at most `max` bytes on a char boundary.
fn truncate_on_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Splits `lines` into stored lines (one per `\n`-separated piece, a trailing `\r` dropped, each
/// at most [`MAX_LINE_BYTES`]), encodes them as segments of at most [`MAX_SEGMENT_BYTES`], adds
/// them (file appends at `log_end` and their index entries) to the group, and advances
/// `record.last_line` and `log_end`. Returns the hub events.
fn append_segments(
    record: &mut Deployment,
    log_end: &mut u64,
    lines: &[NewLine],
    group: &mut Group,
) -> Vec<Event> {
    let pieces = lines.iter().flat_map(|line| {
        line.text.split('\n').map(move |piece| {
            let piece = piece.strip_suffix('\r').unwrap_or(piece);
            (
                line.stream,
                truncate_on_char_boundary(piece, MAX_LINE_BYTES),
            )
        })
    });
    let stored_at = now();
    let mut events = Vec::new();
    let mut chunk: Vec<(crate::model::LogStream, &str)> = Vec::new();
    let mut chunk_bytes = 0;
    let mut flush = |chunk: &mut Vec<(crate::model::LogStream, &str)>,
                     chunk_bytes: &mut usize,
                     group: &mut Group| {
        if chunk.is_empty() {
            return;
        }
        let first = record.last_line.next();
        let segment = Bytes::from(codec::encode_segment(
            stored_at,
            chunk.iter().copied(),
            *chunk_bytes,
        ));
        group.text_bytes += *chunk_bytes;
        let reference = codec::SegmentRef {
            offset: *log_end,
            len: u32::try_from(segment.len())
                .expect("invariant: segments are at most MAX_SEGMENT_BYTES plus a header"),
            lines: u32::try_from(chunk.len()).expect("invariant: a segment holds < 2^32 lines"),
        };
        group.appends.push((record.id, *log_end, segment.clone()));
        *log_end = reference.end();
        group.ops.push(put(
            codec::segment_key(record.id, first),
            codec::encode_segment_ref(&reference),
        ));
        record.last_line = LineNo(record.last_line.0 + chunk.len() as u64);
        events.push(Event::new(
            record.app_id,
            record.id,
            EventKind::Logs { first, segment },
        ));
        chunk.clear();
        *chunk_bytes = 0;
    };
    for (stream, text) in pieces {
        if chunk_bytes + text.len() + 2 > MAX_SEGMENT_BYTES {
            flush(&mut chunk, &mut chunk_bytes, group);
        }
        chunk_bytes += text.len();
        chunk.push((stream, text));
    }
    flush(&mut chunk, &mut chunk_bytes, group);
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::{MemoryEngine, SledEngine};

    fn user() -> User {
        User {
            id: UserId::generate(),
            username: "u".into(),
            email: "u@example.com".into(),
            fullname: String::new(),
            is_admin: false,
            created_at: now(),
        }
    }

    fn pusher(user: &User) -> Pusher {
        Pusher {
            id: user.id,
            username: user.username.clone(),
            email: user.email.clone(),
        }
    }

    /// Log files of in-memory test stores: a temp dir kept for the whole test run.
    fn scratch_logs() -> LogFiles {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        LogFiles::open(&dir).expect("logs")
    }

    async fn setup(engine: Arc<dyn Engine>) -> (Writer, Store, Arc<Hub>, User, AppId) {
        let (writer, store, hub, user, app, _) = setup_joinable(engine, scratch_logs()).await;
        (writer, store, hub, user, app)
    }

    async fn setup_joinable(
        engine: Arc<dyn Engine>,
        logs: LogFiles,
    ) -> (Writer, Store, Arc<Hub>, User, AppId, JoinHandle<()>) {
        let store = Store::new(engine, logs);
        let hub = Arc::new(Hub::default());
        let (writer, _, thread) = Writer::start(store.clone(), hub.clone()).expect("start");
        let user = user();
        let token = Token {
            id: TokenId::generate(),
            user_id: user.id,
            name: "t".into(),
            created_at: now(),
        };
        writer
            .create_user(user.clone(), token, [7; 32])
            .await
            .expect("user");
        let app = App {
            id: AppId::generate(),
            name: "app".into(),
            owner: user.id,
            git_source: None,
            created_at: now(),
            updated_at: now(),
            last_deployment: None,
        };
        writer.create_app(app.clone()).await.expect("app");
        (writer, store, hub, user, app.id, thread)
    }

    #[tokio::test]
    async fn line_numbers_continue_across_batches_and_split_on_newlines() {
        let (writer, store, _, user, app) = setup(Arc::new(MemoryEngine::default())).await;
        let d = writer
            .create_deployment(app, "r".into(), pusher(&user), Driver::External)
            .await
            .expect("deployment");
        assert_eq!(d.status, Status::Building);
        let last = writer
            .append_logs(d.id, vec![NewLine::stdout("a"), NewLine::stdout("b\nc\r")])
            .await
            .expect("append");
        assert_eq!(last, LineNo(3));
        let last = writer
            .append_logs(d.id, vec![NewLine::stderr("d")])
            .await
            .expect("append");
        assert_eq!(last, LineNo(4));
        assert_eq!(store.last_line(d.id).expect("last"), LineNo(4));
        let segments: Vec<_> = store
            .segments_after(d.id, LineNo(2))
            .map(|s| s.expect("segment").0)
            .collect();
        // The segment holding line 3 starts at 1; the next at 4.
        assert_eq!(segments, vec![LineNo(1), LineNo(4)]);
    }

    #[tokio::test]
    async fn a_second_deployment_queues_and_starts_when_the_first_ends() {
        let (writer, _, hub, user, app) = setup(Arc::new(MemoryEngine::default())).await;
        let first = writer
            .create_deployment(app, "1".into(), pusher(&user), Driver::External)
            .await
            .expect("first");
        let second = writer
            .create_deployment(app, "2".into(), pusher(&user), Driver::External)
            .await
            .expect("second");
        assert_eq!(second.status, Status::Queued);
        assert!(matches!(
            writer
                .append_logs(second.id, vec![NewLine::stdout("x")])
                .await,
            Err(WriteError::Queued)
        ));
        assert!(matches!(
            writer
                .transition(second.id, Target::Status(Status::Building), None)
                .await,
            Err(WriteError::Queued)
        ));
        let watch = hub.watch_status(second.id).expect("watch");
        let ended = writer
            .transition(first.id, Target::Status(Status::BuildError), None)
            .await
            .expect("end");
        assert!(ended.finished_at.is_some());
        assert_eq!(*watch.borrow(), Status::Building);
        // Refused moves change nothing.
        assert!(matches!(
            writer
                .transition(first.id, Target::Status(Status::Success), None)
                .await,
            Err(WriteError::Transition(
                TransitionError::AlreadyFinished { .. }
            ))
        ));
        assert!(matches!(
            writer
                .transition(second.id, Target::Status(Status::Success), None)
                .await,
            Err(WriteError::Transition(TransitionError::Illegal { .. }))
        ));
        let lost = writer
            .transition(
                second.id,
                Target::SessionLost,
                Some(NewLine::system("gone")),
            )
            .await
            .expect("lost");
        assert_eq!(lost.status, Status::Aborted);
        assert_eq!(lost.last_line, LineNo(1));
    }

    #[tokio::test]
    async fn recovery_ends_what_a_crash_left_unfinished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (building, starting, queued_external) = {
            let engine = Arc::new(SledEngine::open(dir.path()).expect("open"));
            let logs = LogFiles::open(&dir.path().join("logs")).expect("logs");
            let (writer, store, hub, user, app, thread) = setup_joinable(engine, logs).await;
            let building = writer
                .create_deployment(app, "1".into(), pusher(&user), Driver::External)
                .await
                .expect("1");
            writer
                .append_logs(building.id, vec![NewLine::stdout("kept")])
                .await
                .expect("append");
            let queued = writer
                .create_deployment(app, "2".into(), pusher(&user), Driver::External)
                .await
                .expect("2");
            let app2 = App {
                id: AppId::generate(),
                name: "other".into(),
                owner: user.id,
                git_source: None,
                created_at: now(),
                updated_at: now(),
                last_deployment: None,
            };
            writer.create_app(app2.clone()).await.expect("app2");
            let starting = writer
                .create_deployment(app2.id, "3".into(), pusher(&user), Driver::External)
                .await
                .expect("3");
            for status in [Status::Pushing, Status::Starting] {
                writer
                    .transition(starting.id, Target::Status(status), None)
                    .await
                    .expect("move");
            }
            // No shutdown: the unfinished deployments stay as they are, as after a crash. (The
            // thread must end to release sled's lock before the reopen.)
            drop((writer, store, hub));
            thread.join().expect("writer thread");
            (building.id, starting.id, queued.id)
        };
        let store = Store::new(
            Arc::new(SledEngine::open(dir.path()).expect("reopen")),
            LogFiles::open(&dir.path().join("logs")).expect("logs"),
        );
        let (_, recovery, _) =
            Writer::start(store.clone(), Arc::new(Hub::default())).expect("start");
        let status = |id| store.deployment(id).expect("read").expect("exists");
        assert_eq!(status(building).status, Status::Aborted);
        assert_eq!(status(starting).status, Status::TimeoutError);
        assert_eq!(status(queued_external).status, Status::Aborted);
        assert_eq!(recovery.ended.len(), 3);
        assert_eq!(
            status(building).last_line,
            LineNo(2),
            "kept line + the why line"
        );
        let text: Vec<u8> = store
            .segments_after(building, LineNo(0))
            .flat_map(|s| {
                let (_, bytes) = s.expect("segment");
                codec::SegmentView::parse(&bytes)
                    .expect("parse")
                    .text
                    .to_vec()
            })
            .collect();
        let text = String::from_utf8(text).expect("utf8");
        assert!(text.starts_with("kept\n"), "{text}");
        assert!(text.contains("deployd restarted"), "{text}");
    }
}

#[cfg(test)]
mod log_file_tests {
    use super::*;
    use crate::store::engine::MemoryEngine;

    #[tokio::test]
    async fn deleting_an_app_removes_its_log_files_and_finished_files_are_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = LogFiles::open(dir.path()).expect("logs");
        let store = Store::new(Arc::new(MemoryEngine::default()), logs.clone());
        let (writer, _, _) = Writer::start(store.clone(), Arc::new(Hub::default())).expect("start");
        let owner = UserId::generate();
        let app = App {
            id: AppId::generate(),
            name: "gone".into(),
            owner,
            git_source: None,
            created_at: now(),
            updated_at: now(),
            last_deployment: None,
        };
        writer.create_app(app.clone()).await.expect("app");
        let pusher = Pusher {
            id: owner,
            username: "u".into(),
            email: "u@x".into(),
        };
        let d = writer
            .create_deployment(app.id, "r".into(), pusher, Driver::External)
            .await
            .expect("deployment");
        writer
            .append_logs(d.id, vec![NewLine::stdout("kept on disk")])
            .await
            .expect("append");
        let on_disk = std::fs::read(logs.path(d.id)).expect("log file");
        let view = codec::SegmentView::parse(&on_disk).expect("one segment");
        assert_eq!(view.text, b"kept on disk\n");
        writer.delete_app(app.id).await.expect("delete");
        assert!(!logs.path(d.id).exists());
        assert_eq!(store.last_line(d.id).expect("read"), LineNo(0));
    }
}
