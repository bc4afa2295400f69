//! The store: every byte on disk. Reads go straight to the engine from any thread (through
//! `spawn_blocking` on async paths); every write goes through the single [`writer`] thread,
//! which validates, commits in groups, makes each commit durable and only then publishes.
//!
//! The named records every request reads (users, tokens, apps, collaborations) are point gets
//! through [`cache`], in memory, which only the writer invalidates.
//!
//! Submodules: [`codec`] (key layout and value encodings, documented there), [`engine`] (the
//! engine trait, sled and in-memory implementations), [`logs`] (the log segment files the
//! engine's index points into), [`writer`] (the one writer), [`counts`] (the deployment counts'
//! build and check; the listing's seeks are in `index`); in tests and `test-support`
//! builds, `faults` (injected failures for the engine and the log files).

pub mod cache;
pub mod codec;
pub mod counts;
pub mod damage;
pub mod engine;
pub mod events;
#[cfg(any(test, feature = "test-support"))]
pub mod faults;
mod index;
pub mod logs;
pub mod replicate;
pub mod timeline_codec;
mod timeline_reads;
pub mod writer;

use std::sync::Arc;

use crate::model::{
    App, AppId, Collaborator, Deployment, DeploymentId, Grant, LineNo, Token, TokenId, User, UserId,
};
use codec::CodecError;
use engine::{prefix_end, Engine, EngineError};

/// Largest log segment the writer builds. A bigger batch is split over several segments, so
/// one hub event and one read stay bounded.
pub const MAX_SEGMENT_BYTES: usize = 1024 * 1024;

/// One encoded log segment (its layout is in [`codec`]), shared without copying: the group
/// commit writes it to the log file and hands the same bytes to the hub event, and a read
/// returns it as read. Only [`Segment::view`] interprets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment(bytes::Bytes);

impl Segment {
    /// Encodes lines that contain no `\n` (see [`codec::encode_segment`]).
    pub fn encode<'a>(
        stored_at: time::OffsetDateTime,
        lines: impl ExactSizeIterator<Item = (crate::model::LogStream, &'a str)> + Clone,
        text_len: usize,
    ) -> Segment {
        Segment(bytes::Bytes::from(codec::encode_segment(
            stored_at, lines, text_len,
        )))
    }

    /// Encodes lines laid out as a segment's text (see [`codec::encode_packed_segment`]).
    pub fn encode_packed(
        stored_at: time::OffsetDateTime,
        streams: impl ExactSizeIterator<Item = crate::model::LogStream>,
        text: &[u8],
    ) -> Segment {
        Segment(bytes::Bytes::from(codec::encode_packed_segment(
            stored_at, streams, text,
        )))
    }

    /// Bytes read back from a log file, as the index says a segment lies there; not checked
    /// until [`Segment::view`].
    pub fn from_stored(bytes: impl Into<bytes::Bytes>) -> Segment {
        Segment(bytes.into())
    }

    /// The decoded header, stream codes and text, borrowing the bytes.
    pub fn view(&self) -> Result<codec::SegmentView<'_>, CodecError> {
        codec::SegmentView::parse(&self.0)
    }

    /// The encoded bytes (what the log file holds).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A read failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("corrupt record: {0}")]
    Codec(#[from] CodecError),
    #[error("log file: {0}")]
    LogFile(#[from] std::io::Error),
}

/// Read access to everything stored. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    logs: Arc<logs::LogFiles>,
    /// The named records' point gets (`cache`), shared by every clone.
    cache: Arc<cache::RecordCache>,
    /// Cluster mode's leader: where every write goes before it is applied here (`replicate`);
    /// `None` for a single node and for replicas.
    replication: Option<Arc<replicate::Replication>>,
    /// Cluster mode's leader: where files the records refer to are replicated
    /// (`cluster::files`); `None` on a single node.
    files: Option<Arc<dyn crate::cluster::files::ReplicateFiles>>,
}

impl Store {
    pub fn new(engine: Arc<dyn Engine>, logs: logs::LogFiles) -> Self {
        Self {
            engine,
            logs: Arc::new(logs),
            cache: Arc::default(),
            replication: None,
            files: None,
        }
    }

    /// This store with the hook that replicates files (cluster mode's leader): the call sites
    /// that write or remove sources, images and caches reach it through [`Store::files`].
    pub fn with_files(mut self, files: Arc<dyn crate::cluster::files::ReplicateFiles>) -> Self {
        self.files = Some(files);
        self
    }

    /// The files hook, if this node replicates its files (`None` on a single node).
    pub fn files(&self) -> Option<&Arc<dyn crate::cluster::files::ReplicateFiles>> {
        self.files.as_ref()
    }

    /// The same local engine and log files, with every write replicated to `target` before it
    /// is applied (cluster mode's leader, see `replicate`). A fresh record cache: the store it
    /// comes from must no longer be written.
    pub fn replicated(&self, target: Arc<dyn replicate::Replicate>) -> Store {
        let replication = Arc::new(replicate::Replication::new(target));
        Self {
            engine: Arc::new(replicate::ReplicatedEngine::new(
                self.engine.clone(),
                replication.clone(),
            )),
            logs: self.logs.clone(),
            cache: Arc::default(),
            replication: Some(replication),
            files: self.files.clone(),
        }
    }

