//! The planner: received records → secondary transactions.
//!
//! Consecutive records are grouped into one secondary transaction until a limit is reached (rows, bytes, or
//! time spent gathering); a DDL record is always a group of its own (DDL commits implicitly in MariaDB). No
//! group reaches past `limit`, the boundary of a copy chunk being fetched (see [`crate::copy`]): the first
//! record past it is *carried* until the limit rises. Offsets must follow each other without a gap from the
//! checkpoint on, or the stream is refused. A group may end inside a fragmented source transaction (its last
//! record `continues`): the writer then keeps the secondary transaction open for the next group.

use std::time::{Duration, Instant};

use common::event::{Body, Record};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::ApplyError;
use crate::stream::{Received, Weight};

/// How large a secondary transaction may grow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub rows: usize,
    pub bytes: u64,
    pub time: Duration,
}

/// Records to apply in one secondary transaction; their receive budget is released when this is dropped.
#[derive(Debug)]
pub struct Group {
    pub records: Vec<Record>,
    /// Each record's share of the receive budget and weight, in the order of `records`.
    pub permits: Vec<OwnedSemaphorePermit>,
    pub weights: Vec<Weight>,
}

#[derive(Debug)]
pub struct Planner {
    limits: Limits,
    /// A received record not applied yet: it waits for the limit, or begins the next group.
    carry: Option<Received>,
}

impl Planner {
    pub fn new(limits: Limits) -> Self {
        Self { limits, carry: None }
    }

    /// Whether a record is carried (the loop must not receive another before it is planned).
    pub fn holds_record(&self) -> bool {
        self.carry.is_some()
    }

    /// Whether a group can be planned now under `limit`.
    pub fn ready(&self, limit: u64) -> bool {
        self.carry.as_ref().is_some_and(|r| r.record.offset.0 <= limit)
    }

    /// Forgets the carried record (the stream starts over).
    pub fn clear(&mut self) {
        self.carry = None;
    }

    /// Takes a received record; only when none is carried.
    pub fn offer(&mut self, r: Received) {
        debug_assert!(self.carry.is_none());
        self.carry = Some(r);
    }

    /// The next group after checkpoint `applied`, from the carried record and as many more as `more` has
    /// ready and the limits allow. None unless [`Planner::ready`].
    pub fn next_group(
        &mut self,
        applied: u64,
        limit: u64,
        mut more: impl FnMut() -> Option<Result<Received, ApplyError>>,
    ) -> Result<Option<Group>, ApplyError> {
        if !self.ready(limit) {
            return Ok(None);
        }
        let Some(first) = self.carry.take() else { return Ok(None) };
        let mut expected = applied + 1;
        check_offset(&first.record, expected)?;
        let is_ddl = matches!(first.record.body, Body::Ddl { .. });
        let (mut rows, mut bytes) = (first.weight.rows, first.weight.bytes);
        let mut records = vec![first.record];
        let mut permits = vec![first.permit];
        let mut weights = vec![first.weight];
        let started = Instant::now();
        while !is_ddl && rows < self.limits.rows && bytes < self.limits.bytes && started.elapsed() < self.limits.time {
            let Some(next) = more() else { break };
            let next = next?;
            expected += 1;
            check_offset(&next.record, expected)?;
            if matches!(next.record.body, Body::Ddl { .. }) || next.record.offset.0 > limit {
                self.carry = Some(next);
                break;
            }
            rows += next.weight.rows;
            bytes += next.weight.bytes;
            records.push(next.record);
            permits.push(next.permit);
            weights.push(next.weight);
        }
        Ok(Some(Group { records, permits, weights }))
    }
}

