//! The binlog source: connects to the primary as a replication client, turns its events into committed
//! transactions ([`crate::binlog::assemble`]) and hands them to the journal writer; reconnects with the retry
//! policy and resumes exactly; fails over to another candidate primary when the one it follows is lost.
//!
//! Resume rules: the position only ever advances at a transaction boundary (XID, COMMIT, or the end of a
//! standalone statement), together with the records of that transaction. On every (re)connection the
//! source first waits until the writer has made everything it was sent durable (discarding the fragments of a
//! transaction whose end never came: it is read again from its start), then resumes from the journal's resume
//! state: by MariaDB GTID (`@slave_connect_state`) when the state has one, by file and position otherwise —
//! and then only from the same primary (server id and binlog base name).
//!
//! Failover: `MARIA_PRIMARY_HOST` may list candidate primaries. When the followed server has been unreachable
//! for `REPLICA_FAILOVER_AFTER`, the others are tried in order, and an operator can re-point the reader at any
//! server (`SwitchPrimary`). Every server, the first one included and on every connection, is judged before
//! anything is read from it ([`crate::binlog::failover`]): it must hold every transaction the journal has, and
//! no transaction that none of the followed primaries had. Resuming by GTID then reads exactly the transactions
//! after the journal's last one, whatever the server's binlog file names.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::position::{BinlogPosition, GtidState, StartPosition};
use common::retry::RetryPolicy;
use futures_util::StreamExt;
use mysql_async::binlog::events::Event;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::binlog::assemble::Assembler;
use crate::binlog::failover::{self, History};
use crate::binlog::mariadb_events as maria;
use crate::binlog::preflight::{self, PrimaryInfo};
use crate::config::{Config, Endpoint};
use crate::error::{codes, ReaderError};
use crate::journal::writer::WriterHandle;
use crate::journal::{Journal, ResumeState};
use crate::pipeline::{Committed, Followed, SourceStatus, SwitchRequest};

/// Memory held by transactions decoded but not yet durable ([`Committed::mem_size`]): bounds the reader's
/// memory whatever the backlog.
pub const IN_FLIGHT_BYTES: u32 = 16 << 20;

pub struct Source {
    pub config: Arc<Config>,
    pub journal: Arc<Journal>,
    pub writer: WriterHandle,
    /// Permits are bytes of decoded changes (see [`IN_FLIGHT_BYTES`]).
    pub budget: Arc<tokio::sync::Semaphore>,
    pub status: Arc<SourceStatus>,
    pub shutdown: CancellationToken,
    /// Operators' requests to follow another server.
    pub switches: mpsc::Receiver<SwitchRequest>,
    /// The candidate primaries: the configured ones, then any an operator switched to.
    pub candidates: Vec<Endpoint>,
}

/// How a connection asks for the stream.
#[derive(Debug, Clone)]
pub enum Start {
    Gtid(GtidState),
    File(BinlogPosition),
}

/// Why a connection's stream ended without an error.
enum Ended {
    Shutdown,
    /// Follow candidate `i` from now on.
    Switch(usize),
}

