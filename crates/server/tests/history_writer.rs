//! The [`HistoryWriter`] in front of a store whose writes can be held or made to fail:
//! group commit of what accumulated during a write, order, the bound (backpressure instead
//! of an unbounded queue), failures counted and never fatal, closing; and
//! [`run_retention`] pruning in batches until shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use simpletextim_proto::{ChatMessage, Recipient, UserId};
use simpletextim_server::store::{
    Account, Conversation, HISTORY_BATCH, HistoryPage, HistoryQuery, HistoryStats, HistoryWriter,
    MemoryStore, PRUNE_BATCH, PageLimit, ReserveError, Retention, Store, StoreError, run_retention,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The one place this file builds a [`ChatMessage`].
fn chat(user_id: UserId, message: String, to: Recipient, id: u64, ts: u64) -> ChatMessage {
    ChatMessage {
        r#ref: None,
        user_id,
        message,
        to,
        id,
        ts,
    }
}

/// Public message `id` from `a`, sent at `id` ms.
fn msg(id: u64) -> ChatMessage {
    let user = UserId::new("a").unwrap_or_else(|e| panic!("{e:?}"));
    chat(user, format!("m{id}"), Recipient::Everyone, id, id)
}

/// How long a test waits for something that should not happen.
const QUIET: Duration = Duration::from_millis(50);

/// A [`MemoryStore`] whose history writes wait for the `gate` (one permit each) and can be
/// made to fail, counting the calls of `append_history` and `prune_history`.
struct TestStore {
    inner: Arc<MemoryStore>,
    gate: Arc<Semaphore>,
    fail: AtomicBool,
    appends: AtomicU64,
    /// Notified when an `append_history` call arrives.
    entered: Arc<Notify>,
    prunes: AtomicU64,
}

impl TestStore {
    /// History writes wait for [`TestStore::open`] when `gated`.
    fn new(gated: bool) -> Arc<TestStore> {
        let gate = if gated {
            Semaphore::new(0)
        } else {
            Semaphore::new(Semaphore::MAX_PERMITS)
        };
        Arc::new(TestStore {
            inner: Arc::new(MemoryStore::new(10)),
            gate: Arc::new(gate),
            fail: AtomicBool::new(false),
            appends: AtomicU64::new(0),
            entered: Arc::new(Notify::new()),
            prunes: AtomicU64::new(0),
        })
    }

    /// Lets every waiting and future history write through.
    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// Waits until `n` `append_history` calls arrived.
    async fn appends_reach(&self, n: u64) {
        loop {
            let entered = self.entered.notified();
            if self.appends.load(Ordering::SeqCst) >= n {
                return;
            }
            entered.await;
        }
    }

    /// Every kept public id, oldest first.
    async fn kept(&self) -> Result<Vec<u64>, StoreError> {
        let mut all = Vec::new();
        let mut query = HistoryQuery::After(0);
        loop {
            let page: HistoryPage = self
                .inner
                .history(Conversation::public(), query, PageLimit::MAX)
                .await?;
            all.extend(page.messages.iter().map(|m| m.id));
            match all.last() {
                Some(&last) if page.more => query = HistoryQuery::After(last),
                _ => return Ok(all),
            }
        }
    }
}

impl Store for TestStore {
    fn account(&self, key: String) -> BoxFuture<'static, Result<Option<Account>, StoreError>> {
        self.inner.account(key)
    }
    fn create_account(&self, account: Account) -> BoxFuture<'static, Result<(), StoreError>> {
        self.inner.create_account(account)
    }
    fn enqueue(&self, key: String, m: ChatMessage) -> BoxFuture<'static, Result<(), StoreError>> {
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
    fn append_history(
        &self,
        messages: Vec<ChatMessage>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.entered.notify_waiters();
        let gate = Arc::clone(&self.gate);
        let fail = self.fail.load(Ordering::SeqCst);
        let inner = Arc::clone(&self.inner);
        async move {
            let _permit = gate
                .acquire()
                .await
                .map_err(|_| StoreError::Backend("gate closed".into()))?;
            if fail {
                return Err(StoreError::Backend("disk on fire".into()));
            }
            inner.append_history(messages).await
        }
        .boxed()
    }
    fn history(
        &self,
        conversation: Conversation,
        query: HistoryQuery,
        limit: PageLimit,
    ) -> BoxFuture<'static, Result<HistoryPage, StoreError>> {
        self.inner.history(conversation, query, limit)
    }
    fn prune_history(
        &self,
        retention: Retention,
        now_ms: u64,
        max_rows: u64,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.prunes.fetch_add(1, Ordering::SeqCst);
        self.inner.prune_history(retention, now_ms, max_rows)
    }
}

