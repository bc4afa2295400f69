//! deployd's own log (stderr): human-readable text or one JSON object per line
//! (`--log-format json`, for log shippers), filtered by `RUST_LOG` (default `info`).
//!
//! Colours only when stderr is a terminal: a log written to a file or a pipe has no escape
//! codes. Deployment output is not logged here (it is stored and served byte for byte).
//!
//! Logging must never block or fail a request: a line is appended to an in-memory buffer, and
//! a writer thread writes the buffer to stderr every [`FLUSH_INTERVAL`] (or sooner when it
//! holds [`WAKE_AT_BYTES`]). When stderr is slow or blocked and the buffer reaches
//! [`MAX_BUFFERED_BYTES`], new lines are dropped (and counted in the log once it flows again)
//! instead of making the request wait. Appending wakes no thread: with tracing-appender's
//! channel every access log line woke the writer thread (a futex call on the request's
//! path) and the thread spun in `sched_yield` between lines, about 9 % of the server's samples
//! under `benches/scripts/rest.sh` (perf, issue 13). This module only installs the subscriber;
//! what is logged is each module's business.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How long a line may wait in the buffer: short enough that a log being watched looks live.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Buffered bytes at which an appending line wakes the writer thread before the interval: a
/// burst is written in chunks of about this size.
const WAKE_AT_BYTES: usize = 256 * 1024;

/// Most bytes buffered before new lines are dropped: a burst of access log lines from
/// thousands of requests fits; a stderr blocked for good costs at most this much memory.
const MAX_BUFFERED_BYTES: usize = 4 * 1024 * 1024;

/// The log's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00Z  INFO target: message key=value`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (`message` in it).
    Json,
}

/// Keeps the log's writer thread; drop it last (it writes what is buffered, then stops).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    buffer: Arc<LogBuffer>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.buffer.stop.store(true, Ordering::Release);
        self.buffer.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Lines logged after the thread's last pass (none, unless another thread still logs).
        self.buffer.write_out();
    }
}

/// The installed log's buffer, for [`flush`].
static INSTALLED: std::sync::OnceLock<Arc<LogBuffer>> = std::sync::OnceLock::new();

/// Writes every buffered line to stderr now: call before `std::process::exit`, which runs no
/// destructor (so no [`LogGuard`] drop). A no-op when the log is not installed.
pub fn flush() {
    if let Some(buffer) = INSTALLED.get() {
        buffer.write_out();
    }
}

/// Installs the process-wide subscriber writing to stderr in `format`. Call once.
pub fn init(format: LogFormat) -> LogGuard {
    let buffer = Arc::new(LogBuffer::default());
    let _ = INSTALLED.set(buffer.clone());
    let thread = {
        let buffer = buffer.clone();
        std::thread::Builder::new()
            .name("deployd-log".into())
            .spawn(move || buffer.run())
            .ok()
    };
    let writer = BufferedStderr(buffer.clone());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        // A failed write would be reported with `eprint!`, which panics when stderr is gone.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    LogGuard { buffer, thread }
}

/// The lines waiting for stderr, shared by every logging thread and the writer thread.
#[derive(Default)]
struct LogBuffer {
    pending: Mutex<Vec<u8>>,
    /// Lines dropped because the buffer was full, not yet reported.
    dropped: AtomicU64,
    /// Signalled when the buffer passes [`WAKE_AT_BYTES`] or the guard stops the thread.
    wake: Condvar,
    stop: AtomicBool,
}

impl LogBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // Every mutation is one append or one swap: a poisoned buffer is still whole lines.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one formatted line (tracing writes each event with one `write_all`).
    fn append(&self, line: &[u8]) {
        let mut pending = self.lock();
        if pending.len() + line.len() > MAX_BUFFERED_BYTES {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_below = pending.len() < WAKE_AT_BYTES;
        pending.extend_from_slice(line);
        let now_above = pending.len() >= WAKE_AT_BYTES;
        drop(pending);
        if was_below && now_above {
            self.wake.notify_one();
        }
    }

    /// The writer thread: writes what is buffered every [`FLUSH_INTERVAL`] until stopped.
    fn run(&self) {
        loop {
            let stopping = {
                let pending = self.lock();
                let (_pending, _) = self
                    .wake
                    .wait_timeout_while(pending, FLUSH_INTERVAL, |p| {
                        p.len() < WAKE_AT_BYTES && !self.stop.load(Ordering::Acquire)
                    })
                    .unwrap_or_else(PoisonError::into_inner);
                self.stop.load(Ordering::Acquire)
            };
            self.write_out();
            if stopping {
                return;
            }
        }
    }

    /// Writes the buffered lines in one call, outside the lock, then says how many were
    /// dropped since the last report. Lossy: with stderr a closed pipe (a dead log shipper,
    /// `serve 2>&1 | tee` after `tee` died) logging must never fail or stop anything.
    fn write_out(&self) {
        let lines = std::mem::take(&mut *self.lock());
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if lines.is_empty() && dropped == 0 {
            return;
        }
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(&lines);
        if dropped > 0 {
            let _ = writeln!(
                stderr,
                "deployd: {dropped} log lines dropped: stderr did not keep up"
            );
        }
        let _ = stderr.flush();
    }
}

/// The subscriber's writer: every event goes to the shared [`LogBuffer`].
struct BufferedStderr(Arc<LogBuffer>);

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(&self.0)
    }
}

/// One event's writer.
struct LineWriter<'a>(&'a LogBuffer);

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_new_lines_and_counts_them_instead_of_growing() {
        let buffer = LogBuffer::default();
        let line = vec![b'x'; 1024];
        for _ in 0..(MAX_BUFFERED_BYTES / line.len() + 10) {
            buffer.append(&line);
        }
        assert!(buffer.lock().len() <= MAX_BUFFERED_BYTES);
        assert_eq!(buffer.dropped.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn lines_appended_by_many_threads_stay_whole_and_in_each_threads_order() {
        let buffer = Arc::new(LogBuffer::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let buffer = buffer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let mut writer = LineWriter(&buffer);
                        writer
                            .write_all(format!("thread {t} line {i}\n").as_bytes())
                            .expect("write");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let text = String::from_utf8(buffer.lock().clone()).expect("utf-8");
        let mut next = [0usize; 4];
        for line in text.lines() {
            let mut words = line.split(' ');
            assert_eq!(words.next(), Some("thread"));
            let t: usize = words.next().and_then(|w| w.parse().ok()).expect("thread");
            assert_eq!(words.next(), Some("line"));
            let i: usize = words.next().and_then(|w| w.parse().ok()).expect("line");
            assert_eq!(i, next[t], "{line}");
            next[t] += 1;
        }
        assert_eq!(next, [1000; 4]);
    }
}
