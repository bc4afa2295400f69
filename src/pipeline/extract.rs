//! Safe extraction of a gzip+tar source archive into one directory.
//!
//! Owns the extraction rule (DESIGN.md, security): nothing is ever written outside the
//! destination. Entries with absolute paths or `..` components, symlinks that are absolute or
//! point out of the archive's root folder, hardlinks, device files and fifos are refused, and so
//! is writing through any symlink (an entry whose parent is a symlink). The entry count and the
//! total number of decompressed bytes (headers included, counted while reading, so a gzip bomb
//! stops at the limit) are bounded. The archive must hold exactly one folder at its root
//! (GitHub-style); that folder is the source directory.
//!
//! Long names (pax `path`/`linkpath` records, GNU long name/link entries) are handled here rather
//! than by the `tar` crate, whose own handling reads such entries whole into memory whatever
//! their declared size; here they are capped at [`MAX_NAME_RECORD_BYTES`].
//!
//! This is blocking code: call it from `spawn_blocking`. It polls the cancellation token between
//! reads so a cancelled deployment stops extracting promptly. It knows nothing of sinks.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;
use tokio_util::sync::CancellationToken;

/// Size of the copy buffer; also how often (in bytes) cancellation is polled.
const COPY_BUFFER_BYTES: usize = 64 * 1024;
/// Largest pax extended header or GNU long name/link entry accepted. Paths are at most a few KiB
/// (PATH_MAX is 4096); the cap stops a crafted header from making us buffer a gigabyte.
pub const MAX_NAME_RECORD_BYTES: u64 = 64 * 1024;
/// Most symlinks one link's resolution may pass through (Linux's own limit, `ELOOP`).
const MAX_LINK_HOPS: usize = 40;
/// Mode of extracted directories and non-executable files: the archive's own modes are not
/// trusted (no setuid, no world-writable files).
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
const EXECUTABLE_MODE: u32 = 0o755;

/// Limits applied to one extraction (taken from [`super::PipelineConfig`]).
#[derive(Clone, Copy, Debug)]
pub struct ExtractLimits {
    /// Maximum number of entries, pax headers included.
    pub max_entries: u64,
    /// Maximum decompressed bytes read from the gzip stream (tar headers included).
    pub max_bytes: u64,
}

/// Why an archive was refused or could not be extracted. The `Display` text goes to the user.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("the archive must contain a single folder at its root")]
    NotSingleRootFolder,
    #[error("entry {0:?} has an absolute path")]
    AbsolutePath(String),
    #[error("entry {0:?} has a '..' component")]
    ParentComponent(String),
    #[error("entry {0:?} has an empty path")]
    EmptyPath(String),
    #[error("symlink {path:?} points outside the archive ({target:?})")]
    LinkEscapes { path: String, target: String },
    #[error("entry {0:?} is a hardlink, which is not supported")]
    HardLink(String),
    #[error("entry {path:?} is a {kind}, which is not allowed")]
    SpecialFile { path: String, kind: &'static str },
    #[error("entry {0:?} would be written through a symlink")]
    ThroughSymlink(String),
    #[error("symlink {0:?} resolves through more than {MAX_LINK_HOPS} symlinks")]
    LinkLoop(String),
    #[error(
        "entry {path:?}: its pax size record ({pax:?}) differs from its header's size \
         ({header}); such archives (files over 8 GiB) are not supported"
    )]
    PaxSize {
        path: String,
        pax: String,
        header: u64,
    },
    #[error("more than {0} entries in the archive")]
    TooManyEntries(u64),
    #[error("a long-name or pax header is larger than {MAX_NAME_RECORD_BYTES} bytes")]
    NameRecordTooLarge,
    #[error("more than {0} bytes once decompressed")]
    TooLarge(u64),
    #[error("extraction cancelled")]
    Cancelled,
    #[error("invalid archive: {0}")]
    Corrupt(io::Error),
    #[error("cannot write {path:?}: {source}")]
    Write { path: String, source: io::Error },
}

