//! Every byte deployd puts on disk: key layout and value encodings.
//!
//! All records live in one ordered keyspace (one sled tree). A key starts with a one-byte tag;
//! integers in keys are fixed-width big-endian so that byte order is numeric order; ids are the
//! 16 bytes of their UUID (UUIDv7, so deployment ids sort by creation time).
//!
//! | tag | key after the tag | value |
//! |---|---|---|
//! | `0x01` users | user id (16) | [`StoredUser`] |
//! | `0x02` usernames | username (UTF-8) | user id (16) |
//! | `0x03` emails | lowercased email (UTF-8) | user id (16) |
//! | `0x04` tokens | SHA-256 of the token secret (32) | [`StoredToken`] |
//! | `0x05` token ids | token id (16) | SHA-256 of the secret (32) |
//! | `0x06` apps | app id (16) | [`StoredApp`] |
//! | `0x07` app names | app name (UTF-8) | app id (16) |
//! | `0x08` collaborators | app id (16) ++ user id (16) | [`StoredCollaborator`] (v1) or [`StoredCollaboratorV2`] |
//! | `0x09` deployments | deployment id (16) | [`StoredDeployment`] |
//! | `0x0A` app deployments | app id (16) ++ deployment id (16) | empty (index; iterate in reverse for newest first) |
//! | `0x0B` log segment index | deployment id (16) ++ first line number (u64) | segment reference (below) |
//! | `0x0C` meta | name (UTF-8) | raw bytes (`install-secret`: 32 bytes, the JWT and source URL key) |
//! | `0x0D` sources | source id (16) | [`StoredSource`] |
//! | `0x0E` cancel requests | deployment id (16) | [`CancelRequest`] (`codec::cancel`: who cancelled and when; from the cancel's commit until the deployment ends) |
//! | `0x0F` images | deployment id (16) | [`ImageRecord`] (`codec::image`: the kept image's file, size, rollback target and unfinished references) |
//! | `0x10` app status index | app id (16) ++ status code (1) ++ deployment id (16) | empty (one entry per deployment, at its current status; the status filters and retention read it) |
//! | `0x11` unfinished index | deployment id (16) | app id (16) (every deployment not yet finished; `GET /v1/deployments?status=unfinished`) |
//! | `0x17` token scopes | token id (16) | [`StoredGrant`]; absent: the token is `full` on every app |
//! | `0x19` app counts | app id (16) | [`StoredAppCounts`]: the app's deployments per status, its newest id, its newest bucket (`counts`) |
//! | `0x1A` count buckets | app id (16) ++ first deployment id (16) | [`StoredBucket`]: per status, the app's deployments from this id to the next bucket's (`counts`) |
//! | `0x1B` every app's counts | `0x00`: the counts; `0x01` ++ first deployment id (16): a bucket | [`StoredAppCounts`] / [`StoredBucket`] over every app's deployments at once (the admin's `GET /v1/deployments`; `counts`) |
//!
//! Reserved for the features that come next, so that they can be built side by side without
//! two of them taking the same byte. Nothing writes these yet; each line names the feature that
//! owns the tag and the key it plans. A feature may refine the key layout when it lands, in this
//! table, but never reuse another's tag.
//!
//! | tag | owner | key after the tag (planned) | value (planned) |
//! |---|---|---|---|
//! | `0x12` notifiers | parity (notifiers) | app id (16) ++ notifier id (16) | the notifier |
//! | `0x13` outbox | parity (notifications) | delivery id (16, UUIDv7: creation order) | the event to deliver and its target |
//! | `0x14` deliveries | parity (notifications) | notifier id (16) ++ attempt id (16, UUIDv7) | one attempt: status, code, duration |
//! | `0x15` events | parity (events timeline) | app id (16) ++ event id (16, UUIDv7) | the event |
//! | `0x16` user events index | parity (`GET /v1/events`) | user id (16) ++ event id (16) | a copy of the event (it outlives a deleted app) |
//! | `0x17` token scopes | in use (the first table; parity's scoped tokens) | token id (16) | the token's scope |
//! | `0x18` node leases | cluster mode (embedded store: unused) | node id (16) | lease expiry |
//!
//! `0x12`–`0x16` are in use: their keys and records are in `store::timeline_codec`.
//!
//! Record format versions: every stored struct is at `FORMAT_V1`, except collaborators, written
//! as `FORMAT_V2` ([`StoredCollaboratorV2`]: v1 and a role, `is_limited`) since limited
//! collaborators; v1 collaborators still read back (not limited). A struct that gains a field
//! gets a new version byte, and the decoder keeps reading every older one. Planned:
//! `StoredDeployment` v2 with the cancel, image and driving-node fields (control, cluster mode).
//!
//! Record values are `FORMAT_V1` (one byte) followed by the bincode 1.3 (fixint, little-endian,
//! the crate's default `bincode::serialize`) encoding of the stored struct. Timestamps are Unix
//! nanoseconds (`i64`). Stored structs are separate from the domain types so that a domain change
//! never silently changes the file format.
//!
//! A segment reference says where a segment lies in its deployment's log file
//! (`store::logs`: `<deployment id>.log`, the deployment's segments back to back):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `SEGMENT_REF_V1` |
//! | 1 | 8 | offset of the segment in the file, u64 big-endian |
//! | 9 | 4 | length of the segment in bytes, u32 big-endian |
//! | 13 | 4 | number of lines in the segment, u32 big-endian |
//!
//! A log segment (in the log files, and in hub events) is hand-laid-out so that reading output
//! is a copy of its text, with no parsing:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `SEGMENT_V1` |
//! | 1 | 8 | time the segment was stored, Unix nanoseconds, i64 big-endian |
//! | 9 | 4 | number of lines `n`, u32 big-endian |
//! | 13 | n | one stream code per line (0 stdout, 1 stderr, 2 deployd) |
//! | 13+n | rest | the lines' text, each followed by `\n` (lines never contain `\n`) |

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::model::{
    App, AppId, Deployment, DeploymentId, Driver, Grant, LastDeployment, LineNo, LogStream, Pusher,
    Scope, Token, TokenId, User, UserId,
};
use crate::status::Status;

