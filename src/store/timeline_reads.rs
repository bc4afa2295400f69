//! Reads of notifiers, the outbox, delivery attempts and timeline events (`timeline_codec`'s
//! records). Blocking, like every [`Store`] read: call them off the async executor.

use super::engine::prefix_end;
use super::timeline_codec::{self as tc, StoredDelivery, StoredNotifier, StoredOutbox};
use super::{Store, StoreError};
use crate::model::{AppId, UserId};
use crate::timeline::TimelineEvent;

impl Store {
    /// The app's notifiers, oldest first.
    pub fn notifiers(&self, app: AppId) -> Result<Vec<StoredNotifier>, StoreError> {
        let prefix = tc::notifiers_prefix(app);
        self.engine()
            .range(&prefix, &prefix_end(&prefix), false)
            .map(|entry| Ok(tc::decode_notifier(&entry?.1)?))
            .collect()
    }

    pub fn notifier(
        &self,
        app: AppId,
        id: uuid::Uuid,
    ) -> Result<Option<StoredNotifier>, StoreError> {
        match self.engine().get(&tc::notifier_key(app, id))? {
            Some(bytes) => Ok(Some(tc::decode_notifier(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` outbox entries, oldest first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<StoredOutbox>, StoreError> {
        let prefix = [super::codec::TAG_OUTBOX];
        self.engine()
            .range(&prefix, &prefix_end(&prefix), false)
            .take(limit)
            .map(|entry| Ok(tc::decode_outbox(&entry?.1)?))
            .collect()
    }

    /// The notifier's last `limit` delivery attempts, newest first.
    pub fn deliveries(
        &self,
        notifier: uuid::Uuid,
        limit: usize,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        let prefix = tc::deliveries_prefix(notifier);
        self.engine()
            .range(&prefix, &prefix_end(&prefix), true)
            .take(limit)
            .map(|entry| Ok(tc::decode_delivery(&entry?.1)?))
            .collect()
    }

    /// One page of the app's events, newest first, and their total count.
    pub fn app_events(
        &self,
        app: AppId,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<TimelineEvent>, u64), StoreError> {
        self.event_page(tc::events_prefix(app), offset, limit)
    }

    /// One page of the events of the user's apps (`/v1/events`), newest first, and the total.
    pub fn user_events(
        &self,
        user: UserId,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<TimelineEvent>, u64), StoreError> {
        self.event_page(tc::user_events_prefix(user), offset, limit)
    }

    fn event_page(
        &self,
        prefix: Vec<u8>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<TimelineEvent>, u64), StoreError> {
        let mut page = Vec::new();
        let mut total = 0u64;
        for entry in self.engine().range(&prefix, &prefix_end(&prefix), true) {
            let (_, value) = entry?;
            if total >= offset && (page.len() as u64) < limit {
                page.push(tc::decode_event(&value)?);
            }
            total += 1;
        }
        Ok((page, total))
    }

    /// Keys under `tag` whose trailing UUIDv7 (the last 16 bytes) is older than `before_ms`,
    /// at most `limit` (retention).
    pub fn expired_keys(
        &self,
        tag: u8,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = [tag];
        let mut out = Vec::new();
        for entry in self.engine().range(&prefix, &prefix_end(&prefix), false) {
            let (key, _) = entry?;
            let id = super::codec::trailing_id(&key)?;
            if tc::uuid_v7_millis(&id) < before_ms {
                out.push(key);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
