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
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(|| BarsAwareStderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(|| BarsAwareStderr).boxed(),
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

/// The progress bars shown on stderr (drawn only when stderr is a terminal). Log lines are written through
/// [`MultiProgress::suspend`](indicatif::MultiProgress::suspend), so they scroll above the bars instead of
/// breaking them.
pub fn progress_bars() -> indicatif::MultiProgress {
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(indicatif::MultiProgress::new).clone()
}

/// stderr for log lines: each formatted line (one `write` call from tracing-subscriber) is written with the
/// progress bars lifted out of the way.
struct BarsAwareStderr;

impl std::io::Write for BarsAwareStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        progress_bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
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
