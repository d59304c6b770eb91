//! Benchmark: what a replication pipeline costs the primary on a shared machine. An unthrottled
//! `sysbench oltp_write_only` (4 threads, uniform keys, 4 tables × 50,000 rows, production durability) runs on
//! the primary for `BENCH_SECONDS` (default 30) three times: beside a native replica (one SQL thread) that
//! follows it, beside replica-reader + replica-applier that follow it, and with nothing following (the
//! baseline). Everything runs on this machine, as in a small deployment or a test box: the cost shows as the
//! CPU the followers take from the primary. The order is native, ours, alone, then ours and native again.
//!
//! Run: `cargo build --release --bins && REPLICA_TEST_PROFILE=release cargo bench -p tests --bench primary_tps`

use std::process::{Command, Stdio};

use tests::bench::{durability, env_u64, native_replica, sysbench_prepare, wait_gtid};
use tests::{Applier, MariaDb, Reader, Role};

/// Transactions per second of an unthrottled sysbench run of `seconds` on `primary`, and what it printed.
fn unthrottled(primary: &MariaDb, seconds: u64) -> f64 {
    let out = Command::new("sysbench")
        .args(["oltp_write_only", "--db-driver=mysql", "--mysql-host=127.0.0.1", "--mysql-user=root"])
        .args(["--mysql-db=sbtest", "--rand-type=uniform", "--threads=4", "--events=0", "--tables=4"])
        .arg("--table-size=50000")
        .arg(format!("--mysql-port={}", primary.port))
        .arg(format!("--time={seconds}"))
        .arg("run")
        .stderr(Stdio::null())
        .output()
        .expect("sysbench runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // "    transactions:                        31708  (990.75 per sec.)"
    text.lines()
        .find(|l| l.contains("transactions:"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .unwrap_or_else(|| panic!("no transaction rate in sysbench's output:\n{text}"))
}

async fn end_gtid(primary: &MariaDb) -> String {
    let end: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
    end[0].clone()
}

#[tokio::main]
async fn main() {
    let seconds = env_u64("BENCH_SECONDS", 30);
    let primary = MariaDb::start_with(Role::Primary, 1, &durability()).await;
    let start = tests::bench::binlog_position(&primary).await;
    primary.exec("CREATE DATABASE sbtest").await;
    sysbench_prepare(&primary, 4, 50_000);
    let pipeline_check = "SELECT gtid FROM replica_meta.checkpoint WHERE consumer = 'tps'";

    let native = native_replica(&primary, &start, 30, &durability()).await;
    let secondary = MariaDb::start_with(Role::Secondary, 20, &durability()).await;
    let mut reader = Reader::start(
        &primary,
        &primary.dir.path().join("journal"),
        &[("REPLICA_START_POSITION", &format!("{}:{}", start.0, start.1)), ("RUST_LOG", "warn")],
    )
    .await;
    let mut applier =
        Applier::start(&reader, &secondary, "tps", &[("REPLICA_START_OFFSET", "1"), ("RUST_LOG", "warn")]);
    let end = end_gtid(&primary).await;
    wait_gtid(&native, &end, "SELECT @@gtid_slave_pos").await;
    wait_gtid(&secondary, &end, pipeline_check).await;

    let mut results: Vec<(&str, f64)> = Vec::new();
    for round in 0..2 {
        // Native alone follows.
        let _ = (applier.terminate(), reader.terminate());
        native.exec("START SLAVE").await;
        results.push(("native replica", unthrottled(&primary, seconds)));
        wait_gtid(&native, &end_gtid(&primary).await, "SELECT @@gtid_slave_pos").await;
        native.exec("STOP SLAVE").await;
        // Ours alone follows (first catching up on what it missed).
        reader.restart().await;
        applier.spawn();
        wait_gtid(&secondary, &end_gtid(&primary).await, pipeline_check).await;
        results.push(("replica-reader + replica-applier", unthrottled(&primary, seconds)));
        wait_gtid(&secondary, &end_gtid(&primary).await, pipeline_check).await;
        if round == 0 {
            // Nothing follows.
            let _ = (applier.terminate(), reader.terminate());
            results.push(("nothing (baseline)", unthrottled(&primary, seconds)));
            reader.restart().await;
            applier.spawn();
            wait_gtid(&secondary, &end_gtid(&primary).await, pipeline_check).await;
        }
    }
    let mean = |name: &str| {
        let v: Vec<f64> = results.iter().filter(|(n, _)| *n == name).map(|(_, t)| *t).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (native_tps, ours_tps, alone) =
        (mean("native replica"), mean("replica-reader + replica-applier"), mean("nothing (baseline)"));
    println!("unthrottled sysbench oltp_write_only, 4 threads, {seconds} s per run, runs in order:");
    for (name, tps) in &results {
        println!("  beside {name}: {tps:.0} TPS");
    }
    println!();
    println!("| primary beside | TPS (mean) | vs beside a native replica | vs nothing following |");
    println!("| --- | --- | --- | --- |");
    println!("| a native replica | {native_tps:.0} | 1.00x | {:.2}x |", native_tps / alone);
    println!(
        "| replica-reader + replica-applier | {ours_tps:.0} | {:.2}x | {:.2}x |",
        ours_tps / native_tps,
        ours_tps / alone
    );
    println!("| nothing | {alone:.0} | {:.2}x | 1.00x |", alone / native_tps);
}
