//! What the tests need from the system beyond Cargo: Debian's Chromium and chromedriver (the
//! browser tests), PostgreSQL (the store tests start private instances of it) and
//! redis-server (the load generator's Redis reference). Installed from the distribution's
//! packages when missing, so the README's test command works on a fresh machine; a test never
//! skips for want of one.
//!
//! Also what the benchmark needs: `redis-server`, the reference `cargo xtask bench` runs
//! beside ours ([`ensure_redis_server`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A system component the tests need: how to tell it is there, and its Debian package.
struct Component {
    /// The package that provides it.
    package: &'static str,
    /// Present when any of these paths exists; a `*` stands for one version directory.
    paths: &'static [&'static str],
}

const COMPONENTS: &[Component] = &[
    Component {
        package: "chromium",
        paths: &["/usr/bin/chromium"],
    },
    Component {
        package: "chromium-driver",
        paths: &["/usr/bin/chromedriver"],
    },
    Component {
        package: "postgresql",
        paths: &["/usr/lib/postgresql/*/bin/initdb"],
    },
    Component {
        package: "redis-server",
        paths: &["/usr/bin/redis-server"],
    },
];

/// Whether `pattern` names an existing file, a `*` standing for any one directory name.
fn exists(pattern: &str) -> bool {
    match pattern.split_once("/*/") {
        None => Path::new(pattern).exists(),
        Some((dir, rest)) => std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| exists(&format!("{}/{rest}", e.path().display())))
        }),
    }
}

/// Installs the missing components with apt-get (as root, or through sudo), or fails with
/// the command that would.
pub fn ensure_test_components() -> anyhow::Result<()> {
    let missing: Vec<&str> = COMPONENTS
        .iter()
        .filter(|c| !c.paths.iter().any(|p| exists(p)))
        .map(|c| c.package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing what the tests need: {}", missing.join(" "));
    apt_install(&missing)
}

/// Where `redis-server` is: on the `PATH`, or where Debian's package puts it.
pub fn find_redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

/// The `redis-server` binary the benchmark runs as its reference (a private instance, never
/// the system's service): the one installed, or, when there is none, the distribution's
/// `redis-server` package installed with apt-get (as root, or through sudo) first.
///
/// # Errors
/// When it is missing and cannot be installed: one line saying what to install.
pub fn ensure_redis_server() -> anyhow::Result<PathBuf> {
    if let Some(path) = find_redis_server() {
        return Ok(path);
    }
    eprintln!("installing what the benchmark needs: redis-server");
    apt_install(&["redis-server"])?;
    find_redis_server().context(
        "apt-get installed redis-server but there is no redis-server binary; install it and run again",
    )
}

/// The directory of PostgreSQL's programs (`initdb`, `postgres`, `pg_isready`), if
/// installed.
pub fn find_postgres_bindir() -> Option<PathBuf> {
    simpletextim_devkit::postgres::find_bindir()
}

/// PostgreSQL's programs for a private server (`cargo xtask cluster`, the `cluster`
/// benchmark): those installed, or the distribution's `postgresql` package installed with
/// apt-get (as root, or through sudo) first.
///
/// # Errors
/// When it is missing and cannot be installed: one line saying what to install.
pub fn ensure_postgres() -> anyhow::Result<PathBuf> {
    if let Some(dir) = find_postgres_bindir() {
        return Ok(dir);
    }
    eprintln!("installing what the cluster needs: postgresql");
    apt_install(&["postgresql"])?;
    find_postgres_bindir().context(
        "apt-get installed postgresql but there is no initdb (pg_config --bindir, /usr/lib/postgresql/*/bin); install it and run again",
    )
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    simpletextim_devkit::postgres::is_root()
}

/// Installs Debian packages with apt-get (as root, or through sudo), or fails with the
/// packages to install.
fn apt_install(missing: &[&str]) -> anyhow::Result<()> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        // One line, whatever failed: what to install by hand.
        let status = match cmd
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
        {
            Ok(status) => status,
            Err(e) => bail!(
                "cannot run apt-get ({e}); install these packages and run again: {}",
                missing.join(" ")
            ),
        };
        if !status.success() {
            bail!(
                "apt-get {} failed ({status}); install these packages and run again: {}",
                args.join(" "),
                missing.join(" ")
            );
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(missing);
    apt(&install)
}
