//! Cluster mode end to end: real `deployd serve --store nats://…` processes on a real
//! nats-server cluster (`deployd::testing::nats::NatsCluster`), driven over HTTP and WebSocket
//! like any client. Each test skips (with a message) when nats-server is missing, except under
//! CI.
//!
//! Leases are short (2 s) so that takeovers happen within a test; no assertion is on a timing,
//! waits are bounded by [`PATIENCE`] only so that a broken cluster fails instead of hanging.

mod common;
#[path = "common/subscriber.rs"]
mod subscriber;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use common::push;
use common::{eventually, Options, Server, ADMIN_TOKEN};
use deployd::testing::nats::NatsCluster;

/// How long a test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(60);
/// The lease the nodes of these tests hold (`--cluster-lease-secs`).
const LEASE_SECS: &str = "2";

/// Starts one node of the cluster (it prints its address once it serves, as a follower or not).
fn node(cluster: &NatsCluster, id: &str) -> Server {
    Server::start_with(node_options(cluster, id))
}

fn node_options(cluster: &NatsCluster, id: &str) -> Options {
    Options {
        args: [
            "--store",
            &cluster.urls(),
            "--node-id",
            id,
            "--cluster-lease-secs",
            LEASE_SECS,
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    }
}

/// The node's own view (`/healthz` is answered by every node itself).
async fn cluster_view(server: &Server) -> Option<Value> {
    let response = reqwest::get(format!("{}/healthz", server.url)).await.ok()?;
    let body: Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
    Some(body["cluster"].clone())
}

/// Waits until one of `nodes` leads and every other one follows it; returns the leader's index.
/// On a timeout it panics with every node's view and the end of its log.
async fn leader_of(nodes: &[&Server]) -> usize {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut views = Vec::new();
        for node in nodes {
            views.push(cluster_view(node).await);
        }
        if let Some(leader) = agreed_leader(&views) {
            return leader;
        }
        if std::time::Instant::now() >= deadline {
            let mut report = String::new();
            for (node, view) in nodes.iter().zip(&views) {
                let log = node.log();
                let mut tail: Vec<&str> = log.lines().rev().take(40).collect();
                tail.reverse();
                report.push_str(&format!(
                    "\n--- {}: {view:?}\n{}",
                    node.url,
                    tail.join("\n")
                ));
            }
            panic!("no leader followed by every node within {PATIENCE:?}:{report}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The index of the node every view names as leader, when one leads and the others follow it.
fn agreed_leader(views: &[Option<Value>]) -> Option<usize> {
    let views: Vec<&Value> = views.iter().map(Option::as_ref).collect::<Option<_>>()?;
    let leader = views.iter().position(|v| v["role"] == "leader")?;
    let id = &views[leader]["node_id"];
    views
        .iter()
        .all(|v| {
            &v["leader"]["node_id"] == id && (v["role"] == "leader" || v["role"] == "follower")
        })
        .then_some(leader)
}

/// `app` as the leader returned it, with its stream link pointing at `node` instead.
fn app_via(app: &Value, leader: &Server, node: &Server) -> Value {
    let mut app = app.clone();
    let link = app["links"]["deployments_stream"]
        .as_str()
        .expect("stream link")
        .replace(&leader.addr, &node.addr);
    app["links"]["deployments_stream"] = json!(link);
    app
}

async fn output(server: &Server, app: &str, id: &str) -> String {
    let (status, _, text) = server
        .admin()
        .get_text(&format!("/v1/apps/{app}/deployments/{id}/output"))
        .await;
    assert_eq!(status, 200, "{text}");
    text
}

async fn deployment(server: &Server, app: &str, id: &str) -> Value {
    let (status, body) = server
        .admin()
        .get(&format!("/v1/apps/{app}/deployments/{id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["deployment"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_on_one_node_is_seen_live_once_and_in_order_by_subscribers_on_the_others() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let a = node(&cluster, "node-a");
    let b = node(&cluster, "node-b");
    let c = node(&cluster, "node-c");
    let nodes = [&a, &b, &c];
    let leader = nodes[leader_of(&nodes).await];
    // The pusher talks to a follower when there is one (node-a most likely leads).
    let pusher_node = nodes
        .iter()
        .find(|n| n.url != leader.url)
        .expect("a follower");
    let app = pusher_node.create_app(&pusher_node.admin(), "web").await;
    let mut subscribers = Vec::new();
    for node in nodes {
        let app = app_via(&app, leader, node);
        subscribers.push(subscriber::subscribe(&app, ADMIN_TOKEN, json!({})).await);
    }
    let mut pusher = push::start(&pusher_node.url, "web", ADMIN_TOKEN, "main").await;
    let id = pusher.id();
    let mut sent = Vec::new();
    for batch in 0..5 {
        let lines: Vec<String> = (0..20).map(|i| format!("line {batch}-{i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        pusher.logs(&refs).await;
        sent.extend(lines);
    }
    pusher.finish("success").await;
    for ws in &mut subscribers {
        let events = subscriber::events_until_status(ws, &id, "success").await;
        assert_eq!(subscriber::log_contents(&events, &id), sent);
    }
    // `/output` and the REST reads are the same through every node.
    let expected = output(leader, "web", &id).await;
    assert_eq!(expected.lines().count(), sent.len(), "{expected}");
    let record = deployment(leader, "web", &id).await;
    assert_eq!(record["status"], "success");
    for node in nodes {
        assert_eq!(output(node, "web", &id).await, expected);
        assert_eq!(deployment(node, "web", &id).await, record);
        let (status, list) = node.admin().get("/v1/apps/web/deployments").await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["deployments"][0]["id"], json!(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_of_one_app_queue_across_nodes_one_past_queued_at_a_time() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let a = node(&cluster, "node-a");
    let b = node(&cluster, "node-b");
    let nodes = [&a, &b];
    leader_of(&nodes).await;
    a.create_app(&a.admin(), "api").await;
    let mut first = push::start(&a.url, "api", ADMIN_TOKEN, "one").await;
    let second = push::start(&b.url, "api", ADMIN_TOKEN, "two").await;
    assert_eq!(
        first.deployment["status"], "building",
        "{}",
        first.deployment
    );
    assert_eq!(
        second.deployment["status"], "queued",
        "{}",
        second.deployment
    );
    first.finish("success").await;
    let promoted = eventually(PATIENCE, || async {
        let d = deployment(&b, "api", &second.id()).await;
        (d["status"] != "queued").then_some(d)
    })
    .await;
    assert_eq!(promoted["status"], "building", "{promoted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_is_killed_mid_push_another_node_ends_its_deployments_once_and_the_queue_moves_on(
) {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let mut a = node(&cluster, "node-a");
    let b = node(&cluster, "node-b");
    let c = node(&cluster, "node-c");
    let leader = leader_of(&[&a, &b, &c]).await;
    assert_eq!(leader, 0, "the first node started leads");
    a.create_app(&a.admin(), "shop").await;
    let mut pusher = push::start(&b.url, "shop", ADMIN_TOKEN, "main").await;
    let running = pusher.id();
    let waiting = push::start(&c.url, "shop", ADMIN_TOKEN, "next").await;
    assert_eq!(waiting.deployment["status"], "queued");
    let acked: Vec<String> = (0..30).map(|i| format!("acked {i}")).collect();
    let refs: Vec<&str> = acked.iter().map(String::as_str).collect();
    pusher.logs(&refs).await;

    a.kill();
    let nodes = [&b, &c];
    let new_leader = nodes[leader_of(&nodes).await];
    let ended = eventually(PATIENCE, || async {
        let d = deployment(new_leader, "shop", &running).await;
        (d["status"] != "building").then_some(d)
    })
    .await;
    assert!(
        ended["status"] == "aborted" || ended["status"] == "timeout-error",
        "{ended}"
    );
    let text = output(new_leader, "shop", &running).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..acked.len()], refs.as_slice(), "{text}");
    assert_eq!(lines.len(), acked.len() + 1, "one line says why: {text}");
    // The queued deployment left the queue; its pusher's socket ended with the dead leader
    // too, so it is ended like the running one, never left waiting.
    let next = eventually(PATIENCE, || async {
        let d = deployment(new_leader, "shop", &waiting.id()).await;
        (d["status"] != "queued" && d["status"] != "building").then_some(d)
    })
    .await;
    assert_eq!(next["status"], "aborted", "{next}");
    // Nothing is stuck: a new deployment through the new leader starts at once.
    let fresh = push::start(&new_leader.url, "shop", ADMIN_TOKEN, "again").await;
    assert_eq!(
        fresh.deployment["status"], "building",
        "{}",
        fresh.deployment
    );
    // The end was written once: both nodes agree, and the output did not grow a second line.
    for node in nodes {
        assert_eq!(output(node, "shop", &running).await, text);
        assert_eq!(
            deployment(node, "shop", &running).await["status"],
            ended["status"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_nats_server_loses_no_acknowledged_line_and_the_service_continues() {
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    // A lease longer than JetStream's re-election after a lost server: with a 2 s lease the
    // leader may not renew in time and step down (exit 4), which is another test's subject.
    let long_lease = |id| {
        let mut options = node_options(&cluster, id);
        let last = options.args.len() - 1;
        options.args[last] = "15".into();
        Server::start_with(options)
    };
    let a = long_lease("node-a");
    let b = long_lease("node-b");
    leader_of(&[&a, &b]).await;
    a.create_app(&a.admin(), "svc").await;
    let mut pusher = push::start(&b.url, "svc", ADMIN_TOKEN, "main").await;
    let id = pusher.id();
    let mut acked = Vec::new();
    pusher.logs(&["before 1", "before 2"]).await;
    acked.extend(["before 1", "before 2"]);
    // The stream has three copies (`[cluster] replicas` = 3, not clamped on 3 servers): the
    // loss below leaves a quorum.
    assert_eq!(wal_replicas(&cluster).await, 3);
    cluster.kill(1);
    // Frames may be refused (`unavailable`, nothing changed) while JetStream elects new
    // stream leaders: a pusher sends them again; whatever was acknowledged must be there.
    let ack = send_until_taken(
        &mut pusher.socket,
        json!({"type": "logs", "batch": 2, "lines": ["after 1", "after 2"]}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    acked.extend(["after 1", "after 2"]);
    for status in ["pushing", "starting", "success"] {
        let answer = send_until_taken(
            &mut pusher.socket,
            json!({"type": "status", "status": status}),
        )
        .await;
        assert_eq!(answer, json!({"type": "status", "status": status}));
    }
    for node in [&a, &b] {
        let text = output(node, "svc", &id).await;
        assert_eq!(text.lines().collect::<Vec<_>>(), acked, "{text}");
    }
}

/// Sends `frame` until the answer is not an `unavailable` refusal; returns that answer.
async fn send_until_taken(socket: &mut push::Socket, frame: Value) -> Value {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
        let answer = push::next_json(socket).await.expect("an answer");
        if answer["type"] != "error" || answer["code"] != "unavailable" {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The copies of the write-ahead stream, as JetStream reports them.
async fn wal_replicas(cluster: &NatsCluster) -> usize {
    let servers: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .split(',')
        .map(|url| url.parse().expect("url"))
        .collect();
    let js = async_nats::jetstream::new(async_nats::connect(servers).await.expect("connect"));
    let mut wal = js
        .get_stream("DEPLOYD_WAL")
        .await
        .expect("the stream exists");
    wal.info().await.expect("info").config.num_replicas
}

/// Regression: CI's cold run created the write-ahead stream with 2 copies on a 3-server
/// cluster: the node counted the servers in the gossip of the one it connected to, where the
/// third (still joining) was missing, and clamped `[cluster] replicas` to that. JetStream now
/// says whether the copies fit; a node waits for a joining server instead of asking for less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_a_nats_server_is_still_joining_keeps_every_replica_asked_for() {
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    // Two of three servers run (a quorum): the gossip names two, JetStream has no third peer.
    cluster.kill(2);
    let options = node_options(&cluster, "node-a");
    let starting = std::thread::spawn(move || Server::start_with(options));
    std::thread::sleep(Duration::from_secs(2));
    cluster.restart(2);
    let a = starting.join().expect("the node starts");
    leader_of(&[&a]).await;
    assert_eq!(wal_replicas(&cluster).await, 3, "{}", a.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_with_what_was_written_while_it_was_down() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let a = node(&cluster, "node-a");
    let mut b = node(&cluster, "node-b");
    leader_of(&[&a, &b]).await;
    a.create_app(&a.admin(), "early").await;
    b.kill();
    a.create_app(&a.admin(), "late").await;
    let b = b.start_again();
    leader_of(&[&a, &b]).await;
    // Reads go to the leader; the replica is what a takeover starts from: stop the leader
    // cleanly and read from b once it leads.
    let mut a = a;
    assert_eq!(a.stop(), Some(0), "{}", a.log());
    leader_of(&[&b]).await;
    for name in ["early", "late"] {
        let (status, body) = b.admin().get(&format!("/v1/apps/{name}")).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
}

#[test]
fn an_unreachable_cluster_store_at_start_exits_3_with_the_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let store = format!("nats://127.0.0.1:{port}");
    let output = Command::new(common::deployd_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--node-id",
            "x",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run deployd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "deployd: cannot reach the cluster store at {store}: "
        )),
        "{stderr}"
    );
}

#[test]
fn a_store_that_is_not_nats_urls_is_refused_at_start_with_exit_2() {
    let tmp = tempfile::tempdir().expect("tmp");
    let output = Command::new(common::deployd_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "redis://127.0.0.1:6379",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run deployd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nats://HOST:PORT"), "{stderr}");
    assert!(!tmp.path().join("data").exists(), "nothing is created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_503_with_retry_after_while_no_leader_is_known() {
    let Some(cluster) = NatsCluster::start(1) else {
        return;
    };
    let a = node(&cluster, "node-a");
    let mut b = node(&cluster, "node-b");
    leader_of(&[&a, &b]).await;
    // The leader dies: until b takes over, b either forwards to a dead leader or knows none;
    // both are a 503 the client retries, never a hang or a 502.
    drop(a);
    let response = reqwest::get(format!("{}/v1/apps", b.url))
        .await
        .expect("request");
    let status = response.status().as_u16();
    if status == 503 {
        assert_eq!(response.headers()["retry-after"], "1");
        let body: Value =
            serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
        assert!(
            body["error"]
                .as_str()
                .expect("error")
                .starts_with("unavailable: "),
            "{body}"
        );
    } else {
        // b already leads: it answers itself (401 without credentials).
        assert_eq!(status, 401);
    }
    leader_of(&[&b]).await;
    assert_eq!(b.stop(), Some(0), "{}", b.log());
}
