//! Benchmark: online verification of sysbench tables while a write load runs — `replica-applier verify` on a
//! secondary kept by replica-reader + replica-applier, next to `pt-table-checksum` on a native replica of the
//! same primary, in the same run on the same machine — with the replication lag each causes, measured with a
//! microsecond heartbeat.
//!
//! Run: `cargo build --release --bins && REPLICA_TEST_PROFILE=release cargo bench -p tests --bench verify_throughput`
//! Size: `BENCH_TABLES` (default 4) sysbench tables of `BENCH_ROWS` rows (default 250,000); the write load is
//! `sysbench oltp_write_only` at `BENCH_TPS` transactions per second (default 200) from 2 threads, uniform keys.
//! `BENCH_APPLIER_LOG` sets the applier's RUST_LOG (e.g. `info,applier::verify=debug` for a line per round, with
//! `REPLICA_TEST_LOG_DIR` to keep the log).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::bench::{env_u64, native_replica, sysbench_prepare, wait_gtid};
use tests::{Applier, MariaDb, Reader, Role};

/// A sysbench write load on the primary until the child is killed.
fn write_load(primary: &MariaDb, tables: u64, rows: u64, tps: u64) -> Child {
    Command::new("sysbench")
        .args(["oltp_write_only", "--db-driver=mysql", "--mysql-host=127.0.0.1", "--mysql-user=root"])
        .args(["--mysql-db=sbtest", "--rand-type=uniform", "--threads=2", "--time=0", "--events=0"])
        .arg(format!("--mysql-port={}", primary.port))
        .arg(format!("--tables={tables}"))
        .arg(format!("--table-size={rows}"))
        .arg(format!("--rate={tps}"))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sysbench runs")
}

/// Heartbeats every 20 ms on the primary, arrivals on `replica` (see [`tests::bench::heartbeat`]).
fn heartbeat(primary: &MariaDb, replica: &MariaDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<f64>> {
    let all = tests::bench::heartbeat(primary, &[replica], Duration::from_millis(20), stop);
    tokio::spawn(async move { all.await.expect("heartbeat").remove(0) })
}

fn summary(ms: Vec<f64>) -> String {
    tests::bench::lag_summary(ms)
}

#[tokio::main]
async fn main() {
    let tables = env_u64("BENCH_TABLES", 4);
    let rows = env_u64("BENCH_ROWS", 250_000);
    let tps = env_u64("BENCH_TPS", 200);
    let big = ["--innodb-buffer-pool-size=1G"];
    let primary = MariaDb::start_with(Role::Primary, 1, &big).await;
    let start = tests::bench::binlog_position(&primary).await;
    primary
        .exec("CREATE DATABASE sbtest; CREATE DATABASE hb; CREATE TABLE hb.beat (id INT PRIMARY KEY, ts DATETIME(6))")
        .await;
    let t = Instant::now();
    sysbench_prepare(&primary, tables, rows);
    println!("prepared {tables} x {rows} rows in {:.1} s", t.elapsed().as_secs_f64());
    let end: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
    let end = end[0].clone();

    // A native replica and a pipeline secondary, both from the first binlog event.
    let native = native_replica(&primary, &start, 30, &big).await;
    let secondary = MariaDb::start_with(Role::Secondary, 20, &big).await;
    let reader = Reader::start(
        &primary,
        &primary.dir.path().join("journal"),
        &[("REPLICA_START_POSITION", &format!("{}:{}", start.0, start.1)), ("RUST_LOG", "warn")],
    )
    .await;
    let admin = format!("127.0.0.1:{}", tests::free_port());
    let applier = Applier::start(
        &reader,
        &secondary,
        "bench",
        &[
            ("REPLICA_START_OFFSET", "1"),
            ("RUST_LOG", &std::env::var("BENCH_APPLIER_LOG").unwrap_or_else(|_| "info".into())),
            ("REPLICA_ADMIN_ADDR", &admin),
        ],
    );
    wait_gtid(&native, &end, "SELECT @@gtid_slave_pos").await;
    wait_gtid(&secondary, &end, "SELECT gtid FROM replica_meta.checkpoint WHERE consumer = 'bench'").await;
    let verified_rows = tables * rows;

    // Ours: replica-applier verify under the write load.
    let mut load = write_load(&primary, tables, rows, tps);
    let stop = Arc::new(AtomicBool::new(false));
    let idle_stop = Arc::new(AtomicBool::new(false));
    let idle = heartbeat(&primary, &secondary, idle_stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    idle_stop.store(true, Ordering::SeqCst);
    let idle = idle.await.expect("heartbeat");
    let lag = heartbeat(&primary, &secondary, stop.clone());
    let t = Instant::now();
    let out = Command::new(tests::binary("replica-applier"))
        .env_clear()
        .args(["verify", "--admin-addr", &admin, "--schema", "sbtest"])
        .output()
        .expect("replica-applier verify");
    let ours = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let ours_lag = lag.await.expect("heartbeat");
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    assert_eq!(out.status.code(), Some(0), "no difference on a correct secondary:\n{report}\n{}", applier.log_text());
    let _ = load.kill();
    let _ = load.wait();

    // pt-table-checksum on the native replica, under the same load.
    primary
        .exec(&format!(
            "CREATE DATABASE percona; CREATE TABLE percona.dsns (id INT AUTO_INCREMENT PRIMARY KEY, parent_id INT, dsn VARCHAR(255));
             INSERT INTO percona.dsns (dsn) VALUES ('h=127.0.0.1,P={},u=root')",
            native.port
        ))
        .await;
    let mut load = write_load(&primary, tables, rows, tps);
    let idle_stop = Arc::new(AtomicBool::new(false));
    let idle_native = heartbeat(&primary, &native, idle_stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    idle_stop.store(true, Ordering::SeqCst);
    let idle_native = idle_native.await.expect("heartbeat");
    let stop = Arc::new(AtomicBool::new(false));
    let lag = heartbeat(&primary, &native, stop.clone());
    let t = Instant::now();
    let out = Command::new("pt-table-checksum")
        .arg(format!("h=127.0.0.1,P={},u=root", primary.port))
        .args(["--databases=sbtest", "--no-check-binlog-format"])
        .arg(format!("--recursion-method=dsn=h=127.0.0.1,P={},D=percona,t=dsns", primary.port))
        .output()
        .expect("pt-table-checksum (apt-get install percona-toolkit)");
    let theirs = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let theirs_lag = lag.await.expect("heartbeat");
    let _ = load.kill();
    let _ = load.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}{}", String::from_utf8_lossy(&out.stderr));
    // Exit 0, or only the "a replica lagged" bits: no DIFFS bit (16) may be set.
    assert_eq!(out.status.code().unwrap_or(255) & 16, 0, "pt-table-checksum found no difference");

    let rate = |d: Duration| verified_rows as f64 / d.as_secs_f64();
    println!();
    println!("| verification of {verified_rows} rows ({tables} tables) under {tps} TPS | seconds | rows/s | vs pt-table-checksum |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| replica-applier verify | {:.2} | {:.0} | {:.2}x |",
        ours.as_secs_f64(),
        rate(ours),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    println!("| pt-table-checksum (native replica) | {:.2} | {:.0} | 1.00x |", theirs.as_secs_f64(), rate(theirs));
    println!();
    println!("replication lag, pipeline, before verify: {}", summary(idle));
    println!("replication lag, pipeline, during verify: {}", summary(ours_lag));
    println!("replication lag, native, before pt-table-checksum: {}", summary(idle_native));
    println!("replication lag, native, during pt-table-checksum: {}", summary(theirs_lag));
}
