//! Writing history off the live path ([`HistoryWriter`]) and pruning it in the background
//! ([`run_retention`]).
//!
//! **Durability.** A message handed to a [`HistoryWriter`] is delivered and echoed without
//! waiting for its history row: the writer commits what accumulated a moment later, in one
//! transaction. A crash (or a power cut) may therefore lose the last few milliseconds of
//! public history, and of private messages to users who were online; never an offline
//! user's private message, whose row [`Store::enqueue`] writes with its mailbox row before
//! the echo. A write that fails (disk full…) loses its batch's history: it is logged and
//! counted ([`HistoryStats::failed`]), and the live path carries on.
//!
//! **Order.** The writer commits entries in the order they were pushed, so a caller that
//! pushes under the lock that assigns message ids queues them in id order. Rows reach the
//! store a moment after the message was delivered, and an offline user's private message
//! (written by [`Store::enqueue`] at once) can be kept before an earlier one still in the
//! writer: a `history` request in that moment may miss a message it sees later.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use simpletextim_proto::ChatMessage;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio_util::sync::CancellationToken;

use super::{Retention, Store};

/// Default capacity of a [`HistoryWriter`]: messages handed over and not yet committed.
/// A few seconds of a very busy server's traffic; about 2 MB of 140-character messages.
pub const HISTORY_QUEUE: usize = 8192;

/// Most messages one history transaction holds: bounds how long one write keeps the store
/// thread busy (a login's lookup or an offline message waits behind it) while a backlog is
/// worked off. 128 rows take about 4 ms with the commit on a 2-core VM; at 1024 a saturated
/// writer made account lookups wait 65 ms at the 99th percentile instead of 9–17 ms, for
/// no more throughput (docs/ARCHITECTURE.md, *Store*).
pub const HISTORY_BATCH: usize = 128;

/// Least time between the starts of two history writes: at most 200 history commits (and
/// fsyncs) a second however the messages trickle in, for at most this much more history
/// lost by a crash, and the store thread idle between writes for the other requests. With
/// [`HISTORY_BATCH`] it caps the history written at 25 600 messages a second; above that,
/// [`HistoryWriter::reserve`] waits (backpressure on the senders).
const WRITE_INTERVAL: Duration = Duration::from_millis(5);

/// Rows [`run_retention`] deletes per [`Store::prune_history`] call: a transaction of a
/// few milliseconds, so the store thread serves other requests between batches.
pub const PRUNE_BATCH: u64 = 1000;

/// Why a [`HistoryPermit`] could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// Every slot is taken ([`HistoryWriter::try_reserve`] only; `reserve` waits).
    #[error("the history writer is full")]
    Full,
    /// The writer was closed.
    #[error("the history writer is closed")]
    Closed,
}

/// What a [`HistoryWriter`] has done since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryStats {
    /// Messages handed over and not yet written (or failed).
    pub queued: u64,
    /// Messages committed to the store.
    pub committed: u64,
    /// Messages whose write failed: their history is lost.
    pub failed: u64,
    /// Transactions committed (each holds one or more messages).
    pub batches: u64,
}

/// A bounded group-commit writer of history in front of a [`Store`], for the messages
/// whose delivery must not wait for the disk: public messages, and private messages to
/// users who are online.
///
/// The live path takes a slot first ([`HistoryWriter::reserve`], which waits while all
/// [`HISTORY_QUEUE`] slots are taken: backpressure instead of an unbounded queue; or
/// [`HistoryWriter::try_reserve`], which never waits), typically *before* taking the lock
/// that assigns message ids, then fills it under that lock with [`HistoryPermit::push`],
/// which never blocks. A task commits whatever accumulated in one
/// [`Store::append_history`] call (group commit) and frees the slots. See the module
/// documentation for durability and order.
///
/// Cloning gives another handle to the same writer. The writer closes when
/// [`HistoryWriter::close`] is called or every handle is dropped; messages pushed until
/// then (and by permits still held) are still written. Its task holds the store until
/// then: at shutdown, close the writer before the store.
#[derive(Clone)]
pub struct HistoryWriter {
    shared: Arc<Shared>,
    /// Closes the writer when the last handle goes.
    _handles: Arc<CloseOnDrop>,
}

