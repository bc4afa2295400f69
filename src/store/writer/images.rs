//! The writer's side of kept images (tag `0x0F`, `crate::images`): recording an image when a
//! push keeps one, creating a rollback (the deployment and its image record in one commit),
//! dropping the records of deployments that do not end `success`, and pruning.
//!
//! Runs on the writer thread inside a group; it adds ops and never commits, and never touches
//! an image file (the executor makes and links them, `crate::retention` removes them after the
//! record is gone). Which images to prune is `crate::images`' decision; this module only
//! refuses to prune what must stay: the image of an unfinished deployment, one an unfinished
//! rollback still has to link, and the app's current (latest successful) deployment's.

use super::group::{put, Group, Outcome, WriterState};
use super::WriteError;
use crate::images;
use crate::model::{AppId, Deployment, DeploymentId, Driver, Pusher};
use crate::status::Status;
use crate::store::codec::{self, ImageRecord};
use crate::store::engine::BatchOp;

/// What [`WriterState::create_rollback`] refuses with, for the API to tell apart: the target is
/// not a deployment of the app (404), or it has no kept image (422).
pub const NO_IMAGE: &str = "image";

impl WriterState {
    /// Records that `deployment` (unfinished) kept an image of `bytes` at its image path, and
    /// its image size. A rollback keeps its record's target.
    pub(super) fn keep_image(
        &mut self,
        deployment: DeploymentId,
        bytes: u64,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        let existing = images::image(&self.store, deployment)?;
        let change = self
            .lifecycle
            .set_image_size(deployment, bytes)
            .map_err(|refusal| self.refused(deployment, refusal, None))?;
        let app = change.record().app_id;
        let record = ImageRecord {
            app,
            file: images::file_name(deployment),
            size: bytes,
            created_at: super::group::now(),
            rollback_of: existing.as_ref().and_then(|image| image.rollback_of),
            references: existing.map(|image| image.references).unwrap_or_default(),
        };
        group.ops.push(put(
            codec::image_key(deployment),
            codec::encode_image(&record),
        ));
        let mut outcome = Outcome::quiet(());
        self.stage(change, group, &mut outcome);
        Ok(outcome)
    }

    /// Creates a deployment of `app` rolling back to `target`: the target's `git_ref` and
    /// driver, an image record saying what it rolls back to, and the target's record naming it
    /// among its references, all in one commit. Refused with `NotFound("deployment")` when
    /// `target` is not a deployment of `app`, `NotFound(NO_IMAGE)` when it is not a target.
    pub(super) fn create_rollback(
        &mut self,
        app: AppId,
        target: DeploymentId,
        pusher: Pusher,
        group: &mut Group,
    ) -> Result<Outcome<Deployment>, WriteError> {
        let record = self
            .store
            .deployment(target)?
            .filter(|d| d.app_id == app)
            .ok_or(WriteError::NotFound("deployment"))?;
        let mut image = match images::image(&self.store, target)? {
            Some(image) if record.status == Status::Success => image,
            _ => return Err(WriteError::NotFound(NO_IMAGE)),
        };
        if !matches!(record.driver, Driver::Executor { .. }) {
            return Err(WriteError::NotFound(NO_IMAGE));
        }
        let outcome = self.create_deployment(app, record.git_ref, pusher, record.driver, group)?;
        let id = outcome.value.id;
        group.ops.push(put(
            codec::image_key(id),
            codec::encode_image(&ImageRecord {
                app,
                file: images::file_name(id),
                size: image.size,
                created_at: super::group::now(),
                rollback_of: Some(target),
                references: Vec::new(),
            }),
        ));
        let lifecycle = &self.lifecycle;
        image.references.retain(|r| lifecycle.get(*r).is_some());
        image.references.push(id);
        group
            .ops
            .push(put(codec::image_key(target), codec::encode_image(&image)));
        Ok(outcome)
    }

