//! A deployment's lines for the dashboard: the ranged read (`…/lines`, NDJSON with line
//! numbers and times) and the search (`…/search`, matching line numbers).
//!
//! Both read the store's segments through its index ([`Store::segments_after`]): a range
//! costs the segments that hold it, never the log before it; a search streams the log once,
//! segment by segment, in constant memory (one segment and one line buffer), and stops once it
//! has what it needs. Access is `/output`'s: the caller's own apps, and another app's deployment
//! is a 404 like a missing one.
//!
//! This module only reads; `/output` (the Scalingo-compatible text) is `api::output`'s.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use time::OffsetDateTime;

use super::access::Caller;
use super::deployments::find_deployment;
use super::query;
use super::{ApiError, AppState};
use crate::model::{DeploymentId, LineNo};
use crate::status::Status;
use crate::store::{Store, StoreError};

/// Lines a range returns when `limit` is not given: a few screens of the log viewer.
pub const DEFAULT_LINES: u64 = 1000;

/// Most lines one range (`limit` or `tail`) may ask for: one answer stays a few MiB, and the
/// viewer asks for the next range as the user scrolls.
pub const MAX_LINES: u64 = 5000;

/// A range's body stops after the line that takes it past this many bytes (at least one
/// line is always sent): 5000 lines of 64 KiB would be 320 MiB. The client asks again from
/// the line after the last `n` it got.
pub const MAX_RANGE_BYTES: usize = 4 * 1024 * 1024;

/// Matches a search returns when `limit` is not given.
pub const DEFAULT_MATCHES: u64 = 100;

/// Most matches one search may return.
pub const MAX_MATCHES: u64 = 1000;

/// A search counts the matches of the whole log up to this many (the page then shows
/// "10,000+"): past it, counting costs a full scan for a number nobody reads.
pub const TOTAL_CAP: u64 = 10_000;

/// The longest search text, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;

/// The response header holding the number of lines stored so far.
const LAST_LINE: HeaderName = HeaderName::from_static("x-last-line");

/// The response header holding the deployment's status when the range was read.
const DEPLOYMENT_STATUS: HeaderName = HeaderName::from_static("x-deployment-status");

/// Which lines a range asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    /// `limit` lines from line `from` (1-based).
    From { from: u64, limit: u64 },
    /// The last `count` lines.
    Tail(u64),
}

impl Range {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let pairs = query::pairs(raw)?;
        let number = |name: &str| {
            query::last(&pairs, name)
                .map(|value| query::unsigned(name, value))
                .transpose()
        };
        let (from, limit, tail) = (number("from")?, number("limit")?, number("tail")?);
        let in_range = |name: &str, value: u64| {
            if (1..=MAX_LINES).contains(&value) {
                Ok(value)
            } else {
                Err(ApiError::field(
                    name,
                    format!("must be between 1 and {MAX_LINES}"),
                ))
            }
        };
        if let Some(tail) = tail {
            if from.is_some() || limit.is_some() {
                return Err(ApiError::field(
                    "tail",
                    "cannot be combined with from or limit",
                ));
            }
            return Ok(Range::Tail(in_range("tail", tail)?));
        }
        let from = from.unwrap_or(1);
        if from == 0 {
            return Err(ApiError::field("from", "line numbers start at 1"));
        }
        let limit = in_range("limit", limit.unwrap_or(DEFAULT_LINES))?;
        Ok(Range::From { from, limit })
    }

    /// The first and last line numbers wanted of a log of `last_line` lines (first > last
    /// when none).
    fn bounds(self, last_line: u64) -> (u64, u64) {
        match self {
            Range::From { from, limit } => (from, last_line.min(from.saturating_add(limit - 1))),
            Range::Tail(count) => (last_line.saturating_sub(count) + 1, last_line),
        }
    }
}

/// One line of a range's body.
#[derive(Serialize)]
struct LineObject<'a> {
    n: u64,
    at: &'a str,
    text: &'a str,
}

/// A segment's time as RFC 3339 in UTC with milliseconds (`2026-01-02T03:04:05.678Z`).
fn millis_rfc3339(nanos: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|at| at.format(&format).ok())
        // Segment times are the writer's clock, within any formattable range; a corrupt one
        // shows as the epoch rather than failing the whole range.
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

