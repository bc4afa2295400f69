//! Issue 9, network side, against the real binary: slow and idle clients are closed, upgraded
//! sockets never are, the connection caps refuse cleanly while open connections are served,
//! and the process starts, refuses and stops cleanly (bind, data-directory lock, broken stderr).
mod common;
#[path = "common/subscriber.rs"]
mod subscriber;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{push, Options, Server, ADMIN_TOKEN};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short timeouts so the tests see them fire.
const SHORT_TIMEOUTS: &str = "[server]\nheader_read_timeout_secs = 1\nidle_timeout_secs = 1\n";
/// How long a test waits for the server to close a socket before failing (far above every
/// timeout configured here: this bounds a hang, it measures nothing).
const CLOSE_WAIT: Duration = Duration::from_secs(30);

fn server_with(config_toml: &str) -> Server {
    Server::start_with(Options {
        config_toml: config_toml.to_string(),
        ..Options::default()
    })
}

/// Reads until the server closes the socket; returns what it sent. Panics if it stays open.
async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(CLOSE_WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&received).into_owned()
}

/// Sends one keep-alive request on `tcp` and reads its whole response (status line first).
async fn request_on(tcp: &mut TcpStream, path: &str) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Basic {}\r\n\r\n",
        common::b64(&format!(":{ADMIN_TOKEN}"))
    );
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(CLOSE_WAIT, tcp.read(&mut buf))
            .await
            .expect("a response")
            .expect("read");
        assert!(n > 0, "closed before the response ended");
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let l = l.to_ascii_lowercase();
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .expect("content-length");
            if received.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let server = server_with(SHORT_TIMEOUTS);
    let mut slow = TcpStream::connect(&server.addr).await.expect("connect");
    slow.write_all(b"GET /v1/apps HTTP/1.1\r\nHost: test\r\nX-Slow: 1")
        .await
        .expect("send");
    let answer = read_until_closed(&mut slow).await;
    assert!(
        answer.is_empty(),
        "an unfinished head gets no response: {answer}"
    );
    // Everyone else is still served.
    let (status, body) = server.admin().get("/v1/apps").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_between_requests() {
    let server = server_with(SHORT_TIMEOUTS);
    let mut tcp = TcpStream::connect(&server.addr).await.expect("connect");
    let first = request_on(&mut tcp, "/v1/apps").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    // A second request on the same connection is served (keep-alive works)...
    let second = request_on(&mut tcp, "/v1/apps").await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    // ...and then, sending nothing, the connection is closed without another byte.
    assert_eq!(read_until_closed(&mut tcp).await, "");
}

