//! Files in the object store: what a single node keeps as files under its data directory
//! besides `store/` and `logs/` (uploaded sources, kept images, build caches: [`REPLICATED_DIRS`])
//! is put to the JetStream object store bucket [`FILES_BUCKET`] by the leader, and mirrored from
//! it by every follower into its own data directory, so that a takeover finds them.
//!
//! An object's name is the file's path relative to the data directory, with `/` separators
//! (`images/<deployment>.tar.gz`, `sources/<source>.tar.gz`, `cache/<app>/…`). The leader's
//! call sites reach the hook through `Store::files()` ([`ReplicateFiles`]; absent on a single
//! node): a file is put *before* the record that refers to it is committed (an upload before
//! its source is marked uploaded, an image before its image record), and deleted from the
//! bucket after it was removed locally. A crash between the put and the commit leaves an
//! object no record owns; the new leader's orphan sweep removes it with the local file.
//!
//! This module moves bytes only: it never reads or writes the store, and never decides which
//! file is kept (retention and the writer do). Files are streamed both ways (the object store's
//! 128 KiB chunks), never held whole in memory. The mirror writes atomically (a temporary file
//! in the same directory, then a rename) and refuses any object name that is not a plain path
//! inside one of [`REPLICATED_DIRS`].

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectInfo, ObjectStore};
use async_nats::jetstream::stream::Stream;
use base64::Engine as _;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

mod bucket;

use self::bucket::{bucket_stream, committed_info, list};
pub use self::bucket::{ensure_bucket, Bucket};
use super::FILES_BUCKET;
use crate::model::{AppId, DeploymentId};
use crate::store::Store;

/// The data directory's subdirectories whose files are replicated (everything a node keeps
/// besides `store/`, `logs/`, which travel through the write-ahead stream, and `work/`, which
/// is scratch space of the running build).
pub const REPLICATED_DIRS: [&str; 3] = ["sources", "images", "cache"];

/// How long the mirror waits before following the bucket again after losing its watch (the
/// engine unreachable): long enough not to spin, short enough that a follower is current soon
/// after the engine is back.
const MIRROR_RETRY: Duration = Duration::from_secs(1);

/// Read buffer of the local digests: large enough for sequential reads, small enough that
/// hashing a file never holds much of it.
const HASH_BUFFER_BYTES: usize = 64 * 1024;

/// How many versions of one object the mirror tries to copy before giving up on it for now (a
/// version replaced mid-copy is copied again; more than a few means it changes constantly).
const COPY_ATTEMPTS: usize = 3;

/// A failure to replicate a file.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the object store (bucket {FILES_BUCKET}): {what}: {message}")]
    Engine { what: &'static str, message: String },
    #[error("not a replicated file name: {0:?}")]
    BadName(String),
}

impl FilesError {
    fn engine(what: &'static str, err: impl std::fmt::Display) -> Self {
        FilesError::Engine {
            what,
            message: err.to_string(),
        }
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| FilesError::Io { what, path, source }
    }
}

/// The leader's hook at the places files are written or removed (`Store::files()`).
///
/// Blocking: call it from a blocking thread (`spawn_blocking`, the writer thread), never from
/// an async task (see [`put_async`] / [`delete_async`]). Both are idempotent: a put of a file
/// whose content the bucket already has sends nothing; a delete of what is not there succeeds.
pub trait ReplicateFiles: Send + Sync {
    /// The data directory the names are relative to.
    fn data_dir(&self) -> &Path;

    /// Puts `rel` (a path relative to the data directory, `/`-separated) to the bucket: a file
    /// as one object; a directory as every file under it, deleting the objects under it whose
    /// file is gone. Returns when the bucket holds it durably.
    fn put(&self, rel: &str) -> Result<(), FilesError>;

    /// Deletes the object `rel` and every object under `rel/` from the bucket.
    fn delete(&self, rel: &str) -> Result<(), FilesError>;
}

