//! Notifiers through the real binary: the catalogues, the CRUD the Scalingo CLI does, bad input,
//! and deliveries to a webhook receiver on 127.0.0.1 (signature, retries and their spacing,
//! one delivery id per delivery, survival of a kill -9).

mod common;

use std::time::Duration;

use common::push;
use common::webhook::{Received, Receiver};
use common::{eventually, Client, Options, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(60);

/// The first retry delay the delivery tests configure (ms), so retries come quickly.
const FIRST_RETRY_MS: u64 = 300;

fn fast_retries() -> Options {
    Options {
        config_toml: format!(
            "[notifications]\nfirst_retry_delay_ms = {FIRST_RETRY_MS}\npoll_interval_ms = 20\n"
        ),
        ..Options::default()
    }
}

/// The body the Go SDK sends for `notifiers-add --platform webhook --webhook-url URL --event
/// deployment`: zero values and fields we do not use included.
fn cli_body(url: &str, event_ids: &[&str], send_all: bool) -> Value {
    json!({"notifier": {
        "id": "", "app_id": "", "active": true, "name": "ci-hook", "type": "",
        "send_all_events": send_all, "selected_event_ids": event_ids,
        "type_data": {"webhook_url": url, "emails": null, "user_ids": null},
        "platform_id": "1",
        "created_at": "0001-01-01T00:00:00Z", "updated_at": "0001-01-01T00:00:00Z"
    }})
}

async fn event_type_id(client: &Client, name: &str) -> String {
    let (status, body) = client.get("/v1/event_types").await;
    assert_eq!(status, 200, "{body}");
    body["event_types"]
        .as_array()
        .expect("types")
        .iter()
        .find(|t| t["name"] == name)
        .and_then(|t| t["id"].as_str())
        .unwrap_or_else(|| panic!("no event type {name}: {body}"))
        .to_string()
}

fn signed_by(secret: &str, received: &Received) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(received.body.as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    received.header("x-deployd-signature") == expected
}

async fn deliveries(client: &Client, app: &str, notifier: &str) -> Vec<Value> {
    let (status, body) = client
        .get(&format!("/v1/apps/{app}/notifiers/{notifier}/deliveries"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().expect("deliveries").clone()
}

async fn deploy_once(server: &Server, app: &str) -> String {
    let mut pusher = push::start(&server.url, app, &server.admin_token, "v1").await;
    pusher.logs(&["building"]).await;
    pusher.finish("success").await;
    pusher.id()
}

#[tokio::test]
async fn the_catalogues_answer_anyone_in_scalingos_shapes() {
    let server = Server::start();
    let anyone = server.anonymous();
    let (status, body) = anyone.get("/v1/notification_platforms").await;
    assert_eq!(status, 200, "{body}");
    let platform = &body["notification_platforms"][0];
    assert_eq!(platform["name"], "webhook");
    assert_eq!(platform["id"], "1");
    assert_eq!(
        platform["available_event_ids"].as_array().map(Vec::len),
        Some(11)
    );
    for key in ["display_name", "logo_url", "description"] {
        assert!(platform[key].is_string(), "{key}: {platform}");
    }
    let (status, body) = anyone
        .get("/v1/notification_platforms/search?name=webhook")
        .await;
    assert_eq!(
        (status, body["notification_platforms"][0]["id"].clone()),
        (200, json!("1"))
    );
    let (status, body) = anyone
        .get("/v1/notification_platforms/search?name=sms")
        .await;
    assert_eq!((status, body), (200, json!({"notification_platforms": []})));
    let (status, body) = anyone.get("/v1/notification_platforms/search").await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"]["name"].is_array(), "{body}");

    let (status, body) = anyone.get("/v1/event_types").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["event_types"]
        .as_array()
        .expect("types")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "new_app",
            "rename_app",
            "delete_app",
            "new_collaborator",
            "accept_collaborator",
            "delete_collaborator",
            "change_collaborator_role",
            "new_notifier",
            "edit_notifier",
            "delete_notifier",
            "deployment"
        ]
    );
    for t in body["event_types"].as_array().expect("types") {
        for key in [
            "id",
            "category_id",
            "display_name",
            "description",
            "template",
        ] {
            assert!(t[key].is_string(), "{key}: {t}");
        }
    }
    let (status, body) = anyone.get("/v1/event_categories").await;
    assert_eq!(status, 200);
    let category = &body["event_categories"][0];
    assert!(
        category["id"].is_string() && category["name"].is_string(),
        "{body}"
    );
    assert!(category["position"].is_u64(), "{body}");
}

#[tokio::test]
async fn notifiers_are_created_listed_shown_updated_and_removed_as_the_cli_sends_them() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "hooked").await;
    let deployment = event_type_id(&admin, "deployment").await;
    let (status, created) = admin
        .post(
            "/v1/apps/hooked/notifiers",
            cli_body("https://hooks.example.com/x", &[&deployment], false),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let notifier = &created["notifier"];
    let id = notifier["id"].as_str().expect("id").to_string();
    assert_eq!(notifier["type"], "webhook");
    assert_eq!(notifier["name"], "ci-hook");
    assert_eq!(notifier["active"], true);
    assert_eq!(notifier["platform_id"], "1");
    assert_eq!(notifier["selected_event_ids"], json!([deployment]));
    assert_eq!(
        notifier["type_data"]["webhook_url"],
        "https://hooks.example.com/x"
    );
    let secret = notifier["type_data"]["secret"].as_str().expect("secret");
    assert!(secret.len() >= 32, "{secret}");
    for key in ["app_id", "created_at", "updated_at"] {
        assert!(notifier[key].is_string(), "{key}: {notifier}");
    }

    let (status, list) = admin.get("/v1/apps/hooked/notifiers").await;
    assert_eq!(status, 200);
    assert_eq!(
        list["notifiers"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    let (status, shown) = admin.get(&format!("/v1/apps/hooked/notifiers/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(shown["notifier"]["type_data"]["secret"], secret);

    // The SDK sends "" for what the user did not change: only the name changes.
    let (status, updated) = Client::send_json(
        &admin,
        reqwest::Method::PATCH,
        &format!("/v1/apps/hooked/notifiers/{id}"),
        json!({"notifier": {"name": "renamed", "active": false, "platform_id": "",
               "type_data": {"webhook_url": ""}}}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["notifier"]["name"], "renamed");
    assert_eq!(updated["notifier"]["active"], false);
    assert_eq!(
        updated["notifier"]["type_data"]["webhook_url"],
        "https://hooks.example.com/x"
    );
    assert_eq!(updated["notifier"]["type_data"]["secret"], secret);

    let (status, _) = admin
        .delete(&format!("/v1/apps/hooked/notifiers/{id}"))
        .await;
    assert_eq!(status, 204);
    let (status, body) = admin.get(&format!("/v1/apps/hooked/notifiers/{id}")).await;
    assert_eq!((status, body["resource"].clone()), (404, json!("notifier")));
    let (status, body) = admin
        .delete(&format!("/v1/apps/hooked/notifiers/{id}"))
        .await;
    assert_eq!(status, 404, "{body}");

    let (_, events) = admin.get("/v1/apps/hooked/events").await;
    let types: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "delete_notifier",
            "edit_notifier",
            "new_notifier",
            "new_app"
        ]
    );
    assert_eq!(events["events"][0]["type_data"]["notifier_name"], "renamed");
}

#[tokio::test]
async fn bad_notifier_input_is_a_422_or_404_and_stores_nothing() {
    let server = Server::start_with(Options {
        allow_private_sources: Some(false),
        ..Options::default()
    });
    let admin = server.admin();
    server.create_app(&admin, "strict").await;
    let url = "https://hooks.example.com/x";
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"notifier": {"active": "yes", "platform_id": "1", "type_data": {"webhook_url": url}}}),
            "active",
        ),
        (
            json!({"notifier": {"selected_event_ids": "11", "platform_id": "1", "type_data": {"webhook_url": url}}}),
            "selected_event_ids",
        ),
        (
            json!({"notifier": {"platform_id": "99", "type_data": {"webhook_url": url}}}),
            "platform_id",
        ),
        (
            json!({"notifier": {"type_data": {"webhook_url": url}}}),
            "platform_id",
        ),
        (
            json!({"notifier": {"platform_id": "1", "selected_event_ids": ["deployment"], "type_data": {"webhook_url": url}}}),
            "selected_event_ids",
        ),
        (json!({"notifier": {"platform_id": "1"}}), "webhook_url"),
        (
            json!({"notifier": {"platform_id": "1", "type_data": {"webhook_url": "ftp://x.example/y"}}}),
            "webhook_url",
        ),
        (
            json!({"notifier": {"platform_id": "1", "type_data": {"webhook_url": "not a url"}}}),
            "webhook_url",
        ),
        (
            json!({"notifier": {"platform_id": "1", "type_data": {"webhook_url": "http://127.0.0.1:9/x"}}}),
            "webhook_url",
        ),
        (
            json!({"notifier": {"platform_id": "1", "type_data": {"webhook_url": "http://169.254.169.254/x"}}}),
            "webhook_url",
        ),
        (
            json!({"notifier": {"platform_id": "1", "type_data": {"webhook_url": url, "secret": "short"}}}),
            "secret",
        ),
        (
            json!({"notifier": {"platform_id": "1", "type_data": {"webhook_url": url, "secret": 5}}}),
            "secret",
        ),
        (json!({}), "notifier"),
    ];
    for (body, field) in cases {
        let (status, answer) = admin.post("/v1/apps/strict/notifiers", body.clone()).await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert!(answer["errors"][field].is_array(), "{body} → {answer}");
    }
    let (status, answer) = admin.post_raw("/v1/apps/strict/notifiers", "{").await;
    assert_eq!(status, 400, "{answer}");

    let (status, created) = admin
        .post("/v1/apps/strict/notifiers", cli_body(url, &[], true))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["notifier"]["id"].as_str().expect("id").to_string();
    let path = format!("/v1/apps/strict/notifiers/{id}");
    let (status, answer) = Client::send_json(
        &admin,
        reqwest::Method::PATCH,
        &path,
        json!({"notifier": {"selected_event_ids": ["nope"], "type_data": {"webhook_url": "http://[::1]/"}}}),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["errors"]["selected_event_ids"].is_array(),
        "{answer}"
    );
    assert!(answer["errors"]["webhook_url"].is_array(), "{answer}");
    let (_, shown) = admin.get(&path).await;
    assert_eq!(
        shown["notifier"], created["notifier"],
        "a refused update changed nothing"
    );

    // Another user's app, and unknown notifier ids, are 404s.
    let stranger = server.client(&server.create_user("stranger").await);
    for (method, p) in [
        (
            reqwest::Method::GET,
            "/v1/apps/strict/notifiers".to_string(),
        ),
        (reqwest::Method::GET, path.clone()),
        (reqwest::Method::DELETE, path.clone()),
        (reqwest::Method::GET, format!("{path}/deliveries")),
    ] {
        let (status, body) = Client::send_json(&stranger, method, &p, json!({})).await;
        assert_eq!(
            (status, body["resource"].clone()),
            (404, json!("app")),
            "{p}"
        );
    }
    let (status, body) = stranger
        .post("/v1/apps/strict/notifiers", cli_body(url, &[], true))
        .await;
    assert_eq!((status, body["resource"].clone()), (404, json!("app")));
    for unknown in ["not-an-id", "0190a7e2-0000-7000-8000-000000000000"] {
        let (status, body) = admin
            .get(&format!("/v1/apps/strict/notifiers/{unknown}"))
            .await;
        assert_eq!((status, body["resource"].clone()), (404, json!("notifier")));
    }
    let (_, list) = admin.get("/v1/apps/strict/notifiers").await;
    assert_eq!(
        list["notifiers"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
}

#[tokio::test]
async fn a_failing_webhook_is_retried_with_backoff_signed_and_with_one_delivery_id() {
    let receiver = Receiver::start(&[500, 503]).await;
    let server = Server::start_with(fast_retries());
    let admin = server.admin();
    server.create_app(&admin, "retried").await;
    let deployment_type = event_type_id(&admin, "deployment").await;
    let (status, created) = admin
        .post(
            "/v1/apps/retried/notifiers",
            cli_body(&receiver.url, &[&deployment_type], false),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let notifier = created["notifier"]["id"].as_str().expect("id").to_string();
    let secret = created["notifier"]["type_data"]["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let deployment = deploy_once(&server, "retried").await;

    let got = eventually(WAIT, || {
        let r = receiver.received();
        async move { (r.len() >= 3).then_some(r) }
    })
    .await;
    let delivery_id = got[0].header("x-deployd-delivery");
    assert!(!delivery_id.is_empty());
    for (n, request) in got.iter().enumerate() {
        assert!(signed_by(&secret, request), "attempt {n} badly signed");
        assert_eq!(request.header("x-deployd-delivery"), delivery_id);
        assert_eq!(request.header("x-deployd-event"), "deployment");
        assert_eq!(request.header("x-deployd-attempt"), (n + 1).to_string());
        assert_eq!(request.header("content-type"), "application/json");
    }
    let event = got[2].json();
    assert_eq!(event["type"], "deployment");
    assert_eq!(event["app_name"], "retried");
    assert_eq!(event["type_data"]["deployment_id"], deployment);
    assert_eq!(event["type_data"]["status"], "success");
    assert_eq!(event["type_data"]["git_ref"], "v1");
    assert_eq!(event["type_data"]["pusher"], "admin");
    assert!(event["type_data"]["duration"].is_i64(), "{event}");
    assert!(event["user"]["username"] == "admin", "{event}");
    // The server waited at least the schedule's lower bound (half the nominal delay, the
    // jitter's floor) between attempts: 300 ms, then 600 ms, nominal.
    assert!(got[1].at_ms - got[0].at_ms >= FIRST_RETRY_MS / 2);
    assert!(got[2].at_ms - got[1].at_ms >= FIRST_RETRY_MS);

    let attempts = eventually(WAIT, || {
        let admin = admin.clone();
        let notifier = notifier.clone();
        async move {
            let d = deliveries(&admin, "retried", &notifier).await;
            (d.len() == 3).then_some(d)
        }
    })
    .await;
    // Newest first: delivered, then the two retried failures with their next retry times.
    assert_eq!(attempts[0]["status"], "delivered");
    assert_eq!(attempts[0]["status_code"], 200);
    assert!(attempts[0]["next_retry_at"].is_null());
    for (attempt, code, nominal) in [
        (&attempts[1], 503, 2 * FIRST_RETRY_MS),
        (&attempts[2], 500, FIRST_RETRY_MS),
    ] {
        assert_eq!(attempt["status"], "retrying", "{attempt}");
        assert_eq!(attempt["status_code"], code);
        assert_eq!(attempt["delivery_id"], delivery_id.as_str());
        assert!(attempt["duration_ms"].is_u64());
        let wait = attempt["next_retry_at_unix_ms"].as_u64().expect("next")
            - attempt["at_unix_ms"].as_u64().expect("at");
        assert!(
            (nominal / 2..=nominal).contains(&wait),
            "{wait} ms for {attempt}"
        );
    }

    // Delivered means never sent again: the next event comes with a new id, and the first
    // one was not resent before it (the outbox is read oldest first).
    deploy_once(&server, "retried").await;
    let got = eventually(WAIT, || {
        let r = receiver.received();
        async move { (r.len() >= 4).then_some(r) }
    })
    .await;
    assert_ne!(got[3].header("x-deployd-delivery"), delivery_id);
    assert_eq!(got.len(), 4);
}

#[tokio::test]
async fn a_4xx_is_final_but_408_and_429_are_retried() {
    let receiver = Receiver::start(&[404]).await;
    let server = Server::start_with(fast_retries());
    let admin = server.admin();
    server.create_app(&admin, "final").await;
    let (status, created) = admin
        .post(
            "/v1/apps/final/notifiers",
            cli_body(&receiver.url, &[], true),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["notifier"]["id"].as_str().expect("id").to_string();
    let path = format!("/v1/apps/final/notifiers/{id}");
    // Each edit is an `edit_notifier` event, sent to the notifier itself (all events).
    let edit = |name: &'static str| {
        let admin = admin.clone();
        let path = path.clone();
        async move {
            let (status, body) = Client::send_json(
                &admin,
                reqwest::Method::PATCH,
                &path,
                json!({"notifier": {"name": name}}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    edit("first").await;
    let first = eventually(WAIT, || {
        let admin = admin.clone();
        let id = id.clone();
        async move {
            let d = deliveries(&admin, "final", &id).await;
            (!d.is_empty()).then_some(d)
        }
    })
    .await;
    assert_eq!(first[0]["status"], "failed");
    assert_eq!(first[0]["status_code"], 404);
    assert!(first[0]["next_retry_at"].is_null());

    receiver.then_answer(&[429, 408]);
    edit("second").await;
    let got = eventually(WAIT, || {
        let r = receiver.received();
        async move { (r.len() >= 4).then_some(r) }
    })
    .await;
    let ids: Vec<String> = got.iter().map(|r| r.header("x-deployd-delivery")).collect();
    assert_eq!(
        ids.iter().filter(|i| **i == ids[0]).count(),
        1,
        "404 not retried: {ids:?}"
    );
    assert!(
        ids[1..].iter().all(|i| *i == ids[1]),
        "429 and 408 retried: {ids:?}"
    );
    assert_eq!(got[3].json()["type_data"]["notifier_name"], "second");
}

#[tokio::test]
async fn a_delivery_survives_a_kill_9_between_attempts_with_the_same_delivery_id() {
    let receiver = Receiver::start(&[500]).await;
    // A long first retry delay: the kill comes between the first attempt and the second.
    let mut options = fast_retries();
    options.config_toml =
        "[notifications]\nfirst_retry_delay_ms = 2000\npoll_interval_ms = 20\n".into();
    let server = Server::start_with(options);
    let admin = server.admin();
    server.create_app(&admin, "durable").await;
    let deployment_type = event_type_id(&admin, "deployment").await;
    let (status, created) = admin
        .post(
            "/v1/apps/durable/notifiers",
            cli_body(&receiver.url, &[&deployment_type], false),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let notifier = created["notifier"]["id"].as_str().expect("id").to_string();
    let secret = created["notifier"]["type_data"]["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    deploy_once(&server, "durable").await;
    eventually(WAIT, || {
        let admin = admin.clone();
        let notifier = notifier.clone();
        async move {
            let d = deliveries(&admin, "durable", &notifier).await;
            d.first()
                .is_some_and(|d| d["status"] == "retrying")
                .then_some(())
        }
    })
    .await;

    let server = server.crash_and_restart();
    let admin = server.admin();
    let got = eventually(WAIT, || {
        let r = receiver.received();
        async move { (r.len() >= 2).then_some(r) }
    })
    .await;
    let delivery_id = got[0].header("x-deployd-delivery");
    assert!(got
        .iter()
        .all(|r| r.header("x-deployd-delivery") == delivery_id));
    assert!(got.iter().all(|r| signed_by(&secret, r)));
    eventually(WAIT, || {
        let admin = admin.clone();
        let notifier = notifier.clone();
        async move {
            let d = deliveries(&admin, "durable", &notifier).await;
            d.first()
                .is_some_and(|d| d["status"] == "delivered")
                .then_some(())
        }
    })
    .await;

    // Once delivered, a crash never makes it resend: the next event's delivery arrives (new
    // id) and the first id was not seen again.
    let server = server.crash_and_restart();
    let before = receiver.received().len();
    deploy_once(&server, "durable").await;
    let got = eventually(WAIT, || {
        let r = receiver.received();
        async move { (r.len() > before).then_some(r) }
    })
    .await;
    assert_ne!(got[before].header("x-deployd-delivery"), delivery_id);
    assert_eq!(
        got.len(),
        before + 1,
        "{:?}",
        got.iter()
            .map(|r| r.header("x-deployd-delivery"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_hanging_webhook_holds_back_neither_ingest_nor_another_apps_deliveries() {
    // Accepts connections and never answers (kept open for the whole test).
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hanging_url = format!("http://{}/hook", hanging.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    let receiver = Receiver::start(&[]).await;
    let mut options = fast_retries();
    // No time limit on an attempt: the stuck one stays stuck for the whole test.
    options.config_toml.push_str("request_timeout_ms = 0\n");
    let server = Server::start_with(options);
    let admin = server.admin();
    server.create_app(&admin, "stuck").await;
    server.create_app(&admin, "fine").await;
    let mut ids = Vec::new();
    for (app, url) in [("stuck", &hanging_url), ("fine", &receiver.url)] {
        let (status, created) = admin
            .post(
                &format!("/v1/apps/{app}/notifiers"),
                cli_body(url, &[], true),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["notifier"]["id"].as_str().expect("id").to_string());
    }
    // Two events for the stuck notifier: one in flight, one waiting behind it.
    for name in ["one", "two"] {
        let (status, body) = Client::send_json(
            &admin,
            reqwest::Method::PATCH,
            &format!("/v1/apps/stuck/notifiers/{}", ids[0]),
            json!({"notifier": {"name": name}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // Ingest on the stuck app goes on.
    let mut pusher = push::start(&server.url, "stuck", &server.admin_token, "v1").await;
    assert_eq!(pusher.logs(&["a", "b"]).await, 2);
    pusher.finish("success").await;
    // And the other app's notifier gets its event.
    let (status, body) = Client::send_json(
        &admin,
        reqwest::Method::PATCH,
        &format!("/v1/apps/fine/notifiers/{}", ids[1]),
        json!({"notifier": {"name": "renamed"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = eventually(WAIT, || {
        let r = receiver.received();
        async move { (!r.is_empty()).then_some(r) }
    })
    .await;
    assert_eq!(got[0].json()["app_name"], "fine");
    assert!(deliveries(&admin, "stuck", &ids[0]).await.is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_retried_and_a_name_resolving_to_loopback_is_refused_for_good() {
    // A port nothing listens on any more: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_url = format!("http://{}/hook", closed.local_addr().expect("addr"));
    drop(closed);
    let server = Server::start_with(fast_retries());
    let admin = server.admin();
    server.create_app(&admin, "refused").await;
    let (status, created) = admin
        .post(
            "/v1/apps/refused/notifiers",
            cli_body(&closed_url, &[], true),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["notifier"]["id"].as_str().expect("id").to_string();
    let path = format!("/v1/apps/refused/notifiers/{id}");
    let (status, _) = Client::send_json(
        &admin,
        reqwest::Method::PATCH,
        &path,
        json!({"notifier": {"name": "x"}}),
    )
    .await;
    assert_eq!(status, 200);
    let attempts = eventually(WAIT, || {
        let admin = admin.clone();
        let id = id.clone();
        async move {
            let d = deliveries(&admin, "refused", &id).await;
            (d.len() >= 2).then_some(d)
        }
    })
    .await;
    for attempt in &attempts {
        assert_eq!(attempt["status"], "retrying", "{attempt}");
        assert!(attempt["status_code"].is_null(), "{attempt}");
        assert!(attempt["error"].is_string(), "{attempt}");
    }

    // Without private addresses allowed, `localhost` passes creation (a name) and is refused
    // when resolved at the attempt: final, and nothing reaches the receiver.
    let receiver = Receiver::start(&[]).await;
    let strict = Server::start_with(Options {
        allow_private_sources: Some(false),
        ..fast_retries()
    });
    let admin = strict.admin();
    strict.create_app(&admin, "private").await;
    let url = receiver.url.replace("127.0.0.1", "localhost");
    let (status, created) = admin
        .post("/v1/apps/private/notifiers", cli_body(&url, &[], true))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["notifier"]["id"].as_str().expect("id").to_string();
    let path = format!("/v1/apps/private/notifiers/{id}");
    let (status, _) = Client::send_json(
        &admin,
        reqwest::Method::PATCH,
        &path,
        json!({"notifier": {"name": "x"}}),
    )
    .await;
    assert_eq!(status, 200);
    let attempts = eventually(WAIT, || {
        let admin = admin.clone();
        let id = id.clone();
        async move {
            let d = deliveries(&admin, "private", &id).await;
            (!d.is_empty()).then_some(d)
        }
    })
    .await;
    assert_eq!(attempts[0]["status"], "failed");
    let error = attempts[0]["error"].as_str().expect("error");
    assert!(error.contains("non-public"), "{error}");
    // Not retried: the next event's attempt comes, and the first delivery has no second one.
    let (status, _) = Client::send_json(
        &admin,
        reqwest::Method::PATCH,
        &path,
        json!({"notifier": {"name": "y"}}),
    )
    .await;
    assert_eq!(status, 200);
    let attempts = eventually(WAIT, || {
        let admin = admin.clone();
        let id = id.clone();
        async move {
            let d = deliveries(&admin, "private", &id).await;
            (d.len() >= 2).then_some(d)
        }
    })
    .await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_ne!(attempts[0]["delivery_id"], attempts[1]["delivery_id"]);
    assert!(attempts
        .iter()
        .all(|a| a["status"] == "failed" && a["attempt"] == 1));
    assert!(receiver.received().is_empty());
}
