//! The assembler: turns the primary's binlog events into committed transactions, one handler per kind of
//! event. A transaction is handed on at its end (XID, COMMIT, XA PREPARE/COMMIT/ROLLBACK, or the end of a
//! standalone statement), with the position after it. A transaction whose decoded rows pass
//! [`FRAGMENT_BYTES`] is handed on in fragments as it is read, so that memory does not grow with its size;
//! the journal keeps fragments invisible until the transaction's end arrives (see [`crate::journal`]).
//!
//! A BLOB/TEXT value of [`common::event::PIECE_BYTES`] or more is not decoded with its row: the row gets a
//! [`common::event::Value::Long`] stand-in, the changes before its rows event go ahead as a fragment, and
//! [`Assembler::next_piece`] then cuts the value from the event into piece records, one at a time as they are
//! handed on; the record with the event's rows follows them directly, which is what each stand-in's `back`
//! counts on. Pieces are fragments like any other, so the journal's rules for an unfinished transaction cover
//! them: nothing of the transaction is visible until its end, and a crash removes every piece with the rest.

use std::collections::HashMap;
use std::sync::Arc;

use common::event::{Body, RowChange, TableChange};
use common::position::{BinlogPosition, Gtid, GtidState};
use mysql_async::binlog::events::{Event, EventData, QueryEvent, RotateEvent, RowsEventData, TableMapEvent};
use mysql_async::binlog::RowsEventFlags;
use tracing::{debug, info, warn};

use crate::binlog::decode::{LongSlice, PieceReader, TableInfo};
use crate::binlog::mariadb_events as maria;
use crate::binlog::preflight::PrimaryInfo;
use crate::binlog::statement::{self, classify, Statement};
use crate::config::Config;
use crate::error::ReaderError;
use crate::pipeline::{Committed, Xa};

/// Bytes of decoded row changes in memory ([`RowChange::mem_size`]) after which a transaction's changes so far
/// are handed on as a fragment. (Decoded rows take two to ten times their binlog size.)
pub const FRAGMENT_BYTES: usize = 4 << 20;

/// A source transaction being assembled.
struct Pending {
    /// Binlog position where the transaction (or its part not handed on yet) starts.
    start_pos: u64,
    gtid: Option<Gtid>,
    standalone: bool,
    bodies: Vec<Body>,
    /// Memory the rows in `bodies` hold ([`RowChange::mem_size`]).
    row_bytes: usize,
    /// An XA transaction: its changes are kept whole until XA COMMIT (never fragmented).
    xa: bool,
}

impl Pending {
    fn new(start_pos: u64, standalone: bool) -> Self {
        Self { start_pos, gtid: None, standalone, bodies: Vec::new(), row_bytes: 0, xa: false }
    }

    /// Whether the changes so far should be handed on before more are added.
    fn full(&self) -> bool {
        self.row_bytes >= FRAGMENT_BYTES
            && !self.xa
            && !self.standalone
            && matches!(self.bodies.as_slice(), [Body::Transaction(_)])
    }

    /// The run of changes the next rows go to: the last one if it is of the same table, shape and foreign key
    /// checks, else a new one.
    fn push_change(&mut self, info: &TableInfo, foreign_key_checks: bool) -> &mut TableChange {
        let same_table = matches!(
            self.bodies.last(),
            Some(Body::Transaction(changes))
                if changes.last().is_some_and(|c| c.schema == info.schema && c.table == info.table
                    && c.columns == info.columns && c.foreign_key_checks == foreign_key_checks)
        );
        if !matches!(self.bodies.last(), Some(Body::Transaction(_))) {
            self.bodies.push(Body::Transaction(Vec::new()));
        }
        let Some(Body::Transaction(changes)) = self.bodies.last_mut() else { unreachable!("just pushed") };
        if !same_table {
            changes.push(info.new_change(foreign_key_checks));
        }
        changes.last_mut().unwrap_or_else(|| unreachable!("just pushed"))
    }
}

