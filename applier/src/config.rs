//! The applier's command line and environment. One applier serves one secondary; the original service's
//! plural lists (`MARIA_SECONDARY_HOSTS`, ...) work with `--secondary NAME` picking an entry.

use std::time::Duration;

use clap::Parser;
use common::config::{parse_duration, parse_size, LogArgs, Secret};

/// Most parallel apply workers (at start, the apply loop's connection waits for each worker lock a killed
/// predecessor may still hold).
pub const MAX_WORKERS: usize = 32;

#[derive(Debug, Clone, Parser)]
#[command(name = "replica-applier", version, about = "Applies the reader's journal to one secondary, exactly once")]
pub struct Cli {
    /// The reader's gRPC address; several, comma-separated, for readers of one JetStream journal (the active one
    /// is used, a standby when no active one answers)
    #[arg(long, env = "REPLICA_READER_URL", default_value = "http://127.0.0.1:50051")]
    pub reader_url: String,
    /// Secondary host
    #[arg(long, env = "MARIA_SECONDARY_HOST")]
    pub secondary_host: Option<String>,
    /// Secondary port
    #[arg(long, env = "MARIA_SECONDARY_PORT")]
    pub secondary_port: Option<u16>,
    /// Secondary name: the consumer name at the reader and the checkpoint's key
    #[arg(long, env = "MARIA_SECONDARY_NAME")]
    pub secondary_name: Option<String>,
    /// Secondary user (falls back to MARIA_USER)
    #[arg(long, env = "MARIA_SECONDARY_USER")]
    pub secondary_user: Option<String>,
    /// Secondary password (falls back to MARIA_PASS)
    #[arg(long, env = "MARIA_SECONDARY_PASSWORD", hide_env_values = true)]
    pub secondary_password: Option<Secret>,
    /// Pick this secondary from the original service's comma-separated MARIA_SECONDARY_* lists
    #[arg(long)]
    pub secondary: Option<String>,
    /// Comma-separated hosts of the original service's .env
    #[arg(long, env = "MARIA_SECONDARY_HOSTS", default_value = "")]
    pub secondary_hosts: String,
    /// Comma-separated ports of the original service's .env
    #[arg(long, env = "MARIA_SECONDARY_PORTS", default_value = "")]
    pub secondary_ports: String,
    /// Comma-separated names of the original service's .env
    #[arg(long, env = "MARIA_SECONDARY_NAMES", default_value = "")]
    pub secondary_names: String,
    /// Comma-separated users of the original service's .env
    #[arg(long, env = "MARIA_SECONDARY_USERS", default_value = "")]
    pub secondary_users: String,
    /// Comma-separated passwords of the original service's .env
    #[arg(
        long,
        env = "MARIA_SECONDARY_PASSWORDS",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub secondary_passwords: Secret,
    /// Default user when no secondary user is given
    #[arg(long, env = "MARIA_USER", default_value = "replica")]
    pub user: String,
    /// Default password when no secondary password is given
    #[arg(long, env = "MARIA_PASS", default_value = "replica", hide_env_values = true, hide_default_value = true)]
    pub password: Secret,
    /// First journal offset to apply when the secondary has no checkpoint (otherwise an initial copy is needed)
    #[arg(long, env = "REPLICA_START_OFFSET")]
    pub start_offset: Option<u64>,
    /// Re-copy everything from the primary (through the reader), replacing the secondary's tables
    #[arg(long, env = "REPLICA_RESYNC", default_value_t = false, action = clap::ArgAction::Set)]
    pub resync: bool,
    /// Rows per chunk of the initial copy (the original service's TRANSFER_BATCH_SIZE)
    #[arg(long, env = "TRANSFER_BATCH_SIZE", default_value_t = 10_000)]
    pub copy_chunk_rows: u32,
    /// Tables copied at once
    #[arg(long, env = "REPLICA_COPY_WORKERS", default_value_t = 2)]
    pub copy_workers: usize,
    /// Most rows per second the copy reads from the primary (0: no limit)
    #[arg(long, env = "REPLICA_COPY_ROWS_PER_SECOND", default_value_t = 0)]
    pub copy_rows_per_second: u64,
    /// Most rows per second online verification compares (0: no limit)
    #[arg(long, env = "REPLICA_VERIFY_ROWS_PER_SECOND", default_value_t = 0)]
    pub verify_rows_per_second: u64,
    /// Rows per checksummed chunk of online verification
    #[arg(long, env = "REPLICA_VERIFY_CHUNK_ROWS", default_value_t = 1000)]
    pub verify_chunk_rows: u32,
    /// Tables online verification compares at once
    #[arg(long, env = "REPLICA_VERIFY_WORKERS", default_value_t = 2)]
    pub verify_workers: usize,
    /// Serve the admin gRPC service (replica.v1.Applier: status, pause/resume, resync, verify) at ADDR (off when empty)
    #[arg(long, env = "REPLICA_ADMIN_ADDR")]
    pub admin_addr: Option<std::net::SocketAddr>,
    /// Serve the same admin operations as HTTP JSON (GET /v1/status, POST /v1/copy/pause, ...) at ADDR (off when empty)
    #[arg(long, env = "REPLICA_HTTP_ADDR")]
    pub http_addr: Option<std::net::SocketAddr>,
    /// Quarantine a table after repeated permanent errors instead of stopping
    #[arg(long, env = "REPLICA_SKIP_FAILING_TABLES", default_value_t = false, action = clap::ArgAction::Set)]
    pub skip_failing_tables: bool,
    /// Permanent errors of one table before it is quarantined (with --skip-failing-tables)
    #[arg(long, env = "REPLICA_MAX_TABLE_FAILURES", default_value_t = 5)]
    pub max_table_failures: u32,
    /// What to do when the secondary's row is not what the primary changed (local writes on the secondary)
    #[arg(long, env = "REPLICA_CONFLICTS", value_enum, default_value = "stop")]
    pub conflicts: crate::conflict::ConflictMode,
    /// Secondary connections applying at once: transactions whose rows do not overlap are applied in parallel,
    /// in source order wherever they do (1: one connection, everything in source order; see REPLICA_COMMIT_ORDER)
    #[arg(long, env = "REPLICA_APPLY_WORKERS", default_value_t = 4)]
    pub apply_workers: usize,
    /// With several apply workers, commit in the primary's order (a reader of the secondary never sees a later
    /// transaction before an earlier one; commits wait for each other, so it is slower)
    #[arg(long, env = "REPLICA_COMMIT_ORDER", default_value_t = false, action = clap::ArgAction::Set)]
    pub commit_order: bool,
    /// Most row changes in one secondary transaction
    #[arg(long, env = "REPLICA_BATCH_ROWS", default_value_t = 5000)]
    pub batch_rows: usize,
    /// Most journal bytes in one secondary transaction
    #[arg(long, env = "REPLICA_BATCH_BYTES", default_value = "8MiB", value_parser = parse_size)]
    pub batch_bytes: u64,
    /// Memory for records received from the reader and not yet applied (their decoded size): more lets a
    /// catch-up go a little faster, less keeps the process smaller (8 MiB: about 5% slower than 16 MiB in the
    /// catch-up benchmark, peak RSS 53-58 instead of 69-72 MiB)
    #[arg(long, env = "REPLICA_RECEIVE_BUFFER", default_value = "8MiB", value_parser = parse_size)]
    pub receive_buffer: u64,
    /// Longest time one secondary transaction stays open collecting journal transactions
    #[arg(long, env = "REPLICA_BATCH_MS", default_value = "200ms", value_parser = parse_duration)]
    pub batch_time: Duration,
    /// Longest pause between retries and reconnections
    #[arg(long, env = "REPLICA_RETRY_MAX", default_value = "30s", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Interval of the secondary connection health check
    #[arg(long, env = "REPLICA_HEALTH_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Report NOT_SERVING (and log an error) when records wait but none was applied for this long
    #[arg(long, env = "REPLICA_STALL_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (off when empty)
    #[arg(long, env = "REPLICA_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Print the effective configuration as a TOML file --config accepts (secrets left out) and exit
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub maria_tls: common::config::MariaTlsArgs,
    #[command(flatten)]
    pub security: common::grpc_security::ServeSecurityArgs,
    #[command(flatten)]
    pub reader_tls: common::grpc_security::ReaderTlsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub reader_url: String,
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub password: Secret,
    pub start_offset: Option<u64>,
    pub resync: bool,
    pub copy_chunk_rows: u32,
    pub copy_workers: usize,
    pub copy_rows_per_second: u64,
    pub verify_rows_per_second: u64,
    pub verify_chunk_rows: u32,
    pub verify_workers: usize,
    pub admin_addr: Option<std::net::SocketAddr>,
    pub http_addr: Option<std::net::SocketAddr>,
    pub skip_failing_tables: bool,
    pub max_table_failures: u32,
    pub conflicts: crate::conflict::ConflictMode,
    pub apply_workers: usize,
    pub commit_order: bool,
    pub batch_rows: usize,
    pub batch_bytes: u64,
    pub receive_buffer: u64,
    pub batch_time: Duration,
    pub retry_max: Duration,
    pub health_interval: Duration,
    pub stall_timeout: Duration,
    pub maria_tls: common::config::MariaTlsArgs,
    pub security: common::grpc_security::ServeSecurityArgs,
    pub reader_tls: common::grpc_security::ReaderTlsArgs,
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn list(s: &str) -> Vec<String> {
    if s.trim().is_empty() {
        Vec::new()
    } else {
        s.split(',').map(|x| x.trim().to_owned()).collect()
    }
}

impl TryFrom<Cli> for Config {
    type Error = String;
    fn try_from(c: Cli) -> Result<Self, String> {
        c.security.validate()?;
        c.maria_tls.validate()?;
        c.reader_tls.validate(&c.reader_url)?;
        let (mut host, mut port, mut name, mut user, mut password) =
            (c.secondary_host, c.secondary_port, c.secondary_name, c.secondary_user, c.secondary_password);
        if let Some(wanted) = &c.secondary {
            let names = list(&c.secondary_names);
            let i = names.iter().position(|n| n == wanted).ok_or_else(|| {
                format!("--secondary {wanted:?} is not in MARIA_SECONDARY_NAMES ({})", names.join(", "))
            })?;
            let pick = |l: Vec<String>| l.get(i).cloned().filter(|v| !v.is_empty());
            host = host.or_else(|| pick(list(&c.secondary_hosts)));
            port = match (port, pick(list(&c.secondary_ports))) {
                (Some(p), _) => Some(p),
                (None, Some(p)) => {
                    Some(p.parse().map_err(|_| format!("MARIA_SECONDARY_PORTS entry {p:?} is not a port"))?)
                }
                (None, None) => None,
            };
            name = Some(wanted.clone());
            user = user.or_else(|| pick(list(&c.secondary_users)));
            password = password.or_else(|| pick(list(c.secondary_passwords.expose())).map(Secret::new));
        }
        let host =
            host.ok_or("no secondary host: set MARIA_SECONDARY_HOST or --secondary NAME with MARIA_SECONDARY_HOSTS")?;
        let name = name.ok_or("no secondary name: set MARIA_SECONDARY_NAME (it is also the consumer name)")?;
        if name.is_empty() || name.len() > 128 {
            return Err(format!("secondary name {name:?} must be 1 to 128 characters"));
        }
        if c.copy_chunk_rows == 0 || c.copy_workers == 0 || c.verify_chunk_rows == 0 || c.verify_workers == 0 {
            return Err(
                "TRANSFER_BATCH_SIZE, REPLICA_COPY_WORKERS, REPLICA_VERIFY_CHUNK_ROWS and REPLICA_VERIFY_WORKERS \
                        must be above 0"
                    .into(),
            );
        }
        if c.resync && c.start_offset.is_some() {
            return Err("--resync and --start-offset exclude each other: a re-copy starts where its snapshot is".into());
        }
        if c.apply_workers == 0 || c.apply_workers > MAX_WORKERS {
            return Err(format!("REPLICA_APPLY_WORKERS must be 1 to {} (it is {})", MAX_WORKERS, c.apply_workers));
        }
        if c.batch_rows == 0 || c.batch_bytes == 0 {
            return Err("REPLICA_BATCH_ROWS and REPLICA_BATCH_BYTES must be above 0".into());
        }
        Ok(Self {
            reader_url: c.reader_url,
            host,
            port: port.unwrap_or(3306),
            name,
            user: user.unwrap_or(c.user),
            password: password.unwrap_or(c.password),
            start_offset: c.start_offset,
            resync: c.resync,
            copy_chunk_rows: c.copy_chunk_rows,
            copy_workers: c.copy_workers,
            copy_rows_per_second: c.copy_rows_per_second,
            verify_rows_per_second: c.verify_rows_per_second,
            verify_chunk_rows: c.verify_chunk_rows,
            verify_workers: c.verify_workers,
            admin_addr: c.admin_addr,
            http_addr: c.http_addr,
            skip_failing_tables: c.skip_failing_tables,
            max_table_failures: c.max_table_failures.max(1),
            conflicts: c.conflicts,
            apply_workers: c.apply_workers,
            commit_order: c.commit_order,
            batch_rows: c.batch_rows,
            batch_bytes: c.batch_bytes,
            receive_buffer: c.receive_buffer,
            batch_time: c.batch_time,
            retry_max: c.retry_max,
            health_interval: c.health_interval,
            stall_timeout: c.stall_timeout,
            metrics_addr: c.metrics_addr,
            security: c.security,
            maria_tls: c.maria_tls,
            reader_tls: c.reader_tls,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::try_from(
            Cli::try_parse_from(std::iter::once("replica-applier").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?,
        )
    }

    #[test]
    fn the_original_services_lists_pick_one_secondary() {
        let c = parse(&[
            "--secondary",
            "west",
            "--secondary-hosts",
            "h1,h2",
            "--secondary-ports",
            "3307,3308",
            "--secondary-names",
            "east,west",
            "--secondary-users",
            "u1,u2",
            "--secondary-passwords",
            "p1,p2",
        ])
        .expect("valid");
        assert_eq!((c.host.as_str(), c.port, c.name.as_str(), c.user.as_str()), ("h2", 3308, "west", "u2"));
        assert_eq!(c.password.expose(), "p2");
    }

    #[test]
    fn users_and_passwords_fall_back_to_the_shared_ones() {
        let c = parse(&["--secondary-host", "h", "--secondary-name", "a", "--user", "u", "--password", "p"])
            .expect("valid");
        assert_eq!((c.user.as_str(), c.password.expose(), c.port), ("u", "p", 3306));
        assert!(parse(&["--secondary", "nope", "--secondary-names", "a,b"])
            .expect_err("rejected")
            .contains("not in MARIA_SECONDARY_NAMES"));
        assert!(parse(&["--secondary-name", "a"]).expect_err("rejected").contains("no secondary host"));
    }
}
