//! Several readers of one JetStream journal: the one holding the lease reads the binlog; the others are standbys
//! that serve the journal from the stream and take over once the lease expires (see `journal::lease`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::error::ReaderError;
use crate::journal::jetstream_store::PATIENCE;
use crate::journal::lease::Lease;
use crate::journal::Journal;
use crate::pipeline::SourceStatus;

/// How often a standby reads what the active reader wrote and looks at the lease.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Follows the journal another reader writes until this reader takes the lease (true), or `shutdown` (false).
/// Then the journal is this reader's: the previous writer is fenced off and its unfinished transaction removed.
pub async fn wait_for_lease(
    journal: &Arc<Journal>,
    lease: &mut Lease,
    status: &SourceStatus,
    shutdown: &CancellationToken,
) -> Result<bool, ReaderError> {
    status.standby.store(true, Ordering::Relaxed);
    let mut announced: Option<String> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(false);
        }
        match lease.holder().await {
            Ok(h) if h.as_ref().is_none_or(|(holder, _)| *holder == lease.me) => match lease.try_take().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "taking the lease failed; trying again"),
            },
            Ok(None) => {}
            Ok(Some((holder, _))) => {
                if announced.as_deref() != Some(holder.as_str()) {
                    info!(active = %holder, me = %lease.me, lease = ?lease.ttl,
                          "standby: another reader holds the lease and reads the binlog; serving the journal from the stream");
                    announced = Some(holder.clone());
                }
                status.set_lease_holder(holder);
            }
            Err(e) => warn!(error = %e, "reading the lease failed; trying again"),
        }
        let j = journal.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || j.reload(false)).await? {
            warn!(error = %e, "following the journal failed; trying again");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
    let j = journal.clone();
    tokio::task::spawn_blocking(move || j.reload(true)).await??;
    status.set_lease_holder(lease.me.clone());
    status.standby.store(false, Ordering::Relaxed);
    info!(me = %lease.me, last_offset = journal.head(),
          resume = ?journal.resume().map(|r| (r.position.to_string(), r.gtid.to_string())),
          "this reader holds the lease: it reads the binlog from the journal's resume position");
    Ok(true)
}

/// Renews the lease every third of its time until `shutdown`; if another reader has it, or it cannot be renewed
/// for as long as the journal's writes wait for the cluster ([`PATIENCE`]) (or a lease time, if longer), stops this reader (`lost` says so): another reader may be
/// writing now. Going on past the lease time is safe: a reader that took over has fenced this one's appends.
pub async fn keep_lease(mut lease: Lease, lost: Arc<std::sync::atomic::AtomicBool>, shutdown: CancellationToken) {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // The writer has stopped appending by now or soon will; a standby's take-over fences it anyway.
                match lease.release().await {
                    Ok(()) => info!(me = %lease.me, "lease released"),
                    Err(e) => warn!(error = %e, "releasing the lease failed: a standby takes over once it expires"),
                }
                return;
            }
            _ = tokio::time::sleep(lease.ttl / 3) => {}
        }
        match lease.renew().await {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => {
                error!(me = %lease.me, "the lease is another reader's now: stopping (restarted, this reader becomes a standby)");
                break;
            }
            Err(e) if renewed.elapsed() < PATIENCE.max(lease.ttl) => {
                warn!(error = %e, "renewing the lease failed; trying again")
            }
            Err(e) => {
                error!(error = %e, waited = ?renewed.elapsed(), "the lease could not be renewed: stopping (another reader may take over)");
                break;
            }
        }
    }
    lost.store(true, Ordering::Relaxed);
    shutdown.cancel();
}
