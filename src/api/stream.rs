//! Deployment output: the plain-text `/output` (optionally followed live, as text or as
//! Server-Sent Events), and the subscribers' WebSocket at `/apps/{app}`.
//!
//! Both live paths follow the same rule (DESIGN.md, "Hub and the live stream"): subscribe to the
//! app's hub channel FIRST, then read from the store what is already there, then take live
//! events, dropping what was already sent (per deployment: log lines by line number, statuses by
//! their rank, since statuses only move forward). A subscriber that falls behind the channel
//! (`Lagged`) or sees a gap catches up from the store the same way and rejoins live. So no line
//! is lost or repeated, whatever the subscriber's speed, and the wire order is the store order.
//!
//! Memory per subscriber is bounded: the hub's channel and its rendered frames are shared (at
//! most [`MAX_RENDERED_EVENT_BYTES`] of frames per event); a WebSocket subscriber holds at most
//! one store read (≤ [`MAX_READ_BYTES`] of frames, from ≤ [`CATCH_UP_SEGMENTS_PER_READ`]
//! segments) plus the socket's write buffer; a followed output at most
//! [`FOLLOW_CHUNKS_IN_FLIGHT`] chunks of ≤ [`MAX_READ_BYTES`] (plus one line). See
//! the README ("Memory bound").
//!
//! WebSocket protocol (spec + compat.md), server frames, one JSON object per text frame:
//! `{"type":"log","id":D,"data":{"content":L},"seq":N,"at":T}`,
//! `{"type":"status","id":D,"data":{"status":S},"seq":N}`, `{"type":"new","data":{"deployment":D}}`,
//! `{"type":"ping","data":{"ts":U}}`. `seq` and `at` are extras that spec clients ignore.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::close_code;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::stream;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::access::{find_app, Caller};
use super::deployments::find_deployment;
use super::views::rfc3339;
use super::{ApiError, AppState};
use crate::hub::{Event, EventKind, WireFrames};
use crate::model::{AppId, Deployment, DeploymentId, LineNo};
use crate::status::Status;
use crate::store::codec::SegmentView;
use crate::store::{Store, StoreError};

/// While events keep coming, a subscriber writes to its socket at most once per this interval
/// (the first event after a quiet spell goes out at once). Each write and wakeup costs a few
/// microseconds here whatever it carries, so at 1000 one-line events per second and 1000
/// subscribers, writing each event on its own is a million writes per second: more than two
/// cores. Pacing makes it 200 000, for at most this much added latency.
const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// A subscriber socket's read buffer (it grows for a bigger frame, up to
/// [`MAX_SUBSCRIBER_FRAME_BYTES`]): subscribers send one small auth frame.
const SUBSCRIBER_READ_BUFFER_BYTES: usize = 4 * 1024;

/// Segments read per blocking store call while streaming output.
const OUTPUT_SEGMENTS_PER_READ: usize = 64;

/// Segments read per blocking store call when a subscriber replays or catches up (the read also
/// stops at [`MAX_READ_BYTES`] of frames); the next read waits until these frames are handed to
/// the socket.
pub const CATCH_UP_SEGMENTS_PER_READ: usize = 16;

/// A replay or catch-up read stops once it rendered this much (at least one line), and a
/// followed output's chunk once it holds this much: per-subscriber memory stays bounded even
/// for segments of a million tiny lines.
pub const MAX_READ_BYTES: usize = 1024 * 1024;

/// A hub event whose frames would take more than this (a huge segment of tiny lines) is not
/// rendered for everyone: each subscriber reads it from the store in bounded pieces instead. So
/// the hub's cached frames take at most this per event.
pub const MAX_RENDERED_EVENT_BYTES: usize = 2 * 1024 * 1024;

/// Bytes a log frame adds to its line (type, id, seq, time), to estimate rendered sizes.
const LOG_FRAME_OVERHEAD: usize = 140;

/// Largest frame a subscriber may send. Subscribers only send the auth frame, which is tiny;
/// a bigger frame closes the socket with 1009.
pub const MAX_SUBSCRIBER_FRAME_BYTES: usize = 64 * 1024;

/// Newest deployments of the app looked at for the replay after auth. There is at most one
/// running deployment per app (plus the queued ones behind it), so this is plenty.
const REPLAY_SCAN_LIMIT: u64 = 32;

/// Resume entries accepted in one auth frame.
const MAX_RESUME_ENTRIES: usize = 64;

/// Live events written to the socket before one flush: batching writes is what makes fan-out to
/// thousands of sockets cheap, and this bounds the latency a batch adds.
const MAX_EVENTS_PER_FLUSH: usize = 64;

/// Deployments a socket remembers (for deduplication) before it forgets finished ones, oldest
/// first. Events of a finished deployment stop coming, so forgetting it is safe.
const MAX_TRACKED_DEPLOYMENTS: usize = 256;

/// A subscriber whose socket accepts no byte for this long is disconnected (a dead peer, or a
/// client that stopped reading for good). Until then it only costs its bounded buffers.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Chunks a followed output may have produced ahead of the client reading them.
const FOLLOW_CHUNKS_IN_FLIGHT: usize = 4;

/// Close codes sent to subscribers (4000–4999 are the application's range).
pub mod close {
    /// The auth frame's token is invalid, expired or revoked.
    pub const BAD_TOKEN: u16 = 4001;
    /// The app does not exist or the token's user may not see it (one answer for both).
    pub const APP_NOT_FOUND: u16 = 4004;
    /// No auth frame within the auth timeout.
    pub const AUTH_TIMEOUT: u16 = 4008;
    /// The first frame was not an auth frame (not JSON, another type, no token).
    pub const POLICY: u16 = super::close_code::POLICY;
    /// A binary frame before auth.
    pub const UNSUPPORTED: u16 = super::close_code::UNSUPPORTED;
    /// A frame larger than `MAX_SUBSCRIBER_FRAME_BYTES`.
    pub const TOO_BIG: u16 = super::close_code::SIZE;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = super::close_code::AWAY;
    /// The store failed.
    pub const INTERNAL: u16 = super::close_code::ERROR;
}

// ---- plain output and follow ---------------------------------------------------------------

/// `GET /v1/apps/{app}/deployments/{id}/output`: `text/plain` whatever `Accept` says, streamed
/// from the store segment by segment; 404 JSON when there is no output. With `?follow=true`
/// the body stays open until the deployment reaches a terminal status; with
/// `Accept: text/event-stream` it is Server-Sent Events. `?after=N`, `Last-Event-ID: N` or
/// `Range: lines=M-` start after line N (resp. at line M).
pub async fn output(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let request = OutputRequest::parse(query.as_deref(), &headers)?;
    let (app, _) = caller.app(&state, &app).await?;
    let deployment = find_deployment(&state, &app, &id).await?;
    respond_output(state, deployment, request)
}

