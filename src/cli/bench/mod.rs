//! `deployd bench`: a load tool that drives a running deployd over its real protocols (like
//! `redis-benchmark` for Redis) and prints what it measured.
//!
//! Four scenarios, each a public async function so `benches/throughput.rs` can call them
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
//! - [`catchup`]: a subscriber joins a running deployment at line N while the pusher goes on;
//!   the time until it has every line stored before it joined, and the live lines' latency.
//!
//! Besides them: `subscribe`, fanout's subscriber side as a process of its own (fanout spawns
//! it by default, so it can be pinned to other cores), and `compare`, which starts its own
//! deployd and redis-server and runs ingest against `XADD` and fanout against `PUBLISH`. With
//! the server's pid (`--server-pid`, or found by the URL's port on this machine) a run also
//! reports the server's CPU time (per delivery, for fanout) and its resident memory.
//!
//! The tool must not be the bottleneck: frames are built by copying a pre-serialised line
//! template (only the line index and batch number change), each socket is driven by one task,
//! and subscribers find the line index in a frame by a substring search instead of parsing JSON.
//!
//! Every run is bounded: counts are capped ([`MAX_TOTAL_LINES`], …) and the whole scenario by
//! `--timeout`. Only loopback servers are driven unless `--allow-remote` is given. Apps created
//! by a run (`bench-<scenario>-…`) are kept, so their size on disk can be inspected.
//!
//! Layout: this module holds the arguments, limits, errors and [`run_bench`]; `report` the
//! results and their rendering; `client` the HTTP and push-protocol client the scenarios share;
//! `ingest`, `fanout`, `read` and `catchup` one scenario each; `subscribe` the subscribers
//! (in-process or child); `redis` and `compare` the Redis side; `system` what is read from
//! `/proc`. WebSocket frames are parsed by `crate::ws`, the codec the server uses.

mod catchup;
mod checker;
mod client;
mod compare;
mod fanout;
mod ingest;
mod read;
mod redis;
mod report;
mod subscribe;
mod system;

use std::time::Duration;

use clap::{Args, Subcommand};

pub use catchup::catchup;
pub use client::FrameKind;
pub use compare::{CompareReport, CompareSide};
pub use fanout::fanout;
pub use ingest::ingest;
pub use read::read;
pub use report::{
    CatchupReport, FanoutReport, Histogram, IngestReport, Latency, ReadReport, Violations,
};
pub use system::ServerUsage;

/// Most lines one scenario sends in total (all pushers): bounds the run's time and memory.
pub const MAX_TOTAL_LINES: u64 = 100_000_000;
/// Most pushers in `ingest`.
pub const MAX_PUSHERS: usize = 256;
/// Most subscribers in `fanout`.
pub const MAX_SUBSCRIBERS: usize = 10_000;
/// Most `/output` reads in `read`.
pub const MAX_READS: u32 = 10_000;
/// Longest line; the server cuts longer ones.
pub use crate::lines::MAX_LINE_BYTES;
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
    /// The server's pid, to report the CPU time it used during the run (beside the tool's own:
    /// on a small machine both share the cores, and this says which side a figure is bound by)
    /// and its resident memory; found by the URL's port when the server runs on this machine
    #[arg(long, value_name = "PID", global = true)]
    pub server_pid: Option<u32>,
    /// Which CAs to trust over https:// and wss://
    #[command(flatten)]
    pub tls: crate::cli::tls::TlsArgs,
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
    /// A subscriber joins a running deployment at line N; time to catch up.
    Catchup(CatchupOptions),
    /// fanout's subscriber side as a process of its own (fanout starts it; see --help).
    Subscribe(SubscribeOptions),
    /// Start a deployd and a redis-server, run ingest vs XADD and fanout vs PUBLISH, print ratios.
    Compare(CompareOptions),
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
    /// How batches are framed: `json` (every pusher) or `binary` (the `binary_logs` capability)
    #[arg(long, value_enum, default_value_t = FrameKind::Json)]
    pub frame: FrameKind,
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
    /// Run the subscribers as tasks of this process instead of a child process
    #[arg(long)]
    pub in_process: bool,
    /// Words put before the subscriber child's command line, e.g. "taskset -c 1" to pin it
    #[arg(long, value_name = "COMMAND", conflicts_with = "in_process")]
    pub subscriber_prefix: Option<String>,
}

