//! The JSON shapes of users, apps, collaborators and deployments, as Scalingo's clients read
//! them (compat.md), and the writing of a response body straight from them. Built from domain
//! types; nothing here touches the store.
//!
//! The app and deployment views borrow from the records they show and write ids, times and
//! links into the output as they go ([`Shown`], [`Time`]): a page of deployments is one
//! `serde_json::to_writer` into one pre-sized buffer ([`json_response`]), with no
//! `serde_json::Value` tree and no `String` per field in between (issue 13: the list was
//! dominated by building `json!` trees). The key set and values are those the `json!` renderings
//! had (a unit test compares them).

use std::fmt;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::ser::{Error as _, SerializeMap};
use serde::{Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::ApiError;
use crate::model::{App, AppId, Deployment, DeploymentId, User, UserId};
use crate::status::Status;
use crate::store::damage::Damage;

/// Bytes reserved per deployment in a response body: a deployment's JSON with a typical
/// public URL, git ref and pusher is 600–700 bytes, so a page of 20 fits without regrowing.
pub(crate) const DEPLOYMENT_JSON_BYTES: usize = 768;
/// Bytes reserved per app in a response body (an app's JSON is 450–550 bytes).
pub(crate) const APP_JSON_BYTES: usize = 640;
/// Bytes reserved for what surrounds the items (wrapper keys, pagination meta).
pub(crate) const ENVELOPE_JSON_BYTES: usize = 160;

/// A 200 response whose body is `body` as JSON, written into one buffer of `capacity` bytes
/// reserved up front (it grows if the guess was short). The content type is axum's `Json`'s.
pub(crate) fn json_response<T: Serialize>(body: &T, capacity: usize) -> Result<Response, ApiError> {
    json_response_with(StatusCode::OK, body, capacity)
}

/// [`json_response`] with another status (`201` for what a request created).
pub(crate) fn json_response_with<T: Serialize>(
    status: StatusCode,
    body: &T,
    capacity: usize,
) -> Result<Response, ApiError> {
    let mut bytes = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut bytes, body)
        .map_err(|e| ApiError::internal("rendering a response", e))?;
    Ok((
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response())
}

/// A `200` with a JSON body rendered before (`api::page_cache`).
pub(crate) fn json_bytes_response(body: bytes::Bytes) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `{"<key>": value}`: the one-key envelope every resource is sent in.
pub(crate) struct Wrapped<T>(pub &'static str, pub T);

impl<T: Serialize> Serialize for Wrapped<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.0, &self.1)?;
        map.end()
    }
}

/// A value written as its `Display` text, a JSON string, with no `String` in between (ids).
pub struct Shown<T>(pub T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Longest RFC 3339 text of an in-range time: `YYYY-MM-DDTHH:MM:SS.fffffffff+HH:MM` is 35
/// bytes; the rest is slack.
const RFC3339_MAX_BYTES: usize = 48;

/// A time written as [`rfc3339`] text, formatted on the stack.
pub struct Time(pub OffsetDateTime);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; RFC3339_MAX_BYTES];
        let mut free = &mut buf[..];
        self.0
            .format_into(&mut free, &Rfc3339)
            .map_err(S::Error::custom)?;
        let written = RFC3339_MAX_BYTES - free.len();
        let text = std::str::from_utf8(&buf[..written]).map_err(S::Error::custom)?;
        serializer.serialize_str(text)
    }
}

/// RFC 3339 with an offset (`Z` for UTC), as Go's `time.RFC3339` parses it.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .expect("invariant: every stored time is within RFC 3339's range")
}

#[derive(Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: String,
    pub fullname: String,
    pub flags: serde_json::Map<String, serde_json::Value>,
}

impl UserView {
    pub fn new(user: &User) -> Self {
        Self {
            id: user.id.to_string(),
            username: user.username.clone(),
            email: user.email.clone(),
            fullname: user.fullname.clone(),
            flags: serde_json::Map::new(),
        }
    }
}