pub const TAG_USER: u8 = 0x01;
pub const TAG_USERNAME: u8 = 0x02;
pub const TAG_EMAIL: u8 = 0x03;
pub const TAG_TOKEN: u8 = 0x04;
pub const TAG_TOKEN_ID: u8 = 0x05;
pub const TAG_APP: u8 = 0x06;
pub const TAG_APP_NAME: u8 = 0x07;
pub const TAG_COLLABORATOR: u8 = 0x08;
pub const TAG_DEPLOYMENT: u8 = 0x09;
pub const TAG_APP_DEPLOYMENT: u8 = 0x0A;
pub const TAG_SEGMENT: u8 = 0x0B;
pub const TAG_META: u8 = 0x0C;
pub const TAG_SOURCE: u8 = 0x0D;

// Reserved tags (see the table above): each belongs to the feature named there.
pub const TAG_CANCEL_REQUEST: u8 = 0x0E;
pub const TAG_IMAGE: u8 = 0x0F;
pub const TAG_APP_STATUS_INDEX: u8 = 0x10;
pub const TAG_UNFINISHED_INDEX: u8 = 0x11;
pub const TAG_NOTIFIER: u8 = 0x12;
pub const TAG_OUTBOX: u8 = 0x13;
pub const TAG_DELIVERY: u8 = 0x14;
pub const TAG_EVENT: u8 = 0x15;
pub const TAG_USER_EVENT: u8 = 0x16;
pub const TAG_TOKEN_SCOPES: u8 = 0x17;
pub const TAG_NODE_LEASE: u8 = 0x18;
// Taken after the reserved ones (the listing's counts, `counts`).
pub const TAG_APP_COUNTS: u8 = 0x19;
pub const TAG_COUNT_BUCKET: u8 = 0x1A;
/// Every app's counts and buckets together (the admin's `GET /v1/deployments`), `counts`.
pub const TAG_ALL_COUNTS: u8 = 0x1B;

/// Every tag, in use or reserved: no two features may share one (checked by a test).
pub const ALL_TAGS: [u8; 27] = [
    TAG_USER,
    TAG_USERNAME,
    TAG_EMAIL,
    TAG_TOKEN,
    TAG_TOKEN_ID,
    TAG_APP,
    TAG_APP_NAME,
    TAG_COLLABORATOR,
    TAG_DEPLOYMENT,
    TAG_APP_DEPLOYMENT,
    TAG_SEGMENT,
    TAG_META,
    TAG_SOURCE,
    TAG_CANCEL_REQUEST,
    TAG_IMAGE,
    TAG_APP_STATUS_INDEX,
    TAG_UNFINISHED_INDEX,
    TAG_NOTIFIER,
    TAG_OUTBOX,
    TAG_DELIVERY,
    TAG_EVENT,
    TAG_USER_EVENT,
    TAG_TOKEN_SCOPES,
    TAG_NODE_LEASE,
    TAG_APP_COUNTS,
    TAG_COUNT_BUCKET,
    TAG_ALL_COUNTS,
];

