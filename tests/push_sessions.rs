//! Push sessions, served in process (the `deployd push` CLI test, which blocks its thread on the
//! child, against the real binary): a pusher run to success, a broken connection, queueing,
//! and the start timeout under a paused clock.
mod common;

use std::time::Duration;

use common::{push, Server, TestServer};

#[tokio::test]
async fn a_pusher_runs_a_deployment_to_success_and_its_output_is_stored() {
    let server = TestServer::start().await;
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

/// Through the release binary: lines with JSON escapes (parsed into owned text), plain ones
/// (borrowed from the frame), an embedded `\n` (two stored lines), a trailing `\r` (dropped) and
/// an empty line are stored as the protocol says; a frame whose lines are not all strings gets
/// `bad_frame` and stores nothing of it.
#[tokio::test]
async fn pushed_lines_with_escapes_newlines_and_carriage_returns_are_stored_as_split() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "escapes").await;
    let mut pusher = push::start(&server.url, "escapes", &server.admin_token, "e1").await;
    let lines = ["plain", "esc \"q\" \\ é \u{1}", "two\npieces", "cr\r", ""];
    assert_eq!(pusher.logs(&lines).await, 6);
    let refused = send_text(
        &mut pusher,
        r#"{"type":"logs","batch":99,"lines":["not stored",7]}"#,
    )
    .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "bad_frame", "{refused}");
    assert_eq!(pusher.logs(&["after"]).await, 7);
    pusher.finish("success").await;
    let (status, _, text) = admin
        .get_text(&format!(
            "/v1/apps/escapes/deployments/{}/output",
            pusher.id()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        text,
        "plain\nesc \"q\" \\ é \u{1}\ntwo\npieces\ncr\n\nafter\n"
    );
}

