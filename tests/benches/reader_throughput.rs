//! Benchmark: journal a large sysbench binlog with replica-reader, next to `mariadb-binlog
//! --read-from-remote-server --base64-output=decode-rows -v` decoding the same binlog, on the same machine.
//!
//! Run: `cargo build --release --bins && REPLICA_TEST_PROFILE=release cargo bench -p tests --bench reader_throughput`
//! Size: `BENCH_ROWS` (default 1,000,000 prepared rows) plus `BENCH_EVENTS` oltp_write_only events (default 25,000).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proto::{GetInfoRequest, ReadRequest};
use tests::bench::{env_u64, sysbench_backlog};
use tests::{MariaDb, Reader, Role};

fn mariadb_binlog(db: &MariaDb, first: &str) -> Command {
    let mut c = Command::new("mariadb-binlog");
    c.args(["--no-defaults", "--read-from-remote-server", "--host=127.0.0.1", "--user=root", "--to-last-log"])
        .args(["--base64-output=decode-rows", "-v"])
        .arg(format!("--port={}", db.port))
        .arg(first);
    c
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The sequence number of a single-domain GTID state such as `0-1-42`.
fn seq(gtid: &str) -> u64 {
    gtid.rsplit('-').next().and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let rows = env_u64("BENCH_ROWS", 1_000_000);
    let events = env_u64("BENCH_EVENTS", 25_000);
    let db = MariaDb::start_with(Role::Primary, 1, &["--innodb-buffer-pool-size=1G", "--max-binlog-size=256M"]).await;
    db.exec("CREATE DATABASE sbtest").await;
    let t = Instant::now();
    sysbench_backlog(&db, rows, events);
    let logs: Vec<(String, u64)> = db.query("SHOW BINARY LOGS").await;
    let first = logs[0].0.clone();
    let binlog_bytes: u64 = logs.iter().map(|l| l.1).sum();
    let gtid_end: Vec<String> = db.query("SELECT @@gtid_binlog_pos").await;
    println!("generated {} binlog bytes in {} files in {:.1}s", binlog_bytes, logs.len(), t.elapsed().as_secs_f64());

    // Row changes in the binlog, counted by MariaDB's own decoder (untimed).
    let out = mariadb_binlog(&db, &first).output().expect("mariadb-binlog runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let row_changes = text
        .lines()
        .filter(|l| l.starts_with("### INSERT INTO") || l.starts_with("### UPDATE") || l.starts_with("### DELETE FROM"))
        .count() as u64;
    drop(text);

    // mariadb-binlog decoding to /dev/null, best of two warm runs.
    let mut decoder = Duration::MAX;
    for _ in 0..2 {
        let t = Instant::now();
        let status = mariadb_binlog(&db, &first).stdout(Stdio::null()).status().expect("mariadb-binlog");
        assert!(status.success());
        decoder = decoder.min(t.elapsed());
    }

    // replica-reader from the first event to the end, best of two runs with fresh journals.
    let mut best = Duration::MAX;
    let mut peak_kib = 0;
    let mut half_kib = 0;
    let mut records = 0;
    for run in 0..2 {
        let dir = db.dir.path().join(format!("journal-{run}"));
        let t = Instant::now();
        let reader = Reader::start(&db, &dir, &[("REPLICA_START_POSITION", "earliest"), ("RUST_LOG", "warn")]).await;
        let pid = reader.pid();
        let mut client = reader.client().await;
        let mut rss_half = 0;
        loop {
            let info = client.get_info(GetInfoRequest {}).await.expect("GetInfo").into_inner();
            let gtid = info.source_position.map(|p| p.gtid).unwrap_or_default();
            if gtid == gtid_end[0] {
                records = info.last_offset;
                break;
            }
            if rss_half == 0 && seq(&gtid) * 2 >= seq(&gtid_end[0]) {
                rss_half = rss_kib(pid, "VmRSS:");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = t.elapsed();
        if elapsed < best {
            best = elapsed;
            peak_kib = rss_kib(pid, "VmHWM:");
            half_kib = rss_half;
        }
        if run == 1 {
            // Count what was journaled (untimed).
            let mut n = 0u64;
            let mut from = 1;
            while from <= records {
                let recs = client
                    .read(ReadRequest { from_offset: from, limit: 2000 })
                    .await
                    .expect("Read")
                    .into_inner()
                    .records;
                for r in &recs {
                    if let Some(common::proto::record::Body::Transaction(t)) = &r.body {
                        n += t.changes.iter().map(|c| c.rows.len() as u64).sum::<u64>();
                    }
                }
                from = recs.last().map(|r| r.offset + 1).unwrap_or(records + 1);
            }
            assert_eq!(n, row_changes, "the reader journaled every row change mariadb-binlog decoded");
        }
        drop(reader);
    }
    let rate = |d: Duration| row_changes as f64 / d.as_secs_f64();
    println!();
    println!("binlog: {binlog_bytes} bytes, {row_changes} row changes, {records} journal records");
    println!("| tool | seconds | row changes/s |");
    println!("| --- | --- | --- |");
    println!(
        "| mariadb-binlog --base64-output=decode-rows -v (to /dev/null) | {:.2} | {:.0} |",
        decoder.as_secs_f64(),
        rate(decoder)
    );
    println!("| replica-reader (binlog → durable journal) | {:.2} | {:.0} |", best.as_secs_f64(), rate(best));
    println!("reader / mariadb-binlog speed ratio: {:.2}x", decoder.as_secs_f64() / best.as_secs_f64());
    println!("reader peak RSS: {} MiB (RSS half-way: {} MiB)", peak_kib / 1024, half_kib / 1024);
}
