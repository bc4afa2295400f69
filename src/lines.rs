//! Output lines: how the bytes a command prints become log lines, how long a line may be, and
//! how lines are grouped into batches. One definition for every path a line takes, so a line is
//! split and cut the same way whether the built-in executor (`pipeline::stages`), an external
//! pusher (`cli::push`) or the store writer handles it.
//!
//! - [`LineSplitter`] turns a byte stream into lines: a line ends at `\n`, one trailing `\r` is
//!   dropped (`\r\n` output, and a `\r` left at the end), invalid UTF-8 is replaced (build output
//!   is whatever the tools print), and no line is ever buffered beyond its limit. What happens to
//!   the rest of an overlong line is the caller's [`Overlong`] choice.
//! - [`cut`] and [`cut_line`] cut a line to a limit on a char boundary; [`split_text`] is the
//!   store's view of a line handed to `append_logs` (one stored line per `\n`-separated piece).
//! - [`read_lines`] feeds a pipe through a splitter into a channel (both process runners use it).
//! - [`Batcher`] groups lines into batches under [`MAX_BATCH_LINES`] and [`MAX_BATCH_BYTES`],
//!   due a caller-chosen window after their first line.
//!
//! It owns no process, no socket and no storage: callers bring the pipe, the channel and the
//! clock, and decide where batches go.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::model::{LogStream, NewLine};

mod packed;
pub use packed::Lines;

/// Longest line in bytes anywhere: what a pusher sends, what the store keeps. Longer lines are
/// cut (or split, see `Overlong`) on a char boundary. 64 KiB holds any line a human reads and
/// most minified bundles' lines, while bounding what one line costs every subscriber.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Most lines in one batch: large enough that a chatty build costs few frames (and few server
/// commits), small enough that one batch is a small, quick commit.
pub const MAX_BATCH_LINES: usize = 256;

/// Most line bytes in one batch (a single longer line still makes a batch of its own). A pusher
/// batch is one frame: JSON escaping can grow a byte up to six (`\u0000`), which the protocol's
/// frame limit allows for (`api::protocol`).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Lines read from a command's pipes and not yet batched; when the channel is full the readers
/// stop reading and the command blocks on its pipe, so a slow consumer slows the command down
/// instead of growing memory.
pub const LINE_CHANNEL_CAPACITY: usize = 1024;

/// Pipe read size.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// The longest run of UTF-8 continuation bytes in one char (a 4-byte char has 3).
const MAX_CONTINUATION_BYTES: usize = 3;

// A batch that is cut because a new line does not fit must leave room for that line, and
// after such a cut the pending batch holds one line, which cannot fill it.
const _: () = assert!(MAX_BATCH_LINES > 1 && MAX_LINE_BYTES <= MAX_BATCH_BYTES);

/// What a [`LineSplitter`] does with the bytes of a line beyond its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlong {
    /// Keep the first `max` bytes, drop the rest up to the newline (the executor: an operator's
    /// `max_line_bytes` says how much of a line is worth keeping).
    Cut,
    /// Emit the rest as further lines of at most `max` bytes (the pusher: the store cuts at the
    /// same limit, so nothing a build prints is lost on the way).
    Split,
}

/// Splits a byte stream into lines without ever buffering more than `max + 1` bytes of one line.
///
/// Each line comes out as [`cut_line`] of its bytes: lossy UTF-8, one trailing `\r` dropped, at
/// most `max` bytes. Chunk boundaries do not matter: the same bytes give the same lines however
/// they are cut into [`push`](Self::push) calls.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    overlong: Overlong,
    current: Vec<u8>,
    /// The current line was already emitted (cut); skip until the next newline.
    skipping: bool,
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes (`max` 0 counts as 1: a line always has room
    /// for a char's first byte, so [`Overlong::Split`] always makes progress).
    pub fn new(max: usize, overlong: Overlong) -> Self {
        Self {
            max: max.max(1),
            overlong,
            current: Vec::new(),
            skipping: false,
        }
    }

    /// Takes the next bytes of the stream; returns the lines they completed.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (piece, rest, ended) = match memchr::memchr(b'\n', bytes) {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            self.take_piece(piece, &mut out);
            if ended {
                if self.skipping {
                    self.skipping = false;
                } else {
                    out.push(cut_line(&self.current, self.max));
                    self.current.clear();
                }
            }
        }
        out
    }

    /// The last line, when the stream ended without a newline after it.
    pub fn finish(self) -> Option<String> {
        (!self.current.is_empty()).then(|| cut_line(&self.current, self.max))
    }

    /// Adds bytes of the current line (no newline in `piece`), emitting what overflows.
    fn take_piece(&mut self, mut piece: &[u8], out: &mut Vec<String>) {
        while !self.skipping && !piece.is_empty() {
            // One byte more than `max` tells an overlong line from one of exactly `max` bytes.
            let room = (self.max + 1).saturating_sub(self.current.len());
            let taken = piece.len().min(room);
            self.current.extend_from_slice(&piece[..taken]);
            piece = &piece[taken..];
            if self.current.len() <= self.max {
                return;
            }
            match self.overlong {
                Overlong::Cut => {
                    out.push(cut_line(&self.current, self.max));
                    self.current.clear();
                    self.skipping = true;
                }
                Overlong::Split => {
                    let at = split_point(&self.current, self.max);
                    out.push(cut_line(&self.current[..at], self.max));
                    self.current.drain(..at);
                }
            }
        }
    }
}

