//! The hub: who is online, message ids, and fan-out.
//!
//! The hub owns membership. Sessions call into it; it never calls into a session except by
//! pushing onto the session's bounded outbox, which never waits. A session whose outbox is
//! full is a slow consumer: it is removed (the others get `left`) and kicked, so one slow
//! reader can neither stall the others nor grow the server's memory.
//!
//! **Architecture invariant:** the membership lock is a `std::sync::Mutex` held only for
//! in-memory work (lookups, queueing onto outboxes, encoding one message) and never across an `.await`.
//! Holding it during a fan-out is what gives every recipient the same order, and ids that
//! increase in the order messages were accepted.
//!
//! Presence notices (`joined`, `left`) are queued *lazily*: they do not wake an idle
//! session. They leave with its next chat message or reply, in queue order, or at the
//! latest one [`PRESENCE_TICK`] later, when [`Hub::presence_ticker`] wakes the sessions on
//! its flush list (only those with lazy items waiting; nothing runs while no notice is).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use simpletextim_proto::{ChatMessage, ErrorCode, Failure, MessageText, Recipient, Reply, UserId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::outbox::{KickReason, Outbox};
use crate::store::{Store, StoreError};
use crate::wire::{ChatHead, Out, Private, encode_reply};

/// What the hub keeps of a logged-in session.
#[derive(Debug, Clone)]
pub struct Member {
    /// Unique per connection, to tell a session from the one that took it over.
    pub conn_id: u64,
    /// As spelled at registration.
    pub user_id: UserId,
    /// The session's outbox and kill switch.
    pub outbox: Arc<Outbox>,
}

/// The longest a presence notice waits in an idle session's outbox before the session is
/// woken to write it.
pub const PRESENCE_TICK: Duration = Duration::from_millis(50);

struct Inner {
    members: HashMap<String, Member>,
    last_id: u64,
    /// Outboxes holding lazy items (presence notices) that nothing has woken yet.
    to_flush: Vec<Arc<Outbox>>,
    /// Wakes [`Hub::presence_ticker`] when the flush list stops being empty.
    tick: Arc<Notify>,
    /// Set by [`Hub::shut_down`]: a session that joins later is told at once.
    shutting_down: bool,
    /// Members whose outbox was found full by the operation under way: [`Inner::cut_off`]
    /// removes them before the lock is released (empty between operations).
    slow: Vec<(String, u64)>,
}

/// Membership and fan-out. Cheap to share behind an `Arc`.
pub struct Hub {
    inner: Mutex<Inner>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub whose message ids start above `min_id`.
    pub fn new(store: Arc<dyn Store>, min_id: u64) -> Hub {
        Hub {
            inner: Mutex::new(Inner {
                members: HashMap::new(),
                last_id: min_id,
                to_flush: Vec::new(),
                tick: Arc::new(Notify::new()),
                shutting_down: false,
                slow: Vec::new(),
            }),
            store,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent before anything can panic, so
        // a poisoned lock still guards valid data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a logged-in session. Tells the others `joined`, or, when the user was
    /// logged in elsewhere, kicks the old session (`fail 409`) without `left`/`joined`.
    pub fn join(&self, member: Member) {
        let mut inner = self.lock();
        let key = member.user_id.key();
        let user_id = member.user_id.clone();
        let conn_id = member.conn_id;
        if inner.shutting_down {
            member.outbox.kick(KickReason::Shutdown);
        }
        match inner.members.insert(key, member) {
            Some(old) => {
                tracing::info!(user = %user_id, old = old.conn_id, new = conn_id, "session taken over");
                old.outbox.kick(KickReason::TakenOver);
            }
            None => {
                let frame = encode_reply(&Reply::Joined {
                    user_id: user_id.clone(),
                });
                inner.broadcast_notice(Out::Frame(frame), Some(conn_id));
            }
        }
    }

    /// Tells every logged-in session, and every one that logs in from now on, that the
    /// server is shutting down. A logged-in session learns of the shutdown from its outbox,
    /// so that it does not wait on the server-wide cancellation token (a notifier shared by
    /// every session, whose waiter list each of them would join and leave at every wake-up).
    pub fn shut_down(&self) {
        let mut inner = self.lock();
        inner.shutting_down = true;
        for m in inner.members.values() {
            m.outbox.kick(KickReason::Shutdown);
        }
    }

    /// Wakes, [`PRESENCE_TICK`] after the first of them, the sessions that hold presence
    /// notices nothing else has woken them for; runs until `shutdown`. The server runs one
    /// beside the hub: without it, notices to an idle session would wait for its next chat.
    pub async fn presence_ticker(&self, shutdown: CancellationToken) {
        let tick = self.lock().tick.clone();
        let mut flushing: Vec<Arc<Outbox>> = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tick.notified() => {}
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(PRESENCE_TICK) => {}
            }
            std::mem::swap(&mut self.lock().to_flush, &mut flushing);
            for outbox in flushing.drain(..) {
                outbox.flush_lazy();
            }
            if flushing.capacity() > 1024 {
                // A storm's list is not kept for the quiet that follows.
                flushing = Vec::new();
            }
        }
    }

