//! Development tasks, run with `cargo xtask <task>` (an alias in `.cargo/config.toml`).
//!
//! - `ci`: exactly what CI runs: format check, clippy with warnings denied, docs, the tests.
//! - `bench`: the benchmark suite against a release server; writes `docs/BENCHMARKS.md`.
//! - `fuzz`: long runs of the proptest fuzz targets (`--cases N`) on a release build.

mod bench;
mod ci;
mod fuzz;

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
    /// Long runs of the fuzz targets (proptest properties over hostile input: the frame
    /// decoder and command parser, the line codec): `cargo test --release` of exactly those
    /// tests with PROPTEST_CASES=N.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Ci => ci::run(),
        Task::Bench(args) => bench::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
    }
}
