//! A session's outbox: the bounded queue the hub fills and the session drains, plus the
//! session's kill switch.
//!
//! It is a `VecDeque` behind a `std::sync::Mutex` and a wake-up signal, not a tokio
//! channel: an idle outbox allocates nothing (a channel allocates its first block of slots
//! up front), and the session takes what is queued in one swap (everything, unless it is
//! far behind the presence log: then the items up to where its next drain's notices stop).
//!
//! The signal is a flag and the session's waker ([`AtomicWaker`]), not a `tokio::sync::Notify`:
//! an outbox has exactly one waiter, its session, which polls it ([`Outbox::poll_changed`])
//! without a `Notified` future: that future (64 bytes) would sit in every session's task,
//! idle or not.
//!
//! Presence notices are not queued here: they are in the hub's shared presence log
//! (`presence.rs`). Each item carries the log's head at the moment it was queued
//! ([`Queued::seq`]), so that the session writes the notices announced before it first; the
//! outbox also keeps where the session's notices end once the hub removed it
//! ([`Outbox::stop_presence`]).
//!
//! **Acknowledged delivery** (a login with `"acks": true`, [`Outbox::new_acks`]). Every
//! private message to such a session is written to the user's mailbox before it is queued
//! here, and stays there until the client acks it. The outbox then keeps two sets of ids:
//! - *uncommitted*: messages queued whose mailbox write has not committed yet
//!   ([`Outbox::push_uncommitted`]). [`Outbox::take`] hands out nothing from the first of
//!   them on, so the client never sees a message that is not durable, and sees everything
//!   in queue order; [`Outbox::release`] lets it go once committed, or drops it when the
//!   store refused it (its sender gets the `fail`).
//! - *unacked*: the mailboxed messages handed out (the login ack's too,
//!   [`Outbox::remember`]) that the client has not acked ([`Outbox::ack_up_to`]).
//!   Bounded: past the login ack's count plus the item limit, the session is a slow
//!   consumer (nothing is lost: all of them are in the mailbox). A message handed out twice
//!   (queued while the login read the mailbox, so also in the login ack) goes out once.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::task::AtomicWaker;

use crate::store::RevocationKind;
use crate::wire::Out;

/// The largest queue allocation (in items) an outbox keeps for its next pushes
/// ([`Outbox::recycle`]): 256 bytes, for a session that is sent chat; a larger one, grown by a
/// burst, is freed.
const KEEP_CAPACITY: usize = 8;

/// Why a session was told to close by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// A newer login of the same user took the session over (`fail 409`).
    TakenOver,
    /// Its outbox stayed full.
    SlowConsumer,
    /// The server is shutting down (`fail 503`).
    Shutdown,
    /// The user's password was changed or the account deleted after this session logged
    /// in (`fail 401`).
    Revoked(RevocationKind),
}

/// The outbox is full: its session is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// An outbox item and the presence log's head when it was queued: the notices numbered
/// below `seq` were announced before it and are written before it.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The presence log's head when the hub queued the item.
    pub seq: u64,
    /// The item.
    pub item: Out,
}

#[derive(Debug)]
struct State {
    items: VecDeque<Queued>,
    /// The encoded size of `items` (saturating; the byte limit keeps it far below).
    bytes: u32,
    kicked: Option<KickReason>,
    /// The session has been woken since its last `take`: further pushes need not wake it.
    woken: bool,
    /// Set when the hub removed the session: the presence log's head then. The session
    /// writes no notice numbered from it on (what was announced after it left).
    /// [`NO_PRESENCE_END`] until then: a plain `u64` rather than an `Option`, which would
    /// take the outbox (with its `Arc` counts) past 128 bytes, into jemalloc's 160-byte
    /// class.
    presence_end: u64,
    /// Acknowledged delivery's state; `None` for a session without it.
    acks: Option<Box<Acks>>,
}

/// [`State::presence_end`] of a session the hub has not removed (no notice number reaches
/// it).
const NO_PRESENCE_END: u64 = u64::MAX;

