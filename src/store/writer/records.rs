//! Writes of the named records: users and their tokens (and token scopes), apps (and
//! everything under an app when it is deleted, its name when it is renamed, what it says about
//! its last successful deployment), collaborators' roles. Each checks uniqueness or existence against committed state, which holds
//! because these commands are committed alone (see `Command::commits_alone`).
//!
//! Runs on the writer thread inside a group; it adds ops to the group and never commits.

use super::counts::CountChange;
use super::group::{put, Group, Outcome, WriterState};
use super::WriteError;
use crate::model::{
    App, AppId, Deployment, DeploymentId, Grant, LastDeployment, Token, TokenId, User, UserId,
};
use crate::status::Status;
use crate::store::codec;
use crate::store::engine::{prefix_end, BatchOp};
use crate::store::StoreError;

impl WriterState {
    pub(super) fn create_user(
        &mut self,
        user: &User,
        token: &Token,
        token_hash: &[u8; 32],
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        if self.store.user_by_username(&user.username)?.is_some() {
            return Err(WriteError::UsernameTaken(user.username.clone()));
        }
        if self.store.user_by_email(&user.email)?.is_some() {
            return Err(WriteError::EmailTaken(user.email.clone()));
        }
        group
            .ops
            .push(put(codec::user_key(user.id), codec::encode_user(user)));
        group.ops.push(put(
            codec::username_key(&user.username),
            user.id.as_bytes().to_vec(),
        ));
        group.ops.push(put(
            codec::email_key(&user.email),
            user.id.as_bytes().to_vec(),
        ));
        group.ops.push(put(
            codec::token_key(token_hash),
            codec::encode_token(token),
        ));
        group
            .ops
            .push(put(codec::token_id_key(token.id), token_hash.to_vec()));
        Ok(Outcome::quiet(()))
    }

    pub(super) fn revoke_token(
        &mut self,
        user: UserId,
        token: TokenId,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        let hash = self
            .store
            .token_hash(token)?
            .ok_or(WriteError::NotFound("token"))?;
        let record = self
            .store
            .token_by_hash(&hash)?
            .ok_or(WriteError::NotFound("token"))?;
        if record.user_id != user {
            return Err(WriteError::NotFound("token"));
        }
        group.ops.push(BatchOp::Delete(codec::token_key(&hash)));
        group.ops.push(BatchOp::Delete(codec::token_id_key(token)));
        group
            .ops
            .push(BatchOp::Delete(codec::token_scope_key(token)));
        Ok(Outcome::quiet(()))
    }

    pub(super) fn create_app(
        &mut self,
        app: &App,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        if self.store.app_by_name(&app.name)?.is_some() {
            return Err(WriteError::AppNameTaken(app.name.clone()));
        }
        group
            .ops
            .push(put(codec::app_key(app.id), codec::encode_app(app)));
        group.ops.push(put(
            codec::app_name_key(&app.name),
            app.id.as_bytes().to_vec(),
        ));
        self.record_new_app(app, group)?;
        Ok(Outcome::quiet(()))
    }

    pub(super) fn delete_app(
        &mut self,
        app_id: AppId,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        let app = self.store.app(app_id)?.ok_or(WriteError::NotFound("app"))?;
        // Read before the deletes below are staged; the event outlives the app in `/v1/events`.
        self.record_by(
            app_id,
            app.owner,
            "delete_app",
            serde_json::json!({}),
            false,
            group,
        )?;
        group.ops.push(BatchOp::Delete(codec::app_key(app_id)));
        group
            .ops
            .push(BatchOp::Delete(codec::app_name_key(&app.name)));
        let engine = self.engine.clone();
        let delete_prefix = |prefix: Vec<u8>, ops: &mut Vec<BatchOp>| -> Result<(), WriteError> {
            for entry in engine.range(&prefix, &prefix_end(&prefix), false) {
                let (key, _) = entry.map_err(StoreError::from)?;
                ops.push(BatchOp::Delete(key));
            }
            Ok(())
        };
        delete_prefix(codec::collaborators_prefix(app_id), &mut group.ops)?;
        self.forget_images_of(app_id, group)?;
        self.delete_timeline_of(app_id, &mut group.ops)?;
        let ids = self.store.deployment_ids(app_id, 0, u64::MAX)?;
        delete_prefix(codec::app_deployments_prefix(app_id), &mut group.ops)?;
        delete_prefix(codec::app_statuses_prefix(app_id), &mut group.ops)?;
        group.counts.push(CountChange::AppDeleted { app: app_id });
        for id in ids {
            group.ops.push(BatchOp::Delete(codec::deployment_key(id)));
            group.ops.push(BatchOp::Delete(codec::unfinished_key(id)));
            group
                .ops
                .push(BatchOp::Delete(codec::cancel_request_key(id)));
            delete_prefix(codec::segments_prefix(id), &mut group.ops)?;
            group.removals.push(id);
            self.log_ends.remove(&id);
        }
        let removed = self.lifecycle.remove_app(app_id);
        // A build slot the app's running deployment held is free again: the oldest waiting
        // deployment of another app takes it in this commit, not at some later deployment's
        // end. (An app runs one deployment at a time, so this frees one slot at most.)
        let promoted = self.lifecycle.promote_waiting(super::group::now());
        let mut outcome = Outcome::quiet(());
        // Their sessions see the watch end and stop; their next write finds no deployment.
        for id in removed {
            outcome.statuses.push((id, Status::Aborted));
        }
        for change in promoted {
            self.stage(change, group, &mut outcome);
        }
        Ok(outcome)
    }