/// Format byte of every record value.
pub const FORMAT_V1: u8 = 1;
/// Format byte of a record's second version (so far only [`StoredCollaboratorV2`]).
pub const FORMAT_V2: u8 = 2;
/// Format byte of a log segment.
pub const SEGMENT_V1: u8 = 1;
pub(super) const SEGMENT_HEADER: usize = 13;

/// Format byte of a segment reference. It is 2, not 1, because the segment index entries held
/// the segment itself (`SEGMENT_V1`, byte 1) before log text moved to the log files: a data
/// directory from before that change fails loudly (`UnknownFormat(1)`) instead of being misread.
pub const SEGMENT_REF_V1: u8 = 2;
pub(super) const SEGMENT_REF_LEN: usize = 17;

/// The one-byte code of a status in [`StoredDeployment`]. Never renumber: these bytes are on
/// disk. (The order of statuses, for comparisons, is `Status`'s `Ord`, not this code.)
pub fn status_code(status: Status) -> u8 {
    match status {
        Status::Queued => 0,
        Status::Building => 1,
        Status::Pushing => 2,
        Status::Starting => 3,
        Status::Success => 4,
        Status::Aborted => 5,
        Status::BuildError => 6,
        Status::CrashedError => 7,
        Status::TimeoutError => 8,
        Status::HookError => 9,
    }
}

/// Inverse of [`status_code`]; `None` for a byte no status has.
pub fn status_from_code(code: u8) -> Option<Status> {
    Status::ALL.into_iter().find(|s| status_code(*s) == code)
}

/// The one-byte code of a line's stream in a log segment. Never renumber.
pub fn log_stream_code(stream: LogStream) -> u8 {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
        LogStream::System => 2,
    }
}

/// Inverse of [`log_stream_code`]; `None` for a byte no stream has.
pub fn log_stream_from_code(code: u8) -> Option<LogStream> {
    match code {
        0 => Some(LogStream::Stdout),
        1 => Some(LogStream::Stderr),
        2 => Some(LogStream::System),
        _ => None,
    }
}

