//! Generates the `palisade.v1` code with a vendored `protoc`, so a fresh machine needs nothing
//! installed. Two passes: the API as-is (messages, clients, servers, and the descriptor set for
//! server reflection), then the Sync server once more with `ControllerMessage` mapped to a
//! pre-encoded message, so the controller encodes each update once and shares the bytes.

use std::path::PathBuf;

const PROTOS: [&str; 4] = [
    "palisade/v1/types.proto",
    "palisade/v1/sync.proto",
    "palisade/v1/introspection.proto",
    "palisade/v1/replication.proto",
];

fn config() -> prost_build::Config {
    let mut c = prost_build::Config::new();
    c.protoc_executable(
        protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform"),
    );
    c
}

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("palisade_v1_descriptor.bin"))
        .compile_with_config(config(), &PROTOS, &["."])?;

    let pre_encoded = out.join("pre_encoded");
    std::fs::create_dir_all(&pre_encoded)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&pre_encoded)
        .extern_path(".palisade.v1", "crate::v1")
        .extern_path(".palisade.v1.ControllerMessage", "crate::Encoded")
        .compile_with_config(config(), &["palisade/v1/sync.proto"], &["."])?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
