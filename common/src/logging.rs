//! Logging setup for both binaries: text or JSON on stderr, optionally GELF to Graylog.
//!
//! Field vocabulary: `offset`, `consumer`, `schema`, `table`, `gtid`, `error`. GELF delivery runs in its own
//! task behind a bounded buffer, so a Graylog outage drops log lines rather than slowing replication.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogArgs, LogFormat};
use crate::gelf::{GelfLayer, GelfTarget};

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log filter {filter:?}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// Changes the log filter of the running process (SIGHUP).
#[derive(Clone)]
pub struct LogReload(
    tracing_subscriber::reload::Handle<
        EnvFilter,
        tracing_subscriber::layer::Layered<Vec<BoxedLayer>, tracing_subscriber::Registry>,
    >,
);

impl LogReload {
    pub fn set(&self, level: &str) -> Result<(), LoggingError> {
        let filter = EnvFilter::try_new(quiet_dependencies(level))
            .map_err(|source| LoggingError::Filter { filter: level.to_owned(), source })?;
        self.0.reload(filter).map_err(|_| LoggingError::AlreadyInitialised)
    }
}

/// Libraries whose debug output drowns ours (`RUST_LOG=debug` would show little else).
const NOISY: [&str; 8] = ["sled", "h2", "hyper", "hyper_util", "tower", "tonic", "rustls", "mysql_async"];

/// The filter with the noisy libraries held at `info` unless the filter names them itself: `RUST_LOG=debug`
/// shows the reader's and the applier's own debug lines; `RUST_LOG=debug,h2=trace` still reaches h2.
pub fn quiet_dependencies(filter: &str) -> String {
    let mut out = filter.to_owned();
    for name in NOISY {
        let named = filter.split(',').any(|d| {
            d.split('=').next().is_some_and(|t| t.trim() == name || t.trim().starts_with(&format!("{name}::")))
        });
        if !named {
            out.push_str(&format!(",{name}=info"));
        }
    }
    out
}

/// Installs the global subscriber. Must run inside a tokio runtime when Graylog is enabled.
pub fn init(args: &LogArgs, service: &'static str) -> Result<LogReload, LoggingError> {
    let filter = EnvFilter::try_new(quiet_dependencies(&args.log_level))
        .map_err(|source| LoggingError::Filter { filter: args.log_level.clone(), source })?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colours only for a person at a terminal: log files and collectors get plain text (NO_COLOR also turns them off).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let mut layers: Vec<BoxedLayer> = vec![match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    }];
    if args.graylog_enabled {
        layers.push(gelf_layer(args, service));
    }
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init()
        .map_err(|_| LoggingError::AlreadyInitialised)?;
    Ok(LogReload(handle))
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

fn gelf_layer(args: &LogArgs, service: &'static str) -> BoxedLayer {
    let target = GelfTarget {
        endpoint: args.graylog_endpoint.clone(),
        protocol: args.graylog_protocol,
        pause: args.graylog_timeout,
    };
    let fields = [("service", service), ("project", args.project_name.as_str())];
    GelfLayer::spawn(&args.graylog_source, &fields, target).boxed()
}
