//! The black-box test harness. Two ways to run a server on 127.0.0.1 port 0 with a temporary
//! data directory, both reached over real HTTP and WebSocket through the same [`Endpoint`]:
//! - [`TestServer`] (`in_process`): `deployd::server::start` in the test's own runtime, so
//!   starting is cheap and `#[tokio::test(start_paused = true)]` controls the server's timers;
//! - [`Server`]: the real `deployd` binary, for tests where a process must die (restart, crash),
//!   its exit code or log is checked, or the test blocks its thread on a CLI child.
#![allow(dead_code)]

mod in_process;
/// A recording webhook receiver (notifier tests).
pub mod webhook;

// Not every test binary uses both harnesses.
#[allow(unused_imports)]
pub use in_process::TestServer;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The `deployd` binary the black-box tests run: `$DEPLOYD_BIN` when set (CI points it at the
/// release binary it built once), else the debug binary cargo built for this test run.
pub fn deployd_bin() -> PathBuf {
    match std::env::var_os("DEPLOYD_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_deployd")),
    }
}

/// The admin token every test server starts with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Options for starting a server.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra TOML appended to the generated config file.
    pub config_toml: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Do not set DEPLOYD_ADMIN_TOKEN (the server generates one into DATA/admin-token).
    pub generated_admin_token: bool,
    /// `[executor] allow_private_sources` (default `true`, so tests can fetch from 127.0.0.1).
    /// `config_toml` is appended right after it, so its first lines (before any `[section]`)
    /// are executor settings; it must not open an `[executor]` section of its own.
    pub allow_private_sources: Option<bool>,
    /// Extra `deployd serve` arguments (e.g. `--section-key` flags), after the harness's own.
    pub args: Vec<String>,
    /// Run the `test-support` build cargo made for these tests, whatever `DEPLOYD_BIN` says:
    /// only it reads injected faults (`DEPLOYD_TEST_FAULTS_FILE`); release builds contain no
    /// injection code.
    pub fault_injection: bool,
}

/// Where a running server is reached and its first admin's token: the client shortcuts every
/// harness shares (both servers deref to it).
pub struct Endpoint {
    pub url: String,
    pub addr: String,
    pub admin_token: String,
}

/// A running `deployd serve`.
pub struct Server {
    child: Option<Child>,
    endpoint: Endpoint,
    /// The data directory (inside `root`).
    pub data: PathBuf,
    /// Holds the temp dir alive; `None` when reusing another server's.
    root: std::sync::Arc<tempfile::TempDir>,
    options: Options,
    pub log_path: PathBuf,
}

impl std::ops::Deref for Server {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Server {
        let root = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
        Server::spawn(root, options)
    }

