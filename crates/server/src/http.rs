//! The HTTP listener (`--listen-http`): the web client's three files, `/healthz`, and
//! `GET /ws`, the WebSocket upgrade after which the connection is an ordinary session.
//!
//! hyper's HTTP/1.1 server runs the [`router`] (axum) on each connection, over TLS when the
//! server has a certificate (the same [`crate::Tls`] as the framed listeners, so a SIGHUP
//! reload applies here too). `GET /ws` is checked (Origin, handshake headers, shutdown, the
//! connection limits: a refusal is an HTTP error before any upgrade), answered with `101`,
//! and then the socket is taken back from hyper (`hyper::upgrade::on` and
//! `Upgraded::downcast`), with what hyper had read past the request and, over TLS, the
//! `rustls::ServerConnection`, and handed to [`Session::websocket`]: from there on it is a
//! session like a TCP one (same hub, outbox, limits, goodbye), whose framing is WebSocket
//! text messages (`wire/websocket.rs`).
//!
//! Plain HTTP is bounded on its own, so the port is no way around the session limits: a
//! cap on HTTP connections overall and per address (an upgraded connection leaves them and
//! counts as a session), a time limit on the TLS handshake, on reading a request's headers
//! and on an idle keep-alive connection (hyper's header read timeout covers both), a cap
//! on a connection's read buffer, and a longest life for a connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Response, StatusCode};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::session::Session;

/// The web client, embedded in the binary.
const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// The web client's Content-Security-Policy: scripts, styles and images from this origin
/// only (no inline script or style), connections (the WebSocket, `ws:`/`wss:`) to this
/// origin only, no plugins, no framing by other sites.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// How long a TLS handshake on the HTTP listener may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest an HTTP connection (not upgraded) is served; then it is closed once its
/// request in progress is answered.
const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How long a connection being closed (lifetime, shutdown) may take to finish its request.
const HTTP_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// hyper's read buffer per connection: the longest request head accepted.
const HTTP_MAX_BUFFER: usize = 32 * 1024;

/// What a request's handler knows about its connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    peer: SocketAddr,
}

/// The state the router's handlers share.
pub(crate) struct HttpState {
    shared: Arc<Shared>,
    /// The server's session tasks, where upgraded connections run.
    sessions: TaskTracker,
    /// The server's cap on sessions ([`crate::Config::max_connections`]).
    session_limit: Arc<Semaphore>,
}

impl HttpState {
    pub(crate) fn new(
        shared: Arc<Shared>,
        sessions: TaskTracker,
        session_limit: Arc<Semaphore>,
    ) -> Arc<HttpState> {
        Arc::new(HttpState {
            shared,
            sessions,
            session_limit,
        })
    }
}

/// The HTTP routes: `GET /` (and `/app.js`, `/style.css`), `GET /healthz`, `GET /ws`;
/// anything else is 404, a known path with another method 405. More routes are added here
/// (`.route(...)` before `.with_state`).
pub(crate) fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/healthz", get(healthz))
        .route("/ws", get(websocket))
        .fallback(not_found)
        .with_state(state)
}

async fn index() -> Response<Body> {
    web_file(INDEX_HTML, "text/html; charset=utf-8")
}

async fn app_js() -> Response<Body> {
    web_file(APP_JS, "text/javascript; charset=utf-8")
}

async fn style_css() -> Response<Body> {
    web_file(STYLE_CSS, "text/css; charset=utf-8")
}

