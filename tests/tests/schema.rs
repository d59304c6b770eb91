//! Real schemas: triggers and scheduled events that must not apply their effects twice on a secondary, values
//! that only a non-strict primary can store, foreign keys, counters, partitions, sequences and system-versioned
//! history, on the copy and on the stream.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tests::{assert_same_data, caught_up, copy_done, eventually, Applier, MariaDb, Reader, Role};

const WAIT: Duration = Duration::from_secs(40);

const TRIGGERS: &str = "
CREATE DATABASE tr;
CREATE TABLE tr.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT, note VARCHAR(20));
CREATE TABLE tr.audit (id INT PRIMARY KEY AUTO_INCREMENT, what VARCHAR(20), t_id INT, v INT);
CREATE TABLE tr.ticks (id INT PRIMARY KEY AUTO_INCREMENT, at DATETIME(6));
CREATE TRIGGER tr.t_bi BEFORE INSERT ON tr.t FOR EACH ROW SET NEW.note = CONCAT('bi:', NEW.v);
CREATE TRIGGER tr.t_ai AFTER INSERT ON tr.t FOR EACH ROW INSERT INTO tr.audit (what, t_id, v) VALUES ('ai', NEW.id, NEW.v);
CREATE TRIGGER tr.t_bu BEFORE UPDATE ON tr.t FOR EACH ROW BEGIN SET NEW.note = CONCAT('bu:', NEW.v); INSERT INTO tr.audit (what, t_id, v) VALUES ('bu', OLD.id, OLD.v); END;
CREATE TRIGGER tr.t_au AFTER UPDATE ON tr.t FOR EACH ROW INSERT INTO tr.audit (what, t_id, v) VALUES ('au', NEW.id, NEW.v);
CREATE TRIGGER tr.t_bd BEFORE DELETE ON tr.t FOR EACH ROW INSERT INTO tr.audit (what, t_id, v) VALUES ('bd', OLD.id, OLD.v);
CREATE TRIGGER tr.t_ad AFTER DELETE ON tr.t FOR EACH ROW INSERT INTO tr.audit (what, t_id, v) VALUES ('ad', OLD.id, NULL);
CREATE EVENT tr.tick ON SCHEDULE EVERY 1 SECOND DO INSERT INTO tr.ticks (at) VALUES (NOW(6));
";

/// A primary, its reader and a secondary whose applier `name` streams from the first journal offset (both
/// start empty: no copy).
async fn streaming(name: &str) -> (MariaDb, Reader, MariaDb, Applier) {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let applier = Applier::start(&reader, &secondary, name, &[("REPLICA_START_OFFSET", "1")]);
    (primary, reader, secondary, applier)
}

