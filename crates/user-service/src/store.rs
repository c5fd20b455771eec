//! Storage: users and the event outbox in SQLite or PostgreSQL, through sqlx.
//!
//! One code path serves both databases: an [`AnyPool`] with `$n`
//! placeholders (SQLite understands them too), except SQLite's `get`
//! (below). The schema differs only in
//! details (auto-increment, collation), so each backend has its own
//! migrations directory, embedded at build time and run at start.
//!
//! - `sqlite://path/to/users.db`: the file and its directory are created
//!   when missing (`mode=rwc` is added unless the URL sets a mode). The file
//!   is put in WAL mode; the pool's connections commit with `synchronous =
//!   FULL` (a commit that returned survives a power cut) and wait up to 5 s
//!   (sqlx's busy timeout) for a lock. `get`, the hot read, goes around the
//!   pool through read-only connections of its own (`sqlite_reads.rs`).
//! - `postgres://user@host:5432/db` (or `postgresql://`).
//!
//! Every write changes the user and appends its `data_sync` event to the
//! `outbox` table in one transaction, so an event exists exactly when its
//! change was committed.

use std::{path::Path, str::FromStr as _, sync::Arc, time::Duration};

use common::config::SecretUrl;
use sqlx::{
    AnyPool, Row,
    any::{AnyPoolOptions, AnyRow},
    migrate::Migrator,
    postgres::PgListener,
    sqlite::SqliteConnectOptions,
};

use crate::{
    domain::{PageRequest, User, UserFields},
    error::UserError,
    events::DataSyncEvent,
    sqlite_reads::SqliteReaders,
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How long a SQLite read waits for another connection's lock before the
/// database counts as unavailable: sqlx's SQLite default, which the writes
/// keep.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const USER_COLUMNS: &str = "id, name, age, email, created_at, updated_at";

/// The PostgreSQL notification channel every committed change is announced
/// on (see [`UserStore::listen_for_changes`]); the payload is the user id.
pub const CHANGE_CHANNEL: &str = "user_changed";

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend of a `DATABASE_URL`, from its scheme.
    pub fn of(url: &SecretUrl) -> Result<Self, StoreError> {
        // `sqlite:path` (no `//`) is valid too.
        let scheme = url
            .expose()
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .unwrap_or_default();
        match scheme.as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => Err(StoreError::UnsupportedScheme(other.to_string())),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite://` nor `postgres://`.
    #[error("unsupported database url scheme {0:?}: expected sqlite or postgres")]
    UnsupportedScheme(String),
    /// The directory of the SQLite file cannot be created.
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The SQLite file cannot be opened for reading.
    #[error("cannot open the database for reading: {0}")]
    OpenReaders(#[source] rusqlite::Error),
}

/// Pool tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Upper bound of open connections.
    pub max_connections: u32,
    /// How long a query waits for a free (or new) connection before the
    /// database counts as unavailable.
    pub acquire_timeout: Duration,
}

/// An event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// Outbox row id; increases in commit order per user.
    pub id: i64,
    /// The event's UUID (AMQP `message_id`).
    pub event_id: String,
    /// The event kind (`user_created`, …).
    pub event: String,
    /// The JSON body.
    pub payload: String,
    /// W3C `traceparent` of the request that made the change, if it was traced.
    pub traceparent: Option<String>,
}

/// Key of the PostgreSQL advisory lock behind a [`RelayLease`] (any fixed
/// number; these are the bytes of "outbox").
const RELAY_LOCK_KEY: i64 = 0x6f75_7462_6f78;

/// The right to relay the outbox; see [`UserStore::try_relay_lease`]. Held
/// until dropped, or until its connection dies.
#[derive(Debug)]
pub struct RelayLease {
    /// The session holding the advisory lock (PostgreSQL only).
    connection: Option<sqlx::AnyConnection>,
}

impl RelayLease {
    /// Whether the lease still holds: its session answers. A lost session
    /// has lost the lock, and another replica may be relaying already.
    pub async fn is_held(&mut self) -> bool {
        match &mut self.connection {
            None => true,
            Some(connection) => sqlx::query("SELECT 1")
                .execute(&mut *connection)
                .await
                .is_ok(),
        }
    }
}

/// The users table and its outbox. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct UserStore {
    pool: AnyPool,
    backend: Backend,
    /// SQLite: `get`'s own read-only connections (see
    /// [`crate::sqlite_reads`]).
    readers: Option<Arc<SqliteReaders>>,
    /// For connections outside the pool (change notifications).
    url: SecretUrl,
}

