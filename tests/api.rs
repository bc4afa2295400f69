//! The REST API, served in process (`common::TestServer`): apps, collaborators, the
//! 404-for-strangers rule, the deployments read API, and bad input (each bad request changes
//! nothing stored).
mod common;
#[path = "common/deploy.rs"]
mod deploy;

use serde_json::{json, Value};

use common::{Client, TestServer};
use deploy::{deploy, get_deployment};

fn assert_rfc3339(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"));
}

/// Everything an observer can read about the stored state of `apps` (as `client` sees it).
async fn snapshot(client: &Client, apps: &[&str]) -> Value {
    let mut out = vec![
        client.get("/v1/apps").await.1,
        client.get("/v1/tokens").await.1,
    ];
    for app in apps {
        out.push(client.get(&format!("/v1/apps/{app}")).await.1);
        out.push(client.get(&format!("/v1/apps/{app}/deployments")).await.1);
        out.push(client.get(&format!("/v1/apps/{app}/collaborators")).await.1);
    }
    Value::Array(out)
}

#[tokio::test]
async fn creating_an_app_answers_201_with_the_compat_shape() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let (status, body) = admin
        .post(
            "/v1/apps",
            json!({"app": {"name": "shape-app", "git_source": "https://example.com/repo"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body.as_object().expect("object").len(),
        1,
        "only `app` at the root"
    );
    let app = &body["app"];
    assert!(app["id"].is_string());
    assert_eq!(app["name"], "shape-app");
    assert_eq!(app["git_source"], "https://example.com/repo");
    assert_rfc3339(&app["created_at"]);
    assert_rfc3339(&app["updated_at"]);
    assert!(app["status"].is_string());
    let (_, me) = admin.get("/v1/users/self").await;
    assert_eq!(app["owner"]["id"], me["user"]["id"]);
    assert_eq!(app["owner"]["username"], "admin");
    assert!(app["owner"]["email"].is_string());
    for field in ["last_deployed_at", "last_deployed_by", "last_deployment_id"] {
        assert!(app.get(field).is_some(), "{field} missing: {app}");
    }
    assert_eq!(
        app["links"]["deployments_stream"],
        format!("ws://{}/apps/shape-app", server.addr)
    );
}

#[tokio::test]
async fn bad_app_names_are_a_422_on_name_and_duplicates_are_refused() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let too_long = "a".repeat(49);
    for name in [
        "ab",
        "Upper-case",
        "under_score",
        "sp ace",
        "dot.ted",
        "",
        too_long.as_str(),
    ] {
        let (status, body) = admin.post("/v1/apps", json!({"app": {"name": name}})).await;
        assert_eq!(status, 422, "{name:?}: {body}");
        assert!(body["errors"]["name"].is_array(), "{name:?}: {body}");
    }
    let (status, body) = admin.post("/v1/apps", json!({"app": {}})).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"]["name"].is_array(), "{body}");
    let max = "a".repeat(48);
    for name in ["abc", "0-9", max.as_str()] {
        let (status, body) = admin.post("/v1/apps", json!({"app": {"name": name}})).await;
        assert_eq!(status, 201, "{name:?}: {body}");
    }
    let (status, body) = admin
        .post("/v1/apps", json!({"app": {"name": "abc"}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"]["name"].is_array(), "{body}");
    // Another user cannot take the name either.
    let other = server.client(&server.create_user("other").await);
    let (status, body) = other
        .post("/v1/apps", json!({"app": {"name": "abc"}}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (_, list) = admin.get("/v1/apps").await;
    assert_eq!(list["apps"].as_array().expect("apps").len(), 3, "{list}");
}

#[tokio::test]
async fn apps_are_listed_and_found_by_name_or_id() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "first-app").await;
    server.create_app(&admin, "second-app").await;
    let (status, body) = admin.get("/v1/apps").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_object().expect("object").len(), 1);
    let mut names: Vec<_> = body["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .map(|a| a["name"].as_str().expect("name").to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["first-app", "second-app"]);
    let id = app["id"].as_str().expect("id");
    for key in ["first-app", id] {
        let (status, body) = admin.get(&format!("/v1/apps/{key}")).await;
        assert_eq!(status, 200, "{key}: {body}");
        assert_eq!(body["app"], app, "{key}");
    }
    // A user sees only its own apps.
    let other = server.client(&server.create_user("nobody").await);
    let (status, body) = other.get("/v1/apps").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"apps": []}));
}

#[tokio::test]
async fn app_tracks_its_last_deployment() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "tracked").await;
    let id = deploy(&server, "tracked", &server.admin_token, &["x"], "success").await;
    let (_, body) = admin.get("/v1/apps/tracked").await;
    assert_eq!(body["app"]["last_deployment_id"], id.as_str(), "{body}");
    assert_rfc3339(&body["app"]["last_deployed_at"]);
    assert!(body["app"]["last_deployed_by"].is_string(), "{body}");
}

