//! Backups through the real binary: `GET /v1/admin/backup` streams a consistent snapshot,
//! `deployd backup DEST` restores it into an empty directory, and `deployd serve --data DEST`
//! starts from it with every user, token, app, notifier, deployment and log line the snapshot
//! held — also when it was taken during pushes — and `deployd check` finds nothing wrong.
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use common::{push, wait_finished, Server, ADMIN_TOKEN};

/// Runs `deployd backup DEST --url URL --token TOKEN`: (exit code, stdout, stderr).
fn backup(dest: &Path, url: &str, token: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deployd"))
        .arg("backup")
        .arg(dest)
        .args(["--url", url, "--token", token])
        .env_remove("DEPLOYD_URL")
        .env_remove("DEPLOYD_TOKEN")
        .output()
        .expect("run deployd backup");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `deployd check --data DIR`: (exit code, stdout).
fn check(data: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deployd"))
        .arg("check")
        .arg("--data")
        .arg(data)
        .output()
        .expect("run deployd check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A server started over the restored copy of `source`'s backup: a fresh server is started
/// (for its directories), stopped, its data directory replaced by the backup, and started
/// again.
async fn restored_from(source: &Server) -> Server {
    let mut target = Server::start();
    target.stop();
    std::fs::remove_dir_all(&target.data).expect("clear the data directory");
    let data = target.data.clone();
    let url = source.url.clone();
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || backup(&data, &url, ADMIN_TOKEN))
            .await
            .expect("backup");
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let (code, report) = check(&target.data);
    assert_eq!(code, 0, "deployd check on the restored directory: {report}");
    target.start_again()
}

fn output_path(app: &str, id: &str) -> String {
    format!("/v1/apps/{app}/deployments/{id}/output")
}

#[tokio::test]
async fn a_restored_backup_serves_the_users_tokens_apps_notifiers_deployments_and_logs_it_holds() {
    let source = Server::start();
    let alice_token = source.create_user("alice").await;
    let alice = source.client(&alice_token);
    source.create_app(&alice, "web").await;
    let (status, notifier) = alice
        .post(
            "/v1/apps/web/notifiers",
            json!({"notifier": {"name": "ci-hook", "platform_id": "1", "active": true,
                "send_all_events": true,
                "type_data": {"webhook_url": "https://hooks.example.com/x"}}}),
        )
        .await;
    assert_eq!(status, 201, "{notifier}");
    let mut finished = push::start(&source.url, "web", &alice_token, "v1").await;
    finished.logs(&["compiling", "linking"]).await;
    finished.finish("success").await;
    let finished_id = finished.id();
    wait_finished(&alice, "web", &finished_id, Duration::from_secs(30)).await;
    let (_, _, finished_output) = alice.get_text(&output_path("web", &finished_id)).await;

    let restored = restored_from(&source).await;
    let alice = restored.client(&alice_token);
    let (status, me) = alice.get("/v1/users/self").await;
    assert_eq!(status, 200, "alice's API token still authenticates: {me}");
    assert_eq!(me["user"]["username"], "alice");
    let (status, apps) = alice.get("/v1/apps").await;
    assert_eq!(status, 200);
    assert_eq!(apps["apps"][0]["name"], "web", "{apps}");
    let (status, notifiers) = alice.get("/v1/apps/web/notifiers").await;
    assert_eq!(status, 200);
    assert_eq!(notifiers["notifiers"][0]["name"], "ci-hook", "{notifiers}");
    let (status, deployment) = alice
        .get(&format!("/v1/apps/web/deployments/{finished_id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        deployment["deployment"]["status"], "success",
        "{deployment}"
    );
    let (status, _, output) = alice.get_text(&output_path("web", &finished_id)).await;
    assert_eq!(status, 200);
    assert_eq!(output, finished_output);
    assert!(output.contains("compiling\nlinking\n"), "{output}");
    // The restored server takes writes: a new deployment on the restored app.
    let mut next = push::start(&restored.url, "web", &alice_token, "v2").await;
    assert_eq!(next.logs(&["after the restore"]).await, 1);
    next.finish("success").await;
}

#[tokio::test]
async fn a_backup_taken_during_pushes_restores_every_line_acknowledged_before_it_and_no_partial_line(
) {
    let source = Server::start();
    let admin = source.admin();
    source.create_app(&admin, "busy").await;
    let mut pusher = push::start(&source.url, "busy", &source.admin_token, "main").await;
    let id = pusher.id();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pushing = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut next = 1u64;
            while !stop.load(Ordering::SeqCst) {
                let lines: Vec<String> = (next..next + 50).map(|n| format!("line {n}")).collect();
                let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
                let last = pusher.logs(&refs).await;
                next += 50;
                acked.store(last, Ordering::SeqCst);
            }
            pusher
        })
    };
    common::eventually(Duration::from_secs(30), || async {
        (acked.load(Ordering::SeqCst) >= 500).then_some(())
    })
    .await;
    let acked_before = acked.load(Ordering::SeqCst);
    let restored = restored_from(&source).await;
    stop.store(true, Ordering::SeqCst);
    let acked_after_backup = acked.load(Ordering::SeqCst);
    let mut pusher = pushing.await.expect("pusher");
    pusher.finish("success").await;

    let (status, _, output) = restored.admin().get_text(&output_path("busy", &id)).await;
    assert_eq!(status, 200);
    let pushed: Vec<&str> = output
        .lines()
        .take_while(|line| line.starts_with("line "))
        .collect();
    for (index, line) in pushed.iter().enumerate() {
        assert_eq!(
            *line,
            format!("line {}", index + 1),
            "lines in order, whole"
        );
    }
    let restored_lines = pushed.len() as u64;
    assert!(
        restored_lines >= acked_before,
        "{restored_lines} lines restored, {acked_before} were acknowledged before the backup"
    );
    assert!(restored_lines <= acked_after_backup.max(acked_before) + 50);
    assert_eq!(
        restored_lines % 50,
        0,
        "a batch is stored whole or not at all"
    );
    // What follows the pushed lines is the restored server's own note: the snapshot held the
    // deployment unfinished, and its session did not survive.
    let (_, deployment) = restored
        .admin()
        .get(&format!("/v1/apps/busy/deployments/{id}"))
        .await;
    assert_ne!(
        deployment["deployment"]["status"], "building",
        "{deployment}"
    );
}

