//! The apply loop: the one owner of the checkpoint. It takes received records through the planner to the
//! writer, places copy items exactly when the checkpoint reaches their boundary, never applies past the floor
//! of a chunk being fetched, and carries out admin commands and health checks between transactions (never
//! while a fragmented source transaction is open on the writer's connection).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::retry::RetryPolicy;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::AdminCmd;
use crate::config::Config;
use crate::copy::board::CopyBoard;
use crate::copy::chunk::ChunkDone;
use crate::copy::place::Placer;
use crate::copy::CopyItem;
use crate::error::ApplyError;
use crate::metrics::ApplierMetrics;
use crate::parallel::Parallel;
use crate::plan::{Limits, Planner};
use crate::stream::Records;
use crate::table::{QuarantineBoard, TableKey, Tables};
use crate::writer::{Applied, Resumed, Writer};

/// What the loop listens to.
pub struct Inputs {
    pub records: Records,
    pub items: mpsc::Receiver<CopyItem>,
    pub chunks: mpsc::Receiver<ChunkDone>,
    pub admin: mpsc::Receiver<AdminCmd>,
}

pub struct ApplyLoop {
    config: Arc<Config>,
    pub writer: Writer,
    pub tables: Tables,
    placer: Placer,
    planner: Planner,
    board: Arc<CopyBoard>,
    /// Copy items by (boundary, id), waiting for the checkpoint to reach their boundary.
    waiting: BTreeMap<(u64, u64), CopyItem>,
    /// Workers beside the writer (see [`crate::parallel`]).
    parallel: Parallel,
}

/// The waiting item to place next: its boundary is reached, and it is not a chunk of a table whose previous
/// chunk is still being written (chunks of one table are written one at a time, in order).
pub fn next_due(
    waiting: &BTreeMap<(u64, u64), CopyItem>,
    applied: u64,
    writing: impl Fn(&TableKey) -> bool,
) -> Option<(u64, u64)> {
    waiting
        .iter()
        .take_while(|((boundary, _), _)| *boundary <= applied)
        .find(|(_, item)| item.chunk_table().is_none_or(|t| !writing(&t)))
        .map(|(key, _)| *key)
}

impl ApplyLoop {
    /// The loop around `writer`; chunks written for the copy are reported on `chunks`.
    pub fn new(
        config: Arc<Config>,
        writer: Writer,
        board: Arc<CopyBoard>,
        chunks: mpsc::Sender<ChunkDone>,
        metrics: ApplierMetrics,
        quarantined: QuarantineBoard,
        shutdown: CancellationToken,
    ) -> Self {
        let limits = Limits { rows: config.batch_rows, bytes: config.batch_bytes, time: config.batch_time };
        Self {
            parallel: Parallel::new(&config, &writer, limits, shutdown),
            placer: Placer::new(config.clone(), board.clone(), chunks, metrics),
            planner: Planner::new(limits),
            tables: Tables::with_board(quarantined),
            waiting: BTreeMap::new(),
            config,
            writer,
            board,
        }
    }

    /// Takes up what the secondary kept (quarantines, unfinished copies) and begins an initial copy if one is
    /// needed. False if the applier stopped first.
    pub async fn prepare(&mut self, resumed: Resumed, shutdown: &CancellationToken) -> Result<bool, ApplyError> {
        for (key, since, error) in resumed.quarantined {
            warn!(consumer = %self.config.name, schema = %key.0, table = %key.1, offset = since, error = %error,
                  "table is quarantined: its changes are skipped until it is re-copied");
            self.tables.quarantine(key, since, &error);
        }
        self.placer.restore(resumed.copies, &mut self.tables).await?;
        if resumed.needs_copy {
            // The copy forgets whatever workers recorded (see checkpoint::reset).
            return self.placer.begin_copy(&mut self.writer, &mut self.tables, shutdown).await;
        }
        self.parallel.recover(&mut self.writer).await?;
        Ok(true)
    }

    /// Waits for the workers and applies what they handed back (see [`Parallel::drain`]); false if the applier
    /// stopped meanwhile.
    async fn drain(&mut self) -> Result<bool, ApplyError> {
        self.parallel.drain(&mut self.writer, &mut self.tables).await
    }

    /// Runs until `shutdown` (Ok) or a permanent error; then lets the workers finish and saves the checkpoint.
    pub async fn run(&mut self, inputs: &mut Inputs, shutdown: &CancellationToken) -> Result<(), ApplyError> {
        let result = self.run_until_stopped(inputs, shutdown).await;
        self.parallel.close(&mut self.writer).await;
        result
    }

