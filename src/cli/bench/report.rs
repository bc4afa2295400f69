//! What a `deployd bench` scenario measured: the reports (serialised for `--json`, rendered as
//! tables otherwise), the fanout checker's violation counts, and the latency histogram.
//!
//! Plain data and arithmetic: no sockets, no clock.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

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
    /// CPU seconds of the subscriber child process (absent with `--in-process`).
    pub subscriber_process_cpu_secs: Option<f64>,
    pub violations: Violations,
}

/// Delivery defects seen by fanout subscribers (all zero in a correct run).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
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

    pub(super) fn add(&mut self, other: &Violations) {
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

/// What `catchup` measured.
#[derive(Debug, Clone, Serialize)]
pub struct CatchupReport {
    pub lines_before_join: u64,
    pub live_lines: u64,
    pub rate: u64,
    pub line_bytes: usize,
    pub subscribers: usize,
    /// From joining (connecting) to the arrival of the last line stored before the join; the
    /// slowest subscriber's. Absent if it never came.
    pub catch_up_secs: Option<f64>,
    /// Lines stored before the join, over `catch_up_secs`.
    pub replay_lines_per_sec: Option<f64>,
    /// Lines received, all subscribers.
    pub deliveries: u64,
    /// Ack→arrival of the live lines (those sent after the join).
    pub live_latency: Latency,
    /// Live deliveries whose batch ack the pusher had not seen when the subscriber settled
    /// (left out of `live_latency`; on a saturated machine the last acks can come late).
    pub never_acked: u64,
    pub violations: Violations,
}

fn rows(title: &str, rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = format!("{title}\n");
    for (key, value) in rows {
        let _ = writeln!(out, "  {key:<width$}  {value}");
    }
    out
}

fn violations_text(v: &Violations) -> String {
    if v.is_clean() {
        "none: every subscriber got every line once, in order".to_string()
    } else {
        format!(
            "missing {} duplicates {} out-of-order {} seq-regressions {} disconnected {} unparsable {}",
            v.missing, v.duplicates, v.out_of_order, v.seq_regressions, v.disconnected, v.unparsable
        )
    }
}

pub(super) fn latency_text(l: &Latency) -> String {
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
                    "subscriber process CPU",
                    self.subscriber_process_cpu_secs
                        .map_or_else(|| "in process".into(), |c| format!("{c:.2} s")),
                ),
                ("violations", violations_text(v)),
            ],
        )
    }
}

impl CatchupReport {
    /// The result table.
    pub fn render(&self) -> String {
        let or_never = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("never".into(), f);
        rows(
            "deployd bench catchup",
            &[
                (
                    "setup",
                    format!(
                        "{} subscriber(s) join a running deployment at line {}, then {} live lines of {} B at {} lines/s",
                        self.subscribers, self.lines_before_join, self.live_lines, self.line_bytes, self.rate
                    ),
                ),
                (
                    "caught up after",
                    or_never(self.catch_up_secs, &|s| format!("{s:.3} s")),
                ),
                (
                    "replay lines/s",
                    or_never(self.replay_lines_per_sec, &|r| format!("{r:.0}")),
                ),
                ("deliveries", self.deliveries.to_string()),
                ("live ack->arrival", latency_text(&self.live_latency)),
                ("never acked", self.never_acked.to_string()),
                ("violations", violations_text(&self.violations)),
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
