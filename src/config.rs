//! One `Config` for the server: built from defaults that run out of the box, then a TOML file
//! (`--config FILE`), then environment variables and flags (flags win over variables, both win
//! over the file).
//!
//! Every key of the file is also a flag `--section-key` and a variable `DEPLOYD_SECTION_KEY`
//! ([`keys`]): adding an `Option` field to a `File*` struct (and its README row) is all a new key
//! needs. For every limit, 0 means unlimited.
//!
//! Every limit and interval of the service that an operator may want to change lives here, with
//! its default and the reason for it. This module parses and checks; it opens nothing but the
//! file.

mod cluster;
pub mod keys;

use cluster::cluster_config;
pub use keys::KeyFlags;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pipeline::PipelineConfig;

/// Where the server listens when nothing says otherwise: loopback only, so a first start never
/// exposes anything.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The data directory when nothing says otherwise (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "./data";
/// `[retention] keep_deployments` by default (see [`RetentionConfig`]).
pub const DEFAULT_KEEP_DEPLOYMENTS: u64 = 100;
/// `[retention] prune_interval_secs` by default (see [`RetentionConfig`]).
pub const DEFAULT_PRUNE_INTERVAL_SECS: u64 = 600;

/// See [`Limits::min_free_disk_bytes`].
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 64 * 1024 * 1024;

/// The whole server configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Base URL clients reach this server at (`links`, `deployments_stream`, source URLs,
    /// `/v1/regions`). Default: `http://<listen>`.
    pub public_url: String,
    /// True when `public_url` was derived from `listen` (it is then re-derived from the bound
    /// address, so that port 0 gives working links).
    pub public_url_from_listen: bool,
    /// The first admin's API token (`DEPLOYD_ADMIN_TOKEN`); generated when absent.
    pub admin_token: Option<String>,
    pub stream: StreamConfig,
    pub limits: Limits,
    pub pipeline: PipelineConfig,
    pub notifications: NotificationsConfig,
    pub push: PushConfig,
    pub retention: RetentionConfig,
    pub server: ServerConfig,
    /// `[metrics] token`: when set, `GET /metrics` needs `Authorization: Bearer <token>`
    /// (default none: the metrics carry no secret and no per-app label, and a scraper on
    /// the same host should not need one).
    pub metrics_token: Option<String>,
    /// Cluster mode (`store = "nats://…"`); `None`: the embedded store, the default.
    pub cluster: Option<ClusterConfig>,
}

/// Cluster mode's settings (`store`, `node_id`, `[cluster]`; `crate::cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The NATS servers, each `nats://HOST:PORT`, in the order given (the client tries them
    /// all, so one reachable server is enough to join).
    pub servers: Vec<String>,
    /// This node's name in the lease, the node announcements and the WAL message ids (default:
    /// the host name, unique per machine, which is what a supervisor restarts under).
    pub node_id: String,
    /// How long a lease lives without renewal (15 s: a dead leader is replaced within this,
    /// and one lost renewal (every lease/3) never costs the lease on a slow network).
    pub lease: Duration,
    /// The base URL other nodes forward requests to; `None`: this node's `public_url` as bound.
    pub advertise_url: Option<String>,
    /// JetStream replicas of the stream and buckets (3: survives one lost server with a
    /// quorum left; clamped at start to the servers the cluster has, with a warning).
    pub replicas: usize,
}

impl ClusterConfig {
    /// `[cluster] lease_secs` by default.
    pub const DEFAULT_LEASE_SECS: u64 = 15;
    /// `[cluster] replicas` by default.
    pub const DEFAULT_REPLICAS: usize = 3;

    /// The servers as the NATS client takes them (comma-separated).
    pub fn servers_list(&self) -> String {
        self.servers.join(",")
    }
}