/// `GET /v1/deployments/{id}/output`: the same, for the `links.output` shape of the spec's
/// example object.
pub async fn output_by_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let request = OutputRequest::parse(query.as_deref(), &headers)?;
    let id: DeploymentId = id.parse().map_err(|_| ApiError::NotFound("deployment"))?;
    let deployment = state
        .read(move |store| store.deployment(id))
        .await?
        .ok_or(ApiError::NotFound("deployment"))?;
    caller
        .app(&state, &deployment.app_id.to_string())
        .await
        .map_err(|_| ApiError::NotFound("deployment"))?;
    respond_output(state, deployment, request)
}

/// What an `/output` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OutputRequest {
    follow: bool,
    sse: bool,
    after: LineNo,
}

impl OutputRequest {
    fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<Self, ApiError> {
        let sse = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
        let mut follow = sse;
        let mut after = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "follow" => {
                    follow = match value {
                        "" | "true" | "1" => true,
                        "false" | "0" => sse,
                        _ => {
                            return Err(ApiError::BadRequest(format!(
                                "follow must be true or false, got {value:?}"
                            )))
                        }
                    }
                }
                "after" => {
                    after = Some(value.parse::<u64>().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "after must be a line number (0 or more), got {value:?}"
                        ))
                    })?)
                }
                _ => {}
            }
        }
        if after.is_none() {
            if let Some(value) = headers.get("last-event-id") {
                let text = value.to_str().unwrap_or("").trim();
                after = Some(text.parse::<u64>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "Last-Event-ID must be a line number, got {text:?}"
                    ))
                })?);
            }
        }
        if after.is_none() {
            if let Some(value) = headers.get(header::RANGE) {
                let text = value.to_str().unwrap_or("").trim();
                let first = text
                    .strip_prefix("lines=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "Range must be lines=N- (from line N on), got {text:?}"
                        ))
                    })?;
                after = Some(first.saturating_sub(1));
            }
        }
        Ok(Self {
            follow,
            sse,
            after: LineNo(after.unwrap_or(0)),
        })
    }
}

fn respond_output(
    state: AppState,
    deployment: Deployment,
    request: OutputRequest,
) -> Result<Response, ApiError> {
    if !request.follow {
        if deployment.last_line == LineNo(0) {
            return Err(ApiError::NotFound("output"));
        }
        let body = Body::from_stream(stored_text(state, deployment.id, request.after));
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(FOLLOW_CHUNKS_IN_FLIGHT);
    let format = if request.sse {
        FollowFormat::Sse
    } else {
        FollowFormat::Text
    };
    tokio::spawn(follow(state, deployment, request.after, format, tx));
    let body = Body::from_stream(stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(Ok::<_, std::io::Error>))
    }));
    let content_type = match format {
        FollowFormat::Sse => "text/event-stream",
        FollowFormat::Text => "text/plain; charset=utf-8",
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowFormat {
    Text,
    Sse,
}

/// Feeds a followed output into `tx` until the deployment ends, the client goes away or the
/// server shuts down. Lines come from the store; hub events only say when to read again, so a
/// slow reader simply reads more per round.
async fn follow(
    state: AppState,
    deployment: Deployment,
    after: LineNo,
    format: FollowFormat,
    tx: mpsc::Sender<Bytes>,
) {
    let id = deployment.id;
    let mut live = state.hub.subscribe(deployment.app_id);
    let mut cursor = after;
    let mut told: Option<Status> = None;
    loop {
        let record = match state.read(move |store| store.deployment(id)).await {
            Ok(Some(record)) => record,
            _ => return,
        };
        while cursor < record.last_line {
            let store = state.store.clone();
            let from = cursor;
            let read = tokio::task::spawn_blocking(move || match format {
                FollowFormat::Text => read_text_chunk(&store, id, from),
                FollowFormat::Sse => read_sse_chunk(&store, id, from),
            })
            .await;
            let Ok(Ok((chunk, last))) = read else {
                return;
            };
            if chunk.is_empty() {
                break;
            }
            cursor = last;
            if !send_chunk(&state, &tx, Bytes::from(chunk)).await {
                return;
            }
        }
        if format == FollowFormat::Sse && told != Some(record.status) {
            told = Some(record.status);
            let event = format!(
                "event: status\ndata: {}\n\n",
                serde_json::json!({"status": record.status.as_str(), "seq": cursor.0})
            );
            if !send_chunk(&state, &tx, Bytes::from(event)).await {
                return;
            }
        }
        if record.status.is_terminal() {
            // No line is appended after a terminal status: everything was sent.
            return;
        }
        // Wait until something happens to this deployment (or we fell behind), then read again.
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) if event.deployment_id == id => break,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
                () = tx.closed() => return,
                () = state.shutdown.cancelled() => return,
            }
        }
    }
}

/// Sends one chunk of a followed output; false when the client or the server went away.
async fn send_chunk(state: &AppState, tx: &mpsc::Sender<Bytes>, chunk: Bytes) -> bool {
    tokio::select! {
        sent = tx.send(chunk) => sent.is_ok(),
        () = state.shutdown.cancelled() => false,
    }
}

/// The stored text of a deployment after line `after`, read in chunks off the executor.
pub fn stored_text(
    state: AppState,
    id: DeploymentId,
    after: LineNo,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    stream::try_unfold(Some(after), move |cursor| {
        let state = state.clone();
        async move {
            let Some(after) = cursor else {
                return Ok(None);
            };
            let store = state.store.clone();
            let (chunk, last) =
                tokio::task::spawn_blocking(move || read_text_chunk(&store, id, after))
                    .await
                    .map_err(std::io::Error::other)?
                    .map_err(std::io::Error::other)?;
            if chunk.is_empty() {
                return Ok(None);
            }
            Ok(Some((Bytes::from(chunk), Some(last))))
        }
    })
}

