//! Compiles `proto/*.proto` with protox (pure Rust: no system `protoc`) and
//! writes the encoded descriptor set that gRPC server reflection serves.

use std::{env, fs, io, path::PathBuf};

use prost::Message;

const PROTOS: [&str; 3] = ["sensor.proto", "user.proto", "task.proto"];

fn main() -> io::Result<()> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", proto_dir.join(proto).display());
    }

    let fds = protox::compile(PROTOS, [&proto_dir]).map_err(io::Error::other)?;

    // `file_descriptor_set_path` is ignored on the `compile_fds` path, so the
    // descriptor set for reflection is written here by hand.
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(io::Error::other)?);
    fs::write(
        out_dir.join("switchyard_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        // JSON shares the Protobuf field names (snake_case, as docs/ARCHITECTURE.md says).
        .type_attribute(
            "sensor.v1.SensorReading",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(deny_unknown_fields)]",
        )
        .type_attribute(
            "sensor.v1.Alert",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(deny_unknown_fields)]",
        )
        .type_attribute(
            "user.v1.User",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(deny_unknown_fields)]",
        )
        .field_attribute(
            "sensor.v1.SensorReading.site",
            "#[serde(default, skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute(
            "sensor.v1.SensorReading.owner_id",
            "#[serde(default, skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute("sensor.v1.SensorReading.unit", "#[serde(default)]")
        .field_attribute("sensor.v1.SensorReading.seq", "#[serde(default)]")
        .field_attribute(
            "sensor.v1.Alert.owner_id",
            "#[serde(default, skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute(
            "sensor.v1.Alert.severity",
            "#[serde(with = \"crate::codec::severity_name\")]",
        )
        .compile_fds(fds)
}
