//! Test helpers shared by the pipeline's unit tests: a recording sink that enforces the status
//! graph, and a builder for tar.gz archives, hostile ones included (raw headers bypass the `tar`
//! crate's own path checks).

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use tar::{EntryType, Header};

use super::{DeploymentSink, SinkError};
use crate::model::{LineNo, LogStream, NewLine};
use crate::status::{check_transition, Status};

/// Records everything a run reports. Like the real sink, it refuses illegal transitions, and it
/// refuses lines once the deployment is terminal.
pub struct RecordingSink {
    pub inner: Mutex<Recorded>,
}

pub struct Recorded {
    pub status: Status,
    pub transitions: Vec<Status>,
    /// One entry per `append_logs` call, with when it arrived.
    pub batches: Vec<(Instant, Vec<NewLine>)>,
    pub image_size: Option<u64>,
    /// Refuse `append_logs` once this many lines were accepted (a deployment ended elsewhere).
    pub refuse_after_lines: Option<usize>,
}

impl RecordingSink {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Recorded {
                status: Status::Building,
                transitions: Vec::new(),
                batches: Vec::new(),
                image_size: None,
                refuse_after_lines: None,
            }),
        }
    }

    pub fn lines(&self) -> Vec<NewLine> {
        let recorded = self.inner.lock().expect("test sink lock");
        recorded
            .batches
            .iter()
            .flat_map(|(_, batch)| batch.clone())
            .collect()
    }

    pub fn texts(&self, stream: LogStream) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| line.stream == stream)
            .map(|line| line.text)
            .collect()
    }

    pub fn transitions(&self) -> Vec<Status> {
        self.inner
            .lock()
            .expect("test sink lock")
            .transitions
            .clone()
    }

    pub fn has_system_line(&self, needle: &str) -> bool {
        self.texts(LogStream::System)
            .iter()
            .any(|text| text.contains(needle))
    }
}

impl DeploymentSink for RecordingSink {
    async fn append_logs(&self, lines: Vec<NewLine>) -> Result<LineNo, SinkError> {
        let mut recorded = self.inner.lock().expect("test sink lock");
        if recorded.status.is_terminal() {
            return Err(SinkError("deployment is over".to_owned()));
        }
        assert!(!lines.is_empty(), "empty append_logs call");
        let accepted: usize = recorded.batches.iter().map(|(_, b)| b.len()).sum();
        if recorded
            .refuse_after_lines
            .is_some_and(|max| accepted >= max)
        {
            return Err(SinkError("deployment was ended elsewhere".to_owned()));
        }
        assert!(
            lines.len() <= crate::lines::MAX_BATCH_LINES,
            "batch too large"
        );
        recorded.batches.push((Instant::now(), lines));
        let count = recorded.batches.iter().map(|(_, b)| b.len() as u64).sum();
        Ok(LineNo(count))
    }

    async fn transition(&self, to: Status) -> Result<(), SinkError> {
        let mut recorded = self.inner.lock().expect("test sink lock");
        check_transition(recorded.status, to).map_err(|e| SinkError(e.to_string()))?;
        recorded.status = to;
        recorded.transitions.push(to);
        Ok(())
    }

    async fn set_image_size(&self, bytes: u64) -> Result<(), SinkError> {
        self.inner.lock().expect("test sink lock").image_size = Some(bytes);
        Ok(())
    }
}

/// One archive entry, written with a raw header.
pub enum Item<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Executable(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    /// Any entry type with no data (devices, fifos, pax global header…).
    Special(&'a str, EntryType),
    /// A pax global header, as `git archive` writes first.
    PaxGlobal,
}

/// A raw header: the name and link bytes are copied as is, so `..` and absolute paths survive.
pub fn raw_header(path: &str, kind: EntryType, size: u64, mode: u32, link: Option<&str>) -> Header {
    let mut header = Header::new_ustar();
    let old = header.as_old_mut();
    old.name[..path.len()].copy_from_slice(path.as_bytes());
    if let Some(link) = link {
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_cksum();
    header
}

/// A gzip+tar archive of `items`.
pub fn archive(items: &[Item<'_>]) -> Vec<u8> {
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gzip);
    for item in items {
        let (header, data): (Header, &[u8]) = match item {
            Item::Dir(path) => (raw_header(path, EntryType::Directory, 0, 0o755, None), b""),
            Item::File(path, data) => (
                raw_header(path, EntryType::Regular, data.len() as u64, 0o644, None),
                data,
            ),
            Item::Executable(path, data) => (
                raw_header(path, EntryType::Regular, data.len() as u64, 0o755, None),
                data,
            ),
            Item::Symlink(path, target) => (
                raw_header(path, EntryType::Symlink, 0, 0o777, Some(target)),
                b"",
            ),
            Item::HardLink(path, target) => (
                raw_header(path, EntryType::Link, 0, 0o644, Some(target)),
                b"",
            ),
            Item::Special(path, kind) => (raw_header(path, *kind, 0, 0o644, None), b""),
            Item::PaxGlobal => {
                const RECORD: &[u8] = b"52 comment=0123456789012345678901234567890123456789\n";
                (
                    raw_header(
                        "pax_global_header",
                        EntryType::XGlobalHeader,
                        RECORD.len() as u64,
                        0o666,
                        None,
                    ),
                    RECORD,
                )
            }
        };
        builder.append(&header, data).expect("append test entry");
    }
    let gzip = builder.into_inner().expect("finish tar");
    gzip.finish().expect("finish gzip")
}

/// An archive with one regular file of `size` zero bytes: compresses ~1000:1, a gzip bomb.
pub fn zero_bomb(size: u64) -> Vec<u8> {
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gzip);
    let header = raw_header("app/zeros", EntryType::Regular, size, 0o644, None);
    builder
        .append(&header, std::io::Read::take(std::io::repeat(0), size))
        .expect("append zeros");
    let mut gzip = builder.into_inner().expect("finish tar");
    gzip.flush().expect("flush");
    gzip.finish().expect("finish gzip")
}
