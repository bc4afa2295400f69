//! `deployd bench compare`: deployd against Redis, side by side in one run on this machine.
//! It starts its own deployd (this binary, a temp data dir, a random admin token) and its own
//! redis-server (temp dir, AOF with `appendfsync everysec`), then runs the same shapes on both,
//! with the same line size: `ingest` against pipelined `XADD` (same clients, batch and window),
//! and `fanout` against `PUBLISH` to the same number of subscribers at the same rate (the
//! subscribers in a child process for both, unless `--in-process`). Prints each figure, the
//! servers' CPU, and deployd/Redis ratios.
//!
//! Both servers are killed and the temp dir removed when the run ends, whatever happened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, FromArgMatches};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use super::fanout::{check_fanout, fanout_report, placement};
use super::redis::{self, RedisServer};
use super::report::{FanoutReport, IngestReport, Latency};
use super::subscribe::{Source, Subscribers};
use super::system::{ServerUsage, UsageProbe};
use super::{
    fanout, ingest, protocol, BenchError, CompareOptions, FanoutOptions, IngestOptions, Target,
};

/// How long the deployd child may take to print its listening line.
const DEPLOYD_START_TIMEOUT: Duration = Duration::from_secs(20);

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parses scenario options from words, so they get the same defaults as on the command line.
fn parse_options<T: Args + FromArgMatches>(words: &[String]) -> Result<T, BenchError> {
    let command = T::augment_args(clap::Command::new("bench").no_binary_name(true));
    let matches = command
        .try_get_matches_from(words)
        .map_err(|e| BenchError::Usage(e.to_string()))?;
    T::from_arg_matches(&matches).map_err(|e| BenchError::Usage(e.to_string()))
}

/// A deployd this run started; killed when dropped.
struct Deployd {
    child: Child,
    target: Target,
}

async fn start_deployd(data: &Path) -> Result<Deployd, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Usage(format!("cannot find this executable: {e}")))?;
    let token = format!(
        "bench-{}{}",
        super::client::random_suffix(),
        super::client::random_suffix()
    );
    let mut child = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        // 10,000 subscribers plus the pusher are over the default connection cap.
        .args(["--server-max-connections", "0"])
        .env("DEPLOYD_ADMIN_TOKEN", &token)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Usage(format!("cannot start deployd: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| protocol("deployd has no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let url = tokio::time::timeout(DEPLOYD_START_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("deployd listening on ") {
                return Some(url.trim().to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| protocol("deployd did not start (no listening line)"))?;
    // Keep reading its stdout so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Deployd {
        child,
        target: Target { url, token },
    })
}

/// What one side measured in `compare`.
#[derive(Debug, Clone, Serialize)]
pub struct CompareSide {
    pub ingest_lines_per_sec: f64,
    pub ingest_ack_latency: Latency,
    pub ingest_server: Option<ServerUsage>,
    pub fanout: FanoutReport,
    pub fanout_server: Option<ServerUsage>,
}

/// What `compare` measured.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub ingest: IngestReport,
    pub deployd: CompareSide,
    pub redis: CompareSide,
}

fn probe(pid: Option<u32>) -> Option<UsageProbe> {
    pid.and_then(UsageProbe::start)
}

