//! Issue 13: the binary `logs` frame of the push protocol, against the real binary. It is
//! negotiated in `start` (`capabilities`), stores exactly what the JSON frame stores, is refused
//! without the grant, and a hostile one closes the socket with the code that says why while
//! nothing of it is stored. `deployd push` uses it when the server offers it.
mod common;

use std::time::Duration;

use common::{push, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A binary `logs` message, encoded here by hand from the table in the README (not with the
/// server's own encoder, so that the test checks the documented layout).
fn binary_logs(batch: u64, stream: u8, lines: &[&str]) -> Vec<u8> {
    let mut out = vec![0x01, stream];
    out.extend_from_slice(&batch.to_be_bytes());
    out.extend_from_slice(&(lines.len() as u32).to_be_bytes());
    for line in lines {
        out.extend_from_slice(&(line.len() as u32).to_be_bytes());
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// Opens a push socket and sends `start` with `capabilities` (none: the field is left out);
/// returns the socket and the `deployment` frame.
async fn start(server: &Server, app: &str, capabilities: Option<Value>) -> (push::Socket, Value) {
    let mut socket = push::connect(&server.url, app, &server.admin_token)
        .await
        .expect("push upgrade");
    let mut start = json!({"type": "start", "git_ref": "bin1"});
    if let Some(capabilities) = capabilities {
        start["capabilities"] = capabilities;
    }
    socket
        .send(Message::Text(start.to_string().into()))
        .await
        .expect("send start");
    let frame = push::next_json(&mut socket)
        .await
        .expect("deployment frame");
    assert_eq!(frame["type"], "deployment", "{frame}");
    (socket, frame)
}

async fn send_binary(socket: &mut push::Socket, bytes: Vec<u8>) {
    socket
        .send(Message::Binary(bytes.into()))
        .await
        .expect("send binary");
}

/// The next frame, which must be an ack of `batch`; returns its `last_line`.
async fn ack(socket: &mut push::Socket, batch: u64) -> u64 {
    let frame = push::next_json(socket).await.expect("ack");
    assert_eq!(frame["type"], "ack", "{frame}");
    assert_eq!(frame["batch"], batch, "{frame}");
    frame["last_line"].as_u64().expect("last_line")
}

/// The close code the server ends the socket with (panics on anything else).
async fn close_code(socket: &mut push::Socket) -> u16 {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), socket.next())
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

async fn output(server: &Server, app: &str, id: &str) -> String {
    let (status, _, text) = server
        .admin()
        .get_text(&format!("/v1/apps/{app}/deployments/{id}/output"))
        .await;
    assert_eq!(status, 200, "{text}");
    text
}

async fn finish(socket: &mut push::Socket) {
    for status in ["pushing", "starting", "success"] {
        socket
            .send(Message::Text(
                json!({"type": "status", "status": status})
                    .to_string()
                    .into(),
            ))
            .await
            .expect("send status");
        let frame = push::next_json(socket).await.expect("status answer");
        assert_eq!(frame, json!({"type": "status", "status": status}));
    }
}

#[tokio::test]
async fn binary_logs_frames_store_exactly_what_json_frames_store_once_the_server_grants_them() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "bin-app").await;
    let (mut socket, frame) = start(
        &server,
        "bin-app",
        Some(json!(["binary_logs", "not_yet_invented"])),
    )
    .await;
    assert_eq!(
        frame["capabilities"],
        json!(["binary_logs"]),
        "only what the server knows is granted: {frame}"
    );
    let id = frame["deployment"]["id"].as_str().expect("id").to_string();
    let tricky = [
        "a \"quoted\" \\ line",
        "é ünï €",
        "two\nlines",
        "crlf\r",
        "",
    ];
    send_binary(&mut socket, binary_logs(1, 0, &tricky)).await;
    // JSON frames keep working in the same session, in order with the binary ones.
    socket
        .send(Message::Text(
            json!({"type": "logs", "batch": 2, "lines": ["json line"]})
                .to_string()
                .into(),
        ))
        .await
        .expect("send json");
    send_binary(&mut socket, binary_logs(3, 1, &["to stderr"])).await;
    assert_eq!(ack(&mut socket, 1).await, 6);
    assert_eq!(ack(&mut socket, 2).await, 7);
    assert_eq!(ack(&mut socket, 3).await, 8);
    finish(&mut socket).await;
    let done = common::wait_finished(&admin, "bin-app", &id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(
        output(&server, "bin-app", &id).await,
        "a \"quoted\" \\ line\né ünï €\ntwo\nlines\ncrlf\n\njson line\nto stderr\n"
    );
}

#[tokio::test]
async fn a_start_without_capabilities_gets_the_deployment_frame_it_always_got() {
    let server = Server::start();
    server.create_app(&server.admin(), "old-pusher").await;
    let (_socket, frame) = start(&server, "old-pusher", None).await;
    assert_eq!(frame.as_object().map(|o| o.len()), Some(2), "{frame}");
    assert!(frame.get("capabilities").is_none(), "{frame}");
    let (_socket, frame) = start(&server, "old-pusher", Some(json!([]))).await;
    assert!(frame.get("capabilities").is_none(), "{frame}");
}

#[tokio::test]
async fn a_binary_frame_without_the_grant_is_refused_stores_nothing_and_the_session_continues() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "no-grant").await;
    let (mut socket, frame) = start(&server, "no-grant", None).await;
    let id = frame["deployment"]["id"].as_str().expect("id").to_string();
    send_binary(&mut socket, binary_logs(1, 0, &["never stored"])).await;
    let refused = push::next_json(&mut socket).await.expect("error frame");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "bad_frame", "{refused}");
    socket
        .send(Message::Text(
            json!({"type": "logs", "batch": 2, "lines": ["stored"]})
                .to_string()
                .into(),
        ))
        .await
        .expect("send json");
    assert_eq!(ack(&mut socket, 2).await, 1);
    finish(&mut socket).await;
    common::wait_finished(&admin, "no-grant", &id, Duration::from_secs(10)).await;
    assert_eq!(output(&server, "no-grant", &id).await, "stored\n");
}

