//! `replica-applier` binary. The applier is built in its own issue; until then this stub only says so.

use clap::Parser;

/// Applies the reader's journal to one secondary, exactly once (not implemented yet).
#[derive(Debug, Parser)]
#[command(name = "replica-applier", version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _ = Cli::parse();
    eprintln!("replica-applier: not implemented yet; see the README's status section");
    std::process::ExitCode::from(2)
}
