//! Retention (`[retention]`, DESIGN.md "Retention"): which finished deployments, uploaded
//! sources and files to remove, when, and the removal of the files the writer does not own.
//!
//! - Policy: per app, the newest `keep_deployments` finished deployments are kept, and of
//!   those, the ones that ended more than `max_age_days` ago are pruned too (0: no limit).
//!   Unfinished deployments are never pruned, nor counted. Uploaded sources go once their URL
//!   has expired and no unfinished deployment names them (the writer checks the latter).
//! - Scheduling: a pass over the apps whose deployment just ended runs after each end (the
//!   writer's publisher, [`Notifier`], says so once the end is committed); a full pass (every
//!   app, expired sources, orphan files) runs at startup and every `prune_interval_secs`.
//! - Removal: the writer prunes (record and index entries in one commit, then the log file:
//!   `store::writer`), in batches of [`PRUNE_BATCH`] so that ingest runs between them; then
//!   this module removes the deployment's other files. A crash in between leaves orphans: the
//!   next full pass removes every file no record owns (see [`OWNED_DIRS`]).
//!
//! This module decides and removes files; it never writes the store but through the writer, and
//! never touches a file of a deployment or app that still exists.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::hub::Hub;
use crate::model::{AppId, DeploymentId};
use crate::status::Status;
use crate::store::events::{Event, Publish};
use crate::store::writer::Writer;
use crate::store::{codec, Store, StoreError};

/// Deployments pruned per writer command: one commit stays small (a few thousand engine ops),
/// and every other writer command queued meanwhile is committed before the next batch.
pub const PRUNE_BATCH: usize = 256;

/// The data directories whose entries are named after the deployment or app owning them
/// (`<uuid>` or `<uuid>.<ext>` directly in the directory). An entry whose uuid is neither a
/// deployment, an app, a kept image nor an uploaded source is an orphan and is removed:
///
/// - `logs`: `<deployment id>.log` (`store::logs`);
/// - `work`: `<deployment id>/`, a running executor deployment's work directory;
/// - `images`: kept images, `<deployment id>…` (or `<app id>/…` per app);
/// - `cache`: the per-app build cache, `<app id>/`;
/// - `sources`: uploaded archives, `<source id>.tar.gz` (and `.partial` while uploading).
pub const OWNED_DIRS: [&str; 5] = ["logs", "work", "images", "cache", "sources"];

/// The directories where a pruned deployment may have files besides its log (which the writer
/// removes), named `<deployment id>…`.
const DEPLOYMENT_DIRS: [&str; 2] = ["work", "images"];

const SECONDS_PER_DAY: i64 = 24 * 60 * 60;

/// What wakes the retention task: deployments whose end was committed.
#[derive(Default)]
struct Wake {
    ended: Mutex<Vec<DeploymentId>>,
    full: std::sync::atomic::AtomicBool,
    notify: Notify,
}

/// The writer's publisher: the hub, plus a wake-up of retention after a deployment's end is
/// committed (the writer publishes only what is durable).
pub struct Notifier {
    hub: Arc<Hub>,
    wake: Arc<Wake>,
}

impl Publish for Notifier {
    fn publish(&self, app: AppId, events: Vec<Event>) {
        Publish::publish(&*self.hub, app, events);
    }

    fn record_status(&self, id: DeploymentId, status: Status) {
        Publish::record_status(&*self.hub, id, status);
        if status.is_terminal() {
            self.wake
                .ended
                .lock()
                .expect("invariant: retention lock not poisoned")
                .push(id);
            self.wake.notify.notify_one();
        }
    }
}

/// The handle on the retention task: asks for passes.
#[derive(Clone)]
pub struct Retention {
    wake: Arc<Wake>,
}

impl Retention {
    /// A handle and the publisher to give the writer instead of the hub.
    pub fn new(hub: Arc<Hub>) -> (Retention, Arc<Notifier>) {
        let wake = Arc::new(Wake::default());
        let notifier = Arc::new(Notifier {
            hub,
            wake: wake.clone(),
        });
        (Retention { wake }, notifier)
    }

    /// Asks for a full pass soon (after an app was deleted: its files go).
    pub fn full_pass_soon(&self) {
        self.wake
            .full
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify.notify_one();
    }

