//! The event model: one journal record per committed source transaction (or DDL statement), self-describing
//! so an applier needs nothing but the record to apply it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::position::{BinlogPosition, Gtid, JournalOffset};

/// One committed source transaction or one DDL statement, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Dense position in the journal; assigned by the journal writer.
    pub offset: JournalOffset,
    /// The source transaction's MariaDB GTID, if the source logged one.
    pub gtid: Option<Gtid>,
    /// Binlog file and the end position of the transaction's last event: resuming here skips it.
    pub source: BinlogPosition,
    /// Source commit time (binlog event timestamp, Unix seconds).
    pub commit_unix_seconds: i64,
    /// When the reader journaled it (Unix milliseconds); drives time-based retention.
    pub journaled_unix_ms: i64,
    pub body: Body,
    /// The source transaction goes on in the next record: this record is one fragment of a transaction too
    /// large to hold in memory at once (see the reader's `journal` module). A consumer applies every record up
    /// to the next one without this flag in one transaction. Only row changes continue, and a record that
    /// continues is always followed by row changes.
    pub continues: bool,
    /// The microseconds of the source time (`commit_unix_seconds`) where the binlog logs them: a statement
    /// that used the time with microseconds (MariaDB's `Q_HRNOW`, e.g. a DDL filling `CURRENT_TIMESTAMP(6)`);
    /// else 0. A DDL runs on a secondary at this time, as on a native replica.
    pub commit_micros: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Row changes in source order, grouped into runs on one table.
    Transaction(Vec<TableChange>),
    /// A statement the source logged as a query (CREATE/ALTER/RENAME/DROP/TRUNCATE ...).
    Ddl { schema: String, statement: String },
    /// One piece of a value too long to journal in one record ([`Value::Long`]): [`Value::Bytes`] or
    /// [`Value::Text`], at most [`PIECE_BYTES`] of the source's bytes. Its record always continues: the pieces of
    /// a value come in consecutive records, and the row changes that use them follow.
    Piece(Value),
}

/// Source bytes from which a BLOB/TEXT value is journaled in pieces ([`Value::Long`]), and the most source bytes
/// one piece takes: a row of any size then passes through the journal, the gRPC stream and the applier in
/// records of about this size.
pub const PIECE_BYTES: usize = 1 << 20;

impl Body {
    /// Bytes the body holds in memory (see [`Value::mem_size`]); what bounds the buffers it passes through.
    pub fn mem_size(&self) -> usize {
        match self {
            Body::Transaction(changes) => changes.iter().map(TableChange::mem_size).sum(),
            Body::Ddl { schema, statement } => schema.len() + statement.len(),
            Body::Piece(v) => v.mem_size(),
        }
    }
}

impl Record {
    /// Number of row changes (0 for DDL).
    pub fn row_count(&self) -> usize {
        match &self.body {
            Body::Transaction(changes) => changes.iter().map(|c| c.rows.len()).sum(),
            Body::Ddl { .. } | Body::Piece(_) => 0,
        }
    }
}

/// Consecutive row changes to one table, carrying the table's shape as the source logged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableChange {
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order; empty if the table has none.
    pub primary_key: Vec<u32>,
    pub rows: Vec<RowChange>,
    /// Whether the primary's session checked foreign keys for these changes (the rows event's flag): a
    /// secondary applies them the same way, so that cascades happen there as they did on the primary.
    pub foreign_key_checks: bool,
}

impl TableChange {
    /// The table's shape: this change without its rows.
    pub fn shape(&self) -> TableChange {
        TableChange {
            schema: self.schema.clone(),
            table: self.table.clone(),
            columns: self.columns.clone(),
            primary_key: self.primary_key.clone(),
            rows: Vec::new(),
            foreign_key_checks: self.foreign_key_checks,
        }
    }

