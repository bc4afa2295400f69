//! A connection's phase (reading a head, idle, requests in flight) and the watchdog that ends a
//! connection whose phase outlasts its timeout: the header-read and idle rules of
//! [`ConnectionRules`]. Nobody signals the watchdog; it looks at the phase when its own timer
//! fires.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::ConnectionRules;

/// Where a connection is between requests; the watchdog derives its deadline from it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Phase {
    /// Bytes of a request head arrived (or the connection was just accepted) at `since`, and
    /// the head is not complete yet: the header-read timeout runs.
    Headers { since: Instant },
    /// No request in flight since `since`: the idle timeout runs.
    Idle { since: Instant },
    /// Requests in flight (their responses not fully written): no timeout.
    Busy { in_flight: usize },
}

/// A connection's phase, shared by its socket, its requests and its watchdog. Updated with a
/// plain lock and never signalled: the watchdog looks at it only when its own timer fires (a
/// notification per request start and end was ~2.5 % of the server's time under load).
pub(super) struct Phases {
    phase: Mutex<Phase>,
    /// hyper serves the connection no more (it was upgraded, or ended): nobody reads the phase.
    closed: AtomicBool,
}

pub(super) type Activity = Arc<Phases>;

impl Phases {
    pub(super) fn new(phase: Phase) -> Activity {
        Arc::new(Phases {
            phase: Mutex::new(phase),
            closed: AtomicBool::new(false),
        })
    }

    pub(super) fn get(&self) -> Phase {
        *self.lock()
    }

    pub(super) fn modify(&self, change: impl FnOnce(&mut Phase)) {
        change(&mut self.lock());
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // A phase is a plain value; a panic elsewhere cannot leave it half-written.
        self.phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Held while hyper serves a connection: marks the phase closed once it does not any more.
pub(super) struct Watching(pub(super) Activity);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
    }
}

/// Which timeout ended a connection.
#[derive(Debug)]
pub(super) enum Expired {
    Headers,
    Idle,
}

/// Resolves when the connection's current phase outlasts its timeout. It wakes only at a
/// deadline (or every [`ConnectionRules`]' shortest timeout while requests are in flight), then
/// looks at the phase as it is: a phase that moved on since gives a later deadline, not an end.
pub(super) async fn watchdog(activity: Activity, rules: ConnectionRules) -> Expired {
    let recheck = match (rules.header_read_timeout, rules.idle_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let Some(recheck) = recheck else {
        // No rule: nothing to time.
        return std::future::pending().await;
    };
    loop {
        let deadline = match activity.get() {
            Phase::Headers { since } => rules
                .header_read_timeout
                .map(|t| (since + t, Expired::Headers)),
            Phase::Idle { since } => rules.idle_timeout.map(|t| (since + t, Expired::Idle)),
            Phase::Busy { .. } => None,
        };
        match deadline {
            Some((at, expired)) if at <= Instant::now() => return expired,
            Some((at, _)) => tokio::time::sleep_until(at).await,
            None => tokio::time::sleep(recheck).await,
        }
    }
}

/// One request in flight, from its head parsed to its response body written (or dropped).
pub(super) struct InFlight {
    activity: Activity,
}

impl InFlight {
    pub(super) fn begin(activity: Activity) -> InFlight {
        activity.modify(|phase| {
            *phase = match *phase {
                Phase::Busy { in_flight } => Phase::Busy {
                    in_flight: in_flight + 1,
                },
                Phase::Headers { .. } | Phase::Idle { .. } => Phase::Busy { in_flight: 1 },
            }
        });
        InFlight { activity }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.modify(|phase| {
            if let Phase::Busy { in_flight } = *phase {
                *phase = if in_flight > 1 {
                    Phase::Busy {
                        in_flight: in_flight - 1,
                    }
                } else {
                    Phase::Idle {
                        since: Instant::now(),
                    }
                };
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rules(header: u64, idle: u64) -> ConnectionRules {
        ConnectionRules {
            header_read_timeout: Some(Duration::from_secs(header)),
            idle_timeout: Some(Duration::from_secs(idle)),
            max_connections: 1,
            max_per_address: 0,
        }
    }

    /// The watchdog is not told of phase changes: it must still never end a busy connection,
    /// and time the idle rule from the end of the last request, not from an earlier phase.
    #[tokio::test(start_paused = true)]
    async fn the_unsignalled_watchdog_spares_busy_connections_and_times_idle_from_the_last_request()
    {
        let start = Instant::now();
        let activity = Phases::new(Phase::Idle { since: start });
        let first = tokio::spawn(watchdog(activity.clone(), rules(2, 10)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        // A request arrives and runs for 60 s, past many idle and header deadlines.
        let request = InFlight::begin(activity.clone());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!first.is_finished(), "a busy connection was ended");
        drop(request);
        let ended = Instant::now();
        let expired = first.await.unwrap();
        assert!(matches!(expired, Expired::Idle));
        assert!(Instant::now() - ended >= Duration::from_secs(10));
        assert!(Instant::now() - ended < Duration::from_secs(13));

        // Bytes of a head arrive after an idle spell: the header rule runs from then.
        let activity = Phases::new(Phase::Idle {
            since: Instant::now(),
        });
        let second = tokio::spawn(watchdog(activity.clone(), rules(2, 10)));
        tokio::time::sleep(Duration::from_secs(9)).await;
        let head = Instant::now();
        activity.modify(|phase| *phase = Phase::Headers { since: head });
        let expired = second.await.unwrap();
        assert!(matches!(expired, Expired::Headers));
        assert!(Instant::now() - head >= Duration::from_secs(2));
        assert!(Instant::now() - head < Duration::from_secs(4));
    }
}