/// Where an event is, for messages.
struct Here<'a> {
    file: &'a str,
    log_pos: u64,
    timestamp: u32,
    /// Microseconds of `timestamp`, where the event logs them (a query event's `Q_HRNOW`); else 0.
    micros: u32,
}

impl Here<'_> {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.log_pos)
    }

    fn unsupported(&self, what: impl Into<String>) -> ReaderError {
        ReaderError::Unsupported { position: self.at(), what: what.into() }
    }
}

/// What is handed on at `here` (see [`Assembler::committed`]).
fn committed(
    gtid_state: &GtidState,
    primary: &PrimaryInfo,
    gtid: Option<Gtid>,
    bodies: Vec<Body>,
    here: &Here<'_>,
    continues: bool,
) -> Committed {
    Committed {
        gtid,
        source: BinlogPosition { file: here.file.to_owned(), pos: here.log_pos },
        commit_unix_seconds: i64::from(here.timestamp),
        commit_micros: here.micros,
        bodies,
        gtid_state: gtid_state.clone(),
        server_id: primary.server_id,
        binlog_basename: primary.binlog_basename.clone(),
        xa: None,
        continues,
    }
}

/// Turns a sequence of binlog events into committed transactions.
pub struct Assembler<'a> {
    config: &'a Config,
    primary: &'a PrimaryInfo,
    gtid_state: GtidState,
    /// Whether `gtid_state` is complete (every domain), so that it can be resumed from.
    gtid_known: bool,
    pending: Option<Pending>,
    /// Table id → decoded table info, or None when the filter leaves the table out.
    tables: HashMap<u64, Option<Arc<TableInfo>>>,
    fde_seen: bool,
    /// The long values of the last rows event handled, still to be handed on in pieces ([`Self::next_piece`]).
    longs: Vec<LongSlice>,
    pieces: Option<Pieces>,
}

/// Where the pieces of the last rows event's long values are being read (see [`Assembler::next_piece`]).
struct Pieces {
    /// Offset of the rows data in the event's data.
    rows_data: usize,
    file: String,
    log_pos: u64,
    timestamp: u32,
    /// The next long value to read, and the reader of the current one.
    next: usize,
    reader: Option<PieceReader>,
}

impl<'a> Assembler<'a> {
    /// `gtid_state`: the complete GTID state the stream starts from, when it starts from a GTID.
    pub fn new(config: &'a Config, primary: &'a PrimaryInfo, gtid_state: Option<&GtidState>) -> Self {
        Self {
            config,
            primary,
            gtid_state: gtid_state.cloned().unwrap_or_default(),
            // From a file position the GTID state is unknown until a GTID_LIST event (the full state at the
            // start of every binlog) arrives; until then the reader keeps resuming by file and position.
            gtid_known: gtid_state.is_some(),
            pending: None,
            tables: HashMap::new(),
            fde_seen: false,
            longs: Vec::new(),
            pieces: None,
        }
    }

    /// The next piece of the long values in the event last handled, as a record of its own (a fragment of the
    /// transaction): after `handle` returned, call this until it returns None and hand on each piece in turn.
    /// Each piece is read from the event as it is asked for, so only the event itself is held whole.
    pub fn next_piece(&mut self, event: &Event) -> Option<Result<Committed, ReaderError>> {
        let p = self.pieces.as_mut()?;
        let here = Here { file: &p.file, log_pos: p.log_pos, timestamp: p.timestamp, micros: 0 };
        loop {
            if p.reader.is_none() {
                let Some(slice) = self.longs.get(p.next) else {
                    self.pieces = None;
                    self.longs.clear();
                    return None;
                };
                p.reader = Some(slice.reader());
                p.next += 1;
            }
            let data = event.data().get(p.rows_data..).unwrap_or_default();
            match p.reader.as_mut().and_then(|r| r.next_piece(data)) {
                Some(Ok(value)) => {
                    let gtid = self.pending.as_ref().and_then(|t| t.gtid);
                    let body = Body::Piece(value);
                    return Some(Ok(committed(&self.gtid_state, self.primary, gtid, vec![body], &here, true)));
                }
                Some(Err(source)) => return Some(Err(ReaderError::Decode { position: here.at(), source })),
                None => p.reader = None,
            }
        }
    }