/// Runs `compare` (see the module docs).
pub(super) async fn compare(options: &CompareOptions) -> Result<CompareReport, BenchError> {
    let redis_binary = redis::find_redis_server()?;
    let ingest_options: IngestOptions = parse_options(&[
        "--pushers".into(),
        options.pushers.to_string(),
        "--lines".into(),
        options.lines.to_string(),
        "--line-bytes".into(),
        options.line_bytes.to_string(),
        "--batch".into(),
        options.batch.to_string(),
        "--window".into(),
        options.window.to_string(),
    ])?;
    let mut fanout_words = vec![
        "--subscribers".into(),
        options.subscribers.to_string(),
        "--lines".into(),
        options.fanout_lines.to_string(),
        "--rate".into(),
        options.rate.to_string(),
        "--line-bytes".into(),
        options.line_bytes.to_string(),
        "--window".into(),
        options.window.to_string(),
    ];
    if options.in_process {
        fanout_words.push("--in-process".into());
    }
    if let Some(prefix) = &options.subscriber_prefix {
        fanout_words.extend(["--subscriber-prefix".into(), prefix.clone()]);
    }
    let fanout_options: FanoutOptions = parse_options(&fanout_words)?;
    let batch = check_fanout(&fanout_options)?;

    let dir = TempDir(std::env::temp_dir().join(format!(
        "deployd-bench-compare-{}-{}",
        std::process::id(),
        super::client::random_suffix()
    )));
    for sub in ["deployd", "redis"] {
        std::fs::create_dir_all(dir.0.join(sub))
            .map_err(|e| BenchError::Usage(format!("cannot create {}: {e}", dir.0.display())))?;
    }
    let deployd = start_deployd(&dir.0.join("deployd")).await?;
    let redis = RedisServer::start(&redis_binary, &dir.0.join("redis")).await?;
    let (deployd_pid, redis_pid) = (deployd.child.id(), redis.pid());

    // Ingest, then XADD: same clients, lines, line size, batch and window.
    let p = probe(deployd_pid);
    let ingest_report = ingest(&deployd.target, &ingest_options).await?;
    let ingest_server = p.map(|p| p.finish(0.0));
    let p = probe(redis_pid);
    let xadd = redis::xadd(
        &redis.addr,
        options.pushers,
        options.lines,
        options.line_bytes,
        options.batch,
        options.window,
    )
    .await?;
    let xadd_server = p.map(|p| p.finish(0.0));

    // Fan-out, then PUBLISH: same subscribers, lines, rate and batch.
    let p = probe(deployd_pid);
    let deployd_fanout = fanout(&deployd.target, &fanout_options).await?;
    let deployd_fanout_server =
        p.map(|p| p.finish(deployd_fanout.subscriber_process_cpu_secs.unwrap_or(0.0)));
    let p = probe(redis_pid);
    let channel = format!("bench:fanout:{}", super::client::random_suffix());
    let mut subscribers = Subscribers::connect(
        &Source::Redis {
            addr: redis.addr.clone(),
            channel: channel.clone(),
        },
        options.subscribers,
        options.fanout_lines,
        batch as u64,
        None,
        &placement(&fanout_options),
    )
    .await?;
    let ready = subscribers.started().await?;
    let published = redis::publish(
        &redis.addr,
        &channel,
        &fanout_options,
        batch,
        subscribers.acker(),
    )
    .await;
    let totals = subscribers.finish().await?;
    let (started, acked) = published?;
    let redis_fanout = fanout_report(&fanout_options, batch, ready, &totals, started, acked);
    let redis_fanout_server =
        p.map(|p| p.finish(redis_fanout.subscriber_process_cpu_secs.unwrap_or(0.0)));
    drop(redis);
    drop(deployd);
    Ok(CompareReport {
        deployd: CompareSide {
            ingest_lines_per_sec: ingest_report.lines_per_sec,
            ingest_ack_latency: ingest_report.ack_latency,
            ingest_server,
            fanout: deployd_fanout,
            fanout_server: deployd_fanout_server,
        },
        redis: CompareSide {
            ingest_lines_per_sec: xadd.lines_per_sec,
            ingest_ack_latency: xadd.ack_latency.latency(),
            ingest_server: xadd_server,
            fanout: redis_fanout,
            fanout_server: redis_fanout_server,
        },
        ingest: ingest_report,
    })
}

impl CompareReport {
    /// Every violation, both sides (a clean run has none).
    pub fn clean(&self) -> bool {
        self.deployd.fanout.violations.is_clean() && self.redis.fanout.violations.is_clean()
    }

