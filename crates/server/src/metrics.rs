//! Prometheus metrics of one server: [`Metrics`], an explicit registry per server (never a
//! process-wide recorder: a test binary runs many servers in one process), rendered as
//! OpenMetrics text ([`Metrics::render`], [`CONTENT_TYPE`]) and served on `GET /metrics`
//! ([`serve`], [`routes`], [`metrics_handler`], [`exposition`]).
//!
//! **Hot-path rule.** Counting must not slow the fan-out or the private path. So:
//! - what the hub counts (messages accepted, deliveries) are plain integers it adds to under
//!   the lock it already holds, once per message (a fan-out to N adds N once, never one
//!   atomic per recipient), read at scrape time;
//! - what is a level (users online, outbox bytes, the history writer's and the login
//!   queue's depth) is read at scrape time from the state that already holds it. The outbox
//!   bytes are summed over the members under the hub's lock: one relaxed load per member
//!   (each outbox publishes its size with a plain store, made under its own lock anyway),
//!   no lock of an outbox, no allocation — about as long as one public message's fan-out
//!   holds the same lock, once per scrape;
//! - what happens once per connection (opened, logged in, ended, a login's result) is a
//!   relaxed atomic of a handle made at start, so no label lookup or lock either;
//! - the history commit histogram (a short lock inside `prometheus-client`) is observed by
//!   the history writer's task once per write, off the live path.
//!
//! What the metrics reveal is aggregate: counts, sizes and durations, never a user id, an
//! address or a message (docs/SECURITY.md).

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::wire::Framing;

/// The `Content-Type` of [`Metrics::render`]'s text: OpenMetrics 1.0.0, which Prometheus
/// asks for first when it scrapes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric's name starts with this and `_`.
pub const PREFIX: &str = "simpletextim";

/// The upper bounds of the history commit histogram, in seconds: 100 µs × 2ⁿ up to about
/// 1.6 s (15 buckets), so that both a commit of a few rows without fsync (~100 µs) and a
/// large batch behind a checkpoint (~1 s) fall in a bucket of their own.
fn commit_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_1, 2.0, 15)
}

/// How a client reaches the server: the `transport` label of
/// `simpletextim_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The protocol's length-delimited frames over TCP (or TLS).
    Tcp,
    /// One JSON object per line (`--listen-lines`).
    Lines,
    /// JSON text messages over a WebSocket (`GET /ws` of the HTTP listener).
    WebSocket,
}

impl Transport {
    /// Every transport, in the order of their label values in the exposition.
    pub const ALL: [Transport; 3] = [Transport::Tcp, Transport::Lines, Transport::WebSocket];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Lines => "lines",
            Transport::WebSocket => "websocket",
        }
    }
}

impl From<Framing> for Transport {
    fn from(framing: Framing) -> Transport {
        match framing {
            Framing::LengthDelimited => Transport::Tcp,
            Framing::Lines => Transport::Lines,
            Framing::WebSocket => Transport::WebSocket,
        }
    }
}

/// A connection's login state: the `state` label of `simpletextim_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Unauthenticated,
    LoggedIn,
}

impl ConnState {
    const ALL: [ConnState; 2] = [ConnState::Unauthenticated, ConnState::LoggedIn];

    fn label(self) -> &'static str {
        match self {
            ConnState::Unauthenticated => "unauthenticated",
            ConnState::LoggedIn => "logged_in",
        }
    }
}

/// How a login ended: the `result` label of `simpletextim_logins_total`, one per `login`
/// command answered with the ack or with a `fail` (a login on a session already logged in,
/// one that timed out or whose client left while it was checked is not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    /// Logged in (a first login that created the account included: accounts created are
    /// `simpletextim_accounts_created_total`).
    Ok,
    /// Wrong password or unknown user (`fail 401`).
    Failed,
    /// Too many failed logins or new accounts from the address or for the account
    /// (`fail 429`, no password checked).
    Throttled,
    /// The server could not take it: login queue full, too many logins in progress from
    /// the address, the store failing (`fail 503`), or an account changed while it was
    /// checked.
    Refused,
}

impl LoginResult {
    const ALL: [LoginResult; 4] = [
        LoginResult::Ok,
        LoginResult::Failed,
        LoginResult::Throttled,
        LoginResult::Refused,
    ];

