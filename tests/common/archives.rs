//! Source archives for executor tests: real tar.gz files built in the test (hostile ones
//! included, written with raw headers that bypass the `tar` crate's own path checks), and a tiny
//! HTTP server (a tokio `TcpListener` answering raw HTTP/1.1) that serves them.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tar::{EntryType, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One archive entry.
pub enum Item<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    /// A regular file with mode 755 (a stage script).
    Executable(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    /// Any entry type with no data (devices, fifos…).
    Special(&'a str, EntryType),
}

/// A raw header: name and link bytes are copied as they are, so `..` and absolute paths survive.
fn raw_header(path: &str, kind: EntryType, size: u64, mode: u32, link: Option<&str>) -> Header {
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
        };
        builder.append(&header, data).expect("append test entry");
    }
    let gzip = builder.into_inner().expect("finish tar");
    gzip.finish().expect("finish gzip")
}

/// An app archive with one root folder `app/` holding `bin/build` and `bin/start` (mode 755)
/// with the given shell bodies (a `#!/bin/sh` line is added).
pub fn app(build: &str, start: &str) -> Vec<u8> {
    let build = format!("#!/bin/sh\n{build}\n");
    let start = format!("#!/bin/sh\n{start}\n");
    archive(&[
        Item::Dir("app/"),
        Item::Dir("app/bin/"),
        Item::Executable("app/bin/build", build.as_bytes()),
        Item::Executable("app/bin/start", start.as_bytes()),
        Item::File("app/README", b"a test app\n"),
    ])
}

/// An archive with one regular file of `size` zero bytes: compresses ~1000:1, a gzip bomb.
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

/// A local HTTP server serving archives by path (404 for anything else), counting requests.
#[derive(Clone)]
pub struct ArchiveServer {
    pub addr: SocketAddr,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
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
            files: Arc::default(),
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

    /// Serves `bytes` at `path` (which starts with `/`); returns the full URL.
    pub fn serve(&self, path: &str, bytes: Vec<u8>) -> String {
        self.files
            .lock()
            .expect("files lock")
            .insert(path.to_string(), bytes);
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
        let body = self.files.lock().expect("files lock").get(&path).cloned();
        let (status, body) = match body {
            Some(body) => ("200 OK", body),
            None => ("404 Not Found", b"not found".to_vec()),
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/x-gzip\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        // The client may hang up early (a size limit): write errors are expected.
        let _ = socket.write_all(&response).await;
        let _ = socket.shutdown().await;
    }
}

/// Whether a process with this pid exists (zombies count as gone: `ps` shows them as `Z`).
pub fn process_alive(pid: u32) -> bool {
    let out = std::process::Command::new("ps")
        .args(["-o", "stat=", "-p", &pid.to_string()])
        .output()
        .expect("run ps");
    let stat = String::from_utf8_lossy(&out.stdout);
    let stat = stat.trim();
    !stat.is_empty() && !stat.starts_with('Z')
}
