//! The `ingest` scenario: P pushers, each with its own app and deployment, send N lines in
//! windows of unacknowledged batches; only acknowledged (durable) lines count.

use std::sync::Arc;

use tokio::time::Instant;

use super::client::{
    check_line_and_batch, create_app, http_client, per_sec, random_suffix, AnyFrameBuilder, Push,
};
use super::report::{Histogram, IngestReport};
use super::{protocol, BenchError, IngestOptions, Target, MAX_PUSHERS, MAX_TOTAL_LINES, MB};

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
        pushes.push(Push::start_for(target, &app, options.frame).await?);
    }
    let frames = Arc::new(AnyFrameBuilder::new(
        options.frame,
        options.line_bytes,
        false,
    ));
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
