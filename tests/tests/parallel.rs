//! Parallel apply (`REPLICA_APPLY_WORKERS`) against real servers: exactly once under `kill -9` on keyed, keyless
//! and whole-table-keyed tables, the same result as the primary row for row, recovery of what workers
//! committed above the checkpoint (also by an applier restarted with one worker), and a worker's failure
//! applied alone.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tests::{assert_same_data, caught_up, Applier, MariaDb, Reader, Role};

async fn pipeline() -> (MariaDb, Reader, MariaDb) {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    (primary, reader, secondary)
}

const SCHEMA: &str = "
CREATE DATABASE p;
CREATE TABLE p.acc (id INT PRIMARY KEY, n INT NOT NULL, v VARCHAR(40));
CREATE TABLE p.uniq (id BIGINT PRIMARY KEY, code INT NOT NULL, n INT NOT NULL, UNIQUE KEY (code));
CREATE TABLE p.named (k VARCHAR(20) PRIMARY KEY, n INT NOT NULL);
CREATE TABLE p.nokey (a INT, b VARCHAR(20));
";

/// `txns` transactions from client `client` on overlapping keys of every table (a small linear congruential
/// generator makes them repeatable): updates with absolute after images, inserts, deletes, unique-key moves.
async fn load(opts: mysql_async::OptsBuilder, client: u64, txns: u64) {
    let mut conn = mysql_async::Conn::new(opts).await.expect("load connection");
    let mut x = 0x2545_F491_4F6C_DD1Du64.wrapping_add(client);
    let mut next = move |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    for t in 0..txns {
        let (a, b, c) = (next(300), next(300), next(40));
        let mut sql = format!(
            "START TRANSACTION;
             INSERT INTO p.acc VALUES ({a}, 1, 'c{client}t{t}') ON DUPLICATE KEY UPDATE n = n + 1, v = 'c{client}t{t}';
             UPDATE p.acc SET n = n * 2 % 1000003, v = CONCAT(v, '.') WHERE id = {b};"
        );
        match next(6) {
            0 => sql.push_str(&format!("DELETE FROM p.acc WHERE id = {};", next(300))),
            1 => sql.push_str(&format!("INSERT INTO p.nokey VALUES ({t}, 'c{client}');")),
            2 => sql.push_str(&format!(
                "INSERT INTO p.uniq VALUES ({c}, {}, 1) ON DUPLICATE KEY UPDATE code = VALUES(code), n = n + 1;",
                next(60)
            )),
            3 => sql.push_str(&format!(
                "INSERT INTO p.named VALUES ('{}', 1) ON DUPLICATE KEY UPDATE n = n + 1;",
                ["Alpha", "alpha", "BETA", "beta", "Gamma"][next(5) as usize]
            )),
            _ => {}
        }
        sql.push_str("COMMIT;");
        // A unique-key move onto a code another row holds fails on the primary too: nothing to replicate.
        let _ = conn.query_drop(sql).await;
        let _ = conn.query_drop("ROLLBACK").await;
    }
}

fn parallel(workers: &str) -> Vec<(&'static str, String)> {
    vec![
        ("REPLICA_START_OFFSET", "1".into()),
        ("REPLICA_APPLY_WORKERS", workers.into()),
        // Small worker transactions: many commits above the checkpoint when the applier is killed.
        ("REPLICA_BATCH_ROWS", "20".into()),
    ]
}

