//! Followed output, served in process: `/output?follow=true` as text and as Server-Sent Events,
//! resume by line number, and `deployd follow` end to end (against the real binary).
mod common;

use std::time::Duration;

use common::{push, Server, TestServer};

/// Bound on how long a followed body may take to end after the deployment finished.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a followed GET in the background; the task returns (status, content type, body).
fn follow_in_background(
    request: reqwest::RequestBuilder,
) -> tokio::task::JoinHandle<(u16, String, String)> {
    tokio::spawn(async move {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = tokio::time::timeout(BODY_TIMEOUT, response.text())
            .await
            .expect("the followed body must end once the deployment finished")
            .expect("body");
        (status, content_type, body)
    })
}

#[tokio::test]
async fn plain_follow_streams_new_lines_and_ends_on_the_terminal_status() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "followed").await;
    let mut pusher = push::start(&server.url, "followed", &server.admin_token, "r").await;
    let id = pusher.id();
    let path = format!("/v1/apps/followed/deployments/{id}/output");
    // Before any line: a plain GET is a 404, a followed one waits.
    let (status, _, _) = admin.get_text(&path).await;
    assert_eq!(status, 404);
    let whole =
        follow_in_background(admin.request(reqwest::Method::GET, &format!("{path}?follow=true")));
    pusher.logs(&["one", "two"]).await;
    let resumed = follow_in_background(
        admin.request(reqwest::Method::GET, &format!("{path}?follow=true&after=1")),
    );
    let ranged = follow_in_background(
        admin
            .request(reqwest::Method::GET, &format!("{path}?follow=true"))
            .header("Range", "lines=3-"),
    );
    pusher.logs(&["three"]).await;
    pusher.finish("success").await;

    let (status, content_type, body) = whole.await.expect("task");
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(body, "one\ntwo\nthree\n");
    assert_eq!(resumed.await.expect("task").2, "two\nthree\n");
    assert_eq!(ranged.await.expect("task").2, "three\n");

    // Following a finished deployment answers what is stored and ends at once.
    let (_, _, body) = admin.get_text(&format!("{path}?follow=true")).await;
    assert_eq!(body, "one\ntwo\nthree\n");
    // The plain output also resumes.
    let (_, _, body) = admin.get_text(&format!("{path}?after=2")).await;
    assert_eq!(body, "three\n");
}

#[tokio::test]
async fn sse_follow_numbers_events_resumes_from_last_event_id_and_ends_with_the_status() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "sse").await;
    let mut pusher = push::start(&server.url, "sse", &server.admin_token, "r").await;
    let id = pusher.id();
    let path = format!("/v1/deployments/{id}/output");
    pusher.logs(&["a", "b"]).await;
    let sse = follow_in_background(
        admin
            .request(reqwest::Method::GET, &path)
            .header("Accept", "text/event-stream")
            .header("Last-Event-ID", "1"),
    );
    pusher.logs(&["c"]).await;
    assert_eq!(pusher.status("pushing").await["status"], "pushing");
    pusher.logs(&["d"]).await;
    for status in ["starting", "crashed-error"] {
        assert_eq!(pusher.status(status).await["status"], status);
    }

    let (status, content_type, body) = sse.await.expect("task");
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    // Line events carry their number; status events carry the status; the last is terminal.
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    let lines: Vec<&str> = events
        .iter()
        .filter(|e| e.starts_with("id: "))
        .copied()
        .collect();
    assert_eq!(
        lines,
        ["id: 2\ndata: b", "id: 3\ndata: c", "id: 4\ndata: d"],
        "{body}"
    );
    let last = events.last().expect("events");
    assert!(last.starts_with("event: status\ndata: "), "{body}");
    let data: serde_json::Value =
        serde_json::from_str(last.trim_start_matches("event: status\ndata: ")).expect("json");
    assert_eq!(data["status"], "crashed-error");
    assert_eq!(data["seq"], 4);
}

#[tokio::test]
async fn deployd_follow_prints_the_lines_live_and_exits_by_how_the_deployment_ended() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "cli").await;
    for (end, expected_code) in [("success", 0), ("crashed-error", 1)] {
        let mut pusher = push::start(&server.url, "cli", &server.admin_token, end).await;
        pusher.logs(&["first line"]).await;
        let follow = tokio::process::Command::new(common::deployd_bin())
            .args([
                "follow",
                "--url",
                &server.url,
                "--token",
                &server.admin_token,
                "--app",
                "cli",
            ])
            .env_remove("DEPLOYD_URL")
            .env_remove("DEPLOYD_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn deployd follow");
        pusher.logs(&["second line"]).await;
        pusher.finish(end).await;
        let output = tokio::time::timeout(BODY_TIMEOUT, follow.wait_with_output())
            .await
            .expect("deployd follow must exit once the deployment ended")
            .expect("output");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stdout, "first line\nsecond line\n", "{stderr}");
        assert!(
            stderr.contains(&format!("Deployment ended: {end}")),
            "{stderr}"
        );
        assert_eq!(output.status.code(), Some(expected_code), "{stderr}");
    }
}
