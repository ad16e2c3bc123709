//! `simpletextim-server`: the command line around [`simpletextim_server::run`].
//!
//! Parses options, sets up logging (tracing to stderr, level from `RUST_LOG`), raises the
//! open-file limit, binds the listener, turns SIGINT/SIGTERM into a graceful shutdown and
//! SIGHUP into a reload of the TLS certificate.

/// jemalloc, configured by [`MALLOC_CONF`] to return freed memory to the system within about
/// a second: glibc's malloc kept the holes a login storm left between long-lived sessions
/// resident (3–5 KiB per idle connection).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read by jemalloc before `main` (the `malloc_conf` variable of
/// jemalloc's API, under the `_rjem_` prefix of `tikv-jemalloc-sys`): a background thread
/// purges dirty pages after a second and returns them to the system at once. Being part of the
/// binary, it holds however the server is built (`cargo install` included); the environment
/// variable `_RJEM_MALLOC_CONF` can still override it at run time.
// SAFETY: jemalloc reads this symbol as a `const char *` to a NUL-terminated string, which a
// `&[u8; N]` to a literal ending in `\0` is; no other item of the program defines it
// (jemalloc's own definition is weak).
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::executor::block_on;
use futures::future::BoxFuture;
use ipnet::IpNet;
use simpletextim_proto::{Password, UserId};
use simpletextim_server::auth::{HashCost, hash_password};
use simpletextim_server::cluster::{ClusterConfig, RedisUrl};
use simpletextim_server::metrics;
use simpletextim_server::store::{
    Account, AccountInfo, DatabaseUrl, PgOptions, PostgresStore, SqliteStore, StoreError,
};
use simpletextim_server::{
    AddressLimits, Backoff, Config, DEFAULT_MAILBOX_CAP, DEFAULT_RATE_LIMIT, Framing, RateLimit,
    Registration, Retention, Store, ThrottlePolicy, Tls,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// File descriptors kept for things other than client connections (listener, database,
/// logs, the hashing threads).
const RESERVED_FDS: u64 = 64;

/// How long the end of the server waits for a scrape of `--metrics-listen` under way.
const METRICS_GRACE: Duration = Duration::from_secs(1);

/// SimpleTextIM chat server: public and private messages, presence and an offline mailbox,
/// over length-delimited JSON on TCP.
///
/// Without a subcommand it serves. Accounts and offline messages live in one SQLite file,
/// DIR/simpletextim.sqlite3, which `sqlite3` can open. To back it up while the server runs,
/// use `simpletextim-server backup FILE` (a consistent copy via VACUUM INTO). With
/// `--database URL` they live in PostgreSQL instead (create the schema first with
/// `simpletextim-server migrate --database URL`; back it up with `pg_dump`).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Directory of the database (created with mode 0700 if missing when serving; the
    /// `user` and `backup` commands need the database to exist).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "./simpletextim-data"
    )]
    data: PathBuf,

    /// Keep accounts, mailboxes and history in this PostgreSQL database instead of --data's
    /// SQLite file: a URL (postgres://USER:PASSWORD@HOST:PORT/DBNAME) or a libpq-style
    /// `key=value` string; plain TCP or a unix socket, no TLS yet. Prefer the environment
    /// variable to the command line, where other users can see the password.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "SIMPLETEXTIM_DATABASE",
        hide_env_values = true
    )]
    database: Option<DatabaseArg>,

    /// Cluster mode: serve one user base with the other nodes of this Redis (the bus of
    /// messages and presence; redis://[:PASSWORD@]HOST[:PORT][/DB]); needs --database, the
    /// record they share. Plain TCP or a unix socket, no TLS: keep Redis on a private
    /// network. Prefer the environment variable to the command line.
    #[arg(
        long,
        value_name = "URL",
        env = "SIMPLETEXTIM_CLUSTER_REDIS",
        hide_env_values = true,
        requires = "database"
    )]
    cluster_redis: Option<RedisArg>,

    /// This node's id in the cluster (1-64 characters of A-Z a-z 0-9 _ . -), unique among
    /// the nodes [default: a random id].
    #[arg(long, value_name = "NAME", requires = "cluster_redis")]
    node_id: Option<String>,

    #[command(subcommand)]
    command: Option<Cmd>,

    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, value_name = "ADDR", default_value = simpletextim_server::DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// Also serve the protocol as one JSON object per line on this address, for `nc` or
    /// telnet debugging [default: off].
    #[arg(long, value_name = "ADDR")]
    listen_lines: Option<SocketAddr>,

    /// Serve Prometheus metrics (`GET /metrics`, OpenMetrics text) on this address, e.g.
    /// 127.0.0.1:9100; a warning is logged if it is not a loopback address [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve HTTP on this address: the web client at /, WebSocket sessions at /ws, and
    /// /healthz; over HTTPS/wss with --tls-cert. `off` disables it.
    #[arg(long, value_name = "ADDR|off", default_value = simpletextim_server::DEFAULT_LISTEN_HTTP, value_parser = parse_listen_http)]
    listen_http: ListenHttp,

    /// A web origin (scheme://host[:port]) whose pages may open WebSocket sessions, besides
    /// the server's own; repeatable. Clients sending no Origin (not browsers) are always
    /// allowed.
    #[arg(long, value_name = "ORIGIN", value_parser = simpletextim_server::normalize_origin)]
    allowed_origin: Vec<String>,

    /// HTTP connections (not WebSocket sessions) open at once on --listen-http.
    #[arg(long, value_name = "N", default_value_t = simpletextim_server::DEFAULT_HTTP_MAX_CONNECTIONS)]
    http_max_connections: usize,

    /// HTTP connections (not WebSocket sessions) open at once from one address; more are
    /// closed at once (0: no limit).
    #[arg(long, value_name = "N", default_value_t = simpletextim_server::DEFAULT_HTTP_CONNECTIONS_PER_ADDRESS)]
    http_connections_per_address: u32,

    /// Serve every listener over TLS 1.2/1.3 with this certificate chain (PEM, the
    /// server's certificate first); needs --tls-key. SIGHUP reads both files again.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Whether the first login of a free user id creates the account.
    #[arg(long, value_enum, default_value_t = Registration::Open)]
    registration: Registration,

    /// Most private messages kept for one offline user; past it senders get `fail 503`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAILBOX_CAP)]
    mailbox_cap: usize,

    /// Largest command frame a client may send, in bytes (longer: `fail 413`, then close).
    #[arg(long, value_name = "BYTES", default_value_t = simpletextim_proto::codec::DEFAULT_MAX_COMMAND_FRAME)]
    max_frame: usize,

    /// Messages and notices queued for one client before it counts as a slow consumer and
    /// is disconnected.
    #[arg(long, value_name = "N", default_value_t = simpletextim_server::DEFAULT_OUTBOX)]
    outbox: usize,

    /// Flood control per user, kept across reconnects: tokens a second, each `send` and
    /// `history` taking one and each `list` 10; past it `fail 429` (0: no limit).
    #[arg(long, value_name = "PER_SEC", default_value_t = DEFAULT_RATE_LIMIT.per_sec)]
    rate_limit: f64,

    /// Tokens a user may spend in one burst before the rate limit applies.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RATE_LIMIT.burst)]
    rate_burst: u32,

    /// Connections open at once from one address (IPv4, or IPv6 /64); more get `fail 503`
    /// and are closed (0: no limit).
    #[arg(long, value_name = "N", default_value_t = AddressLimits::default().connections)]
    connections_per_address: u32,

    /// New connections a minute from one address (and at once); more get `fail 503` and
    /// are closed (0: no limit).
    #[arg(long, value_name = "N", default_value_t = AddressLimits::default().new_connections_per_minute)]
    new_connections_per_minute: u32,

    /// Accounts one address may create at once (open registration); past it, and
    /// `--new-accounts-per-hour`, a new account gets `fail 429` (0: no limit).
    #[arg(long, value_name = "N", default_value_t = AddressLimits::default().new_accounts)]
    new_accounts_per_address: u32,

    /// Accounts one address may create an hour once `--new-accounts-per-address` are used
    /// (at least 1).
    #[arg(long, value_name = "N", default_value_t = AddressLimits::default().new_accounts_per_hour)]
    new_accounts_per_hour: u32,

    /// Connections not logged in yet, at once; more get `fail 503` and are closed.
    #[arg(long, value_name = "N", default_value_t = simpletextim_server::DEFAULT_MAX_UNAUTHENTICATED)]
    max_unauthenticated: usize,

    /// A network exempt from the per-address limits (connections, new connections, new
    /// accounts, logins in progress), e.g. 10.0.0.0/8 or 127.0.0.1/32; repeatable. Failed
    /// logins are throttled and floods controlled all the same.
    #[arg(long, value_name = "CIDR")]
    exempt: Vec<IpNet>,

    /// Seconds a connection may stay without logging in before it is closed (`fail 401`),
    /// the time its login waits to be checked included.
    #[arg(long, value_name = "SECS", default_value_t = simpletextim_server::DEFAULT_LOGIN_TIMEOUT.as_secs())]
    login_timeout: u64,

    /// Bytes of messages and notices queued for one client before it counts as a slow
    /// consumer and is disconnected.
    #[arg(long, value_name = "BYTES", default_value_t = simpletextim_server::DEFAULT_OUTBOX_BYTES)]
    outbox_bytes: usize,

    /// Seconds a client's socket may take nothing of what is waiting for it before the
    /// connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = simpletextim_server::DEFAULT_WRITE_TIMEOUT.as_secs())]
    write_timeout: u64,

    /// Logins waiting for their password to be checked at once; more get `fail 503`.
    #[arg(long, value_name = "N", default_value_t = simpletextim_server::DEFAULT_LOGIN_QUEUE)]
    login_queue: usize,

    /// Failed logins from one address (IPv4, or IPv6 /64) before further attempts wait
    /// (`fail 429`): 1 s, then doubling.
    #[arg(long, value_name = "N", default_value_t = ThrottlePolicy::default().per_address.free)]
    login_failures_per_address: u32,

    /// Failed logins for one account before further attempts wait (`fail 429`), except
    /// from addresses that logged in to it before.
    #[arg(long, value_name = "N", default_value_t = ThrottlePolicy::default().per_account.free)]
    login_failures_per_account: u32,

    /// The longest wait after failed logins, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = ThrottlePolicy::default().per_account.max.as_secs())]
    login_max_wait: u64,

    /// Logins one address may have waiting to be checked at once; more get `fail 503`.
    #[arg(long, value_name = "N", default_value_t = ThrottlePolicy::default().in_flight_per_address)]
    logins_per_address: u32,

    /// Exempt clients on loopback addresses (127.0.0.0/8, ::1) from the per-address limits,
    /// as with --exempt (benchmarks logging thousands of users in from one machine).
    #[arg(long)]
    exempt_loopback: bool,

    /// Days of history kept (public and private messages); older ones are pruned at start
    /// and then every minute (0: no age limit).
    #[arg(long, value_name = "N", default_value_t = Retention::DEFAULT_DAYS)]
    history_days: u64,

    /// Most messages kept in the history, all conversations together; the oldest are
    /// pruned first (0: no count limit).
    #[arg(long, value_name = "N", default_value_t = Retention::DEFAULT_MAX_MESSAGES)]
    history_max_messages: u64,

    /// Most connections served at once [default: the open-file limit less a reserve].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Hash passwords with minimal Argon2id cost. INSECURE: for benchmarks and tests only.
    #[arg(long, global = true)]
    insecure_fast_hash: bool,
}