#[tokio::test]
async fn hostile_binary_frames_close_the_socket_with_the_code_that_says_why_and_store_nothing() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "hostile").await;
    let good = binary_logs(2, 0, &["hostile line"]);
    let mut huge_count = good.clone();
    huge_count[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut past_end = good.clone();
    past_end[14..18].copy_from_slice(&1_000_000u32.to_be_bytes());
    let mut trailing = good.clone();
    trailing.push(b'x');
    let mut not_utf8 = good.clone();
    let last = not_utf8.len() - 1;
    not_utf8[last] = 0xFF;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a short header", good[..9].to_vec(), 1002),
        ("an unknown kind", [&[0x07][..], &good[1..]].concat(), 1002),
        (
            "the system stream",
            binary_logs(2, 2, &["hostile line"]),
            1002,
        ),
        ("a count past the end", huge_count, 1002),
        ("a line past the end", past_end, 1002),
        ("bytes after the last line", trailing, 1002),
        ("a line that is not UTF-8", not_utf8, 1007),
    ];
    for (what, bytes, code) in cases {
        let (mut socket, frame) = start(&server, "hostile", Some(json!(["binary_logs"]))).await;
        let id = frame["deployment"]["id"].as_str().expect("id").to_string();
        send_binary(&mut socket, binary_logs(1, 0, &["before"])).await;
        assert_eq!(ack(&mut socket, 1).await, 1, "{what}");
        send_binary(&mut socket, bytes).await;
        let refused = push::next_json(&mut socket).await.expect("error frame");
        assert_eq!(refused["code"], "bad_frame", "{what}: {refused}");
        assert_eq!(close_code(&mut socket).await, code, "{what}");
        let done = common::wait_finished(&admin, "hostile", &id, Duration::from_secs(10)).await;
        assert_eq!(done["status"], "aborted", "{what}: {done}");
        let text = output(&server, "hostile", &id).await;
        assert!(text.starts_with("before\n"), "{what}: {text}");
        assert!(!text.contains("hostile line"), "{what}: {text}");
    }
    // The server keeps serving everyone else.
    let (status, _) = admin.get("/v1/apps/hostile").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn deployd_push_stores_every_line_exactly_over_the_binary_frames_the_server_offers() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "cli-binary").await;
    let script = "printf 'plain\\n\"quoted\" \\\\ back\\nunicode é €\\n'; echo to-stderr >&2; \
                  seq 1 3000";
    let output_of_push = std::process::Command::new(common::deployd_bin())
        .args([
            "push",
            "--url",
            &server.url,
            "--token",
            &server.admin_token,
            "--app",
            "cli-binary",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env_remove("DEPLOYD_URL")
        .env_remove("DEPLOYD_TOKEN")
        .output()
        .expect("run deployd push");
    assert_eq!(
        output_of_push.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output_of_push.stderr)
    );
    let (_, body) = admin
        .get("/v1/apps/cli-binary/deployments?per_page=1")
        .await;
    let id = body["deployments"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let text = output(&server, "cli-binary", &id).await;
    // stdout and stderr are two pipes: where the stderr line lands among the stdout lines is
    // up to the scheduler, so it is checked apart.
    assert!(text.contains("to-stderr\n"), "{text}");
    let stdout: Vec<&str> = text.lines().filter(|l| *l != "to-stderr").collect();
    assert_eq!(
        stdout[..3],
        ["plain", "\"quoted\" \\ back", "unicode é €"],
        "{text}"
    );
    let numbers: Vec<&str> = text
        .lines()
        .filter(|l| l.bytes().all(|b| b.is_ascii_digit()) && !l.is_empty())
        .collect();
    let expected: Vec<String> = (1..=3000).map(|n| n.to_string()).collect();
    assert_eq!(numbers, expected, "every line once, in order");
}
