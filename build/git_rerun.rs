//! Which git files the build script watches for `deployd --version`'s commit (shared by
//! `build.rs` and a unit test of the library, `build_git_rerun`).
//!
//! A watched file that does not exist makes cargo rerun the script, and rebuild the whole crate,
//! on every invocation (a fresh clone has no `.git/packed-refs`, or the branch only there): so
//! only files that exist are watched. A file that appears later still triggers a rerun, because
//! git writes or removes one of the watched ones at the same time (packing deletes the loose
//! ref; a new loose ref rewrites HEAD's target).

use std::path::{Path, PathBuf};

/// The files whose change means HEAD may point elsewhere: `HEAD` itself (branch switches), the
/// branch's loose ref and `packed-refs`, those of them that exist.
pub fn watched_files(git_dir: &Path, common_dir: &Path, head_ref: Option<&str>) -> Vec<PathBuf> {
    let mut files = vec![git_dir.join("HEAD")];
    if let Some(head_ref) = head_ref {
        files.push(common_dir.join(head_ref));
    }
    files.push(common_dir.join("packed-refs"));
    files.retain(|file| file.is_file());
    files
}