impl Default for State {
    fn default() -> State {
        State {
            items: VecDeque::new(),
            bytes: 0,
            kicked: None,
            woken: false,
            presence_end: NO_PRESENCE_END,
            acks: None,
        }
    }
}

/// What an outbox of a session with acknowledged delivery keeps (see the module docs).
#[derive(Debug, Default)]
struct Acks {
    /// Private messages queued whose mailbox write has not committed yet.
    uncommitted: Vec<u64>,
    /// Mailboxed private messages handed out and not acked.
    unacked: BTreeSet<u64>,
    /// Most ids `unacked` holds before the session is a slow consumer.
    limit: usize,
}

/// The id of a private message to the session's user, if `item` is one.
fn private_id(item: &Out) -> Option<u64> {
    match item {
        Out::Private(p) => Some(p.id),
        Out::Echo(e) => e.private.as_ref().map(|p| p.id),
        Out::Chat(_) => None,
    }
}

/// A bounded queue of frames for one session, and its kick switch.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Set by a wake-up (a push, a kick, a release) and cleared when
    /// the session sees it: a wake-up while the session is busy is kept for its next wait.
    signal: AtomicBool,
    /// The session's waker, once it waited.
    waker: AtomicWaker,
    limits: Limits,
    /// The session asked for acknowledged delivery (its state is [`State::acks`]).
    acks: bool,
    /// [`State::bytes`] as of the last change, for the metrics' scrape, which reads it
    /// without the lock. Stored only under the lock, right after `bytes` changes: a plain
    /// store, no read-modify-write, so the push path pays nothing for it.
    published_bytes: AtomicU32,
}

/// How much an outbox holds before its session counts as a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most items queued.
    pub items: usize,
    /// Most bytes queued (the items' encoded size). One item is always taken into an empty
    /// outbox, whatever its size, so that no item can make a session unservable.
    pub bytes: usize,
}

/// What [`Outbox::take`] found.
#[derive(Debug, Default)]
pub struct Taken {
    /// What was queued up to the limit asked, oldest first.
    pub items: VecDeque<Queued>,
    /// Set once the session has been kicked.
    pub kicked: Option<KickReason>,
    /// Where the session's notices end, once the hub removed it ([`Outbox::stop_presence`]).
    pub presence_end: Option<u64>,
    /// Items beyond the limit asked were left queued.
    pub more: bool,
    /// The `seq` of the first item left queued (beyond the limit, or held behind an
    /// uncommitted message): the notices from it on wait for that item.
    pub left: Option<u64>,
}

impl Outbox {
    /// An empty outbox holding at most `limits`.
    pub fn new(limits: Limits) -> Arc<Outbox> {
        Outbox::with_acks(limits, None)
    }

    fn with_acks(limits: Limits, acks: Option<Box<Acks>>) -> Arc<Outbox> {
        Arc::new(Outbox {
            acks: acks.is_some(),
            state: Mutex::new(State {
                acks,
                ..State::default()
            }),
            signal: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            published_bytes: AtomicU32::new(0),
            limits: Limits {
                items: limits.items.max(1),
                bytes: limits.bytes,
            },
        })
    }

    /// An empty outbox holding at most `limits`, for a session with acknowledged delivery.
    pub fn new_acks(limits: Limits) -> Arc<Outbox> {
        let acks = Acks {
            limit: limits.items.max(1),
            ..Acks::default()
        };
        Outbox::with_acks(limits, Some(Box::new(acks)))
    }

    /// Whether the session asked for acknowledged delivery.
    pub fn has_acks(&self) -> bool {
        self.acks
    }

    /// Queues a private message to a session with acknowledged delivery whose mailbox write
    /// has been asked for but has not committed: nothing from it on is handed out until
    /// [`Outbox::release`]. Wakes nobody (there is nothing new to take yet).
    ///
    /// # Errors
    /// [`Full`] as [`Outbox::push`].
    pub fn push_uncommitted(&self, seq: u64, item: Out) -> Result<(), Full> {
        let id = private_id(&item);
        let Some(mut s) = self.queue(seq, item)? else {
            return Ok(());
        };
        if let (Some(acks), Some(id)) = (&mut s.acks, id) {
            acks.uncommitted.push(id);
        }
        Ok(())
    }

