//! Fault injection for the store, so the writer's failure paths run deterministically:
//!
//! - In unit tests, a [`FaultPoint`] fails the n-th call of one operation
//!   (`engine::FaultyEngine` for the engine, `logs::LogFaults` for the log files).
//! - In builds with the `test-support` feature (what `tests/` run), the real binary reads
//!   injected faults from the file named by [`FAULTS_FILE_ENV`] on every store operation (see
//!   [`injected`]), so a black-box test can make a commit fail with a real `errno` while the
//!   server runs and clear the fault again.
//!
//! Compiled only for tests and `test-support` builds: nothing here may change what a release
//! build does, and without the variable nothing is ever injected.

use std::io;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the faults file (read once, at the first store operation).
pub const FAULTS_FILE_ENV: &str = "DEPLOYD_TEST_FAULTS_FILE";

/// One store operation a fault can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Opening (or creating) a log file, the log directory, or the writer's probe file.
    LogOpen,
    /// A log file `pwrite`: fails before writing anything.
    LogWrite,
    /// A log file `pwrite` that writes the first half of its bytes, then fails (a short write
    /// on a full disk leaves a torn tail).
    LogWriteTorn,
    /// A log file's (or the log directory's) `fdatasync`.
    LogSync,
    /// An engine batch.
    EngineApply,
    /// The engine's durability point.
    EngineSync,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::LogOpen => "log_open",
            Op::LogWrite => "log_write",
            Op::LogWriteTorn => "log_write_torn",
            Op::LogSync => "log_sync",
            Op::EngineApply => "engine_apply",
            Op::EngineSync => "engine_sync",
        }
    }
}

/// The errno names a faults file may use.
const ERRNOS: &[(&str, i32)] = &[
    ("EMFILE", libc::EMFILE),
    ("ENFILE", libc::ENFILE),
    ("ENOSPC", libc::ENOSPC),
    ("EINTR", libc::EINTR),
    ("EAGAIN", libc::EAGAIN),
    ("EIO", libc::EIO),
    ("EROFS", libc::EROFS),
];

/// The fault injected into `op` now, if any: the faults file holds one `OPERATION ERRNO` per
/// line (`log_write ENOSPC`); every call of a listed operation fails with that `errno` until
/// the line is gone. A missing file or variable injects nothing.
pub(crate) fn injected(op: Op) -> Option<io::Error> {
    static PATH: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let path = PATH.get_or_init(|| std::env::var_os(FAULTS_FILE_ENV).map(Into::into));
    let text = std::fs::read_to_string(path.as_ref()?).ok()?;
    parse(&text, op)
}

fn parse(text: &str, op: Op) -> Option<io::Error> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != op.name() {
            return None;
        }
        let errno = words.next()?;
        let code = ERRNOS.iter().find(|(name, _)| *name == errno)?.1;
        Some(io::Error::from_raw_os_error(code))
    })
}

/// One place that can be made to fail: counts its calls and fails the one it is armed for.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct FaultPoint {
    calls: AtomicU64,
    /// The call number (1-based, counted since creation) that fails; 0: none.
    fail_at: AtomicU64,
    /// While set, every call fails (a fault that lasts until [`FaultPoint::clear`]).
    always: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl FaultPoint {
    /// Makes the `nth` call from now fail (1: the next one); the calls after it pass again.
    pub(crate) fn arm(&self, nth: u64) {
        assert!(nth > 0, "arm(1) fails the next call");
        let calls = self.calls.load(Ordering::SeqCst);
        self.fail_at.store(calls + nth, Ordering::SeqCst);
    }

    /// Makes every call fail until [`FaultPoint::clear`].
    pub(crate) fn fail_always(&self) {
        self.always.store(true, Ordering::SeqCst);
    }

    /// Ends [`FaultPoint::fail_always`].
    pub(crate) fn clear(&self) {
        self.always.store(false, Ordering::SeqCst);
    }

    /// Counts a call; true when it is one that must fail.
    pub(crate) fn hit(&self) -> bool {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        call == self.fail_at.load(Ordering::SeqCst) || self.always.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_point_fails_only_the_nth_call_from_now() {
        let point = FaultPoint::default();
        assert!(!point.hit());
        point.arm(2);
        assert!(!point.hit());
        assert!(point.hit());
        assert!(!point.hit());
        point.fail_always();
        assert!(point.hit() && point.hit());
        point.clear();
        assert!(!point.hit());
    }

    #[test]
    fn a_faults_file_line_fails_its_operation_with_its_errno_and_nothing_else() {
        let text = "log_write ENOSPC\nengine_sync EIO\nlog_sync EBOGUS\n";
        let err = parse(text, Op::LogWrite).expect("injected");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(
            parse(text, Op::EngineSync).and_then(|e| e.raw_os_error()),
            Some(libc::EIO)
        );
        assert!(
            parse(text, Op::LogSync).is_none(),
            "unknown errno names inject nothing"
        );
        assert!(parse(text, Op::LogOpen).is_none());
        assert!(parse(text, Op::LogWriteTorn).is_none());
    }
}
