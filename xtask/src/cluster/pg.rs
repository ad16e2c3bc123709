//! A private PostgreSQL server for `cargo xtask cluster` and the `cluster` benchmark: the
//! approach of the server's `tests/common/pg.rs`, as an xtask can do it.
//!
//! `initdb` in a directory of the cluster's work directory (password authentication with a
//! random password, `C` locale, no sync), then `postgres` on a free port of 127.0.0.1 with
//! its unix socket in that directory and durability off (`fsync`, `synchronous_commit`,
//! `full_page_writes`: a throwaway database on a developer's machine). As root, where
//! `initdb` and `postgres` refuse to run, both run as the `postgres` system user through
//! `setpriv`, with the directory given to that user. Stopped (SIGINT: fast shutdown; SIGKILL
//! after a bounded wait) when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to exit after SIGINT before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting it: another process may take the free port found before it does.
const START_ATTEMPTS: usize = 3;

/// A running private PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    /// Its directory (data, socket, log), removed when it stops.
    dir: PathBuf,
    /// The port on 127.0.0.1.
    pub port: u16,
    password: String,
}

impl Postgres {
    /// Finds PostgreSQL (installing the distribution's package when missing), creates a
    /// database cluster in `dir` (which must not exist) and starts it.
    pub fn start(dir: &Path) -> anyhow::Result<Postgres> {
        let bindir = crate::setup::ensure_postgres()?;
        let root = crate::setup::is_root();
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let password = format!("pw{nanos:x}{:x}", std::process::id());
        let pwfile = dir.join("pwfile");
        fs::write(&pwfile, &password).context("cannot write the password file")?;
        if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!(
                    "cannot give {} to the postgres user (as root, PostgreSQL runs as it)",
                    dir.display()
                );
            }
        }
        let data = dir.join("data");
        let out = pg_command(&bindir, "initdb", root)
            .current_dir(dir)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .context("cannot run initdb")?;
        // The password is in the URL from now on; the file is not needed.
        let _ = fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("cannot find a free port on 127.0.0.1")?
                .port();
            let log_path = dir.join("postgres.log");
            let log = fs::File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let log2 = log.try_clone().context("cannot open the log twice")?;
            let child = pg_command(&bindir, "postgres", root)
                .current_dir(dir)
                .arg("-D")
                .arg(&data)
                .args(["-c", "listen_addresses=127.0.0.1", "-c"])
                .arg(format!("port={port}"))
                .arg("-k")
                .arg(dir)
                .args([
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                ])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .context("cannot start postgres")?;
            let mut pg = Postgres {
                child: Some(child),
                dir: dir.to_owned(),
                port,
                password: password.clone(),
            };
            match pg.wait_ready(&bindir, &log_path) {
                Ok(()) => return Ok(pg),
                Err(e) => {
                    pg.stop_process();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    /// Waits until the server accepts connections (`pg_isready`), exits, or takes too long.
    fn wait_ready(&mut self, bindir: &Path, log: &Path) -> anyhow::Result<()> {
        let until = Instant::now() + START_TIMEOUT;
        while Instant::now() < until {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let text = fs::read_to_string(log).unwrap_or_default();
                bail!("postgres exited at start ({status}):\n{text}");
            }
            let ready = Command::new(bindir.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "postgres did not accept connections within {} s",
            START_TIMEOUT.as_secs()
        )
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    /// The process id of the postmaster, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGINT (fast shutdown), up to [`STOP_TIMEOUT`] to exit, then SIGKILL.
    fn stop_process(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            crate::cluster::signal(child.id(), "INT");
            let until = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                eprintln!("postgres did not exit within {STOP_TIMEOUT:?} of SIGINT; killing it");
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }

    /// Stops the server and removes its directory. Done once, also by `drop`.
    pub fn stop(&mut self) {
        self.stop_process();
        if self.dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `program` of `bindir`, as the `postgres` user when this process is root.
fn pg_command(bindir: &Path, program: &str, as_postgres: bool) -> Command {
    let path = bindir.join(program);
    if as_postgres {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(path);
        c
    } else {
        Command::new(path)
    }
}
