//! `GET /metrics` of the real binary (metrics are process-wide, so each test has its own
//! server process): what a pushed deployment adds, the labels staying free of app names, and
//! the optional token.
mod common;
#[path = "common/deploy.rs"]
mod deploy;

use std::collections::HashMap;

use common::{Options, Server};
use deploy::deploy;

/// The samples of a text exposition: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(server: &Server) -> (String, HashMap<String, f64>) {
    let (status, content_type, text) = server.anonymous().get_text("/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let parsed = samples(&text);
    (text, parsed)
}

#[tokio::test]
async fn a_pushed_deployment_counts_its_lines_acks_statuses_and_requests_by_operation() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "metered-app").await;
    deploy(
        &server,
        "metered-app",
        &server.admin_token,
        &["one", "two", "three"],
        "success",
    )
    .await;
    let (text, m) = scrape(&server).await;
    let get = |key: &str| {
        *m.get(key)
            .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
    };
    assert_eq!(get("deployd_lines_ingested_total"), 3.0);
    assert!(get("deployd_bytes_ingested_total") >= "onetwothree".len() as f64);
    assert_eq!(get("deployd_push_acks_total"), 1.0);
    assert_eq!(get("deployd_push_ack_latency_seconds_count"), 1.0);
    assert_eq!(get("deployd_deployments_created_total"), 1.0);
    assert_eq!(
        get("deployd_deployment_statuses_total{status=\"building\"}"),
        1.0
    );
    assert_eq!(
        get("deployd_deployment_statuses_total{status=\"success\"}"),
        1.0
    );
    assert_eq!(
        get("deployd_deployment_statuses_total{status=\"build-error\"}"),
        0.0
    );
    assert_eq!(
        get("deployd_http_requests_total{code=\"201\",operation=\"createApp\"}"),
        1.0
    );
    assert_eq!(
        get("deployd_http_request_duration_seconds_count{code=\"201\",operation=\"createApp\"}"),
        1.0
    );
    assert_eq!(get("deployd_push_sessions_open"), 0.0);
    assert_eq!(get("deployd_queue_length"), 0.0);
    assert_eq!(get("deployd_writer_ok"), 1.0);
    assert!(get("deployd_group_commit_size_count") >= 1.0);
    assert!(get("deployd_commit_sync_seconds_count") >= 1.0);
    assert!(get("deployd_store_size_bytes") > 0.0);
    assert!(
        !text.contains("metered-app"),
        "an app name leaked into a label:\n{text}"
    );
}

#[tokio::test]
async fn requests_to_unknown_paths_are_counted_under_one_label_not_their_path() {
    let server = Server::start();
    let client = server.admin();
    for path in ["/nope-1", "/nope-2", "/v1/apps/missing-app/nowhere"] {
        let (status, _) = client.get(path).await;
        assert_eq!(status, 404);
    }
    let (text, m) = scrape(&server).await;
    assert_eq!(
        m.get("deployd_http_requests_total{code=\"404\",operation=\"unmatched\"}"),
        Some(&3.0),
        "{text}"
    );
    assert!(
        !text.contains("nope-1") && !text.contains("missing-app"),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_need_the_configured_token_when_one_is_set() {
    let server = Server::start_with(Options {
        config_toml: "[metrics]\ntoken = \"scrape-secret\"".into(),
        ..Options::default()
    });
    let (status, body) = server.anonymous().get("/metrics").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().is_some(), "{body}");
    let bearer = |token: &str| server.anonymous().with_auth(&format!("Bearer {token}"));
    let (status, _) = bearer("not-the-secret").get("/metrics").await;
    assert_eq!(status, 401);
    let (status, _, text) = bearer("scrape-secret").get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("deployd_writer_ok 1"), "{text}");
}
