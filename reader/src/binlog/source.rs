//! The binlog source: connects to the primary as a replication client, assembles committed transactions
//! and hands them to the journal writer; reconnects with backoff and resumes exactly.
//!
//! Resume rules: the position only ever advances at a transaction boundary (XID, COMMIT, or the end of a
//! standalone statement), together with the records of that transaction. On every (re)connection the
//! source first waits until the writer has made everything it was sent durable, then resumes from the
//! journal's resume state: by MariaDB GTID (`@slave_connect_state`) when the state has one, by file and
//! position otherwise — and then only from the same primary (server id and binlog base name).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::event::{Body, TableChange};
use common::position::{BinlogPosition, Gtid, GtidState, StartPosition};
use common::retry::RetryPolicy;
use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, EventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts, OptsBuilder};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::decode::TableInfo;
use crate::error::{codes, ReaderError};
use crate::journal::{Committed, ResumeState, Xa};
use crate::mariadb_events as maria;
use crate::preflight::{self, PrimaryInfo};
use crate::statement::{self, classify, Statement};

/// Messages to the journal writer.
pub enum WriterMsg {
    /// A transaction and the share of the in-flight byte budget it holds until it is durable.
    Commit(Committed, tokio::sync::OwnedSemaphorePermit),
    /// Answered once everything sent before it is durable, with the journal's resume state.
    Barrier(oneshot::Sender<Option<ResumeState>>),
}

/// Live state shown in status and health.
#[derive(Debug)]
pub struct SourceStatus {
    pub connected: AtomicBool,
    pub backpressure: AtomicBool,
    pub counters: crate::metrics::Counters,
    /// How far the source has read the primary's binlog: every transaction that ends at or before this
    /// position has been handed to the journal writer. Snapshot reads wait on it (see `snapshot`).
    pub read_through: tokio::sync::watch::Sender<Option<BinlogPosition>>,
}

impl Default for SourceStatus {
    fn default() -> Self {
        Self {
            connected: AtomicBool::default(),
            backpressure: AtomicBool::default(),
            counters: Default::default(),
            read_through: tokio::sync::watch::Sender::new(None),
        }
    }
}

/// Binlog bytes of transactions decoded but not yet durable: bounds the reader's memory whatever the backlog.
pub const IN_FLIGHT_BYTES: u32 = 16 << 20;

pub struct Source {
    pub config: Arc<Config>,
    pub writer: mpsc::Sender<WriterMsg>,
    /// Permits are binlog bytes (see [`IN_FLIGHT_BYTES`]).
    pub budget: Arc<tokio::sync::Semaphore>,
    pub status: Arc<SourceStatus>,
    pub shutdown: CancellationToken,
}

/// How a connection asks for the stream.
#[derive(Debug, Clone)]
enum Start {
    Gtid(GtidState),
    File(BinlogPosition),
}

impl Source {
    /// Streams until shutdown (Ok) or a definite error.
    pub async fn run(self) -> Result<(), ReaderError> {
        let mut retry = RetryPolicy::new(Duration::from_millis(200), self.config.reconnect_max).start();
        loop {
            let resume = self.durable_resume_state().await?;
            let started = Instant::now();
            let result = self.stream_once(resume).await;
            self.status.connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    self.status.counters.reconnects.inc();
                    retry.reset_if_healthy(started, Duration::from_secs(30));
                    let pause = retry.next_delay();
                    warn!(error = %e, cause = ?std::error::Error::source(&e).map(ToString::to_string), retry_in = ?pause, "primary connection lost; reconnecting");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn durable_resume_state(&self) -> Result<Option<ResumeState>, ReaderError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriterMsg::Barrier(tx))
            .await
            .map_err(|_| ReaderError::Task("journal writer stopped".into()))?;
        rx.await.map_err(|_| ReaderError::Task("journal writer stopped".into()))
    }

    fn opts(&self) -> Opts {
        OptsBuilder::default()
            .ip_or_hostname(self.config.primary_host.clone())
            .tcp_port(self.config.primary_port)
            .user(Some(self.config.user.clone()))
            .pass(Some(self.config.password.expose().to_owned()))
            .max_allowed_packet(Some(1 << 30))
            .prefer_socket(false)
            .ssl_opts(self.config.maria_tls.ssl_opts())
            .into()
    }