/// One of the web client's files, with the headers that keep it from being sniffed, framed
/// or served stale after an upgrade of the server.
fn web_file(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A short plain-text answer.
fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Body::from(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// `200 ok` while serving, `503` once the server is shutting down (a load balancer stops
/// sending clients here).
async fn healthz(State(state): State<Arc<HttpState>>) -> Response<Body> {
    if state.shared.shutdown.is_cancelled() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        text(StatusCode::OK, "ok\n")
    }
}

/// `GET /ws`: checks the request, admits the connection as a session (or says why not, in
/// an HTTP error), answers `101 Switching Protocols`, and hands the socket to a session
/// once hyper has written that answer.
async fn websocket(State(state): State<Arc<HttpState>>, mut req: Request) -> Response<Body> {
    let Some(info) = req.extensions().get::<ConnInfo>().copied() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "no connection info\n");
    };
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN)
        && !origin_allowed(
            origin,
            headers.get(header::HOST),
            &state.shared.config.allowed_origins,
        )
    {
        tracing::debug!(peer = %info.peer, ?origin, "WebSocket refused: origin not allowed");
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let accept = match handshake_accept(headers) {
        Ok(accept) => accept,
        Err(response) => return response,
    };
    if state.shared.shutdown.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
    }
    // The same admission as a TCP connection at accept: the server's cap on sessions, the
    // address's limits, the cap on connections not logged in.
    let Ok(permit) = state.session_limit.clone().try_acquire_owned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", crate::limits::SERVER_BUSY),
        );
    };
    let mut admission = state.shared.limits.admit(permit, info.peer.ip());
    if let Some(refusal) = admission.take_refusal() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", refusal.reason),
        );
    }
    let upgrade = hyper::upgrade::on(&mut req);
    let shared = state.shared.clone();
    state.sessions.spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(peer = %info.peer, error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let Some((stream, tls, read)) = take_socket(upgraded) else {
            tracing::error!(peer = %info.peer, "upgraded connection of an unknown type");
            return;
        };
        let conn_id = shared.next_conn_id();
        Session::websocket(stream, info.peer, conn_id, shared, admission, tls, read)
            .run()
            .await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// The socket of an upgraded connection, its TLS state over HTTPS, and the bytes read past
/// the request; `None` for a connection type this module did not serve.
fn take_socket(
    upgraded: hyper::upgrade::Upgraded,
) -> Option<(TcpStream, Option<rustls::ServerConnection>, bytes::Bytes)> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => return Some((parts.io.into_inner(), None, parts.read_buf)),
        Err(upgraded) => upgraded,
    };
    let parts = upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>().ok()?;
    let (stream, conn) = parts.io.into_inner().into_inner();
    Some((stream, Some(conn), parts.read_buf))
}

/// Checks the WebSocket handshake headers (RFC 6455, section 4.2.1) and returns the
/// `Sec-WebSocket-Accept` value.
///
/// # Errors
/// The HTTP answer: 400 for a request that is not a WebSocket upgrade, 426 (with the
/// version the server speaks) for another version than 13.
#[allow(clippy::result_large_err)]
fn handshake_accept(headers: &HeaderMap) -> Result<HeaderValue, Response<Body>> {
    if !has_token(headers, &header::CONNECTION, "upgrade")
        || !has_token(headers, &header::UPGRADE, "websocket")
    {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)\n",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut response = text(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only\n");
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(response);
    }
    // The key is 16 random bytes in base64: 24 characters.
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .filter(|k| k.len() == 24)
        .ok_or_else(|| text(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key\n"))?;
    HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key))
        .map_err(|_| text(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key\n"))
}

/// Whether a comma-separated header has `token` (ASCII case-insensitive) in one of its
/// values.
fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a browser page from `origin` may open a WebSocket: an origin of
/// `allowed` (normalized by [`normalize_origin`]), or the same origin, whose `host[:port]`
/// is the request's `Host`.
fn origin_allowed(origin: &HeaderValue, host: Option<&HeaderValue>, allowed: &[String]) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.to_ascii_lowercase();
    if allowed.contains(&origin) {
        return true;
    }
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    host.and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.eq_ignore_ascii_case(authority))
}

/// An `--allowed-origin` as browsers send it in `Origin`: `scheme://host[:port]`, lower
/// case, without a trailing slash.
///
/// # Errors
/// Not of that form (a path, no scheme, spaces).
pub fn normalize_origin(origin: &str) -> Result<String, String> {
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(format!("{origin}: expected scheme://host[:port]"));
    };
    if scheme.is_empty()
        || authority.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        || authority
            .chars()
            .any(|c| c.is_whitespace() || "/?#@".contains(c))
    {
        return Err(format!("{origin}: expected scheme://host[:port]"));
    }
    Ok(origin)
}

/// The HTTP connections open per address (an IPv4 address, an IPv6 /64), each counted
/// while open; an address with none is forgotten, so the map holds at most as many
/// addresses as there are connections.
#[derive(Debug, Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One HTTP connection's place in its address's count.
struct AddressPlace {
    counts: Arc<PerAddress>,
    addr: IpAddr,
}

