//! A private PostgreSQL server for `cargo xtask cluster` and the `cluster` benchmark,
//! started as the tests start theirs (`simpletextim_devkit::postgres`: `initdb` in a
//! directory of the cluster's work directory with a random password, `postgres` on a free
//! port of 127.0.0.1 with durability off, as the `postgres` user when root). Stopped
//! (SIGINT: fast shutdown; SIGKILL after a bounded wait) when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use simpletextim_devkit::postgres;

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
        let root = postgres::is_root();
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let password = postgres::throwaway_password();
        postgres::init_cluster(&bindir, dir, &password, root).map_err(anyhow::Error::msg)?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let port =
                simpletextim_devkit::free_port().context("cannot find a free port on 127.0.0.1")?;
            let log_path = dir.join("postgres.log");
            let log = fs::File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let log2 = log.try_clone().context("cannot open the log twice")?;
            let child = postgres::postgres_command(&bindir, dir, port, 300, root)
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
            if postgres::is_ready(bindir, self.port) {
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