/// `--listen-http`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
enum ListenHttp {
    Off,
    On(SocketAddr),
}

fn parse_listen_http(s: &str) -> Result<ListenHttp, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(ListenHttp::Off);
    }
    s.parse()
        .map(ListenHttp::On)
        .map_err(|e| format!("{e}: an address such as 127.0.0.1:5080, or off"))
}

impl Cli {
    /// The login throttle's schedules from the command line: waits start at 1 s and double
    /// up to `--login-max-wait`.
    fn throttle_policy(&self) -> ThrottlePolicy {
        let defaults = ThrottlePolicy::default();
        let max = Duration::from_secs(self.login_max_wait.max(1));
        ThrottlePolicy {
            per_address: Backoff {
                free: self.login_failures_per_address,
                max,
                ..defaults.per_address
            },
            per_account: Backoff {
                free: self.login_failures_per_account,
                max,
                ..defaults.per_account
            },
            in_flight_per_address: self.logins_per_address.max(1),
        }
    }

    /// How much history is kept: `--history-days` and `--history-max-messages`, 0 for no
    /// such limit.
    fn retention(&self) -> Retention {
        Retention {
            max_age: Retention::days(self.history_days)
                .max_age
                .filter(|_| self.history_days > 0),
            max_messages: (self.history_max_messages > 0).then_some(self.history_max_messages),
        }
    }

