//! The writer end to end (thread, group commit, store, hub), and its failure paths driven by
//! the store's injected faults (`engine::FaultyEngine`, `logs::LogFaults`).

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::*;
use crate::hub::Hub;
use crate::model::{App, AppId, Driver, LineNo, NewLine, Pusher, Token, TokenId, User, UserId};
use crate::store::codec;
use crate::store::engine::{Engine, FaultyEngine, MemoryEngine, SledEngine};
use crate::store::logs::LogFiles;
use crate::store::Store;

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// A running writer with one user and one app, over the engine and log files given.
struct Fixture {
    writer: Writer,
    store: Store,
    hub: Arc<Hub>,
    user: User,
    app: AppId,
    thread: JoinHandle<()>,
    /// The log files' directory when the fixture made it; removed when the fixture drops.
    _scratch: Option<tempfile::TempDir>,
}

impl Fixture {
    /// An in-memory engine, log files in a temporary directory of the fixture's own.
    async fn in_memory() -> Fixture {
        Self::with_engine(Arc::new(MemoryEngine::default())).await
    }

    /// `engine`, log files in a temporary directory of the fixture's own.
    async fn with_engine(engine: Arc<dyn Engine>) -> Fixture {
        let scratch = tempfile::tempdir().expect("tempdir");
        let logs = LogFiles::open(scratch.path()).expect("logs");
        let mut fixture = Self::start(engine, logs).await;
        fixture._scratch = Some(scratch);
        fixture
    }

