//! The JSON shapes of users, apps, collaborators and deployments, as Scalingo's clients read
//! them (compat.md). Built from domain types; nothing here touches the store.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::model::{App, Deployment, User};
use crate::status::Status;

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
pub struct OwnerView {
    pub id: String,
    pub username: String,
    pub email: String,
}

#[derive(Serialize)]
pub struct AppLinks {
    pub deployments_stream: String,
}

#[derive(Serialize)]
pub struct AppView {
    pub id: String,
    pub name: String,
    pub owner: OwnerView,
    pub created_at: String,
    pub updated_at: String,
    /// `new` until the app's first successful deployment, then `running`.
    pub status: &'static str,
    pub git_source: Option<String>,
    pub last_deployed_at: Option<String>,
    pub last_deployed_by: Option<String>,
    pub last_deployment_id: Option<String>,
    pub links: AppLinks,
}

/// The WebSocket URL of an app's deployments stream, from the server's public URL.
pub fn deployments_stream_url(public_url: &str, app_name: &str) -> String {
    let ws_base = if let Some(rest) = public_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = public_url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        public_url.to_string()
    };
    format!("{ws_base}/apps/{app_name}")
}

impl AppView {
    pub fn new(app: &App, owner: &User, public_url: &str, deployed: bool) -> Self {
        Self {
            id: app.id.to_string(),
            name: app.name.clone(),
            owner: OwnerView {
                id: owner.id.to_string(),
                username: owner.username.clone(),
                email: owner.email.clone(),
            },
            created_at: rfc3339(app.created_at),
            updated_at: rfc3339(app.updated_at),
            status: if deployed { "running" } else { "new" },
            git_source: app.git_source.clone(),
            last_deployed_at: app.last_deployment.as_ref().map(|l| rfc3339(l.at)),
            last_deployed_by: app.last_deployment.as_ref().map(|l| l.by.clone()),
            last_deployment_id: app.last_deployment.as_ref().map(|l| l.id.to_string()),
            links: AppLinks {
                deployments_stream: deployments_stream_url(public_url, &app.name),
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
pub struct PusherView {
    pub id: String,
    pub username: String,
    pub email: String,
}

#[derive(Serialize)]
pub struct DeploymentLinks {
    pub output: String,
}

#[derive(Serialize)]
pub struct DeploymentView {
    pub id: String,
    pub app_id: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub status: Status,
    pub git_ref: String,
    pub previous_git_ref: Option<String>,
    pub duration: i64,
    pub image_size: u64,
    pub pusher: PusherView,
    pub links: DeploymentLinks,
    pub image: Option<String>,
    pub registry: Option<String>,
    pub postdeploy_hook: Option<String>,
    pub stack_base_image: Option<String>,
    /// deployd's own: whether it can be rolled back to (`success` with its image kept).
    pub image_kept: bool,
}

impl DeploymentView {
    pub fn new(d: &Deployment, public_url: &str) -> Self {
        Self {
            id: d.id.to_string(),
            app_id: d.app_id.to_string(),
            created_at: rfc3339(d.created_at),
            finished_at: d.finished_at.map(rfc3339),
            status: d.status,
            git_ref: d.git_ref.clone(),
            previous_git_ref: d.previous_git_ref.clone(),
            duration: d.duration_secs(),
            image_size: d.image_size,
            pusher: PusherView {
                id: d.pusher.id.to_string(),
                username: d.pusher.username.clone(),
                email: d.pusher.email.clone(),
            },
            links: DeploymentLinks {
                output: format!(
                    "{public_url}/v1/apps/{}/deployments/{}/output",
                    d.app_id, d.id
                ),
            },
            image: None,
            registry: None,
            postdeploy_hook: d.postdeploy_hook().map(str::to_owned),
            stack_base_image: None,
            image_kept: d.image_kept,
        }
    }
}