    async fn stream_once(&self, resume: Option<ResumeState>) -> Result<(), ReaderError> {
        let mut meta = Conn::new(self.opts()).await.map_err(ReaderError::Connect)?;
        let primary = preflight::check(&mut meta).await?;
        let start = self.start_from(&mut meta, &primary, resume.as_ref()).await?;
        drop(meta.disconnect().await);

        let mut conn = Conn::new(self.opts()).await.map_err(ReaderError::Connect)?;
        let period_ns = self.config.heartbeat.as_nanos();
        conn.query_drop(format!("SET @mariadb_slave_capability=4, @master_heartbeat_period={period_ns}"))
            .await
            .map_err(ReaderError::Connect)?;
        let request = BinlogStreamRequest::new(self.config.server_id);
        let (request, mut file) = match &start {
            Start::Gtid(state) => {
                conn.query_drop(format!(
                    "SET @slave_connect_state='{state}', @slave_gtid_strict_mode=0, @slave_gtid_ignore_duplicates=0"
                ))
                .await
                .map_err(ReaderError::Connect)?;
                (request.with_filename(b""), String::new())
            }
            Start::File(p) => (request.with_filename(p.file.as_bytes()).with_pos(p.pos), p.file.clone()),
        };
        let start_text = match &start {
            Start::Gtid(s) => format!("GTID {s}"),
            Start::File(p) => p.to_string(),
        };
        let mut stream = conn.get_binlog_stream(request).await.map_err(ReaderError::Connect)?;
        info!(primary = %self.config.primary_name, version = %primary.version, from = %start_text, "streaming the binlog");

        let mut asm = Assembler {
            config: &self.config,
            primary: &primary,
            gtid_state: match &start {
                Start::Gtid(s) => s.clone(),
                Start::File(_) => GtidState::default(),
            },
            // From a file position the GTID state is unknown until a GTID_LIST event (the full state at the
            // start of every binlog) arrives; until then the reader keeps resuming by file and position.
            gtid_known: matches!(start, Start::Gtid(_)),
            pending: None,
            tables: HashMap::new(),
            fde_seen: false,
        };
        let silence = self.config.heartbeat * 3;
        let mut first_event = true;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                n = tokio::time::timeout(silence, stream.next()) => n,
            };
            let event = match next {
                Err(_) => return Err(ReaderError::Silent(silence)),
                Ok(None) => {
                    return Err(ReaderError::Stream(mysql_async::Error::Io(mysql_async::IoError::Io(
                        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the primary ended the binlog stream"),
                    ))))
                }
                Ok(Some(Err(mysql_async::Error::Server(e)))) if e.code == codes::FATAL_READING_BINLOG => {
                    let purged = e.message.contains("purged")
                        || e.message.contains("not in the master's binlog")
                        || e.message.contains("Could not find first log file")
                        || e.message.contains("Could not find GTID");
                    return Err(if purged {
                        ReaderError::Purged { position: start_text, server_message: e.message }
                    } else {
                        ReaderError::Rejected(e.message)
                    });
                }
                Ok(Some(Err(e))) => return Err(ReaderError::Stream(e)),
                Ok(Some(Ok(event))) => event,
            };
            if first_event {
                first_event = false;
                self.status.connected.store(true, Ordering::Relaxed);
            }
            let handled = asm.handle(&event, &mut file)?;
            if let Some((committed, bytes)) = handled {
                // Awaiting here is the backpressure: when the writer is behind, reading from the primary stops.
                let permits = bytes.clamp(1, u64::from(IN_FLIGHT_BYTES)) as u32;
                let permit = tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => return Ok(()),
                    p = self.budget.clone().acquire_many_owned(permits) => {
                        p.map_err(|_| ReaderError::Task("journal writer stopped".into()))?
                    }
                };
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => return Ok(()),
                    r = self.writer.send(WriterMsg::Commit(committed, permit)) => {
                        r.map_err(|_| ReaderError::Task("journal writer stopped".into()))?
                    }
                }
            }
            // Artificial events carry no position; a ROTATE's position is in the file it ends, so the
            // stream is then at the start of the next one.
            let log_pos = u64::from(event.header().log_pos());
            if event.header().event_type_raw() == maria::ROTATE {
                self.status.read_through.send_replace(Some(BinlogPosition { file: file.clone(), pos: 4 }));
            } else if log_pos > 0 && !file.is_empty() {
                self.status.read_through.send_replace(Some(BinlogPosition { file: file.clone(), pos: log_pos }));
            }
        }
    }

    async fn start_from(
        &self,
        meta: &mut Conn,
        primary: &PrimaryInfo,
        resume: Option<&ResumeState>,
    ) -> Result<Start, ReaderError> {
        if let Some(r) = resume {
            if !r.gtid.is_empty() {
                if r.server_id != primary.server_id || r.binlog_basename != primary.binlog_basename {
                    warn!(
                        was_server_id = r.server_id,
                        now_server_id = primary.server_id,
                        gtid = %r.gtid,
                        "the primary changed; resuming by GTID"
                    );
                }
                return Ok(Start::Gtid(r.gtid.clone()));
            }
            if r.server_id != primary.server_id || r.binlog_basename != primary.binlog_basename {
                return Err(ReaderError::IdentityChanged {
                    was_id: r.server_id,
                    was_base: r.binlog_basename.clone(),
                    now_id: primary.server_id,
                    now_base: primary.binlog_basename.clone(),
                });
            }
            return Ok(Start::File(r.position.clone()));
        }
        match &self.config.start_position {
            StartPosition::Gtid(s) => Ok(Start::Gtid(s.clone())),
            StartPosition::File(p) => Ok(Start::File(p.clone())),
            StartPosition::Current if !primary.gtid_binlog_pos.is_empty() => {
                let state = primary.gtid_binlog_pos.parse().map_err(|e| ReaderError::Preflight(format!("{e}")))?;
                Ok(Start::Gtid(state))
            }
            StartPosition::Current => {
                let row: Option<(String, u64)> = meta
                    .query_first("SHOW MASTER STATUS")
                    .await
                    .map_err(ReaderError::Connect)?
                    .map(|row: mysql_async::Row| row)
                    .and_then(|row| Some((row.get::<String, _>(0)?, row.get::<u64, _>(1)?)));
                let (file, pos) = row.ok_or_else(|| ReaderError::Preflight("SHOW MASTER STATUS is empty".into()))?;
                Ok(Start::File(BinlogPosition { file, pos }))
            }
            StartPosition::Earliest => {
                let first: Option<mysql_async::Row> =
                    meta.query_first("SHOW BINARY LOGS").await.map_err(ReaderError::Connect)?;
                let file = first
                    .and_then(|row| row.get::<String, _>(0))
                    .ok_or_else(|| ReaderError::Preflight("SHOW BINARY LOGS is empty".into()))?;
                Ok(Start::File(BinlogPosition { file, pos: 4 }))
            }
        }
    }
}

