//! `[retention] max_log_bytes`: the most log a deployment may store. Every append (a pusher's
//! batch, the executor's output) passes [`LogLimit::admit`] on the writer, so one rule covers
//! both. Past the limit, lines are refused, one notice line says so, and the deployment goes on;
//! the append's reply says how many lines were dropped.
//!
//! The size counted is the deployment's log file (`store::logs`), which the writer knows
//! exactly (its indexed end), so the limit holds across restarts. A line is admitted when the
//! file stays within the limit with its text, its `\n` and its stream code; segment headers and
//! the notice itself may take the file a few bytes past it. Lines deployd writes with a status
//! change (why a deployment ended) are not appends and are always stored.
//!
//! Pure bookkeeping: no I/O.

use std::collections::HashSet;

use super::group::WriterState;
use crate::lines::Lines;
use crate::model::{DeploymentId, NewLine};
use crate::status::Status;

/// The default `max_log_bytes`: 256 MiB, far above any healthy build's output (a verbose
/// build logs a few MiB), low enough that a runaway loop cannot fill the disk.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 256 * 1024 * 1024;

/// What an append may store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// The first `keep` lines are stored.
    pub(crate) keep: usize,
    /// Lines of the append refused (the rest after `keep`).
    pub(crate) dropped: u64,
    /// The notice to store after the kept lines: the first refusal of this deployment.
    pub(crate) notice: Option<NewLine>,
}

/// The limit and the deployments that reached it (they were told once).
#[derive(Debug)]
pub(crate) struct LogLimit {
    /// 0: unlimited.
    max_bytes: u64,
    reached: HashSet<DeploymentId>,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LOG_BYTES)
    }
}

impl LogLimit {
    pub(crate) fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            reached: HashSet::new(),
        }
    }

    /// Which of `lines` a deployment whose log file is `used` bytes long may store. Given
    /// lines are kept or dropped whole (all the stored lines one was split into), and counted
    /// as given in `dropped`.
    pub(crate) fn admit(&mut self, deployment: DeploymentId, used: u64, lines: &Lines) -> Admitted {
        let all = Admitted {
            keep: lines.len(),
            dropped: 0,
            notice: None,
        };
        if self.max_bytes == 0 {
            return all;
        }
        let given_from = |from: usize| {
            (from..lines.len())
                .filter(|&i| lines.starts_given(i))
                .count() as u64
        };
        if self.reached.contains(&deployment) {
            return Admitted {
                keep: 0,
                dropped: given_from(0),
                notice: None,
            };
        }
        // Most appends are far from the limit: one sum decides.
        if used.saturating_add(lines.stored_cost_of_all()) <= self.max_bytes {
            return all;
        }
        let mut total = used;
        // The first stored line of the given line being counted.
        let mut given_start = 0;
        for i in 0..lines.len() {
            if lines.starts_given(i) {
                given_start = i;
            }
            total = total.saturating_add(lines.stored_cost(i));
            if total > self.max_bytes {
                self.reached.insert(deployment);
                return Admitted {
                    keep: given_start,
                    dropped: given_from(given_start),
                    notice: Some(NewLine::system(format!(
                        "!     Log limit of {} bytes reached; further output dropped",
                        self.max_bytes
                    ))),
                };
            }
        }
        all
    }

    /// The deployment ended or is gone: nothing more will be appended to it.
    pub(crate) fn forget(&mut self, deployment: DeploymentId) {
        self.reached.remove(&deployment);
    }
}

impl WriterState {
    /// The append path's one call: cuts `lines` to what the deployment may still store (plus
    /// the notice, the first time) and returns how many were dropped. A deployment that takes
    /// no lines (finished, queued, unknown) is left to the lifecycle to refuse.
    pub(super) fn apply_log_limit(&mut self, deployment: DeploymentId, lines: &mut Lines) -> u64 {
        match self.lifecycle.get(deployment) {
            Some(record) if record.status != Status::Queued => {}
            _ => return 0,
        }
        let used = self.log_ends.get(&deployment).copied().unwrap_or(0);
        let admitted = self.log_limit.admit(deployment, used, lines);
        lines.truncate(admitted.keep);
        if let Some(notice) = admitted.notice {
            lines.extend(&Lines::from(notice));
        }
        admitted.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LogStream;

    #[test]
    fn lines_past_the_limit_are_refused_with_one_notice_then_silently() {
        let mut limit = LogLimit::new(10);
        let id = DeploymentId::generate();
        let lines = Lines::of_stream(LogStream::Stdout, &["abc", "defg"]);
        // "abc" costs 3+2 = 5 bytes and fits in 10; "defg" would take the file to 11.
        let first = limit.admit(id, 0, &lines);
        assert_eq!((first.keep, first.dropped), (1, 1));
        let notice = first.notice.expect("told once");
        assert_eq!(
            notice.text,
            "!     Log limit of 10 bytes reached; further output dropped"
        );
        let again = limit.admit(id, 5, &Lines::of_stream(LogStream::Stdout, &["x"]));
        assert_eq!(
            again,
            Admitted {
                keep: 0,
                dropped: 1,
                notice: None
            }
        );
        // Another deployment is not affected.
        let abc = Lines::of_stream(LogStream::Stdout, &["abc"]);
        let other = limit.admit(DeploymentId::generate(), 0, &abc);
        assert_eq!((other.keep, other.dropped), (1, 0));
        limit.forget(id);
        assert_eq!(limit.admit(id, 0, &abc).keep, 1);
    }

    #[test]
    fn zero_means_unlimited() {
        let mut limit = LogLimit::new(0);
        let lines = Lines::of_stream(LogStream::Stdout, &["x".repeat(1000)]);
        let admitted = limit.admit(DeploymentId::generate(), u64::MAX - 1, &lines);
        assert_eq!((admitted.keep, admitted.dropped), (1, 0));
        assert!(admitted.notice.is_none());
    }

    #[test]
    fn a_given_line_split_in_several_stored_lines_is_kept_or_dropped_whole() {
        let mut limit = LogLimit::new(12);
        // "ab" costs 4; "cd\nef" is two stored lines of 4 each: 12 in all fits, then "g" not.
        let lines = Lines::of_stream(LogStream::Stdout, &["ab", "cd\nef", "g"]);
        let admitted = limit.admit(DeploymentId::generate(), 0, &lines);
        assert_eq!((admitted.keep, admitted.dropped), (3, 1));
        let mut limit = LogLimit::new(10);
        let admitted = limit.admit(DeploymentId::generate(), 0, &lines);
        assert_eq!(
            (admitted.keep, admitted.dropped),
            (1, 2),
            "cut before \"cd\", not inside it"
        );
    }
}
