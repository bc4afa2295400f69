//! The OpenAPI 3.1 document of the whole HTTP API, served at `GET /v1/openapi.json`.
//!
//! True by construction: every path, method, operation id, summary, path parameter and
//! security requirement comes from the route table ([`ROUTES`]); what the table does not say
//! (request and response schemas, query parameters) is in [`DOCS`], one row per operation id,
//! and a test makes sure both tables name the same operations. WebSocket routes are a GET
//! answering `101`.
//!
//! This module only describes: it must not change what a handler does, and nothing here is
//! read by the router.

use serde_json::{json, Map, Value};

use super::routes::{Answer, Auth, Route, ROUTES};

mod schemas;
use schemas::schemas;

/// What an operation's success answer carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reply {
    /// `application/json` matching the named schema of `components.schemas`.
    Json(&'static str),
    /// No body (`204`).
    Empty,
    /// The deployment output: `text/plain`, or `text/event-stream` when asked for.
    Output,
    /// The uploaded archive's bytes (`application/x-gzip`).
    Archive,
    /// Prometheus' text exposition format.
    Metrics,
    /// `101 Switching Protocols`.
    Upgrade,
    /// A tar stream (`application/x-tar`).
    Tar,
    /// A `302` to the dashboard.
    Redirect,
    /// A dashboard file (`text/html` for the page; scripts, styles and images by extension).
    Page,
    /// NDJSON (`application/x-ndjson`): one object of the named schema per line.
    Ndjson(&'static str),
}

/// A query parameter's type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar {
    /// An integer of at least the given value.
    Integer(u64),
    Boolean,
    String,
    Uuid,
}

/// One query parameter.
#[derive(Clone, Copy)]
pub(crate) struct Query {
    pub name: &'static str,
    pub scalar: Scalar,
    pub required: bool,
    pub description: &'static str,
}

/// What the route table does not say about an operation.
pub(crate) struct Doc {
    /// The route table's operation id.
    pub operation: &'static str,
    /// The JSON request body's schema name (always optional: an empty body is `{}`), or none.
    pub request: Option<&'static str>,
    /// The raw bytes body of an upload.
    pub binary_body: bool,
    /// The success status and what it carries.
    pub success: (u16, Reply),
    pub query: &'static [Query],
}

const fn doc(operation: &'static str, success: (u16, Reply)) -> Doc {
    Doc {
        operation,
        request: None,
        binary_body: false,
        success,
        query: &[],
    }
}

const fn with_body(operation: &'static str, request: &'static str, success: (u16, Reply)) -> Doc {
    Doc {
        operation,
        request: Some(request),
        binary_body: false,
        success,
        query: &[],
    }
}

const PAGE_QUERY: &[Query] = &[
    Query {
        name: "page",
        scalar: Scalar::Integer(1),
        required: false,
        description: "Page number, from 1",
    },
    Query {
        name: "per_page",
        scalar: Scalar::Integer(1),
        required: false,
        description: "Deployments per page (at most the server's maximum)",
    },
];

const LIST_QUERY: &[Query] = &[
    PAGE_QUERY[0],
    PAGE_QUERY[1],
    Query {
        name: "status",
        scalar: Scalar::String,
        required: false,
        description:
            "Comma-separated statuses, or `unfinished` (queued, building, pushing, starting)",
    },
];

const NAME_QUERY: &[Query] = &[Query {
    name: "name",
    scalar: Scalar::String,
    required: true,
    description: "The platform's name (`webhook`)",
}];

const OUTPUT_QUERY: &[Query] = &[
    Query {
        name: "follow",
        scalar: Scalar::Boolean,
        required: false,
        description: "Stay open until the deployment finishes",
    },
    Query {
        name: "after",
        scalar: Scalar::Integer(0),
        required: false,
        description: "Only lines after this line number",
    },
];

const STREAM_QUERY: &[Query] = &[
    Query {
        name: "deployment",
        scalar: Scalar::Uuid,
        required: false,
        description: "A deployment to resume",
    },
    Query {
        name: "after",
        scalar: Scalar::Integer(0),
        required: false,
        description: "The last line of `deployment` already seen",
    },
    Query {
        name: "logs",
        scalar: Scalar::String,
        required: false,
        description:
            "`none`: no log event at all, replayed or live (statuses only); `all` (default)",
    },
    Query {
        name: "tail",
        scalar: Scalar::Integer(0),
        required: false,
        description: "Replay only the last N lines of each deployment not resumed, then live",
    },
    Query {
        name: "batch",
        scalar: Scalar::String,
        required: false,
        description: "`lines`: `log_batch` frames (a segment's lines each, at most 64 KiB) instead of one `log` frame per line",
    },
];

