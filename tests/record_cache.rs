//! The record cache (`store::cache`) against the real binary: callers, tokens, apps and
//! collaborations are served from memory, and every change the writer commits is visible to
//! the very next request, with readers busy on the same records while it happens.
//!
//! Each test first reads the records enough times that they are cached, then changes them and
//! checks the request right after the change's answer.
mod common;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use common::{Client, Server};

/// Requests that warm the cache before a change (the first one fills it; the rest hit it).
const WARM_UP_REQUESTS: usize = 20;

/// Readers that keep requesting the changed record while it changes, so that fills race the
/// writer's invalidation.
const BUSY_READERS: usize = 4;

async fn warm(client: &Client, path: &str, expected: u16) {
    for _ in 0..WARM_UP_REQUESTS {
        let (status, body) = client.get(path).await;
        assert_eq!(status, expected, "{path}: {body}");
    }
}

/// Readers requesting `path` with `client` until the returned set is dropped (their answers
/// are not checked: only that the server stays consistent after the change).
fn busy_readers(client: &Client, path: &str) -> JoinSet<()> {
    let mut readers = JoinSet::new();
    for _ in 0..BUSY_READERS {
        let (client, path) = (client.clone(), path.to_string());
        readers.spawn(async move {
            loop {
                let _ = client.get(&path).await;
            }
        });
    }
    readers
}

async fn exchange(client: &Client) -> String {
    let (status, body) = client.post("/v1/tokens/exchange", json!({})).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("jwt").to_string()
}

