//! Online verification against real servers: no difference reported on a correct secondary while the primary
//! takes writes; differences planted on the secondary (1 µs, a trailing BINARY byte, 'a' → 'A' under a
//! case-insensitive collation, a DECIMAL digit, FLOAT and DOUBLE last bits, BIT, TIME, ENUM, NULL vs '' and 'N', a
//! missing row, an extra row, a keyless table) each reported with
//! its key and repaired while replication goes on; a verification killed with -9 resumes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tests::{assert_same_data, caught_up, eventually, verify_once, Applier, MariaDb, Reader, Role};

const SCHEMA: &[&str] = &[
    "CREATE DATABASE v",
    "CREATE TABLE v.k (id INT PRIMARY KEY, d DATETIME(6), b BINARY(16), s VARCHAR(20), amount DECIMAL(10,2), n INT NULL) \
     CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
    "INSERT INTO v.k SELECT seq, '2024-01-02 03:04:05.123456', UNHEX(MD5(seq)), CONCAT('s', seq), seq / 100, \
     IF(seq % 7 = 0, NULL, seq) FROM v.seq_1_to_3000",
    "CREATE TABLE v.ck (a INT, b VARCHAR(10), v INT, PRIMARY KEY (a, b))",
    "INSERT INTO v.ck SELECT seq % 50, CONCAT('b', seq), seq FROM v.seq_1_to_1000",
    "CREATE TABLE v.sk (code VARCHAR(20) COLLATE utf8mb4_general_ci PRIMARY KEY, v VARCHAR(20) COLLATE utf8mb4_general_ci)",
    "INSERT INTO v.sk SELECT CONCAT('key', seq), 'a' FROM v.seq_1_to_500",
    "CREATE TABLE v.nk (a INT, b VARCHAR(20))",
    "INSERT INTO v.nk SELECT seq % 10, 'x' FROM v.seq_1_to_200",
    // Values easily lost by a checksum of their text: FLOAT (MariaDB prints 6 digits), BIT, TIME and TIMESTAMP
    // fractions, ENUM, DOUBLE's last bits, NULL next to '' and 'N'.
    "CREATE TABLE v.ty (id INT PRIMARY KEY, f FLOAT, dbl DOUBLE, bt BIT(8), t TIME(6), ts TIMESTAMP(6) NULL, \
     e ENUM('x', 'y'), s VARCHAR(5) NULL, u UUID)",
    "INSERT INTO v.ty SELECT seq, 1, seq / 3e0, b'1', '-1:02:03.000004', '2024-01-02 03:04:05.000006', 'x', NULL, \
     UUID() FROM v.seq_1_to_1000",
    "CREATE TABLE v.tx (id INT PRIMARY KEY, body TEXT)",
    "INSERT INTO v.tx SELECT seq, REPEAT('t', seq) FROM v.seq_1_to_300",
];

/// Differences written on the secondary only, and the key each one is reported with (those of v.ty a chunk apart,
/// so that each is found by its own chunk's checksum).
const PLANTED: &[(&str, &str, &str)] = &[
    ("UPDATE v.k SET d = '2024-01-02 03:04:05.123457' WHERE id = 2001", "k", "(2001)"),
    ("UPDATE v.k SET b = CONCAT(LEFT(b, 15), X'00') WHERE id = 2002 AND RIGHT(b, 1) <> X'00'", "k", "(2002)"),
    ("DELETE FROM v.k WHERE id = 2003", "k", "(2003)"),
    ("UPDATE v.k SET amount = amount + 0.01 WHERE id = 2004", "k", "(2004)"),
    ("INSERT INTO v.k VALUES (5000000, NULL, NULL, 'extra', 0, 0)", "k", "(5000000)"),
    ("UPDATE v.sk SET v = 'A' WHERE code = 'key250'", "sk", "('key250')"),
    ("UPDATE v.ck SET v = v + 1 WHERE a = 7 AND b = 'b7'", "ck", "(7, 'b7')"),
    ("INSERT INTO v.nk VALUES (99, 'extra')", "nk", ""),
    ("UPDATE v.ty SET f = 1.0000001 WHERE id = 50", "ty", "(50)"),
    ("UPDATE v.ty SET bt = b'10000001' WHERE id = 150", "ty", "(150)"),
    ("UPDATE v.ty SET t = '-1:02:03.000005' WHERE id = 250", "ty", "(250)"),
    ("UPDATE v.ty SET ts = '2024-01-02 03:04:05.000007' WHERE id = 350", "ty", "(350)"),
    ("UPDATE v.ty SET s = '' WHERE id = 450", "ty", "(450)"),
    ("UPDATE v.ty SET s = 'N' WHERE id = 550", "ty", "(550)"),
    ("UPDATE v.ty SET e = 'y' WHERE id = 650", "ty", "(650)"),
    ("UPDATE v.ty SET dbl = dbl * (1 + 4e-16) WHERE id = 750", "ty", "(750)"),
    // Two rows swap their values: a checksum that XORs linear row checksums (CRC32) cannot see it.
    ("UPDATE v.ty SET dbl = CASE id WHEN 850 THEN 851 / 3e0 ELSE 850 / 3e0 END WHERE id IN (850, 851)", "ty", "(851)"),
    ("UPDATE v.tx SET body = CONCAT(body, ' ') WHERE id = 19", "tx", "(19)"),
];

