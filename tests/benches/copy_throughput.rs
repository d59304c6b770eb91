//! Benchmark: the initial copy of a populated primary into an empty secondary through replica-reader and
//! replica-applier, next to `mariadb-dump --single-transaction | mariadb` and `mydumper`/`myloader` with two
//! threads, on the same data on the same machine, each into its own fresh secondary, end to end.
//!
//! Run: `cargo build --release --bins && REPLICA_TEST_PROFILE=release cargo bench -p tests --bench copy_throughput`
//! Size: `BENCH_TABLES` sysbench tables (default 4) of `BENCH_TABLE_ROWS` rows (default 250,000); chunk rows
//! `TRANSFER_BATCH_SIZE` and `REPLICA_COPY_WORKERS` (defaults: the applier's) pass through to the applier.
//! `BENCH_CPU=1` prints each process's CPU time after the copy.

use std::process::Command;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tests::bench::{env_u64, sysbench_prepare};
use tests::{Applier, MariaDb, Reader, Role};

async fn checksums(db: &MariaDb, tables: u64) -> Vec<(String, Option<i64>)> {
    let names: Vec<String> = (1..=tables).map(|i| format!("sbtest.sbtest{i}")).collect();
    db.query(&format!("CHECKSUM TABLE {}", names.join(", "))).await
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what} runs: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::main]
async fn main() {
    let tables = env_u64("BENCH_TABLES", 4);
    let per = env_u64("BENCH_TABLE_ROWS", 250_000);
    let rows = tables * per;
    let big = ["--innodb-buffer-pool-size=1G", "--innodb-log-file-size=512M"];
    let primary = MariaDb::start_with(Role::Primary, 1, &big).await;
    primary.exec("CREATE DATABASE sbtest").await;
    sysbench_prepare(&primary, tables, per);
    let want = checksums(&primary, tables).await;
    println!("data: {tables} sysbench tables, {rows} rows");

    // replica-reader + replica-applier: from the applier's start to the end of its copy.
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[("RUST_LOG", "warn")]).await;
    let ours_db = MariaDb::start_with(Role::Secondary, 20, &big).await;
    let mut env = vec![("RUST_LOG", "info")];
    let chunk = std::env::var("TRANSFER_BATCH_SIZE").unwrap_or_default();
    if !chunk.is_empty() {
        env.push(("TRANSFER_BATCH_SIZE", chunk.as_str()));
    }
    let t = Instant::now();
    let applier = Applier::start(&reader, &ours_db, "bench", &env);
    let mut conn = ours_db.conn().await;
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
    let ours = t.elapsed();
    if std::env::var("BENCH_CPU").is_ok() {
        // CPU seconds of each process of the pipeline, to see where the time goes.
        let ps = Command::new("ps").args(["-eo", "cputime,args"]).output().expect("ps");
        for line in String::from_utf8_lossy(&ps.stdout).lines() {
            if line.contains("replica-") || line.contains("mariadbd") {
                println!("cpu {}", &line[..line.len().min(160)]);
            }
        }
    }
    assert_eq!(checksums(&ours_db, tables).await, want, "the copy matches the primary");
    drop(applier);
    drop(reader);
    drop(ours_db);

    // mariadb-dump --single-transaction piped into the client.
    let dump_db = MariaDb::start_with(Role::Secondary, 21, &big).await;
    let t = Instant::now();
    run(
        "mariadb-dump | mariadb",
        Command::new("sh").arg("-c").arg(format!(
            "mariadb-dump --no-defaults -h127.0.0.1 -P{} -uroot --single-transaction --databases sbtest \
             | mariadb --no-defaults -h127.0.0.1 -P{} -uroot",
            primary.port, dump_db.port
        )),
    );
    let dump = t.elapsed();
    assert_eq!(checksums(&dump_db, tables).await, want);
    drop(dump_db);

    // mydumper + myloader, two threads each, end to end.
    let my_db = MariaDb::start_with(Role::Secondary, 22, &big).await;
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
            .args(["-P", &my_db.port.to_string()]),
    );
    let mydumper = t.elapsed();
    assert_eq!(checksums(&my_db, tables).await, want);
    drop(my_db);

    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!();
    println!(
        "| initial copy of {rows} rows (end to end, empty secondary) | seconds | rows/s | vs mydumper + myloader |"
    );
    println!("| --- | --- | --- | --- |");
    let workers = std::env::var("REPLICA_COPY_WORKERS").unwrap_or_else(|_| "2".into());
    let ours_name = format!("replica-reader + replica-applier ({workers} copy workers)");
    for (name, d) in [
        (ours_name.as_str(), ours),
        ("mariadb-dump --single-transaction \\| mariadb", dump),
        ("mydumper + myloader, 2 threads", mydumper),
    ] {
        println!(
            "| {name} | {:.2} | {:.0} | {:.2}x |",
            d.as_secs_f64(),
            rate(d),
            mydumper.as_secs_f64() / d.as_secs_f64()
        );
    }
}
