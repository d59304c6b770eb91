//! `replica-applier` binary: the shared startup (`common::lifecycle::main`) around [`applier::run`], and the
//! one-shot `replica-applier verify` client of a running applier ([`applier::verify::oneshot`]).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("verify") {
        return applier::verify::oneshot::main(args.skip(1)).await;
    }
    common::lifecycle::main::<applier::config::Cli, _, _, _>("replica-applier", applier::run).await
}
