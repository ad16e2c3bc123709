//! The SimpleTextIM server as a library: [`run`] serves the protocol on a bound listener
//! until a shutdown token fires. The binary (`main.rs`) only parses the command line, sets
//! up logging and signals, and calls it; tests call it on `127.0.0.1:0`.
//!
//! Where to start reading: [`run`] (accept loop and shutdown), then `session/` (one task
//! per connection: the protocol in `mod.rs`, `commands.rs` and `goodbye.rs` over the
//! socket and buffers of `conn.rs`), `hub.rs` (who is online, fan-out), `outbox.rs` (what
//! the hub queues for a session), `presence.rs` (the shared log of `joined`/`left` every
//! session reads), `wire.rs` (how queued messages become frames), `auth.rs`
//! (passwords), `store/` (persistence), `http.rs` (the HTTP listener: web client, health
//! check, WebSocket upgrade), `metrics.rs` (Prometheus metrics).

pub mod auth;
pub mod cluster;
mod http;
mod hub;
mod limits;
pub mod metrics;
mod outbox;
mod presence;
mod session;
pub mod store;
mod throttle;
mod tls;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{HashCost, Registration};
pub use http::{CONTENT_SECURITY_POLICY, normalize_origin};
pub use limits::AddressLimits;
pub use metrics::Metrics;
pub use session::{LIST_COST, RateLimit};
pub use store::{MemoryStore, Retention, Store};
pub use throttle::{Backoff, ThrottlePolicy};
pub use tls::{Tls, TlsError};
pub use wire::Framing;

use auth::Authenticator;
use hub::Hub;
use store::{HISTORY_QUEUE, HistoryWriter};

