//! `replica-reader` binary: parse configuration, start logging, run until SIGTERM/SIGINT, map errors to exit codes.

use clap::Parser;
use reader::config::{Cli, Config};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if let Err(e) = common::config::load_dotenv() {
        eprintln!("replica-reader: {e}");
        return std::process::ExitCode::from(2);
    }
    let cli = Cli::parse();
    let print_config = cli.print_config;
    if let Err(e) = common::logging::init(&cli.log, "replica-reader") {
        eprintln!("replica-reader: {e}");
        return std::process::ExitCode::from(2);
    }
    let config = match Config::try_from(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return std::process::ExitCode::from(2);
        }
    };
    if print_config {
        // Secrets print as "<redacted>".
        println!("{config:#?}");
        return std::process::ExitCode::SUCCESS;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(common::lifecycle::cancel_on_signal(shutdown.clone()));
    match reader::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let report = common::lifecycle::error_chain(&e);
            tracing::error!(error = %report, "stopped");
            eprintln!("replica-reader: {report}");
            std::process::ExitCode::FAILURE
        }
    }
}
