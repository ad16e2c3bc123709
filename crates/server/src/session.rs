//! One task per connection: read frames, handle commands, write what the hub queued.
//!
//! The session owns its socket and identity. It waits on three things at once: the server's
//! shutdown, its outbox (chat and notices the hub queued, or a kick: takeover or slow
//! consumer), and the socket becoming readable. Replies to the client's own commands go
//! into the same write buffer after everything already queued, so a client sees its echoes
//! and `fail`s in order.
//!
//! An idle session holds no buffers: the socket is read with `readable()` + `try_read_buf`
//! into a buffer that is freed once it holds no partial frame, and the write buffer is freed
//! once written. That keeps tens of thousands of idle connections cheap.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use simpletextim_proto::{
    ChatMessage, CodecError, Command, ErrorCode, Failure, MessageText, Password, Recipient, Reply,
    ServerCodec, UserId,
};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep, timeout};
use tokio_util::codec::Decoder;

use crate::Shared;
use crate::hub::Member;
use crate::outbox::{KickReason, Outbox};
use crate::wire::{FrameWriter, Framing, LineCodec, Out};

/// Failed logins after which the connection is closed.
const MAX_FAILED_LOGINS: u32 = 3;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 4096;
/// Bytes of replies a session buffers before it writes them, while it handles the commands
/// of one read.
const MAX_BUFFERED_REPLIES: usize = 64 * 1024;
/// How long a last write (the `fail` before a close) may take before we give up on a peer
/// that does not read.
const FINAL_WRITE: Duration = Duration::from_secs(2);
/// TCP keepalive: a peer that vanished (no FIN, no RST) is found out after this much
/// silence plus the kernel's probes, and its session ends with `left`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A token bucket: `burst` commands at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained commands per second.
    pub per_sec: f64,
    /// Commands allowed in one burst.
    pub burst: u32,
}

#[derive(Debug)]
struct Bucket {
    tokens: f32,
    last: Instant,
}

impl Bucket {
    fn allow(&mut self, limit: RateLimit) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * limit.per_sec;
        self.tokens = (f64::from(self.tokens) + refill).min(f64::from(limit.burst)) as f32;
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How a session ends, for the log and for deciding whether the others hear `left`.
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
}

struct LoggedIn {
    user_id: UserId,
    outbox: Arc<Outbox>,
}

