//! `cargo xtask ci`: the checks CI runs, in order, stopping at the first failure.

use std::process::Command;

use anyhow::{Context, bail};

/// Runs one cargo invocation, echoing it first.
fn cargo(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The version of cargo-deny `.ci/run` installs.
const CARGO_DENY: &str = "cargo-deny@0.20.2";

pub fn run() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    // Licences, wildcard versions and sources of every dependency (deny.toml); the
    // advisories check needs GitHub, see deny.toml.
    let deny_present = Command::new("cargo-deny")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !deny_present {
        bail!("cargo-deny is not installed: cargo install --locked {CARGO_DENY} (.ci/run does)");
    }
    // cargo-deny reads the manifests of every crate in Cargo.lock, those of other
    // platforms too, which a build on this one never downloads: fetch them all first.
    cargo(&["fetch", "--locked"], &[])?;
    cargo(
        &[
            "deny",
            "--offline",
            "check",
            "--hide-inclusion-graph",
            "licenses",
            "bans",
            "sources",
        ],
        &[],
    )?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    test()
}

/// The README's test command: what the tests need from the system, then every test.
pub fn test() -> anyhow::Result<()> {
    crate::setup::ensure_test_components()?;
    cargo(&["test", "--workspace"], &[])
}
