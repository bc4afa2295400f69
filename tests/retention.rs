//! Retention through the real binary: `keep_deployments` after each end and at startup, pruned
//! deployments gone everywhere (REST, output, stream, files), orphan files removed at startup,
//! a deleted app's files, and `max_log_bytes` on a pusher's output.
mod common;
#[path = "common/deploy.rs"]
mod deploy;
#[path = "common/subscriber.rs"]
mod subscriber;

use std::path::Path;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{eventually, push, Client, Options, Server};
use deploy::deploy;

const WAIT: Duration = Duration::from_secs(20);

fn retention(toml: &str) -> Options {
    Options {
        config_toml: format!("[retention]\n{toml}\n"),
        ..Options::default()
    }
}

async fn listed(client: &Client, app: &str) -> Vec<String> {
    let (status, body) = client
        .get(&format!("/v1/apps/{app}/deployments?per_page=100"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_string())
        .collect()
}

fn log_file(data: &Path, id: &str) -> std::path::PathBuf {
    data.join("logs").join(format!("{id}.log"))
}

#[tokio::test]
async fn keep_deployments_prunes_the_oldest_finished_ones_after_each_end_and_never_an_unfinished_one(
) {
    let server = Server::start_with(retention("keep_deployments = 2"));
    let admin = server.admin();
    server.create_app(&admin, "kept").await;
    let token = server.admin_token.clone();
    let first = deploy(&server, "kept", &token, &["one"], "success").await;
    let second = deploy(&server, "kept", &token, &["two"], "build-error").await;
    assert!(log_file(&server.data, &first).exists());
    let third = deploy(&server, "kept", &token, &["three"], "success").await;
    // The third end prunes the first (the oldest of three finished ones).
    // The record goes first, then the log file.
    let left = eventually(WAIT, || async {
        let ids = listed(&admin, "kept").await;
        (ids.len() == 2 && !log_file(&server.data, &first).exists()).then_some(ids)
    })
    .await;
    assert_eq!(left, vec![third.clone(), second.clone()]);

    // A running deployment is neither pruned nor counted: two finished ones stay with it.
    let running = push::start(&server.url, "kept", &token, "live").await;
    let ids = listed(&admin, "kept").await;
    assert_eq!(ids, vec![running.id(), third, second]);
}

#[tokio::test]
async fn a_pruned_deployment_answers_404_like_a_missing_one_on_rest_output_and_the_stream() {
    let server = Server::start_with(retention("keep_deployments = 1"));
    let admin = server.admin();
    let app = server.create_app(&admin, "gone").await;
    let token = server.admin_token.clone();
    let pruned = deploy(&server, "gone", &token, &["old line"], "success").await;
    let kept = deploy(&server, "gone", &token, &["new line"], "success").await;
    eventually(WAIT, || async {
        (listed(&admin, "gone").await == vec![kept.clone()]).then_some(())
    })
    .await;
    let missing = "0190a0a0-0000-7000-8000-000000000000";
    for (path, resource) in [
        (format!("/v1/apps/gone/deployments/{pruned}"), "deployment"),
        (
            format!("/v1/apps/gone/deployments/{pruned}/output"),
            "deployment",
        ),
        (format!("/v1/deployments/{pruned}/output"), "deployment"),
    ] {
        let (status, body) = admin.get(&path).await;
        let (missing_status, missing_body) = admin.get(&path.replace(&pruned, missing)).await;
        assert_eq!((status, missing_status), (404, 404), "{path}: {body}");
        assert_eq!(body, missing_body, "{path}");
        assert_eq!(body["resource"], resource, "{body}");
    }
    // The stream replays recent deployments: the kept one, never the pruned one.
    let mut ws = subscriber::subscribe(&app, &token, json!({})).await;
    let next = push::start(&server.url, "gone", &token, "next").await;
    let events = subscriber::events_until_status(&mut ws, &next.id(), "building").await;
    assert!(
        events.iter().all(|e| !e.to_string().contains(&pruned)),
        "{events:?}"
    );
    assert!(subscriber::log_contents(&events, &kept).contains(&"new line".to_string()));
}

#[tokio::test]
async fn retention_after_a_restart_applies_the_new_limit_at_startup() {
    let server = Server::start_with(retention("keep_deployments = 0"));
    let admin = server.admin();
    server.create_app(&admin, "history").await;
    let token = server.admin_token.clone();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(deploy(&server, "history", &token, &["x"], "success").await);
    }
    assert_eq!(
        listed(&admin, "history").await.len(),
        4,
        "0 keeps everything"
    );
    let server = server.restart_with(retention("keep_deployments = 1"));
    let admin = server.admin();
    let left = eventually(WAIT, || async {
        let left = listed(&admin, "history").await;
        let files_gone = ids[..3]
            .iter()
            .all(|id| !log_file(&server.data, id).exists());
        (left.len() == 1 && files_gone).then_some(left)
    })
    .await;
    assert_eq!(left, vec![ids[3].clone()]);
    assert!(log_file(&server.data, &ids[3]).exists());
}