#[tokio::test]
async fn a_stream_socket_silent_for_longer_than_the_idle_timeout_is_not_closed() {
    let server = server_with(SHORT_TIMEOUTS);
    let admin = server.admin();
    let app = server.create_app(&admin, "quiet-stream").await;
    // Like Scalingo's client: the auth frame, then nothing at all.
    let mut ws = subscriber::subscribe(&app, ADMIN_TOKEN, json!({})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut pusher = push::start(&server.url, "quiet-stream", ADMIN_TOKEN, "main").await;
    let id = pusher.id();
    let event = subscriber::next_event(&mut ws).await;
    assert_eq!(event["data"]["deployment"], Value::String(id), "{event}");
    // The push socket, silent as long after its start frame, is still served too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pusher.logs(&["still here"]).await, 1);
}

#[tokio::test]
async fn over_the_connection_cap_a_new_client_is_refused_while_open_ones_are_served() {
    let server = server_with("[server]\nmax_connections = 2\n");
    let mut first = TcpStream::connect(&server.addr).await.expect("connect");
    let mut second = TcpStream::connect(&server.addr).await.expect("connect");
    // Both are accepted and counted (each got an answer).
    assert!(request_on(&mut first, "/v1/apps")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(request_on(&mut second, "/v1/apps")
        .await
        .starts_with("HTTP/1.1 200"));

    let (status, body) = server.admin().get("/v1/apps").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "too many connections; retry later", "{body}");

    // The open connections keep being served.
    assert!(request_on(&mut first, "/v1/apps")
        .await
        .starts_with("HTTP/1.1 200"));
    drop(first);
    drop(second);
    // Once they are gone, new clients are served again.
    common::eventually(CLOSE_WAIT, || async {
        let (status, _) = server.admin().get("/v1/apps").await;
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn over_the_per_address_cap_a_second_connection_from_one_address_is_refused() {
    let server = server_with("[server]\nmax_connections_per_address = 1\n");
    let mut held = TcpStream::connect(&server.addr).await.expect("connect");
    assert!(request_on(&mut held, "/v1/apps")
        .await
        .starts_with("HTTP/1.1 200"));
    let (status, body) = server.admin().get("/v1/apps").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["error"], "too many connections from this address; retry later",
        "{body}"
    );
    assert!(request_on(&mut held, "/v1/apps")
        .await
        .starts_with("HTTP/1.1 200"));
    drop(held);
    common::eventually(CLOSE_WAIT, || async {
        let (status, _) = server.admin().get("/v1/apps").await;
        (status == 200).then_some(())
    })
    .await;
}

/// `deployd serve` with these arguments (stdout piped, stderr as given).
fn serve_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deployd"));
    command
        .arg("serve")
        .args(args)
        .env("DEPLOYD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .env_remove("DEPLOYD_LISTEN")
        .env_remove("DEPLOYD_DATA")
        .env_remove("DEPLOYD_PUBLIC_URL")
        .stdout(Stdio::piped());
    command
}

/// Waits (bounded) for a child to exit; returns its exit code.
fn wait_exit(child: &mut std::process::Child) -> Option<i32> {
    let deadline = std::time::Instant::now() + CLOSE_WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("deployd did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &std::process::Child) {
    Command::new("kill")
        .arg("-15")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
}

#[test]
fn sigterm_stops_the_server_when_stderr_is_a_closed_pipe() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let mut child = serve_command(&["--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The log's reader goes away (a dead `tee` or log shipper).
    drop(child.stderr.take());
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("first line");
    assert!(line.starts_with("deployd listening on "), "{line:?}");
    sigterm(&child);
    assert_eq!(wait_exit(&mut child), Some(0));
}

#[test]
fn a_sigterm_right_after_the_listening_line_no_longer_kills_the_server_ungracefully() {
    // The signal handler used to be installed by a task that could run after the line was
    // printed: a SIGTERM in between took the default action (exit by signal, no clean stop).
    for _ in 0..5 {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        let mut child = serve_command(&["--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("first line");
        assert!(line.starts_with("deployd listening on "), "{line:?}");
        sigterm(&child);
        assert_eq!(wait_exit(&mut child), Some(0), "a graceful stop exits 0");
    }
}

#[test]
fn a_second_server_on_a_held_data_directory_says_which_pid_holds_it() {
    let first = Server::start();
    let pid = std::fs::read_to_string(first.data.join("deployd.pid")).expect("pid file");
    let output = serve_command(&["--listen", "127.0.0.1:0", "--data"])
        .arg(&first.data)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another deployd is running on this data directory")
            && stderr.contains(&format!("(pid {})", pid.trim())),
        "{stderr}"
    );
    // The first one is unharmed.
    let (status, body) = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(first.admin().get("/v1/apps"));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_failed_bind_leaves_no_data_directory_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let output = serve_command(&["--listen", &addr, "--data"])
        .arg(&data)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("binding {addr}")), "{stderr}");
    assert!(!data.exists(), "the data directory was created");
}

#[test]
fn listen_accepts_a_host_name() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut child = serve_command(&["--listen", "localhost:0", "--data"])
        .arg(root.path().join("data"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("first line");
    let listening = line.trim().strip_prefix("deployd listening on http://");
    let addr: std::net::SocketAddr = listening
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(addr.ip().is_loopback(), "{addr}");
    sigterm(&child);
    assert_eq!(wait_exit(&mut child), Some(0));
}