/// Webhook deliveries (`[notifications]`) and the timeline's retention (`[retention]`).
#[derive(Clone, Debug)]
pub struct NotificationsConfig {
    /// One attempt's whole time limit (10 s: a receiver should answer at once and work later).
    pub request_timeout: Duration,
    /// Delay before the first retry (5 s, so the first retry comes within 10 s even with
    /// jitter); each next delay doubles, with jitter, up to `max_retry_delay`.
    pub first_retry_delay: Duration,
    /// Longest delay between two attempts (1 h).
    pub max_retry_delay: Duration,
    /// A delivery is retried until it is this old (24 h), then given up.
    pub retry_for: Duration,
    /// How often the outbox is looked at for due deliveries (1 s; the outbox is written by
    /// the writer thread, which never waits for the worker).
    pub poll_interval: Duration,
    /// Deliveries in flight at once over all notifiers (32; 0 = unlimited). Each notifier has
    /// at most one in flight, so a dead webhook holds one slot at a time.
    pub max_concurrent: usize,
    /// Events, outbox entries and delivery records older than this are pruned (90 days;
    /// `None`, from 0, keeps them forever).
    pub events_max_age: Option<Duration>,
    /// Loopback and private webhook addresses are allowed (the executor's
    /// `allow_private_sources`, the same rule as for source URLs).
    pub allow_private: bool,
}

/// The external pushers' session limits (`[push]`; `0` turns a limit off).
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// After a cancel, the pusher has this long to end the deployment before the server ends
    /// it itself (`cancel_grace_secs`, 10 s: enough to kill a build and send one frame).
    pub cancel_grace: Option<Duration>,
    /// A pusher that sends no frame (pongs included) for this long is lost
    /// (`idle_timeout_secs`, 120 s: six unanswered pings).
    pub idle_timeout: Option<Duration>,
}

impl PushConfig {
    pub const DEFAULT_CANCEL_GRACE_SECS: u64 = 10;
    pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 120;
}

/// How much history is kept (`crate::retention`). Every limit: 0 means unlimited.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    /// Finished deployments kept per app, newest first (100: a long history for any app, a
    /// bounded disk for all of them). Unfinished ones are never pruned and not counted.
    pub keep_deployments: u64,
    /// Finished deployments older than this (by their end) are pruned; 0: off (the default:
    /// the count bounds the disk, and an app deployed rarely keeps its history).
    pub max_age_days: u64,
    /// Time between full prune passes (10 minutes: expired sources and ages need a clock;
    /// pruning by count also runs after each deployment ends). 0: no timed pass (only at
    /// startup and after each deployment ends).
    pub prune_interval: Duration,
    /// Most bytes of log one deployment stores (256 MiB); past it output is dropped.
    pub max_log_bytes: u64,
    /// Successful deployments per app whose image is kept, newest first: the rollback
    /// targets (5, `crate::images::DEFAULT_KEEP_IMAGES`). The app's current deployment's image
    /// and one an unfinished rollback needs are kept beyond it.
    pub keep_images: u64,
}

/// The listener's connection rules (`[server]`; `crate::listener` applies them).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// A connection must finish sending a request's headers within this once their first byte
    /// arrived (30 s, hyper's own default): slowloris clients hold a descriptor each otherwise.
    /// `None` (0 in the file) lifts it.
    pub header_read_timeout: Option<Duration>,
    /// A keep-alive connection with no request in flight is closed after this (75 s: longer
    /// than nginx's 60 s upstream keep-alive, so a reverse proxy closes its idle connections
    /// first and never reuses one we are closing). Never applies to upgraded sockets (push,
    /// stream). `None` (0) lifts it.
    pub idle_timeout: Option<Duration>,
    /// Most connections open at once (10,000: an idle connection costs a descriptor and about
    /// 10 KiB). Beyond it new connections get a JSON 503 and are closed; open ones are served.
    /// It is lowered at start to what the descriptor limit leaves after `fd_reserve`. 0: only
    /// the descriptor limit bounds it.
    pub max_connections: usize,
    /// Most connections open at once from one IP address. 0 (default): no per-address cap, as
    /// behind a reverse proxy every client is one address.
    pub max_connections_per_address: usize,
    /// Descriptors kept out of the connection cap for the store's files, log files and the
    /// executor's pipes (512), so that a connection flood never makes a commit fail.
    pub fd_reserve: usize,
    /// Interval between SSE keep-alive comments on `/output` (15 s: well under the 60 s idle
    /// timeout of common proxies). `None` (0) sends none.
    pub sse_keepalive: Option<Duration>,
}

/// The live stream's timings.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Interval between `ping` frames (Scalingo: 30 s).
    pub ping_interval: Duration,
    /// A stream socket that sends no auth frame within this is closed (10 s).
    pub auth_timeout: Duration,
    /// After auth, finished deployments are replayed if they ended less than this ago (5 min):
    /// long enough for `scalingo deploy`, which opens the socket after creating the deployment.
    pub replay_window: Duration,
    /// What a `new` event carries (`[stream] new_event`): the deployment's id (default).
    pub new_event: NewEventForm,
}

