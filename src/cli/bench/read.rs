//! The `read` scenario: one deployment of N lines, then its `/output` read R times.

use std::time::Duration;

use tokio::time::Instant;

use super::client::{
    check_line_and_batch, create_app, http_client, per_sec, random_suffix, FrameBuilder, Push,
};
use super::report::ReadReport;
use super::{protocol, BenchError, ReadOptions, Target, MAX_READS, MAX_TOTAL_LINES, MB};
use crate::cli::{basic_auth_header, encode_path_segment, http_url};

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
