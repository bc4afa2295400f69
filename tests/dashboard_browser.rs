//! The dashboard's browser tests as part of `cargo test`: `tests/browser/*.test.mjs` (Node's
//! test runner, playwright-core driving Debian's headless `chromium`) against the binary the
//! other black-box tests run (`$DEPLOYD_BIN`, else cargo's debug build).
//!
//! They need `/usr/bin/chromium`, `node` and `tests/browser/node_modules` (`npm ci` in
//! `tests/browser`; `.ci/run` installs all three). Without them the test says so and passes,
//! except under CI (`$CI` set), where a missing browser is a failure: the suite must not shrink
//! silently there. `tests/browser/run.sh` runs the same tests alone.

mod common;

use std::path::Path;
use std::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

/// What is missing to run the browser tests, if anything.
fn missing(browser_dir: &Path) -> Option<String> {
    if !Path::new(CHROMIUM).is_file() {
        return Some(format!("{CHROMIUM} (apt-get install chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node (Node.js 20 or later)".into());
    }
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        return Some("tests/browser/node_modules (cd tests/browser && npm ci)".into());
    }
    None
}

#[test]
fn the_dashboard_passes_its_browser_tests_in_headless_chromium() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Some(what) = missing(&browser_dir) {
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser tests cannot run in CI: {what} is missing"
        );
        eprintln!("browser tests not run: {what} is missing");
        return;
    }
    let mut tests: Vec<_> = std::fs::read_dir(&browser_dir)
        .expect("tests/browser is readable")
        .filter_map(|entry| entry.ok().map(|e| e.file_name()))
        .filter(|name| name.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no tests/browser/*.test.mjs");
    let output = Command::new("node")
        .arg("--test")
        .arg("--test-concurrency=1")
        .args(&tests)
        .current_dir(&browser_dir)
        .env("DEPLOYD_BIN", common::deployd_bin())
        .output()
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The runner's summary (`# pass N`, `# fail N`) ends its output: shown on success too.
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "browser tests failed ({}):\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("# fail 0"),
        "the runner reported failures:\n{stderr}"
    );
}
