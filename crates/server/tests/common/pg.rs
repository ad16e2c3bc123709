//! A private PostgreSQL server for the tests of one test binary, and a fresh database per
//! test on it.
//!
//! The first call of [`database`] starts PostgreSQL as `simpletextim_devkit::postgres`
//! describes (the distribution's programs, `initdb` in a new temporary directory with a
//! random password, `postgres` on a free port of 127.0.0.1 with durability off; as root,
//! as the `postgres` system user) and waits (bounded) until it accepts connections.
//!
//! A watchdog (`sh`, in a process group of its own so that a Ctrl-C of the test run does
//! not take it down first) polls the test process; once it is gone, it stops the server
//! (SIGINT: fast shutdown; SIGKILL after 5 s) and deletes the directory. So no `postgres`
//! outlives the test binary, however it ends.
//!
//! PostgreSQL missing is a failure naming `cargo xtask test` (which installs it), never a
//! skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use simpletextim_devkit::postgres;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const START_WAIT: Duration = Duration::from_secs(30);

/// The private server of this test binary.
#[derive(Debug)]
pub struct PgServer {
    pub bindir: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    pub password: String,
    pub pid: u32,
}

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/NAME`.
    pub url: String,
    pub name: String,
    pub password: String,
}

impl TestDb {
    /// The parsed URL, for `PostgresStore`.
    pub fn database_url(&self) -> simpletextim_server::store::DatabaseUrl {
        self.url
            .parse()
            .unwrap_or_else(|e| panic!("test database URL does not parse: {e}"))
    }
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The server, started on first use. Panics (failing the test) when it cannot start.
pub fn server() -> &'static PgServer {
    match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// A new, empty database on the private server.
pub async fn database() -> TestDb {
    let server = server();
    let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    let admin = format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname=postgres connect_timeout=10",
        server.port, server.password
    );
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    drop(client);
    let _ = conn.await;
    TestDb {
        url: format!(
            "postgres://postgres:{}@127.0.0.1:{}/{name}",
            server.password, server.port
        ),
        name,
        password: server.password.clone(),
    }
}

/// A new database with the current schema.
pub async fn migrated_database() -> TestDb {
    let db = database().await;
    let options = simpletextim_server::store::PgOptions::new(1);
    simpletextim_server::store::PostgresStore::migrate(&db.database_url(), &options)
        .await
        .unwrap_or_else(|e| panic!("cannot migrate {}: {e}", db.name));
    db
}

/// The directory of `initdb`, `postgres` and `pg_isready`.
fn find_bindir() -> Result<PathBuf, String> {
    postgres::find_bindir().ok_or_else(|| {
        "PostgreSQL is not installed (no initdb from `pg_config --bindir` nor under \
         /usr/lib/postgresql/*/bin): run the tests with `cargo xtask test`, which installs \
         it (Debian package `postgresql`)"
            .to_owned()
    })
}

fn free_port() -> Result<u16, String> {
    simpletextim_devkit::free_port().map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

fn start() -> Result<PgServer, String> {
    let bindir = find_bindir()?;
    let root = postgres::is_root();
    let password = postgres::throwaway_password();
    // As root, under /tmp whatever TMPDIR says: the postgres user must reach the directory.
    let base = if root {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = base.join(format!("simpletextim-pg-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    postgres::init_cluster(&bindir, &dir, &password, root)?;
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port()?;
        let log = std::fs::File::create(dir.join(format!("postgres-{port}.log")))
            .map_err(|e| format!("log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut child = postgres::postgres_command(&bindir, &dir, port, 200, root)
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        let pid = child.id();
        spawn_watchdog(pid, &dir)?;
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_error = format!(
                    "postgres exited with {status}: {}",
                    std::fs::read_to_string(dir.join(format!("postgres-{port}.log")))
                        .unwrap_or_default()
                );
                break;
            }
            if postgres::is_ready(&bindir, port) {
                return Ok(PgServer {
                    bindir,
                    dir,
                    port,
                    password,
                    pid,
                });
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres did not accept connections within {START_WAIT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Err(last_error)
}

/// Stops the server `pid` and deletes `dir` once this process is gone.
fn spawn_watchdog(pid: u32, dir: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    const SCRIPT: &str = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        kill -INT "$2" 2>/dev/null
        i=0
        while kill -0 "$2" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
        kill -KILL "$2" 2>/dev/null
        rm -rf "$3"
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start the watchdog: {e}"))
}
