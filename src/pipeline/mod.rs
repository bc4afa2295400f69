//! The built-in executor: fetch a source archive, extract it safely, run the build, push and
//! start stages (and an optional postdeploy hook), reporting every line and status through a
//! [`DeploymentSink`] — the same session operations an external pusher writes through
//! (DESIGN.md).
//!
//! This module owns processes, files under the work directory and the image store; it never
//! touches the store or the hub directly.
//!
//! Layout:
//! - [`fetch`] downloads the source archive (or copies an uploaded one), enforcing the
//!   private-address rule, redirect, size and time limits.
//! - [`extract`] unpacks the gzip+tar archive into the deployment's directory and refuses
//!   anything that could write outside it.
//! - [`stages`] runs one stage command in its own process group, streaming its output to the
//!   sink, and packs the default image.
//! - [`executor`] drives one whole deployment through those steps and the status graph; its
//!   [`run`] is the entry point.

pub mod executor;
pub mod extract;
pub mod fetch;
pub mod leftovers;
pub mod stages;

pub use executor::run;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{AppId, DeploymentId, LineNo, NewLine};
use crate::status::Status;

/// What a pipeline reports to. Implemented by the service's pusher session; every call goes
/// through the state machine and the store before it returns.
pub trait DeploymentSink: Send + Sync + 'static {
    /// Appends lines; returns the last durable line number.
    fn append_logs(
        &self,
        lines: Vec<NewLine>,
    ) -> impl Future<Output = Result<LineNo, SinkError>> + Send;
    /// Moves the deployment to `to`; refused transitions are errors and change nothing.
    fn transition(&self, to: Status) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Records that the push stage left an image of `bytes` at the deployment's image path
    /// (`crate::images`), kept as a rollback target if the deployment succeeds; records the
    /// image size too.
    fn keep_image(&self, bytes: u64) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Why a sink refused an operation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where the source archive comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceLocation {
    /// An http(s) URL, subject to the private-address rule.
    Url(String),
    /// An archive already on our disk (an upload made through `POST /v1/sources`).
    LocalFile(PathBuf),
}

/// One deployment for the executor to run. The deployment is already `building`.
#[derive(Clone, Debug)]
pub struct Job {
    pub app_name: String,
    /// The app's id: its build cache is [`PipelineConfig::app_cache_dir`] of it.
    pub app_id: AppId,
    pub deployment_id: DeploymentId,
    pub git_ref: String,
    pub source: SourceLocation,
    pub postdeploy_hook: Option<String>,
    /// A rollback: the deployment whose kept image is linked and started instead of fetching
    /// and building `source`.
    pub rollback_of: Option<DeploymentId>,
}

// The default must be a value the config accepts.
const _: () = assert!(
    PipelineConfig::DEFAULT_MAX_LINE_BYTES > 0
        && PipelineConfig::DEFAULT_MAX_LINE_BYTES <= crate::lines::MAX_LINE_BYTES
);

/// The operator's executor configuration. Stage commands come only from here, never from an API
/// caller. `None` for a stage command means the default described on each field.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Build command (`sh -c`). Default: the source's own `bin/build` if present.
    pub build_cmd: Option<String>,
    /// Push command. Default: pack the built tree into `image_dir/<deployment id>.tar.gz`.
    pub push_cmd: Option<String>,
    /// Start command. Default: the source's own `bin/start` if present.
    pub start_cmd: Option<String>,
    /// Postdeploy hook runner. Default: `sh -c "$DEPLOYD_POSTDEPLOY_HOOK"` in the source dir.
    pub hook_cmd: Option<String>,
    /// The start stage must finish within this (Scalingo: 60 s).
    pub start_timeout: Duration,
    /// The whole deployment must finish within this.
    pub deployment_timeout: Duration,
    /// Fetch: whole-download time limit.
    pub fetch_timeout: Duration,
    /// Fetch: maximum redirects followed.
    pub max_redirects: usize,
    /// Maximum compressed archive size in bytes (checked while streaming).
    pub max_archive_bytes: u64,
    /// Maximum total extracted size in bytes.
    pub max_extracted_bytes: u64,
    /// Maximum number of entries in the archive.
    pub max_archive_entries: u64,
    /// Longer output lines are cut at this many bytes (on a char boundary; the rest of the line
    /// is dropped). At most [`crate::lines::MAX_LINE_BYTES`], the store's limit (the config
    /// refuses more, and takes 0 to mean that limit).
    pub max_line_bytes: usize,
    /// Allow loopback/private source addresses (tests, trusted networks).
    pub allow_private_sources: bool,
    /// Scratch directory; each deployment works in its own subdirectory, removed at the end.
    pub work_dir: PathBuf,
    /// Where the default push stage writes images.
    pub image_dir: PathBuf,
    /// The apps' build caches, one directory per app ([`PipelineConfig::app_cache_dir`]), kept
    /// between deployments and emptied by `DELETE /v1/apps/{app}/caches/deployment`.
    pub cache_dir: PathBuf,
    /// The server's own public URL (`DEPLOYD_URL` for stages).
    pub public_url: String,
    /// At most this many executor deployments past `queued` at once, across apps (`None`: no
    /// limit); the others wait `queued`, first come first served. Enforced by the writer.
    pub max_concurrent: Option<usize>,
}

