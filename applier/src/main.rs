//! `replica-applier` binary: the shared startup (`common::lifecycle::main`) around [`applier::run`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::lifecycle::main::<applier::config::Cli, _, _, _>("replica-applier", applier::run).await
}
