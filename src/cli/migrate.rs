//! `deployd migrate --from DATA_DIR --to nats://HOST:PORT[,…]`: copies a stopped single node's
//! embedded store into a new cluster, so that `deployd serve --store nats://…` nodes start from
//! it (each replica applies the write-ahead stream from its first sequence).
//!
//! What goes where, in this order (files before the records that refer to them, log bytes
//! before the index that points into them, as the leader itself does):
//! 1. every file of `sources/`, `images/`, `cache/` to the object store bucket
//!    (`cluster::files`), skipping what the single node itself would sweep (unfinished uploads,
//!    caches being deleted);
//! 2. every log file, as `Logs` entries of at most [`ENTRY_BYTES`] each;
//! 3. every key of the engine but the node-local applied sequence, as `Ops` batches of at most
//!    [`ENTRY_BYTES`] of keys and values (each batch atomic on a replica).
//!
//! Refused (exit 2, nothing written) when the data directory is locked by a running server or
//! the target's write-ahead stream is not empty (a cluster already has its data: migrating
//! twice would interleave two histories). A failure midway deletes the stream it wrote (it was
//! empty before), so the migration can simply be run again.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | everything is in the cluster (the counts are printed) |
//! | 1 | the copy failed midway (the message says whether the partial stream was deleted) |
//! | 2 | usage: no such data directory, a server runs on it, or the cluster is not empty |
//! | 3 | the cluster store is unreachable |
//!
//! Reads the data directory only (it takes the server's lock so that none starts meanwhile);
//! writes only to the cluster.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::cluster::files::{self, ObjectFiles, REPLICATED_DIRS};
use crate::cluster::wal::{self, WalWriter};
use crate::model::DeploymentId;
use crate::store::engine::{prefix_end, BatchOp, Engine, SledEngine};
use crate::store::replicate::{applied_key, Entry, Replicate};

/// Everything went into the cluster.
pub const EXIT_MIGRATED: i32 = 0;
/// The copy failed midway.
pub const EXIT_FAILED: i32 = 1;
/// Usage: no data directory, a running server, a non-empty cluster.
pub const EXIT_REFUSED: i32 = 2;
/// The cluster store is unreachable.
pub const EXIT_UNREACHABLE: i32 = 3;

/// Bytes of payload per write-ahead entry (log bytes, or keys and values): a quarter of the
/// server's default `max_payload` (1 MiB), so an entry never needs splitting by the writer and
/// a replica applies the copy in batches that each hold little memory.
pub const ENTRY_BYTES: usize = 256 * 1024;

/// The term written in the message ids of a migration: below the first lease's term (1), so
/// they can never collide with a leader's.
const MIGRATION_TERM: u64 = 0;

/// How long connecting to the cluster may take before it counts as unreachable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Replicas of the stream and bucket when the cluster has at least this many servers.
const DEFAULT_REPLICAS: usize = 3;

/// Arguments of `deployd migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Data directory of the stopped single node to copy (its `--data`)
    #[arg(long = "from")]
    pub from: PathBuf,
    /// The cluster: `nats://HOST:PORT[,HOST:PORT…]` (what the nodes' `--store` will be)
    #[arg(long = "to")]
    pub to: String,
    /// Copies the cluster keeps of the stream and of the files (clamped to the servers it has)
    #[arg(long, default_value_t = DEFAULT_REPLICAS)]
    pub replicas: usize,
}

/// What a migration copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub keys: u64,
    pub batches: u64,
    pub log_files: u64,
    pub log_bytes: u64,
    pub files: u64,
    pub file_bytes: u64,
    /// The stream's last sequence after the copy.
    pub last_sequence: u64,
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
enum MigrateError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot reach the cluster store at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("{0}")]
    Failed(String),
}

impl MigrateError {
    fn code(&self) -> i32 {
        match self {
            MigrateError::Refused(_) => EXIT_REFUSED,
            MigrateError::Unreachable { .. } => EXIT_UNREACHABLE,
            MigrateError::Failed(_) => EXIT_FAILED,
        }
    }
}

/// Runs `deployd migrate`; returns the exit code.
pub async fn run_migrate(args: MigrateArgs) -> anyhow::Result<i32> {
    match migrate(&args).await {
        Ok(counts) => {
            println!(
                "migrated {} to {}: {} keys in {} batches, {} log files ({} bytes), {} files \
                 ({} bytes); the write-ahead stream ends at sequence {}",
                args.from.display(),
                args.to,
                counts.keys,
                counts.batches,
                counts.log_files,
                counts.log_bytes,
                counts.files,
                counts.file_bytes,
                counts.last_sequence
            );
            Ok(EXIT_MIGRATED)
        }
        Err(err) => {
            eprintln!("deployd migrate: {err}");
            Ok(err.code())
        }
    }
}

