//! Redis, the peer `deployd bench compare` measures against: a redis-server of its own (temp
//! dir, AOF with `appendfsync everysec`), a minimal RESP client (pipelined `XADD`, `PUBLISH`,
//! `SUBSCRIBE`; no crate, the tool needs four commands), and the two shapes deployd's scenarios
//! have: P clients appending N lines in pipelined batches of B with W batches in flight (like
//! `ingest`), and one publisher sending N lines at R lines/s to K subscribers (like `fanout`).
//!
//! It never talks to a Redis it did not start.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::client::{per_sec, FrameBuilder};
use super::report::Histogram;
use super::{protocol, BenchError, FanoutOptions, CONNECT_TIMEOUT, INDEX_DIGITS};

/// How long redis-server may take to answer its first `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a Redis socket at once.
const READ_CHUNK: usize = 64 * 1024;

/// A redis-server this tool started; killed when dropped.
pub(super) struct RedisServer {
    child: Child,
    pub(super) addr: String,
}

impl RedisServer {
    /// Starts `binary` on a free loopback port with its data in `dir`.
    pub(super) async fn start(binary: &Path, dir: &Path) -> Result<RedisServer, BenchError> {
        // Port 0 turns Redis' TCP listener off, so the port is picked by binding one here.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| BenchError::Usage(format!("no free port for redis-server: {e}")))?
            .port();
        let child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir)
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", "", "--daemonize", "no", "--maxclients", "20000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Usage(format!("cannot start {}: {e}", binary.display())))?;
        let server = RedisServer {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut socket) = TcpStream::connect(&server.addr).await {
                if command(&mut socket, &[b"PING"]).await.is_ok() {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                return Err(BenchError::Usage(format!(
                    "redis-server did not answer on {} within {START_TIMEOUT:?}",
                    server.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Where the redis-server binary is, or why `compare` cannot run.
pub(super) fn find_redis_server() -> Result<PathBuf, BenchError> {
    super::system::on_path("redis-server").ok_or_else(|| {
        BenchError::Usage(
            "redis-server is not on PATH: install it (Debian/Ubuntu: apt-get install -y redis-server) to compare with Redis".into(),
        )
    })
}

// ---- RESP ----------------------------------------------------------------------------------

/// Appends one command (an array of bulk strings) to `out`.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// One parsed reply: only what the tool looks at.
#[derive(Debug, PartialEq)]
enum Reply<'a> {
    Ok,
    Error(&'a [u8]),
    Bulk(&'a [u8]),
    Array(Vec<Reply<'a>>),
}

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    // A reply's lines end in CRLF and never hold a bare CR before it: the first CR is the end
    // (a `memmem::find` built its searcher on every call, per reply line).
    let at = memchr::memchr(b'\r', buf.get(from..)?)? + from;
    (buf.get(at + 1) == Some(&b'\n')).then_some(at)
}

/// The reply at the front of `buf` and its length, `None` if incomplete.
fn parse_reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, String> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some(end) = line_end(buf, 1) else {
        return Ok(None);
    };
    let head = &buf[1..end];
    let number = || -> Result<i64, String> {
        std::str::from_utf8(head)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad RESP length {:?}", String::from_utf8_lossy(head)))
    };
    match kind {
        b'+' | b':' => Ok(Some((Reply::Ok, end + 2))),
        b'-' => Ok(Some((Reply::Error(head), end + 2))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(&[]), end + 2)));
            }
            let start = end + 2;
            let stop = start + len as usize;
            if buf.len() < stop + 2 {
                return Ok(None);
            }
            Ok(Some((Reply::Bulk(&buf[start..stop]), stop + 2)))
        }
        b'*' => {
            let count = number()?.max(0) as usize;
            let mut at = end + 2;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                match parse_reply(&buf[at..])? {
                    Some((item, len)) => {
                        items.push(item);
                        at += len;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), at)))
        }
        other => Err(format!("unexpected RESP type byte {other:#x}")),
    }
}

