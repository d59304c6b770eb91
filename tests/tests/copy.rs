//! The initial copy through the reader, against real servers: chunked, resumable, pausable, then streaming
//! with no gap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tests::{assert_same_data, caught_up, copy_done, pt_table_sync, Applier, MariaDb, Reader, Role};

const WAIT: Duration = Duration::from_secs(40);

const SCHEMA: &str = "
CREATE DATABASE shop;
CREATE TABLE shop.ints (id INT PRIMARY KEY, v INT, note VARCHAR(40));
CREATE TABLE shop.pairs (a INT, b BIGINT UNSIGNED, v VARCHAR(20), PRIMARY KEY (a, b));
CREATE TABLE shop.names (name VARCHAR(40) PRIMARY KEY, v INT) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;
CREATE TABLE shop.blobs (k VARBINARY(32) PRIMARY KEY, v INT);
CREATE TABLE shop.uniq (code CHAR(8) NOT NULL, v INT, UNIQUE KEY (code));
CREATE TABLE shop.heap (a INT, b VARCHAR(10));
CREATE TABLE shop.all_types (
    id INT PRIMARY KEY, ti TINYINT, tiu TINYINT UNSIGNED, mi MEDIUMINT, bi BIGINT, biu BIGINT UNSIGNED,
    de DECIMAL(65,30), f FLOAT, d DOUBLE, b64 BIT(64), c CHAR(10), l1 VARCHAR(50) CHARACTER SET latin1,
    bin BINARY(16), bl BLOB, lt LONGTEXT, e ENUM('a','b','ü'), s SET('x','y','z'), dt DATE, tm TIME(6),
    dtt DATETIME(6), ts TIMESTAMP(6) NULL, y YEAR, j JSON, g GEOMETRY, u UUID, ip6 INET6,
    gen INT AS (id * 2) VIRTUAL
) DEFAULT CHARSET=utf8mb4;
";

const POPULATE: &str = "
INSERT INTO shop.ints SELECT seq, seq % 97, CONCAT('row ', seq) FROM shop.seq_1_to_6000;
INSERT INTO shop.pairs SELECT seq % 50, seq, CONCAT('p', seq) FROM shop.seq_1_to_4000;
INSERT INTO shop.names SELECT CONCAT(IF(seq % 2, 'N', 'n'), LPAD(seq, 6, '0')), seq FROM shop.seq_1_to_3000;
INSERT INTO shop.blobs SELECT UNHEX(SHA2(seq, 256)), seq FROM shop.seq_1_to_3000;
INSERT INTO shop.uniq SELECT LPAD(seq, 8, 'u'), seq FROM shop.seq_1_to_2500;
INSERT INTO shop.heap SELECT seq % 10, 'dup' FROM shop.seq_1_to_1500;
INSERT INTO shop.all_types (id, ti, tiu, mi, bi, biu, de, f, d, b64, c, l1, bin, bl, lt, e, s, dt, tm, dtt, ts, y, j, g, u, ip6) VALUES
 (1, -128, 0, -8388608, -9223372036854775808, 0, '-99999999999999999999999999999999999.999999999999999999999999999999',
  -3.40282e38, -1.7976931348623157e308, b'0', 'a', 'é', 0x00, '', '', 'a', '', '0000-00-00',
  '-838:59:59.000000', '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', 0, '[]', ST_GeomFromText('POINT(0 0)'),
  '00000000-0000-0000-0000-000000000000', '::'),
 (2, 127, 255, 8388607, 9223372036854775807, 18446744073709551615,
  '99999999999999999999999999999999999.999999999999999999999999999999', 3.40282e38, 1.7976931348623157e308,
  0xFFFFFFFFFFFFFFFF, '😀ab', 'ÿ€Œ', 0x01020300000000000000000000000000, REPEAT(0x00ff, 5000), REPEAT('ü😀', 10000),
  'ü', 'x,y,z', '9999-12-31', '838:59:59.999999', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', 2155,
  '{\"k\": [1, 2.5, null]}', ST_GeomFromText('LINESTRING(0 0, 1.5 2.25)'), '123e4567-e89b-12d3-a456-426614174000',
  '2001:db8::ff00:42:8300'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL);
";