async fn auto_increment(db: &MariaDb, table: &str) -> Vec<Option<u64>> {
    db.query(&format!(
        "SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'tr' AND TABLE_NAME = '{table}'"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn triggers_and_events_of_the_primary_take_effect_once_on_the_secondary() {
    let primary = MariaDb::start_with(Role::Primary, 1, &["--event-scheduler=ON"]).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &["--event-scheduler=ON"]).await;
    let a = Applier::start(&reader, &secondary, "s", &[("REPLICA_START_OFFSET", "1")]);
    primary.exec(TRIGGERS).await;
    for i in 0..20 {
        primary.exec(&format!("INSERT INTO tr.t (v) VALUES ({i}), ({})", i + 100)).await;
    }
    primary.exec("UPDATE tr.t SET v = v + 1 WHERE id % 3 = 0; DELETE FROM tr.t WHERE id % 5 = 0").await;
    primary.exec("INSERT INTO tr.t (v) VALUES (7); UPDATE tr.t SET v = 8 WHERE v = 7").await;
    // The event runs on the primary; its rows arrive through the journal, and the secondary's copy of it is off.
    eventually(WAIT, "the event to run on the primary", || async {
        let n: Vec<u64> = primary.query("SELECT COUNT(*) FROM tr.ticks").await;
        (n[0] >= 2).then_some(())
    })
    .await;
    caught_up(&primary, &reader, &secondary, &a).await;
    let status: Vec<String> =
        secondary.query("SELECT STATUS FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'tr'").await;
    assert_eq!(status, vec!["SLAVESIDE_DISABLED".to_owned()], "a replicated event does not run on the secondary");
    primary.exec("DROP EVENT tr.tick").await;
    caught_up(&primary, &reader, &secondary, &a).await;

    assert_same_data(&primary, &secondary, "tr").await;
    let audit: Vec<u64> = secondary.query("SELECT COUNT(*) FROM tr.audit").await;
    assert!(audit[0] > 40, "the triggers' rows came through the journal: {audit:?}");
    for table in ["t", "audit", "ticks"] {
        assert_eq!(
            auto_increment(&secondary, table).await,
            auto_increment(&primary, table).await,
            "tr.{table}: the same AUTO_INCREMENT counter"
        );
    }
    let triggers: Vec<u64> =
        secondary.query("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'tr'").await;
    assert_eq!(triggers, vec![6], "the triggers exist on the secondary");
    // Promotable: a write by anyone but the applier fires them.
    secondary.exec("INSERT INTO tr.t (v) VALUES (555)").await;
    let fired: Vec<(String, String)> =
        secondary.query("SELECT t.note, a.what FROM tr.t t JOIN tr.audit a ON a.t_id = t.id WHERE t.v = 555").await;
    assert_eq!(fired, vec![("bi:555".to_owned(), "ai".to_owned())]);
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());
}

/// Values a non-strict primary stores and a strict session refuses (or changes).
const LOOSE: &str = "
SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO';
INSERT INTO loose.vals VALUES
  (1, 'zzz', '0000-00-00', '2020-00-15 10:00:00', 'ab', 1000, -5),
  (2, 'b', '2021-02-00', '0000-00-00 00:00:00', 'x  ', -1000, 70000),
  (3, '', '2021-13-45', NULL, NULL, 1, 1);
INSERT INTO loose.keyless VALUES ('nope', 1), ('a', 2), ('', 3);
INSERT INTO loose.ids VALUES (0, 'zero'), (5, 'five');
";

#[tokio::test(flavor = "multi_thread")]
async fn values_only_a_non_strict_primary_stores_reach_the_secondary_on_copy_and_stream() {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    primary
        .exec(
            "CREATE DATABASE loose;
             CREATE TABLE loose.vals (id INT PRIMARY KEY, e ENUM('a','b'), d DATE, dt DATETIME, c CHAR(5),
               n TINYINT, s SMALLINT UNSIGNED);
             CREATE TABLE loose.keyless (e ENUM('a','b'), v INT);
             CREATE TABLE loose.ids (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(10));",
        )
        .await;
    primary.exec(LOOSE).await;
    // The copy path: these rows exist before the applier starts.
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let a = Applier::start(&reader, &secondary, "loose", &[]);
    copy_done(&secondary, &a, &reader, WAIT).await;
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "loose").await;
    // Even a copy shorter than a progress tick reports its transfer statistics.
    eventually(WAIT, "the copy's statistics in the log", || async {
        a.log_text().contains("copy finished").then_some(())
    })
    .await;
    // The stream path: the same values again, as inserts and as updates.
    primary
        .exec(
            &LOOSE
                .replace("(1, ", "(11, ")
                .replace("(2, ", "(12, ")
                .replace("(3, ", "(13, ")
                .replace("(0, 'zero')", "(6, 'six')")
                .replace("(5, 'five')", "(7, 'seven')"),
        )
        .await;
    primary
        .exec(
            "SET SESSION sql_mode = '';
             UPDATE loose.vals SET e = 'nope', d = '0000-00-00' WHERE id = 2;
             UPDATE loose.keyless SET e = 'bad' WHERE v = 2;
             UPDATE loose.vals SET e = 'a' WHERE id = 1;",
        )
        .await;
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "loose").await;
    let empty: Vec<u64> = secondary.query("SELECT COUNT(*) FROM loose.vals WHERE e = ''").await;
    assert!(empty[0] >= 3, "the ENUM's empty value is kept: {empty:?}");
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());
}

