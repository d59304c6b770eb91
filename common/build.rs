//! Compiles `proto/replica/v1/*.proto` with a vendored protoc, so a fresh checkout builds with cargo alone.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("replica_descriptor.bin"))
        .compile_protos(&["../proto/replica/v1/journal.proto", "../proto/replica/v1/applier.proto"], &["../proto"])?;
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
