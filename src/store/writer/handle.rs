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
use super::{Recovery, Target, WriteError, WRITER_QUEUE_CAPACITY};
use crate::model::{
    App, AppId, Deployment, DeploymentId, Driver, LineNo, NewLine, Pusher, Token, TokenId, User,
    UserId,
};
use crate::store::events::Publish;
use crate::store::{codec, Store, StoreError};

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
    pub(super) fn commits_alone(&self) -> bool {
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
    health: HealthCell,
}

fn stopped() -> WriteError {
    WriteError::Unavailable("writer stopped".into())
}

impl Writer {
    /// Recovers unfinished deployments, then starts the writer thread.
    pub fn start(
        store: Store,
        hub: Arc<dyn Publish>,
    ) -> Result<(Writer, Recovery, JoinHandle<()>), StoreError> {
        let health = HealthCell::default();
        let mut state = WriterState::new(store, hub, health.clone());
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
        lines: Vec<NewLine>,
    ) -> Result<
        impl std::future::Future<Output = Result<LineNo, WriteError>> + Send + 'static,
        WriteError,
    > {
        let permit = self.tx.reserve().await.map_err(|_| stopped())?;
        let (reply, rx) = oneshot::channel();
        permit.send(Command::AppendLogs {
            deployment,
            lines,
            reply,
        });
        Ok(async move { rx.await.map_err(|_| stopped())? })
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
    /// Refused when the user already is a collaborator.
    fn add_collaborator(app: AppId, user: UserId, id: uuid::Uuid) -> () = AddCollaborator;
    fn remove_collaborator(app: AppId, user: UserId) -> () = RemoveCollaborator;
    /// Creates a deployment: `building`, or `queued` when the app has one in progress.
    fn create_deployment(app: AppId, git_ref: String, pusher: Pusher, driver: Driver) -> Deployment
        = CreateDeployment;
    /// Appends lines; returns the last line number, durable when this returns.
    fn append_logs(deployment: DeploymentId, lines: Vec<NewLine>) -> LineNo = AppendLogs;
    /// Moves a deployment through the state machine; durable and broadcast when this returns.
    fn transition(deployment: DeploymentId, target: Target, note: Option<NewLine>) -> Deployment
        = Transition;
    fn set_image_size(deployment: DeploymentId, bytes: u64) -> () = SetImageSize;
    fn put_meta(name: String, value: Vec<u8>) -> () = PutMeta;
    /// See [`Command::StopPromoting`].
    fn stop_promoting() -> () = StopPromoting;
    fn put_source(source: codec::StoredSource) -> () = PutSource;
}
