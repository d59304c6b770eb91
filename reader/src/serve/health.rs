//! The reader's health: SERVING while the binlog stream from the primary is up and the journal is under its
//! size cap, or while it is the standby of a shared journal (`grpc.health.v1.Health`, for probes and `grpcurl`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use crate::pipeline::SourceStatus;

/// Keeps `health` up to date every 500 ms until `shutdown`.
pub async fn run(health: HealthReporter, status: Arc<SourceStatus>, shutdown: CancellationToken) {
    let mut last = None;
    loop {
        // A standby serves the journal another reader writes: it does its job without a binlog connection.
        let serving = status.standby.load(Ordering::Relaxed)
            || (status.connected.load(Ordering::Relaxed) && !status.backpressure.load(Ordering::Relaxed));
        if last != Some(serving) {
            common::grpc_server::report(&health, "replica.v1.Journal", serving).await;
            last = Some(serving);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