    fn hash_cost(&self) -> HashCost {
        if self.insecure_fast_hash {
            HashCost::InsecureFast
        } else {
            HashCost::Default
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Manage accounts in the data directory (works while the server runs).
    User {
        #[command(subcommand)]
        action: UserCmd,
    },
    /// Create or upgrade the PostgreSQL schema of --database (idempotent; safe while other
    /// nodes run it too). The SQLite store migrates itself when it opens.
    Migrate,
    /// Write a consistent copy of the database to FILE, mode 0600 (safe while the server
    /// runs). SQLite only: with --database, use pg_dump.
    Backup {
        /// Where to write the copy; must not exist.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// Create an account. The password is read from standard input (first line), or
    /// prompted for without echo on a terminal; never from the command line.
    Add {
        /// The user id.
        name: String,
    },
    /// Set an account's password (read like `add`). A running server ends the user's
    /// session within seconds; a login with the new password is not affected.
    Passwd {
        /// The user id.
        name: String,
    },
    /// Delete an account, its offline messages and its private history (both sides of its
    /// private conversations). A running server ends the user's session within seconds.
    Del {
        /// The user id.
        name: String,
    },
    /// List the accounts.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Serving logs at info; the one-shot subcommands say what they did on stdout and log
    // only warnings.
    let default_level = if cli.command.is_none() {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        None => serve(cli),
        Some(Cmd::User { ref action }) => user(&cli, action),
        Some(Cmd::Migrate) => migrate(&cli),
        Some(Cmd::Backup { ref file }) => backup(&cli, file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simpletextim-server: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message before it
/// already ends with (some errors print their source themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.ends_with(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.replace('\n', " ")
}

/// The store of the server, which creates the directory and the database on its first start.
fn open_store(data: &Path, mailbox_cap: usize) -> anyhow::Result<SqliteStore> {
    Ok(SqliteStore::open(data, mailbox_cap)?)
}

/// The store of an administration command: only an existing database, so a wrong `--data`
/// is an error rather than a new, empty database.
fn open_existing_store(data: &Path, mailbox_cap: usize) -> anyhow::Result<SqliteStore> {
    Ok(SqliteStore::open_existing(data, mailbox_cap)?)
}

/// The text of `--database` as given. Its `Debug` does not show it: it may hold a password
/// (`Cli` derives `Debug`). Parsed by [`database_url`], whose error never repeats it.
#[derive(Clone)]
struct DatabaseArg(String);

impl std::str::FromStr for DatabaseArg {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<DatabaseArg, Self::Err> {
        Ok(DatabaseArg(s.to_owned()))
    }
}

impl std::fmt::Debug for DatabaseArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseArg(..)")
    }
}

/// The text of `--cluster-redis` as given; like [`DatabaseArg`], its `Debug` hides it (it
/// may hold a password), and it is parsed by [`cluster_config`], whose error never repeats
/// it.
#[derive(Clone)]
struct RedisArg(String);

impl std::str::FromStr for RedisArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<RedisArg, Self::Err> {
        Ok(RedisArg(s.to_owned()))
    }
}

impl std::fmt::Debug for RedisArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisArg(..)")
    }
}

