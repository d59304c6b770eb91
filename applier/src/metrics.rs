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
    secondary_connected: Gauge,
    reader_connected: Gauge,
    behind_seconds: Gauge<f64, AtomicU64>,
    conflicts: Family<Labels, Counter>,
    verify_rows: Counter,
    verify_rows_differing: Counter,
    verify_rows_repaired: Counter,
    planned: Family<Labels, Counter>,
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
        r.register(
            "conflicts",
            "Conflicts resolved (REPLICA_CONFLICTS overwrite or keep), by kind, action, schema and table",
            self.conflicts.clone(),
        );
        r.register("verify_rows", "Rows compared with the primary by online verification", self.verify_rows.clone());
        r.register(
            "verify_rows_differing",
            "Rows online verification found differing from the primary (missing, extra or different)",
            self.verify_rows_differing.clone(),
        );
        r.register(
            "verify_rows_repaired",
            "Rows online verification re-copied from the primary",
            self.verify_rows_repaired.clone(),
        );
        r.register("copy_rows", "Rows written by the initial copy and table re-copies", self.copy_rows.clone());
        r.register(
            "behind_seconds",
            "Age of the oldest record received and not yet applied (0 when none waits): how far behind the \
             applier is now; it grows while nothing is applied",
            self.behind_seconds.clone(),
        );
        r.register(
            "secondary_connected",
            "1 while the secondary answers, 0 while it is unreachable (also while waiting for it at start)",
            self.secondary_connected.clone(),
        );
        r.register("reader_connected", "1 while the subscription to the reader is up", self.reader_connected.clone());
        r.register(
            "planned_transactions",
            "Source transactions by who applied them: to=\"worker\" (in parallel) or to=\"writer\" (alone: DDL, \
             foreign keys that reach too far, fragments of large transactions, groups with such a record)",
            self.planned.clone(),
        );
        r.register(
            "lag_seconds",
            "From the source commit of the last applied transaction to its commit on the secondary",
            self.lag_seconds.clone(),
        );
        r
    }

    /// `n` transactions planned for the parallel workers (`worker`) or the writer alone (`writer`).
    pub fn planned(&self, to: &str, n: u64) {
        if n > 0 {
            self.planned.get_or_create(&vec![("to".to_owned(), to.to_owned())]).inc_by(n);
        }
    }

    pub fn conflicts(&self, conflicts: &[crate::conflict::Conflict]) {
        for c in conflicts {
            let labels = vec![
                ("kind".to_owned(), c.kind.as_str().to_owned()),
                ("action".to_owned(), c.action.to_owned()),
                ("schema".to_owned(), c.table.0.clone()),
                ("table".to_owned(), c.table.1.clone()),
            ];
            self.conflicts.get_or_create(&labels).inc();
        }
    }

    pub fn applied(&self, group: &[Record]) {
        let Some(last) = group.last() else { return };
        self.applied_offset.set(last.offset.0 as i64);
        self.transactions.inc_by(group.len() as u64);
        for record in group {
            if let Body::Transaction(changes) = &record.body {
                for c in changes {
                    // Counted per change and kind, not per row: a label set is built (and looked up) at most
                    // three times per change.
                    let mut counts = [0u64; 3];
                    for row in &c.rows {
                        counts[match row {
                            RowChange::Insert { .. } => 0,
                            RowChange::Update { .. } => 1,
                            RowChange::Delete { .. } => 2,
                        }] += 1;
                    }
                    for (kind, n) in ["insert", "update", "delete"].into_iter().zip(counts) {
                        if n > 0 {
                            let labels = vec![
                                ("kind".to_owned(), kind.to_owned()),
                                ("schema".to_owned(), c.schema.clone()),
                                ("table".to_owned(), c.table.clone()),
                            ];
                            self.rows.get_or_create(&labels).inc_by(n);
                        }
                    }
                }
            }
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        self.lag_seconds.set(lag_seconds(now, last.journaled_unix_ms, last.commit_unix_seconds));
    }

    /// Rows compared, found differing and repaired by online verification.
    pub fn verified(&self, compared: u64, differing: u64, repaired: u64) {
        self.verify_rows.inc_by(compared);
        self.verify_rows_differing.inc_by(differing);
        self.verify_rows_repaired.inc_by(repaired);
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

    pub fn behind(&self, seconds: f64) {
        self.behind_seconds.set(seconds);
    }

    pub fn behind_seconds(&self) -> f64 {
        self.behind_seconds.get()
    }

    /// Whether the secondary and the reader answer.
    pub fn links(&self, secondary: bool, reader: bool) {
        self.secondary_connected.set(i64::from(secondary));
        self.reader_connected.set(i64::from(reader));
    }

    pub fn quarantined(&self, tables: usize) {
        self.quarantined.set(tables as i64);
    }
}

/// How long ago the last applied transaction committed on the primary, never overstated and never negative:
/// the larger of two lower bounds, the time since the reader journaled it (milliseconds, so small lags show)
/// and the time since the end of the binlog's whole second of its commit (which shows a backlog the reader
/// journals only now).
fn lag_seconds(now: f64, journaled_unix_ms: i64, commit_unix_seconds: i64) -> f64 {
    let since_journaled = now - journaled_unix_ms as f64 / 1000.0;
    let since_commit = now - (commit_unix_seconds + 1) as f64;
    since_journaled.max(since_commit).max(0.0)
}

#[cfg(test)]
mod lag_tests {
    use super::lag_seconds;

    #[test]
    fn lag_has_millisecond_precision_shows_backlogs_and_is_never_negative() {
        // Journaled 25 ms ago, committed in the current second: 25 ms, not 0 or a whole second.
        assert!((lag_seconds(1000.5, 1_000_475, 1000) - 0.025).abs() < 1e-6);
        // A backlog journaled just now of a transaction that committed a minute ago.
        assert!((lag_seconds(1060.2, 1_060_190, 1000) - 59.2).abs() < 1e-6);
        // Clocks a little apart: never below zero.
        assert_eq!(lag_seconds(1000.0, 1_000_050, 1000), 0.0);
    }
}
