//! `hash` `{"rounds": N}`: simulated CPU-bound work, the counterpart of
//! `sleep`'s simulated waiting, for demos and benchmarks.
//!
//! The task chains SHA-256 `rounds` times, starting from its id. It is a
//! fixed amount of work, not a fixed time: a pool of workers on fewer cores
//! than workers then shows what CPU-bound work really does (it queues for
//! the cores), where a busy loop "for N ms" of wall time would look like it
//! scales with every process added.
//!
//! The hashing runs on tokio's blocking pool, so the worker's runtime keeps
//! serving its ops endpoint, heartbeats and acks while a task burns a core.

use futures::future::BoxFuture;
use sha2::{Digest as _, Sha256};
use workqueue::task::{KIND_HASH, Task};

use crate::handler::{HandlerError, TaskHandler};

/// The most rounds a task may ask for: some seconds of one core. More is a
/// bad payload, not a worker stuck for an hour.
pub const MAX_ROUNDS: u64 = 10_000_000;

/// Runs `hash` tasks.
#[derive(Debug, Clone, Copy, Default)]
pub struct HashHandler;

impl HashHandler {
    /// The kind this handler serves.
    pub const KIND: &'static str = KIND_HASH;
}

impl TaskHandler for HashHandler {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let rounds = hash_rounds(task)?;
            if rounds == 0 {
                return Ok(());
            }
            let seed = task.id.clone();
            match tokio::task::spawn_blocking(move || chain(seed.as_bytes(), rounds)).await {
                Ok(digest) => {
                    // Used, so the work cannot be optimised away.
                    std::hint::black_box(digest);
                    Ok(())
                }
                // The worker's own panic handling turns it into a permanent
                // failure (`handler_panicked`), as for any handler.
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(error) => Err(HandlerError::Transient(format!(
                    "hash task cancelled: {error}"
                ))),
            }
        })
    }
}

/// Reads `{"rounds": N}`: a missing `rounds` is 0 (nothing to do); anything
/// else than an integer from 0 to [`MAX_ROUNDS`] is a permanent
/// `invalid_payload`.
pub fn hash_rounds(task: &Task) -> Result<u64, HandlerError> {
    let Some(value) = task.payload.get("rounds") else {
        return Ok(0);
    };
    let rounds = value.as_u64().ok_or_else(|| {
        HandlerError::permanent(
            "invalid_payload",
            format!("hash.rounds must be a non-negative integer, got {value}"),
        )
    })?;
    if rounds > MAX_ROUNDS {
        return Err(HandlerError::permanent(
            "invalid_payload",
            format!("hash.rounds {rounds} exceeds the limit of {MAX_ROUNDS}"),
        ));
    }
    Ok(rounds)
}

/// SHA-256 of `seed`, then of that digest, `rounds` times in all (at least
/// once).
pub fn chain(seed: &[u8], rounds: u64) -> [u8; 32] {
    let mut digest: [u8; 32] = Sha256::digest(seed).into();
    for _ in 1..rounds {
        digest = Sha256::digest(digest).into();
    }
    digest
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn task(payload: serde_json::Value) -> Task {
        Task::new("t", KIND_HASH, payload.as_object().cloned().unwrap())
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn the_chain_is_sha256_applied_rounds_times() {
        // FIPS 180-2's example: SHA-256("abc").
        let once = chain(b"abc", 1);
        assert_eq!(
            hex(&once),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let twice: [u8; 32] = Sha256::digest(once).into();
        assert_eq!(chain(b"abc", 2), twice);
        assert_ne!(chain(b"abc", 3), twice);
    }

    #[test]
    fn hash_payloads_are_checked() {
        assert_eq!(hash_rounds(&task(json!({"rounds": 1000}))).unwrap(), 1000);
        assert_eq!(hash_rounds(&task(json!({}))).unwrap(), 0);
        for bad in [
            json!({"rounds": -1}),
            json!({"rounds": "5"}),
            json!({"rounds": 1.5}),
            json!({"rounds": MAX_ROUNDS + 1}),
        ] {
            let error = hash_rounds(&task(bad.clone())).unwrap_err();
            assert!(
                matches!(
                    error,
                    HandlerError::Permanent {
                        reason: "invalid_payload",
                        ..
                    }
                ),
                "{bad}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn the_hashing_leaves_the_runtime_free() {
        // On this one-thread runtime a handler hashing on the runtime's
        // thread would hold every other task up until it finished.
        let hashing = tokio::spawn(async {
            HashHandler
                .handle(&task(json!({"rounds": 2_000_000})))
                .await
        });
        let mut ticks = 0;
        while !hashing.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            ticks += 1;
        }
        hashing.await.unwrap().unwrap();
        // Two million rounds take 0.1 s even with SHA instructions: hashed
        // inline, the loop would see the handler finished after one tick.
        assert!(
            ticks >= 5,
            "the runtime was blocked while hashing: {ticks} ticks"
        );
    }
}
