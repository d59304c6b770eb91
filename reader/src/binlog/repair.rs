//! Repairs damaged journal records from the primary: reads the binlog again from the end of the last whole
//! transaction before the damage, turns it into records the way the journal writer does, and puts each damaged
//! record back byte for byte (see `journal::damage` for why only then). Runs beside the source on a replication
//! connection of its own (server id `MARIA_SERVER_ID` + 2^30, so it never displaces the source's).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::event::Body;
use futures_util::StreamExt;
use mysql_async::Conn;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::binlog::assemble::Assembler;
use crate::binlog::preflight;
use crate::binlog::source::{open_stream, server_opts, Start};
use crate::config::Config;
use crate::error::ReaderError;
use crate::journal::damage::RepairPlan;
use crate::journal::{encode_record, record_bodies, Journal, JournalError};
use crate::pipeline::SourceStatus;

/// Added to the reader's server id for the repair's own replication connection.
const SERVER_ID_OFFSET: u32 = 1 << 30;
/// Waits after a repair that could not be done before trying that record again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Refused(String),
}

/// Repairs records as they are reported damaged, until `shutdown`.
pub async fn run(config: Arc<Config>, journal: Arc<Journal>, status: Arc<SourceStatus>, shutdown: CancellationToken) {
    // Offsets whose repair failed, and when: reads report them again at once, the retry waits RETRY_AFTER.
    let mut failed: HashMap<u64, Instant> = HashMap::new();
    loop {
        let offsets = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = journal.damaged() => o,
            // Failed repairs are tried again (the primary may be back, or an operator fixed the cause).
            _ = tokio::time::sleep(RETRY_AFTER), if !failed.is_empty() => {
                let again: Vec<u64> = failed.drain().map(|(o, _)| o).collect();
                again
            }
        };
        failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        let offsets: Vec<u64> = offsets.into_iter().filter(|o| !failed.contains_key(o)).collect();
        for offset in offsets {
            let j = journal.clone();
            let plan = match tokio::task::spawn_blocking(move || j.plan_repair(offset)).await {
                Ok(Ok(Some(plan))) => plan,
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => {
                    error!(offset, error = %common::lifecycle::error_chain(&e), "a damaged journal record cannot be repaired");
                    continue;
                }
                Err(_) => return,
            };
            let repairing = tokio::time::timeout(Duration::from_secs(120), repair(&config, &journal, &status, &plan));
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = repairing => r.unwrap_or_else(|_| Err(RepairError::Refused("the primary did not send the range within 120 s".into()))),
            };
            match result {
                Ok(n) => {
                    warn!(offset, records = n, from = %plan.from.gtid, "damaged journal records repaired from the primary's binlog")
                }
                Err(e) => {
                    failed.insert(offset, Instant::now());
                    error!(offset, error = %common::lifecycle::error_chain(&e), retry_in = ?RETRY_AFTER,
                           "a damaged journal record could not be repaired from the primary; it is not served \
                            (README \"a damaged journal\")");
                }
            }
        }
    }
}

/// Re-reads `plan`'s range from the followed primary; returns the number of records put back.
async fn repair(
    config: &Config,
    journal: &Arc<Journal>,
    status: &SourceStatus,
    plan: &RepairPlan,
) -> Result<usize, RepairError> {
    let server = status.followed().map(|f| f.endpoint).or_else(|| config.primaries.first().cloned());
    let server = server.ok_or_else(|| RepairError::Refused("no primary to read from".into()))?;
    let opts = server_opts(config, &server);
    let mut meta = Conn::new(opts.clone()).await.map_err(ReaderError::Connect)?;
    let primary = preflight::check(&mut meta).await?;
    drop(meta.disconnect().await);
    let start = if !plan.from.gtid.is_empty() {
        Start::Gtid(plan.from.gtid.clone())
    } else if plan.from.server_id == primary.server_id && plan.from.binlog_basename == primary.binlog_basename {
        Start::File(plan.from.position.clone())
    } else {
        return Err(RepairError::Refused(format!(
            "the journal resumes by file and position there, on server {} (binlog {}), and the primary now is \
             server {} (binlog {})",
            plan.from.server_id, plan.from.binlog_basename, primary.server_id, primary.binlog_basename
        )));
    };
    let server_id = config.server_id.wrapping_add(SERVER_ID_OFFSET);
    let mut stream = open_stream(opts, server_id, config.heartbeat, &start).await?;
    let mut file = match &start {
        Start::Gtid(_) => String::new(),
        Start::File(p) => p.file.clone(),
    };
    let mut asm = Assembler::new(config, &primary, start.gtid_state());
    let mut offset = plan.first_offset - 1;
    let mut open = false;
    let mut fixes: Vec<(u64, Vec<u8>)> = Vec::new();
    let marker = Body::Transaction(Vec::new());
    while offset < plan.last {
        let event = match stream.next().await {
            Some(Ok(event)) => event,
            Some(Err(e)) => return Err(ReaderError::Stream(e).into()),
            None => return Err(RepairError::Refused("the primary ended the stream".into())),
        };
        // The event's transaction (or fragment), then the pieces of its long values, as the source hands them on.
        let mut next = asm.handle(&event, &mut file)?;
        loop {
            let txn = match next.take() {
                Some(txn) => txn,
                None => match asm.next_piece(&event) {
                    Some(piece) => piece?,
                    None => break,
                },
            };
            if txn.xa.is_some() {
                return Err(RepairError::Refused("the range holds an XA transaction, which is not repaired".into()));
            }
            for body in record_bodies(&txn, &[], open, &marker) {
                offset += 1;
                if offset > plan.last {
                    break;
                }
                let j = journal.clone();
                let stored = tokio::task::spawn_blocking(move || j.stored(offset))
                    .await
                    .map_err(|_| RepairError::Refused("stopped".into()))??;
                let bytes = encode_record(&txn, body, offset, stored.journaled_unix_ms)?;
                if plan.damaged.contains(&offset) {
                    if bytes.len() != stored.bytes.len() {
                        return Err(RepairError::Refused(format!(
                            "the binlog gives offset {offset} another length ({} bytes, the journal's {}): the filter or \
                             the binlog changed since it was journaled",
                            bytes.len(),
                            stored.bytes.len()
                        )));
                    }
                    fixes.push((offset, bytes));
                } else if bytes != stored.bytes {
                    return Err(RepairError::Refused(format!(
                        "the binlog does not give back the whole record at offset {offset}: the filter or the binlog \
                         changed since it was journaled"
                    )));
                }
            }
            // As the journal writer tracks it: whether the last record written continues.
            if txn.continues {
                open |= !txn.bodies.is_empty();
            } else {
                open = false;
            }
        }
    }
    drop(stream);
    let n = fixes.len();
    for (offset, bytes) in fixes {
        let j = journal.clone();
        tokio::task::spawn_blocking(move || j.put_back(offset, &bytes))
            .await
            .map_err(|_| RepairError::Refused("stopped".into()))??;
        info!(offset, "journal record put back from the primary's binlog");
    }
    Ok(n)
}
