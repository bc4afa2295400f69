//! Damaged log files never keep the real binary from starting: an unfinished deployment whose
//! file is shorter than its index is ended with a line saying what was lost; a finished one
//! keeps its status, gets the damage recorded, and its `/output` is aborted where the damage
//! starts (never a clean, complete response). `deployd check [--repair]` reports and repairs.
mod common;

use std::path::Path;
use std::process::Command;

use futures_util::StreamExt;

use common::{push, wait_finished, Server};

/// Cuts `bytes` off the end of a file.
fn cut_tail(path: &Path, bytes: u64) {
    let len = std::fs::metadata(path).expect("log file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .set_len(len - bytes)
        .expect("cut");
}

/// Runs `deployd check` on a data directory: (exit code, stdout).
fn check(data: &Path, repair: bool) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deployd"));
    command.arg("check").arg("--data").arg(data);
    if repair {
        command.arg("--repair");
    }
    let out = command.output().expect("run deployd check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// GETs a deployment's output: (status, the body received, whether it ended cleanly). A
/// connection closed before the response head counts as status 0, not clean.
async fn raw_output(server: &Server, app: &str, id: &str) -> (u16, String, bool) {
    let sent = server
        .admin()
        .request(
            reqwest::Method::GET,
            &format!("/v1/apps/{app}/deployments/{id}/output"),
        )
        .send()
        .await;
    let Ok(response) = sent else {
        return (0, String::new(), false);
    };
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    let mut clean = true;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(_) => {
                clean = false;
                break;
            }
        }
    }
    (status, String::from_utf8_lossy(&body).into_owned(), clean)
}

/// Regression: an unfinished deployment with a short log file made `serve` exit 1.
#[tokio::test]
async fn a_log_file_shorter_than_its_index_no_longer_keeps_serve_from_starting() {
    let mut server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "done").await;
    server.create_app(&admin, "live").await;
    let mut finished = push::start(&server.url, "done", common::ADMIN_TOKEN, "a").await;
    finished.logs(&["one", "two"]).await;
    finished.logs(&["three"]).await;
    finished.finish("success").await;
    let done = finished.id();
    let mut unfinished = push::start(&server.url, "live", common::ADMIN_TOKEN, "b").await;
    unfinished.logs(&["kept"]).await;
    unfinished.logs(&["lost"]).await;
    let live = unfinished.id();
    server.kill();

    let logs = server.data.join("logs");
    cut_tail(&logs.join(format!("{done}.log")), 3);
    cut_tail(&logs.join(format!("{live}.log")), 3);
    let (code, report) = check(&server.data, false);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains(&done) && report.contains(&live), "{report}");
    assert!(
        report.contains("lines 2-2 of the output were lost"),
        "{report}"
    );

    let server = server.start_again();
    assert_eq!(server.anonymous().get("/readyz").await.0, 200);
    let ended = wait_finished(
        &admin_of(&server),
        "live",
        &live,
        std::time::Duration::from_secs(30),
    )
    .await;
    assert_eq!(ended["status"], "aborted", "{ended}");
    let (code, text, clean) = raw_output(&server, "live", &live).await;
    assert_eq!(code, 200);
    assert!(clean, "the repaired output is complete: {text}");
    assert!(
        text.starts_with("kept\n!     Deployment aborted: "),
        "{text}"
    );
    assert!(text.contains("lines 2-2 of the output were lost"), "{text}");

    // The finished one keeps its status and its intact lines; its output is aborted where the
    // damage starts, never served as a complete response.
    let (code, deployment) = server
        .admin()
        .get(&format!("/v1/apps/done/deployments/{done}"))
        .await;
    assert_eq!(
        (code, &deployment["deployment"]["status"]),
        (200, &serde_json::json!("success")),
        "{deployment}"
    );
    let (code, text, clean) = raw_output(&server, "done", &done).await;
    assert!(code == 200 || code == 0, "{code}");
    assert!(
        !clean,
        "a damaged output must not end like a complete one: {text:?}"
    );
    assert!(
        text.starts_with("one\ntwo\n") || text.is_empty(),
        "{text:?}"
    );
    assert!(!text.contains("three"), "{text:?}");
    assert!(
        server
            .log_containing("damaged log file")
            .contains("damaged log file"),
        "{}",
        server.log()
    );
    let mut server = server;
    server.kill();

    // Serve recorded the finished one's damage; a torn tail is cut by --repair.
    std::fs::OpenOptions::new()
        .append(true)
        .open(logs.join(format!("{live}.log")))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"torn"))
        .expect("tear");
    let (code, report) = check(&server.data, false);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("torn tail of 4 bytes"), "{report}");
    let (code, report) = check(&server.data, true);
    assert_eq!(code, 0, "{report}");
    let (code, report) = check(&server.data, false);
    assert_eq!(code, 0, "{report}");
}