#[tokio::test]
async fn a_broken_pusher_connection_aborts_the_deployment() {
    let server = TestServer::start().await;
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

// ---- Every terminal status, illegal moves, bad frames, queueing, lost sessions, the CLI ----

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn send_text(pusher: &mut push::Pusher, text: &str) -> Value {
    pusher
        .socket
        .send(Message::Text(text.to_string().into()))
        .await
        .expect("send");
    push::next_json(&mut pusher.socket)
        .await
        .expect("answer frame")
}

async fn deployment(server: &TestServer, app: &str, id: &str) -> Value {
    let (status, body) = server
        .admin()
        .get(&format!("/v1/apps/{app}/deployments/{id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["deployment"].clone()
}

#[tokio::test]
async fn a_pusher_reaches_every_terminal_status() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "terminal").await;
    let paths: [&[&str]; 7] = [
        &["pushing", "starting", "success"],
        &["build-error"],
        &["pushing", "starting", "crashed-error"],
        &["pushing", "starting", "timeout-error"],
        &["pushing", "starting", "hook-error"],
        &["aborted"],
        &["pushing", "aborted"],
    ];
    for path in paths {
        let mut pusher = push::start(&server.url, "terminal", &server.admin_token, "r").await;
        pusher.logs(&["working"]).await;
        for status in path {
            let frame = pusher.status(status).await;
            assert_eq!(
                frame,
                json!({"type": "status", "status": status}),
                "{path:?}"
            );
        }
        // The server ends the session after a terminal status.
        assert!(
            push::next_json(&mut pusher.socket).await.is_none(),
            "{path:?}"
        );
        let end = *path.last().expect("end");
        let d = deployment(&server, "terminal", &pusher.id()).await;
        assert_eq!(d["status"], end, "{path:?}");
        assert!(d["finished_at"].is_string(), "{d}");
        assert!(d["duration"].is_u64(), "{d}");
        let (_, _, text) = admin
            .get_text(&format!(
                "/v1/apps/terminal/deployments/{}/output",
                pusher.id()
            ))
            .await;
        assert!(text.starts_with("working\n"), "{text}");
    }
}

#[tokio::test]
async fn an_illegal_transition_gets_an_error_frame_and_changes_nothing() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "illegal").await;
    let mut pusher = push::start(&server.url, "illegal", &server.admin_token, "r").await;
    let id = pusher.id();
    for bad in [
        "success",
        "queued",
        "building",
        "starting",
        "crashed-error",
        "hook-error",
    ] {
        let frame = pusher.status(bad).await;
        assert_eq!(frame["type"], "error", "{bad}: {frame}");
        assert_eq!(frame["code"], "illegal_transition", "{bad}: {frame}");
        let d = deployment(&server, "illegal", &id).await;
        assert_eq!(d["status"], "building", "{bad}");
        assert!(d["finished_at"].is_null());
    }
    // The session goes on.
    assert_eq!(pusher.logs(&["still here"]).await, 1);
    assert_eq!(pusher.status("pushing").await["status"], "pushing");
    let frame = pusher.status("build-error").await;
    assert_eq!(frame["code"], "illegal_transition", "{frame}");
    assert_eq!(
        deployment(&server, "illegal", &id).await["status"],
        "pushing"
    );
    // An unknown status is a bad frame, not a move.
    let frame = pusher.status("exploded").await;
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(
        deployment(&server, "illegal", &id).await["status"],
        "pushing"
    );
    pusher.status("starting").await;
    pusher.status("success").await;
    assert_eq!(
        deployment(&server, "illegal", &id).await["status"],
        "success"
    );
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_session_continues() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "frames").await;
    let mut pusher = push::start(&server.url, "frames", &server.admin_token, "r").await;
    for bad in [
        "not json",
        "{",
        r#"{"type":"dance"}"#,
        r#"{"no_type":1}"#,
        r#"{"type":"logs","lines":"not a list"}"#,
        r#"{"type":"logs","batch":1,"lines":[1,2]}"#,
        r#"{"type":"logs","batch":1,"stream":"stdweird","lines":["x"]}"#,
        r#"{"type":"status"}"#,
        r#"{"type":"start","git_ref":"again"}"#,
        "[]",
    ] {
        let frame = send_text(&mut pusher, bad).await;
        assert_eq!(frame["type"], "error", "{bad}: {frame}");
        assert!(
            frame["code"].is_string() && frame["error"].is_string(),
            "{frame}"
        );
    }
    pusher
        .socket
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .expect("send binary");
    let frame = push::next_json(&mut pusher.socket).await.expect("answer");
    assert_eq!(frame["type"], "error", "{frame}");
    // Nothing was stored; the session goes on.
    let id = pusher.id();
    let (status, _) = admin
        .get(&format!("/v1/apps/frames/deployments/{id}/output"))
        .await;
    assert_eq!(status, 404, "no output stored");
    assert_eq!(pusher.logs(&["ok"]).await, 1);
    pusher.finish("success").await;
    let (_, _, text) = admin
        .get_text(&format!("/v1/apps/frames/deployments/{id}/output"))
        .await;
    assert_eq!(text, "ok\n");
}

#[tokio::test]
async fn a_frame_before_start_is_refused_and_nothing_is_created() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "nostart").await;
    let mut socket = push::connect(&server.url, "nostart", &server.admin_token)
        .await
        .expect("upgrade");
    socket
        .send(Message::Text(
            json!({"type": "logs", "lines": ["x"]}).to_string().into(),
        ))
        .await
        .expect("send");
    let frame = push::next_json(&mut socket).await.expect("error frame");
    assert_eq!(frame["type"], "error", "{frame}");
    let (_, body) = admin.get("/v1/apps/nostart/deployments").await;
    assert_eq!(body["meta"]["pagination"]["total_count"], 0, "{body}");
}

