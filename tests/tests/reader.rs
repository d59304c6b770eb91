//! replica-reader against real MariaDB primaries: exact values, transaction boundaries, DDL, crashes,
//! primary restarts, filters, grpcurl and purged binlogs.

use std::collections::BTreeMap;
use std::time::Duration;

use common::event::{ColumnType, Value};
use common::proto;
use mysql_async::prelude::Queryable;
use mysql_async::Value as My;
use tests::{ddl_statements, eventually, journaled, row_changes, run_grpcurl, MariaDb, Proxy, Reader, Role, REPL_PASS};

const WAIT: Duration = Duration::from_secs(60);

fn journal_dir(db: &MariaDb) -> std::path::PathBuf {
    db.dir.path().join("journal")
}

/// A value in one comparable text form.
fn canon_journal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Int(x) => x.to_string(),
        Value::UInt(x) => x.to_string(),
        Value::Float(x) => format!("f32:{:08x}", x.to_bits()),
        Value::Double(x) => format!("f64:{:016x}", x.to_bits()),
        Value::Decimal(s) => format!("dec:{s}"),
        Value::Text(s) => format!("t:{s}"),
        Value::Bytes(b) => format!("x:{}", hex(b)),
        Value::Year(y) => y.to_string(),
        Value::Timestamp { seconds, micros } => common::event::utc_from_unix(*seconds, *micros).to_string(),
        other => other.to_string(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a SELECT returned (binary protocol, UTC session), read as the journal's column type says.
fn canon_select(v: &My, ty: ColumnType, text: bool) -> String {
    match v {
        My::NULL => "NULL".into(),
        My::Int(x) => x.to_string(),
        My::UInt(x) => x.to_string(),
        My::Float(x) => format!("f32:{:08x}", x.to_bits()),
        My::Double(x) => format!("f64:{:016x}", x.to_bits()),
        My::Bytes(b) if ty == ColumnType::Decimal => format!("dec:{}", String::from_utf8_lossy(b)),
        My::Bytes(b) if ty == ColumnType::Year => String::from_utf8_lossy(b).into_owned(),
        My::Bytes(b) if text => format!("t:{}", String::from_utf8_lossy(b)),
        My::Bytes(b) => format!("x:{}", hex(b)),
        My::Date(y, m, d, ..) if ty == ColumnType::Date => Value::Date { year: *y, month: *m, day: *d }.to_string(),
        My::Date(year, month, day, hour, minute, second, micros) => Value::DateTime {
            year: *year,
            month: *month,
            day: *day,
            hour: *hour,
            minute: *minute,
            second: *second,
            micros: *micros,
        }
        .to_string(),
        My::Time(negative, days, h, minutes, seconds, micros) => Value::Time {
            negative: *negative,
            hours: days * 24 + u32::from(*h),
            minutes: *minutes,
            seconds: *seconds,
            micros: *micros,
        }
        .to_string(),
    }
}

const ALL_TYPES: &str = "CREATE TABLE t.all_types (
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
    de DECIMAL(65,30), f FLOAT, d DOUBLE, b1 BIT(1), b64 BIT(64),
    c CHAR(10), vc VARCHAR(100), l1 VARCHAR(50) CHARACTER SET latin1, bin BINARY(16), vb VARBINARY(20),
    bl BLOB, lt LONGTEXT, e ENUM('a','b','ü'), s SET('x','y','z'),
    dt DATE, tm TIME(6), dtt DATETIME(6), ts TIMESTAMP(6) NULL, y YEAR, j JSON, g GEOMETRY, u UUID, ip6 INET6
) DEFAULT CHARSET=utf8mb4";

/// Columns whose SELECT text form differs from their stored bytes: compared as stored bytes.
const AS_BINARY: &[&str] = &["u", "ip6"];