/// `deployd bench catchup`.
#[derive(Debug, Clone, Args)]
pub struct CatchupOptions {
    /// Lines stored before the subscriber joins
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: u64,
    /// Lines sent after the join
    #[arg(long, default_value_t = 5000)]
    pub live_lines: u64,
    /// Lines per second of the live part
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Bytes of each line (at least 16: it starts with its index)
    #[arg(long, default_value_t = 100)]
    pub line_bytes: usize,
    /// Subscribers joining at once
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
}

/// `deployd bench subscribe`: started by `fanout` and `compare` (its stdin and stdout are the
/// protocol of `subscribe`'s module docs), not meant to be run by hand.
#[derive(Debug, Clone, Args)]
pub struct SubscribeOptions {
    /// The deployd app whose stream to subscribe to
    #[arg(long, conflicts_with = "redis")]
    pub app: Option<String>,
    /// A Redis server (HOST:PORT) to SUBSCRIBE on instead
    #[arg(long, value_name = "ADDR")]
    pub redis: Option<String>,
    /// The Redis channel
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Subscribers
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Lines each must get
    #[arg(long)]
    pub lines: u64,
    /// Lines per batch of the pusher (to match acks to lines)
    #[arg(long)]
    pub batch: u64,
}

/// `deployd bench compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareOptions {
    /// Ingest clients (deployd pushers, Redis XADD connections)
    #[arg(long, default_value_t = 4)]
    pub pushers: usize,
    /// Lines each ingest client sends
    #[arg(long, default_value_t = 250_000)]
    pub lines: u64,
    /// Bytes of each line, both scenarios
    #[arg(long, default_value_t = 100)]
    pub line_bytes: usize,
    /// Ingest lines per batch (a `logs` frame; a pipelined run of XADDs)
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Batches in flight per client, both scenarios
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Fanout subscribers (deployd stream sockets, Redis SUBSCRIBE connections)
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Lines the fanout pusher / publisher sends
    #[arg(long, default_value_t = 20_000)]
    pub fanout_lines: u64,
    /// Fanout lines per second (0: as fast as acks / replies allow)
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Run the subscribers as tasks of this process instead of a child process
    #[arg(long)]
    pub in_process: bool,
    /// Words put before the subscriber child's command line, e.g. "taskset -c 1"
    #[arg(long, value_name = "COMMAND", conflicts_with = "in_process")]
    pub subscriber_prefix: Option<String>,
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
/// fanout and catchup, every subscriber got every line once, in order), 1 when they saw
/// violations, 2 on a usage, connection or protocol error (`compare`: also when redis-server
/// is not on PATH).
pub async fn run_bench(args: BenchArgs) -> anyhow::Result<i32> {
    if let Err(err) = client::use_tls(&args.tls) {
        return Ok(err.report("deployd bench"));
    }
    subscribe::pass_to_children(subscribe::ChildArgs {
        timeout: args.timeout,
        cacert: args.tls.cacert.clone(),
    });
    let token = args.token.clone().filter(|t| !t.is_empty());
    let limit = Duration::from_secs(args.timeout.max(1));
    let target = token.map(|token| Target {
        url: args.url.clone(),
        token,
    });
    match &args.scenario {
        Scenario::Subscribe(options) => {
            return Ok(
                match bounded(limit, subscribe::run_subscribe(target, options)).await {
                    Ok(()) => super::EXIT_SUCCESS,
                    Err(err) => {
                        eprintln!("deployd bench subscribe: {err}");
                        super::EXIT_USAGE_OR_AUTH
                    }
                },
            );
        }
        Scenario::Compare(options) => {
            return Ok(match bounded(limit, compare::compare(options)).await {
                Ok(report) => {
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        print!("{}", report.render());
                    }
                    if report.clean() {
                        super::EXIT_SUCCESS
                    } else {
                        super::EXIT_DEPLOYMENT_FAILED
                    }
                }
                Err(err) => {
                    eprintln!("deployd bench compare: {err}");
                    super::EXIT_USAGE_OR_AUTH
                }
            });
        }
        _ => {}
    }
    let Some(target) = target else {
        eprintln!("deployd bench: --token (or DEPLOYD_TOKEN) is required");
        return Ok(super::EXIT_USAGE_OR_AUTH);
    };
    if let Err(err) = check_loopback(&args.url, args.allow_remote) {
        eprintln!("deployd bench: {err}");
        return Ok(super::EXIT_USAGE_OR_AUTH);
    }
    let server_pid = args.server_pid.or_else(|| local_server_pid(&args.url));
    let probe = server_pid.and_then(system::UsageProbe::start);
    // (table, json, clean, deliveries, CPU of a subscriber child)
    let outcome = match &args.scenario {
        Scenario::Ingest(options) => bounded(limit, ingest(&target, options))
            .await
            .map(|r| (r.render(), serde_json::to_value(&r), true, 0, 0.0)),
        Scenario::Fanout(options) => bounded(limit, fanout(&target, options)).await.map(|r| {
            (
                r.render(),
                serde_json::to_value(&r),
                r.violations.is_clean(),
                r.deliveries,
                r.subscriber_process_cpu_secs.unwrap_or(0.0),
            )
        }),
        Scenario::Read(options) => bounded(limit, read(&target, options))
            .await
            .map(|r| (r.render(), serde_json::to_value(&r), true, 0, 0.0)),
        Scenario::Catchup(options) => bounded(limit, catchup(&target, options)).await.map(|r| {
            (
                r.render(),
                serde_json::to_value(&r),
                r.violations.is_clean(),
                0,
                0.0,
            )
        }),
        Scenario::Subscribe(_) | Scenario::Compare(_) => unreachable!("handled above"),
    };
    match outcome {
        Ok((table, json, clean, deliveries, child_cpu)) => {
            let usage = probe.map(|p| p.finish(child_cpu));
            let per_delivery_us = usage
                .as_ref()
                .filter(|_| deliveries > 0)
                .map(|u| u.server_cpu_secs * 1e6 / deliveries as f64);
            if args.json {
                let mut json = json?;
                if let (Some(usage), Some(object)) = (&usage, json.as_object_mut()) {
                    object.insert("server".into(), serde_json::to_value(usage)?);
                    if let Some(us) = per_delivery_us {
                        object.insert("server_cpu_us_per_delivery".into(), us.into());
                    }
                }
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                print!("{table}");
                if let Some(u) = &usage {
                    println!(
                        "  cpu (s)      server {:.2}, bench tool {:.2}, over {:.2} s of wall time",
                        u.server_cpu_secs, u.tool_cpu_secs, u.wall_secs
                    );
                    if let Some(us) = per_delivery_us {
                        println!("  server CPU   {us:.3} µs per delivery");
                    }
                    println!(
                        "  server RSS   {:.1} MB at start, {:.1} MB peak, {:.1} MB at end (pid {})",
                        u.server_rss_start_kib as f64 / 1024.0,
                        u.server_rss_peak_kib as f64 / 1024.0,
                        u.server_rss_end_kib as f64 / 1024.0,
                        u.server_pid
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

/// The pid listening on the URL's port, when the URL is a loopback address of this machine.
fn local_server_pid(url: &str) -> Option<u32> {
    check_loopback(url, false).ok()?;
    let port = reqwest::Url::parse(url).ok()?.port_or_known_default()?;
    system::pid_listening_on(port)
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

#[cfg(test)]
mod tests {
    use super::*;

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