const FOREIGN_KEYS: &str = "
CREATE DATABASE fk;
CREATE TABLE fk.parent (id INT PRIMARY KEY, name VARCHAR(20));
CREATE TABLE fk.child (id INT PRIMARY KEY, parent_id INT, v INT,
  FOREIGN KEY (parent_id) REFERENCES fk.parent (id) ON DELETE CASCADE ON UPDATE CASCADE);
CREATE TABLE fk.grandchild (id INT PRIMARY KEY, child_id INT,
  FOREIGN KEY (child_id) REFERENCES fk.child (id) ON DELETE CASCADE ON UPDATE CASCADE);
CREATE TABLE fk.orphanable (id INT PRIMARY KEY, parent_id INT NULL,
  FOREIGN KEY (parent_id) REFERENCES fk.parent (id) ON DELETE SET NULL ON UPDATE SET NULL);
CREATE TABLE fk.emp (id INT PRIMARY KEY, manager_id INT NULL,
  FOREIGN KEY (manager_id) REFERENCES fk.emp (id) ON DELETE CASCADE);
CREATE TABLE fk.plain (id INT PRIMARY KEY, v INT);
";

#[tokio::test(flavor = "multi_thread")]
async fn foreign_key_cascades_happen_on_the_secondary_as_they_did_on_the_primary() {
    let (primary, reader, secondary, a) = streaming("s").await;
    primary.exec(FOREIGN_KEYS).await;
    let values = |n: i32, f: &dyn Fn(i32) -> String| (1..=n).map(f).collect::<Vec<_>>().join(",");
    primary
        .exec(&format!(
            "INSERT INTO fk.parent VALUES {}; INSERT INTO fk.child VALUES {}; INSERT INTO fk.grandchild VALUES {};
             INSERT INTO fk.orphanable VALUES {}; INSERT INTO fk.emp VALUES (1, NULL), (2, 1), (3, 1), (4, 2), (5, 4), (6, 3);
             INSERT INTO fk.plain VALUES {}",
            values(10, &|i| format!("({i}, 'p{i}')")),
            values(30, &|i| format!("({i}, {}, {i})", i % 10 + 1)),
            values(60, &|i| format!("({i}, {})", i % 30 + 1)),
            values(10, &|i| format!("({i}, {i})")),
            values(10, &|i| format!("({i}, {i})")),
        ))
        .await;
    // Deletes cascade two levels down and set NULL; a key update cascades; an update that keeps the key must
    // not cascade as a delete would; a self-referencing tree is cut at a branch.
    primary.exec("DELETE FROM fk.parent WHERE id IN (1, 2)").await;
    primary
        .exec("UPDATE fk.parent SET id = 100 WHERE id = 3; UPDATE fk.parent SET name = 'renamed' WHERE id = 4")
        .await;
    primary.exec("UPDATE fk.child SET id = 1000 WHERE id = 4").await;
    primary.exec("DELETE FROM fk.emp WHERE id = 2").await;
    // Several statements in one transaction, mixed with a table outside foreign keys.
    primary
        .exec(
            "START TRANSACTION; UPDATE fk.plain SET v = v + 1; DELETE FROM fk.parent WHERE id = 6;
             UPDATE fk.parent SET id = 60 WHERE id = 7; INSERT INTO fk.parent VALUES (7, 'again');
             INSERT INTO fk.child VALUES (31, 7, 0); UPDATE fk.plain SET v = v + 1; COMMIT",
        )
        .await;
    // A session with checks off: no cascade on the primary, and none on the secondary either.
    primary.exec("SET foreign_key_checks = 0; INSERT INTO fk.child VALUES (999, 12345, 1); DELETE FROM fk.parent WHERE id = 5").await;
    caught_up(&primary, &reader, &secondary, &a).await;

    assert_same_data(&primary, &secondary, "fk").await;
    let kept: Vec<u64> = secondary.query("SELECT COUNT(*) FROM fk.child WHERE parent_id = 4").await;
    assert_eq!(kept, vec![3], "an update of a parent's other columns keeps its children");
    let orphans: Vec<u64> = secondary.query("SELECT COUNT(*) FROM fk.child WHERE parent_id IN (5, 12345)").await;
    assert_eq!(orphans, vec![4], "changes made with checks off stay unchecked");
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());
}

