//! Writes of the events timeline and the notification outbox: recording an event (with its
//! copies for each user's `/v1/events` and one outbox entry per notifier that wants it, all in
//! the group of the change it describes), notifiers, delivery results and retention pruning.
//!
//! Runs on the writer thread inside a group; it adds ops and never commits, and it never makes
//! a network call (deliveries are `notify`'s, off this thread).

use time::OffsetDateTime;

use super::group::{put, Group, Outcome, WriterState};
use super::WriteError;
use crate::model::{AppId, Deployment, Pusher};
use crate::store::codec::{TAG_DELIVERY, TAG_EVENT, TAG_OUTBOX, TAG_USER_EVENT};
use crate::store::engine::{prefix_end, BatchOp};
use crate::store::timeline_codec::{self as tc, StoredDelivery, StoredNotifier, StoredOutbox};
use crate::store::StoreError;
use crate::timeline::{type_by_name, TimelineEvent};

/// Most keys one prune command may delete, so one commit stays small (the worker sends more).
pub const MAX_PRUNE_KEYS: usize = 4096;

impl WriterState {
    /// Adds `event` to `group`: in the app's timeline (unless the app is being deleted), in the
    /// `/v1/events` of its owner and collaborators (read from committed state), and in the
    /// outbox of each active notifier of the app that selects its type.
    pub(super) fn record_event(
        &self,
        event: &TimelineEvent,
        app_alive: bool,
        group: &mut Group,
    ) -> Result<(), WriteError> {
        let Some(app) = self.store.app(event.app_id)? else {
            return Err(WriteError::NotFound("app"));
        };
        let encoded = tc::encode_event(event);
        if app_alive {
            group
                .ops
                .push(put(tc::event_key(app.id, event.id), encoded.clone()));
        }
        group.ops.push(put(
            tc::user_event_key(app.owner, event.id),
            encoded.clone(),
        ));
        for collaborator in self.store.collaborators(app.id)? {
            let user = collaborator.user;
            group
                .ops
                .push(put(tc::user_event_key(user.id, event.id), encoded.clone()));
        }
        if !app_alive {
            return Ok(());
        }
        let type_id = type_by_name(event.kind).map(|t| t.id);
        let body = event.to_json().to_string();
        let now = tc_nanos(event.created_at);
        for notifier in self.notifiers_of(app.id)? {
            let selected = notifier.send_all_events
                || type_id.is_some_and(|id| notifier.selected_event_ids.iter().any(|s| s == id));
            if !notifier.active || !selected {
                continue;
            }
            let delivery_id = uuid::Uuid::now_v7();
            let entry = StoredOutbox {
                delivery_id: *delivery_id.as_bytes(),
                notifier_id: notifier.id,
                app_id: *app.id.as_bytes(),
                event_type: event.kind.to_owned(),
                body: body.clone(),
                created_at: now,
                attempts: 0,
                next_attempt_at: now,
            };
            group
                .ops
                .push(put(tc::outbox_key(delivery_id), tc::encode_outbox(&entry)));
        }
        Ok(())
    }

    /// Records the `deployment` event of a deployment that just reached its final status. A
    /// failure to read what the event needs is logged and the event skipped: the status change
    /// itself must not fail for the timeline's sake.
    pub(super) fn record_deployment_event(&self, deployment: &Deployment, group: &mut Group) {
        let recorded = self
            .store
            .app(deployment.app_id)
            .map_err(WriteError::from)
            .and_then(|app| {
                let Some(app) = app else { return Ok(()) };
                let event =
                    TimelineEvent::deployment(deployment, &app.name, OffsetDateTime::now_utc());
                self.record_event(&event, true, group)
            });
        if let Err(err) = recorded {
            tracing::error!(deployment = %deployment.id, error = %err, "recording the deployment event");
        }
    }