pub(crate) struct Session {
    shared: Arc<Shared>,
    stream: TcpStream,
    conn_id: u64,
    peer: SocketAddr,
    /// Bytes read and not yet decoded; empty (no allocation) between commands.
    rbuf: BytesMut,
    codec: Codec,
    /// Frames waiting to be written; empty (no allocation) when all is written.
    out: FrameWriter,
    /// How much of `out` the socket has taken (what a session that fails mid-write has
    /// delivered).
    out_written: usize,
    login: Option<LoggedIn>,
    failed_logins: u32,
    bucket: Option<Bucket>,
    /// The outbox's wake-up was consumed while writing: look at the outbox before waiting.
    wake_pending: bool,
    /// Until the login: when the connection is closed if it has not logged in. Boxed so
    /// that a logged-in session carries no timer.
    login_deadline: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

/// The command decoder of the connection's framing.
enum Codec {
    LengthDelimited(ServerCodec),
    /// Boxed: rare (the debugging listener), and larger.
    Lines(Box<LineCodec>),
}

impl Codec {
    fn decode(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<Result<Command, Failure>>, CodecError> {
        match self {
            Codec::LengthDelimited(c) => c.decode(src),
            Codec::Lines(c) => c.decode(src),
        }
    }
}

enum Event {
    Shutdown,
    Outbox,
    Readable(io::Result<()>),
    LoginTimeout,
}

impl Session {
    /// A session for a just-accepted connection. `permit` (the connection limit's) is held
    /// until the session ends.
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        conn_id: u64,
        shared: Arc<Shared>,
        permit: OwnedSemaphorePermit,
        framing: Framing,
    ) -> Session {
        let _ = stream.set_nodelay(true);
        let keepalive = TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        let _ = SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let login_deadline = Some(Box::pin(tokio::time::sleep(shared.config.login_timeout)));
        let bucket = shared.config.rate_limit.map(|l| Bucket {
            tokens: l.burst as f32,
            last: Instant::now(),
        });
        let codec = match framing {
            Framing::LengthDelimited => Codec::LengthDelimited(ServerCodec::with_limits(
                shared.config.max_command_frame,
                simpletextim_proto::codec::DEFAULT_MAX_REPLY_FRAME,
            )),
            Framing::Lines => {
                Codec::Lines(Box::new(LineCodec::new(shared.config.max_command_frame)))
            }
        };
        Session {
            shared,
            stream,
            conn_id,
            peer,
            rbuf: BytesMut::new(),
            codec,
            out: FrameWriter::with_framing(framing),
            out_written: 0,
            login: None,
            failed_logins: 0,
            bucket,
            wake_pending: false,
            login_deadline,
            _permit: permit,
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
            let end = self.serve().await;
            // Boxed: the goodbye's state is only needed once, at the end.
            Box::pin(self.finish(end)).await;
        }
    }
}

impl Session {
    async fn serve(&mut self) -> End {
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
                () = shutdown_before_login(&self.login, &self.shared.shutdown) => Event::Shutdown,
                () = outbox_changed(&self.login) => Event::Outbox,
                // `poll_read_ready` keeps the waker in the socket's reader slot: no waiter list to
                // join and leave at every wake-up, and a smaller future than `readable()`.
                r = std::future::poll_fn(|cx| self.stream.poll_read_ready(cx)) => Event::Readable(r),
                () = deadline_passed(&mut self.login_deadline) => Event::LoginTimeout,
            };
            match event {
                Event::Shutdown => return End::Shutdown,
                Event::Outbox => {
                    if let Err(end) = self.drain_outbox() {
                        return end;
                    }
                }
                Event::LoginTimeout => {
                    self.fail(Failure::new(ErrorCode::Unauthorized, "login timed out"));
                    return End::LoginTimeout;
                }
                Event::Readable(Err(_)) => return End::Error,
                Event::Readable(Ok(())) => {
                    if let Some(end) = self.read_and_handle().await {
                        return end;
                    }
                }
            }
        }
    }

    /// Reads what the socket has and handles every complete frame in it.
    async fn read_and_handle(&mut self) -> Option<End> {
        self.rbuf.reserve(READ_CHUNK);
        let eof = match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.release_rbuf();
                return None;
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "read failed");
                return Some(End::Error);
            }
        };
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(Ok(command))) => {
                    if let Some(end) = self.handle(command).await {
                        return Some(end);
                    }
                    // A read chunk can hold hundreds of commands, and a `list` reply can be
                    // large: write what they produced before taking the next one, so a
                    // client that sends without reading cannot make us buffer much.
                    if self.out.len() > MAX_BUFFERED_REPLIES {
                        if let Err(end) = self.write_out().await {
                            return Some(end);
                        }
                    }
                }
                Ok(Some(Err(failure))) => self.fail(failure),
                Ok(None) => break,
                Err(CodecError::FrameTooLarge { max }) => {
                    self.fail(Failure::new(
                        ErrorCode::TooLarge,
                        format!("frame over the size limit of {max} bytes"),
                    ));
                    return Some(End::FrameTooLarge);
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "read failed");
                    return Some(End::Error);
                }
            }
        }
        self.release_rbuf();
        eof.then_some(End::Eof)
    }

    /// Frees the read buffer when it holds no partial frame.
    fn release_rbuf(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    fn fail(&mut self, failure: Failure) {
        self.reply(&Reply::Fail { fail: failure });
    }

    /// Queues a direct reply after everything the hub already queued for this client.
    fn reply(&mut self, reply: &Reply) {
        // A kick found here is acted on at the next wake-up, which `kick` also caused.
        let _ = self.drain_outbox();
        self.out.push_reply(reply);
    }

    /// Moves what the hub queued into the write buffer.
    ///
    /// # Errors
    /// How the session ends when it was kicked.
    fn drain_outbox(&mut self) -> Result<(), End> {
        let Some(login) = &self.login else {
            return Ok(());
        };
        let taken = login.outbox.take();
        if taken.items.len() > 1 {
            self.out.reserve_for(&taken.items);
        }
        for item in &taken.items {
            self.out.push(item);
        }
        match taken.kicked {
            None => Ok(()),
            Some(KickReason::TakenOver) => Err(End::TakenOver),
            Some(KickReason::SlowConsumer) => Err(End::SlowConsumer),
            Some(KickReason::Shutdown) => Err(End::Shutdown),
        }
    }

    /// Handles one command. Returns how the session ends, if it does.
    async fn handle(&mut self, command: Command) -> Option<End> {
        match command {
            // Boxed: logging in is rare and its future is the largest; keeping it off the
            // session's own future keeps every idle session small.
            Command::Login { user_id, password } => {
                return Box::pin(self.login(user_id, password)).await;
            }
            Command::Exit => {
                let _ = self.drain_outbox();
                return Some(End::Exit);
            }
            Command::Send { .. } | Command::List if self.login.is_none() => {
                self.fail(Failure::new(ErrorCode::Unauthorized, "login required"));
            }
            _ if !self.allowed() => {
                self.fail(Failure::new(
                    ErrorCode::RateLimited,
                    "rate limit exceeded, slow down",
                ));
            }
            Command::Send { to, message } => self.send(to, message).await,
            Command::List => {
                let list = self.shared.hub.list();
                self.reply(&Reply::List { list });
            }
        }
        None
    }

    fn allowed(&mut self) -> bool {
        match (&mut self.bucket, self.shared.config.rate_limit) {
            (Some(bucket), Some(limit)) => bucket.allow(limit),
            _ => true,
        }
    }

    async fn send(&mut self, to: Recipient, message: MessageText) {
        let Some(login) = &self.login else { return };
        match to {
            Recipient::Everyone => self.shared.hub.publish(&login.user_id, message),
            Recipient::User(to) => {
                let from = login.user_id.clone();
                let sent = Box::pin(self.shared.hub.send_private(
                    &from,
                    self.conn_id,
                    &to,
                    message,
                ));
                if let Err(failure) = sent.await {
                    self.fail(failure);
                }
            }
        }
    }

    async fn login(&mut self, user_id: UserId, password: Password) -> Option<End> {
        if let Some(login) = &self.login {
            let reason = format!("already logged in as {}", login.user_id);
            self.fail(Failure::new(ErrorCode::Conflict, reason));
            return None;
        }
        let user_id = match self.shared.auth.login(&user_id, &password).await {
            Ok(registered) => registered,
            Err(failure) => {
                let unauthorized = failure.error_code == ErrorCode::Unauthorized;
                if unauthorized {
                    tracing::info!(peer = %self.peer, user = %user_id, "login failed");
                }
                self.fail(failure);
                if unauthorized {
                    self.failed_logins += 1;
                    if self.failed_logins >= MAX_FAILED_LOGINS {
                        return Some(End::TooManyFailedLogins);
                    }
                }
                return None;
            }
        };
        let outbox = Outbox::new(self.shared.config.outbox_capacity);
        self.shared.hub.join(Member {
            conn_id: self.conn_id,
            user_id: user_id.clone(),
            outbox: outbox.clone(),
        });
        self.login_deadline = None;
        self.login = Some(LoggedIn {
            user_id: user_id.clone(),
            outbox,
        });
        tracing::info!(peer = %self.peer, user = %user_id, conn = self.conn_id, "logged in");
        // Registered first, mailbox read second: a private message accepted in between is
        // either in the mailbox (the store's ordering contract) or in our outbox.
        let key = user_id.key();
        let pending = match self.shared.store.pending(key.clone()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(user = %user_id, error = %e, "cannot read mailbox");
                self.out.push_reply(&Reply::fail(
                    ErrorCode::Unavailable,
                    "storage unavailable, try again later",
                ));
                return Some(End::Error);
            }
        };
        let delivered: Vec<u64> = pending.iter().map(|m| m.id).collect();
        // The ack is the session's first frame: nothing from the outbox has been written.
        self.out.push_reply(&Reply::Message { messages: pending });
        if let Err(end) = self.write_out().await {
            return Some(end);
        }
        if !delivered.is_empty() {
            // Written to the socket: now they may go. A crash before this line delivers them
            // again at the next login rather than losing them.
            if let Err(e) = self.shared.store.delete_delivered(key, delivered).await {
                tracing::error!(user = %user_id, error = %e, "cannot delete delivered messages");
            }
        }
        None
    }

    /// Writes the buffer out, then frees it. Most writes complete at once; only a full
    /// socket makes it wait (boxed: the waiting state stays off the idle session's future).
    async fn write_out(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.try_write()?;
        if self.out_unwritten() {
            Box::pin(self.write_blocked(true)).await?;
        }
        self.clear_out();
        Ok(())
    }

    /// Empties the write buffer (and frees it).
    fn clear_out(&mut self) {
        self.out.clear();
        self.out_written = 0;
    }

    /// Whether part of the write buffer has not been taken by the socket yet.
    fn out_unwritten(&mut self) -> bool {
        self.out_written < self.out.pending().len()
    }

    /// Writes the buffer from `out_written` on, until done or the socket is full.
    fn try_write(&mut self) -> Result<(), End> {
        let buf = self.out.pending();
        while self.out_written < buf.len() {
            match self.stream.try_write(&buf[self.out_written..]) {
                Ok(n) => self.out_written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(End::Error),
            }
        }
        Ok(())
    }

    /// Waits for the socket to take the rest of the buffer. With `watch_kicks`, a kick
    /// meanwhile ends it at once if the peer is a slow consumer, and a takeover or shutdown
    /// gives it [`FINAL_WRITE`] more; without (the goodbye), the caller bounds the wait.
    async fn write_blocked(&mut self, watch_kicks: bool) -> Result<(), End> {
        let mut deadline: Option<Instant> = None;
        while self.out_unwritten() {
            let watch = watch_kicks && deadline.is_none();
            tokio::select! {
                biased;
                r = self.stream.writable() => {
                    if r.is_err() {
                        return Err(End::Error);
                    }
                    self.try_write()?;
                }
                () = self.shared.shutdown.cancelled(), if watch => {
                    deadline = Some(Instant::now() + FINAL_WRITE);
                }
                () = outbox_changed(&self.login), if watch => {
                    self.wake_pending = true;
                    match self.login.as_ref().and_then(|l| l.outbox.kicked()) {
                        Some(KickReason::SlowConsumer) => return Err(End::SlowConsumer),
                        Some(KickReason::TakenOver | KickReason::Shutdown) => {
                            deadline = Some(Instant::now() + FINAL_WRITE);
                        }
                        None => {}
                    }
                }
                () = sleep_until(deadline) => return Err(End::Error),
            }
        }
        Ok(())
    }

    /// Says goodbye as the end calls for, and tells the hub.
    async fn finish(mut self, end: End) {
        // Leave the hub before the last write: from then on no message is queued for this
        // session, and a private message to this user goes to their mailbox instead of an
        // outbox that is about to close (it would otherwise be echoed, then lost). On
        // shutdown the hub is going away with every session.
        if let Some(login) = &self.login
            && end != End::Shutdown
        {
            self.shared.hub.leave(&login.user_id, self.conn_id);
        }
        match end {
            End::TakenOver => {
                let _ = self.drain_outbox();
                self.out
                    .push_reply(&Reply::fail(ErrorCode::Conflict, "logged in elsewhere"));
            }
            End::Shutdown => {
                let _ = self.drain_outbox();
                self.out
                    .push_reply(&Reply::fail(ErrorCode::Unavailable, "server shutting down"));
            }
            End::SlowConsumer | End::Error | End::Eof => {
                self.keep_undelivered_private().await;
                self.clear_out();
            }
            // What was queued up to the leave goes out before the close.
            End::Exit => {
                let _ = self.drain_outbox();
            }
            End::TooManyFailedLogins | End::FrameTooLarge | End::LoginTimeout => {}
        }
        if !self.out.is_empty() {
            let written = timeout(FINAL_WRITE, self.write_blocked(false)).await;
            if !matches!(written, Ok(Ok(()))) {
                // The peer did not take it all: keep its private messages for next time.
                self.keep_undelivered_private().await;
            }
            self.clear_out();
        }
        let _ = timeout(FINAL_WRITE, self.stream.shutdown()).await;
        if let Some(login) = &self.login {
            tracing::info!(peer = %self.peer, user = %login.user_id, conn = self.conn_id, reason = ?end, "session ended");
        } else {
            tracing::debug!(peer = %self.peer, reason = ?end, "connection closed");
        }
    }
}

