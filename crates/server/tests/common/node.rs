//! The real `simpletextim-server` binary as a child process: a node of a test.
//!
//! [`Node::spawn`] starts the binary (with `RUST_LOG=info` unless the command sets it),
//! reads its stdout and stderr line by line on two threads, and waits (bounded by
//! [`START_WAIT`]) for the `listening on ADDR` line: that is the framed TCP address
//! ([`Node::addr`]); an `HTTP on ADDR: …` line logged before it gives [`Node::http_addr`].
//! Every line is kept ([`Node::log`]) for failure messages and for tests that look for
//! one ([`Node::wait_for_log`]). A node that exits or stays silent fails the test with
//! its log.
//!
//! [`Node::kill`] is a crash (SIGKILL); [`Node::terminate`] a clean stop (SIGTERM, then a
//! bounded wait for the exit). Dropping a node kills it. A watchdog (`sh`, in a process
//! group of its own) SIGKILLs the node if the test process dies first (even by SIGKILL), so
//! no server outlives the test binary.
//!
//! Included with `#[path = "common/node.rs"] mod node;` (like `pg.rs` and `redis.rs`: it
//! has nothing to do with the in-process servers of `common/mod.rs`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The server binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_simpletextim-server");
/// How long a node may take to log `listening on`.
pub const START_WAIT: Duration = Duration::from_secs(30);
/// How long [`Node::terminate`] waits for the exit after SIGTERM.
pub const STOP_WAIT: Duration = Duration::from_secs(10);

/// Everything a node logged, and whether both of its outputs reached EOF.
#[derive(Debug, Default)]
struct Log {
    lines: Vec<String>,
    closed: usize,
}

#[derive(Debug, Default)]
struct Shared {
    log: Mutex<Log>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // A reader thread never panics while holding the lock; recover all the same.
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The log once `done` holds of it, both outputs are closed, or `deadline` passed,
    /// whichever comes first (the caller tells which from the log).
    fn wait(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&Log) -> bool,
    ) -> std::sync::MutexGuard<'_, Log> {
        let mut guard = self.lock();
        loop {
            let now = Instant::now();
            if done(&guard) || guard.closed == 2 || now >= deadline {
                return guard;
            }
            guard = self
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// A running server process.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    http: Option<SocketAddr>,
    shared: Arc<Shared>,
    watchdog: Option<Child>,
}

/// The address after `marker` in `line`: `listening on 127.0.0.1:5000`,
/// `HTTP on 127.0.0.1:5080: the web client at …`.
pub fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let word = line.split(marker).nth(1)?.split_whitespace().next()?;
    word.trim_end_matches([':', ',', '.']).parse().ok()
}

impl Node {
    /// The binary with `args`, `RUST_LOG=info` and no stdin: a command to adjust (`env`,
    /// `env_remove`, more args) before [`Node::spawn_command`].
    pub fn command(args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).env("RUST_LOG", "info").stdin(Stdio::null());
        c
    }

    /// Starts the binary with `args` and waits for its `listening on` line. Panics (failing
    /// the test, with the log) when it exits first or stays silent for [`START_WAIT`].
    pub fn spawn(args: &[&str]) -> Node {
        Node::spawn_command(Node::command(args))
    }

    /// [`Node::spawn`] of a prepared command (stdout and stderr are replaced by pipes).
    pub fn spawn_command(mut cmd: Command) -> Node {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
        let pid = child.id();
        let shared = Arc::new(Shared::default());
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        read_lines(stdout, Arc::clone(&shared));
        read_lines(stderr, Arc::clone(&shared));
        let watchdog = spawn_watchdog(pid);
        let mut node = Node {
            child: Some(child),
            pid,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            http: None,
            shared,
            watchdog,
        };
        let listening = |log: &Log| {
            log.lines
                .iter()
                .find_map(|l| addr_after(l, "listening on "))
        };
        let deadline = Instant::now() + START_WAIT;
        let guard = node.shared.wait(deadline, |log| listening(log).is_some());
        if let Some(addr) = listening(&guard) {
            node.addr = addr;
            node.http = guard.lines.iter().find_map(|l| addr_after(l, "HTTP on "));
            drop(guard);
            return node;
        }
        let exited = guard.closed == 2;
        let lines = guard.lines.join("\n");
        drop(guard);
        let status = node.kill();
        panic!(
            "the server did not log `listening on ADDR` {} ({status:?}); its log:\n{lines}",
            if exited {
                "before it exited".to_owned()
            } else {
                format!("within {START_WAIT:?}")
            }
        );
    }

    /// The framed TCP address (`listening on`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP/WebSocket address (`HTTP on`), when the node serves HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Every line logged so far (stdout and stderr, each in order).
    pub fn log(&self) -> Vec<String> {
        self.shared.lock().lines.clone()
    }

    /// The log as one text, for failure messages.
    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }

    /// The first line containing `needle`, waiting for it at most `timeout`; `None` when
    /// none came in time or the node closed its outputs.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let found = |log: &Log| log.lines.iter().find(|l| l.contains(needle)).cloned();
        let guard = self
            .shared
            .wait(Instant::now() + timeout, |log| found(log).is_some());
        found(&guard)
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the node at once (SIGKILL), as a crash; returns its exit status (`None` when
    /// it was already reaped).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        let status = child.wait().ok();
        self.stop_watchdog();
        status
    }

    /// Stops the node cleanly: SIGTERM, then waits at most [`STOP_WAIT`] for it to exit.
    /// Returns the exit status; panics (after a SIGKILL, with the log) when it did not exit
    /// in time.
    pub fn terminate(&mut self) -> ExitStatus {
        let Some(mut child) = self.child.take() else {
            panic!("terminate: the node was already stopped")
        };
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_WAIT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => break None,
            }
        };
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            self.stop_watchdog();
            panic!(
                "the server did not exit within {STOP_WAIT:?} of SIGTERM; its log:\n{}",
                self.log_text()
            );
        };
        self.stop_watchdog();
        // The last lines arrive right after the exit: wait (bounded) for both EOFs.
        drop(
            self.shared
                .wait(Instant::now() + Duration::from_secs(2), |_| false),
        );
        status
    }

    fn stop_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        self.stop_watchdog();
    }
}

/// Reads `out` line by line into `shared` on a thread of its own, until EOF.
fn read_lines(out: impl Read + Send + 'static, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            shared.lock().lines.push(line);
            shared.changed.notify_all();
        }
        shared.lock().closed += 1;
        shared.changed.notify_all();
    });
}

/// SIGKILLs `pid` once this process is gone; killed by the node when it stops. `None` (no
/// watchdog, the node still works) when `sh` cannot start.
fn spawn_watchdog(pid: u32) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    const SCRIPT: &str = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        kill -KILL "$2" 2>/dev/null
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("node-watchdog")
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}
