//! Secondaries that also take local writes: conflicts (an insert of a key the secondary has, a change to a row it
//! lacks, a change to a row that is not the primary's before image) resolved by `REPLICA_CONFLICTS=overwrite`
//! (the primary wins) and `keep` (the secondary wins), each recorded in `replica_meta.conflicts`; under the default
//! `stop` an existing key and a missing row stop the applier, and a differing row takes the primary's change.

use tests::{assert_same_data, caught_up, Applier, MariaDb, Reader, Role};

const SCHEMA: &[&str] = &[
    "CREATE DATABASE c",
    "CREATE TABLE c.k (id INT PRIMARY KEY, v VARCHAR(20))",
    "CREATE TABLE c.nk (a INT, b VARCHAR(20))",
    "CREATE TABLE c.parent (id INT PRIMARY KEY, v VARCHAR(20))",
    "CREATE TABLE c.child (id INT PRIMARY KEY, parent_id INT, \
     FOREIGN KEY (parent_id) REFERENCES c.parent (id) ON DELETE CASCADE)",
    "INSERT INTO c.k VALUES (1,'one'),(2,'two'),(3,'three'),(4,'four'),(5,'five')",
    "INSERT INTO c.nk VALUES (1,'a'),(2,'b')",
    "INSERT INTO c.parent VALUES (1,'p1'),(2,'p2'),(3,'p3')",
    "INSERT INTO c.child VALUES (10,1),(11,2),(12,3)",
    // A string key, a binary column, microseconds, DECIMAL and NULL: rows that did not change locally must
    // compare equal, or every change to them would be reported.
    "CREATE TABLE c.s (code VARCHAR(10) PRIMARY KEY, bin VARBINARY(8), d DATETIME(6), amount DECIMAL(10,2), n INT)",
    "INSERT INTO c.s VALUES ('a', X'00ff', '2024-01-02 03:04:05.678901', 12.50, NULL),      ('B', X'', '2024-01-02 03:04:05.000000', -0.10, 7)",
];

/// What a reporting copy's users write on it meanwhile.
const LOCAL: &str = "INSERT INTO c.k VALUES (100,'local'); DELETE FROM c.k WHERE id = 2; \
    UPDATE c.k SET v = 'local' WHERE id IN (3, 4); DELETE FROM c.nk WHERE a = 1; \
    UPDATE c.parent SET v = 'local' WHERE id = 2; UPDATE c.s SET n = 8 WHERE code = 'B'";

const PRIMARY: &str = "INSERT INTO c.k VALUES (100,'primary'); UPDATE c.k SET v = 'p2' WHERE id = 2; \
    UPDATE c.k SET v = 'p3' WHERE id = 3; DELETE FROM c.k WHERE id = 4; UPDATE c.k SET v = 'p5' WHERE id = 5; \
    UPDATE c.nk SET b = 'a2' WHERE a = 1; UPDATE c.parent SET v = 'p' WHERE id = 2;     UPDATE c.s SET amount = amount + 1";

