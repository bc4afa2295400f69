//! `deployd serve --store nats://…`: one cluster node's life.
//!
//! Connect (unreachable: exit [`EXIT_UNREACHABLE`]), make sure the write-ahead stream and the
//! buckets exist, open the local data directory, listen, and follow: apply the stream into the
//! local store and forward every request to the leader. On winning the lease: apply the stream
//! to its end, start the single-node server on the leader's store (whose writer appends through
//! the WAL; its start-up recovery ends what the dead leader left), and swap the listener's
//! router to it. A node that loses the lease or is fenced exits at once with
//! [`EXIT_DEPOSED`] (crash-only: its supervisor restarts it as a follower); SIGTERM on the
//! leader shuts down as a single node does, then releases the lease.
//!
//! Decides roles and process exits; never writes the store itself (the replica and the writer
//! do).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, Context};
use tokio_util::sync::CancellationToken;

use super::files::{self, Mirror, ObjectFiles};
use super::forward::{self, NodeView, Role, Switch};
use super::lease::Lease;
use super::replica::Replica;
use super::wal::{self, WalWriter};
use super::{ClusterError, NODES_BUCKET};
use crate::config::{ClusterConfig, Config};
use crate::listener::ConnectionRules;
use crate::server::{self, Core};

/// Exit code: the cluster store could not be reached at start.
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit code: this node lost the lease or was fenced (another node writes now).
pub const EXIT_DEPOSED: i32 = 4;
/// Exit code: anything else that stops the node (a data directory, a gap in the stream).
pub const EXIT_FAILED: i32 = 1;

/// How long connecting may take before the store counts as unreachable: long enough for a
/// server on another continent, short enough that a typo in `--store` fails at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before a follower retries the stream after the engine went away.
const FOLLOW_RETRY: Duration = Duration::from_millis(500);