fn assert_unauthorized(status: u16, body: &Value) {
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn a_revoked_token_and_its_jwt_are_refused_by_the_very_next_request() {
    let server = Server::start();
    let first = server.create_user("rita").await;
    let rita = server.client(&first);
    let (status, body) = rita
        .post("/v1/tokens", json!({"token": {"name": "ci"}}))
        .await;
    assert_eq!(status, 201, "{body}");
    let second = body["token"]["token"].as_str().expect("secret").to_string();
    let second_id = body["token"]["id"].as_str().expect("id").to_string();
    let by_token = server.client(&second);
    let by_jwt = server
        .anonymous()
        .with_auth(&format!("Bearer {}", exchange(&by_token).await));
    warm(&by_token, "/v1/users/self", 200).await;
    warm(&by_jwt, "/v1/users/self", 200).await;

    let readers = busy_readers(&by_jwt, "/v1/users/self");
    let (status, body) = rita.delete(&format!("/v1/tokens/{second_id}")).await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let (status, body) = by_jwt.get("/v1/users/self").await;
    assert_unauthorized(status, &body);
    let (status, body) = by_token.get("/v1/users/self").await;
    assert_unauthorized(status, &body);
    drop(readers);

    // And it stays refused (no reader put the revoked token back), while the other works.
    for _ in 0..WARM_UP_REQUESTS {
        let (status, body) = by_jwt.get("/v1/users/self").await;
        assert_unauthorized(status, &body);
        let (status, body) = by_token.get("/v1/users/self").await;
        assert_unauthorized(status, &body);
    }
    assert_eq!(rita.get("/v1/users/self").await.0, 200);
}

#[tokio::test]
async fn a_removed_collaborator_loses_the_app_on_the_very_next_request() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "shared").await;
    let token = server.create_user("ivy").await;
    let ivy = server.client(&token);
    let ivy_jwt = server
        .anonymous()
        .with_auth(&format!("Bearer {}", exchange(&ivy).await));
    // Refused while not a collaborator (an absence is cached too)…
    warm(&ivy, "/v1/apps/shared", 404).await;
    let (status, body) = admin
        .post(
            "/v1/apps/shared/collaborators",
            json!({"collaborator": {"email": "ivy@example.com"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let collaboration = body["collaborator"]["id"].as_str().expect("id").to_string();
    // …and seen by the very next request once added.
    assert_eq!(ivy.get("/v1/apps/shared").await.0, 200);
    warm(&ivy_jwt, "/v1/apps/shared/deployments", 200).await;

    let readers = busy_readers(&ivy_jwt, "/v1/apps/shared");
    let (status, body) = admin
        .delete(&format!("/v1/apps/shared/collaborators/{collaboration}"))
        .await;
    assert!(status == 204 || status == 200, "{status} {body}");
    for path in ["/v1/apps/shared", "/v1/apps/shared/deployments"] {
        let (status, body) = ivy_jwt.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(ivy.get(path).await.0, 404, "{path}");
    }
    drop(readers);
    for _ in 0..WARM_UP_REQUESTS {
        assert_eq!(ivy_jwt.get("/v1/apps/shared").await.0, 404);
    }
    assert_eq!(admin.get("/v1/apps/shared").await.0, 200);
}

#[tokio::test]
async fn a_collaborator_made_limited_may_not_manage_from_the_very_next_request() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "shop").await;
    let token = server.create_user("bob").await;
    let bob = server.client(&token);
    let (status, body) = admin
        .post(
            "/v1/apps/shop/collaborators",
            json!({"collaborator": {"email": "bob@example.com"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let collaboration = body["collaborator"]["id"].as_str().expect("id").to_string();
    warm(&bob, "/v1/apps/shop", 200).await;

    let response = admin
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/apps/shop/collaborators/{collaboration}"),
        )
        .header("Content-Type", "application/json")
        .body(json!({"collaborator": {"is_limited": true}}).to_string())
        .send()
        .await
        .expect("patch");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    let (status, body) = bob
        .post(
            "/v1/apps/shop/rename",
            json!({"current_name": "shop", "new_name": "bobs-shop"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(admin.get("/v1/apps/shop").await.0, 200, "nothing renamed");
}

#[tokio::test]
async fn a_renamed_app_answers_under_its_new_name_only_from_the_very_next_request() {
    let server = Server::start();
    let admin = server.admin();
    let created = server.create_app(&admin, "shop").await;
    warm(&admin, "/v1/apps/shop", 200).await;
    warm(&admin, "/v1/apps/store", 404).await;
    let by_id = format!("/v1/apps/{}", created["id"].as_str().expect("id"));
    warm(&admin, &by_id, 200).await;

    let readers = busy_readers(&admin, "/v1/apps/shop");
    let (status, body) = admin
        .post(
            "/v1/apps/shop/rename",
            json!({"current_name": "shop", "new_name": "store"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin.get("/v1/apps/shop").await;
    assert_eq!(status, 404, "the old name: {body}");
    let (status, body) = admin.get("/v1/apps/store").await;
    assert_eq!(status, 200, "the new name: {body}");
    assert_eq!(body["app"]["id"], created["id"]);
    let (_, body) = admin.get(&by_id).await;
    assert_eq!(
        body["app"]["name"], "store",
        "by id, the new record: {body}"
    );
    drop(readers);
    for _ in 0..WARM_UP_REQUESTS {
        assert_eq!(admin.get("/v1/apps/shop").await.0, 404);
    }
}

#[tokio::test]
async fn a_deleted_app_answers_404_from_the_very_next_request_and_its_name_is_free() {
    let server = Server::start();
    let admin = server.admin();
    let created = server.create_app(&admin, "doomed").await;
    warm(&admin, "/v1/apps/doomed", 200).await;
    warm(&admin, "/v1/apps/doomed/deployments", 200).await;

    let readers = busy_readers(&admin, "/v1/apps/doomed");
    let (status, body) = admin.delete("/v1/apps/doomed").await;
    assert!(status == 204 || status == 200, "{status} {body}");
    for path in ["/v1/apps/doomed", "/v1/apps/doomed/deployments"] {
        let (status, body) = admin.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let by_id = format!("/v1/apps/{}", created["id"].as_str().expect("id"));
    assert_eq!(admin.get(&by_id).await.0, 404);
    drop(readers);

    // The name answers with the new app at once, never the deleted one.
    let again = server.create_app(&admin, "doomed").await;
    let (status, body) = admin.get("/v1/apps/doomed").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app"]["id"], again["id"]);
    assert_ne!(again["id"], created["id"]);
}
