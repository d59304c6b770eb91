//! Benchmark: the initial copy of a populated primary into an empty secondary through replica-reader and
//! replica-applier, next to `mariadb-dump --single-transaction | mariadb` and `mydumper`/`myloader` with two
//! threads, on the same data on the same machine, each into its own fresh secondary, end to end. Each tool
//! runs `BENCH_REPEAT` times (default 2), interleaved, after the primary has flushed its dirty pages; the best
//! run of each is compared, and every run is printed.
//!
//! Run: `cargo build --release --bins && REPLICA_TEST_PROFILE=release cargo bench -p tests --bench copy_throughput`
//! Size: `BENCH_TABLES` sysbench tables (default 4) of `BENCH_TABLE_ROWS` rows (default 250,000); chunk rows
//! `TRANSFER_BATCH_SIZE` and `REPLICA_COPY_WORKERS` (defaults: the applier's) pass through to the applier;
//! `BENCH_CPU=1` prints each process's CPU time after each of our runs.

use std::process::Command;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tests::bench::{env_u64, sysbench_prepare};
use tests::{Applier, MariaDb, Reader, Role};

const BIG: [&str; 2] = ["--innodb-buffer-pool-size=1G", "--innodb-log-file-size=512M"];

async fn checksums(db: &MariaDb, tables: u64) -> Vec<(String, Option<i64>)> {
    let names: Vec<String> = (1..=tables).map(|i| format!("sbtest.sbtest{i}")).collect();
    db.query(&format!("CHECKSUM TABLE {}", names.join(", "))).await
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what} runs: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Waits until the primary has written its dirty pages, so that no run pays for an earlier one's writes.
async fn settle(primary: &MariaDb) {
    primary.exec("SET GLOBAL innodb_max_dirty_pages_pct = 0").await;
    let t = Instant::now();
    loop {
        let dirty: Vec<(String, u64)> = primary.query("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'").await;
        if dirty.first().is_none_or(|(_, n)| *n < 16) || t.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    primary.exec("SET GLOBAL innodb_max_dirty_pages_pct = 90").await;
}

async fn ours(primary: &MariaDb, reader: &Reader, server_id: u32) -> (Duration, MariaDb) {
    let db = MariaDb::start_with(Role::Secondary, server_id, &BIG).await;
    let mut env = vec![("RUST_LOG", "info")];
    let chunk = std::env::var("TRANSFER_BATCH_SIZE").unwrap_or_default();
    if !chunk.is_empty() {
        env.push(("TRANSFER_BATCH_SIZE", chunk.as_str()));
    }
    let t = Instant::now();
    let applier = Applier::start(reader, &db, "bench", &env);
    let mut conn = db.conn().await;
    loop {
        let left: Option<(u64, u64)> = conn
            .query_first(
                "SELECT COALESCE(SUM(state IN ('pending', 'copying')), 0), COUNT(*) FROM replica_meta.copy_state",
            )
            .await
            .ok()
            .flatten();
        if matches!(left, Some((0, n)) if n > 0) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(1800), "the copy did not finish:\n{}", applier.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t.elapsed();
    if std::env::var("BENCH_CPU").is_ok() {
        // CPU time of each process so far, to see where the time goes.
        let ps = Command::new("ps").args(["-eo", "cputime,args"]).output().expect("ps");
        for line in String::from_utf8_lossy(&ps.stdout).lines() {
            if line.contains("replica-") || line.contains("mariadbd") {
                println!("cpu {}", &line[..line.len().min(120)]);
            }
        }
    }
    drop(applier);
    let _ = primary;
    (took, db)
}

async fn dump(primary: &MariaDb, server_id: u32) -> (Duration, MariaDb) {
    let db = MariaDb::start_with(Role::Secondary, server_id, &BIG).await;
    let t = Instant::now();
    run(
        "mariadb-dump | mariadb",
        Command::new("sh").arg("-c").arg(format!(
            "mariadb-dump --no-defaults -h127.0.0.1 -P{} -uroot --single-transaction --databases sbtest \
             | mariadb --no-defaults -h127.0.0.1 -P{} -uroot",
            primary.port, db.port
        )),
    );
    (t.elapsed(), db)
}

async fn mydumper(primary: &MariaDb, server_id: u32) -> (Duration, MariaDb) {
    let db = MariaDb::start_with(Role::Secondary, server_id, &BIG).await;
    let dir = tempfile::tempdir().expect("dump dir");
    let out = dir.path().join("dump");
    let t = Instant::now();
    run(
        "mydumper",
        Command::new("mydumper")
            .args(["-h", "127.0.0.1", "-u", "root", "-B", "sbtest", "-t", "2", "-r", "100000", "-o"])
            .arg(&out)
            .args(["-P", &primary.port.to_string()]),
    );
    run(
        "myloader",
        Command::new("myloader")
            .args(["-h", "127.0.0.1", "-u", "root", "-t", "2", "-o", "-d"])
            .arg(&out)
            .args(["-P", &db.port.to_string()]),
    );
    (t.elapsed(), db)
}

#[tokio::main]
async fn main() {
    let tables = env_u64("BENCH_TABLES", 4);
    let per = env_u64("BENCH_TABLE_ROWS", 250_000);
    let repeat = env_u64("BENCH_REPEAT", 2);
    let rows = tables * per;
    let primary = MariaDb::start_with(Role::Primary, 1, &BIG).await;
    primary.exec("CREATE DATABASE sbtest").await;
    sysbench_prepare(&primary, tables, per);
    let want = checksums(&primary, tables).await;
    println!("data: {tables} sysbench tables, {rows} rows");
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[("RUST_LOG", "warn")]).await;

    let workers = std::env::var("REPLICA_COPY_WORKERS").unwrap_or_else(|_| "2".into());
    let names = [
        format!("replica-reader + replica-applier ({workers} copy workers)"),
        "mariadb-dump --single-transaction \\| mariadb".to_owned(),
        "mydumper + myloader, 2 threads".to_owned(),
    ];
    let mut runs: [Vec<Duration>; 3] = Default::default();
    let mut id = 20;
    for _ in 0..repeat {
        for (i, run) in runs.iter_mut().enumerate() {
            settle(&primary).await;
            id += 1;
            let (took, db) = match i {
                0 => ours(&primary, &reader, id).await,
                1 => dump(&primary, id).await,
                _ => mydumper(&primary, id).await,
            };
            assert_eq!(checksums(&db, tables).await, want, "{} copied the primary exactly", names[i]);
            println!("run: {} {:.2} s", names[i], took.as_secs_f64());
            run.push(took);
        }
    }
    let best: Vec<Duration> = runs.iter().map(|r| r.iter().copied().min().unwrap_or_default()).collect();
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!();
    println!("| initial copy of {rows} rows (end to end, empty secondary, best of {repeat}) | seconds | rows/s | vs mydumper + myloader |");
    println!("| --- | --- | --- | --- |");
    for (name, d) in names.iter().zip(&best) {
        println!(
            "| {name} | {:.2} | {:.0} | {:.2}x |",
            d.as_secs_f64(),
            rate(*d),
            best[2].as_secs_f64() / d.as_secs_f64()
        );
    }
}
