//! The TCP listener and every connection's lifetime rules: how many connections may be open
//! (in all and per address), how long a client may take to send a request's headers, how long
//! a keep-alive connection may sit idle between requests, and what accept does when the process
//! runs out of descriptors. It serves HTTP/1.1 (with upgrades) through hyper.
//!
//! It knows nothing of routes or the store, and it never closes an upgraded socket (push,
//! stream): once a connection is upgraded its timeouts are gone, because a Scalingo client sends
//! nothing after its auth frame and those sockets keep their own ping and write-stall rules.
//! A connection's descriptor stays counted until its socket closes, upgraded or not.
//! The errors hyper answers by itself (400, 414, 431) get a JSON body (`errors`).

mod errors;
mod watchdog;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use watchdog::{watchdog, Activity, Expired, InFlight, Phase, Phases, Watching};

/// After an accept failed for lack of descriptors or memory, accept waits this long before
/// trying again: retrying at once would spin a core while nothing was freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Refusals in flight at once (each holds its descriptor while the 503 is written). Beyond
/// this an over-the-cap connection is closed without an answer. The descriptor budget counts
/// them (see [`connection_cap`]).
const REFUSAL_SLOTS: usize = 64;
/// How long a refused connection is given to receive its 503 and close.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of a refused client's request read (and dropped) at most.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// The rules the accept loop applies, resolved from [`ServerConfig`] and the descriptor limit.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionRules {
    pub header_read_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Always at least 1 and at most what the descriptor limit leaves.
    pub max_connections: usize,
    /// 0: no per-address cap.
    pub max_per_address: usize,
}

impl ConnectionRules {
    /// Raises the soft descriptor limit and derives the connection cap from it.
    pub(crate) fn resolve(config: &ServerConfig) -> ConnectionRules {
        let descriptors = raise_descriptor_limit();
        let max_connections =
            connection_cap(config.max_connections, descriptors, config.fd_reserve);
        tracing::info!(
            max_connections,
            descriptors,
            reserved = config.fd_reserve,
            "connection limits"
        );
        ConnectionRules {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            max_connections,
            max_per_address: config.max_connections_per_address,
        }
    }
}

/// The connection cap: the configured one (0: none), lowered so that connections, refusals
/// and the reserve together fit in `descriptors`. Never 0, so that a tiny limit still serves.
fn connection_cap(configured: usize, descriptors: u64, reserve: usize) -> usize {
    let budget = usize::try_from(descriptors)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserve.saturating_add(REFUSAL_SLOTS));
    let cap = match configured {
        0 => budget,
        n => n.min(budget),
    };
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            descriptors,
            "the descriptor limit lowers the connection cap"
        );
    }
    cap.max(1)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the default soft limit, often 1024, is
/// what a few hundred clients exhaust); returns the soft limit in force afterwards.
fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "reading the descriptor limit");
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given; raising the soft limit up to
        // the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, "raising the descriptor limit");
        }
    }
    limit.rlim_cur
}

/// Serves `router` on `listener` until `shutdown`; then stops accepting, lets every
/// connection finish its request in flight, and returns when all are closed (upgraded sockets
/// are not waited for: they end on `shutdown` by themselves).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    rules: ConnectionRules,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Slots::new(rules.max_connections, rules.max_per_address));
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let connections = TaskTracker::new();
    let mut warned_exhaustion = false;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                warned_exhaustion = false;
                accepted
            }
            Err(error) if is_exhaustion(&error) => {
                // Log once per episode: a flood would otherwise log ten lines a second.
                if !warned_exhaustion {
                    tracing::warn!(%error, "accept: out of descriptors; backing off");
                    warned_exhaustion = true;
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            // The peer's own failures (reset before accept, …): the listener is fine.
            Err(error) => {
                tracing::debug!(%error, "accept");
                continue;
            }
        };
        match slots.take(peer.ip()) {
            Ok(slot) => {
                let router = router.clone();
                let rules = rules.clone();
                let shutdown = shutdown.clone();
                connections.spawn(serve_connection(tcp, peer, slot, router, rules, shutdown));
            }
            Err(refusal) => match refusals.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        refuse(tcp, refusal).await;
                        drop(permit);
                    });
                }
                Err(_) => drop(tcp),
            },
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Accept errors that mean "nothing can be accepted until something is freed".
fn is_exhaustion(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Why a connection was refused; the text is the 503's `error`.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    TooMany,
    TooManyFromAddress,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::TooMany => "too many connections; retry later",
            Refusal::TooManyFromAddress => "too many connections from this address; retry later",
        }
    }
}