fn check_offset(r: &Record, expected: u64) -> Result<(), ApplyError> {
    if r.offset.0 == expected {
        Ok(())
    } else {
        Err(ApplyError::Gap { expected, got: r.offset.0 })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use common::event::{Column, ColumnType, RowChange, TableChange, Value};
    use common::position::{BinlogPosition, JournalOffset};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::stream::Weight;

    fn received(offset: u64, rows: usize, ddl: bool) -> Received {
        let col = Column {
            name: "id".into(),
            ty: ColumnType::Int,
            unsigned: false,
            nullable: false,
            binlog_type: 3,
            binlog_meta: 0,
            collation: 0,
        };
        let body = if ddl {
            Body::Ddl { schema: "s".into(), statement: "ALTER TABLE t ADD c INT".into() }
        } else {
            Body::Transaction(vec![TableChange {
                schema: "s".into(),
                table: "t".into(),
                columns: vec![col],
                primary_key: vec![0],
                rows: (0..rows).map(|i| RowChange::Insert { after: vec![Value::Int(i as i64)] }).collect(),
                foreign_key_checks: true,
            }])
        };
        let record = Record {
            offset: JournalOffset(offset),
            gtid: None,
            source: BinlogPosition { file: "b.000001".into(), pos: 4 },
            commit_unix_seconds: 0,
            commit_micros: 0,
            journaled_unix_ms: 0,
            body,
            continues: false,
        };
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().expect("permit");
        Received { weight: Weight::of(&record), record, permit }
    }

    fn planner(rows: usize) -> Planner {
        Planner::new(Limits { rows, bytes: u64::MAX, time: Duration::from_secs(60) })
    }

    fn offsets(g: &Group) -> Vec<u64> {
        g.records.iter().map(|r| r.offset.0).collect()
    }

    /// Feeds `queue` to the planner as the loop does, returning the groups it makes.
    fn plan(p: &mut Planner, mut queue: VecDeque<Received>, limit: u64) -> Vec<Vec<u64>> {
        let mut groups = Vec::new();
        let mut applied = 0;
        loop {
            if !p.holds_record() {
                match queue.pop_front() {
                    Some(r) => p.offer(r),
                    None => return groups,
                }
            }
            match p.next_group(applied, limit, || queue.pop_front().map(Ok)).expect("no gap") {
                Some(g) => {
                    applied = *offsets(&g).last().expect("not empty");
                    groups.push(offsets(&g));
                }
                None => return groups,
            }
        }
    }

    #[test]
    fn records_are_grouped_up_to_the_row_limit() {
        let queue = (1..=5).map(|o| received(o, 2, false)).collect();
        assert_eq!(plan(&mut planner(4), queue, u64::MAX), vec![vec![1, 2], vec![3, 4], vec![5]]);
    }

    #[test]
    fn a_ddl_record_is_a_group_of_its_own() {
        let queue = VecDeque::from(vec![
            received(1, 1, false),
            received(2, 1, false),
            received(3, 0, true),
            received(4, 1, false),
        ]);
        assert_eq!(plan(&mut planner(100), queue, u64::MAX), vec![vec![1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn no_group_passes_the_limit_and_the_first_record_past_it_is_carried() {
        let mut p = planner(100);
        let queue = (1..=5).map(|o| received(o, 1, false)).collect();
        assert_eq!(plan(&mut p, queue, 3), vec![vec![1, 2, 3]]);
        assert!(p.holds_record() && !p.ready(3), "offset 4 waits for the limit to rise");
        assert!(p.ready(4));
        let g = p.next_group(3, 4, || None).expect("no gap").expect("a group");
        assert_eq!(offsets(&g), vec![4]);
    }

    #[test]
    fn a_skipped_or_repeated_offset_is_refused() {
        let mut p = planner(100);
        p.offer(received(2, 1, false));
        assert!(matches!(p.next_group(0, u64::MAX, || None), Err(ApplyError::Gap { expected: 1, got: 2 })));
        let mut p = planner(100);
        p.offer(received(1, 1, false));
        let mut queue = VecDeque::from(vec![received(1, 1, false)]);
        let result = p.next_group(0, u64::MAX, || queue.pop_front().map(Ok));
        assert!(matches!(result, Err(ApplyError::Gap { expected: 2, got: 1 })));
    }
}
