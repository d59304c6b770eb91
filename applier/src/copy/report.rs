//! How a copy shows itself: progress bars on a terminal, progress lines in the log otherwise, and the transfer
//! statistics when it ends.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::copy::board::CopyBoard;
use crate::copy::state::CopyState;
use crate::table::TableKey;

/// Reports until `stop`.
pub async fn run(board: Arc<CopyBoard>, stop: CancellationToken) {
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let mut shown: HashMap<TableKey, indicatif::ProgressBar> = HashMap::new();
    let style = indicatif::ProgressStyle::with_template("{prefix:30} [{bar:30}] {pos}/{len} rows {per_sec} ETA {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let mut last_log = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(if terminal { 200 } else { 1000 })) => {}
        }
        let copying = board.copying();
        let snapshot = board.snapshot();
        if terminal {
            for (key, p) in &snapshot {
                if !p.state.active() && !shown.contains_key(key) {
                    continue;
                }
                let bar = shown.entry(key.clone()).or_insert_with(|| {
                    let b = bars.add(indicatif::ProgressBar::new(p.rows_estimated.max(1)));
                    b.set_style(style.clone());
                    b.set_prefix(format!("{}.{}", key.0, key.1));
                    b
                });
                bar.set_length(p.rows_estimated.max(p.rows_copied).max(1));
                bar.set_position(p.rows_copied);
                if matches!(p.state, CopyState::Done | CopyState::Gone) {
                    bar.finish();
                }
            }
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
            shown.clear();
        }
    }
}
