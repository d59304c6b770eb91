//! Journal integrity on real processes: every record carries a CRC32C; a damaged record is never served nor
//! applied, and a journal whose end was cut short is cut back to its last whole transaction and read again
//! from the primary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::proto::ReadRequest;
use tests::{assert_same_data, caught_up, Applier, MariaDb, Reader, Role};

const TEXT: &str = "abcdefghijklmnopqrstuvwxyz";

/// Table `i.t` (journal offsets 1 and 2: one record per statement).
async fn schema(db: &MariaDb) {
    db.exec("CREATE DATABASE i").await;
    db.exec("CREATE TABLE i.t (id INT PRIMARY KEY, v VARCHAR(100))").await;
}

/// One transaction per row: `payload-<id>-abc…`.
async fn insert(db: &MariaDb, ids: std::ops::RangeInclusive<u32>) {
    for id in ids {
        db.exec(&format!("INSERT INTO i.t VALUES ({id}, 'payload-{id}-{TEXT}')")).await;
    }
}

/// A primary with `i.t`, a reader and an applier that has applied `rows` one-row transactions.
struct Streaming {
    primary: MariaDb,
    journal: PathBuf,
    reader: Reader,
    secondary: MariaDb,
    applier: Applier,
}

async fn streaming(rows: u32) -> Streaming {
    let primary = MariaDb::start(Role::Primary).await;
    let journal = primary.dir.path().join("journal");
    let reader = Reader::start(&primary, &journal, &[]).await;
    schema(&primary).await;
    let secondary = MariaDb::start(Role::Secondary).await;
    let applier = Applier::start(&reader, &secondary, "streaming", &[("REPLICA_START_OFFSET", "1")]);
    insert(&primary, 1..=rows).await;
    caught_up(&primary, &reader, &secondary, &applier).await;
    Streaming { primary, journal, reader, secondary, applier }
}

/// A primary with `i.t` and `rows` one-row transactions journaled by a reader, which is then stopped.
struct Journaled {
    primary: MariaDb,
    journal: PathBuf,
    reader: Reader,
    /// The journal's last offset.
    head: u64,
}

async fn journaled_and_stopped(rows: u32) -> Journaled {
    let primary = MariaDb::start(Role::Primary).await;
    let journal = primary.dir.path().join("journal");
    let mut reader = Reader::start(&primary, &journal, &[]).await;
    schema(&primary).await;
    insert(&primary, 1..=rows).await;
    let head = tests::journaled(&primary, &reader).await;
    assert_eq!(reader.terminate().map(|s| s.success()), Some(true));
    Journaled { primary, journal, reader, head }
}

