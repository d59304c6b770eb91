//! Turns table maps and row images from mysql_common into exact, self-describing journal values.
//!
//! mysql_common decodes some MariaDB values wrongly or leaves them raw; each fix lives here, next to the
//! column type it concerns:
//! - signed MEDIUMINT is not sign-extended (-1 arrives as 16777215);
//! - YEAR 0000 arrives as 1900;
//! - TIMESTAMP arrives as an epoch string (`"946684800.500000"`);
//! - ENUM arrives as a 1-based index and SET as a bitmask: names come from the FULL row metadata;
//! - BINARY(n) (also UUID, INET4, INET6) loses trailing zero bytes: padded back to the declared length;
//! - non-utf8 character data arrives as raw bytes in the column's charset: converted to UTF-8;
//! - MariaDB's FULL metadata gives GEOMETRY columns a charset entry, which shifts every later column's
//!   charset if GEOMETRY is skipped (as MySQL's layout, and mysql_common, would).

use std::borrow::Cow;

use common::event::{Column, ColumnType, RowChange, TableChange, Value, PIECE_BYTES};
use mysql_common::binlog::events::{OptionalMetaExtractor, OptionalMetadataField, RowsEventData, TableMapEvent};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::collations::{Collation, CollationId};
use mysql_common::constants::ColumnType as My;
use mysql_common::io::ParseBuf;
use mysql_common::Value as MyValue;