/// A value that cannot be decoded: corrupt, or written by an unknown format.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown format byte {0}")]
    UnknownFormat(u8),
    #[error("empty value")]
    Empty,
    #[error("bincode: {0}")]
    Bincode(#[from] bincode::Error),
    #[error("corrupt value: {0}")]
    Corrupt(&'static str),
}

mod counts;
pub use counts::{
    app_counts_key, count_bucket_key, count_buckets_prefix, decode_app_counts, decode_bucket,
    encode_app_counts, encode_bucket, CountScope, StoredAppCounts, StoredBucket, STATUS_SLOTS,
};
mod cancel;
pub use cancel::{cancel_request_key, decode_cancel_request, encode_cancel_request, CancelRequest};
mod image;
pub use image::{decode_image, encode_image, image_key, images_prefix, ImageRecord};
mod segment;
pub use segment::{
    decode_segment_ref, encode_packed_segment, encode_segment, encode_segment_ref, SegmentRef,
    SegmentView,
};

// ---- keys ----------------------------------------------------------------------------------

fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut key = Vec::with_capacity(len);
    key.push(tag);
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

pub fn user_key(id: UserId) -> Vec<u8> {
    key(TAG_USER, &[id.as_bytes()])
}
pub fn username_key(username: &str) -> Vec<u8> {
    key(TAG_USERNAME, &[username.as_bytes()])
}
pub fn email_key(email: &str) -> Vec<u8> {
    key(TAG_EMAIL, &[email.to_lowercase().as_bytes()])
}
pub fn token_key(hash: &[u8; 32]) -> Vec<u8> {
    key(TAG_TOKEN, &[hash])
}
pub fn token_id_key(id: TokenId) -> Vec<u8> {
    key(TAG_TOKEN_ID, &[id.as_bytes()])
}
pub fn app_key(id: AppId) -> Vec<u8> {
    key(TAG_APP, &[id.as_bytes()])
}
pub fn app_name_key(name: &str) -> Vec<u8> {
    key(TAG_APP_NAME, &[name.as_bytes()])
}
pub fn collaborator_key(app: AppId, user: UserId) -> Vec<u8> {
    key(TAG_COLLABORATOR, &[app.as_bytes(), user.as_bytes()])
}
pub fn collaborators_prefix(app: AppId) -> Vec<u8> {
    key(TAG_COLLABORATOR, &[app.as_bytes()])
}
pub fn deployment_key(id: DeploymentId) -> Vec<u8> {
    key(TAG_DEPLOYMENT, &[id.as_bytes()])
}
pub fn app_deployment_key(app: AppId, deployment: DeploymentId) -> Vec<u8> {
    key(TAG_APP_DEPLOYMENT, &[app.as_bytes(), deployment.as_bytes()])
}
pub fn app_deployments_prefix(app: AppId) -> Vec<u8> {
    key(TAG_APP_DEPLOYMENT, &[app.as_bytes()])
}
pub fn segment_key(deployment: DeploymentId, first_line: LineNo) -> Vec<u8> {
    key(
        TAG_SEGMENT,
        &[deployment.as_bytes(), &first_line.0.to_be_bytes()],
    )
}
pub fn segments_prefix(deployment: DeploymentId) -> Vec<u8> {
    key(TAG_SEGMENT, &[deployment.as_bytes()])
}
pub fn meta_key(name: &str) -> Vec<u8> {
    key(TAG_META, &[name.as_bytes()])
}
pub fn source_key(id: uuid::Uuid) -> Vec<u8> {
    key(TAG_SOURCE, &[id.as_bytes()])
}
pub fn token_scope_key(id: TokenId) -> Vec<u8> {
    key(TAG_TOKEN_SCOPES, &[id.as_bytes()])
}
pub fn app_status_key(app: AppId, status: Status, deployment: DeploymentId) -> Vec<u8> {
    key(
        TAG_APP_STATUS_INDEX,
        &[
            app.as_bytes(),
            &[status_code(status)],
            deployment.as_bytes(),
        ],
    )
}
/// The status index entries of one app at one status.
pub fn app_status_prefix(app: AppId, status: Status) -> Vec<u8> {
    key(
        TAG_APP_STATUS_INDEX,
        &[app.as_bytes(), &[status_code(status)]],
    )
}
/// Every status index entry of one app.
pub fn app_statuses_prefix(app: AppId) -> Vec<u8> {
    key(TAG_APP_STATUS_INDEX, &[app.as_bytes()])
}
pub fn unfinished_key(deployment: DeploymentId) -> Vec<u8> {
    key(TAG_UNFINISHED_INDEX, &[deployment.as_bytes()])
}

/// The id in the last 16 bytes of a key (index keys end with the id they point to).
pub fn trailing_id(key: &[u8]) -> Result<[u8; 16], CodecError> {
    key.len()
        .checked_sub(16)
        .and_then(|start| key[start..].try_into().ok())
        .ok_or(CodecError::Corrupt("key too short for an id"))
}

/// The first line number of a segment key.
pub fn segment_first_line(key: &[u8]) -> Result<LineNo, CodecError> {
    let bytes: [u8; 8] = key
        .get(17..25)
        .and_then(|b| b.try_into().ok())
        .ok_or(CodecError::Corrupt("segment key"))?;
    Ok(LineNo(u64::from_be_bytes(bytes)))
}

/// Decodes a 16-byte id value.
pub fn id_value(value: &[u8]) -> Result<[u8; 16], CodecError> {
    value
        .try_into()
        .map_err(|_| CodecError::Corrupt("id value is not 16 bytes"))
}

// ---- records -------------------------------------------------------------------------------

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    bincode::serialize_into(&mut out, value).expect("invariant: bincode to a Vec cannot fail");
    out
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(&FORMAT_V1) => Ok(bincode::deserialize(&bytes[1..])?),
        Some(&other) => Err(CodecError::UnknownFormat(other)),
    }
}

pub(super) fn nanos(at: OffsetDateTime) -> i64 {
    // i64 nanoseconds cover 1677..2262: wider than any time deployd records.
    at.unix_timestamp_nanos() as i64
}