    /// Records an event of `kind` done by the user `actor` (looked up; a missing user is shown
    /// as `deleted-user`) on the app `app_id`.
    pub(super) fn record_by(
        &self,
        app_id: AppId,
        actor: crate::model::UserId,
        kind: &'static str,
        type_data: serde_json::Value,
        app_alive: bool,
        group: &mut Group,
    ) -> Result<(), WriteError> {
        let app = self.store.app(app_id)?.ok_or(WriteError::NotFound("app"))?;
        let user = self.actor(actor)?;
        let event = TimelineEvent::new(
            app_id,
            &app.name,
            user,
            kind,
            type_data,
            OffsetDateTime::now_utc(),
        );
        self.record_event(&event, app_alive, group)
    }

    /// The `new_app` event of an app being created (its owner did it). The app is not
    /// committed yet, so the event is written here rather than through [`Self::record_event`].
    pub(super) fn record_new_app(
        &self,
        app: &crate::model::App,
        group: &mut Group,
    ) -> Result<(), WriteError> {
        let user = self.actor(app.owner)?;
        let event = TimelineEvent::new(
            app.id,
            &app.name,
            user,
            "new_app",
            serde_json::json!({ "git_source": app.git_source }),
            OffsetDateTime::now_utc(),
        );
        let encoded = tc::encode_event(&event);
        group
            .ops
            .push(put(tc::event_key(app.id, event.id), encoded.clone()));
        group
            .ops
            .push(put(tc::user_event_key(app.owner, event.id), encoded));
        Ok(())
    }

    /// A collaborator event: `by` did it (the owner when `None`); `type_data.collaborator`
    /// names the collaborator.
    pub(super) fn record_collaborator_event(
        &self,
        app_id: AppId,
        collaborator: crate::model::UserId,
        by: Option<crate::model::UserId>,
        kind: &'static str,
        group: &mut Group,
    ) -> Result<(), WriteError> {
        let app = self.store.app(app_id)?.ok_or(WriteError::NotFound("app"))?;
        let who = self.actor(collaborator)?;
        let type_data = serde_json::json!({
            "collaborator": {
                "id": who.id.to_string(),
                "username": who.username,
                "email": who.email,
            }
        });
        self.record_by(
            app_id,
            by.unwrap_or(app.owner),
            kind,
            type_data,
            true,
            group,
        )
    }

    /// Deletes an app's own timeline and notifiers (its users' `/v1/events` copies stay, and
    /// its outbox entries are dropped by the worker when it finds their notifier gone).
    pub(super) fn delete_timeline_of(
        &self,
        app: AppId,
        ops: &mut Vec<BatchOp>,
    ) -> Result<(), WriteError> {
        for prefix in [tc::events_prefix(app), tc::notifiers_prefix(app)] {
            for entry in self.engine.range(&prefix, &prefix_end(&prefix), false) {
                let (key, value) = entry.map_err(StoreError::from)?;
                if key[0] == crate::store::codec::TAG_NOTIFIER {
                    let notifier = tc::decode_notifier(&value).map_err(StoreError::from)?;
                    let deliveries = tc::deliveries_prefix(uuid::Uuid::from_bytes(notifier.id));
                    for d in self
                        .engine
                        .range(&deliveries, &prefix_end(&deliveries), false)
                    {
                        ops.push(BatchOp::Delete(d.map_err(StoreError::from)?.0));
                    }
                }
                ops.push(BatchOp::Delete(key));
            }
        }
        Ok(())
    }

    /// The user `id` as an event's `user` (`deleted-user` when gone).
    pub(super) fn actor(&self, id: crate::model::UserId) -> Result<Pusher, WriteError> {
        Ok(match self.store.user(id)? {
            Some(user) => Pusher {
                id: user.id,
                username: user.username,
                email: user.email,
            },
            None => Pusher {
                id,
                username: "deleted-user".into(),
                email: String::new(),
            },
        })
    }

    fn notifiers_of(&self, app: AppId) -> Result<Vec<StoredNotifier>, StoreError> {
        let prefix = tc::notifiers_prefix(app);
        self.engine
            .range(&prefix, &prefix_end(&prefix), false)
            .map(|entry| Ok(tc::decode_notifier(&entry?.1)?))
            .collect()
    }

