//! The subscriber side of `fanout` (and of `compare`'s Redis `PUBLISH` run): K sockets that
//! each check they got every line once and in order, and measure each line's latency from its
//! batch's ack (as seen by the pusher) to its arrival.
//!
//! The subscribers run either as tasks of the tool's own process, or (the default) in a child
//! process, `deployd bench subscribe`, so that they can be pinned to other cores than the
//! pusher and the server (`taskset`) and their CPU is told apart. Parent and child talk in
//! lines: the child prints `connected K`, then `ready N` once told `started` (N subscribers saw
//! the deployment), then `result {json}`; the parent sends `started`, `ack BATCH MONO_US` per
//! acknowledged batch (`CLOCK_MONOTONIC`, the same clock in both processes) and `done`.
//!
//! Sockets are read raw, frames parsed by the server's own codec (`crate::ws`) or by the RESP
//! reader in `redis`, lines found by a substring search: the tool must spend as little CPU per
//! delivery as possible, so that the server, not the tool, is what a run measures.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use memchr::memmem::Finder;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

pub(super) use super::checker::SubscriberResult;
use super::checker::{Checker, Clock, DRAIN_GRACE};
use super::client::{connect, find, parse_u64_at};
use super::redis;
use super::system::{cpu_secs, MonoOrigin};
use super::{protocol, BenchError, SubscribeOptions, Target, CONNECT_CONCURRENCY};
use crate::cli::{encode_path_segment, ws_url};
use crate::ws;

/// Largest server frame a bench subscriber accepts (the server's own frames are far smaller).
const MAX_SUBSCRIBER_FRAME: usize = 16 * 1024 * 1024;
/// Bytes a subscriber reads from its socket at once.
const SUBSCRIBER_READ_CHUNK: usize = 64 * 1024;

/// What the subscribers look for in each frame, each searcher built once (see [`find`]).
static TYPE_NEW: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"type\":\"new\""));
static TYPE_STATUS: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"type\":\"status\""));
static TYPE_LOG: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"type\":\"log\""));
static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\":\""));
static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));

/// What a frame parser made of the bytes read so far.
pub(super) enum Parsed {
    /// Consumed this many bytes; wants more.
    More(usize),
    /// The socket is done (closed by the peer, or garbage).
    Stop,
}

/// Reads `stream` until every line came, the socket ends, or the pusher is done and the grace
/// period passed; `parse` takes complete messages from the front of the buffer.
async fn pump<S, P>(stream: &mut S, checker: &mut Checker, mut parse: P)
where
    S: AsyncRead + Unpin,
    P: FnMut(&[u8], &mut Checker, u64) -> Parsed,
{
    let clock = checker.clock.clone();
    let mut buf: Vec<u8> = Vec::with_capacity(SUBSCRIBER_READ_CHUNK * 2);
    let mut start = 0usize;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if buf.len() - start < SUBSCRIBER_READ_CHUNK && start > 0 {
            buf.drain(..start);
            start = 0;
        }
        // Read into the spare capacity, never zero-filled first: a `resize` to make room
        // zeroed 64 KiB per read, which at 1000 subscribers was most of the tool's CPU.
        buf.reserve(SUBSCRIBER_READ_CHUNK);
        let read = match drain_deadline {
            Some(deadline) => {
                match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => return,
                }
            }
            None => tokio::select! {
                read = stream.read_buf(&mut buf) => read,
                () = clock.pusher_done.notified() => {
                    drain_deadline = Some(Instant::now() + DRAIN_GRACE);
                    continue;
                }
            },
        };
        match read {
            Ok(0) | Err(_) => {
                checker.result.violations.disconnected += 1;
                return;
            }
            Ok(_) => {}
        }
        let now = clock.origin.mono(Instant::now());
        match parse(&buf[start..], checker, now) {
            Parsed::More(used) => start += used,
            Parsed::Stop => return,
        }
        if checker.complete() {
            return;
        }
        checker.resolve(false);
    }
}

