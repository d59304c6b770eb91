//! The applier's errors, each knowing whether a retry can help.

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
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("secondary connection failed")]
    Connect(#[source] mysql_async::Error),
    #[error("statement failed on the secondary")]
    Sql(#[source] mysql_async::Error),
    #[error("cannot reach the reader at {url}: {reason}")]
    Reader { url: String, reason: String },
    #[error("the reader refused the subscription: {0}")]
    Subscribe(tonic::Status),
    #[error("journal offset {got} arrived where {expected} was expected: the stream skipped or repeated records")]
    Gap { expected: u64, got: u64 },
    #[error(
        "the secondary already has rows in {tables}: an initial copy would mix them with the primary's. Empty or \
         drop those tables, or start with --resync to replace them with the primary's"
    )]
    NonEmptyTarget { tables: String },
    #[error("unreadable applier state in {what}: {reason}")]
    State { what: String, reason: String },
    #[error("the reader could not serve the initial copy: {0}")]
    Copy(tonic::Status),
    #[error("permanent error at journal offset {offset} on {table}: {reason}\n  statement: {statement}")]
    Permanent { offset: u64, table: String, statement: String, reason: String },
    #[error("malformed record from the reader")]
    Wire(#[from] common::convert::WireError),
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Whether a failed statement may succeed if retried (after a reconnect where needed).
pub fn is_transient(e: &mysql_async::Error) -> bool {
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

/// Whether the error leaves the connection unusable.
pub fn needs_reconnect(e: &mysql_async::Error) -> bool {
    use mysql_async::Error;
    match e {
        Error::Io(_) | Error::Driver(_) => true,
        Error::Server(s) => matches!(s.code, codes::SERVER_SHUTDOWN | codes::CONNECTION_KILLED),
        _ => false,
    }
}
