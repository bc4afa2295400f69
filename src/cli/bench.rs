//! `deployd bench`: a load tool that drives a running deployd over its real protocols (like
//! `redis-benchmark` for Redis) and prints what it measured.
//!
//! Three scenarios, each a public async function so `benches/throughput.rs` can call them
//! against an in-process server:
//!
//! - [`ingest`]: P pushers, each with its own app and deployment, send N lines of S bytes in
//!   batches of B over the push protocol (`api::protocol`), keeping up to W batches
//!   unacknowledged. Lines/s and MB/s count only *acknowledged* (durable) lines; the ack latency
//!   is measured from the batch's send to its `ack` frame.
//! - [`fanout`]: K WebSocket subscribers on one app's stream (`/apps/{app}`), one pusher sending
//!   N lines at R lines/s. Each line's content starts with its 0-based index (10 digits), so a
//!   subscriber checks it got every line once and in order, and the latency from the batch's
//!   ack (as seen by the pusher) to the line's arrival at each subscriber.
//! - [`read`]: one deployment of N lines, then its `/output` read R times; MB/s of body.
//!
//! The tool must not be the bottleneck: frames are built by copying a pre-serialised line
//! template (only the line index and batch number change), each socket is driven by one task,
//! and subscribers find the line index in a frame by a substring search instead of parsing JSON.
//!
//! Every run is bounded: counts are capped ([`MAX_TOTAL_LINES`], …) and the whole scenario by
//! `--timeout`. Only loopback servers are driven unless `--allow-remote` is given. Apps created
//! by a run (`bench-<scenario>-…`) are kept, so their size on disk can be inspected.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{basic_auth_header, encode_path_segment, http_url, ws_url};
use crate::api::protocol::{ClientFrame, ServerFrame, MAX_PUSH_FRAME_BYTES};
use crate::status::Status;

/// Most lines one scenario sends in total (all pushers): bounds the run's time and memory.
pub const MAX_TOTAL_LINES: u64 = 100_000_000;
/// Most pushers in `ingest`.
pub const MAX_PUSHERS: usize = 256;
/// Most subscribers in `fanout`.
pub const MAX_SUBSCRIBERS: usize = 10_000;
/// Most `/output` reads in `read`.
pub const MAX_READS: u32 = 10_000;
/// Longest line; the server cuts longer ones (`store::writer::MAX_LINE_BYTES`).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Fanout lines start with their index: 10 digits and a space.
const INDEX_DIGITS: usize = 10;
/// Shortest line in `fanout` (the index prefix plus a little text).
pub const MIN_FANOUT_LINE_BYTES: usize = 16;
/// Most batches in flight per pusher (the server reads at most `api::push::MAX_BATCHES_IN_FLIGHT`).
pub const MAX_WINDOW: usize = 64;
/// Room left in a frame for everything but the lines' text.
const FRAME_OVERHEAD_BYTES: usize = 128;

/// How long to wait for a connection or an HTTP answer during setup.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long fanout waits for every subscriber to see the new deployment before sending anyway
/// (a subscriber that missed it gets the lines from the stream's replay, with more latency).
const SUBSCRIBERS_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Subscribers connecting at once: enough to set up 1000 quickly without a SYN flood.
const CONNECT_CONCURRENCY: usize = 64;
/// Bytes in a MB (decimal, like disk and network figures).
const MB: f64 = 1_000_000.0;

/// Arguments of `deployd bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the deployd server
    #[arg(
        long,
        env = "DEPLOYD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API token of a user allowed to create apps
    #[arg(long, env = "DEPLOYD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the result as JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
    /// Drive a server that is not on a loopback address
    #[arg(long, global = true)]
    pub allow_remote: bool,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 120, value_name = "SECS", global = true)]
    pub timeout: u64,
    /// Also report the CPU time the server process (this pid, on this machine) used during the
    /// run, beside the tool's own: on a small machine both share the cores, and this says which
    /// side a figure is bound by
    #[arg(long, value_name = "PID", global = true)]
    pub server_pid: Option<u32>,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios of `deployd bench`.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// P pushers send N lines each over the push protocol; lines/s on durable acks.
    Ingest(IngestOptions),
    /// K stream subscribers on one app, one pusher; deliveries/s and ack-to-arrival latency.
    Fanout(FanoutOptions),
    /// Read one deployment's /output R times; MB/s.
    Read(ReadOptions),
}

/// `deployd bench ingest`.
#[derive(Debug, Clone, Args)]
pub struct IngestOptions {
    /// Concurrent pushers, each with its own app and deployment
    #[arg(long, default_value_t = 4)]
    pub pushers: usize,
    /// Lines sent by each pusher
    #[arg(long, default_value_t = 250_000)]
    pub lines: u64,
    /// Bytes of each line (without the newline)
    #[arg(long, default_value_t = 100)]
    pub line_bytes: usize,
    /// Lines per `logs` frame
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Batches a pusher keeps unacknowledged
    #[arg(long, default_value_t = 32)]
    pub window: usize,
}

/// `deployd bench fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutOptions {
    /// WebSocket subscribers on the app's stream
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Lines per second the pusher sends (0: as fast as acks allow)
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Lines sent
    #[arg(long, default_value_t = 20_000)]
    pub lines: u64,
    /// Bytes of each line (at least 16: it starts with its index)
    #[arg(long, default_value_t = 100)]
    pub line_bytes: usize,
    /// Lines per `logs` frame (0: one batch per millisecond at --rate, else 1000)
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Batches the pusher keeps unacknowledged
    #[arg(long, default_value_t = 32)]
    pub window: usize,
}

/// `deployd bench read`.
#[derive(Debug, Clone, Args)]
pub struct ReadOptions {
    /// Lines in the deployment read
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: u64,
    /// Bytes of each line (without the newline)
    #[arg(long, default_value_t = 100)]
    pub line_bytes: usize,
    /// Times /output is read
    #[arg(long, default_value_t = 10)]
    pub reads: u32,
}

/// The server a scenario drives.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// API token (sent as `Basic base64(":" + token)`, and in the stream's auth frame).
    pub token: String,
}

/// Why a scenario could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Http(String),
    #[error("{0}")]
    Protocol(String),
    #[error("the run did not finish within {0:?}")]
    Timeout(Duration),
}

fn protocol(what: impl std::fmt::Display) -> BenchError {
    BenchError::Protocol(what.to_string())
}

