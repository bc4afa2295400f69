//! The external pushers' WebSocket, `GET /v1/apps/{app}/push` (frames in `api::protocol`).
//!
//! One connection is one pusher session. The connection task reads frames, turns them into the
//! `Session`'s calls (`create`, `queue_append`, `transition`, `set_image_size`, and `lost` when
//! the socket ends early; it never writes through anything else), and answers each: `ack` with the last durable
//! line, `status` when the status changed (also when the writer promoted a queued deployment),
//! `error` for a refused frame (nothing changed). Several log batches may be in flight at once
//! (they are committed in order by the writer, possibly in one group); a status frame waits for
//! the batches before it, so the store order is the pusher's order. If the socket ends before a
//! terminal status, the deployment is ended as a lost session.
//!
//! Control: the session registers in `sessions::Controls`; a cancel is forwarded as a `cancel`
//! frame, and a pusher that has not ended the deployment within `[push] cancel_grace_secs` is
//! ended here. Liveness: a `ping` frame every [`PING_INTERVAL`]; a pusher heard from (any
//! frame) less recently than `[push] idle_timeout_secs` is lost (`Liveness`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};

use super::access::Caller;
use super::protocol::{
    decode_binary_logs, deployment_frame_text, Capabilities, ClientFrame, ParsedFrame, ServerFrame,
    MAX_PUSH_FRAME_BYTES,
};
use super::views::DeploymentView;
use super::{ApiError, AppState};
use crate::lines::Lines;
use crate::model::{App, Driver, Pusher};
use crate::sessions::Session;
use crate::status::Status;
use crate::store::writer::{Appended, WriteError};

/// Log batches a pusher may have in flight before the server stops reading its socket (which
/// pushes back on the pusher through TCP).
pub const MAX_BATCHES_IN_FLIGHT: usize = 64;

/// A pusher must send its `start` frame within this.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Interval between `ping` frames: below the idle timeouts of common proxies (60 s), and six
/// of them fit the default `[push] idle_timeout_secs`.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);

/// When a push session pings and when it gives its pusher up. Pure: the caller passes `now`.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    idle_timeout: Option<Duration>,
    last_heard: Instant,
    next_ping: Instant,
}

impl Liveness {
    /// A session that just heard from its pusher at `now`.
    pub(crate) fn new(now: Instant, idle_timeout: Option<Duration>) -> Self {
        Self {
            idle_timeout,
            last_heard: now,
            next_ping: now + PING_INTERVAL,
        }
    }

    /// The pusher proved it is alive (it sent a frame, or we are the ones not reading).
    pub(crate) fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// When the next `ping` is due.
    pub(crate) fn ping_at(&self) -> Instant {
        self.next_ping
    }

    /// A ping was sent at `now`.
    pub(crate) fn pinged(&mut self, now: Instant) {
        self.next_ping = now + PING_INTERVAL;
    }

    /// When the pusher counts as lost if nothing is heard before; `None` without a timeout.
    pub(crate) fn lost_at(&self) -> Option<Instant> {
        self.idle_timeout.map(|timeout| self.last_heard + timeout)
    }
}

/// `GET /v1/apps/{app}/push`: authenticates (401/404 as JSON before the upgrade), then upgrades.
/// A request that is not a WebSocket upgrade is a JSON 400 (axum's own rejection is plain text,
/// which Scalingo's clients cannot read), after the app check so strangers still get the 404.
pub async fn upgrade(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let (app, _) = caller.app(&state, &app).await?;
    let ws = ws.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "this endpoint is a WebSocket (the push protocol): {}",
            rejection.body_text()
        ))
    })?;
    Ok(ws
        .max_message_size(MAX_PUSH_FRAME_BYTES)
        .max_frame_size(MAX_PUSH_FRAME_BYTES)
        .on_upgrade(move |socket| run(state, caller, app, socket)))
}

/// The next status the watch shows; `None` once the watch closed; never resolves without a watch.
async fn next_status(watch: &mut Option<tokio::sync::watch::Receiver<Status>>) -> Option<Status> {
    match watch {
        Some(watch) => match watch.changed().await {
            Ok(()) => Some(*watch.borrow_and_update()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

type Pending = Pin<Box<dyn Future<Output = (u64, Result<Appended, WriteError>)> + Send>>;

fn text(frame: &ServerFrame) -> Message {
    Message::Text(
        serde_json::to_string(frame)
            .expect("invariant: server frames serialise")
            .into(),
    )
}

fn error_frame(code: &str, error: impl Into<String>, batch: Option<u64>) -> Message {
    text(&ServerFrame::Error {
        code: code.into(),
        error: error.into(),
        batch,
    })
}

/// The push protocol's `code` for a refused frame.
fn write_error_code(err: &WriteError) -> &'static str {
    match err {
        WriteError::Transition(_) => "illegal_transition",
        WriteError::Queued => "queued",
        WriteError::NotFound(_) => "not_found",
        WriteError::Finished { .. } => "finished",
        WriteError::Cancelling { .. } => "cancelling",
        WriteError::Unavailable(_) => "unavailable",
        // Users, apps and collaborators are not written over the push socket.
        WriteError::UsernameTaken(_)
        | WriteError::EmailTaken(_)
        | WriteError::AppNameTaken(_)
        | WriteError::AlreadyCollaborator => "conflict",
    }
}

/// RFC 6455 close codes the push socket ends with (axum names only some of them).
mod close_code {
    pub use axum::extract::ws::close_code::{POLICY, PROTOCOL, SIZE, UNSUPPORTED};
    /// 1007: a text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_string().into(),
    }))
}

