//! What each command does: `login`, `send`, `list`, `history`, `ack` and `exit`, and the
//! checks before them (logged in, within the user's flood control).

use simpletextim_proto::{
    Anchor, ChatMessage, Command, ErrorCode, Failure, MessageText, Password, Recipient, Ref, Reply,
    Request, UserId,
};

use tokio::time::Instant;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::conn::Filled;
use super::{End, LoggedIn, Session, boxed_fired};
use crate::Shared;
use crate::cluster::Routed;
use crate::hub::{Member, PendingPrivate};
use crate::limits::ceil_secs;
use crate::metrics::LoginResult;
use crate::outbox::{Limits, Outbox};
use crate::presence::{Bell, Reader};
use crate::store::{
    Conversation, HistoryPermit, HistoryQuery, PageLimit, ReserveError, StoreError,
};
use crate::wire::encode_ref;

/// What is left of a private message after [`Session::send_private_now`].
enum PrivateRest {
    /// The history writer is full: wait for a slot, then send.
    WaitForSlot(UserId, MessageText),
    /// Sent; its mailbox write (or its offline recipient's lookup) is still to wait for.
    Pending(Box<PendingPrivate>),
}

/// Failed logins after which the connection is closed.
const MAX_FAILED_LOGINS: u32 = 3;
/// Bytes of later commands read while a login is checked (to notice a client that went
/// away); past this the socket is not read until the login is done.
const MAX_READ_AHEAD: usize = 16 * 1024;

/// A login in progress from one address, counted until dropped.
struct InFlight {
    shared: Arc<Shared>,
    addr: IpAddr,
}