/// Renders the lines after `after`, from up to [`OUTPUT_SEGMENTS_PER_READ`] segments and until
/// the output holds [`MAX_READ_BYTES`]; returns the output and the last line number rendered.
/// `render(segment, skip, out)` appends the segment's lines from the `skip`-th on and returns
/// how many it rendered (fewer when `out` reached its bound).
fn read_chunk(
    store: &Store,
    id: DeploymentId,
    after: LineNo,
    mut render: impl FnMut(&SegmentView<'_>, LineNo, usize, &mut Vec<u8>) -> u64,
) -> Result<(Vec<u8>, LineNo), StoreError> {
    let mut out = Vec::new();
    let mut last = after;
    for entry in store
        .segments_after(id, after)
        .take(OUTPUT_SEGMENTS_PER_READ)
    {
        let (first, bytes) = entry?;
        let view = SegmentView::parse(&bytes)?;
        let end = first.0 + view.line_count() as u64 - 1;
        if end <= last.0 {
            continue;
        }
        let skip = last.0.saturating_sub(first.0 - 1);
        let rendered = render(&view, first, skip as usize, &mut out);
        last = LineNo(first.0 - 1 + skip + rendered);
        if out.len() >= MAX_READ_BYTES {
            break;
        }
    }
    Ok((out, last))
}

/// The plain text after line `after` (see [`read_chunk`]): a copy of the segments' text.
fn read_text_chunk(
    store: &Store,
    id: DeploymentId,
    after: LineNo,
) -> Result<(Vec<u8>, LineNo), StoreError> {
    read_chunk(store, id, after, |view, _, skip, out| {
        out.extend_from_slice(view.text_from_line(skip));
        (view.line_count() - skip) as u64
    })
}

/// Like [`read_text_chunk`], as Server-Sent Events: one event per line, `id:` = line number.
/// A `\r` inside a line would end an SSE line, so the line is split there into several `data:`
/// fields (which SSE clients join with `\n`).
fn read_sse_chunk(
    store: &Store,
    id: DeploymentId,
    after: LineNo,
) -> Result<(Vec<u8>, LineNo), StoreError> {
    read_chunk(store, id, after, |view, first, skip, out| {
        let mut rendered = 0;
        for (i, (_, line)) in view.lines().enumerate().skip(skip) {
            let number = first.0 + i as u64;
            out.extend_from_slice(format!("id: {number}\n").as_bytes());
            for piece in line.split('\r') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(piece.as_bytes());
                out.push(b'\n');
            }
            out.push(b'\n');
            rendered += 1;
            if out.len() >= MAX_READ_BYTES {
                break;
            }
        }
        rendered
    })
}

// ---- the WebSocket stream: frames ----------------------------------------------------------

