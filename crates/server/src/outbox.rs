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

use std::collections::VecDeque;
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
}

/// A bounded queue of frames for one session, and its kick switch.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    limits: Limits,
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
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limits: Limits {
                items: limits.items.max(1),
                bytes: limits.bytes,
            },
        })
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

    /// Takes everything queued. From now on, a push wakes the session again.
    pub fn take(&self) -> Taken {
        let mut s = self.lock();
        s.woken = false;
        s.bytes = 0;
        Taken {
            items: std::mem::take(&mut s.items),
            kicked: s.kicked,
        }
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
        assert_eq!(texts(&o.take().items), vec![&b"12345"[..], b"67890"]);
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