    fn spawn(root: std::sync::Arc<tempfile::TempDir>, options: Options) -> Server {
        let data = root.path().join("data");
        let config_path = root.path().join("deployd.toml");
        let config = format!(
            "[executor]\nallow_private_sources = {}\n{}\n",
            options.allow_private_sources.unwrap_or(true),
            options.config_toml
        );
        std::fs::write(&config_path, config).expect("write config");
        let log_path = root.path().join(format!(
            "server-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        let log = std::fs::File::create(&log_path).expect("log file");
        let binary = if options.fault_injection {
            PathBuf::from(env!("CARGO_BIN_EXE_deployd"))
        } else {
            deployd_bin()
        };
        let mut command = Command::new(binary);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env_remove("DEPLOYD_PUBLIC_URL")
            .env_remove("DEPLOYD_LISTEN")
            .env_remove("DEPLOYD_DATA")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if options.generated_admin_token {
            command.env_remove("DEPLOYD_ADMIN_TOKEN");
        } else {
            command.env("DEPLOYD_ADMIN_TOKEN", ADMIN_TOKEN);
        }
        for (k, v) in &options.env {
            command.env(k, v);
        }
        command.args(&options.args);
        let mut child = command.spawn().expect("spawn deployd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("deployd did not start; log:\n{log}");
            }
        };
        let url = line
            .strip_prefix("deployd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let addr = url.trim_start_matches("http://").to_string();
        let admin_token = if options.generated_admin_token {
            std::fs::read_to_string(data.join("admin-token"))
                .map(|t| t.trim().to_string())
                .unwrap_or_default()
        } else {
            ADMIN_TOKEN.to_string()
        };
        Server {
            child: Some(child),
            endpoint: Endpoint {
                url,
                addr,
                admin_token,
            },
            data,
            root,
            options,
            log_path,
        }
    }

    /// The server process's pid (`None` once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The server's stderr once it contains `needle`, or as it is after 10 s: the server writes
    /// its log every few milliseconds (`logging::FLUSH_INTERVAL`), not line by line, so a line
    /// logged during the last request may not be in the file yet.
    pub fn log_containing(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || std::time::Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait for a graceful exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        unsafe_signal(child.id(), 15);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("deployd did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (gracefully) and starts a new server over the same data directory.
    pub fn restart(mut self) -> Server {
        self.stop();
        Server::spawn(self.root.clone(), self.options.clone())
    }

    /// Stops (SIGTERM) and starts a new server over the same data directory with `options`.
    pub fn restart_with(mut self, options: Options) -> Server {
        self.stop();
        Server::spawn(self.root.clone(), options)
    }

    /// Kills (SIGKILL) and starts a new server over the same data directory.
    pub fn crash_and_restart(mut self) -> Server {
        self.kill();
        Server::spawn(self.root.clone(), self.options.clone())
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Starts another server over this one's data directory (after [`Server::kill`] or
    /// [`Server::stop`], when a test changed the files in between).
    pub fn start_again(&self) -> Server {
        Server::spawn(self.root.clone(), self.options.clone())
    }
}

impl Endpoint {
    /// A client authenticating with Basic `:token`.
    pub fn client(&self, token: &str) -> Client {
        Client {
            base: self.url.clone(),
            auth: Some(format!("Basic {}", b64(&format!(":{token}")))),
            http: reqwest::Client::new(),
        }
    }

    pub fn admin(&self) -> Client {
        self.client(&self.admin_token.clone())
    }

    /// A client sending no credentials.
    pub fn anonymous(&self) -> Client {
        Client {
            base: self.url.clone(),
            auth: None,
            http: reqwest::Client::new(),
        }
    }

    /// Creates a user (as admin) and returns its API token.
    pub async fn create_user(&self, username: &str) -> String {
        let (status, body) = self
            .admin()
            .post(
                "/v1/users",
                serde_json::json!({"user": {"username": username, "email": format!("{username}@example.com")}}),
            )
            .await;
        assert_eq!(status, 201, "create user: {body}");
        body["token"]["token"].as_str().expect("token").to_string()
    }

    /// Creates an app (as the given client) and returns its JSON.
    pub async fn create_app(&self, client: &Client, name: &str) -> Value {
        let (status, body) = client
            .post("/v1/apps", serde_json::json!({"app": {"name": name}}))
            .await;
        assert_eq!(status, 201, "create app: {body}");
        body["app"].clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unsafe_signal(pid: u32, signal: i32) {
    // SAFETY-free: shell out to kill(1) to avoid unsafe code in tests.
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

pub fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A small JSON-over-HTTP client.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub auth: Option<String>,
    pub http: reqwest::Client,
}

impl Client {
    /// The same client with an explicit Authorization header value.
    pub fn with_auth(&self, header: &str) -> Client {
        Client {
            auth: Some(header.to_string()),
            ..self.clone()
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("Accept", "application/json");
        if let Some(auth) = &self.auth {
            req = req.header("Authorization", auth);
        }
        req
    }

    async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("non-JSON body ({status}): {text}"))
        };
        (status, value)
    }

    /// Any method with a JSON body (PATCH, or a body on GET/DELETE that routes ignore).
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        Client::send(
            self.request(method, path)
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Client::send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Client::send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        Client::send(
            self.request(reqwest::Method::POST, path)
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// POST with a raw body (for malformed JSON tests).
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        Client::send(
            self.request(reqwest::Method::POST, path)
                .header("Content-Type", "application/json")
                .body(body),
        )
        .await
    }

    /// GET returning status, content type and raw text.
    pub async fn get_text(&self, path: &str) -> (u16, String, String) {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, content_type, resp.text().await.expect("body"))
    }
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the deployment reaches a terminal status; returns the deployment JSON.
pub async fn wait_finished(client: &Client, app: &str, id: &str, timeout: Duration) -> Value {
    eventually(timeout, || async {
        let (status, body) = client
            .get(&format!("/v1/apps/{app}/deployments/{id}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let d = body["deployment"].clone();
        let s = d["status"].as_str().unwrap_or("").to_string();
        (!["queued", "building", "pushing", "starting"].contains(&s.as_str())).then_some(d)
    })
    .await
}

/// A push-protocol WebSocket connection (the external pusher side), for tests.
pub mod push {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    pub type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    pub struct Pusher {
        pub socket: Socket,
        pub deployment: Value,
        batch: u64,
    }

    /// Connects and sends `start`; returns the pusher with the `deployment` frame's object.
    pub async fn start(server_url: &str, app: &str, token: &str, git_ref: &str) -> Pusher {
        let mut socket = connect(server_url, app, token).await.expect("push upgrade");
        socket
            .send(Message::Text(
                json!({"type": "start", "git_ref": git_ref})
                    .to_string()
                    .into(),
            ))
            .await
            .expect("send start");
        let frame = next_json(&mut socket).await.expect("deployment frame");
        assert_eq!(frame["type"], "deployment", "{frame}");
        Pusher {
            socket,
            deployment: frame["deployment"].clone(),
            batch: 0,
        }
    }

    /// Opens the push socket; Err carries the HTTP status of a refused upgrade.
    pub async fn connect(server_url: &str, app: &str, token: &str) -> Result<Socket, u16> {
        let ws_url = format!(
            "{}/v1/apps/{app}/push",
            server_url.replacen("http", "ws", 1)
        );
        let mut request = ws_url.into_client_request().expect("request");
        request.headers_mut().insert(
            "Authorization",
            format!("Basic {}", super::b64(&format!(":{token}")))
                .parse()
                .expect("header"),
        );
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(err) => panic!("push connect: {err}"),
        }
    }

    /// The next JSON text frame (None when the socket closed).
    pub async fn next_json(socket: &mut Socket) -> Option<Value> {
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(30), socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Some(serde_json::from_str(&text).expect("json frame"))
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(_))) => continue,
                Err(_) => panic!("no frame within 30 s"),
            }
        }
    }

    impl Pusher {
        pub fn id(&self) -> String {
            self.deployment["id"].as_str().expect("id").to_string()
        }

        /// Sends one batch and waits for its ack; returns last_line.
        pub async fn logs(&mut self, lines: &[&str]) -> u64 {
            self.batch += 1;
            let batch = self.batch;
            self.socket
                .send(Message::Text(
                    json!({"type": "logs", "batch": batch, "lines": lines})
                        .to_string()
                        .into(),
                ))
                .await
                .expect("send logs");
            let frame = next_json(&mut self.socket).await.expect("ack");
            assert_eq!(frame["type"], "ack", "{frame}");
            assert_eq!(frame["batch"], batch);
            frame["last_line"].as_u64().expect("last_line")
        }

        /// Sends a status and returns the server's answer frame.
        pub async fn status(&mut self, status: &str) -> Value {
            self.socket
                .send(Message::Text(
                    json!({"type": "status", "status": status})
                        .to_string()
                        .into(),
                ))
                .await
                .expect("send status");
            next_json(&mut self.socket).await.expect("status answer")
        }

        /// Runs building → pushing → starting → `end`.
        pub async fn finish(&mut self, end: &str) {
            for status in ["pushing", "starting", end] {
                let frame = self.status(status).await;
                assert_eq!(frame, json!({"type": "status", "status": status}));
            }
        }
    }
}
