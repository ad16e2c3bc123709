//! The presence log: every `joined` and `left` the hub announces, kept once for every
//! session to read, instead of being queued into every member's outbox.
//!
//! A login appends one [`Notice`] to a bounded ring, under the hub's lock: O(1) work, whatever
//! the number of members (a storm of N logins costs N appends, not N²/2 outbox pushes). Each
//! entry has a global sequence number; [`PresenceLog::head`] is the number of the next one.
//!
//! **Order with chat.** Every item the hub queues into an outbox carries the head at the
//! moment it was queued ([`crate::outbox::Queued::seq`]): the notices numbered below it were
//! announced before it. A session keeps a cursor (the number of the next notice it has to
//! write, starting at the head when it registers, after its own `joined`) and drains with
//! [`Reader::drain`]: it reads the head *first*, takes its outbox, writes before each item
//! the notices from its cursor up to that item's number, then the item, and at the end the
//! notices up to the head it read. Reading the head before taking the outbox is what keeps
//! a notice from overtaking an item the hub queued before announcing it: such an item was
//! in the outbox before the notice was in the log.
//!
//! **Idle sessions.** Nothing is pushed to them: [`Hub::presence_ticker`] rings one bell
//! (a [`Notify`], `notify_waiters`) at most once per [`PRESENCE_TICK`], and only after a
//! notice was appended. Each session keeps one registration with the bell across its
//! wake-ups ([`Bell`]), so a chat wake-up does not touch the bell's waiter list: one
//! wake-up per session per tick at most, and the hub's lock is never held to wake anyone.
//!
//! **Bounded.** The ring keeps at most `max(configured entries, 2 × members)` notices
//! ([`crate::Config::presence_log`], 65 536 by default), each a fixed 34 bytes (no
//! allocation per notice, nothing to free). A session whose cursor falls behind the oldest
//! entry has missed notices: it is a slow consumer, cut off (the others get `left`) as with a
//! full outbox. A session reading at least once per tick is never passed unless more
//! notices than the ring holds are announced within one tick (65 536 in 50 ms, while logins
//! are bounded by password hashing to hundreds a second); twice the members also covers
//! every member leaving and coming back between two reads. One drain writes at most
//! [`MAX_NOTICES_PER_DRAIN`] notices (the items queued after them stay in the outbox), so a
//! session catching up never buffers more than that at once; it writes them out and goes on.
//!
//! [`Hub::presence_ticker`]: crate::hub::Hub::presence_ticker
//! [`PRESENCE_TICK`]: crate::hub::PRESENCE_TICK

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};

use simpletextim_proto::UserId;
use simpletextim_proto::types::MAX_USER_ID_LEN;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use crate::outbox::{KickReason, Outbox, Queued};
use crate::wire::Out;

/// The default least number of notices the log keeps ([`crate::Config::presence_log`]).
pub const DEFAULT_PRESENCE_LOG: usize = 65_536;

/// Most notices one drain writes; the rest wait for the next drain, right after the write.
pub const MAX_NOTICES_PER_DRAIN: u64 = 1024;

/// One presence notice: who, and whether they joined or left. A user id is 1–32 ASCII
/// characters that JSON never escapes, so it is kept inline and written between fixed
/// parts ([`Notice::parts`]): byte for byte what serde writes for [`simpletextim_proto::Reply`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    left: bool,
    len: u8,
    id: [u8; MAX_USER_ID_LEN],
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (head, id, tail) = self.parts();
        write!(
            f,
            "{}{}{}",
            String::from_utf8_lossy(head),
            String::from_utf8_lossy(id),
            String::from_utf8_lossy(tail)
        )
    }
}

const JOINED_HEAD: &[u8] = br#"{"command":"joined","user_id":""#;
const LEFT_HEAD: &[u8] = br#"{"command":"left","user_id":""#;
const NOTICE_TAIL: &[u8] = br#""}"#;

impl Notice {
    /// `user_id` logged in.
    pub fn joined(user_id: &UserId) -> Notice {
        Notice::new(user_id, false)
    }

    /// `user_id` logged out (or was cut off, or revoked).
    pub fn left(user_id: &UserId) -> Notice {
        Notice::new(user_id, true)
    }

