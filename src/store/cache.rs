//! The record cache: the named records every request reads (users, tokens and their scopes,
//! apps and their names, collaborations) kept in memory, so authenticating a caller and
//! finding an app need no engine read and no trip to the blocking pool (issue 13).
//!
//! It is a read-through memo of the engine's point gets, keyed by the engine key itself, for
//! the key tags in [`CACHED_TAGS`] only; values are the stored bytes, decoded by the same
//! `Store` methods as before, so a cached read returns exactly what an engine read would.
//!
//! The writer is the only invalidator: `writer::invalidate` removes every cached key a batch
//! puts or deletes, right after the batch is applied and before anyone is answered, so the
//! request after a revoke, a collaborator's removal, a rename or a delete already misses the
//! cache and reads the new state. A reader that missed fills the cache only if no
//! invalidation happened since before its engine read ([`RecordCache::generation`]), so a value
//! read just before a batch can never be put back after the batch invalidated it.
//!
//! Memory is bounded by [`MAX_CACHED_BYTES`]; when an insert would pass it, the cache is
//! emptied and refills from what is read next (a flood of distinct names costs reads, never
//! memory). It must not cache anything the writer does not invalidate: every tag it serves is
//! in [`CACHED_TAGS`], and the writer's hook consults the same list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;

use super::codec;
use super::engine::{BatchOp, Engine, EngineError, EntryIter};
use super::{Store, StoreError};

/// The tags whose point gets are cached: what authenticating a caller (token by hash, token
/// by id, its scope, its user) and resolving an app (by name, by id, the caller's
/// collaboration) read. These records change only through the writer, and rarely (a created
/// token, a rename, a successful deployment's `last_deployment`).
pub const CACHED_TAGS: [u8; 7] = [
    codec::TAG_USER,
    codec::TAG_TOKEN,
    codec::TAG_TOKEN_ID,
    codec::TAG_TOKEN_SCOPES,
    codec::TAG_APP,
    codec::TAG_APP_NAME,
    codec::TAG_COLLABORATOR,
];

/// Most bytes of keys and values the cache holds (each entry also counted with
/// [`ENTRY_OVERHEAD_BYTES`]): about 16,000 entries of a user or an app record, far more than
/// the callers and apps of one install, in a few MiB of the resident-memory budget.
pub const MAX_CACHED_BYTES: usize = 4 * 1024 * 1024;

/// What one entry costs beyond its key and value bytes: the map slot, the `Bytes` handle and
/// the two heap allocations' headers, rounded up.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// The tags of what a deployment list shows or who may see it: deployment records, the
/// per-app indexes, counts and count buckets, apps, collaborations and users. A batch writing
/// any of them bumps the listing generation (`api::page_cache`). Log segments are not among
/// them: ingest leaves the rendered pages valid.
pub const LISTING_TAGS: [u8; 9] = [
    codec::TAG_DEPLOYMENT,
    codec::TAG_APP_DEPLOYMENT,
    codec::TAG_APP_STATUS_INDEX,
    codec::TAG_APP_COUNTS,
    codec::TAG_COUNT_BUCKET,
    codec::TAG_ALL_COUNTS,
    codec::TAG_APP,
    codec::TAG_COLLABORATOR,
    codec::TAG_USER,
];

/// Whether a batch writes anything a deployment list shows ([`LISTING_TAGS`]).
pub fn touches_listings(ops: &[BatchOp]) -> bool {
    ops.iter().any(|op| match op {
        BatchOp::Put(key, _) | BatchOp::Delete(key) => {
            key.first().is_some_and(|tag| LISTING_TAGS.contains(tag))
        }
    })
}

/// Whether point gets of `key` are cached.
pub fn is_cached_key(key: &[u8]) -> bool {
    key.first().is_some_and(|tag| CACHED_TAGS.contains(tag))
}

