//! The prune pass over a real writer and store (in-memory engine, log files in a temp dir).

use std::sync::Arc;

use super::*;
use crate::model::{App, Driver, Pusher, Token, TokenId, User};
use crate::store::engine::{Engine, MemoryEngine};
use crate::store::logs::LogFiles;
use crate::store::writer::Target;

struct Fixture {
    writer: Writer,
    store: Store,
    app: AppId,
    pusher: Pusher,
    dir: tempfile::TempDir,
}

fn policy(keep: u64, max_age_days: u64) -> RetentionConfig {
    RetentionConfig {
        keep_deployments: keep,
        max_age_days,
        prune_interval: std::time::Duration::ZERO,
        max_log_bytes: 0,
        keep_images: 0,
    }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = LogFiles::open(&dir.path().join("logs")).expect("logs");
    let store = Store::new(Arc::new(MemoryEngine::default()), logs);
    let (writer, _, _thread) =
        Writer::start(store.clone(), Arc::new(Hub::default())).expect("writer");
    let now = OffsetDateTime::now_utc();
    let user = User {
        id: crate::model::UserId::generate(),
        username: "u".into(),
        email: "u@example.com".into(),
        fullname: String::new(),
        is_admin: false,
        created_at: now,
    };
    let token = Token {
        id: TokenId::generate(),
        user_id: user.id,
        name: "t".into(),
        created_at: now,
    };
    writer
        .create_user(user.clone(), token, [1; 32])
        .await
        .expect("user");
    let app = App {
        id: AppId::generate(),
        name: "app".into(),
        owner: user.id,
        git_source: None,
        created_at: now,
        updated_at: now,
        last_deployment: None,
    };
    writer.create_app(app.clone()).await.expect("app");
    Fixture {
        writer,
        store,
        app: app.id,
        pusher: Pusher {
            id: user.id,
            username: user.username,
            email: user.email,
        },
        dir,
    }
}

impl Fixture {
    /// A deployment ended with `end`, or left `building` when `end` is None.
    async fn deployment(&self, end: Option<Status>) -> DeploymentId {
        let d = self
            .writer
            .create_deployment(
                self.app,
                "ref".into(),
                self.pusher.clone(),
                Driver::External,
            )
            .await
            .expect("create");
        if let Some(end) = end {
            self.writer
                .transition(d.id, Target::Status(end), None)
                .await
                .expect("end");
        }
        d.id
    }

    fn pruner(&self, config: RetentionConfig) -> Pruner {
        Pruner {
            store: self.store.clone(),
            writer: self.writer.clone(),
            data_dir: self.dir.path().to_path_buf(),
            config,
            stop: CancellationToken::new(),
        }
    }
}

#[tokio::test]
async fn the_status_index_follows_every_move_and_lists_newest_first() {
    let f = fixture().await;
    let failed = f.deployment(Some(Status::BuildError)).await;
    let aborted = f.deployment(Some(Status::Aborted)).await;
    let running = f.deployment(None).await;
    let store = &f.store;
    assert_eq!(
        store
            .status_ids(&[f.app], &[Status::Building], 0, 10)
            .expect("ids"),
        vec![running]
    );
    let finished = store.finished_ids(f.app).expect("ids");
    assert_eq!(finished, vec![aborted, failed]);
    assert_eq!(
        store.status_ids(&[f.app], &Status::ALL, 1, 1).expect("ids"),
        vec![aborted],
        "offset and limit across statuses"
    );
    assert_eq!(
        store.unfinished().expect("unfinished"),
        vec![(running, f.app)]
    );
    f.writer
        .transition(running, Target::Status(Status::Aborted), None)
        .await
        .expect("end");
    assert!(store.unfinished().expect("unfinished").is_empty());
    assert_eq!(
        store
            .status_count(&[f.app], &[Status::Building])
            .expect("n"),
        0
    );
    assert_eq!(
        store.status_count(&[f.app], &[Status::Aborted]).expect("n"),
        2
    );
}

#[tokio::test]
async fn an_unfinished_deployment_is_never_pruned_even_when_asked() {
    let f = fixture().await;
    let running = f.deployment(None).await;
    let pruned = f
        .writer
        .prune_deployments(vec![running])
        .await
        .expect("prune");
    assert!(pruned.is_empty());
    assert!(f.store.deployment(running).expect("read").is_some());
}