#[tokio::test]
async fn check_exits_2_when_the_data_directory_is_in_use_or_missing() {
    let server = Server::start();
    let (code, _) = check(&server.data, false);
    assert_eq!(code, 2);
    let (code, _) = check(&server.data.join("missing"), false);
    assert_eq!(code, 2);
}

fn admin_of(server: &Server) -> common::Client {
    server.admin()
}

/// Regression: a finished deployment's `/output` dropped the whole chunk holding the damaged
/// segment, so the intact lines before the damage were never served (the body was aborted
/// before its first byte). Regression too: when the read after the intact lines failed at
/// once, hyper dropped those buffered lines with the aborted body (seen on release builds: a 200
/// with an empty, aborted body).
#[tokio::test]
async fn a_damaged_finished_output_serves_every_intact_line_before_the_damage_then_aborts() {
    let mut server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "done").await;
    let mut finished = push::start(&server.url, "done", common::ADMIN_TOKEN, "a").await;
    finished.logs(&["one", "two"]).await;
    finished.logs(&["three"]).await;
    finished.logs(&["four"]).await;
    finished.finish("success").await;
    let done = finished.id();
    server.kill();
    cut_tail(&server.data.join("logs").join(format!("{done}.log")), 2);
    let server = server.start_again();

    let (code, text, clean) = raw_output(&server, "done", &done).await;
    assert_eq!(code, 200);
    assert_eq!(
        text,
        "one\ntwo\nthree\n",
        "every intact line, then nothing; server: {}",
        server.log()
    );
    assert!(!clean, "the body is aborted at the damage");

    let response = server
        .admin()
        .request(
            reqwest::Method::GET,
            &format!("/v1/apps/done/deployments/{done}/output"),
        )
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("sse");
    assert_eq!(response.status(), 200);
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
    }
    let sse = String::from_utf8_lossy(&body);
    for (n, line) in ["one", "two", "three"].iter().enumerate() {
        assert!(
            sse.contains(&format!("id: {}\ndata: {line}\n\n", n + 1)),
            "{sse}"
        );
    }
    assert!(!sse.contains("four"), "{sse}");
    assert!(
        sse.trim_end().ends_with('}') && sse.contains("event: error\n"),
        "{sse}"
    );
    assert!(
        !sse.contains("event: status"),
        "no terminal status after the damage: {sse}"
    );
}

/// The damage of a finished deployment shows in its JSON (`log_damaged`), and only there.
#[tokio::test]
async fn a_damaged_finished_deployment_says_in_its_json_after_which_line_its_output_was_lost() {
    let mut server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "done").await;
    let mut finished = push::start(&server.url, "done", common::ADMIN_TOKEN, "a").await;
    finished.logs(&["one", "two"]).await;
    finished.logs(&["three"]).await;
    finished.finish("success").await;
    let done = finished.id();
    let mut intact = push::start(&server.url, "done", common::ADMIN_TOKEN, "b").await;
    intact.logs(&["whole"]).await;
    intact.finish("success").await;
    let whole = intact.id();
    server.kill();
    cut_tail(&server.data.join("logs").join(format!("{done}.log")), 2);
    let server = server.start_again();

    let (code, body) = server
        .admin()
        .get(&format!("/v1/apps/done/deployments/{done}"))
        .await;
    assert_eq!(code, 200);
    let damaged = &body["deployment"]["log_damaged"];
    assert_eq!(damaged["lines_lost_after"], 2, "{body}");
    assert_eq!(damaged["first_lost_line"], 3, "{body}");
    assert_eq!(damaged["last_lost_line"], 3, "{body}");
    assert!(
        damaged["reason"]
            .as_str()
            .is_some_and(|r| r.contains("lost")),
        "{body}"
    );
    assert_eq!(body["deployment"]["status"], "success");
    let (code, body) = server
        .admin()
        .get(&format!("/v1/apps/done/deployments/{whole}"))
        .await;
    assert_eq!(code, 200);
    assert!(body["deployment"].get("log_damaged").is_none(), "{body}");
}
