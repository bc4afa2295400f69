//! Reads of the status indexes (`codec` tags `0x10`, `0x11`), the pending cancels (`0x0E`) and the deployment counts (`0x19`,
//! `0x1A`, and every app's, `0x1B`): deployments by app and status, newest first, for the list, its filters and
//! retention. The writer keeps them in step with the records (`writer::prune`,
//! `writer::counts`); this module only reads.
//!
//! A page of one app is cheap however deep: its `total_count` is one point read (the app's
//! counts), and its offset is found by summing bucket counts from the newest bucket until the
//! one holding the offset, then skipping inside that bucket only (at most about
//! `counts::BUCKET_SIZE` keys). The page itself is the same index range read as a plain scan,
//! so its contents and order are exactly those of skipping `offset` keys newest first.
//!
//! The admin's `GET /v1/deployments` (every app) pages the same way from every app's counts: one
//! point read for the total, the bucket walk, then the k-way merge of every app's index from
//! that bucket's end. A page of some apps only (a non-admin's apps) has no counts of its own:
//! its total is one point read per app, but its offset is still skipped key by key.

use super::codec::{self, CountScope};
use super::engine::{prefix_end, EntryIter};
use super::{Store, StoreError};
use crate::model::{AppId, DeploymentId};
use crate::status::Status;

impl Store {
    /// How many deployments of `apps` are at one of `statuses`: one point read per app.
    pub fn status_count(&self, apps: &[AppId], statuses: &[Status]) -> Result<u64, StoreError> {
        let mut count = 0;
        for app in apps {
            count += self.app_counts(*app)?.of(statuses);
        }
        Ok(count)
    }

    /// An app's deployment counts (all zero for an app without deployments).
    pub fn app_counts(&self, app: AppId) -> Result<codec::StoredAppCounts, StoreError> {
        match self.engine.get(&codec::app_counts_key(app))? {
            Some(value) => Ok(codec::decode_app_counts(&value)?),
            None => Ok(codec::StoredAppCounts::default()),
        }
    }

    /// One page of an app's deployments (at one of `statuses`, when given), newest first:
    /// the number there are, and the ids after skipping `offset`, at most `limit`. The same ids
    /// as skipping `offset` keys of the index, without walking them (see the module doc).
    pub fn app_page(
        &self,
        app: AppId,
        statuses: Option<&[Status]>,
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<DeploymentId>), StoreError> {
        self.counted_page(CountScope::App(app), &[app], statuses, offset, limit)
    }

    /// [`Self::app_page`] over every deployment of every app (`apps`: every app that exists),
    /// from every app's counts (`0x1B`): the same page as the k-way merge of every app's index
    /// skipping `offset` ([`Self::status_ids`]), which it still is, but from the bucket that
    /// holds the offset on.
    pub fn every_apps_page(
        &self,
        apps: &[AppId],
        statuses: Option<&[Status]>,
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<DeploymentId>), StoreError> {
        self.counted_page(CountScope::All, apps, statuses, offset, limit)
    }

    /// The counts of `scope` (which counts exactly the deployments of `apps`) give the total and
    /// the bucket holding `offset`; the page is then the merge of the apps' index ranges below
    /// that bucket's end, skipping the rest of the offset inside it.
    fn counted_page(
        &self,
        scope: CountScope,
        apps: &[AppId],
        statuses: Option<&[Status]>,
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<DeploymentId>), StoreError> {
        let counts = match self.engine.get(&scope.counts_key())? {
            Some(value) => codec::decode_app_counts(&value)?,
            None => codec::StoredAppCounts::default(),
        };
        let total = statuses.map_or(counts.total(), |s| counts.of(s));
        if offset >= total || limit == 0 {
            return Ok((total, Vec::new()));
        }
        // Newest bucket first: `before` deployments lie at or after `upper` (the first id of
        // the last bucket passed); the offset is in the next bucket that holds enough.
        let prefix = scope.buckets_prefix();
        let mut before = 0;
        let mut upper: Option<[u8; 16]> = None;
        for entry in self.engine.range(&prefix, &prefix_end(&prefix), true) {
            let (key, value) = entry?;
            let bucket = codec::decode_bucket(&value)?;
            let held = statuses.map_or(bucket.live(), |s| bucket.of(s));
            if before + held > offset {
                break;
            }
            before += held;
            upper = Some(codec::trailing_id(&key)?);
        }
        let skip = offset - before;
        let upper = upper.map(DeploymentId::from_bytes);
        let mut sources: Vec<EntryIter<'_>> = Vec::new();
        for app in apps {
            match statuses {
                None => {
                    let prefix = codec::app_deployments_prefix(*app);
                    let end = upper.map_or_else(
                        || prefix_end(&prefix),
                        |upper| codec::app_deployment_key(*app, upper),
                    );
                    sources.push(self.engine.range(&prefix, &end, true));
                }
                Some(statuses) => {
                    for status in statuses {
                        let prefix = codec::app_status_prefix(*app, *status);
                        let end = upper.map_or_else(
                            || prefix_end(&prefix),
                            |upper| codec::app_status_key(*app, *status, upper),
                        );
                        sources.push(self.engine.range(&prefix, &end, true));
                    }
                }
            }
        }
        let ids = newest_first(&mut sources, skip, limit)?;
        Ok((total, ids))
    }

