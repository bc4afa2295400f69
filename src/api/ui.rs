//! The dashboard's static files under `/ui/`: the assets `build.rs` embedded from the repository's
//! `ui/` directory, and the shell (`ui/index.html`) for every other `/ui/…` path, so the
//! page's client-side routes (`/ui/apps/{app}`, `/ui/apps/{app}/deployments/{id}`) are
//! bookmarkable. `GET /` and `GET /ui` redirect to `/ui/`.
//!
//! Unauthenticated: the files hold no data; the page calls the public API with the user's
//! token like any other client. Every answer carries the headers of [`SECURITY_HEADERS`]
//! (a strict Content-Security-Policy: no inline script, no other origin, no framing) and an
//! ETag, and a matching `If-None-Match` gets a `304`.
//!
//! This module only serves bytes compiled into the binary: it never reads the filesystem
//! (so no path can escape `ui/`) and never touches the store.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// Where the dashboard lives; `/` redirects here (the `/apps/{app}` paths are the stream's).
pub const UI_PREFIX: &str = "/ui/";

/// The shell answered for every `/ui/…` path that is not an asset.
const SHELL: &str = "index.html";

/// The Content-Security-Policy of every dashboard file. `default-src 'self'`: scripts, styles,
/// images, fonts and connections (`fetch`, and the WebSocket stream: CSP Level 3 matches
/// `ws:`/`wss:` of the page's own host and port with `'self'`) only from this origin, and no
/// inline script or style; `frame-ancestors 'none'`: no other page may frame it
/// (clickjacking); `base-uri 'none'`: an injected `<base>` cannot redirect relative URLs;
/// `form-action 'self'`: forms post nowhere else.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Headers on every dashboard answer. `nosniff`: a browser never runs a file as another type
/// than the one we say; `no-referrer`: URLs (app names, deployment ids) never leak to another
/// origin; `no-cache`: browsers revalidate with the ETag, so a new binary's page is seen at once.
const SECURITY_HEADERS: &[(header::HeaderName, &str)] = &[
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-cache"),
];

/// The content type of a file, by its extension (`application/octet-stream` when unknown, which
/// `nosniff` keeps a browser from running).
fn content_type(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map_or("", |(_, ext)| ext);
    match extension.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" | "md" => "text/plain; charset=utf-8",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

/// The embedded file at `path` (relative to `ui/`), with its ETag.
fn asset(path: &str) -> Option<(&'static str, &'static [u8], &'static str)> {
    UI_ASSETS
        .binary_search_by(|(name, _, _)| (*name).cmp(path))
        .ok()
        .map(|i| UI_ASSETS[i])
}

/// `GET /` and `GET /ui`: `302` to the dashboard.
pub async fn redirect() -> Response {
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, UI_PREFIX),
            (header::CACHE_CONTROL, "no-cache"),
        ],
    )
        .into_response()
}

/// `GET /ui/`: the shell.
pub async fn shell(headers: HeaderMap) -> Response {
    serve("", &headers)
}

/// `GET /ui/{*path}`: the asset at `path`, or the shell when there is none (a client-side
/// route).
pub async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    // The build fails without the shell, so the fallback always exists.
    let Some((name, bytes, etag)) = asset(path).or_else(|| asset(SHELL)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Body::from(bytes).into_response()
    };
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(header::ETAG, HeaderValue::from_static(etag));
    if !fresh {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(name)),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_asset_table_is_sorted_and_holds_the_shell() {
        assert!(UI_ASSETS.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        assert!(asset(SHELL).is_some());
        assert!(asset("no/such/file.js").is_none());
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("a/b.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
