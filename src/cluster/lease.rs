//! The leader lease: one JetStream key-value entry ([`super::LEADER_KEY`] in
//! [`super::LEASE_BUCKET`], whose `max_age` is the lease) that one node at a time holds.
//!
//! Acquiring is the engine's compare-and-set `create` (only one of racing nodes wins); holding
//! is an `update` with the last revision every lease/3 (a refused revision means another node
//! holds it: the holder's `fenced` token is cancelled); a clean shutdown deletes it, so that a
//! follower takes over at once instead of waiting for the expiry.
//!
//! This module decides who leads, nothing else: what a leader or a follower does is
//! `cluster::node`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::Context;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{ClusterError, LEADER_KEY, LEASE_BUCKET};

/// The longest a follower waits between two looks at the lease: a watch normally says at once
/// that it was released, but an expiry is silent (the engine just removes the entry).
const MAX_POLL: Duration = Duration::from_secs(1);
/// The shortest wait between two looks, so that a 1 s lease does not turn into a busy loop.
const MIN_POLL: Duration = Duration::from_millis(100);

/// The lease's value: who leads, where it is reached, and its term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    pub node_id: String,
    /// The base URL followers forward requests to.
    pub url: String,
    /// Increases with every takeover (see [`Lease::try_acquire`]); part of every WAL message
    /// id, so it is never reused by one node.
    pub term: u64,
}

/// One node's handle on the lease bucket.
#[derive(Clone)]
pub struct Lease {
    js: Context,
    kv: kv::Store,
    node_id: String,
    url: String,
    lease: Duration,
}

/// An engine error as a cluster error: a timeout is the engine being unreachable.
fn engine_error(error: impl std::fmt::Display + std::fmt::Debug) -> ClusterError {
    let text = error.to_string();
    if text.contains("timed out") || text.contains("no responders") || text.contains("closed") {
        ClusterError::Unreachable(text)
    } else {
        ClusterError::Engine(text)
    }
}