/// Extracts the gzip+tar archive at `archive` into `dest` (created if missing) and returns the
/// path of the single folder at the archive's root.
///
/// Errors: see [`ExtractError`]. On error, `dest` may hold a partial tree (never anything
/// outside it); the caller removes it.
pub fn extract(
    archive: &Path,
    dest: &Path,
    limits: ExtractLimits,
    cancel: &CancellationToken,
) -> Result<PathBuf, ExtractError> {
    extract_into(archive, dest, limits, cancel, None)
}

/// The folder a kept image is extracted into, under `dest` (see [`extract_image`]).
pub const IMAGE_ROOT: &str = "image";

/// Extracts a kept image (`stages::pack_image`: the built tree's entries at the archive's
/// root, `./…`) into `dest/`[`IMAGE_ROOT`] and returns that folder, with every rule of
/// [`extract`] but the single root folder (the image's entries are read as if under it).
pub fn extract_image(
    archive: &Path,
    dest: &Path,
    limits: ExtractLimits,
    cancel: &CancellationToken,
) -> Result<PathBuf, ExtractError> {
    extract_into(archive, dest, limits, cancel, Some(IMAGE_ROOT))
}

/// [`extract`], or with `under`, every entry read as if it were in that root folder.
fn extract_into(
    archive: &Path,
    dest: &Path,
    limits: ExtractLimits,
    cancel: &CancellationToken,
    under: Option<&str>,
) -> Result<PathBuf, ExtractError> {
    let file = File::open(archive).map_err(ExtractError::Corrupt)?;
    fs::create_dir_all(dest).map_err(write_error(dest))?;
    let exceeded = Rc::new(Cell::new(false));
    let reader = LimitedReader {
        inner: GzDecoder::new(BufReader::new(file)),
        remaining: limits.max_bytes,
        exceeded: Rc::clone(&exceeded),
    };
    // Maps a read error to TooLarge when it came from our limit rather than from the data.
    let read_error = |error: io::Error| {
        if exceeded.get() {
            ExtractError::TooLarge(limits.max_bytes)
        } else {
            ExtractError::Corrupt(error)
        }
    };

    let mut tar = tar::Archive::new(reader);
    let mut root: Option<OsString> = None;
    let mut count = 0u64;
    // Names announced by pax / GNU long-name entries for the next real entry.
    let mut long_path: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    // A pax `size` record for the next entry: we read entries by their header's size, so one
    // that says otherwise would make the rest of the archive be read out of step.
    let mut pax_size: Option<Vec<u8>> = None;
    // Every symlink made, to resolve against the finished tree.
    let mut links: Vec<(Vec<OsString>, String)> = Vec::new();
    for entry in tar.entries().map_err(read_error)?.raw(true) {
        if cancel.is_cancelled() {
            return Err(ExtractError::Cancelled);
        }
        let mut entry = entry.map_err(read_error)?;
        count += 1;
        if count > limits.max_entries {
            return Err(ExtractError::TooManyEntries(limits.max_entries));
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::XGlobalHeader => continue,
            EntryType::XHeader => {
                let record = read_name_record(&mut entry, &read_error)?;
                for extension in tar::PaxExtensions::new(&record) {
                    let extension = extension.map_err(read_error)?;
                    match extension.key_bytes() {
                        b"path" => long_path = Some(extension.value_bytes().to_vec()),
                        b"linkpath" => long_link = Some(extension.value_bytes().to_vec()),
                        b"size" => pax_size = Some(extension.value_bytes().to_vec()),
                        _ => {}
                    }
                }
                continue;
            }
            EntryType::GNULongName => {
                long_path = Some(trim_nuls(read_name_record(&mut entry, &read_error)?));
                continue;
            }
            EntryType::GNULongLink => {
                long_link = Some(trim_nuls(read_name_record(&mut entry, &read_error)?));
                continue;
            }
            _ => {}
        }
        let raw_path = match long_path.take() {
            Some(bytes) => PathBuf::from(OsString::from_vec(bytes)),
            None => entry.path().map_err(read_error)?.into_owned(),
        };
        let announced_link = long_link.take();
        let shown = raw_path.display().to_string();
        if let Some(pax) = pax_size.take() {
            let header = entry.header().entry_size().map_err(read_error)?;
            let same = std::str::from_utf8(&pax)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                == Some(header);
            if !same {
                return Err(ExtractError::PaxSize {
                    path: shown,
                    pax: String::from_utf8_lossy(&pax).into_owned(),
                    header,
                });
            }
        }
        let mut parts = relative_components(&raw_path)?;
        if let Some(root) = under {
            parts.insert(0, OsString::from(root));
        }
        let Some(first) = parts.first() else {
            // "./" itself: nothing to create.
            if kind.is_dir() {
                continue;
            }
            return Err(ExtractError::EmptyPath(shown));
        };
        match &root {
            None => root = Some(first.clone()),
            Some(existing) if existing != first => return Err(ExtractError::NotSingleRootFolder),
            Some(_) => {}
        }
        if parts.len() == 1 && !kind.is_dir() {
            return Err(ExtractError::NotSingleRootFolder);
        }
        let target = prepare_parent(dest, &parts, &shown)?;

        match kind {
            EntryType::Directory => create_dir(&target)?,
            EntryType::Regular | EntryType::Continuous => {
                let executable = entry.header().mode().map_err(read_error)? & 0o111 != 0;
                write_file(&mut entry, &target, executable, cancel, &read_error)?;
            }
            EntryType::Symlink => {
                let link = match announced_link {
                    Some(bytes) => PathBuf::from(OsString::from_vec(bytes)),
                    None => entry
                        .link_name()
                        .map_err(read_error)?
                        .ok_or_else(|| {
                            ExtractError::Corrupt(io::Error::other("symlink without target"))
                        })?
                        .into_owned(),
                };
                check_link_target(&parts, &link, &shown)?;
                remove_existing(&target)?;
                std::os::unix::fs::symlink(&link, &target).map_err(write_error(&target))?;
                links.push((parts.clone(), shown));
            }
            EntryType::Link => return Err(ExtractError::HardLink(shown)),
            other => {
                return Err(ExtractError::SpecialFile {
                    path: shown,
                    kind: kind_name(other),
                })
            }
        }
    }
    let root = root.ok_or(ExtractError::NotSingleRootFolder)?;
    // Each link was checked alone when made; through other links (`sub/back -> ..`, then
    // `esc -> sub/back/../../..`) it can still leave the root folder, in whatever order the
    // archive made them. Nothing follows a link during extraction, so resolving every link
    // against the finished tree is enough.
    for (parts, shown) in &links {
        resolve_in_tree(dest, parts, shown)?;
    }
    let source = dest.join(root);
    // The single root entry could have been a symlink; only a real folder is accepted.
    match fs::symlink_metadata(&source) {
        Ok(meta) if meta.is_dir() => Ok(source),
        _ => Err(ExtractError::NotSingleRootFolder),
    }
}

