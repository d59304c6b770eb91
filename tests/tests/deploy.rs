//! Deployment files: the top-level docker-compose.yml is valid (no container engine runs here; Debian's
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
        assert_eq!(profiled, name.starts_with("graylog"), "{name}: only Graylog's services are behind a profile");
    }
    for wanted in ["graylog", "graylog-mongodb", "graylog-opensearch"] {
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
