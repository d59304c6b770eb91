//! Applies journal records to the secondary, exactly once.
//!
//! Invariant: the checkpoint row in `replica_meta.checkpoint` names the last journal offset whose changes
//! are committed on the secondary. Row changes of one or more consecutive records are applied in one
//! secondary transaction that also moves the checkpoint, so a crash at any point leaves either all of them
//! and the new checkpoint, or none and the old one; the applier then resumes at checkpoint + 1.
//!
//! DDL commits implicitly in MariaDB and cannot share that transaction. A DDL record is applied alone:
//! first `ddl_pending` is set to its offset, then the statement runs, then the checkpoint moves to it. If
//! the process dies after the statement but before the checkpoint, the DDL is run again at restart, and the
//! "already exists / does not exist" errors are then taken to mean it had been applied.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use common::event::{Body, Record, RowChange, TableChange};
use futures_util::FutureExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, TxOpts};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint;
use crate::config::Config;
use crate::copy::{CopyShared, Progress};
use crate::drift;
use crate::error::{codes, is_transient, needs_reconnect, ApplyError};
use crate::metrics::ApplierMetrics;
use crate::net::NetTable;
use crate::sql;

type TableKey = (String, String);

/// How records touching a table are applied while it is being copied (see [`crate::copy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Not copied yet and copied in one read (or about to be re-created): its changes are skipped.
    Skip,
    /// Partly copied: a missing row is not drift, since it may not be copied yet.
    Lenient,
}

pub(crate) fn mode_of(p: &Progress) -> Option<CopyMode> {
    match p.state.as_str() {
        "pending" => Some(CopyMode::Skip),
        "copying" if p.key_kind == "none" || p.key_kind.is_empty() => Some(CopyMode::Skip),
        "copying" => Some(CopyMode::Lenient),
        _ => None,
    }
}

/// Why one attempt at a group failed.
enum Failure {
    /// Retrying (after a reconnect where needed) can succeed.
    Transient(mysql_async::Error),
    /// Retrying the same statement cannot succeed.
    Permanent { offset: u64, table: Option<TableKey>, statement: String, reason: String },
}

impl Failure {
    fn sql(offset: u64, table: Option<&TableChange>, statement: &str, e: mysql_async::Error) -> Self {
        if is_transient(&e) {
            return Failure::Transient(e);
        }
        Failure::Permanent {
            offset,
            table: table.map(|t| (t.schema.clone(), t.table.clone())),
            statement: statement.to_owned(),
            reason: e.to_string(),
        }
    }
}

pub struct Applier {
    pub(crate) config: Arc<Config>,
    pub(crate) conn: Option<Conn>,
    /// Last journal offset committed on the secondary.
    pub applied: u64,
    pub(crate) ddl_pending: Option<u64>,
    /// Tables whose columns were checked against the secondary, with the column list checked.
    pub(crate) verified: HashMap<TableKey, Vec<common::event::Column>>,
    /// Generated columns of verified tables (indexes into the record's columns), left out of writes.
    pub(crate) generated: HashMap<TableKey, Vec<usize>>,
    /// Tables whose changes are skipped, with the offset where that began.
    pub(crate) quarantined: HashMap<TableKey, u64>,
    pub(crate) failures: HashMap<TableKey, u32>,
    pub(crate) applied_tx: watch::Sender<u64>,
    pub(crate) shutdown: CancellationToken,
    pub metrics: ApplierMetrics,
    /// Tables being copied, and how their changes are applied meanwhile.
    pub(crate) modes: HashMap<TableKey, CopyMode>,
    pub shared: Arc<CopyShared>,
    /// Connections that write copy chunks, and where their results go.
    pub(crate) writers: mysql_async::Pool,
    /// Tables with a chunk being written (their next chunk waits).
    pub writing: HashSet<TableKey>,
    pub(crate) chunk_results: tokio::sync::mpsc::Sender<crate::place::ChunkDone>,
    /// The secondary has no checkpoint (or `--resync`): an initial copy must begin.
    pub needs_copy: bool,
}

