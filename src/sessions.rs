//! Pusher sessions (DESIGN.md: every deployment is driven by exactly one).
//!
//! [`Session`] is the handle both kinds of session write through: the external pushers' WebSocket
//! (`api::push`) and the built-in executor that [`Executors`] spawns. It is the only way either
//! writes a deployment, and it has one operation per kind of write: [`Session::create`],
//! [`Session::append_logs`] (and its pipelined form [`Session::queue_append`]),
//! [`Session::transition`], [`Session::set_image_size`] and [`Session::lost`]. Each goes through
//! the writer, so both kinds obey the same state machine and reach subscribers the same way.
//! When a session ends before a terminal status, [`Session::lost`] ends the deployment as
//! `aborted` (or `timeout-error` from `starting`).
//!
//! [`Controls`] is how a cancel reaches the session driving a deployment: every session registers
//! while it runs, and the cancel handler signals it once the writer has committed the request
//! (DESIGN.md "Control of a running deployment"). A session honours it by stopping its work and
//! calling [`Session::end_cancelled`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::lines::Lines;
use crate::model::{AppId, Deployment, DeploymentId, Driver, LineNo, NewLine, Pusher};
use crate::pipeline::{self, DeploymentSink, Job, PipelineConfig, SinkError, SourceLocation};
use crate::sources::SourceUrls;
use crate::status::Status;
use crate::store::writer::{Appended, Target, WriteError, Writer};
use crate::store::Store;

/// How often ending a lost session is retried while the store is failing.
const LOST_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// The writing side of one deployment's session.
///
/// Its [`DeploymentSink`] implementation (what the executor writes through) delegates to the
/// inherent methods of the same names, converting only the error.
#[derive(Clone)]
pub struct Session {
    writer: Writer,
    deployment: DeploymentId,
    /// Cluster mode's leader: a kept image is put to the object store before it is recorded.
    files: Option<Arc<dyn crate::cluster::files::ReplicateFiles>>,
}

impl Session {
    /// The session of an existing deployment.
    pub fn new(writer: Writer, deployment: DeploymentId) -> Self {
        Self {
            writer,
            deployment,
            files: None,
        }
    }

    /// This session, replicating its kept image through `files` (`Store::files`).
    fn with_files(mut self, files: Option<Arc<dyn crate::cluster::files::ReplicateFiles>>) -> Self {
        self.files = files;
        self
    }

    /// Creates a deployment of `app` and returns the session that drives it, with the created
    /// deployment (`building`, or `queued` behind another deployment of the app).
    pub async fn create(
        writer: Writer,
        app: AppId,
        git_ref: String,
        pusher: Pusher,
        driver: Driver,
    ) -> Result<(Session, Deployment), WriteError> {
        let deployment = writer
            .create_deployment(app, git_ref, pusher, driver)
            .await?;
        Ok((Session::new(writer, deployment.id), deployment))
    }

    /// Appends lines; returns the last durable line number.
    pub async fn append_logs(&self, lines: impl Into<Lines>) -> Result<LineNo, WriteError> {
        self.writer.append_logs(self.deployment, lines).await
    }

    /// [`Self::append_logs`], pipelined: the lines are queued to the writer when this returns
    /// (so calls made one after the other are committed in that order), and the returned future
    /// gives the result once they are durable. Errs at once when the writer is gone.
    pub async fn queue_append(
        &self,
        lines: impl Into<Lines>,
    ) -> Result<impl Future<Output = Result<Appended, WriteError>> + Send + 'static, WriteError>
    {
        self.writer.queue_append(self.deployment, lines).await
    }

    /// Moves the deployment to `to`; a refused transition changes nothing. Returns the
    /// deployment as stored afterwards.
    pub async fn transition(&self, to: Status) -> Result<Deployment, WriteError> {
        self.writer
            .transition(self.deployment, Target::Status(to), None)
            .await
    }

    /// Records the size in bytes of the image produced by the push stage.
    pub async fn set_image_size(&self, bytes: u64) -> Result<(), WriteError> {
        self.writer.set_image_size(self.deployment, bytes).await
    }

    /// Ends the deployment because its session is gone, with a log line saying why. A deployment
    /// that already ended is left alone. Returns the status it ended in, when this ended it.
    pub async fn lost(&self, why: &str) -> Option<Status> {
        let note = NewLine::system(format!("!     {why}"));
        let mut ended = self
            .writer
            .transition(self.deployment, Target::SessionLost, Some(note.clone()))
            .await;
        // While the store is failing (transient, it recovers by itself) the end is retried, so
        // the deployment does not stay unfinished, blocking its app's queue, until a restart.
        while matches!(ended, Err(WriteError::Unavailable(_)))
            && matches!(
                self.writer.health(),
                crate::store::writer::Health::Failing { .. }
            )
        {
            tokio::time::sleep(LOST_RETRY_PAUSE).await;
            ended = self
                .writer
                .transition(self.deployment, Target::SessionLost, Some(note.clone()))
                .await;
        }
        match ended {
            Ok(record) => {
                tracing::info!(deployment = %self.deployment, status = %record.status, why, "session lost");
                Some(record.status)
            }
            Err(WriteError::Finished { .. } | WriteError::NotFound(_)) => None,
            Err(err) => {
                tracing::warn!(deployment = %self.deployment, error = %err, "ending a lost session");
                None
            }
        }
    }
}

