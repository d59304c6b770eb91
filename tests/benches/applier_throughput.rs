//! Benchmark: bring an empty secondary from the first binlog position to the end of a sysbench backlog with
//! replica-reader + replica-applier, next to MariaDB's own replication from the same position
//! (`slave_parallel_threads=0`, then 4 optimistic), in the same run on the same machine.
//!
//! Run: `cargo build --release --bins && REPLICA_TEST_PROFILE=release cargo bench -p tests --bench applier_throughput`
//! Workload (the standard one by default: uniform keys, several tables, several client threads, production
//! durability): `BENCH_TABLES` sysbench tables (default 4) of `BENCH_ROWS` rows each (default 50,000), then
//! `BENCH_EVENTS` `oltp_write_only` transactions (default 20,000) from `BENCH_THREADS` client threads (default
//! 2). `BENCH_DURABLE=0` relaxes durability on every server (`innodb_flush_log_at_trx_commit=2`,
//! `sync_binlog=0`; default 1: both at their safe settings). `BENCH_RAND_TYPE=special` is sysbench's hot-key
//! distribution (a second case, never the headline).
//! `BENCH_CONFLICTS=overwrite` (or `keep`) runs the applier with conflict detection on (`REPLICA_CONFLICTS`).

use std::process::Command;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tests::bench::{checksum, durability, standard_backlog};
use tests::{Applier, MariaDb, Reader, Role};

