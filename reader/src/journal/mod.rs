//! The durable journal: records with dense offsets, the resume position, and consumer acks, over a [`Store`].
//!
//! The store keeps encoded records and metadata (the resume state, which also carries the last offset; the
//! GTID history of the servers followed, used to spot errant transactions on failover; prepared XA changes
//! under `x/…`). A group of records is written with the resume state after it in one [`Store::append`], so a
//! crash keeps both or neither; records past the resume state's last offset (fragments of a transaction whose
//! end never came) are removed at open. The durable head advances only once the store has made the write
//! durable, so no subscriber ever sees a record a crash could take back. Consumers' acked offsets are in the
//! store's consumer space. Trimming deletes records below every consumer's ack that are older than the
//! retention time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::codec::{self, RecordParts};
use common::event::{Body, Record};
use common::position::{BinlogPosition, Gtid, GtidState, JournalOffset};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use crate::journal::error::JournalError;
use crate::journal::store::{Append, MetaChange, Space, Store, Stored, PROMISED_KEY};
use crate::pipeline::{Committed, Xa};

pub mod damage;
pub mod error;
pub mod jetstream_store;
pub mod lease;
pub mod segments;
pub mod sled_store;
pub mod store;
pub mod tail;
pub mod trim;
pub mod writer;

/// The GTID history of the servers the reader followed, as text (see `binlog::failover::History`).
const HISTORY_KEY: &[u8] = b"m/gtid-history";
/// This journal's identity, made at creation: an applier's checkpoint names the journal its offsets are in.
const ID_KEY: &[u8] = b"m/journal-id";
/// The GTID state the journal's first record follows, as text (absent when it began at a file position).
const START_GTID_KEY: &[u8] = b"m/start-gtid";
/// Prepared XA transactions waiting for their XA COMMIT or XA ROLLBACK: `x/` + xid.
const XA_PREFIX: &[u8] = b"x/";

/// Where the reader resumes, written atomically with the records before it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResumeState {
    /// End of the last transaction journaled or filtered out.
    pub position: BinlogPosition,
    /// GTID state after that transaction.
    pub gtid: GtidState,
    /// Identity of the primary the position belongs to.
    pub server_id: u32,
    pub binlog_basename: String,
    /// Offset of the last record written (0 if none yet).
    pub last_offset: u64,
}

fn xa_key(xid: &str) -> Vec<u8> {
    [XA_PREFIX, xid.as_bytes()].concat()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerState {
    pub acked: u64,
    pub last_ack_unix_ms: i64,
}

#[derive(Debug)]
struct Bounds {
    first: u64,
    resume: Option<ResumeState>,
    /// Offset of the last record written: the head, or past it while a fragmented transaction is written.
    staged: u64,
    /// The highest offset ever durable before a cut-back (0 if never cut).
    promised: u64,
}

/// The journal, shared by the writer, the gRPC service and the trimmer. Store calls block briefly; callers on
/// the async runtime use `spawn_blocking` for anything that scans.
pub struct Journal {
    store: Box<dyn Store>,
    bounds: Mutex<Bounds>,
    head: watch::Sender<u64>,
    id: String,
    damage: damage::Damage,
    /// The records written last, as written: subscribers that keep up are served from here, not the store.
    recent: Mutex<Recent>,
    /// Whether this journal object writes (else it follows what another reader writes, see [`Journal::reload`]).
    writer: std::sync::atomic::AtomicBool,
    /// Held through a whole [`Journal::reload`]: a follower's reload and the take-over never interleave.
    reloading: Mutex<()>,
}

/// Bytes of recently written records kept in memory for subscribers that keep up.
const RECENT_BYTES: usize = 4 << 20;

/// The last records written, oldest first, at most [`RECENT_BYTES`] of them (larger records are not kept).
#[derive(Default)]
struct Recent {
    records: std::collections::VecDeque<Stored>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, stored: Stored) {
        if stored.bytes.len() > RECENT_BYTES / 4 {
            // Not kept, and nothing before it may be served from here any more (offsets must follow on).
            self.clear();
            return;
        }
        self.bytes += stored.bytes.len();
        self.records.push_back(stored);
        while self.bytes > RECENT_BYTES {
            match self.records.pop_front() {
                Some(r) => self.bytes -= r.bytes.len(),
                None => break,
            }
        }
    }

    /// Forgets the records after `kept`.
    fn cut_after(&mut self, kept: u64) {
        while self.records.back().is_some_and(|r| r.offset > kept) {
            if let Some(r) = self.records.pop_back() {
                self.bytes -= r.bytes.len();
            }
        }
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// Records `from..=to` as [`Store::read`] gives them, if they are all here from `from` on.
    fn read(&self, from: u64, to: u64, limit: usize, max_bytes: usize) -> Option<Vec<Stored>> {
        let first = self.records.front()?.offset;
        if from < first || from > self.records.back()?.offset {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in self.records.iter().skip((from - first) as usize).take_while(|r| r.offset <= to).take(limit) {
            if !out.is_empty() && bytes + r.bytes.len() > max_bytes {
                break;
            }
            bytes += r.bytes.len();
            out.push(r.clone());
        }
        Some(out)
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The bodies of `txn`'s records: its own, then `xa` (the changes of an XA transaction it commits). A record
/// that continues is followed by row changes, so when the previous record continued (`open`) and this end has
/// none first, an empty row-change body comes first (`marker`).
pub(crate) fn record_bodies<'a>(txn: &'a Committed, xa: &'a [Body], open: bool, marker: &'a Body) -> Vec<&'a Body> {
    let mut all: Vec<&Body> = txn.bodies.iter().chain(xa).collect();
    if open && !txn.continues && !matches!(all.first(), Some(Body::Transaction(_))) {
        all.insert(0, marker);
    }
    all
}

/// The journal bytes of one record of `txn`.
pub(crate) fn encode_record(
    txn: &Committed,
    body: &Body,
    offset: u64,
    journaled_unix_ms: i64,
) -> Result<Vec<u8>, JournalError> {
    let record = RecordParts {
        offset: JournalOffset(offset),
        gtid: txn.gtid,
        source: &txn.source,
        commit_unix_seconds: txn.commit_unix_seconds,
        journaled_unix_ms,
        body,
        continues: txn.continues,
        commit_micros: txn.commit_micros,
    };
    codec::encode_parts(&record).map_err(|source| JournalError::Corrupt { offset, source })
}

/// The record in `stored`, if it passes its checksum and is the offset asked for.
fn verified(stored: &Stored) -> Result<(Record, Option<u32>), JournalError> {
    let offset = stored.offset;
    let (record, sum) = codec::decode_checked(&stored.bytes).map_err(|source| JournalError::Damaged {
        offset,
        place: stored.place.clone(),
        source,
    })?;
    if record.offset.0 != offset {
        return Err(JournalError::Misplaced { offset, found: record.offset.0, place: stored.place.clone() });
    }
    Ok((record, sum))
}

fn bincode_cfg() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode_meta<T: Serialize>(value: &T) -> Result<Vec<u8>, JournalError> {
    bincode::serde::encode_to_vec(value, bincode_cfg()).map_err(|e| JournalError::Meta(e.to_string()))
}

fn decode_meta<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, JournalError> {
    Ok(bincode::serde::decode_from_slice(bytes, bincode_cfg()).map_err(|e| JournalError::Meta(e.to_string()))?.0)
}

fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, JournalError> {
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| JournalError::Meta(what.into()))?))
}

