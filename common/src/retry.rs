//! The one retry policy of both binaries: jittered exponential backoff, capped, reset after a success.
//!
//! Delays come from `backon` (maintained; `backoff` is unmaintained, RUSTSEC-2025-0012). Each wait is drawn
//! from `[d, 2d)`, where `d` starts at the policy's initial delay and doubles up to half its maximum, so no
//! wait ever exceeds the maximum and clients retrying together spread out. [`Retry::reset`] after a success
//! starts again from the initial delay; [`Retry::reset_if_healthy`] does so after a connection that stayed up
//! for a while, so that a link that flaps now and then is retried quickly every time.

use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;

/// How a kind of operation is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait (drawn from `[initial, 2 × initial)`).
    pub initial: Duration,
    /// No wait is longer.
    pub max: Duration,
}

impl RetryPolicy {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial) }
    }

    /// A fresh sequence of waits.
    pub fn start(self) -> Retry {
        Retry { delays: self.delays(), policy: self }
    }

    fn delays(self) -> backon::ExponentialBackoff {
        // backon's jitter adds up to one more delay, so its cap is half of ours.
        let cap = (self.max / 2).max(self.initial);
        backon::ExponentialBuilder::new()
            .with_min_delay(self.initial)
            .with_max_delay(cap)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// The waits of one retried operation.
#[derive(Debug)]
pub struct Retry {
    policy: RetryPolicy,
    delays: backon::ExponentialBackoff,
}

impl Retry {
    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.policy.max).min(self.policy.max)
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.policy.delays();
    }

    /// Resets when what failed had worked for at least `healthy` since `since` (e.g. a connection that stayed
    /// up), so only failures in a row back off further.
    pub fn reset_if_healthy(&mut self, since: Instant, healthy: Duration) {
        if since.elapsed() >= healthy {
            self.reset();
        }
    }

    /// Sleeps the next wait; false if `stop` was cancelled first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let pause = self.next_delay();
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_grow_stay_under_the_maximum_and_restart_after_a_reset() {
        let policy = RetryPolicy::new(100 * MS, 3_000 * MS);
        let mut retry = policy.start();
        let first = retry.next_delay();
        assert!((100 * MS..200 * MS).contains(&first), "{first:?}");
        let waits: Vec<Duration> = (0..40).map(|_| retry.next_delay()).collect();
        assert!(waits.iter().all(|w| *w <= 3_000 * MS), "never above the maximum: {waits:?}");
        assert!(waits[20..].iter().all(|w| *w >= 1_500 * MS), "grown to the cap: {waits:?}");
        retry.reset();
        let again = retry.next_delay();
        assert!((100 * MS..200 * MS).contains(&again), "{again:?}");
    }

    #[test]
    fn a_healthy_period_resets_the_waits_and_a_short_one_does_not() {
        let mut retry = RetryPolicy::new(100 * MS, 10_000 * MS).start();
        for _ in 0..10 {
            retry.next_delay();
        }
        retry.reset_if_healthy(Instant::now(), Duration::from_secs(30));
        assert!(retry.next_delay() >= 2_500 * MS, "not healthy long enough: still backing off");
        retry.reset_if_healthy(Instant::now() - Duration::from_secs(31), Duration::from_secs(30));
        assert!(retry.next_delay() < 200 * MS, "healthy: back to the first wait");
    }

    #[test]
    fn a_maximum_below_the_initial_delay_is_raised_to_it() {
        let mut retry = RetryPolicy::new(200 * MS, 50 * MS).start();
        assert!(retry.next_delay() <= 200 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_next_delay_and_stops_at_once_when_cancelled() {
        let stop = CancellationToken::new();
        let mut retry = RetryPolicy::new(1_000 * MS, 60_000 * MS).start();
        let started = tokio::time::Instant::now();
        assert!(retry.wait(&stop).await);
        let slept = started.elapsed();
        assert!((1_000 * MS..2_000 * MS).contains(&slept), "{slept:?}");

        let waiting = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut retry = RetryPolicy::new(60_000 * MS, 60_000 * MS).start();
                let started = tokio::time::Instant::now();
                (retry.wait(&stop).await, started.elapsed())
            }
        });
        tokio::time::sleep(10 * MS).await;
        stop.cancel();
        let (slept_fully, elapsed) = waiting.await.expect("task");
        assert!(!slept_fully);
        assert!(elapsed < 1_000 * MS, "{elapsed:?}");
    }
}
