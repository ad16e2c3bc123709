//! The server under test: one fresh process per run, on loopback, with its log in a file
//! from which its address is read.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Server options of every run but the soak's: cheap password hashing (thousands of
/// logins would otherwise measure Argon2id), no per-session rate limit (flood scenarios),
/// no limit on the logins in progress from one address (the load generator logs in from
/// loopback, 64 at a time).
pub const SERVER_ARGS: &[&str] = &[
    "--insecure-fast-hash",
    "--rate-limit",
    "0",
    "--exempt-loopback",
];

/// Which server options a scenario runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// [`SERVER_ARGS`]: no rate limit, loopback exempt from the per-address limits.
    Bench,
    /// The soak: the server's default limits, cheap hashing, and only the normal users'
    /// address (127.0.0.1) exempt from the per-address limits; the hostile connections
    /// come from 127.0.0.2 and up. A server without `--exempt CIDR` gets
    /// `--exempt-loopback`, which exempts the hostile addresses too.
    Soak,
    /// [`Limits::Bench`] with the HTTP listener on a free port (`--listen-http
    /// 127.0.0.1:0`), whose `GET /ws` the WebSocket scenarios' clients connect to.
    WebSocket,
}
/// Quiet per-session logging; `listening on` (info) is still logged.
pub const SERVER_LOG: &str =
    "info,simpletextim_server::session=warn,simpletextim_server::auth=warn";
/// How long a server may take to log its address.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The server binary and how every run starts it.
#[derive(Debug)]
pub struct ServerBin {
    /// The binary.
    pub path: PathBuf,
    /// Whether it has a `--data` option (a store); each run then gets its own directory.
    pub with_data: bool,
    /// Whether it has `--exempt CIDR` (exemption of chosen networks from the per-address
    /// limits) rather than only `--exempt-loopback`.
    pub with_exempt: bool,
    /// Whether it has `--listen-http` (on by default at a fixed port): each run then turns
    /// it off, so that runs never collide on that port, or for a WebSocket scenario puts
    /// it on a free port.
    pub with_http: bool,
}

impl ServerBin {
    /// Asks the binary's `--help` whether it takes `--data`.
    pub fn probe(path: PathBuf) -> anyhow::Result<ServerBin> {
        let help = Command::new(&path)
            .arg("--help")
            .output()
            .with_context(|| format!("cannot run {}", path.display()))?;
        let text = String::from_utf8_lossy(&help.stdout);
        Ok(ServerBin {
            path,
            with_data: text.contains("--data"),
            with_exempt: text.contains("--exempt <"),
            with_http: text.contains("--listen-http"),
        })
    }

    /// The options (after `--listen`) of a run with `limits`.
    pub fn args(&self, limits: Limits) -> Vec<String> {
        let args: &[&str] = match limits {
            Limits::Bench | Limits::WebSocket => SERVER_ARGS,
            Limits::Soak if self.with_exempt => {
                &["--insecure-fast-hash", "--exempt", "127.0.0.1/32"]
            }
            Limits::Soak => &["--insecure-fast-hash", "--exempt-loopback"],
        };
        let http: &[&str] = match limits {
            Limits::WebSocket => &["--listen-http", "127.0.0.1:0"],
            _ if self.with_http => &["--listen-http", "off"],
            _ => &[],
        };
        args.iter().chain(http).map(|&a| a.to_owned()).collect()
    }

    /// The command line of a run with `limits`, as the report shows it.
    pub fn command(&self, limits: Limits) -> String {
        format!(
            "RUST_LOG={SERVER_LOG} simpletextim-server --listen 127.0.0.1:0 {}{}",
            self.args(limits).join(" "),
            if self.with_data {
                " --data TEMPDIR"
            } else {
                ""
            }
        )
    }
}

/// A server process started for one run.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// The address it listens on.
    pub addr: String,
    /// The address of its HTTP listener (`GET /ws`), when its limits put one on.
    pub http_addr: Option<String>,
    log: PathBuf,
    data: Option<PathBuf>,
}

