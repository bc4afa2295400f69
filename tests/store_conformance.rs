//! The conformance suite for cluster mode: the same scripted domain operations go
//! through the real `Writer` on (a) the embedded store and (b) the leader's store over a real
//! 3-node nats cluster (`leader_store`); then (c) a fresh `Replica` is caught up from the
//! stream. The domain reads must be the same on all three (ids and timestamps the writer
//! makes up are left out of the comparison between (a) and (b); (b) and (c) must be equal
//! record for record and byte for byte).
//!
//! Skips (with a message) when nats-server is missing, except under CI.

use std::path::Path;
use std::sync::Arc;

use async_nats::jetstream::{self, Context};
use deployd::cluster::replica::Replica;
use deployd::cluster::wal::{ensure_stream, last_sequence, leader_store, WalWriter};
use deployd::hub::Hub;
use deployd::model::{
    App, AppId, DeploymentId, Driver, LineNo, NewLine, Pusher, Token, TokenId, User, UserId,
};
use deployd::status::Status;
use deployd::store::engine::SledEngine;
use deployd::store::logs::LogFiles;
use deployd::store::writer::{Target, Writer};
use deployd::store::Store;
use deployd::testing::nats::NatsCluster;
use tokio_util::sync::CancellationToken;

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn local_store(dir: &Path) -> Store {
    Store::new(
        Arc::new(SledEngine::open(dir).expect("sled")),
        LogFiles::open(&dir.join("logs")).expect("logs"),
    )
}

async fn connect(cluster: &NatsCluster) -> (async_nats::Client, Context) {
    let addrs: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .split(',')
        .map(|url| url.parse().expect("url"))
        .collect();
    let client = async_nats::ConnectOptions::new()
        .connect(addrs)
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    (client, js)
}

/// The fixed inputs of the script (the same records go to every store).
struct Cast {
    owner: (User, Token),
    other: (User, Token),
    second_token: Token,
    apps: Vec<App>,
}

impl Cast {
    fn new() -> Cast {
        let person = |name: &str| {
            let user = User {
                id: UserId::generate(),
                username: name.into(),
                email: format!("{name}@example.com"),
                fullname: format!("{name} person"),
                is_admin: false,
                created_at: now(),
            };
            let token = Token {
                id: TokenId::generate(),
                user_id: user.id,
                name: "first".into(),
                created_at: now(),
            };
            (user, token)
        };
        let owner = person("owner");
        let other = person("other");
        let second_token = Token {
            id: TokenId::generate(),
            user_id: owner.0.id,
            name: "second".into(),
            created_at: now(),
        };
        let apps = ["web", "worker", "doomed"]
            .iter()
            .map(|name| App {
                id: AppId::generate(),
                name: (*name).into(),
                owner: owner.0.id,
                git_source: None,
                created_at: now(),
                updated_at: now(),
                last_deployment: None,
            })
            .collect();
        Cast {
            owner,
            other,
            second_token,
            apps,
        }
    }

    fn pusher(&self) -> Pusher {
        Pusher {
            id: self.owner.0.id,
            username: self.owner.0.username.clone(),
            email: self.owner.0.email.clone(),
        }
    }
}

/// A log line of about 1 KiB, numbered.
fn line(i: usize) -> NewLine {
    NewLine::stdout(format!("{i:05} {}", "y".repeat(1000)))
}