/// Runs `deployd bench` and returns the process exit code: 0 when the run finished (and, for
/// fanout, every subscriber got every line once, in order), 1 when fanout saw violations, 2 on
/// a usage, connection or protocol error.
pub async fn run_bench(args: BenchArgs) -> anyhow::Result<i32> {
    let Some(token) = args.token.clone().filter(|t| !t.is_empty()) else {
        eprintln!("deployd bench: --token (or DEPLOYD_TOKEN) is required");
        return Ok(super::EXIT_USAGE_OR_AUTH);
    };
    if let Err(err) = check_loopback(&args.url, args.allow_remote) {
        eprintln!("deployd bench: {err}");
        return Ok(super::EXIT_USAGE_OR_AUTH);
    }
    let target = Target {
        url: args.url.clone(),
        token,
    };
    let limit = Duration::from_secs(args.timeout.max(1));
    let cpu_before = CpuTimes::take(args.server_pid);
    let outcome = match &args.scenario {
        Scenario::Ingest(options) => bounded(limit, ingest(&target, options))
            .await
            .map(|r| (r.render(), serde_json::to_value(&r), true)),
        Scenario::Fanout(options) => bounded(limit, fanout(&target, options)).await.map(|r| {
            (
                r.render(),
                serde_json::to_value(&r),
                r.violations.is_clean(),
            )
        }),
        Scenario::Read(options) => bounded(limit, read(&target, options))
            .await
            .map(|r| (r.render(), serde_json::to_value(&r), true)),
    };
    match outcome {
        Ok((table, json, clean)) => {
            let cpu = CpuTimes::take(args.server_pid).since(&cpu_before);
            if args.json {
                let mut json = json?;
                if let (Some(cpu), Some(object)) = (&cpu, json.as_object_mut()) {
                    object.insert("cpu".into(), serde_json::to_value(cpu)?);
                }
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                print!("{table}");
                if let Some(cpu) = &cpu {
                    println!(
                        "  cpu (s)      server {:.2}, bench tool {:.2}, over {:.2} s of wall time",
                        cpu.server_secs, cpu.tool_secs, cpu.wall_secs
                    );
                }
            }
            Ok(if clean {
                super::EXIT_SUCCESS
            } else {
                super::EXIT_DEPLOYMENT_FAILED
            })
        }
        Err(err) => {
            eprintln!("deployd bench: {err}");
            Ok(super::EXIT_USAGE_OR_AUTH)
        }
    }
}

/// CPU seconds used so far by the server (from `/proc/PID/stat`) and by this process.
struct CpuTimes {
    server: Option<f64>,
    tool: f64,
    at: Instant,
}

/// CPU used during a run.
#[derive(Debug, Clone, serde::Serialize)]
struct CpuUsed {
    server_secs: f64,
    tool_secs: f64,
    wall_secs: f64,
}

impl CpuTimes {
    fn take(server_pid: Option<u32>) -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let of = |path: String| -> Option<f64> {
            let stat = std::fs::read_to_string(path).ok()?;
            let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            // utime and stime are fields 14 and 15 (the 12th and 13th after the command name).
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks)
        };
        Self {
            server: server_pid.and_then(|pid| of(format!("/proc/{pid}/stat"))),
            tool: of("/proc/self/stat".into()).unwrap_or(0.0),
            at: Instant::now(),
        }
    }

    fn since(&self, before: &CpuTimes) -> Option<CpuUsed> {
        Some(CpuUsed {
            server_secs: self.server? - before.server?,
            tool_secs: self.tool - before.tool,
            wall_secs: (self.at - before.at).as_secs_f64(),
        })
    }
}

async fn bounded<T>(
    limit: Duration,
    run: impl std::future::Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| BenchError::Timeout(limit))?
}

/// Refuses a URL whose host is not loopback (`127.0.0.0/8`, `::1`, `localhost`) unless allowed:
/// a load tool pointed at someone else's server by a typo is an attack.
pub fn check_loopback(url: &str, allow_remote: bool) -> Result<(), BenchError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| BenchError::Usage(format!("bad URL {url}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(BenchError::Usage(format!(
            "server URL {url:?} must start with http:// or https://"
        )));
    }
    let host = parsed.host_str().unwrap_or_default();
    let loopback = match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if loopback || allow_remote {
        Ok(())
    } else {
        Err(BenchError::Usage(format!(
            "{url} is not a loopback address; pass --allow-remote to drive it anyway"
        )))
    }
}

// ---- results -------------------------------------------------------------------------------

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What `ingest` measured.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub pushers: usize,
    pub lines_per_pusher: u64,
    pub line_bytes: usize,
    pub batch: usize,
    pub window: usize,
    /// Lines acknowledged as durable, all pushers.
    pub lines_acked: u64,
    /// Bytes of line text acknowledged (without newlines).
    pub bytes_acked: u64,
    /// From the first batch sent to the last ack received.
    pub elapsed_secs: f64,
    pub lines_per_sec: f64,
    pub mb_per_sec: f64,
    /// From a batch's send to its ack.
    pub ack_latency: Latency,
}

/// What `fanout` measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub subscribers: usize,
    pub lines: u64,
    pub line_bytes: usize,
    pub rate: u64,
    pub batch: usize,
    /// Subscribers that saw the deployment before the first line was sent.
    pub subscribers_ready: usize,
    /// Log lines received, all subscribers (duplicates included).
    pub deliveries: u64,
    /// From the first batch sent to the last line received by any subscriber.
    pub elapsed_secs: f64,
    pub deliveries_per_sec: f64,
    /// Lines acknowledged per second (the pusher's side).
    pub lines_per_sec: f64,
    /// From the pusher receiving a line's batch ack to the line's arrival at a subscriber; a
    /// line that arrived before the pusher saw its ack counts as 0.
    pub latency: Latency,
    /// Deliveries that arrived before the pusher saw the ack (counted as 0 µs above).
    pub arrived_before_ack: u64,
    /// Deliveries of batches whose ack the pusher never saw (not in the latency).
    pub never_acked: u64,
    pub violations: Violations,
}

/// Delivery defects seen by fanout subscribers (all zero in a correct run).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Violations {
    /// Lines never received, summed over subscribers.
    pub missing: u64,
    /// Lines received more than once.
    pub duplicates: u64,
    /// Lines received after a later line.
    pub out_of_order: u64,
    /// `seq` values not above the previous one on the same socket.
    pub seq_regressions: u64,
    /// Subscribers whose socket ended (or was closed by the server) before the run ended.
    pub disconnected: u64,
    /// Log frames whose content did not start with a line index of this run.
    pub unparsable: u64,
}

impl Violations {
    pub fn is_clean(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.seq_regressions == 0
            && self.disconnected == 0
            && self.unparsable == 0
    }

    fn add(&mut self, other: &Violations) {
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.seq_regressions += other.seq_regressions;
        self.disconnected += other.disconnected;
        self.unparsable += other.unparsable;
    }
}

