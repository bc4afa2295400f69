//! The bytes of notifiers, the notification outbox, delivery attempts and timeline events (tags
//! `0x12`–`0x16` of `codec`'s table, which stays the one list of tags).
//!
//! Same rules as `codec`: fixed-width big-endian keys, ids as their 16 UUID bytes (UUIDv7 where
//! order matters), values `FORMAT_V1` then bincode. Free text that is JSON on the wire (an
//! event's `type_data`, a delivery's body) is stored as its JSON text, so bincode never has to
//! encode a dynamic value. Defines bytes only: nothing here reads or writes the engine.

use serde::{Deserialize, Serialize};

use super::codec::{
    decode, encode, from_nanos, nanos, CodecError, TAG_DELIVERY, TAG_EVENT, TAG_NOTIFIER,
    TAG_OUTBOX, TAG_USER_EVENT,
};
use crate::model::{AppId, Pusher, UserId};
use crate::timeline::{type_by_name, TimelineEvent};

fn key(tag: u8, a: &[u8; 16], b: Option<&[u8; 16]>) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(tag);
    key.extend_from_slice(a);
    if let Some(b) = b {
        key.extend_from_slice(b);
    }
    key
}

pub fn notifier_key(app: AppId, notifier: uuid::Uuid) -> Vec<u8> {
    key(TAG_NOTIFIER, app.as_bytes(), Some(notifier.as_bytes()))
}
pub fn notifiers_prefix(app: AppId) -> Vec<u8> {
    key(TAG_NOTIFIER, app.as_bytes(), None)
}
pub fn outbox_key(delivery: uuid::Uuid) -> Vec<u8> {
    key(TAG_OUTBOX, delivery.as_bytes(), None)
}
pub fn delivery_key(notifier: uuid::Uuid, attempt: uuid::Uuid) -> Vec<u8> {
    key(TAG_DELIVERY, notifier.as_bytes(), Some(attempt.as_bytes()))
}
pub fn deliveries_prefix(notifier: uuid::Uuid) -> Vec<u8> {
    key(TAG_DELIVERY, notifier.as_bytes(), None)
}
pub fn event_key(app: AppId, event: uuid::Uuid) -> Vec<u8> {
    key(TAG_EVENT, app.as_bytes(), Some(event.as_bytes()))
}
pub fn events_prefix(app: AppId) -> Vec<u8> {
    key(TAG_EVENT, app.as_bytes(), None)
}
pub fn user_event_key(user: UserId, event: uuid::Uuid) -> Vec<u8> {
    key(TAG_USER_EVENT, user.as_bytes(), Some(event.as_bytes()))
}
pub fn user_events_prefix(user: UserId) -> Vec<u8> {
    key(TAG_USER_EVENT, user.as_bytes(), None)
}

/// When a UUIDv7 was made, Unix milliseconds (its first 48 bits); retention prunes by it
/// without decoding values.
pub fn uuid_v7_millis(id: &[u8; 16]) -> u64 {
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&id[..6]);
    u64::from_be_bytes(ms)
}

/// A webhook notifier of an app.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StoredNotifier {
    pub id: [u8; 16],
    pub app_id: [u8; 16],
    pub name: String,
    pub active: bool,
    pub send_all_events: bool,
    pub send_all_alerts: bool,
    /// Stable event type ids (`timeline::EVENT_TYPES`).
    pub selected_event_ids: Vec<String>,
    pub platform_id: String,
    pub webhook_url: String,
    /// The HMAC-SHA256 key the bodies are signed with.
    pub secret: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub fn encode_notifier(notifier: &StoredNotifier) -> Vec<u8> {
    encode(notifier)
}
pub fn decode_notifier(bytes: &[u8]) -> Result<StoredNotifier, CodecError> {
    decode(bytes)
}

