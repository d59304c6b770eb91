//! The reader's journal service against real primaries: subscriptions, acks, retention, the size cap and
//! the primary's identity.

use std::time::{Duration, Instant};

use common::proto::{self, AckRequest, RemoveConsumerRequest, SubscribeRequest};
use futures_util::StreamExt;
use tests::{eventually, row_changes, MariaDb, Reader, Role};

const WAIT: Duration = Duration::from_secs(60);

async fn subscribe(reader: &Reader, consumer: &str, from: u64) -> tonic::Streaming<proto::Record> {
    reader
        .client()
        .await
        .subscribe(SubscribeRequest { consumer: consumer.into(), from_offset: from, ..Default::default() })
        .await
        .expect("Subscribe")
        .into_inner()
}

async fn next_record(stream: &mut tonic::Streaming<proto::Record>) -> proto::Record {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a record within the deadline")
        .expect("stream open")
        .expect("record, not an error")
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_streams_from_an_offset_then_tails_live() {
    let db = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&db, &db.dir.path().join("journal"), &[]).await;
    db.exec("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY); INSERT INTO s.t VALUES (1), (2)").await;
    reader.wait_for_offset(3, WAIT).await;
    let mut stream = subscribe(&reader, "tail", 2).await;
    assert_eq!(next_record(&mut stream).await.offset, 2, "starts at the requested offset");
    assert_eq!(next_record(&mut stream).await.offset, 3);
    let sent = Instant::now();
    db.exec("INSERT INTO s.t VALUES (3)").await;
    let live = next_record(&mut stream).await;
    assert_eq!(live.offset, 4, "then tails new records");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "live records arrive without a polling delay: {:?}",
        sent.elapsed()
    );
    let info = reader.info().await;
    let tail = info.consumers.iter().find(|c| c.name == "tail").expect("subscribing registers the consumer");
    assert!(tail.connected);
    assert_eq!(tail.acked_offset, 1, "registered as having applied everything before its first offset");

    let err = reader
        .client()
        .await
        .subscribe(SubscribeRequest { consumer: "late".into(), from_offset: 99, ..Default::default() })
        .await
        .expect_err("an offset beyond the tail is refused");
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert!(err.message().contains("valid offsets are 1 to 4"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_subscriber_slows_neither_another_subscriber_nor_the_reader() {
    let db = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&db, &db.dir.path().join("journal"), &[]).await;
    db.exec("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, pad VARCHAR(200))").await;
    reader.wait_for_offset(2, WAIT).await;
    // Never reads: its buffers fill and it stays behind.
    let _slow = subscribe(&reader, "slow", 1).await;
    let mut fast = subscribe(&reader, "fast", 1).await;
    let mut conn = db.conn().await;
    let txns = 3_000u64;
    for i in 0..txns {
        mysql_async::prelude::Queryable::query_drop(
            &mut conn,
            format!("INSERT INTO s.t VALUES ({i}, REPEAT('x', 200))"),
        )
        .await
        .expect("insert");
    }
    let last = 2 + txns;
    reader.wait_for_offset(last, WAIT).await;
    let mut seen = 0;
    while seen < last {
        seen = next_record(&mut fast).await.offset;
    }
    let info = reader.info().await;
    let slow = info.consumers.iter().find(|c| c.name == "slow").expect("slow consumer");
    assert!(slow.connected && slow.lag_records == last, "the slow one is connected and lags by everything");
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_are_monotonic_and_records_go_only_when_every_consumer_acked_them() {
    let db = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&db, &db.dir.path().join("journal"), &[("REPLICA_RETENTION", "0s")]).await;
    db.exec("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY)").await;
    for i in 0..8 {
        db.exec(&format!("INSERT INTO s.t VALUES ({i})")).await;
    }
    reader.wait_for_offset(10, WAIT).await;
    drop(subscribe(&reader, "a", 1).await);
    drop(subscribe(&reader, "b", 1).await);
    let mut client = reader.client().await;
    let ack = |consumer: &str, offset| AckRequest { consumer: consumer.into(), offset, ..Default::default() };
    assert_eq!(client.ack(ack("a", 6)).await.expect("ack").into_inner().acked_offset, 6);
    assert_eq!(client.ack(ack("a", 4)).await.expect("ack below").into_inner().acked_offset, 6, "monotonic");
    assert_eq!(client.ack(ack("a", 6)).await.expect("same ack").into_inner().acked_offset, 6, "idempotent");
    client.ack(ack("b", 3)).await.expect("ack");
    assert_eq!(client.ack(ack("a", 11)).await.expect_err("beyond the tail").code(), tonic::Code::OutOfRange);
    assert_eq!(client.ack(ack("nobody", 1)).await.expect_err("unknown").code(), tonic::Code::NotFound);

    eventually(WAIT, "records 1..=3 trimmed (the slowest consumer acked 3)", || async {
        (reader.info().await.first_offset == 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(reader.info().await.first_offset, 4, "nothing beyond the slowest ack is trimmed");
    let info = reader.info().await;
    let b = info.consumers.iter().find(|c| c.name == "b").expect("b");
    assert_eq!((b.acked_offset, b.lag_records, b.connected), (3, 7, false));
    assert!(b.last_ack_unix_ms > 0);

    let removed = client.remove_consumer(RemoveConsumerRequest { name: "b".into() }).await.expect("remove");
    assert!(removed.into_inner().removed);
    eventually(WAIT, "records up to a's ack trimmed once b is gone", || async {
        (reader.info().await.first_offset == 7).then_some(())
    })
    .await;
    let err = client.read(proto::ReadRequest { from_offset: 2, limit: 1 }).await.expect_err("trimmed");
    assert_eq!(err.code(), tonic::Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread")]
async fn acked_records_stay_for_the_retention_time() {
    let db = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&db, &db.dir.path().join("journal"), &[("REPLICA_RETENTION", "1h")]).await;
    db.exec("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY); INSERT INTO s.t VALUES (1)").await;
    reader.wait_for_offset(3, WAIT).await;
    drop(subscribe(&reader, "a", 1).await);
    reader.client().await.ack(AckRequest { consumer: "a".into(), offset: 3, ..Default::default() }).await.expect("ack");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(reader.info().await.first_offset, 1, "acked but younger than the retention time: kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_size_cap_pauses_reading_and_drops_nothing() {
    let db = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(
        &db,
        &db.dir.path().join("journal"),
        &[("REPLICA_JOURNAL_MAX_BYTES", "40000"), ("REPLICA_RETENTION", "0s")],
    )
    .await;
    db.exec("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, pad VARCHAR(500))").await;
    reader.wait_for_offset(2, WAIT).await;
    drop(subscribe(&reader, "c", 1).await);
    let rows = 400;
    for i in 0..rows {
        db.exec(&format!("INSERT INTO s.t VALUES ({i}, REPEAT('p', 500))")).await;
    }
    let paused = eventually(WAIT, "backpressure reported", || async {
        let info = reader.info().await;
        info.backpressure.then_some(info)
    })
    .await;
    assert!(paused.last_offset < 2 + rows, "reading stopped before the end");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = reader.info().await;
    assert_eq!(still.last_offset, paused.last_offset, "nothing read while over the cap");
    assert!(reader.log_text().contains("over its size cap"), "the pause is logged");

    // Acking lets the trimmer free space; the reader resumes where it stopped and drops nothing.
    let mut client = reader.client().await;
    let mut seen_ids = Vec::new();
    let mut next = 1;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (seen_ids.len() as u64) < rows {
        assert!(Instant::now() < deadline, "only {} of {rows} rows journaled through the cap", seen_ids.len());
        let info = reader.info().await;
        if info.last_offset < next {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let recs = client
            .read(proto::ReadRequest { from_offset: next, limit: 1000 })
            .await
            .expect("read unacked records")
            .into_inner()
            .records;
        for row in row_changes(&recs) {
            if let Some(proto::value::Kind::Int(id)) = row.after[0].kind {
                seen_ids.push(id);
            }
        }
        if let Some(last) = recs.last() {
            next = last.offset + 1;
            client
                .ack(AckRequest { consumer: "c".into(), offset: last.offset, ..Default::default() })
                .await
                .expect("ack");
        }
    }
    assert_eq!(seen_ids, (0..rows as i64).collect::<Vec<_>>(), "every row once, in order");
    eventually(WAIT, "backpressure cleared", || async { (!reader.info().await.backpressure).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_by_file_position_against_another_primary_stops_with_a_clear_error() {
    let first = MariaDb::start(Role::Primary).await;
    first.exec("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY)").await;
    let status: Vec<mysql_async::Row> = first.query("SHOW MASTER STATUS").await;
    let file: String = status[0].get(0).expect("file");
    let pos: u64 = status[0].get(1).expect("pos");
    let journal = first.dir.path().join("journal");
    let start = format!("{file}:{pos}");
    let mut reader = Reader::start(&first, &journal, &[("REPLICA_START_POSITION", &start)]).await;
    first.exec("INSERT INTO s.t VALUES (1)").await;
    reader.wait_for_offset(1, WAIT).await;
    assert_eq!(reader.terminate().and_then(|s| s.code()), Some(0));

    let other = MariaDb::start_with(Role::Primary, 2, &[]).await;
    let mut moved = Reader::start_unchecked(&other, &journal, &[]);
    let status = moved.wait_exit(WAIT).unwrap_or_else(|| panic!("reader stops by itself:\n{}", moved.log_text()));
    assert!(!status.success());
    let log = moved.log_text();
    assert!(log.contains("primary identity changed") && log.contains("server id 1"), "{log}");
}