/// What `read` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ReadReport {
    pub lines: u64,
    pub line_bytes: usize,
    pub reads: u32,
    /// Body bytes of one read.
    pub body_bytes: u64,
    /// All reads, back to back.
    pub elapsed_secs: f64,
    pub mb_per_sec: f64,
    /// Fastest single read.
    pub best_mb_per_sec: f64,
    /// The first read (the least warm).
    pub first_read_mb_per_sec: f64,
}

fn rows(title: &str, rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = format!("{title}\n");
    for (key, value) in rows {
        let _ = writeln!(out, "  {key:<width$}  {value}");
    }
    out
}

fn latency_text(l: &Latency) -> String {
    format!(
        "p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  ({} samples)",
        l.p50_us as f64 / 1000.0,
        l.p99_us as f64 / 1000.0,
        l.max_us as f64 / 1000.0,
        l.samples
    )
}

impl IngestReport {
    /// The result table.
    pub fn render(&self) -> String {
        rows(
            "deployd bench ingest",
            &[
                (
                    "setup",
                    format!(
                        "{} pushers x {} lines of {} B, batches of {}, window {}",
                        self.pushers,
                        self.lines_per_pusher,
                        self.line_bytes,
                        self.batch,
                        self.window
                    ),
                ),
                ("lines acked", self.lines_acked.to_string()),
                ("elapsed", format!("{:.3} s", self.elapsed_secs)),
                ("lines/s", format!("{:.0}", self.lines_per_sec)),
                ("MB/s (text)", format!("{:.1}", self.mb_per_sec)),
                ("ack latency", latency_text(&self.ack_latency)),
            ],
        )
    }
}

impl FanoutReport {
    /// The result table.
    pub fn render(&self) -> String {
        let v = &self.violations;
        rows(
            "deployd bench fanout",
            &[
                (
                    "setup",
                    format!(
                        "{} subscribers, {} lines of {} B at {}, batches of {}",
                        self.subscribers,
                        self.lines,
                        self.line_bytes,
                        if self.rate == 0 {
                            "full speed".to_string()
                        } else {
                            format!("{} lines/s", self.rate)
                        },
                        self.batch
                    ),
                ),
                (
                    "subscribers ready",
                    format!("{}/{}", self.subscribers_ready, self.subscribers),
                ),
                ("deliveries", self.deliveries.to_string()),
                ("elapsed", format!("{:.3} s", self.elapsed_secs)),
                ("deliveries/s", format!("{:.0}", self.deliveries_per_sec)),
                ("lines/s (acked)", format!("{:.0}", self.lines_per_sec)),
                ("ack->arrival", latency_text(&self.latency)),
                ("before ack", self.arrived_before_ack.to_string()),
                ("never acked", self.never_acked.to_string()),
                (
                    "violations",
                    if v.is_clean() {
                        "none: every subscriber got every line once, in order".to_string()
                    } else {
                        format!(
                            "missing {} duplicates {} out-of-order {} seq-regressions {} disconnected {} unparsable {}",
                            v.missing, v.duplicates, v.out_of_order, v.seq_regressions, v.disconnected, v.unparsable
                        )
                    },
                ),
            ],
        )
    }
}

impl ReadReport {
    /// The result table.
    pub fn render(&self) -> String {
        rows(
            "deployd bench read",
            &[
                (
                    "setup",
                    format!(
                        "{} lines of {} B, read {} times",
                        self.lines, self.line_bytes, self.reads
                    ),
                ),
                ("body bytes", self.body_bytes.to_string()),
                ("elapsed", format!("{:.3} s", self.elapsed_secs)),
                ("MB/s", format!("{:.1}", self.mb_per_sec)),
                ("best read MB/s", format!("{:.1}", self.best_mb_per_sec)),
                (
                    "first read MB/s",
                    format!("{:.1}", self.first_read_mb_per_sec),
                ),
            ],
        )
    }
}

// ---- histogram -----------------------------------------------------------------------------

/// Sub-buckets per power of two: values are kept within 1/64 (1.6 %).
const SUB_BUCKETS: u64 = 64;
/// Values below this are kept exactly.
const EXACT_BELOW: u64 = 2 * SUB_BUCKETS;

/// A log-linear histogram of microsecond values (mergeable, fixed relative precision).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    fn index(value: u64) -> usize {
        if value < EXACT_BELOW {
            return value as usize;
        }
        let exponent = 63 - u64::from(value.leading_zeros()); // >= 7
        let shift = exponent - 6;
        let sub = (value >> shift) - SUB_BUCKETS; // 0..64
        (EXACT_BELOW + (exponent - 7) * SUB_BUCKETS + sub) as usize
    }

    fn lowest(index: usize) -> u64 {
        let index = index as u64;
        if index < EXACT_BELOW {
            return index;
        }
        let exponent = (index - EXACT_BELOW) / SUB_BUCKETS + 7;
        let sub = (index - EXACT_BELOW) % SUB_BUCKETS;
        (SUB_BUCKETS + sub) << (exponent - 6)
    }

    pub fn record(&mut self, value: u64) {
        let index = Self::index(value);
        if self.counts.len() <= index {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1): the low edge of its bucket, at most the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::lowest(index).min(self.max);
            }
        }
        self.max
    }

    pub fn latency(&self) -> Latency {
        Latency {
            samples: self.total,
            p50_us: self.quantile(0.50),
            p99_us: self.quantile(0.99),
            max_us: self.max,
        }
    }
}

// ---- lines and frames ----------------------------------------------------------------------

/// Builds `logs` frames by copying one pre-serialised line; only the batch number and, for
/// numbered lines, the first 10 characters of each line change.
struct FrameBuilder {
    /// `"<text>",` : one JSON string and a comma.
    line_json: Vec<u8>,
    numbered: bool,
}

impl FrameBuilder {
    fn new(line_bytes: usize, numbered: bool) -> Self {
        // Printable ASCII needing no JSON escape, readable in /output.
        const FILLER: &[u8] =
            b"deployd bench line: the quick brown fox jumps over the lazy dog 0123456789 ";
        let mut line_json = Vec::with_capacity(line_bytes + 3);
        line_json.push(b'"');
        line_json.extend(FILLER.iter().cycle().take(line_bytes));
        line_json.extend_from_slice(b"\",");
        if numbered {
            line_json[1 + INDEX_DIGITS] = b' ';
        }
        Self {
            line_json,
            numbered,
        }
    }

