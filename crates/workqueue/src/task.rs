//! The work-queue task, in JSON and Protobuf.
//!
//! In JSON the payload is an object (`{"id": "...", "kind": "sleep",
//! "payload": {"ms": 20}, "created_at": 1700000000000}`); in Protobuf it travels
//! as the JSON text of that object (`task.v1.Task.payload_json`), because task
//! payloads are free-form per kind. Delivery attempts are not part of the body:
//! they travel in AMQP headers so a retried task is byte-for-byte the same.

use common::clock::now_millis;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use common::{
    codec::{CodecError, WireMessage},
    proto::task::v1 as pb,
};

/// Kind of the task raised for an alert: look up the owner and notify them.
pub const KIND_NOTIFY: &str = "notify";
/// Kind of the simulated-work task: sleep `{"ms": N}` milliseconds.
pub const KIND_SLEEP: &str = "sleep";
/// Kind of the simulated CPU-bound task: SHA-256 chained `{"rounds": N}` times.
pub const KIND_HASH: &str = "hash";

/// One unit of work for the worker pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Unique id; workers use it to avoid doing a task twice.
    pub id: String,
    /// Handler to run. Kept as a string so an unknown kind reaches the worker,
    /// which dead-letters it with a reason instead of failing to decode.
    pub kind: String,
    /// Kind-specific arguments; always a JSON object.
    #[serde(default)]
    pub payload: Map<String, Value>,
    /// When the task was created, Unix milliseconds (0 when the sender left it out).
    #[serde(default)]
    pub created_at: i64,
}

impl Task {
    /// A new task of `kind` with a fresh id, created now.
    pub fn new(
        id: impl Into<String>,
        kind: impl Into<String>,
        payload: Map<String, Value>,
    ) -> Self {
        Task {
            id: id.into(),
            kind: kind.into(),
            payload,
            created_at: now_millis(),
        }
    }
}

impl WireMessage for Task {
    fn to_protobuf(&self) -> Vec<u8> {
        let message = pb::Task {
            id: self.id.clone(),
            kind: self.kind.clone(),
            payload_json: Value::Object(self.payload.clone()).to_string(),
            created_at: self.created_at,
        };
        prost::Message::encode_to_vec(&message)
    }

    fn from_protobuf(bytes: &[u8]) -> Result<Self, CodecError> {
        let message: pb::Task = prost::Message::decode(bytes)?;
        let payload = if message.payload_json.is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(&message.payload_json)? {
                Value::Object(map) => map,
                other => {
                    return Err(CodecError::Invalid(format!(
                        "task payload must be a json object, got {}",
                        json_type(&other)
                    )));
                }
            }
        };
        Ok(Task {
            id: message.id,
            kind: message.kind,
            payload,
            created_at: message.created_at,
        })
    }

    fn to_json(&self) -> Result<Vec<u8>, CodecError> {
        Ok(serde_json::to_vec(self)?)
    }

    fn from_json(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use common::codec::{Codec, ContentType};

    #[test]
    fn a_plain_json_task_decodes_with_defaults() {
        let task: Task = Codec::default()
            .decode_with_header(br#"{"id":"t1","kind":"sleep","payload":{"ms":5}}"#, None)
            .unwrap();
        assert_eq!(task.kind, KIND_SLEEP);
        assert_eq!(task.payload["ms"], 5);
        assert_eq!(task.created_at, 0);
    }

    #[test]
    fn a_protobuf_payload_that_is_not_an_object_is_invalid() {
        let bytes = prost::Message::encode_to_vec(&pb::Task {
            id: "t".into(),
            kind: "sleep".into(),
            payload_json: "[1,2]".into(),
            created_at: 0,
        });
        let err = Codec::default()
            .decode::<Task>(&bytes, ContentType::Protobuf)
            .unwrap_err();
        assert_eq!(err.reason(), "invalid_message");
        assert!(err.to_string().contains("an array"), "{err}");
    }

    fn any_json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z ]{0,12}".prop_map(Value::from),
        ]
    }

    proptest! {
        #[test]
        fn tasks_round_trip(
            id in "[a-f0-9-]{1,36}",
            kind in "[a-z_]{1,12}",
            payload in proptest::collection::btree_map("[a-z]{1,8}", any_json_leaf(), 0..6),
            created_at in any::<i64>(),
        ) {
            let task = Task { id, kind, payload: payload.into_iter().collect(), created_at };
            let codec = Codec::default();
            for content_type in [ContentType::Json, ContentType::Protobuf] {
                let bytes = codec.encode(&task, content_type).unwrap();
                let back: Task = codec.decode(&bytes, content_type).unwrap();
                prop_assert_eq!(&back, &task);
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let codec = Codec::default();
            for content_type in [ContentType::Json, ContentType::Protobuf] {
                let _ = codec.decode::<Task>(&bytes, content_type);
            }
        }
    }
}
