//! Backups: the tar of a writer snapshot ([`write_tar`]), and the restore of such a tar into an
//! empty data directory ([`restore`]) that `deployd serve --data` starts from.
//!
//! The tar holds, in this order:
//!
//! | entry | what |
//! |---|---|
//! | `records/NNNNNN.kv` | the snapshot's records, at most [`RECORDS_CHUNK_BYTES`] per entry: each record is a key length and a value length (u32 big-endian each), then the key and the value |
//! | `logs/<deployment id>.log` | each log file the snapshot's segment index points into, cut at the index's end (bytes written after the snapshot are never included) |
//! | `images/…` | every regular file of the image directory (kept images: a rollback target must survive a restore) |
//! | `sources/<source id>…` | uploaded source archives whose record is in the snapshot and not expired |
//! | `backup.json` | the [`Manifest`], last: a tar without it is incomplete |
//!
//! Left out on purpose: work directories and build caches (rebuilt by the next deployment),
//! expired sources (retention removes them), the admin token file (a secret already in the
//! records as a token hash) and the data directory's lock.
//!
//! Writing streams: the tar goes to the writer as it is produced, one record chunk at a time,
//! and nothing is written to disk. This module reads the store only through a
//! [`Snapshot`]; it never writes the live store.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::DeploymentId;
use crate::store::engine::{BatchOp, Engine, SledEngine};
use crate::store::writer::Snapshot;
use crate::store::{codec, logs::LogFiles};

/// Most bytes of records in one `records/` entry: the size of the one buffer a backup holds
/// (tar needs an entry's size before its bytes), and of one engine batch on restore.
pub const RECORDS_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// The manifest's name in the tar.
pub const MANIFEST: &str = "backup.json";

/// The tar layout's version, in the manifest.
pub const FORMAT: u32 = 1;

/// Files a backup creates and a restore writes: only the service's user may read them (log
/// text and sources carry secrets often enough), as in the live data directory.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// The restore's copy buffer.
const COPY_BUFFER: usize = 64 * 1024;

/// Bytes of record framing before each key: key length and value length, u32 each.
const RECORD_HEADER: usize = 8;

/// The directories outside the store a backup includes.
#[derive(Debug, Clone)]
pub struct BackupDirs {
    /// `[pipeline] image_dir`: kept images.
    pub images: PathBuf,
    /// Uploaded source archives.
    pub sources: PathBuf,
}

/// What a backup holds; the tar's last entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// When the snapshot was taken (RFC 3339).
    pub taken_at: String,
    pub records: u64,
    pub record_chunks: u64,
    pub log_files: u64,
    pub log_bytes: u64,
    pub image_files: u64,
    pub source_files: u64,
    /// Deployments whose indexed log file was missing from the live store (damaged already;
    /// the restored server reports them as it did).
    pub missing_log_files: Vec<String>,
}

