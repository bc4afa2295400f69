//! The build-slot queue through the real binary: `[executor] max_concurrent` caps executor
//! deployments across apps (first come, first served, with a line saying why one waits), and
//! triggers arriving together are neither dropped nor run at once.
mod common;
#[path = "common/subscriber.rs"]
mod subscriber;

use std::path::Path;
use std::time::Duration;

use common::{Client, Options, Server};
use deployd::testing::{self, ArchiveServer};
use serde_json::{json, Value};

const FINISH: Duration = Duration::from_secs(20);

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

async fn output(client: &Client, app: &str, id: &str) -> String {
    let (_, _, text) = client
        .get_text(&format!("/v1/apps/{app}/deployments/{id}/output"))
        .await;
    text
}

/// Waits (at most ~10 s) for `gate` to exist.
fn wait_for(gate: &Path) -> String {
    format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done",
        gate.display()
    )
}

/// A build that holds `lock` (a directory: mkdir is atomic) while it runs and says OVERLAP if
/// another build held it.
fn exclusive_build(lock: &Path) -> String {
    format!(
        "mkdir '{l}' 2>/dev/null || echo OVERLAP\nsleep 0.2\nrmdir '{l}' 2>/dev/null; true",
        l = lock.display()
    )
}

#[tokio::test]
async fn past_max_concurrent_other_apps_wait_queued_first_come_first_served_with_a_line_saying_why()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate_a, gate_b) = (dir.path().join("a"), dir.path().join("b"));
    let server = Server::start_with(Options {
        config_toml: "max_concurrent = 1\n".into(),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    for app in ["slot-a", "slot-b", "slot-c"] {
        server.create_app(&admin, app).await;
    }
    let url_a = files.serve("/a.tar.gz", testing::app(&wait_for(&gate_a), "true"));
    let url_b = files.serve("/b.tar.gz", testing::app(&wait_for(&gate_b), "true"));
    let url_c = files.serve("/c.tar.gz", testing::app("echo c", "true"));
    let a = deploy(&admin, "slot-a", &url_a).await;
    let b = deploy(&admin, "slot-b", &url_b).await;
    let c = deploy(&admin, "slot-c", &url_c).await;
    assert_eq!(a["status"], "building");
    assert_eq!(b["status"], "queued", "{b}");
    assert_eq!(c["status"], "queued", "{c}");
    let text = output(&admin, "slot-b", &id(&b)).await;
    assert!(text.contains("-----> Waiting for a build slot"), "{text}");

    std::fs::write(&gate_a, "").expect("gate");
    let done = common::wait_finished(&admin, "slot-a", &id(&a), FINISH).await;
    assert_eq!(done["status"], "success");
    common::eventually(FINISH, || async {
        (status_of(&admin, "slot-b", &id(&b)).await == "building").then_some(())
    })
    .await;
    assert_eq!(
        status_of(&admin, "slot-c", &id(&c)).await,
        "queued",
        "the later one still waits"
    );
    std::fs::write(&gate_b, "").expect("gate");
    let done = common::wait_finished(&admin, "slot-c", &id(&c), FINISH).await;
    assert_eq!(done["status"], "success");
    let done = common::wait_finished(&admin, "slot-b", &id(&b), FINISH).await;
    assert_eq!(done["status"], "success");
}

#[tokio::test]
async fn concurrent_triggers_of_one_app_are_all_run_one_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = dir.path().join("lock");
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "together").await;
    let url = files.serve("/x.tar.gz", testing::app(&exclusive_build(&lock), "true"));
    let triggers = (0..4).map(|_| deploy(&admin, "together", &url));
    let created = futures_util::future::join_all(triggers).await;
    let building = created.iter().filter(|d| d["status"] == "building").count();
    assert_eq!(building, 1, "{created:?}");
    for deployment in &created {
        let done = common::wait_finished(&admin, "together", &id(deployment), FINISH).await;
        assert_eq!(done["status"], "success", "{done}");
        let text = output(&admin, "together", &id(deployment)).await;
        assert!(!text.contains("OVERLAP"), "{text}");
    }
    let (_, list) = admin.get("/v1/apps/together/deployments").await;
    assert_eq!(
        list["deployments"].as_array().map(Vec::len),
        Some(4),
        "none dropped"
    );
}

