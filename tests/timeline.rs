//! The events timeline through the real binary: what is recorded, in which order, for whom,
//! and how it is paginated.

mod common;

use common::{push, Client, Server};
use serde_json::{json, Value};

async fn types(client: &Client, path: &str) -> Vec<String> {
    let (status, body) = client.get(path).await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_string())
        .collect()
}

#[tokio::test]
async fn the_app_timeline_records_app_collaborator_notifier_and_deployment_events_newest_first() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "story").await;
    let bob = server.client(&server.create_user("bob").await);
    let (status, body) = admin
        .post(
            "/v1/apps/story/collaborators",
            json!({"collaborator": {"email": "bob@example.com"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin
        .post(
            "/v1/apps/story/notifiers",
            json!({"notifier": {"platform_id": "1", "send_all_events": true,
                   "type_data": {"webhook_url": "https://hooks.example.com/x"}}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut pusher = push::start(&server.url, "story", &server.admin_token, "abc123").await;
    pusher.finish("crashed-error").await;
    let deployment = pusher.id();
    // Bob leaves by himself: the event names him as the one who did it.
    let (_, collaborators) = admin.get("/v1/apps/story/collaborators").await;
    let collaboration = collaborators["collaborators"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, body) = bob
        .delete(&format!("/v1/apps/story/collaborators/{collaboration}"))
        .await;
    assert_eq!(status, 204, "{body}");

    let (status, body) = admin.get("/v1/apps/story/events").await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().expect("events");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        kinds,
        [
            "delete_collaborator",
            "deployment",
            "new_notifier",
            "new_collaborator",
            "new_app"
        ]
    );
    for event in events {
        for key in ["id", "app_id", "created_at"] {
            assert!(event[key].is_string(), "{key}: {event}");
        }
        assert_eq!(event["app_name"], "story");
        assert!(event["user"]["username"].is_string(), "{event}");
        assert!(event["type_data"].is_object(), "{event}");
    }
    let left = &events[0];
    assert_eq!(left["user"]["username"], "bob");
    assert_eq!(
        left["type_data"]["collaborator"]["email"],
        "bob@example.com"
    );
    let added = &events[3];
    assert_eq!(added["user"]["username"], "admin");
    assert_eq!(added["type_data"]["collaborator"]["username"], "bob");
    let deployed = &events[1]["type_data"];
    assert_eq!(deployed["deployment_id"], deployment.as_str());
    assert_eq!(deployed["deployment_uuid"], deployment.as_str());
    assert_eq!(deployed["pusher"], "admin");
    assert_eq!(deployed["git_ref"], "abc123");
    assert_eq!(deployed["status"], "crashed-error");
    assert!(deployed["duration"].is_i64(), "{deployed}");
    assert!(
        events[4]["type_data"].get("git_source").is_some(),
        "{}",
        events[4]
    );
    assert_eq!(
        body["meta"]["pagination"],
        json!({"current_page": 1, "prev_page": null, "next_page": null,
               "total_pages": 1, "total_count": 5})
    );

    // Bob saw what happened while he collaborated, in his own timeline; not the app any more.
    assert_eq!(
        types(&bob, "/v1/events").await,
        ["delete_collaborator", "deployment", "new_notifier"]
    );
    let (status, _) = bob.get("/v1/apps/story/events").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn user_events_outlive_a_deleted_app_and_survive_a_restart() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "short-lived").await;
    server.create_app(&admin, "other").await;
    let (status, _) = admin.delete("/v1/apps/short-lived").await;
    assert_eq!(status, 204);
    let server = server.crash_and_restart();
    let admin = server.admin();
    let (status, body) = admin.get("/v1/events").await;
    assert_eq!(status, 200, "{body}");
    let seen: Vec<(String, String)> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().expect("type").to_string(),
                e["app_name"].as_str().expect("name").to_string(),
            )
        })
        .collect();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        seen,
        pairs(&[
            ("delete_app", "short-lived"),
            ("new_app", "other"),
            ("new_app", "short-lived"),
        ])
    );
    let (status, body) = admin.get("/v1/apps/short-lived/events").await;
    assert_eq!((status, body["resource"].clone()), (404, json!("app")));
    let stranger = server.client(&server.create_user("stranger").await);
    assert!(types(&stranger, "/v1/events").await.is_empty());
}

