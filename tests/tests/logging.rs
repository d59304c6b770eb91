//! Logging of the real reader: GELF to a local UDP listener with stable field names, and a Graylog outage
//! that does not hold replication back.

use std::time::{Duration, Instant};

use common::proto::SubscribeRequest;
use tests::{free_port, MariaDb, Reader, Role};

#[tokio::test(flavor = "multi_thread")]
async fn gelf_messages_reach_graylog_with_stable_fields_and_an_outage_blocks_nothing() {
    let db = MariaDb::start(Role::Primary).await;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp listener");
    udp.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let endpoint = udp.local_addr().expect("addr").to_string();
    let reader = Reader::start(
        &db,
        &db.dir.path().join("journal"),
        &[
            ("GRAYLOG_ENABLED", "true"),
            ("GRAYLOG_ENDPOINT", &endpoint),
            ("GRAYLOG_PROTOCOL", "udp"),
            ("GRAYLOG_SOURCE", "reader-under-test"),
        ],
    )
    .await;
    let _stream = reader
        .client()
        .await
        .subscribe(SubscribeRequest { consumer: "gelf-consumer".into(), from_offset: 0, ..Default::default() })
        .await
        .expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 65_536];
    let message = loop {
        assert!(Instant::now() < deadline, "no GELF message with the consumer field arrived");
        let Ok(n) = udp.recv(&mut buf) else { continue };
        // Strict: the whole datagram is one JSON document (no NUL framing, nothing after it).
        let json: serde_json::Value = serde_json::from_slice(&buf[..n])
            .unwrap_or_else(|e| panic!("datagram is not JSON ({e}): {:?}", String::from_utf8_lossy(&buf[..n])));
        if json["_consumer"] == "gelf-consumer" {
            break json;
        }
    };
    assert_eq!(message["host"], "reader-under-test");
    assert_eq!(message["_service"], "replica-reader");
    assert!(message["_offset"].is_number(), "offset is a field of its own: {message}");
    assert!(message["short_message"].as_str().is_some_and(|m| m.contains("subscriber connected")), "{message}");
    assert_eq!(message["version"], "1.1");
    assert_eq!(message["level"], 6, "syslog informational");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    let stamp = message["timestamp"].as_f64().unwrap_or_else(|| panic!("timestamp is a number: {message}"));
    assert!((now - stamp).abs() < 60.0 && stamp.fract() != 0.0, "seconds with a fraction, now: {stamp} vs {now}");

    // Graylog unreachable over TCP: the reader still journals.
    let db2 = MariaDb::start(Role::Primary).await;
    let closed = format!("127.0.0.1:{}", free_port());
    let reader2 = Reader::start(
        &db2,
        &db2.dir.path().join("journal"),
        &[("GRAYLOG_ENABLED", "true"), ("GRAYLOG_ENDPOINT", &closed), ("GRAYLOG_PROTOCOL", "tcp")],
    )
    .await;
    db2.exec("CREATE DATABASE g; CREATE TABLE g.t (id INT PRIMARY KEY)").await;
    for i in 0..200 {
        db2.exec(&format!("INSERT INTO g.t VALUES ({i})")).await;
    }
    reader2.wait_for_offset(202, Duration::from_secs(60)).await;

    // Graylog comes back: the reader reconnects and each TCP frame is one JSON document ended by a NUL.
    let listener = tokio::net::TcpListener::bind(&closed).await.expect("tcp listener");
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
        .await
        .expect("the reader reconnects to Graylog within 30 s")
        .expect("accept");
    let _stream2 = reader2
        .client()
        .await
        .subscribe(SubscribeRequest { consumer: "tcp-consumer".into(), from_offset: 0, ..Default::default() })
        .await
        .expect("subscribe");
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    'frames: loop {
        assert!(Instant::now() < deadline, "no GELF frame with the consumer field arrived over TCP");
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_millis(500), tokio::io::AsyncReadExt::read(&mut conn, &mut chunk))
            .await
            .map_or(0, |r| r.expect("read"));
        received.extend_from_slice(&chunk[..n]);
        while let Some(end) = received.iter().position(|b| *b == 0) {
            let frame: Vec<u8> = received.drain(..=end).collect();
            let json: serde_json::Value = serde_json::from_slice(&frame[..end]).expect("each frame is JSON");
            assert!(json["timestamp"].is_number(), "{json}");
            if json["_consumer"] == "tcp-consumer" {
                break 'frames;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_log_level_from_the_config_file() {
    let primary = tests::MariaDb::start(tests::Role::Primary).await;
    let file = primary.dir.path().join("reader.toml");
    std::fs::write(&file, "log_level = \"info\"\n").expect("config file");
    let path = file.to_string_lossy().into_owned();
    let mut reader =
        tests::Reader::start(&primary, &primary.dir.path().join("journal"), &[("REPLICA_CONFIG", &path)]).await;
    assert!(!reader.log_text().contains("DEBUG"), "info level at start");
    std::fs::write(&file, "log_level = \"debug\"\n").expect("config file");
    let status = std::process::Command::new("kill").args(["-HUP", &reader.pid().to_string()]).status().expect("kill");
    assert!(status.success());
    tests::eventually(Duration::from_secs(20), "the reader logs at debug level after SIGHUP", || async {
        primary.exec("CREATE DATABASE IF NOT EXISTS hup").await;
        let log = reader.log_text();
        (log.contains("log level reloaded") && log.contains("DEBUG")).then_some(())
    })
    .await;
    assert_eq!(reader.exited(), None, "still running");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let secondary = MariaDb::start(Role::Secondary).await;
    let a = tests::Applier::start(&reader, &secondary, "plain", &[("REPLICA_START_OFFSET", "1")]);
    primary.exec("CREATE DATABASE p").await;
    tests::caught_up(&primary, &reader, &secondary, &a).await;
    for log in [reader.log_text(), a.log_text()] {
        assert!(log.contains("INFO") && !log.contains('\u{1b}'), "plain text in a file:\n{log}");
    }
    assert!(reader.log_text().contains("streaming the binlog primary=mariadb-primary"), "{}", reader.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_log_debug_shows_the_readers_and_appliers_own_work_not_library_noise() {
    let primary = MariaDb::start(Role::Primary).await;
    let debug = [("RUST_LOG", "debug")];
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &debug).await;
    let secondary = MariaDb::start(Role::Secondary).await;
    let a = tests::Applier::start(&reader, &secondary, "dbg", &[("REPLICA_START_OFFSET", "1"), ("RUST_LOG", "debug")]);
    primary.exec("CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY); INSERT INTO d.t VALUES (1), (2)").await;
    tests::caught_up(&primary, &reader, &secondary, &a).await;
    let (r, w) = (reader.log_text(), a.log_text());
    assert!(r.contains("binlog transaction read") && r.contains("journal batch durable"), "{r}");
    assert!(w.contains("secondary transaction committed") && w.contains("rows=2"), "{w}");
    for log in [&r, &w] {
        for noisy in [" sled::", " h2::", " tower::", " hyper"] {
            assert!(!log.contains(noisy), "{noisy} debug lines drown ours:\n{log}");
        }
    }
}
