//! A replica: applies the write-ahead stream, in order, into this node's local store (sled
//! and log files), and persists how far it is in the same engine batch as the ops.
//!
//! Must never write anything the stream does not say, and never skip a sequence: a message
//! past the next sequence is [`ClusterError::Gap`], reported, not applied; one at or before the
//! applied sequence is a redelivery of what is applied already, and skipped.
//!
//! Durability order, as on the leader: the log text an engine batch indexes is written and
//! `fdatasync`ed before the batch is applied. Replaying from an older applied sequence after a
//! crash is harmless: log writes land at the same offsets, and a batch is only ever applied
//! together with the sequence that says it was.
//!
//! Reading the stream: an ordered pull consumer from the applied sequence + 1 (one ephemeral
//! consumer per call, flow-controlled batches), rather than a direct get per sequence (one
//! round trip per message). Measured on a 3-node local cluster, 2,000 entries of one 200-byte
//! put, debug build: the ordered consumer caught up (applying) in 0.47 s (4,255/s), direct
//! gets alone took 1.43 s (1,402/s).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::Context;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::wal::{decode, WalEntry};
use super::{ClusterError, WAL_STREAM};
use crate::model::DeploymentId;
use crate::store::engine::BatchOp;
use crate::store::replicate::{applied_key, decode_applied, encode_applied};
use crate::store::{Store, StoreError};

/// How long [`Replica::catch_up`] and [`Replica::follow`] retry creating their consumer.
const SUBSCRIBE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// Pause between those attempts.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);
/// How long the follower waits for a message before it asks the stream whether there is one
/// it should have had (a stuck consumer; see `Replica::stalled`).
const STALL_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Log files are private to the service's user (as `store::logs` creates them).
const LOG_FILE_MODE: u32 = 0o600;

/// Applies [`super::WAL_STREAM`] into a local store, resuming from its applied sequence.
pub struct Replica {
    js: Context,
    /// The applying state; taken while a blocking apply runs on the blocking pool.
    applier: Option<Applier>,
    applied: u64,
}

/// The blocking half: the local store and what is written but not yet durable.
struct Applier {
    local: Store,
    applied: u64,
    /// The engine batch being received in parts.
    pending: Option<Pending>,
    /// Log files written since the last `fdatasync`, kept open.
    dirty: HashMap<DeploymentId, File>,
    /// A log file was created since the last directory sync.
    created: bool,
    /// An engine batch was applied since the last engine sync.
    unsynced: bool,
}

struct Pending {
    batch: u64,
    next_part: u32,
    ops: Vec<BatchOp>,
}

fn io(err: std::io::Error) -> ClusterError {
    ClusterError::Store(StoreError::LogFile(err))
}

impl Replica {
    /// Opens the replica of `local`, reading the applied sequence from [`super::APPLIED_META`].
    pub fn open(js: Context, local: Store) -> Result<Self, ClusterError> {
        let applied = match local
            .engine()
            .get(&applied_key())
            .map_err(StoreError::from)?
        {
            Some(value) => decode_applied(&value).ok_or_else(|| {
                ClusterError::Codec(format!(
                    "the local meta {} is not a sequence",
                    super::APPLIED_META
                ))
            })?,
            None => 0,
        };
        Ok(Self {
            js,
            applier: Some(Applier {
                local,
                applied,
                pending: None,
                dirty: HashMap::new(),
                created: false,
                unsynced: false,
            }),
            applied,
        })
    }

    /// Applies up to the stream's last sequence at call time, then makes it durable; returns
    /// the applied sequence.
    pub async fn catch_up(&mut self) -> Result<u64, ClusterError> {
        let target = super::wal::last_sequence(&self.js)
            .await
            .map_err(|err| match err {
                ClusterError::Unreachable(why) => {
                    ClusterError::Unreachable(format!("the stream's last sequence: {why}"))
                }
                other => other,
            })?;
        if target < self.applied {
            return Err(ClusterError::Engine(format!(
                "this data directory has applied the write-ahead stream up to {} but the \
                 stream ends at {target}: it belongs to another stream",
                self.applied
            )));
        }
        if target > self.applied {
            let mut messages = self.subscribe().await?;
            while self.applied < target {
                let message = self.next(&mut messages).await?;
                self.apply_message(message).await?;
            }
        }
        self.blocking(|applier| applier.flush()).await?;
        Ok(self.applied)
    }

