//! Rollback through the real binary and the built-in executor: `POST
//! /v1/apps/{app}/deployments/{id}/rollback` starts the target's kept image without fetching
//! or building, queues like any other deployment, is refused (422) once the image is gone or
//! for a deployment that did not succeed, is a 404 across tenants and apps; `[retention]
//! keep_images` and the current deployment's image across a restart; `deployd rollback`.
mod common;
#[path = "common/subscriber.rs"]
mod subscriber;

use std::time::Duration;

use common::{Client, Options, Server};
use deployd::testing::{self, ArchiveServer};
use serde_json::{json, Value};

/// Generous bound for a deployment to end.
const FINISH: Duration = Duration::from_secs(20);

fn id(deployment: &Value) -> String {
    deployment["id"].as_str().expect("id").to_string()
}

async fn deploy(client: &Client, app: &str, git_ref: &str, url: &str) -> Value {
    let (status, created) = client
        .post(
            &format!("/v1/apps/{app}/deployments"),
            json!({"deployment": {"git_ref": git_ref, "source_url": url}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["deployment"].clone()
}

async fn rollback(client: &Client, app: &str, id: &str) -> (u16, Value) {
    client
        .post(
            &format!("/v1/apps/{app}/deployments/{id}/rollback"),
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

async fn show(client: &Client, app: &str, id: &str) -> Value {
    let (code, body) = client
        .get(&format!("/v1/apps/{app}/deployments/{id}"))
        .await;
    assert_eq!(code, 200, "{body}");
    body["deployment"].clone()
}

async fn deployment_count(client: &Client, app: &str) -> u64 {
    let (code, body) = client.get(&format!("/v1/apps/{app}/deployments")).await;
    assert_eq!(code, 200, "{body}");
    body["meta"]["pagination"]["total_count"]
        .as_u64()
        .expect("total_count")
}

/// Deploys `url` and waits for its end; returns the finished deployment.
async fn deployed(client: &Client, app: &str, git_ref: &str, url: &str) -> Value {
    let created = deploy(client, app, git_ref, url).await;
    common::wait_finished(client, app, &id(&created), FINISH).await
}

fn image_file(server: &Server, id: &str) -> std::path::PathBuf {
    server.data.join("images").join(format!("{id}.tar.gz"))
}

/// A build that writes a file the start stage prints, so a start from the kept image shows
/// the built tree came back; each archive's build writes its own `version`.
fn versioned_app(version: &str) -> Vec<u8> {
    testing::app(
        &format!("echo building {version}; echo {version} > built.txt"),
        "echo \"started $(cat built.txt) image=$DEPLOYD_IMAGE_PATH\"",
    )
}

#[tokio::test]
async fn a_rollback_starts_the_kept_image_without_fetching_or_building() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "web").await;
    let v1 = deployed(
        &admin,
        "web",
        "v1",
        &files.serve("/v1.tar.gz", versioned_app("v1")),
    )
    .await;
    assert_eq!(v1["status"], "success", "{v1}");
    assert_eq!(v1["image_kept"], true, "{v1}");
    let v2 = deployed(
        &admin,
        "web",
        "v2",
        &files.serve("/v2.tar.gz", versioned_app("v2")),
    )
    .await;
    assert_eq!(v2["status"], "success", "{v2}");
    let fetched = files.requests().len();

    let (code, body) = rollback(&admin, "web", &id(&v1)).await;
    assert_eq!(code, 201, "{body}");
    let created = &body["deployment"];
    assert_eq!(created["git_ref"], "v1", "{body}");
    assert_eq!(created["previous_git_ref"], "v2", "{body}");
    assert_eq!(
        created["image_kept"], false,
        "not a target before it succeeds"
    );
    let rb = id(created);
    let done = common::wait_finished(&admin, "web", &rb, FINISH).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["image_kept"], true, "{done}");
    assert_eq!(done["image_size"], v1["image_size"], "the same image");

    assert_eq!(files.requests().len(), fetched, "nothing was fetched");
    let text = output(&admin, "web", &rb).await;
    assert!(
        text.contains(&format!("-----> Rolling back to {} (v1)", id(&v1))),
        "{text}"
    );
    assert!(!text.contains("Fetching"), "{text}");
    assert!(!text.contains("building v1"), "nothing was built: {text}");
    let own_image = image_file(&server, &rb);
    assert!(
        text.contains(&format!("started v1 image={}", own_image.display())),
        "the start stage sees the built files and the usual environment: {text}"
    );

    // The same image, linked, never re-packed.
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(image_file(&server, &id(&v1))).expect("target image");
    let linked = std::fs::metadata(&own_image).expect("rollback image");
    assert_eq!((target.dev(), target.ino()), (linked.dev(), linked.ino()));

    // The app now runs v1 again.
    let (_, app) = admin.get("/v1/apps/web").await;
    assert_eq!(app["app"]["last_deployment_id"], rb.as_str(), "{app}");
}

#[tokio::test]
async fn a_rollback_requested_while_another_deployment_runs_queues_behind_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("gate");
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "busy").await;
    let v1 = deployed(
        &admin,
        "busy",
        "v1",
        &files.serve("/v1.tar.gz", versioned_app("v1")),
    )
    .await;
    assert_eq!(v1["status"], "success");
    // A build that waits until the test lets it go.
    let slow = testing::app(
        &format!(
            "for i in $(seq 300); do [ -e '{}' ] && exit 0; sleep 0.1; done; exit 1",
            gate.display()
        ),
        "true",
    );
    let running = deploy(&admin, "busy", "v2", &files.serve("/slow.tar.gz", slow)).await;
    assert_eq!(running["status"], "building");

    let (code, body) = rollback(&admin, "busy", &id(&v1)).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["deployment"]["status"], "queued", "{body}");
    let rb = id(&body["deployment"]);
    assert_eq!(show(&admin, "busy", &rb).await["status"], "queued");

    std::fs::write(&gate, b"go").expect("open the gate");
    let first = common::wait_finished(&admin, "busy", &id(&running), FINISH).await;
    assert_eq!(first["status"], "success", "{first}");
    let done = common::wait_finished(&admin, "busy", &rb, FINISH).await;
    assert_eq!(done["status"], "success", "{done}");
    assert!(output(&admin, "busy", &rb).await.contains("started v1"));
}

