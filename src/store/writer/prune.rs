//! The writer's side of retention and of the status filters: the status indexes kept in step
//! with every deployment record (tags `0x10`, `0x11`; each change is also noted for the counts,
//! `counts`), their one-time build for a store written before them, and the pruning operations
//! (deployments, sources).
//!
//! Runs on the writer thread inside a group; it adds ops to the group and never commits. Which
//! deployments to prune is `crate::retention`'s decision; this module only refuses to prune
//! what must stay (an unfinished deployment) and removes a pruned one's record, every index
//! entry pointing to it, and (after the commit, through `Group::removals`) its log file.

use super::counts::CountChange;
use super::group::{put, Group, Outcome, WriterState};
use super::WriteError;
use crate::model::{Deployment, DeploymentId, Driver};
use crate::status::Status;
use crate::store::codec;
use crate::store::engine::{prefix_end, BatchOp};
use crate::store::StoreError;

/// The meta record saying the status indexes cover every deployment (written once, by the
/// build that fills them in for a store from before they existed).
const STATUS_INDEX_META: &str = "index-status-v1";

/// Adds the status index ops for a deployment record that was just created (`created`) or
/// moved to `record.status` from an unfinished status, and notes the change for the counts.
pub(super) fn index_status(group: &mut Group, record: &Deployment, created: bool) {
    index_status_ops(&mut group.ops, record, created);
    let (app, id) = (record.app_id, record.id);
    group.counts.push(if created {
        CountChange::Created {
            app,
            id,
            status: record.status,
        }
    } else {
        CountChange::Moved {
            app,
            id,
            to: record.status,
        }
    });
}

/// The status index ops alone (see [`index_status`]).
fn index_status_ops(ops: &mut Vec<BatchOp>, record: &Deployment, created: bool) {
    let (app, id) = (record.app_id, record.id);
    if !created {
        // A moved deployment was unfinished (only those are in the lifecycle); deleting a key
        // that is not there is free, so the old entry needs no lookup.
        for old in Status::ALL.into_iter().filter(|s| !s.is_terminal()) {
            if old != record.status {
                ops.push(BatchOp::Delete(codec::app_status_key(app, old, id)));
            }
        }
    }
    ops.push(put(
        codec::app_status_key(app, record.status, id),
        Vec::new(),
    ));
    if record.status.is_terminal() {
        ops.push(BatchOp::Delete(codec::unfinished_key(id)));
    } else {
        ops.push(put(codec::unfinished_key(id), app.as_bytes().to_vec()));
    }
}

/// The ops that forget a deployment entirely: its record, its entries in every index, its
/// segment index. The log file goes after the commit (`Group::removals`).
pub(super) fn forget_deployment(
    state: &WriterState,
    record: &Deployment,
    group: &mut Group,
) -> Result<(), WriteError> {
    let (app, id) = (record.app_id, record.id);
    group.ops.push(BatchOp::Delete(codec::deployment_key(id)));
    group
        .ops
        .push(BatchOp::Delete(codec::app_deployment_key(app, id)));
    group.ops.push(BatchOp::Delete(codec::app_status_key(
        app,
        record.status,
        id,
    )));
    group.ops.push(BatchOp::Delete(codec::unfinished_key(id)));
    group.counts.push(CountChange::Forgotten {
        app,
        id,
        status: record.status,
    });
    let prefix = codec::segments_prefix(id);
    for entry in state.engine.range(&prefix, &prefix_end(&prefix), false) {
        let (key, _) = entry.map_err(StoreError::from)?;
        group.ops.push(BatchOp::Delete(key));
    }
    super::images::forget_image(state, id, group)?;
    group.removals.push(id);
    Ok(())
}

impl WriterState {
    /// Fills the status indexes in for a store written before they existed, then the
    /// deployment counts from them (each once: a meta record then says they are complete).
    /// Runs before recovery, which keeps them up to date like every later write.
    pub(super) fn build_status_indexes(&mut self) -> Result<(), StoreError> {
        if self.store.meta(STATUS_INDEX_META)?.is_none() {
            let mut ops = Vec::new();
            for record in self.store.all_deployments()? {
                index_status_ops(&mut ops, &record, true);
            }
            ops.push(put(codec::meta_key(STATUS_INDEX_META), vec![1]));
            self.apply_batch(ops)?;
            self.engine.sync()?;
        }
        crate::store::counts::ensure_built(&*self.engine)
    }

    /// Prunes finished deployments: each of `ids` that exists and is finished is forgotten
    /// (record, indexes, segments, then its log file). Unfinished or missing ones are skipped.
    /// Returns the ids pruned.
    pub(super) fn prune_deployments(
        &mut self,
        ids: &[DeploymentId],
        group: &mut Group,
    ) -> Result<Outcome<Vec<DeploymentId>>, WriteError> {
        let mut pruned = Vec::new();
        for &id in ids {
            if self.lifecycle.get(id).is_some() {
                continue;
            }
            let Some(record) = self.store.deployment(id)? else {
                continue;
            };
            if !record.status.is_terminal() {
                continue;
            }
            forget_deployment(self, &record, group)?;
            self.log_ends.remove(&id);
            self.log_limit.forget(id);
            pruned.push(id);
        }
        Ok(Outcome::quiet(pruned))
    }

    /// Deletes the records of uploaded sources, except those an unfinished deployment's
    /// source URL names (checked here, on the writer, so no trigger can slip in between).
    /// Returns the ids deleted: their files may go once this is committed.
    pub(super) fn delete_sources(
        &mut self,
        ids: &[uuid::Uuid],
        group: &mut Group,
    ) -> Result<Outcome<Vec<uuid::Uuid>>, WriteError> {
        let referenced: Vec<&str> = self
            .lifecycle
            .live()
            .filter_map(|d| match &d.driver {
                Driver::Executor { source_url, .. } => Some(source_url.as_str()),
                Driver::External => None,
            })
            .collect();
        let mut deleted = Vec::new();
        for &id in ids {
            let name = id.to_string();
            if referenced.iter().any(|url| url.contains(&name)) {
                continue;
            }
            group.ops.push(BatchOp::Delete(codec::source_key(id)));
            deleted.push(id);
        }
        Ok(Outcome::quiet(deleted))
    }
}
