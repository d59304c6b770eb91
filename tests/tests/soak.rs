//! Long fault injection (run with `tests/run.sh --long`, which sets REPLICA_LONG_TESTS=1): a mixed load on
//! keyed and keyless tables while the reader and both appliers are killed with -9, a secondary and the
//! primary are restarted, at pseudo-random moments; both secondaries must end identical to the primary.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tests::{Applier, MariaDb, Reader, Role};

fn long_tests() -> bool {
    std::env::var("REPLICA_LONG_TESTS").is_ok_and(|v| v == "1")
}

async fn rows(db: &MariaDb, sql: &str) -> Vec<Vec<mysql_async::Value>> {
    db.query::<mysql_async::Row>(sql).await.into_iter().map(|r| r.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn everything_killed_and_restarted_during_a_long_load_converges_exactly() {
    if !long_tests() {
        eprintln!("skipped: set REPLICA_LONG_TESTS=1 (tests/run.sh --long)");
        return;
    }
    let mut primary = MariaDb::start(Role::Primary).await;
    let mut reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let mut s1 = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let s2 = MariaDb::start_with(Role::Secondary, 11, &[]).await;
    let mut a1 = Applier::start(&reader, &s1, "one", &[("REPLICA_START_OFFSET", "1")]);
    let mut a2 = Applier::start(&reader, &s2, "two", &[("REPLICA_START_OFFSET", "1"), ("REPLICA_BATCH_ROWS", "100")]);
    primary
        .exec(
            "CREATE DATABASE soak; CREATE TABLE soak.k (id INT PRIMARY KEY, v INT, s VARCHAR(30));
             CREATE TABLE soak.n (a INT, b VARCHAR(10))",
        )
        .await;
    let seconds = std::env::var("REPLICA_SOAK_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(120u64);
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let load = {
        let opts = primary.root_opts();
        tokio::spawn(async move {
            let mut i: u64 = 0;
            let mut conn: Option<mysql_async::Conn> = None;
            while Instant::now() < stop_at {
                i += 1;
                if conn.is_none() {
                    conn = mysql_async::Conn::new(opts.clone()).await.ok();
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let id = (i * 7919) % 2000;
                let sql = format!(
                    "BEGIN; INSERT INTO soak.k VALUES ({id}, {i}, 'x{i}') ON DUPLICATE KEY UPDATE v = v + 1, s = 'u{i}';
                     INSERT INTO soak.n VALUES ({}, 'n{}'); DELETE FROM soak.k WHERE id = {}; COMMIT",
                    i % 50,
                    i % 7,
                    (id + 1000) % 2000
                );
                // A statement cut off by a primary restart may or may not have committed: both are fine,
                // the comparison is with the primary's final data.
                if c.query_drop(sql).await.is_err() {
                    conn = None;
                }
            }
        })
    };
    let mut step = 0u64;
    while Instant::now() < stop_at {
        step += 1;
        tokio::time::sleep(Duration::from_millis(700 + (step * 431) % 1500)).await;
        match step % 5 {
            0 => {
                reader.kill9();
                reader.restart().await;
            }
            1 => {
                a1.kill9();
                a1.spawn();
            }
            2 => {
                a2.kill9();
                a2.spawn();
            }
            3 => s1.restart().await,
            _ => primary.restart().await,
        }
    }
    load.await.expect("load");
    let end: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let info = reader.info().await;
        let at_end = info.source_position.map(|p| p.gtid).as_deref() == Some(end[0].as_str());
        let applied = |s: &MariaDb, name: &'static str| {
            let opts = s.root_opts();
            async move {
                let mut c = mysql_async::Conn::new(opts).await.ok()?;
                c.exec_first::<u64, _, _>(
                    "SELECT applied_offset FROM replica_meta.checkpoint WHERE consumer = ?",
                    (name,),
                )
                .await
                .ok()?
            }
        };
        if at_end
            && applied(&s1, "one").await == Some(info.last_offset)
            && applied(&s2, "two").await == Some(info.last_offset)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not converge:\n{}\n{}\n{}",
            reader.log_text(),
            a1.log_text(),
            a2.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for sql in ["SELECT * FROM soak.k ORDER BY id", "SELECT a, b, COUNT(*) FROM soak.n GROUP BY a, b ORDER BY a, b"] {
        let want = rows(&primary, sql).await;
        assert!(!want.is_empty());
        assert_eq!(rows(&s1, sql).await, want, "secondary one: {sql}");
        assert_eq!(rows(&s2, sql).await, want, "secondary two: {sql}");
    }
}