    /// The frame of batch `batch` holding lines `first..first + count` (0-based indexes).
    fn frame(&self, batch: u64, first: u64, count: usize) -> Message {
        let mut out = Vec::with_capacity(64 + count * self.line_json.len());
        let _ = write!(
            VecWriter(&mut out),
            "{{\"type\":\"logs\",\"batch\":{batch},\"lines\":["
        );
        for i in 0..count as u64 {
            let start = out.len();
            out.extend_from_slice(&self.line_json);
            if self.numbered {
                let mut index = first + i;
                for digit in out[start + 1..start + 1 + INDEX_DIGITS].iter_mut().rev() {
                    *digit = b'0' + (index % 10) as u8;
                    index /= 10;
                }
            }
        }
        if count > 0 {
            out.pop(); // the last comma
        }
        out.extend_from_slice(b"]}");
        let text = String::from_utf8(out).expect("invariant: frames are ASCII");
        Message::Text(text.into())
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The line index a fanout line starts with.
fn parse_index(content: &[u8]) -> Option<u64> {
    let digits = content.get(..INDEX_DIGITS)?;
    let mut value: u64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(d - b'0');
    }
    Some(value)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    // memchr's SIMD search: a byte-by-byte window compare was 85% of the tool's CPU in fanout.
    memchr::memmem::find(haystack.get(from..)?, needle).map(|p| p + from)
}

fn parse_u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let digits = bytes.get(at..)?;
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

// ---- HTTP and the push protocol ------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn http_client() -> Result<reqwest::Client, BenchError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| BenchError::Http(e.to_string()))
}

/// A random lowercase suffix for app names, so runs never collide.
fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..8)
        .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
        .collect()
}

/// Creates an app; returns its name.
async fn create_app(
    client: &reqwest::Client,
    target: &Target,
    name: &str,
) -> Result<String, BenchError> {
    let url = http_url(&target.url, "/v1/apps");
    let response = client
        .post(&url)
        .header(
            reqwest::header::AUTHORIZATION,
            basic_auth_header(&target.token),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({ "app": { "name": name } }).to_string())
        .send()
        .await
        .map_err(|e| BenchError::Http(format!("POST {url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(BenchError::Http(format!(
            "POST {url}: HTTP {status}: {body}"
        )));
    }
    Ok(name.to_owned())
}

async fn connect(request_url: &str, token: Option<&str>) -> Result<Ws, BenchError> {
    let mut request = request_url
        .into_client_request()
        .map_err(|e| BenchError::Usage(format!("bad URL {request_url}: {e}")))?;
    if let Some(token) = token {
        let auth = HeaderValue::from_str(&basic_auth_header(token))
            .map_err(|_| BenchError::Usage("the token is not a valid header value".into()))?;
        request.headers_mut().insert(AUTHORIZATION, auth);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(BenchError::Http(format!("connect {request_url}: {e}"))),
        Err(_) => Err(BenchError::Http(format!(
            "connect {request_url}: timed out"
        ))),
    }
}

/// One pusher connection with a started deployment.
struct Push {
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
    deployment: String,
}

fn client_frame(frame: &ClientFrame) -> Message {
    Message::Text(
        serde_json::to_string(frame)
            .expect("invariant: client frames serialise")
            .into(),
    )
}

/// The next server frame (pings and pongs skipped).
async fn next_frame(rx: &mut SplitStream<Ws>) -> Result<ServerFrame, BenchError> {
    loop {
        match rx.next().await {
            Some(Ok(Message::Text(body))) => {
                return serde_json::from_str(&body)
                    .map_err(|e| protocol(format!("bad server frame {body}: {e}")))
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(protocol(format!(
                    "the server closed the push socket: {frame:?}"
                )))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(protocol(format!("push socket: {e}"))),
            None => return Err(protocol("the server closed the push socket")),
        }
    }
}

impl Push {
    /// Connects to the app's push endpoint and starts a deployment (it must reach `building`).
    async fn start(target: &Target, app: &str) -> Result<Push, BenchError> {
        let url = ws_url(
            &target.url,
            &format!("/v1/apps/{}/push", encode_path_segment(app)),
        )
        .map_err(|e| BenchError::Usage(e.to_string()))?;
        let ws = connect(&url, Some(&target.token)).await?;
        let (mut tx, mut rx) = ws.split();
        tx.send(client_frame(&ClientFrame::Start {
            git_ref: Some("bench".into()),
        }))
        .await
        .map_err(protocol)?;
        let deployment = match next_frame(&mut rx).await? {
            ServerFrame::Deployment { deployment } => deployment,
            other => {
                return Err(protocol(format!(
                    "expected a deployment frame, got {other:?}"
                )))
            }
        };
        let id = deployment["id"]
            .as_str()
            .ok_or_else(|| protocol("the deployment frame has no id"))?
            .to_owned();
        if deployment["status"].as_str() != Some("building") {
            return Err(protocol(format!(
                "the bench deployment is {} (another deployment of the app is in progress?)",
                deployment["status"]
            )));
        }
        Ok(Push {
            tx,
            rx,
            deployment: id,
        })
    }

    /// Sends `lines` lines in batches of `batch`, at most `window` unacknowledged; paces batches
    /// at `rate` lines/s when not 0. Calls `on_ack(batch, instant)` for every ack; returns the
    /// send→ack latency histogram and the instant the first batch was sent.
    async fn send_lines(
        &mut self,
        frames: &FrameBuilder,
        lines: u64,
        batch: usize,
        window: usize,
        rate: u64,
        mut on_ack: impl FnMut(u64, Instant),
    ) -> Result<(Histogram, Instant), BenchError> {
        let batch_lines = batch as u64;
        let batches = lines.div_ceil(batch_lines);
        let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
        let mut latency = Histogram::default();
        let mut next = 0u64;
        let started = Instant::now();
        let batch_interval =
            (rate > 0).then(|| Duration::from_secs_f64(batch_lines as f64 / rate as f64));
        while next < batches || !in_flight.is_empty() {
            // Send what the window (and the pace) allows, then flush once.
            let mut sent_any = false;
            while next < batches && in_flight.len() < window {
                if let Some(interval) = batch_interval {
                    let due = started + interval.mul_f64(next as f64);
                    if Instant::now() < due {
                        if sent_any || !in_flight.is_empty() {
                            break;
                        }
                        tokio::time::sleep_until(due).await;
                    }
                }
                let first = next * batch_lines;
                let count = batch_lines.min(lines - first) as usize;
                self.tx
                    .feed(frames.frame(next, first, count))
                    .await
                    .map_err(protocol)?;
                in_flight.push_back((next, Instant::now()));
                next += 1;
                sent_any = true;
            }
            if sent_any {
                self.tx.flush().await.map_err(protocol)?;
            }
            if in_flight.is_empty() {
                continue;
            }
            // Wait for an ack, or for the next batch's turn when pacing.
            let frame = match batch_interval.filter(|_| next < batches && in_flight.len() < window)
            {
                Some(interval) => {
                    let due = started + interval.mul_f64(next as f64);
                    match tokio::time::timeout_at(due, next_frame(&mut self.rx)).await {
                        Ok(frame) => frame?,
                        Err(_) => continue,
                    }
                }
                None => next_frame(&mut self.rx).await?,
            };
            match frame {
                ServerFrame::Ack { batch: acked, .. } => {
                    let now = Instant::now();
                    let Some((expected, sent_at)) = in_flight.pop_front() else {
                        return Err(protocol(format!("ack for batch {acked} that was not sent")));
                    };
                    if acked != expected {
                        return Err(protocol(format!(
                            "ack for batch {acked}, expected {expected}"
                        )));
                    }
                    latency.record(now.duration_since(sent_at).as_micros() as u64);
                    on_ack(acked, now);
                }
                ServerFrame::Error { code, error, batch } => {
                    return Err(protocol(format!(
                        "the server refused batch {batch:?}: {code}: {error}"
                    )))
                }
                ServerFrame::Status { .. } | ServerFrame::Deployment { .. } => {}
            }
        }
        Ok((latency, started))
    }

    /// Ends the deployment: pushing → starting → success.
    async fn finish(mut self) -> Result<(), BenchError> {
        for status in [Status::Pushing, Status::Starting, Status::Success] {
            self.tx
                .send(client_frame(&ClientFrame::Status { status }))
                .await
                .map_err(protocol)?;
            loop {
                match next_frame(&mut self.rx).await? {
                    ServerFrame::Status { status: now } if now == status => break,
                    ServerFrame::Status { .. } | ServerFrame::Ack { .. } => {}
                    ServerFrame::Error { code, error, .. } => {
                        return Err(protocol(format!("moving to {status}: {code}: {error}")))
                    }
                    ServerFrame::Deployment { .. } => {}
                }
            }
        }
        let _ = self.tx.close().await;
        Ok(())
    }
}

fn check_line_and_batch(line_bytes: usize, batch: usize, window: usize) -> Result<(), BenchError> {
    if line_bytes == 0 || line_bytes > MAX_LINE_BYTES {
        return Err(BenchError::Usage(format!(
            "--line-bytes must be 1..={MAX_LINE_BYTES}"
        )));
    }
    if batch == 0
        || batch.saturating_mul(line_bytes + 3) + FRAME_OVERHEAD_BYTES > MAX_PUSH_FRAME_BYTES
    {
        return Err(BenchError::Usage(format!(
            "--batch must be at least 1 and batch x (line-bytes + 3) under {MAX_PUSH_FRAME_BYTES} bytes"
        )));
    }
    if window == 0 || window > MAX_WINDOW {
        return Err(BenchError::Usage(format!(
            "--window must be 1..={MAX_WINDOW}"
        )));
    }
    Ok(())
}

fn per_sec(count: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count / secs
    } else {
        0.0
    }
}