/// A problem with the binlog's content that retrying cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "table {schema}.{table} has no column names in the binlog: set binlog_row_metadata=FULL on the primary \
         (SET GLOBAL binlog_row_metadata=FULL and in my.cnf), then restart the reader"
    )]
    NoColumnNames { schema: String, table: String },
    #[error("table {schema}.{table}: {what}")]
    Table { schema: String, table: String, what: String },
    #[error(
        "{schema}.{table}.{column}: a {image} row image without every column: set binlog_row_image=FULL on the \
         primary"
    )]
    PartialImage { schema: String, table: String, column: String, image: &'static str },
    #[error("{schema}.{table}.{column}: {what}")]
    Value { schema: String, table: String, column: String, what: String },
    #[error("cannot decode a rows event")]
    Rows(#[source] std::io::Error),
}

/// The raw member names of one ENUM or SET column.
type RawMembers = Vec<Vec<u8>>;

/// How character data of a column is turned into a journal value.
#[derive(Debug, Clone, Copy)]
enum Text {
    /// Binary collation: bytes as they are.
    Binary,
    Utf8,
    Other(&'static encoding_rs::Encoding),
}

/// A BLOB/TEXT value of a rows event long enough to be journaled in pieces ([`Value::Long`]): where its bytes
/// lie in the event's rows data, and how they are read.
#[derive(Debug, Clone)]
pub struct LongSlice {
    /// Offset of the value's first byte in the rows data ([`RowsEventData::rows_data`]).
    pub start: usize,
    pub len: usize,
    text: Text,
    schema_table_column: (String, String, String),
}

impl LongSlice {
    /// The number of pieces ([`PIECE_BYTES`] of source bytes each).
    pub fn pieces(&self) -> u32 {
        self.len.div_ceil(PIECE_BYTES) as u32
    }

    /// Reads a long value's pieces one at a time from the rows data they lie in.
    pub fn reader(&self) -> PieceReader {
        let decoder = match self.text {
            Text::Binary => None,
            Text::Utf8 => Some(encoding_rs::UTF_8.new_decoder_without_bom_handling()),
            Text::Other(enc) => Some(enc.new_decoder_without_bom_handling()),
        };
        PieceReader { slice: self.clone(), done: 0, decoder }
    }
}

/// The pieces of one long value, in order (see [`LongSlice::reader`]).
pub struct PieceReader {
    slice: LongSlice,
    /// Source bytes already turned into pieces.
    done: usize,
    /// For text: converts to UTF-8 across piece boundaries (a character may straddle two).
    decoder: Option<encoding_rs::Decoder>,
}

impl PieceReader {
    /// The next piece, read from `rows_data` (the same event's); None after the last.
    pub fn next_piece(&mut self, rows_data: &[u8]) -> Option<Result<Value, DecodeError>> {
        let s = &self.slice;
        if self.done >= s.len {
            return None;
        }
        let n = (s.len - self.done).min(PIECE_BYTES);
        let from = s.start + self.done;
        let Some(bytes) = rows_data.get(from..from + n) else {
            return Some(Err(DecodeError::Rows(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a long value lies past its rows event",
            ))));
        };
        self.done += n;
        let last = self.done >= s.len;
        let Some(decoder) = self.decoder.as_mut() else { return Some(Ok(Value::Bytes(bytes.to_vec()))) };
        let mut text = String::with_capacity(decoder.max_utf8_buffer_length(n).unwrap_or(n * 3));
        let (_, _, had_errors) = decoder.decode_to_string(bytes, &mut text, last);
        if had_errors {
            let (schema, table, column) = s.schema_table_column.clone();
            return Some(Err(DecodeError::Value {
                schema,
                table,
                column,
                what: format!("character data is not valid {}", decoder.encoding().name()),
            }));
        }
        Some(Ok(Value::Text(text)))
    }
}

/// A table as the binlog describes it, with everything needed to decode its rows.
#[derive(Debug)]
pub struct TableInfo {
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<u32>,
    /// Per column: how character data is converted (character, ENUM and SET columns).
    text: Vec<Text>,
    /// Per column: the names of ENUM or SET members.
    members: Vec<Vec<String>>,
    /// Per column: the binlog type and metadata mysql_common's value decoder needs.
    wire: Vec<(My, Vec<u8>)>,
}

/// Member names of each ENUM column, then of each SET column, in column order, as the optional metadata has
/// them (bytes in the column's charset).
fn enum_and_set_members(tme: &TableMapEvent<'_>) -> std::io::Result<(Vec<RawMembers>, Vec<RawMembers>)> {
    let (mut enums, mut sets) = (Vec::new(), Vec::new());
    for field in tme.iter_optional_meta() {
        match field? {
            OptionalMetadataField::EnumStrValue(v) => {
                for col in v.iter_values() {
                    enums.push(col?.values().iter().map(|x| x.value_raw().to_vec()).collect());
                }
            }
            OptionalMetadataField::SetStrValue(v) => {
                for col in v.iter_values() {
                    sets.push(col?.values().iter().map(|x| x.value_raw().to_vec()).collect());
                }
            }
            _ => {}
        }
    }
    Ok((enums, sets))
}

/// The member names of an ENUM or SET column as text (empty for other types).
fn member_names(real: My, raw: Option<RawMembers>, t: Text) -> Result<Vec<String>, String> {
    match raw {
        Some(raw) => raw
            .iter()
            .map(|b| to_text(t, b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("member names cannot be decoded: {e}")),
        None if real.is_enum_or_set_type() => {
            Err("ENUM/SET member names are missing: set binlog_row_metadata=FULL".into())
        }
        None => Ok(Vec::new()),
    }
}

impl TableInfo {
    pub fn from_table_map(tme: &TableMapEvent<'_>) -> Result<Self, DecodeError> {
        let schema = tme.database_name().into_owned();
        let table = tme.table_name().into_owned();
        let fail = |what: String| DecodeError::Table { schema: schema.clone(), table: table.clone(), what };
        let io = |e: std::io::Error| fail(format!("bad table map metadata: {e}"));

        let n = tme.columns_count() as usize;
        let meta = OptionalMetaExtractor::new(tme.iter_optional_meta()).map_err(io)?;
        let mut names = meta.iter_column_name();
        let mut signedness = meta.iter_signedness();
        let mut charsets = meta.iter_charset();
        let mut enum_set_charsets = meta.iter_enum_and_set_charset();

        let (enum_raw, set_raw) = enum_and_set_members(tme).map_err(io)?;
        let mut enum_raw = enum_raw.into_iter();
        let mut set_raw = set_raw.into_iter();

        let nulls = tme.null_bitmask();
        let mut columns = Vec::with_capacity(n);
        let mut text = Vec::with_capacity(n);
        let mut members = Vec::with_capacity(n);
        let mut wire = Vec::with_capacity(n);
        for i in 0..n {
            let real = tme
                .get_column_type(i)
                .map_err(|e| fail(format!("column {i} has an unknown type: {e}")))?
                .ok_or_else(|| fail(format!("column {i} has no type")))?;
            let raw_type = tme.get_raw_column_type(i).ok().flatten().unwrap_or(real);
            let meta_bytes = tme.get_column_metadata(i).unwrap_or(&[]);
            let name = match names.next() {
                Some(n) => n.map_err(io)?.name().into_owned(),
                None => return Err(DecodeError::NoColumnNames { schema, table }),
            };
            let unsigned = if real.is_numeric_type() { signedness.next().unwrap_or(false) } else { false };
            // MariaDB lists a charset for GEOMETRY too (a BLOB subclass there); mysql_common does not expect it.
            let collation = if real.is_character_type() || real == My::MYSQL_TYPE_GEOMETRY {
                charsets.next().transpose().map_err(io)?.unwrap_or(0)
            } else if real.is_enum_or_set_type() {
                enum_set_charsets.next().transpose().map_err(io)?.unwrap_or(0)
            } else {
                0
            };
            let t = if real.is_character_type() || real.is_enum_or_set_type() {
                text_for(collation).map_err(|e| fail(format!("column {name}: {e}")))?
            } else {
                Text::Binary
            };
            let raw_members = match real {
                My::MYSQL_TYPE_ENUM => enum_raw.next(),
                My::MYSQL_TYPE_SET => set_raw.next(),
                _ => None,
            };
            let m = member_names(real, raw_members, t).map_err(|e| fail(format!("column {name}: {e}")))?;
            columns.push(Column {
                name,
                ty: column_type(real),
                unsigned,
                nullable: nulls.get(i).map(|b| *b).unwrap_or(true),
                binlog_type: raw_type as u8,
                binlog_meta: match meta_bytes {
                    [] => 0,
                    [a] => u16::from(*a),
                    [a, b, ..] => u16::from(*a) | (u16::from(*b) << 8),
                },
                collation,
            });
            text.push(t);
            members.push(m);
            wire.push((real, meta_bytes.to_vec()));
        }
        let primary_key =
            meta.iter_primary_key().map(|r| r.map(|i| i as u32)).collect::<Result<Vec<_>, _>>().map_err(io)?;
        if primary_key.iter().any(|&i| i as usize >= n) {
            return Err(fail("primary key refers to a column that does not exist".into()));
        }
        Ok(Self { schema, table, columns, primary_key, text, members, wire })
    }

    /// An empty run of changes to this table, made with foreign key checks on or off.
    pub fn new_change(&self, foreign_key_checks: bool) -> TableChange {
        TableChange {
            schema: self.schema.clone(),
            table: self.table.clone(),
            columns: self.columns.clone(),
            primary_key: self.primary_key.clone(),
            rows: Vec::new(),
            foreign_key_checks,
        }
    }

    /// Decodes every row of a rows event into `out`. With `longs`, a BLOB/TEXT value of [`PIECE_BYTES`] or more
    /// is not read: it becomes a [`Value::Long`] and its place in the event is added to `longs`, in the order the
    /// values appear; each `back` counts from the record after the pieces of every long value of this event.
    ///
    /// Row images are read here rather than through mysql_common's row iterator, which re-parses the
    /// table's optional metadata and rebuilds its column list for every row; values still go through
    /// mysql_common's per-type decoder.
    pub fn decode_rows(
        &self,
        event: &RowsEventData<'_>,
        out: &mut Vec<RowChange>,
        mut longs: Option<&mut Vec<LongSlice>>,
    ) -> Result<(), DecodeError> {
        let kind = match event {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => Kind::Insert,
            RowsEventData::UpdateRowsEvent(_) | RowsEventData::UpdateRowsEventV1(_) => Kind::Update,
            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => Kind::Delete,
            RowsEventData::PartialUpdateRowsEvent(_) => {
                return Err(self.table_error("partial JSON updates are not supported: set binlog_row_value_options=''"))
            }
        };
        if event.num_columns() as usize != self.columns.len() {
            return Err(self.table_error("rows event and table map disagree on the number of columns"));
        }
        let full = |bits: Option<Vec<bool>>| {
            bits.map(|b| (0..self.columns.len()).find(|&i| !b.get(i).copied().unwrap_or(false)))
        };
        let before = full(event.columns_before_image().map(|b| b.iter().by_vals().collect()));
        let after = full(event.columns_after_image().map(|b| b.iter().by_vals().collect()));
        for (missing, image) in [(before, "before"), (after, "after")] {
            if let Some(Some(i)) = missing {
                return Err(DecodeError::PartialImage {
                    schema: self.schema.clone(),
                    table: self.table.clone(),
                    column: self.columns[i].name.clone(),
                    image,
                });
            }
        }
        let data = event.rows_data();
        let mut buf = ParseBuf(data);
        let had = (out.len(), longs.as_ref().map_or(0, |l| l.len()));
        while !buf.is_empty() {
            let change = match kind {
                Kind::Insert => RowChange::Insert { after: self.read_image(&mut buf, data, longs.as_deref_mut())? },
                Kind::Update => {
                    let before = self.read_image(&mut buf, data, longs.as_deref_mut())?;
                    RowChange::Update { before, after: self.read_image(&mut buf, data, longs.as_deref_mut())? }
                }
                Kind::Delete => RowChange::Delete { before: self.read_image(&mut buf, data, longs.as_deref_mut())? },
            };
            out.push(change);
        }
        if let Some(longs) = longs {
            // Each long value's distance back to its first piece, from the record after all of them.
            let mut back: u32 = longs[had.1..].iter().map(LongSlice::pieces).sum();
            let mut values = out[had.0..].iter_mut().flat_map(|row| match row {
                RowChange::Insert { after } => after.iter_mut().chain([].iter_mut()),
                RowChange::Update { before, after } => before.iter_mut().chain(after.iter_mut()),
                RowChange::Delete { before } => before.iter_mut().chain([].iter_mut()),
            });
            for slice in &longs[had.1..] {
                let Some(Value::Long { back: b, .. }) = values.find(|v| matches!(v, Value::Long { .. })) else {
                    unreachable!("a long value for each slice")
                };
                *b = back;
                back -= slice.pieces();
            }
        }
        Ok(())
    }

    /// A BLOB/TEXT value at the front of `buf` long enough to be journaled in pieces: skipped in `buf`, its place
    /// added to `longs`, and its stand-in returned.
    fn long_value(&self, i: usize, buf: &mut ParseBuf<'_>, data: &[u8], longs: &mut Vec<LongSlice>) -> Option<Value> {
        let (ty, meta) = &self.wire[i];
        if *ty != My::MYSQL_TYPE_BLOB || self.columns[i].ty != ColumnType::Blob {
            return None;
        }
        let width = usize::from(*meta.first()?);
        if !(1..=4).contains(&width) || buf.0.len() < width {
            return None;
        }
        let len = buf.0[..width].iter().rev().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        if len < PIECE_BYTES || buf.0.len() < width + len {
            return None;
        }
        let start = buf.0[width..].as_ptr() as usize - data.as_ptr() as usize;
        buf.0 = &buf.0[width + len..];
        let slice = LongSlice {
            start,
            len,
            text: self.text[i],
            schema_table_column: (self.schema.clone(), self.table.clone(), self.columns[i].name.clone()),
        };
        let pieces = slice.pieces();
        longs.push(slice);
        Some(Value::Long { len: len as u64, pieces, back: 0 })
    }

    /// One full row image: a null bitmap, then each non-null value.
    fn read_image<'b>(
        &'b self,
        buf: &mut ParseBuf<'b>,
        data: &[u8],
        mut longs: Option<&mut Vec<LongSlice>>,
    ) -> Result<Vec<Value>, DecodeError> {
        let n = self.columns.len();
        let truncated = || DecodeError::Rows(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "row image"));
        let nulls = buf.checked_eat(n.div_ceil(8)).ok_or_else(truncated)?;
        let mut values = Vec::with_capacity(n);
        for (i, (ty, meta)) in self.wire.iter().enumerate() {
            if nulls[i / 8] & (1 << (i % 8)) != 0 {
                values.push(Value::Null);
                continue;
            }
            if let Some(long) = longs.as_deref_mut().and_then(|longs| self.long_value(i, buf, data, longs)) {
                values.push(long);
                continue;
            }
            let v: BinlogValue<'_> =
                buf.parse((*ty, meta.as_slice(), self.columns[i].unsigned, false)).map_err(DecodeError::Rows)?;
            values.push(self.decode_value(i, v.into_owned())?);
        }
        Ok(values)
    }

    fn table_error(&self, what: &str) -> DecodeError {
        DecodeError::Table { schema: self.schema.clone(), table: self.table.clone(), what: what.to_owned() }
    }

    fn decode_value(&self, i: usize, v: BinlogValue<'static>) -> Result<Value, DecodeError> {
        let col = &self.columns[i];
        let bad = |what: String| DecodeError::Value {
            schema: self.schema.clone(),
            table: self.table.clone(),
            column: col.name.clone(),
            what,
        };
        let v = match v {
            BinlogValue::Value(v) => v,
            other => return Err(bad(format!("unsupported binlog value {other:?}"))),
        };
        if v == MyValue::NULL {
            return Ok(Value::Null);
        }
        let unexpected = |v: &MyValue| bad(format!("unexpected {:?} for a {} column", v, col.ty));
        Ok(match col.ty {
            ColumnType::TinyInt | ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt => match v {
                MyValue::Int(x) if col.unsigned => Value::UInt(x as u64),
                MyValue::Int(x) => Value::Int(x),
                MyValue::UInt(x) if col.unsigned => Value::UInt(x),
                ref other => return Err(unexpected(other)),
            },
            ColumnType::MediumInt => match v {
                MyValue::Int(x) if col.unsigned => Value::UInt(x as u64),
                // mysql_common does not sign-extend 24-bit integers.
                MyValue::Int(x) if x >= 0x80_0000 => Value::Int(x - 0x100_0000),
                MyValue::Int(x) => Value::Int(x),
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Float => match v {
                MyValue::Float(x) => Value::Float(x),
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Double => match v {
                MyValue::Double(x) => Value::Double(x),
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Decimal => match v {
                MyValue::Bytes(b) => Value::Decimal(String::from_utf8(b).map_err(|e| bad(e.to_string()))?),
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Year => match v {
                // mysql_common adds 1900 to the stored byte, so YEAR 0000 arrives as 1900 (not a valid YEAR).
                MyValue::Bytes(ref b) => match std::str::from_utf8(b).ok().and_then(|s| s.parse::<u16>().ok()) {
                    Some(1900) => Value::Year(0),
                    Some(y) => Value::Year(y),
                    None => return Err(unexpected(&v)),
                },
                MyValue::Int(y) => Value::Year(if y == 1900 { 0 } else { y as u16 }),
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Date => match v {
                MyValue::Date(year, month, day, ..) => Value::Date { year, month, day },
                ref other => return Err(unexpected(other)),
            },
            ColumnType::DateTime => match v {
                MyValue::Date(year, month, day, hour, minute, second, micros) => {
                    Value::DateTime { year, month, day, hour, minute, second, micros }
                }
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Time => match v {
                MyValue::Time(negative, days, h, minutes, seconds, micros) => {
                    Value::Time { negative, hours: days * 24 + u32::from(h), minutes, seconds, micros }
                }
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Timestamp => match v {
                // mysql_common renders TIMESTAMP as "seconds[.micros]" since the epoch.
                MyValue::Bytes(ref b) => parse_epoch(b).ok_or_else(|| unexpected(&v))?,
                MyValue::Int(s) => Value::Timestamp { seconds: s, micros: 0 },
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Enum => match v {
                MyValue::Int(0) => Value::Text(String::new()),
                MyValue::Int(idx) => match self.members[i].get(idx as usize - 1) {
                    Some(name) => Value::Text(name.clone()),
                    None => return Err(bad(format!("ENUM index {idx} is out of range"))),
                },
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Set => match v {
                MyValue::Bytes(ref mask) => {
                    let names = &self.members[i];
                    let mut out = Vec::new();
                    for (bit, name) in names.iter().enumerate() {
                        if mask.get(bit / 8).is_some_and(|byte| byte & (1 << (bit % 8)) != 0) {
                            out.push(name.as_str());
                        }
                    }
                    Value::Text(out.join(","))
                }
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Char => match v {
                MyValue::Bytes(mut b) => match self.text[i] {
                    Text::Binary => {
                        // BINARY(n), UUID, INET4, INET6 lose trailing zero bytes in the binlog.
                        let len = fixed_octet_length(col.binlog_meta);
                        if b.len() < len {
                            b.resize(len, 0);
                        }
                        Value::Bytes(b)
                    }
                    t => Value::Text(to_text(t, &b).map_err(bad)?),
                },
                ref other => return Err(unexpected(other)),
            },
            ColumnType::VarChar | ColumnType::Blob => match v {
                MyValue::Bytes(b) => match self.text[i] {
                    Text::Binary => Value::Bytes(b),
                    t => Value::Text(to_text(t, &b).map_err(bad)?),
                },
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Bit | ColumnType::Geometry => match v {
                MyValue::Bytes(b) => Value::Bytes(b),
                ref other => return Err(unexpected(other)),
            },
            ColumnType::Other => return Err(bad(format!("unsupported binlog column type {}", col.binlog_type))),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Insert,
    Update,
    Delete,
}

/// The declared octet length of a CHAR/BINARY column from its table-map metadata.
fn fixed_octet_length(meta: u16) -> usize {
    let byte0 = (meta & 0xff) as usize;
    let byte1 = (meta >> 8) as usize;
    if byte0 != 0 && (byte0 & 0x30) != 0x30 {
        byte1 | (((byte0 & 0x30) ^ 0x30) << 4)
    } else {
        byte1
    }
}

fn parse_epoch(b: &[u8]) -> Option<Value> {
    let s = std::str::from_utf8(b).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let seconds = secs.parse().ok()?;
    let micros = if frac.is_empty() {
        0
    } else {
        let digits = format!("{frac:0<6}");
        digits.get(..6)?.parse().ok()?
    };
    Some(Value::Timestamp { seconds, micros })
}

fn column_type(real: My) -> ColumnType {
    use My::*;
    match real {
        MYSQL_TYPE_TINY => ColumnType::TinyInt,
        MYSQL_TYPE_SHORT => ColumnType::SmallInt,
        MYSQL_TYPE_INT24 => ColumnType::MediumInt,
        MYSQL_TYPE_LONG => ColumnType::Int,
        MYSQL_TYPE_LONGLONG => ColumnType::BigInt,
        MYSQL_TYPE_FLOAT => ColumnType::Float,
        MYSQL_TYPE_DOUBLE => ColumnType::Double,
        MYSQL_TYPE_NEWDECIMAL => ColumnType::Decimal,
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => ColumnType::Date,
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => ColumnType::Time,
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => ColumnType::DateTime,
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => ColumnType::Timestamp,
        MYSQL_TYPE_YEAR => ColumnType::Year,
        MYSQL_TYPE_STRING => ColumnType::Char,
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => ColumnType::VarChar,
        MYSQL_TYPE_BLOB | MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB => ColumnType::Blob,
        MYSQL_TYPE_ENUM => ColumnType::Enum,
        MYSQL_TYPE_SET => ColumnType::Set,
        MYSQL_TYPE_BIT => ColumnType::Bit,
        MYSQL_TYPE_GEOMETRY => ColumnType::Geometry,
        _ => ColumnType::Other,
    }
}

/// How to read character data stored under a collation id.
fn text_for(collation: u16) -> Result<Text, String> {
    if collation == 0 || collation == 63 {
        return Ok(Text::Binary);
    }
    let charset = Collation::resolve(CollationId::from(collation)).charset().to_owned();
    let label = match charset.as_str() {
        "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => return Ok(Text::Utf8),
        "binary" => return Ok(Text::Binary),
        // MariaDB's latin1 is cp1252 with the five undefined bytes mapped to C1 controls, as WHATWG does.
        "latin1" => "windows-1252",
        "latin2" => "iso-8859-2",
        "cp1250" => "windows-1250",
        "cp1251" => "windows-1251",
        "cp1256" => "windows-1256",
        "cp1257" => "windows-1257",
        "greek" => "iso-8859-7",
        "hebrew" => "iso-8859-8",
        "koi8r" => "koi8-r",
        "koi8u" => "koi8-u",
        "sjis" | "cp932" => "shift_jis",
        "ujis" | "eucjpms" => "euc-jp",
        "euckr" => "euc-kr",
        "gbk" | "gb2312" => "gbk",
        "gb18030" => "gb18030",
        "big5" => "big5",
        "utf16" | "ucs2" => "utf-16be",
        "utf16le" => "utf-16le",
        other => {
            return Err(format!(
                "character set {other:?} (collation {collation}) is not supported; convert the column to utf8mb4"
            ))
        }
    };
    encoding_rs::Encoding::for_label(label.as_bytes())
        .map(Text::Other)
        .ok_or_else(|| format!("no decoder for character set {charset}"))
}

fn to_text(t: Text, bytes: &[u8]) -> Result<String, String> {
    match t {
        Text::Binary | Text::Utf8 => String::from_utf8(bytes.to_vec())
            .map_err(|_| "character data is not valid UTF-8 for its utf8 column".to_owned()),
        Text::Other(enc) => {
            let (s, had_errors) = enc.decode_without_bom_handling(bytes);
            if had_errors {
                return Err(format!("character data is not valid {}", enc.name()));
            }
            Ok(match s {
                Cow::Borrowed(s) => s.to_owned(),
                Cow::Owned(s) => s,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_strings_become_instants() {
        assert_eq!(parse_epoch(b"946684800.500000"), Some(Value::Timestamp { seconds: 946_684_800, micros: 500_000 }));
        assert_eq!(parse_epoch(b"0"), Some(Value::Timestamp { seconds: 0, micros: 0 }));
        assert_eq!(parse_epoch(b"12.5"), Some(Value::Timestamp { seconds: 12, micros: 500_000 }));
        assert_eq!(parse_epoch(b"x"), None);
    }

    #[test]
    fn latin1_is_cp1252_with_c1_controls() {
        let Ok(Text::Other(enc)) = text_for(8) else { panic!("latin1_swedish_ci must resolve") };
        assert_eq!(to_text(Text::Other(enc), b"caf\xe9 \x80 \x81").as_deref(), Ok("café € \u{81}"));
    }

    #[test]
    fn binary_char_length_comes_from_metadata() {
        // BINARY(16): real type 0xfe in byte 0, length 16 in byte 1.
        assert_eq!(fixed_octet_length(0xfe | (16 << 8)), 16);
    }
}
