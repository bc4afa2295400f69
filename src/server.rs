//! Builds and runs the server from a [`Config`]: opens the store, recovers what a crash left
//! unfinished, makes sure there is a first admin and an install secret, binds, serves, and shuts
//! down gracefully (sessions end their deployments, the writer drains, the store is flushed).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Shared};
use crate::auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::listener::ConnectionRules;
use crate::model::new_user;
use crate::retention::{Pruner, Retention};
use crate::sessions::Executors;
use crate::sources::SourceUrls;
use crate::store::engine::SledEngine;
use crate::store::writer::{WriteError, Writer, WriterOptions};
use crate::store::{Store, StoreError};

/// The meta record holding the install's secret (JWT and source URL signatures).
const SECRET_META: &str = "install-secret";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store write: {0}")]
    Write(#[from] WriteError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("another deployd is running on this data directory ({path}){}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        path: std::path::PathBuf,
        pid: Option<u32>,
    },
    #[error("writing the admin token file: {0}")]
    AdminToken(std::io::Error),
    #[error("background task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A running server.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The served state, weakly: the writer thread ends when the last strong handle is gone.
    state: std::sync::Weak<Shared>,
}

impl RunningServer {
    /// Stops accepting, ends sessions and streams, drains the writer; returns when all is on disk.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Waits until the server stops by itself (it does not, unless shut down).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// A handle that triggers shutdown (for signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The router this server serves, over the same state, to call without a socket (tests use
    /// `tower::ServiceExt::oneshot`). `None` once the server stopped. Drop it before
    /// [`Self::shutdown`]: the writer drains only when the last handle on the state is gone.
    pub fn router(&self) -> Option<axum::Router> {
        self.state().map(api::router)
    }

    /// The served state (for the crate's own tests); `None` once the server stopped.
    pub(crate) fn state(&self) -> Option<AppState> {
        self.state.upgrade().map(AppState)
    }
}

/// Starts the server; returns once it listens.
///
/// The address is bound first, so that a failed bind leaves no data directory behind; then
/// the data directory is locked (one server per directory), then the store opens.
pub async fn start(mut config: Config) -> Result<RunningServer, ServerError> {
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let rules = ConnectionRules::resolve(&config.server);
    config.bound_to(addr);
    let local = open_local(&config).await?;
    let store = local.store.clone();
    let core = Core::start(config, store, local).await?;
    let router = core.router();
    let token = core.sessions_stop();
    let stop = core.stop_token();
    let weak_state = core.weak_state();
    let task = tokio::spawn(async move {
        crate::listener::serve(listener, router, rules, token).await;
        core.finish().await;
    });
    Ok(RunningServer {
        addr,
        shutdown: stop,
        task,
        state: weak_state,
    })
}

/// Binds the listening address.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// A data directory, locked for this process, and its store.
pub(crate) struct LocalData {
    /// The local sled engine and log files (a cluster node's replica).
    pub store: Store,
    lock: DataDirLock,
}

/// Creates and locks the data directory and opens its store (nothing is written yet).
pub(crate) async fn open_local(config: &Config) -> Result<LocalData, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let lock = DataDirLock::acquire(&config.data_dir)?;
    let store_dir = config.store_dir();
    let engine = tokio::task::spawn_blocking(move || SledEngine::open(&store_dir))
        .await?
        .map_err(StoreError::from)?;
    let logs = crate::store::logs::LogFiles::open(&config.logs_dir()).map_err(|source| {
        ServerError::DataDir {
            path: config.logs_dir(),
            source,
        }
    })?;
    Ok(LocalData {
        store: Store::new(Arc::new(engine), logs),
        lock,
    })
}