/// The close code that fits a frame the socket could not read: 1009 for a message above
/// [`MAX_PUSH_FRAME_BYTES`], 1007 for text that is not UTF-8, 1002 for any other breach of
/// RFC 6455.
fn read_error_close_code(err: &axum::Error) -> u16 {
    use std::error::Error as _;
    match err
        .source()
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
    {
        Some(tungstenite::Error::Capacity(_)) => close_code::SIZE,
        Some(tungstenite::Error::Utf8(_)) => close_code::INVALID_PAYLOAD,
        _ => close_code::PROTOCOL,
    }
}

type Tx = futures_util::stream::SplitSink<WebSocket, Message>;
type Rx = futures_util::stream::SplitStream<WebSocket>;

/// Reads the `start` frame and returns its (checked) `git_ref` and the capabilities it asks
/// for. Anything else gets an error frame and a close with the code that fits; `None` then.
async fn read_start(tx: &mut Tx, rx: &mut Rx) -> Option<(String, Capabilities)> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let (code, error, close_code, reason) = loop {
        let message = match tokio::time::timeout_at(deadline, rx.next()).await {
            // A silent client gets no error frame, only the close saying why.
            Err(_) => {
                let _ = tx.send(close(close_code::POLICY, "no start frame")).await;
                return None;
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Err(err))) => {
                let _ = tx
                    .send(close(read_error_close_code(&err), "unreadable frame"))
                    .await;
                return None;
            }
            Ok(Some(Ok(message))) => message,
        };
        let body = match message {
            Message::Text(body) => body,
            Message::Binary(_) => {
                break (
                    "bad_frame",
                    "binary frames are not supported".to_string(),
                    close_code::UNSUPPORTED,
                    "binary frame",
                )
            }
            // Pings are answered by the socket itself.
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return None,
        };
        match ClientFrame::from_json_with_capabilities(&body) {
            Ok((ClientFrame::Start { git_ref }, capabilities)) => {
                let git_ref = git_ref
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or_else(super::deployments::generated_git_ref);
                match crate::model::check_git_ref(&git_ref) {
                    Ok(()) => return Some((git_ref, capabilities)),
                    Err(message) => {
                        break (
                            "bad_frame",
                            format!("git_ref {message}"),
                            close_code::POLICY,
                            "invalid start frame",
                        )
                    }
                }
            }
            Ok(_) => {
                break (
                    "not_started",
                    "send a start frame first".to_string(),
                    close_code::PROTOCOL,
                    "not started",
                )
            }
            Err(err) => {
                break (
                    "bad_frame",
                    err.to_string(),
                    close_code::PROTOCOL,
                    "unreadable frame",
                )
            }
        }
    };
    let _ = tx.send(error_frame(code, error, None)).await;
    let _ = tx.send(close(close_code, reason)).await;
    None
}

