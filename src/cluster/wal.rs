//! The leader's side of the write-ahead stream: creating the stream, the entry format, and
//! [`WalWriter`], which appends the writer's entries with fencing and deduplication.
//!
//! Must not decide anything about the domain: it appends what the writer hands it, in the
//! order it is handed, and says whether it was stored.
//!
//! What the real server does on a retry (nats-server 2.14.6, measured by
//! `tests/cluster_replication.rs`): the engine checks `Nats-Msg-Id` against its duplicate
//! window *before* `Nats-Expected-Last-Sequence`, so re-publishing a message that was stored
//! (its ack was lost) with the same id and the same expected sequence is answered with a
//! duplicate ack carrying the original sequence, not with "wrong last sequence". A retry is
//! therefore safe within the duplicate window (two minutes by default, far longer than
//! [`PUBLISH_DEADLINE`]). A duplicate ack at any other sequence than the expected next one
//! means the id was someone else's (a second writer with the same node id and term): fenced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishErrorKind, RequestErrorKind};
use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use async_nats::jetstream::Context;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{ClusterError, WAL_STREAM, WAL_SUBJECT};
use crate::store::engine::BatchOp;
use crate::store::replicate::{Entry, Replicate, ReplicateError};
use crate::store::Store;

/// The first byte of every entry: the format version, so a future format is told apart
/// instead of misread.
pub(crate) const ENTRY_VERSION: u8 = 1;

/// Room left in a message for the headers and the entry's own framing.
const HEADROOM: usize = 4 * 1024;
/// Per-item framing an entry adds around each append or op (lengths, ids, offsets, tags).
const ITEM_OVERHEAD: usize = 64;

/// How long one publish attempt waits for its ack before it is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a publish is retried (same id, same expected sequence) before the commit fails
/// as unavailable. Short: the writer's own probe takes over after that, and callers wait.
pub(crate) const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between attempts while the engine does not answer.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long [`ensure_stream`] retries while JetStream does not answer (a cluster that just
/// started elects its leaders first).
const ENSURE_DEADLINE: Duration = Duration::from_secs(20);
/// How long [`ensure_stream`] waits for JetStream to have the peers for the copies asked for
/// (servers of a cluster that just started join one by one) before it asks for fewer.
const PEERS_WAIT: Duration = Duration::from_secs(10);
/// How long a probe waits for the stream's state.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One message of the write-ahead stream (after [`ENTRY_VERSION`]), as a replica reads it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum WalEntry {
    /// Log-file writes: (deployment id, file offset, bytes). Idempotent.
    Logs { appends: Vec<([u8; 16], u64, Blob)> },
    /// One part of an engine batch; the batch is applied when its `last` part arrives.
    Ops {
        batch: u64,
        part: u32,
        last: bool,
        ops: Vec<WireOp>,
    },
    /// Log files removed after a commit.
    RemoveLogs { ids: Vec<[u8; 16]> },
}

/// A [`BatchOp`] on the wire.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum WireOp {
    Put(Blob, Blob),
    Delete(Blob),
}

impl WireOp {
    fn from_op(op: &BatchOp) -> Self {
        match op {
            BatchOp::Put(key, value) => WireOp::Put(Blob(key.clone()), Blob(value.to_vec())),
            BatchOp::Delete(key) => WireOp::Delete(Blob(key.clone())),
        }
    }

    pub(crate) fn into_op(self) -> BatchOp {
        match self {
            WireOp::Put(key, value) => BatchOp::Put(key.0, Bytes::from(value.0)),
            WireOp::Delete(key) => BatchOp::Delete(key.0),
        }
    }
}

/// Bytes encoded as one length-prefixed run (serde's `Vec<u8>` would encode byte by byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Blob(pub(crate) Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        deserializer.deserialize_byte_buf(Visit)
    }
}

/// Encodes an entry: the version byte, then bincode.
pub(crate) fn encode(entry: &WalEntry) -> Result<Bytes, ClusterError> {
    let mut out = vec![ENTRY_VERSION];
    bincode::serialize_into(&mut out, entry).map_err(|err| ClusterError::Codec(err.to_string()))?;
    Ok(Bytes::from(out))
}

/// Decodes a message of the stream.
pub(crate) fn decode(payload: &[u8]) -> Result<WalEntry, ClusterError> {
    match payload.split_first() {
        Some((&ENTRY_VERSION, rest)) => {
            bincode::deserialize(rest).map_err(|err| ClusterError::Codec(err.to_string()))
        }
        Some((version, _)) => Err(ClusterError::Codec(format!(
            "entry format {version} is not known to this deployd (it reads {ENTRY_VERSION})"
        ))),
        None => Err(ClusterError::Codec("empty entry".into())),
    }
}