    fn new(user_id: &UserId, left: bool) -> Notice {
        let s = user_id.as_str().as_bytes();
        debug_assert!(
            s.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b)),
            "a user id needs no JSON escape"
        );
        let len = s.len().min(MAX_USER_ID_LEN);
        let mut id = [0; MAX_USER_ID_LEN];
        id[..len].copy_from_slice(&s[..len]);
        Notice {
            left,
            len: u8::try_from(len).expect("at most 32"),
            id,
        }
    }

    /// The frame's payload in three parts: the head up to the id, the id, the tail.
    pub fn parts(&self) -> (&'static [u8], &[u8], &'static [u8]) {
        let head = if self.left { LEFT_HEAD } else { JOINED_HEAD };
        (head, &self.id[..usize::from(self.len)], NOTICE_TAIL)
    }

    /// The payload's length.
    #[cfg(test)]
    pub fn encoded_len(&self) -> usize {
        let (head, id, tail) = self.parts();
        head.len() + id.len() + tail.len()
    }
}

/// The notices kept, oldest first, and the number of the oldest.
#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<Notice>,
    /// The sequence number of `entries[0]`.
    first: u64,
}

/// The cursor fell behind the oldest notice kept: the session missed notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed;

/// The shared log of presence notices (see the module docs).
#[derive(Debug)]
pub struct PresenceLog {
    /// Written only under the hub's lock (one writer); read by the sessions without it.
    ring: RwLock<Ring>,
    /// The number of the next notice, published after the notice is in the ring.
    head: AtomicU64,
    /// The number of the oldest notice kept, published when the ring drops one.
    first: AtomicU64,
    /// Rung by the hub's presence ticker when notices were appended ([`PresenceLog::ring`]).
    bell: Arc<Notify>,
    /// How many times the bell rang: a [`Bell`] that sees it changed since it was armed
    /// knows it rang without locking the bell's waiter list.
    rings: AtomicU64,
    /// The least number of notices kept.
    min_entries: usize,
}

impl PresenceLog {
    /// An empty log keeping at least `min_entries` notices.
    pub fn new(min_entries: usize) -> PresenceLog {
        PresenceLog {
            ring: RwLock::new(Ring::default()),
            head: AtomicU64::new(0),
            first: AtomicU64::new(0),
            bell: Arc::new(Notify::new()),
            rings: AtomicU64::new(0),
            min_entries: min_entries.max(1),
        }
    }

    /// Appends a notice and returns the new head. Called under the hub's lock (the only
    /// writer), with the number of `members` online: the ring keeps
    /// `max(min_entries, 2 × members)` notices and drops the oldest beyond (at most two per
    /// append, so that it shrinks slowly after a crowd left).
    pub fn append(&self, notice: Notice, members: usize) -> u64 {
        let cap = self.min_entries.max(members.saturating_mul(2));
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        ring.entries.push_back(notice);
        for _ in 0..2 {
            if ring.entries.len() <= cap {
                break;
            }
            ring.entries.pop_front();
            ring.first += 1;
        }
        let head = ring.first + ring.entries.len() as u64;
        self.first.store(ring.first, Ordering::Release);
        self.head.store(head, Ordering::Release);
        head
    }

    /// The number of the next notice: every notice below it is in the log (or was dropped).
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Whether a reader at `cursor` has missed notices the ring no longer holds.
    pub fn passed(&self, cursor: u64) -> bool {
        cursor < self.first.load(Ordering::Acquire)
    }

    /// Hands `f` the notices from `from` up to `to` (excluded), at most `max` of them, and
    /// returns the number after the last one handed.
    ///
    /// # Errors
    /// [`Passed`] when `from` is older than the oldest notice kept.
    pub fn read(
        &self,
        from: u64,
        to: u64,
        max: u64,
        mut f: impl FnMut(&Notice),
    ) -> Result<u64, Passed> {
        if from >= to || max == 0 {
            return Ok(from);
        }
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        if from < ring.first {
            return Err(Passed);
        }
        let head = ring.first + ring.entries.len() as u64;
        let to = to.min(head).min(from.saturating_add(max));
        let start = usize::try_from(from - ring.first).expect("the ring fits in memory");
        let end = usize::try_from(to - ring.first).expect("the ring fits in memory");
        for n in ring.entries.range(start..end.max(start)) {
            f(n);
        }
        Ok(to.max(from))
    }

    /// Rings the bell: every armed [`Bell`] resolves (the sessions waiting on one are woken
    /// once). The presence ticker's call, outside the hub's lock.
    pub fn ring(&self) {
        // Counted first: a session woken by the ring sees the new count.
        self.rings.fetch_add(1, Ordering::AcqRel);
        self.bell.notify_waiters();
    }