/// Where to split `raw` (longer than `max`) so the first piece has at most `max` bytes and a
/// valid multi-byte char is not broken in two: before the char `raw[max]` continues, if any.
fn split_point(raw: &[u8], max: usize) -> usize {
    let is_continuation = |b: u8| b & 0b1100_0000 == 0b1000_0000;
    let mut at = max;
    while at > 0 && max - at < MAX_CONTINUATION_BYTES && is_continuation(raw[at]) {
        at -= 1;
    }
    if at == 0 || is_continuation(raw[at]) {
        // Not valid UTF-8 here anyway (or one huge char): a byte cut loses nothing more.
        max
    } else {
        at
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Lossy UTF-8 of `raw` without one trailing `\r`, [`cut`] to at most `max` bytes.
pub fn cut_line(raw: &[u8], max: usize) -> String {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let mut text = String::from_utf8_lossy(raw).into_owned();
    let kept = cut(&text, max).len();
    text.truncate(kept);
    text
}

/// The stored lines of one line of text handed to `append_logs`: one per `\n`-separated piece,
/// each without one trailing `\r` and [`cut`] to `max` bytes. A text without `\n` is one line.
pub fn split_text(text: &str, max: usize) -> impl Iterator<Item = &str> {
    text.split('\n')
        .map(move |piece| cut(piece.strip_suffix('\r').unwrap_or(piece), max))
}

/// Reads `pipe` to its end (or a read error) through `splitter`, sending each line of `stream`
/// as it completes, until the receiver is gone. With `echo`, every byte read is also copied
/// there as it is (best effort: a closed terminal does not stop the build).
pub async fn read_lines<R, W>(
    mut pipe: R,
    mut splitter: LineSplitter,
    stream: LogStream,
    lines: mpsc::Sender<NewLine>,
    mut echo: Option<W>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(echo) = echo.as_mut() {
            // One write and flush per read: live, but not one write per line.
            let _ = echo.write_all(&chunk[..n]).await;
            let _ = echo.flush().await;
        }
        for text in splitter.push(&chunk[..n]) {
            if lines.send(NewLine { stream, text }).await.is_err() {
                return;
            }
        }
    }
    if let Some(text) = splitter.finish() {
        // The receiver may be gone already; nothing left to do then.
        lines.send(NewLine { stream, text }).await.ok();
    }
}

/// How a [`Batcher`] groups lines.
#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// A batch is due this long after its first line arrived.
    pub window: Duration,
    /// Whether a batch holds lines of one stream only (a pusher's `logs` frame has one
    /// `stream`); otherwise streams mix in one batch, each line keeping its own.
    pub one_stream: bool,
}

/// Lines ready to hand on together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Batch number, from 1, increasing by one per batch of the same [`Batcher`].
    pub number: u64,
    /// At least one line.
    pub lines: Vec<NewLine>,
}

impl Batch {
    /// The stream every line of the batch is on, or `None` when they mix.
    pub fn stream(&self) -> Option<LogStream> {
        let first = self.lines.first()?.stream;
        self.lines
            .iter()
            .all(|line| line.stream == first)
            .then_some(first)
    }
}

