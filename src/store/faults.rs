//! Test-only fault injection for the store: a [`FaultPoint`] fails the n-th call of one
//! operation, so the writer's failure paths run deterministically in unit tests
//! (`engine::FaultyEngine` for the engine, `logs::LogFaults` for the log files).
//!
//! Compiled only for tests: nothing here may change what a build does.

use std::sync::atomic::{AtomicU64, Ordering};

/// One place that can be made to fail: counts its calls and fails the one it is armed for.
#[derive(Debug, Default)]
pub(crate) struct FaultPoint {
    calls: AtomicU64,
    /// The call number (1-based, counted since creation) that fails; 0: none.
    fail_at: AtomicU64,
}

impl FaultPoint {
    /// Makes the `nth` call from now fail (1: the next one); the calls after it pass again.
    pub(crate) fn arm(&self, nth: u64) {
        assert!(nth > 0, "arm(1) fails the next call");
        let calls = self.calls.load(Ordering::SeqCst);
        self.fail_at.store(calls + nth, Ordering::SeqCst);
    }

    /// Counts a call; true when it is the one that must fail.
    pub(crate) fn hit(&self) -> bool {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        call == self.fail_at.load(Ordering::SeqCst)
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
    }
}
