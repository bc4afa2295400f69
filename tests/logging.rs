//! deployd's own log, read from the real binary's stderr (a file, as under a service manager):
//! no colour codes, an access line per request without credentials, deployment start and end
//! lines, and `--log-format json`.
mod common;
#[path = "common/deploy.rs"]
mod deploy;

use std::time::Duration;

use serde_json::Value;

use common::{eventually, Options, Server, ADMIN_TOKEN};
use deploy::deploy;

/// Waits until the server's log has a line containing every one of `needles`; returns it.
async fn log_line(server: &Server, needles: &[&str]) -> String {
    eventually(Duration::from_secs(10), || async {
        server
            .log()
            .lines()
            .find(|line| needles.iter().all(|n| line.contains(n)))
            .map(str::to_string)
    })
    .await
}

/// Regression: deployd's stderr log carried terminal colour codes when written to a file.
#[tokio::test]
async fn the_log_written_to_a_file_has_no_escape_byte() {
    let mut server = Server::start();
    let (status, _) = server.admin().get("/v1/apps").await;
    assert_eq!(status, 200);
    log_line(&server, &["listApps"]).await;
    server.stop();
    let log = std::fs::read(&server.log_path).expect("log");
    assert!(!log.is_empty());
    assert!(
        !log.contains(&0x1b),
        "ESC in the log:\n{}",
        String::from_utf8_lossy(&log)
    );
}

#[tokio::test]
async fn an_access_line_names_method_operation_status_duration_and_caller_but_no_credential() {
    let server = Server::start();
    let admin = server.admin();
    let (_, me) = admin.get("/v1/users/self").await;
    let admin_id = me["user"]["id"].as_str().expect("id").to_string();
    let (status, source) = admin.post("/v1/sources", serde_json::json!({})).await;
    assert_eq!(status, 201, "{source}");
    let upload = source["source"]["upload_url"].as_str().expect("upload url");
    let signature = upload.split("signature=").nth(1).expect("a signature");
    let path = upload.trim_start_matches(&server.url).to_string();
    let (status, _) = server.anonymous().post_raw(&path, "x").await;
    // POST on an upload URL is not a route (PUT is): answered, and logged all the same.
    assert_eq!(status, 405);
    let line = log_line(&server, &["createSource", "status=201"]).await;
    assert!(line.contains("method=POST"), "{line}");
    assert!(line.contains("duration_ms="), "{line}");
    assert!(line.contains(&format!("caller=\"{admin_id}\"")), "{line}");
    log_line(&server, &["status=405"]).await;
    let log = server.log();
    assert!(
        !log.contains(ADMIN_TOKEN),
        "the admin token was logged:\n{log}"
    );
    assert!(
        !log.contains(signature),
        "a URL signature was logged:\n{log}"
    );
}

#[tokio::test]
async fn a_deployment_logs_its_start_and_end_with_id_app_status_and_duration() {
    let server = Server::start();
    let admin = server.admin();
    let app = server.create_app(&admin, "logged-app").await;
    let app_id = app["id"].as_str().expect("app id").to_string();
    let id = deploy(
        &server,
        "logged-app",
        &server.admin_token,
        &["x"],
        "build-error",
    )
    .await;
    let started = log_line(&server, &["deployment started", &id]).await;
    assert!(started.contains(&app_id), "{started}");
    assert!(started.contains("status=building"), "{started}");
    let finished = log_line(&server, &["deployment finished", &id]).await;
    assert!(finished.contains(&app_id), "{finished}");
    assert!(finished.contains("status=build-error"), "{finished}");
    assert!(finished.contains("duration_secs="), "{finished}");
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let mut server = Server::start_with(Options {
        env: vec![("DEPLOYD_LOG_FORMAT".into(), "json".into())],
        ..Options::default()
    });
    let (status, _) = server.admin().get("/v1/apps").await;
    assert_eq!(status, 200);
    log_line(&server, &["listApps"]).await;
    server.stop();
    let log = server.log();
    let mut access = None;
    for line in log.lines() {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"));
        assert!(
            value["timestamp"].is_string() && value["level"].is_string(),
            "{line}"
        );
        if value["fields"]["operation"] == "listApps" {
            access = Some(value);
        }
    }
    let access = access.expect("the access line");
    assert_eq!(access["fields"]["status"], 200, "{access}");
    assert_eq!(access["fields"]["method"], "GET", "{access}");
    assert_eq!(access["target"], "deployd::access", "{access}");
}