/// The single-node server without its listener: the writer (recovered), executors, notify
/// worker, retention and the API router over them. A single node serves [`Core::router`] on
/// its own listener; a cluster node serves it on the listener it had as a follower.
pub(crate) struct Core {
    router: axum::Router,
    state: AppState,
    /// What callers cancel (see [`Core::stop_token`]).
    stop: CancellationToken,
    notify_worker: tokio::task::JoinHandle<()>,
    retention_task: tokio::task::JoinHandle<()>,
    writer_thread: std::thread::JoinHandle<()>,
    lock: DataDirLock,
}

impl Core {
    /// Starts the writer on `store` (which must be `local`'s store, or the cluster leader's
    /// store over it), recovers what the last run left unfinished, and builds the router.
    /// `config` must already be bound (`Config::bound_to`).
    pub(crate) async fn start(
        config: Config,
        store: Store,
        local: LocalData,
    ) -> Result<Core, ServerError> {
        let hub = Arc::new(Hub::default());
        let recovery_store = store.clone();
        let options = WriterOptions {
            max_log_bytes: config.retention.max_log_bytes,
            max_executors: config.pipeline.max_concurrent,
        };
        // The writer publishes through retention's notifier, which wakes the prune pass once a
        // deployment's end is committed.
        let (retention, notifier) = Retention::new(hub.clone());
        let (writer, recovery, writer_thread) = tokio::task::spawn_blocking(move || {
            Writer::start_with(recovery_store, notifier, options)
        })
        .await??;
        for (id, status) in &recovery.ended {
            tracing::warn!(deployment = %id, %status, "ended a deployment left unfinished by the last run");
        }
        // Stage processes a crash left behind are killed before anything new runs.
        let work_dir = config.pipeline.work_dir.clone();
        tokio::task::spawn_blocking(move || crate::pipeline::leftovers::sweep(&work_dir)).await?;

        let secret = install_secret(&store, &writer).await?;
        bootstrap_admin(&config, &store, &writer).await?;

        let shutdown = CancellationToken::new();
        let sources = SourceUrls::new(config.public_url.clone(), secret, config.sources_dir());
        let executors = Executors::new(
            writer.clone(),
            store.clone(),
            hub.clone(),
            config.pipeline.clone(),
            sources.clone(),
            shutdown.clone(),
        );
        let retention_task = retention.spawn(Pruner {
            store: store.clone(),
            writer: writer.clone(),
            data_dir: config.data_dir.clone(),
            config: config.retention.clone(),
            stop: shutdown.clone(),
        });
        let state = AppState(Arc::new(Shared {
            config,
            store,
            writer,
            hub,
            secret,
            sources,
            shutdown: shutdown.clone(),
            executors,
            retention,
            jwts: Default::default(),
        }));
        for deployment in recovery.to_execute {
            let app_id = deployment.app_id;
            let app = state.read(move |store| store.app(app_id)).await;
            if let Ok(Some(app)) = app {
                state.executors.spawn(deployment, app.name);
            }
        }

        let notify_worker = crate::notify::spawn(
            state.store.clone(),
            state.writer.clone(),
            state.config.notifications.clone(),
            state.shutdown.clone(),
        );
        let router = api::router(state.clone());
        // `stop` is what callers cancel; `state.shutdown` (what sessions and streams watch)
        // follows once the writer stopped promoting queued deployments, so that they survive
        // the restart.
        let stop = CancellationToken::new();
        let sessions_stop = state.shutdown.clone();
        let drain_writer = state.writer.clone();
        let stop_requested = stop.clone();
        tokio::spawn(async move {
            stop_requested.cancelled().await;
            if let Err(err) = drain_writer.stop_promoting().await {
                tracing::warn!(error = %err, "stopping queue promotion at shutdown");
            }
            sessions_stop.cancel();
        });
        spawn_memory_trimmer(shutdown.clone());
        Ok(Core {
            router,
            state,
            stop,
            notify_worker,
            retention_task,
            writer_thread,
            lock: local.lock,
        })
    }

    /// The API router over this server's state.
    pub(crate) fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// Cancel to shut down: queue promotion stops, then [`Self::sessions_stop`] follows.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Cancelled once shutting down is safe for sessions and streams; the listener stops on it.
    pub(crate) fn sessions_stop(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    fn weak_state(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.state.0)
    }