/// Splits `entry` into messages whose encoded size stays within `budget` bytes.
pub(crate) fn split(
    entry: Entry<'_>,
    budget: usize,
    batch: u64,
) -> Result<Vec<WalEntry>, ClusterError> {
    let mut out = Vec::new();
    match entry {
        Entry::Logs(appends) => {
            let mut current = Vec::new();
            let mut size = 0;
            for &(id, offset, bytes) in appends {
                let mut done = 0;
                while done < bytes.len() || (bytes.is_empty() && done == 0) {
                    if size + ITEM_OVERHEAD >= budget {
                        out.push(WalEntry::Logs {
                            appends: std::mem::take(&mut current),
                        });
                        size = 0;
                    }
                    let room = budget - size - ITEM_OVERHEAD;
                    let take = room.min(bytes.len() - done);
                    current.push((
                        *id.as_bytes(),
                        offset + done as u64,
                        Blob(bytes[done..done + take].to_vec()),
                    ));
                    size += take + ITEM_OVERHEAD;
                    done += take;
                    if bytes.is_empty() {
                        break;
                    }
                }
            }
            if !current.is_empty() {
                out.push(WalEntry::Logs { appends: current });
            }
        }
        Entry::Ops(ops) => {
            let mut parts: Vec<Vec<WireOp>> = vec![Vec::new()];
            let mut size = 0;
            for op in ops {
                let len = match op {
                    BatchOp::Put(key, value) => key.len() + value.len(),
                    BatchOp::Delete(key) => key.len(),
                } + ITEM_OVERHEAD;
                if len > budget {
                    return Err(ClusterError::Codec(format!(
                        "one engine op of {len} bytes does not fit a message of {budget}"
                    )));
                }
                if size + len > budget {
                    parts.push(Vec::new());
                    size = 0;
                }
                size += len;
                if let Some(part) = parts.last_mut() {
                    part.push(WireOp::from_op(op));
                }
            }
            let count = parts.len();
            for (i, ops) in parts.into_iter().enumerate() {
                out.push(WalEntry::Ops {
                    batch,
                    part: u32::try_from(i)
                        .map_err(|_| ClusterError::Codec("too many parts".into()))?,
                    last: i + 1 == count,
                    ops,
                });
            }
        }
        Entry::RemoveLogs(ids) => {
            for chunk in ids.chunks((budget / ITEM_OVERHEAD).max(1)) {
                out.push(WalEntry::RemoveLogs {
                    ids: chunk.iter().map(|id| *id.as_bytes()).collect(),
                });
            }
        }
    }
    Ok(out)
}

/// Creates the write-ahead stream if it does not exist (file storage, `replicas` copies,
/// direct gets allowed, no limits, so nothing is ever discarded), and returns once it answers,
/// with the number of copies the stream has. An existing stream is left as it is (its own
/// count is returned).
///
/// `replicas` is what the operator asked for; JetStream, not the servers' gossip, says whether
/// the cluster can hold that many: a server still joining is not in the gossip of the server
/// the node connected to (a 3-server cluster that had just elected its meta leader on two of
/// them gave 2). While JetStream answers "no suitable peers" the creation is retried for
/// [`PEERS_WAIT`]; after that the count steps down, with a warning, until one fits.
pub async fn ensure_stream(js: &Context, replicas: usize) -> Result<usize, ClusterError> {
    let mut config = Config {
        name: WAL_STREAM.to_string(),
        subjects: vec![WAL_SUBJECT.to_string()],
        storage: StorageType::File,
        num_replicas: replicas.max(1),
        allow_direct: true,
        discard: DiscardPolicy::New,
        ..Default::default()
    };
    let started = tokio::time::Instant::now();
    let mut deadline = started + ENSURE_DEADLINE;
    loop {
        use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
        let err = match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => {
                let copies = stream.cached_info().config.num_replicas.max(1);
                answering(js, deadline).await?;
                return Ok(copies);
            }
            Err(err) => err,
        };
        if no_peers(err.kind())
            && config.num_replicas > 1
            && tokio::time::Instant::now() >= started + PEERS_WAIT
        {
            let fewer = config.num_replicas - 1;
            tracing::warn!(
                wanted = replicas,
                using = fewer,
                "JetStream has no peers for {} copies of the write-ahead stream after {PEERS_WAIT:?} ([cluster] replicas is more than the cluster's servers); trying {fewer}",
                config.num_replicas
            );
            config.num_replicas = fewer;
            deadline = tokio::time::Instant::now() + ENSURE_DEADLINE;
            continue;
        }
        match err.kind() {
            // A cluster that just started (or lost a server) may still be electing.
            Kind::TimedOut | Kind::JetStreamUnavailable | Kind::JetStream(_)
                if retryable(err.kind())
                    && tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
            {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Kind::TimedOut | Kind::JetStreamUnavailable => {
                return Err(ClusterError::Unreachable(err.to_string()))
            }
            _ => return Err(ClusterError::Engine(err.to_string())),
        }
    }
}

