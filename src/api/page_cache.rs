//! Rendered pages of the deployment lists (`GET /v1/apps/{app}/deployments`,
//! `GET /v1/deployments`), kept in memory: a page asked again before anything it shows changed
//! is answered with the same bytes, with no engine read, no trip to the blocking pool and no
//! rendering (issue 13: a dashboard or a CLI polling the same page).
//!
//! Correctness rests on one counter, the store's *listing generation*
//! (`RecordCache::listing_generation`), which the writer bumps after applying any batch that
//! writes what a list shows or who may see it (deployment records, the per-app indexes and
//! counts, apps, collaborations, users): an entry is served only while the generation it was
//! rendered at is still current. The generation is read *before* the store read, so a page
//! rendered from a read that raced a batch is stamped with the older generation and is never
//! served after the bump. Access is checked by the handler before every lookup; the key holds
//! what selects the page's rows (the app, or for the every-app list the caller), its filters and
//! its position.
//!
//! Memory is bounded by [`MAX_PAGE_CACHE_BYTES`]; a generation change empties the map (every
//! entry is stale at once). It must not cache a page of anything else, or anything rendered
//! from state the listing generation does not cover.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::model::{AppId, UserId};
use crate::status::Status;

/// Most bytes of page bodies held: a few hundred pages of 100 deployments (~25 KiB each),
/// within the resident-memory budget.
pub const MAX_PAGE_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// What selects a page's rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PageScope {
    /// One app's deployments.
    App(AppId),
    /// `GET /v1/deployments`: every app this caller may see.
    Caller(UserId),
}

/// One page's identity: scope, status filter (as asked, `None` = every status), position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PageKey {
    pub scope: PageScope,
    pub statuses: Option<Vec<Status>>,
    pub page: u64,
    pub per_page: u64,
}

/// The rendered pages; one per server (`api::Shared`).
#[derive(Default)]
pub struct PageCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The listing generation every entry was rendered at.
    generation: u64,
    entries: HashMap<PageKey, Bytes>,
    /// Body bytes in `entries`.
    bytes: usize,
}

impl PageCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation is a map operation plus counters: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The body of `key` rendered at `generation` (the store's current listing generation),
    /// if there is one.
    pub(crate) fn get(&self, key: &PageKey, generation: u64) -> Option<Bytes> {
        let inner = self.lock();
        if inner.generation != generation {
            return None;
        }
        inner.entries.get(key).cloned()
    }

    /// Keeps `body` for `key`, rendered from a read that started at `generation`. Entries of an
    /// older generation are dropped; a body from an older generation than the held ones is not
    /// kept (it may predate a batch the newer ones include).
    pub(crate) fn insert(&self, key: PageKey, body: Bytes, generation: u64) {
        if body.len() > MAX_PAGE_CACHE_BYTES {
            return;
        }
        let mut inner = self.lock();
        if generation < inner.generation {
            return;
        }
        if generation > inner.generation {
            inner.entries.clear();
            inner.bytes = 0;
            inner.generation = generation;
        }
        if inner.bytes + body.len() > MAX_PAGE_CACHE_BYTES {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.bytes += body.len();
        if let Some(old) = inner.entries.insert(key, body) {
            inner.bytes -= old.len();
        }
    }

    /// Number of held pages and their bytes (tests).
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(page: u64) -> PageKey {
        PageKey {
            scope: PageScope::App(AppId::from_bytes([7; 16])),
            statuses: None,
            page,
            per_page: 10,
        }
    }

    #[test]
    fn a_page_is_served_only_at_the_generation_it_was_rendered_at() {
        let cache = PageCache::default();
        let k = key(1);
        cache.insert(k.clone(), Bytes::from_static(b"{}"), 3);
        assert_eq!(cache.get(&k, 3).as_deref(), Some(&b"{}"[..]));
        assert_eq!(cache.get(&k, 4), None);
        assert_eq!(cache.get(&k, 2), None);
    }

    #[test]
    fn a_page_rendered_before_a_newer_one_is_not_kept() {
        let cache = PageCache::default();
        let (a, b) = (key(1), key(2));
        cache.insert(a.clone(), Bytes::from_static(b"new"), 5);
        cache.insert(b.clone(), Bytes::from_static(b"old"), 4);
        assert_eq!(cache.get(&b, 5), None);
        assert_eq!(cache.get(&b, 4), None);
        assert!(cache.get(&a, 5).is_some());
    }

    #[test]
    fn a_newer_generation_drops_every_older_page() {
        let cache = PageCache::default();
        cache.insert(key(1), Bytes::from_static(b"a"), 1);
        cache.insert(key(2), Bytes::from_static(b"b"), 1);
        cache.insert(key(3), Bytes::from_static(b"c"), 2);
        assert_eq!(cache.usage(), (1, 1));
    }

    #[test]
    fn the_cache_never_holds_more_than_its_byte_bound() {
        let cache = PageCache::default();
        let body = Bytes::from(vec![b'x'; MAX_PAGE_CACHE_BYTES / 3 + 1]);
        for page in 0..10 {
            cache.insert(key(page), body.clone(), 1);
            assert!(cache.usage().1 <= MAX_PAGE_CACHE_BYTES);
        }
        cache.insert(key(99), Bytes::from(vec![0; MAX_PAGE_CACHE_BYTES + 1]), 1);
        assert!(cache.usage().1 <= MAX_PAGE_CACHE_BYTES);
    }
}