/// A source transaction being assembled.
struct Pending {
    /// Binlog position where the transaction starts.
    start_pos: u64,
    gtid: Option<Gtid>,
    standalone: bool,
    bodies: Vec<Body>,
}

impl Pending {
    fn push_change(&mut self, info: &TableInfo) -> &mut TableChange {
        let same_table = matches!(
            self.bodies.last(),
            Some(Body::Transaction(changes))
                if changes.last().is_some_and(|c| c.schema == info.schema && c.table == info.table && c.columns == info.columns)
        );
        if !matches!(self.bodies.last(), Some(Body::Transaction(_))) {
            self.bodies.push(Body::Transaction(Vec::new()));
        }
        let Some(Body::Transaction(changes)) = self.bodies.last_mut() else { unreachable!("just pushed") };
        if !same_table {
            changes.push(info.new_change());
        }
        changes.last_mut().unwrap_or_else(|| unreachable!("just pushed"))
    }
}

/// Turns a sequence of binlog events into committed transactions.
struct Assembler<'a> {
    config: &'a Config,
    primary: &'a PrimaryInfo,
    gtid_state: GtidState,
    /// Whether `gtid_state` is complete (every domain), so that it can be resumed from.
    gtid_known: bool,
    pending: Option<Pending>,
    /// Table id → decoded table info, or None when the filter leaves the table out.
    tables: HashMap<u64, Option<Arc<TableInfo>>>,
    fde_seen: bool,
}