/// Reads a pax extended header or GNU long name/link entry, refusing oversized ones before
/// reading them.
fn read_name_record(
    entry: &mut tar::Entry<'_, impl Read>,
    read_error: &dyn Fn(io::Error) -> ExtractError,
) -> Result<Vec<u8>, ExtractError> {
    let size = entry.header().entry_size().map_err(read_error)?;
    if size > MAX_NAME_RECORD_BYTES {
        return Err(ExtractError::NameRecordTooLarge);
    }
    let mut record = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry.read_to_end(&mut record).map_err(read_error)?;
    Ok(record)
}

/// GNU long names are NUL-terminated.
fn trim_nuls(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// The entry path as plain names, refusing absolute paths and `..`; `.` components are dropped.
fn relative_components(path: &Path) -> Result<Vec<OsString>, ExtractError> {
    let shown = || path.display().to_string();
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => parts.push(name.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(ExtractError::ParentComponent(shown())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ExtractError::AbsolutePath(shown()))
            }
        }
    }
    Ok(parts)
}

/// Creates the entry's missing parent directories, refusing to go through a symlink or a file,
/// and returns the entry's full path under `dest`.
fn prepare_parent(dest: &Path, parts: &[OsString], shown: &str) -> Result<PathBuf, ExtractError> {
    let mut current = dest.to_path_buf();
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| ExtractError::EmptyPath(shown.to_owned()))?;
    for part in parents {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ExtractError::ThroughSymlink(shown.to_owned()))
            }
            Ok(_) => {
                return Err(ExtractError::Write {
                    path: shown.to_owned(),
                    source: io::Error::other("a parent is not a directory"),
                })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => create_dir(&current)?,
            Err(error) => return Err(write_error(&current)(error)),
        }
    }
    current.push(last);
    Ok(current)
}