#[tokio::test]
async fn keep_and_max_age_pick_the_oldest_finished_deployments() {
    let f = fixture().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(f.deployment(Some(Status::BuildError)).await);
    }
    let running = f.deployment(None).await;
    let now = OffsetDateTime::now_utc();
    let doomed = to_prune(&f.store, f.app, &policy(2, 0), now).expect("policy");
    assert_eq!(doomed, vec![ids[0]]);
    assert!(to_prune(&f.store, f.app, &policy(0, 0), now)
        .expect("policy")
        .is_empty());
    assert!(to_prune(&f.store, f.app, &policy(0, 1), now)
        .expect("policy")
        .is_empty());
    // Two days later every finished one is older than a day; the running one stays.
    let later = now + time::Duration::days(2);
    let mut doomed = to_prune(&f.store, f.app, &policy(0, 1), later).expect("policy");
    doomed.sort();
    assert_eq!(doomed, ids);
    let pruner = f.pruner(policy(0, 1));
    assert_eq!(pruner.prune(doomed).await.expect("prune"), 3);
    assert_eq!(
        f.store.deployment_ids(f.app, 0, 10).expect("ids"),
        vec![running]
    );
    assert!(f.store.finished_ids(f.app).expect("ids").is_empty());
}

#[tokio::test]
async fn an_expired_source_goes_unless_an_unfinished_deployment_names_it() {
    let f = fixture().await;
    let expired = |id: uuid::Uuid| codec::StoredSource {
        id: id.into_bytes(),
        user_id: [0; 16],
        expires_at: 1,
        uploaded: true,
    };
    let (used, unused) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let sources = f.dir.path().join("sources");
    std::fs::create_dir_all(&sources).expect("dir");
    for id in [used, unused] {
        f.writer.put_source(expired(id)).await.expect("source");
        std::fs::write(sources.join(format!("{id}.tar.gz")), b"x").expect("file");
    }
    f.writer
        .create_deployment(
            f.app,
            "ref".into(),
            f.pusher.clone(),
            Driver::Executor {
                source_url: format!("http://x/v1/sources/{used}/archive?expires=1"),
                postdeploy_hook: None,
            },
        )
        .await
        .expect("deployment");
    let pruned = f.pruner(policy(0, 0)).full_pass().await.expect("pass");
    assert_eq!(pruned.sources, 1);
    assert!(f.store.source(unused).expect("read").is_none());
    assert!(!sources.join(format!("{unused}.tar.gz")).exists());
    assert!(f.store.source(used).expect("read").is_some());
    assert!(sources.join(format!("{used}.tar.gz")).exists());
}

#[tokio::test]
async fn a_store_from_before_the_status_index_is_indexed_once_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(MemoryEngine::default());
    let now = OffsetDateTime::now_utc();
    let app = AppId::generate();
    let record = crate::model::Deployment {
        id: DeploymentId::generate(),
        app_id: app,
        created_at: now,
        status: Status::Success,
        finished_at: Some(now),
        git_ref: "old".into(),
        previous_git_ref: None,
        pusher: Pusher {
            id: crate::model::UserId::generate(),
            username: "u".into(),
            email: "u@x".into(),
        },
        image_size: 0,
        driver: Driver::External,
        last_line: crate::model::LineNo(0),
        image_kept: false,
    };
    // What an older deployd wrote: the record and the app index, no status index.
    engine
        .apply(vec![
            crate::store::engine::BatchOp::Put(
                codec::deployment_key(record.id),
                codec::encode_deployment(&record).into(),
            ),
            crate::store::engine::BatchOp::Put(
                codec::app_deployment_key(app, record.id),
                Vec::new().into(),
            ),
        ])
        .expect("apply");
    let store = Store::new(
        engine,
        LogFiles::open(&dir.path().join("logs")).expect("logs"),
    );
    assert!(store.finished_ids(app).expect("ids").is_empty());
    let (_writer, _, _thread) =
        Writer::start(store.clone(), Arc::new(Hub::default())).expect("writer");
    assert_eq!(store.finished_ids(app).expect("ids"), vec![record.id]);
}