pub fn opts(config: &Config) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname(config.host.clone())
        .tcp_port(config.port)
        .user(Some(config.user.clone()))
        .pass(Some(config.password.expose().to_owned()))
        .prefer_socket(false)
        .ssl_opts(config.maria_tls.ssl_opts())
        .client_found_rows(true)
        .stmt_cache_size(512)
        .max_allowed_packet(Some(1 << 30))
        // UTC (journal TIMESTAMPs are instants), zero dates allowed, explicit 0 ids kept, errors not warnings.
        .setup(vec!["SET NAMES utf8mb4, time_zone = '+00:00', \
             sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION', \
             foreign_key_checks = 0"
            .to_owned()])
}

/// Takes this consumer's named lock on a new connection before it reads or writes anything. A connection of
/// a killed predecessor may still be committing on the server; the lock is released only when that
/// connection is gone, so the checkpoint read next includes its last commit. If the holder does not go away
/// within 10 s (a session left behind by a network failure lives until the server's wait_timeout), it is
/// killed: only an applier of this consumer takes this lock, and two must never run at once.
async fn lock_consumer(conn: &mut Conn, name: &str) -> Result<(), mysql_async::Error> {
    const LOCK: &str = "CONCAT('replica-applier:', SHA1(?))";
    for attempt in 0..2 {
        let got: Option<Option<i64>> = conn.exec_first(format!("SELECT GET_LOCK({LOCK}, 10)"), (name,)).await?;
        if got == Some(Some(1)) {
            return Ok(());
        }
        if attempt == 0 {
            let holder: Option<Option<u64>> = conn.exec_first(format!("SELECT IS_USED_LOCK({LOCK})"), (name,)).await?;
            if let Some(Some(id)) = holder {
                warn!(consumer = %name, connection = id, "a previous session of this consumer still holds its lock after 10 s; killing it");
                if let Err(e) = conn.query_drop(format!("KILL CONNECTION {id}")).await {
                    warn!(consumer = %name, error = %e, "could not kill the previous session");
                }
            }
        }
    }
    Err(mysql_async::Error::Other(
        format!(
            "another session holds this secondary's lock for consumer {name:?} (another replica-applier with the same \
             name?)"
        )
        .into(),
    ))
}

impl Applier {
    /// Connects, creates `replica_meta` if needed and reads the checkpoint.
    pub async fn start(
        config: Arc<Config>,
        applied_tx: watch::Sender<u64>,
        shutdown: CancellationToken,
        chunk_results: tokio::sync::mpsc::Sender<crate::place::ChunkDone>,
    ) -> Result<Self, ApplyError> {
        let mut conn = Conn::new(opts(&config)).await.map_err(ApplyError::Connect)?;
        lock_consumer(&mut conn, &config.name).await.map_err(ApplyError::Connect)?;
        checkpoint::ensure_schema(&mut conn).await?;
        let shared = Arc::new(CopyShared::default());
        let mut needs_copy = config.resync;
        let cp = match checkpoint::load(&mut conn, &config.name).await? {
            Some(cp) => cp,
            None => match config.start_offset {
                Some(start) => {
                    let applied = start.saturating_sub(1);
                    checkpoint::save(&mut conn, &config.name, applied, "", "", 0).await.map_err(ApplyError::Sql)?;
                    info!(consumer = %config.name, offset = start, "no checkpoint: starting at --start-offset");
                    checkpoint::Checkpoint { applied_offset: applied, ddl_pending: None }
                }
                None => {
                    info!(consumer = %config.name, "no checkpoint on the secondary: an initial copy begins");
                    needs_copy = true;
                    checkpoint::Checkpoint { applied_offset: 0, ddl_pending: None }
                }
            },
        };
        let mut modes = HashMap::new();
        if !needs_copy {
            for (key, progress) in checkpoint::copy_states(&mut conn, &config.name).await? {
                if let Some(mode) = mode_of(&progress) {
                    modes.insert(key.clone(), mode);
                    shared.enqueue(key.clone());
                    info!(consumer = %config.name, schema = %key.0, table = %key.1, rows_copied = progress.rows_copied,
                          "resuming the copy of a table from its last chunk");
                }
                shared.update(&key, |p| *p = progress);
            }
        }
        let quarantined = checkpoint::quarantined(&mut conn, &config.name)
            .await?
            .into_iter()
            .map(|(schema, table, since, error)| {
                warn!(consumer = %config.name, schema = %schema, table = %table, offset = since, error = %error, "table is quarantined: its changes are skipped until it is re-copied");
                shared.quarantined.lock().unwrap_or_else(|p| p.into_inner()).insert((schema.clone(), table.clone()), (since, error));
                ((schema, table), since)
            })
            .collect();
        applied_tx.send_replace(cp.applied_offset);
        let writers =
            mysql_async::Pool::new(opts(&config).pool_opts(mysql_async::PoolOpts::default().with_constraints(
                mysql_async::PoolConstraints::new(0, config.copy_workers.max(1) * 2).unwrap_or_default(),
            )));
        Ok(Self {
            config,
            conn: Some(conn),
            applied: cp.applied_offset,
            ddl_pending: cp.ddl_pending,
            verified: HashMap::new(),
            generated: HashMap::new(),
            quarantined,
            failures: HashMap::new(),
            applied_tx,
            shutdown,
            metrics: ApplierMetrics::default(),
            modes,
            shared,
            writers,
            writing: HashSet::new(),
            chunk_results,
            needs_copy,
        })
    }

