//! The contact directory, kept current from the `data_sync` queue.
//!
//! user-service publishes `user_created`, `user_updated` and `user_deleted`
//! events: `{"event": "user_created", "data": {"id": 1001, "name": "Alice"}}`
//! as a plain client writes them, plus our optional `event_id` and
//! `occurred_at`. The worker keeps the latest state per user id so `notify`
//! can add contact details without a second call, and serves it on
//! `GET /contacts` ([`routes`]).
//!
//! Applying events is idempotent: an `event_id` seen before is skipped, and
//! an event older (`occurred_at`) than what is stored is ignored, so a
//! redelivered or reordered event never rolls a contact back. Deletions leave
//! a tombstone for that reason.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use axum::{Json, Router, extract::State, routing::get};
use common::codec::CodecError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How many event ids the directory remembers for de-duplication.
const SEEN_EVENTS: usize = 10_000;

/// One `data_sync` event, as published by user-service or a plain client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserEvent {
    /// `user_created`, `user_updated` or `user_deleted`.
    pub event: String,
    /// The user; `id` is required, a number (plain clients) or a string (ours).
    pub data: Map<String, Value>,
    /// Unique id of the event, for de-duplication.
    #[serde(default)]
    pub event_id: Option<String>,
    /// When the change happened, Unix milliseconds.
    #[serde(default)]
    pub occurred_at: Option<i64>,
}

/// What an event does to the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserEventKind {
    /// `user_created`.
    Created,
    /// `user_updated`.
    Updated,
    /// `user_deleted`.
    Deleted,
}

impl UserEvent {
    /// Decodes and checks an event body (JSON, whatever the content type says,
    /// as the contract fixes).
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let event: UserEvent = serde_json::from_slice(body)?;
        event.kind()?;
        event.user_id()?;
        Ok(event)
    }

    /// The kind of change.
    pub fn kind(&self) -> Result<UserEventKind, CodecError> {
        match self.event.as_str() {
            "user_created" => Ok(UserEventKind::Created),
            "user_updated" => Ok(UserEventKind::Updated),
            "user_deleted" => Ok(UserEventKind::Deleted),
            other => Err(CodecError::Invalid(format!("unknown event {other:?}"))),
        }
    }

    /// `data.id` as text: `1001` and `"1001"` name the same user.
    pub fn user_id(&self) -> Result<String, CodecError> {
        match self.data.get("id") {
            Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
            Some(Value::Number(id)) => Ok(id.to_string()),
            Some(other) => Err(CodecError::Invalid(format!(
                "data.id must be a string or a number, got {other}"
            ))),
            None => Err(CodecError::Invalid("data.id is missing".into())),
        }
    }
}

/// A user's contact details as last heard of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contact {
    /// The user id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Age, as plain clients' user records carry it.
    pub age: Option<i64>,
    /// `occurred_at` of the event that set this state (0 when unknown).
    pub updated_at: i64,
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The directory changed.
    Changed,
    /// The event was seen before (same `event_id`).
    Duplicate,
    /// The event is older than the stored state.
    Stale,
}

#[derive(Debug, Clone)]
enum Entry {
    /// A known user.
    Present(Contact),
    /// A deleted user, kept so that older events cannot bring it back.
    Deleted {
        /// `occurred_at` of the deletion.
        at: i64,
    },
}

