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
//! **Presence.** A `joined` or `left` is one append to the shared presence log
//! (`presence.rs`), under the lock: O(1) whatever the number of members, and no outbox is
//! touched. Every item queued into an outbox carries the log's head at that moment, so each
//! session writes notices and chat in the order the hub accepted them. A login's session
//! starts reading after its own `joined`; a session the hub removes (leave, takeover,
//! cut-off, revocation, shutdown) gets its outbox's presence end set to the head then, so it
//! writes nothing announced after. [`Hub::presence_ticker`] rings the log's bell at most once
//! per [`PRESENCE_TICK`] after notices were appended (nothing runs while none is), which
//! wakes the idle sessions to read them: one wake-up per session per tick, none under the
//! lock.
//!
//! **Revocations.** [`Hub::watch_revocations`] polls the store every [`REVOCATION_POLL`] for
//! password changes and account deletions (made by the administration commands, possibly
//! in another process) and [`Hub::revoke`] ends the user's session if its login looked the
//! account up at or before the change ([`Member::login_ms`], [`Revocation::at_ms`]): a login
//! with the new password is left alone. The hub remembers recent revocations, so a login
//! that read the old account but joins only after the revocation was seen is refused too.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use simpletextim_proto::{ChatMessage, ErrorCode, Failure, MessageText, Recipient, UserId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::outbox::{KickReason, Outbox};
#[cfg(test)]
use crate::presence::DEFAULT_PRESENCE_LOG;
use crate::presence::{Notice, PresenceLog};
use crate::store::{HistoryPermit, Revocation, RevocationKind, Store, StoreError};
use crate::wire::{ChatHead, Echo, Out, Private};

/// What the hub keeps of a logged-in session.
#[derive(Debug, Clone)]
pub struct Member {
    /// Unique per connection, to tell a session from the one that took it over.
    pub conn_id: u64,
    /// As spelled at registration.
    pub user_id: UserId,
    /// The session's outbox and kill switch.
    pub outbox: Arc<Outbox>,
    /// Unix milliseconds taken before the login asked the store for the account: the
    /// credentials it checked are those of that moment or later. A revocation at or after
    /// it ends the session.
    pub login_ms: u64,
}

/// The longest a presence notice waits in the log before the idle sessions are woken to
/// write it.
pub const PRESENCE_TICK: Duration = Duration::from_millis(50);

/// How often [`Hub::watch_revocations`] asks the store for new revocations.
pub const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// Revocations read from the store in one request; more are read at once after.
const REVOCATION_PAGE: usize = 256;

/// Most revocations remembered for logins in progress ([`Inner::revoked`]). Each is an
/// administrator's command and is forgotten after a login's longest duration, so this is
/// reached only by a script deleting accounts in bulk; then the oldest is dropped.
const MAX_REMEMBERED_REVOCATIONS: usize = 100_000;

/// The latest revocation seen for one account.
#[derive(Debug, Clone, Copy)]
struct Revoked {
    at_ms: u64,
    kind: RevocationKind,
}

struct Inner {
    members: HashMap<String, Member>,
    last_id: u64,
    /// The presence log's head (the number of its next notice): what every item queued
    /// now carries. Only changed here, under the lock, with each append.
    seq: u64,
    /// The presence log, appended to only here.
    presence: Arc<PresenceLog>,
    /// Wakes [`Hub::presence_ticker`] when a notice is appended and no tick is due yet.
    tick: Arc<Notify>,
    /// A notice was appended since the ticker last rang the bell: a tick is due.
    tick_due: bool,
    /// Set by [`Hub::shut_down`]: a session that joins later is told at once.
    shutting_down: bool,
    /// Members whose outbox was found full by the operation under way: [`Inner::cut_off`]
    /// removes them before the lock is released (empty between operations).
    slow: Vec<(String, u64)>,
    /// The latest revocation of each account seen recently, by key: a login that looked
    /// the account up before it but joins after it was seen is refused. Forgotten once no
    /// login that old can still be in progress ([`Hub::watch_revocations`]'s `keep`).
    revoked: HashMap<String, Revoked>,
    /// Bumped by every change of membership (a user added or removed; not a takeover).
    version: u64,
    /// The membership changes since [`Hub::list`] last took them, by user: whether the
    /// user is online after them. At most one entry per user, and at most
    /// [`MAX_LIST_DELTA_SLACK`] more than a quarter of the users online (so that a login
    /// storm nobody lists adds little to each connection's memory): past that it is
    /// dropped and `list_reset` set instead, and stays empty until the next `list`.
    list_delta: HashMap<UserId, bool>,
    /// The changes were too many to keep: the next [`Hub::list`] rebuilds the roster from
    /// the members (O(users) under the lock, once per at least as many changes).
    list_reset: bool,
    /// The last `list` built, and the membership version it shows.
    list: ListSnapshot,
    /// What the hub counted for the metrics: plain integers, changed only under this lock,
    /// once per message.
    counts: Counts,
    /// Cluster mode only: where the hub tells the cluster bus that a local user left (the
    /// presence registry in Redis drops the user and the other nodes get `left`). `None`
    /// in a single process: nothing is sent, nothing allocated.
    departures: Option<crate::cluster::Departures>,
    /// Cluster mode: the ids of the last [`STORED_SEEN`] messages delivered here from a
    /// mailbox (a message stored while its recipient was logging in, or while this node did
    /// not listen, can be handed here twice: once by its sender's re-check, once by this
    /// node's delivery of pending mailboxes). Ids are unique in the cluster. Empty, and
    /// never touched, in a single process.
    stored_seen: (
        std::collections::HashSet<u64>,
        std::collections::VecDeque<u64>,
    ),
}

/// How many ids of messages delivered from a mailbox the hub remembers, to deliver each once.
const STORED_SEEN: usize = 4096;

/// Messages and deliveries counted by the hub (see [`HubStats`]).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    public: u64,
    private: u64,
    delivered: u64,
}

/// What the metrics read of the hub at scrape time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    /// Users logged in now.
    pub online: u64,
    /// Public messages accepted.
    pub public: u64,
    /// Private messages accepted (delivered, or kept in the mailbox, and echoed).
    pub private: u64,
    /// Chat messages queued in their recipients' outboxes: a public message counts once per
    /// user online (the sender's copy included), a private one once (not its echo).
    pub delivered: u64,
    /// Bytes queued in the members' outboxes.
    pub outbox_bytes: u64,
}

/// How many more membership changes than a quarter of the users online the hub keeps for
/// the next `list` before it drops them and has that `list` rebuild from the members.
const MAX_LIST_DELTA_SLACK: usize = 1024;

/// The users online at one membership version, sorted, encoded once as the JSON array every
/// `list` reply shares until membership changes.
#[derive(Debug, Clone)]
struct ListSnapshot {
    version: u64,
    json: Bytes,
}

/// Membership and fan-out. Cheap to share behind an `Arc`.
pub struct Hub {
    inner: Mutex<Inner>,
    /// Appended to under `inner`'s lock ([`Inner::presence`] is the same log); read by the
    /// sessions without it.
    presence: Arc<PresenceLog>,
    /// The sorted users online as of [`Inner::list`]'s version plus the changes taken from
    /// [`Inner::list_delta`]; held by the one `list` rebuilding the snapshot (the others
    /// wait, and share it). Taken before the hub's lock, never while holding it.
    roster: Mutex<BTreeSet<UserId>>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub whose message ids start above `min_id`, with a presence log of the default
    /// size.
    #[cfg(test)]
    pub fn new(store: Arc<dyn Store>, min_id: u64) -> Hub {
        Hub::with_presence_log(store, min_id, DEFAULT_PRESENCE_LOG)
    }

    /// A hub whose message ids start above `min_id`, whose presence log keeps at least
    /// `presence_entries` notices ([`crate::Config::presence_log`]).
    pub fn with_presence_log(store: Arc<dyn Store>, min_id: u64, presence_entries: usize) -> Hub {
        let presence = Arc::new(PresenceLog::new(presence_entries));
        Hub {
            presence: presence.clone(),
            inner: Mutex::new(Inner {
                members: HashMap::new(),
                last_id: min_id,
                seq: 0,
                presence,
                tick: Arc::new(Notify::new()),
                tick_due: false,
                shutting_down: false,
                slow: Vec::new(),
                revoked: HashMap::new(),
                version: 0,
                list_delta: HashMap::new(),
                list_reset: false,
                list: ListSnapshot {
                    version: 0,
                    json: Bytes::from_static(b"[]"),
                },
                counts: Counts::default(),
                departures: None,
                stored_seen: Default::default(),
            }),
            roster: Mutex::new(BTreeSet::new()),
            store,
        }
    }

    /// The presence log the sessions read.
    pub fn presence(&self) -> &PresenceLog {
        &self.presence
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent before anything can panic, so
        // a poisoned lock still guards valid data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a logged-in session. Tells the others `joined`, or, when the user was
    /// logged in elsewhere, kicks the old session (`fail 409`) without `left`/`joined`.
    /// Returns where the session starts reading the presence log: after its own `joined`,
    /// so its first notice is the first change after it registered.
    ///
    /// # Errors
    /// [`KickReason::Revoked`], and nothing is registered, when a revocation of the account
    /// seen meanwhile is not older than the login's account lookup (the password it checked
    /// was changed, or the account deleted, while it was being checked).
    #[cfg(test)]
    pub fn join(&self, member: Member) -> Result<u64, KickReason> {
        self.join_as(member, true)
    }

    /// [`Hub::join`], where `announce` says whether a user not online on this node is
    /// new (`joined` announced) or taking over a session of another node of the cluster
    /// (nothing announced: the user never went offline).
    ///
    /// # Errors
    /// As [`Hub::join`].
    pub fn join_as(&self, member: Member, announce: bool) -> Result<u64, KickReason> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let key = member.user_id.key();
        let user_id = member.user_id.clone();
        let conn_id = member.conn_id;
        if let Some(r) = inner.revoked.get(&key)
            && member.login_ms <= r.at_ms
        {
            tracing::info!(user = %user_id, conn = conn_id, kind = ?r.kind, "login refused: the account changed while it was checked");
            return Err(KickReason::Revoked(r.kind));
        }
        if inner.shutting_down {
            member.outbox.stop_presence(inner.seq);
            member.outbox.kick(KickReason::Shutdown);
        }
        match inner.members.insert(key, member) {
            Some(old) => {
                tracing::info!(user = %user_id, old = old.conn_id, new = conn_id, "session taken over");
                old.outbox.stop_presence(inner.seq);
                old.outbox.kick(KickReason::TakenOver);
            }
            None => {
                inner.membership_changed(&user_id, true);
                if announce {
                    inner.announce(Notice::joined(&user_id));
                }
            }
        }
        Ok(inner.seq)
    }

