//! The types passed between the reader's stages: what the binlog source hands the journal writer
//! ([`Committed`], [`Xa`]), and the live state the source and the writer share with health, metrics and the
//! snapshot reads ([`SourceStatus`], [`Counters`], [`Followed`]), and requests to follow another primary
//! ([`SwitchRequest`]).

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};

use common::event::Body;
use common::position::{BinlogPosition, Gtid, GtidState};
use prometheus_client::metrics::counter::Counter;

use crate::config::Endpoint;

/// A committed source transaction ready to be journaled: zero or more records, then the position after it; or
/// a fragment of one (`continues`).
#[derive(Debug, Clone)]
pub struct Committed {
    pub gtid: Option<Gtid>,
    pub source: BinlogPosition,
    pub commit_unix_seconds: i64,
    /// Microseconds of that time where the binlog logs them (see [`common::event::Record::commit_micros`]).
    pub commit_micros: u32,
    /// Usually one body; none when every change was filtered out; several when a transaction mixed DDL and rows.
    pub bodies: Vec<Body>,
    pub gtid_state: GtidState,
    pub server_id: u32,
    pub binlog_basename: String,
    /// Set for the parts of a two-phase XA transaction.
    pub xa: Option<Xa>,
    /// A fragment of a transaction that goes on: `bodies` are its changes so far, and the position and GTID
    /// state are not to be resumed from (the transaction is not complete).
    pub continues: bool,
}

impl Committed {
    /// Bytes its changes hold in memory ([`Body::mem_size`]): its share of the in-flight budget.
    pub fn mem_size(&self) -> usize {
        let prepared = match &self.xa {
            Some(Xa::Prepare { bodies, .. }) => bodies.as_slice(),
            _ => &[],
        };
        self.bodies.iter().chain(prepared).map(Body::mem_size).sum()
    }
}

/// A step of a two-phase XA transaction, journaled atomically with the position after it.
#[derive(Debug, Clone)]
pub enum Xa {
    /// Keep these changes until the transaction's XA COMMIT or XA ROLLBACK.
    Prepare { xid: String, bodies: Vec<Body> },
    /// Journal the prepared changes now, under the commit's GTID and position.
    Commit { xid: String },
    /// Forget the prepared changes.
    Rollback { xid: String },
}

/// Counters the source and the writer increment as they go (exported by [`crate::metrics`]).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub reconnects: Counter,
    /// Times the source began following a server with another server id (failover or re-pointing).
    pub primary_changes: Counter,
    pub transactions: Counter,
    pub rows: Counter,
    /// Chunks and rows served to appliers' initial copies.
    pub copy_chunks: Counter,
    pub copy_rows: Counter,
    /// Rows of the primary checksummed for appliers' online verifications.
    pub verify_rows: Counter,
}

/// Live state shown in status and health.
#[derive(Debug)]
pub struct SourceStatus {
    pub connected: AtomicBool,
    pub backpressure: AtomicBool,
    pub counters: Counters,
    /// How far the source has read the primary's binlog: every transaction that ends at or before this
    /// position has been handed to the journal writer. Snapshot reads wait on it (see `serve::snapshot`).
    pub read_through: tokio::sync::watch::Sender<Option<BinlogPosition>>,
    /// The server the source follows (None before its first connection).
    followed: Mutex<Option<Followed>>,
    /// True while this reader is a standby of a shared journal (another reader reads the binlog).
    pub standby: AtomicBool,
    /// The reader holding the shared journal's lease (empty with a local journal).
    lease_holder: Mutex<String>,
}

/// The server whose binlog the source reads: `read_through` positions are in its binlog files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    pub endpoint: Endpoint,
    pub server_id: u32,
    /// The journal's head when the source began reading this server: every record up to it is in this server's
    /// binlog before anything the source reads from it.
    pub since_offset: u64,
}

impl Followed {
    pub fn same_server(&self, other: &Followed) -> bool {
        self.endpoint == other.endpoint && self.server_id == other.server_id
    }
}

impl SourceStatus {
    pub fn lease_holder(&self) -> String {
        self.lease_holder.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_lease_holder(&self, holder: String) {
        *self.lease_holder.lock().unwrap_or_else(|p| p.into_inner()) = holder;
    }

    pub fn followed(&self) -> Option<Followed> {
        self.lock_followed().clone()
    }

    /// Records that the source now reads `now`; when it is another server, `read_through` is cleared first (its
    /// positions were in the other server's files), and a reconnection to the same server keeps its
    /// `since_offset`. Returns the server followed before.
    pub fn follow(&self, mut now: Followed) -> Option<Followed> {
        let mut f = self.lock_followed();
        match f.as_ref() {
            Some(was) if was.same_server(&now) => now.since_offset = was.since_offset,
            Some(_) => {
                self.read_through.send_replace(None);
            }
            None => {}
        }
        f.replace(now)
    }

    fn lock_followed(&self) -> MutexGuard<'_, Option<Followed>> {
        self.followed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An operator's request (gRPC `SwitchPrimary`) to follow another server; answered with what happened.
#[derive(Debug)]
pub struct SwitchRequest {
    pub to: Endpoint,
    pub reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

impl Default for SourceStatus {
    fn default() -> Self {
        Self {
            connected: AtomicBool::default(),
            backpressure: AtomicBool::default(),
            counters: Default::default(),
            read_through: tokio::sync::watch::Sender::new(None),
            followed: Mutex::new(None),
            standby: AtomicBool::default(),
            lease_holder: Mutex::new(String::new()),
        }
    }
}