/// `--cluster-redis` and `--node-id`, checked; `None` for a single process.
fn cluster_config(cli: &Cli) -> anyhow::Result<Option<ClusterConfig>> {
    let Some(arg) = &cli.cluster_redis else {
        return Ok(None);
    };
    let url: RedisUrl = arg.0.parse().context("--cluster-redis")?;
    let config = ClusterConfig::new(url, cli.node_id.clone()).context("--node-id")?;
    Ok(Some(config))
}

/// `--database`, parsed; `None` for the SQLite store of `--data`.
fn database_url(cli: &Cli) -> anyhow::Result<Option<DatabaseUrl>> {
    // The parse error never repeats the value, which may hold a password.
    cli.database
        .as_ref()
        .map(|s| s.0.parse::<DatabaseUrl>().context("--database"))
        .transpose()
}

/// A single-threaded runtime for the one-shot subcommands on PostgreSQL.
fn one_shot_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `migrate`: brings the PostgreSQL schema to this build's version.
fn migrate(cli: &Cli) -> anyhow::Result<()> {
    let Some(url) = database_url(cli)? else {
        bail!(
            "migrate needs --database URL (or SIMPLETEXTIM_DATABASE); the SQLite store of \
             --data migrates itself when it opens"
        );
    };
    let options = PgOptions::new(cli.mailbox_cap);
    let done = one_shot_runtime()?.block_on(PostgresStore::migrate(&url, &options))?;
    if done.from == done.to {
        println!("{url}: schema at version {}, nothing to do", done.to);
    } else {
        println!(
            "{url}: schema migrated from version {} to {}",
            done.from, done.to
        );
    }
    Ok(())
}

