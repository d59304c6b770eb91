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