    /// A deployment ended (in this group): unless it is `success`, its image record goes (its
    /// file is removed by its executor, or by the next orphan sweep); a rollback no longer
    /// needs its target, so it leaves the target's references.
    pub(super) fn images_on_end(&mut self, record: &Deployment, group: &mut Group) {
        let own = match images::image(&self.store, record.id) {
            Ok(own) => own,
            Err(error) => {
                // A stale reference protects nothing once its rollback ended; the next prune
                // pass drops a record of a deployment that is not a target.
                tracing::warn!(deployment = %record.id, %error, "cannot read the image record");
                None
            }
        };
        if record.status != Status::Success {
            group.ops.push(BatchOp::Delete(codec::image_key(record.id)));
        }
        let Some(target) = own.and_then(|own| own.rollback_of) else {
            return;
        };
        if let Ok(Some(mut image)) = images::image(&self.store, target) {
            let lifecycle = &self.lifecycle;
            image
                .references
                .retain(|r| *r != record.id && lifecycle.get(*r).is_some());
            group
                .ops
                .push(put(codec::image_key(target), codec::encode_image(&image)));
        }
    }

    /// Deletes the image records of `ids`, except those that must stay (see the module doc).
    /// Answers the ids whose record went: their files may go once this is committed.
    pub(super) fn prune_images(
        &mut self,
        ids: &[DeploymentId],
        group: &mut Group,
    ) -> Result<Outcome<Vec<DeploymentId>>, WriteError> {
        let mut pruned = Vec::new();
        for &id in ids {
            if self.lifecycle.get(id).is_some() {
                continue;
            }
            let Some(image) = images::image(&self.store, id)? else {
                continue;
            };
            if image
                .references
                .iter()
                .any(|r| self.lifecycle.get(*r).is_some())
            {
                continue;
            }
            let current = self
                .store
                .app(image.app)?
                .and_then(|app| app.last_deployment)
                .map(|last| last.id);
            if current == Some(id) {
                continue;
            }
            group.ops.push(BatchOp::Delete(codec::image_key(id)));
            pruned.push(id);
        }
        Ok(Outcome::quiet(pruned))
    }

    /// Deletes the image records of a deleted app's deployments (their files go in the next
    /// orphan sweep, which the app's deletion asks for).
    pub(super) fn forget_images_of(&self, app: AppId, group: &mut Group) -> Result<(), WriteError> {
        for (id, image) in images::all(&self.store)? {
            if image.app == app {
                group.ops.push(BatchOp::Delete(codec::image_key(id)));
            }
        }
        Ok(())
    }
}