const LINES_QUERY: &[Query] = &[
    Query {
        name: "from",
        scalar: Scalar::Integer(1),
        required: false,
        description: "The first line number (from 1; default 1)",
    },
    Query {
        name: "limit",
        scalar: Scalar::Integer(1),
        required: false,
        description: "Lines to return (default 1000, at most 5000; fewer past 4 MiB)",
    },
    Query {
        name: "tail",
        scalar: Scalar::Integer(1),
        required: false,
        description: "Instead of from/limit: the last N lines (at most 5000)",
    },
];

const SEARCH_QUERY: &[Query] = &[
    Query {
        name: "q",
        scalar: Scalar::String,
        required: true,
        description: "The text (1 to 256 bytes), matched case-insensitively, ANSI escapes ignored",
    },
    Query {
        name: "after",
        scalar: Scalar::Integer(0),
        required: false,
        description: "Only matches after this line number",
    },
    Query {
        name: "limit",
        scalar: Scalar::Integer(1),
        required: false,
        description: "Matches to return (default 100, at most 1000)",
    },
];

const SIGNED_QUERY: &[Query] = &[
    Query {
        name: "expires",
        scalar: Scalar::Integer(0),
        required: true,
        description: "Unix time the URL expires at",
    },
    Query {
        name: "signature",
        scalar: Scalar::String,
        required: true,
        description: "The URL's signature",
    },
];

/// One row per operation of [`ROUTES`]; a new route needs its row here (a test checks).
pub(crate) static DOCS: &[Doc] = &[
    doc("exchangeToken", (200, Reply::Json("Jwt"))),
    with_body(
        "createToken",
        "CreateTokenRequest",
        (201, Reply::Json("CreatedToken")),
    ),
    doc("listTokens", (200, Reply::Json("Tokens"))),
    doc("revokeToken", (204, Reply::Empty)),
    doc("showSelf", (200, Reply::Json("UserEnvelope"))),
    with_body(
        "createUser",
        "CreateUserRequest",
        (201, Reply::Json("CreatedUser")),
    ),
    doc("listRegions", (200, Reply::Json("Regions"))),
    doc("listApps", (200, Reply::Json("Apps"))),
    with_body(
        "createApp",
        "CreateAppRequest",
        (201, Reply::Json("AppEnvelope")),
    ),
    doc("showApp", (200, Reply::Json("AppEnvelope"))),
    doc("deleteApp", (204, Reply::Empty)),
    doc("listCollaborators", (200, Reply::Json("Collaborators"))),
    with_body(
        "addCollaborator",
        "AddCollaboratorRequest",
        (201, Reply::Json("CollaboratorEnvelope")),
    ),
    doc("removeCollaborator", (204, Reply::Empty)),
    Doc {
        query: LIST_QUERY,
        ..doc("listDeployments", (200, Reply::Json("Deployments")))
    },
    with_body(
        "triggerDeployment",
        "TriggerDeploymentRequest",
        (201, Reply::Json("DeploymentEnvelope")),
    ),
    doc("showDeployment", (200, Reply::Json("DeploymentEnvelope"))),
    Doc {
        query: OUTPUT_QUERY,
        ..doc("deploymentOutput", (200, Reply::Output))
    },
    Doc {
        query: OUTPUT_QUERY,
        ..doc("deploymentOutputById", (200, Reply::Output))
    },
    doc("pushSession", (101, Reply::Upgrade)),
    Doc {
        query: STREAM_QUERY,
        ..doc("deploymentsStream", (101, Reply::Upgrade))
    },
    doc("createSource", (201, Reply::Json("Source"))),
    Doc {
        binary_body: true,
        query: SIGNED_QUERY,
        ..doc("uploadSource", (200, Reply::Json("Empty")))
    },
    Doc {
        query: SIGNED_QUERY,
        ..doc("downloadSource", (200, Reply::Archive))
    },
    doc("openApiDocument", (200, Reply::Json("OpenApi"))),
    doc("metrics", (200, Reply::Metrics)),
    doc("healthz", (200, Reply::Json("Object"))),
    doc("readyz", (200, Reply::Json("Object"))),
    with_body("renameApp", "Object", (200, Reply::Json("AppEnvelope"))),
    with_body(
        "updateCollaborator",
        "Object",
        (200, Reply::Json("CollaboratorEnvelope")),
    ),
    doc("resetDeploymentCache", (204, Reply::Empty)),
    doc("cancelDeployment", (202, Reply::Json("DeploymentEnvelope"))),
    Doc {
        query: LIST_QUERY,
        ..doc("listAllDeployments", (200, Reply::Json("Deployments")))
    },
    doc("listNotificationPlatforms", (200, Reply::Json("Object"))),
    Doc {
        query: NAME_QUERY,
        ..doc("searchNotificationPlatforms", (200, Reply::Json("Object")))
    },
    doc("listEventTypes", (200, Reply::Json("Object"))),
    doc("listEventCategories", (200, Reply::Json("Object"))),
    doc("listNotifiers", (200, Reply::Json("Object"))),
    with_body("createNotifier", "Object", (201, Reply::Json("Object"))),
    doc("showNotifier", (200, Reply::Json("Object"))),
    with_body("updateNotifier", "Object", (200, Reply::Json("Object"))),
    doc("deleteNotifier", (204, Reply::Empty)),
    doc("listNotifierDeliveries", (200, Reply::Json("Object"))),
    Doc {
        query: PAGE_QUERY,
        ..doc("listAppEvents", (200, Reply::Json("Object")))
    },
    Doc {
        query: PAGE_QUERY,
        ..doc("listUserEvents", (200, Reply::Json("Object")))
    },
    doc(
        "rollbackDeployment",
        (201, Reply::Json("DeploymentEnvelope")),
    ),
    doc("backup", (200, Reply::Tar)),
    doc("dashboardRedirect", (302, Reply::Redirect)),
    doc("dashboardRedirectSlash", (302, Reply::Redirect)),
    doc("dashboardShell", (200, Reply::Page)),
    doc("dashboardFile", (200, Reply::Page)),
    Doc {
        query: LINES_QUERY,
        ..doc("deploymentLines", (200, Reply::Ndjson("Line")))
    },
    Doc {
        query: SEARCH_QUERY,
        ..doc("searchDeploymentOutput", (200, Reply::Json("SearchResult")))
    },
];

