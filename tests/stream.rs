//! The live deployments stream through the real binary: a real WebSocket subscriber
//! (tokio-tungstenite) at `links.deployments_stream`, real pusher sessions feeding it.
mod common;

use std::time::Duration;

use common::{push, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// How long a test waits for one frame before failing.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the app's stream socket (no auth frame yet). `recv_buffer` shrinks the client's TCP
/// receive buffer, so that a subscriber that stops reading backs up the server quickly.
async fn open(app: &Value, query: &str, recv_buffer: Option<u32>) -> Ws {
    let url = format!(
        "{}{query}",
        app["links"]["deployments_stream"]
            .as_str()
            .expect("stream url")
    );
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host")
        .to_string();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("rcvbuf");
    }
    let stream = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    ws
}

async fn send_text(ws: &mut Ws, text: String) {
    ws.send(Message::Text(text.into())).await.expect("send");
}

/// Opens and authenticates with `token` (extra auth `data` fields merged in).
async fn subscribe(app: &Value, token: &str, extra: Value) -> Ws {
    let mut ws = open(app, "", None).await;
    let mut data = json!({ "token": token });
    if let Value::Object(extra) = extra {
        data.as_object_mut().expect("object").extend(extra);
    }
    send_text(&mut ws, json!({"type": "auth", "data": data}).to_string()).await;
    ws
}

/// The next JSON event, skipping pings; panics on close.
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let value: Value = serde_json::from_str(&text).expect("json frame");
                if value["type"] != "ping" {
                    return value;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => panic!("stream closed: {frame:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => panic!("no event within {FRAME_TIMEOUT:?}"),
        }
    }
}

/// Events until (and including) the status event `status` of `deployment`.
async fn events_until_status(ws: &mut Ws, deployment: &str, status: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = next_event(ws).await;
        let done = event["type"] == "status"
            && event["id"] == deployment
            && event["data"]["status"] == status;
        events.push(event);
        if done {
            return events;
        }
    }
}

/// The close frame the server sends (code, reason); panics on anything else.
async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Ok(Some(Ok(Message::Close(None)))) => return (0, String::new()),
            Ok(Some(Ok(Message::Text(text)))) => panic!("expected a close, got {text}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(err))) => panic!("expected a close frame, got error {err}"),
            Ok(None) => panic!("expected a close frame, the socket just ended"),
            Err(_) => panic!("no close within {FRAME_TIMEOUT:?}"),
        }
    }
}

/// `(type, id, content-or-status, seq)` of events, for compact comparisons.
fn summary(events: &[Value]) -> Vec<(String, String, String, u64)> {
    events
        .iter()
        .map(|e| {
            let kind = e["type"].as_str().unwrap_or("").to_string();
            let id = e["id"]
                .as_str()
                .or_else(|| e["data"]["deployment"].as_str())
                .unwrap_or("")
                .to_string();
            let what = e["data"]["content"]
                .as_str()
                .or_else(|| e["data"]["status"].as_str())
                .unwrap_or("")
                .to_string();
            (kind, id, what, e["seq"].as_u64().unwrap_or(0))
        })
        .collect()
}

fn log_contents(events: &[Value], deployment: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "log" && e["id"] == deployment)
        .map(|e| e["data"]["content"].as_str().expect("content").to_string())
        .collect()
}

