//! Running one stage command and packing the default image.
//!
//! Owns child processes: each stage runs as `sh -c <command>` in its own process group, with
//! stdin closed and a minimal environment, and the whole group is killed (SIGKILL) when the stage
//! ends, times out, is cancelled or its future is dropped — a stage must not leave processes
//! behind (a start command that launches a long-lived app must hand it to a supervisor outside
//! its process group). Output is read line by line, cut at the line limit, converted lossily to
//! UTF-8 and handed to the sink in small batches as it is produced.
//!
//! It does not choose statuses: it reports how the command ended and the executor decides.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DeploymentSink, SinkError};
use crate::model::NewLine;

/// At most this many lines per `append_logs` call, so one call stays small.
pub const MAX_BATCH_LINES: usize = 256;
/// Lines arriving within this window of the first one share a batch; short enough that logs
/// still look live.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Lines buffered between the pipe readers and the sink; when full, readers stop reading and
/// the command blocks on its pipe, so a slow sink slows the command instead of growing memory.
const LINE_CHANNEL_CAPACITY: usize = 1024;
/// Pipe read size.
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// After the process group is killed, output still in the pipes is forwarded for at most this
/// long (a process that escaped the group could hold a pipe open forever).
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// Variables passed through from the server's environment; everything else (the server's own
/// secrets included) is withheld from stage commands, which may run code from the source.
const INHERITED_ENV_VARS: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// One command to run.
#[derive(Clone, Debug)]
pub struct StageCommand {
    /// Given to `sh -c`.
    pub command: String,
    /// Working directory.
    pub dir: PathBuf,
    /// Extra environment variables (on top of [`INHERITED_ENV_VARS`]).
    pub env: Vec<(String, String)>,
    /// Lines longer than this many bytes are cut.
    pub max_line_bytes: usize,
    /// Where the running stage's process group is recorded for the crash sweep
    /// (`pipeline::leftovers`); `None` records nothing.
    pub pgid_file: Option<PathBuf>,
}

/// Which limit a deadline stands for, so the executor can pick the right status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadlineKind {
    /// The stage's own limit (the start timeout).
    Stage,
    /// The whole deployment's limit.
    Deployment,
}

/// When a stage must have finished by.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: Instant,
    pub kind: DeadlineKind,
}

impl Deadline {
    /// The earlier of the deployment deadline and `now + stage_timeout`.
    pub fn earliest(deployment: Instant, stage_timeout: Option<Duration>) -> Deadline {
        match stage_timeout.map(|t| Instant::now() + t) {
            Some(stage) if stage < deployment => Deadline {
                at: stage,
                kind: DeadlineKind::Stage,
            },
            _ => Deadline {
                at: deployment,
                kind: DeadlineKind::Deployment,
            },
        }
    }
}

/// How a stage ended.
#[derive(Debug)]
pub enum StageOutcome {
    /// The command exited by itself.
    Exited(ExitStatus),
    /// The deadline passed; the process group was killed.
    TimedOut(DeadlineKind),
    /// The cancellation token fired; the process group was killed.
    Cancelled,
}

/// Why a stage could not be run to an outcome.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("cannot start the command: {0}")]
    Spawn(io::Error),
    #[error("cannot wait for the command: {0}")]
    Wait(io::Error),
    #[error("the deployment refused logs: {0}")]
    Sink(#[from] SinkError),
}

