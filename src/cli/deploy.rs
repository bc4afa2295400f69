//! `deployd deploy PATH|URL`: the one-command deploy.
//!
//! ```text
//! deployd deploy --url http://deployd:8080 --token $TOKEN --app web ./my-app [--git-ref v2] [--no-follow]
//! ```
//!
//! A directory is packed (`cli::pack`, honouring `.deploydignore`) into a temporary tar.gz,
//! uploaded through `POST /v1/sources` and a `PUT` on the upload URL (a progress bar on stderr
//! only when it is a terminal), and deployed with the download URL as `source_url`. A `.tar.gz`
//! file is uploaded as it is. An `http(s)://` URL is deployed directly. The deployment is then
//! followed with `deployd follow`'s own code, so the exit codes are its (see [`crate::cli`]);
//! with `--no-follow` the deployment id is printed on stdout and the exit code is 0.
//!
//! Talks HTTP only; the only file it writes is the temporary archive, removed when done.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::follow::{run_follow, FollowArgs};
use super::push::error_message_from_body;
use super::tls::describe_http;
use super::{encode_path_segment, http_url, AppTarget, EXIT_SUCCESS, EXIT_USAGE_OR_AUTH};

/// How long to wait for a TCP (and TLS) connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Timeout of the small JSON requests (create source, trigger).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest JSON answer read from the server (a source or deployment object is a few KiB).
const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

/// Arguments of `deployd deploy`.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub target: AppTarget,
    /// A source directory (packed), a .tar.gz file, or an http(s):// archive URL
    pub source: String,
    /// The deployment's git ref (default: one the server generates)
    #[arg(long)]
    pub git_ref: Option<String>,
    /// Print the deployment id and exit instead of following it
    #[arg(long)]
    pub no_follow: bool,
}

/// Runs `deployd deploy` and returns the process exit code (see [`crate::cli`]).
pub async fn run_deploy(args: DeployArgs) -> anyhow::Result<i32> {
    let client = match super::tls::http_builder(&args.target.tls) {
        Ok(builder) => builder.connect_timeout(CONNECT_TIMEOUT).build()?,
        Err(err) => return Ok(err.report("deployd deploy")),
    };
    let deployer = Deployer {
        client,
        args: &args,
    };
    let id = match deployer.trigger().await {
        Ok(id) => id,
        Err(why) => {
            eprintln!("deployd deploy: {why}");
            return Ok(EXIT_USAGE_OR_AUTH);
        }
    };
    if args.no_follow {
        println!("{id}");
        return Ok(EXIT_SUCCESS);
    }
    run_follow(FollowArgs {
        target: args.target.clone(),
        deployment: Some(id),
    })
    .await
}

struct Deployer<'a> {
    client: reqwest::Client,
    args: &'a DeployArgs,
}

/// Removes the temporary archive however `deploy` ends.
struct TempArchive(PathBuf);

impl Drop for TempArchive {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Deployer<'_> {
    /// Gets a source URL (packing and uploading when needed) and creates the deployment.
    async fn trigger(&self) -> Result<String, String> {
        let source = &self.args.source;
        let source_url = if is_url(source) {
            source.clone()
        } else {
            let path = Path::new(source);
            let meta = std::fs::metadata(path).map_err(|e| format!("{source}: {e}"))?;
            if meta.is_dir() {
                let archive = TempArchive(
                    std::env::temp_dir()
                        .join(format!("deployd-deploy-{}.tar.gz", uuid::Uuid::new_v4())),
                );
                let dir = path.to_path_buf();
                let out = archive.0.clone();
                let packed = tokio::task::spawn_blocking(move || super::pack::pack_dir(&dir, &out))
                    .await
                    .map_err(|e| format!("packing {source}: {e}"))?
                    .map_err(|e| e.to_string())?;
                eprintln!(
                    "-----> Packed {source}: {} entries, {} bytes",
                    packed.entries, packed.bytes
                );
                self.upload(&archive.0).await?
            } else {
                self.upload(path).await?
            }
        };
        let mut deployment = json!({ "source_url": source_url });
        if let Some(git_ref) = &self.args.git_ref {
            deployment["git_ref"] = json!(git_ref);
        }
        let path = format!(
            "/v1/apps/{}/deployments",
            encode_path_segment(&self.args.target.app)
        );
        let body = self
            .post_json(&path, json!({ "deployment": deployment }))
            .await?;
        let id = body["deployment"]["id"]
            .as_str()
            .ok_or_else(|| format!("POST {path}: no deployment id in {body}"))?;
        eprintln!(
            "-----> Deployment {id} created ({})",
            body["deployment"]["status"].as_str().unwrap_or("?")
        );
        Ok(id.to_owned())
    }

    /// `POST /v1/sources`, then the archive `PUT` to its upload URL; returns the download URL.
    async fn upload(&self, archive: &Path) -> Result<String, String> {
        let body = self.post_json("/v1/sources", json!({})).await?;
        let (Some(upload_url), Some(download_url)) = (
            body["source"]["upload_url"].as_str(),
            body["source"]["download_url"].as_str(),
        ) else {
            return Err(format!("POST /v1/sources: no source URLs in {body}"));
        };
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| format!("{}: {e}", archive.display()))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| format!("{}: {e}", archive.display()))?
            .len();
        let bar = progress_bar(len);
        let counted = bar.clone();
        let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                counted.inc(chunk.len() as u64);
            }
        });
        // The upload URL is pre-authenticated: no credentials go with it.
        let response = self
            .client
            .put(upload_url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-gzip")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| format!("uploading the archive: {}", describe_http(&e)))?;
        bar.finish_and_clear();
        check("PUT upload URL", response).await?;
        eprintln!("-----> Uploaded {len} bytes");
        Ok(download_url.to_owned())
    }

    async fn post_json(&self, path: &str, body: Value) -> Result<Value, String> {
        let response = self
            .client
            .post(http_url(&self.args.target.url, path))
            .basic_auth("", Some(&self.args.target.token))
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("POST {path}: {}", describe_http(&e)))?;
        let bytes = check(&format!("POST {path}"), response).await?;
        serde_json::from_slice(&bytes).map_err(|e| format!("POST {path}: answer is not JSON: {e}"))
    }
}

fn is_url(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// A byte progress bar on stderr when it is a terminal; a hidden one otherwise (logs and
/// pipes get the summary lines only).
fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "Uploading [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The body of a 2xx answer; otherwise an error naming the request, status and JSON error.
pub(crate) async fn check(what: &str, response: reqwest::Response) -> Result<Vec<u8>, String> {
    let status = response.status();
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| format!("{what}: {e}"))?;
        if body.len() + chunk.len() > MAX_JSON_BODY_BYTES {
            return Err(format!(
                "{what}: answer larger than {MAX_JSON_BODY_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(body);
    }
    let hint = match status.as_u16() {
        401 => " (check --token / DEPLOYD_TOKEN)",
        _ => "",
    };
    Err(format!(
        "{what}: HTTP {status}{hint}: {}",
        error_message_from_body(&body)
    ))
}