fn short_timeouts() -> common::Options {
    common::Options {
        config_toml: "[stream]\nauth_timeout_secs = 1\n".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_socket_opened_after_the_deployment_finished_still_replays_its_lines_and_terminal_status()
{
    // The `scalingo deploy` race: created, finished, and only then the socket opens.
    let server = Server::start();
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
    let server = Server::start();
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
async fn two_apps_streams_are_isolated() {
    let server = Server::start();
    let admin = server.admin();
    let app_a = server.create_app(&admin, "app-a").await;
    let app_b = server.create_app(&admin, "app-b").await;
    let mut ws_a = subscribe(&app_a, &server.admin_token, json!({})).await;
    let mut ws_b = subscribe(&app_b, &server.admin_token, json!({})).await;
    let mut pa = push::start(&server.url, "app-a", &server.admin_token, "a").await;
    pa.logs(&["from a"]).await;
    pa.finish("success").await;
    let mut pb = push::start(&server.url, "app-b", &server.admin_token, "b").await;
    pb.logs(&["from b"]).await;
    pb.finish("crashed-error").await;

    let events_a = events_until_status(&mut ws_a, &pa.id(), "success").await;
    let events_b = events_until_status(&mut ws_b, &pb.id(), "crashed-error").await;
    assert!(events_a.iter().all(|e| e.to_string().contains(&pa.id())));
    assert!(events_b.iter().all(|e| e.to_string().contains(&pb.id())));
    assert_eq!(log_contents(&events_a, &pa.id()), ["from a"]);
    assert_eq!(log_contents(&events_b, &pb.id()), ["from b"]);
    // Nothing of b reaches a afterwards either.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ws_a.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_strangers_token_and_a_bad_token_are_refused_with_a_close_reason() {
    let server = Server::start();
    let admin = server.admin();
    let app = server.create_app(&admin, "private").await;
    let stranger = server.create_user("stranger").await;

    let mut ws = subscribe(&app, &stranger, json!({})).await;
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (4004, "app not found"));

    let mut ws = subscribe(&app, "not-a-token", json!({})).await;
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (4001, "invalid token"));

    // A collaborator may subscribe.
    let (status, body) = admin
        .post(
            "/v1/apps/private/collaborators",
            json!({"collaborator": {"email": "stranger@example.com"}}),
        )
        .await;
    assert!(status == 201 || status == 200, "{status} {body}");
    let mut ws = subscribe(&app, &stranger, json!({})).await;
    let mut pusher = push::start(&server.url, "private", &server.admin_token, "r").await;
    pusher.finish("success").await;
    events_until_status(&mut ws, &pusher.id(), "success").await;
}

#[tokio::test]
async fn resume_after_line_n_sends_exactly_the_later_lines() {
    let server = Server::start();
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
async fn a_subscriber_that_stops_reading_gets_every_line_exactly_once_in_order() {
    const BATCHES: u64 = 2000;
    const PER_BATCH: usize = 10;
    let server = Server::start();
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

#[tokio::test]
async fn bad_frames_before_auth_close_with_a_reason() {
    let server = Server::start_with(short_timeouts());
    let admin = server.admin();
    let app = server.create_app(&admin, "bad-input").await;

    let mut ws = open(&app, "", None).await;
    send_text(&mut ws, "not json".into()).await;
    assert_eq!(expect_close(&mut ws).await.0, 1008);

    let mut ws = open(&app, "", None).await;
    send_text(&mut ws, json!({"type": "hello", "data": {}}).to_string()).await;
    assert_eq!(expect_close(&mut ws).await.0, 1008);

    let mut ws = open(&app, "", None).await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(expect_close(&mut ws).await.0, 1003);

    let mut ws = open(&app, "", None).await;
    send_text(&mut ws, "x".repeat(200 * 1024)).await;
    assert_eq!(expect_close(&mut ws).await.0, 1009);

    // No auth frame at all: closed after the (1 s) auth timeout.
    let mut ws = open(&app, "", None).await;
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 4008, "{reason}");

    // A plain GET (no upgrade) is a JSON 400, not a hang.
    let (status, _, body) = admin.get_text("/apps/bad-input").await;
    assert_eq!(status, 400, "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_ok(), "{body}");

    // The server is still fine.
    let (status, _) = admin.get("/v1/apps/bad-input").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_frames_after_auth_are_ignored_and_the_stream_keeps_working() {
    let server = Server::start_with(common::Options {
        config_toml: "[stream]\nping_interval_secs = 1\n".into(),
        ..Default::default()
    });
    let admin = server.admin();
    let app = server.create_app(&admin, "noisy").await;
    let mut ws = subscribe(&app, &server.admin_token, json!({})).await;
    send_text(&mut ws, "not json".into()).await;
    send_text(&mut ws, json!({"type": "mystery"}).to_string()).await;
    send_text(
        &mut ws,
        json!({"type": "auth", "data": {"token": "someone-else"}}).to_string(),
    )
    .await;
    ws.send(Message::Binary(vec![0; 10].into()))
        .await
        .expect("send");
    // Pings keep coming (configurable interval).
    let ping = loop {
        match tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                break serde_json::from_str::<Value>(&text).expect("json")
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a ping, got {other:?}"),
        }
    };
    assert_eq!(ping["type"], "ping");
    assert!(ping["data"]["ts"]
        .as_i64()
        .is_some_and(|ts| ts > 1_600_000_000));

    let mut pusher = push::start(&server.url, "noisy", &server.admin_token, "r").await;
    pusher.logs(&["still here"]).await;
    pusher.finish("success").await;
    let events = events_until_status(&mut ws, &pusher.id(), "success").await;
    assert_eq!(log_contents(&events, &pusher.id()), ["still here"]);

    // A too-big frame after auth closes with 1009.
    send_text(&mut ws, "x".repeat(200 * 1024)).await;
    assert_eq!(expect_close(&mut ws).await.0, 1009);
}

#[tokio::test]
async fn streams_close_with_going_away_when_the_server_shuts_down() {
    let mut server = Server::start();
    let admin = server.admin();
    let app = server.create_app(&admin, "bye").await;
    let mut ws = subscribe(&app, &server.admin_token, json!({})).await;
    // Make sure the subscription is established before stopping.
    let mut pusher = push::start(&server.url, "bye", &server.admin_token, "r").await;
    events_until_status(&mut ws, &pusher.id(), "building").await;
    pusher.finish("success").await;
    let reader = tokio::spawn(async move {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    });
    let code = tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop");
    assert_eq!(code, Some(0));
    assert_eq!(reader.await.expect("reader"), Some(CloseCode::Away));
}

/// The next pong, skipping text frames; panics on anything else.
async fn next_pong(ws: &mut Ws) -> Vec<u8> {
    loop {
        match tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Pong(payload)))) => return payload.to_vec(),
            Ok(Some(Ok(Message::Text(_)))) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn client_pings_are_answered_before_and_after_auth_and_a_client_close_is_echoed() {
    let server = Server::start();
    let admin = server.admin();
    let app = server.create_app(&admin, "pinged").await;
    let mut ws = open(&app, "", None).await;
    ws.send(Message::Ping(b"before".to_vec().into()))
        .await
        .expect("ping");
    assert_eq!(next_pong(&mut ws).await, b"before");
    send_text(
        &mut ws,
        json!({"type": "auth", "data": {"token": server.admin_token}}).to_string(),
    )
    .await;
    ws.send(Message::Ping(b"after".to_vec().into()))
        .await
        .expect("ping");
    assert_eq!(next_pong(&mut ws).await, b"after");

    // Lines still flow, then the client closes and the server answers with the same code.
    let mut pusher = push::start(&server.url, "pinged", &server.admin_token, "r").await;
    pusher.logs(&["one"]).await;
    pusher.finish("success").await;
    let events = events_until_status(&mut ws, &pusher.id(), "success").await;
    assert_eq!(log_contents(&events, &pusher.id()), ["one"]);
    ws.close(None).await.expect("close");
    let code = loop {
        match tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected the close reply, got {other:?}"),
        }
    };
    assert_eq!(code, None);
}
