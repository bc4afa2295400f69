//! The `fanout` scenario: K stream subscribers on one app, one pusher; every subscriber checks
//! it got each line once and in order, and measures each line's latency from its batch's ack.
//!
//! This module sets the run up and drives the pusher; the subscribers (in a child process by
//! default, or as tasks here with `--in-process`) are `subscribe`'s.

use tokio::time::Instant;

use super::client::{
    check_line_and_batch, create_app, http_client, per_sec, random_suffix, FrameBuilder, Push,
};
use super::report::FanoutReport;
use super::subscribe::{Placement, Source, SubscriberResult, Subscribers};
use super::{
    BenchError, FanoutOptions, Target, MAX_SUBSCRIBERS, MAX_TOTAL_LINES, MIN_FANOUT_LINE_BYTES,
};

/// The batch size a fanout run uses: `--batch`, else one batch per millisecond at `--rate`,
/// else 1000.
pub(super) fn fanout_batch(options: &FanoutOptions) -> usize {
    match options.batch {
        0 if options.rate > 0 => (options.rate / 1000).max(1) as usize,
        0 => 1000,
        b => b,
    }
}

/// Checks fanout's options; returns the batch size.
pub(super) fn check_fanout(options: &FanoutOptions) -> Result<usize, BenchError> {
    let batch = fanout_batch(options);
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
    Ok(batch)
}

/// Where `options` put the subscribers.
pub(super) fn placement(options: &FanoutOptions) -> Placement {
    if options.in_process {
        return Placement::InProcess;
    }
    match options
        .subscriber_prefix
        .as_deref()
        .map(str::split_whitespace)
    {
        Some(words) => Placement::ChildWith(words.map(str::to_owned).collect()),
        None => Placement::Child,
    }
}

/// Runs the fanout scenario (see the module docs).
pub async fn fanout(target: &Target, options: &FanoutOptions) -> Result<FanoutReport, BenchError> {
    let batch = check_fanout(options)?;
    let client = http_client()?;
    let app = create_app(
        &client,
        target,
        &format!("bench-fanout-{}", random_suffix()),
    )
    .await?;
    let source = Source::Deployd {
        target: target.clone(),
        app: app.clone(),
    };
    let mut subscribers = Subscribers::connect(
        &source,
        options.subscribers,
        options.lines,
        batch as u64,
        None,
        &placement(options),
    )
    .await?;

    // Start the deployment; wait until the subscribers saw it, so they are live.
    let mut push = Push::start(target, &app).await?;
    let subscribers_ready = subscribers.started().await?;

    let frames = FrameBuilder::new(options.line_bytes, true);
    let sent = push
        .send_lines(
            &frames,
            options.lines,
            batch,
            options.window,
            options.rate,
            subscribers.acker(),
        )
        .await;
    let pusher_acked = Instant::now();
    let finished = match sent {
        Ok((_, started)) => push.finish().await.map(|()| started),
        Err(err) => Err(err),
    };
    // Wait for the subscribers whatever happened, so none is left behind.
    let totals = subscribers.finish().await?;
    let started = finished?;
    Ok(fanout_report(
        options,
        batch,
        subscribers_ready,
        &totals,
        started,
        pusher_acked,
    ))
}

/// The report of a fanout-shaped run (deployd's, or `compare`'s Redis one).
pub(super) fn fanout_report(
    options: &FanoutOptions,
    batch: usize,
    subscribers_ready: usize,
    totals: &SubscriberResult,
    started: Instant,
    pusher_acked: Instant,
) -> FanoutReport {
    let origin = super::system::MonoOrigin::now();
    let last_arrival = totals
        .last_arrival_mono
        .map_or(pusher_acked, |m| origin.instant(m).max(pusher_acked));
    let elapsed = last_arrival.duration_since(started);
    FanoutReport {
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
        subscriber_process_cpu_secs: (!options.in_process).then_some(totals.cpu_secs),
        violations: totals.violations,
    }
}