/// Rows copied of `fk.table` on the secondary (0 before its copy state exists).
async fn fk_rows_copied(secondary: &MariaDb, table: &str) -> u64 {
    let sql = format!(
        "SELECT COALESCE(MAX(rows_copied), 0) FROM replica_meta.copy_state WHERE schema_name = 'fk' AND table_name = '{table}'"
    );
    let copied: Option<u64> = secondary.conn().await.query_first(sql).await.ok().flatten();
    copied.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn cascades_on_the_primary_during_the_initial_copy_reach_rows_already_copied() {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    primary.exec(FOREIGN_KEYS).await;
    // The first children copied belong to the last parents copied (child i -> parent 401 - i), and so on down.
    let values = |n: i32, f: &dyn Fn(i32) -> String| (1..=n).map(f).collect::<Vec<_>>().join(",");
    primary
        .exec(&format!(
            "INSERT INTO fk.parent VALUES {}; INSERT INTO fk.child VALUES {}; INSERT INTO fk.grandchild VALUES {};
             INSERT INTO fk.orphanable VALUES {}; INSERT INTO fk.plain VALUES {}",
            values(400, &|i| format!("({i}, 'p{i}')")),
            values(400, &|i| format!("({i}, {}, {i})", 401 - i)),
            values(400, &|i| format!("({i}, {i})")),
            values(400, &|i| format!("({i}, {})", 401 - i)),
            values(400, &|i| format!("({i}, {i})")),
        ))
        .await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    // Small chunks, every table at once, slowly: the copy takes several seconds.
    let admin = format!("127.0.0.1:{}", tests::free_port());
    let env = [
        ("TRANSFER_BATCH_SIZE", "20"),
        ("REPLICA_COPY_WORKERS", "6"),
        ("REPLICA_COPY_ROWS_PER_SECOND", "500"),
        ("REPLICA_ADMIN_ADDR", admin.as_str()),
    ];
    let mut a = Applier::start(&reader, &secondary, "fkcopy", &env);
    eventually(WAIT, "the parent table's copy to be under way", || async {
        (fk_rows_copied(&secondary, "parent").await >= 40).then_some(())
    })
    .await;
    assert!(fk_rows_copied(&secondary, "parent").await < 200, "the copy ended too soon for this test");
    // While the parents are being copied: deletes that cascade (and set NULL) into rows whose parents are not
    // copied yet, a key update that cascades, new children of parents not copied yet.
    primary.exec("DELETE FROM fk.parent WHERE id > 200").await;
    primary.exec("UPDATE fk.parent SET id = 1200 WHERE id = 200; UPDATE fk.parent SET id = 1199 WHERE id = 199").await;
    // The order survives a crash in the middle of the copy.
    a.kill9();
    a.spawn();
    primary
        .exec("INSERT INTO fk.child VALUES (501, 150, 0), (502, 1199, 0); INSERT INTO fk.grandchild VALUES (501, 501)")
        .await;
    primary.exec("DELETE FROM fk.parent WHERE id = 150").await;
    copy_done(&secondary, &a, &reader, WAIT).await;
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "fk").await;
    let left: Vec<u64> = secondary.query("SELECT COUNT(*) FROM fk.child").await;
    assert_eq!(left, vec![200], "children of deleted parents are gone, the two new ones with them");
    assert!(a.log_text().contains("table copied after the tables it references"), "{}", a.log_text());

    // A re-copy of the parent alone: its children are re-copied after it, so parents deleted on the primary
    // before the re-copy reaches them leave no orphans behind (the copy is paused to make sure of that).
    let grpc = |method: &str, body: &str| tests::run_grpcurl(&["-plaintext", "-d", body, &admin, method]);
    grpc("replica.v1.Applier/PauseCopy", "{}");
    let answer = grpc("replica.v1.Applier/ResyncTable", r#"{"schema": "fk", "table": "parent"}"#);
    for child in ["then the tables that reference it", "fk.child", "fk.orphanable", "fk.grandchild"] {
        assert!(answer.contains(child), "{answer}");
    }
    primary.exec("DELETE FROM fk.parent WHERE id BETWEEN 100 AND 198").await;
    grpc("replica.v1.Applier/ResumeCopy", "{}");
    copy_done(&secondary, &a, &reader, WAIT).await;
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "fk").await;
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_increment_counters_match_after_rows_inserted_and_deleted_in_one_transaction() {
    let (primary, reader, secondary, a) = streaming("s").await;
    primary
        .exec(
            "CREATE DATABASE ai; CREATE TABLE ai.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT UNIQUE);
             CREATE TABLE ai.plain (id INT PRIMARY KEY, v INT);
             INSERT INTO ai.t (v) VALUES (1), (2), (3);
             START TRANSACTION; INSERT INTO ai.t (v) VALUES (4), (5); DELETE FROM ai.t WHERE v IN (4, 5);
               INSERT INTO ai.plain VALUES (1, 1); DELETE FROM ai.plain WHERE id = 1; COMMIT;
             START TRANSACTION; INSERT INTO ai.t (v) VALUES (6); UPDATE ai.t SET id = 100 WHERE v = 6;
               DELETE FROM ai.t WHERE id = 100; UPDATE ai.t SET v = 7 WHERE v = 3; COMMIT;",
        )
        .await;
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "ai").await;
    let sql = "SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'ai' AND TABLE_NAME = 't'";
    let on_primary: Vec<Option<u64>> = primary.query(sql).await;
    let on_secondary: Vec<Option<u64>> = secondary.query(sql).await;
    assert_eq!(on_secondary, on_primary, "the AUTO_INCREMENT counter ends where the primary's is");
    assert_eq!(on_primary, vec![Some(101)]);
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_apply_in_place_and_rows_swapping_unique_values_in_one_transaction_do_not_collide() {
    let (primary, reader, secondary, a) = streaming("s").await;
    primary
        .exec(
            "CREATE DATABASE up; CREATE TABLE up.u (id INT PRIMARY KEY, code INT NOT NULL UNIQUE, v VARCHAR(10));
             CREATE TABLE up.p (a INT, b VARCHAR(5), v INT, w DATETIME(6), PRIMARY KEY (a, b));
             INSERT INTO up.u VALUES (1, 1, 'one'), (2, 2, 'two'), (3, 3, 'three');
             INSERT INTO up.p SELECT seq % 7, CONCAT('b', seq), seq, '2024-01-02 03:04:05.000001' FROM up.seq_1_to_300;",
        )
        .await;
    // Applied first, so that the changes below find the rows there (not folded into one insert with them).
    caught_up(&primary, &reader, &secondary, &a).await;
    primary
        .exec(
            "START TRANSACTION; UPDATE up.u SET code = 0 WHERE id = 1; UPDATE up.u SET code = 1 WHERE id = 2;
               UPDATE up.u SET code = 2, v = 'uno' WHERE id = 1; UPDATE up.u SET v = 'tres' WHERE id = 3; COMMIT;
             START TRANSACTION; UPDATE up.p SET v = v * 2, w = w + INTERVAL 1 MICROSECOND WHERE v % 3 = 0;
               DELETE FROM up.p WHERE v % 5 = 0; INSERT INTO up.p VALUES (9, 'new', 1, NULL);
               UPDATE up.p SET v = NULL WHERE a = 1 AND b = 'b1'; COMMIT;",
        )
        .await;
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "up").await;
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());
    // An update in place of a row the secondary lacks is drift, as a delete of it is.
    secondary.exec("DELETE FROM up.p WHERE a = 2 AND b = 'b2'").await;
    primary.exec("UPDATE up.p SET v = 0 WHERE a = 2 AND b = 'b2'").await;
    let mut a = a;
    let status = a.wait_exit(std::time::Duration::from_secs(60)).unwrap_or_else(|| panic!("{}", a.log_text()));
    assert!(!status.success());
    assert!(a.log_text().contains("0 of 1 rows the primary updated were found"), "{}", a.log_text());
}