    pub(super) fn create_scoped_token(
        &mut self,
        token: &Token,
        token_hash: &[u8; 32],
        grant: &Grant,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        group.ops.push(put(
            codec::token_key(token_hash),
            codec::encode_token(token),
        ));
        group
            .ops
            .push(put(codec::token_id_key(token.id), token_hash.to_vec()));
        group.ops.push(put(
            codec::token_scope_key(token.id),
            codec::encode_grant(grant),
        ));
        Ok(Outcome::quiet(()))
    }

    pub(super) fn rename_app(
        &mut self,
        app_id: AppId,
        new_name: String,
        by: UserId,
        group: &mut Group,
    ) -> Result<Outcome<App>, WriteError> {
        let mut app = self.store.app(app_id)?.ok_or(WriteError::NotFound("app"))?;
        if app.name == new_name {
            return Ok(Outcome::quiet(app));
        }
        if self.store.app_by_name(&new_name)?.is_some() {
            return Err(WriteError::AppNameTaken(new_name));
        }
        group
            .ops
            .push(BatchOp::Delete(codec::app_name_key(&app.name)));
        group.ops.push(put(
            codec::app_name_key(&new_name),
            app.id.as_bytes().to_vec(),
        ));
        let old_name = std::mem::replace(&mut app.name, new_name);
        app.updated_at = super::group::now();
        group
            .ops
            .push(put(codec::app_key(app_id), codec::encode_app(&app)));
        // Built with the new name: `record_by` would read the committed (old) one.
        let event = crate::timeline::TimelineEvent::new(
            app_id,
            &app.name,
            self.actor(by)?,
            "rename_app",
            serde_json::json!({ "old_name": old_name, "new_name": app.name }),
            app.updated_at,
        );
        self.record_event(&event, true, group)?;
        Ok(Outcome::quiet(app))
    }

    pub(super) fn set_collaborator_limited(
        &mut self,
        app: AppId,
        user: UserId,
        is_limited: bool,
        by: UserId,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        let mut record = self
            .store
            .collaboration(app, user)?
            .ok_or(WriteError::NotFound("collaborator"))?;
        record.is_limited = is_limited;
        group.ops.push(put(
            codec::collaborator_key(app, user),
            codec::encode_collaborator(&record),
        ));
        self.record_collaborator_event(app, user, Some(by), "change_collaborator_role", group)?;
        Ok(Outcome::quiet(()))
    }

    /// The app of a deployment as this group leaves it: the newest version staged in `group`,
    /// else the stored one. (Transitions are grouped, so an earlier one in the same group may
    /// already have rewritten the app.) `None` when the deployment or its app is gone.
    pub(super) fn app_of(
        &self,
        deployment: DeploymentId,
        group: &Group,
    ) -> Result<Option<App>, WriteError> {
        let Some(record) = self.store.deployment(deployment)? else {
            return Ok(None);
        };
        let key = codec::app_key(record.app_id);
        let staged = group.ops.iter().rev().find_map(|op| match op {
            BatchOp::Put(k, value) if *k == key => Some(value.clone()),
            _ => None,
        });
        match staged {
            Some(value) => Ok(Some(codec::decode_app(&value).map_err(StoreError::from)?)),
            None => Ok(self.store.app(record.app_id)?),
        }
    }
}

/// Points `app`'s `last_deployment` at `deployment`, which just succeeded, in `group`: the app
/// object's `status` (`running`), `last_deployed_*`, and the next deployment's
/// `previous_git_ref` follow successful deployments only.
pub(super) fn record_success(mut app: App, deployment: &Deployment, group: &mut Group) {
    app.last_deployment = Some(LastDeployment {
        id: deployment.id,
        at: deployment.created_at,
        by: deployment.pusher.username.clone(),
    });
    group
        .ops
        .push(put(codec::app_key(app.id), codec::encode_app(&app)));
}
