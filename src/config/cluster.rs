//! Cluster mode's settings: `store` (the NATS servers), `node_id` and `[cluster]`, checked
//! into a [`ClusterConfig`]; absent or empty `store` is the embedded store.

use std::time::Duration;

use super::{ClusterConfig, ConfigError, FileCluster};

/// Reads `store`, `node_id` and `[cluster]`; `None` when `store` is absent or empty.
pub(super) fn cluster_config(
    store: &Option<String>,
    node_id: Option<String>,
    file: &FileCluster,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(store) = store.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let servers = store
        .split(',')
        .map(str::trim)
        .map(|server| nats_server_url(server).ok_or_else(|| ConfigError::Store(store.to_owned())))
        .collect::<Result<Vec<_>, _>>()?;
    let node_id = match node_id.map(|id| id.trim().to_owned()) {
        Some(id) if !id.is_empty() => id,
        Some(_) => return Err(ConfigError::Cluster("node_id must not be empty".into())),
        None => host_name().ok_or_else(|| {
            ConfigError::Cluster("the host name is unknown: set node_id (--node-id)".into())
        })?,
    };
    // The id goes into NATS message ids and key values: keep it to plain characters.
    if !node_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ConfigError::Cluster(format!(
            "node_id {node_id:?} may hold only letters, digits, '-', '_' and '.'"
        )));
    }
    let lease_secs = file.lease_secs.unwrap_or(ClusterConfig::DEFAULT_LEASE_SECS);
    if lease_secs == 0 {
        // A lease that never expires would leave the cluster leaderless forever after a crash.
        return Err(ConfigError::Cluster(
            "[cluster] lease_secs must be at least 1".into(),
        ));
    }
    let advertise_url = match file.advertise_url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(url.trim_end_matches('/').to_owned())
        }
        Some(url) => {
            return Err(ConfigError::Cluster(format!(
                "[cluster] advertise_url {url:?} must start with http:// or https://"
            )))
        }
    };
    let replicas = match file.replicas.unwrap_or(ClusterConfig::DEFAULT_REPLICAS) {
        0 => {
            return Err(ConfigError::Cluster(
                "[cluster] replicas must be at least 1".into(),
            ))
        }
        n => n,
    };
    Ok(Some(ClusterConfig {
        servers,
        node_id,
        lease: Duration::from_secs(lease_secs),
        advertise_url,
        replicas,
    }))
}

/// `nats://HOST:PORT` checked (a host and a numeric port, nothing after them).
fn nats_server_url(server: &str) -> Option<String> {
    let rest = server.strip_prefix("nats://")?;
    let (host, port) = rest.rsplit_once(':')?;
    let host_ok = !host.is_empty()
        && !host.contains(['/', '@', '?', '#', ' '])
        && (host.starts_with('[') == host.ends_with(']'));
    (host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)).then(|| server.to_owned())
}

/// The machine's host name (the default `node_id`).
pub(super) fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
    (!name.is_empty()).then_some(name)
}
