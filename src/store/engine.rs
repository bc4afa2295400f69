//! The storage engine boundary: an ordered byte keyspace with atomic batches and an explicit
//! durability point. Engine-neutral on purpose: sled is the first implementation, an in-memory
//! one backs the conformance suite, and other engines may come behind the same trait.
//!
//! Every method is synchronous and may block: call them from the writer thread or
//! `spawn_blocking`, never on the async executor.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Bound;
use std::path::Path;
use std::sync::RwLock;

use bytes::Bytes;

/// An engine failure (I/O, corruption). The writer treats it as fatal for the batch.
#[derive(Debug, thiserror::Error)]
#[error("storage engine: {0}")]
pub struct EngineError(pub String);

/// One write in an atomic batch.
#[derive(Debug, Clone)]
pub enum BatchOp {
    Put(Vec<u8>, Bytes),
    Delete(Vec<u8>),
}

/// A key/value pair read from the engine.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An iterator over a key range.
pub type EntryIter<'a> = Box<dyn Iterator<Item = Result<Entry, EngineError>> + Send + 'a>;

/// An ordered key/value engine.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
    /// Entries with `start <= key < end`, ascending, or descending when `reverse`.
    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> EntryIter<'_>;
    /// Applies every op or none.
    fn apply(&self, batch: Vec<BatchOp>) -> Result<(), EngineError>;
    /// Makes every applied batch durable (survives a process kill and a power loss).
    fn sync(&self) -> Result<(), EngineError>;
    /// Bytes the engine uses on disk (0 for in-memory engines).
    fn size_on_disk(&self) -> u64;
}

/// The smallest key strictly greater than every key starting with `prefix`, for `range` ends.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xFF (never happens with our tags): no upper bound representable; use a long key.
    vec![0xFF; prefix.len() + 1]
}

/// sled 0.34 behind [`Engine`].
///
/// Caveats designed around (DESIGN.md): `flush_async` deadlocks under concurrency on 0.34.7, so
/// only the blocking `flush()` is used, from the writer thread; `flush()` writes with
/// `sync_file_range`, which does not reach the disk's cache, so `sync` also `fdatasync`s the
/// data file; the default 1 GiB cache is replaced by [`SLED_CACHE_BYTES`].
pub struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
    data_file: File,
    dir: std::path::PathBuf,
}

/// How long `open` waits for sled's directory lock: 40 × 50 ms.
const LOCK_RETRIES: u32 = 40;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// sled's page cache. Small: sled holds only records and the segment index (log text lives in
/// `store::logs` files, cached by the OS), and the resident-memory target (50 MB idle) leaves no
/// room for sled's 1 GiB default.
pub const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// sled's own background flush interval. Durability never relies on it (the writer calls
/// `sync` for every group commit); a long interval keeps it from competing with the writer.
const SLED_FLUSH_EVERY_MS: u64 = 1000;

impl SledEngine {
    pub fn open(dir: &Path) -> Result<Self, EngineError> {
        // sled's file lock outlives a dropped `Db` for a moment (its flusher thread lets go of
        // the last reference asynchronously), and a restarting process may still be exiting:
        // wait a little for the lock rather than fail at once.
        let mut attempts = 0;
        loop {
            match Self::open_once(dir) {
                Err(err) if err.0.contains("could not acquire lock") && attempts < LOCK_RETRIES => {
                    attempts += 1;
                    std::thread::sleep(LOCK_RETRY_PAUSE);
                }
                other => return other,
            }
        }
    }

    fn open_once(dir: &Path) -> Result<Self, EngineError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS))
            .open()
            .map_err(|e| EngineError(format!("open {}: {e}", dir.display())))?;
        let tree = db
            .open_tree("deployd")
            .map_err(|e| EngineError(e.to_string()))?;
        let data_file = File::open(dir.join("db"))
            .map_err(|e| EngineError(format!("open sled data file: {e}")))?;
        Ok(Self {
            db,
            tree,
            data_file,
            dir: dir.to_path_buf(),
        })
    }
}

