//! `cargo bench --bench listing`: what one page of `GET /v1/apps/{app}/deployments` costs with
//! 100,000 deployments of one app (`keep_deployments = 0`), page 1 and page 5,000 (`per_page`
//! 20), without a filter and with `?status=success` (90 % of them succeeded, 10 % build-error).
//!
//! The deployments are written straight into the store's keyspace the way the writer lays them
//! out (creating them through the API would take most of an hour of fsyncs), then the counts
//! are rebuilt from the status index as `deployd check --repair` does. Two sets of figures,
//! each the median of 20 calls:
//!
//! - `store`: the page read alone, in this process, the way the list did it before the counts
//!   (count by scanning the app's index, reach the offset by skipping keys) and the way it does
//!   now (`Store::app_page`: one point read for the count, a seek through the count buckets);
//! - `http`: the whole request through a real server (`deployd::server::start` on the same
//!   directory), as a client sees it.
//!
//! Then the same for the admin's `GET /v1/deployments` (every app; here the one app holds every
//! deployment): `store all` compares the plain merge of every app's index (the total from the
//! apps' counts, `offset` keys skipped) with `Store::every_apps_page` (every app's counts, `0x1B`), and `http
//! /v1/deployments` times the request.
//!
//! Prints one line per figure.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use time::OffsetDateTime;

use deployd::config::{Config, FileConfig, Overrides};
use deployd::model::{AppId, Deployment, DeploymentId, Driver, LineNo, Pusher, UserId};
use deployd::status::Status;
use deployd::store::engine::{prefix_end, BatchOp, Engine, SledEngine};
use deployd::store::logs::LogFiles;
use deployd::store::{codec, counts, Store};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
const DEPLOYMENTS: usize = 100_000;
/// One in this many deployments ends `build-error`, the others `success`.
const BUILD_ERROR_EVERY: usize = 10;
const PER_PAGE: u64 = 20;
const DEEP_PAGE: u64 = 5_000;
const CALLS: usize = 20;
/// Engine ops per batch while populating (bounded memory).
const POPULATE_BATCH: usize = 20_000;

fn config(data: &Path) -> Config {
    let file: FileConfig = toml::from_str("[retention]\nkeep_deployments = 0\n").expect("toml");
    Config::from_parts(
        file,
        Overrides {
            listen: Some("127.0.0.1:0".parse().expect("address")),
            data_dir: Some(data.to_path_buf()),
            admin_token: Some(ADMIN_TOKEN.into()),
            ..Overrides::default()
        },
    )
    .expect("config")
}

fn auth() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(":{ADMIN_TOKEN}"))
    )
}

async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    let body = request.send().await.expect("request").bytes().await;
    serde_json::from_slice(&body.expect("body")).expect("json")
}

/// Starts a server on `data`, creates `app`, stops; returns the app's id and its owner.
async fn create_app(data: &Path, app: &str) -> (AppId, UserId) {
    let server = deployd::server::start(config(data)).await.expect("server");
    let url = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let created = json_of(
        http.post(format!("{url}/v1/apps"))
            .header("Authorization", auth())
            .header("Content-Type", "application/json")
            .body(serde_json::json!({"app": {"name": app}}).to_string()),
    )
    .await;
    let me = json_of(
        http.get(format!("{url}/v1/users/self"))
            .header("Authorization", auth()),
    )
    .await;
    server.shutdown().await;
    let app_id: AppId = created["app"]["id"]
        .as_str()
        .expect("app id")
        .parse()
        .expect("uuid");
    let owner: UserId = me["user"]["id"]
        .as_str()
        .expect("user id")
        .parse()
        .expect("uuid");
    (app_id, owner)
}