#[tokio::test]
async fn the_stream_shows_the_rollbacks_statuses_through_building_and_pushing() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "streamed").await;
    let v1 = deployed(
        &admin,
        "streamed",
        "v1",
        &files.serve("/v1.tar.gz", versioned_app("v1")),
    )
    .await;
    let mut ws = subscriber::subscribe(&app, &server.admin_token, json!({})).await;
    let (code, body) = rollback(&admin, "streamed", &id(&v1)).await;
    assert_eq!(code, 201, "{body}");
    let rb = id(&body["deployment"]);
    let events = subscriber::events_until_status(&mut ws, &rb, "success").await;
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "status" && e["id"] == rb.as_str())
        .filter_map(|e| e["data"]["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        vec!["building", "pushing", "starting", "success"],
        "{events:?}"
    );
}

#[tokio::test]
async fn a_deployment_that_did_not_succeed_cannot_be_rolled_back_to_and_keeps_no_image() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "broken").await;
    let crashed = deployed(
        &admin,
        "broken",
        "bad",
        &files.serve("/bad.tar.gz", testing::app("echo built", "exit 3")),
    )
    .await;
    assert_eq!(crashed["status"], "crashed-error", "{crashed}");
    assert_eq!(crashed["image_kept"], false, "{crashed}");
    // Record first (in the end's commit), then the file.
    let image = image_file(&server, &id(&crashed));
    common::eventually(FINISH, || async { (!image.exists()).then_some(()) }).await;
    let before = deployment_count(&admin, "broken").await;

    let (code, body) = rollback(&admin, "broken", &id(&crashed)).await;
    assert_eq!(code, 422, "{body}");
    let message = body["errors"]["deployment"][0].as_str().expect("message");
    assert!(message.contains("cannot be rolled back to"), "{body}");
    assert_eq!(deployment_count(&admin, "broken").await, before);
}

