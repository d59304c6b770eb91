//! Primary failover by GTID: the reader follows a promoted native replica after the primary is killed under
//! load, refuses a candidate that lacks journaled transactions or has errant ones, and can be re-pointed by an
//! operator (`SwitchPrimary`), initial copies included.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proto::SwitchPrimaryRequest;
use mysql_async::prelude::Queryable;
use tests::{assert_same_data, caught_up, copy_done, eventually, Applier, MariaDb, Proxy, Reader, Role};

const WAIT: Duration = Duration::from_secs(120);
const SCHEMA: &str = "CREATE DATABASE app; \
     CREATE TABLE app.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(40) NOT NULL, n INT NOT NULL)";

/// Writes to `db` from one client until stopped or until the server goes away; returns the commits made.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Load {
    fn start(db: &MariaDb) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let opts = db.root_opts();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let Ok(mut c) = mysql_async::Conn::new(opts).await else { return 0 };
            let mut commits = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let id = commits % 50 + 1;
                let sql = format!(
                    "BEGIN; INSERT INTO app.t (v, n) VALUES ('load-{commits}', 0); \
                     UPDATE app.t SET n = n + 1 WHERE id = {id}; COMMIT"
                );
                if c.query_drop(sql).await.is_err() {
                    break;
                }
                commits += 1;
            }
            commits
        });
        Self { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task")
    }
}

/// A native replica of `primary` that logs what it applies, so that it can be followed and promoted.
async fn replica(primary: &MariaDb, server_id: u32) -> MariaDb {
    let r = MariaDb::start_with(Role::Primary, server_id, &["--log-slave-updates"]).await;
    r.replicate_from(primary).await;
    r
}

async fn gtid_binlog_state(db: &MariaDb) -> String {
    db.query::<String>("SELECT @@gtid_binlog_state").await.remove(0)
}

