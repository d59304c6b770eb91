//! Compiles `proto/replica/v1/*.proto` with a vendored protoc, so a fresh checkout builds with cargo alone.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut prost = tonic_prost_build::Config::new();
    prost.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("replica_descriptor.bin")).compile_with_config(
        prost,
        &["../proto/replica/v1/journal.proto", "../proto/replica/v1/applier.proto"],
        &["../proto"],
    )?;
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