fn create_dir(path: &Path) -> Result<(), ExtractError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => remove_existing(path)?,
        Err(_) => {}
    }
    fs::create_dir(path).map_err(write_error(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)).map_err(write_error(path))
}

/// Removes a file or symlink left by an earlier entry of the same name (later entries win, as
/// with tar itself). A directory is not removed: replacing one is refused by the caller's open.
fn remove_existing(path: &Path) -> Result<(), ExtractError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_dir() => fs::remove_file(path).map_err(write_error(path)),
        _ => Ok(()),
    }
}

fn write_file(
    entry: &mut impl Read,
    target: &Path,
    executable: bool,
    cancel: &CancellationToken,
    read_error: &dyn Fn(io::Error) -> ExtractError,
) -> Result<(), ExtractError> {
    remove_existing(target)?;
    let mode = if executable {
        EXECUTABLE_MODE
    } else {
        FILE_MODE
    };
    // create_new (O_EXCL) never follows a symlink planted at the target.
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(write_error(target))?;
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        if cancel.is_cancelled() {
            return Err(ExtractError::Cancelled);
        }
        let n = match entry.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(read_error(error)),
        };
        out.write_all(&buffer[..n]).map_err(write_error(target))?;
    }
    Ok(())
}

/// Refuses a symlink target that is absolute or that, resolved from the link's own directory,
/// leaves the archive's root folder.
fn check_link_target(parts: &[OsString], link: &Path, shown: &str) -> Result<(), ExtractError> {
    let escapes = || ExtractError::LinkEscapes {
        path: shown.to_owned(),
        target: link.display().to_string(),
    };
    // Start in the link's directory; index 0 is the root folder, which must never be popped.
    let mut resolved: Vec<&OsString> = parts[..parts.len().saturating_sub(1)].iter().collect();
    for component in link.components() {
        match component {
            Component::Normal(_) => resolved.push(&parts[0]), // any name: only the depth matters
            Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
                if resolved.is_empty() {
                    return Err(escapes());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    if link.as_os_str().is_empty() {
        return Err(escapes());
    }
    Ok(())
}

/// Resolves the symlink at `parts` (under `dest`) as the kernel would, following the links it
/// meets in the tree, and refuses it when the resolution leaves the root folder (`parts[0]`)
/// or passes through more than [`MAX_LINK_HOPS`] links. Components that do not exist are
/// taken as plain names (the kernel would stop there, so this is only stricter).
fn resolve_in_tree(dest: &Path, parts: &[OsString], shown: &str) -> Result<(), ExtractError> {
    let link_path: PathBuf = parts.iter().collect();
    let first_target = fs::read_link(dest.join(&link_path)).map_err(write_error(dest))?;
    let escapes = || ExtractError::LinkEscapes {
        path: shown.to_owned(),
        target: first_target.display().to_string(),
    };
    // Where we are (names under `dest`, the root folder first) and what is left to walk, last
    // step first.
    let mut at: Vec<OsString> = parts[..parts.len() - 1].to_vec();
    let mut pending: Vec<Step> = Vec::new();
    push_steps(&mut pending, &first_target);
    let mut hops = 0;
    while let Some(step) = pending.pop() {
        match step {
            Step::Name(name) => {
                at.push(name);
                let here = dest.join(at.iter().collect::<PathBuf>());
                let is_link = fs::symlink_metadata(&here)
                    .map(|meta| meta.file_type().is_symlink())
                    .unwrap_or(false);
                if is_link {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(ExtractError::LinkLoop(shown.to_owned()));
                    }
                    let target = fs::read_link(&here).map_err(write_error(&here))?;
                    at.pop();
                    push_steps(&mut pending, &target);
                }
            }
            Step::Up => {
                at.pop();
                if at.is_empty() {
                    return Err(escapes());
                }
            }
            Step::Absolute => return Err(escapes()),
        }
    }
    Ok(())
}

/// One step of a link's resolution.
enum Step {
    Name(OsString),
    Up,
    Absolute,
}

/// Queues a link target's steps so that they pop first to last.
fn push_steps(pending: &mut Vec<Step>, target: &Path) {
    let steps: Vec<Step> = target
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(Step::Name(name.to_os_string())),
            Component::CurDir => None,
            Component::ParentDir => Some(Step::Up),
            Component::RootDir | Component::Prefix(_) => Some(Step::Absolute),
        })
        .collect();
    pending.extend(steps.into_iter().rev());
}

