//! Running one stage command and packing the default image.
//!
//! Owns child processes: each stage runs as `sh -c <command>` in its own process group, with
//! stdin closed and a minimal environment, and the whole group is killed (SIGKILL) when the stage
//! ends, times out, is cancelled or its future is dropped — a stage must not leave processes
//! behind (a start command that launches a long-lived app must hand it to a supervisor outside
//! its process group). Output is split into lines by [`crate::lines`] (cut at the operator's
//! line limit, lossy UTF-8) and handed to the sink in small batches as it is produced.
//!
//! It does not choose statuses: it reports how the command ended and the executor decides.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DeploymentSink, SinkError};
use crate::lines::{
    read_lines, sleep_until_opt, BatchPolicy, Batcher, LineSplitter, Overlong,
    LINE_CHANNEL_CAPACITY, MAX_BATCH_LINES,
};
use crate::model::{LogStream, NewLine};

/// Lines arriving within this window of the first one share a batch; short enough that logs
/// still look live.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// How the stage's output is batched into `append_logs` calls: stdout and stderr lines share a
/// batch (each line keeps its stream), so interleaved output costs no extra calls.
const BATCHING: BatchPolicy = BatchPolicy {
    window: BATCH_WINDOW,
    one_stream: false,
};
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
    /// Extra environment variables (on top of `INHERITED_ENV_VARS`).
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
    let splitter = || LineSplitter::new(stage.max_line_bytes, Overlong::Cut);
    // Stage output goes to the deployment's log only.
    let no_echo = || None::<tokio::io::Sink>;
    if let Some(stdout) = child.stdout.take() {
        let reader = read_lines(
            stdout,
            splitter(),
            LogStream::Stdout,
            sender.clone(),
            no_echo(),
        );
        tokio::spawn(reader);
    }
    if let Some(stderr) = child.stderr.take() {
        let reader = read_lines(
            stderr,
            splitter(),
            LogStream::Stderr,
            sender.clone(),
            no_echo(),
        );
        tokio::spawn(reader);
    }
    drop(sender);

    let mut batcher = Batcher::new(BATCHING);
    let mut received = Vec::with_capacity(MAX_BATCH_LINES);
    let mut readers_done = false;
    let ended: Result<StageOutcome, StageError> = loop {
        let flush_at = batcher.deadline();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ok(StageOutcome::Cancelled),
            _ = tokio::time::sleep_until(deadline.at) => break Ok(StageOutcome::TimedOut(deadline.kind)),
            status = child.wait() => break status.map(StageOutcome::Exited).map_err(StageError::Wait),
            count = lines.recv_many(&mut received, MAX_BATCH_LINES), if !readers_done => {
                readers_done = count == 0;
                if let Err(error) = forward(&mut batcher, &mut received, readers_done, sink).await {
                    break Err(StageError::Sink(error));
                }
            }
            () = sleep_until_opt(flush_at) => {
                if let Some(batch) = batcher.take_due(Instant::now()) {
                    if let Err(error) = sink.append_logs(batch.lines).await {
                        break Err(StageError::Sink(error));
                    }
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
        drain(&mut lines, &mut batcher, sink).await?;
    }
    Ok(outcome)
}

/// Forwards what is left in the pipes once the group is dead, for at most [`DRAIN_GRACE`], then
/// whatever is still pending.
async fn drain<S: DeploymentSink>(
    lines: &mut mpsc::Receiver<NewLine>,
    batcher: &mut Batcher,
    sink: &S,
) -> Result<(), SinkError> {
    let stop = Instant::now() + DRAIN_GRACE;
    let mut received = Vec::with_capacity(MAX_BATCH_LINES);
    loop {
        let flush_at = batcher.deadline();
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(stop) => break,
            count = lines.recv_many(&mut received, MAX_BATCH_LINES) => {
                forward(batcher, &mut received, count == 0, sink).await?;
                if count == 0 {
                    break;
                }
            }
            () = sleep_until_opt(flush_at) => {
                if let Some(batch) = batcher.take_due(Instant::now()) {
                    sink.append_logs(batch.lines).await?;
                }
            }
        }
    }
    if let Some(batch) = batcher.take() {
        sink.append_logs(batch.lines).await?;
    }
    Ok(())
}

/// Moves the `received` lines into the batcher, handing every batch that fills to the sink; with
/// `readers_done` (no more lines will come), the pending batch too.
async fn forward<S: DeploymentSink>(
    batcher: &mut Batcher,
    received: &mut Vec<NewLine>,
    readers_done: bool,
    sink: &S,
) -> Result<(), SinkError> {
    for line in received.drain(..) {
        if let Some(batch) = batcher.push(line, Instant::now()) {
            sink.append_logs(batch.lines).await?;
        }
    }
    if readers_done {
        if let Some(batch) = batcher.take() {
            sink.append_logs(batch.lines).await?;
        }
    }
    Ok(())
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