    /// Removes a session that ended, telling the others `left`. Does nothing if the
    /// session was already removed (taken over, or cut off as a slow consumer).
    pub fn leave(&self, user_id: &UserId, conn_id: u64) {
        let mut inner = self.lock();
        let key = user_id.key();
        if inner
            .members
            .get(&key)
            .is_some_and(|m| m.conn_id == conn_id)
        {
            inner.members.remove(&key);
            inner.announce_left(user_id.clone());
        }
    }

    /// The users online now, sorted case-insensitively.
    pub fn list(&self) -> Vec<UserId> {
        let inner = self.lock();
        let mut list: Vec<UserId> = inner.members.values().map(|m| m.user_id.clone()).collect();
        drop(inner);
        list.sort_unstable();
        list
    }

    /// Accepts a public message and delivers it to everyone online, the sender included.
    pub fn publish(&self, from: &UserId, text: MessageText) {
        let head = ChatHead::new(from, text.as_str());
        let mut inner = self.lock();
        let (id, ts) = next_id(&mut inner.last_id);
        let obj = head.finish(Recipient::Everyone.as_str(), id, ts);
        inner.broadcast(Out::Chat(obj), None);
    }

    /// Accepts a private message: delivered to the recipient when online, otherwise stored
    /// in their mailbox; echoed to the sender (`from_conn`) either way, once accepted. A
    /// recipient whose outbox is full is cut off as a slow consumer and the message is
    /// stored for its next login.
    ///
    /// # Errors
    /// `404` when the recipient has no account, `503` when their mailbox is full or the
    /// store fails. Nothing is delivered or stored then.
    pub async fn send_private(
        &self,
        from: &UserId,
        from_conn: u64,
        to: &UserId,
        text: MessageText,
    ) -> Result<(), Failure> {
        let route = Route {
            from_key: from.key(),
            from_conn,
            key: to.key(),
        };
        let draft = match self.try_online(&route, Draft::new(from, text)) {
            Ok(attempt) => return self.settle(attempt, &route, to).await,
            Err(draft) => draft,
        };
        // Offline (or unknown): learn the recipient's registered spelling first.
        let account = self
            .store
            .account(route.key.clone())
            .await
            .map_err(store_failure)?
            .ok_or_else(|| no_such_user(to))?;
        let attempt = self.deliver_or_store(&route, draft, account.user_id);
        self.settle(attempt, &route, to).await
    }

    /// Delivers a private message if its recipient is online; gives the draft back if not.
    fn try_online(&self, route: &Route, draft: Draft) -> Result<Attempt, Draft> {
        let mut inner = self.lock();
        match inner.deliver_online(route, draft) {
            Delivery::Delivered => Ok(Attempt::Delivered),
            Delivery::CutOff(private) => Ok(self.store_locked(&inner, route, private)),
            Delivery::Offline(draft) => Err(draft),
        }
    }