/// The op forgetting a pruned deployment's image record, unless an unfinished rollback still
/// has to link it (then the record outlives the deployment, its file stays, and the image
/// prune pass removes both once that rollback ended).
pub(super) fn forget_image(
    state: &WriterState,
    deployment: DeploymentId,
    group: &mut Group,
) -> Result<(), WriteError> {
    if let Some(image) = images::image(&state.store, deployment)? {
        if !image
            .references
            .iter()
            .any(|r| state.lifecycle.get(*r).is_some())
        {
            group
                .ops
                .push(BatchOp::Delete(codec::image_key(deployment)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::hub::Hub;
    use crate::images;
    use crate::model::{App, AppId, Driver, Pusher, UserId};
    use crate::status::Status;
    use crate::store::engine::MemoryEngine;
    use crate::store::logs::LogFiles;
    use crate::store::writer::{Target, WriteError, Writer, NO_IMAGE};
    use crate::store::Store;

    fn executor() -> Driver {
        Driver::Executor {
            source_url: "http://example.com/a.tar.gz".into(),
            postdeploy_hook: None,
        }
    }

    async fn app(writer: &Writer, name: &str) -> AppId {
        let now = time::OffsetDateTime::now_utc();
        let app = App {
            id: AppId::generate(),
            name: name.into(),
            owner: UserId::generate(),
            git_source: None,
            created_at: now,
            updated_at: now,
            last_deployment: None,
        };
        writer.create_app(app.clone()).await.expect("app");
        app.id
    }

    async fn walk(writer: &Writer, id: crate::model::DeploymentId, to: &[Status]) {
        for status in to {
            writer
                .transition(id, Target::Status(*status), None)
                .await
                .expect("transition");
        }
    }

    #[tokio::test]
    async fn images_are_kept_for_successes_only_referenced_by_rollbacks_and_pruned_but_the_current()
    {
        let scratch = tempfile::tempdir().expect("tempdir");
        let store = Store::new(
            Arc::new(MemoryEngine::default()),
            LogFiles::open(scratch.path()).expect("logs"),
        );
        let (writer, _, _thread) =
            Writer::start(store.clone(), Arc::new(Hub::default())).expect("start");
        let (web, other) = (app(&writer, "web").await, app(&writer, "other").await);
        let pusher = Pusher {
            id: UserId::generate(),
            username: "u".into(),
            email: "u@x".into(),
        };
        let create = |git_ref: &str| {
            writer.create_deployment(web, git_ref.into(), pusher.clone(), executor())
        };

        let good = create("v1").await.expect("create");
        writer.keep_image(good.id, 10).await.expect("keep");
        walk(
            &writer,
            good.id,
            &[Status::Pushing, Status::Starting, Status::Success],
        )
        .await;
        let stored = store.deployment(good.id).expect("read").expect("stored");
        assert!(stored.image_kept);
        assert_eq!(stored.image_size, 10);

        let bad = create("v2").await.expect("create");
        writer.keep_image(bad.id, 11).await.expect("keep");
        walk(&writer, bad.id, &[Status::Pushing, Status::Aborted]).await;
        assert!(images::image(&store, bad.id).expect("read").is_none());
        assert!(
            !store
                .deployment(bad.id)
                .expect("read")
                .expect("stored")
                .image_kept
        );

        let refused = writer.create_rollback(web, bad.id, pusher.clone()).await;
        assert!(
            matches!(refused, Err(WriteError::NotFound(NO_IMAGE))),
            "{refused:?}"
        );
        let refused = writer.create_rollback(other, good.id, pusher.clone()).await;
        assert!(
            matches!(refused, Err(WriteError::NotFound("deployment"))),
            "{refused:?}"
        );

        let rollback = writer
            .create_rollback(web, good.id, pusher.clone())
            .await
            .expect("rollback");
        assert_eq!(rollback.git_ref, "v1");
        assert_eq!(
            images::rollback_of(&store, rollback.id).expect("read"),
            Some(good.id)
        );
        let target = images::image(&store, good.id).expect("read").expect("kept");
        assert_eq!(target.references, vec![rollback.id]);
        // An unfinished rollback still has to link the target: it stays.
        assert!(writer
            .prune_images(vec![good.id])
            .await
            .expect("prune")
            .is_empty());

        writer.keep_image(rollback.id, 10).await.expect("keep");
        walk(
            &writer,
            rollback.id,
            &[Status::Pushing, Status::Starting, Status::Success],
        )
        .await;
        let target = images::image(&store, good.id).expect("read").expect("kept");
        assert!(target.references.is_empty());
        // The rollback is the app's current deployment: never pruned; the target may go now.
        let pruned = writer
            .prune_images(vec![good.id, rollback.id])
            .await
            .expect("prune");
        assert_eq!(pruned, vec![good.id]);
        assert!(
            !store
                .deployment(good.id)
                .expect("read")
                .expect("stored")
                .image_kept
        );
        assert!(
            store
                .deployment(rollback.id)
                .expect("read")
                .expect("stored")
                .image_kept
        );

        writer.delete_app(web).await.expect("delete");
        assert!(images::all(&store).expect("read").is_empty());
    }
}
