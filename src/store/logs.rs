//! Log segment files: the text of every deployment's output.
//!
//! Each deployment's segments (the `codec` segment layout) are appended back to back to one file,
//! `DIR/<deployment id>.log`; the store's index (tag `0x0B`, one small record per segment) says
//! where each segment starts, how long it is and how many lines it holds. Keeping the text out
//! of sled keeps sled's memory and write amplification independent of the log volume (sled keeps
//! written pages in memory and writes large nodes as unsynced blob files), and makes a commit one
//! `pwrite` + `fdatasync` per file.
//!
//! Crash safety: the writer writes and syncs the files *before* it commits the index entries
//! that point into them. After a crash a file may hold a torn tail no index entry points to; the
//! writer cuts it off (`Appender::open`) before it appends again, and readers never read past
//! an indexed segment.
//!
//! Only the writer thread appends (`Appender`); readers (`LogFiles::read`) read any time.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[cfg(any(test, feature = "test-support"))]
use super::faults::{injected, Op};

/// Log files hold every deployment's output (build logs carry secrets often enough): only the
/// service's own user may read them.
const FILE_MODE: u32 = 0o600;
/// The log directory's mode, for the same reason.
const DIR_MODE: u32 = 0o700;

/// The fault a `test-support` build injects into `op` (never anything in other builds).
#[cfg(any(test, feature = "test-support"))]
fn fault(op: Op) -> Option<io::Error> {
    injected(op)
}

/// Where a log-file write failed: the writer decides from this (and the `errno`) whether the
/// failure is transient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStage {
    /// Opening or creating a file: nothing was written.
    Open,
    /// A `pwrite`: part of the group may be in the file, past its indexed end.
    Write,
    /// An `fdatasync` (of a file or the directory): the group's pages may have been dropped.
    Sync,
}

/// A failed group write: the stage and the I/O error.
#[derive(Debug, thiserror::Error)]
#[error("log file {stage:?}: {source}")]
pub struct LogError {
    pub stage: LogStage,
    #[source]
    pub source: io::Error,
}

impl LogError {
    fn at(stage: LogStage) -> impl FnOnce(io::Error) -> LogError {
        move |source| LogError { stage, source }
    }
}

use crate::model::DeploymentId;

/// The directory of log files.
#[derive(Debug, Clone)]
pub struct LogFiles {
    dir: PathBuf,
    /// Failures tests inject into the writer's file writes and syncs; shared by clones, so a
    /// test arms the ones the writer thread uses.
    #[cfg(test)]
    pub(crate) faults: std::sync::Arc<LogFaults>,
}

/// Test seam: the log-file operations a test can make fail (see `store::faults`).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct LogFaults {
    /// An append's `pwrite` fails.
    pub(crate) write: super::faults::FaultPoint,
    /// An append's `pwrite` is acknowledged but never reaches the file, as on a disk that
    /// loses acknowledged writes: the index then points past the file.
    pub(crate) lose_write: super::faults::FaultPoint,
    /// A file's `fdatasync` fails.
    pub(crate) sync: super::faults::FaultPoint,
    /// Opening a file fails.
    pub(crate) open: super::faults::FaultPoint,
    /// The `errno` the injected failures carry; 0: none (an error that is not an OS error).
    pub(crate) errno: std::sync::atomic::AtomicI32,
}

#[cfg(test)]
impl LogFaults {
    fn error(&self, what: &str) -> io::Error {
        match self.errno.load(std::sync::atomic::Ordering::SeqCst) {
            0 => io::Error::other(format!("injected log {what} failure")),
            errno => io::Error::from_raw_os_error(errno),
        }
    }
}

