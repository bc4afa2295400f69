//! The leader's side of the write-ahead stream: creating the stream, and [`WalWriter`], which
//! appends the writer's entries with fencing and deduplication.
//!
//! Must not decide anything about the domain: it appends what the writer hands it.

use std::sync::Arc;

use async_nats::jetstream::Context;
use tokio_util::sync::CancellationToken;

use super::ClusterError;
use crate::store::replicate::{Entry, Replicate, ReplicateError};
use crate::store::Store;

/// Creates the write-ahead stream if it does not exist (file storage, `replicas` copies,
/// direct gets allowed, nothing ever discarded).
pub async fn ensure_stream(js: &Context, replicas: usize) -> Result<(), ClusterError> {
    let _ = (js, replicas);
    todo!()
}

/// The stream's last sequence (0 when empty).
pub async fn last_sequence(js: &Context) -> Result<u64, ClusterError> {
    let _ = js;
    todo!()
}

/// Appends entries to the write-ahead stream, each with the expected last sequence (fencing)
/// and a message id unique to this node and term (deduplication of retries).
pub struct WalWriter {
    js: Context,
    node_id: String,
    term: u64,
    max_payload: usize,
    runtime: tokio::runtime::Handle,
    fenced: CancellationToken,
    last_seq: std::sync::atomic::AtomicU64,
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
        })
    }
}

impl Replicate for WalWriter {
    fn replicate(&self, entry: Entry<'_>) -> Result<u64, ReplicateError> {
        let _ = (
            entry,
            &self.js,
            &self.node_id,
            self.term,
            self.max_payload,
            &self.runtime,
            &self.fenced,
            &self.last_seq,
        );
        todo!()
    }

    fn probe(&self) -> Result<(), ReplicateError> {
        todo!()
    }
}

/// The leader's store: the same local sled + log files, whose writes go to the WAL first.
pub fn leader_store(local: Store, wal: Arc<WalWriter>) -> Store {
    local.replicated(wal)
}
