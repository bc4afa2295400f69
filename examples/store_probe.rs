use deployd::hub::Hub;
use deployd::model::*;
use deployd::store::{engine::SledEngine, writer::Writer, Store};
use std::sync::Arc;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let engine = SledEngine::open(dir.path()).unwrap();
    let store = Store::new(Arc::new(engine));
    let hub = Arc::new(Hub::default());
    let (writer, _, _) = Writer::start(store.clone(), hub).unwrap();
    let pushers: usize = std::env::var("P")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let batch: usize = std::env::var("B")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let total: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let window: usize = 32;
    let user = User {
        id: UserId::generate(),
        username: "u".into(),
        email: "u@x".into(),
        fullname: String::new(),
        is_admin: true,
        created_at: time::OffsetDateTime::now_utc(),
    };
    let token = Token {
        id: TokenId::generate(),
        user_id: user.id,
        name: "t".into(),
        created_at: user.created_at,
    };
    writer
        .create_user(user.clone(), token, [1; 32])
        .await
        .unwrap();
    let line = "x".repeat(100);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..pushers {
        let writer = writer.clone();
        let line = line.clone();
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            let app = App {
                id: AppId::generate(),
                name: format!("app-{p}"),
                owner: user.id,
                git_source: None,
                created_at: user.created_at,
                updated_at: user.created_at,
                last_deployment: None,
            };
            writer.create_app(app.clone()).await.unwrap();
            let d = writer
                .create_deployment(
                    app.id,
                    "r".into(),
                    Pusher {
                        id: user.id,
                        username: "u".into(),
                        email: "e".into(),
                    },
                    Driver::External,
                )
                .await
                .unwrap();
            let mut inflight = futures_util::stream::FuturesOrdered::new();
            use futures_util::StreamExt;
            for _ in 0..(total / pushers / batch) {
                let lines: Vec<NewLine> =
                    (0..batch).map(|_| NewLine::stdout(line.clone())).collect();
                let w = writer.clone();
                inflight.push_back(async move { w.append_logs(d.id, lines).await.unwrap() });
                if inflight.len() >= window {
                    inflight.next().await;
                }
            }
            while inflight.next().await.is_some() {}
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} lines in {:.2}s = {:.0} lines/s; disk {} MB for {} MB text",
        total,
        secs,
        total as f64 / secs,
        store.engine().size_on_disk() / 1_000_000,
        total * 101 / 1_000_000
    );
}