    pub fn quarantined_tables(&self) -> HashSet<TableKey> {
        self.quarantined.keys().cloned().collect()
    }

    pub(crate) async fn conn(&mut self) -> Result<&mut Conn, mysql_async::Error> {
        if self.conn.is_none() {
            let mut conn = Conn::new(opts(&self.config)).await?;
            lock_consumer(&mut conn, &self.config.name).await?;
            info!(consumer = %self.config.name, "connected to the secondary");
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or(mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed))
    }

    /// Checks the idle connection; a failure drops it so the next use reconnects.
    pub async fn health_check(&mut self) {
        let ok = match self.conn().await {
            Ok(conn) => match conn.ping().await {
                Ok(()) => true,
                Err(e) => {
                    warn!(consumer = %self.config.name, error = %e, "secondary health check failed; reconnecting");
                    self.conn = None;
                    false
                }
            },
            Err(e) => {
                warn!(consumer = %self.config.name, error = %e, "cannot reach the secondary");
                false
            }
        };
        self.shared.secondary_ok.store(ok, std::sync::atomic::Ordering::Relaxed);
    }

    /// Applies consecutive records (offsets `applied + 1 ..`), retrying transient errors until shutdown.
    /// Returns Ok(false) if shutdown interrupted it (nothing of the group is committed then).
    pub async fn apply(&mut self, group: &[Record]) -> Result<bool, ApplyError> {
        let Some(last) = group.last() else { return Ok(true) };
        let mut retry = common::retry::RetryPolicy::new(Duration::from_millis(50), self.config.retry_max).start();
        loop {
            let attempt = AssertUnwindSafe(self.try_group(group)).catch_unwind().await;
            let failure = match attempt {
                Ok(Ok(())) => {
                    self.metrics.applied(group);
                    self.shared.secondary_ok.store(true, std::sync::atomic::Ordering::Relaxed);
                    self.applied = last.offset.0;
                    self.applied_tx.send_replace(self.applied);
                    return Ok(true);
                }
                Ok(Err(f)) => f,
                Err(panic) => {
                    self.conn = None;
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Failure::Permanent {
                        offset: group[0].offset.0,
                        table: None,
                        statement: String::new(),
                        reason: format!("internal error (panic) while applying: {what}"),
                    }
                }
            };
            match failure {
                Failure::Transient(e) => {
                    self.metrics.retried();
                    if needs_reconnect(&e) {
                        self.conn = None;
                        self.shared.secondary_ok.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    let pause = retry.next_delay();
                    warn!(consumer = %self.config.name, offset = group[0].offset.0, error = %e, retry_in = ?pause, "transient error; retrying");
                    if !self.pause(pause).await {
                        return Ok(false);
                    }
                }
                Failure::Permanent { offset, table, statement, reason } => {
                    if group.len() > 1 {
                        // Find the record that fails: apply the group one record at a time.
                        for record in group {
                            if !Box::pin(self.apply(std::slice::from_ref(record))).await? {
                                return Ok(false);
                            }
                        }
                        return Ok(true);
                    }
                    self.metrics.failed();
                    let table_name = table.as_ref().map(|(s, t)| format!("{s}.{t}")).unwrap_or_else(|| "-".into());
                    let Some(key) = table.filter(|_| self.config.skip_failing_tables) else {
                        return Err(ApplyError::Permanent { offset, table: table_name, statement, reason });
                    };
                    let count = self.failures.entry(key.clone()).or_default();
                    *count += 1;
                    let count = *count;
                    error!(consumer = %self.config.name, offset, schema = %key.0, table = %key.1, failures = count,
                           max = self.config.max_table_failures, error = %reason, statement = %statement, "permanent error");
                    if count >= self.config.max_table_failures {
                        self.quarantine(key, offset, &reason).await?;
                    } else {
                        let pause = retry.next_delay();
                        if !self.pause(pause).await {
                            return Ok(false);
                        }
                    }
                }
            }
        }
    }

    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    pub(crate) async fn quarantine(&mut self, key: TableKey, offset: u64, reason: &str) -> Result<(), ApplyError> {
        let name = self.config.name.clone();
        let conn = self.conn().await.map_err(ApplyError::Sql)?;
        checkpoint::quarantine(conn, &name, &key.0, &key.1, offset, reason).await.map_err(ApplyError::Sql)?;
        error!(consumer = %name, offset, schema = %key.0, table = %key.1, error = %reason,
               "table quarantined: its changes are skipped from this offset until it is re-copied");
        self.shared
            .quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), (offset, reason.to_owned()));
        self.quarantined.insert(key, offset);
        self.metrics.quarantined(self.quarantined.len());
        Ok(())
    }

    async fn try_group(&mut self, group: &[Record]) -> Result<(), Failure> {
        let first = group[0].offset.0;
        if let [record] = group {
            if let Body::Ddl { schema, statement } = &record.body {
                return self.try_ddl(record, schema, statement).await;
            }
        }
        // Shapes to check before the first change to a table.
        let mut unverified: Vec<&TableChange> = Vec::new();
        for record in group {
            if let Body::Transaction(changes) = &record.body {
                for c in changes {
                    let key = (c.schema.clone(), c.table.clone());
                    if !self.quarantined.contains_key(&key)
                        && self.modes.get(&key) != Some(&CopyMode::Skip)
                        && self.verified.get(&key) != Some(&c.columns)
                    {
                        unverified.push(c);
                    }
                }
            }
        }
        let name = self.config.name.clone();
        let conn = self.conn().await.map_err(Failure::Transient)?;
        for c in &unverified {
            if let Some(reason) = drift::check(conn, &c.schema, &c.table, &c.columns)
                .await
                .map_err(|e| Failure::sql(first, Some(c), "(schema check)", e))?
            {
                let offset = group
                    .iter()
                    .find(|r| matches!(&r.body, Body::Transaction(ch) if ch.iter().any(|x| std::ptr::eq(x, *c))))
                    .map_or(first, |r| r.offset.0);
                return Err(Failure::Permanent {
                    offset,
                    table: Some((c.schema.clone(), c.table.clone())),
                    statement: "(schema check against information_schema.COLUMNS)".into(),
                    reason,
                });
            }
        }
        let mut generated = Vec::with_capacity(unverified.len());
        for c in &unverified {
            generated.push(
                drift::generated(conn, &c.schema, &c.table, &c.columns)
                    .await
                    .map_err(|e| Failure::sql(first, Some(c), "(generated columns)", e))?,
            );
        }
        for (c, generated) in unverified.into_iter().zip(generated) {
            self.generated.insert((c.schema.clone(), c.table.clone()), generated);
            self.verified.insert((c.schema.clone(), c.table.clone()), c.columns.clone());
        }
        let conn = self.conn.as_mut().ok_or_else(|| {
            Failure::Transient(mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed))
        })?;
        let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(Failure::Transient)?;
        // Tables with a primary key are applied as net changes after the keyless ones, which go row by row in
        // order; changes to different tables do not interact (foreign key checks are off, as on a replica).
        let mut nets: Vec<NetTable> = Vec::new();
        for record in group {
            let Body::Transaction(changes) = &record.body else { unreachable!("DDL records are grouped alone") };
            for c in changes {
                let key = (c.schema.clone(), c.table.clone());
                if self.quarantined.contains_key(&key) {
                    continue;
                }
                let lenient = match self.modes.get(&key) {
                    Some(CopyMode::Skip) => continue,
                    Some(CopyMode::Lenient) => true,
                    None => false,
                };
                let stripped;
                let c = match self.generated.get(&key) {
                    Some(drop) if !drop.is_empty() => {
                        stripped = sql::without_columns(c, drop);
                        &stripped
                    }
                    _ => c,
                };
                if c.primary_key.is_empty() {
                    apply_change(&mut tx, record.offset.0, c, lenient).await?;
                    continue;
                }
                let i = match nets.iter().position(|n| n.shape.schema == c.schema && n.shape.table == c.table) {
                    Some(i) => i,
                    None => {
                        nets.push(NetTable::new(c, record.offset.0));
                        nets.len() - 1
                    }
                };
                nets[i].add(c);
            }
        }
        for net in &nets {
            let lenient = self.modes.contains_key(&(net.shape.schema.clone(), net.shape.table.clone()));
            apply_net(&mut tx, net, lenient).await?;
        }
        let last = &group[group.len() - 1];
        checkpoint::save(
            &mut tx,
            &name,
            last.offset.0,
            &last.gtid.map(|g| g.to_string()).unwrap_or_default(),
            &last.source.file,
            last.source.pos,
        )
        .await
        .map_err(Failure::Transient)?;
        tx.commit().await.map_err(Failure::Transient)?;
        Ok(())
    }

    async fn try_ddl(&mut self, record: &Record, schema: &str, statement: &str) -> Result<(), Failure> {
        let offset = record.offset.0;
        let name = self.config.name.clone();
        let replay = self.ddl_pending == Some(offset);
        self.conn().await.map_err(Failure::Transient)?;
        let conn = self.conn.as_mut().ok_or_else(|| {
            Failure::Transient(mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed))
        })?;
        if !replay {
            checkpoint::mark_ddl(conn, &name, offset).await.map_err(Failure::Transient)?;
            // From here a retry may find the DDL already applied.
            self.ddl_pending = Some(offset);
        }
        if !schema.is_empty() {
            conn.query_drop(format!("USE {}", sql::ident(schema)))
                .await
                .map_err(|e| Failure::sql(offset, None, &format!("USE {schema}"), e))?;
        }
        match conn.query_drop(statement).await {
            Ok(()) => {}
            Err(mysql_async::Error::Server(e)) if replay && codes::DDL_ALREADY_DONE.contains(&e.code) => {
                info!(consumer = %name, offset, error = %e.message, "DDL had been applied before a restart");
            }
            Err(e) => return Err(Failure::sql(offset, None, statement, e)),
        }
        let gtid = record.gtid.map(|g| g.to_string()).unwrap_or_default();
        checkpoint::save(conn, &name, offset, &gtid, &record.source.file, record.source.pos)
            .await
            .map_err(Failure::Transient)?;
        self.ddl_pending = None;
        // Every table's shape may have changed.
        self.verified.clear();
        Ok(())
    }
}

