//! Build script: records the git commit the binary is built from, for `deployd --version`, and
//! embeds the dashboard's assets (every file under `ui/`) into the binary.
//!
//! Commit: `DEPLOYD_GIT_COMMIT` in the build environment wins (for builds without `.git`, e.g. a
//! container build context); otherwise `git rev-parse`; otherwise `unknown`. It never fails the
//! build.
//!
//! Dashboard: `$OUT_DIR/ui_assets.rs` is a table of `(relative path, bytes, ETag)`, one row per
//! file under `ui/` (sorted by path; dot-files and `node_modules` are left out: editor and tool
//! leftovers, never assets), read by `api::ui`. The build fails without `ui/index.html`, the
//! shell every client-side route is answered with.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/git_rerun.rs"]
mod git_rerun;

/// The dashboard's source directory, relative to the package root.
const UI_DIR: &str = "ui";

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
    embed_ui();
    println!("cargo:rerun-if-env-changed=DEPLOYD_GIT_COMMIT");
    let commit = std::env::var("DEPLOYD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let commit = git(&["rev-parse", &format!("--short={COMMIT_DIGITS}"), "HEAD"])?;
            // Rebuild when HEAD moves (build/git_rerun.rs: only files that exist).
            if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
                let common = git(&["rev-parse", "--git-common-dir"]).unwrap_or(git_dir.clone());
                let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
                for file in git_rerun::watched_files(
                    Path::new(&git_dir),
                    Path::new(&common),
                    head_ref.as_deref(),
                ) {
                    println!("cargo:rerun-if-changed={}", file.display());
                }
            }
            // No "-dirty" mark: this script does not rerun when a source file changes, so the
            // mark would go stale.
            Some(commit)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=DEPLOYD_GIT_COMMIT={commit}");
}

/// Every file under `dir`, recursively, as paths relative to `root` with `/` separators.
fn ui_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "node_modules" {
            continue;
        }
        let path = entry.path();
        let kind = entry
            .file_type()
            .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()));
        if kind.is_dir() {
            ui_files(root, &path, out);
        } else if kind.is_file() {
            let relative = path
                .strip_prefix(root)
                .expect("invariant: a file found under root is inside root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((relative, path));
        }
    }
}

/// FNV-1a, 64 bits: an ETag only needs to change when the bytes do (not a security hash).
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// Writes `$OUT_DIR/ui_assets.rs`, the table of the dashboard's files (see the module doc).
fn embed_ui() {
    println!("cargo:rerun-if-changed={UI_DIR}");
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest.join(UI_DIR);
    assert!(
        root.join("index.html").is_file(),
        "{} is missing: the dashboard's shell must exist to build deployd",
        root.join("index.html").display()
    );
    let mut files = Vec::new();
    ui_files(&root, &root, &mut files);
    files.sort();
    let mut table = String::from(
        "/// The dashboard's files: (path under `ui/`, bytes, ETag), sorted by path.\n\
         pub(crate) static UI_ASSETS: &[(&str, &[u8], &str)] = &[\n",
    );
    for (relative, path) in &files {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
        let _ = writeln!(
            table,
            "    ({relative:?}, include_bytes!({:?}), \"\\\"{:016x}\\\"\"),",
            path.display().to_string(),
            fnv1a(&bytes)
        );
    }
    table.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("ui_assets.rs"), table).expect("write ui_assets.rs");
}
