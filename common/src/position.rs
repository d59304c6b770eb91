//! Two coordinate systems: our dense journal offsets and the source's binlog positions and MariaDB GTIDs.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A parse error for positions given by users or read back from storage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct PositionParseError {
    what: &'static str,
    input: String,
    reason: &'static str,
}

impl PositionParseError {
    fn new(what: &'static str, input: &str, reason: &'static str) -> Self {
        Self { what, input: input.to_owned(), reason }
    }
}

/// A binlog file and a byte position in it (the end of the last event consumed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct BinlogPosition {
    pub file: String,
    pub pos: u64,
}

impl BinlogPosition {
    /// Binlog order: by the file's numeric extension (`name.000123`), then by position. Files without a
    /// numeric extension compare by name.
    pub fn binlog_cmp(&self, other: &Self) -> std::cmp::Ordering {
        let seq = |f: &str| f.rsplit_once('.').and_then(|(_, n)| n.parse::<u64>().ok());
        match (seq(&self.file), seq(&other.file)) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.file.cmp(&other.file),
        }
        .then(self.pos.cmp(&other.pos))
    }
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

impl FromStr for BinlogPosition {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (file, pos) =
            s.rsplit_once(':').ok_or_else(|| PositionParseError::new("binlog position", s, "expected FILE:POS"))?;
        if file.is_empty() {
            return Err(PositionParseError::new("binlog position", s, "file name is empty"));
        }
        let pos = pos.parse().map_err(|_| PositionParseError::new("binlog position", s, "POS is not a number"))?;
        Ok(Self { file: file.to_owned(), pos })
    }
}

/// One MariaDB GTID: `domain-server-sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl FromStr for Gtid {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| PositionParseError::new("GTID", s, reason);
        let mut parts = s.trim().splitn(3, '-');
        let mut next = || parts.next().ok_or_else(|| bad("expected DOMAIN-SERVER-SEQUENCE"));
        let domain = next()?.parse().map_err(|_| bad("domain is not a number"))?;
        let server = next()?.parse().map_err(|_| bad("server id is not a number"))?;
        let seq = next()?.parse().map_err(|_| bad("sequence is not a number"))?;
        Ok(Self { domain, server, seq })
    }
}

/// MariaDB GTID state: the last GTID per replication domain, as in `@@gtid_binlog_pos`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GtidState(BTreeMap<u32, Gtid>);

impl GtidState {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records that `gtid` was the last transaction of its domain.
    pub fn advance(&mut self, gtid: Gtid) {
        self.0.insert(gtid.domain, gtid);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Gtid> {
        self.0.values()
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidState {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut state = GtidState::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let gtid: Gtid = part.parse()?;
            if state.0.insert(gtid.domain, gtid).is_some() {
                return Err(PositionParseError::new("GTID list", s, "a domain appears twice"));
            }
        }
        Ok(state)
    }
}

/// Where a reader with an empty journal starts (`--start-position`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// The current end of the primary's binlog.
    Current,
    /// The first event of the oldest binlog file the primary still has.
    Earliest,
    /// An explicit file and position, which must be a transaction boundary.
    File(BinlogPosition),
    /// After the given GTID state.
    Gtid(GtidState),
}

impl FromStr for StartPosition {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        match t {
            "" | "current" | "end" => Ok(Self::Current),
            "earliest" => Ok(Self::Earliest),
            _ if t.contains(':') => t.parse().map(Self::File),
            _ if t.split(',').all(|p| p.trim().split('-').count() == 3) => t.parse().map(Self::Gtid),
            _ => Err(PositionParseError::new(
                "start position",
                s,
                "expected `current`, `earliest`, FILE:POS or a GTID list like 0-1-42",
            )),
        }
    }
}

/// A dense journal offset: the n-th journaled transaction, starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct JournalOffset(pub u64);

impl JournalOffset {
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
    /// Big-endian bytes, so that sled orders keys numerically.
    pub fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
    pub fn from_key(key: &[u8]) -> Option<Self> {
        key.try_into().ok().map(|b| Self(u64::from_be_bytes(b)))
    }
}

impl fmt::Display for JournalOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_positions_order_by_file_number_then_position() {
        let p = |s: &str| s.parse::<BinlogPosition>().expect("valid");
        assert!(p("b.999999:900").binlog_cmp(&p("b.1000000:4")).is_lt());
        assert!(p("b.000002:4").binlog_cmp(&p("b.000001:900")).is_gt());
        assert!(p("b.000002:400").binlog_cmp(&p("b.000002:400")).is_eq());
    }

    #[test]
    fn binlog_position_round_trips() {
        let p: BinlogPosition = "binlog.000042:1234".parse().expect("valid");
        assert_eq!(p, BinlogPosition { file: "binlog.000042".into(), pos: 1234 });
        assert_eq!(p.to_string().parse::<BinlogPosition>(), Ok(p));
        assert!("binlog.000042".parse::<BinlogPosition>().is_err());
        assert!(":4".parse::<BinlogPosition>().is_err());
    }

    #[test]
    fn gtid_state_round_trips_and_advances() {
        let mut s: GtidState = "0-1-42, 1-2-7".parse().expect("valid");
        assert_eq!(s.to_string(), "0-1-42,1-2-7");
        s.advance(Gtid { domain: 0, server: 3, seq: 43 });
        assert_eq!(s.to_string(), "0-3-43,1-2-7");
        assert!("0-1-2,0-1-3".parse::<GtidState>().is_err());
        assert!("0-x-2".parse::<GtidState>().is_err());
        assert!("".parse::<GtidState>().expect("empty is valid").is_empty());
    }

    #[test]
    fn start_position_parses_every_form() {
        assert_eq!("earliest".parse(), Ok(StartPosition::Earliest));
        assert_eq!("current".parse(), Ok(StartPosition::Current));
        assert!(matches!("binlog.000001:4".parse(), Ok(StartPosition::File(_))));
        assert!(matches!("0-1-5".parse(), Ok(StartPosition::Gtid(_))));
        assert!("yesterday".parse::<StartPosition>().is_err());
    }

    #[test]
    fn offsets_sort_numerically_as_keys() {
        let a = JournalOffset(255).to_key();
        let b = JournalOffset(256).to_key();
        assert!(a < b);
        assert_eq!(JournalOffset::from_key(&b), Some(JournalOffset(256)));
    }
}
