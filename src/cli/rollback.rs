//! `deployd rollback`: roll an app back to one of its earlier deployments.
//!
//! ```text
//! deployd rollback --url http://deployd:8080 --token $TOKEN --app web DEPLOYMENT_ID [--follow]
//! ```
//!
//! Sends `POST /v1/apps/{app}/deployments/{id}/rollback`: a new deployment that takes the
//! target's `git_ref` and starts its kept image (nothing fetched or built). The new
//! deployment's id is printed on stdout; with `--follow` its output is followed to its end,
//! and the exit code is `deployd follow`'s ([`crate::cli`]). Without `--follow`:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the rollback deployment was created (it queues like any other) |
//! | 1 | the target cannot be rolled back to: it did not succeed, or its image is no longer kept (422) |
//! | 2 | usage, authentication, HTTP or connection error (an unknown app or deployment: 404) |
//!
//! Talks HTTP only; never touches the store.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::follow::{run_follow, FollowArgs};
use super::push::error_message_from_body;
use super::{
    encode_path_segment, http_url, EXIT_DEPLOYMENT_FAILED, EXIT_SUCCESS, EXIT_USAGE_OR_AUTH,
};

/// The request is small; a server that does not answer in this is down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `deployd rollback`.
#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: super::AppTarget,
    /// The deployment to roll back to (a successful one whose image is still kept)
    pub deployment: String,
    /// Follow the rollback's output to its end (the exit code is then `deployd follow`'s)
    #[arg(long)]
    pub follow: bool,
}

/// Runs `deployd rollback` and returns the exit code (table in the module doc).
pub async fn run_rollback(args: RollbackArgs) -> anyhow::Result<i32> {
    let client = match super::tls::http_builder(&args.target.tls) {
        Ok(builder) => builder.timeout(REQUEST_TIMEOUT).build()?,
        Err(err) => return Ok(err.report("deployd rollback")),
    };
    let path = format!(
        "/v1/apps/{}/deployments/{}/rollback",
        encode_path_segment(&args.target.app),
        encode_path_segment(&args.deployment)
    );
    let response = match client
        .post(http_url(&args.target.url, &path))
        .basic_auth("", Some(&args.target.token))
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => {
            eprintln!(
                "deployd rollback: {path}: {}",
                super::tls::describe_http(&e)
            );
            return Ok(EXIT_USAGE_OR_AUTH);
        }
    };
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let id = match (status, body["deployment"]["id"].as_str()) {
        (201, Some(id)) => id.to_owned(),
        (422, _) => {
            eprintln!("deployd rollback: {}", error_message_from_body(&bytes));
            return Ok(EXIT_DEPLOYMENT_FAILED);
        }
        _ => {
            eprintln!(
                "deployd rollback: POST {path}: HTTP {status}: {}",
                error_message_from_body(&bytes)
            );
            return Ok(EXIT_USAGE_OR_AUTH);
        }
    };
    let now = body["deployment"]["status"].as_str().unwrap_or("unknown");
    eprintln!(
        "-----> Rolling back to {} with deployment {id} ({now})",
        args.deployment
    );
    println!("{id}");
    if !args.follow {
        return Ok(EXIT_SUCCESS);
    }
    run_follow(FollowArgs {
        target: args.target.clone(),
        deployment: Some(id),
    })
    .await
}