#[tokio::test]
async fn deleting_an_app_is_for_its_owner_and_removes_deployments_and_output() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "doomed").await;
    let helper_token = server.create_user("helper").await;
    let helper = server.client(&helper_token);
    let (status, body) = admin
        .post(
            "/v1/apps/doomed/collaborators",
            json!({"collaborator": {"email": "helper@example.com"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = deploy(&server, "doomed", &server.admin_token, &["out"], "success").await;

    let (status, body) = helper.delete("/v1/apps/doomed").await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].is_string());
    let (status, _) = admin.get("/v1/apps/doomed").await;
    assert_eq!(status, 200);

    let (status, body) = admin.delete("/v1/apps/doomed").await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let app_id = app["id"].as_str().expect("id");
    for path in [
        "/v1/apps/doomed".to_string(),
        format!("/v1/apps/{app_id}"),
        format!("/v1/apps/{app_id}/deployments/{id}"),
        format!("/v1/apps/{app_id}/deployments/{id}/output"),
    ] {
        let (status, body) = admin.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["resource"], "app", "{path}: {body}");
    }
    let (status, body) = admin.get(&format!("/v1/deployments/{id}/output")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(admin.get("/v1/apps").await.1, json!({"apps": []}));
    // A new app with the same name starts empty.
    server.create_app(&admin, "doomed").await;
    let (_, body) = admin.get("/v1/apps/doomed/deployments").await;
    assert_eq!(body["deployments"], json!([]), "{body}");
    assert_eq!(body["meta"]["pagination"]["total_count"], 0);
}

#[tokio::test]
async fn collaborators_are_added_listed_and_removed() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "shared").await;
    let token = server.create_user("ivy").await;
    let ivy = server.client(&token);
    assert_eq!(ivy.get("/v1/apps/shared").await.0, 404);

    let (status, body) = admin
        .post(
            "/v1/apps/shared/collaborators",
            json!({"collaborator": {"email": "ivy@example.com"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let collaborator = body["collaborator"].clone();
    assert_eq!(collaborator["email"], "ivy@example.com");
    assert_eq!(collaborator["username"], "ivy");
    assert_eq!(collaborator["app_id"], app["id"]);
    let collaboration_id = collaborator["id"].as_str().expect("id").to_string();

    let (status, body) = admin.get("/v1/apps/shared/collaborators").await;
    assert_eq!(status, 200, "{body}");
    let list = body["collaborators"].as_array().expect("collaborators");
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["id"], collaboration_id.as_str());

    // The collaborator sees, lists and deploys the app but may not add collaborators.
    let (status, body) = ivy.get("/v1/apps/shared").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ivy.get("/v1/apps").await.1["apps"][0]["name"], "shared");
    let id = deploy(&server, "shared", &token, &["by ivy"], "success").await;
    let d = get_deployment(&admin, "shared", &id).await;
    assert_eq!(d["pusher"]["username"], "ivy");
    let (status, body) = ivy
        .post(
            "/v1/apps/shared/collaborators",
            json!({"collaborator": {"email": "admin@localhost"}}),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // Unknown email, missing email, the owner itself: 422 on email, nothing added.
    for collaborator in [
        json!({"email": "nobody@example.com"}),
        json!({}),
        json!({"email": "admin@localhost"}),
    ] {
        let (status, body) = admin
            .post(
                "/v1/apps/shared/collaborators",
                json!({ "collaborator": collaborator }),
            )
            .await;
        assert_eq!(status, 422, "{collaborator}: {body}");
        assert!(body["errors"]["email"].is_array(), "{body}");
    }
    let (_, body) = admin.get("/v1/apps/shared/collaborators").await;
    assert_eq!(body["collaborators"].as_array().expect("list").len(), 1);

    let (status, body) = admin
        .delete(&format!("/v1/apps/shared/collaborators/{collaboration_id}"))
        .await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let (_, body) = admin.get("/v1/apps/shared/collaborators").await;
    assert_eq!(body, json!({"collaborators": []}));
    let (status, body) = ivy.get("/v1/apps/shared").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = admin
        .delete(&format!("/v1/apps/shared/collaborators/{collaboration_id}"))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["resource"], "collaborator");
}

/// Raw request: status and body text, for comparing bodies byte for byte.
async fn raw(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut req = client.request(method, path);
    if let Some(body) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.expect("request");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

#[tokio::test]
async fn strangers_get_the_same_404_as_for_a_missing_app_on_every_app_route() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "private-app").await;
    let id = deploy(
        &server,
        "private-app",
        &server.admin_token,
        &["secret"],
        "success",
    )
    .await;
    let stranger_token = server.create_user("stranger").await;
    let stranger = server.client(&stranger_token);
    let app_id = app["id"].as_str().expect("id").to_string();
    let missing_id = "0190a7e2-0000-7000-8000-000000000000";
    use reqwest::Method;
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "".into(), None),
        (Method::DELETE, "".into(), None),
        (Method::GET, "/deployments".into(), None),
        (Method::GET, format!("/deployments/{id}"), None),
        (Method::GET, format!("/deployments/{id}/output"), None),
        (
            Method::POST,
            "/deployments".into(),
            Some(json!({"deployment": {"source_url": "http://127.0.0.1:1/x.tar.gz"}})),
        ),
        (Method::GET, "/collaborators".into(), None),
        (
            Method::POST,
            "/collaborators".into(),
            Some(json!({"collaborator": {"email": "stranger@example.com"}})),
        ),
        (Method::DELETE, format!("/collaborators/{missing_id}"), None),
        (Method::GET, "/push".into(), None),
    ];
    for (method, suffix, body) in routes {
        let (missing_status, missing_body) = raw(
            &stranger,
            method.clone(),
            &format!("/v1/apps/no-such-app{suffix}"),
            body.clone(),
        )
        .await;
        assert_eq!(
            missing_status, 404,
            "{method} missing{suffix}: {missing_body}"
        );
        for key in ["private-app", app_id.as_str()] {
            let (status, text) = raw(
                &stranger,
                method.clone(),
                &format!("/v1/apps/{key}{suffix}"),
                body.clone(),
            )
            .await;
            assert_eq!(
                (status, &text),
                (missing_status, &missing_body),
                "{method} {key}{suffix}"
            );
        }
    }
    // The output by deployment id, too.
    let (status, body) = stranger.get(&format!("/v1/deployments/{id}/output")).await;
    assert_eq!(status, 404, "{body}");
    // The push endpoint refuses the upgrade with the same 404.
    for key in ["private-app", app_id.as_str(), "no-such-app"] {
        let err = common::push::connect(&server.url, key, &stranger_token)
            .await
            .err();
        assert_eq!(err, Some(404), "{key}");
        let resp = stranger
            .request(Method::GET, &format!("/v1/apps/{key}/push"))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), 404);
        let body: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("json");
        assert_eq!(body, json!({"resource": "app", "error": "not found"}));
    }
    // Nothing was changed by the stranger.
    let (status, body) = admin.get("/v1/apps/private-app").await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = admin.get("/v1/apps/private-app/deployments").await;
    assert_eq!(body["meta"]["pagination"]["total_count"], 1, "{body}");
    let (_, body) = admin.get("/v1/apps/private-app/collaborators").await;
    assert_eq!(body, json!({"collaborators": []}));
}

