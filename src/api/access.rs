//! Who is calling, and which apps they may see.
//!
//! Credentials (compat.md): `Authorization: Bearer <JWT from /v1/tokens/exchange>`, or the API
//! token itself as Basic (`-u ":$TOKEN"`) or Bearer. Any bad, expired or revoked credential is
//! one 401. An app the caller neither owns nor collaborates on answers 404 exactly like a
//! missing one.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use time::OffsetDateTime;

use super::{ApiError, AppState};
use crate::auth::{self, Credential};
use crate::model::{App, AppId, TokenId, User, UserId};
use crate::store::{Store, StoreError};

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: User,
    /// The API token the caller authenticated with (directly or through a JWT).
    pub token_id: TokenId,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "authentication required: send Authorization: Bearer <token>".into(),
                )
            })?
            .to_str()
            .map_err(|_| ApiError::Unauthorized("invalid Authorization header".into()))?
            .to_owned();
        let caller = authenticate(state, &header).await?;
        if let Some(slot) = parts.extensions.get::<super::observe::CallerSlot>() {
            slot.set(caller.user.id.to_string());
        }
        Ok(caller)
    }
}

/// Checks an `Authorization` header value.
pub async fn authenticate(state: &AppState, header: &str) -> Result<Caller, ApiError> {
    let credential = auth::parse_authorization(header)
        .map_err(|_| ApiError::Unauthorized("invalid credentials".into()))?;
    authenticate_credential(state, credential).await
}

/// Checks a raw token (a JWT or an API token), as sent in a stream's auth frame.
pub async fn authenticate_token(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let credential = if token.split('.').count() == 3 {
        Credential::Jwt(token.to_owned())
    } else {
        Credential::ApiToken(token.to_owned())
    };
    authenticate_credential(state, credential).await
}

async fn authenticate_credential(
    state: &AppState,
    credential: Credential,
) -> Result<Caller, ApiError> {
    let unauthorized = || ApiError::Unauthorized("invalid credentials".into());
    match credential {
        Credential::Jwt(jwt) => {
            let claims = auth::verify_jwt(
                &state.secret,
                &jwt,
                OffsetDateTime::now_utc().unix_timestamp(),
            )
            .map_err(|err| match err {
                auth::AuthError::Expired => ApiError::Unauthorized("token expired".into()),
                _ => unauthorized(),
            })?;
            let user_id: UserId = claims.sub.parse().map_err(|_| unauthorized())?;
            let token_id: TokenId = claims.tid.parse().map_err(|_| unauthorized())?;
            let user = state
                .read(move |store| {
                    if !store.token_exists(token_id)? {
                        return Ok(None);
                    }
                    store.user(user_id)
                })
                .await?
                .ok_or_else(unauthorized)?;
            Ok(Caller { user, token_id })
        }
        Credential::ApiToken(token) => {
            let hash = auth::hash_api_token(&token);
            let found = state
                .read(move |store| match store.token_by_hash(&hash)? {
                    Some(token) => Ok(store.user(token.user_id)?.map(|user| (user, token.id))),
                    None => Ok(None),
                })
                .await?;
            let (user, token_id) = found.ok_or_else(unauthorized)?;
            Ok(Caller { user, token_id })
        }
    }
}

/// How the caller relates to an app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Owner,
    Collaborator,
}

/// Finds an app by name or id, if `user` may see it.
pub fn find_app(
    store: &Store,
    user: &User,
    name_or_id: &str,
) -> Result<Option<(App, Role)>, StoreError> {
    // An id first: names may not be UUID-shaped (`apps::valid_app_name`), but a store written
    // before that rule must not let a name hide another app's id.
    let by_id = match name_or_id.parse::<uuid::Uuid>() {
        Ok(id) => store.app(AppId(id))?,
        Err(_) => None,
    };
    let app = match by_id {
        Some(app) => Some(app),
        None => store.app_by_name(name_or_id)?,
    };
    let Some(app) = app else {
        return Ok(None);
    };
    if app.owner == user.id {
        return Ok(Some((app, Role::Owner)));
    }
    if store.is_collaborator(app.id, user.id)? {
        return Ok(Some((app, Role::Collaborator)));
    }
    Ok(None)
}

impl Caller {
    /// The app named `name_or_id`, or a 404 when it is missing or not the caller's.
    pub async fn app(&self, state: &AppState, name_or_id: &str) -> Result<(App, Role), ApiError> {
        let user = self.user.clone();
        let name = name_or_id.to_owned();
        state
            .read(move |store| find_app(store, &user, &name))
            .await?
            .ok_or(ApiError::NotFound("app"))
    }
}
