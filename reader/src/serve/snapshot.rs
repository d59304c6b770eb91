//! Consistent reads of the primary for appliers' initial copies: table definitions and key-ordered chunks,
//! each tied to the exact journal offset it reflects.
//!
//! A chunk is read in its own `START TRANSACTION WITH CONSISTENT SNAPSHOT`, whose binlog position P MariaDB
//! reports as `binlog_snapshot_file`/`binlog_snapshot_position`: the snapshot holds exactly the transactions
//! that end at or before P. The reader waits until its source has read the binlog through P and the journal
//! writer has made everything before that durable; the boundary is then the last journal offset whose
//! transaction ends at or before P. Records up to the boundary are in the snapshot, records after it are not.

use std::sync::Arc;
use std::time::Duration;

use common::chunk::{self, Range, RowSum, SelectColumn};
use common::event::{Column, ColumnType, RowChange, TableChange, Value};
use common::position::BinlogPosition;
use common::proto;
use common::sql_value::ident;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Pool, PoolConstraints, PoolOpts, Value as My};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{debug, warn};

use crate::config::Config;
use crate::config::Endpoint;
use crate::error::SnapshotError;
use crate::journal::writer::WeakWriterHandle;
use crate::journal::Journal;
use crate::pipeline::{Followed, SourceStatus};

/// Longest wait for the source to read the binlog up to a snapshot's position.
const BOUNDARY_WAIT: Duration = Duration::from_secs(60);
/// Rows per streamed part of a chunk (parts are also cut at [`PART_BYTES`]).
const PART_ROWS: usize = 1000;
const PART_BYTES: usize = 2 << 20;
/// Default rows of a chunk when the request says 0.
const DEFAULT_CHUNK: u32 = 1000;
/// Default chunks of a checksum response when the request says 0.
const DEFAULT_CHECKSUM_CHUNKS: u32 = 10;

/// The chunk key of a table.
struct TableKey {
    kind: &'static str,
    columns: Vec<String>,
}

pub struct Snapshots {
    /// Connections to the followed server, made anew when the source follows another one.
    pool: std::sync::Mutex<Option<(Followed, Pool)>>,
    journal: Arc<Journal>,
    status: Arc<SourceStatus>,
    /// Weak, so that the journal writer still ends when the source does.
    writer: WeakWriterHandle,
    config: Arc<Config>,
}

impl Snapshots {
    pub fn new(
        config: Arc<Config>,
        journal: Arc<Journal>,
        status: Arc<SourceStatus>,
        writer: WeakWriterHandle,
    ) -> Self {
        Self { pool: Default::default(), journal, status, writer, config }
    }

