//! The check of the journal's tail at open: records of the last segment are verified, and a damaged end (a
//! write cut short, a truncated file) is cut back to the last whole transaction and read again from the primary.
//!
//! Why re-reading is exact: the new resume state is the end of the last kept transaction K, and per GTID domain
//! the GTID of the last record kept in that domain (or the journal's start state). A transaction after that
//! point in a domain either was filtered out (it is filtered out again) or was journaled after K (cut, so it is
//! journaled again, at the same offsets, since the reader assigns offsets in binlog order). Nothing is
//! journaled twice and nothing is skipped. Consumers that were already served the cut records keep their
//! offsets: `Subscribe` accepts offsets up to the highest one ever durable ([`Journal::promised`]) and waits
//! for the journal to reach them.

use common::event::Record;
use common::position::GtidState;

use super::{verified, Journal, JournalError, ResumeState};

/// Records read per batch.
const BATCH: u64 = 1024;

/// What the check found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TailCheck {
    /// Records verified.
    pub checked: u64,
    /// First and last offset removed, if the end was damaged.
    pub cut: Option<(u64, u64)>,
    /// Damaged records with whole ones after them (not cut: repaired from the primary, or refused when read).
    pub damaged: Vec<u64>,
}

impl Journal {
    /// Verifies the records a torn write could have reached (the store's tail); cuts a damaged end back to the
    /// last whole transaction. Blocking.
    pub(super) fn check_tail(&self) -> Result<TailCheck, JournalError> {
        let head = self.head();
        let first = self.first();
        let mut check = TailCheck::default();
        let Some(tail_from) = self.store.tail_from()? else { return Ok(check) };
        // Newest first: the damaged suffix (if any), the whole transaction before it, then the rest of the tail.
        let mut damaged_from = None;
        let mut good: Option<Record> = None;
        let mut in_suffix = true;
        let mut end = head;
        'scan: while end >= first && end > 0 {
            let start = end.saturating_sub(BATCH - 1).max(first);
            let batch = self.store.read(start, end, usize::MAX, usize::MAX)?;
            if batch.is_empty() {
                break;
            }
            for stored in batch.iter().rev() {
                let offset = stored.offset;
                if offset < tail_from && !(in_suffix && damaged_from.is_some()) {
                    break 'scan;
                }
                check.checked += 1;
                match verified(stored) {
                    // A fragment before the damage: its transaction is cut and read again too.
                    Ok((record, _)) if in_suffix && damaged_from.is_some() && record.continues => {
                        damaged_from = Some(offset)
                    }
                    Ok((record, _)) if in_suffix => {
                        good = Some(record);
                        in_suffix = false;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(offset, place = %stored.place, error = %common::lifecycle::error_chain(&e),
                                       "damaged journal record found at open");
                        if in_suffix {
                            damaged_from = Some(offset);
                        } else {
                            // Whole records after it: not a cut-short write. Served as DATA_LOSS until repaired.
                            check.damaged.push(offset);
                        }
                    }
                }
            }
            end = start - 1;
        }
        let Some(from) = damaged_from else { return Ok(check) };
        let Some(kept) = good else {
            return Err(JournalError::Meta(format!(
                "every record from offset {from} to {head} is damaged and none before it is whole: move the journal \
                 directory aside and start a new journal (appliers move to it by GTID; README \"a damaged journal\")"
            )));
        };
        let resume = self.resume_after(&kept)?;
        self.cut_after(kept.offset.0, resume)?;
        check.cut = Some((kept.offset.0 + 1, head));
        Ok(check)
    }

    /// The resume state after record `kept` (see the module docs).
    pub(super) fn resume_after(&self, kept: &Record) -> Result<ResumeState, JournalError> {
        let now = self.resume().unwrap_or_default();
        let start = self.start_gtid()?.unwrap_or_default();
        let mut gtid = GtidState::default();
        let mut open: Vec<u32> = now.gtid.iter().map(|g| g.domain).collect();
        let mut offset = kept.offset.0;
        while !open.is_empty() && offset >= self.first() {
            let Some(record) = self.read(offset, 1, usize::MAX)?.pop() else { break };
            if let Some(g) = record.gtid {
                if let Some(i) = open.iter().position(|d| *d == g.domain) {
                    gtid.advance(g);
                    open.swap_remove(i);
                }
            }
            if offset == 0 {
                break;
            }
            offset -= 1;
        }
        for g in start.iter().filter(|g| open.contains(&g.domain)) {
            gtid.advance(*g);
        }
        Ok(ResumeState { position: kept.source.clone(), gtid, last_offset: kept.offset.0, ..now })
    }
}
