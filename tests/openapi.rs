//! `GET /v1/openapi.json` of the real binary: a valid-looking OpenAPI 3.1 document whose every
//! operation is a route the server answers, and whose routes are all there.
mod common;

use serde_json::Value;

use common::Server;

/// A path of the document with every `{parameter}` filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "00000000-0000-0000-0000-000000000000"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_every_operation_in_it_is_a_route_the_server_answers() {
    let server = Server::start();
    let (status, document) = server.anonymous().get("/v1/openapi.json").await;
    assert_eq!(status, 200, "{document}");
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(
        document["servers"][0]["url"],
        Value::from(server.url.clone())
    );
    let paths = document["paths"].as_object().expect("paths");
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(op["operationId"].is_string(), "{method} {path}");
            assert!(op["responses"]["4XX"].is_object(), "{method} {path}");
            let method: reqwest::Method = method.to_uppercase().parse().expect("method");
            let response = server
                .admin()
                .request(method.clone(), &concrete(path))
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            // The router's own 404 and 405 say the route is not there; a handler's 4xx is fine.
            assert!(
                !(status == 404 && body["resource"] == "route") && status != 405,
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }
    let routes: std::collections::BTreeSet<_> = deployd::api::routes::ROUTES
        .iter()
        .map(|route| {
            let path = deployd::api::openapi::openapi_path(route.path);
            (route.method.to_string(), path)
        })
        .collect();
    assert_eq!(
        documented, routes,
        "the document and the route table differ"
    );
}

#[tokio::test]
async fn websocket_routes_are_documented_as_gets_answering_101() {
    let server = Server::start();
    let (_, document) = server.anonymous().get("/v1/openapi.json").await;
    for path in ["/apps/{app}", "/v1/apps/{app}/push"] {
        let op = &document["paths"][path]["get"];
        assert!(op["responses"]["101"].is_object(), "{path}: {op}");
    }
}
