//! The journal record codec: a version byte followed by the bincode 2 encoding of the record.

use crate::event::Record;

/// The only record layout so far. A reader refuses records of a version it does not know.
pub const RECORD_VERSION: u8 = 1;

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
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode(record: &Record) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    out.push(RECORD_VERSION);
    bincode::serde::encode_into_std_write(record, &mut out, config()).map_err(CodecError::Encode)?;
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<Record, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != RECORD_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (record, _) = bincode::serde::decode_from_slice(body, config()).map_err(CodecError::Decode)?;
    Ok(record)
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
            }]),
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
    fn unknown_versions_and_garbage_are_refused() {
        let mut bytes = encode(&sample()).expect("encodes");
        bytes[0] = 99;
        assert!(matches!(decode(&bytes), Err(CodecError::UnknownVersion(99))));
        assert!(matches!(decode(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode(&[RECORD_VERSION, 0xff, 0xff]), Err(CodecError::Decode(_))));
    }
}
