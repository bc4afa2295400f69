//! Source archive uploads (`POST /v1/sources`, compat.md): the HTTP side of the
//! pre-authenticated upload and download URLs that `crate::sources` signs and checks. A
//! deployment whose `source_url` is one of our download URLs reads the archive straight from
//! disk (see `sessions`).

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

use super::access::Caller;
use super::{ApiError, AppState};
use crate::sources::{Access, SOURCE_URL_LIFETIME_SECS};
use crate::store::codec::StoredSource;

/// `POST /v1/sources` → 201 `{"source":{"upload_url","download_url"}}`.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let id = uuid::Uuid::now_v7();
    let expires = OffsetDateTime::now_utc().unix_timestamp() + SOURCE_URL_LIFETIME_SECS;
    state
        .writer
        .put_source(StoredSource {
            id: *id.as_bytes(),
            user_id: *caller.user.id.as_bytes(),
            expires_at: expires,
            uploaded: false,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "source": {
            "upload_url": state.sources.signed_url(Access::Upload, id, expires),
            "download_url": state.sources.signed_url(Access::Download, id, expires),
        }})),
    ))
}

#[derive(Deserialize)]
pub struct Signed {
    expires: i64,
    signature: String,
}

fn check(
    state: &AppState,
    access: Access,
    id: &str,
    signed: &Signed,
) -> Result<uuid::Uuid, ApiError> {
    let id: uuid::Uuid = id.parse().map_err(|_| ApiError::NotFound("source"))?;
    state
        .sources
        .check(
            access,
            id,
            signed.expires,
            &signed.signature,
            OffsetDateTime::now_utc().unix_timestamp(),
        )
        .map_err(|err| ApiError::Forbidden(err.to_string()))?;
    Ok(id)
}

/// `PUT` on an upload URL: stores the archive (size-limited while streaming) → 200.
pub async fn upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(signed): Query<Signed>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let id = check(&state, Access::Upload, &id, &signed)?;
    let mut record = state
        .read(move |store| store.source(id))
        .await?
        .ok_or(ApiError::NotFound("source"))?;
    let limit = state.config.limits.max_upload_bytes;
    let dir = state.sources.dir().to_path_buf();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::internal(format!("creating {}", dir.display()), e))?;
    let final_path = state.sources.archive_path(id);
    let partial = final_path.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| ApiError::internal(format!("creating {}", partial.display()), e))?;
    let mut body = request.into_body().into_data_stream();
    let mut written: u64 = 0;
    let outcome: Result<(), ApiError> = async {
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("reading the upload: {e}")))?;
            written += chunk.len() as u64;
            if written > limit {
                return Err(ApiError::PayloadTooLarge(format!(
                    "archive larger than {limit} bytes"
                )));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError::internal("writing the upload", e))?;
        }
        file.sync_all()
            .await
            .map_err(|e| ApiError::internal("syncing the upload", e))
    }
    .await;
    if let Err(err) = outcome {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(err);
    }
    tokio::fs::rename(&partial, &final_path)
        .await
        .map_err(|e| ApiError::internal("storing the upload", e))?;
    // Cluster mode: in the object store before the record says it is uploaded.
    crate::cluster::files::put_async(
        state.store.files().cloned(),
        crate::cluster::files::source_name(id),
    )
    .await
    .map_err(|e| ApiError::Unavailable(format!("cannot store the upload in the cluster: {e}")))?;
    record.uploaded = true;
    state.writer.put_source(record).await?;
    Ok((StatusCode::OK, Json(json!({}))))
}

/// `GET` on a download URL: the uploaded archive.
pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(signed): Query<Signed>,
) -> Result<Response, ApiError> {
    let id = check(&state, Access::Download, &id, &signed)?;
    let file = tokio::fs::File::open(state.sources.archive_path(id))
        .await
        .map_err(|_| ApiError::NotFound("source"))?;
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok((
        [(header::CONTENT_TYPE, "application/x-gzip")],
        Body::from_stream(stream),
    )
        .into_response())
}