    /// Delivers a private message if its recipient (`to`, as registered) is online, and
    /// stores it in their mailbox otherwise.
    fn deliver_or_store(&self, route: &Route, draft: Draft, to: UserId) -> Attempt {
        let mut inner = self.lock();
        match inner.deliver_online(route, draft) {
            Delivery::Delivered => Attempt::Delivered,
            Delivery::CutOff(private) => self.store_locked(&inner, route, private),
            Delivery::Offline(draft) => {
                let (id, ts) = next_id(&mut inner.last_id);
                let private = draft.finish(&to, id, ts);
                self.store_locked(&inner, route, ForMailbox::new(private, to))
            }
        }
    }

    /// Asks the store to keep a private message for its recipient. `_locked` proves the
    /// hub's lock is held: a login that registers after this point and then reads its
    /// mailbox sees the message (the store's ordering contract).
    fn store_locked(&self, _locked: &Inner, route: &Route, kept: ForMailbox) -> Attempt {
        let stored = self.store.enqueue(route.key.clone(), kept.msg.clone());
        Attempt::Storing(stored, kept)
    }

    /// Finishes a delivery attempt: a message being stored is echoed to its sender once the
    /// store has it; the store's refusal becomes the sender's `fail`.
    async fn settle(&self, attempt: Attempt, route: &Route, to: &UserId) -> Result<(), Failure> {
        let (stored, kept) = match attempt {
            Attempt::Delivered => return Ok(()),
            Attempt::Storing(stored, kept) => (stored, kept),
        };
        match stored.await {
            Ok(()) => {
                let echo = Out::Chat(kept.echo);
                self.lock().echo(route.from_conn, &route.from_key, echo);
                Ok(())
            }
            Err(StoreError::NoSuchUser(_)) => Err(no_such_user(to)),
            Err(StoreError::MailboxFull(_)) => Err(Failure::new(
                ErrorCode::Unavailable,
                format!("mailbox full: {} has too many unread messages", kept.msg.to),
            )),
            Err(e) => Err(store_failure(e)),
        }
    }
}

/// Where a private message stands once the hub has seen it.
enum Attempt {
    /// Queued for its online recipient (and echoed).
    Delivered,
    /// On its way to the recipient's mailbox: echoed once stored.
    Storing(BoxFuture<'static, Result<(), StoreError>>, ForMailbox),
}

/// A private message for its recipient's mailbox, and the echo its sender gets once it is
/// stored.
struct ForMailbox {
    msg: ChatMessage,
    echo: Bytes,
}

impl ForMailbox {
    /// `private`, addressed to `to` (its recipient, as registered).
    fn new(private: Private, to: UserId) -> ForMailbox {
        ForMailbox {
            msg: private.message(to),
            echo: private.obj,
        }
    }
}

/// Who sends a private message to whom: the sender's case-folded id and connection, and the
/// recipient's case-folded id.
struct Route {
    from_key: String,
    from_conn: u64,
    key: String,
}

/// A private message before the hub gives it an id: the costly encoding of sender and text
/// is done before the hub's lock is taken.
struct Draft {
    head: ChatHead,
    from: UserId,
    text: MessageText,
}

impl Draft {
    fn new(from: &UserId, text: MessageText) -> Draft {
        Draft {
            head: ChatHead::new(from, text.as_str()),
            from: from.clone(),
            text,
        }
    }

