//! The connection to the secondary: session settings that apply exactly what the primary stored, the
//! consumer's named lock taken before anything is read or written, and reconnection after a broken link.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use tracing::{info, warn};

use crate::config::Config;
use crate::error::ApplyError;

/// Connection options for the secondary: UTC (journal TIMESTAMPs are instants), the strict sql_mode of
/// [`crate::sql::STRICT_MODE`], foreign key checks off as on a replica, `@replica_applier` set (triggers that
/// came through the journal do nothing for this session: see [`crate::ddl`]), and found (not changed) rows
/// counted so that a missing row is drift, not silence.
pub fn opts(config: &Config) -> OptsBuilder {
    common::mariadb::opts(&common::mariadb::Server {
        host: &config.host,
        port: config.port,
        user: &config.user,
        password: &config.password,
        tls: &config.maria_tls,
    })
    .client_found_rows(true)
    .stmt_cache_size(512)
    .setup(vec![format!(
        "SET NAMES utf8mb4, time_zone = '+00:00', sql_mode = '{}', foreign_key_checks = 0, @replica_applier = 1",
        crate::sql::STRICT_MODE
    )])
}

/// Connections that write copy chunks, next to the apply loop's own.
pub fn pool(config: &Config) -> mysql_async::Pool {
    let most = config.copy_workers.max(1) * 2;
    mysql_async::Pool::new(
        opts(config).pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(mysql_async::PoolConstraints::new(0, most).unwrap_or_default()),
        ),
    )
}

/// `host:port` of the secondary, for messages.
pub fn addr(config: &Config) -> String {
    format!("{}:{}", config.host, config.port)
}

/// The apply loop's connection, made again after any error that breaks it.
pub struct Secondary {
    config: Arc<Config>,
    conn: Option<Conn>,
    /// Whether the secondary answered the last statement or health check (read by the health watch).
    ok: Arc<AtomicBool>,
    /// Some(i) for the connection of parallel worker i (see [`crate::parallel`]), which takes that worker's
    /// lock instead of the consumer's.
    worker: Option<usize>,
    /// Whether the apply loop's connection has waited for a predecessor's workers (once, at the start: later
    /// the workers holding those locks are this process's own).
    waited_for_workers: bool,
}

impl Secondary {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config, conn: None, ok: Arc::new(AtomicBool::new(true)), worker: None, waited_for_workers: false }
    }

    /// The connection of parallel worker `index` (1-based).
    pub fn for_worker(config: Arc<Config>, index: usize) -> Self {
        Self { worker: Some(index), ..Self::new(config) }
    }

    /// The connection, made (and locked for this consumer) if there is none.
    pub async fn conn(&mut self) -> Result<&mut Conn, ApplyError> {
        let secondary_err = |source| ApplyError::Secondary { addr: addr(&self.config), source: Box::new(source) };
        if self.conn.is_none() {
            let mut conn = Conn::new(opts(&self.config)).await.map_err(secondary_err)?;
            match self.worker {
                None => {
                    lock_consumer(&mut conn, &self.config.name, 0).await?;
                    // A killed predecessor's workers may still be committing: wait until their sessions are
                    // gone, so that what is read next includes their last commits.
                    for worker in (1..=crate::config::MAX_WORKERS).filter(|_| !self.waited_for_workers) {
                        lock_consumer(&mut conn, &self.config.name, worker).await?;
                        conn.exec_drop(format!("DO RELEASE_LOCK({})", lock_name(worker)), (&self.config.name,))
                            .await
                            .map_err(crate::error::statement(0, None, "RELEASE_LOCK (a worker's lock)"))?;
                    }
                    self.waited_for_workers = true;
                }
                Some(worker) => {
                    lock_consumer(&mut conn, &self.config.name, worker).await?;
                    // Changes of different workers never touch the same rows: no gap locks between them.
                    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await
                        .map_err(crate::error::statement(0, None, "SET SESSION TRANSACTION ISOLATION LEVEL"))?;
                }
            }
            info!(consumer = %self.config.name, secondary = %addr(&self.config), worker = self.worker.unwrap_or(0),
                  "connected to the secondary");
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or(ApplyError::Secondary {
            addr: addr(&self.config),
            source: Box::new(mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed)),
        })
    }

    /// Takes note of a failure: a broken connection is dropped, so the next use reconnects.
    pub fn failed(&mut self, e: &ApplyError) {
        if e.needs_reconnect() {
            self.conn = None;
            self.ok.store(false, Ordering::Relaxed);
        }
    }

    /// Rolls back whatever a failed attempt left open; a connection that cannot is dropped (which rolls back).
    pub async fn rollback(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = conn.query_drop("ROLLBACK").await {
                warn!(consumer = %self.config.name, error = %e, "rollback failed; reconnecting");
                self.conn = None;
            }
        }
    }

    /// Takes note that a statement succeeded.
    pub fn succeeded(&self) {
        self.ok.store(true, Ordering::Relaxed);
    }

    /// Checks the idle connection; a failure drops it so the next use reconnects.
    pub async fn ping(&mut self) {
        let name = self.config.name.clone();
        let ok = match self.conn().await {
            Ok(conn) => match conn.ping().await {
                Ok(()) => true,
                Err(e) => {
                    warn!(consumer = %name, error = %e, "secondary health check failed; reconnecting");
                    self.conn = None;
                    false
                }
            },
            Err(e) => {
                warn!(consumer = %name, error = %common::lifecycle::error_chain(&e), "cannot reach the secondary");
                false
            }
        };
        self.ok.store(ok, Ordering::Relaxed);
    }

    pub fn ok_flag(&self) -> Arc<AtomicBool> {
        self.ok.clone()
    }
}

/// Takes this consumer's named lock on a new connection before it reads or writes anything. A connection of
/// a killed predecessor may still be committing on the server; the lock is released only when that
/// connection is gone, so the checkpoint read next includes its last commit. If the holder does not go away
/// within 10 s (a session left behind by a network failure lives until the server's wait_timeout), it is
/// killed: only an applier of this consumer takes this lock, and two must never run at once.
///
/// Worker `n` of parallel apply (1-based; 0 is the apply loop) has a lock of its own.
async fn lock_consumer(conn: &mut Conn, name: &str, worker: usize) -> Result<(), ApplyError> {
    let lock = lock_name(worker);
    let failed = crate::error::statement(0, None, "GET_LOCK (the consumer's lock)");
    for attempt in 0..2 {
        let got: Option<Option<i64>> =
            conn.exec_first(format!("SELECT GET_LOCK({lock}, 10)"), (name,)).await.map_err(&failed)?;
        if got == Some(Some(1)) {
            return Ok(());
        }
        if attempt == 0 {
            let holder: Option<Option<u64>> =
                conn.exec_first(format!("SELECT IS_USED_LOCK({lock})"), (name,)).await.map_err(&failed)?;
            if let Some(Some(id)) = holder {
                warn!(consumer = %name, connection = id, "a previous session of this consumer still holds its lock after 10 s; killing it");
                if let Err(e) = conn.query_drop(format!("KILL CONNECTION {id}")).await {
                    warn!(consumer = %name, error = %e, "could not kill the previous session");
                }
            }
        }
    }
    Err(ApplyError::Locked { consumer: name.to_owned() })
}

/// The SQL expression of the named lock of worker `n` of a consumer (0: the apply loop), taking the
/// consumer's name as its parameter.
fn lock_name(worker: usize) -> String {
    match worker {
        0 => "CONCAT('replica-applier:', SHA1(?))".to_owned(),
        n => format!("CONCAT('replica-applier:', SHA1(?), ':{n}')"),
    }
}