impl InFlight {
    /// Takes one of `addr`'s places for a login in progress, if it has one left.
    fn begin(shared: &Arc<Shared>, addr: IpAddr) -> Option<InFlight> {
        shared.throttle.begin(addr).then(|| InFlight {
            shared: shared.clone(),
            addr,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.throttle.end(self.addr);
    }
}

/// The rest of a command that waits (for the password check, the store, a slot of the
/// history writer, the cluster bus), boxed: the caller awaits it at once.
pub(super) type Waiting<'a> = Pin<Box<dyn Future<Output = Result<(), End>> + Send + 'a>>;

impl Session {
    /// Handles one request. Every reply that answers it (`fail`, `list`, the login ack)
    /// carries its `ref`. What is done at once is done here; a command that has to wait
    /// returns the boxed rest of it, which the caller awaits before the next command.
    ///
    /// Not an `async fn`: its state (the request, and its parts once taken apart) would be
    /// in the future of every session, idle or not; only the box's pointer is.
    ///
    /// # Errors
    /// How the session ends, if the command ends it.
    pub(super) fn handle(&mut self, request: Request) -> Result<Option<Waiting<'_>>, End> {
        let Request { r#ref, command } = request;
        if let Err(wait) = self.charge(&command) {
            let secs = ceil_secs(wait);
            let reason = format!("rate limit exceeded, try again in {secs} s");
            self.fail_ref(r#ref, Failure::new(ErrorCode::RateLimited, reason));
            return Ok(None);
        }
        match command {
            Command::Login {
                user_id,
                password,
                acks,
            } => {
                return Ok(Some(Box::pin(self.login(user_id, password, acks, r#ref))));
            }
            Command::Exit => {
                let _ = self.drain_outbox();
                return Err(End::Exit);
            }
            Command::Send { .. }
            | Command::List
            | Command::History { .. }
            | Command::Ack { .. }
                if self.login.is_none() =>
            {
                self.fail_ref(
                    r#ref,
                    Failure::new(ErrorCode::Unauthorized, "login required"),
                );
            }
            // Sent at once, unless the history writer is full.
            Command::Send {
                to: Recipient::Everyone,
                message,
            } => {
                if self.shared.cluster.is_some() {
                    return Ok(Some(Box::pin(async move {
                        self.cluster_publish(message, r#ref).await;
                        Ok(())
                    })));
                }
                return Ok(self.publish_or_wait(message, r#ref));
            }
            // A private message to an online recipient, the usual case, is delivered at
            // once; only a mailbox write or a full history writer returns the boxed rest.
            Command::Send {
                to: Recipient::User(to),
                message,
            } if self.shared.cluster.is_none() => {
                if let Some(rest) = self.send_private_now(to, message, &r#ref) {
                    return Ok(Some(Box::pin(async move {
                        self.send_private_rest(rest, r#ref).await;
                        Ok(())
                    })));
                }
            }
            command @ (Command::Send { .. } | Command::History { .. }) => {
                return Ok(Some(Box::pin(async move {
                    self.with_store(command, r#ref).await;
                    Ok(())
                })));
            }
            Command::List => match self.shared.cluster.clone() {
                None => {
                    let list = self.shared.hub.list();
                    let r#ref = r#ref.as_ref().map(encode_ref);
                    self.reply_list(r#ref.as_deref(), &list);
                }
                // Over every node: read from the presence registry.
                Some(cluster) => {
                    return Ok(Some(Box::pin(async move {
                        match cluster.list().await {
                            Ok(list) => {
                                let r#ref = r#ref.as_ref().map(encode_ref);
                                self.reply_list(r#ref.as_deref(), &list);
                            }
                            Err(failure) => self.fail_ref(r#ref, failure),
                        }
                        Ok(())
                    })));
                }
            },
            // As a private message: the store's delete waits.
            Command::Ack { id } => {
                return Ok(Some(Box::pin(async move {
                    self.ack(id, r#ref).await;
                    Ok(())
                })));
            }
        }
        Ok(None)
    }

    /// Charges `command` to the user's flood-control bucket (nothing before login, when
    /// only `login` and `exit` do anything); if it is refused, how long until it would not be.
    fn charge(&self, command: &Command) -> Result<(), Duration> {
        match &self.bucket {
            Some(bucket) => self.shared.flood.charge(bucket, command),
            None => Ok(()),
        }
    }

    /// The commands that wait for the store: a private message (its recipient may be
    /// offline), `history`. (A public `send` is handled before.)
    async fn with_store(&mut self, command: Command, r#ref: Option<Ref>) {
        match command {
            Command::Send {
                to: Recipient::User(to),
                message,
            } => self.send_private(to, message, r#ref).await,
            Command::History {
                with,
                anchor,
                limit,
            } => {
                let limit = limit.map_or(PageLimit::DEFAULT, |l| {
                    PageLimit::new(l.get() as u64).unwrap_or(PageLimit::MAX)
                });
                self.history(with, anchor, limit, r#ref).await;
            }
            _ => {}
        }
    }

    /// Sends a public message, kept through `history` (a slot of the history writer;
    /// `None` once the writer is closed, at shutdown); the echo carries `r#ref`.
    fn publish(
        &mut self,
        message: MessageText,
        r#ref: Option<Ref>,
        history: Option<HistoryPermit>,
    ) {
        let Some(login) = &self.login else { return };
        // The echo carries the ref, encoded once here.
        let echo_ref = r#ref.as_ref().map(encode_ref);
        let hub = &self.shared.hub;
        hub.publish(
            &login.user_id,
            self.conn_id,
            message,
            echo_ref.as_ref(),
            history,
        );
    }

    /// Sends a public message now if the history writer has a free slot (the usual case)
    /// or is closed; otherwise returns the boxed future that waits for a slot, then sends it
    /// (backpressure from a writer that is behind).
    fn publish_or_wait(&mut self, message: MessageText, r#ref: Option<Ref>) -> Option<Waiting<'_>> {
        match self.shared.history.try_reserve() {
            Ok(permit) => self.publish(message, r#ref, Some(permit)),
            Err(ReserveError::Closed) => self.publish(message, r#ref, None),
            Err(ReserveError::Full) => {
                return Some(Box::pin(async move {
                    self.publish_when_room(message, r#ref).await;
                    Ok(())
                }));
            }
        }
        None
    }

    /// Sends a public message once the history writer has room for it.
    async fn publish_when_room(&mut self, message: MessageText, r#ref: Option<Ref>) {
        let permit = self.reserve_history().await;
        self.publish(message, r#ref, permit);
    }

    /// A slot of the history writer, waiting while it is full; `None` once it is closed
    /// (the server is shutting down: the message is delivered, not kept).
    async fn reserve_history(&self) -> Option<HistoryPermit> {
        match self.shared.history.reserve().await {
            Ok(permit) => Some(permit),
            Err(e) => {
                tracing::debug!(error = %e, "message not kept in the history");
                None
            }
        }
    }

    /// Cluster mode: a public message numbered and published by the bus; this session
    /// gets its echo from this node's subscription, like every other. Waits for Redis's
    /// answer, so that the next command is numbered after it (a sender's order).
    async fn cluster_publish(&mut self, message: MessageText, r#ref: Option<Ref>) {
        let (Some(login), Some(cluster)) = (&self.login, self.shared.cluster.clone()) else {
            return;
        };
        let echo_ref = r#ref.as_ref().map(encode_ref);
        let from = login.user_id.clone();
        let hub = &self.shared.hub;
        let sent = cluster
            .publish(
                hub.last_id(),
                &from,
                self.conn_id,
                message.as_str(),
                echo_ref.as_ref(),
            )
            .await;
        match sent {
            Ok(id) => hub.observe_id(id),
            Err(failure) => self.fail_ref(r#ref, failure),
        }
    }

    /// Cluster mode: a private message numbered by the bus. Published to its recipient's
    /// node when the recipient is online there without acks (the echo comes back on this
    /// node's channel); otherwise put in the mailbox here (unknown user: `fail 404`), and
    /// once committed, delivered from there by the recipient's node if the recipient logged
    /// in meanwhile, and echoed.
    async fn cluster_private(
        &mut self,
        cluster: Arc<crate::cluster::Cluster>,
        to: UserId,
        message: MessageText,
        r#ref: Option<Ref>,
    ) {
        let Some(login) = &self.login else { return };
        let from = login.user_id.clone();
        let echo_ref = r#ref.as_ref().map(encode_ref);
        let (conn, text) = (self.conn_id, message.as_str());
        let hub = &self.shared.hub;
        let routed = cluster
            .send_private(hub.last_id(), &from, conn, &to, text, echo_ref.as_ref())
            .await;
        let (id, ts) = match routed {
            Ok(Routed::Sent) => return,
            Ok(Routed::Store { id, ts }) => (id, ts),
            Err(failure) => return self.fail_ref(r#ref, failure),
        };
        hub.observe_id(id);
        let store = self.shared.config.store.clone();
        let to = match store.account(to.key()).await {
            Ok(Some(account)) => account.user_id,
            Ok(None) => {
                let failure = Failure::new(ErrorCode::NotFound, format!("no such user: {to}"));
                return self.fail_ref(r#ref, failure);
            }
            Err(e) => return self.storage_failed(&e, r#ref),
        };
        let msg = ChatMessage {
            r#ref: None,
            user_id: from.clone(),
            message: text.to_owned(),
            to: Recipient::User(to.clone()),
            id,
            ts,
        };
        match store.enqueue(to.key(), msg).await {
            Ok(()) => {}
            Err(StoreError::NoSuchUser(_)) => {
                let failure = Failure::new(ErrorCode::NotFound, format!("no such user: {to}"));
                return self.fail_ref(r#ref, failure);
            }
            Err(StoreError::MailboxFull(_)) => {
                let reason = format!("mailbox full: {to} has too many unread messages");
                return self.fail_ref(r#ref, Failure::new(ErrorCode::Unavailable, reason));
            }
            Err(e) => return self.storage_failed(&e, r#ref),
        }
        let routed = cluster
            .route_stored(&from, conn, &to, text, (id, ts), echo_ref.as_ref())
            .await;
        if routed.is_err() {
            // Kept in the mailbox (delivered at the recipient's next login): echoed here.
            let p = crate::hub::BusPrivate {
                from,
                to,
                text: text.to_owned(),
                id,
                ts,
                deliver: false,
                stored: true,
                echo: Some((conn, echo_ref)),
            };
            hub.deliver_private(p, None);
        }
    }

    /// Answers a command the store failed: `fail 503`.
    fn storage_failed(&mut self, e: &StoreError, r#ref: Option<Ref>) {
        tracing::error!(error = %e, "store failure");
        let failure = Failure::new(
            ErrorCode::Unavailable,
            "storage unavailable, try again later",
        );
        self.fail_ref(r#ref, failure);
    }

    /// Sends a private message (not in cluster mode) as far as it goes without waiting:
    /// with a free slot of the history writer (or a closed writer), to an online
    /// recipient without acknowledged delivery, it is delivered and echoed here. Otherwise
    /// returns what is left, for [`Session::send_private_rest`].
    fn send_private_now(
        &self,
        to: UserId,
        message: MessageText,
        r#ref: &Option<Ref>,
    ) -> Option<PrivateRest> {
        let login = self.login.as_ref()?;
        let history = match self.shared.history.try_reserve() {
            Ok(permit) => Some(permit),
            Err(e @ ReserveError::Closed) => {
                // As `reserve_history`: shutting down, the message is delivered, not kept.
                tracing::debug!(error = %e, "message not kept in the history");
                None
            }
            Err(ReserveError::Full) => return Some(PrivateRest::WaitForSlot(to, message)),
        };
        let echo_ref = r#ref.as_ref().map(encode_ref);
        self.shared
            .hub
            .send_private_now(
                &login.user_id,
                self.conn_id,
                &to,
                message,
                echo_ref,
                history,
            )
            .map(|pending| PrivateRest::Pending(Box::new(pending)))
    }

    /// What [`Session::send_private_now`] left to do; a `fail` carries `r#ref`.
    async fn send_private_rest(&mut self, rest: PrivateRest, r#ref: Option<Ref>) {
        match rest {
            PrivateRest::WaitForSlot(to, message) => self.send_private(to, message, r#ref).await,
            PrivateRest::Pending(pending) => {
                if let Err(failure) = self.shared.hub.finish_private(*pending).await {
                    self.fail_ref(r#ref, failure);
                }
            }
        }
    }

    /// Sends a private message; the echo, or the `fail`, carries `r#ref`.
    async fn send_private(&mut self, to: UserId, message: MessageText, r#ref: Option<Ref>) {
        if let Some(cluster) = self.shared.cluster.clone() {
            return self.cluster_private(cluster, to, message, r#ref).await;
        }
        let Some(login) = &self.login else { return };
        let echo_ref = r#ref.as_ref().map(encode_ref);
        let from = login.user_id.clone();
        // Taken before the hub's lock (a wait here is backpressure); given back unused if
        // the message goes to a mailbox, whose row `enqueue` writes.
        let history = self.reserve_history().await;
        let sent = self
            .shared
            .hub
            .send_private(&from, self.conn_id, &to, message, echo_ref, history)
            .await;
        if let Err(failure) = sent {
            self.fail_ref(r#ref, failure);
        }
    }

    /// `ack {id}`: the client holds every private message to it up to `id`. Those this
    /// session sent are deleted from the mailbox and forgotten; an id it never sent deletes
    /// nothing. Answers nothing on success (the protocol specifies no reply); `fail 400` in
    /// a session whose login did not ask for acks, `fail 503` when the store fails (the ids
    /// are then kept, for a later ack or the next login).
    async fn ack(&mut self, id: u64, r#ref: Option<Ref>) {
        let Some(login) = &self.login else { return };
        let Some(acked) = login.outbox.ack_up_to(id) else {
            let reason = r#"ack needs a login with "acks": true"#;
            self.fail_ref(r#ref, Failure::bad_request(reason));
            return;
        };
        if acked.is_empty() {
            return;
        }
        let store = &self.shared.config.store;
        let deleted = store.delete_delivered(login.user_id.key(), acked.clone());
        if let Err(e) = deleted.await {
            tracing::error!(user = %login.user_id, error = %e, "cannot delete acked messages");
            login.outbox.unack(acked);
            let reason = "storage unavailable, try again later";
            self.fail_ref(r#ref, Failure::new(ErrorCode::Unavailable, reason));
        }
    }

    /// Answers `history`: one page of the conversation with `with` (`*`: the public one; a
    /// user: the private one between this user and that one, both directions), read from
    /// the store after everything this session was already sent (read-your-writes: the
    /// writer's barrier), never under the hub's lock. `with` is answered with the account's
    /// registered spelling; a user id without an account is `fail 404`, a store failure
    /// `fail 503`.
    async fn history(
        &mut self,
        with: Recipient,
        anchor: Option<Anchor>,
        limit: PageLimit,
        r#ref: Option<Ref>,
    ) {
        let Some(login) = &self.login else { return };
        let asker = login.user_id.clone();
        let store = self.shared.config.store.clone();
        let with = match with {
            Recipient::Everyone => Recipient::Everyone,
            Recipient::User(user) => match store.account(user.key()).await {
                Ok(Some(account)) => Recipient::User(account.user_id),
                Ok(None) => {
                    let reason = format!("no such user: {user}");
                    self.fail_ref(r#ref, Failure::new(ErrorCode::NotFound, reason));
                    return;
                }
                Err(e) => return self.history_unavailable(&asker, &e, r#ref),
            },
        };
        let conversation = Conversation::with(&asker, &with);
        let query = match anchor {
            None => HistoryQuery::Latest,
            Some(Anchor::Before(id)) => HistoryQuery::Before(id),
            Some(Anchor::After(id)) => HistoryQuery::After(id),
        };
        // Every message this session was sent (echoed or delivered) was handed to the
        // writer before; once the writer has handed those to the store, the store's
        // ordering contract makes the page below see them.
        self.shared.history.barrier().await;
        match store.history(conversation, query, limit).await {
            Ok(page) => self.reply(&Reply::History {
                r#ref,
                with,
                messages: page.messages,
                more: page.more,
            }),
            Err(e) => self.history_unavailable(&asker, &e, r#ref),
        }
    }

    /// Answers a `history` the store failed: `fail 503`.
    fn history_unavailable(&mut self, asker: &UserId, e: &StoreError, r#ref: Option<Ref>) {
        tracing::error!(user = %asker, error = %e, "cannot read history");
        let failure = Failure::new(
            ErrorCode::Unavailable,
            "storage unavailable, try again later",
        );
        self.fail_ref(r#ref, failure);
    }

    /// Refuses a login that is throttled or over its address's logins in progress, checks
    /// the password, then starts the logged-in session.
    ///
    /// # Errors
    /// How the session ends: too many failed logins, the login deadline, the client gone,
    /// the store failing, or the ack's write.
    async fn login(
        &mut self,
        user_id: UserId,
        password: Password,
        acks: bool,
        r#ref: Option<Ref>,
    ) -> Result<(), End> {
        if let Some(login) = &self.login {
            let reason = format!("already logged in as {}", login.user_id);
            self.fail_ref(r#ref, Failure::new(ErrorCode::Conflict, reason));
            return Ok(());
        }
        let addr = self.conn.peer().ip();
        let key = user_id.key();
        let throttle = &self.shared.throttle;
        if let Err(wait) = throttle.check(addr, &key, Instant::now()) {
            // Not hashed, and not counted against the connection: it stays open.
            tracing::info!(peer = %self.conn.peer(), user = %user_id, "login throttled");
            self.shared.metrics.login(LoginResult::Throttled);
            let secs = ceil_secs(wait);
            let reason = format!("too many failed logins, try again in {secs} s");
            self.fail_ref(r#ref, Failure::new(ErrorCode::RateLimited, reason));
            return Ok(());
        }
        let slot = if self.shared.limits.is_exempt(addr) {
            None
        } else if let Some(slot) = InFlight::begin(&self.shared, addr) {
            Some(slot)
        } else {
            let reason = "too many logins in progress from this address, try again";
            self.shared.metrics.login(LoginResult::Refused);
            self.fail_ref(r#ref, Failure::new(ErrorCode::Unavailable, reason));
            return Ok(());
        };
        // Before the account is looked up: a revocation at or after it ends the session.
        let login_ms = crate::now_ms();
        let checked = self.check_password(&user_id, &password, &r#ref).await;
        drop(slot);
        let user_id = match checked? {
            Ok(registered) => {
                self.shared.throttle.succeeded(addr, &key);
                registered
            }
            Err(failure) => {
                let result = LoginResult::of_failure(failure.error_code);
                self.shared.metrics.login(result);
                if failure.error_code == ErrorCode::Unauthorized {
                    self.shared.throttle.failed(addr, &key, Instant::now());
                }
                return self.login_failed(&user_id, failure, r#ref);
            }
        };
        self.start(user_id, login_ms, acks, r#ref).await
    }

    /// Joins the hub as `user_id` (as registered), then writes the login ack with the
    /// messages kept in the mailbox, and deletes those once written; with `acks`, they stay
    /// in the mailbox until the client acks them.
    ///
    /// # Errors
    /// How the session ends: the account revoked meanwhile, the store failing, or the
    /// ack's write.
    async fn start(
        &mut self,
        user_id: UserId,
        login_ms: u64,
        acks: bool,
        r#ref: Option<Ref>,
    ) -> Result<(), End> {
        let limits = Limits {
            items: self.shared.config.outbox_capacity,
            bytes: self.shared.config.outbox_bytes,
        };
        let outbox = match acks {
            true => Outbox::new_acks(limits),
            false => Outbox::new(limits),
        };
        // Cluster mode: registered in the presence registry first (new to the cluster, or
        // taking over a session of another node); a bus that cannot be reached refuses the
        // login (`fail 503`), and the connection stays open.
        let cluster = self.shared.cluster.clone();
        // In cluster mode the `joined` is announced here when it comes back on the bus (so
        // in the bus's order), and the session reads the notices from its place there.
        let registered = match &cluster {
            None => None,
            Some(c) => match c.join(&self.shared.hub, &user_id, self.conn_id, acks).await {
                Ok(joined) => Some(joined),
                Err(failure) => {
                    self.shared.metrics.login(LoginResult::Refused);
                    self.fail_ref(r#ref, failure);
                    return Ok(());
                }
            },
        };
        // Registered with the presence bell before joining: a ring after the join is heard.
        let bell = Bell::new(self.shared.hub.presence());
        // Refused when the account was changed while its password was checked: the
        // session ends (`fail 401`) before anything of the user's is read. Its notices
        // start after its own `joined`.
        let joined = self.shared.hub.join_as(
            Member {
                conn_id: self.conn_id,
                user_id: user_id.clone(),
                outbox: outbox.clone(),
                login_ms,
            },
            registered.is_none(),
        );
        if joined.is_err() {
            self.shared.metrics.login(LoginResult::Refused);
            if let (Some(c), Some(r)) = (&cluster, &registered) {
                // Registered in Redis, not here: removed from the registry (the others are
                // told it left), and this node's sessions too if they had its `joined`.
                if r.new {
                    self.shared
                        .hub
                        .remote_notice(crate::presence::Notice::left(&user_id));
                }
                c.departures().send(&user_id, self.conn_id);
            }
        }
        let cursor = match (joined?, registered) {
            (_, Some(r)) => r.cursor,
            (cursor, None) => cursor,
        };
        self.bell = Some(bell);
        self.login_deadline = None;
        self.shutdown = None;
        self.admission.logged_in();
        // The user's bucket, shared with the user's other and earlier sessions.
        self.bucket = self.shared.flood.bucket(&user_id.key());
        self.login = Some(LoggedIn {
            user_id: user_id.clone(),
            outbox,
            presence: Reader::new(cursor),
        });
        // In step with `self.login`, which the session's drop reads to leave the gauge.
        let metrics = &self.shared.metrics;
        metrics.connection_logged_in(self.conn.framing().into());
        metrics.login(LoginResult::Ok);
        let peer = self.conn.peer();
        tracing::info!(%peer, user = %user_id, conn = self.conn_id, "logged in");
        // Registered first, mailbox read second: a private message accepted in between is
        // either in the mailbox (the store's ordering contract) or in our outbox.
        let key = user_id.key();
        let store = &self.shared.config.store;
        let pending = match store.pending(key.clone()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(user = %user_id, error = %e, "cannot read mailbox");
                self.conn.queue_reply(
                    &Reply::fail(
                        ErrorCode::Unavailable,
                        "storage unavailable, try again later",
                    )
                    .with_ref(r#ref),
                );
                return Err(End::Error);
            }
        };
        let delivered: Vec<u64> = pending.iter().map(|m| m.id).collect();
        if acks && let Some(login) = &self.login {
            // Kept until acked; remembered before the outbox is first drained, so that a
            // message queued meanwhile and also read here goes out once.
            login.outbox.remember(delivered.iter().copied());
        }
        // The ack is the session's first frame: nothing from the outbox has been written.
        self.conn.queue_reply(&Reply::Message {
            r#ref,
            messages: pending,
        });
        self.write_out().await?;
        if !acks && !delivered.is_empty() {
            // Written to the socket: now they may go. A crash before this line delivers them
            // again at the next login rather than losing them.
            let deleted = self.shared.config.store.delete_delivered(key, delivered);
            if let Err(e) = deleted.await {
                tracing::error!(user = %user_id, error = %e, "cannot delete delivered messages");
            }
        }
        Ok(())
    }

    /// Checks the password (queued behind the other logins), while watching the login
    /// deadline, which counts the time queued, and the socket: a client that closes its
    /// connection meanwhile is not waited for, and its login is dropped from the queue
    /// before it is hashed.
    ///
    /// # Errors
    /// How the session ends: the deadline passed, or the client went away.
    async fn check_password(
        &mut self,
        user_id: &UserId,
        password: &Password,
        r#ref: &Option<Ref>,
    ) -> Result<Result<UserId, Failure>, End> {
        let shared = self.shared.clone();
        let addr = self.conn.peer().ip();
        let new_account = || shared.limits.new_account(addr, Instant::now());
        let checked = shared.auth.login(user_id, password, new_account);
        tokio::pin!(checked);
        loop {
            // Commands sent meanwhile wait in the read buffer; past this, stop reading.
            let watch = self.conn.read_buffered() < MAX_READ_AHEAD;
            tokio::select! {
                biased;
                r = &mut checked => return Ok(r),
                () = boxed_fired(&mut self.login_deadline) => {
                    let failure = Failure::new(ErrorCode::Unauthorized, "login timed out");
                    self.fail_ref(r#ref.clone(), failure);
                    return Err(End::LoginTimeout);
                }
                r = std::future::poll_fn(|cx| self.conn.poll_read_ready(cx)), if watch => {
                    match r.and_then(|()| self.conn.fill()) {
                        Ok(Filled::Data | Filled::Nothing) => {}
                        Ok(Filled::Eof) => return Err(End::Eof),
                        Err(_) => return Err(End::Error),
                    }
                }
            }
        }
    }

    /// Answers a refused login; closes the connection after [`MAX_FAILED_LOGINS`] wrong
    /// passwords.
    fn login_failed(
        &mut self,
        user_id: &UserId,
        failure: Failure,
        r#ref: Option<Ref>,
    ) -> Result<(), End> {
        let unauthorized = failure.error_code == ErrorCode::Unauthorized;
        if unauthorized {
            tracing::info!(peer = %self.conn.peer(), user = %user_id, "login failed");
        }
        self.fail_ref(r#ref, failure);
        if unauthorized {
            self.failed_logins += 1;
            if self.failed_logins >= MAX_FAILED_LOGINS {
                return Err(End::TooManyFailedLogins);
            }
        }
        Ok(())
    }
}
