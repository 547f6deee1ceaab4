//! Compiles the test protos with protox (pure Rust: no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/hop.proto");
    println!("cargo:rerun-if-changed=proto/ticker.proto");
    let fds = protox::compile(["proto/hop.proto", "proto/ticker.proto"], ["proto"])?;
    // No `connect` helper: the lib builds without tonic's transport feature (tests bring it).
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