impl fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryWriter")
            .field("capacity", &self.shared.capacity)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A slot of a [`HistoryWriter`], to be filled with one message. Dropping it unused gives
/// the slot back.
#[must_use = "a permit holds a slot of the writer until it is pushed or dropped"]
pub struct HistoryPermit {
    shared: Arc<Shared>,
    /// `None` once pushed.
    slot: Option<OwnedSemaphorePermit>,
}

impl fmt::Debug for HistoryPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryPermit").finish_non_exhaustive()
    }
}

/// What the handles, the permits and the writing task share.
struct Shared {
    capacity: usize,
    /// The free slots: a message holds its slot from `reserve` until its write ends.
    slots: Arc<Semaphore>,
    queue: Mutex<Queue>,
    /// Wakes the writing task: something was pushed, a permit went back, or closing.
    wake: Notify,
    closed: AtomicBool,
    /// Messages whose write ended (committed or failed), for [`HistoryWriter::flush`].
    done: watch::Sender<u64>,
    /// Messages handed to the store (its write called, maybe not committed), for
    /// [`HistoryWriter::barrier`].
    submitted: watch::Sender<u64>,
    committed: AtomicU64,
    failed: AtomicU64,
    batches: AtomicU64,
}

struct Queue {
    messages: VecDeque<ChatMessage>,
    /// Messages pushed since the start.
    pushed: u64,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Only pushes and drains happen under this lock; neither leaves it half done.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.slots.close();
        self.wake.notify_one();
    }
}

struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl HistoryWriter {
    /// A writer of at most `capacity` messages (at least 1) in front of `store`, with its
    /// writing task spawned on the current Tokio runtime.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn(store: Arc<dyn Store>, capacity: usize) -> HistoryWriter {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            capacity,
            slots: Arc::new(Semaphore::new(capacity)),
            queue: Mutex::new(Queue {
                messages: VecDeque::with_capacity(capacity.min(HISTORY_BATCH)),
                pushed: 0,
            }),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            done: watch::Sender::new(0),
            submitted: watch::Sender::new(0),
            committed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });
        tokio::spawn(write_loop(store, Arc::clone(&shared)));
        HistoryWriter {
            _handles: Arc::new(CloseOnDrop(Arc::clone(&shared))),
            shared,
        }
    }

    /// A slot for one message, waiting while every slot is taken.
    ///
    /// # Errors
    /// [`ReserveError::Closed`] when the writer is closed.
    pub async fn reserve(&self) -> Result<HistoryPermit, ReserveError> {
        let slot = Arc::clone(&self.shared.slots)
            .acquire_owned()
            .await
            .map_err(|_| ReserveError::Closed)?;
        Ok(self.permit(slot))
    }

    /// A slot for one message if one is free now.
    ///
    /// # Errors
    /// [`ReserveError::Full`] when every slot is taken, [`ReserveError::Closed`] when the
    /// writer is closed.
    pub fn try_reserve(&self) -> Result<HistoryPermit, ReserveError> {
        match Arc::clone(&self.shared.slots).try_acquire_owned() {
            Ok(slot) => Ok(self.permit(slot)),
            Err(TryAcquireError::NoPermits) => Err(ReserveError::Full),
            Err(TryAcquireError::Closed) => Err(ReserveError::Closed),
        }
    }

    fn permit(&self, slot: OwnedSemaphorePermit) -> HistoryPermit {
        HistoryPermit {
            shared: Arc::clone(&self.shared),
            slot: Some(slot),
        }
    }

    /// Waits until every message pushed before this call was written (committed or
    /// failed: see [`HistoryWriter::stats`]). For tests and shutdown.
    pub async fn flush(&self) {
        let target = self.shared.queue().pushed;
        let mut done = self.shared.done.subscribe();
        // The sender lives in `shared`, which this handle keeps: no error.
        let _ = done.wait_for(|&d| d >= target).await;
    }

    /// Waits until every message pushed before this call was handed to the store, so that
    /// by the store's ordering contract any store call made afterwards (a `history` page)
    /// sees them; their commit may still be under way. Returns at once when nothing is
    /// waiting to be handed over (an idle writer).
    pub async fn barrier(&self) {
        let target = self.shared.queue().pushed;
        let mut submitted = self.shared.submitted.subscribe();
        if *submitted.borrow() >= target {
            return;
        }
        // The sender lives in `shared`, which this handle keeps: no error.
        let _ = submitted.wait_for(|&s| s >= target).await;
    }

    /// Stops taking messages (reserving fails with [`ReserveError::Closed`]; permits held
    /// can still push) and waits until what was pushed was written.
    pub async fn close(&self) {
        self.shared.close();
        self.flush().await;
    }

    /// The counters of what the writer did.
    pub fn stats(&self) -> HistoryStats {
        let pushed = self.shared.queue().pushed;
        let done = *self.shared.done.borrow();
        HistoryStats {
            queued: pushed.saturating_sub(done),
            committed: self.shared.committed.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
        }
    }

    /// How many messages it holds at most.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }
}