    /// The side-by-side table.
    pub fn render(&self) -> String {
        let (d, r) = (&self.deployd, &self.redis);
        let i = &self.ingest;
        let f = &d.fanout;
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}x", a / b)
            } else {
                "-".into()
            }
        };
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        let cpu_per = |u: &Option<ServerUsage>, n: u64| {
            u.as_ref()
                .filter(|_| n > 0)
                .map(|u| u.server_cpu_secs * 1e6 / n as f64)
        };
        let mut rows: Vec<[String; 4]> = Vec::new();
        let mut row = |name: &str, a: String, b: String, x: String| {
            rows.push([name.into(), a, b, x]);
        };
        let ingest_lines = i.lines_acked;
        row(
            "ingest lines/s",
            format!("{:.0}", d.ingest_lines_per_sec),
            format!("{:.0}", r.ingest_lines_per_sec),
            ratio(d.ingest_lines_per_sec, r.ingest_lines_per_sec),
        );
        row(
            "ingest batch ack p50",
            ms(d.ingest_ack_latency.p50_us),
            ms(r.ingest_ack_latency.p50_us),
            ratio(
                d.ingest_ack_latency.p50_us as f64,
                r.ingest_ack_latency.p50_us as f64,
            ),
        );
        row(
            "ingest batch ack p99",
            ms(d.ingest_ack_latency.p99_us),
            ms(r.ingest_ack_latency.p99_us),
            ratio(
                d.ingest_ack_latency.p99_us as f64,
                r.ingest_ack_latency.p99_us as f64,
            ),
        );
        let per_line = |u: &Option<ServerUsage>| cpu_per(u, ingest_lines);
        let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3} µs"));
        row(
            "ingest server CPU per line",
            us(per_line(&d.ingest_server)),
            us(per_line(&r.ingest_server)),
            match (per_line(&d.ingest_server), per_line(&r.ingest_server)) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => "-".into(),
            },
        );
        row(
            "fanout deliveries/s",
            format!("{:.0}", f.deliveries_per_sec),
            format!("{:.0}", r.fanout.deliveries_per_sec),
            ratio(f.deliveries_per_sec, r.fanout.deliveries_per_sec),
        );
        row(
            "fanout ack->arrival p50",
            ms(f.latency.p50_us),
            ms(r.fanout.latency.p50_us),
            ratio(f.latency.p50_us as f64, r.fanout.latency.p50_us as f64),
        );
        row(
            "fanout ack->arrival p99",
            ms(f.latency.p99_us),
            ms(r.fanout.latency.p99_us),
            ratio(f.latency.p99_us as f64, r.fanout.latency.p99_us as f64),
        );
        let (dd, rd) = (
            cpu_per(&d.fanout_server, f.deliveries),
            cpu_per(&r.fanout_server, r.fanout.deliveries),
        );
        row(
            "fanout server CPU per delivery",
            us(dd),
            us(rd),
            match (dd, rd) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => "-".into(),
            },
        );
        let clean = |v: &super::Violations| if v.is_clean() { "clean" } else { "VIOLATIONS" };
        row(
            "fanout order check",
            clean(&f.violations).into(),
            clean(&r.fanout.violations).into(),
            String::new(),
        );
        let mut out = format!(
            "deployd bench compare (deployd: durable acks after fdatasync; redis: AOF, appendfsync everysec)\n  ingest: {} clients x {} lines of {} B, batches of {}, window {}\n  fanout: {} subscribers, {} lines at {}, batches of {}\n",
            i.pushers,
            i.lines_per_pusher,
            i.line_bytes,
            i.batch,
            i.window,
            f.subscribers,
            f.lines,
            if f.rate == 0 { "full speed".into() } else { format!("{} lines/s", f.rate) },
            f.batch,
        );
        let widths: Vec<usize> = (0..4)
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(["", "deployd", "redis", "deployd/redis"][c].len())
            })
            .collect();
        let mut line = |cells: [&str; 4]| {
            out.push_str(&format!(
                "  {:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}\n",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3]
            ));
        };
        line(["", "deployd", "redis", "deployd/redis"]);
        for r in &rows {
            line([&r[0], &r[1], &r[2], &r[3]]);
        }
        out
    }
}