    /// Runs the retention task until the pruner's `stop`: a full pass now, then as the module
    /// doc says. Await the handle before stopping the writer (the task holds a writer handle).
    pub fn spawn(&self, pruner: Pruner) -> tokio::task::JoinHandle<()> {
        let wake = self.wake.clone();
        tokio::spawn(async move {
            let interval = pruner.config.prune_interval;
            let mut ticker = (!interval.is_zero()).then(|| {
                let mut ticker =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker
            });
            // The startup pass removes what a crash left between a commit and its files.
            let mut full_due = true;
            loop {
                let ended = std::mem::take(
                    &mut *wake
                        .ended
                        .lock()
                        .expect("invariant: retention lock not poisoned"),
                );
                let full = full_due || wake.full.swap(false, std::sync::atomic::Ordering::SeqCst);
                full_due = false;
                let result = if full {
                    pruner.full_pass().await.map(drop)
                } else if !ended.is_empty() {
                    pruner.apps_pass_for(ended).await.map(drop)
                } else {
                    Ok(())
                };
                if let Err(err) = result {
                    tracing::warn!(error = %err, "retention pass failed; retrying at the next one");
                }
                tokio::select! {
                    () = wake.notify.notified() => {}
                    () = next_tick(&mut ticker) => full_due = true,
                    () = pruner.stop.cancelled() => return,
                }
            }
        })
    }
}

/// The next tick, or never without a timer.
async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] crate::store::writer::WriteError),
    #[error("background task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What a pass needs: the store to read, the writer to prune, the data directory, the policy.
pub struct Pruner {
    pub store: Store,
    pub writer: Writer,
    pub data_dir: PathBuf,
    pub config: RetentionConfig,
    /// Shutdown: the task returns, and a pass stops between batches.
    pub stop: CancellationToken,
}

/// What one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub deployments: usize,
    pub sources: usize,
    pub orphans: usize,
    /// Kept images pruned (`[retention] keep_images`, `crate::images`).
    pub images: usize,
}

impl Pruner {
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, PruneError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
    }

    /// Every app, expired sources, then orphan files.
    pub async fn full_pass(&self) -> Result<Pruned, PruneError> {
        let apps = self.read(|store| store.all_apps()).await?;
        let apps: Vec<AppId> = apps.into_iter().map(|a| a.id).collect();
        let mut pruned = Pruned {
            deployments: self.apps_pass(apps.clone()).await?,
            ..Pruned::default()
        };
        // Images of apps deleted before their records went are covered too.
        let mut image_apps = self.read(crate::images::apps).await?;
        image_apps.extend(apps);
        image_apps.sort_unstable();
        image_apps.dedup();
        pruned.images = crate::images::prune(self, image_apps).await?;
        pruned.sources = self.expired_sources().await?;
        let data_dir = self.data_dir.clone();
        let store = self.store.clone();
        pruned.orphans =
            tokio::task::spawn_blocking(move || remove_orphans(&store, &data_dir)).await??;
        Ok(pruned)
    }

    /// The apps of these ended deployments.
    async fn apps_pass_for(&self, ended: Vec<DeploymentId>) -> Result<Pruned, PruneError> {
        let apps = self
            .read(move |store| {
                let mut apps = Vec::new();
                for id in ended {
                    if let Some(d) = store.deployment(id)? {
                        if !apps.contains(&d.app_id) {
                            apps.push(d.app_id);
                        }
                    }
                }
                Ok(apps)
            })
            .await?;
        Ok(Pruned {
            deployments: self.apps_pass(apps.clone()).await?,
            images: crate::images::prune(self, apps).await?,
            ..Pruned::default()
        })
    }

    /// Prunes what the policy says of each app; returns how many deployments went.
    async fn apps_pass(&self, apps: Vec<AppId>) -> Result<usize, PruneError> {
        let config = self.config.clone();
        if config.keep_deployments == 0 && config.max_age_days == 0 {
            return Ok(0);
        }
        let mut total = 0;
        for app in apps {
            let now = OffsetDateTime::now_utc();
            let config = config.clone();
            let doomed = self
                .read(move |store| to_prune(store, app, &config, now))
                .await?;
            total += self.prune(doomed).await?;
        }
        Ok(total)
    }

    /// Prunes `ids` in batches, then removes their files the writer does not own.
    pub async fn prune(&self, ids: Vec<DeploymentId>) -> Result<usize, PruneError> {
        let mut total = 0;
        for batch in ids.chunks(PRUNE_BATCH) {
            if self.stop.is_cancelled() {
                break;
            }
            let pruned = self.writer.prune_deployments(batch.to_vec()).await?;
            total += pruned.len();
            let data_dir = self.data_dir.clone();
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                remove_deployment_files(&store, &data_dir, &pruned)
            })
            .await??;
        }
        Ok(total)
    }

    /// Deletes uploaded sources whose URL has expired (unless an unfinished deployment uses
    /// them), record first, then file.
    async fn expired_sources(&self) -> Result<usize, PruneError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let expired: Vec<uuid::Uuid> = self
            .read(move |store| {
                Ok(store
                    .all_sources()?
                    .into_iter()
                    .filter(|s| s.expires_at < now)
                    .map(|s| uuid::Uuid::from_bytes(s.id))
                    .collect())
            })
            .await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let deleted = self.writer.delete_sources(expired).await?;
        let dir = self.data_dir.join("sources");
        let count = deleted.len();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            for id in deleted {
                remove_entries(&dir, &HashSet::from([id]));
                crate::cluster::files::forget(&store, &dir.join(format!("{id}.tar.gz")));
            }
        })
        .await?;
        Ok(count)
    }
}

