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
//! Each command's stdout and stderr are read line by line concurrently, echoed to our own
//! stdout/stderr, and sent in numbered `logs` batches by a [`Batcher`]. An [`AckWindow`] bounds
//! the batches not yet acknowledged (durable) by the server: when it is full we stop reading
//! the command's pipes, so a slow server slows the build down instead of growing our memory.
//! Before any status change every batch must be acknowledged, so a status is never stored
//! ahead of the lines it follows. Each status change waits for the server's `status` frame.
//!
//! Ctrl-C kills the running command and marks the deployment `aborted` (when the state machine
//! allows it: from `starting` it cannot, and the server turns the lost session into
//! `timeout-error`). A lost connection kills the command; the server aborts the deployment.
//! Exit codes are those of [`crate::cli`].
//!
//! `wss://` needs a TLS feature of `tokio-tungstenite`, which the crate does not enable yet.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::{
    basic_auth_header, encode_path_segment, ws_url, EXIT_CONNECTION_LOST, EXIT_DEPLOYMENT_FAILED,
    EXIT_INTERRUPTED, EXIT_SUCCESS, EXIT_USAGE_OR_AUTH,
};
use crate::api::protocol::{ClientFrame, PushStream, ServerFrame, MAX_PUSH_FRAME_BYTES};
use crate::status::{check_transition, Status};

/// Most lines in one `logs` batch: large enough that a chatty build costs few frames (and few
/// server commits), small enough that one batch is a small, quick commit.
pub const MAX_BATCH_LINES: usize = 256;

/// Longest a line waits in a partial batch: short enough that a human watching the stream sees
/// lines "live", long enough to group the bursts a build prints.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// Most raw line bytes in one batch. JSON escaping can grow a byte up to six (`\u0000`), so
/// this keeps every frame under the server's [`MAX_PUSH_FRAME_BYTES`].
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Longest line sent; longer ones are split into pieces of this size (a minified bundle
/// printed on one line must not make us buffer without bound).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Most batches sent and not yet acknowledged. 64 × 256 lines is plenty to keep the server's
/// group commits full while bounding what we (and the server) hold for an unacked pusher.
pub const MAX_UNACKED_BATCHES: usize = 64;

/// Lines read from a command's pipes and not yet batched; the readers wait when it is full.
const LINE_CHANNEL_CAPACITY: usize = 1024;

/// After a command exits, how long we keep reading pipes still held open by something it left
/// running in the background before giving up on them.
const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How long to wait for the WebSocket upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long, after Ctrl-C, to wait for the server to confirm `aborted` before exiting anyway.
const ABORT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of an HTTP error body quoted in the error message.
const MAX_ERROR_BODY_SHOWN: usize = 500;

// A batch that is cut because a new line does not fit must leave room for that line.
const _: () = assert!(MAX_BATCH_LINES > 1 && MAX_LINE_BYTES <= MAX_BATCH_BYTES);
const _: () = assert!(6 * MAX_BATCH_BYTES + 4 * MAX_BATCH_LINES + 1024 < MAX_PUSH_FRAME_BYTES);

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
                    session.status
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
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
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
            eprintln!("deployd push: cannot connect to {url}: {e}");
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

/// One `logs` batch ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Batch number, from 1, increasing by one per batch within a session.
    pub number: u64,
    pub stream: PushStream,
    pub lines: Vec<String>,
}

impl Batch {
    /// The protocol frame carrying this batch.
    pub fn into_frame(self) -> ClientFrame {
        ClientFrame::Logs {
            batch: self.number,
            stream: self.stream,
            lines: self.lines,
        }
    }
}

/// Groups lines into batches. Pure: the caller passes the time and sends what comes out.
///
/// A batch holds lines of one stream only (the frame has one `stream`), at most
/// [`MAX_BATCH_LINES`] lines and [`MAX_BATCH_BYTES`] bytes, and is due [`BATCH_INTERVAL`] after
/// its first line arrived. Line order is kept within each stream, and across streams as far
/// as the lines reached us in that order.
#[derive(Debug)]
pub struct Batcher {
    next_number: u64,
    stream: PushStream,
    lines: Vec<String>,
    bytes: usize,
    first_line_at: Option<Instant>,
}

