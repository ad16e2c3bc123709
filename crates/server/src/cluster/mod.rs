//! Cluster mode: several server nodes serve one user base, with PostgreSQL as the record
//! and Redis as the bus and the presence registry (`--cluster-redis URL`). See
//! `docs/CLUSTER.md` for the data model, every message path and the failure table.
//!
//! **The seam.** `Shared::cluster` is `None` in a single process: the sessions
//! and the hub take their usual paths, with one `Option` test and nothing allocated or
//! locked more. With a cluster, the sessions ask Redis (one Lua script, `scripts.rs`) for a
//! message's id and its PUBLISH in one atomic step, and every node, the sender's too, gets
//! each message once from its subscription and fans it out to its own sessions through the
//! hub's encode-once path (`Hub::deliver_public`, `Hub::deliver_private`).
//!
//! **One subscriber connection per node** subscribes to the bus channel (public messages,
//! `joined`, `left`) and to its node channel (private messages, echoes, takeovers): Redis
//! delivers what one connection subscribed to in PUBLISH order, so every node sees the
//! public messages in id order and a sender's private echo after its earlier public one.
//!
//! **Redis unavailable.** While the subscriber is not connected (or a script fails), what
//! needs the bus (`send`, `list`, `login`) answers `fail 503` ([`BUS_UNAVAILABLE`]) and the
//! sessions stay open. The subscriber reconnects with back-off, and once subscribed
//! registers this node's users again (the `SYNC` script): a restarted Redis lost them.

mod resp;
mod scripts;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use simpletextim_proto::{ErrorCode, Failure, UserId};
use std::io;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::hub::{BusPrivate, Hub, encode_list};
use crate::outbox::KickReason;
use crate::presence::Notice;
use crate::store::HistoryPermit;

/// The reason of the `fail 503` a command gets when it needs the bus and Redis cannot be
/// reached (or this node is not subscribed).
pub const BUS_UNAVAILABLE: &str = "cluster bus unavailable, try again";

/// How often a node says it is alive, and looks for dead nodes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A node that has not said it is alive for this long is dead: one of the others removes
/// its users from the registry and announces them `left`.
pub const NODE_EXPIRY: Duration = Duration::from_secs(5);

/// A public message is refused (`fail 503`) while fewer nodes listen on the bus than said
/// they were alive within this window: one of them would miss it.
pub const LIVE_WINDOW: Duration = Duration::from_millis(2500);

/// Departures (a local session removed with `left`) waiting for the bus. When full, the
/// departure is dropped and a resynchronisation of this node's users is due instead
/// (which removes what the dropped ones would have).
const DEPARTURE_QUEUE: usize = 65_536;

/// The longest one command to Redis may take before the node answers `fail 503`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait between two attempts to subscribe again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

const IDS: &str = "stim:ids";
const PRESENCE: &str = "stim:presence";
const NODES: &str = "stim:nodes";
const BUS: &str = "stim:bus";
const NODE_CHANNEL: &str = "stim:node:";
const USERS: &str = "stim:users:";
const REAPED: &str = "stim:reaped:";
const PENDING: &str = "stim:pending:";

/// A Redis URL (`redis://[:PASSWORD@]HOST[:PORT][/DB]` or `redis+unix:///PATH`). Its
/// `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as given (with its password): only for connecting.
    fn secret(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = ClusterError;
    fn from_str(s: &str) -> Result<RedisUrl, ClusterError> {
        redis::Client::open(s).map_err(|_| ClusterError::BadUrl(redact(s)))?;
        Ok(RedisUrl(s.to_owned()))
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// `url` without the password of its user info (`redis://:secret@h:1/0` → `redis://h:1/0`,
/// `redis://u:secret@h` → `redis://u@h`), nor a query (which may carry one).
fn redact(url: &str) -> String {
    let url = url.split('?').next().unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if user.is_empty() {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{user}@{host}")
            }
        }
        None => format!("{scheme}://{rest}"),
    }
}

