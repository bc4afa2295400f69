//! The deployment counts (`codec` tags `0x19`, `0x1A`, and every app's together under `0x1B`)
//! as a whole: their build from the status index, for a store written before they existed (once, at open) or by `deployd check --repair`,
//! and their check against that index (`deployd check`). The writer keeps them in step with
//! every write afterwards (`writer::counts`) and the listing reads them (`index`); this module
//! never runs alongside the writer: it is called before the writer starts, or offline.
//!
//! What the counts promise, and what [`verify`] checks, for each app and for every app at once
//! ([`CountScope::All`], over the whole status index): the record holds, per status, the
//! number of its entries in the status index; its buckets are named by their first id, a bucket
//! counts the entries whose ids are at or after its first id and before the next bucket's, no
//! entry lies before the first bucket, and every bucket counts at least one deployment.

use super::codec::{self, CountScope, StoredAppCounts, StoredBucket};
use super::engine::{prefix_end, BatchOp, Engine};
use super::StoreError;
use crate::model::{AppId, DeploymentId};

/// Deployments per bucket when buckets are built in one go, and the size at which the newest
/// bucket is closed and the next deployment opens a new one. A deep page reads one bucket
/// record per 1024 deployments it skips, then walks at most this many index keys: 1024 keeps
/// both small (~100 records and ~1,000 keys for page 5,000 of 100,000). The crate's own unit
/// tests use 4, so that a few dozen deployments span many buckets.
pub const BUCKET_SIZE: u64 = if cfg!(test) { 4 } else { 1024 };

/// The meta record saying the counts cover every deployment, every app's counts (`0x1B`)
/// included (written by the build). A store with only `counts-v1` (before `0x1B`) is rebuilt.
const COUNTS_META: &str = "counts-v2";

/// Builds the counts if the store has none yet (a data directory from before them): once; the
/// meta record then says they are complete. Runs at open, before the writer takes commands,
/// after the status index is complete.
pub(crate) fn ensure_built(engine: &dyn Engine) -> Result<(), StoreError> {
    if engine.get(&codec::meta_key(COUNTS_META))?.is_some() {
        return Ok(());
    }
    rebuild(engine)
}

/// Throws every count record away and builds them again from the status index (`0x10`):
/// per app and for every app at once, buckets of [`BUCKET_SIZE`] consecutive deployments in id
/// order. Only with no writer running (at open, `deployd check --repair`, benches that lay out a
/// store by hand). Holds every deployment's id and status code in memory (17 bytes each).
pub fn rebuild(engine: &dyn Engine) -> Result<(), StoreError> {
    let mut ops = Vec::new();
    for tag in [
        codec::TAG_APP_COUNTS,
        codec::TAG_COUNT_BUCKET,
        codec::TAG_ALL_COUNTS,
    ] {
        for entry in engine.range(&[tag], &prefix_end(&[tag]), false) {
            ops.push(BatchOp::Delete(entry?.0));
        }
    }
    let mut every = Vec::new();
    let mut lay_out = |scope: CountScope, entries: &[([u8; 16], u8)]| {
        let (counts, buckets) = build(entries);
        ops.push(put(scope.counts_key(), codec::encode_app_counts(&counts)));
        for (first, bucket) in buckets {
            ops.push(put(
                scope.bucket_key(DeploymentId::from_bytes(first)),
                codec::encode_bucket(&bucket),
            ));
        }
    };
    for_each_app(engine, |app, entries| {
        lay_out(CountScope::App(app), entries);
        every.extend_from_slice(entries);
        Ok(())
    })?;
    every.sort_unstable();
    lay_out(CountScope::All, &every);
    ops.push(put(codec::meta_key(COUNTS_META), vec![1]));
    engine.apply(ops)?;
    engine.sync()?;
    Ok(())
}

/// Checks the stored counts against the status index; one line per app whose counts are out
/// of step (empty: all in step).
pub fn verify(engine: &dyn Engine) -> Result<Vec<String>, StoreError> {
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    let mut every = Vec::new();
    for_each_app(engine, |app, entries| {
        seen.push(app);
        every.extend_from_slice(entries);
        if let Some(problem) = verify_scope(engine, CountScope::App(app), entries)? {
            problems.push(format!("deployment counts of app {app}: {problem}"));
        }
        Ok(())
    })?;
    every.sort_unstable();
    if let Some(problem) = verify_scope(engine, CountScope::All, &every)? {
        problems.push(format!("deployment counts of every app: {problem}"));
    }
    // Counts of an app with no index entry left must be gone (or count nothing).
    let prefix = [codec::TAG_APP_COUNTS];
    for entry in engine.range(&prefix, &prefix_end(&prefix), false) {
        let (key, value) = entry?;
        let app = AppId::from_bytes(codec::trailing_id(&key)?);
        if seen.contains(&app) {
            continue;
        }
        match codec::decode_app_counts(&value) {
            Ok(counts) if counts.total() == 0 => {}
            Ok(counts) => problems.push(format!(
                "deployment counts of app {app}: {} counted, none in the status index",
                counts.total()
            )),
            Err(err) => problems.push(format!(
                "deployment counts of app {app}: record does not decode: {err}"
            )),
        }
    }
    Ok(problems)
}

