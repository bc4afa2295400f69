//! `deployd push`: run a build on this machine and report it to deployd as an external pusher.
//!
//! ```text
//! deployd push --url http://deployd:8080 --token $TOKEN --app web --git-ref $REV \
//!     [--push-cmd 'docker push …'] [--start-cmd 'systemctl restart web'] -- make build
//! ```
//!
//! The client opens the push WebSocket (`/v1/apps/{app}/push`, protocol in
//! [`crate::api::protocol`]), creates the deployment, waits while it is `queued`, then runs each
//! stage and streams its output:
//!
//! | stage | command | status on success | status on failure |
//! |---|---|---|---|
//! | build | `COMMAND…` (argv, no shell) | `pushing` | `build-error` |
//! | push | `--push-cmd` (`sh -c`), optional | `starting` | `aborted` |
//! | start | `--start-cmd` (`sh -c`), optional | `success` | `crashed-error` |
//!
//! Each command's stdout and stderr are read concurrently, echoed (byte for byte) to our own
//! stdout/stderr, split into lines of at most [`MAX_LINE_BYTES`] (longer lines are split, not
//! cut: the store keeps lines of that size) and sent in numbered `logs` batches by a
//! `Batcher` (both from `crate::lines`). An `AckWindow` bounds
//! the batches not yet acknowledged (durable) by the server: when it is full we stop reading
//! the command's pipes, so a slow server slows the build down instead of growing our memory.
//! Before any status change every batch must be acknowledged, so a status is never stored
//! ahead of the lines it follows. Each status change waits for the server's `status` frame.
//!
//! Ctrl-C kills the running command and marks the deployment `aborted` (when the state machine
//! allows it: from `starting` it cannot, and the server turns the lost session into
//! `timeout-error`). A lost connection kills the command; the server aborts the deployment.
//! Each command runs in its own process group. A `cancel` frame (a user cancelled the
//! deployment) kills the running command's whole group and ends the deployment `aborted`
//! (`timeout-error` from `starting`); the exit code is then `EXIT_CANCELLED` (4). `ping` frames
//! are answered with `pong`.
//! Exit codes are those of [`crate::cli`].
//!
//! An `https://` server URL is reached over `wss://` (rustls, with the webpki root certificates
//! compiled in: the system's certificate store is not read).
//!
//! `session` runs the connection once it is open; this module parses the arguments, connects
//! and turns how the session ended into an exit code.
//!
//! [`MAX_LINE_BYTES`]: crate::lines::MAX_LINE_BYTES

mod session;

use std::time::Duration;

use clap::Args;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::tls::{describe_ws, ClientTls};
use super::{
    basic_auth_header, encode_path_segment, ws_url, EXIT_CANCELLED, EXIT_CONNECTION_LOST,
    EXIT_DEPLOYMENT_FAILED, EXIT_INTERRUPTED, EXIT_SUCCESS, EXIT_USAGE_OR_AUTH,
};
use crate::status::Status;
use session::{PushSession, SessionEnd};

/// Longest a line waits in a partial batch: short enough that a human watching the stream sees
/// lines "live", long enough to group the bursts a build prints.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// Most batches sent and not yet acknowledged. 64 × 256 lines is plenty to keep the server's
/// group commits full while bounding what we (and the server) hold for an unacked pusher.
pub const MAX_UNACKED_BATCHES: usize = 64;

/// After a command exits, how long we keep reading pipes still held open by something it left
/// running in the background before giving up on them.
const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How long to wait for the WebSocket upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long, after Ctrl-C, to wait for the server to confirm `aborted` before exiting anyway.
const ABORT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of an HTTP error body quoted in the error message.
const MAX_ERROR_BODY_SHOWN: usize = 500;

/// Arguments of `deployd push`.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub target: super::AppTarget,
    /// Git ref (commit) being deployed; the server generates one when absent
    #[arg(long)]
    pub git_ref: Option<String>,
    /// Command (run with `sh -c`) pushing the built image, run after a successful build
    #[arg(long)]
    pub push_cmd: Option<String>,
    /// Command (run with `sh -c`) starting the new version, run after the push
    #[arg(long)]
    pub start_cmd: Option<String>,
    /// The build command and its arguments, run directly (no shell)
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// Runs `deployd push` and returns the process exit code (see [`crate::cli`]).
///
/// Errors only for failures of this process itself (e.g. no signal handler); every failure of
/// the deployment, the server or the connection is an exit code.
pub async fn run_push(args: PushArgs) -> anyhow::Result<i32> {
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
            // Handling SIGINT replaced the default "die"; a second Ctrl-C restores it.
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(EXIT_INTERRUPTED);
            }
        }
    });
    Ok(push(&args, interrupt, Echo::On).await)
}

