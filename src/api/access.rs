//! Who is calling, what their token may do, and which apps they may see.
//!
//! Credentials (compat.md): `Authorization: Bearer <JWT from /v1/tokens/exchange>`, or the API
//! token itself as Basic (`-u ":$TOKEN"`) or Bearer. Any bad, expired or revoked credential is
//! one 401. An app the caller neither owns nor collaborates on answers 404 exactly like a
//! missing one, and so does an app outside the token's app list.
//!
//! Scopes are enforced from the route table: the router wraps every `Auth::Caller` row in
//! [`guard`] with the row's [`Scope`], which authenticates once, refuses a narrower token with
//! a 403, and hands the [`Caller`] to the handler. A handler never checks scopes itself, and a
//! `Caller` extracted outside a guarded route is held to [`Scope::Full`] (fail closed).
//! What a collaborator's role allows is [`Role`]'s.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use time::OffsetDateTime;

use super::{ApiError, AppState};
use crate::auth::{self, Credential};
use crate::model::{App, AppId, Grant, Scope, TokenId, User, UserId};
use crate::store::{Store, StoreError};

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: User,
    /// The API token the caller authenticated with (directly or through a JWT).
    pub token_id: TokenId,
    /// What that token may do (a JWT's is its token's, or narrower).
    pub grant: Grant,
}

/// The scope a route needs, put in the request's extensions by the router (from its row in
/// `routes::ROUTES`) for [`guard`] to check.
#[derive(Clone, Copy, Debug)]
pub struct RequiredScope(pub Scope);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Taken, not cloned (a clone is the user record's strings, per request): a handler
        // extracts its caller once.
        let caller = match parts.extensions.remove::<Caller>() {
            Some(caller) => caller,
            None => {
                // Not behind `guard` (no route row said what it needs): only a full token may
                // call.
                let caller = authenticate_headers(state, &parts.headers).await?;
                require(&caller, Scope::Full)?;
                caller
            }
        };
        if let Some(slot) = parts.extensions.get::<super::observe::CallerSlot>() {
            slot.set(caller.user.id);
        }
        Ok(caller)
    }
}

/// The router's layer for every `Auth::Caller` route: authenticates (401), refuses a token
/// whose scope is narrower than the route's [`RequiredScope`] (403; a route without one needs
/// [`Scope::Full`]), and leaves the [`Caller`] in the request for the handler.
pub async fn guard(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let needed = request
        .extensions()
        .get::<RequiredScope>()
        .map_or(Scope::Full, |required| required.0);
    let caller = authenticate_headers(&state, request.headers()).await?;
    require(&caller, needed)?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

fn require(caller: &Caller, needed: Scope) -> Result<(), ApiError> {
    if caller.grant.scope >= needed {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "this token's scope is {}; this call needs a {} token",
        caller.grant.scope.as_str(),
        needed.as_str()
    )))
}

async fn authenticate_headers(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "authentication required: send Authorization: Bearer <token>".into(),
            )
        })?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("invalid Authorization header".into()))?
        .to_owned();
    authenticate(state, &header).await
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
            let claims = state
                .jwts
                .verify(
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
            let (user, mut grant) = state
                .read_point(move |store| {
                    if !store.token_exists(token_id)? {
                        return Ok(None);
                    }
                    let grant = store.token_grant(token_id)?;
                    Ok(store.user(user_id)?.map(|user| (user, grant)))
                })
                .await?
                .ok_or_else(unauthorized)?;
            // The stored grant is the authority; a JWT claiming less gets less.
            if let Some(claimed) = claims.scope.as_deref() {
                let claimed = Scope::parse(claimed).ok_or_else(unauthorized)?;
                grant.scope = grant.scope.min(claimed);
            }
            Ok(Caller {
                user,
                token_id,
                grant,
            })
        }
        Credential::ApiToken(token) => {
            let hash = auth::hash_api_token(&token);
            let found = state
                .read_point(move |store| match store.token_by_hash(&hash)? {
                    Some(token) => {
                        let grant = store.token_grant(token.id)?;
                        Ok(store
                            .user(token.user_id)?
                            .map(|user| (user, token.id, grant)))
                    }
                    None => Ok(None),
                })
                .await?;
            let (user, token_id, grant) = found.ok_or_else(unauthorized)?;
            Ok(Caller {
                user,
                token_id,
                grant,
            })
        }
    }
}

