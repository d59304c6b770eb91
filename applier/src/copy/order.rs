//! The order of an initial copy across foreign keys: a table waits until every table it references has been
//! copied, so that a cascade on the primary during the copy always finds the parent row on the secondary.
//!
//! Why: while a table is being copied its rows arrive in chunks, and a parent row not copied yet cannot
//! cascade on the secondary. If a child table were copied (or streamed into) before its parent, deleting a
//! not-yet-copied parent on the primary would cascade there but leave the child rows on the secondary. A
//! child whose parents are all copied is safe: it is empty and its records are skipped until its own copy
//! begins (state `pending`), it is then copied from snapshots taken after every earlier cascade, and from then
//! on each cascade from its (strict) parents reaches the child rows already copied, like on a native replica.
//! Tables in a cycle of foreign keys cannot all wait for each other: within a cycle they are copied together,
//! as without foreign keys (a documented limit), and a self-reference is no reason to wait.
//!
//! A table re-copied alone (`ResyncTable`) is re-created empty, so its rows not copied again yet could not
//! cascade either: its children (and theirs) are re-copied with it, after it.

use std::collections::{BTreeMap, BTreeSet};

use crate::table::TableKey;

/// For each of `tables` that must wait, the tables it waits for: the tables among `tables` it references
/// through `edges` (child, parent), except itself and the other members of a cycle it is in.
pub fn waits(tables: &[TableKey], edges: &[(TableKey, TableKey)]) -> BTreeMap<TableKey, BTreeSet<TableKey>> {
    let known: BTreeSet<&TableKey> = tables.iter().collect();
    let mut parents: BTreeMap<TableKey, BTreeSet<TableKey>> = BTreeMap::new();
    for (child, parent) in edges {
        if child != parent && known.contains(child) && known.contains(parent) {
            parents.entry(child.clone()).or_default().insert(parent.clone());
        }
    }
    // An edge inside a cycle (the parent waits, through its own parents, for the child) is dropped.
    let cyclic: Vec<(TableKey, TableKey)> = parents
        .iter()
        .flat_map(|(child, ps)| ps.iter().map(move |p| (child.clone(), p.clone())))
        .filter(|(child, parent)| reaches(&parents, parent, child))
        .collect();
    for (child, parent) in cyclic {
        if let Some(ps) = parents.get_mut(&child) {
            ps.remove(&parent);
        }
    }
    parents.retain(|_, ps| !ps.is_empty());
    parents
}

/// `table` and every table that references it, directly or through others (its children, grandchildren...),
/// through `edges` (child, parent), `table` first.
pub fn with_descendants(table: &TableKey, edges: &[(TableKey, TableKey)]) -> Vec<TableKey> {
    let mut out = vec![table.clone()];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].clone();
        for (child, p) in edges {
            if *p == parent && !out.contains(child) {
                out.push(child.clone());
            }
        }
        i += 1;
    }
    out
}

/// Whether `from` waits, directly or through others, for `to`.
fn reaches(parents: &BTreeMap<TableKey, BTreeSet<TableKey>>, from: &TableKey, to: &TableKey) -> bool {
    let mut seen: BTreeSet<&TableKey> = BTreeSet::new();
    let mut stack = vec![from];
    while let Some(t) = stack.pop() {
        if t == to {
            return true;
        }
        if seen.insert(t) {
            stack.extend(parents.get(t).into_iter().flatten());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableKey {
        ("s".to_owned(), name.to_owned())
    }

    fn edge(child: &str, parent: &str) -> (TableKey, TableKey) {
        (t(child), t(parent))
    }

    #[test]
    fn children_wait_for_their_parents_but_not_for_themselves_or_tables_outside_the_copy() {
        let tables = [t("parent"), t("child"), t("grandchild"), t("emp"), t("plain")];
        let edges =
            [edge("child", "parent"), edge("grandchild", "child"), edge("emp", "emp"), edge("child", "elsewhere")];
        let w = waits(&tables, &edges);
        assert_eq!(w.get(&t("child")), Some(&BTreeSet::from([t("parent")])));
        assert_eq!(w.get(&t("grandchild")), Some(&BTreeSet::from([t("child")])));
        assert_eq!(w.len(), 2, "parent, emp (self-reference) and plain start at once: {w:?}");
    }

    #[test]
    fn a_table_is_re_copied_with_its_children_and_grandchildren() {
        let edges = [edge("child", "parent"), edge("grandchild", "child"), edge("parent", "parent"), edge("x", "y")];
        assert_eq!(with_descendants(&t("parent"), &edges), vec![t("parent"), t("child"), t("grandchild")]);
        assert_eq!(with_descendants(&t("child"), &edges), vec![t("child"), t("grandchild")]);
        assert_eq!(with_descendants(&t("plain"), &edges), vec![t("plain")]);
    }

    #[test]
    fn tables_in_a_cycle_start_together_and_their_own_children_still_wait() {
        let tables = [t("a"), t("b"), t("root"), t("leaf")];
        let edges = [edge("a", "b"), edge("b", "a"), edge("a", "root"), edge("leaf", "a")];
        let w = waits(&tables, &edges);
        assert_eq!(w.get(&t("a")), Some(&BTreeSet::from([t("root")])), "outside the cycle it still waits");
        assert_eq!(w.get(&t("b")), None, "no wait inside the cycle");
        assert_eq!(w.get(&t("leaf")), Some(&BTreeSet::from([t("a")])));
        let tables = [t("x"), t("y"), t("z")];
        let w = waits(&tables, &[edge("x", "y"), edge("y", "z"), edge("z", "x")]);
        assert!(w.is_empty(), "a longer cycle: {w:?}");
    }
}
