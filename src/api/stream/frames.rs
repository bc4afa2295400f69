//! What subscribers are sent, as WebSocket frames: the JSON texts (`log`, `log_batch`,
//! `status`, `new` in either form of `[stream] new_event`, `ping`), a hub event's frames
//! ([`event_frames`] and [`event_batches`], each rendered once per event, only when a subscriber
//! needs that form, and cached in the event), and the frames of stored lines read for a replay
//! or a catch-up ([`read_log_frames`]).
//!
//! Log lines go out in one of two forms ([`LogForm`]): a `log` frame per line (the spec's, what
//! Scalingo's clients read), or, for a subscriber that asked with `batch=lines`, `log_batch`
//! frames holding consecutive lines of one segment (fewer, bigger messages: a browser pays per
//! message, not per byte). Both number lines the same way.
//!
//! It renders only: it decides nothing about what a subscriber still needs (that is
//! `cursor`'s) and writes to no socket (that is `subscriber`'s). Byte-level framing is
//! `crate::ws`'s.

use std::sync::OnceLock;

use bytes::Bytes;
use time::OffsetDateTime;

use super::{
    CATCH_UP_SEGMENTS_PER_READ, MAX_READ_BYTES, MAX_RENDERED_EVENT_BYTES,
    MAX_SUBSCRIBER_FRAME_BYTES,
};
use crate::api::views::{rfc3339, DeploymentView};
use crate::config::NewEventForm;
use crate::hub::{Event, EventKind};
use crate::model::{Deployment, DeploymentId, LineNo};
use crate::status::Status;
use crate::store::codec::SegmentView;
use crate::store::{Store, StoreError};
use crate::ws::{encode_frame, opcode};

/// Bytes a log frame adds to its line (type, id, seq, time), to estimate rendered sizes.
const LOG_FRAME_OVERHEAD: usize = 140;

/// Bytes a line adds inside a `log_batch` frame (its quotes and comma, plus some escaping), to
/// estimate rendered sizes.
const BATCH_LINE_OVERHEAD: usize = 8;

/// Largest `log_batch` frame on the wire (header included): the same bound as what a subscriber
/// may send us, so that a client whose WebSocket library caps messages symmetrically takes every
/// batch. A line that alone would not fit (a line is at most 64 KiB before JSON escaping) goes
/// in a batch of its own, the one case a batch is bigger.
pub(super) const MAX_BATCH_FRAME_BYTES: usize = MAX_SUBSCRIBER_FRAME_BYTES;

/// A server text frame's header, at most (2 bytes plus a 64-bit length).
const MAX_FRAME_HEADER_BYTES: usize = 10;

/// How a subscriber is sent log lines (the stream's `batch` option).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum LogForm {
    /// One `log` frame per line: the spec's form, what Scalingo's clients read.
    #[default]
    PerLine,
    /// `log_batch` frames, each holding consecutive lines of one segment (`batch=lines`).
    Batched,
}

/// WebSocket frames encoded for the wire (header and payload), back to back in one buffer, so
/// that a subscriber sends any suffix of them with one copy into its write buffer.
#[derive(Debug, Default, Clone)]
pub(super) struct WireFrames {
    bytes: Bytes,
    /// Where each frame starts in `bytes`, in order.
    starts: Box<[usize]>,
}

impl WireFrames {
    /// `bytes` holds the frames; `starts` where each one begins (increasing, the first at 0).
    pub fn new(bytes: Bytes, starts: Vec<usize>) -> Self {
        debug_assert!(starts.first().is_none_or(|s| *s == 0));
        Self {
            bytes,
            starts: starts.into_boxed_slice(),
        }
    }

    /// How many frames there are.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The encoded bytes of frames `skip..`, shared with every other holder (no copy; empty
    /// when `skip >= len`).
    pub fn shared_from(&self, skip: usize) -> Bytes {
        match self.starts.get(skip) {
            Some(start) => self.bytes.slice(*start..),
            None => Bytes::new(),
        }
    }

    /// The encoded bytes of frames `skip..`, borrowed (empty when `skip >= len`).
    pub fn starting_at(&self, skip: usize) -> &[u8] {
        match self.starts.get(skip) {
            Some(start) => &self.bytes[*start..],
            None => &[],
        }
    }

