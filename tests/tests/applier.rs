//! replica-applier against real servers: a primary, the reader, and real secondaries.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tests::{applied, assert_same_data, caught_up, journaled, pt_table_sync, scrape, Applier, MariaDb, Reader, Role};

const WAIT: Duration = Duration::from_secs(30);

/// A reader on a fresh primary and `n` empty secondaries.
async fn pipeline(n: usize) -> (MariaDb, Reader, Vec<MariaDb>) {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let mut secondaries = Vec::new();
    for i in 0..n {
        secondaries.push(MariaDb::start_with(Role::Secondary, 10 + i as u32, &[]).await);
    }
    (primary, reader, secondaries)
}

const MIXED_SCHEMA: &str = "
CREATE DATABASE mix;
CREATE TABLE mix.orders (id INT PRIMARY KEY AUTO_INCREMENT, customer VARCHAR(40), total DECIMAL(12,2), note TEXT);
CREATE TABLE mix.lines (order_id INT, line INT, sku VARCHAR(20), qty INT, PRIMARY KEY (order_id, line));
CREATE TABLE mix.log (at DATETIME(6), msg VARCHAR(100), n INT);
CREATE TABLE mix.all_types (
    id INT PRIMARY KEY, ti TINYINT, tiu TINYINT UNSIGNED, mi MEDIUMINT, miu MEDIUMINT UNSIGNED, bi BIGINT,
    biu BIGINT UNSIGNED, de DECIMAL(65,30), f FLOAT, d DOUBLE, b1 BIT(1), b64 BIT(64), c CHAR(10), vc VARCHAR(100),
    l1 VARCHAR(50) CHARACTER SET latin1, bin BINARY(16), vb VARBINARY(20), bl BLOB, lt LONGTEXT, e ENUM('a','b','ü'),
    s SET('x','y','z'), dt DATE, tm TIME(6), dtt DATETIME(6), ts TIMESTAMP(6) NULL, y YEAR, j JSON, g GEOMETRY,
    u UUID, ip6 INET6
) DEFAULT CHARSET=utf8mb4;";

const MIXED_LOAD: &str = "
SET SESSION sql_mode = '';
INSERT INTO mix.orders (customer, total, note) VALUES ('ann', 10.50, 'first'), ('bob', 99.99, NULL), ('cy', 0, '');
INSERT INTO mix.lines VALUES (1, 1, 'A-1', 2), (1, 2, 'B-7', 1), (2, 1, 'A-1', 10);
INSERT INTO mix.log VALUES ('2024-01-01 00:00:00', 'dup', 1), ('2024-01-01 00:00:00', 'dup', 1), (NULL, NULL, NULL);
BEGIN;
  UPDATE mix.orders SET total = total + 1 WHERE id = 1;
  INSERT INTO mix.lines VALUES (3, 1, 'C-3', 5);
  DELETE FROM mix.lines WHERE order_id = 1 AND line = 2;
  UPDATE mix.log SET n = 2 WHERE msg = 'dup' LIMIT 1;
