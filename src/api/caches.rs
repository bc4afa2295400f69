//! The apps' build caches: `DELETE /v1/apps/{app}/caches/deployment` (`scalingo
//! deployment-delete-cache`) and the removal of an app's cache with the app.
//!
//! The cache itself is a directory the built-in executor hands to every stage of an app's
//! deployments as `DEPLOYD_CACHE_DIR` (`PipelineConfig::app_cache_dir`: `DATA/cache/<app id>/`,
//! by id so that it survives a rename). This module only empties it; it never creates it and
//! never reads what is inside.
//!
//! Emptying is safe while a build runs: the directory is first renamed out of the way (atomic,
//! so the next deployment starts from an empty cache at once), then deleted in the background.
//! A build still writing into the old directory writes into the doomed copy, never into the
//! next deployment's cache.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::access::Caller;
use super::{ApiError, AppState};
use crate::model::AppId;

/// Name prefix of a cache directory renamed out of the way and not yet deleted. A crash between
/// the rename and the delete leaves one; the next reset of that app deletes it.
const DOOMED_PREFIX: &str = ".deleting-";

/// `DELETE /v1/apps/{app}/caches/deployment` → 204, also when the app has no cache yet. Any
/// caller who may deploy the app may reset its cache (limited collaborators included: it only
/// slows their next build down); the route needs a full token.
pub async fn reset_deployment_cache(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, _) = caller.app(&state, &app).await?;
    let cache_root = state.config.pipeline.cache_dir.clone();
    let app_id = app.id;
    let doomed = tokio::task::spawn_blocking(move || move_aside(&cache_root, app_id))
        .await
        .map_err(|e| ApiError::internal("resetting the build cache", e))?
        .map_err(|e| ApiError::internal("renaming the build cache away", e))?;
    // The rename emptied the cache; deleting the files may take long and need not be waited for.
    tokio::task::spawn_blocking(move || delete_all(&doomed));
    // Cluster mode: the other nodes' copies go too (a takeover must not bring it back).
    crate::cluster::files::delete_async(
        state.store.files().cloned(),
        crate::cluster::files::cache_name(app_id),
    )
    .await
    .map_err(|e| {
        ApiError::Unavailable(format!("cannot reset the cluster's copy of the cache: {e}"))
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes an app's cache (with any leftovers of earlier resets); errors are logged, since the
/// app itself is already gone.
pub(super) async fn remove_app_cache(state: &AppState, app: AppId) {
    let cache_root = state.config.pipeline.cache_dir.clone();
    let moved = tokio::task::spawn_blocking(move || {
        move_aside(&cache_root, app).map(|doomed| delete_all(&doomed))
    })
    .await;
    if let Ok(Err(err)) = moved {
        tracing::warn!(error = %err, app = %app, "could not remove the deleted app's build cache");
    }
    let name = crate::cluster::files::cache_name(app);
    if let Err(err) = crate::cluster::files::delete_async(state.store.files().cloned(), name).await
    {
        tracing::warn!(error = %err, app = %app, "could not remove the deleted app's build cache from the object store");
    }
}

/// Renames the app's cache to a fresh doomed name; returns every doomed directory of the app
/// (this one and the leftovers of interrupted resets), for [`delete_all`].
fn move_aside(cache_root: &Path, app: AppId) -> std::io::Result<Vec<PathBuf>> {
    let live = cache_root.join(app.to_string());
    let app_prefix = format!("{DOOMED_PREFIX}{app}-");
    let fresh = cache_root.join(format!("{app_prefix}{}", uuid::Uuid::now_v7()));
    match std::fs::rename(&live, &fresh) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let mut doomed = Vec::new();
    let entries = match std::fs::read_dir(cache_root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(doomed),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&app_prefix) {
            doomed.push(entry.path());
        }
    }
    Ok(doomed)
}

/// Deletes doomed cache directories. One already gone (a concurrent reset deleting it too) is
/// not an error; anything else is logged and left for the next reset.
fn delete_all(doomed: &[PathBuf]) {
    for dir in doomed {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(error = %err, dir = %dir.display(), "could not delete a build cache");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_empties_the_cache_and_sweeps_leftovers_of_that_app_only() {
        let root = tempfile::tempdir().unwrap();
        let app = AppId::generate();
        let other = AppId::generate();
        std::fs::create_dir_all(root.path().join(app.to_string()).join("deps")).unwrap();
        std::fs::write(root.path().join(app.to_string()).join("deps/x"), b"x").unwrap();
        let leftover = root.path().join(format!("{DOOMED_PREFIX}{app}-old"));
        std::fs::create_dir_all(&leftover).unwrap();
        let others = root.path().join(format!("{DOOMED_PREFIX}{other}-old"));
        std::fs::create_dir_all(&others).unwrap();
        std::fs::create_dir_all(root.path().join(other.to_string())).unwrap();

        let doomed = move_aside(root.path(), app).unwrap();
        assert_eq!(doomed.len(), 2, "{doomed:?}");
        assert!(!root.path().join(app.to_string()).exists());
        delete_all(&doomed);
        delete_all(&doomed);
        assert!(!leftover.exists());
        assert!(others.exists(), "another app's leftover is its own reset's");
        assert!(root.path().join(other.to_string()).exists());
        // Nothing to reset is not an error, nor is a missing cache root.
        assert!(move_aside(root.path(), app).unwrap().is_empty());
        assert!(move_aside(&root.path().join("none"), app)
            .unwrap()
            .is_empty());
    }
}