#[tokio::test]
async fn a_custom_push_that_writes_no_image_leaves_nothing_to_roll_back_to() {
    let server = Server::start_with(Options {
        config_toml: "push_cmd = \"echo pushed elsewhere\"\n".into(),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "custom").await;
    let done = deployed(
        &admin,
        "custom",
        "v1",
        &files.serve("/v1.tar.gz", versioned_app("v1")),
    )
    .await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["image_kept"], false, "{done}");
    let (code, body) = rollback(&admin, "custom", &id(&done)).await;
    assert_eq!(code, 422, "{body}");
    assert!(body["errors"]["deployment"].is_array(), "{body}");
}

#[tokio::test]
async fn rollback_to_another_users_or_another_apps_deployment_is_a_404_like_a_missing_one() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "mine").await;
    server.create_app(&admin, "other").await;
    let v1 = deployed(
        &admin,
        "mine",
        "v1",
        &files.serve("/v1.tar.gz", versioned_app("v1")),
    )
    .await;
    assert_eq!(v1["status"], "success");
    let stranger = server.client(&server.create_user("stranger").await);
    server.create_app(&stranger, "theirs").await;

    let missing_app = json!({"resource": "app", "error": "not found"});
    let missing_deployment = json!({"resource": "deployment", "error": "not found"});
    assert_eq!(
        rollback(&stranger, "mine", &id(&v1)).await,
        (404, missing_app.clone())
    );
    assert_eq!(
        rollback(&stranger, "nope", &id(&v1)).await,
        (404, missing_app)
    );
    assert_eq!(
        rollback(&stranger, "theirs", &id(&v1)).await,
        (404, missing_deployment.clone())
    );
    assert_eq!(
        rollback(&admin, "other", &id(&v1)).await,
        (404, missing_deployment.clone())
    );
    assert_eq!(
        rollback(&admin, "mine", "not-a-uuid").await,
        (404, missing_deployment.clone())
    );
    assert_eq!(
        rollback(&admin, "mine", "0190f6c3-0000-7000-8000-000000000000").await,
        (404, missing_deployment)
    );
    for app in ["mine", "other", "theirs"] {
        let client = if app == "theirs" { &stranger } else { &admin };
        let expected = u64::from(app == "mine");
        assert_eq!(deployment_count(client, app).await, expected, "{app}");
    }
}