impl Entry {
    fn at(&self) -> i64 {
        match self {
            Entry::Present(contact) => contact.updated_at,
            Entry::Deleted { at } => *at,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Latest state per user id, tombstones included.
    entries: HashMap<String, Entry>,
    /// Recently applied event ids.
    seen: HashSet<String>,
    /// `seen` in arrival order, for eviction.
    seen_order: VecDeque<String>,
}

/// Contacts by user id. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ContactDirectory {
    /// Shared by every clone.
    inner: Arc<Mutex<Inner>>,
}

impl ContactDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        ContactDirectory::default()
    }

    /// Applies one decoded event.
    pub fn apply(&self, event: &UserEvent) -> Result<Applied, CodecError> {
        let kind = event.kind()?;
        let id = event.user_id()?;
        let at = event.occurred_at.unwrap_or(0);
        let mut inner = self.lock();
        if let Some(event_id) = &event.event_id {
            if inner.seen.contains(event_id) {
                return Ok(Applied::Duplicate);
            }
            inner.seen.insert(event_id.clone());
            inner.seen_order.push_back(event_id.clone());
            while inner.seen_order.len() > SEEN_EVENTS {
                if let Some(oldest) = inner.seen_order.pop_front() {
                    inner.seen.remove(&oldest);
                }
            }
        }
        // Events without a time (a plain client's) always apply, in arrival order.
        if event.occurred_at.is_some()
            && inner.entries.get(&id).is_some_and(|entry| entry.at() > at)
        {
            return Ok(Applied::Stale);
        }
        let entry = match kind {
            UserEventKind::Deleted => Entry::Deleted { at },
            UserEventKind::Created | UserEventKind::Updated => {
                // An update may carry only the changed fields: keep the rest.
                let previous = match inner.entries.get(&id) {
                    Some(Entry::Present(contact)) => Some(contact.clone()),
                    _ => None,
                };
                let text = |key: &str| {
                    event
                        .data
                        .get(key)
                        .and_then(Value::as_str)
                        .map(String::from)
                };
                Entry::Present(Contact {
                    name: text("name").or_else(|| previous.as_ref().and_then(|p| p.name.clone())),
                    email: text("email")
                        .or_else(|| previous.as_ref().and_then(|p| p.email.clone())),
                    age: event
                        .data
                        .get("age")
                        .and_then(Value::as_i64)
                        .or_else(|| previous.as_ref().and_then(|p| p.age)),
                    id: id.clone(),
                    updated_at: at,
                })
            }
        };
        inner.entries.insert(id, entry);
        Ok(Applied::Changed)
    }

    /// The contact of `id`, unless unknown or deleted.
    pub fn get(&self, id: &str) -> Option<Contact> {
        match self.lock().entries.get(id) {
            Some(Entry::Present(contact)) => Some(contact.clone()),
            _ => None,
        }
    }

    /// Every known contact, sorted by id.
    pub fn list(&self) -> Vec<Contact> {
        let mut contacts: Vec<Contact> = self
            .lock()
            .entries
            .values()
            .filter_map(|entry| match entry {
                Entry::Present(contact) => Some(contact.clone()),
                Entry::Deleted { .. } => None,
            })
            .collect();
        contacts.sort_by(|a, b| a.id.cmp(&b.id));
        contacts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `GET /contacts` for the ops port: every known contact, sorted by id, as
/// JSON.
pub fn routes(contacts: ContactDirectory) -> Router {
    Router::new()
        .route("/contacts", get(list_contacts))
        .with_state(contacts)
}

async fn list_contacts(State(contacts): State<ContactDirectory>) -> Json<Vec<Contact>> {
    Json(contacts.list())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> UserEvent {
        UserEvent::decode(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_plain_clients_event_with_a_numeric_id_is_accepted() {
        let directory = ContactDirectory::new();
        let applied = directory
            .apply(&event(
                r#"{"event": "user_created", "data": {"id": 1001, "name": "Alice"}}"#,
            ))
            .unwrap();
        assert_eq!(applied, Applied::Changed);
        assert_eq!(
            directory.get("1001").unwrap().name.as_deref(),
            Some("Alice")
        );
    }

    #[test]
    fn duplicates_and_stale_events_change_nothing() {
        let directory = ContactDirectory::new();
        let created = r#"{"event":"user_created","data":{"id":"u-1","name":"Alice","email":"a@x"},"event_id":"e1","occurred_at":10}"#;
        let renamed = r#"{"event":"user_updated","data":{"id":"u-1","name":"Alicia"},"event_id":"e2","occurred_at":20}"#;
        let late = r#"{"event":"user_updated","data":{"id":"u-1","name":"Old"},"event_id":"e0","occurred_at":5}"#;
        assert_eq!(directory.apply(&event(created)).unwrap(), Applied::Changed);
        assert_eq!(directory.apply(&event(renamed)).unwrap(), Applied::Changed);
        assert_eq!(
            directory.apply(&event(created)).unwrap(),
            Applied::Duplicate
        );
        assert_eq!(directory.apply(&event(late)).unwrap(), Applied::Stale);
        let contact = directory.get("u-1").unwrap();
        assert_eq!(contact.name.as_deref(), Some("Alicia"));
        assert_eq!(
            contact.email.as_deref(),
            Some("a@x"),
            "kept from the create"
        );
    }

    #[test]
    fn a_deletion_is_not_undone_by_a_late_update() {
        let directory = ContactDirectory::new();
        directory
            .apply(&event(
                r#"{"event":"user_created","data":{"id":"u-2"},"occurred_at":1}"#,
            ))
            .unwrap();
        directory
            .apply(&event(
                r#"{"event":"user_deleted","data":{"id":"u-2"},"occurred_at":3}"#,
            ))
            .unwrap();
        let late =
            r#"{"event":"user_updated","data":{"id":"u-2","name":"Zombie"},"occurred_at":2}"#;
        assert_eq!(directory.apply(&event(late)).unwrap(), Applied::Stale);
        assert!(directory.get("u-2").is_none());
        assert!(directory.list().is_empty());
    }

    #[test]
    fn bad_events_are_typed_errors() {
        for bad in [
            r#"{"event":"user_renamed","data":{"id":1}}"#,
            r#"{"event":"user_created","data":{"name":"x"}}"#,
            r#"{"event":"user_created","data":{"id":[1]}}"#,
            r#"user_created 1001"#,
        ] {
            let err = UserEvent::decode(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(err.reason(), "invalid_message" | "invalid_json"),
                "{bad}: {err}"
            );
        }
    }
}
