//! Deployment output over HTTP: the plain-text `/output`, optionally followed live, as text or
//! as Server-Sent Events.
//!
//! A followed output follows the stream's rule (DESIGN.md, "Hub and the live stream"): it
//! subscribes to the app's hub channel FIRST, then reads what the store has; hub events only
//! say when to read again, so lines always come from the store, in store order, each once, and
//! a slow reader simply reads more per round. Memory per follower is bounded: at most
//! `FOLLOW_CHUNKS_IN_FLIGHT` chunks of ≤ `MAX_READ_BYTES` (plus one line).
//!
//! It renders text only; the WebSocket stream is `api::stream`'s, and this module never writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::access::Caller;
use super::deployments::find_deployment;
use super::stream::MAX_READ_BYTES;
use super::{ApiError, AppState};
use crate::model::{Deployment, DeploymentId, LineNo};
use crate::status::Status;
use crate::store::codec::SegmentView;
use crate::store::{Store, StoreError};

/// Segments read per blocking store call while streaming output.
const OUTPUT_SEGMENTS_PER_READ: usize = 64;

/// Chunks a followed output may have produced ahead of the client reading them.
const FOLLOW_CHUNKS_IN_FLIGHT: usize = 4;

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
        let pairs = super::query::pairs(query)?;
        let follow = match super::query::last(&pairs, "follow") {
            // SSE is always followed.
            Some(value) => super::query::boolean("follow", value)? || sse,
            None => sse,
        };
        let mut after = super::query::last(&pairs, "after")
            .map(|value| super::query::unsigned("after", value))
            .transpose()?;
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
    let complete = Arc::new(AtomicBool::new(false));
    let follower = Follower {
        state,
        format,
        tx,
        complete: complete.clone(),
    };
    tokio::spawn(follow(follower, deployment, request.after));
    // The body ends cleanly only when the follower said it is complete; any other end (shutdown,
    // a store failure) is an error, which makes hyper abort the response: a plain-text client
    // then sees no final chunk and knows the output is cut, never a complete-looking body.
    let body = Body::from_stream(stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|chunk| match chunk {
            Some(chunk) => Some(Ok(chunk)),
            None if complete.load(Ordering::Acquire) => None,
            None => Some(Err(std::io::Error::other("followed output interrupted"))),
        })
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

/// One followed output's sending side.
struct Follower {
    state: AppState,
    format: FollowFormat,
    tx: mpsc::Sender<Bytes>,
    /// Set when the body may end cleanly (everything up to a terminal status was sent, or an
    /// SSE `event: error` said it was interrupted); otherwise its end aborts the response.
    complete: Arc<AtomicBool>,
}

/// Longest wait to hand an SSE follower its `event: error` at shutdown (a client that reads
/// nothing must not hold the shutdown); past it, the response is aborted instead.
const INTERRUPTION_EVENT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a followed output stopped before the deployment ended.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The client went away: nothing to tell anyone.
    ClientGone,
    /// deployd is shutting down (or could not read the store): the output is cut.
    Interrupted(&'static str),
}

/// Feeds a followed output into the follower's channel until the deployment ends, the client
/// goes away or the server shuts down. Lines come from the store; hub events only say when to
/// read again, so a slow reader simply reads more per round.
async fn follow(follower: Follower, deployment: Deployment, after: LineNo) {
    match follow_until_done(&follower, deployment, after).await {
        Ok(()) => follower.complete.store(true, Ordering::Release),
        Err(Stop::ClientGone) => {}
        Err(Stop::Interrupted(why)) => {
            if follower.format == FollowFormat::Sse {
                let event = format!(
                    "event: error\ndata: {}\n\n",
                    serde_json::json!({ "error": why })
                );
                let sent = tokio::time::timeout(
                    INTERRUPTION_EVENT_WAIT,
                    follower.tx.send(Bytes::from(event)),
                )
                .await;
                // SSE says "interrupted" in-band; the stream may then end cleanly.
                if matches!(sent, Ok(Ok(()))) {
                    follower.complete.store(true, Ordering::Release);
                }
            }
        }
    }
}

