//! Authentication, served in process: the token exchange, every accepted credential form,
//! refused credentials (garbage, tampered, revoked), users, tokens, and the generated admin
//! token (by the real binary, whose log is read).
mod common;

use base64::Engine;
use serde_json::{json, Value};

use common::{b64, Options, Server, TestServer};

/// Decodes one base64url (no padding) JWT part as JSON.
fn jwt_part(jwt: &str, index: usize) -> Value {
    let part = jwt.split('.').nth(index).expect("jwt part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url part");
    serde_json::from_slice(&bytes).expect("json part")
}

async fn exchange(server: &TestServer, token: &str) -> (u16, Value) {
    server
        .client(token)
        .post("/v1/tokens/exchange", json!({}))
        .await
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn assert_unauthorized(status: u16, body: &Value) {
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string(), "401 body must be JSON: {body}");
}

#[tokio::test]
async fn token_exchange_gives_an_hs256_jwt_with_a_numeric_exp_one_hour_ahead() {
    let server = TestServer::start().await;
    let (status, body) = exchange(&server, &server.admin_token).await;
    assert_eq!(status, 200, "{body}");
    let jwt = body["token"].as_str().expect("token string");
    assert_eq!(jwt.split('.').count(), 3, "{jwt}");
    assert_eq!(jwt_part(jwt, 0)["alg"], "HS256");
    let exp = jwt_part(jwt, 1)["exp"].as_i64().expect("numeric exp");
    assert!(
        (exp - (now() + 3600)).abs() <= 60,
        "exp {exp}, now {}",
        now()
    );
    assert_eq!(body.as_object().expect("object").len(), 1, "{body}");
}

#[tokio::test]
async fn every_credential_form_is_accepted() {
    let server = TestServer::start().await;
    let token = server.create_user("alice").await;
    let (_, body) = exchange(&server, &token).await;
    let jwt = body["token"].as_str().expect("jwt").to_string();
    let base = server.anonymous();
    for header in [
        format!("Bearer {jwt}"),
        format!("Basic {}", b64(&format!(":{token}"))),
        format!("Bearer {token}"),
    ] {
        let (status, body) = base.with_auth(&header).get("/v1/users/self").await;
        assert_eq!(status, 200, "{header}: {body}");
        assert_eq!(body["user"]["username"], "alice");
    }
}

#[tokio::test]
async fn garbage_tampered_and_missing_credentials_are_a_json_401() {
    let server = TestServer::start().await;
    let (_, body) = exchange(&server, &server.admin_token).await;
    let jwt = body["token"].as_str().expect("jwt").to_string();
    // Tamper with the payload: same header and signature, another `exp`.
    let mut claims = jwt_part(&jwt, 1);
    claims["exp"] = json!(claims["exp"].as_i64().expect("exp") + 100_000);
    let parts: Vec<&str> = jwt.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let mut bad_signature = jwt.clone();
    bad_signature.pop();
    bad_signature.push(if jwt.ends_with('A') { 'B' } else { 'A' });
    let base = server.anonymous();
    for header in [
        "Bearer garbage".to_string(),
        "Bearer a.b.c".to_string(),
        format!("Bearer {tampered}"),
        format!("Bearer {bad_signature}"),
        format!("Basic {}", b64(":not-a-token")),
        "Basic !!!".to_string(),
        "Digest whatever".to_string(),
    ] {
        let (status, body) = base.with_auth(&header).get("/v1/users/self").await;
        assert_unauthorized(status, &body);
    }
    let (status, body) = base.get("/v1/apps").await;
    assert_unauthorized(status, &body);
    let (status, body) = exchange(&server, "not-a-token").await;
    assert_unauthorized(status, &body);
}