fn serve(cli: Cli) -> anyhow::Result<()> {
    // Read first: a bad certificate or key fails before the database is touched.
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::from_pem_files(cert, key)?),
        _ => None,
    };
    if let Some(url) = database_url(&cli)? {
        return serve_postgres(cli, url, tls);
    }
    // Opened before the runtime: opening blocks (migrations), and a bad directory should
    // fail before anything listens.
    let store = Arc::new(open_store(&cli.data, cli.mailbox_cap)?);
    tracing::info!(database = %store.path().display(), "store open");
    let result = serve_with(cli, store.clone(), tls);
    // Finish every queued write before exiting.
    store.close();
    result
}

/// Serves with the PostgreSQL store: connects (refusing a schema that is not this build's,
/// see `migrate`) before anything listens, and closes it after the last session.
#[tokio::main]
async fn serve_postgres(cli: Cli, url: DatabaseUrl, tls: Option<Tls>) -> anyhow::Result<()> {
    let store = Arc::new(PostgresStore::connect(&url, PgOptions::new(cli.mailbox_cap)).await?);
    tracing::info!(database = %url, "store open");
    let result = serve_on(cli, store.clone(), tls).await;
    // Finish every queued write before exiting.
    store.close().await;
    result
}

#[tokio::main]
async fn serve_with(cli: Cli, store: Arc<SqliteStore>, tls: Option<Tls>) -> anyhow::Result<()> {
    serve_on(cli, store, tls).await
}

