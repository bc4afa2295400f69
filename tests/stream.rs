//! The live deployments stream, served in process (the graceful-shutdown case by the real
//! binary): isolation between apps, refused tokens, bad frames, pings, timeouts and closing. The
//! no-line-lost-or-repeated cases live in `lossless_stream.rs`.
mod common;
#[path = "common/subscriber.rs"]
mod subscriber;

use std::time::Duration;

use common::{push, Server, TestServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use subscriber::{
    events_until_status, expect_close, log_contents, open, send_text, subscribe, Ws, FRAME_TIMEOUT,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

fn short_timeouts() -> common::Options {
    common::Options {
        config_toml: "[stream]\nauth_timeout_secs = 1\n".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn two_apps_streams_are_isolated() {
    let server = TestServer::start().await;
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
    let server = TestServer::start().await;
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
async fn bad_frames_before_auth_close_with_a_reason() {
    let server = TestServer::start_with(short_timeouts()).await;
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

    // No auth frame at all: see
    // `a_socket_that_sends_no_auth_frame_is_closed_with_4008_once_the_auth_timeout_passed`.

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
    let server = TestServer::start_with(common::Options {
        config_toml: "[stream]\nping_interval_secs = 1\n".into(),
        ..Default::default()
    })
    .await;
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
    let server = TestServer::start().await;
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

/// Longer than every server timer these paused-time tests wait for, so that the client's own
/// timeout is never the nearest timer the paused clock jumps to.
const PAUSED_WAIT: Duration = Duration::from_secs(600);

/// The next frame that is not a pong, or None once the socket closed (within [`PAUSED_WAIT`]).
async fn next_frame_paused(ws: &mut Ws) -> Option<Message> {
    loop {
        match tokio::time::timeout(PAUSED_WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Pong(_)))) => continue,
            Ok(Some(Ok(message))) => return Some(message),
            Ok(Some(Err(_)) | None) => return None,
            Err(_) => panic!("nothing within {PAUSED_WAIT:?}"),
        }
    }
}

/// Paused time: the clock only moves when every task waits, straight to the next timer, so the
/// close cannot come before the (default, 10 s) auth timeout and the test takes no real time.
#[tokio::test(start_paused = true)]
async fn a_socket_that_sends_no_auth_frame_is_closed_with_4008_once_the_auth_timeout_passed() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "silent").await;
    let mut ws = open(&app, "", None).await;
    // A pong proves the server's auth wait (and its deadline) started.
    ws.send(Message::Ping(b"here".to_vec().into()))
        .await
        .expect("ping");
    let opened = tokio::time::Instant::now();
    match next_frame_paused(&mut ws).await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 4008, "{}", frame.reason)
        }
        other => panic!("expected a 4008 close, got {other:?}"),
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_secs(10) - Duration::from_millis(1),
        "closed after {waited:?}, before the auth timeout"
    );
    assert!(
        waited < Duration::from_secs(11),
        "closed late, after {waited:?}"
    );
}

/// Paused time: pings come every (default) 30 s after auth, not sooner.
#[tokio::test(start_paused = true)]
async fn an_authenticated_socket_gets_a_ping_once_the_ping_interval_passed() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let app = server.create_app(&admin, "pinged-late").await;
    let authenticated = tokio::time::Instant::now();
    let mut ws = subscribe(&app, &server.admin_token, json!({})).await;
    for n in 1..=2u32 {
        let ping = match next_frame_paused(&mut ws).await {
            Some(Message::Text(text)) => serde_json::from_str::<Value>(&text).expect("json"),
            other => panic!("expected a ping, got {other:?}"),
        };
        assert_eq!(ping["type"], "ping", "{ping}");
        let waited = authenticated.elapsed();
        assert!(
            waited >= Duration::from_secs(30) * n,
            "ping {n} after {waited:?}"
        );
    }
}