#[tokio::test]
async fn events_are_paginated_like_deployments_and_bad_pages_are_refused() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "paged").await;
    for name in ["a", "b", "c", "d"] {
        let (status, body) = admin
            .post(
                "/v1/apps/paged/notifiers",
                json!({"notifier": {"name": name, "platform_id": "1",
                       "type_data": {"webhook_url": "https://hooks.example.com/x"}}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = admin.get("/v1/apps/paged/events?page=2&per_page=2").await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<Value> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type_data"]["notifier_name"].clone())
        .collect();
    assert_eq!(names, [json!("b"), json!("a")]);
    assert_eq!(
        body["meta"]["pagination"],
        json!({"current_page": 2, "prev_page": 1, "next_page": 3,
               "total_pages": 3, "total_count": 5})
    );
    let (_, body) = admin.get("/v1/events?page=3&per_page=2").await;
    assert_eq!(body["events"][0]["type"], "new_app");
    for (query, status) in [("page=0", 422), ("per_page=1000", 422), ("page=x", 400)] {
        for path in ["/v1/apps/paged/events", "/v1/events"] {
            let (got, body) = admin.get(&format!("{path}?{query}")).await;
            assert_eq!(got, status, "{path}?{query}: {body}");
        }
    }
    let stranger = server.client(&server.create_user("stranger").await);
    let (status, body) = stranger.get("/v1/apps/paged/events").await;
    assert_eq!((status, body["resource"].clone()), (404, json!("app")));
    let (status, _) = server.anonymous().get("/v1/events").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn renaming_an_app_and_changing_a_collaborators_role_are_on_the_timeline() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "before").await;
    server.create_user("bob").await;
    let (status, added) = admin
        .post(
            "/v1/apps/before/collaborators",
            json!({"collaborator": {"email": "bob@example.com"}}),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let id = added["collaborator"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, body) = admin
        .send_json(
            reqwest::Method::PATCH,
            &format!("/v1/apps/before/collaborators/{id}"),
            json!({"collaborator": {"is_limited": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin
        .post(
            "/v1/apps/before/rename",
            json!({"current_name": "before", "new_name": "after"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = admin.get("/v1/apps/after/events").await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().expect("events");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        &kinds[..2],
        ["rename_app", "change_collaborator_role"],
        "{body}"
    );
    assert_eq!(events[0]["type_data"]["old_name"], "before", "{body}");
    assert_eq!(events[0]["type_data"]["new_name"], "after", "{body}");
    assert_eq!(events[0]["app_name"], "after", "{body}");
    assert_eq!(
        events[1]["type_data"]["collaborator"]["username"], "bob",
        "{body}"
    );
}

#[tokio::test]
async fn a_limited_collaborator_may_not_manage_notifiers_nor_read_their_secret() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "guarded").await;
    let bob = server.client(&server.create_user("bob").await);
    let (status, added) = admin
        .post(
            "/v1/apps/guarded/collaborators",
            json!({"collaborator": {"email": "bob@example.com", "is_limited": true}}),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let (status, created) = admin
        .post(
            "/v1/apps/guarded/notifiers",
            json!({"notifier": {"platform_id": "1", "send_all_events": true,
                   "type_data": {"webhook_url": "https://hooks.example.com/x"}}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let notifier = created["notifier"]["id"].as_str().expect("id").to_string();
    assert!(created["notifier"]["type_data"]["secret"].is_string());

    let (status, shown) = bob
        .get(&format!("/v1/apps/guarded/notifiers/{notifier}"))
        .await;
    assert_eq!(status, 200, "{shown}");
    assert!(
        shown["notifier"]["type_data"]["secret"].is_null(),
        "{shown}"
    );
    let (_, list) = bob.get("/v1/apps/guarded/notifiers").await;
    assert!(
        list["notifiers"][0]["type_data"]["secret"].is_null(),
        "{list}"
    );

    let refusals = [
        bob.post(
            "/v1/apps/guarded/notifiers",
            json!({"notifier": {"platform_id": "1", "send_all_events": true,
                   "type_data": {"webhook_url": "https://hooks.example.com/y"}}}),
        )
        .await,
        bob.send_json(
            reqwest::Method::PATCH,
            &format!("/v1/apps/guarded/notifiers/{notifier}"),
            json!({"notifier": {"name": "mine"}}),
        )
        .await,
        bob.delete(&format!("/v1/apps/guarded/notifiers/{notifier}"))
            .await,
    ];
    for (status, body) in refusals {
        assert_eq!(status, 403, "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (_, list) = admin.get("/v1/apps/guarded/notifiers").await;
    let notifiers = list["notifiers"].as_array().expect("notifiers");
    assert_eq!(notifiers.len(), 1, "{list}");
    assert_ne!(notifiers[0]["name"], "mine", "{list}");
}