    /// The message to `to` with its id and time, and its encoding.
    fn finish(self, to: &UserId, id: u64, ts: u64) -> Private {
        Private {
            obj: self.head.finish(to.as_str(), id, ts),
            from: self.from,
            text: self.text.into_string(),
            id,
            ts,
        }
    }
}

/// What [`Inner::deliver_online`] did with a private message.
enum Delivery {
    /// Queued for the recipient (and echoed to the sender).
    Delivered,
    /// The recipient is not online: the draft, untouched.
    Offline(Draft),
    /// The recipient's outbox was full: it is cut off, and this message (with its id) must
    /// go to its mailbox.
    CutOff(ForMailbox),
}

impl Inner {
    /// Delivers a private message to its recipient, if online, and echoes it to the sender.
    fn deliver_online(&mut self, route: &Route, draft: Draft) -> Delivery {
        let Some(recipient) = self.members.get(&route.key) else {
            return Delivery::Offline(draft);
        };
        let to_conn = recipient.conn_id;
        let (id, ts) = next_id(&mut self.last_id);
        let private = Arc::new(draft.finish(&recipient.user_id, id, ts));
        offer(recipient, Out::Private(private.clone()), &mut self.slow);
        if !self.slow.is_empty() {
            // The recipient's outbox is full: it is cut off as a slow consumer, and the
            // message goes to its mailbox (the caller stores it) instead of being lost.
            let to = recipient.user_id.clone();
            self.cut_off();
            let private = Arc::try_unwrap(private)
                .expect("a push to a full outbox keeps no copy of the item");
            return Delivery::CutOff(ForMailbox::new(private, to));
        }
        if to_conn != route.from_conn {
            let echo = Out::Chat(private.obj.clone());
            self.echo(route.from_conn, &route.from_key, echo);
        }
        Delivery::Delivered
    }

    /// Sends to the sender's own session (`from_key`, case-folded), if it is still the
    /// logged-in one.
    fn echo(&mut self, from_conn: u64, from_key: &str, item: Out) {
        if let Some(m) = self.members.get(from_key) {
            if m.conn_id == from_conn {
                offer(m, item, &mut self.slow);
            }
        }
        self.cut_off();
    }

    /// Offers `item` to every member except `except`, then cuts off the slow ones.
    fn broadcast(&mut self, item: Out, except: Option<u64>) {
        for m in self.members.values() {
            if Some(m.conn_id) != except {
                offer(m, item.clone(), &mut self.slow);
            }
        }
        self.cut_off();
    }

    /// Offers a presence notice to every member except `except`, lazily (it does not wake
    /// them), then cuts off the slow ones.
    fn broadcast_notice(&mut self, item: Out, except: Option<u64>) {
        self.queue_notice(&item, except);
        self.cut_off();
    }

    /// Queues a presence notice lazily for every member except `except`: a full outbox is
    /// added to the slow list, and the presence ticker is woken when its flush list stops
    /// being empty.
    fn queue_notice(&mut self, item: &Out, except: Option<u64>) {
        let was_empty = self.to_flush.is_empty();
        for m in self.members.values() {
            if Some(m.conn_id) == except {
                continue;
            }
            match m.outbox.push_lazy(item.clone()) {
                Ok(true) => self.to_flush.push(m.outbox.clone()),
                Ok(false) => {}
                Err(_) => self.slow.push((m.user_id.key(), m.conn_id)),
            }
        }
        if was_empty && !self.to_flush.is_empty() {
            self.tick.notify_one();
        }
    }

    fn announce_left(&mut self, user_id: UserId) {
        let frame = encode_reply(&Reply::Left { user_id });
        self.broadcast_notice(Out::Frame(frame), None);
    }

