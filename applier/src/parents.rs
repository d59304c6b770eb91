//! Which tables in foreign keys parallel workers may apply, and the parent rows a child row's changes depend on
//! (added to its transaction's write set, so a parent's change and its children's are applied in source order).
//!
//! A parent's change can change child rows below the binlog (cascades): the secondary's own foreign keys do it
//! again, as on the primary. Two transactions are ordered when one changes parent row `k` and the other a child
//! row that references `k` before or after: the child's change carries the parent's key. That covers one level
//! of cascades. A parent whose change reaches further (a cascade into a table that cascades again, or a rule
//! that sets child columns, which erases the reference the later child changes would carry) is a barrier, as is
//! a child whose foreign key references columns that are not one of the parent's unique keys.

use common::event::Column;
use common::mariadb::{ForeignKey, UniqueKey};
use mysql_async::prelude::Queryable;

use crate::identity;
use crate::table::TableKey;

/// A parent a child table's rows depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub parent: TableKey,
    /// The parent's unique key the foreign key references ([`PRIMARY`](crate::identity::PRIMARY) or another).
    pub key: String,
    /// The child's columns (indexes in its changes) holding that key's values, in the key's order; empty when
    /// the parent's rows are not told apart (its changes all count as one key).
    pub columns: Vec<usize>,
}

/// The parents of `table` (whose changes have `columns`) for parallel apply, from the secondary's foreign keys;
/// None when the table must be a barrier.
pub async fn plan(
    conn: &mut impl Queryable,
    table: &TableKey,
    columns: &[Column],
) -> Result<Option<Vec<ParentRef>>, mysql_async::Error> {
    let all = common::mariadb::foreign_keys(conn, &table.0, &table.1).await?;
    if reaches_beyond_children(&all, table) {
        return Ok(None);
    }
    let mut parents = Vec::new();
    for fk in all.iter().filter(|fk| &fk.child == table) {
        let (schema, name) = &fk.parent;
        let keys = common::mariadb::unique_keys(conn, schema, name).await?;
        // The referenced key: one of the parent's unique keys, on exactly the referenced columns.
        let same = |k: &&UniqueKey| {
            k.columns.len() == fk.parent_columns.len()
                && k.columns.iter().all(|(c, _, _)| fk.parent_columns.iter().any(|p| p.eq_ignore_ascii_case(c)))
        };
        let Some(key) = keys.iter().find(same) else {
            // InnoDB lets a foreign key reference any index: rows of the parent are not found by it.
            return Ok(None);
        };
        let mut refs = Vec::with_capacity(key.columns.len());
        for (key_column, _, _) in &key.columns {
            let j = fk.parent_columns.iter().position(|c| c.eq_ignore_ascii_case(key_column));
            let i = j.and_then(|j| columns.iter().position(|c| c.name.eq_ignore_ascii_case(&fk.columns[j])));
            let Some(i) = i else { return Ok(None) };
            refs.push(i);
        }
        let columns = if identity::exact(&keys) { refs } else { Vec::new() };
        parents.push(ParentRef { parent: fk.parent.clone(), key: key.name.clone(), columns });
    }
    Ok(Some(parents))
}

/// Whether a change of a row of `table` can change rows other than its direct children's references: a rule
/// that sets child columns, or a cascade into a table whose own rules act again.
fn reaches_beyond_children(all: &[ForeignKey], table: &TableKey) -> bool {
    all.iter()
        .filter(|fk| &fk.parent == table)
        .any(|fk| fk.sets_values() || (fk.acts() && all.iter().any(|next| next.parent == fk.child && next.acts())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fk(child: &str, parent: &str, on_delete: &str) -> ForeignKey {
        ForeignKey {
            child: ("d".into(), child.into()),
            columns: vec!["p".into()],
            parent: ("d".into(), parent.into()),
            parent_columns: vec!["id".into()],
            on_update: "RESTRICT".into(),
            on_delete: on_delete.into(),
        }
    }

    #[test]
    fn a_parent_is_a_barrier_when_its_changes_reach_past_its_children_or_set_their_columns() {
        let t = |name: &str| ("d".to_owned(), name.to_owned());
        let one_level = [fk("c", "p", "CASCADE"), fk("g", "c", "RESTRICT")];
        assert!(!reaches_beyond_children(&one_level, &t("p")));
        assert!(!reaches_beyond_children(&one_level, &t("c")));
        let two_levels = [fk("c", "p", "CASCADE"), fk("g", "c", "CASCADE")];
        assert!(reaches_beyond_children(&two_levels, &t("p")));
        assert!(!reaches_beyond_children(&two_levels, &t("c")));
        assert!(reaches_beyond_children(&[fk("c", "p", "SET NULL")], &t("p")));
        assert!(reaches_beyond_children(&[fk("p", "p", "CASCADE")], &t("p")), "a self-reference cascades on");
        assert!(!reaches_beyond_children(&[fk("p", "p", "RESTRICT")], &t("p")));
    }
}
