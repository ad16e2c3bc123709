//! A private `redis-server` per call of [`RedisServer::start`], for the cluster tests (which
//! need several buses, and need to kill one and bring it back).
//!
//! Each server runs from `redis-server` on `PATH` (else `/usr/bin`, `/usr/local/bin`,
//! `/usr/sbin`) on a free port of 127.0.0.1, in a new temporary directory, configured by
//! arguments only: no config file, no persistence (`--save ''`, `--appendonly no`),
//! protected mode, logging to `redis.log` in that directory. [`RedisServer::start`] waits
//! (bounded by [`START_WAIT`]) until it answers a raw `PING` with `+PONG`.
//!
//! A watchdog (`sh`, in a process group of its own so that a Ctrl-C of the test run does
//! not take it down first) polls the test process; once it is gone, it SIGKILLs the server
//! whose pid is in the directory's `server.pid` (written at each start, removed when the
//! server is killed or stopped) and deletes the directory. So no `redis-server` outlives
//! the test binary, however it ends (even SIGKILL). A [`RedisServer`] dropped normally
//! stops its server, deletes its directory and ends its watchdog itself.
//!
//! Like `pg.rs`, it is not part of `common/mod.rs` (which starts in-process servers): a test
//! file that needs it includes it with `#[path = "common/redis.rs"] mod redis;`.
//!
//! `redis-server` missing is a failure naming `cargo xtask test` (which installs it),
//! never a skip.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to answer `PING`.
pub const START_WAIT: Duration = Duration::from_secs(20);
/// How long [`RedisServer::stop`] waits after SIGTERM before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(5);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A private `redis-server`, stopped (and its directory deleted) on drop.
#[derive(Debug)]
pub struct RedisServer {
    program: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The running server; `None` after [`RedisServer::kill`] or [`RedisServer::stop`].
    child: Option<Child>,
    watchdog: Option<Child>,
}

impl RedisServer {
    /// Starts a new server on a free port in a new directory and waits until it answers
    /// `PING`. Panics (failing the test) when it cannot.
    pub fn start() -> RedisServer {
        match try_start() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's directory (its log is `redis.log` there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server runs (has not been killed or stopped, and has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// What the server logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Kills the server at once (SIGKILL), as a crash would; a no-op when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(self.dir.join("server.pid"));
        }
    }

    /// Stops the server cleanly (SIGTERM; SIGKILL after a bounded wait); a no-op when it is
    /// not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + STOP_WAIT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(self.dir.join("server.pid"));
        }
    }

    /// Starts the server again on the same port and directory (killing it first if it still
    /// runs) and waits until it answers `PING`. Panics when it cannot.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            panic!("redis-server on port {} did not restart: {e}", self.port);
        }
    }

    /// Whether the server answers `PING` with `+PONG` within `timeout`.
    pub fn ping(&self, timeout: Duration) -> bool {
        ping(self.addr(), timeout).is_ok()
    }

    /// Spawns the server on `self.port` and waits for `PING`; on failure the server is
    /// killed and the error carries its log.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.program)
            .current_dir(&self.dir)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .args(["--logfile", "redis.log"])
            .args(["--loglevel", "notice"])
            .args(["--databases", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        let pid_file = self.dir.join("server.pid");
        if let Err(e) = std::fs::write(&pid_file, child.id().to_string()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("cannot write {}: {e}", pid_file.display()));
        }
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let _ = std::fs::remove_file(&pid_file);
                return Err(format!(
                    "redis-server exited with {status}; its log:\n{}",
                    self.log()
                ));
            }
            match ping(self.addr(), Duration::from_millis(500)) {
                Ok(()) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_file(&pid_file);
                    return Err(format!(
                        "redis-server did not answer PING within {START_WAIT:?} ({e}); its log:\n{}",
                        self.log()
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `PING` on a new connection to `addr`; `Ok` when the answer is `+PONG`.
pub fn ping(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| format!("set_write_timeout: {e}"))?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"\r\n") && got.len() < 256 {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&got)));
        }
        got.extend_from_slice(&buf[..n]);
    }
    if got == b"+PONG\r\n" {
        Ok(())
    } else {
        // `-LOADING …` while starting, or anything else: not ready.
        Err(format!("answered {:?}", String::from_utf8_lossy(&got)))
    }
}

/// `redis-server` from `PATH`, else from the usual directories.
fn find_program() -> Result<PathBuf, String> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let known = ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/opt/redis/bin"]
        .into_iter()
        .map(PathBuf::from);
    from_path
        .into_iter()
        .chain(known)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "redis-server is not installed (not on PATH nor in /usr/bin, /usr/local/bin, \
             /usr/sbin): run the tests with `cargo xtask test`, which installs it (Debian \
             package `redis-server`)"
                .to_owned()
        })
}

fn free_port() -> Result<u16, String> {
    simpletextim_devkit::free_port().map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

fn try_start() -> Result<RedisServer, String> {
    let program = find_program()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "simpletextim-redis-{}-{}-{nanos}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let watchdog = match spawn_watchdog(&dir) {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let mut server = RedisServer {
        program,
        dir,
        port: 0,
        child: None,
        watchdog: Some(watchdog),
    };
    // The port is free when picked but another process may take it before redis binds it:
    // a few tries, each on a new port.
    let mut last_error = String::new();
    for _ in 0..3 {
        server.port = free_port()?;
        match server.spawn_and_wait() {
            Ok(()) => return Ok(server),
            Err(e) => last_error = e,
        }
    }
    Err(format!("cannot start redis-server: {last_error}"))
}

/// Once this process is gone, SIGKILLs the pid in `DIR/server.pid` (if any) and deletes
/// `DIR`. Killed by [`RedisServer`]'s drop when the test ends normally.
fn spawn_watchdog(dir: &Path) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    const SCRIPT: &str = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        if [ -f "$2/server.pid" ]; then kill -KILL "$(cat "$2/server.pid")" 2>/dev/null; fi
        rm -rf "$2"
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("redis-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the watchdog: {e}"))
}