    /// Removes and kicks the slow consumers found by the offers before, telling the others
    /// they left. Telling them may find more slow consumers; the loop ends because each
    /// round removes members. Every operation that offers items ends with it.
    fn cut_off(&mut self) {
        while let Some((key, conn_id)) = self.slow.pop() {
            if self.members.get(&key).is_none_or(|m| m.conn_id != conn_id) {
                continue;
            }
            let Some(m) = self.members.remove(&key) else {
                continue;
            };
            tracing::warn!(user = %m.user_id, conn = conn_id, "slow consumer: outbox full, disconnecting");
            m.outbox.kick(KickReason::SlowConsumer);
            let frame = encode_reply(&Reply::Left {
                user_id: m.user_id.clone(),
            });
            self.queue_notice(&Out::Frame(frame), None);
        }
    }
}

/// The next message id and its timestamp. Ids are unique and increasing across restarts
/// without a disk write per message: at least the last one + 1, and at least the clock in
/// microseconds-ish units (ms × 1000), which a restart cannot go behind. ts × 1000 stays
/// below 2^53 (exact in JavaScript) until the year 2255.
fn next_id(last_id: &mut u64) -> (u64, u64) {
    let ts = crate::now_ms();
    *last_id = (*last_id + 1).max(ts.saturating_mul(1000));
    (*last_id, ts)
}

/// Queues `item` for a member; a full outbox marks it slow.
fn offer(m: &Member, item: Out, slow: &mut Vec<(String, u64)>) {
    if m.outbox.push(item).is_err() {
        slow.push((m.user_id.key(), m.conn_id));
    }
}

fn no_such_user(to: &UserId) -> Failure {
    Failure::new(ErrorCode::NotFound, format!("no such user: {to}"))
}

fn store_failure(e: StoreError) -> Failure {
    tracing::error!(error = %e, "store failure");
    Failure::new(
        ErrorCode::Unavailable,
        "storage unavailable, try again later",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::time::Instant;

    fn member(hub: &Hub, conn_id: u64, name: &str) -> Arc<Outbox> {
        let outbox = Outbox::new(crate::outbox::Limits {
            items: 64,
            bytes: 64 * 1024,
        });
        hub.join(Member {
            conn_id,
            user_id: UserId::new(name).expect("valid id"),
            outbox: outbox.clone(),
        });
        outbox
    }

    fn frames(outbox: &Outbox) -> Vec<String> {
        outbox
            .take()
            .items
            .iter()
            .map(|i| String::from_utf8_lossy(i.bytes()).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn presence_notices_reach_an_idle_session_in_order_within_a_tick() {
        let hub = Arc::new(Hub::new(Arc::new(MemoryStore::new(10)), 0));
        let shutdown = CancellationToken::new();
        let ticker = tokio::spawn({
            let hub = hub.clone();
            let shutdown = shutdown.clone();
            async move { hub.presence_ticker(shutdown).await }
        });
        let alice = member(&hub, 1, "alice");
        let started = Instant::now();
        let _bob = member(&hub, 2, "bob");
        let _carol = member(&hub, 3, "carol");
        hub.leave(&UserId::new("bob").expect("valid id"), 2);
        // Queued, but nobody woke alice: the notices wait for the tick.
        {
            use futures::FutureExt;
            assert!(alice.changed().now_or_never().is_none());
        }
        tokio::time::timeout(Duration::from_secs(5), alice.changed())
            .await
            .expect("woken by the presence ticker");
        assert!(started.elapsed() >= PRESENCE_TICK);
        assert_eq!(
            frames(&alice),
            vec![
                r#"{"command":"joined","user_id":"bob"}"#,
                r#"{"command":"joined","user_id":"carol"}"#,
                r#"{"command":"left","user_id":"bob"}"#,
            ]
        );
        shutdown.cancel();
        ticker.await.expect("ticker ends on shutdown");
    }

    #[tokio::test]
    async fn a_public_message_wakes_at_once_and_carries_the_notices_before_it() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        let _bob = member(&hub, 2, "bob");
        hub.publish(
            &UserId::new("bob").expect("valid id"),
            MessageText::new("hi").expect("valid text"),
        );
        // No ticker runs here: the chat alone wakes alice.
        tokio::time::timeout(Duration::from_secs(5), alice.changed())
            .await
            .expect("woken by the chat");
        let got = frames(&alice);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], r#"{"command":"joined","user_id":"bob"}"#);
        assert!(
            got[1].starts_with(r#"{"user_id":"bob","message":"hi","to":"*""#),
            "{}",
            got[1]
        );
    }

    #[test]
    fn shut_down_kicks_every_member_and_every_later_one() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        assert_eq!(alice.kicked(), None);
        hub.shut_down();
        assert_eq!(alice.kicked(), Some(KickReason::Shutdown));
        let bob = member(&hub, 2, "bob");
        assert_eq!(bob.kicked(), Some(KickReason::Shutdown));
    }
}
