//! Which readings belong together: the partition of a sensor and the lanes
//! a consumer group divides among its members.
//!
//! A sensor's partition is `fnv1a32(sensor_id) % P` — the function
//! nats-server's subject mapping `{{partition(P,1)}}` applies (FNV-1a, 32
//! bits, over the token's bytes), so the server and we agree on it without
//! talking. The deployments map `sensor.data.<sensor_id>` to
//! `sensor.data.<sensor_id>.<partition>` (deploy/nats/partitions.conf):
//! subscribers of `sensor.data.>` keep receiving everything, and a consumer
//! can filter on `sensor.data.*.<p>` to receive one partition only.
//!
//! A lane is what one member owns and reads in order: one per partition,
//! plus two for readings no mapping partitioned — on `sensor.data.<id>`
//! (a server without the mapping) and on the bare `sensor.data` (plain
//! clients). Those are still evaluated exactly as before, by one member at a
//! time; they only do not spread over members.

use std::fmt;

/// The FNV-1a 32-bit hash of `bytes` (nats-server's partition hash).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// The partition of `sensor_id` among `partitions`.
pub fn partition_of(sensor_id: &str, partitions: u16) -> u16 {
    (fnv1a32(sensor_id.as_bytes()) % u32::from(partitions)) as u16
}

/// A stream of readings one member at a time reads, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// `<prefix>.<sensor_id>.<p>`: readings the server mapped to partition `p`.
    Partition(u16),
    /// `<prefix>.<sensor_id>`: readings of a server without the mapping.
    Unmapped,
    /// `<prefix>`: readings without a sensor token in the subject.
    Bare,
}

impl Lane {
    /// Every lane of a group with `partitions` partitions, in assignment order.
    pub fn all(partitions: u16) -> Vec<Lane> {
        (0..partitions)
            .map(Lane::Partition)
            .chain([Lane::Unmapped, Lane::Bare])
            .collect()
    }

    /// The subject filter of the lane's consumer under `prefix`.
    pub fn filter(self, prefix: &str) -> String {
        match self {
            Lane::Partition(p) => format!("{prefix}.*.{p}"),
            Lane::Unmapped => format!("{prefix}.*"),
            Lane::Bare => prefix.to_string(),
        }
    }

    /// Parses what [`Lane`]'s `Display` writes (`p3`, `unmapped`, `bare`).
    pub fn parse(name: &str) -> Option<Lane> {
        match name {
            "unmapped" => Some(Lane::Unmapped),
            "bare" => Some(Lane::Bare),
            _ => name.strip_prefix('p')?.parse().ok().map(Lane::Partition),
        }
    }

    /// For a reading of `sensor_id` that arrived in this lane: the partition
    /// it should have come through, when that differs from this lane (the
    /// server maps with another partition count than the group's).
    pub fn misrouted(self, sensor_id: &str, partitions: u16) -> Option<u16> {
        match self {
            Lane::Partition(p) => {
                let expected = partition_of(sensor_id, partitions);
                (expected != p).then_some(expected)
            }
            Lane::Unmapped | Lane::Bare => None,
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lane::Partition(p) => write!(f, "p{p}"),
            Lane::Unmapped => f.write_str("unmapped"),
            Lane::Bare => f.write_str("bare"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ARCHITECTURE.md lists these; nats-server 2.9.10 with the mapping
    /// of deploy/nats/partitions.conf put each reading in the same partition
    /// (checked against a live server by tests/api/partitions.rs).
    const VECTORS: [(&str, u32, u16); 6] = [
        ("temp-001", 831_376_141, 13),
        ("temp-002", 781_043_284, 4),
        ("hum-003", 234_831_269, 5),
        ("a", 3_826_002_220, 12),
        ("sensor-42", 3_381_015_536, 0),
        ("x", 4_245_442_695, 7),
    ];

    #[test]
    fn the_partition_hash_matches_its_test_vectors() {
        for (sensor_id, hash, partition) in VECTORS {
            assert_eq!(fnv1a32(sensor_id.as_bytes()), hash, "{sensor_id}");
            assert_eq!(partition_of(sensor_id, 16), partition, "{sensor_id}");
        }
        assert_eq!(fnv1a32(b""), 0x811c_9dc5, "the FNV offset basis");
    }

    #[test]
    fn lanes_name_their_filters_and_parse_back() {
        let lanes = Lane::all(4);
        assert_eq!(lanes.len(), 6);
        assert_eq!(lanes[2].filter("sensor.data"), "sensor.data.*.2");
        assert_eq!(Lane::Unmapped.filter("sensor.data"), "sensor.data.*");
        assert_eq!(Lane::Bare.filter("sensor.data"), "sensor.data");
        for lane in lanes {
            assert_eq!(Lane::parse(&lane.to_string()), Some(lane));
        }
        assert_eq!(Lane::parse("p"), None);
        assert_eq!(Lane::parse("q1"), None);
    }

    #[test]
    fn a_reading_in_the_wrong_partition_is_recognised() {
        assert_eq!(Lane::Partition(13).misrouted("temp-001", 16), None);
        assert_eq!(Lane::Partition(3).misrouted("temp-001", 16), Some(13));
        assert_eq!(Lane::Unmapped.misrouted("temp-001", 16), None);
    }
}