impl Default for Batcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Batcher {
    /// An empty batcher whose first batch is number 1.
    pub fn new() -> Self {
        Batcher {
            next_number: 1,
            stream: PushStream::Stdout,
            lines: Vec::new(),
            bytes: 0,
            first_line_at: None,
        }
    }

    /// Adds a line (at most [`MAX_LINE_BYTES`]: the reader splits longer ones). Returns a batch
    /// to send now: the pending one when this line cannot join it (other stream, or too many
    /// bytes), or the batch this line just filled. Never more than one.
    pub fn push(&mut self, stream: PushStream, line: String, now: Instant) -> Option<Batch> {
        let cut = if !self.lines.is_empty()
            && (stream != self.stream || self.bytes + line.len() > MAX_BATCH_BYTES)
        {
            self.take()
        } else {
            None
        };
        if self.lines.is_empty() {
            self.stream = stream;
            self.first_line_at = Some(now);
        }
        self.bytes += line.len();
        self.lines.push(line);
        // After a cut the pending batch holds one line, which cannot fill it (MAX_BATCH_LINES > 1).
        cut.or_else(|| {
            if self.lines.len() >= MAX_BATCH_LINES {
                self.take()
            } else {
                None
            }
        })
    }

    /// When the pending batch must be sent, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_line_at.map(|at| at + BATCH_INTERVAL)
    }

    /// The pending batch if its deadline has passed at `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<Batch> {
        match self.deadline() {
            Some(deadline) if deadline <= now => self.take(),
            _ => None,
        }
    }

    /// The pending batch, whatever its age (e.g. when the command ended).
    pub fn take(&mut self) -> Option<Batch> {
        if self.lines.is_empty() {
            return None;
        }
        let batch = Batch {
            number: self.next_number,
            stream: self.stream,
            lines: std::mem::take(&mut self.lines),
        };
        self.next_number += 1;
        self.bytes = 0;
        self.first_line_at = None;
        Some(batch)
    }

    /// Whether no line is pending.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// The batches sent and not yet acknowledged, bounded by [`MAX_UNACKED_BATCHES`].
#[derive(Debug, Default)]
pub struct AckWindow {
    unacked: BTreeSet<u64>,
}

impl AckWindow {
    /// Records that batch `number` was sent.
    pub fn sent(&mut self, number: u64) {
        self.unacked.insert(number);
    }

    /// Records an `ack` for batch `number`. An ack covers every line up to its `last_line`, so
    /// it also settles every earlier batch. Returns whether `number` was outstanding.
    pub fn acked(&mut self, number: u64) -> bool {
        let was_outstanding = self.unacked.contains(&number);
        let later = self.unacked.split_off(&(number.saturating_add(1)));
        self.unacked = later;
        was_outstanding
    }

    /// Whether no more batch may be sent until an ack arrives.
    pub fn is_full(&self) -> bool {
        self.unacked.len() >= MAX_UNACKED_BATCHES
    }

    /// Whether every sent batch was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }
}

/// Why a session stopped before running all its stages.
#[derive(Debug)]
enum SessionEnd {
    /// The deployment reached a terminal status (the server may have ended it on its own).
    Finished(Status),
    /// Ctrl-C.
    Interrupted,
    /// The socket closed or failed.
    ConnectionLost(String),
    /// The server answered with an `error` frame.
    Refused(String),
    /// The server sent something the protocol does not allow here.
    Protocol(String),
}

/// One pusher connection: sends frames, reads and books the server's answers, runs commands.
///
/// Generic over the socket so it does not care whether TLS is in between.
struct PushSession<S> {
    ws: S,
    /// The deployment's status as last confirmed by the server.
    status: Status,
    batcher: Batcher,
    acks: AckWindow,
    interrupt: CancellationToken,
    echo: Echo,
}

type WsResult = Result<Message, tungstenite::Error>;

