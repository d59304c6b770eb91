//! The journal record codec: a version byte, the CRC32C of what follows, and the bincode 2 encoding of the record.
//!
//! Versions: 1, the first layout; 2 adds each table change's `foreign_key_checks`; 3 adds the record's
//! `continues` (fragments of a large transaction); 4 puts a CRC32C (little-endian) of the encoded record between
//! the version byte and the record, verified on every decode; 5 adds the record's `commit_micros`. Older records
//! (a journal written by an older build) still decode: version 4 with its checksum verified here (but none handed
//! on, since the record no longer encodes as it was written), 1 to 3 without a checksum; version 1 with foreign
//! key checks on, as sessions have them by default, 1 and 2 with `continues` off (older builds journaled every
//! transaction whole), and 1 to 4 with `commit_micros` 0.
//!
//! The checksum covers the record's canonical encoding, so a consumer that decoded the record from another form
//! (the gRPC message) can recompute it with [`checksum`] and know it holds exactly what was journaled.

use serde::Serialize;

use crate::event::{Body, Record};
use crate::position::{BinlogPosition, Gtid, JournalOffset};

/// The layout this build writes. A reader refuses records of a version it does not know.
pub const RECORD_VERSION: u8 = 5;

/// Version byte and checksum before the encoded record.
const HEADER: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("record has layout version {0}, this build reads only version {RECORD_VERSION}: upgrade the binary")]
    UnknownVersion(u8),
    #[error("record cannot be decoded")]
    Decode(#[source] bincode::error::DecodeError),
    #[error("record cannot be encoded")]
    Encode(#[source] bincode::error::EncodeError),
    #[error("record fails its checksum (stored CRC32C {stored:08x}, its bytes give {computed:08x}): it was damaged after it was written")]
    Checksum { stored: u32, computed: u32 },
}

/// CRC32C of everything bincode writes, without holding the encoding.
#[derive(Default)]
struct CrcWriter(u32);

impl bincode::enc::write::Writer for CrcWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0 = crc32c::crc32c_append(self.0, bytes);
        Ok(())
    }
}

/// The checksum a version 4 journal entry of `record` carries (computed without allocating the encoding).
pub fn checksum(record: &Record) -> Result<u32, CodecError> {
    let mut crc = CrcWriter::default();
    bincode::serde::encode_into_writer(RecordParts::from(record), &mut crc, config()).map_err(CodecError::Encode)?;
    Ok(crc.0)
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// A record's parts, borrowed, in the record's field order: encodes exactly as the [`Record`] it describes,
/// so a journal writer need not copy a body (which may be a fragment of many MiB) to encode it.
#[derive(Debug, Serialize)]
pub struct RecordParts<'a> {
    pub offset: JournalOffset,
    pub gtid: Option<Gtid>,
    pub source: &'a BinlogPosition,
    pub commit_unix_seconds: i64,
    pub journaled_unix_ms: i64,
    pub body: &'a Body,
    pub continues: bool,
    pub commit_micros: u32,
}

impl<'a> From<&'a Record> for RecordParts<'a> {
    fn from(r: &'a Record) -> Self {
        Self {
            offset: r.offset,
            gtid: r.gtid,
            source: &r.source,
            commit_unix_seconds: r.commit_unix_seconds,
            journaled_unix_ms: r.journaled_unix_ms,
            body: &r.body,
            continues: r.continues,
            commit_micros: r.commit_micros,
        }
    }
}

pub fn encode(record: &Record) -> Result<Vec<u8>, CodecError> {
    encode_parts(&RecordParts::from(record))
}

/// Records holding more than this are measured before they are encoded, so that the buffer is allocated once
/// at its exact size (growing it would briefly hold the record twice, then keep twice its size).
const MEASURE_BYTES: usize = 1 << 20;

