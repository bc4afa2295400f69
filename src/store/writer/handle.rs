//! The async side of the writer: [`Writer`], the handle every caller holds, and the
//! [`Command`]s it sends to the writer thread.
//!
//! A handle only sends a command and awaits its reply; it holds no state and never touches the
//! store, so a caller cannot write around the writer.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::failure::{Health, HealthCell};
use super::group::WriterState;
use super::{Appended, Recovery, Target, WriteError, WriterOptions, WRITER_QUEUE_CAPACITY};
use crate::lines::Lines;
use crate::model::{
    App, AppId, Deployment, DeploymentId, Driver, Grant, LineNo, NewLine, Pusher, Token, TokenId,
    User, UserId,
};
use crate::store::events::Publish;
use crate::store::{codec, timeline_codec, Store, StoreError};

pub(super) type Reply<T> = oneshot::Sender<Result<T, WriteError>>;

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
        /// The role it starts with (`scalingo collaborators-add` sends `is_limited`).
        is_limited: bool,
        reply: Reply<()>,
    },
    RemoveCollaborator {
        app: AppId,
        user: UserId,
        /// Who removed them (the owner, or the collaborator itself), for the timeline.
        by: UserId,
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
        lines: Lines,
        reply: Reply<Appended>,
    },
    Transition {
        deployment: DeploymentId,
        target: Target,
        /// A line stored just before the status (e.g. why it was aborted).
        note: Option<NewLine>,
        reply: Reply<Deployment>,
    },
    /// Cancels a deployment on behalf of `by` (see [`super::CancelReply`]).
    Cancel {
        deployment: DeploymentId,
        by: String,
        reply: Reply<super::CancelReply>,
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
    /// A token with a scope (`POST /v1/tokens` with `scope`/`apps`), written with its grant.
    CreateScopedToken {
        token: Token,
        token_hash: [u8; 32],
        grant: Grant,
        reply: Reply<()>,
    },
    /// Renames an app: its id, deployments and collaborators stay; the old name is freed.
    RenameApp {
        app: AppId,
        new_name: String,
        /// Who renamed it (the timeline's `rename_app` event).
        by: UserId,
        reply: Reply<App>,
    },
    /// Makes a collaborator limited or not.
    SetCollaboratorLimited {
        app: AppId,
        user: UserId,
        is_limited: bool,
        /// Who changed the role (the timeline's `change_collaborator_role` event).
        by: UserId,
        reply: Reply<()>,
    },
    /// Creates (`created`) or replaces a notifier; recorded with its timeline event.
    PutNotifier {
        notifier: timeline_codec::StoredNotifier,
        actor: Pusher,
        created: bool,
        reply: Reply<()>,
    },
    DeleteNotifier {
        app: AppId,
        id: uuid::Uuid,
        actor: Pusher,
        reply: Reply<()>,
    },
    /// Records one timeline event (and its outbox entries) in a commit of its own.
    RecordEvent {
        event: crate::timeline::TimelineEvent,
        reply: Reply<()>,
    },
    /// One delivery attempt's result (`notify`'s worker).
    FinishDelivery {
        entry: timeline_codec::StoredOutbox,
        delivery: Option<timeline_codec::StoredDelivery>,
        next: Option<timeline_codec::StoredOutbox>,
        reply: Reply<()>,
    },
    /// Deletes expired timeline, outbox and delivery keys (retention).
    Prune {
        keys: Vec<Vec<u8>>,
        reply: Reply<()>,
    },
    /// Prunes these finished deployments (`crate::retention` picks them; unfinished or missing
    /// ones are skipped): record and index entries in one commit, then the log files. Answers
    /// the ids pruned. Committed alone, in bounded batches, so ingest runs between them.
    PruneDeployments {
        ids: Vec<DeploymentId>,
        reply: Reply<Vec<DeploymentId>>,
    },
    /// Deletes these uploaded sources' records, except those an unfinished deployment names;
    /// answers the ids deleted (their archive files may then go).
    DeleteSources {
        ids: Vec<uuid::Uuid>,
        reply: Reply<Vec<uuid::Uuid>>,
    },
    /// The deployment's push kept an image at its image path (`crate::images`), of `bytes`:
    /// records it (tag `0x0F`) and the deployment's image size.
    KeepImage {
        deployment: DeploymentId,
        bytes: u64,
        reply: Reply<()>,
    },
    /// Creates a deployment of `app` rolling back to `target` (see `images::create_rollback`).
    CreateRollback {
        app: AppId,
        target: DeploymentId,
        pusher: Pusher,
        reply: Reply<Deployment>,
    },
    /// Deletes these image records (retention's keep_images), except those that must stay;
    /// answers the ids deleted (their files may then go).
    PruneImages {
        ids: Vec<DeploymentId>,
        reply: Reply<Vec<DeploymentId>>,
    },
    /// Shutdown has begun: stop promoting queued deployments, so that they stay queued and run
    /// after the restart instead of starting a session that is about to be cut.
    StopPromoting {
        reply: Reply<()>,
    },
    /// Takes a point-in-time snapshot of the records for a backup (`super::Snapshot`),
    /// between two commits; committed alone.
    Snapshot {
        reply: Reply<super::Snapshot>,
    },
}