#[tokio::test]
async fn users_self_and_regions_have_the_shapes_clients_read() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let (status, body) = admin.get("/v1/users/self").await;
    assert_eq!(status, 200, "{body}");
    let user = &body["user"];
    for field in ["id", "username", "email", "fullname"] {
        assert!(user[field].is_string(), "{field}: {body}");
    }
    assert!(user["flags"].is_object(), "{body}");
    assert_eq!(user["username"], "admin");

    let (status, body) = admin.get("/v1/regions").await;
    assert_eq!(status, 200, "{body}");
    let regions = body["regions"].as_array().expect("regions array");
    assert_eq!(regions.len(), 1, "{body}");
    let region = &regions[0];
    for field in [
        "name",
        "display_name",
        "api",
        "database_api",
        "ssh",
        "dashboard",
    ] {
        assert!(region[field].is_string(), "{field}: {body}");
    }
    assert_eq!(region["api"], server.url.as_str());
    assert_eq!(region["default"], true);
}

#[tokio::test]
async fn only_an_admin_creates_users_and_the_token_is_shown_once() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let (status, body) = admin
        .post(
            "/v1/users",
            json!({"user": {"username": "bob", "email": "bob@example.com"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["username"], "bob");
    assert_eq!(body["user"]["email"], "bob@example.com");
    assert!(body["user"]["id"].is_string());
    let token = body["token"]["token"].as_str().expect("token").to_string();
    assert!(body["token"]["id"].is_string());

    let bob = server.client(&token);
    let (status, me) = bob.get("/v1/users/self").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["id"], body["user"]["id"]);

    // The token list never shows a secret again.
    let (status, list) = bob.get("/v1/tokens").await;
    assert_eq!(status, 200, "{list}");
    assert!(!list.to_string().contains(&token), "{list}");

    // Non-admins may not create users.
    let (status, body) = bob
        .post(
            "/v1/users",
            json!({"user": {"username": "carol", "email": "carol@example.com"}}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].is_string(), "{body}");
    // The refused request stored nothing: carol's name and email are free.
    let (status, body) = admin
        .post(
            "/v1/users",
            json!({"user": {"username": "carol", "email": "carol@example.com"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn duplicate_and_invalid_users_are_a_422_naming_the_field_and_store_nothing() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_user("dave").await;
    let cases = [
        (
            json!({"user": {"username": "dave", "email": "other@example.com"}}),
            "username",
        ),
        (
            json!({"user": {"username": "dave2", "email": "dave@example.com"}}),
            "email",
        ),
        (
            json!({"user": {"username": "eve", "email": "not-an-email"}}),
            "email",
        ),
        (
            json!({"user": {"username": "Bad Name", "email": "x@example.com"}}),
            "username",
        ),
        (
            json!({"user": {"username": 12, "email": "x@example.com"}}),
            "username",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = admin.post("/v1/users", body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(
            answer["errors"][field].is_array(),
            "{body}: expected errors.{field}: {answer}"
        );
    }
    // None of them exists: the usernames are still free.
    for name in ["dave2", "eve"] {
        let (status, body) = admin
            .post(
                "/v1/users",
                json!({"user": {"username": name, "email": format!("{name}@example.org")}}),
            )
            .await;
        assert_eq!(status, 201, "{name}: {body}");
    }
}

#[tokio::test]
async fn tokens_are_created_listed_without_secrets_and_revoked() {
    let server = TestServer::start().await;
    let first = server.create_user("frank").await;
    let frank = server.client(&first);
    let (status, body) = frank
        .post("/v1/tokens", json!({"token": {"name": "ci"}}))
        .await;
    assert_eq!(status, 201, "{body}");
    let second = body["token"]["token"].as_str().expect("secret").to_string();
    let second_id = body["token"]["id"].as_str().expect("id").to_string();
    assert_eq!(body["token"]["name"], "ci");

    let (status, list) = frank.get("/v1/tokens").await;
    assert_eq!(status, 200, "{list}");
    let tokens = list["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 2, "{list}");
    for token in tokens {
        assert!(token["id"].is_string() && token["created_at"].is_string());
        assert!(token.get("token").is_none(), "secret listed: {list}");
    }
    let text = list.to_string();
    assert!(!text.contains(&first) && !text.contains(&second), "{list}");

    // A JWT made from the second token, then revoke it: both are refused.
    let (_, body) = exchange(&server, &second).await;
    let jwt = body["token"].as_str().expect("jwt").to_string();
    let (status, _) = server
        .anonymous()
        .with_auth(&format!("Bearer {jwt}"))
        .get("/v1/users/self")
        .await;
    assert_eq!(status, 200);

    let (status, body) = frank.delete(&format!("/v1/tokens/{second_id}")).await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let (status, body) = server.client(&second).get("/v1/users/self").await;
    assert_unauthorized(status, &body);
    let (status, body) = server
        .anonymous()
        .with_auth(&format!("Bearer {jwt}"))
        .get("/v1/users/self")
        .await;
    assert_unauthorized(status, &body);
    let (status, body) = exchange(&server, &second).await;
    assert_unauthorized(status, &body);

    // The first one still works; revoking an unknown or already revoked token is a JSON 404.
    let (status, _) = frank.get("/v1/users/self").await;
    assert_eq!(status, 200);
    let (status, body) = frank.delete(&format!("/v1/tokens/{second_id}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["resource"], "token");
    let (status, body) = frank.delete("/v1/tokens/not-a-uuid").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_user_cannot_revoke_another_users_token() {
    let server = TestServer::start().await;
    let grace = server.client(&server.create_user("grace").await);
    let (_, tokens) = server.admin().get("/v1/tokens").await;
    let admin_token_id = tokens["tokens"][0]["id"].as_str().expect("id").to_string();
    let (status, body) = grace.delete(&format!("/v1/tokens/{admin_token_id}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = server.admin().get("/v1/users/self").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_generated_admin_token_is_written_0600_works_and_is_never_logged() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start_with(Options {
        generated_admin_token: true,
        ..Options::default()
    });
    let path = server.data.join("admin-token");
    let meta = std::fs::metadata(&path).expect("admin-token exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&path)
        .expect("read")
        .trim()
        .to_string();
    assert!(token.len() >= 22, "token too short: {token:?}");
    let (status, body) = server.client(&token).get("/v1/users/self").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["username"], "admin");
    let log = server.log_containing("admin-token");
    assert!(log.contains("admin-token"), "the path is logged: {log}");
    assert!(
        !log.contains(&token),
        "the token leaked into the log: {log}"
    );
}

#[tokio::test]
async fn an_unsigned_jwt_is_refused() {
    let server = TestServer::start().await;
    let (_, body) = exchange(&server, &server.admin_token).await;
    let jwt = body["token"].as_str().expect("jwt");
    let claims = jwt.split('.').nth(1).expect("claims");
    for alg in ["none", "None", "HS512"] {
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        for signature in ["", jwt.split('.').nth(2).expect("sig")] {
            let forged = format!("{header}.{claims}.{signature}");
            let (status, body) = server
                .anonymous()
                .with_auth(&format!("Bearer {forged}"))
                .get("/v1/users/self")
                .await;
            assert_unauthorized(status, &body);
        }
    }
}

#[tokio::test]
async fn api_tokens_are_stored_only_as_hashes() {
    let mut server = TestServer::start().await;
    let token = server.create_user("hashed").await;
    let (_, body) = server
        .client(&token)
        .post("/v1/tokens", json!({"token": {"name": "more"}}))
        .await;
    let second = body["token"]["token"].as_str().expect("token").to_string();
    server.stop().await;
    let mut stack = vec![server.data.clone()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).expect("read");
            for secret in [token.as_str(), second.as_str(), common::ADMIN_TOKEN] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds a token in clear",
                    path.display()
                );
            }
        }
    }
    assert!(files > 0);
}