#[tokio::test]
async fn files_no_record_owns_are_removed_at_startup_and_others_are_left_alone() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "owner").await;
    let token = server.admin_token.clone();
    let kept = deploy(&server, "owner", &token, &["kept"], "success").await;
    let mut server = server;
    server.stop();
    // What a crash between a prune's commit and its file removal leaves behind.
    let orphan = "0190a0a0-1111-7000-8000-000000000001";
    let data = server.data.clone();
    let orphans = [
        data.join("logs").join(format!("{orphan}.log")),
        data.join("work").join(orphan),
        data.join("images").join(format!("{orphan}.tar")),
        data.join("cache").join(orphan),
        data.join("sources").join(format!("{orphan}.tar.gz")),
    ];
    for path in &orphans {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        if path.extension().is_some() {
            std::fs::write(path, b"orphan").expect("write");
        } else {
            std::fs::create_dir_all(path.join("sub")).expect("dir");
        }
    }
    let not_ours = data.join("work").join("README");
    std::fs::write(&not_ours, b"not named after a record").expect("write");
    let server = server.restart();
    eventually(WAIT, || async {
        orphans.iter().all(|p| !p.exists()).then_some(())
    })
    .await;
    assert!(not_ours.exists());
    assert!(log_file(&server.data, &kept).exists());
    let (status, _, text) = server
        .admin()
        .get_text(&format!("/v1/apps/owner/deployments/{kept}/output"))
        .await;
    assert_eq!((status, text.as_str()), (200, "kept\n"));
}

#[tokio::test]
async fn deleting_an_app_leaves_none_of_its_files_behind() {
    let server = Server::start();
    let admin = server.admin();
    let app = server.create_app(&admin, "doomed").await;
    let app_id = app["id"].as_str().expect("id").to_string();
    let token = server.admin_token.clone();
    let id = deploy(&server, "doomed", &token, &["bye"], "success").await;
    // Files the image and build-cache features keep, by the documented path rule.
    let image = server.data.join("images").join(format!("{id}.tar"));
    let cache = server.data.join("cache").join(&app_id);
    std::fs::create_dir_all(server.data.join("images")).expect("dir");
    std::fs::write(&image, b"image").expect("write");
    std::fs::create_dir_all(cache.join("layers")).expect("dir");
    assert!(log_file(&server.data, &id).exists());
    let (status, body) = admin.delete("/v1/apps/doomed").await;
    assert!(status == 200 || status == 204, "{status} {body}");
    eventually(WAIT, || async {
        (!image.exists() && !cache.exists() && !log_file(&server.data, &id).exists()).then_some(())
    })
    .await;
}