/// Native replication from the first binlog, timed until the replica has executed everything.
async fn native(
    primary: &MariaDb,
    start: &(String, u64),
    server_id: u32,
    threads: u32,
    end_gtid: &str,
) -> (Duration, Cpu, MariaDb) {
    let replica = MariaDb::start_with(Role::Secondary, server_id, &durability()).await;
    replica
        .exec(&format!("SET GLOBAL slave_parallel_threads = {threads}; SET GLOBAL slave_parallel_mode = 'optimistic'"))
        .await;
    let cpu = (primary.cpu_seconds(), replica.cpu_seconds());
    let t = Instant::now();
    tests::bench::start_replicating(&replica, primary.port, start).await;
    loop {
        let pos: Vec<String> = replica.query("SELECT @@gtid_slave_pos").await;
        if pos[0] == end_gtid {
            break;
        }
        let status: Vec<mysql_async::Row> = replica.query("SHOW SLAVE STATUS").await;
        if let Some(row) = status.first() {
            let err: Option<String> = row.get("Last_SQL_Error");
            let io: Option<String> = row.get("Last_IO_Error");
            let err = err.unwrap_or_default() + &io.unwrap_or_default();
            assert!(err.is_empty(), "native replica failed: {err}");
        }
        assert!(t.elapsed() < Duration::from_secs(1800), "native replica did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = t.elapsed();
    let cpu = Cpu { primary: primary.cpu_seconds() - cpu.0, secondary: replica.cpu_seconds() - cpu.1, ours: 0.0 };
    (elapsed, cpu, replica)
}

/// CPU seconds spent while a secondary caught up: the primary's server (the binlog dump), the secondary's
/// server, and (for ours) the reader and the applier.
struct Cpu {
    primary: f64,
    secondary: f64,
    ours: f64,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.primary + self.secondary + self.ours
    }
}

#[tokio::main]
async fn main() {
    let primary = MariaDb::start_with(Role::Primary, 1, &durability()).await;
    // Both pipelines start here, after the harness's own setup (users), at the same binlog position.
    let start = tests::bench::binlog_position(&primary).await;
    let (tables, workload) = standard_backlog(&primary).await;
    println!("workload: {workload}");
    let end_gtid: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
    let end_gtid = end_gtid[0].clone();
    let out = Command::new("mariadb-binlog")
        .args(["--no-defaults", "--read-from-remote-server", "--host=127.0.0.1", "--user=root", "--to-last-log", "-v"])
        .args(["--base64-output=decode-rows"])
        .arg(format!("--port={}", primary.port))
        .arg(format!("--start-position={}", start.1))
        .arg(&start.0)
        .output()
        .expect("mariadb-binlog");
    let row_changes = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("### INSERT INTO") || l.starts_with("### UPDATE") || l.starts_with("### DELETE FROM"))
        .count();
    println!("backlog: {row_changes} row changes, GTID {end_gtid}");
    let want = checksum(&primary, tables).await;

    // replica-reader + replica-applier, both started at the first binlog event.
    let secondary = MariaDb::start_with(Role::Secondary, 20, &durability()).await;
    let cpu_before = (primary.cpu_seconds(), secondary.cpu_seconds());
    let t = Instant::now();
    let reader = Reader::start(
        &primary,
        &primary.dir.path().join("journal"),
        &[("REPLICA_START_POSITION", &format!("{}:{}", start.0, start.1)), ("RUST_LOG", "warn")],
    )
    .await;
    let conflicts = std::env::var("BENCH_CONFLICTS").unwrap_or_else(|_| "stop".into());
    println!("conflict detection: REPLICA_CONFLICTS={conflicts}");
    let applier = Applier::start(
        &reader,
        &secondary,
        "bench",
        &[("REPLICA_START_OFFSET", "1"), ("RUST_LOG", "warn"), ("REPLICA_CONFLICTS", &conflicts)],
    );
    let mut conn = secondary.conn().await;
    loop {
        // The source GTID of the last applied transaction, from the secondary's own checkpoint.
        let applied: Option<String> =
            conn.query_first("SELECT gtid FROM replica_meta.checkpoint WHERE consumer = 'bench'").await.ok().flatten();
        if applied.as_deref() == Some(end_gtid.as_str()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(1800), "replica-applier did not finish:\n{}", applier.log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ours = t.elapsed();
    let (reader_cpu, applier_cpu) = (reader.cpu_seconds(), applier.cpu_seconds());
    let ours_cpu = Cpu {
        primary: primary.cpu_seconds() - cpu_before.0,
        secondary: secondary.cpu_seconds() - cpu_before.1,
        ours: reader_cpu + applier_cpu,
    };
    assert_eq!(checksum(&secondary, tables).await, want, "the secondary matches the primary");
    println!("peak RSS: reader {} MiB, applier {} MiB", reader.peak_rss_mib(), applier.peak_rss_mib());
    println!("CPU seconds: reader {reader_cpu:.2}, applier {applier_cpu:.2}");
    drop(applier);
    drop(reader);

    let (native0, native0_cpu, r0) = native(&primary, &start, 30, 0, &end_gtid).await;
    assert_eq!(checksum(&r0, tables).await, want);
    drop(r0);
    let (native4, native4_cpu, r4) = native(&primary, &start, 31, 4, &end_gtid).await;
    assert_eq!(checksum(&r4, tables).await, want);
    drop(r4);

    let rate = |d: Duration| row_changes as f64 / d.as_secs_f64();
    let cpu = |c: &Cpu| {
        format!(
            "{:.2} ({:.2} primary, {:.2} secondary{})",
            c.total(),
            c.primary,
            c.secondary,
            if c.ours > 0.0 { format!(", {:.2} reader + applier", c.ours) } else { String::new() }
        )
    };
    println!();
    println!(
        "| pipeline (empty secondary, first binlog position → end) | seconds | row changes/s | vs native 0 threads | \
         vs native 4 threads | CPU seconds |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| replica-reader + replica-applier | {:.2} | {:.0} | {:.2}x | {:.2}x | {} |",
        ours.as_secs_f64(),
        rate(ours),
        native0.as_secs_f64() / ours.as_secs_f64(),
        native4.as_secs_f64() / ours.as_secs_f64(),
        cpu(&ours_cpu)
    );
    println!(
        "| MariaDB replication, slave_parallel_threads=0 | {:.2} | {:.0} | 1.00x | {:.2}x | {} |",
        native0.as_secs_f64(),
        rate(native0),
        native4.as_secs_f64() / native0.as_secs_f64(),
        cpu(&native0_cpu)
    );
    println!(
        "| MariaDB replication, slave_parallel_threads=4 optimistic | {:.2} | {:.0} | {:.2}x | 1.00x | {} |",
        native4.as_secs_f64(),
        rate(native4),
        native0.as_secs_f64() / native4.as_secs_f64(),
        cpu(&native4_cpu)
    );
}
