//! The document's component schemas (`components.schemas`): the request and response bodies
//! the `DOCS` rows name, written out once here.

use serde_json::{json, Value};

use super::schema_ref;
use crate::status::Status;

fn string() -> Value {
    json!({"type": "string"})
}

fn nullable_string() -> Value {
    json!({"type": ["string", "null"]})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

/// An object of one required field holding `schema`.
fn envelope(field: &str, schema: Value) -> Value {
    object(&[field], json!({ field: schema }))
}

/// The optional-fields request wrapper (`{"app": {...}}`): every field may be missing; the
/// handler answers 422 for what it needs.
fn request(field: &str, properties: Value) -> Value {
    json!({
        "type": "object",
        "properties": { field: {"type": "object", "properties": properties} },
    })
}

/// A request wrapper whose inner object (and some of its fields) the handler needs.
fn required_request(field: &str, inner: Value) -> Value {
    object(&[field], json!({ field: inner }))
}

pub(super) fn schemas() -> Value {
    let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
    let user = object(
        &["id", "username", "email", "fullname", "flags"],
        json!({
            "id": string(), "username": string(), "email": string(), "fullname": string(),
            "flags": {"type": "object"},
        }),
    );
    let token = object(
        &["id", "name", "created_at"],
        json!({"id": string(), "name": string(), "created_at": string(), "token": string()}),
    );
    let person = object(
        &["id", "username", "email"],
        json!({"id": string(), "username": string(), "email": string()}),
    );
    json!({
        "Error": {
            "type": "object",
            "description": "400/401/403/409/413/5xx {error}; 404 {resource, error}; 422 {errors}",
            "properties": {
                "error": string(),
                "resource": string(),
                "errors": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": string()},
                },
            },
            "anyOf": [{"required": ["error"]}, {"required": ["errors"]}],
        },
        "Empty": {"type": "object"},
        "Object": {"type": "object"},
        "OpenApi": object(&["openapi", "paths"], json!({"openapi": string(), "paths": {"type": "object"}})),
        "Jwt": envelope("token", string()),
        "Token": token,
        "Tokens": envelope("tokens", json!({"type": "array", "items": schema_ref("Token")})),
        "CreatedToken": envelope("token", schema_ref("Token")),
        "User": user,
        "UserEnvelope": envelope("user", schema_ref("User")),
        "CreatedUser": object(&["user", "token"], json!({
            "user": schema_ref("User"), "token": schema_ref("Token"),
        })),
        "Regions": envelope("regions", json!({"type": "array", "items": object(
            &["name", "api"],
            json!({"name": string(), "api": string(), "display_name": string()}),
        )})),
        "App": object(
            &["id", "name", "owner", "created_at", "updated_at", "status", "links"],
            json!({
                "id": string(), "name": string(), "owner": person.clone(),
                "created_at": string(), "updated_at": string(),
                "status": {"enum": ["new", "running"]},
                "git_source": nullable_string(), "last_deployed_at": nullable_string(),
                "last_deployed_by": nullable_string(), "last_deployment_id": nullable_string(),
                "links": envelope("deployments_stream", string()),
            }),
        ),
        "AppEnvelope": envelope("app", schema_ref("App")),
        "Apps": envelope("apps", json!({"type": "array", "items": schema_ref("App")})),
        "Collaborator": object(
            &["id", "app_id", "user_id", "username", "email", "status", "created_at"],
            json!({
                "id": string(), "app_id": string(), "user_id": string(), "username": string(),
                "email": string(), "status": string(), "created_at": string(),
            }),
        ),
        "CollaboratorEnvelope": envelope("collaborator", schema_ref("Collaborator")),
        "Collaborators": envelope(
            "collaborators",
            json!({"type": "array", "items": schema_ref("Collaborator")}),
        ),
        "Deployment": object(
            &["id", "app_id", "created_at", "status", "git_ref", "duration", "pusher", "links"],
            json!({
                "id": string(), "app_id": string(), "created_at": string(),
                "finished_at": nullable_string(), "status": {"enum": statuses},
                "git_ref": string(), "previous_git_ref": nullable_string(),
                "duration": {"type": "integer"}, "image_size": {"type": "integer", "minimum": 0},
                "pusher": person, "links": envelope("output", string()),
                "image": nullable_string(), "registry": nullable_string(),
                "postdeploy_hook": nullable_string(), "stack_base_image": nullable_string(),
                "image_kept": {"type": "boolean"},
            }),
        ),
        "DeploymentEnvelope": envelope("deployment", schema_ref("Deployment")),
        "Line": object(&["n", "at", "text"], json!({
            "n": {"type": "integer", "minimum": 1},
            "at": {"type": "string", "format": "date-time"},
            "text": string(),
        })),
        "SearchResult": object(&["matches", "total", "total_capped", "scanned_to"], json!({
            "matches": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "total": {"type": "integer", "minimum": 0, "maximum": 10000},
            "total_capped": {"type": "boolean"},
            "scanned_to": {"type": "integer", "minimum": 0},
        })),
        "Deployments": object(&["deployments", "meta"], json!({
            "deployments": {"type": "array", "items": schema_ref("Deployment")},
            "meta": envelope("pagination", object(
                &["current_page", "prev_page", "next_page", "total_pages", "total_count"],
                json!({
                    "current_page": {"type": "integer"},
                    "prev_page": {"type": ["integer", "null"]},
                    "next_page": {"type": ["integer", "null"]},
                    "total_pages": {"type": "integer"},
                    "total_count": {"type": "integer"},
                }),
            )),
        })),
        "Source": envelope("source", object(
            &["upload_url", "download_url"],
            json!({"upload_url": string(), "download_url": string()}),
        )),
        "CreateTokenRequest": request("token", json!({"name": string()})),
        "CreateUserRequest": required_request("user", object(&["username", "email"], json!({
            "username": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{1,63}$"},
            "email": {"type": "string", "format": "email", "maxLength": 128},
            "fullname": string(),
        }))),
        "CreateAppRequest": required_request("app", object(&["name"], json!({
            "name": {"type": "string", "pattern": "^[a-z0-9-]{3,48}$"},
            "git_source": string(),
        }))),
        "AddCollaboratorRequest": request("collaborator", json!({"email": string()})),
        "TriggerDeploymentRequest": request("deployment", json!({
            "git_ref": string(), "source_url": string(), "postdeploy_hook": string(),
        })),
    })
}