async fn migrate(args: &MigrateArgs) -> Result<Counts, MigrateError> {
    if !args.from.join("store").is_dir() {
        return Err(MigrateError::Refused(format!(
            "{} is not a deployd data directory (no store/ in it)",
            args.from.display()
        )));
    }
    let _lock = crate::server::DataDirLock::acquire(&args.from)
        .map_err(|err| MigrateError::Refused(format!("{err}: stop it before migrating")))?;
    let unreachable = |cause: String| MigrateError::Unreachable {
        url: args.to.clone(),
        cause,
    };
    let servers = args
        .to
        .split(',')
        .map(|url| url.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            MigrateError::Refused(format!(
                "--to {}: not a list of nats://HOST:PORT URLs ({err})",
                args.to
            ))
        })?;
    let options = async_nats::ConnectOptions::new()
        .name("deployd migrate")
        .connection_timeout(CONNECT_TIMEOUT);
    let client = match tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        async_nats::connect_with_options(servers, options),
    )
    .await
    {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => return Err(unreachable(err.to_string())),
        Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    };
    let max_payload = client.server_info().max_payload;
    let wanted = wal::replicas_for(&client, args.replicas);
    let js = async_nats::jetstream::new(client);
    let replicas = wal::ensure_stream(&js, wanted)
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    if replicas < args.replicas {
        eprintln!(
            "deployd migrate: the cluster holds {replicas} replica(s) of the write-ahead \
             stream, not {}",
            args.replicas
        );
    }
    let last = wal::last_sequence(&js)
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    if last != 0 {
        return Err(MigrateError::Refused(format!(
            "the cluster's write-ahead stream {} already holds {last} entries: migrate into a \
             new cluster only",
            crate::cluster::WAL_STREAM
        )));
    }
    let copied = copy(args, &js, replicas, max_payload).await;
    match copied {
        Ok(counts) => Ok(counts),
        Err(err) => {
            let cleaned = match js.delete_stream(crate::cluster::WAL_STREAM).await {
                Ok(_) => "the partial stream was deleted; run the migration again".to_owned(),
                Err(e) => format!(
                    "the partial stream {} could not be deleted ({e}): delete it before \
                     migrating again",
                    crate::cluster::WAL_STREAM
                ),
            };
            Err(MigrateError::Failed(format!("{err}; {cleaned}")))
        }
    }
}

/// The number of servers in the cluster, from the connection's server info: `connect_urls`
/// lists the client URLs of every server of the cluster (empty for a lone server).
async fn copy(
    args: &MigrateArgs,
    js: &async_nats::jetstream::Context,
    replicas: usize,
    max_payload: usize,
) -> Result<Counts, String> {
    let mut counts = Counts::default();
    let bucket = files::ensure_bucket(js, replicas)
        .await
        .map_err(|err| err.to_string())?;
    let objects = ObjectFiles::new(bucket, args.from.clone());
    for dir in REPLICATED_DIRS {
        for name in files::files_under(&args.from, &args.from.join(dir))
            .await
            .map_err(|err| err.to_string())?
        {
            if is_leftover(&name) {
                continue;
            }
            objects
                .put_file(&name)
                .await
                .map_err(|err| err.to_string())?;
            counts.files += 1;
            counts.file_bytes += std::fs::metadata(args.from.join(&name))
                .map(|m| m.len())
                .unwrap_or(0);
        }
    }
    let writer = WalWriter::new(
        js.clone(),
        format!("migrate-{}", std::process::id()),
        MIGRATION_TERM,
        0,
        max_payload,
        tokio::runtime::Handle::current(),
        CancellationToken::new(),
    );
    let from = args.from.clone();
    let store_counts = tokio::task::spawn_blocking(move || copy_store(&from, writer.as_ref()))
        .await
        .map_err(|err| err.to_string())??;
    counts.keys = store_counts.keys;
    counts.batches = store_counts.batches;
    counts.log_files = store_counts.log_files;
    counts.log_bytes = store_counts.log_bytes;
    counts.last_sequence = store_counts.last_sequence;
    Ok(counts)
}