    /// Notices kept now (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }
}

/// A session's registration with the log's bell, kept across its wake-ups (boxed: an
/// owned waiter is pinned). It is armed (registered) before the session reads the head, so
/// a ring after that read is never missed.
///
/// Polling a registered tokio `Notified` locks the `Notify`'s waiter list, which every
/// session shares. A session polls its bell at each wake-up (each chat message), so the bell
/// only polls its waiter when needed: once after it is armed, and when the task's waker
/// changed. Otherwise the ring count tells whether it rang: one atomic read.
pub struct Bell {
    waiter: Pin<Box<OwnedNotified>>,
    /// The log's ring count when armed: a different count means it rang since.
    armed_at: u64,
    /// The waker the waiter holds, once polled.
    waker: Option<Waker>,
}

impl std::fmt::Debug for Bell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bell")
            .field("armed_at", &self.armed_at)
            .finish_non_exhaustive()
    }
}

impl Bell {
    /// A registration with `log`'s bell, armed.
    pub fn new(log: &PresenceLog) -> Bell {
        let mut waiter = Box::pin(log.bell.clone().notified_owned());
        let armed_at = log.rings.load(Ordering::Acquire);
        waiter.as_mut().enable();
        Bell {
            waiter,
            armed_at,
            waker: None,
        }
    }

    /// Resolves once `log`'s bell rang since the bell was (re)armed.
    #[cfg(test)]
    pub async fn rung(&mut self, log: &PresenceLog) {
        std::future::poll_fn(|cx| self.poll_rung(log, cx)).await;
    }

    /// Ready once `log`'s bell rang since the bell was (re)armed; otherwise the task of
    /// `cx` is woken when it rings.
    pub fn poll_rung(&mut self, log: &PresenceLog, cx: &mut Context<'_>) -> Poll<()> {
        if log.rings.load(Ordering::Acquire) != self.armed_at {
            return Poll::Ready(());
        }
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Registered with this very waker: a ring wakes it, and bumps the count first.
            return Poll::Pending;
        }
        match self.waiter.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Registers again, after a ring, in the same allocation.
    pub fn rearm(&mut self, log: &PresenceLog) {
        self.waiter.set(log.bell.clone().notified_owned());
        self.armed_at = log.rings.load(Ordering::Acquire);
        self.waiter.as_mut().enable();
        self.waker = None;
    }
}

/// Where a drain's output goes: a session's frame writer, or a test's list.
pub trait Sink {
    /// Makes room for `items` before they are written one by one.
    fn reserve(&mut self, _items: &VecDeque<Queued>) {}
    /// Writes a notice.
    fn notice(&mut self, notice: &Notice);
    /// Writes an outbox item.
    fn item(&mut self, item: &Out);
}

/// What [`Reader::drain`] found besides what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// The session was kicked (takeover, slow consumer, shutdown, revocation).
    pub kicked: Option<KickReason>,
    /// There is more to write: drain again once this is written.
    pub more: bool,
}

/// A session's place in the log: the number of the next notice it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader {
    cursor: u64,
}

impl Reader {
    /// A reader whose first notice is number `cursor` (what [`crate::hub::Hub::join`]
    /// returned: the head after the user's own `joined`).
    pub fn new(cursor: u64) -> Reader {
        Reader { cursor }
    }

