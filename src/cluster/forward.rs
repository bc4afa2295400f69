//! What a node that does not lead serves: every request and WebSocket forwarded to the
//! leader's URL (bodies streamed both ways, upgrades spliced), `/healthz` and `/readyz`
//! answered locally with the node's role, and a 503 `unavailable` with `Retry-After` while no
//! leader is known or reachable.
//!
//! Also [`Switch`], the router the node's listener serves for its whole life: the forwarding
//! router first, the single-node router once the node leads.
//!
//! Must not read or write the store, nor interpret what it forwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::lease::LeaseValue;

/// How long a forward waits for the leader's TCP connect: a dead leader (its lease not yet
/// expired) must turn into a quick 503 the client retries, not a hung request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// What a client is told to wait before retrying a 503 (seconds): a takeover takes about a
/// lease, and a client retrying every second sees the new leader soon after.
const RETRY_AFTER_SECS: &str = "1";

/// Headers that belong to one hop (RFC 9110 §7.6.1) and are not forwarded, except for an
/// upgrade, where `connection` and `upgrade` are the request itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Applies the stream and forwards requests.
    Follower = 0,
    /// Won the lease; catching up before it serves as the leader.
    TakingOver = 1,
    /// Runs the writer and serves everything itself.
    Leader = 2,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::TakingOver => "taking-over",
            Role::Leader => "leader",
        }
    }
}

/// What the node knows about itself and the leader (shared by the node loop and handlers).
pub struct NodeView {
    pub node_id: String,
    role: AtomicU8,
    leader: RwLock<Option<LeaseValue>>,
    applied: AtomicU64,
    /// Cancelled when the node shuts down: spliced WebSockets end with it.
    pub shutdown: CancellationToken,
}

impl NodeView {
    pub fn new(node_id: String, shutdown: CancellationToken) -> Arc<NodeView> {
        Arc::new(NodeView {
            node_id,
            role: AtomicU8::new(Role::Follower as u8),
            leader: RwLock::new(None),
            applied: AtomicU64::new(0),
            shutdown,
        })
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::SeqCst) {
            0 => Role::Follower,
            1 => Role::TakingOver,
            _ => Role::Leader,
        }
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::SeqCst);
    }

    pub fn leader(&self) -> Option<LeaseValue> {
        self.leader.read().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn set_leader(&self, leader: Option<LeaseValue>) {
        if let Ok(mut slot) = self.leader.write() {
            if *slot != leader {
                match &leader {
                    Some(l) => {
                        tracing::info!(leader = %l.node_id, url = %l.url, term = l.term, "cluster leader")
                    }
                    None => tracing::info!("no cluster leader"),
                }
            }
            *slot = leader;
        }
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    pub fn set_applied(&self, seq: u64) {
        self.applied.store(seq, Ordering::SeqCst);
    }

    fn describe(&self) -> serde_json::Value {
        let leader = self.leader();
        json!({
            "node_id": self.node_id,
            "role": self.role().name(),
            "leader": leader.as_ref().map(|l| json!({"node_id": l.node_id, "url": l.url, "term": l.term})),
            "applied_sequence": self.applied(),
        })
    }
}

/// The router the node's listener serves; what it routes to is swapped when the node leads.
#[derive(Clone)]
pub struct Switch {
    current: Arc<RwLock<Router>>,
}

impl Switch {
    pub fn new(first: Router) -> Switch {
        Switch {
            current: Arc::new(RwLock::new(first)),
        }
    }

    /// From now on, new requests go to `router` (requests in flight finish where they are).
    pub fn set(&self, router: Router) {
        if let Ok(mut current) = self.current.write() {
            *current = router;
        }
    }

    /// The router to hand to the listener.
    pub fn router(&self) -> Router {
        let current = self.current.clone();
        Router::new().fallback(move |request: Request| {
            // The guard is dropped here: the future must be `Send`.
            let router = current.read().ok().map(|r| r.clone());
            async move {
                let Some(router) = router else {
                    return unavailable("unavailable: this node is restarting");
                };
                let service = hyper_util::service::TowerToHyperService::new(router);
                match hyper::service::Service::call(&service, request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        })
    }
}

/// The forwarding router for a node that does not lead.
pub fn router(view: Arc<NodeView>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(forward)
        .with_state(view)
}

/// The leader's router: the single-node `api` router, with `/healthz` answered with the
/// node's role (its `/readyz` is the single node's: the writer's health is what matters).
pub fn leader_router(view: Arc<NodeView>, api: Router) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(view)
        .fallback_service(api)
}

/// 503 `{"error": message}` with `Retry-After`.
fn unavailable(message: &str) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": message })),
    )
        .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
}

async fn healthz(State(view): State<Arc<NodeView>>) -> Response {
    let mut body = json!({ "status": "ok" });
    body["cluster"] = view.describe();
    Json(body).into_response()
}

