//! The reader's Prometheus metrics: journal bounds and size, source position and connection, consumers'
//! acks and lag, and counters kept by the source and the writer. Gauges are refreshed every second.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::journal::{now_ms, Journal};
use crate::source::SourceStatus;

type Labels = Vec<(String, String)>;

/// Counters the source and the writer increment as they go.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub reconnects: Counter,
    pub transactions: Counter,
    pub rows: Counter,
}

struct Gauges {
    first: Gauge,
    last: Gauge,
    bytes: Gauge,
    position: Gauge,
    connected: Gauge,
    backpressure: Gauge,
    acked: Family<Labels, Gauge>,
    lag_records: Family<Labels, Gauge>,
    lag_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// Builds the registry; the returned closure-free updater refreshes the gauges until shutdown.
pub fn register(
    counters: &Counters,
) -> (Registry, impl FnOnce(Arc<Journal>, Arc<SourceStatus>, CancellationToken) -> tokio::task::JoinHandle<()>) {
    let mut r = Registry::with_prefix("replica");
    let g = Gauges {
        first: Gauge::default(),
        last: Gauge::default(),
        bytes: Gauge::default(),
        position: Gauge::default(),
        connected: Gauge::default(),
        backpressure: Gauge::default(),
        acked: Family::default(),
        lag_records: Family::default(),
        lag_seconds: Family::default(),
    };
    r.register("journal_first_offset", "First retained journal offset", g.first.clone());
    r.register("journal_last_offset", "Last durable journal offset", g.last.clone());
    r.register("journal_bytes", "Bytes of retained journal records", g.bytes.clone());
    r.register(
        "source_position",
        "Binlog position (within its file) after the last journaled transaction",
        g.position.clone(),
    );
    r.register("primary_connected", "1 while the binlog stream from the primary is up", g.connected.clone());
    r.register("journal_backpressure", "1 while the size cap stops reading from the primary", g.backpressure.clone());
    r.register("consumer_acked_offset", "Last offset each consumer acked", g.acked.clone());
    r.register("consumer_lag_records", "Records journaled after each consumer's ack", g.lag_records.clone());
    r.register("consumer_lag_seconds", "Age of the oldest record each consumer has not acked", g.lag_seconds.clone());
    r.register("source_reconnects", "Reconnections to the primary", counters.reconnects.clone());
    r.register("journal_transactions", "Source transactions journaled", counters.transactions.clone());
    r.register("journal_rows", "Row changes journaled", counters.rows.clone());
    let updater = move |journal: Arc<Journal>, status: Arc<SourceStatus>, shutdown: CancellationToken| {
        tokio::spawn(async move {
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
                    g.acked.clear();
                    g.lag_records.clear();
                    g.lag_seconds.clear();
                    for (name, acked, oldest_unacked) in consumers {
                        let l = vec![("consumer".to_owned(), name)];
                        g.acked.get_or_create(&l).set(acked as i64);
                        g.lag_records.get_or_create(&l).set(head.saturating_sub(acked) as i64);
                        let secs = oldest_unacked.map_or(0.0, |ms| ((now_ms() - ms).max(0)) as f64 / 1000.0);
                        g.lag_seconds.get_or_create(&l).set(secs);
                    }
                }
                g.first.set(journal.first() as i64);
                g.last.set(journal.head() as i64);
                g.bytes.set(journal.bytes() as i64);
                g.position.set(journal.resume().map_or(0, |r| r.position.pos as i64));
                g.connected.set(i64::from(status.connected.load(Ordering::Relaxed)));
                g.backpressure.set(i64::from(status.backpressure.load(Ordering::Relaxed)));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        })
    };
    (r, updater)
}
