//! What Scalingo's CLI needs beyond deployments, through the real binary: the app's `status` and
//! `last_deployed_*` following successful deployments only, `previous_git_ref`, `scalingo
//! rename`, `collaborators-update --limited` and what a limited collaborator may do,
//! `deployment-delete-cache` with the executor's per-app build cache, and the stream's `new`
//! event in both forms. Each with its bad input (wrong types, unknown ids, another user's app).
mod common;
#[path = "common/subscriber.rs"]
mod subscriber;

use std::time::Duration;

use common::{push, Client, Endpoint, Options, Server};
use deployd::testing::{self, ArchiveServer};
use serde_json::{json, Value};

/// Generous bound for a deployment of a tiny archive (they take well under a second).
const FINISH: Duration = Duration::from_secs(10);

/// Any method with a JSON body; `(status, body)` (`Null` for an empty body).
async fn send(client: &Client, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = client
        .request(method, path)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body ({status}): {text}"))
    };
    (status, value)
}

async fn patch(client: &Client, path: &str, body: Value) -> (u16, Value) {
    send(client, reqwest::Method::PATCH, path, body).await
}

/// One pushed deployment of `app` at `git_ref`, run to `end`; returns its id.
async fn pushed(server: &Endpoint, app: &str, token: &str, git_ref: &str, end: &str) -> String {
    let mut pusher = push::start(&server.url, app, token, git_ref).await;
    pusher.logs(&[&format!("building {git_ref}")]).await;
    let path: &[&str] = match end {
        "build-error" | "aborted" => &[],
        _ => &["pushing", "starting"],
    };
    for status in path.iter().chain(std::iter::once(&end)) {
        let frame = pusher.status(status).await;
        assert_eq!(frame["status"], *status, "{frame}");
    }
    assert!(push::next_json(&mut pusher.socket).await.is_none());
    pusher.id()
}

async fn app_json(client: &Client, app: &str) -> Value {
    let (status, body) = client.get(&format!("/v1/apps/{app}")).await;
    assert_eq!(status, 200, "{body}");
    body["app"].clone()
}

