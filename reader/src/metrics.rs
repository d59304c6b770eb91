//! The reader's Prometheus metrics: journal bounds and size, source position and connection, consumers'
//! acks and lag, and counters kept by the source and the writer. Gauges are refreshed every second.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::journal::{now_ms, Journal};
use crate::pipeline::{Counters, SourceStatus};

type Labels = Vec<(String, String)>;

/// The reader's gauges; [`ReaderMetrics::run`] refreshes them every second.
pub struct ReaderMetrics {
    registry: Registry,
    first: Gauge,
    last: Gauge,
    bytes: Gauge,
    position: Gauge,
    connected: Gauge,
    backpressure: Gauge,
    primary_server_id: Gauge,
    acked: Family<Labels, Gauge>,
    lag_records: Family<Labels, Gauge>,
    lag_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    standby: Gauge,
    store: Family<Labels, Gauge>,
    replicas: Gauge,
    replicas_current: Gauge,
    lease_holder: Family<Labels, Gauge>,
}

impl ReaderMetrics {
    pub fn new(counters: &Counters) -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("replica"),
            first: Gauge::default(),
            last: Gauge::default(),
            bytes: Gauge::default(),
            position: Gauge::default(),
            connected: Gauge::default(),
            backpressure: Gauge::default(),
            primary_server_id: Gauge::default(),
            acked: Family::default(),
            lag_records: Family::default(),
            lag_seconds: Family::default(),
            standby: Gauge::default(),
            store: Family::default(),
            replicas: Gauge::default(),
            replicas_current: Gauge::default(),
            lease_holder: Family::default(),
        };
        let r = &mut m.registry;
        r.register("journal_first_offset", "First retained journal offset", m.first.clone());
        r.register("journal_last_offset", "Last durable journal offset", m.last.clone());
        r.register("journal_bytes", "Bytes of retained journal records", m.bytes.clone());
        r.register(
            "source_position",
            "Binlog position (within its file) after the last journaled transaction",
            m.position.clone(),
        );
        r.register("primary_connected", "1 while the binlog stream from the primary is up", m.connected.clone());
        r.register(
            "journal_backpressure",
            "1 while the size cap stops reading from the primary",
            m.backpressure.clone(),
        );
        r.register(
            "reader_standby",
            "1 while this reader is the standby of a shared (JetStream) journal: another reader reads the binlog",
            m.standby.clone(),
        );
        r.register(
            "journal_store",
            "1, labelled with the store that keeps the journal (sled or jetstream)",
            m.store.clone(),
        );
        r.register(
            "journal_replicas",
            "Copies every journal record is meant to have (1 for a local journal, the stream's replicas on JetStream)",
            m.replicas.clone(),
        );
        r.register(
            "journal_replicas_current",
            "Copies of the journal that hold everything written so far (0 while the NATS cluster does not answer)",
            m.replicas_current.clone(),
        );
        r.register(
            "reader_lease_holder",
            "1, labelled with the reader that holds a JetStream journal's lease (host/gRPC address)",
            m.lease_holder.clone(),
        );
        r.register("consumer_acked_offset", "Last offset each consumer acked", m.acked.clone());
        r.register("consumer_lag_records", "Records journaled after each consumer's ack", m.lag_records.clone());
        r.register(
            "consumer_lag_seconds",
            "Age of the oldest record each consumer has not acked",
            m.lag_seconds.clone(),
        );
        r.register("source_reconnects", "Reconnections to the primary", counters.reconnects.clone());
        r.register(
            "primary_changes",
            "Times the reader began following a server with another server id (failover or SwitchPrimary)",
            counters.primary_changes.clone(),
        );
        r.register(
            "primary_server_id",
            "Server id of the server the reader follows (0 before its first connection)",
            m.primary_server_id.clone(),
        );
        r.register("journal_transactions", "Source transactions journaled", counters.transactions.clone());
        r.register("journal_rows", "Row changes journaled", counters.rows.clone());
        r.register("copy_chunks", "Chunks served to initial copies", counters.copy_chunks.clone());
        r.register("copy_rows", "Rows served to initial copies", counters.copy_rows.clone());
        r.register(
            "verify_rows",
            "Rows of the primary checksummed for online verification",
            counters.verify_rows.clone(),
        );
        m
    }

    /// Takes the registry out for the endpoint; the gauges keep feeding it.
    pub fn take_registry(&mut self) -> Registry {
        std::mem::take(&mut self.registry)
    }

    /// Refreshes the gauges every second until shutdown.
    pub async fn run(self, journal: Arc<Journal>, status: Arc<SourceStatus>, shutdown: CancellationToken) {
        loop {
            let j = journal.clone();
            if let Ok(Ok(consumers)) = tokio::task::spawn_blocking(move || {
                j.consumers().map(|list| {
                    list.into_iter()
                        .map(|(name, s)| (name, s.acked, j.journaled_unix_ms(s.acked + 1)))
                        .collect::<Vec<_>>()
                })
            })
            .await
            {
                let head = journal.head();
                self.acked.clear();
                self.lag_records.clear();
                self.lag_seconds.clear();
                for (name, acked, oldest_unacked) in consumers {
                    let l = vec![("consumer".to_owned(), name)];
                    self.acked.get_or_create(&l).set(acked as i64);
                    self.lag_records.get_or_create(&l).set(head.saturating_sub(acked) as i64);
                    let secs = oldest_unacked.map_or(0.0, |ms| (now_ms() - ms).max(0) as f64 / 1000.0);
                    self.lag_seconds.get_or_create(&l).set(secs);
                }
            }
            self.first.set(journal.first() as i64);
            self.last.set(journal.head() as i64);
            self.bytes.set(journal.bytes() as i64);
            self.position.set(journal.resume().map_or(0, |r| r.position.pos as i64));
            self.connected.set(i64::from(status.connected.load(Ordering::Relaxed)));
            self.backpressure.set(i64::from(status.backpressure.load(Ordering::Relaxed)));
            self.primary_server_id.set(status.followed().map_or(0, |f| i64::from(f.server_id)));
            self.standby.set(i64::from(status.standby.load(Ordering::Relaxed)));
            self.store.get_or_create(&vec![("store".to_owned(), journal.store_kind().to_owned())]).set(1);
            let j = journal.clone();
            if let Ok(copies) = tokio::task::spawn_blocking(move || j.copies()).await {
                self.replicas.set(i64::from(copies.configured));
                self.replicas_current.set(i64::from(copies.current));
            }
            let holder = status.lease_holder();
            self.lease_holder.clear();
            if !holder.is_empty() {
                self.lease_holder.get_or_create(&vec![("holder".to_owned(), holder)]).set(1);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