    /// The encoded bytes of frame `i` (empty when there is none).
    #[cfg(test)]
    pub fn frame(&self, i: usize) -> &[u8] {
        let Some(start) = self.starts.get(i) else {
            return &[];
        };
        let end = self.starts.get(i + 1).copied().unwrap_or(self.bytes.len());
        &self.bytes[*start..end]
    }
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

/// Renders lines `skip..` of a segment starting at line `first` as `log_batch` frames into
/// `out`, `{"type":"log_batch","id":D,"data":{"lines":[L,…]},"seq":N,"at":T}` where `N` is the
/// number of the frame's first line (line `i` of `lines` is `N + i`) and `T` the segment's
/// time, as in a `log` frame. A frame ends before the line that would take it past
/// [`MAX_BATCH_FRAME_BYTES`] (it holds at least one line). Stops after `max_lines` lines, or at
/// the end of the frame that takes `out`'s size past `max_bytes`; returns how many lines it
/// rendered and pushes the segment index of each frame's first line to `firsts`.
#[allow(clippy::too_many_arguments)]
fn render_log_batches(
    out: &mut FramesBuilder,
    firsts: &mut Vec<usize>,
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
    let prefix = format!(r#"{{"type":"log_batch","id":"{deployment}","data":{{"lines":["#);
    let suffix = |seq: u64| format!(r#"]}},"seq":{seq},"at":"{at}"}}"#);
    // The suffix's longest form: the budget holds whatever the first line's number.
    let budget = MAX_BATCH_FRAME_BYTES - MAX_FRAME_HEADER_BYTES - suffix(u64::MAX).len();
    let mut line = Vec::new();
    let mut rendered = 0;
    // The segment index of the open frame's first line.
    let mut open: Option<usize> = None;
    let close = |out: &mut FramesBuilder, start: usize| {
        out.scratch
            .extend_from_slice(suffix(first.0 + start as u64).as_bytes());
        out.push_scratch();
    };
    for (i, (_, text)) in view.lines().enumerate().skip(skip) {
        if rendered >= max_lines {
            break;
        }
        line.clear();
        serde_json::to_writer(&mut line, text).expect("invariant: writing JSON to a Vec succeeds");
        rendered += 1;
        if let Some(start) = open {
            if out.scratch.len() + 1 + line.len() <= budget {
                out.scratch.push(b',');
                out.scratch.extend_from_slice(&line);
                continue;
            }
            close(out, start);
            if out.wire.len() >= max_bytes {
                return rendered - 1;
            }
        }
        firsts.push(i);
        out.scratch.extend_from_slice(prefix.as_bytes());
        out.scratch.extend_from_slice(&line);
        open = Some(i);
    }
    if let Some(start) = open {
        close(out, start);
    }
    rendered
}

/// A log event's `log_batch` frames (see [`event_batches`]).
#[derive(Debug, Default)]
pub(super) struct LogBatches {
    pub frames: WireFrames,
    /// The segment index of each frame's first line, increasing.
    firsts: Box<[usize]>,
    /// Lines the frames hold: every line of the segment, or 0 when it was too big to render for
    /// everyone (then subscribers read it from the store, as for `log` frames).
    pub lines: usize,
}

impl LogBatches {
    /// The frame that starts at segment line `skip` (its frames from there on are sent from
    /// the one rendering); `None` when `skip` falls inside a frame (then render the rest with
    /// [`log_batches_from`]).
    pub fn frame_at_line(&self, skip: usize) -> Option<usize> {
        self.firsts.binary_search(&skip).ok()
    }
}

/// Estimated bytes of a segment's `log_batch` frames.
fn batches_estimate(view: &SegmentView) -> usize {
    let frames = view.text.len() / MAX_BATCH_FRAME_BYTES + 1;
    view.text.len() + view.line_count() * BATCH_LINE_OVERHEAD + frames * LOG_FRAME_OVERHEAD
}

/// Renders a whole segment's `log_batch` frames, or none when they would take more than
/// [`MAX_RENDERED_EVENT_BYTES`].
fn render_batches(deployment: DeploymentId, first: LineNo, view: &SegmentView) -> LogBatches {
    let estimate = batches_estimate(view);
    if estimate > MAX_RENDERED_EVENT_BYTES {
        return LogBatches::default();
    }
    let mut out = FramesBuilder::with_capacity(estimate);
    let mut firsts = Vec::new();
    let lines = render_log_batches(
        &mut out,
        &mut firsts,
        deployment,
        first,
        view,
        0,
        usize::MAX,
        usize::MAX,
    );
    LogBatches {
        frames: out.finish(),
        firsts: firsts.into_boxed_slice(),
        lines,
    }
}

/// The `log_batch` frames of a log event's lines `skip..`, for the one subscriber whose
/// position falls inside a cached frame (a resume point mid-segment): rendered for it alone.
/// Empty for an event that is not a log event, or a segment that cannot be read.
pub(super) fn log_batches_from(event: &Event, skip: usize) -> WireFrames {
    let EventKind::Logs { first, segment } = &event.kind else {
        return WireFrames::default();
    };
    let Ok(view) = segment.view() else {
        return WireFrames::default();
    };
    let mut out = FramesBuilder::default();
    render_log_batches(
        &mut out,
        &mut Vec::new(),
        event.deployment_id,
        *first,
        &view,
        skip,
        usize::MAX,
        usize::MAX,
    );
    out.finish()
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
pub(super) fn text_frame(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 4);
    encode_frame(&mut out, opcode::TEXT, text.as_bytes());
    out
}

/// A `status` frame's JSON; `last_line` goes on the wire as `seq`.
pub(super) fn status_text(deployment: DeploymentId, status: Status, last_line: LineNo) -> String {
    format!(
        r#"{{"type":"status","id":"{deployment}","data":{{"status":"{}"}},"seq":{}}}"#,
        status.as_str(),
        last_line.0
    )
}

/// A `new` event in the spec's form: `data.deployment` is the id. The hub's events render it
/// (once for everyone); for the object form see [`new_frame`].
pub(super) fn new_text(deployment: DeploymentId) -> String {
    format!(r#"{{"type":"new","data":{{"deployment":"{deployment}"}}}}"#)
}

/// The encoded `new` frame of `deployment` in `form`: the id, or the deployment object as the
/// REST API shows it (`api::views::DeploymentView`, the shape Scalingo's Go CLI decodes there).
pub(super) fn new_frame(form: NewEventForm, deployment: &Deployment, public_url: &str) -> Vec<u8> {
    match form {
        NewEventForm::Id => text_frame(&new_text(deployment.id)),
        NewEventForm::Object => {
            let event = serde_json::json!({
                "type": "new",
                "id": deployment.id.to_string(),
                "data": { "deployment": DeploymentView::new(deployment, public_url) },
            });
            text_frame(&event.to_string())
        }
    }
}

pub(super) fn ping_frame() -> Vec<u8> {
    text_frame(&format!(
        r#"{{"type":"ping","data":{{"ts":{}}}}}"#,
        OffsetDateTime::now_utc().unix_timestamp()
    ))
}

/// A single text frame as [`WireFrames`].
fn single_frame(text: &str) -> WireFrames {
    WireFrames::new(Bytes::from(text_frame(text)), vec![0])
}

/// The frames of a hub event, encoded once for every subscriber (see [`event_frames`]).
fn render_event(event: &Event) -> WireFrames {
    match &event.kind {
        EventKind::New => single_frame(&new_text(event.deployment_id)),
        EventKind::Status { status, last_line } => {
            single_frame(&status_text(event.deployment_id, *status, *last_line))
        }
        EventKind::Logs { first, segment } => match segment.view() {
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

/// Frames of the stored lines after `after`, in `form`, up to [`CATCH_UP_SEGMENTS_PER_READ`]
/// segments, and the last line number included (`after` when there is none). A batch never
/// spans two segments, and the first one starts at the line after `after`.
pub(super) fn read_log_frames(
    store: &Store,
    id: DeploymentId,
    after: LineNo,
    until: LineNo,
    form: LogForm,
) -> Result<(WireFrames, LineNo), StoreError> {
    let mut out = FramesBuilder::default();
    let mut firsts = Vec::new();
    let mut last = after;
    for entry in store
        .segments_after(id, after)
        .take(CATCH_UP_SEGMENTS_PER_READ)
    {
        let (first, segment) = entry?;
        if first > until {
            break;
        }
        let view = segment.view()?;
        let end = first.0 + view.line_count() as u64 - 1;
        if end <= last.0 {
            continue;
        }
        let skip = last.0.saturating_sub(first.0 - 1) as usize;
        let wanted = (end.min(until.0) - last.0) as usize;
        let rendered = match form {
            LogForm::PerLine => {
                render_log_lines(&mut out, id, first, &view, skip, wanted, MAX_READ_BYTES)
            }
            LogForm::Batched => render_log_batches(
                &mut out,
                &mut firsts,
                id,
                first,
                &view,
                skip,
                wanted,
                MAX_READ_BYTES,
            ),
        };
        last = LineNo(last.0 + rendered as u64);
        if out.wire.len() >= MAX_READ_BYTES || last >= until {
            break;
        }
    }
    debug_assert!(form == LogForm::Batched || out.len() as u64 == last.0 - after.0);
    Ok((out.finish(), last))
}

/// What an event's render cache holds: each form rendered by the first subscriber that needs
/// it, so an app whose subscribers all read one form never renders the other.
#[derive(Default)]
struct EventRender {
    frames: OnceLock<WireFrames>,
    batches: OnceLock<LogBatches>,
}

fn render_cache(event: &Event) -> &EventRender {
    event.render_cache().get_or_init(EventRender::default)
}

/// The frames of a hub event (`log` frames for a log event): rendered by the first subscriber
/// that asks, then shared by all (the event's render cache holds them; no subscriber copies or
/// re-renders them).
pub(super) fn event_frames(event: &Event) -> &WireFrames {
    render_cache(event)
        .frames
        .get_or_init(|| render_event(event))
}

/// The `log_batch` frames of a log event, cached like [`event_frames`]; `None` for other events.
pub(super) fn event_batches(event: &Event) -> Option<&LogBatches> {
    let EventKind::Logs { first, segment } = &event.kind else {
        return None;
    };
    Some(render_cache(event).batches.get_or_init(|| match segment.view() {
        Ok(view) => render_batches(event.deployment_id, *first, &view),
        Err(err) => {
            tracing::error!(error = %err, deployment = %event.deployment_id, "unreadable segment in a hub event");
            LogBatches::default()
        }
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::model::LogStream;
    use crate::store::codec::encode_segment;
    use crate::ws::text_payload;

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
        assert_eq!(all.starting_at(1), all.frame(1));
        let value: Value = serde_json::from_slice(text_payload(all.frame(0))).unwrap();
        assert_eq!(value["data"]["content"], "a \"quoted\"");
        assert_eq!(value["seq"], 41);
    }

    /// Every frame of `frames`, parsed.
    fn parsed(frames: &WireFrames) -> Vec<Value> {
        (0..frames.len())
            .map(|i| serde_json::from_slice(text_payload(frames.frame(i))).unwrap())
            .collect()
    }

    /// The (line number, text) pairs `log_batch` frames carry, in order.
    fn batch_lines(frames: &[Value]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for frame in frames {
            assert_eq!(frame["type"], "log_batch", "{frame}");
            let seq = frame["seq"].as_u64().unwrap();
            for (i, line) in frame["data"]["lines"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                out.push((seq + i as u64, line.as_str().unwrap().to_owned()));
            }
        }
        out
    }

    #[test]
    fn a_log_batch_holds_the_segment_lines_from_the_skip_point_numbered_from_its_seq() {
        let lines = [
            (LogStream::Stdout, "a \"quoted\""),
            (LogStream::Stderr, "b\\c"),
            (LogStream::Stdout, ""),
        ];
        let bytes = encode_segment(OffsetDateTime::UNIX_EPOCH, lines.iter().copied(), 16);
        let view = SegmentView::parse(&bytes).unwrap();
        let id = DeploymentId::from_bytes([1; 16]);
        let batches = render_batches(id, LineNo(41), &view);
        assert_eq!(batches.lines, 3);
        assert_eq!(batches.frames.len(), 1);
        let frames = parsed(&batches.frames);
        assert_eq!(frames[0]["id"], id.to_string());
        assert_eq!(frames[0]["at"], "1970-01-01T00:00:00Z");
        assert_eq!(
            batch_lines(&frames),
            vec![
                (41, "a \"quoted\"".to_owned()),
                (42, "b\\c".to_owned()),
                (43, String::new())
            ]
        );
        // A resume point inside the frame: rendered apart, starting at the next line.
        assert_eq!(batches.frame_at_line(0), Some(0));
        assert!(batches.frame_at_line(1).is_none());
        let mut out = FramesBuilder::default();
        let rendered = render_log_batches(
            &mut out,
            &mut Vec::new(),
            id,
            LineNo(41),
            &view,
            1,
            usize::MAX,
            usize::MAX,
        );
        assert_eq!(rendered, 2);
        let rest = parsed(&out.finish());
        assert_eq!(rest[0]["seq"], 42);
        assert_eq!(batch_lines(&rest).len(), 2);
    }

    #[test]
    fn log_batches_split_so_no_frame_exceeds_the_frame_bound_and_lose_no_line() {
        let texts: Vec<String> = (0..3000)
            .map(|i| format!("line {i} {}", "x".repeat(i % 97)))
            .collect();
        let lines: Vec<(LogStream, &str)> = texts
            .iter()
            .map(|t| (LogStream::Stdout, t.as_str()))
            .collect();
        let bytes = encode_segment(OffsetDateTime::UNIX_EPOCH, lines.iter().copied(), 3000);
        let view = SegmentView::parse(&bytes).unwrap();
        let id = DeploymentId::from_bytes([2; 16]);
        let batches = render_batches(id, LineNo(1), &view);
        assert_eq!(batches.lines, 3000);
        assert!(
            batches.frames.len() > 1,
            "{} bytes of text fit one frame",
            view.text.len()
        );
        for i in 0..batches.frames.len() {
            let size = batches.frames.frame(i).len();
            assert!(size <= MAX_BATCH_FRAME_BYTES, "frame {i} is {size} bytes");
        }
        let frames = parsed(&batches.frames);
        let got = batch_lines(&frames);
        let want: Vec<(u64, String)> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64 + 1, t.clone()))
            .collect();
        assert_eq!(got, want);
        // Each frame's first line is where its cached suffix starts.
        for frame in &frames {
            let seq = frame["seq"].as_u64().unwrap();
            let frame = batches
                .frame_at_line(seq as usize - 1)
                .expect("a frame starts there");
            assert_eq!(frame, batch_index(&frames, seq));
        }
    }

    fn batch_index(frames: &[Value], seq: u64) -> usize {
        frames.iter().position(|f| f["seq"] == seq).unwrap()
    }

    #[test]
    fn a_line_too_big_for_a_batch_with_others_goes_in_a_batch_of_its_own() {
        let big = "y".repeat(MAX_BATCH_FRAME_BYTES - 100);
        let lines = [
            (LogStream::Stdout, "before"),
            (LogStream::Stdout, big.as_str()),
            (LogStream::Stdout, "after"),
        ];
        let bytes = encode_segment(OffsetDateTime::UNIX_EPOCH, lines.iter().copied(), 3);
        let view = SegmentView::parse(&bytes).unwrap();
        let batches = render_batches(DeploymentId::from_bytes([3; 16]), LineNo(10), &view);
        let frames = parsed(&batches.frames);
        let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![10, 11, 12]);
        assert_eq!(batch_lines(&frames)[1].1, big);
    }

    #[test]
    fn a_batch_render_stops_at_the_line_limit_and_after_the_frame_past_the_byte_limit() {
        let texts: Vec<String> = (0..2000).map(|i| format!("{i:0>100}")).collect();
        let lines: Vec<(LogStream, &str)> = texts
            .iter()
            .map(|t| (LogStream::Stdout, t.as_str()))
            .collect();
        let bytes = encode_segment(OffsetDateTime::UNIX_EPOCH, lines.iter().copied(), 2000);
        let view = SegmentView::parse(&bytes).unwrap();
        let id = DeploymentId::from_bytes([4; 16]);
        let mut out = FramesBuilder::default();
        let rendered = render_log_batches(
            &mut out,
            &mut Vec::new(),
            id,
            LineNo(1),
            &view,
            5,
            7,
            usize::MAX,
        );
        assert_eq!(rendered, 7);
        let got = batch_lines(&parsed(&out.finish()));
        assert_eq!(got.first().map(|l| l.0), Some(6));
        assert_eq!(got.len(), 7);
        let mut out = FramesBuilder::default();
        let rendered = render_log_batches(
            &mut out,
            &mut Vec::new(),
            id,
            LineNo(1),
            &view,
            0,
            usize::MAX,
            1,
        );
        let frames = out.finish();
        assert_eq!(frames.len(), 1, "stops after the first frame");
        assert_eq!(batch_lines(&parsed(&frames)).len(), rendered);
        assert!(rendered < 2000);
    }
}