impl Command {
    /// Commands committed alone (they check uniqueness against committed state).
    pub(super) fn commits_alone(&self) -> bool {
        !matches!(
            self,
            Command::AppendLogs { .. }
                | Command::Transition { .. }
                | Command::Cancel { .. }
                | Command::SetImageSize { .. }
                | Command::KeepImage { .. }
        )
    }
}

/// The async handle to the writer. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
    health: HealthCell,
}

fn stopped() -> WriteError {
    WriteError::Unavailable("writer stopped".into())
}

impl Writer {
    /// Recovers unfinished deployments, then starts the writer thread (default options).
    pub fn start(
        store: Store,
        hub: Arc<dyn Publish>,
    ) -> Result<(Writer, Recovery, JoinHandle<()>), StoreError> {
        Self::start_with(store, hub, WriterOptions::default())
    }

    /// [`Self::start`] with `options`.
    pub fn start_with(
        store: Store,
        hub: Arc<dyn Publish>,
        options: WriterOptions,
    ) -> Result<(Writer, Recovery, JoinHandle<()>), StoreError> {
        let health = HealthCell::default();
        let mut state = WriterState::new(store, hub, health.clone());
        state.lifecycle = super::lifecycle::Lifecycle::with_build_slots(options.max_executors);
        state.log_limit = super::log_limit::LogLimit::new(options.max_log_bytes);
        state.build_status_indexes()?;
        let recovery = state.recover()?;
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_CAPACITY);
        let handle = std::thread::Builder::new()
            .name("deployd-writer".into())
            .spawn(move || state.run(rx))
            .map_err(|e| StoreError::Engine(crate::store::engine::EngineError(e.to_string())))?;
        Ok((Writer { tx, health }, recovery, handle))
    }

    /// Whether the writer takes writes now (failing: refusing until the store recovers, on its
    /// own; latched: until a restart). For `/readyz`.
    pub fn health(&self) -> Health {
        if self.tx.is_closed() {
            return Health::Latched {
                reason: "the writer thread has stopped".into(),
            };
        }
        self.health.get()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Queues an append now and returns the future of its reply. Appends queued one after the
    /// other are stored in that order, whenever their replies are awaited: a pusher with several
    /// batches in flight keeps its line order.
    pub async fn queue_append(
        &self,
        deployment: DeploymentId,
        lines: impl Into<Lines>,
    ) -> Result<
        impl std::future::Future<Output = Result<Appended, WriteError>> + Send + 'static,
        WriteError,
    > {
        // Packed here, on the caller's task: the writer thread does no splitting or freeing.
        let lines = lines.into();
        let permit = self.tx.reserve().await.map_err(|_| stopped())?;
        let (reply, rx) = oneshot::channel();
        permit.send(Command::AppendLogs {
            deployment,
            lines,
            reply,
        });
        Ok(async move { rx.await.map_err(|_| stopped())? })
    }

    /// Appends lines; returns the last line number, durable when this returns (lines past
    /// `max_log_bytes` are dropped: see [`Self::append`] for how many).
    pub async fn append_logs(
        &self,
        deployment: DeploymentId,
        lines: impl Into<Lines>,
    ) -> Result<LineNo, WriteError> {
        Ok(self.append(deployment, lines).await?.last_line)
    }

    /// Appends lines; durable when this returns. Says how many were dropped (`max_log_bytes`).
    pub async fn append(
        &self,
        deployment: DeploymentId,
        lines: impl Into<Lines>,
    ) -> Result<Appended, WriteError> {
        let lines = lines.into();
        self.call(|reply| Command::AppendLogs {
            deployment,
            lines,
            reply,
        })
        .await
    }
}

impl Writer {
    /// Adds a collaborator that is not limited; refused when the user already is a
    /// collaborator.
    pub async fn add_collaborator(
        &self,
        app: AppId,
        user: UserId,
        id: uuid::Uuid,
    ) -> Result<(), WriteError> {
        self.add_collaborator_as(app, user, id, false).await
    }

    /// Adds a collaborator with its role, in one commit (a limited collaborator is never
    /// stored, even briefly, as a full one).
    pub async fn add_collaborator_as(
        &self,
        app: AppId,
        user: UserId,
        id: uuid::Uuid,
        is_limited: bool,
    ) -> Result<(), WriteError> {
        self.call(|reply| Command::AddCollaborator {
            app,
            user,
            id,
            is_limited,
            reply,
        })
        .await
    }
}

