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

/// Lays out `statuses.len()` finished deployments of `app` in a stopped server's store the way
/// a build from before the deployment counts did (record, app index, status index; no counts,
/// no meta record saying they are built); returns their ids oldest first.
fn lay_out_without_counts(data: &std::path::Path, app: &str, statuses: &[&str]) -> Vec<String> {
    use deployd::model::{AppId, Deployment, DeploymentId, Driver, LineNo, Pusher, UserId};
    use deployd::store::codec;
    use deployd::store::engine::{prefix_end, BatchOp, Engine, SledEngine};

    let engine = SledEngine::open(&data.join("store")).expect("store");
    let app_id = engine
        .get(&codec::app_name_key(app))
        .expect("read")
        .map(|bytes| AppId::from_bytes(codec::id_value(&bytes).expect("app id")))
        .expect("the app exists");
    let put = |key: Vec<u8>, value: Vec<u8>| BatchOp::Put(key, value.into());
    let mut ops = Vec::new();
    // What a build from before the counts never wrote.
    for tag in [
        codec::TAG_APP_COUNTS,
        codec::TAG_COUNT_BUCKET,
        codec::TAG_ALL_COUNTS,
    ] {
        for entry in engine.range(&[tag], &prefix_end(&[tag]), false) {
            ops.push(BatchOp::Delete(entry.expect("read").0));
        }
    }
    for meta in ["counts-v1", "counts-v2"] {
        ops.push(BatchOp::Delete(codec::meta_key(meta)));
    }
    let now = time::OffsetDateTime::now_utc();
    let mut ids = Vec::new();
    for status in statuses {
        let status: deployd::status::Status = status.parse().expect("status");
        let id = DeploymentId::generate();
        let record = Deployment {
            id,
            app_id,
            created_at: now,
            status,
            finished_at: Some(now),
            git_ref: "main".into(),
            previous_git_ref: None,
            pusher: Pusher {
                id: UserId::generate(),
                username: "old".into(),
                email: "old@example.com".into(),
            },
            image_size: 0,
            image_kept: false,
            driver: Driver::External,
            last_line: LineNo(0),
        };
        ops.push(put(
            codec::deployment_key(id),
            codec::encode_deployment(&record),
        ));
        ops.push(put(codec::app_deployment_key(app_id, id), Vec::new()));
        ops.push(put(codec::app_status_key(app_id, status, id), Vec::new()));
        ids.push(id.to_string());
    }
    engine.apply(ops).expect("apply");
    engine.sync().expect("sync");
    ids
}