/// Whether command output is also copied to our own stdout/stderr (off in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Echo {
    On,
    #[cfg_attr(not(test), allow(dead_code))]
    Off,
}

async fn push(args: &PushArgs, interrupt: CancellationToken, echo: Echo) -> i32 {
    let ws = match connect(args).await {
        Ok(ws) => ws,
        Err(code) => return code,
    };
    let mut session = PushSession::new(ws, interrupt, echo);
    let outcome = session.run(args).await;
    let code = match outcome {
        Ok(status) | Err(SessionEnd::Finished(status)) => {
            eprintln!("-----> Deployment ended: {status}");
            if status == Status::Success {
                EXIT_SUCCESS
            } else {
                EXIT_DEPLOYMENT_FAILED
            }
        }
        Err(SessionEnd::Interrupted) => {
            eprintln!("-----> Interrupted");
            match session.abort().await {
                Some(status) => eprintln!("-----> Deployment ended: {status}"),
                None => eprintln!(
                    "-----> Deployment left in {}; the server ends it when we disconnect",
                    session.status()
                ),
            }
            EXIT_INTERRUPTED
        }
        Err(SessionEnd::ConnectionLost(why)) => {
            eprintln!("deployd push: connection to the server lost: {why}");
            return EXIT_CONNECTION_LOST;
        }
        Err(SessionEnd::Refused(why)) => {
            eprintln!("deployd push: the server refused: {why}");
            EXIT_DEPLOYMENT_FAILED
        }
        Err(SessionEnd::Protocol(why)) => {
            eprintln!("deployd push: protocol error: {why}");
            EXIT_DEPLOYMENT_FAILED
        }
        Err(SessionEnd::Cancelled(by)) => {
            eprintln!("-----> Cancelled by {by}; the command was stopped");
            match session.end_cancelled().await {
                Some(status) => eprintln!("-----> Deployment ended: {status}"),
                None => eprintln!("-----> The server ends the deployment"),
            }
            EXIT_CANCELLED
        }
    };
    session.close().await;
    code
}

/// Opens the push WebSocket; on failure prints why and returns the exit code.
async fn connect(
    args: &PushArgs,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    i32,
> {
    let path = format!("/v1/apps/{}/push", encode_path_segment(&args.target.app));
    let url = ws_url(&args.target.url, &path).map_err(|e| {
        eprintln!("deployd push: {e}");
        EXIT_USAGE_OR_AUTH
    })?;
    let mut request = url.as_str().into_client_request().map_err(|e| {
        eprintln!("deployd push: bad URL {url}: {e}");
        EXIT_USAGE_OR_AUTH
    })?;
    let auth = HeaderValue::from_str(&basic_auth_header(&args.target.token)).map_err(|_| {
        eprintln!("deployd push: the token contains characters not allowed in a header");
        EXIT_USAGE_OR_AUTH
    })?;
    request.headers_mut().insert(AUTHORIZATION, auth);
    let tls = ClientTls::load(&args.target.tls).map_err(|err| err.report("deployd push"))?;
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(tls.ws_connector()),
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(error_message_from_body)
                .unwrap_or_default();
            let hint = match status.as_u16() {
                401 => " (check --token / DEPLOYD_TOKEN)",
                404 => " (no such app, or this token may not see it)",
                _ => "",
            };
            eprintln!("deployd push: {url}: HTTP {status}{hint}: {body}");
            Err(EXIT_USAGE_OR_AUTH)
        }
        Ok(Err(e)) => {
            eprintln!(
                "deployd push: cannot connect to {url}: {}",
                describe_ws(&e, &url)
            );
            Err(EXIT_USAGE_OR_AUTH)
        }
        Err(_) => {
            eprintln!("deployd push: cannot connect to {url}: timed out");
            Err(EXIT_USAGE_OR_AUTH)
        }
    }
}

