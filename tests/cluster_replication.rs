//! The write-ahead stream against a real nats-server cluster (`deployd::testing::nats`): the
//! leader's `WalWriter` (fencing, retries, splitting, outages) and the `Replica` (order,
//! resumption), driven through the real `Writer` where a write path is concerned.
//!
//! Each test skips (with a message) when nats-server is missing, except under CI.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use deployd::cluster::replica::Replica;
use deployd::cluster::wal::{ensure_stream, last_sequence, leader_store, WalWriter};
use deployd::cluster::{APPLIED_META, WAL_SUBJECT};
use deployd::hub::Hub;
use deployd::model::{App, AppId, Driver, LineNo, NewLine, Pusher, Token, TokenId, User, UserId};
use deployd::store::engine::{BatchOp, Engine, SledEngine};
use deployd::store::logs::LogFiles;
use deployd::store::replicate::{Entry, Replicate, ReplicateError};
use deployd::store::writer::{WriteError, Writer};
use deployd::store::Store;
use deployd::testing::nats::NatsCluster;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that must happen (never a timing assertion).
const PATIENCE: Duration = Duration::from_secs(60);

async fn connect(cluster: &NatsCluster) -> (async_nats::Client, Context) {
    let addrs: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .split(',')
        .map(|url| url.parse().expect("url"))
        .collect();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(addrs)
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    (client, js)
}

/// A sled store with log files in `dir`, as the server lays them out.
fn local_store(dir: &Path) -> Store {
    Store::new(
        Arc::new(SledEngine::open(dir).expect("sled")),
        LogFiles::open(&dir.join("logs")).expect("logs"),
    )
}

fn wal(js: &Context, node: &str, term: u64, last_seq: u64, max_payload: usize) -> Arc<WalWriter> {
    WalWriter::new(
        js.clone(),
        node.into(),
        term,
        last_seq,
        max_payload,
        tokio::runtime::Handle::current(),
        CancellationToken::new(),
    )
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn user(name: &str) -> (User, Token) {
    let user = User {
        id: UserId::generate(),
        username: name.into(),
        email: format!("{name}@example.com"),
        fullname: String::new(),
        is_admin: false,
        created_at: now(),
    };
    let token = Token {
        id: TokenId::generate(),
        user_id: user.id,
        name: "t".into(),
        created_at: now(),
    };
    (user, token)
}

fn app(name: &str, owner: UserId) -> App {
    App {
        id: AppId::generate(),
        name: name.into(),
        owner,
        git_source: None,
        created_at: now(),
        updated_at: now(),
        last_deployment: None,
    }
}

fn pusher(user: &User) -> Pusher {
    Pusher {
        id: user.id,
        username: user.username.clone(),
        email: user.email.clone(),
    }
}

/// Every engine entry but the local applied sequence (which only says how far a store is).
fn dump(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let applied = deployd::store::replicate::applied_key();
    store
        .engine()
        .range(&[], &[0xFF; 8], false)
        .map(|entry| entry.expect("entry"))
        .filter(|(key, _)| *key != applied)
        .collect()
}

/// Every stored line of a deployment.
fn stored_text(store: &Store, id: deployd::model::DeploymentId) -> String {
    let text: Vec<u8> = store
        .segments_after(id, LineNo(0))
        .flat_map(|s| {
            let (_, bytes) = s.expect("segment");
            bytes.view().expect("parse").text.to_vec()
        })
        .collect();
    String::from_utf8(text).expect("utf-8")
}

/// A fresh replica in `dir`, caught up with the stream.
async fn caught_up_replica(js: &Context, dir: &Path) -> (Store, u64) {
    let store = local_store(dir);
    let mut replica = Replica::open(js.clone(), store.clone()).expect("open replica");
    let applied = replica.catch_up().await.expect("catch up");
    (store, applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_of_a_stored_entry_is_acknowledged_as_a_duplicate_not_refused() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let (_client, js) = connect(&cluster).await;
    ensure_stream(&js, 3).await.expect("stream");
    let publish = |id: &'static str, expected: u64| {
        let js = js.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                expected.to_string().as_str(),
            );
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
            js.publish_with_headers(WAL_SUBJECT, headers, "x".into())
                .await
                .expect("send")
                .await
        }
    };
    let first = publish("n:1:0", 0).await.expect("first");
    assert_eq!((first.sequence, first.duplicate), (1, false));
    // The ack was "lost": the same message again, same id, same expected sequence.
    let retry = publish("n:1:0", 0).await.expect("a retry is not refused");
    assert_eq!((retry.sequence, retry.duplicate), (1, true));
    // A new message with the stale expected sequence is refused.
    let stale = publish("n:1:1", 0)
        .await
        .expect_err("stale expected sequence");
    assert_eq!(
        stale.kind(),
        async_nats::jetstream::context::PublishErrorKind::WrongLastSequence
    );
    assert_eq!(last_sequence(&js).await.expect("last"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_with_a_stale_last_sequence_is_fenced_and_writes_nothing() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let (client, js) = connect(&cluster).await;
    ensure_stream(&js, 3).await.expect("stream");
    let max = client.server_info().max_payload;
    let current = wal(&js, "a", 2, 0, max);
    let put = |k: &str| vec![BatchOp::Put(k.as_bytes().to_vec(), "v".into())];
    let replicate = |w: Arc<WalWriter>, ops: Vec<BatchOp>| {
        tokio::task::spawn_blocking(move || w.replicate(Entry::Ops(&ops)))
    };
    assert_eq!(replicate(current.clone(), put("k1")).await.unwrap(), Ok(1));
    // The deposed writer knew the stream at 0, and has the same node id and term as the
    // current one (so even its message ids collide): it must not write.
    let fenced = CancellationToken::new();
    let deposed = WalWriter::new(
        js.clone(),
        "a".into(),
        2,
        0,
        max,
        tokio::runtime::Handle::current(),
        fenced.clone(),
    );
    let refused = replicate(deposed.clone(), put("k2")).await.unwrap();
    assert!(
        matches!(refused, Err(ReplicateError::Fenced(_))),
        "{refused:?}"
    );
    assert!(fenced.is_cancelled());
    let again = replicate(deposed, put("k3")).await.unwrap();
    assert!(matches!(again, Err(ReplicateError::Fenced(_))), "{again:?}");
    assert_eq!(last_sequence(&js).await.expect("last"), 1);
    // The current writer goes on.
    assert_eq!(replicate(current, put("k4")).await.unwrap(), Ok(2));
}