/// Serves until SIGINT or SIGTERM with `store`.
async fn serve_on(cli: Cli, store: Arc<dyn Store>, tls: Option<Tls>) -> anyhow::Result<()> {
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
        hash_cost: cli.hash_cost(),
        max_connections,
        rate_limit: (cli.rate_limit > 0.0).then_some(RateLimit {
            per_sec: cli.rate_limit,
            burst: cli.rate_burst.max(1),
        }),
        login_timeout: Duration::from_secs(cli.login_timeout.max(1)),
        outbox_bytes: cli.outbox_bytes,
        write_timeout: Duration::from_secs(cli.write_timeout.max(1)),
        login_queue: cli.login_queue.max(1),
        login_throttle: cli.throttle_policy(),
        exempt_loopback: cli.exempt_loopback,
        exempt: cli.exempt.clone(),
        address_limits: AddressLimits {
            connections: cli.connections_per_address,
            new_connections_per_minute: cli.new_connections_per_minute,
            new_accounts: cli.new_accounts_per_address,
            new_accounts_per_hour: cli.new_accounts_per_hour.max(1),
        },
        max_unauthenticated: cli.max_unauthenticated.max(1),
        history_retention: cli.retention(),
        store,
        tls: tls.clone(),
        allowed_origins: cli.allowed_origin.clone(),
        http_max_connections: cli.http_max_connections.max(1),
        http_connections_per_address: cli.http_connections_per_address,
        cluster: cluster_config(&cli)?,
        ..Config::default()
    };
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;
    let mut listeners = vec![(listener, Framing::LengthDelimited)];
    if let Some(lines_addr) = cli.listen_lines {
        let lines = TcpListener::bind(lines_addr)
            .await
            .with_context(|| format!("cannot listen on {lines_addr}"))?;
        let bound = lines.local_addr().context("listener has no address")?;
        tracing::info!("line protocol (one JSON object per line, for debugging) on {bound}");
        listeners.push((lines, Framing::Lines));
    }
    if let ListenHttp::On(http_addr) = cli.listen_http {
        let http = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("cannot listen on {http_addr} (--listen-http)"))?;
        let bound = http.local_addr().context("listener has no address")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!("HTTP on {bound}: the web client at {scheme}://{bound}/, WebSocket at /ws");
        listeners.push((http, Framing::WebSocket));
    }
    let shutdown = CancellationToken::new();
    let metrics = match cli.metrics_listen {
        Some(metrics_addr) => {
            let listener = TcpListener::bind(metrics_addr)
                .await
                .with_context(|| format!("cannot listen on {metrics_addr}"))?;
            let bound = listener.local_addr().context("listener has no address")?;
            tracing::info!("metrics on http://{bound}/metrics");
            let serving = metrics::serve(listener, config.metrics.clone(), shutdown.clone());
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    cancel_on_signal(shutdown.clone());
    if let Some(tls) = tls {
        tracing::info!(cert = %tls.cert_path().display(), "TLS on every listener");
        reload_on_sighup(tls);
    }
    tracing::info!("listening on {addr}");

    simpletextim_server::run_listeners(listeners, config, shutdown).await?;
    if let Some(serving) = metrics {
        // Stopped by the same shutdown; a scrape under way gets a moment to end.
        match tokio::time::timeout(METRICS_GRACE, serving).await {
            Ok(Ok(Ok(()))) | Err(_) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "metrics listener failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics listener panicked"),
        }
    }
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

/// Cancels `shutdown` on SIGINT or SIGTERM. The handlers are installed when this returns
/// (before the server says it listens), so a signal sent right after that line is a graceful
/// shutdown, not the default action's abrupt end.
fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        let (Ok(mut int), Ok(mut term)) = streams else {
            tracing::warn!("cannot install the SIGINT/SIGTERM handlers");
            return;
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            }
            shutdown.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C: shutting down");
            shutdown.cancel();
        }
    });
}

/// Reads the TLS certificate and key files again on every SIGHUP: new handshakes present
/// the new pair, established sessions go on. A pair that does not load is logged and the
/// current one kept. Installed before the server says it listens, so a SIGHUP from then on
/// never takes the default action (ending the process).
fn reload_on_sighup(tls: Tls) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "cannot install the SIGHUP handler: the TLS certificate cannot be reloaded"
            );
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %tls.cert_path().display(), "SIGHUP: TLS certificate reloaded")
                    }
                    Err(e) => tracing::warn!("SIGHUP: {e}; keeping the current certificate"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = tls;
}

/// `user add|passwd|del|list`, on `--database` or `--data`.
fn user(cli: &Cli, action: &UserCmd) -> anyhow::Result<()> {
    if let Some(url) = database_url(cli)? {
        return one_shot_runtime()?.block_on(async {
            let store = PostgresStore::connect(&url, PgOptions::new(cli.mailbox_cap)).await?;
            let result = user_with(cli, action, &store, || store.list_accounts()).await;
            store.close().await;
            result
        });
    }
    let store = open_existing_store(&cli.data, cli.mailbox_cap)?;
    let result = block_on(user_with(cli, action, &store, || store.list_accounts()));
    store.close();
    result
}

