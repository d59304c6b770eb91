//! How a copy shows itself: on a terminal, a bar per table being copied above an overall bar, a finished table's
//! final figures printed once; progress lines in the log otherwise; the transfer statistics when it ends.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{HumanCount, HumanDuration, MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::copy::board::CopyBoard;
use crate::copy::state::{CopyState, Progress};
use crate::table::TableKey;

/// Reports until `stop`.
pub async fn run(board: Arc<CopyBoard>, stop: CancellationToken) {
    let mut terminal = std::io::stderr().is_terminal().then(Bars::new);
    let mut last_log = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(if terminal.is_some() { 200 } else { 1000 })) => {}
        }
        let copying = board.copying();
        let snapshot = board.snapshot();
        let ended = board.take_ended();
        if let Some(bars) = terminal.as_mut() {
            bars.update(&board, &snapshot, &ended);
        } else if copying && last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            let (copied, estimated) = board.totals();
            let rate = board.rate();
            let eta = if rate > 0.0 { estimated.saturating_sub(copied) as f64 / rate } else { 0.0 };
            let left = snapshot.values().filter(|p| p.state.active()).count();
            info!(
                rows_copied = copied,
                rows_estimated = estimated,
                rows_per_second = rate as u64,
                eta_seconds = eta as u64,
                tables_left = left,
                "copy progress"
            );
        }
        if let Some(since) = board.finished() {
            if let Some(bars) = terminal.as_mut() {
                bars.finish();
            }
            let (copied, _) = board.totals();
            let secs = since.elapsed().as_secs_f64();
            let tables = snapshot.values().filter(|p| p.state == CopyState::Done).count();
            info!(
                total_rows = copied,
                tables,
                seconds = format!("{secs:.1}"),
                rows_per_second = if secs > 0.0 { (copied as f64 / secs) as u64 } else { 0 },
                errors = board.errors.load(Ordering::Relaxed),
                "copy finished: streaming"
            );
        }
    }
}

/// Rows per second over the last 30 seconds of samples.
#[derive(Default)]
struct Rate(VecDeque<(Instant, u64)>);

impl Rate {
    fn sample(&mut self, now: Instant, rows: u64) -> f64 {
        self.0.push_back((now, rows));
        while self.0.len() > 2 && self.0.front().is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(30))
        {
            self.0.pop_front();
        }
        match (self.0.front(), self.0.back()) {
            (Some((t0, r0)), Some((t1, r1))) if t1 > t0 => r1.saturating_sub(*r0) as f64 / (*t1 - *t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// One table on screen while it is copied.
struct Shown {
    bar: ProgressBar,
    rate: Rate,
}

/// The bars of the copy on a terminal.
struct Bars {
    multi: MultiProgress,
    total: Option<ProgressBar>,
    total_rate: Rate,
    shown: BTreeMap<TableKey, Shown>,
    style: ProgressStyle,
}

impl Bars {
    fn new() -> Self {
        let style = ProgressStyle::with_template("{prefix:28!} [{wide_bar}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        Self {
            multi: common::logging::progress_bars(),
            total: None,
            total_rate: Rate::default(),
            shown: BTreeMap::new(),
            style,
        }
    }

    fn update(&mut self, board: &CopyBoard, snapshot: &BTreeMap<TableKey, Progress>, ended: &[(TableKey, Duration)]) {
        let now = Instant::now();
        // Tables that ended since the last look: their final figures, printed once above the bars.
        for (key, took) in ended {
            if let Some(shown) = self.shown.remove(key) {
                self.multi.remove(&shown.bar);
            }
            let name = format!("{}.{}", key.0, key.1);
            let line = match snapshot.get(key) {
                Some(p) if p.state == CopyState::Done => {
                    let secs = took.as_secs_f64().max(0.001);
                    format!(
                        "{name:28} copied {} rows in {} ({} rows/s)",
                        HumanCount(p.rows_copied),
                        seconds(secs),
                        HumanCount((p.rows_copied as f64 / secs) as u64)
                    )
                }
                _ => format!("{name:28} no longer on the primary: not copied"),
            };
            let _ = self.multi.println(line);
        }
        if !snapshot.values().any(|p| p.state.active()) && self.total.is_none() {
            return;
        }
        if self.total.is_none() {
            let bar = self.multi.add(ProgressBar::new(1));
            bar.set_style(self.style.clone());
            bar.set_prefix("initial copy");
            self.total = Some(bar);
        }
        for (key, p) in snapshot.iter().filter(|(_, p)| p.state.active()) {
            let shown = self.shown.entry(key.clone()).or_insert_with(|| {
                let bar = self.multi.insert_from_back(1, ProgressBar::new(1));
                bar.set_style(self.style.clone());
                bar.set_prefix(format!("{}.{}", key.0, key.1));
                Shown { bar, rate: Rate::default() }
            });
            let rate = shown.rate.sample(now, p.rows_copied);
            let len = p.rows_estimated.max(p.rows_copied).max(1);
            shown.bar.set_length(len);
            shown.bar.set_position(p.rows_copied);
            let msg = if board.table_began_at(key).is_some() || p.rows_copied > 0 {
                format!("{} · {}", counts(p.rows_copied, len), speed(rate, len - p.rows_copied.min(len)))
            } else {
                format!("{} · waiting", counts(0, len))
            };
            shown.bar.set_message(msg);
        }
        let Some(total) = &self.total else { return };
        let copied: u64 = snapshot.values().map(|p| p.rows_copied).sum();
        let len = snapshot.values().map(|p| p.rows_estimated.max(p.rows_copied)).sum::<u64>().max(1);
        let done = snapshot.values().filter(|p| !p.state.active()).count();
        let rate = self.total_rate.sample(now, copied);
        total.set_length(len);
        total.set_position(copied);
        total.set_message(format!(
            "{} · {}/{} tables · {}",
            counts(copied, len),
            done,
            snapshot.len(),
            speed(rate, len.saturating_sub(copied))
        ));
    }

    /// The copy ended: the bars leave the screen (each table's figures were printed as it finished).
    fn finish(&mut self) {
        for (_, shown) in std::mem::take(&mut self.shown) {
            self.multi.remove(&shown.bar);
        }
        if let Some(total) = self.total.take() {
            self.multi.remove(&total);
        }
        let _ = self.multi.clear();
        self.total_rate = Rate::default();
    }
}

fn counts(copied: u64, len: u64) -> String {
    format!("{}/{} rows", HumanCount(copied), HumanCount(len))
}

/// `1,234 rows/s · ETA 2 minutes`, or `measuring` before there is a rate.
fn speed(rate: f64, left: u64) -> String {
    if rate < 0.5 {
        return "measuring".to_owned();
    }
    let eta = Duration::from_secs_f64(left as f64 / rate);
    format!("{} rows/s · ETA {}", HumanCount(rate as u64), HumanDuration(eta))
}

fn seconds(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        HumanDuration(Duration::from_secs_f64(secs)).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_whole_rows_per_second_and_etas_read_as_durations() {
        assert_eq!(speed(2180.1026, 4360), "2,180 rows/s · ETA 2 seconds");
        assert_eq!(speed(0.0, 100), "measuring");
        assert_eq!(counts(1234, 5678), "1,234/5,678 rows");
        assert_eq!(seconds(5.04), "5.0 s");
    }

    #[test]
    fn the_rate_counts_rows_over_time_between_samples() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        assert_eq!(r.sample(t0, 0), 0.0);
        assert_eq!(r.sample(t0 + Duration::from_secs(2), 1000), 500.0);
    }
}