#[tokio::test]
async fn deployments_are_listed_newest_first_and_shown_with_the_compat_shape() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "read-app").await;
    let first = deploy(
        &server,
        "read-app",
        &server.admin_token,
        &["one"],
        "build-error",
    )
    .await;
    let second = deploy(
        &server,
        "read-app",
        &server.admin_token,
        &["two"],
        "success",
    )
    .await;
    let (status, body) = admin.get("/v1/apps/read-app/deployments").await;
    assert_eq!(status, 200, "{body}");
    let list = body["deployments"].as_array().expect("deployments");
    let ids: Vec<_> = list.iter().map(|d| d["id"].as_str().expect("id")).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    assert_eq!(
        body["meta"]["pagination"],
        json!({"current_page": 1, "prev_page": null, "next_page": null, "total_pages": 1, "total_count": 2})
    );
    let d = get_deployment(&admin, "read-app", &second).await;
    assert_eq!(d, list[0], "list and show agree");
    assert_eq!(d["app_id"], app["id"]);
    assert_eq!(d["status"], "success");
    assert_eq!(d["git_ref"], "ref");
    assert_rfc3339(&d["created_at"]);
    assert_rfc3339(&d["finished_at"]);
    assert!(d["duration"].is_u64() && d["image_size"].is_u64(), "{d}");
    for field in ["id", "username", "email"] {
        assert!(d["pusher"][field].is_string(), "{d}");
    }
    let output = d["links"]["output"].as_str().expect("output link");
    assert!(
        output.starts_with(&format!("{}/v1/", server.url)),
        "{output}"
    );
    for field in [
        "previous_git_ref",
        "image",
        "registry",
        "postdeploy_hook",
        "stack_base_image",
    ] {
        assert!(d.get(field).is_some(), "{field} missing: {d}");
    }
    // The by-id key works for deployments too.
    let app_id = app["id"].as_str().expect("id");
    assert_eq!(
        get_deployment(&admin, app_id, &first).await["status"],
        "build-error"
    );
    // links.output answers the output.
    let (status, content_type, text) = admin.get_text(&output[server.url.len()..]).await;
    assert_eq!((status, text.as_str()), (200, "two\n"), "{content_type}");
}

