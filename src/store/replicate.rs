//! Replication of the writer's writes (cluster mode): the [`Replicate`] boundary the writer
//! thread calls before it writes anything locally, and [`ReplicatedEngine`], the engine
//! wrapper that replicates every batch before applying it.
//!
//! Must not know about NATS: `cluster::wal` implements [`Replicate`].

use std::sync::Arc;

use super::engine::{BatchOp, Engine, EngineError, EntryIter};
use crate::model::DeploymentId;

/// One write to replicate, borrowed from the writer.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// Log-file writes: (deployment, file offset, bytes).
    Logs(&'a [(DeploymentId, u64, &'a [u8])]),
    /// One atomic engine batch.
    Ops(&'a [BatchOp]),
    /// Log files removed after a commit.
    RemoveLogs(&'a [DeploymentId]),
}

/// Why a write could not be replicated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicateError {
    /// The replication target is unreachable now: nothing of the write is relied on, it may
    /// succeed later (the writer's transient failure).
    #[error("replication unavailable: {0}")]
    Unavailable(String),
    /// Another node is the writer now: this one must stop writing for good.
    #[error("replication fenced: {0}")]
    Fenced(String),
    /// The target refused this write for what it is (too large, not encodable): retrying
    /// cannot help, and nothing says another writer exists.
    #[error("replication refused the write: {0}")]
    Rejected(String),
}

/// Where the writer's writes go before they are applied locally. Blocking: called from the
/// writer thread only.
pub trait Replicate: Send + Sync + 'static {
    /// Replicates one entry durably; returns the replication sequence it ends at.
    fn replicate(&self, entry: Entry<'_>) -> Result<u64, ReplicateError>;
    /// Whether replication works again after an `Unavailable` failure (`Ok` = writes may
    /// resume); `Fenced` when another writer appended meanwhile.
    fn probe(&self) -> Result<(), ReplicateError>;
}

/// The replication of a store, shared by the store's clones and its engine wrapper.
pub struct Replication {
    target: Arc<dyn Replicate>,
    /// The last failure of [`Replication::replicate`], until the writer takes it.
    failure: std::sync::Mutex<Option<ReplicateError>>,
}

impl Replication {
    pub(crate) fn new(target: Arc<dyn Replicate>) -> Self {
        Self {
            target,
            failure: Default::default(),
        }
    }

    /// The replication target.
    pub fn target(&self) -> &Arc<dyn Replicate> {
        &self.target
    }
}

impl Replication {
    /// Replicates `entry`; a failure is also kept for [`Replication::take_failure`], so the
    /// writer can tell it from a local engine failure when it reaches it as an `EngineError`.
    pub fn replicate(&self, entry: Entry<'_>) -> Result<u64, ReplicateError> {
        let result = self.target.replicate(entry);
        if let Err(err) = &result {
            if let Ok(mut slot) = self.failure.lock() {
                *slot = Some(err.clone());
            }
        }
        result
    }

    /// The last replication failure, if one happened since the last call.
    pub fn take_failure(&self) -> Option<ReplicateError> {
        self.failure.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The local meta key holding the last replication sequence applied to this store.
pub fn applied_key() -> Vec<u8> {
    super::codec::meta_key(crate::cluster::APPLIED_META)
}

/// The value stored under [`applied_key`].
pub fn encode_applied(seq: u64) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&seq.to_be_bytes())
}

/// Reads a value stored under [`applied_key`] (`None` = corrupt).
pub fn decode_applied(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// The leader's engine: every batch is replicated first, then applied locally together with
/// the sequence it was replicated at (so the local store always says how far it is). Reads,
/// syncs and sizes are the local engine's.
pub struct ReplicatedEngine {
    local: Arc<dyn Engine>,
    replication: Arc<Replication>,
}

impl ReplicatedEngine {
    pub(crate) fn new(local: Arc<dyn Engine>, replication: Arc<Replication>) -> Self {
        Self { local, replication }
    }
}

impl Engine for ReplicatedEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.local.get(key)
    }

    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> EntryIter<'_> {
        self.local.range(start, end, reverse)
    }

    fn apply(&self, mut batch: Vec<BatchOp>) -> Result<(), EngineError> {
        if batch.is_empty() {
            return Ok(());
        }
        let seq = self
            .replication
            .replicate(Entry::Ops(&batch))
            .map_err(|err| EngineError(err.to_string()))?;
        batch.push(BatchOp::Put(applied_key(), encode_applied(seq)));
        self.local.apply(batch)
    }

    fn sync(&self) -> Result<(), EngineError> {
        self.local.sync()
    }

    fn size_on_disk(&self) -> u64 {
        self.local.size_on_disk()
    }
}