    /// Takes one event; returns a transaction (or a fragment of one) it completes. `file` follows rotations.
    pub fn handle(&mut self, event: &Event, file: &mut String) -> Result<Option<Committed>, ReaderError> {
        self.longs.clear();
        self.pieces = None;
        let header = event.header();
        let kind = header.event_type_raw();
        let log_pos = u64::from(header.log_pos());
        let here = Here { file: file.as_str(), log_pos, timestamp: header.timestamp(), micros: 0 };
        match kind {
            maria::GTID => return self.on_gtid(event, &here),
            maria::GTID_LIST => return self.on_gtid_list(event, &here),
            maria::BINLOG_CHECKPOINT | maria::START_ENCRYPTION | 160 => return Ok(None),
            maria::COMPRESSED_FIRST..=maria::COMPRESSED_LAST => {
                return Err(here.unsupported(format!(
                    "compressed binlog event (type {kind}); set log_bin_compress=OFF on the primary and restart \
                     the reader at a position after the compressed events. Nothing was skipped"
                )))
            }
            _ => {}
        }
        let data = event.read_data().map_err(|e| here.unsupported(format!("unreadable event type {kind}: {e}")))?;
        let Some(data) = data else { return Err(here.unsupported(format!("unknown event type {kind}"))) };
        match data {
            EventData::RotateEvent(r) => {
                let name = self.on_rotate(&r, event, here.file);
                *file = name;
            }
            EventData::FormatDescriptionEvent(_) => self.fde_seen = true,
            EventData::TableMapEvent(tme) => self.on_table_map(&tme, &here)?,
            EventData::RowsEvent(rows) => return self.on_rows(&rows, event, &here),
            EventData::XidEvent(_) => return Ok(self.commit(&here)),
            EventData::XaPrepareLogEvent(body) => {
                // The first phase of an XA transaction: its changes wait in the journal for XA COMMIT.
                let xid = statement::xid_key(&body).ok_or_else(|| here.unsupported("malformed XA_PREPARE event"))?;
                return Ok(self.commit(&here).map(|mut c| {
                    let bodies = std::mem::take(&mut c.bodies);
                    Committed { xa: Some(Xa::Prepare { xid, bodies }), ..c }
                }));
            }
            EventData::QueryEvent(q) => {
                let here = Here { micros: hrnow_micros(q.status_vars_raw()).unwrap_or(0), ..here };
                return self.on_query(&q, &here);
            }
            EventData::IncidentEvent(i) => {
                let message =
                    format!("incident event on the primary ({:?}): its binlog may be missing changes", i.message());
                return Err(here.unsupported(message));
            }
            EventData::IntvarEvent(_) | EventData::RandEvent(_) | EventData::UserVarEvent(_) => {
                // Only logged for statement-based DML, which the QUERY event that follows refuses.
            }
            _ if kind == 27 => {} // heartbeat
            other => debug!(kind, event = ?std::mem::discriminant(&other), "event ignored"),
        }
        Ok(None)
    }

    fn on_gtid(&mut self, event: &Event, here: &Here<'_>) -> Result<Option<Committed>, ReaderError> {
        let header = event.header();
        let g = maria::parse_gtid(event.data(), header.server_id())
            .map_err(|source| ReaderError::Malformed { position: here.at(), source })?;
        if let Some(p) = &self.pending {
            warn!(gtid = ?p.gtid, "transaction without an end event was dropped by the primary's binlog");
        }
        let mut pending =
            Pending::new(here.log_pos.saturating_sub(header.event_size().into()), g.flags & maria::FL_STANDALONE != 0);
        pending.gtid = Some(g.gtid);
        self.pending = Some(pending);
        Ok(None)
    }