    /// Bytes the change holds in memory, rows and shape (see [`Value::mem_size`]).
    pub fn mem_size(&self) -> usize {
        let shape: usize = self.columns.iter().map(|c| std::mem::size_of::<Column>() + c.name.len()).sum();
        std::mem::size_of::<TableChange>()
            + self.schema.len()
            + self.table.len()
            + shape
            + self.rows.iter().map(RowChange::mem_size).sum::<usize>()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub unsigned: bool,
    pub nullable: bool,
    /// Binlog type code and metadata, kept so the column can be re-interpreted exactly.
    pub binlog_type: u8,
    pub binlog_meta: u16,
    /// Collation id of character columns (63 = binary); 0 when not applicable.
    pub collation: u16,
}

/// SQL type family of a column, as far as the binlog tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ColumnType {
    TinyInt,
    SmallInt,
    MediumInt,
    Int,
    BigInt,
    Float,
    Double,
    Decimal,
    Date,
    Time,
    DateTime,
    Timestamp,
    Year,
    /// CHAR, or BINARY when the collation is binary (also UUID, INET4, INET6).
    Char,
    /// VARCHAR or VARBINARY.
    VarChar,
    /// TEXT/BLOB of any size (also JSON, which MariaDB stores as LONGTEXT).
    Blob,
    Enum,
    Set,
    Bit,
    Geometry,
    /// Anything the reader does not recognise; it refuses to journal such a column's values.
    Other,
}

impl ColumnType {
    pub fn name(self) -> &'static str {
        use ColumnType::*;
        match self {
            TinyInt => "tinyint",
            SmallInt => "smallint",
            MediumInt => "mediumint",
            Int => "int",
            BigInt => "bigint",
            Float => "float",
            Double => "double",
            Decimal => "decimal",
            Date => "date",
            Time => "time",
            DateTime => "datetime",
            Timestamp => "timestamp",
            Year => "year",
            Char => "char",
            VarChar => "varchar",
            Blob => "blob",
            Enum => "enum",
            Set => "set",
            Bit => "bit",
            Geometry => "geometry",
            Other => "other",
        }
    }

    /// The family of a type as `information_schema.COLUMNS.DATA_TYPE` names it (lower case).
    pub fn from_data_type(data_type: &str) -> Self {
        use ColumnType::*;
        match data_type {
            "tinyint" => TinyInt,
            "smallint" => SmallInt,
            "mediumint" => MediumInt,
            "int" | "integer" => Int,
            "bigint" => BigInt,
            "float" => Float,
            "double" | "real" => Double,
            "decimal" | "numeric" => Decimal,
            "date" => Date,
            "time" => Time,
            "datetime" => DateTime,
            "timestamp" => Timestamp,
            "year" => Year,
            "char" | "binary" | "uuid" | "inet4" | "inet6" => Char,
            "varchar" | "varbinary" => VarChar,
            "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob" | "mediumblob" | "longblob"
            | "json" => Blob,
            "enum" => Enum,
            "set" => Set,
            "bit" => Bit,
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
            | "geometrycollection" => Geometry,
            _ => Other,
        }
    }

    pub fn from_name(name: &str) -> Self {
        use ColumnType::*;
        [
            TinyInt, SmallInt, MediumInt, Int, BigInt, Float, Double, Decimal, Date, Time, DateTime, Timestamp, Year,
            Char, VarChar, Blob, Enum, Set, Bit, Geometry,
        ]
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or(Other)
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RowChange {
    Insert { after: Vec<Value> },
    Update { before: Vec<Value>, after: Vec<Value> },
    Delete { before: Vec<Value> },
}

impl RowChange {
    /// Every value of the change: the before image, then the after image.
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        let (before, after): (&[Value], &[Value]) = match self {
            RowChange::Insert { after } => (&[], after),
            RowChange::Update { before, after } => (before, after),
            RowChange::Delete { before } => (before, &[]),
        };
        before.iter().chain(after)
    }

    /// Bytes the change holds in memory (see [`Value::mem_size`]).
    pub fn mem_size(&self) -> usize {
        std::mem::size_of::<RowChange>() + self.values().map(Value::mem_size).sum::<usize>()
    }
}

/// A column value, exact: what the primary returns for a SELECT of the column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    /// DECIMAL as exact text.
    Decimal(String),
    /// Character data in UTF-8 (converted from the column's charset), ENUM and SET names, JSON text.
    Text(String),
    /// Binary data; BIT as big-endian bytes; GEOMETRY as SRID + WKB.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    Date {
        year: u16,
        month: u8,
        day: u8,
    },
    DateTime {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        micros: u32,
    },
    Time {
        negative: bool,
        hours: u32,
        minutes: u8,
        seconds: u8,
        micros: u32,
    },
    /// TIMESTAMP as an instant since the Unix epoch; (0, 0) is the zero timestamp.
    Timestamp {
        seconds: i64,
        micros: u32,
    },
    Year(u16),
    /// A BLOB/TEXT value of `len` source bytes journaled ahead of its row, in the `pieces` [`Body::Piece`]
    /// records that begin `back` records before the record holding this value (the pieces of every long value
    /// of a rows event, in column order, directly precede the record with its rows). The value is the pieces'
    /// concatenation.
    Long {
        len: u64,
        pieces: u32,
        back: u32,
    },
}