/// Default listen address: loopback, the original server's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
/// Default HTTP listen address (web client, `/healthz`, WebSocket at `/ws`): loopback,
/// next to the framed port.
pub const DEFAULT_LISTEN_HTTP: &str = "127.0.0.1:5080";
/// Default time between WebSocket pings to a client that sends nothing (and how long it has
/// to answer one).
pub const DEFAULT_WEBSOCKET_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default cap on HTTP connections (not upgraded) at once.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1024;
/// Default cap on HTTP connections (not upgraded) at once from one address: a browser opens
/// up to 6 per site, a few tabs or people behind one NAT address a few more.
pub const DEFAULT_HTTP_CONNECTIONS_PER_ADDRESS: u32 = 32;
/// Default time a client has to send a request's headers, and an idle keep-alive HTTP
/// connection stays open.
pub const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default per-recipient offline mailbox cap.
pub const DEFAULT_MAILBOX_CAP: usize = 1000;
/// Default outbox capacity: items queued for one session before it is a slow consumer.
pub const DEFAULT_OUTBOX: usize = 4096;
/// Default outbox size in bytes (the items' encoded size) before a session is a slow
/// consumer: about 1 800 public messages of 140 characters, several seconds of a busy room,
/// in the range of IRC servers' send queues.
pub const DEFAULT_OUTBOX_BYTES: usize = 256 * 1024;
/// Default time a session's socket may take nothing of what it has to write before the
/// connection is closed.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default flood control per user: 1 token a second, 20 at once (`send` costs 1, `list`
/// [`LIST_COST`]). A person typing, even pasting a block of lines, never reaches it; a
/// script gets one message a second through to the others (the sustained rate of IRC
/// servers' flood control, and of Slack's and Discord's per channel), or one `list` every
/// 10 s. At 5 a second, a dozen scripted accounts made the soak's 200 normal users' p99
/// round trip 2.4–4× that of a quiet run (docs/BENCHMARKS.md, *Soak*).
pub const DEFAULT_RATE_LIMIT: RateLimit = RateLimit {
    per_sec: 1.0,
    burst: 20,
};
/// Default length of the login queue: at about 80 checks a second at the default Argon2
/// cost on 2 cores, the last of 128 waits under 2 s, well within a client's patience.
pub const DEFAULT_LOGIN_QUEUE: usize = 128;
/// Default cap on connections not logged in yet: enough for a login storm after a
/// restart, while sockets that never log in (slowloris) cannot take more.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 1024;
/// Default time a connection may take to log in.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time between two rounds of history pruning ([`Config::history_retention`]); the
/// first round runs at start.
pub const DEFAULT_HISTORY_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Everything the server can be configured with.
#[derive(Clone)]
pub struct Config {
    /// Largest client → server frame payload, in bytes.
    pub max_command_frame: usize,
    /// Items a session's outbox holds before the session counts as a slow consumer.
    pub outbox_capacity: usize,
    /// Bytes (encoded) a session's outbox holds before the session counts as a slow
    /// consumer.
    pub outbox_bytes: usize,
    /// The least number of presence notices (`joined`/`left`) the shared presence log keeps
    /// (it keeps twice the users online when that is more; 34 bytes each). A session that
    /// falls further behind is a slow consumer.
    pub presence_log: usize,
    /// How long a session's socket may take none of the bytes waiting for it, before or
    /// after login, before the connection is closed.
    pub write_timeout: Duration,
    /// Whether a first login creates the account.
    pub registration: Registration,
    /// The cost of password hashing ([`HashCost::InsecureFast`] for benchmarks and tests
    /// only).
    pub hash_cost: HashCost,
    /// Password hashes computed at once (the rest wait their turn).
    pub hash_pool: usize,
    /// Logins waiting for a hash or being checked at once; more get `fail 503`.
    pub login_queue: usize,
    /// Most connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Flood control per user (shared by the user's sessions, kept across reconnects):
    /// tokens taken by `send` (1), `history` (1) and `list` ([`LIST_COST`]); `None` for no
    /// limit.
    pub rate_limit: Option<RateLimit>,
    /// How long a shutdown waits for sessions to say goodbye.
    pub shutdown_grace: Duration,
    /// How long a connection may stay without logging in (time spent checking its
    /// password not counted); then it gets `fail 401` and is closed.
    pub login_timeout: Duration,
    /// When failed logins make further attempts wait (`fail 429`), and how many logins one
    /// address may have in progress.
    pub login_throttle: ThrottlePolicy,
    /// Clients on loopback addresses are exempt from the per-address limits (connections,
    /// new connections, new accounts, logins in progress), for benchmarks and tests that
    /// log thousands of users in from one machine. Failed logins are throttled and floods
    /// controlled all the same.
    pub exempt_loopback: bool,
    /// Networks exempt from the per-address limits, like loopback with `exempt_loopback`.
    pub exempt: Vec<ipnet::IpNet>,
    /// Connections and new connections per address at once, and new accounts per address.
    pub address_limits: AddressLimits,
    /// Connections not logged in yet, at once: more get `fail 503` and are closed (those
    /// logged in are limited only by `max_connections`).
    pub max_unauthenticated: usize,
    /// Accounts, mailboxes and the kept history.
    pub store: Arc<dyn Store>,
    /// How much history is kept (by default 90 days and 1 000 000 messages): older
    /// messages are pruned at start and then every [`Config::history_prune_interval`].
    pub history_retention: Retention,
    /// Time between two rounds of pruning the history.
    pub history_prune_interval: Duration,
    /// Serve every listener over TLS with this certificate; `None`: plain TCP.
    pub tls: Option<Tls>,
    /// Origins (`scheme://host[:port]`, as [`normalize_origin`] writes them) whose pages may
    /// open a WebSocket besides the server's own (an `Origin` whose host and port are the
    /// request's `Host`); a request without `Origin` (not a browser) is always allowed.
    pub allowed_origins: Vec<String>,
    /// A WebSocket client that sends nothing for this long is pinged, and its session ended
    /// if nothing comes within as long again.
    pub websocket_ping_interval: Duration,
    /// HTTP connections (not upgraded) at once on the HTTP listener; more wait in the
    /// listen backlog.
    pub http_max_connections: usize,
    /// HTTP connections (not upgraded) at once from one address; more are closed at once
    /// (0: no limit; exempt addresses are not counted).
    pub http_connections_per_address: u32,
    /// How long a client has to send a request's headers, and an idle keep-alive HTTP
    /// connection stays open.
    pub http_header_timeout: Duration,
    /// The server's metrics: keep a clone to serve them ([`metrics::serve`]). One per
    /// server; a fresh one by default.
    pub metrics: Metrics,
    /// Cluster mode (`--cluster-redis`): the Redis of the bus and the presence registry,
    /// and this node's id. `None` (the default): a single process.
    pub cluster: Option<cluster::ClusterConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("max_command_frame", &self.max_command_frame)
            .field("outbox_capacity", &self.outbox_capacity)
            .field("outbox_bytes", &self.outbox_bytes)
            .field("presence_log", &self.presence_log)
            .field("write_timeout", &self.write_timeout)
            .field("registration", &self.registration)
            .field("hash_cost", &self.hash_cost)
            .field("hash_pool", &self.hash_pool)
            .field("login_queue", &self.login_queue)
            .field("max_connections", &self.max_connections)
            .field("rate_limit", &self.rate_limit)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("login_timeout", &self.login_timeout)
            .field("login_throttle", &self.login_throttle)
            .field("exempt_loopback", &self.exempt_loopback)
            .field("exempt", &self.exempt)
            .field("address_limits", &self.address_limits)
            .field("max_unauthenticated", &self.max_unauthenticated)
            .field("history_retention", &self.history_retention)
            .field("history_prune_interval", &self.history_prune_interval)
            .field("tls", &self.tls)
            .field("allowed_origins", &self.allowed_origins)
            .field("websocket_ping_interval", &self.websocket_ping_interval)
            .field("http_max_connections", &self.http_max_connections)
            .field(
                "http_connections_per_address",
                &self.http_connections_per_address,
            )
            .field("http_header_timeout", &self.http_header_timeout)
            .field("metrics", &self.metrics)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_command_frame: simpletextim_proto::codec::DEFAULT_MAX_COMMAND_FRAME,
            outbox_capacity: DEFAULT_OUTBOX,
            outbox_bytes: DEFAULT_OUTBOX_BYTES,
            presence_log: presence::DEFAULT_PRESENCE_LOG,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            // Off until an A/B on a quiet machine shows it pays (docs/BENCHMARKS.md).
            registration: Registration::Open,
            hash_cost: HashCost::Default,
            hash_pool: std::thread::available_parallelism().map_or(2, usize::from),
            login_queue: DEFAULT_LOGIN_QUEUE,
            max_connections: 10_000,
            rate_limit: Some(DEFAULT_RATE_LIMIT),
            shutdown_grace: Duration::from_secs(4),
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            login_throttle: ThrottlePolicy::default(),
            exempt_loopback: false,
            exempt: Vec::new(),
            address_limits: AddressLimits::default(),
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            store: Arc::new(MemoryStore::new(DEFAULT_MAILBOX_CAP)),
            history_retention: Retention::default(),
            history_prune_interval: DEFAULT_HISTORY_PRUNE_INTERVAL,
            tls: None,
            allowed_origins: Vec::new(),
            websocket_ping_interval: DEFAULT_WEBSOCKET_PING_INTERVAL,
            http_max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            http_connections_per_address: DEFAULT_HTTP_CONNECTIONS_PER_ADDRESS,
            http_header_timeout: DEFAULT_HTTP_HEADER_TIMEOUT,
            metrics: Metrics::new(),
            cluster: None,
        }
    }
}