    /// The mailbox write of the private message `id` is over: it may be handed out
    /// (`committed`), or it is dropped (the store refused it, and its sender is told).
    /// Wakes the session if something can be taken.
    pub fn release(&self, id: u64, committed: bool) {
        let mut s = self.lock();
        let Some(acks) = &mut s.acks else { return };
        let Some(at) = acks.uncommitted.iter().position(|&u| u == id) else {
            return;
        };
        acks.uncommitted.swap_remove(at);
        if !committed
            && let Some(at) = s.items.iter().position(|q| private_id(&q.item) == Some(id))
            && let Some(q) = s.items.remove(at)
        {
            let len = u32::try_from(q.item.encoded_len()).unwrap_or(u32::MAX);
            s.bytes = s.bytes.saturating_sub(len);
            self.publish_bytes(&s);
        }
        let wake = !s.items.is_empty() && !std::mem::replace(&mut s.woken, true);
        drop(s);
        if wake {
            self.wake();
        }
    }

    /// Remembers the login ack's messages (in the mailbox) as handed out and not acked;
    /// the bound grows by as many.
    pub fn remember(&self, ids: impl ExactSizeIterator<Item = u64>) {
        let mut s = self.lock();
        if let Some(acks) = &mut s.acks {
            acks.limit = acks.limit.saturating_add(ids.len());
            acks.unacked.extend(ids);
        }
    }

    /// The client acked `id`: forgets and returns the ids up to it that were handed out (to
    /// be deleted from the mailbox). `None` for a session without acknowledged delivery.
    pub fn ack_up_to(&self, id: u64) -> Option<Vec<u64>> {
        let mut s = self.lock();
        let acks = s.acks.as_mut()?;
        let later = match id.checked_add(1) {
            Some(next) => acks.unacked.split_off(&next),
            None => BTreeSet::new(),
        };
        Some(
            std::mem::replace(&mut acks.unacked, later)
                .into_iter()
                .collect(),
        )
    }

