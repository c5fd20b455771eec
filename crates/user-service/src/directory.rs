//! The user directory: validation, storage and events behind one API that
//! the gRPC service and the JSON gateway both call. `get` is served from the
//! [`ReadCache`] when it can be; every change invalidates it after commit.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use common::clock::now_millis;
use tokio::sync::Notify;

use crate::{
    domain::{PageRequest, User, UserFields, encode_page_token, validate_id},
    error::UserError,
    events::{DataSyncEvent, EventKind},
    read_cache::ReadCache,
    store::UserStore,
};

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPage {
    /// Users ordered by id.
    pub users: Vec<User>,
    /// Pass back to get the next page; empty on the last page.
    pub next_page_token: String,
}

/// The directory. Cheap to clone; until the database is attached every call
/// fails with `Unavailable`.
#[derive(Debug, Clone)]
pub struct UserDirectory {
    store: Arc<OnceLock<UserStore>>,
    cache: Arc<ReadCache>,
    /// Wakes the outbox relay after a commit, so events leave at once
    /// instead of at the next poll.
    outbox_wakeup: Arc<Notify>,
}

impl UserDirectory {
    /// A directory without a database yet, reading through `cache`.
    pub fn new(cache: ReadCache) -> Self {
        UserDirectory {
            store: Arc::default(),
            cache: Arc::new(cache),
            outbox_wakeup: Arc::default(),
        }
    }

    /// The read cache (the change feed invalidates it).
    pub fn cache(&self) -> Arc<ReadCache> {
        self.cache.clone()
    }

    /// Starts serving from `store` (once the database is reachable and migrated).
    pub fn attach(&self, store: UserStore) {
        if self.store.set(store).is_err() {
            tracing::warn!("the user directory already has a database");
        }
    }

    /// The store, once attached.
    pub fn store(&self) -> Option<&UserStore> {
        self.store.get()
    }

    /// Notified after every committed change.
    pub fn outbox_wakeup(&self) -> Arc<Notify> {
        self.outbox_wakeup.clone()
    }

    fn ready_store(&self) -> Result<&UserStore, UserError> {
        self.store
            .get()
            .ok_or_else(|| UserError::Unavailable("the database is not ready yet".into()))
    }

    /// The user with this id.
    pub async fn get(&self, id: &str) -> Result<User, UserError> {
        validate_id("user_id", id)?;
        let ticket = match self.cache.lookup(id) {
            Ok(user) => return Ok(user),
            Err(ticket) => ticket,
        };
        let user = self
            .ready_store()?
            .get(id)
            .await?
            .ok_or_else(|| UserError::NotFound(id.to_string()))?;
        self.cache.store(ticket, &user);
        Ok(user)
    }

    /// Creates a user; `AlreadyExists` when the id is taken.
    pub async fn create(
        &self,
        id: &str,
        name: &str,
        age: i32,
        email: &str,
    ) -> Result<User, UserError> {
        validate_id("user_id", id)?;
        let fields = UserFields::new(name, age, email)?;
        let store = self.ready_store()?;
        let now = now_millis();
        let user = User {
            id: id.to_string(),
            name: fields.name,
            age: fields.age,
            email: fields.email,
            created_at: now,
            updated_at: now,
        };
        let event = DataSyncEvent::upserted(EventKind::UserCreated, &user);
        store
            .insert(&user, &event, current_traceparent().as_deref())
            .await?;
        self.outbox_wakeup.notify_one();
        tracing::info!(user_id = %user.id, "user created");
        Ok(user)
    }

    /// Replaces name, age and email of a user; `NotFound` when absent.
    pub async fn update(
        &self,
        id: &str,
        name: &str,
        age: i32,
        email: &str,
    ) -> Result<User, UserError> {
        validate_id("user_id", id)?;
        let fields = UserFields::new(name, age, email)?;
        let updated = self
            .ready_store()?
            .update(
                id,
                &fields,
                now_millis(),
                |user| DataSyncEvent::upserted(EventKind::UserUpdated, user),
                current_traceparent().as_deref(),
            )
            .await;
        let user = self.changed(id, updated)?;
        tracing::info!(user_id = %id, "user updated");
        Ok(user)
    }

    /// Deletes a user; `NotFound` when absent.
    pub async fn delete(&self, id: &str) -> Result<(), UserError> {
        validate_id("user_id", id)?;
        let event = DataSyncEvent::deleted(id, now_millis());
        let deleted = self
            .ready_store()?
            .delete(id, &event, current_traceparent().as_deref())
            .await;
        self.changed(id, deleted)?;
        tracing::info!(user_id = %id, "user deleted");
        Ok(())
    }

    /// After a write of user `id`: the cache forgets the user whatever the
    /// outcome (a commit that reported an error may still have committed);
    /// on success the relay is woken for the new event.
    fn changed<T>(&self, id: &str, outcome: Result<T, UserError>) -> Result<T, UserError> {
        self.cache.invalidate(id);
        let value = outcome?;
        self.outbox_wakeup.notify_one();
        Ok(value)
    }

    /// A page of users ordered by id.
    pub async fn list(&self, page_size: i32, page_token: &str) -> Result<UserPage, UserError> {
        let page = PageRequest::new(page_size, page_token)?;
        let (users, more) = self.ready_store()?.list(&page).await?;
        let next_page_token = match users.last() {
            Some(last) if more => encode_page_token(&last.id),
            _ => String::new(),
        };
        Ok(UserPage {
            users,
            next_page_token,
        })
    }
}

/// The `traceparent` of the current span, kept with an event so the relay's
/// message continues the trace of the request that caused it.
fn current_traceparent() -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    common::propagation::inject(&common::propagation::current_context(), &mut carrier);
    carrier.remove(common::propagation::TRACEPARENT)
}