/// The `error` of a JSON error body, or the body itself (shortened) when it is not one.
pub(crate) fn error_message_from_body(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
            return match value.get("resource").and_then(|r| r.as_str()) {
                Some(resource) => format!("{resource} {error}"),
                None => error.to_owned(),
            };
        }
        if let Some(errors) = value.get("errors") {
            return errors.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let mut shown: String = text.chars().take(MAX_ERROR_BODY_SHOWN).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use clap::Parser;
    use futures_util::{Sink, SinkExt, StreamExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::api::protocol::{
        decode_binary_logs, deployment_frame_text, Capabilities, ClientFrame, ServerFrame,
    };
    use crate::lines::MAX_BATCH_LINES;
    use crate::model::LogStream;
    use crate::status::check_transition;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        push: PushArgs,
    }

    #[test]
    fn args_take_trailing_command_with_its_flags() {
        let cli = Cli::try_parse_from([
            "push",
            "--url",
            "http://h",
            "--token",
            "t",
            "--app",
            "a",
            "--git-ref",
            "abc",
            "--",
            "make",
            "-j2",
            "--keep-going",
        ])
        .unwrap();
        assert_eq!(cli.push.command, ["make", "-j2", "--keep-going"]);
        assert_eq!(cli.push.git_ref.as_deref(), Some("abc"));
        assert!(Cli::try_parse_from(["push", "--url", "u", "--token", "t", "--app", "a"]).is_err());
    }

    // ---- against a fake server --------------------------------------------------------------

    #[derive(Clone, Copy, Default)]
    struct ServerBehaviour {
        /// Answer `start` with a queued deployment, then move it to building.
        queued: bool,
        /// Drop the connection right after the `deployment` frame.
        drop_after_start: bool,
        /// Refuse the upgrade with this HTTP status.
        refuse_upgrade: Option<u16>,
        /// Grant `binary_logs` (when asked) and read binary `logs` messages.
        grant_binary: bool,
    }

    #[derive(Default)]
    struct Recorded {
        authorization: Option<String>,
        frames: Vec<ClientFrame>,
        /// How many `logs` batches came as binary messages.
        binary_batches: usize,
        /// The capabilities `start` asked for.
        asked: Capabilities,
    }

    impl Recorded {
        fn statuses(&self) -> Vec<Status> {
            self.frames
                .iter()
                .filter_map(|f| match f {
                    ClientFrame::Status { status } => Some(*status),
                    _ => None,
                })
                .collect()
        }

        fn lines(&self, of: LogStream) -> Vec<String> {
            self.frames
                .iter()
                .filter_map(|f| match f {
                    ClientFrame::Logs { stream, lines, .. } if *stream == of => Some(lines.clone()),
                    _ => None,
                })
                .flatten()
                .collect()
        }
    }

    /// A minimal push endpoint following the protocol: acks every batch, confirms every status,
    /// refuses logs while queued, closes after a terminal status.
    // The handshake callback's error type is tungstenite's, not ours to shrink.
    #[allow(clippy::result_large_err)]
    async fn fake_server(
        behaviour: ServerBehaviour,
    ) -> (String, tokio::task::JoinHandle<Recorded>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let recorded = Arc::new(Mutex::new(Recorded::default()));
            let (tcp, _) = listener.accept().await.unwrap();
            let header_slot = recorded.clone();
            let callback = move |request: &Request, response: Response| {
                header_slot.lock().unwrap().authorization = request
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                assert_eq!(request.uri().path(), "/v1/apps/my%20app/push");
                match behaviour.refuse_upgrade {
                    Some(code) => {
                        let mut refusal =
                            ErrorResponse::new(Some(r#"{"error":"invalid token"}"#.into()));
                        *refusal.status_mut() =
                            tungstenite::http::StatusCode::from_u16(code).unwrap();
                        Err(refusal)
                    }
                    None => Ok(response),
                }
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return Arc::try_unwrap(recorded)
                    .ok()
                    .unwrap()
                    .into_inner()
                    .unwrap();
            };
            let mut status = Status::Queued;
            let mut last_line = 0u64;
            let mut granted = Capabilities::default();
            while let Some(Ok(message)) = ws.next().await {
                let frame = match message {
                    Message::Text(text) => {
                        let (frame, asked) =
                            ClientFrame::from_json_with_capabilities(text.as_str()).unwrap();
                        if matches!(frame, ClientFrame::Start { .. }) {
                            recorded.lock().unwrap().asked = asked;
                            if behaviour.grant_binary {
                                granted = asked;
                            }
                        }
                        frame
                    }
                    Message::Binary(bytes) => {
                        assert!(granted.binary_logs, "a binary frame without the grant");
                        let logs = decode_binary_logs(&bytes).unwrap();
                        recorded.lock().unwrap().binary_batches += 1;
                        ClientFrame::Logs {
                            batch: logs.batch,
                            stream: logs.stream,
                            lines: logs.lines.iter().map(|l| l.to_string()).collect(),
                        }
                    }
                    _ => continue,
                };
                recorded.lock().unwrap().frames.push(frame.clone());
                let answer = match frame {
                    ClientFrame::Start { .. } => {
                        status = if behaviour.queued {
                            Status::Queued
                        } else {
                            Status::Building
                        };
                        let deployment = serde_json::json!({"id": "d-1", "status": status});
                        let text = deployment_frame_text(deployment, granted);
                        let _ = ws.send(Message::text(text)).await;
                        if behaviour.drop_after_start {
                            break;
                        }
                        if behaviour.queued {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            status = Status::Building;
                        }
                        ServerFrame::Status { status }
                    }
                    ClientFrame::Logs { batch, lines, .. } if status != Status::Queued => {
                        last_line += lines.len() as u64;
                        ServerFrame::Ack {
                            batch,
                            last_line,
                            dropped: 0,
                        }
                    }
                    ClientFrame::Logs { batch, .. } => ServerFrame::Error {
                        code: "queued".into(),
                        error: "deployment is queued".into(),
                        batch: Some(batch),
                    },
                    ClientFrame::Status { status: to } => {
                        check_transition(status, to).unwrap();
                        status = to;
                        ServerFrame::Status { status }
                    }
                    ClientFrame::ImageSize { .. } | ClientFrame::Pong => continue,
                };
                send(&mut ws, &answer).await;
                if status.is_terminal() {
                    let _ = ws.close(None).await;
                    break;
                }
            }
            drop(ws);
            Arc::try_unwrap(recorded)
                .ok()
                .unwrap()
                .into_inner()
                .unwrap()
        });
        (url, handle)
    }

    async fn send<W: Sink<Message> + Unpin>(ws: &mut W, frame: &ServerFrame) {
        let _ = ws
            .send(Message::text(serde_json::to_string(frame).unwrap()))
            .await;
    }

    fn args(url: &str, command: &[&str]) -> PushArgs {
        PushArgs {
            target: crate::cli::AppTarget {
                url: url.to_owned(),
                token: "secret".into(),
                app: "my app".into(),
                tls: Default::default(),
            },
            git_ref: Some("abc123".into()),
            push_cmd: None,
            start_cmd: None,
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    async fn push_against(
        behaviour: ServerBehaviour,
        args_for: impl FnOnce(&str) -> PushArgs,
    ) -> (i32, Recorded) {
        let (url, server) = fake_server(behaviour).await;
        let code = push(&args_for(&url), CancellationToken::new(), Echo::Off).await;
        (code, server.await.unwrap())
    }

    #[tokio::test]
    async fn the_pusher_asks_for_binary_frames_and_sends_them_only_when_granted() {
        let command = [
            "sh",
            "-c",
            "printf '%s\\n' 'out \\ \"1\"'; echo err1 >&2; echo out2",
        ];
        for grant_binary in [false, true] {
            let behaviour = ServerBehaviour {
                grant_binary,
                ..ServerBehaviour::default()
            };
            let (code, recorded) = push_against(behaviour, |url| args(url, &command)).await;
            assert_eq!(code, EXIT_SUCCESS);
            assert_eq!(recorded.asked, Capabilities { binary_logs: true });
            let logs = recorded
                .frames
                .iter()
                .filter(|f| matches!(f, ClientFrame::Logs { .. }))
                .count();
            assert!(logs >= 2, "one batch per stream at least");
            let expected_binary = if grant_binary { logs } else { 0 };
            assert_eq!(
                recorded.binary_batches, expected_binary,
                "granted: {grant_binary}"
            );
            assert_eq!(recorded.lines(LogStream::Stdout), ["out \\ \"1\"", "out2"]);
            assert_eq!(recorded.lines(LogStream::Stderr), ["err1"]);
        }
    }

    #[tokio::test]
    async fn successful_deployment_runs_every_stage() {
        let (code, recorded) = push_against(ServerBehaviour::default(), |url| PushArgs {
            push_cmd: Some("echo pushed".into()),
            start_cmd: Some("echo started >&2".into()),
            ..args(url, &["sh", "-c", "echo out1; echo err1 >&2; echo out2"])
        })
        .await;
        assert_eq!(code, EXIT_SUCCESS);
        assert_eq!(
            recorded.authorization.as_deref(),
            Some("Basic OnNlY3JldA==")
        );
        assert_eq!(
            recorded.frames[0],
            ClientFrame::Start {
                git_ref: Some("abc123".into())
            }
        );
        assert_eq!(
            recorded.statuses(),
            [Status::Pushing, Status::Starting, Status::Success]
        );
        assert_eq!(
            recorded.lines(LogStream::Stdout),
            ["out1", "out2", "pushed"]
        );
        assert_eq!(recorded.lines(LogStream::Stderr), ["err1", "started"]);
    }

    #[tokio::test]
    async fn failing_build_is_build_error() {
        let (code, recorded) = push_against(ServerBehaviour::default(), |url| {
            args(url, &["sh", "-c", "echo x; exit 3"])
        })
        .await;
        assert_eq!(code, EXIT_DEPLOYMENT_FAILED);
        assert_eq!(recorded.statuses(), [Status::BuildError]);
        assert_eq!(recorded.lines(LogStream::Stdout), ["x"]);
    }

    #[tokio::test]
    async fn missing_program_is_build_error_with_reason() {
        let (code, recorded) = push_against(ServerBehaviour::default(), |url| {
            args(url, &["/nonexistent/deployd-test-program"])
        })
        .await;
        assert_eq!(code, EXIT_DEPLOYMENT_FAILED);
        assert_eq!(recorded.statuses(), [Status::BuildError]);
        let stderr = recorded.lines(LogStream::Stderr);
        assert!(stderr[0].contains("cannot run"), "{stderr:?}");
    }

    #[tokio::test]
    async fn failing_push_command_is_aborted() {
        let (code, recorded) = push_against(ServerBehaviour::default(), |url| PushArgs {
            push_cmd: Some("exit 1".into()),
            ..args(url, &["true"])
        })
        .await;
        assert_eq!(code, EXIT_DEPLOYMENT_FAILED);
        assert_eq!(recorded.statuses(), [Status::Pushing, Status::Aborted]);
    }

    #[tokio::test]
    async fn failing_start_command_is_crashed_error() {
        let (code, recorded) = push_against(ServerBehaviour::default(), |url| PushArgs {
            start_cmd: Some("exit 1".into()),
            ..args(url, &["true"])
        })
        .await;
        assert_eq!(code, EXIT_DEPLOYMENT_FAILED);
        assert_eq!(
            recorded.statuses(),
            [Status::Pushing, Status::Starting, Status::CrashedError]
        );
    }

    #[tokio::test]
    async fn queued_deployment_waits_for_building_before_logging() {
        let behaviour = ServerBehaviour {
            queued: true,
            ..Default::default()
        };
        let (code, recorded) = push_against(behaviour, |url| args(url, &["echo", "hello"])).await;
        // The fake server answers logs sent while queued with an error frame, which is fatal.
        assert_eq!(code, EXIT_SUCCESS);
        assert_eq!(recorded.lines(LogStream::Stdout), ["hello"]);
    }

    #[tokio::test]
    async fn many_lines_arrive_in_order_in_bounded_numbered_batches() {
        let (code, recorded) = push_against(ServerBehaviour::default(), |url| {
            args(url, &["seq", "1", "5000"])
        })
        .await;
        assert_eq!(code, EXIT_SUCCESS);
        let expected: Vec<String> = (1..=5000).map(|n| n.to_string()).collect();
        assert_eq!(recorded.lines(LogStream::Stdout), expected);
        let numbers: Vec<u64> = recorded
            .frames
            .iter()
            .filter_map(|f| match f {
                ClientFrame::Logs { batch, lines, .. } => {
                    assert!(lines.len() <= MAX_BATCH_LINES);
                    Some(*batch)
                }
                _ => None,
            })
            .collect();
        assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn refused_upgrade_exits_2() {
        let behaviour = ServerBehaviour {
            refuse_upgrade: Some(401),
            ..Default::default()
        };
        let (code, recorded) = push_against(behaviour, |url| args(url, &["true"])).await;
        assert_eq!(code, EXIT_USAGE_OR_AUTH);
        assert!(recorded.frames.is_empty());
    }

    #[tokio::test]
    async fn connection_refused_exits_2() {
        // Bind then drop to get a port nobody listens on.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let code = push(&args(&url, &["true"]), CancellationToken::new(), Echo::Off).await;
        assert_eq!(code, EXIT_USAGE_OR_AUTH);
    }

    #[tokio::test]
    async fn lost_connection_exits_3() {
        let behaviour = ServerBehaviour {
            drop_after_start: true,
            ..Default::default()
        };
        let (code, _) = push_against(behaviour, |url| args(url, &["sleep", "30"])).await;
        assert_eq!(code, EXIT_CONNECTION_LOST);
    }

    #[tokio::test]
    async fn interrupt_kills_the_command_and_aborts() {
        let (url, server) = fake_server(ServerBehaviour::default()).await;
        let interrupt = CancellationToken::new();
        let trigger = interrupt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            trigger.cancel();
        });
        let started = std::time::Instant::now();
        let code = push(&args(&url, &["sleep", "30"]), interrupt, Echo::Off).await;
        assert_eq!(code, EXIT_INTERRUPTED);
        assert!(started.elapsed() < Duration::from_secs(10));
        let recorded = server.await.unwrap();
        assert_eq!(recorded.statuses(), [Status::Aborted]);
    }
}
