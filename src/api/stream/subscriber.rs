//! One authenticated subscriber's I/O loop: it takes live hub events, replays and catches up
//! from the store, and writes frames to its socket, doing what its [`Cursor`] decides.
//!
//! Writes are paced ([`FLUSH_INTERVAL`]) and batched ([`MAX_EVENTS_PER_FLUSH`]); a socket that
//! accepts nothing for [`WRITE_STALL_TIMEOUT`] is dropped. It holds at most one store read
//! (≤ [`MAX_READ_BYTES`] of frames) plus the socket's write buffer. It decides nothing about
//! deduplication itself (that is `cursor`'s, which is pure and tested apart) and renders no frame
//! (that is `frames`'s).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::conn::{ClientMessage, Conn, WRITE_BUFFER_BYTES};
use super::cursor::{in_replay_window, CatchUpStep, Cursor, Live, Logs, Step};
use super::frames::{
    event_batches, event_frames, log_batches_from, new_frame, ping_frame, read_log_frames,
    status_text, text_frame, LogForm, WireFrames,
};
#[cfg(doc)]
use super::MAX_READ_BYTES;
use super::{read_error, End, Resume};
use crate::api::AppState;
use crate::config::NewEventForm;
use crate::hub::{Event, EventKind};
use crate::model::{AppId, Deployment, DeploymentId, LineNo};

/// While events keep coming, a subscriber writes to its socket at most once per this interval
/// (the first event after a quiet spell goes out at once). Each write and wakeup costs a few
/// microseconds here whatever it carries, so at 1000 one-line events per second and 1000
/// subscribers, writing each event on its own is a million writes per second: more than two
/// cores. Pacing makes it 200 000, for at most this much added latency.
const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// Newest deployments of the app looked at for the replay after auth. There is at most one
/// running deployment per app (plus the queued ones behind it), so this is plenty.
const REPLAY_SCAN_LIMIT: u64 = 32;

/// Live events written to the socket before one flush: batching writes is what makes fan-out to
/// thousands of sockets cheap, and this bounds the latency a batch adds.
const MAX_EVENTS_PER_FLUSH: usize = 64;

/// A subscriber whose socket accepts no byte for this long is disconnected (a dead peer, or a
/// client that stopped reading for good). Until then it only costs its bounded buffers.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// One authenticated subscriber: writes replay, catch-up and live frames to its socket.
pub(super) struct Subscriber<'a, IO> {
    state: AppState,
    app: AppId,
    conn: &'a mut Conn<IO>,
    cursor: Cursor,
    /// `log` frames or `log_batch` frames (the `batch` option).
    form: LogForm,
    /// Live events queued since the last write, added to the shared delivery counter once per
    /// write: a shared atomic per event per subscriber is a cache line bouncing between the
    /// cores a million times a second at 1000 subscribers.
    uncounted_deliveries: u64,
}