/// Runs `stage`, streaming its output to `sink`, until it exits, `deadline` passes or `cancel`
/// fires. The process group is always killed and the leader reaped before this returns.
///
/// Errors: the command cannot be spawned or waited for, or the sink refuses lines (the group is
/// killed then too).
pub async fn run_stage<S: DeploymentSink>(
    stage: &StageCommand,
    sink: &S,
    deadline: Deadline,
    cancel: &CancellationToken,
) -> Result<StageOutcome, StageError> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&stage.command)
        .current_dir(&stage.dir)
        .env_clear()
        .envs(
            INHERITED_ENV_VARS
                .iter()
                .filter_map(|name| std::env::var_os(name).map(|v| (*name, v))),
        )
        .envs(stage.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(StageError::Spawn)?;
    let mut group = ProcessGroup {
        pgid: child.id().and_then(|id| i32::try_from(id).ok()),
        record: stage.pgid_file.clone(),
    };
    if let (Some(pgid), Some(file)) = (group.pgid, &group.record) {
        super::leftovers::record(file, pgid);
    }

    let (sender, mut lines) = mpsc::channel(LINE_CHANNEL_CAPACITY);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(read_lines(
            stdout,
            sender.clone(),
            NewLine::stdout,
            stage.max_line_bytes,
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(read_lines(
            stderr,
            sender.clone(),
            NewLine::stderr,
            stage.max_line_bytes,
        ));
    }
    drop(sender);

    let mut batch = Vec::with_capacity(MAX_BATCH_LINES);
    let mut readers_done = false;
    let ended: Result<StageOutcome, StageError> = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ok(StageOutcome::Cancelled),
            _ = tokio::time::sleep_until(deadline.at) => break Ok(StageOutcome::TimedOut(deadline.kind)),
            status = child.wait() => break status.map(StageOutcome::Exited).map_err(StageError::Wait),
            received = next_batch(&mut lines, &mut batch), if !readers_done => {
                if received == 0 {
                    readers_done = true;
                } else if let Err(error) = sink.append_logs(std::mem::take(&mut batch)).await {
                    break Err(StageError::Sink(error));
                }
            }
        }
    };
    // Leftovers (background jobs of an exited stage, or everything otherwise) die here, and the
    // leader is reaped so no zombie outlives the stage.
    group.kill();
    if !matches!(ended, Ok(StageOutcome::Exited(_))) {
        child.start_kill().ok();
        child.wait().await.map_err(StageError::Wait)?;
    }
    let outcome = ended?;
    if !readers_done && !matches!(outcome, StageOutcome::Cancelled) {
        drain(&mut lines, &mut batch, sink).await?;
    }
    Ok(outcome)
}

/// Forwards what is left in the pipes once the group is dead, for at most [`DRAIN_GRACE`].
async fn drain<S: DeploymentSink>(
    lines: &mut mpsc::Receiver<NewLine>,
    batch: &mut Vec<NewLine>,
    sink: &S,
) -> Result<(), SinkError> {
    let stop = Instant::now() + DRAIN_GRACE;
    loop {
        match tokio::time::timeout_at(stop, next_batch(lines, batch)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                sink.append_logs(std::mem::take(batch)).await?;
            }
        }
    }
    if !batch.is_empty() {
        sink.append_logs(std::mem::take(batch)).await?;
    }
    Ok(())
}

