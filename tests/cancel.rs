//! Cancel through the real binary: `POST /v1/apps/{app}/deployments/{id}/cancel` during each
//! executor stage, of a queued deployment, of a finished one, racing the deployment's own end,
//! of another user's deployment; external pushers (the `cancel` frame, the grace period, the
//! `deployd push` client) and `deployd cancel`; the idle timeout of a silent pusher.
mod common;

use std::path::Path;
use std::time::Duration;

use common::push::{self, next_json};
use common::{Client, Options, Server};
use deployd::testing::{self, process_alive, ArchiveServer};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Generous bound for a deployment (or a cancel) to end.
const FINISH: Duration = Duration::from_secs(15);

fn id(deployment: &Value) -> String {
    deployment["id"].as_str().expect("id").to_string()
}

async fn deploy(client: &Client, app: &str, url: &str) -> Value {
    let (status, created) = client
        .post(
            &format!("/v1/apps/{app}/deployments"),
            json!({"deployment": {"git_ref": "main", "source_url": url}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["deployment"].clone()
}

async fn cancel(client: &Client, app: &str, id: &str) -> (u16, Value) {
    client
        .post(
            &format!("/v1/apps/{app}/deployments/{id}/cancel"),
            json!({}),
        )
        .await
}

async fn output(client: &Client, app: &str, id: &str) -> String {
    let (status, _, text) = client
        .get_text(&format!("/v1/apps/{app}/deployments/{id}/output"))
        .await;
    assert_eq!(status, 200, "{text}");
    text
}

async fn status_of(client: &Client, app: &str, id: &str) -> String {
    let (code, body) = client
        .get(&format!("/v1/apps/{app}/deployments/{id}"))
        .await;
    assert_eq!(code, 200, "{body}");
    body["deployment"]["status"]
        .as_str()
        .expect("status")
        .to_string()
}

/// A stage script that records its own pid and a background child's in `pidfile`, says it
/// started, then waits (at most 30 s, so a failing test leaves nothing behind for long).
fn blocking_stage(pidfile: &Path) -> String {
    format!(
        "echo $$ >> '{p}'\nsleep 30 &\necho $! >> '{p}'\necho stage-started\nwait",
        p = pidfile.display()
    )
}

fn pids(pidfile: &Path) -> Vec<u32> {
    std::fs::read_to_string(pidfile)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn wait_pids(pidfile: &Path, count: usize) -> Vec<u32> {
    common::eventually(FINISH, || async {
        let pids = pids(pidfile);
        (pids.len() >= count).then_some(pids)
    })
    .await
}

async fn assert_all_gone(pids: &[u32]) {
    common::eventually(Duration::from_secs(3), || async {
        pids.iter().all(|pid| !process_alive(*pid)).then_some(())
    })
    .await;
}

/// Cancels `app`'s deployment while `stage` (one of build, push, start) blocks, and checks the
/// whole contract: 202 with the running deployment, the status `want`, the line, no process
/// and no work directory left, the log line once.
async fn cancel_during(stage: &str, want: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pids");
    let script = blocking_stage(&pidfile);
    let quick = "echo ok";
    let (build, push_cmd, start) = match stage {
        "build" => (script.as_str(), None, quick),
        "push" => (quick, Some(script.clone()), quick),
        _ => (quick, None, script.as_str()),
    };
    let mut config = String::new();
    if let Some(push_cmd) = push_cmd {
        config = format!("push_cmd = {}\n", toml_string(&push_cmd));
    }
    let server = Server::start_with(Options {
        config_toml: config,
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    let app = format!("cancel-{stage}");
    server.create_app(&admin, &app).await;
    let url = files.serve("/a.tar.gz", testing::app(build, start));
    let created = deploy(&admin, &app, &url).await;
    let id = id(&created);
    let pids = wait_pids(&pidfile, 2).await;
    let running = status_of(&admin, &app, &id).await;

    let (code, body) = cancel(&admin, &app, &id).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["deployment"]["id"], id.as_str());
    assert_eq!(body["deployment"]["status"], running.as_str(), "{body}");

    let done = common::wait_finished(&admin, &app, &id, FINISH).await;
    assert_eq!(done["status"], want, "{done}");
    assert_all_gone(&pids).await;
    let text = output(&admin, &app, &id).await;
    let username = created["pusher"]["username"].as_str().expect("pusher");
    let line = format!("!     Cancelled by {username}");
    assert_eq!(text.matches(&line).count(), 1, "{text}");
    assert!(
        !server.data.join("work").join(&id).exists(),
        "the work directory is removed"
    );
}

fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("json string is a TOML basic string")
}

#[tokio::test]
async fn cancelling_during_the_build_kills_its_process_group_and_ends_aborted() {
    cancel_during("build", "aborted").await;
}

#[tokio::test]
async fn cancelling_during_the_push_kills_its_process_group_and_ends_aborted() {
    cancel_during("push", "aborted").await;
}

#[tokio::test]
async fn cancelling_during_the_start_ends_timeout_error_as_the_graph_requires() {
    cancel_during("start", "timeout-error").await;
}

#[tokio::test]
async fn a_queued_deployment_is_aborted_at_once_and_cancelling_the_running_one_starts_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pids");
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "queue").await;
    let blocking = files.serve(
        "/block.tar.gz",
        testing::app(&blocking_stage(&pidfile), "true"),
    );
    let quick = files.serve("/quick.tar.gz", testing::app("echo quick", "true"));
    let first = id(&deploy(&admin, "queue", &blocking).await);
    let second = deploy(&admin, "queue", &quick).await;
    let third = deploy(&admin, "queue", &quick).await;
    assert_eq!(second["status"], "queued");
    assert_eq!(third["status"], "queued");
    wait_pids(&pidfile, 2).await;

    let (code, body) = cancel(&admin, "queue", &id(&second)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["deployment"]["status"], "aborted", "{body}");
    assert!(body["deployment"]["finished_at"].is_string(), "{body}");
    assert!(output(&admin, "queue", &id(&second))
        .await
        .contains("!     Cancelled by "));
    assert_eq!(status_of(&admin, "queue", &first).await, "building");
    assert_eq!(status_of(&admin, "queue", &id(&third)).await, "queued");

    let (code, body) = cancel(&admin, "queue", &first).await;
    assert_eq!(code, 202, "{body}");
    let done = common::wait_finished(&admin, "queue", &first, FINISH).await;
    assert_eq!(done["status"], "aborted");
    let next = common::wait_finished(&admin, "queue", &id(&third), FINISH).await;
    assert_eq!(
        next["status"], "success",
        "the next queued deployment ran: {next}"
    );
}

#[tokio::test]
async fn cancelling_a_finished_deployment_is_a_409_and_changes_nothing() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "done").await;
    let url = files.serve("/a.tar.gz", testing::app("echo built", "true"));
    let created = id(&deploy(&admin, "done", &url).await);
    let before = common::wait_finished(&admin, "done", &created, FINISH).await;
    let text_before = output(&admin, "done", &created).await;

    let (code, body) = cancel(&admin, "done", &created).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().expect("error").contains("success"),
        "{body}"
    );
    let (_, after) = admin
        .get(&format!("/v1/apps/done/deployments/{created}"))
        .await;
    assert_eq!(after["deployment"], before);
    assert_eq!(output(&admin, "done", &created).await, text_before);
}

