//! `simpletextim-server`: the command line around [`simpletextim_server::run`].
//!
//! Parses options, sets up logging (tracing to stderr, level from `RUST_LOG`), raises the
//! open-file limit, binds the listener, and turns SIGINT/SIGTERM into a graceful shutdown.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use simpletextim_server::{Config, DEFAULT_MAILBOX_CAP, MemoryStore, RateLimit, Registration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// File descriptors kept for things other than client connections (listener, database,
/// logs, the hashing threads).
const RESERVED_FDS: u64 = 64;

/// SimpleTextIM chat server: public and private messages, presence and an offline mailbox,
/// over length-delimited JSON on TCP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, default_value = simpletextim_server::DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// Whether the first login of a free user id creates the account.
    #[arg(long, value_enum, default_value_t = Registration::Open)]
    registration: Registration,

    /// Most private messages kept for one offline user; past it senders get `fail 503`.
    #[arg(long, default_value_t = DEFAULT_MAILBOX_CAP)]
    mailbox_cap: usize,

    /// Largest command frame a client may send, in bytes (longer: `fail 413`, then close).
    #[arg(long, default_value_t = simpletextim_proto::codec::DEFAULT_MAX_COMMAND_FRAME)]
    max_frame: usize,

    /// Messages and notices queued for one client before it counts as a slow consumer and
    /// is disconnected.
    #[arg(long, default_value_t = 4096)]
    outbox: usize,

    /// Sustained `send`/`list` commands per second per session (0: no limit).
    #[arg(long, default_value_t = 200.0)]
    rate_limit: f64,

    /// Commands a session may send in one burst before the rate limit applies.
    #[arg(long, default_value_t = 2000)]
    rate_burst: u32,

    /// Most connections served at once [default: the open-file limit less a reserve].
    #[arg(long)]
    max_connections: Option<usize>,

    /// Hash passwords with minimal Argon2id cost. INSECURE: for benchmarks and tests only.
    #[arg(long)]
    insecure_fast_hash: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match serve(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simpletextim-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(cli: Cli) -> anyhow::Result<()> {
    let fd_limit = raise_fd_limit();
    let max_connections = cli
        .max_connections
        .unwrap_or_else(|| fd_limit.saturating_sub(RESERVED_FDS).max(1) as usize);
    tracing::info!(
        open_files = fd_limit,
        max_connections,
        "connection capacity"
    );
    let config = Config {
        max_command_frame: cli.max_frame,
        outbox_capacity: cli.outbox.max(1),
        registration: cli.registration,
        insecure_fast_hash: cli.insecure_fast_hash,
        max_connections,
        rate_limit: (cli.rate_limit > 0.0).then_some(RateLimit {
            per_sec: cli.rate_limit,
            burst: cli.rate_burst.max(1),
        }),
        store: Arc::new(MemoryStore::new(cli.mailbox_cap)),
        ..Config::default()
    };
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;
    tracing::info!("listening on {addr}");

    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    simpletextim_server::run(listener, config, shutdown).await?;
    tracing::info!("bye");
    Ok(())
}

/// Raises the soft open-file limit to the hard limit; returns the limit in force.
fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::Resource::NOFILE
                .get()
                .map_or(1024, |(soft, _)| soft)
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}