fn env<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_under_parallel_apply_loses_and_repeats_nothing_and_a_one_worker_restart_recovers_it() {
    let (primary, reader, secondary) = pipeline().await;
    primary.exec(SCHEMA).await;
    let settings = parallel("4");
    let mut a = Applier::start(&reader, &secondary, "par", &env(&settings));
    let loads: Vec<_> = (0..3).map(|c| tokio::spawn(load(primary.root_opts(), c, 1_500))).collect();
    // Kills begin once rows flow (on a busy machine the load may take seconds to start), and go on until a
    // restart found worker commits above the checkpoint, at least eight of them, while the load runs.
    tests::eventually(Duration::from_secs(60), "rows applied on the secondary", || async {
        // (The table may not be there yet.)
        let mut c = secondary.conn().await;
        let n: Option<u64> = c.query_first("SELECT COUNT(*) FROM p.acc").await.ok().flatten();
        n.filter(|&n| n > 0)
    })
    .await;
    let skipped = |a: &Applier| a.log_text().contains("skipped when they come again");
    let mut kills = 0u64;
    while kills < 8 || (!skipped(&a) && kills < 60 && loads.iter().any(|l| !l.is_finished())) {
        tokio::time::sleep(Duration::from_millis(300 + (kills * 71) % 250)).await;
        a.kill9();
        a.spawn();
        kills += 1;
    }
    for l in loads {
        l.await.expect("load");
    }
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "p").await;
    let log = a.log_text();
    assert!(
        log.contains("skipped when they come again"),
        "at least one kill left worker commits above the checkpoint, and the restart found them:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // Killed again in the middle of parallel work, then restarted with one worker: it recovers the same way.
    let loads: Vec<_> = (3..5).map(|c| tokio::spawn(load(primary.root_opts(), c, 800))).collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.kill9();
    let single = Applier::start(&reader, &secondary, "par", &[("REPLICA_APPLY_WORKERS", "1")]);
    for l in loads {
        l.await.expect("load");
    }
    caught_up(&primary, &reader, &secondary, &single).await;
    assert_same_data(&primary, &secondary, "p").await;
    let left: Vec<u64> = secondary.query("SELECT COUNT(*) FROM replica_meta.applied").await;
    assert_eq!(left, vec![0], "once caught up, the checkpoint covers every worker transaction");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_transaction_fails_hands_it_back_and_the_table_is_quarantined_while_others_flow() {
    failed_worker(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_commit_order_a_failed_worker_hands_back_what_waits_behind_it_too() {
    failed_worker(true).await;
}

async fn failed_worker(commit_order: bool) {
    let (primary, reader, secondary) = pipeline().await;
    primary
        .exec("CREATE DATABASE q; CREATE TABLE q.good (id INT PRIMARY KEY, n INT); CREATE TABLE q.bad (id INT PRIMARY KEY, n INT)")
        .await;
    let mut settings = parallel("3");
    settings.push(("REPLICA_SKIP_FAILING_TABLES", "true".into()));
    settings.push(("REPLICA_MAX_TABLE_FAILURES", "1".into()));
    settings.push(("REPLICA_COMMIT_ORDER", commit_order.to_string()));
    let a = Applier::start(&reader, &secondary, "q", &env(&settings));
    primary.exec("INSERT INTO q.good VALUES (1, 0); INSERT INTO q.bad VALUES (1, 0)").await;
    caught_up(&primary, &reader, &secondary, &a).await;
    // A local write on the secondary: the primary's next update of the row cannot find it (drift), in a worker.
    secondary.exec("DELETE FROM q.bad").await;
    let mut conn = primary.conn().await;
    for i in 2..400 {
        conn.query_drop(format!("INSERT INTO q.good VALUES ({i}, {i})")).await.expect("insert");
        conn.query_drop("UPDATE q.good SET n = n + 1 WHERE id = 1").await.expect("update");
        if i == 200 {
            conn.query_drop("UPDATE q.bad SET n = 1 WHERE id = 1").await.expect("bad update");
        }
    }
    caught_up(&primary, &reader, &secondary, &a).await;
    let good: Vec<(u64, i64)> = secondary.query("SELECT COUNT(*), SUM(n) FROM q.good").await;
    let want: Vec<(u64, i64)> = primary.query("SELECT COUNT(*), SUM(n) FROM q.good").await;
    assert_eq!(good, want, "q.good is complete");
    let q: Vec<String> = secondary.query("SELECT table_name FROM replica_meta.quarantine").await;
    assert_eq!(q, vec!["bad".to_owned()]);
    let log = a.log_text();
    if !commit_order {
        // (In commit order a burst of several goes to the writer whole, so the update may never reach a worker.)
        assert!(log.contains("it is applied again alone"), "the worker handed the transaction back:\n{log}");
    }
}

/// Polls `t.seq` on the secondary until it holds `rows` rows; returns how often it saw a gap (a row whose
/// predecessors were not all there: a later transaction visible before an earlier one).
async fn gaps_seen_while_applying(secondary: &MariaDb, rows: u64) -> u64 {
    let mut conn = secondary.conn().await;
    let mut gaps = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let seen: Option<(u64, u64)> =
            conn.query_first("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM t.seq").await.ok().flatten();
        if let Some((count, max)) = seen {
            if count != max {
                gaps += 1;
            }
            if count == rows {
                return gaps;
            }
        }
        assert!(std::time::Instant::now() < deadline, "t.seq did not reach {rows} rows");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_commit_order_a_reader_of_the_secondary_never_sees_a_later_transaction_before_an_earlier_one() {
    let (primary, reader, secondary) = pipeline().await;
    primary.exec("CREATE DATABASE t; CREATE TABLE t.seq (id INT PRIMARY KEY, v INT)").await;
    let mut settings = parallel("4");
    settings.push(("REPLICA_COMMIT_ORDER", "true".into()));
    let a = Applier::start(&reader, &secondary, "ordered", &env(&settings));
    caught_up(&primary, &reader, &secondary, &a).await;
    // Single-row transactions on different keys as fast as one client commits them: the applier keeps up,
    // so most arrive alone and go to idle workers, which commit at once unless held to the order.
    let rows = 3_000u64;
    let opts = primary.root_opts();
    let load = tokio::spawn(async move {
        let mut conn = mysql_async::Conn::new(opts).await.expect("load connection");
        for id in 1..=rows {
            conn.query_drop(format!("INSERT INTO t.seq VALUES ({id}, 0)")).await.expect("insert");
        }
    });
    assert_eq!(gaps_seen_while_applying(&secondary, rows).await, 0, "every prefix of the primary's commits, in order");
    load.await.expect("load");
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "t").await;
    // (On a busy machine every group may hold several transactions and go to the writer whole; the views are
    // prefixes either way.)
    eprintln!("workers took transactions: {}", a.log_text().contains("worker=2"));
}

const FK_SCHEMA: &str = "
CREATE DATABASE f;
CREATE TABLE f.parent (id INT PRIMARY KEY, n INT NOT NULL);
CREATE TABLE f.child (id INT PRIMARY KEY, p INT, n INT NOT NULL, KEY (p),
  FOREIGN KEY (p) REFERENCES f.parent (id) ON DELETE CASCADE ON UPDATE CASCADE);
CREATE TABLE f.pin (id INT PRIMARY KEY, p INT NOT NULL, FOREIGN KEY (p) REFERENCES f.parent (id));
CREATE TABLE f.tag (name VARCHAR(10) PRIMARY KEY, n INT NOT NULL);
CREATE TABLE f.tagged (id INT PRIMARY KEY, tag VARCHAR(10),
  FOREIGN KEY (tag) REFERENCES f.tag (name) ON DELETE CASCADE ON UPDATE CASCADE);
CREATE TABLE f.acct (id INT PRIMARY KEY, code INT NOT NULL, UNIQUE KEY (code));
CREATE TABLE f.ref (id INT PRIMARY KEY, code INT,
  FOREIGN KEY (code) REFERENCES f.acct (code) ON DELETE CASCADE ON UPDATE CASCADE);
CREATE TABLE f.top (id INT PRIMARY KEY);
CREATE TABLE f.mid (id INT PRIMARY KEY, t INT, FOREIGN KEY (t) REFERENCES f.top (id) ON DELETE CASCADE);
CREATE TABLE f.low (id INT PRIMARY KEY, m INT, n INT NOT NULL DEFAULT 0,
  FOREIGN KEY (m) REFERENCES f.mid (id) ON DELETE CASCADE);
CREATE TABLE f.snp (id INT PRIMARY KEY);
CREATE TABLE f.sn (id INT PRIMARY KEY, p INT, n INT NOT NULL DEFAULT 0,
  FOREIGN KEY (p) REFERENCES f.snp (id) ON DELETE SET NULL);
";

/// `txns` transactions of two random operations each on the tables of [`FK_SCHEMA`]: parents inserted, deleted
/// and given new keys (cascading below the binlog), children moved between parents and updated, a restricting
/// reference, a parent keyed by a string, a parent referenced by a unique key, a two-level cascade and a SET
/// NULL rule. Statements a foreign key
/// refuses on the primary roll their transaction back there: nothing to replicate. With `one_level`, only the
/// tables whose rules reach one level (operations 0 to 8).
async fn fk_load(opts: mysql_async::OptsBuilder, client: u64, txns: u64, one_level: bool) {
    let mut conn = mysql_async::Conn::new(opts).await.expect("load connection");
    let mut x = 0x9E37_79B9_7F4A_7C15u64.wrapping_add(client * 7919);
    let mut next = move |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    for _ in 0..txns {
        let mut sql = String::from("START TRANSACTION;");
        for _ in 0..2 {
            let (a, b, c) = (next(40), next(40), next(200));
            sql.push_str(&match next(if one_level { 9 } else { 12 }) {
                0 | 1 => format!("INSERT IGNORE INTO f.parent VALUES ({a}, 0);"),
                2 => format!("DELETE FROM f.parent WHERE id = {a};"),
                3 => format!("UPDATE f.parent SET id = {b}, n = n + 1 WHERE id = {a};"),
                4 | 5 => {
                    format!("INSERT INTO f.child VALUES ({c}, {a}, 0) ON DUPLICATE KEY UPDATE p = {a}, n = n + 1;")
                }
                6 => format!("UPDATE f.child SET n = n + 1 WHERE p = {a};"),
                7 => match next(2) {
                    0 => format!("INSERT INTO f.pin VALUES ({c}, {a}) ON DUPLICATE KEY UPDATE p = {a};"),
                    _ => format!("DELETE FROM f.pin WHERE id = {c};"),
                },
                8 => match next(6) {
                    0 => format!("INSERT INTO f.tag VALUES ('t{a}', 0) ON DUPLICATE KEY UPDATE n = n + 1;"),
                    1 => format!("DELETE FROM f.tag WHERE name = 't{a}';"),
                    2 => format!("INSERT INTO f.tagged VALUES ({c}, 't{a}') ON DUPLICATE KEY UPDATE tag = 't{a}';"),
                    // A parent referenced by a unique key that moves (cascading to its children).
                    3 => format!("INSERT INTO f.acct VALUES ({a}, {b}) ON DUPLICATE KEY UPDATE code = {b};"),
                    4 => format!("DELETE FROM f.acct WHERE id = {a};"),
                    _ => format!("INSERT INTO f.ref VALUES ({c}, {b}) ON DUPLICATE KEY UPDATE code = {b};"),
                },
                9 => match next(4) {
                    0 => format!("INSERT IGNORE INTO f.top VALUES ({a});"),
                    1 => format!("DELETE FROM f.top WHERE id = {a};"),
                    2 => format!("INSERT INTO f.mid VALUES ({b}, {a}) ON DUPLICATE KEY UPDATE t = {a};"),
                    _ => format!("INSERT INTO f.low VALUES ({c}, {b}, 0) ON DUPLICATE KEY UPDATE m = {b}, n = n + 1;"),
                },
                10 => match next(3) {
                    0 => format!("INSERT IGNORE INTO f.snp VALUES ({a});"),
                    1 => format!("DELETE FROM f.snp WHERE id = {a};"),
                    _ => format!("INSERT INTO f.sn VALUES ({c}, {a}, 0) ON DUPLICATE KEY UPDATE p = {a}, n = n + 1;"),
                },
                _ => format!("UPDATE f.sn SET n = n + 1 WHERE id = {c};"),
            });
        }
        sql.push_str("COMMIT;");
        let _ = conn.query_drop(sql).await;
        let _ = conn.query_drop("ROLLBACK").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_in_foreign_keys_go_to_workers_with_their_parents_keys_and_cascades_end_as_on_the_primary() {
    let (primary, reader, secondary) = pipeline().await;
    primary.exec(FK_SCHEMA).await;
    let metrics = tests::free_port();
    let mut settings = parallel("4");
    settings.push(("REPLICA_METRICS_ADDR", format!("127.0.0.1:{metrics}")));
    let mut a = Applier::start(&reader, &secondary, "fk", &env(&settings));

    // Tables whose rules reach one level go to workers, with the keys of the parents their rows reference.
    let loads: Vec<_> = (0..3).map(|c| tokio::spawn(fk_load(primary.root_opts(), c, 400, true))).collect();
    for l in loads {
        l.await.expect("load");
    }
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "f").await;
    let planned = |to: &str| {
        let m = tests::scrape(metrics);
        m.lines()
            .find(|l| l.starts_with(&format!("replica_applier_planned_transactions_total{{to=\"{to}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(planned("worker") > 100, "workers took transactions:\n{}", tests::scrape(metrics));

    // Every table, the two-level cascade and SET NULL (applied by the writer alone) too, with kills.
    let loads: Vec<_> = (3..6).map(|c| tokio::spawn(fk_load(primary.root_opts(), c, 800, false))).collect();
    for kill in 0..4u64 {
        tokio::time::sleep(Duration::from_millis(1_000 + kill * 377)).await;
        a.kill9();
        a.spawn();
    }
    for l in loads {
        l.await.expect("load");
    }
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "f").await;
    let rows: Vec<(u64, u64, u64)> = primary
        .query("SELECT (SELECT COUNT(*) FROM f.child), (SELECT COUNT(*) FROM f.low), (SELECT COUNT(*) FROM f.sn)")
        .await;
    assert!(rows[0].0 > 0 && rows[0].1 > 0 && rows[0].2 > 0, "the load left rows to compare: {rows:?}");
    let log = a.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