#[tokio::test]
async fn a_repeated_cancel_of_a_pending_one_is_202_again_and_logs_once() {
    let server = Server::start_with(Options {
        config_toml: "[push]\ncancel_grace_secs = 30\n".into(),
        ..Options::default()
    });
    let admin = server.admin();
    server.create_app(&admin, "twice").await;
    // An external pusher that does not answer the cancel keeps it pending.
    let mut pusher = push::start(&server.url, "twice", &server.admin_token, "r1").await;
    pusher.logs(&["one"]).await;
    let id = pusher.id();
    let (first, body) = cancel(&admin, "twice", &id).await;
    assert_eq!(first, 202, "{body}");
    assert_eq!(body["deployment"]["status"], "building");
    let (second, body) = cancel(&admin, "twice", &id).await;
    assert_eq!(second, 202, "{body}");
    assert_eq!(body["deployment"]["status"], "building");
    let frame = next_json(&mut pusher.socket).await.expect("cancel frame");
    assert_eq!(frame, json!({"type": "cancel", "by": "admin"}));
    let text = output(&admin, "twice", &id).await;
    assert_eq!(
        text.matches("!     Cancelled by admin").count(),
        1,
        "{text}"
    );
}

#[tokio::test]
async fn cancel_of_another_users_app_or_deployment_is_a_404_like_a_missing_one() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "mine").await;
    let mut pusher = push::start(&server.url, "mine", &server.admin_token, "r").await;
    let id = pusher.id();
    let stranger = server.client(&server.create_user("stranger").await);
    server.create_app(&stranger, "theirs").await;

    let (code, body) = cancel(&stranger, "mine", &id).await;
    assert_eq!(
        (code, body),
        (404, json!({"resource": "app", "error": "not found"}))
    );
    let (code, body) = cancel(&stranger, "theirs", &id).await;
    assert_eq!(
        (code, body),
        (404, json!({"resource": "deployment", "error": "not found"}))
    );
    let (code, missing) = cancel(&admin, "mine", "00000000-0000-0000-0000-000000000000").await;
    assert_eq!(
        (code, missing),
        (404, json!({"resource": "deployment", "error": "not found"}))
    );
    assert_eq!(status_of(&admin, "mine", &id).await, "building");
    pusher.finish("success").await;
}