pub(super) fn from_nanos(ns: i64) -> Result<OffsetDateTime, CodecError> {
    OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .map_err(|_| CodecError::Corrupt("timestamp"))
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StoredUser {
    pub id: [u8; 16],
    pub username: String,
    pub email: String,
    pub fullname: String,
    pub is_admin: bool,
    pub created_at: i64,
}

pub fn encode_user(user: &User) -> Vec<u8> {
    encode(&StoredUser {
        id: *user.id.as_bytes(),
        username: user.username.clone(),
        email: user.email.clone(),
        fullname: user.fullname.clone(),
        is_admin: user.is_admin,
        created_at: nanos(user.created_at),
    })
}

pub fn decode_user(bytes: &[u8]) -> Result<User, CodecError> {
    let s: StoredUser = decode(bytes)?;
    Ok(User {
        id: UserId::from_bytes(s.id),
        username: s.username,
        email: s.email,
        fullname: s.fullname,
        is_admin: s.is_admin,
        created_at: from_nanos(s.created_at)?,
    })
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StoredToken {
    pub id: [u8; 16],
    pub user_id: [u8; 16],
    pub name: String,
    pub created_at: i64,
}

pub fn encode_token(token: &Token) -> Vec<u8> {
    encode(&StoredToken {
        id: *token.id.as_bytes(),
        user_id: *token.user_id.as_bytes(),
        name: token.name.clone(),
        created_at: nanos(token.created_at),
    })
}

pub fn decode_token(bytes: &[u8]) -> Result<Token, CodecError> {
    let s: StoredToken = decode(bytes)?;
    Ok(Token {
        id: TokenId::from_bytes(s.id),
        user_id: UserId::from_bytes(s.user_id),
        name: s.name,
        created_at: from_nanos(s.created_at)?,
    })
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StoredApp {
    pub id: [u8; 16],
    pub name: String,
    pub owner: [u8; 16],
    pub git_source: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// (deployment id, at, username)
    pub last_deployment: Option<([u8; 16], i64, String)>,
}

pub fn encode_app(app: &App) -> Vec<u8> {
    encode(&StoredApp {
        id: *app.id.as_bytes(),
        name: app.name.clone(),
        owner: *app.owner.as_bytes(),
        git_source: app.git_source.clone(),
        created_at: nanos(app.created_at),
        updated_at: nanos(app.updated_at),
        last_deployment: app
            .last_deployment
            .as_ref()
            .map(|last| (*last.id.as_bytes(), nanos(last.at), last.by.clone())),
    })
}

pub fn decode_app(bytes: &[u8]) -> Result<App, CodecError> {
    let s: StoredApp = decode(bytes)?;
    Ok(App {
        id: AppId::from_bytes(s.id),
        name: s.name,
        owner: UserId::from_bytes(s.owner),
        git_source: s.git_source,
        created_at: from_nanos(s.created_at)?,
        updated_at: from_nanos(s.updated_at)?,
        last_deployment: match s.last_deployment {
            Some((id, at, by)) => Some(LastDeployment {
                id: DeploymentId::from_bytes(id),
                at: from_nanos(at)?,
                by,
            }),
            None => None,
        },
    })
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StoredCollaborator {
    pub id: [u8; 16],
    pub created_at: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StoredPusher {
    pub id: [u8; 16],
    pub username: String,
    pub email: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub enum StoredDriver {
    External,
    Executor {
        source_url: String,
        postdeploy_hook: Option<String>,
    },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StoredDeployment {
    pub id: [u8; 16],
    pub app_id: [u8; 16],
    pub created_at: i64,
    /// The status's code ([`status_code`]).
    pub status: u8,
    pub finished_at: Option<i64>,
    pub git_ref: String,
    pub previous_git_ref: Option<String>,
    pub pusher: StoredPusher,
    pub image_size: u64,
    pub driver: StoredDriver,
}

/// Encodes a deployment record. `last_line` is not stored: it is the end of the last segment.
pub fn encode_deployment(d: &Deployment) -> Vec<u8> {
    encode(&StoredDeployment {
        id: *d.id.as_bytes(),
        app_id: *d.app_id.as_bytes(),
        created_at: nanos(d.created_at),
        status: status_code(d.status),
        finished_at: d.finished_at.map(nanos),
        git_ref: d.git_ref.clone(),
        previous_git_ref: d.previous_git_ref.clone(),
        pusher: StoredPusher {
            id: *d.pusher.id.as_bytes(),
            username: d.pusher.username.clone(),
            email: d.pusher.email.clone(),
        },
        image_size: d.image_size,
        driver: match &d.driver {
            Driver::External => StoredDriver::External,
            Driver::Executor {
                source_url,
                postdeploy_hook,
            } => StoredDriver::Executor {
                source_url: source_url.clone(),
                postdeploy_hook: postdeploy_hook.clone(),
            },
        },
    })
}

/// Decodes a deployment record; `last_line` comes back as 0 (the store fills it in).
pub fn decode_deployment(bytes: &[u8]) -> Result<Deployment, CodecError> {
    let s: StoredDeployment = decode(bytes)?;
    Ok(Deployment {
        id: DeploymentId::from_bytes(s.id),
        app_id: AppId::from_bytes(s.app_id),
        created_at: from_nanos(s.created_at)?,
        status: status_from_code(s.status).ok_or(CodecError::Corrupt("status code"))?,
        finished_at: s.finished_at.map(from_nanos).transpose()?,
        git_ref: s.git_ref,
        previous_git_ref: s.previous_git_ref,
        pusher: Pusher {
            id: UserId::from_bytes(s.pusher.id),
            username: s.pusher.username,
            email: s.pusher.email,
        },
        image_size: s.image_size,
        driver: match s.driver {
            StoredDriver::External => Driver::External,
            StoredDriver::Executor {
                source_url,
                postdeploy_hook,
            } => Driver::Executor {
                source_url,
                postdeploy_hook,
            },
        },
        last_line: LineNo(0),
        image_kept: false,
    })
}

/// A collaboration with its role (the v2 collaborator record).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StoredCollaboratorV2 {
    pub id: [u8; 16],
    pub created_at: i64,
    pub is_limited: bool,
}

/// A decoded collaborator record, whichever version it was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollaboratorRecord {
    pub id: uuid::Uuid,
    pub since: OffsetDateTime,
    pub is_limited: bool,
}

/// Encodes a collaborator record (always v2).
pub fn encode_collaborator(record: &CollaboratorRecord) -> Vec<u8> {
    let mut out = vec![FORMAT_V2];
    bincode::serialize_into(
        &mut out,
        &StoredCollaboratorV2 {
            id: *record.id.as_bytes(),
            created_at: nanos(record.since),
            is_limited: record.is_limited,
        },
    )
    .expect("invariant: bincode to a Vec cannot fail");
    out
}

/// Decodes a v1 (never limited) or v2 collaborator record.
pub fn decode_collaborator(bytes: &[u8]) -> Result<CollaboratorRecord, CodecError> {
    let (id, created_at, is_limited) = match bytes.first() {
        Some(&FORMAT_V2) => {
            let s: StoredCollaboratorV2 = bincode::deserialize(&bytes[1..])?;
            (s.id, s.created_at, s.is_limited)
        }
        _ => {
            let s: StoredCollaborator = decode(bytes)?;
            (s.id, s.created_at, false)
        }
    };
    Ok(CollaboratorRecord {
        id: uuid::Uuid::from_bytes(id),
        since: from_nanos(created_at)?,
        is_limited,
    })
}

/// A token's scope (`0x17`): the scope's code ([`scope_code`]) and the apps it is limited to.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StoredGrant {
    pub scope: u8,
    pub apps: Option<Vec<[u8; 16]>>,
}

/// The one-byte code of a scope in [`StoredGrant`]. Never renumber.
pub fn scope_code(scope: Scope) -> u8 {
    match scope {
        Scope::Read => 0,
        Scope::Deploy => 1,
        Scope::Full => 2,
    }
}

pub fn encode_grant(grant: &Grant) -> Vec<u8> {
    encode(&StoredGrant {
        scope: scope_code(grant.scope),
        apps: grant
            .apps
            .as_ref()
            .map(|apps| apps.iter().map(|app| *app.as_bytes()).collect()),
    })
}

pub fn decode_grant(bytes: &[u8]) -> Result<Grant, CodecError> {
    let s: StoredGrant = decode(bytes)?;
    let scope = [Scope::Read, Scope::Deploy, Scope::Full]
        .into_iter()
        .find(|scope| scope_code(*scope) == s.scope)
        .ok_or(CodecError::Corrupt("scope code"))?;
    Ok(Grant {
        scope,
        apps: s
            .apps
            .map(|apps| apps.into_iter().map(AppId::from_bytes).collect()),
    })
}

/// An uploaded source archive (`POST /v1/sources`).
#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
pub struct StoredSource {
    pub id: [u8; 16],
    pub user_id: [u8; 16],
    pub expires_at: i64,
    pub uploaded: bool,
}

pub fn encode_source(source: &StoredSource) -> Vec<u8> {
    encode(source)
}

pub fn decode_source(bytes: &[u8]) -> Result<StoredSource, CodecError> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ns: i64) -> OffsetDateTime {
        from_nanos(ns).expect("valid")
    }

    #[test]
    fn golden_segment_bytes() {
        let lines = [(LogStream::Stdout, "hi"), (LogStream::System, "ok")];
        let bytes = encode_segment(at(1), lines.iter().copied(), 4);
        assert_eq!(
            bytes,
            vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 2, b'h', b'i', b'\n', b'o', b'k', b'\n']
        );
        let view = SegmentView::parse(&bytes).expect("parse");
        assert_eq!(view.stored_at_nanos, 1);
        assert_eq!(view.text, b"hi\nok\n");
        assert_eq!(view.text_from_line(1), b"ok\n");
        assert_eq!(view.text_from_line(2), b"");
        let got: Vec<_> = view.lines().collect();
        assert_eq!(got, lines.to_vec());
    }

    #[test]
    fn golden_segment_ref_bytes() {
        let segment = SegmentRef {
            offset: 258,
            len: 3,
            lines: 1,
        };
        let bytes = encode_segment_ref(&segment);
        assert_eq!(
            bytes,
            vec![2, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 3, 0, 0, 0, 1]
        );
        assert_eq!(decode_segment_ref(&bytes).expect("decode"), segment);
        assert_eq!(segment.end(), 261);
        assert!(decode_segment_ref(&bytes[..16]).is_err());
        assert!(decode_segment_ref(&[1; 17]).is_err());
    }

    #[test]
    fn golden_user_bytes() {
        let user = User {
            id: UserId::from_bytes([7; 16]),
            username: "ab".into(),
            email: "c".into(),
            fullname: String::new(),
            is_admin: true,
            created_at: at(2),
        };
        let bytes = encode_user(&user);
        let mut expected = vec![FORMAT_V1];
        expected.extend([7u8; 16]);
        expected.extend(2u64.to_le_bytes());
        expected.extend(b"ab");
        expected.extend(1u64.to_le_bytes());
        expected.extend(b"c");
        expected.extend(0u64.to_le_bytes());
        expected.push(1);
        expected.extend(2i64.to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(decode_user(&bytes).expect("decode"), user);
    }

    #[test]
    fn golden_segment_key() {
        let id = DeploymentId::from_bytes([0xAB; 16]);
        let key = segment_key(id, LineNo(258));
        let mut expected = vec![TAG_SEGMENT];
        expected.extend([0xAB; 16]);
        expected.extend([0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(key, expected);
        assert_eq!(segment_first_line(&key).expect("line"), LineNo(258));
    }

    #[test]
    fn unknown_format_is_refused() {
        assert!(matches!(
            decode_user(&[9, 0]),
            Err(CodecError::UnknownFormat(9))
        ));
        assert!(matches!(decode_user(&[]), Err(CodecError::Empty)));
        assert!(SegmentView::parse(&[1, 0]).is_err());
    }

    fn sample_deployment(status: Status, hook: Option<String>) -> Deployment {
        Deployment {
            id: DeploymentId::from_bytes([1; 16]),
            app_id: AppId::from_bytes([2; 16]),
            created_at: at(1_700_000_000_000_000_000),
            status,
            finished_at: status.is_terminal().then(|| at(1_700_000_001_000_000_000)),
            git_ref: "main".into(),
            previous_git_ref: Some("abc".into()),
            pusher: Pusher {
                id: UserId::from_bytes([3; 16]),
                username: "admin".into(),
                email: "a@b".into(),
            },
            image_size: 42,
            driver: match hook {
                Some(h) => Driver::Executor {
                    source_url: "http://x".into(),
                    postdeploy_hook: Some(h),
                },
                None => Driver::External,
            },
            last_line: LineNo(0),
            image_kept: false,
        }
    }

    #[test]
    fn a_v1_collaborator_reads_back_as_not_limited_and_v2_keeps_the_role() {
        let mut v1 = vec![FORMAT_V1];
        v1.extend([4u8; 16]);
        v1.extend(5i64.to_le_bytes());
        let record = decode_collaborator(&v1).expect("v1");
        assert_eq!(record.id, uuid::Uuid::from_bytes([4; 16]));
        assert_eq!(record.since, at(5));
        assert!(!record.is_limited);
        let limited = CollaboratorRecord {
            is_limited: true,
            ..record
        };
        let bytes = encode_collaborator(&limited);
        let mut expected = v1.clone();
        expected[0] = FORMAT_V2;
        expected.push(1);
        assert_eq!(bytes, expected);
        assert_eq!(decode_collaborator(&bytes).expect("v2"), limited);
        assert!(decode_collaborator(&[3, 0]).is_err());
    }

    #[test]
    fn grants_round_trip_with_stable_scope_codes() {
        let codes: Vec<u8> = [Scope::Read, Scope::Deploy, Scope::Full]
            .into_iter()
            .map(scope_code)
            .collect();
        assert_eq!(codes, vec![0, 1, 2]);
        for grant in [
            Grant::full(),
            Grant {
                scope: Scope::Deploy,
                apps: Some(vec![AppId::from_bytes([8; 16])]),
            },
        ] {
            assert_eq!(decode_grant(&encode_grant(&grant)).expect("decode"), grant);
        }
        assert!(decode_grant(&[FORMAT_V1, 9, 0]).is_err());
    }

    #[test]
    fn no_two_features_share_a_key_tag() {
        let mut tags = ALL_TAGS.to_vec();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ALL_TAGS.len(), "a key tag is used twice");
        assert!(!tags.contains(&0), "tag 0 stays unused");
    }

    #[test]
    fn status_and_stream_codes_round_trip_and_never_change() {
        let codes: Vec<u8> = Status::ALL.iter().map(|s| status_code(*s)).collect();
        assert_eq!(codes, (0..10).collect::<Vec<u8>>());
        for status in Status::ALL {
            assert_eq!(status_from_code(status_code(status)), Some(status));
        }
        assert_eq!(status_from_code(10), None);
        for (stream, code) in [
            (LogStream::Stdout, 0),
            (LogStream::Stderr, 1),
            (LogStream::System, 2),
        ] {
            assert_eq!(log_stream_code(stream), code);
            assert_eq!(log_stream_from_code(code), Some(stream));
        }
        assert_eq!(log_stream_from_code(3), None);
    }

    #[test]
    fn deployment_round_trip() {
        for status in Status::ALL {
            for hook in [None, Some("echo hi".to_string())] {
                let d = sample_deployment(status, hook);
                assert_eq!(
                    decode_deployment(&encode_deployment(&d)).expect("decode"),
                    d
                );
            }
        }
    }

    /// Generated `(text, stream code)` pairs as a segment's lines.
    fn stored_lines(lines: &[(String, u8)]) -> Vec<(LogStream, &str)> {
        lines
            .iter()
            .map(|(t, c)| (log_stream_from_code(*c).expect("code"), t.as_str()))
            .collect()
    }

    proptest! {
        #[test]
        fn segments_round_trip(lines in proptest::collection::vec(("[^\n]{0,40}", 0u8..3), 0..50), ns in any::<i64>()) {
            let input = stored_lines(&lines);
            let bytes = encode_segment(at(ns), input.iter().copied(), 0);
            let view = SegmentView::parse(&bytes).expect("parse");
            prop_assert_eq!(view.stored_at_nanos, ns);
            prop_assert_eq!(view.line_count(), input.len());
            let got: Vec<_> = view.lines().collect();
            prop_assert_eq!(got, input.clone());
            for skip in 0..=input.len() {
                let expected: String = input[skip..].iter().map(|(_, t)| format!("{t}\n")).collect();
                prop_assert_eq!(view.text_from_line(skip), expected.as_bytes());
            }
        }

        #[test]
        fn a_packed_segment_is_byte_for_byte_the_per_line_encoding(lines in proptest::collection::vec(("[^\n]{0,40}", 0u8..3), 0..50), ns in any::<i64>()) {
            let input = stored_lines(&lines);
            let text: String = input.iter().map(|(_, t)| format!("{t}\n")).collect();
            let packed = encode_packed_segment(at(ns), input.iter().map(|(s, _)| *s), text.as_bytes());
            prop_assert_eq!(packed, encode_segment(at(ns), input.iter().copied(), 0));
        }

        #[test]
        fn apps_round_trip(name in "[a-z0-9-]{3,48}", src in proptest::option::of("[ -~]{0,60}"), last in any::<bool>()) {
            let app = App {
                id: AppId::from_bytes([5; 16]),
                name,
                owner: UserId::from_bytes([6; 16]),
                git_source: src,
                created_at: at(10),
                updated_at: at(20),
                last_deployment: last.then(|| LastDeployment { id: DeploymentId::from_bytes([9; 16]), at: at(30), by: "x".into() }),
            };
            prop_assert_eq!(decode_app(&encode_app(&app)).expect("decode"), app);
        }
    }
}
