//! The built-in executor through the real binary: `POST /v1/apps/{app}/deployments` fetches a
//! real tar.gz from a local HTTP server, runs the archive's own `bin/build` / `bin/start` (or the
//! operator's commands) and ends in each terminal status; queueing, streaming, hostile archives,
//! private destinations, timeouts and a server restart during a build.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Client, Options, Server};
use deployd::testing::{self, process_alive, ArchiveServer, Item};
use serde_json::{json, Value};
use tar::EntryType;

/// Generous bound for a deployment of a tiny archive (they take well under a second).
const FINISH: Duration = Duration::from_secs(10);

/// Creates the app and deploys `source_url`; asserts 201 and returns the deployment.
async fn deploy(client: &Client, app: &str, body: Value) -> Value {
    let (status, created) = client
        .post(&format!("/v1/apps/{app}/deployments"), body)
        .await;
    assert_eq!(status, 201, "{created}");
    created["deployment"].clone()
}

fn source(url: &str) -> Value {
    json!({"deployment": {"git_ref": "main", "source_url": url}})
}

async fn output(client: &Client, app: &str, id: &str) -> String {
    let (status, _, text) = client
        .get_text(&format!("/v1/apps/{app}/deployments/{id}/output"))
        .await;
    if status == 404 {
        return String::new();
    }
    assert_eq!(status, 200, "{text}");
    text
}

async fn status_of(client: &Client, app: &str, id: &str) -> String {
    let (code, body) = client
        .get(&format!("/v1/apps/{app}/deployments/{id}"))
        .await;
    assert_eq!(code, 200, "{body}");
    body["deployment"]["status"]
        .as_str()
        .expect("status")
        .to_string()
}

fn id(deployment: &Value) -> String {
    deployment["id"].as_str().expect("id").to_string()
}

/// Deploys `archive` (served by `files`) on a new app `name` and waits for the end; returns the
/// finished deployment and its output.
async fn run_app(
    server: &Server,
    files: &ArchiveServer,
    name: &str,
    archive: Vec<u8>,
    hook: Option<&str>,
) -> (Value, String) {
    let admin = server.admin();
    server.create_app(&admin, name).await;
    let url = files.serve(&format!("/{name}.tar.gz"), archive);
    let mut body = source(&url);
    if let Some(hook) = hook {
        body["deployment"]["postdeploy_hook"] = json!(hook);
    }
    let created = deploy(&admin, name, body).await;
    let done = common::wait_finished(&admin, name, &id(&created), FINISH).await;
    let text = output(&admin, name, &id(&created)).await;
    (done, text)
}

/// A shell loop waiting (at most ~10 s, so a failed test leaves nothing running) for `gate`.
fn wait_for(gate: &Path) -> String {
    format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done",
        gate.display()
    )
}