    fn label(self) -> &'static str {
        match self {
            LoginResult::Ok => "ok",
            LoginResult::Failed => "failed",
            LoginResult::Throttled => "throttled",
            LoginResult::Refused => "refused",
        }
    }

    /// The result of a login answered with `fail` and this code.
    pub(crate) fn of_failure(code: simpletextim_proto::ErrorCode) -> LoginResult {
        use simpletextim_proto::ErrorCode;
        match code {
            ErrorCode::Unauthorized => LoginResult::Failed,
            ErrorCode::RateLimited => LoginResult::Throttled,
            _ => LoginResult::Refused,
        }
    }
}

/// Why a session ended: the `reason` label of `simpletextim_sessions_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The client sent `exit`.
    Exit,
    /// The client closed the connection.
    Eof,
    /// Three wrong passwords.
    TooManyFailedLogins,
    /// A frame over the size limit.
    FrameTooLarge,
    /// A socket or TLS error, or a goodbye the peer did not take.
    Error,
    /// A newer login of the same user.
    TakenOver,
    /// Its outbox stayed full (or too many messages not acked).
    SlowConsumer,
    /// The server shut down.
    Shutdown,
    /// No login within the login timeout.
    LoginTimeout,
    /// The socket took nothing for the write timeout.
    WriteStalled,
    /// Refused at accept by a connection limit.
    Refused,
    /// The password was changed or the account deleted.
    Revoked,
    /// A WebSocket client broke the WebSocket protocol (close 1002).
    ProtocolError,
    /// A WebSocket client answered no ping.
    Unresponsive,
}

impl EndReason {
    const ALL: [EndReason; 14] = [
        EndReason::Exit,
        EndReason::Eof,
        EndReason::TooManyFailedLogins,
        EndReason::FrameTooLarge,
        EndReason::Error,
        EndReason::TakenOver,
        EndReason::SlowConsumer,
        EndReason::Shutdown,
        EndReason::LoginTimeout,
        EndReason::WriteStalled,
        EndReason::Refused,
        EndReason::Revoked,
        EndReason::ProtocolError,
        EndReason::Unresponsive,
    ];

    fn label(self) -> &'static str {
        match self {
            EndReason::Exit => "exit",
            EndReason::Eof => "eof",
            EndReason::TooManyFailedLogins => "too_many_failed_logins",
            EndReason::FrameTooLarge => "frame_too_large",
            EndReason::Error => "error",
            EndReason::TakenOver => "taken_over",
            EndReason::SlowConsumer => "slow_consumer",
            EndReason::Shutdown => "shutdown",
            EndReason::LoginTimeout => "login_timeout",
            EndReason::WriteStalled => "write_stalled",
            EndReason::Refused => "refused",
            EndReason::Revoked => "revoked",
            EndReason::ProtocolError => "protocol_error",
            EndReason::Unresponsive => "unresponsive",
        }
    }
}

/// A label set of one label.
type Label1 = [(&'static str, &'static str); 1];
/// A label set of two labels.
type Label2 = [(&'static str, &'static str); 2];