/// The form of the stream's `new` event's `data.deployment` (compat.md: the spec page and
/// scalingo.js have the id; Scalingo's Go CLI decodes the object and drops anything else, so
/// `deployment-follow` prints its `[NEW]` line only with `object`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NewEventForm {
    /// `"data":{"deployment":"<id>"}`, as the spec page shows.
    #[default]
    Id,
    /// `"data":{"deployment":{…the deployment object…}}`, as the Go CLI reads it.
    Object,
}

/// Size limits on what clients send.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest JSON request body (1 MiB: every API object is tiny).
    pub max_json_body_bytes: usize,
    /// Largest source archive upload through `PUT` on an upload URL.
    pub max_upload_bytes: u64,
    /// `/readyz` answers 503 when the data directory's file system has less free space than
    /// this (64 MiB: room for a few minutes of heavy ingest while an operator reacts, before
    /// writes start failing with `ENOSPC`). 0: no threshold.
    pub min_free_disk_bytes: u64,
}

/// The `--config` TOML file. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// `HOST:PORT`; a host name is resolved (`localhost:8080`).
    #[serde(deserialize_with = "listen_address")]
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
    pub stream: FileStream,
    pub limits: FileLimits,
    pub executor: FileExecutor,
    pub notifications: FileNotifications,
    pub retention: FileRetention,
    pub push: FilePush,
    pub server: FileServer,
    pub metrics: FileMetrics,
    /// `nats://HOST:PORT[,…]`: cluster mode on NATS JetStream; absent or empty: embedded.
    pub store: Option<String>,
    /// This node's id in cluster mode (default: the host name).
    pub node_id: Option<String>,
    pub cluster: FileCluster,
}

/// `[cluster]`: cluster mode's lease and replication (see [`ClusterConfig`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileCluster {
    pub lease_secs: Option<u64>,
    pub advertise_url: Option<String>,
    pub replicas: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileMetrics {
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileNotifications {
    pub request_timeout_ms: Option<u64>,
    pub first_retry_delay_ms: Option<u64>,
    pub max_retry_delay_secs: Option<u64>,
    pub retry_for_hours: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    pub max_concurrent_deliveries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileRetention {
    pub keep_deployments: Option<u64>,
    pub max_age_days: Option<u64>,
    pub prune_interval_secs: Option<u64>,
    pub max_log_bytes: Option<u64>,
    pub events_max_age_days: Option<u64>,
    pub keep_images: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilePush {
    pub cancel_grace_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
}

/// `[server]`: the listener's connection rules (see [`ServerConfig`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileServer {
    pub header_read_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub fd_reserve: Option<usize>,
    pub sse_keepalive_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileStream {
    pub ping_interval_secs: Option<u64>,
    pub auth_timeout_secs: Option<u64>,
    pub replay_window_secs: Option<u64>,
    /// `"id"` (default) or `"object"`: see [`NewEventForm`].
    pub new_event: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileLimits {
    pub max_json_body_bytes: Option<usize>,
    pub max_upload_bytes: Option<u64>,
    pub min_free_disk_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileExecutor {
    pub build_cmd: Option<String>,
    pub push_cmd: Option<String>,
    pub start_cmd: Option<String>,
    pub hook_cmd: Option<String>,
    pub start_timeout_secs: Option<u64>,
    pub deployment_timeout_secs: Option<u64>,
    pub fetch_timeout_secs: Option<u64>,
    pub max_redirects: Option<usize>,
    pub max_archive_bytes: Option<u64>,
    pub max_extracted_bytes: Option<u64>,
    pub max_archive_entries: Option<u64>,
    pub max_line_bytes: Option<usize>,
    pub allow_private_sources: Option<bool>,
    /// Build slots: executor deployments past `queued` at once (default: the CPUs; 0: no limit).
    pub max_concurrent: Option<usize>,
}

/// Reads `listen` as text and resolves it, so that a host name works as well as an address.
fn listen_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|value| crate::listener::resolve_listen(&value).map_err(serde::de::Error::custom))
        .transpose()
}

/// Values given on the command line or in the environment (they win over the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
    pub config_file: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub allow_private_sources: Option<bool>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A key's value (from the file, a flag or a variable) has the wrong type or syntax.
    #[error("configuration key {key} ({origin}): {message}")]
    Key {
        key: String,
        origin: String,
        message: String,
    },
    #[error("invalid public URL {0:?}: it must start with http:// or https://")]
    PublicUrl(String),
    #[error(
        "[executor] max_line_bytes = {0} is out of range: it must be at most {max} \
         (the longest line the store keeps; 0 means that limit)",
        max = crate::lines::MAX_LINE_BYTES
    )]
    MaxLineBytes(usize),
    #[error(
        "store = {0:?} is not a cluster store: it must be nats://HOST:PORT, or several \
         separated by commas (absent or empty: the embedded store)"
    )]
    Store(String),
    #[error("cluster configuration: {0}")]
    Cluster(String),
    #[error(
        "[stream] new_event = {0:?} is not a form: it must be \"id\" (the default) or \"object\""
    )]
    NewEvent(String),
}

