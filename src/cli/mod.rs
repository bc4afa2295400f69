//! The client subcommands: `deployd push` (be an external pusher), `deployd follow` (print a
//! deployment's output as it is written), `deployd deploy` (pack, upload, trigger, follow),
//! `deployd apps` / `deployd deployments` (tables of what the API lists) and `deployd bench`
//! (load-test a running server). `help` holds the `--help` examples and exit codes.
//!
//! Each subcommand is a clap `Args` struct plus an async `run_*` function returning the process
//! exit code; `main` only parses and calls it. These clients talk to a deployd server over HTTP
//! and WebSocket and never touch the store. What is shared between them lives here: building
//! URLs, the `Authorization` header, and the exit codes; `tls` builds the one rustls
//! configuration (webpki roots, the platform store, `--cacert`/`DEPLOYD_CACERT`) that every
//! client's HTTP and WebSocket connections use.
//!
//! # Exit codes (`push`, `follow`, `deploy`; `apps` and `deployments` use 0 and 2)
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the deployment ended in `success` |
//! | 1 | the deployment ended in another terminal status (printed), or the server refused a frame |
//! | 2 | usage, authentication, HTTP or connection-refused error: nothing was (or could be) followed |
//! | 3 | the connection was lost before the deployment finished |
//! | 4 | `push`: a user cancelled the deployment; the command was stopped and the deployment ended `aborted` (`timeout-error` from `starting`) |
//! | 130 | interrupted (Ctrl-C); `push` marks the deployment `aborted` first when it can |

pub mod apps;
pub mod backup;
pub mod bench;
pub mod cancel;
pub mod check;
pub mod deploy;
pub mod follow;
pub mod help;
pub mod migrate;
pub mod pack;
pub mod push;
pub mod rollback;
pub mod tls;

/// Which server, as whom, and which app: the arguments `push` and `follow` share.
#[derive(Debug, Clone, clap::Args)]
pub struct AppTarget {
    /// Base URL of the deployd server, e.g. http://127.0.0.1:8080
    #[arg(long, env = "DEPLOYD_URL")]
    pub url: String,
    /// API token
    #[arg(long, env = "DEPLOYD_TOKEN", hide_env_values = true)]
    pub token: String,
    /// App name or id
    #[arg(long)]
    pub app: String,
    /// Which CAs to trust over https:// and wss://
    #[command(flatten)]
    pub tls: tls::TlsArgs,
}

/// Which server, as whom: the arguments of the commands that are not about one app.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerTarget {
    /// Base URL of the deployd server, e.g. http://127.0.0.1:8080
    #[arg(long, env = "DEPLOYD_URL")]
    pub url: String,
    /// API token
    #[arg(long, env = "DEPLOYD_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Which CAs to trust over https:// and wss://
    #[command(flatten)]
    pub tls: tls::TlsArgs,
}

/// The deployment ended in `success`.
pub const EXIT_SUCCESS: i32 = 0;
/// The deployment ended in a terminal status other than `success` (or the server refused us).
pub const EXIT_DEPLOYMENT_FAILED: i32 = 1;
/// Usage, authentication, HTTP or connection-refused error.
pub const EXIT_USAGE_OR_AUTH: i32 = 2;
/// The connection broke before the deployment finished.
pub const EXIT_CONNECTION_LOST: i32 = 3;
/// A user cancelled the deployment (`push`: the command was stopped).
pub const EXIT_CANCELLED: i32 = 4;
/// Interrupted by Ctrl-C (128 + SIGINT, what shells report).
pub const EXIT_INTERRUPTED: i32 = 130;

/// The `Authorization` value for an API token: `Basic base64(":" + token)`, the form
/// Scalingo's clients and `curl -u ":$TOKEN"` send.
pub fn basic_auth_header(token: &str) -> String {
    crate::auth::basic_authorization_for_token(token)
}

/// Percent-encodes one URL path segment (an app name or id) so `/`, `?`, `#`, spaces… in it
/// cannot change the path. Unreserved characters (RFC 3986) are kept as they are.
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Joins the server base URL (`http://host:8080`, with or without a trailing `/` or a path
/// prefix) and an absolute API path (`/v1/…`).
pub fn http_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// The WebSocket URL for an API path: `http` becomes `ws`, `https` becomes `wss`; a base that
/// is already `ws(s)://` is kept.
///
/// Errors when the base has no scheme or another one, so a typo fails before connecting.
pub fn ws_url(base: &str, path: &str) -> Result<String, UrlError> {
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| UrlError(base.to_owned()))?;
    let ws_scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(UrlError(base.to_owned())),
    };
    Ok(http_url(&format!("{ws_scheme}://{rest}"), path))
}

/// A server URL that is not `http(s)://…` (or `ws(s)://…`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server URL {0:?} must start with http:// or https://")]
pub struct UrlError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_has_empty_user() {
        // base64(":tok") = "OnRvaw=="
        assert_eq!(basic_auth_header("tok"), "Basic OnRvaw==");
    }

    #[test]
    fn http_url_joins_with_one_slash() {
        assert_eq!(
            http_url("http://h:8080", "/v1/apps"),
            "http://h:8080/v1/apps"
        );
        assert_eq!(
            http_url("http://h:8080/", "/v1/apps"),
            "http://h:8080/v1/apps"
        );
        assert_eq!(
            http_url("https://h/prefix/", "v1/apps"),
            "https://h/prefix/v1/apps"
        );
    }

    #[test]
    fn ws_url_maps_schemes() {
        assert_eq!(
            ws_url("http://127.0.0.1:8080", "/v1/apps/a/push").unwrap(),
            "ws://127.0.0.1:8080/v1/apps/a/push"
        );
        assert_eq!(
            ws_url("HTTPS://example.com/", "/v1/x").unwrap(),
            "wss://example.com/v1/x"
        );
        assert_eq!(ws_url("wss://e/", "/v1/x").unwrap(), "wss://e/v1/x");
        assert_eq!(ws_url("ws://e", "/v1/x").unwrap(), "ws://e/v1/x");
    }

    #[test]
    fn ws_url_refuses_other_schemes() {
        assert!(ws_url("example.com:8080", "/v1").is_err());
        assert!(ws_url("ftp://example.com", "/v1").is_err());
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_path_segment("my-app_1.x~"), "my-app_1.x~");
        assert_eq!(encode_path_segment("a/b?c d#"), "a%2Fb%3Fc%20d%23");
        assert_eq!(encode_path_segment("é"), "%C3%A9");
    }
}