/// The tables of SCHEMA.
const TABLES: &[&str] = &["v.k", "v.ck", "v.sk", "v.nk", "v.ty", "v.tx"];

/// Writes to the primary until stopped: updates, inserts and deletes of keys the planted rows do not use.
fn write_load(primary: &MariaDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let opts = primary.root_opts();
    tokio::spawn(async move {
        let mut c = mysql_async::Conn::new(opts).await.expect("primary");
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let id = 1 + (n * 7919) % 1900;
            let stmts = [
                format!("UPDATE v.k SET n = IFNULL(n, 0) + 1, d = NOW(6) WHERE id = {id}"),
                format!("INSERT INTO v.k VALUES ({}, NOW(6), UNHEX(MD5({n})), 'new', 1.5, {n})", 10_000 + n),
                format!("DELETE FROM v.k WHERE id = {}", 10_000 + n / 2),
                format!("UPDATE v.ck SET v = v + 1 WHERE a = {} AND b <> 'b7'", n % 50),
                format!("UPDATE v.sk SET v = 'a' WHERE code = 'key{}'", 1 + n % 200),
                "UPDATE v.nk SET b = 'y' WHERE a = 3 LIMIT 1".to_owned(),
            ];
            for s in stmts {
                c.query_drop(s).await.expect("load statement");
            }
        }
        n
    })
}

