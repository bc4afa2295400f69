//! The `fanout` scenario: K stream subscribers on one app, one pusher; every subscriber checks
//! it got each line once and in order, and measures each line's latency from its batch's ack.
//!
//! Subscribers read their socket's frames themselves, with the server's own codec
//! (`crate::ws`), after tungstenite's handshake: the tool must spend as little CPU per delivery
//! as possible, so that the server, not the tool, is what a run measures.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::client::{
    check_line_and_batch, connect, create_app, find, http_client, parse_index, parse_u64_at,
    per_sec, random_suffix, FrameBuilder, Push, Ws,
};
use super::report::{FanoutReport, Histogram, Violations};
use super::{
    protocol, BenchError, FanoutOptions, Target, CONNECT_CONCURRENCY, MAX_SUBSCRIBERS,
    MAX_TOTAL_LINES, MIN_FANOUT_LINE_BYTES, SUBSCRIBERS_READY_TIMEOUT,
};
use crate::cli::{encode_path_segment, ws_url};
use crate::ws;

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
            let frame = match ws::parse_server_frame(&buf[start..], MAX_SUBSCRIBER_FRAME) {
                Ok(Some(frame)) if frame.fin => frame,
                Ok(None) => break,
                // The server never fragments a frame: a fragment is as unreadable as garbage.
                Ok(Some(_)) | Err(_) => {
                    result.violations.unparsable += 1;
                    result.violations.disconnected += 1;
                    break 'read;
                }
            };
            let bytes = &buf[start + frame.payload.start..start + frame.payload.end];
            start += frame.len;
            match frame.opcode {
                ws::opcode::TEXT => {}
                ws::opcode::CLOSE => {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
