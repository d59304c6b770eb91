//! Process lifecycle shared by both binaries: startup, the signals that ask for a graceful stop, error reports.

use tokio_util::sync::CancellationToken;

/// Starts the process again with `MALLOC_ARENA_MAX=2` and `MYSQL_ASYNC_BUFFER_SIZE_CAP=65536` where either is
/// unset (glibc reads the first before `main`; mysql_async the second when it first needs a buffer, and setting
/// a variable in a running process needs `unsafe`, which the workspace forbids).
/// - glibc's malloc keeps up to eight arenas per core, each holding on to memory its threads freed; two are
///   enough here: in the catch-up benchmark the reader's peak RSS fell from 71-80 to 57-65 MiB.
/// - mysql_async pools up to 128 packet buffers and keeps each at up to 4 MiB by default; the pool hands them
///   out in turn, so after many large statements (the pieces of a long value) every pooled buffer has grown:
///   the applier held 62 MB of them after one 64 MiB row. Buffers past 64 KiB are shrunk when returned.
///
/// The process keeps its PID, arguments and environment; if the new start fails it goes on as it is.
pub fn limit_retained_memory() {
    const SETTINGS: [(&str, &str); 2] = [("MALLOC_ARENA_MAX", "2"), ("MYSQL_ASYNC_BUFFER_SIZE_CAP", "65536")];
    let unset: Vec<(&str, &str)> = SETTINGS.into_iter().filter(|(name, _)| std::env::var_os(name).is_none()).collect();
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || unset.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(exe).args(std::env::args_os().skip(1)).envs(unset).exec();
    eprintln!("could not start again with {SETTINGS:?} ({error}); going on with the defaults");
}

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

/// At each SIGHUP, reads the log level again: the `log_level` key of the config file if it has one, else
/// `RUST_LOG` in `.env`; the running process switches to it without a restart.
pub async fn reload_on_sighup(reload: crate::logging::LogReload, config_file: Option<std::path::PathBuf>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        match reloaded_setting(config_file.as_deref(), "log_level", "RUST_LOG") {
            Ok(Some(level)) => match reload.set(&level) {
                Ok(()) => tracing::info!(level = %level, "SIGHUP: log level reloaded"),
                Err(e) => tracing::error!(error = %error_chain(&e), "SIGHUP: log level not changed"),
            },
            Ok(None) => tracing::info!("SIGHUP: no log level in the config file or .env; unchanged"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: log level not changed"),
        }
    }
}

/// A setting as a reload (SIGHUP) finds it: `key` in the config file if it has it, else `env` in `.env`.
pub fn reloaded_setting(config_file: Option<&std::path::Path>, key: &str, env: &str) -> Result<Option<String>, String> {
    if let Some(path) = config_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let table: toml::Table = text.parse().map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
        if let Some(v) = table.get(key).or_else(|| table.get(&key.replace('_', "-"))) {
            return v.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| format!("{key} must be a string"));
        }
    }
    match dotenvy::from_filename_iter(".env") {
        Ok(items) => {
            for item in items {
                let (k, v) = item.map_err(|e| format!(".env: {e}"))?;
                if k == env {
                    return Ok(Some(v));
                }
            }
            Ok(None)
        }
        Err(_) => Ok(None),
    }
}

/// An error with every `source` after it, `: `-separated, and a plain hint when TLS to the reader (or MariaDB)
/// failed.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error_chain_plain(e);
    if let Some(hint) = crate::grpc_security::tls_hint(e) {
        out.push_str(" — ");
        out.push_str(&hint);
    }
    out
}

/// An error with every `source` after it, `: `-separated.
pub fn error_chain_plain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Some errors repeat their source in their own message (mysql_async's server errors do).
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
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

/// The whole life of a binary: command line over environment, `.env` and the TOML file, logging, validation, `--print-config`, then `run` until
/// SIGTERM/SIGINT. Exit codes: 0 after a clean stop, 1 when `run` fails, 2 for bad configuration.
pub async fn main<C, F, Fut, E>(name: &'static str, run: F) -> std::process::ExitCode
where
    C: Command,
    F: FnOnce(C::Config, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + 'static,
{
    use std::process::ExitCode;
    limit_retained_memory();
    let argv = match crate::config_file::layered_args(&C::command()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let matches = match C::command().args_override_self(true).try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let cli = match C::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let print_config = cli.print_config();
    let reload = match crate::logging::init(cli.log(), name) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match C::Config::try_from(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("{name}: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if print_config {
        // Validated first: a configuration that would not start is refused, not printed.
        drop(config);
        print!("{}", crate::config_file::effective_toml(&C::command(), &matches));
        return ExitCode::SUCCESS;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    tokio::spawn(reload_on_sighup(reload, crate::config_file::path_from_args()));
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
