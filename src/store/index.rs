//! Reads of the status indexes (`codec` tags `0x10`, `0x11`): deployments by app and status,
//! newest first, for the list filters and for retention. The writer keeps the indexes in step
//! with the records (`writer::prune`); this module only reads.

use super::codec;
use super::engine::{prefix_end, EntryIter};
use super::{Store, StoreError};
use crate::model::{AppId, DeploymentId};
use crate::status::Status;

impl Store {
    /// How many deployments of `apps` are at one of `statuses`.
    pub fn status_count(&self, apps: &[AppId], statuses: &[Status]) -> Result<u64, StoreError> {
        let mut count = 0;
        for prefix in status_prefixes(apps, statuses) {
            for entry in self.engine.range(&prefix, &prefix_end(&prefix), false) {
                entry?;
                count += 1;
            }
        }
        Ok(count)
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
        // The next id of each source (each is newest first); a k-way merge takes the newest.
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
            if skipped < offset {
                skipped += 1;
            } else {
                out.push(DeploymentId::from_bytes(id));
            }
        }
        Ok(out)
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

    /// Every uploaded source's record.
    pub fn all_sources(&self) -> Result<Vec<codec::StoredSource>, StoreError> {
        let prefix = [codec::TAG_SOURCE];
        self.engine
            .range(&prefix, &prefix_end(&prefix), false)
            .map(|entry| Ok(codec::decode_source(&entry?.1)?))
            .collect()
    }
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
