//! `cargo bench`: criterion benchmarks of deployd's log path.
//!
//! - `codec`: encoding a 1000-line segment, parsing it, and finding the text from a line;
//! - `status`: the state machine's `check_transition` over every pair of statuses;
//! - `store`: the writer's `append_logs` (one batch at a time, and 4 deployments with 16 batches
//!   in flight each, which is what group commit is for) over sled in a temp dir, each call
//!   durable (sled flush + fdatasync) when it returns; and `Store::segments_after` range reads;
//! - `e2e`: a real server (`deployd::server::start`) on a temp dir and 127.0.0.1:0, driven by the
//!   `deployd bench` scenarios (`ingest`, `read`, `fanout`) over HTTP and WebSocket. `fanout`
//!   is skipped (with a message) when the server has no live stream.
//!
//! Sample sizes and measurement times are small so that the whole run stays within ~3 minutes
//! on a 2-core machine; the figures are for comparing changes, the README's "Performance"
//! section has the release-build figures of `deployd bench` against `deployd serve`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use time::OffsetDateTime;

use deployd::cli::bench::{self, FanoutOptions, IngestOptions, ReadOptions, Target};
use deployd::config::{Config, FileConfig, Overrides};
use deployd::hub::Hub;
use deployd::model::{
    App, AppId, DeploymentId, Driver, LineNo, LogStream, NewLine, Pusher, Token, TokenId, User,
    UserId,
};
use deployd::status::{check_transition, Status};
use deployd::store::codec::{encode_segment, SegmentView};
use deployd::store::engine::SledEngine;
use deployd::store::writer::Writer;
use deployd::store::Store;

/// Lines per batch / segment in the store and codec benchmarks (what `deployd push` and the
/// `ingest` scenario send).
const BATCH_LINES: usize = 1000;
/// Bytes per line.
const LINE_BYTES: usize = 100;
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

fn line_text() -> String {
    "deployd bench line: the quick brown fox jumps over the lazy dog 0123456789 "
        .chars()
        .cycle()
        .take(LINE_BYTES)
        .collect()
}

fn batch() -> Vec<NewLine> {
    let text = line_text();
    (0..BATCH_LINES)
        .map(|_| NewLine::stdout(text.clone()))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---- codec ---------------------------------------------------------------------------------

fn codec(c: &mut Criterion) {
    let text = line_text();
    let lines: Vec<(LogStream, &str)> = (0..BATCH_LINES)
        .map(|_| (LogStream::Stdout, text.as_str()))
        .collect();
    let text_len = BATCH_LINES * LINE_BYTES;
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(BATCH_LINES as u64));
    group.bench_function("encode_segment 1000x100B", |b| {
        b.iter(|| encode_segment(OffsetDateTime::UNIX_EPOCH, lines.iter().copied(), text_len))
    });
    let segment = encode_segment(OffsetDateTime::now_utc(), lines.iter().copied(), text_len);
    group.bench_function("parse + text_from_line(0)", |b| {
        b.iter(|| {
            let view = SegmentView::parse(std::hint::black_box(&segment)).expect("segment");
            view.text_from_line(0).len()
        })
    });
    group.bench_function("parse + text_from_line(500)", |b| {
        b.iter(|| {
            let view = SegmentView::parse(std::hint::black_box(&segment)).expect("segment");
            view.text_from_line(500).len()
        })
    });
    group.bench_function("parse + lines()", |b| {
        b.iter(|| {
            let view = SegmentView::parse(std::hint::black_box(&segment)).expect("segment");
            view.lines().map(|(_, l)| l.len()).sum::<usize>()
        })
    });
    group.finish();
}

// ---- state machine -------------------------------------------------------------------------

