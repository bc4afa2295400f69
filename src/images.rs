//! Kept images (`DATA/images`): where a deployment's image lives, which deployments can be
//! rolled back to, and which images `[retention] keep_images` prunes.
//!
//! A deployment whose built-in push packed an image (or whose custom push wrote one at
//! `DEPLOYD_IMAGE_PATH`) gets an image record (tag `0x0F`, `store::codec::image`) from the
//! writer; the file is `<deployment id>.tar.gz`. A rollback's file is a hard link to its
//! target's, made by its executor (never a re-pack), so every kept image has its own file and
//! the file system counts the references. A deployment is a rollback target while it is
//! `success` and its record exists.
//!
//! This module reads the store and decides; it never writes the store (the writer does,
//! `store::writer::images`) and never removes a file (`crate::retention` does, record first).

use std::path::{Path, PathBuf};

use crate::model::{AppId, DeploymentId};
use crate::retention::{PruneError, Pruner};
use crate::status::Status;
use crate::store::codec::{self, ImageRecord};
use crate::store::engine::prefix_end;
use crate::store::{Store, StoreError};

/// The images directory's name in the data directory.
pub const DIR: &str = "images";

/// `[retention] keep_images` by default: the last five successful deployments can be rolled
/// back to, which covers "the version before the one that broke" with room to spare, at five
/// images' disk per app.
pub const DEFAULT_KEEP_IMAGES: u64 = 5;

/// The name of a deployment's image file in the images directory.
pub fn file_name(deployment: DeploymentId) -> String {
    format!("{deployment}.tar.gz")
}

/// A deployment's image file.
pub fn path(image_dir: &Path, deployment: DeploymentId) -> PathBuf {
    image_dir.join(file_name(deployment))
}

/// A deployment's image record, if it has one.
pub fn image(store: &Store, deployment: DeploymentId) -> Result<Option<ImageRecord>, StoreError> {
    match store.engine().get(&codec::image_key(deployment))? {
        Some(bytes) => Ok(Some(codec::decode_image(&bytes)?)),
        None => Ok(None),
    }
}

/// Every image record, by deployment.
pub fn all(store: &Store) -> Result<Vec<(DeploymentId, ImageRecord)>, StoreError> {
    let prefix = codec::images_prefix();
    let mut out = Vec::new();
    for entry in store.engine().range(&prefix, &prefix_end(&prefix), false) {
        let (key, value) = entry?;
        let id = DeploymentId::from_bytes(codec::trailing_id(&key)?);
        out.push((id, codec::decode_image(&value)?));
    }
    Ok(out)
}

/// The deployment a rollback deployment rolls back to (`None`: not a rollback).
pub fn rollback_of(
    store: &Store,
    deployment: DeploymentId,
) -> Result<Option<DeploymentId>, StoreError> {
    Ok(image(store, deployment)?.and_then(|image| image.rollback_of))
}

/// What an image's deployment is, for the retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// `success`: a rollback target, counted by `keep_images`.
    Success,
    /// Not finished yet (pushing, or a rollback waiting to link): never pruned here.
    Unfinished,
    /// Ended otherwise, or pruned, or gone with its app: not a target, pruned (the writer
    /// still keeps it while an unfinished rollback references it).
    NotTarget,
}

/// The keep_images policy, pure: of `images` (deployment ids, which rise in creation order,
/// and what each is), the ones to prune, keeping the newest `keep` successful ones (0: all) and
/// always `current`, the app's latest successful deployment.
pub fn choose(
    images: &[(DeploymentId, Holder)],
    current: Option<DeploymentId>,
    keep: u64,
) -> Vec<DeploymentId> {
    let mut successes: Vec<DeploymentId> = images
        .iter()
        .filter(|(_, holder)| *holder == Holder::Success)
        .map(|(id, _)| *id)
        .collect();
    successes.sort_unstable_by(|a, b| b.cmp(a));
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let mut doomed: Vec<DeploymentId> = images
        .iter()
        .filter(|(_, holder)| *holder == Holder::NotTarget)
        .map(|(id, _)| *id)
        .collect();
    if keep > 0 {
        doomed.extend(successes.into_iter().skip(keep));
    }
    doomed.retain(|id| Some(*id) != current);
    doomed
}