impl PipelineConfig {
    /// Scalingo gives the start stage 60 s.
    pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
    /// Long enough for a heavy build, short enough that a stuck one is noticed.
    pub const DEFAULT_DEPLOYMENT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
    /// A source archive that takes longer than this to download is unreasonable.
    pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    /// Enough for the usual forge redirects (e.g. GitHub → codeload), few enough to stop loops.
    pub const DEFAULT_MAX_REDIRECTS: usize = 5;
    /// 256 MiB: larger than any reasonable source archive.
    pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 256 * 1024 * 1024;
    /// 1 GiB: bounds the disk a gzip bomb can fill.
    pub const DEFAULT_MAX_EXTRACTED_BYTES: u64 = 1024 * 1024 * 1024;
    /// 100 000 entries: bounds inode use and extraction time.
    pub const DEFAULT_MAX_ARCHIVE_ENTRIES: u64 = 100_000;
    /// 16 KiB, below the store's 64 KiB limit ([`crate::lines::MAX_LINE_BYTES`]): an operator
    /// may raise it up to that limit, not past it.
    pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024;

    /// One build per CPU: builds are CPU-bound, and more at once only makes each slower.
    pub fn default_max_concurrent() -> Option<usize> {
        Some(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
    }

    /// The defaults for a server whose data lives in `data_dir`: no stage command overrides,
    /// the `DEFAULT_*` limits, private sources refused, `work_dir = data_dir/work`,
    /// `image_dir = data_dir/images`, `cache_dir = data_dir/cache` and one build slot per CPU.
    pub fn for_data_dir(data_dir: &Path, public_url: &str) -> Self {
        Self {
            build_cmd: None,
            push_cmd: None,
            start_cmd: None,
            hook_cmd: None,
            start_timeout: Self::DEFAULT_START_TIMEOUT,
            deployment_timeout: Self::DEFAULT_DEPLOYMENT_TIMEOUT,
            fetch_timeout: Self::DEFAULT_FETCH_TIMEOUT,
            max_redirects: Self::DEFAULT_MAX_REDIRECTS,
            max_archive_bytes: Self::DEFAULT_MAX_ARCHIVE_BYTES,
            max_extracted_bytes: Self::DEFAULT_MAX_EXTRACTED_BYTES,
            max_archive_entries: Self::DEFAULT_MAX_ARCHIVE_ENTRIES,
            max_line_bytes: Self::DEFAULT_MAX_LINE_BYTES,
            allow_private_sources: false,
            work_dir: data_dir.join("work"),
            image_dir: data_dir.join("images"),
            cache_dir: data_dir.join("cache"),
            public_url: public_url.to_owned(),
            max_concurrent: Self::default_max_concurrent(),
        }
    }

    /// An app's build cache directory (`DEPLOYD_CACHE_DIR`): by id, so that a rename keeps it.
    pub fn app_cache_dir(&self, app: AppId) -> PathBuf {
        self.cache_dir.join(app.to_string())
    }
}