    /// The number of the next notice this reader writes.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Writes into `sink` what the session is due, in the hub's order: the head is read,
    /// then the outbox taken (up to [`MAX_NOTICES_PER_DRAIN`] notices ahead); before each
    /// item the notices numbered below its `seq`, then the item; at the end the notices up
    /// to the head read first, or up to the first item left in the outbox (an acknowledged
    /// delivery's message not committed yet holds back what was announced after it, as it
    /// holds back later chat). Notices stop at the outbox's presence end, set when the hub
    /// removed the session (nothing announced after it leaves is its business).
    ///
    /// # Errors
    /// [`Passed`] when notices this session was due are no longer in the log (the items it
    /// took by then are written all the same).
    pub fn drain(
        &mut self,
        log: &PresenceLog,
        outbox: &Outbox,
        sink: &mut impl Sink,
    ) -> Result<Drained, Passed> {
        let head = log.head();
        if log.passed(self.cursor) {
            // Nothing taken: what the outbox holds is there for the goodbye.
            return Err(Passed);
        }
        // In the unit tests, a wider window between reading the head and taking the outbox,
        // where other threads announce notices and queue items (the randomized order test).
        #[cfg(test)]
        std::thread::yield_now();
        let limit = self.cursor.saturating_add(MAX_NOTICES_PER_DRAIN);
        let taken = outbox.take(limit);
        let end = taken.presence_end.unwrap_or(u64::MAX);
        if !taken.items.is_empty() {
            // Even for one item: a write buffer grown from empty, part by part, would be
            // reallocated three or four times (4 bytes, the frame's head, the object, the
            // tail).
            sink.reserve(&taken.items);
        }
        let mut passed = false;
        for q in &taken.items {
            // Passed meanwhile: the items taken are written all the same (the frame writer
            // accounts for the private ones: kept for the next login if not delivered), the
            // notices no more, and the session is cut off.
            passed = passed || self.write_notices(log, q.seq.min(end), sink).is_err();
            sink.item(&q.item);
        }
        outbox.recycle(taken.items);
        if passed {
            return Err(Passed);
        }
        // Not past an item left queued (held behind an uncommitted private message, or
        // beyond the limit): the notices announced after it wait for it.
        let due = head.min(end).min(taken.left.unwrap_or(u64::MAX));
        self.write_notices(log, due.min(limit), sink)?;
        Ok(Drained {
            kicked: taken.kicked,
            more: taken.more || self.cursor < due,
        })
    }

