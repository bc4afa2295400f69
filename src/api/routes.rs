//! The one table of HTTP routes: every path and method the server answers, who may call it,
//! and the handler. [`super::router`] is built from [`ROUTES`] and nothing else, so a route
//! exists in the server exactly when it has a row here; the OpenAPI document (`openapi`) is
//! built from the same rows. A new route is a new row.
//!
//! This module only describes and mounts routes: status codes, bodies and authentication are
//! the handlers' (and `error`'s, `access`'s) business.

use axum::http::Method;
use axum::routing::{delete, get, post, put, MethodRouter};

use super::{apps, deployments, observe, output, push, sources, stream, users, AppState};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone: the route authenticates the caller itself (token exchange with Basic auth).
    Public,
    /// A Bearer JWT or an API token (`access::Caller`), for the caller's own apps only.
    Caller,
    /// The WebSocket's first frame carries the token (the live stream's auth frame).
    AuthFrame,
    /// A pre-authenticated URL: the signature in the query string (`crate::sources`).
    SignedUrl,
    /// Anyone, with nothing to authenticate: a document served to all (the OpenAPI document;
    /// the metrics, unless `[metrics] token` is set, which the handler then checks).
    Open,
}

/// What a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A JSON object (errors are JSON everywhere).
    Json,
    /// `text/plain` output, or Server-Sent Events when asked for (`Accept: text/event-stream`).
    Output,
    /// The uploaded archive's bytes.
    Archive,
    /// `101 Switching Protocols` to a WebSocket.
    WebSocket,
    /// `text/plain` that is not a deployment's output (the metrics).
    Text,
}

/// One row of the route table.
pub struct Route {
    pub method: Method,
    /// The axum path (`{name}` segments are parameters).
    pub path: &'static str,
    /// A stable name for the operation (the OpenAPI `operationId`).
    pub operation: &'static str,
    /// One line for people.
    pub summary: &'static str,
    pub auth: Auth,
    pub answer: Answer,
    /// The handler, mounted for `method` only.
    pub handler: fn() -> MethodRouter<AppState>,
}