#[tokio::test]
async fn concurrent_triggers_of_different_apps_share_one_build_slot_without_overlap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = dir.path().join("lock");
    let server = Server::start_with(Options {
        config_toml: "max_concurrent = 1\n".into(),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    let apps = ["one", "two", "three"];
    for app in apps {
        server.create_app(&admin, app).await;
    }
    let url = files.serve("/x.tar.gz", testing::app(&exclusive_build(&lock), "true"));
    let triggers = apps.iter().map(|app| deploy(&admin, app, &url));
    let created = futures_util::future::join_all(triggers).await;
    let building = created.iter().filter(|d| d["status"] == "building").count();
    assert_eq!(building, 1, "{created:?}");
    for (app, deployment) in apps.iter().zip(&created) {
        let done = common::wait_finished(&admin, app, &id(deployment), FINISH).await;
        assert_eq!(done["status"], "success", "{done}");
        let text = output(&admin, app, &id(deployment)).await;
        assert!(!text.contains("OVERLAP"), "{text}");
    }
}

#[tokio::test]
async fn deleting_an_app_that_holds_the_build_slot_starts_the_next_waiting_deployment_of_another_app(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("never");
    let server = Server::start_with(Options {
        config_toml: "max_concurrent = 1\n".into(),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    for app in ["holder", "waiter"] {
        server.create_app(&admin, app).await;
    }
    // The holder's build waits for a gate nobody opens: only the delete can free its slot.
    let url_holder = files.serve("/holder.tar.gz", testing::app(&wait_for(&gate), "true"));
    let url_waiter = files.serve("/waiter.tar.gz", testing::app("echo waited", "true"));
    let holder = deploy(&admin, "holder", &url_holder).await;
    let waiter = deploy(&admin, "waiter", &url_waiter).await;
    assert_eq!(holder["status"], "building");
    assert_eq!(waiter["status"], "queued", "{waiter}");

    let (status, body) = admin.delete("/v1/apps/holder").await;
    assert!(status == 200 || status == 204, "{status}: {body}");
    let done = common::wait_finished(&admin, "waiter", &id(&waiter), FINISH).await;
    assert_eq!(done["status"], "success", "{done}");
    let text = output(&admin, "waiter", &id(&waiter)).await;
    assert!(text.contains("waited"), "{text}");
    let (status, _) = admin.get("/v1/apps/holder").await;
    assert_eq!(status, 404);
}

/// Reads `ws` until the status event `status` of `deployment`, failing on any event of a
/// deployment not in `allowed`.
async fn events_of_only(
    ws: &mut subscriber::Ws,
    allowed: &[&str],
    deployment: &str,
    status: &str,
) -> Vec<Value> {
    let events = subscriber::events_until_status(ws, deployment, status).await;
    for event in &events {
        let of = event["id"]
            .as_str()
            .or_else(|| event["data"]["deployment"].as_str())
            .unwrap_or("");
        assert!(
            allowed.contains(&of),
            "an event of another app's deployment: {event}"
        );
    }
    events
}

#[tokio::test]
async fn a_deployment_promoted_by_another_apps_end_is_announced_on_its_own_apps_stream_not_the_enders(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate_a, gate_b) = (dir.path().join("a"), dir.path().join("b"));
    let server = Server::start_with(Options {
        config_toml: "max_concurrent = 1\n".into(),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    let app_a = server.create_app(&admin, "ender").await;
    let app_b = server.create_app(&admin, "promoted").await;
    let mut ws_a = subscriber::subscribe(&app_a, &server.admin_token, json!({})).await;
    let mut ws_b = subscriber::subscribe(&app_b, &server.admin_token, json!({})).await;
    let url_a = files.serve("/a.tar.gz", testing::app(&wait_for(&gate_a), "true"));
    let url_b = files.serve("/b.tar.gz", testing::app(&wait_for(&gate_b), "true"));
    let a = deploy(&admin, "ender", &url_a).await;
    let b = deploy(&admin, "promoted", &url_b).await;
    assert_eq!(a["status"], "building");
    assert_eq!(b["status"], "queued", "{b}");
    let (a_id, b_id) = (id(&a), id(&b));
    events_of_only(&mut ws_b, &[&b_id], &b_id, "queued").await;

    std::fs::write(&gate_a, "").expect("gate");
    let done = common::wait_finished(&admin, "ender", &a_id, FINISH).await;
    assert_eq!(done["status"], "success");
    // B's own subscriber sees B leave `queued`, in the commit that ended A.
    events_of_only(&mut ws_b, &[&b_id], &b_id, "building").await;
    std::fs::write(&gate_b, "").expect("gate");
    events_of_only(&mut ws_b, &[&b_id], &b_id, "success").await;

    // A's subscriber saw A only: a later deployment of A is the next thing after A's end, and
    // whatever B's promotion published in between would have come first.
    events_of_only(&mut ws_a, &[&a_id], &a_id, "success").await;
    let url_c = files.serve("/c.tar.gz", testing::app("true", "true"));
    let c = deploy(&admin, "ender", &url_c).await;
    let c_id = id(&c);
    events_of_only(&mut ws_a, &[&c_id], &c_id, "success").await;
}
