//! Scoped API tokens through the real binary: `POST /v1/tokens` with `scope` (`read`,
//! `deploy`, `full`) and `apps`; every route of the route table refuses a token narrower than
//! its row's scope with a JSON 403; apps outside a token's list answer 404 as if they did not
//! exist; tokens only create same-or-narrower tokens; exchanged JWTs carry the scope.
mod common;
#[path = "common/subscriber.rs"]
mod subscriber;

use base64::Engine as _;
use common::{b64, push, Client, Server};
use deployd::api::routes::{Answer, Auth, ROUTES};
use deployd::model::Scope;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Creates a token with `token` fields; asserts 201 and returns the answer's `token` object.
async fn create_token(client: &Client, fields: Value) -> Value {
    let (status, body) = client.post("/v1/tokens", json!({ "token": fields })).await;
    assert_eq!(status, 201, "{fields}: {body}");
    body["token"].clone()
}

fn secret(token: &Value) -> String {
    token["token"].as_str().expect("secret").to_string()
}

/// `path` with `{app}` set to `app` and every other parameter to a fresh id.
fn fill(path: &str, app: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        match &rest[start + 1..end] {
            "app" => out.push_str(app),
            _ => out.push_str(&uuid::Uuid::now_v7().to_string()),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Calls `method path` with `token` (Basic, as `curl -u` does) and a `{}` body; `(status,
/// body)`. A WebSocket route is upgraded for real: `(101, Null)` when it was accepted.
async fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    answer: Answer,
) -> (u16, Value) {
    let authorization = format!("Basic {}", b64(&format!(":{token}")));
    if answer == Answer::WebSocket {
        let url = format!("{}{path}", server.url.replacen("http", "ws", 1));
        let mut request = url.into_client_request().expect("request");
        request
            .headers_mut()
            .insert("Authorization", authorization.parse().expect("header"));
        return match tokio_tungstenite::connect_async(request).await {
            Ok(_) => (101, Value::Null),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                (resp.status().as_u16(), body)
            }
            Err(err) => panic!("{path}: {err}"),
        };
    }
    let client = server.client(token).with_auth(&authorization);
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method.clone(), path);
    if method != reqwest::Method::GET {
        request = request
            .header("Content-Type", "application/json")
            .body("{}");
    }
    let resp = request.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    // A tar (the backup) is no JSON when it succeeds; its refusals are.
    let body = if text.is_empty() || (answer == Answer::Tar && status == 200) {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: non-JSON {status}: {text}"))
    };
    (status, body)
}

#[tokio::test]
async fn every_route_refuses_a_token_narrower_than_its_row_with_a_json_403_and_admits_the_rest() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "shop").await;
    let read = secret(&create_token(&admin, json!({"name": "r", "scope": "read"})).await);
    let deploy = secret(
        &create_token(
            &admin,
            json!({"name": "d", "scope": "deploy", "apps": ["shop"]}),
        )
        .await,
    );
    let mut checked = 0;
    for route in ROUTES.iter().filter(|r| r.auth == Auth::Caller) {
        let method = route.method.as_str();
        for (token, scope) in [(&read, Scope::Read), (&deploy, Scope::Deploy)] {
            let path = fill(route.path, "shop");
            let (status, body) = call(&server, method, &path, token, route.answer).await;
            if route.scope > scope {
                assert_eq!(status, 403, "{scope:?} token, {method} {path}: {body}");
                assert!(body["error"].is_string(), "{method} {path}: {body}");
            } else {
                assert!(
                    status != 403 && status != 401,
                    "{scope:?} token refused by {method} {path}: {status} {body}"
                );
            }
            checked += 1;
        }
        // A full token is refused nowhere (on an app that does not exist, so nothing changes).
        let path = fill(route.path, "no-such-app");
        let (status, body) = call(&server, method, &path, &server.admin_token, route.answer).await;
        assert!(
            status != 403 && status != 401,
            "full token refused by {method} {path}: {status} {body}"
        );
    }
    assert!(
        checked >= 2 * 20,
        "only {checked} calls: the table lost its rows?"
    );
    // What the refused calls would have changed is unchanged.
    let (_, apps) = admin.get("/v1/apps").await;
    let names: Vec<&str> = apps["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["shop"]);
    let (_, collaborators) = admin.get("/v1/apps/shop/collaborators").await;
    assert_eq!(collaborators, json!({"collaborators": []}));
    // The read and deploy tokens still work (no refused call revoked anything).
    for token in [&read, &deploy] {
        let (status, body) = server.client(token).get("/v1/apps/shop").await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn a_read_token_sees_everything_its_user_sees_and_changes_nothing() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "shop").await;
    let id = push::start(&server.url, "shop", &server.admin_token, "v1")
        .await
        .id();
    let read_secret =
        secret(&create_token(&admin, json!({"name": "dashboard", "scope": "read"})).await);
    let read = server.client(&read_secret);
    let (status, body) = read.get("/v1/apps").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["apps"][0]["name"], "shop");
    let (status, body) = read.get(&format!("/v1/apps/shop/deployments/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let refusals = [
        read.post("/v1/apps", json!({"app": {"name": "other"}}))
            .await,
        read.post(
            "/v1/apps/shop/deployments",
            json!({"deployment": {"source_url": "https://example.com/a.tar.gz"}}),
        )
        .await,
        read.delete("/v1/apps/shop").await,
        read.post(
            "/v1/tokens",
            json!({"token": {"name": "more", "scope": "read"}}),
        )
        .await,
        read.post("/v1/sources", json!({})).await,
    ];
    for (status, body) in refusals {
        assert_eq!(status, 403, "{body}");
        assert!(
            body["error"].as_str().expect("error").contains("read"),
            "{body}"
        );
    }
    let (_, apps) = admin.get("/v1/apps").await;
    assert_eq!(apps["apps"].as_array().expect("apps").len(), 1);
    let (_, deployments) = admin.get("/v1/apps/shop/deployments").await;
    assert_eq!(
        deployments["deployments"].as_array().expect("list").len(),
        1
    );
    // A read token follows the live stream (the replay shows the running deployment).
    let (_, app) = read.get("/v1/apps/shop").await;
    let mut ws = subscriber::subscribe(&app["app"], &read_secret, json!({})).await;
    let event = subscriber::next_event(&mut ws).await;
    assert_eq!(event["id"], id.as_str(), "{event}");
}

