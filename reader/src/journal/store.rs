//! The storage beneath the journal: encoded records at dense offsets, the resume state written with them, and
//! small metadata. [`super::sled_store`] keeps them on the local disk (the default).
//!
//! The trait is what a log with a key-value side offers (a local index and files, a replicated stream, a
//! partitioned log): the journal's rules (offsets, fragments, XA, consumers, trimming) live above it, in
//! [`super::Journal`], once for every store.

use super::error::JournalError;

/// The highest offset ever durable, kept when a damaged end is cut back (consumers may hold later offsets).
pub const PROMISED_KEY: &[u8] = b"m/promised";

/// A key and its value, as [`Store::scan`] lists them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One record as the store holds it; the journal verifies it (checksum, offset) before serving it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub journaled_unix_ms: i64,
    /// Where it is, for messages about damage (e.g. `segment 0000000000000001.seg, byte 12, 40 bytes`).
    pub place: String,
}

/// Which keyspace a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// The journal's own metadata (identity, GTID history, prepared XA transactions, …).
    Meta,
    /// Each consumer's acked offset.
    Consumers,
}

/// A metadata change: the value, or None to remove the key.
pub type MetaChange = (Vec<u8>, Option<Vec<u8>>);

/// One durable write of the journal writer.
pub struct Append<'a> {
    /// Offset of `records[0]`; the records' offsets follow without a gap.
    pub first: u64,
    pub records: &'a [Vec<u8>],
    pub journaled_unix_ms: i64,
    /// The resume state after the last whole transaction, with the offset of its last record: durable with
    /// every record up to that offset (after a crash the store holds both or neither).
    pub resume: Option<(u64, Vec<u8>)>,
    /// Metadata changes made durable with the write (before it returns).
    pub meta: Vec<MetaChange>,
}

/// How many copies of the journal there are, as the store sees them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copies {
    /// Copies every record is meant to have.
    pub configured: u32,
    /// Copies that hold everything written so far (0 when the store cannot be asked).
    pub current: u32,
    /// Where the copy that takes writes is (a NATS server's name; empty for a local store).
    pub leader: String,
}

/// Where the journal's bytes are kept. Blocking calls: the journal calls them from blocking threads.
pub trait Store: Send + Sync {
    /// A short name for logs, health and metrics.
    fn kind(&self) -> &'static str;
    /// Offsets of the first and the last record held, if any.
    fn bounds(&self) -> Result<Option<(u64, u64)>, JournalError>;
    /// The resume state of the last durable [`Append`] that carried one (or [`Store::remove_after`]).
    fn resume(&self) -> Result<Option<Vec<u8>>, JournalError>;
    /// Makes the records, the resume state and the metadata changes durable; returns once they are.
    fn append(&self, append: Append<'_>) -> Result<(), JournalError>;
    /// Records `from..=to` in order, at most `limit`, stopping before `max_bytes` (always at least one).
    fn read(&self, from: u64, to: u64, limit: usize, max_bytes: usize) -> Result<Vec<Stored>, JournalError>;
    /// When the record at `offset` was journaled, if it is held.
    fn journaled_unix_ms(&self, offset: u64) -> Option<i64>;
    /// Removes every record after `offset`; with `resume`, that becomes the resume state, in the same write,
    /// with `meta`. Returns how many records were removed.
    fn remove_after(&self, offset: u64, resume: Option<Vec<u8>>, meta: Vec<MetaChange>) -> Result<u64, JournalError>;
    /// Removes records from the first through `through` that were journaled at or before `cutoff_unix_ms`, at most
    /// `max`, oldest first. Returns how many were removed.
    fn trim(&self, through: u64, cutoff_unix_ms: i64, max: usize) -> Result<usize, JournalError>;
    /// Bytes of the records held.
    fn bytes(&self) -> u64;
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, JournalError>;
    /// Writes a key; durable on return when `durable`.
    fn put(&self, space: Space, key: &[u8], value: &[u8], durable: bool) -> Result<(), JournalError>;
    /// Removes a key; true if it was there.
    fn remove(&self, space: Space, key: &[u8]) -> Result<bool, JournalError>;
    /// Every key and value of a space whose key starts with `prefix`.
    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<Entry>, JournalError>;
    /// Writes a re-read record over a damaged one, byte for byte the same length (a repair), durably.
    fn overwrite(&self, offset: u64, bytes: &[u8]) -> Result<(), JournalError>;
    /// The first offset whose record a torn write could have damaged (checked at open), if the store can
    /// tear writes at all.
    fn tail_from(&self) -> Result<Option<u64>, JournalError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), JournalError>;
    /// Reads again what another writer may have changed (a store shared by several readers).
    fn refresh(&self) -> Result<(), JournalError> {
        Ok(())
    }
    /// The journal's copies now (none current when the store does not answer); one for the reader's own disk.
    fn copies(&self) -> Copies {
        Copies { configured: 1, current: 1, leader: String::new() }
    }
    /// Makes this store the only writer from now on: a previous writer that still runs can append nothing more.
    fn take_over(&self) -> Result<(), JournalError> {
        Ok(())
    }
}
