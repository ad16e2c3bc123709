//! One task per connection: the protocol's state machine over a [`Connection`].
//!
//! A session is either waiting for a login or logged in. It waits on five things at once:
//! the server's shutdown (before login; a logged-in session hears of it from its outbox),
//! its outbox (chat the hub queued, or a kick: takeover, slow consumer, shutdown), the
//! presence log's bell (rung at most once per tick after `joined`/`left` were announced),
//! the socket becoming readable, and the login deadline. Whenever it drains its outbox it
//! also writes the presence notices due before and after each item (`presence.rs`).
//! Replies to the client's own commands go into the write buffer after everything already
//! queued, so a client sees its echoes and `fail`s in order.
//!
//! - `conn.rs`: the socket, buffers and framing (bytes in, commands out; items in, bytes out);
//! - `commands.rs`: what each command does (login, send, list, exit) and the rate limit;
//! - `goodbye.rs`: how each way of ending is said to the client and the hub, and the
//!   private messages kept for the next login.

mod commands;
mod conn;
mod goodbye;
mod rate;

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use simpletextim_proto::{ErrorCode, Failure, Ref, Reply, UserId};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::Shared;
use crate::limits::Admission;
use crate::metrics::EndReason;
use crate::outbox::{KickReason, Outbox};
use crate::presence::{Bell, PresenceLog, Reader};
use crate::store::RevocationKind;
use crate::wire::Framing;
use conn::{Connection, Filled, Keepalive, ReadError};
pub(crate) use rate::FloodControl;
use rate::UserBucket;
pub use rate::{LIST_COST, RateLimit};

/// Bytes of replies a session buffers before it writes them, while it handles the commands
/// of one read.
const MAX_BUFFERED_REPLIES: usize = 64 * 1024;
/// How long a last write (the `fail` before a close) may take before we give up on a peer
/// that does not read.
const FINAL_WRITE: Duration = Duration::from_secs(2);

/// How a session ends, for the log and for deciding what the client and the others hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Exit,
    Eof,
    TooManyFailedLogins,
    FrameTooLarge,
    Error,
    TakenOver,
    SlowConsumer,
    Shutdown,
    LoginTimeout,
    /// The socket took nothing of what was waiting for [`crate::Config::write_timeout`].
    WriteStalled,
    /// Refused at accept by a connection limit (`fail 503`).
    Refused,
    /// The user's password was changed or the account deleted after the login looked it
    /// up (`fail 401`).
    Revoked(RevocationKind),
    /// The WebSocket client broke the protocol (close 1002), and how.
    Protocol(&'static str),
    /// The WebSocket client answered no ping.
    Unresponsive,
}

impl From<KickReason> for End {
    fn from(reason: KickReason) -> End {
        match reason {
            KickReason::TakenOver => End::TakenOver,
            KickReason::SlowConsumer => End::SlowConsumer,
            KickReason::Shutdown => End::Shutdown,
            KickReason::Revoked(kind) => End::Revoked(kind),
        }
    }
}

impl From<End> for EndReason {
    fn from(end: End) -> EndReason {
        match end {
            End::Exit => EndReason::Exit,
            End::Eof => EndReason::Eof,
            End::TooManyFailedLogins => EndReason::TooManyFailedLogins,
            End::FrameTooLarge => EndReason::FrameTooLarge,
            End::Error => EndReason::Error,
            End::TakenOver => EndReason::TakenOver,
            End::SlowConsumer => EndReason::SlowConsumer,
            End::Shutdown => EndReason::Shutdown,
            End::LoginTimeout => EndReason::LoginTimeout,
            End::WriteStalled => EndReason::WriteStalled,
            End::Refused => EndReason::Refused,
            End::Revoked(_) => EndReason::Revoked,
            End::Protocol(_) => EndReason::ProtocolError,
            End::Unresponsive => EndReason::Unresponsive,
        }
    }
}

