//! A session's outbox: the bounded queue the hub fills and the session drains, plus the
//! session's kill switch.
//!
//! It is a `VecDeque` behind a `std::sync::Mutex` and a `tokio::sync::Notify`, not a tokio
//! channel: an idle outbox allocates nothing (a channel allocates its first block of slots
//! up front), and the session takes everything queued in one swap.
//!
//! Items are queued *eagerly* (chat: the session is woken at once) or *lazily* (presence
//! notices: [`Outbox::push_lazy`] queues without waking). A lazy item leaves with the next
//! eager item or reply, in queue order, or when the hub's presence ticker calls
//! [`Outbox::flush_lazy`] a few tens of milliseconds later. A login storm of N users then
//! costs each idle session one wake-up and one `write` per tick instead of one per notice.
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
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::store::RevocationKind;
use crate::wire::Out;

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

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Out>,
    /// The encoded size of `items` (saturating; the byte limit keeps it far below).
    bytes: u32,
    kicked: Option<KickReason>,
    /// The session has been woken since its last `take`: further pushes need not wake it.
    woken: bool,
    /// The outbox is on the hub's list of outboxes to flush at the next tick.
    listed: bool,
    /// Acknowledged delivery's state; `None` for a session without it.
    acks: Option<Box<Acks>>,
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
        Out::Chat(_) | Out::Frame(_) => None,
    }
}

