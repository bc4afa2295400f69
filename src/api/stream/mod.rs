//! The subscribers' WebSocket at `/apps/{app}`: the live deployments stream.
//!
//! It follows DESIGN.md's rule ("Hub and the live stream"): subscribe to the app's hub channel
//! FIRST, then read from the store what is already there, then take live events, dropping what
//! was already sent (per deployment: log lines by line number, statuses by `Status`'s order,
//! since statuses only move forward). A subscriber that falls behind the channel (`Lagged`) or
//! sees a gap catches up from the store the same way and rejoins live. So no line is lost or
//! repeated, whatever the subscriber's speed, and the wire order is the store order.
//!
//! Layout: this module upgrades the connection, authenticates the first frame and closes with
//! the right code; `conn` reads client frames and buffers server frames; `frames` renders
//! what is sent; `cursor` (pure) decides what each subscriber still needs; `subscriber` is
//! the I/O loop doing what the cursor decides. Bytes on the wire are `crate::ws`'s. The plain
//! and SSE `/output` is `api::output`'s.
//!
//! Memory per subscriber is bounded: the hub's channel and its rendered frames are shared (at
//! most [`MAX_RENDERED_EVENT_BYTES`] of frames per event); a subscriber holds at most one store
//! read (≤ [`MAX_READ_BYTES`] of frames, from ≤ [`CATCH_UP_SEGMENTS_PER_READ`] segments) plus
//! the socket's write buffer. See the README ("Memory bound").
//!
//! WebSocket protocol (spec + compat.md), server frames, one JSON object per text frame:
//! `{"type":"log","id":D,"data":{"content":L},"seq":N,"at":T}`,
//! `{"type":"status","id":D,"data":{"status":S},"seq":N}`, `{"type":"new","data":{"deployment":D}}`,
//! `{"type":"ping","data":{"ts":U}}`. `seq` and `at` are extras that spec clients ignore. A
//! subscriber that asks (`batch=lines`) gets `{"type":"log_batch","id":D,"data":{"lines":[L,…]},
//! "seq":N,"at":T}` instead of `log` frames: line `i` of `lines` is line `N + i`.

mod conn;
mod cursor;
mod frames;
mod subscriber;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::close_code;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use self::conn::{ClientMessage, Conn, ReadError};
use self::cursor::Logs;
use self::frames::LogForm;
use self::subscriber::Subscriber;
use super::{ApiError, AppState};
use crate::model::{AppId, DeploymentId, LineNo};
use crate::ws;

/// A subscriber socket's read buffer (it grows for a bigger frame, up to
/// [`MAX_SUBSCRIBER_FRAME_BYTES`]): subscribers send one small auth frame.
const SUBSCRIBER_READ_BUFFER_BYTES: usize = 4 * 1024;

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

/// Largest frame a subscriber may send. Subscribers only send the auth frame, which is tiny;
/// a bigger frame closes the socket with 1009.
pub const MAX_SUBSCRIBER_FRAME_BYTES: usize = 64 * 1024;

/// Resume entries accepted in one auth frame.
const MAX_RESUME_ENTRIES: usize = 64;

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

/// `GET /apps/{app}` (the URL of `links.deployments_stream`): the live deployments stream. No
/// credentials on the upgrade (compat.md); the first frame authenticates. Query parameters
/// `deployment=D&after=N` resume deployment D after line N; `logs=none` sends no log event at
/// all (statuses only); `tail=N` replays only the last N lines of each deployment (see
/// [`Logs`]). The auth frame may say the same.
///
/// The handshake and the framing are done here rather than by tungstenite: live frames are
/// encoded once per event for every subscriber (see `frames::WireFrames`) and a subscriber copies
/// them into its write buffer, one socket write per flush. Per-subscriber framing and the
/// split sink's lock were most of the server's CPU with 1000 subscribers.
pub async fn upgrade(
    State(state): State<AppState>,
    Path(app): Path<String>,
    RawQuery(query): RawQuery,
    mut request: Request,
) -> Result<Response, ApiError> {
    let (resume, logs, form) = parse_stream_query(query.as_deref())?;
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
    let accept = ws::accept_key(key.as_bytes());
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Err(not_websocket("this connection cannot be upgraded"));
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let conn = Conn::new(TokioIo::new(upgraded));
                let options = Options {
                    logs: logs.unwrap_or_default(),
                    form: form.unwrap_or_default(),
                };
                run_socket(state, app, resume, options, conn).await;
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
        .map_err(|err| ApiError::internal("the 101 response", err))
}