/// Groups lines into batches. Pure: the caller passes the time and sends what comes out.
///
/// A batch holds at most [`MAX_BATCH_LINES`] lines and [`MAX_BATCH_BYTES`] bytes (unless one
/// line alone is longer), of one stream when the policy says so, and is due the policy's window
/// after its first line arrived. Lines come out in the order they went in.
#[derive(Debug)]
pub struct Batcher {
    policy: BatchPolicy,
    next_number: u64,
    lines: Vec<NewLine>,
    bytes: usize,
    first_line_at: Option<Instant>,
}

impl Batcher {
    /// An empty batcher whose first batch is number 1.
    pub fn new(policy: BatchPolicy) -> Self {
        Batcher {
            policy,
            next_number: 1,
            lines: Vec::new(),
            bytes: 0,
            first_line_at: None,
        }
    }

    /// Adds a line. Returns a batch to send now: the pending one when this line cannot join it
    /// (other stream, or too many bytes), or the batch this line just filled. Never more than
    /// one.
    pub fn push(&mut self, line: NewLine, now: Instant) -> Option<Batch> {
        let other_stream =
            self.policy.one_stream && self.lines.first().is_some_and(|l| l.stream != line.stream);
        let cut = if !self.lines.is_empty()
            && (other_stream || self.bytes + line.text.len() > MAX_BATCH_BYTES)
        {
            self.take()
        } else {
            None
        };
        if self.lines.is_empty() {
            self.first_line_at = Some(now);
        }
        self.bytes += line.text.len();
        self.lines.push(line);
        // After a cut the pending batch holds one line, which cannot fill it (MAX_BATCH_LINES > 1).
        cut.or_else(|| {
            if self.lines.len() >= MAX_BATCH_LINES {
                self.take()
            } else {
                None
            }
        })
    }

    /// When the pending batch must be sent, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_line_at.map(|at| at + self.policy.window)
    }

    /// The pending batch if its deadline has passed at `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<Batch> {
        match self.deadline() {
            Some(deadline) if deadline <= now => self.take(),
            _ => None,
        }
    }

    /// The pending batch, whatever its age (e.g. when the command ended).
    pub fn take(&mut self) -> Option<Batch> {
        if self.lines.is_empty() {
            return None;
        }
        let batch = Batch {
            number: self.next_number,
            lines: std::mem::replace(&mut self.lines, Vec::with_capacity(MAX_BATCH_LINES)),
        };
        self.next_number += 1;
        self.bytes = 0;
        self.first_line_at = None;
        Some(batch)
    }

    /// Whether no line is pending.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// Sleeps until a [`Batcher::deadline`]; never wakes without one (a `select!` arm for a batcher