/// Resolves on the server's shutdown, but only before login: a logged-in session learns of
/// it from its outbox ([`KickReason::Shutdown`]).
async fn shutdown_before_login(
    login: &Option<LoggedIn>,
    shutdown: &tokio_util::sync::CancellationToken,
) {
    match login {
        Some(_) => std::future::pending().await,
        None => shutdown.cancelled().await,
    }
}

/// Waits for the outbox to change; never resolves before login.
async fn outbox_changed(login: &Option<LoggedIn>) {
    match login {
        Some(l) => l.outbox.changed().await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Stores in the mailbox the private messages to this user that were echoed to their
    /// senders but never reached the socket: those still in the outbox, and those in the
    /// part of the write buffer the socket did not take. Called once the session has left
    /// the hub, so nothing more is queued. The user gets them at the next login.
    async fn keep_undelivered_private(&mut self) {
        let Some(login) = &self.login else {
            return;
        };
        let me = Recipient::User(login.user_id.clone());
        let mut kept: Vec<ChatMessage> = Vec::new();
        for reply in self.out.unwritten_replies(self.out_written) {
            if let Reply::Message { messages } = reply {
                kept.extend(messages.into_iter().filter(|m| m.to == me));
            }
        }
        for item in login.outbox.take().items {
            if let Out::Chat(obj) = item
                && let Ok(m) = serde_json::from_slice::<ChatMessage>(&obj)
                && m.to == me
            {
                kept.push(m);
            }
        }
        if kept.is_empty() {
            return;
        }
        let key = login.user_id.key();
        let stores: Vec<_> = kept
            .into_iter()
            .map(|m| self.shared.store.enqueue(key.clone(), m))
            .collect();
        let total = stores.len();
        let mut lost = 0usize;
        for store in stores {
            if let Err(e) = store.await {
                lost += 1;
                tracing::error!(user = %login.user_id, error = %e, "undelivered private message lost");
            }
        }
        tracing::info!(user = %login.user_id, kept = total - lost, lost, "undelivered private messages kept for the next login");
    }
}

/// Resolves when the login deadline passes; never once logged in.
async fn deadline_passed(deadline: &mut Option<Pin<Box<Sleep>>>) {
    match deadline {
        Some(d) => d.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; never resolves without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
