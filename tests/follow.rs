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

/// Reads a followed body chunk by chunk until it ends; returns the text and whether it ended
/// cleanly (`true`) or broke (`false`, the connection aborted).
async fn read_to_end(mut response: reqwest::Response) -> (String, bool) {
    let mut text = String::new();
    loop {
        match tokio::time::timeout(BODY_TIMEOUT, response.chunk()).await {
            Err(_) => panic!("the followed body neither ended nor broke: {text}"),
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => return (text, true),
            Ok(Err(_)) => return (text, false),
        }
    }
}

/// Reads the body until `needle` appeared; returns the response to keep reading.
async fn read_until(response: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = tokio::time::timeout(BODY_TIMEOUT, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {text:?}"))
            .expect("chunk")
            .unwrap_or_else(|| panic!("body ended before {needle:?}: {text:?}"));
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

#[tokio::test]
async fn plain_followed_output_is_aborted_not_completed_when_the_server_shuts_down() {
    let mut server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "cut-text").await;
    let mut pusher = push::start(&server.url, "cut-text", &server.admin_token, "r").await;
    pusher.logs(&["before shutdown"]).await;
    let path = format!(
        "/v1/apps/cut-text/deployments/{}/output?follow=true",
        pusher.id()
    );
    let mut response = admin
        .request(reqwest::Method::GET, &path)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        read_until(&mut response, "before shutdown\n").await,
        "before shutdown\n"
    );
    let reading = tokio::spawn(read_to_end(response));
    server.stop().await;
    let (rest, clean) = reading.await.expect("task");
    assert!(
        !clean,
        "a cut output must not end like a complete one (got {rest:?})"
    );
}

#[tokio::test]
async fn sse_followed_output_ends_with_an_error_event_and_no_terminal_status_on_shutdown() {
    let mut server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "cut-sse").await;
    let mut pusher = push::start(&server.url, "cut-sse", &server.admin_token, "r").await;
    pusher.logs(&["before shutdown"]).await;
    let path = format!("/v1/apps/cut-sse/deployments/{}/output", pusher.id());
    let mut response = admin
        .request(reqwest::Method::GET, &path)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("request");
    let head = read_until(&mut response, "event: status").await;
    assert!(head.contains("data: before shutdown"), "{head}");
    let reading = tokio::spawn(read_to_end(response));
    server.stop().await;
    let (rest, _) = reading.await.expect("task");
    assert!(rest.contains("event: error\ndata: "), "{rest:?}");
    assert!(
        !rest.contains("event: status"),
        "no status may follow at shutdown (the session's abort is not the deployment's end): {rest:?}"
    );
}

#[tokio::test]
async fn sse_followed_output_sends_keep_alive_comments_while_the_deployment_is_quiet() {
    let server = TestServer::start_with(common::Options {
        config_toml: "[server]\nsse_keepalive_secs = 1\n".into(),
        ..common::Options::default()
    })
    .await;
    let admin = server.admin();
    server.create_app(&admin, "quiet-sse").await;
    let pusher = push::start(&server.url, "quiet-sse", &server.admin_token, "r").await;
    let path = format!("/v1/apps/quiet-sse/deployments/{}/output", pusher.id());
    let mut response = admin
        .request(reqwest::Method::GET, &path)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("request");
    let text = read_until(&mut response, ": keep-alive\n\n").await;
    assert!(text.starts_with("event: status\n"), "{text}");
}

#[tokio::test]
async fn deployd_follow_exits_3_when_the_server_goes_away() {
    let mut server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "cli-cut").await;
    let mut pusher = push::start(&server.url, "cli-cut", &server.admin_token, "r").await;
    pusher.logs(&["first line"]).await;
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_deployd"))
        .args([
            "follow",
            "--url",
            &server.url,
            "--token",
            &server.admin_token,
        ])
        .args(["--app", "cli-cut"])
        .env_remove("DEPLOYD_URL")
        .env_remove("DEPLOYD_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn deployd follow");
    // Once the first line is printed the follow is under way.
    let mut stdout = tokio::io::BufReader::new(follow.stdout.take().expect("stdout"));
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::time::timeout(BODY_TIMEOUT, stdout.read_line(&mut line))
        .await
        .expect("a line")
        .expect("read");
    assert_eq!(line, "first line\n");
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop");
    let output = tokio::time::timeout(BODY_TIMEOUT, follow.wait_with_output())
        .await
        .expect("deployd follow must exit once the server is gone")
        .expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
}
