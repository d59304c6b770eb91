//! The initial copy's progress on a real terminal (tmux): one bar per table redrawn in place, rates and ETAs that
//! read well, finished tables frozen at their final figures.

use std::time::Duration;

use tests::{binary, free_port, Applier, MariaDb, Reader, Role};

/// A tmux server of the test's own, killed on drop.
struct Tmux(String);

impl Tmux {
    fn start(command: &str, width: u16, height: u16) -> Self {
        let socket = format!("replica-progress-{}", free_port());
        let status = std::process::Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "t", "-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .status()
            .expect("tmux runs (apt-get install tmux)");
        assert!(status.success(), "tmux new-session");
        Tmux(socket)
    }

    /// What the terminal shows, scrollback included.
    fn screen(&self) -> String {
        self.capture(&[])
    }

    /// The same with lines the terminal wrapped joined again.
    fn joined(&self) -> String {
        self.capture(&["-J"])
    }

    fn capture(&self, extra: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.0, "capture-pane", "-p", "-S", "-", "-t", "t"])
            .args(extra)
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // The program in the pane first: it takes the terminal's SIGHUP as a reload and would outlive the server.
        if let Ok(out) =
            std::process::Command::new("tmux").args(["-L", &self.0, "list-panes", "-a", "-F", "#{pane_pid}"]).output()
        {
            for shell in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("pkill").args(["-TERM", "-P", shell]).status();
            }
        }
        let _ = std::process::Command::new("tmux").args(["-L", &self.0, "kill-server"]).status();
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_progress_bars_redraw_in_place_on_a_terminal() {
    let primary = MariaDb::start(Role::Primary).await;
    primary.exec("CREATE DATABASE pb; CREATE DATABASE IF NOT EXISTS test").await;
    for t in ["alpha", "beta", "gamma"] {
        primary
            .exec(&format!(
                "CREATE TABLE pb.{t} (id INT PRIMARY KEY, v VARCHAR(20)); \
                 INSERT INTO pb.{t} SELECT seq, 'x' FROM test.seq_1_to_3000"
            ))
            .await;
    }
    let reader = Reader::start(&primary, &primary.dir.path().join("journal"), &[]).await;
    let secondary = MariaDb::start(Role::Secondary).await;
    let env = Applier::env(&reader, &secondary, "tty", &[("REPLICA_COPY_ROWS_PER_SECOND", "2000")]);
    let assignments: Vec<String> = env.iter().map(|(k, v)| format!("{k}={}", shell_quote(v))).collect();
    let command = format!(
        "env -i TERM=xterm {} {} ; sleep 3600",
        assignments.join(" "),
        shell_quote(&binary("replica-applier").to_string_lossy())
    );
    let tmux = Tmux::start(&command, 100, 30);
    let mid = tests::eventually(Duration::from_secs(60), "a bar with rows copied", || async {
        let s = tmux.screen();
        s.lines().any(|l| l.starts_with("initial copy") && l.contains("rows/s")).then_some(s)
    })
    .await;
    assert_eq!(bar_lines(&mid, "initial copy"), 1, "one overall bar, redrawn in place:\n{mid}");
    for t in ["alpha", "beta", "gamma"] {
        assert!(bar_lines(&mid, &format!("pb.{t} ")) <= 1, "pb.{t} shown once at most:\n{mid}");
    }
    assert_whole_rates(&mid);
    tests::eventually(Duration::from_secs(120), "the copy to finish", || async {
        let tables: Vec<u64> =
            secondary.query("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'pb'").await;
        let mut done = tables.first() == Some(&3);
        for t in ["alpha", "beta", "gamma"] {
            done = done && secondary.query::<u64>(&format!("SELECT COUNT(*) FROM pb.{t}")).await.first() == Some(&3000);
        }
        (done && tmux.screen().contains("copy finished")).then_some(())
    })
    .await;
    let end = tmux.joined();
    assert_eq!(end.matches("copy finished").count(), 1, "{end}");
    for t in ["alpha", "beta", "gamma"] {
        // Its final figures once, and its log line once (nothing printed twice by a redraw).
        let finals = end.lines().filter(|l| l.starts_with(&format!("pb.{t} ")) && l.contains("copied 3,000 rows in"));
        assert_eq!(finals.count(), 1, "pb.{t}'s final figures once:\n{end}");
        assert_eq!(end.matches(&format!("table={t} rows=3000")).count(), 1, "{end}");
    }
    assert_eq!(bar_lines(&end, ""), 0, "the bars leave the screen when the copy ends:\n{end}");
    assert_whole_rates(&end);
}

/// Lines that are progress bars (a prefix, then `[`) starting with `prefix`.
fn bar_lines(screen: &str, prefix: &str) -> usize {
    screen.lines().filter(|l| l.starts_with(prefix) && l.contains(" [") && l.contains("] ")).count()
}

/// Every rate on screen is whole rows per second (`2,180 rows/s`, not `2,180.1026/s`), and no ETA of 0 s is
/// shown for work not done.
fn assert_whole_rates(screen: &str) {
    for line in screen.lines() {
        for (i, _) in line.match_indices(" rows/s") {
            let figure = line[..i].rsplit(' ').next().unwrap_or_default().trim_start_matches('(');
            assert!(
                !figure.is_empty() && figure.chars().all(|c| c.is_ascii_digit() || c == ','),
                "a whole rate: {line}"
            );
        }
        assert!(!line.contains("ETA 0s"), "{line}");
    }
}
