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
use crate::model::{DeploymentId, NewLine};
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
        in_hook: false,
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
            let to = run.failure_status(true);
            run.end_with(line, to).await;
        }
        Err(Halt::Internal(error)) => {
            tracing::error!(deployment = %job.deployment_id, %error, "internal pipeline error");
            let line = format!("!     Internal error: {error}");
            let to = run.failure_status(false);
            run.end_with(line, to).await;
        }
    }
    if let Err(error) = tokio::fs::remove_dir_all(&work_dir).await {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %work_dir.display(), %error, "cannot remove the work directory");
        }
    }
    if run.status != Status::Success {
        // Only a successful deployment's image is kept (a rollback target); the writer dropped
        // or will drop its record when the deployment ends.
        let image = run.image_path();
        if let Err(error) = tokio::fs::remove_file(&image).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %image.display(), %error, "cannot remove the image");
            }
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
    /// The postdeploy hook is running (the status is still `starting`).
    in_hook: bool,
}

impl<S: DeploymentSink> Run<'_, S> {
    /// The status a halted run ends in. The hook runs while the deployment is `starting`, but
    /// any failure during it (the deployment deadline included) is the hook's, not the start's.
    fn failure_status(&self, timeout: bool) -> Status {
        if self.in_hook {
            Status::HookError
        } else {
            failure_status(self.status, timeout)
        }
    }

    async fn execute(&mut self) -> Result<(), Halt> {
        let prepared = match self.job.rollback_of {
            Some(target) => self.prepare_rollback(target).await?,
            None => self.prepare_source().await?,
        };
        let Some(source_dir) = prepared else {
            return Ok(());
        };
        let env = self.stage_env(&source_dir);
        // The cache is kept between the app's deployments; a reset renames it away, so it may
        // be missing here (the first deployment, or just after a reset).
        let cache = absolute(&self.config.app_cache_dir(self.job.app_id));
        if let Err(err) = tokio::fs::create_dir_all(&cache).await {
            self.system(format!("warning: no build cache ({err})"))
                .await?;
        }
        // A rollback's tree is the target's built one: nothing to build.
        if self.job.rollback_of.is_none() && !self.build(&source_dir, &env).await? {
            return Ok(());
        }
        self.transition(Status::Pushing).await?;
        let pushed = match self.job.rollback_of {
            Some(target) => self.push_kept(target).await?,
            None => self.push(&source_dir, &env).await?,
        };
        if !pushed {
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
            self.in_hook = true;
            let result = self.stage(command, &source_dir, env, None).await?;
            self.in_hook = false;
            match result {
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

    /// Creates the work directory; `false` when that failed and the deployment has ended.
    async fn make_work_dir(&mut self) -> Result<bool, Halt> {
        if let Err(error) = tokio::fs::create_dir_all(&self.work_dir).await {
            tracing::error!(path = %self.work_dir.display(), %error, "cannot create the work directory");
            self.fail(
                "!     Cannot prepare the work directory".to_owned(),
                Status::BuildError,
            )
            .await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// A rollback's source: the target's kept image, hard-linked as this deployment's own image
    /// (never re-packed) and extracted into the work directory. `None` when that failed and
    /// the deployment has ended.
    async fn prepare_rollback(&mut self, target: DeploymentId) -> Result<Option<PathBuf>, Halt> {
        self.system(format!(
            "-----> Rolling back to {target} ({})",
            self.job.git_ref
        ))
        .await?;
        if !self.make_work_dir().await? {
            return Ok(None);
        }
        let kept = crate::images::path(&absolute(&self.config.image_dir), target);
        let own = self.image_path();
        let linked = self
            .blocking(move |_| {
                // A link left by a run cut short (a restart) is made again from the target.
                match std::fs::remove_file(&own) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error)
                    }
                    _ => {}
                }
                std::fs::hard_link(&kept, &own)
            })
            .await?;
        if let Err(error) = linked {
            let line = if error.kind() == std::io::ErrorKind::NotFound {
                format!("!     The image of deployment {target} is no longer kept")
            } else {
                format!("!     Cannot use the image of deployment {target}: {error}")
            };
            self.fail(line, Status::BuildError).await?;
            return Ok(None);
        }
        self.system("-----> Extracting the kept image").await?;
        let image = self.image_path();
        let dest = self.work_dir.join(EXTRACT_DIR);
        // Our own image, packed from a tree that fitted on this disk: the source archive's
        // limits do not apply (the path and link rules do).
        let limits = ExtractLimits {
            max_entries: u64::MAX,
            max_bytes: u64::MAX,
        };
        let extracted = self
            .blocking(move |stop| extract::extract_image(&image, &dest, limits, stop))
            .await?;
        match extracted {
            Ok(dir) => Ok(Some(dir)),
            Err(error) => {
                self.fail(
                    format!("!     Extracting the kept image failed: {error}"),
                    Status::BuildError,
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// A rollback's push: its image is the target's, already linked; it is recorded as this
    /// deployment's, without running a push command (which could rewrite the shared file).
    async fn push_kept(&mut self, target: DeploymentId) -> Result<bool, Halt> {
        let bytes = match tokio::fs::metadata(self.image_path()).await {
            Ok(meta) => meta.len(),
            Err(error) => {
                self.fail(
                    format!("!     Pushing the kept image failed: {error}"),
                    Status::Aborted,
                )
                .await?;
                return Ok(false);
            }
        };
        self.system(format!(
            "-----> Pushing the kept image of {target} ({bytes} bytes)"
        ))
        .await?;
        self.sink.keep_image(bytes).await?;
        Ok(true)
    }

    /// Fetches and extracts the source; `None` when that failed and the deployment has ended.
    async fn prepare_source(&mut self) -> Result<Option<PathBuf>, Halt> {
        self.system("-----> Fetching source code").await?;
        if !self.make_work_dir().await? {
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
            // So a custom push can write where DEPLOYD_IMAGE_PATH points; if this fails, the
            // command will say so itself.
            if let Some(dir) = image.parent() {
                tokio::fs::create_dir_all(dir).await.ok();
            }
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
                self.sink.keep_image(meta.len()).await?;
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
                self.sink.keep_image(bytes).await?;
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
            pgid_file: Some(self.work_dir.join(super::leftovers::PGID_FILE)),
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
            (
                "DEPLOYD_CACHE_DIR".to_owned(),
                absolute(&self.config.app_cache_dir(self.job.app_id))
                    .display()
                    .to_string(),
            ),
            ("PORT".to_owned(), port),
        ]
    }

    fn image_path(&self) -> PathBuf {
        crate::images::path(&absolute(&self.config.image_dir), self.job.deployment_id)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeploymentId, LogStream};
    use crate::pipeline::SourceLocation;
    use crate::testing::{
        archive, process_alive, raw_response, ArchiveServer, Item, RecordingSink,
    };

    struct Fixture {
        dir: tempfile::TempDir,
        config: PipelineConfig,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = PipelineConfig::for_data_dir(dir.path(), "https://deployd.test");
            config.start_timeout = Duration::from_secs(1);
            config.deployment_timeout = Duration::from_secs(5);
            config.fetch_timeout = Duration::from_secs(2);
            Self { dir, config }
        }

        fn job(&self, source: SourceLocation) -> Job {
            Job {
                app_name: "my-app".to_owned(),
                app_id: crate::model::AppId::generate(),
                deployment_id: DeploymentId::generate(),
                git_ref: "main".to_owned(),
                source,
                postdeploy_hook: None,
                rollback_of: None,
            }
        }

        fn local_job(&self, bytes: &[u8]) -> Job {
            let path = self.dir.path().join("upload.tar.gz");
            std::fs::write(&path, bytes).expect("write upload");
            self.job(SourceLocation::LocalFile(path))
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }

        async fn run(&self, job: Job) -> (Status, RecordingSink) {
            let sink = RecordingSink::new();
            let status = self.run_with(job, &sink, CancellationToken::new()).await;
            (status, sink)
        }

        async fn run_with(
            &self,
            job: Job,
            sink: &RecordingSink,
            cancel: CancellationToken,
        ) -> Status {
            let work = self.config.work_dir.join(job.deployment_id.to_string());
            let status = run(job, sink, &self.config, cancel).await;
            assert!(!work.exists(), "work directory left behind");
            status
        }
    }

    /// An app archive with optional `bin/build` and `bin/start` scripts.
    fn app(build: Option<&str>, start: Option<&str>) -> Vec<u8> {
        crate::testing::app_scripts(build, start)
    }

    async fn assert_dead(pidfile: &str) {
        let pids = std::fs::read_to_string(pidfile).expect("pidfile");
        for pid in pids.split_whitespace() {
            let pid: u32 = pid.parse().expect("pid");
            let mut tries = 0;
            while process_alive(pid) && tries < 50 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                tries += 1;
            }
            assert!(!process_alive(pid), "process {pid} is still running");
        }
    }

    #[tokio::test]
    async fn happy_path_runs_every_stage_and_streams_output_in_order() {
        let fixture = Fixture::new();
        let build =
            "#!/bin/sh\necho 'build 1'\necho 'oops' >&2\necho 'build 2'\nprintf 'no newline'\n";
        let start = "#!/bin/sh\necho \"app=$DEPLOYD_APP ref=$DEPLOYD_GIT_REF url=$DEPLOYD_URL\"\n\
                     test -n \"$PORT\" && echo port-set\ntest -f \"$DEPLOYD_SOURCE_DIR/README\" && echo source-ok\n\
                     test -f \"$DEPLOYD_IMAGE_PATH\" && echo image-ok\n";
        let job = fixture.local_job(&app(Some(build), Some(start)));
        let id = job.deployment_id;
        let (status, sink) = fixture.run(job).await;

        assert_eq!(status, Status::Success);
        assert_eq!(
            sink.transitions(),
            vec![Status::Pushing, Status::Starting, Status::Success]
        );
        assert_eq!(
            sink.texts(LogStream::Stdout),
            vec![
                "build 1",
                "build 2",
                "no newline",
                "app=my-app ref=main url=https://deployd.test",
                "port-set",
                "source-ok",
                "image-ok"
            ]
        );
        assert_eq!(sink.texts(LogStream::Stderr), vec!["oops"]);
        let system = sink.texts(LogStream::System);
        assert_eq!(
            system.first().map(String::as_str),
            Some("-----> Fetching source code")
        );
        assert!(sink.has_system_line("-----> Running bin/build"));
        assert!(sink.has_system_line("-----> Running bin/start"));
        assert_eq!(
            system.last().map(String::as_str),
            Some("-----> Deployment succeeded")
        );

        let image = fixture.config.image_dir.join(format!("{id}.tar.gz"));
        let size = std::fs::metadata(&image).expect("image").len();
        assert_eq!(sink.inner.lock().expect("lock").image_size, Some(size));
        assert!(sink.has_system_line(&format!("-----> Pushing image ({size} bytes)")));
    }

    #[tokio::test]
    async fn missing_scripts_are_skipped() {
        let fixture = Fixture::new();
        let (status, sink) = fixture.run(fixture.local_job(&app(None, None))).await;
        assert_eq!(status, Status::Success);
        assert!(sink.has_system_line("-----> No bin/build found, skipping build"));
    }

    #[tokio::test]
    async fn output_is_streamed_while_the_stage_runs() {
        let fixture = Fixture::new();
        let build = "#!/bin/sh\necho first\nsleep 0.3\necho second\n";
        let (status, sink) = fixture
            .run(fixture.local_job(&app(Some(build), None)))
            .await;
        assert_eq!(status, Status::Success);
        let recorded = sink.inner.lock().expect("lock");
        let arrival = |text: &str| {
            recorded
                .batches
                .iter()
                .find(|(_, batch)| batch.iter().any(|line| line.text == text))
                .map(|(at, _)| *at)
                .expect("line recorded")
        };
        assert!(arrival("second") - arrival("first") >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn long_lines_are_cut() {
        let mut fixture = Fixture::new();
        fixture.config.max_line_bytes = 10;
        fixture.config.build_cmd = Some("printf 'é%.0s' $(seq 20); echo; echo short".to_owned());
        let (status, sink) = fixture.run(fixture.local_job(&app(None, None))).await;
        assert_eq!(status, Status::Success);
        assert_eq!(sink.texts(LogStream::Stdout), vec!["ééééé", "short"]);
    }

    #[tokio::test]
    async fn failing_build_ends_in_build_error() {
        let fixture = Fixture::new();
        let build = "#!/bin/sh\necho compiling\nexit 2\n";
        let (status, sink) = fixture
            .run(fixture.local_job(&app(Some(build), None)))
            .await;
        assert_eq!(status, Status::BuildError);
        assert_eq!(sink.transitions(), vec![Status::BuildError]);
        assert!(sink.has_system_line("!     Build failed: exited with status 2"));
    }

    #[tokio::test]
    async fn failing_push_ends_in_aborted() {
        let mut fixture = Fixture::new();
        fixture.config.push_cmd = Some("echo 'registry down' >&2; exit 3".to_owned());
        let (status, sink) = fixture.run(fixture.local_job(&app(None, None))).await;
        assert_eq!(status, Status::Aborted);
        assert_eq!(sink.transitions(), vec![Status::Pushing, Status::Aborted]);
        assert_eq!(sink.texts(LogStream::Stderr), vec!["registry down"]);
    }

    #[tokio::test]
    async fn crashing_start_ends_in_crashed_error() {
        let fixture = Fixture::new();
        let start = "#!/bin/sh\necho 'cannot bind'\nexit 1\n";
        let (status, sink) = fixture
            .run(fixture.local_job(&app(None, Some(start))))
            .await;
        assert_eq!(status, Status::CrashedError);
        assert_eq!(
            sink.transitions(),
            vec![Status::Pushing, Status::Starting, Status::CrashedError]
        );
        assert!(sink.has_system_line("!     Start failed: exited with status 1"));
    }

    #[tokio::test]
    async fn slow_start_is_killed_and_ends_in_timeout_error() {
        let mut fixture = Fixture::new();
        let pidfile = fixture.path("start.pids");
        fixture.config.start_timeout = Duration::from_millis(300);
        fixture.config.start_cmd = Some(format!(
            "sleep 30 & echo $! > {pidfile}; echo $$ >> {pidfile}; wait"
        ));
        let started = Instant::now();
        let (status, sink) = fixture.run(fixture.local_job(&app(None, None))).await;
        assert_eq!(status, Status::TimeoutError);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(sink.has_system_line("!     Start did not finish within 300 ms"));
        assert_dead(&pidfile).await;
    }

    #[tokio::test]
    async fn hook_runs_after_start_and_its_failure_is_a_hook_error() {
        let fixture = Fixture::new();
        let mut job = fixture.local_job(&app(None, None));
        job.postdeploy_hook = Some("echo migrating && exit 4".to_owned());
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::HookError);
        assert_eq!(
            sink.transitions(),
            vec![Status::Pushing, Status::Starting, Status::HookError]
        );
        assert!(sink.has_system_line("-----> Running postdeploy hook"));
        assert!(sink.has_system_line("!     Postdeploy hook failed: exited with status 4"));
        assert_eq!(sink.texts(LogStream::Stdout), vec!["migrating"]);

        let mut job = fixture.local_job(&app(None, None));
        job.postdeploy_hook = Some("echo migrated".to_owned());
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::Success);
        assert_eq!(sink.texts(LogStream::Stdout), vec!["migrated"]);
    }

    /// Regression: the deployment deadline passing during the hook (status still `starting`)
    /// ended the deployment as `timeout-error`, blaming the start.
    #[tokio::test]
    async fn deployment_timeout_during_the_hook_is_a_hook_error() {
        let mut fixture = Fixture::new();
        fixture.config.deployment_timeout = Duration::from_millis(500);
        let mut job = fixture.local_job(&app(None, None));
        job.postdeploy_hook = Some("sleep 30".to_owned());
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::HookError);
        assert!(sink.has_system_line("!     Deployment timed out after 500 ms"));
    }

    #[tokio::test]
    async fn deployment_timeout_kills_the_build() {
        let mut fixture = Fixture::new();
        let pidfile = fixture.path("build.pids");
        fixture.config.deployment_timeout = Duration::from_millis(300);
        fixture.config.build_cmd = Some(format!("echo $$ > {pidfile}; sleep 30"));
        let (status, sink) = fixture.run(fixture.local_job(&app(None, None))).await;
        assert_eq!(status, Status::BuildError);
        assert!(sink.has_system_line("!     Deployment timed out after 300 ms"));
        assert_dead(&pidfile).await;
    }

    #[tokio::test]
    async fn cancel_kills_the_stage_and_returns_the_current_status() {
        let mut fixture = Fixture::new();
        let pidfile = fixture.path("build.pids");
        fixture.config.build_cmd = Some(format!("echo $$ > {pidfile}; echo started; sleep 30"));
        let sink = RecordingSink::new();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            trigger.cancel();
        });
        let started = Instant::now();
        let status = fixture
            .run_with(fixture.local_job(&app(None, None)), &sink, cancel)
            .await;
        assert_eq!(status, Status::Building);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(sink.transitions().is_empty());
        assert_dead(&pidfile).await;
    }

    #[tokio::test]
    async fn sink_refusal_stops_the_run() {
        let mut fixture = Fixture::new();
        let pidfile = fixture.path("build.pids");
        fixture.config.build_cmd = Some(format!(
            "echo $$ > {pidfile}; while :; do echo tick; sleep 0.01; done"
        ));
        let sink = RecordingSink::new();
        sink.inner.lock().expect("lock").refuse_after_lines = Some(5);
        let started = Instant::now();
        let status = fixture
            .run_with(
                fixture.local_job(&app(None, None)),
                &sink,
                CancellationToken::new(),
            )
            .await;
        assert_eq!(status, Status::Building);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_dead(&pidfile).await;
    }

    #[tokio::test]
    async fn hostile_archive_ends_in_build_error() {
        let fixture = Fixture::new();
        let job = fixture.local_job(&archive(&[
            Item::Dir("app/"),
            Item::File("app/../../../pwned", b"x"),
        ]));
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::BuildError);
        assert!(sink.has_system_line("!     Extracting source failed: entry"));
        assert!(!fixture.dir.path().join("pwned").exists());
    }

    #[tokio::test]
    async fn archive_without_single_root_folder_ends_in_build_error() {
        let fixture = Fixture::new();
        let job = fixture.local_job(&archive(&[Item::File("README", b"x"), Item::Dir("app/")]));
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::BuildError);
        assert!(sink
            .texts(LogStream::System)
            .contains(&"!     The archive must contain a single folder at its root".to_owned()));
    }

    #[tokio::test]
    async fn oversized_upload_is_refused() {
        let mut fixture = Fixture::new();
        fixture.config.max_archive_bytes = 100;
        let (status, sink) = fixture.run(fixture.local_job(&app(None, None))).await;
        assert_eq!(status, Status::BuildError);
        assert!(sink.has_system_line(
            "!     Fetching source failed: archive larger than the limit of 100 bytes"
        ));
    }

    #[tokio::test]
    async fn private_addresses_are_refused_by_default() {
        let fixture = Fixture::new();
        let server = ArchiveServer::start().await;
        let url = server.serve_raw("/app.tar.gz", raw_response("200 OK", "", b""));
        let job = fixture.job(SourceLocation::Url(url));
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::BuildError);
        assert!(
            sink.has_system_line("non-public address 127.0.0.1"),
            "{:?}",
            sink.lines()
        );
        assert_eq!(server.requests().len(), 0);

        let job = fixture.job(SourceLocation::Url(
            "http://localhost:1/app.tar.gz".to_owned(),
        ));
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::BuildError);
        assert!(
            sink.has_system_line("non-public address"),
            "{:?}",
            sink.lines()
        );
    }

    #[tokio::test]
    async fn only_http_schemes_are_accepted() {
        let fixture = Fixture::new();
        let job = fixture.job(SourceLocation::Url("file:///etc/passwd".to_owned()));
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::BuildError);
        assert!(sink.has_system_line("unsupported URL scheme \"file\""));
    }

    #[tokio::test]
    async fn archive_is_downloaded_through_a_redirect_when_private_sources_are_allowed() {
        let mut fixture = Fixture::new();
        fixture.config.allow_private_sources = true;
        let body = app(None, Some("#!/bin/sh\necho started\n"));
        let server = ArchiveServer::start().await;
        let addr = server.addr;
        server.serve_raw(
            "/latest",
            raw_response(
                "302 Found",
                "Location: /app.tar.gz\r\nContent-Length: 0\r\n",
                b"",
            ),
        );
        server.serve("/app.tar.gz", body);
        let job = fixture.job(SourceLocation::Url(format!("http://{addr}/latest")));
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::Success, "{:?}", sink.lines());
        assert_eq!(sink.texts(LogStream::Stdout), vec!["started"]);

        let job = fixture.job(SourceLocation::Url(format!("http://{addr}/missing")));
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::BuildError);
        assert!(sink.has_system_line(&format!(
            "!     Fetching source failed: HTTP 404 Not Found from http://{addr}/missing"
        )));
    }

    #[tokio::test]
    async fn redirect_loop_stops_at_max_redirects() {
        let mut fixture = Fixture::new();
        fixture.config.allow_private_sources = true;
        fixture.config.max_redirects = 3;
        let server = ArchiveServer::start().await;
        let url = server.serve_raw(
            "/loop",
            raw_response("302 Found", "Location: /loop\r\nContent-Length: 0\r\n", b""),
        );
        let job = fixture.job(SourceLocation::Url(url));
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::BuildError);
        assert!(sink.has_system_line("more than 3 redirects"));
        assert_eq!(server.requests().len(), 4);
    }

    #[tokio::test]
    async fn oversized_downloads_are_stopped() {
        let mut fixture = Fixture::new();
        fixture.config.allow_private_sources = true;
        fixture.config.max_archive_bytes = 64 * 1024;
        let big = vec![b'x'; 4 * 1024 * 1024];
        let server = ArchiveServer::start().await;
        let addr = server.addr;
        // No Content-Length: the limit must be enforced while streaming.
        server.serve_raw("/streamed", raw_response("200 OK", "", &big));
        server.serve_raw(
            "/declared",
            raw_response("200 OK", "Content-Length: 999999999\r\n", b"tiny"),
        );
        for path in ["/streamed", "/declared"] {
            let job = fixture.job(SourceLocation::Url(format!("http://{addr}{path}")));
            let (status, sink) = fixture.run(job).await;
            assert_eq!(status, Status::BuildError, "{path}");
            assert!(
                sink.has_system_line("archive larger than the limit of 65536 bytes"),
                "{path}: {:?}",
                sink.lines()
            );
        }
    }

    #[tokio::test]
    async fn slow_download_hits_the_fetch_timeout() {
        let mut fixture = Fixture::new();
        fixture.config.allow_private_sources = true;
        fixture.config.fetch_timeout = Duration::from_millis(300);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and never answers.
        let _server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let job = fixture.job(SourceLocation::Url(format!("http://{addr}/slow")));
        let (status, sink) = fixture.run(job).await;
        assert_eq!(status, Status::BuildError);
        assert!(sink.has_system_line("download took longer than"));
    }
}