async fn run(state: AppState, caller: Caller, app: App, socket: WebSocket) {
    let _open = crate::metrics::Open::new(&crate::metrics::metrics().push_sessions);
    let (mut tx, mut rx) = socket.split();
    // 1. The start frame. Every capability this server knows is granted.
    let (git_ref, granted) = match read_start(&mut tx, &mut rx).await {
        Some(started) => started,
        None => return,
    };
    let pusher = Pusher {
        id: caller.user.id,
        username: caller.user.username.clone(),
        email: caller.user.email.clone(),
    };
    let created = Session::create(
        state.writer.clone(),
        app.id,
        git_ref,
        pusher,
        Driver::External,
    )
    .await;
    let (session, deployment) = match created {
        Ok(created) => created,
        Err(err) => {
            let _ = tx
                .send(error_frame(write_error_code(&err), err.to_string(), None))
                .await;
            return;
        }
    };
    let view = serde_json::to_value(DeploymentView::new(&deployment, &state.config.public_url))
        .expect("invariant: views serialise");
    if tx
        .send(Message::Text(deployment_frame_text(view, granted).into()))
        .await
        .is_err()
    {
        session.lost("the pusher's connection was lost").await;
        return;
    }
    let mut control = state.executors.controls().register(deployment.id);
    let mut cancel_deadline: Option<Instant> = None;
    let mut cancel_told = false;
    let mut liveness = Liveness::new(Instant::now(), state.config.push.idle_timeout);
    let mut status_watch = state.hub.watch_status(deployment.id);
    let mut told = deployment.status;
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut queued_statuses: VecDeque<Status> = VecDeque::new();

    // 2. The session loop.
    let outcome: Result<Status, String> = loop {
        let can_read = pending.len() < MAX_BATCHES_IN_FLIGHT && queued_statuses.is_empty();
        if !can_read {
            // We are the ones not reading: the pusher is not silent.
            liveness.heard(Instant::now());
        }
        tokio::select! {
            // Writer answers to batches, in order.
            Some((batch, result)) = pending.next(), if !pending.is_empty() => {
                let frame = match result {
                    Ok(appended) => {
                        crate::metrics::metrics().acks.inc();
                        text(&ServerFrame::Ack {
                            batch,
                            last_line: appended.last_line.0,
                            dropped: appended.dropped,
                        })
                    }
                    Err(err) => error_frame(write_error_code(&err), err.to_string(), Some(batch)),
                };
                if tx.send(frame).await.is_err() {
                    break Err("the pusher's connection was lost".into());
                }
            }
            // A status frame waits until the batches before it are committed.
            _ = std::future::ready(()), if pending.is_empty() && !queued_statuses.is_empty() => {
                let to = queued_statuses.pop_front().expect("checked non-empty");
                match session.transition(to).await {
                    Ok(record) => {
                        told = record.status;
                        if tx.send(text(&ServerFrame::Status { status: record.status })).await.is_err() {
                            break Err("the pusher's connection was lost".into());
                        }
                        if record.status.is_terminal() {
                            break Ok(record.status);
                        }
                    }
                    Err(err) => {
                        if tx.send(error_frame(write_error_code(&err), err.to_string(), None)).await.is_err() {
                            break Err("the pusher's connection was lost".into());
                        }
                        if let WriteError::NotFound(_) = err {
                            break Ok(Status::Aborted);
                        }
                    }
                }
            }
            // Status changes made by the writer (promotion out of `queued`, app deleted).
            changed = next_status(&mut status_watch) => {
                match changed {
                    Some(now) if now > told => {
                        told = now;
                        if tx.send(text(&ServerFrame::Status { status: now })).await.is_err() {
                            break Err("the pusher's connection was lost".into());
                        }
                        if now.is_terminal() {
                            break Ok(now);
                        }
                    }
                    Some(_) => {}
                    None => status_watch = None,
                }
            }
            by = control.cancelled(), if !cancel_told => {
                cancel_told = true;
                cancel_deadline = state.config.push.cancel_grace.map(|grace| Instant::now() + grace);
                if tx.send(text(&ServerFrame::Cancel { by })).await.is_err() {
                    break Err("the pusher's connection was lost".into());
                }
            }
            () = crate::lines::sleep_until_opt(cancel_deadline) => {
                let grace = state.config.push.cancel_grace.unwrap_or_default();
                break Err(format!(
                    "The pusher did not end the cancelled deployment within {} s; deployd ended it",
                    grace.as_secs()
                ));
            }
            () = tokio::time::sleep_until(liveness.ping_at()) => {
                liveness.pinged(Instant::now());
                if tx.send(text(&ServerFrame::Ping)).await.is_err() {
                    break Err("the pusher's connection was lost".into());
                }
            }
            () = crate::lines::sleep_until_opt(liveness.lost_at()), if can_read => {
                let timeout = state.config.push.idle_timeout.unwrap_or_default();
                break Err(format!(
                    "The pusher sent nothing and answered no ping for {} s; its session is lost",
                    timeout.as_secs()
                ));
            }
            message = rx.next(), if can_read => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        let _ = tx.send(close(read_error_close_code(&err), "unreadable frame")).await;
                        break Err("the pusher's connection was lost".into());
                    }
                    None => break Err("the pusher's connection was lost".into()),
                };
                liveness.heard(Instant::now());
                let body = match message {
                    Message::Text(body) => body,
                    Message::Close(_) => break Err("the pusher closed the connection before the deployment finished".into()),
                    Message::Binary(bytes) if granted.binary_logs => {
                        match decode_binary_logs(&bytes) {
                            Ok(logs) => {
                                let lines = Lines::of_stream(logs.stream, &logs.lines);
                                queue_logs(&session, &mut pending, logs.batch, lines).await;
                                continue;
                            }
                            Err(err) => {
                                // Nothing of the frame was queued; the socket ends (a broken
                                // encoder cannot be trusted with the next frame either).
                                let _ = tx.send(error_frame("bad_frame", err.to_string(), None)).await;
                                let _ = tx.send(close(err.close_code(), "invalid binary frame")).await;
                                break Err("the pusher sent an invalid binary frame".into());
                            }
                        }
                    }
                    Message::Binary(_) => {
                        if tx.send(error_frame("bad_frame", "binary frames are not supported", None)).await.is_err() {
                            break Err("the pusher's connection was lost".into());
                        }
                        continue;
                    }
                    _ => continue,
                };
                // A `logs` frame's lines go from the frame's text into the packed batch with
                // no allocation per line.
                let frame = match ParsedFrame::from_json(&body) {
                    Ok(ParsedFrame::Logs { batch, stream, lines }) => {
                        queue_logs(&session, &mut pending, batch, Lines::of_stream(stream, &lines)).await;
                        continue;
                    }
                    Ok(ParsedFrame::Other(frame)) => Ok(frame),
                    Err(err) => Err(err),
                };
                match frame {
                    Ok(ClientFrame::Logs { batch, stream, lines }) => {
                        queue_logs(&session, &mut pending, batch, Lines::of_stream(stream, &lines)).await;
                    }
                    Ok(ClientFrame::Status { status }) => queued_statuses.push_back(status),
                    Ok(ClientFrame::ImageSize { bytes }) => {
                        if let Err(err) = session.set_image_size(bytes).await {
                            if tx.send(error_frame(write_error_code(&err), err.to_string(), None)).await.is_err() {
                                break Err("the pusher's connection was lost".into());
                            }
                        }
                    }
                    Ok(ClientFrame::Pong) => {}
                    Ok(ClientFrame::Start { .. }) => {
                        if tx.send(error_frame("already_started", "this connection already started a deployment", None)).await.is_err() {
                            break Err("the pusher's connection was lost".into());
                        }
                    }
                    Err(err) => {
                        if tx.send(error_frame("bad_frame", format!("invalid frame: {err}"), None)).await.is_err() {
                            break Err("the pusher's connection was lost".into());
                        }
                    }
                }
            }
            () = state.shutdown.cancelled() => break Err("deployd shut down during the deployment".into()),
        }
    };
    match outcome {
        Ok(_) => {
            let _ = tx
                .send(Message::Close(Some(CloseFrame {
                    code: axum::extract::ws::close_code::NORMAL,
                    reason: "deployment finished".into(),
                })))
                .await;
        }
        Err(why) => {
            // Let in-flight batches land first: an acknowledged line is never lost, and lines
            // the pusher sent before the break are kept too.
            while pending.next().await.is_some() {}
            let ended = if cancel_told && cancel_deadline.is_none_or(|at| Instant::now() < at) {
                // A cancelled pusher that hung up (or the shutdown) ends it as cancelled.
                session.end_cancelled().await
            } else {
                session.lost(&why).await
            };
            if let Some(status) = ended {
                // Tell a pusher still listening how it ended; its later frames find the socket
                // closed.
                let _ = tx.send(text(&ServerFrame::Status { status })).await;
            }
            let _ = tx.close().await;
        }
    }
}