/// `user …` against `store`; `list` reads what `list_accounts` returns.
async fn user_with(
    cli: &Cli,
    action: &UserCmd,
    store: &dyn Store,
    list_accounts: impl Fn() -> BoxFuture<'static, Result<Vec<AccountInfo>, StoreError>>,
) -> anyhow::Result<()> {
    let cost = cli.hash_cost();
    match action {
        UserCmd::Add { name } => {
            let user_id = UserId::new(name).map_err(|f| anyhow::anyhow!(f.reason))?;
            let password = read_password(&format!("Password for {user_id}: "))?;
            let account = Account {
                password_hash: hash_password(password.expose(), cost)
                    .map_err(|f| anyhow::anyhow!(f.reason))?,
                user_id: user_id.clone(),
                created_ms: simpletextim_server::now_ms(),
            };
            match store.create_account(account).await {
                Ok(()) => println!("created {user_id}"),
                Err(StoreError::AccountExists(_)) => bail!("user {user_id} exists already"),
                Err(e) => return Err(e.into()),
            }
        }
        UserCmd::Passwd { name } => {
            let user_id = UserId::new(name).map_err(|f| anyhow::anyhow!(f.reason))?;
            if store.account(user_id.key()).await?.is_none() {
                bail!("no such user: {user_id}");
            }
            let password = read_password(&format!("New password for {user_id}: "))?;
            let phc =
                hash_password(password.expose(), cost).map_err(|f| anyhow::anyhow!(f.reason))?;
            // Records a revocation too: a running server ends the user's session.
            match store.set_password_hash(user_id.key(), phc).await {
                Ok(()) => {
                    after_revocation();
                    println!("password of {user_id} changed");
                }
                Err(StoreError::NoSuchUser(_)) => bail!("no such user: {user_id}"),
                Err(e) => return Err(e.into()),
            }
        }
        UserCmd::Del { name } => {
            let user_id = UserId::new(name).map_err(|f| anyhow::anyhow!(f.reason))?;
            // Records a revocation too: a running server ends the user's session.
            match store.delete_account(user_id.key()).await {
                Ok(dropped) => {
                    after_revocation();
                    println!("deleted {user_id} ({dropped} unread messages dropped)");
                }
                Err(StoreError::NoSuchUser(_)) => bail!("no such user: {user_id}"),
                Err(e) => return Err(e.into()),
            }
        }
        UserCmd::List => {
            let accounts = list_accounts().await?;
            println!("{:<32}  {:<20}  {:>7}", "USER", "CREATED (UTC)", "UNREAD");
            for a in accounts {
                let created = chrono::DateTime::from_timestamp_millis(a.created_ms as i64)
                    .map_or_else(
                        || "?".to_owned(),
                        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
                    );
                println!(
                    "{:<32}  {:<20}  {:>7}",
                    a.user_id.as_str(),
                    created,
                    a.pending
                );
            }
        }
    }
    Ok(())
}

/// Waits out the millisecond of the revocation just recorded: a server ends the sessions
/// whose login looked the account up at or before the revocation's millisecond, so a login
/// started once this command has returned (with the new password) must fall in a later one.
fn after_revocation() {
    std::thread::sleep(Duration::from_millis(2));
}

/// `backup FILE` (SQLite only).
fn backup(cli: &Cli, file: &Path) -> anyhow::Result<()> {
    if cli.database.is_some() {
        bail!(
            "backup copies the SQLite database of --data; with --database, back PostgreSQL up \
             with pg_dump (e.g. pg_dump --format=custom --file=FILE DBNAME)"
        );
    }
    let store = open_existing_store(&cli.data, cli.mailbox_cap)?;
    block_on(store.backup_to(file.to_path_buf()))
        .with_context(|| format!("cannot back up to {}", file.display()))?;
    store.close();
    println!("backed up {} to {}", store.path().display(), file.display());
    Ok(())
}

/// A password from the terminal (without echo, asked twice) or from the first line of
/// standard input.
fn read_password(prompt: &str) -> anyhow::Result<Password> {
    let text = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(prompt).context("cannot read the password")?;
        let again = rpassword::prompt_password("Again: ").context("cannot read the password")?;
        if first != again {
            bail!("the passwords differ");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    Password::new(&text).map_err(|f| anyhow::anyhow!(f.reason))
}
