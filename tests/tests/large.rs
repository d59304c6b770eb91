//! Transactions too large to hold in memory: journaled as fragments, applied as one secondary transaction,
//! and `kill -9` of the reader or the applier in the middle leaves nothing half-applied and nothing lost.

use std::time::Duration;

use tests::{applied, caught_up, eventually, journaled, Applier, MariaDb, Proxy, Reader, Role};

const WAIT: Duration = Duration::from_secs(300);

/// Rows in the large transaction (`REPLICA_TEST_LARGE_ROWS`, 1,000,000 by default).
fn large_rows() -> u64 {
    std::env::var("REPLICA_TEST_LARGE_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

/// Bytes the journal holds, fragments of an open transaction included (whichever store keeps it).
async fn journal_bytes(reader: &Reader) -> u64 {
    reader.info().await.journal_bytes
}

/// kill -9 of the reader once its journal holds more than `bytes` of an open transaction (none of it served:
/// the head is still `before`), then a restart that removes the unfinished fragments and reads the transaction
/// again; returns the journal's head once it has all of it.
async fn kill9_reader_mid_transaction(reader: &mut Reader, primary: &MariaDb, before: u64, bytes: u64) -> u64 {
    eventually(WAIT, "the reader to journal part of the large transaction", || async {
        (journal_bytes(reader).await > bytes).then_some(())
    })
    .await;
    assert_eq!(reader.info().await.last_offset, before, "no fragment is served before the transaction's end");
    reader.kill9();
    reader.restart().await;
    let head = journaled(primary, reader).await;
    assert!(reader.log_text().contains("fragments of an unfinished transaction removed"), "{}", reader.log_text());
    head
}

/// kill -9 of applier `s` once it has applied `fragments` fragments of an open transaction: nothing of it was
/// committed (the checkpoint is still `before`), and what it had written is rolled back (`table` holds `rows`).
async fn kill9_mid_transaction(
    a: &mut Applier,
    secondary: &MariaDb,
    before: u64,
    fragments: usize,
    table: &str,
    rows: u64,
) {
    eventually(WAIT, "the applier to apply fragments of the large transaction", || async {
        (a.log_text().matches("large transaction: fragment applied").count() >= fragments).then_some(())
    })
    .await;
    assert_eq!(applied(secondary, "s").await, before, "nothing of the transaction is committed yet");
    a.kill9();
    let count: Vec<u64> = secondary.query(&format!("SELECT COUNT(*) FROM {table}")).await;
    assert_eq!(count, vec![rows], "the killed applier's open transaction was rolled back");
}

async fn checksum(db: &MariaDb, table: &str) -> Vec<(String, Option<u64>)> {
    db.query(&format!("CHECKSUM TABLE {table} EXTENDED")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_of_a_million_rows_is_applied_whole_after_kill_9_of_the_reader_and_the_applier() {
    let rows = large_rows();
    let primary = MariaDb::start(Role::Primary).await;
    let journal = primary.dir.path().join("journal");
    let mut reader = Reader::start(&primary, &journal, &[]).await;
    let secondary = MariaDb::start(Role::Secondary).await;
    let env = [("REPLICA_START_OFFSET", "1"), ("RUST_LOG", "info,applier::writer=debug")];
    let mut a = Applier::start(&reader, &secondary, "s", &env);
    primary
        .exec(
            "CREATE DATABASE big; \
             CREATE TABLE big.t (id INT PRIMARY KEY, k INT NOT NULL, c CHAR(60) NOT NULL, pad VARCHAR(60) NOT NULL); \
             CREATE TABLE big.small (id INT PRIMARY KEY AUTO_INCREMENT, v INT); \
             INSERT INTO big.small (v) VALUES (1), (2); \
             INSERT INTO big.t VALUES (0, 0, '', '')",
        )
        .await;
    caught_up(&primary, &reader, &secondary, &a).await;
    let before = reader.info().await.last_offset;

    // One transaction: a million rows, then an update of some of them and a small table's change.
    primary
        .exec(&format!(
            "BEGIN; \
             INSERT INTO big.t SELECT seq, seq % 1000, REPEAT(CHAR(65 + seq % 26), 60), CONCAT('pad-', seq) \
             FROM big.seq_1_to_{rows}; \
             UPDATE big.t SET k = k + 1 WHERE id % 100 = 0; \
             INSERT INTO big.small (v) VALUES (3); \
             COMMIT"
        ))
        .await;

    // kill -9 of the reader while it has journaled part of the transaction: fragments are on disk, none served.
    let head = kill9_reader_mid_transaction(&mut reader, &primary, before, 8 << 20).await;
    assert!(head > before + 3, "the transaction was journaled as several records: {before} → {head}");

    // kill -9 of the applier while its secondary transaction holds some of the fragments (INNODB_TRX cannot
    // tell: it blocks while a large INSERT runs).
    kill9_mid_transaction(&mut a, &secondary, before, 3, "big.t", 1).await;
    a.spawn();
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_eq!(a.log_text().matches("its fragments are applied in one secondary transaction").count(), 2);

    let count: Vec<u64> = secondary.query("SELECT COUNT(*) FROM big.t").await;
    assert_eq!(count, vec![rows + 1]);
    assert_eq!(checksum(&secondary, "big.t").await, checksum(&primary, "big.t").await);
    assert_eq!(checksum(&secondary, "big.small").await, checksum(&primary, "big.small").await);
    let (reader_mib, applier_mib) = (reader.peak_rss_mib(), a.peak_rss_mib());
    eprintln!("peak RSS after restarts: reader {reader_mib} MiB, applier {applier_mib} MiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_of_64_mib_rows_is_applied_whole_after_kill_9_of_the_reader_and_the_applier() {
    const ROWS: u64 = 4;
    let server = ["--max-allowed-packet=512M"];
    let primary = MariaDb::start_with(Role::Primary, 1, &server).await;
    let journal = primary.dir.path().join("journal");
    // The reader reads the binlog through a slow link, so that it can be killed while the transaction passes.
    let proxy = Proxy::start(primary.port).await;
    let port = proxy.port.to_string();
    let mut reader = Reader::start(&primary, &journal, &[("MARIA_PRIMARY_PORT", &port)]).await;
    let secondary = MariaDb::start_with(Role::Secondary, 2, &server).await;
    let env = [("REPLICA_START_OFFSET", "1"), ("RUST_LOG", "info,applier::writer=debug")];
    let mut a = Applier::start(&reader, &secondary, "s", &env);
    primary.exec("CREATE DATABASE big; CREATE TABLE big.blobs (id INT PRIMARY KEY, b LONGBLOB NOT NULL)").await;
    caught_up(&primary, &reader, &secondary, &a).await;
    let before = reader.info().await.last_offset;

    // One transaction of four rows of 64 MiB each (distinct bytes, so a row applied twice or cut would show).
    proxy.slow_down();
    let inserts: String = (1..=ROWS)
        .map(|i| format!("INSERT INTO big.blobs VALUES ({i}, CONCAT(REPEAT(CHAR(64 + {i}), 64 << 20), '{i}'));"))
        .collect();
    primary.exec(&format!("BEGIN; {inserts} COMMIT")).await;

    // Past two rows in the segments, the first is indexed too (a batch's index follows its durable bytes).
    let head = kill9_reader_mid_transaction(&mut reader, &primary, before, 128 << 20).await;
    assert!(head >= before + ROWS, "each row was journaled as its own fragment: {before} → {head}");
    proxy.thaw();

    kill9_mid_transaction(&mut a, &secondary, before, 1, "big.blobs", 0).await;
    a.spawn();
    caught_up(&primary, &reader, &secondary, &a).await;

    let sizes = "SELECT id, LENGTH(b), MD5(b) FROM big.blobs ORDER BY id";
    let want: Vec<(u64, u64, String)> = primary.query(sizes).await;
    assert_eq!(want.len() as u64, ROWS);
    assert_eq!(secondary.query::<(u64, u64, String)>(sizes).await, want);
    eprintln!("peak RSS after restarts: reader {} MiB, applier {} MiB", reader.peak_rss_mib(), a.peak_rss_mib());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_cut_in_the_middle_of_a_large_transaction_journals_it_once() {
    const ROWS: u64 = 300_000;
    let primary = MariaDb::start(Role::Primary).await;
    let journal = primary.dir.path().join("journal");
    let proxy = Proxy::start(primary.port).await;
    let port = proxy.port.to_string();
    let reader = Reader::start(&primary, &journal, &[("MARIA_PRIMARY_PORT", &port)]).await;
    let secondary = MariaDb::start(Role::Secondary).await;
    let a = Applier::start(&reader, &secondary, "s", &[("REPLICA_START_OFFSET", "1")]);
    primary.exec("CREATE DATABASE big; CREATE TABLE big.t (id INT PRIMARY KEY, c CHAR(200) NOT NULL)").await;
    caught_up(&primary, &reader, &secondary, &a).await;
    let before = reader.info().await.last_offset;

    // The link stalls while fragments of the transaction are in the journal: the reader reconnects (silence),
    // and reads the transaction again from its start.
    proxy.slow_down();
    primary
        .exec(&format!("INSERT INTO big.t SELECT seq, REPEAT(CHAR(65 + seq % 26), 200) FROM big.seq_1_to_{ROWS}"))
        .await;
    let staged = journal_bytes(&reader).await;
    eventually(WAIT, "fragments of the large transaction in the journal", || async {
        (journal_bytes(&reader).await > staged + (8 << 20)).then_some(())
    })
    .await;
    proxy.freeze();
    assert_eq!(reader.info().await.last_offset, before, "no fragment is served before the transaction's end");
    eventually(WAIT, "the reader to notice the silent link", || async {
        reader.log_text().contains("primary connection lost").then_some(())
    })
    .await;
    proxy.thaw();
    caught_up(&primary, &reader, &secondary, &a).await;
    assert!(reader.log_text().contains("fragments of an unfinished transaction removed"), "{}", reader.log_text());

    let journaled: u64 = tests::row_changes(&reader.records().await).iter().filter(|r| r.table == "t").count() as u64;
    assert_eq!(journaled, ROWS, "every row journaled exactly once");
    assert_eq!(checksum(&secondary, "big.t").await, checksum(&primary, "big.t").await);
}

/// Every column of `table` as MD5s, row by row: what the secondary must hold byte for byte.
async fn digests(db: &MariaDb, table: &str, columns: &[&str]) -> Vec<Vec<Option<String>>> {
    let md5: Vec<String> = columns.iter().map(|c| format!("MD5({c})")).collect();
    let sql = format!("SELECT {} FROM {table} ORDER BY {}", md5.join(", "), md5.join(", "));
    let mut conn = db.conn().await;
    let rows: Vec<mysql_async::Row> = mysql_async::prelude::Queryable::query(&mut conn, sql).await.expect("digests");
    rows.into_iter().map(|r| (0..columns.len()).map(|i| r.get::<Option<String>, _>(i).flatten()).collect()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn long_text_and_blob_values_pass_in_pieces_and_arrive_byte_for_byte() {
    let server = ["--max-allowed-packet=256M"];
    let primary = MariaDb::start_with(Role::Primary, 1, &server).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let secondary = MariaDb::start_with(Role::Secondary, 2, &server).await;
    let a = Applier::start(&reader, &secondary, "s", &[("REPLICA_START_OFFSET", "1")]);
    primary
        .exec(
            "CREATE DATABASE big; \
             CREATE TABLE big.k (id INT PRIMARY KEY, u LONGTEXT CHARACTER SET utf8mb4, \
               l LONGTEXT CHARACTER SET latin1, b LONGBLOB, j JSON, n INT); \
             CREATE TABLE big.keyless (b MEDIUMBLOB, t MEDIUMTEXT CHARACTER SET utf8mb4); \
             CREATE TABLE big.small (id INT PRIMARY KEY, v INT)",
        )
        .await;
    caught_up(&primary, &reader, &secondary, &a).await;
    let before = reader.info().await.last_offset;

    // Characters of 1 to 4 bytes, so that pieces cut through them; short values beside long ones; rows before
    // and after the long ones in the same transaction.
    primary
        .exec(
            "BEGIN; \
             INSERT INTO big.small VALUES (1, 1); \
             INSERT INTO big.k VALUES (1, REPEAT('aé€😀', 300000), REPEAT('café ', 500000), \
               REPEAT(UNHEX('00FF'), 1 << 20), JSON_ARRAY(REPEAT('x', 2 << 20)), 1), \
               (2, 'short', 'court', 0x01, '[]', 2), (3, NULL, NULL, REPEAT('z', (1 << 20) - 1), NULL, 3); \
             INSERT INTO big.small VALUES (2, 2); \
             COMMIT",
        )
        .await;
    caught_up(&primary, &reader, &secondary, &a).await;
    let records = reader.records().await;
    let pieces = records
        .iter()
        .filter(|r| r.offset > before && matches!(r.body, Some(common::proto::record::Body::Piece(_))))
        .count();
    // u: 3,000,000 bytes → 3 pieces; l: 2,500,000 → 3; b: 2 MiB → 2; j: 2 MiB + 2 → 3; row 3's b is one byte short.
    assert_eq!(pieces, 11, "each value of 1 MiB or more goes in 1 MiB pieces, no shorter one");

    // Long values in before images too: updates and deletes, keyed and keyless, several in one rows event.
    primary
        .exec(
            "BEGIN; \
             UPDATE big.k SET n = n + 10, b = CONCAT(b, 'x') WHERE id = 1; \
             UPDATE big.k SET u = REPEAT('ü', 1 << 20) WHERE id = 2; \
             INSERT INTO big.keyless VALUES (REPEAT('k', 3 << 20), REPEAT('ß', 600000)), \
               (REPEAT('k', 3 << 20), 'same blob'), (REPEAT('m', 2 << 20), NULL); \
             DELETE FROM big.keyless WHERE t = 'same blob'; \
             UPDATE big.keyless SET b = REPEAT('n', 2 << 20) WHERE t IS NULL; \
             DELETE FROM big.k WHERE id = 3; \
             INSERT INTO big.small VALUES (3, 3); \
             COMMIT",
        )
        .await;
    caught_up(&primary, &reader, &secondary, &a).await;

    for (table, columns) in [
        ("big.k", &["id", "u", "l", "b", "j", "n"][..]),
        ("big.keyless", &["b", "t"][..]),
        ("big.small", &["id", "v"][..]),
    ] {
        assert_eq!(digests(&secondary, table, columns).await, digests(&primary, table, columns).await, "{table}");
        assert_eq!(checksum(&secondary, table).await, checksum(&primary, table).await, "{table}");
    }
    // The pieces' session variables were freed with their transactions.
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_value_the_secondary_cannot_hold_stops_the_table_with_a_clear_error() {
    let primary = MariaDb::start_with(Role::Primary, 1, &["--max-allowed-packet=256M"]).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    // The secondary keeps MariaDB's default max_allowed_packet (16 MiB).
    let secondary = MariaDb::start_with(Role::Secondary, 2, &[]).await;
    let a = Applier::start(&reader, &secondary, "s", &[("REPLICA_START_OFFSET", "1")]);
    primary.exec("CREATE DATABASE big; CREATE TABLE big.b (id INT PRIMARY KEY, b LONGBLOB)").await;
    caught_up(&primary, &reader, &secondary, &a).await;
    primary.exec("INSERT INTO big.b VALUES (1, REPEAT('v', 20 << 20))").await;
    eventually(WAIT, "the applier to name the value it cannot write", || async {
        a.log_text().contains("does not fit the secondary's max_allowed_packet").then_some(())
    })
    .await;
    let rows: Vec<u64> = secondary.query("SELECT COUNT(*) FROM big.b").await;
    assert_eq!(rows, vec![0], "nothing was written in its place (CONCAT would have given NULL)");
}
