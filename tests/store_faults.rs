//! The real binary with faults injected into its store (a `test-support` build reads
//! `DEPLOYD_TEST_FAULTS_FILE`): while a commit fails with a transient `errno`, writes are
//! refused (`unavailable`, 503 on `/readyz`) and reads are served; when the fault clears, the
//! server takes writes again by itself; nothing refused is ever stored or acknowledged; a
//! failure that cannot be proven harmless latches and `/readyz` says why.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{eventually, push, Options, Server};

/// A server reading faults from a file in `dir` (the caller keeps `dir` alive).
fn faulty_server(dir: &tempfile::TempDir) -> (Server, PathBuf) {
    let faults = dir.path().join("faults");
    let server = Server::start_with(Options {
        env: vec![(
            "DEPLOYD_TEST_FAULTS_FILE".into(),
            faults.display().to_string(),
        )],
        fault_injection: true,
        ..Options::default()
    });
    (server, faults)
}

/// Sends one logs batch; returns the server's answer frame (an `ack` or an `error`).
async fn send_batch(pusher: &mut push::Pusher, batch: u64, lines: &[&str]) -> Value {
    pusher
        .socket
        .send(Message::Text(
            json!({"type": "logs", "batch": batch, "lines": lines})
                .to_string()
                .into(),
        ))
        .await
        .expect("send logs");
    push::next_json(&mut pusher.socket).await.expect("answer")
}

async fn readyz(server: &Server) -> (u16, Value) {
    server.anonymous().get("/readyz").await
}

async fn output(server: &Server, app: &str, id: &str) -> String {
    let (status, _, text) = server
        .admin()
        .get_text(&format!("/v1/apps/{app}/deployments/{id}/output"))
        .await;
    assert_eq!(status, 200, "{text}");
    text
}

#[tokio::test]
async fn a_full_disk_refuses_pushed_lines_serves_reads_and_the_server_resumes_when_space_is_freed()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = faulty_server(&dir);
    let admin = server.admin();
    server.create_app(&admin, "app").await;
    assert_eq!(server.anonymous().get("/healthz").await.0, 200);
    let (code, body) = readyz(&server).await;
    assert_eq!((code, &body["status"]), (200, &json!("ready")), "{body}");
    let mut pusher = push::start(&server.url, "app", common::ADMIN_TOKEN, "r").await;
    let id = pusher.id();
    assert_eq!(pusher.logs(&["before"]).await, 1);

    // A torn write: half the segment reaches the file, then ENOSPC.
    std::fs::write(&faults, "log_write_torn ENOSPC\n").expect("arm");
    let refused = send_batch(&mut pusher, 2, &["lost while full"]).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    let (code, body) = readyz(&server).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["store"]["state"], "failing", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("No space left"),
        "{body}"
    );
    // Still failing: more writes are refused; reads are served.
    let refused = send_batch(&mut pusher, 3, &["also lost"]).await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    let (code, deployment) = admin.get(&format!("/v1/apps/app/deployments/{id}")).await;
    assert_eq!(code, 200, "{deployment}");
    assert_eq!(output(&server, "app", &id).await, "before\n");
    let (code, apps) = admin.get("/v1/apps").await;
    assert_eq!(code, 200, "{apps}");

    // Space is freed: the server takes writes again on its own.
    std::fs::remove_file(&faults).expect("clear");
    eventually(Duration::from_secs(30), || async {
        let (code, body) = readyz(&server).await;
        (code == 200).then_some(body)
    })
    .await;
    let ack = send_batch(&mut pusher, 4, &["after"]).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        ack["last_line"], 2,
        "refused lines took no line numbers: {ack}"
    );
    pusher.finish("success").await;
    assert_eq!(output(&server, "app", &id).await, "before\nafter\n");

    // And after a crash, exactly what was acknowledged is there (the torn tail is gone).
    let server = server.crash_and_restart();
    assert_eq!(output(&server, "app", &id).await, "before\nafter\n");
}