#[tokio::test]
async fn output_is_plain_text_whatever_accept_says_and_404_json_without_output() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "out-app").await;
    let with = deploy(
        &server,
        "out-app",
        &server.admin_token,
        &["a", "b"],
        "success",
    )
    .await;
    let without = deploy(&server, "out-app", &server.admin_token, &[], "success").await;
    // The harness client sends Accept: application/json.
    let (status, content_type, text) = admin
        .get_text(&format!("/v1/apps/out-app/deployments/{with}/output"))
        .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(text, "a\nb\n");
    let (status, body) = admin
        .get(&format!("/v1/apps/out-app/deployments/{without}/output"))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not found", "{body}");
}

#[tokio::test]
async fn unknown_and_malformed_deployment_ids_are_a_json_404() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "ids-app").await;
    server.create_app(&admin, "other-app").await;
    let other = deploy(&server, "other-app", &server.admin_token, &["x"], "success").await;
    for id in [
        "0190a7e2-0000-7000-8000-000000000000",
        "not-a-uuid",
        "123",
        other.as_str(),
    ] {
        for suffix in ["", "/output"] {
            let path = format!("/v1/apps/ids-app/deployments/{id}{suffix}");
            let (status, body) = admin.get(&path).await;
            assert_eq!(status, 404, "{path}: {body}");
            assert_eq!(
                body,
                json!({"resource": "deployment", "error": "not found"}),
                "{path}"
            );
        }
    }
    let (status, body) = admin.get("/v1/deployments/not-a-uuid/output").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn malformed_json_wrong_types_and_missing_roots_change_nothing() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "stable").await;
    deploy(&server, "stable", &server.admin_token, &["x"], "success").await;
    let before = snapshot(&admin, &["stable"]).await;
    let paths = [
        "/v1/apps",
        "/v1/users",
        "/v1/tokens",
        "/v1/apps/stable/collaborators",
        "/v1/apps/stable/deployments",
    ];
    for path in paths {
        for body in ["{", "{\"app\": }", "nope", "{\"a\":1} trailing", "\u{0}"] {
            let (status, answer) = admin.post_raw(path, body).await;
            assert_eq!(status, 400, "{path} {body:?}: {answer}");
            assert!(answer["error"].is_string(), "{path}: {answer}");
        }
    }
    // Wrong types name the field.
    let cases = [
        ("/v1/apps", json!({"app": {"name": 42}}), "name"),
        (
            "/v1/apps",
            json!({"app": {"name": "okay-name", "git_source": ["x"]}}),
            "git_source",
        ),
        ("/v1/apps", json!({"app": "stable"}), "app"),
        (
            "/v1/users",
            json!({"user": {"username": "zed", "email": true}}),
            "email",
        ),
        ("/v1/tokens", json!({"token": {"name": 5}}), "name"),
        (
            "/v1/apps/stable/collaborators",
            json!({"collaborator": {"email": 1}}),
            "email",
        ),
        (
            "/v1/apps/stable/deployments",
            json!({"deployment": {"source_url": 7}}),
            "source_url",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer) = admin.post(path, body.clone()).await;
        assert_eq!(status, 422, "{path} {body}: {answer}");
        assert!(
            answer["errors"][field].is_array(),
            "{path} {body}: errors.{field}: {answer}"
        );
    }
    // A root that is missing or not an object.
    for (path, root) in [
        ("/v1/apps", "app"),
        ("/v1/users", "user"),
        ("/v1/apps/stable/collaborators", "collaborator"),
        ("/v1/apps/stable/deployments", "deployment"),
    ] {
        for body in ["{}", "[]", "\"text\"", "12", "null"] {
            let (status, answer) = admin.post_raw(path, body).await;
            assert_eq!(status, 422, "{path} {body}: {answer}");
            let errors = answer["errors"].as_object().expect("errors object");
            assert!(!errors.is_empty(), "{path} {body}: {answer}");
            if body == "{}" {
                assert!(
                    errors.contains_key(root),
                    "{path} {{}}: errors.{root}: {answer}"
                );
            }
        }
    }
    assert_eq!(snapshot(&admin, &["stable"]).await, before);
}

