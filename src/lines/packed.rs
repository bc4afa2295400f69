//! [`Lines`]: log lines on their way to the store, already in the form the store keeps them.
//!
//! The store writer is one thread that every append passes through. It used to take each line
//! as its own `String` and, on that thread, scan it for `\n` twice (to count, then to split),
//! copy it piece by piece into a segment and free it (a `free` of memory another thread
//! allocated): a third of the writer's time at 4 M lines/s. A `Lines` is built by the caller
//! (a pusher's task, the executor) instead: every stored line is cut and split there by
//! [`split_text`]'s rule, and the text is packed back to back, each line followed by `\n`,
//! exactly as a segment holds it. The writer counts lines in O(1), copies a segment's text
//! with one `memcpy`, and frees two buffers per append.

use super::{cut, split_text, MAX_LINE_BYTES};
use crate::model::{LogStream, NewLine};

/// Stored lines of one append, in order: each is a `\n`-free piece of a line the caller gave
/// (a given line with `\n` in it is several stored lines), at most [`MAX_LINE_BYTES`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lines {
    /// Every stored line's text followed by `\n`, back to back (valid UTF-8).
    text: String,
    lines: Vec<Stored>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stored {
    /// Offset in `text` just past this line's `\n`.
    end: usize,
    stream: LogStream,
    /// The first stored line of a line the caller gave (the log limit keeps or drops given
    /// lines whole, and counts them).
    starts_given: bool,
}

impl Lines {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `lines` given lines of `bytes` bytes of text in all.
    pub fn with_capacity(lines: usize, bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes + lines),
            lines: Vec::with_capacity(lines),
        }
    }

    /// Adds one given line: one stored line per `\n`-separated piece of `text`, each without
    /// one trailing `\r` and cut to [`MAX_LINE_BYTES`] ([`split_text`]).
    pub fn push(&mut self, stream: LogStream, text: &str) {
        if memchr::memchr(b'\n', text.as_bytes()).is_none() {
            // Nearly every line: one piece, found by one SIMD scan.
            let piece = cut(text.strip_suffix('\r').unwrap_or(text), MAX_LINE_BYTES);
            self.push_stored(stream, piece, true);
            return;
        }
        let mut starts_given = true;
        for piece in split_text(text, MAX_LINE_BYTES) {
            self.push_stored(stream, piece, starts_given);
            starts_given = false;
        }
    }

    fn push_stored(&mut self, stream: LogStream, piece: &str, starts_given: bool) {
        self.text.push_str(piece);
        self.text.push('\n');
        self.lines.push(Stored {
            end: self.text.len(),
            stream,
            starts_given,
        });
    }

    /// Given lines of one stream.
    pub fn of_stream<S: AsRef<str>>(stream: LogStream, texts: &[S]) -> Self {
        let bytes = texts.iter().map(|t| t.as_ref().len()).sum();
        let mut lines = Self::with_capacity(texts.len(), bytes);
        for text in texts {
            lines.push(stream, text.as_ref());
        }
        lines
    }

    /// Stored lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The stored lines, without their `\n`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (LogStream, &str)> + Clone + '_ {
        (0..self.lines.len()).map(|i| (self.lines[i].stream, self.line(i)))
    }

    /// The `i`-th stored line's text, without its `\n`.
    fn line(&self, i: usize) -> &str {
        &self.text[self.start(i)..self.lines[i].end - 1]
    }

    /// Offset in the packed text where the `i`-th stored line starts (`i` may be `len()`).
    fn start(&self, i: usize) -> usize {
        match i.checked_sub(1) {
            Some(before) => self.lines[before].end,
            None => 0,
        }
    }

    /// Bytes a stored line adds to a log file apart from segment headers: its text, its `\n`
    /// and its stream code.
    pub(crate) fn stored_cost(&self, i: usize) -> u64 {
        (self.lines[i].end - self.start(i)) as u64 + 1
    }

    /// [`Self::stored_cost`] of every stored line.
    pub(crate) fn stored_cost_of_all(&self) -> u64 {
        (self.text.len() + self.lines.len()) as u64
    }

    /// Whether the `i`-th stored line is the first of a line the caller gave.
    pub(crate) fn starts_given(&self, i: usize) -> bool {
        self.lines[i].starts_given
    }

    /// Text bytes of the stored lines `from..to`, without their `\n`s.
    pub(crate) fn text_len(&self, from: usize, to: usize) -> usize {
        self.start(to) - self.start(from) - (to - from)
    }

    /// The stored lines `from..to` as a segment holds them: their streams, and their text with
    /// each `\n`.
    pub(crate) fn packed(
        &self,
        from: usize,
        to: usize,
    ) -> (impl ExactSizeIterator<Item = LogStream> + '_, &[u8]) {
        let streams = self.lines[from..to].iter().map(|line| line.stream);
        (
            streams,
            &self.text.as_bytes()[self.start(from)..self.start(to)],
        )
    }

    /// Keeps the first `keep` stored lines.
    pub(crate) fn truncate(&mut self, keep: usize) {
        if keep < self.lines.len() {
            let end = self.start(keep);
            self.lines.truncate(keep);
            self.text.truncate(end);
        }
    }

    /// Adds every stored line of `other` after these (as given lines of their own).
    pub(crate) fn extend(&mut self, other: &Lines) {
        let base = self.text.len();
        self.text.push_str(&other.text);
        self.lines.extend(other.lines.iter().map(|line| Stored {
            end: base + line.end,
            ..*line
        }));
    }
}

