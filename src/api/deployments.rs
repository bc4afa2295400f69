//! The deployments resource: list (paginated, newest first, filtered by status), show, and
//! trigger (the built-in executor); `GET /v1/deployments`, the deployments of every app the
//! caller may see. Output and its live follow are in `api::stream`.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::access::Caller;
use super::page_cache::{PageKey, PageScope};
use super::views::{
    self, DeploymentView, DeploymentsPage, LogDamagedView, PaginationView, Wrapped,
};
use super::{ApiError, AppState, JsonBody};
use crate::model::{App, AppId, Deployment, DeploymentId, Driver, Pusher};
use crate::status::Status;
use crate::store::{Store, StoreError};

/// Page size when the client gives none (compat.md: 20).
pub const DEFAULT_PER_PAGE: u64 = 20;
/// Largest page size; bigger asks are a 422, so a client never silently gets fewer than asked.
pub const MAX_PER_PAGE: u64 = 100;
/// Longest `source_url` accepted.
const MAX_SOURCE_URL_BYTES: usize = 4096;
/// Longest `postdeploy_hook` accepted.
const MAX_HOOK_BYTES: usize = 4096;

/// Parsed `page` / `per_page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u64,
    pub per_page: u64,
}

/// Parses the pagination query: non-numbers are a 400, numbers out of range a 422.
pub fn parse_page_request(query: Option<&str>) -> Result<PageRequest, ApiError> {
    let mut request = PageRequest {
        page: 1,
        per_page: DEFAULT_PER_PAGE,
    };
    let pairs = super::query::pairs(query)?;
    if let Some(value) = super::query::last(&pairs, "page") {
        request.page = super::query::unsigned("page", value)?;
    }
    if let Some(value) = super::query::last(&pairs, "per_page") {
        request.per_page = super::query::unsigned("per_page", value)?;
    }
    if request.page < 1 {
        return Err(ApiError::field("page", "must be at least 1"));
    }
    if !(1..=MAX_PER_PAGE).contains(&request.per_page) {
        return Err(ApiError::field(
            "per_page",
            format!("must be between 1 and {MAX_PER_PAGE}"),
        ));
    }
    Ok(request)
}

/// `meta.pagination`: `prev_page`/`next_page` are null when there is none.
pub fn pagination(request: &PageRequest, total_count: u64) -> serde_json::Value {
    json!(PaginationView::new(
        request.page,
        request.per_page,
        total_count
    ))
}

/// The name `status=unfinished` stands for: every status a deployment leaves.
pub const UNFINISHED: &str = "unfinished";

/// Parses the `status` filter: comma-separated status names or `unfinished`, in any order,
/// repeated or not. `None` when absent or empty (no filter); an unknown name is a 422 on
/// `status`.
pub fn parse_status_filter(query: Option<&str>) -> Result<Option<Vec<Status>>, ApiError> {
    let mut statuses: Vec<Status> = Vec::new();
    let mut unknown = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let Some(("status", value)) = pair.split_once('=') else {
            continue;
        };
        // Clients may send the commas percent-encoded.
        let value = value.replace("%2C", ",").replace("%2c", ",");
        for name in value.split(',').filter(|n| !n.is_empty()) {
            if name == UNFINISHED {
                statuses.extend(Status::ALL.into_iter().filter(|s| !s.is_terminal()));
            } else {
                match name.parse::<Status>() {
                    Ok(status) => statuses.push(status),
                    Err(_) => unknown.push(name.to_string()),
                }
            }
        }
    }
    if !unknown.is_empty() {
        let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::Unprocessable(
            unknown
                .into_iter()
                .map(|name| {
                    (
                        "status".to_string(),
                        format!(
                            "unknown status {name:?}: expected {UNFINISHED} or one of {}",
                            known.join(", ")
                        ),
                    )
                })
                .collect(),
        ));
    }
    if statuses.is_empty() {
        return Ok(None);
    }
    statuses.sort_by_key(|s| crate::store::codec::status_code(*s));
    statuses.dedup();
    Ok(Some(statuses))
}

