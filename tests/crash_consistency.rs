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

/// What one pusher of the crash loop was told: its deployment, the lines acknowledged (in
/// order), the last status acknowledged, and a status sent but never answered.
#[derive(Default, Clone)]
struct Acknowledged {
    app: String,
    id: String,
    lines: Vec<String>,
    status: Option<String>,
    unanswered_status: Option<String>,
}

/// Pushes batches and status changes until the server dies, recording what was acknowledged.
/// Every line is unique (cycle, pusher, deployment, batch, line), so "exactly once" is a count.
async fn push_until_killed(
    url: String,
    app: String,
    tag: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<Acknowledged>>>,
    progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    for round in 0u64.. {
        let Ok(mut socket) = push::connect(&url, &app, common::ADMIN_TOKEN).await else {
            return;
        };
        let start = json!({"type": "start", "git_ref": format!("{tag}-{round}")});
        if socket
            .send(Message::Text(start.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        let Some(frame) = push::next_json(&mut socket).await else {
            return;
        };
        let Some(id) = frame["deployment"]["id"].as_str() else {
            return;
        };
        let slot = {
            let mut log = log.lock().expect("log");
            log.push(Acknowledged {
                app: app.clone(),
                id: id.to_string(),
                ..Acknowledged::default()
            });
            log.len() - 1
        };
        // Statuses at fixed batch counts, so some deployments end and others are cut mid-way.
        let plan = [(5, "pushing"), (8, "starting"), (12, "success")];
        for batch in 1..=12u64 {
            let lines: Vec<String> = (0..3)
                .map(|i| format!("{tag}-{round}-{batch}-{i}"))
                .collect();
            let frame = json!({"type": "logs", "batch": batch, "lines": lines});
            if socket
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
            match push::next_json(&mut socket).await {
                Some(ack) if ack["type"] == "ack" => {
                    log.lock().expect("log")[slot].lines.extend(lines);
                    progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                _ => return,
            }
            if let Some((_, status)) = plan.iter().find(|(at, _)| *at == batch) {
                log.lock().expect("log")[slot].unanswered_status = Some(status.to_string());
                let frame = json!({"type": "status", "status": status});
                if socket
                    .send(Message::Text(frame.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
                match push::next_json(&mut socket).await {
                    Some(answer) if answer["status"] == *status => {
                        let mut log = log.lock().expect("log");
                        log[slot].status = Some(status.to_string());
                        log[slot].unanswered_status = None;
                    }
                    _ => return,
                }
            }
        }
    }
}

/// `DEPLOYD_CRASH_CYCLES` (default a few, for CI).
fn crash_cycles() -> u64 {
    std::env::var("DEPLOYD_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_pushes_and_status_changes_keeps_every_acknowledged_line_and_status_exactly_once(
) {
    const PUSHERS: usize = 4;
    let mut server = Server::start();
    let admin = server.admin();
    for p in 0..PUSHERS {
        server.create_app(&admin, &format!("crash-loop-{p}")).await;
    }
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Acknowledged>::new()));
    for cycle in 0..crash_cycles() {
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks: Vec<_> = (0..PUSHERS)
            .map(|p| {
                tokio::spawn(push_until_killed(
                    server.url.clone(),
                    format!("crash-loop-{p}"),
                    format!("c{cycle}p{p}"),
                    log.clone(),
                    progress.clone(),
                ))
            })
            .collect();
        // Kill once enough was acknowledged that the kill lands mid-stream (a count, not a
        // time: the pace of the machine does not matter).
        let wanted = 20 + 7 * cycle;
        while progress.load(std::sync::atomic::Ordering::SeqCst) < wanted {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        server.kill();
        for task in tasks {
            let _ = task.await;
        }
        server = server.start_again();
        let acknowledged = log.lock().expect("log").clone();
        verify(&server, &acknowledged, cycle).await;
    }
}

/// Every acknowledged line is stored exactly once, in order, before anything unacknowledged;
/// an acknowledged terminal status is kept; every deployment has ended.
async fn verify(server: &Server, acknowledged: &[Acknowledged], cycle: u64) {
    let admin = server.admin();
    for ack in acknowledged {
        let d = get_deployment(&admin, &ack.app, &ack.id).await;
        let status = d["status"].as_str().expect("status").to_string();
        let terminal = [
            "success",
            "aborted",
            "timeout-error",
            "build-error",
            "crashed",
        ];
        assert!(terminal.contains(&status.as_str()), "cycle {cycle}: {d}");
        match (&ack.status, &ack.unanswered_status) {
            (Some(acked), None) if acked == "success" => {
                assert_eq!(&status, acked, "cycle {cycle}: an acknowledged end is kept")
            }
            (_, Some(sent)) if sent == "success" => {
                assert!(
                    status == "success" || status == "aborted" || status == "timeout-error",
                    "cycle {cycle}: {status}"
                )
            }
            _ => assert!(
                status == "aborted" || status == "timeout-error",
                "cycle {cycle}: a cut session ends as lost, not {status}"
            ),
        }
        if ack.lines.is_empty() {
            continue;
        }
        let (code, _, text) = admin
            .get_text(&format!(
                "/v1/apps/{}/deployments/{}/output",
                ack.app, ack.id
            ))
            .await;
        assert_eq!(code, 200, "cycle {cycle}: {text}");
        let stored: Vec<&str> = text.lines().collect();
        assert!(
            stored.len() >= ack.lines.len(),
            "cycle {cycle}: {} stored, {} acknowledged",
            stored.len(),
            ack.lines.len()
        );
        assert_eq!(
            stored[..ack.lines.len()],
            ack.lines.iter().map(String::as_str).collect::<Vec<_>>()[..],
            "cycle {cycle}: the acknowledged lines come first, in order"
        );
        for line in &ack.lines {
            let count = stored.iter().filter(|s| **s == line.as_str()).count();
            assert_eq!(count, 1, "cycle {cycle}: {line:?} stored {count} times");
        }
    }
}
