//! A verification's state, shared by the verifier task and the admin service: which tables, where each one
//! is, what differed; saved in `replica_meta.verify` so that a restarted applier resumes it.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use common::event::Value;
use common::proto;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tokio::sync::watch;

use crate::error::{meta, ApplyError};
use crate::table::TableKey;

/// Differing rows kept per table for `GetVerify`.
pub const SAMPLE: usize = 10;

/// Where one table's verification is. Stored in `replica_meta.verify.state` by [`TableState::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableState {
    #[default]
    Pending,
    Verifying,
    /// Every chunk compared equal.
    Equal,
    /// Some rows differ (and were not all repaired).
    Differs,
    /// Some rows differed and every one was repaired.
    Repaired,
    /// Not compared (being copied, quarantined, or gone from the primary): see the message.
    Skipped,
    Failed,
    Stopped,
}

impl TableState {
    pub fn as_str(self) -> &'static str {
        match self {
            TableState::Pending => "pending",
            TableState::Verifying => "verifying",
            TableState::Equal => "equal",
            TableState::Differs => "differs",
            TableState::Repaired => "repaired",
            TableState::Skipped => "skipped",
            TableState::Failed => "failed",
            TableState::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => TableState::Pending,
            "verifying" => TableState::Verifying,
            "equal" => TableState::Equal,
            "differs" => TableState::Differs,
            "repaired" => TableState::Repaired,
            "skipped" => TableState::Skipped,
            "failed" => TableState::Failed,
            "stopped" => TableState::Stopped,
            _ => return None,
        })
    }

    /// Still to be compared (a restarted applier takes these up again).
    pub fn open(self) -> bool {
        matches!(self, TableState::Pending | TableState::Verifying)
    }
}

/// One differing row (or a whole keyless table), with both sides as SQL literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub key: String,
    /// "missing", "extra", "differs" or "table".
    pub kind: &'static str,
    pub primary: String,
    pub secondary: String,
}

/// One table's verification.
#[derive(Debug, Clone, Default)]
pub struct TableVerify {
    pub state: TableState,
    pub key_kind: String,
    /// Key of the last row compared; None before the first chunk.
    pub last_key: Option<Vec<Value>>,
    pub chunks: u64,
    pub rows: u64,
    pub chunks_differing: u64,
    pub rows_differing: u64,
    pub rows_repaired: u64,
    pub sample: Vec<Difference>,
    pub message: String,
    /// When this process began comparing the table, and the rows compared by then.
    pub began: Option<(Instant, u64)>,
    pub ended: Option<Instant>,
}

impl TableVerify {
    pub fn rows_per_second(&self) -> f64 {
        let Some((began, rows_then)) = self.began else { return 0.0 };
        let secs = self.ended.unwrap_or_else(Instant::now).duration_since(began).as_secs_f64();
        if secs > 0.0 {
            (self.rows - rows_then) as f64 / secs
        } else {
            0.0
        }
    }
}

/// The verification as a whole.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Changes with every StartVerify and StopVerify, so the verifier notices.
    pub generation: u64,
    pub repair: bool,
    pub stopped: bool,
    pub tables: BTreeMap<TableKey, TableVerify>,
    /// When this process began working on it, and the rows compared by then.
    pub began: Option<(Instant, u64)>,
}

