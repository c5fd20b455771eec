//! Finished task ids shared by the whole worker pool, in Redis (optional).
//!
//! [`crate::finished`] remembers what *this* process finished. A task whose
//! ack was lost can also come back to *another* worker (its connection
//! died, the broker requeued the task, a different consumer got it); with
//! `REDIS_URL` set, every worker writes `SET <prefix><task id> 1 EX <ttl>`
//! before it acks, and looks the id up before it runs a task, so such a
//! redelivery is skipped by any worker of the pool.
//!
//! Redis is a helper here, never a dependency the work waits on: every call
//! is bounded by a short timeout, and when Redis is down or slow the worker
//! carries on with its own memory only (`idempotency_store_errors_total{op}`,
//! a warn when Redis goes away and an info when it is back). Without
//! `REDIS_URL` nothing here runs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::config::SecretUrl;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::IDEMPOTENCY_STORE_ERRORS;

/// How long one Redis call may take before the worker goes on without it.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct SharedFinished {
    redis: Option<Arc<RedisLedger>>,
}

struct RedisLedger {
    connection: ConnectionManager,
    key_prefix: String,
    ttl_secs: u64,
    /// Whether the last call failed, so an outage is logged once, not per task.
    failing: AtomicBool,
}

impl std::fmt::Debug for SharedFinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFinished")
            .field("enabled", &self.redis.is_some())
            .finish()
    }
}

impl SharedFinished {
    /// No shared store: each worker remembers only its own tasks.
    pub fn disabled() -> Self {
        SharedFinished { redis: None }
    }

    /// A store in the Redis at `url`, connected lazily (a Redis that is down
    /// at start does not stop the worker). Ids live `ttl` (at least 1 s).
    pub fn redis(
        url: &SecretUrl,
        key_prefix: &str,
        ttl: Duration,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(SharedFinished {
            redis: Some(Arc::new(RedisLedger {
                connection,
                key_prefix: key_prefix.to_string(),
                ttl_secs: ttl.as_secs().max(1),
                failing: AtomicBool::new(false),
            })),
        })
    }

    /// `true` if any worker of the pool finished `id` (within the TTL);
    /// `false` when unknown, Redis unreachable included.
    pub async fn contains(&self, id: &str) -> bool {
        let Some(redis) = &self.redis else {
            return false;
        };
        let mut command = redis::cmd("EXISTS");
        command.arg(redis.key(id));
        redis.call::<u64>("exists", command).await.unwrap_or(0) > 0
    }

    /// Records `id` as finished for the whole pool (best effort).
    pub async fn insert(&self, id: &str) {
        let Some(redis) = &self.redis else {
            return;
        };
        let mut command = redis::cmd("SET");
        command
            .arg(redis.key(id))
            .arg(1)
            .arg("EX")
            .arg(redis.ttl_secs);
        let _ = redis.call::<()>("set", command).await;
    }
}

impl RedisLedger {
    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.key_prefix)
    }

    /// Runs `command`, bounded by [`CALL_TIMEOUT`]; a failure is counted and
    /// logged once per outage.
    async fn call<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        command: redis::Cmd,
    ) -> Option<T> {
        let mut connection = self.connection.clone();
        let outcome =
            tokio::time::timeout(CALL_TIMEOUT, command.query_async::<T>(&mut connection)).await;
        let error = match outcome {
            Ok(Ok(value)) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis answers again: finished tasks are shared with the pool");
                }
                return Some(value);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} ms", CALL_TIMEOUT.as_millis()),
        };
        metrics::counter!(IDEMPOTENCY_STORE_ERRORS, "op" => op).increment(1);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error,
                "redis unavailable: finished tasks are remembered by this worker only until it is back"
            );
        }
        None
    }
}