/// The NDJSON of lines `first..=last` of `id` (at most [`MAX_RANGE_BYTES`] plus one line),
/// reading only the segments that hold them.
fn read_range(
    store: &Store,
    id: DeploymentId,
    first: u64,
    last: u64,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    if first > last {
        return Ok(out);
    }
    'segments: for entry in store.segments_after(id, LineNo(first - 1)) {
        let (start, segment) = entry?;
        if start.0 > last {
            break;
        }
        let view = segment.view()?;
        let at = millis_rfc3339(view.stored_at_nanos);
        for (i, (_, text)) in view.lines().enumerate() {
            let n = start.0 + i as u64;
            if n < first {
                continue;
            }
            if n > last || out.len() >= MAX_RANGE_BYTES {
                break 'segments;
            }
            serde_json::to_writer(&mut out, &LineObject { n, at: &at, text })
                .map_err(|err| StoreError::LogFile(std::io::Error::other(err)))?;
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// `GET /v1/apps/{app}/deployments/{id}/lines?from=N&limit=K` or `?tail=K`: the lines as NDJSON,
/// one `{"n","at","text"}` object per line, with `X-Last-Line` (lines stored so far) and
/// `X-Deployment-Status`. A range past the end is an empty body.
pub async fn lines(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let range = Range::parse(raw.as_deref())?;
    let (app, _) = caller.app(&state, &app).await?;
    let deployment = find_deployment(&state, &app, &id).await?;
    let id = deployment.id;
    let (body, last_line, status) = state
        .read(move |store| {
            // Read again: the status and the last line as of this read, with the lines.
            let (last_line, status) = match store.deployment(id)? {
                Some(record) => (record.last_line.0, record.status),
                None => (deployment.last_line.0, deployment.status),
            };
            let (first, last) = range.bounds(last_line);
            Ok((read_range(store, id, first, last)?, last_line, status))
        })
        .await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (LAST_LINE, HeaderValue::from(last_line)),
            (DEPLOYMENT_STATUS, status_header(status)),
        ],
        body,
    )
        .into_response())
}

fn status_header(status: Status) -> HeaderValue {
    HeaderValue::from_static(status.as_str())
}

/// What a search asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SearchRequest {
    /// The text, lowercased.
    needle: String,
    after: u64,
    limit: u64,
}

impl SearchRequest {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let pairs = query::pairs(raw)?;
        let text = query::last(&pairs, "q").unwrap_or("");
        if text.is_empty() || text.len() > MAX_QUERY_BYTES {
            return Err(ApiError::field(
                "q",
                format!("must be 1 to {MAX_QUERY_BYTES} bytes of text"),
            ));
        }
        let after = query::last(&pairs, "after")
            .map(|value| query::unsigned("after", value))
            .transpose()?
            .unwrap_or(0);
        let limit = query::last(&pairs, "limit")
            .map(|value| query::unsigned("limit", value))
            .transpose()?
            .unwrap_or(DEFAULT_MATCHES);
        if !(1..=MAX_MATCHES).contains(&limit) {
            return Err(ApiError::field(
                "limit",
                format!("must be between 1 and {MAX_MATCHES}"),
            ));
        }
        Ok(Self {
            needle: text.to_lowercase(),
            after,
            limit,
        })
    }
}

/// A search's answer (see `search`).
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct SearchResult {
    /// Matching line numbers after `after`, ascending, at most `limit`.
    pub matches: Vec<u64>,
    /// Matching lines in the whole log, counted up to [`TOTAL_CAP`].
    pub total: u64,
    /// `total` reached the cap: there may be more.
    pub total_capped: bool,
    /// The last line looked at (the end of the log, unless the search could stop early).
    pub scanned_to: u64,
}

/// The escape character that starts every ANSI sequence.
const ESC: u8 = 0x1b;

/// Appends `line` without its ANSI escape sequences to `out`: CSI (`ESC [` … final byte, the
/// SGR colours among them), OSC (`ESC ]` … `BEL` or `ESC \`, e.g. hyperlinks) and the other
/// `ESC` sequences (`ESC x`, `ESC ( B`). What the viewer shows is what a search matches.
fn strip_ansi(line: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < line.len() {
        let Some(at) = memchr::memchr(ESC, &line[i..]) else {
            out.extend_from_slice(&line[i..]);
            return;
        };
        out.extend_from_slice(&line[i..i + at]);
        i += at + 1;
        match line.get(i) {
            Some(b'[') => {
                i += 1;
                // Parameter and intermediate bytes, then one final byte (0x40..=0x7e).
                while i < line.len() && (0x20..0x40).contains(&line[i]) {
                    i += 1;
                }
                i += 1;
            }
            Some(b']') => {
                i += 1;
                while i < line.len() && line[i] != 0x07 && line[i] != ESC {
                    i += 1;
                }
                // The terminator: BEL, or ESC followed by `\`.
                if line.get(i) == Some(&ESC) {
                    i += 1;
                }
                i += 1;
            }
            // `ESC x`, or `ESC`, intermediate bytes, final byte (`ESC ( B`: a charset).
            Some(_) => {
                while i < line.len() && (0x20..0x30).contains(&line[i]) {
                    i += 1;
                }
                i += 1;
            }
            None => {}
        }
    }
}