#[tokio::test]
async fn a_second_pusher_is_queued_until_the_first_ends() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "queue-app").await;
    let mut first = push::start(&server.url, "queue-app", &server.admin_token, "one").await;
    assert_eq!(first.deployment["status"], "building");
    let mut second = push::start(&server.url, "queue-app", &server.admin_token, "two").await;
    assert_eq!(second.deployment["status"], "queued");
    let frame = send_text(
        &mut second,
        &json!({"type": "logs", "batch": 1, "lines": ["early"]}).to_string(),
    )
    .await;
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], "queued", "{frame}");
    let frame = second.status("pushing").await;
    assert_eq!(frame["code"], "queued", "{frame}");
    assert_eq!(
        deployment(&server, "queue-app", &second.id()).await["status"],
        "queued"
    );

    first.logs(&["first"]).await;
    first.finish("success").await;
    let frame = push::next_json(&mut second.socket)
        .await
        .expect("promotion");
    assert_eq!(frame, json!({"type": "status", "status": "building"}));
    assert_eq!(second.logs(&["second"]).await, 1);
    second.finish("success").await;
    let (_, _, text) = admin
        .get_text(&format!(
            "/v1/apps/queue-app/deployments/{}/output",
            second.id()
        ))
        .await;
    assert_eq!(text, "second\n", "the refused line was not stored");
}

#[tokio::test]
async fn a_queued_pusher_that_disconnects_is_aborted_and_the_next_one_starts() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "q-abort").await;
    let mut first = push::start(&server.url, "q-abort", &server.admin_token, "1").await;
    let second = push::start(&server.url, "q-abort", &server.admin_token, "2").await;
    let mut third = push::start(&server.url, "q-abort", &server.admin_token, "3").await;
    assert_eq!(third.deployment["status"], "queued");
    let second_id = second.id();
    drop(second);
    let done = common::wait_finished(&admin, "q-abort", &second_id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "aborted");
    first.finish("success").await;
    let frame = push::next_json(&mut third.socket).await.expect("promotion");
    assert_eq!(frame, json!({"type": "status", "status": "building"}));
}

#[tokio::test]
async fn a_lost_connection_in_starting_is_a_timeout_error_and_in_pushing_aborted() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "lost").await;
    for (reached, expected) in [
        (&["pushing", "starting"][..], "timeout-error"),
        (&["pushing"][..], "aborted"),
    ] {
        let mut pusher = push::start(&server.url, "lost", &server.admin_token, "r").await;
        pusher.logs(&["acked"]).await;
        for status in reached {
            pusher.status(status).await;
        }
        let id = pusher.id();
        drop(pusher);
        let done = common::wait_finished(&admin, "lost", &id, Duration::from_secs(10)).await;
        assert_eq!(done["status"], expected);
        let (_, _, text) = admin
            .get_text(&format!("/v1/apps/lost/deployments/{id}/output"))
            .await;
        assert!(text.starts_with("acked\n"), "{text}");
        assert!(text.lines().count() >= 2, "a line says why: {text}");
    }
}

/// Runs `deployd push` against the server; returns its exit code and the deployment it made.
fn cli_push(server: &Server, app: &str, extra: &[&str], command: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(common::deployd_bin())
        .arg("push")
        .args([
            "--url",
            &server.url,
            "--token",
            &server.admin_token,
            "--app",
            app,
        ])
        .args(extra)
        .arg("--")
        .args(command)
        .env_remove("DEPLOYD_URL")
        .env_remove("DEPLOYD_TOKEN")
        .output()
        .expect("run deployd push");
    let log = format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), log)
}

async fn newest(server: &Server, app: &str) -> Value {
    let (_, body) = server
        .admin()
        .get(&format!("/v1/apps/{app}/deployments?per_page=1"))
        .await;
    body["deployments"][0].clone()
}