pub fn encode_parts(parts: &RecordParts<'_>) -> Result<Vec<u8>, CodecError> {
    let capacity = if parts.body.mem_size() > MEASURE_BYTES {
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(parts, &mut size, config()).map_err(CodecError::Encode)?;
        HEADER + size.bytes_written
    } else {
        256
    };
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&[RECORD_VERSION, 0, 0, 0, 0]);
    bincode::serde::encode_into_std_write(parts, &mut out, config()).map_err(CodecError::Encode)?;
    let crc = crc32c::crc32c(&out[HEADER..]);
    out[1..HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<Record, CodecError> {
    decode_checked(bytes).map(|(record, _)| record)
}

/// The record and the checksum it was verified against (None for records of versions before 4, which have none).
pub fn decode_checked(bytes: &[u8]) -> Result<(Record, Option<u32>), CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        RECORD_VERSION | 4 => {
            let stored = body.get(..HEADER - 1).ok_or(CodecError::Empty)?;
            let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
            let body = &body[HEADER - 1..];
            let computed = crc32c::crc32c(body);
            if stored != computed {
                return Err(CodecError::Checksum { stored, computed });
            }
            if version == 4 {
                let (record, _): (v4::Record, _) =
                    bincode::serde::decode_from_slice(body, config()).map_err(CodecError::Decode)?;
                return Ok((record.into(), None));
            }
            let record = bincode::serde::decode_from_slice(body, config()).map_err(CodecError::Decode)?.0;
            Ok((record, Some(stored)))
        }
        3 => {
            let (record, _): (v4::Record, _) =
                bincode::serde::decode_from_slice(body, config()).map_err(CodecError::Decode)?;
            Ok((record.into(), None))
        }
        _ => decode_old(version, body).map(|r| (r, None)),
    }
}

/// The record at the start of `bytes` (records lie back to back in a segment file, without framing) and how many
/// bytes it takes. Only layouts 4 and 5 (the checksum tells a record from garbage).
pub fn decode_prefix(bytes: &[u8]) -> Result<(Record, usize), CodecError> {
    let (&version, _) = bytes.split_first().ok_or(CodecError::Empty)?;
    let body = bytes.get(HEADER..).ok_or(CodecError::Empty)?;
    let (record, len): (Record, usize) = match version {
        RECORD_VERSION => bincode::serde::decode_from_slice(body, config()).map_err(CodecError::Decode)?,
        4 => {
            let (record, len): (v4::Record, usize) =
                bincode::serde::decode_from_slice(body, config()).map_err(CodecError::Decode)?;
            (record.into(), len)
        }
        _ => return Err(CodecError::UnknownVersion(version)),
    };
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let computed = crc32c::crc32c(&body[..len]);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok((record, HEADER + len))
}

fn decode_old(version: u8, body: &[u8]) -> Result<Record, CodecError> {
    match version {
        2 => {
            let (record, _): (v2::Record, _) =
                bincode::serde::decode_from_slice(body, config()).map_err(CodecError::Decode)?;
            Ok(record.into())
        }
        1 => {
            let (record, _): (v1::Record, _) =
                bincode::serde::decode_from_slice(body, config()).map_err(CodecError::Decode)?;
            Ok(record.into())
        }
        other => Err(CodecError::UnknownVersion(other)),
    }
}

/// The version 4 layout (and 3, the same without a checksum), read only: the record without `commit_micros`.
mod v4 {
    use serde::Deserialize;

    use crate::event::{self, Body};
    use crate::position::{BinlogPosition, Gtid, JournalOffset};

    #[derive(Deserialize)]
    pub struct Record {
        pub(super) offset: JournalOffset,
        pub(super) gtid: Option<Gtid>,
        pub(super) source: BinlogPosition,
        pub(super) commit_unix_seconds: i64,
        pub(super) journaled_unix_ms: i64,
        pub(super) body: Body,
        pub(super) continues: bool,
    }

    impl From<Record> for event::Record {
        fn from(r: Record) -> Self {
            event::Record {
                offset: r.offset,
                gtid: r.gtid,
                source: r.source,
                commit_unix_seconds: r.commit_unix_seconds,
                journaled_unix_ms: r.journaled_unix_ms,
                body: r.body,
                continues: r.continues,
                commit_micros: 0,
            }
        }
    }
}

/// The version 2 layout, read only: the record without `continues`. Its body type is a parameter so that
/// version 1 (the same record around an older body) reads through it too.
mod v2 {
    use serde::Deserialize;

    use crate::event::{self, Body};
    use crate::position::{BinlogPosition, Gtid, JournalOffset};

    #[derive(Deserialize)]
    pub struct Record<B = Body> {
        offset: JournalOffset,
        gtid: Option<Gtid>,
        source: BinlogPosition,
        commit_unix_seconds: i64,
        journaled_unix_ms: i64,
        body: B,
    }

    impl<B: Into<Body>> From<Record<B>> for event::Record {
        fn from(r: Record<B>) -> Self {
            super::v4::Record {
                offset: r.offset,
                gtid: r.gtid,
                source: r.source,
                commit_unix_seconds: r.commit_unix_seconds,
                journaled_unix_ms: r.journaled_unix_ms,
                body: r.body.into(),
                continues: false,
            }
            .into()
        }
    }
}