impl Server {
    /// Starts run `n`'s server with `limits`, its log (and data directory) in `work`
    /// under `name`, and waits for it to log its address.
    pub fn start(
        bin: &ServerBin,
        limits: Limits,
        work: &Path,
        name: &str,
    ) -> anyhow::Result<Server> {
        if limits == Limits::WebSocket && !bin.with_http {
            bail!(
                "{} has no --listen-http: it cannot run a WebSocket scenario",
                bin.path.display()
            );
        }
        let log = work.join(format!("server-{name}.log"));
        let data = bin.with_data.then(|| work.join(format!("data-{name}")));
        let mut cmd = Command::new(&bin.path);
        cmd.args(["--listen", "127.0.0.1:0"]).args(bin.args(limits));
        if let Some(d) = &data {
            // The server creates the directory itself, private (0700); one left over by an
            // earlier suite that stopped half-way is removed first.
            if d.exists() {
                fs::remove_dir_all(d).with_context(|| format!("cannot remove {}", d.display()))?;
            }
            cmd.arg("--data").arg(d);
        }
        let log_file =
            fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = cmd
            .env("RUST_LOG", SERVER_LOG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.path.display()))?;
        let mut server = Server {
            child,
            addr: String::new(),
            http_addr: None,
            log,
            data,
        };
        match server.wait_for_address(limits == Limits::WebSocket) {
            Ok((addr, http_addr)) => {
                server.addr = addr;
                server.http_addr = http_addr;
                Ok(server)
            }
            Err(e) => {
                server.stop();
                Err(e)
            }
        }
    }

    /// Reads the log until the server says where it listens (and, with `http`, where its
    /// HTTP listener is: logged before `listening on`), exits, or takes too long.
    fn wait_for_address(&mut self, http: bool) -> anyhow::Result<(String, Option<String>)> {
        let until = Instant::now() + START_TIMEOUT;
        while Instant::now() < until {
            let text = fs::read_to_string(&self.log)
                .with_context(|| format!("cannot read {}", self.log.display()))?;
            if let Some(addr) = listening_addr(&text) {
                if !http {
                    return Ok((addr, None));
                }
                let Some(http_addr) = http_addr(&text) else {
                    bail!("the server listens on {addr} but logged no `HTTP on` line:\n{text}");
                };
                return Ok((addr, Some(http_addr)));
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited at start ({status}):\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the server did not log `listening on` within {} s",
            START_TIMEOUT.as_secs()
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds the server has used so far; `None` where `/proc` cannot
    /// tell (not Linux, or the process is gone).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        cpu_seconds(&stat)
    }

    /// SIGTERM, then up to [`STOP_TIMEOUT`] for a graceful exit, then SIGKILL; then
    /// removes its log and data directory. Failures to clean up are reported, not fatal:
    /// the next run uses other paths.
    pub fn stop(&mut self) {
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
            eprintln!("the server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it");
            // Errors here mean it has exited meanwhile.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let mut leftovers = vec![self.log.clone()];
        leftovers.extend(self.data.clone());
        for path in leftovers {
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(e) = removed {
                eprintln!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// User + system CPU seconds from a `/proc/PID/stat` text (fields 14 and 15, in clock ticks
/// of 1/100 s).
fn cpu_seconds(stat: &str) -> Option<f64> {
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The address in a tracing line `… listening on 127.0.0.1:40349`.
fn listening_addr(log: &str) -> Option<String> {
    let at = log.find("listening on ")? + "listening on ".len();
    let addr: String = log[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    (!addr.is_empty()).then_some(addr)
}

/// The address in a tracing line `… HTTP on 127.0.0.1:40349: the web client at …`.
fn http_addr(log: &str) -> Option<String> {
    let at = log.find("HTTP on ")? + "HTTP on ".len();
    let addr = log[at..]
        .split_whitespace()
        .next()?
        .trim_end_matches(':')
        .to_owned();
    (!addr.is_empty()).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_seconds() {
        let stat = "77 (simpletextim-se) S 1 77 77 0 -1 4194560 2000 0 0 0 1234 66 0 0 20 0 3";
        assert_eq!(cpu_seconds(stat), Some(13.0));
        assert_eq!(cpu_seconds("77 (x) S"), None);
    }

    #[test]
    fn finds_the_listening_address() {
        let log = "2026-11-26T17:22:07Z  INFO simpletextim_server: listening on 127.0.0.1:40349\n";
        assert_eq!(listening_addr(log).as_deref(), Some("127.0.0.1:40349"));
        assert_eq!(
            listening_addr("\u{1b}[32m INFO\u{1b}[0m listening on [::1]:5000 x").as_deref(),
            Some("[::1]:5000")
        );
        assert_eq!(listening_addr("starting"), None);
    }

    #[test]
    fn finds_the_http_address() {
        let log = "2026-12-01T14:50:00Z  INFO simpletextim_server: HTTP on 127.0.0.1:41234: the web client at http://127.0.0.1:41234/, WebSocket at /ws\n2026-12-01T14:50:00Z  INFO simpletextim_server: listening on 127.0.0.1:40349\n";
        assert_eq!(http_addr(log).as_deref(), Some("127.0.0.1:41234"));
        assert_eq!(listening_addr(log).as_deref(), Some("127.0.0.1:40349"));
        assert_eq!(
            http_addr(" INFO HTTP on [::1]:5080: the web client").as_deref(),
            Some("[::1]:5080")
        );
        assert_eq!(http_addr("listening on 127.0.0.1:1"), None);
    }

    #[test]
    fn websocket_runs_put_the_http_listener_on_a_free_port() {
        let bin = ServerBin {
            path: PathBuf::from("simpletextim-server"),
            with_data: true,
            with_exempt: true,
            with_http: true,
        };
        assert_eq!(
            bin.command(Limits::Bench),
            "RUST_LOG=info,simpletextim_server::session=warn,simpletextim_server::auth=warn simpletextim-server --listen 127.0.0.1:0 --insecure-fast-hash --rate-limit 0 --exempt-loopback --listen-http off --data TEMPDIR"
        );
        assert_eq!(
            bin.command(Limits::WebSocket),
            "RUST_LOG=info,simpletextim_server::session=warn,simpletextim_server::auth=warn simpletextim-server --listen 127.0.0.1:0 --insecure-fast-hash --rate-limit 0 --exempt-loopback --listen-http 127.0.0.1:0 --data TEMPDIR"
        );
    }
}