impl PerAddress {
    /// A place for a new connection from `addr`, or `None` when it has `max` already.
    fn take(counts: &Arc<PerAddress>, addr: IpAddr, max: u32) -> Option<AddressPlace> {
        let addr = crate::throttle::prefix(addr);
        let mut open = counts.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(addr).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressPlace {
            counts: counts.clone(),
            addr,
        })
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

/// Serves HTTP on `listener` until `stop` is cancelled: each connection in a task of its
/// own, within the caps on HTTP connections. Connections still open at the stop finish
/// their request in progress (at most [`HTTP_CLOSE_GRACE`]) and close.
pub(crate) async fn serve(listener: TcpListener, state: Arc<HttpState>, stop: CancellationToken) {
    let config = &state.shared.config;
    let overall = Arc::new(Semaphore::new(
        config.http_max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let per_address = Arc::new(PerAddress::default());
    let router = router(state.clone());
    let connections = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = overall.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = Duration::from_millis(10);
                    accepted
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed; backing off {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let max = config.http_connections_per_address;
        let place = if max == 0 || state.shared.limits.is_exempt(peer.ip()) {
            None
        } else {
            match PerAddress::take(&per_address, peer.ip(), max) {
                Some(place) => Some(place),
                None => {
                    tracing::debug!(%peer, "HTTP connection refused: too many from its address");
                    continue;
                }
            }
        };
        let (state, router, stop) = (state.clone(), router.clone(), stop.clone());
        connections.spawn(async move {
            connection(stream, peer, &state, router, stop, permit, place).await;
        });
    }
    connections.close();
    connections.wait().await;
}

/// Serves one HTTP connection (after its TLS handshake on an HTTPS listener), holding its
/// places until it closes or is upgraded.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: &HttpState,
    router: Router,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
    _place: Option<AddressPlace>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let info = ConnInfo { peer };
    match &state.shared.config.tls {
        None => serve_io(TokioIo::new(stream), info, state, router, stop).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let handshake = acceptor.accept_with(stream, |conn| {
                conn.set_buffer_limit(Some(crate::tls::TLS_BUFFER_LIMIT));
            });
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake) => match r {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            serve_io(TokioIo::new(stream), info, state, router, stop).await;
        }
    }
}

/// Runs hyper's HTTP/1.1 server on one connection (upgrades allowed), closing it at the
/// stop or at the end of its lifetime.
async fn serve_io<I>(
    io: TokioIo<I>,
    info: ConnInfo,
    state: &HttpState,
    router: Router,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(info);
            hyper::service::Service::call(&service, req)
        });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.shared.config.http_header_timeout)
        .max_buf_size(HTTP_MAX_BUFFER)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = stop.cancelled() => None,
        () = tokio::time::sleep(HTTP_CONNECTION_LIFETIME) => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(HTTP_CLOSE_GRACE, conn).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %info.peer, error = %e, "HTTP connection ended");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn same_origin_or_an_allowed_one() {
        let allowed = vec![normalize_origin("https://Chat.Example.org/").unwrap()];
        assert_eq!(allowed, ["https://chat.example.org"]);
        let host = hv("127.0.0.1:5080");
        let same = |o: &str| origin_allowed(&hv(o), Some(&host), &allowed);
        assert!(same("http://127.0.0.1:5080"));
        assert!(same("https://127.0.0.1:5080"));
        assert!(same("https://chat.example.org"));
        assert!(same("HTTPS://CHAT.example.org"));
        assert!(!same("http://127.0.0.1:5081"));
        assert!(!same("http://evil.example"));
        assert!(!same("null"));
        assert!(!same("https://chat.example.org:8443"));
        assert!(!origin_allowed(&hv("http://127.0.0.1:5080"), None, &[]));
        for bad in ["chat.example.org", "https://x/y", "https://", "ht tp://x"] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_accept_key_of_rfc_6455() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, hv("keep-alive, Upgrade"));
        headers.insert(header::UPGRADE, hv("WebSocket"));
        headers.insert(header::SEC_WEBSOCKET_VERSION, hv("13"));
        headers.insert(header::SEC_WEBSOCKET_KEY, hv("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(
            handshake_accept(&headers).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        headers.insert(header::SEC_WEBSOCKET_VERSION, hv("8"));
        assert_eq!(
            handshake_accept(&headers).unwrap_err().status(),
            StatusCode::UPGRADE_REQUIRED
        );
        headers.insert(header::SEC_WEBSOCKET_VERSION, hv("13"));
        headers.remove(header::UPGRADE);
        assert_eq!(
            handshake_accept(&headers).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn an_address_has_at_most_its_places_and_is_forgotten_after() {
        let counts = Arc::new(PerAddress::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = PerAddress::take(&counts, a, 2).unwrap();
        let second = PerAddress::take(&counts, a, 2).unwrap();
        assert!(PerAddress::take(&counts, a, 2).is_none());
        drop(first);
        let third = PerAddress::take(&counts, a, 2).unwrap();
        drop((second, third));
        assert!(counts.open.lock().unwrap().is_empty());
    }
}
