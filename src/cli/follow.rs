//! `deployd follow`: print a deployment's output as it is written, then how it ended.
//!
//! ```text
//! deployd follow --url http://deployd:8080 --token $TOKEN --app web [--deployment ID]
//! ```
//!
//! Without `--deployment` the newest deployment of the app is followed
//! (`GET /v1/apps/{app}/deployments?per_page=1`). The output comes from
//! `GET …/deployments/{id}/output?follow=true`, a chunked `text/plain` body the server ends when
//! the deployment reaches a terminal status; it is copied to stdout chunk by chunk as it
//! arrives. Then `GET …/deployments/{id}` gives the final status, printed to stderr as
//! `-----> Deployment ended: <status>`. Exit codes are those of [`crate::cli`]: 3 when the body
//! ended (or broke) while the deployment was still running.
//!
//! Talks HTTP only (reqwest); holds no state beyond the one deployment id.

use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::push::error_message_from_body;
use super::tls::describe_http;
use super::{
    encode_path_segment, http_url, EXIT_CONNECTION_LOST, EXIT_DEPLOYMENT_FAILED, EXIT_SUCCESS,
    EXIT_USAGE_OR_AUTH,
};
use crate::status::Status;

/// How long to wait for a TCP (and TLS) connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Timeout of the small JSON requests (list, show). The output request has none: a build may
/// run for an hour.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest JSON answer read from the server (a one-deployment list or a deployment object are
/// a few KiB); bounds memory against a misbehaving server.
const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

/// Arguments of `deployd follow`.
#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    #[command(flatten)]
    pub target: super::AppTarget,
    /// Deployment id (default: the app's newest deployment)
    #[arg(long)]
    pub deployment: Option<String>,
}

/// Runs `deployd follow` and returns the process exit code (see [`crate::cli`]).
///
/// Errors only when the HTTP client cannot be built; every server or network failure is an
/// exit code, with the reason printed to stderr.
pub async fn run_follow(args: FollowArgs) -> anyhow::Result<i32> {
    let client = match super::tls::http_builder(&args.target.tls) {
        Ok(builder) => builder.connect_timeout(CONNECT_TIMEOUT).build()?,
        Err(err) => return Ok(err.report("deployd follow")),
    };
    let follower = Follower {
        client,
        args: &args,
    };
    Ok(follower.run().await)
}

/// Why a request gave no usable answer; each maps to one exit code.
#[derive(Debug)]
enum FollowError {
    /// Refused by the server, or the server could not be reached: exit 2.
    Http(String),
    /// The connection broke mid-body: exit 3.
    Broken(String),
}

impl FollowError {
    fn exit_code(&self) -> i32 {
        match self {
            FollowError::Http(_) => EXIT_USAGE_OR_AUTH,
            FollowError::Broken(_) => EXIT_CONNECTION_LOST,
        }
    }
}

impl std::fmt::Display for FollowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FollowError::Http(why) | FollowError::Broken(why) => f.write_str(why),
        }
    }
}

struct Follower<'a> {
    client: reqwest::Client,
    args: &'a FollowArgs,
}