/// The document, for a server reached at `public_url`.
pub fn document(public_url: &str) -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(openapi_path(route.path))
            .or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = operation(route);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "deployd",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Self-hosted deployments service, wire-compatible with Scalingo's \
                            deployments API. Errors are JSON on every route.",
        },
        "servers": [{ "url": public_url }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A JWT from /v1/tokens/exchange, or an API token",
                },
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "An API token as the password (any user name)",
                },
            },
            "schemas": schemas(),
        },
    })
}

/// axum's `{name}` segments are OpenAPI's too; a catch-all `{*name}` is `{name}` there.
pub fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn path_parameters(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| name.trim_start_matches('*'))
        .collect()
}

/// The row of [`DOCS`] for `operation`.
pub(crate) fn doc_of(operation: &str) -> Option<&'static Doc> {
    DOCS.iter().find(|doc| doc.operation == operation)
}

fn operation(route: &Route) -> Value {
    let mut parameters: Vec<Value> = path_parameters(route.path)
        .into_iter()
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": {"type": "string", "minLength": 1},
            })
        })
        .collect();
    let mut op = json!({
        "operationId": route.operation,
        "summary": route.summary,
    });
    let doc = doc_of(route.operation);
    if let Some(doc) = doc {
        parameters.extend(doc.query.iter().map(query_parameter));
        if let Some(schema) = doc.request {
            op["requestBody"] = json!({
                "required": false,
                "content": {"application/json": {"schema": schema_ref(schema)}},
            });
        }
        if doc.binary_body {
            op["requestBody"] = json!({
                "required": false,
                "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                }},
            });
        }
    }
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    op["security"] = match route.auth {
        Auth::Caller => json!([{"bearer": []}, {"basic": []}]),
        Auth::Public if route.operation == "exchangeToken" => json!([{"basic": []}]),
        Auth::Public | Auth::AuthFrame | Auth::SignedUrl | Auth::Open => json!([{}]),
    };
    let error = json!({
        "description": "An error (JSON on every route)",
        "content": {"application/json": {"schema": schema_ref("Error")}},
    });
    let mut responses = Map::new();
    let (code, reply) = doc.map_or((200, fallback_reply(route.answer)), |d| d.success);
    responses.insert(code.to_string(), success(reply));
    responses.insert("4XX".into(), error.clone());
    responses.insert("5XX".into(), error);
    op["responses"] = Value::Object(responses);
    op
}

