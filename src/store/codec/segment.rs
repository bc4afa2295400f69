//! The byte formats of log text: a segment (the lines of one append, with their streams and
//! the time they were stored, as laid out in the log files) and a segment reference (where a
//! segment lies in its deployment's log file, the value of a `0x0B` index entry). The layouts
//! are the tables in [`super`]'s module doc; this module only encodes and decodes them.

use time::OffsetDateTime;

use super::{
    log_stream_code, log_stream_from_code, nanos, CodecError, SEGMENT_HEADER, SEGMENT_REF_LEN,
    SEGMENT_REF_V1, SEGMENT_V1,
};
use crate::model::LogStream;

/// Where a segment lies in its deployment's log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRef {
    pub offset: u64,
    pub len: u32,
    pub lines: u32,
}

impl SegmentRef {
    /// The file offset just past this segment.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

pub fn encode_segment_ref(segment: &SegmentRef) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEGMENT_REF_LEN);
    out.push(SEGMENT_REF_V1);
    out.extend_from_slice(&segment.offset.to_be_bytes());
    out.extend_from_slice(&segment.len.to_be_bytes());
    out.extend_from_slice(&segment.lines.to_be_bytes());
    out
}

pub fn decode_segment_ref(bytes: &[u8]) -> Result<SegmentRef, CodecError> {
    match bytes.first() {
        None => return Err(CodecError::Empty),
        Some(&SEGMENT_REF_V1) => {}
        Some(&other) => return Err(CodecError::UnknownFormat(other)),
    }
    if bytes.len() != SEGMENT_REF_LEN {
        return Err(CodecError::Corrupt("segment reference length"));
    }
    Ok(SegmentRef {
        offset: u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")),
        len: u32::from_be_bytes(bytes[9..13].try_into().expect("4 bytes")),
        lines: u32::from_be_bytes(bytes[13..17].try_into().expect("4 bytes")),
    })
}

/// Encodes one segment from lines that contain no `\n`. `text_len` is the sum of the lines'
/// lengths (a capacity hint). Panics if there are more than `u32::MAX` lines: the writer caps
/// a segment far below that (`store::MAX_SEGMENT_BYTES`).
pub fn encode_segment<'a>(
    stored_at: OffsetDateTime,
    lines: impl ExactSizeIterator<Item = (LogStream, &'a str)> + Clone,
    text_len: usize,
) -> Vec<u8> {
    let n = lines.len();
    let mut out = Vec::with_capacity(SEGMENT_HEADER + n + text_len + n);
    out.push(SEGMENT_V1);
    out.extend_from_slice(&nanos(stored_at).to_be_bytes());
    let count = u32::try_from(n).expect("invariant: a segment holds fewer than 2^32 lines");
    out.extend_from_slice(&count.to_be_bytes());
    out.extend(lines.clone().map(|(stream, _)| log_stream_code(stream)));
    for (_, text) in lines {
        debug_assert!(!text.contains('\n'));
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Encodes one segment from lines already laid out as its text: `text` is every line followed
/// by `\n`, one stream per line (the store writer's [`crate::lines::Lines`]). The same bytes as
/// [`encode_segment`] of those lines, with the text copied in one piece.
pub fn encode_packed_segment(
    stored_at: OffsetDateTime,
    streams: impl ExactSizeIterator<Item = LogStream>,
    text: &[u8],
) -> Vec<u8> {
    let n = streams.len();
    debug_assert_eq!(memchr::memchr_iter(b'\n', text).count(), n);
    let mut out = Vec::with_capacity(SEGMENT_HEADER + n + text.len());
    out.push(SEGMENT_V1);
    out.extend_from_slice(&nanos(stored_at).to_be_bytes());
    let count = u32::try_from(n).expect("invariant: a segment holds fewer than 2^32 lines");
    out.extend_from_slice(&count.to_be_bytes());
    out.extend(streams.map(log_stream_code));
    out.extend_from_slice(text);
    out
}

/// A decoded view of a segment, borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct SegmentView<'a> {
    pub stored_at_nanos: i64,
    pub streams: &'a [u8],
    /// Every line followed by `\n`: exactly what `/output` sends.
    pub text: &'a [u8],
}

impl<'a> SegmentView<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, CodecError> {
        match bytes.first() {
            None => return Err(CodecError::Empty),
            Some(&SEGMENT_V1) => {}
            Some(&other) => return Err(CodecError::UnknownFormat(other)),
        }
        if bytes.len() < SEGMENT_HEADER {
            return Err(CodecError::Corrupt("segment header"));
        }
        let stored_at_nanos = i64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let n = u32::from_be_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
        let streams = bytes
            .get(SEGMENT_HEADER..SEGMENT_HEADER + n)
            .ok_or(CodecError::Corrupt("segment streams"))?;
        let text = &bytes[SEGMENT_HEADER + n..];
        Ok(Self {
            stored_at_nanos,
            streams,
            text,
        })
    }

    pub fn line_count(&self) -> usize {
        self.streams.len()
    }

    /// The text from the `skip`-th line (0-based) to the end of the segment.
    pub fn text_from_line(&self, skip: usize) -> &'a [u8] {
        if skip == 0 {
            return self.text;
        }
        let mut seen = 0;
        for (i, byte) in self.text.iter().enumerate() {
            if *byte == b'\n' {
                seen += 1;
                if seen == skip {
                    return &self.text[i + 1..];
                }
            }
        }
        &[]
    }

    /// Each line (without its `\n`) with its stream.
    pub fn lines(&self) -> impl Iterator<Item = (LogStream, &'a str)> + 'a {
        let streams = self.streams;
        let text = self.text;
        text.split(|b| *b == b'\n')
            .zip(streams.iter())
            .map(|(line, code)| {
                (
                    log_stream_from_code(*code).unwrap_or(LogStream::Stdout),
                    // Lines are stored from `&str`, so this only fails on a corrupt segment.
                    std::str::from_utf8(line).unwrap_or("\u{FFFD}"),
                )
            })
    }
}
