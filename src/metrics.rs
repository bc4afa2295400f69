//! The server's Prometheus metrics: one process-wide registry ([`metrics`]) that the hot paths
//! update with atomics, and [`render`] for `GET /metrics` (text exposition format).
//!
//! Label cardinality is bounded by construction: labels are a status, an operation id of the
//! route table or an HTTP status code, never an app, a deployment or a raw path. Hot paths
//! (the writer's commit, a subscriber's delivery) hold pre-resolved counters, so they cost an
//! atomic add, nothing per line beyond that.
//!
//! This module only counts, renders, and logs deployment starts and ends: it must not decide
//! anything, and a metric that cannot
//! be registered is a bug caught by the tests (registration happens once, at first use).

use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::status::Status;

/// Buckets of the latency histograms, in seconds: 100 µs to about 13 s, doubling.
const LATENCY_BUCKETS: (f64, f64, usize) = (0.0001, 2.0, 18);
/// Buckets of the group-commit size histogram, in commands: 1 to 4096, doubling (the writer's
/// group bound is below that).
const GROUP_BUCKETS: (f64, f64, usize) = (1.0, 2.0, 13);

/// Every metric the server exports. See the README's Operations section for each one.
pub struct Metrics {
    registry: Registry,
    /// Deployments created (each starts `building` or `queued`).
    pub deployments_created: IntCounter,
    /// Deployments reaching each status, by status (terminal ones are the outcomes).
    pub deployment_statuses: IntCounterVec,
    /// Deployments waiting in an app's queue.
    pub queue_length: IntGauge,
    pub lines_ingested: IntCounter,
    pub bytes_ingested: IntCounter,
    /// Push acknowledgements sent, and the time from a batch's arrival to its ack.
    pub acks: IntCounter,
    pub ack_latency: Histogram,
    /// Commands per group commit, and the time to write and sync one.
    pub group_commit_size: Histogram,
    pub fsync_latency: Histogram,
    /// 1 while the writer accepts writes, 0 once a commit failed.
    pub writer_ok: IntGauge,
    pub subscribers: IntGauge,
    /// Live events delivered to subscribers (one per subscriber per event).
    pub deliveries: IntCounter,
    /// Deployments a subscriber read from the store rather than live (its replay, a resume,
    /// a catch-up after lagging).
    pub catch_ups: IntCounter,
    /// Subscribers that fell behind the live fan-out.
    pub lagged: IntCounter,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub push_sessions: IntGauge,
    /// Webhook deliveries attempted and failed (the webhook sender increments them).
    pub webhook_deliveries: IntCounter,
    pub webhook_failures: IntCounter,
    store_size: IntGauge,
}

fn buckets((start, factor, count): (f64, f64, usize)) -> Vec<f64> {
    // The constants above are valid arguments (start > 0, factor > 1, count ≥ 1).
    exponential_buckets(start, factor, count).unwrap_or_default()
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("deployd".into()), None)?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram = |name: &str, help: &str, b| -> Result<Histogram, prometheus::Error> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets(b)))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let deployment_statuses = IntCounterVec::new(
            Opts::new(
                "deployment_statuses_total",
                "Deployments reaching each status",
            ),
            &["status"],
        )?;
        registry.register(Box::new(deployment_statuses.clone()))?;
        for status in Status::ALL {
            // Every status shows from the start, at 0.
            deployment_statuses.with_label_values(&[status.as_str()]);
        }
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by operation and code"),
            &["operation", "code"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        let http_latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency (to the response head) by operation and code",
            )
            .buckets(buckets(LATENCY_BUCKETS)),
            &["operation", "code"],
        )?;
        registry.register(Box::new(http_latency.clone()))?;
        let metrics = Metrics {
            deployments_created: counter("deployments_created_total", "Deployments created")?,
            deployment_statuses,
            queue_length: gauge("queue_length", "Deployments waiting in an app's queue")?,
            lines_ingested: counter("lines_ingested_total", "Output lines stored")?,
            bytes_ingested: counter("bytes_ingested_total", "Output bytes stored")?,
            acks: counter("push_acks_total", "Push acknowledgements sent")?,
            ack_latency: histogram(
                "push_ack_latency_seconds",
                "From a push batch's arrival to its acknowledgement",
                LATENCY_BUCKETS,
            )?,
            group_commit_size: histogram(
                "group_commit_size",
                "Commands per group commit",
                GROUP_BUCKETS,
            )?,
            fsync_latency: histogram(
                "commit_sync_seconds",
                "Time to write and fsync one group commit",
                LATENCY_BUCKETS,
            )?,
            writer_ok: gauge(
                "writer_ok",
                "1 while the writer accepts writes, 0 once failing",
            )?,
            subscribers: gauge("stream_subscribers", "Live stream subscribers connected")?,
            deliveries: counter(
                "stream_deliveries_total",
                "Events delivered to stream subscribers",
            )?,
            catch_ups: counter(
                "stream_catch_ups_total",
                "Deployments a subscriber caught up on from the store",
            )?,
            lagged: counter(
                "stream_lagged_total",
                "Subscribers that fell behind the live fan-out",
            )?,
            http_requests,
            http_latency,
            push_sessions: gauge("push_sessions_open", "Push sessions open")?,
            webhook_deliveries: counter("webhook_deliveries_total", "Webhook deliveries")?,
            webhook_failures: counter("webhook_failures_total", "Webhook deliveries that failed")?,
            store_size: gauge("store_size_bytes", "Bytes on disk under the data directory")?,
            registry,
        };
        metrics.writer_ok.set(1);
        Ok(metrics)
    }

    /// Counts a committed status change of a deployment (creation included).
    pub fn deployment_status(&self, status: Status, created: bool) {
        if created {
            self.deployments_created.inc();
        }
        self.deployment_statuses
            .with_label_values(&[status.as_str()])
            .inc();
    }

    /// Counts one answered HTTP request.
    pub fn http_request(&self, operation: &'static str, code: u16, elapsed: Duration) {
        HTTP_HANDLES.with_borrow_mut(|handles| {
            let (requests, latency) = handles.entry((operation, code)).or_insert_with(|| {
                let code = code.to_string();
                let labels = [operation, code.as_str()];
                (
                    self.http_requests.with_label_values(&labels),
                    self.http_latency.with_label_values(&labels),
                )
            });
            requests.inc();
            latency.observe(elapsed.as_secs_f64());
        });
    }
}

