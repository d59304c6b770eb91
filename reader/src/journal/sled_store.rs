//! The local store (default): encoded records in segment files ([`super::segments`]), a sled index of where
//! each one is, the resume state and metadata in the same sled tree, consumers in another.
//!
//! Layout: tree `journal` holds each record's location under `r` + big-endian offset (numeric order), and
//! metadata under `m/…` and `x/…`; tree `consumers` holds each consumer's acked offset. A group of records is
//! made durable in its segment first; then their index entries and the resume state after them are written with
//! one `apply_batch`, so a crash keeps both or neither (segment bytes nobody indexes are cut off at open).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use common::position::JournalOffset;

use super::error::JournalError;
use super::segments::{self, Location, Segments};
use super::store::{Append, Entry, MetaChange, Space, Store, Stored, PROMISED_KEY};

const RESUME_KEY: &[u8] = b"m/resume";
const BYTES_KEY: &[u8] = b"m/bytes";
const RECORD_PREFIX: u8 = b'r';
/// sled page cache size.
const CACHE_BYTES: u64 = 64 << 20;

fn bincode_cfg() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub(super) fn record_key(offset: u64) -> [u8; 9] {
    let mut k = [RECORD_PREFIX; 9];
    k[1..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn offset_of(key: &[u8]) -> Option<u64> {
    key.strip_prefix(&[RECORD_PREFIX]).and_then(JournalOffset::from_key).map(|o| o.0)
}

pub(super) fn location(v: &[u8]) -> Result<Location, JournalError> {
    Ok(bincode::serde::decode_from_slice(v, bincode_cfg()).map_err(|e| JournalError::Meta(e.to_string()))?.0)
}

fn place(loc: &Location) -> String {
    format!("segment {:016}.seg, byte {}, {} bytes", loc.segment, loc.pos, loc.len)
}

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    consumers: sled::Tree,
    segments: Segments,
    bytes: AtomicU64,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Segment bytes no index entry points to are cut off; if whole
    /// records were among them (a crash between the two writes, or an index sled recovered only up to an earlier
    /// point), the highest of their offsets is kept as promised: consumers may have been served them.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        // sled's page cache defaults to 1 GiB; a small cache keeps the reader's memory flat whatever the backlog.
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).cache_capacity(CACHE_BYTES).open()?;
        let tree = db.open_tree("journal")?;
        let consumers = db.open_tree("consumers")?;
        let bytes = match tree.get(BYTES_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| JournalError::Meta("byte count".into()))?),
            None => 0,
        };
        let (index_last, valid_end) = match tree.scan_prefix([RECORD_PREFIX]).next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                let loc = location(&v)?;
                (offset_of(&k).unwrap_or(0), Some((loc.segment, loc.pos + u64::from(loc.len))))
            }
            None => (0, None),
        };
        let unindexed = segments::unindexed(&dir.join("segments"), valid_end)?;
        if let Some((from, to)) = unindexed.filter(|(_, to)| *to > index_last) {
            tracing::warn!(
                from,
                to,
                index_ends_at = index_last,
                "the segments hold records the index does not (a crash between the two writes, or a damaged \
                 index that sled recovered only up to an earlier point): they are read again from the primary"
            );
            let promised = match tree.get(PROMISED_KEY)? {
                Some(v) => {
                    u64::from_be_bytes(v.as_ref().try_into().map_err(|_| JournalError::Meta("promised".into()))?)
                }
                None => 0,
            };
            if to > promised {
                tree.insert(PROMISED_KEY, &to.to_be_bytes())?;
                tree.flush()?;
            }
        }
        let segments = Segments::open(&dir.join("segments"), valid_end)?;
        Ok(Self { db, tree, consumers, segments, bytes: AtomicU64::new(bytes) })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        match space {
            Space::Meta => &self.tree,
            Space::Consumers => &self.consumers,
        }
    }

    fn entry(&self, offset: u64) -> Result<Option<Location>, JournalError> {
        self.tree.get(record_key(offset))?.map(|v| location(&v)).transpose()
    }

    fn stage_meta(batch: &mut sled::Batch, meta: Vec<MetaChange>) {
        for (k, v) in meta {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
    }
}

impl Store for SledStore {
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn bounds(&self) -> Result<Option<(u64, u64)>, JournalError> {
        let first = match self.tree.scan_prefix([RECORD_PREFIX]).next() {
            Some(kv) => offset_of(&kv?.0).ok_or_else(|| JournalError::Meta("bad record key".into()))?,
            None => return Ok(None),
        };
        let last = match self.tree.scan_prefix([RECORD_PREFIX]).next_back() {
            Some(kv) => offset_of(&kv?.0).ok_or_else(|| JournalError::Meta("bad record key".into()))?,
            None => return Ok(None),
        };
        Ok(Some((first, last)))
    }

    fn resume(&self) -> Result<Option<Vec<u8>>, JournalError> {
        Ok(self.tree.get(RESUME_KEY)?.map(|v| v.to_vec()))
    }