    fn on_gtid_list(&mut self, event: &Event, here: &Here<'_>) -> Result<Option<Committed>, ReaderError> {
        let list = maria::parse_gtid_list(event.data())
            .map_err(|source| ReaderError::Malformed { position: here.at(), source })?;
        if !self.gtid_known && self.pending.is_none() {
            list.into_iter().for_each(|g| self.gtid_state.advance(g));
            self.gtid_known = true;
        }
        Ok(None)
    }

    /// Returns the name of the binlog file the stream continues in.
    fn on_rotate(&mut self, r: &RotateEvent<'_>, event: &Event, file: &str) -> String {
        let mut raw = r.name_raw().to_vec();
        // Before the format description arrives, mysql_common does not know checksums are on, so the first
        // (artificial) rotate's name still ends with its 4-byte CRC32.
        if !self.fde_seen && event.header().event_size() as usize == 19 + 8 + raw.len() && raw.len() > 4 {
            raw.truncate(raw.len() - 4);
        }
        let name = String::from_utf8_lossy(&raw).into_owned();
        if file != name {
            debug!(file = %name, "binlog rotated");
        }
        // The table-map cache is cleared at each rotate.
        self.tables.clear();
        name
    }

    fn on_table_map(&mut self, tme: &TableMapEvent<'_>, here: &Here<'_>) -> Result<(), ReaderError> {
        let entry = if self.config.filter.table(&tme.database_name(), &tme.table_name()) {
            let info =
                TableInfo::from_table_map(tme).map_err(|source| ReaderError::Decode { position: here.at(), source })?;
            Some(Arc::new(info))
        } else {
            None
        };
        self.tables.insert(tme.table_id(), entry);
        Ok(())
    }

    /// Adds the event's rows to the pending transaction; returns the changes before them as a fragment when
    /// the transaction has grown past [`FRAGMENT_BYTES`].
    fn on_rows(
        &mut self,
        rows: &RowsEventData<'_>,
        event: &Event,
        here: &Here<'_>,
    ) -> Result<Option<Committed>, ReaderError> {
        let id = rows.table_id();
        let info = match self.tables.get(&id) {
            Some(Some(info)) => info.clone(),
            Some(None) => return Ok(None),
            None => return Err(here.unsupported(format!("rows event for table id {id} without its table map"))),
        };
        let size = event.header().event_size();
        let pending = self.pending.get_or_insert_with(|| Pending::new(here.log_pos, false));
        let fragment = if pending.full() {
            let bodies = std::mem::take(&mut pending.bodies);
            pending.row_bytes = 0;
            pending.start_pos = here.log_pos.saturating_sub(u64::from(size));
            let gtid = pending.gtid;
            Some(self.committed(gtid, bodies, here, true))
        } else {
            None
        };
        let Some(pending) = self.pending.as_mut() else { unreachable!("inserted above") };
        let checks = !rows.flags().contains(RowsEventFlags::NO_FOREIGN_KEY_CHECKS);
        // Long values go in pieces ahead of their rows only where the transaction may be fragmented.
        let mut longs = Vec::new();
        let pieces_allowed =
            !pending.xa && !pending.standalone && matches!(pending.bodies.as_slice(), [] | [Body::Transaction(_)]);
        let change = pending.push_change(&info, checks);
        let had = change.rows.len();
        info.decode_rows(rows, &mut change.rows, pieces_allowed.then_some(&mut longs))
            .map_err(|source| ReaderError::Decode { position: here.at(), source })?;
        let added: usize = change.rows[had..].iter().map(RowChange::mem_size).sum();
        if longs.is_empty() {
            pending.row_bytes += added;
            return Ok(fragment);
        }
        // The record with this event's rows must directly follow their long values' pieces (each `back`
        // counts from it): the changes before them go ahead as a fragment of their own.
        let mine = TableChange { rows: change.rows.split_off(had), ..change.shape() };
        let mut before = std::mem::replace(&mut pending.bodies, vec![Body::Transaction(vec![mine])]);
        if let Some(Body::Transaction(changes)) = before.last_mut() {
            if changes.last().is_some_and(|c| c.rows.is_empty()) {
                changes.pop();
            }
            if changes.is_empty() {
                before.pop();
            }
        }
        pending.row_bytes = added;
        pending.start_pos = here.log_pos.saturating_sub(u64::from(size));
        let gtid = pending.gtid;
        // Where the rows lie in the event (mysql_common parses them in place), so that pieces can be cut later.
        let rows_data = (rows.rows_data().as_ptr() as usize)
            .checked_sub(event.data().as_ptr() as usize)
            .filter(|&at| at <= event.data().len())
            .ok_or_else(|| here.unsupported("a rows event's rows lie outside the event (mysql_common changed)"))?;
        self.longs = longs;
        self.pieces = Some(Pieces {
            rows_data,
            file: here.file.to_owned(),
            log_pos: here.log_pos,
            timestamp: here.timestamp,
            next: 0,
            reader: None,
        });
        if before.is_empty() {
            return Ok(fragment);
        }
        debug_assert!(fragment.is_none(), "a fragment just handed on leaves nothing before this event");
        Ok(Some(self.committed(gtid, before, here, true)))
    }