#[tokio::test]
async fn a_cancel_racing_the_deployments_own_end_either_wins_entirely_or_is_a_409() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "race").await;
    let url = files.serve("/a.tar.gz", testing::app("sleep 0.05", "true"));
    for _ in 0..8 {
        let created = id(&deploy(&admin, "race", &url).await);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (code, body) = cancel(&admin, "race", &created).await;
        let done = common::wait_finished(&admin, "race", &created, FINISH).await;
        let text = output(&admin, "race", &created).await;
        match code {
            // A cancel that lands while the deployment is `starting` ends it `timeout-error`
            // (the state machine has no `starting → aborted`; the push protocol documents
            // the same); before that, `aborted`. (This race hit `starting` under a loaded CI.)
            202 => {
                assert!(text.contains("!     Cancelled by admin"), "{text}");
                let status = done["status"].as_str().unwrap_or_default();
                assert!(
                    matches!(status, "aborted" | "timeout-error"),
                    "{status}: {text}"
                );
                // Ended by the cancel, not by a start timeout of its own.
                assert!(!text.contains("Start did not finish"), "{text}");
            }
            409 => {
                assert_eq!(done["status"], "success", "{body}");
                assert!(!text.contains("Cancelled by"), "{text}");
            }
            other => panic!("cancel answered {other}: {body}"),
        }
    }
}

#[tokio::test]
async fn a_pusher_told_to_cancel_ends_the_deployment_aborted_itself() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "obedient").await;
    let mut pusher = push::start(&server.url, "obedient", &server.admin_token, "r").await;
    pusher.logs(&["working"]).await;
    let id = pusher.id();
    let (code, _) = cancel(&admin, "obedient", &id).await;
    assert_eq!(code, 202);
    let frame = next_json(&mut pusher.socket).await.expect("cancel frame");
    assert_eq!(frame, json!({"type": "cancel", "by": "admin"}));
    // Only the cancel's own end is allowed now.
    let refused = pusher.status("pushing").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "cancelling", "{refused}");
    let ended = pusher.status("aborted").await;
    assert_eq!(ended, json!({"type": "status", "status": "aborted"}));
    assert_eq!(status_of(&admin, "obedient", &id).await, "aborted");
}