/// Files the single node itself would not keep: an upload cut short (`.partial`), a cache
/// being deleted (`.deleting-…`), a mirror's temporary copy (`.mirror-…`).
fn is_leftover(name: &str) -> bool {
    name.ends_with(".partial") || name.split('/').any(|part| part.starts_with('.'))
}

/// Copies the log files, then the engine's keys, through `wal` (blocking).
fn copy_store(data_dir: &Path, wal: &dyn Replicate) -> Result<Counts, String> {
    let mut counts = Counts::default();
    let mut last = 0;
    let logs_dir = data_dir.join("logs");
    let mut pending: Vec<(DeploymentId, u64, Vec<u8>)> = Vec::new();
    let mut pending_bytes = 0;
    let mut flush_logs = |pending: &mut Vec<(DeploymentId, u64, Vec<u8>)>,
                          pending_bytes: &mut usize|
     -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        let borrowed: Vec<(DeploymentId, u64, &[u8])> = pending
            .iter()
            .map(|(id, offset, bytes)| (*id, *offset, bytes.as_slice()))
            .collect();
        last = wal
            .replicate(Entry::Logs(&borrowed))
            .map_err(|err| format!("appending log bytes: {err}"))?;
        pending.clear();
        *pending_bytes = 0;
        Ok(())
    };
    for (id, path) in log_files(&logs_dir)? {
        counts.log_files += 1;
        let mut file =
            std::fs::File::open(&path).map_err(|err| format!("{}: {err}", path.display()))?;
        let mut offset = 0u64;
        loop {
            let mut chunk = vec![0; ENTRY_BYTES - pending_bytes];
            let n = read_full(&mut file, &mut chunk)
                .map_err(|err| format!("{}: {err}", path.display()))?;
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            pending.push((id, offset, chunk));
            offset += n as u64;
            pending_bytes += n;
            counts.log_bytes += n as u64;
            if pending_bytes >= ENTRY_BYTES {
                flush_logs(&mut pending, &mut pending_bytes)?;
            }
        }
    }
    flush_logs(&mut pending, &mut pending_bytes)?;

    let engine = SledEngine::open(&data_dir.join("store"))
        .map_err(|err| format!("opening the store: {err}"))?;
    let local_only = applied_key();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut flush_ops = |batch: &mut Vec<BatchOp>, batch_bytes: &mut usize| -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        last = wal
            .replicate(Entry::Ops(batch))
            .map_err(|err| format!("appending records: {err}"))?;
        counts.batches += 1;
        batch.clear();
        *batch_bytes = 0;
        Ok(())
    };
    // Every key: tags are single bytes below 0xFF, so `[0xFF]` bounds them all.
    for entry in engine.range(&[], &prefix_end(&[]), false) {
        let (key, value) = entry.map_err(|err| format!("reading the store: {err}"))?;
        if key == local_only {
            continue;
        }
        let size = key.len() + value.len();
        if batch_bytes + size > ENTRY_BYTES {
            flush_ops(&mut batch, &mut batch_bytes)?;
        }
        batch.push(BatchOp::Put(key, value.into()));
        batch_bytes += size;
        counts.keys += 1;
    }
    flush_ops(&mut batch, &mut batch_bytes)?;
    counts.last_sequence = last;
    Ok(counts)
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The log files of `dir` (`<deployment id>.log`), by deployment id.
fn log_files(dir: &Path) -> Result<Vec<(DeploymentId, PathBuf)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(format!("{}: {err}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| format!("{}: {err}", dir.display()))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<uuid::Uuid>().ok())
        else {
            continue;
        };
        out.push((DeploymentId(id), entry.path()));
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_the_single_node_sweeps_are_not_migrated() {
        assert!(is_leftover("sources/0190-x.partial"));
        assert!(is_leftover("cache/.deleting-app-1/x"));
        assert!(is_leftover("images/.mirror-1"));
        assert!(!is_leftover("sources/0190.tar.gz"));
        assert!(!is_leftover("cache/app/deps/x.bin"));
    }

    #[test]
    fn log_files_are_found_by_deployment_id_and_strangers_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::now_v7();
        std::fs::write(dir.path().join(format!("{id}.log")), b"x").unwrap();
        std::fs::write(dir.path().join("probe"), b"").unwrap();
        std::fs::write(dir.path().join("notanid.log"), b"").unwrap();
        let found = log_files(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, DeploymentId(id));
        assert!(log_files(&dir.path().join("missing")).unwrap().is_empty());
    }
}