/// Takes the stream's WebSocket frames from `buf`: log lines, `seq`s and the first sign of the
/// deployment.
fn parse_ws(buf: &[u8], checker: &mut Checker, now: u64, ready: &mut bool) -> Parsed {
    let mut used = 0;
    loop {
        let frame = match ws::parse_server_frame(&buf[used..], MAX_SUBSCRIBER_FRAME) {
            Ok(Some(frame)) if frame.fin => frame,
            Ok(None) => return Parsed::More(used),
            // The server never fragments a frame: a fragment is as unreadable as garbage.
            Ok(Some(_)) | Err(_) => {
                checker.result.violations.unparsable += 1;
                checker.result.violations.disconnected += 1;
                return Parsed::Stop;
            }
        };
        let bytes = &buf[used + frame.payload.start..used + frame.payload.end];
        used += frame.len;
        match frame.opcode {
            ws::opcode::TEXT => {}
            ws::opcode::CLOSE => {
                checker.result.violations.disconnected += 1;
                return Parsed::Stop;
            }
            _ => continue,
        }
        if !*ready
            && (find(bytes, &TYPE_NEW, 0).is_some()
                || find(bytes, &TYPE_STATUS, 0).is_some()
                || find(bytes, &TYPE_LOG, 0).is_some())
        {
            *ready = true;
            checker.clock.mark_ready();
        }
        // Every log event in the frame (one per frame, or several if the server batches).
        let mut at = 0;
        while let Some(found) = find(bytes, &CONTENT, at) {
            at = found + CONTENT.needle().len();
            checker.line(&bytes[at..], now);
        }
        // Only lines' seqs must grow: a status carries the last line stored before it, which a
        // replay sends after the lines (a `building` status at seq 0 after line 5000).
        if at == 0 {
            continue;
        }
        if let Some(seq_at) = find(bytes, &SEQ, 0) {
            if let Some(seq) = parse_u64_at(bytes, seq_at + SEQ.needle().len()) {
                checker.seq(seq);
            }
        }
        if checker.complete() {
            return Parsed::More(used);
        }
    }
}

/// One deployd stream subscriber, its handshake and auth frame already done.
async fn ws_subscriber(
    mut ws: super::client::Ws,
    clock: Arc<Clock>,
    lines: u64,
    batch: u64,
    joined_at: Option<u64>,
) -> SubscriberResult {
    let mut checker = Checker::new(clock, lines, batch, joined_at);
    let mut ready = false;
    // The handshake is done and the server sends nothing before our auth frame, so no frame
    // bytes sit in tungstenite's buffer: reading the raw stream from here loses nothing.
    pump(ws.get_mut(), &mut checker, |buf, checker, now| {
        parse_ws(buf, checker, now, &mut ready)
    })
    .await;
    let result = checker.finish().await;
    let _ = ws.close(None).await;
    result
}

/// One Redis `SUBSCRIBE`r, its subscription confirmed.
async fn redis_subscriber(
    mut socket: tokio::net::TcpStream,
    clock: Arc<Clock>,
    lines: u64,
    batch: u64,
) -> SubscriberResult {
    let mut checker = Checker::new(clock, lines, batch, None);
    pump(&mut socket, &mut checker, |buf, checker, now| {
        redis::parse_messages(buf, |payload| checker.line(payload, now))
            .map_or(Parsed::Stop, Parsed::More)
    })
    .await;
    checker.finish().await
}

/// What the subscribers subscribe to.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// A deployd app's stream (`/apps/{app}`).
    Deployd { target: Target, app: String },
    /// A Redis channel.
    Redis { addr: String, channel: String },
}

