//! Silent network drops (packets vanish, no reset), made with iptables DROP rules on loopback: the reader
//! notices a silent primary within three heartbeat periods, the applier a silent reader through HTTP/2
//! keepalive, and both recover when packets flow again. Needs root and iptables (as on the CI machine); without
//! them the tests say so and pass without running.

use std::process::Command;
use std::time::{Duration, Instant};

use tests::{caught_up, eventually, journaled, Applier, MariaDb, Reader, Role};

const WAIT: Duration = Duration::from_secs(60);

/// DROP rules for every packet to or from a loopback port, removed on drop (also when a test fails).
struct Blackhole {
    rules: Vec<Vec<String>>,
}

impl Blackhole {
    fn usable() -> bool {
        Command::new("iptables").args(["-w", "-L", "INPUT", "-n"]).output().is_ok_and(|o| o.status.success())
    }

    fn port(port: u16) -> Self {
        let rules: Vec<Vec<String>> = ["--dport", "--sport"]
            .iter()
            .map(|dir| {
                ["INPUT", "-i", "lo", "-p", "tcp", dir, &port.to_string(), "-j", "DROP"].map(String::from).to_vec()
            })
            .collect();
        for rule in &rules {
            let status = Command::new("iptables").arg("-w").arg("-I").args(rule).status().expect("iptables runs");
            assert!(status.success(), "iptables -I {rule:?}");
        }
        Self { rules }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables").arg("-w").arg("-D").args(rule).status();
        }
    }
}

/// Drops every packet of `port` and waits until `noticed()`; returns the rules (removed when dropped) and the wait.
async fn go_silent(port: u16, what: &str, noticed: impl Fn() -> bool) -> (Blackhole, Duration) {
    let rules = Blackhole::port(port);
    let from = Instant::now();
    eventually(WAIT, what, || async { noticed().then_some(()) }).await;
    (rules, from.elapsed())
}

fn skip(what: &str) -> bool {
    if Blackhole::usable() {
        return false;
    }
    eprintln!("SKIPPED {what}: iptables is not usable here (needs root and the iptables command)");
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_that_goes_silent_is_noticed_within_three_heartbeats_and_the_reader_recovers() {
    if skip("silent primary") {
        return;
    }
    let primary = MariaDb::start(Role::Primary).await;
    let journal = primary.dir.path().join("journal");
    let reader = Reader::start(&primary, &journal, &[("REPLICA_HEARTBEAT", "1s")]).await;
    primary.exec("CREATE DATABASE q; CREATE TABLE q.t (id INT PRIMARY KEY)").await;
    journaled(&primary, &reader).await;

    let (dropped, noticed) = go_silent(primary.port, "the reader to notice the silent primary", || {
        reader.log_text().contains("no event from the primary")
    })
    .await;
    assert!(noticed < Duration::from_millis(3_500), "three 1 s heartbeats (plus polling): {noticed:?}");
    assert!(!reader.info().await.primary_connected);

    drop(dropped);
    let back = Instant::now();
    primary.exec("INSERT INTO q.t VALUES (1)").await;
    journaled(&primary, &reader).await;
    eprintln!(
        "silent primary noticed after {noticed:?}; a new row journaled {:?} after packets flowed again",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_goes_silent_is_noticed_by_keepalive_and_the_applier_recovers() {
    if skip("silent reader") {
        return;
    }
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let secondary = MariaDb::start(Role::Secondary).await;
    let a = Applier::start(&reader, &secondary, "k", &[("REPLICA_START_OFFSET", "1")]);
    primary.exec("CREATE DATABASE q; CREATE TABLE q.t (id INT PRIMARY KEY)").await;
    caught_up(&primary, &reader, &secondary, &a).await;

    let (dropped, noticed) = go_silent(reader.grpc_port, "the applier to notice the silent reader", || {
        a.log_text().contains("reader stream interrupted")
    })
    .await;
    assert!(noticed < Duration::from_secs(12), "HTTP/2 keepalive: a ping every 5 s, 5 s to answer: {noticed:?}");

    drop(dropped);
    let back = Instant::now();
    primary.exec("INSERT INTO q.t VALUES (1)").await;
    caught_up(&primary, &reader, &secondary, &a).await;
    eprintln!(
        "silent reader noticed after {noticed:?}; the row applied {:?} after packets flowed again",
        back.elapsed()
    );
}
