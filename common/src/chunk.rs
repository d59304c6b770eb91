//! Key-ordered chunks of a table as both servers are read: the SELECT of a key range, selected values as
//! journal values, and the order-independent row checksum that online verification compares.
//!
//! The reader reads the primary and the applier reads the secondary with the same SELECT, session settings
//! (`SET NAMES utf8mb4, time_zone = '+00:00'`) and prepared-statement (binary) protocol, so equal rows arrive as
//! equal values. The checksum hashes those values as MariaDB returned them, every byte: NULL is not the empty
//! string, BINARY keeps its trailing bytes, `'a'` is not `'A'` whatever the collation, DATETIME keeps its
//! microseconds and DECIMAL its scale (it comes as text in the column's scale).

use mysql_async::Value as My;

use crate::event::{Column, ColumnType, Value};
use crate::sql_value::{ident, to_mysql};

/// One column as a chunk selects it.
#[derive(Debug, Clone)]
pub struct SelectColumn {
    pub column: Column,
    /// UUID and INET types are selected as their stored bytes, as the binlog logs them.
    pub as_binary: bool,
    /// A period column of a system-versioned table: the SELECT reads every version (`FOR SYSTEM_TIME ALL`).
    pub period: bool,
}

impl SelectColumn {
    /// A column the primary defined with `data_type` (information_schema), e.g. "uuid" or "varchar".
    pub fn is_stored_as_bytes(data_type: &str) -> bool {
        matches!(data_type, "uuid" | "inet4" | "inet6")
    }
}

/// The key range of a chunk: rows after `after` (from the start when empty) up to and including `upto` (to
/// the end when empty), at most `limit` of them in key order (all when None).
#[derive(Debug, Clone, Copy, Default)]
pub struct Range<'a> {
    pub after: &'a [Value],
    pub upto: &'a [Value],
    pub limit: Option<u32>,
}

/// The SELECT of one chunk of `schema`.`table`: its columns, the rows of `range` by the key columns
/// `key_index` (into `columns`) — `(k1, k2, ...) > (v1, v2, ...)` spelled out so the optimizer uses the key as a
/// range — in key order; a table without a key (empty `key_index`) is read whole, in no order.
pub fn select(
    schema: &str,
    table: &str,
    columns: &[SelectColumn],
    key_index: &[u32],
    range: Range<'_>,
) -> (String, Vec<My>) {
    let select: Vec<String> = columns
        .iter()
        .map(|c| if c.as_binary { format!("CAST({} AS BINARY)", ident(&c.column.name)) } else { ident(&c.column.name) })
        .collect();
    let mut sql = format!("SELECT {} FROM {}.{}", select.join(", "), ident(schema), ident(table));
    if columns.iter().any(|c| c.period) {
        sql.push_str(" FOR SYSTEM_TIME ALL");
    }
    let mut params: Vec<My> = Vec::new();
    if key_index.is_empty() {
        return (sql, params);
    }
    let mut conditions = Vec::new();
    for (bound, values) in [(">", range.after), ("<=", range.upto)] {
        if values.is_empty() {
            continue;
        }
        let mut ors = Vec::new();
        for i in 0..key_index.len() {
            let mut ands = Vec::new();
            for (j, k) in key_index.iter().enumerate().take(i + 1) {
                let c = &columns[*k as usize];
                // The last column of the last disjunct takes the bound's equality too (`<=`); others are strict.
                let op = match (j == i, bound) {
                    (false, _) => "=",
                    (true, ">") => ">",
                    (true, _) if i + 1 == key_index.len() => "<=",
                    (true, _) => "<",
                };
                let ph = if c.column.collation == 63 && !c.as_binary { "CAST(? AS BINARY)" } else { "?" };
                ands.push(format!("{} {op} {ph}", ident(&c.column.name)));
                params.push(to_mysql(&values[j]));
            }
            ors.push(format!("({})", ands.join(" AND ")));
        }
        conditions.push(if ors.len() == 1 { ors.remove(0) } else { format!("({})", ors.join(" OR ")) });
    }
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    let order: Vec<String> = key_index.iter().map(|&k| ident(&columns[k as usize].column.name)).collect();
    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    if let Some(limit) = range.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    (sql, params)
}

