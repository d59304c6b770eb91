//! Configuration pieces shared by both binaries: secrets that never print, and logging options.

use std::fmt;
use std::time::Duration;

/// A password or token: kept out of `Debug`, `Display`, logs and `--help` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for handing to a driver. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"<redacted>\"" })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Parses durations such as `500ms`, `5s`, `10m`, `24h`, `7d` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 10m, 24h or 7d"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        other => return Err(format!("unknown duration unit {other:?} in {s:?}: use ms, s, m, h or d")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses sizes such as `512MiB`, `10GiB`, `1G`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 512MiB or 10GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}: use KiB, MiB, GiB or TiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GelfProtocol {
    Udp,
    Tcp,
}

/// Options shared by both binaries: the TOML config file and logging (the original service's `GRAYLOG_*` names).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// TOML configuration file (keys are option names; flags and environment variables take precedence)
    #[arg(long, env = "REPLICA_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Log filter, e.g. `info` or `reader=debug,info`
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
    /// Log output format on stderr
    #[arg(long, env = "REPLICA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Also send logs to Graylog as GELF
    #[arg(long, env = "GRAYLOG_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub graylog_enabled: bool,
    /// Graylog GELF input, host:port
    #[arg(long, env = "GRAYLOG_ENDPOINT", default_value = "localhost:12201")]
    pub graylog_endpoint: String,
    /// GELF transport
    #[arg(long, env = "GRAYLOG_PROTOCOL", value_enum, default_value = "udp")]
    pub graylog_protocol: GelfProtocol,
    /// How long to wait before reconnecting to Graylog after a failure
    #[arg(long, env = "GRAYLOG_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub graylog_timeout: Duration,
    /// GELF `host` field
    #[arg(long, env = "GRAYLOG_SOURCE", default_value = "binlog-replica")]
    pub graylog_source: String,
    /// Project name added to every GELF message
    #[arg(long, env = "LOCAL_PROJECT_NAME", default_value = "binlog-replica")]
    pub project_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s: Secret = "hunter2".parse().expect("infallible");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 weeks").is_err());
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }
}

/// TLS to MariaDB (the primary for the reader, the secondary for the applier).
#[derive(Debug, Clone, clap::Args)]
pub struct MariaTlsArgs {
    /// Connect to MariaDB over TLS
    #[arg(long, env = "MARIA_TLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub maria_tls: bool,
    /// PEM CA to verify MariaDB's certificate with (default: the webpki roots)
    #[arg(long, env = "MARIA_TLS_CA")]
    pub maria_tls_ca: Option<std::path::PathBuf>,
    /// Accept any MariaDB certificate (encrypts, but no longer proves the server's identity)
    #[arg(long, env = "MARIA_TLS_SKIP_VERIFY", default_value_t = false, action = clap::ArgAction::Set)]
    pub maria_tls_skip_verify: bool,
}

impl MariaTlsArgs {
    pub fn validate(&self) -> Result<(), String> {
        if !self.maria_tls && (self.maria_tls_ca.is_some() || self.maria_tls_skip_verify) {
            return Err("MARIA_TLS_CA and MARIA_TLS_SKIP_VERIFY need MARIA_TLS=true".into());
        }
        if let Some(ca) = &self.maria_tls_ca {
            std::fs::metadata(ca).map_err(|e| format!("MARIA_TLS_CA {}: {e}", ca.display()))?;
        }
        Ok(())
    }

    /// The driver's TLS settings, if TLS is on.
    pub fn ssl_opts(&self) -> Option<mysql_async::SslOpts> {
        if !self.maria_tls {
            return None;
        }
        let mut opts = mysql_async::SslOpts::default().with_danger_accept_invalid_certs(self.maria_tls_skip_verify);
        if let Some(ca) = &self.maria_tls_ca {
            opts = opts.with_root_certs(vec![ca.clone().into()]);
        }
        Some(opts)
    }
}
