//! `cargo xtask fuzz`: long runs of the fuzz targets.
//!
//! cargo-fuzz needs a nightly toolchain, so the fuzz targets are proptest properties over
//! hostile inputs (issue 10): `crates/proto/tests/fuzz.rs` (frame decoder and command
//! parser) and the server's `wire::fuzz` (line codec). `cargo test` runs them with a small
//! case count; this task builds them in release and runs them with `PROPTEST_CASES=N`.

use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

/// Options of `cargo xtask fuzz`.
#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// Cases per property (the PROPTEST_CASES of the run; `cargo test` runs 256).
    #[arg(long, default_value_t = 100_000)]
    cases: u32,
    /// Stop each target after this many seconds: a run stopped so found no failure in that
    /// time, but ran fewer than --cases cases.
    #[arg(long)]
    seconds: Option<u64>,
}

/// A fuzz target: a test binary of a package, and the filter selecting its fuzz tests.
struct Target {
    name: &'static str,
    package: &'static str,
    binary: &'static [&'static str],
    filter: Option<&'static str>,
}

const TARGETS: &[Target] = &[
    Target {
        name: "frame decoder and command parser (crates/proto/tests/fuzz.rs)",
        package: "simpletextim-proto",
        binary: &["--test", "fuzz"],
        filter: None,
    },
    Target {
        name: "line codec (crates/server/src/wire/fuzz.rs)",
        package: "simpletextim-server",
        binary: &["--lib"],
        filter: Some("wire::fuzz::"),
    },
];

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The `cargo test --release` arguments of a target, without the test binary's own.
fn test_args(t: &Target) -> Vec<&'static str> {
    let mut args = vec!["test", "--release", "-p", t.package];
    args.extend_from_slice(t.binary);
    args
}

/// How a target's run ended.
enum End {
    Exited(ExitStatus),
    TimedOut,
}

/// Entry point.
pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    for t in TARGETS {
        let mut build = test_args(t);
        build.push("--no-run");
        eprintln!("$ cargo {}", build.join(" "));
        let status = cargo().args(&build).status().context("cannot run cargo")?;
        if !status.success() {
            bail!("cargo {} failed ({status})", build.join(" "));
        }
    }
    let cases = args.cases.to_string();
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for t in TARGETS {
        let mut run = test_args(t);
        run.push("--");
        run.extend(t.filter);
        eprintln!("$ PROPTEST_CASES={cases} cargo {}", run.join(" "));
        let mut cmd = cargo();
        cmd.args(&run).env("PROPTEST_CASES", &cases);
        let started = Instant::now();
        let end = run_with_limit(cmd, args.seconds.map(Duration::from_secs))?;
        let secs = started.elapsed().as_secs_f64();
        let line = match end {
            End::Exited(s) if s.success() => {
                format!("{}: ok, {cases} cases per property in {secs:.1} s", t.name)
            }
            End::Exited(s) => {
                failed.push(t.name);
                format!("{}: FAILED ({s}) after {secs:.1} s", t.name)
            }
            End::TimedOut => format!(
                "{}: no failure in {secs:.1} s (stopped at the time limit, before {cases} cases \
                 per property)",
                t.name
            ),
        };
        eprintln!("{line}");
        report.push(line);
    }
    eprintln!("\nfuzz summary:");
    for line in &report {
        eprintln!("  {line}");
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Runs `cmd`, stopping it (with the test binary it started) once `limit` has passed.
fn run_with_limit(mut cmd: Command, limit: Option<Duration>) -> anyhow::Result<End> {
    let Some(limit) = limit else {
        return Ok(End::Exited(cmd.status().context("cannot run cargo")?));
    };
    // A process group of its own, so that stopping it stops the test binary too.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot run cargo")?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(End::Exited(status));
        }
        if Instant::now() >= deadline {
            #[cfg(unix)]
            {
                let group = format!("-{}", child.id());
                // Ends cargo and the test binary; a group already gone is no error.
                let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            }
            #[cfg(not(unix))]
            child.kill()?;
            child.wait()?;
            return Ok(End::TimedOut);
        }
        thread::sleep(Duration::from_millis(100));
    }
}
