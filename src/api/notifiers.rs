//! Notifiers (Scalingo's shapes, compat.md): the notification platforms and event types
//! catalogues (no auth), an app's webhook notifiers, and their delivery attempts.
//!
//! Validates and shapes JSON only: notifiers are written through the writer (with their
//! timeline events), and delivered by `notify`. The secret is shown to whoever may manage the
//! app's notifiers (the owner and collaborators); Scalingo's CLI prints only what it knows.

use std::net::IpAddr;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::access::Caller;
use super::views::rfc3339;
use super::{ApiError, AppState, JsonBody};
use crate::model::Pusher;
use crate::notify::signing::generate_secret;
use crate::store::timeline_codec::{StoredDelivery, StoredNotifier};
use crate::timeline::{type_by_id, EVENT_CATEGORIES, EVENT_TYPES};

/// The one platform deployd delivers to. Its id is stable (clients send it as `platform_id`).
pub const WEBHOOK_PLATFORM_ID: &str = "1";
const WEBHOOK_PLATFORM_NAME: &str = "webhook";
/// Longest webhook URL accepted (as for source URLs' order of magnitude).
const MAX_WEBHOOK_URL_BYTES: usize = 2048;
/// Longest notifier name.
const MAX_NAME_CHARS: usize = 100;
/// A caller-chosen secret's length bounds: shorter is guessable, longer is pointless.
const SECRET_CHARS: std::ops::RangeInclusive<usize> = 16..=256;
/// Delivery attempts listed by `GET …/deliveries` (the newest).
const DELIVERIES_LISTED: usize = 50;

fn platform_view() -> Value {
    json!({
        "id": WEBHOOK_PLATFORM_ID,
        "name": WEBHOOK_PLATFORM_NAME,
        "display_name": "Webhook",
        "logo_url": "",
        "description": "POSTs each selected event as JSON to a URL, signed with HMAC-SHA256",
        "available_event_ids": EVENT_TYPES.iter().map(|t| t.id).collect::<Vec<_>>(),
    })
}

/// `GET /v1/notification_platforms`.
pub async fn platforms() -> impl IntoResponse {
    Json(json!({ "notification_platforms": [platform_view()] }))
}

/// `GET /v1/notification_platforms/search?name=…`: the platforms of that name (maybe none).
pub async fn search_platforms(RawQuery(query): RawQuery) -> Result<impl IntoResponse, ApiError> {
    let name = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "name")
        .map(|(_, value)| value.to_owned())
        .ok_or_else(|| ApiError::field("name", "is required"))?;
    let found: Vec<Value> = if name == WEBHOOK_PLATFORM_NAME {
        vec![platform_view()]
    } else {
        Vec::new()
    };
    Ok(Json(json!({ "notification_platforms": found })))
}

/// `GET /v1/event_types`.
pub async fn event_types() -> impl IntoResponse {
    let types: Vec<Value> = EVENT_TYPES
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "category_id": t.category_id,
                "name": t.name,
                "display_name": t.display_name,
                "description": t.description,
                "template": t.template,
            })
        })
        .collect();
    Json(json!({ "event_types": types }))
}

/// `GET /v1/event_categories`.
pub async fn event_categories() -> impl IntoResponse {
    let categories: Vec<Value> = EVENT_CATEGORIES
        .iter()
        .map(|c| json!({"id": c.id, "name": c.name, "position": c.position}))
        .collect();
    Json(json!({ "event_categories": categories }))
}

/// The notifier as the API shows it; the signing secret only to a role that may manage the app
/// (a limited collaborator sees that a notifier exists, not how to forge its deliveries).
fn notifier_view(n: &StoredNotifier, show_secret: bool) -> Value {
    let at = |ns: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
            .map(rfc3339)
            .unwrap_or_default()
    };
    json!({
        "id": uuid::Uuid::from_bytes(n.id).to_string(),
        "app_id": uuid::Uuid::from_bytes(n.app_id).to_string(),
        "active": n.active,
        "name": n.name,
        "type": WEBHOOK_PLATFORM_NAME,
        "send_all_events": n.send_all_events,
        "send_all_alerts": n.send_all_alerts,
        "selected_event_ids": n.selected_event_ids,
        "type_data": if show_secret {
            json!({ "webhook_url": n.webhook_url, "secret": n.secret })
        } else {
            json!({ "webhook_url": n.webhook_url })
        },
        "platform_id": n.platform_id,
        "created_at": at(n.created_at),
        "updated_at": at(n.updated_at),
    })
}

