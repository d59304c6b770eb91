//! The reader's command line and environment (the original service's `MARIA_*` names work unchanged).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use common::config::{parse_duration, parse_size, LogArgs, Secret};
use common::position::StartPosition;

use crate::filter::{Filter, LiveFilter};
use crate::journal::jetstream_store::JetStreamConfig;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "replica-reader",
    version,
    about = "Reads a MariaDB primary's binlog into a durable journal and serves it over gRPC"
)]
pub struct Cli {
    /// Primary host, or candidate primaries as a comma-separated list of `host` or `host:port`: the first is
    /// followed first, the others are tried when it is lost (see --failover-after)
    #[arg(long, env = "MARIA_PRIMARY_HOST", default_value = "127.0.0.1")]
    pub primary_host: String,
    /// Primary port (and the port of candidates listed without one)
    #[arg(long, env = "MARIA_PRIMARY_PORT", default_value_t = 3306)]
    pub primary_port: u16,
    /// Replication user (needs REPLICATION SLAVE, BINLOG MONITOR and SELECT)
    #[arg(long, env = "MARIA_USER", default_value = "replica")]
    pub user: String,
    /// Replication user's password
    #[arg(long, env = "MARIA_PASS", default_value = "replica", hide_env_values = true, hide_default_value = true)]
    pub password: Secret,
    /// Server id this reader uses as a replication client; unique among the primary's replicas
    #[arg(long, env = "MARIA_SERVER_ID", default_value_t = 100)]
    pub server_id: u32,
    /// Name of the primary in logs and status
    #[arg(long, env = "MARIA_PRIMARY_NAME", default_value = "mariadb-primary")]
    pub primary_name: String,
    /// Directory of the sled journal
    #[arg(long, env = "REPLICA_JOURNAL_DIR", default_value = "./journal")]
    pub journal_dir: PathBuf,
    /// Keep the journal in a NATS JetStream stream (replicated) instead of --journal-dir: the NATS servers as
    /// `nats://host:port`, comma-separated (empty: the local journal in --journal-dir)
    #[arg(long, env = "REPLICA_JOURNAL_URL", default_value = "")]
    pub journal_url: String,
    /// Copies JetStream keeps of the journal (1, 3 or 5; the cluster needs at least as many servers)
    #[arg(long, env = "REPLICA_JOURNAL_REPLICAS", default_value_t = 3)]
    pub journal_replicas: usize,
    /// Name of the journal's JetStream stream, REPLICA_<name> (default: MARIA_PRIMARY_NAME)
    #[arg(long, env = "REPLICA_JOURNAL_STREAM", default_value = "")]
    pub journal_stream: String,
    /// With a JetStream journal: how long the reader reading the binlog holds its lease without renewing it; a
    /// standby takes over within about this long after the active reader dies
    #[arg(long, env = "REPLICA_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// gRPC listen address
    #[arg(long, env = "REPLICA_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Schemas or tables to journal, comma-separated `schema` or `schema.table` with `*` wildcards (empty: all user schemas)
    #[arg(long, env = "REPLICA_INCLUDE", default_value = "")]
    pub include: String,
    /// Schemas or tables never to journal, same syntax as --include
    #[arg(long, env = "REPLICA_EXCLUDE", default_value = "")]
    pub exclude: String,
    /// Where an empty journal starts: `current` (end of the binlog), `earliest`, FILE:POS, or a GTID list such as 0-1-42
    #[arg(long, env = "REPLICA_START_POSITION", default_value = "current")]
    pub start_position: String,
    /// Keep acked records at least this long
    #[arg(long, env = "REPLICA_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub retention: Duration,
    /// Stop reading the primary while the journal holds more than this (nothing is dropped)
    #[arg(long, env = "REPLICA_JOURNAL_MAX_BYTES", default_value = "10GiB", value_parser = parse_size)]
    pub journal_max_bytes: u64,
    /// Heartbeat period asked of the primary; no event for three periods means the connection is dead
    #[arg(long, env = "REPLICA_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Longest pause between reconnection attempts to the primary
    #[arg(long, env = "REPLICA_RECONNECT_MAX", default_value = "30s", value_parser = parse_duration)]
    pub reconnect_max: Duration,
    /// How long the followed primary must be unreachable before the other candidate primaries are tried
    #[arg(long, env = "REPLICA_FAILOVER_AFTER", default_value = "10s", value_parser = parse_duration)]
    pub failover_after: Duration,
    /// Follow a candidate primary even when it has transactions no followed primary ever had (errant GTIDs)
    #[arg(long, env = "REPLICA_ALLOW_ERRANT_GTIDS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_errant_gtids: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (off when empty)
    #[arg(long, env = "REPLICA_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Print the effective configuration as a TOML file --config accepts (secrets left out) and exit
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub maria_tls: common::config::MariaTlsArgs,
    #[command(flatten)]
    pub security: common::grpc_security::ServeSecurityArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub primary_host: String,
    pub primary_port: u16,
    /// The candidate primaries from `primary_host`, in order.
    pub primaries: Vec<Endpoint>,
    pub failover_after: Duration,
    pub allow_errant_gtids: bool,
    pub user: String,
    pub password: Secret,
    pub server_id: u32,
    pub primary_name: String,
    pub journal_dir: PathBuf,
    /// The JetStream journal, when the journal is not the local one.
    pub jetstream: Option<JetStreamConfig>,
    pub lease_ttl: Duration,
    pub grpc_addr: SocketAddr,
    pub filter: LiveFilter,
    pub start_position: StartPosition,
    pub retention: Duration,
    pub journal_max_bytes: u64,
    pub heartbeat: Duration,
    pub reconnect_max: Duration,
    pub maria_tls: common::config::MariaTlsArgs,
    pub security: common::grpc_security::ServeSecurityArgs,
    pub metrics_addr: Option<SocketAddr>,
}

