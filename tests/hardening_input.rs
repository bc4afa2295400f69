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

/// Opens the push socket of `app` by hand (so that the test can send frames no WebSocket
/// library would): the upgrade request, then the socket right after the `101`.
async fn raw_push_socket(addr: &str, app: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /v1/apps/{app}/push HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Basic {}\r\n\r\n",
        common::b64(&format!(":{ADMIN_TOKEN}"))
    );
    stream.write_all(request.as_bytes()).await.expect("upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.expect("read head"),
            1,
            "{head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// A client frame: `first` is the FIN/RSV/opcode byte; masked unless `masked` is false.
fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first, payload.len() as u8 | if masked { 0x80 } else { 0 }];
    if masked {
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// Reads server frames until a close frame and returns its code (panics if the socket ends
/// without one).
async fn raw_close_code(stream: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let read = async {
        loop {
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).await.expect("a frame head");
            let len = match head[1] & 0x7f {
                126 => u64::from(stream.read_u16().await.expect("len")),
                127 => stream.read_u64().await.expect("len"),
                n => u64::from(n),
            };
            let mut payload = vec![0; len as usize];
            stream.read_exact(&mut payload).await.expect("payload");
            if head[0] & 0x0f == 0x8 {
                assert!(payload.len() >= 2, "a close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("the server closes")
}

#[tokio::test]
async fn a_push_text_frame_that_is_not_utf8_is_closed_with_1007_by_the_real_binary() {
    use tokio::io::AsyncWriteExt;
    let server = common::Server::start();
    server.create_app(&server.admin(), "not-utf8").await;
    let mut socket = raw_push_socket(&server.addr, "not-utf8").await;
    socket
        .write_all(&client_frame(0x81, &[b'{', 0xff, 0xfe, b'}'], true))
        .await
        .expect("send");
    assert_eq!(raw_close_code(&mut socket).await, 1007);
    let (status, body) = server.admin().get("/v1/apps/not-utf8/deployments").await;
    assert_eq!(
        (status, body["deployments"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}

#[tokio::test]
async fn a_push_frame_with_reserved_bits_or_without_a_mask_is_closed_with_1002_by_the_real_binary()
{
    use tokio::io::AsyncWriteExt;
    let server = common::Server::start();
    server.create_app(&server.admin(), "malformed").await;
    let start = json!({"type": "start", "git_ref": "main"}).to_string();
    // RSV1 set on a text frame, no extension negotiated.
    let mut socket = raw_push_socket(&server.addr, "malformed").await;
    socket
        .write_all(&client_frame(0xC1, start.as_bytes(), true))
        .await
        .expect("send");
    assert_eq!(raw_close_code(&mut socket).await, 1002);
    // A client frame that is not masked.
    let mut socket = raw_push_socket(&server.addr, "malformed").await;
    socket
        .write_all(&client_frame(0x81, start.as_bytes(), false))
        .await
        .expect("send");
    assert_eq!(raw_close_code(&mut socket).await, 1002);
    let (status, body) = server.admin().get("/v1/apps/malformed/deployments").await;
    assert_eq!(
        (status, body["deployments"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}

/// Sends `request` on a new connection and reads the whole answer (the server closes).
async fn raw_exchange(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and close) before the whole request is sent.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers and closes");
    if read.is_err() && answer.is_empty() {
        panic!("no answer: {read:?}");
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status and JSON body of a raw answer.
fn status_and_json(answer: &str) -> (u16, Value) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    (status, serde_json::from_str(body).expect("a JSON body"))
}

/// Regression: the errors hyper answers before the router (header floods, long request lines,
/// bad framing) had empty, non-JSON bodies.
#[tokio::test]
async fn errors_answered_before_the_router_have_json_bodies() {
    let server = common::Server::start();
    let mut flood = b"GET /v1/apps HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        flood.extend_from_slice(format!("X-Flood-{i}: {}\r\n", "a".repeat(100)).as_bytes());
    }
    flood.extend_from_slice(b"\r\n");
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    for (request, status) in [
        (flood, 431),
        (long_uri.into_bytes(), 414),
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400),
    ] {
        let answer = raw_exchange(&server.addr, &request).await;
        let (got, body) = status_and_json(&answer);
        assert_eq!(got, status, "{answer}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    // The router's own answers are untouched, and the server serves on.
    server.create_app(&server.admin(), "web").await;
    let (status, body) = server.admin().get("/v1/apps/web/deployments?page=+1").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(server.admin().get("/v1/apps").await.0, 200);
}