/// with nothing pending).
pub async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The fullest batch `policy` cuts: lines of [`MAX_LINE_BYTES`] pushed until the byte limit
/// forces a cut (it checks that nothing is cut earlier, and that the cut holds every line that
/// fit). Shared by the batcher's tests and the push client's frame-size test.
#[cfg(test)]
pub(crate) fn fullest_cut_batch(policy: BatchPolicy) -> Batch {
    let now = Instant::now();
    let mut batcher = Batcher::new(policy);
    let line = "x".repeat(MAX_LINE_BYTES);
    let per_batch = MAX_BATCH_BYTES / MAX_LINE_BYTES;
    for _ in 0..per_batch {
        assert_eq!(batcher.push(NewLine::stdout(line.clone()), now), None);
    }
    let cut = batcher
        .push(NewLine::stdout(line), now)
        .expect("a cut once the bytes are full");
    assert_eq!(cut.lines.len(), per_batch);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who splits or cuts a line: each caller's path through this module.
    #[derive(Clone, Copy, Debug)]
    enum Caller {
        /// `pipeline::stages`: a splitter with [`Overlong::Cut`].
        Executor,
        /// `cli::push`: a splitter with [`Overlong::Split`].
        Pusher,
        /// `store::writer`: [`split_text`] of the lossy text.
        Store,
    }

    /// One input and the lines each caller makes of it.
    struct Case {
        name: &'static str,
        input: &'static [u8],
        max: usize,
        executor: &'static [&'static str],
        pusher: &'static [&'static str],
        store: &'static [&'static str],
    }

    const CASES: &[Case] = &[
        Case {
            name: "plain lines, the last without a newline",
            input: b"ab\ncd\nlast",
            max: 16,
            executor: &["ab", "cd", "last"],
            pusher: &["ab", "cd", "last"],
            store: &["ab", "cd", "last"],
        },
        Case {
            name: "empty lines are lines",
            input: b"\n\nx\n",
            max: 16,
            executor: &["", "", "x"],
            pusher: &["", "", "x"],
            store: &["", "", "x", ""],
        },
        Case {
            name: "crlf and a trailing cr lose the cr, an inner cr stays",
            input: b"one\r\ntwo\r\n50%\r100%\nend\r",
            max: 16,
            executor: &["one", "two", "50%\r100%", "end"],
            pusher: &["one", "two", "50%\r100%", "end"],
            store: &["one", "two", "50%\r100%", "end"],
        },
        Case {
            name: "an overlong line is cut by the executor, split by the pusher",
            input: b"ab\ncdefghij\nxy",
            max: 4,
            executor: &["ab", "cdef", "xy"],
            pusher: &["ab", "cdef", "ghij", "xy"],
            store: &["ab", "cdef", "xy"],
        },
        Case {
            name: "a line of exactly the limit is one line",
            input: b"abcd\nabcd",
            max: 4,
            executor: &["abcd", "abcd"],
            pusher: &["abcd", "abcd"],
            store: &["abcd", "abcd"],
        },
        Case {
            name: "cuts and splits fall on char boundaries",
            input: "héllo\n".as_bytes(),
            max: 2,
            executor: &["h"],
            pusher: &["h", "é", "ll", "o"],
            store: &["h", ""],
        },
        Case {
            name: "invalid utf-8 is replaced",
            input: b"a\xffb\n\xff",
            max: 16,
            executor: &["a\u{fffd}b", "\u{fffd}"],
            pusher: &["a\u{fffd}b", "\u{fffd}"],
            store: &["a\u{fffd}b", "\u{fffd}"],
        },
        Case {
            name: "replacement chars count against the limit",
            input: b"\xff\xff\xff",
            max: 4,
            executor: &["\u{fffd}"],
            pusher: &["\u{fffd}"],
            store: &["\u{fffd}"],
        },
    ];

    fn lines_of(caller: Caller, input: &[u8], max: usize, chunk: usize) -> Vec<String> {
        let overlong = match caller {
            Caller::Executor => Overlong::Cut,
            Caller::Pusher => Overlong::Split,
            Caller::Store => {
                let text = String::from_utf8_lossy(input);
                return split_text(&text, max).map(str::to_owned).collect();
            }
        };
        let mut splitter = LineSplitter::new(max, overlong);
        let mut lines = Vec::new();
        for piece in input.chunks(chunk) {
            lines.extend(splitter.push(piece));
        }
        lines.extend(splitter.finish());
        lines
    }

    #[test]
    fn every_caller_splits_and_cuts_the_table_cases_as_expected() {
        for case in CASES {
            for (caller, expected) in [
                (Caller::Executor, case.executor),
                (Caller::Pusher, case.pusher),
                (Caller::Store, case.store),
            ] {
                // Whole, and byte by byte: chunk boundaries must not matter.
                for chunk in [case.input.len().max(1), 1] {
                    let lines = lines_of(caller, case.input, case.max, chunk);
                    assert_eq!(
                        lines, expected,
                        "{}: {caller:?}, chunks of {chunk}",
                        case.name
                    );
                    assert!(lines.iter().all(|l| l.len() <= case.max), "{}", case.name);
                }
            }
        }
    }

    #[test]
    fn splitter_keeps_lines_and_cuts_long_ones() {
        // Moved from `pipeline::stages`: the executor's splitter across two reads.
        let mut splitter = LineSplitter::new(4, Overlong::Cut);
        let mut lines = splitter.push(b"ab\ncdefgh");
        lines.extend(splitter.push(b"ij\nxy\r\nlast"));
        lines.extend(splitter.finish());
        assert_eq!(lines, vec!["ab", "cdef", "xy", "last"]);
    }

    #[test]
    fn the_pusher_splits_a_line_over_the_limit_into_bounded_pieces() {
        // Moved from `cli::push` (`lines_are_split_bounded_and_lossy`), at the real limit.
        let mut input = b"one\r\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend(b"\n\xffbad\nlast-without-newline");
        let lines = lines_of(Caller::Pusher, &input, MAX_LINE_BYTES, 8 * 1024);
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        assert_eq!(lines[2].len(), MAX_LINE_BYTES);
        assert_eq!(lines[3], "x".repeat(10));
        assert_eq!(lines[4], "\u{fffd}bad");
        assert_eq!(lines[5], "last-without-newline");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn cut_line_respects_char_boundaries_and_invalid_utf8() {
        assert_eq!(cut_line("héllo".as_bytes(), 2), "h");
        assert_eq!(cut_line(b"a\xffb", 16), "a\u{fffd}b");
        assert_eq!(cut_line(b"abc\r", 16), "abc");
        assert_eq!(cut("ab€", 4), "ab");
        assert_eq!(cut("ab€", 5), "ab€");
    }

    #[tokio::test]
    async fn read_lines_sends_every_line_and_echoes_the_bytes_unchanged() {
        let input: &[u8] = b"one\r\ntwo\nlast";
        let (tx, mut rx) = mpsc::channel(LINE_CHANNEL_CAPACITY);
        let mut echo = Vec::new();
        read_lines(
            input,
            LineSplitter::new(MAX_LINE_BYTES, Overlong::Split),
            LogStream::Stderr,
            tx,
            Some(&mut echo),
        )
        .await;
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        assert_eq!(
            lines,
            ["one", "two", "last"].map(NewLine::stderr).to_vec(),
            "lines"
        );
        assert_eq!(echo, input);
    }

    // ---- batching -------------------------------------------------------------------------

    const WINDOW: Duration = Duration::from_millis(20);
    const ONE_STREAM: BatchPolicy = BatchPolicy {
        window: WINDOW,
        one_stream: true,
    };

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn batcher_sends_full_batches_at_max_lines() {
        let now = t0();
        let mut batcher = Batcher::new(ONE_STREAM);
        for i in 0..MAX_BATCH_LINES - 1 {
            assert_eq!(batcher.push(NewLine::stdout(i.to_string()), now), None);
        }
        let batch = batcher.push(NewLine::stdout("last"), now).unwrap();
        assert_eq!(batch.number, 1);
        assert_eq!(batch.lines.len(), MAX_BATCH_LINES);
        assert_eq!(batch.lines[0].text, "0");
        assert!(batcher.is_empty());
        assert_eq!(batcher.deadline(), None);
    }

    #[test]
    fn batcher_is_due_after_interval_from_first_line() {
        let now = t0();
        let mut batcher = Batcher::new(ONE_STREAM);
        assert_eq!(batcher.push(NewLine::stdout("a"), now), None);
        let later = now + WINDOW / 2;
        assert_eq!(batcher.push(NewLine::stdout("b"), later), None);
        assert_eq!(batcher.deadline(), Some(now + WINDOW));
        assert_eq!(batcher.take_due(later), None);
        let batch = batcher.take_due(now + WINDOW).unwrap();
        assert_eq!(batch.lines, [NewLine::stdout("a"), NewLine::stdout("b")]);
        assert_eq!(batcher.take_due(now + WINDOW * 10), None);
    }

    #[test]
    fn batcher_cuts_on_stream_change() {
        let now = t0();
        let mut batcher = Batcher::new(ONE_STREAM);
        batcher.push(NewLine::stdout("out"), now);
        let cut = batcher.push(NewLine::stderr("err"), now).unwrap();
        assert_eq!((cut.number, cut.stream()), (1, Some(LogStream::Stdout)));
        assert_eq!(cut.lines, [NewLine::stdout("out")]);
        let rest = batcher.take().unwrap();
        assert_eq!((rest.number, rest.stream()), (2, Some(LogStream::Stderr)));
        assert_eq!(rest.lines, [NewLine::stderr("err")]);
    }

    #[test]
    fn batcher_mixes_streams_when_the_policy_allows() {
        let now = t0();
        let mut batcher = Batcher::new(BatchPolicy {
            window: WINDOW,
            one_stream: false,
        });
        assert_eq!(batcher.push(NewLine::stdout("out"), now), None);
        assert_eq!(batcher.push(NewLine::stderr("err"), now), None);
        let batch = batcher.take().unwrap();
        assert_eq!(batch.stream(), None);
        assert_eq!(
            batch.lines,
            [NewLine::stdout("out"), NewLine::stderr("err")]
        );
    }

    #[test]
    fn batcher_cuts_before_exceeding_bytes() {
        let cut = fullest_cut_batch(ONE_STREAM);
        assert!(cut.lines.iter().map(|l| l.text.len()).sum::<usize>() <= MAX_BATCH_BYTES);
    }
}