impl Verification {
    /// "idle", "running", "done" or "stopped".
    pub fn state(&self) -> &'static str {
        if self.tables.is_empty() {
            "idle"
        } else if self.tables.values().any(|t| t.state.open()) {
            if self.stopped {
                "stopped"
            } else {
                "running"
            }
        } else if self.tables.values().any(|t| t.state == TableState::Stopped) {
            "stopped"
        } else {
            "done"
        }
    }

    fn sum(&self, f: impl Fn(&TableVerify) -> u64) -> u64 {
        self.tables.values().map(f).sum()
    }

    pub fn report(&self) -> proto::GetVerifyResponse {
        let rows = self.sum(|t| t.rows);
        let rate = match self.began {
            Some((began, then)) if self.state() == "running" => {
                let secs = began.elapsed().as_secs_f64();
                if secs > 0.0 {
                    (rows - then) as f64 / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        proto::GetVerifyResponse {
            state: self.state().into(),
            repair: self.repair,
            tables: self
                .tables
                .iter()
                .map(|((schema, table), t)| proto::TableVerify {
                    schema: schema.clone(),
                    table: table.clone(),
                    state: t.state.as_str().into(),
                    key_kind: t.key_kind.clone(),
                    chunks_compared: t.chunks,
                    rows_compared: t.rows,
                    chunks_differing: t.chunks_differing,
                    rows_differing: t.rows_differing,
                    rows_repaired: t.rows_repaired,
                    rows_per_second: t.rows_per_second(),
                    sample: t
                        .sample
                        .iter()
                        .map(|d| proto::RowDifference {
                            key: d.key.clone(),
                            kind: d.kind.into(),
                            primary_row: d.primary.clone(),
                            secondary_row: d.secondary.clone(),
                        })
                        .collect(),
                    message: t.message.clone(),
                })
                .collect(),
            rows_compared: rows,
            rows_differing: self.sum(|t| t.rows_differing),
            rows_repaired: self.sum(|t| t.rows_repaired),
            rows_per_second: rate,
            tables_differing: self.tables.values().filter(|t| t.state == TableState::Differs).count() as u32,
        }
    }
}

/// The shared verification; `changed` wakes the verifier.
#[derive(Debug, Default)]
pub struct VerifyBoard {
    inner: Mutex<Verification>,
    pub changed: watch::Sender<u64>,
}

impl VerifyBoard {
    pub fn lock(&self) -> MutexGuard<'_, Verification> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the verification with one of `tables`.
    pub fn start(&self, tables: Vec<TableKey>, repair: bool) {
        let mut v = self.lock();
        let generation = v.generation + 1;
        *v = Verification {
            generation,
            repair,
            stopped: false,
            tables: tables.into_iter().map(|t| (t, TableVerify::default())).collect(),
            began: Some((Instant::now(), 0)),
        };
        drop(v);
        self.changed.send_replace(generation);
    }

    /// Stops the verification; false if none was running.
    pub fn stop(&self) -> bool {
        let mut v = self.lock();
        if v.state() != "running" {
            return false;
        }
        v.stopped = true;
        v.generation += 1;
        let generation = v.generation;
        for t in v.tables.values_mut().filter(|t| t.state.open()) {
            t.state = TableState::Stopped;
        }
        drop(v);
        self.changed.send_replace(generation);
        true
    }
}

/// Saves every table of `v` in `replica_meta.verify` (replacing what was there for `consumer`).
pub async fn save_all(conn: &mut Conn, consumer: &str, v: &Verification) -> Result<(), ApplyError> {
    conn.exec_drop("DELETE FROM replica_meta.verify WHERE consumer = ?", (consumer,))
        .await
        .map_err(meta("clearing replica_meta.verify"))?;
    for (table, t) in &v.tables {
        save(conn, consumer, table, t, v.repair).await?;
    }
    Ok(())
}

/// Saves one table's verification.
pub async fn save(
    conn: &mut Conn,
    consumer: &str,
    table: &TableKey,
    t: &TableVerify,
    repair: bool,
) -> Result<(), ApplyError> {
    let last_key = match &t.last_key {
        Some(k) => Some(
            serde_json::to_string(k)
                .map_err(|e| ApplyError::State { what: "verify last_key".into(), reason: e.to_string() })?,
        ),
        None => None,
    };
    let params: Vec<mysql_async::Value> = vec![
        consumer.into(),
        table.0.as_str().into(),
        table.1.as_str().into(),
        t.state.as_str().into(),
        repair.into(),
        t.key_kind.as_str().into(),
        last_key.into(),
        t.chunks.into(),
        t.rows.into(),
        t.chunks_differing.into(),
        t.rows_differing.into(),
        t.rows_repaired.into(),
        t.message.as_str().into(),
    ];
    conn.exec_drop(
        "REPLACE INTO replica_meta.verify (consumer, schema_name, table_name, state, repair, key_kind, last_key,
           chunks_compared, rows_compared, chunks_differing, rows_differing, rows_repaired, message)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params,
    )
    .await
    .map_err(meta("saving replica_meta.verify"))
}

type Row = (String, String, String, bool, String, Option<String>, u64, u64, u64, u64, u64, Option<String>);

/// The verification `consumer` left in `replica_meta.verify` (empty if none).
pub async fn load(conn: &mut Conn, consumer: &str) -> Result<Verification, ApplyError> {
    let rows: Vec<Row> = conn
        .exec(
            "SELECT schema_name, table_name, state, repair, key_kind, last_key, chunks_compared, rows_compared,
                    chunks_differing, rows_differing, rows_repaired, message
             FROM replica_meta.verify WHERE consumer = ?",
            (consumer,),
        )
        .await
        .map_err(meta("reading replica_meta.verify"))?;
    let mut v = Verification::default();
    for (
        schema,
        table,
        state,
        repair,
        key_kind,
        last_key,
        chunks,
        rows,
        chunks_differing,
        rows_differing,
        repaired,
        message,
    ) in rows
    {
        let bad = |reason: String| ApplyError::State { what: "replica_meta.verify".into(), reason };
        let state = TableState::parse(&state).ok_or_else(|| bad(format!("unknown state {state:?}")))?;
        let last_key = match last_key {
            Some(k) => Some(serde_json::from_str(&k).map_err(|e| bad(e.to_string()))?),
            None => None,
        };
        v.repair = repair;
        v.tables.insert(
            (schema, table),
            TableVerify {
                state,
                key_kind,
                last_key,
                chunks,
                rows,
                chunks_differing,
                rows_differing,
                rows_repaired: repaired,
                message: message.unwrap_or_default(),
                ..Default::default()
            },
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verification_is_running_until_every_table_is_compared_and_stops_when_told() {
        let board = VerifyBoard::default();
        assert_eq!(board.lock().state(), "idle");
        board.start(vec![("s".into(), "a".into()), ("s".into(), "b".into())], false);
        assert_eq!(board.lock().state(), "running");
        board.lock().tables.values_mut().for_each(|t| t.state = TableState::Equal);
        assert_eq!(board.lock().state(), "done");
        assert!(!board.stop(), "nothing to stop");
        board.start(vec![("s".into(), "a".into())], true);
        let generation = board.lock().generation;
        assert!(board.stop());
        assert_eq!(board.lock().state(), "stopped");
        assert!(board.lock().generation > generation);
    }
}
