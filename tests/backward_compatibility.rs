//! Data written by an earlier build must read back exactly with this one. The fixture
//! `tests/fixtures/v1-data.tar.gz` is a whole data directory (sled files, log segment files, an
//! uploaded source) written by the v1 format; `tests/fixtures/v1-data.json` is what the API showed
//! for it right after it was written, with the secrets needed to read it back.
//!
//! The fixture holds: two users besides the admin, three tokens, an app with a collaborator, a
//! second app, deployments in success, build-error, crashed-error and aborted (pushed lines) and
//! one run by the built-in executor from an uploaded source (stdout, stderr and deployd's own
//! lines). The sled files are reopened, never compared byte for byte.
//!
//! To regenerate it (only when the on-disk format version changes, keeping the old fixture as
//! its own test): `cargo test --test backward_compatibility -- --ignored write_the_v1_fixture`.
mod common;
#[path = "common/deploy.rs"]
mod deploy;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Client, Endpoint, Options, TestServer};
use deploy::deploy;
use serde_json::{json, Value};

fn fixture(ext: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v1-data.{ext}"))
}

/// What a user token sees: itself, its tokens, its apps, and for each app its collaborators,
/// deployments, each deployment and each output, in full.
async fn view(server: &Endpoint, token: &str) -> Value {
    let client = server.client(token);
    let get = |path: String| {
        let client = client.clone();
        async move {
            let (status, body) = client.get(&path).await;
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    let mut apps = Vec::new();
    let list = get("/v1/apps".into()).await;
    for app in list["apps"].as_array().expect("apps") {
        let name = app["name"].as_str().expect("name").to_string();
        let deployments = get(format!("/v1/apps/{name}/deployments")).await;
        let mut shown = Vec::new();
        for d in deployments["deployments"].as_array().expect("deployments") {
            let id = d["id"].as_str().expect("id");
            let (status, _, output) = client
                .get_text(&format!("/v1/apps/{name}/deployments/{id}/output"))
                .await;
            assert_eq!(status, 200, "{output}");
            shown.push(json!({
                "deployment": get(format!("/v1/apps/{name}/deployments/{id}")).await,
                "output": output,
            }));
        }
        apps.push(json!({
            "app": get(format!("/v1/apps/{name}")).await,
            "collaborators": get(format!("/v1/apps/{name}/collaborators")).await,
            "deployments": deployments,
            "shown": shown,
        }));
    }
    let view = json!({
        "self": get("/v1/users/self".into()).await,
        "tokens": get("/v1/tokens".into()).await,
        "apps": list,
        "details": apps,
    });
    // Links carry the server's own address, which differs on every start.
    let text = view.to_string().replace(&server.addr, "SERVER");
    serde_json::from_str(&text).expect("json")
}

/// Every user's view, by token.
async fn snapshot(server: &Endpoint, tokens: &Value) -> Value {
    let mut views = serde_json::Map::new();
    for (who, token) in tokens.as_object().expect("tokens") {
        views.insert(
            who.clone(),
            view(server, token.as_str().expect("token")).await,
        );
    }
    Value::Object(views)
}

async fn create_token(client: &Client, name: &str) -> String {
    let (status, body) = client
        .post("/v1/tokens", json!({"token": {"name": name}}))
        .await;
    assert_eq!(status, 201, "{body}");
    body["token"]["token"].as_str().expect("secret").to_string()
}

/// Every value the v1 build showed is shown again, exactly; objects may carry fields added
/// since (e.g. a collaborator's `is_limited`), but none that v1 showed may change or go.
fn assert_shown_as_before(now: &Value, before: &Value, path: &str) {
    match (now, before) {
        (Value::Object(now), Value::Object(before)) => {
            for (key, was) in before {
                let is = now
                    .get(key)
                    .unwrap_or_else(|| panic!("{path}.{key} is no longer shown"));
                assert_shown_as_before(is, was, &format!("{path}.{key}"));
            }
        }
        (Value::Array(now), Value::Array(before)) => {
            assert_eq!(
                now.len(),
                before.len(),
                "{path}: a different number of items"
            );
            for (i, (is, was)) in now.iter().zip(before).enumerate() {
                assert_shown_as_before(is, was, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(now, before, "{path} changed"),
    }
}

#[tokio::test]
async fn a_v1_data_directory_reads_back_every_record_and_every_line_exactly() {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixture("json")).expect("fixture json"))
            .expect("fixture json");
    let root = Arc::new(tempfile::tempdir().expect("tempdir"));
    let archive = std::fs::read(fixture("tar.gz")).expect("fixture archive");
    tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]))
        .unpack(root.path())
        .expect("unpack fixture");
    let server = TestServer::boot(root, Options::default()).await;

    let views = snapshot(&server, &expected["tokens"]).await;
    for (who, view) in expected["views"].as_object().expect("views") {
        assert_shown_as_before(&views[who], view, who);
    }
    // The uploaded source's URL expired long ago and no unfinished deployment uses it, so the
    // startup prune pass deletes it (README "Retention"): record first, then the file.
    let source = expected["source"]["file"].as_str().expect("source file");
    let path = server.data.join(source);
    common::eventually(std::time::Duration::from_secs(20), || async {
        (!path.exists()).then_some(())
    })
    .await;
}

