//! `replica-reader`: MariaDB binlog → durable sled journal → gRPC.
//!
//! # Map
//!
//! ```text
//!  primary ──binlog──▶ binlog::source ──events──▶ binlog::assemble ──Committed──▶ journal::writer ──▶ journal
//!                      (connection, resume,        (one handler per event,        (group commit,     (sled index
//!                       retry policy)               decode, statement)              size cap)          + segments)
//!                                                                                                         │
//!  appliers ◀──gRPC── serve::service (Read, Subscribe, Ack, consumers) ◀──────────────────────────────────┘
//!           ◀──gRPC── serve::snapshot (ListTables, ReadChunk: consistent reads at a journal boundary)
//!  journal::trim (retention), serve::health, metrics, filter (SIGHUP reload) run beside them.
//! ```
//!
//! | stage | files | owns |
//! | --- | --- | --- |
//! | binlog source | [`binlog::source`], [`binlog::failover`], [`binlog::assemble`], [`binlog::decode`], [`binlog::statement`], [`binlog::mariadb_events`], [`binlog::preflight`] | the replication connection, the followed server, the transaction being assembled |
//! | types between stages | [`pipeline`] | `Committed`, `Xa`, `SourceStatus`, `Counters` |
//! | journal | [`journal`], [`journal::store`], [`journal::sled_store`], [`journal::segments`], [`journal::writer`], [`journal::trim`] | offsets and consumers over a store (the sled index and segment files), the one writer thread, retention |
//! | serving | [`serve::service`], [`serve::snapshot`], [`serve::health`] | subscriptions, snapshot reads, health |
//! | errors | [`error`] | the one taxonomy, retry classification and gRPC status mapping |
//!
//! Everything stops through one cancellation token; the writer drains and flushes before the process exits.
//! This file only wires the stages together and waits for them.

pub mod binlog;
pub mod config;
pub mod error;
pub mod filter;
pub mod journal;
pub mod metrics;
pub mod pipeline;
pub mod serve;
pub mod standby;

use std::sync::Arc;
use std::time::Duration;

use common::proto::journal_server::JournalServer;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::binlog::source::{self, Source};
use crate::config::Config;
use crate::error::ReaderError;
use crate::journal::jetstream_store::{JetStreamConfig, JetStreamStore};
use crate::journal::lease::Lease;
use crate::journal::writer::Writer;
use crate::journal::{Journal, JournalError};
use crate::pipeline::SourceStatus;
use crate::serve::service::JournalService;
use crate::serve::snapshot::Snapshots;

/// Runs the reader until `shutdown` is cancelled (Ok) or a definite error stops it.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ReaderError> {
    let config = Arc::new(config);
    let (dir, jetstream) = (config.journal_dir.clone(), config.jetstream.clone());
    let journal = match jetstream {
        Some(js) => open_jetstream(js, &shutdown).await?,
        None => tokio::task::spawn_blocking(move || Journal::open(&dir)).await??,
    };
    let place = match &config.jetstream {
        Some(js) => format!("{} stream {} ({} replicas)", js.urls.join(","), js.stream_name(), js.replicas),
        None => config.journal_dir.display().to_string(),
    };
    info!(
        journal = %place,
        store = journal.store_kind(),
        first_offset = journal.first(),
        last_offset = journal.head(),
        resume = ?journal.resume().map(|r| (r.position.to_string(), r.gtid.to_string())),
        "journal opened"
    );
    let status = Arc::new(SourceStatus::default());
    let (writer, handle) = Writer::new(journal.clone(), config.journal_max_bytes, status.clone(), shutdown.clone());

    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(filter::reload_on_sighup(config.filter.clone(), shutdown.clone()));
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

    let (router, health) = common::grpc_server::router(&config.security)?;
    tasks.spawn(serve::health::run(health, status.clone(), shutdown.clone()));
    let (switch, switches) = tokio::sync::mpsc::channel(1);
    let service = JournalService {
        switch,
        journal: journal.clone(),
        config: config.clone(),
        status: status.clone(),
        shutdown: shutdown.clone(),
        connected: Default::default(),
        snapshots: Arc::new(Snapshots::new(config.clone(), journal.clone(), status.clone(), handle.downgrade())),
    };
    let addr = config.grpc_addr;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ReaderError::Listen { addr, source })?;
    info!(addr = %listener.local_addr().unwrap_or(addr), "gRPC listening");
    let router = router.add_service(JournalServer::with_interceptor(service, config.security.require_token()));
    let server = tokio::spawn(common::grpc_server::serve(router, listener, shutdown.clone()));

    // With a JetStream journal: serve it as a standby until this reader holds the lease.
    let lease_lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(js) = &config.jetstream {
        // The gRPC address is bound by now: no other live process of this host holds this identity.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let me = format!("{}/{}", host.trim(), config.grpc_addr);
        let mut lease = Lease::open(js, me, config.lease_ttl).await?;
        if !standby::wait_for_lease(&journal, &mut lease, &status, &shutdown).await? {
            stop(tasks, server, &journal).await;
            return Ok(());
        }
        tasks.spawn(standby::keep_lease(lease, lease_lost.clone(), shutdown.clone()));
    }
    let writer_thread = std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || writer.run())
        .map_err(ReaderError::WriterThread)?;
    tasks.spawn(journal::trim::run(journal.clone(), config.retention, shutdown.clone()));
    tasks.spawn(binlog::repair::run(config.clone(), journal.clone(), status.clone(), shutdown.clone()));

    let source = Source {
        config: config.clone(),
        journal: journal.clone(),
        switches,
        candidates: config.primaries.clone(),
        writer: handle,
        budget: Arc::new(tokio::sync::Semaphore::new(source::IN_FLIGHT_BYTES as usize)),
        status,
        shutdown: shutdown.clone(),
    };
    let result = source.run().await;
    shutdown.cancel();
    // The source's handle is gone: the writer drains what it was sent, flushes and stops.
    let writer_result =
        tokio::task::spawn_blocking(move || writer_thread.join()).await?.map_err(|_| ReaderError::WriterPanicked)?;
    stop(tasks, server, &journal).await;
    writer_result?;
    if lease_lost.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ReaderError::LeaseLost);
    }
    result
}

/// Opens a JetStream journal as a follower (another reader may write it; this one writes once the lease is its
/// own), waiting for the NATS cluster while it cannot answer (not up yet, no JetStream leader elected yet).
async fn open_jetstream(js: JetStreamConfig, shutdown: &CancellationToken) -> Result<Arc<Journal>, ReaderError> {
    let mut pause = Duration::from_millis(200);
    loop {
        let config = js.clone();
        match tokio::task::spawn_blocking(move || Journal::follower(Box::new(JetStreamStore::open(&config)?))).await? {
            Ok(journal) => return Ok(journal),
            Err(e @ JournalError::JetStream(_)) if !shutdown.is_cancelled() => {
                warn!(error = %e, retry_in = ?pause, "the JetStream journal cannot be opened yet; trying again");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Waits (a little) for the tasks and the gRPC server to stop.
async fn stop(
    tasks: tokio_util::task::TaskTracker,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    journal: &Journal,
) {
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server stopped with an error"),
        Err(_) => warn!("gRPC server did not stop within 5s"),
        _ => {}
    }
    info!(last_offset = journal.head(), "reader stopped");
}