/// Writes the deployments (record, app index, status index), then rebuilds the counts.
fn populate(data: &Path, app: AppId, owner: UserId) {
    let engine = SledEngine::open(&data.join("store")).expect("engine");
    let now = OffsetDateTime::now_utc();
    let mut ops = Vec::new();
    for n in 0..DEPLOYMENTS {
        let id = DeploymentId::generate();
        let status = if n % BUILD_ERROR_EVERY == 0 {
            Status::BuildError
        } else {
            Status::Success
        };
        let deployment = Deployment {
            id,
            app_id: app,
            created_at: now,
            status,
            finished_at: Some(now),
            git_ref: "main".into(),
            previous_git_ref: None,
            pusher: Pusher {
                id: owner,
                username: "admin".into(),
                email: "admin@localhost".into(),
            },
            image_size: 0,
            image_kept: false,
            driver: Driver::External,
            last_line: LineNo(0),
        };
        let put = |key: Vec<u8>, value: Vec<u8>| BatchOp::Put(key, Bytes::from(value));
        ops.push(put(
            codec::deployment_key(id),
            codec::encode_deployment(&deployment),
        ));
        ops.push(put(codec::app_deployment_key(app, id), Vec::new()));
        ops.push(put(codec::app_status_key(app, status, id), Vec::new()));
        if ops.len() >= POPULATE_BATCH {
            engine.apply(std::mem::take(&mut ops)).expect("apply");
        }
    }
    engine.apply(ops).expect("apply");
    counts::rebuild(&engine).expect("counts");
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn time_calls(mut call: impl FnMut()) -> Duration {
    median(
        (0..CALLS)
            .map(|_| {
                let started = Instant::now();
                call();
                started.elapsed()
            })
            .collect(),
    )
}

/// The page as the list read it before the counts: every key counted, `offset` keys skipped.
fn plain_page(store: &Store, app: AppId, filter: Option<Status>, offset: u64) -> usize {
    match filter {
        None => {
            let total = store.deployment_count(app).expect("count");
            let ids = store.deployment_ids(app, offset, PER_PAGE).expect("ids");
            std::hint::black_box(total);
            ids.len()
        }
        Some(status) => {
            let prefix = codec::app_status_prefix(app, status);
            let total = store
                .engine()
                .range(&prefix, &prefix_end(&prefix), false)
                .count();
            let ids = store
                .status_ids(&[app], &[status], offset, PER_PAGE)
                .expect("ids");
            std::hint::black_box(total);
            ids.len()
        }
    }
}

fn counted_page(store: &Store, app: AppId, filter: Option<Status>, offset: u64) -> usize {
    let statuses = filter.map(|status| vec![status]);
    let (total, ids) = store
        .app_page(app, statuses.as_deref(), offset, PER_PAGE)
        .expect("page");
    std::hint::black_box(total);
    ids.len()
}

/// The admin's view before every app's counts: the total from each app's counts (one point
/// read per app), `offset` keys of the merge skipped.
fn plain_all_page(store: &Store, app: AppId, filter: Option<Status>, offset: u64) -> usize {
    let statuses = filter.map_or(Status::ALL.to_vec(), |status| vec![status]);
    let total = store.status_count(&[app], &statuses).expect("count");
    let ids = store
        .status_ids(&[app], &statuses, offset, PER_PAGE)
        .expect("ids");
    std::hint::black_box(total);
    ids.len()
}

fn counted_all_page(store: &Store, app: AppId, filter: Option<Status>, offset: u64) -> usize {
    let statuses = filter.map(|status| vec![status]);
    let (total, ids) = store
        .every_apps_page(&[app], statuses.as_deref(), offset, PER_PAGE)
        .expect("page");
    std::hint::black_box(total);
    ids.len()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn store_figures(data: &Path, app: AppId) {
    let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(&data.join("store")).expect("engine"));
    let store = Store::new(engine, LogFiles::open(&data.join("logs")).expect("logs"));
    type Read = fn(&Store, AppId, Option<Status>, u64) -> usize;
    let ways: [(&str, &str, Read, Read); 4] = [
        ("store", "plain scan", plain_page, plain_page),
        ("store", "counts", counted_page, plain_page),
        ("store all", "plain merge", plain_all_page, plain_all_page),
        ("store all", "counts", counted_all_page, plain_all_page),
    ];
    for filter in [None, Some(Status::Success)] {
        let label = filter.map_or("".to_string(), |s| format!(" status={s}"));
        for (scope, name, read, plain) in ways {
            // Same pages both ways (checked), then timed.
            let deep = (DEEP_PAGE - 1) * PER_PAGE;
            assert_eq!(
                read(&store, app, filter, deep),
                plain(&store, app, filter, deep)
            );
            let first = time_calls(|| {
                read(&store, app, filter, 0);
            });
            let deep = time_calls(|| {
                read(&store, app, filter, deep);
            });
            println!(
                "{scope}{label}, {name}: page 1 {:.3} ms, page {DEEP_PAGE} {:.3} ms (x{:.1})",
                ms(first),
                ms(deep),
                deep.as_secs_f64() / first.as_secs_f64()
            );
        }
    }
}

async fn http_median(url: &str) -> Duration {
    let client = reqwest::Client::new();
    let mut times = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = Instant::now();
        let response = client
            .get(url)
            .header("Authorization", auth())
            .send()
            .await
            .expect("get");
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.bytes().await.expect("body");
        times.push(started.elapsed());
    }
    median(times)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (app, owner) = rt.block_on(create_app(&data, "deep"));
    let started = Instant::now();
    populate(&data, app, owner);
    println!(
        "populated {DEPLOYMENTS} deployments in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    store_figures(&data, app);
    let server = rt
        .block_on(deployd::server::start(config(&data)))
        .expect("server");
    for (path, name) in [
        ("/v1/apps/deep/deployments", "http"),
        ("/v1/deployments", "http /v1/deployments"),
    ] {
        let base = format!("http://{}{path}?per_page={PER_PAGE}", server.addr);
        for filter in ["", "&status=success"] {
            let first = rt.block_on(http_median(&format!("{base}&page=1{filter}")));
            let deep = rt.block_on(http_median(&format!("{base}&page={DEEP_PAGE}{filter}")));
            println!(
                "{name}{filter}: page 1 {:.2} ms, page {DEEP_PAGE} {:.2} ms (x{:.1})",
                ms(first),
                ms(deep),
                deep.as_secs_f64() / first.as_secs_f64()
            );
        }
    }
    rt.block_on(server.shutdown());
}