impl Session {
    /// Ends the deployment after a cancel its session honoured: `aborted`, or `timeout-error`
    /// from `starting` (who cancelled was logged by the cancel's own commit). A deployment that
    /// already ended is left alone. Returns the status it ended in, when this ended it.
    pub async fn end_cancelled(&self) -> Option<Status> {
        match self
            .writer
            .transition(self.deployment, Target::SessionLost, None)
            .await
        {
            Ok(record) => {
                tracing::info!(deployment = %self.deployment, status = %record.status, "cancelled");
                Some(record.status)
            }
            Err(WriteError::Finished { .. } | WriteError::NotFound(_)) => None,
            Err(err) => {
                tracing::warn!(deployment = %self.deployment, error = %err, "ending a cancelled deployment");
                None
            }
        }
    }
}

/// The running sessions' cancel signals, by deployment. Cheap to clone.
#[derive(Clone, Default)]
pub struct Controls {
    sessions: Arc<Mutex<HashMap<DeploymentId, watch::Sender<Option<String>>>>>,
}

impl Controls {
    /// Registers the session driving `deployment` until the returned [`Control`] is dropped.
    pub fn register(&self, deployment: DeploymentId) -> Control {
        let (sender, receiver) = watch::channel(None);
        self.lock().insert(deployment, sender);
        Control {
            deployment,
            receiver,
            controls: self.clone(),
        }
    }