    async fn run_until_stopped(&mut self, inputs: &mut Inputs, shutdown: &CancellationToken) -> Result<(), ApplyError> {
        let mut floors = self.board.floors.subscribe();
        let mut health = tokio::time::interval(self.config.health_interval);
        health.tick().await;
        let (mut items_open, mut admin_open) = (true, true);
        loop {
            // Copy work and admin commands use the writer's connection: not inside an open transaction.
            let between = !self.writer.in_transaction();
            if between {
                let planned = self.parallel.planned(&self.writer);
                // Copy items are placed with nothing in flight past their boundary.
                if self.waiting.keys().next().is_some_and(|(boundary, _)| *boundary <= planned) && !self.drain().await?
                {
                    return Ok(());
                }
                self.place_due().await?;
            }
            let limit = self.board.floors.limit();
            if !self.planner.ready(limit) {
                let waiting_for_record = !self.planner.holds_record();
                let save_due = self.parallel.save_due(&self.writer);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    item = inputs.items.recv(), if items_open && between => match item {
                        Some(item) => match item.id_and_boundary() {
                            Some((id, boundary)) => {
                                self.waiting.insert((boundary, id), item);
                            }
                            None => {
                                if !self.drain().await? {
                                    return Ok(());
                                }
                                self.placer.place(item, &mut self.writer, &mut self.tables).await?
                            }
                        },
                        None => items_open = false,
                    },
                    written = inputs.chunks.recv(), if between => if let Some(written) = written {
                        if !self.drain().await? {
                            return Ok(());
                        }
                        self.placer.chunk_done(written, &mut self.writer, &mut self.tables).await?;
                    },
                    cmd = inputs.admin.recv(), if admin_open && between => match cmd {
                        Some(cmd) => {
                            if !self.drain().await? {
                                return Ok(());
                            }
                            self.handle(cmd).await
                        }
                        None => admin_open = false,
                    },
                    done = self.parallel.next_done() => if let Some(done) = done {
                        if !self.parallel.finished(done, &mut self.writer, &mut self.tables).await? {
                            return Ok(());
                        }
                    },
                    _ = tokio::time::sleep_until(save_due.unwrap_or_else(tokio::time::Instant::now)), if save_due.is_some() => {
                        self.parallel.save_now(&mut self.writer).await?;
                    },
                    changed = floors.changed() => if changed.is_err() { return Ok(()) },
                    _ = health.tick() => self.writer.health_check().await,
                    r = inputs.records.rx.recv(), if waiting_for_record => match r {
                        Some(Err(ApplyError::JournalChanged { was, now })) => {
                            self.change_journal(&was, &now, &mut inputs.records, shutdown).await?;
                        }
                        Some(r) => self.planner.offer(r?),
                        None => return Ok(()),
                    },
                }
                continue;
            }
            let applied = self.parallel.planned(&self.writer);
            let records = &mut inputs.records.rx;
            let group = match self.planner.next_group(applied, limit, || records.try_recv().ok()) {
                Err(ApplyError::JournalChanged { was, now }) => {
                    self.change_journal(&was, &now, &mut inputs.records, shutdown).await?;
                    continue;
                }
                group => group?,
            };
            let Some(group) = group else { continue };
            match self.parallel.apply(group, &mut self.writer, &mut self.tables).await? {
                Applied::Done => {}
                Applied::Stopped => return Ok(()),
                Applied::ReadAgain => {
                    self.planner.clear();
                    inputs.records.restart(self.writer.applied() + 1).await;
                }
            }
            health.reset();
        }
    }

    /// The reader serves another journal than the checkpoint's: names it in the checkpoint (the first journal
    /// met) or moves the checkpoint there by GTID (see [`crate::relocate`]), then subscribes again. Retries
    /// what may pass; stops on what cannot (a copy in progress, a journal that cannot prove it is complete).
    async fn change_journal(
        &mut self,
        was: &str,
        now: &str,
        records: &mut Records,
        shutdown: &CancellationToken,
    ) -> Result<(), ApplyError> {
        // Another journal's rest of an open fragmented transaction never comes: it is applied again whole.
        self.writer.roll_back_open().await;
        if !self.drain().await? {
            return Ok(());
        }
        if self.parallel.skipping() {
            return Err(ApplyError::State {
                what: "parallel apply".into(),
                reason: format!(
                    "the reader serves journal {now}, but transactions applied in parallel from journal {was} above \
                     the checkpoint are not reached yet; restart with a reader of journal {was} until the applier \
                     has passed them"
                ),
            });
        }
        self.planner.clear();
        let mut retry = RetryPolicy::new(Duration::from_millis(100), self.config.retry_max).start();
        loop {
            let moved = if was.is_empty() {
                self.writer.name_journal(now).await
            } else if self.board.copying() || !self.waiting.is_empty() {
                return Err(ApplyError::CopyAcrossJournals);
            } else {
                self.relocate(was).await
            };
            match moved {
                Ok(()) => break,
                Err(e @ ApplyError::WrongJournal { .. }) => {
                    error!(consumer = %self.config.name, error = %e, "waiting for a reader whose journal can serve this secondary");
                    if !retry.wait(shutdown).await {
                        return Ok(());
                    }
                }
                Err(e) if e.is_transient() => {
                    warn!(consumer = %self.config.name, error = %common::lifecycle::error_chain(&e),
                          "cannot move the checkpoint to the reader's journal yet; retrying");
                    if !retry.wait(shutdown).await {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        records.state().set_journal(self.writer.journal_id());
        records.state().forget_waiting();
        records.restart(self.writer.applied() + 1).await;
        Ok(())
    }

    async fn relocate(&mut self, was: &str) -> Result<(), ApplyError> {
        let (applied, journal) = crate::relocate::locate(&self.config, self.writer.gtid()).await?;
        let old = self.writer.applied();
        self.writer.relocate(&journal, applied).await?;
        warn!(consumer = %self.config.name, was_journal = %was, journal = %journal, gtid = %self.writer.gtid(),
              was_offset = old, offset = applied,
              "the reader's journal is new: continuing after the secondary's GTID state");
        Ok(())
    }

    /// Places every waiting copy item whose boundary the checkpoint has reached.
    async fn place_due(&mut self) -> Result<(), ApplyError> {
        loop {
            let applied = self.writer.applied();
            let Some(key) = next_due(&self.waiting, applied, |t| self.placer.is_writing(t)) else { return Ok(()) };
            let Some(item) = self.waiting.remove(&key) else { return Ok(()) };
            let (boundary, id) = key;
            if boundary < applied {
                warn!(consumer = %self.config.name, boundary, applied, "copy item arrived behind the checkpoint; it is fetched again");
                item.refuse_stale("the chunk arrived behind the checkpoint");
            } else if matches!(item, CopyItem::Chunk { .. }) {
                // Its floor holds the loop at the boundary until the chunk is written (or refused).
                self.placer.place(item, &mut self.writer, &mut self.tables).await?;
                continue;
            } else {
                self.placer.place(item, &mut self.writer, &mut self.tables).await?;
            }
            self.board.floors.clear(id);
        }
    }

    async fn handle(&mut self, cmd: AdminCmd) {
        match cmd {
            AdminCmd::Resync { schema, table, reply } => {
                let result = self.placer.resync_table(&schema, &table, &mut self.writer, &mut self.tables).await;
                if let Err(e) = &result {
                    info!(consumer = %self.config.name, schema, table, error = %common::lifecycle::error_chain(e), "re-copy refused");
                }
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::copy::state::KeyKind;

    fn create(id: u64, boundary: u64) -> ((u64, u64), CopyItem) {
        let (done, _) = oneshot::channel();
        let table = ("s".to_owned(), format!("t{id}"));
        let item = CopyItem::Create {
            id,
            boundary,
            table,
            statement: String::new(),
            key_kind: KeyKind::Primary,
            rows_estimated: 0,
            done,
        };
        ((boundary, id), item)
    }

    fn chunk(id: u64, boundary: u64, table: &str) -> ((u64, u64), CopyItem) {
        let (done, _) = oneshot::channel();
        let (_, parts) = mpsc::channel(1);
        let shape = common::event::TableChange {
            schema: "s".into(),
            table: table.into(),
            columns: vec![],
            primary_key: vec![],
            rows: vec![],
            foreign_key_checks: true,
        };
        let item =
            CopyItem::Chunk { id, boundary, after_key: None, shape, key_kind: KeyKind::Primary, limit: 1, parts, done };
        ((boundary, id), item)
    }

    #[test]
    fn items_wait_for_their_boundary_in_boundary_order() {
        let waiting: BTreeMap<_, _> = [create(1, 10), create(2, 5)].into_iter().collect();
        assert_eq!(next_due(&waiting, 4, |_| false), None);
        assert_eq!(next_due(&waiting, 5, |_| false), Some((5, 2)));
        assert_eq!(next_due(&waiting, 12, |_| false), Some((5, 2)), "the older boundary first");
    }

    #[test]
    fn a_chunk_waits_while_its_tables_previous_chunk_is_written_and_others_pass_it() {
        let waiting: BTreeMap<_, _> = [chunk(1, 5, "a"), chunk(2, 5, "b")].into_iter().collect();
        let writing_a = |t: &TableKey| t.1 == "a";
        assert_eq!(next_due(&waiting, 5, writing_a), Some((5, 2)));
        assert_eq!(next_due(&waiting, 5, |_| true), None);
    }
}
