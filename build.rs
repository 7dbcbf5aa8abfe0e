//! Generates the ONNX protobuf types (feature `onnx`) from src/export/onnx.proto into OUT_DIR/onnx.rs.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "onnx")]
    onnx_types();
}

#[cfg(feature = "onnx")]
fn onnx_types() {
    const PROTO: &str = "src/export/onnx.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["src/export"]).unwrap_or_else(|e| panic!("{PROTO}: {e}"));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating the ONNX types from {PROTO}: {e}"));
}