/// The copies a node asks for: `wanted`, or 1 on a server that is not part of a cluster (it
/// has no peers to place more on).
pub fn replicas_for(client: &async_nats::Client, wanted: usize) -> usize {
    if client.server_info().cluster.is_none() && wanted > 1 {
        tracing::warn!(
            wanted,
            "[cluster] replicas is more than 1 but the NATS server is not clustered; using 1"
        );
        1
    } else {
        wanted.max(1)
    }
}

/// Whether JetStream answered that it has too few servers for the copies asked for.
fn no_peers(kind: async_nats::jetstream::context::CreateStreamErrorKind) -> bool {
    use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
    use async_nats::jetstream::ErrorCode;
    matches!(kind, Kind::JetStream(err)
        if [ErrorCode::CLUSTER_NO_PEERS, ErrorCode::INSUFFICIENT_RESOURCES].contains(&err.error_code()))
}

/// Waits until the stream answers (its info), until `deadline`. A stream just created has no
/// leader for a moment: its first publish was answered "stream not found" (503, no responders)
/// on two loaded cores. Every error is waited out until the deadline, then the last one is
/// returned.
async fn answering(js: &Context, deadline: tokio::time::Instant) -> Result<(), ClusterError> {
    loop {
        match last_sequence(js).await {
            Ok(_) => return Ok(()),
            Err(err) if tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                tracing::debug!(%err, "the write-ahead stream does not answer yet");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Whether creating the stream may succeed later: JetStream does not answer yet, or a peer
/// it needs for the replicas is not known to be online yet (a server that just started).
fn retryable(kind: async_nats::jetstream::context::CreateStreamErrorKind) -> bool {
    use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
    match kind {
        Kind::TimedOut | Kind::JetStreamUnavailable => true,
        other => no_peers(other),
    }
}

/// The stream's last sequence (0 when empty).
pub async fn last_sequence(js: &Context) -> Result<u64, ClusterError> {
    let mut stream = js.get_stream(WAL_STREAM).await.map_err(|err| {
        use async_nats::jetstream::context::GetStreamErrorKind as Kind;
        match err.kind() {
            Kind::Request => ClusterError::Unreachable(err.to_string()),
            _ => ClusterError::Engine(err.to_string()),
        }
    })?;
    let info = stream.info().await.map_err(|err| match err.kind() {
        RequestErrorKind::TimedOut | RequestErrorKind::NoResponders => {
            ClusterError::Unreachable(err.to_string())
        }
        _ => ClusterError::Engine(err.to_string()),
    })?;
    Ok(info.state.last_sequence)
}

/// Appends entries to the write-ahead stream, each with the expected last sequence (fencing)
/// and a message id unique to this node, term and message (deduplication of retries).
///
/// Invariant: `last_seq` is the stream's last sequence as far as this writer knows, and every
/// message up to it is applied to the local store or being applied by the caller; only the
/// writer thread calls [`Replicate::replicate`], one call at a time.
pub struct WalWriter {
    js: Context,
    node_id: String,
    term: u64,
    max_payload: usize,
    runtime: tokio::runtime::Handle,
    fenced: CancellationToken,
    last_seq: AtomicU64,
    /// The next message's counter (the last part of `Nats-Msg-Id`).
    counter: AtomicU64,
    /// The next engine batch's number.
    batch: AtomicU64,
}

impl WalWriter {
    /// `last_seq`: the stream's last sequence this node has applied (after catch-up);
    /// `fenced` is cancelled when the engine refuses an expected sequence.
    pub fn new(
        js: Context,
        node_id: String,
        term: u64,
        last_seq: u64,
        max_payload: usize,
        runtime: tokio::runtime::Handle,
        fenced: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            js,
            node_id,
            term,
            max_payload,
            runtime,
            fenced,
            last_seq: last_seq.into(),
            // Random high bits: a later writer with the same node id and term (a restarted
            // process that kept its lease) must never reuse an id the duplicate window still
            // holds, or its different message would be "deduplicated" away.
            counter: AtomicU64::new(uuid::Uuid::new_v4().as_u64_pair().0 & !u64::from(u32::MAX)),
            batch: AtomicU64::new(0),
        })
    }

    /// The stream's last sequence as this writer knows it.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::SeqCst)
    }

    fn fence(&self, why: String) -> ReplicateError {
        tracing::error!(node = %self.node_id, term = self.term, reason = %why,
            "fenced: this node is no longer the cluster's writer");
        self.fenced.cancel();
        ReplicateError::Fenced(why)
    }

    /// Appends one message at the next sequence, retrying a lost or late ack with the same id
    /// and expected sequence until [`PUBLISH_DEADLINE`].
    async fn publish(&self, payload: Bytes) -> Result<u64, ReplicateError> {
        use async_nats::header::{NATS_EXPECTED_LAST_SEQUENCE, NATS_MESSAGE_ID};
        let expected = self.last_seq();
        let counter = self.counter.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}:{}:{counter}", self.node_id, self.term);
        let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
        let client = self.js.client();
        let mut last_error = String::from("not connected");
        loop {
            // A publish while disconnected is only queued by the client and sent after a
            // reconnect, maybe long after this commit gave up: never queue one.
            if client.connection_state() == async_nats::connection::State::Connected {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(NATS_EXPECTED_LAST_SEQUENCE, expected.to_string().as_str());
                headers.insert(NATS_MESSAGE_ID, id.as_str());
                let attempt = async {
                    self.js
                        .publish_with_headers(WAL_SUBJECT, headers, payload.clone())
                        .await?
                        .await
                };
                match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                    Ok(Ok(ack)) if ack.sequence == expected + 1 => {
                        self.last_seq.store(ack.sequence, Ordering::SeqCst);
                        return Ok(ack.sequence);
                    }
                    Ok(Ok(ack)) => {
                        return Err(self.fence(format!(
                            "message {id} expected sequence {} and was acknowledged at {} \
                             (duplicate: {})",
                            expected + 1,
                            ack.sequence,
                            ack.duplicate
                        )));
                    }
                    Ok(Err(err)) if err.kind() == PublishErrorKind::WrongLastSequence => {
                        return Err(self.fence(format!(
                            "the stream's last sequence is no longer {expected}: {err}"
                        )));
                    }
                    Ok(Err(err)) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                        return Err(ReplicateError::Rejected(err.to_string()));
                    }
                    Ok(Err(err)) => last_error = err.to_string(),
                    Err(_) => last_error = format!("no ack within {ATTEMPT_TIMEOUT:?}"),
                }
            }
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(ReplicateError::Unavailable(format!(
                    "the cluster store did not store entry {id} within {PUBLISH_DEADLINE:?}: \
                     {last_error}"
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Replicates one entry, split to fit the server's `max_payload`; the last sequence.
    async fn replicate_async(&self, entry: Entry<'_>) -> Result<u64, ReplicateError> {
        let budget = self.max_payload.saturating_sub(HEADROOM).max(HEADROOM);
        let batch = self.batch.fetch_add(1, Ordering::SeqCst);
        let messages =
            split(entry, budget, batch).map_err(|err| ReplicateError::Rejected(err.to_string()))?;
        let mut seq = self.last_seq();
        for message in &messages {
            let payload =
                encode(message).map_err(|err| ReplicateError::Rejected(err.to_string()))?;
            seq = self.publish(payload).await?;
        }
        Ok(seq)
    }

    async fn probe_async(&self) -> Result<(), ReplicateError> {
        let last = tokio::time::timeout(PROBE_TIMEOUT, last_sequence(&self.js))
            .await
            .map_err(|_| {
                ReplicateError::Unavailable(format!("no answer within {PROBE_TIMEOUT:?}"))
            })?
            .map_err(|err| ReplicateError::Unavailable(err.to_string()))?;
        let known = self.last_seq();
        if last == known {
            Ok(())
        } else {
            // Either another writer appended, or an append this writer gave up on was stored
            // after all (its callers were told it failed, and the local store does not hold
            // it): both mean the local store is behind the stream, so this node must stop and
            // catch up as a replica (crash-only).
            Err(self.fence(format!(
                "the stream's last sequence is {last}, this writer's is {known}"
            )))
        }
    }
}

impl WalWriter {
    /// Runs `work` to completion from a blocking caller: the writer thread, or a caller on
    /// the runtime itself (the writer's start-up recovery runs where `Writer::start` is
    /// called), which gets a scoped thread so the runtime's own thread is never re-entered.
    fn block_on<T: Send>(&self, work: impl std::future::Future<Output = T> + Send) -> T {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.runtime.block_on(work);
        }
        std::thread::scope(
            |scope| match scope.spawn(|| self.runtime.block_on(work)).join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            },
        )
    }
}