/// The writer's main counters: queued, committed, failed, batches.
fn core(s: HistoryStats) -> (u64, u64, u64, u64) {
    (s.queued, s.committed, s.failed, s.batches)
}

#[tokio::test]
async fn what_accumulates_during_writes_is_committed_in_large_batches_in_order() -> TestResult {
    let store = TestStore::new(true);
    let writer = HistoryWriter::spawn(store.clone(), 8192);
    writer.reserve().await?.push(msg(1));
    // The writer took message 1 and waits for its write; 999 more pile up meanwhile, a
    // backlog it hands over at once as a second write, queued behind the first.
    store.appends_reach(1).await;
    for id in 2..=1000 {
        writer.reserve().await?.push(msg(id));
    }
    store.appends_reach(2).await;
    // Two writes unfinished: the next waits for the first to end, however much piles up.
    for id in 1001..=3000 {
        writer.reserve().await?.push(msg(id));
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(store.appends.load(Ordering::SeqCst), 2);
    assert_eq!(core(writer.stats()), (3000, 0, 0, 0));
    store.open();
    writer.flush().await;
    // 1, then 999, then the 2000 that accumulated (at most HISTORY_BATCH a write).
    assert_eq!(HISTORY_BATCH, 8192);
    let s = writer.stats();
    assert_eq!(core(s), (0, 3000, 0, 3));
    assert_eq!((s.largest_batch, s.waits), (2000, 0));
    assert_eq!(store.appends.load(Ordering::SeqCst), 3);
    assert_eq!(store.kept().await?, (1..=3000).collect::<Vec<u64>>());
    Ok(())
}

#[tokio::test]
async fn the_writer_is_bounded_and_waits_instead_of_growing() -> TestResult {
    let store = TestStore::new(true);
    let writer = HistoryWriter::spawn(store.clone(), 4);
    assert_eq!(writer.capacity(), 4);
    for id in 1..=4 {
        writer.try_reserve()?.push(msg(id));
    }
    // Every slot is held until its write ends.
    assert!(matches!(writer.try_reserve(), Err(ReserveError::Full)));
    let waiting = tokio::spawn({
        let writer = writer.clone();
        async move {
            let permit = writer.reserve().await?;
            permit.push(msg(5));
            Ok::<(), ReserveError>(())
        }
    });
    tokio::time::sleep(QUIET).await;
    assert!(
        !waiting.is_finished(),
        "reserve waits while the writer is full"
    );
    store.open();
    waiting.await??;
    writer.flush().await;
    assert_eq!(writer.stats().committed, 5);
    assert_eq!(writer.stats().waits, 1, "the wait is counted");
    assert_eq!(store.kept().await?, [1, 2, 3, 4, 5]);
    // An unused permit gives its slot back.
    let one = HistoryWriter::spawn(store.clone(), 1);
    let permit = one.try_reserve()?;
    assert!(matches!(one.try_reserve(), Err(ReserveError::Full)));
    drop(permit);
    one.try_reserve()?.push(msg(6));
    one.flush().await;
    assert_eq!(core(one.stats()), (0, 1, 0, 1));
    Ok(())
}

#[tokio::test]
async fn a_failed_write_is_counted_and_frees_its_slots() -> TestResult {
    let store = TestStore::new(false);
    store.fail.store(true, Ordering::SeqCst);
    let writer = HistoryWriter::spawn(store.clone(), 3);
    for id in 1..=3 {
        writer.try_reserve()?.push(msg(id));
    }
    writer.flush().await;
    assert_eq!(core(writer.stats()), (0, 0, 3, 0));
    assert_eq!(store.kept().await?, [0u64; 0]);
    // The writer carries on once the store does.
    store.fail.store(false, Ordering::SeqCst);
    for id in 4..=6 {
        writer.try_reserve()?.push(msg(id));
    }
    writer.flush().await;
    assert_eq!(core(writer.stats()), (0, 3, 3, 1));
    assert_eq!(store.kept().await?, [4, 5, 6]);
    Ok(())
}

#[tokio::test]
async fn closing_refuses_new_messages_and_writes_the_pushed_ones() -> TestResult {
    let store = TestStore::new(false);
    let writer = HistoryWriter::spawn(store.clone(), 8);
    writer.try_reserve()?.push(msg(1));
    let held = writer.try_reserve()?;
    writer.close().await;
    assert_eq!(store.kept().await?, [1]);
    assert!(matches!(writer.try_reserve(), Err(ReserveError::Closed)));
    assert!(matches!(writer.reserve().await, Err(ReserveError::Closed)));
    // A permit taken before closing still counts.
    held.push(msg(2));
    writer.flush().await;
    assert_eq!(store.kept().await?, [1, 2]);
    assert_eq!(core(writer.stats()), (0, 2, 0, 2));
    Ok(())
}

#[tokio::test]
async fn dropping_every_handle_still_writes_what_was_pushed() -> TestResult {
    let store = TestStore::new(false);
    let writer = HistoryWriter::spawn(store.clone(), 8);
    let permit = writer.try_reserve()?;
    writer.try_reserve()?.push(msg(1));
    drop(writer);
    permit.push(msg(2));
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.kept().await.map_or(true, |k| k != [1, 2]) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn retention_prunes_in_batches_then_sleeps_until_shutdown() -> TestResult {
    let store = TestStore::new(false);
    store.append_history((1..=2500).map(msg).collect()).await?;
    let shutdown = CancellationToken::new();
    let keep = Retention {
        max_age: None,
        max_messages: Some(100),
    };
    let task = tokio::spawn(run_retention(
        store.clone(),
        keep,
        Duration::from_secs(3600),
        shutdown.clone(),
    ));
    // 2400 rows over the count: 1000, 1000, 400, then the task sleeps.
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.prunes.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    tokio::time::sleep(QUIET).await;
    assert_eq!(store.prunes.load(Ordering::SeqCst), 3);
    assert_eq!(PRUNE_BATCH, 1000);
    assert_eq!(store.kept().await?, (2401..=2500).collect::<Vec<u64>>());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    // Keeping everything needs no task.
    let forever = run_retention(
        store.clone(),
        Retention::FOREVER,
        Duration::from_secs(3600),
        CancellationToken::new(),
    );
    tokio::time::timeout(Duration::from_secs(10), forever).await?;
    assert_eq!(store.prunes.load(Ordering::SeqCst), 3);
    Ok(())
}

#[tokio::test]
async fn messages_trickling_in_share_writes_at_most_one_per_5_ms() -> TestResult {
    let store = TestStore::new(false);
    let writer = HistoryWriter::spawn(store.clone(), 8192);
    let start = std::time::Instant::now();
    for id in 1..=50 {
        writer.reserve().await?.push(msg(id));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writer.flush().await;
    let elapsed = start.elapsed();
    // Writes start at least 5 ms apart, so a span of T ms holds at most T / 5 + 1.
    let most = u64::try_from(elapsed.as_millis() / 5 + 1)?;
    let s = writer.stats();
    assert_eq!((s.committed, s.failed), (50, 0));
    assert!(
        (2..=most).contains(&s.batches),
        "{} writes in {elapsed:?}",
        s.batches
    );
    assert_eq!(store.kept().await?, (1..=50).collect::<Vec<u64>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn senders_reserving_before_a_lock_and_pushing_under_it_keep_id_order() -> TestResult {
    // As the hub does: a slot first (waiting while the small writer is full), then the id
    // and the push under one lock, so the writer's order is the id order.
    let store = TestStore::new(false);
    let writer = HistoryWriter::spawn(store.clone(), 64);
    let hub = Arc::new(std::sync::Mutex::new(0u64));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (writer, hub) = (writer.clone(), Arc::clone(&hub));
            tokio::spawn(async move {
                for _ in 0..2000 {
                    let permit = writer.reserve().await?;
                    let mut next_id = hub.lock().unwrap_or_else(|p| p.into_inner());
                    *next_id += 1;
                    permit.push(msg(*next_id));
                }
                Ok::<(), ReserveError>(())
            })
        })
        .collect();
    for s in senders {
        s.await??;
    }
    writer.flush().await;
    let s = writer.stats();
    assert_eq!((s.queued, s.committed, s.failed), (0, 16_000, 0));
    // A write holds at most the 64 slots.
    assert!(s.batches >= 16_000 / 64, "{} writes", s.batches);
    assert_eq!(store.kept().await?, (1..=16_000).collect::<Vec<u64>>());
    Ok(())
}

#[tokio::test]
async fn a_barrier_waits_for_the_hand_over_to_the_store_not_for_the_commit() -> TestResult {
    let store = TestStore::new(true);
    let writer = HistoryWriter::spawn(store.clone(), 8192);
    // Nothing pushed: at once.
    tokio::time::timeout(QUIET, writer.barrier()).await?;
    writer.reserve().await?.push(msg(1));
    store.appends_reach(1).await;
    // Message 2 arrives within the write interval; the barrier has it handed over at once,
    // though neither write can commit.
    writer.reserve().await?.push(msg(2));
    tokio::time::timeout(Duration::from_secs(10), writer.barrier()).await?;
    assert_eq!(store.appends.load(Ordering::SeqCst), 2);
    assert_eq!(core(writer.stats()), (2, 0, 0, 0));
    store.open();
    writer.flush().await;
    assert_eq!(store.kept().await?, [1, 2]);
    Ok(())
}