/// Writes the tar of `snapshot` to `out` (see the module doc); returns its manifest.
pub fn write_tar<W: Write>(snapshot: &Snapshot, dirs: &BackupDirs, out: W) -> io::Result<Manifest> {
    let now = time::OffsetDateTime::now_utc();
    let mut manifest = Manifest {
        format: FORMAT,
        taken_at: now
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(io::Error::other)?,
        ..Manifest::default()
    };
    let mtime = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let mut tar = tar::Builder::new(out);
    let mut log_ends: BTreeMap<DeploymentId, u64> = BTreeMap::new();
    let mut sources: BTreeSet<uuid::Uuid> = BTreeSet::new();
    let mut chunk = Vec::with_capacity(RECORDS_CHUNK_BYTES);
    snapshot.for_each_record(|key, value| {
        note_record(key, value, now, &mut log_ends, &mut sources)?;
        if !chunk.is_empty()
            && chunk.len() + RECORD_HEADER + key.len() + value.len() > RECORDS_CHUNK_BYTES
        {
            flush_chunk(&mut tar, &mut chunk, &mut manifest, mtime)?;
        }
        chunk.extend_from_slice(&frame_len(key.len())?);
        chunk.extend_from_slice(&frame_len(value.len())?);
        chunk.extend_from_slice(key);
        chunk.extend_from_slice(value);
        manifest.records += 1;
        Ok(())
    })?;
    if !chunk.is_empty() {
        flush_chunk(&mut tar, &mut chunk, &mut manifest, mtime)?;
    }
    drop(chunk);
    let logs = snapshot.store().logs();
    for (id, end) in log_ends {
        let file = match logs.open_for_read(id) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(deployment = %id, "backup: an indexed log file is missing");
                manifest.missing_log_files.push(id.to_string());
                continue;
            }
            Err(err) => return Err(err),
        };
        // A file shorter than its index is damaged already: what it holds is backed up and
        // the restored server finds the same damage.
        let size = file.metadata()?.len().min(end);
        append(&mut tar, &format!("logs/{id}.log"), size, file, mtime)?;
        manifest.log_files += 1;
        manifest.log_bytes += size;
    }
    for (relative, path) in regular_files(&dirs.images)? {
        if append_file(&mut tar, &format!("images/{relative}"), &path, mtime)? {
            manifest.image_files += 1;
        }
    }
    for (name, path) in source_files(&dirs.sources, &sources)? {
        if append_file(&mut tar, &format!("sources/{name}"), &path, mtime)? {
            manifest.source_files += 1;
        }
    }
    let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    append(&mut tar, MANIFEST, json.len() as u64, &json[..], mtime)?;
    tar.into_inner()?.flush()?;
    Ok(manifest)
}

/// What the tar needs to know of one record: where log files end, which sources are live.
fn note_record(
    key: &[u8],
    value: &[u8],
    now: time::OffsetDateTime,
    log_ends: &mut BTreeMap<DeploymentId, u64>,
    sources: &mut BTreeSet<uuid::Uuid>,
) -> io::Result<()> {
    let id_after_tag = || -> Option<[u8; 16]> { key.get(1..17)?.try_into().ok() };
    match key.first() {
        Some(&codec::TAG_SEGMENT) => {
            let id = id_after_tag().ok_or_else(|| io::Error::other("short segment key"))?;
            let segment = codec::decode_segment_ref(value).map_err(io::Error::other)?;
            let end = log_ends.entry(DeploymentId::from_bytes(id)).or_default();
            *end = (*end).max(segment.end());
        }
        Some(&codec::TAG_SOURCE) => {
            let source = codec::decode_source(value).map_err(io::Error::other)?;
            let live = source.expires_at > now.unix_timestamp_nanos() as i64;
            if source.uploaded && live {
                sources.insert(uuid::Uuid::from_bytes(source.id));
            }
        }
        _ => {}
    }
    Ok(())
}

fn frame_len(len: usize) -> io::Result<[u8; 4]> {
    u32::try_from(len)
        .map(u32::to_be_bytes)
        .map_err(|_| io::Error::other("a record longer than 4 GiB"))
}

fn flush_chunk<W: Write>(
    tar: &mut tar::Builder<W>,
    chunk: &mut Vec<u8>,
    manifest: &mut Manifest,
    mtime: u64,
) -> io::Result<()> {
    manifest.record_chunks += 1;
    let name = format!("records/{:06}.kv", manifest.record_chunks);
    append(tar, &name, chunk.len() as u64, &chunk[..], mtime)?;
    chunk.clear();
    Ok(())
}

/// Appends one regular file entry of exactly `size` bytes read from `data`.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl Read,
    mtime: u64,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(FILE_MODE);
    header.set_mtime(mtime);
    header.set_size(size);
    let mut exact = ExactReader {
        inner: data.take(size),
        left: size,
    };
    tar.append_data(&mut header, path, &mut exact)?;
    if exact.left != 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{path} ended {} bytes early while being backed up",
                exact.left
            ),
        ));
    }
    Ok(())
}

/// Counts what is left to read, so that a file that shrank is an error, not a corrupt tar.
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.left -= read as u64;
        if read == 0 && self.left != 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a file shrank while being backed up",
            ));
        }
        Ok(read)
    }
}

