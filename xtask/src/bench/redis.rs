//! The reference server: a private `redis-server` per run of the Redis pub/sub reference
//! (`simpletextim-loadgen redis-fanout`), on a free loopback port, without persistence, in
//! a directory of its own; never the system's service. Stopped when dropped, so a run that
//! fails or panics leaves no server behind.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The options of every run after `--port PORT`: loopback only, nothing written to disk
/// (no RDB snapshots, no append-only file), in the foreground. Everything else is Redis's
/// default (one thread serving clients; a subscriber more than 32 MiB behind, or 8 MiB for
/// 60 s, is disconnected, as our slow consumers are), except the client limit: 15 000, for
/// the 10 000 subscribers and the publishers of `presence-chat` (the default is 10 000).
const REDIS_ARGS: &[&str] = &[
    "--bind",
    "127.0.0.1",
    "--maxclients",
    "15000",
    "--save",
    "",
    "--appendonly",
    "no",
    "--daemonize",
    "no",
];
/// How long the server may take to answer `PING` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long it may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting it: another process may take the free port found before it does.
const START_ATTEMPTS: usize = 3;

/// The `redis-server` binary.
#[derive(Debug)]
pub struct RedisBin {
    /// The binary.
    pub path: PathBuf,
    /// Its version (`7.0.15`), or `unknown`.
    pub version: String,
}

impl RedisBin {
    /// Asks the binary for its version.
    pub fn probe(path: PathBuf) -> anyhow::Result<RedisBin> {
        let out = Command::new(&path)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {}", path.display()))?;
        let version = version(&String::from_utf8_lossy(&out.stdout))
            .unwrap_or("unknown")
            .to_owned();
        Ok(RedisBin { path, version })
    }

    /// What the report calls it: `Redis 7.0.15 pub/sub`.
    pub fn name(&self) -> String {
        format!("Redis {} pub/sub", self.version)
    }

    /// Its command line as the report shows it.
    pub fn command(&self) -> String {
        let args: Vec<&str> = REDIS_ARGS
            .iter()
            .map(|&a| if a.is_empty() { "''" } else { a })
            .collect();
        format!("redis-server --port PORT {} --dir TEMPDIR", args.join(" "))
    }
}

/// `7.0.15` of `Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 …`.
fn version(text: &str) -> Option<&str> {
    let at = text.find("v=")? + 2;
    text[at..].split_whitespace().next()
}

/// A `redis-server` started for one run.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    /// The address it listens on.
    pub addr: String,
    /// Its working directory and log, removed when it stops.
    dir: PathBuf,
}

impl RedisServer {
    /// Starts run `name`'s server, its directory in `work`, and waits until it answers.
    pub fn start(bin: &RedisBin, work: &Path, name: &str) -> anyhow::Result<RedisServer> {
        let dir = work.join(format!("redis-{name}"));
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            // Left over by a suite that stopped half-way, or by the last attempt.
            if dir.exists() {
                fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove {}", dir.display()))?;
            }
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let port =
                simpletextim_devkit::free_port().context("cannot find a free port on 127.0.0.1")?;
            let log = dir.join("redis.log");
            let log_file = fs::File::create(&log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            let child = Command::new(&bin.path)
                .args(["--port", &port.to_string()])
                .args(REDIS_ARGS)
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {}", bin.path.display()))?;
            let mut server = RedisServer {
                child,
                addr: format!("127.0.0.1:{port}"),
                dir: dir.clone(),
            };
            match server.wait_ready(&log) {
                Ok(()) => return Ok(server),
                // Dropped: stopped, its directory removed.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// Waits until the server answers `PING`, exits, or takes too long.
    fn wait_ready(&mut self, log: &Path) -> anyhow::Result<()> {
        let until = Instant::now() + START_TIMEOUT;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait()? {
                let text = fs::read_to_string(log).unwrap_or_default();
                bail!("redis-server exited at start ({status}):\n{text}");
            }
            if ping(&self.addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "redis-server did not answer PING within {} s",
            START_TIMEOUT.as_secs()
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds the server has used so far; `None` where `/proc` cannot
    /// tell.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        simpletextim_loadgen::stats::parse_cpu_seconds(&stat, false)
    }

    /// SIGTERM, up to [`STOP_TIMEOUT`] to exit, then SIGKILL; then removes its directory.
    /// Failures to clean up are reported, not fatal. Done once, also by `drop`.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id().to_string();
            if let Err(e) = Command::new("kill").args(["-TERM", &pid]).status() {
                eprintln!("cannot run kill -TERM {pid} ({e}); killing it");
            }
            let until = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                eprintln!(
                    "redis-server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it"
                );
                // Errors here mean it has exited meanwhile.
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if self.dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a Redis server at `addr` answers `PING` with `+PONG` within a second.
fn ping(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let mut reply = [0; 7];
    s.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
        && s.write_all(b"PING\r\n").is_ok()
        && s.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private server starts on a free port, answers, and is gone with its directory
    /// once dropped.
    #[test]
    fn starts_answers_and_is_stopped_on_drop() {
        let path = crate::setup::find_redis_server().expect(
            "redis-server is not installed: run the tests with `cargo xtask test`, which installs it",
        );
        let bin = RedisBin::probe(path).expect("redis-server --version runs");
        assert_ne!(bin.version, "unknown");
        let work = std::env::temp_dir().join(format!("xtask-redis-{}", std::process::id()));
        fs::create_dir_all(&work).expect("a temporary directory");
        let server = RedisServer::start(&bin, &work, "t").expect("redis-server starts");
        assert!(server.addr.starts_with("127.0.0.1:"), "{}", server.addr);
        assert!(ping(&server.addr));
        assert!(server.cpu_seconds().is_some());
        let (addr, dir) = (server.addr.clone(), server.dir.clone());
        assert!(dir.join("redis.log").exists());
        drop(server);
        assert!(!ping(&addr));
        assert!(!dir.exists());
        fs::remove_dir_all(&work).expect("the temporary directory is removed");
    }

    #[test]
    fn reads_the_version_and_shows_the_command() {
        let text =
            "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d\n";
        assert_eq!(version(text), Some("7.0.15"));
        assert_eq!(version("redis-server"), None);
        let bin = RedisBin {
            path: PathBuf::from("/usr/bin/redis-server"),
            version: "7.0.15".into(),
        };
        assert_eq!(bin.name(), "Redis 7.0.15 pub/sub");
        assert_eq!(
            bin.command(),
            "redis-server --port PORT --bind 127.0.0.1 --maxclients 15000 --save '' --appendonly no --daemonize no --dir TEMPDIR"
        );
    }
}