/// Queues a `logs` batch (from a JSON or a binary frame) to the writer, in frame order; only
/// the reply is awaited later (in `pending`), so batches in flight can never be reordered.
async fn queue_logs(
    session: &Session,
    pending: &mut FuturesOrdered<Pending>,
    batch: u64,
    lines: Lines,
) {
    let arrived = std::time::Instant::now();
    match session.queue_append(lines).await {
        Ok(reply) => pending.push_back(Box::pin(async move {
            let reply = reply.await;
            crate::metrics::metrics()
                .ack_latency
                .observe(arrived.elapsed().as_secs_f64());
            (batch, reply)
        })),
        Err(err) => pending.push_back(Box::pin(async move { (batch, Err(err)) })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_pings_every_interval_and_gives_up_only_after_the_idle_timeout_of_silence() {
        let start = Instant::now();
        let idle = Duration::from_secs(120);
        let mut live = Liveness::new(start, Some(idle));
        assert_eq!(live.ping_at(), start + PING_INTERVAL);
        assert_eq!(live.lost_at(), Some(start + idle));
        live.pinged(start + PING_INTERVAL);
        assert_eq!(live.ping_at(), start + 2 * PING_INTERVAL);
        let pong = start + Duration::from_secs(100);
        live.heard(pong);
        assert_eq!(
            live.lost_at(),
            Some(pong + idle),
            "any frame resets the clock"
        );
        assert_eq!(Liveness::new(start, None).lost_at(), None, "0 turns it off");
    }
}
