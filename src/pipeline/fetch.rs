//! Downloading the source archive to the deployment's work directory.
//!
//! Owns the source-address rule (DESIGN.md, security): only `http`/`https`, and unless the
//! operator allows private sources, every hop's host is resolved once, each resolved address is
//! checked against the non-public ranges, and the request is pinned to that checked address
//! (reqwest's `resolve`) so a second DNS answer cannot swap it (DNS rebinding). Redirects are
//! followed by hand so each hop goes through the same check. The size limit is enforced while
//! streaming, the time limit on the whole download.
//!
//! It writes only the destination file it is given; it knows nothing of sinks or statuses.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::SourceLocation;

/// Connecting to a source host should never take long; the whole-download limit still applies.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Limits applied to one fetch (taken from [`super::PipelineConfig`]).
#[derive(Clone, Copy, Debug)]
pub struct FetchLimits {
    /// Whole-download time limit, redirects included.
    pub timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
    /// Maximum archive size in bytes.
    pub max_bytes: u64,
    /// Skip the non-public address check.
    pub allow_private: bool,
}

/// Why a fetch failed. The `Display` text is shown to the user in the deployment logs, so it
/// names the URL or limit involved but never server internals beyond that.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unsupported URL scheme {0:?} (only http and https are allowed)")]
    Scheme(String),
    #[error("cannot resolve host {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("host {host} resolves to no address")]
    NoAddress { host: String },
    #[error("host {host} resolves to the non-public address {addr}, which is not allowed")]
    ForbiddenAddress { host: String, addr: IpAddr },
    #[error("HTTP {status} from {url}")]
    HttpStatus { status: StatusCode, url: String },
    #[error("redirect from {url} without a valid Location header")]
    BadRedirect { url: String },
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("archive larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("download took longer than {0:?}")]
    Timeout(Duration),
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl FetchError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> FetchError {
        let context = context.into();
        move |source| FetchError::Io { context, source }
    }
}

/// Fetches `source` into the file `dest` (created or truncated) and returns its size in bytes.
///
/// Errors: any limit breached, a refused address or scheme, a non-2xx final answer, or an I/O
/// failure. On error `dest` may hold a partial download; the caller removes its work directory.
pub async fn fetch(
    source: &SourceLocation,
    dest: &Path,
    limits: FetchLimits,
) -> Result<u64, FetchError> {
    let work = async {
        match source {
            SourceLocation::Url(url) => fetch_url(url, dest, limits).await,
            SourceLocation::LocalFile(path) => copy_local(path, dest, limits.max_bytes).await,
        }
    };
    tokio::time::timeout(limits.timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(limits.timeout))?
}

async fn copy_local(path: &Path, dest: &Path, max_bytes: u64) -> Result<u64, FetchError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(FetchError::io("cannot open the uploaded archive"))?;
    let mut out = tokio::fs::File::create(dest)
        .await
        .map_err(FetchError::io("cannot create the archive file"))?;
    // One byte past the limit is enough to know it is too big, without reading the rest.
    let copied = tokio::io::copy(&mut file.take(max_bytes.saturating_add(1)), &mut out)
        .await
        .map_err(FetchError::io("cannot copy the uploaded archive"))?;
    if copied > max_bytes {
        return Err(FetchError::TooLarge(max_bytes));
    }
    out.flush()
        .await
        .map_err(FetchError::io("cannot write the archive file"))?;
    Ok(copied)
}

async fn fetch_url(url: &str, dest: &Path, limits: FetchLimits) -> Result<u64, FetchError> {
    let mut current = Url::parse(url).map_err(|e| FetchError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let mut redirects = 0usize;
    let response = loop {
        let client = pinned_client(&current, limits.allow_private).await?;
        let response =
            client
                .get(current.clone())
                .send()
                .await
                .map_err(|source| FetchError::Http {
                    url: current.to_string(),
                    source,
                })?;
        if !response.status().is_redirection() {
            break response;
        }
        if redirects >= limits.max_redirects {
            return Err(FetchError::TooManyRedirects(limits.max_redirects));
        }
        redirects += 1;
        let next = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|location| current.join(location).ok())
            .ok_or_else(|| FetchError::BadRedirect {
                url: current.to_string(),
            })?;
        current = next;
    };

    if !response.status().is_success() {
        return Err(FetchError::HttpStatus {
            status: response.status(),
            url: current.to_string(),
        });
    }
    if response
        .content_length()
        .is_some_and(|len| len > limits.max_bytes)
    {
        return Err(FetchError::TooLarge(limits.max_bytes));
    }
    stream_to_file(response, &current, dest, limits.max_bytes).await
}