#[tokio::test]
async fn deep_pages_of_a_data_directory_from_before_the_counts_list_exactly_the_plain_order_after_the_upgrade_at_open(
) {
    let mut server = common::Server::start_with(common::Options {
        config_toml: "[retention]\nkeep_deployments = 0\n".into(),
        ..common::Options::default()
    });
    let admin = server.admin();
    server.create_app(&admin, "deep").await;
    server.stop();
    // Spans three count buckets (1024 deployments each when built at open).
    let statuses: Vec<&str> = (0..2600)
        .map(|n| match n % 5 {
            0 => "build-error",
            1 => "aborted",
            _ => "success",
        })
        .collect();
    let oldest_first = lay_out_without_counts(&server.data, "deep", &statuses);
    let server = server.start_again();
    let admin = server.admin();

    let newest_first: Vec<String> = oldest_first.iter().rev().cloned().collect();
    let mut listed = Vec::new();
    for n in 1..=26 {
        let (ids, pagination) = page(&admin, "deep", &format!("?per_page=100&page={n}")).await;
        assert_eq!(pagination["total_count"], 2600);
        listed.extend(ids);
    }
    assert_eq!(listed, newest_first, "every page, in order");
    // Pages that start inside a bucket, end past one, and the last partial page.
    for (page_no, per_page) in [(52, 20), (55, 19), (103, 10), (87, 30)] {
        let (ids, pagination) = page(
            &admin,
            "deep",
            &format!("?per_page={per_page}&page={page_no}"),
        )
        .await;
        let from = ((page_no - 1) * per_page).min(2600);
        let to = (from + per_page).min(2600);
        assert_eq!(ids, newest_first[from..to], "page {page_no} of {per_page}");
        assert_eq!(pagination["total_pages"], 2600usize.div_ceil(per_page));
    }
    // The filters count and seek the same way.
    let newest_success: Vec<String> = newest_first
        .iter()
        .zip(statuses.iter().rev())
        .filter(|(_, status)| **status == "success")
        .map(|(id, _)| id.clone())
        .collect();
    for page_no in [1, 40, 78, 79] {
        let (ids, pagination) = page(
            &admin,
            "deep",
            &format!("?status=success&per_page=20&page={page_no}"),
        )
        .await;
        assert_eq!(pagination["total_count"], 1560);
        let from = ((page_no - 1) * 20).min(1560);
        let to = (from + 20).min(1560);
        assert_eq!(ids, newest_success[from..to], "success page {page_no}");
    }
    let (_, pagination) = page(&admin, "deep", "?status=aborted,build-error").await;
    assert_eq!(pagination["total_count"], 1040);

    // A deployment made after the upgrade is counted and listed first.
    let newest = deploy(&server, "deep", &server.admin_token, &[], "success").await;
    let (ids, pagination) = page(&admin, "deep", "?per_page=1").await;
    assert_eq!(ids, vec![newest]);
    assert_eq!(pagination["total_count"], 2601);
    let (_, pagination) = page(&admin, "deep", "?status=success&per_page=1").await;
    assert_eq!(pagination["total_count"], 1561);
    let (ids, _) = page(&admin, "deep", "?per_page=100&page=27").await;
    assert_eq!(ids, vec![oldest_first[0].clone()], "the oldest is last");

    // Offline, `deployd check` finds the counts in step; thrown out of step, it says so and
    // `--repair` rebuilds them.
    let mut server = server;
    server.stop();
    let (code, out) = check(&server.data, false);
    assert_eq!(code, 0, "{out}");
    {
        use deployd::store::codec;
        use deployd::store::engine::{prefix_end, BatchOp, Engine, SledEngine};
        let engine = SledEngine::open(&server.data.join("store")).expect("store");
        let prefix = [codec::TAG_COUNT_BUCKET];
        let first = engine
            .range(&prefix, &prefix_end(&prefix), false)
            .next()
            .expect("a bucket")
            .expect("read")
            .0;
        engine.apply(vec![BatchOp::Delete(first)]).expect("apply");
        engine.sync().expect("sync");
    }
    let (code, out) = check(&server.data, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("problem: deployment counts of app"), "{out}");
    let (code, out) = check(&server.data, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repaired: deployment counts of app"), "{out}");
    let (code, out) = check(&server.data, false);
    assert_eq!(code, 0, "{out}");
    let server = server.start_again();
    let (ids, pagination) = page(&server.admin(), "deep", "?per_page=100&page=27").await;
    assert_eq!(pagination["total_count"], 2601);
    assert_eq!(ids, vec![oldest_first[0].clone()]);
}

/// Runs `deployd check` on a data directory: (exit code, stdout).
fn check(data: &std::path::Path, repair: bool) -> (i32, String) {
    let mut command = std::process::Command::new(common::deployd_bin());
    command.arg("check").arg("--data").arg(data);
    if repair {
        command.arg("--repair");
    }
    let out = command.output().expect("run deployd check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn after_retention_prunes_thousands_the_counts_and_pages_are_those_of_what_is_left() {
    let keep_all = common::Options {
        config_toml: "[retention]\nkeep_deployments = 0\n".into(),
        ..common::Options::default()
    };
    let mut server = common::Server::start_with(keep_all);
    let admin = server.admin();
    server.create_app(&admin, "pruned").await;
    server.stop();
    let statuses: Vec<&str> = (0..2100)
        .map(|n| if n % 3 == 0 { "build-error" } else { "success" })
        .collect();
    let oldest_first = lay_out_without_counts(&server.data, "pruned", &statuses);
    let server = server.restart_with(common::Options {
        config_toml: "[retention]\nkeep_deployments = 10\n".into(),
        ..common::Options::default()
    });
    let admin = server.admin();
    common::eventually(std::time::Duration::from_secs(60), || async {
        let (_, pagination) = page(&admin, "pruned", "?per_page=1").await;
        (pagination["total_count"] == 10).then_some(())
    })
    .await;
    let newest: Vec<String> = oldest_first.iter().rev().take(10).cloned().collect();
    let (ids, pagination) = page(&admin, "pruned", "?per_page=4&page=3").await;
    assert_eq!(ids, newest[8..10]);
    assert_eq!(pagination["total_pages"], 3);
    let kept_success = statuses[2090..].iter().filter(|s| **s == "success").count();
    let (ids, pagination) = page(&admin, "pruned", "?status=success&per_page=100").await;
    assert_eq!(pagination["total_count"], kept_success);
    assert_eq!(ids.len(), kept_success);
    let mut server = server;
    server.stop();
    let (code, out) = check(&server.data, false);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn the_admins_deep_pages_across_apps_of_a_data_directory_from_before_every_apps_counts_are_the_merged_order(
) {
    let mut server = common::Server::start_with(common::Options {
        config_toml: "[retention]\nkeep_deployments = 0\n".into(),
        ..common::Options::default()
    });
    let admin = server.admin();
    for app in ["wide-a", "wide-b"] {
        server.create_app(&admin, app).await;
    }
    server.stop();
    // Interleaved runs of the two apps, spanning several buckets of every app's counts.
    let mut laid: Vec<(String, &str)> = Vec::new();
    for round in 0..6 {
        let app = if round % 2 == 0 { "wide-a" } else { "wide-b" };
        let statuses: Vec<&str> = (0..450)
            .map(|n| if n % 3 == 0 { "aborted" } else { "success" })
            .collect();
        let ids = lay_out_without_counts(&server.data, app, &statuses);
        laid.extend(ids.into_iter().zip(statuses));
    }
    let server = server.start_again();
    let admin = server.admin();
    // Ids are UUIDv7: their text sorts as their bytes, in creation order.
    laid.sort_by(|a, b| b.0.cmp(&a.0));
    let newest_first: Vec<String> = laid.iter().map(|(id, _)| id.clone()).collect();
    let total = newest_first.len();
    let list = |query: String| {
        let admin = admin.clone();
        async move {
            let (status, body) = admin.get(&format!("/v1/deployments{query}")).await;
            assert_eq!(status, 200, "{body}");
            let ids: Vec<String> = body["deployments"]
                .as_array()
                .expect("deployments")
                .iter()
                .map(|d| d["id"].as_str().expect("id").to_string())
                .collect();
            (ids, body["meta"]["pagination"].clone())
        }
    };
    for (page_no, per_page) in [(1, 20), (52, 20), (55, 19), (27, 100), (28, 100), (99, 30)] {
        let (ids, pagination) = list(format!("?per_page={per_page}&page={page_no}")).await;
        assert_eq!(pagination["total_count"], total);
        let from = ((page_no - 1) * per_page).min(total);
        let to = (from + per_page).min(total);
        assert_eq!(ids, newest_first[from..to], "page {page_no} of {per_page}");
    }
    let aborted: Vec<String> = laid
        .iter()
        .filter(|(_, status)| *status == "aborted")
        .map(|(id, _)| id.clone())
        .collect();
    for page_no in [1, 30, 45, 46] {
        let (ids, pagination) = list(format!("?status=aborted&per_page=20&page={page_no}")).await;
        assert_eq!(pagination["total_count"], aborted.len());
        let from = ((page_no - 1) * 20).min(aborted.len());
        let to = (from + 20).min(aborted.len());
        assert_eq!(ids, aborted[from..to], "aborted page {page_no}");
    }
    // Deleting an app takes its deployments out of every app's counts.
    let (status, body) = admin.delete("/v1/apps/wide-b").await;
    assert!(status == 200 || status == 204, "{status}: {body}");
    let (_, pagination) = list("?per_page=1".into()).await;
    assert_eq!(pagination["total_count"], total / 2);

    // Offline, `deployd check` finds them in step; a lost bucket is a problem `--repair` fixes.
    let mut server = server;
    server.stop();
    let (code, out) = check(&server.data, false);
    assert_eq!(code, 0, "{out}");
    {
        use deployd::store::codec;
        use deployd::store::engine::{BatchOp, Engine, SledEngine};
        let engine = SledEngine::open(&server.data.join("store")).expect("store");
        let prefix = codec::CountScope::All.buckets_prefix();
        let first = engine
            .range(&prefix, &deployd::store::engine::prefix_end(&prefix), false)
            .next()
            .expect("a bucket")
            .expect("read")
            .0;
        engine.apply(vec![BatchOp::Delete(first)]).expect("apply");
        engine.sync().expect("sync");
    }
    let (code, out) = check(&server.data, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("deployment counts of every app"), "{out}");
    let (code, out) = check(&server.data, true);
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(&server.data, false);
    assert_eq!(code, 0, "{out}");
}