/// The object name of a source archive.
pub fn source_name(id: uuid::Uuid) -> String {
    format!("sources/{id}.tar.gz")
}

/// The object name of a deployment's kept image.
pub fn image_name(deployment: DeploymentId) -> String {
    format!(
        "{}/{}",
        crate::images::DIR,
        crate::images::file_name(deployment)
    )
}

/// The name of an app's build cache directory (its objects are under `cache/<app>/`).
pub fn cache_name(app: AppId) -> String {
    format!("cache/{app}")
}

/// [`ReplicateFiles::put`] off the async executor; nothing to do without a hook.
pub async fn put_async(
    files: Option<Arc<dyn ReplicateFiles>>,
    rel: String,
) -> Result<(), FilesError> {
    let Some(files) = files else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || files.put(&rel))
        .await
        .map_err(|err| FilesError::engine("putting a file", err))?
}

/// [`ReplicateFiles::delete`] off the async executor; nothing to do without a hook.
pub async fn delete_async(
    files: Option<Arc<dyn ReplicateFiles>>,
    rel: String,
) -> Result<(), FilesError> {
    let Some(files) = files else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || files.delete(&rel))
        .await
        .map_err(|err| FilesError::engine("deleting a file", err))?
}

/// After a local removal of `path` (blocking): deletes its objects from the bucket when the
/// store has a hook and `path` is under one of [`REPLICATED_DIRS`] of its data directory.
/// Failures are logged: the file is gone locally, and the next orphan sweep retries.
pub fn forget(store: &Store, path: &Path) {
    let Some(files) = store.files() else {
        return;
    };
    let Some(rel) = relative_name(files.data_dir(), path) else {
        return;
    };
    if let Err(err) = files.delete(&rel) {
        tracing::warn!(name = %rel, error = %err, "cannot delete a file from the object store");
    }
}

/// `path`'s object name: relative to `data_dir`, under a replicated dir, plain components.
fn relative_name(data_dir: &Path, path: &Path) -> Option<String> {
    // The same directory may be spelled relative in one place and absolute in another.
    let rel = match path.strip_prefix(data_dir) {
        Ok(rel) => rel.to_path_buf(),
        Err(_) => {
            let path = std::path::absolute(path).ok()?;
            path.strip_prefix(std::path::absolute(data_dir).ok()?)
                .ok()?
                .to_path_buf()
        }
    };
    let parts: Vec<&str> = rel
        .components()
        .map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let name = parts.join("/");
    local_path(data_dir, &name).map(|_| name)
}

/// Where object `name` lives under `data_dir`, if it is a plain relative path inside one of
/// [`REPLICATED_DIRS`] (no `..`, no absolute path, no empty or dot component): the mirror
/// never writes outside those directories, whatever the bucket holds.
pub fn local_path(data_dir: &Path, name: &str) -> Option<PathBuf> {
    let mut parts = name.split('/');
    let top = parts.next()?;
    if !REPLICATED_DIRS.contains(&top) {
        return None;
    }
    let mut path = data_dir.join(top);
    let mut depth = 0;
    for part in parts {
        if part.is_empty()
            || part == "."
            || part == ".."
            || part.contains('\\')
            || part.contains('\0')
        {
            return None;
        }
        path.push(part);
        depth += 1;
    }
    (depth > 0).then_some(path)
}

/// The object store's digest of a file's bytes (`SHA-256=<url-safe base64>`), streamed.
async fn file_digest(path: &Path) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; HASH_BUFFER_BYTES];
    loop {
        let n = file.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!(
        "SHA-256={}",
        base64::engine::general_purpose::URL_SAFE.encode(hasher.finalize())
    ))
}