/// A selected value as the journal carries the same column's value from the binlog.
pub fn value(v: My, col: &Column) -> Result<Value, String> {
    use ColumnType as T;
    let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| format!("column {} is not valid UTF-8", col.name));
    Ok(match v {
        My::NULL => Value::Null,
        My::Int(i) if col.ty == T::Year => Value::Year(i as u16),
        My::Int(i) => Value::Int(i),
        My::UInt(u) => Value::UInt(u),
        My::Float(f) => Value::Float(f),
        My::Double(d) if col.ty == T::Float => Value::Float(d as f32),
        My::Double(d) => Value::Double(d),
        My::Bytes(b) => match col.ty {
            T::Decimal => Value::Decimal(text(b)?),
            T::Bit | T::Geometry => Value::Bytes(b),
            T::Char | T::VarChar | T::Blob if col.collation == 63 => Value::Bytes(b),
            T::Char | T::VarChar | T::Blob | T::Enum | T::Set => Value::Text(text(b)?),
            T::Year => Value::Year(text(b)?.parse().map_err(|_| format!("column {}: bad YEAR", col.name))?),
            other => return Err(format!("column {} ({other}) came back as bytes", col.name)),
        },
        My::Date(year, month, day, hour, minute, second, micros) => match col.ty {
            T::Date => Value::Date { year, month, day },
            T::Timestamp if year == 0 => Value::Timestamp { seconds: 0, micros: 0 },
            T::Timestamp => Value::Timestamp {
                seconds: crate::event::unix_from_utc(year, month, day, hour, minute, second),
                micros,
            },
            _ => Value::DateTime { year, month, day, hour, minute, second, micros },
        },
        My::Time(negative, days, hours, minutes, seconds, micros) => {
            Value::Time { negative, hours: days * 24 + u32::from(hours), minutes, seconds, micros }
        }
    })
}

/// The hash of one row as MariaDB returned it: each value's kind and every byte of it, lengths included, so
/// that no two different rows encode alike. `buf` is reused between rows.
pub fn row_hash(row: &[My], buf: &mut Vec<u8>) -> u128 {
    buf.clear();
    for v in row {
        match v {
            My::NULL => buf.push(0),
            My::Bytes(b) => {
                buf.push(1);
                buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
                buf.extend_from_slice(b);
            }
            My::Int(i) => {
                buf.push(2);
                buf.extend_from_slice(&i.to_le_bytes());
            }
            My::UInt(u) => {
                buf.push(3);
                buf.extend_from_slice(&u.to_le_bytes());
            }
            My::Float(f) => {
                buf.push(4);
                buf.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            My::Double(d) => {
                buf.push(5);
                buf.extend_from_slice(&d.to_bits().to_le_bytes());
            }
            My::Date(y, mo, d, h, mi, s, us) => {
                buf.push(6);
                buf.extend_from_slice(&y.to_le_bytes());
                buf.extend_from_slice(&[*mo, *d, *h, *mi, *s]);
                buf.extend_from_slice(&us.to_le_bytes());
            }
            My::Time(neg, days, h, mi, s, us) => {
                buf.push(7);
                buf.push(u8::from(*neg));
                buf.extend_from_slice(&days.to_le_bytes());
                buf.extend_from_slice(&[*h, *mi, *s]);
                buf.extend_from_slice(&us.to_le_bytes());
            }
        }
    }
    twox_hash::XxHash3_128::oneshot(buf)
}

/// The checksum of a set of rows: how many, and the wrapping sum of their [`row_hash`]es — independent of
/// order (a table without a key is read in no order) and not cancelled by duplicate rows, as XOR would be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowSum {
    pub rows: u64,
    pub sum: u128,
}