/// The subscriber's connection.
type Subscriber = Framed<Box<dyn resp::Io>, resp::RespCodec>;

/// What cluster mode needs to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The Redis of the bus and the presence registry.
    pub redis: RedisUrl,
    /// This node's id, unique in the cluster: 1–64 characters of `A-Z a-z 0-9 _ . -`.
    pub node_id: String,
}

impl ClusterConfig {
    /// A configuration for `redis`, with `node_id` or a random one.
    ///
    /// # Errors
    /// A node id that is empty, too long or has other characters.
    pub fn new(redis: RedisUrl, node_id: Option<String>) -> Result<ClusterConfig, ClusterError> {
        let node_id = match node_id {
            Some(id) => id,
            None => random_node_id(),
        };
        let valid = (1..=64).contains(&node_id.len())
            && node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(ClusterError::BadNodeId);
        }
        Ok(ClusterConfig { redis, node_id })
    }
}

/// A node id nobody else has: the time, the process id and the clock's nanoseconds.
fn random_node_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "n{:x}-{:x}-{:x}",
        crate::now_ms(),
        std::process::id(),
        nanos
    )
}

/// Why cluster mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Redis URL does not parse (shown without its password).
    #[error("not a Redis URL: {0}")]
    BadUrl(String),
    /// `--node-id` has characters other than `A-Z a-z 0-9 _ . -`, or is empty or too long.
    #[error("a node id is 1-64 characters of A-Z a-z 0-9 _ . -")]
    BadNodeId,
    /// Redis cannot be reached at start.
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable {
        /// Without its password.
        url: String,
        /// Redis's error (it never repeats the URL's password).
        reason: String,
    },
}

/// The hub's side of the departures queue: a session of this node removed with `left`.
#[derive(Debug, Clone)]
pub(crate) struct Departures {
    tx: mpsc::Sender<(UserId, u64)>,
    overflow: Arc<AtomicBool>,
}

impl Departures {
    /// Queues a departure for the bus; never waits. When the queue is full, it is dropped
    /// and the node registers its users again at its next heartbeat instead.
    pub(crate) fn send(&self, user_id: &UserId, conn_id: u64) {
        if self.tx.try_send((user_id.clone(), conn_id)).is_err() {
            self.overflow.store(true, Ordering::Relaxed);
        }
    }
}

/// What a private message became once the cluster numbered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routed {
    /// Published to the recipient's node (and the echo to the sender's).
    Sent,
    /// Its recipient is offline, has acknowledged delivery, or its node does not listen:
    /// the sender's node puts it in the mailbox, then calls [`Cluster::route_stored`].
    Store { id: u64, ts: u64 },
}

