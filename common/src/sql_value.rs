//! Journal values as MariaDB driver parameters, and quoted identifiers, shared by the reader's chunk reads and
//! the applier's writes.

use mysql_async::Value as My;

use crate::event::{utc_from_unix, Value};

/// `name` as a quoted identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A journal value as a parameter that stores exactly the primary's value (sessions use UTC).
pub fn to_mysql(v: &Value) -> My {
    match v {
        Value::Null => My::NULL,
        Value::Int(x) => My::Int(*x),
        Value::UInt(x) => My::UInt(*x),
        Value::Float(x) => My::Float(*x),
        Value::Double(x) => My::Double(*x),
        Value::Decimal(s) | Value::Text(s) => My::Bytes(s.as_bytes().to_vec()),
        Value::Bytes(b) => My::Bytes(b.clone()),
        Value::Date { year, month, day } => My::Date(*year, *month, *day, 0, 0, 0, 0),
        Value::DateTime { year, month, day, hour, minute, second, micros } => {
            My::Date(*year, *month, *day, *hour, *minute, *second, *micros)
        }
        Value::Time { negative, hours, minutes, seconds, micros } => {
            My::Time(*negative, hours / 24, (hours % 24) as u8, *minutes, *seconds, *micros)
        }
        Value::Timestamp { seconds, micros } => to_mysql(&utc_from_unix(*seconds, *micros)),
        Value::Year(y) => My::Int(i64::from(*y)),
        Value::Long { pieces, back, .. } => long_marker(*back, *pieces),
    }
}

/// The parameter that stands for a [`Value::Long`] until a statement is run: a TIME no stored value binds as
/// (255 hours in the hours byte, which [`to_mysql`] keeps below 24), carrying `back` and `pieces`.
fn long_marker(back: u32, pieces: u32) -> My {
    My::Time(true, back, 255, 255, 255, pieces)
}

/// `(back, pieces)` of a parameter that stands for a [`Value::Long`] (see [`to_mysql`]).
pub fn long_of(v: &My) -> Option<(u32, u32)> {
    match *v {
        My::Time(true, back, 255, 255, 255, pieces) => Some((back, pieces)),
        _ => None,
    }
}