#[derive(Serialize)]
pub struct OwnerView<'a> {
    pub id: Shown<&'a UserId>,
    pub username: &'a str,
    pub email: &'a str,
}

/// The WebSocket URL of an app's deployments stream (see [`deployments_stream_url`]),
/// written where it is needed.
pub struct StreamUrl<'a> {
    public_url: &'a str,
    app_name: &'a str,
}

impl fmt::Display for StreamUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let public_url = self.public_url;
        if let Some(rest) = public_url.strip_prefix("https://") {
            write!(f, "wss://{rest}")?;
        } else if let Some(rest) = public_url.strip_prefix("http://") {
            write!(f, "ws://{rest}")?;
        } else {
            f.write_str(public_url)?;
        }
        write!(f, "/apps/{}", self.app_name)
    }
}

#[derive(Serialize)]
pub struct AppLinks<'a> {
    pub deployments_stream: Shown<StreamUrl<'a>>,
}

#[derive(Serialize)]
pub struct AppView<'a> {
    pub id: Shown<&'a AppId>,
    pub name: &'a str,
    pub owner: OwnerView<'a>,
    pub created_at: Time,
    pub updated_at: Time,
    /// `new` until the app's first successful deployment, then `running`.
    pub status: &'static str,
    pub git_source: Option<&'a str>,
    pub last_deployed_at: Option<Time>,
    pub last_deployed_by: Option<&'a str>,
    pub last_deployment_id: Option<Shown<&'a DeploymentId>>,
    pub links: AppLinks<'a>,
}

/// The WebSocket URL of an app's deployments stream, from the server's public URL.
pub fn deployments_stream_url(public_url: &str, app_name: &str) -> String {
    StreamUrl {
        public_url,
        app_name,
    }
    .to_string()
}

impl<'a> AppView<'a> {
    pub fn new(app: &'a App, owner: &'a User, public_url: &'a str, deployed: bool) -> Self {
        let last = app.last_deployment.as_ref();
        Self {
            id: Shown(&app.id),
            name: &app.name,
            owner: OwnerView {
                id: Shown(&owner.id),
                username: &owner.username,
                email: &owner.email,
            },
            created_at: Time(app.created_at),
            updated_at: Time(app.updated_at),
            status: if deployed { "running" } else { "new" },
            git_source: app.git_source.as_deref(),
            last_deployed_at: last.map(|l| Time(l.at)),
            last_deployed_by: last.map(|l| l.by.as_str()),
            last_deployment_id: last.map(|l| Shown(&l.id)),
            links: AppLinks {
                deployments_stream: Shown(StreamUrl {
                    public_url,
                    app_name: &app.name,
                }),
            },
        }
    }
}

#[derive(Serialize)]
pub struct CollaboratorView {
    pub id: String,
    pub app_id: String,
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub status: &'static str,
    /// A limited collaborator reads and deploys but manages nothing (Scalingo's field).
    pub is_limited: bool,
    pub created_at: String,
}

#[derive(Serialize)]
pub struct PusherView<'a> {
    pub id: Shown<&'a UserId>,
    pub username: &'a str,
    pub email: &'a str,
}

/// A deployment's `/output` URL, written where it is needed.
pub struct OutputUrl<'a> {
    public_url: &'a str,
    deployment: &'a Deployment,
}

impl fmt::Display for OutputUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/v1/apps/{}/deployments/{}/output",
            self.public_url, self.deployment.app_id, self.deployment.id
        )
    }
}

#[derive(Serialize)]
pub struct DeploymentLinks<'a> {
    pub output: Shown<OutputUrl<'a>>,
}

/// deployd's own `log_damaged` field of a single deployment (README "Damaged log files"):
/// which lines of its log were lost. Scalingo's clients ignore it.
#[derive(Serialize)]
pub struct LogDamagedView {
    pub lines_lost_after: u64,
    pub first_lost_line: u64,
    pub last_lost_line: u64,
    pub reason: String,
}