// ---- ingest --------------------------------------------------------------------------------

/// Runs the ingest scenario (see the module docs).
pub async fn ingest(target: &Target, options: &IngestOptions) -> Result<IngestReport, BenchError> {
    check_line_and_batch(options.line_bytes, options.batch, options.window)?;
    if options.pushers == 0 || options.pushers > MAX_PUSHERS {
        return Err(BenchError::Usage(format!(
            "--pushers must be 1..={MAX_PUSHERS}"
        )));
    }
    let total = options.lines.saturating_mul(options.pushers as u64);
    if options.lines == 0 || total > MAX_TOTAL_LINES {
        return Err(BenchError::Usage(format!(
            "--lines must be at least 1 and pushers x lines at most {MAX_TOTAL_LINES}"
        )));
    }
    let client = http_client()?;
    let run = random_suffix();
    // Set every pusher up first, so the measured part is only the pushing.
    let mut pushes = Vec::with_capacity(options.pushers);
    for n in 0..options.pushers {
        let app = create_app(&client, target, &format!("bench-ingest-{n}-{run}")).await?;
        pushes.push(Push::start(target, &app).await?);
    }
    let frames = Arc::new(FrameBuilder::new(options.line_bytes, false));
    let go = Arc::new(tokio::sync::Barrier::new(options.pushers + 1));
    let mut tasks = Vec::with_capacity(options.pushers);
    for mut push in pushes {
        let frames = frames.clone();
        let go = go.clone();
        let options = options.clone();
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let (latency, _) = push
                .send_lines(
                    &frames,
                    options.lines,
                    options.batch,
                    options.window,
                    0,
                    |_, _| {},
                )
                .await?;
            let done = Instant::now();
            push.finish().await?;
            Ok::<_, BenchError>((latency, done))
        }));
    }
    go.wait().await;
    let started = Instant::now();
    let mut latency = Histogram::default();
    let mut last_ack = started;
    for task in tasks {
        let (histogram, done) = task
            .await
            .map_err(|e| protocol(format!("pusher task: {e}")))??;
        latency.merge(&histogram);
        last_ack = last_ack.max(done);
    }
    let elapsed = last_ack.duration_since(started);
    let bytes = total * options.line_bytes as u64;
    Ok(IngestReport {
        pushers: options.pushers,
        lines_per_pusher: options.lines,
        line_bytes: options.line_bytes,
        batch: options.batch,
        window: options.window,
        lines_acked: total,
        bytes_acked: bytes,
        elapsed_secs: elapsed.as_secs_f64(),
        lines_per_sec: per_sec(total as f64, elapsed),
        mb_per_sec: per_sec(bytes as f64, elapsed) / MB,
        ack_latency: latency.latency(),
    })
}

// ---- fanout --------------------------------------------------------------------------------

/// Instants shared between the fanout pusher and its subscribers.
struct Clock {
    origin: Instant,
    /// Per batch: microseconds since `origin` at which the pusher got its ack, plus one (0: not
    /// acknowledged yet).
    acks: Vec<AtomicU64>,
    /// Subscribers that saw the deployment.
    ready: AtomicUsize,
    ready_changed: tokio::sync::Notify,
    /// Set when the pusher is done (or failed): subscribers stop waiting after a grace period.
    pusher_done: tokio::sync::Notify,
}