/// The script: users, tokens, apps, deployments with logs (one append larger than a segment),
/// the state machine, queueing within an app and across apps, cancels, an app deletion and a
/// prune. Returns the deployments it made, in creation order.
async fn script(writer: &Writer, cast: &Cast) -> Vec<DeploymentId> {
    let (owner, token) = cast.owner.clone();
    writer
        .create_user(owner.clone(), token, [1; 32])
        .await
        .expect("owner");
    let (other, token) = cast.other.clone();
    writer
        .create_user(other.clone(), token.clone(), [2; 32])
        .await
        .expect("other");
    writer
        .create_token(cast.second_token.clone(), [3; 32])
        .await
        .expect("token");
    writer
        .revoke_token(other.id, token.id)
        .await
        .expect("revoke");
    for app in &cast.apps {
        writer.create_app(app.clone()).await.expect("app");
    }
    let [web, worker, doomed] = [cast.apps[0].id, cast.apps[1].id, cast.apps[2].id];
    writer
        .add_collaborator(web, other.id, uuid::Uuid::from_u128(7))
        .await
        .expect("collaborator");
    let deploy = |app: AppId, git_ref: &str| {
        writer.create_deployment(app, git_ref.into(), cast.pusher(), Driver::External)
    };
    let mut made = Vec::new();
    let first = deploy(web, "v1").await.expect("deploy");
    assert_eq!(first.status, Status::Building);
    let queued = deploy(web, "v2").await.expect("deploy");
    assert_eq!(queued.status, Status::Queued);
    let third = deploy(web, "v3").await.expect("deploy");
    let elsewhere = deploy(worker, "w1").await.expect("deploy");
    assert_eq!(
        elsewhere.status,
        Status::Building,
        "apps do not queue each other"
    );
    made.extend([first.id, queued.id, third.id, elsewhere.id]);

    // Many small appends, then one larger than a segment.
    for i in 0..50 {
        writer
            .append(first.id, vec![line(i)])
            .await
            .expect("append");
    }
    let large: Vec<NewLine> = (50..1700).map(line).collect();
    writer.append(first.id, large).await.expect("large append");
    writer
        .append(elsewhere.id, vec![NewLine::stdout("worker says hi")])
        .await
        .expect("append");
    // The queued one is cancelled (ends here); the first runs to success, which promotes the
    // third.
    writer
        .cancel(queued.id, "owner".into())
        .await
        .expect("cancel");
    for status in [Status::Pushing, Status::Starting, Status::Success] {
        writer
            .transition(first.id, Target::Status(status), None)
            .await
            .expect("transition");
    }
    writer
        .transition(
            third.id,
            Target::Status(Status::BuildError),
            Some(NewLine::stdout("build failed")),
        )
        .await
        .expect("transition");
    writer
        .transition(elsewhere.id, Target::SessionLost, None)
        .await
        .expect("session lost");

    // Deleted things: an app with a deployment and its log, and a pruned deployment.
    let gone = deploy(doomed, "d1").await.expect("deploy");
    writer
        .append(gone.id, vec![NewLine::stdout("soon gone")])
        .await
        .expect("append");
    writer.delete_app(doomed).await.expect("delete app");
    let pruned = writer
        .prune_deployments(vec![queued.id])
        .await
        .expect("prune");
    assert_eq!(pruned, vec![queued.id]);
    made.push(gone.id);
    made
}

/// What a domain read shows, without the ids and times the writer makes up.
#[derive(Debug, PartialEq, Eq)]
struct View {
    users: Vec<(String, Option<String>, usize)>,
    user_count: usize,
    apps: Vec<String>,
    per_app: Vec<(String, u64, bool, Vec<DeploymentView>)>,
    gone: Vec<bool>,
}

#[derive(Debug, PartialEq, Eq)]
struct DeploymentView {
    git_ref: String,
    status: Status,
    last_line: LineNo,
    pusher: String,
    text: String,
    tail: String,
}

fn stored_text(store: &Store, id: DeploymentId, after: LineNo) -> String {
    let text: Vec<u8> = store
        .segments_after(id, after)
        .flat_map(|s| {
            let (_, bytes) = s.expect("segment");
            bytes.view().expect("parse").text.to_vec()
        })
        .collect();
    String::from_utf8(text).expect("utf-8")
}