    /// Where this store's writes are replicated, if anywhere.
    pub fn replication(&self) -> Option<&Arc<replicate::Replication>> {
        self.replication.as_ref()
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn logs(&self) -> &logs::LogFiles {
        &self.logs
    }

    /// Bytes on disk: the engine plus the log files.
    pub fn size_on_disk(&self) -> u64 {
        self.engine.size_on_disk() + self.logs.size_on_disk()
    }

    fn get_with<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, CodecError>,
    ) -> Result<Option<T>, StoreError> {
        match self.point_get(key)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn id_at(&self, key: &[u8]) -> Result<Option<[u8; 16]>, StoreError> {
        self.get_with(key, codec::id_value)
    }

    pub fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.get_with(&codec::user_key(id), codec::decode_user)
    }

    pub fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        match self.id_at(&codec::username_key(username))? {
            Some(id) => self.user(UserId::from_bytes(id)),
            None => Ok(None),
        }
    }

    pub fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        match self.id_at(&codec::email_key(email))? {
            Some(id) => self.user(UserId::from_bytes(id)),
            None => Ok(None),
        }
    }

    pub fn user_count(&self) -> Result<usize, StoreError> {
        let prefix = [codec::TAG_USER];
        let mut count = 0;
        for entry in self.engine.range(&prefix, &prefix_end(&prefix), false) {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    /// The token whose secret hashes to `hash`.
    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<Token>, StoreError> {
        self.get_with(&codec::token_key(hash), codec::decode_token)
    }

    /// Whether the token with this id still exists (JWTs die with the token they came from).
    pub fn token_exists(&self, id: TokenId) -> Result<bool, StoreError> {
        Ok(self.point_get(&codec::token_id_key(id))?.is_some())
    }

    /// The hash of a token by id, to revoke it.
    pub fn token_hash(&self, id: TokenId) -> Result<Option<[u8; 32]>, StoreError> {
        self.get_with(&codec::token_id_key(id), |bytes| {
            bytes
                .try_into()
                .map_err(|_| CodecError::Corrupt("token hash is not 32 bytes"))
        })
    }

    /// Every token of a user (a scan: users have few tokens and this is not a hot path).
    pub fn tokens_of(&self, user: UserId) -> Result<Vec<Token>, StoreError> {
        let prefix = [codec::TAG_TOKEN];
        let mut out = Vec::new();
        for entry in self.engine.range(&prefix, &prefix_end(&prefix), false) {
            let token = codec::decode_token(&entry?.1)?;
            if token.user_id == user {
                out.push(token);
            }
        }
        out.sort_by_key(|t| t.id);
        Ok(out)
    }

    pub fn app(&self, id: AppId) -> Result<Option<App>, StoreError> {
        self.get_with(&codec::app_key(id), codec::decode_app)
    }

    pub fn app_by_name(&self, name: &str) -> Result<Option<App>, StoreError> {
        match self.id_at(&codec::app_name_key(name))? {
            Some(id) => self.app(AppId::from_bytes(id)),
            None => Ok(None),
        }
    }

    /// Every app, in id (creation) order.
    pub fn all_apps(&self) -> Result<Vec<App>, StoreError> {
        let prefix = [codec::TAG_APP];
        self.engine
            .range(&prefix, &prefix_end(&prefix), false)
            .map(|entry| Ok(codec::decode_app(&entry?.1)?))
            .collect()
    }

    pub fn is_collaborator(&self, app: AppId, user: UserId) -> Result<bool, StoreError> {
        Ok(self
            .point_get(&codec::collaborator_key(app, user))?
            .is_some())
    }

    /// The collaborators of an app (users since deleted are left out).
    pub fn collaborators(&self, app: AppId) -> Result<Vec<Collaborator>, StoreError> {
        let prefix = codec::collaborators_prefix(app);
        let mut out = Vec::new();
        for entry in self.engine.range(&prefix, &prefix_end(&prefix), false) {
            let (key, value) = entry?;
            let user_id = UserId::from_bytes(codec::trailing_id(&key)?);
            let record = codec::decode_collaborator(&value)?;
            if let Some(user) = self.user(user_id)? {
                out.push(Collaborator {
                    id: record.id,
                    user,
                    since: record.since,
                    is_limited: record.is_limited,
                });
            }
        }
        Ok(out)
    }

    /// `user`'s collaboration record on `app`, if any.
    pub fn collaboration(
        &self,
        app: AppId,
        user: UserId,
    ) -> Result<Option<codec::CollaboratorRecord>, StoreError> {
        self.get_with(
            &codec::collaborator_key(app, user),
            codec::decode_collaborator,
        )
    }

    /// A token's scope; a token without a stored one is [`Grant::full`].
    pub fn token_grant(&self, id: TokenId) -> Result<Grant, StoreError> {
        Ok(self
            .get_with(&codec::token_scope_key(id), codec::decode_grant)?
            .unwrap_or_else(Grant::full))
    }

    /// A deployment with `last_line` filled in from its last segment and `image_kept` from its
    /// image record.
    pub fn deployment(&self, id: DeploymentId) -> Result<Option<Deployment>, StoreError> {
        let Some(mut deployment) = self.deployment_for_view(id)? else {
            return Ok(None);
        };
        deployment.last_line = self.last_line(id)?;
        Ok(Some(deployment))
    }

    /// What the API's views show of a deployment (`api::views`): [`Store::deployment`] without
    /// `last_line`, which is left at 0. Filling it is a reverse range read of the deployment's
    /// segments (sled clones a leaf node for it), the largest store cost of a page of 20, and
    /// no view shows it; so only for rendering.
    pub fn deployment_for_view(&self, id: DeploymentId) -> Result<Option<Deployment>, StoreError> {
        let Some(mut deployment) =
            self.get_with(&codec::deployment_key(id), codec::decode_deployment)?
        else {
            return Ok(None);
        };
        deployment.image_kept = deployment.status == crate::status::Status::Success
            && self.engine.get(&codec::image_key(id))?.is_some();
        Ok(Some(deployment))
    }

    /// The last line number stored for a deployment (0 when none).
    pub fn last_line(&self, id: DeploymentId) -> Result<LineNo, StoreError> {
        Ok(self.log_end(id)?.0)
    }

    /// The last line number and the end of the log file's indexed part (0, 0 when none).
    pub fn log_end(&self, id: DeploymentId) -> Result<(LineNo, u64), StoreError> {
        let prefix = codec::segments_prefix(id);
        match self
            .engine
            .range(&prefix, &prefix_end(&prefix), true)
            .next()
        {
            Some(entry) => {
                let (key, value) = entry?;
                let first = codec::segment_first_line(&key)?;
                let segment = codec::decode_segment_ref(&value)?;
                Ok((
                    LineNo(first.0 + u64::from(segment.lines) - 1),
                    segment.end(),
                ))
            }
            None => Ok((LineNo(0), 0)),
        }
    }

    /// Number of deployments of an app.
    pub fn deployment_count(&self, app: AppId) -> Result<u64, StoreError> {
        let prefix = codec::app_deployments_prefix(app);
        let mut count = 0;
        for entry in self.engine.range(&prefix, &prefix_end(&prefix), false) {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    /// Ids of an app's deployments, newest first, skipping `offset`, at most `limit`.
    pub fn deployment_ids(
        &self,
        app: AppId,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<DeploymentId>, StoreError> {
        let prefix = codec::app_deployments_prefix(app);
        let mut out = Vec::new();
        for entry in self
            .engine
            .range(&prefix, &prefix_end(&prefix), true)
            .skip(offset as usize)
            .take(limit as usize)
        {
            let (key, _) = entry?;
            out.push(DeploymentId::from_bytes(codec::trailing_id(&key)?));
        }
        Ok(out)
    }

    /// Every deployment record (recovery at startup).
    pub fn all_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let prefix = [codec::TAG_DEPLOYMENT];
        let mut out = Vec::new();
        for entry in self.engine.range(&prefix, &prefix_end(&prefix), false) {
            out.push(codec::decode_deployment(&entry?.1)?);
        }
        Ok(out)
    }

    /// The segments holding lines after `after`, in order: `(first line, segment)`.
    /// The first segment may start at or before `after`; callers skip what they already have.
    pub fn segments_after(
        &self,
        id: DeploymentId,
        after: LineNo,
    ) -> impl Iterator<Item = Result<(LineNo, Segment), StoreError>> + '_ {
        let prefix = codec::segments_prefix(id);
        let end = prefix_end(&prefix);
        // The segment holding line after+1 starts at or before it: find the last such key.
        let probe = codec::segment_key(id, after.next());
        let mut probe_end = probe.clone();
        probe_end.push(0);
        let start = match self.engine.range(&prefix, &probe_end, true).next() {
            Some(Ok((key, _))) => key,
            _ => prefix.clone(),
        };
        let mut file: Option<std::fs::File> = None;
        self.engine.range(&start, &end, false).map(move |entry| {
            let (key, value) = entry?;
            let first = codec::segment_first_line(&key)?;
            let segment = codec::decode_segment_ref(&value)?;
            let file = match &mut file {
                Some(file) => file,
                slot => slot.insert(self.logs.open_for_read(id)?),
            };
            let bytes = logs::LogFiles::read_at(file, segment.offset, segment.len as usize)?;
            Ok((first, Segment::from_stored(bytes)))
        })
    }

    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.engine.get(&codec::meta_key(name))?)
    }

    pub fn source(&self, id: uuid::Uuid) -> Result<Option<codec::StoredSource>, StoreError> {
        self.get_with(&codec::source_key(id), codec::decode_source)
    }
}
