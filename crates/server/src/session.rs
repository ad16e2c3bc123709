//! One task per connection: read frames, handle commands, write what the hub queued.
//!
//! The session owns its socket and identity. It waits on three things at once: a kick (a
//! takeover, being cut off as a slow consumer, or the server shutting down), its outbox
//! (chat and notices the hub queued, drained in batches into one write), and the next frame
//! from the client. Replies to the client's own commands go through the same write buffer
//! after everything already queued, so a client sees its echoes and `fail`s in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use simpletextim_proto::{
    CodecError, Command, ErrorCode, Failure, MessageText, Password, Recipient, Reply, ServerCodec,
    UserId,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::WriteHalf;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::codec::FramedRead;

use crate::Shared;
use crate::hub::{Kick, KickReason, Member};
use crate::wire::{FrameWriter, Out};

/// Failed logins after which the connection is closed.
const MAX_FAILED_LOGINS: u32 = 3;
/// Most outbox items moved into the write buffer per round.
const OUTBOX_BATCH: usize = 512;
/// How long a last write (the `fail` before a close) may take before we give up on a peer
/// that does not read.
const FINAL_WRITE: Duration = Duration::from_secs(2);
/// Write-buffer capacity kept between writes; a bigger one (after a burst) is freed.
const KEEP_WRITE_CAPACITY: usize = 16 * 1024;

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
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Bucket {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.limit.per_sec;
        self.tokens = (self.tokens + refill).min(f64::from(self.limit.burst));
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
}

struct LoggedIn {
    user_id: UserId,
    rx: mpsc::Receiver<Out>,
}

struct Session {
    shared: Arc<Shared>,
    conn_id: u64,
    peer: SocketAddr,
    kick: Arc<Kick>,
    out: FrameWriter,
    login: Option<LoggedIn>,
    failed_logins: u32,
    bucket: Option<Bucket>,
}

/// Serves one connection until it ends.
pub(crate) async fn run(
    mut stream: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let kick = Kick::new(&shared.shutdown);
    let bucket = shared.config.rate_limit.map(Bucket::new);
    let codec = ServerCodec::with_limits(
        shared.config.max_command_frame,
        simpletextim_proto::codec::DEFAULT_MAX_REPLY_FRAME,
    );
    let mut session = Session {
        shared,
        conn_id,
        peer,
        kick,
        out: FrameWriter::new(),
        login: None,
        failed_logins: 0,
        bucket,
    };
    let (r, mut w) = stream.split();
    let mut reader = FramedRead::new(r, codec);
    let end = session.serve(&mut reader, &mut w).await;
    session.finish(end, &mut w).await;
}

