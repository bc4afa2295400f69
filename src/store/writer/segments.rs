//! Packing appended lines into stored segments: each stored line of a [`Lines`] (already split
//! and cut by the caller) is one line of a segment, at most [`MAX_SEGMENT_BYTES`] each, each a
//! file append plus its index entry in the group.
//!
//! It numbers lines from the `first` it is given and never decides which lines a deployment may
//! take (that is `lifecycle`); it does no I/O (the group commit writes what it adds).

use time::OffsetDateTime;

use super::group::{put, Group};
use crate::lines::Lines;
use crate::model::{AppId, DeploymentId, LineNo};
use crate::store::events::{Event, EventKind};
use crate::store::{codec, Segment, MAX_SEGMENT_BYTES};

/// Encodes `lines` (numbered from `first`, `lines.len()` of them) as segments, adds them (file
/// appends at `log_end` and their index entries) to the group, and advances `log_end`. Returns
/// the hub events.
pub(crate) fn append_segments(
    (app, deployment): (AppId, DeploymentId),
    first: LineNo,
    log_end: &mut u64,
    lines: &Lines,
    stored_at: OffsetDateTime,
    group: &mut Group,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut flush = |from: usize, to: usize, group: &mut Group| {
        if from == to {
            return;
        }
        let first = LineNo(first.0 + from as u64);
        let (streams, text) = lines.packed(from, to);
        let segment = Segment::encode_packed(stored_at, streams, text);
        group.text_bytes += lines.text_len(from, to);
        let reference = codec::SegmentRef {
            offset: *log_end,
            len: u32::try_from(segment.len())
                .expect("invariant: segments are at most MAX_SEGMENT_BYTES plus a header"),
            lines: u32::try_from(to - from).expect("invariant: a segment holds < 2^32 lines"),
        };
        group.appends.push((deployment, *log_end, segment.clone()));
        *log_end = reference.end();
        group.ops.push(put(
            codec::segment_key(deployment, first),
            codec::encode_segment_ref(&reference),
        ));
        events.push(Event::new(
            app,
            deployment,
            EventKind::Logs { first, segment },
        ));
    };
    // A segment ends before a line that would take its text (plus that line's `\n` and stream
    // code) past MAX_SEGMENT_BYTES, and holds at least one line. The text length of `from..to`
    // grows with `to`, so the end is a binary search, not a walk over every line.
    let mut from = 0;
    while from < lines.len() {
        let fits = |to: usize| lines.text_len(from, to) + 2 <= MAX_SEGMENT_BYTES;
        let (mut low, mut high) = (from + 1, lines.len());
        if !fits(high) {
            // `low` is always taken; find the last `to` in low..high that fits.
            while low + 1 < high {
                let middle = low + (high - low) / 2;
                if fits(middle) {
                    low = middle;
                } else {
                    high = middle;
                }
            }
            high = low;
        }
        flush(from, high, group);
        from = high;
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lines::{self, MAX_LINE_BYTES};
    use crate::model::{LogStream, NewLine};

    /// `append_segments` of one new deployment's lines, stored at the epoch.
    fn append(first: LineNo, log_end: &mut u64, lines: &Lines, group: &mut Group) -> Vec<Event> {
        let at = OffsetDateTime::UNIX_EPOCH;
        let ids = (AppId::generate(), DeploymentId::generate());
        append_segments(ids, first, log_end, lines, at, group)
    }

    /// Each log event's first line number and line count.
    fn segments(events: &[Event]) -> Vec<(u64, usize)> {
        events
            .iter()
            .map(|event| match &event.kind {
                EventKind::Logs { first, segment } => {
                    (first.0, segment.view().expect("segment").line_count())
                }
                other => panic!("not a log event: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn stored_lines_are_numbered_from_first_and_packed_into_one_segment() {
        let lines = Lines::from(vec![NewLine::stdout("a\r\nb"), NewLine::stderr("c")]);
        assert_eq!(lines.len(), 3);
        let mut group = Group::default();
        let mut log_end = 10;
        let events = append(LineNo(5), &mut log_end, &lines, &mut group);
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
    fn lines_past_a_segments_size_start_the_next_segment_numbered_on() {
        let line = "x".repeat(MAX_LINE_BYTES);
        let lines = Lines::of_stream(LogStream::Stdout, &vec![line; 17]);
        let mut group = Group::default();
        let mut log_end = 0;
        let events = append(LineNo(1), &mut log_end, &lines, &mut group);
        assert_eq!(segments(&events), [(1, 15), (16, 2)]);
        let (_, second_offset, _) = &group.appends[1];
        assert_eq!(*second_offset, group.appends[0].2.len() as u64);
        assert_eq!(log_end, second_offset + group.appends[1].2.len() as u64);
        assert!(group
            .appends
            .iter()
            .all(|(_, _, s)| s.len() <= MAX_SEGMENT_BYTES + 64));
        assert_eq!(group.text_bytes, 17 * MAX_LINE_BYTES);
    }

    #[test]
    fn segments_end_where_a_walk_over_every_line_would_end_them() {
        // Line lengths cycling through sizes around a segment's, so cuts fall everywhere.
        let texts: Vec<String> = (0..200)
            .map(|i| "y".repeat([0, 1, 40_000, MAX_LINE_BYTES, 777, 65_000][i % 6] + i))
            .map(|t| lines::cut(&t, MAX_LINE_BYTES).to_owned())
            .collect();
        let lines = Lines::of_stream(LogStream::Stdout, &texts);
        // The rule, one line at a time.
        let mut expected = Vec::new();
        let (mut count, mut bytes) = (0usize, 0usize);
        for text in &texts {
            if count > 0 && bytes + text.len() + 2 > MAX_SEGMENT_BYTES {
                expected.push(count);
                (count, bytes) = (0, 0);
            }
            count += 1;
            bytes += text.len();
        }
        expected.push(count);
        let events = append(LineNo(1), &mut 0, &lines, &mut Group::default());
        let got: Vec<usize> = segments(&events).iter().map(|(_, lines)| *lines).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let text = "é".repeat(MAX_LINE_BYTES);
        let cut = lines::cut(&text, MAX_LINE_BYTES - 1);
        assert_eq!(cut.len(), MAX_LINE_BYTES - 2);
    }
}