    /// After the listener stopped: ends executors, the notify worker, retention and the
    /// writer, in that order, then unlocks the data directory.
    pub(crate) async fn finish(self) {
        let Core {
            router,
            state,
            notify_worker,
            retention_task,
            writer_thread,
            lock,
            ..
        } = self;
        drop(router);
        // Executors end their deployments (processes killed, status written) before we go.
        state.executors.close_and_wait().await;
        // The notification worker holds a writer handle; it stops with `state.shutdown`.
        let _ = notify_worker.await;
        drop(state);
        // The prune pass holds a writer handle: it stops (between batches) before the writer.
        let _ = retention_task.await;
        // The writer thread ends when the last handle is gone; every commit is already synced.
        let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        // Only now may another server open this data directory.
        drop(lock);
    }
}

/// How often freed heap memory is handed back to the operating system.
const MEMORY_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// glibc keeps memory freed by other threads in per-thread arenas instead of returning it:
/// after an ingest burst the server stayed at ~54 MB resident although ~14 MB was live. A
/// periodic `malloc_trim` brings an idle server back to ~23 MB (the resident-memory target is
/// 50 MB idle). It costs microseconds when there is nothing to return.
fn spawn_memory_trimmer(shutdown: CancellationToken) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MEMORY_TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // SAFETY: malloc_trim only walks the allocator's own arenas; it has no
                    // preconditions and may be called from any thread at any time.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    drop(shutdown);
}

async fn install_secret(store: &Store, writer: &Writer) -> Result<[u8; 32], ServerError> {
    let existing = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.meta(SECRET_META)).await??
    };
    if let Some(bytes) = existing {
        if let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(secret);
        }
        tracing::warn!("stored install secret has the wrong length; making a new one");
    }
    let secret = auth::generate_jwt_secret();
    writer.put_meta(SECRET_META.into(), secret.to_vec()).await?;
    Ok(secret)
}

/// On first start (no user at all), creates `admin` with `DEPLOYD_ADMIN_TOKEN` or a generated
/// token written to `DIR/admin-token` (mode 0600). Logs the path, never the token.
async fn bootstrap_admin(
    config: &Config,
    store: &Store,
    writer: &Writer,
) -> Result<(), ServerError> {
    let count = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.user_count()).await??
    };
    if count > 0 {
        return Ok(());
    }
    let (user, mut token) = new_user(
        "admin".into(),
        "admin@localhost".into(),
        "Administrator".into(),
        true,
        time::OffsetDateTime::now_utc(),
    );
    token.name = "admin token".into();
    let secret = config
        .admin_token
        .clone()
        .unwrap_or_else(auth::generate_api_token);
    writer
        .create_user(user, token, auth::hash_api_token(&secret))
        .await?;
    if config.admin_token.is_some() {
        tracing::info!("created user admin with the token from DEPLOYD_ADMIN_TOKEN");
    } else {
        let path = config.admin_token_file();
        write_private_file(&path, secret.as_bytes()).map_err(ServerError::AdminToken)?;
        tracing::info!(path = %path.display(), "created user admin; its API token is in this file");
    }
    Ok(())
}

/// The data directory's lock file: `DIR/deployd.pid`, `flock`ed for the life of the server and
/// holding its pid, so that a second server on the same directory says who holds it instead of
/// failing later on the store's own lock.
pub(crate) struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    pub(crate) fn acquire(data_dir: &std::path::Path) -> Result<DataDirLock, ServerError> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join("deployd.pid");
        let io_error = |source| ServerError::DataDir {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_error)?;
        // SAFETY: flock takes a descriptor this `File` owns and keeps open; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_error(error));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(ServerError::Locked {
                path: data_dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        file.set_len(0).map_err(io_error)?;
        file.rewind().map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        Ok(DataDirLock { _file: file })
    }
}

fn write_private_file(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()
}