/// Connects K subscribers (a bounded number at a time) and starts reading; each is ready once
/// it saw the deployment (Redis: once subscribed).
async fn spawn_subscribers(
    source: &Source,
    count: usize,
    clock: &Arc<Clock>,
    lines: u64,
    batch: u64,
    joined_at: Option<u64>,
) -> Result<Vec<tokio::task::JoinHandle<SubscriberResult>>, BenchError> {
    let mut tasks = Vec::with_capacity(count);
    match source {
        Source::Deployd { target, app } => {
            let url = ws_url(&target.url, &format!("/apps/{}", encode_path_segment(app)))
                .map_err(|e| BenchError::Usage(e.to_string()))?;
            let auth = Message::Text(
                serde_json::json!({ "type": "auth", "data": { "token": target.token } })
                    .to_string()
                    .into(),
            );
            let mut connecting = futures_util::stream::iter((0..count).map(|_| {
                let (url, auth) = (url.clone(), auth.clone());
                async move {
                    let mut ws = connect(&url, None).await?;
                    ws.send(auth).await.map_err(protocol)?;
                    Ok::<_, BenchError>(ws)
                }
            }))
            .buffer_unordered(CONNECT_CONCURRENCY);
            while let Some(ws) = connecting.next().await {
                let clock = clock.clone();
                tasks.push(tokio::spawn(ws_subscriber(
                    ws?, clock, lines, batch, joined_at,
                )));
            }
        }
        Source::Redis { addr, channel } => {
            let mut connecting =
                futures_util::stream::iter((0..count).map(|_| redis::subscribe(addr, channel)))
                    .buffer_unordered(CONNECT_CONCURRENCY);
            while let Some(socket) = connecting.next().await {
                clock.mark_ready();
                let clock = clock.clone();
                tasks.push(tokio::spawn(redis_subscriber(socket?, clock, lines, batch)));
            }
        }
    }
    Ok(tasks)
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<SubscriberResult>>) -> SubscriberResult {
    let mut totals = SubscriberResult::default();
    for task in tasks {
        match task.await {
            Ok(r) => totals.merge(&r),
            Err(_) => totals.violations.disconnected += 1,
        }
    }
    totals
}

/// Where a run's subscribers live.
#[derive(Debug, Clone, Default)]
pub(super) enum Placement {
    /// Tasks of this process.
    InProcess,
    /// A `deployd bench subscribe` child, its command line prefixed by these words (e.g.
    /// `taskset -c 1`).
    #[default]
    Child,
    ChildWith(Vec<String>),
}

/// The subscribers of one run, wherever they live.
pub(super) enum Subscribers {
    InProcess {
        clock: Arc<Clock>,
        tasks: Vec<tokio::task::JoinHandle<SubscriberResult>>,
        count: usize,
    },
    Child(Box<child::SubscriberChild>),
}

impl Subscribers {
    /// Connects `count` subscribers to `source`, each expecting `lines` lines in batches of
    /// `batch`, where `placement` says.
    pub(super) async fn connect(
        source: &Source,
        count: usize,
        lines: u64,
        batch: u64,
        joined_at: Option<u64>,
        placement: &Placement,
    ) -> Result<Subscribers, BenchError> {
        let prefix = match placement {
            Placement::InProcess => {
                let measured = lines - joined_at.unwrap_or(0);
                let clock = Clock::new(measured.div_ceil(batch));
                let tasks =
                    spawn_subscribers(source, count, &clock, lines, batch, joined_at).await?;
                return Ok(Subscribers::InProcess {
                    clock,
                    tasks,
                    count,
                });
            }
            Placement::Child => &[][..],
            Placement::ChildWith(prefix) => &prefix[..],
        };
        let child = child::SubscriberChild::spawn(prefix, source, count, lines, batch).await?;
        Ok(Subscribers::Child(Box::new(child)))
    }

    /// The pusher started the deployment: waits until the subscribers saw it; returns how many.
    pub(super) async fn started(&mut self) -> Result<usize, BenchError> {
        match self {
            Subscribers::InProcess { clock, count, .. } => Ok(clock.wait_ready(*count).await),
            Subscribers::Child(child) => child.started().await,
        }
    }

    /// Records batch acks as the pusher sees them.
    pub(super) fn acker(&self) -> Box<dyn FnMut(u64, Instant) + Send> {
        match self {
            Subscribers::InProcess { clock, .. } => {
                let clock = clock.clone();
                Box::new(move |b, at| clock.ack_mono(b, clock.origin.mono(at)))
            }
            Subscribers::Child(child) => child.acker(),
        }
    }