async fn stream_to_file(
    mut response: reqwest::Response,
    url: &Url,
    dest: &Path,
    max_bytes: u64,
) -> Result<u64, FetchError> {
    let mut out = tokio::fs::File::create(dest)
        .await
        .map_err(FetchError::io("cannot create the archive file"))?;
    let mut written = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|source| FetchError::Http {
        url: url.to_string(),
        source,
    })? {
        written = written.saturating_add(chunk.len() as u64);
        if written > max_bytes {
            return Err(FetchError::TooLarge(max_bytes));
        }
        out.write_all(&chunk)
            .await
            .map_err(FetchError::io("cannot write the archive file"))?;
    }
    out.flush()
        .await
        .map_err(FetchError::io("cannot write the archive file"))?;
    Ok(written)
}

/// Checks `url`'s scheme and host and returns a client that will connect only to the address
/// that was checked.
pub(crate) async fn pinned_client(
    url: &Url,
    allow_private: bool,
) -> Result<reqwest::Client, FetchError> {
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(FetchError::Scheme(other.to_owned())),
    }
    let host = url.host_str().ok_or_else(|| FetchError::InvalidUrl {
        url: url.to_string(),
        reason: "no host".to_owned(),
    })?;
    let port = url.port_or_known_default().unwrap_or(80);
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would resolve the host itself, defeating the pin.
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT);
    // The URL parser has already normalised IP literals (decimal, hex, short forms); IPv6 ones
    // keep their brackets in `host_str`.
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let builder = if let Ok(ip) = literal.parse::<IpAddr>() {
        check_address(host, ip, allow_private)?;
        builder
    } else {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| FetchError::Resolve {
                host: host.to_owned(),
                source,
            })?
            .collect();
        // Every answer must pass: a name with one public and one private address is refused
        // rather than trusting whichever we happen to pick.
        for addr in &addrs {
            check_address(host, addr.ip(), allow_private)?;
        }
        let first = addrs.first().ok_or_else(|| FetchError::NoAddress {
            host: host.to_owned(),
        })?;
        builder.resolve(host, *first)
    };
    builder.build().map_err(|source| FetchError::Http {
        url: url.to_string(),
        source,
    })
}

fn check_address(host: &str, addr: IpAddr, allow_private: bool) -> Result<(), FetchError> {
    if allow_private || is_public(addr) {
        Ok(())
    } else {
        Err(FetchError::ForbiddenAddress {
            host: host.to_owned(),
            addr,
        })
    }
}

/// Whether `addr` is acceptable as a source address: not loopback, private, link-local,
/// unspecified, shared (CGNAT), multicast, broadcast or reserved, in IPv4 or IPv6 (including
/// IPv4 addresses embedded in IPv6 ones).
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    let this_network = a == 0; // 0.0.0.0/8, includes unspecified
    let cgnat = a == 100 && (b & 0b1100_0000) == 64; // 100.64.0.0/10
    let reserved = a >= 240; // 240.0.0.0/4 and broadcast
    !(this_network
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || cgnat
        || ip.is_multicast()
        || reserved)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // ::ffff:a.b.c.d (mapped) and the deprecated ::a.b.c.d (compatible) reach IPv4 hosts.
    if let Some(v4) = ip.to_ipv4() {
        return is_public_v4(v4);
    }
    // NAT64 (64:ff9b::/96) also reaches an embedded IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, hi, lo] = segments;
        let v4 = Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
        return is_public_v4(v4);
    }
    let unique_local = (segments[0] & 0xfe00) == 0xfc00; // fc00::/7
    let link_local = (segments[0] & 0xffc0) == 0xfe80; // fe80::/10
    let site_local = (segments[0] & 0xffc0) == 0xfec0; // fec0::/10, deprecated but routable inside
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || unique_local
        || link_local
        || site_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_refused() {
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "100.127.255.255",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let addr: IpAddr = refused.parse().expect("test address");
            assert!(!is_public(addr), "{refused} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for allowed in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let addr: IpAddr = allowed.parse().expect("test address");
            assert!(is_public(addr), "{allowed} should be allowed");
        }
    }
}
