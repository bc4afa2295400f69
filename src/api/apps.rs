//! Apps and their collaborators: create, show, rename, delete; add, list, update (limited or
//! not) and remove collaborators. Who may do what is decided here from `access::Role`; the
//! token's scope was checked by the route's guard before any of these run.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::access::{Caller, Role};
use super::views::{self, rfc3339, AppView, CollaboratorView, Wrapped};
use super::{ApiError, AppState, JsonBody};
use crate::model::{App, AppId, Collaborator, User};
use crate::store::{Store, StoreError};

/// What [`valid_app_name`] asks, as a 422 message.
const APP_NAME_RULE: &str = "must be 3-48 lowercase letters, digits and hyphens, and not a UUID";

/// Longest `git_source` URL accepted.
const MAX_GIT_SOURCE_BYTES: usize = 2048;

/// App names: 3–48 lowercase letters, digits and hyphens (they appear in URLs and stream paths),
/// and not shaped like a UUID: `{app}` in a path is a name or an id, so a name spelling another
/// app's id would hide that app from its owner.
pub fn valid_app_name(name: &str) -> bool {
    (3..=48).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.parse::<uuid::Uuid>().is_err()
}

/// The owner an app's view shows (a placeholder once the owner's account is gone).
fn app_owner(store: &Store, app: &App) -> Result<User, StoreError> {
    Ok(store.user(app.owner)?.unwrap_or_else(|| User {
        id: app.owner,
        username: "deleted-user".into(),
        email: String::new(),
        fullname: String::new(),
        is_admin: false,
        created_at: app.created_at,
    }))
}

/// An app's view: `running` once it has had a successful deployment.
fn app_view<'a>(app: &'a App, owner: &'a User, public_url: &'a str) -> AppView<'a> {
    AppView::new(app, owner, public_url, app.last_deployment.is_some())
}

/// `{"app": view}` as a response.
fn app_response(app: &App, owner: &User, public_url: &str) -> Result<Response, ApiError> {
    views::json_response(
        &Wrapped("app", app_view(app, owner, public_url)),
        views::ENVELOPE_JSON_BYTES + views::APP_JSON_BYTES,
    )
}

/// `GET /v1/apps`: the apps the caller owns or collaborates on.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let apps = state
        .read(move |store| {
            let mut apps = Vec::new();
            for app in store.all_apps()? {
                if !caller.grant.covers(app.id) {
                    continue;
                }
                if app.owner == caller.user.id || store.is_collaborator(app.id, caller.user.id)? {
                    let owner = app_owner(store, &app)?;
                    apps.push((app, owner));
                }
            }
            Ok(apps)
        })
        .await?;
    let public_url = &state.config.public_url;
    let views: Vec<_> = apps
        .iter()
        .map(|(app, owner)| app_view(app, owner, public_url))
        .collect();
    views::json_response(
        &Wrapped("apps", views),
        views::ENVELOPE_JSON_BYTES + apps.len() * views::APP_JSON_BYTES,
    )
}

#[derive(Deserialize)]
pub struct CreateAppBody {
    app: Option<CreateAppFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CreateAppFields {
    name: Option<String>,
    git_source: Option<String>,
}

/// `POST /v1/apps`: `{"app":{"name","git_source"?}}` → 201.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateAppBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_every_app("create apps")?;
    let fields = body
        .app
        .ok_or_else(|| ApiError::field("app", "is required"))?;
    let name = fields.name.unwrap_or_default();
    let mut errors = Vec::new();
    if !valid_app_name(&name) {
        errors.push(("name".to_string(), APP_NAME_RULE.to_string()));
    }
    if let Some(source) = &fields.git_source {
        if source.len() > MAX_GIT_SOURCE_BYTES
            || !(source.starts_with("https://") || source.starts_with("http://"))
        {
            errors.push((
                "git_source".to_string(),
                "must be an http(s) URL".to_string(),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Unprocessable(errors));
    }
    let now = OffsetDateTime::now_utc();
    let app = App {
        id: AppId::generate(),
        name,
        owner: caller.user.id,
        git_source: fields
            .git_source
            .map(|s| s.trim_end_matches('/').to_string()),
        created_at: now,
        updated_at: now,
        last_deployment: None,
    };
    state.writer.create_app(app.clone()).await?;
    let view = AppView::new(&app, &caller.user, &state.config.public_url, false);
    Ok((StatusCode::CREATED, Json(json!({ "app": view }))))
}

/// `GET /v1/apps/{app}` (name or id).
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, owner) = state
        .read_point(move |store| match caller.find_app(store, &app)? {
            Some((app, _)) => {
                let owner = app_owner(store, &app)?;
                Ok(Some((app, owner)))
            }
            None => Ok(None),
        })
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    app_response(&app, &owner, &state.config.public_url)
}

