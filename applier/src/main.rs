//! `replica-applier` binary: parse configuration, start logging, run until SIGTERM/SIGINT, map errors to exit codes.

use applier::config::{Cli, Config};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = common::logging::init(&cli.log, "replica-applier") {
        eprintln!("replica-applier: {e}");
        return std::process::ExitCode::from(2);
    }
    let config = match Config::try_from(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("replica-applier: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    match applier::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut chain = String::new();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                chain.push_str(&format!(": {s}"));
                source = s.source();
            }
            tracing::error!(error = %format!("{e}{chain}"), "applier stopped");
            eprintln!("replica-applier: {e}{chain}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown requested: finishing the open transaction");
    shutdown.cancel();
}