#[tokio::test]
async fn a_backup_is_refused_to_non_admins_and_into_a_directory_that_is_not_empty() {
    let source = Server::start();
    let alice_token = source.create_user("alice").await;
    let (status, body) = source.client(&alice_token).get("/v1/admin/backup").await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, _) = source.anonymous().get("/v1/admin/backup").await;
    assert_eq!(status, 401);

    let scratch = tempfile::tempdir().expect("tempdir");
    let dest = scratch.path().join("dest");
    let (code, _, stderr) = backup(&dest, &source.url, &alice_token);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert!(
        !dest.exists(),
        "a refused backup leaves no directory behind"
    );

    std::fs::create_dir(&dest).expect("dest");
    std::fs::write(dest.join("keep.txt"), "mine").expect("file");
    let (code, _, stderr) = backup(&dest, &source.url, ADMIN_TOKEN);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dest.join("keep.txt")).expect("kept"),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&dest).expect("dest").count(), 1);
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            out.push(
                path.strip_prefix(dir)
                    .expect("under dir")
                    .display()
                    .to_string(),
            );
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_client_that_goes_away_mid_backup_leaves_no_file_behind_and_the_server_serves_on() {
    let source = Server::start();
    let admin = source.admin();
    source.create_app(&admin, "web").await;
    let mut pusher = push::start(&source.url, "web", &source.admin_token, "main").await;
    // Enough output that the tar does not fit in the socket buffers at once.
    let line = "x".repeat(1000);
    for _ in 0..40 {
        let batch: Vec<&str> = std::iter::repeat_n(line.as_str(), 200).collect();
        pusher.logs(&batch).await;
    }
    pusher.finish("success").await;
    let outside_store = |data: &Path| -> Vec<String> {
        tree(data)
            .into_iter()
            .filter(|path| !path.starts_with("store"))
            .collect()
    };
    let files_before = outside_store(&source.data);
    let response = admin
        .request(reqwest::Method::GET, "/v1/admin/backup")
        .send()
        .await
        .expect("backup request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().expect("type"),
        "application/x-tar"
    );
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("chunk");
    assert!(!first.is_empty());
    drop(body);
    // The server serves on, and a whole backup can be taken next.
    let mut next = push::start(&source.url, "web", &source.admin_token, "next").await;
    assert_eq!(next.logs(&["still serving"]).await, 1);
    next.finish("success").await;
    let (status, _, tar) = admin.get_text("/v1/admin/backup").await;
    assert_eq!(status, 200);
    assert!(tar.contains("backup.json"), "the manifest ends the tar");
    assert_eq!(
        outside_store(&source.data)
            .into_iter()
            .filter(|path| !files_before.contains(path))
            .filter(|path| !path.starts_with("logs"))
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "no temporary file left in the data directory"
    );
}
