//! The one mapping between domain records (`event`) and wire records (`proto`).

use crate::event::{Body, Column, ColumnType, Record, RowChange, TableChange, Value};
use crate::position::{BinlogPosition, JournalOffset};
use crate::proto;

/// A wire record that does not describe a valid domain record.
#[derive(Debug, thiserror::Error)]
#[error("malformed record from the reader: {0}")]
pub struct WireError(pub &'static str);

// Domain to wire by value: a record's strings and bytes move into the wire record (a fragment may hold many
// MiB, so it is not copied on its way to a subscriber).
impl From<Record> for proto::Record {
    fn from(r: Record) -> Self {
        proto::Record {
            offset: r.offset.0,
            gtid: r.gtid.map(|g| g.to_string()).unwrap_or_default(),
            source_file: r.source.file,
            source_position: r.source.pos,
            commit_unix_seconds: r.commit_unix_seconds,
            journaled_unix_ms: r.journaled_unix_ms,
            continues: r.continues,
            commit_micros: r.commit_micros,
            crc32c: None,
            body: Some(match r.body {
                Body::Transaction(changes) => proto::record::Body::Transaction(proto::Transaction {
                    changes: changes.into_iter().map(Into::into).collect(),
                }),
                Body::Ddl { schema, statement } => proto::record::Body::Ddl(proto::Ddl { schema, statement }),
                Body::Piece(v) => proto::record::Body::Piece(v.into()),
            }),
        }
    }
}

impl From<TableChange> for proto::TableChange {
    fn from(c: TableChange) -> Self {
        proto::TableChange {
            schema: c.schema,
            table: c.table,
            columns: c.columns.into_iter().map(Into::into).collect(),
            primary_key: c.primary_key,
            rows: c.rows.into_iter().map(Into::into).collect(),
            no_foreign_key_checks: !c.foreign_key_checks,
        }
    }
}

impl From<Column> for proto::Column {
    fn from(c: Column) -> Self {
        proto::Column {
            r#type: c.ty.name().to_owned(),
            name: c.name,
            unsigned: c.unsigned,
            nullable: c.nullable,
            binlog_type: c.binlog_type.into(),
            binlog_meta: c.binlog_meta.into(),
            collation: c.collation.into(),
        }
    }
}

impl From<RowChange> for proto::RowChange {
    fn from(r: RowChange) -> Self {
        use proto::row_change::Kind;
        let vals = |v: Vec<Value>| v.into_iter().map(Into::into).collect();
        match r {
            RowChange::Insert { after } => {
                proto::RowChange { kind: Kind::Insert.into(), before: vec![], after: vals(after) }
            }
            RowChange::Update { before, after } => {
                proto::RowChange { kind: Kind::Update.into(), before: vals(before), after: vals(after) }
            }
            RowChange::Delete { before } => {
                proto::RowChange { kind: Kind::Delete.into(), before: vals(before), after: vec![] }
            }
        }
    }
}

impl From<Value> for proto::Value {
    fn from(v: Value) -> Self {
        use proto::value::Kind;
        let kind = match v {
            Value::Null => Kind::Null(true),
            Value::Int(x) => Kind::Int(x),
            Value::UInt(x) => Kind::Uint(x),
            Value::Float(x) => Kind::Float(x),
            Value::Double(x) => Kind::Double(x),
            Value::Decimal(x) => Kind::Decimal(x),
            Value::Text(x) => Kind::Text(x),
            Value::Bytes(x) => Kind::Bytes(x),
            Value::Date { year, month, day } => {
                Kind::Date(proto::Date { year: year.into(), month: month.into(), day: day.into() })
            }
            Value::DateTime { year, month, day, hour, minute, second, micros } => Kind::Datetime(proto::DateTime {
                year: year.into(),
                month: month.into(),
                day: day.into(),
                hour: hour.into(),
                minute: minute.into(),
                second: second.into(),
                micros,
            }),
            Value::Time { negative, hours, minutes, seconds, micros } => {
                Kind::Time(proto::Time { negative, hours, minutes: minutes.into(), seconds: seconds.into(), micros })
            }
            Value::Timestamp { seconds, micros } => Kind::Timestamp(proto::Timestamp { seconds, micros }),
            Value::Year(y) => Kind::Year(y.into()),
            Value::Long { len, pieces, back } => Kind::Long(proto::Long { len, pieces, back }),
        };
        proto::Value { kind: Some(kind) }
    }
}

fn narrow<T: TryFrom<u32>>(v: u32, what: &'static str) -> Result<T, WireError> {
    T::try_from(v).map_err(|_| WireError(what))
}

impl TryFrom<proto::Value> for Value {
    type Error = WireError;
    fn try_from(v: proto::Value) -> Result<Self, WireError> {
        use proto::value::Kind;
        Ok(match v.kind.ok_or(WireError("value without a kind"))? {
            Kind::Null(_) => Value::Null,
            Kind::Int(x) => Value::Int(x),
            Kind::Uint(x) => Value::UInt(x),
            Kind::Float(x) => Value::Float(x),
            Kind::Double(x) => Value::Double(x),
            Kind::Decimal(x) => Value::Decimal(x),
            Kind::Text(x) => Value::Text(x),
            Kind::Bytes(x) => Value::Bytes(x),
            Kind::Date(d) => Value::Date {
                year: narrow(d.year, "date year")?,
                month: narrow(d.month, "date month")?,
                day: narrow(d.day, "date day")?,
            },
            Kind::Datetime(d) => Value::DateTime {
                year: narrow(d.year, "datetime year")?,
                month: narrow(d.month, "datetime month")?,
                day: narrow(d.day, "datetime day")?,
                hour: narrow(d.hour, "datetime hour")?,
                minute: narrow(d.minute, "datetime minute")?,
                second: narrow(d.second, "datetime second")?,
                micros: d.micros,
            },
            Kind::Time(t) => Value::Time {
                negative: t.negative,
                hours: t.hours,
                minutes: narrow(t.minutes, "time minutes")?,
                seconds: narrow(t.seconds, "time seconds")?,
                micros: t.micros,
            },
            Kind::Timestamp(t) => Value::Timestamp { seconds: t.seconds, micros: t.micros },
            Kind::Year(y) => Value::Year(narrow(y, "year")?),
            Kind::Long(l) => Value::Long { len: l.len, pieces: l.pieces, back: l.back },
        })
    }
}

fn values(v: Vec<proto::Value>) -> Result<Vec<Value>, WireError> {
    v.into_iter().map(TryInto::try_into).collect()
}

impl TryFrom<proto::Record> for Record {
    type Error = WireError;
    fn try_from(r: proto::Record) -> Result<Self, WireError> {
        if r.continues && matches!(r.body, Some(proto::record::Body::Ddl(_))) {
            return Err(WireError("a DDL record marked as continuing"));
        }
        let body = match r.body.ok_or(WireError("record without a body"))? {
            proto::record::Body::Ddl(d) => Body::Ddl { schema: d.schema, statement: d.statement },
            proto::record::Body::Transaction(t) => {
                Body::Transaction(t.changes.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?)
            }
            proto::record::Body::Piece(v) => match Value::try_from(v)? {
                v @ (Value::Bytes(_) | Value::Text(_)) if r.continues => Body::Piece(v),
                _ => return Err(WireError("a piece of a long value that is not text or bytes, or does not continue")),
            },
        };
        Ok(Record {
            offset: JournalOffset(r.offset),
            gtid: if r.gtid.is_empty() { None } else { Some(r.gtid.parse().map_err(|_| WireError("invalid gtid"))?) },
            source: BinlogPosition { file: r.source_file, pos: r.source_position },
            commit_unix_seconds: r.commit_unix_seconds,
            journaled_unix_ms: r.journaled_unix_ms,
            body,
            continues: r.continues,
            commit_micros: r.commit_micros,
        })
    }
}

impl TryFrom<proto::RowChange> for RowChange {
    type Error = WireError;
    fn try_from(r: proto::RowChange) -> Result<Self, WireError> {
        use proto::row_change::Kind;
        Ok(match Kind::try_from(r.kind).map_err(|_| WireError("unknown row kind"))? {
            Kind::Insert => RowChange::Insert { after: values(r.after)? },
            Kind::Update => RowChange::Update { before: values(r.before)?, after: values(r.after)? },
            Kind::Delete => RowChange::Delete { before: values(r.before)? },
            Kind::Unspecified => return Err(WireError("row kind unspecified")),
        })
    }
}

impl TryFrom<proto::TableChange> for TableChange {
    type Error = WireError;
    fn try_from(c: proto::TableChange) -> Result<Self, WireError> {
        let columns = c
            .columns
            .into_iter()
            .map(|col| {
                Ok(Column {
                    name: col.name,
                    ty: ColumnType::from_name(&col.r#type),
                    unsigned: col.unsigned,
                    nullable: col.nullable,
                    binlog_type: narrow(col.binlog_type, "binlog type")?,
                    binlog_meta: narrow(col.binlog_meta, "binlog metadata")?,
                    collation: narrow(col.collation, "collation")?,
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        let rows = c.rows.into_iter().map(RowChange::try_from).collect::<Result<Vec<_>, WireError>>()?;
        if c.primary_key.iter().any(|&i| i as usize >= columns.len()) {
            return Err(WireError("primary key index out of range"));
        }
        Ok(TableChange {
            schema: c.schema,
            table: c.table,
            columns,
            primary_key: c.primary_key,
            rows,
            foreign_key_checks: !c.no_foreign_key_checks,
        })
    }
}
