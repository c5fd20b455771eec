//! The messages the codec benchmark measures: a typical [`SensorReading`] and
//! the seed's own `User {user_id, username, active}` example (chapter 2.3),
//! with the exact values the seed shows.

use common::proto::{sensor::v1::SensorReading, user::v1::User};

/// A reading as sensor-publisher sends it.
pub fn sensor_reading() -> SensorReading {
    SensorReading {
        sensor_id: "temp-0042".into(),
        kind: "temperature".into(),
        value: 25.3,
        unit: "celsius".into(),
        timestamp: 1_764_201_600_000,
        seq: 123_456,
        site: Some("plant-a".into()),
        owner_id: Some("u-1001".into()),
    }
}

/// The seed's `{"user_id": 1001, "username": "alice", "active": true}`.
pub fn seed_user() -> User {
    User {
        user_id: 1001,
        username: "alice".into(),
        active: true,
    }
}
