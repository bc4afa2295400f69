//! Issue 9, input side: every bad value gets a clear error with the right code, changes
//! nothing stored, and the server keeps serving. In process (real sockets, real sled).
mod common;

use common::{push, TestServer, ADMIN_TOKEN};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The close code the server ends the push socket with (panics on anything else).
async fn close_code(socket: &mut push::Socket) -> u16 {
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), socket.next())
            .await
            .expect("the server answers");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

/// The error frame sent before the close.
async fn error_frame(socket: &mut push::Socket) -> Value {
    let frame = push::next_json(socket).await.expect("error frame");
    assert_eq!(frame["type"], "error", "{frame}");
    frame
}

async fn deployment_count(server: &TestServer, app: &str) -> usize {
    let (status, body) = server
        .admin()
        .get(&format!("/v1/apps/{app}/deployments"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["deployments"].as_array().expect("list").len()
}

#[tokio::test]
async fn a_push_start_frame_with_a_git_ref_longer_than_the_rest_limit_is_refused() {
    let server = TestServer::start().await;
    server.create_app(&server.admin(), "long-ref").await;
    let long = "r".repeat(257);
    // The REST trigger refuses it...
    let (status, body) = server
        .admin()
        .post(
            "/v1/apps/long-ref/deployments",
            json!({"deployment": {"git_ref": long, "source_url": "http://127.0.0.1:1/a.tar.gz"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"]["git_ref"].is_array(), "{body}");
    // ...and so does the push socket, with the same rule.
    for bad in [long.as_str(), "main\u{0}\u{1b}[31m"] {
        let mut socket = push::connect(&server.url, "long-ref", ADMIN_TOKEN)
            .await
            .expect("upgrade");
        let start = json!({"type": "start", "git_ref": bad}).to_string();
        socket
            .send(Message::Text(start.into()))
            .await
            .expect("send");
        let frame = error_frame(&mut socket).await;
        assert_eq!(frame["code"], "bad_frame", "{frame}");
        assert!(
            frame["error"].as_str().unwrap_or("").contains("git_ref"),
            "{frame}"
        );
        assert_eq!(close_code(&mut socket).await, 1008);
    }
    assert_eq!(deployment_count(&server, "long-ref").await, 0);
    // A ref at the limit is taken.
    let at_limit = "r".repeat(256);
    let pusher = push::start(&server.url, "long-ref", ADMIN_TOKEN, &at_limit).await;
    assert_eq!(pusher.deployment["git_ref"], Value::String(at_limit));
}

#[tokio::test]
async fn a_binary_first_push_frame_is_closed_with_1003() {
    let server = TestServer::start().await;
    server.create_app(&server.admin(), "binary-start").await;
    let mut socket = push::connect(&server.url, "binary-start", ADMIN_TOKEN)
        .await
        .expect("upgrade");
    socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    let frame = error_frame(&mut socket).await;
    assert_eq!(frame["code"], "bad_frame", "{frame}");
    assert_eq!(close_code(&mut socket).await, 1003);
    assert_eq!(deployment_count(&server, "binary-start").await, 0);
}

#[tokio::test]
async fn a_first_push_frame_that_is_not_start_is_closed_with_1002() {
    let server = TestServer::start().await;
    server.create_app(&server.admin(), "not-started").await;
    let mut socket = push::connect(&server.url, "not-started", ADMIN_TOKEN)
        .await
        .expect("upgrade");
    let logs = json!({"type": "logs", "batch": 1, "lines": ["x"]}).to_string();
    socket.send(Message::Text(logs.into())).await.expect("send");
    let frame = error_frame(&mut socket).await;
    assert_eq!(frame["code"], "not_started", "{frame}");
    assert_eq!(close_code(&mut socket).await, 1002);
}

#[tokio::test]
async fn a_push_message_above_the_frame_limit_is_closed_with_1009() {
    let server = TestServer::start().await;
    server.create_app(&server.admin(), "huge-frame").await;
    let mut pusher = push::start(&server.url, "huge-frame", ADMIN_TOKEN, "main").await;
    let huge = format!(
        r#"{{"type":"logs","batch":1,"lines":["{}"]}}"#,
        "x".repeat(9 * 1024 * 1024)
    );
    // The server may close before the whole message is sent.
    let _ = pusher.socket.send(Message::Text(huge.into())).await;
    assert_eq!(close_code(&mut pusher.socket).await, 1009);
    // The session ended as lost; the server keeps serving.
    let id = pusher.id();
    let deployment = common::wait_finished(
        &server.admin(),
        "huge-frame",
        &id,
        std::time::Duration::from_secs(30),
    )
    .await;
    assert_eq!(deployment["status"], "aborted", "{deployment}");
}

#[tokio::test]
async fn page_plus_one_is_a_400_and_an_out_of_range_page_a_422() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "paged").await;
    for bad in [
        "page=+1",
        "page=%2B1",
        "per_page=1.0",
        "page=-1",
        "page=%zz",
    ] {
        let (status, body) = admin
            .get(&format!("/v1/apps/paged/deployments?{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    for (bad, param) in [("page=0", "page"), ("per_page=1000", "per_page")] {
        let (status, body) = admin
            .get(&format!("/v1/apps/paged/deployments?{bad}"))
            .await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["errors"][param].is_array(), "{bad}: {body}");
    }
    let (status, body) = admin
        .get("/v1/apps/paged/deployments?page=1&per_page=5")
        .await;
    assert_eq!(status, 200, "{body}");
    // The output's parameters follow the same rule.
    let (status, _, text) = admin
        .get_text(
            "/v1/apps/paged/deployments/00000000-0000-0000-0000-000000000000/output?follow=maybe",
        )
        .await;
    assert_eq!(status, 400, "{text}");
    let (status, _, text) = admin
        .get_text("/v1/apps/paged/deployments/00000000-0000-0000-0000-000000000000/output?after=+3")
        .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn an_array_where_an_object_is_expected_is_refused_and_creates_nothing() {
    let server = TestServer::start().await;
    let admin = server.admin();
    for body in [json!({"app": ["name"]}), json!(["name"])] {
        let (status, answer) = admin.post("/v1/apps", body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(answer["errors"].is_object(), "{answer}");
    }
    let (status, body) = admin
        .post("/v1/users", json!({"user": ["eve", "eve@example.com"]}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (_, apps) = admin.get("/v1/apps").await;
    assert_eq!(apps["apps"], json!([]), "{apps}");
}

#[tokio::test]
async fn post_tokens_refuses_a_body_without_a_token_object() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let (_, before) = admin.get("/v1/tokens").await;
    for body in [
        json!({}),
        json!({"nonsense": 1}),
        json!([]),
        json!({"token": "x"}),
        json!({"token": {"name": " "}}),
    ] {
        let (status, answer) = admin.post("/v1/tokens", body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
    }
    let (_, after) = admin.get("/v1/tokens").await;
    assert_eq!(before, after, "nothing was created");
    let (status, body) = admin
        .post("/v1/tokens", json!({"token": {"name": "ci"}}))
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn deleting_an_app_with_another_current_name_is_a_422_and_keeps_the_app() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "keep-me").await;
    let (status, body) = admin.delete("/v1/apps/keep-me?current_name=other").await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"]["current_name"].is_array(), "{body}");
    let (status, _) = admin.get("/v1/apps/keep-me").await;
    assert_eq!(status, 200, "the app is still there");
    let (status, body) = admin.delete("/v1/apps/keep-me?current_name=keep-me").await;
    assert_eq!(status, 204, "{body}");
}