/// The metrics of one server. Cheap to clone (a handle); every clone counts into and
/// renders the same registry.
///
/// Give it to the server through [`crate::Config::metrics`] and keep a clone to serve
/// ([`serve`]) or [`Metrics::render`]. The values the server's state holds (users online,
/// messages, deliveries, outbox bytes, queue depths) are read from the server that runs
/// with it, at scrape time; before it starts and after it ends they are zero.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    /// By [`Transport`], then [`ConnState`].
    connections: [[Gauge; 2]; 3],
    /// By [`LoginResult`].
    logins: [Counter; 4],
    /// By [`EndReason`].
    sessions_ended: [Counter; 14],
    history_commit: Histogram,
    server: Arc<ServerCollector>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero, every label value present.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);

        let connections_family = Family::<Label2, Gauge>::default();
        let connections = Transport::ALL.map(|t| {
            ConnState::ALL.map(|s| {
                connections_family
                    .get_or_create(&[("transport", t.label()), ("state", s.label())])
                    .clone()
            })
        });
        registry.register(
            "connections",
            "Client connections open, by transport and login state",
            connections_family,
        );

        let logins_family = Family::<Label1, Counter>::default();
        let logins = LoginResult::ALL.map(|r| {
            logins_family
                .get_or_create(&[("result", r.label())])
                .clone()
        });
        registry.register(
            "logins",
            "Logins answered, by result: ok, failed (401), throttled (429), refused (503)",
            logins_family,
        );

        let ended_family = Family::<Label1, Counter>::default();
        let sessions_ended =
            EndReason::ALL.map(|r| ended_family.get_or_create(&[("reason", r.label())]).clone());
        registry.register(
            "sessions_ended",
            "Connections ended, by reason (slow_consumer: cut off for an outbox that stayed full)",
            ended_family,
        );

        let history_commit = Histogram::new(commit_buckets());
        registry.register_with_unit(
            "history_commit",
            "Time from the history writer's write request to the store's commit of that batch \
             (waiting behind the store's other requests included)",
            Unit::Seconds,
            history_commit.clone(),
        );

        let server = Arc::new(ServerCollector::default());
        registry.register_collector(Box::new(server.clone()));

        Metrics {
            inner: Arc::new(Inner {
                registry,
                connections,
                logins,
                sessions_ended,
                history_commit,
                server,
            }),
        }
    }

    /// The exposition of every metric, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a `String` cannot fail, nor can the collector's encoding.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }

    /// Reads the server's state at scrape time from now on (the server that runs with
    /// these metrics; the last one if several did).
    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        *self.inner.server.lock() = Arc::downgrade(shared);
    }

    /// The histogram the history writer observes its commits into.
    pub(crate) fn history_commit(&self) -> Histogram {
        self.inner.history_commit.clone()
    }

    fn connections(&self, transport: Transport, state: ConnState) -> &Gauge {
        &self.inner.connections[transport as usize][state as usize]
    }

    /// A connection was accepted (not logged in yet).
    pub(crate) fn connection_opened(&self, transport: Transport) {
        self.connections(transport, ConnState::Unauthenticated)
            .inc();
    }

    /// A connection logged in.
    pub(crate) fn connection_logged_in(&self, transport: Transport) {
        self.connections(transport, ConnState::Unauthenticated)
            .dec();
        self.connections(transport, ConnState::LoggedIn).inc();
    }

    /// A connection closed, logged in or not.
    pub(crate) fn connection_closed(&self, transport: Transport, logged_in: bool) {
        let state = match logged_in {
            true => ConnState::LoggedIn,
            false => ConnState::Unauthenticated,
        };
        self.connections(transport, state).dec();
    }

    /// A login was answered.
    pub(crate) fn login(&self, result: LoginResult) {
        self.inner.logins[result as usize].inc();
    }

    /// A session ended.
    pub(crate) fn session_ended(&self, reason: EndReason) {
        self.inner.sessions_ended[reason as usize].inc();
    }
}

/// The metrics read from the server's state at scrape time.
#[derive(Default)]
struct ServerCollector {
    shared: Mutex<Weak<Shared>>,
}

impl fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCollector").finish_non_exhaustive()
    }
}

impl ServerCollector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Weak<Shared>> {
        // Only assigned and cloned under it: never left half changed.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // Before the server has started (a scrape can come first) and after it ended:
        // nothing online, nothing queued, nothing counted, so every series is always there.
        let shared = self.lock().upgrade();
        let (hub, history, (login_queue, created)) = match &shared {
            Some(shared) => (
                shared.hub.stats(),
                shared.history.stats(),
                (shared.auth.queued() as u64, shared.auth.accounts_created()),
            ),
            None => Default::default(),
        };
        gauge(
            &mut encoder,
            "users_online",
            "Users logged in now.",
            None,
            hub.online,
        )?;
        {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "messages",
                "Chat messages accepted (echoed to their sender), by kind.",
                None,
                counter.metric_type(),
            )?;
            for (kind, value) in [("public", hub.public), ("private", hub.private)] {
                let labels = [("kind", kind)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut encoder,
            "deliveries",
            "Copies of chat messages queued in recipients' outboxes (a public message to N users online counts N; a private message 1, not its sender's echo).",
            hub.delivered,
        )?;
        gauge(
            &mut encoder,
            "outbox",
            "Bytes queued in the outboxes of the users logged in, not yet taken by their sessions.",
            Some(&Unit::Bytes),
            hub.outbox_bytes,
        )?;
        gauge(
            &mut encoder,
            "history_queue_depth",
            "Messages handed to the history writer and not yet written.",
            None,
            history.queued,
        )?;
        counter(
            &mut encoder,
            "history_messages_committed",
            "Messages the history writer committed to the store.",
            history.committed,
        )?;
        counter(
            &mut encoder,
            "history_messages_failed",
            "Messages whose history write failed (their history is lost).",
            history.failed,
        )?;
        gauge(
            &mut encoder,
            "login_queue_depth",
            "Logins waiting for their password check (Argon2 hashing) or being checked.",
            None,
            login_queue,
        )?;
        counter(
            &mut encoder,
            "accounts_created",
            "Accounts created by a first login (open registration).",
            created,
        )?;
        // Cluster mode only (a single process shows none of these).
        if let Some(cluster) = shared.as_ref().and_then(|s| s.cluster.as_ref()) {
            gauge(
                &mut encoder,
                "cluster_bus_up",
                "1 while this node is subscribed to the cluster bus (Redis), else 0: then what needs the bus gets fail 503.",
                None,
                u64::from(cluster.is_up()),
            )?;
            counter(
                &mut encoder,
                "cluster_bus_lost",
                "Times this node lost its subscription to the cluster bus (Redis gone or restarted, or the subscriber cut off by Redis's pub/sub output buffer limit) and subscribed again.",
                cluster.bus_lost(),
            )?;
        }
        Ok(())
    }
}

