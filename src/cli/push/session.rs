//! One `deployd push` connection once the socket is open: runs the stages' commands, streams
//! their output in `logs` batches bounded by an [`AckWindow`], books the server's answers and
//! moves the deployment through its statuses (the flow is described in [`super`]).
//!
//! It does not connect, parse arguments or choose exit codes: `super::push` does.

use std::collections::BTreeSet;
use std::process::Stdio;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::{
    Echo, PushArgs, ABORT_CONFIRM_TIMEOUT, BATCH_INTERVAL, MAX_UNACKED_BATCHES, PIPE_DRAIN_GRACE,
};
use crate::api::protocol::{
    encode_binary_logs, granted_capabilities, start_frame_text, Capabilities, ClientFrame,
    ServerFrame,
};
use crate::lines::{
    cut, read_lines, sleep_until_opt, Batch, BatchPolicy, Batcher, LineSplitter, Overlong,
    LINE_CHANNEL_CAPACITY, MAX_LINE_BYTES,
};
use crate::model::{LogStream, NewLine};
use crate::status::{check_transition, Status};

/// How a pusher batches: one stream per batch (a `logs` frame has one `stream`), due
/// [`BATCH_INTERVAL`] after its first line.
const PUSH_BATCHING: BatchPolicy = BatchPolicy {
    window: BATCH_INTERVAL,
    one_stream: true,
};

/// The `logs` frame carrying `batch`.
pub(super) fn logs_frame(batch: Batch) -> ClientFrame {
    ClientFrame::Logs {
        batch: batch.number,
        stream: batch
            .stream()
            .expect("invariant: a pusher's batches hold one stream (PUSH_BATCHING)"),
        lines: batch.lines.into_iter().map(|line| line.text).collect(),
    }
}

/// The binary `logs` message carrying `batch` (sent once the server granted `binary_logs`).
pub(super) fn binary_logs_frame(batch: &Batch) -> Vec<u8> {
    let stream = batch
        .stream()
        .expect("invariant: a pusher's batches hold one stream (PUSH_BATCHING)");
    encode_binary_logs(
        batch.number,
        stream,
        batch.lines.iter().map(|line| line.text.as_str()),
    )
}

/// What `deployd push` asks for in `start`: binary `logs` frames skip the server's JSON parse.
const ASKED: Capabilities = Capabilities { binary_logs: true };

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
pub(super) enum SessionEnd {
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
    /// A user cancelled the deployment (the server's `cancel` frame): the command was killed.
    Cancelled(String),
}

/// One pusher connection: sends frames, reads and books the server's answers, runs commands.
///
/// Generic over the socket so it does not care whether TLS is in between.
pub(super) struct PushSession<S> {
    ws: S,
    /// The deployment's status as last confirmed by the server.
    status: Status,
    batcher: Batcher,
    acks: AckWindow,
    interrupt: CancellationToken,
    echo: Echo,
    /// The server sent a `ping` not answered yet.
    pong_due: bool,
    /// What the server's `deployment` frame granted (nothing from a server that predates
    /// capabilities: then every batch is a JSON `logs` frame).
    granted: Capabilities,
}

type WsResult = Result<Message, tungstenite::Error>;

