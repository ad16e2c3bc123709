//! Development tasks, run with `cargo xtask <task>` (an alias in `.cargo/config.toml`).
//!
//! - `ci`: exactly what CI runs: format check, clippy with warnings denied, docs, the tests.
//! - `bench`: the benchmark suite against a release server; writes `docs/BENCHMARKS.md`.

mod bench;
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
    /// Release build, the benchmark suite on loopback, then docs/BENCHMARKS.md with charts.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Ci => ci::run(),
        Task::Bench(args) => bench::run(&args),
    }
}
