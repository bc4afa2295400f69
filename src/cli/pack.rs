//! Packing a source directory into the tar.gz the built-in executor takes: one root folder
//! (named after the directory) holding the tree, with `.deploydignore` files honoured like
//! `.gitignore` files (in every directory, for what is below it) and `.git` always left out.
//!
//! Pure file work: no HTTP. Symbolic links are stored as links (never followed, so nothing
//! outside the directory is read); file modes are kept (`bin/build` stays executable).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;

/// The ignore file read in every directory of the tree.
pub const IGNORE_FILE: &str = ".deploydignore";

/// The root folder's name when the directory has none usable (e.g. `/`).
const FALLBACK_ROOT: &str = "source";

/// What was packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Files, links and directories written (the root folder included).
    pub entries: u64,
    /// Size of the tar.gz.
    pub bytes: u64,
}

/// A packing failure, with the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("reading {path}: {source}")]
    Walk {
        path: PathBuf,
        source: ignore::Error,
    },
    #[error("packing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Packs `dir` into a gzip'd tar at `out`.
pub fn pack_dir(dir: &Path, out: &Path) -> Result<Packed, PackError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(PackError::NotADirectory(dir.to_path_buf()));
    }
    let root = root_name(dir);
    let file = File::create(out).map_err(io(out))?;
    let gz = GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    let walker = ignore::WalkBuilder::new(dir)
        // Only `.deploydignore` decides; `.gitignore` and hidden-file rules do not.
        .standard_filters(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|entry| entry.file_name() != ".git")
        .build();
    let mut entries = 0u64;
    for entry in walker {
        let entry = entry.map_err(|source| PackError::Walk {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let relative = path.strip_prefix(dir).unwrap_or(path);
        let name = Path::new(&root).join(relative);
        tar.append_path_with_name(path, &name).map_err(io(path))?;
        entries += 1;
    }
    let gz = tar.into_inner().map_err(io(out))?;
    let mut writer = gz.finish().map_err(io(out))?;
    writer.flush().map_err(io(out))?;
    drop(writer);
    let bytes = std::fs::metadata(out).map_err(io(out))?.len();
    Ok(Packed { entries, bytes })
}

/// The directory's own name (after resolving `.`), else [`FALLBACK_ROOT`].
fn root_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| FALLBACK_ROOT.to_owned())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn names_in(archive: &Path) -> Vec<(String, u32)> {
        let mut bytes = Vec::new();
        File::open(archive)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .expect("read archive");
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        tar.entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let mode = e.header().mode().expect("mode");
                (e.path().expect("path").display().to_string(), mode)
            })
            .collect()
    }

    #[test]
    fn a_directory_is_packed_under_one_root_folder_without_ignored_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let app = tmp.path().join("my-app");
        std::fs::create_dir_all(app.join("bin")).expect("mkdir");
        std::fs::create_dir_all(app.join("node_modules/x")).expect("mkdir");
        std::fs::create_dir_all(app.join(".git")).expect("mkdir");
        std::fs::create_dir_all(app.join("sub")).expect("mkdir");
        std::fs::write(app.join("bin/build"), "#!/bin/sh\necho hi\n").expect("write");
        std::fs::set_permissions(
            app.join("bin/build"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::write(app.join(".deploydignore"), "node_modules/\n*.log\n").expect("write");
        std::fs::write(app.join("node_modules/x/big"), "x").expect("write");
        std::fs::write(app.join("debug.log"), "x").expect("write");
        std::fs::write(app.join(".git/HEAD"), "x").expect("write");
        std::fs::write(app.join(".env.example"), "x").expect("write");
        std::fs::write(app.join("sub/.deploydignore"), "secret\n").expect("write");
        std::fs::write(app.join("sub/secret"), "x").expect("write");
        std::fs::write(app.join("sub/kept"), "x").expect("write");
        let out = tmp.path().join("out.tar.gz");
        let packed = pack_dir(&app, &out).expect("pack");
        let names = names_in(&out);
        let paths: Vec<&str> = names.iter().map(|(p, _)| p.trim_end_matches('/')).collect();
        assert_eq!(
            paths,
            [
                "my-app",
                "my-app/.deploydignore",
                "my-app/.env.example",
                "my-app/bin",
                "my-app/bin/build",
                "my-app/sub",
                "my-app/sub/.deploydignore",
                "my-app/sub/kept",
            ]
        );
        let build_mode = names
            .iter()
            .find(|(p, _)| p.ends_with("bin/build"))
            .map(|x| x.1);
        assert_eq!(build_mode.map(|m| m & 0o777), Some(0o755));
        assert_eq!(packed.entries, 8);
        assert_eq!(packed.bytes, std::fs::metadata(&out).expect("meta").len());
    }

    #[test]
    fn a_file_is_not_packed_as_a_directory() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").expect("write");
        let error = pack_dir(&file, &tmp.path().join("o.tar.gz")).unwrap_err();
        assert!(matches!(error, PackError::NotADirectory(_)), "{error}");
    }
}
