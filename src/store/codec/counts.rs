//! The byte formats of the deployment counts (tags `0x19`, `0x1A`, `0x1B`): per app, how many
//! deployments are at each status; per count bucket (a run of an app's deployments in id order,
//! named by its first id), how many of them are at each status; and the same two over every
//! app's deployments at once (`0x1B`, a [`CountScope::All`]). The listing reads them to
//! answer `total_count` with one point read and to seek to a deep page without walking the keys
//! it skips (`store::index`); the writer keeps them in the batch of the records they count
//! (`store::writer::counts`). This module only lays out keys and values.

use serde::{Deserialize, Serialize};

use super::{
    decode, encode, key, status_code, CodecError, TAG_ALL_COUNTS, TAG_APP_COUNTS, TAG_COUNT_BUCKET,
};
use crate::model::{AppId, DeploymentId};
use crate::status::Status;

/// Number of statuses, the length of every per-status count array (codes 0..=9).
pub const STATUS_SLOTS: usize = Status::ALL.len();

/// An app's counts (`0x19`): deployments per status (indexed by [`status_code`]), the newest
/// deployment id ever counted, and the bucket new deployments join.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoredAppCounts {
    pub by_status: [u64; STATUS_SLOTS],
    /// The largest id ever counted for the app (it does not go down when that one is pruned).
    pub newest: Option<[u8; 16]>,
    /// The first id of the bucket with the largest first id, when it still exists.
    pub newest_bucket: Option<[u8; 16]>,
}

impl StoredAppCounts {
    /// Deployments at one of `statuses`.
    pub fn of(&self, statuses: &[Status]) -> u64 {
        statuses
            .iter()
            .map(|s| self.by_status[usize::from(status_code(*s))])
            .sum()
    }

    /// Deployments at any status.
    pub fn total(&self) -> u64 {
        self.by_status.iter().sum()
    }
}

/// A count bucket (`0x1A`): the deployments of the app whose ids are at or after the bucket's
/// first id and before the next bucket's, per status.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoredBucket {
    pub by_status: [u32; STATUS_SLOTS],
}

impl StoredBucket {
    /// Deployments of the bucket at one of `statuses`.
    pub fn of(&self, statuses: &[Status]) -> u64 {
        statuses
            .iter()
            .map(|s| u64::from(self.by_status[usize::from(status_code(*s))]))
            .sum()
    }

    /// Deployments of the bucket at any status.
    pub fn live(&self) -> u64 {
        self.by_status.iter().map(|n| u64::from(*n)).sum()
    }
}

/// What one set of counts and buckets covers: one app's deployments, or every app's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CountScope {
    App(AppId),
    /// Every deployment of every app (one `0x1B` counts record and its buckets).
    All,
}

/// The second byte of a `0x1B` key: the counts record, or a bucket.
const ALL_COUNTS_RECORD: u8 = 0;
const ALL_COUNTS_BUCKET: u8 = 1;

impl CountScope {
    /// The key of the scope's counts record.
    pub fn counts_key(self) -> Vec<u8> {
        match self {
            CountScope::App(app) => app_counts_key(app),
            CountScope::All => vec![TAG_ALL_COUNTS, ALL_COUNTS_RECORD],
        }
    }

    /// The key of the scope's bucket whose first id is `first`.
    pub fn bucket_key(self, first: DeploymentId) -> Vec<u8> {
        match self {
            CountScope::App(app) => count_bucket_key(app, first),
            CountScope::All => {
                let mut key = self.buckets_prefix();
                key.extend_from_slice(first.as_bytes());
                key
            }
        }
    }

    /// The prefix of every bucket key of the scope (each ends with the bucket's first id).
    pub fn buckets_prefix(self) -> Vec<u8> {
        match self {
            CountScope::App(app) => count_buckets_prefix(app),
            CountScope::All => vec![TAG_ALL_COUNTS, ALL_COUNTS_BUCKET],
        }
    }
}