impl UserStore {
    /// Opens a pool on `url` (creating a SQLite file and its directory when
    /// missing) and checks that one connection works.
    pub async fn connect(url: &SecretUrl, settings: PoolSettings) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url)?;
        let connect_url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url.expose())?,
            Backend::Postgres => url.expose().to_string(),
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // No ping before every query: it doubles the round trips (for
            // SQLite, the hand-offs to the connection's thread). A connection
            // that broke fails its query as UNAVAILABLE, is discarded, and the
            // client's retry gets a fresh one.
            .test_before_acquire(false);
        if backend == Backend::Sqlite {
            // SQLite's default, made explicit because durability rests on
            // it: in WAL mode FULL syncs the log at every commit, so a
            // commit that returned survives a power cut (NORMAL would only
            // sync at checkpoints, and the last commits could roll back).
            options = options.after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA synchronous = FULL")
                        .execute(connection)
                        .await
                        .map(drop)
                })
            });
        }
        let pool = options
            .connect(&connect_url)
            .await
            .map_err(StoreError::Connect)?;
        let readers = match backend {
            Backend::Sqlite => {
                use_write_ahead_log(&pool).await?;
                let file = SqliteConnectOptions::from_str(&connect_url)
                    .map_err(StoreError::Connect)?
                    .get_filename()
                    .to_path_buf();
                let readers = SqliteReaders::open(
                    &file,
                    settings.max_connections as usize,
                    SQLITE_BUSY_TIMEOUT,
                )
                .map_err(StoreError::OpenReaders)?;
                Some(Arc::new(readers))
            }
            Backend::Postgres => None,
        };
        Ok(UserStore {
            pool,
            backend,
            readers,
            url: url.clone(),
        })
    }

    /// Brings the schema up to date (idempotent; PostgreSQL serializes
    /// concurrent replicas with an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// The database behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database URL (prints without its password).
    pub fn url(&self) -> &SecretUrl {
        &self.url
    }

    /// A connection of its own listening on [`CHANGE_CHANNEL`] for
    /// committed changes (the read cache's change feed and the outbox relay
    /// follow it); `None` on SQLite, where only this process writes.
    ///
    /// A lost connection shows as `Ok(None)` from `try_recv` at once: the
    /// listener does not reconnect inside `try_recv` (which would wait out
    /// its pool's 30 s acquire timeout while the database is down); the
    /// caller decides.
    pub async fn listen_for_changes(&self) -> Result<Option<PgListener>, sqlx::Error> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = PgListener::connect(self.url.expose()).await?;
        listener.eager_reconnect(false);
        listener.listen(CHANGE_CHANNEL).await?;
        Ok(Some(listener))
    }

    /// Closes every connection; later queries fail as unavailable.
    pub async fn close(&self) {
        if let Some(readers) = &self.readers {
            readers.close();
        }
        self.pool.close().await;
    }

    /// The user with this id, if any.
    pub async fn get(&self, id: &str) -> Result<Option<User>, UserError> {
        if let Some(readers) = &self.readers {
            return readers.get(id).await;
        }
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.classify(e))?;
        row.map(|row| user_from_row(&row)).transpose()
    }

    /// Inserts `user` and queues `event`; `AlreadyExists` when the id is taken.
    pub async fn insert(
        &self,
        user: &User,
        event: &DataSyncEvent,
        traceparent: Option<&str>,
    ) -> Result<(), UserError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.classify(e))?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&user.id)
        .bind(&user.name)
        .bind(user.age)
        .bind(&user.email)
        .bind(user.created_at)
        .bind(user.updated_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(UserError::AlreadyExists(user.id.clone()));
            }
            other => other.map_err(|e| self.classify(e))?,
        };
        self.append_event(&mut tx, event, traceparent).await?;
        self.announce_change(&mut tx, &user.id).await?;
        tx.commit().await.map_err(|e| self.classify(e))
    }

    /// Replaces the fields of user `id` and queues the event `event_for`
    /// builds from the result; `NotFound` when there is no such user.
    pub async fn update(
        &self,
        id: &str,
        fields: &UserFields,
        updated_at: i64,
        event_for: impl FnOnce(&User) -> DataSyncEvent,
        traceparent: Option<&str>,
    ) -> Result<User, UserError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.classify(e))?;
        let row = sqlx::query(&format!(
            "UPDATE users SET name = $2, age = $3, email = $4, updated_at = $5 \
             WHERE id = $1 RETURNING {USER_COLUMNS}"
        ))
        .bind(id)
        .bind(&fields.name)
        .bind(fields.age)
        .bind(&fields.email)
        .bind(updated_at)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.classify(e))?;
        // Dropping the transaction rolls it back.
        let Some(row) = row else {
            return Err(UserError::NotFound(id.to_string()));
        };
        let user = user_from_row(&row)?;
        self.append_event(&mut tx, &event_for(&user), traceparent)
            .await?;
        self.announce_change(&mut tx, id).await?;
        tx.commit().await.map_err(|e| self.classify(e))?;
        Ok(user)
    }

    /// Deletes user `id` and queues `event`; `NotFound` when there is no such user.
    pub async fn delete(
        &self,
        id: &str,
        event: &DataSyncEvent,
        traceparent: Option<&str>,
    ) -> Result<(), UserError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.classify(e))?;
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.classify(e))?;
        if deleted.rows_affected() == 0 {
            return Err(UserError::NotFound(id.to_string()));
        }
        self.append_event(&mut tx, event, traceparent).await?;
        self.announce_change(&mut tx, id).await?;
        tx.commit().await.map_err(|e| self.classify(e))
    }

    /// Users ordered by id after `page.after`, at most `page.size`, and
    /// whether more follow.
    pub async fn list(&self, page: &PageRequest) -> Result<(Vec<User>, bool), UserError> {
        // One extra row tells whether there is a next page.
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(i64::from(page.size) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.classify(e))?;
        let more = rows.len() > page.size as usize;
        let users = rows
            .iter()
            .take(page.size as usize)
            .map(user_from_row)
            .collect::<Result<_, _>>()?;
        Ok((users, more))
    }

    /// The oldest `limit` events not yet confirmed by the broker.
    pub async fn pending_events(&self, limit: u32) -> Result<Vec<PendingEvent>, UserError> {
        let rows = sqlx::query(
            "SELECT id, event_id, event, payload, traceparent FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.classify(e))?;
        rows.iter()
            .map(|row| {
                Ok(PendingEvent {
                    id: row.try_get("id")?,
                    event_id: row.try_get("event_id")?,
                    event: row.try_get("event")?,
                    payload: row.try_get("payload")?,
                    traceparent: row.try_get("traceparent")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.classify(e))
    }

    /// Tries to become the one relay of this database's outbox. SQLite
    /// belongs to one process, so there it always succeeds. On PostgreSQL
    /// several replicas share the outbox: the lease is a session advisory
    /// lock on a connection of its own, so exactly one replica relays (no
    /// replica publishes an event another is publishing, and events leave in
    /// commit order), and when that replica dies its session ends and the
    /// lock frees itself. `None`: another replica holds it.
    pub async fn try_relay_lease(&self) -> Result<Option<RelayLease>, UserError> {
        if self.backend != Backend::Postgres {
            return Ok(Some(RelayLease { connection: None }));
        }
        let mut connection = self.pool.acquire().await.map_err(|e| self.classify(e))?;
        let granted: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut *connection)
            .await
            .map_err(|e| self.classify(e))?;
        // Out of the pool: a pooled connection would go back still holding
        // the lock. Dropping a detached one closes its session, which
        // releases the lock.
        Ok(granted.then(|| RelayLease {
            connection: Some(connection.detach()),
        }))
    }

    /// Removes an event the broker confirmed.
    pub async fn remove_event(&self, id: i64) -> Result<(), UserError> {
        sqlx::query("DELETE FROM outbox WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.classify(e))?;
        Ok(())
    }

    /// Events still waiting for the broker.
    pub async fn pending_count(&self) -> Result<i64, UserError> {
        sqlx::query("SELECT COUNT(*) AS pending FROM outbox")
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get("pending"))
            .map_err(|e| self.classify(e))
    }

    async fn append_event(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        event: &DataSyncEvent,
        traceparent: Option<&str>,
    ) -> Result<(), UserError> {
        sqlx::query(
            "INSERT INTO outbox (event_id, event, payload, traceparent, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&event.event_id)
        .bind(event.event.as_str())
        .bind(event.to_json())
        .bind(traceparent)
        .bind(event.occurred_at)
        .execute(&mut **tx)
        .await
        .map_err(|e| self.classify(e))?;
        Ok(())
    }

    /// Tells every replica's change listeners (the read cache's change feed,
    /// the outbox relay) that user `id` changed, when (and only if) `tx`
    /// commits. SQLite has no other replica to tell.
    async fn announce_change(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
    ) -> Result<(), UserError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        // `pg_notify` returns `void`, a type the Any driver cannot carry.
        sqlx::query("SELECT 1 FROM pg_notify($1, $2)")
            .bind(CHANGE_CHANNEL)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(|e| self.classify(e))?;
        Ok(())
    }

    /// Sorts a database error into "try again later" (the database is down,
    /// busy or overloaded) and "our fault" (everything else).
    fn classify(&self, error: sqlx::Error) -> UserError {
        let unavailable = match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| is_transient_code(self.backend, &code)),
            _ => false,
        };
        if unavailable {
            tracing::warn!(error = %error, "database unavailable");
            UserError::Unavailable(format!("database unavailable: {error}"))
        } else {
            UserError::Internal(format!("database error: {error}"))
        }
    }
}