/// Resume points: deployment id → last line the client has.
type Resume = BTreeMap<DeploymentId, LineNo>;

/// The `logs` and `tail` options, given as `logs` (`all` or `none`) and `tail` (a number):
/// `Err((parameter, why))` for an unknown `logs` or both `logs=none` and a tail.
fn logs_option(
    logs: Option<&str>,
    tail: Option<u64>,
) -> Result<Option<Logs>, (&'static str, &'static str)> {
    match (logs, tail) {
        (None, None) => Ok(None),
        (None | Some("all"), Some(count)) => Ok(Some(Logs::Tail(count))),
        (Some("all"), None) => Ok(Some(Logs::All)),
        (Some("none"), None) => Ok(Some(Logs::Statuses)),
        (Some("none"), Some(_)) => Err(("tail", "cannot be combined with logs=none")),
        (Some(_), _) => Err(("logs", "must be all or none")),
    }
}

/// The `batch` option: `lines` asks for `log_batch` frames; `Err(why)` for another value.
fn batch_option(batch: Option<&str>) -> Result<Option<LogForm>, &'static str> {
    match batch {
        None => Ok(None),
        Some("lines") => Ok(Some(LogForm::Batched)),
        Some(_) => Err("must be lines"),
    }
}

/// What a subscriber asked to be sent: which lines, and in which frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Options {
    logs: Logs,
    form: LogForm,
}

/// The URL's resume point, log option and log form (the query rule of `api::query`).
fn parse_stream_query(
    query: Option<&str>,
) -> Result<(Resume, Option<Logs>, Option<LogForm>), ApiError> {
    let pairs = super::query::pairs(query)?;
    let deployment = super::query::last(&pairs, "deployment")
        .map(|value| {
            value.parse::<DeploymentId>().map_err(|_| {
                ApiError::BadRequest(format!("deployment must be a deployment id, got {value:?}"))
            })
        })
        .transpose()?;
    let number = |name: &str| {
        super::query::last(&pairs, name)
            .map(|value| super::query::unsigned(name, value))
            .transpose()
    };
    let after = number("after")?;
    let tail = number("tail")?;
    let logs = logs_option(super::query::last(&pairs, "logs"), tail)
        .map_err(|(field, why)| ApiError::field(field, why))?;
    let form = batch_option(super::query::last(&pairs, "batch"))
        .map_err(|why| ApiError::field("batch", why))?;
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
    Ok((resume, logs, form))
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

async fn run_socket<IO>(
    state: AppState,
    app: String,
    resume: Resume,
    options: Options,
    mut conn: Conn<IO>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let outcome = async {
        let (app_id, resume, options) =
            authenticate(&state, &app, resume, options, &mut conn).await?;
        let live = state.hub.subscribe(app_id);
        let mut subscriber = Subscriber::new(state.clone(), app_id, &mut conn)
            .with_logs(options.logs)
            .with_log_form(options.form);
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
        let mut frame = Vec::with_capacity(4 + reason.len());
        ws::encode_close(&mut frame, code, reason);
        conn.queue(&frame);
    }
    // Best effort, bounded: what is queued (a pong, the close reply, a close frame) goes out
    // unless the peer is gone or not reading.
    if conn.buffered() > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.write_out()).await;
    }
}

/// Waits for the auth frame; returns the app, the resume points (query ∪ auth frame) and the
/// options (each the auth frame's, else the query's).
async fn authenticate<IO>(
    state: &AppState,
    app: &str,
    mut resume: Resume,
    options: Options,
    conn: &mut Conn<IO>,
) -> Result<(AppId, Resume, Options), End>
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
    let options = Options {
        logs: frame.logs.unwrap_or(options.logs),
        form: frame.form.unwrap_or(options.form),
    };
    let caller = super::access::authenticate_token(state, &frame.token)
        .await
        .map_err(|err| match err {
            ApiError::Unauthorized(_) => End::Refused(close::BAD_TOKEN, "invalid token"),
            other => End::from(other),
        })?;
    let name = app.to_owned();
    let found = state
        .read(move |store| caller.find_app(store, &name))
        .await?;
    let Some((app, _)) = found else {
        return Err(End::Refused(close::APP_NOT_FOUND, "app not found"));
    };
    Ok((app.id, resume, options))
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
    /// `"logs":"none"` / `"tail":N`, as in the query; `None` when neither is given.
    logs: Option<Logs>,
    /// `"batch":"lines"`, as in the query; `None` when not given.
    form: Option<LogForm>,
}

