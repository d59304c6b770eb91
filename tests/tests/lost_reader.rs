//! A lost reader host: the journal is gone, a new reader starts with an empty journal at the oldest GTID the
//! appliers need, and every applier (one caught up, one far behind) finds its place by GTID and applies
//! nothing twice; a reader started too late is refused rather than followed.

use std::time::Duration;

use tests::{applied, assert_same_data, caught_up, eventually, Applier, MariaDb, Reader, Role};

const WAIT: Duration = Duration::from_secs(120);

async fn checkpoint_gtid(secondary: &MariaDb, consumer: &str) -> String {
    secondary
        .query::<String>(&format!("SELECT gtid FROM replica_meta.checkpoint WHERE consumer = '{consumer}'"))
        .await
        .remove(0)
}

/// Inserts into a table without a key (applied twice, a row would be there twice) and updates keyed rows.
async fn write(primary: &MariaDb, from: u64, to: u64) {
    for i in from..to {
        primary
            .exec(&format!(
                "BEGIN; INSERT INTO app.log (v) VALUES ({i}); \
                 INSERT INTO app.t (id, n) VALUES ({i}, 0) ON DUPLICATE KEY UPDATE n = n + 1; \
                 UPDATE app.t SET n = n + 1 WHERE id = {} ; COMMIT",
                i % 7
            ))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_journal_is_lost_appliers_resume_by_gtid_on_a_new_reader_and_apply_nothing_twice() {
    let primary = MariaDb::start(Role::Primary).await;
    let (s1, s2) = tokio::join!(MariaDb::start(Role::Secondary), MariaDb::start(Role::Secondary));
    let lost = primary.dir.path().join("journal-lost");
    let mut reader = Reader::start(&primary, &lost, &[]).await;
    let port = reader.grpc_port;
    let start = [("REPLICA_START_OFFSET", "1")];
    let mut east = Applier::start(&reader, &s1, "east", &start);
    let mut west = Applier::start(&reader, &s2, "west", &start);
    primary
        .exec("CREATE DATABASE app; CREATE TABLE app.log (v INT); CREATE TABLE app.t (id INT PRIMARY KEY, n INT)")
        .await;
    write(&primary, 0, 20).await;
    caught_up(&primary, &reader, &s1, &east).await;
    caught_up(&primary, &reader, &s2, &west).await;

    // West stops and falls behind; east keeps up. Then the reader's host is lost with its journal.
    assert_eq!(west.terminate().map(|s| s.code()), Some(Some(0)));
    write(&primary, 20, 60).await;
    caught_up(&primary, &reader, &s1, &east).await;
    reader.kill9();
    std::fs::remove_dir_all(&lost).expect("journal removed");
    write(&primary, 60, 80).await;

    // The operator's query: each secondary's checkpoint GTID; the oldest is where a new reader must start.
    let oldest = checkpoint_gtid(&s2, "west").await;
    let west_at = applied(&s2, "west").await;
    assert!(!oldest.is_empty() && oldest != checkpoint_gtid(&s1, "east").await, "west is behind east");

    // First a new reader started at the primary's current position: too late for both (the writes made while no
    // reader ran are in no journal). They refuse it, say why, and wait for a reader that can serve them.
    let too_late = primary.dir.path().join("journal-too-late");
    let mut wrong = Reader::start_at(&primary, &too_late, port, &[]).await;
    west.spawn();
    for a in [&east, &west] {
        eventually(WAIT, "the appliers to refuse the journal that starts too late", || async {
            a.log_text().contains("this journal starts after the secondary's checkpoint").then_some(())
        })
        .await;
    }
    assert_eq!(applied(&s2, "west").await, west_at, "nothing applied from a journal that cannot serve west");
    wrong.kill9();
    std::fs::remove_dir_all(&too_late).expect("journal removed");

    // The right one: an empty journal from the oldest GTID the appliers need.
    let journal = primary.dir.path().join("journal-new");
    let reader = Reader::start_at(&primary, &journal, port, &[("REPLICA_START_POSITION", &oldest)]).await;
    west.spawn();
    write(&primary, 80, 100).await;
    for (s, a) in [(&s1, &east), (&s2, &west)] {
        caught_up(&primary, &reader, s, a).await;
        assert_same_data(&primary, s, "app").await;
        assert!(a.log_text().contains("the reader's journal is new: continuing after the secondary's GTID state"));
    }
    let rows: Vec<u64> = s2.query("SELECT COUNT(*) FROM app.log").await;
    assert_eq!(rows, vec![100], "no keyless insert applied twice or missed");
    assert_eq!((east.exited(), west.exited()), (None, None), "no applier exited");
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_of_another_journal_are_refused_and_a_journal_keeps_its_identity_across_restarts() {
    use common::proto::{AckRequest, SubscribeRequest};
    let primary = MariaDb::start(Role::Primary).await;
    let journal = primary.dir.path().join("journal");
    let mut reader = Reader::start(&primary, &journal, &[]).await;
    let id = reader.info().await.journal_id;
    assert_eq!(id.len(), 32, "{id:?}");
    reader.terminate();
    reader.restart().await;
    assert_eq!(reader.info().await.journal_id, id, "the identity is kept in the journal");

    let mut client = reader.client().await;
    let other = "0".repeat(32);
    let request = SubscribeRequest { consumer: "c".into(), from_offset: 1, journal_id: other.clone() };
    let refused = client.subscribe(request).await.expect_err("another journal's offset");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("journal changed"), "{}", refused.message());
    let refused = client.ack(AckRequest { consumer: "c".into(), offset: 1, journal_id: other }).await.expect_err("ack");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let request = SubscribeRequest { consumer: "c".into(), from_offset: 1, journal_id: id };
    client.subscribe(request).await.expect("this journal's offset");
}
