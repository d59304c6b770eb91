//! Configuration of the real binaries: a `.env` of the original service, and `--print-config` never
//! showing a secret.

use std::process::Command;

fn print_config(binary: &str, dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(tests::binary(binary))
        .env_clear()
        .current_dir(dir)
        .arg("--print-config")
        .args(args)
        .output()
        .expect("binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{binary} --print-config failed: {text}");
    text
}

#[test]
fn an_original_dot_env_configures_both_binaries_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join(".env"),
        "MARIA_PRIMARY_HOST=db1\nMARIA_PRIMARY_PORT=3399\nMARIA_USER=rep\nMARIA_PASS=primary-secret-31\n\
         MARIA_SECONDARY_HOSTS=h1,h2\nMARIA_SECONDARY_PORTS=3307,3308\nMARIA_SECONDARY_NAMES=east,west\n\
         MARIA_SECONDARY_PASSWORDS=east-secret-41,west-secret-42\n",
    )
    .expect("write .env");
    let reader = print_config("replica-reader", dir.path(), &[]);
    assert!(reader.contains("primary_host = \"db1\"") && reader.contains("primary_port = \"3399\""), "{reader}");
    let applier = print_config("replica-applier", dir.path(), &["--secondary", "west"]);
    assert!(applier.contains("secondary_hosts = \"h1,h2\"") && applier.contains("user = \"rep\""), "{applier}");
    for secret in ["primary-secret-31", "east-secret-41", "west-secret-42"] {
        assert!(!reader.contains(secret) && !applier.contains(secret), "{secret} printed");
    }
    assert!(applier.contains("# secondary_passwords: a secret, not printed (set it with MARIA_SECONDARY_PASSWORDS)"));
}

/// `--print-config` prints every setting as TOML that `--config` takes back unchanged (both binaries).
#[test]
fn print_config_is_a_config_file_that_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (binary, env) in [
        (
            "replica-reader",
            vec![("MARIA_PRIMARY_HOST", "db1,db2:3307"), ("REPLICA_RETENTION", "36h"), ("GRAYLOG_ENABLED", "true")],
        ),
        (
            "replica-applier",
            vec![
                ("MARIA_SECONDARY_HOST", "s1"),
                ("MARIA_SECONDARY_NAME", "east"),
                ("REPLICA_BATCH_ROWS", "123"),
                ("RUST_LOG", "applier=debug,info"),
            ],
        ),
    ] {
        let run = |args: &[&str], env: &[(&str, &str)]| {
            let out = Command::new(tests::binary(binary))
                .env_clear()
                .envs(env.iter().copied())
                .current_dir(dir.path())
                .arg("--print-config")
                .args(args)
                .output()
                .expect("runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let first = run(&[], &env);
        assert!(
            first.contains("log_level = ")
                && first.contains("graylog_endpoint = ")
                && first.contains("project_name = "),
            "{first}"
        );
        assert!(!first.contains("Secret") && !first.contains("RwLock"), "no debug dump: {first}");
        let file = dir.path().join(format!("{binary}.toml"));
        std::fs::write(&file, &first).expect("write");
        let again = run(&["--config", &file.display().to_string()], &[]);
        assert_eq!(again, first, "{binary}: the printed file configures the same settings");
    }
}

/// The README's configuration tables are generated from the clap definitions; this fails when they are out of
/// date. `REPLICA_UPDATE_README=1 cargo test -p tests --test config` rewrites them.
#[test]
fn the_readme_configuration_reference_matches_the_binaries() {
    use clap::CommandFactory;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let mut updated = readme.clone();
    for (name, cmd) in
        [("reader-config", reader::config::Cli::command()), ("applier-config", applier::config::Cli::command())]
    {
        updated = common::reference::splice(&updated, name, &common::reference::markdown(&cmd))
            .unwrap_or_else(|| panic!("README.md has no <!-- {name}:start --> / <!-- {name}:end --> markers"));
    }
    if std::env::var("REPLICA_UPDATE_README").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &updated).expect("write README.md");
        return;
    }
    assert!(
        updated == readme,
        "the README's configuration reference is out of date: run REPLICA_UPDATE_README=1 cargo test -p tests --test config"
    );
}

