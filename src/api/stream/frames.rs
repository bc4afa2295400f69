//! What subscribers are sent, as WebSocket frames: the JSON texts (`log`, `status`, `new` in
//! either form of `[stream] new_event`, `ping`), a hub event's frames ([`event_frames`], rendered once per event for every
//! subscriber and cached in the event), and the frames of stored lines read for a replay or a
//! catch-up ([`read_log_frames`]).
//!
//! It renders only: it decides nothing about what a subscriber still needs (that is
//! `cursor`'s) and writes to no socket (that is `subscriber`'s). Byte-level framing is
//! `crate::ws`'s.

use bytes::Bytes;
use time::OffsetDateTime;

use super::{CATCH_UP_SEGMENTS_PER_READ, MAX_READ_BYTES, MAX_RENDERED_EVENT_BYTES};
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

    /// The encoded bytes of frames `skip..` (empty when `skip >= len`).
    #[cfg(test)]
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

/// Frames of the stored lines after `after`, up to [`CATCH_UP_SEGMENTS_PER_READ`] segments, and
/// the last line number included (`after` when there is none).
pub(super) fn read_log_frames(
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
        let rendered = render_log_lines(&mut out, id, first, &view, skip, wanted, MAX_READ_BYTES);
        last = LineNo(last.0 + rendered as u64);
        if out.wire.len() >= MAX_READ_BYTES || last >= until {
            break;
        }
    }
    debug_assert_eq!(out.len() as u64, last.0 - after.0);
    Ok((out.finish(), last))
}

/// The frames of a hub event: rendered by the first subscriber that asks, then shared by all
/// (the event's render cache holds them; no subscriber copies or re-renders them).
pub(super) fn event_frames(event: &Event) -> &WireFrames {
    event.render_cache().get_or_init(|| render_event(event))
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
}
