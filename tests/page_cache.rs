//! The rendered list pages (`api::page_cache`) against the real binary: a page asked again is
//! served from memory, and every change to what it shows or to who may see it is on the very
//! next request — a new deployment, a status change, a collaborator added or removed, an app
//! deleted — while log lines (which no list shows) leave it served from memory.
//!
//! Each test first asks the page enough times that it is held, then changes the state and
//! checks the request right after the change's answer.
mod common;

use serde_json::{json, Value};

use common::push;
use common::{Client, Server};

/// Requests that make sure the page is held before a change (the first renders it).
const WARM_UP_REQUESTS: usize = 10;

async fn page(client: &Client, path: &str) -> Value {
    let (status, body) = client.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn warm(client: &Client, path: &str) -> Value {
    let first = page(client, path).await;
    for _ in 1..WARM_UP_REQUESTS {
        assert_eq!(
            page(client, path).await,
            first,
            "{path}: a held page changed by itself"
        );
    }
    first
}

fn statuses(body: &Value) -> Vec<(String, String)> {
    body["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .map(|d| {
            (
                d["id"].as_str().expect("id").to_string(),
                d["status"].as_str().expect("status").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_held_list_page_shows_a_new_deployment_and_each_status_change_on_the_very_next_request() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "listed").await;
    let path = "/v1/apps/listed/deployments";
    let every = "/v1/deployments?per_page=5";
    assert!(statuses(&warm(&admin, path).await).is_empty());
    warm(&admin, every).await;

    let mut pusher = push::start(&server.url, "listed", &server.admin_token, "v1").await;
    let id = pusher.id();
    for list in [path, every] {
        let body = page(&admin, list).await;
        assert_eq!(
            statuses(&body),
            [(id.clone(), "building".to_string())],
            "{list}"
        );
        assert_eq!(body["meta"]["pagination"]["total_count"], 1, "{list}");
    }
    warm(&admin, path).await;
    for status in ["pushing", "starting", "success"] {
        let frame = pusher.status(status).await;
        assert_eq!(frame, json!({"type": "status", "status": status}));
        for list in [path, every] {
            assert_eq!(
                statuses(&page(&admin, list).await),
                [(id.clone(), status.to_string())],
                "{list} after {status}"
            );
        }
        warm(&admin, path).await;
    }
}

#[tokio::test]
async fn log_lines_leave_a_held_list_page_unchanged_and_served() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "chatty").await;
    let mut pusher = push::start(&server.url, "chatty", &server.admin_token, "v1").await;
    let path = "/v1/apps/chatty/deployments";
    let before = warm(&admin, path).await;
    for batch in 0..20 {
        let line = format!("line {batch}");
        pusher.logs(&[line.as_str()]).await;
        assert_eq!(page(&admin, path).await, before);
    }
    // The page still moves on at the next status change.
    pusher.finish("success").await;
    assert_eq!(statuses(&page(&admin, path).await)[0].1, "success");
}

#[tokio::test]
async fn a_collaborator_sees_the_apps_deployments_in_the_every_app_list_only_while_a_collaborator()
{
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "team").await;
    let mut pusher = push::start(&server.url, "team", &server.admin_token, "v1").await;
    pusher.finish("success").await;
    let token = server.create_user("cole").await;
    let cole = server.client(&token);
    let every = "/v1/deployments";
    assert!(statuses(&warm(&cole, every).await).is_empty());

    let (status, body) = admin
        .post(
            "/v1/apps/team/collaborators",
            json!({"collaborator": {"email": "cole@example.com"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let collaboration = body["collaborator"]["id"].as_str().expect("id").to_string();
    assert_eq!(
        statuses(&page(&cole, every).await),
        [(pusher.id(), "success".to_string())]
    );
    warm(&cole, every).await;

    let (status, body) = admin
        .delete(&format!("/v1/apps/team/collaborators/{collaboration}"))
        .await;
    assert!(status == 204 || status == 200, "{status} {body}");
    assert!(statuses(&page(&cole, every).await).is_empty());
    // The admin's own view of the same list is unaffected.
    assert_eq!(statuses(&page(&admin, every).await).len(), 1);
}

#[tokio::test]
async fn a_deleted_apps_deployments_leave_the_every_app_list_on_the_very_next_request() {
    let server = Server::start();
    let admin = server.admin();
    for app in ["kept", "gone"] {
        server.create_app(&admin, app).await;
        let mut pusher = push::start(&server.url, app, &server.admin_token, "v1").await;
        pusher.finish("success").await;
    }
    let every = "/v1/deployments";
    assert_eq!(statuses(&warm(&admin, every).await).len(), 2);
    let (status, body) = admin.delete("/v1/apps/gone").await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let body = page(&admin, every).await;
    assert_eq!(statuses(&body).len(), 1, "{body}");
    assert_eq!(body["meta"]["pagination"]["total_count"], 1, "{body}");
}
