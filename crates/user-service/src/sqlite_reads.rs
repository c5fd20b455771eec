//! `GetUser` on SQLite: read-only connections of its own, outside sqlx.
//!
//! Why: sqlx runs each SQLite connection on a thread of its own and hands
//! every query there and its rows back through channels (plus the `Any`
//! driver's row conversion and the pool's async semaphore). A primary key
//! lookup takes SQLite a few microseconds; the hand-offs cost several times
//! that, so a `GetUser` cache miss ran at under half the rate of a bare
//! tonic call. Measured at concurrency 32 (`bench grpc`, read cache off):
//! sqlx ≈ 0.45 of raw tonic, in WAL mode ≈ 0.47 (`synchronous = NORMAL`
//! changes nothing for reads); plain `rusqlite` connections behind
//! `spawn_blocking` ≈ 0.27 (waking a blocking-pool thread per call costs
//! more than sqlx's channel); the same lookup run on the calling task's
//! thread ≈ 0.75–0.8. So the lookup runs inline:
//!
//! - On the caller's thread, like any other few-microsecond step of a call:
//!   one B-tree descent through cached pages, a statement prepared once per
//!   connection. It never waits for a lock there (busy timeout 0): a lookup
//!   that meets one (in WAL mode only an exclusive lock of another process,
//!   or recovery after a crash) is retried on the blocking pool, waiting up
//!   to the busy timeout as sqlx's path did, then `UNAVAILABLE`.
//! - Read-only: opened `SQLITE_OPEN_READ_ONLY` with `PRAGMA query_only`, so
//!   this path cannot write; every write stays on sqlx and commits with
//!   `synchronous = FULL` (see [`crate::store`]).
//! - Read-your-writes: the database is in WAL mode, and each lookup is a
//!   read transaction of its own (the statement is reset when it returns)
//!   begun when the lookup runs; a commit that returned before that is in
//!   the WAL index the transaction starts from, so it is seen.
//! - Errors as sqlx's: busy, locked, I/O, full, cannot open are
//!   `UNAVAILABLE`; anything else is `INTERNAL`.

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::Semaphore;

use crate::{domain::User, error::UserError};

/// The lookup; `?1` is the user id.
const GET_USER: &str =
    "SELECT id, name, age, email, created_at, updated_at FROM users WHERE id = ?1";

/// Read-only connections to one SQLite file, lent to one lookup at a time.
#[derive(Debug)]
pub(crate) struct SqliteReaders {
    path: PathBuf,
    /// Connections not lent out. A lookup takes one (or opens one when none
    /// is idle) and puts it back. Inline lookups never hold one across an
    /// await, so at most one per runtime thread is lent out that way, plus
    /// those waiting for a lock (bounded by `lock_waits`): the list stays
    /// that small without a cap.
    idle: Mutex<Vec<Connection>>,
    /// How long a lookup waits for another connection's lock before the
    /// database counts as unavailable.
    busy_timeout: Duration,
    /// Bounds the lookups waiting for a lock on the blocking pool.
    lock_waits: Semaphore,
    /// Set by [`SqliteReaders::close`]: lookups fail as unavailable and
    /// returned connections are closed.
    closed: AtomicBool,
}

impl SqliteReaders {
    /// Readers of the SQLite file at `path` (which must exist: the writer
    /// pool created it). At most `max_lock_waits` lookups wait for a lock at
    /// once, each up to `busy_timeout`. Opens one connection at once, so a
    /// file that cannot be opened fails here.
    pub(crate) fn open(
        path: &Path,
        max_lock_waits: usize,
        busy_timeout: Duration,
    ) -> Result<Self, rusqlite::Error> {
        let readers = SqliteReaders {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            busy_timeout,
            lock_waits: Semaphore::new(max_lock_waits.max(1)),
            closed: AtomicBool::new(false),
        };
        let first = readers.open_reader()?;
        readers.idle_connections().push(first);
        Ok(readers)
    }

