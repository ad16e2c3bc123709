//! The end of a session: leave the hub, say goodbye as the end calls for, keep the private
//! messages that did not reach the socket, close.

use simpletextim_proto::{ChatMessage, ErrorCode, Reply};
use tokio::time::{Instant, timeout, timeout_at};

use super::{End, FINAL_WRITE, Session};
use crate::store::RevocationKind;
use crate::wire::Out;

/// What a session whose password was changed meanwhile is told (`fail 401`) before it is
/// closed.
pub(crate) const PASSWORD_CHANGED: &str = "your password was changed; log in again";
/// What a session whose account was deleted meanwhile is told (`fail 401`) before it is
/// closed.
pub(crate) const ACCOUNT_DELETED: &str = "your account was deleted";

impl Session {
    /// Says goodbye as the end calls for, and tells the hub.
    pub(super) async fn finish(mut self, end: End) {
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
                self.drain_to_the_end().await;
                self.conn
                    .queue_reply(&Reply::fail(ErrorCode::Conflict, "logged in elsewhere"));
            }
            End::Shutdown => {
                self.drain_to_the_end().await;
                self.conn
                    .queue_reply(&Reply::fail(ErrorCode::Unavailable, "server shutting down"));
            }
            // What was queued before the hub removed the session (it was still logged in
            // then) goes out first, as on a takeover.
            End::Revoked(kind) => {
                self.drain_to_the_end().await;
                let reason = match kind {
                    RevocationKind::PasswordChanged => PASSWORD_CHANGED,
                    RevocationKind::AccountDeleted => ACCOUNT_DELETED,
                };
                self.conn
                    .queue_reply(&Reply::fail(ErrorCode::Unauthorized, reason));
            }
            End::SlowConsumer
            | End::Error
            | End::Eof
            | End::WriteStalled
            | End::Protocol(_)
            | End::Unresponsive => {
                self.keep_undelivered_private().await;
                self.conn.clear_output();
            }
            // What was queued up to the leave goes out before the close.
            End::Exit => {
                self.drain_to_the_end().await;
            }
            End::TooManyFailedLogins | End::FrameTooLarge | End::LoginTimeout | End::Refused => {}
        }
        // A WebSocket's last frame: the close, with why (nothing on other framings).
        self.conn.queue_close(close_frame(end));
        if self.conn.has_output() {
            let written = timeout(FINAL_WRITE, self.write_blocked(false)).await;
            if !matches!(written, Ok(Ok(()))) {
                // The peer did not take it all: keep its private messages for next time.
                self.keep_undelivered_private().await;
            }
            self.conn.clear_output();
        }
        let peer = self.conn.peer();
        let _ = timeout(FINAL_WRITE, self.conn.shutdown()).await;
        if let Some(login) = &self.login {
            tracing::info!(%peer, user = %login.user_id, conn = self.conn_id, reason = ?end, "session ended");
        } else {
            tracing::debug!(%peer, reason = ?end, "connection closed");
        }
    }
}

impl Session {
    /// Drains the outbox and the presence notices due, to the end (a drain writes a bounded
    /// number of notices: what it wrote is written out before the next), within
    /// [`FINAL_WRITE`]; what the client does not take by then is not waited for.
    async fn drain_to_the_end(&mut self) {
        let deadline = Instant::now() + FINAL_WRITE;
        loop {
            self.wake_pending = false;
            let _ = self.drain_outbox();
            if !std::mem::take(&mut self.wake_pending) {
                return;
            }
            if self.conn.try_flush().is_err() {
                return;
            }
            if self.conn.has_output()
                && !matches!(
                    timeout_at(deadline, self.write_blocked(false)).await,
                    Ok(Ok(()))
                )
            {
                return;
            }
        }
    }
}

/// The WebSocket close a session ending this way sends: its status code and reason; `None`
/// to answer the client's own close (on an EOF), or to send none (the socket failed or
/// takes nothing).
fn close_frame(end: End) -> Option<(u16, &'static str)> {
    use crate::wire::websocket::close;
    Some(match end {
        End::Exit => (close::NORMAL, "bye"),
        End::TakenOver => (close::NORMAL, "logged in elsewhere"),
        End::Shutdown => (close::GOING_AWAY, "server shutting down"),
        End::Unresponsive => (close::GOING_AWAY, "no answer to ping"),
        End::Protocol(why) => (close::PROTOCOL, why),
        End::FrameTooLarge => (close::TOO_BIG, "message over the size limit"),
        End::SlowConsumer => (close::POLICY, "slow consumer"),
        End::TooManyFailedLogins => (close::POLICY, "too many failed logins"),
        End::LoginTimeout => (close::POLICY, "login timed out"),
        End::Refused => (close::POLICY, "connection refused"),
        End::Revoked(_) => (close::POLICY, "login revoked"),
        End::Eof | End::Error | End::WriteStalled => return None,
    })
}

impl Session {
    /// Stores in the mailbox the private messages to this user that were echoed to their
    /// senders but never reached the socket: those in the part of the write buffer the
    /// socket did not take, then those still in the outbox. Called once the session has left
    /// the hub, so nothing more is queued. The user gets them at the next login.
    ///
    /// Not with acknowledged delivery: every private message such a session was sent is in
    /// the mailbox already, until acked.
    async fn keep_undelivered_private(&mut self) {
        let Some(login) = &self.login else {
            return;
        };
        if login.outbox.has_acks() {
            return;
        }
        let me = &login.user_id;
        let mut kept: Vec<ChatMessage> = self
            .conn
            .unwritten_private()
            .map(|p| p.message(me.clone()))
            .collect();
        kept.extend(
            login
                .outbox
                .take(u64::MAX)
                .items
                .iter()
                .filter_map(|q| match &q.item {
                    Out::Private(p) => Some(p.message(me.clone())),
                    // A private message to oneself sent with a ref: kept without the ref.
                    Out::Echo(e) => e.private.as_ref().map(|p| p.message(me.clone())),
                    Out::Chat(_) => None,
                }),
        );
        if kept.is_empty() {
            return;
        }
        let key = login.user_id.key();
        let store = &self.shared.config.store;
        // Every store request is made before any is awaited: they commit together.
        let stores: Vec<_> = kept
            .into_iter()
            .map(|m| store.enqueue(key.clone(), m))
            .collect();
        let total = stores.len();
        let mut lost = 0usize;
        for stored in stores {
            if let Err(e) = stored.await {
                lost += 1;
                tracing::error!(user = %login.user_id, error = %e, "undelivered private message lost");
            }
        }
        tracing::info!(user = %login.user_id, kept = total - lost, lost, "undelivered private messages kept for the next login");
    }
}
