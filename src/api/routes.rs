//! The one table of HTTP routes: every path and method the server answers, who may call it,
//! and the handler. [`super::router`] is built from [`ROUTES`] and nothing else, so a route
//! exists in the server exactly when it has a row here; the OpenAPI document (`openapi`) is
//! built from the same rows. A new route is a new row.
//!
//! This module only describes and mounts routes: status codes, bodies and authentication are
//! the handlers' (and `error`'s, `access`'s) business.

use axum::http::Method;
use axum::routing::{delete, get, patch, post, put, MethodRouter};

use super::{
    apps, backup, caches, control, deployments, health, lines, notifiers, observe, output, push,
    sources, stream, timeline, ui, users, AppState,
};
use crate::model::Scope;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone: the route authenticates the caller itself (token exchange with Basic auth).
    Public,
    /// Anyone, with no credentials at all: read-only public catalogues (notification
    /// platforms, event types, as on Scalingo), probes that reveal nothing about apps or users
    /// (`/healthz`, `/readyz`), the OpenAPI document, and the metrics (unless `[metrics] token`
    /// is set, which the handler then checks).
    Open,
    /// A Bearer JWT or an API token (`access::Caller`), for the caller's own apps only.
    Caller,
    /// The WebSocket's first frame carries the token (the live stream's auth frame).
    AuthFrame,
    /// A pre-authenticated URL: the signature in the query string (`crate::sources`).
    SignedUrl,
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
    /// A tar stream (`application/x-tar`): the backup.
    Tar,
    /// A deployment's lines as NDJSON (`application/x-ndjson`, one JSON object per line).
    Lines,
    /// The dashboard's embedded files (HTML, JavaScript, CSS…), or a redirect to them.
    Dashboard,
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
    /// The narrowest token scope that may call the route (`access::guard` enforces it for
    /// `Auth::Caller` rows): `Read` for what only reads, `Deploy` for pushing, triggering and
    /// cancelling deployments (and what they need: sources, narrower tokens), `Full` for the
    /// rest. Rows of other `auth` kinds say `Read`: their own credential decides.
    pub scope: Scope,
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
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || post(users::exchange_token),
    },
    Route {
        method: Method::POST,
        path: "/v1/tokens",
        operation: "createToken",
        summary: "Create an API token for the caller; its secret is shown once",
        auth: Auth::Caller,
        scope: Scope::Deploy,
        answer: Answer::Json,
        handler: || post(users::create_token),
    },
    Route {
        method: Method::GET,
        path: "/v1/tokens",
        operation: "listTokens",
        summary: "List the caller's API tokens (never their secrets)",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(users::list_tokens),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/tokens/{token_id}",
        operation: "revokeToken",
        summary: "Revoke one of the caller's API tokens",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || delete(users::revoke_token),
    },
    Route {
        method: Method::GET,
        path: "/v1/users/self",
        operation: "showSelf",
        summary: "The calling user",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(users::show_self),
    },
    Route {
        method: Method::POST,
        path: "/v1/users",
        operation: "createUser",
        summary: "Create a user and its first API token (admins only)",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || post(users::create_user),
    },
    Route {
        method: Method::GET,
        path: "/v1/regions",
        operation: "listRegions",
        summary: "The one region, whose API is this server",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(users::regions),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps",
        operation: "listApps",
        summary: "The apps the caller owns or collaborates on",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(apps::list),
    },
    Route {
        method: Method::POST,
        path: "/v1/apps",
        operation: "createApp",
        summary: "Create an app owned by the caller",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || post(apps::create),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}",
        operation: "showApp",
        summary: "One app, by name or id",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(apps::show),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/apps/{app}",
        operation: "deleteApp",
        summary: "Delete an app and everything it holds (owner only)",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || delete(apps::destroy),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/collaborators",
        operation: "listCollaborators",
        summary: "The app's collaborators",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(apps::list_collaborators),
    },
    Route {
        method: Method::POST,
        path: "/v1/apps/{app}/collaborators",
        operation: "addCollaborator",
        summary: "Add an existing user as a collaborator (owner only)",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || post(apps::add_collaborator),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/apps/{app}/collaborators/{collaborator}",
        operation: "removeCollaborator",
        summary: "Remove a collaborator (owner only)",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || delete(apps::remove_collaborator),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/deployments",
        operation: "listDeployments",
        summary: "The app's deployments, newest first, paginated",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(deployments::list),
    },
    Route {
        method: Method::POST,
        path: "/v1/apps/{app}/deployments",
        operation: "triggerDeployment",
        summary: "Deploy a source archive with the built-in executor",
        auth: Auth::Caller,
        scope: Scope::Deploy,
        answer: Answer::Json,
        handler: || post(deployments::trigger),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/deployments/{deployment}",
        operation: "showDeployment",
        summary: "One deployment",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(deployments::show),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/deployments/{deployment}/output",
        operation: "deploymentOutput",
        summary: "A deployment's output; followed live with ?follow=true or as SSE",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Output,
        handler: || get(output::output),
    },
    Route {
        method: Method::GET,
        path: "/v1/deployments/{deployment}/output",
        operation: "deploymentOutputById",
        summary: "A deployment's output by deployment id alone (the spec's links.output)",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Output,
        handler: || get(output::output_by_id),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/push",
        operation: "pushSession",
        summary: "An external pusher's session (WebSocket, see the push protocol)",
        auth: Auth::Caller,
        scope: Scope::Deploy,
        answer: Answer::WebSocket,
        handler: || get(push::upgrade),
    },
    Route {
        method: Method::GET,
        path: "/apps/{app}",
        operation: "deploymentsStream",
        summary: "The app's live deployments stream (WebSocket, auth frame first)",
        auth: Auth::AuthFrame,
        scope: Scope::Read,
        answer: Answer::WebSocket,
        handler: || get(stream::upgrade),
    },
    Route {
        method: Method::POST,
        path: "/v1/sources",
        operation: "createSource",
        summary: "Pre-authenticated upload and download URLs for a source archive",
        auth: Auth::Caller,
        scope: Scope::Deploy,
        answer: Answer::Json,
        handler: || post(sources::create),
    },
    Route {
        method: Method::PUT,
        path: "/v1/sources/{source}/archive",
        operation: "uploadSource",
        summary: "Upload the archive to a signed upload URL",
        auth: Auth::SignedUrl,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || put(sources::upload),
    },
    Route {
        method: Method::GET,
        path: "/v1/sources/{source}/archive",
        operation: "downloadSource",
        summary: "Download the archive from a signed download URL",
        auth: Auth::SignedUrl,
        scope: Scope::Read,
        answer: Answer::Archive,
        handler: || get(sources::download),
    },
    Route {
        method: Method::POST,
        path: "/v1/apps/{app}/rename",
        operation: "renameApp",
        summary: "Rename an app; its id, deployments and links follow (owner or collaborator)",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || post(apps::rename),
    },
    Route {
        method: Method::PATCH,
        path: "/v1/apps/{app}/collaborators/{collaborator}",
        operation: "updateCollaborator",
        summary: "Make a collaborator limited or not (owner only)",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || patch(apps::update_collaborator),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/apps/{app}/caches/deployment",
        operation: "resetDeploymentCache",
        summary: "Empty the app's build cache (DEPLOYD_CACHE_DIR of the built-in executor)",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || delete(caches::reset_deployment_cache),
    },
    Route {
        method: Method::GET,
        path: "/v1/notification_platforms",
        operation: "listNotificationPlatforms",
        summary: "The notification platforms (webhook)",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(notifiers::platforms),
    },
    Route {
        method: Method::GET,
        path: "/v1/notification_platforms/search",
        operation: "searchNotificationPlatforms",
        summary: "The notification platforms of a name (?name=webhook)",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(notifiers::search_platforms),
    },
    Route {
        method: Method::GET,
        path: "/v1/event_types",
        operation: "listEventTypes",
        summary: "The timeline's event types, with their stable ids",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(notifiers::event_types),
    },
    Route {
        method: Method::GET,
        path: "/v1/event_categories",
        operation: "listEventCategories",
        summary: "The event types' categories",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(notifiers::event_categories),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/notifiers",
        operation: "listNotifiers",
        summary: "The app's notifiers",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(notifiers::list),
    },
    Route {
        method: Method::POST,
        path: "/v1/apps/{app}/notifiers",
        operation: "createNotifier",
        summary: "Add a webhook notifier; its signing secret is in the answer",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || post(notifiers::create),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/notifiers/{notifier}",
        operation: "showNotifier",
        summary: "One notifier, with its signing secret",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(notifiers::show),
    },
    Route {
        method: Method::PATCH,
        path: "/v1/apps/{app}/notifiers/{notifier}",
        operation: "updateNotifier",
        summary: "Change the fields given of a notifier",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || patch(notifiers::update),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/apps/{app}/notifiers/{notifier}",
        operation: "deleteNotifier",
        summary: "Remove a notifier and its delivery records",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Json,
        handler: || delete(notifiers::destroy),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/notifiers/{notifier}/deliveries",
        operation: "listNotifierDeliveries",
        summary: "A notifier's last delivery attempts, newest first",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(notifiers::deliveries),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/events",
        operation: "listAppEvents",
        summary: "The app's events timeline, newest first, paginated",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(timeline::app_events),
    },
    Route {
        method: Method::GET,
        path: "/v1/events",
        operation: "listUserEvents",
        summary: "The events of the caller's apps (deleted ones included), paginated",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(timeline::user_events),
    },
    Route {
        method: Method::POST,
        path: "/v1/apps/{app}/deployments/{deployment}/cancel",
        operation: "cancelDeployment",
        summary: "Cancel a deployment: queued ones end at once, running ones are stopped",
        auth: Auth::Caller,
        scope: Scope::Deploy,
        answer: Answer::Json,
        handler: || post(control::cancel),
    },
    Route {
        method: Method::GET,
        path: "/v1/deployments",
        operation: "listAllDeployments",
        summary: "Deployments of every app the caller may see (admins: all), filtered by status",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(deployments::list_all),
    },
    Route {
        method: Method::GET,
        path: "/healthz",
        operation: "healthz",
        summary: "Liveness: the process answers (unauthenticated)",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(health::healthz),
    },
    Route {
        method: Method::GET,
        path: "/readyz",
        operation: "readyz",
        summary: "Readiness: the store takes writes and the disk has room; 503 with the reasons (unauthenticated)",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(health::readyz),
    },
    Route {
        method: Method::GET,
        path: "/v1/openapi.json",
        operation: "openApiDocument",
        summary: "The OpenAPI 3.1 document of this API, built from this route table",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(observe::openapi),
    },
    Route {
        method: Method::GET,
        path: "/metrics",
        operation: "metrics",
        summary: "Prometheus metrics (Bearer [metrics] token when one is set)",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Text,
        handler: || get(observe::serve_metrics),
    },
    Route {
        method: Method::POST,
        path: "/v1/apps/{app}/deployments/{deployment}/rollback",
        operation: "rollbackDeployment",
        summary: "Roll back to a deployment: a new deployment starting its kept image (201; 422 when the image is no longer kept)",
        auth: Auth::Caller,
        scope: Scope::Deploy,
        answer: Answer::Json,
        handler: || post(control::rollback),
    },
    Route {
        method: Method::GET,
        path: "/v1/admin/backup",
        operation: "backup",
        summary: "A tar of a consistent snapshot: records, log files, kept images, live sources (admins only)",
        auth: Auth::Caller,
        scope: Scope::Full,
        answer: Answer::Tar,
        handler: || get(backup::backup),
    },
    Route {
        method: Method::GET,
        path: "/",
        operation: "dashboardRedirect",
        summary: "302 to the dashboard at /ui/",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Dashboard,
        handler: || get(ui::redirect),
    },
    Route {
        method: Method::GET,
        path: "/ui",
        operation: "dashboardRedirectSlash",
        summary: "302 to the dashboard at /ui/",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Dashboard,
        handler: || get(ui::redirect),
    },
    Route {
        method: Method::GET,
        path: "/ui/",
        operation: "dashboardShell",
        summary: "The dashboard's page (unauthenticated shell; the data comes from this API)",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Dashboard,
        handler: || get(ui::shell),
    },
    Route {
        method: Method::GET,
        path: "/ui/{*path}",
        operation: "dashboardFile",
        summary: "A dashboard asset, or the page for any other path (its client-side routes)",
        auth: Auth::Open,
        scope: Scope::Read,
        answer: Answer::Dashboard,
        handler: || get(ui::file),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/deployments/{deployment}/lines",
        operation: "deploymentLines",
        summary: "A range of a deployment's lines with their numbers and times (NDJSON)",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Lines,
        handler: || get(lines::lines),
    },
    Route {
        method: Method::GET,
        path: "/v1/apps/{app}/deployments/{deployment}/search",
        operation: "searchDeploymentOutput",
        summary: "Line numbers of a deployment's lines containing a text (case-insensitive)",
        auth: Auth::Caller,
        scope: Scope::Read,
        answer: Answer::Json,
        handler: || get(lines::search),
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
    fn only_reads_are_open_to_read_tokens() {
        for route in ROUTES.iter().filter(|r| r.auth == Auth::Caller) {
            if route.method != Method::GET {
                assert!(
                    route.scope > Scope::Read,
                    "{} {} changes something but read tokens may call it",
                    route.method,
                    route.path
                );
            }
        }
    }

    #[test]
    fn websocket_routes_are_gets() {
        for route in ROUTES.iter().filter(|r| r.answer == Answer::WebSocket) {
            assert_eq!(route.method, Method::GET, "{}", route.path);
        }
    }
}
