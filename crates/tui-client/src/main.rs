//! `simpletextim`: the full-screen terminal chat client of SimpleTextIM.
//!
//! This file only reads the command line and the password, opens the log file (the
//! terminal is the screen, so logs never go there), takes over the terminal and runs the
//! event loop of the `simpletextim_tui` library. Start reading at its `app` module.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use simpletextim_proto::{Password, UserId};
use simpletextim_tui::app::{App, Settings, TimeZone};
use simpletextim_tui::net::Target;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// The environment variable a password may come from.
const PASSWORD_ENV: &str = "SIMPLETEXTIM_PASSWORD";

/// Chat on a SimpleTextIM server, full screen.
///
/// The password comes from the SIMPLETEXTIM_PASSWORD environment variable, from
/// --password-file, or is asked on the login screen; never from the command line.
#[derive(Debug, Parser)]
#[command(name = "simpletextim", version)]
struct Cli {
    // The help as an attribute, not a doc comment: rustdoc would read `[::1]` as a link.
    #[arg(
        long,
        value_name = "ADDRESS",
        default_value = "127.0.0.1:5000",
        help = "Server address: host:port (plain TCP unless --tls or --ca), \
                simpletextims://host:port (TLS) or simpletextim://host:port (plain TCP); the \
                port defaults to 5000, and an IPv6 address goes in brackets ([::1]:5000)"
    )]
    server: String,
    /// Connect over TLS, verifying the server's certificate against the system's root
    /// certificates (and --ca) for the host of --server.
    #[arg(long)]
    tls: bool,
    /// Also trust the certificates of this PEM file (a self-signed server's certificate, a
    /// private authority's); implies --tls.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// User id to log in as (asked on the login screen when absent).
    #[arg(long)]
    user: Option<String>,
    /// File whose first line is the password.
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
    /// Don't ring the terminal bell on private messages and mentions.
    #[arg(long)]
    no_bell: bool,
    /// Log file [default: $XDG_STATE_HOME/simpletextim/client.log, or under ~/.local/state].
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    // SAFETY: this is the first statement of `main`, and nothing runs before `main` in this
    // binary (no dependency registers a constructor): the process has one thread, so no
    // other thread can read or write the environment meanwhile. Threads (the async
    // runtime, the log writer) start later, in `run`.
    #[allow(unsafe_code)]
    let env_password = unsafe { take_password_env() };
    let cli = Cli::parse();
    match run(cli, env_password) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simpletextim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the password variable ([`PASSWORD_ENV`]) and removes it from the environment,
/// so that neither code reading the environment later nor a process started from this one
/// finds it. (Linux's `/proc/PID/environ` still shows the environment the process started
/// with: that is the kernel's copy, out of the process's reach.)
///
/// # Safety
///
/// No other thread may exist: `std::env::remove_var` races with any concurrent access to
/// the environment, including `getenv` in C code.
#[allow(unsafe_code)]
unsafe fn take_password_env() -> Option<OsString> {
    let password = std::env::var_os(PASSWORD_ENV)?;
    // SAFETY: the caller guarantees that this is the only thread.
    unsafe { std::env::remove_var(PASSWORD_ENV) };
    Some(password)
}

fn run(cli: Cli, env_password: Option<OsString>) -> anyhow::Result<()> {
    let target = Target::parse(&cli.server, cli.tls, cli.ca.as_deref())
        .map_err(|e| anyhow::anyhow!("--server: {e}"))?;
    // The CA file is read now, so that a bad one stops the client before the screen opens.
    // (Its error already says which file and why: not the source chain again.)
    let endpoint = target.endpoint().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(user) = &cli.user {
        UserId::new(user).map_err(|f| anyhow::anyhow!("--user: {}", f.reason))?;
    }
    let from_env = cli.password_file.is_none() && env_password.is_some();
    let password = read_password(&cli, env_password)?;
    if password.is_some() && cli.user.is_none() {
        bail!("--user is needed when the password comes from {PASSWORD_ENV} or --password-file");
    }
    let _log_guard = init_logging(cli.log_file.clone())?;
    if from_env {
        if std::env::var_os(PASSWORD_ENV).is_none() {
            tracing::info!("password read from {PASSWORD_ENV}, now removed from the environment");
        } else {
            tracing::warn!("password read from {PASSWORD_ENV}, which is still in the environment");
        }
    }

    if endpoint.is_tls() {
        tracing::info!(server = %endpoint, "connecting with TLS");
    } else if !is_loopback(&target.host) {
        tracing::warn!(server = %endpoint, "plain TCP to another machine: the password crosses the network in clear (use --tls)");
    }
    let settings = Settings {
        server: endpoint.to_string(),
        bell: !cli.no_bell,
        tz: TimeZone::Local,
    };
    let mut app = App::new(settings, cli.user.as_deref());
    let initial = match (&cli.user, &password) {
        (Some(user), Some(password)) => app.login_with(user, password),
        _ => Vec::new(),
    };

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (mut terminal, _restore) =
            simpletextim_tui::terminal::init().context("cannot set up the terminal")?;
        simpletextim_tui::run::run(&mut terminal, app, endpoint, initial)
            .await
            .context("terminal error")
    })?;
    // Don't wait for tasks stuck on the terminal or the network.
    runtime.shutdown_background();
    tracing::info!("bye");
    Ok(())
}

/// Whether `host` is this machine (`localhost` or a loopback address).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The password from `--password-file` or else the environment (`env`, taken out of it at
/// the start), if any, validated.
fn read_password(cli: &Cli, env: Option<OsString>) -> anyhow::Result<Option<String>> {
    let password = if let Some(path) = &cli.password_file {
        let content = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the password file {}", path.display()))?;
        let first = content.lines().next().unwrap_or("");
        Some(first.to_owned())
    } else {
        match env.map(OsString::into_string) {
            Some(Ok(p)) => Some(p),
            None => None,
            // Not the value in the message: it is the password.
            Some(Err(_)) => bail!("{PASSWORD_ENV} is not valid Unicode"),
        }
    };
    if let Some(p) = &password {
        Password::new(p).map_err(|f| anyhow::anyhow!("password: {}", f.reason))?;
    }
    Ok(password)
}

/// Default log file: `$XDG_STATE_HOME/simpletextim/client.log`, or under
/// `~/.local/state`, or the temporary directory.
fn default_log_path() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("simpletextim").join("client.log")
}

/// Sends `tracing` output to the log file (level from `RUST_LOG`, default `info`).
fn init_logging(path: Option<PathBuf>) -> anyhow::Result<WorkerGuard> {
    let path = path.unwrap_or_else(default_log_path);
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the log directory {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    Ok(guard)
}
