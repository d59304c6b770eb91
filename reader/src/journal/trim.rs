//! Retention: every 5 s, deletes records that every consumer has acked and that are older than the retention
//! time, in steps of 10,000 on a blocking thread.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::journal::Journal;

pub async fn run(journal: Arc<Journal>, retention: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        loop {
            let j = journal.clone();
            match tokio::task::spawn_blocking(move || j.trim(retention, 10_000)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => debug!(removed = n, first_offset = journal.first(), "journal trimmed"),
                Ok(Err(e)) => {
                    warn!(error = %e, "journal trim failed");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}