/// WebSocket opcodes (RFC 6455, 5.2).
mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Appends one unmasked, unfragmented server frame (RFC 6455, 5.2).
fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    const FIN: u8 = 0x80;
    out.push(FIN | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Builds [`WireFrames`]: text frames rendered into a scratch buffer, then encoded back to back.
#[derive(Default)]
struct FramesBuilder {
    wire: Vec<u8>,
    starts: Vec<usize>,
    scratch: Vec<u8>,
}

impl FramesBuilder {
    fn with_capacity(bytes: usize) -> Self {
        Self {
            wire: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Encodes `scratch` as the next text frame.
    fn push_scratch(&mut self) {
        self.starts.push(self.wire.len());
        encode_frame(&mut self.wire, opcode::TEXT, &self.scratch);
        self.scratch.clear();
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    fn finish(self) -> WireFrames {
        WireFrames::new(Bytes::from(self.wire), self.starts)
    }
}

/// Renders the text frames of lines `skip..` of a segment starting at line `first` into `out`,
/// stopping after `max_lines` lines, or after the line that takes `out`'s size past
/// `max_bytes`; returns how many lines it rendered.
fn render_log_lines(
    out: &mut FramesBuilder,
    deployment: DeploymentId,
    first: LineNo,
    view: &SegmentView,
    skip: usize,
    max_lines: usize,
    max_bytes: usize,
) -> usize {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(view.stored_at_nanos))
        .map(rfc3339)
        .unwrap_or_default();
    let prefix = format!(r#"{{"type":"log","id":"{deployment}","data":{{"content":"#);
    let mut rendered = 0;
    for (i, (_, line)) in view.lines().enumerate().skip(skip) {
        if rendered >= max_lines {
            break;
        }
        out.scratch.extend_from_slice(prefix.as_bytes());
        serde_json::to_writer(&mut out.scratch, line)
            .expect("invariant: writing JSON to a Vec succeeds");
        let seq = first.0 + i as u64;
        out.scratch
            .extend_from_slice(format!(r#"}},"seq":{seq},"at":"{at}"}}"#).as_bytes());
        out.push_scratch();
        rendered += 1;
        if out.wire.len() >= max_bytes {
            break;
        }
    }
    rendered
}

/// The frames of lines `skip..` of a segment starting at line `first`.
#[cfg(test)]
fn log_frames(
    deployment: DeploymentId,
    first: LineNo,
    view: &SegmentView,
    skip: usize,
) -> WireFrames {
    let mut out = FramesBuilder::default();
    render_log_lines(
        &mut out,
        deployment,
        first,
        view,
        skip,
        usize::MAX,
        usize::MAX,
    );
    out.finish()
}

/// One text frame, encoded.
fn text_frame(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 4);
    encode_frame(&mut out, opcode::TEXT, text.as_bytes());
    out
}

fn status_text(deployment: DeploymentId, status: Status, seq: LineNo) -> String {
    format!(
        r#"{{"type":"status","id":"{deployment}","data":{{"status":"{}"}},"seq":{}}}"#,
        status.as_str(),
        seq.0
    )
}

fn new_text(deployment: DeploymentId) -> String {
    format!(r#"{{"type":"new","data":{{"deployment":"{deployment}"}}}}"#)
}

fn ping_frame() -> Vec<u8> {
    text_frame(&format!(
        r#"{{"type":"ping","data":{{"ts":{}}}}}"#,
        OffsetDateTime::now_utc().unix_timestamp()
    ))
}

/// A single text frame as [`WireFrames`].
fn single_frame(text: &str) -> WireFrames {
    WireFrames::new(Bytes::from(text_frame(text)), vec![0])
}

/// The frames of a hub event, encoded once for every subscriber.
fn render_event(event: &Event) -> WireFrames {
    match &event.kind {
        EventKind::New => single_frame(&new_text(event.deployment_id)),
        EventKind::Status { status, seq } => {
            single_frame(&status_text(event.deployment_id, *status, *seq))
        }
        EventKind::Logs { first, segment } => match SegmentView::parse(segment) {
            // Too big to cache for everyone: subscribers read it from the store (see on_event).
            Ok(view)
                if view.text.len() + view.line_count() * LOG_FRAME_OVERHEAD
                    > MAX_RENDERED_EVENT_BYTES =>
            {
                WireFrames::default()
            }
            Ok(view) => {
                let estimate = view.text.len() + view.line_count() * LOG_FRAME_OVERHEAD;
                let mut out = FramesBuilder::with_capacity(estimate);
                render_log_lines(
                    &mut out,
                    event.deployment_id,
                    *first,
                    &view,
                    0,
                    usize::MAX,
                    usize::MAX,
                );
                out.finish()
            }
            Err(err) => {
                tracing::error!(error = %err, deployment = %event.deployment_id, "unreadable segment in a hub event");
                WireFrames::default()
            }
        },
    }
}

/// Frames of the stored lines after `after`, up to [`CATCH_UP_SEGMENTS_PER_READ`] segments, and
/// the last line number included (`after` when there is none).
fn read_log_frames(
    store: &Store,
    id: DeploymentId,
    after: LineNo,
    until: LineNo,
) -> Result<(WireFrames, LineNo), StoreError> {
    let mut out = FramesBuilder::default();
    let mut last = after;
    for entry in store
        .segments_after(id, after)
        .take(CATCH_UP_SEGMENTS_PER_READ)
    {
        let (first, bytes) = entry?;
        if first > until {
            break;
        }
        let view = SegmentView::parse(&bytes)?;
        let end = first.0 + view.line_count() as u64 - 1;
        if end <= last.0 {
            continue;
        }
        let skip = last.0.saturating_sub(first.0 - 1) as usize;
        let wanted = (end.min(until.0) - last.0) as usize;
        let rendered = render_log_lines(&mut out, id, first, &view, skip, wanted, MAX_READ_BYTES);
        last = LineNo(last.0 + rendered as u64);
        if out.wire.len() >= MAX_READ_BYTES || last >= until {
            break;
        }
    }
    debug_assert_eq!(out.len() as u64, last.0 - after.0);
    Ok((out.finish(), last))
}

// ---- the WebSocket stream: connection ------------------------------------------------------

/// `GET /apps/{app}` (the URL of `links.deployments_stream`): the live deployments stream. No
/// credentials on the upgrade (compat.md); the first frame authenticates. Query parameters
/// `deployment=D&after=N` resume deployment D after line N.
///
/// The handshake and the framing are done here rather than by tungstenite: live frames are
/// encoded once per event for every subscriber (see [`WireFrames`]) and a subscriber copies
/// them into its write buffer, one socket write per flush. Per-subscriber framing and the
/// split sink's lock were most of the server's CPU with 1000 subscribers.
pub async fn upgrade(
    State(state): State<AppState>,
    Path(app): Path<String>,
    RawQuery(query): RawQuery,
    mut request: Request,
) -> Result<Response, ApiError> {
    let resume = parse_resume_query(query.as_deref())?;
    let not_websocket = |why: &str| {
        ApiError::BadRequest(format!("this is the deployments WebSocket stream: {why}"))
    };
    let headers = request.headers();
    if request.method() != Method::GET {
        return Err(not_websocket("the upgrade must be a GET"));
    }
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(not_websocket("the Connection header must contain upgrade"));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err(not_websocket("the Upgrade header must be websocket"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(not_websocket("Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(not_websocket("Sec-WebSocket-Key is missing"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Err(not_websocket("this connection cannot be upgraded"));
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let conn = Conn::new(TokioIo::new(upgraded));
                run_socket(state, app, resume, conn).await;
            }
            Err(err) => tracing::debug!(error = %err, "stream upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .map_err(|err| ApiError::Internal(err.to_string()))
}

/// A message from a subscriber (control frames answered by [`Conn`] are not reported).
#[derive(Debug, PartialEq)]
enum ClientMessage {
    Text(String),
    Binary,
    /// A ping; its pong is queued (to be written by the caller).
    Ping,
    /// The client closed; its close frame was answered.
    Close,
}

/// Why reading a subscriber's frames stopped.
#[derive(Debug, PartialEq)]
enum ReadError {
    /// A frame or message larger than [`MAX_SUBSCRIBER_FRAME_BYTES`].
    TooBig,
    /// Not WebSocket (unmasked or malformed frame, bad UTF-8), or the socket failed.
    Broken,
}

/// A subscriber's upgraded socket: reads its (masked) frames, buffers encoded server frames.
struct Conn<IO> {
    io: IO,
    input: BytesMut,
    /// A text message being reassembled from fragments.
    fragments: Option<Vec<u8>>,
    /// Encoded frames not written yet; `out[written..]` is what is left.
    out: Vec<u8>,
    written: usize,
}

/// Bytes of frames a subscriber buffers before writing them out even within a flush interval.
const WRITE_BUFFER_BYTES: usize = 128 * 1024;

impl<IO> Conn<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn new(io: IO) -> Self {
        Self {
            io,
            input: BytesMut::with_capacity(SUBSCRIBER_READ_BUFFER_BYTES),
            fragments: None,
            out: Vec::with_capacity(SUBSCRIBER_READ_BUFFER_BYTES),
            written: 0,
        }
    }

    /// The next message; `Ok(None)` when the socket ended. Cancel-safe: a partly read frame
    /// stays in the input buffer.
    async fn next_message(&mut self) -> Result<Option<ClientMessage>, ReadError> {
        loop {
            if let Some(message) = self.parse()? {
                return Ok(Some(message));
            }
            if self.input.capacity() - self.input.len() < SUBSCRIBER_READ_BUFFER_BYTES / 4 {
                self.input.reserve(SUBSCRIBER_READ_BUFFER_BYTES);
            }
            match self.io.read_buf(&mut self.input).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Takes complete frames off the input buffer until one makes a message.
    fn parse(&mut self) -> Result<Option<ClientMessage>, ReadError> {
        loop {
            let Some(frame) = parse_client_frame(&mut self.input)? else {
                return Ok(None);
            };
            match frame.opcode {
                opcode::PING => {
                    encode_frame(&mut self.out, opcode::PONG, &frame.payload);
                    return Ok(Some(ClientMessage::Ping));
                }
                opcode::PONG => {}
                opcode::CLOSE => {
                    // Echo the code (RFC 6455, 5.5.1); the caller ends the stream.
                    let code = frame.payload.get(..2).unwrap_or_default();
                    encode_frame(&mut self.out, opcode::CLOSE, code);
                    return Ok(Some(ClientMessage::Close));
                }
                opcode::TEXT | opcode::BINARY if self.fragments.is_some() => {
                    return Err(ReadError::Broken)
                }
                opcode::BINARY if frame.fin => return Ok(Some(ClientMessage::Binary)),
                opcode::TEXT if frame.fin => return text_message(frame.payload).map(Some),
                opcode::TEXT | opcode::BINARY => {
                    // A fragmented binary message is reported as binary once complete; its
                    // bytes are kept like text's, within the same size limit.
                    let mut first = frame.payload;
                    first.insert(0, frame.opcode);
                    self.fragments = Some(first);
                }
                opcode::CONTINUATION => {
                    let Some(buffer) = self.fragments.as_mut() else {
                        return Err(ReadError::Broken);
                    };
                    if buffer.len() - 1 + frame.payload.len() > MAX_SUBSCRIBER_FRAME_BYTES {
                        return Err(ReadError::TooBig);
                    }
                    buffer.extend_from_slice(&frame.payload);
                    if frame.fin {
                        let mut message = self.fragments.take().unwrap_or_default();
                        let kind = message.remove(0);
                        if kind == opcode::BINARY {
                            return Ok(Some(ClientMessage::Binary));
                        }
                        return text_message(message).map(Some);
                    }
                }
                _ => return Err(ReadError::Broken),
            }
        }
    }

    /// Queues encoded frames.
    fn queue(&mut self, frames: &[u8]) {
        self.out.extend_from_slice(frames);
    }

    fn buffered(&self) -> usize {
        self.out.len() - self.written
    }

    /// Writes everything queued. Cancel-safe: what was written is remembered.
    async fn write_out(&mut self) -> std::io::Result<()> {
        while self.written < self.out.len() {
            let n = self.io.write(&self.out[self.written..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        self.io.flush().await
    }
}

fn text_message(payload: Vec<u8>) -> Result<ClientMessage, ReadError> {
    String::from_utf8(payload)
        .map(ClientMessage::Text)
        .map_err(|_| ReadError::Broken)
}

/// One client frame, unmasked.
struct ClientFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Takes one complete client frame off `input` (`None` until one is complete). Client frames
/// must be masked (RFC 6455, 5.1); a frame over [`MAX_SUBSCRIBER_FRAME_BYTES`] is refused as
/// soon as its header arrives.
fn parse_client_frame(input: &mut BytesMut) -> Result<Option<ClientFrame>, ReadError> {
    let [b0, b1, ..] = input[..] else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
        // Reserved bits (no extension was negotiated), or an unmasked frame.
        return Err(ReadError::Broken);
    }
    let (len, header) = match b1 & 0x7F {
        126 => match input.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
            None => return Ok(None),
        },
        127 => match input.get(2..10) {
            Some(bytes) => {
                let mut be = [0; 8];
                be.copy_from_slice(bytes);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        len => (u64::from(len), 2),
    };
    if len > MAX_SUBSCRIBER_FRAME_BYTES as u64 {
        return Err(ReadError::TooBig);
    }
    let opcode = b0 & 0x0F;
    if opcode >= opcode::CLOSE && (len > 125 || b0 & 0x80 == 0) {
        // Control frames are short and never fragmented (RFC 6455, 5.5).
        return Err(ReadError::Broken);
    }
    let len = len as usize;
    let Some(mask) = input.get(header..header + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    if input.len() < header + 4 + len {
        return Ok(None);
    }
    let frame = input.split_to(header + 4 + len);
    let payload = frame[header + 4..]
        .iter()
        .enumerate()
        .map(|(i, byte)| byte ^ mask[i % 4])
        .collect();
    Ok(Some(ClientFrame {
        fin: b0 & 0x80 != 0,
        opcode,
        payload,
    }))
}

/// Resume points: deployment id → last line the client has.
type Resume = BTreeMap<DeploymentId, LineNo>;

fn parse_resume_query(query: Option<&str>) -> Result<Resume, ApiError> {
    let mut deployment = None;
    let mut after = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "deployment" => {
                deployment = Some(value.parse::<DeploymentId>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "deployment must be a deployment id, got {value:?}"
                    ))
                })?)
            }
            "after" => {
                after = Some(value.parse::<u64>().map_err(|_| {
                    ApiError::BadRequest(format!("after must be a line number, got {value:?}"))
                })?)
            }
            _ => {}
        }
    }
    let mut resume = Resume::new();
    match (deployment, after) {
        (Some(id), after) => {
            resume.insert(id, LineNo(after.unwrap_or(0)));
        }
        (None, Some(_)) => {
            return Err(ApiError::BadRequest(
                "after needs deployment=<id> (the deployment to resume)".into(),
            ))
        }
        (None, None) => {}
    }
    Ok(resume)
}

/// Why a subscriber's stream ended.
#[derive(Debug)]
enum End {
    /// The client closed or the connection broke.
    ClientGone,
    /// The server is shutting down.
    Shutdown,
    /// The socket accepted nothing for [`WRITE_STALL_TIMEOUT`].
    Stalled,
    /// A store read failed.
    Store(String),
    /// The client must be closed with this code and reason.
    Refused(u16, &'static str),
}

impl From<ApiError> for End {
    fn from(err: ApiError) -> Self {
        End::Store(err.to_string())
    }
}

async fn run_socket<IO>(state: AppState, app: String, resume: Resume, mut conn: Conn<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let outcome = async {
        let (app_id, resume) = authenticate(&state, &app, resume, &mut conn).await?;
        let live = state.hub.subscribe(app_id);
        let mut subscriber = Subscriber::new(state.clone(), app_id, &mut conn);
        subscriber.run(live, resume).await
    }
    .await;
    let close = match outcome {
        Ok(()) | Err(End::ClientGone) | Err(End::Stalled) => None,
        Err(End::Shutdown) => Some((close::GOING_AWAY, "deployd is shutting down")),
        Err(End::Refused(code, reason)) => Some((code, reason)),
        Err(End::Store(err)) => {
            tracing::error!(error = %err, app, "deployments stream ended by a store error");
            Some((close::INTERNAL, "internal error"))
        }
    };
    if let Some((code, reason)) = close {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        let mut frame = Vec::with_capacity(payload.len() + 2);
        encode_frame(&mut frame, opcode::CLOSE, &payload);
        conn.queue(&frame);
    }
    // Best effort, bounded: what is queued (a pong, the close reply, a close frame) goes out
    // unless the peer is gone or not reading.
    if conn.buffered() > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.write_out()).await;
    }
}

/// Waits for the auth frame; returns the app and the resume points (query ∪ auth frame).
async fn authenticate<IO>(
    state: &AppState,
    app: &str,
    mut resume: Resume,
    conn: &mut Conn<IO>,
) -> Result<(AppId, Resume), End>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + state.config.stream.auth_timeout;
    let text = loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, conn.next_message()) => next,
            () = state.shutdown.cancelled() => return Err(End::Shutdown),
        };
        match next {
            Err(_) => {
                return Err(End::Refused(
                    close::AUTH_TIMEOUT,
                    "no auth frame received in time",
                ))
            }
            Ok(Ok(None)) | Ok(Ok(Some(ClientMessage::Close))) => return Err(End::ClientGone),
            Ok(Err(err)) => return Err(read_error(err)),
            Ok(Ok(Some(ClientMessage::Text(text)))) => break text,
            Ok(Ok(Some(ClientMessage::Ping))) => {
                match tokio::time::timeout_at(deadline, conn.write_out()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(End::ClientGone),
                    Err(_) => {
                        return Err(End::Refused(
                            close::AUTH_TIMEOUT,
                            "no auth frame received in time",
                        ))
                    }
                }
            }
            Ok(Ok(Some(ClientMessage::Binary))) => {
                return Err(End::Refused(
                    close::UNSUPPORTED,
                    "binary frames are not supported; send a JSON auth frame",
                ))
            }
        }
    };
    let frame = AuthFrame::parse(&text).ok_or(End::Refused(
        close::POLICY,
        r#"the first frame must be {"type":"auth","data":{"token":"..."}}"#,
    ))?;
    for (id, after) in frame.resume {
        resume.insert(id, after);
    }
    let caller = super::access::authenticate_token(state, &frame.token)
        .await
        .map_err(|err| match err {
            ApiError::Unauthorized(_) => End::Refused(close::BAD_TOKEN, "invalid token"),
            other => End::from(other),
        })?;
    let user = caller.user;
    let name = app.to_owned();
    let found = state
        .read(move |store| find_app(store, &user, &name))
        .await?;
    let Some((app, _)) = found else {
        return Err(End::Refused(close::APP_NOT_FOUND, "app not found"));
    };
    Ok((app.id, resume))
}

/// Maps a read error: a too-big frame gets 1009, anything else means the client is gone.
fn read_error(err: ReadError) -> End {
    match err {
        ReadError::TooBig => End::Refused(close::TOO_BIG, "frame too large"),
        ReadError::Broken => End::ClientGone,
    }
}

/// A parsed auth frame.
#[derive(Debug, PartialEq)]
struct AuthFrame {
    token: String,
    resume: Resume,
}

impl AuthFrame {
    /// `{"type":"auth","data":{"token":"…","resume":{"<deployment id>":N,…}}}`; also
    /// `"deployment":"<id>","after":N` in `data` for one deployment. Invalid or too many resume
    /// entries make the whole frame invalid (`None`), like a missing token.
    fn parse(text: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(text).ok()?;
        if value.get("type")?.as_str()? != "auth" {
            return None;
        }
        let data = value.get("data")?;
        let token = data.get("token")?.as_str()?.to_owned();
        let mut resume = Resume::new();
        if let Some(map) = data.get("resume") {
            let map = map.as_object()?;
            if map.len() > MAX_RESUME_ENTRIES {
                return None;
            }
            for (id, after) in map {
                resume.insert(id.parse().ok()?, LineNo(after.as_u64()?));
            }
        }
        if let Some(id) = data.get("deployment") {
            let after = match data.get("after") {
                Some(after) => after.as_u64()?,
                None => 0,
            };
            resume.insert(id.as_str()?.parse().ok()?, LineNo(after));
        }
        Some(Self { token, resume })
    }
}

/// What a socket already sent of one deployment.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    line: LineNo,
    /// The last status sent (statuses only increase, see `Status`).
    status: Option<Status>,
    finished: bool,
}

/// One authenticated subscriber: writes replay, catch-up and live frames to its sink.
struct Subscriber<'a, IO> {
    state: AppState,
    app: AppId,
    conn: &'a mut Conn<IO>,
    sent: BTreeMap<DeploymentId, Sent>,
}

impl<'a, IO> Subscriber<'a, IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn new(state: AppState, app: AppId, conn: &'a mut Conn<IO>) -> Self {
        Self {
            state,
            app,
            conn,
            sent: BTreeMap::new(),
        }
    }

    async fn run(
        &mut self,
        mut live: broadcast::Receiver<Arc<Event>>,
        resume: Resume,
    ) -> Result<(), End> {
        // Resume points first, so the replay sends only what follows them.
        for (id, after) in &resume {
            self.sent.insert(
                *id,
                Sent {
                    line: *after,
                    ..Sent::default()
                },
            );
        }
        self.catch_up_app(&resume, false).await?;
        self.flush().await?;
        let period = self.state.config.stream.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.state.shutdown.clone();
        // Made once: each new `cancelled()` registered with (and left) the token's shared lock.
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        // While events keep coming, the socket is written at most once per
        // FLUSH_INTERVAL: between writes the task sleeps instead of waking for every event, then
        // takes everything that gathered. The first event after a quiet spell goes out at once.
        // One timer, reset at each write (a new one per wait cost a registration each time).
        let mut paced = false;
        let pace = tokio::time::sleep(FLUSH_INTERVAL);
        tokio::pin!(pace);
        loop {
            tokio::select! {
                received = live.recv(), if !paced => {
                    self.on_received(received).await?;
                    self.drain(&mut live).await?;
                    self.flush().await?;
                    pace.as_mut().reset(tokio::time::Instant::now() + FLUSH_INTERVAL);
                    paced = true;
                }
                () = pace.as_mut(), if paced => {
                    if self.drain(&mut live).await? == 0 {
                        paced = false;
                    } else {
                        self.flush().await?;
                        pace.as_mut().reset(tokio::time::Instant::now() + FLUSH_INTERVAL);
                    }
                }
                _ = ping.tick() => {
                    self.feed(&ping_frame()).await?;
                    self.flush().await?;
                }
                message = self.conn.next_message() => match message {
                    // After auth, client frames (a second auth, unknown types, binary) are
                    // ignored; only a close or a broken connection ends the stream.
                    Ok(Some(ClientMessage::Close)) | Ok(None) => return Err(End::ClientGone),
                    Ok(Some(ClientMessage::Ping)) => self.flush().await?,
                    Ok(Some(_)) => {}
                    Err(err) => return Err(read_error(err)),
                },
                () = &mut shutdown => return Err(End::Shutdown),
            }
        }
    }

    /// Takes what is already in the channel (at most [`MAX_EVENTS_PER_FLUSH`] events, so one
    /// write stays bounded); returns how many it took.
    async fn drain(&mut self, live: &mut broadcast::Receiver<Arc<Event>>) -> Result<usize, End> {
        let mut taken = 0;
        while taken < MAX_EVENTS_PER_FLUSH {
            match live.try_recv() {
                Ok(event) => self.on_received(Ok(event)).await?,
                Err(TryRecvError::Lagged(n)) => self.on_received(Err(RecvError::Lagged(n))).await?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return Err(End::Shutdown),
            }
            taken += 1;
        }
        Ok(taken)
    }

    async fn on_received(&mut self, received: Result<Arc<Event>, RecvError>) -> Result<(), End> {
        match received {
            Ok(event) => self.on_event(&event).await,
            // Fell behind the channel: what was skipped is in the store.
            Err(RecvError::Lagged(skipped)) => {
                tracing::debug!(app = %self.app, skipped, "subscriber lagged; catching up from the store");
                self.catch_up_app(&Resume::new(), true).await
            }
            // The hub never drops a channel with receivers; treat it as the end of the server.
            Err(RecvError::Closed) => Err(End::Shutdown),
        }
    }

    async fn on_event(&mut self, event: &Event) -> Result<(), End> {
        if event.app_id != self.app {
            return Ok(());
        }
        let id = event.deployment_id;
        let frames = event.ws_frames(render_event);
        match (&event.kind, self.sent.get(&id).copied()) {
            (EventKind::New, None) => {
                self.track(id, Sent::default());
                self.feed(frames.bytes()).await
            }
            (EventKind::New, Some(_)) => Ok(()),
            // A deployment we know nothing of (its `new` was missed): read it from the store.
            (_, None) => self.catch_up(id, true).await,
            (EventKind::Status { status, seq }, Some(sent)) => {
                if *seq > sent.line {
                    // Lines before this status are missing: the store has them, and the status.
                    return self.catch_up(id, false).await;
                }
                if sent.status.is_some_and(|s| s >= *status) {
                    return Ok(());
                }
                self.feed(frames.bytes()).await?;
                self.mark_status(id, *status);
                Ok(())
            }
            (EventKind::Logs { first, segment }, Some(sent)) => {
                // Every line is rendered, unless the event was too big (then none is).
                let count = if frames.is_empty() {
                    SegmentView::parse(segment).map_or(0, |v| v.line_count()) as u64
                } else {
                    frames.len() as u64
                };
                let end = (first.0 + count).saturating_sub(1);
                if count == 0 || end <= sent.line.0 {
                    return Ok(());
                }
                if first.0 > sent.line.0 + 1 || frames.len() as u64 != count {
                    // A gap, or an event too big to render for everyone: read the store.
                    return self.catch_up(id, false).await;
                }
                let skip = (sent.line.0 + 1 - first.0) as usize;
                self.feed(frames.from_frame(skip)).await?;
                if let Some(entry) = self.sent.get_mut(&id) {
                    entry.line = LineNo(end);
                }
                Ok(())
            }
        }
    }

    /// Replays (or, after a lag, catches up) every deployment of the app that is running, just
    /// finished, or named in `resume`, oldest first. `announce`: send `new` for deployments this
    /// socket did not know yet.
    async fn catch_up_app(&mut self, resume: &Resume, announce: bool) -> Result<(), End> {
        let app = self.app;
        let window = self.state.config.stream.replay_window;
        let resumed: Vec<DeploymentId> = resume.keys().copied().collect();
        let mut ids = self
            .state
            .read(move |store| {
                let cutoff = OffsetDateTime::now_utc() - window;
                let mut ids = Vec::new();
                for id in store.deployment_ids(app, 0, REPLAY_SCAN_LIMIT)? {
                    if let Some(d) = store.deployment(id)? {
                        if d.finished_at.is_none_or(|at| at >= cutoff) {
                            ids.push(id);
                        }
                    }
                }
                Ok(ids)
            })
            .await?;
        for id in resumed {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        // UUIDv7: id order is creation order.
        ids.sort();
        for id in ids {
            if self.sent.get(&id).is_some_and(|s| s.finished) {
                continue;
            }
            let known = self.sent.contains_key(&id);
            self.catch_up(id, announce && !known).await?;
        }
        Ok(())
    }

    /// Sends what the store has of one deployment beyond what was sent: its lines (up to the
    /// last line stored when its record was read), each status change it missed at its line
    /// number (from the hub's status history), and its current status.
    async fn catch_up(&mut self, id: DeploymentId, announce: bool) -> Result<(), End> {
        let record = self.state.read(move |store| store.deployment(id)).await?;
        let Some(record) = record.filter(|d| d.app_id == self.app) else {
            // Deleted, or another app's (a bad resume id): nothing to send.
            self.sent.remove(&id);
            return Ok(());
        };
        let mut sent = self.sent.get(&id).copied().unwrap_or_default();
        if announce && !self.sent.contains_key(&id) {
            self.feed(&text_frame(&new_text(id))).await?;
        }
        self.track(id, sent);
        // Read after the record: the history holds at least the record's status, if any.
        let mut statuses: Vec<(Status, LineNo)> = self
            .state
            .hub
            .status_history(id)
            .into_iter()
            .filter(|(status, _)| sent.status.is_none_or(|s| s < *status))
            .collect();
        if statuses.is_empty() || (sent.status.is_none() && !announce) {
            // A first replay sends the current status only (the spec's replay); so does a
            // catch-up without history (the process restarted since).
            statuses.retain(|(status, _)| *status == record.status);
        }
        if !statuses.iter().any(|(status, _)| *status == record.status)
            && sent.status.is_none_or(|s| s < record.status)
        {
            statuses.push((record.status, record.last_line));
        }
        for (status, seq) in statuses {
            sent = self.send_lines(id, sent, seq.max(sent.line)).await?;
            if status == record.status {
                // The current status goes after every line stored when it was read.
                sent = self.send_lines(id, sent, record.last_line).await?;
            }
            self.feed(&text_frame(&status_text(id, status, sent.line)))
                .await?;
            self.mark_status(id, status);
            sent = self.sent.get(&id).copied().unwrap_or(sent);
        }
        self.send_lines(id, sent, record.last_line).await?;
        Ok(())
    }

    /// Sends the stored lines of `id` after `sent.line` up to `until` included.
    async fn send_lines(
        &mut self,
        id: DeploymentId,
        mut sent: Sent,
        until: LineNo,
    ) -> Result<Sent, End> {
        while sent.line < until {
            let from = sent.line;
            let (frames, last) = self
                .state
                .read(move |store| read_log_frames(store, id, from, until))
                .await?;
            if frames.is_empty() {
                break;
            }
            self.feed(frames.bytes()).await?;
            sent.line = last;
            self.track(id, sent);
        }
        Ok(sent)
    }

    fn mark_status(&mut self, id: DeploymentId, status: Status) {
        if let Some(sent) = self.sent.get_mut(&id) {
            sent.status = Some(status);
            sent.finished = status.is_terminal();
        }
    }

    /// Records what was sent of `id`, forgetting the oldest finished deployments beyond
    /// [`MAX_TRACKED_DEPLOYMENTS`].
    fn track(&mut self, id: DeploymentId, sent: Sent) {
        self.sent.insert(id, sent);
        while self.sent.len() > MAX_TRACKED_DEPLOYMENTS {
            let Some(oldest) = self
                .sent
                .iter()
                .find(|(other, s)| s.finished && **other != id)
                .map(|(other, _)| *other)
            else {
                break;
            };
            self.sent.remove(&oldest);
        }
    }

    /// Queues encoded frames, writing them out once [`WRITE_BUFFER_BYTES`] are waiting.
    /// Big slices (a store read, a big event) go out in pieces: the buffer stays under twice
    /// [`WRITE_BUFFER_BYTES`].
    async fn feed(&mut self, frames: &[u8]) -> Result<(), End> {
        for piece in frames.chunks(WRITE_BUFFER_BYTES) {
            self.conn.queue(piece);
            if self.conn.buffered() >= WRITE_BUFFER_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        let write = self.conn.write_out();
        guard_write(&self.state, write).await
    }
}

/// Runs a socket write, ending on shutdown or when the socket stalls.
async fn guard_write(
    state: &AppState,
    write: impl Future<Output = std::io::Result<()>>,
) -> Result<(), End> {
    tokio::select! {
        // The write first: it usually completes at once, and then the shutdown token (a lock
        // shared by every subscriber) is not even looked at.
        biased;
        written = tokio::time::timeout(WRITE_STALL_TIMEOUT, write) => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::ClientGone),
            Err(_) => Err(End::Stalled),
        },
        () = state.shutdown.cancelled() => Err(End::Shutdown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LogStream;
    use crate::store::codec::encode_segment;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn output_request_resume_sources() {
        let none = HeaderMap::new();
        let r = OutputRequest::parse(Some("follow=true&after=7"), &none).unwrap();
        assert_eq!((r.follow, r.sse, r.after), (true, false, LineNo(7)));
        let r = OutputRequest::parse(None, &headers(&[("range", "lines=5-")])).unwrap();
        assert_eq!(r.after, LineNo(4));
        let r = OutputRequest::parse(
            None,
            &headers(&[("accept", "text/event-stream"), ("last-event-id", "12")]),
        )
        .unwrap();
        assert_eq!((r.follow, r.sse, r.after), (true, true, LineNo(12)));
        assert!(OutputRequest::parse(Some("after=x"), &none).is_err());
        assert!(OutputRequest::parse(None, &headers(&[("range", "bytes=0-")])).is_err());
    }

    #[test]
    fn auth_frame_parsing() {
        let id = DeploymentId::generate();
        let frame = AuthFrame::parse(&format!(
            r#"{{"type":"auth","data":{{"token":"t","resume":{{"{id}":3}}}}}}"#
        ))
        .unwrap();
        assert_eq!(frame.token, "t");
        assert_eq!(frame.resume.get(&id), Some(&LineNo(3)));
        let frame = AuthFrame::parse(&format!(
            r#"{{"type":"auth","data":{{"token":"t","deployment":"{id}","after":9}}}}"#
        ))
        .unwrap();
        assert_eq!(frame.resume.get(&id), Some(&LineNo(9)));
        assert!(AuthFrame::parse(r#"{"type":"ping"}"#).is_none());
        assert!(AuthFrame::parse("not json").is_none());
        assert!(AuthFrame::parse(r#"{"type":"auth","data":{}}"#).is_none());
        assert!(
            AuthFrame::parse(r#"{"type":"auth","data":{"token":"t","resume":{"x":1}}}"#).is_none()
        );
    }

    /// The payload of one encoded unmasked text frame.
    fn text_payload(frame: &[u8]) -> &[u8] {
        assert_eq!(frame[0], 0x81);
        let header = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &frame[header..]
    }

    /// A client frame, masked as clients must.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn server_frames_use_the_shortest_length_encoding() {
        for len in [0, 125, 126, 65535, 65536] {
            let mut out = Vec::new();
            encode_frame(&mut out, opcode::TEXT, &vec![b'a'; len]);
            let header = out.len() - len;
            assert_eq!(
                header,
                if len < 126 {
                    2
                } else if len < 65536 {
                    4
                } else {
                    10
                }
            );
            assert_eq!(text_payload(&out).len(), len);
        }
    }

    #[test]
    fn client_frames_are_unmasked_reassembled_and_limited() {
        let mut input = BytesMut::new();
        input.extend_from_slice(&client_frame(0x81, b"hello"));
        let frame = parse_client_frame(&mut input).unwrap().unwrap();
        assert_eq!(
            (frame.fin, frame.opcode, &frame.payload[..]),
            (true, 1, &b"hello"[..])
        );
        assert!(input.is_empty());

        // Partial frames wait for more bytes.
        let whole = client_frame(0x81, &[b'x'; 300]);
        input.extend_from_slice(&whole[..100]);
        assert!(parse_client_frame(&mut input).unwrap().is_none());
        input.extend_from_slice(&whole[100..]);
        assert_eq!(
            parse_client_frame(&mut input)
                .unwrap()
                .unwrap()
                .payload
                .len(),
            300
        );

        // Too big as soon as the header says so; unmasked is broken.
        let mut input = BytesMut::from(&client_frame(0x81, &vec![0; 70_000])[..10]);
        assert_eq!(
            parse_client_frame(&mut input).err(),
            Some(ReadError::TooBig)
        );
        let mut input = BytesMut::from(&[0x81u8, 0x01, b'a'][..]);
        assert_eq!(
            parse_client_frame(&mut input).err(),
            Some(ReadError::Broken)
        );
    }

    #[tokio::test]
    async fn conn_answers_pings_and_reassembles_fragments() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut conn = Conn::new(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut bytes = client_frame(0x89, b"p");
        bytes.extend(client_frame(0x01, b"hel"));
        bytes.extend(client_frame(0x80, b"lo"));
        bytes.extend(client_frame(0x82, b"\x00"));
        bytes.extend(client_frame(0x88, &1000u16.to_be_bytes()));
        client_write.write_all(&bytes).await.unwrap();
        assert_eq!(conn.next_message().await, Ok(Some(ClientMessage::Ping)));
        assert_eq!(
            conn.next_message().await,
            Ok(Some(ClientMessage::Text("hello".into())))
        );
        assert_eq!(conn.next_message().await, Ok(Some(ClientMessage::Binary)));
        assert_eq!(conn.next_message().await, Ok(Some(ClientMessage::Close)));
        conn.write_out().await.unwrap();
        let mut reply = [0u8; 7];
        client_read.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [0x8A, 1, b'p', 0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn log_frames_escape_and_number_lines() {
        let lines = [
            (LogStream::Stdout, "a \"quoted\""),
            (LogStream::Stderr, "b\\c"),
        ];
        let bytes = encode_segment(OffsetDateTime::UNIX_EPOCH, lines.iter().copied(), 16);
        let view = SegmentView::parse(&bytes).unwrap();
        let id = DeploymentId::from_bytes([1; 16]);
        let frames = log_frames(id, LineNo(41), &view, 1);
        assert_eq!(frames.len(), 1);
        let value: Value = serde_json::from_slice(text_payload(frames.frame(0))).unwrap();
        assert_eq!(value["type"], "log");
        assert_eq!(value["id"], id.to_string());
        assert_eq!(value["data"]["content"], "b\\c");
        assert_eq!(value["seq"], 42);
        assert_eq!(value["at"], "1970-01-01T00:00:00Z");
        let all = log_frames(id, LineNo(41), &view, 0);
        assert_eq!(all.len(), 2);
        assert_eq!(all.from_frame(1), all.frame(1));
        let value: Value = serde_json::from_slice(text_payload(all.frame(0))).unwrap();
        assert_eq!(value["data"]["content"], "a \"quoted\"");
        assert_eq!(value["seq"], 41);
    }
}
