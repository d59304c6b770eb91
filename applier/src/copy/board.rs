//! What the copy workers, the apply loop and the admin service share: each table's progress, the queue of
//! tables to copy, pause, error counts, the copy rate, and the floors that hold the apply loop back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::copy::state::Progress;
use crate::table::TableKey;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Offsets the apply loop must not pass, one per chunk being fetched (see [`crate::copy`]): a fetch registers
/// the last offset received (which its snapshot holds), raises it to its boundary once known, and clears it
/// when its chunk is placed or refused.
#[derive(Debug)]
pub struct Floors {
    floors: Mutex<BTreeMap<u64, u64>>,
    changed: watch::Sender<u64>,
    next_id: AtomicU64,
}

impl Default for Floors {
    fn default() -> Self {
        Self { floors: Mutex::default(), changed: watch::Sender::new(0), next_id: AtomicU64::new(1) }
    }
}

impl Floors {
    /// The highest offset the apply loop may apply now.
    pub fn limit(&self) -> u64 {
        lock(&self.floors).values().min().copied().unwrap_or(u64::MAX)
    }

    /// A new fetch's floor; returns its id.
    pub fn register(&self, floor: u64) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.set(id, floor);
        id
    }

    pub fn set(&self, id: u64, floor: u64) {
        lock(&self.floors).insert(id, floor);
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn clear(&self, id: u64) {
        lock(&self.floors).remove(&id);
        self.changed.send_modify(|g| *g += 1);
    }

    /// Changes whenever a floor is set or cleared.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// State shared by the copy workers, the apply loop and the admin service.
#[derive(Debug)]
pub struct CopyBoard {
    progress: Mutex<BTreeMap<TableKey, Progress>>,
    pub paused: watch::Sender<bool>,
    pub floors: Floors,
    queue: Mutex<VecDeque<TableKey>>,
    /// Tables a queued table waits for (see [`crate::copy::order`]).
    waits: Mutex<BTreeMap<TableKey, BTreeSet<TableKey>>>,
    queue_changed: watch::Sender<u64>,
    /// Failed copy steps since the copy began (retried).
    pub errors: AtomicU64,
    /// (when, total rows copied) samples for the rate.
    samples: Mutex<VecDeque<(Instant, u64)>>,
    /// When the current copy began (a table became pending or copying while none was), until it is reported.
    began: Mutex<Option<Instant>>,
    /// When a worker took each table in this process, and when its copy ended (done or gone), until reported.
    timings: Mutex<BTreeMap<TableKey, (Instant, Option<Instant>)>>,
}

impl Default for CopyBoard {
    fn default() -> Self {
        Self {
            progress: Mutex::default(),
            paused: watch::Sender::new(false),
            floors: Floors::default(),
            queue: Mutex::default(),
            waits: Mutex::default(),
            queue_changed: watch::Sender::new(0),
            errors: AtomicU64::new(0),
            samples: Mutex::default(),
            began: Mutex::default(),
            timings: Mutex::default(),
        }
    }
}

impl CopyBoard {
    pub fn enqueue(&self, table: TableKey) {
        let mut q = lock(&self.queue);
        if !q.contains(&table) {
            q.push_back(table);
        }
        drop(q);
        self.queue_changed.send_modify(|g| *g += 1);
    }

    /// Which tables wait for which before their copy may start (replaces what was set before).
    pub fn set_waits(&self, waits: BTreeMap<TableKey, BTreeSet<TableKey>>) {
        *lock(&self.waits) = waits;
        self.queue_changed.send_modify(|g| *g += 1);
    }

    /// Adds to which tables wait for which (a re-copy of some tables while others may be waiting already).
    pub fn add_waits(&self, waits: BTreeMap<TableKey, BTreeSet<TableKey>>) {
        let mut all = lock(&self.waits);
        for (table, parents) in waits {
            all.entry(table).or_default().extend(parents);
        }
        drop(all);
        self.queue_changed.send_modify(|g| *g += 1);
    }

    /// The next table to copy whose waits are over (every table it waits for is done or gone), waiting for
    /// one; None once `stop` is cancelled.
    pub async fn next_table(&self, stop: &CancellationToken) -> Option<TableKey> {
        let mut changed = self.queue_changed.subscribe();
        loop {
            if let Some(t) = self.take_ready() {
                return Some(t);
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                r = changed.changed() => if r.is_err() { return None },
            }
        }
    }

    fn take_ready(&self) -> Option<TableKey> {
        let mut queue = lock(&self.queue);
        let waits = lock(&self.waits);
        let progress = lock(&self.progress);
        let ready = |t: &TableKey| {
            waits.get(t).is_none_or(|ps| ps.iter().all(|p| progress.get(p).is_none_or(|p| !p.state.active())))
        };
        let at = queue.iter().position(ready)?;
        queue.remove(at)
    }

    /// A worker starts on `table`.
    pub fn table_began(&self, table: &TableKey) {
        lock(&self.timings).insert(table.clone(), (Instant::now(), None));
    }

    /// When a worker took `table`, if its copy is under way or not yet reported.
    pub fn table_began_at(&self, table: &TableKey) -> Option<Instant> {
        lock(&self.timings).get(table).map(|(began, _)| *began)
    }

    /// Tables whose copy ended since the last call, with how long each took.
    pub fn take_ended(&self) -> Vec<(TableKey, Duration)> {
        let mut timings = lock(&self.timings);
        let ended: Vec<(TableKey, Duration)> =
            timings.iter().filter_map(|(k, (began, end))| end.map(|e| (k.clone(), e.duration_since(*began)))).collect();
        for (k, _) in &ended {
            timings.remove(k);
        }
        ended
    }

    pub fn set(&self, table: &TableKey, p: Progress) {
        let active = p.state.active();
        if !active {
            if let Some((_, end)) = lock(&self.timings).get_mut(table) {
                end.get_or_insert_with(Instant::now);
            }
        }
        lock(&self.progress).insert(table.clone(), p);
        if !active {
            // A table another one waits for may have ended.
            self.queue_changed.send_modify(|g| *g += 1);
        }
        let mut began = lock(&self.began);
        if active && began.is_none() {
            *began = Some(Instant::now());
            self.errors.store(0, Ordering::Relaxed);
        }
    }

    /// When a copy that has finished since began; once per copy, however short it was.
    pub fn finished(&self) -> Option<Instant> {
        let mut began = lock(&self.began);
        if began.is_none() || self.copying() {
            return None;
        }
        began.take()
    }

    pub fn get(&self, table: &TableKey) -> Option<Progress> {
        lock(&self.progress).get(table).cloned()
    }

    pub fn snapshot(&self) -> BTreeMap<TableKey, Progress> {
        lock(&self.progress).clone()
    }

    /// Whether any table is pending or being copied.
    pub fn copying(&self) -> bool {
        lock(&self.progress).values().any(|p| p.state.active())
    }

    /// Rows copied and (at least) rows to copy, over every table.
    pub fn totals(&self) -> (u64, u64) {
        let p = lock(&self.progress);
        (p.values().map(|t| t.rows_copied).sum(), p.values().map(|t| t.rows_estimated.max(t.rows_copied)).sum())
    }

    /// Rows per second over the last minute.
    pub fn rate(&self) -> f64 {
        let (copied, _) = self.totals();
        let now = Instant::now();
        let mut s = lock(&self.samples);
        s.push_back((now, copied));
        while s.len() > 2 && s.front().is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(60)) {
            s.pop_front();
        }
        match (s.front(), s.back()) {
            (Some((t0, r0)), Some((t1, r1))) if t1 > t0 => (r1 - r0) as f64 / t1.duration_since(*t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::state::{CopyState, KeyKind};

    #[test]
    fn the_limit_is_the_lowest_floor_and_no_floor_means_no_limit() {
        let floors = Floors::default();
        assert_eq!(floors.limit(), u64::MAX);
        let a = floors.register(10);
        let b = floors.register(12);
        assert_eq!(floors.limit(), 10);
        floors.set(a, 15);
        assert_eq!(floors.limit(), 12, "raised to its boundary");
        floors.clear(b);
        assert_eq!(floors.limit(), 15);
        floors.clear(a);
        assert_eq!(floors.limit(), u64::MAX);
    }

    #[tokio::test]
    async fn tables_are_queued_once_and_copying_counts_pending_and_copying_ones() {
        let board = CopyBoard::default();
        let t = ("s".to_owned(), "t".to_owned());
        board.enqueue(t.clone());
        board.enqueue(t.clone());
        let stop = CancellationToken::new();
        assert_eq!(board.next_table(&stop).await, Some(t.clone()));
        stop.cancel();
        assert_eq!(board.next_table(&stop).await, None, "queued once");
        assert!(!board.copying());
        board.set(&t, Progress::start(CopyState::Copying, KeyKind::Primary, 100));
        assert!(board.copying());
        assert_eq!(board.totals(), (0, 100));
        assert_eq!(board.finished(), None, "still copying");
        board.set(&t, Progress { rows_copied: 120, ..Progress::start(CopyState::Done, KeyKind::Primary, 100) });
        assert!(!board.copying());
        assert_eq!(board.totals(), (120, 120));
        assert!(board.finished().is_some(), "a copy that began and ended between two looks is reported");
        assert_eq!(board.finished(), None, "once");
    }

    #[tokio::test]
    async fn a_table_waiting_for_another_is_handed_out_once_that_one_has_ended() {
        let board = std::sync::Arc::new(CopyBoard::default());
        let (parent, child) = (("s".to_owned(), "parent".to_owned()), ("s".to_owned(), "child".to_owned()));
        board.set(&parent, Progress::start(CopyState::Copying, KeyKind::Primary, 10));
        board.set(&child, Progress::start(CopyState::Pending, KeyKind::Primary, 10));
        board.set_waits(BTreeMap::from([(child.clone(), BTreeSet::from([parent.clone()]))]));
        board.enqueue(child.clone());
        board.enqueue(parent.clone());
        let stop = CancellationToken::new();
        assert_eq!(board.next_table(&stop).await, Some(parent.clone()), "the child waits; the parent goes first");
        let waiting = tokio::spawn({
            let (board, stop) = (board.clone(), stop.clone());
            async move { board.next_table(&stop).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "not while the parent is being copied");
        board.set(&parent, Progress::start(CopyState::Done, KeyKind::Primary, 10));
        assert_eq!(waiting.await.expect("task"), Some(child));
    }
}