impl Replicate for WalWriter {
    fn replicate(&self, entry: Entry<'_>) -> Result<u64, ReplicateError> {
        if self.fenced.is_cancelled() {
            return Err(ReplicateError::Fenced("this node was fenced before".into()));
        }
        self.block_on(self.replicate_async(entry))
    }

    fn probe(&self) -> Result<(), ReplicateError> {
        if self.fenced.is_cancelled() {
            return Err(ReplicateError::Fenced("this node was fenced before".into()));
        }
        self.block_on(self.probe_async())
    }
}

/// The leader's store: the same local sled + log files, whose writes go to the WAL first.
pub fn leader_store(local: Store, wal: Arc<WalWriter>) -> Store {
    local.replicated(wal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeploymentId;

    fn size(entry: &WalEntry) -> usize {
        encode(entry).expect("encode").len()
    }

    #[test]
    fn split_entries_fit_the_budget_and_decode_to_what_was_split() {
        const BUDGET: usize = 8 * 1024;
        let a = DeploymentId::generate();
        let b = DeploymentId::generate();
        let big = vec![b'x'; 50_000];
        let small = b"hello".to_vec();
        let appends = [(a, 100, &big[..]), (b, 0, &small[..]), (a, 50_100, &[][..])];
        let messages = split(Entry::Logs(&appends), BUDGET, 0).expect("split");
        assert!(messages.len() > 6);
        let mut rebuilt: Vec<([u8; 16], u64, Vec<u8>)> = Vec::new();
        for message in &messages {
            assert!(size(message) <= BUDGET, "{} > {BUDGET}", size(message));
            assert_eq!(
                decode(&encode(message).expect("encode")).expect("decode"),
                *message
            );
            let WalEntry::Logs { appends } = message else {
                panic!("not logs");
            };
            for (id, offset, bytes) in appends {
                match rebuilt.last_mut() {
                    Some((last, end, run)) if last == id && *end + run.len() as u64 == *offset => {
                        run.extend_from_slice(&bytes.0)
                    }
                    _ => rebuilt.push((*id, *offset, bytes.0.clone())),
                }
            }
        }
        assert_eq!(
            rebuilt,
            vec![
                (*a.as_bytes(), 100, big.clone()),
                (*b.as_bytes(), 0, small),
                (*a.as_bytes(), 50_100, Vec::new()),
            ]
        );

        let ops: Vec<BatchOp> = (0..300u32)
            .map(|i| BatchOp::Put(i.to_be_bytes().to_vec(), vec![1; 100].into()))
            .chain([BatchOp::Delete(b"gone".to_vec())])
            .collect();
        let parts = split(Entry::Ops(&ops), BUDGET, 9).expect("split");
        assert!(parts.len() > 3);
        let mut all = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            assert!(size(part) <= BUDGET);
            let WalEntry::Ops {
                batch,
                part: index,
                last,
                ops,
            } = decode(&encode(part).expect("encode")).expect("decode")
            else {
                panic!("not ops");
            };
            assert_eq!((batch, index as usize, last), (9, i, i + 1 == parts.len()));
            all.extend(ops.into_iter().map(WireOp::into_op));
        }
        assert_eq!(format!("{all:?}"), format!("{ops:?}"));
    }

    #[test]
    fn one_op_larger_than_a_message_is_refused_rather_than_cut() {
        let ops = [BatchOp::Put(b"k".to_vec(), vec![0; 10_000].into())];
        assert!(matches!(
            split(Entry::Ops(&ops), 4096, 0),
            Err(ClusterError::Codec(_))
        ));
    }

    #[test]
    fn an_entry_of_an_unknown_format_version_is_refused() {
        let mut payload = encode(&WalEntry::RemoveLogs { ids: vec![[1; 16]] })
            .expect("encode")
            .to_vec();
        payload[0] = ENTRY_VERSION + 1;
        let err = decode(&payload).expect_err("unknown version");
        assert!(err.to_string().contains("not known"), "{err}");
        assert!(decode(&[]).is_err());
    }
}
