//! What an operator sees of the HTTP API: one access log line and the request metrics per
//! request ([`observe`], a middleware around the whole router), `GET /metrics` and
//! `GET /v1/openapi.json`.
//!
//! Requests are named by the route table's operation id, never by their raw path or query
//! (signed source URLs carry their signature in the query string; paths carry app names), and
//! callers by their user id, never by a credential. Nothing here may fail or delay a request:
//! the log line goes to the non-blocking writer (`crate::logging`) and metrics are atomics.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::Digest;

use super::routes::ROUTES;
use super::{ApiError, AppState};
use crate::metrics::metrics;
use crate::model::UserId;

/// The operation label of requests no route matched (404s, 405s of unknown paths).
const UNMATCHED: &str = "unmatched";

/// Who the request's caller turned out to be, filled in by `access::Caller` when a handler
/// authenticates one; read by [`observe`] for the access log.
#[derive(Clone, Default)]
pub struct CallerSlot(Arc<OnceLock<UserId>>);

impl CallerSlot {
    /// Records the caller's user id (the first one recorded stays).
    pub fn set(&self, user_id: UserId) {
        let _ = self.0.set(user_id);
    }
}

/// The route table's operations by path (a path's few methods each), looked up once per request.
static OPERATIONS: LazyLock<HashMap<&'static str, Vec<(Method, &'static str)>>> =
    LazyLock::new(|| {
        let mut by_path: HashMap<&'static str, Vec<(Method, &'static str)>> = HashMap::new();
        for route in ROUTES {
            by_path
                .entry(route.path)
                .or_default()
                .push((route.method.clone(), route.operation));
        }
        by_path
    });

/// The operation id of the route `method` + `path` (the router's matched path).
fn operation_of(method: &Method, path: &str) -> Option<&'static str> {
    OPERATIONS
        .get(path)?
        .iter()
        .find(|(route_method, _)| route_method == method)
        .map(|(_, operation)| *operation)
}

/// Times the request, counts it by operation and code, and writes its access log line.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let operation = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| operation_of(&method, path.as_str()))
        .unwrap_or(UNMATCHED);
    let caller = CallerSlot::default();
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics().http_request(operation, status, elapsed);
    let mut caller_buffer = [0u8; uuid::fmt::Hyphenated::LENGTH];
    tracing::info!(
        target: "deployd::access",
        method = %method,
        operation,
        status,
        // Microsecond precision: `2.738`, not a float's 16 digits.
        duration_ms = elapsed.as_micros() as f64 / 1000.0,
        caller = caller_text(caller.0.get(), &mut caller_buffer),
        "request"
    );
    response
}

/// The access log's `caller`: the user id (written into `buffer`, not allocated), or `-`.
fn caller_text<'a>(
    caller: Option<&UserId>,
    buffer: &'a mut [u8; uuid::fmt::Hyphenated::LENGTH],
) -> &'a str {
    match caller {
        Some(id) => uuid::Uuid::from_bytes(*id.as_bytes())
            .hyphenated()
            .encode_lower(buffer),
        None => "-",
    }
}

/// `GET /v1/openapi.json`: the OpenAPI 3.1 document of this API ([`super::openapi`]).
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    Json(super::openapi::document(&state.config.public_url))
}

/// `GET /metrics`: Prometheus' text format; with `[metrics] token` set, only for
/// `Authorization: Bearer <token>`.
pub async fn serve_metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.config.metrics_token {
        let sent = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Digests compared: the comparison's time says nothing about the token.
        let digest = |t: &str| sha2::Sha256::digest(t.as_bytes());
        if sent.is_none_or(|sent| digest(sent) != digest(token)) {
            return Err(ApiError::Unauthorized(
                "the metrics need Authorization: Bearer <the [metrics] token>".into(),
            ));
        }
    }
    let data_dir = state.config.data_dir.clone();
    let text = tokio::task::spawn_blocking(move || crate::metrics::render(&data_dir))
        .await
        .map_err(|e| ApiError::internal("rendering the metrics", e))?;
    Ok(([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}