/// Cluster mode's state on one node: its Redis connections and scripts.
pub struct Cluster {
    node: String,
    client: redis::Client,
    conn: ConnectionManager,
    scripts: scripts::Scripts,
    /// Subscribed: the bus is usable. While false, commands that need it get `fail 503`.
    up: AtomicBool,
    /// This node's users must be registered again (a departure could not be sent).
    resync: Arc<AtomicBool>,
    departures_rx: std::sync::Mutex<Option<mpsc::Receiver<(UserId, u64)>>>,
    departures: Departures,
    /// Times the subscription was lost (Redis gone, or the subscriber cut off by Redis's
    /// pub/sub output buffer limit).
    bus_lost: AtomicU64,
    /// Node channel name of this node.
    channel: String,
    /// Held (read) by a login from its registration in Redis until it has joined the hub,
    /// and (write) by the resynchronisation of this node's users, so that the latter never
    /// sees a user registered in Redis and not yet in the hub.
    registering: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn unavailable() -> Failure {
    Failure::new(ErrorCode::Unavailable, BUS_UNAVAILABLE)
}

/// A string as JSON.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A ref (already JSON) as a JSON string member, or `null`.
fn json_ref(r: Option<&Bytes>) -> String {
    match r {
        Some(r) => json_str(&String::from_utf8_lossy(r)),
        None => "null".to_owned(),
    }
}

impl Cluster {
    /// Connects to Redis (the command connection; the subscriber connects in `Cluster::run`).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn connect(config: &ClusterConfig) -> Result<Cluster, ClusterError> {
        let unreachable = |e: &dyn std::fmt::Display| ClusterError::Unreachable {
            url: config.redis.to_string(),
            reason: e.to_string(),
        };
        let client = redis::Client::open(config.redis.secret())
            .map_err(|_| ClusterError::BadUrl(config.redis.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let connecting = ConnectionManager::new_with_config(client.clone(), manager_config);
        let mut conn = tokio::time::timeout(COMMAND_TIMEOUT * 3, connecting)
            .await
            .map_err(|e| unreachable(&e))?
            .map_err(|e| unreachable(&e))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unreachable(&e))?;
        let (tx, rx) = mpsc::channel(DEPARTURE_QUEUE);
        let resync = Arc::new(AtomicBool::new(false));
        Ok(Cluster {
            channel: format!("{NODE_CHANNEL}{}", config.node_id),
            node: config.node_id.clone(),
            client,
            conn,
            scripts: scripts::Scripts::new(),
            up: AtomicBool::new(false),
            departures: Departures {
                tx,
                overflow: resync.clone(),
            },
            resync,
            departures_rx: std::sync::Mutex::new(Some(rx)),
            bus_lost: AtomicU64::new(0),
            registering: tokio::sync::RwLock::new(()),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Whether the bus is usable now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Times this node lost its subscription since it started.
    pub fn bus_lost(&self) -> u64 {
        self.bus_lost.load(Ordering::Relaxed)
    }

    /// The departures queue the hub sends into.
    pub(crate) fn departures(&self) -> Departures {
        self.departures.clone()
    }

    /// Runs a script with a timeout; `fail 503` on any error.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Failure> {
        if !self.is_up() {
            return Err(unavailable());
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, what, "cluster bus command failed");
                Err(unavailable())
            }
            Err(_) => {
                tracing::warn!(what, "cluster bus command timed out");
                Err(unavailable())
            }
        }
    }