#[tokio::test]
async fn a_deploy_token_deploys_its_apps_only_and_other_apps_answer_404() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "shop").await;
    let blog = server.create_app(&admin, "blog").await;
    let token = create_token(
        &admin,
        json!({"name": "ci", "scope": "deploy", "apps": ["shop"]}),
    )
    .await;
    assert_eq!(token["scope"], "deploy");
    let shop_id = {
        let (_, app) = admin.get("/v1/apps/shop").await;
        app["app"]["id"].clone()
    };
    assert_eq!(token["apps"], json!([shop_id]));
    let ci_token = secret(&token);
    let ci = server.client(&ci_token);
    let (_, listed) = admin.get("/v1/tokens").await;
    let shown = listed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["id"] == token["id"])
        .expect("listed")
        .clone();
    assert_eq!(shown["scope"], "deploy", "{shown}");
    assert_eq!(shown["apps"], json!([shop_id]), "{shown}");
    assert!(shown["token"].is_null(), "never the secret: {shown}");

    let mut pusher = push::start(&server.url, "shop", &ci_token, "v1").await;
    pusher.finish("success").await;
    let (status, body) = ci.get("/v1/apps").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["apps"].as_array().expect("apps").len(), 1, "{body}");
    assert_eq!(body["apps"][0]["name"], "shop");
    for path in ["/v1/apps/blog", "/v1/apps/blog/deployments"] {
        let (status, body) = ci.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["resource"], "app");
    }
    let by_id = format!("/v1/apps/{}", blog["id"].as_str().expect("id"));
    assert_eq!(ci.get(&by_id).await.0, 404, "by id too");
    let (status, body) = ci
        .post(
            "/v1/apps/blog/deployments",
            json!({"deployment": {"source_url": "https://example.com/a.tar.gz"}}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        push::connect(&server.url, "blog", &ci_token).await.err(),
        Some(404)
    );
    let mut ws = subscriber::subscribe(&blog, &ci_token, json!({})).await;
    let (code, reason) = subscriber::expect_close(&mut ws).await;
    assert_ne!(code, 1000, "{code} {reason}");
    // Managing is not deploying.
    let (status, body) = ci
        .post(
            "/v1/apps/shop/rename",
            json!({"current_name": "shop", "new_name": "ci-shop"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = ci.delete("/v1/apps/shop").await;
    assert_eq!(status, 403, "{body}");
    let (_, deployments) = admin.get("/v1/apps/blog/deployments").await;
    assert_eq!(deployments["deployments"], json!([]));

    // Revoking it ends it and its grant with it (a restart reads the same).
    let server = server.restart();
    let ci = server.client(&ci_token);
    assert_eq!(ci.get("/v1/apps/blog").await.0, 404);
    let token_id = token["id"].as_str().expect("id");
    let (status, _) = server
        .admin()
        .delete(&format!("/v1/tokens/{token_id}"))
        .await;
    assert_eq!(status, 204);
    assert_eq!(ci.get("/v1/apps/shop").await.0, 401);
}

#[tokio::test]
async fn tokens_create_only_same_or_narrower_tokens_and_bad_requests_create_nothing() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "shop").await;
    server.create_app(&admin, "blog").await;
    let alice = server.create_user("alice").await;
    server.create_app(&server.client(&alice), "alices").await;
    let (_, before) = admin.get("/v1/tokens").await;

    for (fields, field) in [
        (json!({"name": "ci", "scope": "deploy"}), "apps"),
        (json!({"name": "ci", "scope": "admin"}), "scope"),
        (json!({"name": "ci", "scope": 5}), "scope"),
        (json!({"name": "ci", "scope": "read", "apps": []}), "apps"),
        (
            json!({"name": "ci", "scope": "read", "apps": "shop"}),
            "apps",
        ),
        (json!({"name": "ci", "scope": "read", "apps": [7]}), "apps"),
        (
            json!({"name": "ci", "scope": "deploy", "apps": ["nope"]}),
            "apps",
        ),
        (
            json!({"name": "ci", "scope": "deploy", "apps": ["alices"]}),
            "apps",
        ),
    ] {
        let (status, body) = admin.post("/v1/tokens", json!({ "token": fields })).await;
        assert_eq!(status, 422, "{fields}: {body}");
        let errors = body["errors"].as_object().expect("errors");
        // A wrong item type names the item (`apps[0]`).
        assert!(
            errors.keys().any(|k| k.starts_with(field)),
            "{fields}: {body}"
        );
    }
    let (_, after) = admin.get("/v1/tokens").await;
    assert_eq!(before, after, "refused requests created no token");

    // The default is full, as before scopes: such a token creates apps.
    let full = secret(&create_token(&admin, json!({"name": "plain"})).await);
    let (status, body) = server
        .client(&full)
        .post("/v1/apps", json!({"app": {"name": "made-by-plain"}}))
        .await;
    assert_eq!(status, 201, "{body}");

    let deploy = server.client(&secret(
        &create_token(&admin, json!({"scope": "deploy", "apps": ["shop", "blog"]})).await,
    ));
    // Narrower: fewer apps, a lesser scope, or the same (apps inherited when not named).
    let narrower = create_token(&deploy, json!({"scope": "read", "apps": ["shop"]})).await;
    assert_eq!(narrower["scope"], "read");
    let same = create_token(&deploy, json!({})).await;
    assert_eq!(same["scope"], "deploy");
    assert_eq!(same["apps"].as_array().expect("apps").len(), 2);
    // Wider: refused.
    for fields in [
        json!({"scope": "full"}),
        json!({"scope": "full", "apps": ["shop"]}),
    ] {
        let (status, body) = deploy.post("/v1/tokens", json!({ "token": fields })).await;
        assert_eq!(status, 403, "{fields}: {body}");
    }
    let (status, body) = deploy
        .post(
            "/v1/tokens",
            json!({"token": {"scope": "deploy", "apps": ["made-by-plain"]}}),
        )
        .await;
    assert_eq!(status, 422, "an app outside its own list: {body}");
    // A limited token creates neither apps nor users.
    let limited_full = server.client(&secret(
        &create_token(&admin, json!({"scope": "full", "apps": ["shop"]})).await,
    ));
    for (path, body) in [
        ("/v1/apps", json!({"app": {"name": "sneaky"}})),
        (
            "/v1/users",
            json!({"user": {"username": "sneaky", "email": "s@x.y"}}),
        ),
    ] {
        let (status, answer) = limited_full.post(path, body).await;
        assert_eq!(status, 403, "{path}: {answer}");
    }
}

#[tokio::test]
async fn a_jwt_exchanged_from_a_scoped_token_carries_its_scope_and_acts_with_it() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "shop").await;
    let read = secret(&create_token(&admin, json!({"scope": "read", "apps": ["shop"]})).await);
    let exchanger = server
        .anonymous()
        .with_auth(&format!("Basic {}", b64(&format!(":{read}"))));
    let (status, body) = exchanger.post("/v1/tokens/exchange", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let jwt = body["token"].as_str().expect("jwt").to_string();
    let payload = jwt.split('.').nth(1).expect("payload");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("claims");
    assert_eq!(claims["scope"], "read", "{claims}");
    assert_eq!(
        claims["apps"].as_array().expect("apps").len(),
        1,
        "{claims}"
    );
    assert!(claims["exp"].is_i64(), "{claims}");

    let bearer = server.anonymous().with_auth(&format!("Bearer {jwt}"));
    let (status, body) = bearer.get("/v1/apps/shop").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bearer
        .post("/v1/apps", json!({"app": {"name": "other"}}))
        .await;
    assert_eq!(status, 403, "{body}");
    // A full token's JWT says so.
    let (_, body) = server
        .admin()
        .with_auth(&format!(
            "Basic {}",
            b64(&format!(":{}", server.admin_token))
        ))
        .post("/v1/tokens/exchange", json!({}))
        .await;
    let payload = body["token"]
        .as_str()
        .expect("jwt")
        .split('.')
        .nth(1)
        .expect("payload")
        .to_string();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("claims");
    assert_eq!(claims["scope"], "full", "{claims}");
}