COMMIT;
INSERT INTO mix.all_types VALUES
 (1, -128, 0, -8388608, 0, -9223372036854775808, 0, '-99999999999999999999999999999999999.999999999999999999999999999999',
  -3.40282e38, -1.7976931348623157e308, b'0', b'0', 'a', '', 'é', 0x00, '', '', '', 'a', '', '0000-00-00',
  '-838:59:59.000000', '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', 0, '[]', ST_GeomFromText('POINT(0 0)'),
  '00000000-0000-0000-0000-000000000000', '::'),
 (2, 127, 255, 8388607, 16777215, 9223372036854775807, 18446744073709551615,
  '99999999999999999999999999999999999.999999999999999999999999999999', 3.40282e38, 1.7976931348623157e308, b'1',
  0xFFFFFFFFFFFFFFFF, '😀ab', CONCAT(REPEAT('x', 50), '😀'), 'ÿ€Œ', 0x01020300000000000000000000000000, 0x00ff00,
  REPEAT(0x00ff, 5000), REPEAT('ü😀', 10000), 'ü', 'x,y,z', '9999-12-31', '838:59:59.999999',
  '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', 2155, '{\"k\": [1, 2.5, null]}',
  ST_GeomFromText('LINESTRING(0 0, 1.5 2.25)'), '123e4567-e89b-12d3-a456-426614174000', '2001:db8::ff00:42:8300'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
UPDATE mix.all_types SET mi = -1, ts = '2000-01-01 00:00:00.5', e = 'ü', y = 0 WHERE id = 3;
DELETE FROM mix.all_types WHERE id = 1;
ALTER TABLE mix.orders ADD COLUMN status ENUM('new','paid') NOT NULL DEFAULT 'new';
INSERT INTO mix.orders (customer, total, note, status) VALUES ('dee', 5, 'after ddl', 'paid');
UPDATE mix.orders SET status = 'paid' WHERE id IN (1, 2);
DELETE FROM mix.log WHERE n IS NULL;
INSERT INTO mix.log SELECT NOW(6), CONCAT('bulk ', seq), seq FROM mix.seq_1_to_500;
UPDATE mix.lines SET qty = qty * 2;
CREATE TABLE mix.later (id INT PRIMARY KEY, v VARCHAR(10));
INSERT INTO mix.later VALUES (1, 'x'), (2, 'y');
RENAME TABLE mix.later TO mix.renamed;
UPDATE mix.renamed SET v = 'z' WHERE id = 2;
";

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_workload_leaves_both_secondaries_identical_to_the_primary() {
    let (primary, reader, secondaries) = pipeline(2).await;
    let a = Applier::start(&reader, &secondaries[0], "east", &[("REPLICA_START_OFFSET", "1")]);
    let b =
        Applier::start(&reader, &secondaries[1], "west", &[("REPLICA_START_OFFSET", "1"), ("REPLICA_BATCH_ROWS", "7")]);
    primary.exec(MIXED_SCHEMA).await;
    primary.exec(MIXED_LOAD).await;
    for (secondary, applier) in secondaries.iter().zip([&a, &b]) {
        caught_up(&primary, &reader, secondary, applier).await;
        assert_same_data(&primary, secondary, "mix").await;
        let diff = pt_table_sync(&primary, secondary, "mix");
        assert!(diff.is_empty(), "pt-table-sync found differences on {}:\n{diff}", applier.name);
    }
    assert!(!a.log_text().contains("ERROR") && !b.log_text().contains("ERROR"), "{}{}", a.log_text(), b.log_text());
    // The comparison can see a difference: damage one row by hand.
    secondaries[1].exec("SET SESSION sql_log_bin = 0; UPDATE mix.lines SET qty = 999 WHERE order_id = 3").await;
    let diff = pt_table_sync(&primary, &secondaries[1], "mix");
    assert!(diff.contains("qty"), "pt-table-sync reports the damaged row: {diff}");
}

/// Inserts `txns` transactions of `per` rows into `schema.table` (columns a INT, b VARCHAR), with repeats.
async fn load_rows(opts: mysql_async::OptsBuilder, table: &str, first: u64, txns: u64, per: u64) {
    let mut conn = mysql_async::Conn::new(opts).await.expect("load connection");
    for t in 0..txns {
        let values: Vec<String> =
            (0..per).map(|i| format!("({}, 'v{}')", (first + t * per + i) % 1000, i % 3)).collect();
        conn.query_drop(format!("INSERT INTO {table} VALUES {}", values.join(","))).await.expect("load insert");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_the_applier_repeats_and_loses_nothing_on_a_table_without_a_key() {
    let (primary, reader, secondaries) = pipeline(1).await;
    let secondary = &secondaries[0];
    let mut a =
        Applier::start(&reader, secondary, "crashy", &[("REPLICA_START_OFFSET", "1"), ("REPLICA_BATCH_ROWS", "50")]);
    primary.exec("CREATE DATABASE k; CREATE TABLE k.nokey (a INT, b VARCHAR(20))").await;
    let load = tokio::spawn(load_rows(primary.root_opts(), "k.nokey", 0, 3_000, 5));
    let mut kills = 0;
    while kills < 10 {
        tokio::time::sleep(Duration::from_millis(150 + (kills * 37) % 200)).await;
        a.kill9();
        a.spawn();
        kills += 1;
    }
    load.await.expect("load");
    primary.exec("DELETE FROM k.nokey WHERE a < 100 LIMIT 200; UPDATE k.nokey SET b = 'u' WHERE a = 500 LIMIT 3").await;
    caught_up(&primary, &reader, secondary, &a).await;
    let rows: Vec<u64> = secondary.query("SELECT COUNT(*) FROM k.nokey").await;
    assert_eq!(rows[0], 15_000 - 200, "every row once: a repeated insert would show as an extra duplicate");
    assert_same_data(&primary, secondary, "k").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_table_stops_the_applier_or_is_quarantined_with_skip_failing_tables() {
    let (primary, reader, secondaries) = pipeline(1).await;
    let secondary = &secondaries[0];
    let mut a = Applier::start(&reader, secondary, "s1", &[("REPLICA_START_OFFSET", "1")]);
    primary
        .exec("CREATE DATABASE p; CREATE TABLE p.good (id INT PRIMARY KEY); CREATE TABLE p.bad (id INT PRIMARY KEY)")
        .await;
    primary.exec("INSERT INTO p.good VALUES (1); INSERT INTO p.bad VALUES (1)").await;
    caught_up(&primary, &reader, secondary, &a).await;
    secondary.exec("DROP TABLE p.bad").await;
    primary.exec("INSERT INTO p.bad VALUES (2)").await;
    let failed_at = journaled(&primary, &reader).await;
    let status = a.wait_exit(WAIT).unwrap_or_else(|| panic!("the applier stops:\n{}", a.log_text()));
    assert!(!status.success(), "a permanent error is a failure exit");
    let log = a.log_text();
    for part in [
        &format!("permanent error at journal offset {failed_at} on p.bad"),
        "statement: INSERT INTO `p`.`bad`",
        "doesn't exist",
    ] {
        assert!(log.contains(part), "the message names {part:?}:\n{log}");
    }

    let a = Applier::start(
        &reader,
        secondary,
        "s1",
        &[("REPLICA_SKIP_FAILING_TABLES", "true"), ("REPLICA_MAX_TABLE_FAILURES", "2")],
    );
    primary.exec("INSERT INTO p.good VALUES (2), (3); INSERT INTO p.bad VALUES (3)").await;
    caught_up(&primary, &reader, secondary, &a).await;
    let good: Vec<i32> = secondary.query("SELECT id FROM p.good ORDER BY id").await;
    assert_eq!(good, vec![1, 2, 3], "the other tables keep flowing");
    let q: Vec<(String, String, u64)> =
        secondary.query("SELECT schema_name, table_name, since_offset FROM replica_meta.quarantine").await;
    assert_eq!(q, vec![("p".to_owned(), "bad".to_owned(), failed_at)], "the quarantine is recorded");
    assert!(a.log_text().contains("table quarantined"), "and logged:\n{}", a.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_lock_on_the_secondary_makes_the_applier_wait_and_retry() {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &["--innodb-lock-wait-timeout=1"]).await;
    let a = Applier::start(&reader, &secondary, "waiter", &[("REPLICA_START_OFFSET", "1")]);
    primary
        .exec("CREATE DATABASE r; CREATE TABLE r.t (id INT PRIMARY KEY, v INT); INSERT INTO r.t VALUES (1, 1)")
        .await;
    caught_up(&primary, &reader, &secondary, &a).await;
    let mut locker = secondary.conn().await;
    locker.query_drop("BEGIN").await.expect("begin");
    locker.query_drop("SELECT * FROM r.t WHERE id = 1 FOR UPDATE").await.expect("lock the row");
    primary.exec("UPDATE r.t SET v = 2 WHERE id = 1").await;
    let deadline = std::time::Instant::now() + WAIT;
    while !a.log_text().contains("transient error; retrying") {
        assert!(std::time::Instant::now() < deadline, "the lock wait is retried:\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v: Vec<i32> = secondary.query("SELECT v FROM r.t").await;
    assert_eq!(v, vec![1], "nothing applied while the row is locked");
    locker.query_drop("ROLLBACK").await.expect("release");
    caught_up(&primary, &reader, &secondary, &a).await;
    let v: Vec<i32> = secondary.query("SELECT v FROM r.t").await;
    assert_eq!(v, vec![2], "applied once the lock is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_applier_replays_what_it_missed_while_the_other_stays_current() {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[("REPLICA_RETENTION", "0s")]).await;
    let s_a = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let s_b = MariaDb::start_with(Role::Secondary, 11, &[]).await;
    let mut a = Applier::start(&reader, &s_a, "a", &[("REPLICA_START_OFFSET", "1")]);
    let b = Applier::start(&reader, &s_b, "b", &[("REPLICA_START_OFFSET", "1")]);
    primary.exec("CREATE DATABASE ind; CREATE TABLE ind.t (id BIGINT PRIMARY KEY, v VARCHAR(20))").await;
    caught_up(&primary, &reader, &s_a, &a).await;
    caught_up(&primary, &reader, &s_b, &b).await;
    assert_eq!(a.terminate().and_then(|s| s.code()), Some(0), "SIGTERM stops the applier cleanly");
    let a_acked = applied(&s_a, "a").await;

    let load = tokio::spawn({
        let opts = primary.root_opts();
        async move {
            let mut c = mysql_async::Conn::new(opts).await.expect("conn");
            for t in 0..1_000u64 {
                let values: Vec<String> = (0..100).map(|i| format!("({}, 'x')", t * 100 + i)).collect();
                c.query_drop(format!("INSERT INTO ind.t VALUES {}", values.join(","))).await.expect("insert");
                // Paced, so that the load lasts a few seconds however fast the machine: B is watched meanwhile.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    });
    let mut lags = Vec::new();
    let mut b_progress = Vec::new();
    while !load.is_finished() {
        let info = reader.info().await;
        let lag = info.consumers.iter().find(|c| c.name == "a").map(|c| c.lag_records).unwrap_or(0);
        lags.push(lag);
        b_progress.push(applied(&s_b, "b").await);
        assert!(info.first_offset <= a_acked + 1, "the journal keeps what the stopped applier has not acked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load.await.expect("load");
    assert!(lags.windows(2).any(|w| w[1] > w[0]), "A's lag grows while it is down: {lags:?}");
    // Not blocked by A: B's checkpoint moves on again and again while A is down (it applies in groups, so
    // not at every look).
    assert!(b_progress.windows(2).filter(|w| w[1] > w[0]).count() >= 3, "B keeps applying: {b_progress:?}");
    caught_up(&primary, &reader, &s_b, &b).await;
    assert!(reader.info().await.first_offset <= a_acked + 1, "still held for A after B acked everything");

    a.spawn();
    caught_up(&primary, &reader, &s_a, &a).await;
    for s in [&s_a, &s_b] {
        let n: Vec<u64> = s.query("SELECT COUNT(*) FROM ind.t").await;
        assert_eq!(n, vec![100_000]);
        assert_same_data(&primary, s, "ind").await;
    }
    let head = reader.info().await.last_offset;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let info = reader.info().await;
        let lag = info.consumers.iter().find(|c| c.name == "a").map(|c| c.lag_records).unwrap_or(u64::MAX);
        if lag == 0 && info.first_offset > head.min(a_acked + 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "A's lag shrinks to 0 and the journal head advances: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reader_and_secondary_restarts_during_a_load_converge_exactly() {
    let primary = MariaDb::start(Role::Primary).await;
    let mut reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let mut secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let a = Applier::start(&reader, &secondary, "r", &[("REPLICA_START_OFFSET", "1")]);
    primary.exec("CREATE DATABASE rr; CREATE TABLE rr.nokey (a INT, b VARCHAR(20))").await;
    let load = tokio::spawn(load_rows(primary.root_opts(), "rr.nokey", 0, 2_000, 5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.kill9();
    reader.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    secondary.restart().await;
    load.await.expect("load");
    caught_up(&primary, &reader, &secondary, &a).await;
    let n: Vec<u64> = secondary.query("SELECT COUNT(*) FROM rr.nokey").await;
    assert_eq!(n, vec![10_000]);
    assert_same_data(&primary, &secondary, "rr").await;
    assert!(a.log_text().contains("resubscribing") || a.log_text().contains("retrying"), "{}", a.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_drift_stops_the_applier_showing_both_column_lists() {
    let (primary, reader, secondaries) = pipeline(1).await;
    let secondary = &secondaries[0];
    let mut a = Applier::start(&reader, secondary, "drift", &[("REPLICA_START_OFFSET", "1")]);
    primary
        .exec("CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY, v INT); INSERT INTO d.t VALUES (1, 1)")
        .await;
    caught_up(&primary, &reader, secondary, &a).await;
    assert_eq!(a.terminate().and_then(|s| s.code()), Some(0));
    secondary.exec("ALTER TABLE d.t ADD COLUMN extra VARCHAR(5)").await;
    a.spawn();
    primary.exec("INSERT INTO d.t VALUES (2, 2)").await;
    let status = a.wait_exit(WAIT).unwrap_or_else(|| panic!("the applier stops:\n{}", a.log_text()));
    assert!(!status.success());
    let log = a.log_text();
    assert!(
        log.contains("schema drift on d.t: the primary logged (id int, v int) but the secondary has (id int(11), v int(11), extra varchar(5))"),
        "{log}"
    );
    let n: Vec<u64> = secondary.query("SELECT COUNT(*) FROM d.t").await;
    assert_eq!(n, vec![1], "nothing applied past the drift");
}

#[tokio::test(flavor = "multi_thread")]
async fn both_processes_serve_prometheus_metrics_of_the_pipeline() {
    let primary = MariaDb::start(Role::Primary).await;
    let (reader_port, applier_port) = (tests::free_port(), tests::free_port());
    let reader_addr = format!("127.0.0.1:{reader_port}");
    let reader =
        Reader::start(&primary, &primary.dir.path().join("journal"), &[("REPLICA_METRICS_ADDR", &reader_addr)]).await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let applier_addr = format!("127.0.0.1:{applier_port}");
    let a = Applier::start(
        &reader,
        &secondary,
        "m",
        &[("REPLICA_START_OFFSET", "1"), ("REPLICA_METRICS_ADDR", &applier_addr)],
    );
    primary.exec("CREATE DATABASE m; CREATE TABLE m.t (id INT PRIMARY KEY, v INT); INSERT INTO m.t VALUES (1,1),(2,2),(3,3); UPDATE m.t SET v = 9 WHERE id = 2").await;
    caught_up(&primary, &reader, &secondary, &a).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the reader refreshes its gauges every second
    let r = scrape(reader_port);
    for line in [
        "replica_journal_last_offset 4",
        "replica_primary_connected 1",
        "replica_consumer_acked_offset{consumer=\"m\"} 4",
        "replica_consumer_lag_records{consumer=\"m\"} 0",
        "replica_consumer_lag_seconds{consumer=\"m\"} 0",
        "replica_journal_rows_total 4",
        "replica_journal_transactions_total 4",
        "replica_reader_standby 0",
        "replica_journal_store{store=\"",
        "replica_journal_replicas 1",
        "replica_journal_replicas_current 1",
    ] {
        assert!(r.contains(line), "reader metrics have {line:?}:\n{r}");
    }
    let m = scrape(applier_port);
    for line in [
        "replica_applier_applied_offset 4",
        "replica_applier_rows_total{kind=\"insert\",schema=\"m\",table=\"t\"} 3",
        "replica_applier_rows_total{kind=\"update\",schema=\"m\",table=\"t\"} 1",
        "replica_applier_quarantined_tables 0",
        "replica_applier_lag_seconds ",
    ] {
        assert!(m.contains(line), "applier metrics have {line:?}:\n{m}");
    }
}

fn health(addr: &str) -> String {
    tests::run_grpcurl(&["-plaintext", addr, "grpc.health.v1.Health/Check"])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_pipeline_reports_not_serving_and_recovers() {
    let (primary, reader, secondaries) = pipeline(1).await;
    let admin = format!("127.0.0.1:{}", tests::free_port());
    let metrics = tests::free_port();
    let a = Applier::start(
        &reader,
        &secondaries[0],
        "stuck",
        &[
            ("REPLICA_START_OFFSET", "1"),
            ("REPLICA_ADMIN_ADDR", &admin),
            ("REPLICA_STALL_TIMEOUT", "2s"),
            ("REPLICA_METRICS_ADDR", &format!("127.0.0.1:{metrics}")),
        ],
    );
    let gauge = |name: &str| -> f64 {
        let text = tests::scrape(metrics);
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}:\n{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
    };
    primary.exec("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, v INT)").await;
    caught_up(&primary, &reader, &secondaries[0], &a).await;
    assert!(health(&admin).contains("\"SERVING\""), "{}", health(&admin));
    // Something on the secondary holds the table: records wait, nothing is applied.
    let mut blocker = secondaries[0].conn().await;
    blocker.query_drop("LOCK TABLES s.t WRITE").await.expect("lock");
    primary.exec("INSERT INTO s.t VALUES (1, 1)").await;
    tests::eventually(WAIT, "health turns NOT_SERVING", || async {
        health(&admin).contains("NOT_SERVING").then_some(())
    })
    .await;
    assert!(a.log_text().contains("pipeline stalled"), "the stall is logged as an error:\n{}", a.log_text());
    // How far behind grows while nothing is applied; the last applied transaction's lag cannot show it. (The
    // stall is declared 2 s after the last *applied* change, which may be long before the blocked one arrived,
    // so `behind` may still be small here: what matters is that it grows.)
    let (behind, lag) = (gauge("replica_applier_behind_seconds"), gauge("replica_applier_lag_seconds"));
    tests::eventually(WAIT, "behind_seconds to keep growing", || async {
        (gauge("replica_applier_behind_seconds") >= behind + 1.0).then_some(())
    })
    .await;
    assert_eq!(gauge("replica_applier_lag_seconds"), lag, "the per-transaction lag stays flat while stalled");
    blocker.query_drop("UNLOCK TABLES").await.expect("unlock");
    tests::eventually(WAIT, "health is SERVING again", || async {
        health(&admin).contains("\"SERVING\"").then_some(())
    })
    .await;
    caught_up(&primary, &reader, &secondaries[0], &a).await;
    tests::eventually(WAIT, "behind_seconds back to 0", || async {
        (gauge("replica_applier_behind_seconds") == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_the_applier_and_the_reader_and_both_exit_zero() {
    let (primary, mut reader, secondaries) = pipeline(1).await;
    let secondary = &secondaries[0];
    let mut a = Applier::start(&reader, secondary, "drain", &[("REPLICA_START_OFFSET", "1")]);
    primary.exec("CREATE DATABASE d; CREATE TABLE d.t (a INT, b VARCHAR(20))").await;
    let load = tokio::spawn(load_rows(primary.root_opts(), "d.t", 0, 600, 5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = std::time::Instant::now();
    let status = a.terminate().unwrap_or_else(|| panic!("the applier exits by itself:\n{}", a.log_text()));
    assert!(status.success() && t.elapsed() < Duration::from_secs(10), "{status:?} after {:?}", t.elapsed());
    // Its final ack is exactly what it committed.
    let committed = applied(secondary, "drain").await;
    let acked = reader.info().await.consumers.into_iter().find(|c| c.name == "drain").map(|c| c.acked_offset);
    assert_eq!(acked, Some(committed), "final ack = checkpoint:\n{}", a.log_text());
    let t = std::time::Instant::now();
    let status = reader.terminate().unwrap_or_else(|| panic!("the reader exits by itself:\n{}", reader.log_text()));
    assert!(status.success() && t.elapsed() < Duration::from_secs(10), "{status:?} after {:?}", t.elapsed());
    load.await.expect("load");
    reader.restart().await;
    a.spawn();
    caught_up(&primary, &reader, secondary, &a).await;
    assert_same_data(&primary, secondary, "d").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_applier_started_while_its_secondary_is_down_waits_for_it_instead_of_exiting() {
    let (primary, reader, mut secondaries) = pipeline(1).await;
    primary
        .exec("CREATE DATABASE w; CREATE TABLE w.t (id INT PRIMARY KEY, v INT); INSERT INTO w.t VALUES (1, 1)")
        .await;
    secondaries[0].stop();
    let admin = format!("127.0.0.1:{}", tests::free_port());
    let metrics = tests::free_port();
    let env = [
        ("REPLICA_START_OFFSET", "1"),
        ("REPLICA_ADMIN_ADDR", admin.as_str()),
        ("REPLICA_METRICS_ADDR", &format!("127.0.0.1:{metrics}")),
    ];
    let mut a = Applier::start(&reader, &secondaries[0], "w", &env);
    let waiting = |a: &Applier| a.log_text().matches("the secondary is not available yet").count();
    tests::eventually(WAIT, "the applier to retry the secondary", || async { (waiting(&a) >= 2).then_some(()) }).await;
    // While it waits, its health answers NOT_SERVING and its metrics are served.
    assert!(health(&admin).contains("NOT_SERVING"), "{}", health(&admin));
    assert!(tests::scrape(metrics).contains("replica_applier_secondary_connected 0"), "{}", tests::scrape(metrics));
    let log = a.log_text();
    assert!(log.contains(&format!("127.0.0.1:{}", secondaries[0].port)), "the secondary is named:\n{log}");
    assert!(a.exited().is_none(), "a secondary that is down is not a reason to exit:\n{log}");
    // SIGTERM while waiting ends it cleanly.
    assert_eq!(a.terminate().and_then(|s| s.code()), Some(0), "{}", a.log_text());

    a.spawn();
    tests::eventually(WAIT, "the applier to retry again", || async { (waiting(&a) >= 3).then_some(()) }).await;
    primary.exec("INSERT INTO w.t VALUES (2, 2)").await;
    secondaries[0].restart().await;
    caught_up(&primary, &reader, &secondaries[0], &a).await;
    assert_same_data(&primary, &secondaries[0], "w").await;
    assert!(a.exited().is_none());
    tests::eventually(WAIT, "health to turn SERVING", || async {
        (!health(&admin).contains("NOT_SERVING")).then_some(())
    })
    .await;
    let m = tests::scrape(metrics);
    assert!(
        m.contains("replica_applier_secondary_connected 1") && m.contains("replica_applier_reader_connected 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_applier_started_while_the_reader_is_down_waits_and_then_copies() {
    let (primary, mut reader, secondaries) = pipeline(1).await;
    primary
        .exec("CREATE DATABASE r; CREATE TABLE r.t (id INT PRIMARY KEY, v INT); INSERT INTO r.t VALUES (1, 1), (2, 2)")
        .await;
    journaled(&primary, &reader).await;
    reader.kill9();
    let mut a = Applier::start(&reader, &secondaries[0], "r", &[]);
    let waiting = |a: &Applier| a.log_text().matches("cannot start the initial copy yet; retrying").count();
    tests::eventually(WAIT, "the applier to retry the reader", || async { (waiting(&a) >= 3).then_some(()) }).await;
    let log = a.log_text();
    assert!(log.contains(&format!("127.0.0.1:{}", reader.grpc_port)), "the reader is named:\n{log}");
    assert!(a.exited().is_none(), "a reader that is down is not a reason to exit:\n{log}");
    reader.restart().await;
    tests::copy_done(&secondaries[0], &a, &reader, WAIT).await;
    primary.exec("INSERT INTO r.t VALUES (3, 3)").await;
    caught_up(&primary, &reader, &secondaries[0], &a).await;
    assert_same_data(&primary, &secondaries[0], "r").await;
    assert!(a.exited().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_link_to_the_reader_is_noticed_by_keepalive_and_the_applier_catches_up() {
    let (primary, reader, secondaries) = pipeline(1).await;
    let proxy = tests::Proxy::start(reader.grpc_port).await;
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let a =
        Applier::start(&reader, &secondaries[0], "k", &[("REPLICA_START_OFFSET", "1"), ("REPLICA_READER_URL", &url)]);
    primary.exec("CREATE DATABASE k; CREATE TABLE k.t (id INT PRIMARY KEY); INSERT INTO k.t VALUES (1)").await;
    caught_up(&primary, &reader, &secondaries[0], &a).await;
    proxy.freeze();
    let silent = std::time::Instant::now();
    primary.exec("INSERT INTO k.t VALUES (2)").await;
    tests::eventually(WAIT, "the applier to notice the silent link", || async {
        a.log_text().contains("reader stream interrupted").then_some(())
    })
    .await;
    let noticed = silent.elapsed();
    eprintln!("silent link noticed after {noticed:?}");
    assert!(noticed < Duration::from_secs(15), "keepalive notices a silent link within 15 s: {noticed:?}");
    proxy.thaw();
    caught_up(&primary, &reader, &secondaries[0], &a).await;
    assert_same_data(&primary, &secondaries[0], "k").await;
}

/// Waits until applier `name` has committed the primary's last transaction (its checkpoint's source GTID).
async fn applied_through_last_write(primary: &MariaDb, name: &str, secondary: &MariaDb) {
    let end: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
    tests::eventually(WAIT, "the secondary to apply the primary's last write", || async {
        let mut c = secondary.conn().await;
        let gtid: Option<String> =
            c.exec_first("SELECT gtid FROM replica_meta.checkpoint WHERE consumer = ?", (name,)).await.ok().flatten();
        (gtid.as_deref() == Some(end[0].as_str())).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifteen_cuts_of_the_reader_link_and_of_the_secondary_link_are_each_recovered_quickly() {
    let (primary, reader, secondaries) = pipeline(2).await;
    let to_reader = tests::Proxy::start(reader.grpc_port).await;
    let to_secondary = tests::Proxy::start(secondaries[1].port).await;
    let url = format!("http://127.0.0.1:{}", to_reader.port);
    let port = to_secondary.port.to_string();
    // The documented default maximum wait: the recoveries must not depend on a short cap.
    let a = Applier::start(
        &reader,
        &secondaries[0],
        "ra",
        &[("REPLICA_START_OFFSET", "1"), ("REPLICA_READER_URL", &url), ("REPLICA_RETRY_MAX", "30s")],
    );
    let b = Applier::start(
        &reader,
        &secondaries[1],
        "sb",
        &[("REPLICA_START_OFFSET", "1"), ("MARIA_SECONDARY_PORT", &port), ("REPLICA_RETRY_MAX", "30s")],
    );
    primary
        .exec(
            "CREATE DATABASE cuts; CREATE TABLE cuts.r (id INT PRIMARY KEY); CREATE TABLE cuts.s (id INT PRIMARY KEY)",
        )
        .await;
    caught_up(&primary, &reader, &secondaries[0], &a).await;
    caught_up(&primary, &reader, &secondaries[1], &b).await;

    let (primary, secondaries) = (&primary, &secondaries);
    let reader_link = tests::recoveries_after_cuts(&to_reader, 15, |i| async move {
        primary.exec(&format!("INSERT INTO cuts.r VALUES ({i})")).await;
        applied_through_last_write(primary, "ra", &secondaries[0]).await;
    })
    .await;
    eprintln!("applier-reader link, recovery after each cut, sorted: {reader_link:?}");
    let secondary_link = tests::recoveries_after_cuts(&to_secondary, 15, |i| async move {
        primary.exec(&format!("INSERT INTO cuts.s VALUES ({i})")).await;
        applied_through_last_write(primary, "sb", &secondaries[1]).await;
    })
    .await;
    eprintln!("applier-secondary link, recovery after each cut, sorted: {secondary_link:?}");
    for (link, r) in [("reader", &reader_link), ("secondary", &secondary_link)] {
        assert!(r[7] < Duration::from_secs(2), "{link} link: median recovery {:?}: {r:?}", r[7]);
        assert!(r[14] < Duration::from_secs(5), "{link} link: slowest recovery: {r:?}");
    }
    caught_up(primary, &reader, &secondaries[0], &a).await;
    caught_up(primary, &reader, &secondaries[1], &b).await;
    for s in secondaries {
        assert_same_data(primary, s, "cuts").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_json_surface_answers_status_pauses_the_copy_and_resyncs_a_table_behind_the_token() {
    let (primary, reader, secondaries) = pipeline(1).await;
    let secondary = &secondaries[0];
    primary
        .exec("CREATE DATABASE h; CREATE TABLE h.t (id INT PRIMARY KEY, v INT); INSERT INTO h.t VALUES (1, 1)")
        .await;
    let port = tests::free_port();
    let env = [
        ("REPLICA_START_OFFSET", "1"),
        ("REPLICA_HTTP_ADDR", &format!("127.0.0.1:{port}")),
        ("REPLICA_AUTH_TOKEN", "http-token-1f2e"),
    ];
    let a = Applier::start(&reader, secondary, "h", &env);
    primary.exec("INSERT INTO h.t VALUES (2, 2)").await;
    caught_up(&primary, &reader, secondary, &a).await;
    let token = Some("http-token-1f2e");

    // Without the token (or with a wrong one): 401 and no data; health needs none.
    let (code, body) = tests::http(port, "GET", "/v1/status", None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("bearer token") && !body.contains("applied_offset"), "{body}");
    assert_eq!(tests::http(port, "GET", "/v1/status", Some("wrong")).0, 401);
    let (code, body) = tests::http(port, "GET", "/v1/health", None);
    assert_eq!((code, body.as_str()), (200, r#"{"serving":true}"#));

    let (code, body) = tests::http(port, "GET", "/v1/status", token);
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["consumer"], "h");
    assert_eq!(status["phase"], "streaming");
    assert_eq!(status["applied_offset"].as_u64(), Some(applied(secondary, "h").await));
    assert!(status["lag_seconds"].as_f64().is_some(), "{body}");

    let (code, body) = tests::http(port, "POST", "/v1/copy/pause", token);
    assert_eq!((code, body.as_str()), (200, r#"{"paused":true}"#));
    let (_, body) = tests::http(port, "GET", "/v1/status", token);
    assert!(body.contains(r#""copy_paused":true"#), "{body}");
    let (code, body) = tests::http(port, "POST", "/v1/copy/resume", token);
    assert_eq!((code, body.as_str()), (200, r#"{"paused":false}"#));

    // A damaged table is re-copied through HTTP.
    secondary.exec("DELETE FROM h.t WHERE id = 1").await;
    let (code, body) = tests::http(port, "POST", "/v1/tables/h/t/resync", token);
    assert_eq!(code, 200, "{body}");
    // The copy replaces the table, so for a moment it may not exist: an error here means "not yet".
    tests::eventually(WAIT, "the table to be re-copied", || async {
        let count: Option<u64> = secondary.conn().await.query_first("SELECT COUNT(*) FROM h.t").await.ok().flatten();
        (count == Some(2)).then_some(())
    })
    .await;
    assert_same_data(&primary, secondary, "h").await;
}
