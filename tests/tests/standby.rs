//! Two readers of one JetStream journal on a three-node NATS cluster (three replicas), under a sysbench load and
//! writes to a table without a key: `kill -9` of the active reader (the standby takes over), of one NATS server,
//! and of both at once. Both secondaries end identical to the primary: nothing lost, nothing applied twice.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tests::bench::{sysbench_load, sysbench_prepare};
use tests::{assert_same_data, caught_up, eventually, free_port, scrape, Applier, MariaDb, NatsCluster, Reader, Role};

const WAIT: Duration = Duration::from_secs(120);

/// Transactions of five new rows, an update of an earlier row and a row in a table without a key, until `stop`.
async fn load(opts: mysql_async::OptsBuilder, stop: tokio::sync::watch::Receiver<bool>) {
    let mut conn = mysql_async::Conn::new(opts).await.expect("load connection");
    for t in 0.. {
        if *stop.borrow() {
            break;
        }
        let rows: Vec<String> = (0..5).map(|i| format!("({}, {i}, 'n{t}')", t * 5 + i)).collect();
        let sql = format!(
            "START TRANSACTION; INSERT INTO ha.t VALUES {}; UPDATE ha.t SET v = v + 1 WHERE id = {};
             INSERT INTO ha.log VALUES ({t}, {}); COMMIT",
            rows.join(","),
            (t * 7) % (t * 5 + 1),
            t % 13
        );
        conn.query_drop(sql).await.expect("load transaction");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the primary committed 300 more transactions.
async fn grown(primary: &MariaDb) {
    let count = || async {
        let pos = primary.query::<String>("SELECT @@gtid_binlog_pos").await.first().cloned().unwrap_or_default();
        pos.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    let from = count().await;
    eventually(WAIT, "the load to go on", || async { (count().await > from + 300).then_some(()) }).await;
}

/// Polls until `reader` sees `n` copies of the journal in sync.
async fn copies_current(reader: &Reader, n: u32) {
    eventually(WAIT, &format!("{n} copies of the journal in sync"), || async {
        (reader.info().await.journal_replicas_current == n).then_some(())
    })
    .await
}

/// Polls until `reader` says it is the active one; returns how long that took.
async fn active(reader: &Reader, since: Instant) -> Duration {
    eventually(WAIT, "a reader to take the lease", || async {
        let info = reader.info().await;
        (info.role == "active").then(|| since.elapsed())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_reader_takes_over_after_kill_9_of_the_active_one_of_a_nats_server_and_of_both() {
    let mut nats = NatsCluster::start(3);
    let primary = MariaDb::start(Role::Primary).await;
    let secondaries =
        [MariaDb::start_with(Role::Secondary, 10, &[]).await, MariaDb::start_with(Role::Secondary, 11, &[]).await];
    let urls = nats.urls();
    let metrics = [free_port(), free_port()];
    let (metrics_a, metrics_b) = (format!("127.0.0.1:{}", metrics[0]), format!("127.0.0.1:{}", metrics[1]));
    let env = |server_id, metrics_addr| {
        [
            ("REPLICA_JOURNAL_URL", urls.as_str()),
            ("REPLICA_JOURNAL_REPLICAS", "3"),
            ("REPLICA_JOURNAL_STREAM", "ha"),
            ("REPLICA_LEASE_TTL", "3s"),
            ("MARIA_SERVER_ID", server_id),
            ("REPLICA_METRICS_ADDR", metrics_addr),
        ]
    };
    let mut a = Reader::start(&primary, &primary.dir.path().join("journal-a"), &env("2001", &metrics_a)).await;
    active(&a, Instant::now()).await;
    let mut b = Reader::start(&primary, &primary.dir.path().join("journal-b"), &env("2002", &metrics_b)).await;
    let info = b.info().await;
    assert_eq!(info.role, "standby", "a second reader of the journal waits");
    assert_eq!((info.journal_store.as_str(), info.journal_replicas), ("jetstream", 3));
    assert!(!info.journal_leader.is_empty(), "health names the stream's leader");
    copies_current(&b, 3).await;
    let holder = a.info().await.lease_holder;
    eventually(WAIT, "the standby's metrics to name the lease holder and the copies", || async {
        let m = scrape(metrics[1]);
        let want = [
            format!("replica_reader_lease_holder{{holder=\"{holder}\"}} 1"),
            "replica_journal_replicas 3".to_owned(),
            "replica_journal_replicas_current 3".to_owned(),
            "replica_reader_standby 1".to_owned(),
        ];
        want.iter().all(|w| m.contains(w.as_str())).then_some(())
    })
    .await;

    let readers = format!("{},{}", a.url(), b.url());
    let appliers: Vec<Applier> = secondaries
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Applier::start(&a, s, &format!("s{i}"), &[("REPLICA_START_OFFSET", "1"), ("REPLICA_READER_URL", &readers)])
        })
        .collect();
    primary
        .exec(
            "CREATE DATABASE ha; CREATE TABLE ha.t (id BIGINT PRIMARY KEY, v INT NOT NULL, note VARCHAR(40));
             CREATE TABLE ha.log (n BIGINT NOT NULL, v INT NOT NULL); CREATE DATABASE sbtest",
        )
        .await;
    sysbench_prepare(&primary, 4, 2_000);
    let sysbench = sysbench_load(&primary, 4, 2_000, 100);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let loader = tokio::spawn(load(primary.root_opts(), stop));

    // 1. The active reader dies: the standby takes the lease once it expires, and reads on from the journal.
    grown(&primary).await;
    a.kill9();
    let took = active(&b, Instant::now()).await;
    println!("takeover after kill -9 of the active reader: {} ms", took.as_millis());
    assert!(took < Duration::from_secs(10), "the standby took over within the lease time and a little: {took:?}");
    a.restart().await;
    assert_eq!(a.info().await.role, "standby");

    // 2. One NATS server dies (the stream keeps a majority), and comes back.
    grown(&primary).await;
    nats.kill9(0);
    copies_current(&b, 2).await;
    grown(&primary).await;
    nats.restart(0);
    copies_current(&b, 3).await;

    // 3. Both at once: the active reader (now b) and another NATS server.
    grown(&primary).await;
    b.kill9();
    nats.kill9(1);
    let took = active(&a, Instant::now()).await;
    println!("takeover after kill -9 of the active reader and of a NATS server: {} ms", took.as_millis());
    nats.restart(1);
    b.restart().await;

    grown(&primary).await;
    sysbench.stop();
    let _ = stop_tx.send(true);
    loader.await.expect("loader");
    for (s, applier) in secondaries.iter().zip(&appliers) {
        caught_up(&primary, &a, s, applier).await;
        assert_same_data(&primary, s, "ha").await;
        assert_same_data(&primary, s, "sbtest").await;
    }
    let log = a.log_text() + &b.log_text();
    assert!(log.contains("this reader holds the lease"), "{log}");
}