/// Writes to every keyed table of `shop` until `stop`: inserts, updates (keys too), deletes, in transactions.
async fn write_load(primary: mysql_async::OptsBuilder, stop: Arc<AtomicBool>) -> u64 {
    let mut conn = mysql_async::Conn::new(primary).await.expect("load connection");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let i = n % 6000 + 1;
        let batch = format!(
            "BEGIN;
             UPDATE shop.ints SET v = v + 1, note = 'upd {n}' WHERE id IN ({i}, {j}, {k});
             INSERT INTO shop.ints VALUES ({new}, 0, 'new') ON DUPLICATE KEY UPDATE v = v - 1;
             DELETE FROM shop.ints WHERE id = {d};
             UPDATE shop.ints SET id = {moved} WHERE id = {m};
             UPDATE shop.pairs SET v = 'upd {n}' WHERE a = {a} LIMIT 3;
             DELETE FROM shop.pairs WHERE a = {a} AND b = {b};
             INSERT IGNORE INTO shop.pairs VALUES ({a}, {b2}, 'ins');
             UPDATE shop.names SET v = v + 1 WHERE name = CONCAT(IF({i} % 2, 'N', 'n'), LPAD({i}, 6, '0'));
             INSERT IGNORE INTO shop.names VALUES (CONCAT('z', {n}), {n});
             DELETE FROM shop.blobs WHERE k = UNHEX(SHA2({i}, 256));
             UPDATE shop.blobs SET v = v * 2 WHERE k = UNHEX(SHA2({j}, 256));
             UPDATE shop.uniq SET v = v + 1 WHERE code = LPAD({i}, 8, 'u');
             DELETE FROM shop.uniq WHERE code = LPAD({j}, 8, 'u');
             INSERT IGNORE INTO shop.uniq VALUES (LPAD({n} + 100000, 8, 'u'), 1);
             UPDATE shop.all_types SET ti = {n} % 100 WHERE id = 3;
             COMMIT;",
            j = (n * 7) % 6000 + 1,
            k = (n * 13) % 6000 + 1,
            new = 100_000 + n,
            d = (n * 31) % 6000 + 1,
            m = (n * 17) % 6000 + 1,
            moved = 200_000 + n,
            a = n % 50,
            b = n * 3,
            b2 = 1_000_000 + n,
        );
        conn.query_drop(batch).await.expect("load transaction");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n
}

async fn populated_primary() -> (MariaDb, Reader) {
    let primary = MariaDb::start(Role::Primary).await;
    primary.exec(SCHEMA).await;
    primary.exec(POPULATE).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    (primary, reader)
}

/// The applier's copy state for one table: (state, rows copied, chunks).
async fn copy_state(secondary: &MariaDb, name: &str, table: &str) -> Option<(String, u64, u64)> {
    let mut c = secondary.conn().await;
    c.exec_first(
        "SELECT state, rows_copied, chunks FROM replica_meta.copy_state WHERE consumer = ? AND schema_name = 'shop' \
         AND table_name = ?",
        (name, table),
    )
    .await
    .ok()
    .flatten()
}

