//! `replica-applier verify`: starts a verification on a running applier (through its admin service), waits for
//! it, prints a report, and exits 0 when every table is equal, 1 when anything differed (repaired or not), 2
//! when the verification could not be done — for cron jobs and CI pipelines.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use common::config::{parse_duration, Secret};
use common::proto::applier_client::ApplierClient;
use common::proto::{self, GetVerifyRequest, StartVerifyRequest};

#[derive(Debug, Parser)]
#[command(
    name = "replica-applier verify",
    about = "Compares a running applier's secondary with the primary while replication goes on; prints a report and \
             exits 0 when equal, 1 when anything differs, 2 when it cannot verify"
)]
pub struct VerifyCli {
    /// The running applier's admin gRPC address (its REPLICA_ADMIN_ADDR)
    #[arg(long, env = "REPLICA_ADMIN_ADDR", default_value = "127.0.0.1:50061")]
    pub admin_addr: String,
    /// Bearer token of the admin service
    #[arg(long, env = "REPLICA_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<Secret>,
    /// Only this schema (every schema the reader serves when empty)
    #[arg(long, default_value = "")]
    pub schema: String,
    /// Only this table of --schema
    #[arg(long, default_value = "")]
    pub table: String,
    /// Re-copy the rows that differ from the primary
    #[arg(long)]
    pub repair: bool,
    /// Give up (exit 2) after this long; 0: wait until done
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub timeout: Duration,
}

/// Runs the one-shot verification with `args` (after the `verify` word).
pub async fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let cli = match VerifyCli::try_parse_from(std::iter::once("replica-applier verify".to_owned()).chain(args)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli).await {
        Ok(report) => {
            print!("{}", text(&report));
            if differs(&report) {
                ExitCode::from(1)
            } else if report.state != "done" || report.tables.iter().any(|t| t.state == "failed") {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("replica-applier verify: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: VerifyCli) -> Result<proto::GetVerifyResponse, String> {
    let url =
        if cli.admin_addr.contains("://") { cli.admin_addr.clone() } else { format!("http://{}", cli.admin_addr) };
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad admin address {url}: {e}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| {
            format!("cannot reach the applier's admin service at {url} (is REPLICA_ADMIN_ADDR set on it?): {e}")
        })?;
    let token = common::grpc_security::BearerToken::new(cli.auth_token.as_ref())?;
    let mut client = ApplierClient::with_interceptor(channel, token);
    let started = client
        .start_verify(StartVerifyRequest { schema: cli.schema, table: cli.table, repair: cli.repair })
        .await
        .map_err(|s| format!("StartVerify refused: {}", s.message()))?
        .into_inner();
    eprintln!("verifying {} table(s){}", started.tables.len(), if cli.repair { ", repairing" } else { "" });
    let began = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = client
            .get_verify(GetVerifyRequest {})
            .await
            .map_err(|s| format!("GetVerify failed: {}", s.message()))?
            .into_inner();
        if report.state != "running" {
            return Ok(report);
        }
        if !cli.timeout.is_zero() && began.elapsed() > cli.timeout {
            return Err(format!("not done after {:?}; it goes on in the applier (GetVerify, StopVerify)", cli.timeout));
        }
    }
}

fn differs(report: &proto::GetVerifyResponse) -> bool {
    report.rows_differing > 0 || report.tables.iter().any(|t| matches!(t.state.as_str(), "differs" | "repaired"))
}

/// The report: one line per table, then the sample of differing rows.
pub fn text(report: &proto::GetVerifyResponse) -> String {
    let mut out = String::new();
    for t in &report.tables {
        out.push_str(&format!(
            "{}.{}: {} — {} rows in {} chunks compared, {} differing, {} repaired{}\n",
            t.schema,
            t.table,
            t.state,
            t.rows_compared,
            t.chunks_compared,
            t.rows_differing,
            t.rows_repaired,
            if t.message.is_empty() { String::new() } else { format!(" ({})", t.message) }
        ));
        for d in &t.sample {
            out.push_str(&format!(
                "  {} {}: primary {} secondary {}\n",
                d.kind,
                if d.key.is_empty() { "table" } else { &d.key },
                if d.primary_row.is_empty() { "-" } else { &d.primary_row },
                if d.secondary_row.is_empty() { "-" } else { &d.secondary_row },
            ));
        }
    }
    out.push_str(&format!(
        "verification {}: {} rows compared, {} differing, {} repaired, {} table(s) differ\n",
        report.state, report.rows_compared, report.rows_differing, report.rows_repaired, report.tables_differing
    ));
    out
}