/// `{"notifier":{…}}` as the Go SDK sends it: every field optional (it sends zero values and
/// extra ones such as `id`, `type`, `type_data.emails`, which are ignored).
#[derive(Deserialize)]
pub struct NotifierBody {
    notifier: Option<NotifierFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NotifierFields {
    name: Option<String>,
    active: Option<bool>,
    send_all_events: Option<bool>,
    send_all_alerts: Option<bool>,
    selected_event_ids: Option<Vec<String>>,
    platform_id: Option<String>,
    type_data: Option<TypeData>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct TypeData {
    webhook_url: Option<String>,
    secret: Option<String>,
}

/// Applies `fields` to `n` (a new notifier's defaults, or the stored one for a PATCH, where
/// empty strings mean "unchanged" because the Go SDK sends them for fields not given).
fn apply(
    n: &mut StoredNotifier,
    fields: NotifierFields,
    creating: bool,
    allow_private: bool,
) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let given = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    if given(&fields.name) {
        let name = fields.name.unwrap_or_default();
        if name.chars().count() > MAX_NAME_CHARS {
            errors.push((
                "name".into(),
                format!("is longer than {MAX_NAME_CHARS} characters"),
            ));
        }
        n.name = name;
    }
    match fields.platform_id {
        Some(id) if id == WEBHOOK_PLATFORM_ID => n.platform_id = id,
        Some(id) if id.is_empty() && !creating => {}
        None if !creating => {}
        None => errors.push(("platform_id".into(), "is required".into())),
        Some(id) => errors.push((
            "platform_id".into(),
            format!("unknown platform {id:?} (GET /v1/notification_platforms)"),
        )),
    }
    if let Some(active) = fields.active {
        n.active = active;
    }
    if let Some(all) = fields.send_all_events {
        n.send_all_events = all;
    }
    if let Some(all) = fields.send_all_alerts {
        n.send_all_alerts = all;
    }
    if let Some(ids) = fields.selected_event_ids {
        for id in &ids {
            if type_by_id(id).is_none() {
                errors.push((
                    "selected_event_ids".into(),
                    format!("unknown event type id {id:?} (GET /v1/event_types)"),
                ));
            }
        }
        n.selected_event_ids = ids;
    }
    let type_data = fields.type_data.unwrap_or_default();
    if given(&type_data.webhook_url) {
        let url = type_data.webhook_url.unwrap_or_default();
        if let Err(reason) = check_webhook_url(&url, allow_private) {
            errors.push(("webhook_url".into(), reason));
        }
        n.webhook_url = url;
    } else if creating {
        errors.push(("webhook_url".into(), "is required".into()));
    }
    if given(&type_data.secret) {
        let secret = type_data.secret.unwrap_or_default();
        if !SECRET_CHARS.contains(&secret.chars().count()) {
            errors.push((
                "secret".into(),
                format!(
                    "must be {} to {} characters",
                    SECRET_CHARS.start(),
                    SECRET_CHARS.end()
                ),
            ));
        }
        n.secret = secret;
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(errors))
    }
}

/// The checks a URL can pass without resolving its host: http(s), a host, and (unless private
/// addresses are allowed) no non-public IP literal. Names are resolved and checked again at
/// each delivery (`pipeline::fetch`'s rule).
fn check_webhook_url(url: &str, allow_private: bool) -> Result<(), String> {
    if url.len() > MAX_WEBHOOK_URL_BYTES {
        return Err(format!("is longer than {MAX_WEBHOOK_URL_BYTES} bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    let host = parsed.host_str().ok_or_else(|| "has no host".to_string())?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        if !allow_private && !crate::pipeline::fetch::is_public(ip) {
            return Err(format!("{ip} is not a public address"));
        }
    }
    Ok(())
}

fn actor(caller: &Caller) -> Pusher {
    Pusher {
        id: caller.user.id,
        username: caller.user.username.clone(),
        email: caller.user.email.clone(),
    }
}

fn parse_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("notifier"))
}

fn nanos(at: OffsetDateTime) -> i64 {
    // i64 nanoseconds cover 1677..2262.
    at.unix_timestamp_nanos() as i64
}

/// `GET /v1/apps/{app}/notifiers`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, role) = caller.app(&state, &app).await?;
    let notifiers = state.read(move |store| store.notifiers(app.id)).await?;
    let views: Vec<Value> = notifiers
        .iter()
        .map(|n| notifier_view(n, role.may_manage()))
        .collect();
    Ok(Json(json!({ "notifiers": views })))
}

