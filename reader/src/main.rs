//! `replica-reader` binary: the shared startup (`common::lifecycle::main`) around [`reader::run`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::lifecycle::main::<reader::config::Cli, _, _, _>("replica-reader", reader::run).await
}
