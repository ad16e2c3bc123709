//! The network task: the glue between the proto [`Client`] and the application's event
//! channel.
//!
//! It waits for a [`NetRequest::Login`], connects and logs in, then forwards every reply as
//! a [`NetEvent`] and every [`NetRequest::Send`] to the server. When the connection drops it
//! reconnects with exponential backoff (1, 2, 4 … 30 s, counting down in
//! [`NetEvent::Reconnecting`]) and logs in again by itself, except after `fail 409` (the
//! session was taken over by another login), which ends it for good. It connects to an
//! [`Endpoint`] (plain TCP or TLS, see [`endpoint`]) every time, so reconnections keep TLS.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use simpletextim_proto::{
    ChatMessage, Client, ClientError, ClientReceiver, ClientSender, Command, ErrorCode, Password,
    Reply, UserId,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::event::{Event, NetEvent, NetRequest};
use crate::text::sanitize;

pub mod endpoint;

pub use endpoint::{Endpoint, Security, Target};

/// Longest wait between two reconnection attempts, in seconds.
const BACKOFF_MAX_SECS: u64 = 30;
/// How long connecting and logging in may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `exit` waits for the server to close the session.
const EXIT_TIMEOUT: Duration = Duration::from_secs(1);

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Starts the network task for the server at `endpoint` (a `String` is a plain TCP
/// `host:port`). Returns where to send it requests, and its handle (it ends after
/// [`NetRequest::Exit`], or when either channel closes).
pub fn spawn(
    endpoint: impl Into<Endpoint>,
    events: mpsc::Sender<Event>,
) -> (mpsc::UnboundedSender<NetRequest>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(run(endpoint.into(), rx, events));
    (tx, handle)
}

/// Reports an event; false when the application is gone.
async fn emit(events: &mpsc::Sender<Event>, event: NetEvent) -> bool {
    events.send(Event::Net(event)).await.is_ok()
}

/// How a logged-in session ended.
enum End {
    /// The application asked to leave (or went away).
    Exit,
    /// `fail 409`: another login took the session over.
    TakenOver(String),
    /// The connection broke.
    Lost(String),
}

/// The network task's body; see the module documentation.
pub async fn run(
    endpoint: Endpoint,
    mut requests: mpsc::UnboundedReceiver<NetRequest>,
    events: mpsc::Sender<Event>,
) {
    let mut creds: Option<(UserId, Password)> = None;
    let mut logged_in_once = false;
    let mut delay = 1;
    loop {
        let Some((user, password)) = creds.clone() else {
            match requests.recv().await {
                Some(NetRequest::Login { user, password }) => {
                    creds = Some((user, password));
                    logged_in_once = false;
                    delay = 1;
                }
                Some(NetRequest::Send(_)) => {}
                Some(NetRequest::Exit) | None => return,
            }
            continue;
        };
        if !emit(&events, NetEvent::Connecting).await {
            return;
        }
        info!(server = %endpoint, user = %user, "logging in");
        let next = match connect_and_login(&endpoint, &user, &password).await {
            Ok((client, pending)) => {
                logged_in_once = true;
                delay = 1;
                serve(client, pending, user, &mut requests, &events).await
            }
            Err(e) => login_failed(&endpoint, &e, logged_in_once, &events).await,
        };
        match next {
            Next::Exit => return,
            Next::WaitForLogin => {
                creds = None;
                continue;
            }
            Next::Reconnect => {}
        }
        match countdown(delay, &mut requests, &events).await {
            Countdown::Elapsed => {}
            Countdown::Login(user, password) => {
                creds = Some((user, password));
                logged_in_once = false;
            }
            Countdown::Exit => return,
        }
        delay = (delay * 2).min(BACKOFF_MAX_SECS);
    }
}

/// What the network task does after a login attempt or a session.
enum Next {
    /// Stop: the application asked to, or went away.
    Exit,
    /// Forget the credentials and wait for the login screen's next request.
    WaitForLogin,
    /// Wait (with backoff) and log in again with the same credentials.
    Reconnect,
}

/// Reports the login, serves the session until it ends, and reports how it ended.
async fn serve(
    client: Client,
    pending: Vec<ChatMessage>,
    user: UserId,
    requests: &mut mpsc::UnboundedReceiver<NetRequest>,
    events: &mpsc::Sender<Event>,
) -> Next {
    info!(pending = pending.len(), "logged in");
    let at_ms = now_ms();
    if !emit(
        events,
        NetEvent::LoggedIn {
            user,
            pending,
            at_ms,
        },
    )
    .await
    {
        return Next::Exit;
    }
    let (tx, rx) = client.into_split();
    match session(tx, rx, requests, events).await {
        End::Exit => Next::Exit,
        End::TakenOver(reason) => {
            warn!(%reason, "session taken over");
            let at_ms = now_ms();
            if !emit(events, NetEvent::Offline { reason, at_ms }).await {
                return Next::Exit;
            }
            Next::WaitForLogin
        }
        End::Lost(reason) => {
            warn!(%reason, "connection lost");
            let at_ms = now_ms();
            if !emit(events, NetEvent::Disconnected { reason, at_ms }).await {
                return Next::Exit;
            }
            Next::Reconnect
        }
    }
}

/// Reports a failed login. Someone still at the login screen (never logged in with these
/// credentials), or whose account is refused, decides what to do next; a reconnection that
/// failed otherwise (the server is down, say) is tried again.
async fn login_failed(
    endpoint: &Endpoint,
    e: &ClientError,
    logged_in_once: bool,
    events: &mpsc::Sender<Event>,
) -> Next {
    let refused = matches!(
        e.failure().map(|f| f.error_code),
        Some(ErrorCode::Unauthorized | ErrorCode::BadRequest)
    );
    let reason = describe(endpoint, e);
    warn!(%reason, "login failed");
    if logged_in_once && !refused {
        return Next::Reconnect;
    }
    if !emit(events, NetEvent::LoginFailed { reason }).await {
        return Next::Exit;
    }
    Next::WaitForLogin
}

/// A message for people about a failed connection or login. (A TLS failure can quote names
/// from the server's certificate: sanitized like everything else from the network.)
fn describe(endpoint: &Endpoint, e: &ClientError) -> String {
    let addr = sanitize(&endpoint.to_string());
    match e {
        ClientError::Connect(io) => format!("cannot connect to {addr}: {io}"),
        ClientError::TlsHandshake(reason) => {
            sanitize(&format!("TLS handshake with {addr} failed: {reason}"))
        }
        ClientError::Refused(f) | ClientError::Invalid(f) => {
            format!("{}: {}", f.error_code, sanitize(&f.reason))
        }
        other => sanitize(&other.to_string()),
    }
}

async fn connect_and_login(
    endpoint: &Endpoint,
    user: &UserId,
    password: &Password,
) -> Result<(Client, Vec<ChatMessage>), ClientError> {
    let attempt = async {
        let mut client = endpoint.connect().await?;
        // Acknowledged delivery: the application acks private messages once shown.
        let pending = client
            .login_with_acks(user.as_str(), password.expose())
            .await?;
        Ok((client, pending))
    };
    match tokio::time::timeout(LOGIN_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Connect(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        ))),
    }
}