/// The request counter and latency histogram of one (operation, code).
type HttpHandles = (IntCounter, Histogram);

thread_local! {
    /// Each thread's handles on the request counter and histogram of every (operation, code)
    /// it has counted. `with_label_values` hashes the labels and takes the vector's shared
    /// lock and a reference count per call: per request, lines bouncing between the cores.
    /// Operations are the route table's (a few dozen) and codes a handful each: bounded.
    /// There is one `Metrics` per process ([`metrics`]), so every handle here is its.
    static HTTP_HANDLES: std::cell::RefCell<HashMap<(&'static str, u16), HttpHandles>> =
        std::cell::RefCell::new(HashMap::new());
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // Invariant: the names above are valid and distinct (the tests render them all).
    Metrics::new().expect("invariant: every metric registers")
});

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Counts a durable deployment record change, and logs a deployment's start (it reaches
/// `building`), its queueing and its end (a terminal status) with its id, app and duration.
pub fn deployment_committed(record: &crate::model::Deployment, created: bool) {
    metrics().deployment_status(record.status, created);
    let (id, app, status) = (record.id, record.app_id, record.status);
    if status.is_terminal() {
        tracing::info!(deployment = %id, app = %app, status = %status, duration_secs = record.duration_secs(), "deployment finished");
    } else if status == Status::Building {
        tracing::info!(deployment = %id, app = %app, status = %status, "deployment started");
    } else if status == Status::Queued {
        tracing::info!(deployment = %id, app = %app, status = %status, "deployment queued");
    }
}

/// An open gauge unit (a push session, a subscriber) that closes when dropped.
pub struct Open(&'static IntGauge);

impl Open {
    pub fn new(gauge: &'static IntGauge) -> Self {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Bytes of the files under `dir` (what the store takes on disk); unreadable entries count 0.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_size(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The text exposition of every metric, with the store size measured under `data_dir` now.
pub fn render(data_dir: &Path) -> String {
    let metrics = metrics();
    metrics
        .store_size
        .set(i64::try_from(dir_size(data_dir)).unwrap_or(i64::MAX));
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail on I/O; a metric family it rejects would be our bug.
    if let Err(err) = TextEncoder::new().encode(&metrics.registry.gather(), &mut out) {
        tracing::error!(error = %err, "encoding metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_the_deployd_prefix() {
        let m = metrics();
        m.http_request("listApps", 200, Duration::from_millis(3));
        m.deployment_status(Status::Success, false);
        let text = render(Path::new("/nonexistent"));
        for name in [
            "deployd_deployments_created_total",
            "deployd_deployment_statuses_total{status=\"build-error\"}",
            "deployd_queue_length",
            "deployd_lines_ingested_total",
            "deployd_bytes_ingested_total",
            "deployd_push_acks_total",
            "deployd_push_ack_latency_seconds_bucket",
            "deployd_group_commit_size_bucket",
            "deployd_commit_sync_seconds_bucket",
            "deployd_writer_ok",
            "deployd_stream_subscribers",
            "deployd_stream_deliveries_total",
            "deployd_stream_catch_ups_total",
            "deployd_stream_lagged_total",
            "deployd_http_requests_total{code=\"200\",operation=\"listApps\"}",
            "deployd_http_request_duration_seconds_bucket",
            "deployd_push_sessions_open",
            "deployd_webhook_deliveries_total",
            "deployd_webhook_failures_total",
            "deployd_store_size_bytes",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn an_open_unit_closes_when_dropped() {
        static GAUGE: LazyLock<IntGauge> =
            LazyLock::new(|| IntGauge::new("test_open", "test").expect("gauge"));
        let open = Open::new(&GAUGE);
        assert_eq!(GAUGE.get(), 1);
        drop(open);
        assert_eq!(GAUGE.get(), 0);
    }
}
