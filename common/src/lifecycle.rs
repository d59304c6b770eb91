//! Process lifecycle shared by both binaries: startup, the signals that ask for a graceful stop, error reports.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` at the first SIGTERM or SIGINT.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown requested: draining");
    shutdown.cancel();
}

/// An error with every `source` after it, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What a binary's command line gives the shared startup in [`main`].
pub trait Command: clap::Parser {
    /// The validated configuration (its `Debug` must redact secrets: it is what `--print-config` shows).
    type Config: std::fmt::Debug + TryFrom<Self, Error = String>;
    fn log(&self) -> &crate::config::LogArgs;
    fn print_config(&self) -> bool;
}

/// The whole life of a binary: `.env`, the TOML file, command line, logging, validation, `--print-config`, then `run` until
/// SIGTERM/SIGINT. Exit codes: 0 after a clean stop, 1 when `run` fails, 2 for bad configuration.
pub async fn main<C, F, Fut, E>(name: &'static str, run: F) -> std::process::ExitCode
where
    C: Command,
    F: FnOnce(C::Config, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error,
{
    use std::process::ExitCode;
    if let Err(e) = crate::config::load_dotenv() {
        eprintln!("{name}: {e}");
        return ExitCode::from(2);
    }
    if let Some(path) = crate::config_file::path_from_args() {
        if let Err(e) = crate::config_file::apply(&path, &C::command()) {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    }
    let cli = C::parse();
    let print_config = cli.print_config();
    if let Err(e) = crate::logging::init(cli.log(), name) {
        eprintln!("{name}: {e}");
        return ExitCode::from(2);
    }
    let config = match C::Config::try_from(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("{name}: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if print_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let report = error_chain(&e);
            tracing::error!(error = %report, "stopped");
            eprintln!("{name}: {report}");
            ExitCode::FAILURE
        }
    }
}