/// The finished deployments of `app` the policy prunes, oldest last.
pub fn to_prune(
    store: &Store,
    app: AppId,
    config: &RetentionConfig,
    now: OffsetDateTime,
) -> Result<Vec<DeploymentId>, StoreError> {
    let finished = store.finished_ids(app)?;
    let keep = usize::try_from(config.keep_deployments).unwrap_or(usize::MAX);
    let (kept, beyond) = if keep == 0 || keep >= finished.len() {
        (&finished[..], &finished[..0])
    } else {
        finished.split_at(keep)
    };
    let mut doomed: Vec<DeploymentId> = Vec::new();
    if config.max_age_days > 0 {
        let days = i64::try_from(config.max_age_days).unwrap_or(i64::MAX / SECONDS_PER_DAY);
        let cutoff = now - time::Duration::seconds(days.saturating_mul(SECONDS_PER_DAY));
        for id in kept {
            if let Some(d) = store.deployment(*id)? {
                if d.finished_at.is_some_and(|at| at < cutoff) {
                    doomed.push(*id);
                }
            }
        }
    }
    doomed.extend_from_slice(beyond);
    Ok(doomed)
}

/// The uuid an owned entry is named after (`<uuid>` or `<uuid>.<ext>`).
fn owner_of(name: &str) -> Option<uuid::Uuid> {
    name.get(..36).and_then(|head| head.parse().ok())
}

/// Removes the entries of `dir` named after one of `ids`.
fn remove_entries(dir: &Path, ids: &HashSet<uuid::Uuid>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(owner_of) else {
            continue;
        };
        if ids.contains(&id) {
            remove_path(&entry.path());
            removed += 1;
        }
    }
    removed
}

fn remove_path(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(path = %path.display(), error = %err, "cannot remove"),
    }
}

/// Removes what pruned deployments left outside their log files, except an image another
/// deployment still references (its image record, tag `0x0F`, outlives the deployment).
fn remove_deployment_files(
    store: &Store,
    data_dir: &Path,
    pruned: &[DeploymentId],
) -> Result<(), StoreError> {
    let mut ids = HashSet::new();
    for id in pruned {
        if !has_image_record(store, id.0)? {
            ids.insert(id.0);
        }
    }
    if !ids.is_empty() {
        for dir in DEPLOYMENT_DIRS {
            remove_entries(&data_dir.join(dir), &ids);
        }
        for id in &ids {
            let image = crate::images::path(&data_dir.join(crate::images::DIR), DeploymentId(*id));
            crate::cluster::files::forget(store, &image);
        }
    }
    Ok(())
}

fn has_image_record(store: &Store, id: uuid::Uuid) -> Result<bool, StoreError> {
    let key = [&[codec::TAG_IMAGE][..], id.as_bytes()].concat();
    Ok(store.engine().get(&key)?.is_some())
}

/// Whether a record owns files named after `id`.
fn is_owned(store: &Store, id: uuid::Uuid) -> Result<bool, StoreError> {
    Ok(store.deployment(DeploymentId(id))?.is_some()
        || store.app(AppId(id))?.is_some()
        || has_image_record(store, id)?
        || store.source(id)?.is_some())
}

/// Removes every entry of [`OWNED_DIRS`] that no record owns; returns how many. An image is
/// owned by its image record (a deployment that did not end `success`, or whose image was
/// pruned, keeps none), or by its deployment while that is unfinished.
pub fn remove_orphans(store: &Store, data_dir: &Path) -> Result<usize, StoreError> {
    let mut removed = 0;
    for dir in OWNED_DIRS {
        let Ok(entries) = std::fs::read_dir(data_dir.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(owner_of) else {
                continue;
            };
            let owned = if dir == crate::images::DIR {
                // An unfinished deployment's image may be on disk before its record (packed,
                // not yet recorded).
                has_image_record(store, id)?
                    || store
                        .deployment(DeploymentId(id))?
                        .is_some_and(|d| !d.status.is_terminal())
            } else {
                is_owned(store, id)?
            };
            if !owned {
                remove_path(&entry.path());
                crate::cluster::files::forget(store, &entry.path());
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;
