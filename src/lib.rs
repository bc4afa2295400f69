//! deployd: a self-hosted deployments service, wire-compatible with Scalingo's deployments API.
//!
//! # Layout
//!
//! One log line travels one way, and each step is one module:
//!
//! ```text
//! api::push ─┐
//!            ├→ sessions::Session → store::writer ─(commit)→ hub → api::stream, api::output
//! pipeline ──┘
//! ```
//!
//! The writer validates (state machine, queue), writes the log files and the index, syncs,
//! replies, and only then publishes (`store::events`), so no subscriber sees what is not stored.
//!
//! - [`api`]: every byte on the wire. `routes` is the one route table the router is built
//!   from; `error` alone picks status codes and JSON error bodies; `access` authenticates
//!   callers; `users`, `apps`, `deployments`, `sources` are the REST resources; `push` the
//!   pushers' WebSocket and `protocol` its frame table; `stream` the subscribers' WebSocket
//!   (`cursor`: the pure "every line once, in order" decision; `subscriber`: the loop acting on
//!   it; `frames`: the JSON rendered once per event; `conn`: the socket); `output` the plain
//!   and SSE `/output`.
//! - `sessions`: the only way anything writes a deployment (`sessions::Session`), and
//!   `Executors`, which starts a built-in executor session per deployment. Imports nothing from
//!   `api`.
//! - `pipeline`: the built-in executor (fetch, safe extract, stages, process groups). Writes
//!   only through its `DeploymentSink` (a `Session`); never touches the store or the hub.
//! - [`store`]: everything on disk. `codec` defines every byte (keys, records, segments, and
//!   the tags reserved for coming features); `engine` the key-value engine behind a trait (sled,
//!   memory); `logs` the append-only log files; `writer` the one writer thread (`lifecycle`: the
//!   pure queue and status rules; `group`: the group commit); `events` what a commit publishes.
//!   Reads go straight to [`store::Store`].
//! - [`hub`]: live fan-out of committed events per app, status watches and histories. It
//!   implements `store::events::Publish`; the store does not know it.
//! - [`status`]: the state machine, pure. [`model`]: the domain types. `lines`: splitting,
//!   cutting and batching output lines, one `MAX_LINE_BYTES`, for the executor, `deployd push`
//!   and the store. `ws`: the RFC 6455 codec shared by the stream and `deployd bench`. `auth`:
//!   tokens and JWTs, pure. `sources`: signed source URLs (no HTTP).
//! - [`timeline`]: the events timeline's types and event object, pure; the writer records
//!   events in the commit of what they describe. `notify`: webhook notifiers' delivery worker
//!   (outbox, signing, retries, retention), which writes only through the writer.
//! - `images`: kept images (`DATA/images`): their files, which deployments are rollback
//!   targets, and `[retention] keep_images`; the writer records them, retention removes them.
//! - [`backup`]: the tar of a writer snapshot (`store::writer::Snapshot`) and its restore into
//!   an empty data directory.
//! - [`retention`]: the prune pass (policy, scheduling, removal of files the writer does not
//!   own); it writes the store only through the writer.
//! - [`config`]: one `Config` from file, environment and flags. [`server`]: builds everything
//!   from a `Config`, recovers, serves, shuts down; `listener`: the accept loop and every
//!   connection's rules (caps, header-read and idle timeouts, descriptor reserve). [`cli`]: `deployd push`, `follow` and
//!   `bench`, clients of the HTTP and WebSocket protocols; they never touch the store.
//! - [`cluster`]: cluster mode on NATS JetStream (`--store nats://…`): the leader lease, the
//!   write-ahead stream the leader's writer appends to before it applies, the replicas that
//!   apply it, the forwarding of requests to the leader, and files in the object store.
//! - `testing` (feature `test-support`): the one copy of the test fixtures (archives, an
//!   archive server, a recording sink).
//!
//! Modules the binary, benches and tests do not use are private.
pub mod api;
mod auth;
pub mod backup;
#[cfg(test)]
#[path = "../build/git_rerun.rs"]
mod build_git_rerun;
#[cfg(test)]
mod build_git_rerun_tests;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod hub;
mod images;
mod lines;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod model;
mod notify;
mod pipeline;
pub mod retention;
pub mod server;
mod sessions;
mod sources;
pub mod status;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod timeline;
mod ws;