    /// Acts on a revocation read from the store: the user's session, if its login looked
    /// the account up at or before the revocation, is removed (the others get `left`) and
    /// kicked (`fail 401`); a session that logged in later, with the new password, stays.
    /// The revocation is remembered for logins still being checked (see [`Hub::join`]).
    /// Returns whether a session was ended.
    pub fn revoke(&self, revocation: &Revocation) -> bool {
        // Seen now, so committed before now: a login that looks the account up from now on
        // reads the new one. Clamping keeps a revocation stamped ahead of this clock (set
        // back since) from refusing the user's logins until the clock catches up.
        let at_ms = revocation.at_ms.min(crate::now_ms());
        let revocation = &Revocation {
            at_ms,
            ..revocation.clone()
        };
        let mut inner = self.lock();
        inner.remember(revocation);
        let key = &revocation.key;
        if inner
            .members
            .get(key)
            .is_none_or(|m| m.login_ms > revocation.at_ms)
        {
            return false;
        }
        let Some(m) = inner.members.remove(key) else {
            return false;
        };
        tracing::info!(user = %m.user_id, conn = m.conn_id, kind = ?revocation.kind, "session revoked");
        m.outbox.stop_presence(inner.seq);
        m.outbox.kick(KickReason::Revoked(revocation.kind));
        inner.membership_changed(&m.user_id, false);
        inner.announce(Notice::left(&m.user_id));
        inner.depart(&m.user_id, m.conn_id);
        true
    }

