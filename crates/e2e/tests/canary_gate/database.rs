//! The service's own PostgreSQL database on the machine's server, and the
//! two ways the test makes it misbehave: another client's lock on the users
//! table (calls wait: slow answers), and a database that refuses the
//! service's connections (calls fail: the server's fault).

use std::time::Duration;

use sqlx::{Connection as _, PgConnection};
use tokio_util::sync::CancellationToken;

/// The machine's PostgreSQL (trust auth), where the database is created.
fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

async fn admin() -> PgConnection {
    PgConnection::connect(&admin_url())
        .await
        .expect("the local postgresql on 127.0.0.1:5432")
}

/// A database that exists for one test; dropped (connections and all) on `Drop`.
#[derive(Debug)]
pub(crate) struct TestDatabase {
    name: String,
    /// What the service connects to.
    pub(crate) url: String,
}

impl TestDatabase {
    pub(crate) async fn create(name: &str) -> TestDatabase {
        let mut admin = admin().await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        admin.close().await.ok();
        let admin_url = admin_url();
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        TestDatabase {
            name: name.to_string(),
            url: format!("{base}/{name}"),
        }
    }

    /// Another client takes `ACCESS EXCLUSIVE` on `users` for `hold` at a
    /// time, again and again, until [`UsersLock::release`]: every read of the
    /// service waits up to `hold`.
    pub(crate) fn hold_users_lock_repeatedly(&self, hold: Duration) -> UsersLock {
        let stop = CancellationToken::new();
        let url = self.url.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut connection = PgConnection::connect(&url).await.expect("lock connection");
            while !stopped.is_cancelled() {
                sqlx::query("BEGIN").execute(&mut connection).await.unwrap();
                sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                tokio::select! {
                    () = tokio::time::sleep(hold) => {}
                    () = stopped.cancelled() => {}
                }
                sqlx::query("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                // Let the waiting reads through before the next lock.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            connection.close().await.ok();
        });
        UsersLock { stop, task }
    }

    /// New connections refused (`ALLOW_CONNECTIONS false`) and the open ones
    /// terminated: to the service, its database is gone.
    pub(crate) async fn refuse_connections(&self) {
        let mut admin = admin().await;
        sqlx::query(&format!(
            "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS false",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(&mut admin)
        .await
        .unwrap();
        admin.close().await.ok();
    }

    /// Undoes [`TestDatabase::refuse_connections`].
    pub(crate) async fn accept_connections(&self) {
        let mut admin = admin().await;
        sqlx::query(&format!(
            "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS true",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
        admin.close().await.ok();
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        testkit::block_on_cleanup(async move {
            if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                if let Err(error) = sqlx::query(&drop).execute(&mut admin).await {
                    eprintln!("cannot drop test database {name}: {error}");
                }
            }
        });
    }
}

/// The repeating lock of [`TestDatabase::hold_users_lock_repeatedly`].
#[derive(Debug)]
pub(crate) struct UsersLock {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl UsersLock {
    /// Stops locking and waits until the last lock is rolled back.
    pub(crate) async fn release(self) {
        self.stop.cancel();
        self.task.await.expect("the lock task does not panic");
    }
}