impl std::fmt::Display for CountScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CountScope::App(app) => write!(f, "app {app}"),
            CountScope::All => f.write_str("every app"),
        }
    }
}

pub fn app_counts_key(app: AppId) -> Vec<u8> {
    key(TAG_APP_COUNTS, &[app.as_bytes()])
}

/// The key of `app`'s bucket whose first id is `first`.
pub fn count_bucket_key(app: AppId, first: DeploymentId) -> Vec<u8> {
    key(TAG_COUNT_BUCKET, &[app.as_bytes(), first.as_bytes()])
}

pub fn count_buckets_prefix(app: AppId) -> Vec<u8> {
    key(TAG_COUNT_BUCKET, &[app.as_bytes()])
}

pub fn encode_app_counts(counts: &StoredAppCounts) -> Vec<u8> {
    encode(counts)
}

pub fn decode_app_counts(bytes: &[u8]) -> Result<StoredAppCounts, CodecError> {
    decode(bytes)
}

pub fn encode_bucket(bucket: &StoredBucket) -> Vec<u8> {
    encode(bucket)
}

pub fn decode_bucket(bytes: &[u8]) -> Result<StoredBucket, CodecError> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_count_bytes() {
        let mut counts = StoredAppCounts::default();
        counts.by_status[4] = 3;
        counts.newest = Some([7; 16]);
        let bytes = encode_app_counts(&counts);
        let mut expected = vec![super::super::FORMAT_V1];
        for slot in 0..STATUS_SLOTS {
            expected.extend(if slot == 4 { 3u64 } else { 0 }.to_le_bytes());
        }
        expected.push(1);
        expected.extend([7u8; 16]);
        expected.push(0);
        assert_eq!(bytes, expected);
        assert_eq!(decode_app_counts(&bytes).expect("decode"), counts);
        assert_eq!(counts.of(&[Status::Success, Status::Queued]), 3);

        let mut bucket = StoredBucket::default();
        bucket.by_status[0] = 2;
        bucket.by_status[9] = 1;
        let bytes = encode_bucket(&bucket);
        assert_eq!(bytes.len(), 1 + 4 * STATUS_SLOTS);
        assert_eq!(decode_bucket(&bytes).expect("decode"), bucket);
        assert_eq!(bucket.live(), 3);
        assert_eq!(bucket.of(&[Status::HookError]), 1);
        assert!(decode_bucket(&[9]).is_err());
    }

    #[test]
    fn bucket_keys_sort_by_app_then_first_id() {
        let app = AppId::from_bytes([1; 16]);
        let key = count_bucket_key(app, DeploymentId::from_bytes([2; 16]));
        assert_eq!(key[0], TAG_COUNT_BUCKET);
        assert!(key.starts_with(&count_buckets_prefix(app)));
        assert!(key < count_bucket_key(app, DeploymentId::from_bytes([3; 16])));
        assert_eq!(app_counts_key(app)[1..], [1; 16]);
    }

    #[test]
    fn every_apps_counts_record_sorts_before_its_buckets_which_sort_by_first_id() {
        let all = CountScope::All;
        let (low, high) = (
            DeploymentId::from_bytes([2; 16]),
            DeploymentId::from_bytes([3; 16]),
        );
        assert_eq!(all.counts_key(), [TAG_ALL_COUNTS, 0]);
        assert!(all.counts_key() < all.bucket_key(low));
        assert!(all.bucket_key(low) < all.bucket_key(high));
        assert!(all.bucket_key(low).starts_with(&all.buckets_prefix()));
        assert!(!all.counts_key().starts_with(&all.buckets_prefix()));
        let app = CountScope::App(AppId::from_bytes([1; 16]));
        assert_eq!(
            app.bucket_key(low),
            count_bucket_key(AppId::from_bytes([1; 16]), low)
        );
    }
}