/// Why a consumer cannot be placed in this journal by GTID ([`Journal::locate`]).
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "this journal has no GTID start state (it began at a binlog file position, or was made by a reader \
         older than GTID resumption); re-copy the secondary (replica-applier --resync)"
    )]
    NoStartGtid,
    #[error(
        "this journal starts after the secondary's checkpoint: it begins after {start}, the secondary has applied \
         only up to {applied}. The transactions in between are in no journal: start a new reader (empty journal) \
         with --start-position set to the oldest GTID the appliers need (see the runbook), or re-copy the secondary"
    )]
    StartsAfter { start: String, applied: String },
    #[error(
        "records before offset {first} were already trimmed from this journal, so it cannot prove it holds every \
         transaction the secondary lacks; start a new reader with --start-position at the secondary's GTID, or \
         re-copy the secondary"
    )]
    Trimmed { first: u64 },
    #[error("the record at offset {offset} has no GTID, so it cannot be matched with a checkpoint")]
    NoGtid { offset: u64 },
    #[error(
        "the reader has not read the primary's binlog up to the secondary's checkpoint yet (journal at {read:?}, \
         secondary at {applied}); ask again shortly"
    )]
    NotYet { read: String, applied: String },
}

impl Journal {
    /// Opens (or creates) the journal kept in `dir` by the local store.
    pub fn open(dir: &Path) -> Result<Arc<Self>, JournalError> {
        Self::with_store(Box::new(sled_store::SledStore::open(dir)?))
    }

    /// Opens the journal kept by `store`: removes the fragments of a transaction whose end a crash kept out,
    /// checks the tail for a torn write (see [`tail`]).
    pub fn with_store(store: Box<dyn Store>) -> Result<Arc<Self>, JournalError> {
        Self::build(store, true)
    }

    /// Opens a journal another reader writes (a standby): nothing is removed; [`Journal::reload`] follows it.
    pub fn follower(store: Box<dyn Store>) -> Result<Arc<Self>, JournalError> {
        Self::build(store, false)
    }

