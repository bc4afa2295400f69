//! Control of a running deployment over HTTP: `POST …/deployments/{id}/cancel`.
//!
//! Owns the cancel request's HTTP side: who may ask (the app's owner or a collaborator; anyone
//! else gets the 404 of a missing app or deployment), the writer's cancel operation, then the
//! signal to the deployment's session once the request is durable. It decides no status (the
//! writer's lifecycle does) and stops no process itself (the session does).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::access::Caller;
use super::deployments::find_deployment;
use super::views::DeploymentView;
use super::{ApiError, AppState};
use crate::sessions::Session;
use crate::store::writer::WriteError;

/// `POST /v1/apps/{app}/deployments/{deployment}/cancel` → 202 with the deployment as the
/// cancel's commit stored it: `aborted` when it was queued, unchanged (still running, the
/// session ends it within a second, or within `[push] cancel_grace_secs` for a pusher) when it
/// runs. A repeated cancel of a pending one is 202 again; a finished deployment is a 409 and
/// nothing changes.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, _) = caller.app(&state, &app).await?;
    let deployment = find_deployment(&state, &app, &id).await?;
    let by = caller.user.username.clone();
    let reply = state
        .writer
        .cancel(deployment.id, by.clone())
        .await
        .map_err(|err| match err {
            WriteError::Finished { status } => {
                ApiError::Conflict(format!("the deployment already ended with status {status}"))
            }
            other => other.into(),
        })?;
    if reply.pending && !state.executors.controls().cancel(deployment.id, &by) {
        // No session drives it (its pusher's socket is already going away): nobody else can
        // honour the request, so the server ends the deployment itself.
        let _ = Session::new(state.writer.clone(), deployment.id)
            .end_cancelled()
            .await;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({ "deployment": DeploymentView::new(&reply.deployment, &state.config.public_url) }),
        ),
    ))
}
