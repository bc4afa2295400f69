//! `GET /v1/admin/backup` (admins only): streams the tar of a consistent snapshot
//! (`crate::backup`), taken by the writer between two commits.
//!
//! The tar is produced on a blocking thread into a bounded channel that the response body
//! drains, so memory stays constant (a few chunks in flight) and ingest goes on meanwhile.
//! Nothing is written to disk: a client that goes away closes the channel, the producer stops
//! at its next write and drops the snapshot. A failure while producing aborts the body (the
//! client sees an incomplete chunked response, never a clean end), and the tar's manifest comes
//! last, so a cut backup cannot pass for a whole one.
//!
//! This module only checks the caller and moves bytes; what goes in the tar is `backup`'s.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::access::Caller;
use super::{ApiError, AppState};
use crate::backup::{write_tar, BackupDirs};

/// Chunks in flight between the tar producer and the socket: the memory a backup holds.
const CHANNEL_CHUNKS: usize = 8;

/// Bytes per chunk sent to the socket.
const CHUNK_BYTES: usize = 64 * 1024;

/// `GET /v1/admin/backup`.
pub async fn backup(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    if !caller.user.is_admin {
        return Err(ApiError::Forbidden(
            "only an admin may take a backup".into(),
        ));
    }
    caller.require_every_app("take a backup")?;
    let snapshot = state.writer.snapshot().await?;
    let dirs = BackupDirs {
        images: state.config.pipeline.image_dir.clone(),
        sources: state.config.sources_dir(),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHANNEL_CHUNKS);
    let file_name = format!(
        "deployd-backup-{}.tar",
        time::OffsetDateTime::now_utc().unix_timestamp()
    );
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK_BYTES),
        };
        match write_tar(&snapshot, &dirs, out) {
            Ok(manifest) => tracing::info!(
                records = manifest.records,
                log_files = manifest.log_files,
                log_bytes = manifest.log_bytes,
                images = manifest.image_files,
                "backup streamed"
            ),
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                tracing::warn!("backup: the client went away before the end");
            }
            Err(err) => {
                tracing::error!(error = %err, "backup failed; the response is aborted");
                // The body ends with an error: hyper aborts the response.
                let _ = tx.blocking_send(Err(err));
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Ok((
        [
            (CONTENT_TYPE, "application/x-tar".to_owned()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// A blocking `Write` into the response's channel, in [`CHUNK_BYTES`] chunks. A closed channel
/// (the client went away) is `BrokenPipe`.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.buf.len();
        let taken = data.len().min(room);
        self.buf.extend_from_slice(&data[..taken]);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