#[tokio::test]
async fn the_push_cli_reports_success_build_error_and_crashed_error() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "cli-app").await;

    let (code, log) = cli_push(
        &server,
        "cli-app",
        &["--git-ref", "cafe01"],
        &["sh", "-c", "echo hi; echo err >&2"],
    );
    assert_eq!(code, 0, "{log}");
    let d = newest(&server, "cli-app").await;
    assert_eq!(d["status"], "success", "{d}");
    assert_eq!(d["git_ref"], "cafe01");
    let (_, _, text) = admin
        .get_text(&format!(
            "/v1/apps/cli-app/deployments/{}/output",
            d["id"].as_str().expect("id")
        ))
        .await;
    assert!(text.contains("hi\n") && text.contains("err\n"), "{text}");

    let (code, log) = cli_push(
        &server,
        "cli-app",
        &[],
        &["sh", "-c", "echo failing; exit 3"],
    );
    assert_ne!(code, 0, "{log}");
    assert_eq!(newest(&server, "cli-app").await["status"], "build-error");

    let (code, log) = cli_push(&server, "cli-app", &["--start-cmd", "false"], &["true"]);
    assert_ne!(code, 0, "{log}");
    assert_eq!(newest(&server, "cli-app").await["status"], "crashed-error");
    let (_, body) = admin.get("/v1/apps/cli-app/deployments").await;
    assert_eq!(body["meta"]["pagination"]["total_count"], 3);
}

/// Regression: batches in flight were queued to the writer lazily (when their future was first
/// polled), so two pipelined batches could be stored swapped. Every batch is now queued in frame
/// order.
#[tokio::test]
async fn pipelined_batches_are_stored_in_the_order_they_were_sent() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "pipelined").await;
    let mut pusher = push::start(&server.url, "pipelined", &server.admin_token, "p1").await;
    let batches = 400u64;
    let per_batch = 10u64;
    for batch in 1..=batches {
        let lines: Vec<String> = (0..per_batch)
            .map(|i| format!("line {:06}", (batch - 1) * per_batch + i + 1))
            .collect();
        let frame = serde_json::json!({"type": "logs", "batch": batch, "lines": lines});
        pusher
            .socket
            .feed(Message::Text(frame.to_string().into()))
            .await
            .expect("feed");
    }
    pusher.socket.flush().await.expect("flush");
    let mut last_ack = 0;
    for expected_batch in 1..=batches {
        let frame = push::next_json(&mut pusher.socket).await.expect("ack");
        assert_eq!(frame["type"], "ack", "{frame}");
        assert_eq!(frame["batch"], expected_batch, "acks come in batch order");
        let last = frame["last_line"].as_u64().expect("last_line");
        assert_eq!(last, expected_batch * per_batch);
        last_ack = last;
    }
    assert_eq!(last_ack, batches * per_batch);
    pusher.finish("success").await;
    let (_, _, text) = admin
        .get_text(&format!(
            "/v1/apps/pipelined/deployments/{}/output",
            pusher.id()
        ))
        .await;
    let expected: String = (1..=batches * per_batch)
        .map(|n| format!("line {n:06}\n"))
        .collect();
    assert!(text == expected, "output out of order");
}

/// Paused time: a pusher that connects and never sends `start` is disconnected once
/// `START_TIMEOUT` (30 s) passed, not before, and no deployment is created.
#[tokio::test(start_paused = true)]
async fn a_pusher_that_never_sends_start_is_disconnected_after_the_start_timeout() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "mute").await;
    let mut socket = push::connect(&server.url, "mute", &server.admin_token)
        .await
        .expect("push upgrade");
    let connected = tokio::time::Instant::now();
    // Longer than START_TIMEOUT, so the server's timer is the one the paused clock reaches.
    let wait = Duration::from_secs(600);
    loop {
        match tokio::time::timeout(wait, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => panic!("unexpected frame {text}"),
            Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => break,
            Ok(Some(Ok(_))) => continue,
            Err(_) => panic!("still connected after {wait:?}"),
        }
    }
    let waited = connected.elapsed();
    assert!(
        waited >= deployd::api::push::START_TIMEOUT,
        "disconnected after {waited:?}"
    );
    let (status, body) = admin.get("/v1/apps/mute/deployments").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deployments"], serde_json::json!([]), "{body}");
}