impl<S> PushSession<S>
where
    S: Stream<Item = WsResult> + Sink<Message, Error = tungstenite::Error> + Unpin,
{
    fn new(ws: S, interrupt: CancellationToken, echo: Echo) -> Self {
        PushSession {
            ws,
            status: Status::Queued,
            batcher: Batcher::new(),
            acks: AckWindow::default(),
            interrupt,
            echo,
        }
    }

    /// Every stage, in order. Returns the terminal status the deployment reached.
    async fn run(&mut self, args: &PushArgs) -> Result<Status, SessionEnd> {
        self.start(args.git_ref.clone()).await?;

        let (program, program_args) = args
            .command
            .split_first()
            .ok_or_else(|| SessionEnd::Protocol("no build command given".into()))?;
        let mut build = Command::new(program);
        build.args(program_args);
        if !self.run_command(build, &args.command.join(" ")).await? {
            return self.finish(Status::BuildError).await;
        }

        self.transition(Status::Pushing).await?;
        if let Some(push_cmd) = &args.push_cmd {
            if !self.run_command(shell(push_cmd), push_cmd).await? {
                return self.finish(Status::Aborted).await;
            }
        }

        self.transition(Status::Starting).await?;
        if let Some(start_cmd) = &args.start_cmd {
            if !self.run_command(shell(start_cmd), start_cmd).await? {
                return self.finish(Status::CrashedError).await;
            }
        }
        self.finish(Status::Success).await
    }

    /// Creates the deployment and waits until it may build.
    async fn start(&mut self, git_ref: Option<String>) -> Result<(), SessionEnd> {
        self.send(&ClientFrame::Start { git_ref }).await?;
        let deployment = loop {
            match self.recv().await? {
                ServerFrame::Deployment { deployment } => break deployment,
                ServerFrame::Status { .. } | ServerFrame::Ack { .. } => {}
                ServerFrame::Error { .. } => unreachable_error_frame()?,
            }
        };
        let id = deployment
            .get("id")
            .and_then(|id| id.as_str())
            .unwrap_or("(no id)")
            .to_owned();
        let status = deployment
            .get("status")
            .and_then(|s| s.as_str())
            .and_then(|s| s.parse::<Status>().ok())
            .ok_or_else(|| {
                SessionEnd::Protocol(format!(
                    "deployment frame without a known status: {deployment}"
                ))
            })?;
        self.status = status;
        eprintln!("-----> Deployment {id} created (status {status})");
        if status == Status::Queued {
            eprintln!(
                "-----> Another deployment of this app is in progress; waiting for it to end"
            );
            while self.status == Status::Queued {
                self.recv().await?;
            }
        }
        if self.status.is_terminal() {
            return Err(SessionEnd::Finished(self.status));
        }
        if self.status != Status::Building {
            return Err(SessionEnd::Protocol(format!(
                "new deployment is {}, expected building",
                self.status
            )));
        }
        Ok(())
    }

    /// Runs one command to its end, streaming its output. Returns whether it succeeded; a
    /// command that cannot be started counts as failed (with a log line saying why).
    async fn run_command(&mut self, mut command: Command, shown: &str) -> Result<bool, SessionEnd> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                self.log_line(format!("deployd push: cannot run `{shown}`: {e}"))
                    .await?;
                return Ok(false);
            }
        };
        let (tx, mut rx) = mpsc::channel(LINE_CHANNEL_CAPACITY);
        let mut readers = Vec::with_capacity(2);
        if let Some(stdout) = child.stdout.take() {
            let echo: Option<Box<dyn AsyncWrite + Send + Unpin>> =
                (self.echo == Echo::On).then(|| Box::new(tokio::io::stdout()) as _);
            readers.push(tokio::spawn(pump_lines(
                stdout,
                PushStream::Stdout,
                tx.clone(),
                echo,
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            let echo: Option<Box<dyn AsyncWrite + Send + Unpin>> =
                (self.echo == Echo::On).then(|| Box::new(tokio::io::stderr()) as _);
            readers.push(tokio::spawn(pump_lines(
                stderr,
                PushStream::Stderr,
                tx,
                echo,
            )));
        }

        let interrupt = self.interrupt.clone();
        let mut exited_ok: Option<bool> = None;
        let mut lines_open = true;
        let mut drain_deadline: Option<Instant> = None;
        let outcome = 'run: loop {
            if let Some(ok) = exited_ok {
                if !lines_open {
                    break Ok(ok);
                }
            }
            let window_open = !self.acks.is_full();
            let flush_at = self.batcher.deadline();
            tokio::select! {
                biased;
                _ = interrupt.cancelled() => break Err(SessionEnd::Interrupted),
                message = self.ws.next() => {
                    if let Err(end) = self.on_message(message) {
                        break Err(end);
                    }
                    if self.status.is_terminal() {
                        break Err(SessionEnd::Finished(self.status));
                    }
                }
                line = rx.recv(), if lines_open && window_open => match line {
                    Some((stream, line)) => {
                        if let Some(batch) = self.batcher.push(stream, line, Instant::now()) {
                            if let Err(end) = self.send_batch(batch).await {
                                break Err(end);
                            }
                        }
                    }
                    None => lines_open = false,
                },
                _ = sleep_until_opt(flush_at), if flush_at.is_some() && window_open => {
                    if let Some(batch) = self.batcher.take_due(Instant::now()) {
                        if let Err(end) = self.send_batch(batch).await {
                            break Err(end);
                        }
                    }
                }
                status = child.wait(), if exited_ok.is_none() => {
                    exited_ok = Some(status.map(|s| s.success()).unwrap_or(false));
                    drain_deadline = Some(Instant::now() + PIPE_DRAIN_GRACE);
                }
                _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() && lines_open => {
                    if self.acks.is_full() {
                        // We are waiting for acks, not for the pipes: give them more time.
                        drain_deadline = Some(Instant::now() + PIPE_DRAIN_GRACE);
                    } else {
                        lines_open = false;
                        rx.close();
                        // Keep what was read already; drop what a leftover process prints.
                        while let Ok((stream, line)) = rx.try_recv() {
                            if let Some(batch) = self.batcher.push(stream, line, Instant::now()) {
                                if let Err(end) = self.send_batch_when_window_open(batch).await {
                                    break 'run Err(end);
                                }
                            }
                        }
                        if let Err(end) = self.log_line(format!(
                            "deployd push: `{shown}` exited but its output stayed open; stopped reading it"
                        )).await {
                            break Err(end);
                        }
                    }
                }
            }
        };
        if outcome.is_err() {
            // Best effort: the command may already be gone.
            let _ = child.start_kill();
        }
        for reader in readers {
            reader.abort();
        }
        outcome
    }

    /// Sends a line of our own (on stderr) about the command, e.g. that it could not start.
    async fn log_line(&mut self, line: String) -> Result<(), SessionEnd> {
        if self.echo == Echo::On {
            eprintln!("{line}");
        }
        let mut line = line;
        truncate_to_char_boundary(&mut line, MAX_LINE_BYTES);
        if let Some(batch) = self.batcher.push(PushStream::Stderr, line, Instant::now()) {
            self.send_batch_when_window_open(batch).await?;
        }
        Ok(())
    }

    /// Moves the deployment to `to` after every line before it is durable, and waits for the
    /// server's confirmation.
    async fn transition(&mut self, to: Status) -> Result<(), SessionEnd> {
        if let Some(batch) = self.batcher.take() {
            self.send_batch_when_window_open(batch).await?;
        }
        while !self.acks.is_empty() {
            self.recv().await?;
        }
        self.send(&ClientFrame::Status { status: to }).await?;
        loop {
            if let ServerFrame::Status { status } = self.recv().await? {
                if status == to {
                    return Ok(());
                }
                if status.is_terminal() {
                    return Err(SessionEnd::Finished(status));
                }
            }
        }
    }

    /// [`Self::transition`] to a terminal status.
    async fn finish(&mut self, to: Status) -> Result<Status, SessionEnd> {
        self.transition(to).await?;
        Ok(to)
    }

    /// After Ctrl-C: marks the deployment `aborted` if it may be, and waits a little for the
    /// confirmation. Returns the status the server confirmed, if any.
    async fn abort(&mut self) -> Option<Status> {
        check_transition(self.status, Status::Aborted).ok()?;
        self.send(&ClientFrame::Status {
            status: Status::Aborted,
        })
        .await
        .ok()?;
        let confirmation = async {
            loop {
                let message = self.ws.next().await;
                match self.on_message(message) {
                    Ok(Some(ServerFrame::Status { status })) if status.is_terminal() => {
                        return Some(status)
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        };
        tokio::time::timeout(ABORT_CONFIRM_TIMEOUT, confirmation)
            .await
            .ok()
            .flatten()
    }

    /// Closes the socket politely; errors do not matter any more.
    async fn close(&mut self) {
        let _ = tokio::time::timeout(ABORT_CONFIRM_TIMEOUT, self.ws.close()).await;
    }

    async fn send(&mut self, frame: &ClientFrame) -> Result<(), SessionEnd> {
        let json = serde_json::to_string(frame)
            .map_err(|e| SessionEnd::Protocol(format!("cannot encode a frame: {e}")))?;
        self.ws
            .send(Message::text(json))
            .await
            .map_err(|e| SessionEnd::ConnectionLost(e.to_string()))
    }

    async fn send_batch(&mut self, batch: Batch) -> Result<(), SessionEnd> {
        let number = batch.number;
        self.send(&batch.into_frame()).await?;
        self.acks.sent(number);
        Ok(())
    }

    /// Sends a batch once the ack window has room, reading acks meanwhile.
    async fn send_batch_when_window_open(&mut self, batch: Batch) -> Result<(), SessionEnd> {
        while self.acks.is_full() {
            self.recv().await?;
        }
        self.send_batch(batch).await
    }

    /// The next server frame, already booked (acks, status); Ctrl-C ends the wait.
    async fn recv(&mut self) -> Result<ServerFrame, SessionEnd> {
        let interrupt = self.interrupt.clone();
        loop {
            let message = tokio::select! {
                biased;
                _ = interrupt.cancelled() => return Err(SessionEnd::Interrupted),
                message = self.ws.next() => message,
            };
            if let Some(frame) = self.on_message(message)? {
                return Ok(frame);
            }
        }
    }

    /// Books one WebSocket message. `Ok(None)` for control frames.
    fn on_message(&mut self, message: Option<WsResult>) -> Result<Option<ServerFrame>, SessionEnd> {
        let text = match message {
            None => {
                return Err(SessionEnd::ConnectionLost(
                    "the server closed the connection".into(),
                ))
            }
            Some(Err(e)) => return Err(SessionEnd::ConnectionLost(e.to_string())),
            Some(Ok(Message::Close(frame))) => {
                let why = frame
                    .map(|f| {
                        format!(
                            "the server closed the connection ({}: {})",
                            f.code, f.reason
                        )
                    })
                    .unwrap_or_else(|| "the server closed the connection".into());
                return Err(SessionEnd::ConnectionLost(why));
            }
            Some(Ok(Message::Text(text))) => text,
            // tungstenite answers pings itself.
            Some(Ok(_)) => return Ok(None),
        };
        let frame: ServerFrame = serde_json::from_str(text.as_str())
            .map_err(|e| SessionEnd::Protocol(format!("unexpected frame {text}: {e}")))?;
        match &frame {
            ServerFrame::Ack { batch, .. } => {
                self.acks.acked(*batch);
            }
            ServerFrame::Status { status } => self.status = *status,
            ServerFrame::Error { code, error, batch } => {
                let batch = batch.map(|b| format!(" (batch {b})")).unwrap_or_default();
                return Err(SessionEnd::Refused(format!("{code}: {error}{batch}")));
            }
            ServerFrame::Deployment { .. } => {}
        }
        Ok(Some(frame))
    }
}

/// `on_message` turns every `error` frame into `Err`, so callers never see one.
fn unreachable_error_frame() -> Result<(), SessionEnd> {
    Err(SessionEnd::Protocol("unexpected error frame".into()))
}

fn shell(command_line: &str) -> Command {
    let mut command = Command::new("sh");
    command.arg("-c").arg(command_line);
    command
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn truncate_to_char_boundary(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Reads `reader` line by line into `lines` (and copies each line to `echo`) until EOF, a read
/// error, or the receiver is gone. Invalid UTF-8 is replaced, not refused: build output is
/// whatever the tools print.
async fn pump_lines<R>(
    reader: R,
    stream: PushStream,
    lines: mpsc::Sender<(PushStream, String)>,
    echo: Option<Box<dyn AsyncWrite + Send + Unpin>>,
) where
    R: AsyncRead + Unpin,
{
    let mut reader = BufReader::new(reader);
    let mut echo = echo.map(tokio::io::BufWriter::new);
    let mut buf = Vec::new();
    while let Ok(true) = read_bounded_line(&mut reader, &mut buf).await {
        if let Some(echo) = echo.as_mut() {
            let _ = echo.write_all(&buf).await;
            let _ = echo.write_all(b"\n").await;
            // Flush when no more output is waiting, so the echo is live but not one write per line.
            if reader.buffer().is_empty() {
                let _ = echo.flush().await;
            }
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        if lines.send((stream, line)).await.is_err() {
            break;
        }
    }
    if let Some(echo) = echo.as_mut() {
        let _ = echo.flush().await;
    }
}

/// Reads one line into `buf` (without its `\n` or `\r\n`), at most [`MAX_LINE_BYTES`]: a longer
/// line comes out in several pieces. Returns `false` at EOF with nothing read.
async fn read_bounded_line<R>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<bool>
where
    R: AsyncBufRead + Unpin,
{
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        let room = MAX_LINE_BYTES - buf.len();
        let window = &available[..available.len().min(room)];
        if let Some(newline) = window.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&window[..newline]);
            reader.consume(newline + 1);
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(true);
        }
        let taken = window.len();
        buf.extend_from_slice(window);
        reader.consume(taken);
        if buf.len() >= MAX_LINE_BYTES {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use clap::Parser;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    use super::*;

    // ---- pure parts -------------------------------------------------------------------------

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn batcher_sends_full_batches_at_max_lines() {
        let now = t0();
        let mut batcher = Batcher::new();
        for i in 0..MAX_BATCH_LINES - 1 {
            assert_eq!(batcher.push(PushStream::Stdout, i.to_string(), now), None);
        }
        let batch = batcher
            .push(PushStream::Stdout, "last".into(), now)
            .unwrap();
        assert_eq!(batch.number, 1);
        assert_eq!(batch.lines.len(), MAX_BATCH_LINES);
        assert_eq!(batch.lines[0], "0");
        assert!(batcher.is_empty());
        assert_eq!(batcher.deadline(), None);
    }

    #[test]
    fn batcher_is_due_after_interval_from_first_line() {
        let now = t0();
        let mut batcher = Batcher::new();
        assert_eq!(batcher.push(PushStream::Stdout, "a".into(), now), None);
        let later = now + BATCH_INTERVAL / 2;
        assert_eq!(batcher.push(PushStream::Stdout, "b".into(), later), None);
        assert_eq!(batcher.deadline(), Some(now + BATCH_INTERVAL));
        assert_eq!(batcher.take_due(later), None);
        let batch = batcher.take_due(now + BATCH_INTERVAL).unwrap();
        assert_eq!(batch.lines, ["a", "b"]);
        assert_eq!(batcher.take_due(now + BATCH_INTERVAL * 10), None);
    }

    #[test]
    fn batcher_cuts_on_stream_change() {
        let now = t0();
        let mut batcher = Batcher::new();
        batcher.push(PushStream::Stdout, "out".into(), now);
        let cut = batcher.push(PushStream::Stderr, "err".into(), now).unwrap();
        assert_eq!((cut.number, cut.stream), (1, PushStream::Stdout));
        assert_eq!(cut.lines, ["out"]);
        let rest = batcher.take().unwrap();
        assert_eq!((rest.number, rest.stream), (2, PushStream::Stderr));
        assert_eq!(rest.lines, ["err"]);
    }

    #[test]
    fn batcher_cuts_before_exceeding_bytes() {
        let now = t0();
        let mut batcher = Batcher::new();
        let line = "x".repeat(MAX_LINE_BYTES);
        let per_batch = MAX_BATCH_BYTES / MAX_LINE_BYTES;
        for _ in 0..per_batch {
            assert_eq!(batcher.push(PushStream::Stdout, line.clone(), now), None);
        }
        let cut = batcher.push(PushStream::Stdout, line.clone(), now).unwrap();
        assert_eq!(cut.lines.len(), per_batch);
        let frame = serde_json::to_string(&cut.into_frame()).unwrap();
        assert!(frame.len() < MAX_PUSH_FRAME_BYTES);
    }

    #[test]
    fn ack_window_bounds_and_settles_earlier_batches() {
        let mut window = AckWindow::default();
        for n in 1..=MAX_UNACKED_BATCHES as u64 {
            assert!(!window.is_full());
            window.sent(n);
        }
        assert!(window.is_full());
        assert!(window.acked(3));
        assert!(!window.is_full());
        assert!(!window.acked(2), "already settled by the ack of 3");
        assert!(window.acked(MAX_UNACKED_BATCHES as u64));
        assert!(window.is_empty());
    }

    #[tokio::test]
    async fn lines_are_split_bounded_and_lossy() {
        let mut input = b"one\r\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend(b"\n\xffbad\nlast-without-newline");
        let mut reader = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while read_bounded_line(&mut reader, &mut buf).await.unwrap() {
            lines.push(String::from_utf8_lossy(&buf).into_owned());
        }
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        assert_eq!(lines[2].len(), MAX_LINE_BYTES);
        assert_eq!(lines[3], "x".repeat(10));
        assert_eq!(lines[4], "\u{fffd}bad");
        assert_eq!(lines[5], "last-without-newline");
        assert_eq!(lines.len(), 6);
    }

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
    }

    #[derive(Default)]
    struct Recorded {
        authorization: Option<String>,
        frames: Vec<ClientFrame>,
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

        fn lines(&self, of: PushStream) -> Vec<String> {
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
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let frame: ClientFrame = serde_json::from_str(text.as_str()).unwrap();
                recorded.lock().unwrap().frames.push(frame.clone());
                let answer = match frame {
                    ClientFrame::Start { .. } => {
                        status = if behaviour.queued {
                            Status::Queued
                        } else {
                            Status::Building
                        };
                        let deployment = serde_json::json!({"id": "d-1", "status": status});
                        send(&mut ws, &ServerFrame::Deployment { deployment }).await;
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
                        ServerFrame::Ack { batch, last_line }
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
                    ClientFrame::ImageSize { .. } => continue,
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
            recorded.lines(PushStream::Stdout),
            ["out1", "out2", "pushed"]
        );
        assert_eq!(recorded.lines(PushStream::Stderr), ["err1", "started"]);
    }

    #[tokio::test]
    async fn failing_build_is_build_error() {
        let (code, recorded) = push_against(ServerBehaviour::default(), |url| {
            args(url, &["sh", "-c", "echo x; exit 3"])
        })
        .await;
        assert_eq!(code, EXIT_DEPLOYMENT_FAILED);
        assert_eq!(recorded.statuses(), [Status::BuildError]);
        assert_eq!(recorded.lines(PushStream::Stdout), ["x"]);
    }

    #[tokio::test]
    async fn missing_program_is_build_error_with_reason() {
        let (code, recorded) = push_against(ServerBehaviour::default(), |url| {
            args(url, &["/nonexistent/deployd-test-program"])
        })
        .await;
        assert_eq!(code, EXIT_DEPLOYMENT_FAILED);
        assert_eq!(recorded.statuses(), [Status::BuildError]);
        let stderr = recorded.lines(PushStream::Stderr);
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
        assert_eq!(recorded.lines(PushStream::Stdout), ["hello"]);
    }

    #[tokio::test]
    async fn many_lines_arrive_in_order_in_bounded_numbered_batches() {
        let (code, recorded) = push_against(ServerBehaviour::default(), |url| {
            args(url, &["seq", "1", "5000"])
        })
        .await;
        assert_eq!(code, EXIT_SUCCESS);
        let expected: Vec<String> = (1..=5000).map(|n| n.to_string()).collect();
        assert_eq!(recorded.lines(PushStream::Stdout), expected);
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
