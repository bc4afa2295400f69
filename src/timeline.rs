//! The events timeline: what happened to an app, as Scalingo's `/v1/events` shows it.
//!
//! Owns the event types and categories (their ids are stable: clients store them in notifiers'
//! `selected_event_ids`, so an id is never renumbered or reused), the domain [`TimelineEvent`],
//! and its one JSON form, which is both the API's event object and a webhook's body.
//!
//! Pure: no storage, no clock, no I/O. The writer records events (`store::writer`, in the same
//! commit as what they describe); `api::timeline` lists them; `notify` delivers them. Not to be
//! confused with `store::events`, the hub's live deployment events.

use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{AppId, Deployment, Pusher};

/// One event type of `/v1/event_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// Stable id (what notifiers select). Never renumber.
    pub id: &'static str,
    /// The `type` field of events of this type.
    pub name: &'static str,
    pub category_id: &'static str,
    pub display_name: &'static str,
    pub description: &'static str,
    /// How a client may render the event (`{field}` names a `type_data` field).
    pub template: &'static str,
}

/// One event category of `/v1/event_categories`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCategory {
    pub id: &'static str,
    pub name: &'static str,
    pub position: u32,
}

/// Every category, in display order.
pub static EVENT_CATEGORIES: &[EventCategory] = &[
    EventCategory {
        id: "1",
        name: "app_management",
        position: 1,
    },
    EventCategory {
        id: "2",
        name: "collaboration",
        position: 2,
    },
    EventCategory {
        id: "3",
        name: "deployments",
        position: 3,
    },
    EventCategory {
        id: "4",
        name: "notifications",
        position: 4,
    },
];

/// Every event type (issue 11 lists exactly these). Ids are stable: append, never renumber.
pub static EVENT_TYPES: &[EventType] = &[
    EventType {
        id: "1",
        name: "new_app",
        category_id: "1",
        display_name: "App created",
        description: "The app was created",
        template: "app created",
    },
    EventType {
        id: "2",
        name: "rename_app",
        category_id: "1",
        display_name: "App renamed",
        description: "The app was renamed",
        template: "app renamed from {old_name} to {new_name}",
    },
    EventType {
        id: "3",
        name: "delete_app",
        category_id: "1",
        display_name: "App deleted",
        description: "The app was deleted (shown in /v1/events)",
        template: "app deleted",
    },
    EventType {
        id: "4",
        name: "new_collaborator",
        category_id: "2",
        display_name: "Collaborator added",
        description: "A collaborator was added to the app",
        template: "{collaborator.email} added as a collaborator",
    },
    EventType {
        id: "5",
        name: "accept_collaborator",
        category_id: "2",
        display_name: "Collaborator accepted",
        description: "A collaborator accepted an invitation",
        template: "{collaborator.email} accepted the invitation",
    },
    EventType {
        id: "6",
        name: "delete_collaborator",
        category_id: "2",
        display_name: "Collaborator removed",
        description: "A collaborator was removed from the app",
        template: "{collaborator.email} removed from the collaborators",
    },
    EventType {
        id: "7",
        name: "change_collaborator_role",
        category_id: "2",
        display_name: "Collaborator role changed",
        description: "A collaborator became limited or not",
        template: "{collaborator.email} is now {collaborator.role}",
    },
    EventType {
        id: "8",
        name: "new_notifier",
        category_id: "4",
        display_name: "Notifier added",
        description: "A notifier was added to the app",
        template: "notifier {notifier_name} added",
    },
    EventType {
        id: "9",
        name: "edit_notifier",
        category_id: "4",
        display_name: "Notifier edited",
        description: "A notifier of the app was changed",
        template: "notifier {notifier_name} edited",
    },
    EventType {
        id: "10",
        name: "delete_notifier",
        category_id: "4",
        display_name: "Notifier removed",
        description: "A notifier was removed from the app",
        template: "notifier {notifier_name} removed",
    },
    EventType {
        id: "11",
        name: "deployment",
        category_id: "3",
        display_name: "Deployment",
        description: "A deployment ended (one event per deployment, at its final status)",
        template: "deployment of {git_ref} by {pusher}: {status}",
    },
];

