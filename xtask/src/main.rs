//! Development tasks, run with `cargo xtask <task>` (an alias in `.cargo/config.toml`).
//!
//! - `ci`: exactly what CI runs: format check, clippy with warnings denied, docs, the tests.
//! - `test`: the README's test command: installs what the tests need from the system when
//!   missing (setup.rs), then `cargo test --workspace`.
//! - `bench`: the benchmark suite against a release server; writes `docs/BENCHMARKS.md`.
//! - `fuzz`: long runs of the proptest fuzz targets (`--cases N`) on a release build.
//! - `cert`: a self-signed certificate and key for a TLS test server.
//! - `cluster`: a cluster of server nodes on this machine (private PostgreSQL and Redis),
//!   to try cluster mode by hand.

mod bench;
mod cert;
mod ci;
mod cluster;
mod fuzz;
mod setup;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "SimpleTextIM development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Format check, cargo deny, clippy (-D warnings), rustdoc (-D warnings), then `cargo xtask test`.
    Ci,
    /// Installs what the tests need from the system when missing (Chromium, chromedriver,
    /// PostgreSQL, redis-server: the distribution's packages), then `cargo test --workspace`.
    Test,
    /// Release build, the benchmark suite on loopback, then docs/BENCHMARKS.md with charts.
    Bench(bench::BenchArgs),
    /// Long runs of the fuzz targets (proptest properties over hostile input: the frame
    /// decoder and command parser, the line codec): `cargo test --release` of exactly those
    /// tests with PROPTEST_CASES=N.
    Fuzz(fuzz::FuzzArgs),
    /// A self-signed certificate (cert.pem) and its key (key.pem, mode 0600) for localhost,
    /// 127.0.0.1, ::1 and each --name, for a TLS test server; prints the commands using them.
    Cert(cert::CertArgs),
    /// A cluster on this machine: a release build, a private PostgreSQL and redis-server,
    /// `migrate`, then N nodes on 127.0.0.1:7001.. with --cluster-redis; prints how to
    /// connect clients and runs until Ctrl-C, which stops everything and removes its files.
    Cluster(cluster::ClusterArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Ci => ci::run(),
        Task::Test => ci::test(),
        Task::Bench(args) => bench::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Cert(args) => cert::run(&args),
        Task::Cluster(args) => cluster::run(&args),
    }
}

/// Waits for `child` to exit until `until`; past it, kills it and returns `None`.
///
/// # Errors
/// When its state cannot be read.
fn wait_or_kill(
    child: &mut std::process::Child,
    until: std::time::Instant,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if std::time::Instant::now() > until {
            // Errors here mean it has exited meanwhile.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