    /// Creates (`created`) or replaces a notifier, with its `new_notifier`/`edit_notifier`
    /// event. Replacing one that does not exist is refused.
    pub(super) fn put_notifier(
        &mut self,
        notifier: &StoredNotifier,
        actor: &Pusher,
        created: bool,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        let app_id = AppId::from_bytes(notifier.app_id);
        let app = self.store.app(app_id)?.ok_or(WriteError::NotFound("app"))?;
        let id = uuid::Uuid::from_bytes(notifier.id);
        let key = tc::notifier_key(app_id, id);
        if !created && self.engine.get(&key).map_err(StoreError::from)?.is_none() {
            return Err(WriteError::NotFound("notifier"));
        }
        group.ops.push(put(key, tc::encode_notifier(notifier)));
        let kind = if created {
            "new_notifier"
        } else {
            "edit_notifier"
        };
        let event = TimelineEvent::new(
            app_id,
            &app.name,
            actor.clone(),
            kind,
            serde_json::json!({
                "notifier_id": id.to_string(),
                "notifier_name": notifier.name,
                "notifier_type": "webhook",
                "platform_name": "webhook",
                "active": notifier.active,
            }),
            OffsetDateTime::now_utc(),
        );
        self.record_event(&event, true, group)?;
        Ok(Outcome::quiet(()))
    }

    /// Deletes a notifier, its delivery records and (lazily, in the worker) its outbox
    /// entries, with a `delete_notifier` event.
    pub(super) fn delete_notifier(
        &mut self,
        app_id: AppId,
        id: uuid::Uuid,
        actor: &Pusher,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        let app = self.store.app(app_id)?.ok_or(WriteError::NotFound("app"))?;
        let key = tc::notifier_key(app_id, id);
        let stored = self
            .engine
            .get(&key)
            .map_err(StoreError::from)?
            .ok_or(WriteError::NotFound("notifier"))?;
        let notifier = tc::decode_notifier(&stored).map_err(StoreError::from)?;
        group.ops.push(BatchOp::Delete(key));
        let prefix = tc::deliveries_prefix(id);
        for entry in self.engine.range(&prefix, &prefix_end(&prefix), false) {
            group
                .ops
                .push(BatchOp::Delete(entry.map_err(StoreError::from)?.0));
        }
        let event = TimelineEvent::new(
            app_id,
            &app.name,
            actor.clone(),
            "delete_notifier",
            serde_json::json!({
                "notifier_id": id.to_string(),
                "notifier_name": notifier.name,
                "notifier_type": "webhook",
                "platform_name": "webhook",
            }),
            OffsetDateTime::now_utc(),
        );
        self.record_event(&event, true, group)?;
        Ok(Outcome::quiet(()))
    }

    /// Stores one attempt's result: the attempt record and either the entry's next state
    /// (`next`, to retry) or its removal (delivered, or failed for good). An entry whose
    /// notifier is gone is just removed.
    pub(super) fn finish_delivery(
        &mut self,
        entry: &StoredOutbox,
        delivery: Option<&StoredDelivery>,
        next: Option<&StoredOutbox>,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        let delivery_id = uuid::Uuid::from_bytes(entry.delivery_id);
        let notifier = uuid::Uuid::from_bytes(entry.notifier_id);
        let outbox_key = tc::outbox_key(delivery_id);
        if self
            .engine
            .get(&outbox_key)
            .map_err(StoreError::from)?
            .is_none()
        {
            // Already finished (or pruned): nothing to record twice.
            return Ok(Outcome::quiet(()));
        }
        let alive = self
            .engine
            .get(&tc::notifier_key(AppId::from_bytes(entry.app_id), notifier))
            .map_err(StoreError::from)?
            .is_some();
        if let (true, Some(delivery)) = (alive, delivery) {
            group.ops.push(put(
                tc::delivery_key(notifier, uuid::Uuid::now_v7()),
                tc::encode_delivery(delivery),
            ));
        }
        match next {
            Some(next) if alive => group.ops.push(put(outbox_key, tc::encode_outbox(next))),
            _ => group.ops.push(BatchOp::Delete(outbox_key)),
        }
        Ok(Outcome::quiet(()))
    }