impl LogFiles {
    /// Opens (creating) the directory, mode 0700 (an existing one is made 0700 too).
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            #[cfg(test)]
            faults: Default::default(),
        })
    }

    /// The writer's one way to write log text (so tests can make it fail).
    fn write_at(&self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(test)]
        {
            if self.faults.write.hit() {
                return Err(self.faults.error("write"));
            }
            if self.faults.lose_write.hit() {
                return Ok(());
            }
        }
        #[cfg(any(test, feature = "test-support"))]
        {
            if let Some(err) = fault(Op::LogWrite) {
                return Err(err);
            }
            if let Some(err) = fault(Op::LogWriteTorn) {
                file.write_all_at(&bytes[..bytes.len() / 2], offset)?;
                return Err(err);
            }
        }
        file.write_all_at(bytes, offset)
    }

    /// The writer's one way to open a file for writing (so tests can make it fail), mode 0600.
    fn open_for_write(&self, path: &Path) -> io::Result<File> {
        #[cfg(test)]
        if self.faults.open.hit() {
            return Err(self.faults.error("open"));
        }
        #[cfg(any(test, feature = "test-support"))]
        if let Some(err) = fault(Op::LogOpen) {
            return Err(err);
        }
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(FILE_MODE)
            .open(path)
    }

    /// The writer's one way to make a log file durable (so tests can make it fail).
    /// Starts writing `file`'s dirty pages out without waiting (Linux `sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`): a hint, so that the `fdatasync`s that follow overlap the
    /// files' writeback instead of each waiting for its own in turn. Its errors are not
    /// reported here: the `fdatasync` that follows reports any (and is what durability rests
    /// on).
    fn start_writeback(file: &File) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a descriptor `file` keeps open; no memory is passed.
            let _ = unsafe {
                libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
        #[cfg(not(target_os = "linux"))]
        let _ = file;
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.sync.hit() {
            return Err(self.faults.error("fdatasync"));
        }
        #[cfg(any(test, feature = "test-support"))]
        if let Some(err) = fault(Op::LogSync) {
            return Err(err);
        }
        file.sync_data()
    }

    /// The file of one deployment.
    pub fn path(&self, id: DeploymentId) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// Opens a deployment's file for reading.
    pub fn open_for_read(&self, id: DeploymentId) -> io::Result<File> {
        File::open(self.path(id))
    }

    /// Reads `len` bytes at `offset` of an open file.
    pub fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Removes a deployment's file (its index entries must be gone already).
    pub fn remove(&self, id: DeploymentId) {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(deployment = %id, error = %err, "cannot remove a log file"),
        }
    }

    /// Bytes used by all log files.
    pub fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Makes the directory's entries (newly created files) durable.
    pub fn sync_dir(&self) -> io::Result<()> {
        #[cfg(any(test, feature = "test-support"))]
        if let Some(err) = fault(Op::LogOpen) {
            return Err(err);
        }
        let dir = File::open(&self.dir)?;
        self.sync_data(&dir)
    }

    /// Whether the log directory takes a durable write now: creates, writes, syncs and removes
    /// a probe file. The writer's way to see that a transient failure (a full disk, no free
    /// descriptor) has cleared before it takes writes again.
    pub fn probe(&self) -> io::Result<()> {
        let path = self.dir.join(PROBE_FILE);
        let file = self.open_for_write(&path)?;
        let written = self
            .write_at(&file, b"probe", 0)
            .and_then(|()| self.sync_data(&file));
        drop(file);
        let removed = std::fs::remove_file(&path);
        written?;
        removed
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The writer's probe file name (never a deployment's: those end in `.log`).
pub const PROBE_FILE: &str = "writer-probe.tmp";

/// The writer's open files, one per unfinished deployment that has output.
#[derive(Default)]
pub struct Appender {
    open: HashMap<DeploymentId, File>,
    /// Files created since the last directory sync.
    created: bool,
}