/// Answers an over-the-cap connection with a JSON 503 and closes it, without involving hyper
/// (it would hold the descriptor for a whole connection's rules). The request head is read
/// first: an HTTP client that gets an answer before it sent its request discards it.
async fn refuse(mut tcp: TcpStream, refusal: Refusal) {
    let body = serde_json::json!({ "error": refusal.message() }).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while head.len() < REFUSAL_DRAIN_BYTES && memchr::memmem::find(&head, b"\r\n\r\n").is_none()
        {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => head.extend_from_slice(&buf[..n]),
            }
        }
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        // Read what else comes (a body) until the client closes, so that our close is not a
        // reset that would destroy the 503 before the client reads it.
        let mut drained = head.len();
        while drained < REFUSAL_DRAIN_BYTES {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, answer).await;
}

/// The open-connection counters, in all and per address.
struct Slots {
    open: AtomicUsize,
    max: usize,
    max_per_address: usize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place in [`Slots`]; dropping it (when the socket closes) frees it.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn new(max: usize, max_per_address: usize) -> Slots {
        Slots {
            open: AtomicUsize::new(0),
            max,
            max_per_address,
            per_address: Mutex::new(HashMap::new()),
        }
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        // Only the accept loop takes slots, so load-then-add cannot overshoot.
        if self.open.load(Ordering::Acquire) >= self.max {
            return Err(Refusal::TooMany);
        }
        if self.max_per_address > 0 {
            let mut per_address = self.lock_addresses();
            let count = per_address.entry(ip).or_insert(0);
            if *count >= self.max_per_address {
                return Err(Refusal::TooManyFromAddress);
            }
            *count += 1;
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }

    fn lock_addresses(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map holds plain counters; a panic elsewhere cannot leave them half-updated.
        self.per_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.slots.max_per_address > 0 {
            let mut per_address = self.slots.lock_addresses();
            if let Some(count) = per_address.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    per_address.remove(&self.ip);
                }
            }
        }
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    router: Router,
    rules: ConnectionRules,
    shutdown: CancellationToken,
) {
    // Responses and stream frames are written whole (the stream paces its own writes), so
    // Nagle's algorithm would only hold them back waiting for the peer's delayed ACK.
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY");
    }
    let activity = Phases::new(Phase::Headers {
        since: Instant::now(),
    });
    // Closed when this function returns (an upgraded socket lives on without a watchdog), even
    // if the connection finished before the watchdog was first polled.
    let _watching = Watching(activity.clone());
    let io = TokioIo::new(Tracked {
        tcp,
        activity: activity.clone(),
        _slot: slot,
        rewritten: None,
    });
    let watched = activity.clone();
    let router = hyper_util::service::TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        // The peer, for handlers that need it (cluster forwarding's `X-Forwarded-For`).
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let in_flight = InFlight::begin(activity.clone());
        let response = hyper::service::Service::call(&router, request);
        async move {
            let response: axum::response::Response = match response.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(Guarded {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our watchdog owns the header-read rule: hyper's own timer would also run while the
    // connection idles between requests, merging the two rules into one.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let watchdog = watchdog(watched, rules);
    tokio::pin!(watchdog);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection");
                }
                return;
            }
            expired = watchdog.as_mut(), if !closing => match expired {
                // An unfinished head is not worth a response: the socket is closed.
                Expired::Headers => {
                    tracing::debug!("closing a connection that did not finish its headers");
                    return;
                }
                Expired::Idle => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            },
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A response body that ends its request's [`InFlight`] when hyper drops it (written whole,
/// or the connection gone).
struct Guarded {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, holding its [`Slot`] (so an upgraded socket stays counted) and marking the
/// start of a request head for the watchdog.
struct Tracked {
    tcp: TcpStream,
    activity: Activity,
    _slot: Slot,
    /// hyper's own error head being written as its JSON replacement (`errors`).
    rewritten: Option<Rewritten>,
}

/// A replacement response being written: the bytes, how many went out, and the length of the
/// head hyper asked to write (what the write reports once the replacement is out).
struct Rewritten {
    bytes: Vec<u8>,
    sent: usize,
    replaces: usize,
}

impl Tracked {
    /// Whether a write now is hyper's own: no request is in flight (the router's responses are
    /// written while one is) and the connection was not upgraded.
    fn outside_requests(&self) -> bool {
        !self.activity.is_closed() && !matches!(self.activity.get(), Phase::Busy { .. })
    }

    /// Writes hyper's error head as its JSON replacement when `buf` is one (`errors`);
    /// `None`: write `buf` as it is.
    fn poll_rewritten(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<std::io::Result<usize>>> {
        if self.rewritten.is_none() && self.outside_requests() {
            let bytes = errors::rewrite(buf)?;
            self.rewritten = Some(Rewritten {
                bytes,
                sent: 0,
                replaces: buf.len(),
            });
        }
        let pending = self.rewritten.as_mut()?;
        loop {
            match Pin::new(&mut self.tcp).poll_write(cx, &pending.bytes[pending.sent..]) {
                Poll::Ready(Ok(0)) => {
                    self.rewritten = None;
                    return Some(Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    pending.sent += n;
                    if pending.sent == pending.bytes.len() {
                        let replaces = pending.replaces;
                        self.rewritten = None;
                        return Some(Poll::Ready(Ok(replaces)));
                    }
                }
                Poll::Ready(Err(err)) => {
                    self.rewritten = None;
                    return Some(Poll::Ready(Err(err)));
                }
                Poll::Pending => return Some(Poll::Pending),
            }
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        // Once the watchdog is gone (upgraded or closing) nobody needs the phase.
        if buf.filled().len() > before && !self.activity.is_closed() {
            self.activity.modify(|phase| {
                if let Phase::Idle { .. } = *phase {
                    *phase = Phase::Headers {
                        since: Instant::now(),
                    };
                }
            });
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(polled) = self.poll_rewritten(cx, buf) {
            return polled;
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper's error head is a whole head in the first slice; writing only that slice is a
        // partial vectored write, which hyper continues from.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(polled) = self.poll_rewritten(cx, first) {
                return polled;
            }
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Resolves `--listen` values that name a host (`localhost:8080`) to the first address.
pub fn resolve_listen(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut addrs = value
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {value:?} (expected HOST:PORT): {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{value:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_the_reserve_and_the_refusals_free() {
        assert_eq!(connection_cap(10_000, 20_000, 512), 10_000);
        assert_eq!(
            connection_cap(10_000, 1024, 512),
            1024 - 512 - REFUSAL_SLOTS
        );
        assert_eq!(connection_cap(0, 4096, 512), 4096 - 512 - REFUSAL_SLOTS);
        assert_eq!(
            connection_cap(10, 100, 512),
            1,
            "a tiny limit still serves one"
        );
    }

    #[test]
    fn a_slot_is_freed_when_dropped_and_the_address_cap_counts_per_address() {
        let slots = Arc::new(Slots::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = slots.take(a).expect("first");
        let _second = slots.take(a).expect("second");
        assert!(matches!(slots.take(a), Err(Refusal::TooManyFromAddress)));
        let _third = slots.take(b).expect("another address");
        assert!(matches!(slots.take(b), Err(Refusal::TooMany)));
        drop(first);
        assert!(slots.take(a).is_ok(), "a freed slot is taken again");
    }

    #[test]
    fn listen_accepts_host_names() {
        let addr = resolve_listen("localhost:8080").expect("localhost resolves");
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 8080);
        assert!(resolve_listen("localhost").is_err(), "a port is required");
    }
}
