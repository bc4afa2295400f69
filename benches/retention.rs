//! `cargo bench --bench retention`: the costs retention and the filters put on a real server
//! (`deployd::server::start` on a temp dir, driven over HTTP and the push protocol).
//!
//! - `list`: one app with 100,000 finished deployments (`keep_deployments = 0`), written
//!   straight into the store's keyspace the way the writer lays them out (creating them through
//!   the API would take most of an hour of fsyncs); then `GET /v1/apps/{app}/deployments` page 1
//!   and page 5,000 (`per_page` 20), without and with `?status=success`: the median of 20 calls.
//! - `prune`: one app with 10,010 finished deployments of 10 log lines each and
//!   `keep_deployments = 10`: the server's startup pass prunes 10,000 while `deployd bench
//!   ingest` (4 pushers × 50,000 lines of 100 bytes) runs; then the same ingest with nothing to
//!   prune. Prints both ingest figures and how long the prune took.
//!
//! Prints one line per figure; run with `cargo bench --bench retention`.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use time::OffsetDateTime;

use deployd::cli::bench::{self, IngestOptions, Target};
use deployd::config::{Config, FileConfig, Overrides};
use deployd::model::{AppId, Deployment, DeploymentId, Driver, LineNo, LogStream, Pusher, UserId};
use deployd::status::Status;
use deployd::store::codec;
use deployd::store::engine::{BatchOp, Engine, SledEngine};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
/// Engine ops per batch while populating (bounded memory).
const POPULATE_BATCH: usize = 20_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn config(data: &Path, retention: &str) -> Config {
    let file: FileConfig = toml::from_str(&format!("[retention]\n{retention}\n")).expect("toml");
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

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    let body = request
        .send()
        .await
        .expect("request")
        .bytes()
        .await
        .expect("body");
    serde_json::from_slice(&body).expect("json")
}

fn auth() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(":{ADMIN_TOKEN}"))
    )
}

/// Starts a server on `data`, creates `app`, stops; returns the app's id and its owner.
async fn create_app(data: &Path, app: &str) -> (AppId, UserId) {
    let server = deployd::server::start(config(data, "keep_deployments = 0"))
        .await
        .expect("server");
    let url = format!("http://{}", server.addr);
    let response = json_of(
        http()
            .post(format!("{url}/v1/apps"))
            .header("Authorization", auth())
            .header("Content-Type", "application/json")
            .body(serde_json::json!({"app": {"name": app}}).to_string()),
    )
    .await;
    let id: AppId = response["app"]["id"]
        .as_str()
        .expect("app id")
        .parse()
        .expect("uuid");
    let me = json_of(
        http()
            .get(format!("{url}/v1/users/self"))
            .header("Authorization", auth()),
    )
    .await;
    let owner: UserId = me["user"]["id"]
        .as_str()
        .expect("user id")
        .parse()
        .expect("uuid");
    server.shutdown().await;
    (id, owner)
}

/// Writes `count` finished deployments of `app` (and `log_lines` lines of log each) the way
/// the writer lays them out: record, app index, status index, segment index and log file.
fn populate(data: &Path, app: AppId, owner: UserId, count: usize, log_lines: usize) {
    let engine = SledEngine::open(&data.join("store")).expect("engine");
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let text = "deployd bench line: the quick brown fox jumps over the lazy dog 0123456789";
    let mut ops = Vec::new();
    let now = OffsetDateTime::now_utc();
    for _ in 0..count {
        let id = DeploymentId::generate();
        let deployment = Deployment {
            id,
            app_id: app,
            created_at: now,
            status: Status::Success,
            finished_at: Some(now),
            git_ref: "main".into(),
            previous_git_ref: None,
            pusher: Pusher {
                id: owner,
                username: "admin".into(),
                email: "admin@localhost".into(),
            },
            image_size: 0,
            driver: Driver::External,
            last_line: LineNo(0),
            image_kept: false,
        };
        let put = |key: Vec<u8>, value: Vec<u8>| BatchOp::Put(key, Bytes::from(value));
        ops.push(put(
            codec::deployment_key(id),
            codec::encode_deployment(&deployment),
        ));
        ops.push(put(codec::app_deployment_key(app, id), Vec::new()));
        ops.push(put(
            codec::app_status_key(app, Status::Success, id),
            Vec::new(),
        ));
        if log_lines > 0 {
            let lines = (0..log_lines).map(|_| (LogStream::Stdout, text));
            let segment = codec::encode_segment(now, lines, log_lines * text.len());
            std::fs::write(logs.join(format!("{id}.log")), &segment).expect("log file");
            let reference = codec::SegmentRef {
                offset: 0,
                len: segment.len() as u32,
                lines: log_lines as u32,
            };
            ops.push(put(
                codec::segment_key(id, LineNo(1)),
                codec::encode_segment_ref(&reference),
            ));
        }
        if ops.len() >= POPULATE_BATCH {
            engine.apply(std::mem::take(&mut ops)).expect("apply");
        }
    }
    engine.apply(ops).expect("apply");
    engine.sync().expect("sync");
    // The counts the writer would have kept alongside (built as `deployd check --repair` does).
    deployd::store::counts::rebuild(&engine).expect("counts");
}

