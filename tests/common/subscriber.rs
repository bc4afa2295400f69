//! A live-stream subscriber for tests: opens `links.deployments_stream` with a real WebSocket
//! (tokio-tungstenite), authenticates, and reads events with a per-frame timeout.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// How long a test waits for one frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the app's stream socket (no auth frame yet). `recv_buffer` shrinks the client's TCP
/// receive buffer, so that a subscriber that stops reading backs up the server quickly.
pub async fn open(app: &Value, query: &str, recv_buffer: Option<u32>) -> Ws {
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

pub async fn send_text(ws: &mut Ws, text: String) {
    ws.send(Message::Text(text.into())).await.expect("send");
}

/// Opens and authenticates with `token` (extra auth `data` fields merged in).
pub async fn subscribe(app: &Value, token: &str, extra: Value) -> Ws {
    let mut ws = open(app, "", None).await;
    let mut data = json!({ "token": token });
    if let Value::Object(extra) = extra {
        data.as_object_mut().expect("object").extend(extra);
    }
    send_text(&mut ws, json!({"type": "auth", "data": data}).to_string()).await;
    ws
}

/// The next JSON event, skipping pings; panics on close.
pub async fn next_event(ws: &mut Ws) -> Value {
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
pub async fn events_until_status(ws: &mut Ws, deployment: &str, status: &str) -> Vec<Value> {
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
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
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
pub fn summary(events: &[Value]) -> Vec<(String, String, String, u64)> {
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

pub fn log_contents(events: &[Value], deployment: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "log" && e["id"] == deployment)
        .map(|e| e["data"]["content"].as_str().expect("content").to_string())
        .collect()
}