async fn setup(verify_env: &[(&str, &str)]) -> (MariaDb, Reader, MariaDb, Applier, String) {
    let primary = MariaDb::start(Role::Primary).await;
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    for stmt in SCHEMA {
        primary.exec(stmt).await;
    }
    let secondary = MariaDb::start(Role::Secondary).await;
    let admin = format!("127.0.0.1:{}", tests::free_port());
    let mut env = vec![("REPLICA_START_OFFSET", "1"), ("REPLICA_ADMIN_ADDR", admin.as_str())];
    env.extend_from_slice(verify_env);
    let applier = Applier::start(&reader, &secondary, "east", &env);
    caught_up(&primary, &reader, &secondary, &applier).await;
    (primary, reader, secondary, applier, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_under_writes_reports_exactly_the_planted_differences_and_repair_fixes_them() {
    let (primary, reader, secondary, applier, admin) = setup(&[("REPLICA_VERIFY_CHUNK_ROWS", "100")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(&primary, stop.clone());

    // A correct secondary under a moving primary: nothing differs.
    let (code, report) = verify_once(&admin, &[]);
    assert_eq!(code, 0, "a correct secondary verifies equal:\n{report}\n{}", applier.log_text());
    for t in TABLES {
        assert!(report.contains(&format!("{t}: equal")), "{t} is compared and equal:\n{report}");
    }
    assert!(report.contains("3000 rows") || report.contains("rows in"), "{report}");

    for (stmt, _, _) in PLANTED {
        secondary.exec(stmt).await;
    }
    let (code, report) = verify_once(&admin, &["--schema", "v"]);
    assert_eq!(code, 1, "planted differences make the verification fail:\n{report}\n{}", applier.log_text());
    for (stmt, table, key) in PLANTED {
        let line = report.lines().find(|l| l.starts_with(&format!("v.{table}:"))).unwrap_or_default();
        assert!(line.contains(": differs"), "v.{table} differs after `{stmt}`:\n{report}");
        if key.is_empty() {
            assert!(
                report.contains("table table: primary 200 rows secondary 201 rows"),
                "keyless table reported whole:\n{report}"
            );
        } else {
            assert!(
                report.lines().any(|l| l
                    .trim_start()
                    .split_once(' ')
                    .is_some_and(|(_, rest)| rest.starts_with(&format!("{key}:")))),
                "`{stmt}` is reported with key {key}:\n{report}"
            );
        }
    }
    assert!(report.contains("missing (2003)"), "{report}");
    assert!(report.contains("extra (5000000)"), "{report}");
    assert!(report.contains("differs ('key250'): primary ('key250', 'a') secondary ('key250', 'A')"), "{report}");
    assert!(report.contains("7 differing") || report.contains("differing"), "{report}");

    // Repair while the primary keeps writing; then the secondary equals the primary and verifies equal.
    let (code, report) = verify_once(&admin, &["--repair"]);
    assert_eq!(code, 1, "a repairing run still reports what differed:\n{report}");
    for t in TABLES {
        assert!(report.contains(&format!("{t}: repaired")), "{t} is repaired:\n{report}\n{}", applier.log_text());
    }
    // The keyless table is re-copied at its own boundary: verified again once that copy is done.
    tests::copy_done(&secondary, &applier, &reader, Duration::from_secs(60)).await;
    let (code, report) = verify_once(&admin, &[]);
    assert_eq!(
        code,
        0,
        "after the repair the secondary verifies equal under writes:\n{report}\n{}",
        applier.log_text()
    );
    stop.store(true, Ordering::SeqCst);
    let writes = load.await.expect("load");
    assert!(writes > 20, "the primary took writes during the verification ({writes} rounds)");
    caught_up(&primary, &reader, &secondary, &applier).await;
    assert_same_data(&primary, &secondary, "v").await;
    let states: Vec<(String, String)> =
        secondary.query("SELECT table_name, state FROM replica_meta.verify ORDER BY table_name").await;
    assert_eq!(states.len(), TABLES.len(), "{states:?}");
    assert!(states.iter().all(|(_, s)| s == "equal"), "{states:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verification_killed_with_minus_9_resumes_where_it_was() {
    let (http, metrics) = (tests::free_port(), tests::free_port());
    let (http_addr, metrics_addr) = (format!("127.0.0.1:{http}"), format!("127.0.0.1:{metrics}"));
    let (primary, reader, secondary, mut applier, admin) = setup(&[
        ("REPLICA_VERIFY_ROWS_PER_SECOND", "800"),
        ("REPLICA_VERIFY_CHUNK_ROWS", "100"),
        ("REPLICA_HTTP_ADDR", &http_addr),
        ("REPLICA_METRICS_ADDR", &metrics_addr),
    ])
    .await;
    let start = tests::run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"schema":"v","table":"k"}"#,
        &admin,
        "replica.v1.Applier/StartVerify",
    ]);
    assert!(start.contains("v.k"), "{start}");
    let compared = eventually(Duration::from_secs(30), "the verification compares rows", || async {
        let rows: Vec<(u64, String)> =
            secondary.query("SELECT rows_compared, state FROM replica_meta.verify WHERE table_name = 'k'").await;
        rows.first().filter(|(n, s)| *n >= 500 && s == "verifying").map(|(n, _)| *n)
    })
    .await;
    applier.kill9();
    primary.exec("UPDATE v.k SET s = 'moved' WHERE id < 100").await;
    applier.spawn();
    eventually(Duration::from_secs(120), "the verification ends after the restart", || async {
        let rows: Vec<(u64, String)> =
            secondary.query("SELECT rows_compared, state FROM replica_meta.verify WHERE table_name = 'k'").await;
        rows.first().filter(|(_, s)| s != "verifying").cloned()
    })
    .await;
    let status = tests::run_grpcurl(&["-plaintext", &admin, "replica.v1.Applier/GetVerify"]);
    assert!(status.contains(r#""state": "done""#), "{status}");
    assert!(status.contains(r#""state": "equal""#), "{status}\n{}", applier.log_text());
    assert!(applier.log_text().contains("resuming the verification left unfinished"), "{}", applier.log_text());
    let rows: Vec<(u64,)> =
        secondary.query("SELECT rows_compared FROM replica_meta.verify WHERE table_name = 'k'").await;
    // Resumed, not restarted: the rows compared before the kill are not compared again (3000 rows in all, give or
    // take the round the kill interrupted).
    assert!(rows[0].0 >= 3000 && rows[0].0 < 3000 + 1000, "{rows:?} (had {compared} before the kill)");
    // The same verification over HTTP JSON, and its metrics.
    let (code, body) = tests::http(http, "GET", "/v1/verify", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""state":"done""#) && body.contains(r#""state":"equal""#), "{body}");
    assert_eq!(tests::http(http, "POST", "/v1/verify/stop", None), (200, r#"{"stopped":false}"#.to_owned()));
    let (_, text) = tests::http(metrics, "GET", "/metrics", None);
    let verified: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("replica_applier_verify_rows_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("verify metric missing:\n{text}"));
    assert!(verified >= 3000.0 - compared as f64, "rows verified since the restart: {verified}");
    caught_up(&primary, &reader, &secondary, &applier).await;
    assert_same_data(&primary, &secondary, "v").await;
}