#[tokio::test]
async fn an_oversized_body_is_a_json_413_and_changes_nothing() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let before = snapshot(&admin, &[]).await;
    let name = "x".repeat(1024 * 1024 + 10);
    let body = json!({"app": {"name": "big-app", "git_source": format!("https://e.com/{name}")}});
    let (status, answer) = admin.post("/v1/apps", body).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
    assert_eq!(snapshot(&admin, &[]).await, before);
    assert_eq!(admin.get("/v1/apps/big-app").await.0, 404);
}

#[tokio::test]
async fn a_non_json_content_type_is_a_400() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let resp = admin
        .request(reqwest::Method::POST, "/v1/apps")
        .header("Content-Type", "text/plain")
        .body(json!({"app": {"name": "typed"}}).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = serde_json::from_str(&resp.text().await.expect("text")).expect("json");
    assert!(body["error"].is_string());
    assert_eq!(admin.get("/v1/apps/typed").await.0, 404);
}

#[tokio::test]
async fn unknown_routes_are_a_json_404_and_wrong_methods_a_json_405() {
    let server = TestServer::start().await;
    let admin = server.admin();
    // ("/" is the dashboard's redirect to /ui/: tests/dashboard_api.rs.)
    for path in ["/v1", "/v1/nothing", "/v1/apps/a/b/c/d/e", "/v2/apps"] {
        let (status, body) = admin.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let (status, body) = server.anonymous().get("/v1/nothing").await;
    assert_eq!(status, 404, "{body}");
    server.create_app(&admin, "methods").await;
    use reqwest::Method;
    for (method, path) in [
        (Method::PUT, "/v1/apps"),
        (Method::DELETE, "/v1/apps"),
        (Method::PATCH, "/v1/apps/methods"),
        (Method::POST, "/v1/users/self"),
        (Method::GET, "/v1/tokens/exchange"),
        (Method::DELETE, "/v1/apps/methods/deployments"),
        (Method::POST, "/v1/apps/methods/deployments/x/output"),
    ] {
        let (status, text) = raw(&admin, method.clone(), path, None).await;
        assert_eq!(status, 405, "{method} {path}: {text}");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: non-JSON 405 {text:?}"));
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(admin.get("/v1/apps/methods").await.0, 200);
}

#[tokio::test]
async fn an_app_name_cannot_shadow_another_apps_id() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "victim").await;
    let id = app["id"].as_str().expect("id").to_string();
    let mallory = server.client(&server.create_user("mallory").await);
    let (status, body) = mallory.post("/v1/apps", json!({"app": {"name": id}})).await;
    assert_eq!(status, 422, "an id-shaped name is refused: {body}");
    assert!(body["errors"]["name"].is_array(), "{body}");
    let (status, body) = admin.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app"]["name"], "victim");
}

