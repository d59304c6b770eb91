//! A table's copy as a typed state machine: `Pending` (marked for a re-copy, to be re-created) → `Copying`
//! (chunks placed in key order) → `Done`; `Gone` when the table disappeared from the primary meanwhile.

use common::event::Value;

use crate::table::TableMode;

/// Where a table's copy is. Stored in `replica_meta.copy_state.state` by [`CopyState::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyState {
    /// Marked for a re-copy: re-created from the primary's definition at its boundary, then copied.
    #[default]
    Pending,
    /// Created; chunks are being placed.
    Copying,
    /// Every row copied: applied strictly from now on.
    Done,
    /// No longer on the primary.
    Gone,
}

impl CopyState {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyState::Pending => "pending",
            CopyState::Copying => "copying",
            CopyState::Done => "done",
            CopyState::Gone => "gone",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => CopyState::Pending,
            "copying" => CopyState::Copying,
            "done" => CopyState::Done,
            "gone" => CopyState::Gone,
            _ => return None,
        })
    }

    /// Pending or copying.
    pub fn active(self) -> bool {
        matches!(self, CopyState::Pending | CopyState::Copying)
    }
}

/// How the reader locates a table's rows for chunking (`ListTables` and `ChunkPart.key_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyKind {
    Primary,
    /// A unique key on NOT NULL columns.
    Unique,
    /// No usable key: the table is read whole, in one snapshot.
    #[default]
    None,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Primary => "primary",
            KeyKind::Unique => "unique",
            KeyKind::None => "none",
        }
    }

    /// The reader's name for it; anything else (or empty) means no usable key.
    pub fn parse(s: &str) -> Self {
        match s {
            "primary" => KeyKind::Primary,
            "unique" => KeyKind::Unique,
            _ => KeyKind::None,
        }
    }
}

/// One table's copy progress, as `GetStatus` shows it and `replica_meta.copy_state` keeps it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    pub state: CopyState,
    pub key_kind: KeyKind,
    /// Key of the last row copied; None before the first chunk.
    pub last_key: Option<Vec<Value>>,
    pub rows_copied: u64,
    pub rows_estimated: u64,
    pub chunks: u64,
}

impl Progress {
    /// A copy about to start (or a table marked for one).
    pub fn start(state: CopyState, key_kind: KeyKind, rows_estimated: u64) -> Self {
        Self { state, key_kind, rows_estimated, ..Self::default() }
    }

    /// How the apply loop treats the table's records in this state; None when it is not being copied.
    pub fn mode(&self) -> Option<TableMode> {
        match self.state {
            CopyState::Pending => Some(TableMode::Skip),
            CopyState::Copying if self.key_kind == KeyKind::None => Some(TableMode::Skip),
            CopyState::Copying => Some(TableMode::Lenient),
            CopyState::Done | CopyState::Gone => None,
        }
    }
}

/// What a placed chunk changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkOutcome {
    pub last_key: Option<Vec<Value>>,
    pub rows: u64,
    /// The chunk reached the end of the table.
    pub end: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_a_table_are_skipped_until_it_can_be_copied_by_key_and_lenient_while_it_is() {
        let p = |state, key_kind| Progress::start(state, key_kind, 0).mode();
        assert_eq!(p(CopyState::Pending, KeyKind::Primary), Some(TableMode::Skip));
        assert_eq!(p(CopyState::Copying, KeyKind::Primary), Some(TableMode::Lenient));
        assert_eq!(p(CopyState::Copying, KeyKind::Unique), Some(TableMode::Lenient));
        assert_eq!(p(CopyState::Copying, KeyKind::None), Some(TableMode::Skip), "read whole: skipped until placed");
        assert_eq!(p(CopyState::Done, KeyKind::None), None);
        assert_eq!(p(CopyState::Gone, KeyKind::Primary), None);
    }

    #[test]
    fn states_and_key_kinds_round_trip_through_their_stored_names() {
        for s in [CopyState::Pending, CopyState::Copying, CopyState::Done, CopyState::Gone] {
            assert_eq!(CopyState::parse(s.as_str()), Some(s));
        }
        assert_eq!(CopyState::parse("copied"), None);
        for k in [KeyKind::Primary, KeyKind::Unique, KeyKind::None] {
            assert_eq!(KeyKind::parse(k.as_str()), k);
        }
        assert_eq!(KeyKind::parse(""), KeyKind::None);
    }
}