impl<'a, IO> Subscriber<'a, IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn new(state: AppState, app: AppId, conn: &'a mut Conn<IO>) -> Self {
        Self {
            state,
            app,
            conn,
            cursor: Cursor::default(),
            form: LogForm::PerLine,
            uncounted_deliveries: 0,
        }
    }

    /// Sends only the log lines `logs` asks for (the stream's `logs`/`tail` options).
    pub(super) fn with_logs(mut self, logs: Logs) -> Self {
        self.cursor = Cursor::new(logs);
        self
    }

    /// Sends log lines in `form` (the stream's `batch` option).
    pub(super) fn with_log_form(mut self, form: LogForm) -> Self {
        self.form = form;
        self
    }

    pub(super) async fn run(
        &mut self,
        mut live: broadcast::Receiver<Arc<Event>>,
        resume: Resume,
    ) -> Result<(), End> {
        let _open = crate::metrics::Open::new(&crate::metrics::metrics().subscribers);
        // Resume points first, so the replay sends only what follows them.
        for (id, after) in &resume {
            self.cursor.resume(*id, *after);
        }
        self.catch_up_app(&resume, false).await?;
        self.flush().await?;
        let period = self.state.config.stream.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.state.shutdown.clone();
        // Made once: each new `cancelled()` registered with (and left) the token's shared lock.
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        // While events keep coming, the socket is written at most once per
        // FLUSH_INTERVAL: between writes the task sleeps instead of waking for every event, then
        // takes everything that gathered. The first event after a quiet spell goes out at once.
        // One timer, reset at each write (a new one per wait cost a registration each time).
        let mut paced = false;
        let pace = tokio::time::sleep(FLUSH_INTERVAL);
        tokio::pin!(pace);
        loop {
            tokio::select! {
                received = live.recv(), if !paced => {
                    self.on_received(received).await?;
                    self.drain(&mut live).await?;
                    self.flush().await?;
                    pace.as_mut().reset(tokio::time::Instant::now() + FLUSH_INTERVAL);
                    paced = true;
                }
                () = pace.as_mut(), if paced => {
                    if self.drain(&mut live).await? == 0 {
                        paced = false;
                    } else {
                        self.flush().await?;
                        pace.as_mut().reset(tokio::time::Instant::now() + FLUSH_INTERVAL);
                    }
                }
                _ = ping.tick() => {
                    self.feed(&ping_frame()).await?;
                    self.flush().await?;
                }
                message = self.conn.next_message() => match message {
                    // After auth, client frames (a second auth, unknown types, binary) are
                    // ignored; only a close or a broken connection ends the stream.
                    Ok(Some(ClientMessage::Close)) | Ok(None) => return Err(End::ClientGone),
                    Ok(Some(ClientMessage::Ping)) => self.flush().await?,
                    Ok(Some(_)) => {}
                    Err(err) => return Err(read_error(err)),
                },
                () = &mut shutdown => return Err(End::Shutdown),
            }
        }
    }

    /// Takes what is already in the channel (at most [`MAX_EVENTS_PER_FLUSH`] events, so one
    /// write stays bounded); returns how many it took.
    async fn drain(&mut self, live: &mut broadcast::Receiver<Arc<Event>>) -> Result<usize, End> {
        let mut taken = 0;
        while taken < MAX_EVENTS_PER_FLUSH {
            match live.try_recv() {
                Ok(event) => self.on_received(Ok(event)).await?,
                Err(TryRecvError::Lagged(n)) => self.on_received(Err(RecvError::Lagged(n))).await?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return Err(End::Shutdown),
            }
            taken += 1;
        }
        Ok(taken)
    }

    async fn on_received(&mut self, received: Result<Arc<Event>, RecvError>) -> Result<(), End> {
        match received {
            Ok(event) => self.on_event(&event).await,
            // Fell behind the channel: what was skipped is in the store.
            Err(RecvError::Lagged(skipped)) => {
                crate::metrics::metrics().lagged.inc();
                tracing::debug!(app = %self.app, skipped, "subscriber lagged; catching up from the store");
                self.catch_up_app(&Resume::new(), true).await
            }
            // The hub never drops a channel with receivers; treat it as the end of the server.
            Err(RecvError::Closed) => Err(End::Shutdown),
        }
    }

    async fn on_event(&mut self, event: &Event) -> Result<(), End> {
        if event.app_id != self.app {
            return Ok(());
        }
        let id = event.deployment_id;
        // A batched subscriber takes a log event's `log_batch` frames; everything else (and
        // every other subscriber) the per-line frames. Each form is rendered once per event.
        let batches = match self.form {
            LogForm::Batched => event_batches(event),
            LogForm::PerLine => None,
        };
        let frames = match batches {
            Some(batches) => &batches.frames,
            None => event_frames(event),
        };
        // Lines the rendered frames hold (the cursor counts lines, not frames).
        let rendered = batches.map_or(frames.len(), |b| b.lines);
        let live = match &event.kind {
            EventKind::New => Live::New,
            EventKind::Status { status, last_line } => Live::Status {
                status: *status,
                last_line: *last_line,
            },
            // Every line is rendered, unless the event was too big (then none is).
            EventKind::Logs { first, segment } => Live::Logs {
                first: *first,
                count: if rendered == 0 {
                    segment.view().map_or(0, |v| v.line_count()) as u64
                } else {
                    rendered as u64
                },
            },
        };
        match self.cursor.on_event(id, live, rendered) {
            Step::Skip => Ok(()),
            // The object form needs the record: read per subscriber (one `new` per deployment).
            Step::Send { skip_frames: 0 }
                if matches!(event.kind, EventKind::New)
                    && self.state.config.stream.new_event == NewEventForm::Object =>
            {
                self.uncounted_deliveries += 1;
                match self.state.read(move |store| store.deployment(id)).await? {
                    Some(record) => self.feed(&self.new_frame(&record)).await,
                    None => Ok(()),
                }
            }
            // `skip_frames` counts lines: with batches, they start at a frame or inside one.
            Step::Send { skip_frames } if batches.is_some() => {
                self.uncounted_deliveries += 1;
                let at = batches.and_then(|b| Some((b, b.frame_at_line(skip_frames)?)));
                match at {
                    Some((batches, frame)) => self.feed_rendered(&batches.frames, frame).await,
                    None => {
                        let rest = log_batches_from(event, skip_frames);
                        self.feed_shared(rest.shared_from(0)).await
                    }
                }
            }
            Step::Send { skip_frames } => {
                self.uncounted_deliveries += 1;
                self.feed_rendered(frames, skip_frames).await
            }
            Step::CatchUp { announce } => self.catch_up(id, announce).await,
        }
    }

    /// Replays (or, after a lag, catches up) every deployment of the app that is running, just
    /// finished, or named in `resume`, oldest first. `announce`: send `new` for deployments this
    /// socket did not know yet.
    async fn catch_up_app(&mut self, resume: &Resume, announce: bool) -> Result<(), End> {
        let app = self.app;
        let window = self.state.config.stream.replay_window;
        let resumed: Vec<DeploymentId> = resume.keys().copied().collect();
        let mut ids = self
            .state
            .read(move |store| {
                let now = OffsetDateTime::now_utc();
                let mut ids = Vec::new();
                for id in store.deployment_ids(app, 0, REPLAY_SCAN_LIMIT)? {
                    if let Some(d) = store.deployment(id)? {
                        if in_replay_window(d.finished_at, now, window) {
                            ids.push(id);
                        }
                    }
                }
                Ok(ids)
            })
            .await?;
        for id in resumed {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        // UUIDv7: id order is creation order.
        ids.sort();
        for id in ids {
            // Finished deployments were sent whole; the others are caught up.
            if let Some(announce) = self.cursor.replay(id, announce) {
                self.catch_up(id, announce).await?;
            }
        }
        Ok(())
    }

    /// Sends what the store has of one deployment beyond what was sent: its lines (up to the
    /// last line stored when its record was read), each status change it missed at its line
    /// number (from the hub's status history), and its current status (see
    /// [`Cursor::catch_up`]).
    async fn catch_up(&mut self, id: DeploymentId, announce: bool) -> Result<(), End> {
        let record = self.state.read(move |store| store.deployment(id)).await?;
        let Some(record) = record.filter(|d| d.app_id == self.app) else {
            // Deleted, or another app's (a bad resume id): nothing to send.
            self.cursor.forget(id);
            return Ok(());
        };
        crate::metrics::metrics().catch_ups.inc();
        if self.cursor.begin_catch_up(id, announce) {
            self.feed(&self.new_frame(&record)).await?;
        }
        // Read after the record: the history holds at least the record's status, if any.
        let history = self.state.hub.status_history(id);
        let steps = self
            .cursor
            .catch_up(id, history, record.status, record.last_line, announce);
        for step in steps {
            match step {
                CatchUpStep::Lines { until } => self.send_lines(id, until).await?,
                CatchUpStep::Status(status) => {
                    let line = self.sent_line(id);
                    self.feed(&text_frame(&status_text(id, status, line)))
                        .await?;
                    self.cursor.sent_status(id, status);
                }
            }
        }
        Ok(())
    }

    /// Sends the stored lines of `id` after the last one sent, up to `until` included.
    async fn send_lines(&mut self, id: DeploymentId, until: LineNo) -> Result<(), End> {
        loop {
            let from = self.sent_line(id);
            if from >= until {
                return Ok(());
            }
            let form = self.form;
            let (frames, last) = self
                .state
                .read(move |store| read_log_frames(store, id, from, until, form))
                .await?;
            if frames.is_empty() {
                return Ok(());
            }
            self.feed_shared(frames.shared_from(0)).await?;
            self.cursor.sent_lines(id, last);
        }
    }

    /// The last line of `id` sent (0 when none, or unknown).
    fn sent_line(&self, id: DeploymentId) -> LineNo {
        self.cursor.sent(id).unwrap_or_default().line
    }

    /// The `new` frame of a deployment, in the configured form.
    fn new_frame(&self, record: &Deployment) -> Vec<u8> {
        let config = &self.state.config;
        new_frame(config.stream.new_event, record, &config.public_url)
    }

    /// Queues encoded frames, copied, writing them out once [`WRITE_BUFFER_BYTES`] are
    /// waiting. Big slices go out in pieces: the buffer stays under twice
    /// [`WRITE_BUFFER_BYTES`].
    async fn feed(&mut self, frames: &[u8]) -> Result<(), End> {
        for piece in frames.chunks(WRITE_BUFFER_BYTES) {
            self.conn.queue(piece);
            if self.conn.buffered() >= WRITE_BUFFER_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Queues frames rendered once for everyone (not copied, see `Conn::queue_shared`),
    /// writing them out once [`WRITE_BUFFER_BYTES`] are waiting: what is buffered beyond the
    /// one rendering or store read the subscriber holds anyway stays under that.
    /// Queues frames `skip..` of an event's one rendering (see [`Conn::queue_rendered`]).
    async fn feed_rendered(&mut self, frames: &WireFrames, skip: usize) -> Result<(), End> {
        self.conn.queue_rendered(frames, skip);
        if self.conn.buffered() >= WRITE_BUFFER_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn feed_shared(&mut self, frames: bytes::Bytes) -> Result<(), End> {
        self.conn.queue_shared(frames);
        if self.conn.buffered() >= WRITE_BUFFER_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes everything queued, in one call when the socket takes it all (the usual case:
    /// then no stall timer is armed and the shutdown token is not looked at, which per write and
    /// subscriber cost a timer registration and shared reference counts).
    async fn flush(&mut self) -> Result<(), End> {
        let deliveries = std::mem::take(&mut self.uncounted_deliveries);
        if deliveries > 0 {
            crate::metrics::metrics().deliveries.inc_by(deliveries);
        }
        // `write_out` is cancel-safe: a partial write is remembered by the guarded retry.
        if let Some(written) = self.conn.write_out().now_or_never() {
            return written.map_err(|_| End::ClientGone);
        }
        let write = self.conn.write_out();
        guard_write(&self.state, write).await
    }
}

/// Runs a socket write, ending on shutdown or when the socket stalls.
async fn guard_write(
    state: &AppState,
    write: impl Future<Output = std::io::Result<()>>,
) -> Result<(), End> {
    tokio::select! {
        // The write first: it usually completes at once, and then the shutdown token (a lock
        // shared by every subscriber) is not even looked at.
        biased;
        written = tokio::time::timeout(WRITE_STALL_TIMEOUT, write) => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::ClientGone),
            Err(_) => Err(End::Stalled),
        },
        () = state.shutdown.cancelled() => Err(End::Shutdown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, FileConfig, Overrides};

    /// A server in this test's runtime, on a temporary data directory (the subscriber needs
    /// its state: store reads, the hub, the configuration).
    async fn start_server() -> (tempfile::TempDir, crate::server::RunningServer, AppState) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::from_parts(
            FileConfig::default(),
            Overrides {
                listen: Some("127.0.0.1:0".parse().expect("address")),
                data_dir: Some(dir.path().join("data")),
                admin_token: Some("stall-test-admin-token-0123456789".into()),
                ..Overrides::default()
            },
        )
        .expect("config");
        let running = crate::server::start(config).await.expect("server");
        let state = running.state().expect("running");
        (dir, running, state)
    }

    /// Paused time and an in-memory socket (no real I/O, so the clock moves only for the
    /// subscriber's own timers): a client that never reads is dropped once its socket accepted
    /// nothing for `WRITE_STALL_TIMEOUT` (5 minutes, as the README says), and not before.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_is_dropped_once_its_socket_accepted_nothing_for_the_stall_timeout(
    ) {
        assert_eq!(
            WRITE_STALL_TIMEOUT,
            Duration::from_secs(300),
            "the README says 5 minutes"
        );
        let (_dir, running, state) = start_server().await;
        let ping_interval = state.config.stream.ping_interval;
        let app = AppId::generate();
        // 64 bytes: one ping frame (42 bytes) fits, the second one does not.
        let (server_side, _client_side) = tokio::io::duplex(64);
        let mut conn = Conn::new(server_side);
        let live = state.hub.subscribe(app);
        let started = tokio::time::Instant::now();
        let end = tokio::time::timeout(
            WRITE_STALL_TIMEOUT + 10 * ping_interval,
            Subscriber::new(state.clone(), app, &mut conn).run(live, Resume::new()),
        )
        .await
        .expect("the stalled client was never dropped");
        let waited = started.elapsed();
        assert!(matches!(end, Err(End::Stalled)), "{end:?}");
        // The write that stalls is the second ping's, one ping interval in.
        assert!(
            waited >= WRITE_STALL_TIMEOUT + ping_interval,
            "dropped after {waited:?}, before the stall timeout"
        );
        assert!(
            waited <= WRITE_STALL_TIMEOUT + 2 * ping_interval,
            "dropped late, after {waited:?}"
        );
        drop(conn);
        drop(state);
        running.shutdown().await;
    }

    /// Paused time and an in-memory socket: the first event after a quiet spell is written at
    /// once; events that follow it within `FLUSH_INTERVAL` wait and go out together, one write
    /// one interval later (what keeps fan-out to thousands of sockets cheap).
    #[tokio::test(start_paused = true)]
    async fn the_first_event_goes_out_at_once_and_the_next_ones_together_one_flush_interval_later()
    {
        use tokio::io::AsyncReadExt;

        let (_dir, running, state) = start_server().await;
        let app = AppId::generate();
        let (server_side, mut client) = tokio::io::duplex(64 * 1024);
        let live = state.hub.subscribe(app);
        let subscriber_state = state.clone();
        let subscriber = tokio::spawn(async move {
            let mut conn = Conn::new(server_side);
            let _ = Subscriber::new(subscriber_state, app, &mut conn)
                .run(live, Resume::new())
                .await;
        });
        // Let the subscriber finish its (empty) replay and wait for events.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;

        let ids: Vec<DeploymentId> = (0..3).map(|_| DeploymentId::generate()).collect();
        let announce = |id: DeploymentId| Event::new(app, id, EventKind::New);
        let started = tokio::time::Instant::now();
        state.hub.publish(app, vec![announce(ids[0])]);
        let mut received = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        let n = client.read(&mut buffer).await.expect("read");
        received.extend_from_slice(&buffer[..n]);
        assert!(
            started.elapsed() < FLUSH_INTERVAL,
            "the first event waited {:?}",
            started.elapsed()
        );
        let text = String::from_utf8_lossy(&received).to_string();
        assert!(text.contains(&ids[0].to_string()), "{text}");

        // Two more right behind it: held back until the interval since the last write passed.
        state
            .hub
            .publish(app, vec![announce(ids[1]), announce(ids[2])]);
        let n = client.read(&mut buffer).await.expect("read");
        let waited = started.elapsed();
        let text = String::from_utf8_lossy(&buffer[..n]).to_string();
        assert!(
            waited >= FLUSH_INTERVAL,
            "the next events went out after {waited:?}, inside the flush interval"
        );
        assert!(
            text.contains(&ids[1].to_string()) && text.contains(&ids[2].to_string()),
            "both in one write: {text}"
        );

        subscriber.abort();
        let _ = subscriber.await;
        drop(state);
        running.shutdown().await;
    }
}