    /// Numbers and publishes a public message; every node (this one too) delivers it when
    /// it comes back on the subscription. Returns its id.
    pub(crate) async fn publish(
        &self,
        floor: u64,
        from: &UserId,
        conn: u64,
        text: &str,
        r#ref: Option<&Bytes>,
    ) -> Result<u64, Failure> {
        let body = format!(
            r#""k":"p","from":{},"text":{},"node":{},"conn":{conn},"ref":{}"#,
            json_str(from.as_str()),
            json_str(text),
            json_str(&self.node),
            json_ref(r#ref),
        );
        let mut inv = self.scripts.public.key(IDS);
        inv.key(NODES)
            .arg(floor)
            .arg(BUS)
            .arg(body)
            .arg(LIVE_WINDOW.as_millis() as u64);
        let (id, _ts): (u64, u64) = self.invoke("publish", &inv).await?;
        if id == 0 {
            tracing::debug!("public message refused: a node is not subscribed to the bus");
            return Err(unavailable());
        }
        Ok(id)
    }

    /// Numbers a private message and, if its recipient is online without acks on a node
    /// that listens, publishes it there (and the echo here).
    pub(crate) async fn send_private(
        &self,
        floor: u64,
        from: &UserId,
        conn: u64,
        to: &UserId,
        text: &str,
        r#ref: Option<&Bytes>,
    ) -> Result<Routed, Failure> {
        let body = format!(
            r#""k":"m","from":{},"text":{},"conn":{conn},"ref":{}"#,
            json_str(from.as_str()),
            json_str(text),
            json_ref(r#ref),
        );
        let mut inv = self.scripts.private.key(IDS);
        inv.key(PRESENCE)
            .arg(floor)
            .arg(to.key())
            .arg(&self.node)
            .arg(body)
            .arg(NODE_CHANNEL)
            .arg(PENDING);
        let (id, ts, sent): (u64, u64, u8) = self.invoke("private", &inv).await?;
        Ok(if sent == 1 {
            Routed::Sent
        } else {
            Routed::Store { id, ts }
        })
    }

    /// A private message committed to `to`'s mailbox: delivered from there by `to`'s node
    /// if `to` is online now, and echoed to its sender here.
    ///
    /// # Errors
    /// The bus is unavailable: the caller echoes the message itself (it is kept).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn route_stored(
        &self,
        from: &UserId,
        conn: u64,
        to: &UserId,
        text: &str,
        (id, ts): (u64, u64),
        r#ref: Option<&Bytes>,
    ) -> Result<(), Failure> {
        let payload = format!(
            r#"{{"k":"m","id":{id},"ts":{ts},"to":{},"from":{},"text":{},"conn":{conn},"ref":{}"#,
            json_str(to.as_str()),
            json_str(from.as_str()),
            json_str(text),
            json_ref(r#ref),
        );
        let mut inv = self.scripts.route_stored.key(PRESENCE);
        inv.arg(to.key())
            .arg(&self.node)
            .arg(payload)
            .arg(NODE_CHANNEL)
            .arg(PENDING);
        let _: i64 = self.invoke("route_stored", &inv).await?;
        Ok(())
    }

    /// Registers a login in the presence registry. Returns whether the user is new to the
    /// cluster (`joined` published; on this node the hub announces it) rather than taking
    /// over a session of another node (which is told to end it, with no `left`/`joined`).
    ///
    /// The guard returned is to be held until the session has joined the hub.
    pub(crate) async fn join(
        &self,
        user: &UserId,
        conn: u64,
        acks: bool,
    ) -> Result<(bool, tokio::sync::RwLockReadGuard<'_, ()>), Failure> {
        let guard = self.registering.read().await;
        let entry = format!("{}|{conn}|{}|{}", self.node, user.as_str(), u8::from(acks));
        let joined = format!(
            r#"{{"k":"j","user":{},"node":{}}}"#,
            json_str(user.as_str()),
            json_str(&self.node)
        );
        let mut inv = self.scripts.join.key(PRESENCE);
        inv.arg(user.key())
            .arg(entry)
            .arg(&self.node)
            .arg(joined)
            .arg(BUS)
            .arg(NODE_CHANNEL)
            .arg(USERS);
        let outcome: i64 = self.invoke("join", &inv).await?;
        Ok((outcome != 0, guard))
    }

    /// The users online on every node, sorted case-insensitively, as the JSON array of a
    /// `list` reply. Read from the registry, never under the hub's lock.
    pub(crate) async fn list(&self) -> Result<Bytes, Failure> {
        if !self.is_up() {
            return Err(unavailable());
        }
        let mut conn = self.conn.clone();
        let mut hvals = redis::cmd("HVALS");
        hvals.arg(PRESENCE);
        let read = hvals.query_async(&mut conn);
        let entries: Vec<String> = match tokio::time::timeout(COMMAND_TIMEOUT, read).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the presence registry");
                return Err(unavailable());
            }
            Err(_) => return Err(unavailable()),
        };
        let users: BTreeSet<UserId> = entries
            .iter()
            .filter_map(|e| e.split('|').nth(2))
            .filter_map(|s| UserId::new(s).ok())
            .collect();
        Ok(encode_list(&users))
    }

    /// Runs the node's cluster tasks until `shutdown`: the subscriber, the heartbeat (and
    /// reaper), and the departures.
    pub(crate) async fn run(self: Arc<Cluster>, shared: Arc<Shared>, shutdown: CancellationToken) {
        let rx = self
            .departures_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let departures = async {
            if let Some(rx) = rx {
                self.run_departures(rx, &shutdown).await;
            }
        };
        tokio::join!(
            self.run_subscriber(&shared, &shutdown),
            self.run_heartbeat(&shared.hub, &shutdown),
            departures,
        );
        self.retire().await;
    }

