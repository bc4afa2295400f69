//! The cluster's errors: what can go wrong between a node and the JetStream engine, or while
//! a replica applies the write-ahead stream. Only reports; deciding what to do (exit, retry,
//! answer 503) is the caller's.

/// A cluster failure.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The engine did not answer (a timeout, no responders, a closed connection): it may come
    /// back, nothing is known to be lost.
    #[error("the cluster store is unreachable: {0}")]
    Unreachable(String),
    /// The engine refused an append because the stream's last sequence is not the one this
    /// node expected: another node wrote since, so this node is no longer the writer.
    #[error(
        "fenced: the write-ahead stream moved past sequence {expected} without this node \
         ({found}); another node is the writer now"
    )]
    Fenced { expected: u64, found: String },
    /// A replica received a message whose sequence is not the next one: never skipped.
    #[error("gap in the write-ahead stream: expected sequence {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    /// The engine answered with an error (a bad request, a missing stream, a limit).
    #[error("cluster store: {0}")]
    Engine(String),
    /// The local store failed while applying the stream.
    #[error("local store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A message of the stream could not be decoded (or an entry could not be encoded).
    #[error("write-ahead entry: {0}")]
    Codec(String),
}