/// The counts of one app's `(id, status code)` entries, sorted by id: in buckets of
/// [`BUCKET_SIZE`].
fn build(entries: &[([u8; 16], u8)]) -> (StoredAppCounts, Vec<([u8; 16], StoredBucket)>) {
    let mut counts = StoredAppCounts::default();
    let mut buckets = Vec::new();
    for chunk in entries.chunks(BUCKET_SIZE as usize) {
        let mut bucket = StoredBucket::default();
        for (_, code) in chunk {
            bucket.by_status[usize::from(*code)] += 1;
            counts.by_status[usize::from(*code)] += 1;
        }
        buckets.push((chunk[0].0, bucket));
    }
    counts.newest = entries.last().map(|(id, _)| *id);
    counts.newest_bucket = buckets.last().map(|(first, _)| *first);
    (counts, buckets)
}

fn verify_scope(
    engine: &dyn Engine,
    scope: CountScope,
    entries: &[([u8; 16], u8)],
) -> Result<Option<String>, StoreError> {
    let Some(value) = engine.get(&scope.counts_key())? else {
        if entries.is_empty() && scope == CountScope::All {
            // A store that never had a deployment: nothing to count yet.
            return Ok(None);
        }
        return Ok(Some("no counts record".into()));
    };
    let counts = match codec::decode_app_counts(&value) {
        Ok(counts) => counts,
        Err(err) => return Ok(Some(format!("record does not decode: {err}"))),
    };
    let (expected, _) = build(entries);
    if counts.by_status != expected.by_status {
        return Ok(Some(format!(
            "per status {:?}, the status index holds {:?}",
            counts.by_status, expected.by_status
        )));
    }
    if counts.newest < expected.newest {
        return Ok(Some(
            "its newest id is older than a deployment it counts".into(),
        ));
    }
    let prefix = scope.buckets_prefix();
    let mut buckets = Vec::new();
    for entry in engine.range(&prefix, &prefix_end(&prefix), false) {
        let (key, value) = entry?;
        match codec::decode_bucket(&value) {
            Ok(bucket) => buckets.push((codec::trailing_id(&key)?, bucket)),
            Err(err) => return Ok(Some(format!("a bucket does not decode: {err}"))),
        }
    }
    if let (Some(newest), Some((last, _))) = (counts.newest_bucket, buckets.last()) {
        if buckets.iter().any(|(first, _)| *first == newest) && newest != *last {
            return Ok(Some("its newest bucket is not the last one".into()));
        }
    }
    let mut rest = entries;
    if rest
        .first()
        .zip(buckets.first())
        .is_some_and(|((id, _), (first, _))| id < first)
    {
        return Ok(Some("deployments older than its first bucket".into()));
    }
    for (i, (first, bucket)) in buckets.iter().enumerate() {
        let end = buckets.get(i + 1).map(|(next, _)| *next);
        let inside = rest
            .iter()
            .take_while(|(id, _)| end.is_none_or(|end| *id < end))
            .count();
        let mut found = StoredBucket::default();
        for (_, code) in &rest[..inside] {
            found.by_status[usize::from(*code)] += 1;
        }
        rest = &rest[inside..];
        if found != *bucket || bucket.live() == 0 {
            return Ok(Some(format!(
                "the bucket from {} counts {:?}, its range holds {:?}",
                DeploymentId::from_bytes(*first),
                bucket.by_status,
                found.by_status
            )));
        }
    }
    if buckets.is_empty() && !entries.is_empty() {
        return Ok(Some("no buckets".into()));
    }
    Ok(None)
}

/// Calls `each` with every app that has status index entries and its entries as
/// `(id, status code)`, sorted by id; one app in memory at a time.
fn for_each_app(
    engine: &dyn Engine,
    mut each: impl FnMut(AppId, &[([u8; 16], u8)]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let prefix = [codec::TAG_APP_STATUS_INDEX];
    let mut current: Option<AppId> = None;
    let mut entries: Vec<([u8; 16], u8)> = Vec::new();
    for entry in engine.range(&prefix, &prefix_end(&prefix), false) {
        let (key, _) = entry?;
        let (app, code, id) = split_status_key(&key)?;
        if current != Some(app) {
            if let Some(done) = current.replace(app) {
                entries.sort_unstable();
                each(done, &entries)?;
                entries.clear();
            }
        }
        entries.push((id, code));
    }
    if let Some(done) = current {
        entries.sort_unstable();
        each(done, &entries)?;
    }
    Ok(())
}

/// The app, status code and deployment id of a status index key (tag, app, code, id).
fn split_status_key(key: &[u8]) -> Result<(AppId, u8, [u8; 16]), StoreError> {
    let corrupt = || StoreError::from(codec::CodecError::Corrupt("status index key"));
    if key.len() != 34 {
        return Err(corrupt());
    }
    let app: [u8; 16] = key[1..17].try_into().map_err(|_| corrupt())?;
    let code = key[17];
    if usize::from(code) >= codec::STATUS_SLOTS {
        return Err(corrupt());
    }
    Ok((AppId::from_bytes(app), code, codec::trailing_id(key)?))
}

fn put(key: Vec<u8>, value: Vec<u8>) -> BatchOp {
    BatchOp::Put(key, bytes::Bytes::from(value))
}
