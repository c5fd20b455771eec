//! A lane's checkpoint: the stream position up to which its readings were
//! evaluated and their alerts confirmed by RabbitMQ, and every sensor's state
//! at that position — what the lane's next owner continues from.
//!
//! Checkpoints live in the JetStream key-value bucket `<group>_state`
//! (history 1, no expiry) under `lane.<lane>`, as JSON. Only the lane's lease
//! holder writes, and every write names the revision it last read or wrote:
//! a writer that lost the lane (its successor wrote since) gets
//! [`CheckpointError::Conflict`] and stops, instead of overwriting newer
//! progress with older.

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use serde::{Deserialize, Serialize};

use crate::{partition::Lane, rules::SensorStates};

/// Where a lane stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The readings stream's sequence of the last reading accounted for (0:
    /// none yet); the next owner starts after it.
    pub seq: u64,
    /// Every sensor's state after that reading.
    pub sensors: SensorStates,
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Someone else wrote the lane's checkpoint since this owner's last
    /// read or write: the lane is no longer this owner's.
    #[error("the checkpoint of lane {0} was written by another owner")]
    Conflict(Lane),
    /// The stored checkpoint does not decode.
    #[error("the checkpoint of lane {lane} does not decode: {error}")]
    Corrupt {
        /// The lane.
        lane: Lane,
        /// What was wrong with it.
        error: serde_json::Error,
    },
    /// The key-value store did not answer.
    #[error("checkpoint store: {0}")]
    Store(String),
}

/// The checkpoint of one lane, as its owner reads and writes it.
#[derive(Debug)]
pub struct CheckpointStore {
    kv: kv::Store,
    lane: Lane,
    /// The revision last read or written; `None` when the key has no value.
    revision: Option<u64>,
}

impl CheckpointStore {
    /// Reads the lane's checkpoint (the default when it has none yet).
    pub async fn load(kv: kv::Store, lane: Lane) -> Result<(Self, Checkpoint), CheckpointError> {
        let entry = kv
            .entry(key(lane))
            .await
            .map_err(|error| CheckpointError::Store(error.to_string()))?;
        let (revision, checkpoint) = match entry {
            Some(entry) if entry.operation == Operation::Put => {
                let checkpoint = serde_json::from_slice(&entry.value)
                    .map_err(|error| CheckpointError::Corrupt { lane, error })?;
                (Some(entry.revision), checkpoint)
            }
            _ => (None, Checkpoint::default()),
        };
        Ok((CheckpointStore { kv, lane, revision }, checkpoint))
    }

    /// Writes `checkpoint`, if nobody else wrote since this store's last
    /// read or write.
    pub async fn save(&mut self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let value = serde_json::to_vec(checkpoint)
            .map_err(|error| CheckpointError::Store(error.to_string()))?;
        let written = match self.revision {
            Some(revision) => self
                .kv
                .update(key(self.lane), value.into(), revision)
                .await
                .map_err(|error| match error.kind() {
                    UpdateErrorKind::WrongLastRevision => CheckpointError::Conflict(self.lane),
                    _ => CheckpointError::Store(error.to_string()),
                }),
            None => self
                .kv
                .create(key(self.lane), value.into())
                .await
                .map_err(|error| match error.kind() {
                    CreateErrorKind::AlreadyExists => CheckpointError::Conflict(self.lane),
                    _ => CheckpointError::Store(error.to_string()),
                }),
        };
        self.revision = Some(written?);
        Ok(())
    }
}

/// The key of a lane's checkpoint.
fn key(lane: Lane) -> String {
    format!("lane.{lane}")
}