    /// At shutdown: removes this node and its users from the registry, with `left` for
    /// each to the other nodes (rather than after [`NODE_EXPIRY`], by reaping). Bounded by
    /// [`COMMAND_TIMEOUT`]; if Redis cannot be reached, the others reap this node instead.
    async fn retire(&self) {
        let mut inv = self.scripts.retire.key(PRESENCE);
        inv.key(NODES)
            .arg(&self.node)
            .arg(BUS)
            .arg(USERS)
            .arg(PENDING);
        let mut c = self.conn.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, inv.invoke_async::<i64>(&mut c)).await {
            Ok(Ok(_)) => tracing::info!(node = %self.node, "left the cluster"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot leave the cluster; the others will reap this node")
            }
            Err(_) => {
                tracing::warn!("leaving the cluster timed out; the others will reap this node")
            }
        }
    }

    /// Sends this node's departures to the registry, in order.
    async fn run_departures(
        &self,
        mut rx: mpsc::Receiver<(UserId, u64)>,
        shutdown: &CancellationToken,
    ) {
        loop {
            let (user, conn) = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                d = rx.recv() => match d {
                    Some(d) => d,
                    None => return,
                },
            };
            let left = format!(
                r#"{{"k":"l","user":{},"node":{}}}"#,
                json_str(user.as_str()),
                json_str(&self.node)
            );
            let mut inv = self.scripts.leave.key(PRESENCE);
            inv.arg(user.key())
                .arg(&self.node)
                .arg(conn)
                .arg(left)
                .arg(BUS)
                .arg(USERS);
            let mut c = self.conn.clone();
            let done = tokio::time::timeout(COMMAND_TIMEOUT, inv.invoke_async::<i64>(&mut c)).await;
            if !matches!(done, Ok(Ok(_))) {
                // Removed from the registry by the next resynchronisation instead.
                self.resync.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Says this node is alive every [`HEARTBEAT`] and reaps the dead nodes; registers this
    /// node's users again when a departure could not be sent; ends every local session if
    /// this node was itself reaped while cut off (its users were announced gone).
    async fn run_heartbeat(&self, hub: &Hub, shutdown: &CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut first = true;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut inv = self.scripts.heartbeat.key(PRESENCE);
            inv.key(NODES)
                .arg(&self.node)
                .arg(NODE_EXPIRY.as_millis() as u64)
                .arg(BUS)
                .arg(USERS)
                .arg(REAPED)
                .arg(PENDING);
            let mut c = self.conn.clone();
            match tokio::time::timeout(COMMAND_TIMEOUT, inv.invoke_async::<i64>(&mut c)).await {
                Ok(Ok(reaped)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("cluster heartbeat sent again");
                    }
                    // The first heartbeat of this process may find the mark of an earlier
                    // process of the same node id that was reaped: nothing of it is here.
                    if reaped == 1 && !std::mem::replace(&mut first, false) {
                        tracing::warn!(
                            "this node was declared dead by the cluster while cut off; ending its sessions"
                        );
                        hub.kick_all(KickReason::Shutdown);
                    }
                }
                Ok(Err(e)) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "cannot send the cluster heartbeat");
                    }
                }
                Err(_) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!("cluster heartbeat timed out");
                    }
                }
            }
            if self.is_up() && self.resync.swap(false, Ordering::Relaxed) {
                if let Err(e) = self.sync(hub).await {
                    tracing::warn!(error = %e, "cannot register this node's users again");
                    self.resync.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Registers this node's users in the registry again, and ends the local sessions of
    /// users registered on another node meanwhile.
    async fn sync(&self, hub: &Hub) -> Result<(), redis::RedisError> {
        // No login registers meanwhile (each holds the read side from its registration to
        // its join of the hub): the snapshot and the registry agree.
        let _exclusive = self.registering.write().await;
        let members = hub.local_members();
        let max_conn = 1u64 << 53;
        let mut inv = self.scripts.sync.key(PRESENCE);
        inv.arg(&self.node).arg(max_conn).arg(USERS).arg(BUS);
        let mut conns = HashMap::with_capacity(members.len());
        for (user, conn, acks) in &members {
            let entry = format!("{}|{conn}|{}|{}", self.node, user.as_str(), u8::from(*acks));
            inv.arg(user.key()).arg(entry);
            conns.insert(user.key(), *conn);
        }
        let mut c = self.conn.clone();
        let taken: Vec<String> = inv.invoke_async(&mut c).await?;
        for key in taken {
            if let Some(conn) = conns.get(&key) {
                hub.take_over_remote(&key, *conn);
            }
        }
        Ok(())
    }

    /// Delivers the mailboxes of this node's users who were sent private messages while
    /// this node did not listen (its pending set): they are online, and must not wait for
    /// their next login. Called once subscribed again; a message of theirs committed
    /// after this is routed here live by its sender's re-check.
    async fn deliver_pending(&self, shared: &Shared) {
        let inv = self
            .scripts
            .take_pending
            .key(format!("{PENDING}{}", self.node));
        let mut c = self.conn.clone();
        let users: Vec<String> =
            match tokio::time::timeout(COMMAND_TIMEOUT, inv.invoke_async(&mut c)).await {
                Ok(Ok(users)) => users,
                _ => {
                    tracing::warn!("cannot read the users with messages pending for this node");
                    return;
                }
            };
        if users.is_empty() {
            return;
        }
        tracing::info!(
            users = users.len(),
            "delivering the mailboxes of users sent messages while this node did not listen"
        );
        let members: HashMap<String, UserId> = shared
            .hub
            .local_members()
            .into_iter()
            .map(|(u, _, _)| (u.key(), u))
            .collect();
        for key in users {
            let Some(to) = members.get(&key) else {
                continue;
            };
            let pending = match shared.config.store.pending(key.clone()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(user = %to, error = %e, "cannot read a mailbox to deliver");
                    continue;
                }
            };
            for m in pending {
                let p = BusPrivate {
                    from: m.user_id,
                    to: to.clone(),
                    text: m.message,
                    id: m.id,
                    ts: m.ts,
                    deliver: true,
                    stored: true,
                    echo: None,
                };
                shared.hub.deliver_private(p, None);
            }
        }
    }

    /// Subscribes, registers this node's users, then hands what arrives to the hub, until
    /// the subscription is lost; then again, with back-off, until `shutdown`.
    async fn run_subscriber(&self, shared: &Shared, shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut failing = false;
        loop {
            let subscribed = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                s = self.subscribe() => s,
            };
            match subscribed {
                Ok(mut sub) => {
                    match tokio::time::timeout(COMMAND_TIMEOUT, self.sync(&shared.hub)).await {
                        Ok(Ok(())) => {
                            self.up.store(true, Ordering::Release);
                            self.deliver_pending(shared).await;
                            failing = false;
                            backoff = Duration::from_millis(50);
                            tracing::info!(node = %self.node, "cluster bus subscribed");
                            self.listen(shared, &mut sub, shutdown).await;
                            self.up.store(false, Ordering::Release);
                            if shutdown.is_cancelled() {
                                return;
                            }
                            self.bus_lost.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("cluster bus subscription lost; subscribing again");
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "cannot register this node's users");
                        }
                        Err(_) => tracing::warn!("registering this node's users timed out"),
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "cannot subscribe to the cluster bus; retrying");
                    }
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A new subscriber connection (of its own, read one reply at a time: see `resp.rs`),
    /// authenticated like the command connection and subscribed to the bus and this node's
    /// channel.
    async fn subscribe(&self) -> io::Result<Subscriber> {
        match tokio::time::timeout(COMMAND_TIMEOUT, self.try_subscribe()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "subscribing timed out",
            )),
        }
    }

    async fn try_subscribe(&self) -> io::Result<Subscriber> {
        let info = self.client.get_connection_info();
        let socket: Box<dyn resp::Io> = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            redis::ConnectionAddr::Unix(path) => {
                Box::new(tokio::net::UnixStream::connect(path).await?)
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "only plain TCP and unix sockets are supported for the bus",
                ));
            }
        };
        let mut framed = Framed::new(socket, resp::RespCodec);
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            framed.send(auth.get_packed_command()).await?;
            match framed.next().await {
                Some(Ok(resp::Resp::Simple(_))) => {}
                // Redis's error text never repeats the password.
                Some(Ok(resp::Resp::Error(e))) => return Err(io::Error::other(e)),
                Some(Err(e)) => return Err(e),
                _ => return Err(io::Error::other("no answer to AUTH")),
            }
        }
        // Named, for operators (`CLIENT LIST`) and tests.
        let mut name = redis::cmd("CLIENT");
        name.arg("SETNAME").arg(format!("stim-sub:{}", self.node));
        framed.send(name.get_packed_command()).await?;
        match framed.next().await {
            Some(Ok(resp::Resp::Simple(_))) => {}
            Some(Ok(resp::Resp::Error(e))) => return Err(io::Error::other(e)),
            Some(Err(e)) => return Err(e),
            _ => return Err(io::Error::other("no answer to CLIENT SETNAME")),
        }
        let mut sub = redis::cmd("SUBSCRIBE");
        sub.arg(BUS).arg(&self.channel);
        framed.send(sub.get_packed_command()).await?;
        for _ in 0..2 {
            match framed.next().await {
                Some(Ok(resp::Resp::Array(Some(items))))
                    if items.first().and_then(resp::Resp::bytes) == Some(b"subscribe") => {}
                Some(Ok(resp::Resp::Error(e))) => return Err(io::Error::other(e)),
                Some(Err(e)) => return Err(e),
                other => {
                    return Err(io::Error::other(format!(
                        "unexpected answer to SUBSCRIBE: {other:?}"
                    )));
                }
            }
        }
        Ok(framed)
    }

    /// Hands every message of the subscription to the hub, one at a time, until it ends
    /// (the connection closed, an error, or a ping unanswered for [`COMMAND_TIMEOUT`]) or
    /// `shutdown`.
    async fn listen(&self, shared: &Shared, sub: &mut Subscriber, shutdown: &CancellationToken) {
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping_sent: Option<tokio::time::Instant> = None;
        let ping_cmd = redis::cmd("PING").get_packed_command();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                reply = sub.next() => match reply {
                    Some(Ok(resp::Resp::Array(Some(items)))) => {
                        match items.first().and_then(resp::Resp::bytes) {
                            Some(b"message") => {
                                if let Some(payload) = items.get(2).and_then(resp::Resp::bytes) {
                                    self.handle(shared, payload).await;
                                }
                            }
                            Some(b"pong") => ping_sent = None,
                            _ => {}
                        }
                    }
                    Some(Ok(resp::Resp::Error(e))) => {
                        tracing::warn!(error = %e, "error on the cluster bus subscription");
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cluster bus subscription failed");
                        return;
                    }
                    None => return,
                },
                _ = ping.tick() => {
                    match ping_sent {
                        Some(at) if at.elapsed() > COMMAND_TIMEOUT => {
                            tracing::warn!("cluster bus subscription unanswered");
                            return;
                        }
                        Some(_) => {}
                        None => {
                            if sub.send(ping_cmd.clone()).await.is_err() {
                                return;
                            }
                            ping_sent = Some(tokio::time::Instant::now());
                        }
                    }
                }
            }
        }
    }

    /// One message of the bus, as this node's subscriber received it.
    async fn handle(&self, shared: &Shared, payload: &[u8]) {
        let msg: BusMessage = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "unreadable message on the cluster bus");
                return;
            }
        };
        let hub = &shared.hub;
        let user = |s: &Option<String>| s.as_deref().and_then(|s| UserId::new(s).ok());
        match msg.k.as_str() {
            "p" => {
                let (Some(from), Some(text)) = (user(&msg.from), msg.text) else {
                    return;
                };
                let ours = msg.node.as_deref() == Some(self.node.as_str());
                let (echo, history) = if ours {
                    let r = msg.r#ref.map(Bytes::from);
                    (Some((msg.conn, r)), self.history_slot(shared).await)
                } else {
                    (None, None)
                };
                hub.deliver_public(&from, &text, (msg.id, msg.ts), echo, history);
            }
            "m" => {
                let (Some(from), Some(to), Some(text)) = (user(&msg.from), user(&msg.to), msg.text)
                else {
                    return;
                };
                let history = match msg.hist {
                    true => self.history_slot(shared).await,
                    false => None,
                };
                let echo = msg.echo.then(|| (msg.conn, msg.r#ref.map(Bytes::from)));
                let p = BusPrivate {
                    from,
                    to,
                    text,
                    id: msg.id,
                    ts: msg.ts,
                    deliver: msg.deliver,
                    stored: msg.stored,
                    echo,
                };
                hub.deliver_private(p, history);
            }
            "j" | "l" => {
                // This node announced its own users' comings and goings itself.
                if msg.node.as_deref() == Some(self.node.as_str()) {
                    return;
                }
                let Some(u) = user(&msg.user) else { return };
                let notice = match msg.k.as_str() {
                    "j" => Notice::joined(&u),
                    _ => Notice::left(&u),
                };
                hub.remote_notice(notice);
            }
            "x" => {
                if let Some(key) = &msg.user {
                    hub.take_over_remote(key, msg.conn);
                }
            }
            other => tracing::error!(kind = other, "unknown message on the cluster bus"),
        }
    }

    /// A slot of the history writer for a message this node keeps; waits while the writer
    /// is full (backpressure on the subscriber); `None` once it is closed (shutdown).
    async fn history_slot(&self, shared: &Shared) -> Option<HistoryPermit> {
        shared.history.reserve().await.ok()
    }
}