const OBJECTS: &str = "
CREATE DATABASE obj;
CREATE TABLE obj.parts (id INT PRIMARY KEY, v INT) PARTITION BY HASH (id) PARTITIONS 4;
CREATE TABLE obj.ranges (id INT, at DATE, v INT, PRIMARY KEY (id, at)) PARTITION BY RANGE (YEAR(at)) (
  PARTITION p2020 VALUES LESS THAN (2021), PARTITION p2021 VALUES LESS THAN (2022), PARTITION pmax VALUES LESS THAN MAXVALUE);
CREATE SEQUENCE obj.seq START WITH 100 INCREMENT BY 5;
";

/// Writes that touch every object of `obj`; `base` keeps the keys of two rounds apart.
fn object_writes(base: u32) -> String {
    let mut sql = String::new();
    for i in base..base + 20 {
        sql += &format!(
            "INSERT INTO obj.parts VALUES ({i}, {i}); INSERT INTO obj.ranges VALUES ({i}, '202{}-06-01', {i}); \
             SELECT NEXTVAL(obj.seq);",
            i % 4
        );
    }
    sql += &format!(
        "UPDATE obj.parts SET id = id + 1000 WHERE id = {base}; UPDATE obj.ranges SET at = '2020-01-01' WHERE id = {};
         DELETE FROM obj.parts WHERE id = {};",
        base + 1,
        base + 2
    );
    sql
}