fn status(c: &mut Criterion) {
    let mut group = c.benchmark_group("status");
    let pairs = (Status::ALL.len() * Status::ALL.len()) as u64;
    group.throughput(Throughput::Elements(pairs));
    group.bench_function("check_transition all pairs", |b| {
        b.iter(|| {
            let mut allowed = 0;
            for from in Status::ALL {
                for to in Status::ALL {
                    allowed += usize::from(check_transition(from, to).is_ok());
                }
            }
            allowed
        })
    });
    group.finish();
}

// ---- store ---------------------------------------------------------------------------------

struct StoreFixture {
    _dir: tempfile::TempDir,
    store: Store,
    writer: Writer,
    user: User,
}

impl StoreFixture {
    fn open(rt: &tokio::runtime::Runtime) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = SledEngine::open(&dir.path().join("store")).expect("open sled");
        let logs = deployd::store::logs::LogFiles::open(&dir.path().join("logs")).expect("logs");
        let store = Store::new(Arc::new(engine), logs);
        let (writer, _recovery, _thread) =
            Writer::start(store.clone(), Arc::new(Hub::default())).expect("writer");
        let now = OffsetDateTime::now_utc();
        let user = User {
            id: UserId::generate(),
            username: "bench".into(),
            email: "bench@example.com".into(),
            fullname: "Bench".into(),
            is_admin: true,
            created_at: now,
        };
        let token = Token {
            id: TokenId::generate(),
            user_id: user.id,
            name: "bench".into(),
            created_at: now,
        };
        rt.block_on(writer.create_user(user.clone(), token, [7; 32]))
            .expect("create user");
        Self {
            _dir: dir,
            store,
            writer,
            user,
        }
    }

    /// A new app with a new (building) deployment.
    fn deployment(&self, rt: &tokio::runtime::Runtime, name: &str) -> DeploymentId {
        let now = OffsetDateTime::now_utc();
        let app = App {
            id: AppId::generate(),
            name: name.into(),
            owner: self.user.id,
            git_source: None,
            created_at: now,
            updated_at: now,
            last_deployment: None,
        };
        let app_id = app.id;
        rt.block_on(async {
            self.writer.create_app(app).await.expect("create app");
            let pusher = Pusher {
                id: self.user.id,
                username: self.user.username.clone(),
                email: self.user.email.clone(),
            };
            self.writer
                .create_deployment(app_id, "bench".into(), pusher, Driver::External)
                .await
                .expect("create deployment")
                .id
        })
    }
}

fn store(c: &mut Criterion) {
    let rt = runtime();
    let fixture = StoreFixture::open(&rt);
    let lines = batch();
    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));

    // One batch at a time: every call is one group commit (apply + flush + fdatasync).
    let one = fixture.deployment(&rt, "bench-store-one");
    group.throughput(Throughput::Elements(BATCH_LINES as u64));
    group.bench_function("append_logs 1000x100B, 1 in flight", |b| {
        b.iter(|| {
            rt.block_on(fixture.writer.append_logs(one, lines.clone()))
                .expect("append")
        })
    });

    // 4 deployments x 16 batches in flight: what group commit batches together.
    const DEPLOYMENTS: usize = 4;
    const IN_FLIGHT: usize = 16;
    let many: Vec<DeploymentId> = (0..DEPLOYMENTS)
        .map(|n| fixture.deployment(&rt, &format!("bench-store-many-{n}")))
        .collect();
    group.throughput(Throughput::Elements(
        (DEPLOYMENTS * IN_FLIGHT * BATCH_LINES) as u64,
    ));
    group.bench_function("append_logs 1000x100B, 4 deployments x 16 in flight", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut calls = Vec::with_capacity(DEPLOYMENTS * IN_FLIGHT);
                for _ in 0..IN_FLIGHT {
                    for id in &many {
                        calls.push(fixture.writer.append_logs(*id, lines.clone()));
                    }
                }
                for result in futures_util::future::join_all(calls).await {
                    result.expect("append");
                }
            })
        })
    });

    // Range reads over a deployment of 100 segments (100 000 lines).
    const READ_SEGMENTS: usize = 100;
    let read = fixture.deployment(&rt, "bench-store-read");
    rt.block_on(async {
        for _ in 0..READ_SEGMENTS {
            fixture
                .writer
                .append_logs(read, lines.clone())
                .await
                .expect("append");
        }
    });
    let store = &fixture.store;
    group.throughput(Throughput::Bytes(
        (READ_SEGMENTS * BATCH_LINES * (LINE_BYTES + 1)) as u64,
    ));
    group.bench_function("segments_after(0) 100 segments, text bytes", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for entry in store.segments_after(read, LineNo(0)) {
                let (_, segment) = entry.expect("segment");
                bytes += segment.view().expect("parse").text_from_line(0).len();
            }
            bytes
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        BenchmarkId::new("segments_after(mid) first segment", "50 500"),
        |b| {
            b.iter(|| {
                store
                    .segments_after(read, LineNo(50_500))
                    .next()
                    .expect("a segment")
                    .expect("segment")
                    .1
                    .len()
            })
        },
    );
    group.finish();
}

