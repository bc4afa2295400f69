//! A replica: applies the write-ahead stream, in order, into this node's local store.
//!
//! Must never write anything the stream does not say, and never skip a sequence.

use async_nats::jetstream::Context;
use tokio_util::sync::CancellationToken;

use super::ClusterError;
use crate::store::Store;

/// Applies [`super::WAL_STREAM`] into a local store, resuming from its applied sequence.
pub struct Replica {
    js: Context,
    local: Store,
    applied: u64,
}

impl Replica {
    /// Opens the replica of `local`, reading the applied sequence from [`super::APPLIED_META`].
    pub fn open(js: Context, local: Store) -> Result<Self, ClusterError> {
        let _ = (js, local);
        todo!()
    }

    /// Applies up to the stream's last sequence at call time; returns the applied sequence.
    pub async fn catch_up(&mut self) -> Result<u64, ClusterError> {
        let _ = (&self.js, &self.local);
        todo!()
    }

    /// Applies messages as they arrive, until `stop` is cancelled.
    pub async fn follow(&mut self, stop: CancellationToken) -> Result<(), ClusterError> {
        let _ = stop;
        todo!()
    }

    /// The last stream sequence applied to the local store.
    pub fn applied(&self) -> u64 {
        self.applied
    }
}
