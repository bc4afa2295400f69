//! Push sessions through the real binary: a pusher run to success, and a broken connection.
mod common;

use std::time::Duration;

use common::{push, Server};

#[tokio::test]
async fn a_pusher_runs_a_deployment_to_success_and_its_output_is_stored() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "pushed-app").await;
    let mut pusher = push::start(&server.url, "pushed-app", &server.admin_token, "abc123").await;
    assert_eq!(pusher.deployment["status"], "building");
    assert_eq!(pusher.logs(&["line one", "line two"]).await, 2);
    assert_eq!(pusher.logs(&["line three"]).await, 3);
    pusher.finish("success").await;
    let id = pusher.id();
    let done = common::wait_finished(&admin, "pushed-app", &id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "success");
    assert_eq!(done["git_ref"], "abc123");
    assert!(done["finished_at"].is_string());
    let (status, content_type, text) = admin
        .get_text(&format!("/v1/apps/pushed-app/deployments/{id}/output"))
        .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(text, "line one\nline two\nline three\n");
}

#[tokio::test]
async fn a_broken_pusher_connection_aborts_the_deployment() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "broken-app").await;
    let mut pusher = push::start(&server.url, "broken-app", &server.admin_token, "r1").await;
    pusher.logs(&["started"]).await;
    let id = pusher.id();
    drop(pusher);
    let done = common::wait_finished(&admin, "broken-app", &id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "aborted");
    let (_, _, text) = admin
        .get_text(&format!("/v1/apps/broken-app/deployments/{id}/output"))
        .await;
    assert!(text.starts_with("started\n"), "{text}");
    assert!(text.contains("connection"), "{text}");
}