/// A message of the bus (every kind in one shape; absent members take their defaults).
#[derive(Debug, Deserialize)]
struct BusMessage {
    /// `p` public, `m` private (delivery and/or echo), `j` joined, `l` left, `x` takeover.
    k: String,
    #[serde(default)]
    id: u64,
    #[serde(default)]
    ts: u64,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    user: Option<String>,
    /// The node it comes from (`p`, `j`, `l`); `""` from the reaper.
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    conn: u64,
    /// The sender's ref, as the JSON text it was sent as.
    #[serde(default)]
    r#ref: Option<String>,
    #[serde(default)]
    deliver: bool,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    stored: bool,
    #[serde(default)]
    hist: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_url_is_shown_without_its_password() {
        assert_eq!(redact("redis://:s3cret@db:6379/0"), "redis://db:6379/0");
        assert_eq!(redact("redis://bob:s3cret@db:6379"), "redis://bob@db:6379");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://h/0?password=x"), "redis://h/0");
        let url: RedisUrl = "redis://u:p4ss@h:1/2".parse().expect("a URL");
        assert!(!format!("{url} {url:?}").contains("p4ss"));
    }

    #[test]
    fn a_node_id_is_checked_and_random_by_default() {
        let url: RedisUrl = "redis://127.0.0.1".parse().expect("a URL");
        assert!(ClusterConfig::new(url.clone(), Some("a|b".into())).is_err());
        assert!(ClusterConfig::new(url.clone(), Some(String::new())).is_err());
        assert_eq!(
            ClusterConfig::new(url.clone(), Some("node-1".into()))
                .expect("valid")
                .node_id,
            "node-1"
        );
        let a = ClusterConfig::new(url, None).expect("valid").node_id;
        assert!(a.starts_with('n'), "{a}");
    }
}
