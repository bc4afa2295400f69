//! Batched log frames on the live stream (`batch=lines`), through the real binary: a
//! subscriber that asks gets `log_batch` frames (a segment's lines each, split at 64 KiB)
//! instead of one `log` frame per line, with the same once-and-in-order guarantee, resume
//! points, `tail=N` and refusals as the per-line stream; subscribers that do not ask still get
//! `log` frames.
mod common;
#[path = "common/subscriber.rs"]
mod subscriber;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{push, Server};
use subscriber::{events_until_status, expect_close, open, send_text, subscribe, Ws};

/// The bound on a `log_batch` frame's size (the README's "Batched log frames").
const MAX_BATCH_FRAME_BYTES: usize = 64 * 1024;

/// The text of line `n` of a pushed test log: about 100 bytes, numbered, with characters that
/// JSON escapes.
fn line_text(n: u64) -> String {
    format!(
        "line {n:>6} \"quoted\" \\ tab\t{}",
        "x".repeat(60 + (n % 17) as usize)
    )
}

/// Sends `batches` batches of `per_batch` lines without waiting for each ack (as fast as the
/// socket takes them), then waits for every ack.
async fn push_fast(pusher: &mut push::Pusher, batches: u64, per_batch: u64, start: u64) {
    for b in 0..batches {
        let first = start + b * per_batch;
        let lines: Vec<String> = (first..first + per_batch).map(line_text).collect();
        pusher
            .socket
            .send(Message::Text(
                json!({"type": "logs", "batch": 1000 + start + b, "lines": lines})
                    .to_string()
                    .into(),
            ))
            .await
            .expect("send logs");
    }
    for _ in 0..batches {
        let frame = push::next_json(&mut pusher.socket).await.expect("ack");
        assert_eq!(frame["type"], "ack", "{frame}");
    }
}