impl Config {
    /// Defaults, then the file named in `overrides` (if any) with the key `flags` (flags and
    /// environment) overlaid onto it, then `overrides`.
    pub fn load(overrides: Overrides, flags: &KeyFlags) -> Result<Config, ConfigError> {
        let mut tree = match &overrides.config_file {
            Some(path) => read_tree(path)?,
            None => toml::Table::new(),
        };
        flags.overlay(&mut tree);
        let file = parse_tree(tree, overrides.config_file.as_deref(), flags)?;
        Config::from_parts(file, overrides)
    }

    /// Builds the config from an already parsed file and overrides.
    pub fn from_parts(file: FileConfig, overrides: Overrides) -> Result<Config, ConfigError> {
        let listen = overrides
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("invariant: valid default"));
        let data_dir = overrides
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let explicit_url = overrides.public_url.or(file.public_url);
        let public_url_from_listen = explicit_url.is_none();
        let public_url = explicit_url.unwrap_or_else(|| format!("http://{listen}"));
        let public_url = public_url.trim_end_matches('/').to_string();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(ConfigError::PublicUrl(public_url));
        }
        let secs = Duration::from_secs;
        let stream = StreamConfig {
            ping_interval: secs(file.stream.ping_interval_secs.unwrap_or(30).max(1)),
            auth_timeout: secs(file.stream.auth_timeout_secs.unwrap_or(10).max(1)),
            replay_window: secs(file.stream.replay_window_secs.unwrap_or(300)),
            new_event: match file.stream.new_event.as_deref() {
                None | Some("id") => NewEventForm::Id,
                Some("object") => NewEventForm::Object,
                Some(other) => return Err(ConfigError::NewEvent(other.to_owned())),
            },
        };
        let limits = Limits {
            max_json_body_bytes: unlimited_usize(
                file.limits.max_json_body_bytes.unwrap_or(1024 * 1024),
            ),
            max_upload_bytes: unlimited_u64(
                file.limits.max_upload_bytes.unwrap_or(256 * 1024 * 1024),
            ),
            min_free_disk_bytes: file
                .limits
                .min_free_disk_bytes
                .unwrap_or(DEFAULT_MIN_FREE_DISK_BYTES),
        };
        let limit = |secs_value: u64| (secs_value > 0).then(|| secs(secs_value));
        let push = PushConfig {
            cancel_grace: limit(
                file.push
                    .cancel_grace_secs
                    .unwrap_or(PushConfig::DEFAULT_CANCEL_GRACE_SECS),
            ),
            idle_timeout: limit(
                file.push
                    .idle_timeout_secs
                    .unwrap_or(PushConfig::DEFAULT_IDLE_TIMEOUT_SECS),
            ),
        };
        let r = &file.retention;
        let retention = RetentionConfig {
            keep_deployments: r.keep_deployments.unwrap_or(DEFAULT_KEEP_DEPLOYMENTS),
            max_age_days: r.max_age_days.unwrap_or(0),
            prune_interval: secs(r.prune_interval_secs.unwrap_or(DEFAULT_PRUNE_INTERVAL_SECS)),
            max_log_bytes: r
                .max_log_bytes
                .unwrap_or(crate::store::writer::DEFAULT_MAX_LOG_BYTES),
            keep_images: r.keep_images.unwrap_or(crate::images::DEFAULT_KEEP_IMAGES),
        };
        // For every interval here 0 lifts it.
        let optional_secs = |v: u64| (v > 0).then(|| secs(v));
        let f = &file.server;
        let server = ServerConfig {
            header_read_timeout: optional_secs(f.header_read_timeout_secs.unwrap_or(30)),
            idle_timeout: optional_secs(f.idle_timeout_secs.unwrap_or(75)),
            max_connections: f.max_connections.unwrap_or(10_000),
            max_connections_per_address: f.max_connections_per_address.unwrap_or(0),
            fd_reserve: f.fd_reserve.unwrap_or(512),
            sse_keepalive: optional_secs(f.sse_keepalive_secs.unwrap_or(15)),
        };
        let mut pipeline = PipelineConfig::for_data_dir(&data_dir, &public_url);
        let e = file.executor;
        pipeline.build_cmd = e.build_cmd.or(pipeline.build_cmd);
        pipeline.push_cmd = e.push_cmd.or(pipeline.push_cmd);
        pipeline.start_cmd = e.start_cmd.or(pipeline.start_cmd);
        pipeline.hook_cmd = e.hook_cmd.or(pipeline.hook_cmd);
        if let Some(v) = e.start_timeout_secs {
            pipeline.start_timeout = secs(v);
        }
        if let Some(v) = e.deployment_timeout_secs {
            pipeline.deployment_timeout = secs(v);
        }
        if let Some(v) = e.fetch_timeout_secs {
            pipeline.fetch_timeout = secs(v);
        }
        if let Some(v) = e.max_redirects {
            pipeline.max_redirects = v;
        }
        if let Some(v) = e.max_archive_bytes {
            pipeline.max_archive_bytes = unlimited_u64(v);
        }
        if let Some(v) = e.max_extracted_bytes {
            pipeline.max_extracted_bytes = unlimited_u64(v);
        }
        if let Some(v) = e.max_archive_entries {
            pipeline.max_archive_entries = unlimited_u64(v);
        }
        if let Some(v) = e.max_line_bytes {
            // A longer executor line would be cut again by the store, at another limit. As for
            // every limit, 0 lifts it: lines are then cut only where the store cuts them.
            pipeline.max_line_bytes = match v {
                0 => crate::lines::MAX_LINE_BYTES,
                v if v > crate::lines::MAX_LINE_BYTES => return Err(ConfigError::MaxLineBytes(v)),
                v => v,
            };
        }
        if let Some(v) = e.max_concurrent {
            // As for every limit, 0 lifts it.
            pipeline.max_concurrent = (v > 0).then_some(v);
        }
        if let Some(v) = overrides.allow_private_sources.or(e.allow_private_sources) {
            pipeline.allow_private_sources = v;
        }
        let n = file.notifications;
        let ms = Duration::from_millis;
        let notifications = NotificationsConfig {
            // 0 means unlimited for the time limit (reqwest then waits as long as it takes).
            request_timeout: ms(n.request_timeout_ms.unwrap_or(10_000)),
            first_retry_delay: ms(n.first_retry_delay_ms.unwrap_or(5_000).max(1)),
            max_retry_delay: secs(n.max_retry_delay_secs.unwrap_or(3600).max(1)),
            retry_for: secs(n.retry_for_hours.unwrap_or(24).saturating_mul(3600)),
            poll_interval: ms(n.poll_interval_ms.unwrap_or(1000).max(1)),
            max_concurrent: n.max_concurrent_deliveries.unwrap_or(32),
            events_max_age: match file.retention.events_max_age_days.unwrap_or(90) {
                0 => None,
                days => Some(secs(days.saturating_mul(86_400))),
            },
            allow_private: pipeline.allow_private_sources,
        };
        let cluster = cluster_config(&file.store, file.node_id, &file.cluster)?;
        Ok(Config {
            listen,
            data_dir,
            public_url,
            public_url_from_listen,
            admin_token: overrides.admin_token,
            stream,
            limits,
            pipeline,
            notifications,
            push,
            retention,
            server,
            metrics_token: file.metrics.token.filter(|t| !t.is_empty()),
            cluster,
        })
    }

    /// True for configuration errors that concern cluster mode (`deployd serve` exits 2 on
    /// them, before it contacts anything).
    pub fn is_cluster_error(error: &ConfigError) -> bool {
        matches!(error, ConfigError::Store(_) | ConfigError::Cluster(_))
    }

    /// Re-derives a defaulted public URL from the address actually bound.
    pub fn bound_to(&mut self, addr: SocketAddr) {
        if self.public_url_from_listen {
            self.public_url = format!("http://{addr}");
            self.pipeline.public_url = self.public_url.clone();
        }
    }

    /// The sled directory inside the data dir.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// The log segment files (`store::logs`).
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// Where uploaded source archives are kept.
    pub fn sources_dir(&self) -> PathBuf {
        self.data_dir.join("sources")
    }

    /// The file the first admin token is written to.
    pub fn admin_token_file(&self) -> PathBuf {
        self.data_dir.join("admin-token")
    }
}