#[tokio::test]
async fn a_pruned_image_is_a_422_while_the_current_one_survives_retention_and_a_restart() {
    let server = Server::start_with(Options {
        config_toml: "[retention]\nkeep_images = 1\n".into(),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "kept").await;
    let v1 = deployed(
        &admin,
        "kept",
        "v1",
        &files.serve("/v1.tar.gz", versioned_app("v1")),
    )
    .await;
    let v2 = deployed(
        &admin,
        "kept",
        "v2",
        &files.serve("/v2.tar.gz", versioned_app("v2")),
    )
    .await;
    let v3 = deployed(
        &admin,
        "kept",
        "v3",
        &files.serve("/v3.tar.gz", versioned_app("v3")),
    )
    .await;
    for d in [&v1, &v2, &v3] {
        assert_eq!(d["status"], "success", "{d}");
    }
    // The prune pass runs after each end: the older images go, record then file.
    common::eventually(FINISH, || async {
        (!image_file(&server, &id(&v1)).exists() && !image_file(&server, &id(&v2)).exists())
            .then_some(())
    })
    .await;
    assert_eq!(show(&admin, "kept", &id(&v1)).await["image_kept"], false);
    let before = deployment_count(&admin, "kept").await;
    let (code, body) = rollback(&admin, "kept", &id(&v1)).await;
    assert_eq!(code, 422, "{body}");
    assert!(body["errors"]["deployment"].is_array(), "{body}");
    assert_eq!(deployment_count(&admin, "kept").await, before);

    let server = server.restart();
    let admin = server.admin();
    assert!(
        image_file(&server, &id(&v3)).exists(),
        "the current image stays"
    );
    assert_eq!(show(&admin, "kept", &id(&v3)).await["image_kept"], true);
    assert_eq!(rollback(&admin, "kept", &id(&v2)).await.0, 422);

    // After the restart, the current image still rolls back (to itself: a redeploy).
    let (code, body) = rollback(&admin, "kept", &id(&v3)).await;
    assert_eq!(code, 201, "{body}");
    let rb = id(&body["deployment"]);
    let done = common::wait_finished(&admin, "kept", &rb, FINISH).await;
    assert_eq!(done["status"], "success", "{done}");
    assert!(output(&admin, "kept", &rb).await.contains("started v3"));
    // keep_images = 1: now the rollback is the current one, v3's record and file went.
    common::eventually(FINISH, || async {
        (!image_file(&server, &id(&v3)).exists()).then_some(())
    })
    .await;
    assert!(image_file(&server, &rb).exists());
    assert_eq!(show(&admin, "kept", &rb).await["image_kept"], true);
}

#[tokio::test]
async fn deleting_an_app_leaves_no_image_behind() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "gone").await;
    let v1 = deployed(
        &admin,
        "gone",
        "v1",
        &files.serve("/v1.tar.gz", versioned_app("v1")),
    )
    .await;
    assert!(image_file(&server, &id(&v1)).exists());
    let (code, body) = admin.delete("/v1/apps/gone").await;
    assert!(code == 204 || code == 200, "{code} {body}");
    common::eventually(FINISH, || async {
        (!image_file(&server, &id(&v1)).exists()).then_some(())
    })
    .await;
}

async fn cli(server: &Server, args: &[&str]) -> (i32, String, String) {
    let (url, token) = (server.url.clone(), server.admin_token.clone());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_deployd"))
            .arg("rollback")
            .args(["--url", &url, "--token", &token])
            .args(&args)
            .env_remove("DEPLOYD_URL")
            .env_remove("DEPLOYD_TOKEN")
            .output()
            .expect("run deployd");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("cli thread")
}

#[tokio::test]
async fn deployd_rollback_exit_codes_say_what_happened() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "cli").await;
    let v1 = deployed(
        &admin,
        "cli",
        "v1",
        &files.serve("/v1.tar.gz", versioned_app("v1")),
    )
    .await;
    let bad = deployed(
        &admin,
        "cli",
        "bad",
        &files.serve("/bad.tar.gz", testing::app("exit 1", "true")),
    )
    .await;
    assert_eq!(bad["status"], "build-error");

    // Created: 0, the new id on stdout.
    let (code, stdout, stderr) = cli(&server, &["--app", "cli", &id(&v1)]).await;
    assert_eq!(code, 0, "{stderr}");
    let rb = stdout.trim().to_string();
    assert_eq!(show(&admin, "cli", &rb).await["git_ref"], "v1");
    common::wait_finished(&admin, "cli", &rb, FINISH).await;

    // --follow: follow's codes (0: success), the output printed.
    let (code, stdout, stderr) = cli(&server, &["--app", "cli", &id(&v1), "--follow"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("started v1") || stderr.contains("started v1"),
        "{stdout}{stderr}"
    );

    // Not a target: 1. Unknown deployment or app: 2.
    let (code, _, stderr) = cli(&server, &["--app", "cli", &id(&bad)]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot be rolled back to"), "{stderr}");
    let (code, _, stderr) = cli(&server, &["--app", "nope", &id(&v1)]).await;
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = cli(
        &server,
        &["--app", "cli", "0190f6c3-0000-7000-8000-000000000000"],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
}