/// Sends one command and reads its reply; an error reply is an error.
async fn command(socket: &mut TcpStream, args: &[&[u8]]) -> Result<(), BenchError> {
    let mut out = Vec::new();
    encode(&mut out, args);
    socket.write_all(&out).await.map_err(protocol)?;
    let mut buf = Vec::new();
    loop {
        if let Some((reply, _)) = parse_reply(&buf).map_err(protocol)? {
            return match reply {
                Reply::Error(e) => Err(protocol(format!("redis: {}", String::from_utf8_lossy(e)))),
                _ => Ok(()),
            };
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.map_err(protocol)?;
        if n == 0 {
            return Err(protocol("redis closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Connects and subscribes to `channel`; returns once Redis confirmed the subscription.
pub(super) async fn subscribe(addr: &str, channel: &str) -> Result<TcpStream, BenchError> {
    let mut socket = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| BenchError::Http(format!("connect {addr}: timed out")))?
        .map_err(|e| BenchError::Http(format!("connect {addr}: {e}")))?;
    let _ = socket.set_nodelay(true);
    command(&mut socket, &[b"SUBSCRIBE", channel.as_bytes()]).await?;
    Ok(socket)
}

/// Takes the complete pub/sub `message`s from the front of `buf`, calling `on_payload` with each
/// payload; returns the bytes consumed, `None` on garbage.
pub(super) fn parse_messages(buf: &[u8], mut on_payload: impl FnMut(&[u8])) -> Option<usize> {
    let mut used = 0;
    loop {
        match parse_reply(&buf[used..]) {
            Ok(Some((reply, len))) => {
                used += len;
                if let Reply::Array(items) = reply {
                    if let [Reply::Bulk(b"message"), _, Reply::Bulk(payload)] = items.as_slice() {
                        on_payload(payload);
                    }
                }
            }
            Ok(None) => return Some(used),
            Err(_) => return None,
        }
    }
}

// ---- the two shapes ------------------------------------------------------------------------

/// Pre-encoded batches of one command per line: `XADD key * l <line>` or `PUBLISH ch <line>`.
struct Batches {
    head: Vec<u8>,
    numbered: bool,
    line: Vec<u8>,
}

impl Batches {
    fn new(head: &[&[u8]], line_bytes: usize, numbered: bool) -> Self {
        // The same text as deployd's lines (FrameBuilder's filler), without JSON quoting.
        let json = FrameBuilder::new(line_bytes, numbered).line_text();
        let mut prefix = Vec::new();
        prefix.extend_from_slice(format!("*{}\r\n", head.len() + 1).as_bytes());
        for arg in head {
            prefix.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            prefix.extend_from_slice(arg);
            prefix.extend_from_slice(b"\r\n");
        }
        prefix.extend_from_slice(format!("${}\r\n", json.len()).as_bytes());
        Self {
            head: prefix,
            numbered,
            line: json,
        }
    }

    fn batch(&self, first: u64, count: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(count * (self.head.len() + self.line.len() + 2));
        for i in 0..count as u64 {
            out.extend_from_slice(&self.head);
            let start = out.len();
            out.extend_from_slice(&self.line);
            if self.numbered {
                let mut index = first + i;
                for digit in out[start..start + INDEX_DIGITS].iter_mut().rev() {
                    *digit = b'0' + (index % 10) as u8;
                    index /= 10;
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

/// Sends `lines` commands in batches of `batch`, at most `window` batches unanswered, paced at
/// `rate` lines/s when not 0; calls `on_ack(batch, instant)` when a batch's last reply came.
/// Returns the send→last-reply latency and the instant the first batch was sent.
async fn send_batches(
    socket: &mut TcpStream,
    batches: &Batches,
    lines: u64,
    batch: usize,
    window: usize,
    rate: u64,
    mut on_ack: impl FnMut(u64, Instant),
) -> Result<(Histogram, Instant), BenchError> {
    let _ = socket.set_nodelay(true);
    let (mut rx, mut tx) = socket.split();
    let batch_lines = batch as u64;
    let total = lines.div_ceil(batch_lines);
    let mut in_flight: VecDeque<(u64, u64, Instant)> = VecDeque::new(); // (batch, replies, sent)
    let mut latency = Histogram::default();
    let mut next = 0u64;
    let started = Instant::now();
    let interval = (rate > 0).then(|| Duration::from_secs_f64(batch_lines as f64 / rate as f64));
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK * 2);
    let mut start = 0;
    while next < total || !in_flight.is_empty() {
        while next < total && in_flight.len() < window {
            if let Some(interval) = interval {
                let due = started + interval.mul_f64(next as f64);
                if Instant::now() < due {
                    if !in_flight.is_empty() {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                }
            }
            let first = next * batch_lines;
            let count = batch_lines.min(lines - first);
            tx.write_all(&batches.batch(first, count as usize))
                .await
                .map_err(protocol)?;
            in_flight.push_back((next, count, Instant::now()));
            next += 1;
        }
        if in_flight.is_empty() {
            continue;
        }
        let due = interval
            .filter(|_| next < total && in_flight.len() < window)
            .map(|i| started + i.mul_f64(next as f64));
        if start > 0 && buf.len() - start < READ_CHUNK {
            buf.drain(..start);
            start = 0;
        }
        // Into the spare capacity, not zero-filled first (as the subscribers read).
        buf.reserve(READ_CHUNK);
        let read = match due {
            Some(due) => match tokio::time::timeout_at(due, rx.read_buf(&mut buf)).await {
                Ok(read) => read,
                Err(_) => continue,
            },
            None => rx.read_buf(&mut buf).await,
        };
        let n = read.map_err(protocol)?;
        if n == 0 {
            return Err(protocol("redis closed the connection"));
        }
        let now = Instant::now();
        while let Some((reply, len)) = parse_reply(&buf[start..]).map_err(protocol)? {
            if let Reply::Error(e) = reply {
                return Err(protocol(format!("redis: {}", String::from_utf8_lossy(e))));
            }
            start += len;
            let Some(front) = in_flight.front_mut() else {
                return Err(protocol("redis sent a reply nobody asked for"));
            };
            front.1 -= 1;
            if front.1 == 0 {
                let (b, _, sent) = front.to_owned();
                in_flight.pop_front();
                latency.record(now.duration_since(sent).as_micros() as u64);
                on_ack(b, now);
            }
        }
    }
    Ok((latency, started))
}

/// What `XADD` ingest measured.
pub(super) struct XaddResult {
    pub(super) lines_per_sec: f64,
    pub(super) ack_latency: Histogram,
}

/// P clients, each `XADD`ing N lines to its own stream, pipelined like `ingest`.
pub(super) async fn xadd(
    addr: &str,
    clients: usize,
    lines: u64,
    line_bytes: usize,
    batch: usize,
    window: usize,
) -> Result<XaddResult, BenchError> {
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        sockets.push(
            TcpStream::connect(addr)
                .await
                .map_err(|e| BenchError::Http(format!("connect {addr}: {e}")))?,
        );
    }
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for (n, mut socket) in sockets.into_iter().enumerate() {
        let go = go.clone();
        let key = format!("bench:ingest:{n}:{}", super::client::random_suffix());
        tasks.push(tokio::spawn(async move {
            let batches = Batches::new(&[b"XADD", key.as_bytes(), b"*", b"l"], line_bytes, false);
            go.wait().await;
            let (latency, _) =
                send_batches(&mut socket, &batches, lines, batch, window, 0, |_, _| {}).await?;
            Ok::<_, BenchError>((latency, Instant::now()))
        }));
    }
    go.wait().await;
    let started = Instant::now();
    let mut latency = Histogram::default();
    let mut last = started;
    for task in tasks {
        let (h, done) = task
            .await
            .map_err(|e| protocol(format!("xadd task: {e}")))??;
        latency.merge(&h);
        last = last.max(done);
    }
    Ok(XaddResult {
        lines_per_sec: per_sec(
            (lines * clients as u64) as f64,
            last.duration_since(started),
        ),
        ack_latency: latency,
    })
}

/// One publisher: `PUBLISH`es fanout's numbered lines to `channel` like fanout's pusher (same
/// lines, line size, rate, window and `batch`); returns the instant the first batch was sent
/// and when the last reply came.
pub(super) async fn publish(
    addr: &str,
    channel: &str,
    shape: &FanoutOptions,
    batch: usize,
    on_ack: impl FnMut(u64, Instant),
) -> Result<(Instant, Instant), BenchError> {
    let mut socket = TcpStream::connect(addr)
        .await
        .map_err(|e| BenchError::Http(format!("connect {addr}: {e}")))?;
    let batches = Batches::new(&[b"PUBLISH", channel.as_bytes()], shape.line_bytes, true);
    let (_, started) = send_batches(
        &mut socket,
        &batches,
        shape.lines,
        batch,
        shape.window,
        shape.rate,
        on_ack,
    )
    .await?;
    Ok((started, Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse_whole_or_not_at_all() {
        let reply = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        let mut got = Vec::new();
        assert_eq!(
            parse_messages(reply, |p| got.push(p.to_vec())),
            Some(reply.len())
        );
        assert_eq!(got, vec![b"hello".to_vec()]);
        for cut in 0..reply.len() {
            let mut none = 0;
            assert_eq!(parse_messages(&reply[..cut], |_| none += 1), Some(0));
            assert_eq!(none, 0);
        }
        assert_eq!(
            parse_reply(b"-ERR x\r\n").expect("parses"),
            Some((Reply::Error(b"ERR x"), 8))
        );
        assert!(parse_reply(b"?what\r\n").is_err());
        let mut out = Vec::new();
        encode(&mut out, &[b"PING"]);
        assert_eq!(out, b"*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn publish_batches_number_their_lines_like_deployd_frames() {
        let batches = Batches::new(&[b"PUBLISH", b"ch"], 20, true);
        let bytes = batches.batch(41, 2);
        let mut at = 0;
        let mut indexes = Vec::new();
        while let Some((Reply::Array(items), len)) = parse_reply(&bytes[at..]).expect("parses") {
            at += len;
            let [Reply::Bulk(b"PUBLISH"), Reply::Bulk(b"ch"), Reply::Bulk(line)] = items.as_slice()
            else {
                panic!("a PUBLISH command")
            };
            assert_eq!(line.len(), 20);
            indexes.push(super::super::client::parse_index(line));
        }
        assert_eq!(indexes, vec![Some(41), Some(42)]);
    }
}
