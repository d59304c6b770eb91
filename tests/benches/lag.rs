//! Benchmark: replication lag under a steady load — a secondary kept by replica-reader + replica-applier next to
//! a native replica of the same primary, in the same run on the same machine, all servers with production
//! durability (`innodb_flush_log_at_trx_commit=1`, `sync_binlog=1`) — measured with a microsecond heartbeat.
//!
//! Run: `cargo build --release --bins && REPLICA_TEST_PROFILE=release cargo bench -p tests --bench lag`
//! Size: `sysbench oltp_write_only` at `BENCH_TPS` transactions per second (default 1,000) from 4 threads, uniform
//! keys, over `BENCH_TABLES` (4) tables of `BENCH_ROWS` (50,000) rows, for `BENCH_SECONDS` (30); a heartbeat row
//! every 50 ms. `BENCH_READER_LOG` / `BENCH_APPLIER_LOG` set each process's RUST_LOG (keep the logs with
//! `REPLICA_TEST_LOG_DIR`).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tests::bench::{env_u64, heartbeat, lag_summary, native_replica, sysbench_prepare, wait_gtid};
use tests::{Applier, MariaDb, Reader, Role};

const DURABLE: [&str; 3] = ["--innodb-flush-log-at-trx-commit=1", "--sync-binlog=1", "--innodb-buffer-pool-size=256M"];

fn log_level(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| "warn".into())
}

#[tokio::main]
async fn main() {
    let tables = env_u64("BENCH_TABLES", 4);
    let rows = env_u64("BENCH_ROWS", 50_000);
    let tps = env_u64("BENCH_TPS", 1000);
    let seconds = env_u64("BENCH_SECONDS", 30);
    let primary = MariaDb::start_with(Role::Primary, 1, &DURABLE).await;
    let start = tests::bench::binlog_position(&primary).await;
    primary
        .exec("CREATE DATABASE sbtest; CREATE DATABASE hb; CREATE TABLE hb.beat (id INT PRIMARY KEY, ts DATETIME(6))")
        .await;
    sysbench_prepare(&primary, tables, rows);
    let end: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
    let end = end[0].clone();

    let native = native_replica(&primary, &start, 30, &DURABLE).await;
    let secondary = MariaDb::start_with(Role::Secondary, 20, &DURABLE).await;
    let reader = Reader::start(
        &primary,
        &primary.dir.path().join("journal"),
        &[
            ("REPLICA_START_POSITION", &format!("{}:{}", start.0, start.1)),
            ("RUST_LOG", &log_level("BENCH_READER_LOG")),
        ],
    )
    .await;
    let _applier = Applier::start(
        &reader,
        &secondary,
        "lag",
        &[("REPLICA_START_OFFSET", "1"), ("RUST_LOG", &log_level("BENCH_APPLIER_LOG"))],
    );
    wait_gtid(&native, &end, "SELECT @@gtid_slave_pos").await;
    wait_gtid(&secondary, &end, "SELECT gtid FROM replica_meta.checkpoint WHERE consumer = 'lag'").await;

    let load = Command::new("sysbench")
        .args(["oltp_write_only", "--db-driver=mysql", "--mysql-host=127.0.0.1", "--mysql-user=root"])
        .args(["--mysql-db=sbtest", "--rand-type=uniform", "--threads=4", "--events=0"])
        .arg(format!("--mysql-port={}", primary.port))
        .arg(format!("--tables={tables}"))
        .arg(format!("--table-size={rows}"))
        .arg(format!("--rate={tps}"))
        .arg(format!("--time={}", seconds + 2))
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sysbench runs");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let beats = heartbeat(&primary, &[&secondary, &native], Duration::from_millis(50), stop.clone());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::SeqCst);
    let mut lags = beats.await.expect("heartbeat");
    let out = load.wait_with_output().expect("sysbench");
    let text = String::from_utf8_lossy(&out.stdout);
    let done = text.lines().find(|l| l.contains("transactions:")).unwrap_or("").trim().to_owned();
    let native_lag = lags.pop().expect("native samples");
    let ours = lags.pop().expect("pipeline samples");
    println!("sysbench oltp_write_only at {tps} TPS, 4 threads, {tables} x {rows} rows, uniform keys: {done}");
    println!("| replication lag over {seconds} s | p50 / p99 / max |");
    println!("| --- | --- |");
    println!("| replica-reader + replica-applier | {} |", lag_summary(ours));
    println!("| native replication (one SQL thread) | {} |", lag_summary(native_lag));
}
