//! The applier's one error taxonomy: every failure is an [`ApplyError`], and [`ApplyError::is_transient`] is the
//! only place that decides whether retrying can help. [`status`] is the one mapping to gRPC statuses.

use crate::table::{show, TableKey};

/// MariaDB server error codes the applier reacts to.
pub mod codes {
    pub const LOCK_DEADLOCK: u16 = 1213;
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    pub const SERVER_SHUTDOWN: u16 = 1053;
    pub const CONNECTION_KILLED: u16 = 1927;
    /// ER_OPTION_PREVENTS_STATEMENT, e.g. --read-only while a secondary restarts or fails over.
    pub const READ_ONLY: u16 = 1290;
    pub const READ_ONLY_TXN: u16 = 1792;
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// DDL errors meaning "already done", accepted when a DDL is replayed after a crash.
    pub const DDL_ALREADY_DONE: &[u16] = &[
        1007, // database exists
        1008, // database does not exist (DROP DATABASE)
        1050, // table exists
        1051, // unknown table (DROP TABLE)
        1060, // duplicate column name
        1061, // duplicate key name
        1091, // can't drop: does not exist
        1146, // table does not exist (RENAME, TRUNCATE of a dropped table)
        1304, // procedure or function exists
        1305, // procedure or function does not exist
        1359, // trigger exists
        1360, // trigger does not exist
        1537, // event exists
        1539, // event does not exist
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot use the secondary at {addr}")]
    Secondary {
        addr: String,
        #[source]
        source: Box<mysql_async::Error>,
    },
    #[error("cannot read or write the applier's state in replica_meta ({what})")]
    Meta {
        what: &'static str,
        #[source]
        source: Box<mysql_async::Error>,
    },
    #[error("another session holds this secondary's lock for consumer {consumer:?} (another replica-applier with the same name?)")]
    Locked { consumer: String },
    #[error("{} error at journal offset {offset} on {}\n  statement: {statement}", kind(.source), show(.table))]
    Statement {
        offset: u64,
        table: Option<TableKey>,
        statement: String,
        #[source]
        source: Box<mysql_async::Error>,
    },
    #[error("the secondary has drifted at journal offset {offset} on {}: {reason}\n  statement: {statement}", show(.table))]
    Drift { offset: u64, table: Option<TableKey>, statement: String, reason: String },
    #[error(
        "a value of about {mib} MiB at journal offset {offset} on {} does not fit the secondary's max_allowed_packet: raise \
         it on the secondary (SET GLOBAL max_allowed_packet = 1073741824, and in its my.cnf) and restart the applier",
        show(&Some(.table.clone()))
    )]
    TooLong { offset: u64, table: TableKey, mib: u64 },
    #[error("internal error (panic) while applying journal offset {offset}: {what}")]
    Panic { offset: u64, what: String },
    #[error("the reader's settings ({url}): {reason}")]
    ReaderSettings { url: String, reason: String },
    #[error("cannot reach the reader at {url}")]
    ReaderUnreachable {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the reader ended the stream")]
    ReaderEnded,
    #[error("the reader refused {call}")]
    ReaderRefused {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("{} is not on the primary (dropped or renamed)", show(&Some(.table.clone())))]
    TableGone { table: TableKey },
    #[error("the reader's answer to {call} is incomplete: {what}")]
    ReaderIncomplete { call: &'static str, what: &'static str },
    #[error("malformed data from the reader")]
    Wire(#[from] common::convert::WireError),
    #[error(
        "journal record {offset} arrived different from what the reader journaled (its CRC32C is {computed:08x}, the \
         journal's {stored:08x}): not applied; asking the reader again"
    )]
    Unverified { offset: u64, stored: u32, computed: u32 },
    #[error("journal offset {got} arrived where {expected} was expected: the stream skipped or repeated records")]
    Gap { expected: u64, got: u64 },
    #[error(
        "the secondary already has rows in {tables}: an initial copy would mix them with the primary's. Empty or \
         drop those tables, or start with --resync to replace them with the primary's"
    )]
    NonEmptyTarget { tables: String },
    #[error("unreadable applier state in {what}: {reason}")]
    State { what: String, reason: String },
    #[error("a copy step of {} is stale: {why}", show(&Some(.table.clone())))]
    StaleChunk { table: TableKey, why: String },
    /// A verification's snapshot of the secondary missed its journal offset; it is taken again.
    #[error("verifying {}: {why}", show(&Some(.table.clone())))]
    VerifyMissed { table: TableKey, why: String },
    #[error("fetching a chunk of {} from the reader failed", show(&Some(.table.clone())))]
    ChunkFetch {
        table: TableKey,
        #[source]
        source: Box<ApplyError>,
    },
    #[error("the reader sent no rows of a chunk of {} for {waited:?}", show(&Some(.table.clone())))]
    ChunkStalled { table: TableKey, waited: std::time::Duration },
    #[error("cannot listen on {addr} ({setting})")]
    Listen {
        addr: std::net::SocketAddr,
        setting: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin service's settings: {0}")]
    AdminSettings(String),
    #[error("the admin gRPC service failed")]
    Serve(#[from] tonic::transport::Error),
    #[error("the applier is stopping")]
    Stopping,
    #[error("the reader's journal changed: the checkpoint's offset is in journal {was:?}, the reader serves {now:?}")]
    JournalChanged { was: String, now: String },
    #[error("cannot continue on the reader's new journal: {reason}")]
    Relocate { reason: String },
    #[error("the reader's journal cannot take this secondary's place: {reason}")]
    WrongJournal { reason: String },
    #[error(
        "the reader's journal changed during an initial copy (the copy's boundaries are offsets of the old \
         journal): restart the applier with --resync to copy again"
    )]
    CopyAcrossJournals,
}

