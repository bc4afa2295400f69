//! Configuration layering through the real binary: every TOML key is also a flag and an
//! environment variable; flags win over variables, variables over the file; bad values and
//! unknown keys are refused at start with the key named, and nothing is created.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Options, Server};
use serde_json::json;

/// A JSON body of about 300 bytes (an app create padded with whitespace).
fn padded_app(name: &str) -> String {
    format!("{{\"app\": {{\"name\": \"{name}\"}}{}}}", " ".repeat(300))
}

/// Runs `deployd serve ARGS` that is expected to refuse to start.
fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deployd"));
    command.arg("serve").args(args).stdin(Stdio::null());
    for var in [
        "DEPLOYD_LISTEN",
        "DEPLOYD_DATA",
        "DEPLOYD_DATA_DIR",
        "DEPLOYD_CONFIG",
    ] {
        command.env_remove(var);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run deployd serve");
    assert_ne!(output.status.code(), Some(0), "deployd serve must refuse");
    output
}

#[tokio::test]
async fn a_flag_wins_over_its_environment_variable_which_wins_over_the_file() {
    let file = "[limits]\nmax_json_body_bytes = 64".to_owned();
    let env = vec![(
        "DEPLOYD_LIMITS_MAX_JSON_BODY_BYTES".to_owned(),
        "100000".to_owned(),
    )];
    // The variable lifts the file's tiny limit.
    let by_env = Server::start_with(Options {
        config_toml: file.clone(),
        env: env.clone(),
        ..Options::default()
    });
    let (status, body) = by_env
        .admin()
        .post_raw("/v1/apps", padded_app("env-wins"))
        .await;
    assert_eq!(status, 201, "{body}");

    // The flag puts it back.
    let by_flag = Server::start_with(Options {
        config_toml: file,
        env,
        args: vec!["--limits-max-json-body-bytes=64".to_owned()],
        ..Options::default()
    });
    let (status, body) = by_flag
        .admin()
        .post_raw("/v1/apps", padded_app("flag-wins"))
        .await;
    assert_eq!(status, 413, "{body}");
    let (_, apps) = by_flag.admin().get("/v1/apps").await;
    assert_eq!(apps["apps"], json!([]), "a refused request changes nothing");
}

#[tokio::test]
async fn zero_lifts_a_limit() {
    let server = Server::start_with(Options {
        args: vec!["--limits-max-json-body-bytes".to_owned(), "0".to_owned()],
        ..Options::default()
    });
    let huge = format!(
        "{{\"app\": {{\"name\": \"unlimited\"}}{}}}",
        " ".repeat(1024 * 1024 + 1024)
    );
    let (status, body) = server.admin().post_raw("/v1/apps", huge).await;
    assert_eq!(status, 201, "{body}");
}

#[test]
fn a_wrong_flag_or_variable_value_is_refused_at_start_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let data = data.to_str().expect("utf-8");

    let flag = serve_refused(
        &["--data-dir", data, "--stream-ping-interval-secs", "soon"],
        &[],
    );
    let stderr = String::from_utf8_lossy(&flag.stderr);
    assert_eq!(flag.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--stream-ping-interval-secs"), "{stderr}");

    let variable = serve_refused(&["--data-dir", data], &[("DEPLOYD_LISTEN", "nowhere")]);
    let stderr = String::from_utf8_lossy(&variable.stderr);
    assert_eq!(variable.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("listen (--listen / DEPLOYD_LISTEN)"),
        "{stderr}"
    );

    let alias = serve_refused(
        &["--data-dir", data],
        &[("DEPLOYD_ALLOW_PRIVATE_SOURCES", "perhaps")],
    );
    let stderr = String::from_utf8_lossy(&alias.stderr);
    assert!(stderr.contains("DEPLOYD_ALLOW_PRIVATE_SOURCES"), "{stderr}");

    assert!(!tmp.path().join("data").exists(), "nothing is created");
}

#[test]
fn an_unknown_file_key_is_refused_even_when_flags_set_others() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("deployd.toml");
    std::fs::write(&file, "[stream]\nping_every_secs = 3\n").expect("write");
    let data = tmp.path().join("data");
    let output = serve_refused(
        &[
            "--config",
            file.to_str().expect("utf-8"),
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--stream-ping-interval-secs=5",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ping_every_secs"), "{stderr}");
    assert!(!data.exists(), "nothing is created");
}

#[test]
fn serve_help_lists_every_configuration_key_with_its_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_deployd"))
        .args(["serve", "--help"])
        .env_remove("DEPLOYD_LISTEN")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    let keys = deployd::config::keys::all();
    assert!(keys.len() >= 20, "{keys:?}");
    for key in keys {
        assert!(
            help.contains(&format!("--{}", key.flag())),
            "{}: {help}",
            key.flag()
        );
        assert!(
            help.contains(&format!("[env: {}", key.env())),
            "{}: {help}",
            key.env()
        );
    }
}

#[test]
fn the_older_data_and_allow_private_sources_spellings_still_work() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("old-spelling");
    let mut child = Command::new(env!("CARGO_BIN_EXE_deployd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-private-sources",
        ])
        .env("DEPLOYD_DATA", &data)
        .env("DEPLOYD_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .env_remove("DEPLOYD_DATA_DIR")
        .env_remove("DEPLOYD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let first = BufReader::new(stdout).lines().next();
        let _ = tx.send(first);
    });
    let first = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let first = first
        .expect("a first line")
        .expect("a line")
        .expect("utf-8");
    assert!(first.starts_with("deployd listening on "), "{first}");
    assert!(
        data.join("store").is_dir(),
        "DEPLOYD_DATA chose the data directory"
    );
}
