//! A session's outbox: the bounded queue the hub fills and the session drains, plus the
//! session's kill switch.
//!
//! It is a `VecDeque` behind a `std::sync::Mutex` and a `tokio::sync::Notify`, not a tokio
//! channel: an idle outbox allocates nothing (a channel allocates its first block of slots
//! up front), and the session takes everything queued in one swap.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::wire::Out;

/// Why a session was told to close by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// A newer login of the same user took the session over (`fail 409`).
    TakenOver,
    /// Its outbox stayed full.
    SlowConsumer,
}

/// The outbox is full: its session is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Out>,
    kicked: Option<KickReason>,
}

/// A bounded queue of frames for one session, and its kick switch.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
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
    /// An empty outbox holding at most `capacity` items.
    pub fn new(capacity: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section is a single push, swap or assignment: a panic cannot leave
        // the state half-changed, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an item, waking the session if the queue was empty. Items for a kicked
    /// session are dropped: it is going away and will say nothing more but goodbye.
    ///
    /// # Errors
    /// [`Full`] when `capacity` items are queued already; nothing is queued then.
    pub fn push(&self, item: Out) -> Result<(), Full> {
        let mut s = self.lock();
        if s.kicked.is_some() {
            return Ok(());
        }
        if s.items.len() >= self.capacity {
            return Err(Full);
        }
        let was_empty = s.items.is_empty();
        s.items.push_back(item);
        drop(s);
        if was_empty {
            // A stored permit covers a session that is between `take` and waiting.
            self.notify.notify_one();
        }
        Ok(())
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

    /// Takes everything queued.
    pub fn take(&self) -> Taken {
        let mut s = self.lock();
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

    #[test]
    fn bounded_and_kick_drops_later_items() {
        let o = Outbox::new(2);
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

    #[tokio::test]
    async fn push_to_empty_queue_wakes_the_waiter() {
        let o = Outbox::new(4);
        o.push(Out::Frame(Bytes::from_static(b"x"))).unwrap();
        // The permit was stored: this returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), o.changed())
            .await
            .unwrap();
        assert_eq!(o.take().items.len(), 1);
    }
}