impl ApplyError {
    /// Whether trying again (after a reconnect where [`ApplyError::needs_reconnect`]) can succeed. Every retry
    /// decision of the applier asks this.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Secondary { source, .. }
            | ApplyError::Statement { source, .. }
            | ApplyError::Meta { source, .. } => sql_transient(source),
            // The holder may be a killed predecessor whose session the server has not ended yet.
            ApplyError::Locked { .. } => true,
            ApplyError::ReaderRefused { status, .. } => status_transient(status),
            ApplyError::ReaderUnreachable { .. }
            | ApplyError::ReaderEnded
            | ApplyError::ReaderIncomplete { .. }
            | ApplyError::StaleChunk { .. }
            | ApplyError::VerifyMissed { .. }
            | ApplyError::ChunkFetch { .. }
            | ApplyError::ChunkStalled { .. }
            | ApplyError::Unverified { .. }
            // The reader may be replaced by one whose journal can (see `relocate`).
            | ApplyError::WrongJournal { .. } => true,
            ApplyError::Drift { .. }
            | ApplyError::TooLong { .. }
            | ApplyError::Panic { .. }
            | ApplyError::ReaderSettings { .. }
            | ApplyError::TableGone { .. }
            | ApplyError::Wire(_)
            | ApplyError::Gap { .. }
            | ApplyError::NonEmptyTarget { .. }
            | ApplyError::State { .. }
            | ApplyError::Listen { .. }
            | ApplyError::AdminSettings(_)
            | ApplyError::Serve(_)
            | ApplyError::Stopping
            // Handled by the apply loop, which moves the checkpoint to the new journal (see `relocate`).
            | ApplyError::JournalChanged { .. }
            | ApplyError::Relocate { .. }
            | ApplyError::CopyAcrossJournals => false,
        }
    }

    /// A journal record damaged at the reader or on its way: nothing past it is applied until it reads whole.
    pub fn is_damage(&self) -> bool {
        match self {
            ApplyError::Unverified { .. } => true,
            ApplyError::ReaderRefused { status, .. } => status.code() == tonic::Code::DataLoss,
            _ => false,
        }
    }

    /// Whether the secondary connection is unusable after this error.
    pub fn needs_reconnect(&self) -> bool {
        match self {
            ApplyError::Secondary { source, .. }
            | ApplyError::Statement { source, .. }
            | ApplyError::Meta { source, .. } => sql_broken(source),
            ApplyError::Panic { .. } => true,
            _ => false,
        }
    }

    /// The table a statement or drift error is about, for quarantine.
    pub fn table(&self) -> Option<&TableKey> {
        match self {
            ApplyError::Statement { table, .. } | ApplyError::Drift { table, .. } => table.as_ref(),
            ApplyError::StaleChunk { table, .. }
            | ApplyError::TooLong { table, .. }
            | ApplyError::TableGone { table }
            | ApplyError::ChunkFetch { table, .. }
            | ApplyError::ChunkStalled { table, .. } => Some(table),
            _ => None,
        }
    }

    /// Whether the table asked for is not on the primary (the reader says NotFound, or lists nothing).
    pub fn is_not_found(&self) -> bool {
        match self {
            ApplyError::TableGone { .. } => true,
            ApplyError::ReaderRefused { status, .. } => status.code() == tonic::Code::NotFound,
            _ => false,
        }
    }
}