async fn conflicts(secondary: &MariaDb) -> Vec<(String, String, String, String)> {
    secondary
        .query("SELECT table_name, row_key, kind, action FROM replica_meta.conflicts ORDER BY table_name, row_key")
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_from_local_writes_are_overwritten_or_kept_and_each_is_recorded() {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    for stmt in SCHEMA {
        primary.exec(stmt).await;
    }
    let over = MariaDb::start(Role::Secondary).await;
    let keep = MariaDb::start(Role::Secondary).await;
    let a =
        Applier::start(&reader, &over, "over", &[("REPLICA_START_OFFSET", "1"), ("REPLICA_CONFLICTS", "overwrite")]);
    let b = Applier::start(&reader, &keep, "keep", &[("REPLICA_START_OFFSET", "1"), ("REPLICA_CONFLICTS", "keep")]);
    caught_up(&primary, &reader, &over, &a).await;
    caught_up(&primary, &reader, &keep, &b).await;
    for s in [&over, &keep] {
        s.exec(LOCAL).await;
    }
    primary.exec(PRIMARY).await;
    caught_up(&primary, &reader, &over, &a).await;
    caught_up(&primary, &reader, &keep, &b).await;

    // The primary wins: the overwriting secondary ends equal to the primary.
    assert_same_data(&primary, &over, "c").await;
    // The secondary wins: its rows stay, every other change is applied.
    let k: Vec<(i32, String)> = keep.query("SELECT id, v FROM c.k ORDER BY id").await;
    let want = [(1, "one"), (3, "local"), (4, "local"), (5, "p5"), (100, "local")];
    assert_eq!(k, want.iter().map(|(i, v)| (*i, v.to_string())).collect::<Vec<_>>());
    let nk: Vec<(i32, String)> = keep.query("SELECT a, b FROM c.nk ORDER BY a").await;
    assert_eq!(nk, vec![(2, "b".to_string())]);
    let parent: Vec<(i32, String)> = keep.query("SELECT id, v FROM c.parent ORDER BY id").await;
    assert_eq!(parent[1], (2, "local".to_string()));

    for (s, action) in [(&over, "overwritten"), (&keep, "kept")] {
        let got = conflicts(s).await;
        let kinds: Vec<(&str, &str, &str)> =
            got.iter().map(|(t, key, kind, _)| (t.as_str(), key.as_str(), kind.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                ("k", "(100)", "exists"),
                ("k", "(2)", "missing"),
                ("k", "(3)", "differs"),
                ("k", "(4)", "differs"),
                ("nk", "(1, 'a')", "missing"),
                ("parent", "(2)", "differs"),
                ("s", "('B')", "differs"),
            ],
            "{action}"
        );
        assert!(got.iter().all(|(.., a)| a == action), "{got:?}");
    }
    assert!(a.log_text().contains("conflict: the secondary's row was not what the primary changed"));
    assert!(!a.log_text().contains("ERROR") && !b.log_text().contains("ERROR"), "{}", b.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_default_stop_policy_an_existing_key_and_a_missing_row_stop_the_applier_and_a_differing_row_takes_the_primarys(
) {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    for stmt in SCHEMA {
        primary.exec(stmt).await;
    }
    let sec = MariaDb::start(Role::Secondary).await;
    // A consumer name with a quote and a backslash: the checkpoint is written with escaped literals.
    let mut a = Applier::start(&reader, &sec, r"strict's\\x", &[("REPLICA_START_OFFSET", "1")]);
    caught_up(&primary, &reader, &sec, &a).await;

    // exists: the primary inserts a key the secondary has.
    sec.exec("INSERT INTO c.k VALUES (100, 'local')").await;
    primary.exec("INSERT INTO c.k VALUES (100, 'primary')").await;
    let status = a.wait_exit(std::time::Duration::from_secs(60)).unwrap_or_else(|| panic!("{}", a.log_text()));
    assert!(!status.success());
    let log = a.log_text();
    assert!(log.contains("Duplicate entry") && log.contains("`c`.`k`"), "{log}");
    sec.exec("DELETE FROM c.k WHERE id = 100").await;
    a.spawn();
    caught_up(&primary, &reader, &sec, &a).await;

    // missing: the primary updates a row the secondary lacks.
    sec.exec("DELETE FROM c.k WHERE id = 2").await;
    primary.exec("UPDATE c.k SET v = 'p2' WHERE id = 2").await;
    let status = a.wait_exit(std::time::Duration::from_secs(60)).unwrap_or_else(|| panic!("{}", a.log_text()));
    assert!(!status.success());
    let log = a.log_text();
    assert!(log.contains("the secondary has drifted") && log.contains("`c`.`k`"), "{log}");
    sec.exec("INSERT INTO c.k VALUES (2, 'two')").await;
    a.spawn();
    caught_up(&primary, &reader, &sec, &a).await;

    // differs: not looked for; the primary's change is applied by key and the row ends as on the primary.
    sec.exec("UPDATE c.k SET v = 'local' WHERE id = 3").await;
    primary.exec("UPDATE c.k SET v = 'p3' WHERE id = 3").await;
    caught_up(&primary, &reader, &sec, &a).await;
    assert_same_data(&primary, &sec, "c").await;
    assert!(conflicts(&sec).await.is_empty(), "nothing is recorded as a conflict under stop");
}