/// Encodes one gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), fmt::Error> {
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    let metric = encoder.encode_descriptor(name, help, unit, gauge.metric_type())?;
    gauge.encode(metric)
}

/// Encodes one counter without labels.
fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric)
}

/// The HTTP response to a scrape: `200`, [`CONTENT_TYPE`], [`Metrics::render`]'s text. For
/// a handler of another router (whatever its state), e.g. the main HTTP listener's:
/// `get(move || async move { metrics::exposition(&metrics) })`.
pub fn exposition(metrics: &Metrics) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        metrics.render(),
    )
        .into_response()
}

/// `GET /metrics` on a router whose state is the [`Metrics`]: [`exposition`].
pub async fn metrics_handler(State(metrics): State<Metrics>) -> Response {
    exposition(&metrics)
}

/// A stateless router serving `GET /metrics` from `metrics`: served alone by [`serve`], or
/// merged into another stateless router (`Router::merge`).
pub fn routes(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(metrics)
}

/// Connections [`serve`] holds at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;

/// How long [`serve`] keeps one connection open, keep-alive included: a client that sends
/// nothing, or reads nothing, cannot hold one of the [`MAX_CONNECTIONS`] places longer.
/// A scraper reconnects for its next scrape.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled, at most
/// [`MAX_CONNECTIONS`] connections at once, each for at most [`CONNECTION_LIFETIME`].
/// Logs a warning at once (when called, not when first polled) if the listener is not on a
/// loopback address: the metrics tell anyone who can reach them how busy the server is.
///
/// # Errors
/// The future fails only if the listener fails for good; a failing connection ends only
/// itself.
pub fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> impl Future<Output = std::io::Result<()>> + Send {
    if let Ok(addr) = listener.local_addr()
        && !addr.ip().is_loopback()
    {
        tracing::warn!(
            "metrics served on {addr}, not a loopback address: anyone who can reach it sees how busy the server is"
        );
    }
    serve_bounded(
        listener,
        metrics,
        shutdown,
        MAX_CONNECTIONS,
        CONNECTION_LIFETIME,
    )
}

/// [`serve`] with `max` connections at once, each for at most `lifetime`.
async fn serve_bounded(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
    max: usize,
    lifetime: Duration,
) -> std::io::Result<()> {
    let listener = Bounded {
        listener,
        places: Arc::new(Semaphore::new(max)),
        lifetime,
    };
    axum::serve(listener, routes(metrics))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// A TCP listener whose connections take a place each (waiting for one before accepting)
/// and expire after `lifetime`.
struct Bounded {
    listener: TcpListener,
    places: Arc<Semaphore>,
    lifetime: Duration,
}

impl axum::serve::Listener for Bounded {
    type Io = Expiring;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Expiring, SocketAddr) {
        // Never closed, so always a place (`None` would only lift the cap).
        let place = self.places.clone().acquire_owned().await.ok();
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        let expiring = Expiring {
            stream,
            expires: Box::pin(tokio::time::sleep(self.lifetime)),
            _place: place,
        };
        (expiring, addr)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection of [`Bounded`]: its reads and writes fail once it has expired, which makes
/// hyper close it; its place is given back when it is dropped.
struct Expiring {
    stream: TcpStream,
    expires: Pin<Box<Sleep>>,
    _place: Option<OwnedSemaphorePermit>,
}

impl Expiring {
    /// An error once the connection's lifetime is over (and a wake-up registered for then).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        self.expires.as_mut().poll(cx).is_ready().then(|| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "metrics connection expired")
        })
    }
}

