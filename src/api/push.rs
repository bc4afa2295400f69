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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};

use super::access::Caller;
use super::protocol::{ClientFrame, ServerFrame, MAX_PUSH_FRAME_BYTES};
use super::views::DeploymentView;
use super::{ApiError, AppState};
use crate::model::{App, Driver, LineNo, NewLine, Pusher};
use crate::sessions::Session;
use crate::status::Status;
use crate::store::writer::WriteError;

/// Log batches a pusher may have in flight before the server stops reading its socket (which
/// pushes back on the pusher through TCP).
pub const MAX_BATCHES_IN_FLIGHT: usize = 64;

/// A pusher must send its `start` frame within this.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

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

type Pending = Pin<Box<dyn Future<Output = (u64, Result<LineNo, WriteError>)> + Send>>;

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
        WriteError::Unavailable(_) => "unavailable",
        // Users, apps and collaborators are not written over the push socket.
        WriteError::UsernameTaken(_)
        | WriteError::EmailTaken(_)
        | WriteError::AppNameTaken(_)
        | WriteError::AlreadyCollaborator => "conflict",
    }
}

async fn run(state: AppState, caller: Caller, app: App, socket: WebSocket) {
    let _open = crate::metrics::Open::new(&crate::metrics::metrics().push_sessions);
    let (mut tx, mut rx) = socket.split();
    // 1. The start frame.
    let git_ref = match tokio::time::timeout(START_TIMEOUT, rx.next()).await {
        Ok(Some(Ok(Message::Text(body)))) => match ClientFrame::from_json(&body) {
            Ok(ClientFrame::Start { git_ref }) => git_ref
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(super::deployments::generated_git_ref),
            Ok(_) => {
                let _ = tx
                    .send(error_frame("not_started", "send a start frame first", None))
                    .await;
                return;
            }
            Err(err) => {
                let _ = tx
                    .send(error_frame("bad_frame", err.to_string(), None))
                    .await;
                return;
            }
        },
        _ => return,
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
        .send(text(&ServerFrame::Deployment { deployment: view }))
        .await
        .is_err()
    {
        session.lost("the pusher's connection was lost").await;
        return;
    }
    let mut status_watch = state.hub.watch_status(deployment.id);
    let mut told = deployment.status;
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut queued_statuses: VecDeque<Status> = VecDeque::new();

    // 2. The session loop.
    let outcome: Result<Status, &'static str> = loop {
        let can_read = pending.len() < MAX_BATCHES_IN_FLIGHT && queued_statuses.is_empty();
        tokio::select! {
            // Writer answers to batches, in order.
            Some((batch, result)) = pending.next(), if !pending.is_empty() => {
                let frame = match result {
                    Ok(last) => {
                        crate::metrics::metrics().acks.inc();
                        text(&ServerFrame::Ack { batch, last_line: last.0 })
                    }
                    Err(err) => error_frame(write_error_code(&err), err.to_string(), Some(batch)),
                };
                if tx.send(frame).await.is_err() {
                    break Err("the pusher's connection was lost");
                }
            }
            // A status frame waits until the batches before it are committed.
            _ = std::future::ready(()), if pending.is_empty() && !queued_statuses.is_empty() => {
                let to = queued_statuses.pop_front().expect("checked non-empty");
                match session.transition(to).await {
                    Ok(record) => {
                        told = record.status;
                        if tx.send(text(&ServerFrame::Status { status: record.status })).await.is_err() {
                            break Err("the pusher's connection was lost");
                        }
                        if record.status.is_terminal() {
                            break Ok(record.status);
                        }
                    }
                    Err(err) => {
                        if tx.send(error_frame(write_error_code(&err), err.to_string(), None)).await.is_err() {
                            break Err("the pusher's connection was lost");
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
                            break Err("the pusher's connection was lost");
                        }
                        if now.is_terminal() {
                            break Ok(now);
                        }
                    }
                    Some(_) => {}
                    None => status_watch = None,
                }
            }
            message = rx.next(), if can_read => {
                let Some(Ok(message)) = message else {
                    break Err("the pusher's connection was lost");
                };
                let body = match message {
                    Message::Text(body) => body,
                    Message::Close(_) => break Err("the pusher closed the connection before the deployment finished"),
                    Message::Binary(_) => {
                        if tx.send(error_frame("bad_frame", "binary frames are not supported", None)).await.is_err() {
                            break Err("the pusher's connection was lost");
                        }
                        continue;
                    }
                    _ => continue,
                };
                match ClientFrame::from_json(&body) {
                    Ok(ClientFrame::Logs { batch, stream, lines }) => {
                        let lines = lines
                            .into_iter()
                            .map(|text| NewLine { stream, text })
                            .collect();
                        // Queued to the writer here, in frame order; only the reply is awaited
                        // later, so batches in flight can never be reordered.
                        let arrived = std::time::Instant::now();
                        match session.queue_append(lines).await {
                            Ok(reply) => pending.push_back(Box::pin(async move {
                                let reply = reply.await;
                                crate::metrics::metrics().ack_latency.observe(arrived.elapsed().as_secs_f64());
                                (batch, reply)
                            })),
                            Err(err) => pending.push_back(Box::pin(async move { (batch, Err(err)) })),
                        }
                    }
                    Ok(ClientFrame::Status { status }) => queued_statuses.push_back(status),
                    Ok(ClientFrame::ImageSize { bytes }) => {
                        if let Err(err) = session.set_image_size(bytes).await {
                            if tx.send(error_frame(write_error_code(&err), err.to_string(), None)).await.is_err() {
                                break Err("the pusher's connection was lost");
                            }
                        }
                    }
                    Ok(ClientFrame::Start { .. }) => {
                        if tx.send(error_frame("already_started", "this connection already started a deployment", None)).await.is_err() {
                            break Err("the pusher's connection was lost");
                        }
                    }
                    Err(err) => {
                        if tx.send(error_frame("bad_frame", format!("invalid frame: {err}"), None)).await.is_err() {
                            break Err("the pusher's connection was lost");
                        }
                    }
                }
            }
            () = state.shutdown.cancelled() => break Err("deployd shut down during the deployment"),
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
            session.lost(why).await;
            let _ = tx.close().await;
        }
    }
}