impl AuthFrame {
    /// `{"type":"auth","data":{"token":"…","resume":{"<deployment id>":N,…}}}`; also
    /// `"deployment":"<id>","after":N` in `data` for one deployment, and `"logs":"none"` or
    /// `"tail":N`, and `"batch":"lines"`. Invalid or too many resume entries, or invalid log
    /// options, make the whole frame invalid (`None`), like a missing token.
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
        let logs = match data.get("logs") {
            Some(logs) => Some(logs.as_str()?),
            None => None,
        };
        let tail = match data.get("tail") {
            Some(tail) => Some(tail.as_u64()?),
            None => None,
        };
        let logs = logs_option(logs, tail).ok()?;
        let form = match data.get("batch") {
            Some(batch) => batch_option(Some(batch.as_str()?)).ok()?,
            None => None,
        };
        Some(Self {
            token,
            resume,
            logs,
            form,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn log_options_in_the_auth_frame() {
        let parse = |data: &str| {
            AuthFrame::parse(&format!(
                r#"{{"type":"auth","data":{{"token":"t"{data}}}}}"#
            ))
            .map(|frame| frame.logs)
        };
        assert_eq!(parse(""), Some(None));
        assert_eq!(parse(r#","logs":"none""#), Some(Some(Logs::Statuses)));
        assert_eq!(parse(r#","tail":5"#), Some(Some(Logs::Tail(5))));
        assert_eq!(
            parse(r#","logs":"all","tail":5"#),
            Some(Some(Logs::Tail(5)))
        );
        assert_eq!(parse(r#","logs":"some""#), None);
        assert_eq!(parse(r#","logs":"none","tail":5"#), None);
        assert_eq!(parse(r#","tail":-1"#), None);
        assert_eq!(parse(r#","tail":"5""#), None);
    }

    #[test]
    fn log_options_in_the_query_follow_the_query_rule() {
        let status = |query: &str| parse_stream_query(Some(query)).map_err(|e| e.status().as_u16());
        assert_eq!(status("logs=none").map(|r| r.1), Ok(Some(Logs::Statuses)));
        assert_eq!(status("tail=3").map(|r| r.1), Ok(Some(Logs::Tail(3))));
        assert_eq!(status("").map(|r| r.1), Ok(None));
        assert_eq!(status("tail=x").map(|r| r.1), Err(400));
        assert_eq!(status("tail=-1").map(|r| r.1), Err(400));
        assert_eq!(status("logs=some").map(|r| r.1), Err(422));
        assert_eq!(status("logs=none&tail=2").map(|r| r.1), Err(422));
        let id = DeploymentId::generate();
        let (resume, logs, form) =
            parse_stream_query(Some(&format!("deployment={id}&after=4&tail=9"))).expect("parse");
        assert_eq!(resume.get(&id), Some(&LineNo(4)));
        assert_eq!(logs, Some(Logs::Tail(9)));
        assert_eq!(form, None);
    }

    #[test]
    fn the_batch_option_takes_lines_in_the_query_and_the_auth_frame_and_refuses_anything_else() {
        let form = |query: &str| parse_stream_query(Some(query)).map(|r| r.2);
        assert_eq!(form("batch=lines").ok(), Some(Some(LogForm::Batched)));
        assert_eq!(
            form("tail=0&batch=lines").ok(),
            Some(Some(LogForm::Batched))
        );
        assert_eq!(
            form("batch=bytes").map_err(|e| e.status().as_u16()),
            Err(422)
        );
        assert_eq!(form("batch=").map_err(|e| e.status().as_u16()), Err(422));
        let parse = |data: &str| {
            AuthFrame::parse(&format!(
                r#"{{"type":"auth","data":{{"token":"t"{data}}}}}"#
            ))
            .map(|frame| frame.form)
        };
        assert_eq!(parse(""), Some(None));
        assert_eq!(parse(r#","batch":"lines""#), Some(Some(LogForm::Batched)));
        assert_eq!(parse(r#","batch":"none""#), None);
        assert_eq!(parse(r#","batch":true"#), None);
    }
}