async fn follow_until_done(
    follower: &Follower,
    deployment: Deployment,
    after: LineNo,
) -> Result<(), Stop> {
    let Follower {
        state, format, tx, ..
    } = follower;
    let format = *format;
    let id = deployment.id;
    let mut live = state.hub.subscribe(deployment.app_id);
    let mut cursor = after;
    let mut told: Option<Status> = None;
    let keepalive_every = state
        .config
        .server
        .sse_keepalive
        .filter(|_| format == FollowFormat::Sse);
    let shutting_down = Stop::Interrupted("deployd is shutting down; resume from the last id");
    let unreadable = Stop::Interrupted("the output could not be read; resume from the last id");
    loop {
        let record = match state.read(move |store| store.deployment(id)).await {
            Ok(Some(record)) => record,
            _ => return Err(unreadable),
        };
        // At shutdown, sessions end their deployments: that status is not the deployment's
        // real end, and a follower must see an interruption, not a finished deployment.
        if state.shutdown.is_cancelled() {
            return Err(shutting_down);
        }
        while cursor < record.last_line {
            let store = state.store.clone();
            let from = cursor;
            let read = tokio::task::spawn_blocking(move || match format {
                FollowFormat::Text => read_text_chunk(&store, id, from),
                FollowFormat::Sse => read_sse_chunk(&store, id, from),
            })
            .await;
            let Ok(Ok((chunk, last))) = read else {
                return Err(unreadable);
            };
            if chunk.is_empty() {
                break;
            }
            cursor = last;
            send_chunk(state, tx, Bytes::from(chunk)).await?;
        }
        if format == FollowFormat::Sse && told != Some(record.status) {
            told = Some(record.status);
            let event = format!(
                "event: status\ndata: {}\n\n",
                serde_json::json!({"status": record.status.as_str(), "seq": cursor.0})
            );
            send_chunk(state, tx, Bytes::from(event)).await?;
        }
        if record.status.is_terminal() {
            // No line is appended after a terminal status: everything was sent.
            return Ok(());
        }
        // Wait until something happens to this deployment (or we fell behind), then read again.
        let mut keepalive = keepalive_every.map(|every| {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) if event.deployment_id == id => break,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return Err(shutting_down),
                },
                _ = next_tick(&mut keepalive) => {
                    // A comment line: SSE clients ignore it, proxies see traffic.
                    send_chunk(state, tx, Bytes::from_static(b": keep-alive\n\n")).await?;
                }
                () = tx.closed() => return Err(Stop::ClientGone),
                () = state.shutdown.cancelled() => return Err(shutting_down),
            }
        }
    }
}

/// The next keep-alive tick; never, without keep-alives.
async fn next_tick(keepalive: &mut Option<tokio::time::Interval>) {
    match keepalive {
        Some(tick) => {
            tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sends one chunk of a followed output.
async fn send_chunk(state: &AppState, tx: &mpsc::Sender<Bytes>, chunk: Bytes) -> Result<(), Stop> {
    tokio::select! {
        sent = tx.send(chunk) => sent.map_err(|_| Stop::ClientGone),
        () = state.shutdown.cancelled() => {
            Err(Stop::Interrupted("deployd is shutting down; resume from the last id"))
        }
    }
}

/// How long a stored output whose next read failed (a damaged log file) waits before it
/// aborts the response: hyper discards the bytes it has buffered when a body fails, so without
/// the pause the intact lines sent just before the damage were sometimes never written
/// (`tests/damaged_files.rs`).
const FLUSH_BEFORE_ABORT: std::time::Duration = std::time::Duration::from_millis(200);

/// The stored text of a deployment after line `after`, read in chunks off the executor.
pub fn stored_text(
    state: AppState,
    id: DeploymentId,
    after: LineNo,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let start = after;
    stream::try_unfold(Some(after), move |cursor| {
        let state = state.clone();
        async move {
            let Some(after) = cursor else {
                return Ok(None);
            };
            let store = state.store.clone();
            let read = tokio::task::spawn_blocking(move || read_text_chunk(&store, id, after))
                .await
                .map_err(std::io::Error::other)
                .and_then(|read| read.map_err(std::io::Error::other));
            let (chunk, last) = match read {
                Ok(read) => read,
                Err(err) => {
                    // hyper drops what it has buffered but not yet written when the body
                    // fails: give it time to write the intact lines sent before the damage.
                    if after > start {
                        tokio::time::sleep(FLUSH_BEFORE_ABORT).await;
                    }
                    return Err(err);
                }
            };
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
        // A segment that cannot be read (a damaged log file ends before it, or it does not
        // parse) ends the chunk: the intact lines before it are returned first, and the next
        // read, which starts at the damaged segment, fails, so the response is aborted (plain)
        // or ends with `event: error` (SSE) right after the last intact line.
        let read = entry.and_then(|(first, segment)| {
            segment.view()?;
            Ok((first, segment))
        });
        let (first, segment) = match read {
            Ok(read) => read,
            Err(err) if out.is_empty() => return Err(err),
            Err(_) => break,
        };
        let view = segment.view()?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