impl TryFrom<Cli> for Config {
    type Error = String;
    fn try_from(c: Cli) -> Result<Self, String> {
        c.security.validate()?;
        c.maria_tls.validate()?;
        let filter = Filter::new(&c.include, &c.exclude).map_err(|e| format!("invalid filter: {e}"))?;
        let start_position = c.start_position.parse().map_err(|e| format!("--start-position: {e}"))?;
        if c.server_id == 0 {
            return Err("MARIA_SERVER_ID must not be 0: replication clients need a non-zero id".into());
        }
        if c.heartbeat < Duration::from_millis(100) {
            return Err("REPLICA_HEARTBEAT must be at least 100ms".into());
        }
        let primaries = Endpoint::parse_list(&c.primary_host, c.primary_port)?;
        let jetstream = jetstream_config(&c)?;
        if c.lease_ttl < Duration::from_secs(1) {
            return Err("REPLICA_LEASE_TTL must be at least 1s".into());
        }
        Ok(Self {
            jetstream,
            lease_ttl: c.lease_ttl,
            primaries,
            failover_after: c.failover_after,
            allow_errant_gtids: c.allow_errant_gtids,
            primary_host: c.primary_host,
            primary_port: c.primary_port,
            user: c.user,
            password: c.password,
            server_id: c.server_id,
            primary_name: c.primary_name,
            journal_dir: c.journal_dir,
            grpc_addr: c.grpc_addr,
            filter: LiveFilter::new(filter),
            start_position,
            retention: c.retention,
            journal_max_bytes: c.journal_max_bytes,
            heartbeat: c.heartbeat,
            reconnect_max: c.reconnect_max,
            metrics_addr: c.metrics_addr,
            security: c.security,
            maria_tls: c.maria_tls,
        })
    }
}

/// The JetStream journal's settings, if REPLICA_JOURNAL_URL names one.
fn jetstream_config(c: &Cli) -> Result<Option<JetStreamConfig>, String> {
    let urls: Vec<String> =
        c.journal_url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
    if urls.is_empty() {
        return Ok(None);
    }
    if let Some(bad) = urls.iter().find(|u| !(u.starts_with("nats://") || u.starts_with("tls://"))) {
        return Err(format!(
            "REPLICA_JOURNAL_URL entry {bad:?} is not a NATS server: write nats://host:port (or tls://host:port), \
             comma-separated for a cluster"
        ));
    }
    if !matches!(c.journal_replicas, 1 | 3 | 5) {
        return Err(format!(
            "REPLICA_JOURNAL_REPLICAS is {}: JetStream keeps 1, 3 or 5 copies (3 survives the loss of one server)",
            c.journal_replicas
        ));
    }
    let name = if c.journal_stream.is_empty() { c.primary_name.clone() } else { c.journal_stream.clone() };
    Ok(Some(JetStreamConfig { urls, name, replicas: c.journal_replicas }))
}

impl common::lifecycle::Command for Cli {
    type Config = Config;
    fn log(&self) -> &LogArgs {
        &self.log
    }
    fn print_config(&self) -> bool {
        self.print_config
    }
}

/// A MariaDB server's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `host`, `host:port` or `[v6]:port` entries separated by commas; `port` for entries without one.
    pub fn parse_list(list: &str, port: u16) -> Result<Vec<Self>, String> {
        let all: Vec<Self> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| Self::parse(e, port))
            .collect::<Result<_, _>>()?;
        if all.is_empty() {
            return Err("MARIA_PRIMARY_HOST is empty: give the primary's host (or a comma-separated list)".into());
        }
        Ok(all)
    }

    pub fn parse(entry: &str, default_port: u16) -> Result<Self, String> {
        let bad = |why: &str| format!("primary address {entry:?}: {why}; expected host, host:port or [v6]:port");
        let (host, port) = match entry.strip_prefix('[') {
            Some(rest) => {
                let (host, after) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
                match after.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None if after.is_empty() => (host, None),
                    None => return Err(bad("text after ]")),
                }
            }
            None => match entry.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h, Some(p)),
                // A bare IPv6 address.
                Some(_) => (entry, None),
                None => (entry, None),
            },
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
            None => default_port,
        };
        Ok(Self { host: host.to_owned(), port })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn candidate_primaries_parse_with_and_without_ports() {
        let all = Endpoint::parse_list("db1, db2:3307,[::1]:3308,10.0.0.5", 3306).expect("list");
        let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["db1:3306", "db2:3307", "[::1]:3308", "10.0.0.5:3306"]);
        assert!(Endpoint::parse_list(" , ", 3306).is_err());
        assert!(Endpoint::parse("db1:port", 3306).expect_err("bad port").contains("not a number"));
    }
}