/// The next text frame, raw (its size matters) and parsed, skipping pings.
async fn next_raw(ws: &mut Ws) -> (usize, Value) {
    loop {
        match tokio::time::timeout(subscriber::FRAME_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let value: Value = serde_json::from_str(&text).expect("json frame");
                if value["type"] != "ping" {
                    return (text.len(), value);
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => panic!("stream closed: {frame:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => panic!("no event within {:?}", subscriber::FRAME_TIMEOUT),
        }
    }
}

/// What a batched subscriber got of `deployment` until its status `status`.
struct Batched {
    /// `(line number, text)` of every line, in arrival order.
    lines: Vec<(u64, String)>,
    /// How many `log_batch` frames carried them.
    frames: usize,
    /// The largest `log_batch` frame's payload.
    largest: usize,
    /// `log` frames received (a batched subscriber must get none).
    per_line: usize,
}

async fn batched_until_status(ws: &mut Ws, deployment: &str, status: &str) -> Batched {
    let mut got = Batched {
        lines: Vec::new(),
        frames: 0,
        largest: 0,
        per_line: 0,
    };
    loop {
        let (size, event) = next_raw(ws).await;
        match event["type"].as_str() {
            Some("log_batch") if event["id"] == deployment => {
                got.frames += 1;
                got.largest = got.largest.max(size);
                assert!(event["at"].is_string(), "{event}");
                let seq = event["seq"].as_u64().expect("seq");
                let lines = event["data"]["lines"].as_array().expect("lines");
                assert!(!lines.is_empty(), "an empty batch: {event}");
                for (i, line) in lines.iter().enumerate() {
                    got.lines
                        .push((seq + i as u64, line.as_str().expect("text").to_owned()));
                }
            }
            Some("log") => got.per_line += 1,
            Some("status") if event["id"] == deployment && event["data"]["status"] == status => {
                return got
            }
            _ => {}
        }
    }
}

fn expected_lines(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, String)> {
    range.map(|n| (n, line_text(n))).collect()
}

#[tokio::test]
async fn every_line_of_a_fast_multi_batch_push_arrives_once_in_order_as_batches_live_and_in_a_replay(
) {
    let server = Server::start();
    let admin = server.admin();
    let app = server.create_app(&admin, "fast").await;
    let mut live = open(&app, "?batch=lines", None).await;
    send_text(
        &mut live,
        json!({"type": "auth", "data": {"token": server.admin_token}}).to_string(),
    )
    .await;
    let mut pusher = push::start(&server.url, "fast", &server.admin_token, "v1").await;
    let id = pusher.id();
    // 20 batches of 1000 lines of ~100 bytes: each segment needs two frames or more.
    push_fast(&mut pusher, 20, 1000, 1).await;
    pusher.finish("success").await;

    let got = batched_until_status(&mut live, &id, "success").await;
    assert_eq!(got.per_line, 0, "a batched subscriber got log frames");
    assert_eq!(got.lines, expected_lines(1..=20_000));
    assert!(
        got.frames >= 40,
        "{} frames for 20 segments of ~100 KB",
        got.frames
    );
    assert!(got.frames < 1000, "{} frames: not batched", got.frames);
    assert!(
        got.largest <= MAX_BATCH_FRAME_BYTES,
        "a {} byte frame",
        got.largest
    );

    // A subscriber joining after the end gets the replay (it finished just now), batched too,
    // this time asking in the auth frame.
    let mut replay = subscribe(&app, &server.admin_token, json!({"batch": "lines"})).await;
    let got = batched_until_status(&mut replay, &id, "success").await;
    assert_eq!(got.per_line, 0);
    assert_eq!(got.lines, expected_lines(1..=20_000));
    assert!(
        got.frames >= 40 && got.frames < 1000,
        "{} frames",
        got.frames
    );
    assert!(
        got.largest <= MAX_BATCH_FRAME_BYTES,
        "a {} byte frame",
        got.largest
    );
}

#[tokio::test]
async fn a_resume_point_in_the_middle_of_a_segment_starts_the_first_batch_at_the_next_line() {
    let server = Server::start();
    let admin = server.admin();
    let app = server.create_app(&admin, "resume").await;
    let mut pusher = push::start(&server.url, "resume", &server.admin_token, "v1").await;
    let id = pusher.id();
    // Three segments: lines 1–10, 11–20, 21–30.
    for b in 0..3 {
        let lines: Vec<String> = (b * 10 + 1..=b * 10 + 10).map(line_text).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        pusher.logs(&lines).await;
    }
    let mut ws = open(
        &app,
        &format!("?deployment={id}&after=15&batch=lines"),
        None,
    )
    .await;
    send_text(
        &mut ws,
        json!({"type": "auth", "data": {"token": server.admin_token}}).to_string(),
    )
    .await;
    let (_, first) = next_raw(&mut ws).await;
    assert_eq!(first["type"], "log_batch", "{first}");
    assert_eq!(first["seq"], 16, "{first}");
    assert_eq!(first["data"]["lines"][0], line_text(16));
    let lines: Vec<String> = (31..=35).map(line_text).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    pusher.logs(&lines).await;
    pusher.finish("success").await;
    let mut got = batched_until_status(&mut ws, &id, "success").await;
    let first_lines = first["data"]["lines"].as_array().expect("lines");
    let mut all: Vec<(u64, String)> = first_lines
        .iter()
        .enumerate()
        .map(|(i, l)| (16 + i as u64, l.as_str().expect("text").to_owned()))
        .collect();
    all.append(&mut got.lines);
    assert_eq!(all, expected_lines(16..=35));
    assert_eq!(got.per_line, 0);

    // The same in the auth frame, resuming in the middle of the last segment.
    let mut ws = subscribe(
        &app,
        &server.admin_token,
        json!({"batch": "lines", "resume": {id.clone(): 32}}),
    )
    .await;
    let got = batched_until_status(&mut ws, &id, "success").await;
    assert_eq!(got.lines, expected_lines(33..=35));
    assert_eq!(got.frames, 1);
}

#[tokio::test]
async fn tail_with_batch_replays_the_last_lines_as_one_batch_then_batches_live() {
    let server = Server::start();
    let admin = server.admin();
    let app = server.create_app(&admin, "tail").await;
    let mut pusher = push::start(&server.url, "tail", &server.admin_token, "v1").await;
    let id = pusher.id();
    for b in 0..3 {
        let lines: Vec<String> = (b * 10 + 1..=b * 10 + 10).map(line_text).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        pusher.logs(&lines).await;
    }
    let mut ws = open(&app, "?tail=5&batch=lines", None).await;
    send_text(
        &mut ws,
        json!({"type": "auth", "data": {"token": server.admin_token}}).to_string(),
    )
    .await;
    let (_, first) = next_raw(&mut ws).await;
    assert_eq!(first["type"], "log_batch", "{first}");
    assert_eq!(first["seq"], 26, "{first}");
    assert_eq!(
        first["data"]["lines"],
        json!((26..=30).map(line_text).collect::<Vec<_>>())
    );
    let (_, status) = next_raw(&mut ws).await;
    assert_eq!(status["type"], "status", "{status}");
    assert_eq!(status["seq"], 30, "{status}");
    let lines: Vec<String> = (31..=34).map(line_text).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    pusher.logs(&lines).await;
    pusher.finish("success").await;
    let got = batched_until_status(&mut ws, &id, "success").await;
    assert_eq!(got.lines, expected_lines(31..=34));
    assert_eq!(got.frames, 1);
    assert_eq!(got.per_line, 0);
}

#[tokio::test]
async fn a_bad_batch_value_is_refused_like_the_other_bad_stream_options() {
    let server = Server::start();
    let admin = server.admin();
    let app = server.create_app(&admin, "refuse").await;
    let stream = app["links"]["deployments_stream"]
        .as_str()
        .expect("stream url")
        .replacen("ws://", "http://", 1);
    for query in ["batch=bytes", "batch=", "batch=LINES", "tail=2&batch=1"] {
        let response = reqwest::Client::new()
            .get(format!("{stream}?{query}"))
            .header("Connection", "upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 422, "{query}");
        let body: Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("a JSON error");
        assert!(body["errors"]["batch"].is_array(), "{query}: {body}");
    }
    for batch in [json!("none"), json!(true), json!(["lines"])] {
        let mut ws = subscribe(&app, &server.admin_token, json!({ "batch": batch })).await;
        let (code, _) = expect_close(&mut ws).await;
        assert_eq!(code, 1008, "batch {batch}: an invalid auth frame");
    }
    // Refusals changed nothing: a good subscriber still streams.
    let mut ws = subscribe(&app, &server.admin_token, json!({"batch": "lines"})).await;
    let mut pusher = push::start(&server.url, "refuse", &server.admin_token, "v1").await;
    pusher.logs(&["still here"]).await;
    pusher.finish("success").await;
    let got = batched_until_status(&mut ws, &pusher.id(), "success").await;
    assert_eq!(got.lines, vec![(1, "still here".to_owned())]);
}

#[tokio::test]
async fn a_per_line_subscriber_on_the_same_app_at_the_same_time_still_gets_log_frames() {
    let server = Server::start();
    let admin = server.admin();
    let app = server.create_app(&admin, "both").await;
    let mut batched = subscribe(&app, &server.admin_token, json!({"batch": "lines"})).await;
    let mut per_line = subscribe(&app, &server.admin_token, json!({})).await;
    let mut pusher = push::start(&server.url, "both", &server.admin_token, "v1").await;
    let id = pusher.id();
    push_fast(&mut pusher, 5, 700, 1).await;
    pusher.finish("success").await;

    let events = events_until_status(&mut per_line, &id, "success").await;
    assert!(
        events.iter().all(|e| e["type"] != "log_batch"),
        "a per-line subscriber got a batch"
    );
    let lines: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["type"] == "log")
        .map(|e| {
            assert_eq!(e["id"], id.as_str());
            (
                e["seq"].as_u64().expect("seq"),
                e["data"]["content"].as_str().expect("content").to_owned(),
            )
        })
        .collect();
    assert_eq!(lines, expected_lines(1..=3500));
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "status")
        .map(|e| e["data"]["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses.last(), Some(&"success"));

    let got = batched_until_status(&mut batched, &id, "success").await;
    assert_eq!(got.lines, expected_lines(1..=3500));
    assert_eq!(got.per_line, 0);
    assert!(got.frames < 100, "{} frames", got.frames);
}