/// Serves one logged-in session until it ends.
async fn session(
    mut tx: ClientSender,
    mut rx: ClientReceiver,
    requests: &mut mpsc::UnboundedReceiver<NetRequest>,
    events: &mpsc::Sender<Event>,
) -> End {
    let mut taken_over: Option<String> = None;
    loop {
        tokio::select! {
            reply = rx.next() => match reply {
                // A reply kind this client does not know (a newer server's extension), or a
                // known kind with fields it cannot read: not shown, and not fatal, since the
                // connection is fine.
                Some(Ok(Reply::Unknown)) => {
                    warn!("skipping a reply this client does not know");
                }
                Some(Ok(Reply::Unreadable { kind, error })) => {
                    warn!(?kind, %error, "skipping a reply this client cannot read");
                }
                Some(Ok(reply)) => {
                    if let Reply::Fail { fail, .. } = &reply
                        && fail.error_code == ErrorCode::Conflict
                    {
                        taken_over = Some(format!(
                            "{} ({}); not reconnecting",
                            sanitize(&fail.reason),
                            fail.error_code
                        ));
                    }
                    let at_ms = now_ms();
                    if !emit(events, NetEvent::Reply { reply, at_ms }).await {
                        return End::Exit;
                    }
                }
                Some(Err(e)) => {
                    return match taken_over {
                        Some(r) => End::TakenOver(r),
                        None => End::Lost(sanitize(&e.to_string())),
                    };
                }
                None => {
                    return match taken_over {
                        Some(r) => End::TakenOver(r),
                        None => End::Lost("connection closed by the server".into()),
                    };
                }
            },
            request = requests.recv() => match request {
                Some(NetRequest::Send(request)) => {
                    debug!(command = request.command.name(), "sending");
                    if let Err(e) = tx.send_request(&request).await {
                        return End::Lost(sanitize(&e.to_string()));
                    }
                }
                Some(NetRequest::Login { .. }) => {}
                Some(NetRequest::Exit) | None => {
                    let _ = tx.send(&Command::Exit).await;
                    // Let the server flush and close; don't hang if it does not.
                    let _ = tokio::time::timeout(EXIT_TIMEOUT, async {
                        while let Some(Ok(_)) = rx.next().await {}
                    })
                    .await;
                    return End::Exit;
                }
            },
        }
    }
}

/// How a wait before reconnecting ended.
enum Countdown {
    Elapsed,
    Login(UserId, Password),
    Exit,
}

/// Waits `secs` seconds, reporting the seconds left once a second.
async fn countdown(
    secs: u64,
    requests: &mut mpsc::UnboundedReceiver<NetRequest>,
    events: &mpsc::Sender<Event>,
) -> Countdown {
    for left in (1..=secs).rev() {
        if !emit(events, NetEvent::Reconnecting { in_secs: left }).await {
            return Countdown::Exit;
        }
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                () = &mut tick => break,
                request = requests.recv() => match request {
                    Some(NetRequest::Login { user, password }) => {
                        return Countdown::Login(user, password);
                    }
                    Some(NetRequest::Send(_)) => {}
                    Some(NetRequest::Exit) | None => return Countdown::Exit,
                },
            }
        }
    }
    Countdown::Elapsed
}