    /// A connection to the server the source follows, and which server that is.
    async fn conn(&self) -> Result<(Conn, Followed), SnapshotError> {
        let followed = self.status.followed().ok_or_else(|| {
            SnapshotError::Unavailable("the reader is not connected to a primary yet; retry when it is".into())
        })?;
        let pool = {
            let mut slot = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some((f, pool)) if f.same_server(&followed) => pool.clone(),
                _ => {
                    let pool = self.new_pool(&followed.endpoint);
                    *slot = Some((followed.clone(), pool.clone()));
                    pool
                }
            }
        };
        Ok((pool.get_conn().await?, followed))
    }

    fn new_pool(&self, server: &Endpoint) -> Pool {
        let config = &self.config;
        let opts: Opts = common::mariadb::opts(&common::mariadb::Server {
            host: &server.host,
            port: server.port,
            user: &config.user,
            password: &config.password,
            tls: &config.maria_tls,
        })
        .pool_opts(PoolOpts::default().with_constraints(PoolConstraints::new(0, 16).unwrap_or_default()))
        // UTC so TIMESTAMPs come back as instants; a slow applier may leave a chunk's rows unread a while.
        .setup(vec![
            "SET NAMES utf8mb4, time_zone = '+00:00', net_write_timeout = 3600".to_owned(),
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ".to_owned(),
        ])
        .into();
        Pool::new(opts)
    }

    /// The last journal offset whose transaction ends at or before `p` (a position of `server`'s binlog), once
    /// the journal holds all of them.
    async fn boundary(&self, p: &BinlogPosition, server: &Followed) -> Result<u64, SnapshotError> {
        let mut rx = self.status.read_through.subscribe();
        let reached = tokio::time::timeout(BOUNDARY_WAIT, async {
            loop {
                if rx.borrow_and_update().as_ref().is_some_and(|r| r.binlog_cmp(p).is_ge()) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        if !matches!(reached, Ok(true)) {
            let at = self.status.read_through.borrow().as_ref().map_or("nothing yet".to_owned(), |r| r.to_string());
            return Err(SnapshotError::Unavailable(format!(
                "the reader has not yet read the primary's binlog up to the snapshot at {p} (it is at {at}); \
                 retry when it has caught up"
            )));
        }
        // Everything the source handed over before it reached `p` becomes durable first.
        self.writer
            .barrier()
            .await
            .map_err(|_| SnapshotError::Unavailable("the reader is stopping: its journal writer has stopped".into()))?;
        // `read_through` is cleared when the source follows another server, so `p` was compared with positions of
        // `server`'s binlog unless the source switched since.
        if !self.status.followed().is_some_and(|now| now.same_server(server)) {
            return Err(SnapshotError::Unavailable(
                "the reader began following another primary during this snapshot; retry".into(),
            ));
        }
        let journal = self.journal.clone();
        let p = p.clone();
        let since = server.since_offset;
        tokio::task::spawn_blocking(move || {
            // Records written since the source passed `p` are few: walk back from the head. Records up to
            // `since` came before anything read from this server and are in its snapshot.
            let mut offset = journal.head();
            while offset >= journal.first() && offset > since {
                match journal.read(offset, 1, usize::MAX)?.first() {
                    Some(r) if r.source.binlog_cmp(&p).is_gt() => offset -= 1,
                    _ => break,
                }
            }
            Ok(offset)
        })
        .await
        .map_err(|e| SnapshotError::Unavailable(e.to_string()))?
    }

    async fn current_position(conn: &mut Conn) -> Result<BinlogPosition, SnapshotError> {
        let row: Option<mysql_async::Row> = conn.query_first("SHOW MASTER STATUS").await?;
        let row = row.ok_or_else(|| SnapshotError::Unavailable("SHOW MASTER STATUS is empty".into()))?;
        match (row.get::<String, _>(0), row.get::<u64, _>(1)) {
            (Some(file), Some(pos)) => Ok(BinlogPosition { file, pos }),
            _ => Err(SnapshotError::Unavailable("SHOW MASTER STATUS gave no position".into())),
        }
    }

    /// Schemas and tables passing the filters, with definitions that reflect exactly the records up to the
    /// returned boundary.
    pub async fn list_tables(&self, req: proto::ListTablesRequest) -> Result<proto::ListTablesResponse, SnapshotError> {
        let (mut conn, server) = self.conn().await?;
        for _attempt in 0..10 {
            let before = Self::current_position(&mut conn).await?;
            let mut response = self.definitions(&mut conn, &req.schema, &req.table).await?;
            let after = Self::current_position(&mut conn).await?;
            let first = self.boundary(&before, &server).await?;
            let last = self.boundary(&after, &server).await?;
            // A DDL between the two positions may or may not be in the definitions: read them again.
            if first < last && self.has_ddl(first + 1, last).await? {
                debug!(first, last, "DDL while reading table definitions; reading them again");
                continue;
            }
            if !req.consumer.is_empty() {
                let journal = self.journal.clone();
                let name = req.consumer.clone();
                tokio::task::spawn_blocking(move || journal.register(&name, last + 1))
                    .await
                    .map_err(|e| SnapshotError::Unavailable(e.to_string()))??;
            }
            response.boundary_offset = last;
            response.position =
                Some(proto::SourcePosition { file: after.file, position: after.pos, gtid: String::new() });
            return Ok(response);
        }
        Err(SnapshotError::Unavailable("table definitions kept changing (DDL on the primary); retry".into()))
    }

    async fn has_ddl(&self, from: u64, to: u64) -> Result<bool, SnapshotError> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            let mut next = from;
            while next <= to {
                let records = journal.read(next, ((to - next + 1) as usize).min(256), 16 << 20)?;
                let Some(last) = records.last() else { break };
                if records.iter().any(|r| r.offset.0 <= to && matches!(r.body, common::event::Body::Ddl { .. })) {
                    return Ok(true);
                }
                next = last.offset.0 + 1;
            }
            Ok(false)
        })
        .await
        .map_err(|e| SnapshotError::Unavailable(e.to_string()))?
    }

    async fn definitions(
        &self,
        conn: &mut Conn,
        only_schema: &str,
        only_table: &str,
    ) -> Result<proto::ListTablesResponse, SnapshotError> {
        // Sequences are copied like a one-row table (their state is that row); system-versioned tables with every
        // version, whole (see `columns` and `key`).
        let tables: Vec<(String, String, Option<u64>, String)> = conn
            .query(
                "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_ROWS, TABLE_TYPE FROM information_schema.TABLES \
                 WHERE TABLE_TYPE IN ('BASE TABLE', 'SEQUENCE', 'SYSTEM VERSIONED') \
                 ORDER BY TABLE_SCHEMA, TABLE_NAME",
            )
            .await?;
        let mut response = proto::ListTablesResponse::default();
        for (schema, table, rows, kind) in tables {
            if !self.config.filter.table(&schema, &table)
                || (!only_schema.is_empty() && schema != only_schema)
                || (!only_table.is_empty() && table != only_table)
            {
                continue;
            }
            let columns = Self::columns(conn, &schema, &table).await?;
            if kind == "SYSTEM VERSIONED"
                && columns.iter().any(|c| c.period && c.column.ty != common::event::ColumnType::Timestamp)
            {
                warn!(
                    schema = %schema,
                    table = %table,
                    "table versioned by transaction ids not copied (its history is local to the primary, and \
                     MariaDB logs its changes as statements): exclude it with REPLICA_EXCLUDE"
                );
                continue;
            }
            if response.schemas.last().is_none_or(|s| s.name != schema) {
                let create: Option<(String, String)> =
                    conn.query_first(format!("SHOW CREATE DATABASE {}", ident(&schema))).await?;
                response.schemas.push(proto::SchemaDefinition {
                    name: schema.clone(),
                    create_statement: create.map(|(_, c)| c).unwrap_or_default(),
                });
            }
            let create: Option<(String, String)> =
                conn.query_first(format!("SHOW CREATE TABLE {}.{}", ident(&schema), ident(&table))).await?;
            let key = Self::key(conn, &schema, &table, &columns).await?;
            response.tables.push(proto::TableDefinition {
                create_statement: create.map(|(_, c)| c).unwrap_or_default(),
                key_columns: key.columns,
                key_kind: key.kind.into(),
                estimated_rows: rows.unwrap_or(0),
                schema,
                name: table,
            });
        }
        if response.tables.is_empty() && !only_table.is_empty() {
            return Err(SnapshotError::NotFound(format!(
                "table {only_schema}.{only_table} does not exist on the primary or is excluded by the reader's filters"
            )));
        }
        Ok(response)
    }

    /// The columns a copy writes (generated columns are computed by the secondary, except the period columns
    /// of a system-versioned table, whose every version is copied with them).
    async fn columns(conn: &mut Conn, schema: &str, table: &str) -> Result<Vec<SelectColumn>, SnapshotError> {
        let (found, period) = common::mariadb::columns_with_period(conn, schema, table).await?;
        let is_period = |name: &str| period.as_ref().is_some_and(|(s, e)| name == s || name == e);
        Ok(found
            .into_iter()
            .filter(|c| !c.generated || is_period(&c.name))
            .map(|c| {
                let period = is_period(&c.name);
                let ty = ColumnType::from_data_type(&c.data_type);
                let as_binary = SelectColumn::is_stored_as_bytes(&c.data_type);
                let binary = as_binary
                    || matches!(
                        c.data_type.as_str(),
                        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
                    );
                SelectColumn {
                    column: Column {
                        name: c.name,
                        ty,
                        unsigned: c.column_type.contains("unsigned"),
                        nullable: c.nullable,
                        binlog_type: 0,
                        binlog_meta: 0,
                        collation: if binary { 63 } else { c.collation },
                    },
                    as_binary,
                    period,
                }
            })
            .collect())
    }

    /// The primary key, else the first unique key on NOT NULL columns (no prefixes), else none.
    async fn key(
        conn: &mut Conn,
        schema: &str,
        table: &str,
        columns: &[SelectColumn],
    ) -> Result<TableKey, SnapshotError> {
        if columns.iter().any(|c| c.period) {
            // Every version of a key is a row: a system-versioned table is read whole, in one snapshot.
            return Ok(TableKey { kind: "none", columns: Vec::new() });
        }
        let rows: Vec<(String, String, u8, Option<u64>)> = conn
            .exec(
                "SELECT INDEX_NAME, COLUMN_NAME, NON_UNIQUE, SUB_PART FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                 ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX",
                (schema, table),
            )
            .await?;
        let mut indexes: Vec<(String, Vec<String>, bool)> = Vec::new();
        for (index, column, non_unique, sub_part) in rows {
            if indexes.last().is_none_or(|(name, _, _)| *name != index) {
                indexes.push((index.clone(), Vec::new(), non_unique == 0));
            }
            if let Some(last) = indexes.last_mut() {
                last.1.push(column);
                if sub_part.is_some() {
                    last.2 = false;
                }
            }
        }
        let not_null = |c: &String| columns.iter().any(|x| x.column.name == *c && !x.column.nullable);
        for (index, cols, unique) in indexes {
            if index == "PRIMARY" {
                return Ok(TableKey { kind: "primary", columns: cols });
            }
            if unique && cols.iter().all(not_null) {
                return Ok(TableKey { kind: "unique", columns: cols });
            }
        }
        Ok(TableKey { kind: "none", columns: Vec::new() })
    }

    /// Begins a consistent snapshot on `conn` and returns the binlog position it reflects.
    async fn start_snapshot(conn: &mut Conn) -> Result<BinlogPosition, SnapshotError> {
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await?;
        let status: Vec<(String, String)> = conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
        let get = |name: &str| status.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        match (get("binlog_snapshot_file"), get("binlog_snapshot_position")) {
            (Some(file), Some(pos)) if !file.is_empty() => Ok(BinlogPosition {
                file,
                pos: pos
                    .parse()
                    .map_err(|_| SnapshotError::Unavailable(format!("bad binlog_snapshot_position {pos}")))?,
            }),
            _ => Err(SnapshotError::Unavailable("the primary reports no binlog snapshot position".into())),
        }
    }

    /// Runs the chunk's SELECT and sends its rows in parts of [`PART_ROWS`] rows or [`PART_BYTES`] bytes.
    async fn stream_rows(
        &self,
        conn: &mut Conn,
        sql: String,
        params: Vec<My>,
        shape: &TableChange,
        columns: &[SelectColumn],
        tx: &mpsc::Sender<Result<proto::ChunkPart, Status>>,
    ) -> Result<(), SnapshotError> {
        let mut result = conn.exec_iter(sql, params).await?;
        let mut part = TableChange { columns: Vec::new(), primary_key: Vec::new(), ..shape.clone() };
        let mut bytes = 0usize;
        while let Some(row) = result.next().await? {
            let values = row
                .unwrap()
                .into_iter()
                .zip(columns)
                .map(|(v, c)| chunk::value(v, &c.column))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SnapshotError::Invalid(format!("{}.{}: {e}", shape.schema, shape.table)))?;
            self.status.counters.copy_rows.inc();
            bytes += values.iter().map(Value::mem_size).sum::<usize>();
            part.rows.push(RowChange::Insert { after: values });
            if part.rows.len() >= PART_ROWS || bytes >= PART_BYTES {
                let rows = std::mem::take(&mut part.rows);
                bytes = 0;
                let msg =
                    proto::ChunkPart { rows: Some(TableChange { rows, ..part.clone() }.into()), ..Default::default() };
                if tx.send(Ok(msg)).await.is_err() {
                    return Ok(());
                }
            }
        }
        drop(result);
        if !part.rows.is_empty() {
            let msg = proto::ChunkPart { rows: Some(part.into()), ..Default::default() };
            let _ = tx.send(Ok(msg)).await;
        }
        Ok(())
    }

    /// Begins a snapshot of the primary for one table: checks the filters and the key values given, reads the
    /// table's columns and chunk key in the snapshot, and waits for the snapshot's journal boundary.
    async fn open_table(&self, schema: &str, table: &str, keys: &[&[Value]]) -> Result<TableSnapshot, SnapshotError> {
        if !self.config.filter.table(schema, table) {
            return Err(SnapshotError::Invalid(format!("table {schema}.{table} is excluded by the reader's filters")));
        }
        let (mut conn, server) = self.conn().await?;
        let position = Self::start_snapshot(&mut conn).await?;
        // Definitions read after the snapshot began: a DDL after that makes the SELECT fail (ER_TABLE_DEF_CHANGED).
        let columns = Self::columns(&mut conn, schema, table).await?;
        if columns.is_empty() {
            return Err(SnapshotError::NotFound(format!("table {schema}.{table} does not exist on the primary")));
        }
        let key = Self::key(&mut conn, schema, table, &columns).await?;
        let key_index: Vec<u32> = key
            .columns
            .iter()
            .map(|k| columns.iter().position(|c| c.column.name == *k).map(|i| i as u32))
            .collect::<Option<_>>()
            .ok_or_else(|| SnapshotError::Unavailable("a key column is generated or missing; retry".into()))?;
        if let Some(bad) = keys.iter().find(|k| !k.is_empty() && k.len() != key_index.len()) {
            return Err(SnapshotError::Invalid(format!(
                "a key of {} values was given but the key of {schema}.{table} is ({})",
                bad.len(),
                key.columns.join(", ")
            )));
        }
        let boundary = self.boundary(&position, &server).await?;
        let shape = TableChange {
            schema: schema.to_owned(),
            table: table.to_owned(),
            columns: columns.iter().map(|c| c.column.clone()).collect(),
            primary_key: key_index,
            rows: Vec::new(),
            // A copy is written with checks off, whatever this says.
            foreign_key_checks: false,
        };
        Ok(TableSnapshot { conn, position, columns, key_kind: key.kind, shape, boundary })
    }

    /// Streams one chunk of a table into `tx`: a first part with the boundary and the columns, then rows.
    pub async fn read_chunk(
        &self,
        req: proto::ReadChunkRequest,
        tx: mpsc::Sender<Result<proto::ChunkPart, Status>>,
    ) -> Result<(), SnapshotError> {
        let after = values(req.after_key, "after_key")?;
        let TableSnapshot { mut conn, position, columns, key_kind, shape, boundary } =
            self.open_table(&req.schema, &req.table, &[&after]).await?;
        let first = proto::ChunkPart {
            boundary_offset: boundary,
            position: Some(proto::SourcePosition {
                file: position.file.clone(),
                position: position.pos,
                gtid: String::new(),
            }),
            rows: Some(shape.clone().into()),
            key_kind: key_kind.into(),
        };
        if tx.send(Ok(first)).await.is_err() {
            return Ok(());
        }

        let limit = if req.limit == 0 { DEFAULT_CHUNK } else { req.limit };
        let range = Range { after: &after, upto: &[], limit: Some(limit) };
        let (sql, params) = chunk::select(&shape.schema, &shape.table, &columns, &shape.primary_key, range);
        self.status.counters.copy_chunks.inc();
        self.stream_rows(&mut conn, sql, params, &shape, &columns, &tx).await?;
        conn.query_drop("COMMIT").await?;
        Ok(())
    }

    /// Checksums consecutive chunks of a table in one snapshot (see `ChecksumChunks` in the proto).
    pub async fn checksum_chunks(
        &self,
        req: proto::ChecksumChunksRequest,
        tx: mpsc::Sender<Result<proto::ChecksumPart, Status>>,
    ) -> Result<(), SnapshotError> {
        let mut after = values(req.after_key, "after_key")?;
        let upto = values(req.upto_key, "upto_key")?;
        let TableSnapshot { mut conn, columns, key_kind, shape, boundary, .. } =
            self.open_table(&req.schema, &req.table, &[&after, &upto]).await?;
        let keyless = shape.primary_key.is_empty();
        let chunk_rows = if req.chunk_rows == 0 { DEFAULT_CHUNK } else { req.chunk_rows };
        let max_chunks = match req.max_chunks {
            _ if !upto.is_empty() || keyless => 1,
            0 => DEFAULT_CHECKSUM_CHUNKS,
            n => n.min(1000),
        };
        let with_rows = req.with_rows;
        let first = proto::ChecksumPart {
            boundary_offset: boundary,
            key_kind: key_kind.into(),
            shape: Some(shape.clone().into()),
            ..Default::default()
        };
        if tx.send(Ok(first)).await.is_err() {
            return Ok(());
        }
        let mut end = false;
        let mut buf = Vec::new();
        for _ in 0..max_chunks {
            if end {
                break;
            }
            let limit = if upto.is_empty() && !keyless { Some(chunk_rows) } else { None };
            let range = Range { after: &after, upto: &upto, limit };
            let (sql, params) = chunk::select(&shape.schema, &shape.table, &columns, &shape.primary_key, range);
            let mut result = conn.exec_iter(sql, params).await?;
            let mut sum = RowSum::default();
            let mut last: Option<Vec<My>> = None;
            let (mut rows_read, mut row_hashes) = (Vec::new(), Vec::new());
            while let Some(row) = result.next().await? {
                let row = row.unwrap();
                let hash = chunk::row_hash(&row, &mut buf);
                sum.add(hash);
                if with_rows {
                    let image = to_values(row.clone(), &columns, &shape)?;
                    rows_read.push(RowChange::Insert { after: image });
                    row_hashes.push(hash.to_le_bytes().to_vec());
                }
                last = Some(row);
            }
            drop(result);
            self.status.counters.verify_rows.inc_by(sum.rows);
            end = keyless || !upto.is_empty() || limit.is_some_and(|l| sum.rows < u64::from(l));
            let last_key: Vec<Value> = match last {
                Some(row) => {
                    let row = to_values(row, &columns, &shape)?;
                    shape.primary_key.iter().map(|&k| row[k as usize].clone()).collect()
                }
                None => Vec::new(),
            };
            if !last_key.is_empty() {
                after = last_key.clone();
            }
            let chunk = proto::ChunkChecksum {
                last_key: last_key.into_iter().map(Into::into).collect(),
                rows: sum.rows,
                checksum: sum.sum_bytes(),
                rows_read: rows_read.into_iter().map(Into::into).collect(),
                row_hashes,
            };
            let part = proto::ChecksumPart { chunk: Some(chunk), end, ..Default::default() };
            if tx.send(Ok(part)).await.is_err() {
                return Ok(());
            }
        }
        conn.query_drop("COMMIT").await?;
        Ok(())
    }
}

/// A snapshot of the primary begun for one table.
struct TableSnapshot {
    conn: Conn,
    position: BinlogPosition,
    columns: Vec<SelectColumn>,
    key_kind: &'static str,
    shape: TableChange,
    boundary: u64,
}

fn values(key: Vec<proto::Value>, what: &str) -> Result<Vec<Value>, SnapshotError> {
    key.into_iter()
        .map(Value::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| SnapshotError::Invalid(format!("{what}: {e}")))
}

fn to_values(row: Vec<My>, columns: &[SelectColumn], shape: &TableChange) -> Result<Vec<Value>, SnapshotError> {
    row.into_iter()
        .zip(columns)
        .map(|(v, c)| chunk::value(v, &c.column))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SnapshotError::Invalid(format!("{}.{}: {e}", shape.schema, shape.table)))
}