fn kind_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "fifo",
        EntryType::GNUSparse => "sparse file",
        _ => "unsupported entry type",
    }
}

fn write_error(path: &Path) -> impl Fn(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Write {
        path: path.display().to_string(),
        source,
    }
}

/// Counts decompressed bytes and fails once more than the limit has been read, so a gzip bomb
/// costs at most the limit in reads and disk.
struct LimitedReader<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // Only an error if there is actually more data: an archive of exactly the limit is fine.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded.set(true);
                    Err(io::Error::other("decompressed size limit exceeded"))
                }
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{archive, zero_bomb, Item};

    /// A scratch area: `dest` is the extraction directory, everything else in `base` is
    /// "outside" and must stay untouched.
    struct Scratch {
        base: tempfile::TempDir,
    }

    impl Scratch {
        fn new() -> Self {
            Self {
                base: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn dest(&self) -> PathBuf {
            self.base.path().join("work/extract")
        }

        fn extract(&self, bytes: &[u8], limits: ExtractLimits) -> Result<PathBuf, ExtractError> {
            let archive_path = self.base.path().join("source.tar.gz");
            fs::write(&archive_path, bytes).expect("write archive");
            extract(
                &archive_path,
                &self.dest(),
                limits,
                &CancellationToken::new(),
            )
        }

        /// Every path under `base` except the archive and the extraction directory.
        fn outside_entries(&self) -> Vec<PathBuf> {
            let mut found = Vec::new();
            let mut stack = vec![self.base.path().to_path_buf()];
            while let Some(dir) = stack.pop() {
                for entry in fs::read_dir(&dir).expect("read_dir") {
                    let path = entry.expect("entry").path();
                    if path == self.dest() || path == self.base.path().join("source.tar.gz") {
                        continue;
                    }
                    if path == self.base.path().join("work") {
                        stack.push(path);
                        continue;
                    }
                    found.push(path);
                }
            }
            found
        }
    }

    const LIMITS: ExtractLimits = ExtractLimits {
        max_entries: 1000,
        max_bytes: 10 * 1024 * 1024,
    };

    fn refused(items: &[Item<'_>]) -> (ExtractError, Scratch) {
        let scratch = Scratch::new();
        let error = scratch
            .extract(&archive(items), LIMITS)
            .expect_err("hostile archive must be refused");
        assert!(
            scratch.outside_entries().is_empty(),
            "wrote outside: {:?}",
            scratch.outside_entries()
        );
        (error, scratch)
    }

    #[test]
    fn parent_components_are_refused() {
        let (error, scratch) = refused(&[Item::Dir("app/"), Item::File("app/../../evil", b"x")]);
        assert!(
            matches!(error, ExtractError::ParentComponent(_)),
            "{error:?}"
        );
        assert!(!scratch.base.path().join("work/evil").exists());
        let (error, _) = refused(&[Item::File("../evil", b"x")]);
        assert!(
            matches!(error, ExtractError::ParentComponent(_)),
            "{error:?}"
        );
    }

    #[test]
    fn absolute_paths_are_refused() {
        let scratch = Scratch::new();
        let target = scratch.base.path().join("absolute-evil");
        let target = target.to_str().expect("utf-8 temp path");
        let bytes = archive(&[Item::Dir("app/"), Item::File(target, b"x")]);
        let error = scratch.extract(&bytes, LIMITS).expect_err("refused");
        assert!(matches!(error, ExtractError::AbsolutePath(_)), "{error:?}");
        assert!(scratch.outside_entries().is_empty());
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        let (error, _) = refused(&[Item::Dir("app/"), Item::Symlink("app/etc", "/etc")]);
        assert!(
            matches!(error, ExtractError::LinkEscapes { .. }),
            "{error:?}"
        );
        let (error, _) = refused(&[Item::Dir("app/"), Item::Symlink("app/sub/up", "../../..")]);
        assert!(
            matches!(error, ExtractError::LinkEscapes { .. }),
            "{error:?}"
        );
        // Points at the extraction directory itself: outside the root folder.
        let (error, _) = refused(&[Item::Dir("app/"), Item::Symlink("app/up", "..")]);
        assert!(
            matches!(error, ExtractError::LinkEscapes { .. }),
            "{error:?}"
        );
    }

    /// Regression: `root/sub/back -> ..` then `root/esc -> sub/back/../../…` was accepted.
    #[test]
    fn a_symlink_no_longer_climbs_out_of_the_tree_through_another_in_tree_symlink() {
        // In either order: the second link is fine alone, and escapes through the first.
        let (error, _) = refused(&[
            Item::Dir("app/"),
            Item::Dir("app/sub/"),
            Item::Symlink("app/sub/back", ".."),
            Item::Symlink("app/esc", "sub/back/../../../etc/passwd"),
        ]);
        assert!(
            matches!(error, ExtractError::LinkEscapes { .. }),
            "{error:?}"
        );
        let (error, _) = refused(&[
            Item::Dir("app/"),
            Item::Dir("app/sub/"),
            Item::Symlink("app/esc", "sub/back/../../etc"),
            Item::Symlink("app/sub/back", ".."),
        ]);
        assert!(
            matches!(error, ExtractError::LinkEscapes { .. }),
            "{error:?}"
        );
        // Two links that point at each other.
        let (error, _) = refused(&[
            Item::Dir("app/"),
            Item::Symlink("app/a", "b/x"),
            Item::Symlink("app/b", "a/y"),
        ]);
        assert!(matches!(error, ExtractError::LinkLoop(_)), "{error:?}");
        // Links through links that stay inside are kept.
        let scratch = Scratch::new();
        let root = scratch
            .extract(
                &archive(&[
                    Item::Dir("app/"),
                    Item::Dir("app/sub/"),
                    Item::File("app/README", b"r"),
                    Item::Symlink("app/sub/back", ".."),
                    Item::Symlink("app/readme", "sub/back/README"),
                ]),
                LIMITS,
            )
            .expect("in-tree links");
        assert_eq!(fs::read(root.join("readme")).expect("read"), b"r");
    }

    /// An archive with a pax header holding `size = pax_size` before a file of `data`.
    fn pax_sized(pax_size: &str, data: &[u8]) -> Vec<u8> {
        let record_body = format!("size={pax_size}\n");
        let mut len = record_body.len() + 2;
        if format!("{len} {record_body}").len() != len {
            len += 1;
        }
        let record = format!("{len} {record_body}");
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gzip);
        let dir = crate::testing::raw_header("app/", EntryType::Directory, 0, 0o755, None);
        builder.append(&dir, &b""[..]).expect("dir");
        let pax = crate::testing::raw_header(
            "app/PaxHeader",
            EntryType::XHeader,
            record.len() as u64,
            0o644,
            None,
        );
        builder.append(&pax, record.as_bytes()).expect("pax");
        let file = crate::testing::raw_header(
            "app/file",
            EntryType::Regular,
            data.len() as u64,
            0o644,
            None,
        );
        builder.append(&file, data).expect("file");
        builder.into_inner().expect("tar").finish().expect("gzip")
    }

    /// Regression: pax `size` records were ignored.
    #[test]
    fn a_pax_size_record_is_no_longer_ignored_when_it_differs_from_the_header() {
        let (error, _) = refused_bytes(&pax_sized("1024", b"short"));
        assert!(matches!(error, ExtractError::PaxSize { .. }), "{error:?}");
        let (error, _) = refused_bytes(&pax_sized("nonsense", b"short"));
        assert!(matches!(error, ExtractError::PaxSize { .. }), "{error:?}");
        // The same size as the header's is harmless.
        let scratch = Scratch::new();
        let root = scratch
            .extract(&pax_sized("5", b"short"), LIMITS)
            .expect("a matching pax size");
        assert_eq!(fs::read(root.join("file")).expect("read"), b"short");
    }

    fn refused_bytes(bytes: &[u8]) -> (ExtractError, Scratch) {
        let scratch = Scratch::new();
        let error = scratch
            .extract(bytes, LIMITS)
            .expect_err("hostile archive must be refused");
        assert!(scratch.outside_entries().is_empty());
        (error, scratch)
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let (error, _) = refused(&[
            Item::Dir("app/"),
            Item::Symlink("app/here", "."),
            Item::File("app/here/file", b"x"),
        ]);
        assert!(
            matches!(error, ExtractError::ThroughSymlink(_)),
            "{error:?}"
        );
    }

    #[test]
    fn hardlinks_and_special_files_are_refused() {
        let (error, _) = refused(&[
            Item::Dir("app/"),
            Item::HardLink("app/passwd", "/etc/passwd"),
        ]);
        assert!(matches!(error, ExtractError::HardLink(_)), "{error:?}");
        for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
            let (error, _) = refused(&[Item::Dir("app/"), Item::Special("app/dev", kind)]);
            assert!(
                matches!(error, ExtractError::SpecialFile { .. }),
                "{kind:?}: {error:?}"
            );
        }
    }

    #[test]
    fn too_many_entries_are_refused() {
        let names: Vec<String> = (0..20).map(|i| format!("app/f{i}")).collect();
        let mut items = vec![Item::Dir("app/")];
        items.extend(names.iter().map(|name| Item::File(name, b"x")));
        let scratch = Scratch::new();
        let limits = ExtractLimits {
            max_entries: 10,
            ..LIMITS
        };
        let error = scratch
            .extract(&archive(&items), limits)
            .expect_err("refused");
        assert!(
            matches!(error, ExtractError::TooManyEntries(10)),
            "{error:?}"
        );
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        let limit = 256 * 1024;
        let bomb = zero_bomb(8 * 1024 * 1024);
        assert!(bomb.len() < 64 * 1024, "the bomb should compress well");
        let scratch = Scratch::new();
        let limits = ExtractLimits {
            max_bytes: limit,
            ..LIMITS
        };
        let error = scratch.extract(&bomb, limits).expect_err("refused");
        assert!(matches!(error, ExtractError::TooLarge(_)), "{error:?}");
        let written = fs::metadata(scratch.dest().join("app/zeros"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(written <= limit, "wrote {written} bytes");
    }

    #[test]
    fn the_root_must_be_a_single_folder() {
        for items in [
            vec![Item::Dir("a/"), Item::File("a/x", b"x"), Item::Dir("b/")],
            vec![Item::Dir("a/"), Item::File("README", b"x")],
            vec![Item::File("a/x", b"x"), Item::File("b/y", b"y")],
            vec![Item::Symlink("a", "b")],
            vec![],
        ] {
            let scratch = Scratch::new();
            let error = scratch
                .extract(&archive(&items), LIMITS)
                .expect_err("refused");
            assert!(
                matches!(error, ExtractError::NotSingleRootFolder),
                "{error:?}"
            );
        }
    }

    #[test]
    fn github_style_archive_is_extracted() {
        let scratch = Scratch::new();
        let bytes = archive(&[
            Item::PaxGlobal,
            Item::Dir("repo-abc123/"),
            Item::Dir("repo-abc123/bin/"),
            Item::Executable("repo-abc123/bin/build", b"#!/bin/sh\necho hi\n"),
            Item::File("repo-abc123/README", b"hello"),
            Item::Symlink("repo-abc123/docs", "README"),
            Item::Symlink("repo-abc123/bin/readme", "../README"),
            Item::File("./repo-abc123/implicit/dir/file", b"deep"),
        ]);
        let source = scratch.extract(&bytes, LIMITS).expect("extracted");
        assert_eq!(source, scratch.dest().join("repo-abc123"));
        assert_eq!(fs::read(source.join("README")).expect("readme"), b"hello");
        assert_eq!(fs::read(source.join("docs")).expect("symlink"), b"hello");
        assert_eq!(
            fs::read(source.join("bin/readme")).expect("symlink"),
            b"hello"
        );
        assert_eq!(
            fs::read(source.join("implicit/dir/file")).expect("deep"),
            b"deep"
        );
        let mode = fs::metadata(source.join("bin/build"))
            .expect("build")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let mode = fs::metadata(source.join("README"))
            .expect("readme")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        assert!(!scratch.dest().join("pax_global_header").exists());
    }

    #[test]
    fn long_names_from_pax_and_gnu_headers_are_honoured_and_checked() {
        let long_dir = format!("app/{}", "d".repeat(150));
        let long_file = format!("{long_dir}/{}", "f".repeat(120));
        // A pax record is "<len> key=value\n", where <len> counts its own digits too.
        let pax_record = |key: &str, value: &str| {
            let body = format!(" {key}={value}\n");
            let len = (1..=6)
                .map(|digits| digits + body.len())
                .find(|total| total.to_string().len() + body.len() == *total)
                .expect("record length");
            format!("{len}{body}").into_bytes()
        };
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gzip);
        // GNU long name written by the tar crate itself for a >100-byte path.
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder
            .append_data(&mut header, &long_dir, &b""[..])
            .expect("long dir");
        // pax `path` record, as `git archive` writes.
        let record = pax_record("path", &long_file);
        let pax =
            crate::testing::raw_header("pax", EntryType::XHeader, record.len() as u64, 0o644, None);
        builder.append(&pax, &record[..]).expect("pax");
        let file = crate::testing::raw_header("short", EntryType::Regular, 4, 0o644, None);
        builder.append(&file, &b"long"[..]).expect("file");
        // A pax `path` with `..` is checked like any path.
        let record = pax_record("path", "app/../../evil");
        let pax =
            crate::testing::raw_header("pax", EntryType::XHeader, record.len() as u64, 0o644, None);
        builder.append(&pax, &record[..]).expect("pax");
        let file = crate::testing::raw_header("app/fine", EntryType::Regular, 1, 0o644, None);
        builder.append(&file, &b"x"[..]).expect("file");
        let bytes = builder.into_inner().expect("tar").finish().expect("gzip");

        let scratch = Scratch::new();
        let error = scratch
            .extract(&bytes, LIMITS)
            .expect_err("the '..' pax path is refused");
        assert!(
            matches!(error, ExtractError::ParentComponent(_)),
            "{error:?}"
        );
        assert_eq!(
            fs::read(scratch.dest().join(&long_file)).expect("long file"),
            b"long"
        );
        assert!(!scratch.dest().join("short").exists());
        assert!(scratch.outside_entries().is_empty());
    }

    #[test]
    fn long_symlink_targets_are_checked() {
        let escaping = format!("{}../../etc", "a/../".repeat(30));
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gzip);
        let dir = crate::testing::raw_header("app/", EntryType::Directory, 0, 0o755, None);
        builder.append(&dir, &b""[..]).expect("dir");
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Symlink);
        header.set_size(0);
        // Writes a GNU long link entry for the >100-byte target.
        builder
            .append_link(&mut header, "app/link", &escaping)
            .expect("link");
        let bytes = builder.into_inner().expect("tar").finish().expect("gzip");
        let scratch = Scratch::new();
        let error = scratch.extract(&bytes, LIMITS).expect_err("refused");
        assert!(
            matches!(error, ExtractError::LinkEscapes { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn oversized_long_name_is_refused_before_being_read() {
        let size = 16 * 1024 * 1024;
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gzip);
        let header =
            crate::testing::raw_header("././@LongLink", EntryType::GNULongName, size, 0o644, None);
        builder
            .append(&header, std::io::Read::take(std::io::repeat(b'a'), size))
            .expect("append");
        let bytes = builder.into_inner().expect("tar").finish().expect("gzip");
        let scratch = Scratch::new();
        let error = scratch.extract(&bytes, LIMITS).expect_err("refused");
        assert!(
            matches!(error, ExtractError::NameRecordTooLarge),
            "{error:?}"
        );
    }

    #[test]
    fn cancellation_stops_extraction() {
        let scratch = Scratch::new();
        let archive_path = scratch.base.path().join("source.tar.gz");
        fs::write(
            &archive_path,
            archive(&[Item::Dir("app/"), Item::File("app/x", b"x")]),
        )
        .expect("write");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let error =
            extract(&archive_path, &scratch.dest(), LIMITS, &cancel).expect_err("cancelled");
        assert!(matches!(error, ExtractError::Cancelled), "{error:?}");
    }
}