impl Clock {
    fn micros(&self, at: Instant) -> u64 {
        at.duration_since(self.origin).as_micros() as u64
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct SubscriberResult {
    deliveries: u64,
    latency: Histogram,
    before_ack: u64,
    /// Deliveries whose batch ack the pusher never saw (left out of the latency).
    never_acked: u64,
    last_arrival: Option<Instant>,
    violations: Violations,
}

/// How long a subscriber keeps waiting for missing lines after the pusher finished.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Largest server frame a bench subscriber accepts (the server's own frames are far smaller).
const MAX_SUBSCRIBER_FRAME: usize = 16 * 1024 * 1024;
/// Bytes a subscriber reads from its socket at once.
const SUBSCRIBER_READ_CHUNK: usize = 64 * 1024;

/// One server-to-client WebSocket frame found in a buffer.
#[derive(Debug, PartialEq, Eq)]
struct RawFrame {
    opcode: u8,
    /// Payload range in the buffer.
    payload: std::ops::Range<usize>,
    /// Bytes the whole frame takes.
    len: usize,
}

/// Parses the frame at the start of `buf`: `Ok(None)` when it is not complete yet.
fn parse_raw_frame(buf: &[u8]) -> Result<Option<RawFrame>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0F;
    if buf[0] & 0x80 == 0 {
        return Err("fragmented frame");
    }
    if buf[1] & 0x80 != 0 {
        return Err("masked server frame");
    }
    let (len, header) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
            10,
        ),
        126 | 127 => return Ok(None),
        len => (u64::from(len), 2),
    };
    let len = usize::try_from(len).map_err(|_| "frame too big")?;
    if len > MAX_SUBSCRIBER_FRAME {
        return Err("frame too big");
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(RawFrame {
        opcode,
        payload: header..header + len,
        len: header + len,
    }))
}

/// One subscriber: reads the socket's frames itself (after tungstenite's handshake), so that
/// the tool spends as little CPU per delivery as possible and the server, not the tool, is
/// what a run measures.
async fn subscriber(mut ws: Ws, clock: Arc<Clock>, lines: u64, batch: u64) -> SubscriberResult {
    use tokio::io::AsyncReadExt;
    let mut result = SubscriberResult::default();
    let mut ready = false;
    let mut expected = 0u64; // next index in order
    let mut received = vec![false; lines as usize];
    let mut unique = 0u64;
    let mut last_seq: Option<u64> = None;
    let mut pending: VecDeque<(u64, u64)> = VecDeque::new(); // (batch, arrival µs)
    let mut drain_deadline: Option<Instant> = None;
    let resolve =
        |pending: &mut VecDeque<(u64, u64)>, result: &mut SubscriberResult, force: bool| {
            while let Some(&(b, arrival)) = pending.front() {
                let ack = clock.acks[b as usize].load(Ordering::Acquire);
                if ack == 0 && !force {
                    break;
                }
                pending.pop_front();
                if ack == 0 {
                    // The pusher never saw this batch's ack: no latency to measure.
                    result.never_acked += 1;
                    continue;
                }
                let ack = ack - 1;
                if arrival < ack {
                    result.before_ack += 1;
                }
                result.latency.record(arrival.saturating_sub(ack));
            }
        };
    // The handshake is done and the server sends nothing before our auth frame, so no frame
    // bytes sit in tungstenite's buffer: reading the raw stream from here loses nothing.
    let stream = ws.get_mut();
    let mut buf: Vec<u8> = Vec::with_capacity(SUBSCRIBER_READ_CHUNK * 2);
    let mut start = 0usize;
    'read: loop {
        if buf.len() - start < SUBSCRIBER_READ_CHUNK && start > 0 {
            buf.drain(..start);
            start = 0;
        }
        let filled = buf.len();
        buf.resize(filled + SUBSCRIBER_READ_CHUNK, 0);
        let read = match drain_deadline {
            Some(deadline) => {
                match tokio::time::timeout_at(deadline, stream.read(&mut buf[filled..])).await {
                    Ok(read) => read,
                    Err(_) => {
                        buf.truncate(filled);
                        break;
                    }
                }
            }
            None => tokio::select! {
                read = stream.read(&mut buf[filled..]) => read,
                () = clock.pusher_done.notified() => {
                    drain_deadline = Some(Instant::now() + DRAIN_GRACE);
                    buf.truncate(filled);
                    continue;
                }
            },
        };
        let read = match read {
            Ok(0) | Err(_) => {
                result.violations.disconnected += 1;
                break;
            }
            Ok(n) => n,
        };
        buf.truncate(filled + read);
        let now = Instant::now();
        loop {
            let frame = match parse_raw_frame(&buf[start..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    result.violations.unparsable += 1;
                    result.violations.disconnected += 1;
                    break 'read;
                }
            };
            let bytes = &buf[start + frame.payload.start..start + frame.payload.end];
            start += frame.len;
            match frame.opcode {
                0x1 => {}
                0x8 => {
                    result.violations.disconnected += 1;
                    break 'read;
                }
                _ => continue,
            }
            if !ready
                && (find(bytes, b"\"type\":\"new\"", 0).is_some()
                    || find(bytes, b"\"type\":\"status\"", 0).is_some()
                    || find(bytes, b"\"type\":\"log\"", 0).is_some())
            {
                ready = true;
                clock.ready.fetch_add(1, Ordering::AcqRel);
                clock.ready_changed.notify_one();
            }
            // Every log event in the frame (one per frame, or several if the server batches).
            let mut at = 0;
            while let Some(found) = find(bytes, b"\"content\":\"", at) {
                let content_at = found + b"\"content\":\"".len();
                at = content_at;
                let Some(index) = parse_index(&bytes[content_at..]).filter(|i| *i < lines) else {
                    result.violations.unparsable += 1;
                    continue;
                };
                result.deliveries += 1;
                result.last_arrival = Some(now);
                if received[index as usize] {
                    result.violations.duplicates += 1;
                } else {
                    received[index as usize] = true;
                    unique += 1;
                    if index < expected {
                        result.violations.out_of_order += 1;
                    } else {
                        expected = index + 1;
                    }
                }
                pending.push_back((index / batch, clock.micros(now)));
            }
            if let Some(seq_at) = find(bytes, b"\"seq\":", 0) {
                if let Some(seq) = parse_u64_at(bytes, seq_at + b"\"seq\":".len()) {
                    if last_seq.is_some_and(|last| seq <= last) {
                        result.violations.seq_regressions += 1;
                    }
                    last_seq = Some(seq);
                }
            }
            if unique == lines {
                break 'read;
            }
        }
        resolve(&mut pending, &mut result, false);
    }
    // The last lines often arrive before the pusher has read their batch's ack: wait for the
    // pusher to finish (it has every ack then) before settling their latency.
    if pending
        .front()
        .is_some_and(|(b, _)| clock.acks[*b as usize].load(Ordering::Acquire) == 0)
    {
        let _ = tokio::time::timeout(DRAIN_GRACE, clock.pusher_done.notified()).await;
    }
    resolve(&mut pending, &mut result, true);
    result.violations.missing = lines - unique;
    let _ = ws.close(None).await;
    result
}