    /// Remembers again ids [`Outbox::ack_up_to`] returned, whose deletion failed.
    pub fn unack(&self, ids: Vec<u64>) {
        if let Some(acks) = &mut self.lock().acks {
            acks.unacked.extend(ids);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section is a single push, swap or assignment: a panic cannot leave
        // the state half-changed, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an item, after the presence notices numbered below `seq` (the log's head
    /// now), and wakes the session (unless it was woken already since it last took its
    /// items). Items for a kicked session are dropped: it is going away and will say
    /// nothing more but goodbye.
    ///
    /// # Errors
    /// [`Full`] when the item would take the outbox past its [`Limits`]; nothing is queued
    /// then.
    pub fn push(&self, seq: u64, item: Out) -> Result<(), Full> {
        let Some(mut s) = self.queue(seq, item)? else {
            return Ok(());
        };
        let wake = !std::mem::replace(&mut s.woken, true);
        drop(s);
        if wake {
            // The signal, kept until seen, covers a session that is between `take` and waiting.
            self.wake();
        }
        Ok(())
    }

    /// Appends `item` and returns the locked state, or `None` (the item dropped) when the
    /// session was kicked.
    fn queue(&self, seq: u64, item: Out) -> Result<Option<MutexGuard<'_, State>>, Full> {
        let mut s = self.lock();
        if s.kicked.is_some() {
            return Ok(None);
        }
        let len = u32::try_from(item.encoded_len()).unwrap_or(u32::MAX);
        let bytes = s.bytes.saturating_add(len);
        if s.items.len() >= self.limits.items
            || (!s.items.is_empty() && bytes as usize > self.limits.bytes)
        {
            return Err(Full);
        }
        debug_assert!(
            s.items.back().is_none_or(|q| q.seq <= seq),
            "queued in the hub's order"
        );
        s.items.push_back(Queued { seq, item });
        s.bytes = bytes;
        self.publish_bytes(&s);
        Ok(Some(s))
    }

    /// The hub removed the session when the presence log's head was `seq`: the session
    /// writes no notice from that one on. The first call sticks.
    pub fn stop_presence(&self, seq: u64) {
        let mut s = self.lock();
        if s.presence_end == NO_PRESENCE_END {
            s.presence_end = seq;
        }
    }

    /// Tells the session to close. The first reason sticks.
    pub fn kick(&self, reason: KickReason) {
        let mut s = self.lock();
        s.kicked.get_or_insert(reason);
        drop(s);
        self.wake();
    }

    /// Whether the session has been kicked, and why.
    pub fn kicked(&self) -> Option<KickReason> {
        self.lock().kicked
    }

    /// Takes what is queued with a `seq` up to `limit` (with acknowledged delivery: also
    /// only up to the first message whose mailbox write has not committed, remembering the
    /// private messages it hands out); the rest stays queued. From now on, a push wakes the
    /// session again.
    pub fn take(&self, limit: u64) -> Taken {
        let mut s = self.lock();
        s.woken = false;
        let mut taken = match s.acks.is_some() {
            true => Self::take_acked(&mut s, limit),
            false => {
                let items = split_before(&mut s.items, |q| q.seq > limit);
                s.bytes = remaining_bytes(&s.items);
                Taken {
                    items,
                    more: !s.items.is_empty(),
                    left: s.items.front().map(|q| q.seq),
                    ..Taken::default()
                }
            }
        };
        taken.kicked = s.kicked;
        taken.presence_end = (s.presence_end != NO_PRESENCE_END).then_some(s.presence_end);
        self.publish_bytes(&s);
        taken
    }

    /// Gives back the queue of a [`Taken`] once its items are written: the outbox keeps its
    /// allocation (at most [`KEEP_CAPACITY`] items), so that the next push, under the hub's
    /// lock, does not allocate, nor the drain free. An outbox that holds a queue with room
    /// already keeps its own.
    pub fn recycle(&self, mut items: VecDeque<Queued>) {
        if items.capacity() == 0 || items.capacity() > KEEP_CAPACITY {
            return;
        }
        // The items' bytes are released outside the lock.
        items.clear();
        let mut s = self.lock();
        if s.items.capacity() == 0 {
            s.items = items;
        }
    }

    /// [`Outbox::take`] with acknowledged delivery.
    fn take_acked(s: &mut State, limit: u64) -> Taken {
        let State {
            items,
            bytes,
            kicked,
            acks,
            ..
        } = s;
        let Some(acks) = acks else {
            return Taken::default();
        };
        let uncommitted = &acks.uncommitted;
        let mut taken = split_before(items, |q| {
            q.seq > limit
                || (!uncommitted.is_empty()
                    && private_id(&q.item).is_some_and(|id| uncommitted.contains(&id)))
        });
        *bytes = remaining_bytes(items);
        taken.retain(|q| match &q.item {
            // Handed out already (in the login ack): once is enough.
            Out::Private(p) => acks.unacked.insert(p.id),
            // A message to oneself with a ref is also its echo: always written.
            Out::Echo(e) => {
                if let Some(p) = &e.private {
                    acks.unacked.insert(p.id);
                }
                true
            }
            Out::Chat(_) => true,
        });
        if acks.unacked.len() > acks.limit && kicked.is_none() {
            tracing::warn!(
                unacked = acks.unacked.len(),
                "acks: too many messages not acked, disconnecting as a slow consumer"
            );
            *kicked = Some(KickReason::SlowConsumer);
        }
        if *kicked == Some(KickReason::SlowConsumer) {
            // Nothing more is written: all of it is in the mailbox.
            taken.clear();
        }
        Taken {
            items: taken,
            more: items.front().is_some_and(|q| q.seq > limit),
            left: items.front().map(|q| q.seq),
            ..Taken::default()
        }
    }

    /// Publishes the size queued for [`Outbox::queued_bytes`]; called under the lock
    /// whenever [`State::bytes`] changed.
    fn publish_bytes(&self, s: &State) {
        self.published_bytes.store(s.bytes, Ordering::Relaxed);
    }

    /// The encoded size of the items queued, as of the last push or take (read without the
    /// outbox's lock, for the metrics).
    pub fn queued_bytes(&self) -> u32 {
        self.published_bytes.load(Ordering::Relaxed)
    }

    /// Wakes the session, or, if it is not waiting, makes its next wait return at once.
    fn wake(&self) {
        self.signal.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once something was queued or the session was kicked since the last wake-up
    /// it saw (which this consumes); otherwise registers `cx`'s waker. One session polls it.
    pub fn poll_changed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.signal.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A wake-up between the check and the registration found no waker: seen here.
        if self.signal.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }

    /// Waits until something was queued or the session was kicked since the last wake-up.
    #[cfg(test)]
    pub async fn changed(&self) {
        std::future::poll_fn(|cx| self.poll_changed(cx)).await;
    }
}

/// Splits `items` before the first one `stop` holds for: returns those before it, and
/// leaves it and the rest in `items`. Everything, in one swap, when `stop` holds for none.
fn split_before(items: &mut VecDeque<Queued>, stop: impl Fn(&Queued) -> bool) -> VecDeque<Queued> {
    match items.iter().position(stop) {
        None => std::mem::take(items),
        Some(at) => {
            let rest = items.split_off(at);
            std::mem::replace(items, rest)
        }
    }
}

/// The encoded size of `items` (saturating: the byte limit keeps it far below).
fn remaining_bytes(items: &VecDeque<Queued>) -> u32 {
    let len: usize = items.iter().map(|q| q.item.encoded_len()).sum();
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Limits of `n` items and no byte limit to speak of.
    fn items(n: usize) -> Limits {
        Limits {
            items: n,
            bytes: usize::MAX,
        }
    }

    #[test]
    fn bounded_by_bytes_but_an_empty_outbox_takes_any_one_item() {
        let o = Outbox::new(Limits {
            items: 100,
            bytes: 10,
        });
        assert_eq!(o.push(0, frame("12345")), Ok(()));
        assert_eq!(o.push(0, frame("67890")), Ok(()));
        // 11 bytes would be over the limit.
        assert_eq!(o.push(0, frame("x")), Err(Full));
        assert_eq!(o.queued_bytes(), 10);
        assert_eq!(texts(&o.take(ALL).items), vec![&b"12345"[..], b"67890"]);
        assert_eq!(o.queued_bytes(), 0);
        // Taken: the count starts again, and one item larger than the limit still goes in.
        assert_eq!(o.push(0, frame("a much longer item")), Ok(()));
        assert_eq!(o.push(0, frame("y")), Err(Full));
        assert_eq!(texts(&o.take(ALL).items), vec![&b"a much longer item"[..]]);
    }

    #[test]
    fn bounded_and_kick_drops_later_items() {
        let o = Outbox::new(items(2));
        assert_eq!(o.push(0, frame("1")), Ok(()));
        assert_eq!(o.push(0, frame("2")), Ok(()));
        assert_eq!(o.push(0, frame("3")), Err(Full));
        let t = o.take(ALL);
        assert_eq!(t.items.len(), 2);
        assert_eq!(t.kicked, None);
        o.kick(KickReason::TakenOver);
        o.kick(KickReason::SlowConsumer);
        assert_eq!(o.push(0, frame("4")), Ok(()));
        let t = o.take(ALL);
        assert_eq!(t.items.len(), 0);
        assert_eq!(t.kicked, Some(KickReason::TakenOver));
    }

    /// Every item, whatever its presence number.
    const ALL: u64 = u64::MAX;

    fn frame(s: &'static str) -> Out {
        Out::Chat(Bytes::from_static(s.as_bytes()))
    }

    fn texts(items: &VecDeque<Queued>) -> Vec<&[u8]> {
        items.iter().map(|q| &q.item.bytes()[..]).collect()
    }

    fn woken(o: &Outbox) -> bool {
        use futures::FutureExt;
        o.changed().now_or_never().is_some()
    }

    #[test]
    fn take_stops_at_the_presence_limit_and_keeps_the_rest_counted() {
        let o = Outbox::new(Limits { items: 8, bytes: 6 });
        o.push(3, frame("a")).unwrap();
        o.push(3, frame("b")).unwrap();
        o.push(5, frame("c")).unwrap();
        assert!(woken(&o));
        let t = o.take(4);
        assert_eq!((texts(&t.items), t.more), (vec![&b"a"[..], b"b"], true));
        assert_eq!(t.items.iter().map(|q| q.seq).collect::<Vec<_>>(), [3, 3]);
        // What stays counts against the limits.
        assert_eq!(o.lock().bytes, 1);
        o.push(6, frame("ddddd")).unwrap();
        assert_eq!(o.push(6, frame("e")), Err(Full));
        let t = o.take(ALL);
        assert_eq!(
            (texts(&t.items), t.more),
            (vec![&b"c"[..], b"ddddd"], false)
        );
        assert_eq!(o.lock().bytes, 0);
    }

    #[test]
    fn an_outbox_with_its_arc_counts_fits_128_bytes() {
        // One per logged-in session: past 128 bytes, jemalloc rounds it up to 160.
        assert!(std::mem::size_of::<Outbox>() + 16 <= 128);
    }

    #[test]
    fn the_presence_end_is_set_once_and_taken_with_every_take() {
        let o = Outbox::new(items(8));
        assert_eq!(o.take(ALL).presence_end, None);
        o.stop_presence(7);
        o.stop_presence(9);
        assert_eq!(o.take(ALL).presence_end, Some(7));
        assert_eq!(o.take(ALL).presence_end, Some(7));
    }

    fn private(id: u64) -> Out {
        Out::Private(Arc::new(crate::wire::Private {
            obj: Bytes::from(format!("p{id}")),
            from: simpletextim_proto::UserId::new("alice").expect("valid id"),
            text: format!("p{id}"),
            id,
            ts: 1,
        }))
    }

    fn ids(items: &VecDeque<Queued>) -> Vec<Option<u64>> {
        items.iter().map(|q| private_id(&q.item)).collect()
    }

    #[test]
    fn with_acks_nothing_from_an_uncommitted_message_on_is_handed_out() {
        let o = Outbox::new_acks(items(8));
        assert!(o.has_acks());
        assert!(!Outbox::new(items(8)).has_acks());
        o.push(0, private(1)).unwrap();
        o.push_uncommitted(0, private(2)).unwrap();
        o.push(0, frame("chat")).unwrap();
        o.push_uncommitted(0, private(3)).unwrap();
        assert_eq!(ids(&o.take(ALL).items), vec![Some(1)]);
        // The later one commits first: still held behind the earlier one.
        o.release(3, true);
        assert!(o.take(ALL).items.is_empty());
        o.release(2, true);
        assert!(woken(&o));
        assert_eq!(ids(&o.take(ALL).items), vec![Some(2), None, Some(3)]);
        // A refused one is dropped, and what follows it goes out.
        o.push_uncommitted(0, private(4)).unwrap();
        o.push(0, private(5)).unwrap();
        o.release(4, false);
        assert_eq!(ids(&o.take(ALL).items), vec![Some(5)]);
        // Released twice, or never held: nothing happens.
        o.release(4, true);
        o.release(99, false);
        assert!(o.take(ALL).items.is_empty());
        // What stays held counts against the byte limit.
        o.push_uncommitted(0, private(10)).unwrap();
        assert!(o.take(ALL).items.is_empty());
        assert_eq!(o.lock().bytes, 3);
        assert_eq!(o.queued_bytes(), 3);
    }

    #[test]
    fn with_acks_take_stops_at_the_presence_limit_or_an_uncommitted_message() {
        let o = Outbox::new_acks(items(8));
        o.push(1, private(1)).unwrap();
        o.push(5, private(2)).unwrap();
        let t = o.take(4);
        assert_eq!((ids(&t.items), t.more), (vec![Some(1)], true));
        // Handed out are remembered (for the ack) only once taken.
        assert_eq!(o.ack_up_to(u64::MAX), Some(vec![1]));
        o.push_uncommitted(6, private(3)).unwrap();
        o.push(7, private(4)).unwrap();
        let t = o.take(ALL);
        // Held behind the uncommitted one: nothing more to take until it is released.
        assert_eq!((ids(&t.items), t.more), (vec![Some(2)], false));
        o.release(3, true);
        let t = o.take(ALL);
        assert_eq!((ids(&t.items), t.more), (vec![Some(3), Some(4)], false));
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn with_acks_handed_out_messages_are_remembered_until_acked_and_sent_once() {
        let o = Outbox::new_acks(items(8));
        // The login ack's messages.
        o.remember([1, 2].into_iter());
        // 2 was queued while the login read the mailbox: it goes out once, in the ack.
        o.push(0, private(2)).unwrap();
        o.push(0, private(3)).unwrap();
        o.push(0, frame("joined")).unwrap();
        assert_eq!(ids(&o.take(ALL).items), vec![Some(3), None]);
        assert_eq!(o.ack_up_to(2), Some(vec![1, 2]));
        assert_eq!(o.ack_up_to(2), Some(vec![]));
        o.unack(vec![2]);
        assert_eq!(o.ack_up_to(u64::MAX), Some(vec![2, 3]));
        assert_eq!(Outbox::new(items(8)).ack_up_to(5), None);
    }

    #[test]
    fn with_acks_too_many_unacked_messages_make_a_slow_consumer() {
        // The bound: the login ack's count plus the item limit.
        let o = Outbox::new_acks(items(2));
        o.remember([1].into_iter());
        o.push(0, private(2)).unwrap();
        o.push(0, private(3)).unwrap();
        let t = o.take(ALL);
        assert_eq!((ids(&t.items), t.kicked), (vec![Some(2), Some(3)], None));
        assert_eq!(o.ack_up_to(2), Some(vec![1, 2]));
        o.push(0, private(4)).unwrap();
        o.push(0, private(5)).unwrap();
        let t = o.take(ALL);
        assert_eq!((ids(&t.items), t.kicked), (vec![Some(4), Some(5)], None));
        o.push(0, private(6)).unwrap();
        // Four not acked: nothing more is written (all of it is in the mailbox).
        let t = o.take(ALL);
        assert_eq!(t.kicked, Some(KickReason::SlowConsumer));
        assert!(t.items.is_empty());
    }

    #[test]
    fn a_recycled_queue_is_kept_small_and_loses_nothing() {
        let o = Outbox::new(items(64));
        o.push(0, frame("a")).unwrap();
        o.push(0, frame("b")).unwrap();
        let t = o.take(ALL);
        let room = t.items.capacity();
        assert!((1..=KEEP_CAPACITY).contains(&room));
        o.recycle(t.items);
        // Kept: the next push does not allocate, and the bounds still count.
        assert_eq!(o.lock().items.capacity(), room);
        assert_eq!((o.lock().items.len(), o.queued_bytes()), (0, 0));
        o.push(0, frame("c")).unwrap();
        // Something was pushed into a fresh queue meanwhile: that one stays, with its item.
        let t = o.take(ALL);
        o.push(0, frame("d")).unwrap();
        o.recycle(t.items);
        assert_eq!(texts(&o.take(ALL).items), vec![&b"d"[..]]);
        // A queue grown past the limit is freed, not kept.
        for i in 0..(KEEP_CAPACITY + 1) as u64 {
            o.push(i, frame("e")).unwrap();
        }
        let t = o.take(ALL);
        assert!(t.items.capacity() > KEEP_CAPACITY);
        o.recycle(t.items);
        assert_eq!(o.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn push_to_empty_queue_wakes_the_waiter() {
        let o = Outbox::new(items(4));
        o.push(0, frame("x")).unwrap();
        // The signal was kept: this returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), o.changed())
            .await
            .unwrap();
        assert_eq!(o.take(ALL).items.len(), 1);
    }
}