/// Whether the local file at `path` already has the content `info` describes.
async fn same_content(path: &Path, info: &ObjectInfo) -> bool {
    match tokio::fs::metadata(path).await {
        Ok(meta) if meta.is_file() && meta.len() == info.size as u64 => {}
        _ => return false,
    }
    match (&info.digest, file_digest(path).await) {
        (Some(digest), Ok(local)) => *digest == local,
        _ => false,
    }
}

/// The files under `dir` (recursively), as object names relative to `data_dir`; symlinks and
/// other non-regular files are skipped (a build cache's links are not content).
pub(crate) async fn files_under(data_dir: &Path, dir: &Path) -> Result<Vec<String>, FilesError> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(FilesError::io("listing", &dir)(err)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(FilesError::io("listing", &dir))?
        {
            let kind = entry
                .file_type()
                .await
                .map_err(FilesError::io("listing", &entry.path()))?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                if let Some(name) = relative_name(data_dir, &entry.path()) {
                    out.push(name);
                }
            }
        }
    }
    Ok(out)
}

/// The leader's [`ReplicateFiles`]: the bucket [`FILES_BUCKET`] of the cluster.
pub struct ObjectFiles {
    bucket: ObjectStore,
    stream: Stream,
    data_dir: PathBuf,
    /// The runtime the blocking calls run their async work on (the caller is a blocking thread).
    runtime: tokio::runtime::Handle,
}

impl ObjectFiles {
    /// The hook for the node whose data directory is `data_dir`, on the current runtime.
    pub fn new(bucket: Bucket, data_dir: PathBuf) -> Self {
        Self {
            bucket: bucket.objects,
            stream: bucket.stream,
            data_dir,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Puts one file (idempotent: skipped when the bucket has the same digest).
    pub async fn put_file(&self, name: &str) -> Result<bool, FilesError> {
        let path =
            local_path(&self.data_dir, name).ok_or_else(|| FilesError::BadName(name.into()))?;
        match self.bucket.info(name).await {
            Ok(info) if !info.deleted && same_content(&path, &info).await => return Ok(false),
            Ok(_) => {}
            Err(err) if err.kind() == object_store::InfoErrorKind::NotFound => {}
            Err(err) => return Err(FilesError::engine("reading an object's info", err)),
        }
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(FilesError::io("opening", &path))?;
        self.bucket
            .put(name, &mut file)
            .await
            .map_err(|err| FilesError::engine("putting an object", err))?;
        Ok(true)
    }

    /// Deletes one object (idempotent); whether it was there.
    pub async fn delete_object(&self, name: &str) -> Result<bool, FilesError> {
        match self.bucket.delete(name).await {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == object_store::DeleteErrorKind::NotFound => Ok(false),
            Err(err) => Err(FilesError::engine("deleting an object", err)),
        }
    }

    /// [`ReplicateFiles::put`], async.
    pub async fn put_path(&self, rel: &str) -> Result<(), FilesError> {
        let path =
            local_path(&self.data_dir, rel).ok_or_else(|| FilesError::BadName(rel.into()))?;
        let is_dir = tokio::fs::metadata(&path)
            .await
            .map(|meta| meta.is_dir())
            .unwrap_or(false);
        if !is_dir {
            return self.put_file(rel).await.map(|_| ());
        }
        let present = files_under(&self.data_dir, &path).await?;
        for name in &present {
            self.put_file(name).await?;
        }
        let prefix = format!("{rel}/");
        for info in list(&self.stream).await? {
            if info.name.starts_with(&prefix) && !present.contains(&info.name) {
                self.delete_object(&info.name).await?;
            }
        }
        Ok(())
    }

    /// [`ReplicateFiles::delete`], async.
    pub async fn delete_path(&self, rel: &str) -> Result<(), FilesError> {
        local_path(&self.data_dir, rel).ok_or_else(|| FilesError::BadName(rel.into()))?;
        if self.delete_object(rel).await? {
            // A name is a file or a directory, never both: no scan of the bucket for a file
            // (a prune of many images stays linear).
            return Ok(());
        }
        let prefix = format!("{rel}/");
        for info in list(&self.stream).await? {
            if info.name.starts_with(&prefix) {
                self.delete_object(&info.name).await?;
            }
        }
        Ok(())
    }
}

impl ReplicateFiles for ObjectFiles {
    fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn put(&self, rel: &str) -> Result<(), FilesError> {
        self.runtime
            .block_on(retry_engine_errors(|| self.put_path(rel)))
    }

    fn delete(&self, rel: &str) -> Result<(), FilesError> {
        self.runtime
            .block_on(retry_engine_errors(|| self.delete_path(rel)))
    }
}

/// How long a put or delete is retried while the object store answers with an engine error
/// (no responders or a timeout while JetStream elects a stream leader, seen in tests right after
/// a server's start or loss): longer than an election, shorter than a client's patience.
const ENGINE_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// Pause between two of those attempts.
const ENGINE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs `attempt` again while it fails with [`FilesError::Engine`], for [`ENGINE_RETRY_FOR`];
/// puts and deletes may be repeated (a put of identical content sends nothing).
async fn retry_engine_errors<F, Fut>(mut attempt: F) -> Result<(), FilesError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), FilesError>>,
{
    let deadline = tokio::time::Instant::now() + ENGINE_RETRY_FOR;
    loop {
        match attempt().await {
            Err(FilesError::Engine { what, message }) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(what, %message, "the object store failed; retrying");
                tokio::time::sleep(ENGINE_RETRY_PAUSE).await;
            }
            result => return result,
        }
    }
}

