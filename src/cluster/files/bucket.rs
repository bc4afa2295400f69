//! The bucket [`FILES_BUCKET`] itself: opening (or creating) it, and what it holds as the
//! stream's leader has it (listings and single-object reads that never come from a lagging
//! replica).

use async_nats::jetstream::object_store::{self, ObjectInfo, ObjectStore};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, StorageType, Stream};
use base64::Engine as _;
use futures_util::StreamExt;

use super::FilesError;
use crate::cluster::FILES_BUCKET;

/// The bucket [`FILES_BUCKET`]: its object store, and the stream under it (for listings the
/// stream's leader answers, see [`list`]).
pub struct Bucket {
    pub(super) objects: ObjectStore,
    pub(super) stream: Stream,
}

/// Opens the bucket [`FILES_BUCKET`], creating it (file storage, `replicas` copies) when it
/// does not exist yet.
pub async fn ensure_bucket(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<Bucket, FilesError> {
    let objects = match js.get_object_store(FILES_BUCKET).await {
        Ok(objects) => objects,
        // Missing, most likely; anything else (the engine unreachable) fails the creation too,
        // with its own cause.
        Err(err)
            if err.kind() == async_nats::jetstream::context::ObjectStoreErrorKind::GetStore =>
        {
            js.create_object_store(object_store::Config {
                bucket: FILES_BUCKET.to_owned(),
                description: Some(
                    "deployd: uploaded sources, kept images, build caches".to_owned(),
                ),
                storage: StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|err| FilesError::engine("creating the bucket", err))?
        }
        Err(err) => return Err(FilesError::engine("opening the bucket", err)),
    };
    let stream = bucket_stream(js).await?;
    Ok(Bucket { objects, stream })
}

/// The stream that holds the bucket's chunks and metadata.
pub(super) async fn bucket_stream(
    js: &async_nats::jetstream::Context,
) -> Result<Stream, FilesError> {
    js.get_stream(format!("OBJ_{FILES_BUCKET}"))
        .await
        .map_err(|err| FilesError::engine("opening the bucket's stream", err))
}

/// Every live object's info (a scan of the bucket's metadata, never of its bytes), as the
/// stream's leader has it: the names from the stream's info, each one's last metadata message
/// from a leader read.
///
/// Not `ObjectStore::list`: its ordered consumer may be placed on a replica that has not yet
/// applied the latest puts, and it ends at once when that replica reports nothing pending. A
/// mirror catching up from such a listing removed every file it had (`cluster_files`, once, in a
/// cold CI run on two loaded cores): a listing must never miss a committed object.
pub(super) async fn list(stream: &Stream) -> Result<Vec<ObjectInfo>, FilesError> {
    let mut subjects = stream
        .info_with_subjects(format!("$O.{FILES_BUCKET}.M.>"))
        .await
        .map_err(|err| FilesError::engine("listing", err))?;
    let mut names = Vec::new();
    while let Some(entry) = subjects.next().await {
        let (subject, _messages) = entry.map_err(|err| FilesError::engine("listing", err))?;
        names.push(subject);
    }
    let mut out = Vec::with_capacity(names.len());
    for subject in names {
        if let Some(info) = last_info(stream, &subject).await? {
            out.push(info);
        }
    }
    Ok(out)
}

/// The object `name`'s info as the stream's leader has it, `None` when there is no such live
/// object. What a listing says is missing is checked with this before a file is removed for it.
pub(super) async fn committed_info(
    stream: &Stream,
    name: &str,
) -> Result<Option<ObjectInfo>, FilesError> {
    let subject = format!(
        "$O.{FILES_BUCKET}.M.{}",
        base64::engine::general_purpose::URL_SAFE.encode(name)
    );
    last_info(stream, &subject).await
}

/// The last metadata message on `subject` (a leader read), unless it is absent or a deletion.
async fn last_info(stream: &Stream, subject: &str) -> Result<Option<ObjectInfo>, FilesError> {
    let message = match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => message,
        // Never put, or purged since the stream's info was read.
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(err) => return Err(FilesError::engine("reading an object's info", err)),
    };
    let info: ObjectInfo = serde_json::from_slice(&message.payload).map_err(|err| {
        FilesError::engine(
            "reading an object's info",
            format!("the metadata on {subject}: {err}"),
        )
    })?;
    Ok((!info.deleted).then_some(info))
}