    /// Writes the notices from the cursor up to `to` (excluded).
    fn write_notices(
        &mut self,
        log: &PresenceLog,
        to: u64,
        sink: &mut impl Sink,
    ) -> Result<(), Passed> {
        if self.cursor < to {
            self.cursor = log.read(self.cursor, to, u64::MAX, |n| sink.notice(n))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simpletextim_proto::Reply;

    fn uid(s: &str) -> UserId {
        UserId::new(s).expect("valid id")
    }

    fn text(n: &Notice) -> String {
        let (h, id, t) = n.parts();
        [h, id, t].concat().iter().map(|&b| b as char).collect()
    }

    #[test]
    fn a_notice_is_written_as_serde_writes_the_reply() {
        for name in ["a", "Bob", "x.y-z_0", &"z".repeat(32)] {
            let joined = Reply::Joined { user_id: uid(name) }.to_json();
            assert_eq!(text(&Notice::joined(&uid(name))).as_bytes(), &joined[..]);
            assert_eq!(Notice::joined(&uid(name)).encoded_len(), joined.len());
            let left = Reply::Left { user_id: uid(name) }.to_json();
            assert_eq!(text(&Notice::left(&uid(name))).as_bytes(), &left[..]);
        }
        assert_eq!(std::mem::size_of::<Notice>(), 34);
    }

    #[tokio::test]
    async fn a_bell_resolves_after_each_ring_and_misses_none() {
        use futures::FutureExt;
        use std::time::Duration;
        let log = Arc::new(PresenceLog::new(4));
        let mut bell = Bell::new(&log);
        // Polled twice with the same waker: still waiting.
        assert!(bell.rung(&log).now_or_never().is_none());
        assert!(bell.rung(&log).now_or_never().is_none());
        log.ring();
        assert!(bell.rung(&log).now_or_never().is_some());
        bell.rearm(&log);
        assert!(bell.rung(&log).now_or_never().is_none());
        // Rung before the first poll after arming: not missed.
        log.ring();
        bell.rearm(&log);
        log.ring();
        assert!(bell.rung(&log).now_or_never().is_some());
        // A task waiting on it (its waker registered) is woken by the ring.
        bell.rearm(&log);
        let waiting = tokio::spawn({
            let log = log.clone();
            async move {
                bell.rung(&log).await;
                bell
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        log.ring();
        let mut bell = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the ring")
            .expect("the task ran");
        bell.rearm(&log);
        assert!(bell.rung(&log).now_or_never().is_none());
    }

    /// What a drain wrote, as text.
    #[derive(Default)]
    struct Texts(Vec<String>);

    impl Sink for Texts {
        fn notice(&mut self, n: &Notice) {
            self.0.push(text(n));
        }
        fn item(&mut self, item: &Out) {
            self.0
                .push(String::from_utf8_lossy(item.bytes()).into_owned());
        }
    }

    fn private(id: u64) -> Out {
        Out::Private(Arc::new(crate::wire::Private {
            obj: bytes::Bytes::from(format!("p{id}")),
            from: uid("alice"),
            text: format!("p{id}"),
            id,
            ts: 1,
        }))
    }

    #[test]
    fn notices_after_an_uncommitted_message_wait_for_it_as_chat_does() {
        let log = PresenceLog::new(16);
        let outbox = Outbox::new_acks(crate::outbox::Limits {
            items: 8,
            bytes: 1 << 20,
        });
        let mut reader = Reader::new(0);
        log.append(Notice::joined(&uid("a")), 1);
        outbox.push_uncommitted(1, private(1)).expect("room");
        log.append(Notice::joined(&uid("b")), 1);
        outbox
            .push(2, Out::Chat(bytes::Bytes::from_static(b"chat")))
            .expect("room");
        log.append(Notice::left(&uid("a")), 1);
        let mut sink = Texts::default();
        let drained = reader.drain(&log, &outbox, &mut sink).expect("not passed");
        // Only what came before the held message; nothing more to do until it commits.
        assert_eq!(sink.0, [text(&Notice::joined(&uid("a")))]);
        assert_eq!(drained, Drained::default());
        outbox.release(1, true);
        let mut sink = Texts::default();
        let drained = reader.drain(&log, &outbox, &mut sink).expect("not passed");
        assert_eq!(
            sink.0,
            [
                "p1".to_owned(),
                text(&Notice::joined(&uid("b"))),
                "chat".to_owned(),
                text(&Notice::left(&uid("a"))),
            ]
        );
        assert_eq!(drained, Drained::default());
    }

    #[test]
    fn a_drain_writes_at_most_its_share_of_notices_and_asks_for_more() {
        let log = PresenceLog::new(4096);
        let outbox = Outbox::new(crate::outbox::Limits {
            items: 8,
            bytes: 1 << 20,
        });
        for i in 0..2000 {
            log.append(Notice::joined(&uid(&format!("u{i}"))), 1);
        }
        outbox
            .push(1500, Out::Chat(bytes::Bytes::from_static(b"chat")))
            .expect("room");
        let mut reader = Reader::new(0);
        let mut sink = Texts::default();
        let first = reader.drain(&log, &outbox, &mut sink).expect("not passed");
        assert!(first.more);
        assert_eq!(sink.0.len(), MAX_NOTICES_PER_DRAIN as usize);
        // The chat, numbered past this drain's share, waits in the outbox.
        assert_eq!(outbox.take(0).left, Some(1500));
        while reader
            .drain(&log, &outbox, &mut sink)
            .expect("not passed")
            .more
        {}
        assert_eq!(sink.0.len(), 2001);
        assert_eq!(sink.0[1500], "chat");
        assert_eq!(sink.0[2000], text(&Notice::joined(&uid("u1999"))));
    }

    #[test]
    fn the_ring_keeps_at_least_its_minimum_and_twice_the_members_and_reads_in_order() {
        let log = PresenceLog::new(4);
        for i in 0..6 {
            log.append(Notice::joined(&uid(&format!("u{i}"))), 1);
        }
        assert_eq!((log.head(), log.len()), (6, 4));
        assert!(log.passed(1));
        assert!(!log.passed(2));
        assert_eq!(log.read(1, 6, 10, |_| {}), Err(Passed));
        let mut got = Vec::new();
        assert_eq!(log.read(2, 6, 3, |n| got.push(text(n))), Ok(5));
        assert_eq!(
            got,
            [
                r#"{"command":"joined","user_id":"u2"}"#,
                r#"{"command":"joined","user_id":"u3"}"#,
                r#"{"command":"joined","user_id":"u4"}"#,
            ]
        );
        // Up to the head, however far `to` is.
        assert_eq!(log.read(5, u64::MAX, 10, |_| {}), Ok(6));
        assert_eq!(log.read(6, u64::MAX, 10, |_| panic!("nothing")), Ok(6));
        // Many members: the ring grows to twice their number.
        for i in 0..20 {
            log.append(Notice::left(&uid(&format!("u{i}"))), 10);
        }
        assert_eq!(log.len(), 20);
        // Fewer again: it shrinks by one per append (two dropped, one added).
        log.append(Notice::left(&uid("x")), 1);
        assert_eq!(log.len(), 19);
    }
}