/// One page of the deployments of `apps` (at one of `statuses`, when given), newest first,
/// with the total count for the pagination meta.
///
/// `every_app`: `apps` are all the apps there are (an admin's view), so every app's counts
/// apply.
fn deployments_page(
    store: &Store,
    apps: &[AppId],
    every_app: bool,
    statuses: Option<&[Status]>,
    request: &PageRequest,
) -> Result<(u64, Vec<Deployment>), StoreError> {
    let offset = (request.page - 1).saturating_mul(request.per_page);
    let (total, ids) = match apps {
        // Every app: every app's counts and buckets, the same seek as one app's.
        _ if every_app => store.every_apps_page(apps, statuses, offset, request.per_page)?,
        // One app: its counts and count buckets (one point read, then a seek to the offset).
        [app] => store.app_page(*app, statuses, offset, request.per_page)?,
        // Some apps (a non-admin's): no counts cover exactly them; the total is one point read
        // per app, the offset is skipped key by key.
        _ => {
            let statuses = statuses.unwrap_or(&Status::ALL);
            (
                store.status_count(apps, statuses)?,
                store.status_ids(apps, statuses, offset, request.per_page)?,
            )
        }
    };
    let mut deployments = Vec::with_capacity(ids.len());
    for id in ids {
        // Pruned between the index read and now: gone, like a missing one. Only rendered, so
        // without `last_line` (`Store::deployment_for_view`).
        if let Some(d) = store.deployment_for_view(id)? {
            deployments.push(d);
        }
    }
    Ok((total, deployments))
}

/// The page as a response: written straight from the records (`api::views`).
fn page_body(
    state: &AppState,
    request: &PageRequest,
    total: u64,
    deployments: &[Deployment],
) -> Result<bytes::Bytes, ApiError> {
    let page = DeploymentsPage::new(
        deployments,
        &state.config.public_url,
        PaginationView::new(request.page, request.per_page, total),
    );
    let mut bytes = Vec::with_capacity(page.capacity());
    serde_json::to_writer(&mut bytes, &page)
        .map_err(|e| ApiError::internal("rendering a response", e))?;
    Ok(bytes.into())
}

/// A list page: the rendered one while nothing it shows changed (`api::page_cache`), else
/// `read` on the blocking pool, rendered and kept. The listing generation is read before the
/// store is, so a page read across a write is never kept past it.
async fn cached_page(
    state: &AppState,
    request: PageRequest,
    key: PageKey,
    read: impl FnOnce(&Store) -> Result<(u64, Vec<Deployment>), StoreError> + Send + 'static,
) -> Result<axum::response::Response, ApiError> {
    let generation = state.store.cache().listing_generation();
    if let Some(body) = state.pages.get(&key, generation) {
        return Ok(views::json_bytes_response(body));
    }
    let (total, deployments) = state.read(read).await?;
    let body = page_body(state, &request, total, &deployments)?;
    state.pages.insert(key, body.clone(), generation);
    Ok(views::json_bytes_response(body))
}

/// `GET /v1/apps/{app}/deployments?page=&per_page=&status=`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let request = parse_page_request(query.as_deref())?;
    let statuses = parse_status_filter(query.as_deref())?;
    let (app, _) = caller.app(&state, &app).await?;
    let key = PageKey {
        scope: PageScope::App(app.id),
        statuses: statuses.clone(),
        page: request.page,
        per_page: request.per_page,
    };
    cached_page(&state, request, key, move |store| {
        deployments_page(store, &[app.id], false, statuses.as_deref(), &request)
    })
    .await
}

/// `GET /v1/deployments?page=&per_page=&status=`: the deployments of every app the caller may
/// see (an admin: every app), newest first, with the same pagination and filters.
pub async fn list_all(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let request = parse_page_request(query.as_deref())?;
    let statuses = parse_status_filter(query.as_deref())?;
    let user = caller.user;
    let key = PageKey {
        scope: PageScope::Caller(user.id),
        statuses: statuses.clone(),
        page: request.page,
        per_page: request.per_page,
    };
    cached_page(&state, request, key, move |store| {
        let mut apps = Vec::new();
        for app in store.all_apps()? {
            if user.is_admin || app.owner == user.id || store.is_collaborator(app.id, user.id)? {
                apps.push(app.id);
            }
        }
        deployments_page(store, &apps, user.is_admin, statuses.as_deref(), &request)
    })
    .await
}

