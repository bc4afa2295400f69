//! Stage processes left behind by a crash.
//!
//! While a stage runs, its process group is recorded in `work_dir/<deployment>/stage.pgid`
//! together with the boot id and the group leader's start time. A graceful shutdown kills the
//! groups itself; after a crash (SIGKILL, OOM), the next start calls [`sweep`], which kills every
//! recorded group that is still the same process (same boot, same start time — so a reused pid
//! is never signalled) and removes the work directories.

use std::path::{Path, PathBuf};

/// The record file name inside a deployment's work directory.
pub const PGID_FILE: &str = "stage.pgid";

/// This boot's id (`/proc/sys/kernel/random/boot_id`), or empty when unavailable.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Records a running stage's process group (best effort: a failure only weakens the sweep).
pub fn record(file: &Path, pgid: i32) {
    let Some(started) = start_time(pgid) else {
        return;
    };
    let line = format!("{} {pgid} {started}\n", boot_id());
    if let Err(error) = std::fs::write(file, line) {
        tracing::warn!(path = %file.display(), %error, "cannot record the stage's process group");
    }
}

/// Forgets a stage's record once its group is killed.
pub fn forget(file: &Path) {
    let _ = std::fs::remove_file(file);
}

/// Kills the recorded group in `file` if it is still the same process group.
fn kill_recorded(file: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(file) else {
        return false;
    };
    let mut parts = text.split_whitespace();
    let (Some(boot), Some(pgid), Some(started)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(pgid), Ok(started)) = (pgid.parse::<i32>(), started.parse::<u64>()) else {
        return false;
    };
    if pgid <= 1 || boot != boot_id() || start_time(pgid) != Some(started) {
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; the boot id and start time checks
    // above make sure the group is the one we started.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    true
}

/// Kills stage processes a crashed run left behind and removes the work directories.
/// Returns the deployment work directories that were cleaned.
pub fn sweep(work_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return Vec::new();
    };
    let mut cleaned = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if kill_recorded(&path.join(PGID_FILE)) {
            tracing::warn!(path = %path.display(), "killed stage processes left by the last run");
        }
        if let Err(error) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), %error, "cannot remove a leftover work directory");
        }
        cleaned.push(path);
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    #[test]
    fn sweep_kills_a_recorded_group_and_removes_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("0190-deployment");
        std::fs::create_dir_all(&work).expect("mkdir");
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .process_group(0)
            .spawn()
            .expect("spawn");
        let pgid = child.id() as i32;
        record(&work.join(PGID_FILE), pgid);
        let cleaned = sweep(dir.path());
        assert_eq!(cleaned, vec![work.clone()]);
        assert!(!work.exists());
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the group was killed");
        // No member of the group is left running (a killed, orphaned member may linger as a
        // zombie until init reaps it: that is not running).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while live_members(pgid) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "group {pgid} still running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Processes of group `pgid` that are not zombies.
    fn live_members(pgid: i32) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let Some(close) = stat.rfind(')') else {
                    return false;
                };
                let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
                fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
            })
            .count()
    }

    #[test]
    fn a_stale_record_is_not_signalled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(PGID_FILE);
        // Our own pid with a wrong start time: must not be killed.
        std::fs::write(&file, format!("{} {} 1\n", boot_id(), std::process::id())).expect("write");
        assert!(!kill_recorded(&file));
        std::fs::write(&file, "other-boot 12345 99\n").expect("write");
        assert!(!kill_recorded(&file));
    }
}