/// Regression: after one `EMFILE`, every push batch answered `unavailable` until a restart.
#[tokio::test]
async fn descriptor_exhaustion_at_a_new_log_file_no_longer_latches_the_store_until_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = faulty_server(&dir);
    let admin = server.admin();
    server.create_app(&admin, "app").await;
    let mut pusher = push::start(&server.url, "app", common::ADMIN_TOKEN, "r").await;
    // No log file exists yet: the first batch has to open one, and there is no descriptor.
    std::fs::write(&faults, "log_open EMFILE\n").expect("arm");
    let refused = send_batch(&mut pusher, 1, &["lost"]).await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    let (code, body) = readyz(&server).await;
    assert_eq!(
        (code, &body["store"]["state"]),
        (503, &json!("failing")),
        "{body}"
    );
    std::fs::remove_file(&faults).expect("clear");
    eventually(Duration::from_secs(30), || async {
        (readyz(&server).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(pusher.logs(&["kept"]).await, 1);
    // A REST write works again too.
    let (code, body) = admin
        .post("/v1/apps", json!({"app": {"name": "second"}}))
        .await;
    assert_eq!(code, 201, "{body}");
}

#[tokio::test]
async fn a_failed_engine_sync_latches_and_readyz_and_the_log_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = faulty_server(&dir);
    let admin = server.admin();
    std::fs::write(&faults, "engine_sync EIO\n").expect("arm");
    let (code, body) = admin
        .post("/v1/apps", json!({"app": {"name": "lost"}}))
        .await;
    assert_eq!(code, 503, "{body}");
    std::fs::remove_file(&faults).expect("clear");
    // Clearing the fault does not help: it could not be proven harmless.
    let (code, body) = admin
        .post("/v1/apps", json!({"app": {"name": "later"}}))
        .await;
    assert_eq!(code, 503, "{body}");
    let (code, body) = readyz(&server).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["store"]["state"], "latched", "{body}");
    assert!(
        server
            .log_containing("store latched")
            .contains("store latched"),
        "{}",
        server.log()
    );
    // Reads are still served.
    assert_eq!(admin.get("/v1/apps").await.0, 200);
}

#[tokio::test]
async fn readyz_is_503_when_free_disk_space_is_below_the_threshold() {
    let server = Server::start_with(Options {
        config_toml: "[limits]\nmin_free_disk_bytes = 9223372036854775807\n".into(),
        ..Options::default()
    });
    let (code, body) = server.anonymous().get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("min_free_disk_bytes"),
        "{body}"
    );
    assert_eq!(body["store"]["state"], "ready", "{body}");
    assert_eq!(
        server.anonymous().get("/healthz").await,
        (200, json!({"status": "ok"}))
    );
}

/// Regression: ending a lost session was refused while failing, and never retried.
#[tokio::test]
async fn a_session_lost_while_the_store_is_failing_still_ends_its_deployment_once_it_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, faults) = faulty_server(&dir);
    let admin = server.admin();
    server.create_app(&admin, "app").await;
    let mut pusher = push::start(&server.url, "app", common::ADMIN_TOKEN, "r").await;
    let id = pusher.id();
    std::fs::write(&faults, "log_open EMFILE\n").expect("arm");
    let refused = send_batch(&mut pusher, 1, &["lost"]).await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    // The pusher gives up while the store is failing: its end cannot be stored yet.
    drop(pusher);
    std::fs::remove_file(&faults).expect("clear");
    let ended = common::wait_finished(&admin, "app", &id, Duration::from_secs(30)).await;
    assert_eq!(ended["status"], "aborted", "{ended}");
    let next = push::start(&server.url, "app", common::ADMIN_TOKEN, "s").await;
    assert_eq!(
        next.deployment["status"], "building",
        "the app's queue is not blocked by a deployment that never ended"
    );
}