/// Every journaled transaction's GTID appears in one run of records only: nothing was journaled twice.
async fn assert_journaled_once(reader: &Reader) {
    let mut gtids: Vec<String> = reader.records().await.into_iter().map(|r| r.gtid).filter(|g| !g.is_empty()).collect();
    gtids.dedup();
    let mut seen = HashSet::new();
    let twice: Vec<&String> = gtids.iter().filter(|g| !seen.insert(*g)).collect();
    assert!(twice.is_empty(), "transactions journaled twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reader_follows_a_promoted_replica_after_the_primary_is_killed_under_load_and_refuses_a_lagging_one() {
    let mut primary = MariaDb::start_with(Role::Primary, 1, &[]).await;
    let (promoted, lagging) = tokio::join!(replica(&primary, 2), replica(&primary, 3));
    let (s1, s2) = tokio::join!(MariaDb::start(Role::Secondary), MariaDb::start(Role::Secondary));
    // The reader reaches the primary through a proxy, so that its link can stall before the primary dies.
    let proxy = Proxy::start(primary.port).await;
    let candidates = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", proxy.port, lagging.port, promoted.port);
    let journal = primary.dir.path().join("journal");
    let env = [("MARIA_PRIMARY_HOST", candidates.as_str()), ("REPLICA_FAILOVER_AFTER", "2s")];
    let reader = Reader::start(&primary, &journal, &env).await;
    let start = [("REPLICA_START_OFFSET", "1")];
    let (a1, a2) = (Applier::start(&reader, &s1, "east", &start), Applier::start(&reader, &s2, "west", &start));
    primary.exec(SCHEMA).await;
    lagging.wait_replicated(&primary).await;

    let load = Load::start(&primary);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One replica stops replicating and takes a write of its own: it is behind, and has an errant transaction.
    lagging.exec("STOP SLAVE; INSERT INTO app.t (v, n) VALUES ('written on the replica', 0)").await;
    let errant = gtid_binlog_state(&lagging).await.split(',').find(|g| g.starts_with("0-3-")).expect("0-3-").to_owned();
    let lagging_at: Vec<String> = lagging.query("SELECT @@gtid_slave_pos").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Offered by an operator, the lagging replica is refused, naming what it lacks and what it should not have.
    let mut client = reader.client().await;
    let lagging_address = format!("127.0.0.1:{}", lagging.port);
    let refused = client
        .switch_primary(SwitchPrimaryRequest { address: lagging_address.clone() })
        .await
        .expect_err("a lagging replica with an errant transaction must be refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    let seq: u64 = lagging_at[0].rsplit('-').next().and_then(|s| s.parse().ok()).expect("seq");
    assert!(
        refused.message().contains(&format!("0-1-{}..", seq + 1)),
        "names the missing GTIDs: {}",
        refused.message()
    );
    assert!(refused.message().contains(&errant), "names the errant GTID {errant}: {}", refused.message());
    assert_eq!(reader.info().await.primary_server_id, 1, "a refused switch leaves the reader where it was");

    // The reader's link stalls; the primary goes on writing, then is killed under load.
    proxy.freeze();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let journaled = reader.info().await.source_position.map(|p| p.gtid).unwrap_or_default();
    promoted.wait_replicated(&primary).await;
    let killed = Instant::now();
    primary.kill9();
    let commits = load.finish().await;
    assert!(commits > 50, "the primary was under load: {commits} commits");

    // The operator promotes the replica and writes to it.
    promoted.promote().await;
    promoted
        .exec("INSERT INTO app.t (v, n) VALUES ('after failover', 1); UPDATE app.t SET n = n + 100 WHERE id <= 5")
        .await;
    eventually(WAIT, "the reader to follow the promoted replica", || async {
        (reader.info().await.primary_server_id == 2).then_some(())
    })
    .await;
    let followed = killed.elapsed();
    for (s, a) in [(&s1, &a1), (&s2, &a2)] {
        caught_up(&promoted, &reader, s, a).await;
        assert_same_data(&promoted, s, "app").await;
    }
    let applied = killed.elapsed();
    eprintln!(
        "primary killed → reader following the promoted replica {followed:?}, both secondaries equal {applied:?}"
    );

    let info = reader.info().await;
    assert_eq!(info.primary_address, format!("127.0.0.1:{}", promoted.port));
    assert_eq!(info.primary_changes, 1);
    let log = reader.log_text();
    assert!(log.contains("the primary changed"), "{log}");
    assert!(
        log.contains(&format!("not following {lagging_address} (server id 3)")) && log.contains(&errant),
        "the lagging candidate was tried and refused on failover:\n{log}"
    );
    assert!(!journaled.is_empty());
    assert_journaled_once(&reader).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_re_points_the_reader_at_a_replica_and_back_and_copies_and_streams_stay_exact() {
    let primary = MariaDb::start_with(Role::Primary, 1, &[]).await;
    let other = replica(&primary, 2).await;
    let (s1, s2) = tokio::join!(MariaDb::start(Role::Secondary), MariaDb::start(Role::Secondary));
    let journal = primary.dir.path().join("journal");
    let reader = Reader::start(&primary, &journal, &[]).await;
    let a1 = Applier::start(&reader, &s1, "east", &[("REPLICA_START_OFFSET", "1")]);
    primary.exec(SCHEMA).await;
    primary.exec("INSERT INTO app.t (v, n) SELECT CONCAT('row-', seq), seq FROM app.seq_1_to_2000").await;
    caught_up(&primary, &reader, &s1, &a1).await;

    let mut client = reader.client().await;
    let address = format!("127.0.0.1:{}", other.port);
    let answer = client.switch_primary(SwitchPrimaryRequest { address: address.clone() }).await.expect("switch");
    assert!(answer.into_inner().message.contains("server id 2"));
    eventually(WAIT, "the reader to follow the replica", || async {
        let info = reader.info().await;
        (info.primary_server_id == 2 && info.primary_connected && info.primary_address == address).then_some(())
    })
    .await;

    // Writes on the primary arrive through the replica; an initial copy reads the server the reader follows.
    primary.exec("UPDATE app.t SET n = n * 2 WHERE id % 7 = 0; DELETE FROM app.t WHERE id % 11 = 0").await;
    other.wait_replicated(&primary).await;
    let a2 = Applier::start(&reader, &s2, "west", &[]);
    copy_done(&s2, &a2, &reader, WAIT).await;
    for (s, a) in [(&s1, &a1), (&s2, &a2)] {
        caught_up(&primary, &reader, s, a).await;
        assert_same_data(&primary, s, "app").await;
    }

    // And back to the primary.
    let back = format!("127.0.0.1:{}", primary.port);
    client.switch_primary(SwitchPrimaryRequest { address: back.clone() }).await.expect("switch back");
    primary.exec("INSERT INTO app.t (v, n) VALUES ('back', 0)").await;
    for (s, a) in [(&s1, &a1), (&s2, &a2)] {
        caught_up(&primary, &reader, s, a).await;
        assert_same_data(&primary, s, "app").await;
    }
    let info = reader.info().await;
    assert_eq!((info.primary_server_id, info.primary_changes, info.primary_address), (1, 2, back));
    assert_journaled_once(&reader).await;
}