/// State every session shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) hub: Hub,
    /// Writes the history of the messages the hub delivers (not those `enqueue` keeps).
    pub(crate) history: HistoryWriter,
    pub(crate) auth: Authenticator,
    pub(crate) throttle: throttle::LoginThrottle,
    pub(crate) flood: session::FloodControl,
    pub(crate) limits: limits::Limits,
    pub(crate) shutdown: CancellationToken,
    /// The server's metrics (a clone of [`Config::metrics`]): [`Metrics::render`] for a
    /// `/metrics` endpoint.
    pub(crate) metrics: Metrics,
    /// The id of the next connection (for the log).
    conn_ids: AtomicU64,
    /// Cluster mode's bus and presence registry; `None` in a single process.
    pub(crate) cluster: Option<Arc<cluster::Cluster>>,
}

impl Shared {
    /// A new connection's id.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Serves the protocol on `listener` until `shutdown` is cancelled, then sends every
/// session `fail 503` ("server shutting down"), closes them and returns.
///
/// # Errors
/// Only if the store cannot be read at start; errors of single connections end only
/// those connections.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    run_listeners(vec![(listener, Framing::LengthDelimited)], config, shutdown).await
}

/// Like [`run`], on several listeners at once, each with its framing: the protocol's
/// length-delimited frames, one JSON object per line (the `--listen-lines` debugging
/// listener), or [`Framing::WebSocket`]: HTTP (`--listen-http`: the web client,
/// `/healthz`, and WebSocket sessions at `/ws`). Every session shares the one hub, whatever
/// its listener. An HTTP listener answers until the sessions have closed (`/healthz` says
/// 503 from the shutdown on).
///
/// # Errors
/// As [`run`].
pub async fn run_listeners(
    listeners: Vec<(TcpListener, Framing)>,
    config: Config,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let store = config.store.clone();
    let min_id = store
        .max_message_id()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let cluster = match &config.cluster {
        Some(c) => {
            let connected = cluster::Cluster::connect(c)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            tracing::info!(node = %c.node_id, redis = %c.redis, "cluster mode");
            Some(Arc::new(connected))
        }
        None => None,
    };
    if config.hash_cost == HashCost::InsecureFast {
        tracing::warn!(
            "--insecure-fast-hash: passwords are hashed with minimal cost; benchmarks and tests only"
        );
    }
    if config.tls.is_none() {
        for (listener, _) in &listeners {
            if let Ok(addr) = listener.local_addr()
                && !addr.ip().is_loopback()
            {
                tracing::warn!(
                    "listening on {addr} without TLS: passwords would cross the network in clear; use --tls-cert/--tls-key"
                );
            }
        }
    }
    // Public messages and private messages to online users are kept through it; it is
    // closed (what it holds written) once the sessions are gone, before the caller closes
    // the store.
    let history = HistoryWriter::spawn_observed(
        store.clone(),
        HISTORY_QUEUE,
        Some(config.metrics.history_commit()),
    );
    let retention = tokio::spawn(store::run_retention(
        store.clone(),
        config.history_retention,
        config.history_prune_interval,
        shutdown.clone(),
    ));
    let shared = Arc::new(Shared {
        hub: Hub::with_presence_log(store.clone(), min_id, config.presence_log),
        history: history.clone(),
        auth: Authenticator::new(
            store,
            config.registration,
            config.hash_cost,
            config.hash_pool,
            config.login_queue,
        ),
        throttle: throttle::LoginThrottle::new(config.login_throttle),
        flood: session::FloodControl::new(config.rate_limit),
        limits: limits::Limits::new(
            config.address_limits,
            config.max_unauthenticated,
            config.exempt_loopback,
            config.exempt.clone(),
        ),
        shutdown: shutdown.clone(),
        conn_ids: AtomicU64::new(1),
        metrics: config.metrics.clone(),
        cluster,
        config,
    });
    shared.metrics.attach(&shared);
    // Cluster mode: the subscriber, heartbeat and departures; the first subscription is
    // awaited (a while) so that the first logins do not get `fail 503`.
    let cluster_task = match &shared.cluster {
        Some(c) => {
            shared.hub.set_departures(c.departures());
            let task = tokio::spawn(c.clone().run(shared.clone(), shutdown.clone()));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !c.is_up() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if !c.is_up() {
                tracing::warn!(
                    "not subscribed to the cluster bus yet; serving, with fail 503 for what needs it"
                );
            }
            Some(task)
        }
        None => None,
    };
    // Wakes the idle sessions, once per tick at most, to read the presence notices announced
    // since they last read. On shutdown it tells the logged-in sessions through their
    // outboxes.
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.hub.presence_ticker(shared.shutdown.clone()).await;
            shared.hub.shut_down();
        })
    };
    // Ends the session of a user whose password was changed or account deleted (`user
    // passwd`/`user del`, maybe another process) from now on. Where it starts is read before
    // anything is accepted; if it cannot be, from the oldest kept, which is as correct (a
    // revocation only ends sessions that logged in before it, and none has yet).
    let revocations = {
        let after_id = shared
            .config
            .store
            .last_revocation_id()
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the last revocation; reading them all");
                0
            });
        // Longer than any login can take: a revocation seen while a login is checked is
        // remembered until that login has joined or failed.
        let keep = shared.config.login_timeout + Duration::from_secs(60);
        let shared = shared.clone();
        tokio::spawn(async move {
            let hub = &shared.hub;
            hub.watch_revocations(after_id, keep, shared.shutdown.clone())
                .await;
        })
    };
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let tracker = TaskTracker::new();
    // The HTTP listeners run on their own until the sessions are gone.
    let http_stop = CancellationToken::new();
    let http_state = http::HttpState::new(shared.clone(), tracker.clone(), limit.clone());
    let http = TaskTracker::new();
    let mut framed = Vec::new();
    for (listener, framing) in listeners {
        if framing == Framing::WebSocket {
            http.spawn(http::serve(listener, http_state.clone(), http_stop.clone()));
        } else {
            framed.push((listener, framing));
        }
    }
    http.close();
    futures::future::join_all(
        framed
            .into_iter()
            .map(|(listener, framing)| accept_loop(listener, framing, &shared, &limit, &tracker)),
    )
    .await;
    tracker.close();
    // It ends on the shutdown too, once every logged-in session has been told.
    let _ = ticker.await;
    let _ = revocations.await;
    if let Some(task) = cluster_task {
        let _ = task.await;
    }
    let sessions = tracker.len();
    tracing::info!(sessions, "shutting down");
    if tokio::time::timeout(shared.config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tracker.len(),
            "sessions still closing at the end of the grace period"
        );
    }
    http_stop.cancel();
    http.wait().await;
    let _ = retention.await;
    history.close().await;
    let stats = history.stats();
    tracing::info!(
        committed = stats.committed,
        failed = stats.failed,
        batches = stats.batches,
        largest_batch = stats.largest_batch,
        waits = stats.waits,
        "history writer closed"
    );
    Ok(())
}

/// Accepts connections on one listener until shutdown, a session task each.
async fn accept_loop(
    listener: TcpListener,
    framing: Framing,
    shared: &Arc<Shared>,
    limit: &Arc<Semaphore>,
    tracker: &TaskTracker,
) {
    let shutdown = &shared.shutdown;
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                // Admitted or refused now, before any work; a refused session only says why.
                let permit = shared.limits.admit(permit, peer.ip());
                let conn_id = shared.next_conn_id();
                let shared = shared.clone();
                // On a TLS listener the session starts with the TLS state that will drive
                // the handshake (it cannot fail with a configuration that built).
                let tls = match shared.config.tls.as_ref().map(Tls::accept).transpose() {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot start TLS; connection dropped");
                        continue;
                    }
                };
                let session =
                    session::Session::new(stream, peer, conn_id, shared, permit, framing, tls);
                tracker.spawn(session.run());
            }
            Err(e) => {
                // Typically EMFILE: out of file descriptors. Wait for sessions to end.
                tracing::warn!(error = %e, "accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
