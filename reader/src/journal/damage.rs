//! Damaged records: those found by reads and at open, waiting for `binlog::repair` to re-read them from the
//! primary; and the journal's side of a repair: where to re-read from, and putting a record back in place.
//!
//! A record is put back only byte for byte: the re-read transaction is encoded with the damaged record's
//! offset and journaling time, must have the length its index entry says, and every whole record the re-read
//! passes must come out identical to the stored one (so a changed filter or a different binlog is refused,
//! never written). The rewritten bytes are verified by reading them back.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::store::Stored;
use super::{verified, Journal, JournalError, ResumeState};

/// Runs longer than this are not repaired (a journal damaged that widely is better replaced).
const MAX_RUN: u64 = 10_000;

/// Offsets found damaged and not repaired yet.
#[derive(Default)]
pub struct Damage {
    found: Mutex<BTreeSet<u64>>,
    notify: Notify,
}

impl Damage {
    pub fn report(&self, offset: u64) {
        if self.found.lock().unwrap_or_else(|p| p.into_inner()).insert(offset) {
            self.notify.notify_one();
        }
    }
}

/// What a repair reads and checks.
#[derive(Debug, Clone)]
pub struct RepairPlan {
    /// The resume state after the last whole transaction before the damage: the binlog is read from there.
    pub from: ResumeState,
    /// The offset the first re-read record gets.
    pub first_offset: u64,
    /// The damaged records between `first_offset` and `last`.
    pub damaged: BTreeSet<u64>,
    /// Re-read through this offset: one whole record after the damage, which must come out identical (or the
    /// head, when the damage reaches it).
    pub last: u64,
}

impl Journal {
    /// Waits until records are reported damaged; returns them (each once).
    pub async fn damaged(&self) -> Vec<u64> {
        loop {
            let notified = self.damage.notify.notified();
            let taken = std::mem::take(&mut *self.damage.found.lock().unwrap_or_else(|p| p.into_inner()));
            if !taken.is_empty() {
                return taken.into_iter().collect();
            }
            notified.await;
        }
    }

    /// Reports a record as damaged (the repair takes it up).
    pub fn report_damage(&self, offset: u64) {
        self.damage.report(offset);
    }

    /// A record as stored (its bytes, unverified, and when it was journaled).
    pub fn stored(&self, offset: u64) -> Result<Stored, JournalError> {
        let out_of_range = || JournalError::OutOfRange { offset, first: self.first(), last: self.head() };
        let mut found = self.store.read(offset, offset, 1, usize::MAX)?;
        match found.pop() {
            Some(s) if s.offset == offset => Ok(s),
            _ => Err(out_of_range()),
        }
    }

    fn whole(&self, offset: u64) -> Result<Option<common::event::Record>, JournalError> {
        Ok(verified(&self.stored(offset)?).ok().map(|(r, _)| r))
    }

    /// How to repair the damaged record at `offset` and any damaged neighbours; None when it is readable (already
    /// repaired) or no longer retained. Blocking.
    pub fn plan_repair(&self, offset: u64) -> Result<Option<RepairPlan>, JournalError> {
        let (first, head) = (self.first(), self.head());
        if offset < first || offset > head || self.whole(offset)?.is_some() {
            return Ok(None);
        }
        let mut damaged = BTreeSet::from([offset]);
        // Back to the end of the last whole transaction before it.
        let mut before = None;
        let mut o = offset;
        while o > first && offset - o < MAX_RUN {
            o -= 1;
            match self.whole(o)? {
                Some(r) if !r.continues => {
                    before = Some(r);
                    break;
                }
                Some(_) => {}
                None => {
                    damaged.insert(o);
                }
            }
        }
        let (from, first_offset) = match before {
            Some(r) => (self.resume_after(&r)?, r.offset.0 + 1),
            None if first == 1 && o == 1 => match self.start_gtid()? {
                Some(gtid) => (ResumeState { gtid, ..self.resume().unwrap_or_default() }, 1),
                None => return Err(no_start(offset)),
            },
            None => return Err(no_start(offset)),
        };
        // Forward to the first whole record after it.
        let mut last = offset;
        while last < head && last - offset < MAX_RUN {
            last += 1;
            if self.whole(last)?.is_some() {
                break;
            }
            damaged.insert(last);
        }
        if last - first_offset >= MAX_RUN {
            return Err(JournalError::Meta(format!(
                "the damage around offset {offset} spans more than {MAX_RUN} records: start a new journal \
                 (README \"a damaged journal\")"
            )));
        }
        Ok(Some(RepairPlan { from, first_offset, damaged, last }))
    }

    /// Writes a re-read record over the damaged one (same length, see the module docs) and checks that it now
    /// reads whole. Blocking.
    pub fn put_back(&self, offset: u64, bytes: &[u8]) -> Result<(), JournalError> {
        self.store.overwrite(offset, bytes)?;
        verified(&self.stored(offset)?).map(|_| ())
    }
}

fn no_start(offset: u64) -> JournalError {
    JournalError::Meta(format!(
        "no whole transaction before the damaged offset {offset} and no recorded start: the reader cannot tell \
         where to re-read it from (README \"a damaged journal\")"
    ))
}