/// `DELETE /v1/apps/{app}` (owner only): removes the app, its deployments and their logs.
/// Deployments in progress end with it (their sessions see the deployment disappear).
pub async fn destroy(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let pairs = super::query::pairs(query.as_deref())?;
    let (app, role) = caller.app(&state, &app).await?;
    if role != Role::Owner {
        return Err(ApiError::Forbidden(
            "only the owner may delete the app".into(),
        ));
    }
    // Scalingo's confirmation: when given, it must name the app being deleted.
    if let Some(current_name) = super::query::last(&pairs, "current_name") {
        if current_name != app.name {
            return Err(ApiError::field(
                "current_name",
                format!("must be the app's name ({})", app.name),
            ));
        }
    }
    state.writer.delete_app(app.id).await?;
    super::caches::remove_app_cache(&state, app.id).await;
    // The app's files outside the store (work, images, build cache) go in the next pass.
    state.retention.full_pass_soon();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RenameBody {
    current_name: Option<String>,
    new_name: Option<String>,
}

/// `POST /v1/apps/{app}/rename`: `{"current_name","new_name"}` → 200 `{"app"}` (the owner and
/// collaborators that are not limited). `current_name` must be the app's name (as for
/// delete, a guard against renaming the wrong app), `new_name` valid and free (422 otherwise).
/// The id never changes; links are built from the name, so they follow, and the old name
/// answers 404 from then on.
pub async fn rename(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<RenameBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, role) = caller.app(&state, &app).await?;
    role.refuse_management("rename the app")?;
    let mut errors = Vec::new();
    match body.current_name.as_deref() {
        None => errors.push(("current_name".to_string(), "is required".to_string())),
        Some(current) if current != app.name => errors.push((
            "current_name".to_string(),
            "must be the app's current name".to_string(),
        )),
        Some(_) => {}
    }
    let new_name = body.new_name.unwrap_or_default();
    if !valid_app_name(&new_name) {
        errors.push(("new_name".to_string(), APP_NAME_RULE.to_string()));
    } else if new_name == app.name {
        errors.push((
            "new_name".to_string(),
            "is the app's current name".to_string(),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Unprocessable(errors));
    }
    let renamed = state
        .writer
        .rename_app(app.id, new_name, caller.user.id)
        .await
        .map_err(|err| match err {
            crate::store::writer::WriteError::AppNameTaken(_) => {
                ApiError::field("new_name", "is already taken")
            }
            other => other.into(),
        })?;
    let for_owner = renamed.clone();
    let owner = state
        .read(move |store| app_owner(store, &for_owner))
        .await?;
    app_response(&renamed, &owner, &state.config.public_url)
}

fn collaborator_view(app: AppId, collaborator: &Collaborator) -> CollaboratorView {
    let user = &collaborator.user;
    CollaboratorView {
        id: collaborator.id.to_string(),
        app_id: app.to_string(),
        user_id: user.id.to_string(),
        username: user.username.clone(),
        email: user.email.clone(),
        status: "accepted",
        is_limited: collaborator.is_limited,
        created_at: rfc3339(collaborator.since),
    }
}

/// `GET /v1/apps/{app}/collaborators`.
pub async fn list_collaborators(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, _) = caller.app(&state, &app).await?;
    let app_id = app.id;
    let collaborators = state.read(move |store| store.collaborators(app_id)).await?;
    let views: Vec<_> = collaborators
        .iter()
        .map(|collaborator| collaborator_view(app_id, collaborator))
        .collect();
    Ok(Json(json!({ "collaborators": views })))
}

