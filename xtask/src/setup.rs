//! What the tests need from the system beyond Cargo: Debian's Chromium and chromedriver (the
//! browser tests), PostgreSQL (the store tests start private instances of it) and
//! redis-server (the load generator's Redis reference). Installed from the distribution's packages when missing, so the README's
//! test command works on a fresh machine; a test never skips for want of one.

use std::path::Path;
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
        let status = cmd
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
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
    install.extend(&missing);
    apt(&install)
}