fn last_segment(journal: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(journal.join("segments"))
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_journal_cut_short_is_cut_back_to_its_last_whole_record_and_read_again_from_the_primary() {
    let Streaming { primary, journal, mut reader, secondary, applier } = streaming(30).await;
    let head = reader.info().await.last_offset;
    assert_eq!(reader.terminate().map(|s| s.success()), Some(true));
    let seg = last_segment(&journal);
    let len = std::fs::metadata(&seg).expect("segment").len();
    std::fs::OpenOptions::new().write(true).open(&seg).expect("open").set_len(len - 7).expect("cut 7 bytes off");

    reader.restart().await;
    tests::eventually(Duration::from_secs(30), "the cut-back record journaled again", || async {
        (reader.info().await.last_offset == head).then_some(())
    })
    .await;
    assert!(reader.log_text().contains("the journal's end was damaged"), "{}", reader.log_text());
    let last = reader
        .client()
        .await
        .read(ReadRequest { from_offset: head, limit: 1 })
        .await
        .expect("Read")
        .into_inner()
        .records;
    let text = format!("{last:?}");
    assert!(text.contains(&format!("payload-30-{TEXT}")) && !text.contains("\\0"), "{text}");
    assert!(last[0].crc32c.is_some(), "served with its checksum");
    insert(&primary, 31..=40).await;
    caught_up(&primary, &reader, &secondary, &applier).await;
    assert_same_data(&primary, &secondary, "i").await;
    assert!(!applier.log_text().contains("ERROR"), "{}", applier.log_text());
}

/// Flips one byte of row `id`'s value in the stopped reader's last segment (`payload-<id>-abc…` → `-Abc…`).
fn flip_value_byte(journal: &Path, id: u32) {
    flip_near(journal, id, format!("payload-{id}-").len() as isize, 0x20);
}

/// Flips a bit of the length written before row `id`'s value (its bincode varint).
fn flip_length_byte(journal: &Path, id: u32) {
    flip_near(journal, id, -1, 0x01);
}

fn flip_near(journal: &Path, id: u32, from_value: isize, mask: u8) {
    let seg = last_segment(journal);
    let mut bytes = std::fs::read(&seg).expect("segment");
    let needle = format!("payload-{id}-{TEXT}");
    let at = bytes.windows(needle.len()).position(|w| w == needle.as_bytes()).expect("the row in the segment");
    bytes[(at as isize + from_value) as usize] ^= mask;
    std::fs::write(&seg, bytes).expect("write segment");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_with_a_flipped_byte_is_neither_served_nor_applied_when_the_primary_no_longer_has_it() {
    let Journaled { primary, journal, mut reader, head } = journaled_and_stopped(30).await;
    flip_value_byte(&journal, 15);
    // The primary no longer has those transactions: nothing to repair from.
    primary.exec("FLUSH BINARY LOGS").await;
    // (A file is purged only once InnoDB has checkpointed its transactions: retry until only the new one is left.)
    tests::eventually(Duration::from_secs(30), "the older binary logs purged", || async {
        let logs: Vec<(String, u64)> = primary.query("SHOW BINARY LOGS").await;
        let last = logs.last().map(|(name, _)| name.clone()).expect("binary logs");
        primary.exec(&format!("PURGE BINARY LOGS TO '{last}'")).await;
        let left: Vec<(String, u64)> = primary.query("SHOW BINARY LOGS").await;
        (left.len() == 1).then_some(())
    })
    .await;

    reader.restart().await;
    let mut client = reader.client().await;
    let served = client.read(ReadRequest { from_offset: 1, limit: 1000 }).await.expect("Read").into_inner().records;
    let damaged = served.last().map_or(1, |r| r.offset + 1);
    assert_eq!(damaged, 17, "the records before the damaged one are served (row 15 is offset 17)");
    let refused = client.read(ReadRequest { from_offset: damaged, limit: 10 }).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::DataLoss);
    assert!(
        refused.message().contains(&format!("offset {damaged}")) && refused.message().contains(".seg, byte"),
        "says which record and where: {}",
        refused.message()
    );
    // The records after it are whole and served.
    let after = client.read(ReadRequest { from_offset: damaged + 1, limit: 1000 }).await.expect("Read").into_inner();
    assert_eq!(after.records.last().map(|r| r.offset), Some(head));
    tests::eventually(Duration::from_secs(30), "the reader to say the record cannot be repaired", || async {
        reader.log_text().contains("could not be repaired from the primary").then_some(())
    })
    .await;

    // An applier applies everything before it, then stops there with an ERROR, writing nothing after it.
    let secondary = MariaDb::start(Role::Secondary).await;
    schema(&secondary).await;
    let applier = Applier::start(&reader, &secondary, "flip", &[("REPLICA_START_OFFSET", "3")]);
    tests::eventually(Duration::from_secs(30), "the applier to stop at the damaged record", || async {
        (applier.log_text().contains("a damaged journal record is not applied")
            && tests::applied(&secondary, "flip").await == damaged - 1)
            .then_some(())
    })
    .await;
    let ids: Vec<u32> = secondary.query("SELECT id FROM i.t ORDER BY id").await;
    assert_eq!(ids, (1..=14).collect::<Vec<_>>(), "rows before the damaged one, none after");
    assert!(!format!("{served:?}{after:?}").contains("payload-15-Abc"), "the changed value is never served");
}

#[tokio::test(flavor = "multi_thread")]
async fn records_with_a_flipped_value_byte_and_a_flipped_length_byte_are_repaired_from_the_primarys_binlog() {
    let Journaled { primary, journal, mut reader, head } = journaled_and_stopped(30).await;
    flip_value_byte(&journal, 15);
    flip_length_byte(&journal, 16);

    reader.restart().await;
    tests::eventually(Duration::from_secs(60), "the damaged records repaired", || async {
        let r = reader.client().await.read(ReadRequest { from_offset: 1, limit: 1000 }).await.ok()?.into_inner();
        (r.records.len() as u64 == head).then_some(())
    })
    .await;
    assert!(reader.log_text().contains("repaired from the primary's binlog"), "{}", reader.log_text());
    let records = reader.records().await;
    let text = format!("{records:?}");
    assert!(text.contains(&format!("payload-15-{TEXT}")) && text.contains(&format!("payload-16-{TEXT}")));
    assert!(!text.contains("payload-15-Abc"));
    let secondary = MariaDb::start(Role::Secondary).await;
    let applier = Applier::start(&reader, &secondary, "fixed", &[("REPLICA_START_OFFSET", "1")]);
    insert(&primary, 31..=32).await;
    caught_up(&primary, &reader, &secondary, &applier).await;
    assert_same_data(&primary, &secondary, "i").await;
}

/// sled recovers the longest intact prefix of its log and drops the rest without an error: a damaged index
/// takes the journal back to an earlier state. The segment records past it are noticed, their transactions are
/// read again from the primary at the same offsets, and an applier that had applied them keeps streaming.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_index_goes_back_to_an_earlier_state_loudly_and_appliers_ahead_of_it_keep_streaming() {
    let Streaming { primary, journal, mut reader, secondary, applier } = streaming(100).await;
    assert_eq!(reader.terminate().map(|s| s.success()), Some(true));
    let db = journal.join("db");
    let mut bytes = std::fs::read(&db).expect("sled's log");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&db, bytes).expect("write");

    reader.restart().await;
    assert!(
        reader.log_text().contains("the segments hold records the index does not"),
        "the rollback is logged:\n{}",
        reader.log_text()
    );
    insert(&primary, 101..=110).await;
    caught_up(&primary, &reader, &secondary, &applier).await;
    assert_same_data(&primary, &secondary, "i").await;
    assert_eq!(reader.records().await.len() as u64, reader.info().await.last_offset, "dense offsets");
}