/// Writes the fixture (see the module doc). Ignored: it is run by hand, never by the suite.
#[tokio::test]
#[ignore = "writes tests/fixtures/v1-data.*; run by hand when the on-disk format changes"]
async fn write_the_v1_fixture() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let alice = server.create_user("alice").await;
    let bob = server.create_user("bob").await;
    let alice_client = server.client(&alice);
    let alice_ci = create_token(&alice_client, "ci").await;

    server.create_app(&alice_client, "shop").await;
    let (status, body) = alice_client
        .post(
            "/v1/apps/shop/collaborators",
            json!({"collaborator": {"email": "bob@example.com"}}),
        )
        .await;
    assert!(status == 201 || status == 200, "{status} {body}");
    server.create_app(&server.client(&bob), "blog").await;

    deploy(&server, "shop", &alice, &["one", "two", "three"], "success").await;
    deploy(
        &server,
        "shop",
        &alice,
        &["compiling", "error: nope"],
        "build-error",
    )
    .await;
    deploy(&server, "shop", &bob, &["boot", "panic"], "crashed-error").await;
    deploy(&server, "blog", &bob, &["half"], "aborted").await;

    // An uploaded source, deployed by the built-in executor.
    let (status, body) = alice_client.post("/v1/sources", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let upload = body["source"]["upload_url"].as_str().expect("upload url");
    let download = body["source"]["download_url"]
        .as_str()
        .expect("download url");
    let resp = reqwest::Client::new()
        .put(upload)
        .header("Content-Type", "application/x-gzip")
        .body(deployd::testing::app(
            "echo built; echo warned >&2",
            "echo started",
        ))
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status().as_u16(), 200);
    let (status, body) = alice_client
        .post(
            "/v1/apps/shop/deployments",
            json!({"deployment": {"git_ref": "v1", "source_url": download}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["deployment"]["id"].as_str().expect("id").to_string();
    let done = common::wait_finished(&alice_client, "shop", &id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "success", "{done}");
    let source_id = download
        .split("/v1/sources/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("source id");

    let tokens = json!({
        "admin": server.admin_token,
        "alice": alice,
        "alice-ci": alice_ci,
        "bob": bob,
    });
    let views = snapshot(&server, &tokens).await;
    let mut server = server;
    server.stop().await;
    drop(admin);

    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::best(),
    ));
    tar.append_dir_all("data", &server.data).expect("pack data");
    let packed = tar
        .into_inner()
        .expect("finish tar")
        .finish()
        .expect("finish gzip");
    std::fs::create_dir_all(fixture("json").parent().expect("dir")).expect("fixtures dir");
    std::fs::write(fixture("tar.gz"), packed).expect("write archive");
    let expected = json!({
        "tokens": tokens,
        "views": views,
        "source": {"file": format!("sources/{source_id}.tar.gz")},
    });
    std::fs::write(
        fixture("json"),
        serde_json::to_string_pretty(&expected).expect("json") + "\n",
    )
    .expect("write json");
}