/// One `Writer` method per command: sends `Command::$variant` with the arguments as its fields
/// and awaits the reply.
macro_rules! commands {
    ($(
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty = $variant:ident;
    )*) => {
        impl Writer {
            $(
                $(#[$doc])*
                pub async fn $name(&self, $($arg: $ty),*) -> Result<$out, WriteError> {
                    self.call(|reply| Command::$variant { $($arg,)* reply }).await
                }
            )*
        }
    };
}

commands! {
    /// Creates a user with its first token; refused when the username or email is taken.
    fn create_user(user: User, token: Token, token_hash: [u8; 32]) -> () = CreateUser;
    fn create_token(token: Token, token_hash: [u8; 32]) -> () = CreateToken;
    /// Refused (not found) unless the token exists and belongs to `user`.
    fn revoke_token(user: UserId, token: TokenId) -> () = RevokeToken;
    /// Refused when an app of that name exists.
    fn create_app(app: App) -> () = CreateApp;
    /// Deletes an app with its collaborators, deployments and log files; its unfinished
    /// deployments end (their sessions see the status watch close).
    fn delete_app(app: AppId) -> () = DeleteApp;
    fn remove_collaborator(app: AppId, user: UserId, by: UserId) -> () = RemoveCollaborator;
    /// Creates a deployment: `building`, or `queued` when the app has one in progress.
    fn create_deployment(app: AppId, git_ref: String, pusher: Pusher, driver: Driver) -> Deployment
        = CreateDeployment;
    /// Moves a deployment through the state machine; durable and broadcast when this returns.
    fn transition(deployment: DeploymentId, target: Target, note: Option<NewLine>) -> Deployment
        = Transition;
    fn set_image_size(deployment: DeploymentId, bytes: u64) -> () = SetImageSize;
    /// Cancels a deployment: a queued one ends `aborted` in this commit; a running one gets a
    /// pending request its session must honour. Either way the line `!     Cancelled by <by>`
    /// is stored in this commit (once: a repeated cancel changes nothing).
    fn cancel(deployment: DeploymentId, by: String) -> super::CancelReply = Cancel;
    fn put_meta(name: String, value: Vec<u8>) -> () = PutMeta;
    /// See [`Command::StopPromoting`].
    fn stop_promoting() -> () = StopPromoting;
    fn put_source(source: codec::StoredSource) -> () = PutSource;
    /// Creates a token limited to `grant` (stored under `0x17`; revoking the token drops it).
    fn create_scoped_token(token: Token, token_hash: [u8; 32], grant: Grant) -> ()
        = CreateScopedToken;
    /// Renames an app; refused (`AppNameTaken`) when another app has the name, `NotFound`
    /// when the app is gone. Returns the app as stored. The timeline's `rename_app` event
    /// (`old_name`, `new_name`) is recorded in this command's commit.
    fn rename_app(app: AppId, new_name: String, by: UserId) -> App = RenameApp;
    /// Sets a collaborator's role; `NotFound("collaborator")` unless `user` collaborates on
    /// `app`. The timeline's `change_collaborator_role` event is recorded in this commit.
    fn set_collaborator_limited(app: AppId, user: UserId, is_limited: bool, by: UserId) -> ()
        = SetCollaboratorLimited;
    /// Creates or (not `created`) replaces a notifier, with its timeline event in the same
    /// commit; replacing a missing one is refused (not found).
    fn put_notifier(notifier: timeline_codec::StoredNotifier, actor: Pusher, created: bool) -> ()
        = PutNotifier;
    /// Deletes a notifier and its delivery records; refused (not found) when missing.
    fn delete_notifier(app: AppId, id: uuid::Uuid, actor: Pusher) -> () = DeleteNotifier;
    /// Records a timeline event of an existing app, with the outbox entries of the notifiers
    /// that select it, in one commit. The one call for events not recorded by another write
    /// (e.g. `rename_app`, `change_collaborator_role`).
    fn record_event(event: crate::timeline::TimelineEvent) -> () = RecordEvent;
    fn finish_delivery(
        entry: timeline_codec::StoredOutbox,
        delivery: Option<timeline_codec::StoredDelivery>,
        next: Option<timeline_codec::StoredOutbox>
    ) -> () = FinishDelivery;
    /// At most `notify::MAX_PRUNE_KEYS` keys, all of tags 0x13–0x16.
    fn prune(keys: Vec<Vec<u8>>) -> () = Prune;
    /// See [`Command::PruneDeployments`].
    fn prune_deployments(ids: Vec<DeploymentId>) -> Vec<DeploymentId> = PruneDeployments;
    /// See [`Command::DeleteSources`].
    fn delete_sources(ids: Vec<uuid::Uuid>) -> Vec<uuid::Uuid> = DeleteSources;
    /// See [`Command::KeepImage`].
    fn keep_image(deployment: DeploymentId, bytes: u64) -> () = KeepImage;
    /// See [`Command::CreateRollback`]: refused `NotFound("deployment")` when `target` is not
    /// a deployment of `app`, `NotFound(NO_IMAGE)` when it cannot be rolled back to.
    fn create_rollback(app: AppId, target: DeploymentId, pusher: Pusher) -> Deployment
        = CreateRollback;
    /// See [`Command::PruneImages`].
    fn prune_images(ids: Vec<DeploymentId>) -> Vec<DeploymentId> = PruneImages;
    /// See [`Command::Snapshot`]: ingest goes on while the snapshot is read.
    fn snapshot() -> super::Snapshot = Snapshot;
}
