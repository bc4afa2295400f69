//! One whole deployment run: fetch, extract, build, push, start, hook, in that order, with every
//! status change and log line going through the [`DeploymentSink`].
//!
//! Owns the mapping from what happened to which status (DESIGN.md's graph: building →
//! pushing → starting → success, with build-error, aborted, crashed-error, timeout-error and
//! hook-error as the ways out), the deployment-wide deadline and the deployment's work
//! directory, which it always removes at the end. The steps themselves live in
//! [`super::fetch`], [`super::extract`] and [`super::stages`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::extract::{self, ExtractError, ExtractLimits};
use super::fetch::{self, FetchLimits};
use super::stages::{self, Deadline, DeadlineKind, StageCommand, StageOutcome};
use super::{DeploymentSink, Job, PipelineConfig, SinkError};
use crate::model::NewLine;
use crate::status::Status;

/// The default hook runner: the hook text itself, run by a shell in the source dir.
const DEFAULT_HOOK_CMD: &str = "sh -c \"$DEPLOYD_POSTDEPLOY_HOOK\"";
/// Name of the downloaded archive inside the deployment's work directory.
const ARCHIVE_FILE: &str = "source.tar.gz";
/// Name of the extraction directory inside the deployment's work directory.
const EXTRACT_DIR: &str = "extract";

/// Runs `job` to a terminal status and returns it.
///
/// The deployment must already be `building`. Every status change goes through
/// `sink.transition` and every log line through `sink.append_logs`, as produced. When `cancel`
/// fires, all processes are killed and the status the deployment was in is returned (the caller
/// ends the deployment itself); the same happens when the sink refuses a call. The work
/// directory `work_dir/<deployment id>` is removed before returning, whatever happened.
pub async fn run<S: DeploymentSink>(
    job: Job,
    sink: &S,
    config: &PipelineConfig,
    cancel: CancellationToken,
) -> Status {
    let work_dir = absolute(&config.work_dir.join(job.deployment_id.to_string()));
    let mut run = Run {
        job: &job,
        sink,
        config,
        cancel: &cancel,
        deadline: Instant::now() + config.deployment_timeout,
        work_dir: work_dir.clone(),
        status: Status::Building,
    };
    match run.execute().await {
        Ok(()) => {}
        Err(Halt::Cancelled) => {
            tracing::info!(deployment = %job.deployment_id, status = %run.status.as_str(), "deployment run cancelled");
        }
        Err(Halt::Sink(error)) => {
            tracing::warn!(deployment = %job.deployment_id, %error, "sink refused a call; run stopped");
        }
        Err(Halt::Timeout) => {
            let line = format!(
                "!     Deployment timed out after {}",
                describe_duration(config.deployment_timeout)
            );
            run.end_with(line, failure_status(run.status, true)).await;
        }
        Err(Halt::Internal(error)) => {
            tracing::error!(deployment = %job.deployment_id, %error, "internal pipeline error");
            let line = format!("!     Internal error: {error}");
            run.end_with(line, failure_status(run.status, false)).await;
        }
    }
    if let Err(error) = tokio::fs::remove_dir_all(&work_dir).await {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %work_dir.display(), %error, "cannot remove the work directory");
        }
    }
    run.status
}

/// Why a run stopped before choosing a status through the normal path.
#[derive(Debug)]
enum Halt {
    /// The caller cancelled; it ends the deployment itself.
    Cancelled,
    /// The sink refused a call (the deployment was probably ended elsewhere).
    Sink(SinkError),
    /// The deployment deadline passed.
    Timeout,
    /// A bug or a panic in a blocking task.
    Internal(String),
}

impl From<SinkError> for Halt {
    fn from(error: SinkError) -> Self {
        Halt::Sink(error)
    }
}

/// How a stage command ended, as far as the executor cares.
enum StageResult {
    Succeeded,
    Failed(String),
    /// The stage's own timeout (not the deployment's) passed.
    TimedOut,
}

/// The status a deployment ends in when it fails (or times out) while in `current`.
fn failure_status(current: Status, timeout: bool) -> Status {
    match current {
        Status::Pushing => Status::Aborted,
        Status::Starting if timeout => Status::TimeoutError,
        Status::Starting => Status::CrashedError,
        _ => Status::BuildError,
    }
}

