//! Values too long for one journal record ([`Value::Long`]): their pieces go into session variables of the
//! secondary transaction, and the statements that write them take the variables' concatenation in their place.
//!
//! Each piece's variable is named by the piece's journal offset, so pieces of any number of transactions in one
//! group cannot collide; a row's long value finds its pieces `back` records before the row's own. The variables
//! are freed once the secondary transaction ends (see [`free`]); a failed attempt's are freed before the next.

use std::borrow::Cow;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as My};

use common::event::Value;

use crate::error::{statement, ApplyError};
use crate::table::TableKey;

/// The session variable that holds the long-value piece journaled at `offset` (see [`common::event::Body::Piece`]).
pub fn piece_var(offset: u64) -> String {
    format!("@replica_piece_{offset}")
}

/// The statement that puts a piece into its session variable, binary pieces as bytes (see [`placeholder`]).
pub fn set_piece(offset: u64, piece: &Value) -> String {
    let value = if matches!(piece, Value::Bytes(_)) { "CAST(? AS BINARY)" } else { "?" };
    format!("SET {} = {value}", piece_var(offset))
}

/// A statement whose long values are bound to their pieces' session variables.
#[derive(Debug, PartialEq)]
pub struct Bound {
    pub stmt: String,
    /// The other parameters.
    pub params: Vec<My>,
    /// Each long value's expression, with its number of pieces.
    pub values: Vec<(String, u32)>,
}

/// `stmt` with each parameter that stands for a long value ([`Value::Long`], in the record at `offset`) replaced
/// by the concatenation of its pieces' session variables, and those parameters removed. None when no parameter
/// stands for a long value, or one cannot be placed. The `?` placeholders are found outside quoted identifiers
/// and string literals (the only places where statements of the applier could hold another `?`).
pub fn with_long_values(offset: u64, stmt: &str, params: Vec<My>) -> Option<Bound> {
    if !params.iter().any(|p| common::sql_value::long_of(p).is_some()) {
        return None;
    }
    let mut out = String::with_capacity(stmt.len() + 64);
    let (mut kept, mut exprs) = (Vec::with_capacity(params.len()), Vec::new());
    let mut params = params.into_iter();
    let mut quote: Option<char> = None;
    for ch in stmt.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '`' | '\'' | '"') => quote = Some(ch),
            (None, '?') => {
                let param = params.next()?;
                if let Some((back, pieces)) = common::sql_value::long_of(&param) {
                    let first = offset.checked_sub(u64::from(back))?;
                    let vars: Vec<String> = (first..first + u64::from(pieces)).map(piece_var).collect();
                    let expr = format!("CONCAT({})", vars.join(", "));
                    out.push_str(&expr);
                    exprs.push((expr, pieces));
                    continue;
                }
                kept.push(param);
            }
            _ => {}
        }
        out.push(ch);
    }
    Some(Bound { stmt: out, params: kept, values: exprs })
}

/// `stmt` and `params` with the long values among them bound to their pieces' session variables (see
/// [`with_long_values`]), once the secondary has checked it can build each value; as they were when there is
/// none.
pub async fn bind<'s>(
    tx: &mut Conn,
    offset: u64,
    table: &TableKey,
    stmt: &'s str,
    params: Vec<My>,
) -> Result<(Cow<'s, str>, Vec<My>), ApplyError> {
    if !params.iter().any(|p| common::sql_value::long_of(p).is_some()) {
        return Ok((Cow::Borrowed(stmt), params));
    }
    let Some(bound) = with_long_values(offset, stmt, params) else {
        return Err(ApplyError::State {
            what: format!("journal offset {offset}"),
            reason: "a long value refers to pieces before the journal's start, or a statement lacks a placeholder"
                .into(),
        });
    };
    for (expr, pieces) in &bound.values {
        // CONCAT gives NULL (with a warning) for a result longer than max_allowed_packet.
        let check = format!("SELECT {expr} IS NULL");
        let null: Option<bool> = tx.query_first(&check).await.map_err(statement(offset, Some(table), &check))?;
        if null == Some(true) {
            return Err(ApplyError::TooLong { offset, table: table.clone(), mib: u64::from(*pieces) });
        }
    }
    Ok((Cow::Owned(bound.stmt), bound.params))
}

/// Sets the variable of the piece journaled at `offset`.
pub async fn set(tx: &mut Conn, offset: u64, piece: &Value) -> Result<(), ApplyError> {
    let stmt = set_piece(offset, piece);
    let param = common::sql_value::to_mysql(piece);
    tx.exec_drop(&stmt, vec![param]).await.map_err(statement(offset, None, &stmt))
}

/// Frees the variables of the pieces journaled at `offsets` (their values stay in the server's session memory
/// until then).
pub async fn free(tx: &mut Conn, offsets: &[u64]) -> Result<(), ApplyError> {
    for chunk in offsets.chunks(500) {
        let sets: Vec<String> = chunk.iter().map(|&o| format!("{} = NULL", piece_var(o))).collect();
        let stmt = format!("SET {}", sets.join(", "));
        tx.query_drop(&stmt).await.map_err(crate::error::meta("freeing long-value pieces"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::sql_value::to_mysql;

    #[test]
    fn long_values_bind_as_the_concatenation_of_their_pieces() {
        let long = to_mysql(&Value::Long { len: 3 << 20, pieces: 3, back: 4 });
        let params = vec![My::Int(1), long, My::Bytes(b"x".to_vec())];
        let stmt = "INSERT INTO `a?b` (`i`,`b`,`c`) VALUES (?,CAST(? AS BINARY),?)";
        let bound = with_long_values(10, stmt, params).expect("one long value");
        let concat = "CONCAT(@replica_piece_6, @replica_piece_7, @replica_piece_8)";
        assert_eq!(bound.stmt, format!("INSERT INTO `a?b` (`i`,`b`,`c`) VALUES (?,CAST({concat} AS BINARY),?)"));
        assert_eq!(bound.params, vec![My::Int(1), My::Bytes(b"x".to_vec())]);
        assert_eq!(bound.values, vec![(concat.to_owned(), 3)]);
        assert!(with_long_values(10, "SELECT ?", vec![My::Int(1)]).is_none());
        // No stored TIME binds as the stand-in.
        let time = Value::Time { negative: true, hours: 838, minutes: 59, seconds: 59, micros: 999_999 };
        assert!(common::sql_value::long_of(&to_mysql(&time)).is_none());
    }
}
