//! Every byte on the wire: HTTP routes, JSON errors, authentication, the push endpoint and the
//! live deployments stream.
//!
//! Layout: [`error`] picks status codes and bodies; [`views`] shapes JSON objects; [`access`]
//! authenticates callers, enforces token scopes and resolves the apps they may see; [`users`],
//! [`apps`], [`deployments`], [`sources`], [`caches`] are the REST resources; [`push`] is the
//! external pushers' WebSocket; [`stream`] the subscribers' WebSocket; [`output`] the plain and
//! SSE output and its follow; [`protocol`] the push frames shared with the `deployd push` client;
//! [`notifiers`] the notification catalogues and webhook notifiers; [`timeline`] the events;
//! [`health`] the unauthenticated `/healthz` and `/readyz` probes; [`lines`] the ranged read
//! and search of a deployment's lines; [`ui`] the dashboard's embedded files.

pub mod access;
pub mod apps;
pub mod backup;
pub mod caches;
pub mod control;
pub mod deployments;
pub mod error;
pub mod health;
pub mod lines;
pub mod notifiers;
pub mod observe;
pub mod openapi;
pub mod output;
pub mod page_cache;
pub mod protocol;
pub mod push;
pub(crate) mod query;
pub mod routes;
pub mod sources;
pub mod stream;
pub mod timeline;
pub mod ui;
pub mod users;
pub mod views;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::Router;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::hub::Hub;
use crate::sessions::Executors;
use crate::sources::SourceUrls;
use crate::store::writer::Writer;
use crate::store::Store;
pub use error::ApiError;

/// Everything a request handler needs. Cloned per request (one `Arc`).
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

/// The shared parts of the running server.
pub struct Shared {
    pub config: Config,
    pub store: Store,
    pub writer: Writer,
    pub hub: Arc<Hub>,
    /// Signs JWTs. Per install, kept in the store.
    pub secret: [u8; 32],
    /// Signs and checks the pre-authenticated source URLs (with the same secret).
    pub sources: SourceUrls,
    /// Cancelled when the server shuts down: sessions and streams end.
    pub shutdown: CancellationToken,
    /// Starts the built-in executor sessions, and lets shutdown wait for them.
    pub executors: Executors,
    /// Asks the prune pass for work (a deleted app's files).
    pub retention: crate::retention::Retention,
    /// The JWTs already verified with `secret` (`auth::JwtMemo`): a client's next request
    /// with the same JWT skips the signature check.
    pub(crate) jwts: crate::auth::JwtMemo,
    /// Rendered deployment list pages, valid while the store's listing generation stands.
    pub(crate) pages: page_cache::PageCache,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Runs a blocking store read off the async executor.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ApiError::internal("store read task", e))?
            .map_err(ApiError::from)
    }

    /// A read of the records `store::cache` keeps in memory (callers, tokens, apps,
    /// collaborations), run on this async thread when everything it needs is cached: no thread
    /// hop, no wake-up. When the memory-only run fails (something was not cached, or the read
    /// touched the engine otherwise), `f` runs again on the blocking pool, where it fills the
    /// cache, and that run's result (or real error) is the answer. So `f` must be a read with
    /// no side effects, and cheap to run twice.
    pub async fn read_point<T: Send + 'static>(
        &self,
        f: impl Fn(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        if let Ok(value) = f(&self.store.memory_only()) {
            return Ok(value);
        }
        self.read(f).await
    }
}

/// The router of the whole API, built from the route table ([`routes::ROUTES`]); separate from
/// `serve` so tests and benches can mount it.
pub fn router(state: AppState) -> Router {
    routes::ROUTES
        .iter()
        .fold(Router::new(), |router, route| {
            let handler = (route.handler)();
            // The row's scope is enforced here, for every row that authenticates a caller.
            let handler = match route.auth {
                routes::Auth::Caller => handler
                    .layer::<_, std::convert::Infallible>(axum::middleware::from_fn_with_state(
                        state.clone(),
                        access::guard,
                    ))
                    .layer::<_, std::convert::Infallible>(axum::Extension(access::RequiredScope(
                        route.scope,
                    ))),
                _ => handler,
            };
            router.route(route.path, handler)
        })
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this resource".into())
        })
        .layer(axum::middleware::map_response(json_error_bodies))
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(state)
}

/// Largest non-JSON error body rewritten by [`json_error_bodies`]; axum's extractor rejections
/// are one short line.
const MAX_REJECTION_BODY_BYTES: usize = 4096;

/// Makes every 4xx/5xx body JSON (compat.md: a non-JSON 4xx makes the Go client lose the status
/// code). Our handlers answer with [`ApiError`] already; this catches the plain-text rejections
/// of axum's extractors (e.g. a path segment that is not UTF-8), keeping their status code.
async fn json_error_bodies(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), MAX_REJECTION_BODY_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let mut rewritten = ApiError::from_rejection(status, text).into_response();
    *rewritten.status_mut() = status;
    rewritten
}

/// A JSON request body: size-limited, parsed with field paths so that a wrong type names the
/// field in a 422, malformed JSON is a 400, and too big a body is a 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let content_type_ok = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.starts_with("application/json") || v.contains("+json"));
        let limit = state.config.limits.max_json_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::PayloadTooLarge(format!("request body larger than {limit} bytes"))
            })?;
        if !content_type_ok {
            return Err(ApiError::BadRequest(
                "the request body must be JSON (Content-Type: application/json)".into(),
            ));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body; see [`JsonBody`].
pub fn parse_json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize::<_, T>(&mut de);
    if parsed.is_ok() {
        if let Err(trailing) = de.end() {
            return Err(ApiError::BadRequest(format!("malformed JSON: {trailing}")));
        }
    }
    match parsed {
        Ok(value) => {
            // serde reads a struct from an array too (`{"app":["name"]}` would create `name`).
            if let Some(field) = first_array(bytes) {
                return Err(ApiError::field(field, "must be an object, not an array"));
            }
            Ok(value)
        }
        Err(err) => {
            let inner = err.inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(ApiError::BadRequest(format!("malformed JSON: {inner}")))
            } else {
                let path = err.path().to_string();
                let field = path.rsplit('.').next().unwrap_or(&path).to_string();
                let field = if field.is_empty() || field == "." {
                    "body".to_string()
                } else {
                    field
                };
                Err(ApiError::field(field, inner.to_string()))
            }
        }
    }
}

/// Request-body fields whose values are lists by design: a notifier's `selected_event_ids`, a
/// scoped token's `apps`. Every other field is a scalar or an object.
const LIST_FIELDS: &[&str] = &["selected_event_ids", "apps"];

/// The field holding the first JSON array in `bytes` (`body` at the top) that is not one of
/// the [`LIST_FIELDS`]: any other array is a value serde should not have accepted (it reads a
/// struct from an array).
fn first_array(bytes: &[u8]) -> Option<String> {
    fn walk(value: &serde_json::Value, field: &str) -> Option<String> {
        match value {
            serde_json::Value::Array(items) if LIST_FIELDS.contains(&field) => items
                .iter()
                .find(|item| item.is_array() || item.is_object())
                .map(|_| field.to_string()),
            serde_json::Value::Array(_) => Some(field.to_string()),
            serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| walk(v, k)),
            _ => None,
        }
    }
    // Most bodies hold no `[` at all: no second parse for them.
    memchr::memchr(b'[', bytes)?;
    walk(&serde_json::from_slice(bytes).ok()?, "body")
}
