//! Cluster mode: several `deployd serve` nodes on one NATS JetStream cluster
//! (`--store nats://HOST:PORT[,HOST:PORT…]`, DESIGN.md "Cluster mode").
//!
//! The shape: one node at a time holds the leader lease (a JetStream key-value entry with a
//! TTL) and runs the one writer exactly as a single node does. Before the writer applies
//! anything to its local store it appends it to the write-ahead stream [`WAL_STREAM`], each
//! message with the expected last sequence of the stream: a node that lost the lease can never
//! append again (the engine refuses the compare-and-set), so line numbers, the state machine
//! and the queue are decided by one writer and made unique by the engine. Every other node
//! applies the stream, in order and checking its continuity, into its own local store (a hot
//! replica), and forwards the requests it receives to the leader. When the lease expires, the
//! node that wins it catches up with the stream and starts the writer on its replica, which ends
//! what the dead leader left unfinished exactly as a restart does.
//!
//! Files that are not in the store (uploaded sources, kept images, build caches) go to the
//! object store bucket [`FILES_BUCKET`], mirrored by every node.
//!
//! Parts: [`error`] (the cluster's errors), [`wal`] (the stream and the leader's appends),
//! [`replica`] (applying the stream into a local store).
//!
//! This module never decides a status, a line number or a queue position: the writer does.

pub mod error;
pub mod files;
pub mod forward;
pub mod lease;
pub mod node;
pub mod replica;
pub mod wal;

pub use error::ClusterError;

/// The write-ahead stream: every write of the leader's writer, in commit order.
pub const WAL_STREAM: &str = "DEPLOYD_WAL";
/// The subject of [`WAL_STREAM`].
pub const WAL_SUBJECT: &str = "deployd.wal";
/// The key-value bucket holding the leader lease (key [`LEADER_KEY`]).
pub const LEASE_BUCKET: &str = "deployd_lease";
/// The key of the leader lease in [`LEASE_BUCKET`].
pub const LEADER_KEY: &str = "leader";
/// The key-value bucket where every node announces itself (node id → address), with a TTL.
pub const NODES_BUCKET: &str = "deployd_nodes";
/// The object store bucket for files that are not in the store.
pub const FILES_BUCKET: &str = "deployd_files";
/// The local meta record (never replicated) holding the last stream sequence applied to this
/// node's store.
pub const APPLIED_META: &str = "cluster-applied-seq";