/// A long value's pieces are records of their own: a damaged piece is read again from the primary like any
/// record, and the secondary gets the value byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_piece_of_a_long_value_is_repaired_from_the_primarys_binlog() {
    let primary = MariaDb::start(Role::Primary).await;
    let journal = primary.dir.path().join("journal");
    let mut reader = Reader::start(&primary, &journal, &[]).await;
    schema(&primary).await;
    primary.exec("CREATE TABLE i.l (id INT PRIMARY KEY, b LONGBLOB)").await;
    insert(&primary, 1..=2).await;
    // Three pieces of distinct bytes, in a transaction with a short row before them.
    primary
        .exec(&format!(
            "BEGIN; INSERT INTO i.t VALUES (3, 'payload-3-{TEXT}'); \
             INSERT INTO i.l VALUES (1, CONCAT(REPEAT('A', 1 << 20), REPEAT('B', 1 << 20), REPEAT('C', 1 << 20))); \
             COMMIT"
        ))
        .await;
    insert(&primary, 4..=5).await;
    let head = tests::journaled(&primary, &reader).await;
    assert_eq!(reader.terminate().map(|s| s.success()), Some(true));
    let seg = last_segment(&journal);
    let mut bytes = std::fs::read(&seg).expect("segment");
    let middle = vec![b'B'; 4096];
    let at = bytes.windows(middle.len()).position(|w| w == middle.as_slice()).expect("the middle piece");
    bytes[at + 1000] ^= 0x01;
    std::fs::write(&seg, bytes).expect("write segment");

    reader.restart().await;
    tests::eventually(Duration::from_secs(60), "the damaged piece repaired", || async {
        reader.log_text().contains("repaired from the primary's binlog").then_some(())
    })
    .await;
    // Every record reads whole again (a Read answer holds at most 4 MiB: `records` pages through them).
    assert_eq!(reader.records().await.len() as u64, head);
    let secondary = MariaDb::start(Role::Secondary).await;
    let applier = Applier::start(&reader, &secondary, "fixed", &[("REPLICA_START_OFFSET", "1")]);
    insert(&primary, 6..=6).await;
    caught_up(&primary, &reader, &secondary, &applier).await;
    assert_same_data(&primary, &secondary, "i").await;
    let digest = "SELECT id, LENGTH(b), MD5(b) FROM i.l";
    let want: Vec<(u32, u64, String)> = primary.query(digest).await;
    assert_eq!(secondary.query::<(u32, u64, String)>(digest).await, want);
}