    /// What is handed on at `here`: a transaction's end (`continues` false, with the GTID state after it), or a
    /// fragment of one (its changes so far, journaled ahead of the rest).
    fn committed(&self, gtid: Option<Gtid>, bodies: Vec<Body>, here: &Here<'_>, continues: bool) -> Committed {
        committed(&self.gtid_state, self.primary, gtid, bodies, here, continues)
    }

    fn on_query(&mut self, q: &QueryEvent<'_>, here: &Here<'_>) -> Result<Option<Committed>, ReaderError> {
        let statement = q.query();
        match classify(&statement) {
            Statement::Begin => {
                if self.pending.is_none() {
                    self.pending = Some(Pending::new(here.log_pos, false));
                }
            }
            Statement::Commit => return Ok(self.commit(here)),
            Statement::Rollback => {
                if let Some(p) = self.pending.as_mut() {
                    if !p.bodies.is_empty() {
                        warn!(gtid = ?p.gtid, "a transaction that changed non-transactional tables was rolled \
                              back on the primary; its logged changes are not journaled");
                    }
                    p.bodies.clear();
                }
                return Ok(self.commit(here));
            }
            Statement::Savepoint => {}
            Statement::XaBracket => {
                if let Some(p) = self.pending.as_mut() {
                    p.xa = true;
                }
            }
            Statement::XaCommit(xid) => {
                return Ok(self.commit(here).map(|c| Committed { xa: Some(Xa::Commit { xid }), ..c }))
            }
            Statement::XaRollback(xid) => {
                return Ok(self.commit(here).map(|c| Committed { xa: Some(Xa::Rollback { xid }), ..c }))
            }
            Statement::StatementDml => {
                return Err(here.unsupported(format!(
                    "statement-based DML in the binlog ({statement:.80}): a session used binlog_format other than \
                     ROW, or the statement changed a table versioned by transaction ids (MariaDB logs those as \
                     statements). Nothing was skipped; the reader cannot turn statements into rows: exclude such a \
                     table with REPLICA_EXCLUDE, or set binlog_format=ROW for every session"
                )))
            }
            Statement::NotData(what) => {
                info!(gtid = ?self.pending.as_ref().and_then(|p| p.gtid), kind = what, "statement not journaled (not data)");
            }
            Statement::Unknown => {
                warn!(gtid = ?self.pending.as_ref().and_then(|p| p.gtid), statement = %format!("{statement:.120}"),
                      "statement not journaled (not recognised as DDL)");
            }
            Statement::Ddl { schema, table } => self.on_ddl(schema, table, q.schema().into_owned(), &statement, here),
        }
        if self.pending.as_ref().is_some_and(|p| p.standalone) {
            return Ok(self.commit(here));
        }
        Ok(None)
    }