impl LogDamagedView {
    pub fn new(damage: &Damage) -> Self {
        Self {
            lines_lost_after: damage.intact_last.0,
            first_lost_line: damage.lost.0 .0,
            last_lost_line: damage.lost.1 .0,
            reason: damage.describe(),
        }
    }
}

#[derive(Serialize)]
pub struct DeploymentView<'a> {
    pub id: Shown<&'a DeploymentId>,
    pub app_id: Shown<&'a AppId>,
    pub created_at: Time,
    pub finished_at: Option<Time>,
    pub status: Status,
    pub git_ref: &'a str,
    pub previous_git_ref: Option<&'a str>,
    pub duration: i64,
    pub image_size: u64,
    pub pusher: PusherView<'a>,
    pub links: DeploymentLinks<'a>,
    pub image: Option<&'a str>,
    pub registry: Option<&'a str>,
    pub postdeploy_hook: Option<&'a str>,
    pub stack_base_image: Option<&'a str>,
    /// deployd's own: whether it can be rolled back to (`success` with its image kept).
    pub image_kept: bool,
    /// Only on a single deployment whose log file is damaged: absent otherwise (not `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_damaged: Option<LogDamagedView>,
}

impl<'a> DeploymentView<'a> {
    pub fn new(d: &'a Deployment, public_url: &'a str) -> Self {
        Self {
            id: Shown(&d.id),
            app_id: Shown(&d.app_id),
            created_at: Time(d.created_at),
            finished_at: d.finished_at.map(Time),
            status: d.status,
            git_ref: &d.git_ref,
            previous_git_ref: d.previous_git_ref.as_deref(),
            duration: d.duration_secs(),
            image_size: d.image_size,
            pusher: PusherView {
                id: Shown(&d.pusher.id),
                username: &d.pusher.username,
                email: &d.pusher.email,
            },
            links: DeploymentLinks {
                output: Shown(OutputUrl {
                    public_url,
                    deployment: d,
                }),
            },
            image: None,
            registry: None,
            postdeploy_hook: d.postdeploy_hook(),
            stack_base_image: None,
            image_kept: d.image_kept,
            log_damaged: None,
        }
    }
}

/// `meta.pagination`: `prev_page`/`next_page` are null when there is none.
#[derive(Serialize)]
pub struct PaginationView {
    pub current_page: u64,
    pub prev_page: Option<u64>,
    pub next_page: Option<u64>,
    pub total_pages: u64,
    pub total_count: u64,
}

impl PaginationView {
    /// Page `page` of `per_page` (at least 1) items out of `total_count`.
    pub fn new(page: u64, per_page: u64, total_count: u64) -> Self {
        let total_pages = total_count.div_ceil(per_page);
        Self {
            current_page: page,
            prev_page: (page > 1).then(|| page - 1),
            next_page: (page < total_pages).then(|| page + 1),
            total_pages,
            total_count,
        }
    }
}

#[derive(Serialize)]
struct PageMeta {
    pagination: PaginationView,
}

/// `{"deployments": [...], "meta": {"pagination": ...}}`, each deployment's view made as it is
/// written.
#[derive(Serialize)]
pub(crate) struct DeploymentsPage<'a> {
    #[serde(serialize_with = "deployment_views")]
    deployments: (&'a [Deployment], &'a str),
    meta: PageMeta,
}

impl<'a> DeploymentsPage<'a> {
    pub(crate) fn new(
        deployments: &'a [Deployment],
        public_url: &'a str,
        pagination: PaginationView,
    ) -> Self {
        Self {
            deployments: (deployments, public_url),
            meta: PageMeta { pagination },
        }
    }

    /// What to reserve for its body.
    pub(crate) fn capacity(&self) -> usize {
        ENVELOPE_JSON_BYTES + self.deployments.0.len() * DEPLOYMENT_JSON_BYTES
    }
}

