//! Benchmark: the journal on NATS JetStream (three servers, three replicas) next to the local sled journal, on
//! the same machine and the same backlog: how fast the reader journals it, how fast reader + applier bring an
//! empty secondary to its end, each process's peak RSS; then how long a standby reader takes to take over after
//! `kill -9` of the active one.
//!
//! Run: `cargo build --release --bins && REPLICA_TEST_PROFILE=release cargo bench -p tests --bench journal_store`
//! Workload: the standard catch-up backlog (see `applier_throughput`; `BENCH_TABLES`, `BENCH_ROWS`,
//! `BENCH_EVENTS`, `BENCH_THREADS`, `BENCH_DURABLE`). `BENCH_RUNS` alternating pairs (default 2);
//! `BENCH_JS_REPLICAS` the stream's replicas (default 3).

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tests::bench::{binlog_position, checksum, durability, env_u64, standard_backlog};
use tests::{Applier, MariaDb, NatsCluster, Reader, Role};

struct Run {
    journaled: Duration,
    applied: Duration,
    reader_rss: u64,
    applier_rss: u64,
}

async fn run(primary: &MariaDb, start: &(String, u64), end_gtid: &str, tables: u64, env: &[(&str, &str)]) -> Run {
    let want = checksum(primary, tables).await;
    let secondary = MariaDb::start_with(Role::Secondary, 20, &durability()).await;
    let position = format!("{}:{}", start.0, start.1);
    let log = std::env::var("BENCH_READER_LOG").unwrap_or_else(|_| "warn".into());
    let mut reader_env = vec![("REPLICA_START_POSITION", position.as_str()), ("RUST_LOG", log.as_str())];
    reader_env.extend_from_slice(env);
    let t = Instant::now();
    let dir = primary.dir.path().join(format!("journal-{}", rand_suffix()));
    let reader = Reader::start(primary, &dir, &reader_env).await;
    let applier = Applier::start(&reader, &secondary, "bench", &[("REPLICA_START_OFFSET", "1"), ("RUST_LOG", "warn")]);
    let mut conn = secondary.conn().await;
    let mut journaled = None;
    loop {
        if journaled.is_none() && reader.info().await.source_position.is_some_and(|p| p.gtid == end_gtid) {
            journaled = Some(t.elapsed());
        }
        let applied: Option<String> =
            conn.query_first("SELECT gtid FROM replica_meta.checkpoint WHERE consumer = 'bench'").await.ok().flatten();
        if applied.as_deref() == Some(end_gtid) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(1800), "did not finish:\n{}", applier.log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied = t.elapsed();
    assert_eq!(checksum(&secondary, tables).await, want, "the secondary matches the primary");
    Run {
        journaled: journaled.unwrap_or(applied),
        applied,
        reader_rss: reader.peak_rss_mib(),
        applier_rss: applier.peak_rss_mib(),
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let primary = MariaDb::start_with(Role::Primary, 1, &durability()).await;
    let start = binlog_position(&primary).await;
    let (tables, workload) = standard_backlog(&primary).await;
    let end_gtid: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
    let end_gtid = end_gtid[0].clone();
    println!("workload: {workload}");
    let nats = NatsCluster::start(3);
    let urls = nats.urls();
    let mut sled = Vec::new();
    let mut js = Vec::new();
    let replicas = env_u64("BENCH_JS_REPLICAS", 3).to_string();
    println!("JetStream: three servers, {replicas} replicas");
    for i in 0..env_u64("BENCH_RUNS", 2) {
        let stream = format!("bench{i}");
        let js_env = [
            ("REPLICA_JOURNAL_URL", urls.as_str()),
            ("REPLICA_JOURNAL_REPLICAS", replicas.as_str()),
            ("REPLICA_JOURNAL_STREAM", stream.as_str()),
        ];
        sled.push(run(&primary, &start, &end_gtid, tables, &[]).await);
        js.push(run(&primary, &start, &end_gtid, tables, &js_env).await);
    }
    let show = |r: &[Run], f: fn(&Run) -> Duration| {
        r.iter().map(|x| format!("{:.2}", f(x).as_secs_f64())).collect::<Vec<_>>().join(" / ")
    };
    let ratio = |a: &[Run], b: &[Run], f: fn(&Run) -> Duration| {
        a.iter()
            .zip(b)
            .map(|(x, y)| format!("{:.2}x", f(x).as_secs_f64() / f(y).as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!();
    println!("| measure | sled (local) | JetStream R{replicas} (3 servers) | JetStream vs sled (speed) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| reader: journal the backlog, s | {} | {} | {} |",
        show(&sled, |r| r.journaled),
        show(&js, |r| r.journaled),
        ratio(&sled, &js, |r| r.journaled)
    );
    println!(
        "| reader + applier: empty secondary to the end, s | {} | {} | {} |",
        show(&sled, |r| r.applied),
        show(&js, |r| r.applied),
        ratio(&sled, &js, |r| r.applied)
    );
    let rss =
        |r: &[Run]| r.iter().map(|x| format!("{}/{}", x.reader_rss, x.applier_rss)).collect::<Vec<_>>().join(", ");
    println!("| peak RSS reader/applier, MiB | {} | {} | |", rss(&sled), rss(&js));

    // Takeover: two readers of one JetStream journal; kill -9 the active one, time the standby to active.
    let lease = "3s";
    let env = |id| {
        [
            ("REPLICA_JOURNAL_URL", urls.as_str()),
            ("REPLICA_JOURNAL_REPLICAS", "3"),
            ("REPLICA_JOURNAL_STREAM", "takeover"),
            ("REPLICA_LEASE_TTL", lease),
            ("MARIA_SERVER_ID", id),
            ("RUST_LOG", "warn"),
        ]
    };
    let mut takeovers = Vec::new();
    let mut a = Reader::start(&primary, &primary.dir.path().join("takeover-a"), &env("3001")).await;
    let mut b = Reader::start(&primary, &primary.dir.path().join("takeover-b"), &env("3002")).await;
    for _ in 0..env_u64("BENCH_TAKEOVERS", 5) {
        let (active, standby) = if a.info().await.role == "active" { (&mut a, &mut b) } else { (&mut b, &mut a) };
        if standby.info().await.role != "standby" {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        active.kill9();
        let t = Instant::now();
        while standby.info().await.role != "active" {
            assert!(t.elapsed() < Duration::from_secs(60), "no takeover");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        takeovers.push(t.elapsed());
        active.restart().await;
    }
    let ms: Vec<String> = takeovers.iter().map(|d| d.as_millis().to_string()).collect();
    println!("takeover after kill -9 of the active reader (lease {lease}): {} ms", ms.join(", "));
}