#[tokio::test]
async fn a_pusher_that_ignores_the_cancel_is_ended_by_the_server_after_the_grace() {
    let server = Server::start_with(Options {
        config_toml: "[push]\ncancel_grace_secs = 1\n".into(),
        ..Options::default()
    });
    let admin = server.admin();
    server.create_app(&admin, "deaf").await;
    let mut pusher = push::start(&server.url, "deaf", &server.admin_token, "r").await;
    pusher.status("pushing").await;
    pusher.status("starting").await;
    let id = pusher.id();
    let (code, _) = cancel(&admin, "deaf", &id).await;
    assert_eq!(code, 202);
    let frame = next_json(&mut pusher.socket).await.expect("cancel frame");
    assert_eq!(frame["type"], "cancel");
    // The pusher goes on as if nothing happened; the server ends it and stops listening.
    let mut frames = Vec::new();
    while let Some(frame) = next_json(&mut pusher.socket).await {
        if frame["type"] == "ping" {
            continue;
        }
        frames.push(frame);
    }
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "status", "status": "timeout-error"})),
        "{frames:?}"
    );
    let sent = pusher
        .socket
        .send(Message::Text(
            json!({"type": "status", "status": "success"})
                .to_string()
                .into(),
        ))
        .await;
    assert!(sent.is_err() || next_json(&mut pusher.socket).await.is_none());
    assert_eq!(status_of(&admin, "deaf", &id).await, "timeout-error");
    let text = output(&admin, "deaf", &id).await;
    assert!(text.contains("!     Cancelled by admin"), "{text}");
    assert!(
        text.contains("did not end the cancelled deployment within 1 s"),
        "{text}"
    );
}

#[tokio::test]
async fn a_silent_pusher_is_lost_after_the_idle_timeout_with_a_line_saying_why() {
    let server = Server::start_with(Options {
        config_toml: "[push]\nidle_timeout_secs = 1\n".into(),
        ..Options::default()
    });
    let admin = server.admin();
    server.create_app(&admin, "silent").await;
    let mut pusher = push::start(&server.url, "silent", &server.admin_token, "r").await;
    let id = pusher.id();
    let frame = next_json(&mut pusher.socket).await.expect("the end");
    assert_eq!(frame, json!({"type": "status", "status": "aborted"}));
    let text = output(&admin, "silent", &id).await;
    assert!(
        text.contains("!     The pusher sent nothing and answered no ping for 1 s"),
        "{text}"
    );
}

/// Runs `deployd <args[0]> --url … --token … <args[1..]>` in a blocking thread; returns its
/// exit code and stderr.
async fn cli(server: &Server, args: Vec<String>) -> (i32, String) {
    let (url, token) = (server.url.clone(), server.admin_token.clone());
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_deployd"))
            .arg(&args[0])
            .args(["--url", &url, "--token", &token])
            .args(&args[1..])
            .env_remove("DEPLOYD_URL")
            .env_remove("DEPLOYD_TOKEN")
            .output()
            .expect("run deployd");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("cli thread")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn deployd_push_stops_its_command_group_on_cancel_and_exits_4_and_deployd_cancel_says_what_happened(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pids");
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "cli").await;
    let (code, stderr) = cli(&server, strings(&["cancel", "--app", "cli"])).await;
    assert_eq!(code, 1, "nothing runs: {stderr}");

    let script = blocking_stage(&pidfile);
    let push_args = strings(&["push", "--app", "cli", "--", "sh", "-c", &script]);
    let push = cli(&server, push_args);
    let cancelled = async {
        let pids = wait_pids(&pidfile, 2).await;
        let answer = cli(&server, strings(&["cancel", "--app", "cli"])).await;
        (pids, answer)
    };
    let ((push_code, push_stderr), (pids, (code, stderr))) = tokio::join!(push, cancelled);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(push_code, 4, "{push_stderr}");
    assert_all_gone(&pids).await;
    let (_, list) = admin.get("/v1/apps/cli/deployments").await;
    let deployment = &list["deployments"][0];
    assert_eq!(deployment["status"], "aborted", "{push_stderr}");
    let id = id(deployment);
    let (code, stderr) = cli(&server, strings(&["cancel", "--app", "cli", &id])).await;
    assert_eq!(code, 1, "already ended: {stderr}");
    let (code, stderr) = cli(&server, strings(&["cancel", "--app", "nope", &id])).await;
    assert_eq!(code, 2, "unknown app: {stderr}");
}

