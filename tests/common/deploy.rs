//! Shortcuts for tests that need deployments in the store: each runs one external pusher session
//! (the push protocol over the real WebSocket) to a terminal status.
#![allow(dead_code)]

use serde_json::Value;

use crate::common::{push, Client, Endpoint};

/// Statuses a pusher passes through before `end` (from `building`).
fn path_to(end: &str) -> &'static [&'static str] {
    match end {
        "build-error" | "aborted" => &[],
        "success" | "crashed-error" | "timeout-error" | "hook-error" => &["pushing", "starting"],
        other => panic!("no pusher path to {other}"),
    }
}

/// Runs a deployment of `app` with `lines` of output to `end`; returns its id once the server
/// closed the session (the deployment is then terminal in the store).
pub async fn deploy(
    server: &Endpoint,
    app: &str,
    token: &str,
    lines: &[&str],
    end: &str,
) -> String {
    let mut pusher = push::start(&server.url, app, token, "ref").await;
    assert_eq!(
        pusher.deployment["status"], "building",
        "{}",
        pusher.deployment
    );
    if !lines.is_empty() {
        pusher.logs(lines).await;
    }
    for status in path_to(end).iter().chain(std::iter::once(&end)) {
        let frame = pusher.status(status).await;
        assert_eq!(frame["status"], *status, "{frame}");
    }
    // The server closes the socket after a terminal status.
    assert!(push::next_json(&mut pusher.socket).await.is_none());
    pusher.id()
}

/// The deployment's JSON as the API shows it.
pub async fn get_deployment(client: &Client, app: &str, id: &str) -> Value {
    let (status, body) = client
        .get(&format!("/v1/apps/{app}/deployments/{id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["deployment"].clone()
}