    /// The pusher is done: waits for every subscriber and merges what they saw.
    pub(super) async fn finish(self) -> Result<SubscriberResult, BenchError> {
        match self {
            Subscribers::InProcess { clock, tasks, .. } => {
                let waker = clock.wake_when_done();
                let totals = join_all(tasks).await;
                waker.abort();
                Ok(totals)
            }
            Subscribers::Child(child) => child.finish().await,
        }
    }
}

/// `deployd bench subscribe`: the child side of the protocol in the module docs.
pub(super) async fn run_subscribe(
    target: Option<Target>,
    options: &SubscribeOptions,
) -> Result<(), BenchError> {
    let source = match (&options.app, &options.redis) {
        (Some(app), None) => Source::Deployd {
            target: target.ok_or_else(|| BenchError::Usage("--token is required".into()))?,
            app: app.clone(),
        },
        (None, Some(addr)) => Source::Redis {
            addr: addr.clone(),
            channel: options.channel.clone(),
        },
        _ => return Err(BenchError::Usage("give one of --app and --redis".into())),
    };
    if options.subscribers == 0 || options.batch == 0 || options.lines == 0 {
        return Err(BenchError::Usage(
            "--subscribers, --lines and --batch must be at least 1".into(),
        ));
    }
    let clock = Clock::new(options.lines.div_ceil(options.batch));
    let tasks = spawn_subscribers(
        &source,
        options.subscribers,
        &clock,
        options.lines,
        options.batch,
        None,
    )
    .await?;
    let mut out = tokio::io::stdout();
    let say = |line: String| format!("{line}\n").into_bytes();
    out.write_all(&say(format!("connected {}", tasks.len())))
        .await
        .map_err(protocol)?;
    out.flush().await.map_err(protocol)?;
    let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut waker = None;
    let reader = async {
        while let Ok(Some(line)) = input.next_line().await {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("ack") => {
                    let batch = words.next().and_then(|w| w.parse().ok());
                    let mono = words.next().and_then(|w| w.parse().ok());
                    if let (Some(batch), Some(mono)) = (batch, mono) {
                        clock.ack_mono(batch, mono);
                    }
                }
                Some("started") => {
                    let ready = clock.wait_ready(options.subscribers).await;
                    let _ = out.write_all(&say(format!("ready {ready}"))).await;
                    let _ = out.flush().await;
                }
                Some("done") => break,
                _ => {}
            }
        }
        // `done`, or the parent went away: either way no more acks come.
        waker = Some(clock.wake_when_done());
    };
    let results = async { join_all(tasks).await };
    let ((), mut totals) = tokio::join!(reader, results);
    if let Some(waker) = waker {
        waker.abort();
    }
    totals.cpu_secs = cpu_secs(None).unwrap_or(0.0);
    let json = serde_json::to_string(&totals).map_err(protocol)?;
    out.write_all(&say(format!("result {json}")))
        .await
        .map_err(protocol)?;
    out.flush().await.map_err(protocol)?;
    Ok(())
}

/// What a `deployd bench subscribe` child inherits from its parent's command line besides the
/// scenario's own sizes: without it, a child stopped at the default `--timeout` (120 s) while its
/// parent ran a longer 10,000-subscriber scenario, and it could not trust a `--cacert`.
#[derive(Debug, Clone, Default)]
pub(super) struct ChildArgs {
    pub timeout: u64,
    pub cacert: Option<std::path::PathBuf>,
}

/// Set once by `run_bench`, like the TLS roots (one `deployd bench` process runs one scenario).
static CHILD_ARGS: std::sync::OnceLock<ChildArgs> = std::sync::OnceLock::new();

/// Records the parent's options every subscriber child is started with.
pub(super) fn pass_to_children(args: ChildArgs) {
    // A second call (never made by `run_bench`) keeps the first.
    let _ = CHILD_ARGS.set(args);
}

mod child {
    //! The parent's end of a `deployd bench subscribe` child.

    use super::*;
    use tokio::process::{Child, ChildStdout, Command};

