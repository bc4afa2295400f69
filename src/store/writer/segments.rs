//! Cutting appended lines into stored segments: each `\n`-separated piece is one stored line
//! (a trailing `\r` dropped, at most [`MAX_LINE_BYTES`]), packed into segments of at most
//! [`MAX_SEGMENT_BYTES`], each a file append plus its index entry in the group.
//!
//! It numbers lines from the `first` it is given and never decides which lines a deployment may
//! take (that is `lifecycle`); it does no I/O (the group commit writes what it adds).

use time::OffsetDateTime;

use super::group::{put, Group};
use crate::lines::{self, MAX_LINE_BYTES};
use crate::model::{AppId, DeploymentId, LineNo, LogStream, NewLine};
use crate::store::events::{Event, EventKind};
use crate::store::{codec, Segment, MAX_SEGMENT_BYTES};

/// How many stored lines `lines` make (one per `\n`-separated piece). Counted before the
/// lines are cut into segments (the lifecycle hands out their numbers first), so it is one
/// SIMD scan per line rather than a second split.
pub(crate) fn line_count(lines: &[NewLine]) -> u64 {
    lines
        .iter()
        .map(|line| 1 + memchr::memchr_iter(b'\n', line.text.as_bytes()).count() as u64)
        .sum()
}

/// Splits `lines` into stored lines numbered from `first` ([`line_count`] of them), encodes
/// them as segments, adds them (file appends at `log_end` and their index entries) to the group,
/// and advances `log_end`. Returns the hub events.
pub(crate) fn append_segments(
    (app, deployment): (AppId, DeploymentId),
    first: LineNo,
    log_end: &mut u64,
    lines: &[NewLine],
    stored_at: OffsetDateTime,
    group: &mut Group,
) -> Vec<Event> {
    let pieces = lines.iter().flat_map(|line| {
        lines::split_text(&line.text, MAX_LINE_BYTES).map(move |piece| (line.stream, piece))
    });
    let mut next_line = first;
    let mut events = Vec::new();
    let mut chunk: Vec<(LogStream, &str)> = Vec::new();
    let mut chunk_bytes = 0;
    let mut flush =
        |chunk: &mut Vec<(LogStream, &str)>, chunk_bytes: &mut usize, group: &mut Group| {
            if chunk.is_empty() {
                return;
            }
            let first = next_line;
            let segment = Segment::encode(stored_at, chunk.iter().copied(), *chunk_bytes);
            group.text_bytes += *chunk_bytes;
            let reference = codec::SegmentRef {
                offset: *log_end,
                len: u32::try_from(segment.len())
                    .expect("invariant: segments are at most MAX_SEGMENT_BYTES plus a header"),
                lines: u32::try_from(chunk.len()).expect("invariant: a segment holds < 2^32 lines"),
            };
            group.appends.push((deployment, *log_end, segment.clone()));
            *log_end = reference.end();
            group.ops.push(put(
                codec::segment_key(deployment, first),
                codec::encode_segment_ref(&reference),
            ));
            next_line = LineNo(first.0 + chunk.len() as u64);
            events.push(Event::new(
                app,
                deployment,
                EventKind::Logs { first, segment },
            ));
            chunk.clear();
            *chunk_bytes = 0;
        };
    for (stream, text) in pieces {
        if chunk_bytes + text.len() + 2 > MAX_SEGMENT_BYTES {
            flush(&mut chunk, &mut chunk_bytes, group);
        }
        chunk_bytes += text.len();
        chunk.push((stream, text));
    }
    flush(&mut chunk, &mut chunk_bytes, group);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_lines_are_numbered_from_first_and_counted_as_line_count_says() {
        let lines = vec![NewLine::stdout("a\r\nb"), NewLine::stderr("c")];
        assert_eq!(line_count(&lines), 3);
        let mut group = Group::default();
        let mut log_end = 10;
        let events = append_segments(
            (AppId::generate(), DeploymentId::generate()),
            LineNo(5),
            &mut log_end,
            &lines,
            OffsetDateTime::UNIX_EPOCH,
            &mut group,
        );
        assert_eq!(events.len(), 1);
        assert!(matches!(
            events[0].kind,
            EventKind::Logs {
                first: LineNo(5),
                ..
            }
        ));
        let (_, offset, segment) = &group.appends[0];
        assert_eq!(*offset, 10);
        assert_eq!(log_end, 10 + segment.len() as u64);
        let view = segment.view().expect("segment");
        assert_eq!(view.text, b"a\nb\nc\n");
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let text = "é".repeat(MAX_LINE_BYTES);
        let cut = lines::cut(&text, MAX_LINE_BYTES - 1);
        assert_eq!(cut.len(), MAX_LINE_BYTES - 2);
    }
}
