//! The build script's watched git files (`build/git_rerun.rs`).

use crate::build_git_rerun::watched_files;

/// Regression: a clone without `.git/packed-refs` rebuilt the whole crate on every cargo
/// invocation, because the build script watched the missing file.
#[test]
fn a_clone_without_packed_refs_does_not_watch_it_so_nothing_rebuilds_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let git = dir.path();
    std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::create_dir_all(git.join("refs/heads")).unwrap();
    std::fs::write(git.join("refs/heads/main"), "0123\n").unwrap();

    let files = watched_files(git, git, Some("refs/heads/main"));
    assert_eq!(files, vec![git.join("HEAD"), git.join("refs/heads/main")]);

    // Packed: the loose ref is gone, packed-refs holds it.
    std::fs::remove_file(git.join("refs/heads/main")).unwrap();
    std::fs::write(git.join("packed-refs"), "0123 refs/heads/main\n").unwrap();
    let files = watched_files(git, git, Some("refs/heads/main"));
    assert_eq!(files, vec![git.join("HEAD"), git.join("packed-refs")]);

    // Detached HEAD: only HEAD (and packed-refs when there is one).
    assert_eq!(
        watched_files(git, git, None),
        vec![git.join("HEAD"), git.join("packed-refs")]
    );
}