impl RowSum {
    pub fn add(&mut self, hash: u128) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(hash);
    }

    /// 16 bytes, little-endian, for the wire.
    pub fn sum_bytes(&self) -> Vec<u8> {
        self.sum.to_le_bytes().to_vec()
    }

    pub fn from_wire(rows: u64, sum: &[u8]) -> Option<Self> {
        Some(Self { rows, sum: u128::from_le_bytes(sum.try_into().ok()?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, collation: u16, as_binary: bool) -> SelectColumn {
        let column = Column {
            name: name.into(),
            ty: ColumnType::Int,
            unsigned: false,
            nullable: false,
            binlog_type: 0,
            binlog_meta: 0,
            collation,
        };
        SelectColumn { column, as_binary, period: false }
    }

    #[test]
    fn a_chunk_selects_the_rows_of_its_key_range_in_key_order() {
        let columns = [column("a", 33, false), column("b", 63, false), column("u", 63, true)];
        let all = |after, upto, limit| Range { after, upto, limit };
        let (sql, params) = select("s", "t", &columns, &[0, 1], all(&[], &[], Some(10)));
        assert_eq!(sql, "SELECT `a`, `b`, CAST(`u` AS BINARY) FROM `s`.`t` ORDER BY `a`, `b` LIMIT 10");
        assert!(params.is_empty());
        let after = [Value::Int(1), Value::Bytes(vec![2])];
        let (sql, params) = select("s", "t", &columns, &[0, 1], all(&after, &[], Some(10)));
        assert_eq!(
            sql,
            "SELECT `a`, `b`, CAST(`u` AS BINARY) FROM `s`.`t` WHERE ((`a` > ?) OR (`a` = ? AND `b` > CAST(? AS BINARY))) \
             ORDER BY `a`, `b` LIMIT 10"
        );
        assert_eq!(params.len(), 3);
        let (sql, params) = select("s", "t", &columns, &[0], all(&after[..1], &after[..1], None));
        assert_eq!(
            sql,
            "SELECT `a`, `b`, CAST(`u` AS BINARY) FROM `s`.`t` WHERE (`a` > ?) AND (`a` <= ?) ORDER BY `a`"
        );
        assert_eq!(params.len(), 2);
        let (sql, _) = select("s", "t", &columns, &[0, 1], all(&[], &after, None));
        assert_eq!(
            sql,
            "SELECT `a`, `b`, CAST(`u` AS BINARY) FROM `s`.`t` WHERE ((`a` < ?) OR (`a` = ? AND `b` <= CAST(? AS BINARY))) \
             ORDER BY `a`, `b`"
        );
        let (sql, _) = select("s", "t", &columns, &[], all(&[], &[], Some(10)));
        assert_eq!(sql, "SELECT `a`, `b`, CAST(`u` AS BINARY) FROM `s`.`t`", "a keyless table is read whole");
    }

    #[test]
    fn the_row_hash_sees_every_byte_and_the_kind_of_each_value() {
        let mut buf = Vec::new();
        let mut h = |row: &[My]| row_hash(row, &mut buf);
        let base = h(&[My::Bytes(b"a".to_vec()), My::Int(1)]);
        assert_ne!(base, h(&[My::Bytes(b"A".to_vec()), My::Int(1)]), "case");
        assert_ne!(h(&[My::NULL]), h(&[My::Bytes(vec![])]), "NULL vs empty");
        assert_ne!(h(&[My::Bytes(b"ab".to_vec())]), h(&[My::Bytes(b"ab\0".to_vec())]), "trailing byte");
        assert_ne!(
            h(&[My::Bytes(b"ab".to_vec()), My::Bytes(vec![])]),
            h(&[My::Bytes(b"a".to_vec()), My::Bytes(b"b".to_vec())])
        );
        assert_ne!(h(&[My::Date(2024, 1, 2, 3, 4, 5, 1)]), h(&[My::Date(2024, 1, 2, 3, 4, 5, 0)]), "microseconds");
        assert_ne!(h(&[My::Bytes(b"1.50".to_vec())]), h(&[My::Bytes(b"1.5".to_vec())]), "decimal scale");
        assert_ne!(h(&[My::Int(1)]), h(&[My::UInt(1)]));
        assert_eq!(base, h(&[My::Bytes(b"a".to_vec()), My::Int(1)]));
    }

    #[test]
    fn a_row_sum_ignores_order_and_counts_duplicates() {
        let (mut a, mut b, mut c) = (RowSum::default(), RowSum::default(), RowSum::default());
        for h in [1u128, 2, u128::MAX] {
            a.add(h);
        }
        for h in [u128::MAX, 1, 2] {
            b.add(h);
        }
        assert_eq!(a, b);
        c.add(5);
        c.add(5);
        assert_ne!(c, RowSum::default());
        assert_eq!(RowSum::from_wire(a.rows, &a.sum_bytes()), Some(a));
    }
}