#[tokio::test]
async fn emails_match_whatever_their_case() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_user("casey").await;
    let (status, body) = admin
        .post(
            "/v1/users",
            json!({"user": {"username": "casey2", "email": "Casey@Example.com"}}),
        )
        .await;
    assert_eq!(status, 422, "the same address in another case: {body}");
    assert!(body["errors"]["email"].is_array(), "{body}");
    server.create_app(&admin, "case-app").await;
    let (status, body) = admin
        .post(
            "/v1/apps/case-app/collaborators",
            json!({"collaborator": {"email": "CASEY@example.COM"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["collaborator"]["username"], "casey");
}

#[tokio::test]
async fn deleting_an_app_ends_its_live_pusher_session() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "live-delete").await;
    let mut pusher =
        common::push::start(&server.url, "live-delete", &server.admin_token, "r").await;
    pusher.logs(&["one"]).await;
    let (status, body) = admin.delete("/v1/apps/live-delete").await;
    assert!(status == 204 || status == 200, "{status} {body}");
    // The pusher learns it is over: an error or terminal status frame, then the end.
    loop {
        match common::push::next_json(&mut pusher.socket).await {
            None => break,
            Some(frame) => assert!(
                frame["type"] == "error" || frame["type"] == "status",
                "{frame}"
            ),
        }
    }
    assert_eq!(admin.get("/v1/apps/live-delete").await.0, 404);
    // The name is free again and the new app deploys at once (nothing left queued).
    server.create_app(&admin, "live-delete").await;
    let id = deploy(
        &server,
        "live-delete",
        &server.admin_token,
        &["two"],
        "success",
    )
    .await;
    let (_, _, text) = admin
        .get_text(&format!("/v1/apps/live-delete/deployments/{id}/output"))
        .await;
    assert_eq!(text, "two\n");
}

#[tokio::test]
async fn a_push_request_without_an_upgrade_is_a_json_error() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "no-upgrade").await;
    let (status, text) = raw(
        &admin,
        reqwest::Method::GET,
        "/v1/apps/no-upgrade/push",
        None,
    )
    .await;
    assert!((400..500).contains(&status), "{status} {text}");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON {status}: {text:?}"));
    assert!(body["error"].is_string(), "{body}");
    let (_, list) = admin.get("/v1/apps/no-upgrade/deployments").await;
    assert_eq!(list["meta"]["pagination"]["total_count"], 0);
}

#[tokio::test]
async fn a_path_segment_that_is_not_utf8_is_a_json_400() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "utf8").await;
    use reqwest::Method;
    for (method, path) in [
        (Method::GET, "/v1/apps/%FF"),
        (Method::GET, "/v1/apps/%FF/deployments"),
        (Method::GET, "/v1/apps/utf8/deployments/%FF"),
        (Method::GET, "/v1/apps/utf8/deployments/%FF/output"),
        (Method::DELETE, "/v1/tokens/%FF"),
        (Method::DELETE, "/v1/apps/utf8/collaborators/%FF"),
    ] {
        let (status, text) = raw(&admin, method.clone(), path, None).await;
        assert_eq!(status, 400, "{method} {path}: {text}");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: non-JSON {text:?}"));
        assert!(body["error"].is_string(), "{body}");
    }
}