/// Runs `deployd check [--repair] --data DIR` on a stopped server's data: (exit code, stdout).
fn check_data(data: &Path, repair: bool) -> (i32, String) {
    let mut command = std::process::Command::new(common::deployd_bin());
    command.arg("check").arg("--data").arg(data);
    if repair {
        command.arg("--repair");
    }
    let out = command.output().expect("run deployd check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn a_cancel_accepted_but_not_honoured_when_the_server_is_killed_ends_the_deployment_as_cancelled_at_restart(
) {
    // The pusher never honours the cancel and the grace outlasts the test: only the restart
    // can end it.
    let server = Server::start_with(Options {
        config_toml: "[push]\ncancel_grace_secs = 600\n".into(),
        ..Options::default()
    });
    let admin = server.admin();
    server.create_app(&admin, "killed").await;
    let mut pusher = push::start(&server.url, "killed", &server.admin_token, "r").await;
    pusher.logs(&["working"]).await;
    assert_eq!(pusher.status("pushing").await["status"], "pushing");
    let id = pusher.id();
    let (code, body) = cancel(&admin, "killed", &id).await;
    assert_eq!(code, 202, "{body}");
    let frame = next_json(&mut pusher.socket).await.expect("cancel frame");
    assert_eq!(frame["type"], "cancel");
    assert_eq!(
        status_of(&admin, "killed", &id).await,
        "pushing",
        "still pending"
    );

    let pid = server.pid().expect("running");
    let server = server.crash_and_restart();
    assert_ne!(server.pid(), Some(pid));
    let admin = server.admin();
    assert_eq!(status_of(&admin, "killed", &id).await, "aborted");
    let text = output(&admin, "killed", &id).await;
    assert_eq!(
        text.matches("!     Cancelled by admin").count(),
        1,
        "the cancel's own line, once: {text}"
    );
    assert!(!text.contains("deployd restarted"), "{text}");
    // The old socket died with the server; nothing pending is left to honour or refuse twice.
    assert!(next_json(&mut pusher.socket).await.is_none());
    let (code, body) = cancel(&admin, "killed", &id).await;
    assert_eq!(code, 409, "{body}");
    // A new pusher starts a new deployment; the cancelled one stays as it ended.
    let mut again = push::start(&server.url, "killed", &server.admin_token, "r").await;
    assert_ne!(again.id(), id);
    again.finish("success").await;
    assert_eq!(status_of(&admin, "killed", &id).await, "aborted");

    // The end deleted the request: `deployd check` finds nothing; a stray one is reported and
    // `--repair` removes it.
    let mut server = server;
    server.stop();
    let (code, out) = check_data(&server.data, false);
    assert_eq!(code, 0, "{out}");
    {
        use deployd::model::DeploymentId;
        use deployd::store::codec;
        use deployd::store::engine::{BatchOp, Engine, SledEngine};
        let engine = SledEngine::open(&server.data.join("store")).expect("store");
        let finished: DeploymentId = id.parse().expect("id");
        let stray = codec::encode_cancel_request(&codec::CancelRequest {
            by: "admin".into(),
            at: time::OffsetDateTime::now_utc(),
        });
        engine
            .apply(vec![BatchOp::Put(
                codec::cancel_request_key(finished),
                stray.into(),
            )])
            .expect("apply");
        engine.sync().expect("sync");
    }
    let (code, out) = check_data(&server.data, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("a pending cancel of deployment"), "{out}");
    let (code, out) = check_data(&server.data, true);
    assert_eq!(code, 0, "{out}");
    let (code, out) = check_data(&server.data, false);
    assert_eq!(code, 0, "{out}");
}