async fn deployment_json(client: &Client, app: &str, id: &str) -> Value {
    let (status, body) = client
        .get(&format!("/v1/apps/{app}/deployments/{id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["deployment"].clone()
}

fn assert_422_on(status: u16, body: &Value, field: &str) {
    assert_eq!(status, 422, "{body}");
    assert!(
        body["errors"][field].is_array(),
        "no error on {field}: {body}"
    );
}

#[tokio::test]
async fn an_app_stays_new_until_a_deployment_succeeds_and_last_deployed_follows_successes_only() {
    let server = Server::start();
    let admin = server.admin();
    let alice = server.create_user("alice").await;
    server.create_app(&admin, "shop").await;
    let token = &server.admin_token;

    let failed = pushed(&server, "shop", token, "v1", "build-error").await;
    let app = app_json(&admin, "shop").await;
    assert_eq!(app["status"], "new", "a failed first deployment: {app}");
    for field in ["last_deployment_id", "last_deployed_at", "last_deployed_by"] {
        assert!(app[field].is_null(), "{field} after a failure: {app}");
    }
    let first = deployment_json(&admin, "shop", &failed).await;
    assert!(first["previous_git_ref"].is_null(), "{first}");

    let good = pushed(&server, "shop", token, "v2", "success").await;
    let app = app_json(&admin, "shop").await;
    assert_eq!(app["status"], "running", "{app}");
    assert_eq!(app["last_deployment_id"], good.as_str(), "{app}");
    assert_eq!(app["last_deployed_by"], "admin", "{app}");
    let good_json = deployment_json(&admin, "shop", &good).await;
    assert_eq!(app["last_deployed_at"], good_json["created_at"], "{app}");
    assert!(
        good_json["previous_git_ref"].is_null(),
        "no success before it, a failure is not a previous ref: {good_json}"
    );

    let crashed = pushed(&server, "shop", token, "v3", "crashed-error").await;
    let app = app_json(&admin, "shop").await;
    assert_eq!(app["status"], "running", "{app}");
    assert_eq!(
        app["last_deployment_id"],
        good.as_str(),
        "a failure moves nothing: {app}"
    );
    let crashed_json = deployment_json(&admin, "shop", &crashed).await;
    assert_eq!(crashed_json["previous_git_ref"], "v2", "{crashed_json}");

    let next = pushed(&server, "shop", token, "v4", "success").await;
    let next_json = deployment_json(&admin, "shop", &next).await;
    assert_eq!(
        next_json["previous_git_ref"], "v2",
        "the last *successful* ref, not the crashed one: {next_json}"
    );
    let app = app_json(&admin, "shop").await;
    assert_eq!(app["last_deployment_id"], next.as_str(), "{app}");
    // The list shows the same, and another user still cannot see the app.
    let (_, list) = admin.get("/v1/apps").await;
    assert_eq!(list["apps"][0]["last_deployment_id"], next.as_str());
    let (status, body) = server.client(&alice).get("/v1/apps/shop").await;
    assert_eq!(status, 404, "{body}");

    // The same holds after a restart (it is stored, not computed from memory).
    let server = server.restart();
    let app = app_json(&server.admin(), "shop").await;
    assert_eq!(app["last_deployment_id"], next.as_str(), "{app}");
}

#[tokio::test]
async fn renaming_an_app_keeps_its_id_moves_its_links_and_frees_the_old_name() {
    let server = Server::start();
    let admin = server.admin();
    let created = server.create_app(&admin, "shop").await;
    server.create_app(&admin, "taken").await;
    let deployment = pushed(&server, "shop", &server.admin_token, "v1", "success").await;

    let (status, body) = admin
        .post(
            "/v1/apps/shop/rename",
            json!({"current_name": "shop", "new_name": "store"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let app = &body["app"];
    assert_eq!(app["name"], "store");
    assert_eq!(app["id"], created["id"], "the id never changes");
    assert!(
        app["links"]["deployments_stream"]
            .as_str()
            .expect("link")
            .ends_with("/apps/store"),
        "{app}"
    );
    assert_eq!(app["last_deployment_id"], deployment.as_str());

    let (status, body) = admin.get("/v1/apps/shop").await;
    assert_eq!(status, 404, "the old name: {body}");
    assert_eq!(body["resource"], "app");
    let by_id = app_json(&admin, created["id"].as_str().expect("id")).await;
    assert_eq!(by_id["name"], "store");
    let shown = deployment_json(&admin, "store", &deployment).await;
    let output = shown["links"]["output"].as_str().expect("output link");
    let (status, _, _) = admin.get_text(output.trim_start_matches(&server.url)).await;
    assert_eq!(status, 200, "the output link still works after the rename");

    // The new stream link serves the app's deployments; the old one is gone.
    let mut ws = subscriber::subscribe(app, &server.admin_token, json!({})).await;
    let live = push::start(&server.url, "store", &server.admin_token, "v2").await;
    let events = subscriber::events_until_status(&mut ws, &live.id(), "building").await;
    assert!(
        events.iter().any(|e| e["id"] == live.id().as_str()),
        "{events:?}"
    );
    let mut old = subscriber::subscribe(&created, &server.admin_token, json!({})).await;
    let (code, reason) = subscriber::expect_close(&mut old).await;
    assert_ne!(code, 1000, "{code} {reason}");

    // The old name is free again.
    server.create_app(&admin, "shop").await;

    // Bad input changes nothing.
    for (body, field) in [
        (
            json!({"current_name": "shop", "new_name": "x-store"}),
            "current_name",
        ),
        (json!({"new_name": "x-store"}), "current_name"),
        (
            json!({"current_name": "store", "new_name": "Bad_Name"}),
            "new_name",
        ),
        (json!({"current_name": "store"}), "new_name"),
        (
            json!({"current_name": "store", "new_name": "taken"}),
            "new_name",
        ),
        (
            json!({"current_name": "store", "new_name": "store"}),
            "new_name",
        ),
        (json!({"current_name": "store", "new_name": 5}), "new_name"),
        (
            json!({"current_name": "store", "new_name": "0190a7e2-0000-7000-8000-000000000000"}),
            "new_name",
        ),
    ] {
        let (status, answer) = admin.post("/v1/apps/store/rename", body.clone()).await;
        assert_422_on(status, &answer, field);
    }
    let (status, body) = admin.post_raw("/v1/apps/store/rename", "{nope").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(app_json(&admin, "store").await["name"], "store");

    let (status, body) = admin
        .post(
            "/v1/apps/nowhere/rename",
            json!({"current_name": "nowhere", "new_name": "somewhere"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let bob = server.create_user("bob").await;
    let (status, body) = server
        .client(&bob)
        .post(
            "/v1/apps/store/rename",
            json!({"current_name": "store", "new_name": "bobs"}),
        )
        .await;
    assert_eq!(status, 404, "another user's app: {body}");
    assert_eq!(app_json(&admin, "store").await["name"], "store");
}

#[tokio::test]
async fn a_limited_collaborator_reads_and_deploys_but_manages_nothing() {
    let server = Server::start();
    let admin = server.admin();
    let bob_token = server.create_user("bob").await;
    let carol_token = server.create_user("carol").await;
    let bob = server.client(&bob_token);
    server.create_app(&admin, "shop").await;
    let (status, added) = admin
        .post(
            "/v1/apps/shop/collaborators",
            json!({"collaborator": {"email": "bob@example.com"}}),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["collaborator"]["is_limited"], false);
    let id = added["collaborator"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let user_id = added["collaborator"]["user_id"]
        .as_str()
        .expect("user id")
        .to_string();

    let (status, body) = patch(
        &admin,
        &format!("/v1/apps/shop/collaborators/{id}"),
        json!({"collaborator": {"is_limited": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let shown = &body["collaborator"];
    assert_eq!(shown["is_limited"], true);
    for field in ["id", "app_id", "username", "email", "status", "user_id"] {
        assert!(!shown[field].is_null(), "{field}: {shown}");
    }
    let (_, list) = admin.get("/v1/apps/shop/collaborators").await;
    assert_eq!(list["collaborators"][0]["is_limited"], true, "{list}");

    // Reads and deploys.
    assert_eq!(app_json(&bob, "shop").await["name"], "shop");
    pushed(&server, "shop", &bob_token, "v1", "success").await;
    let (status, body) = bob.delete("/v1/apps/shop/caches/deployment").await;
    assert_eq!(status, 204, "a cache reset is part of deploying: {body}");
    // Manages nothing: each refusal is a JSON 403 and changes nothing.
    let refusals = [
        bob.post(
            "/v1/apps/shop/rename",
            json!({"current_name": "shop", "new_name": "bobs-shop"}),
        )
        .await,
        bob.delete("/v1/apps/shop").await,
        bob.post(
            "/v1/apps/shop/collaborators",
            json!({"collaborator": {"email": "carol@example.com"}}),
        )
        .await,
        patch(
            &bob,
            &format!("/v1/apps/shop/collaborators/{id}"),
            json!({"collaborator": {"is_limited": false}}),
        )
        .await,
    ];
    for (status, body) in refusals {
        assert_eq!(status, 403, "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(app_json(&admin, "shop").await["name"], "shop");
    let (_, list) = admin.get("/v1/apps/shop/collaborators").await;
    assert_eq!(list["collaborators"].as_array().expect("list").len(), 1);
    assert_eq!(list["collaborators"][0]["is_limited"], true);

    // Bad input, by the owner: wrong types, missing fields, unknown ids; nothing changes.
    for body in [
        json!({"collaborator": {"is_limited": "yes"}}),
        json!({"collaborator": {"is_limited": 1}}),
        json!({"collaborator": {}}),
        json!({}),
        json!({"collaborator": "limited"}),
    ] {
        let (status, answer) = patch(
            &admin,
            &format!("/v1/apps/shop/collaborators/{id}"),
            body.clone(),
        )
        .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(answer["errors"].is_object(), "{answer}");
    }
    let (status, body) = patch(
        &admin,
        &format!("/v1/apps/shop/collaborators/{}", uuid::Uuid::now_v7()),
        json!({"collaborator": {"is_limited": false}}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["resource"], "collaborator");
    let (status, body) = patch(
        &server.client(&carol_token),
        &format!("/v1/apps/shop/collaborators/{id}"),
        json!({"collaborator": {"is_limited": false}}),
    )
    .await;
    assert_eq!(status, 404, "another user's app: {body}");
    let (_, list) = admin.get("/v1/apps/shop/collaborators").await;
    assert_eq!(list["collaborators"][0]["is_limited"], true);

    // Added limited at once (what `collaborators-add` sends, with `is_limited`).
    let (status, body) = admin
        .post(
            "/v1/apps/shop/collaborators",
            json!({"collaborator": {"email": "carol@example.com", "is_limited": "yes"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = admin
        .post(
            "/v1/apps/shop/collaborators",
            json!({"collaborator": {"email": "carol@example.com", "is_limited": true}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["collaborator"]["is_limited"], true);
    let (status, body) = server
        .client(&carol_token)
        .post(
            "/v1/apps/shop/rename",
            json!({"current_name": "shop", "new_name": "carols"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // Lifted (by user id this time), and kept across a restart: bob may rename again.
    let (status, body) = patch(
        &admin,
        &format!("/v1/apps/shop/collaborators/{user_id}"),
        json!({"collaborator": {"is_limited": false}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let server = server.restart();
    let bob = server.client(&bob_token);
    let (_, list) = server.admin().get("/v1/apps/shop/collaborators").await;
    let limited: Vec<(&str, bool)> = list["collaborators"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["username"].as_str().expect("name"),
                c["is_limited"] == true,
            )
        })
        .collect();
    assert_eq!(limited, [("bob", false), ("carol", true)]);
    let (status, body) = bob
        .post(
            "/v1/apps/shop/rename",
            json!({"current_name": "shop", "new_name": "bobs-shop"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bob.delete("/v1/apps/bobs-shop").await;
    assert_eq!(status, 403, "deleting stays the owner's: {body}");
}

/// A build that reports whether the cache holds what the previous build left, then leaves it.
const CACHING_BUILD: &str = "if [ -f \"$DEPLOYD_CACHE_DIR/deps\" ]; then echo \"cache hit: $(cat \"$DEPLOYD_CACHE_DIR/deps\")\"; else echo 'cache miss'; fi\necho \"$DEPLOYD_GIT_REF\" > \"$DEPLOYD_CACHE_DIR/deps\"";

async fn cached_build(client: &Client, app: &str, url: &str, git_ref: &str) -> String {
    let (status, created) = client
        .post(
            &format!("/v1/apps/{app}/deployments"),
            json!({"deployment": {"git_ref": git_ref, "source_url": url}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["deployment"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let done = common::wait_finished(client, app, &id, FINISH).await;
    assert_eq!(done["status"], "success", "{done}");
    let (status, _, text) = client
        .get_text(&format!("/v1/apps/{app}/deployments/{id}/output"))
        .await;
    assert_eq!(status, 200, "{text}");
    text
}

#[tokio::test]
async fn the_build_cache_is_kept_between_deployments_and_emptied_by_delete_cache() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "shop").await;
    let blog = server.create_app(&admin, "blog").await;
    let url = files.serve("/shop.tar.gz", testing::app(CACHING_BUILD, "true"));

    assert!(cached_build(&admin, "shop", &url, "v1")
        .await
        .contains("cache miss"));
    let second = cached_build(&admin, "shop", &url, "v2").await;
    assert!(second.contains("cache hit: v1"), "{second}");
    let cache = server
        .data
        .join("cache")
        .join(app["id"].as_str().expect("id"));
    assert!(cache.join("deps").is_file(), "{}", cache.display());
    // Another app has its own cache.
    assert!(cached_build(&admin, "blog", &url, "b1")
        .await
        .contains("cache miss"));

    let (status, body) = admin.delete("/v1/apps/shop/caches/deployment").await;
    assert_eq!(status, 204, "{body}");
    assert!(!cache.join("deps").exists());
    assert!(cached_build(&admin, "shop", &url, "v3")
        .await
        .contains("cache miss"));
    // Kept by id: a rename keeps it.
    let (status, body) = admin
        .post(
            "/v1/apps/shop/rename",
            json!({"current_name": "shop", "new_name": "store"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let after = cached_build(&admin, "store", &url, "v4").await;
    assert!(after.contains("cache hit: v3"), "{after}");
    assert!(cached_build(&admin, "blog", &url, "b2")
        .await
        .contains("cache hit: b1"));

    // Resetting an app that never built is fine; unknown and foreign apps are 404s.
    server.create_app(&admin, "fresh").await;
    let (status, _) = admin.delete("/v1/apps/fresh/caches/deployment").await;
    assert_eq!(status, 204);
    let (status, body) = admin.delete("/v1/apps/nowhere/caches/deployment").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["resource"], "app");
    let eve = server.create_user("eve").await;
    let (status, body) = server
        .client(&eve)
        .delete("/v1/apps/blog/caches/deployment")
        .await;
    assert_eq!(status, 404, "another user's app: {body}");
    let blog_cache = server
        .data
        .join("cache")
        .join(blog["id"].as_str().expect("id"));
    assert!(
        blog_cache.join("deps").is_file(),
        "the refused reset removed nothing"
    );

    // Deleting the app deletes its cache.
    let (status, body) = admin.delete("/v1/apps/store?current_name=store").await;
    assert_eq!(status, 204, "{body}");
    common::eventually(Duration::from_secs(5), || async {
        (!cache.exists()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_build_running_while_its_cache_is_reset_finishes_and_the_next_build_starts_empty() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "shop").await;
    let gate = server.data.join("gate");
    // Fills the cache, waits for the reset, then keeps writing into its (renamed) directory.
    let build = format!(
        "echo early > \"$DEPLOYD_CACHE_DIR/deps\"\necho 'cache filled'\ni=0; while [ ! -e '{gate}' ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done\necho late > \"$DEPLOYD_CACHE_DIR/deps\" || true\necho built",
        gate = gate.display()
    );
    let url = files.serve("/slow.tar.gz", testing::app(&build, "true"));
    let (status, created) = admin
        .post(
            "/v1/apps/shop/deployments",
            json!({"deployment": {"git_ref": "v1", "source_url": url}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["deployment"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, _, _) = common::eventually(FINISH, || async {
        let (status, kind, text) = admin
            .get_text(&format!("/v1/apps/shop/deployments/{id}/output"))
            .await;
        (status == 200 && text.contains("cache filled")).then_some((status, kind, text))
    })
    .await;
    assert_eq!(status, 200);
    let (status, body) = admin.delete("/v1/apps/shop/caches/deployment").await;
    assert_eq!(status, 204, "{body}");
    std::fs::write(&gate, b"go").expect("gate");
    let done = common::wait_finished(&admin, "shop", &id, FINISH).await;
    assert_eq!(done["status"], "success", "{done}");
    let url = files.serve("/check.tar.gz", testing::app(CACHING_BUILD, "true"));
    let text = cached_build(&admin, "shop", &url, "v2").await;
    assert!(text.contains("cache miss"), "{text}");
}

/// `scalingo deployment-follow` reads `data.deployment` of a `new` event as an object.
#[tokio::test]
async fn the_new_event_carries_the_deployment_object_only_when_configured() {
    for (config, object) in [("", false), ("[stream]\nnew_event = \"object\"\n", true)] {
        let server = Server::start_with(Options {
            config_toml: config.to_string(),
            ..Options::default()
        });
        let admin = server.admin();
        let app = server.create_app(&admin, "shop").await;
        // A finished deployment, whose replay proves the subscription is live (the server
        // subscribes before it replays, and a replay announces nothing) before the one under
        // test starts.
        let earlier = pushed(&server, "shop", &server.admin_token, "v0", "success").await;
        let mut ws = subscriber::subscribe(&app, &server.admin_token, json!({})).await;
        subscriber::events_until_status(&mut ws, &earlier, "success").await;
        let mut live = push::start(&server.url, "shop", &server.admin_token, "v1").await;
        let id = live.id();
        let new = loop {
            let event = subscriber::next_event(&mut ws).await;
            if event["type"] == "new" {
                break event;
            }
        };
        if object {
            let deployment = &new["data"]["deployment"];
            assert_eq!(deployment["id"], id.as_str(), "{new}");
            assert_eq!(deployment["pusher"]["username"], "admin", "{new}");
            assert_eq!(deployment["git_ref"], "v1", "{new}");
            assert!(deployment["links"]["output"].is_string(), "{new}");
        } else {
            assert_eq!(new["data"]["deployment"], id.as_str(), "{new}");
        }
        live.finish("success").await;
        let events = subscriber::events_until_status(&mut ws, &id, "success").await;
        assert!(
            events.iter().all(|e| e["type"] != "new"),
            "one new per deployment: {events:?}"
        );
    }
    // Anything but the two forms is refused at start, naming the key.
    let root = tempfile::tempdir().expect("tempdir");
    let config = root.path().join("deployd.toml");
    std::fs::write(&config, "[stream]\nnew_event = \"full\"\n").expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deployd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(root.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run deployd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("new_event"), "{stderr}");
}
