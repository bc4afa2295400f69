//! Writes of the named records: users and their tokens, apps (and everything under an app when
//! it is deleted). Each checks uniqueness or existence against committed state, which holds
//! because these commands are committed alone (see `Command::commits_alone`).
//!
//! Runs on the writer thread inside a group; it adds ops to the group and never commits.

use super::group::{put, Group, Outcome, WriterState};
use super::WriteError;
use crate::model::{App, AppId, Token, TokenId, User, UserId};
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
        Ok(Outcome::quiet(()))
    }

    pub(super) fn delete_app(
        &mut self,
        app_id: AppId,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        let app = self.store.app(app_id)?.ok_or(WriteError::NotFound("app"))?;
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
        let ids = self.store.deployment_ids(app_id, 0, u64::MAX)?;
        delete_prefix(codec::app_deployments_prefix(app_id), &mut group.ops)?;
        delete_prefix(codec::app_statuses_prefix(app_id), &mut group.ops)?;
        for id in ids {
            group.ops.push(BatchOp::Delete(codec::deployment_key(id)));
            group.ops.push(BatchOp::Delete(codec::unfinished_key(id)));
            delete_prefix(codec::segments_prefix(id), &mut group.ops)?;
            group.removals.push(id);
            self.log_ends.remove(&id);
        }
        let mut outcome = Outcome::quiet(());
        // Their sessions see the watch end and stop; their next write finds no deployment.
        for id in self.lifecycle.remove_app(app_id) {
            outcome.statuses.push((id, Status::Aborted));
        }
        Ok(outcome)
    }
}
