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
//! writer. A reader that must see everything pushed so far waits for
//! [`HistoryWriter::barrier`] first (it returns once those were handed to the store, so
//! a store call made afterwards runs after their writes); the server's `history` command
//! does.
//!
//! **Throughput.** Writes are as large as what accumulated (up to [`HISTORY_BATCH`]), two
//! may be unfinished at once, and a backlog is written without pause, so a busy store gets
//! fewer, larger transactions; the [`HISTORY_QUEUE`] slots bound the memory and hold the
//! senders back when the store cannot keep up ([`HistoryStats::waits`]).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use simpletextim_proto::ChatMessage;
use tokio::sync::{Notify, Semaphore, TryAcquireError, watch};
use tokio_util::sync::CancellationToken;

use futures::StreamExt;
use futures::future::FutureExt;
use futures::stream::FuturesOrdered;
use prometheus_client::metrics::histogram::Histogram;

use super::{Retention, Store, StoreError};

/// Default capacity of a [`HistoryWriter`]: messages handed over and not yet committed.
/// Sixteen [`HISTORY_BATCH`]es: a burst of private messages the store cannot keep up with
/// (every message a row at a random place of the conversation index) is absorbed and
/// written after it, instead of holding the senders back while it lasts; only a flood
/// longer than this waits for the store. The bound on memory: a queued message is its
/// `ChatMessage` (about 100 bytes) with its text and user ids, about 300 bytes for a
/// 140-character ASCII message, so about 40 MB when full; at most about 100 MB (140
/// four-byte characters, 32-byte ids). 16384 → 131072: the private flood of
/// docs/BENCHMARKS.md (100 000 messages) from 0.41–0.46 of the server without history
/// to about 0.7.
pub const HISTORY_QUEUE: usize = 131_072;

/// Most messages one history write holds: bounds how long one write keeps the store thread
/// busy (a login's lookup or an offline message waits behind at most
/// two of them) while a backlog is worked off. Writes are as large as
/// what accumulated, up to this: a busy store gets fewer, larger transactions. Large, since
/// the conversation index takes rows at random places: a write dirties (and copies into
/// the WAL) most of its pages however few rows it holds, so rows per write is what makes
/// a flood of private messages cheaper (2048 → 8192: about +25 % messages/s in the private
/// flood, docs/BENCHMARKS.md).
pub const HISTORY_BATCH: usize = 8192;

/// Messages queued from which the writer writes at once instead of waiting out
/// the 5 ms write interval: a backlog is worked off without pauses.
pub const HISTORY_BACKLOG: usize = 256;

/// Writes handed to the store and not finished yet, at most: while one runs on the store
/// thread the next is queued behind it, so the store never waits for the writer's task to
/// be scheduled; what arrives meanwhile makes the write after that larger.
const MAX_WRITES_IN_FLIGHT: usize = 2;