    /// Applies messages as they arrive, until `stop` is cancelled; what was applied is made
    /// durable whenever the replica has caught up and before it returns.
    pub async fn follow(&mut self, stop: CancellationToken) -> Result<(), ClusterError> {
        let mut messages = self.subscribe().await?;
        let result = loop {
            tokio::select! {
                () = stop.cancelled() => break Ok(()),
                message = self.next(&mut messages) => {
                    let applied = match message {
                        Ok(message) => self.apply_message(message).await,
                        Err(err) => Err(err),
                    };
                    if let Err(err) = applied {
                        break Err(err);
                    }
                }
            }
        };
        let flushed = self.blocking(|applier| applier.flush()).await;
        result.and(flushed)
    }

    /// The last stream sequence applied to the local store.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The next message of `messages`; when the consumer fails or ends (the ordered
    /// consumer's own recovery gave up: a server died, the stream moved its leader), a new
    /// one from the applied sequence + 1 replaces it, so nothing is skipped or applied twice.
    async fn next(
        &self,
        messages: &mut Ordered,
    ) -> Result<async_nats::jetstream::Message, ClusterError> {
        loop {
            let next = match tokio::time::timeout(STALL_CHECK, messages.next()).await {
                Ok(next) => next,
                Err(_) if self.stalled().await => {
                    tracing::warn!(applied = self.applied,
                        "the write-ahead stream's consumer delivers nothing while the stream has more; reading again from the applied sequence");
                    *messages = self.subscribe().await?;
                    continue;
                }
                Err(_) => continue,
            };
            match next {
                Some(Ok(message)) => return Ok(message),
                Some(Err(err)) => {
                    tracing::warn!(error = %err, applied = self.applied,
                        "the write-ahead stream's consumer failed; reading again from the applied sequence");
                }
                None => {
                    tracing::warn!(applied = self.applied,
                        "the write-ahead stream's consumer ended; reading again from the applied sequence");
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            *messages = self.subscribe().await?;
        }
    }

    /// Whether the stream holds messages past the applied sequence (asked after
    /// [`STALL_CHECK`] without a message): then the consumer is stuck. Seen when the stream's
    /// leader was killed under load: the ordered consumer neither delivered nor failed for a
    /// minute. An unanswered question is not a stall (the engine may be away).
    async fn stalled(&self) -> bool {
        matches!(super::wal::last_sequence(&self.js).await, Ok(last) if last > self.applied)
    }

    /// An ordered consumer from the applied sequence + 1, retried while the engine does not
    /// answer (a server that just died, a stream electing its leader) up to
    /// [`SUBSCRIBE_DEADLINE`].
    async fn subscribe(&self) -> Result<Ordered, ClusterError> {
        let deadline = tokio::time::Instant::now() + SUBSCRIBE_DEADLINE;
        loop {
            match self.subscribe_once().await {
                Err(ClusterError::Unreachable(why))
                    if tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tracing::debug!(error = %why, "retrying the write-ahead stream's consumer");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    async fn subscribe_once(&self) -> Result<Ordered, ClusterError> {
        let stream = self.js.get_stream(WAL_STREAM).await.map_err(|err| {
            ClusterError::Unreachable(format!("get the stream {WAL_STREAM}: {err}"))
        })?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.applied + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|err| ClusterError::Unreachable(format!("create a consumer: {err}")))?;
        consumer
            .messages()
            .await
            .map_err(|err| ClusterError::Unreachable(format!("read the consumer: {err}")))
    }

    async fn apply_message(
        &mut self,
        message: async_nats::jetstream::Message,
    ) -> Result<(), ClusterError> {
        let (seq, caught_up) = {
            let info = message.info().map_err(|err| {
                ClusterError::Engine(format!("a message without metadata: {err}"))
            })?;
            (info.stream_sequence, info.pending == 0)
        };
        let payload = message.message.payload.clone();
        self.blocking(move |applier| {
            applier.apply(seq, &payload)?;
            if caught_up {
                applier.flush()?;
            }
            Ok(())
        })
        .await
    }

    /// Runs `work` on the applier on the blocking pool (file and engine I/O block).
    async fn blocking(
        &mut self,
        work: impl FnOnce(&mut Applier) -> Result<(), ClusterError> + Send + 'static,
    ) -> Result<(), ClusterError> {
        let mut applier = self
            .applier
            .take()
            .ok_or_else(|| ClusterError::Engine("a previous apply panicked".into()))?;
        let (applier, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut applier);
            (applier, result)
        })
        .await
        .map_err(|err| ClusterError::Engine(format!("the apply task failed: {err}")))?;
        self.applied = applier.applied;
        self.applier = Some(applier);
        result
    }
}

impl Applier {
    /// Applies the message at stream sequence `seq`.
    fn apply(&mut self, seq: u64, payload: &[u8]) -> Result<(), ClusterError> {
        let expected = self.applied + 1;
        if seq < expected {
            // A redelivery of what is applied already (the stream never changes the message at
            // a sequence): async-nats' ordered consumer, recreated after missed heartbeats
            // before it delivered anything, starts again from the stream's first message.
            return Ok(());
        }
        if seq != expected {
            return Err(ClusterError::Gap { expected, got: seq });
        }
        match decode(payload)? {
            WalEntry::Logs { appends } => {
                for (id, offset, bytes) in appends {
                    let file = self.file(DeploymentId::from_bytes(id))?;
                    file.write_all_at(&bytes.0, offset).map_err(io)?;
                }
            }
            WalEntry::Ops {
                batch,
                part,
                last,
                ops,
            } => {
                let pending = match self.pending.take() {
                    _ if part == 0 => Some(Pending {
                        batch,
                        next_part: 0,
                        ops: Vec::new(),
                    }),
                    Some(pending) if pending.batch == batch && pending.next_part == part => {
                        Some(pending)
                    }
                    _ => {
                        // A part of a batch whose start was dropped (its writer failed mid-way
                        // and started over): it can never be whole.
                        tracing::warn!(seq, batch, part, "dropping a part of an unfinished batch");
                        None
                    }
                };
                if let Some(mut pending) = pending {
                    pending.ops.extend(ops.into_iter().map(|op| op.into_op()));
                    pending.next_part = part + 1;
                    if last {
                        self.commit(seq, pending.ops)?;
                    } else {
                        self.pending = Some(pending);
                    }
                }
            }
            WalEntry::RemoveLogs { ids } => {
                for id in ids {
                    let id = DeploymentId::from_bytes(id);
                    self.dirty.remove(&id);
                    self.local.logs().remove(id);
                }
            }
        }
        self.applied = seq;
        Ok(())
    }

    /// Applies a whole batch with the sequence that ends it, after the log text it indexes
    /// is durable.
    fn commit(&mut self, seq: u64, mut ops: Vec<BatchOp>) -> Result<(), ClusterError> {
        self.sync_logs()?;
        let touched = crate::store::cache::cached_keys(&ops);
        ops.push(BatchOp::Put(applied_key(), encode_applied(seq)));
        let applied = self.local.engine().apply(ops);
        self.local
            .cache()
            .invalidate(touched.iter().map(|key| &key[..]));
        applied.map_err(StoreError::from)?;
        self.unsynced = true;
        Ok(())
    }

    /// The open log file of `id`, created if needed.
    fn file(&mut self, id: DeploymentId) -> Result<&File, ClusterError> {
        if !self.dirty.contains_key(&id) {
            let path = self.local.logs().path(id);
            self.created |= !path.exists();
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(LOG_FILE_MODE)
                .open(path)
                .map_err(io)?;
            self.dirty.insert(id, file);
        }
        self.dirty
            .get(&id)
            .ok_or_else(|| ClusterError::Engine("log file vanished".into()))
    }

    fn sync_logs(&mut self) -> Result<(), ClusterError> {
        for (_, file) in self.dirty.drain() {
            file.sync_data().map_err(io)?;
        }
        if std::mem::take(&mut self.created) {
            self.local.logs().sync_dir().map_err(io)?;
        }
        Ok(())
    }

    /// Makes everything applied so far durable.
    fn flush(&mut self) -> Result<(), ClusterError> {
        self.sync_logs()?;
        if std::mem::take(&mut self.unsynced) {
            self.local.engine().sync().map_err(StoreError::from)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::wal::{encode, Blob, WireOp};
    use crate::store::engine::MemoryEngine;
    use crate::store::logs::LogFiles;

    fn applier(dir: &std::path::Path) -> Applier {
        Applier {
            local: Store::new(
                Arc::new(MemoryEngine::default()),
                LogFiles::open(dir).expect("logs"),
            ),
            applied: 0,
            pending: None,
            dirty: HashMap::new(),
            created: false,
            unsynced: false,
        }
    }

    fn ops(batch: u64, part: u32, last: bool, key: &[u8]) -> Vec<u8> {
        encode(&WalEntry::Ops {
            batch,
            part,
            last,
            ops: vec![WireOp::Put(Blob(key.to_vec()), Blob(b"v".to_vec()))],
        })
        .expect("encode")
        .to_vec()
    }

    fn has(applier: &Applier, key: &[u8]) -> bool {
        applier.local.engine().get(key).expect("get").is_some()
    }

    fn persisted(applier: &Applier) -> Option<u64> {
        applier
            .local
            .engine()
            .get(&applied_key())
            .expect("get")
            .and_then(|v| decode_applied(&v))
    }

    #[test]
    fn a_message_past_the_next_sequence_is_a_gap_and_a_redelivered_one_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut applier = applier(dir.path());
        applier.apply(1, &ops(0, 0, true, b"a")).expect("first");
        let err = applier.apply(3, &ops(1, 0, true, b"b")).expect_err("gap");
        assert!(
            matches!(
                err,
                ClusterError::Gap {
                    expected: 2,
                    got: 3
                }
            ),
            "{err}"
        );
        // Regression: a restarted follower stopped with "gap: expected 5, got 1" when its ordered
        // consumer was recreated from the stream's start; what is applied is skipped, once.
        applier
            .apply(1, &ops(1, 0, true, b"b"))
            .expect("a redelivery is skipped");
        assert!(!has(&applier, b"b"));
        assert_eq!((applier.applied, persisted(&applier)), (1, Some(1)));
    }

    #[test]
    fn a_batch_in_parts_is_applied_only_when_its_last_part_arrives_with_its_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut applier = applier(dir.path());
        applier.apply(1, &ops(4, 0, false, b"a")).expect("part 0");
        applier.apply(2, &ops(4, 1, false, b"b")).expect("part 1");
        assert!(!has(&applier, b"a") && !has(&applier, b"b"));
        assert_eq!(persisted(&applier), None);
        applier.apply(3, &ops(4, 2, true, b"c")).expect("last part");
        assert!(has(&applier, b"a") && has(&applier, b"b") && has(&applier, b"c"));
        assert_eq!(persisted(&applier), Some(3));
    }

    #[test]
    fn an_unfinished_batch_is_dropped_when_another_batch_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut applier = applier(dir.path());
        applier
            .apply(1, &ops(4, 0, false, b"lost"))
            .expect("part 0");
        applier
            .apply(2, &ops(5, 0, true, b"kept"))
            .expect("new batch");
        // A late part of the dropped batch can never make it whole.
        applier
            .apply(3, &ops(4, 1, true, b"late"))
            .expect("stray part");
        assert!(has(&applier, b"kept"));
        assert!(!has(&applier, b"lost") && !has(&applier, b"late"));
        assert_eq!((applier.applied, persisted(&applier)), (3, Some(2)));
    }

    #[test]
    fn log_writes_land_at_their_offsets_idempotently_and_remove_logs_deletes_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut applier = applier(dir.path());
        let id = DeploymentId::generate();
        let logs = |appends: Vec<(u64, &[u8])>| {
            encode(&WalEntry::Logs {
                appends: appends
                    .into_iter()
                    .map(|(offset, bytes)| (*id.as_bytes(), offset, Blob(bytes.to_vec())))
                    .collect(),
            })
            .expect("encode")
            .to_vec()
        };
        applier
            .apply(1, &logs(vec![(0, b"hello "), (6, b"world")]))
            .expect("logs");
        // A replay of the same write, then a rewrite of an orphaned tail.
        applier.apply(2, &logs(vec![(6, b"world")])).expect("again");
        applier
            .apply(3, &logs(vec![(6, b"there")]))
            .expect("rewrite");
        applier.flush().expect("flush");
        let path = applier.local.logs().path(id);
        assert_eq!(std::fs::read(&path).expect("read"), b"hello there");
        let remove = encode(&WalEntry::RemoveLogs {
            ids: vec![*id.as_bytes()],
        })
        .expect("encode");
        applier.apply(4, &remove).expect("remove");
        assert!(!path.exists());
        assert_eq!(applier.applied, 4);
    }
}
