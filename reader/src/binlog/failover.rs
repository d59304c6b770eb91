//! Which servers the reader may follow: a server's binlog must hold every transaction the journal has (no
//! silent loss), and must not hold transactions that none of the journal's primaries ever had (errant GTIDs).
//!
//! MariaDB numbers transactions per replication domain; a server's `@@gtid_binlog_state` names the last
//! sequence number each server id wrote in each domain of its binlog. The journal's resume state has the last
//! GTID of each domain. So a candidate holds everything the journal has when, for each of those GTIDs, it has
//! the same domain and server id at an equal or higher sequence number. An entry of the candidate's state at or
//! below the journal's sequence number in its domain is a transaction the journal should have passed already:
//! if no primary the reader followed ever had it ([`History`]: the `@@gtid_binlog_state` of every server the
//! reader streamed from, merged), it is errant. Transactions after the journal's point are the candidate's to
//! give, whatever their server id (a promoted replica writes with its own). A domain the journal has never seen
//! is not judged: it began after the journal's last transaction.

use std::collections::BTreeMap;
use std::fmt;

use common::position::{Gtid, GtidState, PositionParseError};

/// The last sequence number per (domain, server id) on every server the reader has followed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History(BTreeMap<(u32, u32), u64>);

impl History {
    /// Adds a server's `@@gtid_binlog_state` (or any list of GTIDs), keeping the highest sequence per server.
    pub fn merge(&mut self, gtids: &[Gtid]) {
        for g in gtids {
            let seq = self.0.entry((g.domain, g.server)).or_insert(g.seq);
            *seq = (*seq).max(g.seq);
        }
    }

    fn last(&self, domain: u32, server: u32) -> Option<u64> {
        self.0.get(&(domain, server)).copied()
    }

    pub fn gtids(&self) -> Vec<Gtid> {
        self.0.iter().map(|(&(domain, server), &seq)| Gtid { domain, server, seq }).collect()
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&list(&self.gtids()))
    }
}

/// A comma-separated GTID list in which a domain may appear several times, as `@@gtid_binlog_state`.
pub fn parse_list(s: &str) -> Result<Vec<Gtid>, PositionParseError> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::parse).collect()
}

fn list(gtids: &[Gtid]) -> String {
    gtids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// What is wrong with following a candidate: transactions it lacks, and transactions it should not have.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Ranges of GTIDs the journal has and the candidate's binlog does not.
    pub missing: Vec<String>,
    /// GTIDs the candidate has at or before the journal's point that no followed primary ever had.
    pub errant: Vec<String>,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.errant.is_empty()
    }
}

/// Judges a candidate by its `@@gtid_binlog_state` against the journal's GTID state and history.
pub fn judge(journal: &GtidState, history: &History, candidate: &[Gtid]) -> Verdict {
    let mut verdict = Verdict::default();
    let on_candidate =
        |d: u32, s: u32| candidate.iter().filter(|c| c.domain == d && c.server == s).map(|c| c.seq).max();
    for g in journal.iter() {
        match on_candidate(g.domain, g.server) {
            Some(m) if m >= g.seq => {}
            Some(m) if m + 1 == g.seq => verdict.missing.push(g.to_string()),
            Some(m) => verdict.missing.push(format!("{}-{}-{}..{g}", g.domain, g.server, m + 1)),
            None => verdict.missing.push(format!("{g} and every earlier transaction of server {}", g.server)),
        }
    }
    for c in candidate {
        let Some(point) = journal.iter().find(|g| g.domain == c.domain) else { continue };
        if c.seq > point.seq {
            continue;
        }
        let known = history.last(c.domain, c.server).into_iter().chain((point.server == c.server).then_some(point.seq));
        if known.max().is_some_and(|k| k >= c.seq) {
            continue;
        }
        verdict.errant.push(c.to_string());
    }
    verdict
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "its binlog lacks transactions the journal (and so the secondaries) already has: {} — following it \
                 would lose them silently; if it is a replica still catching up it is tried again",
                self.missing.join(", ")
            ));
        }
        if !self.errant.is_empty() {
            parts.push(format!(
                "it has transactions no primary the journal followed ever had (errant GTIDs): {} — written on it \
                 directly, they are on no secondary; apply them to the secondaries yourself and set \
                 REPLICA_ALLOW_ERRANT_GTIDS=true, or remove it from the candidates",
                self.errant.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(s: &str) -> GtidState {
        s.parse().expect("state")
    }

    fn gtids(s: &str) -> Vec<Gtid> {
        parse_list(s).expect("list")
    }

    #[test]
    fn a_replica_at_or_past_the_journal_is_clean() {
        let mut h = History::default();
        h.merge(&gtids("0-1-90"));
        assert!(judge(&state("0-1-100"), &h, &gtids("0-1-100")).is_clean());
        assert!(judge(&state("0-1-100"), &h, &gtids("0-1-120")).is_clean());
        // Promoted: its own writes follow the journal's point.
        assert!(judge(&state("0-1-100"), &h, &gtids("0-1-100,0-2-130")).is_clean());
    }

    #[test]
    fn a_lagging_replica_is_missing_the_journals_last_transactions() {
        let v = judge(&state("0-1-100,1-1-7"), &History::default(), &gtids("0-1-95,1-1-6"));
        assert_eq!(v.missing, vec!["0-1-96..0-1-100", "1-1-7"]);
        assert!(v.errant.is_empty());
        let v = judge(&state("0-1-100"), &History::default(), &gtids("0-2-300"));
        assert_eq!(v.missing, vec!["0-1-100 and every earlier transaction of server 1"]);
    }

    #[test]
    fn a_local_write_on_a_replica_is_errant_unless_a_followed_primary_had_it() {
        let mut h = History::default();
        h.merge(&gtids("0-1-50"));
        let v = judge(&state("0-1-100"), &h, &gtids("0-1-100,0-3-61"));
        assert_eq!(v.errant, vec!["0-3-61"]);
        assert!(v.missing.is_empty());
        // An earlier failover's server that the old primary also had is history, not errant.
        h.merge(&gtids("0-3-61"));
        assert!(judge(&state("0-1-100"), &h, &gtids("0-1-100,0-3-61")).is_clean());
        // Domains the journal never saw are not judged.
        assert!(judge(&state("0-1-100"), &h, &gtids("0-1-100,0-3-61,5-9-1")).is_clean());
    }

    #[test]
    fn history_keeps_the_highest_sequence_and_round_trips_as_text() {
        let mut h = History::default();
        h.merge(&gtids("0-1-5,0-2-9"));
        h.merge(&gtids("0-1-3,1-1-4"));
        assert_eq!(h.to_string(), "0-1-5,0-2-9,1-1-4");
        let mut back = History::default();
        back.merge(&gtids(&h.to_string()));
        assert_eq!(back, h);
    }
}