/// The version 1 layout, read only: the version 2 record around a body without `foreign_key_checks`.
mod v1 {
    use serde::Deserialize;

    use crate::event::{self, Column, RowChange};

    pub type Record = super::v2::Record<Body>;

    #[derive(Deserialize)]
    pub enum Body {
        Transaction(Vec<TableChange>),
        Ddl { schema: String, statement: String },
    }

    #[derive(Deserialize)]
    pub struct TableChange {
        schema: String,
        table: String,
        columns: Vec<Column>,
        primary_key: Vec<u32>,
        rows: Vec<RowChange>,
    }

    impl From<Body> for event::Body {
        fn from(b: Body) -> Self {
            match b {
                Body::Ddl { schema, statement } => event::Body::Ddl { schema, statement },
                Body::Transaction(changes) => event::Body::Transaction(
                    changes
                        .into_iter()
                        .map(|c| event::TableChange {
                            schema: c.schema,
                            table: c.table,
                            columns: c.columns,
                            primary_key: c.primary_key,
                            rows: c.rows,
                            foreign_key_checks: true,
                        })
                        .collect(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, Column, ColumnType, RowChange, TableChange, Value};
    use crate::position::{BinlogPosition, Gtid, JournalOffset};

    fn sample() -> Record {
        Record {
            offset: JournalOffset(7),
            gtid: Some(Gtid { domain: 0, server: 1, seq: 9 }),
            source: BinlogPosition { file: "binlog.000001".into(), pos: 1234 },
            commit_unix_seconds: 1_700_000_000,
            journaled_unix_ms: 1_700_000_000_123,
            body: Body::Transaction(vec![TableChange {
                schema: "s".into(),
                table: "t".into(),
                columns: vec![Column {
                    name: "id".into(),
                    ty: ColumnType::BigInt,
                    unsigned: true,
                    nullable: false,
                    binlog_type: 8,
                    binlog_meta: 0,
                    collation: 0,
                }],
                primary_key: vec![0],
                rows: vec![
                    RowChange::Insert { after: vec![Value::UInt(u64::MAX)] },
                    RowChange::Update { before: vec![Value::Null], after: vec![Value::Double(-1.5e308)] },
                    RowChange::Delete { before: vec![Value::Text("é😀".into())] },
                ],
                foreign_key_checks: false,
            }]),
            continues: true,
            commit_micros: 654_321,
        }
    }

    #[test]
    fn records_round_trip() {
        let r = sample();
        let bytes = encode(&r).expect("encodes");
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode(&bytes).expect("decodes"), r);
    }

    #[test]
    fn bytes_encode_as_the_byte_sequence_earlier_version_3_records_hold() {
        // Value::Bytes is written as serde bytes (one copy, not byte by byte); bincode writes a length and the
        // bytes either way, so journals written before still decode. Variant 7 is Bytes.
        let bytes: Vec<u8> = (0..=255).collect();
        let as_bytes = bincode::serde::encode_to_vec(Value::Bytes(bytes.clone()), config()).expect("encodes");
        let as_sequence = bincode::serde::encode_to_vec((7u32, bytes), config()).expect("encodes");
        assert_eq!(as_bytes, as_sequence);
    }

    /// The version 1 layout: the same fields without `foreign_key_checks`.
    #[derive(serde::Serialize)]
    struct V1Change<'a> {
        schema: &'a str,
        table: &'a str,
        columns: &'a [Column],
        primary_key: &'a [u32],
        rows: &'a [RowChange],
    }

    #[test]
    fn records_of_the_first_layout_still_decode_with_foreign_key_checks_on() {
        let r = sample();
        let Body::Transaction(changes) = &r.body else { unreachable!("a transaction") };
        let c = &changes[0];
        #[derive(serde::Serialize)]
        enum V1Body<'a> {
            Transaction(Vec<V1Change<'a>>),
        }
        let v1 = (
            r.offset,
            r.gtid,
            &r.source,
            r.commit_unix_seconds,
            r.journaled_unix_ms,
            V1Body::Transaction(vec![V1Change {
                schema: &c.schema,
                table: &c.table,
                columns: &c.columns,
                primary_key: &c.primary_key,
                rows: &c.rows,
            }]),
        );
        let mut bytes = vec![1u8];
        bincode::serde::encode_into_std_write(&v1, &mut bytes, config()).expect("encodes");
        let decoded = decode(&bytes).expect("a version 1 record decodes");
        let mut expected = r.clone();
        if let Body::Transaction(changes) = &mut expected.body {
            changes[0].foreign_key_checks = true;
        }
        expected.continues = false;
        expected.commit_micros = 0;
        assert_eq!(decoded, expected);
    }

    #[test]
    fn records_of_the_second_layout_still_decode_as_whole_transactions() {
        let r = sample();
        let v2 = (r.offset, r.gtid, &r.source, r.commit_unix_seconds, r.journaled_unix_ms, &r.body);
        let mut bytes = vec![2u8];
        bincode::serde::encode_into_std_write(v2, &mut bytes, config()).expect("encodes");
        let decoded = decode(&bytes).expect("a version 2 record decodes");
        assert_eq!(decoded, Record { continues: false, commit_micros: 0, ..r });
    }

    #[test]
    fn records_of_the_fourth_layout_still_decode_and_are_checked_but_hand_on_no_checksum() {
        let r = sample();
        let v4 = (r.offset, r.gtid, &r.source, r.commit_unix_seconds, r.journaled_unix_ms, &r.body, r.continues);
        let encoded = bincode::serde::encode_to_vec(v4, config()).expect("encodes");
        let mut bytes = vec![4u8];
        bytes.extend_from_slice(&crc32c::crc32c(&encoded).to_le_bytes());
        bytes.extend_from_slice(&encoded);
        let expected = Record { commit_micros: 0, ..r };
        assert_eq!(decode_checked(&bytes).expect("a version 4 record decodes"), (expected.clone(), None));
        bytes.push(0xAA);
        assert_eq!(decode_prefix(&bytes).expect("from a segment too").0, expected);
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        assert!(matches!(decode_checked(&bytes[..bytes.len() - 1]), Err(CodecError::Checksum { .. })));
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let mut bytes = encode(&sample()).expect("encodes");
        bytes[0] = 99;
        assert!(matches!(decode(&bytes), Err(CodecError::UnknownVersion(99))));
        assert!(matches!(decode(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode(&[RECORD_VERSION, 0xff, 0xff]), Err(CodecError::Empty)));
        assert!(matches!(decode(&[3, 0xff, 0xff]), Err(CodecError::Decode(_))));
    }

    #[test]
    fn every_flipped_bit_and_a_cut_tail_fail_the_checksum() {
        let good = encode(&sample()).expect("encodes");
        let (_, sum) = decode_checked(&good).expect("decodes");
        assert_eq!(sum, Some(checksum(&sample()).expect("checksum")), "the checksum a consumer recomputes");
        for i in 1..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(matches!(decode(&bad), Err(CodecError::Checksum { .. })), "byte {i} bit {bit}");
            }
        }
        let cut = &good[..good.len() - 7];
        assert!(matches!(decode(cut), Err(CodecError::Checksum { .. })));
        let mut padded = cut.to_vec();
        padded.extend_from_slice(&[0; 7]);
        assert!(matches!(decode(&padded), Err(CodecError::Checksum { .. })), "a gap filled with NULs");
    }

    #[test]
    fn records_back_to_back_decode_one_by_one_until_garbage() {
        let mut a = sample();
        a.offset = JournalOffset(1);
        let mut b = sample();
        b.offset = JournalOffset(2);
        let mut bytes = [encode(&a).expect("a"), encode(&b).expect("b")].concat();
        bytes.extend_from_slice(&[0; 9]);
        let (first, n) = decode_prefix(&bytes).expect("first");
        let (second, m) = decode_prefix(&bytes[n..]).expect("second");
        assert_eq!((first.offset.0, second.offset.0), (1, 2));
        assert!(decode_prefix(&bytes[n + m..]).is_err(), "zeros are not a record");
    }

    #[test]
    fn records_of_the_third_layout_still_decode_without_a_checksum() {
        let r = sample();
        let mut bytes = vec![3u8];
        let v3 = (r.offset, r.gtid, &r.source, r.commit_unix_seconds, r.journaled_unix_ms, &r.body, r.continues);
        bincode::serde::encode_into_std_write(v3, &mut bytes, config()).expect("encodes");
        let expected = Record { commit_micros: 0, ..r };
        assert_eq!(decode_checked(&bytes).expect("a version 3 record decodes"), (expected, None));
    }
}
