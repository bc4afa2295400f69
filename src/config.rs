//! One `Config` for the server: built from defaults that run out of the box, then a TOML file
//! (`--config FILE`), then environment variables and flags (flags win; clap reads the
//! `DEPLOYD_*` variables for them in `main`).
//!
//! Every limit and interval of the service that an operator may want to change lives here, with
//! its default and the reason for it.

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
    /// `[metrics] token`: when set, `GET /metrics` needs `Authorization: Bearer <token>`
    /// (default none: the metrics carry no secret and no per-app label, and a scraper on
    /// the same host should not need one).
    pub metrics_token: Option<String>,
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
}

/// Size limits on what clients send.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest JSON request body (1 MiB: every API object is tiny).
    pub max_json_body_bytes: usize,
    /// Largest source archive upload through `PUT` on an upload URL.
    pub max_upload_bytes: u64,
}

/// The `--config` TOML file. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
    pub stream: FileStream,
    pub limits: FileLimits,
    pub executor: FileExecutor,
    pub metrics: FileMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileMetrics {
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileStream {
    pub ping_interval_secs: Option<u64>,
    pub auth_timeout_secs: Option<u64>,
    pub replay_window_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileLimits {
    pub max_json_body_bytes: Option<usize>,
    pub max_upload_bytes: Option<u64>,
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
    #[error("invalid public URL {0:?}: it must start with http:// or https://")]
    PublicUrl(String),
    #[error(
        "[executor] max_line_bytes = {0} is out of range: it must be at most {max} \
         (the longest line the store keeps; 0 means that limit)",
        max = crate::lines::MAX_LINE_BYTES
    )]
    MaxLineBytes(usize),
}

impl Config {
    /// Defaults, then the file named in `overrides` (if any), then `overrides`.
    pub fn load(overrides: Overrides) -> Result<Config, ConfigError> {
        let file = match &overrides.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
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
        };
        let limits = Limits {
            max_json_body_bytes: file.limits.max_json_body_bytes.unwrap_or(1024 * 1024),
            max_upload_bytes: file.limits.max_upload_bytes.unwrap_or(256 * 1024 * 1024),
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
            pipeline.max_archive_bytes = v;
        }
        if let Some(v) = e.max_extracted_bytes {
            pipeline.max_extracted_bytes = v;
        }
        if let Some(v) = e.max_archive_entries {
            pipeline.max_archive_entries = v;
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
        if let Some(v) = overrides.allow_private_sources.or(e.allow_private_sources) {
            pipeline.allow_private_sources = v;
        }
        Ok(Config {
            listen,
            data_dir,
            public_url,
            public_url_from_listen,
            admin_token: overrides.admin_token,
            stream,
            limits,
            pipeline,
            metrics_token: file.metrics.token.filter(|t| !t.is_empty()),
        })
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

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
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