impl Source {
    /// Streams until shutdown (Ok) or a definite error.
    pub async fn run(mut self) -> Result<(), ReaderError> {
        let mut retry = RetryPolicy::new(Duration::from_millis(200), self.config.reconnect_max).start();
        let mut at = 0;
        // Since when the followed server has been unreachable (failover after `failover_after`).
        let mut lost_since: Option<Instant> = None;
        loop {
            let resume = self.writer.restart().await?;
            let result = self.stream_once(at, resume).await;
            // Whether this connection streamed (the primary sent events): the link worked, so the next failure
            // is a new cut and is retried from the shortest wait; only failures in a row back off further.
            let streamed = self.status.connected.swap(false, Ordering::Relaxed);
            let e = match result {
                Ok(Ended::Shutdown) => return Ok(()),
                Ok(Ended::Switch(i)) => {
                    (at, lost_since) = (i, None);
                    retry.reset();
                    continue;
                }
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            self.status.counters.reconnects.inc();
            if streamed {
                retry.reset();
                lost_since = None;
            }
            let lost = *lost_since.get_or_insert_with(Instant::now);
            let pause = retry.next_delay();
            warn!(
                primary = %self.candidates[at],
                error = %e,
                cause = ?std::error::Error::source(&e).map(ToString::to_string),
                retry_in = ?pause,
                "primary connection lost; reconnecting"
            );
            if self.candidates.len() > 1 && lost.elapsed() >= self.config.failover_after {
                if let Some(i) = self.fail_over(at).await? {
                    (at, lost_since) = (i, None);
                    retry.reset();
                    continue;
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
                Some(request) = self.switches.recv() => {
                    if let Some(i) = self.switch(request).await? {
                        (at, lost_since) = (i, None);
                        retry.reset();
                    }
                }
            }
        }
    }

    /// Tries the other candidates in order after the followed one; the first that may be followed.
    async fn fail_over(&self, lost: usize) -> Result<Option<usize>, ReaderError> {
        let resume = self.writer.barrier().await?;
        if self.resumes_by_file(resume.as_ref()) {
            warn!("cannot fail over: the journal resumes by file and position (no GTID); bring the primary back");
            return Ok(None);
        }
        let n = self.candidates.len();
        for i in (1..n).map(|k| (lost + k) % n) {
            let server = &self.candidates[i];
            match self.probe(server, resume.as_ref()).await {
                Ok((meta, _)) => {
                    drop(meta.disconnect().await);
                    warn!(lost = %self.candidates[lost], candidate = %server, "failing over to a candidate primary");
                    return Ok(Some(i));
                }
                Err(e @ ReaderError::Refused { .. }) => error!(candidate = %server, "{e}"),
                Err(e) => warn!(candidate = %server, error = %e, "candidate primary not available"),
            }
        }
        Ok(None)
    }

    /// Whether the next connection resumes by binlog file and position, which only the same server can serve.
    fn resumes_by_file(&self, resume: Option<&ResumeState>) -> bool {
        match resume {
            Some(r) => r.gtid.is_empty(),
            // An empty journal starts where the configuration says: a FILE:POS belongs to the server it names.
            None => matches!(self.config.start_position, StartPosition::File(_)),
        }
    }

    /// Answers an operator's request to follow another server: the candidate index to follow, if it may be.
    async fn switch(&mut self, request: SwitchRequest) -> Result<Option<usize>, ReaderError> {
        let resume = self.writer.barrier().await?;
        if self.resumes_by_file(resume.as_ref()) {
            let _ = request.reply.send(Err(
                "the journal resumes by binlog file and position (no GTID), which only the same server can serve"
                    .into(),
            ));
            return Ok(None);
        }
        let answer = match self.probe(&request.to, resume.as_ref()).await {
            Ok((meta, primary)) => {
                drop(meta.disconnect().await);
                let i = match self.candidates.iter().position(|c| *c == request.to) {
                    Some(i) => i,
                    None => {
                        self.candidates.push(request.to.clone());
                        self.candidates.len() - 1
                    }
                };
                info!(to = %request.to, server_id = primary.server_id, "re-pointed by an operator");
                Ok((format!("following {} (server id {}) from now on", request.to, primary.server_id), i))
            }
            Err(e) => Err(common::lifecycle::error_chain(&e)),
        };
        let (reply, chosen) = match answer {
            Ok((message, i)) => (Ok(message), Some(i)),
            Err(message) => (Err(message), None),
        };
        let _ = request.reply.send(reply);
        Ok(chosen)
    }

    fn opts(&self, server: &Endpoint) -> Opts {
        server_opts(&self.config, server)
    }

    /// Connects to `server`, checks its settings and judges it against the journal (see [`failover`]).
    async fn probe(&self, server: &Endpoint, resume: Option<&ResumeState>) -> Result<(Conn, PrimaryInfo), ReaderError> {
        let mut meta = Conn::new(self.opts(server)).await.map_err(ReaderError::Connect)?;
        let primary = preflight::check(&mut meta).await?;
        let Some(r) = resume.filter(|r| !r.gtid.is_empty()) else { return Ok((meta, primary)) };
        let mut history = History::default();
        history.merge(&self.journal.history()?);
        let mut verdict = failover::judge(&r.gtid, &history, &primary.gtid_binlog_state);
        if !verdict.errant.is_empty() && self.config.allow_errant_gtids {
            warn!(%server, errant = %verdict.errant.join(","), "following a server with errant GTIDs (REPLICA_ALLOW_ERRANT_GTIDS)");
            verdict.errant.clear();
        }
        if !verdict.is_clean() {
            drop(meta.disconnect().await);
            return Err(ReaderError::Refused {
                server: server.to_string(),
                server_id: primary.server_id,
                reason: verdict.to_string(),
            });
        }
        Ok((meta, primary))
    }

    /// Records that `server` is followed now: in the status, in the GTID history, and in the log and the
    /// counters when it is another server than before.
    fn follow(
        &self,
        server: &Endpoint,
        primary: &PrimaryInfo,
        resume: Option<&ResumeState>,
    ) -> Result<(), ReaderError> {
        let mut history = History::default();
        history.merge(&self.journal.history()?);
        history.merge(&primary.gtid_binlog_state);
        self.journal.save_history(&history.gtids())?;
        let now =
            Followed { endpoint: server.clone(), server_id: primary.server_id, since_offset: self.journal.head() };
        let was = self.status.follow(now);
        let was_id = was.as_ref().map(|w| w.server_id).or(resume.map(|r| r.server_id).filter(|&id| id != 0));
        if was_id.is_some_and(|id| id != primary.server_id) {
            self.status.counters.primary_changes.inc();
            warn!(
                was_server_id = was_id,
                was = ?was.map(|w| w.endpoint.to_string()),
                now = %server,
                now_server_id = primary.server_id,
                gtid = %resume.map(|r| r.gtid.to_string()).unwrap_or_default(),
                "the primary changed: following another server from the journal's GTID state"
            );
        }
        Ok(())
    }

    /// Checks the server, decides where to start, and opens the binlog stream there.
    async fn open(
        &self,
        server: &Endpoint,
        resume: Option<ResumeState>,
    ) -> Result<(BinlogStream, PrimaryInfo, Start), ReaderError> {
        let (mut meta, primary) = self.probe(server, resume.as_ref()).await?;
        let start = self.start_from(&mut meta, &primary, resume.as_ref()).await?;
        drop(meta.disconnect().await);
        if let (None, Start::Gtid(state)) = (&resume, &start) {
            // An empty journal: what its first record follows, for consumers that find their place by GTID.
            self.journal.set_start_gtid(state)?;
        }

        let stream = open_stream(self.opts(server), self.config.server_id, self.config.heartbeat, &start).await?;
        self.follow(server, &primary, resume.as_ref())?;
        info!(primary = %self.config.primary_name, %server, version = %primary.version, from = %start, "streaming the binlog");
        Ok((stream, primary, start))
    }

    /// One connection's stream from candidate `at`: Ok when shut down or re-pointed, Err when it broke.
    async fn stream_once(&mut self, at: usize, resume: Option<ResumeState>) -> Result<Ended, ReaderError> {
        let server = self.candidates[at].clone();
        let (mut stream, primary, start) = self.open(&server, resume).await?;
        let mut file = match &start {
            Start::Gtid(_) => String::new(),
            Start::File(p) => p.file.clone(),
        };
        let config = self.config.clone();
        let mut asm = Assembler::new(&config, &primary, start.gtid_state());
        let silence = self.config.heartbeat * 3;
        let mut first_event = true;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(Ended::Shutdown),
                Some(request) = self.switches.recv() => {
                    match self.switch(request).await? {
                        Some(i) => return Ok(Ended::Switch(i)),
                        None => continue,
                    }
                }
                n = tokio::time::timeout(silence, stream.next()) => n,
            };
            let event = match next {
                Err(_) => return Err(ReaderError::Silent(silence)),
                Ok(None) => {
                    return Err(ReaderError::Stream(mysql_async::Error::Io(mysql_async::IoError::Io(
                        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the primary ended the binlog stream"),
                    ))))
                }
                Ok(Some(Err(e))) => return Err(stream_error(e, &start)),
                Ok(Some(Ok(event))) => event,
            };
            if first_event {
                first_event = false;
                self.status.connected.store(true, Ordering::Relaxed);
            }
            if let Some(committed) = asm.handle(&event, &mut file)? {
                if !self.hand_over(committed).await? {
                    return Ok(Ended::Shutdown);
                }
            }
            // The pieces of the event's long values, read from it one at a time as the budget lets them pass.
            while let Some(piece) = asm.next_piece(&event) {
                if !self.hand_over(piece?).await? {
                    return Ok(Ended::Shutdown);
                }
            }
            self.note_read_through(&event, &file);
        }
    }

