//! The stream loses and repeats no line: a subscriber that connects late replays the finished
//! deployment, live events arrive in store order, a resume sends exactly the later lines, and a
//! subscriber that stops reading (its hub channel overflows) catches up from the store with
//! every line exactly once, in order. Served in process, over a real WebSocket.
mod common;
#[path = "common/subscriber.rs"]
mod subscriber;

use std::time::Duration;

use common::{push, TestServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use subscriber::{events_until_status, log_contents, open, send_text, subscribe, summary};
use tokio_tungstenite::tungstenite::Message;

/// Pushes `batches` log batches of `per_batch` lines without waiting for each ack (acks are
/// read concurrently).
/// Then runs the deployment to success.
async fn push_many(pusher: push::Pusher, batches: u64, per_batch: usize, width: usize) {
    let (mut tx, mut rx) = pusher.socket.split();
    let reader = tokio::spawn(async move {
        let mut acked = 0;
        while acked < batches {
            match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).expect("json");
                    assert_eq!(frame["type"], "ack", "{frame}");
                    acked = frame["batch"].as_u64().expect("batch");
                }
                other => panic!("pusher socket: {other:?}"),
            }
        }
        rx
    });
    let pad = "x".repeat(width);
    for batch in 1..=batches {
        let lines: Vec<String> = (0..per_batch)
            .map(|i| format!("{:08} {pad}", (batch - 1) * per_batch as u64 + i as u64 + 1))
            .collect();
        tx.send(Message::Text(
            json!({"type": "logs", "batch": batch, "lines": lines})
                .to_string()
                .into(),
        ))
        .await
        .expect("send logs");
    }
    let rx = reader.await.expect("ack reader");
    let mut socket = tx.reunite(rx).expect("reunite");
    for status in ["pushing", "starting", "success"] {
        socket
            .send(Message::Text(
                json!({"type": "status", "status": status})
                    .to_string()
                    .into(),
            ))
            .await
            .expect("send status");
        let frame = push::next_json(&mut socket).await.expect("status answer");
        assert_eq!(frame["status"], status, "{frame}");
    }
}

#[tokio::test]
async fn a_socket_opened_after_the_deployment_finished_still_replays_its_lines_and_terminal_status()
{
    // The `scalingo deploy` race: created, finished, and only then the socket opens.
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "late").await;
    let mut pusher = push::start(&server.url, "late", &server.admin_token, "r1").await;
    pusher.logs(&["one", "two"]).await;
    pusher.logs(&["three"]).await;
    pusher.finish("success").await;
    let id = pusher.id();

    // The SDKs authenticate with the exchanged JWT.
    let (status, body) = admin.post("/v1/tokens/exchange", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let jwt = body["token"].as_str().expect("jwt");
    let mut ws = subscribe(&app, jwt, json!({})).await;
    let events = events_until_status(&mut ws, &id, "success").await;
    let s = summary(&events);
    assert_eq!(
        s,
        vec![
            ("log".into(), id.clone(), "one".into(), 1),
            ("log".into(), id.clone(), "two".into(), 2),
            ("log".into(), id.clone(), "three".into(), 3),
            ("status".into(), id.clone(), "success".into(), 3),
        ]
    );
    assert!(events[0]["at"].as_str().is_some_and(|at| at.contains('T')));
    // The server does not close the stream after the deployment ended.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ws.next())
            .await
            .is_err(),
        "the stream must stay open"
    );
}

#[tokio::test]
async fn live_events_arrive_in_store_order_across_statuses_and_logs() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "live").await;
    // A finished deployment, whose replay proves the subscription is live (the server
    // subscribes before it replays) before the deployment under test starts.
    let mut earlier = push::start(&server.url, "live", &server.admin_token, "r0").await;
    earlier.finish("success").await;
    let mut ws = subscribe(&app, &server.admin_token, json!({})).await;
    events_until_status(&mut ws, &earlier.id(), "success").await;
    let mut pusher = push::start(&server.url, "live", &server.admin_token, "r1").await;
    let id = pusher.id();
    pusher.logs(&["b1", "b2"]).await;
    assert_eq!(pusher.status("pushing").await["status"], "pushing");
    pusher.logs(&["p1"]).await;
    assert_eq!(pusher.status("starting").await["status"], "starting");
    pusher.logs(&["s1"]).await;
    assert_eq!(pusher.status("success").await["status"], "success");

    let events = events_until_status(&mut ws, &id, "success").await;
    assert_eq!(
        summary(&events),
        vec![
            ("new".into(), id.clone(), "".into(), 0),
            ("status".into(), id.clone(), "building".into(), 0),
            ("log".into(), id.clone(), "b1".into(), 1),
            ("log".into(), id.clone(), "b2".into(), 2),
            ("status".into(), id.clone(), "pushing".into(), 2),
            ("log".into(), id.clone(), "p1".into(), 3),
            ("status".into(), id.clone(), "starting".into(), 3),
            ("log".into(), id.clone(), "s1".into(), 4),
            ("status".into(), id.clone(), "success".into(), 4),
        ]
    );
    // `new` carries the id string, as the spec page shows.
    assert_eq!(
        events[0],
        json!({"type": "new", "data": {"deployment": id}})
    );
}