/// A size limit as configured: 0 means unlimited (DESIGN.md, "Conventions").
fn unlimited_u64(limit: u64) -> u64 {
    if limit == 0 {
        u64::MAX
    } else {
        limit
    }
}

/// [`unlimited_u64`] for limits counted in `usize`.
fn unlimited_usize(limit: usize) -> usize {
    if limit == 0 {
        usize::MAX
    } else {
        limit
    }
}

/// The file as a TOML tree (syntax checked; keys are checked once flags are overlaid).
fn read_tree(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Deserialises the merged tree, naming the key and where its value came from on error.
fn parse_tree(
    tree: toml::Table,
    file: Option<&Path>,
    flags: &KeyFlags,
) -> Result<FileConfig, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|error| {
        let key = error.path().to_string();
        let origin = flags.origin(&key).unwrap_or_else(|| match file {
            Some(path) => path.display().to_string(),
            None => "defaults".to_owned(),
        });
        ConfigError::Key {
            key,
            origin,
            message: error.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_out_of_the_box() {
        let config =
            Config::from_parts(FileConfig::default(), Overrides::default()).expect("config");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.public_url, "http://127.0.0.1:8080");
        assert_eq!(config.stream.ping_interval, Duration::from_secs(30));
        assert_eq!(config.pipeline.start_timeout, Duration::from_secs(60));
        assert!(!config.pipeline.allow_private_sources);
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\npublic_url = \"https://x.example/\"\n[executor]\nstart_timeout_secs = 5\nallow_private_sources = true\n",
        )
        .expect("toml");
        let overrides = Overrides {
            listen: Some("127.0.0.1:9100".parse().expect("addr")),
            ..Overrides::default()
        };
        let config = Config::from_parts(file, overrides).expect("config");
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.public_url, "https://x.example");
        assert_eq!(config.pipeline.start_timeout, Duration::from_secs(5));
        assert!(config.pipeline.allow_private_sources);
    }

    #[test]
    fn notification_and_retention_keys_have_defaults_and_zero_lifts_their_limits() {
        let defaults = Config::from_parts(FileConfig::default(), Overrides::default())
            .expect("config")
            .notifications;
        assert_eq!(defaults.first_retry_delay, Duration::from_secs(5));
        assert_eq!(defaults.retry_for, Duration::from_secs(24 * 3600));
        assert_eq!(
            defaults.events_max_age,
            Some(Duration::from_secs(90 * 86_400))
        );
        let file: FileConfig = toml::from_str(
            "[notifications]\nrequest_timeout_ms = 0\nretry_for_hours = 0\nfirst_retry_delay_ms = 200\n[retention]\nevents_max_age_days = 0\n",
        )
        .expect("toml");
        let config = Config::from_parts(file, Overrides::default()).expect("config");
        let n = config.notifications;
        assert!(n.request_timeout.is_zero() && n.retry_for.is_zero());
        assert_eq!(n.first_retry_delay, Duration::from_millis(200));
        assert_eq!(n.events_max_age, None);
        assert!(toml::from_str::<FileConfig>("[notifications]\nretries = 3\n").is_err());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
        let bad = Config::from_parts(
            FileConfig::default(),
            Overrides {
                public_url: Some("ftp://x".into()),
                ..Overrides::default()
            },
        );
        assert!(matches!(bad, Err(ConfigError::PublicUrl(_))));
    }

    #[test]
    fn the_new_event_form_is_the_id_unless_object_is_asked_and_nothing_else_is_taken() {
        let form = |toml_text: &str| {
            let file: FileConfig = toml::from_str(toml_text).expect("toml");
            Config::from_parts(file, Overrides::default()).map(|c| c.stream.new_event)
        };
        assert_eq!(form("").expect("default"), NewEventForm::Id);
        assert_eq!(
            form("[stream]\nnew_event = \"id\"\n").expect("id"),
            NewEventForm::Id
        );
        assert_eq!(
            form("[stream]\nnew_event = \"object\"\n").expect("object"),
            NewEventForm::Object
        );
        assert!(matches!(
            form("[stream]\nnew_event = \"Object\"\n"),
            Err(ConfigError::NewEvent(_))
        ));
    }

    #[test]
    fn the_store_is_embedded_unless_nats_urls_are_given_and_anything_else_is_refused() {
        let cluster = |toml_text: &str| {
            let file: FileConfig = toml::from_str(toml_text).expect("toml");
            Config::from_parts(file, Overrides::default()).map(|c| c.cluster)
        };
        assert_eq!(cluster("").expect("default"), None);
        assert_eq!(cluster("store = \"\"\n").expect("empty"), None);
        let two = cluster(
            "store = \"nats://10.0.0.1:4222, nats://n2.example:4223\"\nnode_id = \"a-1\"\n",
        )
        .expect("two servers")
        .expect("cluster mode");
        assert_eq!(
            two.servers,
            ["nats://10.0.0.1:4222", "nats://n2.example:4223"]
        );
        assert_eq!(
            two.servers_list(),
            "nats://10.0.0.1:4222,nats://n2.example:4223"
        );
        assert_eq!(two.node_id, "a-1");
        assert_eq!(two.lease, Duration::from_secs(15));
        assert_eq!(two.replicas, 3);
        assert_eq!(two.advertise_url, None);
        for bad in [
            "http://x:4222",
            "nats://x",
            "nats://x:port",
            "nats://:4222",
            "nats://x:4222/path",
            "nats://x:4222,redis://y:6379",
        ] {
            let error = cluster(&format!("store = {bad:?}\nnode_id = \"a\"\n")).unwrap_err();
            assert!(matches!(error, ConfigError::Store(_)), "{bad}: {error}");
            assert!(Config::is_cluster_error(&error));
            assert!(error.to_string().contains("nats://HOST:PORT"), "{error}");
        }
    }

    #[test]
    fn cluster_keys_are_checked_and_a_node_id_defaults_to_the_host_name() {
        let cluster = |extra: &str| {
            let file: FileConfig =
                toml::from_str(&format!("store = \"nats://127.0.0.1:4222\"\n{extra}"))
                    .expect("toml");
            Config::from_parts(file, Overrides::default()).map(|c| c.cluster)
        };
        let defaulted = cluster("").expect("config").expect("cluster");
        assert_eq!(Some(defaulted.node_id), cluster::host_name());
        let set = cluster(
            "[cluster]\nlease_secs = 1\nadvertise_url = \"http://10.0.0.2:8080/\"\nreplicas = 1\n",
        )
        .expect("config")
        .expect("cluster");
        assert_eq!(set.lease, Duration::from_secs(1));
        assert_eq!(set.advertise_url.as_deref(), Some("http://10.0.0.2:8080"));
        assert_eq!(set.replicas, 1);
        for bad in [
            "[cluster]\nlease_secs = 0\n",
            "[cluster]\nreplicas = 0\n",
            "[cluster]\nadvertise_url = \"10.0.0.2:8080\"\n",
            "node_id = \"a b\"\n",
            "node_id = \" \"\n",
        ] {
            let error = cluster(bad).unwrap_err();
            assert!(matches!(error, ConfigError::Cluster(_)), "{bad}: {error}");
        }
    }

    #[test]
    fn an_executor_line_limit_above_the_store_limit_is_refused() {
        let file = |limit: usize| -> FileConfig {
            toml::from_str(&format!("[executor]\nmax_line_bytes = {limit}\n")).expect("toml")
        };
        let max = crate::lines::MAX_LINE_BYTES;
        let at_max = Config::from_parts(file(max), Overrides::default()).expect("config");
        assert_eq!(at_max.pipeline.max_line_bytes, max);
        let error = Config::from_parts(file(max + 1), Overrides::default()).unwrap_err();
        assert!(matches!(error, ConfigError::MaxLineBytes(v) if v == max + 1));
        assert!(error.to_string().contains("max_line_bytes"), "{error}");
        // 0 lifts the executor's own limit: lines are cut only at the store's.
        let unlimited = Config::from_parts(file(0), Overrides::default()).expect("config");
        assert_eq!(unlimited.pipeline.max_line_bytes, max);
        let defaults = Config::from_parts(FileConfig::default(), Overrides::default());
        assert_eq!(defaults.expect("config").pipeline.max_line_bytes, 16 * 1024);
    }
}