// ---- end to end ----------------------------------------------------------------------------

fn e2e(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::from_parts(
        FileConfig::default(),
        Overrides {
            listen: Some("127.0.0.1:0".parse().expect("address")),
            data_dir: Some(dir.path().join("data")),
            admin_token: Some(ADMIN_TOKEN.into()),
            ..Overrides::default()
        },
    )
    .expect("config");
    let server = rt.block_on(deployd::server::start(config)).expect("server");
    let target = Target {
        url: format!("http://{}", server.addr),
        token: ADMIN_TOKEN.into(),
    };

    let mut group = c.benchmark_group("e2e");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_millis(500));

    let ingest = IngestOptions {
        pushers: 4,
        lines: 25_000,
        line_bytes: LINE_BYTES,
        batch: BATCH_LINES,
        window: 32,
        frame: bench::FrameKind::Json,
    };
    group.throughput(Throughput::Elements(ingest.lines * ingest.pushers as u64));
    group.bench_function("ingest 4 pushers x 25k lines", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let report = rt
                    .block_on(bench::ingest(&target, &ingest))
                    .expect("ingest");
                total += Duration::from_secs_f64(report.elapsed_secs);
            }
            total
        })
    });

    let read = ReadOptions {
        lines: 200_000,
        line_bytes: LINE_BYTES,
        reads: 5,
    };
    group.throughput(Throughput::Bytes(
        read.lines * (read.line_bytes as u64 + 1) * u64::from(read.reads),
    ));
    group.bench_function("read 200k lines x 5", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let report = rt.block_on(bench::read(&target, &read)).expect("read");
                total += Duration::from_secs_f64(report.elapsed_secs);
            }
            total
        })
    });

    let fanout = FanoutOptions {
        subscribers: 20,
        rate: 0,
        lines: 10_000,
        line_bytes: LINE_BYTES,
        batch: 0,
        window: 32,
        // This process is the bench binary, not deployd: it cannot be the subscriber child.
        in_process: true,
        subscriber_prefix: None,
    };
    let probe = Instant::now();
    match rt.block_on(bench::fanout(&target, &fanout)) {
        Err(err) => eprintln!("e2e/fanout skipped: {err} (after {:?})", probe.elapsed()),
        Ok(_) => {
            group.throughput(Throughput::Elements(
                fanout.lines * fanout.subscribers as u64,
            ));
            group.bench_function("fanout 20 subscribers x 10k lines (deliveries)", |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let report = rt
                            .block_on(bench::fanout(&target, &fanout))
                            .expect("fanout");
                        total += Duration::from_secs_f64(report.elapsed_secs);
                    }
                    total
                })
            });
        }
    }
    group.finish();
    rt.block_on(server.shutdown());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = codec, status, store, e2e
}
criterion_main!(benches);