/// A logged-in session's identity, its outbox, and its place in the presence log.
struct LoggedIn {
    user_id: UserId,
    outbox: Arc<Outbox>,
    presence: Reader,
}

pub(crate) struct Session {
    shared: Arc<Shared>,
    conn: Connection,
    conn_id: u64,
    login: Option<LoggedIn>,
    failed_logins: u32,
    /// Once logged in (with a rate limit): the user's flood-control bucket.
    bucket: Option<UserBucket>,
    /// The outbox's wake-up was consumed while writing, or a drain left more to write: look
    /// at the outbox before waiting.
    wake_pending: bool,
    /// Once logged in: the session's registration with the presence log's bell, kept
    /// across wake-ups.
    bell: Option<Bell>,
    /// Until the login: when the connection is closed if it has not logged in. Boxed so
    /// that a logged-in session carries no timer.
    login_deadline: Option<Pin<Box<Sleep>>>,
    /// Until the login: the wait for the server's shutdown (a logged-in session hears of
    /// it from its outbox). Boxed, like the deadline, so that its waiter (about 80 bytes)
    /// is not in the future of every session, logged in or not.
    shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The places the connection holds (overall, its address's, not logged in yet), or why
    /// it was refused.
    admission: Admission,
    /// A WebSocket's keepalive timer ([`Connection::keepalive`]); `None` on other framings.
    keepalive: Option<Pin<Box<Sleep>>>,
}

impl Drop for Session {
    /// The connection is closed (however its task ended: a panic too): it leaves the
    /// connections gauge it is in.
    fn drop(&mut self) {
        let transport = self.conn.framing().into();
        let metrics = &self.shared.metrics;
        metrics.connection_closed(transport, self.login.is_some());
    }
}

/// What woke a waiting session.
enum Event {
    Shutdown,
    Outbox,
    Presence,
    Readable(std::io::Result<()>),
    LoginTimeout,
    Keepalive,
}

impl Session {
    /// A session for a just-accepted connection. `admission` (the connection limits'
    /// places) is held until the session ends; a refused one only says why and closes. `tls`: the connection's TLS state on a TLS listener.
    pub(crate) fn new(
        stream: TcpStream,
        peer: std::net::SocketAddr,
        conn_id: u64,
        shared: Arc<Shared>,
        admission: Admission,
        framing: Framing,
        tls: Option<rustls::ServerConnection>,
    ) -> Session {
        let conn = Connection::new(stream, peer, framing, shared.config.max_command_frame, tls);
        Session::with_connection(conn, conn_id, shared, admission)
    }

    /// A session for a WebSocket the HTTP listener upgraded (`read`: the bytes read past
    /// the upgrade request; `tls`: the connection's TLS state over HTTPS), admitted before
    /// the upgrade.
    pub(crate) fn websocket(
        stream: TcpStream,
        peer: std::net::SocketAddr,
        conn_id: u64,
        shared: Arc<Shared>,
        admission: Admission,
        tls: Option<rustls::ServerConnection>,
        read: Bytes,
    ) -> Session {
        let conn = Connection::upgraded(stream, peer, shared.config.max_command_frame, tls, read);
        Session::with_connection(conn, conn_id, shared, admission)
    }

    fn with_connection(
        conn: Connection,
        conn_id: u64,
        shared: Arc<Shared>,
        admission: Admission,
    ) -> Session {
        let login_deadline = Some(Box::pin(tokio::time::sleep(shared.config.login_timeout)));
        let shutdown = Some(Box::pin(shared.shutdown.clone().cancelled_owned()));
        shared.metrics.connection_opened(conn.framing().into());
        let keepalive = conn
            .is_websocket()
            .then(|| Box::pin(tokio::time::sleep(shared.config.websocket_ping_interval)));
        Session {
            shared,
            conn,
            conn_id,
            login: None,
            failed_logins: 0,
            bucket: None,
            wake_pending: false,
            bell: None,
            login_deadline,
            shutdown,
            admission,
            keepalive,
        }
    }