/// Loads a deployment of `app` by id, or 404.
pub async fn find_deployment(
    state: &AppState,
    app: &App,
    id: &str,
) -> Result<Deployment, ApiError> {
    let id: DeploymentId = id.parse().map_err(|_| ApiError::NotFound("deployment"))?;
    let app_id = app.id;
    state
        .read(move |store| store.deployment(id))
        .await?
        .filter(|d| d.app_id == app_id)
        .ok_or(ApiError::NotFound("deployment"))
}

/// `GET /v1/apps/{app}/deployments/{id}`.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, _) = caller.app(&state, &app).await?;
    let deployment = find_deployment(&state, &app, &id).await?;
    let id = deployment.id;
    // A damaged log file (README "Damaged log files"): an extra field, which Scalingo's
    // clients ignore.
    let damage = state
        .read(move |store| crate::store::damage::recorded(store, id))
        .await?;
    let mut view = DeploymentView::new(&deployment, &state.config.public_url);
    view.log_damaged = damage.as_ref().map(LogDamagedView::new);
    views::json_response(
        &Wrapped("deployment", view),
        views::ENVELOPE_JSON_BYTES + views::DEPLOYMENT_JSON_BYTES,
    )
}

#[derive(Deserialize)]
pub struct TriggerBody {
    deployment: Option<TriggerFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct TriggerFields {
    git_ref: Option<String>,
    source_url: Option<String>,
    postdeploy_hook: Option<String>,
}

/// A git ref made up for a deployment triggered without one.
pub fn generated_git_ref() -> String {
    format!(
        "deployd-{}",
        time::OffsetDateTime::now_utc().unix_timestamp()
    )
}

/// The ref deployed from an app's `git_source` when the trigger gives none.
const DEFAULT_BRANCH_REF: &str = "HEAD";

/// Whether `git_ref` may be put in an archive URL as is: git's own ref-name rules
/// (`git check-ref-format`: no `..`, `?`, spaces…) plus no `#` or `%`, so nothing in it can
/// change the URL's meaning; a ref breaking them is refused rather than escaped.
fn is_archive_safe_ref(git_ref: &str) -> bool {
    const FORBIDDEN: &[char] = &[' ', '~', '^', ':', '?', '*', '[', '\\', '#', '%'];
    !git_ref.is_empty()
        && !git_ref.contains("..")
        && !git_ref.contains("//")
        && !git_ref.contains("@{")
        && !git_ref.starts_with('/')
        && !git_ref.ends_with('/')
        && !git_ref.starts_with('-')
        && !git_ref
            .chars()
            .any(|c| c.is_control() || FORBIDDEN.contains(&c))
}

/// The archive URL of `git_ref` for a GitHub-style repository URL:
/// `<git_source>/archive/<git_ref>.tar.gz`, without the clone URL's trailing `/` or `.git`
/// (`https://github.com/org/repo.git` has its archives under `https://github.com/org/repo`).
pub fn git_source_archive(git_source: &str, git_ref: &str) -> String {
    let base = git_source.trim_end_matches('/');
    let base = base.strip_suffix(".git").unwrap_or(base);
    format!("{base}/archive/{git_ref}.tar.gz")
}

/// `POST /v1/apps/{app}/deployments` → 201 with the deployment (`building`, or `queued`), run by
/// the built-in executor.
pub async fn trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<TriggerBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, _) = caller.app(&state, &app).await?;
    let fields = body
        .deployment
        .ok_or_else(|| ApiError::field("deployment", "is required"))?;
    let mut errors = Vec::new();
    let given_source = fields.source_url.filter(|s| !s.is_empty());
    let from_git_source = given_source.is_none() && app.git_source.is_some();
    let git_ref = match fields.git_ref.filter(|r| !r.trim().is_empty()) {
        Some(r) => r,
        // The repository's default branch: what a forge's `archive/HEAD.tar.gz` serves.
        None if from_git_source => DEFAULT_BRANCH_REF.to_string(),
        None => generated_git_ref(),
    };
    if let Err(message) = crate::model::check_git_ref(&git_ref) {
        errors.push(("git_ref".to_string(), message));
    } else if from_git_source && !is_archive_safe_ref(&git_ref) {
        errors.push((
            "git_ref".to_string(),
            "is not a valid git ref name (it becomes part of the archive URL)".to_string(),
        ));
    }
    let source_url = match (given_source, &app.git_source) {
        (Some(url), _) => Some(url),
        (None, Some(git_source)) => Some(git_source_archive(git_source, &git_ref)),
        (None, None) => None,
    };
    match &source_url {
        None => errors.push((
            "source_url".to_string(),
            "is required when the app has no git_source".to_string(),
        )),
        Some(url)
            if url.len() > MAX_SOURCE_URL_BYTES
                || !(url.starts_with("http://") || url.starts_with("https://")) =>
        {
            errors.push((
                "source_url".to_string(),
                "must be an http(s) URL".to_string(),
            ));
        }
        Some(url) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if state.sources.is_own_url(url)
                && state.sources.live_local_archive(url, now).await.is_none()
            {
                errors.push((
                    "source_url".to_string(),
                    "is an expired, invalid or not yet uploaded source URL".to_string(),
                ));
            }
        }
    }
    if let Some(hook) = &fields.postdeploy_hook {
        if hook.len() > MAX_HOOK_BYTES {
            errors.push((
                "postdeploy_hook".to_string(),
                format!("is longer than {MAX_HOOK_BYTES} bytes"),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Unprocessable(errors));
    }
    let driver = Driver::Executor {
        source_url: source_url.expect("invariant: checked above"),
        postdeploy_hook: fields.postdeploy_hook.filter(|h| !h.trim().is_empty()),
    };
    let pusher = Pusher {
        id: caller.user.id,
        username: caller.user.username.clone(),
        email: caller.user.email.clone(),
    };
    let deployment = state
        .writer
        .create_deployment(app.id, git_ref, pusher, driver)
        .await?;
    state.executors.spawn(deployment.clone(), app.name.clone());
    Ok((
        StatusCode::CREATED,
        Json(json!({ "deployment": DeploymentView::new(&deployment, &state.config.public_url) })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_requests() {
        assert_eq!(
            parse_page_request(None).expect("ok"),
            PageRequest {
                page: 1,
                per_page: 20
            }
        );
        assert_eq!(
            parse_page_request(Some("page=3&per_page=100&x=y")).expect("ok"),
            PageRequest {
                page: 3,
                per_page: 100
            }
        );
        assert!(matches!(
            parse_page_request(Some("page=abc")),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_page_request(Some("page=-1")),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_page_request(Some("page=0")),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            parse_page_request(Some("per_page=101")),
            Err(ApiError::Unprocessable(_))
        ));
    }

    #[test]
    fn archive_safe_refs() {
        for good in ["main", "v1.2", "feature/x", "0123abcd", "HEAD"] {
            assert!(is_archive_safe_ref(good), "{good}");
        }
        for bad in [
            "../x", "a..b", "a b", "a?b", "a#b", "/a", "a/", "a//b", "-a", "a%2e", "",
        ] {
            assert!(!is_archive_safe_ref(bad), "{bad}");
        }
    }

    #[test]
    fn git_source_archive_urls() {
        for source in [
            "https://github.com/org/repo",
            "https://github.com/org/repo/",
            "https://github.com/org/repo.git",
        ] {
            assert_eq!(
                git_source_archive(source, "v1"),
                "https://github.com/org/repo/archive/v1.tar.gz"
            );
        }
    }

    #[test]
    fn pagination_edges() {
        let req = |page| PageRequest { page, per_page: 2 };
        assert_eq!(
            pagination(&req(1), 0),
            json!({"current_page":1,"prev_page":null,"next_page":null,"total_pages":0,"total_count":0})
        );
        assert_eq!(pagination(&req(1), 4)["next_page"], json!(2));
        assert_eq!(pagination(&req(2), 4)["next_page"], json!(null));
        assert_eq!(pagination(&req(2), 4)["prev_page"], json!(1));
        assert_eq!(pagination(&req(5), 4)["next_page"], json!(null));
        assert_eq!(pagination(&req(5), 4)["total_pages"], json!(2));
    }
}
