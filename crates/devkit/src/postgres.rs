//! A private PostgreSQL server, as the tests (`crates/server/tests/common/pg.rs`) and
//! `cargo xtask cluster`/`bench` start it: [`find_bindir`] finds the distribution's
//! programs, [`init_cluster`] runs `initdb` in a directory of the caller's (password
//! authentication with a random password, `C` locale, no sync), [`postgres_command`] is
//! `postgres` on a port of 127.0.0.1 with its unix socket in that directory and durability
//! off (a throwaway database), and [`is_ready`] asks `pg_isready`. As root, where `initdb`
//! and `postgres` refuse to run, both run as the `postgres` system user through `setpriv`,
//! with the directory given to that user. Starting, waiting and stopping are the
//! caller's: the tests stop theirs with a watchdog, xtask when it is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The directory of PostgreSQL's programs (`initdb`, `postgres`, `pg_isready`):
/// `pg_config --bindir`, else the highest version under `/usr/lib/postgresql/*/bin`;
/// `None` when PostgreSQL is not installed.
pub fn find_bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program` of `bindir`, as the `postgres` user when `as_postgres` (this process is root).
pub fn pg_command(bindir: &Path, program: &str, as_postgres: bool) -> Command {
    let path = bindir.join(program);
    if as_postgres {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// A password for a throwaway server: the time's nanoseconds and the process id, in hex.
pub fn throwaway_password() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("pw{nanos:x}{:x}", std::process::id())
}

/// Creates a database cluster in `dir/data` (`dir` exists and is the caller's) whose
/// superuser `postgres` has `password` (scram-sha-256, `C` locale, UTF-8, no sync). As
/// root (`as_postgres`), `dir` is first given to the `postgres` user, who runs `initdb`.
///
/// # Errors
/// What failed, with `initdb`'s own message.
pub fn init_cluster(
    bindir: &Path,
    dir: &Path,
    password: &str,
    as_postgres: bool,
) -> Result<(), String> {
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, password)
        .map_err(|e| format!("cannot write {}: {e}", pwfile.display()))?;
    if as_postgres {
        let ok = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "cannot give {} to the postgres user (as root, PostgreSQL runs as it)",
                dir.display()
            ));
        }
    }
    let out = pg_command(bindir, "initdb", as_postgres)
        .current_dir(dir)
        .arg("-D")
        .arg(dir.join("data"))
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
        .map_err(|e| format!("cannot run initdb: {e}"));
    // The password is the caller's from now on; the file is not needed.
    let _ = std::fs::remove_file(&pwfile);
    let out = out?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// `postgres` serving the cluster of [`init_cluster`] in `dir` on 127.0.0.1:`port` (its
/// unix socket in `dir`) with durability off (`fsync`, `synchronous_commit`,
/// `full_page_writes`) and at most `max_connections`; no stdin. The caller sets its
/// output and spawns it.
pub fn postgres_command(
    bindir: &Path,
    dir: &Path,
    port: u16,
    max_connections: u32,
    as_postgres: bool,
) -> Command {
    let mut c = pg_command(bindir, "postgres", as_postgres);
    c.current_dir(dir)
        .arg("-D")
        .arg(dir.join("data"))
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
        ])
        .arg(format!("max_connections={max_connections}"))
        .stdin(Stdio::null());
    c
}

/// Whether the server on 127.0.0.1:`port` accepts connections (`pg_isready`).
pub fn is_ready(bindir: &Path, port: u16) -> bool {
    Command::new(bindir.join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