impl AsyncRead for Expiring {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Expiring {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_registry_renders_every_label_value_at_zero() {
        let metrics = Metrics::new();
        let text = metrics.render();
        for line in [
            "# HELP simpletextim_connections Client connections open, by transport and login state.",
            "# TYPE simpletextim_connections gauge",
            r#"simpletextim_connections{transport="tcp",state="unauthenticated"} 0"#,
            r#"simpletextim_connections{transport="websocket",state="logged_in"} 0"#,
            "# TYPE simpletextim_logins counter",
            r#"simpletextim_logins_total{result="throttled"} 0"#,
            r#"simpletextim_sessions_ended_total{reason="slow_consumer"} 0"#,
            "# TYPE simpletextim_history_commit_seconds histogram",
            "# UNIT simpletextim_history_commit_seconds seconds",
            r#"simpletextim_history_commit_seconds_bucket{le="0.0001"} 0"#,
            r#"simpletextim_history_commit_seconds_bucket{le="+Inf"} 0"#,
            "simpletextim_history_commit_seconds_count 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Detached from any server: what would be read from one is zero.
        for line in [
            "simpletextim_users_online 0",
            r#"simpletextim_messages_total{kind="private"} 0"#,
            "simpletextim_outbox_bytes 0",
            "simpletextim_login_queue_depth 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn events_move_exactly_their_series() {
        let metrics = Metrics::new();
        metrics.connection_opened(Transport::Lines);
        metrics.connection_opened(Transport::Lines);
        metrics.connection_logged_in(Transport::Lines);
        metrics.connection_opened(Transport::WebSocket);
        metrics.connection_closed(Transport::WebSocket, false);
        metrics.login(LoginResult::Ok);
        metrics.login(LoginResult::of_failure(
            simpletextim_proto::ErrorCode::Unauthorized,
        ));
        metrics.login(LoginResult::of_failure(
            simpletextim_proto::ErrorCode::RateLimited,
        ));
        metrics.login(LoginResult::of_failure(
            simpletextim_proto::ErrorCode::Unavailable,
        ));
        metrics.session_ended(EndReason::SlowConsumer);
        metrics.history_commit().observe(0.000_3);
        let text = metrics.render();
        let expected = [
            r#"simpletextim_connections{transport="tcp",state="unauthenticated"} 0"#,
            r#"simpletextim_connections{transport="lines",state="unauthenticated"} 1"#,
            r#"simpletextim_connections{transport="lines",state="logged_in"} 1"#,
            r#"simpletextim_connections{transport="websocket",state="unauthenticated"} 0"#,
            r#"simpletextim_logins_total{result="ok"} 1"#,
            r#"simpletextim_logins_total{result="failed"} 1"#,
            r#"simpletextim_logins_total{result="throttled"} 1"#,
            r#"simpletextim_logins_total{result="refused"} 1"#,
            r#"simpletextim_sessions_ended_total{reason="slow_consumer"} 1"#,
            r#"simpletextim_sessions_ended_total{reason="exit"} 0"#,
            r#"simpletextim_history_commit_seconds_bucket{le="0.0002"} 0"#,
            r#"simpletextim_history_commit_seconds_bucket{le="0.0004"} 1"#,
            r#"simpletextim_history_commit_seconds_bucket{le="+Inf"} 1"#,
            "simpletextim_history_commit_seconds_count 1",
        ];
        for line in expected {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    /// A GET of `/metrics` on a fresh connection to `addr`: the status line.
    async fn status_of_scrape(addr: SocketAddr) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        s.read_to_string(&mut response).await.expect("read");
        response.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn the_listener_holds_few_connections_and_each_for_a_bounded_time() {
        use tokio::io::AsyncReadExt;
        const WAIT: Duration = Duration::from_secs(10);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let lifetime = Duration::from_secs(2);
        let served = serve_bounded(listener, Metrics::new(), stop.clone(), 1, lifetime);
        let served = tokio::spawn(served);
        // One idle connection takes the only place.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        let scrape = tokio::spawn(status_of_scrape(addr));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !scrape.is_finished(),
            "a second connection was served at once"
        );
        // The idle one is closed once its lifetime is over; then the scrape goes through.
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, idle.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
        assert!(started.elapsed() >= lifetime - Duration::from_millis(100));
        let status = tokio::time::timeout(WAIT, scrape).await;
        assert_eq!(
            status.expect("scrape in time").expect("no panic"),
            "HTTP/1.1 200 OK"
        );
        stop.cancel();
        let ended = tokio::time::timeout(WAIT, served).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }

    #[test]
    fn the_commit_buckets_span_100_microseconds_to_a_second() {
        let buckets: Vec<f64> = commit_buckets().collect();
        assert_eq!(buckets.len(), 15);
        assert!((buckets[0] - 0.000_1).abs() < 1e-12);
        assert!(buckets[13] < 1.0 && buckets[14] > 1.0, "{buckets:?}");
    }
}
