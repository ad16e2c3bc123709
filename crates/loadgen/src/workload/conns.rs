//! `conns`: N idle logged-in connections; the server's resident memory per connection and
//! the login rate.
//!
//! One process may hold only as many sockets as its open-file limit (20 000 here, the hard
//! limit), so the connections are opened by child processes of this same binary
//! (`conns-child`), at most `--per-process` each. Client sockets are bound to 127.0.0.2,
//! 127.0.0.3, … (`--per-addr` each) to get past one source address's ephemeral ports.
//! Each child prints `ready COUNT` once its connections are logged in and holds them until
//! its standard input closes; the parent reads the server's `VmRSS` before and after.
//!
//! Note that logging N users in makes the server send N × (N − 1) / 2 `joined` notices:
//! the login phase measures that fan-out too, and the children read every notice.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{Common, IDLE_READ_BUFFER, finish, login_all, secs};
use crate::net::{Bind, Error};
use crate::recv::{Expect, Shared};
use crate::report::Report;
use crate::stats::rss_bytes;

/// Options of `conns`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnsOpts {
    /// Connections to open and log in.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub conns: usize,
    /// The server's process id, to read its memory from `/proc/PID/status`.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Most connections per child process (each has its own open-file limit).
    #[arg(long, default_value_t = 9000)]
    pub per_process: usize,
    /// Connections per source address (127.0.0.2, 127.0.0.3, …).
    #[arg(long, default_value_t = 10_000)]
    pub per_addr: usize,
    /// How long to hold the connections once all are logged in before reading the
    /// server's memory, in milliseconds (the `joined` notices drain meanwhile).
    #[arg(long, default_value_t = 2000)]
    pub hold_ms: u64,
}

/// Options of one child of `conns`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChildOpts {
    /// Global index of this child's first connection.
    #[arg(long)]
    pub first: usize,
    /// Connections this child opens.
    #[arg(long)]
    pub count: usize,
    /// Connections per source address.
    #[arg(long, default_value_t = 10_000)]
    pub per_addr: usize,
}

/// The source-address plan of `conns`, for a process whose first connection is `offset`.
pub fn spread(per_addr: usize, offset: usize) -> Bind {
    Bind::Spread {
        first: 2,
        per_addr: per_addr.max(1),
        offset,
    }
}

/// Splits `n` connections into children of at most `per_process`: `(first, count)` each.
pub fn split(n: usize, per_process: usize) -> Vec<(usize, usize)> {
    let per = per_process.max(1);
    (0..n.div_ceil(per))
        .map(|k| (k * per, per.min(n - k * per)))
        .collect()
}

