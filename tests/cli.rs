//! The everyday CLI through the real binary: `deployd deploy` (pack, upload, trigger, follow)
//! against a real server running the built-in executor, `deployd apps` / `deployments`,
//! `--version`, completions, man pages, `--help`, and the service files.
mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{Server, ADMIN_TOKEN};
use serde_json::Value;

/// Bound on a CLI run against a tiny app (they take well under a second).
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the binary with `args` (no DEPLOYD_* from the test's environment) and waits for it.
async fn deployd(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_deployd"))
        .args(args)
        .env_remove("DEPLOYD_URL")
        .env_remove("DEPLOYD_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn deployd");
    tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .expect("deployd must exit")
        .expect("output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `deployd SUBCOMMAND --url … --token … [--app APP] REST…`
async fn client_command(server: &Server, sub: &str, app: Option<&str>, rest: &[&str]) -> Output {
    let mut args = vec![sub, "--url", &server.url, "--token", ADMIN_TOKEN];
    if let Some(app) = app {
        args.extend(["--app", app]);
    }
    args.extend(rest);
    deployd(&args).await
}

fn write_script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The paths inside a tar.gz.
fn archive_paths(path: &Path) -> Vec<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .expect("read archive");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    archive
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect()
}

async fn deployments_of(server: &Server, app: &str) -> Vec<Value> {
    let (status, body) = server
        .admin()
        .get(&format!("/v1/apps/{app}/deployments"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["deployments"].as_array().expect("list").clone()
}

#[tokio::test]
async fn deploy_packs_a_directory_without_ignored_files_and_follows_the_executor_to_success() {
    let server = Server::start();
    server.create_app(&server.admin(), "packed").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("my-app");
    write_script(
        &dir.join("bin/build"),
        "echo \"building in $(basename \"$PWD\")\"\ntest -f keep.txt || exit 7\n\
         test ! -e secret.txt || exit 8\necho built > artifact.txt",
    );
    write_script(&dir.join("bin/start"), "echo started");
    std::fs::write(dir.join("keep.txt"), "kept\n").expect("write");
    std::fs::write(dir.join("secret.txt"), "never uploaded\n").expect("write");
    std::fs::write(dir.join(".deploydignore"), "secret.txt\n").expect("write");

    let output = client_command(
        &server,
        "deploy",
        Some("packed"),
        &["--git-ref", "v7", dir.to_str().expect("utf-8 path")],
    )
    .await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("building in my-app\n"), "{stdout}");
    assert!(stdout.contains("started\n"), "{stdout}");
    assert!(stderr.contains("Deployment ended: success"), "{stderr}");
    // No terminal: no progress bar escape codes, only the summary lines.
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");

    let deployments = deployments_of(&server, "packed").await;
    assert_eq!(deployments.len(), 1, "{deployments:?}");
    let deployment = &deployments[0];
    assert_eq!(deployment["status"], "success");
    assert_eq!(deployment["git_ref"], "v7");
    let id = deployment["id"].as_str().expect("id");
    let (status, _, log) = server
        .admin()
        .get_text(&format!("/v1/apps/packed/deployments/{id}/output"))
        .await;
    assert_eq!(status, 200);
    assert!(log.contains("building in my-app\n"), "{log}");
    let image = server.data.join("images").join(format!("{id}.tar.gz"));
    let paths = archive_paths(&image);
    for wanted in ["artifact.txt", "keep.txt", "bin/build"] {
        assert!(
            paths.iter().any(|p| p.ends_with(wanted)),
            "{wanted}: {paths:?}"
        );
    }
    assert!(
        !paths.iter().any(|p| p.ends_with("secret.txt")),
        "{paths:?}"
    );
}

#[tokio::test]
async fn deploy_exits_like_follow_and_no_follow_prints_the_deployment_id() {
    let server = Server::start();
    server.create_app(&server.admin(), "failing").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("broken");
    write_script(&dir.join("bin/build"), "echo compiling; exit 3");

    let failed = client_command(&server, "deploy", Some("failing"), &[dir.to_str().unwrap()]).await;
    let stderr = text(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(text(&failed.stdout).contains("compiling\n"));
    assert!(stderr.contains("Deployment ended: build-error"), "{stderr}");

    let queued = client_command(
        &server,
        "deploy",
        Some("failing"),
        &["--no-follow", dir.to_str().unwrap()],
    )
    .await;
    assert_eq!(queued.status.code(), Some(0), "{}", text(&queued.stderr));
    let id = text(&queued.stdout).trim().to_owned();
    let listed = deployments_of(&server, "failing").await;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[0]["id"],
        id.as_str(),
        "the newest is the one printed"
    );
}

#[tokio::test]
async fn deploy_of_a_missing_path_or_with_a_bad_token_exits_2_and_creates_nothing() {
    let server = Server::start();
    server.create_app(&server.admin(), "untouched").await;
    let missing = client_command(
        &server,
        "deploy",
        Some("untouched"),
        &["/nonexistent/deployd-test-dir"],
    )
    .await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("/nonexistent/deployd-test-dir"));

    let tmp = tempfile::tempdir().expect("tmp");
    let bad_token = deployd(&[
        "deploy",
        "--url",
        &server.url,
        "--token",
        "wrong",
        "--app",
        "untouched",
        tmp.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(bad_token.status.code(), Some(2));
    assert!(
        text(&bad_token.stderr).contains("401"),
        "{}",
        text(&bad_token.stderr)
    );
    assert!(deployments_of(&server, "untouched").await.is_empty());
}

#[tokio::test]
async fn apps_and_deployments_print_tables_and_the_servers_json() {
    let server = Server::start();
    server.create_app(&server.admin(), "listed-app").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let done = client_command(
        &server,
        "deploy",
        Some("listed-app"),
        &["--git-ref", "r1", tmp.path().to_str().unwrap()],
    )
    .await;
    assert_eq!(done.status.code(), Some(0), "{}", text(&done.stderr));

    let apps = client_command(&server, "apps", None, &[]).await;
    assert_eq!(apps.status.code(), Some(0));
    let table = text(&apps.stdout);
    let mut lines = table.lines();
    assert!(
        lines.next().expect("header").starts_with("NAME  "),
        "{table}"
    );
    assert!(
        lines.next().expect("row").starts_with("listed-app  "),
        "{table}"
    );

    let json = client_command(&server, "apps", None, &["--json"]).await;
    let body: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(body["apps"][0]["name"], "listed-app");

    let list = client_command(&server, "deployments", Some("listed-app"), &[]).await;
    assert_eq!(list.status.code(), Some(0));
    let table = text(&list.stdout);
    let row = table.lines().nth(1).expect("a row");
    assert!(row.contains("success") && row.contains("r1"), "{table}");
    let json = client_command(&server, "deployments", Some("listed-app"), &["--json"]).await;
    let body: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(body["deployments"][0]["git_ref"], "r1");

    let missing = client_command(&server, "deployments", Some("no-such-app"), &[]).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing.stderr).contains("404"),
        "{}",
        text(&missing.stderr)
    );
}

#[tokio::test]
async fn version_names_the_git_commit_it_was_built_from() {
    let output = deployd(&["--version"]).await;
    assert_eq!(output.status.code(), Some(0));
    let version = text(&output.stdout);
    let prefix = format!("deployd {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&prefix), "{version}");
    let commit = version[prefix.len()..].trim_end().trim_end_matches(')');
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success());
    match head {
        Some(head) => assert!(commit.starts_with(text(&head.stdout).trim()), "{version}"),
        None => assert_eq!(commit, "unknown", "{version}"),
    }
}

#[tokio::test]
async fn completions_and_man_pages_come_from_the_same_definitions_as_help() {
    for shell in ["bash", "zsh", "fish"] {
        let output = deployd(&["completions", shell]).await;
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = text(&output.stdout);
        assert!(script.contains("deploy"), "{shell}");
        assert!(script.contains("stream-ping-interval-secs"), "{shell}");
    }
    assert_eq!(
        deployd(&["completions", "tcsh"]).await.status.code(),
        Some(2)
    );

    let man = deployd(&["man"]).await;
    assert_eq!(man.status.code(), Some(0));
    let page = text(&man.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH deployd"),
        "{page}"
    );
    assert!(page.contains("deployments"), "{page}");

    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("man1");
    let written = deployd(&["man", "--out-dir", dir.to_str().unwrap()]).await;
    assert_eq!(written.status.code(), Some(0), "{}", text(&written.stderr));
    let deploy_page = std::fs::read_to_string(dir.join("deployd-deploy.1")).expect("page");
    assert!(deploy_page.contains("no\\-follow"), "{deploy_page}");
    assert!(deploy_page.contains("Exit codes"), "{deploy_page}");
    assert!(dir.join("deployd-serve.1").exists());
}

#[tokio::test]
async fn every_subcommand_help_shows_examples_and_exit_codes() {
    let subcommands = [
        "serve",
        "push",
        "follow",
        "bench",
        "deploy",
        "apps",
        "deployments",
        "completions",
        "man",
        "migrate",
    ];
    for sub in subcommands {
        let output = deployd(&[sub, "--help"]).await;
        assert_eq!(output.status.code(), Some(0), "{sub}");
        let help = text(&output.stdout);
        assert!(help.contains("Examples:"), "{sub}: {help}");
        assert!(help.contains("Exit codes:"), "{sub}: {help}");
    }
    let top = text(&deployd(&["--help"]).await.stdout);
    assert!(top.contains("Examples:"), "{top}");
}

/// The repository's own copy of a file, by path from the root.
fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

#[test]
fn the_systemd_unit_is_hardened_and_passes_systemd_analyze_verify() {
    let unit = repo_file("examples/deployd.service");
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=deployd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
        "KillSignal=SIGTERM",
        "ExecStart=/usr/local/bin/deployd serve",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(directive)),
            "{directive}"
        );
    }
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("skipped: systemd-analyze is not installed (Debian: apt-get install systemd)");
        return;
    };
    assert!(version.status.success());
    // verify checks that ExecStart exists: point it at the binary under test.
    let tmp = tempfile::tempdir().expect("tmp");
    let copy = tmp.path().join("deployd.service");
    let unit = unit.replace("/usr/local/bin/deployd", env!("CARGO_BIN_EXE_deployd"));
    std::fs::write(&copy, unit).expect("write unit");
    let output = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify");
    // verify exits 0 even for unknown keys or bad values ("…, ignoring"): any message fails.
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_dockerfile_runs_unprivileged_with_the_data_directory_as_a_volume() {
    let dockerfile = repo_file("Dockerfile");
    let ignored = repo_file(".dockerignore");
    let last_user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !last_user.starts_with('0') && !last_user.starts_with("root"),
        "{last_user}"
    );
    assert!(dockerfile.contains("VOLUME [\"/data\"]"));
    assert!(dockerfile.contains("DEPLOYD_DATA_DIR=/data"));
    // Everything the build stage copies exists and is in the build context.
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(source).exists(),
                "{source}"
            );
            assert!(
                !ignored.lines().any(|l| l.trim() == *source),
                "{source} is ignored"
            );
        }
    }
}