/// The cached point gets; shared by every clone of a [`Store`].
#[derive(Default)]
pub struct RecordCache {
    inner: Mutex<Inner>,
    /// Bumped by the writer after every applied batch that [`touches_listings`].
    listings: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every invalidation; see [`RecordCache::insert`].
    generation: u64,
    /// Engine key → the stored value (`None`: the key is absent).
    entries: HashMap<Box<[u8]>, Option<Bytes>>,
    /// What `entries` holds, counted as [`MAX_CACHED_BYTES`] says.
    bytes: usize,
}

fn entry_cost(key: &[u8], value: &Option<Bytes>) -> usize {
    key.len() + value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD_BYTES
}

/// What a lookup found.
pub enum Lookup {
    /// The cached value (`None`: the key is absent from the store).
    Hit(Option<Bytes>),
    /// Not cached: read the engine, then [`RecordCache::insert`] with this generation.
    Miss { generation: u64 },
}

impl RecordCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent (every mutation is
        // one map operation plus a counter), so a poisoned lock is still a valid cache.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached value of `key`, or the generation to fill it with.
    pub fn lookup(&self, key: &[u8]) -> Lookup {
        let inner = self.lock();
        match inner.entries.get(key) {
            Some(value) => Lookup::Hit(value.clone()),
            None => Lookup::Miss {
                generation: inner.generation,
            },
        }
    }

    /// Caches what the engine returned for `key`, unless an invalidation happened since
    /// `generation` was looked up (the value may then predate a batch that changed it).
    pub fn insert(&self, key: &[u8], value: Option<Bytes>, generation: u64) {
        let cost = entry_cost(key, &value);
        if cost > MAX_CACHED_BYTES {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation || inner.entries.contains_key(key) {
            return;
        }
        if inner.bytes + cost > MAX_CACHED_BYTES {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.bytes += cost;
        inner.entries.insert(key.into(), value);
    }

    /// Forgets every key of `keys` (the writer's hook, after applying a batch that wrote them)
    /// and makes every fill that looked up before now a no-op.
    pub fn invalidate<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) {
        let mut inner = self.lock();
        inner.generation += 1;
        for key in keys {
            if let Some(value) = inner.entries.remove(key) {
                inner.bytes -= entry_cost(key, &value);
            }
        }
    }

    /// The listing generation: read it before reading a page, stamp the rendered page with it
    /// (`api::page_cache`).
    pub fn listing_generation(&self) -> u64 {
        self.listings.load(Ordering::Acquire)
    }

    /// The writer's hook, after applying a batch that [`touches_listings`]: every page rendered
    /// before is stale.
    pub fn bump_listings(&self) {
        self.listings.fetch_add(1, Ordering::AcqRel);
    }

    /// Number of cached entries and their counted bytes (tests, metrics).
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

/// The cached keys a batch writes, for [`RecordCache::invalidate`].
pub fn cached_keys(ops: &[BatchOp]) -> Vec<Box<[u8]>> {
    ops.iter()
        .map(|op| match op {
            BatchOp::Put(key, _) | BatchOp::Delete(key) => key.as_slice(),
        })
        .filter(|key| is_cached_key(key))
        .map(Box::from)
        .collect()
}

/// An engine that refuses every call: behind [`Store::memory_only`], a read that would touch
/// the engine fails instead of blocking, and the caller runs it again on the blocking pool.
struct NoEngine;

/// The refusal's text (never reaches a client: a memory-only read is retried).
const NOT_IN_MEMORY: &str = "not in memory";

impl Engine for NoEngine {
    fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Err(EngineError(NOT_IN_MEMORY.into()))
    }
    fn range(&self, _: &[u8], _: &[u8], _: bool) -> EntryIter<'_> {
        Box::new(std::iter::once(Err(EngineError(NOT_IN_MEMORY.into()))))
    }
    fn apply(&self, _: Vec<BatchOp>) -> Result<(), EngineError> {
        Err(EngineError(NOT_IN_MEMORY.into()))
    }
    fn sync(&self) -> Result<(), EngineError> {
        Err(EngineError(NOT_IN_MEMORY.into()))
    }
    fn size_on_disk(&self) -> u64 {
        0
    }
}