async fn assert_identical(primary: &MariaDb, reader: &Reader, secondary: &MariaDb, applier: &Applier) {
    // One more transaction, so that the reader has journaled something to catch up with.
    primary.exec("UPDATE shop.ints SET v = v + 1 WHERE id = 2").await;
    caught_up(primary, reader, secondary, applier).await;
    assert_same_data(primary, secondary, "shop").await;
    let diff = pt_table_sync(primary, secondary, "shop");
    assert!(diff.is_empty(), "pt-table-sync found differences:\n{diff}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_under_a_live_write_load_ends_identical_to_the_primary() {
    let (primary, reader) = populated_primary().await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(primary.root_opts(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a =
        Applier::start(&reader, &secondary, "fresh", &[("TRANSFER_BATCH_SIZE", "400"), ("REPLICA_COPY_WORKERS", "2")]);
    copy_done(&secondary, &a, &reader, WAIT).await;
    // Streaming goes on under the load for a while after the copy.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let transactions = load.await.expect("load task");
    assert!(transactions > 20, "the load ran during the whole copy ({transactions} transactions)");
    assert_identical(&primary, &reader, &secondary, &a).await;
    let (_, rows, chunks) = copy_state(&secondary, "fresh", "ints").await.expect("state");
    assert!(chunks >= 15 && rows >= 6000, "ints was copied in chunks of 400 ({rows} rows, {chunks} chunks)");
    let log = a.log_text();
    assert!(log.contains("copy finished"), "transfer statistics are logged:\n{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

/// Rows of every table's copy so far, from the applier's state on the secondary.
async fn rows_copied(secondary: &MariaDb, name: &str) -> u64 {
    let mut c = secondary.conn().await;
    c.exec_first::<u64, _, _>(
        "SELECT COALESCE(SUM(rows_copied), 0) FROM replica_meta.copy_state WHERE consumer = ?",
        (name,),
    )
    .await
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// Waits until `applier`'s copy has written at least `rows` rows.
async fn copied_at_least(secondary: &MariaDb, applier: &Applier, rows: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    while rows_copied(secondary, &applier.name).await < rows {
        assert!(std::time::Instant::now() < deadline, "the copy stalled before {rows} rows:\n{}", applier.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_applier_reader_or_secondary_during_a_copy_resumes_from_its_last_chunk() {
    let primary = MariaDb::start(Role::Primary).await;
    primary.exec(SCHEMA).await;
    primary.exec(POPULATE).await;
    let metrics_port = tests::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut reader =
        Reader::start(&primary, &primary.dir.path().join("journal"), &[("REPLICA_METRICS_ADDR", &metrics_addr)]).await;
    let mut secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(primary.root_opts(), stop.clone()));
    let env = [("TRANSFER_BATCH_SIZE", "250"), ("REPLICA_COPY_ROWS_PER_SECOND", "4000")];
    let mut a = Applier::start(&reader, &secondary, "crashy", &env);
    let total = 20_003u64;
    for fraction in [0.2, 0.4, 0.6] {
        copied_at_least(&secondary, &a, (fraction * total as f64) as u64).await;
        let before = rows_copied(&secondary, "crashy").await;
        a.kill9();
        a.spawn();
        // The restarted applier continues from its checkpoint: the rows already copied stay counted.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(rows_copied(&secondary, "crashy").await >= before, "the copy state survived kill -9");
        assert!(a.log_text().contains("resuming the copy of a table from its last chunk"), "{}", a.log_text());
    }
    // The reader too, and the secondary, once each.
    reader.kill9();
    reader.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    secondary.restart().await;
    copy_done(&secondary, &a, &reader, WAIT).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    assert_identical(&primary, &reader, &secondary, &a).await;
    // Chunks already copied are not read again: after its restart (its counter restarted with it) the reader
    // served only what was left, not the whole tables again.
    let served = metric(&tests::scrape(metrics_port), "replica_copy_rows_total");
    assert!(served < total, "after its restart the reader served {served} rows, not the whole {total} again");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_stops_the_copy_and_resume_finishes_it_with_status_through_grpcurl() {
    let (primary, reader) = populated_primary().await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let admin = format!("127.0.0.1:{}", tests::free_port());
    let a = Applier::start(
        &reader,
        &secondary,
        "pausable",
        &[("TRANSFER_BATCH_SIZE", "200"), ("REPLICA_COPY_ROWS_PER_SECOND", "3000"), ("REPLICA_ADMIN_ADDR", &admin)],
    );
    copied_at_least(&secondary, &a, 1000).await;
    let services = tests::run_grpcurl(&["-plaintext", &admin, "list"]);
    assert!(services.contains("replica.v1.Applier"), "reflection lists the admin service: {services}");
    let paused = tests::run_grpcurl(&["-plaintext", &admin, "replica.v1.Applier/PauseCopy"]);
    assert!(paused.contains("\"paused\": true"), "{paused}");
    // A chunk being written finishes (the count stands still for a second); then nothing moves.
    let held = tests::eventually(WAIT, "the chunk being written when paused to finish", || async {
        let before = rows_copied(&secondary, "pausable").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        (rows_copied(&secondary, "pausable").await == before).then_some(before)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows_copied(&secondary, "pausable").await, held, "no rows move while paused");
    let status = tests::run_grpcurl(&["-plaintext", &admin, "replica.v1.Applier/GetStatus"]);
    assert!(status.contains("\"phase\": \"copying\"") && status.contains("\"copyPaused\": true"), "{status}");
    assert!(status.contains("\"table\": \"ints\"") && status.contains("\"rowsEstimated\""), "{status}");
    tests::run_grpcurl(&["-plaintext", &admin, "replica.v1.Applier/ResumeCopy"]);
    copy_done(&secondary, &a, &reader, WAIT).await;
    let status = tests::run_grpcurl(&["-plaintext", &admin, "replica.v1.Applier/GetStatus"]);
    assert!(status.contains("\"phase\": \"streaming\"") && status.contains("\"state\": \"done\""), "{status}");
    assert_identical(&primary, &reader, &secondary, &a).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_table_repairs_a_damaged_table_and_heals_a_quarantined_one_while_others_stream() {
    let (primary, reader) = populated_primary().await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let admin = format!("127.0.0.1:{}", tests::free_port());
    let a = Applier::start(
        &reader,
        &secondary,
        "healer",
        &[("REPLICA_ADMIN_ADDR", &admin), ("REPLICA_SKIP_FAILING_TABLES", "true"), ("REPLICA_MAX_TABLE_FAILURES", "1")],
    );
    copy_done(&secondary, &a, &reader, WAIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(primary.root_opts(), stop.clone()));
    // Damage by hand: wrong values in one table, a missing row in another that the primary then updates.
    secondary.exec("UPDATE shop.pairs SET v = 'damaged' WHERE a < 10; DELETE FROM shop.names WHERE v = 77").await;
    primary.exec("UPDATE shop.names SET v = -77 WHERE v = 77").await;
    let quarantined = tests::eventually(WAIT, "shop.names is quarantined", || async {
        let status = tests::run_grpcurl(&["-plaintext", &admin, "replica.v1.Applier/GetStatus"]);
        status.contains("\"quarantined\"").then_some(status)
    })
    .await;
    assert!(quarantined.contains("names"), "{quarantined}");
    for table in ["pairs", "names"] {
        let request = format!("{{\"schema\": \"shop\", \"table\": \"{table}\"}}");
        let answer = tests::run_grpcurl(&["-plaintext", "-d", &request, &admin, "replica.v1.Applier/ResyncTable"]);
        assert!(answer.contains("copied again"), "{answer}");
    }
    // The other tables keep streaming meanwhile; then the re-copied ones are done.
    tokio::time::sleep(Duration::from_secs(1)).await;
    copy_done(&secondary, &a, &reader, WAIT).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    assert_identical(&primary, &reader, &secondary, &a).await;
    let status = tests::run_grpcurl(&["-plaintext", &admin, "replica.v1.Applier/GetStatus"]);
    assert!(!status.contains("\"quarantined\""), "the quarantine is lifted: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_longer_than_the_journal_retention_still_converges() {
    let primary = MariaDb::start(Role::Primary).await;
    primary.exec(SCHEMA).await;
    primary.exec(POPULATE).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[("REPLICA_RETENTION", "1s")]).await;
    // Another secondary copies at full speed and then acks as it streams, so the slow copy's consumer is the
    // one that holds the journal back.
    let other = MariaDb::start_with(Role::Secondary, 11, &[]).await;
    let b = Applier::start(&reader, &other, "quick", &[]);
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(primary.root_opts(), stop.clone()));
    let started = std::time::Instant::now();
    let a = Applier::start(
        &reader,
        &secondary,
        "slow",
        &[("TRANSFER_BATCH_SIZE", "500"), ("REPLICA_COPY_ROWS_PER_SECOND", "2500")],
    );
    copy_done(&secondary, &a, &reader, WAIT).await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    assert!(took > Duration::from_secs(5), "the copy outlasted the 1 s retention several times ({took:?})");
    tests::eventually(Duration::from_secs(20), "retention trims the journal", || async {
        (reader.info().await.first_offset > 1).then_some(())
    })
    .await;
    assert_identical(&primary, &reader, &secondary, &a).await;
    assert_identical(&primary, &reader, &other, &b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_with_rows_is_not_overwritten_without_resync() {
    let (primary, reader) = populated_primary().await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    secondary.exec("CREATE DATABASE shop; CREATE TABLE shop.ints (id INT PRIMARY KEY, v INT); INSERT INTO shop.ints VALUES (1, 1)").await;
    let mut a = Applier::start(&reader, &secondary, "careful", &[]);
    let status = a.wait_exit(WAIT).unwrap_or_else(|| panic!("the applier stops:\n{}", a.log_text()));
    assert!(!status.success());
    assert!(
        a.log_text().contains("already has rows in shop.ints") && a.log_text().contains("--resync"),
        "{}",
        a.log_text()
    );
    let kept: Vec<u64> = secondary.query("SELECT COUNT(*) FROM shop.ints").await;
    assert_eq!(kept, vec![1], "nothing was touched");
    let a = Applier::start(&reader, &secondary, "careful", &[("REPLICA_RESYNC", "true")]);
    copy_done(&secondary, &a, &reader, WAIT).await;
    assert_identical(&primary, &reader, &secondary, &a).await;
}