#[tokio::test]
async fn resume_after_line_n_sends_exactly_the_later_lines() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "resumed").await;
    let mut pusher = push::start(&server.url, "resumed", &server.admin_token, "r").await;
    let id = pusher.id();
    pusher.logs(&["l1", "l2", "l3"]).await;
    pusher.logs(&["l4", "l5"]).await;

    // In the auth frame (a map, several deployments at once)...
    let mut ws = subscribe(
        &app,
        &server.admin_token,
        json!({"resume": {id.clone(): 2}}),
    )
    .await;
    // ...and as query parameters.
    let mut ws_query = open(&app, &format!("?deployment={id}&after=4"), None).await;
    send_text(
        &mut ws_query,
        json!({"type": "auth", "data": {"token": server.admin_token}}).to_string(),
    )
    .await;

    let replay = events_until_status(&mut ws, &id, "building").await;
    assert_eq!(log_contents(&replay, &id), ["l3", "l4", "l5"]);
    assert_eq!(replay[0]["seq"], 3);
    let replay_q = events_until_status(&mut ws_query, &id, "building").await;
    assert_eq!(log_contents(&replay_q, &id), ["l5"]);

    // Then live lines, each once.
    pusher.logs(&["l6"]).await;
    pusher.finish("success").await;
    let rest = events_until_status(&mut ws, &id, "success").await;
    assert_eq!(log_contents(&rest, &id), ["l6"]);
    let rest_q = events_until_status(&mut ws_query, &id, "success").await;
    assert_eq!(log_contents(&rest_q, &id), ["l6"]);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_gets_every_line_exactly_once_in_order() {
    const BATCHES: u64 = 2000;
    const PER_BATCH: usize = 10;
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "slow").await;
    // A tiny receive buffer: the server's send buffer fills and the hub channel overflows
    // (2000 events for a 256-event channel), forcing the catch-up from the store.
    let mut slow = open(&app, "", Some(4096)).await;
    send_text(
        &mut slow,
        json!({"type": "auth", "data": {"token": server.admin_token}}).to_string(),
    )
    .await;
    let mut fast = subscribe(&app, &server.admin_token, json!({})).await;

    let pusher = push::start(&server.url, "slow", &server.admin_token, "r").await;
    let id = pusher.id();
    // The fast subscriber reads concurrently; the slow one reads nothing until the end.
    let fast_id = id.clone();
    let fast_reader =
        tokio::spawn(async move { events_until_status(&mut fast, &fast_id, "success").await });
    push_many(pusher, BATCHES, PER_BATCH, 300).await;

    let expected: Vec<u64> = (1..=BATCHES * PER_BATCH as u64).collect();
    let (_, _, text) = admin
        .get_text(&format!("/v1/apps/slow/deployments/{id}/output"))
        .await;
    let stored: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(stored.len(), expected.len());
    for events in [
        fast_reader.await.expect("fast reader"),
        events_until_status(&mut slow, &id, "success").await,
    ] {
        let seqs: Vec<u64> = events
            .iter()
            .filter(|e| e["type"] == "log")
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs.len(), expected.len());
        assert!(seqs == expected, "lines lost, repeated or out of order");
        // Every line's content is the stored line with that number (store order).
        assert!(
            log_contents(&events, &id) == stored,
            "contents differ from the store"
        );
        let statuses: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "status")
            .map(|e| e["data"]["status"].as_str().expect("status"))
            .collect();
        assert_eq!(statuses, ["building", "pushing", "starting", "success"]);
    }
}