/// `POST /v1/apps/{app}/notifiers` → 201 `{"notifier"}` (with its secret).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<NotifierBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, role) = caller.app(&state, &app).await?;
    role.refuse_management("manage notifiers")?;
    let fields = body
        .notifier
        .ok_or_else(|| ApiError::field("notifier", "is required"))?;
    let now = nanos(OffsetDateTime::now_utc());
    let mut notifier = StoredNotifier {
        id: *uuid::Uuid::now_v7().as_bytes(),
        app_id: *app.id.as_bytes(),
        name: WEBHOOK_PLATFORM_NAME.into(),
        active: true,
        send_all_events: false,
        send_all_alerts: false,
        selected_event_ids: Vec::new(),
        platform_id: WEBHOOK_PLATFORM_ID.into(),
        webhook_url: String::new(),
        secret: generate_secret(),
        created_at: now,
        updated_at: now,
    };
    apply(
        &mut notifier,
        fields,
        true,
        state.config.notifications.allow_private,
    )?;
    state
        .writer
        .put_notifier(notifier.clone(), actor(&caller), true)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "notifier": notifier_view(&notifier, role.may_manage()) })),
    ))
}

/// `GET /v1/apps/{app}/notifiers/{id}`.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, role) = caller.app(&state, &app).await?;
    let id = parse_id(&id)?;
    let notifier = state
        .read(move |store| store.notifier(app.id, id))
        .await?
        .ok_or(ApiError::NotFound("notifier"))?;
    Ok(Json(
        json!({ "notifier": notifier_view(&notifier, role.may_manage()) }),
    ))
}

/// `PATCH /v1/apps/{app}/notifiers/{id}`: only the fields given change.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<NotifierBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, role) = caller.app(&state, &app).await?;
    role.refuse_management("manage notifiers")?;
    let id = parse_id(&id)?;
    let fields = body
        .notifier
        .ok_or_else(|| ApiError::field("notifier", "is required"))?;
    let mut notifier = state
        .read(move |store| store.notifier(app.id, id))
        .await?
        .ok_or(ApiError::NotFound("notifier"))?;
    apply(
        &mut notifier,
        fields,
        false,
        state.config.notifications.allow_private,
    )?;
    notifier.updated_at = nanos(OffsetDateTime::now_utc());
    state
        .writer
        .put_notifier(notifier.clone(), actor(&caller), false)
        .await?;
    Ok(Json(
        json!({ "notifier": notifier_view(&notifier, role.may_manage()) }),
    ))
}

/// `DELETE /v1/apps/{app}/notifiers/{id}` → 204.
pub async fn destroy(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, role) = caller.app(&state, &app).await?;
    role.refuse_management("manage notifiers")?;
    let id = parse_id(&id)?;
    state
        .writer
        .delete_notifier(app.id, id, actor(&caller))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn delivery_view(d: &StoredDelivery) -> Value {
    let at = |ns: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
            .map(rfc3339)
            .unwrap_or_default()
    };
    json!({
        "delivery_id": uuid::Uuid::from_bytes(d.delivery_id).to_string(),
        "event_type": d.event_type,
        "attempt": d.attempt,
        "at": at(d.at),
        "at_unix_ms": d.at / 1_000_000,
        "status": d.outcome,
        "status_code": d.status_code,
        "duration_ms": d.duration_ms,
        "error": d.error,
        "next_retry_at": d.next_retry_at.map(at),
        "next_retry_at_unix_ms": d.next_retry_at.map(|ns| ns / 1_000_000),
    })
}

/// `GET /v1/apps/{app}/notifiers/{id}/deliveries`: the last attempts, newest first.
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (app, _) = caller.app(&state, &app).await?;
    let id = parse_id(&id)?;
    let attempts = state
        .read(move |store| match store.notifier(app.id, id)? {
            Some(_) => Ok(Some(store.deliveries(id, DELIVERIES_LISTED)?)),
            None => Ok(None),
        })
        .await?
        .ok_or(ApiError::NotFound("notifier"))?;
    let views: Vec<Value> = attempts.iter().map(delivery_view).collect();
    Ok(Json(json!({ "deliveries": views })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_follow_the_source_address_rule() {
        assert!(check_webhook_url("https://hooks.example.com/x", false).is_ok());
        assert!(check_webhook_url("http://127.0.0.1:9/x", false).is_err());
        assert!(check_webhook_url("http://127.0.0.1:9/x", true).is_ok());
        assert!(check_webhook_url("http://[::1]/x", false).is_err());
        assert!(check_webhook_url("ftp://example.com/x", true).is_err());
        assert!(check_webhook_url("not a url", true).is_err());
    }
}