impl Store {
    /// The record cache this store (and every clone of it) reads through.
    pub fn cache(&self) -> &RecordCache {
        &self.cache
    }

    /// This store with no engine behind its cache: a read that needs anything not cached
    /// fails (with an error that is not the read's real outcome), so it can run on an async
    /// thread without blocking and be run again on the blocking pool when it fails.
    pub fn memory_only(&self) -> Store {
        static NO_ENGINE: OnceLock<Arc<dyn Engine>> = OnceLock::new();
        Store {
            engine: NO_ENGINE.get_or_init(|| Arc::new(NoEngine)).clone(),
            logs: self.logs.clone(),
            cache: self.cache.clone(),
            replication: self.replication.clone(),
            files: self.files.clone(),
        }
    }

    /// A point get through the cache for [`CACHED_TAGS`] keys, straight from the engine for
    /// the others.
    pub(super) fn point_get(&self, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        if !is_cached_key(key) {
            return Ok(self.engine.get(key)?.map(Bytes::from));
        }
        match self.cache.lookup(key) {
            Lookup::Hit(value) => Ok(value),
            Lookup::Miss { generation } => {
                let value = self.engine.get(key)?.map(Bytes::from);
                // A token hash is the one cached key an unauthenticated caller chooses (any
                // garbage token): its absence is not remembered, so a flood of bad tokens
                // cannot push the callers' records out.
                if value.is_some() || key.first() != Some(&codec::TAG_TOKEN) {
                    self.cache.insert(key, value.clone(), generation);
                }
                Ok(value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_looked_up_before_an_invalidation_is_not_kept() {
        let cache = RecordCache::default();
        let key = codec::app_name_key("old");
        let Lookup::Miss { generation } = cache.lookup(&key) else {
            panic!("an empty cache hit");
        };
        // The writer applies a batch writing the key between the reader's engine read and
        // its fill: the value the reader read may be the old one.
        cache.invalidate([key.as_slice()]);
        cache.insert(&key, Some(Bytes::from_static(b"stale")), generation);
        assert!(matches!(cache.lookup(&key), Lookup::Miss { .. }));
    }

    #[test]
    fn an_invalidated_key_is_read_again_and_others_stay() {
        let cache = RecordCache::default();
        let (a, b) = (codec::app_name_key("a"), codec::app_name_key("b"));
        for key in [&a, &b] {
            let Lookup::Miss { generation } = cache.lookup(key) else {
                panic!("an empty cache hit");
            };
            cache.insert(key, None, generation);
        }
        cache.invalidate([a.as_slice()]);
        assert!(matches!(cache.lookup(&a), Lookup::Miss { .. }));
        assert!(matches!(cache.lookup(&b), Lookup::Hit(None)));
        assert_eq!(cache.usage().0, 1);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_byte_cap() {
        let cache = RecordCache::default();
        let value = Bytes::from(vec![7u8; 1000]);
        for i in 0..10_000u32 {
            let key = codec::app_name_key(&format!("app-{i}"));
            let Lookup::Miss { generation } = cache.lookup(&key) else {
                panic!("a fresh key hit");
            };
            cache.insert(&key, Some(value.clone()), generation);
            assert!(cache.usage().1 <= MAX_CACHED_BYTES);
        }
        assert!(cache.usage().0 > 0);
    }

    #[test]
    fn only_the_named_records_are_cached() {
        let deployment = codec::deployment_key(crate::model::DeploymentId::generate());
        let ops = vec![
            BatchOp::Delete(codec::app_name_key("gone")),
            BatchOp::Put(deployment.clone(), Bytes::new()),
        ];
        assert_eq!(
            cached_keys(&ops),
            vec![Box::from(codec::app_name_key("gone"))]
        );
        assert!(!is_cached_key(&deployment));
    }
}
