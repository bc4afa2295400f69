//! Control of deployments over HTTP: `POST …/deployments/{id}/cancel` and
//! `POST …/deployments/{id}/rollback`.
//!
//! Owns these requests' HTTP side: who may ask (the app's owner or a collaborator; anyone
//! else gets the 404 of a missing app or deployment), the writer's cancel or rollback
//! operation, then the signal to the deployment's session (cancel) or the start of its
//! executor (rollback) once the request is durable. It decides no status (the writer's
//! lifecycle does), no rollback target (`crate::images` and the writer do) and stops no process
//! itself (the session does).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::access::Caller;
use super::deployments::find_deployment;
use super::views::DeploymentView;
use super::{ApiError, AppState};
use crate::model::{DeploymentId, Pusher};
use crate::sessions::Session;
use crate::store::writer::{WriteError, NO_IMAGE};

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

/// `POST /v1/apps/{app}/deployments/{deployment}/rollback` → 201 with a new deployment taking
/// the target's `git_ref`, which queues like any other and, when it runs, starts the target's
/// kept image instead of fetching and building. A target that is not `success` or whose image
/// is no longer kept: 422 `{"errors":{"deployment":[…]}}`, nothing created. A deployment of
/// another app, or one the caller may not see: 404 like a missing one.
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, _) = caller.app(&state, &app).await?;
    let target: DeploymentId = id.parse().map_err(|_| ApiError::NotFound("deployment"))?;
    let pusher = Pusher {
        id: caller.user.id,
        username: caller.user.username.clone(),
        email: caller.user.email.clone(),
    };
    let deployment = state
        .writer
        .create_rollback(app.id, target, pusher)
        .await
        .map_err(|err| match err {
            WriteError::NotFound(NO_IMAGE) => ApiError::Unprocessable(vec![(
                "deployment".to_owned(),
                format!(
                    "{target} cannot be rolled back to: only a successful deployment whose \
                     image is still kept can be (see [retention] keep_images)"
                ),
            )]),
            other => other.into(),
        })?;
    state.executors.spawn(deployment.clone(), app.name.clone());
    Ok((
        StatusCode::CREATED,
        Json(json!({ "deployment": DeploymentView::new(&deployment, &state.config.public_url) })),
    ))
}
