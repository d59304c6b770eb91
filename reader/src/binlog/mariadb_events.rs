//! MariaDB's own binlog events, which mysql_common does not parse: decoded from the raw event body.
//!
//! Layouts (MariaDB `log_event.h`): GTID (162) is `seq_no u64, domain_id u32, flags u8, ...`; GTID_LIST (163)
//! is `count u32 (low 28 bits), then count × (domain u32, server u32, seq u64)`; all little-endian. The GTID's
//! server id is the event header's.

use common::position::Gtid;

/// ROTATE_EVENT (standard).
pub const ROTATE: u8 = 4;
pub const BINLOG_CHECKPOINT: u8 = 161;
pub const GTID: u8 = 162;
pub const GTID_LIST: u8 = 163;
pub const START_ENCRYPTION: u8 = 164;
/// MariaDB's compressed query and rows events (`log_bin_compress=ON`): 165 to 171.
pub const COMPRESSED_FIRST: u8 = 165;
pub const COMPRESSED_LAST: u8 = 171;

/// The GTID flag of a transaction that stands alone: a DDL or other statement with no BEGIN/COMMIT.
pub const FL_STANDALONE: u8 = 0x01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GtidEvent {
    pub gtid: Gtid,
    pub flags: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed MariaDB {0} event")]
pub struct MalformedEvent(&'static str);

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes)
}

pub fn parse_gtid(body: &[u8], server: u32) -> Result<GtidEvent, MalformedEvent> {
    let err = || MalformedEvent("GTID");
    let seq = u64_at(body, 0).ok_or_else(err)?;
    let domain = u32_at(body, 8).ok_or_else(err)?;
    let flags = *body.get(12).ok_or_else(err)?;
    Ok(GtidEvent { gtid: Gtid { domain, server, seq }, flags })
}

pub fn parse_gtid_list(body: &[u8]) -> Result<Vec<Gtid>, MalformedEvent> {
    let err = || MalformedEvent("GTID_LIST");
    let count = u32_at(body, 0).ok_or_else(err)? & 0x0fff_ffff;
    (0..count as usize)
        .map(|i| {
            let at = 4 + i * 16;
            Ok(Gtid {
                domain: u32_at(body, at).ok_or_else(err)?,
                server: u32_at(body, at + 4).ok_or_else(err)?,
                seq: u64_at(body, at + 8).ok_or_else(err)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_events_decode() {
        let mut body = 42u64.to_le_bytes().to_vec();
        body.extend(3u32.to_le_bytes());
        body.push(FL_STANDALONE);
        let e = parse_gtid(&body, 7).expect("valid");
        assert_eq!(e.gtid, Gtid { domain: 3, server: 7, seq: 42 });
        assert_eq!(e.flags, FL_STANDALONE);
        assert!(parse_gtid(&body[..10], 7).is_err());
    }

    #[test]
    fn gtid_lists_decode() {
        let mut body = 2u32.to_le_bytes().to_vec();
        for (d, s, n) in [(0u32, 1u32, 5u64), (1, 2, 9)] {
            body.extend(d.to_le_bytes());
            body.extend(s.to_le_bytes());
            body.extend(n.to_le_bytes());
        }
        let list = parse_gtid_list(&body).expect("valid");
        assert_eq!(list[1], Gtid { domain: 1, server: 2, seq: 9 });
        assert!(parse_gtid_list(&body[..20]).is_err());
    }
}