    fn on_ddl(
        &mut self,
        schema: Option<String>,
        table: Option<String>,
        default_schema: String,
        statement: &str,
        here: &Here<'_>,
    ) {
        let target = schema.clone().unwrap_or_else(|| default_schema.clone());
        let admitted = match &table {
            Some(t) => self.config.filter.table(&target, t),
            None => !target.is_empty() && self.config.filter.schema(&target),
        };
        let pending = self.pending.get_or_insert_with(|| Pending::new(here.log_pos, true));
        if admitted {
            // CREATE/DROP DATABASE name their database, and MariaDB logs that database as the event's default
            // schema even though it may not exist (yet) where it is applied.
            let schema = if table.is_none() && schema.is_some() { String::new() } else { default_schema };
            pending.bodies.push(Body::Ddl { schema, statement: statement.to_owned() });
        }
        // Table ids may be reused for the changed table.
        self.tables.clear();
    }

    /// Ends the pending transaction at the event `here`.
    fn commit(&mut self, here: &Here<'_>) -> Option<Committed> {
        let p = self.pending.take()?;
        if let (Some(g), true) = (p.gtid, self.gtid_known) {
            self.gtid_state.advance(g);
        }
        Some(self.committed(p.gtid, p.bodies, here, false))
    }
}

/// MariaDB's `Q_HRNOW` status variable of a query event: the microseconds of the event's time, logged when the
/// statement used the time with microseconds. The status variables before it are walked by their lengths
/// (MariaDB's `log_event.h`); None if it is absent or an unknown variable comes first.
fn hrnow_micros(vars: &[u8]) -> Option<u32> {
    const Q_HRNOW: u8 = 128;
    let mut at = 0usize;
    while let Some(&key) = vars.get(at) {
        at += 1;
        let len = match key {
            Q_HRNOW => {
                let b = vars.get(at..at + 3)?;
                return Some(u32::from_le_bytes([b[0], b[1], b[2], 0]));
            }
            0 | 3 | 10 => 4,                          // flags2, auto_increment, master_data_written
            1 | 9 | 17 | 129 => 8,                    // sql_mode, table_map_for_update, ddl_logged_with_xid, xid
            2 => 1 + usize::from(*vars.get(at)?) + 1, // catalog (length, name, NUL)
            4 => 6,                                   // charset
            5 | 6 => 1 + usize::from(*vars.get(at)?), // time_zone, catalog_nz
            7 | 8 | 18 => 2,                          // lc_time_names, charset_database, default_collation_for_utf8mb4
            11 => {
                // invoker: user and host, each length-prefixed
                let user = usize::from(*vars.get(at)?);
                let host = usize::from(*vars.get(at + 1 + user)?);
                2 + user + host
            }
            12 => {
                // updated_db_names: a count, then as many NUL-terminated names (none past the maximum)
                let count = *vars.get(at)?;
                let mut end = at + 1;
                if count != 254 {
                    for _ in 0..count {
                        end += vars.get(end..)?.iter().position(|&b| b == 0)? + 1;
                    }
                }
                end - at
            }
            13 => 3,                 // microseconds (MySQL)
            16 | 19 | 20 | 130 => 1, // explicit_defaults_for_timestamp, sql_require_primary_key, table_encryption, gtid_flags3
            _ => return None,
        };
        at += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::hrnow_micros;

    #[test]
    fn the_microseconds_of_a_query_are_found_after_the_usual_status_variables() {
        // flags2, sql_mode, catalog_nz "std", charset, updated_db_names ["tm"], then Q_HRNOW 654321.
        let mut vars = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 3, b's', b't', b'd', 4, 33, 0, 33, 0, 8, 0];
        vars.extend_from_slice(&[12, 1, b't', b'm', 0, 128]);
        vars.extend_from_slice(&654_321u32.to_le_bytes()[..3]);
        vars.extend_from_slice(&[129, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(hrnow_micros(&vars), Some(654_321));
        assert_eq!(hrnow_micros(&vars[..vars.len() - 12]), None, "not logged");
        assert_eq!(hrnow_micros(&[99, 1, 2, 3]), None, "an unknown variable stops the walk");
    }
}
