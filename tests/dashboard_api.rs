//! The dashboard's server side, through the real binary: its files under `/ui/` (shell,
//! assets, security headers), the ranged read of a deployment's lines, its search, and the
//! stream's lighter replays (`logs=none`, `tail=N`).
mod common;
#[path = "common/deploy.rs"]
mod deploy;
#[path = "common/subscriber.rs"]
mod subscriber;

use serde_json::{json, Value};

use common::Server;
use deploy::deploy;
use subscriber::next_event;

/// A GET without credentials that does not follow redirects: status, headers, body.
async fn raw_get(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut request = client.get(format!("{}{path}", server.url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body").to_vec();
    (status, headers, body)
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

const SHELL: &[u8] = include_bytes!("../ui/index.html");

#[tokio::test]
async fn the_root_and_ui_without_a_slash_redirect_to_the_dashboard() {
    let server = Server::start();
    for path in ["/", "/ui"] {
        let (status, headers, _) = raw_get(&server, path, &[]).await;
        assert_eq!(status, 302, "{path}");
        assert_eq!(header(&headers, "location"), "/ui/", "{path}");
    }
}

#[tokio::test]
async fn the_shell_is_served_unauthenticated_with_a_strict_policy_for_every_client_route() {
    let server = Server::start();
    let mut etags = Vec::new();
    for path in [
        "/ui/",
        "/ui/apps/shop",
        "/ui/apps/shop/deployments/0190a000-0000-7000-8000-000000000000",
        "/ui/no-such-file.js",
    ] {
        let (status, headers, body) = raw_get(&server, path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body, SHELL, "{path} is not the shell");
        assert_eq!(
            header(&headers, "content-type"),
            "text/html; charset=utf-8",
            "{path}"
        );
        let csp = header(&headers, "content-security-policy");
        for directive in [
            "default-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
        etags.push(header(&headers, "etag").to_string());
    }
    assert!(etags[0].starts_with('"') && etags[0].len() > 2, "{etags:?}");
    assert!(etags.iter().all(|e| *e == etags[0]), "{etags:?}");
}

#[tokio::test]
async fn an_asset_is_served_as_its_own_type_and_a_matching_etag_gets_a_304() {
    let server = Server::start();
    let (status, headers, body) = raw_get(&server, "/ui/index.html", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, SHELL);
    let etag = header(&headers, "etag").to_string();
    let (status, headers, body) =
        raw_get(&server, "/ui/index.html", &[("if-none-match", &etag)]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(header(&headers, "etag"), etag);
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    let (status, _, body) = raw_get(&server, "/ui/", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(status, 200, "a stale ETag gets the file");
    assert_eq!(body, SHELL);
}

#[tokio::test]
async fn a_path_escaping_ui_gets_the_shell_never_a_file_of_the_server() {
    let server = Server::start();
    for path in [
        "/ui/..%2f..%2fCargo.toml",
        "/ui/%2e%2e/%2e%2e/Cargo.toml",
        "/ui//etc/passwd",
    ] {
        let (status, _, body) = raw_get(&server, path, &[]).await;
        // The client may resolve `%2e%2e` itself (then the path leaves /ui/: a JSON 404).
        assert!(
            (status == 200 && body == SHELL) || status == 404,
            "{path}: {status}"
        );
        assert!(
            !String::from_utf8_lossy(&body).contains("[package]"),
            "{path}"
        );
    }
}

/// A user, an app of theirs with one finished deployment of `lines`; returns (token, app, id).
async fn app_with_deployment(server: &Server, lines: &[&str]) -> (String, Value, String) {
    let token = server.create_user("alice").await;
    let app = server.create_app(&server.client(&token), "shop").await;
    let id = deploy(server, "shop", &token, lines, "success").await;
    (token, app, id)
}

/// A GET with `token` that does not follow redirects or ask for any type.
async fn authed_get(
    server: &Server,
    token: &str,
    path: &str,
    accept: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = reqwest::Client::new()
        .get(format!("{}{path}", server.url))
        .header(
            "Authorization",
            format!("Basic {}", common::b64(&format!(":{token}"))),
        );
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

/// The NDJSON body's objects.
fn objects(body: &str) -> Vec<Value> {
    body.lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

fn numbers(objects: &[Value]) -> Vec<u64> {
    objects
        .iter()
        .map(|o| o["n"].as_u64().expect("n"))
        .collect()
}

#[tokio::test]
async fn a_range_of_lines_comes_as_ndjson_with_numbers_times_and_the_last_line_and_status() {
    let server = Server::start();
    let texts: Vec<String> = (1..=10).map(|n| format!("line \"{n}\"")).collect();
    let lines: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (token, _, id) = app_with_deployment(&server, &lines).await;
    let base = format!("/v1/apps/shop/deployments/{id}/lines");

    let (status, headers, body) =
        authed_get(&server, &token, &format!("{base}?from=3&limit=4"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "content-type"), "application/x-ndjson");
    assert_eq!(header(&headers, "x-last-line"), "10");
    assert_eq!(header(&headers, "x-deployment-status"), "success");
    let got = objects(&body);
    assert_eq!(numbers(&got), [3, 4, 5, 6]);
    assert_eq!(got[0]["text"], "line \"3\"");
    let at = got[0]["at"].as_str().expect("at");
    let parsed = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    assert!(
        at.ends_with('Z') && at.len() == "2026-01-01T00:00:00.000Z".len(),
        "{at}"
    );
    assert!(parsed.year() >= 2024, "{at}");

    let (_, _, body) = authed_get(&server, &token, &format!("{base}?tail=3"), None).await;
    assert_eq!(numbers(&objects(&body)), [8, 9, 10]);
    let (_, _, body) = authed_get(&server, &token, &base, None).await;
    assert_eq!(numbers(&objects(&body)), (1..=10).collect::<Vec<_>>());
    let (status, headers, body) =
        authed_get(&server, &token, &format!("{base}?from=11"), None).await;
    assert_eq!((status, body.as_str()), (200, ""), "past the end: empty");
    assert_eq!(header(&headers, "x-last-line"), "10");
}

#[tokio::test]
async fn bad_ranges_are_400_or_422_and_another_users_deployment_is_a_404_like_a_missing_one() {
    let server = Server::start();
    let (token, _, id) = app_with_deployment(&server, &["a", "b"]).await;
    let base = format!("/v1/apps/shop/deployments/{id}/lines");
    for (query, expected) in [
        ("from=x", 400),
        ("limit=%2B1", 400),
        ("from=0", 422),
        ("limit=0", 422),
        ("limit=5001", 422),
        ("tail=5001", 422),
        ("tail=2&from=1", 422),
    ] {
        let (status, _, body) = authed_get(&server, &token, &format!("{base}?{query}"), None).await;
        assert_eq!(status, expected, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON error");
        assert!(
            body["error"].is_string() || body["errors"].is_object(),
            "{body}"
        );
    }
    let bob = server.create_user("bob").await;
    let (status, _, theirs) = authed_get(&server, &bob, &base, None).await;
    let (missing_status, _, missing) = authed_get(
        &server,
        &token,
        "/v1/apps/shop/deployments/0190a000-0000-7000-8000-000000000000/lines",
        None,
    )
    .await;
    assert_eq!((status, missing_status), (404, 404), "{theirs} {missing}");
    let (status, _, body) = authed_get(&server, &token, &base, None).await;
    assert_eq!(status, 200, "the server keeps serving: {body}");
}

#[tokio::test]
async fn output_stays_text_plain_whatever_the_accept_header_says() {
    let server = Server::start();
    let (token, _, id) = app_with_deployment(&server, &["one", "two"]).await;
    for accept in [
        "application/json",
        "application/x-ndjson",
        "text/html",
        "*/*",
    ] {
        let (status, headers, body) = authed_get(
            &server,
            &token,
            &format!("/v1/apps/shop/deployments/{id}/output"),
            Some(accept),
        )
        .await;
        assert_eq!(status, 200, "{accept}");
        assert_eq!(
            header(&headers, "content-type"),
            "text/plain; charset=utf-8",
            "{accept}"
        );
        assert_eq!(body, "one\ntwo\n", "{accept}");
    }
}

#[tokio::test]
async fn search_finds_lines_case_insensitively_ignoring_ansi_and_counts_the_whole_log() {
    let server = Server::start();
    let (token, _, id) = app_with_deployment(
        &server,
        &[
            "-----> Building",
            "\u{1b}[31mERR\u{1b}[0mOR: disk full",
            "all good",
            "an error again",
            "Error: the last one",
        ],
    )
    .await;
    let base = format!("/v1/apps/shop/deployments/{id}/search");
    let (status, body) = server.client(&token).get(&format!("{base}?q=error")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"matches": [2, 4, 5], "total": 3, "total_capped": false, "scanned_to": 5})
    );
    let (_, body) = server
        .client(&token)
        .get(&format!("{base}?q=ERROR&after=2&limit=1"))
        .await;
    assert_eq!(body["matches"], json!([4]));
    assert_eq!(body["total"], 3, "the total counts the whole log");
    let (_, body) = server.client(&token).get(&format!("{base}?q=%5B31m")).await;
    assert_eq!(body["matches"], json!([]), "escape sequences are not text");
    let long = "a".repeat(257);
    for (query, expected) in [
        ("q=".to_string(), 422),
        (String::new(), 422),
        (format!("q={long}"), 422),
        ("q=a&limit=1001".into(), 422),
        ("q=a&after=-1".into(), 400),
    ] {
        let (status, body) = server.client(&token).get(&format!("{base}?{query}")).await;
        assert_eq!(status, expected, "{query}: {body}");
    }
    let bob = server.create_user("bob").await;
    let (status, body) = server.client(&bob).get(&format!("{base}?q=error")).await;
    assert_eq!(status, 404, "{body}");
}

/// Events until the status `status` of `deployment`, asserting the stream stays open.
async fn until_status(ws: &mut subscriber::Ws, deployment: &str, status: &str) -> Vec<Value> {
    subscriber::events_until_status(ws, deployment, status).await
}

#[tokio::test]
async fn logs_none_sends_statuses_and_no_log_event_replayed_or_live() {
    let server = Server::start();
    let (token, app, first) = app_with_deployment(&server, &["old 1", "old 2"]).await;
    let mut ws = subscriber::open(&app, "?logs=none", None).await;
    subscriber::send_text(
        &mut ws,
        json!({"type": "auth", "data": {"token": token}}).to_string(),
    )
    .await;
    let replay = until_status(&mut ws, &first, "success").await;
    let second = deploy(
        &server,
        "shop",
        &token,
        &["new 1", "new 2", "new 3"],
        "success",
    )
    .await;
    let live = until_status(&mut ws, &second, "success").await;
    let all: Vec<&Value> = replay.iter().chain(live.iter()).collect();
    assert!(
        all.iter().all(|e| e["type"] != "log"),
        "a log event with logs=none: {all:?}"
    );
    let statuses: Vec<&str> = live
        .iter()
        .filter(|e| e["type"] == "status" && e["id"] == second.as_str())
        .map(|e| e["data"]["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["building", "pushing", "starting", "success"]);
}

#[tokio::test]
async fn tail_replays_the_last_lines_and_resume_wins_for_the_deployment_it_names() {
    let server = Server::start();
    let texts: Vec<String> = (1..=10).map(|n| format!("line {n}")).collect();
    let lines: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (token, app, id) = app_with_deployment(&server, &lines).await;

    // In the auth frame.
    let mut ws = subscriber::subscribe(&app, &token, json!({"tail": 3})).await;
    let events = until_status(&mut ws, &id, "success").await;
    assert_eq!(
        subscriber::log_contents(&events, &id),
        ["line 8", "line 9", "line 10"]
    );
    // Then live, whole: a new deployment's lines all come.
    let second = deploy(&server, "shop", &token, &["a", "b", "c", "d"], "success").await;
    let live = until_status(&mut ws, &second, "success").await;
    assert_eq!(
        subscriber::log_contents(&live, &second),
        ["a", "b", "c", "d"]
    );

    // In the URL, with a resume point for the first deployment: it resumes, the other tails.
    let mut ws = subscriber::open(&app, &format!("?tail=1&deployment={id}&after=6"), None).await;
    subscriber::send_text(
        &mut ws,
        json!({"type": "auth", "data": {"token": token}}).to_string(),
    )
    .await;
    let mut events = Vec::new();
    while !(events
        .iter()
        .any(|e: &Value| e["id"] == id.as_str() && e["type"] == "status")
        && events
            .iter()
            .any(|e: &Value| e["id"] == second.as_str() && e["type"] == "status"))
    {
        events.push(next_event(&mut ws).await);
    }
    assert_eq!(
        subscriber::log_contents(&events, &id),
        ["line 7", "line 8", "line 9", "line 10"]
    );
    assert_eq!(subscriber::log_contents(&events, &second), ["d"]);
}

#[tokio::test]
async fn bad_stream_options_are_refused_before_the_upgrade_or_close_the_socket() {
    let server = Server::start();
    let (token, app, _) = app_with_deployment(&server, &["x"]).await;
    let stream = app["links"]["deployments_stream"]
        .as_str()
        .expect("stream url")
        .replacen("ws://", "http://", 1);
    for (query, expected) in [
        ("logs=some", 422),
        ("logs=none&tail=1", 422),
        ("tail=x", 400),
    ] {
        let response = reqwest::Client::new()
            .get(format!("{stream}?{query}"))
            .header("Connection", "upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), expected, "{query}");
        let text = response.text().await.expect("body");
        let body: Value = serde_json::from_str(&text).expect("JSON error");
        assert!(
            body["error"].is_string() || body["errors"].is_object(),
            "{body}"
        );
    }
    let mut ws = subscriber::subscribe(&app, &token, json!({"logs": "sometimes"})).await;
    let (code, _) = subscriber::expect_close(&mut ws).await;
    assert_eq!(code, 1008, "an invalid auth frame is a policy violation");
}