/// Streams the log of `id` once and collects what `request` asks for; see [`SearchResult`].
/// It stops early only when the total is capped and the matches are complete.
fn search_log(
    store: &Store,
    id: DeploymentId,
    request: &SearchRequest,
) -> Result<SearchResult, StoreError> {
    let finder = memchr::memmem::Finder::new(request.needle.as_bytes());
    let mut result = SearchResult::default();
    let mut stripped = Vec::new();
    let limit = request.limit as usize;
    'segments: for entry in store.segments_after(id, LineNo(0)) {
        let (start, segment) = entry?;
        let view = segment.view()?;
        for (i, (_, text)) in view.lines().enumerate() {
            let n = start.0 + i as u64;
            let counting = result.total < TOTAL_CAP;
            if !counting && result.matches.len() >= limit {
                break 'segments;
            }
            result.scanned_to = n;
            if !counting && n <= request.after {
                continue;
            }
            stripped.clear();
            strip_ansi(text.as_bytes(), &mut stripped);
            let found = if stripped.is_ascii() {
                stripped.make_ascii_lowercase();
                finder.find(&stripped).is_some()
            } else {
                let lowered = String::from_utf8_lossy(&stripped).to_lowercase();
                finder.find(lowered.as_bytes()).is_some()
            };
            if !found {
                continue;
            }
            if counting {
                result.total += 1;
            }
            if n > request.after && result.matches.len() < limit {
                result.matches.push(n);
            }
        }
    }
    result.total_capped = result.total >= TOTAL_CAP;
    Ok(result)
}

/// `GET /v1/apps/{app}/deployments/{id}/search?q=TEXT&after=N&limit=K`: the numbers of the lines
/// after line N containing TEXT (case-insensitive, literal, ANSI escapes ignored), and how many
/// lines of the whole log contain it (up to [`TOTAL_CAP`]).
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<SearchResult>, ApiError> {
    // The deployment first: a missing one is the same 404 as on every app route.
    let (app, _) = caller.app(&state, &app).await?;
    let deployment = find_deployment(&state, &app, &id).await?;
    let request = SearchRequest::parse(raw.as_deref())?;
    let id = deployment.id;
    let result = state
        .read(move |store| search_log(store, id, &request))
        .await?;
    Ok(Json(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_the_query_rule() {
        assert_eq!(
            Range::parse(None).ok(),
            Some(Range::From {
                from: 1,
                limit: DEFAULT_LINES
            })
        );
        assert_eq!(Range::parse(Some("tail=7")).ok(), Some(Range::Tail(7)));
        for (raw, status) in [
            ("from=x", 400),
            ("limit=-1", 400),
            ("from=0", 422),
            ("limit=0", 422),
            ("limit=5001", 422),
            ("tail=0", 422),
            ("tail=3&from=2", 422),
        ] {
            let err = Range::parse(Some(raw)).expect_err(raw);
            assert_eq!(err.status().as_u16(), status, "{raw}");
        }
    }

    #[test]
    fn bounds_clip_to_the_stored_lines() {
        assert_eq!(Range::From { from: 5, limit: 10 }.bounds(8), (5, 8));
        assert_eq!(Range::From { from: 9, limit: 10 }.bounds(8), (9, 8));
        assert_eq!(Range::Tail(3).bounds(8), (6, 8));
        assert_eq!(Range::Tail(30).bounds(8), (1, 8));
        assert_eq!(Range::Tail(3).bounds(0), (1, 0));
    }

    #[test]
    fn ansi_sequences_are_stripped_before_matching() {
        let mut out = Vec::new();
        strip_ansi(
            b"\x1b[1;31mred\x1b[0m \x1b]8;;http://x\x07link\x1b]8;;\x1b\\ \x1b(Bend\x1b",
            &mut out,
        );
        assert_eq!(String::from_utf8_lossy(&out), "red link end");
    }

    #[test]
    fn search_queries_follow_the_query_rule() {
        let request = SearchRequest::parse(Some("q=Error%21&after=3&limit=5")).expect("parse");
        assert_eq!(request.needle, "error!");
        assert_eq!((request.after, request.limit), (3, 5));
        let long = format!("q={}", "a".repeat(MAX_QUERY_BYTES + 1));
        for (raw, status) in [
            ("q=", 422),
            ("after=1", 422),
            (long.as_str(), 422),
            ("q=a&limit=0", 422),
            ("q=a&limit=1001", 422),
            ("q=a&after=x", 400),
        ] {
            let err = SearchRequest::parse(Some(raw)).expect_err(raw);
            assert_eq!(err.status().as_u16(), status, "{raw}");
        }
    }

    #[test]
    fn millisecond_times_are_rfc3339_in_utc() {
        assert_eq!(millis_rfc3339(1_500_000_000), "1970-01-01T00:00:01.500Z");
    }
}
