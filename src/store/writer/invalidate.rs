//! The writer's half of the record cache (`store::cache`): every engine batch the writer
//! applies goes through [`WriterState::apply_batch`], which forgets the cached keys the batch
//! writes once it is applied, before any caller is answered. That makes the writer the cache's
//! only invalidator, and a change visible to the very next request.
//!
//! The same hook bumps the listing generation after a batch that writes what a deployment
//! list shows (`store::cache::LISTING_TAGS`), which retires every rendered page
//! (`api::page_cache`).
//!
//! It must not apply a batch any other way than through the engine, nor decide what is
//! cached (`store::cache::CACHED_TAGS` does).

use super::group::WriterState;
use crate::store::cache::{cached_keys, touches_listings};
use crate::store::engine::{BatchOp, EngineError};

impl WriterState {
    /// Applies `ops` to the engine, then invalidates the cached keys among them: whether or
    /// not the apply succeeded (a failed batch may have been partly seen; forgetting is always
    /// safe).
    pub(super) fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<(), EngineError> {
        let touched = cached_keys(&ops);
        let listings = touches_listings(&ops);
        let applied = self.engine.apply(ops);
        if !touched.is_empty() {
            self.store
                .cache()
                .invalidate(touched.iter().map(|key| &key[..]));
        }
        if listings {
            self.store.cache().bump_listings();
        }
        applied
    }
}