impl Session {
    async fn serve(
        &mut self,
        reader: &mut FramedRead<tokio::net::tcp::ReadHalf<'_>, ServerCodec>,
        w: &mut WriteHalf<'_>,
    ) -> End {
        let mut batch = Vec::with_capacity(0);
        loop {
            let kick = self.kick.clone();
            tokio::select! {
                biased;
                () = kick.token().cancelled() => return self.kicked(),
                n = recv_outbox(&mut self.login, &mut batch) => {
                    if n == 0 {
                        // The hub dropped us without a kick reason yet: treat as cut off.
                        return self.kick.reason().map_or(End::Shutdown, kick_end);
                    }
                    for item in batch.drain(..) {
                        self.out.push(&item);
                    }
                }
                frame = reader.next() => match frame {
                    None => return End::Eof,
                    Some(Err(CodecError::FrameTooLarge { max })) => {
                        self.fail(Failure::new(
                            ErrorCode::TooLarge,
                            format!("frame over the size limit of {max} bytes"),
                        ));
                        return End::FrameTooLarge;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "read failed");
                        return End::Error;
                    }
                    Some(Ok(Err(failure))) => self.fail(failure),
                    Some(Ok(Ok(command))) => {
                        if let Some(end) = self.handle(command, w).await {
                            return end;
                        }
                    }
                },
            }
            if let Err(end) = self.write_out(w).await {
                return end;
            }
        }
    }

    fn kicked(&self) -> End {
        self.kick.reason().map_or(End::Shutdown, kick_end)
    }

    fn fail(&mut self, failure: Failure) {
        self.drain_outbox();
        self.out.push_reply(&Reply::Fail { fail: failure });
    }

    fn reply(&mut self, reply: &Reply) {
        self.drain_outbox();
        self.out.push_reply(reply);
    }

    /// Moves what the hub queued into the write buffer, so a direct reply comes after it.
    fn drain_outbox(&mut self) {
        if let Some(login) = &mut self.login {
            while let Ok(item) = login.rx.try_recv() {
                self.out.push(&item);
            }
        }
    }

    /// Handles one command. Returns how the session ends, if it does.
    async fn handle(&mut self, command: Command, w: &mut WriteHalf<'_>) -> Option<End> {
        match command {
            Command::Login { user_id, password } => return self.login(user_id, password, w).await,
            Command::Exit => {
                self.drain_outbox();
                return Some(End::Exit);
            }
            Command::Send { .. } | Command::List if self.login.is_none() => {
                self.fail(Failure::new(ErrorCode::Unauthorized, "login required"));
            }
            _ if !self.bucket.as_mut().is_none_or(Bucket::allow) => {
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

    async fn send(&mut self, to: Recipient, message: MessageText) {
        let Some(login) = &self.login else { return };
        let from = login.user_id.clone();
        match to {
            Recipient::Everyone => self.shared.hub.publish(&from, message),
            Recipient::User(to) => {
                if let Err(failure) = self
                    .shared
                    .hub
                    .send_private(&from, self.conn_id, &to, message)
                    .await
                {
                    self.fail(failure);
                }
            }
        }
    }

    async fn login(
        &mut self,
        user_id: UserId,
        password: Password,
        w: &mut WriteHalf<'_>,
    ) -> Option<End> {
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
        let (tx, rx) = mpsc::channel(self.shared.config.outbox_capacity);
        self.shared.hub.join(Member {
            conn_id: self.conn_id,
            user_id: user_id.clone(),
            tx,
            kick: self.kick.clone(),
        });
        self.login = Some(LoggedIn {
            user_id: user_id.clone(),
            rx,
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
        let up_to = pending.iter().map(|m| m.id).max();
        // The ack is the session's first frame: nothing from the outbox has been written.
        self.out.push_reply(&Reply::Message { messages: pending });
        if let Err(end) = self.write_out(w).await {
            return Some(end);
        }
        if let Some(up_to) = up_to {
            // Written to the socket: now they may go. A crash before this line delivers them
            // again at the next login rather than losing them.
            if let Err(e) = self.shared.store.delete_delivered(key, up_to).await {
                tracing::error!(user = %user_id, error = %e, "cannot delete delivered messages");
            }
        }
        None
    }

    /// Writes the buffer out. A kick during the write ends it at once if the peer is a
    /// slow consumer; otherwise the write gets [`FINAL_WRITE`] more to finish.
    async fn write_out(&mut self, w: &mut WriteHalf<'_>) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let buf = self.out.pending();
        let mut off = 0;
        let mut deadline: Option<Instant> = None;
        while off < buf.len() {
            let n = match deadline {
                None => tokio::select! {
                    biased;
                    r = w.write(&buf[off..]) => r,
                    () = self.kick.token().cancelled() => {
                        if self.kick.reason() == Some(KickReason::SlowConsumer) {
                            return Err(End::SlowConsumer);
                        }
                        deadline = Some(Instant::now() + FINAL_WRITE);
                        continue;
                    }
                },
                Some(d) => match tokio::time::timeout_at(d, w.write(&buf[off..])).await {
                    Ok(r) => r,
                    Err(_) => return Err(End::Error),
                },
            };
            match n {
                Ok(0) | Err(_) => return Err(End::Error),
                Ok(n) => off += n,
            }
        }
        self.out.clear(KEEP_WRITE_CAPACITY);
        Ok(())
    }

    /// Says goodbye as the end calls for, and tells the hub.
    async fn finish(mut self, end: End, w: &mut WriteHalf<'_>) {
        match end {
            End::TakenOver => {
                self.drain_outbox();
                self.out
                    .push_reply(&Reply::fail(ErrorCode::Conflict, "logged in elsewhere"));
            }
            End::Shutdown => {
                self.drain_outbox();
                self.out
                    .push_reply(&Reply::fail(ErrorCode::Unavailable, "server shutting down"));
            }
            End::SlowConsumer | End::Error | End::Eof => self.out.clear(0),
            End::Exit | End::TooManyFailedLogins | End::FrameTooLarge => {}
        }
        if !self.out.is_empty() {
            let buf = self.out.take();
            let _ = timeout(FINAL_WRITE, w.write_all(&buf)).await;
        }
        let _ = timeout(FINAL_WRITE, w.shutdown()).await;
        if let Some(login) = &self.login {
            tracing::info!(peer = %self.peer, user = %login.user_id, conn = self.conn_id, reason = ?end, "session ended");
            if end != End::Shutdown {
                self.shared.hub.leave(&login.user_id, self.conn_id);
            }
        } else {
            tracing::debug!(peer = %self.peer, reason = ?end, "connection closed");
        }
    }
}

fn kick_end(reason: KickReason) -> End {
    match reason {
        KickReason::TakenOver => End::TakenOver,
        KickReason::SlowConsumer => End::SlowConsumer,
    }
}

/// Waits for outbox items; never resolves before login.
async fn recv_outbox(login: &mut Option<LoggedIn>, batch: &mut Vec<Out>) -> usize {
    match login {
        Some(l) => l.rx.recv_many(batch, OUTBOX_BATCH).await,
        None => std::future::pending().await,
    }
}
