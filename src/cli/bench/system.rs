//! What the bench tool reads from the operating system about the processes it measures: a
//! system-wide monotonic clock (shared by the tool's processes, so a subscriber child can compare
//! its arrival times with the pusher's ack times), CPU time and resident memory from `/proc`, the
//! pid of the process listening on a TCP port, and executables on `PATH`.
//!
//! Linux only (`/proc`); every reader returns `None` where the information is not there, and
//! nothing here changes any process.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Microseconds on `CLOCK_MONOTONIC`: the same clock in every process of the machine (unlike
/// `Instant`, whose values cannot leave the process).
pub(super) fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// An `Instant` paired with the monotonic clock read at the same moment, to turn later
/// instants into machine-wide microseconds.
#[derive(Clone, Copy)]
pub(super) struct MonoOrigin {
    at: Instant,
    mono: u64,
}

impl MonoOrigin {
    pub(super) fn now() -> Self {
        Self {
            at: Instant::now(),
            mono: mono_us(),
        }
    }

    /// `at` in `CLOCK_MONOTONIC` microseconds.
    pub(super) fn mono(&self, at: Instant) -> u64 {
        self.mono + at.saturating_duration_since(self.at).as_micros() as u64
    }

    /// The instant of a `CLOCK_MONOTONIC` microsecond value.
    pub(super) fn instant(&self, mono: u64) -> Instant {
        if mono >= self.mono {
            self.at + Duration::from_micros(mono - self.mono)
        } else {
            self.at
                .checked_sub(Duration::from_micros(self.mono - mono))
                .unwrap_or(self.at)
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// CPU seconds (user + system) a process used so far; `None` for "self" means no `/proc`.
pub(super) fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".into(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 (the 12th and 13th after the command name).
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / clock_ticks())
}

/// Resident memory of a process, in KiB (`VmRSS` of `/proc/PID/status`).
pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The pid of the process listening on TCP `port` on this machine (found through the socket's
/// inode in `/proc/net/tcp{,6}` and the processes' descriptors), if it can be seen.
pub(super) fn pid_listening_on(port: u16) -> Option<u32> {
    /// `st` of a listening socket in `/proc/net/tcp`.
    const TCP_LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) && *state == TCP_LISTEN {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let own = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The first `name` on `PATH` that is a file.
pub(super) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// How often the server's resident memory is sampled during a run.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// What the server process used during a run, beside the tool's own CPU.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerUsage {
    pub server_pid: u32,
    pub server_cpu_secs: f64,
    /// This process and its subscriber child, if any.
    pub tool_cpu_secs: f64,
    pub wall_secs: f64,
    pub server_rss_start_kib: u64,
    /// Highest resident memory seen, sampled every 50 ms during the run.
    pub server_rss_peak_kib: u64,
    pub server_rss_end_kib: u64,
}

/// Samples a server's CPU and memory from the start of a run to its end.
pub(super) struct UsageProbe {
    pid: u32,
    cpu: f64,
    tool_cpu: f64,
    rss_start: u64,
    peak: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
    at: Instant,
}

impl UsageProbe {
    /// Starts sampling `pid`; `None` when its `/proc` entry cannot be read.
    pub(super) fn start(pid: u32) -> Option<Self> {
        let cpu = cpu_secs(Some(pid))?;
        let rss_start = rss_kib(pid).unwrap_or(0);
        let peak = Arc::new(AtomicU64::new(rss_start));
        let sampled = peak.clone();
        let sampler = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RSS_SAMPLE_INTERVAL).await;
                match rss_kib(pid) {
                    Some(rss) => {
                        sampled.fetch_max(rss, Ordering::Relaxed);
                    }
                    None => return,
                }
            }
        });
        Some(Self {
            pid,
            cpu,
            tool_cpu: cpu_secs(None).unwrap_or(0.0),
            rss_start,
            peak,
            sampler,
            at: Instant::now(),
        })
    }

    /// Ends sampling; `child_cpu_secs` is CPU the tool spent in other processes (a subscriber
    /// child) during the run.
    pub(super) fn finish(self, child_cpu_secs: f64) -> ServerUsage {
        self.sampler.abort();
        let end = rss_kib(self.pid).unwrap_or(0);
        ServerUsage {
            server_pid: self.pid,
            server_cpu_secs: cpu_secs(Some(self.pid)).unwrap_or(self.cpu) - self.cpu,
            tool_cpu_secs: cpu_secs(None).unwrap_or(0.0) - self.tool_cpu + child_cpu_secs,
            wall_secs: self.at.elapsed().as_secs_f64(),
            server_rss_start_kib: self.rss_start,
            server_rss_peak_kib: self.peak.load(Ordering::Relaxed).max(end),
            server_rss_end_kib: end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_process_is_found_by_its_port() {
        // This test process is the listener; the lookup skips its own pid, so a child that
        // inherits the socket is what it must find. Here: only that our own socket is seen.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(
            pid_listening_on(port),
            None,
            "the tool's own pid is skipped"
        );
        drop(listener);
        assert!(cpu_secs(None).is_some());
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn monotonic_microseconds_round_trip_through_instants() {
        let origin = MonoOrigin::now();
        let later = Instant::now() + Duration::from_millis(5);
        let mono = origin.mono(later);
        let back = origin.instant(mono);
        let diff = if back > later {
            back - later
        } else {
            later - back
        };
        assert!(diff <= Duration::from_micros(1), "{diff:?}");
        assert!(mono_us() >= origin.mono);
    }
}
