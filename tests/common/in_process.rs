//! The in-process server: `deployd::server::start` in the test's own tokio runtime, on
//! 127.0.0.1:0 with a temporary data directory, built from the same [`Options`] as the binary
//! harness. Tests under `#[tokio::test(start_paused = true)]` therefore drive the server's own
//! timers (ping interval, auth and start timeouts, replay window) with `tokio::time::advance`.
//!
//! It must not be used where the test blocks its thread (a `std::process` child, a blocking
//! sleep): the server runs on that same thread and would stop answering.

use std::path::PathBuf;
use std::sync::Arc;

use deployd::config::{Config, FileConfig, Overrides};
use deployd::server::RunningServer;

use super::{Endpoint, Options, ADMIN_TOKEN};

/// A running in-process server. Dropping it without [`TestServer::stop`] leaves its tasks to end
/// with the test's runtime.
pub struct TestServer {
    running: Option<RunningServer>,
    endpoint: Endpoint,
    /// The data directory (inside `root`).
    pub data: PathBuf,
    /// Holds the temp dir alive across restarts.
    root: Arc<tempfile::TempDir>,
    options: Options,
}

impl std::ops::Deref for TestServer {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> TestServer {
        let root = Arc::new(tempfile::tempdir().expect("tempdir"));
        TestServer::boot(root, options).await
    }

    /// The configuration the binary harness would give `deployd serve` for `options`.
    pub fn config(data: PathBuf, options: &Options) -> Config {
        assert!(
            options.env.is_empty() && options.args.is_empty() && !options.generated_admin_token,
            "environment variables, extra flags and a generated admin token need the binary harness"
        );
        let toml = format!(
            "[executor]\nallow_private_sources = {}\n{}\n",
            options.allow_private_sources.unwrap_or(true),
            options.config_toml
        );
        let file: FileConfig = toml::from_str(&toml).expect("test config TOML");
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().expect("listen address")),
            data_dir: Some(data),
            admin_token: Some(ADMIN_TOKEN.to_string()),
            ..Overrides::default()
        };
        Config::from_parts(file, overrides).expect("test config")
    }

    /// Starts over `root/data`, whatever it already holds (a fixture, a previous run).
    pub async fn boot(root: Arc<tempfile::TempDir>, options: Options) -> TestServer {
        let data = root.path().join("data");
        let config = TestServer::config(data.clone(), &options);
        let running = deployd::server::start(config).await.expect("start server");
        let addr = running.addr.to_string();
        TestServer {
            running: Some(running),
            endpoint: Endpoint {
                url: format!("http://{addr}"),
                addr,
                admin_token: ADMIN_TOKEN.to_string(),
            },
            data,
            root,
            options,
        }
    }

    /// The server's router, to call with `tower::ServiceExt::oneshot` (no socket). Drop it
    /// before [`TestServer::stop`].
    pub fn router(&self) -> axum::Router {
        self.running
            .as_ref()
            .and_then(RunningServer::router)
            .expect("the server is running")
    }

    /// Graceful shutdown: sessions end, the writer drains, everything is on disk on return.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// The temporary directory holding `data`.
    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    /// Stops (gracefully) and starts a new server over the same data directory.
    pub async fn restart(mut self) -> TestServer {
        self.stop().await;
        TestServer::boot(self.root.clone(), self.options.clone()).await
    }
}