/// Appends a file as it is now; a file removed meanwhile (retention) is skipped (false).
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    path: &Path,
    mtime: u64,
) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    let size = file.metadata()?.len();
    append(tar, name, size, file, mtime)?;
    Ok(true)
}

/// Every regular file under `dir` (symlinks are not followed), as (`/`-joined relative path,
/// path), sorted. A missing directory has none.
fn regular_files(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut pending = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, at)) = pending.pop() {
        let entries = match std::fs::read_dir(&at) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(path = %entry.path().display(), "backup: skipping a file whose name is not UTF-8");
                continue;
            };
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push((relative, entry.path()));
            } else if kind.is_file() {
                out.push((relative, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files of `dir` named after a live source (`<id>` or `<id>.<ext>`, never a `.partial`
/// upload in progress).
fn source_files(dir: &Path, live: &BTreeSet<uuid::Uuid>) -> io::Result<Vec<(String, PathBuf)>> {
    Ok(regular_files(dir)?
        .into_iter()
        .filter(|(name, _)| {
            !name.contains('/')
                && !name.ends_with(".partial")
                && name
                    .get(..36)
                    .and_then(|head| head.parse::<uuid::Uuid>().ok())
                    .is_some_and(|id| live.contains(&id))
        })
        .collect())
}

/// Why a restore failed. The destination is left for the caller to clean up.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Reading the tar failed: the download broke off or the server aborted the backup.
    #[error("the backup stream broke off: {0}")]
    Truncated(io::Error),
    /// The tar is not a deployd backup, or is incomplete.
    #[error("not a complete deployd backup: {0}")]
    Invalid(String),
    /// Writing the destination failed.
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

fn write_error(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(why: impl Into<String>) -> RestoreError {
    RestoreError::Invalid(why.into())
}

/// Restores a backup tar read from `input` into `dest` (which should be empty): the records
/// into a new store at `dest/store`, the files under `dest/logs`, `dest/images` and
/// `dest/sources`. Returns the manifest once every entry it counts was restored and synced.
pub fn restore(input: impl Read, dest: &Path) -> Result<Manifest, RestoreError> {
    let store_dir = dest.join("store");
    let engine = SledEngine::open(&store_dir).map_err(|e| RestoreError::Write {
        path: store_dir.clone(),
        source: io::Error::other(e.0),
    })?;
    let logs_dir = dest.join("logs");
    LogFiles::open(&logs_dir).map_err(write_error(&logs_dir))?;
    let mut seen = Manifest::default();
    let mut manifest: Option<Manifest> = None;
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(RestoreError::Truncated)? {
        let mut entry = entry.map_err(RestoreError::Truncated)?;
        if manifest.is_some() {
            return Err(invalid("entries after the manifest"));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(invalid("an entry that is not a regular file"));
        }
        let path = entry.path().map_err(RestoreError::Truncated)?.into_owned();
        let parts = safe_parts(&path)?;
        let size = entry.size();
        match parts.as_slice() {
            [name] if name == MANIFEST => {
                let mut json = Vec::new();
                (&mut entry)
                    .take(RECORDS_CHUNK_BYTES as u64)
                    .read_to_end(&mut json)
                    .map_err(RestoreError::Truncated)?;
                manifest = Some(
                    serde_json::from_slice(&json).map_err(|e| invalid(format!("manifest: {e}")))?,
                );
            }
            [dir, _] if dir == "records" => {
                if size > RECORDS_CHUNK_BYTES as u64 {
                    return Err(invalid("a record chunk larger than a backup writes"));
                }
                let mut bytes = Vec::with_capacity(size as usize);
                entry
                    .read_to_end(&mut bytes)
                    .map_err(RestoreError::Truncated)?;
                let batch = parse_chunk(&bytes)?;
                seen.records += batch.len() as u64;
                seen.record_chunks += 1;
                // Synced per chunk: sled holds what it has not flushed in memory.
                engine
                    .apply(batch)
                    .and_then(|()| engine.sync())
                    .map_err(|e| RestoreError::Write {
                        path: store_dir.clone(),
                        source: io::Error::other(e.0),
                    })?;
            }
            [dir, name] if dir == "logs" => {
                let valid = name
                    .strip_suffix(".log")
                    .is_some_and(|id| id.parse::<uuid::Uuid>().is_ok());
                if !valid {
                    return Err(invalid(format!("an unexpected log file name {name:?}")));
                }
                write_entry(&mut entry, &logs_dir.join(name))?;
                seen.log_files += 1;
                seen.log_bytes += size;
            }
            [dir, rest @ ..] if dir == "images" && !rest.is_empty() => {
                let mut path = dest.join("images");
                path.extend(rest);
                write_entry(&mut entry, &path)?;
                seen.image_files += 1;
            }
            [dir, name] if dir == "sources" => {
                write_entry(&mut entry, &dest.join("sources").join(name))?;
                seen.source_files += 1;
            }
            _ => return Err(invalid(format!("an unexpected entry {}", path.display()))),
        }
    }
    let manifest = manifest.ok_or_else(|| invalid("the manifest (the last entry) is missing"))?;
    if manifest.format != FORMAT {
        return Err(invalid(format!(
            "format {} (this deployd reads {FORMAT})",
            manifest.format
        )));
    }
    let counted = Manifest {
        format: manifest.format,
        taken_at: manifest.taken_at.clone(),
        missing_log_files: manifest.missing_log_files.clone(),
        ..seen
    };
    if counted != manifest {
        return Err(invalid(format!(
            "the entries do not match the manifest (found {counted:?})"
        )));
    }
    engine.sync().map_err(|e| RestoreError::Write {
        path: store_dir.clone(),
        source: io::Error::other(e.0),
    })?;
    // One `syncfs` for every file and directory written (a sync per file made a restore of
    // 10,000 log files take minutes).
    sync_file_system(dest).map_err(write_error(dest))?;
    Ok(manifest)
}

/// Makes everything written under `dir` durable: `syncfs` of its file system.
fn sync_file_system(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let handle = File::open(dir)?;
    // SAFETY: `syncfs` takes a descriptor, which `handle` keeps open for the call.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The entry's path as plain names: no root, no `..`, no `.`.
fn safe_parts(path: &Path) -> Result<Vec<String>, RestoreError> {
    path.components()
        .map(|part| match part {
            Component::Normal(name) => name
                .to_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid("a path that is not UTF-8")),
            _ => Err(invalid(format!("an unsafe path {}", path.display()))),
        })
        .collect()
}

fn parse_chunk(mut bytes: &[u8]) -> Result<Vec<BatchOp>, RestoreError> {
    let mut batch = Vec::new();
    while !bytes.is_empty() {
        let (header, rest) = bytes
            .split_at_checked(RECORD_HEADER)
            .ok_or_else(|| invalid("a cut record"))?;
        let key_len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let value_len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let (key, rest) = rest
            .split_at_checked(key_len)
            .ok_or_else(|| invalid("a cut record"))?;
        let (value, rest) = rest
            .split_at_checked(value_len)
            .ok_or_else(|| invalid("a cut record"))?;
        if key.is_empty() {
            return Err(invalid("an empty key"));
        }
        batch.push(BatchOp::Put(
            key.to_vec(),
            bytes::Bytes::copy_from_slice(value),
        ));
        bytes = rest;
    }
    Ok(batch)
}

/// Writes one entry to a new file (mode 0600, parents 0700).
fn write_entry(entry: &mut impl Read, path: &Path) -> Result<(), RestoreError> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(parent)
            .map_err(write_error(parent))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(write_error(path))?;
    let mut buf = vec![0; COPY_BUFFER];
    loop {
        let read = entry.read(&mut buf).map_err(RestoreError::Truncated)?;
        if read == 0 {
            break;
        }
        file.write_all(&buf[..read]).map_err(write_error(path))?;
    }
    // Made durable with the rest by `sync_file_system` at the end of the restore.
    Ok(())
}
