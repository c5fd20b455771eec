//! Types generated from `proto/` by the build script (prost + tonic).
//!
//! The same structs serve both codecs: the build script derives serde on the
//! pub-sub messages so their JSON uses the Protobuf field names.
#![allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]

/// `sensor.v1`: readings and alerts of the publish-subscribe pattern.
pub mod sensor {
    pub mod v1 {
        tonic::include_proto!("sensor.v1");
    }
}

/// `user.v1`: the user directory of the request-reply pattern.
pub mod user {
    pub mod v1 {
        tonic::include_proto!("user.v1");
    }
}

/// `task.v1`: tasks of the work-queue pattern.
pub mod task {
    pub mod v1 {
        tonic::include_proto!("task.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));