    /// Tells the session of `deployment` that `by` cancelled it. False when no session is
    /// registered for it (the caller then ends the deployment itself).
    pub fn cancel(&self, deployment: DeploymentId, by: &str) -> bool {
        match self.lock().get(&deployment) {
            Some(sender) => {
                sender.send_replace(Some(by.to_owned()));
                true
            }
            None => false,
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<DeploymentId, watch::Sender<Option<String>>>> {
        // A panic while holding the lock cannot leave the map half-updated (each operation is
        // one insert, get or remove), so a poisoned lock is still sound to use.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One session's registration in [`Controls`]; deregisters when dropped.
pub struct Control {
    deployment: DeploymentId,
    receiver: watch::Receiver<Option<String>>,
    controls: Controls,
}

impl Control {
    /// Who cancelled, if a cancel was signalled already.
    pub fn requested(&self) -> Option<String> {
        self.receiver.borrow().clone()
    }

    /// Resolves with who cancelled, once a cancel is signalled (at once if it was already).
    pub async fn cancelled(&mut self) -> String {
        loop {
            if let Some(by) = self.receiver.borrow_and_update().clone() {
                return by;
            }
            if self.receiver.changed().await.is_err() {
                // The sender lives in the registry until this Control is dropped, so this
                // cannot happen; never resolving is the safe answer if it did.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // One session drives a deployment, so the entry under its id is this one.
        self.controls.lock().remove(&self.deployment);
    }
}

impl DeploymentSink for Session {
    async fn append_logs(&self, lines: Vec<NewLine>) -> Result<LineNo, SinkError> {
        Session::append_logs(self, lines)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }

    async fn transition(&self, to: Status) -> Result<(), SinkError> {
        Session::transition(self, to)
            .await
            .map(|_| ())
            .map_err(|e| SinkError(e.to_string()))
    }

    async fn keep_image(&self, bytes: u64) -> Result<(), SinkError> {
        let name = crate::cluster::files::image_name(self.deployment);
        if let Err(err) = crate::cluster::files::put_async(self.files.clone(), name).await {
            // Not recorded, so no other node is told of an image it could not find.
            let line = format!("!     Cannot store the image in the cluster: {err}");
            let _ = Session::append_logs(self, vec![NewLine::system(line)]).await;
            return Err(SinkError(err.to_string()));
        }
        self.writer
            .keep_image(self.deployment, bytes)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }
}

/// What the built-in executor sessions need, and the tracker of the running ones. `server`
/// builds it; the API holds it to start a session for each deployment it creates.
#[derive(Clone)]
pub struct Executors {
    writer: Writer,
    /// To read whether a deployment is a rollback (`crate::images`) when it starts.
    store: Store,
    hub: Arc<Hub>,
    pipeline: Arc<PipelineConfig>,
    sources: SourceUrls,
    /// Cancelled when the server shuts down: running pipelines are cancelled.
    shutdown: CancellationToken,
    /// Running sessions, so shutdown can wait for them to end their deployments.
    tracker: TaskTracker,
    /// Every running session's cancel signal (executor and push sockets alike).
    controls: Controls,
}

impl Executors {
    pub fn new(
        writer: Writer,
        store: Store,
        hub: Arc<Hub>,
        pipeline: PipelineConfig,
        sources: SourceUrls,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            writer,
            store,
            hub,
            pipeline: Arc::new(pipeline),
            sources,
            shutdown,
            tracker: TaskTracker::new(),
            controls: Controls::default(),
        }
    }

    /// The cancel signals of every running session (the push sockets register here too).
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    /// Starts the built-in executor for a deployment: it waits while the deployment is queued,
    /// then runs the pipeline. On shutdown the pipeline is cancelled (its processes killed) and
    /// the deployment ends as a lost session. Deployments of external pushers are ignored.
    pub fn spawn(&self, deployment: Deployment, app_name: String) {
        let Driver::Executor {
            source_url,
            postdeploy_hook,
        } = deployment.driver.clone()
        else {
            return;
        };
        let this = self.clone();
        let session = Session::new(self.writer.clone(), deployment.id)
            .with_files(self.store.files().cloned());
        // Registered before this returns, so a cancel made as soon as the trigger answered
        // finds it.
        let mut control = self.controls.register(deployment.id);
        self.tracker.spawn(async move {
            let cancel = this.shutdown.child_token();
            if !this.wait_until_started(deployment.id, &cancel).await {
                // Ended while queued, or shutdown: a queued deployment stays queued and runs
                // after the restart (recovery starts queued executor deployments in order).
                return;
            }
            let source = match this.sources.local_archive(&source_url).await {
                Some(path) => SourceLocation::LocalFile(path),
                None => SourceLocation::Url(source_url),
            };
            let store = this.store.clone();
            let id = deployment.id;
            let rollback_of =
                match tokio::task::spawn_blocking(move || crate::images::rollback_of(&store, id))
                    .await
                {
                    Ok(Ok(target)) => target,
                    Ok(Err(err)) => {
                        // Running it as a normal deployment would build what was not asked for.
                        let _ = session
                            .lost(&format!("cannot read the deployment's image record: {err}"))
                            .await;
                        return;
                    }
                    Err(err) => {
                        let _ = session.lost(&format!("internal error: {err}")).await;
                        return;
                    }
                };
            let job = Job {
                app_name,
                app_id: deployment.app_id,
                deployment_id: deployment.id,
                git_ref: deployment.git_ref.clone(),
                source,
                postdeploy_hook,
                rollback_of,
            };
            let run = pipeline::run(job, &session, &this.pipeline, cancel.clone());
            tokio::pin!(run);
            let mut cancelled_by = None;
            let status = loop {
                tokio::select! {
                    status = &mut run => break status,
                    by = control.cancelled(), if cancelled_by.is_none() => {
                        // The run kills the stage's process group and removes the work
                        // directory, then returns; the deployment is ended below.
                        tracing::info!(deployment = %deployment.id, by, "cancel requested");
                        cancelled_by = Some(by);
                        cancel.cancel();
                    }
                }
            };
            this.replicate_after_run(&deployment, status).await;
            if !status.is_terminal() {
                // The run may have stopped on the writer's refusal before the signal came.
                if cancelled_by.or_else(|| control.requested()).is_some() {
                    let _ = session.end_cancelled().await;
                    return;
                }
                let why = if cancel.is_cancelled() {
                    "deployd shut down during the deployment"
                } else {
                    "the executor stopped before the deployment finished"
                };
                let _ = session.lost(why).await;
            }
        });
    }

    /// Cluster mode: the app's build cache as the run left it goes to the object store, and
    /// the image of a run that did not succeed (removed locally by the run) leaves it. Failures
    /// are logged only: a cache is an optimisation, and the orphan sweep retries the image.
    async fn replicate_after_run(&self, deployment: &Deployment, status: Status) {
        let Some(files) = self.store.files().cloned() else {
            return;
        };
        let cache = crate::cluster::files::cache_name(deployment.app_id);
        if let Err(err) = crate::cluster::files::put_async(Some(files.clone()), cache).await {
            tracing::warn!(deployment = %deployment.id, error = %err, "cannot store the build cache in the cluster");
        }
        if status != Status::Success {
            let image = crate::cluster::files::image_name(deployment.id);
            if let Err(err) = crate::cluster::files::delete_async(Some(files), image).await {
                tracing::warn!(deployment = %deployment.id, error = %err, "cannot delete the image from the cluster");
            }
        }
    }

    /// Stops accepting new sessions and waits until every running one has ended its deployment.
    pub async fn close_and_wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Waits until the deployment leaves `queued`. False if it ended (or shutdown came) first.
    async fn wait_until_started(&self, id: DeploymentId, cancel: &CancellationToken) -> bool {
        let Some(mut watch) = self.hub.watch_status(id) else {
            return false;
        };
        loop {
            let status = *watch.borrow_and_update();
            match status {
                Status::Queued => {}
                Status::Building => return true,
                _ => return false,
            }
            tokio::select! {
                changed = watch.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                () = cancel.cancelled() => return false,
            }
        }
    }
}
