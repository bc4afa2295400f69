//! Build script: records the git commit the binary is built from, for `deployd --version`.
//!
//! `DEPLOYD_GIT_COMMIT` in the build environment wins (for builds without `.git`, e.g. a
//! container build context); otherwise `git rev-parse`; otherwise `unknown`. It never fails the
//! build.

use std::path::PathBuf;
use std::process::Command;

/// Enough hex digits to be unique in any realistic history, short enough to read.
const COMMIT_DIGITS: &str = "12";

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=DEPLOYD_GIT_COMMIT");
    let commit = std::env::var("DEPLOYD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let commit = git(&["rev-parse", &format!("--short={COMMIT_DIGITS}"), "HEAD"])?;
            // Rebuild when HEAD moves: HEAD itself (branch switches) and the branch's ref.
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                println!(
                    "cargo:rerun-if-changed={}",
                    PathBuf::from(dir).join("HEAD").display()
                );
            }
            if let (Some(common), Some(head_ref)) = (
                git(&["rev-parse", "--git-common-dir"]),
                git(&["symbolic-ref", "-q", "HEAD"]),
            ) {
                let common = PathBuf::from(common);
                println!("cargo:rerun-if-changed={}", common.join(head_ref).display());
                println!(
                    "cargo:rerun-if-changed={}",
                    common.join("packed-refs").display()
                );
            }
            // No "-dirty" mark: this script does not rerun when a source file changes, so the
            // mark would go stale.
            Some(commit)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=DEPLOYD_GIT_COMMIT={commit}");
}
