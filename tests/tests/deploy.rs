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