    fn build(store: Box<dyn Store>, writer: bool) -> Result<Arc<Self>, JournalError> {
        let resume: Option<ResumeState> = store.resume()?.map(|v| decode_meta(&v)).transpose()?;
        let last = resume.as_ref().map_or(0, |r| r.last_offset);
        let removed = if writer { store.remove_after(last, None, Vec::new())? } else { 0 };
        if removed > 0 {
            tracing::info!(
                records = removed,
                after_offset = last,
                "fragments of an unfinished transaction removed; it is read again"
            );
        }
        let first = store.bounds()?.map_or(last + 1, |(first, _)| first);
        let promised = store.get(Space::Meta, PROMISED_KEY)?.map(|v| decode_u64(&v, "promised")).transpose()?;
        let (head, _) = watch::channel(last);
        let bounds = Bounds { first, resume, staged: last, promised: promised.unwrap_or(0) };
        let id = Self::identity(store.as_ref())?;
        let damage = damage::Damage::default();
        let journal = Self {
            store,
            bounds: Mutex::new(bounds),
            head,
            id,
            damage,
            recent: Mutex::default(),
            writer: std::sync::atomic::AtomicBool::new(writer),
            reloading: Mutex::new(()),
        };
        let check = journal.check_tail()?;
        for offset in &check.damaged {
            journal.damage.report(*offset);
        }
        if let Some((from, to)) = check.cut {
            tracing::warn!(
                from,
                to,
                resume = %journal.resume().map(|r| format!("{} {}", r.position, r.gtid)).unwrap_or_default(),
                "the journal's end was damaged (a write cut short or a truncated segment): those records were \
                 removed and are read again from the primary"
            );
        }
        Ok(Arc::new(journal))
    }