/// Runs a child: logs its connections in, prints `ready COUNT`, holds them until standard
/// input closes (or the timeout), and exits.
///
/// # Errors
/// When a login fails.
pub async fn child(common: &Common, o: &ChildOpts) -> Result<(), Error> {
    let deadline = common.deadline();
    let mut c = common.clone();
    c.bind = spread(o.per_addr, o.first);
    let shared = Shared::new(o.count);
    // Users are numbered globally, and so are the source addresses (the bind offset).
    let users = (o.first..o.first + o.count)
        .map(|i| (format!("{}{i}", common.prefix), Expect::default()))
        .collect();
    let (clients, login) = login_all(&c, users, &shared, IDLE_READ_BUFFER, deadline).await?;
    println!("ready {} {:.6}", clients.len(), secs(login));
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    // Hold until the parent closes our standard input (or it fails), or the deadline:
    // either way the hold is over, so the timeout's result does not matter.
    let _ = tokio::time::timeout_at(deadline, async {
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let (seen, closed, _) = finish(&shared, clients).await;
    println!("done joined={} closed={closed}", seen.joined);
    Ok(())
}

/// A child process and the reader of its standard output.
type ChildProc = (Child, BufReader<tokio::process::ChildStdout>);

/// Runs `conns`.
///
/// # Errors
/// When a child cannot be started or fails, or the server's memory cannot be read.
pub async fn run(common: &Common, o: &ConnsOpts) -> Result<Report, Error> {
    let deadline = common.deadline();
    let server_rss = || {
        o.server_pid
            .map(rss_bytes)
            .transpose()
            .map_err(|e| Error::io("cannot read the server's memory", e))
    };
    let rss_before = server_rss()?;
    let started = Instant::now();
    let mut children = spawn_children(common, o)?;
    let mut ready = 0usize;
    for (_, out) in &mut children {
        ready += read_ready(out, deadline).await?;
    }
    let login = started.elapsed();
    tokio::time::sleep(Duration::from_millis(o.hold_ms)).await;
    let rss_after = server_rss()?;
    let (joined, closed) = release_children(children).await?;

    let mut report = Report {
        workload: "conns".into(),
        server: common.server.to_string(),
        clients: ready,
        login_s: secs(login),
        logins_per_s: ready as f64 / secs(login).max(1e-9),
        disconnected: closed,
        ..Report::default()
    };
    report.conns = Some(o.conns);
    report.processes = Some(o.conns.div_ceil(o.per_process.max(1)));
    report.joined_seen = Some(joined);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.server_rss_before = Some(before);
        report.server_rss_after = Some(after);
        let per = after.saturating_sub(before) as f64 / ready.max(1) as f64;
        report.bytes_per_conn = Some(per.round());
        report.rss_at_100k = Some((before as f64 + per * 1e5).round());
        report.rss_at_1m = Some((before as f64 + per * 1e6).round());
    }
    Ok(report)
}

/// Starts the children (`conns-child`), at most `--per-process` connections each. They are
/// killed when dropped, so an early error leaves none behind.
fn spawn_children(common: &Common, o: &ConnsOpts) -> Result<Vec<ChildProc>, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::io("cannot find this program", e))?;
    let mut children = Vec::new();
    for (first, count) in split(o.conns, o.per_process) {
        let mut child = Command::new(&exe)
            .arg("--server")
            .arg(common.server.to_string())
            .arg("--prefix")
            .arg(&common.prefix)
            .arg("--timeout")
            .arg(common.timeout.as_secs_f64().to_string())
            .arg("--login-concurrency")
            .arg(common.login_concurrency.to_string())
            .arg("--threads")
            .arg("1")
            .arg("conns-child")
            .arg("--first")
            .arg(first.to_string())
            .arg("--count")
            .arg(count.to_string())
            .arg("--per-addr")
            .arg(o.per_addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io("cannot start a child process", e))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| Error::Protocol("child has no stdout".into()))?;
        children.push((child, BufReader::new(out)));
    }
    Ok(children)
}

/// Waits for a child's `ready COUNT` line; returns COUNT.
async fn read_ready(
    out: &mut BufReader<tokio::process::ChildStdout>,
    deadline: tokio::time::Instant,
) -> Result<usize, Error> {
    let mut line = String::new();
    match tokio::time::timeout_at(deadline, out.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return Err(Error::Protocol("a child failed before it was ready".into())),
        Err(_) => return Err(Error::Timeout("children logging in".into())),
    }
    line.strip_prefix("ready ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| Error::Protocol(format!("unexpected child output: {line:?}")))
}

/// Closes the children's standard input, which tells them to let go, and sums the counts
/// of their `done joined=J closed=C` lines: `joined` notices seen and connections the
/// server closed.
async fn release_children(children: Vec<ChildProc>) -> Result<(u64, u64), Error> {
    let (mut joined, mut closed) = (0u64, 0u64);
    for (mut child, mut out) in children {
        drop(child.stdin.take());
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            return Err(Error::Protocol(
                "a child did not report its counts when released".into(),
            ));
        }
        let (j, c) = parse_done(&line)
            .ok_or_else(|| Error::Protocol(format!("unexpected child output: {line:?}")))?;
        joined += j;
        closed += c;
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            // It has reported everything; one that does not exit is killed. An error
            // here means it exited meanwhile.
            let _ = child.kill().await;
        }
    }
    Ok((joined, closed))
}

/// `(J, C)` of a child's `done joined=J closed=C` line.
fn parse_done(line: &str) -> Option<(u64, u64)> {
    let mut words = line.strip_prefix("done ")?.split_whitespace();
    let joined = words.next()?.strip_prefix("joined=")?.parse().ok()?;
    let closed = words.next()?.strip_prefix("closed=")?.parse().ok()?;
    Some((joined, closed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_connections_over_children() {
        assert_eq!(
            split(19_000, 9000),
            vec![(0, 9000), (9000, 9000), (18_000, 1000)]
        );
        assert_eq!(split(10, 9000), vec![(0, 10)]);
        assert_eq!(split(0, 9000), vec![]);
    }

    #[test]
    fn reads_a_childs_counts() {
        assert_eq!(parse_done("done joined=12 closed=0\n"), Some((12, 0)));
        assert_eq!(parse_done("done joined=x closed=0\n"), None);
        assert_eq!(parse_done("ready 5 0.1\n"), None);
    }
}