/// The type named `name` (an event's `type`).
pub fn type_by_name(name: &str) -> Option<&'static EventType> {
    EVENT_TYPES.iter().find(|t| t.name == name)
}

/// The type with the stable id `id`.
pub fn type_by_id(id: &str) -> Option<&'static EventType> {
    EVENT_TYPES.iter().find(|t| t.id == id)
}

/// One event of an app's timeline. `kind` is always the name of one of [`EVENT_TYPES`].
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEvent {
    /// UUIDv7: events sort by creation time in the store.
    pub id: Uuid,
    pub app_id: AppId,
    /// The app's name when the event happened.
    pub app_name: String,
    pub created_at: OffsetDateTime,
    /// Who did it (for a deployment, its pusher).
    pub user: Pusher,
    pub kind: &'static str,
    /// The type's own fields, a JSON object.
    pub type_data: Value,
}

impl TimelineEvent {
    /// A new event of type `kind`, now. Panics in debug builds on a type not in the table.
    pub fn new(
        app_id: AppId,
        app_name: &str,
        user: Pusher,
        kind: &'static str,
        type_data: Value,
        now: OffsetDateTime,
    ) -> Self {
        debug_assert!(type_by_name(kind).is_some(), "unknown event type {kind}");
        Self {
            id: Uuid::now_v7(),
            app_id,
            app_name: app_name.to_owned(),
            created_at: now,
            user,
            kind,
            type_data,
        }
    }

    /// The `deployment` event of a deployment that reached its final status.
    pub fn deployment(deployment: &Deployment, app_name: &str, now: OffsetDateTime) -> Self {
        let type_data = json!({
            "deployment_id": deployment.id.to_string(),
            "deployment_uuid": deployment.id.to_string(),
            "pusher": deployment.pusher.username,
            "git_ref": deployment.git_ref,
            "status": deployment.status.as_str(),
            "duration": deployment.duration_secs(),
        });
        Self::new(
            deployment.app_id,
            app_name,
            deployment.pusher.clone(),
            "deployment",
            type_data,
            now,
        )
    }

    /// The wire object (compat.md): `{id, app_id, app_name, created_at, user, type, type_data}`.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "app_id": self.app_id.to_string(),
            "app_name": self.app_name,
            "created_at": crate::api::views::rfc3339(self.created_at),
            "user": {
                "id": self.user.id.to_string(),
                "username": self.user.username,
                "email": self.user.email,
            },
            "type": self.kind,
            "type_data": self.type_data,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn event_type_ids_and_names_are_unique_and_categories_exist() {
        let ids: HashSet<_> = EVENT_TYPES.iter().map(|t| t.id).collect();
        let names: HashSet<_> = EVENT_TYPES.iter().map(|t| t.name).collect();
        assert_eq!(ids.len(), EVENT_TYPES.len());
        assert_eq!(names.len(), EVENT_TYPES.len());
        for t in EVENT_TYPES {
            assert!(
                EVENT_CATEGORIES.iter().any(|c| c.id == t.category_id),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn the_event_types_are_exactly_the_issues_list() {
        let names: Vec<_> = EVENT_TYPES.iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "new_app",
                "rename_app",
                "delete_app",
                "new_collaborator",
                "accept_collaborator",
                "delete_collaborator",
                "change_collaborator_role",
                "new_notifier",
                "edit_notifier",
                "delete_notifier",
                "deployment"
            ]
        );
        assert_eq!(type_by_name("deployment").map(|t| t.id), Some("11"));
        assert_eq!(type_by_id("8").map(|t| t.name), Some("new_notifier"));
    }
}