/// Runs the node until `signal` (graceful) or a fatal event; returns the exit code.
pub async fn run(mut config: Config, signal: impl Future<Output = ()>) -> i32 {
    let Some(cluster) = config.cluster.clone() else {
        eprintln!("deployd: cluster mode needs store = nats://…");
        return EXIT_FAILED;
    };
    let listener = match server::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => return fail(&error),
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => return fail(&error),
    };
    config.bound_to(addr);
    let url = cluster
        .advertise_url
        .clone()
        .unwrap_or_else(|| config.public_url.clone());
    let client = match connect(&cluster).await {
        Ok(client) => client,
        Err(cause) => {
            eprintln!(
                "deployd: cannot reach the cluster store at {}: {cause}",
                cluster.servers_list()
            );
            return EXIT_UNREACHABLE;
        }
    };
    let js = jetstream::new(client.clone());
    let wanted = wal::replicas_for(&client, cluster.replicas);
    let setup = async {
        // The buckets get as many copies as the stream JetStream could place.
        let replicas = wal::ensure_stream(&js, wanted).await?;
        let lease = Lease::open(
            js.clone(),
            cluster.node_id.clone(),
            url.clone(),
            cluster.lease,
            replicas,
        )
        .await?;
        let nodes = nodes_bucket(&js, cluster.lease, replicas).await?;
        let bucket = files::ensure_bucket(&js, replicas)
            .await
            .map_err(|error| ClusterError::Engine(error.to_string()))?;
        let mirror = Mirror::open(&js, config.data_dir.clone())
            .await
            .map_err(|error| ClusterError::Engine(error.to_string()))?;
        Ok::<_, ClusterError>((lease, nodes, bucket, mirror))
    };
    let (lease, nodes, bucket, mirror) = match setup.await {
        Ok(parts) => parts,
        Err(ClusterError::Unreachable(cause)) => {
            eprintln!(
                "deployd: cannot reach the cluster store at {}: {cause}",
                cluster.servers_list()
            );
            return EXIT_UNREACHABLE;
        }
        Err(error) => return fail(&error),
    };
    let local = match server::open_local(&config).await {
        Ok(local) => local,
        Err(error) => return fail(&error),
    };
    let mut replica = match Replica::open(js.clone(), local.store.clone()) {
        Ok(replica) => replica,
        Err(error) => return fail(&error),
    };

    let node_stop = CancellationToken::new();
    let view = NodeView::new(cluster.node_id.clone(), node_stop.clone());
    view.set_applied(replica.applied());
    let switch = Switch::new(forward::router(view.clone()));
    let rules = ConnectionRules::resolve(&config.server);
    let serving = tokio::spawn(crate::listener::serve(
        listener,
        switch.router(),
        rules,
        node_stop.clone(),
    ));
    announce(nodes, view.clone(), url.clone(), cluster.lease);
    tracing::info!(node = %cluster.node_id, %url, "cluster node following");
    {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "deployd listening on http://{addr}");
        let _ = stdout.flush();
    }
    tokio::pin!(signal);

    // Following: apply the stream and mirror the files while waiting for the lease.
    let follow_stop = CancellationToken::new();
    let mirroring = {
        let mirror = mirror.clone();
        let stop = follow_stop.clone();
        tokio::spawn(async move { mirror.run(stop).await })
    };
    let following = {
        let view = view.clone();
        let stop = follow_stop.clone();
        tokio::spawn(async move {
            let result = follow(&mut replica, &view, &stop).await;
            (replica, result)
        })
    };
    let acquiring = lease.acquire(|leader| view.set_leader(leader), &node_stop);
    tokio::pin!(following);
    let held = tokio::select! {
        held = acquiring => held,
        () = &mut signal => None,
        joined = &mut following => {
            let error = match joined {
                Ok((_, Err(error))) => error.to_string(),
                Ok((_, Ok(()))) => "the replica stopped".to_owned(),
                Err(error) => error.to_string(),
            };
            tracing::error!(%error, "applying the write-ahead stream failed; stopping");
            eprintln!("deployd: applying the write-ahead stream failed: {error}");
            node_stop.cancel();
            let _ = serving.await;
            return EXIT_FAILED;
        }
    };
    let Some(held) = held else {
        tracing::info!("shutting down (follower)");
        follow_stop.cancel();
        node_stop.cancel();
        let _ = following.await;
        let _ = mirroring.await;
        let _ = serving.await;
        return 0;
    };

    // Taking over.
    let term = held.value().term;
    tracing::info!(node = %cluster.node_id, term, "won the leader lease; catching up");
    view.set_role(Role::TakingOver);
    view.set_leader(Some(held.value().clone()));
    let fenced = CancellationToken::new();
    let _renewal = held.spawn_renewal(fenced.clone());
    follow_stop.cancel();
    let mut replica = match following.await {
        Ok((replica, Ok(()))) => replica,
        Ok((_, Err(error))) => return deposed_or_failed(&fenced, &error),
        Err(error) => return fail(&error),
    };
    let applied = loop {
        match replica.catch_up().await {
            Ok(applied) => break applied,
            Err(ClusterError::Unreachable(cause)) if !fenced.is_cancelled() => {
                tracing::warn!(%cause, "catching up before leading; retrying");
                tokio::time::sleep(FOLLOW_RETRY).await;
            }
            Err(error) => return deposed_or_failed(&fenced, &error),
        }
    };
    view.set_applied(applied);
    drop(replica);
    // Every file a committed record refers to was put before the commit: have them all.
    let _ = mirroring.await;
    loop {
        match mirror.catch_up().await {
            Ok(counts) => {
                tracing::info!(?counts, "files caught up before leading");
                break;
            }
            Err(error) if !fenced.is_cancelled() => {
                tracing::warn!(%error, "catching up the files before leading; retrying");
                tokio::time::sleep(FOLLOW_RETRY).await;
            }
            Err(error) => {
                return deposed_or_failed(&fenced, &ClusterError::Engine(error.to_string()))
            }
        }
    }
    let max_payload = client.server_info().max_payload;
    let writer = WalWriter::new(
        js.clone(),
        cluster.node_id.clone(),
        term,
        applied,
        max_payload,
        tokio::runtime::Handle::current(),
        fenced.clone(),
    );
    let files = Arc::new(ObjectFiles::new(bucket, config.data_dir.clone()));
    let store = wal::leader_store(local.store.clone(), writer).with_files(files);
    let core = tokio::select! {
        core = Core::start(config, store, local) => core,
        () = fenced.cancelled() => return deposed(),
    };
    let core = match core {
        Ok(core) => core,
        Err(error) => {
            if fenced.is_cancelled() {
                return deposed();
            }
            held.release().await;
            return fail(&error);
        }
    };
    view.set_role(Role::Leader);
    switch.set(forward::leader_router(view.clone(), core.router()));
    tracing::info!(node = %cluster.node_id, term, applied, "leading the cluster");

    tokio::select! {
        () = fenced.cancelled() => deposed(),
        () = &mut signal => {
            tracing::info!("shutting down (leader)");
            let sessions = core.sessions_stop();
            core.stop_token().cancel();
            sessions.cancelled().await;
            node_stop.cancel();
            let _ = serving.await;
            // The switch holds the last router clone: the writer drains only once it is gone.
            switch.set(forward::router(view.clone()));
            core.finish().await;
            // Only after the last commit: a follower taking over at once sees all of it.
            held.release().await;
            0
        }
    }
}