fn deployment_views<S: Serializer>(
    &(deployments, public_url): &(&[Deployment], &str),
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        deployments
            .iter()
            .map(|d| DeploymentView::new(d, public_url)),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use time::macros::datetime;

    use super::*;
    use crate::model::{Driver, LastDeployment, LineNo, Pusher};

    /// The deployment as the `json!` rendering built it before the views borrowed (kept here
    /// as the reference the new rendering must match).
    fn old_deployment_json(d: &Deployment, public_url: &str, damage: Option<&Damage>) -> Value {
        let mut view = json!({
            "id": d.id.to_string(),
            "app_id": d.app_id.to_string(),
            "created_at": rfc3339(d.created_at),
            "finished_at": d.finished_at.map(rfc3339),
            "status": d.status,
            "git_ref": d.git_ref.clone(),
            "previous_git_ref": d.previous_git_ref.clone(),
            "duration": d.duration_secs(),
            "image_size": d.image_size,
            "pusher": {
                "id": d.pusher.id.to_string(),
                "username": d.pusher.username.clone(),
                "email": d.pusher.email.clone(),
            },
            "links": {
                "output": format!("{public_url}/v1/apps/{}/deployments/{}/output", d.app_id, d.id),
            },
            "image": null,
            "registry": null,
            "postdeploy_hook": d.postdeploy_hook().map(str::to_owned),
            "stack_base_image": null,
            "image_kept": d.image_kept,
        });
        if let Some(damage) = damage {
            view["log_damaged"] = json!({
                "lines_lost_after": damage.intact_last.0,
                "first_lost_line": damage.lost.0 .0,
                "last_lost_line": damage.lost.1 .0,
                "reason": damage.describe(),
            });
        }
        json!({ "deployment": view })
    }

    /// The app as the `json!` rendering built it before.
    fn old_app_json(app: &App, owner: &User, public_url: &str, deployed: bool) -> Value {
        json!({
            "app": {
                "id": app.id.to_string(),
                "name": app.name.clone(),
                "owner": {
                    "id": owner.id.to_string(),
                    "username": owner.username.clone(),
                    "email": owner.email.clone(),
                },
                "created_at": rfc3339(app.created_at),
                "updated_at": rfc3339(app.updated_at),
                "status": if deployed { "running" } else { "new" },
                "git_source": app.git_source.clone(),
                "last_deployed_at": app.last_deployment.as_ref().map(|l| rfc3339(l.at)),
                "last_deployed_by": app.last_deployment.as_ref().map(|l| l.by.clone()),
                "last_deployment_id": app.last_deployment.as_ref().map(|l| l.id.to_string()),
                "links": { "deployments_stream": deployments_stream_url(public_url, &app.name) },
            }
        })
    }

    fn rendered(response: Response) -> (Value, String) {
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .to_string();
        let body = response.into_body();
        let bytes =
            block_on(axum::body::to_bytes(body, usize::MAX)).expect("the body is in memory");
        (
            serde_json::from_slice(&bytes).expect("the body is JSON"),
            content_type,
        )
    }

    /// The bodies here are in memory: polling once finishes them.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    fn pusher() -> Pusher {
        Pusher {
            id: UserId::generate(),
            username: "ana \"quoted\" \\ ünï".into(),
            email: "ana@example.com".into(),
        }
    }

    /// Every optional field set: finished, a previous ref, a postdeploy hook, an image kept,
    /// a time with nanoseconds and a damaged log.
    fn full_deployment() -> Deployment {
        Deployment {
            id: DeploymentId::generate(),
            app_id: AppId::generate(),
            created_at: datetime!(2026-12-02 01:29:28.123456789 UTC),
            status: Status::Success,
            finished_at: Some(datetime!(2026-12-02 01:31:07.5 UTC)),
            git_ref: "v2\n\"tab\"\t".into(),
            previous_git_ref: Some("v1".into()),
            pusher: pusher(),
            image_size: 123_456_789,
            driver: Driver::Executor {
                source_url: "https://example.com/a.tar.gz".into(),
                postdeploy_hook: Some("bundle exec rake db:migrate".into()),
            },
            last_line: LineNo(42),
            image_kept: true,
        }
    }

    /// Every optional field unset: running, external, no previous ref, no image.
    fn bare_deployment() -> Deployment {
        Deployment {
            id: DeploymentId::generate(),
            app_id: AppId::generate(),
            created_at: datetime!(2026-01-01 00:00:00 UTC),
            status: Status::Building,
            finished_at: None,
            git_ref: "main".into(),
            previous_git_ref: None,
            pusher: pusher(),
            image_size: 0,
            driver: Driver::External,
            last_line: LineNo(0),
            image_kept: false,
        }
    }

    fn damage() -> Damage {
        Damage {
            file_len: 100,
            index_end: 250,
            intact_end: 90,
            intact_last: LineNo(9),
            lost: (LineNo(10), LineNo(25)),
            lost_keys: Vec::new(),
        }
    }

    #[test]
    fn a_single_deployment_renders_the_same_keys_and_values_as_the_json_macro_did() {
        for public_url in ["https://deploy.example.com", "http://127.0.0.1:8080"] {
            for d in [full_deployment(), bare_deployment()] {
                for damage in [None, Some(damage())] {
                    let mut view = DeploymentView::new(&d, public_url);
                    view.log_damaged = damage.as_ref().map(LogDamagedView::new);
                    let (got, content_type) =
                        rendered(json_response(&Wrapped("deployment", view), 16).expect("renders"));
                    assert_eq!(got, old_deployment_json(&d, public_url, damage.as_ref()));
                    assert_eq!(content_type, "application/json");
                }
            }
        }
    }

    #[test]
    fn a_page_of_deployments_renders_each_as_the_json_macro_did_with_its_pagination() {
        let public_url = "https://deploy.example.com";
        let deployments = [full_deployment(), bare_deployment()];
        let page = DeploymentsPage::new(&deployments, public_url, PaginationView::new(2, 2, 5));
        let (got, _) = rendered(json_response(&page, page.capacity()).expect("renders"));
        let expected_items: Vec<Value> = deployments
            .iter()
            .map(|d| old_deployment_json(d, public_url, None)["deployment"].clone())
            .collect();
        assert_eq!(
            got,
            json!({
                "deployments": expected_items,
                "meta": { "pagination": {
                    "current_page": 2, "prev_page": 1, "next_page": 3,
                    "total_pages": 3, "total_count": 5,
                }},
            })
        );
        let empty = DeploymentsPage::new(&[], public_url, PaginationView::new(1, 20, 0));
        let (got, _) = rendered(json_response(&empty, empty.capacity()).expect("renders"));
        assert_eq!(
            got,
            json!({"deployments": [], "meta": {"pagination": {
                "current_page": 1, "prev_page": null, "next_page": null,
                "total_pages": 0, "total_count": 0,
            }}})
        );
    }

    #[test]
    fn an_app_renders_the_same_keys_and_values_as_the_json_macro_did() {
        let owner = User {
            id: UserId::generate(),
            username: "owner".into(),
            email: "o@example.com".into(),
            fullname: "O".into(),
            is_admin: false,
            created_at: datetime!(2025-05-05 05:05:05 UTC),
        };
        let deployed = App {
            id: AppId::generate(),
            name: "my-app".into(),
            owner: owner.id,
            git_source: Some("https://git.example.com/my-app".into()),
            created_at: datetime!(2026-03-04 05:06:07.000001 UTC),
            updated_at: datetime!(2026-03-05 05:06:07 UTC),
            last_deployment: Some(LastDeployment {
                id: DeploymentId::generate(),
                at: datetime!(2026-03-05 05:06:07 UTC),
                by: "ana".into(),
            }),
        };
        let fresh = App {
            git_source: None,
            last_deployment: None,
            ..deployed.clone()
        };
        for public_url in ["https://deploy.example.com", "http://h:1", "unix-ish"] {
            for (app, running) in [(&deployed, true), (&fresh, false)] {
                let view = AppView::new(app, &owner, public_url, running);
                let (got, _) = rendered(json_response(&Wrapped("app", view), 16).expect("renders"));
                assert_eq!(got, old_app_json(app, &owner, public_url, running));
            }
        }
    }
}
