//! The applier's Prometheus metrics, updated as it applies.

use std::sync::atomic::AtomicU64;

use common::event::{Body, Record, RowChange};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Default)]
pub struct ApplierMetrics {
    applied_offset: Gauge,
    transactions: Counter,
    rows: Family<Labels, Counter>,
    retries: Counter,
    permanent_failures: Counter,
    quarantined: Gauge,
    lag_seconds: Gauge<f64, AtomicU64>,
    copy_rows: Counter,
}

impl ApplierMetrics {
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("replica_applier");
        r.register("applied_offset", "Last journal offset committed on the secondary", self.applied_offset.clone());
        r.register("transactions", "Source transactions applied", self.transactions.clone());
        r.register("rows", "Row changes applied, by kind, schema and table", self.rows.clone());
        r.register("retries", "Transient errors retried", self.retries.clone());
        r.register("permanent_failures", "Permanent errors", self.permanent_failures.clone());
        r.register("quarantined_tables", "Tables whose changes are skipped", self.quarantined.clone());
        r.register("copy_rows", "Rows written by the initial copy and table re-copies", self.copy_rows.clone());
        r.register(
            "lag_seconds",
            "From the source commit of the last applied transaction to its commit on the secondary",
            self.lag_seconds.clone(),
        );
        r
    }

    pub fn applied(&self, group: &[Record]) {
        let Some(last) = group.last() else { return };
        self.applied_offset.set(last.offset.0 as i64);
        self.transactions.inc_by(group.len() as u64);
        for record in group {
            if let Body::Transaction(changes) = &record.body {
                for c in changes {
                    for row in &c.rows {
                        let kind = match row {
                            RowChange::Insert { .. } => "insert",
                            RowChange::Update { .. } => "update",
                            RowChange::Delete { .. } => "delete",
                        };
                        let labels = vec![
                            ("kind".to_owned(), kind.to_owned()),
                            ("schema".to_owned(), c.schema.clone()),
                            ("table".to_owned(), c.table.clone()),
                        ];
                        self.rows.get_or_create(&labels).inc();
                    }
                }
            }
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        self.lag_seconds.set((now - last.commit_unix_seconds as f64).max(0.0));
    }

    pub fn copied(&self, rows: u64) {
        self.copy_rows.inc_by(rows);
    }

    pub fn lag_seconds(&self) -> f64 {
        self.lag_seconds.get()
    }

    pub fn retried(&self) {
        self.retries.inc();
    }

    pub fn failed(&self) {
        self.permanent_failures.inc();
    }

    pub fn quarantined(&self, tables: usize) {
        self.quarantined.set(tables as i64);
    }
}