/// Sends one logs batch and returns the ack frame.
async fn send_batch(pusher: &mut push::Pusher, batch: u64, lines: &[String]) -> Value {
    pusher
        .socket
        .send(Message::Text(
            json!({"type": "logs", "batch": batch, "lines": lines})
                .to_string()
                .into(),
        ))
        .await
        .expect("send");
    let ack = push::next_json(&mut pusher.socket).await.expect("ack");
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

#[tokio::test]
async fn output_past_max_log_bytes_is_dropped_with_one_notice_and_the_ack_says_how_many() {
    let server = Server::start_with(retention("max_log_bytes = 1000"));
    let admin = server.admin();
    server.create_app(&admin, "chatty").await;
    let token = server.admin_token.clone();
    let mut pusher = push::start(&server.url, "chatty", &token, "loud").await;
    let line = "x".repeat(98);
    // 5 lines of 100 stored bytes each fit.
    let ack = send_batch(&mut pusher, 1, &vec![line.clone(); 5]).await;
    assert_eq!(ack["last_line"], 5);
    assert!(ack.get("dropped").is_none(), "{ack}");
    // Of 10 more, 4 fit (the segment headers take a few bytes), the rest are refused.
    let ack = send_batch(&mut pusher, 2, &vec![line.clone(); 10]).await;
    let dropped = ack["dropped"].as_u64().expect("dropped");
    assert!((1..10).contains(&dropped), "{ack}");
    let stored = 15 - dropped;
    // `last_line` counts stored lines: the kept ones and the one notice.
    assert_eq!(ack["last_line"], stored + 1, "{ack}");
    let ack = send_batch(&mut pusher, 3, &[line.clone(), line.clone()]).await;
    assert_eq!(ack["dropped"], 2);
    assert_eq!(ack["last_line"], stored + 1);
    // The deployment goes on.
    pusher.finish("success").await;
    let (status, _, text) = admin
        .get_text(&format!(
            "/v1/apps/chatty/deployments/{}/output",
            pusher.id()
        ))
        .await;
    assert_eq!(status, 200);
    let notices: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Log limit of 1000 bytes reached; further output dropped"))
        .collect();
    assert_eq!(
        notices,
        vec!["!     Log limit of 1000 bytes reached; further output dropped"]
    );
    assert_eq!(text.lines().filter(|l| *l == line).count() as u64, stored);
}

/// A pushed line holding `\n` is several stored lines; at the limit it is kept or dropped whole
/// (never its first piece alone) and `dropped` counts it once.
#[tokio::test]
async fn a_pushed_line_split_in_stored_lines_is_dropped_whole_at_the_log_limit() {
    let server = Server::start_with(retention("max_log_bytes = 1000"));
    let admin = server.admin();
    server.create_app(&admin, "pieces").await;
    let token = server.admin_token.clone();
    let mut pusher = push::start(&server.url, "pieces", &token, "split").await;
    let line = "x".repeat(98);
    // 8 lines of 100 stored bytes plus a segment header: ~813 bytes.
    let ack = send_batch(&mut pusher, 1, &vec![line.clone(); 8]).await;
    assert_eq!(ack["last_line"], 8);
    // "ok" fits; the next pushed line is two stored lines of 100 bytes: its first piece alone
    // would fit, both do not, so it goes whole, and "z" after it.
    let first_piece = "p".repeat(98);
    let two_pieces = format!("{first_piece}\n{}", "q".repeat(98));
    let ack = send_batch(&mut pusher, 2, &["ok".into(), two_pieces, "z".into()]).await;
    assert_eq!(ack["dropped"], 2, "{ack}");
    assert_eq!(ack["last_line"], 10, "8 + ok + the notice: {ack}");
    pusher.finish("success").await;
    let (status, _, text) = admin
        .get_text(&format!(
            "/v1/apps/pieces/deployments/{}/output",
            pusher.id()
        ))
        .await;
    assert_eq!(status, 200);
    let stored: Vec<&str> = text.lines().skip(8).collect();
    assert_eq!(
        stored,
        [
            "ok",
            "!     Log limit of 1000 bytes reached; further output dropped"
        ],
        "{text}"
    );
}