/// Runs the fanout scenario (see the module docs).
pub async fn fanout(target: &Target, options: &FanoutOptions) -> Result<FanoutReport, BenchError> {
    let batch = match options.batch {
        0 if options.rate > 0 => (options.rate / 1000).max(1) as usize,
        0 => 1000,
        b => b,
    };
    check_line_and_batch(options.line_bytes, batch, options.window)?;
    if options.line_bytes < MIN_FANOUT_LINE_BYTES {
        return Err(BenchError::Usage(format!(
            "fanout lines start with their index: --line-bytes must be at least {MIN_FANOUT_LINE_BYTES}"
        )));
    }
    if options.subscribers == 0 || options.subscribers > MAX_SUBSCRIBERS {
        return Err(BenchError::Usage(format!(
            "--subscribers must be 1..={MAX_SUBSCRIBERS}"
        )));
    }
    if options.lines == 0 || options.lines > MAX_TOTAL_LINES / options.subscribers as u64 {
        return Err(BenchError::Usage(format!(
            "--lines must be at least 1 and subscribers x lines at most {MAX_TOTAL_LINES}"
        )));
    }
    let client = http_client()?;
    let app = create_app(
        &client,
        target,
        &format!("bench-fanout-{}", random_suffix()),
    )
    .await?;
    let batches = options.lines.div_ceil(batch as u64);
    let clock = Arc::new(Clock {
        origin: Instant::now(),
        acks: (0..batches).map(|_| AtomicU64::new(0)).collect(),
        ready: AtomicUsize::new(0),
        ready_changed: tokio::sync::Notify::new(),
        pusher_done: tokio::sync::Notify::new(),
    });

    // Connect and authenticate every subscriber, a bounded number at a time.
    let stream_url = ws_url(&target.url, &format!("/apps/{}", encode_path_segment(&app)))
        .map_err(|e| BenchError::Usage(e.to_string()))?;
    let auth = Message::Text(
        serde_json::json!({ "type": "auth", "data": { "token": target.token } })
            .to_string()
            .into(),
    );
    let mut sockets = Vec::with_capacity(options.subscribers);
    let mut connecting = futures_util::stream::iter((0..options.subscribers).map(|_| {
        let url = stream_url.clone();
        let auth = auth.clone();
        async move {
            let mut ws = connect(&url, None).await?;
            ws.send(auth).await.map_err(protocol)?;
            Ok::<_, BenchError>(ws)
        }
    }))
    .buffer_unordered(CONNECT_CONCURRENCY);
    while let Some(ws) = connecting.next().await {
        sockets.push(ws?);
    }
    let mut subscribers = Vec::with_capacity(options.subscribers);
    for ws in sockets {
        let clock = clock.clone();
        let lines = options.lines;
        subscribers.push(tokio::spawn(subscriber(ws, clock, lines, batch as u64)));
    }

    // Start the deployment; wait until the subscribers saw it, so they are live.
    let mut push = Push::start(target, &app).await?;
    let ready_deadline = Instant::now() + SUBSCRIBERS_READY_TIMEOUT;
    while clock.ready.load(Ordering::Acquire) < options.subscribers {
        if tokio::time::timeout_at(ready_deadline, clock.ready_changed.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    let subscribers_ready = clock.ready.load(Ordering::Acquire);

    let frames = FrameBuilder::new(options.line_bytes, true);
    let ack_clock = clock.clone();
    let sent = push
        .send_lines(
            &frames,
            options.lines,
            batch,
            options.window,
            options.rate,
            move |b, at| {
                let micros = ack_clock.micros(at) + 1;
                ack_clock.acks[b as usize].store(micros, Ordering::Release);
            },
        )
        .await;
    let pusher_acked = Instant::now();
    // Tell subscribers the pusher is done whatever happened, so none waits for ever.
    let wake = clock.clone();
    let waker = tokio::spawn(async move {
        loop {
            wake.pusher_done.notify_waiters();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let finished = match sent {
        Ok((_, started)) => push.finish().await.map(|()| started),
        Err(err) => Err(err),
    };
    let mut totals = SubscriberResult::default();
    let mut last_arrival = pusher_acked;
    for task in subscribers {
        let r = task
            .await
            .map_err(|e| protocol(format!("subscriber task: {e}")))?;
        totals.deliveries += r.deliveries;
        totals.before_ack += r.before_ack;
        totals.never_acked += r.never_acked;
        totals.latency.merge(&r.latency);
        totals.violations.add(&r.violations);
        if let Some(at) = r.last_arrival {
            last_arrival = last_arrival.max(at);
        }
    }
    waker.abort();
    let started = finished?;
    let elapsed = last_arrival.duration_since(started);
    Ok(FanoutReport {
        subscribers: options.subscribers,
        lines: options.lines,
        line_bytes: options.line_bytes,
        rate: options.rate,
        batch,
        subscribers_ready,
        deliveries: totals.deliveries,
        elapsed_secs: elapsed.as_secs_f64(),
        deliveries_per_sec: per_sec(totals.deliveries as f64, elapsed),
        lines_per_sec: per_sec(options.lines as f64, pusher_acked.duration_since(started)),
        latency: totals.latency.latency(),
        arrived_before_ack: totals.before_ack,
        never_acked: totals.never_acked,
        violations: totals.violations,
    })
}

// ---- read ----------------------------------------------------------------------------------

/// Lines per batch when filling the deployment `read` reads.
const READ_FILL_BATCH: usize = 1000;

/// Runs the read scenario (see the module docs).
pub async fn read(target: &Target, options: &ReadOptions) -> Result<ReadReport, BenchError> {
    check_line_and_batch(options.line_bytes, READ_FILL_BATCH, 32)?;
    if options.lines == 0 || options.lines > MAX_TOTAL_LINES {
        return Err(BenchError::Usage(format!(
            "--lines must be 1..={MAX_TOTAL_LINES}"
        )));
    }
    if options.reads == 0 || options.reads > MAX_READS {
        return Err(BenchError::Usage(format!(
            "--reads must be 1..={MAX_READS}"
        )));
    }
    let client = http_client()?;
    let app = create_app(&client, target, &format!("bench-read-{}", random_suffix())).await?;
    let mut push = Push::start(target, &app).await?;
    let frames = FrameBuilder::new(options.line_bytes, false);
    push.send_lines(&frames, options.lines, READ_FILL_BATCH, 32, 0, |_, _| {})
        .await?;
    let deployment = push.deployment.clone();
    push.finish().await?;

    let url = http_url(
        &target.url,
        &format!(
            "/v1/apps/{}/deployments/{}/output",
            encode_path_segment(&app),
            encode_path_segment(&deployment)
        ),
    );
    let expected = options.lines * (options.line_bytes as u64 + 1);
    let auth = basic_auth_header(&target.token);
    let mut best = Duration::MAX;
    let mut first = Duration::ZERO;
    let started = Instant::now();
    for n in 0..options.reads {
        let read_started = Instant::now();
        let mut response = client
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, &auth)
            .send()
            .await
            .map_err(|e| BenchError::Http(format!("GET {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(BenchError::Http(format!(
                "GET {url}: HTTP {}",
                response.status()
            )));
        }
        let mut bytes = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| BenchError::Http(format!("GET {url}: {e}")))?
        {
            bytes += chunk.len() as u64;
        }
        if bytes != expected {
            return Err(protocol(format!(
                "/output sent {bytes} bytes, expected {expected}"
            )));
        }
        let took = read_started.elapsed();
        best = best.min(took);
        if n == 0 {
            first = took;
        }
    }
    let elapsed = started.elapsed();
    Ok(ReadReport {
        lines: options.lines,
        line_bytes: options.line_bytes,
        reads: options.reads,
        body_bytes: expected,
        elapsed_secs: elapsed.as_secs_f64(),
        mb_per_sec: per_sec((expected * u64::from(options.reads)) as f64, elapsed) / MB,
        best_mb_per_sec: per_sec(expected as f64, best) / MB,
        first_read_mb_per_sec: per_sec(expected as f64, first) / MB,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_parse_in_every_length_form() {
        assert_eq!(parse_raw_frame(&[0x81]), Ok(None));
        assert_eq!(
            parse_raw_frame(&[0x81, 2, b'h', b'i', 0x81]),
            Ok(Some(RawFrame {
                opcode: 1,
                payload: 2..4,
                len: 4
            }))
        );
        assert_eq!(parse_raw_frame(&[0x81, 3, b'h']), Ok(None));
        let mut medium = vec![0x81, 126, 0x01, 0x00];
        medium.extend(vec![b'x'; 256]);
        assert_eq!(
            parse_raw_frame(&medium),
            Ok(Some(RawFrame {
                opcode: 1,
                payload: 4..260,
                len: 260
            }))
        );
        let mut long = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.extend(vec![0; 65536]);
        assert_eq!(
            parse_raw_frame(&long),
            Ok(Some(RawFrame {
                opcode: 2,
                payload: 10..65546,
                len: 65546
            }))
        );
        assert!(
            parse_raw_frame(&[0x01, 0]).is_err(),
            "fragments are refused"
        );
        assert!(
            parse_raw_frame(&[0x81, 0x80]).is_err(),
            "masked server frames are refused"
        );
    }

    #[test]
    fn histogram_quantiles_stay_within_bucket_precision() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((4900..=5000).contains(&p50), "{p50}");
        assert!((9750..=9900).contains(&p99), "{p99}");
        assert_eq!(h.latency().max_us, 10_000);
        for v in [0u64, 1, 127, 128, 129, 1000, 65_535, 1 << 40] {
            let low = Histogram::lowest(Histogram::index(v));
            assert!(low <= v && v - low <= v / 64, "{v} -> {low}");
        }
    }

    #[test]
    fn merged_histograms_count_everything() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.latency().samples, 2);
        assert_eq!(a.latency().max_us, 1_000_000);
    }

    #[test]
    fn frames_are_valid_logs_frames_with_numbered_lines() {
        let frames = FrameBuilder::new(20, true);
        let Message::Text(body) = frames.frame(7, 41, 3) else {
            panic!("text frame")
        };
        let frame: ClientFrame = serde_json::from_str(&body).expect("valid frame");
        let ClientFrame::Logs { batch, lines, .. } = frame else {
            panic!("logs frame")
        };
        assert_eq!(batch, 7);
        assert_eq!(lines.len(), 3);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line.len(), 20);
            assert_eq!(parse_index(line.as_bytes()), Some(41 + i as u64));
        }
        let plain = FrameBuilder::new(100, false);
        let Message::Text(body) = plain.frame(0, 0, 2) else {
            panic!("text frame")
        };
        let ClientFrame::Logs { lines, .. } = serde_json::from_str(&body).expect("valid") else {
            panic!("logs frame")
        };
        assert!(lines.iter().all(|l| l.len() == 100));
    }

    /// The subscriber's checker against a hand-made stream: a duplicate, a gap, a late line, a
    /// `seq` going back and a close before the end must each be counted.
    #[tokio::test]
    async fn subscriber_counts_every_kind_of_violation() {
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
        let clock = Arc::new(Clock {
            origin: Instant::now(),
            acks: (0..5).map(|_| AtomicU64::new(0)).collect(),
            ready: AtomicUsize::new(0),
            ready_changed: tokio::sync::Notify::new(),
            pusher_done: tokio::sync::Notify::new(),
        });
        // As in `fanout`: once the pusher is done, subscribers are told so repeatedly.
        let done = clock.clone();
        let waker = tokio::spawn(async move {
            loop {
                done.pusher_done.notify_waiters();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let result = subscriber(ws, clock.clone(), 5, 1).await;
        waker.abort();
        server.await.expect("server");
        assert_eq!(clock.ready.load(Ordering::Acquire), 1);
        assert_eq!(result.deliveries, 5);
        let v = result.violations;
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.out_of_order, 1, "line 2 after line 3");
        assert_eq!(v.missing, 1, "line 4 never came");
        assert_eq!(v.seq_regressions, 2, "2 after 2, 3 after 4");
        assert_eq!(v.disconnected, 1);
        assert_eq!(v.unparsable, 1);
        assert!(!v.is_clean());
        // No pusher acked anything here: no latency is made up from the clock's origin.
        assert_eq!(result.latency.latency().samples, 0);
        assert_eq!(result.never_acked, 5);
    }

    #[test]
    fn only_loopback_servers_are_driven_by_default() {
        assert!(check_loopback("http://127.0.0.1:8080", false).is_ok());
        assert!(check_loopback("http://localhost:8080", false).is_ok());
        assert!(check_loopback("http://[::1]:8080", false).is_ok());
        assert!(check_loopback("http://10.0.0.1:8080", false).is_err());
        assert!(check_loopback("https://example.com", false).is_err());
        assert!(check_loopback("https://example.com", true).is_ok());
        assert!(check_loopback("ftp://127.0.0.1", true).is_err());
    }
}