fn sled_err(e: sled::Error) -> EngineError {
    EngineError(e.to_string())
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.tree.get(key).map_err(sled_err)?.map(|v| v.to_vec()))
    }

    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> EntryIter<'_> {
        let iter = self.tree.range(start.to_vec()..end.to_vec());
        let map = |item: sled::Result<(sled::IVec, sled::IVec)>| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(sled_err)
        };
        if reverse {
            Box::new(iter.rev().map(map))
        } else {
            Box::new(iter.map(map))
        }
    }

    fn apply(&self, batch: Vec<BatchOp>) -> Result<(), EngineError> {
        #[cfg(any(test, feature = "test-support"))]
        if let Some(err) = super::faults::injected(super::faults::Op::EngineApply) {
            return Err(EngineError(format!("apply: {err}")));
        }
        let mut sled_batch = sled::Batch::default();
        for op in batch {
            match op {
                BatchOp::Put(key, value) => sled_batch.insert(key, value.as_ref()),
                BatchOp::Delete(key) => sled_batch.remove(key),
            }
        }
        self.tree.apply_batch(sled_batch).map_err(sled_err)
    }

    fn sync(&self) -> Result<(), EngineError> {
        #[cfg(any(test, feature = "test-support"))]
        if let Some(err) = super::faults::injected(super::faults::Op::EngineSync) {
            return Err(EngineError(format!("fdatasync: {err}")));
        }
        self.db.flush().map_err(sled_err)?;
        self.data_file
            .sync_data()
            .map_err(|e| EngineError(format!("fdatasync: {e}")))
    }

    fn size_on_disk(&self) -> u64 {
        dir_size(&self.dir)
    }
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// An in-memory engine: the reference the conformance suite holds sled to. Not durable.
#[derive(Default)]
pub struct MemoryEngine {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let map = self
            .map
            .read()
            .map_err(|_| EngineError("poisoned".into()))?;
        Ok(map.get(key).cloned())
    }

    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> EntryIter<'_> {
        let Ok(map) = self.map.read() else {
            return Box::new(std::iter::once(Err(EngineError("poisoned".into()))));
        };
        let bounds = (
            Bound::Included(start.to_vec()),
            Bound::Excluded(end.to_vec()),
        );
        // A snapshot: readers never hold the lock while iterating.
        let mut items: Vec<_> = map
            .range::<Vec<u8>, _>(bounds)
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        if reverse {
            items.reverse();
        }
        Box::new(items.into_iter())
    }

    fn apply(&self, batch: Vec<BatchOp>) -> Result<(), EngineError> {
        let mut map = self
            .map
            .write()
            .map_err(|_| EngineError("poisoned".into()))?;
        for op in batch {
            match op {
                BatchOp::Put(key, value) => {
                    map.insert(key, value.to_vec());
                }
                BatchOp::Delete(key) => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// Test seam: an engine that fails chosen `apply` or `sync` calls, passing everything else to
/// the engine it wraps. A failed `apply` applies nothing; a failed `sync` comes after the
/// batch was applied (so readers may see it), as when a real `fdatasync` fails.
#[cfg(test)]
pub(crate) struct FaultyEngine {
    inner: std::sync::Arc<dyn Engine>,
    /// Armed to fail an `apply`.
    pub(crate) apply: super::faults::FaultPoint,
    /// Armed to fail a `sync`.
    pub(crate) sync: super::faults::FaultPoint,
}

#[cfg(test)]
impl FaultyEngine {
    pub(crate) fn new(inner: std::sync::Arc<dyn Engine>) -> Self {
        Self {
            inner,
            apply: Default::default(),
            sync: Default::default(),
        }
    }
}

#[cfg(test)]
impl Engine for FaultyEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.inner.get(key)
    }

    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> EntryIter<'_> {
        self.inner.range(start, end, reverse)
    }

    fn apply(&self, batch: Vec<BatchOp>) -> Result<(), EngineError> {
        if self.apply.hit() {
            return Err(EngineError("injected apply failure".into()));
        }
        self.inner.apply(batch)
    }

    fn sync(&self) -> Result<(), EngineError> {
        if self.sync.hit() {
            return Err(EngineError("injected sync failure".into()));
        }
        self.inner.sync()
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
}

#[cfg(test)]
mod conformance {
    //! One suite, run against every engine.
    use super::*;

    fn put(k: &[u8], v: &[u8]) -> BatchOp {
        BatchOp::Put(k.to_vec(), Bytes::copy_from_slice(v))
    }

    fn keys(iter: EntryIter<'_>) -> Vec<Vec<u8>> {
        iter.map(|e| e.expect("entry").0).collect()
    }

    fn suite(engine: &dyn Engine) {
        assert_eq!(engine.get(b"a").expect("get"), None);
        engine
            .apply(vec![put(b"a1", b"x"), put(b"a2", b"y"), put(b"b1", b"z")])
            .expect("apply");
        engine.sync().expect("sync");
        assert_eq!(engine.get(b"a1").expect("get"), Some(b"x".to_vec()));
        assert_eq!(
            keys(engine.range(b"a", &prefix_end(b"a"), false)),
            vec![b"a1".to_vec(), b"a2".to_vec()]
        );
        assert_eq!(
            keys(engine.range(b"a", &prefix_end(b"a"), true)),
            vec![b"a2".to_vec(), b"a1".to_vec()]
        );
        assert_eq!(
            keys(engine.range(b"a2", b"b1", false)),
            vec![b"a2".to_vec()]
        );
        engine
            .apply(vec![BatchOp::Delete(b"a1".to_vec()), put(b"a2", b"w")])
            .expect("apply");
        assert_eq!(engine.get(b"a1").expect("get"), None);
        assert_eq!(engine.get(b"a2").expect("get"), Some(b"w".to_vec()));
        // Later ops in one batch win over earlier ones on the same key.
        engine
            .apply(vec![
                put(b"c", b"1"),
                BatchOp::Delete(b"c".to_vec()),
                put(b"c", b"2"),
            ])
            .expect("apply");
        assert_eq!(engine.get(b"c").expect("get"), Some(b"2".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
    }

    #[test]
    fn memory_engine_conforms() {
        suite(&MemoryEngine::default());
    }

    #[test]
    fn a_faulty_engine_conforms_unarmed_and_fails_only_the_armed_call() {
        let engine = FaultyEngine::new(std::sync::Arc::new(MemoryEngine::default()));
        suite(&engine);
        engine.apply.arm(1);
        assert!(engine.apply(vec![put(b"lost", b"x")]).is_err());
        assert_eq!(
            engine.get(b"lost").expect("get"),
            None,
            "a failed apply applies nothing"
        );
        engine.sync.arm(2);
        engine.sync().expect("first sync");
        assert!(engine.sync().is_err());
        engine
            .apply(vec![put(b"kept", b"y")])
            .expect("apply after a failure");
        engine.sync().expect("sync after a failure");
    }

    #[test]
    fn sled_engine_conforms_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let engine = SledEngine::open(dir.path()).expect("open");
            suite(&engine);
        }
        let engine = SledEngine::open(dir.path()).expect("reopen");
        assert_eq!(engine.get(b"b1").expect("get"), Some(b"z".to_vec()));
        assert!(engine.size_on_disk() > 0);
    }
}