/// What one catch-up of the mirror did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MirrorCounts {
    /// Files written (missing or different locally).
    pub written: usize,
    /// Files already identical, left alone.
    pub unchanged: usize,
    /// Local files removed because the bucket no longer has them.
    pub removed: usize,
}

/// A follower's copy of the bucket in its data directory.
#[derive(Clone)]
pub struct Mirror {
    bucket: ObjectStore,
    /// The bucket's stream, to read an object's chunks one by one.
    stream: Stream,
    data_dir: PathBuf,
}

impl Mirror {
    /// The mirror of the bucket (created by [`ensure_bucket`] first) into `data_dir`.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        data_dir: PathBuf,
    ) -> Result<Self, FilesError> {
        let bucket = js
            .get_object_store(FILES_BUCKET)
            .await
            .map_err(|err| FilesError::engine("opening the bucket", err))?;
        let stream = bucket_stream(js).await?;
        Ok(Self {
            bucket,
            stream,
            data_dir,
        })
    }

    /// Brings the data directory in line with the bucket once: writes what is missing or
    /// different, removes the files of [`REPLICATED_DIRS`] the bucket does not have. A node
    /// that wins the lease runs it (after stopping [`Mirror::run`]) before it starts serving.
    pub async fn catch_up(&self) -> Result<MirrorCounts, FilesError> {
        let mut counts = MirrorCounts::default();
        let objects = list(&self.stream).await?;
        let mut wanted = std::collections::HashSet::new();
        for info in &objects {
            let Some(path) = local_path(&self.data_dir, &info.name) else {
                tracing::warn!(name = %info.name, "ignoring an object outside the replicated directories");
                continue;
            };
            wanted.insert(info.name.clone());
            if self.apply(info, &path).await? {
                counts.written += 1;
            } else {
                counts.unchanged += 1;
            }
        }
        // What the bucket does not have is not committed anywhere (or was removed), including
        // the temporary files of a copy a crash cut short.
        // Each absence is confirmed by a leader read of the name first: a listing during an
        // election can still come from a replica that lags, and a file wrongly removed here is
        // missing when this node leads.
        for dir in REPLICATED_DIRS {
            for name in files_under(&self.data_dir, &self.data_dir.join(dir)).await? {
                if wanted.contains(&name) {
                    continue;
                }
                let Some(path) = local_path(&self.data_dir, &name) else {
                    continue;
                };
                match committed_info(&self.stream, &name).await? {
                    Some(info) => {
                        if self.apply(&info, &path).await? {
                            counts.written += 1;
                        } else {
                            counts.unchanged += 1;
                        }
                    }
                    None => {
                        remove_local(&self.data_dir, &path).await?;
                        counts.removed += 1;
                    }
                }
            }
        }
        Ok(counts)
    }

    /// Catches up, then follows the bucket's changes until `stop`; when the watch is lost (the
    /// engine unreachable) it starts over after [`MIRROR_RETRY`], catching up again, so no
    /// change is missed. Errors are logged, never fatal: a follower serves nothing from these
    /// files until it leads.
    pub async fn run(&self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            if let Err(err) = self.follow(&stop).await {
                tracing::warn!(error = %err, "the files mirror lost the object store; retrying");
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(MIRROR_RETRY) => {}
            }
        }
    }

    /// One watch: started before the catch-up, so a change made during it is seen after it.
    async fn follow(&self, stop: &CancellationToken) -> Result<(), FilesError> {
        let mut watch = self
            .bucket
            .watch()
            .await
            .map_err(|err| FilesError::engine("watching", err))?;
        let counts = self.catch_up().await?;
        tracing::info!(?counts, "the files mirror caught up with the object store");
        loop {
            let change = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                change = watch.next() => change,
            };
            let Some(change) = change else {
                return Err(FilesError::engine("watching", "the watch ended"));
            };
            let info = change.map_err(|err| FilesError::engine("watching", err))?;
            let Some(path) = local_path(&self.data_dir, &info.name) else {
                tracing::warn!(name = %info.name, "ignoring an object outside the replicated directories");
                continue;
            };
            if info.deleted {
                remove_local(&self.data_dir, &path).await?;
            } else {
                self.apply(&info, &path).await?;
            }
        }
    }

    /// Makes `path` hold the object `info` names (its current version); false when it already
    /// did, or when the object was deleted meanwhile (its delete follows in the watch). A
    /// version replaced during the copy is copied again in its new version.
    async fn apply(&self, info: &ObjectInfo, path: &Path) -> Result<bool, FilesError> {
        let mut info = info.clone();
        for _ in 0..COPY_ATTEMPTS {
            if same_content(path, &info).await {
                return Ok(false);
            }
            match self.copy(&info, path).await {
                Ok(()) => return Ok(true),
                Err(err) => match self.bucket.info(&info.name).await {
                    Ok(now) if now.nuid != info.nuid && !now.deleted => info = now,
                    Ok(now) if now.deleted => return Ok(false),
                    Err(gone) if gone.kind() == object_store::InfoErrorKind::NotFound => {
                        return Ok(false)
                    }
                    _ => return Err(err),
                },
            }
        }
        Err(FilesError::engine(
            "reading an object",
            format!("{} kept changing during the copy", info.name),
        ))
    }

    /// Copies one version of an object into `path`: its chunks fetched one at a time from the
    /// stream leader (a push consumer would buffer the whole object when the disk is slower
    /// than the network), checked against the size and digest, written to a temporary file
    /// that is synced and renamed over `path`.
    async fn copy(&self, info: &ObjectInfo, path: &Path) -> Result<(), FilesError> {
        let parent = path
            .parent()
            .ok_or_else(|| FilesError::BadName(info.name.clone()))?;
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(FilesError::io("creating", parent))?;
        let temporary = parent.join(format!(".mirror-{}", uuid::Uuid::now_v7()));
        let written = self.copy_to(info, &temporary).await;
        let renamed = match written {
            Ok(()) => tokio::fs::rename(&temporary, path)
                .await
                .map_err(FilesError::io("renaming into", path)),
            Err(err) => Err(err),
        };
        if renamed.is_err() {
            let _ = tokio::fs::remove_file(&temporary).await;
        }
        renamed
    }

    async fn copy_to(&self, info: &ObjectInfo, temporary: &Path) -> Result<(), FilesError> {
        let subject = format!("$O.{FILES_BUCKET}.C.{}", info.nuid);
        let mut file = tokio::fs::File::create(temporary)
            .await
            .map_err(FilesError::io("creating", temporary))?;
        let mut hasher = Sha256::new();
        let mut size = 0usize;
        let mut next = 1;
        for _ in 0..info.chunks {
            let chunk = self
                .stream
                .get_first_raw_message_by_subject(&subject, next)
                .await
                .map_err(|err| FilesError::engine("reading a chunk", err))?;
            next = chunk.sequence + 1;
            hasher.update(&chunk.payload);
            size += chunk.payload.len();
            file.write_all(&chunk.payload)
                .await
                .map_err(FilesError::io("writing", temporary))?;
        }
        let digest = format!(
            "SHA-256={}",
            base64::engine::general_purpose::URL_SAFE.encode(hasher.finalize())
        );
        if size != info.size || info.digest.as_ref().is_some_and(|d| *d != digest) {
            return Err(FilesError::engine(
                "reading an object",
                format!("{} does not match its size and digest", info.name),
            ));
        }
        file.flush()
            .await
            .map_err(FilesError::io("writing", temporary))?;
        file.sync_all()
            .await
            .map_err(FilesError::io("syncing", temporary))
    }
}

