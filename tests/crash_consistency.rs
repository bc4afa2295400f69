//! Restarts of the real binary over the same data directory: nothing stored is lost, sessions
//! left unfinished by a crash are ended with a line saying why, the JWT secret survives.
mod common;
#[path = "common/deploy.rs"]
mod deploy;

use serde_json::{json, Value};

use common::{push, Server};
use deploy::{deploy, get_deployment};

async fn output(server: &Server, app: &str, id: &str) -> String {
    let (status, _, text) = server
        .admin()
        .get_text(&format!("/v1/apps/{app}/deployments/{id}/output"))
        .await;
    assert_eq!(status, 200, "{text}");
    text
}

/// Everything the restart test compares before and after, as the API answers it.
async fn snapshot(keeper: &common::Client, admin: &common::Client) -> Vec<Value> {
    vec![
        keeper.get("/v1/users/self").await.1,
        keeper.get("/v1/tokens").await.1,
        keeper.get("/v1/apps").await.1,
        keeper.get("/v1/apps/kept/deployments").await.1,
        keeper.get("/v1/apps/kept/collaborators").await.1,
        admin.get("/v1/apps/kept").await.1,
    ]
}

#[tokio::test]
async fn a_graceful_restart_keeps_users_tokens_apps_deployments_output_and_jwts() {
    let server = Server::start();
    let admin = server.admin();
    let token = server.create_user("keeper").await;
    let keeper = server.client(&token);
    let (_, body) = keeper
        .post("/v1/tokens", json!({"token": {"name": "second"}}))
        .await;
    let second = body["token"]["token"].as_str().expect("token").to_string();
    let (_, body) = keeper.post("/v1/tokens/exchange", json!({})).await;
    let jwt = body["token"].as_str().expect("jwt").to_string();
    let app = server.create_app(&keeper, "kept").await;
    let (status, _) = keeper
        .post(
            "/v1/apps/kept/collaborators",
            json!({"collaborator": {"email": "admin@localhost"}}),
        )
        .await;
    assert_eq!(status, 201);
    let id = deploy(&server, "kept", &token, &["built", "started"], "success").await;
    let before: Vec<Value> = snapshot(&keeper, &admin).await;
    let text_before = output(&server, "kept", &id).await;

    let mut server = server.restart();
    let admin = server.admin();
    let keeper = server.client(&token);
    let after: Vec<Value> = snapshot(&keeper, &admin).await;
    // The stream link follows the new port; everything else is identical.
    let port_free = |values: &[Value], url: &str| {
        values
            .iter()
            .map(|v| {
                v.to_string()
                    .replace(url, "SERVER")
                    .replace(&url[7..], "SERVER")
            })
            .collect::<Vec<_>>()
    };
    let old_url = before[5]["app"]["links"]["deployments_stream"]
        .as_str()
        .expect("link")
        .trim_start_matches("ws://")
        .trim_end_matches("/apps/kept")
        .to_string();
    assert_eq!(
        port_free(&before, &format!("http://{old_url}")),
        port_free(&after, &server.url),
    );
    assert_eq!(after[2]["apps"][0]["id"], app["id"]);
    assert_eq!(output(&server, "kept", &id).await, text_before);
    assert_eq!(text_before, "built\nstarted\n");
    for header in [
        format!("Bearer {jwt}"),
        format!("Basic {}", common::b64(&format!(":{second}"))),
    ] {
        let (status, body) = server
            .anonymous()
            .with_auth(&header)
            .get("/v1/users/self")
            .await;
        assert_eq!(status, 200, "{header}: {body}");
    }
    // Deploying still works after a restart.
    deploy(&server, "kept", &token, &["again"], "success").await;
    assert_eq!(server.stop(), Some(0), "graceful exit code");
}

#[tokio::test]
async fn a_crash_ends_unfinished_deployments_and_keeps_every_acknowledged_line() {
    let server = Server::start();
    let admin = server.admin();
    for app in ["crash-building", "crash-pushing", "crash-starting"] {
        server.create_app(&admin, app).await;
    }
    let mut building = push::start(&server.url, "crash-building", &server.admin_token, "b").await;
    let mut acked = Vec::new();
    for batch in 0..20 {
        let lines: Vec<String> = (0..50).map(|i| format!("line {batch}-{i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        building.logs(&refs).await;
        acked.extend(lines);
    }
    let mut pushing = push::start(&server.url, "crash-pushing", &server.admin_token, "p").await;
    pushing.logs(&["built"]).await;
    pushing.status("pushing").await;
    let mut starting = push::start(&server.url, "crash-starting", &server.admin_token, "s").await;
    starting.logs(&["built"]).await;
    starting.status("pushing").await;
    starting.status("starting").await;
    // A queued one behind the building deployment.
    let queued = push::start(&server.url, "crash-building", &server.admin_token, "q").await;
    assert_eq!(queued.deployment["status"], "queued");
    let ids = [
        ("crash-building", building.id(), "aborted"),
        ("crash-pushing", pushing.id(), "aborted"),
        ("crash-starting", starting.id(), "timeout-error"),
    ];
    let queued_id = queued.id();

    let server = server.crash_and_restart();
    let admin = server.admin();
    for (app, id, expected) in &ids {
        let d = get_deployment(&admin, app, id).await;
        assert_eq!(d["status"], *expected, "{app}: {d}");
        assert!(d["finished_at"].is_string(), "{d}");
        let text = output(&server, app, id).await;
        let last = text.lines().last().expect("a line");
        assert!(
            last.contains("restart"),
            "{app}: the last line says why: {last:?}"
        );
    }
    let text = output(&server, "crash-building", &ids[0].1).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        acked.len() + 1,
        "every acknowledged line, then why"
    );
    assert_eq!(
        lines[..acked.len()],
        acked.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    let d = get_deployment(&admin, "crash-building", &queued_id).await;
    assert_eq!(d["status"], "aborted", "the queued pusher is gone too: {d}");
    // The apps take new deployments.
    for app in ["crash-building", "crash-pushing", "crash-starting"] {
        deploy(&server, app, &server.admin_token, &["after"], "success").await;
    }
    drop((building, pushing, starting, queued));
}

#[tokio::test]
async fn a_graceful_shutdown_aborts_a_live_pusher_session() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "shutdown-app").await;
    let mut pusher = push::start(&server.url, "shutdown-app", &server.admin_token, "r").await;
    pusher.logs(&["before"]).await;
    let id = pusher.id();
    let server = server.restart();
    let d = get_deployment(&server.admin(), "shutdown-app", &id).await;
    assert_eq!(d["status"], "aborted", "{d}");
    let text = output(&server, "shutdown-app", &id).await;
    assert!(
        text.starts_with("before\n") && text.lines().count() == 2,
        "{text}"
    );
    drop(pusher);
}