/// What a native replica would hold beyond the rows: rows per partition, and the sequence's state.
async fn object_state(db: &MariaDb) -> (Vec<(String, u64)>, Vec<(i64, i64)>) {
    let partitions = db
        .query(
            "SELECT 'p0', COUNT(*) FROM obj.parts PARTITION (p0) UNION ALL SELECT 'p1', COUNT(*) FROM obj.parts PARTITION (p1)
             UNION ALL SELECT 'p2020', COUNT(*) FROM obj.ranges PARTITION (p2020)
             UNION ALL SELECT 'pmax', COUNT(*) FROM obj.ranges PARTITION (pmax)",
        )
        .await;
    let sequence = db.query("SELECT next_not_cached_value, increment FROM obj.seq").await;
    (partitions, sequence)
}

#[tokio::test(flavor = "multi_thread")]
async fn partitioned_tables_and_sequences_end_as_on_the_primary_on_copy_and_stream() {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    primary.exec(OBJECTS).await;
    primary.exec(&object_writes(1)).await;
    // The copy path: these rows and the sequence's state exist before the applier starts.
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let a = Applier::start(&reader, &secondary, "obj", &[]);
    copy_done(&secondary, &a, &reader, WAIT).await;
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "obj").await;
    assert_eq!(object_state(&secondary).await, object_state(&primary).await, "after the copy");
    // The stream path.
    primary.exec(&object_writes(101)).await;
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "obj").await;
    assert_eq!(object_state(&secondary).await, object_state(&primary).await, "after the stream");
    let next: Vec<i64> = secondary.query("SELECT NEXTVAL(obj.seq)").await;
    let want: Vec<i64> = primary.query("SELECT NEXTVAL(obj.seq)").await;
    // As on a native replica: the secondary starts past the primary's cached values, so a promoted secondary
    // never hands out a value the primary already did.
    assert!(next[0] >= want[0], "the secondary's next value {next:?} is not below the primary's {want:?}");
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());
}