/// Least time between the starts of two history writes while fewer than
/// [`HISTORY_BACKLOG`] messages wait: at most 200 history commits a second however the
/// messages trickle in, for at most this much more history lost by a crash. A backlog, a
/// [`HistoryWriter::barrier`] or closing does not wait for it.
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
    /// The most messages one write held.
    pub largest_batch: u64,
    /// [`HistoryWriter::reserve`] calls that found every slot taken and waited: how often
    /// the writer held the senders back.
    pub waits: u64,
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
    /// Whether it still holds its slot (taken from `slots` and forgotten there): until
    /// pushed. Not an owned semaphore permit, whose clone and drop of the semaphore's `Arc`
    /// would be two more atomic writes per message on a cache line every worker touches.
    holds_slot: bool,
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
    slots: Semaphore,
    queue: Mutex<Queue>,
    /// Wakes the writing task: something was pushed, a permit went back, or closing.
    wake: Notify,
    closed: AtomicBool,
    /// Messages whose write ended (committed or failed), for [`HistoryWriter::flush`].
    done: watch::Sender<u64>,
    /// Messages handed to the store (its write called, maybe not committed), for
    /// [`HistoryWriter::barrier`].
    submitted: watch::Sender<u64>,
    /// The highest `pushed` count a barrier waits to see submitted: the writer does not
    /// wait out [`WRITE_INTERVAL`] while its count is below.
    hurry: AtomicU64,
    committed: AtomicU64,
    failed: AtomicU64,
    batches: AtomicU64,
    largest_batch: AtomicU64,
    waits: AtomicU64,
    /// Where each write's duration is observed (the server's metrics).
    commit_seconds: Option<Histogram>,
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
        HistoryWriter::spawn_observed(store, capacity, None)
    }

    /// [`HistoryWriter::spawn`], observing the duration of each committed write (from the
    /// request to the store's commit, waiting behind the store's other requests included)
    /// into `commit_seconds`: once per write, on the writer's task, off the live path. A
    /// failed write is counted in [`HistoryStats::failed`], not timed.
    pub(crate) fn spawn_observed(
        store: Arc<dyn Store>,
        capacity: usize,
        commit_seconds: Option<Histogram>,
    ) -> HistoryWriter {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            capacity,
            slots: Semaphore::new(capacity),
            queue: Mutex::new(Queue {
                messages: VecDeque::with_capacity(capacity.min(HISTORY_BATCH)),
                pushed: 0,
            }),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            done: watch::Sender::new(0),
            submitted: watch::Sender::new(0),
            hurry: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            largest_batch: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            commit_seconds,
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
        match self.try_reserve() {
            Err(ReserveError::Full) => {}
            taken => return taken,
        }
        self.shared.waits.fetch_add(1, Ordering::Relaxed);
        let slot = self
            .shared
            .slots
            .acquire()
            .await
            .map_err(|_| ReserveError::Closed)?;
        slot.forget();
        Ok(self.permit())
    }

    /// A slot for one message if one is free now.
    ///
    /// # Errors
    /// [`ReserveError::Full`] when every slot is taken, [`ReserveError::Closed`] when the
    /// writer is closed.
    pub fn try_reserve(&self) -> Result<HistoryPermit, ReserveError> {
        match self.shared.slots.try_acquire() {
            Ok(slot) => {
                slot.forget();
                Ok(self.permit())
            }
            Err(TryAcquireError::NoPermits) => Err(ReserveError::Full),
            Err(TryAcquireError::Closed) => Err(ReserveError::Closed),
        }
    }

    /// A permit for a slot just taken from `slots` (and forgotten there).
    fn permit(&self) -> HistoryPermit {
        HistoryPermit {
            shared: Arc::clone(&self.shared),
            holds_slot: true,
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
        // Not worth a pause: the writer hands these over as soon as it has room.
        self.shared.hurry.fetch_max(target, Ordering::AcqRel);
        self.shared.wake.notify_one();
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
            largest_batch: self.shared.largest_batch.load(Ordering::Relaxed),
            waits: self.shared.waits.load(Ordering::Relaxed),
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
        // The slot stays taken until the write of the message ends.
        self.holds_slot = false;
        let queued = {
            let mut queue = self.shared.queue();
            queue.messages.push_back(message);
            queue.pushed += 1;
            queue.messages.len()
        };
        // The writer only needs to hear of the first message (it may be idle) and of a
        // backlog (it may be waiting out the interval); otherwise it looks at the queue
        // when its interval or a write ends. Not one wake-up per message.
        if queued == 1 || queued == HISTORY_BACKLOG {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for HistoryPermit {
    fn drop(&mut self) {
        if self.holds_slot {
            // Unused: the slot is free again, and a closing writer may be waiting for it.
            self.shared.slots.add_permits(1);
            self.shared.wake.notify_one();
        }
    }
}

/// The writing task: hands what accumulated to the store, in order, in writes of at most
/// [`HISTORY_BATCH`] messages with at most [`MAX_WRITES_IN_FLIGHT`] unfinished, and
/// without waiting out [`WRITE_INTERVAL`] when a backlog, a barrier or closing asks for it;
/// until the writer is closed, nothing is queued or being written, and no permit is out.
async fn write_loop(store: Arc<dyn Store>, shared: Arc<Shared>) {
    let mut in_flight = FuturesOrdered::new();
    let mut last_write: Option<tokio::time::Instant> = None;
    let mut submitted = 0u64;
    loop {
        let queued = shared.queue().messages.len();
        if queued > 0 && in_flight.len() < MAX_WRITES_IN_FLIGHT {
            let now = tokio::time::Instant::now();
            let next = last_write.map_or(now, |last| last + WRITE_INTERVAL);
            let due = queued >= HISTORY_BACKLOG
                || next <= now
                || shared.hurry.load(Ordering::Acquire) > submitted
                || shared.closed.load(Ordering::Acquire);
            if due {
                let batch: Vec<ChatMessage> = {
                    let mut queue = shared.queue();
                    let n = queue.messages.len().min(HISTORY_BATCH);
                    let batch = queue.messages.drain(..n).collect();
                    // A burst grew the queue's buffer (about 100 bytes a slot, 13 MB for
                    // [`HISTORY_QUEUE`]): give it back once it is worked off.
                    if queue.messages.is_empty() && queue.messages.capacity() > 2 * HISTORY_BATCH {
                        queue.messages.shrink_to(HISTORY_BATCH);
                    }
                    batch
                };
                let n = batch.len();
                last_write = Some(now);
                // Called (queued on the store) first, then counted: a barrier that sees
                // the count asks the store after this write.
                let started = std::time::Instant::now();
                let write = store.append_history(batch);
                submitted += n as u64;
                shared.submitted.send_replace(submitted);
                in_flight.push_back(write.map(move |result| (n, started.elapsed(), result)));
                continue;
            }
            // Wait out the interval unless a backlog or a barrier comes first.
            tokio::select! {
                Some((n, took, result)) = in_flight.next() => finished(&shared, n, took, result),
                () = tokio::time::sleep_until(next) => {}
                () = shared.wake.notified() => {}
            }
            continue;
        }
        if in_flight.is_empty() {
            if shared.closed.load(Ordering::Acquire)
                && shared.slots.available_permits() == shared.capacity
                && shared.queue().messages.is_empty()
            {
                return;
            }
            shared.wake.notified().await;
            continue;
        }
        if queued > 0 {
            // No room for another write: the next one waits for the oldest to end.
            if let Some((n, took, result)) = in_flight.next().await {
                finished(&shared, n, took, result);
            }
            continue;
        }
        tokio::select! {
            Some((n, took, result)) = in_flight.next() => finished(&shared, n, took, result),
            () = shared.wake.notified() => {}
        }
    }
}

/// Accounts for a write of `n` messages that ended after `took`, and frees their slots.
fn finished(shared: &Shared, n: usize, took: Duration, result: Result<(), StoreError>) {
    match result {
        Ok(()) => {
            if let Some(h) = &shared.commit_seconds {
                h.observe(took.as_secs_f64());
            }
            shared.committed.fetch_add(n as u64, Ordering::Relaxed);
            shared.batches.fetch_add(1, Ordering::Relaxed);
            shared.largest_batch.fetch_max(n as u64, Ordering::Relaxed);
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