    /// Ids of the deployments of `apps` at one of `statuses`, newest first (ids are UUIDv7:
    /// creation order), skipping `offset`, at most `limit`.
    pub fn status_ids(
        &self,
        apps: &[AppId],
        statuses: &[Status],
        offset: u64,
        limit: u64,
    ) -> Result<Vec<DeploymentId>, StoreError> {
        let mut sources: Vec<EntryIter<'_>> = status_prefixes(apps, statuses)
            .into_iter()
            .map(|prefix| self.engine.range(&prefix, &prefix_end(&prefix), true))
            .collect();
        newest_first(&mut sources, offset, limit)
    }

    /// Every unfinished deployment with its app, newest first (the unfinished index).
    pub fn unfinished(&self) -> Result<Vec<(DeploymentId, AppId)>, StoreError> {
        let prefix = [codec::TAG_UNFINISHED_INDEX];
        let mut out = Vec::new();
        for entry in self.engine.range(&prefix, &prefix_end(&prefix), true) {
            let (key, value) = entry?;
            out.push((
                DeploymentId::from_bytes(codec::trailing_id(&key)?),
                AppId::from_bytes(codec::id_value(&value)?),
            ));
        }
        Ok(out)
    }

    /// Ids of an app's finished deployments, newest first.
    pub fn finished_ids(&self, app: AppId) -> Result<Vec<DeploymentId>, StoreError> {
        let finished: Vec<Status> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        self.status_ids(&[app], &finished, 0, u64::MAX)
    }

    /// Every pending cancel (`0x0E`), by deployment: written by a cancel's commit, deleted by
    /// the commit that ends the deployment, so only a crash in between leaves one to read.
    pub(crate) fn cancel_requests(
        &self,
    ) -> Result<std::collections::HashMap<DeploymentId, codec::CancelRequest>, StoreError> {
        let prefix = [codec::TAG_CANCEL_REQUEST];
        let mut out = std::collections::HashMap::new();
        for entry in self.engine.range(&prefix, &prefix_end(&prefix), false) {
            let (key, value) = entry?;
            out.insert(
                DeploymentId::from_bytes(codec::trailing_id(&key)?),
                codec::decode_cancel_request(&value)?,
            );
        }
        Ok(out)
    }

    /// Every uploaded source's record.
    pub fn all_sources(&self) -> Result<Vec<codec::StoredSource>, StoreError> {
        let prefix = [codec::TAG_SOURCE];
        self.engine
            .range(&prefix, &prefix_end(&prefix), false)
            .map(|entry| Ok(codec::decode_source(&entry?.1)?))
            .collect()
    }
}

/// A k-way merge of index ranges that are each newest first (keys ending with a deployment
/// id): the ids newest first, skipping `skip`, at most `limit`.
fn newest_first(
    sources: &mut [EntryIter<'_>],
    skip: u64,
    limit: u64,
) -> Result<Vec<DeploymentId>, StoreError> {
    // The next id of each source; the merge takes the newest.
    let mut heads = sources
        .iter_mut()
        .map(next_id)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    let mut skipped = 0;
    while (out.len() as u64) < limit {
        let newest = heads
            .iter()
            .enumerate()
            .filter_map(|(i, head)| head.map(|id| (i, id)))
            .max_by_key(|(_, id)| *id);
        let Some((i, id)) = newest else { break };
        heads[i] = next_id(&mut sources[i])?;
        if skipped < skip {
            skipped += 1;
        } else {
            out.push(DeploymentId::from_bytes(id));
        }
    }
    Ok(out)
}

/// The deployment id ending the next key of an index range.
fn next_id(source: &mut EntryIter<'_>) -> Result<Option<[u8; 16]>, StoreError> {
    match source.next() {
        None => Ok(None),
        Some(entry) => Ok(Some(codec::trailing_id(&entry?.0)?)),
    }
}

fn status_prefixes(apps: &[AppId], statuses: &[Status]) -> Vec<Vec<u8>> {
    apps.iter()
        .flat_map(|app| {
            statuses
                .iter()
                .map(move |status| codec::app_status_prefix(*app, *status))
        })
        .collect()
}