/// One event waiting to be delivered to one notifier. Deleted in the commit that records its
/// success (or its final failure), so a delivery is never resent after that commit.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StoredOutbox {
    /// Also the key: sent as the delivery id header on every attempt.
    pub delivery_id: [u8; 16],
    pub notifier_id: [u8; 16],
    pub app_id: [u8; 16],
    pub event_type: String,
    /// The exact JSON body (signed as is on every attempt).
    pub body: String,
    pub created_at: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix nanoseconds before which no attempt is made.
    pub next_attempt_at: i64,
}

pub fn encode_outbox(entry: &StoredOutbox) -> Vec<u8> {
    encode(entry)
}
pub fn decode_outbox(bytes: &[u8]) -> Result<StoredOutbox, CodecError> {
    decode(bytes)
}

/// One delivery attempt, for `GET …/notifiers/{id}/deliveries`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StoredDelivery {
    pub delivery_id: [u8; 16],
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: i64,
    pub duration_ms: u64,
    /// The HTTP status answered, if any.
    pub status_code: Option<u16>,
    /// `delivered`, `retrying` or `failed` (final).
    pub outcome: String,
    pub error: Option<String>,
    pub next_retry_at: Option<i64>,
}

pub fn encode_delivery(delivery: &StoredDelivery) -> Vec<u8> {
    encode(delivery)
}
pub fn decode_delivery(bytes: &[u8]) -> Result<StoredDelivery, CodecError> {
    decode(bytes)
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct StoredEvent {
    id: [u8; 16],
    app_id: [u8; 16],
    app_name: String,
    created_at: i64,
    user_id: [u8; 16],
    username: String,
    email: String,
    kind: String,
    /// JSON text of the `type_data` object.
    type_data: String,
}

pub fn encode_event(event: &TimelineEvent) -> Vec<u8> {
    encode(&StoredEvent {
        id: *event.id.as_bytes(),
        app_id: *event.app_id.as_bytes(),
        app_name: event.app_name.clone(),
        created_at: nanos(event.created_at),
        user_id: *event.user.id.as_bytes(),
        username: event.user.username.clone(),
        email: event.user.email.clone(),
        kind: event.kind.to_owned(),
        type_data: event.type_data.to_string(),
    })
}

pub fn decode_event(bytes: &[u8]) -> Result<TimelineEvent, CodecError> {
    let s: StoredEvent = decode(bytes)?;
    Ok(TimelineEvent {
        id: uuid::Uuid::from_bytes(s.id),
        app_id: AppId::from_bytes(s.app_id),
        app_name: s.app_name,
        created_at: from_nanos(s.created_at)?,
        user: Pusher {
            id: UserId::from_bytes(s.user_id),
            username: s.username,
            email: s.email,
        },
        kind: type_by_name(&s.kind)
            .ok_or(CodecError::Corrupt("event type"))?
            .name,
        type_data: serde_json::from_str(&s.type_data)
            .map_err(|_| CodecError::Corrupt("event type_data"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_its_encoding() {
        let event = TimelineEvent::new(
            AppId::generate(),
            "web",
            Pusher {
                id: UserId::generate(),
                username: "ann".into(),
                email: "ann@x".into(),
            },
            "new_app",
            serde_json::json!({"git_source": null}),
            time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
        );
        assert_eq!(decode_event(&encode_event(&event)).expect("decode"), event);
    }

    #[test]
    fn a_uuid_v7_tells_its_creation_millisecond() {
        let id = uuid::Uuid::now_v7();
        let (secs, nanos) = id.get_timestamp().expect("v7").to_unix();
        let expected = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert_eq!(uuid_v7_millis(id.as_bytes()), expected);
    }

    #[test]
    fn keys_start_with_their_reserved_tags() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(notifier_key(AppId(id), id)[0], 0x12);
        assert_eq!(outbox_key(id)[0], 0x13);
        assert_eq!(delivery_key(id, id)[0], 0x14);
        assert_eq!(event_key(AppId(id), id)[0], 0x15);
        assert_eq!(user_event_key(UserId(id), id)[0], 0x16);
    }
}
