//! gRPC security with real processes and the real grpcurl: TLS with the reader's certificate, client
//! certificates (mutual TLS), and the bearer token on every journal call.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tests::{eventually, Applier, MariaDb, Reader, Role};

const TOKEN: &str = "tok-5e1f-b7";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, signed by the CA.
fn make_certs(dir: &Path) {
    std::fs::create_dir_all(dir).expect("cert dir");
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=test-ca",
            days[0],
            days[1],
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext file");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
                days[0],
                days[1],
            ],
        );
    }
}

/// [`make_certs`] in `dir`; the paths of the CA, the server's certificate and key, and the client's.
fn cert_files(dir: &Path) -> (String, String, String, String, String) {
    make_certs(dir);
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    (path("ca.pem"), path("server.pem"), path("server.key"), path("client.pem"), path("client.key"))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_client_certificates_and_the_bearer_token_guard_the_journal() {
    let primary = MariaDb::start(Role::Primary).await;
    let (ca, server_cert, server_key, client_cert, client_key) = cert_files(&primary.dir.path().join("certs"));
    let reader = Reader::start_unchecked(
        &primary,
        &primary.dir.path().join("journal"),
        &[
            ("REPLICA_TLS_CERT", &server_cert),
            ("REPLICA_TLS_KEY", &server_key),
            ("REPLICA_TLS_CLIENT_CA", &ca),
            ("REPLICA_AUTH_TOKEN", TOKEN),
        ],
    );
    let addr = format!("127.0.0.1:{}", reader.grpc_port);
    let bearer = format!("authorization: Bearer {TOKEN}");
    let grpcurl = |args: &[&str]| -> Output {
        Command::new(tests::grpcurl())
            .args(["-max-time", "5"])
            .args(args)
            .args([addr.as_str(), "replica.v1.Journal/GetInfo"])
            .output()
            .expect("grpcurl runs")
    };
    let text = |o: &Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let full = ["-cacert", &ca, "-cert", &client_cert, "-key", &client_key, "-H", &bearer];
    eventually(
        Duration::from_secs(30),
        "the reader answers over TLS with a client certificate and the token",
        || async {
            let out = grpcurl(&full);
            (out.status.success() && text(&out).contains("primaryName")).then_some(())
        },
    )
    .await;

    let no_token = grpcurl(&["-cacert", &ca, "-cert", &client_cert, "-key", &client_key]);
    assert!(!no_token.status.success() && text(&no_token).contains("Unauthenticated"), "{}", text(&no_token));
    assert!(!text(&no_token).contains("primaryName"), "no data without the token");
    let wrong =
        grpcurl(&["-cacert", &ca, "-cert", &client_cert, "-key", &client_key, "-H", "authorization: Bearer nope"]);
    assert!(text(&wrong).contains("Unauthenticated"), "{}", text(&wrong));
    let no_cert = grpcurl(&["-cacert", &ca, "-H", &bearer]);
    assert!(
        !no_cert.status.success() && !text(&no_cert).contains("primaryName"),
        "mTLS refuses a client without a certificate"
    );
    let plaintext = grpcurl(&["-plaintext", "-H", &bearer]);
    assert!(!plaintext.status.success(), "no plaintext gRPC on a TLS port");

    // An applier with the CA, its certificate and the token replicates; one without the token is refused.
    let url = format!("https://localhost:{}", reader.grpc_port);
    let secondary = MariaDb::start_with(Role::Secondary, 10, &[]).await;
    let tls_env = [
        ("REPLICA_READER_URL", url.as_str()),
        ("REPLICA_READER_CA", ca.as_str()),
        ("REPLICA_READER_CLIENT_CERT", client_cert.as_str()),
        ("REPLICA_READER_CLIENT_KEY", client_key.as_str()),
        ("REPLICA_START_OFFSET", "1"),
    ];
    let admin = format!("127.0.0.1:{}", tests::free_port());
    let mut with_token = tls_env.to_vec();
    with_token.push(("REPLICA_AUTH_TOKEN", TOKEN));
    with_token.push(("REPLICA_ADMIN_ADDR", &admin));
    let a = Applier::start(&reader, &secondary, "secure", &with_token);
    primary
        .exec("CREATE DATABASE sec; CREATE TABLE sec.t (id INT PRIMARY KEY); INSERT INTO sec.t VALUES (1), (2)")
        .await;
    eventually(Duration::from_secs(30), "the applier replicates over TLS", || async {
        let n: Vec<u64> =
            secondary.query("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'sec'").await;
        if n[0] == 0 {
            return None;
        }
        let rows: Vec<u64> = secondary.query("SELECT COUNT(*) FROM sec.t").await;
        (rows[0] == 2).then_some(())
    })
    .await;
    assert!(!a.log_text().contains(TOKEN), "the token is never logged");
    // The applier's admin service takes the same token.
    let admin_call = |extra: &[&str]| {
        Command::new(tests::grpcurl())
            .args(["-max-time", "5", "-plaintext"])
            .args(extra)
            .args([admin.as_str(), "replica.v1.Applier/GetStatus"])
            .output()
            .expect("grpcurl runs")
    };
    let refused = admin_call(&[]);
    assert!(text(&refused).contains("Unauthenticated") && !text(&refused).contains("phase"), "{}", text(&refused));
    let answered = admin_call(&["-H", &bearer]);
    assert!(answered.status.success() && text(&answered).contains("phase"), "{}", text(&answered));

    let other = MariaDb::start_with(Role::Secondary, 11, &[]).await;
    let mut refused = Applier::start(&reader, &other, "intruder", &tls_env);
    let status =
        refused.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("refused:\n{}", refused.log_text()));
    assert!(!status.success());
    assert!(refused.log_text().contains("bearer token"), "{}", refused.log_text());

    // TLS failures are explained in plain words, with what to set: no client certificate, an unknown CA.
    let third = MariaDb::start_with(Role::Secondary, 12, &[]).await;
    let without_cert: Vec<(&str, &str)> = with_token
        .iter()
        .filter(|(k, _)| !k.starts_with("REPLICA_READER_CLIENT") && *k != "REPLICA_ADMIN_ADDR")
        .copied()
        .collect();
    let bare = Applier::start(&reader, &third, "no-cert", &without_cert);
    let mut wrong_ca: Vec<(&str, &str)> =
        with_token.iter().filter(|(k, _)| *k != "REPLICA_ADMIN_ADDR").copied().collect();
    wrong_ca.retain(|(k, _)| *k != "REPLICA_READER_CA");
    wrong_ca.push(("REPLICA_READER_CA", client_cert.as_str()));
    let stranger = Applier::start(&reader, &third, "wrong-ca", &wrong_ca);
    for (a, says) in [(&bare, "the server requires a client certificate"), (&stranger, "is not signed by the CA given")]
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !a.log_text().contains(says) {
            assert!(std::time::Instant::now() < deadline, "{says:?} not in:\n{}", a.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reader_and_applier_reach_mariadb_over_verified_tls() {
    let certs = tempfile::tempdir().expect("cert dir");
    make_certs(certs.path());
    let path = |f: &str| certs.path().join(f).to_string_lossy().into_owned();
    let ca = path("ca.pem");
    let ssl = [
        format!("--ssl-cert={}", path("server.pem")),
        format!("--ssl-key={}", path("server.key")),
        format!("--ssl-ca={ca}"),
    ];
    let ssl: Vec<&str> = ssl.iter().map(String::as_str).collect();
    let primary = MariaDb::start_with(Role::Primary, 1, &ssl).await;
    // The replication user may only connect over TLS.
    primary.exec(&format!("ALTER USER '{}'@'%' REQUIRE SSL", tests::REPL_USER)).await;
    let tls = [("MARIA_TLS", "true"), ("MARIA_TLS_CA", ca.as_str())];
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &tls).await;
    let secondary = MariaDb::start_with(Role::Secondary, 10, &ssl).await;
    secondary
        .exec("CREATE USER 'app'@'%' IDENTIFIED BY 'app-pass-9c' REQUIRE SSL; GRANT ALL ON *.* TO 'app'@'%'")
        .await;
    primary.exec("CREATE DATABASE m; CREATE TABLE m.t (id INT PRIMARY KEY); INSERT INTO m.t VALUES (1), (2)").await;
    let mut env = tls.to_vec();
    env.extend([("MARIA_SECONDARY_USER", "app"), ("MARIA_SECONDARY_PASSWORD", "app-pass-9c")]);
    // No checkpoint: it copies m.t over TLS through the reader, then streams.
    let a = Applier::start(&reader, &secondary, "tls", &env);
    primary.exec("INSERT INTO m.t VALUES (3)").await;
    eventually(Duration::from_secs(60), "the secondary has every row", || async {
        let n: Vec<u64> =
            secondary.query("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'm'").await;
        if n[0] == 0 {
            return None;
        }
        let rows: Vec<u64> = secondary.query("SELECT COUNT(*) FROM m.t").await;
        (rows[0] == 3).then_some(())
    })
    .await;
    assert!(!a.log_text().contains("ERROR"), "{}", a.log_text());
    // Negative control: without TLS the same user is refused.
    let mut plain = Reader::start_unchecked(&primary, &primary.dir.path().join("journal-plain"), &[]);
    let status = plain.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("refused:\n{}", plain.log_text()));
    assert!(!status.success(), "{}", plain.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_one_shot_verify_reaches_an_admin_service_over_mutual_tls_and_explains_refusals() {
    let primary = MariaDb::start(Role::Primary).await;
    let (ca, server_cert, server_key, client_cert, client_key) = cert_files(&primary.dir.path().join("certs"));
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    primary.exec("CREATE DATABASE v; CREATE TABLE v.t (id INT PRIMARY KEY); INSERT INTO v.t VALUES (1), (2)").await;
    let secondary = MariaDb::start(Role::Secondary).await;
    let admin = format!("127.0.0.1:{}", tests::free_port());
    let applier = Applier::start(
        &reader,
        &secondary,
        "tls-admin",
        &[
            ("REPLICA_ADMIN_ADDR", admin.as_str()),
            ("REPLICA_TLS_CERT", server_cert.as_str()),
            ("REPLICA_TLS_KEY", server_key.as_str()),
            ("REPLICA_TLS_CLIENT_CA", ca.as_str()),
        ],
    );
    eventually(Duration::from_secs(60), "the table on the secondary", || async {
        let n: Vec<u64> =
            secondary.query("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'v'").await;
        if n[0] == 0 {
            return None;
        }
        (secondary.query::<u64>("SELECT COUNT(*) FROM v.t").await[0] == 2).then_some(())
    })
    .await;
    let verify = |extra: &[&str]| {
        let out = Command::new(tests::binary("replica-applier"))
            .env_clear()
            .args(["verify", "--admin-addr", admin.as_str(), "--timeout", "60s"])
            .args(extra)
            .output()
            .expect("replica-applier verify runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("replica-applier verify {extra:?} exited {:?}:\n{text}", out.status.code());
        (out.status.code(), text)
    };
    let (code, text) =
        verify(&["--admin-ca", &ca, "--admin-client-cert", &client_cert, "--admin-client-key", &client_key]);
    assert_eq!(code, Some(0), "{text}\n{}", applier.log_text());
    assert!(text.contains("v.t: equal") && text.contains("verification done"), "{text}");

    let (code, text) = verify(&["--admin-ca", &ca]);
    assert_eq!(code, Some(2), "{text}");
    // The server's refusal (an alert after the TLS 1.3 handshake) or, when the first call sees only the closed
    // connection, the same advice as a possibility.
    assert!(
        text.contains("client certificate") && text.contains("set --admin-client-cert and --admin-client-key"),
        "{text}"
    );
    let (code, text) =
        verify(&["--admin-ca", &client_cert, "--admin-client-cert", &client_cert, "--admin-client-key", &client_key]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("not signed by the CA given (--admin-ca)"), "{text}");
    let (code, text) = verify(&[]);
    assert_eq!(code, Some(2), "plain gRPC to a TLS admin service: {text}");
    assert!(text.contains("give --admin-ca"), "{text}");
}