    /// Polls the store every [`REVOCATION_POLL`] for revocations with an id above
    /// `after_id` and acts on each ([`Hub::revoke`]); runs until `shutdown`. Revocations
    /// are remembered for `keep` (longer than any login can take) for logins in progress.
    /// A store error is logged and the poll retried at the next period: it never ends the
    /// watch. The store is only awaited, never while the hub's lock is held.
    pub async fn watch_revocations(
        &self,
        mut after_id: u64,
        keep: Duration,
        shutdown: CancellationToken,
    ) {
        let mut failing = false;
        let mut tick = tokio::time::interval(REVOCATION_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Pages until one is not full: a burst of revocations is read in one period.
            loop {
                let page = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    r = self.store.revocations_after(after_id, REVOCATION_PAGE) => r,
                };
                let revocations = match page {
                    Ok(r) => r,
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot read revocations; retrying every second");
                        }
                        failing = true;
                        break;
                    }
                };
                if std::mem::take(&mut failing) {
                    tracing::info!("revocations readable again");
                }
                for r in &revocations {
                    after_id = after_id.max(r.id);
                    self.revoke(r);
                }
                if revocations.len() < REVOCATION_PAGE {
                    break;
                }
            }
            let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
            self.forget_revocations_before(crate::now_ms().saturating_sub(keep_ms));
        }
    }

    /// Forgets the remembered revocations older than `before_ms`.
    fn forget_revocations_before(&self, before_ms: u64) {
        let mut inner = self.lock();
        if !inner.revoked.is_empty() {
            inner.revoked.retain(|_, r| r.at_ms >= before_ms);
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
            m.outbox.stop_presence(inner.seq);
            m.outbox.kick(KickReason::Shutdown);
        }
    }

    /// Rings the presence log's bell [`PRESENCE_TICK`] after a notice was appended (and
    /// then at most once per tick while notices keep coming), which wakes every idle
    /// session to write the notices it has not written yet; runs until `shutdown`. The
    /// server runs one beside the hub: without it, notices to an idle session would wait
    /// for its next chat. It walks nothing: one `notify_waiters`, outside the hub's lock.
    pub async fn presence_ticker(&self, shutdown: CancellationToken) {
        let tick = self.lock().tick.clone();
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
            // Cleared before the ring: a notice appended from now on makes the next tick
            // due, and a session that read the head before it is woken by that tick.
            self.lock().tick_due = false;
            self.presence.ring();
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
            if let Some(m) = inner.members.remove(&key) {
                m.outbox.stop_presence(inner.seq);
            }
            inner.membership_changed(user_id, false);
            inner.announce(Notice::left(user_id));
            inner.depart(user_id, conn_id);
        }
    }

    /// The users online now, sorted case-insensitively, as a JSON array of their ids
    /// (`["alice","Bob"]`), as of a membership at least as recent as the last change made
    /// before the call.
    ///
    /// The hub's lock is only taken for O(1) work: while membership does not change, every
    /// call shares one snapshot. The first call after a change takes the changes made since
    /// the last snapshot (the map is swapped out) and applies them to the sorted roster
    /// outside the hub's lock, under the roster's own lock, where the calls made meanwhile
    /// wait for it and then share the result.
    pub fn list(&self) -> Bytes {
        if let Some(json) = self.lock().current_list() {
            return json;
        }
        let mut roster = self.roster.lock().unwrap_or_else(|p| p.into_inner());
        let (version, delta) = {
            let mut inner = self.lock();
            // Rebuilt by another call while this one waited for the roster.
            if let Some(json) = inner.current_list() {
                return json;
            }
            if std::mem::take(&mut inner.list_reset) {
                roster.clear();
                roster.extend(inner.members.values().map(|m| m.user_id.clone()));
            }
            (inner.version, std::mem::take(&mut inner.list_delta))
        };
        for (user_id, online) in delta {
            if online {
                roster.replace(user_id);
            } else {
                roster.remove(&user_id);
            }
        }
        let json = encode_list(&roster);
        let mut inner = self.lock();
        // Only the roster's holder stores a snapshot, and versions only grow.
        debug_assert!(inner.list.version <= version);
        inner.list = ListSnapshot {
            version,
            json: json.clone(),
        };
        json
    }

    /// The counts and levels the metrics show. Holds the hub's lock for one relaxed load
    /// per member (each outbox's published size: no outbox lock, no allocation), about as
    /// long as one public message's fan-out.
    pub fn stats(&self) -> HubStats {
        let inner = self.lock();
        let outbox_bytes = inner
            .members
            .values()
            .map(|m| u64::from(m.outbox.queued_bytes()))
            .sum();
        HubStats {
            online: inner.members.len() as u64,
            public: inner.counts.public,
            private: inner.counts.private,
            delivered: inner.counts.delivered,
            outbox_bytes,
        }
    }

    /// Accepts a public message and delivers it to everyone online, the sender included.
    /// With `echo_ref` (the `ref` of the sender's `send`, already JSON), the sender's own
    /// session (`from_conn`) gets the echo with the ref; every other copy is the same shared
    /// bytes, without it. With `history` (a slot of the history writer, taken before), the
    /// message is handed to the writer as it gets its id, so the writer has it in id order
    /// before anyone is sent it.
    pub fn publish(
        &self,
        from: &UserId,
        from_conn: u64,
        text: MessageText,
        echo_ref: Option<&Bytes>,
        history: Option<HistoryPermit>,
    ) {
        let head = ChatHead::new(from, text.as_str());
        // Built before the lock; only the id and time are filled in under it.
        let kept = history.map(|permit| (permit, unnumbered(from, &text, Recipient::Everyone)));
        let mut inner = self.lock();
        let (id, ts) = next_id(&mut inner.last_id);
        let obj = head.finish(Recipient::Everyone.as_str(), id, ts);
        // Before any outbox has it (sessions drain theirs without the hub's lock): a
        // `history` asked as soon as it arrives finds it.
        if let Some((permit, message)) = kept {
            permit.push(ChatMessage { id, ts, ..message });
        }
        let delivered = match echo_ref {
            None => inner.broadcast(Out::Chat(obj), None),
            Some(_) => {
                let echo = Echo::of(echo_ref, obj.clone());
                let others = inner.broadcast(Out::Chat(obj), Some(from_conn));
                others + inner.echo(from_conn, &from.key(), echo)
            }
        };
        inner.counts.public += 1;
        inner.counts.delivered += delivered;
    }

    /// Accepts a private message: delivered to the recipient when online, otherwise stored
    /// in their mailbox; echoed to the sender (`from_conn`) either way, once accepted, with
    /// `echo_ref` (the `ref` of the sender's `send`, already JSON) when given: only the
    /// sender's copy carries it, and it is never stored. A recipient whose outbox is full
    /// is cut off as a slow consumer and the message is stored for its next login.
    ///
    /// `history`, a slot of the history writer taken before: a message to an online
    /// recipient is handed to the writer as it gets its id (in id order, before anyone is
    /// sent it); one for an offline recipient gets its history row from [`Store::enqueue`]
    /// instead, and the slot is given back (a recipient cut off as a slow consumer gets
    /// both, which keep one row).
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
        echo_ref: Option<Bytes>,
        history: Option<HistoryPermit>,
    ) -> Result<(), Failure> {
        match self.send_private_now(from, from_conn, to, text, echo_ref, history) {
            None => Ok(()),
            Some(pending) => self.finish_private(pending).await,
        }
    }

    /// The part of [`Hub::send_private`] that needs no wait: a message to an online
    /// recipient without acknowledged delivery is delivered and echoed here (`None`, the
    /// usual case, with no future built or allocated); otherwise what is left to do (a
    /// mailbox write to wait for, or an offline recipient to look up), for
    /// [`Hub::finish_private`].
    pub fn send_private_now(
        &self,
        from: &UserId,
        from_conn: u64,
        to: &UserId,
        text: MessageText,
        echo_ref: Option<Bytes>,
        history: Option<HistoryPermit>,
    ) -> Option<PendingPrivate> {
        let route = Route {
            from_key: from.key(),
            from_conn,
            key: to.key(),
            echo_ref,
        };
        let step = match self.try_online(&route, Draft::new(from, text, history)) {
            Ok(Attempt::Delivered) => return None,
            Ok(attempt) => Step::Settle(attempt),
            Err(draft) => Step::Offline(draft),
        };
        Some(PendingPrivate {
            route,
            to: to.clone(),
            step,
        })
    }

    /// Finishes what [`Hub::send_private_now`] left to do.
    ///
    /// # Errors
    /// As [`Hub::send_private`].
    pub async fn finish_private(&self, pending: PendingPrivate) -> Result<(), Failure> {
        let PendingPrivate { route, to, step } = pending;
        let attempt = match step {
            Step::Settle(attempt) => attempt,
            Step::Offline(draft) => {
                // Offline (or unknown): learn the recipient's registered spelling first.
                let account = self
                    .store
                    .account(route.key.clone())
                    .await
                    .map_err(store_failure)?
                    .ok_or_else(|| no_such_user(&to))?;
                self.deliver_or_store(&route, draft, account.user_id)
            }
        };
        self.settle(attempt, &route, &to).await
    }

    /// Delivers a private message if its recipient is online; gives the draft back if not.
    fn try_online(&self, route: &Route, draft: Draft) -> Result<Attempt, Draft> {
        let mut inner = self.lock();
        match inner.deliver_online(route, draft, &*self.store) {
            Delivery::Delivered => Ok(Attempt::Delivered),
            Delivery::Storing(stored, kept, held) => Ok(Attempt::Storing(stored, kept, held)),
            Delivery::CutOff(private) => Ok(self.store_locked(&inner, route, private)),
            Delivery::Offline(draft) => Err(draft),
        }
    }

    /// Delivers a private message if its recipient (`to`, as registered) is online, and
    /// stores it in their mailbox otherwise.
    fn deliver_or_store(&self, route: &Route, draft: Draft, to: UserId) -> Attempt {
        let mut inner = self.lock();
        match inner.deliver_online(route, draft, &*self.store) {
            Delivery::Delivered => Attempt::Delivered,
            Delivery::Storing(stored, kept, held) => Attempt::Storing(stored, kept, held),
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
        Attempt::Storing(stored, kept, None)
    }

    /// Finishes a delivery attempt: a message being stored is echoed to its sender once the
    /// store has it; the store's refusal becomes the sender's `fail`. A message held in an
    /// acknowledged-delivery recipient's outbox is let go, or dropped, first.
    async fn settle(&self, attempt: Attempt, route: &Route, to: &UserId) -> Result<(), Failure> {
        let (stored, kept, held) = match attempt {
            Attempt::Delivered => return Ok(()),
            Attempt::Storing(stored, kept, held) => (stored, kept, held),
        };
        let stored = stored.await;
        if let Some(held) = &held {
            held.outbox.release(held.id, stored.is_ok());
        }
        match stored {
            Ok(()) => {
                let mut inner = self.lock();
                inner.counts.private += 1;
                // Held in an online recipient's outbox, and now let go.
                inner.counts.delivered += u64::from(held.is_some());
                // To oneself, the item let go is the echo too.
                if !held.as_ref().is_some_and(|h| h.to_self) {
                    let echo = Echo::of(route.echo_ref.as_ref(), kept.echo);
                    inner.echo(route.from_conn, &route.from_key, echo);
                }
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

/// A private message that came over the cluster bus, with its id and time from Redis.
#[derive(Debug)]
pub struct BusPrivate {
    /// The sender, as registered.
    pub from: UserId,
    /// The recipient, as registered.
    pub to: UserId,
    /// The text.
    pub text: String,
    /// Its id.
    pub id: u64,
    /// When it was accepted (Redis's clock), Unix milliseconds.
    pub ts: u64,
    /// For the recipient, if it is online on this node.
    pub deliver: bool,
    /// Already in the recipient's mailbox (committed before this was published).
    pub stored: bool,
    /// The sender's echo: its session on this node, and the ref of its `send` (JSON).
    pub echo: Option<(u64, Option<Bytes>)>,
}

/// Cluster mode: what the bus subscriber of this node hands the hub. Every message and
/// notice is delivered here once per node, and fanned out to the local sessions through
/// the same encode-once path as in a single process.
impl Hub {
    /// Tells the hub the cluster's id counter gave out `id`: the ids this node asks for
    /// next have it as their floor.
    pub fn observe_id(&self, id: u64) {
        let mut inner = self.lock();
        inner.last_id = inner.last_id.max(id);
    }

    /// The highest message id this node has seen (or its store's high-water mark).
    pub fn last_id(&self) -> u64 {
        self.lock().last_id
    }

    /// Sends the hub's departures (a local user's session removed, with `left`) to the
    /// cluster bus from now on.
    pub(crate) fn set_departures(&self, departures: crate::cluster::Departures) {
        self.lock().departures = Some(departures);
    }

    /// The users logged in on this node: spelling, connection, acknowledged delivery.
    pub fn local_members(&self) -> Vec<(UserId, u64, bool)> {
        let inner = self.lock();
        inner
            .members
            .values()
            .map(|m| (m.user_id.clone(), m.conn_id, m.outbox.has_acks()))
            .collect()
    }

    /// A `joined` or `left` from the cluster bus: one append to the presence log. Returns
    /// the log's head after it.
    pub fn remote_notice(&self, notice: Notice) -> u64 {
        let mut inner = self.lock();
        inner.announce(notice);
        inner.seq
    }

    /// The presence log's head now (where a session registered now starts reading).
    pub fn presence_head(&self) -> u64 {
        self.lock().seq
    }

    /// A newer login on another node took over `key`'s session `conn_id` here: it is
    /// removed without `left` and kicked (`fail 409`). Returns whether it was here.
    pub fn take_over_remote(&self, key: &str, conn_id: u64) -> bool {
        let mut inner = self.lock();
        if inner.members.get(key).is_none_or(|m| m.conn_id != conn_id) {
            return false;
        }
        let Some(m) = inner.members.remove(key) else {
            return false;
        };
        tracing::info!(user = %m.user_id, conn = conn_id, "session taken over by another node");
        m.outbox.stop_presence(inner.seq);
        m.outbox.kick(KickReason::TakenOver);
        inner.membership_changed(&m.user_id, false);
        true
    }

    /// Kicks every session of this node (`reason`): the node was declared dead by the
    /// cluster while it was cut off, and its users shown as gone.
    pub fn kick_all(&self, reason: KickReason) {
        let mut inner = self.lock();
        let members: Vec<Member> = inner.members.drain().map(|(_, m)| m).collect();
        for m in members {
            m.outbox.stop_presence(inner.seq);
            m.outbox.kick(reason);
            inner.membership_changed(&m.user_id, false);
        }
    }

    /// A public message numbered by the cluster: delivered to every session of this node.
    /// `echo`: the sender's session is on this node (its conn, and its ref). `history`: this
    /// node keeps it (it is the sender's).
    pub fn deliver_public(
        &self,
        from: &UserId,
        text: &str,
        (id, ts): (u64, u64),
        echo: Option<(u64, Option<Bytes>)>,
        history: Option<HistoryPermit>,
    ) {
        let head = ChatHead::new(from, text);
        let mut inner = self.lock();
        inner.last_id = inner.last_id.max(id);
        let obj = head.finish(Recipient::Everyone.as_str(), id, ts);
        if let Some(permit) = history {
            permit.push(ChatMessage {
                r#ref: None,
                user_id: from.clone(),
                message: text.to_owned(),
                to: Recipient::Everyone,
                id,
                ts,
            });
        }
        let delivered = match echo {
            Some((conn, Some(r))) => {
                let echo = Echo::of(Some(&r), obj.clone());
                let others = inner.broadcast(Out::Chat(obj), Some(conn));
                others + inner.echo(conn, &from.key(), echo)
            }
            _ => inner.broadcast(Out::Chat(obj), None),
        };
        inner.counts.public += 1;
        inner.counts.delivered += delivered;
    }

    /// A private message numbered by the cluster: queued for its recipient if it is
    /// online here (`deliver`), and echoed to its sender if that one is here (`echo`).
    /// A recipient that left meanwhile, or whose outbox is full, gets it in its mailbox
    /// (asked for under the lock: a login that registers afterwards reads it); one already
    /// `stored` there is delivered and then deleted from it (kept until acked with acks).
    /// `history`: this node keeps it (the sender's node, for a message not in a mailbox).
    pub fn deliver_private(&self, mut p: BusPrivate, history: Option<HistoryPermit>) {
        let head = ChatHead::new(&p.from, &p.text);
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.last_id = inner.last_id.max(p.id);
        let private = Arc::new(Private {
            obj: head.finish(p.to.as_str(), p.id, p.ts),
            from: p.from.clone(),
            text: p.text,
            id: p.id,
            ts: p.ts,
        });
        if let Some(permit) = history {
            permit.push(private.message(p.to.clone()));
        }
        let to_key = p.to.key();
        let mut echoed = false;
        if p.deliver && p.stored {
            let (seen, order) = &mut inner.stored_seen;
            if seen.contains(&p.id) {
                // Delivered here from the mailbox already.
                p.deliver = false;
            } else {
                seen.insert(p.id);
                order.push_back(p.id);
                if order.len() > STORED_SEEN
                    && let Some(old) = order.pop_front()
                {
                    seen.remove(&old);
                }
            }
        }
        let mut spawn: Vec<BoxFuture<'static, Result<(), StoreError>>> = Vec::new();
        if p.deliver {
            match inner.members.get(&to_key) {
                None => {
                    if !p.stored {
                        // Left meanwhile: kept for the next login.
                        spawn.push(
                            self.store
                                .enqueue(to_key.clone(), private.message(p.to.clone())),
                        );
                    }
                }
                Some(m) => {
                    let to_self = p.echo.as_ref().is_some_and(|(c, _)| *c == m.conn_id);
                    let item = if to_self {
                        echoed = true;
                        Echo::of_private(
                            p.echo.as_ref().and_then(|(_, r)| r.as_ref()),
                            private.clone(),
                        )
                    } else {
                        Out::Private(private.clone())
                    };
                    let acks = m.outbox.has_acks();
                    if acks && !p.stored {
                        spawn.push(
                            self.store
                                .enqueue(to_key.clone(), private.message(p.to.clone())),
                        );
                    }
                    let seq = inner.seq;
                    let queued = offer(m, seq, item, &mut inner.slow);
                    if !queued {
                        inner.cut_off();
                        if !p.stored && !acks {
                            spawn.push(
                                self.store
                                    .enqueue(to_key.clone(), private.message(p.to.clone())),
                            );
                        }
                    } else {
                        inner.counts.delivered += 1;
                        if p.stored && !acks {
                            spawn.push(self.store.delete_delivered(to_key.clone(), vec![p.id]));
                        }
                    }
                }
            }
        }
        if let Some((conn, r)) = &p.echo
            && !echoed
        {
            let echo = Echo::of(r.as_ref(), private.obj.clone());
            inner.echo(*conn, &p.from.key(), echo);
        }
        if p.echo.is_some() {
            inner.counts.private += 1;
        }
        drop(guard);
        for f in spawn {
            let id = p.id;
            tokio::spawn(async move {
                if let Err(e) = f.await {
                    tracing::error!(error = %e, id, "cannot update the mailbox for a message from the cluster bus");
                }
            });
        }
    }
}

/// Where a private message stands once the hub has seen it.
enum Attempt {
    /// Queued for its online recipient (and echoed).
    Delivered,
    /// On its way to the recipient's mailbox: echoed once stored. Also queued, held until
    /// then, when the recipient is online with acknowledged delivery.
    Storing(
        BoxFuture<'static, Result<(), StoreError>>,
        ForMailbox,
        Option<Held>,
    ),
}

/// A private message [`Hub::send_private_now`] could not settle at once: hand it to
/// [`Hub::finish_private`].
#[must_use = "the message is neither echoed nor stored until finished"]
pub struct PendingPrivate {
    route: Route,
    /// The recipient as the sender wrote it (for a `fail`).
    to: UserId,
    step: Step,
}

impl fmt::Debug for PendingPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingPrivate")
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// What is left of a private message's delivery.
enum Step {
    /// Being stored (the recipient is offline, cut off, or online with acknowledged
    /// delivery): echoed once stored.
    Settle(Attempt),
    /// The recipient is not online: its account is looked up, then the message is
    /// delivered (it may have logged in meanwhile) or stored.
    Offline(Draft),
}

/// A private message queued, held, in the outbox of a recipient with acknowledged
/// delivery until its mailbox write commits ([`Outbox::release`]).
struct Held {
    outbox: Arc<Outbox>,
    id: u64,
    /// Sent to oneself: the queued item is also the echo.
    to_self: bool,
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
/// recipient's case-folded id; and the `ref` of the sender's `send` (JSON) for its echo.
struct Route {
    from_key: String,
    from_conn: u64,
    key: String,
    echo_ref: Option<Bytes>,
}

/// A private message before the hub gives it an id: the costly encoding of sender and text
/// is done before the hub's lock is taken.
struct Draft {
    head: ChatHead,
    from: UserId,
    text: MessageText,
    /// The history writer's slot for it, used if it is delivered online.
    history: Option<HistoryPermit>,
}

impl Draft {
    fn new(from: &UserId, text: MessageText, history: Option<HistoryPermit>) -> Draft {
        Draft {
            head: ChatHead::new(from, text.as_str()),
            from: from.clone(),
            text,
            history,
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
    /// The recipient is online with acknowledged delivery: the message is on its way to the
    /// mailbox, and queued, held until stored (unless the outbox was full: then the
    /// recipient is cut off). Echoed once stored.
    Storing(
        BoxFuture<'static, Result<(), StoreError>>,
        ForMailbox,
        Option<Held>,
    ),
}

impl Inner {
    /// Records that `user_id` came online (`online`) or went offline: a new membership
    /// version, and one change for the next `list` to apply.
    fn membership_changed(&mut self, user_id: &UserId, online: bool) {
        self.version += 1;
        if self.list_reset {
            // The next `list` rebuilds the roster from the members, who already show this
            // change: keeping it too would only hold memory until then.
            return;
        }
        // Removed first, so that the key keeps the latest spelling.
        self.list_delta.remove(user_id);
        self.list_delta.insert(user_id.clone(), online);
        if self.list_delta.len() > self.members.len() / 4 + MAX_LIST_DELTA_SLACK {
            // Nobody asked for `list` through many comings and goings: rather than keep
            // one entry for every user ever seen, rebuild from the members when asked.
            self.list_delta = HashMap::new();
            self.list_reset = true;
        }
    }

    /// The last `list` snapshot, if membership has not changed since.
    fn current_list(&self) -> Option<Bytes> {
        (self.list.version == self.version).then(|| self.list.json.clone())
    }

    /// Remembers `r` as its account's latest revocation, for logins still being checked.
    fn remember(&mut self, r: &Revocation) {
        let revoked = Revoked {
            at_ms: r.at_ms,
            kind: r.kind,
        };
        if self.revoked.len() >= MAX_REMEMBERED_REVOCATIONS && !self.revoked.contains_key(&r.key) {
            self.forget_oldest_revocation();
        }
        match self.revoked.entry(r.key.clone()) {
            Entry::Occupied(mut e) => {
                if e.get().at_ms <= r.at_ms {
                    e.insert(revoked);
                }
            }
            Entry::Vacant(e) => {
                e.insert(revoked);
            }
        }
    }

    /// Drops the oldest remembered revocation (the map is at its bound).
    fn forget_oldest_revocation(&mut self) {
        let oldest = self
            .revoked
            .iter()
            .min_by_key(|(_, r)| r.at_ms)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            tracing::warn!("too many revocations to remember; forgetting the oldest");
            self.revoked.remove(&key);
        }
    }

    /// Delivers a private message to its recipient, if online, and echoes it to the sender.
    /// A recipient with acknowledged delivery gets it through its mailbox
    /// ([`Inner::deliver_acked`]).
    fn deliver_online(&mut self, route: &Route, mut draft: Draft, store: &dyn Store) -> Delivery {
        let Some(recipient) = self.members.get(&route.key) else {
            return Delivery::Offline(draft);
        };
        let to_conn = recipient.conn_id;
        let history = draft.history.take();
        let (id, ts) = next_id(&mut self.last_id);
        let private = Arc::new(draft.finish(&recipient.user_id, id, ts));
        let acks = recipient.outbox.has_acks();
        if let Some(permit) = history.filter(|_| !acks) {
            // Under the lock that gave the id, so the writer gets messages in id order, and
            // before the recipient's outbox has it (a session drains its outbox without
            // the hub's lock): a `history` asked as soon as it arrives finds it. One row
            // for a message to oneself too. If the recipient is cut off below, the
            // mailbox's `enqueue` writes the same row again: kept once, by id. With acks,
            // `enqueue` writes it in the mailbox's transaction, before the message is
            // handed out, so the permit is dropped unused.
            permit.push(private.message(recipient.user_id.clone()));
        }
        // To oneself, the one copy is both the delivery and the echo (with the ref).
        let item = if to_conn == route.from_conn {
            Echo::of_private(route.echo_ref.as_ref(), private.clone())
        } else {
            Out::Private(private.clone())
        };
        if acks {
            let (to, outbox) = (recipient.user_id.clone(), recipient.outbox.clone());
            return self.deliver_acked(route, store, (to, to_conn, outbox), item, &private);
        }
        offer(recipient, self.seq, item, &mut self.slow);
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
            let echo = Echo::of(route.echo_ref.as_ref(), private.obj.clone());
            self.echo(route.from_conn, &route.from_key, echo);
        }
        self.counts.private += 1;
        self.counts.delivered += 1;
        Delivery::Delivered
    }

    /// Delivers a private message (`item`, for `private`) to a recipient online with
    /// acknowledged delivery (`to`: its id as registered, connection and outbox): its
    /// mailbox write is asked for first, under the lock (the store's ordering contract: a
    /// login that registers afterwards reads it), then the item is queued, held until the
    /// write commits, so that the client never gets a message that is not durable, and gets
    /// them in id order. The sender's echo waits for the commit.
    fn deliver_acked(
        &mut self,
        route: &Route,
        store: &dyn Store,
        (to, to_conn, outbox): (UserId, u64, Arc<Outbox>),
        item: Out,
        private: &Private,
    ) -> Delivery {
        let kept = ForMailbox {
            msg: private.message(to),
            echo: private.obj.clone(),
        };
        let stored = store.enqueue(route.key.clone(), kept.msg.clone());
        let held = match outbox.push_uncommitted(self.seq, item) {
            Ok(()) => Some(Held {
                outbox,
                id: private.id,
                to_self: to_conn == route.from_conn,
            }),
            Err(_) => {
                // Cut off as a slow consumer; the message is in the mailbox.
                self.slow.push((route.key.clone(), to_conn));
                self.cut_off();
                None
            }
        };
        Delivery::Storing(stored, kept, held)
    }

    /// Sends to the sender's own session (`from_key`, case-folded), if it is still the
    /// logged-in one. Returns 1 if it was queued, else 0.
    fn echo(&mut self, from_conn: u64, from_key: &str, item: Out) -> u64 {
        let mut queued = false;
        if let Some(m) = self.members.get(from_key) {
            if m.conn_id == from_conn {
                queued = offer(m, self.seq, item, &mut self.slow);
            }
        }
        self.cut_off();
        u64::from(queued)
    }

    /// Offers `item` to every member except `except`, then cuts off the slow ones. Returns
    /// how many outboxes took it.
    fn broadcast(&mut self, item: Out, except: Option<u64>) -> u64 {
        let mut queued = 0;
        for m in self.members.values() {
            if Some(m.conn_id) != except {
                queued += u64::from(offer(m, self.seq, item.clone(), &mut self.slow));
            }
        }
        self.cut_off();
        queued
    }

    /// Announces a presence notice: one append to the log (O(1), no outbox touched); the
    /// items queued from now on carry the new head. Makes a tick of the presence ticker due.
    fn announce(&mut self, notice: Notice) {
        self.seq = self.presence.append(notice, self.members.len());
        if !std::mem::replace(&mut self.tick_due, true) {
            self.tick.notify_one();
        }
    }

    /// Removes and kicks the slow consumers found by the offers before, telling the others
    /// they left (which queues nothing: no outbox fills with notices). Every operation that
    /// offers items ends with it.
    fn cut_off(&mut self) {
        while let Some((key, conn_id)) = self.slow.pop() {
            if self.members.get(&key).is_none_or(|m| m.conn_id != conn_id) {
                continue;
            }
            let Some(m) = self.members.remove(&key) else {
                continue;
            };
            tracing::warn!(user = %m.user_id, conn = conn_id, "slow consumer: outbox full, disconnecting");
            m.outbox.stop_presence(self.seq);
            m.outbox.kick(KickReason::SlowConsumer);
            self.membership_changed(&m.user_id, false);
            self.announce(Notice::left(&m.user_id));
            self.depart(&m.user_id, conn_id);
        }
    }

    /// In cluster mode, tells the bus that `user_id`'s session `conn_id` left this node
    /// (never blocks: see [`crate::cluster::Departures::send`]). Nothing in a single
    /// process.
    fn depart(&self, user_id: &UserId, conn_id: u64) {
        if let Some(d) = &self.departures {
            d.send(user_id, conn_id);
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

/// The message `from` sends to `to`, its id and time still 0: what the hub builds before
/// its lock, to fill in under it.
fn unnumbered(from: &UserId, text: &MessageText, to: Recipient) -> ChatMessage {
    ChatMessage {
        r#ref: None,
        user_id: from.clone(),
        message: text.as_str().to_owned(),
        to,
        id: 0,
        ts: 0,
    }
}

/// The JSON array of `users`' ids, in order: what serde_json writes for them.
pub(crate) fn encode_list(users: &BTreeSet<UserId>) -> Bytes {
    // A user id is at most 32 characters, none of which JSON escapes.
    let mut buf = Vec::with_capacity(2 + users.len() * 16);
    buf.push(b'[');
    for (i, u) in users.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.push(b'"');
        buf.extend_from_slice(u.as_str().as_bytes());
        buf.push(b'"');
    }
    buf.push(b']');
    Bytes::from(buf)
}

/// Queues `item` for a member, after the notices below `seq`; a full outbox marks it slow.
/// Returns whether it was queued.
fn offer(m: &Member, seq: u64, item: Out, slow: &mut Vec<(String, u64)>) -> bool {
    let queued = m.outbox.push(seq, item).is_ok();
    if !queued {
        slow.push((m.user_id.key(), m.conn_id));
    }
    queued
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
    use crate::presence::{Bell, Reader, Sink};
    use crate::store::MemoryStore;
    use crate::wire::encode_reply;
    use simpletextim_proto::Reply;
    use std::cell::Cell;
    use std::time::Instant;

    /// Every item, whatever its presence number.
    const ALL: u64 = u64::MAX;

    /// A member as a test sees it: its outbox, and its place in the presence log, read as
    /// its session reads them ([`Reader::drain`]).
    struct Client {
        outbox: Arc<Outbox>,
        reader: Cell<Reader>,
    }

    impl std::ops::Deref for Client {
        type Target = Outbox;
        fn deref(&self) -> &Outbox {
            &self.outbox
        }
    }

    /// What a drain wrote, as text: each notice and each item's bytes.
    #[derive(Default)]
    struct Texts(Vec<String>);

    impl Sink for Texts {
        fn notice(&mut self, n: &Notice) {
            let (head, id, tail) = n.parts();
            self.0
                .push(String::from_utf8_lossy(&[head, id, tail].concat()).into_owned());
        }
        fn item(&mut self, item: &Out) {
            self.0
                .push(String::from_utf8_lossy(item.bytes()).into_owned());
        }
    }

    /// Everything `c` has to write now, in order, as its session would drain it.
    fn frames(hub: &Hub, c: &Client) -> Vec<String> {
        let mut reader = c.reader.get();
        let mut sink = Texts::default();
        while reader
            .drain(hub.presence(), &c.outbox, &mut sink)
            .expect("not behind the log")
            .more
        {}
        c.reader.set(reader);
        sink.0
    }

    /// A memory store with the accounts `alice` and `bob`, both with `password_hash`.
    async fn alice_and_bob(password_hash: &str) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::new(10));
        for name in ["alice", "bob"] {
            store
                .create_account(crate::store::Account {
                    user_id: UserId::new(name).expect("valid id"),
                    password_hash: password_hash.into(),
                    created_ms: 1,
                })
                .await
                .expect("created");
        }
        store
    }

    fn member(hub: &Hub, conn_id: u64, name: &str) -> Client {
        member_since(hub, conn_id, name, 1).expect("not revoked")
    }

    /// Joins `name` as a session whose login looked the account up at `login_ms`.
    fn member_since(
        hub: &Hub,
        conn_id: u64,
        name: &str,
        login_ms: u64,
    ) -> Result<Client, KickReason> {
        let outbox = Outbox::new(crate::outbox::Limits {
            items: 64,
            bytes: 64 * 1024,
        });
        let cursor = hub.join(Member {
            conn_id,
            user_id: UserId::new(name).expect("valid id"),
            outbox: outbox.clone(),
            login_ms,
        })?;
        Ok(Client {
            outbox,
            reader: Cell::new(Reader::new(cursor)),
        })
    }

    fn revocation(id: u64, key: &str, at_ms: u64, kind: RevocationKind) -> Revocation {
        Revocation {
            id,
            key: key.into(),
            at_ms,
            kind,
        }
    }

    #[test]
    fn a_revocation_ends_only_a_session_that_logged_in_at_or_before_it() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        let bob = member_since(&hub, 2, "Bob", 100).expect("not revoked");
        // Bob's login looked the account up after this change: it had the new password.
        assert!(!hub.revoke(&revocation(1, "bob", 99, RevocationKind::PasswordChanged)));
        assert_eq!(bob.kicked(), None);
        // At the same millisecond: it may have read the old one.
        assert!(hub.revoke(&revocation(2, "bob", 100, RevocationKind::PasswordChanged)));
        assert_eq!(
            bob.kicked(),
            Some(KickReason::Revoked(RevocationKind::PasswordChanged))
        );
        assert_eq!(
            frames(&hub, &alice),
            vec![
                r#"{"command":"joined","user_id":"Bob"}"#,
                r#"{"command":"left","user_id":"Bob"}"#,
            ]
        );
        assert_eq!(&hub.list()[..], br#"["alice"]"#);
        // Gone already: nothing more to end, and nobody else is told anything.
        assert!(!hub.revoke(&revocation(3, "bob", 200, RevocationKind::AccountDeleted)));
        assert!(frames(&hub, &alice).is_empty());
        assert_eq!(alice.kicked(), None);
    }

    #[test]
    fn a_login_checked_before_a_revocation_seen_meanwhile_is_refused() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        // Seen while bob's login (looked up at 500) was still being checked.
        assert!(!hub.revoke(&revocation(1, "bob", 500, RevocationKind::AccountDeleted)));
        assert_eq!(
            member_since(&hub, 2, "bob", 500).err(),
            Some(KickReason::Revoked(RevocationKind::AccountDeleted))
        );
        // Not registered: no `joined`, not listed.
        assert!(frames(&hub, &alice).is_empty());
        assert_eq!(&hub.list()[..], br#"["alice"]"#);
        // A login that looked the account up after it joins.
        let _bob = member_since(&hub, 3, "bob", 501).expect("not revoked");
        assert_eq!(
            frames(&hub, &alice),
            vec![r#"{"command":"joined","user_id":"bob"}"#]
        );
        // Once forgotten (no login that old can still be checked), it refuses nobody.
        hub.forget_revocations_before(501);
        assert!(member_since(&hub, 4, "carol", 1).is_ok());
        assert!(hub.lock().revoked.is_empty());
    }

    #[test]
    fn a_revocation_stamped_ahead_of_the_clock_counts_as_of_when_it_was_seen() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let before = member(&hub, 1, "dave");
        assert!(hub.revoke(&revocation(
            1,
            "dave",
            u64::MAX,
            RevocationKind::PasswordChanged
        )));
        assert_eq!(
            before.kicked(),
            Some(KickReason::Revoked(RevocationKind::PasswordChanged))
        );
        // A login that looks the account up after the revocation was seen is not refused,
        // whatever time the revocation carries.
        let after = crate::now_ms() + 1;
        assert!(member_since(&hub, 2, "dave", after).is_ok());
    }

    /// A [`MemoryStore`] whose revocation reads fail while `failures` is above zero (each
    /// failed read counts one down).
    struct FlakyStore {
        inner: MemoryStore,
        failures: std::sync::atomic::AtomicU32,
    }

    impl Store for FlakyStore {
        fn account(
            &self,
            key: String,
        ) -> BoxFuture<'static, Result<Option<crate::store::Account>, StoreError>> {
            self.inner.account(key)
        }
        fn create_account(
            &self,
            account: crate::store::Account,
        ) -> BoxFuture<'static, Result<(), StoreError>> {
            self.inner.create_account(account)
        }
        fn enqueue(
            &self,
            key: String,
            m: ChatMessage,
        ) -> BoxFuture<'static, Result<(), StoreError>> {
            self.inner.enqueue(key, m)
        }
        fn pending(&self, key: String) -> BoxFuture<'static, Result<Vec<ChatMessage>, StoreError>> {
            self.inner.pending(key)
        }
        fn delete_delivered(
            &self,
            key: String,
            ids: Vec<u64>,
        ) -> BoxFuture<'static, Result<(), StoreError>> {
            self.inner.delete_delivered(key, ids)
        }
        fn max_message_id(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
            self.inner.max_message_id()
        }
        fn revocations_after(
            &self,
            after_id: u64,
            limit: usize,
        ) -> BoxFuture<'static, Result<Vec<Revocation>, StoreError>> {
            use std::sync::atomic::Ordering;
            let failing = self
                .failures
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                let e = StoreError::Backend("disk on fire".into());
                return Box::pin(std::future::ready(Err(e)));
            }
            self.inner.revocations_after(after_id, limit)
        }
    }

    #[tokio::test]
    async fn a_store_error_while_watching_is_retried_and_not_fatal() {
        let store = Arc::new(FlakyStore {
            inner: MemoryStore::new(10),
            failures: std::sync::atomic::AtomicU32::new(2),
        });
        let erin = crate::store::Account {
            user_id: UserId::new("erin").expect("valid id"),
            password_hash: "old".into(),
            created_ms: 1,
        };
        store.inner.create_account(erin).await.expect("created");
        let hub = Arc::new(Hub::new(store.clone(), 0));
        let session = member(&hub, 1, "erin");
        store
            .inner
            .delete_account("erin".into())
            .await
            .expect("deleted");
        let shutdown = CancellationToken::new();
        let watch = tokio::spawn({
            let hub = hub.clone();
            let shutdown = shutdown.clone();
            async move {
                hub.watch_revocations(0, Duration::from_secs(60), shutdown)
                    .await;
            }
        });
        // Two polls fail; the third reads the deletion.
        let deadline = Instant::now() + REVOCATION_POLL * 6;
        while session.kicked().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            session.kicked(),
            Some(KickReason::Revoked(RevocationKind::AccountDeleted))
        );
        assert_eq!(store.failures.load(std::sync::atomic::Ordering::Acquire), 0);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("the watch ends on shutdown")
            .expect("the watch does not panic");
    }

    #[tokio::test]
    async fn the_watch_ends_a_session_after_a_password_change_and_stops_on_shutdown() {
        let store = alice_and_bob("old").await;
        // A revocation from before the watch starts is not acted on.
        store
            .set_password_hash("alice".into(), "older".into())
            .await
            .expect("changed");
        let after_id = store.last_revocation_id().await.expect("read");
        assert_eq!(after_id, 1);
        let hub = Arc::new(Hub::new(store.clone(), 0));
        let alice = member(&hub, 1, "alice");
        let bob = member(&hub, 2, "bob");
        let shutdown = CancellationToken::new();
        let watch = tokio::spawn({
            let hub = hub.clone();
            let shutdown = shutdown.clone();
            async move {
                hub.watch_revocations(after_id, Duration::from_secs(60), shutdown)
                    .await;
            }
        });
        tokio::time::sleep(REVOCATION_POLL * 2).await;
        assert_eq!(alice.kicked(), None);
        store
            .set_password_hash("bob".into(), "new".into())
            .await
            .expect("changed");
        let deadline = Instant::now() + REVOCATION_POLL * 5;
        while bob.kicked().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            bob.kicked(),
            Some(KickReason::Revoked(RevocationKind::PasswordChanged))
        );
        assert_eq!(alice.kicked(), None);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("the watch ends on shutdown")
            .expect("the watch does not panic");
    }

    #[tokio::test]
    async fn presence_notices_reach_an_idle_session_in_order_by_one_ring_a_tick() {
        let hub = Arc::new(Hub::new(Arc::new(MemoryStore::new(10)), 0));
        let shutdown = CancellationToken::new();
        let ticker = tokio::spawn({
            let hub = hub.clone();
            let shutdown = shutdown.clone();
            async move { hub.presence_ticker(shutdown).await }
        });
        // Armed before the join, as a session does.
        let mut bell = Bell::new(hub.presence());
        let alice = member(&hub, 1, "alice");
        let started = Instant::now();
        let _bob = member(&hub, 2, "bob");
        let _carol = member(&hub, 3, "carol");
        hub.leave(&UserId::new("bob").expect("valid id"), 2);
        // Nothing queued, nobody woken: the notices wait in the log for the tick.
        {
            use futures::FutureExt;
            assert!(alice.changed().now_or_never().is_none());
            assert!(bell.rung(hub.presence()).now_or_never().is_none());
        }
        assert!(alice.take(ALL).items.is_empty());
        tokio::time::timeout(Duration::from_secs(5), bell.rung(hub.presence()))
            .await
            .expect("woken by the presence ticker");
        assert!(started.elapsed() >= PRESENCE_TICK);
        bell.rearm(hub.presence());
        assert_eq!(
            frames(&hub, &alice),
            vec![
                r#"{"command":"joined","user_id":"bob"}"#,
                r#"{"command":"joined","user_id":"carol"}"#,
                r#"{"command":"left","user_id":"bob"}"#,
            ]
        );
        // Rung once for the three; nothing more without a new notice.
        {
            use futures::FutureExt;
            tokio::time::sleep(PRESENCE_TICK * 3).await;
            assert!(bell.rung(hub.presence()).now_or_never().is_none());
        }
        let _dave = member(&hub, 4, "dave");
        tokio::time::timeout(Duration::from_secs(5), bell.rung(hub.presence()))
            .await
            .expect("rung again for the new notice");
        assert_eq!(
            frames(&hub, &alice),
            vec![r#"{"command":"joined","user_id":"dave"}"#]
        );
        shutdown.cancel();
        ticker.await.expect("ticker ends on shutdown");
    }

    fn joined(name: &str) -> String {
        format!(r#"{{"command":"joined","user_id":"{name}"}}"#)
    }

    fn left(name: &str) -> String {
        format!(r#"{{"command":"left","user_id":"{name}"}}"#)
    }

    #[test]
    fn a_storm_of_joins_touches_no_outbox_and_every_member_reads_each_later_join_once_in_order() {
        const N: usize = 1000;
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let names: Vec<String> = (0..N).map(|i| format!("u{i:04}")).collect();
        // Outboxes of 64 items: a notice queued in each would fill them 15 times over.
        let members: Vec<Client> = names
            .iter()
            .enumerate()
            .map(|(i, name)| member(&hub, i as u64 + 1, name))
            .collect();
        for m in &members {
            assert_eq!(m.kicked(), None);
            let taken = m.take(ALL);
            assert!(taken.items.is_empty());
            assert_eq!(taken.presence_end, None);
        }
        assert_eq!(hub.presence().head(), N as u64);
        for (i, m) in members.iter().enumerate() {
            // Its own `joined` and those before it are not its business.
            let expected: Vec<String> = names[i + 1..].iter().map(|n| joined(n)).collect();
            assert_eq!(frames(&hub, m), expected, "member {i}");
            assert!(frames(&hub, m).is_empty());
        }
    }

    #[test]
    fn a_member_logged_in_mid_storm_reads_exactly_the_notices_after_its_login() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        let mut carol = None;
        let mut expected_carol = Vec::new();
        let mut expected_alice = Vec::new();
        for i in 0..200u64 {
            let name = format!("s{i}");
            let _m = member(&hub, 100 + i, &name);
            hub.leave(&UserId::new(&name).expect("valid id"), 100 + i);
            expected_alice.extend([joined(&name), left(&name)]);
            if carol.is_some() {
                expected_carol.extend([joined(&name), left(&name)]);
            }
            if i == 120 {
                carol = Some(member(&hub, 2, "carol"));
                expected_alice.push(joined("carol"));
            }
        }
        let carol = carol.expect("logged in");
        assert_eq!(frames(&hub, &carol), expected_carol);
        assert_eq!(frames(&hub, &alice), expected_alice);
    }

    #[test]
    fn a_session_removed_writes_nothing_announced_after_and_not_its_own_left() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        let bob = member(&hub, 2, "bob");
        let old = member(&hub, 3, "carol");
        let _dave = member(&hub, 4, "dave");
        // Bob leaves (exit, EOF): his goodbye's drain stops at his removal.
        hub.leave(&UserId::new("bob").expect("valid id"), 2);
        let _erin = member(&hub, 5, "erin");
        assert_eq!(frames(&hub, &bob), [joined("carol"), joined("dave")]);
        // Carol is taken over: the old session stops there, the new one starts there.
        let new = member(&hub, 6, "carol");
        assert_eq!(old.kicked(), Some(KickReason::TakenOver));
        let _fred = member(&hub, 7, "fred");
        assert_eq!(
            frames(&hub, &old),
            [joined("dave"), left("bob"), joined("erin")]
        );
        assert_eq!(frames(&hub, &new), [joined("fred")]);
        // The others saw no left/joined for the takeover.
        assert_eq!(
            frames(&hub, &alice),
            [
                joined("bob"),
                joined("carol"),
                joined("dave"),
                left("bob"),
                joined("erin"),
                joined("fred"),
            ]
        );
    }

    #[test]
    fn a_member_cut_off_for_a_full_outbox_is_announced_left_and_its_notices_stop() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        let small = Outbox::new(crate::outbox::Limits {
            items: 1,
            bytes: 64 * 1024,
        });
        let cursor = hub
            .join(Member {
                conn_id: 2,
                user_id: UserId::new("bob").expect("valid id"),
                outbox: small.clone(),
                login_ms: 1,
            })
            .expect("joined");
        let bob = Client {
            outbox: small,
            reader: Cell::new(Reader::new(cursor)),
        };
        let from = UserId::new("alice").expect("valid id");
        let text = |t: &str| MessageText::new(t).expect("valid text");
        hub.publish(&from, 1, text("one"), None, None);
        hub.publish(&from, 1, text("two"), None, None);
        assert_eq!(bob.kicked(), Some(KickReason::SlowConsumer));
        let _carol = member(&hub, 3, "carol");
        let got = frames(&hub, &alice);
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], joined("bob"));
        assert!(got[1].contains(r#""message":"one""#));
        assert!(got[2].contains(r#""message":"two""#));
        assert_eq!(got[3..], [left("bob"), joined("carol")]);
        // Bob's own drain: the one item it took, nothing announced after its removal.
        let got = frames(&hub, &bob);
        assert_eq!(got.len(), 1);
        assert!(got[0].contains(r#""message":"one""#));
    }

    #[test]
    fn a_reader_the_log_has_passed_is_told_so_and_the_others_are_not() {
        let hub = Hub::with_presence_log(Arc::new(MemoryStore::new(10)), 0, 8);
        let never = member(&hub, 1, "never");
        let keen = member(&hub, 2, "keen");
        let mut keen_saw = Vec::new();
        for i in 0..20u64 {
            let name = format!("c{i}");
            let _m = member(&hub, 10 + i, &name);
            hub.leave(&UserId::new(&name).expect("valid id"), 10 + i);
            // Keen reads after each pair: never more than the ring holds behind.
            keen_saw.extend(frames(&hub, &keen));
        }
        let expected: Vec<String> = (0..20)
            .flat_map(|i| [joined(&format!("c{i}")), left(&format!("c{i}"))])
            .collect();
        assert_eq!(keen_saw, expected);
        assert!(hub.presence().passed(never.reader.get().cursor()));
        let mut reader = never.reader.get();
        assert_eq!(
            reader.drain(hub.presence(), &never.outbox, &mut Texts::default()),
            Err(crate::presence::Passed)
        );
        // Bounded: the ring keeps its minimum (few members).
        assert_eq!(hub.presence().len(), 8);
    }

    /// A tiny deterministic generator for the randomized test (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// Several threads make users join, chat and leave at random (fixed seeds) while
    /// observers drain their outbox and the log at random moments on threads of their own:
    /// every observer's stream is exactly the hub's order (recorded by the test as each
    /// operation is made, under a lock of its own that orders them as the hub does).
    #[test]
    fn chat_and_notices_reach_every_session_in_the_hubs_order_under_concurrency() {
        const OBSERVERS: u64 = 3;
        const WORKERS: u64 = 4;
        const OPS: u64 = 400;
        let hub = Arc::new(Hub::new(Arc::new(MemoryStore::new(10)), 0));
        let order: Arc<Mutex<Vec<String>>> = Arc::default();
        let observers: Vec<Client> = (0..OBSERVERS)
            .map(|i| {
                let outbox = Outbox::new(crate::outbox::Limits {
                    items: 100_000,
                    bytes: 64 << 20,
                });
                let name = format!("obs{i}");
                let mut record = order.lock().expect("not poisoned");
                let cursor = hub
                    .join(Member {
                        conn_id: 1000 + i,
                        user_id: UserId::new(&name).expect("valid id"),
                        outbox: outbox.clone(),
                        login_ms: 1,
                    })
                    .expect("joined");
                record.push(joined(&name));
                Client {
                    outbox,
                    reader: Cell::new(Reader::new(cursor)),
                }
            })
            .collect();
        let start: Vec<usize> = (0..OBSERVERS as usize).map(|i| i + 1).collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        std::thread::scope(|scope| {
            let mut readers = Vec::new();
            for (i, obs) in observers.iter().enumerate() {
                let (hub, done) = (hub.clone(), done.clone());
                let (outbox, mut reader) = (obs.outbox.clone(), obs.reader.get());
                readers.push(scope.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9 + i as u64);
                    let mut sink = Texts::default();
                    loop {
                        let finished = done.load(std::sync::atomic::Ordering::Acquire);
                        // Drain until caught up, then wait a little, at random.
                        while reader
                            .drain(hub.presence(), &outbox, &mut sink)
                            .expect("never passed: the ring holds every notice of the test")
                            .more
                        {}
                        if finished {
                            return sink.0;
                        }
                        match rng.below(4) {
                            0 => std::thread::yield_now(),
                            n => std::thread::sleep(Duration::from_micros(n * rng.below(100))),
                        }
                    }
                }));
            }
            let workers: Vec<_> = (0..WORKERS)
                .map(|w| {
                    let (hub, order) = (hub.clone(), order.clone());
                    scope.spawn(move || {
                        let mut rng = Rng(0x1234_5678 + w);
                        let mut online: Vec<(UserId, u64)> = Vec::new();
                        for op in 0..OPS {
                            let conn = (w + 1) * 1_000_000 + op;
                            let mut record = order.lock().expect("not poisoned");
                            match rng.below(3) {
                                0 if online.len() < 4 => {
                                    let name = format!("w{w}u{op}");
                                    let user = UserId::new(&name).expect("valid id");
                                    hub.join(Member {
                                        conn_id: conn,
                                        user_id: user.clone(),
                                        outbox: Outbox::new(crate::outbox::Limits {
                                            items: 100_000,
                                            bytes: 64 << 20,
                                        }),
                                        login_ms: 1,
                                    })
                                    .expect("joined");
                                    record.push(joined(&name));
                                    online.push((user, conn));
                                }
                                1 if !online.is_empty() => {
                                    let at = rng.below(online.len() as u64) as usize;
                                    let (user, conn) = online.swap_remove(at);
                                    hub.leave(&user, conn);
                                    record.push(left(user.as_str()));
                                }
                                _ if !online.is_empty() => {
                                    let at = rng.below(online.len() as u64) as usize;
                                    let (user, conn) = &online[at];
                                    let text = format!("m{w}.{op}");
                                    let message = MessageText::new(&text).expect("valid");
                                    hub.publish(user, *conn, message, None, None);
                                    record.push(format!("{}:{text}", user.as_str()));
                                }
                                _ => {}
                            }
                        }
                        for (user, conn) in online {
                            let mut record = order.lock().expect("not poisoned");
                            hub.leave(&user, conn);
                            record.push(left(user.as_str()));
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("worker ran");
            }
            done.store(true, std::sync::atomic::Ordering::Release);
            let order = order.lock().expect("not poisoned").clone();
            for (i, r) in readers.into_iter().enumerate() {
                let got: Vec<String> = r
                    .join()
                    .expect("reader ran")
                    .into_iter()
                    .map(|f| match f.strip_prefix(r#"{"user_id":""#) {
                        // A chat object: "sender:text".
                        Some(rest) => {
                            let (user, rest) = rest.split_once('"').expect("sender");
                            let text = rest
                                .strip_prefix(r#","message":""#)
                                .and_then(|r| r.split_once('"'))
                                .expect("text")
                                .0;
                            format!("{user}:{text}")
                        }
                        None => f,
                    })
                    .collect();
                assert_eq!(got, order[start[i]..], "observer {i}");
                assert!(got.len() > 500, "a real interleaving: {}", got.len());
            }
        });
    }

    #[tokio::test]
    async fn a_public_message_wakes_at_once_and_carries_the_notices_before_it() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        let _bob = member(&hub, 2, "bob");
        hub.publish(
            &UserId::new("bob").expect("valid id"),
            2,
            MessageText::new("hi").expect("valid text"),
            None,
            None,
        );
        // No ticker runs here: the chat alone wakes alice.
        tokio::time::timeout(Duration::from_secs(5), alice.changed())
            .await
            .expect("woken by the chat");
        let got = frames(&hub, &alice);
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

    /// What an outbox holds, as the bytes a session writes for it (an echo with its ref).
    fn written(outbox: &Outbox) -> Vec<String> {
        outbox
            .take(ALL)
            .items
            .iter()
            .map(|q| {
                let mut w = crate::wire::FrameWriter::with_framing(crate::wire::Framing::Lines);
                w.push(&q.item);
                let line = String::from_utf8_lossy(w.pending()).into_owned();
                line.trim_end()
                    .trim_start_matches(r#"{"command":"message","messages":["#)
                    .trim_end_matches("]}")
                    .to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn only_the_senders_copy_of_a_public_message_carries_the_ref_and_recipients_share_bytes()
    {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        let bob = member(&hub, 2, "bob");
        let carol = member(&hub, 3, "carol");
        for o in [&alice, &bob, &carol] {
            o.take(ALL);
        }
        let r = Bytes::from_static(br#""r1""#);
        hub.publish(
            &UserId::new("bob").expect("valid id"),
            2,
            MessageText::new("hi").expect("valid text"),
            Some(&r),
            None,
        );
        let (a, c) = (alice.take(ALL), carol.take(ALL));
        let (Out::Chat(a), Out::Chat(c)) = (&a.items[0].item, &c.items[0].item) else {
            panic!("recipients get the plain shared object");
        };
        // The same allocation: no copy per recipient.
        assert_eq!(a.as_ptr(), c.as_ptr());
        let echo = written(&bob);
        assert_eq!(echo.len(), 1);
        let plain = String::from_utf8_lossy(a);
        assert!(plain.starts_with(r#"{"user_id":"bob","message":"hi","to":"*","id":"#));
        assert_eq!(echo[0], format!(r#"{{"ref":"r1",{}"#, &plain[1..]));
    }

    #[tokio::test]
    async fn a_private_message_to_an_acks_recipient_is_stored_then_handed_out_and_a_full_outbox_cuts_it_off()
     {
        let store = alice_and_bob("x").await;
        let hub = Hub::new(store.clone(), 0);
        let alice = member(&hub, 1, "alice");
        let bob = Outbox::new_acks(crate::outbox::Limits {
            items: 1,
            bytes: 64 * 1024,
        });
        hub.join(Member {
            conn_id: 2,
            user_id: UserId::new("bob").expect("valid id"),
            outbox: bob.clone(),
            login_ms: 1,
        })
        .expect("joined");
        assert_eq!(
            frames(&hub, &alice),
            vec![r#"{"command":"joined","user_id":"bob"}"#]
        );
        let (from, to) = (
            UserId::new("alice").expect("id"),
            UserId::new("bob").expect("id"),
        );
        let text = |t: &str| MessageText::new(t).expect("valid text");
        hub.send_private(&from, 1, &to, text("one"), None, None)
            .await
            .expect("sent");
        // Stored before it could be handed out, then handed out, then echoed.
        let ids: Vec<u64> = store
            .pending("bob".into())
            .await
            .expect("read")
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids.len(), 1);
        let taken = bob.take(ALL);
        assert!(matches!(&taken.items[0].item, Out::Private(p) if p.id == ids[0]));
        assert_eq!(frames(&hub, &alice).len(), 1);
        // The outbox holds one item: the third message finds it full. Bob is cut off, and
        // the message is in the mailbox all the same, and echoed.
        hub.send_private(&from, 1, &to, text("two"), None, None)
            .await
            .expect("sent");
        hub.send_private(&from, 1, &to, text("three"), None, None)
            .await
            .expect("sent");
        assert_eq!(bob.kicked(), Some(KickReason::SlowConsumer));
        assert_eq!(store.pending("bob".into()).await.expect("read").len(), 3);
        let echoes = frames(&hub, &alice);
        assert_eq!(echoes.len(), 3, "{echoes:?}");
        assert!(echoes[2].contains(r#""message":"three""#));
        // Three accepted; two let go into bob's outbox (the third found it full).
        let stats = HubStats {
            online: 1,
            public: 0,
            private: 3,
            delivered: 2,
            outbox_bytes: 0,
        };
        assert_eq!(hub.stats(), stats);
    }

    #[test]
    fn stats_count_each_copy_queued_and_the_bytes_not_taken_yet() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        let bob = member(&hub, 2, "bob");
        // bob's `joined` is in the presence log, not in alice's outbox.
        let stats = HubStats {
            online: 2,
            ..HubStats::default()
        };
        assert_eq!(hub.stats(), stats);
        let from = UserId::new("alice").expect("valid id");
        let text = MessageText::new("hello").expect("valid text");
        hub.publish(&from, 1, text, None, None);
        let queued = bob.take(ALL).items;
        assert_eq!(queued.len(), 1);
        let chat = queued[0].item.encoded_len() as u64;
        // Both copies counted; alice's still queued, bob's taken.
        let stats = HubStats {
            online: 2,
            public: 1,
            delivered: 2,
            outbox_bytes: chat,
            ..HubStats::default()
        };
        assert_eq!(hub.stats(), stats);
        // The notice, then the chat.
        assert_eq!(frames(&hub, &alice).len(), 2);
        assert_eq!(hub.stats().outbox_bytes, 0);
    }

    #[tokio::test]
    async fn a_private_message_to_oneself_with_a_ref_is_kept_without_it() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        alice.take(ALL);
        let me = UserId::new("alice").expect("valid id");
        let r = Bytes::from_static(b"7");
        hub.send_private(
            &me,
            1,
            &me,
            MessageText::new("note").expect("valid"),
            Some(r),
            None,
        )
        .await
        .expect("sent");
        let taken = alice.take(ALL);
        assert_eq!(taken.items.len(), 1);
        let Out::Echo(e) = &taken.items[0].item else {
            panic!("expected the echo, got {:?}", taken.items[0].item);
        };
        let p = e.private.as_ref().expect("the echo is also the delivery");
        let kept = p.message(me.clone());
        assert_eq!(kept.r#ref, None);
        assert_eq!(kept.message, "note");
        let mut w = crate::wire::FrameWriter::with_framing(crate::wire::Framing::LengthDelimited);
        w.push(&taken.items[0].item);
        // Nothing written: the message is among the undelivered, without the ref.
        let undelivered: Vec<ChatMessage> = w
            .unwritten_private(0)
            .map(|p| p.message(me.clone()))
            .collect();
        assert_eq!(undelivered, vec![kept]);
        assert!(
            String::from_utf8_lossy(w.pending())
                .contains(r#"[{"ref":7,"user_id":"alice","message":"note","to":"alice","#)
        );
    }
    /// Whether two `list` answers are the same shared snapshot, not just equal bytes.
    fn same(a: &Bytes, b: &Bytes) -> bool {
        a.as_ptr() == b.as_ptr() && a.len() == b.len()
    }

    #[test]
    fn many_changes_without_a_list_are_dropped_and_the_next_list_is_still_exact() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let _alice = member(&hub, 1, "alice");
        assert_eq!(&hub.list()[..], br#"["alice"]"#);
        hub.leave(&"alice".parse().expect("a valid id"), 1);
        // Users come and go, nobody asks for the list: the changes kept stay bounded.
        // (Nobody stays online through it: a member's small test outbox would fill with
        // the notices and cut it off.)
        let n = MAX_LIST_DELTA_SLACK + 10;
        for i in 0..n {
            let name = format!("u{i}");
            let _m = member(&hub, 10 + i as u64, &name);
            let user: UserId = name.parse().expect("a valid id");
            hub.leave(&user, 10 + i as u64);
            assert!(hub.lock().list_delta.len() <= 1 + MAX_LIST_DELTA_SLACK);
        }
        assert!(hub.lock().list_reset);
        let _zed = member(&hub, 5000, "zed");
        let _bob = member(&hub, 5001, "Bob");
        // Once the roster is to be rebuilt from the members, changes are not kept at all.
        assert!(hub.lock().list_delta.is_empty());
        assert_eq!(&hub.list()[..], br#"["Bob","zed"]"#);
        assert!(!hub.lock().list_reset);
        // And the roster goes on from there.
        hub.leave(&"zed".parse().expect("a valid id"), 5000);
        assert_eq!(&hub.list()[..], br#"["Bob"]"#);
    }

    #[test]
    fn the_list_snapshot_is_shared_until_membership_changes() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        assert_eq!(&hub.list()[..], b"[]");
        let _alice = member(&hub, 1, "alice");
        let _bob = member(&hub, 2, "Bob");
        let first = hub.list();
        assert_eq!(&first[..], br#"["alice","Bob"]"#);
        // Nothing changed: the same bytes, not a copy.
        assert!(same(&first, &hub.list()));
        // A takeover does not change membership.
        let _bob2 = member(&hub, 3, "Bob");
        assert!(same(&first, &hub.list()));
        // A join.
        let _carol = member(&hub, 4, "carol");
        let joined = hub.list();
        assert!(!same(&first, &joined));
        assert_eq!(&joined[..], br#"["alice","Bob","carol"]"#);
        assert!(same(&joined, &hub.list()));
        // A leave (of the session that was taken over: nothing; of the current one: a change).
        hub.leave(&UserId::new("Bob").expect("valid id"), 2);
        assert!(same(&joined, &hub.list()));
        hub.leave(&UserId::new("Bob").expect("valid id"), 3);
        let left = hub.list();
        assert_eq!(&left[..], br#"["alice","carol"]"#);
        // A revocation.
        assert!(hub.revoke(&revocation(1, "carol", 10, RevocationKind::AccountDeleted)));
        let revoked = hub.list();
        assert_eq!(&revoked[..], br#"["alice"]"#);
        assert!(same(&revoked, &hub.list()));
        // Back again after leaving: the change since the last list is a join.
        hub.leave(&UserId::new("alice").expect("valid id"), 1);
        let _alice = member(&hub, 5, "alice");
        assert_eq!(&hub.list()[..], br#"["alice"]"#);
    }

    #[test]
    fn a_slow_consumer_cut_off_leaves_the_list() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let _alice = member(&hub, 1, "alice");
        let bob = Outbox::new(crate::outbox::Limits {
            items: 1,
            bytes: 64 * 1024,
        });
        hub.join(Member {
            conn_id: 2,
            user_id: UserId::new("bob").expect("valid id"),
            outbox: bob.clone(),
            login_ms: 1,
        })
        .expect("joined");
        let before = hub.list();
        assert_eq!(&before[..], br#"["alice","bob"]"#);
        let text = |t: &str| MessageText::new(t).expect("valid text");
        let alice = UserId::new("alice").expect("valid id");
        hub.publish(&alice, 1, text("one"), None, None);
        hub.publish(&alice, 1, text("two"), None, None);
        assert_eq!(bob.kicked(), Some(KickReason::SlowConsumer));
        assert_eq!(&hub.list()[..], br#"["alice"]"#);
    }

    #[test]
    fn the_list_is_sorted_case_insensitively_and_encoded_as_serde_would() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let names = ["zed", "Alice", "bob", "_x", "B.o-b", "carol9", "ALICE2"];
        for (i, name) in names.iter().enumerate() {
            member(&hub, i as u64 + 1, name);
        }
        let mut ids: Vec<UserId> = names.iter().map(|n| UserId::new(n).expect("id")).collect();
        ids.sort_unstable();
        assert_eq!(
            &hub.list()[..],
            &serde_json::to_vec(&ids).expect("serializes")[..]
        );
    }

    /// `list` at 20 000 members: the old way (every id cloned under the hub's lock, then
    /// sorted) against the snapshot, shared and rebuilt after one change.
    /// `cargo test -p simpletextim-server --release list_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a test"]
    fn list_cost_at_20_000_members() {
        const N: usize = 20_000;
        const ROUNDS: u32 = 200;
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        // Registered directly: 20 000 joins would queue 200 million notices.
        {
            let mut inner = hub.lock();
            for i in 0..N {
                let user_id = UserId::new(&format!("user{i:05}")).expect("valid id");
                inner.membership_changed(&user_id, true);
                let member = Member {
                    conn_id: i as u64 + 1,
                    user_id,
                    outbox: Outbox::new(crate::outbox::Limits {
                        items: 64,
                        bytes: 64 * 1024,
                    }),
                    login_ms: 1,
                };
                inner.members.insert(member.user_id.key(), member);
            }
        }
        let old = || {
            let inner = hub.lock();
            let mut list: Vec<UserId> = inner.members.values().map(|m| m.user_id.clone()).collect();
            drop(inner);
            list.sort_unstable();
            encode_reply(&Reply::List { r#ref: None, list })
        };
        let started = Instant::now();
        let mut locked = Duration::ZERO;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let inner = hub.lock();
            let list: Vec<UserId> = inner.members.values().map(|m| m.user_id.clone()).collect();
            drop(inner);
            locked += t.elapsed();
            drop(list);
            std::hint::black_box(old());
        }
        let old_total = started.elapsed() / ROUNDS;
        println!(
            "old: {old_total:?} per list, of which {:?} under the hub's lock (the copy)",
            locked / ROUNDS
        );
        let started = Instant::now();
        assert_eq!(hub.list().iter().filter(|&&b| b == b',').count(), N - 1);
        println!("snapshot, first build: {:?}", started.elapsed());
        let started = Instant::now();
        for _ in 0..ROUNDS {
            std::hint::black_box(hub.list());
        }
        println!(
            "snapshot, shared: {:?} per list",
            started.elapsed() / ROUNDS
        );
        // The leave (which queues `left` for everyone) is not counted. Fewer leaves than
        // an outbox holds: nobody is cut off.
        const LEAVES: u32 = 50;
        let mut rebuilding = Duration::ZERO;
        for i in 0..LEAVES {
            let name = UserId::new(&format!("user{:05}", i)).expect("id");
            hub.leave(&name, u64::from(i) + 1);
            let started = Instant::now();
            std::hint::black_box(hub.list());
            rebuilding += started.elapsed();
        }
        println!(
            "snapshot, rebuilt after each leave: {:?} per list",
            rebuilding / LEAVES
        );
        assert_eq!(hub.lock().members.len(), N - LEAVES as usize);
    }

    /// A login and a logout at 20 000 members: the time under the hub's lock (one append to
    /// the presence log each, whatever the number of members; before the log, each pushed a
    /// notice into 20 000 outboxes).
    /// `cargo test -p simpletextim-server --release --lib join_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a test"]
    fn join_cost_at_20_000_members() {
        const N: usize = 20_000;
        const ROUNDS: u64 = 10_000;
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let members: Vec<Client> = (0..N)
            .map(|i| member(&hub, i as u64 + 1, &format!("user{i:05}")))
            .collect();
        let outbox = Outbox::new(crate::outbox::Limits {
            items: 64,
            bytes: 64 * 1024,
        });
        let user = UserId::new("storm").expect("valid id");
        let started = Instant::now();
        for i in 0..ROUNDS {
            let conn = 1_000_000 + i;
            hub.join(Member {
                conn_id: conn,
                user_id: user.clone(),
                outbox: outbox.clone(),
                login_ms: 1,
            })
            .expect("joined");
            hub.leave(&user, conn);
        }
        let per_pair = started.elapsed() / ROUNDS as u32;
        println!("{N} members: a login and a logout take {per_pair:?} (both under the hub's lock)");
        assert!(members.iter().all(|m| m.take(ALL).items.is_empty()));
    }

    fn bus_private(from: &str, to: &str, id: u64) -> BusPrivate {
        BusPrivate {
            from: UserId::new(from).expect("valid id"),
            to: UserId::new(to).expect("valid id"),
            text: "hi".into(),
            id,
            ts: 7,
            deliver: true,
            stored: false,
            echo: None,
        }
    }

    #[test]
    fn a_public_message_from_the_bus_keeps_its_id_and_only_the_senders_copy_has_the_ref() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        let bob = member(&hub, 2, "bob");
        let _ = frames(&hub, &alice);
        let from = UserId::new("alice").expect("valid id");
        let r = Bytes::from_static(b"\"r1\"");
        hub.deliver_public(&from, "hello", (5000, 5), Some((1, Some(r))), None);
        hub.deliver_public(&from, "again", (4000, 4), None, None);
        let hello = r#"{"user_id":"alice","message":"hello","to":"*","id":5000,"ts":5}"#;
        let again = r#"{"user_id":"alice","message":"again","to":"*","id":4000,"ts":4}"#;
        let taken = alice.take(ALL);
        let items: Vec<&Out> = taken.items.iter().map(|q| &q.item).collect();
        match items[..] {
            [Out::Echo(e), Out::Chat(b)] => {
                assert_eq!(
                    (&e.r#ref[..], &e.obj[..]),
                    (&b"\"r1\""[..], hello.as_bytes())
                );
                assert_eq!(&b[..], again.as_bytes());
            }
            _ => panic!("{items:?}"),
        }
        assert_eq!(frames(&hub, &bob), [hello, again]);
        // The highest id seen is the floor of the next ones asked for.
        assert_eq!(hub.last_id(), 5000);
    }

    #[tokio::test]
    async fn a_private_message_from_the_bus_for_a_user_gone_goes_to_the_mailbox() {
        let store = alice_and_bob("x").await;
        let hub = Hub::new(store.clone(), 0);
        let alice = member(&hub, 1, "alice");
        // Bob is not on this node (left meanwhile): kept; alice's echo is hers.
        let mut p = bus_private("alice", "bob", 9000);
        p.echo = Some((1, None));
        hub.deliver_private(p, None);
        assert_eq!(
            frames(&hub, &alice),
            [r#"{"user_id":"alice","message":"hi","to":"bob","id":9000,"ts":7}"#]
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let pending = loop {
            let p = store.pending("bob".into()).await.expect("read");
            if !p.is_empty() || Instant::now() > deadline {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(pending.iter().map(|m| m.id).collect::<Vec<_>>(), [9000]);
        // Bob logs in here, and a message already in his mailbox is delivered from it,
        // then deleted there.
        let bob = member(&hub, 2, "bob");
        let mut p = bus_private("alice", "bob", 9000);
        p.stored = true;
        hub.deliver_private(p, None);
        assert_eq!(
            frames(&hub, &bob),
            [r#"{"user_id":"alice","message":"hi","to":"bob","id":9000,"ts":7}"#]
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !store.pending("bob".into()).await.expect("read").is_empty() {
            assert!(Instant::now() < deadline, "not deleted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Handed over from the mailbox a second time (its sender's re-check and this
        // node's pending delivery both): delivered once.
        let mut p = bus_private("alice", "bob", 9000);
        p.stored = true;
        hub.deliver_private(p, None);
        assert!(frames(&hub, &bob).is_empty());
    }

    #[test]
    fn a_takeover_from_another_node_kicks_without_left_and_only_that_session() {
        let hub = Hub::new(Arc::new(MemoryStore::new(10)), 0);
        let alice = member(&hub, 1, "alice");
        let bob = member(&hub, 2, "bob");
        assert!(!hub.take_over_remote("bob", 99));
        assert_eq!(bob.kicked(), None);
        assert!(hub.take_over_remote("bob", 2));
        assert_eq!(bob.kicked(), Some(KickReason::TakenOver));
        assert_eq!(frames(&hub, &alice), [joined("bob")]);
        // A user new to the cluster but taking over elsewhere joins without `joined`.
        let _carol = hub
            .join_as(
                Member {
                    conn_id: 3,
                    user_id: UserId::new("carol").expect("valid id"),
                    outbox: Outbox::new(crate::outbox::Limits {
                        items: 8,
                        bytes: 4096,
                    }),
                    login_ms: 1,
                },
                false,
            )
            .expect("joined");
        assert!(frames(&hub, &alice).is_empty());
        hub.remote_notice(Notice::left(&UserId::new("dave").expect("valid id")));
        assert_eq!(frames(&hub, &alice), [left("dave")]);
    }
}