/// Ready when a leader is known that is not this node (a follower can serve by forwarding).
async fn readyz(State(view): State<Arc<NodeView>>) -> Response {
    let ready = view
        .leader()
        .is_some_and(|leader| leader.node_id != view.node_id);
    let mut body = json!({ "status": if ready { "ready" } else { "not_ready" } });
    body["cluster"] = view.describe();
    if !ready {
        body["reasons"] = json!(["no cluster leader yet"]);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The leader's address, and a path prefix its URL may carry.
fn leader_target(url: &str) -> Option<(String, String)> {
    let uri: Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(80);
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Some((format!("{host}:{port}"), prefix))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The headers sent to the leader: the client's, without hop-by-hop ones (kept for an
/// upgrade), `Host` the leader's, and the client's address appended to `X-Forwarded-For`.
fn forwarded_headers(
    incoming: &HeaderMap,
    upgrade: bool,
    authority: &str,
    peer: Option<SocketAddr>,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(incoming.len() + 2);
    // Also the names a `Connection` header lists as hop-by-hop.
    let listed: Vec<String> = incoming
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    for (name, value) in incoming {
        let n = name.as_str();
        let hop = HOP_BY_HOP.contains(&n) || listed.iter().any(|l| l == n);
        let kept_for_upgrade = upgrade && (n == "connection" || n == "upgrade");
        if (hop && !kept_for_upgrade) || name == header::HOST {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if let Ok(host) = HeaderValue::from_str(authority) {
        headers.insert(header::HOST, host);
    }
    if let Some(host) = incoming.get(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    if let Some(peer) = peer {
        let forwarded_for = match incoming
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(earlier) => format!("{earlier}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), value);
        }
    }
    headers
}

/// Forwards one request (or WebSocket upgrade) to the leader, over a connection of its own.
async fn forward(State(view): State<Arc<NodeView>>, mut request: Request) -> Response {
    let Some(leader) = view.leader() else {
        return unavailable("unavailable: no cluster leader yet");
    };
    if leader.node_id == view.node_id {
        // The lease is ours but the server is not started yet: never forward to ourselves.
        return unavailable("unavailable: this node is taking over as the cluster leader");
    }
    let Some((authority, prefix)) = leader_target(&leader.url) else {
        return unavailable(&format!(
            "unavailable: the cluster leader's URL {} cannot be forwarded to (only http:// is)",
            leader.url
        ));
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let upgrade = is_upgrade(request.headers());
    let unreachable = |error: &dyn std::fmt::Display| {
        tracing::warn!(leader = %leader.node_id, url = %leader.url, %error, "forwarding to the cluster leader");
        unavailable(&format!(
            "unavailable: the cluster leader {} at {} is unreachable: {error}",
            leader.node_id, leader.url
        ))
    };
    let tcp =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&authority))
            .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => return unreachable(&error),
            Err(_) => return unreachable(&"connect timed out"),
        };
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tcp)).await {
            Ok(pair) => pair,
            Err(error) => return unreachable(&error),
        };
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "forwarded connection");
        }
    });
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut outgoing = hyper::Request::builder()
        .method(request.method().clone())
        .uri(format!("{prefix}{path}"));
    if let Some(headers) = outgoing.headers_mut() {
        *headers = forwarded_headers(request.headers(), upgrade, &authority, peer);
    }
    let outgoing = match outgoing.body(request.into_body()) {
        Ok(outgoing) => outgoing,
        Err(error) => return unreachable(&error),
    };
    let mut response = match sender.send_request(outgoing).await {
        Ok(response) => response,
        Err(error) => return unreachable(&error),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let leader_upgrade = hyper::upgrade::on(&mut response);
            let stop = view.shutdown.clone();
            tokio::spawn(async move {
                let (client, leader) = match tokio::join!(client_upgrade, leader_upgrade) {
                    (Ok(client), Ok(leader)) => (client, leader),
                    (Err(error), _) | (_, Err(error)) => {
                        tracing::debug!(%error, "forwarded upgrade");
                        return;
                    }
                };
                let mut client = TokioIo::new(client);
                let mut leader = TokioIo::new(leader);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut leader) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    response.map(Body::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_drop_hop_by_hop_ones_set_the_host_and_append_the_client_address() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::HOST, HeaderValue::from_static("follower:8080"));
        incoming.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        incoming.insert("x-secret-hop", HeaderValue::from_static("1"));
        incoming.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        incoming.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        let peer: SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        let out = forwarded_headers(&incoming, false, "leader:8081", Some(peer));
        assert_eq!(out[header::HOST], "leader:8081");
        assert_eq!(out["x-forwarded-host"], "follower:8080");
        assert_eq!(out["x-forwarded-for"], "10.0.0.9, 192.0.2.7");
        assert_eq!(out[header::AUTHORIZATION], "Basic x");
        assert!(!out.contains_key(header::CONNECTION));
        assert!(!out.contains_key("x-secret-hop"));

        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        ws.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&ws));
        let out = forwarded_headers(&ws, true, "leader:8081", None);
        assert_eq!(out[header::UPGRADE], "websocket");
        assert_eq!(out[header::CONNECTION], "Upgrade");
        assert!(!out.contains_key("x-forwarded-for"));
    }

    #[test]
    fn only_plain_http_leader_urls_are_forwarded_to_and_a_path_prefix_is_kept() {
        assert_eq!(
            leader_target("http://10.0.0.2:8080"),
            Some(("10.0.0.2:8080".into(), String::new()))
        );
        assert_eq!(
            leader_target("http://leader.example/deployd/"),
            Some(("leader.example:80".into(), "/deployd".into()))
        );
        assert_eq!(leader_target("https://leader.example"), None);
    }
}
