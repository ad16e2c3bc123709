//! Running the load generator once and reading its report (its last stdout line, JSON).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use simpletextim_loadgen::report::Report;

use super::suite::Scenario;

/// How long past its own `--timeout` the load generator may run before it is killed.
const GRACE: Duration = Duration::from_secs(60);

/// Runs the load generator once against the server at `addr` (whose pid is `server_pid`,
/// for the workloads that read its memory) with `args` (the scenario's, its quiet run's or
/// its reference's); returns its report.
pub fn run(
    bin: &Path,
    addr: &str,
    server_pid: Option<u32>,
    s: &Scenario,
    args: &[String],
    prefix: &str,
) -> anyhow::Result<Report> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--server",
        addr,
        "--timeout",
        &s.timeout.to_string(),
        "--prefix",
        prefix,
    ]);
    cmd.args(args);
    if let Some(pid) = server_pid.filter(|_| s.needs_server_pid()) {
        cmd.args(["--server-pid", &pid.to_string()]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    // Its stdout is one JSON line (children's output goes to their own pipes), far below
    // a pipe's buffer: the child never blocks on it, so it is read after the exit.
    let until = Instant::now() + Duration::from_secs(s.timeout) + GRACE;
    let Some(status) = crate::wait_or_kill(&mut child, until)? else {
        bail!("{}: the load generator did not stop", s.id);
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut out)
        .with_context(|| format!("{}: cannot read the load generator's output", s.id))?;
    if !status.success() {
        bail!("{}: the load generator failed ({status})", s.id);
    }
    parse(&out).with_context(|| format!("{}: bad output from the load generator", s.id))
}

/// The report in the load generator's output: its last line that starts with `{`.
fn parse(out: &str) -> anyhow::Result<Report> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line")?;
    serde_json::from_str(line).with_context(|| format!("not a report: {line}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_json_line() {
        let r = Report {
            workload: "fanout".into(),
            clients: 3,
            echoes: Some(2),
            ..Report::default()
        };
        let out = format!("{{\"noise\":1}}\nstarting\n{}\n", r.to_json_line());
        assert_eq!(parse(&out).unwrap(), r);
        assert!(parse("no json\n").is_err());
        assert!(parse("{\"workload\": 1}\n").is_err());
    }
}