/// How a failed statement's message calls it.
fn kind(e: &mysql_async::Error) -> &'static str {
    if sql_transient(e) {
        "transient"
    } else {
        "permanent"
    }
}

/// A failed statement may succeed if retried: lost connections, lock conflicts, a server restarting or read-only.
fn sql_transient(e: &mysql_async::Error) -> bool {
    use mysql_async::Error;
    match e {
        Error::Io(_) | Error::Driver(_) => true,
        Error::Server(s) => matches!(
            s.code,
            codes::LOCK_DEADLOCK
                | codes::LOCK_WAIT_TIMEOUT
                | codes::SERVER_SHUTDOWN
                | codes::CONNECTION_KILLED
                | codes::READ_ONLY
                | codes::READ_ONLY_TXN
                | codes::TOO_MANY_CONNECTIONS
        ),
        _ => false,
    }
}

fn sql_broken(e: &mysql_async::Error) -> bool {
    use mysql_async::Error;
    match e {
        Error::Io(_) | Error::Driver(_) => true,
        Error::Server(s) => matches!(s.code, codes::SERVER_SHUTDOWN | codes::CONNECTION_KILLED),
        _ => false,
    }
}

/// A status from the reader is worth retrying unless it says the request itself is wrong.
/// DATA_LOSS (a damaged journal record) is worth retrying: the reader repairs the record from the primary's binlog
/// when it can, or is replaced by a reader whose journal is whole.
fn status_transient(s: &tonic::Status) -> bool {
    use tonic::Code;
    !matches!(
        s.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::FailedPrecondition
    )
}

/// The admin service's answer for an error.
pub fn status(e: &ApplyError) -> tonic::Status {
    let message = common::lifecycle::error_chain(e);
    match e {
        ApplyError::Stopping => tonic::Status::unavailable(message),
        e if e.is_transient() => tonic::Status::unavailable(message),
        _ => tonic::Status::failed_precondition(message),
    }
}

/// Turns a secondary error reading or writing `replica_meta` into an [`ApplyError::Meta`].
pub fn meta(what: &'static str) -> impl Fn(mysql_async::Error) -> ApplyError + Copy {
    move |source| ApplyError::Meta { what, source: Box::new(source) }
}

/// Turns a secondary error in a statement into an [`ApplyError::Statement`].
pub fn statement(offset: u64, table: Option<&TableKey>, statement: &str) -> impl Fn(mysql_async::Error) -> ApplyError {
    let (table, statement) = (table.cloned(), statement.to_owned());
    move |source| ApplyError::Statement {
        offset,
        table: table.clone(),
        statement: statement.clone(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError { code, message: String::new(), state: String::new() })
    }

    #[test]
    fn lock_conflicts_and_lost_connections_are_retried_and_bad_statements_are_not() {
        let stmt = |e| ApplyError::Statement { offset: 1, table: None, statement: String::new(), source: Box::new(e) };
        assert!(stmt(server(codes::LOCK_DEADLOCK)).is_transient());
        assert!(!stmt(server(codes::LOCK_DEADLOCK)).needs_reconnect());
        assert!(stmt(server(codes::CONNECTION_KILLED)).needs_reconnect());
        assert!(!stmt(server(1146)).is_transient(), "a missing table stays missing");
        let drift = ApplyError::Drift {
            offset: 1,
            table: Some(("s".into(), "t".into())),
            statement: "x".into(),
            reason: "r".into(),
        };
        assert!(!drift.is_transient());
        assert_eq!(drift.table(), Some(&("s".to_owned(), "t".to_owned())));
    }

    #[test]
    fn the_reader_is_retried_unless_it_says_the_request_is_wrong() {
        let refused = |s| ApplyError::ReaderRefused { call: "Subscribe", status: s };
        assert!(refused(tonic::Status::unavailable("restarting")).is_transient());
        assert!(refused(tonic::Status::unknown("transport error: broken pipe")).is_transient());
        assert!(refused(tonic::Status::internal("h2 reset")).is_transient());
        assert!(!refused(tonic::Status::out_of_range("trimmed")).is_transient());
        assert!(!refused(tonic::Status::unauthenticated("token")).is_transient());
        assert!(refused(tonic::Status::not_found("gone")).is_not_found());
        assert!(ApplyError::ReaderEnded.is_transient());
        assert!(!ApplyError::Gap { expected: 2, got: 3 }.is_transient());
    }
}
