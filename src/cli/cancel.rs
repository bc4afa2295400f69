//! `deployd cancel`: cancel a deployment (the app's running one by default).
//!
//! ```text
//! deployd cancel --url http://deployd:8080 --token $TOKEN --app web [DEPLOYMENT_ID]
//! ```
//!
//! Sends `POST /v1/apps/{app}/deployments/{id}/cancel`. Without an id, the app's running
//! deployment (the one in `building`, `pushing` or `starting`) is cancelled. Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the cancel was accepted (a queued deployment is `aborted` now; a running one is being stopped) |
//! | 1 | nothing to cancel: the deployment already ended (409), or the app has no running deployment |
//! | 2 | usage, authentication, HTTP or connection error (an unknown app or deployment: 404) |
//!
//! Talks HTTP only; never touches the store.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::push::error_message_from_body;
use super::{
    encode_path_segment, http_url, EXIT_DEPLOYMENT_FAILED, EXIT_SUCCESS, EXIT_USAGE_OR_AUTH,
};

/// Every request of this command is small; a server that does not answer in this is down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Deployments looked at to find the running one: it is among the newest (one runs per app,
/// and only queued ones, created after it, can be newer).
const RUNNING_SEARCH_PAGE: u32 = 100;
/// Statuses of a deployment past `queued` and not finished.
const RUNNING: [&str; 3] = ["building", "pushing", "starting"];

/// Arguments of `deployd cancel`.
#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub target: super::AppTarget,
    /// Deployment id (default: the app's running deployment)
    pub deployment: Option<String>,
}

/// Runs `deployd cancel` and returns the exit code (table in the module doc).
pub async fn run_cancel(args: CancelArgs) -> anyhow::Result<i32> {
    let client = match super::tls::http_builder(&args.target.tls) {
        Ok(builder) => builder.timeout(REQUEST_TIMEOUT).build()?,
        Err(err) => return Ok(err.report("deployd cancel")),
    };
    let deployments = format!(
        "/v1/apps/{}/deployments",
        encode_path_segment(&args.target.app)
    );
    let id = match &args.deployment {
        Some(id) => id.clone(),
        None => {
            let path = format!("{deployments}?per_page={RUNNING_SEARCH_PAGE}");
            let (status, body) = match call(&client, &args, reqwest::Method::GET, &path).await {
                Ok(answer) => answer,
                Err(code) => return Ok(code),
            };
            if status != 200 {
                eprintln!(
                    "deployd cancel: GET {path}: HTTP {status}: {}",
                    message(&body)
                );
                return Ok(EXIT_USAGE_OR_AUTH);
            }
            let running = body["deployments"].as_array().and_then(|list| {
                list.iter()
                    .find(|d| RUNNING.contains(&d["status"].as_str().unwrap_or("")))
                    .and_then(|d| d["id"].as_str())
                    .map(str::to_owned)
            });
            match running {
                Some(id) => id,
                None => {
                    eprintln!(
                        "deployd cancel: app {} has no running deployment",
                        args.target.app
                    );
                    return Ok(EXIT_DEPLOYMENT_FAILED);
                }
            }
        }
    };
    let path = format!("{deployments}/{}/cancel", encode_path_segment(&id));
    let (status, body) = match call(&client, &args, reqwest::Method::POST, &path).await {
        Ok(answer) => answer,
        Err(code) => return Ok(code),
    };
    Ok(match status {
        202 => {
            let now = body["deployment"]["status"].as_str().unwrap_or("unknown");
            if now == "aborted" {
                eprintln!("-----> Deployment {id} cancelled (it was queued): aborted");
            } else {
                eprintln!("-----> Deployment {id} is being cancelled (it was {now})");
            }
            EXIT_SUCCESS
        }
        409 => {
            eprintln!("deployd cancel: {}", message(&body));
            EXIT_DEPLOYMENT_FAILED
        }
        _ => {
            eprintln!(
                "deployd cancel: POST {path}: HTTP {status}: {}",
                message(&body)
            );
            EXIT_USAGE_OR_AUTH
        }
    })
}

/// One JSON request; a transport error is printed and turned into its exit code.
async fn call(
    client: &reqwest::Client,
    args: &CancelArgs,
    method: reqwest::Method,
    path: &str,
) -> Result<(u16, Value), i32> {
    let response = client
        .request(method, http_url(&args.target.url, path))
        .basic_auth("", Some(&args.target.token))
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| {
            eprintln!("deployd cancel: {path}: {}", super::tls::describe_http(&e));
            EXIT_USAGE_OR_AUTH
        })?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(error_message_from_body(&bytes)));
    Ok((status, body))
}

/// The readable part of an error body.
fn message(body: &Value) -> String {
    error_message_from_body(body.to_string().as_bytes())
}