/// `lenient`: the table is being copied, so a key may be missing (not copied yet) without drift.
async fn apply_net(tx: &mut mysql_async::Transaction<'_>, net: &NetTable, lenient: bool) -> Result<(), Failure> {
    let shape = &net.shape;
    let offset = net.first_offset;
    let deletes = net.deletes();
    let mut done = 0;
    while done < deletes.len() {
        let n = sql::insert_chunk(deletes.len() - done, shape.primary_key.len());
        let stmt = sql::delete_keys(shape, n);
        let params: Vec<_> = deletes[done..done + n].iter().flat_map(|k| k.iter().map(sql::to_mysql)).collect();
        tx.exec_drop(&stmt, params).await.map_err(|e| Failure::sql(offset, Some(shape), &stmt, e))?;
        if tx.affected_rows() != n as u64 && !lenient {
            return Err(Failure::Permanent {
                offset,
                table: Some((shape.schema.clone(), shape.table.clone())),
                statement: stmt,
                reason: format!(
                    "{} of {n} rows the primary changed were found: the secondary has drifted",
                    tx.affected_rows()
                ),
            });
        }
        done += n;
    }
    let inserts = net.inserts();
    let mut done = 0;
    while done < inserts.len() {
        let n = sql::insert_chunk(inserts.len() - done, shape.columns.len());
        let stmt = sql::insert(shape, n);
        let params: Vec<_> = inserts[done..done + n].iter().flat_map(|r| r.iter().map(sql::to_mysql)).collect();
        tx.exec_drop(&stmt, params).await.map_err(|e| Failure::sql(offset, Some(shape), &stmt, e))?;
        done += n;
    }
    Ok(())
}