fn view(store: &Store, cast: &Cast, made: &[DeploymentId]) -> View {
    let users = ["owner", "other", "nobody"]
        .iter()
        .map(|name| {
            let user = store.user_by_username(name).expect("read");
            let email = user.as_ref().map(|u| u.email.clone());
            let tokens = match &user {
                Some(user) => store.tokens_of(user.id).expect("tokens").len(),
                None => 0,
            };
            (name.to_string(), email, tokens)
        })
        .collect();
    let apps = store
        .all_apps()
        .expect("apps")
        .into_iter()
        .map(|a| a.name)
        .collect();
    let per_app = cast
        .apps
        .iter()
        .map(|app| {
            let count = store.deployment_count(app.id).expect("count");
            let collaborates = store
                .is_collaborator(app.id, cast.other.0.id)
                .expect("collaborator");
            let deployments = store
                .deployment_ids(app.id, 0, 100)
                .expect("ids")
                .into_iter()
                .map(|id| {
                    let d = store.deployment(id).expect("read").expect("listed");
                    DeploymentView {
                        git_ref: d.git_ref,
                        status: d.status,
                        last_line: d.last_line,
                        pusher: d.pusher.username,
                        text: stored_text(store, id, LineNo(0)),
                        tail: stored_text(store, id, LineNo(1690)),
                    }
                })
                .collect();
            (app.name.clone(), count, collaborates, deployments)
        })
        .collect();
    let gone = made
        .iter()
        .map(|id| store.deployment(*id).expect("read").is_none())
        .collect();
    View {
        users,
        user_count: store.user_count().expect("count"),
        apps,
        per_app,
        gone,
    }
}

fn dump(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let applied = deployd::store::replicate::applied_key();
    store
        .engine()
        .range(&[], &[0xFF; 8], false)
        .map(|entry| entry.expect("entry"))
        .filter(|(key, _)| *key != applied)
        .collect()
}

async fn run(store: Store, cast: &Cast) -> (Store, Vec<DeploymentId>) {
    let (writer, _, thread) =
        Writer::start(store.clone(), Arc::new(Hub::default())).expect("writer");
    let made = script(&writer, cast).await;
    drop(writer);
    thread.join().expect("writer thread");
    (store, made)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_the_leader_over_nats_and_a_replica_read_the_same_after_the_same_script()
{
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let (client, js) = connect(&cluster).await;
    ensure_stream(&js, 3).await.expect("stream");
    let cast = Cast::new();

    let embedded_dir = tempfile::tempdir().expect("tempdir");
    let (embedded, embedded_made) = run(local_store(embedded_dir.path()), &cast).await;

    let leader_dir = tempfile::tempdir().expect("tempdir");
    let wal = WalWriter::new(
        js.clone(),
        "leader".into(),
        1,
        0,
        client.server_info().max_payload,
        tokio::runtime::Handle::current(),
        CancellationToken::new(),
    );
    let (leader, leader_made) = run(leader_store(local_store(leader_dir.path()), wal), &cast).await;

    let replica_dir = tempfile::tempdir().expect("tempdir");
    let replica_store = local_store(replica_dir.path());
    let mut replica = Replica::open(js.clone(), replica_store.clone()).expect("replica");
    let applied = replica.catch_up().await.expect("catch up");
    assert_eq!(applied, last_sequence(&js).await.expect("last"));

    let expected = view(&embedded, &cast, &embedded_made);
    assert_eq!(
        view(&leader, &cast, &leader_made),
        expected,
        "leader vs embedded"
    );
    assert_eq!(
        view(&replica_store, &cast, &leader_made),
        expected,
        "replica vs embedded"
    );
    assert_eq!(
        dump(&leader),
        dump(&replica_store),
        "replica vs leader, record for record"
    );
    // The deleted app's and the pruned deployment's log files are gone on the replica too.
    for id in [leader_made[1], leader_made[4]] {
        assert!(
            !replica_store.logs().path(id).exists(),
            "{id}'s log file is left"
        );
        assert!(!leader.logs().path(id).exists());
    }
    assert!(expected.per_app[0]
        .3
        .iter()
        .any(|d| d.text.len() > deployd::store::MAX_SEGMENT_BYTES));
}
