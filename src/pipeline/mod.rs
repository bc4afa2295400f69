//! The built-in executor: fetch a source archive, extract it safely, run the build, push and
//! start stages (and an optional postdeploy hook), reporting every line and status through a
//! [`DeploymentSink`] — the same two operations an external pusher uses (DESIGN.md).
//!
//! This module owns processes, files under the work directory and the image store; it never
//! touches the store or the hub directly.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::model::{DeploymentId, LineNo, NewLine};
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
    /// Records the size in bytes of the image produced by the push stage.
    fn set_image_size(&self, bytes: u64) -> impl Future<Output = Result<(), SinkError>> + Send;
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
    pub deployment_id: DeploymentId,
    pub git_ref: String,
    pub source: SourceLocation,
    pub postdeploy_hook: Option<String>,
}

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
    /// Longer output lines are cut at this many bytes (on a char boundary).
    pub max_line_bytes: usize,
    /// Allow loopback/private source addresses (tests, trusted networks).
    pub allow_private_sources: bool,
    /// Scratch directory; each deployment works in its own subdirectory, removed at the end.
    pub work_dir: PathBuf,
    /// Where the default push stage writes images.
    pub image_dir: PathBuf,
    /// The server's own public URL (`DEPLOYD_URL` for stages).
    pub public_url: String,
}