/// Row by row, for tables without a primary key. `lenient` (the table is being copied, by a unique key): a row
/// may be missing, and the after image replaces any row with the same unique key.
async fn apply_change(
    tx: &mut mysql_async::Transaction<'_>,
    offset: u64,
    c: &TableChange,
    lenient: bool,
) -> Result<(), Failure> {
    if lenient {
        for row in &c.rows {
            if let RowChange::Update { before, .. } | RowChange::Delete { before } = row {
                let stmt = sql::delete(c);
                tx.exec_drop(&stmt, sql::key_params(c, before))
                    .await
                    .map_err(|e| Failure::sql(offset, Some(c), &stmt, e))?;
            }
            if let RowChange::Insert { after } | RowChange::Update { after, .. } = row {
                let stmt = sql::replace(c, 1);
                let params: Vec<_> = after.iter().map(sql::to_mysql).collect();
                tx.exec_drop(&stmt, params).await.map_err(|e| Failure::sql(offset, Some(c), &stmt, e))?;
            }
        }
        return Ok(());
    }
    let mut i = 0;
    while i < c.rows.len() {
        match &c.rows[i] {
            RowChange::Insert { .. } => {
                let run = c.rows[i..].iter().take_while(|r| matches!(r, RowChange::Insert { .. })).count();
                let mut done = 0;
                while done < run {
                    let n = sql::insert_chunk(run - done, c.columns.len());
                    let stmt = sql::insert(c, n);
                    let mut params = Vec::with_capacity(n * c.columns.len());
                    for row in &c.rows[i + done..i + done + n] {
                        if let RowChange::Insert { after } = row {
                            params.extend(after.iter().map(sql::to_mysql));
                        }
                    }
                    tx.exec_drop(&stmt, params).await.map_err(|e| Failure::sql(offset, Some(c), &stmt, e))?;
                    done += n;
                }
                i += run;
            }
            RowChange::Update { before, after } => {
                let stmt = sql::update(c);
                let mut params: Vec<_> = after.iter().map(sql::to_mysql).collect();
                params.extend(sql::key_params(c, before));
                tx.exec_drop(&stmt, params).await.map_err(|e| Failure::sql(offset, Some(c), &stmt, e))?;
                expect_one(tx, offset, c, &stmt, "UPDATE")?;
                i += 1;
            }
            RowChange::Delete { before } => {
                let stmt = sql::delete(c);
                tx.exec_drop(&stmt, sql::key_params(c, before))
                    .await
                    .map_err(|e| Failure::sql(offset, Some(c), &stmt, e))?;
                expect_one(tx, offset, c, &stmt, "DELETE")?;
                i += 1;
            }
        }
    }
    Ok(())
}

/// An UPDATE or DELETE that finds no row means the secondary has drifted from the primary.
fn expect_one(
    tx: &mut mysql_async::Transaction<'_>,
    offset: u64,
    c: &TableChange,
    stmt: &str,
    what: &str,
) -> Result<(), Failure> {
    if tx.affected_rows() == 1 {
        return Ok(());
    }
    Err(Failure::Permanent {
        offset,
        table: Some((c.schema.clone(), c.table.clone())),
        statement: stmt.to_owned(),
        reason: format!(
            "{what} found {} rows where the primary changed one: the secondary has drifted",
            tx.affected_rows()
        ),
    })
}