impl Value {
    /// The journal offsets of a [`Value::Long`]'s pieces, for the value in the record at `offset`.
    pub fn piece_offsets(&self, offset: u64) -> Option<std::ops::Range<u64>> {
        match *self {
            Value::Long { pieces, back, .. } => {
                let first = offset.checked_sub(u64::from(back))?;
                Some(first..first + u64::from(pieces))
            }
            _ => None,
        }
    }

    /// Bytes the value holds in memory, inline and on the heap: what bounds buffers and transactions. (A
    /// small value takes several times its binlog or wire size once decoded, so those sizes do not do.)
    pub fn mem_size(&self) -> usize {
        std::mem::size_of::<Value>()
            + match self {
                Value::Text(s) | Value::Decimal(s) => s.len(),
                Value::Bytes(b) => b.len(),
                _ => 0,
            }
    }
}

impl fmt::Display for Value {
    /// The value as MariaDB's text protocol would show it (TIMESTAMP in UTC).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(v) => write!(f, "{v}"),
            Value::UInt(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Double(v) => write!(f, "{v}"),
            Value::Decimal(v) | Value::Text(v) => f.write_str(v),
            Value::Bytes(b) => {
                f.write_str("0x")?;
                b.iter().try_for_each(|x| write!(f, "{x:02X}"))
            }
            Value::Date { year, month, day } => write!(f, "{year:04}-{month:02}-{day:02}"),
            Value::DateTime { year, month, day, hour, minute, second, micros } => {
                write!(f, "{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}")?;
                fmt_micros(f, *micros)
            }
            Value::Time { negative, hours, minutes, seconds, micros } => {
                let sign = if *negative { "-" } else { "" };
                write!(f, "{sign}{hours:02}:{minutes:02}:{seconds:02}")?;
                fmt_micros(f, *micros)
            }
            Value::Timestamp { seconds, micros } => {
                let dt = utc_from_unix(*seconds, *micros);
                dt.fmt(f)
            }
            Value::Year(y) => write!(f, "{y:04}"),
            Value::Long { len, pieces, .. } => write!(f, "<{len} bytes in {pieces} pieces>"),
        }
    }
}

fn fmt_micros(f: &mut fmt::Formatter<'_>, micros: u32) -> fmt::Result {
    if micros != 0 {
        write!(f, ".{micros:06}")?;
    }
    Ok(())
}

/// Seconds since the Unix epoch of a UTC calendar time (the inverse of [`utc_from_unix`]).
pub fn unix_from_utc(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> i64 {
    // Howard Hinnant's days_from_civil.
    let (y, m, d) = (i64::from(year) - i64::from(month <= 2), i64::from(month), i64::from(day));
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
}

/// The UTC calendar time of a TIMESTAMP instant, as a `Value::DateTime` (the zero timestamp stays zero).
pub fn utc_from_unix(seconds: i64, micros: u32) -> Value {
    if seconds == 0 && micros == 0 {
        return Value::DateTime { year: 0, month: 0, day: 0, hour: 0, minute: 0, second: 0, micros: 0 };
    }
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    Value::DateTime {
        year,
        month,
        day,
        hour: (secs / 3600) as u8,
        minute: (secs % 3600 / 60) as u8,
        second: (secs % 60) as u8,
        micros,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_in_utc() {
        assert_eq!(utc_from_unix(946_684_800, 500_000).to_string(), "2000-01-01 00:00:00.500000");
        assert_eq!(utc_from_unix(2_147_483_647, 0).to_string(), "2038-01-19 03:14:07");
        assert_eq!(utc_from_unix(0, 0).to_string(), "0000-00-00 00:00:00");
        assert_eq!(unix_from_utc(2000, 1, 1, 0, 0, 0), 946_684_800);
        assert_eq!(unix_from_utc(2038, 1, 19, 3, 14, 7), 2_147_483_647);
        assert_eq!(unix_from_utc(1970, 1, 1, 0, 0, 1), 1);
    }

    #[test]
    fn column_type_names_round_trip() {
        for t in [ColumnType::MediumInt, ColumnType::Geometry, ColumnType::Timestamp] {
            assert_eq!(ColumnType::from_name(t.name()), t);
        }
        assert_eq!(ColumnType::from_name("vector"), ColumnType::Other);
    }
}