/// How long [`Lease::open`] retries opening the bucket, and then waits for it to answer reads.
const BUCKET_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Waits until the bucket answers a read of the lease. Right after a bucket is created, its
/// stream's replicas may not serve reads yet: a read is answered "503 no responders" until they
/// do (seen on two loaded cores, where the first `try_acquire` failed that way). Only the engine
/// being unreachable is waited out, for at most [`BUCKET_ANSWER_WAIT`].
async fn answering(kv: &kv::Store) -> Result<(), ClusterError> {
    let deadline = Instant::now() + BUCKET_ANSWER_WAIT;
    loop {
        match kv.entry(LEADER_KEY).await.map_err(engine_error) {
            Ok(_) => return Ok(()),
            Err(ClusterError::Unreachable(text)) if Instant::now() < deadline => {
                tracing::debug!(%text, "the lease bucket does not answer yet");
                tokio::time::sleep(MIN_POLL).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The lease bucket, created (with `lease` as its `max_age`) when missing. A creation that
/// timed out after the engine made it finds the bucket on the next try.
async fn open_bucket(
    js: &Context,
    lease: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    match js.get_key_value(LEASE_BUCKET).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: LEASE_BUCKET.to_owned(),
                description: "deployd's leader lease".to_owned(),
                history: 1,
                max_age: lease,
                storage: async_nats::jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(engine_error),
    }
}

impl Lease {
    /// Opens (creating it when missing) the lease bucket with `lease` as its `max_age`, once it
    /// answers reads.
    pub async fn open(
        js: Context,
        node_id: String,
        url: String,
        lease: Duration,
        replicas: usize,
    ) -> Result<Lease, ClusterError> {
        // An engine still electing its leaders times requests out (the bucket's creation on a
        // cluster just started, two loaded cores: the lib tests, once): retried like the reads.
        let deadline = Instant::now() + BUCKET_ANSWER_WAIT;
        let kv = loop {
            match open_bucket(&js, lease, replicas).await {
                Ok(kv) => break kv,
                Err(ClusterError::Unreachable(text)) if Instant::now() < deadline => {
                    tracing::debug!(%text, "the lease bucket cannot be opened yet");
                    tokio::time::sleep(MIN_POLL).await;
                }
                Err(error) => return Err(error),
            }
        };
        answering(&kv).await?;
        Ok(Lease {
            js,
            kv,
            node_id,
            url,
            lease,
        })
    }

    /// The lease's lifetime.
    pub fn duration(&self) -> Duration {
        self.lease
    }

    /// The lease as the engine has it now (`None`: nobody leads).
    pub async fn current(&self) -> Result<Option<(LeaseValue, u64)>, ClusterError> {
        let entry = self.kv.entry(LEADER_KEY).await.map_err(engine_error)?;
        Ok(entry.and_then(|entry| match entry.operation {
            Operation::Put => serde_json::from_slice(&entry.value)
                .ok()
                .map(|value| (value, entry.revision)),
            Operation::Delete | Operation::Purge => None,
        }))
    }

    /// One attempt at the lease; `None` when another node holds it.
    ///
    /// The term is the lease bucket's last stream sequence plus one: it grows with every write
    /// to the bucket and never goes back, even when every value expired with nobody watching
    /// (a "previous term + 1" read from the value would restart at 1 then, and a node reusing
    /// a term would have its first WAL appends taken for duplicates of its old ones).
    pub async fn try_acquire(&self) -> Result<Option<Held>, ClusterError> {
        let mut stream = self
            .js
            .get_stream(format!("KV_{LEASE_BUCKET}"))
            .await
            .map_err(engine_error)?;
        let last = stream
            .info()
            .await
            .map_err(engine_error)?
            .state
            .last_sequence;
        let value = LeaseValue {
            node_id: self.node_id.clone(),
            url: self.url.clone(),
            term: last + 1,
        };
        let bytes = serde_json::to_vec(&value).map_err(|e| ClusterError::Codec(e.to_string()))?;
        match self.kv.create(LEADER_KEY, bytes.clone().into()).await {
            Ok(revision) => Ok(Some(Held {
                lease: self.clone(),
                value,
                bytes,
                revision: Arc::new(AtomicU64::new(revision)),
                stop: CancellationToken::new(),
            })),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(error) => {
                let text = error.to_string();
                // Two racing creates: the loser's compare-and-set is refused.
                if text.contains("wrong last sequence") {
                    Ok(None)
                } else {
                    Err(engine_error(error))
                }
            }
        }
    }

    /// Waits until this node holds the lease, telling `seen` every leader it learns of on the
    /// way (`None`: nobody leads right now). Returns `None` when `stop` is cancelled first.
    pub async fn acquire(
        &self,
        mut seen: impl FnMut(Option<LeaseValue>),
        stop: &CancellationToken,
    ) -> Option<Held> {
        let poll = (self.lease / 5).clamp(MIN_POLL, MAX_POLL);
        let mut watch = None;
        loop {
            if stop.is_cancelled() {
                return None;
            }
            match self.try_acquire().await {
                Ok(Some(held)) => return Some(held),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "trying the leader lease"),
            }
            match self.current().await {
                Ok(current) => seen(current.map(|(value, _)| value)),
                Err(error) => tracing::warn!(%error, "reading the leader lease"),
            }
            if watch.is_none() {
                watch = self.kv.watch(LEADER_KEY).await.ok();
            }
            // A release (delete) arrives on the watch at once; an expiry only the poll sees.
            let woke = async {
                match watch.as_mut() {
                    Some(w) => loop {
                        match w.next().await {
                            Some(Ok(entry)) if entry.operation != Operation::Put => return true,
                            Some(Ok(_)) => continue,
                            _ => return false,
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                released = woke => if !released { watch = None; },
                () = tokio::time::sleep(poll) => {}
                () = stop.cancelled() => return None,
            }
        }
    }
}

/// The lease, held by this node.
pub struct Held {
    lease: Lease,
    value: LeaseValue,
    bytes: Vec<u8>,
    revision: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Held {
    /// The value this node wrote (its term, its URL).
    pub fn value(&self) -> &LeaseValue {
        &self.value
    }

    /// Renews the lease every lease/3 until [`Self::release`]; cancels `lost` when a renewal is
    /// refused (another node holds it) or none succeeded for a whole lease (the engine may
    /// have let it expire and another node taken it).
    pub fn spawn_renewal(&self, lost: CancellationToken) -> tokio::task::JoinHandle<()> {
        let lease = self.lease.clone();
        let bytes = bytes::Bytes::from(self.bytes.clone());
        let value = self.value.clone();
        let revision = self.revision.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let every = lease.lease / 3;
            // Measured from before the request went out, so that it is never later than the
            // engine's own clock for the entry's age.
            let mut last_ok = Instant::now();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = stop.cancelled() => return,
                }
                let sent = Instant::now();
                let current = revision.load(Ordering::SeqCst);
                match lease.kv.update(LEADER_KEY, bytes.clone(), current).await {
                    Ok(next) => {
                        revision.store(next, Ordering::SeqCst);
                        last_ok = sent;
                        continue;
                    }
                    Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                        // A renewal whose ack was lost did apply: the entry is still ours.
                        if let Ok(Some((now, rev))) = lease.current().await {
                            if now == value {
                                revision.store(rev, Ordering::SeqCst);
                                continue;
                            }
                        }
                        tracing::error!(node = %value.node_id, term = value.term,
                            "the leader lease was taken by another node");
                        lost.cancel();
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "renewing the leader lease"),
                }
                if last_ok.elapsed() >= lease.lease {
                    tracing::error!(node = %value.node_id, term = value.term,
                        "the leader lease could not be renewed for a whole lease");
                    lost.cancel();
                    return;
                }
            }
        })
    }

    /// Stops renewing and deletes the lease (only if it is still this node's), so that a
    /// follower takes over at once.
    pub async fn release(self) {
        self.stop.cancel();
        let revision = self.revision.load(Ordering::SeqCst);
        if let Err(error) = self
            .lease
            .kv
            .delete_expect_revision(LEADER_KEY, Some(revision))
            .await
        {
            tracing::warn!(%error, "releasing the leader lease (it expires by itself)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::nats::NatsCluster;

    async fn lease_for(cluster: &NatsCluster, node: &str, secs: u64) -> Lease {
        let servers: Vec<async_nats::ServerAddr> = cluster
            .urls()
            .split(',')
            .map(|url| url.parse().expect("server url"))
            .collect();
        let client = async_nats::connect(servers).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        Lease::open(
            js,
            node.to_owned(),
            format!("http://{node}.invalid"),
            Duration::from_secs(secs),
            cluster.len(),
        )
        .await
        .expect("lease bucket")
    }

    /// Regression: the first `try_acquire` right after the bucket's creation failed with
    /// "503 no responders" (its replicas did not serve reads yet, two loaded cores).
    #[tokio::test]
    async fn a_just_opened_lease_bucket_answers_reads_at_once_on_every_node() {
        let Some(cluster) = NatsCluster::start(3) else {
            return;
        };
        let a = lease_for(&cluster, "a", 2).await;
        let b = lease_for(&cluster, "b", 2).await;
        let (ca, cb) = tokio::join!(a.current(), b.current());
        assert_eq!(ca.expect("a reads the lease"), None);
        assert_eq!(cb.expect("b reads the lease"), None);
    }

    #[tokio::test]
    async fn only_one_of_two_racing_nodes_wins_the_lease_and_the_loser_takes_it_after_expiry() {
        let Some(cluster) = NatsCluster::start(3) else {
            return;
        };
        let a = lease_for(&cluster, "a", 2).await;
        let b = lease_for(&cluster, "b", 2).await;
        let (ra, rb) = tokio::join!(a.try_acquire(), b.try_acquire());
        let (ra, rb) = (ra.expect("a"), rb.expect("b"));
        assert!(ra.is_some() != rb.is_some(), "exactly one wins");
        let (winner, loser) = if ra.is_some() { (ra, b) } else { (rb, a) };
        let winner = winner.expect("winner");
        let first_term = winner.value().term;
        // The winner renews: the loser cannot take it for longer than a lease.
        let lost = CancellationToken::new();
        let renewal = winner.spawn_renewal(lost.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(loser.try_acquire().await.expect("try").is_none());
        assert!(!lost.is_cancelled());
        // The winner stops renewing (it died): the loser gets it once it expired.
        renewal.abort();
        let stop = CancellationToken::new();
        let mut seen = Vec::new();
        let held = tokio::time::timeout(
            Duration::from_secs(10),
            loser.acquire(|v| seen.push(v), &stop),
        )
        .await
        .expect("taken within the lease and a poll")
        .expect("held");
        assert!(
            held.value().term > first_term,
            "the term grows per takeover"
        );
        assert_eq!(held.value().node_id, loser.node_id);
        assert!(seen
            .iter()
            .flatten()
            .any(|v| v.node_id == winner.value().node_id));
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once_and_a_deposed_holder_learns_it_lost() {
        let Some(cluster) = NatsCluster::start(3) else {
            return;
        };
        // A long lease: only the release (or the CAS) can explain a takeover in this test.
        let a = lease_for(&cluster, "a", 60).await;
        let b = lease_for(&cluster, "b", 60).await;
        let held = a.try_acquire().await.expect("try").expect("a holds it");
        let stop = CancellationToken::new();
        let waiter = tokio::spawn({
            let b = b.clone();
            let stop = stop.clone();
            async move { b.acquire(|_| {}, &stop).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.release().await;
        let b_held = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("taken at once, not after the 60 s lease")
            .expect("join")
            .expect("held");
        assert_eq!(b_held.value().node_id, "b");
        // A holds a stale revision now: its renewal is refused and it learns it lost.
        let c = lease_for(&cluster, "c", 3).await;
        let stale = Held {
            lease: c.clone(),
            value: LeaseValue {
                node_id: "c".into(),
                url: "http://c.invalid".into(),
                term: 1,
            },
            bytes: b"{}".to_vec(),
            revision: Arc::new(AtomicU64::new(1)),
            stop: CancellationToken::new(),
        };
        let lost = CancellationToken::new();
        let _renewal = stale.spawn_renewal(lost.clone());
        tokio::time::timeout(Duration::from_secs(5), lost.cancelled())
            .await
            .expect("a refused renewal cancels the token");
        stop.cancel();
    }
}
