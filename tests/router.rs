//! The router called without a socket (`tower::ServiceExt::oneshot` on the in-process server's
//! router, same state): the route table is what is mounted, and the pure request/response
//! shapes (JSON errors, 404s) hold for every route.
mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use common::{TestServer, ADMIN_TOKEN};
use deployd::api::routes::{Auth, ROUTES};

/// Sends one request through `router` and returns the status and the JSON body (`Null` when
/// the body is not JSON).
async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if !body.is_empty() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request.body(Body::from(body.to_string())).expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// `path` with every `{param}` replaced by `value`.
fn fill(path: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').expect("closed parameter") + start;
        out.push_str(&rest[..start]);
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn is_route_not_found(body: &Value) -> bool {
    body["resource"] == "route"
}

#[tokio::test]
async fn every_route_of_the_table_is_mounted_and_refuses_a_stranger_with_a_json_error() {
    let server = TestServer::start().await;
    let router = server.router();
    for route in ROUTES.iter() {
        let uri = fill(route.path, "nope");
        let (status, body) = call(&router, route.method.clone(), &uri, None, "").await;
        let what = format!("{} {uri}: {status} {body}", route.method);
        assert!(!is_route_not_found(&body), "not mounted: {what}");
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
        if route.auth == Auth::Open {
            // Public catalogues, health probes, the OpenAPI document and the metrics (without
            // a token) answer anyone: never an authentication refusal.
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{what}");
            assert_ne!(status, StatusCode::FORBIDDEN, "{what}");
            continue;
        }
        assert!(status.is_client_error(), "{what}");
        assert!(body.is_object(), "not a JSON error: {what}");
        if route.auth == Auth::Caller {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        }
    }
}

#[tokio::test]
async fn unknown_paths_are_json_404s_and_unknown_methods_json_405s() {
    let server = TestServer::start().await;
    let router = server.router();
    let (status, body) = call(&router, Method::GET, "/v1/nothing-here", None, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(is_route_not_found(&body), "{body}");
    let (status, body) = call(&router, Method::PATCH, "/v1/apps", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn a_missing_app_or_deployment_is_the_same_404_on_every_app_route() {
    let server = TestServer::start().await;
    let router = server.router();
    for route in ROUTES
        .iter()
        .filter(|r| r.auth == Auth::Caller && r.path.contains("{app}"))
    {
        let uri = fill(route.path, "no-such-app");
        let body = if route.method == Method::POST {
            "{}"
        } else {
            ""
        };
        let (status, body) =
            call(&router, route.method.clone(), &uri, Some(ADMIN_TOKEN), body).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{} {uri}: {body}",
            route.method
        );
        assert_eq!(body["error"], "not found", "{} {uri}: {body}", route.method);
        assert_eq!(body["resource"], "app", "{} {uri}: {body}", route.method);
    }
}

#[tokio::test]
async fn a_malformed_body_is_a_400_and_a_wrong_type_a_422_naming_the_field() {
    let server = TestServer::start().await;
    let router = server.router();
    let (status, body) = call(&router, Method::POST, "/v1/apps", Some(ADMIN_TOKEN), "{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = call(
        &router,
        Method::POST,
        "/v1/apps",
        Some(ADMIN_TOKEN),
        r#"{"app":{"name":7}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["errors"]["name"].is_array(), "{body}");
    // Nothing was stored by either.
    let (status, body) = call(&router, Method::GET, "/v1/apps", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["apps"], serde_json::json!([]), "{body}");
}
