//! `replica-applier verify`: starts a verification on a running applier (through its admin service), waits for
//! it, prints a report, and exits 0 when every table is equal, 1 when anything differed (repaired or not), 2
//! when the verification could not be done — for cron jobs and CI pipelines.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use common::config::{parse_duration, Secret};
use common::grpc_security::ClientTlsNames;
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
    /// PEM CA that signed the applier's admin certificate (its REPLICA_TLS_CERT); TLS is on when set
    #[arg(long, env = "REPLICA_ADMIN_CA")]
    pub admin_ca: Option<PathBuf>,
    /// PEM client certificate, when the applier requires one (its REPLICA_TLS_CLIENT_CA)
    #[arg(long, env = "REPLICA_ADMIN_CLIENT_CERT", requires = "admin_client_key")]
    pub admin_client_cert: Option<PathBuf>,
    /// PEM private key of --admin-client-cert
    #[arg(long, env = "REPLICA_ADMIN_CLIENT_KEY", requires = "admin_client_cert")]
    pub admin_client_key: Option<PathBuf>,
    /// Name to verify the applier's certificate against (default: the address's host)
    #[arg(long, env = "REPLICA_ADMIN_TLS_DOMAIN")]
    pub admin_tls_domain: Option<String>,
}

/// The one-shot client's TLS settings, as its hints name them.
const ADMIN_CLIENT: ClientTlsNames = ClientTlsNames {
    ca: "--admin-ca",
    cert: "--admin-client-cert",
    key: "--admin-client-key",
    domain: "--admin-tls-domain",
    server_client_ca: "the applier's REPLICA_TLS_CLIENT_CA",
};

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
    let scheme = if cli.admin_ca.is_some() { "https" } else { "http" };
    let url =
        if cli.admin_addr.contains("://") { cli.admin_addr.clone() } else { format!("{scheme}://{}", cli.admin_addr) };
    if url.starts_with("https://") && cli.admin_ca.is_none() {
        return Err("an https:// admin address needs --admin-ca (the CA that signed the applier's certificate)".into());
    }
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad admin address {url}: {e}"))?
        .connect_timeout(Duration::from_secs(10));
    let tls = Sent { tls: cli.admin_ca.is_some(), certificate: cli.admin_client_cert.is_some() };
    if let Some(ca) = &cli.admin_ca {
        let identity = cli.admin_client_cert.as_deref().zip(cli.admin_client_key.as_deref());
        let tls = common::grpc_security::client_tls(ca, identity, cli.admin_tls_domain.as_deref())?;
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS settings: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        format!(
            "cannot reach the applier's admin service at {url} (is REPLICA_ADMIN_ADDR set on it?): {}",
            explain(&e, tls)
        )
    })?;
    let token = common::grpc_security::BearerToken::new(cli.auth_token.as_ref())?;
    let mut client = ApplierClient::with_interceptor(channel, token);
    let started = client
        .start_verify(StartVerifyRequest { schema: cli.schema, table: cli.table, repair: cli.repair })
        .await
        .map_err(|s| format!("StartVerify failed: {}", explain(&s, tls)))?
        .into_inner();
    eprintln!("verifying {} table(s){}", started.tables.len(), if cli.repair { ", repairing" } else { "" });
    let began = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = client
            .get_verify(GetVerifyRequest {})
            .await
            .map_err(|s| format!("GetVerify failed: {}", explain(&s, tls)))?
            .into_inner();
        if report.state != "running" {
            return Ok(report);
        }
        if !cli.timeout.is_zero() && began.elapsed() > cli.timeout {
            return Err(format!("not done after {:?}; it goes on in the applier (GetVerify, StopVerify)", cli.timeout));
        }
    }
}

/// What the client sent: TLS, and a client certificate with it.
#[derive(Clone, Copy)]
struct Sent {
    tls: bool,
    certificate: bool,
}

/// An error in plain words: a TLS failure as the setting to change, a gRPC status by its message (with what
/// lies under a transport failure), and a hint when plain gRPC meets a TLS port or TLS without a client
/// certificate fails. (Under TLS 1.3 a server's refusal of a missing certificate comes after the handshake: the
/// first call may see only a connection that closed, not the alert.)
fn explain(e: &(dyn std::error::Error + 'static), sent: Sent) -> String {
    if let Some(failure) = common::grpc_security::tls_failure(e) {
        return failure.hint(&ADMIN_CLIENT);
    }
    let status = e.downcast_ref::<tonic::Status>();
    // A failure below gRPC (connection, HTTP/2) carries its cause; a refusal by the service does not.
    let transport = status.is_none() || e.source().is_some();
    let mut text = match (status, e.source()) {
        (Some(s), Some(under)) => format!("{}: {}", s.message(), common::lifecycle::error_chain_plain(under)),
        (Some(s), None) => s.message().to_owned(),
        (None, _) => common::lifecycle::error_chain_plain(e),
    };
    if !sent.tls && transport {
        text.push_str(" — if the applier serves TLS (its REPLICA_TLS_CERT), give --admin-ca");
    } else if !sent.certificate && transport {
        text.push_str(&format!(
            " — if the applier requires client certificates (its REPLICA_TLS_CLIENT_CA), set {} and {}",
            ADMIN_CLIENT.cert, ADMIN_CLIENT.key
        ));
    }
    text
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
