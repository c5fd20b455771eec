//! The messages the codec benchmark measures: a typical [`SensorReading`] and
//! the original design guide's `User {user_id, username, active}` example,
//! with the exact values the guide shows.

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

/// The design guide's `{"user_id": 1001, "username": "alice", "active": true}`.
pub fn guide_user() -> User {
    User {
        user_id: 1001,
        username: "alice".into(),
        active: true,
    }
}
