//! `simpletextim-loadgen`: drives a SimpleTextIM server on loopback with one workload and
//! prints the result as one JSON line on stdout (a human summary goes to stderr).
//!
//! Every workload is bounded in count and time (`--timeout`) and stops by itself. Scenarios
//! with thousands of logins need the server's `--insecure-fast-hash`, and flood workloads
//! its `--rate-limit 0`. See `docs/BENCHMARKS.md` for the standard suite.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use simpletextim_loadgen::net::{self, Bind, Transport};
use simpletextim_loadgen::report::Report;
use simpletextim_loadgen::stats;
use simpletextim_loadgen::workload::chat::{self, FanoutOpts, PrivateOpts};
use simpletextim_loadgen::workload::{Common, conns, history, offline, presence, redis, soak};

/// Load generator for SimpleTextIM servers (loopback only).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// The server's address (loopback only): its TCP listener, or with --ws its HTTP
    /// listener (the server's --listen-http, 127.0.0.1:5080 by default). Several (repeated,
    /// or separated by commas: the nodes of a cluster) spread the clients of `fanout`,
    /// `private` and `presence` over them, client i on server i mod n.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:5000",
        value_delimiter = ','
    )]
    server: Vec<SocketAddr>,
    /// Speak WebSocket: every connection upgrades `GET /ws` on --server and sends its
    /// commands as masked text frames (`fanout` and `private` only).
    #[arg(long, global = true)]
    ws: bool,
    /// Prefix of the user ids this run logs in as.
    #[arg(long, global = true, default_value = "lg")]
    prefix: String,
    /// Time limit of the whole run, in seconds.
    #[arg(long, global = true, default_value_t = 120.0)]
    timeout: f64,
    /// Length of every message text in bytes (at least the marker's).
    #[arg(long, global = true, default_value_t = 40)]
    size: usize,
    /// Pause between the logins and the first message, in milliseconds.
    #[arg(long, global = true, default_value_t = 300)]
    settle_ms: u64,
    /// Logins in flight at once.
    #[arg(long, global = true, default_value_t = 64)]
    login_concurrency: usize,
    /// Runtime worker threads [default: one per core].
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// C clients logged in, S of them send M public messages each (flood with a window, or
    /// open loop with --rate).
    Fanout {
        /// Clients logged in.
        #[arg(short, long, default_value_t = 1000)]
        clients: usize,
        /// Clients that send.
        #[arg(short, long, default_value_t = 10)]
        senders: usize,
        /// Messages per sender.
        #[arg(short, long, default_value_t = 200)]
        messages: u32,
        /// Flood: messages a sender may have sent but not yet seen echoed.
        #[arg(short, long, default_value_t = 16)]
        window: usize,
        /// Open loop: messages per second, all senders together (no window).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// The reference for `fanout`, against a Redis server's pub/sub (`--server` is the
    /// Redis server): C subscribers to one channel, S separate publishers sending M
    /// messages each (flood with a window, or open loop with --rate).
    RedisFanout(redis::RedisFanoutOpts),
    /// C clients send M private messages each to random others (flood with a window).
    Private {
        /// Clients, all sending.
        #[arg(short, long, default_value_t = 1000)]
        clients: usize,
        /// Messages per client.
        #[arg(short, long, default_value_t = 100)]
        messages: u32,
        /// Messages a sender may have sent but not yet seen echoed.
        #[arg(short, long, default_value_t = 16)]
        window: usize,
    },
    /// C clients online and chatting at a fixed rate while K more log in and out in a burst.
    Presence(presence::PresenceOpts),
    /// N idle logged-in connections from 127.0.0.2, 127.0.0.3, …; the server's RSS per
    /// connection and the login rate.
    Conns(conns::ConnsOpts),
    /// Private messages to offline users (the mailbox), then their delivery at login.
    Offline(offline::OfflineOpts),
    /// Readers asking for pages of the public history while others chat: pages per second.
    History(history::HistoryOpts),
    /// Normal users chatting at a fixed rate beside hostile connections (slowloris,
    /// garbage, password guessing, never-readers, flooders) from 127.0.0.2, …
    Soak(soak::SoakOpts),
    /// Internal: one child process of `conns`.
    #[command(hide = true)]
    ConnsChild(conns::ChildOpts),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Some(report)) => {
            eprintln!("{}", report.human());
            println!("{}", report.to_json_line());
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simpletextim-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Option<Report>> {
    let c = &cli.common;
    let Some(&server) = c.server.first() else {
        anyhow::bail!("--server: no address");
    };
    for &s in &c.server {
        net::check_loopback(s)?;
    }
    anyhow::ensure!(
        c.server.len() == 1
            || matches!(
                cli.workload,
                Workload::Fanout { .. } | Workload::Private { .. } | Workload::Presence(_)
            ),
        "several --server: only fanout, private and presence spread their clients over servers"
    );
    anyhow::ensure!(
        c.timeout > 0.0 && c.timeout.is_finite(),
        "--timeout must be a positive number of seconds"
    );
    // Thousands of connections need more than the usual 1024 files: take the hard limit.
    // Without it small runs still work, and large ones fail with a clear `accept`/`connect`
    // error, so a failure here is only worth a note.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("simpletextim-loadgen: cannot raise the open-file limit: {e}");
    }
    let transport = if c.ws {
        anyhow::ensure!(
            matches!(
                cli.workload,
                Workload::Fanout { .. } | Workload::Private { .. }
            ),
            "--ws: only the fanout and private workloads speak WebSocket"
        );
        Transport::WebSocket
    } else {
        Transport::Tcp
    };
    let common = Common {
        server,
        servers: if c.server.len() > 1 {
            c.server.clone()
        } else {
            Vec::new()
        },
        prefix: c.prefix.clone(),
        timeout: Duration::from_secs_f64(c.timeout),
        login_concurrency: c.login_concurrency,
        size: c.size,
        settle: Duration::from_millis(c.settle_ms),
        bind: Bind::Any,
        transport,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = c.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.build()?;
    let report = rt.block_on(async {
        match cli.workload {
            Workload::Fanout {
                clients,
                senders,
                messages,
                window,
                rate,
            } => {
                let o = FanoutOpts {
                    clients,
                    senders,
                    messages,
                    window,
                    rate,
                };
                chat::fanout(&common, &o).await.map(Some)
            }
            Workload::Private {
                clients,
                messages,
                window,
            } => {
                let o = PrivateOpts {
                    clients,
                    messages,
                    window,
                };
                chat::private(&common, &o).await.map(Some)
            }
            Workload::RedisFanout(o) => redis::fanout(&common, &o).await.map(Some),
            Workload::Presence(o) => presence::run(&common, &o).await.map(Some),
            Workload::Conns(o) => conns::run(&common, &o).await.map(Some),
            Workload::Offline(o) => offline::run(&common, &o).await.map(Some),
            Workload::History(o) => history::run(&common, &o).await.map(Some),
            Workload::Soak(o) => soak::run(&common, &o).await.map(Some),
            Workload::ConnsChild(o) => conns::child(&common, &o).await.map(|()| None),
        }
    });
    // Idle sockets and their tasks need not be waited for.
    rt.shutdown_timeout(Duration::from_millis(100));
    let mut report = report?;
    if let (Some(r), Some(cpu)) = (&mut report, stats::own_cpu_seconds()) {
        // Its own share of the machine: is the load generator what saturates?
        r.loadgen_cpu_s = Some(cpu);
    }
    Ok(report)
}
