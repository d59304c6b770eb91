//! Health: NOT_SERVING while the subscription to the reader is down (after a grace period), the secondary is
//! unreachable, or the pipeline is stalled (records are waiting but none was applied for `stall_timeout`). A
//! stuck pipeline never looks healthy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::metrics::ApplierMetrics;
use crate::stream::StreamState;

/// Wall-clock Unix milliseconds (as the reader stamps `journaled_unix_ms`).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Why the applier is not serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Serving,
    Stalled,
    ReaderUnreachable,
    SecondaryDown,
}

/// The verdict from what is seen; a stall weighs most, since it is what an operator must act on.
pub fn assess(stalled: bool, reader_unreachable: bool, secondary_down: bool) -> Verdict {
    if stalled {
        Verdict::Stalled
    } else if reader_unreachable {
        Verdict::ReaderUnreachable
    } else if secondary_down {
        Verdict::SecondaryDown
    } else {
        Verdict::Serving
    }
}

/// What the health watch looks at.
pub struct Watch {
    pub config: Arc<Config>,
    pub stream: Arc<StreamState>,
    pub secondary_ok: Arc<AtomicBool>,
    pub applied: watch::Receiver<u64>,
    /// Serving (true) or not, for the admin service's health reporter.
    pub serving: watch::Sender<bool>,
    pub metrics: ApplierMetrics,
}

impl Watch {
    /// Looks now and every 500 ms until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let name = &self.config.name;
        let mut last = (*self.applied.borrow(), Instant::now());
        let mut disconnected_since: Option<Instant> = None;
        let grace = self.config.stall_timeout.min(Duration::from_secs(30));
        // The first look is immediate: health is NOT_SERVING until then (the secondary was being opened).
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = *self.applied.borrow();
            if now != last.0 {
                last = (now, Instant::now());
            }
            let received = self.stream.received.load(Ordering::SeqCst);
            let behind = self.stream.oldest_waiting_ms(now).map_or(0.0, |ms| (now_ms() - ms).max(0) as f64 / 1000.0);
            self.metrics.behind(behind);
            let stalled = received > now && last.1.elapsed() >= self.config.stall_timeout;
            if self.stream.connected.load(Ordering::Relaxed) {
                disconnected_since = None;
            } else if disconnected_since.is_none() {
                disconnected_since = Some(Instant::now());
            }
            let unreachable = disconnected_since.is_some_and(|t| t.elapsed() >= grace);
            self.metrics
                .links(self.secondary_ok.load(Ordering::Relaxed), self.stream.connected.load(Ordering::Relaxed));
            let verdict = assess(stalled, unreachable, !self.secondary_ok.load(Ordering::Relaxed));
            let serving = verdict == Verdict::Serving;
            if serving == *self.serving.borrow() {
                continue;
            }
            match verdict {
                Verdict::Stalled => error!(consumer = %name, applied_offset = now, received_offset = received,
                    stalled_for = ?last.1.elapsed(),
                    "pipeline stalled: records are waiting but none was applied; health is NOT_SERVING"),
                Verdict::ReaderUnreachable => {
                    warn!(consumer = %name, "the reader is unreachable; health is NOT_SERVING")
                }
                Verdict::SecondaryDown => {
                    warn!(consumer = %name, "the secondary is unreachable; health is NOT_SERVING")
                }
                Verdict::Serving => info!(consumer = %name, applied_offset = now, "applying again; health is SERVING"),
            }
            self.serving.send_replace(serving);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_reported_before_anything_else_and_all_clear_is_serving() {
        assert_eq!(assess(true, true, true), Verdict::Stalled);
        assert_eq!(assess(false, true, true), Verdict::ReaderUnreachable);
        assert_eq!(assess(false, false, true), Verdict::SecondaryDown);
        assert_eq!(assess(false, false, false), Verdict::Serving);
    }
}