#[tokio::test(flavor = "multi_thread")]
async fn journal_holds_exactly_the_values_a_select_returns_for_every_column_type() {
    let db = MariaDb::start(Role::Primary).await;
    db.exec("CREATE DATABASE t").await;
    let reader = Reader::start(&db, &journal_dir(&db), &[]).await;
    db.exec(ALL_TYPES).await;
    db.exec(
        "SET SESSION sql_mode='';
         INSERT INTO t.all_types VALUES
         (1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
          '-99999999999999999999999999999999999.999999999999999999999999999999', -3.40282e38,
          -1.7976931348623157e308, b'0', b'0', 'a', '', 'é', 0x00, '', '', '', 'a', '', '0000-00-00',
          '-838:59:59.000000', '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', 0, '[]',
          ST_GeomFromText('POINT(0 0)'), '00000000-0000-0000-0000-000000000000', '::'),
         (2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807,
          18446744073709551615, '99999999999999999999999999999999999.999999999999999999999999999999', 3.40282e38,
          1.7976931348623157e308, b'1', 0xFFFFFFFFFFFFFFFF, '😀ab', CONCAT(REPEAT('x', 50), '😀'), 'ÿ€Œ',
          0x01020300000000000000000000000000, 0x00ff00, REPEAT(0x00ff, 50000), REPEAT('ü😀', 100000), 'ü', 'x,y,z',
          '9999-12-31', '838:59:59.999999', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', 2155,
          '{\"k\": \"v😀\", \"n\": [1, 2.5, null]}', ST_GeomFromText('LINESTRING(0 0, 1.5 2.25, -3 4)'),
          '123e4567-e89b-12d3-a456-426614174000', '2001:db8::ff00:42:8300'),
         (3, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, '0.000000000000000000000000000001', 1.5, -2.5e-300, b'1',
          0x0000000000000001, ' x', 'a\\'b\"c\\\\', 'café', 0x00000000000000000000000000000000, 0x000000, 0x00,
          '', 'b', 'y', '2024-02-29', '-00:00:00.000001', '2024-02-29 12:34:56.000001', '2000-01-01 00:00:00.5',
          1901, '{}', ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 0))'), 'ffffffff-ffff-ffff-ffff-ffffffffffff',
          '::ffff:1.2.3.0'),
         (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
          NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
         UPDATE t.all_types SET mi = -5, y = 0, e = 'ü' WHERE id = 3;
         DELETE FROM t.all_types WHERE id = 1;",
    )
    .await;

    // Rebuild the table from the journal: last after image per id, deleted ids removed.
    let records = eventually(WAIT, "the all-types changes in the journal", || async {
        let recs = reader.records().await;
        (row_changes(&recs).len() >= 6).then_some(recs)
    })
    .await;
    let mut columns: Vec<common::event::Column> = Vec::new();
    let mut state: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records {
        let record: common::event::Record = r.try_into().expect("valid wire record");
        if let common::event::Body::Transaction(changes) = record.body {
            for c in changes {
                columns = c.columns.clone();
                for row in c.rows {
                    match row {
                        common::event::RowChange::Insert { after } | common::event::RowChange::Update { after, .. } => {
                            state.insert(canon_journal(&after[0]), after);
                        }
                        common::event::RowChange::Delete { before } => {
                            state.remove(&canon_journal(&before[0]));
                        }
                    }
                }
            }
        }
    }
    assert_eq!(columns.len(), 34, "every column is described");
    assert_eq!(columns[0].name, "id");
    let select_list: Vec<String> = columns
        .iter()
        .map(|c| {
            if AS_BINARY.contains(&c.name.as_str()) {
                format!("CAST(`{}` AS BINARY)", c.name)
            } else {
                format!("`{}`", c.name)
            }
        })
        .collect();
    let mut conn = db.conn().await;
    let rows: Vec<mysql_async::Row> = conn
        .exec(format!("SELECT {} FROM t.all_types ORDER BY id", select_list.join(", ")), ())
        .await
        .expect("select all types");
    assert_eq!(rows.len(), state.len(), "same rows on the primary and in the journal");
    for (row, (_, journaled)) in rows.into_iter().zip(state) {
        let values = row.unwrap();
        for ((col, selected), journaled) in columns.iter().zip(values).zip(journaled) {
            let text = matches!(journaled, Value::Text(_));
            assert_eq!(
                canon_journal(&journaled),
                canon_select(&selected, col.ty, text),
                "column {} ({}): journal vs SELECT",
                col.name,
                col.ty
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_is_one_record_with_changes_in_order_and_a_rollback_leaves_nothing() {
    let db = MariaDb::start(Role::Primary).await;
    db.exec("CREATE DATABASE t; CREATE TABLE t.a (id INT PRIMARY KEY, v INT); CREATE TABLE t.b (id INT PRIMARY KEY)")
        .await;
    let reader = Reader::start(&db, &journal_dir(&db), &[]).await;
    let start = reader.info().await.last_offset;
    db.exec(
        "BEGIN; INSERT INTO t.a VALUES (1, 10); INSERT INTO t.b VALUES (1); UPDATE t.a SET v = 11 WHERE id = 1;
         INSERT INTO t.a VALUES (2, 20), (3, 30); DELETE FROM t.b WHERE id = 1; COMMIT;
         BEGIN; INSERT INTO t.a VALUES (99, 99); INSERT INTO t.b VALUES (99); ROLLBACK;
         INSERT INTO t.b VALUES (7);",
    )
    .await;
    reader.wait_for_offset(start + 2, WAIT).await;
    let records = reader.records().await;
    let new: Vec<_> = records.into_iter().filter(|r| r.offset > start).collect();
    assert_eq!(new.len(), 2, "one record per committed transaction, none for the rollback");
    let Some(proto::record::Body::Transaction(t)) = &new[0].body else { panic!("first record is a transaction") };
    let order: Vec<(String, i32, usize)> =
        t.changes.iter().flat_map(|c| c.rows.iter().map(move |r| (c.table.clone(), r.kind, c.rows.len()))).collect();
    use proto::row_change::Kind;
    let kinds: Vec<(String, i32)> = order.iter().map(|(t, k, _)| (t.clone(), *k)).collect();
    assert_eq!(
        kinds,
        vec![
            ("a".into(), Kind::Insert as i32),
            ("b".into(), Kind::Insert as i32),
            ("a".into(), Kind::Update as i32),
            ("a".into(), Kind::Insert as i32),
            ("a".into(), Kind::Insert as i32),
            ("b".into(), Kind::Delete as i32),
        ]
    );
    let all = row_changes(&new);
    let has_99 = |row: &tests::JournaledRow| {
        row.before.iter().chain(&row.after).any(|v| matches!(v.kind, Some(proto::value::Kind::Int(99))))
    };
    assert!(!all.iter().any(has_99), "nothing of the rolled-back transaction");
    assert!(!new[0].gtid.is_empty() && new[1].gtid != new[0].gtid, "each record carries its own GTID");
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_appears_as_records_in_order_with_the_dml_around_it() {
    let db = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&db, &journal_dir(&db), &[]).await;
    db.exec(
        "CREATE DATABASE d;
         CREATE TABLE d.t (id INT PRIMARY KEY);
         INSERT INTO d.t VALUES (1);
         ALTER TABLE d.t ADD COLUMN v VARCHAR(10);
         INSERT INTO d.t VALUES (2, 'x');
         RENAME TABLE d.t TO d.u;
         INSERT INTO d.u VALUES (3, 'y');
         TRUNCATE TABLE d.u;
         DROP TABLE d.u;",
    )
    .await;
    let records = eventually(WAIT, "nine DDL and DML records", || async {
        let r = reader.records().await;
        (r.len() >= 9).then_some(r)
    })
    .await;
    let shape: Vec<String> = records
        .iter()
        .map(|r| match &r.body {
            Some(proto::record::Body::Ddl(d)) => d.statement.split_whitespace().next().unwrap_or("").to_uppercase(),
            Some(proto::record::Body::Transaction(t)) => format!("ROWS:{}", t.changes[0].table),
            Some(proto::record::Body::Piece(_)) => "PIECE".into(),
            None => "?".into(),
        })
        .collect();
    assert_eq!(
        shape,
        vec!["CREATE", "CREATE", "ROWS:t", "ALTER", "ROWS:t", "RENAME", "ROWS:u", "TRUNCATE", "DROP"],
        "{:?}",
        ddl_statements(&records)
    );
    // The row after the ALTER carries the new column.
    let Some(proto::record::Body::Transaction(t)) = &records[4].body else { panic!("rows") };
    assert_eq!(t.changes[0].columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["id", "v"]);
}

/// Inserts `txns` transactions of `rows_per_txn` rows each into `t.load`, ids counting from `first_id`.
async fn load(opts: mysql_async::OptsBuilder, first_id: u64, txns: u64, rows_per_txn: u64) {
    let mut conn = mysql_async::Conn::new(opts).await.expect("load connection");
    for t in 0..txns {
        let base = first_id + t * rows_per_txn;
        let values: Vec<String> = (0..rows_per_txn).map(|i| format!("({}, 'row {}')", base + i, base + i)).collect();
        conn.query_drop(format!("INSERT INTO t.load VALUES {}", values.join(","))).await.expect("load insert");
    }
}

/// Ids of every inserted row in the journal, in journal order, and the GTID sequence numbers of its records.
async fn journaled_ids(reader: &Reader) -> (Vec<i64>, Vec<u64>) {
    let records = reader.records().await;
    let seqs = records
        .iter()
        .filter(|r| matches!(r.body, Some(proto::record::Body::Transaction(_))))
        .map(|r| r.gtid.rsplit('-').next().and_then(|s| s.parse().ok()).expect("gtid"))
        .collect();
    let ids = row_changes(&records)
        .into_iter()
        .filter(|row| row.table == "load")
        .map(|row| match row.after[0].kind {
            Some(proto::value::Kind::Int(id)) => id,
            ref other => panic!("unexpected id {other:?}"),
        })
        .collect();
    (ids, seqs)
}

fn assert_exactly_once_in_order(ids: &[i64], seqs: &[u64], expected_rows: i64) {
    let expected: Vec<i64> = (1..=expected_rows).collect();
    assert_eq!(ids.len(), expected.len(), "every row journaled exactly once");
    assert_eq!(ids, expected.as_slice(), "rows in source order, none missing or repeated");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "GTIDs contiguous: no transaction lost or repeated");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_a_load_loses_and_duplicates_nothing() {
    let db = MariaDb::start(Role::Primary).await;
    db.exec("CREATE DATABASE t; CREATE TABLE t.load (id BIGINT PRIMARY KEY, v VARCHAR(20))").await;
    let mut reader = Reader::start(&db, &journal_dir(&db), &[]).await;
    let rows = 50_000u64;
    let txns = 2_000u64;
    let per = rows / txns;
    let loader = {
        let opts = db.root_opts();
        tokio::spawn(async move { load(opts, 1, txns, per).await })
    };
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(400 + 300 * i)).await;
        reader.kill9();
        reader.restart().await;
    }
    loader.await.expect("loader");
    eventually(WAIT, "all 50,000 rows journaled", || async {
        let (ids, _) = journaled_ids(&reader).await;
        (ids.len() as u64 >= rows).then_some(())
    })
    .await;
    let (ids, seqs) = journaled_ids(&reader).await;
    assert_exactly_once_in_order(&ids, &seqs, rows as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_restart_during_a_load_misses_nothing() {
    let mut db = MariaDb::start(Role::Primary).await;
    db.exec("CREATE DATABASE t; CREATE TABLE t.load (id BIGINT PRIMARY KEY, v VARCHAR(20))").await;
    let reader = Reader::start(&db, &journal_dir(&db), &[]).await;
    load(db.root_opts(), 1, 200, 25).await;
    db.restart().await;
    load(db.root_opts(), 5_001, 200, 25).await;
    db.stop();
    eventually(WAIT, "status to show the primary disconnected", || async {
        (!reader.info().await.primary_connected).then_some(())
    })
    .await;
    db.restart().await;
    load(db.root_opts(), 10_001, 200, 25).await;
    eventually(WAIT, "all 15,000 rows journaled after two primary restarts", || async {
        let (ids, _) = journaled_ids(&reader).await;
        (ids.len() >= 15_000).then_some(())
    })
    .await;
    let (ids, seqs) = journaled_ids(&reader).await;
    assert_exactly_once_in_order(&ids, &seqs, 15_000);
    assert!(reader.log_text().contains("reconnecting"), "the reader reports the lost connection");
    assert!(reader.info().await.primary_connected);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_include_and_exclude_what_they_say() {
    let db = MariaDb::start(Role::Primary).await;
    db.exec(
        "CREATE DATABASE app_eu; CREATE DATABASE app_test; CREATE DATABASE shop; CREATE DATABASE other;
         CREATE TABLE app_eu.users (id INT PRIMARY KEY); CREATE TABLE app_eu.tmp_x (id INT PRIMARY KEY);
         CREATE TABLE app_test.users (id INT PRIMARY KEY); CREATE TABLE shop.orders (id INT PRIMARY KEY);
         CREATE TABLE shop.carts (id INT PRIMARY KEY); CREATE TABLE other.t (id INT PRIMARY KEY);",
    )
    .await;
    let reader = Reader::start(
        &db,
        &journal_dir(&db),
        &[("REPLICA_INCLUDE", "app_*,shop.orders"), ("REPLICA_EXCLUDE", "app_test,app_eu.tmp_*")],
    )
    .await;
    db.exec(
        "INSERT INTO app_eu.users VALUES (1); INSERT INTO app_eu.tmp_x VALUES (1); INSERT INTO app_test.users VALUES (1);
         INSERT INTO shop.orders VALUES (1); INSERT INTO shop.carts VALUES (1); INSERT INTO other.t VALUES (1);
         CREATE TABLE mysql.replica_filter_probe (id INT PRIMARY KEY) ENGINE=InnoDB;
         INSERT INTO mysql.replica_filter_probe VALUES (1); DROP TABLE mysql.replica_filter_probe;
         ALTER TABLE app_eu.users ADD v INT; ALTER TABLE other.t ADD v INT; CREATE TABLE shop.carts2 (id INT);
         CREATE TABLE shop.orders_note (id INT); INSERT INTO shop.orders VALUES (2);",
    )
    .await;
    let records = eventually(WAIT, "the marker row in shop.orders", || async {
        let r = reader.records().await;
        row_changes(&r)
            .iter()
            .any(|row| row.table == "orders" && row.after[0].kind == Some(proto::value::Kind::Int(2)))
            .then_some(r)
    })
    .await;
    let tables: Vec<String> =
        row_changes(&records).into_iter().map(|row| format!("{}.{}", row.schema, row.table)).collect();
    assert_eq!(tables, vec!["app_eu.users", "shop.orders", "shop.orders"], "only included, non-excluded tables");
    let ddl = ddl_statements(&records);
    assert_eq!(ddl, vec!["ALTER TABLE app_eu.users ADD v INT"], "DDL filtered by the schema and table it changes");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_grpcurl_lists_describes_and_calls_get_info_and_read() {
    let db = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&db, &journal_dir(&db), &[]).await;
    db.exec(
        "CREATE DATABASE g; CREATE TABLE g.t (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO g.t VALUES (1, 'grpc')",
    )
    .await;
    reader.wait_for_offset(3, WAIT).await;
    let addr = format!("127.0.0.1:{}", reader.grpc_port);
    let list = run_grpcurl(&["-plaintext", &addr, "list"]);
    assert!(list.contains("replica.v1.Journal") && list.contains("grpc.health.v1.Health"), "{list}");
    let describe = run_grpcurl(&["-plaintext", &addr, "describe", "replica.v1.Journal"]);
    for rpc in ["GetInfo", "Read", "Subscribe", "Ack", "ListConsumers", "RemoveConsumer"] {
        assert!(describe.contains(rpc), "describe lists {rpc}: {describe}");
    }
    let info: serde_json::Value =
        serde_json::from_str(&run_grpcurl(&["-plaintext", "-d", "{}", &addr, "replica.v1.Journal/GetInfo"]))
            .expect("GetInfo JSON");
    assert_eq!(info["lastOffset"], "3");
    assert!(info["sourcePosition"]["gtid"].as_str().is_some_and(|g| g.starts_with("0-1-")));
    let read: serde_json::Value = serde_json::from_str(&run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"from_offset": 3, "limit": 1}"#,
        &addr,
        "replica.v1.Journal/Read",
    ]))
    .expect("Read JSON");
    let change = &read["records"][0]["transaction"]["changes"][0];
    assert_eq!(change["table"], "t");
    assert_eq!(change["rows"][0]["after"][1]["text"], "grpc");
    let out = std::process::Command::new(tests::grpcurl())
        .args(["-plaintext", "-d", r#"{"from_offset": 99}"#, &addr, "replica.v1.Journal/Read"])
        .output()
        .expect("grpcurl runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OutOfRange") && err.contains("valid offsets are 1 to 3"), "{err}");
    let health = run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    assert!(!reader.log_text().contains(REPL_PASS), "the password never appears in the reader's output");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purged_resume_position_stops_the_reader_with_a_recovery_message() {
    let db = MariaDb::start(Role::Primary).await;
    db.exec("CREATE DATABASE p; CREATE TABLE p.t (id INT PRIMARY KEY)").await;
    let mut reader = Reader::start(&db, &journal_dir(&db), &[]).await;
    db.exec("INSERT INTO p.t VALUES (1)").await;
    reader.wait_for_offset(1, WAIT).await;
    assert_eq!(reader.terminate().map(|s| s.code()), Some(Some(0)), "SIGTERM drains and exits 0");
    db.exec("INSERT INTO p.t VALUES (2); FLUSH BINARY LOGS; INSERT INTO p.t VALUES (3); FLUSH BINARY LOGS").await;
    let current: Vec<(String, u64)> = db
        .query("SHOW MASTER STATUS")
        .await
        .into_iter()
        .map(|r: mysql_async::Row| (r.get::<String, _>(0).expect("file"), r.get::<u64, _>(1).expect("pos")))
        .collect();
    // The server keeps binlogs a (lingering) dump thread still reads: purge until they are really gone.
    eventually(WAIT, "older binlogs purged", || async {
        db.exec(&format!("PURGE BINARY LOGS TO '{}'", current[0].0)).await;
        (db.query::<mysql_async::Row>("SHOW BINARY LOGS").await.len() == 1).then_some(())
    })
    .await;
    reader.restart_expecting_exit().await;
    let status = reader.wait_exit(WAIT).unwrap_or_else(|| panic!("the reader stops by itself:\n{}", reader.log_text()));
    assert!(!status.success(), "a purged position is a failure exit");
    let log = reader.log_text();
    assert!(log.contains("no longer has the binlog needed to resume"), "{log}");
    assert!(log.contains("re-copy each secondary"), "the message says how to recover: {log}");
    assert!(!log.contains("streaming the binlog from GTID") || log.matches("streaming the binlog").count() == 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_refuses_a_misconfigured_primary_naming_the_setting_and_the_fix() {
    let db = MariaDb::start_with(Role::Primary, 1, &["--binlog-row-metadata=MINIMAL"]).await;
    let dir = journal_dir(&db);
    let mut reader = Reader::start_unchecked(&db, &dir, &[]);
    let status = reader.wait_exit(WAIT).unwrap_or_else(|| panic!("reader stops:\n{}", reader.log_text()));
    assert!(!status.success());
    let log = reader.log_text();
    assert!(log.contains("binlog_row_metadata") && log.contains("SET GLOBAL binlog_row_metadata=FULL"), "{log}");

    db.exec("SET GLOBAL binlog_row_metadata=FULL; SET GLOBAL binlog_format=MIXED").await;
    let mut reader = Reader::start_unchecked(&db, &dir, &[]);
    reader.wait_exit(WAIT).expect("reader stops");
    assert!(reader.log_text().contains("binlog_format is \"MIXED\" but must be ROW"), "{}", reader.log_text());

    db.exec("SET GLOBAL binlog_format=ROW; SET GLOBAL log_bin_compress=ON").await;
    let mut reader = Reader::start_unchecked(&db, &dir, &[]);
    reader.wait_exit(WAIT).expect("reader stops");
    assert!(reader.log_text().contains("log_bin_compress is ON"), "{}", reader.log_text());

    db.exec("SET GLOBAL log_bin_compress=OFF; CREATE USER weak@'%' IDENTIFIED BY 'weak-pass-91'; GRANT SELECT ON *.* TO weak@'%'")
        .await;
    let mut reader = Reader::start_unchecked(&db, &dir, &[("MARIA_USER", "weak"), ("MARIA_PASS", "weak-pass-91")]);
    reader.wait_exit(WAIT).expect("reader stops");
    let log = reader.log_text();
    assert!(log.contains("lacks REPLICATION SLAVE, BINLOG MONITOR"), "{log}");
    assert!(!log.contains("weak-pass-91"), "passwords never appear in logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_network_is_detected_by_heartbeat_and_the_reader_resumes_exactly() {
    let db = MariaDb::start(Role::Primary).await;
    db.exec("CREATE DATABASE t; CREATE TABLE t.load (id BIGINT PRIMARY KEY, v VARCHAR(20))").await;
    let proxy = Proxy::start(db.port).await;
    let port = proxy.port.to_string();
    let reader = Reader::start(&db, &journal_dir(&db), &[("MARIA_PRIMARY_PORT", &port)]).await;
    load(db.root_opts(), 1, 100, 10).await;
    eventually(WAIT, "first rows journaled", || async { (journaled_ids(&reader).await.0.len() == 1000).then_some(()) })
        .await;
    proxy.freeze();
    // Written while the network is silent: the reader must notice (no heartbeat) and fetch them later.
    load(db.root_opts(), 1_001, 100, 10).await;
    eventually(WAIT, "the reader to notice the silence", || async {
        reader.log_text().contains("no event from the primary").then_some(())
    })
    .await;
    proxy.thaw();
    load(db.root_opts(), 2_001, 100, 10).await;
    eventually(WAIT, "all rows journaled after the network came back", || async {
        (journaled_ids(&reader).await.0.len() >= 3_000).then_some(())
    })
    .await;
    let (ids, seqs) = journaled_ids(&reader).await;
    assert_exactly_once_in_order(&ids, &seqs, 3_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn xa_transactions_are_journaled_at_commit_and_survive_a_crash_between_the_phases() {
    let db = MariaDb::start(Role::Primary).await;
    db.exec("CREATE DATABASE x; CREATE TABLE x.t (id INT PRIMARY KEY)").await;
    let mut reader = Reader::start(&db, &journal_dir(&db), &[]).await;
    let start = reader.info().await.last_offset;
    db.exec(
        "XA START 'one'; INSERT INTO x.t VALUES (1); XA END 'one'; XA PREPARE 'one'; XA COMMIT 'one';
         XA START 'two'; INSERT INTO x.t VALUES (2); XA END 'two'; XA PREPARE 'two'; XA ROLLBACK 'two';
         XA START 'three'; INSERT INTO x.t VALUES (3); XA END 'three'; XA COMMIT 'three' ONE PHASE;
         XA START 'four'; INSERT INTO x.t VALUES (4), (5); XA END 'four'; XA PREPARE 'four';",
    )
    .await;
    eventually(WAIT, "the XA PREPARE of 'four' to be read", || async {
        let gtid = reader.info().await.source_position.map(|p| p.gtid).unwrap_or_default();
        let primary: Vec<String> = db.query("SELECT @@gtid_binlog_pos").await;
        (gtid == primary[0]).then_some(())
    })
    .await;
    // The prepared changes are durable in the journal, not in the primary's memory alone.
    reader.kill9();
    db.exec("XA COMMIT 'four'").await;
    reader.restart().await;
    eventually(WAIT, "the XA COMMIT of 'four' journaled", || async {
        let ids: Vec<i64> = row_changes(&reader.records().await)
            .iter()
            .filter_map(|r| match r.after[0].kind {
                Some(proto::value::Kind::Int(id)) => Some(id),
                _ => None,
            })
            .collect();
        (ids.len() >= 4).then_some(())
    })
    .await;
    let records: Vec<_> = reader.records().await.into_iter().filter(|r| r.offset > start).collect();
    let ids: Vec<Vec<i64>> = records
        .iter()
        .map(|r| {
            row_changes(std::slice::from_ref(r))
                .iter()
                .filter_map(|row| match row.after[0].kind {
                    Some(proto::value::Kind::Int(id)) => Some(id),
                    _ => None,
                })
                .collect()
        })
        .collect();
    assert_eq!(ids, vec![vec![1], vec![3], vec![4, 5]], "committed XA work once each, rolled-back XA work never");
    let primary: Vec<i64> = db.query("SELECT id FROM x.t ORDER BY id").await;
    assert_eq!(primary, vec![1, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_table_filters_from_the_config_file() {
    let db = MariaDb::start(Role::Primary).await;
    let file = db.dir.path().join("reader.toml");
    std::fs::write(&file, "include = \"a\"\n").expect("config file");
    let path = file.to_string_lossy().into_owned();
    let reader = Reader::start(&db, &journal_dir(&db), &[("REPLICA_CONFIG", &path)]).await;
    db.exec(
        "CREATE DATABASE a; CREATE DATABASE b; CREATE TABLE a.t (id INT PRIMARY KEY); \
         CREATE TABLE b.t (id INT PRIMARY KEY); INSERT INTO b.t VALUES (1); INSERT INTO a.t VALUES (1)",
    )
    .await;
    eventually(WAIT, "a.t's row is journaled", || async {
        row_changes(&reader.records().await).iter().any(|r| r.schema == "a").then_some(())
    })
    .await;
    std::fs::write(&file, "include = \"a,b\"\n").expect("config file");
    let status = std::process::Command::new("kill").args(["-HUP", &reader.pid().to_string()]).status().expect("kill");
    assert!(status.success());
    eventually(WAIT, "the filters are reloaded", || async {
        reader.log_text().contains("table filters reloaded").then_some(())
    })
    .await;
    db.exec("INSERT INTO b.t VALUES (2)").await;
    let rows = eventually(WAIT, "b.t's new row is journaled", || async {
        let rows = row_changes(&reader.records().await);
        rows.iter().any(|r| r.schema == "b").then_some(rows)
    })
    .await;
    let b: Vec<_> = rows.iter().filter(|r| r.schema == "b").collect();
    assert_eq!(b.len(), 1, "only the row written after the reload: {b:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_not_serving_while_the_primary_is_down() {
    let mut db = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&db, &journal_dir(&db), &[]).await;
    let addr = format!("127.0.0.1:{}", reader.grpc_port);
    let health = || run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    eventually(WAIT, "SERVING while streaming", || async { health().contains("\"SERVING\"").then_some(()) }).await;
    db.stop();
    eventually(WAIT, "NOT_SERVING while the primary is down", || async {
        health().contains("NOT_SERVING").then_some(())
    })
    .await;
    db.restart().await;
    eventually(WAIT, "SERVING once the reader is streaming again", || async {
        health().contains("\"SERVING\"").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifteen_cuts_of_the_primary_link_are_each_recovered_quickly() {
    let db = MariaDb::start(Role::Primary).await;
    let proxy = Proxy::start(db.port).await;
    let port = proxy.port.to_string();
    // The documented default maximum wait: the recoveries must not depend on a short cap.
    let env = [("MARIA_PRIMARY_PORT", port.as_str()), ("REPLICA_RECONNECT_MAX", "30s")];
    let reader = Reader::start(&db, &journal_dir(&db), &env).await;
    db.exec("CREATE DATABASE cut; CREATE TABLE cut.t (id INT PRIMARY KEY)").await;
    journaled(&db, &reader).await;
    let (db_ref, reader_ref) = (&db, &reader);
    let recoveries = tests::recoveries_after_cuts(&proxy, 15, |i| async move {
        db_ref.exec(&format!("INSERT INTO cut.t VALUES ({i})")).await;
        journaled(db_ref, reader_ref).await;
    })
    .await;
    let median = recoveries[recoveries.len() / 2];
    eprintln!("recovery after each cut, sorted: {recoveries:?}");
    assert!(median < Duration::from_secs(2), "median recovery {median:?}: {recoveries:?}");
    assert!(recoveries[14] < Duration::from_secs(5), "slowest recovery: {recoveries:?}");
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM cut.t").await;
    assert_eq!(n, vec![15]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_started_while_the_primary_is_down_waits_for_it_and_says_so() {
    let mut db = MariaDb::start(Role::Primary).await;
    db.stop();
    // Not `start`, which waits until the reader streams.
    let mut reader = Reader::start_unchecked(&db, &journal_dir(&db), &[]);
    let addr = format!("127.0.0.1:{}", reader.grpc_port);
    let health = || run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    eventually(WAIT, "NOT_SERVING and retrying while the primary is down", || async {
        let retries = reader.log_text().matches("primary connection lost; reconnecting").count();
        (retries >= 2 && health().contains("NOT_SERVING")).then_some(())
    })
    .await;
    let log = reader.log_text();
    assert!(log.contains(&format!("127.0.0.1:{}", db.port)), "the primary is named:\n{log}");
    assert!(reader.exited().is_none(), "a primary that is down is not a reason to exit:\n{log}");
    db.restart().await;
    // An empty journal starts at the primary's position when it is first reached, so write after that.
    eventually(WAIT, "SERVING once streaming", || async { health().contains("\"SERVING\"").then_some(()) }).await;
    db.exec("CREATE DATABASE up; CREATE TABLE up.t (id INT PRIMARY KEY); INSERT INTO up.t VALUES (1)").await;
    journaled(&db, &reader).await;
}