impl<S> PushSession<S>
where
    S: Stream<Item = WsResult> + Sink<Message, Error = tungstenite::Error> + Unpin,
{
    pub(super) fn new(ws: S, interrupt: CancellationToken, echo: Echo) -> Self {
        PushSession {
            ws,
            status: Status::Queued,
            batcher: Batcher::new(PUSH_BATCHING),
            acks: AckWindow::default(),
            interrupt,
            echo,
            pong_due: false,
            granted: Capabilities::default(),
        }
    }

    /// The deployment's status as last confirmed by the server.
    pub(super) fn status(&self) -> Status {
        self.status
    }

    /// Every stage, in order. Returns the terminal status the deployment reached.
    pub(super) async fn run(&mut self, args: &PushArgs) -> Result<Status, SessionEnd> {
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
        self.ws
            .send(Message::text(start_frame_text(git_ref, ASKED)))
            .await
            .map_err(|e| SessionEnd::ConnectionLost(e.to_string()))?;
        let deployment = loop {
            match self.recv().await? {
                ServerFrame::Deployment { deployment } => break deployment,
                ServerFrame::Status { .. } | ServerFrame::Ack { .. } | ServerFrame::Ping => {}
                ServerFrame::Error { .. } | ServerFrame::Cancel { .. } => {
                    unreachable_error_frame()?
                }
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
            // Its own process group, so a cancel or Ctrl-C stops everything it started.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                self.log_line(format!("deployd push: cannot run `{shown}`: {e}"))
                    .await?;
                return Ok(false);
            }
        };
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        let (tx, mut rx) = mpsc::channel(LINE_CHANNEL_CAPACITY);
        let splitter = || LineSplitter::new(MAX_LINE_BYTES, Overlong::Split);
        let echo_on = self.echo == Echo::On;
        let mut readers = Vec::with_capacity(2);
        if let Some(stdout) = child.stdout.take() {
            let echo = echo_on.then(tokio::io::stdout);
            let reader = read_lines(stdout, splitter(), LogStream::Stdout, tx.clone(), echo);
            readers.push(tokio::spawn(reader));
        }
        if let Some(stderr) = child.stderr.take() {
            let echo = echo_on.then(tokio::io::stderr);
            let reader = read_lines(stderr, splitter(), LogStream::Stderr, tx, echo);
            readers.push(tokio::spawn(reader));
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
                    if let Err(end) = self.answer_ping().await {
                        break Err(end);
                    }
                    if self.status.is_terminal() {
                        break Err(SessionEnd::Finished(self.status));
                    }
                }
                line = rx.recv(), if lines_open && window_open => match line {
                    Some(line) => {
                        if let Some(batch) = self.batcher.push(line, Instant::now()) {
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
                        while let Ok(line) = rx.try_recv() {
                            if let Some(batch) = self.batcher.push(line, Instant::now()) {
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
            // Best effort: the command may already be gone. Its whole group goes while the
            // leader is unreaped (so the group id cannot have been reused).
            if exited_ok.is_none() {
                if let Some(pgid) = pgid {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                }
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
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
        let line = NewLine::stderr(cut(&line, MAX_LINE_BYTES));
        if let Some(batch) = self.batcher.push(line, Instant::now()) {
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
    pub(super) async fn abort(&mut self) -> Option<Status> {
        self.end_as(Status::Aborted).await
    }

    /// After a cancel: ends the deployment as a cancel ends it (`aborted`, `timeout-error` from
    /// `starting`) and waits a little for the confirmation.
    pub(super) async fn end_cancelled(&mut self) -> Option<Status> {
        let to = self.status.on_session_lost()?;
        self.end_as(to).await
    }

    /// Sends `to` if the state machine allows it and waits a little for the server to confirm
    /// a terminal status.
    async fn end_as(&mut self, to: Status) -> Option<Status> {
        check_transition(self.status, to).ok()?;
        self.send(&ClientFrame::Status { status: to }).await.ok()?;
        let confirmation = async {
            loop {
                let message = self.ws.next().await;
                match self.on_message(message) {
                    Ok(Some(ServerFrame::Status { status })) if status.is_terminal() => {
                        return Some(status)
                    }
                    Ok(_) | Err(SessionEnd::Cancelled(_)) => {}
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
    pub(super) async fn close(&mut self) {
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
        if self.granted.binary_logs {
            self.ws
                .send(Message::binary(binary_logs_frame(&batch)))
                .await
                .map_err(|e| SessionEnd::ConnectionLost(e.to_string()))?;
        } else {
            self.send(&logs_frame(batch)).await?;
        }
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
            let frame = self.on_message(message)?;
            self.answer_ping().await?;
            if let Some(frame) = frame {
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
            ServerFrame::Cancel { by } => return Err(SessionEnd::Cancelled(by.clone())),
            ServerFrame::Ping => {
                self.pong_due = true;
                return Ok(None);
            }
            ServerFrame::Deployment { .. } => self.granted = granted_capabilities(text.as_str()),
        }
        Ok(Some(frame))
    }

    /// Answers the server's `ping`, if one came.
    async fn answer_ping(&mut self) -> Result<(), SessionEnd> {
        if std::mem::take(&mut self.pong_due) {
            self.send(&ClientFrame::Pong).await?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::protocol::MAX_PUSH_FRAME_BYTES;

    #[test]
    fn a_batch_cut_before_exceeding_its_bytes_fits_one_frame() {
        let cut = crate::lines::fullest_cut_batch(PUSH_BATCHING);
        let frame = serde_json::to_string(&logs_frame(cut)).unwrap();
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
}
