//! The events timeline's routes: an app's events and the caller's (`/v1/events`, every event
//! of the apps they owned or collaborated on when it happened, deleted apps' included),
//! newest first, paginated like deployments. Reads only; events are written by the writer.

use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::access::Caller;
use super::deployments::{pagination, parse_page_request};
use super::{ApiError, AppState};

/// `GET /v1/apps/{app}/events?page=&per_page=`.
pub async fn app_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let request = parse_page_request(query.as_deref())?;
    let (app, _) = caller.app(&state, &app).await?;
    let offset = (request.page - 1).saturating_mul(request.per_page);
    let per_page = request.per_page;
    let (events, total) = state
        .read(move |store| store.app_events(app.id, offset, per_page))
        .await?;
    let events: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
    Ok(Json(json!({
        "events": events,
        "meta": { "pagination": pagination(&request, total) },
    })))
}

/// `GET /v1/events?page=&per_page=`.
pub async fn user_events(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let request = parse_page_request(query.as_deref())?;
    let offset = (request.page - 1).saturating_mul(request.per_page);
    let per_page = request.per_page;
    let user = caller.user.id;
    let (events, total) = state
        .read(move |store| store.user_events(user, offset, per_page))
        .await?;
    let events: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
    Ok(Json(json!({
        "events": events,
        "meta": { "pagination": pagination(&request, total) },
    })))
}