impl Appender {
    /// The open file of `id`; on first use the file is created or cut to `indexed_end`, the end
    /// of its last indexed segment (dropping a torn tail left by a crash).
    fn open(
        &mut self,
        logs: &LogFiles,
        id: DeploymentId,
        indexed_end: u64,
    ) -> Result<&File, LogError> {
        if !self.open.contains_key(&id) {
            let path = logs.path(id);
            let existed = path.exists();
            let file = logs
                .open_for_write(&path)
                .map_err(LogError::at(LogStage::Open))?;
            let len = file.metadata().map_err(LogError::at(LogStage::Open))?.len();
            if len < indexed_end {
                return Err(LogError::at(LogStage::Open)(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} is {len} bytes but its index ends at {indexed_end}",
                        path.display()
                    ),
                )));
            }
            if len > indexed_end {
                tracing::warn!(path = %path.display(), len, indexed_end, "cutting a torn log tail");
                file.set_len(indexed_end)
                    .map_err(LogError::at(LogStage::Write))?;
            }
            self.created |= !existed;
            self.open.insert(id, file);
        }
        Ok(self.open.get(&id).expect("invariant: inserted above"))
    }

    /// Writes one group's appends, in order, then makes every touched file durable.
    /// `appends`: (deployment, offset, segment); the first append of a deployment in the group
    /// starts at its indexed end.
    ///
    /// On failure nothing of the group may be relied on: the caller drops the open files
    /// ([`Appender::forget_open`]) so that the next write reopens them and cuts what this one
    /// left past the indexed end, and rewrites from memory; it never syncs again as if the
    /// failed group's pages were safe.
    pub fn write_durably(
        &mut self,
        logs: &LogFiles,
        appends: &[(DeploymentId, u64, super::Segment)],
    ) -> Result<(), LogError> {
        let mut touched: Vec<DeploymentId> = Vec::new();
        for (id, offset, segment) in appends {
            let file = self.open(logs, *id, *offset)?;
            logs.write_at(file, segment.as_bytes(), *offset)
                .map_err(LogError::at(LogStage::Write))?;
            if !touched.contains(id) {
                touched.push(*id);
            }
        }
        if touched.len() > 1 {
            // Several files (one per deployment pushing): their writeback all starts now, and
            // the syncs below wait for I/O already in flight side by side.
            for id in &touched {
                LogFiles::start_writeback(&self.open[id]);
            }
        }
        for id in &touched {
            logs.sync_data(&self.open[id])
                .map_err(LogError::at(LogStage::Sync))?;
        }
        // Cleared only once the directory sync succeeded: a failed one is redone next time.
        if self.created {
            logs.sync_dir().map_err(LogError::at(LogStage::Sync))?;
            self.created = false;
        }
        Ok(())
    }

    /// Closes a finished deployment's file.
    pub fn close(&mut self, id: DeploymentId) {
        self.open.remove(&id);
    }

    /// Closes every file after a failed group: each is reopened (and cut back to its indexed
    /// end) by its next write. A pending directory sync stays pending.
    pub fn forget_open(&mut self) {
        self.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_are_durable_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = LogFiles::open(dir.path()).expect("open");
        let id = DeploymentId::generate();
        let mut appender = Appender::default();
        appender
            .write_durably(
                &logs,
                &[
                    (id, 0, crate::store::Segment::from_stored(&b"abc"[..])),
                    (id, 3, crate::store::Segment::from_stored(&b"de"[..])),
                ],
            )
            .expect("write");
        let file = logs.open_for_read(id).expect("read");
        assert_eq!(LogFiles::read_at(&file, 1, 4).expect("read"), b"bcde");
        // A crash left bytes past the index (which ends at 5): they are cut before appending.
        std::fs::write(logs.path(id), b"abcdeTORN").expect("tear");
        let mut appender = Appender::default();
        appender
            .write_durably(
                &logs,
                &[(id, 5, crate::store::Segment::from_stored(&b"f"[..]))],
            )
            .expect("write");
        assert_eq!(std::fs::read(logs.path(id)).expect("read"), b"abcdef");
        // An index pointing past the file is an error, not silent loss.
        let mut appender = Appender::default();
        assert!(appender
            .write_durably(
                &logs,
                &[(id, 10, crate::store::Segment::from_stored(&b"x"[..]))]
            )
            .is_err());
        logs.remove(id);
        assert!(!logs.path(id).exists());
    }
}