/// Applies the stream until `stop`, retrying while the engine is away; a gap or a local
/// failure ends it.
async fn follow(
    replica: &mut Replica,
    view: &NodeView,
    stop: &CancellationToken,
) -> Result<(), ClusterError> {
    loop {
        let result = async {
            let applied = replica.catch_up().await?;
            view.set_applied(applied);
            replica.follow(stop.clone()).await
        }
        .await;
        view.set_applied(replica.applied());
        match result {
            Ok(()) => return Ok(()),
            Err(ClusterError::Unreachable(cause)) => {
                tracing::warn!(%cause, "following the write-ahead stream; retrying");
                tokio::select! {
                    () = tokio::time::sleep(FOLLOW_RETRY) => {}
                    () = stop.cancelled() => return Ok(()),
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// Connects to the first reachable server of the list, within [`CONNECT_TIMEOUT`].
async fn connect(cluster: &ClusterConfig) -> Result<async_nats::Client, String> {
    let servers = cluster
        .servers
        .iter()
        .map(|url| url.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    let options = async_nats::ConnectOptions::new()
        .name(format!("deployd {}", cluster.node_id))
        .connection_timeout(CONNECT_TIMEOUT);
    match tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        async_nats::connect_with_options(servers, options),
    )
    .await
    {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// The bucket where nodes announce themselves, entries expiring after a lease.
async fn nodes_bucket(
    js: &Context,
    lease: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(NODES_BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: NODES_BUCKET.to_owned(),
        description: "deployd nodes: id → URL, role, applied sequence".to_owned(),
        history: 1,
        max_age: lease,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|error| ClusterError::Engine(error.to_string()))
}

/// Puts this node's entry every lease/3 for the life of the process (operators list the
/// cluster with `nats kv ls deployd_nodes`).
fn announce(nodes: kv::Store, view: Arc<NodeView>, url: String, lease: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(lease / 3);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = view.shutdown.cancelled() => return,
            }
            let entry = serde_json::json!({
                "url": url,
                "role": view.role().name(),
                "applied_sequence": view.applied(),
            });
            if let Err(error) = nodes.put(&view.node_id, entry.to_string().into()).await {
                tracing::debug!(%error, "announcing this node");
            }
        }
    });
}

fn fail(error: &dyn std::fmt::Display) -> i32 {
    tracing::error!(%error, "cluster node stopped");
    eprintln!("deployd: {error}");
    EXIT_FAILED
}

/// Another node writes now: exit without touching anything (crash-only). The process exits
/// from here: shutting down gracefully would try to commit the ends of this node's sessions.
fn deposed() -> i32 {
    tracing::error!("this node is no longer the cluster leader; exiting to restart as a follower");
    eprintln!(
        "deployd: this node is no longer the cluster leader (lease lost or fenced); exiting \
         with code {EXIT_DEPOSED} so that its supervisor restarts it as a follower"
    );
    std::process::exit(EXIT_DEPOSED);
}

fn deposed_or_failed(fenced: &CancellationToken, error: &ClusterError) -> i32 {
    if fenced.is_cancelled() || matches!(error, ClusterError::Fenced { .. }) {
        deposed()
    } else {
        fail(error)
    }
}
