//! The `data_sync` events: the JSON of the original design (`event` and
//! `data`, what plain consumers read), with an id and a time added.
//!
//! ```json
//! {"event": "user_created",
//!  "data": {"id": "u-1001", "name": "Alice", "age": 30, "email": "alice@example.com"},
//!  "event_id": "8c0f…", "occurred_at": 1764201600000}
//! ```
//! `user_deleted` carries only `{"id": …}` in `data`. Consumers deduplicate
//! on `event_id`: delivery is at-least-once (see [`crate::outbox`]).

use serde::{Deserialize, Serialize};

use crate::domain::User;

/// What happened to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// `user_created`
    UserCreated,
    /// `user_updated`
    UserUpdated,
    /// `user_deleted`
    UserDeleted,
}

impl EventKind {
    /// The wire name (`user_created`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UserCreated => "user_created",
            EventKind::UserUpdated => "user_updated",
            EventKind::UserDeleted => "user_deleted",
        }
    }
}

/// The user the event is about; only `id` for deletions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    /// The user id.
    pub id: String,
    /// The name after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The age after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<i32>,
    /// The email after the change (empty when the user has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// One message on the `data_sync` queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSyncEvent {
    /// What happened.
    pub event: EventKind,
    /// To whom.
    pub data: EventData,
    /// Unique per event (a UUID), also the AMQP `message_id`: the key for de-duplication.
    pub event_id: String,
    /// Unix milliseconds of the change.
    pub occurred_at: i64,
}

impl DataSyncEvent {
    /// The event for a user that was just created or updated.
    pub fn upserted(kind: EventKind, user: &User) -> Self {
        DataSyncEvent {
            event: kind,
            data: EventData {
                id: user.id.clone(),
                name: Some(user.name.clone()),
                age: Some(user.age),
                email: Some(user.email.clone()),
            },
            event_id: uuid::Uuid::new_v4().to_string(),
            occurred_at: user.updated_at,
        }
    }

    /// The event for a user that was just deleted.
    pub fn deleted(id: &str, occurred_at: i64) -> Self {
        DataSyncEvent {
            event: EventKind::UserDeleted,
            data: EventData {
                id: id.to_string(),
                name: None,
                age: None,
                email: None,
            },
            event_id: uuid::Uuid::new_v4().to_string(),
            occurred_at,
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        // Strings and integers only: serialization cannot fail.
        serde_json::to_string(self).expect("a DataSyncEvent always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_events_have_the_shape_plain_consumers_read() {
        let user = User {
            id: "u-1001".into(),
            name: "Alice".into(),
            age: 30,
            email: "alice@example.com".into(),
            created_at: 1,
            updated_at: 2,
        };
        let event = DataSyncEvent::upserted(EventKind::UserCreated, &user);
        let json: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(json["event"], "user_created");
        assert_eq!(
            json["data"],
            serde_json::json!({"id": "u-1001", "name": "Alice", "age": 30, "email": "alice@example.com"})
        );
        assert_eq!(json["occurred_at"], 2);
        assert!(uuid::Uuid::parse_str(json["event_id"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn deleted_events_carry_only_the_id() {
        let json: serde_json::Value =
            serde_json::from_str(&DataSyncEvent::deleted("u-7", 5).to_json()).unwrap();
        assert_eq!(json["event"], "user_deleted");
        assert_eq!(json["data"], serde_json::json!({"id": "u-7"}));
    }
}
