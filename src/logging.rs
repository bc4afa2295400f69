//! deployd's own log (stderr): human-readable text or one JSON object per line
//! (`--log-format json`, for log shippers), filtered by `RUST_LOG` (default `info`).
//!
//! Colours only when stderr is a terminal: a log written to a file or a pipe has no escape
//! codes. Deployment output is not logged here (it is stored and served byte for byte).
//!
//! Logging must never block or fail a request: lines go through a bounded in-memory queue to a
//! writer thread, and when stderr is slow or blocked the queue drops lines (counted by
//! `tracing-appender`) instead of making the request wait. This module only installs the
//! subscriber; what is logged is each module's business.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines buffered for the writer thread before new ones are dropped: a burst of access log
/// lines from thousands of requests fits; a stderr blocked for good costs at most this much
/// memory (a few MiB).
const BUFFERED_LINES: usize = 16 * 1024;

/// The log's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00Z  INFO target: message key=value`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (`message` in it).
    Json,
}

/// Keeps the log's writer thread; drop it last (it flushes what is queued).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Installs the process-wide subscriber writing to stderr in `format`. Call once.
pub fn init(format: LogFormat) -> LogGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("deployd-log")
        .finish(LossyStderr::default());
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
    LogGuard { _worker: guard }
}

/// Most bytes of lines the log's writer thread gathers before writing them to stderr.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Stderr for the log, dropping what cannot be written: with stderr a closed pipe (a dead log
/// shipper, `serve 2>&1 | tee` after `tee` died) logging must never fail or stop anything.
///
/// Lines are gathered and written in one call when `tracing-appender`'s worker flushes, which
/// it does as soon as its queue is empty: under load (an access log line per request) that is
/// one `write` for many lines instead of one per line, and no line waits for more to come.
#[derive(Default)]
struct LossyStderr {
    pending: Vec<u8>,
}

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= WRITE_BATCH_BYTES {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(&self.pending);
        let _ = stderr.flush();
        self.pending.clear();
        Ok(())
    }
}
