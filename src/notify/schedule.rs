//! When to try a delivery again, and whether to. Pure (the random draw is passed in).
//!
//! The n-th retry waits `first * 2^(n-1)`, capped at `max`, then scaled by a jitter factor in
//! `[0.5, 1]`, so receivers that failed together are not hit together again. Timeouts,
//! connection errors and 5xx are retried; a 4xx is final except 408 (timeout) and 429 (rate
//! limited); a refused address is final.

use std::time::Duration;

/// What one attempt's result means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    Retry,
    /// Never retried (a 4xx other than 408/429, a refused URL).
    Final,
}

/// The verdict for an HTTP status answered by the receiver.
pub fn verdict_for_status(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 => Verdict::Retry,
        400..=499 => Verdict::Final,
        // 1xx/3xx (redirects are not followed: a webhook URL is configured exactly) and 5xx.
        _ => Verdict::Retry,
    }
}

/// The verdict once the delivery's age is known: a retry past `retry_for` (0: forever) is
/// final, so a dead receiver is given up after that long.
pub fn within_retry_window(verdict: Verdict, age: Duration, retry_for: Duration) -> Verdict {
    match verdict {
        Verdict::Retry if !retry_for.is_zero() && age >= retry_for => Verdict::Final,
        verdict => verdict,
    }
}

/// The delay before the retry after `failures` failed attempts (`failures >= 1`); `jitter`
/// is a draw in `[0, 1)`.
pub fn retry_delay(failures: u32, first: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(40);
    let base = first.saturating_mul(1u32 << doublings.min(31)).min(max);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_and_stop_at_the_maximum() {
        let first = Duration::from_secs(5);
        let max = Duration::from_secs(3600);
        assert_eq!(retry_delay(1, first, max, 1.0), first);
        assert_eq!(retry_delay(2, first, max, 1.0), Duration::from_secs(10));
        assert_eq!(retry_delay(3, first, max, 0.0), Duration::from_secs(10));
        assert_eq!(retry_delay(30, first, max, 1.0), max);
        assert_eq!(retry_delay(u32::MAX, first, max, 0.0), max / 2);
    }

    #[test]
    fn the_first_retry_comes_within_ten_seconds_by_default() {
        let d = retry_delay(1, Duration::from_secs(5), Duration::from_secs(3600), 0.999);
        assert!(d <= Duration::from_secs(10));
    }

    #[test]
    fn a_delivery_is_given_up_once_older_than_the_retry_window_unless_it_is_unlimited() {
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            within_retry_window(Verdict::Retry, hour, day),
            Verdict::Retry
        );
        assert_eq!(
            within_retry_window(Verdict::Retry, day, day),
            Verdict::Final
        );
        assert_eq!(
            within_retry_window(Verdict::Retry, 30 * day, Duration::ZERO),
            Verdict::Retry
        );
        assert_eq!(
            within_retry_window(Verdict::Delivered, 2 * day, day),
            Verdict::Delivered
        );
    }

    #[test]
    fn only_timeouts_rate_limits_and_server_errors_are_retried() {
        assert_eq!(verdict_for_status(204), Verdict::Delivered);
        assert_eq!(verdict_for_status(500), Verdict::Retry);
        assert_eq!(verdict_for_status(503), Verdict::Retry);
        assert_eq!(verdict_for_status(408), Verdict::Retry);
        assert_eq!(verdict_for_status(429), Verdict::Retry);
        assert_eq!(verdict_for_status(404), Verdict::Final);
        assert_eq!(verdict_for_status(410), Verdict::Final);
    }
}