/// Every row of `schema.table`, history included, with its period columns `start` and `end`, as text.
async fn all_versions(db: &MariaDb, table: &str, start: &str, end: &str) -> Vec<Vec<Option<String>>> {
    let rows: Vec<mysql_async::Row> =
        db.query(&format!("SELECT *, {start}, {end} FROM {table} FOR SYSTEM_TIME ALL ORDER BY {end}, 1, 2")).await;
    rows.into_iter().map(|row| (0..row.len()).map(|i| row.get::<Option<String>, _>(i).flatten()).collect()).collect()
}

const VERSIONED: &str = "
CREATE DATABASE hv;
CREATE TABLE hv.imp (id INT PRIMARY KEY, v VARCHAR(20), n INT) WITH SYSTEM VERSIONING;
CREATE TABLE hv.exp (id INT PRIMARY KEY, v INT,
  rs TIMESTAMP(6) GENERATED ALWAYS AS ROW START INVISIBLE, re TIMESTAMP(6) GENERATED ALWAYS AS ROW END INVISIBLE,
  PERIOD FOR SYSTEM_TIME (rs, re)) WITH SYSTEM VERSIONING;
CREATE TABLE hv.keyless (v INT, w INT) WITH SYSTEM VERSIONING;
CREATE TABLE hv.plain (id INT PRIMARY KEY, v INT);
";