/// What a route without a [`DOCS`] row answers, from its `answer` column alone.
fn fallback_reply(answer: Answer) -> Reply {
    match answer {
        Answer::Json => Reply::Json("Object"),
        Answer::Output => Reply::Output,
        Answer::Archive => Reply::Archive,
        Answer::WebSocket => Reply::Upgrade,
        Answer::Text => Reply::Metrics,
        Answer::Tar => Reply::Tar,
        Answer::Dashboard => Reply::Page,
        Answer::Lines => Reply::Ndjson("Line"),
    }
}

fn success(reply: Reply) -> Value {
    match reply {
        Reply::Json(schema) => json!({
            "description": "Success",
            "content": {"application/json": {"schema": schema_ref(schema)}},
        }),
        Reply::Empty => json!({"description": "Done; no body"}),
        Reply::Output => json!({
            "description": "The output lines; Server-Sent Events with Accept: text/event-stream",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }),
        Reply::Archive => json!({
            "description": "The archive",
            "content": {"application/x-gzip": {"schema": {"type": "string", "format": "binary"}}},
        }),
        Reply::Metrics => json!({
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }),
        Reply::Upgrade => json!({"description": "Switching Protocols to a WebSocket"}),
        Reply::Tar => json!({
            "description": "A tar: records/NNNNNN.kv, logs/<id>.log, images/…, sources/…, then backup.json (the manifest; a tar without it is incomplete)",
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        }),
        Reply::Redirect => json!({
            "description": "Found: the dashboard is at /ui/",
            "headers": {"Location": {"schema": {"type": "string", "const": "/ui/"}}},
        }),
        Reply::Ndjson(schema) => json!({
            "description": "One JSON object per line (NDJSON), each matching x-item-schema; \
                            X-Last-Line: the lines stored so far; X-Deployment-Status: its status",
            "headers": {
                "X-Last-Line": {"schema": {"type": "integer", "minimum": 0}},
                "X-Deployment-Status": {"schema": {"type": "string"}},
            },
            "content": {"application/x-ndjson": {
                "schema": {"type": "string"},
                "x-item-schema": schema_ref(schema),
            }},
        }),
        Reply::Page => json!({
            "description": "The dashboard's page (any path that is not an asset) or an asset",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }),
    }
}

fn query_parameter(query: &Query) -> Value {
    let schema = match query.scalar {
        Scalar::Integer(minimum) => json!({"type": "integer", "minimum": minimum}),
        Scalar::Boolean => json!({"type": "boolean"}),
        Scalar::String => json!({"type": "string"}),
        Scalar::Uuid => json!({"type": "string", "format": "uuid"}),
    };
    json!({
        "name": query.name,
        "in": "query",
        "required": query.required,
        "description": query.description,
        "schema": schema,
    })
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_has_a_doc_row_and_every_doc_row_a_route() {
        let routes: BTreeSet<_> = ROUTES.iter().map(|r| r.operation).collect();
        let docs: BTreeSet<_> = DOCS.iter().map(|d| d.operation).collect();
        assert_eq!(routes, docs);
        assert_eq!(docs.len(), DOCS.len(), "an operation has two doc rows");
    }

    #[test]
    fn the_document_has_every_route_and_nothing_else() {
        let document = document("http://127.0.0.1:1");
        let mut found = BTreeSet::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                found.insert((
                    method.to_ascii_uppercase(),
                    path.clone(),
                    op["operationId"].as_str().expect("operationId").to_string(),
                ));
            }
        }
        let expected: BTreeSet<_> = ROUTES
            .iter()
            .map(|r| {
                (
                    r.method.to_string(),
                    openapi_path(r.path),
                    r.operation.into(),
                )
            })
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn every_schema_reference_resolves() {
        let document = document("http://127.0.0.1:1");
        let schemas = document["components"]["schemas"].clone();
        let text = document.to_string();
        let prefix = "#/components/schemas/";
        for piece in text.split(prefix).skip(1) {
            let name = piece.split('"').next().unwrap_or_default();
            assert!(schemas.get(name).is_some(), "{name} is not defined");
        }
    }

    #[test]
    fn websocket_routes_are_gets_answering_101() {
        let document = document("http://127.0.0.1:1");
        for route in ROUTES.iter().filter(|r| r.answer == Answer::WebSocket) {
            let op = &document["paths"][route.path]["get"];
            assert!(op["responses"]["101"].is_object(), "{}", route.path);
        }
    }
}