    /// Takes in what another writer of a shared store wrote: the resume state and the head follow it. With
    /// `take_over`, this reader becomes the writer: the fragments of a transaction the previous writer did not
    /// finish are removed (this reader reads it again). Blocking.
    pub fn reload(&self, take_over: bool) -> Result<(), JournalError> {
        use std::sync::atomic::Ordering;
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        // Once this reader writes, its own state is the truth: a follower's reload (a late Subscribe of the
        // standby it was) must not move it back. Checked under the lock: a take-over sets it before releasing it.
        if !take_over && self.writer.load(Ordering::Acquire) {
            return Ok(());
        }
        if take_over {
            self.store.take_over()?;
        } else {
            self.store.refresh()?;
        }
        self.recent().clear();
        let resume: Option<ResumeState> = self.store.resume()?.map(|v| decode_meta(&v)).transpose()?;
        let last = resume.as_ref().map_or(0, |r| r.last_offset);
        if take_over {
            let removed = self.store.remove_after(last, None, Vec::new())?;
            if removed > 0 {
                tracing::info!(
                    records = removed,
                    after_offset = last,
                    "fragments of an unfinished transaction removed; it is read again"
                );
            }
        }
        let first = self.store.bounds()?.map_or(last + 1, |(first, _)| first);
        let mut b = self.bounds();
        *b = Bounds { first, resume, staged: last, promised: b.promised };
        if self.head() != last {
            self.head.send_replace(last);
        }
        if take_over {
            self.writer.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// How many copies of the journal there are now (one for a local journal). Blocking.
    pub fn copies(&self) -> store::Copies {
        self.store.copies()
    }

    /// Which store keeps the journal ("sled", …).
    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Removes every record after `kept` and makes `resume` the resume state (see [`tail`]). Blocking.
    fn cut_after(&self, kept: u64, resume: ResumeState) -> Result<(), JournalError> {
        let mut b = self.bounds();
        let promised = b.promised.max(self.head());
        let meta = vec![(PROMISED_KEY.to_vec(), Some(promised.to_be_bytes().to_vec()))];
        self.store.remove_after(kept, Some(encode_meta(&resume)?), meta)?;
        self.recent().cut_after(kept);
        *b = Bounds { first: b.first.min(kept + 1), resume: Some(resume), staged: kept, promised };
        self.head.send_replace(kept);
        Ok(())
    }

    /// The highest offset a consumer may ask for: the head, or the last offset before the journal's end was cut
    /// back (those records are journaled again as the reader re-reads them).
    pub fn promised(&self) -> u64 {
        self.bounds().promised.max(self.head())
    }

    /// The journal's identity, made (random, 128 bits) the first time a journal is opened.
    fn identity(store: &dyn Store) -> Result<String, JournalError> {
        if let Some(v) = store.get(Space::Meta, ID_KEY)? {
            return String::from_utf8(v).map_err(|e| JournalError::Meta(format!("journal id: {e}")));
        }
        let id = format!("{:032x}", rand::random::<u128>());
        store.put(Space::Meta, ID_KEY, id.as_bytes(), true)?;
        Ok(id)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The GTIDs saved by [`Journal::save_history`] (empty if never saved).
    pub fn history(&self) -> Result<Vec<Gtid>, JournalError> {
        let Some(v) = self.store.get(Space::Meta, HISTORY_KEY)? else { return Ok(Vec::new()) };
        let text = std::str::from_utf8(&v).map_err(|e| JournalError::Meta(format!("GTID history: {e}")))?;
        text.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().map_err(|e| JournalError::Meta(format!("GTID history: {e}"))))
            .collect()
    }

    /// Saves the GTID history (the last GTID per domain and server id of every server followed). Blocking.
    pub fn save_history(&self, gtids: &[Gtid]) -> Result<(), JournalError> {
        let text = gtids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        self.store.put(Space::Meta, HISTORY_KEY, text.as_bytes(), true)
    }

    /// The GTID state the first record follows (see [`Journal::set_start_gtid`]).
    pub fn start_gtid(&self) -> Result<Option<GtidState>, JournalError> {
        let Some(v) = self.store.get(Space::Meta, START_GTID_KEY)? else { return Ok(None) };
        let text = std::str::from_utf8(&v).map_err(|e| JournalError::Meta(format!("start GTID: {e}")))?;
        text.parse().map(Some).map_err(|e| JournalError::Meta(format!("start GTID: {e}")))
    }

    /// Records, once, the GTID state the source starts an empty journal from. Blocking.
    pub fn set_start_gtid(&self, state: &GtidState) -> Result<(), JournalError> {
        if self.head() > 0 || self.store.get(Space::Meta, START_GTID_KEY)?.is_some() {
            return Ok(());
        }
        self.store.put(Space::Meta, START_GTID_KEY, state.to_string().as_bytes(), true)
    }

    /// Where a consumer whose secondary has applied exactly the transactions in `applied` continues in this
    /// journal: the first offset whose transaction is not in `applied`. Refused unless the journal provably
    /// holds every transaction after `applied`: it must start at or before `applied` in every domain and be
    /// whole (nothing trimmed). Blocking; reads records from the first until it finds one.
    pub fn locate(&self, applied: &GtidState) -> Result<u64, LocateError> {
        let start = self.start_gtid()?.ok_or(LocateError::NoStartGtid)?;
        let behind = start.iter().any(|s| applied.iter().find(|a| a.domain == s.domain).is_none_or(|a| a.seq < s.seq));
        if behind {
            return Err(LocateError::StartsAfter { start: start.to_string(), applied: applied.to_string() });
        }
        let first = self.first();
        if first > 1 {
            return Err(LocateError::Trimmed { first });
        }
        // The head and the state the source has read through, together: when every record is in `applied`,
        // the answer is the next offset only once the source has read past `applied` (else the transactions
        // between would come later, and be applied twice).
        let (head, resume) = self.durable();
        for offset in first..=head {
            let Some(record) = self.read(offset, 1, usize::MAX)?.into_iter().next() else { break };
            let gtid = record.gtid.ok_or(LocateError::NoGtid { offset })?;
            if applied.iter().find(|a| a.domain == gtid.domain).is_none_or(|a| a.seq < gtid.seq) {
                return Ok(offset);
            }
        }
        let read = resume.map(|r| r.gtid).unwrap_or_default();
        let past = applied.iter().all(|a| read.iter().any(|r| r.domain == a.domain && r.seq >= a.seq));
        if past {
            Ok(head + 1)
        } else {
            Err(LocateError::NotYet { read: read.to_string(), applied: applied.to_string() })
        }
    }

    /// Forgets the fragments of a transaction whose connection broke before its end (never served: they are
    /// past the head); the source reads the transaction again from its start. Blocking.
    pub fn discard_unfinished(&self) -> Result<(), JournalError> {
        let mut b = self.bounds();
        let head = self.head();
        if b.staged == head {
            return Ok(());
        }
        let removed = self.store.remove_after(head, None, Vec::new())?;
        self.recent().cut_after(head);
        tracing::info!(
            records = removed,
            after_offset = head,
            "fragments of an unfinished transaction removed; it is read again"
        );
        b.staged = head;
        Ok(())
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bounds(&self) -> MutexGuard<'_, Bounds> {
        // A panic while holding this lock leaves the bounds consistent with the store (they are set after writes).
        self.bounds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The resume state of the last durable write, if anything was ever written.
    pub fn resume(&self) -> Option<ResumeState> {
        self.bounds().resume.clone()
    }

    /// The last durable record's offset and the resume state written with it, read together (they belong to
    /// the same write, whatever the writer does meanwhile).
    pub fn durable(&self) -> (u64, Option<ResumeState>) {
        let b = self.bounds();
        (self.head(), b.resume.clone())
    }

    /// Offset of the last durable record (0 if none).
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    pub fn first(&self) -> u64 {
        self.bounds().first
    }

    pub fn bytes(&self) -> u64 {
        self.store.bytes()
    }

    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Writes committed transactions and the resume state after the last one in one atomic store write, then
    /// publishes the new head. Fragments of a transaction that goes on (`continues`) are written too, but
    /// neither the head nor the resume state moves past them: they become visible with the write that holds
    /// the transaction's end, and a crash before it removes them (see [`Journal::with_store`]). Blocking.
    pub fn append(&self, batch: Vec<Committed>) -> Result<(), JournalError> {
        if batch.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        // Only the writer appends, so the offsets read here stay ours until the batch is written.
        let staged = self.bounds().staged;
        let mut offset = staged;
        // Whether the last record written continues (a fragment waits for the rest of its transaction).
        let mut open = offset > self.head();
        let mut meta = Vec::new();
        let mut records = Vec::new();
        // The last complete transaction of the batch and the offset of its last record.
        let mut complete: Option<(&Committed, u64)> = None;
        // XA changes prepared earlier in this same batch (not in the store yet).
        let mut xa_staged: HashMap<String, Option<Vec<Body>>> = HashMap::new();
        for txn in &batch {
            let bodies = self.stage_xa(txn, &mut meta, &mut xa_staged)?;
            let marker = Body::Transaction(Vec::new());
            for body in record_bodies(txn, &bodies, open, &marker) {
                offset += 1;
                records.push(encode_record(txn, body, offset, now)?);
            }
            if txn.continues {
                open |= !txn.bodies.is_empty();
            } else {
                open = false;
                complete = Some((txn, offset));
            }
        }
        let resume = complete.map(|(txn, last_offset)| ResumeState {
            position: txn.source.clone(),
            gtid: txn.gtid_state.clone(),
            server_id: txn.server_id,
            binlog_basename: txn.binlog_basename.clone(),
            last_offset,
        });
        let encoded = resume.as_ref().map(|r| Ok::<_, JournalError>((r.last_offset, encode_meta(r)?))).transpose()?;
        self.store.append(Append {
            first: staged + 1,
            records: &records,
            journaled_unix_ms: now,
            resume: encoded,
            meta,
        })?;
        {
            let mut recent = self.recent();
            for (i, bytes) in records.into_iter().enumerate() {
                let place = "the reader's memory (written last)".to_owned();
                recent.push(Stored { offset: staged + 1 + i as u64, bytes, journaled_unix_ms: now, place });
            }
        }
        // Published together, once durable: a reader of `durable()` never sees a resume position whose
        // transaction is not at or below the head yet.
        let mut b = self.bounds();
        b.staged = offset;
        if let Some(resume) = resume {
            let head = resume.last_offset;
            b.resume = Some(resume);
            self.head.send_replace(head);
        }
        Ok(())
    }

    /// Stages an XA step in `meta`: a PREPARE's changes are kept under its xid, a COMMIT returns them (from
    /// this batch or the store) to be journaled now, a ROLLBACK forgets them. `staged` holds what earlier
    /// transactions of the same batch prepared or ended.
    fn stage_xa(
        &self,
        txn: &Committed,
        meta: &mut Vec<MetaChange>,
        staged: &mut HashMap<String, Option<Vec<Body>>>,
    ) -> Result<Vec<Body>, JournalError> {
        match &txn.xa {
            None => Ok(Vec::new()),
            Some(Xa::Prepare { xid, bodies: prepared }) => {
                let encoded = bincode::serde::encode_to_vec(prepared, bincode_cfg())
                    .map_err(|e| JournalError::Meta(e.to_string()))?;
                meta.push((xa_key(xid), Some(encoded)));
                staged.insert(xid.clone(), Some(prepared.clone()));
                Ok(Vec::new())
            }
            Some(Xa::Commit { xid }) => {
                let prepared = match staged.insert(xid.clone(), None) {
                    Some(Some(b)) => b,
                    Some(None) => return Err(JournalError::UnknownXa(xid.clone())),
                    None => match self.store.get(Space::Meta, &xa_key(xid))? {
                        Some(v) => {
                            bincode::serde::decode_from_slice(&v, bincode_cfg())
                                .map_err(|e| JournalError::Meta(e.to_string()))?
                                .0
                        }
                        None => return Err(JournalError::UnknownXa(xid.clone())),
                    },
                };
                meta.push((xa_key(xid), None));
                Ok(prepared)
            }
            Some(Xa::Rollback { xid }) => {
                staged.insert(xid.clone(), None);
                meta.push((xa_key(xid), None));
                Ok(Vec::new())
            }
        }
    }

    /// Up to `limit` durable records from `from`, stopping once `max_bytes` of encoded records are read
    /// (always at least one). Blocking.
    pub fn read(&self, from: u64, limit: usize, max_bytes: usize) -> Result<Vec<Record>, JournalError> {
        Ok(self.read_checked(from, limit, max_bytes)?.into_iter().map(|(r, _)| r).collect())
    }

    /// [`Journal::read`] with each record's verified checksum (None for records written before checksums).
    /// A record that fails its checksum, or is not the offset the index says, is never returned: the records
    /// before it are, and it is the error once it comes first.
    pub fn read_checked(
        &self,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Record, Option<u32>)>, JournalError> {
        let head = self.head();
        let first = self.first();
        if from < first || from > head + 1 {
            return Err(JournalError::OutOfRange { offset: from, first, last: head });
        }
        if from > head {
            return Ok(Vec::new());
        }
        let cached = self.recent().read(from, head, limit, max_bytes);
        let raw = match cached {
            Some(raw) => raw,
            None => self.store.read(from, head, limit, max_bytes)?,
        };
        // The records before a damaged one are served; the damaged one is an error once it comes first.
        let mut out = Vec::with_capacity(raw.len());
        for stored in &raw {
            match verified(stored) {
                Ok(r) => out.push(r),
                Err(e) => {
                    if matches!(e, JournalError::Damaged { .. }) {
                        self.damage.report(stored.offset);
                    }
                    if out.is_empty() {
                        return Err(e);
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    /// When the record at `offset` was journaled, if it is retained.
    pub fn journaled_unix_ms(&self, offset: u64) -> Option<i64> {
        self.store.journaled_unix_ms(offset)
    }

    fn valid_name(name: &str) -> Result<(), JournalError> {
        if name.is_empty() || name.len() > 128 {
            return Err(JournalError::BadConsumerName(name.to_owned()));
        }
        Ok(())
    }

    pub fn consumer(&self, name: &str) -> Result<Option<ConsumerState>, JournalError> {
        self.store.get(Space::Consumers, name.as_bytes())?.map(|v| decode_meta(&v)).transpose()
    }

    fn put_consumer(&self, name: &str, state: ConsumerState) -> Result<(), JournalError> {
        self.store.put(Space::Consumers, name.as_bytes(), &encode_meta(&state)?, false)
    }

    /// Registers `name` as having applied everything before `from` if it is new; returns its state.
    pub fn register(&self, name: &str, from: u64) -> Result<ConsumerState, JournalError> {
        Self::valid_name(name)?;
        if let Some(s) = self.consumer(name)? {
            return Ok(s);
        }
        let state = ConsumerState { acked: from.saturating_sub(1), last_ack_unix_ms: 0 };
        self.put_consumer(name, state)?;
        Ok(state)
    }

    /// Monotonic and idempotent: an ack below the current one changes nothing.
    pub fn ack(&self, name: &str, offset: u64) -> Result<u64, JournalError> {
        Self::valid_name(name)?;
        let head = self.promised();
        if offset > head {
            return Err(JournalError::OutOfRange { offset, first: self.first(), last: head });
        }
        let current = self.consumer(name)?.ok_or_else(|| JournalError::UnknownConsumer(name.to_owned()))?;
        let acked = current.acked.max(offset);
        self.put_consumer(name, ConsumerState { acked, last_ack_unix_ms: now_ms() })?;
        Ok(acked)
    }

    pub fn remove_consumer(&self, name: &str) -> Result<bool, JournalError> {
        self.store.remove(Space::Consumers, name.as_bytes())
    }

    pub fn consumers(&self) -> Result<Vec<(String, ConsumerState)>, JournalError> {
        self.store
            .scan(Space::Consumers, b"")?
            .into_iter()
            .map(|(k, v)| Ok((String::from_utf8_lossy(&k).into_owned(), decode_meta(&v)?)))
            .collect()
    }

    /// Deletes records every consumer has acked that were journaled more than `retention` ago, at most
    /// `max` per call. Returns how many were deleted. Blocking.
    pub fn trim(&self, retention: Duration, max: usize) -> Result<usize, JournalError> {
        let head = self.head();
        let min_acked = self.consumers()?.iter().map(|(_, s)| s.acked).min().unwrap_or(head).min(head);
        let cutoff = now_ms() - retention.as_millis() as i64;
        let first = self.first();
        if first > min_acked {
            return Ok(0);
        }
        let removed = self.store.trim(min_acked, cutoff, max)?;
        if removed > 0 {
            let mut b = self.bounds();
            b.first = self.store.bounds()?.map_or(head + 1, |(first, _)| first).max(b.first);
        }
        Ok(removed)
    }

    pub fn flush(&self) -> Result<(), JournalError> {
        self.store.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(n: usize, pos: u64) -> Committed {
        Committed {
            gtid: None,
            source: BinlogPosition { file: "binlog.000001".into(), pos },
            commit_unix_seconds: 0,
            commit_micros: 0,
            bodies: (0..n).map(|i| Body::Ddl { schema: "s".into(), statement: format!("stmt {i}") }).collect(),
            gtid_state: GtidState::default(),
            server_id: 1,
            binlog_basename: "binlog".into(),
            xa: None,
            continues: false,
        }
    }

    #[test]
    fn xa_changes_are_held_until_commit_and_dropped_on_rollback() {
        for place in Place::all() {
            xa_changes_are_held_until_commit_and_dropped_on_rollback_in(place.open());
        }
    }

    fn xa_changes_are_held_until_commit_and_dropped_on_rollback_in(j: Arc<Journal>) {
        let with = |xa| Committed { xa: Some(xa), ..committed(0, 10) };
        let body = Body::Ddl { schema: "s".into(), statement: "prepared".into() };
        j.append(vec![with(Xa::Prepare { xid: "a".into(), bodies: vec![body.clone()] })]).expect("prepare a");
        assert_eq!(j.head(), 0, "a prepared transaction is not a record yet");
        j.append(vec![
            with(Xa::Prepare { xid: "b".into(), bodies: vec![body.clone()] }),
            with(Xa::Rollback { xid: "b".into() }),
            with(Xa::Commit { xid: "a".into() }),
        ])
        .expect("rollback b, commit a");
        assert_eq!(j.head(), 1);
        assert_eq!(j.read(1, 10, usize::MAX).expect("read")[0].body, body);
        assert!(matches!(j.append(vec![with(Xa::Commit { xid: "b".into() })]), Err(JournalError::UnknownXa(_))));
    }

    #[test]
    fn offsets_are_dense_and_survive_reopen() {
        for place in Place::all() {
            {
                let j = place.open();
                j.append(vec![committed(2, 100), committed(0, 150), committed(1, 200)]).expect("append");
                assert_eq!(j.head(), 3);
                assert_eq!(j.resume().expect("resume").position.pos, 200);
            }
            offsets_are_dense_and_survive_reopen_in(place.open());
        }
    }

    fn offsets_are_dense_and_survive_reopen_in(j: Arc<Journal>) {
        assert_eq!(j.head(), 3);
        let recs = j.read(1, 10, usize::MAX).expect("read");
        assert_eq!(recs.iter().map(|r| r.offset.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(matches!(j.read(5, 1, usize::MAX), Err(JournalError::OutOfRange { .. })));
    }

    fn with_gtid(seq: u64, pos: u64) -> Committed {
        let gtid = common::position::Gtid { domain: 0, server: 1, seq };
        let mut state = GtidState::default();
        state.advance(gtid);
        Committed { gtid: Some(gtid), gtid_state: state, ..committed(1, pos) }
    }

    fn segment_file(dir: &Path) -> std::path::PathBuf {
        dir.join("segments").join(format!("{:016}.seg", 1))
    }

    #[test]
    fn a_cut_short_end_is_removed_and_the_resume_state_goes_back_to_the_last_whole_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let j = Journal::open(dir.path()).expect("open");
            j.append((1..=4).map(|i| with_gtid(i, i * 100)).collect()).expect("append");
        }
        let seg = segment_file(dir.path());
        let len = std::fs::metadata(&seg).expect("segment").len();
        std::fs::OpenOptions::new().write(true).open(&seg).expect("open").set_len(len - 7).expect("truncate");
        let j = reopen(dir.path());
        assert_eq!(j.head(), 3, "the torn record is gone");
        let resume = j.resume().expect("resume");
        assert_eq!((resume.position.pos, resume.gtid.to_string(), resume.last_offset), (300, "0-1-3".into(), 3));
        assert_eq!(j.promised(), 4, "a consumer that had offset 4 may still ask for it");
        assert_eq!(j.read(1, 10, usize::MAX).expect("read").len(), 3);
        // The re-read transaction is journaled at the same offset.
        j.append(vec![with_gtid(4, 400)]).expect("append again");
        assert_eq!(j.read(4, 1, usize::MAX).expect("read")[0].source.pos, 400);
        drop(j);
        assert_eq!(reopen(dir.path()).head(), 4);
    }

    #[test]
    fn a_damaged_record_inside_the_journal_is_never_served_and_the_ones_before_it_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loc = {
            let j = Journal::open(dir.path()).expect("open");
            j.append((1..=3).map(|i| with_gtid(i, i * 100)).collect()).expect("append");
            // The segment holds records 1, 2, 3 back to back.
            let (one, two) = (j.stored(1).expect("stored"), j.stored(2).expect("stored"));
            (one.bytes.len() as u64, two.bytes.len() as u64)
        };
        let seg = segment_file(dir.path());
        let mut bytes = std::fs::read(&seg).expect("segment");
        bytes[(loc.0 + loc.1 - 3) as usize] ^= 0x20;
        std::fs::write(&seg, bytes).expect("write");
        let j = reopen(dir.path());
        assert_eq!(j.head(), 3, "not cut: whole records follow it");
        let read = j.read(1, 10, usize::MAX).expect("read");
        assert_eq!(read.iter().map(|r| r.offset.0).collect::<Vec<_>>(), vec![1]);
        let err = j.read(2, 10, usize::MAX).expect_err("damaged");
        assert!(matches!(err, JournalError::Damaged { offset: 2, .. }), "{err}");
        assert!(err.to_string().contains("segment 0000000000000001.seg"), "{err}");
        assert_eq!(j.read(3, 10, usize::MAX).expect("read")[0].offset.0, 3);
    }

    /// Where a test journal is kept: the local store, or a stream on a nats-server of the test's own.
    enum Place {
        Sled(tempfile::TempDir),
        #[allow(dead_code)] // the server: kept running while the place is
        JetStream(jetstream_store::test_server::Nats, jetstream_store::JetStreamConfig),
    }

    impl Place {
        fn all() -> Vec<Place> {
            let nats = jetstream_store::test_server::Nats::start();
            let config = nats.config("unit");
            vec![Place::Sled(tempfile::tempdir().expect("tempdir")), Place::JetStream(nats, config)]
        }

        /// Opens the journal (again: a reopen sees what a restarted reader would).
        fn open(&self) -> Arc<Journal> {
            match self {
                Place::Sled(dir) => reopen(dir.path()),
                Place::JetStream(_, config) => {
                    let store = jetstream_store::JetStreamStore::open(config).expect("open the JetStream store");
                    Journal::with_store(Box::new(store)).expect("open")
                }
            }
        }
    }

    fn reopen(dir: &Path) -> Arc<Journal> {
        // sled's flusher thread may hold the directory's lock for a moment after the journal is dropped.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Journal::open(dir) {
                Ok(j) => return j,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "reopen: {e:?}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn rows(n: usize) -> Body {
        Body::Transaction(
            (0..n)
                .map(|i| common::event::TableChange {
                    schema: "s".into(),
                    table: format!("t{i}"),
                    columns: vec![],
                    primary_key: vec![],
                    rows: vec![],
                    foreign_key_checks: true,
                })
                .collect(),
        )
    }

    #[test]
    fn fragments_stay_invisible_until_their_transaction_ends_and_a_crash_drops_them() {
        for place in Place::all() {
            fragments_in(&place);
        }
    }

    fn fragments_in(place: &Place) {
        let fragment = |pos| Committed { continues: true, bodies: vec![rows(1)], ..committed(0, pos) };
        {
            let j = place.open();
            j.append(vec![committed(1, 100)]).expect("a whole transaction");
            j.append(vec![fragment(150), fragment(160)]).expect("two fragments");
            assert_eq!(j.head(), 1, "fragments are not served before their transaction's end");
            assert_eq!(j.resume().expect("resume").position.pos, 100);
            assert_eq!(j.read(1, 10, usize::MAX).expect("read").len(), 1);
        }
        // A crash before the end: the fragments are gone, and the transaction is journaled again from its start.
        let j = place.open();
        assert_eq!(j.head(), 1);
        j.append(vec![fragment(150)]).expect("fragment again");
        j.append(vec![fragment(160), Committed { bodies: vec![], ..committed(0, 200) }]).expect("the end");
        assert_eq!(j.head(), 4, "two fragments and a marker that ends the transaction");
        let recs = j.read(2, 10, usize::MAX).expect("read");
        assert_eq!(
            recs.iter().map(|r| (r.offset.0, r.continues)).collect::<Vec<_>>(),
            [(2, true), (3, true), (4, false)]
        );
        assert_eq!(
            recs[2].body,
            Body::Transaction(vec![]),
            "an end with no changes of its own is marked by an empty one"
        );
        assert_eq!(j.resume().expect("resume").position.pos, 200);
        // An end that starts with a DDL is preceded by the marker too: a continuing record is followed by rows.
        j.append(vec![fragment(250), committed(1, 300)]).expect("fragment then DDL end");
        let recs = j.read(5, 10, usize::MAX).expect("read");
        assert_eq!(recs.iter().map(|r| r.continues).collect::<Vec<_>>(), [true, false, false]);
        assert!(matches!(recs[1].body, Body::Transaction(_)));
        assert!(matches!(recs[2].body, Body::Ddl { .. }));
        drop(j);
        // Opened again: the records written after the dropped fragments are where their offsets say.
        let j = place.open();
        let recs = j.read(1, 10, usize::MAX).expect("read after reopen");
        assert_eq!(recs.iter().map(|r| r.offset.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(recs[6].source.pos, 300);
    }

    #[test]
    fn trimming_waits_for_every_consumer() {
        for place in Place::all() {
            trimming_waits_for_every_consumer_in(place.open());
        }
    }

    fn trimming_waits_for_every_consumer_in(j: Arc<Journal>) {
        j.append(vec![committed(5, 100)]).expect("append");
        j.register("a", 1).expect("register");
        j.register("b", 1).expect("register");
        j.ack("a", 4).expect("ack");
        j.ack("b", 2).expect("ack");
        assert_eq!(j.ack("b", 1).expect("ack below is a no-op"), 2);
        assert_eq!(j.trim(Duration::ZERO, 100).expect("trim"), 2);
        assert_eq!(j.first(), 3);
        assert!(matches!(j.read(2, 1, usize::MAX), Err(JournalError::OutOfRange { .. })));
        assert!(j.remove_consumer("b").expect("remove"));
        assert_eq!(j.trim(Duration::ZERO, 100).expect("trim"), 2);
        assert_eq!(j.first(), 5);
        assert_eq!(j.trim(Duration::from_secs(3600), 100).expect("trim"), 0);
        assert!(matches!(j.ack("a", 9), Err(JournalError::OutOfRange { .. })));
    }
}