struct Run<'a, S> {
    job: &'a Job,
    sink: &'a S,
    config: &'a PipelineConfig,
    cancel: &'a CancellationToken,
    deadline: Instant,
    work_dir: PathBuf,
    /// The deployment's status as far as this run knows (it changes only through `transition`).
    status: Status,
}

impl<S: DeploymentSink> Run<'_, S> {
    async fn execute(&mut self) -> Result<(), Halt> {
        let Some(source_dir) = self.prepare_source().await? else {
            return Ok(());
        };
        let env = self.stage_env(&source_dir);
        if !self.build(&source_dir, &env).await? {
            return Ok(());
        }
        self.transition(Status::Pushing).await?;
        if !self.push(&source_dir, &env).await? {
            return Ok(());
        }
        self.transition(Status::Starting).await?;
        if !self.start(&source_dir, &env).await? {
            return Ok(());
        }
        if let Some(hook) = &self.job.postdeploy_hook {
            let mut env = env.clone();
            env.push(("DEPLOYD_POSTDEPLOY_HOOK".to_owned(), hook.clone()));
            self.system("-----> Running postdeploy hook").await?;
            let command = self.config.hook_cmd.as_deref().unwrap_or(DEFAULT_HOOK_CMD);
            match self.stage(command, &source_dir, env, None).await? {
                StageResult::Succeeded => {}
                StageResult::Failed(reason) => {
                    return self
                        .fail(
                            format!("!     Postdeploy hook failed: {reason}"),
                            Status::HookError,
                        )
                        .await;
                }
                StageResult::TimedOut => {
                    return self
                        .fail(
                            "!     Postdeploy hook timed out".to_owned(),
                            Status::HookError,
                        )
                        .await;
                }
            }
        }
        self.system("-----> Deployment succeeded").await?;
        self.transition(Status::Success).await
    }

    /// Fetches and extracts the source; `None` when that failed and the deployment has ended.
    async fn prepare_source(&mut self) -> Result<Option<PathBuf>, Halt> {
        self.system("-----> Fetching source code").await?;
        if let Err(error) = tokio::fs::create_dir_all(&self.work_dir).await {
            tracing::error!(path = %self.work_dir.display(), %error, "cannot create the work directory");
            self.fail(
                "!     Cannot prepare the work directory".to_owned(),
                Status::BuildError,
            )
            .await?;
            return Ok(None);
        }
        let archive = self.work_dir.join(ARCHIVE_FILE);
        let limits = FetchLimits {
            timeout: self.config.fetch_timeout,
            max_redirects: self.config.max_redirects,
            max_bytes: self.config.max_archive_bytes,
            allow_private: self.config.allow_private_sources,
        };
        match self
            .bounded(fetch::fetch(&self.job.source, &archive, limits))
            .await?
        {
            Ok(bytes) => self.system(format!("-----> Fetched {bytes} bytes")).await?,
            Err(error) => {
                self.fail(
                    format!("!     Fetching source failed: {error}"),
                    Status::BuildError,
                )
                .await?;
                return Ok(None);
            }
        }

        self.system("-----> Extracting source code").await?;
        let dest = self.work_dir.join(EXTRACT_DIR);
        let limits = ExtractLimits {
            max_entries: self.config.max_archive_entries,
            max_bytes: self.config.max_extracted_bytes,
        };
        let extracted = self
            .blocking(move |stop| extract::extract(&archive, &dest, limits, stop))
            .await?;
        match extracted {
            Ok(dir) => Ok(Some(dir)),
            Err(ExtractError::NotSingleRootFolder) => {
                let line = "!     The archive must contain a single folder at its root".to_owned();
                self.fail(line, Status::BuildError).await?;
                Ok(None)
            }
            Err(error) => {
                self.fail(
                    format!("!     Extracting source failed: {error}"),
                    Status::BuildError,
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// The build stage; `false` when it failed and the deployment has ended.
    async fn build(&mut self, source_dir: &Path, env: &[(String, String)]) -> Result<bool, Halt> {
        let command = match &self.config.build_cmd {
            Some(command) => {
                self.system("-----> Running build command").await?;
                command.clone()
            }
            None if is_file(&source_dir.join("bin/build")).await => {
                self.system("-----> Running bin/build").await?;
                "./bin/build".to_owned()
            }
            None => {
                self.system("-----> No bin/build found, skipping build")
                    .await?;
                return Ok(true);
            }
        };
        match self.stage(&command, source_dir, env.to_vec(), None).await? {
            StageResult::Succeeded => Ok(true),
            StageResult::Failed(reason) => {
                self.fail(format!("!     Build failed: {reason}"), Status::BuildError)
                    .await?;
                Ok(false)
            }
            StageResult::TimedOut => {
                self.fail("!     Build timed out".to_owned(), Status::BuildError)
                    .await?;
                Ok(false)
            }
        }
    }

    /// The push stage; `false` when it failed and the deployment has ended.
    async fn push(&mut self, source_dir: &Path, env: &[(String, String)]) -> Result<bool, Halt> {
        let image = self.image_path();
        if let Some(command) = &self.config.push_cmd {
            self.system("-----> Running push command").await?;
            match self.stage(command, source_dir, env.to_vec(), None).await? {
                StageResult::Succeeded => {}
                StageResult::Failed(reason) => {
                    self.fail(format!("!     Push failed: {reason}"), Status::Aborted)
                        .await?;
                    return Ok(false);
                }
                StageResult::TimedOut => {
                    self.fail("!     Push timed out".to_owned(), Status::Aborted)
                        .await?;
                    return Ok(false);
                }
            }
            // A custom push may or may not write the image where we suggested.
            if let Ok(meta) = tokio::fs::metadata(&image).await {
                self.sink.set_image_size(meta.len()).await?;
            }
            return Ok(true);
        }
        let source = source_dir.to_path_buf();
        let packed = self
            .blocking(move |stop| stages::pack_image(&source, &image, stop))
            .await?;
        match packed {
            Ok(bytes) => {
                self.system(format!("-----> Pushing image ({bytes} bytes)"))
                    .await?;
                self.sink.set_image_size(bytes).await?;
                Ok(true)
            }
            Err(error) => {
                tracing::error!(%error, "cannot pack the image");
                self.fail(
                    format!("!     Pushing image failed: {error}"),
                    Status::Aborted,
                )
                .await?;
                Ok(false)
            }
        }
    }

    /// The start stage; `false` when it failed and the deployment has ended.
    async fn start(&mut self, source_dir: &Path, env: &[(String, String)]) -> Result<bool, Halt> {
        let command = match &self.config.start_cmd {
            Some(command) => {
                self.system("-----> Running start command").await?;
                command.clone()
            }
            None if is_file(&source_dir.join("bin/start")).await => {
                self.system("-----> Running bin/start").await?;
                "./bin/start".to_owned()
            }
            None => {
                self.system("-----> No bin/start found, nothing to start")
                    .await?;
                return Ok(true);
            }
        };
        let timeout = self.config.start_timeout;
        match self
            .stage(&command, source_dir, env.to_vec(), Some(timeout))
            .await?
        {
            StageResult::Succeeded => Ok(true),
            StageResult::Failed(reason) => {
                self.fail(
                    format!("!     Start failed: {reason}"),
                    Status::CrashedError,
                )
                .await?;
                Ok(false)
            }
            StageResult::TimedOut => {
                let line = format!(
                    "!     Start did not finish within {}",
                    describe_duration(timeout)
                );
                self.fail(line, Status::TimeoutError).await?;
                Ok(false)
            }
        }
    }

    /// Runs one stage command, mapping cancellation, sink failures and the deployment deadline
    /// to [`Halt`].
    async fn stage(
        &mut self,
        command: &str,
        dir: &Path,
        env: Vec<(String, String)>,
        stage_timeout: Option<Duration>,
    ) -> Result<StageResult, Halt> {
        let stage = StageCommand {
            command: command.to_owned(),
            dir: dir.to_path_buf(),
            env,
            max_line_bytes: self.config.max_line_bytes,
        };
        let deadline = Deadline::earliest(self.deadline, stage_timeout);
        match stages::run_stage(&stage, self.sink, deadline, self.cancel).await {
            Ok(StageOutcome::Exited(status)) if status.success() => Ok(StageResult::Succeeded),
            Ok(StageOutcome::Exited(status)) => Ok(StageResult::Failed(describe_exit(status))),
            Ok(StageOutcome::TimedOut(DeadlineKind::Stage)) => Ok(StageResult::TimedOut),
            Ok(StageOutcome::TimedOut(DeadlineKind::Deployment)) => Err(Halt::Timeout),
            Ok(StageOutcome::Cancelled) => Err(Halt::Cancelled),
            Err(stages::StageError::Sink(error)) => Err(Halt::Sink(error)),
            Err(error) => Ok(StageResult::Failed(error.to_string())),
        }
    }

    /// Runs `work` until it finishes, the run is cancelled or the deployment deadline passes
    /// (`work` is then dropped).
    async fn bounded<T>(&self, work: impl Future<Output = T>) -> Result<T, Halt> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Halt::Cancelled),
            _ = tokio::time::sleep_until(self.deadline) => Err(Halt::Timeout),
            output = work => Ok(output),
        }
    }

    /// Runs blocking `work` on the blocking pool. On cancellation or deadline, `work`'s stop
    /// token is cancelled and it is awaited (it polls the token), so it never writes into the
    /// work directory after the run has removed it.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&CancellationToken) -> T + Send + 'static,
    ) -> Result<T, Halt> {
        let stop = CancellationToken::new();
        let task_stop = stop.clone();
        let mut task = tokio::task::spawn_blocking(move || work(&task_stop));
        let halt = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Halt::Cancelled,
            _ = tokio::time::sleep_until(self.deadline) => Halt::Timeout,
            joined = &mut task => {
                return joined.map_err(|error| Halt::Internal(format!("blocking task failed: {error}")));
            }
        };
        stop.cancel();
        // The result no longer matters; only that the task has stopped touching files.
        task.await.ok();
        Err(halt)
    }

    fn stage_env(&self, source_dir: &Path) -> Vec<(String, String)> {
        let port = free_port().map(|p| p.to_string()).unwrap_or_default();
        vec![
            ("DEPLOYD_APP".to_owned(), self.job.app_name.clone()),
            (
                "DEPLOYD_DEPLOYMENT_ID".to_owned(),
                self.job.deployment_id.to_string(),
            ),
            ("DEPLOYD_GIT_REF".to_owned(), self.job.git_ref.clone()),
            (
                "DEPLOYD_SOURCE_DIR".to_owned(),
                source_dir.display().to_string(),
            ),
            (
                "DEPLOYD_IMAGE_PATH".to_owned(),
                self.image_path().display().to_string(),
            ),
            ("DEPLOYD_URL".to_owned(), self.config.public_url.clone()),
            ("PORT".to_owned(), port),
        ]
    }

    fn image_path(&self) -> PathBuf {
        absolute(&self.config.image_dir).join(format!("{}.tar.gz", self.job.deployment_id))
    }

    async fn system(&self, text: impl Into<String>) -> Result<(), Halt> {
        self.sink.append_logs(vec![NewLine::system(text)]).await?;
        Ok(())
    }

    async fn transition(&mut self, to: Status) -> Result<(), Halt> {
        self.sink.transition(to).await?;
        self.status = to;
        Ok(())
    }

    /// Logs `line`, then moves to the failure status `to` (logs first: a terminal deployment may
    /// refuse lines).
    async fn fail(&mut self, line: String, to: Status) -> Result<(), Halt> {
        self.system(line).await?;
        self.transition(to).await
    }

    /// [`Self::fail`] for the end of a halted run, where a refusal can only be recorded.
    async fn end_with(&mut self, line: String, to: Status) {
        if self.status.is_terminal() {
            return;
        }
        if let Err(Halt::Sink(error)) = self.fail(line, to).await {
            tracing::warn!(deployment = %self.job.deployment_id, %error, "cannot record the failure");
        }
    }
}

/// A free TCP port for `PORT`, found by binding 127.0.0.1:0 (another process could take it
/// before the app binds it; that is the usual PaaS contract's risk too).
fn free_port() -> Option<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .ok()
}

async fn is_file(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .is_ok_and(|meta| meta.is_file())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended abnormally".to_owned(),
    }
}

fn describe_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}
