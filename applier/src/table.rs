//! Tables as the apply loop treats them: applied strictly, leniently while being copied, skipped until copied,
//! or quarantined after repeated permanent errors (with `--skip-failing-tables`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// `(schema, table)`.
pub type TableKey = (String, String);

/// `schema.table`, or `-` for none.
pub fn show(table: &Option<TableKey>) -> String {
    table.as_ref().map_or_else(|| "-".to_owned(), |(s, t)| format!("{s}.{t}"))
}

/// How records touching a table are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableMode {
    /// Every UPDATE and DELETE must find the row the primary changed; anything else is drift.
    Strict,
    /// Being copied: a missing row is not drift, since it may not be copied yet (see [`crate::copy`]).
    Lenient,
    /// Its changes are skipped: quarantined, or not copied yet where the copy reads it whole.
    Skip,
}

/// Quarantined tables with the offset since which they are skipped and why, as the admin service shows them.
pub type QuarantineBoard = Arc<Mutex<BTreeMap<TableKey, (u64, String)>>>;

/// The apply loop's per-table state; only the apply loop changes it.
#[derive(Debug, Default)]
pub struct Tables {
    /// Tables being copied, and how their changes are applied meanwhile.
    copying: HashMap<TableKey, TableMode>,
    /// Tables whose changes are skipped, with the offset where that began.
    quarantined: HashMap<TableKey, u64>,
    /// Permanent errors per table since the start (quarantine after `--max-table-failures`).
    failures: HashMap<TableKey, u32>,
    /// A copy of `quarantined` with the reasons, for the admin service.
    board: QuarantineBoard,
}

impl Tables {
    /// No table copied or quarantined yet; quarantines are shown on `board` (the admin service's).
    pub fn with_board(board: QuarantineBoard) -> Self {
        Self { board, ..Default::default() }
    }

    pub fn mode(&self, key: &TableKey) -> TableMode {
        if self.quarantined.contains_key(key) {
            return TableMode::Skip;
        }
        self.copying.get(key).copied().unwrap_or(TableMode::Strict)
    }

    /// Sets how a table's changes are applied while it is copied; `None` when it is not (or no longer) copied.
    pub fn set_copy_mode(&mut self, key: &TableKey, mode: Option<TableMode>) {
        match mode {
            Some(mode) => self.copying.insert(key.clone(), mode),
            None => self.copying.remove(key),
        };
    }

    /// Counts a permanent error on `key`; returns how many it has had.
    pub fn failed(&mut self, key: &TableKey) -> u32 {
        let count = self.failures.entry(key.clone()).or_default();
        *count += 1;
        *count
    }

    pub fn quarantine(&mut self, key: TableKey, since: u64, reason: &str) {
        lock(&self.board).insert(key.clone(), (since, reason.to_owned()));
        self.quarantined.insert(key, since);
    }

    /// Lifts a table's quarantine and forgets its failures.
    pub fn lift(&mut self, key: &TableKey) {
        lock(&self.board).remove(key);
        self.quarantined.remove(key);
        self.failures.remove(key);
    }

    /// Lifts every quarantine (a full re-copy begins).
    pub fn lift_all(&mut self) {
        lock(&self.board).clear();
        self.quarantined.clear();
        self.failures.clear();
    }

    pub fn quarantined_count(&self) -> usize {
        self.quarantined.len()
    }

    pub fn board(&self) -> QuarantineBoard {
        self.board.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str) -> TableKey {
        ("s".into(), t.into())
    }

    #[test]
    fn a_quarantine_overrides_the_copy_mode_and_lifting_it_restores_it() {
        let mut tables = Tables::default();
        assert_eq!(tables.mode(&key("a")), TableMode::Strict);
        tables.set_copy_mode(&key("a"), Some(TableMode::Lenient));
        assert_eq!(tables.mode(&key("a")), TableMode::Lenient);
        assert_eq!((tables.failed(&key("a")), tables.failed(&key("a"))), (1, 2));
        tables.quarantine(key("a"), 7, "drift");
        assert_eq!(tables.mode(&key("a")), TableMode::Skip);
        assert_eq!(tables.board().lock().expect("lock").get(&key("a")), Some(&(7, "drift".to_owned())));
        tables.lift(&key("a"));
        assert_eq!(tables.mode(&key("a")), TableMode::Lenient);
        assert_eq!(tables.failed(&key("a")), 1, "failures are forgotten with the quarantine");
        tables.set_copy_mode(&key("a"), None);
        assert_eq!(tables.mode(&key("a")), TableMode::Strict);
    }
}
