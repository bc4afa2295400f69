//! Source archive uploads (`POST /v1/sources`, compat.md): pre-authenticated upload and
//! download URLs, valid ten minutes, signed with the install's secret. A deployment whose
//! `source_url` is one of our download URLs reads the archive straight from disk.
//!
//! URL shape: `{public_url}/v1/sources/{id}/archive?expires={unix}&signature={hex}` where the
//! signature is HMAC-SHA256 over `"{PUT|GET} {id} {expires}"`.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

use super::access::Caller;
use super::{ApiError, AppState};
use crate::store::codec::StoredSource;

/// How long upload and download URLs stay valid (compat.md: 10 minutes).
pub const SOURCE_URL_LIFETIME_SECS: i64 = 600;

fn signature(secret: &[u8], method: &str, id: uuid::Uuid, expires: i64) -> String {
    let mut mac =
        <Hmac<Sha256>>::new_from_slice(secret).expect("invariant: HMAC takes any key length");
    mac.update(format!("{method} {id} {expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn verify(secret: &[u8], method: &str, id: uuid::Uuid, expires: i64, given: &str) -> bool {
    let Ok(given) = hex::decode(given) else {
        return false;
    };
    let mut mac =
        <Hmac<Sha256>>::new_from_slice(secret).expect("invariant: HMAC takes any key length");
    mac.update(format!("{method} {id} {expires}").as_bytes());
    mac.verify_slice(&given).is_ok()
}

fn signed_url(state: &AppState, method: &str, id: uuid::Uuid, expires: i64) -> String {
    format!(
        "{}/v1/sources/{id}/archive?expires={expires}&signature={}",
        state.config.public_url,
        signature(&state.secret, method, id, expires)
    )
}

/// Where an uploaded archive lives.
pub fn archive_path(state: &AppState, id: uuid::Uuid) -> PathBuf {
    state.config.sources_dir().join(format!("{id}.tar.gz"))
}

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
            "upload_url": signed_url(&state, "PUT", id, expires),
            "download_url": signed_url(&state, "GET", id, expires),
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
    method: &str,
    id: &str,
    signed: &Signed,
) -> Result<uuid::Uuid, ApiError> {
    let id: uuid::Uuid = id.parse().map_err(|_| ApiError::NotFound("source"))?;
    if !verify(&state.secret, method, id, signed.expires, &signed.signature) {
        return Err(ApiError::Forbidden("invalid signature".into()));
    }
    if OffsetDateTime::now_utc().unix_timestamp() > signed.expires {
        return Err(ApiError::Forbidden("this URL has expired".into()));
    }
    Ok(id)
}

/// `PUT` on an upload URL: stores the archive (size-limited while streaming) → 200.
pub async fn upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(signed): Query<Signed>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let id = check(&state, "PUT", &id, &signed)?;
    let mut record = state
        .read(move |store| store.source(id))
        .await?
        .ok_or(ApiError::NotFound("source"))?;
    let limit = state.config.limits.max_upload_bytes;
    let dir = state.config.sources_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
    let final_path = archive_path(&state, id);
    let partial = final_path.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", partial.display())))?;
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
                .map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
        }
        file.sync_all()
            .await
            .map_err(|e| ApiError::Internal(format!("syncing the upload: {e}")))
    }
    .await;
    if let Err(err) = outcome {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(err);
    }
    tokio::fs::rename(&partial, &final_path)
        .await
        .map_err(|e| ApiError::Internal(format!("storing the upload: {e}")))?;
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
    let id = check(&state, "GET", &id, &signed)?;
    let file = tokio::fs::File::open(archive_path(&state, id))
        .await
        .map_err(|_| ApiError::NotFound("source"))?;
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok((
        [(header::CONTENT_TYPE, "application/x-gzip")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Whether `url` points at this server's sources.
pub fn is_own_url(state: &AppState, url: &str) -> bool {
    url.starts_with(&format!("{}/v1/sources/", state.config.public_url))
}

fn parse_own_url(state: &AppState, url: &str) -> Option<(uuid::Uuid, Signed)> {
    let rest = url.strip_prefix(&format!("{}/v1/sources/", state.config.public_url))?;
    let (id, query) = rest.split_once("/archive?")?;
    let id = id.parse().ok()?;
    let mut expires = None;
    let mut signature = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = v.parse().ok(),
            Some(("signature", v)) => signature = Some(v.to_string()),
            _ => {}
        }
    }
    Some((
        id,
        Signed {
            expires: expires?,
            signature: signature?,
        },
    ))
}

/// The uploaded archive a download URL of ours designates, if its signature is valid and the
/// file is there. Expiry is not checked here: it is checked when the deployment is triggered,
/// and a deployment queued or recovered later must still find its archive.
pub fn local_archive(state: &AppState, url: &str) -> Option<PathBuf> {
    let (id, signed) = parse_own_url(state, url)?;
    if !verify(&state.secret, "GET", id, signed.expires, &signed.signature) {
        return None;
    }
    let path = archive_path(state, id);
    path.is_file().then_some(path)
}

/// Like [`local_archive`], and the URL has not expired.
pub fn live_local_archive(state: &AppState, url: &str) -> Option<PathBuf> {
    let (_, signed) = parse_own_url(state, url)?;
    if OffsetDateTime::now_utc().unix_timestamp() > signed.expires {
        return None;
    }
    local_archive(state, url)
}
