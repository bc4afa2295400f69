//! `ApiError`: the one place that picks HTTP status codes and error bodies.
//!
//! Bodies follow compat.md exactly, because a non-JSON 4xx makes Scalingo's Go client lose the
//! status code: 400/401/403/409/413/429/5xx `{"error": "…"}`, 404
//! `{"resource": "…", "error": "not found"}`, 422 `{"errors": {"field": ["…"]}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::status::TransitionError;
use crate::store::writer::WriteError;
use crate::store::StoreError;

/// Every error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The named resource does not exist, or the caller may not see it (same answer).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Field-level validation errors: `(field, message)` pairs, at least one.
    #[error("invalid fields: {0:?}")]
    Unprocessable(Vec<(String, String)>),
    #[error("{0}")]
    Unavailable(String),
    /// A failure of ours: the client sees only "internal server error"; `source` is logged once,
    /// when the response is made.
    #[error("internal error: {source}")]
    Internal {
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An internal error's source with what we were doing when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
struct Context {
    what: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl ApiError {
    /// A 422 for one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Unprocessable(vec![(field.into(), message.into())])
    }

    /// An internal error: `source` (an error value, or a message) and what we were doing
    /// (`"storing the upload"`), kept for the one log line; the client sees neither.
    pub fn internal(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ApiError::Internal {
            source: Box::new(Context {
                what: what.into(),
                source: source.into(),
            }),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        match self {
            ApiError::NotFound(resource) => json!({"resource": resource, "error": "not found"}),
            ApiError::Unprocessable(fields) => {
                let mut errors = serde_json::Map::new();
                for (field, message) in fields {
                    let entry = errors
                        .entry(field.clone())
                        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                    if let serde_json::Value::Array(messages) = entry {
                        messages.push(serde_json::Value::String(message.clone()));
                    }
                }
                json!({ "errors": errors })
            }
            ApiError::Internal { .. } => json!({"error": "internal server error"}),
            other => json!({ "error": other.to_string() }),
        }
    }
}

impl ApiError {
    /// The error for a response some other layer made with `status` and a plain-text body
    /// (axum's extractor rejections); the caller keeps `status` on the rewritten response.
    pub fn from_rejection(status: StatusCode, text: String) -> Self {
        let text = if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            text
        };
        match status {
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(text),
            StatusCode::FORBIDDEN => ApiError::Forbidden(text),
            StatusCode::NOT_FOUND => ApiError::NotFound("route"),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed(text),
            StatusCode::CONFLICT => ApiError::Conflict(text),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(text),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::field("body", text),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable(text),
            s if s.is_server_error() => ApiError::internal("a rejection of the router", text),
            _ => ApiError::BadRequest(text),
        }
    }
}

impl IntoResponse for ApiError {
    /// The one place an internal error is logged (conversions into `ApiError` log nothing), so
    /// each one is logged exactly once, when it becomes a response.
    fn into_response(self) -> Response {
        if let ApiError::Internal { source } = &self {
            tracing::error!(detail = %source, "internal error");
        }
        (self.status(), Json(self.body())).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        ApiError::Internal {
            source: Box::new(err),
        }
    }
}

/// A name already taken is a 422 on the field that holds it (compat.md); a write the state of
/// the deployment or the app forbids is a 409.
impl From<WriteError> for ApiError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::NotFound(resource) => ApiError::NotFound(resource),
            WriteError::UsernameTaken(_) => ApiError::field("username", err.to_string()),
            WriteError::EmailTaken(_) => ApiError::field("email", err.to_string()),
            WriteError::AppNameTaken(_) => ApiError::field("name", "is already taken"),
            WriteError::AlreadyCollaborator
            | WriteError::Finished { .. }
            | WriteError::Queued
            | WriteError::Cancelling { .. } => ApiError::Conflict(err.to_string()),
            WriteError::Transition(err) => err.into(),
            WriteError::Unavailable(message) => ApiError::Unavailable(message),
        }
    }
}

impl From<TransitionError> for ApiError {
    fn from(err: TransitionError) -> Self {
        ApiError::Unprocessable(vec![("status".into(), err.to_string())])
    }
}

/// Answers unknown routes with a JSON 404, like every other 4xx.
pub async fn route_not_found() -> ApiError {
    ApiError::NotFound("route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_compat() {
        assert_eq!(
            ApiError::NotFound("app").body(),
            json!({"resource": "app", "error": "not found"})
        );
        assert_eq!(
            ApiError::Unprocessable(vec![
                ("name".into(), "is too short".into()),
                ("name".into(), "is invalid".into())
            ])
            .body(),
            json!({"errors": {"name": ["is too short", "is invalid"]}})
        );
        assert_eq!(ApiError::Conflict("x".into()).body(), json!({"error": "x"}));
        assert_eq!(
            ApiError::internal("testing", "secret detail").body(),
            json!({"error": "internal server error"})
        );
    }

    #[test]
    fn taken_names_are_422s_on_their_field_and_state_conflicts_are_409s() {
        let cases = [
            (
                WriteError::UsernameTaken("ann".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"errors": {"username": ["username \"ann\" is already taken"]}}),
            ),
            (
                WriteError::EmailTaken("a@x".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"errors": {"email": ["email \"a@x\" is already taken"]}}),
            ),
            (
                WriteError::AppNameTaken("web".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"errors": {"name": ["is already taken"]}}),
            ),
            (
                WriteError::AlreadyCollaborator,
                StatusCode::CONFLICT,
                json!({"error": "user is already a collaborator of the app"}),
            ),
            (
                WriteError::Finished {
                    status: crate::status::Status::Success,
                },
                StatusCode::CONFLICT,
                json!({"error": "deployment already finished with status success"}),
            ),
        ];
        for (err, status, body) in cases {
            let api = ApiError::from(err);
            assert_eq!((api.status(), api.body()), (status, body));
        }
    }

    #[test]
    fn an_internal_error_keeps_its_source_and_hides_it_from_the_client() {
        let io = std::io::Error::other("disk on fire");
        let api = ApiError::from(StoreError::LogFile(io));
        assert_eq!(api.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(api.body(), json!({"error": "internal server error"}));
        let source = std::error::Error::source(&api).expect("a source");
        assert!(source.to_string().contains("disk on fire"), "{source}");
    }
}