/// A bounded queue of frames for one session, and its kick switch.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
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
    /// Everything queued, oldest first.
    pub items: VecDeque<Out>,
    /// Set once the session has been kicked.
    pub kicked: Option<KickReason>,
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
            notify: Notify::new(),
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
    pub fn push_uncommitted(&self, item: Out) -> Result<(), Full> {
        let id = private_id(&item);
        let Some(mut s) = self.queue(item)? else {
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
            && let Some(at) = s.items.iter().position(|i| private_id(i) == Some(id))
            && let Some(item) = s.items.remove(at)
        {
            let len = u32::try_from(item.encoded_len()).unwrap_or(u32::MAX);
            s.bytes = s.bytes.saturating_sub(len);
            self.publish_bytes(&s);
        }
        let wake = !s.items.is_empty() && !std::mem::replace(&mut s.woken, true);
        drop(s);
        if wake {
            self.notify.notify_one();
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

    /// Queues an item and wakes the session (unless it was woken already since it last
    /// took its items). Items for a kicked session are dropped: it is going away and will
    /// say nothing more but goodbye.
    ///
    /// # Errors
    /// [`Full`] when the item would take the outbox past its [`Limits`]; nothing is queued
    /// then.
    pub fn push(&self, item: Out) -> Result<(), Full> {
        let Some(mut s) = self.queue(item)? else {
            return Ok(());
        };
        let wake = !std::mem::replace(&mut s.woken, true);
        drop(s);
        if wake {
            // A stored permit covers a session that is between `take` and waiting.
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Queues an item without waking the session: it leaves with the next eager item or
    /// reply, or at the next [`Outbox::flush_lazy`]. Returns `Ok(true)` when the caller
    /// must put this outbox on its flush list (it was not on it, and nothing will wake the
    /// session otherwise).
    ///
    /// # Errors
    /// [`Full`] when the item would take the outbox past its [`Limits`]; nothing is queued
    /// then.
    pub fn push_lazy(&self, item: Out) -> Result<bool, Full> {
        let Some(mut s) = self.queue(item)? else {
            return Ok(false);
        };
        let list = !s.woken && !s.listed;
        if list {
            s.listed = true;
        }
        Ok(list)
    }

    /// Appends `item` and returns the locked state, or `None` (the item dropped) when the
    /// session was kicked.
    fn queue(&self, item: Out) -> Result<Option<MutexGuard<'_, State>>, Full> {
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
        s.items.push_back(item);
        s.bytes = bytes;
        self.publish_bytes(&s);
        Ok(Some(s))
    }

    /// Wakes the session if lazy items are still waiting; the hub's ticker calls it for
    /// each outbox on its flush list. The outbox leaves the list.
    pub fn flush_lazy(&self) {
        let mut s = self.lock();
        s.listed = false;
        let wake = !s.items.is_empty() && !std::mem::replace(&mut s.woken, true);
        drop(s);
        if wake {
            self.notify.notify_one();
        }
    }

    /// Tells the session to close. The first reason sticks.
    pub fn kick(&self, reason: KickReason) {
        let mut s = self.lock();
        s.kicked.get_or_insert(reason);
        drop(s);
        self.notify.notify_one();
    }

    /// Whether the session has been kicked, and why.
    pub fn kicked(&self) -> Option<KickReason> {
        self.lock().kicked
    }

    /// Takes everything queued (with acknowledged delivery: up to the first message whose
    /// mailbox write has not committed, remembering the private messages it hands out).
    /// From now on, a push wakes the session again.
    pub fn take(&self) -> Taken {
        let mut s = self.lock();
        s.woken = false;
        if s.acks.is_some() {
            let taken = Self::take_acked(&mut s);
            self.publish_bytes(&s);
            return taken;
        }
        s.bytes = 0;
        self.publish_bytes(&s);
        Taken {
            items: std::mem::take(&mut s.items),
            kicked: s.kicked,
        }
    }

    /// [`Outbox::take`] with acknowledged delivery.
    fn take_acked(s: &mut State) -> Taken {
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
        let held = match acks.uncommitted.is_empty() {
            true => None,
            false => items
                .iter()
                .position(|i| private_id(i).is_some_and(|id| acks.uncommitted.contains(&id))),
        };
        let mut taken = match held {
            None => {
                *bytes = 0;
                std::mem::take(items)
            }
            Some(at) => {
                let rest = items.split_off(at);
                let len: usize = rest.iter().map(Out::encoded_len).sum();
                *bytes = u32::try_from(len).unwrap_or(u32::MAX);
                std::mem::replace(items, rest)
            }
        };
        taken.retain(|item| match item {
            // Handed out already (in the login ack): once is enough.
            Out::Private(p) => acks.unacked.insert(p.id),
            // A message to oneself with a ref is also its echo: always written.
            Out::Echo(e) => {
                if let Some(p) = &e.private {
                    acks.unacked.insert(p.id);
                }
                true
            }
            Out::Chat(_) | Out::Frame(_) => true,
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
            kicked: *kicked,
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

    /// Waits until something was queued or the session was kicked since the last wake-up.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
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
        assert_eq!(o.push(frame("12345")), Ok(()));
        assert_eq!(o.push(frame("67890")), Ok(()));
        // 11 bytes would be over the limit, eagerly or lazily.
        assert_eq!(o.push(frame("x")), Err(Full));
        assert_eq!(o.push_lazy(frame("x")), Err(Full));
        assert_eq!(o.queued_bytes(), 10);
        assert_eq!(texts(&o.take().items), vec![&b"12345"[..], b"67890"]);
        assert_eq!(o.queued_bytes(), 0);
        // Taken: the count starts again, and one item larger than the limit still goes in.
        assert_eq!(o.push(frame("a much longer item")), Ok(()));
        assert_eq!(o.push(frame("y")), Err(Full));
        assert_eq!(texts(&o.take().items), vec![&b"a much longer item"[..]]);
    }

    #[test]
    fn bounded_and_kick_drops_later_items() {
        let o = Outbox::new(items(2));
        assert_eq!(o.push(Out::Frame(Bytes::from_static(b"1"))), Ok(()));
        assert_eq!(o.push(Out::Frame(Bytes::from_static(b"2"))), Ok(()));
        assert_eq!(o.push(Out::Frame(Bytes::from_static(b"3"))), Err(Full));
        let t = o.take();
        assert_eq!(t.items.len(), 2);
        assert_eq!(t.kicked, None);
        o.kick(KickReason::TakenOver);
        o.kick(KickReason::SlowConsumer);
        assert_eq!(o.push(Out::Frame(Bytes::from_static(b"4"))), Ok(()));
        let t = o.take();
        assert_eq!(t.items.len(), 0);
        assert_eq!(t.kicked, Some(KickReason::TakenOver));
    }

    fn frame(s: &'static str) -> Out {
        Out::Frame(Bytes::from_static(s.as_bytes()))
    }

    fn texts(items: &VecDeque<Out>) -> Vec<&[u8]> {
        items.iter().map(|i| &i.bytes()[..]).collect()
    }

    fn woken(o: &Outbox) -> bool {
        use futures::FutureExt;
        o.changed().now_or_never().is_some()
    }

    #[test]
    fn lazy_items_wait_for_a_flush_and_are_listed_once() {
        let o = Outbox::new(items(8));
        // The first lazy item asks to be listed; later ones do not.
        assert_eq!(o.push_lazy(frame("j1")), Ok(true));
        assert_eq!(o.push_lazy(frame("j2")), Ok(false));
        assert!(!woken(&o));
        o.flush_lazy();
        assert!(woken(&o));
        assert_eq!(texts(&o.take().items), vec![&b"j1"[..], b"j2"]);
        // Taken: the next lazy item asks to be listed again.
        assert_eq!(o.push_lazy(frame("j3")), Ok(true));
        o.flush_lazy();
        assert_eq!(texts(&o.take().items), vec![&b"j3"[..]]);
        // A flush with nothing waiting wakes nobody.
        let _ = woken(&o);
        o.flush_lazy();
        assert!(!woken(&o));
    }

    #[test]
    fn an_eager_item_carries_the_lazy_ones_in_order() {
        let o = Outbox::new(items(8));
        assert_eq!(o.push_lazy(frame("joined")), Ok(true));
        assert!(!woken(&o));
        assert_eq!(o.push(frame("chat")), Ok(()));
        assert!(woken(&o));
        // Woken already: a lazy item now needs no listing, and a flush no second wake-up.
        assert_eq!(o.push_lazy(frame("left")), Ok(false));
        o.flush_lazy();
        assert!(!woken(&o));
        assert_eq!(
            texts(&o.take().items),
            vec![&b"joined"[..], b"chat", b"left"]
        );
    }

    #[test]
    fn lazy_pushes_are_bounded_and_dropped_once_kicked() {
        let o = Outbox::new(items(1));
        assert_eq!(o.push_lazy(frame("1")), Ok(true));
        assert_eq!(o.push_lazy(frame("2")), Err(Full));
        o.kick(KickReason::SlowConsumer);
        let _ = o.take();
        assert_eq!(o.push_lazy(frame("3")), Ok(false));
        assert_eq!(o.take().items.len(), 0);
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

    fn ids(items: &VecDeque<Out>) -> Vec<Option<u64>> {
        items.iter().map(private_id).collect()
    }

    #[test]
    fn with_acks_nothing_from_an_uncommitted_message_on_is_handed_out() {
        let o = Outbox::new_acks(items(8));
        assert!(o.has_acks());
        assert!(!Outbox::new(items(8)).has_acks());
        o.push(private(1)).unwrap();
        o.push_uncommitted(private(2)).unwrap();
        o.push(frame("chat")).unwrap();
        o.push_uncommitted(private(3)).unwrap();
        assert_eq!(ids(&o.take().items), vec![Some(1)]);
        // The later one commits first: still held behind the earlier one.
        o.release(3, true);
        assert!(o.take().items.is_empty());
        o.release(2, true);
        assert!(woken(&o));
        assert_eq!(ids(&o.take().items), vec![Some(2), None, Some(3)]);
        // A refused one is dropped, and what follows it goes out.
        o.push_uncommitted(private(4)).unwrap();
        o.push(private(5)).unwrap();
        o.release(4, false);
        assert_eq!(ids(&o.take().items), vec![Some(5)]);
        // Released twice, or never held: nothing happens.
        o.release(4, true);
        o.release(99, false);
        assert!(o.take().items.is_empty());
        // What stays held counts against the byte limit.
        o.push_uncommitted(private(10)).unwrap();
        assert!(o.take().items.is_empty());
        assert_eq!(o.lock().bytes, 3);
        assert_eq!(o.queued_bytes(), 3);
    }

    #[test]
    fn with_acks_handed_out_messages_are_remembered_until_acked_and_sent_once() {
        let o = Outbox::new_acks(items(8));
        // The login ack's messages.
        o.remember([1, 2].into_iter());
        // 2 was queued while the login read the mailbox: it goes out once, in the ack.
        o.push(private(2)).unwrap();
        o.push(private(3)).unwrap();
        o.push(frame("joined")).unwrap();
        assert_eq!(ids(&o.take().items), vec![Some(3), None]);
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
        o.push(private(2)).unwrap();
        o.push(private(3)).unwrap();
        let t = o.take();
        assert_eq!((ids(&t.items), t.kicked), (vec![Some(2), Some(3)], None));
        assert_eq!(o.ack_up_to(2), Some(vec![1, 2]));
        o.push(private(4)).unwrap();
        o.push(private(5)).unwrap();
        let t = o.take();
        assert_eq!((ids(&t.items), t.kicked), (vec![Some(4), Some(5)], None));
        o.push(private(6)).unwrap();
        // Four not acked: nothing more is written (all of it is in the mailbox).
        let t = o.take();
        assert_eq!(t.kicked, Some(KickReason::SlowConsumer));
        assert!(t.items.is_empty());
    }

    #[tokio::test]
    async fn push_to_empty_queue_wakes_the_waiter() {
        let o = Outbox::new(items(4));
        o.push(Out::Frame(Bytes::from_static(b"x"))).unwrap();
        // The permit was stored: this returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), o.changed())
            .await
            .unwrap();
        assert_eq!(o.take().items.len(), 1);
    }
}