    /// Hands a transaction to the writer, holding its share of the in-flight budget; false if shut down first.
    /// Awaiting here is the backpressure: when the writer is behind, reading from the primary stops.
    async fn hand_over(&self, committed: Committed) -> Result<bool, ReaderError> {
        let permits = committed.mem_size().clamp(1, IN_FLIGHT_BYTES as usize) as u32;
        debug!(gtid = ?committed.gtid.map(|g| g.to_string()), end = %committed.source, bodies = committed.bodies.len(),
               bytes = permits, fragment = committed.continues, "binlog transaction read");
        let permit = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Ok(false),
            p = self.budget.clone().acquire_many_owned(permits) => p.map_err(|_| ReaderError::WriterStopped)?,
        };
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Ok(false),
            r = self.writer.commit(committed, permit) => r.map(|()| true),
        }
    }

    /// Artificial events carry no position; a ROTATE's position is in the file it ends, so the stream is then
    /// at the start of the next one.
    fn note_read_through(&self, event: &Event, file: &str) {
        let log_pos = u64::from(event.header().log_pos());
        let at = if event.header().event_type_raw() == maria::ROTATE {
            4
        } else if log_pos > 0 && !file.is_empty() {
            log_pos
        } else {
            return;
        };
        self.status.read_through.send_replace(Some(BinlogPosition { file: file.to_owned(), pos: at }));
    }

    async fn start_from(
        &self,
        meta: &mut Conn,
        primary: &PrimaryInfo,
        resume: Option<&ResumeState>,
    ) -> Result<Start, ReaderError> {
        if let Some(r) = resume {
            if !r.gtid.is_empty() {
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

/// Connection options for `server` with the reader's account and TLS settings.
pub(crate) fn server_opts(config: &Config, server: &Endpoint) -> Opts {
    common::mariadb::opts(&common::mariadb::Server {
        host: &server.host,
        port: server.port,
        user: &config.user,
        password: &config.password,
        tls: &config.maria_tls,
    })
    .into()
}

/// A replication connection as `server_id`, streaming from `start` with heartbeats every `heartbeat`.
pub(crate) async fn open_stream(
    opts: Opts,
    server_id: u32,
    heartbeat: Duration,
    start: &Start,
) -> Result<BinlogStream, ReaderError> {
    let mut conn = Conn::new(opts).await.map_err(ReaderError::Connect)?;
    let period_ns = heartbeat.as_nanos();
    conn.query_drop(format!("SET @mariadb_slave_capability=4, @master_heartbeat_period={period_ns}"))
        .await
        .map_err(ReaderError::Connect)?;
    let request = BinlogStreamRequest::new(server_id);
    let request = match start {
        Start::Gtid(state) => {
            conn.query_drop(format!(
                "SET @slave_connect_state='{state}', @slave_gtid_strict_mode=0, @slave_gtid_ignore_duplicates=0"
            ))
            .await
            .map_err(ReaderError::Connect)?;
            request.with_filename(b"")
        }
        Start::File(p) => request.with_filename(p.file.as_bytes()).with_pos(p.pos),
    };
    conn.get_binlog_stream(request).await.map_err(ReaderError::Connect)
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Start::Gtid(s) => write!(f, "GTID {s}"),
            Start::File(p) => write!(f, "{p}"),
        }
    }
}

impl Start {
    /// The GTID state known at the start: complete from a GTID, unknown (empty) from a file position.
    pub fn gtid_state(&self) -> Option<&GtidState> {
        match self {
            Start::Gtid(s) => Some(s),
            Start::File(_) => None,
        }
    }
}

/// An error of the binlog stream. MariaDB reports a purged or unknown position, and an unreadable binlog, with
/// one code (1236); only its message tells them apart, so that message is read here and nowhere else.
fn stream_error(e: mysql_async::Error, start: &Start) -> ReaderError {
    match e {
        mysql_async::Error::Server(e) if e.code == codes::FATAL_READING_BINLOG => {
            let purged =
                ["purged", "not in the master's binlog", "Could not find first log file", "Could not find GTID"]
                    .iter()
                    .any(|m| e.message.contains(m));
            if purged {
                ReaderError::Purged { position: start.to_string(), server_message: e.message }
            } else {
                ReaderError::Rejected(e.message)
            }
        }
        e => ReaderError::Stream(e),
    }
}