/// Database error codes that mean "the database cannot serve now", not "the
/// query is wrong".
fn is_transient_code(backend: Backend, code: &str) -> bool {
    match backend {
        // SQLSTATE classes: 08 connection exception, 53 insufficient
        // resources, 57 operator intervention (shutdown), 40 serialization
        // failure or deadlock; 3D000: the database does not exist (yet).
        Backend::Postgres => {
            ["08", "53", "57", "40"].iter().any(|c| code.starts_with(c)) || code == "3D000"
        }
        Backend::Sqlite => code.parse::<i32>().is_ok_and(is_transient_sqlite_code),
    }
}

/// SQLite extended result codes that mean "the database cannot serve now";
/// the primary code is the low byte: 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL,
/// 14 CANTOPEN.
pub(crate) fn is_transient_sqlite_code(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6 | 10 | 13 | 14)
}

/// Puts the SQLite file in WAL mode (kept in the file; a no-op once set).
/// Readers then never wait for the writer nor it for them, and `get`'s own
/// connections see every commit that returned before their read began.
/// Commits stay as durable as before: the pool's connections keep
/// `synchronous = FULL`, so each commit is synced to the WAL before it
/// returns.
async fn use_write_ahead_log(pool: &AnyPool) -> Result<(), StoreError> {
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
        .fetch_one(pool)
        .await
        .map_err(StoreError::Connect)?;
    if !journal.eq_ignore_ascii_case("wal") {
        // Still correct (reads then wait out a commit's lock), only slower.
        tracing::warn!(journal, "the SQLite file cannot use WAL mode here");
    }
    Ok(())
}