impl HistoryPermit {
    /// Hands `message` over to be written, after every message pushed before it. Never
    /// blocks (a short lock, not held by anything slow): safe under the caller's lock.
    pub fn push(mut self, message: ChatMessage) {
        let slot = self.slot.take();
        {
            let mut queue = self.shared.queue();
            queue.messages.push_back(message);
            queue.pushed += 1;
        }
        // The slot stays taken until the write of the message ends.
        if let Some(slot) = slot {
            slot.forget();
        }
        self.shared.wake.notify_one();
    }
}

impl Drop for HistoryPermit {
    fn drop(&mut self) {
        if self.slot.take().is_some() {
            // Unused: the slot is free again, and a closing writer may be waiting for it.
            self.shared.wake.notify_one();
        }
    }
}

/// The writing task: commits what accumulated, at most [`HISTORY_BATCH`] messages at a time and
/// one write per [`WRITE_INTERVAL`], until the writer is closed, nothing is queued, and no
/// permit is out.
async fn write_loop(store: Arc<dyn Store>, shared: Arc<Shared>) {
    let mut last_write: Option<tokio::time::Instant> = None;
    loop {
        if let Some(last) = last_write {
            tokio::time::sleep_until(last + WRITE_INTERVAL).await;
        }
        let batch: Vec<ChatMessage> = {
            let mut queue = shared.queue();
            let n = queue.messages.len().min(HISTORY_BATCH);
            queue.messages.drain(..n).collect()
        };
        if batch.is_empty() {
            if shared.closed.load(Ordering::Acquire)
                && shared.slots.available_permits() == shared.capacity
                && shared.queue().messages.is_empty()
            {
                return;
            }
            shared.wake.notified().await;
            continue;
        }
        let n = batch.len();
        last_write = Some(tokio::time::Instant::now());
        // Called (queued on the store) first, then counted: a barrier that sees the count
        // asks the store after this write.
        let write = store.append_history(batch);
        shared.submitted.send_modify(|s| *s += n as u64);
        match write.await {
            Ok(()) => {
                shared.committed.fetch_add(n as u64, Ordering::Relaxed);
                shared.batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.failed.fetch_add(n as u64, Ordering::Relaxed);
                // The error, never the messages' text.
                tracing::error!(error = %e, messages = n, "writing history failed; those messages are not kept");
            }
        }
        shared.slots.add_permits(n);
        shared.done.send_modify(|d| *d += n as u64);
    }
}

/// Prunes the history of `store` by `retention` until `shutdown` fires: deletes
/// [`PRUNE_BATCH`] rows at a time (each its own short transaction, so the store serves
/// other requests in between) until nothing more is due, then sleeps `interval`. A failure
/// is logged and retried after `interval`. Returns at once for [`Retention::FOREVER`].
pub async fn run_retention(
    store: Arc<dyn Store>,
    retention: Retention,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if retention == Retention::FOREVER {
        return;
    }
    loop {
        let mut pruned = 0u64;
        loop {
            let call = store.prune_history(retention, crate::now_ms(), PRUNE_BATCH);
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = call => r,
            };
            match result {
                Ok(n) => {
                    pruned += n;
                    if n < PRUNE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning history failed; retrying later");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::info!(messages = pruned, "history pruned");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