    /// Serves the connection until it ends.
    ///
    /// Not an `async fn`: an async fn moves its argument into a local of its body, and the
    /// compiler then keeps room for both (the session twice in every task). The session is
    /// captured once here and used in place.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            let end = match self.admission.take_refusal() {
                Some(refusal) => {
                    self.fail(refusal);
                    End::Refused
                }
                None => self.serve().await,
            };
            self.shared.metrics.session_ended(end.into());
            // Boxed: the goodbye's state is only needed once, at the end.
            Box::pin(self.finish(end)).await;
        }
    }

    /// The session's loop: write what is buffered, then wait for the next event and handle
    /// it, until something ends the session.
    async fn serve(&mut self) -> End {
        // What came with the WebSocket upgrade, before the socket is waited for.
        if self.conn.read_buffered() > 0
            && let Err(end) = self.handle_commands(Filled::Data).await
        {
            return end;
        }
        loop {
            if let Err(end) = self.write_out().await {
                return end;
            }
            if std::mem::take(&mut self.wake_pending) {
                if let Err(end) = self.drain_outbox() {
                    return end;
                }
                continue;
            }
            let event = tokio::select! {
                biased;
                () = boxed_fired(&mut self.shutdown) => Event::Shutdown,
                () = outbox_changed(&self.login) => Event::Outbox,
                () = bell_rung(&mut self.bell, self.shared.hub.presence()) => Event::Presence,
                r = std::future::poll_fn(|cx| self.conn.poll_read_ready(cx)) => Event::Readable(r),
                () = boxed_fired(&mut self.login_deadline) => Event::LoginTimeout,
                () = boxed_fired(&mut self.keepalive) => Event::Keepalive,
            };
            let handled = match event {
                Event::Shutdown => Err(End::Shutdown),
                Event::Outbox => self.drain_outbox(),
                Event::Presence => {
                    if let Some(bell) = &mut self.bell {
                        bell.rearm(self.shared.hub.presence());
                    }
                    self.drain_outbox()
                }
                Event::LoginTimeout => {
                    self.fail(Failure::new(ErrorCode::Unauthorized, "login timed out"));
                    Err(End::LoginTimeout)
                }
                Event::Readable(Err(_)) => Err(End::Error),
                Event::Readable(Ok(())) => self.read_and_handle().await,
                Event::Keepalive => self.keepalive(),
            };
            if let Err(end) = handled {
                return end;
            }
        }
    }

    /// Reads what the socket has and handles every complete command in it.
    ///
    /// # Errors
    /// How the session ends, when a command, the framing or the peer ends it.
    async fn read_and_handle(&mut self) -> Result<(), End> {
        let filled = self.conn.fill().map_err(|e| {
            tracing::debug!(peer = %self.conn.peer(), error = %e, "read failed");
            End::Error
        })?;
        if filled == Filled::Nothing {
            return Ok(());
        }
        self.handle_commands(filled).await
    }

    /// Handles every complete command in the read buffer; `filled` says whether the peer
    /// closed its side after them.
    ///
    /// # Errors
    /// How the session ends, when a command, the framing or the peer ends it.
    async fn handle_commands(&mut self, filled: Filled) -> Result<(), End> {
        loop {
            // Taken out of the match before any await: the decoder's result (the request,
            // or why there is none) is not kept in the session's future while it waits.
            let request = match self.conn.next_command() {
                Ok(Some(Ok(request))) => request,
                Ok(Some(Err(rejected))) => {
                    self.reply(&rejected.into_reply());
                    continue;
                }
                Ok(None) => break,
                Err(ReadError::TooLarge { max }) => {
                    self.fail(Failure::new(
                        ErrorCode::TooLarge,
                        format!("frame over the size limit of {max} bytes"),
                    ));
                    return Err(End::FrameTooLarge);
                }
                Err(ReadError::Closed) => return Err(End::Eof),
                Err(ReadError::Protocol(why)) => {
                    tracing::debug!(peer = %self.conn.peer(), why, "WebSocket protocol error");
                    return Err(End::Protocol(why));
                }
                Err(ReadError::Io(e)) => {
                    tracing::debug!(peer = %self.conn.peer(), error = %e, "read failed");
                    return Err(End::Error);
                }
            };
            if let Some(waiting) = self.handle(request)? {
                waiting.await?;
            }
            // A read chunk can hold hundreds of commands, and a `list` reply can be large:
            // write what they produced before taking the next one, so a client that sends
            // without reading cannot make us buffer much.
            if self.conn.buffered() > MAX_BUFFERED_REPLIES {
                self.write_out().await?;
            }
        }
        self.conn.release_read_buffer();
        match filled {
            Filled::Eof => Err(End::Eof),
            Filled::Data | Filled::Nothing => Ok(()),
        }
    }

    /// The WebSocket keepalive's timer fired: ping a quiet client, or end the session of
    /// one that answered no ping.
    ///
    /// # Errors
    /// [`End::Unresponsive`].
    fn keepalive(&mut self) -> Result<(), End> {
        match self
            .conn
            .keepalive(self.shared.config.websocket_ping_interval)
        {
            Keepalive::At(at) => {
                if let Some(timer) = &mut self.keepalive {
                    timer.as_mut().reset(at);
                }
                Ok(())
            }
            Keepalive::Dead => Err(End::Unresponsive),
        }
    }

    /// Answers `fail`, for what answers no request (a timeout, a refused connection).
    fn fail(&mut self, failure: Failure) {
        self.fail_ref(None, failure);
    }

    /// Answers `fail` to a request, with its `ref`.
    fn fail_ref(&mut self, r#ref: Option<Ref>, failure: Failure) {
        self.reply(&Reply::Fail {
            r#ref,
            fail: failure,
        });
    }

    /// Queues a direct reply after everything the hub already queued for this client.
    fn reply(&mut self, reply: &Reply) {
        // A kick found here is acted on at the next wake-up, which `kick` also caused.
        let _ = self.drain_outbox();
        self.conn.queue_reply(reply);
    }

    /// Queues the reply to `list` (with the request's `ref`, JSON) after everything the hub
    /// already queued for this client: `list` is the hub's shared JSON array of ids.
    fn reply_list(&mut self, r#ref: Option<&[u8]>, list: &[u8]) {
        let _ = self.drain_outbox();
        self.conn.queue_list(r#ref, list);
    }

    /// Moves what the hub queued, and the presence notices due before, between and after
    /// those items, into the write buffer. A drain writes a bounded number of notices: when
    /// there is more, `wake_pending` makes the loop drain again once this is written.
    ///
    /// # Errors
    /// How the session ends when it was kicked, or when it fell so far behind the presence
    /// log that notices it was due are gone (a slow consumer).
    fn drain_outbox(&mut self) -> Result<(), End> {
        let Some(login) = &mut self.login else {
            return Ok(());
        };
        let log = self.shared.hub.presence();
        let Ok(drained) = login.presence.drain(log, &login.outbox, self.conn.writer()) else {
            tracing::warn!(user = %login.user_id, conn = self.conn_id, "slow consumer: behind the presence log, disconnecting");
            return Err(End::SlowConsumer);
        };
        if drained.more {
            self.wake_pending = true;
        }
        match drained.kicked {
            None => Ok(()),
            Some(reason) => Err(reason.into()),
        }
    }

    /// Whether the session fell behind the presence log's oldest notice (a slow consumer).
    fn behind_presence(&self) -> bool {
        self.login
            .as_ref()
            .is_some_and(|l| self.shared.hub.presence().passed(l.presence.cursor()))
    }

    /// Writes the buffer out. Most writes complete at once; only a full socket makes it
    /// wait (boxed: the waiting state stays off the idle session's future).
    ///
    /// # Errors
    /// How the session ends when the socket fails or a kick ends the wait.
    async fn write_out(&mut self) -> Result<(), End> {
        if !self.conn.has_output() {
            return Ok(());
        }
        self.conn.try_flush().map_err(|_| End::Error)?;
        if self.conn.has_output() {
            Box::pin(self.write_blocked(true)).await?;
        }
        Ok(())
    }

    /// Waits for the socket to take the rest of the buffer. A socket that takes nothing for
    /// the write timeout ends the session, and so does the login deadline before login.
    /// With `watch_kicks`, a kick meanwhile ends it at once if the peer is a slow consumer,
    /// and a takeover or shutdown gives it [`FINAL_WRITE`] more; without (the goodbye), the
    /// caller bounds the wait.
    async fn write_blocked(&mut self, watch_kicks: bool) -> Result<(), End> {
        let write_timeout = self.shared.config.write_timeout;
        let mut stalled_at = Instant::now() + write_timeout;
        let mut final_write: Option<Instant> = None;
        while self.conn.has_output() {
            let watch = watch_kicks && final_write.is_none();
            tokio::select! {
                biased;
                r = self.conn.writable() => {
                    r.map_err(|_| End::Error)?;
                    if self.conn.try_flush().map_err(|_| End::Error)? > 0 {
                        stalled_at = Instant::now() + write_timeout;
                    }
                }
                () = self.shared.shutdown.cancelled(), if watch => {
                    final_write = Some(Instant::now() + FINAL_WRITE);
                }
                () = bell_rung(&mut self.bell, self.shared.hub.presence()), if watch => {
                    // Notices keep coming while the socket takes nothing: once the log has
                    // dropped one this session has not written, it is a slow consumer.
                    if let Some(bell) = &mut self.bell {
                        bell.rearm(self.shared.hub.presence());
                    }
                    self.wake_pending = true;
                    if self.behind_presence() {
                        return Err(End::SlowConsumer);
                    }
                }
                () = outbox_changed(&self.login), if watch => {
                    self.wake_pending = true;
                    match self.login.as_ref().and_then(|l| l.outbox.kicked()) {
                        Some(KickReason::SlowConsumer) => return Err(End::SlowConsumer),
                        Some(
                            KickReason::TakenOver | KickReason::Shutdown | KickReason::Revoked(_),
                        ) => {
                            final_write = Some(Instant::now() + FINAL_WRITE);
                        }
                        None => {}
                    }
                }
                () = sleep_until(final_write) => return Err(End::Error),
                () = tokio::time::sleep_until(stalled_at) => return Err(End::WriteStalled),
                () = boxed_fired(&mut self.login_deadline) => return Err(End::LoginTimeout),
            }
        }
        Ok(())
    }
}

// The waits below are plain polls (`poll_fn`), not `async fn`s: each is in the session's
// select at every wait, and so in the future of every session; a poll keeps nothing but
// its reference there.

/// Waits for the outbox to change; never resolves before login.
fn outbox_changed(login: &Option<LoggedIn>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match login {
        Some(l) => l.outbox.poll_changed(cx),
        None => Poll::Pending,
    })
}

/// Waits for the presence log's bell; never before login.
fn bell_rung<'a>(
    bell: &'a mut Option<Bell>,
    log: &'a PresenceLog,
) -> impl Future<Output = ()> + 'a {
    std::future::poll_fn(move |cx| match bell {
        Some(b) => b.poll_rung(log, cx),
        None => Poll::Pending,
    })
}

/// Resolves when a boxed wait (the login deadline, the shutdown before login, the
/// keepalive) fires; never once it is gone.
fn boxed_fired<F: Future<Output = ()>>(
    wait: &mut Option<Pin<Box<F>>>,
) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match wait {
        Some(w) => w.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

/// Sleeps until `deadline`; never resolves without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