fn user_from_row(row: &AnyRow) -> Result<User, UserError> {
    let read = || -> Result<User, sqlx::Error> {
        Ok(User {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            age: row.try_get("age")?,
            email: row.try_get("email")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    };
    read().map_err(|e| UserError::Internal(format!("cannot read a user row: {e}")))
}

/// Creates the SQLite file's directory and makes sure the file is created
/// when missing; returns the URL to connect with.
fn prepare_sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let has_mode = query.split('&').any(|param| param.starts_with("mode="));
    Ok(match (has_mode, query.is_empty()) {
        (true, _) => url.to_string(),
        (false, true) => format!("{url}?mode=rwc"),
        (false, false) => format!("{url}&mode=rwc"),
    })
}

/// The SQLite file a `sqlite://` URL names, or `None` for an in-memory database.
pub fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = path.is_empty() || path == ":memory:" || query.contains("mode=memory");
    (!in_memory).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    #[test]
    fn sqlite_urls_get_create_mode_unless_they_set_one() {
        let dir = tempfile::tempdir().unwrap();
        let base = format!("sqlite://{}/nested/users.db", dir.path().display());
        assert_eq!(
            prepare_sqlite_url(&base).unwrap(),
            format!("{base}?mode=rwc")
        );
        assert!(dir.path().join("nested").is_dir(), "directory created");
        let with_mode = format!("{base}?mode=ro");
        assert_eq!(prepare_sqlite_url(&with_mode).unwrap(), with_mode);
        let other = format!("{base}?cache=shared");
        assert_eq!(
            prepare_sqlite_url(&other).unwrap(),
            format!("{other}&mode=rwc")
        );
    }

    #[test]
    fn sqlite_paths_and_memory_databases() {
        assert_eq!(
            sqlite_path("sqlite://data/users.db?mode=rwc"),
            Some("data/users.db")
        );
        assert_eq!(sqlite_path("sqlite:///tmp/u.db"), Some("/tmp/u.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_path("postgres://h/db"), None);
    }

    #[test]
    fn backends_follow_the_scheme() {
        assert_eq!(
            Backend::of(&"sqlite://a.db".into()).unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::of(&"postgres://h/db".into()).unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::of(&"postgresql://h/db".into()).unwrap(),
            Backend::Postgres
        );
        assert!(Backend::of(&"mysql://h/db".into()).is_err());
    }

    /// A migrated SQLite store in a temp directory.
    async fn sqlite_store(settings: PoolSettings) -> (tempfile::TempDir, UserStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = SecretUrl::new(format!("sqlite://{}/users.db", dir.path().display()));
        let store = UserStore::connect(&url, settings).await.unwrap();
        store.migrate().await.unwrap();
        (dir, store)
    }

    const SETTINGS: PoolSettings = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(3),
    };

    fn alice(name: &str) -> User {
        User {
            id: "u-1".into(),
            name: name.into(),
            age: 30,
            email: String::new(),
            created_at: 1,
            updated_at: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_is_in_wal_mode_and_commits_are_synced() {
        let (_dir, store) = sqlite_store(SETTINGS).await;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        // Every pooled connection commits with synchronous = FULL (2): a
        // commit is on disk when it returns.
        let mut connections = Vec::new();
        for _ in 0..SETTINGS.max_connections {
            connections.push(store.pool.acquire().await.unwrap());
        }
        for connection in &mut connections {
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut **connection)
                .await
                .unwrap();
            assert_eq!(synchronous, 2);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_reads_see_each_write_once_it_returned() {
        let (_dir, store) = sqlite_store(SETTINGS).await;
        let user = alice("Alice");
        store
            .insert(
                &user,
                &DataSyncEvent::upserted(EventKind::UserCreated, &user),
                None,
            )
            .await
            .unwrap();
        assert_eq!(store.get("u-1").await.unwrap(), Some(user));

        for n in 0..30 {
            let fields = UserFields::new(&format!("Alice {n}"), 30, "").unwrap();
            store
                .update(
                    "u-1",
                    &fields,
                    2 + n,
                    |user| DataSyncEvent::upserted(EventKind::UserUpdated, user),
                    None,
                )
                .await
                .unwrap();
            let read = store.get("u-1").await.unwrap().unwrap();
            assert_eq!((read.name, read.updated_at), (fields.name, 2 + n));
        }
        store
            .delete("u-1", &DataSyncEvent::deleted("u-1", 99), None)
            .await
            .unwrap();
        assert_eq!(store.get("u-1").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_reads_do_not_wait_for_the_write_pool() {
        let (_dir, store) = sqlite_store(PoolSettings {
            max_connections: 1,
            acquire_timeout: Duration::from_millis(200),
        })
        .await;
        let user = alice("Alice");
        store
            .insert(
                &user,
                &DataSyncEvent::upserted(EventKind::UserCreated, &user),
                None,
            )
            .await
            .unwrap();
        // The only pooled connection is busy (a long write, say): a read
        // through the pool would time out.
        let held = store.pool.acquire().await.unwrap();

        assert_eq!(store.get("u-1").await.unwrap(), Some(user));
        drop(held);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_sqlite_store_is_unavailable() {
        let (_dir, store) = sqlite_store(SETTINGS).await;
        store.close().await;

        let error = store.get("u-1").await.unwrap_err();

        assert!(matches!(error, UserError::Unavailable(_)), "{error}");
    }

    #[tokio::test]
    async fn a_missing_read_only_sqlite_file_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let url = SecretUrl::new(format!(
            "sqlite://{}/missing.db?mode=ro",
            dir.path().display()
        ));

        let error = UserStore::connect(&url, SETTINGS).await.unwrap_err();

        assert!(
            matches!(&error, StoreError::Connect(_))
                && error.to_string().contains("unable to open"),
            "{error}"
        );
    }

    #[test]
    fn transient_codes() {
        assert!(is_transient_code(Backend::Postgres, "08006"));
        assert!(is_transient_code(Backend::Postgres, "57P01"));
        assert!(is_transient_code(Backend::Postgres, "40001"));
        assert!(!is_transient_code(Backend::Postgres, "42P01"));
        assert!(is_transient_code(Backend::Sqlite, "5"));
        assert!(is_transient_code(Backend::Sqlite, "517"));
        assert!(!is_transient_code(Backend::Sqlite, "2067"));
    }
}
