//! Benchmark: peak resident memory (VmHWM) of the reader and the applier while one huge transaction passes
//! through (1,000,000 and 10,000,000 small rows, and one 64 MiB row), and under a steady sysbench load.
//!
//! Run: `cargo build --release --bins && REPLICA_TEST_PROFILE=release cargo bench -p tests --bench memory`
//! Size: `BENCH_LARGE_ROWS` (comma-separated row counts, default `1000000,10000000`), `BENCH_ROW_MIB` (default
//! 64), `BENCH_STEADY_SECONDS` (default 60; 0 skips the sysbench case).

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tests::bench::{env_u64, sysbench};
use tests::{Applier, MariaDb, Reader, Role};

const WAIT: Duration = Duration::from_secs(3600);

/// Waits until the applier has committed everything the primary has written; returns how long it took.
async fn settle(primary: &MariaDb, secondary: &MariaDb, t: Instant) -> Duration {
    let end: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
    let mut conn = secondary.conn().await;
    loop {
        // The source GTID of the last applied transaction (the checkpoint table appears with the first one).
        let applied: Option<String> =
            conn.query_first("SELECT gtid FROM replica_meta.checkpoint WHERE consumer = 'mem'").await.ok().flatten();
        if applied.as_deref() == Some(end[0].as_str()) {
            return t.elapsed();
        }
        assert!(t.elapsed() < WAIT, "the applier did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Case {
    name: String,
    seconds: f64,
    reader_mib: u64,
    applier_mib: u64,
}

async fn measure(
    name: String,
    primary: &MariaDb,
    secondary: &MariaDb,
    reader: &Reader,
    applier: &Applier,
    sql: &str,
) -> Case {
    reader.reset_peak_rss();
    applier.reset_peak_rss();
    let t = Instant::now();
    primary.exec(sql).await;
    let took = settle(primary, secondary, t).await;
    let case = Case {
        name,
        seconds: took.as_secs_f64(),
        reader_mib: reader.peak_rss_mib(),
        applier_mib: applier.peak_rss_mib(),
    };
    println!("{}: {:.1} s, reader {} MiB, applier {} MiB", case.name, case.seconds, case.reader_mib, case.applier_mib);
    case
}

#[tokio::main]
async fn main() {
    let counts: Vec<u64> = std::env::var("BENCH_LARGE_ROWS")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let row_mib = env_u64("BENCH_ROW_MIB", 64);
    let steady = env_u64("BENCH_STEADY_SECONDS", 60);
    let server = ["--max-allowed-packet=1G", "--innodb-buffer-pool-size=1G", "--innodb-log-file-size=1G"];
    let primary = MariaDb::start_with(Role::Primary, 1, &server).await;
    let secondary = MariaDb::start_with(Role::Secondary, 2, &server).await;
    let mut reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[("RUST_LOG", "warn")]).await;
    let mut applier =
        Applier::start(&reader, &secondary, "mem", &[("REPLICA_START_OFFSET", "1"), ("RUST_LOG", "warn")]);
    primary
        .exec(
            "CREATE DATABASE big; CREATE DATABASE sbtest; \
             CREATE TABLE big.t (id INT PRIMARY KEY, k INT NOT NULL, c CHAR(60) NOT NULL, pad VARCHAR(60) NOT NULL); \
             CREATE TABLE big.blobs (id INT PRIMARY KEY, b LONGBLOB)",
        )
        .await;
    settle(&primary, &secondary, Instant::now()).await;
    println!("idle: reader {} MiB, applier {} MiB", reader.peak_rss_mib(), applier.peak_rss_mib());

    // The steady load first, on fresh processes: what a huge row leaves allocated would count against it.
    let mut cases = Vec::new();
    if steady > 0 {
        sysbench(&primary, &["--tables=4", "--table-size=100000", "--threads=2", "prepare"]);
        settle(&primary, &secondary, Instant::now()).await;
        reader.reset_peak_rss();
        applier.reset_peak_rss();
        let t = Instant::now();
        sysbench(&primary, &["--tables=4", "--table-size=100000", "--threads=4", &format!("--time={steady}"), "run"]);
        let took = settle(&primary, &secondary, t).await;
        let case = Case {
            name: format!("sysbench oltp_write_only, 4 tables, 4 threads, {steady} s"),
            seconds: took.as_secs_f64(),
            reader_mib: reader.peak_rss_mib(),
            applier_mib: applier.peak_rss_mib(),
        };
        println!("{}: reader {} MiB, applier {} MiB", case.name, case.reader_mib, case.applier_mib);
        cases.push(case);
    }
    let mut from = 1;
    for rows in counts {
        let sql = format!(
            "INSERT INTO big.t SELECT seq, seq % 1000, REPEAT(CHAR(65 + seq % 26), 60), CONCAT('pad-', seq) \
             FROM big.seq_{from}_to_{}",
            from + rows - 1
        );
        cases.push(
            measure(format!("one transaction of {rows} rows"), &primary, &secondary, &reader, &applier, &sql).await,
        );
        from += rows;
    }
    if row_mib > 0 {
        let sql = format!("INSERT INTO big.blobs VALUES (1, REPEAT('ab', {} << 19))", row_mib);
        cases.push(measure(format!("one row of {row_mib} MiB"), &primary, &secondary, &reader, &applier, &sql).await);
    }
    for (a, b) in [("big.t", "big.t"), ("big.blobs", "big.blobs")] {
        let want: Vec<(String, Option<u64>)> = primary.query(&format!("CHECKSUM TABLE {a}")).await;
        let got: Vec<(String, Option<u64>)> = secondary.query(&format!("CHECKSUM TABLE {b}")).await;
        assert_eq!(got, want, "{a} matches the primary");
    }

    // A clean stop (SIGTERM), so that a profiler wrapped around the binaries writes its report.
    applier.terminate();
    reader.terminate();

    println!();
    println!("| workload | seconds to apply | reader peak RSS | applier peak RSS |");
    println!("| --- | --- | --- | --- |");
    for c in &cases {
        println!("| {} | {:.1} | {} MiB | {} MiB |", c.name, c.seconds, c.reader_mib, c.applier_mib);
    }
}
