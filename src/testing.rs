//! Test support shared by the unit tests, the integration tests (`tests/`) and the benches, kept
//! in one copy: a tar.gz archive builder (hostile archives included, written with raw headers
//! that bypass the `tar` crate's own path checks), a tiny HTTP server that serves archives or
//! canned raw responses, a process liveness probe, and a [`RecordingSink`] that enforces the
//! status graph like the real sink.
//!
//! Compiled only for tests and behind the `test-support` feature (which `[dev-dependencies]`
//! turns on for `tests/` and `benches/`): nothing in the service may depend on it. It must not
//! touch the store, the hub or the API; harnesses that start a server live in `tests/common`.

#[path = "testing_nats.rs"]
pub mod nats;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tar::{EntryType, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::model::{LineNo, LogStream, NewLine};
use crate::pipeline::{DeploymentSink, SinkError};
use crate::status::{check_transition, Status};

/// One archive entry, written with a raw header.
pub enum Item<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    /// A regular file with mode 755 (a stage script).
    Executable(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    /// Any entry type with no data (devices, fifos…).
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

/// A gzip+tar archive of `items`, in order.
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

/// An app archive with one root folder `app/` holding a README and, when given, `bin/build` and
/// `bin/start` (mode 755) with exactly these contents.
pub fn app_scripts(build: Option<&str>, start: Option<&str>) -> Vec<u8> {
    let mut items = vec![
        Item::Dir("app/"),
        Item::Dir("app/bin/"),
        Item::File("app/README", b"a test app\n"),
    ];
    if let Some(build) = build {
        items.push(Item::Executable("app/bin/build", build.as_bytes()));
    }
    if let Some(start) = start {
        items.push(Item::Executable("app/bin/start", start.as_bytes()));
    }
    archive(&items)
}

/// An app archive whose `bin/build` and `bin/start` run the given shell bodies (a `#!/bin/sh`
/// line is added).
pub fn app(build: &str, start: &str) -> Vec<u8> {
    let build = format!("#!/bin/sh\n{build}\n");
    let start = format!("#!/bin/sh\n{start}\n");
    app_scripts(Some(&build), Some(&start))
}

/// An archive with one regular file `app/zeros` of `size` zero bytes: compresses ~1000:1, a
/// gzip bomb.
pub fn zero_bomb(size: u64) -> Vec<u8> {
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gzip);
    builder
        .append(
            &raw_header("app/", EntryType::Directory, 0, 0o755, None),
            &b""[..],
        )
        .expect("append dir");
    let header = raw_header("app/zeros", EntryType::Regular, size, 0o644, None);
    builder
        .append(&header, std::io::Read::take(std::io::repeat(0), size))
        .expect("append zeros");
    let mut gzip = builder.into_inner().expect("finish tar");
    gzip.flush().expect("flush");
    gzip.finish().expect("finish gzip")
}

/// A whole raw HTTP/1.1 response (`Connection: close`; `headers` end with `\r\n` each).
pub fn raw_response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n{headers}\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// A local HTTP server (a tokio `TcpListener` answering raw HTTP/1.1) serving archives or
/// canned raw responses by path, 404 for anything else, and recording every requested path.
#[derive(Clone)]
pub struct ArchiveServer {
    pub addr: SocketAddr,
    /// Path → the whole raw response.
    responses: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ArchiveServer {
    /// Binds 127.0.0.1:0 and serves until the test's runtime ends.
    pub async fn start() -> ArchiveServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind archive server");
        let server = ArchiveServer {
            addr: listener.local_addr().expect("addr"),
            responses: Arc::default(),
            requests: Arc::default(),
        };
        let shared = server.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(shared.clone().answer(socket));
            }
        });
        server
    }

    /// Serves `bytes` at `path` (which starts with `/`) as a gzip archive; returns the full URL.
    pub fn serve(&self, path: &str, bytes: Vec<u8>) -> String {
        let headers = format!(
            "Content-Type: application/x-gzip\r\nContent-Length: {}\r\n",
            bytes.len()
        );
        self.serve_raw(path, raw_response("200 OK", &headers, &bytes))
    }

    /// Answers `path` with exactly `response` (see [`raw_response`]); returns the full URL.
    pub fn serve_raw(&self, path: &str, response: Vec<u8>) -> String {
        self.responses
            .lock()
            .expect("responses lock")
            .insert(path.to_string(), response);
        self.url(path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The paths requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }

    async fn answer(self, mut socket: tokio::net::TcpStream) {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&request);
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
        self.requests
            .lock()
            .expect("requests lock")
            .push(path.clone());
        let response = self
            .responses
            .lock()
            .expect("responses lock")
            .get(&path)
            .cloned()
            .unwrap_or_else(|| {
                raw_response("404 Not Found", "Content-Length: 9\r\n", b"not found")
            });
        // The client may hang up early (a size limit): write errors are expected.
        let _ = socket.write_all(&response).await;
        let _ = socket.shutdown().await;
    }
}

/// Whether a process with this pid exists and is not a zombie (a zombie has exited; only its
/// parent has not reaped it yet).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
    }
}

/// Records everything a pipeline run reports. Like the real sink, it refuses illegal
/// transitions, and it refuses lines once the deployment is terminal.
pub struct RecordingSink {
    pub inner: Mutex<Recorded>,
}

/// What a [`RecordingSink`] saw.
pub struct Recorded {
    pub status: Status,
    pub transitions: Vec<Status>,
    /// One entry per `append_logs` call, with when it arrived.
    pub batches: Vec<(Instant, Vec<NewLine>)>,
    pub image_size: Option<u64>,
    /// `keep_image` was called (the push left an image to keep).
    pub image_kept: bool,
    /// Refuse `append_logs` once this many lines were accepted (a deployment ended elsewhere).
    pub refuse_after_lines: Option<usize>,
}

impl Default for RecordingSink {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordingSink {
    /// A sink for a deployment that is `building`, as the executor receives it.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Recorded {
                status: Status::Building,
                transitions: Vec::new(),
                batches: Vec::new(),
                image_size: None,
                image_kept: false,
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

    async fn keep_image(&self, bytes: u64) -> Result<(), SinkError> {
        let mut recorded = self.inner.lock().expect("test sink lock");
        recorded.image_size = Some(bytes);
        recorded.image_kept = true;
        Ok(())
    }
}
