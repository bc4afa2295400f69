//! The deployment status state machine.
//!
//! Owns the list of statuses, which of them are terminal, and which transitions are allowed.
//! Pure: no I/O, no clock, no storage. The store's writer asks [`check_transition`] before it
//! writes any status change, so an illegal change is refused before anything is stored.
//!
//! ```text
//! queued → building → pushing → starting → success
//!                                        → crashed-error | timeout-error | hook-error
//!                     → pushing → aborted
//!          building → aborted | build-error
//! queued → aborted
//! ```
//!
//! `queued` means waiting for the app's running deployment or for a build slot
//! (`[executor] max_concurrent`); a cancel ends a deployment the way a lost session does
//! ([`Status::on_session_lost`]).

use std::fmt;
use std::str::FromStr;

/// A deployment status, spelled on the wire exactly as Scalingo spells it.
///
/// The order (`Ord`) is the graph's: every allowed transition goes to a greater status, so a
/// deployment's statuses only ever increase and "already sent this one or a later one" is a
/// comparison (the stream's deduplication and the push endpoint's cursor rely on it). The
/// on-disk byte of each status is the store codec's business (`store::codec::status_code`),
/// not this order's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Queued,
    Building,
    Pushing,
    Starting,
    Success,
    Aborted,
    BuildError,
    CrashedError,
    TimeoutError,
    HookError,
}

impl Status {
    /// Every status, in a stable order (used by exhaustive tests and the codec).
    pub const ALL: [Status; 10] = [
        Status::Queued,
        Status::Building,
        Status::Pushing,
        Status::Starting,
        Status::Success,
        Status::Aborted,
        Status::BuildError,
        Status::CrashedError,
        Status::TimeoutError,
        Status::HookError,
    ];

    /// The wire spelling (`"build-error"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Building => "building",
            Status::Pushing => "pushing",
            Status::Starting => "starting",
            Status::Success => "success",
            Status::Aborted => "aborted",
            Status::BuildError => "build-error",
            Status::CrashedError => "crashed-error",
            Status::TimeoutError => "timeout-error",
            Status::HookError => "hook-error",
        }
    }

    /// A terminal status ends the deployment: nothing may follow it, and `finished_at` is set.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            Status::Queued | Status::Building | Status::Pushing | Status::Starting
        )
    }

    /// The status a deployment takes when its pusher session ends while it is in `self`.
    ///
    /// `starting` becomes `timeout-error` (the start order was given and nobody saw it succeed);
    /// every other unfinished status becomes `aborted`. `None` for terminal statuses.
    pub fn on_session_lost(self) -> Option<Status> {
        match self {
            Status::Queued | Status::Building | Status::Pushing => Some(Status::Aborted),
            Status::Starting => Some(Status::TimeoutError),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status string that is not one of the ten known statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .iter()
            .copied()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A refused status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The deployment already ended; nothing may follow a terminal status.
    #[error("deployment already finished with status {from}, cannot move to {to}")]
    AlreadyFinished { from: Status, to: Status },
    /// The graph has no edge from `from` to `to`.
    #[error("illegal status transition {from} -> {to}")]
    Illegal { from: Status, to: Status },
}

/// Whether a deployment in `from` may move to `to`. The only place the graph is written down.
pub fn check_transition(from: Status, to: Status) -> Result<(), TransitionError> {
    use Status::*;
    if from.is_terminal() {
        return Err(TransitionError::AlreadyFinished { from, to });
    }
    let allowed = match from {
        Queued => matches!(to, Building | Aborted),
        Building => matches!(to, Pushing | Aborted | BuildError),
        Pushing => matches!(to, Starting | Aborted),
        Starting => matches!(to, Success | CrashedError | TimeoutError | HookError),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(TransitionError::Illegal { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Status::*;

    /// The documented edges, written out independently of `check_transition`'s match.
    const EDGES: &[(Status, Status)] = &[
        (Queued, Building),
        (Queued, Aborted),
        (Building, Pushing),
        (Building, Aborted),
        (Building, BuildError),
        (Pushing, Starting),
        (Pushing, Aborted),
        (Starting, Success),
        (Starting, CrashedError),
        (Starting, TimeoutError),
        (Starting, HookError),
    ];

    #[test]
    fn every_pair_follows_the_documented_graph() {
        for from in Status::ALL {
            for to in Status::ALL {
                let expected = EDGES.contains(&(from, to));
                let got = check_transition(from, to);
                assert_eq!(got.is_ok(), expected, "{from} -> {to}: {got:?}");
                if let Err(err) = got {
                    if from.is_terminal() {
                        assert_eq!(err, TransitionError::AlreadyFinished { from, to });
                    } else {
                        assert_eq!(err, TransitionError::Illegal { from, to });
                    }
                }
            }
        }
    }

    #[test]
    fn terminal_set_is_exactly_the_six_ends() {
        let terminal: Vec<Status> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![
                Success,
                Aborted,
                BuildError,
                CrashedError,
                TimeoutError,
                HookError
            ]
        );
    }

    #[test]
    fn names_and_codes_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            let json = serde_json::to_string(&status).expect("serialize");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(
                serde_json::from_str::<Status>(&json).expect("parse"),
                status
            );
        }
        assert!("done".parse::<Status>().is_err());
    }

    #[test]
    fn every_allowed_transition_goes_to_a_greater_status() {
        for from in Status::ALL {
            for to in Status::ALL {
                if check_transition(from, to).is_ok() {
                    assert!(to > from, "{from} -> {to} goes down in the order");
                }
            }
        }
    }

    #[test]
    fn a_lost_session_ends_as_documented() {
        assert_eq!(Queued.on_session_lost(), Some(Aborted));
        assert_eq!(Building.on_session_lost(), Some(Aborted));
        assert_eq!(Pushing.on_session_lost(), Some(Aborted));
        assert_eq!(Starting.on_session_lost(), Some(TimeoutError));
        for status in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert_eq!(status.on_session_lost(), None);
        }
        // The session-lost status is always a legal move.
        for status in [Queued, Building, Pushing, Starting] {
            let to = status.on_session_lost().expect("unfinished");
            assert!(check_transition(status, to).is_ok());
        }
    }

    proptest! {
        /// Random walks: applying only accepted transitions never leaves the graph, never moves
        /// after a terminal status, and every walk that ends does so in a terminal status.
        #[test]
        fn random_walks_stay_in_the_graph(steps in proptest::collection::vec(0usize..10, 0..40)) {
            let mut current = Queued;
            let mut finished = false;
            for step in steps {
                let to = Status::ALL[step];
                match check_transition(current, to) {
                    Ok(()) => {
                        prop_assert!(!finished, "moved after a terminal status");
                        prop_assert!(EDGES.contains(&(current, to)));
                        current = to;
                        finished = current.is_terminal();
                    }
                    Err(_) => prop_assert!(!EDGES.contains(&(current, to))),
                }
            }
            if current.is_terminal() {
                for to in Status::ALL {
                    prop_assert!(check_transition(current, to).is_err());
                }
            }
        }
    }
}