    /// The user with this id, if any.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<User>, UserError> {
        let reader = self.take()?;
        match lookup_on(&reader, id) {
            Err(error) if is_lock_wait(&error) => self.get_waiting(reader, id).await,
            found => {
                self.give_back(reader);
                found.map_err(classify)
            }
        }
    }

    /// The lookup again on the blocking pool, waiting for the lock up to
    /// `busy_timeout`.
    async fn get_waiting(&self, reader: Connection, id: &str) -> Result<Option<User>, UserError> {
        let _permit = self
            .lock_waits
            .acquire()
            .await
            .map_err(|_| closed_error())?;
        let (id, busy_timeout) = (id.to_string(), self.busy_timeout);
        let (reader, found) = tokio::task::spawn_blocking(move || {
            let found = reader.busy_timeout(busy_timeout).and_then(|()| {
                let found = lookup_on(&reader, &id);
                reader.busy_timeout(Duration::ZERO)?;
                found
            });
            (reader, found)
        })
        .await
        .map_err(|e| UserError::Internal(format!("a database read failed: {e}")))?;
        self.give_back(reader);
        found.map_err(classify)
    }

    /// Closes the idle connections; later lookups fail as unavailable.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.lock_waits.close();
        self.idle_connections().clear();
    }

    /// An idle connection, or a new one.
    fn take(&self) -> Result<Connection, UserError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed_error());
        }
        let idle = self.idle_connections().pop();
        match idle {
            Some(reader) => Ok(reader),
            None => self.open_reader().map_err(classify),
        }
    }

    fn give_back(&self, reader: Connection) {
        if !self.closed.load(Ordering::SeqCst) {
            self.idle_connections().push(reader);
        }
    }

    fn idle_connections(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // A panic while the lock was held cannot leave the list half-changed
        // (push and pop are single steps), so a poisoned lock is still good.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A read-only connection that cannot write even by mistake, and never
    /// waits for a lock unless told to.
    fn open_reader(&self) -> Result<Connection, rusqlite::Error> {
        let reader = Connection::open_with_flags(
            &self.path,
            // NO_MUTEX: a connection is only ever used by one lookup at a time.
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(Duration::ZERO)?;
        reader.pragma_update(None, "query_only", true)?;
        Ok(reader)
    }
}

/// Whether the lookup met a lock (another connection's) it could wait for.
fn is_lock_wait(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn lookup_on(reader: &Connection, id: &str) -> Result<Option<User>, rusqlite::Error> {
    reader
        .prepare_cached(GET_USER)?
        .query_row([id], |row| {
            Ok(User {
                id: row.get(0)?,
                name: row.get(1)?,
                age: row.get(2)?,
                email: row.get(3)?,
                created_at: row.get(4)?,
                updated_at: row.get(5)?,
            })
        })
        .optional()
}

fn closed_error() -> UserError {
    UserError::Unavailable("database unavailable: the store is closed".into())
}

/// The same split as the sqlx path's: "try again later" or "our fault".
fn classify(error: rusqlite::Error) -> UserError {
    let transient = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => {
            crate::store::is_transient_sqlite_code(failure.extended_code)
        }
        _ => false,
    };
    if transient {
        tracing::warn!(error = %error, "database unavailable");
        UserError::Unavailable(format!("database unavailable: {error}"))
    } else {
        UserError::Internal(format!("database error: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const SCHEMA: &str = include_str!("../migrations/sqlite/20261127000001_users_and_outbox.sql");

    /// A migrated database in WAL mode with user `u-1`, and a connection
    /// that may write it.
    fn database() -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db");
        let writer = Connection::open(&path).unwrap();
        let mode: String = writer
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        writer.execute_batch(SCHEMA).unwrap();
        writer
            .execute(
                "INSERT INTO users (id, name, age, email, created_at, updated_at) \
                 VALUES ('u-1', 'Alice', 30, '', 1, 1)",
                [],
            )
            .unwrap();
        (dir, path, writer)
    }

    fn readers(path: &Path) -> SqliteReaders {
        SqliteReaders::open(path, 2, Duration::from_millis(200)).unwrap()
    }

    #[test]
    fn readers_cannot_write() {
        let (_dir, path, _writer) = database();
        let readers = readers(&path);
        let reader = readers.take().unwrap();

        let refused = reader
            .execute("UPDATE users SET name = 'Mallory' WHERE id = 'u-1'", [])
            .unwrap_err();

        assert_eq!(
            refused.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ReadOnly),
            "{refused}"
        );
        let query_only: bool = reader
            .query_row("PRAGMA query_only", [], |row| row.get(0))
            .unwrap();
        assert!(query_only);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lookup_sees_every_commit_that_returned_before_it() {
        let (_dir, path, writer) = database();
        let readers = readers(&path);
        // Warm: the connection has read the pages before they change.
        assert_eq!(readers.get("u-1").await.unwrap().unwrap().name, "Alice");

        for n in 0..50 {
            let name = format!("Alice {n}");
            writer
                .execute("UPDATE users SET name = ?1 WHERE id = 'u-1'", [&name])
                .unwrap();
            let user = readers.get("u-1").await.unwrap().unwrap();
            assert_eq!(user.name, name);
        }
        writer
            .execute("DELETE FROM users WHERE id = 'u-1'", [])
            .unwrap();
        assert_eq!(readers.get("u-1").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_database_is_unavailable_until_released() {
        let (_dir, path, writer) = database();
        drop(writer);
        // Another process holds the file exclusively (rollback journal,
        // exclusive locking: even readers are shut out).
        let holder = Connection::open(&path).unwrap();
        holder
            .query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
            .unwrap();
        holder
            .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
            .unwrap();
        let readers = readers(&path);

        let started = Instant::now();
        let error = readers.get("u-1").await.unwrap_err();

        assert!(
            matches!(&error, UserError::Unavailable(m) if m.contains("database is locked")),
            "{error}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "waited for the lock first: {:?}",
            started.elapsed()
        );
        holder.execute_batch("COMMIT").unwrap();
        drop(holder);
        assert_eq!(readers.get("u-1").await.unwrap().unwrap().name, "Alice");
    }

    #[tokio::test]
    async fn a_closed_reader_is_unavailable() {
        let (_dir, path, _writer) = database();
        let readers = readers(&path);
        readers.close();

        let error = readers.get("u-1").await.unwrap_err();

        assert!(matches!(error, UserError::Unavailable(_)), "{error}");
    }

    #[test]
    fn a_missing_file_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let error =
            SqliteReaders::open(&dir.path().join("missing.db"), 1, Duration::from_millis(10))
                .unwrap_err();
        assert_eq!(
            error.sqlite_error_code(),
            Some(rusqlite::ErrorCode::CannotOpen),
            "{error}"
        );
    }
}
