//! `replica-reader`: MariaDB binlog → durable sled journal → gRPC.
//!
//! Data flow: [`source`] streams the primary's binlog, [`decode`] turns row images into exact values,
//! [`statement`] classifies logged statements, and committed transactions go through a bounded channel to the
//! [`writer`] thread, which group-commits them into the [`journal`] (records and resume position in one
//! atomic write, published after flush). [`server`] serves the journal over gRPC with reflection and health;
//! a trimmer task deletes records every consumer acked once they are older than the retention time.
//! Everything stops through one cancellation token.

pub mod config;
pub mod decode;
pub mod error;
pub mod filter;
pub mod journal;
pub mod mariadb_events;
pub mod metrics;
pub mod preflight;
pub mod segments;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod statement;
pub mod writer;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::proto::journal_server::JournalServer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::ReaderError;
use crate::journal::Journal;
use crate::server::JournalService;
use crate::source::{Source, SourceStatus};
use crate::writer::Writer;

/// Committed transactions buffered between the source and the writer.
const WRITER_QUEUE: usize = 1024;

/// Runs the reader until `shutdown` is cancelled (Ok) or a definite error stops it.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ReaderError> {
    let config = Arc::new(config);
    let dir = config.journal_dir.clone();
    let journal = tokio::task::spawn_blocking(move || Journal::open(&dir))
        .await
        .map_err(|e| ReaderError::Task(e.to_string()))??;
    info!(
        journal = %config.journal_dir.display(),
        first_offset = journal.first(),
        last_offset = journal.head(),
        resume = ?journal.resume().map(|r| (r.position.to_string(), r.gtid.to_string())),
        "journal opened"
    );
    let status = Arc::new(SourceStatus::default());
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let writer = Writer {
        journal: journal.clone(),
        rx,
        max_bytes: config.journal_max_bytes,
        status: status.clone(),
        shutdown: shutdown.clone(),
    };
    let writer_thread = std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| ReaderError::Task(e.to_string()))?;

    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(trim_loop(journal.clone(), config.retention, shutdown.clone()));
    tasks.spawn(reload_filters_on_sighup(config.clone(), shutdown.clone()));

    if let Some(addr) = config.metrics_addr {
        let mut gauges = metrics::ReaderMetrics::new(&status.counters);
        let serve = common::metrics::serve(addr, Arc::new(gauges.take_registry()), shutdown.clone());
        tasks.spawn(gauges.run(journal.clone(), status.clone(), shutdown.clone()));
        tasks.spawn(async move {
            if let Err(e) = serve.await {
                warn!(error = %e, %addr, "metrics endpoint failed");
            }
        });
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    tasks.spawn(health_loop(health, status.clone(), shutdown.clone()));
    // Both reflection versions: older grpcurl builds only speak v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(common::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| ReaderError::Task(e.to_string()))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| ReaderError::Task(e.to_string()))?;
    let service = JournalService {
        journal: journal.clone(),
        config: config.clone(),
        status: status.clone(),
        shutdown: shutdown.clone(),
        connected: Default::default(),
        snapshots: Arc::new(snapshot::Snapshots::new(config.clone(), journal.clone(), status.clone(), tx.clone())),
    };
    let listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|e| ReaderError::Task(format!("cannot listen on {}: {e}", config.grpc_addr)))?;
    info!(addr = %listener.local_addr().map_err(|e| ReaderError::Task(e.to_string()))?, "gRPC listening");
    let serve_shutdown = shutdown.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = config.security.server_tls().map_err(ReaderError::Task)? {
        builder = builder.tls_config(tls).map_err(|e| ReaderError::Task(format!("TLS settings: {e}")))?;
        info!(client_certificates = config.security.tls_client_ca.is_some(), "gRPC serves TLS");
    }
    let server = tokio::spawn(
        builder
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(JournalServer::with_interceptor(service, config.security.require_token()))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
                serve_shutdown.cancelled().await
            }),
    );

    let source = Source {
        config: config.clone(),
        writer: tx,
        budget: Arc::new(tokio::sync::Semaphore::new(source::IN_FLIGHT_BYTES as usize)),
        status,
        shutdown: shutdown.clone(),
    };
    let result = source.run().await;
    shutdown.cancel();
    // The source's sender is gone: the writer drains what it was sent, flushes and stops.
    let writer_result = tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| ReaderError::Task(e.to_string()))?
        .map_err(|_| ReaderError::Task("journal writer panicked".into()))?;
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server stopped with an error"),
        Err(_) => warn!("gRPC server did not stop within 5s"),
        _ => {}
    }
    writer_result?;
    info!(last_offset = journal.head(), "reader stopped");
    result
}

async fn trim_loop(journal: Arc<Journal>, retention: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        loop {
            let j = journal.clone();
            match tokio::task::spawn_blocking(move || j.trim(retention, 10_000)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => tracing::debug!(removed = n, first_offset = journal.first(), "journal trimmed"),
                Ok(Err(e)) => {
                    warn!(error = %e, "journal trim failed");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

async fn health_loop(
    health: tonic_health::server::HealthReporter,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let serving = status.connected.load(Ordering::Relaxed) && !status.backpressure.load(Ordering::Relaxed);
        if last != Some(serving) {
            let s = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_service_status("", s).await;
            health.set_service_status("replica.v1.Journal", s).await;
            last = Some(serving);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// At each SIGHUP, reads the table filters again (`include`/`exclude` in the config file, else
/// `REPLICA_INCLUDE`/`REPLICA_EXCLUDE` in `.env`) and applies them from the next transaction on. A table
/// newly included has no history in the journal: re-copy it on each secondary (ResyncTable).
async fn reload_filters_on_sighup(config: Arc<Config>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            h = hup.recv() => if h.is_none() { return },
        }
        let file = common::config_file::path_from_args();
        let include = common::lifecycle::reloaded_setting(file.as_deref(), "include", "REPLICA_INCLUDE");
        let exclude = common::lifecycle::reloaded_setting(file.as_deref(), "exclude", "REPLICA_EXCLUDE");
        match (include, exclude) {
            (Ok(None), Ok(None)) => info!("SIGHUP: no filters in the config file or .env; unchanged"),
            (Ok(include), Ok(exclude)) => {
                let (include, exclude) = (include.unwrap_or_default(), exclude.unwrap_or_default());
                match filter::Filter::new(&include, &exclude) {
                    Ok(f) => {
                        config.filter.replace(f);
                        info!(include = %include, exclude = %exclude, "SIGHUP: table filters reloaded");
                    }
                    Err(e) => warn!(error = %e, "SIGHUP: invalid filters; unchanged"),
                }
            }
            (Err(e), _) | (_, Err(e)) => warn!(error = %e, "SIGHUP: filters unchanged"),
        }
    }
}
