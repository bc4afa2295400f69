//! `deployd migrate --from DATA_DIR --to nats://…` end to end: a real single node's data
//! directory (users, an app, deployments with logs, an uploaded source, a build cache) is copied
//! into a real 3-server nats cluster; a `Replica` caught up from the stream plus the files
//! mirror, started as a server of its own, answers the same as the original; and the refusals
//! (a running server on the directory, a cluster that already has data, no cluster at all).
//!
//! Skipped (with a message) when nats-server is missing, except under CI.

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use common::{deployd_bin, push, Server};
use deployd::cluster::files::Mirror;
use deployd::cluster::replica::Replica;
use deployd::store::engine::SledEngine;
use deployd::store::logs::LogFiles;
use deployd::store::Store;
use deployd::testing::nats::NatsCluster;
use serde_json::{json, Value};

/// Lines of the big deployment: about 630 KB of log, more than two write-ahead entries.
const BIG_LOG_LINES: usize = 3000;

async fn migrate(from: &Path, to: &str) -> Output {
    tokio::process::Command::new(deployd_bin())
        .args(["migrate", "--from"])
        .arg(from)
        .args(["--to", to])
        .output()
        .await
        .expect("run deployd migrate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn start_cluster() -> Option<NatsCluster> {
    tokio::task::spawn_blocking(|| NatsCluster::start(3))
        .await
        .expect("fixture")
}

async fn jetstream(cluster: &NatsCluster) -> async_nats::jetstream::Context {
    let client = async_nats::connect(cluster.url(1)).await.expect("connect");
    async_nats::jetstream::new(client)
}

/// What a client sees of the data: the user, the apps, the deployments, one's output, and the
/// newest deployment's (big) output.
async fn reads(server: &Server, token: &str, deployment: &str) -> Vec<(u16, Value)> {
    let client = server.client(token);
    let mut out = Vec::new();
    // Links name the server that answers: the same data through another server differs there.
    let anywhere = |body: Value| -> Value {
        serde_json::from_str(&body.to_string().replace(&server.addr, "SERVER")).expect("json")
    };
    for path in [
        "/v1/users/self".to_owned(),
        "/v1/apps".to_owned(),
        "/v1/apps/web".to_owned(),
        "/v1/apps/web/deployments".to_owned(),
        format!("/v1/apps/web/deployments/{deployment}"),
    ] {
        let (status, body) = client.get(&path).await;
        out.push((status, anywhere(body)));
    }
    let (status, _, output) = client
        .get_text(&format!("/v1/apps/web/deployments/{deployment}/output"))
        .await;
    out.push((status, Value::String(output)));
    let (_, list) = client.get("/v1/apps/web/deployments").await;
    let newest = list["deployments"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, _, output) = client
        .get_text(&format!("/v1/apps/web/deployments/{newest}/output"))
        .await;
    out.push((status, Value::String(output)));
    out
}

/// A single node with something of everything; returns (server, user token, a deployment id,
/// the uploaded source's relative path).
async fn populated_node() -> (Server, String, String, String) {
    let server = Server::start();
    let token = server.create_user("alice").await;
    let client = server.client(&token);
    let app = server.create_app(&client, "web").await;
    let mut first = push::start(&server.url, "web", &token, "v1").await;
    first.logs(&["building v1", "ünïcode line"]).await;
    first.logs(&["second batch"]).await;
    first.finish("success").await;
    let id = first.id();
    let mut second = push::start(&server.url, "web", &token, "v2").await;
    second.logs(&["v2 fails"]).await;
    second.finish("crashed-error").await;
    // A log file bigger than one write-ahead entry: copied in several, at their offsets.
    let mut third = push::start(&server.url, "web", &token, "v3").await;
    let lines: Vec<String> = (0..BIG_LOG_LINES)
        .map(|n| format!("line {n:05} {}", "x".repeat(200)))
        .collect();
    for batch in lines.chunks(500) {
        let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
        third.logs(&batch).await;
    }
    third.finish("success").await;

    let (status, body) = client.post("/v1/sources", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let upload = body["source"]["upload_url"]
        .as_str()
        .expect("url")
        .to_owned();
    let resp = reqwest::Client::new()
        .put(&upload)
        .body(b"a source archive".to_vec())
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    let source_id = upload
        .split("/v1/sources/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("source id");
    let source = format!("sources/{source_id}.tar.gz");
    assert!(server.data.join(&source).is_file());
    // A build cache, as the executor leaves one (DATA/cache/<app id>/).
    let cache = server
        .data
        .join("cache")
        .join(app["id"].as_str().expect("app id"));
    std::fs::create_dir_all(cache.join("deps")).expect("cache dir");
    std::fs::write(cache.join("deps/lib.bin"), b"cached").expect("cache file");
    (server, token, id, source)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_store_read_back_by_a_replica_answers_like_the_original() {
    let Some(cluster) = start_cluster().await else {
        return;
    };
    let (mut original, token, deployment, source) = populated_node().await;
    let before = reads(&original, &token, &deployment).await;
    assert_eq!(before[5].0, 200);
    assert_eq!(
        before[6].1.as_str().unwrap().lines().count(),
        BIG_LOG_LINES,
        "the big deployment's output"
    );
    assert!(
        before[5].1.as_str().unwrap().contains("ünïcode line"),
        "{}",
        before[5].1
    );
    original.stop();

    let output = migrate(&original.data, &cluster.urls()).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    eprintln!("{printed}");
    assert!(printed.contains("log files"), "{printed}");
    assert!(printed.contains(" 2 files ("), "{printed}");

    // A node's view of the cluster: a fresh data directory, the stream applied, the files
    // mirrored; then served by a single node on it.
    let mut replica_node = Server::start();
    replica_node.stop();
    std::fs::remove_dir_all(&replica_node.data).expect("empty the replica's data dir");
    std::fs::create_dir_all(&replica_node.data).expect("data dir");
    let js = jetstream(&cluster).await;
    {
        let engine = SledEngine::open(&replica_node.data.join("store")).expect("sled");
        let logs = LogFiles::open(&replica_node.data.join("logs")).expect("logs");
        let local = Store::new(Arc::new(engine), logs);
        let mut replica = Replica::open(js.clone(), local).expect("replica");
        let applied = replica.catch_up().await.expect("catch up");
        assert!(applied > 0);
        let mirror = Mirror::open(&js, replica_node.data.clone())
            .await
            .expect("mirror");
        let counts = mirror.catch_up().await.expect("mirror catch up");
        assert_eq!(counts.written, 2, "{counts:?}");
    }
    assert_eq!(
        std::fs::read(replica_node.data.join(&source)).expect("source mirrored"),
        b"a source archive"
    );
    let replica_node = replica_node.start_again();
    let after = reads(&replica_node, &token, &deployment).await;
    assert_eq!(after, before);

    // The original restarted reads the same too (the migration only read it).
    let original = original.start_again();
    assert_eq!(reads(&original, &token, &deployment).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_a_directory_a_server_runs_on_and_a_cluster_that_has_data() {
    let Some(cluster) = start_cluster().await else {
        return;
    };
    let mut server = Server::start();
    server.create_user("bob").await;
    let running = migrate(&server.data, &cluster.urls()).await;
    assert_eq!(running.status.code(), Some(2), "{}", text(&running.stderr));
    let message = text(&running.stderr);
    assert!(message.contains("another deployd is running"), "{message}");
    assert!(message.contains("stop it before migrating"), "{message}");
    let js = jetstream(&cluster).await;
    assert_eq!(
        deployd::cluster::wal::last_sequence(&js).await.unwrap_or(0),
        0,
        "nothing was written"
    );

    server.stop();
    let first = migrate(&server.data, &cluster.urls()).await;
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let written = deployd::cluster::wal::last_sequence(&js)
        .await
        .expect("seq");
    assert!(written > 0);

    let again = migrate(&server.data, &cluster.urls()).await;
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    let message = text(&again.stderr);
    assert!(message.contains("already holds"), "{message}");
    assert_eq!(
        deployd::cluster::wal::last_sequence(&js)
            .await
            .expect("seq"),
        written,
        "a refused migration appends nothing"
    );
}

#[tokio::test]
async fn migrate_into_an_unreachable_cluster_exits_3_and_a_missing_directory_exits_2() {
    let server = {
        let mut server = Server::start();
        server.stop();
        server
    };
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let output = migrate(&server.data, &url).await;
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let message = text(&output.stderr);
    assert!(
        message.contains(&format!("cannot reach the cluster store at {url}")),
        "{message}"
    );

    let missing = server.root().join("nothing-here");
    let output = migrate(&missing, &url).await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("not a deployd data directory"));
}
