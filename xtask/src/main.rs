//! Development tasks, run with `cargo xtask <task>` (an alias in `.cargo/config.toml`).
//!
//! - `ci`: exactly what CI runs: format check, clippy with warnings denied, docs, the tests.

mod ci;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "SimpleTextIM development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Format check, clippy (-D warnings), rustdoc (-D warnings), then `cargo test --workspace`.
    Ci,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Ci => ci::run(),
    }
}