#[tokio::test(flavor = "multi_thread")]
async fn system_versioned_tables_keep_the_primarys_history_row_for_row_with_its_timestamps() {
    let (primary, reader, secondary, a) = streaming("hv").await;
    primary.exec(VERSIONED).await;
    primary
        .exec(
            "INSERT INTO hv.imp SELECT seq, CONCAT('v', seq), seq FROM hv.seq_1_to_50;
             INSERT INTO hv.exp SELECT seq, seq FROM hv.seq_1_to_20;
             INSERT INTO hv.keyless VALUES (1, 1), (2, 2), (2, 2), (3, 3);
             UPDATE hv.imp SET n = n + 1 WHERE id <= 10;
             DELETE FROM hv.imp WHERE id > 45;
             START TRANSACTION; UPDATE hv.imp SET v = 'a' WHERE id = 1; UPDATE hv.imp SET v = 'b' WHERE id = 1;
               INSERT INTO hv.imp VALUES (100, 'new', 0); DELETE FROM hv.imp WHERE id = 2;
               UPDATE hv.exp SET v = -v WHERE id < 5; INSERT INTO hv.plain VALUES (1, 1); COMMIT;
             UPDATE hv.keyless SET w = 5 WHERE v = 2;
             DELETE FROM hv.keyless WHERE v = 1;
             UPDATE hv.exp SET id = id + 100 WHERE id = 20;",
        )
        .await;
    // History written directly (the primary's system_versioning_insert_history) and history purged.
    primary
        .exec(
            "SET system_versioning_insert_history = 1;
             INSERT INTO hv.imp (id, v, n, row_start, row_end) VALUES (7, 'old', 0, '2020-01-01 00:00:00', '2020-06-01 00:00:00.5');
             SET system_versioning_insert_history = 0;
             DELETE HISTORY FROM hv.exp;",
        )
        .await;
    primary.exec("DELETE HISTORY FROM hv.imp BEFORE SYSTEM_TIME '2021-01-01'").await;
    caught_up(&primary, &reader, &secondary, &a).await;
    for (table, start, end) in
        [("hv.imp", "row_start", "row_end"), ("hv.exp", "rs", "re"), ("hv.keyless", "row_start", "row_end")]
    {
        let want = all_versions(&primary, table, start, end).await;
        assert!(!want.is_empty());
        assert_eq!(all_versions(&secondary, table, start, end).await, want, "{table}, every version");
    }
    assert_same_data(&primary, &secondary, "hv").await;
    let history: Vec<u64> =
        secondary.query("SELECT COUNT(*) FROM hv.imp FOR SYSTEM_TIME ALL WHERE row_end < NOW(6)").await;
    assert!(history[0] > 10, "history rows were replicated: {history:?}");
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());

    // The copy path: a new secondary gets every version, then keeps streaming.
    let fresh = MariaDb::start_with(Role::Secondary, 11, &[]).await;
    let admin = format!("127.0.0.1:{}", tests::free_port());
    let b = Applier::start(&reader, &fresh, "hvcopy", &[("REPLICA_ADMIN_ADDR", admin.as_str())]);
    copy_done(&fresh, &b, &reader, WAIT).await;
    primary.exec("UPDATE hv.imp SET n = n * 2 WHERE id < 20; DELETE FROM hv.keyless WHERE v = 3").await;
    caught_up(&primary, &reader, &fresh, &b).await;
    caught_up(&primary, &reader, &secondary, &a).await;
    for (table, start, end) in
        [("hv.imp", "row_start", "row_end"), ("hv.exp", "rs", "re"), ("hv.keyless", "row_start", "row_end")]
    {
        let want = all_versions(&primary, table, start, end).await;
        assert_eq!(all_versions(&fresh, table, start, end).await, want, "{table}, copied and streamed");
        assert_eq!(all_versions(&secondary, table, start, end).await, want, "{table}, streamed");
    }
    assert!(!b.log_text().contains("ERROR"), "{}", b.log_text());

    // Online verification compares every version: equal, then a history row planted on the secondary is found
    // and repaired (by a re-copy of the table, which is read whole).
    let (code, report) = tests::verify_once(&admin, &["--schema", "hv"]);
    assert_eq!(code, 0, "{report}");
    fresh
        .exec(
            "SET system_versioning_insert_history = 1;
             INSERT INTO hv.imp (id, v, n, row_start, row_end) VALUES (3, 'planted', 0, '2022-01-01', '2022-01-02')",
        )
        .await;
    let (code, report) = tests::verify_once(&admin, &["--schema", "hv", "--repair"]);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("hv.imp: repaired"), "{report}");
    let want = all_versions(&primary, "hv.imp", "row_start", "row_end").await;
    eventually(WAIT, "the re-copy to end equal to the primary", || async {
        let copying: Vec<u64> = fresh.query("SELECT COUNT(*) FROM replica_meta.copy_state WHERE state <> 'done'").await;
        let equal = copying == vec![0] && all_versions(&fresh, "hv.imp", "row_start", "row_end").await == want;
        equal.then_some(())
    })
    .await;

    // Transaction-precise versioning (ids local to each server): MariaDB logs its changes as statements, which
    // stop the reader, naming the statement and the way out.
    primary
        .exec(
            "CREATE TABLE hv.trx (id INT PRIMARY KEY, v INT, s BIGINT UNSIGNED GENERATED ALWAYS AS ROW START,
               e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END, PERIOD FOR SYSTEM_TIME (s, e)) WITH SYSTEM VERSIONING;
             INSERT INTO hv.trx (id, v) VALUES (1, 1)",
        )
        .await;
    eventually(WAIT, "the reader to stop on the transaction-versioned table", || async {
        reader.log_text().contains("versioned by transaction ids").then_some(())
    })
    .await;
    assert!(reader.log_text().contains("INSERT INTO hv.trx"), "{}", reader.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_runs_at_the_primarys_time_so_columns_it_fills_with_the_time_match() {
    let (primary, reader, secondary, a) = streaming("tm").await;
    primary.exec("CREATE DATABASE tm; CREATE TABLE tm.t (id INT PRIMARY KEY); INSERT INTO tm.t SELECT seq FROM tm.seq_1_to_5").await;
    // Existing rows take the DDL's time: an added audit column, and the row start of versioning added later.
    primary
        .exec(
            "ALTER TABLE tm.t ADD COLUMN at6 TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), ADD COLUMN at0 DATETIME DEFAULT NOW();
             ALTER TABLE tm.t ADD SYSTEM VERSIONING;",
        )
        .await;
    caught_up(&primary, &reader, &secondary, &a).await;
    assert_same_data(&primary, &secondary, "tm").await;
    let want = all_versions(&primary, "tm.t", "row_start", "row_end").await;
    assert_eq!(all_versions(&secondary, "tm.t", "row_start", "row_end").await, want);
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());
}
