//! Source uploads, served in process (compat.md): `POST /v1/sources`, an anonymous `PUT`
//! of a tar.gz to the signed upload URL, then a deployment from the download URL.
mod common;

use std::time::Duration;

use common::{Options, TestServer};
use deployd::testing;
use serde_json::{json, Value};

/// `POST /v1/sources` as `client`; returns (upload_url, download_url).
async fn new_source(client: &common::Client) -> (String, String) {
    let (status, body) = client.post("/v1/sources", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let url = |key: &str| body["source"][key].as_str().expect(key).to_string();
    (url("upload_url"), url("download_url"))
}

/// An anonymous `PUT` like the Scalingo CLI's; returns status and JSON body.
async fn put(url: &str, bytes: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .put(url)
        .header("Content-Type", "application/x-gzip")
        .body(bytes)
        .send()
        .await
        .expect("PUT");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON ({status}): {text}"));
    (status, body)
}

#[tokio::test]
async fn an_uploaded_archive_is_deployed_from_its_download_url() {
    // Private sources refused: the download URL (ours, on 127.0.0.1) must be read from disk, not
    // fetched over HTTP.
    let server = TestServer::start_with(Options {
        allow_private_sources: Some(false),
        ..Options::default()
    })
    .await;
    let admin = server.admin();
    server.create_app(&admin, "uploaded").await;
    let (upload_url, download_url) = new_source(&admin).await;
    assert!(upload_url.starts_with(&format!("{}/v1/sources/", server.url)));
    assert_ne!(upload_url, download_url);

    let archive = testing::app("echo 'built from upload'", "true");
    let (status, body) = put(&upload_url, archive.clone()).await;
    assert_eq!(status, 200, "{body}");

    // The download URL serves the archive back without credentials.
    let resp = reqwest::get(&download_url).await.expect("GET download");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.bytes().await.expect("bytes").to_vec(), archive);

    let (status, created) = admin
        .post(
            "/v1/apps/uploaded/deployments",
            json!({"deployment": {"git_ref": null, "source_url": download_url}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["deployment"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let done = common::wait_finished(&admin, "uploaded", &id, Duration::from_secs(10)).await;
    let (_, _, text) = admin
        .get_text(&format!("/v1/apps/uploaded/deployments/{id}/output"))
        .await;
    assert_eq!(done["status"], "success", "{text}");
    assert!(text.contains("built from upload\n"), "{text}");
}

#[tokio::test]
async fn a_bad_signature_is_refused_with_a_403_json_error() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let (upload_url, download_url) = new_source(&admin).await;
    let forged = |url: &str| {
        let (head, signature) = url.rsplit_once("signature=").expect("signed url");
        let flipped = if signature.starts_with('0') { "1" } else { "0" };
        format!("{head}signature={flipped}{}", &signature[1..])
    };
    let (status, body) = put(&forged(&upload_url), testing::app("true", "true")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].is_string(), "{body}");

    // An upload URL does not download, a download URL does not upload.
    let (status, body) = put(&download_url, testing::app("true", "true")).await;
    assert_eq!(status, 403, "{body}");
    let resp = reqwest::get(&upload_url).await.expect("GET");
    assert_eq!(resp.status().as_u16(), 403);

    // Nothing was stored, so deploying from the download URL is refused up front.
    server.create_app(&admin, "forged").await;
    let (status, body) = admin
        .post(
            "/v1/apps/forged/deployments",
            json!({"deployment": {"git_ref": "main", "source_url": download_url}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"]["source_url"].is_array(), "{body}");
}

#[tokio::test]
async fn an_upload_over_the_limit_is_refused_with_a_413_json_error() {
    let server = TestServer::start_with(Options {
        config_toml: "[limits]\nmax_upload_bytes = 4096".into(),
        ..Options::default()
    })
    .await;
    let admin = server.admin();
    let (upload_url, download_url) = new_source(&admin).await;
    let (status, body) = put(&upload_url, vec![7u8; 16 * 1024]).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let resp = reqwest::get(&download_url).await.expect("GET");
    assert_eq!(resp.status().as_u16(), 404, "nothing was kept");

    // An archive within the limit still goes through on the same URL.
    let (status, body) = put(&upload_url, testing::app("true", "true")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn creating_a_source_needs_credentials() {
    let server = TestServer::start().await;
    let (status, body) = server.anonymous().post("/v1/sources", json!({})).await;
    assert_eq!(status, 401, "{body}");
}