impl From<Vec<NewLine>> for Lines {
    fn from(given: Vec<NewLine>) -> Self {
        let bytes = given.iter().map(|line| line.text.len()).sum();
        let mut lines = Lines::with_capacity(given.len(), bytes);
        for line in &given {
            lines.push(line.stream, &line.text);
        }
        lines
    }
}

impl From<NewLine> for Lines {
    fn from(line: NewLine) -> Self {
        let mut lines = Lines::with_capacity(1, line.text.len());
        lines.push(line.stream, &line.text);
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_lines_are_split_on_newlines_without_a_trailing_cr_and_packed_as_a_segment_holds_them()
    {
        let lines = Lines::from(vec![NewLine::stdout("a\r\nb"), NewLine::stderr("c\r")]);
        assert_eq!(lines.len(), 3);
        let stored: Vec<_> = lines.iter().collect();
        assert_eq!(
            stored,
            [
                (LogStream::Stdout, "a"),
                (LogStream::Stdout, "b"),
                (LogStream::Stderr, "c")
            ]
        );
        let (streams, text) = lines.packed(0, 3);
        assert_eq!(text, b"a\nb\nc\n");
        assert_eq!(streams.len(), 3);
        let (_, middle) = lines.packed(1, 2);
        assert_eq!(middle, b"b\n");
        assert_eq!(lines.text_len(0, 3), 3);
        assert!(lines.starts_given(0) && !lines.starts_given(1) && lines.starts_given(2));
        assert_eq!(lines.stored_cost(0), 3);
    }

    #[test]
    fn an_empty_given_line_is_one_empty_stored_line() {
        let lines = Lines::of_stream(LogStream::Stdout, &["", "x"]);
        assert_eq!(lines.iter().collect::<Vec<_>>().len(), 2);
        assert_eq!(lines.packed(0, 2).1, b"\nx\n");
    }

    #[test]
    fn an_overlong_line_is_cut_on_a_char_boundary() {
        let text = "é".repeat(MAX_LINE_BYTES);
        let lines = Lines::of_stream(LogStream::Stdout, &[text]);
        let (_, line) = lines.iter().next().expect("one line");
        assert_eq!(line.len(), MAX_LINE_BYTES);
        assert!(line.chars().all(|c| c == 'é'));
    }

    #[test]
    fn truncate_and_extend_keep_offsets_consistent() {
        let mut lines = Lines::of_stream(LogStream::Stdout, &["one", "two", "three"]);
        lines.truncate(2);
        assert_eq!(lines.packed(0, 2).1, b"one\ntwo\n");
        lines.extend(&Lines::of_stream(LogStream::System, &["note"]));
        let stored: Vec<_> = lines.iter().map(|(_, t)| t).collect();
        assert_eq!(stored, ["one", "two", "note"]);
        assert!(lines.starts_given(2));
        assert_eq!(lines.text_len(1, 3), 7);
    }
}