/// The images of `app` the policy prunes (see [`choose`]); the writer checks references.
pub fn to_prune(store: &Store, app: AppId, keep: u64) -> Result<Vec<DeploymentId>, StoreError> {
    let mut images = Vec::new();
    for (id, record) in all(store)? {
        if record.app != app {
            continue;
        }
        let holder = match store.deployment(id)? {
            Some(d) if d.status == Status::Success => Holder::Success,
            Some(d) if !d.status.is_terminal() => Holder::Unfinished,
            _ => Holder::NotTarget,
        };
        images.push((id, holder));
    }
    let current = store
        .app(app)?
        .and_then(|a| a.last_deployment)
        .map(|last| last.id);
    Ok(choose(&images, current, keep))
}

/// Prunes the images of `apps` the policy says (`[retention] keep_images`; 0: none by count,
/// but images that are not targets still go): the records first, through the writer, then
/// their files. Returns how many went.
pub async fn prune(pruner: &Pruner, apps: Vec<AppId>) -> Result<usize, PruneError> {
    let keep = pruner.config.keep_images;
    let mut total = 0;
    for app in apps {
        if pruner.stop.is_cancelled() {
            break;
        }
        let store = pruner.store.clone();
        let doomed = tokio::task::spawn_blocking(move || to_prune(&store, app, keep)).await??;
        if doomed.is_empty() {
            continue;
        }
        let pruned = pruner.writer.prune_images(doomed).await?;
        total += pruned.len();
        let dir = pruner.data_dir.join(DIR);
        let store = pruner.store.clone();
        tokio::task::spawn_blocking(move || {
            for id in pruned {
                remove_file(&path(&dir, id));
                crate::cluster::files::forget(&store, &path(&dir, id));
            }
        })
        .await?;
    }
    Ok(total)
}

fn remove_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(path = %path.display(), error = %err, "cannot remove an image"),
    }
}

/// The apps that have image records (a full pass also covers images of deleted apps' ids).
pub fn apps(store: &Store) -> Result<Vec<AppId>, StoreError> {
    let mut apps: Vec<AppId> = all(store)?
        .into_iter()
        .map(|(_, image)| image.app)
        .collect();
    apps.sort_unstable();
    apps.dedup();
    Ok(apps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DeploymentId {
        DeploymentId::from_bytes([n; 16])
    }

    #[test]
    fn keep_images_keeps_the_newest_successful_ones() {
        let images: Vec<_> = (1..=7).map(|n| (id(n), Holder::Success)).collect();
        let mut doomed = choose(&images, Some(id(7)), 5);
        doomed.sort();
        assert_eq!(doomed, vec![id(1), id(2)]);
    }

    #[test]
    fn keep_images_zero_keeps_every_successful_one() {
        let images: Vec<_> = (1..=7).map(|n| (id(n), Holder::Success)).collect();
        assert!(choose(&images, Some(id(7)), 0).is_empty());
    }

    #[test]
    fn the_current_deployments_image_is_never_pruned_even_beyond_the_kept_ones() {
        let images = vec![
            (id(2), Holder::Success),
            (id(3), Holder::Success),
            (id(4), Holder::Success),
        ];
        let mut doomed = choose(&images, Some(id(2)), 1);
        doomed.sort();
        assert_eq!(doomed, vec![id(3)]);
    }

    #[test]
    fn unfinished_holders_are_never_pruned_and_failed_ones_always_are() {
        let images = vec![
            (id(1), Holder::NotTarget),
            (id(2), Holder::Unfinished),
            (id(3), Holder::Success),
        ];
        assert_eq!(choose(&images, Some(id(3)), 1), vec![id(1)]);
        assert_eq!(choose(&images, Some(id(3)), 0), vec![id(1)]);
    }

    #[test]
    fn image_files_are_named_after_their_deployment() {
        let d = id(9);
        assert_eq!(
            path(Path::new("/data/images"), d),
            PathBuf::from(format!("/data/images/{d}.tar.gz"))
        );
    }
}
