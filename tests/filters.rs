//! Finding deployments through the real binary: `?status=` on an app's deployments and
//! `GET /v1/deployments` across apps, with Scalingo's pagination meta, refusals and access.
mod common;
#[path = "common/deploy.rs"]
mod deploy;

use serde_json::Value;

use common::{push, Client, Server};
use deploy::deploy;

fn ids(body: &Value) -> Vec<String> {
    body["deployments"]
        .as_array()
        .unwrap_or_else(|| panic!("deployments in {body}"))
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_string())
        .collect()
}

async fn list(client: &Client, path: &str) -> Value {
    let (status, body) = client.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn status_filters_pick_deployments_by_status_newest_first_with_pagination() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "filtered").await;
    let token = server.admin_token.clone();
    let failed_1 = deploy(&server, "filtered", &token, &["a"], "build-error").await;
    let ok_1 = deploy(&server, "filtered", &token, &[], "success").await;
    let failed_2 = deploy(&server, "filtered", &token, &[], "build-error").await;
    let ok_2 = deploy(&server, "filtered", &token, &[], "success").await;
    // One still running.
    let running = push::start(&server.url, "filtered", &token, "live").await;

    let body = list(&admin, "/v1/apps/filtered/deployments?status=success").await;
    assert_eq!(ids(&body), vec![ok_2.clone(), ok_1.clone()]);
    assert_eq!(body["meta"]["pagination"]["total_count"], 2);

    let body = list(
        &admin,
        "/v1/apps/filtered/deployments?status=build-error,success&per_page=3",
    )
    .await;
    assert_eq!(
        ids(&body),
        vec![ok_2.clone(), failed_2.clone(), ok_1.clone()]
    );
    let meta = &body["meta"]["pagination"];
    assert_eq!(meta["total_count"], 4);
    assert_eq!(meta["total_pages"], 2);
    assert_eq!(meta["next_page"], 2);
    assert_eq!(meta["prev_page"], Value::Null);
    let body = list(
        &admin,
        "/v1/apps/filtered/deployments?status=build-error%2Csuccess&per_page=3&page=2",
    )
    .await;
    assert_eq!(ids(&body), vec![failed_1.clone()]);
    assert_eq!(body["meta"]["pagination"]["current_page"], 2);
    assert_eq!(body["meta"]["pagination"]["next_page"], Value::Null);

    let body = list(&admin, "/v1/apps/filtered/deployments?status=unfinished").await;
    assert_eq!(ids(&body), vec![running.id()]);
    assert_eq!(body["deployments"][0]["status"], "building");

    // No filter: everything, as before.
    let body = list(&admin, "/v1/apps/filtered/deployments").await;
    assert_eq!(body["meta"]["pagination"]["total_count"], 5);
}

#[tokio::test]
async fn an_unknown_status_is_a_422_on_status_and_nothing_else_is_listed() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "picky").await;
    for path in [
        "/v1/apps/picky/deployments?status=done",
        "/v1/apps/picky/deployments?status=success,nope",
        "/v1/deployments?status=running",
    ] {
        let (status, body) = admin.get(path).await;
        assert_eq!(status, 422, "{path}: {body}");
        let errors = body["errors"]["status"].as_array().expect("status errors");
        assert!(
            errors[0].as_str().expect("text").contains("unknown status"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn unfinished_deployments_across_apps_are_every_app_for_an_admin_and_own_apps_for_others() {
    let server = Server::start();
    let admin = server.admin();
    let alice_token = server.create_user("alice").await;
    let alice = server.client(&alice_token);
    server.create_app(&admin, "admins-app").await;
    server.create_app(&alice, "alices-app").await;
    let admin_token = server.admin_token.clone();
    let finished = deploy(&server, "alices-app", &alice_token, &[], "success").await;
    let admins_running = push::start(&server.url, "admins-app", &admin_token, "a").await;
    let alices_running = push::start(&server.url, "alices-app", &alice_token, "b").await;

    let body = list(&admin, "/v1/deployments?status=unfinished").await;
    assert_eq!(
        ids(&body),
        vec![alices_running.id(), admins_running.id()],
        "newest first across apps"
    );
    assert_eq!(body["meta"]["pagination"]["total_count"], 2);

    let body = list(&alice, "/v1/deployments?status=unfinished").await;
    assert_eq!(ids(&body), vec![alices_running.id()]);
    let body = list(&alice, "/v1/deployments").await;
    assert_eq!(ids(&body), vec![alices_running.id(), finished]);
    let body = list(&alice, "/v1/deployments?per_page=1&page=2").await;
    assert_eq!(body["meta"]["pagination"]["total_pages"], 2);
    assert_eq!(body["meta"]["pagination"]["prev_page"], 1);

    // Another user's app answers 404 exactly like a missing one.
    let (status, theirs) = alice
        .get("/v1/apps/admins-app/deployments?status=unfinished")
        .await;
    let (missing_status, missing) = alice
        .get("/v1/apps/no-such-app/deployments?status=unfinished")
        .await;
    assert_eq!((status, missing_status), (404, 404));
    assert_eq!(theirs, missing);
    let (status, _) = server
        .anonymous()
        .get("/v1/deployments?status=unfinished")
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn filters_still_work_after_a_restart_and_an_ended_deployment_leaves_unfinished() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "restarted").await;
    let token = server.admin_token.clone();
    let done = deploy(&server, "restarted", &token, &[], "success").await;
    let running = push::start(&server.url, "restarted", &token, "x").await;
    let running_id = running.id();
    // Killed with the pusher still connected: recovery ends it at startup.
    let server = server.crash_and_restart();
    let admin = server.admin();
    // Recovery ended the running one (its session was lost): it is no longer unfinished.
    let body = list(&admin, "/v1/deployments?status=unfinished").await;
    assert_eq!(ids(&body), Vec::<String>::new());
    let body = list(&admin, "/v1/apps/restarted/deployments?status=aborted").await;
    assert_eq!(ids(&body), vec![running_id]);
    drop(running);
    let body = list(&admin, "/v1/apps/restarted/deployments?status=success").await;
    assert_eq!(ids(&body), vec![done]);
}