    /// `engine` and `logs` as given (the caller owns their directories).
    async fn start(engine: Arc<dyn Engine>, logs: LogFiles) -> Fixture {
        let store = Store::new(engine, logs);
        let hub = Arc::new(Hub::default());
        let (writer, _, thread) = Writer::start(store.clone(), hub.clone()).expect("start");
        let user = User {
            id: UserId::generate(),
            username: "u".into(),
            email: "u@example.com".into(),
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
        writer
            .create_user(user.clone(), token, [7; 32])
            .await
            .expect("user");
        let mut fixture = Fixture {
            writer,
            store,
            hub,
            user,
            app: AppId::generate(),
            thread,
            _scratch: None,
        };
        fixture.app = fixture.new_app("app").await;
        fixture
    }

    async fn new_app(&self, name: &str) -> AppId {
        let app = App {
            id: AppId::generate(),
            name: name.into(),
            owner: self.user.id,
            git_source: None,
            created_at: now(),
            updated_at: now(),
            last_deployment: None,
        };
        self.writer.create_app(app.clone()).await.expect("app");
        app.id
    }

    fn pusher(&self) -> Pusher {
        Pusher {
            id: self.user.id,
            username: self.user.username.clone(),
            email: self.user.email.clone(),
        }
    }

    async fn deploy(&self, app: AppId, git_ref: &str) -> Deployment {
        self.writer
            .create_deployment(app, git_ref.into(), self.pusher(), Driver::External)
            .await
            .expect("deployment")
    }

    /// Stops the writer as a crash would (nothing ended), releasing the engine (sled's lock).
    fn crash(self) {
        let Fixture {
            writer,
            store,
            hub,
            thread,
            ..
        } = self;
        drop((writer, store, hub));
        thread.join().expect("writer thread");
    }
}

/// Sled and log files in `dir`, as the server lays them out.
fn on_disk(dir: &Path) -> (Arc<SledEngine>, LogFiles) {
    (
        Arc::new(SledEngine::open(dir).expect("open")),
        LogFiles::open(&dir.join("logs")).expect("logs"),
    )
}

/// Every stored line of a deployment, as `/output` sends them.
fn stored_text(store: &Store, id: DeploymentId) -> String {
    let text: Vec<u8> = store
        .segments_after(id, LineNo(0))
        .flat_map(|s| {
            let (_, bytes) = s.expect("segment");
            bytes.view().expect("parse").text.to_vec()
        })
        .collect();
    String::from_utf8(text).expect("utf8")
}

#[tokio::test]
async fn line_numbers_continue_across_batches_and_split_on_newlines() {
    let f = Fixture::in_memory().await;
    let d = f.deploy(f.app, "r").await;
    assert_eq!(d.status, Status::Building);
    let last = f
        .writer
        .append_logs(d.id, vec![NewLine::stdout("a"), NewLine::stdout("b\nc\r")])
        .await
        .expect("append");
    assert_eq!(last, LineNo(3));
    let last = f
        .writer
        .append_logs(d.id, vec![NewLine::stderr("d")])
        .await
        .expect("append");
    assert_eq!(last, LineNo(4));
    assert_eq!(f.store.last_line(d.id).expect("last"), LineNo(4));
    let segments: Vec<_> = f
        .store
        .segments_after(d.id, LineNo(2))
        .map(|s| s.expect("segment").0)
        .collect();
    // The segment holding line 3 starts at 1; the next at 4.
    assert_eq!(segments, vec![LineNo(1), LineNo(4)]);
}

#[tokio::test]
async fn a_second_deployment_queues_and_starts_when_the_first_ends() {
    let f = Fixture::in_memory().await;
    let (writer, hub) = (&f.writer, &f.hub);
    let first = f.deploy(f.app, "1").await;
    let second = f.deploy(f.app, "2").await;
    assert_eq!(second.status, Status::Queued);
    assert!(matches!(
        writer
            .append_logs(second.id, vec![NewLine::stdout("x")])
            .await,
        Err(WriteError::Queued)
    ));
    assert!(matches!(
        writer
            .transition(second.id, Target::Status(Status::Building), None)
            .await,
        Err(WriteError::Queued)
    ));
    let watch = hub.watch_status(second.id).expect("watch");
    let ended = writer
        .transition(first.id, Target::Status(Status::BuildError), None)
        .await
        .expect("end");
    assert!(ended.finished_at.is_some());
    assert_eq!(*watch.borrow(), Status::Building);
    // Refused moves change nothing.
    assert!(matches!(
        writer
            .transition(first.id, Target::Status(Status::Success), None)
            .await,
        Err(WriteError::Transition(
            TransitionError::AlreadyFinished { .. }
        ))
    ));
    assert!(matches!(
        writer
            .transition(second.id, Target::Status(Status::Success), None)
            .await,
        Err(WriteError::Transition(TransitionError::Illegal { .. }))
    ));
    let lost = writer
        .transition(
            second.id,
            Target::SessionLost,
            Some(NewLine::system("gone")),
        )
        .await
        .expect("lost");
    assert_eq!(lost.status, Status::Aborted);
    assert_eq!(lost.last_line, LineNo(1));
}

#[tokio::test]
async fn writes_to_a_finished_deployment_are_refused_as_finished_with_its_status() {
    let f = Fixture::in_memory().await;
    let d = f.deploy(f.app, "r").await;
    f.writer
        .transition(d.id, Target::Status(Status::BuildError), None)
        .await
        .expect("end");
    let finished = |result: Result<_, WriteError>| {
        matches!(
            result,
            Err(WriteError::Finished {
                status: Status::BuildError
            })
        )
    };
    assert!(finished(
        f.writer
            .append_logs(d.id, vec![NewLine::stdout("late")])
            .await
            .map(|_| ())
    ));
    assert!(finished(
        f.writer
            .transition(d.id, Target::SessionLost, None)
            .await
            .map(|_| ())
    ));
    assert!(finished(f.writer.set_image_size(d.id, 1).await));
    assert!(matches!(
        f.writer
            .append_logs(DeploymentId::generate(), vec![NewLine::stdout("x")])
            .await,
        Err(WriteError::NotFound("deployment"))
    ));
}

#[tokio::test]
async fn taken_names_and_collaborations_are_refused_with_what_is_taken() {
    let f = Fixture::in_memory().await;
    let mut twin = f.user.clone();
    twin.id = UserId::generate();
    let token = |user: &User| Token {
        id: TokenId::generate(),
        user_id: user.id,
        name: "t".into(),
        created_at: now(),
    };
    let result = f
        .writer
        .create_user(twin.clone(), token(&twin), [8; 32])
        .await;
    assert!(matches!(result, Err(WriteError::UsernameTaken(name)) if name == "u"));
    twin.username = "other".into();
    let result = f
        .writer
        .create_user(twin.clone(), token(&twin), [8; 32])
        .await;
    assert!(matches!(result, Err(WriteError::EmailTaken(email)) if email == "u@example.com"));
    let app = App {
        id: AppId::generate(),
        name: "app".into(),
        owner: f.user.id,
        git_source: None,
        created_at: now(),
        updated_at: now(),
        last_deployment: None,
    };
    let result = f.writer.create_app(app).await;
    assert!(matches!(result, Err(WriteError::AppNameTaken(name)) if name == "app"));
    let id = uuid::Uuid::new_v4();
    f.writer
        .add_collaborator(f.app, f.user.id, id)
        .await
        .expect("first");
    assert!(matches!(
        f.writer.add_collaborator(f.app, f.user.id, id).await,
        Err(WriteError::AlreadyCollaborator)
    ));
}

#[tokio::test]
async fn recovery_ends_what_a_crash_left_unfinished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (building, starting, queued_external) = {
        let (engine, logs) = on_disk(dir.path());
        let f = Fixture::start(engine, logs).await;
        let building = f.deploy(f.app, "1").await;
        f.writer
            .append_logs(building.id, vec![NewLine::stdout("kept")])
            .await
            .expect("append");
        let queued = f.deploy(f.app, "2").await;
        let app2 = f.new_app("other").await;
        let starting = f.deploy(app2, "3").await;
        for status in [Status::Pushing, Status::Starting] {
            f.writer
                .transition(starting.id, Target::Status(status), None)
                .await
                .expect("move");
        }
        // No shutdown: the unfinished deployments stay as they are, as after a crash. (The
        // thread must end to release sled's lock before the reopen.)
        f.crash();
        (building.id, starting.id, queued.id)
    };
    let (engine, logs) = on_disk(dir.path());
    let store = Store::new(engine, logs);
    let (_, recovery, _) = Writer::start(store.clone(), Arc::new(Hub::default())).expect("start");
    let status = |id| store.deployment(id).expect("read").expect("exists");
    assert_eq!(status(building).status, Status::Aborted);
    assert_eq!(status(starting).status, Status::TimeoutError);
    assert_eq!(status(queued_external).status, Status::Aborted);
    assert_eq!(recovery.ended.len(), 3);
    assert_eq!(
        status(building).last_line,
        LineNo(2),
        "kept line + the why line"
    );
    let text = stored_text(&store, building);
    assert!(text.starts_with("kept\n"), "{text}");
    assert!(text.contains("deployd restarted"), "{text}");
}

#[tokio::test]
async fn deleting_an_app_removes_its_log_files_and_finished_files_are_closed() {
    let f = Fixture::in_memory().await;
    let logs = f.store.logs().clone();
    let app = f.new_app("gone").await;
    let d = f.deploy(app, "r").await;
    f.writer
        .append_logs(d.id, vec![NewLine::stdout("kept on disk")])
        .await
        .expect("append");
    let on_disk = std::fs::read(logs.path(d.id)).expect("log file");
    let view = codec::SegmentView::parse(&on_disk).expect("one segment");
    assert_eq!(view.text, b"kept on disk\n");
    f.writer.delete_app(app).await.expect("delete");
    assert!(!logs.path(d.id).exists());
    assert_eq!(f.store.last_line(d.id).expect("read"), LineNo(0));
}

#[tokio::test]
async fn the_fixture_removes_its_scratch_directory_when_dropped() {
    let f = Fixture::in_memory().await;
    let d = f.deploy(f.app, "r").await;
    f.writer
        .append_logs(d.id, vec![NewLine::stdout("x")])
        .await
        .expect("append");
    let file = f.store.logs().path(d.id);
    assert!(file.exists());
    f.crash();
    assert!(!file.exists(), "the temporary log directory leaked");
}

mod faults;
