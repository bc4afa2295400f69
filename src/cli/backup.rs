//! `deployd backup DEST --url URL --token TOKEN`: downloads `GET /v1/admin/backup` (admin
//! token) and restores it into `DEST`, an empty (or missing) directory that
//! `deployd serve --data DEST` then starts from.
//!
//! The tar is never stored: it is restored as it arrives (`crate::backup::restore`, on a
//! blocking thread fed through a bounded channel), and is whole only when its manifest (the
//! last entry) arrived and matches what was restored. On any failure `DEST` is emptied again
//! (removed, when this command created it), so a half backup is never left to start from.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the backup is complete in `DEST` |
//! | 1 | the backup could not be written (`DEST`'s disk), or the server sent something that is not a complete deployd backup |
//! | 2 | usage, authentication (an admin token is required), HTTP or connection-refused error; `DEST` is not empty |
//! | 3 | the download broke off before the end (connection lost, or the server aborted the backup) |
//!
//! Talks HTTP only; the store it writes is a new one in `DEST`, never a running server's.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;

use super::deploy::check;
use super::{
    basic_auth_header, http_url, ServerTarget, EXIT_CONNECTION_LOST, EXIT_DEPLOYMENT_FAILED,
    EXIT_SUCCESS, EXIT_USAGE_OR_AUTH,
};
use crate::backup::{restore, RestoreError};

/// How long connecting may take (the download itself takes as long as the data needs).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Chunks in flight between the download and the restore: the memory the command holds.
const CHANNEL_CHUNKS: usize = 16;

/// Arguments of `deployd backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Directory to restore the backup into: must be empty or missing
    pub dest: PathBuf,
    #[command(flatten)]
    pub target: ServerTarget,
}

/// Runs `deployd backup`; returns the exit code.
pub async fn run_backup(args: BackupArgs) -> anyhow::Result<i32> {
    let created = match prepare(&args.dest) {
        Ok(created) => created,
        Err(why) => {
            eprintln!("deployd backup: {why}");
            return Ok(EXIT_USAGE_OR_AUTH);
        }
    };
    let code = download(&args).await;
    if code != EXIT_SUCCESS {
        clean(&args.dest, created);
    }
    Ok(code)
}

/// Checks that `dest` is an empty directory, or creates it (true).
fn prepare(dest: &Path) -> Result<bool, String> {
    match std::fs::read_dir(dest) {
        Ok(mut entries) => match entries.next() {
            None => Ok(false),
            Some(_) => Err(format!(
                "{} is not empty: a backup goes into an empty directory",
                dest.display()
            )),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest)
                .map_err(|e| format!("creating {}: {e}", dest.display()))?;
            Ok(true)
        }
        Err(err) => Err(format!("{}: {err}", dest.display())),
    }
}

/// Empties `dest` after a failure (removes it when this command created it).
fn clean(dest: &Path, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(dest);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dest) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

async fn download(args: &BackupArgs) -> i32 {
    let builder = match super::tls::http_builder(&args.target.tls) {
        Ok(builder) => builder,
        Err(err) => return err.report("deployd backup"),
    };
    let client = match builder.connect_timeout(CONNECT_TIMEOUT).build() {
        Ok(client) => client,
        Err(err) => {
            eprintln!("deployd backup: {err}");
            return EXIT_USAGE_OR_AUTH;
        }
    };
    let url = http_url(&args.target.url, "/v1/admin/backup");
    let response = match client
        .get(&url)
        .header("Authorization", basic_auth_header(&args.target.token))
        .send()
        .await
    {
        Ok(response) => response,
        Err(err) => {
            eprintln!(
                "deployd backup: GET {url}: {}",
                super::tls::describe_http(&err)
            );
            return EXIT_USAGE_OR_AUTH;
        }
    };
    if !response.status().is_success() {
        let why = check("backup", response)
            .await
            .err()
            .unwrap_or_else(|| "unexpected answer".into());
        eprintln!("deployd backup: {why}");
        return EXIT_USAGE_OR_AUTH;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Bytes>>(CHANNEL_CHUNKS);
    let dest = args.dest.clone();
    let restoring = tokio::task::spawn_blocking(move || {
        restore(
            ChannelReader {
                rx,
                current: Bytes::new(),
            },
            &dest,
        )
    });
    let mut response = response;
    loop {
        let item = match response.chunk().await {
            Ok(Some(chunk)) => Ok(chunk),
            Ok(None) => break,
            Err(err) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                err.to_string(),
            )),
        };
        let failed = item.is_err();
        // A closed channel: the restore stopped (its error is reported below).
        let sent = tokio::task::block_in_place(|| tx.send(item));
        if failed || sent.is_err() {
            break;
        }
    }
    drop(tx);
    match restoring.await {
        Ok(Ok(manifest)) => {
            println!(
                "backup taken at {}: {} records, {} log files ({} bytes), {} images, {} sources in {}",
                manifest.taken_at,
                manifest.records,
                manifest.log_files,
                manifest.log_bytes,
                manifest.image_files,
                manifest.source_files,
                args.dest.display()
            );
            if !manifest.missing_log_files.is_empty() {
                eprintln!(
                    "deployd backup: the server was missing the log files of {} deployments \
                     (damaged before the backup): {}",
                    manifest.missing_log_files.len(),
                    manifest.missing_log_files.join(", ")
                );
            }
            EXIT_SUCCESS
        }
        Ok(Err(err)) => {
            eprintln!("deployd backup: {err}");
            match err {
                RestoreError::Truncated(_) => EXIT_CONNECTION_LOST,
                RestoreError::Invalid(_) | RestoreError::Write { .. } => EXIT_DEPLOYMENT_FAILED,
            }
        }
        Err(err) => {
            eprintln!("deployd backup: {err}");
            EXIT_DEPLOYMENT_FAILED
        }
    }
}

/// The restore's `Read` over the downloaded chunks; the download's failure is its error, the
/// channel's end its end of file.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(item) => self.current = item?,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