#[derive(Deserialize)]
pub struct AddCollaboratorBody {
    collaborator: Option<AddCollaboratorFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AddCollaboratorFields {
    email: Option<String>,
    /// Scalingo's CLI sends it (false); true adds a limited collaborator.
    is_limited: Option<bool>,
}

/// `POST /v1/apps/{app}/collaborators`: `{"collaborator":{"email","is_limited"?}}` of an
/// existing user (owner only) → 201.
pub async fn add_collaborator(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<AddCollaboratorBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, role) = caller.app(&state, &app).await?;
    if role != Role::Owner {
        return Err(ApiError::Forbidden(
            "only the owner may add collaborators".into(),
        ));
    }
    let fields = body
        .collaborator
        .ok_or_else(|| ApiError::field("collaborator", "is required"))?;
    let is_limited = fields.is_limited.unwrap_or(false);
    let email = fields
        .email
        .ok_or_else(|| ApiError::field("email", "is required"))?;
    let lookup = email.clone();
    let user = state
        .read(move |store| store.user_by_email(&lookup))
        .await?
        .ok_or_else(|| ApiError::field("email", "no user has this email"))?;
    if user.id == app.owner {
        return Err(ApiError::field("email", "is the owner of the app"));
    }
    let id = uuid::Uuid::now_v7();
    state
        .writer
        .add_collaborator_as(app.id, user.id, id, is_limited)
        .await?;
    let collaborator = Collaborator {
        id,
        user,
        since: OffsetDateTime::now_utc(),
        is_limited,
    };
    let view = collaborator_view(app.id, &collaborator);
    Ok((StatusCode::CREATED, Json(json!({ "collaborator": view }))))
}

/// `DELETE /v1/apps/{app}/collaborators/{id}` (owner only; a collaborator may remove itself).
/// `{id}` is the collaboration id, or the user id.
pub async fn remove_collaborator(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, collaborator)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, role) = caller.app(&state, &app).await?;
    let found = find_collaborator(&state, app.id, &collaborator).await?;
    let user = &found.user;
    if role != Role::Owner && user.id != caller.user.id {
        return Err(ApiError::Forbidden(
            "only the owner may remove collaborators".into(),
        ));
    }
    state
        .writer
        .remove_collaborator(app.id, user.id, caller.user.id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The collaborator `{id}` names on `app`: its collaboration id or its user id (404 otherwise).
async fn find_collaborator(
    state: &AppState,
    app: AppId,
    id: &str,
) -> Result<Collaborator, ApiError> {
    let collaborators = state.read(move |store| store.collaborators(app)).await?;
    collaborators
        .into_iter()
        .find(|c| c.id.to_string() == id || c.user.id.to_string() == id)
        .ok_or(ApiError::NotFound("collaborator"))
}

#[derive(Deserialize)]
pub struct UpdateCollaboratorBody {
    collaborator: Option<UpdateCollaboratorFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct UpdateCollaboratorFields {
    is_limited: Option<bool>,
}

/// `PATCH /v1/apps/{app}/collaborators/{id}`: `{"collaborator":{"is_limited":bool}}` → 200
/// `{"collaborator"}` (owner only, what `scalingo collaborators-update --limited` sends).
pub async fn update_collaborator(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, collaborator)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateCollaboratorBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, role) = caller.app(&state, &app).await?;
    if role != Role::Owner {
        return Err(ApiError::Forbidden(
            "only the owner may change a collaborator's role".into(),
        ));
    }
    let is_limited = body
        .collaborator
        .ok_or_else(|| ApiError::field("collaborator", "is required"))?
        .is_limited
        .ok_or_else(|| ApiError::field("is_limited", "is required"))?;
    let mut found = find_collaborator(&state, app.id, &collaborator).await?;
    state
        .writer
        .set_collaborator_limited(app.id, found.user.id, is_limited, caller.user.id)
        .await?;
    found.is_limited = is_limited;
    Ok(Json(
        json!({ "collaborator": collaborator_view(app.id, &found) }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        assert!(valid_app_name("my-app-2"));
        assert!(!valid_app_name("ab"));
        assert!(!valid_app_name("My-App"));
        assert!(valid_app_name("2app"));
        assert!(!valid_app_name("app_x"));
        assert!(valid_app_name(&"a".repeat(48)));
        assert!(!valid_app_name(&"a".repeat(49)));
        assert!(!valid_app_name("0190a7e2-0000-7000-8000-000000000000"));
        assert!(!valid_app_name("0190a7e200007000800000000000abcd"));
    }
}
