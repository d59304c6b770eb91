//! Benchmark: catch-up across a long link. The standard backlog (see `tests::bench::standard_backlog`) is
//! applied to an empty secondary by replica-reader + replica-applier with the applier reaching the reader
//! directly and through a proxy that delays each direction by `BENCH_ONE_WAY_MS` (default 25: 50 ms round
//! trip), and by a native replica reaching the primary directly and through the same kind of proxy; each
//! pipeline's time through the proxy is reported as a ratio of its time without it (1.00× = the link costs
//! nothing). Each run starts from the same binlog position with a fresh reader and fresh secondaries.
//!
//! Run: `cargo build --release --bins && REPLICA_TEST_PROFILE=release cargo bench -p tests --bench wan`

use std::time::{Duration, Instant};

use tests::bench::{checksum, durability, env_u64, standard_backlog, start_replicating, wait_gtid};
use tests::{Applier, DelayProxy, MariaDb, Reader, Role};

/// replica-reader + replica-applier from `start` to `end_gtid`, the applier reaching the reader through a
/// proxy delaying each direction by `one_way` (none when zero).
async fn ours(
    primary: &MariaDb,
    start: &(String, u64),
    end_gtid: &str,
    one_way: Duration,
    run: u32,
) -> (Duration, MariaDb) {
    let secondary = MariaDb::start_with(Role::Secondary, 100 + run, &durability()).await;
    let journal = primary.dir.path().join(format!("journal-{run}"));
    let t = Instant::now();
    let reader = Reader::start(
        primary,
        &journal,
        &[("REPLICA_START_POSITION", &format!("{}:{}", start.0, start.1)), ("RUST_LOG", "warn")],
    )
    .await;
    let proxy = DelayProxy::start(reader.grpc_port, one_way).await;
    let url = if one_way.is_zero() { reader.url() } else { format!("http://127.0.0.1:{}", proxy.port) };
    let applier = Applier::start(
        &reader,
        &secondary,
        "wan",
        &[("REPLICA_START_OFFSET", "1"), ("RUST_LOG", "warn"), ("REPLICA_READER_URL", &url)],
    );
    wait_gtid(&secondary, end_gtid, "SELECT gtid FROM replica_meta.checkpoint WHERE consumer = 'wan'").await;
    let took = t.elapsed();
    drop(applier);
    drop(reader);
    (took, secondary)
}

/// A native replica from `start` to `end_gtid` through a proxy delaying each direction by `one_way`.
async fn native(
    primary: &MariaDb,
    start: &(String, u64),
    end_gtid: &str,
    one_way: Duration,
    run: u32,
) -> (Duration, MariaDb) {
    let replica = MariaDb::start_with(Role::Secondary, 200 + run, &durability()).await;
    let proxy = DelayProxy::start(primary.port, one_way).await;
    let port = if one_way.is_zero() { primary.port } else { proxy.port };
    let t = Instant::now();
    start_replicating(&replica, port, start).await;
    wait_gtid(&replica, end_gtid, "SELECT @@gtid_slave_pos").await;
    (t.elapsed(), replica)
}

#[tokio::main]
async fn main() {
    let one_way = Duration::from_millis(env_u64("BENCH_ONE_WAY_MS", 25));
    let primary = MariaDb::start_with(Role::Primary, 1, &durability()).await;
    let start = tests::bench::binlog_position(&primary).await;
    let (tables, workload) = standard_backlog(&primary).await;
    let end: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
    let end_gtid = end[0].clone();
    let want = checksum(&primary, tables).await;
    println!("workload: {workload}; link: {} ms each way", one_way.as_millis());

    let mut rows = Vec::new();
    for (name, is_native) in [
        ("replica-reader + replica-applier (applier ↔ reader)", false),
        ("MariaDB replication, slave_parallel_threads=0 (replica ↔ primary)", true),
    ] {
        let mut times = Vec::new();
        for (run, delay) in [(0, Duration::ZERO), (1, one_way)] {
            let (took, secondary) = if is_native {
                native(&primary, &start, &end_gtid, delay, run).await
            } else {
                ours(&primary, &start, &end_gtid, delay, run).await
            };
            assert_eq!(checksum(&secondary, tables).await, want, "{name}: the secondary matches the primary");
            times.push(took);
        }
        rows.push((name, times[0], times[1]));
    }
    println!();
    println!(
        "| pipeline | loopback: seconds | {} ms round trip: seconds | ratio (loopback / long link) |",
        2 * one_way.as_millis()
    );
    println!("| --- | --- | --- | --- |");
    for (name, near, far) in rows {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2}x |",
            near.as_secs_f64(),
            far.as_secs_f64(),
            near.as_secs_f64() / far.as_secs_f64()
        );
    }
}