/// Every route of the API, in the order of the README's API section.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::POST,
        path: "/v1/tokens/exchange",
        operation: "exchangeToken",
        summary: "Exchange an API token (Basic auth password) for a one-hour JWT",
        auth: Auth::Public,
        answer: Answer::Json,
        handler: || post(users::exchange_token),
    },
    Route {
        method: Method::POST,
        path: "/v1/tokens",
        operation: "createToken",
        summary: "Create an API token for the caller; its secret is shown once",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || post(users::create_token),
    },
    Route {
        method: Method::GET,
        path: "/v1/tokens",
        operation: "listTokens",
        summary: "List the caller's API tokens (never their secrets)",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || get(users::list_tokens),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/tokens/{token_id}",
        operation: "revokeToken",
        summary: "Revoke one of the caller's API tokens",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || delete(users::revoke_token),
    },
    Route {
        method: Method::GET,
        path: "/v1/users/self",
        operation: "showSelf",
        summary: "The calling user",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || get(users::show_self),
    },
    Route {
        method: Method::POST,
        path: "/v1/users",
        operation: "createUser",
        summary: "Create a user and its first API token (admins only)",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || post(users::create_user),
    },
    Route {
        method: Method::GET,
        path: "/v1/regions",
        operation: "listRegions",
        summary: "The one region, whose API is this server",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || get(users::regions),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps",
        operation: "listApps",
        summary: "The apps the caller owns or collaborates on",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || get(apps::list),
    },
    Route {
        method: Method::POST,
        path: "/v1/apps",
        operation: "createApp",
        summary: "Create an app owned by the caller",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || post(apps::create),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}",
        operation: "showApp",
        summary: "One app, by name or id",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || get(apps::show),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/apps/{app}",
        operation: "deleteApp",
        summary: "Delete an app and everything it holds (owner only)",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || delete(apps::destroy),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/collaborators",
        operation: "listCollaborators",
        summary: "The app's collaborators",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || get(apps::list_collaborators),
    },
    Route {
        method: Method::POST,
        path: "/v1/apps/{app}/collaborators",
        operation: "addCollaborator",
        summary: "Add an existing user as a collaborator (owner only)",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || post(apps::add_collaborator),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/apps/{app}/collaborators/{collaborator}",
        operation: "removeCollaborator",
        summary: "Remove a collaborator (owner only)",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || delete(apps::remove_collaborator),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/deployments",
        operation: "listDeployments",
        summary: "The app's deployments, newest first, paginated",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || get(deployments::list),
    },
    Route {
        method: Method::POST,
        path: "/v1/apps/{app}/deployments",
        operation: "triggerDeployment",
        summary: "Deploy a source archive with the built-in executor",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || post(deployments::trigger),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/deployments/{deployment}",
        operation: "showDeployment",
        summary: "One deployment",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || get(deployments::show),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/deployments/{deployment}/output",
        operation: "deploymentOutput",
        summary: "A deployment's output; followed live with ?follow=true or as SSE",
        auth: Auth::Caller,
        answer: Answer::Output,
        handler: || get(output::output),
    },
    Route {
        method: Method::GET,
        path: "/v1/deployments/{deployment}/output",
        operation: "deploymentOutputById",
        summary: "A deployment's output by deployment id alone (the spec's links.output)",
        auth: Auth::Caller,
        answer: Answer::Output,
        handler: || get(output::output_by_id),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/push",
        operation: "pushSession",
        summary: "An external pusher's session (WebSocket, see the push protocol)",
        auth: Auth::Caller,
        answer: Answer::WebSocket,
        handler: || get(push::upgrade),
    },
    Route {
        method: Method::GET,
        path: "/apps/{app}",
        operation: "deploymentsStream",
        summary: "The app's live deployments stream (WebSocket, auth frame first)",
        auth: Auth::AuthFrame,
        answer: Answer::WebSocket,
        handler: || get(stream::upgrade),
    },
    Route {
        method: Method::POST,
        path: "/v1/sources",
        operation: "createSource",
        summary: "Pre-authenticated upload and download URLs for a source archive",
        auth: Auth::Caller,
        answer: Answer::Json,
        handler: || post(sources::create),
    },
    Route {
        method: Method::PUT,
        path: "/v1/sources/{source}/archive",
        operation: "uploadSource",
        summary: "Upload the archive to a signed upload URL",
        auth: Auth::SignedUrl,
        answer: Answer::Json,
        handler: || put(sources::upload),
    },
    Route {
        method: Method::GET,
        path: "/v1/sources/{source}/archive",
        operation: "downloadSource",
        summary: "Download the archive from a signed download URL",
        auth: Auth::SignedUrl,
        answer: Answer::Archive,
        handler: || get(sources::download),
    },
    Route {
        method: Method::GET,
        path: "/v1/openapi.json",
        operation: "openApiDocument",
        summary: "The OpenAPI 3.1 document of this API, built from this route table",
        auth: Auth::Open,
        answer: Answer::Json,
        handler: || get(observe::openapi),
    },
    Route {
        method: Method::GET,
        path: "/metrics",
        operation: "metrics",
        summary: "Prometheus metrics (Bearer [metrics] token when one is set)",
        auth: Auth::Open,
        answer: Answer::Text,
        handler: || get(observe::serve_metrics),
    },
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn no_two_rows_share_a_method_and_path_or_an_operation_name() {
        let mut pairs = HashSet::new();
        let mut operations = HashSet::new();
        for route in ROUTES {
            assert!(
                pairs.insert((route.method.clone(), route.path)),
                "{} {} twice",
                route.method,
                route.path
            );
            assert!(
                operations.insert(route.operation),
                "{} twice",
                route.operation
            );
        }
    }

    #[test]
    fn websocket_routes_are_gets() {
        for route in ROUTES.iter().filter(|r| r.answer == Answer::WebSocket) {
            assert_eq!(route.method, Method::GET, "{}", route.path);
        }
    }
}
