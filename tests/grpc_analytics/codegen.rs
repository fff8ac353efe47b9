//! The checked-in generated code is what the `.proto` gives: regenerated here with protox (a
//! pure-Rust protobuf compiler) and tonic-prost-build, and compared byte for byte. Users building
//! the example need neither `protoc` nor a build script.
//!
//! After changing `analytics.proto`, regenerate with
//! `RAMPART_BLESS=1 cargo test --all-features --test grpc_analytics codegen`.

use std::path::{Path, PathBuf};

use prost::Message;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grpc_analytics")
}

#[test]
fn checked_in_code_matches_the_proto() {
    let dir = example_dir();
    let fds = protox::compile([dir.join("proto/analytics.proto")], [dir.join("proto")])
        .unwrap_or_else(|e| panic!("analytics.proto does not compile: {e}"));
    let out = std::env::temp_dir().join(format!("rampart-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out)
        .compile_fds(fds.clone())
        .expect("code generation");
    let generated = [
        (
            "rampart.analytics.v1.rs",
            std::fs::read(out.join("rampart.analytics.v1.rs")).unwrap(),
        ),
        ("analytics_descriptor.bin", fds.encode_to_vec()),
    ];
    let _ = std::fs::remove_dir_all(&out);
    let bless = std::env::var_os("RAMPART_BLESS").is_some_and(|v| v != "0");
    for (name, bytes) in generated {
        let path = dir.join("generated").join(name);
        if bless {
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let checked_in = std::fs::read(&path).unwrap_or_default();
        assert!(
            checked_in == bytes,
            "examples/grpc_analytics/generated/{name} is out of date with analytics.proto; \
             regenerate with RAMPART_BLESS=1 cargo test --all-features --test grpc_analytics codegen"
        );
    }
}
