//! Users, API tokens, the JWT exchange and regions (compat.md, "Authentication").

use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::access::{authenticate, Caller};
use super::views::{rfc3339, UserView};
use super::{ApiError, AppState, JsonBody};
use crate::auth::{self, JwtClaims};
use crate::model::{new_user, Grant, Token, TokenId};

/// Longest username, email or token name accepted.
const MAX_NAME_BYTES: usize = 128;

/// `POST /v1/tokens/exchange`: Basic `:token` → `{"token": "<JWT>"}` valid one hour.
pub async fn exchange_token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::Unauthorized("send your API token as Basic auth password".into())
        })?;
    let caller = authenticate(&state, header).await?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let claims = JwtClaims::new(caller.user.id.to_string(), caller.token_id.to_string(), now)
        .with_grant(&caller.grant);
    Ok(Json(
        json!({ "token": auth::issue_jwt(&state.secret, &claims) }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CreateTokenBody {
    token: Option<CreateTokenFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CreateTokenFields {
    name: Option<String>,
    /// `read`, `deploy` or `full` (default: the caller's own scope, `full` for a full token).
    scope: Option<String>,
    /// Names or ids of the caller's apps the token is limited to (required for `deploy`).
    apps: Option<Vec<String>>,
}

/// `POST /v1/tokens`: a new API token for the caller, shown once.
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateTokenBody>,
) -> Result<impl IntoResponse, ApiError> {
    let fields = body
        .token
        .ok_or_else(|| ApiError::field("token", "is required"))?;
    let name = fields.name.unwrap_or_else(|| "api token".into());
    if name.trim().is_empty() {
        return Err(ApiError::field("name", "must not be blank"));
    }
    if name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ApiError::field(
            "name",
            format!("must be at most {MAX_NAME_BYTES} bytes without control characters"),
        ));
    }
    let grant = super::access::requested_grant(&state, &caller, fields.scope, fields.apps).await?;
    let secret = auth::generate_api_token();
    let token = Token {
        id: TokenId::generate(),
        user_id: caller.user.id,
        name,
        created_at: OffsetDateTime::now_utc(),
    };
    state
        .writer
        .create_scoped_token(token.clone(), auth::hash_api_token(&secret), grant.clone())
        .await?;
    let shown = scoped_token_json(&token, Some(&secret), &grant);
    Ok((StatusCode::CREATED, Json(json!({ "token": shown }))))
}

fn token_json(token: &Token, secret: Option<&str>) -> serde_json::Value {
    let mut value = json!({
        "id": token.id.to_string(),
        "name": token.name,
        "created_at": rfc3339(token.created_at),
    });
    if let Some(secret) = secret {
        value["token"] = json!(secret);
    }
    value
}

/// [`token_json`] with the token's `scope` and `apps` (ids; `null`: every app).
fn scoped_token_json(token: &Token, secret: Option<&str>, grant: &Grant) -> serde_json::Value {
    let mut value = token_json(token, secret);
    value["scope"] = json!(grant.scope.as_str());
    value["apps"] = json!(grant
        .apps
        .as_ref()
        .map(|apps| apps.iter().map(ToString::to_string).collect::<Vec<_>>()));
    value
}

/// `GET /v1/tokens`: the caller's tokens (never their secrets).
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let user = caller.user.id;
    let tokens = state
        .read(move |store| {
            let mut shown = Vec::new();
            for token in store.tokens_of(user)? {
                let grant = store.token_grant(token.id)?;
                shown.push(scoped_token_json(&token, None, &grant));
            }
            Ok(shown)
        })
        .await?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /v1/tokens/{id}`: revokes one of the caller's tokens (and every JWT made from it).
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(token_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let token_id: TokenId = token_id.parse().map_err(|_| ApiError::NotFound("token"))?;
    state.writer.revoke_token(caller.user.id, token_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/users/self`.
pub async fn show_self(caller: Caller) -> impl IntoResponse {
    Json(json!({ "user": UserView::new(&caller.user) }))
}

#[derive(Deserialize)]
pub struct CreateUserBody {
    user: Option<CreateUserFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CreateUserFields {
    username: Option<String>,
    email: Option<String>,
    fullname: Option<String>,
}

/// A username: 2–64 lowercase letters, digits, `-`, `_` or `.`, starting with a letter or digit.
fn valid_username(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && email.len() <= MAX_NAME_BYTES
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `POST /v1/users` (admin only): `{"user":{"username","email"}}` → 201 with the user and its
/// first API token, shown once.
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateUserBody>,
) -> Result<impl IntoResponse, ApiError> {
    if !caller.user.is_admin {
        return Err(ApiError::Forbidden("only an admin may create users".into()));
    }
    caller.require_every_app("create users")?;
    let fields = body
        .user
        .ok_or_else(|| ApiError::field("user", "is required"))?;
    let mut errors = Vec::new();
    let username = fields.username.unwrap_or_default();
    if !valid_username(&username) {
        errors.push((
            "username".to_string(),
            "must be 2-64 lowercase letters, digits, '-', '_' or '.'".to_string(),
        ));
    }
    let email = fields.email.unwrap_or_default();
    if !valid_email(&email) {
        errors.push((
            "email".to_string(),
            "must be a valid email address".to_string(),
        ));
    }
    let fullname = fields.fullname.unwrap_or_default();
    if fullname.len() > MAX_NAME_BYTES {
        errors.push((
            "fullname".to_string(),
            format!("is longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Unprocessable(errors));
    }
    let (user, token) = new_user(username, email, fullname, false, OffsetDateTime::now_utc());
    let secret = auth::generate_api_token();
    state
        .writer
        .create_user(user.clone(), token.clone(), auth::hash_api_token(&secret))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user": UserView::new(&user), "token": token_json(&token, Some(&secret)) })),
    ))
}

/// `GET /v1/regions`: one region whose `api` is this server.
pub async fn regions(State(state): State<AppState>, _caller: Caller) -> impl IntoResponse {
    let url = &state.config.public_url;
    Json(json!({
        "regions": [{
            "name": "local",
            "display_name": "deployd",
            "api": url,
            "database_api": url,
            "ssh": "",
            "dashboard": url,
            "default": true,
        }]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_emails() {
        assert!(valid_username("admin"));
        assert!(valid_username("j.doe_2"));
        assert!(!valid_username("A"));
        assert!(!valid_username("-x"));
        assert!(!valid_username("has space"));
        assert!(valid_email("a@b.c"));
        assert!(!valid_email("nope"));
        assert!(!valid_email("a b@c"));
    }
}