#[test]
fn a_toml_file_sets_options_below_flags_and_environment_and_rejects_mistakes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("reader.toml");
    std::fs::write(
        &file,
        "primary_host = \"from-file\"\nprimary-port = 4000\nretention = \"2h\"\nheartbeat = \"2s\"\ngraylog_enabled = false\n",
    )
    .expect("write toml");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(tests::binary("replica-reader"))
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .args(args)
            .output()
            .expect("runs");
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let config = file.display().to_string();
    let (code, text) =
        run(&["--config", &config, "--print-config", "--retention", "3h"], &[("MARIA_PRIMARY_PORT", "5000")]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("primary_host = \"from-file\""), "file beats default: {text}");
    assert!(text.contains("primary_port = \"5000\""), "environment beats file: {text}");
    assert!(text.contains("retention = \"3h\""), "flag beats file: {text}");
    assert!(text.contains("heartbeat = \"2s\""), "{text}");

    std::fs::write(&file, "primary_hots = \"typo\"\n").expect("write toml");
    let (code, text) = run(&["--print-config"], &[("REPLICA_CONFIG", &config)]);
    assert_eq!(code, Some(2));
    assert!(text.contains("unknown key \"primary_hots\"") && text.contains("allowed keys are"), "{text}");

    std::fs::write(&file, "primary_port = \"not-a-port\"\n").expect("write toml");
    let (code, text) = run(&["--config", &config, "--print-config"], &[]);
    assert_eq!(code, Some(2));
    assert!(text.contains("not-a-port") && text.contains("--primary-port"), "{text}");
}

#[test]
fn dot_env_sits_between_the_environment_and_the_toml_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("reader.toml");
    std::fs::write(&file, "primary_host = \"from-file\"\nprimary_port = 4000\nheartbeat = \"2s\"\n").expect("toml");
    std::fs::write(dir.path().join(".env"), "MARIA_PRIMARY_HOST=from-dotenv\nMARIA_PRIMARY_PORT=4100\n").expect(".env");
    let config = file.display().to_string();
    let out = Command::new(tests::binary("replica-reader"))
        .env_clear()
        .env("MARIA_PRIMARY_PORT", "5000")
        .current_dir(dir.path())
        .args(["--config", &config, "--print-config"])
        .output()
        .expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("primary_host = \"from-dotenv\""), ".env beats the file: {text}");
    assert!(text.contains("primary_port = \"5000\""), "the environment beats .env: {text}");
    assert!(text.contains("heartbeat = \"2s\""), "the file beats the default: {text}");
}

#[test]
fn both_binaries_run_with_two_malloc_arenas_and_small_pooled_buffers_unless_the_operator_chose() {
    let environ = |child: &std::process::Child| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let env = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap_or_default();
            let env = String::from_utf8_lossy(&env).into_owned();
            if env.contains("MYSQL_ASYNC_BUFFER_SIZE_CAP=") || std::time::Instant::now() > deadline {
                return env;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    for (binary, chosen) in [("replica-reader", None), ("replica-applier", None), ("replica-applier", Some("4"))] {
        // Neither can reach what it needs: both wait and retry, long enough to be looked at.
        let mut c = Command::new(tests::binary(binary));
        c.env_clear()
            .env("MARIA_PRIMARY_HOST", "127.0.0.1")
            .env("MARIA_PRIMARY_PORT", "1")
            .env("REPLICA_JOURNAL_DIR", tempfile::tempdir().expect("tempdir").keep())
            .env("REPLICA_GRPC_ADDR", format!("127.0.0.1:{}", tests::free_port()))
            .env("MARIA_SECONDARY_HOST", "127.0.0.1")
            .env("MARIA_SECONDARY_PORT", "1")
            .env("MARIA_SECONDARY_NAME", "arenas")
            .env("REPLICA_READER_URL", "http://127.0.0.1:1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(n) = chosen {
            c.env("MALLOC_ARENA_MAX", n);
        }
        let mut child = c.spawn().expect("start");
        let env = environ(&child);
        let _ = child.kill();
        let _ = child.wait();
        let want = format!("MALLOC_ARENA_MAX={}\0", chosen.unwrap_or("2"));
        assert!(env.contains(&want), "{binary} runs with {want:?}: {env:?}");
        assert!(env.contains("MYSQL_ASYNC_BUFFER_SIZE_CAP=65536\0"), "{binary} shrinks pooled buffers: {env:?}");
    }
}