/// The pids written (one a line) to `pidfile`.
fn pids(pidfile: &Path) -> Vec<u32> {
    std::fs::read_to_string(pidfile)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn assert_all_gone(pidfile: &Path) {
    let pids = pids(pidfile);
    assert!(!pids.is_empty(), "no pid in {}", pidfile.display());
    common::eventually(Duration::from_secs(3), || async {
        pids.iter().all(|pid| !process_alive(*pid)).then_some(())
    })
    .await;
}

/// Every file under `root` whose name contains `needle`.
fn find_named(root: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().contains(needle) {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_deployment_runs_build_push_start_to_success_with_its_output_and_image() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let build = "echo \"building $DEPLOYD_APP at $DEPLOYD_GIT_REF\"\nsleep 0.2\necho 'warning: on stderr' >&2\nsleep 0.2\necho 'build done'";
    let start = "echo \"listening on $PORT\"";
    let (done, text) = run_app(&server, &files, "ok-app", testing::app(build, start), None).await;
    assert_eq!(done["status"], "success", "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    };
    let order = [
        at("-----> Fetching source code"),
        at("-----> Running bin/build"),
        at("building ok-app at main"),
        at("warning: on stderr"),
        at("build done"),
        at("-----> Pushing image"),
        at("-----> Running bin/start"),
        at("listening on "),
        at("-----> Deployment succeeded"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}\n{text}");
    let size = done["image_size"].as_u64().expect("image_size integer");
    assert!(size > 0, "{done}");
    let image = server
        .data
        .join("images")
        .join(format!("{}.tar.gz", id(&done)));
    assert_eq!(std::fs::metadata(&image).expect("image file").len(), size);
    assert!(done["finished_at"].is_string(), "{done}");
    // The work directory is removed once the deployment ends: the executor removes it right
    // after writing the terminal status, so the API may show the end a moment before.
    let work = server.data.join("work").join(id(&done));
    common::eventually(Duration::from_secs(3), || async {
        (!work.exists()).then_some(())
    })
    .await;
    assert!(!work.exists());
}

#[tokio::test]
async fn statuses_go_building_pushing_starting_success_and_a_custom_push_sets_the_image_size() {
    let gates = tempfile::tempdir().expect("tempdir");
    let gate = |name: &str| gates.path().join(name);
    let push_cmd = format!(
        "{}; tar czf \"$DEPLOYD_IMAGE_PATH\" .",
        wait_for(&gate("push"))
    );
    let server = Server::start_with(Options {
        config_toml: format!("push_cmd = {}", toml_string(&push_cmd)),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "gated").await;
    let url = files.serve(
        "/gated.tar.gz",
        testing::app(&wait_for(&gate("build")), &wait_for(&gate("start"))),
    );
    let created = deploy(&admin, "gated", source(&url)).await;
    assert_eq!(created["status"], "building");
    let id = id(&created);
    for (status, gate_name) in [
        ("building", "build"),
        ("pushing", "push"),
        ("starting", "start"),
    ] {
        common::eventually(FINISH, || async {
            (status_of(&admin, "gated", &id).await == status).then_some(())
        })
        .await;
        std::fs::write(gate(gate_name), b"").expect("open gate");
    }
    let done = common::wait_finished(&admin, "gated", &id, FINISH).await;
    assert_eq!(done["status"], "success");
    let size = done["image_size"].as_u64().expect("image_size");
    assert!(size > 0, "{done}");
    let image = server.data.join("images").join(format!("{id}.tar.gz"));
    assert_eq!(std::fs::metadata(image).expect("image").len(), size);
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

#[tokio::test]
async fn a_failing_build_ends_in_build_error() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let (done, text) = run_app(
        &server,
        &files,
        "bad-build",
        testing::app("echo compiling; exit 1", "true"),
        None,
    )
    .await;
    assert_eq!(done["status"], "build-error", "{text}");
    assert!(text.contains("compiling\n"), "{text}");
    assert!(
        text.contains("!     Build failed: exited with status 1"),
        "{text}"
    );
    assert!(!text.contains("Running bin/start"), "{text}");
}

#[tokio::test]
async fn a_start_hanging_past_the_start_timeout_is_killed_and_ends_in_timeout_error() {
    let server = Server::start_with(Options {
        config_toml: "start_timeout_secs = 1".into(),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("start.pids");
    let start = format!(
        "echo $$ > '{p}'; sleep 30 & echo $! >> '{p}'; echo 'starting forever'; wait",
        p = pidfile.display()
    );
    let (done, text) = run_app(
        &server,
        &files,
        "slow-start",
        testing::app("true", &start),
        None,
    )
    .await;
    assert_eq!(done["status"], "timeout-error", "{text}");
    assert!(text.contains("starting forever\n"), "{text}");
    assert!(
        text.contains("!     Start did not finish within 1 s"),
        "{text}"
    );
    assert_eq!(pids(&pidfile).len(), 2);
    assert_all_gone(&pidfile).await;
}

#[tokio::test]
async fn a_start_exiting_non_zero_ends_in_crashed_error() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let (done, text) = run_app(
        &server,
        &files,
        "crashing",
        testing::app("true", "echo 'cannot bind'; exit 2"),
        None,
    )
    .await;
    assert_eq!(done["status"], "crashed-error", "{text}");
    assert!(text.contains("cannot bind\n"), "{text}");
    assert!(
        text.contains("!     Start failed: exited with status 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_failing_postdeploy_hook_ends_in_hook_error_and_a_passing_one_in_success() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let (done, text) = run_app(
        &server,
        &files,
        "hooked",
        testing::app("true", "true"),
        Some("echo migrating; exit 3"),
    )
    .await;
    assert_eq!(done["status"], "hook-error", "{text}");
    assert_eq!(done["postdeploy_hook"], "echo migrating; exit 3");
    assert!(text.contains("-----> Running postdeploy hook"), "{text}");
    assert!(text.contains("migrating\n"), "{text}");
    assert!(
        text.contains("!     Postdeploy hook failed: exited with status 3"),
        "{text}"
    );

    let (done, text) = run_app(
        &server,
        &files,
        "hooked-ok",
        testing::app("true", "true"),
        Some("echo \"migrated $DEPLOYD_APP\""),
    )
    .await;
    assert_eq!(done["status"], "success", "{text}");
    assert!(text.contains("migrated hooked-ok\n"), "{text}");
}

#[tokio::test]
async fn a_failing_push_command_ends_in_aborted_with_the_reason() {
    let server = Server::start_with(Options {
        config_toml: "push_cmd = \"echo 'registry down' >&2; exit 4\"".into(),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let (done, text) = run_app(
        &server,
        &files,
        "unpushed",
        testing::app("true", "true"),
        None,
    )
    .await;
    assert_eq!(done["status"], "aborted", "{text}");
    assert!(text.contains("registry down\n"), "{text}");
    assert!(
        text.contains("!     Push failed: exited with status 4"),
        "{text}"
    );
    assert!(!text.contains("Running bin/start"), "{text}");
}

#[tokio::test]
async fn build_output_is_stored_as_it_is_written_not_at_the_end() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let gates = tempfile::tempdir().expect("tempdir");
    let gate = gates.path().join("second");
    let build = format!("echo 'first line'\n{}\necho 'second line'", wait_for(&gate));
    let admin = server.admin();
    server.create_app(&admin, "live").await;
    let url = files.serve("/live.tar.gz", testing::app(&build, "true"));
    let id = id(&deploy(&admin, "live", source(&url)).await);
    // The build cannot go on before we open the gate: seeing its first line now proves the
    // output is stored while the command runs.
    common::eventually(FINISH, || async {
        output(&admin, "live", &id)
            .await
            .contains("first line\n")
            .then_some(())
    })
    .await;
    assert_eq!(status_of(&admin, "live", &id).await, "building");
    assert!(!output(&admin, "live", &id).await.contains("second line"));
    std::fs::write(&gate, b"").expect("open gate");
    let done = common::wait_finished(&admin, "live", &id, FINISH).await;
    assert_eq!(done["status"], "success");
    assert!(output(&admin, "live", &id).await.contains("second line\n"));
}

#[tokio::test]
async fn a_null_git_ref_gets_a_generated_one() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "no-ref").await;
    let url = files.serve("/no-ref.tar.gz", testing::app("true", "true"));
    let created = deploy(
        &admin,
        "no-ref",
        json!({"deployment": {"git_ref": null, "source_url": url}}),
    )
    .await;
    let git_ref = created["git_ref"].as_str().expect("git_ref string");
    assert!(!git_ref.is_empty(), "{created}");
    let done = common::wait_finished(&admin, "no-ref", &id(&created), FINISH).await;
    assert_eq!(done["status"], "success");
    assert_eq!(done["git_ref"], git_ref);
}

#[tokio::test]
async fn without_source_url_or_git_source_the_trigger_is_a_422() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "sourceless").await;
    let (status, body) = admin
        .post(
            "/v1/apps/sourceless/deployments",
            json!({"deployment": {"git_ref": "main"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"]["source_url"].is_array(), "{body}");
    let (_, list) = admin.get("/v1/apps/sourceless/deployments").await;
    assert_eq!(list["deployments"], json!([]), "nothing was created");
}

#[tokio::test]
async fn an_app_with_git_source_deploys_its_archive_of_the_git_ref() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    let git_source = files.url("/org/repo");
    let (status, body) = admin
        .post(
            "/v1/apps",
            json!({"app": {"name": "from-git", "git_source": git_source}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    files.serve(
        "/org/repo/archive/v1.2.tar.gz",
        testing::app("echo 'built v1.2'", "true"),
    );
    let created = deploy(
        &admin,
        "from-git",
        json!({"deployment": {"git_ref": "v1.2"}}),
    )
    .await;
    let done = common::wait_finished(&admin, "from-git", &id(&created), FINISH).await;
    let text = output(&admin, "from-git", &id(&created)).await;
    assert_eq!(done["status"], "success", "{text}");
    assert!(text.contains("built v1.2\n"), "{text}");
    assert_eq!(files.requests(), vec!["/org/repo/archive/v1.2.tar.gz"]);

    // A clone URL works too, and no ref means the default branch (`HEAD`).
    let clone_url = files.url("/org/other.git");
    let (status, body) = admin
        .post(
            "/v1/apps",
            json!({"app": {"name": "from-clone-url", "git_source": clone_url}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    files.serve(
        "/org/other/archive/HEAD.tar.gz",
        testing::app("echo 'built HEAD'", "true"),
    );
    let created = deploy(
        &admin,
        "from-clone-url",
        json!({"deployment": {"git_ref": null}}),
    )
    .await;
    assert_eq!(created["git_ref"], "HEAD");
    let done = common::wait_finished(&admin, "from-clone-url", &id(&created), FINISH).await;
    assert_eq!(done["status"], "success");

    // A ref that would change the URL's meaning is refused, and nothing is fetched.
    let (status, body) = admin
        .post(
            "/v1/apps/from-git/deployments",
            json!({"deployment": {"git_ref": "../../elsewhere"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"]["git_ref"].is_array(), "{body}");
    assert_eq!(files.requests().len(), 2);
}

#[tokio::test]
async fn three_deployments_of_one_app_queue_and_run_one_at_a_time_in_order() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("go");
    let order = dir.path().join("order");
    let build = format!(
        "echo \"$DEPLOYD_DEPLOYMENT_ID\" >> '{}'\n{}",
        order.display(),
        wait_for(&gate)
    );
    let admin = server.admin();
    server.create_app(&admin, "busy").await;
    let url = files.serve("/busy.tar.gz", testing::app(&build, "true"));
    let mut ids = Vec::new();
    for expected in ["building", "queued", "queued"] {
        let created = deploy(&admin, "busy", source(&url)).await;
        assert_eq!(created["status"], expected, "{created}");
        ids.push(id(&created));
    }

    // Watch every status until all three end: never two past `queued` at once.
    let watcher = {
        let admin = admin.clone();
        tokio::spawn(async move {
            let mut max_active = 0;
            loop {
                let (_, list) = admin.get("/v1/apps/busy/deployments").await;
                let statuses: Vec<String> = list["deployments"]
                    .as_array()
                    .expect("list")
                    .iter()
                    .map(|d| d["status"].as_str().expect("status").to_string())
                    .collect();
                let active = statuses
                    .iter()
                    .filter(|s| ["building", "pushing", "starting"].contains(&s.as_str()))
                    .count();
                max_active = max_active.max(active);
                let unfinished = statuses
                    .iter()
                    .filter(|s| ["queued", "building", "pushing", "starting"].contains(&s.as_str()))
                    .count();
                if unfinished == 0 {
                    return (max_active, statuses);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    std::fs::write(&gate, b"").expect("open gate");
    let (max_active, statuses) = tokio::time::timeout(FINISH, watcher)
        .await
        .expect("all three finish")
        .expect("watcher");
    assert_eq!(max_active, 1);
    assert_eq!(statuses, vec!["success"; 3]);
    let started: Vec<String> = std::fs::read_to_string(&order)
        .expect("order file")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(started, ids, "builds ran in creation order");
}

#[tokio::test]
async fn hostile_archives_end_in_build_error_and_write_nothing_outside() {
    let server = Server::start_with(Options {
        config_toml: "max_extracted_bytes = 1000000\nmax_archive_entries = 20".into(),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let outside = server.root().join("pwned-absolute");
    let outside_path = outside.display().to_string();
    let many: Vec<String> = (0..30).map(|i| format!("app/file-{i}")).collect();
    let mut crowd = vec![Item::Dir("app/")];
    crowd.extend(many.iter().map(|p| Item::File(p, b"x")));
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "absolute",
            testing::archive(&[Item::Dir("app/"), Item::File(&outside_path, b"x")]),
            format!("!     Extracting source failed: entry {outside_path:?} has an absolute path"),
        ),
        (
            "dotdot",
            testing::archive(&[
                Item::Dir("app/"),
                Item::File("app/../../../../../pwned-dotdot", b"x"),
            ]),
            "has a '..' component".to_string(),
        ),
        (
            "symlink",
            testing::archive(&[
                Item::Dir("app/"),
                Item::Symlink("app/escape", "../../../../.."),
                Item::File("app/escape/pwned-symlink", b"x"),
            ]),
            "points outside the archive".to_string(),
        ),
        (
            "absolute-symlink",
            testing::archive(&[
                Item::Dir("app/"),
                Item::Symlink("app/escape", "/tmp"),
                Item::File("app/escape/pwned-abs-symlink", b"x"),
            ]),
            "points outside the archive".to_string(),
        ),
        (
            "hardlink",
            testing::archive(&[
                Item::Dir("app/"),
                Item::HardLink("app/pwned-hardlink", "/etc/passwd"),
            ]),
            "is a hardlink".to_string(),
        ),
        (
            "device",
            testing::archive(&[
                Item::Dir("app/"),
                Item::Special("app/pwned-device", EntryType::Char),
            ]),
            "which is not allowed".to_string(),
        ),
        (
            "two-roots",
            testing::archive(&[
                Item::Dir("one/"),
                Item::File("one/a", b"x"),
                Item::Dir("two/"),
                Item::File("two/b", b"x"),
            ]),
            "!     The archive must contain a single folder at its root".to_string(),
        ),
        (
            "bomb",
            testing::zero_bomb(50 * 1000 * 1000),
            "!     Extracting source failed: more than 1000000 bytes once decompressed".to_string(),
        ),
        (
            "crowd",
            testing::archive(&crowd),
            "!     Extracting source failed: more than 20 entries in the archive".to_string(),
        ),
    ];
    for (name, archive, expected) in cases {
        let (done, text) = run_app(&server, &files, name, archive, None).await;
        assert_eq!(done["status"], "build-error", "{name}: {text}");
        assert!(
            text.contains(&expected),
            "{name}: {expected:?} not in:\n{text}"
        );
        assert!(!text.contains("Running bin/build"), "{name}: {text}");
    }
    assert!(!outside.exists());
    assert_eq!(find_named(server.root(), "pwned"), Vec::<PathBuf>::new());
    assert_eq!(
        find_named(Path::new("/tmp"), "pwned-abs-symlink"),
        Vec::<PathBuf>::new()
    );
    // Nothing of the failed deployments is left in the work directory.
    let work = std::fs::read_dir(server.data.join("work"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(work, 0);
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let server = Server::start_with(Options {
        allow_private_sources: Some(false),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let admin = server.admin();
    server.create_app(&admin, "private").await;
    let url = files.serve("/private.tar.gz", testing::app("true", "true"));
    let port = files.addr.port();
    for source_url in [
        url.clone(),
        format!("http://localhost:{port}/private.tar.gz"),
        format!("http://[::1]:{port}/private.tar.gz"),
        "http://10.0.0.1/private.tar.gz".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
    ] {
        let created = deploy(&admin, "private", source(&source_url)).await;
        let done = common::wait_finished(&admin, "private", &id(&created), FINISH).await;
        let text = output(&admin, "private", &id(&created)).await;
        assert_eq!(done["status"], "build-error", "{source_url}: {text}");
        assert!(
            text.contains("!     Fetching source failed:") && text.contains("non-public address"),
            "{source_url}: {text}"
        );
    }
    assert_eq!(
        files.requests(),
        Vec::<String>::new(),
        "nothing was fetched"
    );
}

/// A build that records its pids (the shell's and a 30 s sleep's) in `pidfile`, says it started,
/// and waits: what the restart, crash and timeout tests interrupt.
fn long_build(pidfile: &std::path::Path) -> String {
    format!(
        "echo $$ >> '{p}'; sleep 30 & echo $! >> '{p}'; echo 'long build started'; wait",
        p = pidfile.display()
    )
}

/// Waits until deployment `id` of `app` printed the long build's start line.
async fn until_build_started(admin: &Client, app: &str, id: &str) {
    common::eventually(FINISH, || async {
        output(admin, app, id)
            .await
            .contains("long build started")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_graceful_restart_during_a_build_aborts_it_and_kills_the_build() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("build.pids");
    let build = long_build(&pidfile);
    let admin = server.admin();
    server.create_app(&admin, "restarted").await;
    let url = files.serve("/restarted.tar.gz", testing::app(&build, "true"));
    let id = id(&deploy(&admin, "restarted", source(&url)).await);
    until_build_started(&admin, "restarted", &id).await;
    let server = server.restart();
    let admin = server.admin();
    assert_eq!(status_of(&admin, "restarted", &id).await, "aborted");
    let text = output(&admin, "restarted", &id).await;
    assert!(
        text.contains("!     deployd shut down during the deployment"),
        "{text}"
    );
    assert_all_gone(&pidfile).await;
}

#[tokio::test]
async fn a_crash_during_a_build_leaves_the_deployment_aborted_after_restart() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("build.pids");
    let build = long_build(&pidfile);
    let admin = server.admin();
    server.create_app(&admin, "crashed").await;
    let url = files.serve("/crashed.tar.gz", testing::app(&build, "true"));
    let id = id(&deploy(&admin, "crashed", source(&url)).await);
    until_build_started(&admin, "crashed", &id).await;
    let server = server.crash_and_restart();
    // The restarted server killed the build processes the crashed one left behind (recorded
    // process group, checked against boot id and start time) and removed its work directory.
    assert_all_gone(&pidfile).await;
    let admin = server.admin();
    assert_eq!(status_of(&admin, "crashed", &id).await, "aborted");
    let text = output(&admin, "crashed", &id).await;
    assert!(
        text.contains("deployd restarted while the deployment was building"),
        "{text}"
    );
    assert!(!server.data.join("work").join(&id).exists());
}

#[tokio::test]
async fn the_deployment_timeout_kills_a_long_build_and_ends_in_build_error() {
    let server = Server::start_with(Options {
        config_toml: "deployment_timeout_secs = 1".into(),
        ..Options::default()
    });
    let files = ArchiveServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("build.pids");
    let build = format!(
        "echo $$ > '{p}'; sleep 10 & echo $! >> '{p}'; wait",
        p = pidfile.display()
    );
    let (done, text) = run_app(
        &server,
        &files,
        "too-long",
        testing::app(&build, "true"),
        None,
    )
    .await;
    assert_eq!(done["status"], "build-error", "{text}");
    assert!(
        text.contains("!     Deployment timed out after 1 s"),
        "{text}"
    );
    assert_all_gone(&pidfile).await;
}

#[tokio::test]
async fn a_graceful_restart_keeps_queued_deployments_queued_and_runs_them_after() {
    let server = Server::start();
    let files = ArchiveServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("build.pids");
    let build = long_build(&pidfile);
    let admin = server.admin();
    server.create_app(&admin, "waiting").await;
    let url = files.serve("/waiting.tar.gz", testing::app(&build, "true"));
    let first = id(&deploy(&admin, "waiting", source(&url)).await);
    let second = deploy(&admin, "waiting", source(&url)).await;
    assert_eq!(second["status"], "queued");
    let second = id(&second);
    until_build_started(&admin, "waiting", &first).await;
    let mut server = server.restart();
    let admin = server.admin();
    assert_eq!(status_of(&admin, "waiting", &first).await, "aborted");
    // The queued deployment was not cut short by the shutdown: it runs after the restart.
    until_build_started(&admin, "waiting", &second).await;
    assert_eq!(status_of(&admin, "waiting", &second).await, "building");
    let text = output(&admin, "waiting", &second).await;
    assert!(!text.contains("!     deployd shut down"), "{text}");
    server.stop();
    assert_all_gone(&pidfile).await;
}
