//! The reader's one error taxonomy: every failure is a [`ReaderError`] (journal and snapshot errors nest in it),
//! [`ReaderError::is_transient`] is the only place that decides whether reconnecting can help, and [`status`]
//! is the one mapping to gRPC statuses.

use tonic::Status;

use crate::binlog::decode::DecodeError;
use crate::binlog::mariadb_events::MalformedEvent;
use crate::journal::JournalError;

/// MariaDB error codes the reader reacts to.
pub mod codes {
    /// ER_MASTER_FATAL_ERROR_READING_BINLOG: purged or unknown position, or an unreadable binlog.
    pub const FATAL_READING_BINLOG: u16 = 1236;
    /// ER_SPECIFIC_ACCESS_DENIED_ERROR
    pub const ACCESS_DENIED: u16 = 1227;
    /// ER_ACCESS_DENIED_ERROR (wrong password)
    pub const BAD_PASSWORD: u16 = 1045;
    /// ER_CONNECTION_KILLED / a duplicate server id takes over the stream
    pub const SLAVE_SAME_ID: u16 = 4052;
}

/// Why a snapshot read for an initial copy failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the primary failed: {0}")]
    Sql(#[from] mysql_async::Error),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("cannot reach the primary")]
    Connect(#[source] mysql_async::Error),
    #[error("binlog stream from the primary failed")]
    Stream(#[source] mysql_async::Error),
    #[error("no event from the primary for {0:?} (heartbeats included): reconnecting")]
    Silent(std::time::Duration),
    #[error("primary is not configured for replication: {0}")]
    Preflight(String),
    #[error(
        "the primary no longer has the binlog needed to resume at {position}: {server_message}. Records after \
         that point were never journaled and cannot be recovered from the primary. Recover: stop the appliers, \
         move the journal directory aside, start the reader with --start-position current, and re-copy each \
         secondary (replica-applier --resync)"
    )]
    Purged { position: String, server_message: String },
    #[error("the primary rejected the binlog request: {0}")]
    Rejected(String),
    #[error(
        "primary identity changed while resuming by file/position: the journal was written from server id {was_id} \
         with binlog {was_base:?}, the primary is now server id {now_id} with binlog {now_base:?}. Reading another \
         server's binlog by position would journal the wrong changes. Point the reader at the original primary, or \
         resume by GTID (needs a GTID in the journal's resume state)"
    )]
    IdentityChanged { was_id: u32, was_base: String, now_id: u32, now_base: String },
    #[error("not following {server} (server id {server_id}): {reason}")]
    Refused { server: String, server_id: u32, reason: String },
    #[error("unsupported binlog content at {position}: {what}")]
    Unsupported { position: String, what: String },
    #[error("cannot decode the binlog at {position}")]
    Decode {
        position: String,
        #[source]
        source: DecodeError,
    },
    #[error("malformed binlog event at {position}")]
    Malformed {
        position: String,
        #[source]
        source: MalformedEvent,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the journal writer stopped")]
    WriterStopped,
    #[error(
        "this reader lost the journal's lease (another reader took over, or the lease could not be renewed for 30 s): \
         restart it and it serves as the standby"
    )]
    LeaseLost,
    #[error("this reader is the standby: {0} is served by the active reader ({1})")]
    Standby(&'static str, String),
    #[error("cannot start the journal writer thread")]
    WriterThread(#[source] std::io::Error),
    #[error("the journal writer panicked")]
    WriterPanicked,
    #[error("a blocking journal task failed")]
    Blocking(#[from] tokio::task::JoinError),
    #[error("cannot listen on {addr} (REPLICA_GRPC_ADDR)")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the gRPC server")]
    ServerSetup(#[from] common::grpc_server::ServerSetupError),
}

impl ReaderError {
    /// Whether reconnecting and trying again can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ReaderError::Connect(e) | ReaderError::Stream(e) => !matches!(
                e,
                mysql_async::Error::Server(s)
                    if s.code == codes::ACCESS_DENIED || s.code == codes::BAD_PASSWORD
            ),
            // A lagging candidate may catch up; the others are tried meanwhile.
            ReaderError::Silent(_) | ReaderError::Refused { .. } => true,
            _ => false,
        }
    }
}

/// The gRPC answer for an error of the journal service or of a snapshot read.
pub fn status(e: impl Into<ReaderError>) -> Status {
    let e = e.into();
    let message = common::lifecycle::error_chain(&e);
    match &e {
        ReaderError::Journal(JournalError::OutOfRange { .. }) => Status::out_of_range(message),
        ReaderError::Journal(JournalError::UnknownConsumer(_)) => Status::not_found(message),
        ReaderError::Journal(JournalError::BadConsumerName(_)) => Status::invalid_argument(message),
        ReaderError::Journal(JournalError::Damaged { .. } | JournalError::Misplaced { .. })
        | ReaderError::Snapshot(SnapshotError::Journal(
            JournalError::Damaged { .. } | JournalError::Misplaced { .. },
        )) => Status::data_loss(message),
        ReaderError::Snapshot(SnapshotError::NotFound(_)) => Status::not_found(message),
        ReaderError::Snapshot(SnapshotError::Invalid(_)) => Status::invalid_argument(message),
        ReaderError::Snapshot(SnapshotError::Journal(JournalError::OutOfRange { .. })) => Status::out_of_range(message),
        ReaderError::Snapshot(SnapshotError::Unavailable(_) | SnapshotError::Sql(_))
        | ReaderError::WriterStopped
        | ReaderError::Journal(JournalError::Behind { .. })
        | ReaderError::Standby(..) => Status::unavailable(message),
        _ => Status::internal(message),
    }
}
