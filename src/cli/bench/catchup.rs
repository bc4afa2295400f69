//! The `catchup` scenario: a subscriber joins a running deployment that already has N lines,
//! while the pusher keeps sending L live lines at R lines/s. The server replays the N stored
//! lines, then the live ones follow; the subscriber checks it got all N + L once and in order.
//! Measured: the time from joining to the arrival of line N (caught up with what was stored
//! when it joined), and the live lines' ack→arrival latency.

use tokio::time::Instant;

use super::client::{
    check_line_and_batch, create_app, http_client, per_sec, random_suffix, FrameBuilder, Push,
};
use super::report::CatchupReport;
use super::subscribe::{Placement, Source, Subscribers};
use super::system::MonoOrigin;
use super::{
    BenchError, CatchupOptions, Target, MAX_SUBSCRIBERS, MAX_TOTAL_LINES, MIN_FANOUT_LINE_BYTES,
};

/// Lines per batch while filling the deployment before the join.
const FILL_BATCH: usize = 1000;
/// Batches in flight while filling.
const FILL_WINDOW: usize = 32;
/// Batches in flight during the live part.
const LIVE_WINDOW: usize = 32;

/// Runs the catchup scenario (see the module docs).
pub async fn catchup(
    target: &Target,
    options: &CatchupOptions,
) -> Result<CatchupReport, BenchError> {
    let live_batch = (options.rate / 1000).max(1) as usize;
    check_line_and_batch(options.line_bytes, FILL_BATCH, FILL_WINDOW)?;
    if options.line_bytes < MIN_FANOUT_LINE_BYTES {
        return Err(BenchError::Usage(format!(
            "catchup lines start with their index: --line-bytes must be at least {MIN_FANOUT_LINE_BYTES}"
        )));
    }
    let total = options.lines.saturating_add(options.live_lines);
    if options.lines == 0
        || options.live_lines == 0
        || options.rate == 0
        || options.subscribers == 0
        || options.subscribers > MAX_SUBSCRIBERS
        || total.saturating_mul(options.subscribers as u64) > MAX_TOTAL_LINES
    {
        return Err(BenchError::Usage(format!(
            "--lines, --live-lines and --rate must be at least 1, --subscribers 1..={MAX_SUBSCRIBERS}, and subscribers x (lines + live lines) at most {MAX_TOTAL_LINES}"
        )));
    }
    let client = http_client()?;
    let app = create_app(
        &client,
        target,
        &format!("bench-catchup-{}", random_suffix()),
    )
    .await?;
    let mut push = Push::start(target, &app).await?;
    let fill = FrameBuilder::new(options.line_bytes, true);
    push.send_lines(&fill, options.lines, FILL_BATCH, FILL_WINDOW, 0, |_, _| {})
        .await?;

    // Join while the deployment is running, then keep pushing.
    let origin = MonoOrigin::now();
    let joined = Instant::now();
    let subscribers = Subscribers::connect(
        &Source::Deployd {
            target: target.clone(),
            app,
        },
        options.subscribers,
        total,
        live_batch as u64,
        Some(options.lines),
        &Placement::InProcess,
    )
    .await?;
    let live = FrameBuilder::new(options.line_bytes, true).numbered_from(options.lines);
    let sent = push
        .send_lines(
            &live,
            options.live_lines,
            live_batch,
            LIVE_WINDOW,
            options.rate,
            subscribers.acker(),
        )
        .await;
    let finished = match sent {
        Ok(_) => push.finish().await,
        Err(err) => Err(err),
    };
    let totals = subscribers.finish().await?;
    finished?;
    let caught_up = totals.mark_arrival_mono.map(|m| origin.instant(m));
    let catch_up = caught_up.map(|at| at.saturating_duration_since(joined));
    Ok(CatchupReport {
        lines_before_join: options.lines,
        live_lines: options.live_lines,
        rate: options.rate,
        line_bytes: options.line_bytes,
        subscribers: options.subscribers,
        catch_up_secs: catch_up.map(|d| d.as_secs_f64()),
        replay_lines_per_sec: catch_up.map(|d| per_sec(options.lines as f64, d)),
        deliveries: totals.deliveries,
        live_latency: totals.latency.latency(),
        never_acked: totals.never_acked,
        violations: totals.violations,
    })
}