/// How the caller relates to an app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Owner,
    Collaborator,
    /// A limited collaborator (`is_limited`): reads and deploys, manages nothing.
    LimitedCollaborator,
}

impl Role {
    /// Whether the role may manage the app (its name, collaborators, notifiers): the owner
    /// and collaborators that are not limited. Deleting the app is the owner's alone.
    pub fn may_manage(self) -> bool {
        !matches!(self, Role::LimitedCollaborator)
    }

    /// The 403 for a role that may not manage the app; `what` completes "may not …".
    pub fn refuse_management(self, what: &str) -> Result<(), ApiError> {
        if self.may_manage() {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "a limited collaborator may not {what}"
        )))
    }
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
    match store.collaboration(app.id, user.id)? {
        Some(record) if record.is_limited => Ok(Some((app, Role::LimitedCollaborator))),
        Some(_) => Ok(Some((app, Role::Collaborator))),
        None => Ok(None),
    }
}

impl Caller {
    /// [`find_app`] for this caller: also `None` for an app outside the token's app list.
    pub fn find_app(
        &self,
        store: &Store,
        name_or_id: &str,
    ) -> Result<Option<(App, Role)>, StoreError> {
        Ok(find_app(store, &self.user, name_or_id)?.filter(|(app, _)| self.grant.covers(app.id)))
    }

    /// The app named `name_or_id`, or a 404 when it is missing, not the caller's, or outside
    /// the token's app list.
    pub async fn app(&self, state: &AppState, name_or_id: &str) -> Result<(App, Role), ApiError> {
        let caller = self.clone();
        let name = name_or_id.to_owned();
        state
            .read_point(move |store| caller.find_app(store, &name))
            .await?
            .ok_or(ApiError::NotFound("app"))
    }

    /// Refuses (403) a token limited to some apps: it may not act outside them, e.g. create an
    /// app or a user.
    pub fn require_every_app(&self, what: &str) -> Result<(), ApiError> {
        if self.grant.apps.is_none() {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "a token limited to some apps may not {what}"
        )))
    }
}

/// Most apps one token may be limited to: a token for a CI job names a handful; the bound
/// keeps the stored grant and every JWT made from it small.
pub const MAX_TOKEN_APPS: usize = 100;

/// The grant a caller asks for a new token (`POST /v1/tokens`), checked: `scope` is `read`,
/// `deploy` or `full` (default: the caller's), `apps` names apps the caller sees through its
/// own token (default: the caller's list), a `deploy` token names apps (422 for any of these),
/// and the result is no wider than the caller's own grant (403).
pub async fn requested_grant(
    state: &AppState,
    caller: &Caller,
    scope: Option<String>,
    apps: Option<Vec<String>>,
) -> Result<Grant, ApiError> {
    let scope = match scope.as_deref() {
        None => caller.grant.scope,
        Some(name) => Scope::parse(name)
            .ok_or_else(|| ApiError::field("scope", "must be read, deploy or full"))?,
    };
    let apps = match apps {
        None => caller.grant.apps.clone(),
        Some(names) if names.is_empty() => {
            return Err(ApiError::field("apps", "must name at least one app"))
        }
        Some(names) if names.len() > MAX_TOKEN_APPS => {
            return Err(ApiError::field(
                "apps",
                format!("may name at most {MAX_TOKEN_APPS} apps"),
            ))
        }
        Some(names) => {
            let caller = caller.clone();
            let resolved = state
                .read_point(move |store| {
                    let mut ids = Vec::new();
                    for name in &names {
                        match caller.find_app(store, name)? {
                            Some((app, _)) if !ids.contains(&app.id) => ids.push(app.id),
                            Some(_) => {}
                            None => return Ok(Err(name.clone())),
                        }
                    }
                    Ok(Ok(ids))
                })
                .await?;
            Some(resolved.map_err(|name| {
                ApiError::field("apps", format!("{name:?} is not one of your apps"))
            })?)
        }
    };
    if scope == Scope::Deploy && apps.is_none() {
        return Err(ApiError::field(
            "apps",
            "is required for a deploy token: name the apps it deploys",
        ));
    }
    let grant = Grant { scope, apps };
    if !caller.grant.includes(&grant) {
        return Err(ApiError::Forbidden(format!(
            "a {} token may only create tokens of the same or a narrower scope and app list",
            caller.grant.scope.as_str()
        )));
    }
    Ok(grant)
}
