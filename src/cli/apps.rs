//! `deployd apps` and `deployd deployments --app APP`: what the API lists, as a table on stdout
//! (or the server's JSON with `--json`), so everyday questions need no curl.
//!
//! ```text
//! deployd apps --url http://deployd:8080 --token $TOKEN [--json]
//! deployd deployments --url http://deployd:8080 --token $TOKEN --app web [--page N] [--per-page N] [--json]
//! ```
//!
//! Exit 0 when the list was printed, 2 on any usage, authentication or HTTP error (the reason
//! on stderr). Talks HTTP only.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::deploy::check;
use super::{encode_path_segment, http_url, ServerTarget, EXIT_SUCCESS, EXIT_USAGE_OR_AUTH};

/// How long a list request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `deployd apps`.
#[derive(Debug, Clone, Args)]
pub struct AppsArgs {
    #[command(flatten)]
    pub target: ServerTarget,
    /// Print the server's JSON answer instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `deployd deployments`.
#[derive(Debug, Clone, Args)]
pub struct DeploymentsArgs {
    #[command(flatten)]
    pub target: ServerTarget,
    /// App name or id
    #[arg(long)]
    pub app: String,
    /// Page number (newest first)
    #[arg(long, default_value_t = 1)]
    pub page: u64,
    /// Deployments per page (the server allows at most 100)
    #[arg(long, default_value_t = 20)]
    pub per_page: u64,
    /// Print the server's JSON answer instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Runs `deployd apps`; returns the exit code.
pub async fn run_apps(args: AppsArgs) -> anyhow::Result<i32> {
    let body = match get_json(&args.target, "/v1/apps").await {
        Ok(body) => body,
        Err(why) => {
            eprintln!("deployd apps: {why}");
            return Ok(EXIT_USAGE_OR_AUTH);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(EXIT_SUCCESS);
    }
    let rows: Vec<Vec<String>> = list(&body, "apps")
        .iter()
        .map(|app| {
            vec![
                text(&app["name"]),
                text(&app["id"]),
                text(&app["owner"]["username"]),
                text(&app["last_deployed_at"]),
                text(&app["created_at"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["NAME", "ID", "OWNER", "LAST DEPLOYED", "CREATED"], &rows)
    );
    Ok(EXIT_SUCCESS)
}

/// Runs `deployd deployments`; returns the exit code.
pub async fn run_deployments(args: DeploymentsArgs) -> anyhow::Result<i32> {
    let path = format!(
        "/v1/apps/{}/deployments?page={}&per_page={}",
        encode_path_segment(&args.app),
        args.page,
        args.per_page
    );
    let body = match get_json(&args.target, &path).await {
        Ok(body) => body,
        Err(why) => {
            eprintln!("deployd deployments: {why}");
            return Ok(EXIT_USAGE_OR_AUTH);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(EXIT_SUCCESS);
    }
    let rows: Vec<Vec<String>> = list(&body, "deployments")
        .iter()
        .map(|d| {
            vec![
                text(&d["id"]),
                text(&d["status"]),
                text(&d["git_ref"]),
                text(&d["pusher"]["username"]),
                text(&d["created_at"]),
                match d["duration"].as_i64() {
                    Some(secs) if !d["finished_at"].is_null() => format!("{secs}s"),
                    _ => "-".to_owned(),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["ID", "STATUS", "GIT REF", "PUSHER", "CREATED", "DURATION"],
            &rows
        )
    );
    let pagination = &body["meta"]["pagination"];
    if let (Some(page), Some(pages)) = (
        pagination["current_page"].as_u64(),
        pagination["total_pages"].as_u64(),
    ) {
        if pages > 1 {
            eprintln!("page {page} of {pages} (--page N for more)");
        }
    }
    Ok(EXIT_SUCCESS)
}

async fn get_json(target: &ServerTarget, path: &str) -> Result<Value, String> {
    let client = super::tls::http_builder(&target.tls)?
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(http_url(&target.url, path))
        .basic_auth("", Some(&target.token))
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("GET {path}: {}", super::tls::describe_http(&e)))?;
    let body = check(&format!("GET {path}"), response).await?;
    serde_json::from_slice(&body).map_err(|e| format!("GET {path}: answer is not JSON: {e}"))
}

fn list<'a>(body: &'a Value, field: &str) -> &'a [Value] {
    body[field]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A cell: strings as they are, null as `-`, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns two spaces apart, no trailing spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_show_missing_values_as_dashes() {
        let rows = vec![
            vec!["web".to_owned(), text(&Value::Null)],
            vec!["a-longer-name".to_owned(), text(&serde_json::json!(42))],
        ];
        assert_eq!(
            table(&["NAME", "X"], &rows),
            "NAME           X\nweb            -\na-longer-name  42\n"
        );
    }
}