    /// Deletes expired timeline, outbox and delivery keys (and nothing else).
    pub(super) fn prune(
        &mut self,
        keys: Vec<Vec<u8>>,
        group: &mut Group,
    ) -> Result<Outcome<()>, WriteError> {
        let allowed = [TAG_OUTBOX, TAG_DELIVERY, TAG_EVENT, TAG_USER_EVENT];
        if keys.len() > MAX_PRUNE_KEYS
            || keys
                .iter()
                .any(|k| !k.first().is_some_and(|t| allowed.contains(t)))
        {
            return Err(WriteError::Unavailable(
                "a prune may delete only timeline, outbox and delivery keys".into(),
            ));
        }
        group.ops.extend(keys.into_iter().map(BatchOp::Delete));
        Ok(Outcome::quiet(()))
    }
}

fn tc_nanos(at: OffsetDateTime) -> i64 {
    // i64 nanoseconds cover 1677..2262 (as in `codec`).
    at.unix_timestamp_nanos() as i64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::hub::Hub;
    use crate::model::{App, AppId, Pusher, Token, TokenId, User, UserId};
    use crate::store::codec::{TAG_APP, TAG_EVENT, TAG_USER_EVENT};
    use crate::store::engine::MemoryEngine;
    use crate::store::logs::LogFiles;
    use crate::store::writer::Writer;
    use crate::store::Store;
    use crate::timeline::TimelineEvent;

    #[tokio::test]
    async fn retention_prunes_only_events_older_than_the_cutoff_and_nothing_but_timeline_keys() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let store = Store::new(
            Arc::new(MemoryEngine::default()),
            LogFiles::open(scratch.path()).expect("logs"),
        );
        let (writer, _, _thread) =
            Writer::start(store.clone(), Arc::new(Hub::default())).expect("writer");
        let now = time::OffsetDateTime::now_utc();
        let user = User {
            id: UserId::generate(),
            username: "u".into(),
            email: "u@example.com".into(),
            fullname: String::new(),
            is_admin: false,
            created_at: now,
        };
        let token = Token {
            id: TokenId::generate(),
            user_id: user.id,
            name: "t".into(),
            created_at: now,
        };
        writer
            .create_user(user.clone(), token, [7; 32])
            .await
            .expect("user");
        let app = App {
            id: AppId::generate(),
            name: "app".into(),
            owner: user.id,
            git_source: None,
            created_at: now,
            updated_at: now,
            last_deployment: None,
        };
        writer.create_app(app.clone()).await.expect("app");
        let actor = Pusher {
            id: user.id,
            username: user.username.clone(),
            email: user.email.clone(),
        };
        let mut old = TimelineEvent::new(
            app.id,
            "app",
            actor,
            "edit_notifier",
            serde_json::json!({}),
            now,
        );
        // Made 100 days ago, as its UUIDv7 says.
        let old_secs = (now.unix_timestamp() - 100 * 86_400) as u64;
        old.id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, old_secs, 0));
        writer.record_event(old.clone()).await.expect("record");
        let cutoff_ms = (now.unix_timestamp() as u64 - 90 * 86_400) * 1000;
        let mut pruned = 0;
        for tag in [TAG_EVENT, TAG_USER_EVENT] {
            let keys = store.expired_keys(tag, cutoff_ms, 100).expect("scan");
            assert_eq!(keys.len(), 1, "tag {tag}: only the old event");
            pruned += keys.len();
            writer.prune(keys).await.expect("prune");
        }
        assert_eq!(pruned, 2);
        let (events, total) = store.app_events(app.id, 0, 10).expect("events");
        assert_eq!(total, 1, "the new_app event stays");
        assert_eq!(events[0].kind, "new_app");
        assert_eq!(store.user_events(user.id, 0, 10).expect("events").1, 1);

        let refused = writer.prune(vec![vec![TAG_APP]]).await;
        assert!(refused.is_err(), "a prune never deletes other records");
        assert!(store.app(app.id).expect("read").is_some());
    }
}