impl Follower<'_> {
    async fn run(&self) -> i32 {
        let id = match &self.args.deployment {
            Some(id) => id.clone(),
            None => match self.newest_deployment().await {
                Ok(Some(id)) => id,
                Ok(None) => {
                    eprintln!(
                        "deployd follow: app {} has no deployment",
                        self.args.target.app
                    );
                    return EXIT_USAGE_OR_AUTH;
                }
                Err(e) => {
                    eprintln!("deployd follow: {e}");
                    return e.exit_code();
                }
            },
        };
        eprintln!("-----> Following deployment {id}");

        let streamed = self.copy_output(&id).await;
        if let Err(FollowError::Http(why)) = &streamed {
            eprintln!("deployd follow: {why}");
            return EXIT_USAGE_OR_AUTH;
        }
        let status = match self.deployment_status(&id).await {
            Ok(status) => status,
            Err(e) => {
                eprintln!("deployd follow: {e}");
                // The body may have ended because the server went away.
                return match streamed {
                    Err(broken) => broken.exit_code(),
                    Ok(()) => e.exit_code(),
                };
            }
        };
        exit_code_for(&status, streamed.err())
    }

    fn deployments_path(&self) -> String {
        format!(
            "/v1/apps/{}/deployments",
            encode_path_segment(&self.args.target.app)
        )
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(http_url(&self.args.target.url, path))
            .basic_auth("", Some(&self.args.target.token))
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// The id of the app's newest deployment, if it has any.
    async fn newest_deployment(&self) -> Result<Option<String>, FollowError> {
        let path = format!("{}?per_page=1", self.deployments_path());
        let body = self.get_json(&path).await?;
        Ok(body
            .get("deployments")
            .and_then(|d| d.as_array())
            .and_then(|d| d.first())
            .and_then(|d| d.get("id"))
            .and_then(|id| id.as_str())
            .map(str::to_owned))
    }

    /// The deployment's status string (kept as a string: clients treat unknown ones as ended).
    async fn deployment_status(&self, id: &str) -> Result<String, FollowError> {
        let path = format!("{}/{}", self.deployments_path(), encode_path_segment(id));
        let body = self.get_json(&path).await?;
        body.get("deployment")
            .and_then(|d| d.get("status"))
            .and_then(|s| s.as_str())
            .map(str::to_owned)
            .ok_or_else(|| FollowError::Http(format!("GET {path}: no deployment status in {body}")))
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value, FollowError> {
        let response = self
            .get(path)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| FollowError::Http(format!("GET {path}: {}", describe_http(&e))))?;
        let response = check_status(path, response).await?;
        let body = read_limited(response, MAX_JSON_BODY_BYTES)
            .await
            .map_err(|e| FollowError::Http(format!("GET {path}: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| FollowError::Http(format!("GET {path}: answer is not JSON: {e}")))
    }

    /// Copies the followed output to stdout until the server ends it.
    async fn copy_output(&self, id: &str) -> Result<(), FollowError> {
        let path = format!(
            "{}/{}/output?follow=true",
            self.deployments_path(),
            encode_path_segment(id)
        );
        let response = self
            .get(&path)
            .send()
            .await
            .map_err(|e| FollowError::Http(format!("GET {path}: {}", describe_http(&e))))?;
        let response = check_status(&path, response).await?;
        let mut stdout = tokio::io::stdout();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| FollowError::Broken(format!("output stream broke: {e}")))?;
            // If stdout is gone (e.g. `| head`), there is nobody left to print for.
            if stdout.write_all(&chunk).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Turns a non-2xx answer into [`FollowError::Http`] with the JSON `error` in it.
async fn check_status(
    path: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, FollowError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = read_limited(response, MAX_JSON_BODY_BYTES)
        .await
        .unwrap_or_default();
    let hint = match status.as_u16() {
        401 => " (check --token / DEPLOYD_TOKEN)",
        _ => "",
    };
    Err(FollowError::Http(format!(
        "GET {path}: HTTP {status}{hint}: {}",
        error_message_from_body(&body)
    )))
}

/// The body, refusing more than `limit` bytes.
async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if body.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The exit code once the output ended: `status` is the deployment's status afterwards, and
/// `broken` says whether the output stream broke (rather than ended normally).
fn exit_code_for(status: &str, broken: Option<FollowError>) -> i32 {
    // Scalingo's clients treat any status outside the four unfinished ones as finished.
    let finished = status
        .parse::<Status>()
        .map(Status::is_terminal)
        .unwrap_or(true);
    if !finished {
        match broken {
            Some(why) => eprintln!("deployd follow: {why}; the deployment is still {status}"),
            None => {
                eprintln!("deployd follow: output ended while the deployment is still {status}")
            }
        }
        return EXIT_CONNECTION_LOST;
    }
    eprintln!("-----> Deployment ended: {status}");
    if status == Status::Success.as_str() {
        EXIT_SUCCESS
    } else {
        EXIT_DEPLOYMENT_FAILED
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::{Path, Query};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use axum::{Json, Router};

    use super::*;

    /// A fake server: newest deployment `d-2`, whose output is two chunks, then `status`.
    async fn fake_server(status: &'static str) -> String {
        fn authorized(headers: &HeaderMap) -> bool {
            headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic OnRvaw==")
        }
        fn unauthorized() -> (StatusCode, Json<serde_json::Value>) {
            (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({"error": "invalid token"})),
            )
        }
        let app = Router::new()
            .route(
                "/v1/apps/{app}/deployments",
                get(move |headers: HeaderMap, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    if !authorized(&headers) {
                        return Err(unauthorized());
                    }
                    assert_eq!(q.get("per_page").map(String::as_str), Some("1"));
                    Ok(Json(serde_json::json!({"deployments": [{"id": "d-2", "status": status}]})))
                }),
            )
            .route(
                "/v1/apps/{app}/deployments/{id}",
                get(move |Path((app, id)): Path<(String, String)>| async move {
                    assert_eq!((app.as_str(), id.as_str()), ("web", "d-2"));
                    Json(serde_json::json!({"deployment": {"id": id, "status": status}}))
                }),
            )
            .route(
                "/v1/apps/{app}/deployments/{id}/output",
                get(|headers: HeaderMap| async move {
                    if !authorized(&headers) {
                        return Err(unauthorized());
                    }
                    Ok("line 1\nline 2\n")
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn args(url: String, token: &str) -> FollowArgs {
        FollowArgs {
            target: crate::cli::AppTarget {
                url,
                token: token.into(),
                app: "web".into(),
                tls: Default::default(),
            },
            deployment: None,
        }
    }

    #[tokio::test]
    async fn follows_newest_deployment_to_success() {
        let url = fake_server("success").await;
        assert_eq!(run_follow(args(url, "tok")).await.unwrap(), EXIT_SUCCESS);
    }

    #[tokio::test]
    async fn failed_deployment_exits_1() {
        let url = fake_server("build-error").await;
        assert_eq!(
            run_follow(args(url, "tok")).await.unwrap(),
            EXIT_DEPLOYMENT_FAILED
        );
    }

    #[tokio::test]
    async fn output_ending_while_running_exits_3() {
        let url = fake_server("building").await;
        assert_eq!(
            run_follow(args(url, "tok")).await.unwrap(),
            EXIT_CONNECTION_LOST
        );
    }

    #[tokio::test]
    async fn bad_token_exits_2() {
        let url = fake_server("success").await;
        assert_eq!(
            run_follow(args(url, "wrong")).await.unwrap(),
            EXIT_USAGE_OR_AUTH
        );
    }

    #[test]
    fn success_exits_zero_other_terminal_one() {
        assert_eq!(exit_code_for("success", None), EXIT_SUCCESS);
        assert_eq!(exit_code_for("build-error", None), EXIT_DEPLOYMENT_FAILED);
        assert_eq!(exit_code_for("aborted", None), EXIT_DEPLOYMENT_FAILED);
        // Unknown statuses count as finished (and failed), like Scalingo's clients do.
        assert_eq!(exit_code_for("mystery", None), EXIT_DEPLOYMENT_FAILED);
    }

    #[test]
    fn finished_deployment_wins_over_broken_stream() {
        let broken = Some(FollowError::Broken("reset".into()));
        assert_eq!(exit_code_for("success", broken), EXIT_SUCCESS);
    }

    #[test]
    fn unfinished_deployment_is_connection_lost() {
        assert_eq!(exit_code_for("building", None), EXIT_CONNECTION_LOST);
        let broken = Some(FollowError::Broken("reset".into()));
        assert_eq!(exit_code_for("starting", broken), EXIT_CONNECTION_LOST);
    }
}