async fn median_get(url: &str, calls: usize) -> Duration {
    let client = http();
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
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
    times.sort();
    times[calls / 2]
}

fn list(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (app, owner) = rt.block_on(create_app(&data, "deep"));
    let started = Instant::now();
    populate(&data, app, owner, 100_000, 0);
    println!(
        "list: populated 100000 deployments in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let engine = SledEngine::open(&data.join("store")).expect("engine");
    println!(
        "store: {} bytes on disk for 100000 deployments ({} bytes each, without logs)",
        engine.size_on_disk(),
        engine.size_on_disk() / 100_000
    );
    drop(engine);
    let server = rt
        .block_on(deployd::server::start(config(
            &data,
            "keep_deployments = 0",
        )))
        .expect("server");
    let base = format!(
        "http://{}/v1/apps/deep/deployments?per_page=20",
        server.addr
    );
    for filter in ["", "&status=success"] {
        let first = rt.block_on(median_get(&format!("{base}&page=1{filter}"), 20));
        let deep = rt.block_on(median_get(&format!("{base}&page=5000{filter}"), 20));
        println!(
            "list{filter}: page 1 {:.2} ms, page 5000 {:.2} ms (x{:.1})",
            first.as_secs_f64() * 1e3,
            deep.as_secs_f64() * 1e3,
            deep.as_secs_f64() / first.as_secs_f64()
        );
    }
    rt.block_on(server.shutdown());
}

fn prune(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (app, owner) = rt.block_on(create_app(&data, "pruned"));
    populate(&data, app, owner, 10_010, 10);
    let ingest = IngestOptions {
        pushers: 4,
        lines: 50_000,
        line_bytes: 100,
        batch: 1000,
        window: 32,
        frame: bench::FrameKind::Json,
    };
    rt.block_on(async {
        let server = deployd::server::start(config(&data, "keep_deployments = 10"))
            .await
            .expect("server");
        let target = Target {
            url: format!("http://{}", server.addr),
            token: ADMIN_TOKEN.into(),
        };
        let started = Instant::now();
        let url = format!("{}/v1/apps/pruned/deployments?per_page=1", target.url);
        let watcher = tokio::spawn(async move {
            loop {
                let body = json_of(http().get(&url).header("Authorization", auth())).await;
                if body["meta"]["pagination"]["total_count"] == 10 {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let during = bench::ingest(&target, &ingest).await.expect("ingest");
        let pruned_in = watcher.await.expect("watcher");
        let after = bench::ingest(&target, &ingest).await.expect("ingest");
        println!(
            "prune: 10000 deployments pruned in {:.2} s after startup",
            pruned_in.as_secs_f64()
        );
        for (what, report) in [("during the prune", during), ("nothing to prune", after)] {
            println!(
                "ingest {what}: {:.0} lines/s, ack p50 {} us, p99 {} us, max {} us ({:.2} s)",
                report.lines_per_sec,
                report.ack_latency.p50_us,
                report.ack_latency.p99_us,
                report.ack_latency.max_us,
                report.elapsed_secs
            );
        }
        server.shutdown().await;
    });
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks one part.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let rt = runtime();
    if filter.as_deref().is_none_or(|f| "list".contains(f)) {
        list(&rt);
    }
    if filter.as_deref().is_none_or(|f| "prune".contains(f)) {
        prune(&rt);
    }
}