/// Removes a mirrored file, then its parent directories left empty, up to its replicated dir.
async fn remove_local(data_dir: &Path, path: &Path) -> Result<(), FilesError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(FilesError::io("removing", path)(err)),
    }
    let mut dir = path.parent();
    while let Some(current) = dir {
        let Ok(rel) = current.strip_prefix(data_dir) else {
            break;
        };
        if rel.components().count() <= 1 {
            break;
        }
        if tokio::fs::remove_dir(current).await.is_err() {
            break; // not empty (or already gone): what is left is someone else's.
        }
        dir = current.parent();
    }
    Ok(())
}

/// Follows the bucket into `data_dir` until `stop` (see [`Mirror::run`]).
pub async fn mirror(
    js: &async_nats::jetstream::Context,
    data_dir: PathBuf,
    stop: CancellationToken,
) -> Result<(), FilesError> {
    Mirror::open(js, data_dir).await?.run(stop).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_map_only_into_the_replicated_directories() {
        let data = Path::new("/data");
        assert_eq!(
            local_path(data, "images/x.tar.gz"),
            Some(PathBuf::from("/data/images/x.tar.gz"))
        );
        assert_eq!(
            local_path(data, "cache/app/deps/a"),
            Some(PathBuf::from("/data/cache/app/deps/a"))
        );
        for bad in [
            "store/db",
            "logs/x",
            "images",
            "images/",
            "images/../store/db",
            "/images/x",
            "images//x",
            "images/./x",
            "cache/a\\..\\b",
        ] {
            assert_eq!(local_path(data, bad), None, "{bad}");
        }
    }

    #[test]
    fn a_local_path_has_its_object_name_only_inside_the_data_directory() {
        let data = Path::new("/data");
        assert_eq!(
            relative_name(data, Path::new("/data/sources/a.tar.gz")),
            Some("sources/a.tar.gz".to_owned())
        );
        assert_eq!(relative_name(data, Path::new("/data/work/a")), None);
        assert_eq!(relative_name(data, Path::new("/other/sources/a")), None);
        assert_eq!(relative_name(data, Path::new("/data/sources")), None);
    }

    #[test]
    fn names_follow_the_single_nodes_file_layout() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(source_name(id), format!("sources/{id}.tar.gz"));
        let d = DeploymentId(id);
        assert_eq!(image_name(d), format!("images/{id}.tar.gz"));
        let app = AppId(id);
        assert_eq!(cache_name(app), format!("cache/{id}"));
    }
}