    fn append(&self, a: Append<'_>) -> Result<(), JournalError> {
        let locations = self.segments.append(a.records, a.journaled_unix_ms)?;
        let mut batch = sled::Batch::default();
        let mut added = 0u64;
        for (i, loc) in locations.iter().enumerate() {
            added += u64::from(loc.len);
            let v = bincode::serde::encode_to_vec(loc, bincode_cfg()).map_err(|e| JournalError::Meta(e.to_string()))?;
            batch.insert(&record_key(a.first + i as u64), v);
        }
        if let Some((_, resume)) = a.resume {
            batch.insert(RESUME_KEY, resume);
        }
        Self::stage_meta(&mut batch, a.meta);
        let bytes = self.bytes.load(Ordering::Acquire) + added;
        batch.insert(BYTES_KEY, &bytes.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.bytes.store(bytes, Ordering::Release);
        self.db.flush()?;
        Ok(())
    }

    fn read(&self, from: u64, to: u64, limit: usize, max_bytes: usize) -> Result<Vec<Stored>, JournalError> {
        let mut wanted: Vec<(u64, Location)> = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0;
        for kv in self.tree.range(record_key(from)..=record_key(to)).take(limit) {
            let (k, v) = kv?;
            let loc = location(&v)?;
            if !wanted.is_empty() && bytes + loc.len as usize > max_bytes {
                break;
            }
            bytes += loc.len as usize;
            wanted.push((offset_of(&k).unwrap_or(0), loc));
        }
        let locations: Vec<Location> = wanted.iter().map(|(_, l)| *l).collect();
        let raw = self.segments.read(&locations)?;
        Ok(wanted
            .iter()
            .zip(raw)
            .map(|((offset, loc), bytes)| Stored {
                offset: *offset,
                bytes,
                journaled_unix_ms: loc.journaled_unix_ms,
                place: place(loc),
            })
            .collect())
    }

    fn journaled_unix_ms(&self, offset: u64) -> Option<i64> {
        self.entry(offset).ok()?.map(|l| l.journaled_unix_ms)
    }

    fn remove_after(&self, offset: u64, resume: Option<Vec<u8>>, meta: Vec<MetaChange>) -> Result<u64, JournalError> {
        let mut batch = sled::Batch::default();
        let (mut count, mut freed) = (0u64, 0u64);
        let mut first_removed: Option<Location> = None;
        for kv in self.tree.range(record_key(offset + 1)..=record_key(u64::MAX)) {
            let (k, v) = kv?;
            let loc = location(&v)?;
            first_removed.get_or_insert(loc);
            freed += u64::from(loc.len);
            batch.remove(k);
            count += 1;
        }
        if let Some(resume) = resume {
            batch.insert(RESUME_KEY, resume);
        }
        Self::stage_meta(&mut batch, meta);
        let bytes = self.bytes.load(Ordering::Acquire).saturating_sub(freed);
        batch.insert(BYTES_KEY, &bytes.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.bytes.store(bytes, Ordering::Release);
        self.tree.flush()?;
        // The removed records' bytes are garbage; nothing indexed follows them (only the writer appends).
        if let Some(loc) = first_removed {
            self.segments.truncate_to(loc.segment, loc.pos)?;
        }
        Ok(count)
    }

    fn trim(&self, through: u64, cutoff_unix_ms: i64, max: usize) -> Result<usize, JournalError> {
        let mut batch = sled::Batch::default();
        let mut freed = 0u64;
        let mut removed = 0usize;
        let mut new_first = None;
        for kv in self.tree.range(record_key(0)..=record_key(through)).take(max) {
            let (k, v) = kv?;
            let offset = offset_of(&k).unwrap_or(0);
            let loc = location(&v)?;
            if loc.journaled_unix_ms > cutoff_unix_ms {
                break;
            }
            batch.remove(k);
            freed += u64::from(loc.len);
            removed += 1;
            new_first = Some(offset + 1);
        }
        let Some(new_first) = new_first else { return Ok(0) };
        let bytes = self.bytes.load(Ordering::Acquire).saturating_sub(freed);
        batch.insert(BYTES_KEY, &bytes.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.bytes.store(bytes, Ordering::Release);
        // Segments before the first remaining record's are no longer referenced.
        let first_kept = match self.entry(new_first)? {
            Some(loc) => loc.segment,
            None => self.segments.current_segment(),
        };
        self.db.flush()?;
        self.segments.remove_before(first_kept)?;
        Ok(removed)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, JournalError> {
        Ok(self.tree(space).get(key)?.map(|v| v.to_vec()))
    }

    fn put(&self, space: Space, key: &[u8], value: &[u8], durable: bool) -> Result<(), JournalError> {
        let tree = self.tree(space);
        tree.insert(key, value)?;
        if durable {
            tree.flush()?;
        }
        Ok(())
    }

    fn remove(&self, space: Space, key: &[u8]) -> Result<bool, JournalError> {
        Ok(self.tree(space).remove(key)?.is_some())
    }

    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<Entry>, JournalError> {
        self.tree(space)
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn overwrite(&self, offset: u64, bytes: &[u8]) -> Result<(), JournalError> {
        let loc = self.entry(offset)?.ok_or_else(|| JournalError::Meta(format!("offset {offset} is not held")))?;
        if bytes.len() != loc.len as usize {
            return Err(JournalError::Meta(format!("offset {offset}: a re-read record of another length")));
        }
        self.segments.overwrite(&loc, bytes)?;
        Ok(())
    }

    fn tail_from(&self) -> Result<Option<u64>, JournalError> {
        // The records of the last segment: a torn write can only be at its end.
        let Some(last) = self.tree.scan_prefix([RECORD_PREFIX]).next_back() else { return Ok(None) };
        let last_segment = location(&last?.1)?.segment;
        let mut from = None;
        for kv in self.tree.scan_prefix([RECORD_PREFIX]).rev() {
            let (k, v) = kv?;
            if location(&v)?.segment != last_segment {
                break;
            }
            from = offset_of(&k);
        }
        Ok(from)
    }

    fn flush(&self) -> Result<(), JournalError> {
        self.db.flush()?;
        Ok(())
    }
}
