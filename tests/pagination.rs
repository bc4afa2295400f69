//! Pagination of the deployments list, served in process: empty app, exact page boundary,
//! last page, past the end, default and maximum page sizes, and bad parameters.
mod common;
#[path = "common/deploy.rs"]
mod deploy;

use serde_json::{json, Value};

use common::{Client, TestServer};
use deploy::deploy;

/// Creates `count` finished deployments of `app`; returns their ids oldest first.
async fn deployments(server: &TestServer, app: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(deploy(server, app, &server.admin_token, &[], "build-error").await);
    }
    ids
}

async fn page(client: &Client, app: &str, query: &str) -> (Vec<String>, Value) {
    let (status, body) = client
        .get(&format!("/v1/apps/{app}/deployments{query}"))
        .await;
    assert_eq!(status, 200, "{query}: {body}");
    let ids = body["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_string())
        .collect();
    (ids, body["meta"]["pagination"].clone())
}

fn meta(current: u64, prev: Option<u64>, next: Option<u64>, pages: u64, count: u64) -> Value {
    json!({
        "current_page": current,
        "prev_page": prev,
        "next_page": next,
        "total_pages": pages,
        "total_count": count,
    })
}

#[tokio::test]
async fn an_empty_app_has_no_pages_and_null_links() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "empty-app").await;
    let (ids, pagination) = page(&admin, "empty-app", "").await;
    assert!(ids.is_empty());
    assert_eq!(pagination["total_count"], 0);
    assert_eq!(pagination["prev_page"], Value::Null);
    assert_eq!(pagination["next_page"], Value::Null);
    assert_eq!(pagination["current_page"], 1);
    assert!(pagination["total_pages"].is_u64(), "{pagination}");
}

#[tokio::test]
async fn pages_split_exactly_at_the_boundary_and_past_the_end_is_empty() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "paged").await;
    let mut ids = deployments(&server, "paged", 4).await;
    ids.reverse(); // newest first

    let (first, m) = page(&admin, "paged", "?per_page=2").await;
    assert_eq!(first, ids[0..2]);
    assert_eq!(m, meta(1, None, Some(2), 2, 4));
    let (second, m) = page(&admin, "paged", "?page=2&per_page=2").await;
    assert_eq!(second, ids[2..4]);
    assert_eq!(m, meta(2, Some(1), None, 2, 4));
    let (past, m) = page(&admin, "paged", "?page=3&per_page=2").await;
    assert!(past.is_empty());
    assert_eq!(m["next_page"], Value::Null);
    assert_eq!(m["total_count"], 4);
    // A last page that is not full.
    let (last, m) = page(&admin, "paged", "?page=2&per_page=3").await;
    assert_eq!(last, ids[3..4]);
    assert_eq!(m, meta(2, Some(1), None, 2, 4));
    // Following next_page until null visits every deployment once, newest first.
    let mut seen = Vec::new();
    let mut query = "?per_page=3".to_string();
    loop {
        let (ids, m) = page(&admin, "paged", &query).await;
        seen.extend(ids);
        match m["next_page"].as_u64() {
            Some(next) => query = format!("?per_page=3&page={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn the_default_page_holds_20_and_100_is_the_maximum() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "many").await;
    let mut ids = deployments(&server, "many", 21).await;
    ids.reverse();
    let (first, m) = page(&admin, "many", "").await;
    assert_eq!(first, ids[0..20]);
    assert_eq!(m, meta(1, None, Some(2), 2, 21));
    let (second, m) = page(&admin, "many", "?page=2").await;
    assert_eq!(second, ids[20..21]);
    assert_eq!(m, meta(2, Some(1), None, 2, 21));
    let (all, m) = page(&admin, "many", "?per_page=100").await;
    assert_eq!(all, ids);
    assert_eq!(m, meta(1, None, None, 1, 21));
}

#[tokio::test]
async fn bad_page_parameters_are_json_errors() {
    let server = TestServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "bad-params").await;
    for (query, code, field) in [
        ("?per_page=101", 422, Some("per_page")),
        ("?per_page=0", 422, Some("per_page")),
        ("?page=0", 422, Some("page")),
        ("?page=abc", 400, None),
        ("?per_page=abc", 400, None),
        ("?page=-1", 400, None),
        ("?page=1.5", 400, None),
        ("?page=", 400, None),
        ("?page=99999999999999999999999", 400, None),
    ] {
        let (status, body) = admin
            .get(&format!("/v1/apps/bad-params/deployments{query}"))
            .await;
        assert_eq!(status, code, "{query}: {body}");
        match field {
            Some(field) => assert!(body["errors"][field].is_array(), "{query}: {body}"),
            None => assert!(body["error"].is_string(), "{query}: {body}"),
        }
    }
    // A huge page number is past the end, not an overflow.
    let (ids, m) = page(&admin, "bad-params", &format!("?page={}", u64::MAX)).await;
    assert!(ids.is_empty());
    assert_eq!(m["next_page"], Value::Null);
}