/// Waits for at least one line, then gathers more arriving within [`BATCH_WINDOW`], up to
/// [`MAX_BATCH_LINES`]. Returns how many lines `batch` holds; 0 means every reader is done.
async fn next_batch(lines: &mut mpsc::Receiver<NewLine>, batch: &mut Vec<NewLine>) -> usize {
    if batch.is_empty() && lines.recv_many(batch, MAX_BATCH_LINES).await == 0 {
        return 0;
    }
    let window = Instant::now() + BATCH_WINDOW;
    while batch.len() < MAX_BATCH_LINES {
        let room = MAX_BATCH_LINES - batch.len();
        match tokio::time::timeout_at(window, lines.recv_many(batch, room)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    batch.len()
}

/// Reads `pipe` to its end, sending each line (cut to `max_line_bytes`) as it completes.
async fn read_lines<R: AsyncRead + Unpin>(
    mut pipe: R,
    lines: mpsc::Sender<NewLine>,
    make: fn(String) -> NewLine,
    max_line_bytes: usize,
) {
    let mut splitter = LineSplitter::new(max_line_bytes);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for line in splitter.push(&chunk[..n]) {
            if lines.send(make(line)).await.is_err() {
                return;
            }
        }
    }
    if let Some(line) = splitter.finish() {
        // The receiver may be gone already; nothing left to do then.
        lines.send(make(line)).await.ok();
    }
}

/// Splits a byte stream into lines without ever buffering more than `max` bytes of one line:
/// the rest of an overlong line is dropped up to its newline.
struct LineSplitter {
    max: usize,
    current: Vec<u8>,
    /// The current line was already emitted (cut); skip until the next newline.
    skipping: bool,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        Self {
            max,
            current: Vec::new(),
            skipping: false,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (piece, rest, ended) = match newline {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.skipping {
                let room = (self.max + 1).saturating_sub(self.current.len());
                self.current
                    .extend_from_slice(&piece[..piece.len().min(room)]);
                if self.current.len() > self.max {
                    out.push(cut_line(&self.current, self.max));
                    self.current.clear();
                    self.skipping = !ended;
                } else if ended {
                    out.push(cut_line(&self.current, self.max));
                    self.current.clear();
                }
            } else if ended {
                self.skipping = false;
            }
        }
        out
    }

    fn finish(self) -> Option<String> {
        (!self.current.is_empty()).then(|| cut_line(&self.current, self.max))
    }
}

/// Lossy UTF-8 of `raw` without a trailing `\r`, cut to at most `max` bytes on a char boundary.
pub fn cut_line(raw: &[u8], max: usize) -> String {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let mut text = String::from_utf8_lossy(raw).into_owned();
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Kills a stage's whole process group when told to and, as a safety net, when dropped (the
/// executor's future may be dropped mid-stage).
struct ProcessGroup {
    pgid: Option<i32>,
    record: Option<PathBuf>,
}

impl ProcessGroup {
    /// Kills the group once; later calls (and the drop) do nothing, so a group id is never
    /// signalled after its members are gone and the id could have been reused.
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: kill(2) has no memory-safety preconditions. The group id is our child's pid,
            // which is not reused while the child is unreaped or any group member lives.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            if let Some(file) = self.record.take() {
                super::leftovers::forget(&file);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Packs `source_dir` into a gzip+tar image at `image_path` (via a temporary file renamed into
/// place) and returns its size in bytes. Symlinks are stored as symlinks, never followed.
///
/// Blocking: call from `spawn_blocking`. Stops with an error when `cancel` fires.
pub fn pack_image(
    source_dir: &Path,
    image_path: &Path,
    cancel: &CancellationToken,
) -> io::Result<u64> {
    if let Some(parent) = image_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut temporary = image_path.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = PathBuf::from(temporary);
    let result = (|| {
        let file = std::fs::File::create(&temporary)?;
        let writer = CancellableWriter {
            inner: file,
            cancel,
        };
        let gzip = flate2::write::GzEncoder::new(writer, flate2::Compression::default());
        let mut builder = tar::Builder::new(gzip);
        builder.follow_symlinks(false);
        builder.append_dir_all(".", source_dir)?;
        let gzip = builder.into_inner()?;
        let writer = gzip.finish()?;
        writer.inner.sync_all()?;
        std::fs::rename(&temporary, image_path)?;
        Ok(std::fs::metadata(image_path)?.len())
    })();
    if result.is_err() {
        std::fs::remove_file(&temporary).ok();
    }
    result
}

struct CancellableWriter<'a, W> {
    inner: W,
    cancel: &'a CancellationToken,
}

impl<W: io::Write> io::Write for CancellableWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other("cancelled"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_keeps_lines_and_cuts_long_ones() {
        let mut splitter = LineSplitter::new(4);
        let mut lines = splitter.push(b"ab\ncdefgh");
        lines.extend(splitter.push(b"ij\nxy\r\nlast"));
        lines.extend(splitter.finish());
        assert_eq!(lines, vec!["ab", "cdef", "xy", "last"]);
    }

    #[test]
    fn cut_line_respects_char_boundaries_and_invalid_utf8() {
        assert_eq!(cut_line("héllo".as_bytes(), 2), "h");
        assert_eq!(cut_line(b"a\xffb", 16), "a\u{fffd}b");
        assert_eq!(cut_line(b"abc\r", 16), "abc");
    }
}