impl Assembler<'_> {
    fn handle(&mut self, event: &Event, file: &mut String) -> Result<Option<(Committed, u64)>, ReaderError> {
        let start = self.pending.as_ref().map(|p| p.start_pos);
        let committed = self.handle_event(event, file)?;
        let end = u64::from(event.header().log_pos());
        // The transaction's binlog bytes stand in for its decoded size.
        let bytes = match start {
            Some(s) if end > s => end - s,
            _ => event.header().event_size().into(),
        };
        Ok(committed.map(|c| (c, bytes)))
    }

    fn handle_event(&mut self, event: &Event, file: &mut String) -> Result<Option<Committed>, ReaderError> {
        let header = event.header();
        let kind = header.event_type_raw();
        let log_pos = u64::from(header.log_pos());
        let here = || format!("{}:{}", file, log_pos);
        match kind {
            maria::GTID => {
                let g = maria::parse_gtid(event.data(), header.server_id())
                    .map_err(|source| ReaderError::Malformed { position: here(), source })?;
                if let Some(p) = &self.pending {
                    warn!(gtid = ?p.gtid, "transaction without an end event was dropped by the primary's binlog");
                }
                self.pending = Some(Pending {
                    start_pos: log_pos.saturating_sub(header.event_size().into()),
                    gtid: Some(g.gtid),
                    standalone: g.flags & maria::FL_STANDALONE != 0,
                    bodies: Vec::new(),
                });
                return Ok(None);
            }
            maria::GTID_LIST => {
                let list = maria::parse_gtid_list(event.data())
                    .map_err(|source| ReaderError::Malformed { position: here(), source })?;
                if !self.gtid_known && self.pending.is_none() {
                    list.into_iter().for_each(|g| self.gtid_state.advance(g));
                    self.gtid_known = true;
                }
                return Ok(None);
            }
            maria::BINLOG_CHECKPOINT | maria::START_ENCRYPTION | 160 => return Ok(None),
            maria::COMPRESSED_FIRST..=maria::COMPRESSED_LAST => {
                return Err(ReaderError::Unsupported {
                    position: here(),
                    what: format!(
                        "compressed binlog event (type {kind}); set log_bin_compress=OFF on the primary and restart \
                         the reader at a position after the compressed events. Nothing was skipped"
                    ),
                })
            }
            _ => {}
        }
        let data = event.read_data().map_err(|e| ReaderError::Unsupported {
            position: here(),
            what: format!("unreadable event type {kind}: {e}"),
        })?;
        let Some(data) = data else {
            return Err(ReaderError::Unsupported { position: here(), what: format!("unknown event type {kind}") });
        };
        match data {
            EventData::RotateEvent(r) => {
                let mut raw = r.name_raw().to_vec();
                // Before the format description arrives, mysql_common does not know checksums are on, so the
                // first (artificial) rotate's name still ends with its 4-byte CRC32.
                if !self.fde_seen && header.event_size() as usize == 19 + 8 + raw.len() && raw.len() > 4 {
                    raw.truncate(raw.len() - 4);
                }
                let name = String::from_utf8_lossy(&raw).into_owned();
                if *file != name {
                    debug!(file = %name, "binlog rotated");
                }
                *file = name;
                // The table-map cache is cleared at each rotate.
                self.tables.clear();
            }
            EventData::FormatDescriptionEvent(_) => self.fde_seen = true,
            EventData::TableMapEvent(tme) => {
                let id = tme.table_id();
                let schema = tme.database_name();
                let table = tme.table_name();
                let entry = if self.config.filter.table(&schema, &table) {
                    Some(Arc::new(
                        TableInfo::from_table_map(&tme)
                            .map_err(|source| ReaderError::Decode { position: here(), source })?,
                    ))
                } else {
                    None
                };
                self.tables.insert(id, entry);
            }
            EventData::RowsEvent(rows) => {
                let id = rows.table_id();
                let info = match self.tables.get(&id) {
                    Some(Some(info)) => info.clone(),
                    Some(None) => return Ok(None),
                    None => {
                        return Err(ReaderError::Unsupported {
                            position: here(),
                            what: format!("rows event for table id {id} without its table map"),
                        })
                    }
                };
                let pending = self.pending.get_or_insert_with(|| Pending {
                    start_pos: log_pos,
                    gtid: None,
                    standalone: false,
                    bodies: vec![],
                });
                let change = pending.push_change(&info);
                info.decode_rows(&rows, &mut change.rows)
                    .map_err(|source| ReaderError::Decode { position: here(), source })?;
            }
            EventData::XidEvent(_) => return Ok(self.commit(file, log_pos, header.timestamp())),
            EventData::XaPrepareLogEvent(body) => {
                // The first phase of an XA transaction: its changes wait in the journal for XA COMMIT.
                let xid = statement::xid_key(&body).ok_or_else(|| ReaderError::Unsupported {
                    position: here(),
                    what: "malformed XA_PREPARE event".into(),
                })?;
                return Ok(self.commit(file, log_pos, header.timestamp()).map(|mut c| {
                    let bodies = std::mem::take(&mut c.bodies);
                    Committed { xa: Some(Xa::Prepare { xid, bodies }), ..c }
                }));
            }
            EventData::QueryEvent(q) => {
                let statement = q.query();
                let default_schema = q.schema().into_owned();
                match classify(&statement) {
                    Statement::Begin => {
                        if self.pending.is_none() {
                            self.pending =
                                Some(Pending { start_pos: log_pos, gtid: None, standalone: false, bodies: vec![] });
                        }
                    }
                    Statement::Commit => return Ok(self.commit(file, log_pos, header.timestamp())),
                    Statement::Rollback => {
                        if let Some(p) = self.pending.as_mut() {
                            if !p.bodies.is_empty() {
                                warn!(gtid = ?p.gtid, "a transaction that changed non-transactional tables was rolled \
                                      back on the primary; its logged changes are not journaled");
                            }
                            p.bodies.clear();
                        }
                        return Ok(self.commit(file, log_pos, header.timestamp()));
                    }
                    Statement::Savepoint | Statement::XaBracket => {}
                    Statement::XaCommit(xid) => {
                        return Ok(self
                            .commit(file, log_pos, header.timestamp())
                            .map(|c| Committed { xa: Some(Xa::Commit { xid }), ..c }))
                    }
                    Statement::XaRollback(xid) => {
                        return Ok(self
                            .commit(file, log_pos, header.timestamp())
                            .map(|c| Committed { xa: Some(Xa::Rollback { xid }), ..c }))
                    }
                    Statement::StatementDml => {
                        return Err(ReaderError::Unsupported {
                            position: here(),
                            what: format!(
                                "statement-based DML in the binlog ({:.80}): a session used binlog_format other than \
                                 ROW. Nothing was skipped; the reader cannot turn statements into rows",
                                statement
                            ),
                        })
                    }
                    Statement::NotData(what) => {
                        info!(gtid = ?self.pending.as_ref().and_then(|p| p.gtid), kind = what, "statement not journaled (not data)");
                    }
                    Statement::Unknown => {
                        warn!(gtid = ?self.pending.as_ref().and_then(|p| p.gtid), statement = %format!("{statement:.120}"), "statement not journaled (not recognised as DDL)");
                    }
                    Statement::Ddl { schema, table } => {
                        let target = schema.clone().unwrap_or_else(|| default_schema.clone());
                        let admitted = match &table {
                            Some(t) => self.config.filter.table(&target, t),
                            None => !target.is_empty() && self.config.filter.schema(&target),
                        };
                        let pending = self.pending.get_or_insert_with(|| Pending {
                            start_pos: log_pos,
                            gtid: None,
                            standalone: true,
                            bodies: vec![],
                        });
                        if admitted {
                            // CREATE/DROP DATABASE name their database, and MariaDB logs that database as the
                            // event's default schema even though it may not exist (yet) where it is applied.
                            let schema =
                                if table.is_none() && schema.is_some() { String::new() } else { default_schema };
                            pending.bodies.push(Body::Ddl { schema, statement: statement.into_owned() });
                        }
                        // Table ids may be reused for the changed table.
                        self.tables.clear();
                    }
                }
                if self.pending.as_ref().is_some_and(|p| p.standalone) {
                    return Ok(self.commit(file, log_pos, header.timestamp()));
                }
            }
            EventData::IncidentEvent(i) => {
                return Err(ReaderError::Unsupported {
                    position: here(),
                    what: format!(
                        "incident event on the primary ({:?}): its binlog may be missing changes",
                        i.message()
                    ),
                })
            }
            EventData::IntvarEvent(_) | EventData::RandEvent(_) | EventData::UserVarEvent(_) => {
                // Only logged for statement-based DML, which the QUERY event that follows refuses.
            }
            _ if kind == 27 => {} // heartbeat
            other => {
                debug!(kind, event = ?std::mem::discriminant(&other), "event ignored");
            }
        }
        Ok(None)
    }

    /// Ends the pending transaction at `log_pos`.
    fn commit(&mut self, file: &str, log_pos: u64, timestamp: u32) -> Option<Committed> {
        let p = self.pending.take()?;
        if let (Some(g), true) = (p.gtid, self.gtid_known) {
            self.gtid_state.advance(g);
        }
        Some(Committed {
            gtid: p.gtid,
            source: BinlogPosition { file: file.to_owned(), pos: log_pos },
            commit_unix_seconds: i64::from(timestamp),
            bodies: p.bodies,
            gtid_state: self.gtid_state.clone(),
            server_id: self.primary.server_id,
            binlog_basename: self.primary.binlog_basename.clone(),
            xa: None,
        })
    }
}
