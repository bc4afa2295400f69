//! Deployment output: the plain-text `/output`, and (issue 3) the live WebSocket stream and the
//! followed output.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;

use super::access::Caller;
use super::deployments::find_deployment;
use super::{ApiError, AppState};
use crate::model::{Deployment, DeploymentId, LineNo};
use crate::store::codec::SegmentView;

/// Segments read per blocking store call while streaming output.
const OUTPUT_SEGMENTS_PER_READ: usize = 64;

/// `GET /v1/apps/{app}/deployments/{id}/output`: `text/plain` whatever `Accept` says, streamed
/// from the store segment by segment; 404 JSON when there is no output.
pub async fn output(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (app, _) = caller.app(&state, &app).await?;
    let deployment = find_deployment(&state, &app, &id).await?;
    plain_output(state, deployment)
}

/// `GET /v1/deployments/{id}/output`: the same, for the `links.output` shape of the spec's
/// example object.
pub async fn output_by_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: DeploymentId = id.parse().map_err(|_| ApiError::NotFound("deployment"))?;
    let deployment = state
        .read(move |store| store.deployment(id))
        .await?
        .ok_or(ApiError::NotFound("deployment"))?;
    caller
        .app(&state, &deployment.app_id.to_string())
        .await
        .map_err(|_| ApiError::NotFound("deployment"))?;
    plain_output(state, deployment)
}

fn plain_output(state: AppState, deployment: Deployment) -> Result<Response, ApiError> {
    if deployment.last_line == LineNo(0) {
        return Err(ApiError::NotFound("output"));
    }
    let body = Body::from_stream(stored_text(state, deployment.id, LineNo(0)));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// The stored text of a deployment after line `after`, read in chunks off the executor.
pub fn stored_text(
    state: AppState,
    id: DeploymentId,
    after: LineNo,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    stream::try_unfold(Some(after), move |cursor| {
        let state = state.clone();
        async move {
            let Some(after) = cursor else {
                return Ok(None);
            };
            let store = state.store.clone();
            let (chunk, last) =
                tokio::task::spawn_blocking(move || read_text_chunk(&store, id, after))
                    .await
                    .map_err(std::io::Error::other)?
                    .map_err(std::io::Error::other)?;
            if chunk.is_empty() {
                return Ok(None);
            }
            Ok(Some((Bytes::from(chunk), Some(last))))
        }
    })
}

/// Up to [`OUTPUT_SEGMENTS_PER_READ`] segments of text after line `after`, and the last line
/// number included.
fn read_text_chunk(
    store: &crate::store::Store,
    id: DeploymentId,
    after: LineNo,
) -> Result<(Vec<u8>, LineNo), crate::store::StoreError> {
    let mut out = Vec::new();
    let mut last = after;
    for entry in store
        .segments_after(id, after)
        .take(OUTPUT_SEGMENTS_PER_READ)
    {
        let (first, bytes) = entry?;
        let view = SegmentView::parse(&bytes)?;
        let count = view.line_count() as u64;
        let end = first.0 + count - 1;
        if end <= last.0 {
            continue;
        }
        let skip = last.0.saturating_sub(first.0 - 1) as usize;
        out.extend_from_slice(view.text_from_line(skip));
        last = LineNo(end);
    }
    Ok((out, last))
}

/// `GET /apps/{app}`: the live deployments stream (issue 3).
pub async fn upgrade() -> Result<Response, ApiError> {
    Err(ApiError::NotFound("stream"))
}