    /// How long the parent waits for a line from the child (connecting 10,000 sockets takes a
    /// while on a busy machine).
    const CHILD_LINE_TIMEOUT: Duration = Duration::from_secs(120);

    /// Adds the parent's `--timeout` and `--cacert` (global options: valid after the scenario).
    pub(super) fn inherit(command: &mut Command, parent: Option<&ChildArgs>) {
        let Some(parent) = parent else {
            return;
        };
        command.args(["--timeout", &parent.timeout.to_string()]);
        if let Some(cacert) = &parent.cacert {
            command.arg("--cacert").arg(cacert);
        }
    }

    pub(in crate::cli::bench) struct SubscriberChild {
        child: Child,
        out: tokio::io::Lines<tokio::io::BufReader<ChildStdout>>,
        to_child: tokio::sync::mpsc::UnboundedSender<String>,
        writer: tokio::task::JoinHandle<()>,
        origin: MonoOrigin,
    }

    impl SubscriberChild {
        pub(super) async fn spawn(
            prefix: &[String],
            source: &Source,
            count: usize,
            lines: u64,
            batch: u64,
        ) -> Result<Self, BenchError> {
            let exe = std::env::current_exe()
                .map_err(|e| BenchError::Usage(format!("cannot find this executable: {e}")))?;
            let mut command = match prefix.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(exe);
                    c
                }
                None => Command::new(exe),
            };
            command.arg("bench");
            match source {
                Source::Deployd { target, app } => {
                    command
                        .args(["--url", &target.url])
                        .env("DEPLOYD_TOKEN", &target.token)
                        .args(["subscribe", "--app", app]);
                }
                Source::Redis { addr, channel } => {
                    command.args(["subscribe", "--redis", addr, "--channel", channel]);
                }
            }
            command
                .args(["--subscribers", &count.to_string()])
                .args(["--lines", &lines.to_string()])
                .args(["--batch", &batch.to_string()]);
            inherit(&mut command, CHILD_ARGS.get());
            command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true);
            let mut child = command.spawn().map_err(|e| {
                BenchError::Usage(format!("cannot start the subscriber child: {e}"))
            })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(protocol("the subscriber child has no pipes"));
            };
            let (to_child, mut queue) = tokio::sync::mpsc::unbounded_channel::<String>();
            let writer = tokio::spawn(async move {
                let mut stdin = tokio::io::BufWriter::new(stdin);
                while let Some(line) = queue.recv().await {
                    if stdin.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                    // Write whatever queued up since, then flush once.
                    while let Ok(more) = queue.try_recv() {
                        if stdin.write_all(more.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    if stdin.flush().await.is_err() {
                        return;
                    }
                }
            });
            let mut this = Self {
                child,
                out: tokio::io::BufReader::new(stdout).lines(),
                to_child,
                writer,
                origin: MonoOrigin::now(),
            };
            this.expect("connected").await?;
            Ok(this)
        }

        /// The rest of the child's next line, which must start with `word`.
        async fn expect(&mut self, word: &str) -> Result<String, BenchError> {
            let line = tokio::time::timeout(CHILD_LINE_TIMEOUT, self.out.next_line()).await;
            match line {
                Ok(Ok(Some(line))) => match line.strip_prefix(word) {
                    Some(rest) => Ok(rest.trim().to_owned()),
                    None => Err(protocol(format!(
                        "the subscriber child said {line:?}, expected {word}"
                    ))),
                },
                Ok(_) => {
                    let status = self.child.wait().await.ok();
                    Err(protocol(format!(
                        "the subscriber child ended ({status:?}) before saying {word}"
                    )))
                }
                Err(_) => Err(protocol(format!(
                    "the subscriber child did not say {word} within {CHILD_LINE_TIMEOUT:?}"
                ))),
            }
        }

        pub(super) async fn started(&mut self) -> Result<usize, BenchError> {
            let _ = self.to_child.send("started\n".into());
            self.expect("ready")
                .await?
                .parse()
                .map_err(|_| protocol("the subscriber child sent a bad ready count"))
        }

        pub(super) fn acker(&self) -> Box<dyn FnMut(u64, Instant) + Send> {
            let to_child = self.to_child.clone();
            let origin = self.origin;
            Box::new(move |b, at| {
                let _ = to_child.send(format!("ack {b} {}\n", origin.mono(at)));
            })
        }

        pub(super) async fn finish(mut self) -> Result<SubscriberResult, BenchError> {
            let _ = self.to_child.send("done\n".into());
            let json = self.expect("result").await?;
            self.writer.abort();
            let _ = self.child.wait().await;
            serde_json::from_str(&json)
                .map_err(|e| protocol(format!("bad result from the subscriber child: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    /// Regression: the subscriber child was started without the parent's `--timeout`, so a
    /// 10,000-subscriber run given `--timeout 600` lost its child at the default 120 s.
    #[test]
    fn a_subscriber_child_gets_the_parents_timeout_and_cacert() {
        let mut command = tokio::process::Command::new("deployd");
        child::inherit(
            &mut command,
            Some(&ChildArgs {
                timeout: 600,
                cacert: Some("/etc/ca.pem".into()),
            }),
        );
        let args: Vec<String> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["--timeout", "600", "--cacert", "/etc/ca.pem"]);

        let mut command = tokio::process::Command::new("deployd");
        child::inherit(&mut command, None);
        assert_eq!(command.as_std().get_args().count(), 0);
    }

    /// The subscriber's checker against a hand-made stream: a duplicate, a gap, a late line, a
    /// `seq` going back and a close before the end must each be counted.
    #[tokio::test]
    async fn subscriber_counts_every_kind_of_violation_but_not_a_status_seq_older_than_its_lines() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(socket).await.expect("ws");
            let auth = ws.next().await.expect("auth frame").expect("auth frame");
            assert!(auth.to_text().expect("text").contains("\"auth\""));
            let log = |index: u64, seq: u64| {
                Message::Text(
                    format!(
                        r#"{{"type":"log","id":"d","data":{{"content":"{index:010} text"}},"seq":{seq}}}"#
                    )
                    .into(),
                )
            };
            ws.send(Message::Text(
                r#"{"type":"new","data":{"deployment":"d"}}"#.into(),
            ))
            .await
            .expect("send");
            for (index, seq) in [(0, 1), (1, 2), (1, 2), (3, 4), (2, 3), (9_999_999_999, 5)] {
                ws.send(log(index, seq)).await.expect("send");
                // As in a replay: the status comes after the lines, with its own (older) seq.
                ws.send(Message::Text(
                    r#"{"type":"status","id":"d","data":{"status":"building"},"seq":0}"#.into(),
                ))
                .await
                .expect("send");
            }
            ws.close(None).await.expect("close");
        });
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/apps/x"))
            .await
            .expect("connect");
        let (mut tx, rx) = ws.split();
        tx.send(Message::Text(
            r#"{"type":"auth","data":{"token":"t"}}"#.into(),
        ))
        .await
        .expect("auth");
        let ws = tx.reunite(rx).expect("same socket");
        let clock = Clock::new(5);
        // As in `fanout`: once the pusher is done, subscribers are told so repeatedly.
        let waker = clock.wake_when_done();
        let result = ws_subscriber(ws, clock.clone(), 5, 1, None).await;
        waker.abort();
        server.await.expect("server");
        assert_eq!(clock.ready.load(Ordering::Acquire), 1);
        assert_eq!(result.deliveries, 5);
        let v = result.violations;
        assert!(result.last_arrival_mono.is_some());
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.out_of_order, 1, "line 2 after line 3");
        assert_eq!(v.missing, 1, "line 4 never came");
        assert_eq!(
            v.seq_regressions, 2,
            "2 after 2, 3 after 4; a status's older seq is no regression"
        );
        assert_eq!(v.disconnected, 1);
        assert_eq!(v.unparsable, 1);
        assert!(!v.is_clean());
        // No pusher acked anything here: no latency is made up from the clock's origin.
        assert_eq!(result.latency.latency().samples, 0);
        assert_eq!(result.never_acked, 5);
    }
}
