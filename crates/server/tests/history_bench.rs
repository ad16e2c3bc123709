//! Measurements of the kept history on the SQLite store, printed, not asserted (ignored by
//! default; run in release mode):
//!
//! ```text
//! cargo test --release -p simpletextim-server --test history_bench -- --ignored --nocapture
//! ```
//!
//! 1. messages/s handed through a [`HistoryWriter`] (public and private, 140 characters)
//!    until all are committed, the batches that took, and meanwhile the latency of an
//!    account lookup (what a login asks the store) made every millisecond;
//! 2. history pages/s (50 messages, latest / before / after, public and private) on the
//!    table those left, one request at a time and 64 at once;
//! 3. how long one [`Store::prune_history`] batch of 1000 rows holds the store.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use simpletextim_proto::{ChatMessage, Recipient, UserId};
use simpletextim_server::store::{
    Conversation, HistoryQuery, HistoryWriter, PRUNE_BATCH, PageLimit, Retention, SqliteStore,
    Store,
};

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

/// Messages written; the table the pages are read from.
const MESSAGES: u64 = 200_000;
/// Users sending them: half the messages are public, half private between two of them.
const USERS: u64 = 200;

/// A small deterministic generator (xorshift64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn user(n: u64) -> UserId {
    UserId::new(&format!("user{n}")).unwrap_or_else(|e| panic!("{e:?}"))
}

/// A temporary directory of mode 0700, as the store requires of an existing data directory.
fn tempdir() -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
}

fn db_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run in release mode with --ignored --nocapture"]
async fn measure_history_throughput() -> TestResult {
    let dir = tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), 1000)?);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let text = "x".repeat(140);
    let t0_ms = 1_764_168_000_000u64;

    // 1. Through the writer, as the hub would hand them over, with account lookups beside.
    let lookups = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            let mut latencies = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stop = Instant::now() + Duration::from_secs(3);
            while Instant::now() < stop {
                tick.tick().await;
                let t = Instant::now();
                store.account("nobody".into()).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, simpletextim_server::store::StoreError>(latencies)
        }
    });
    let writer = HistoryWriter::spawn(
        Arc::clone(&store),
        simpletextim_server::store::HISTORY_QUEUE,
    );
    let start = Instant::now();
    for id in 1..=MESSAGES {
        let from = rng.below(USERS);
        let to = if rng.below(2) == 0 {
            Recipient::Everyone
        } else {
            Recipient::User(user((from + 1 + rng.below(USERS - 1)) % USERS))
        };
        let m = chat(user(from), text.clone(), to, id, t0_ms + id);
        writer.reserve().await?.push(m);
    }
    let handed = start.elapsed();
    writer.flush().await;
    let written = start.elapsed();
    let stats = writer.stats();
    println!(
        "writer: {MESSAGES} messages handed over in {:.2} s, committed after {:.2} s: \
         {:.0} messages/s, {} batches (avg {:.0} messages), {} failed; database {:.1} MB",
        handed.as_secs_f64(),
        written.as_secs_f64(),
        MESSAGES as f64 / written.as_secs_f64(),
        stats.batches,
        stats.committed as f64 / stats.batches.max(1) as f64,
        stats.failed,
        db_size(dir.path()) as f64 / 1e6,
    );
    let mut latencies = lookups.await??;
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "account lookups meanwhile: {} in the first 3 s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0),
    );

    // 2. Pages of 50, one at a time, then 64 at once.
    let queries: Vec<(Conversation, HistoryQuery)> = (0..10_000)
        .map(|_| {
            let conversation = if rng.below(2) == 0 {
                Conversation::public()
            } else {
                let a = rng.below(USERS);
                Conversation::between(&user(a), &user((a + 1 + rng.below(USERS - 1)) % USERS))
            };
            let query = match rng.below(3) {
                0 => HistoryQuery::Latest,
                1 => HistoryQuery::Before(1 + rng.below(MESSAGES)),
                _ => HistoryQuery::After(rng.below(MESSAGES)),
            };
            (conversation, query)
        })
        .collect();
    let start = Instant::now();
    let mut returned = 0usize;
    for (c, q) in &queries {
        returned += store
            .history(c.clone(), *q, PageLimit::DEFAULT)
            .await?
            .messages
            .len();
    }
    let one = start.elapsed();
    println!(
        "history, one at a time: {} pages in {:.2} s: {:.0} pages/s ({:.0} µs each, {:.1} messages a page)",
        queries.len(),
        one.as_secs_f64(),
        queries.len() as f64 / one.as_secs_f64(),
        one.as_micros() as f64 / queries.len() as f64,
        returned as f64 / queries.len() as f64,
    );
    let queries = Arc::new(queries);
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let store = Arc::clone(&store);
            let queries = Arc::clone(&queries);
            tokio::spawn(async move {
                for (c, q) in queries.iter().skip(t).step_by(64) {
                    store.history(c.clone(), *q, PageLimit::DEFAULT).await?;
                }
                Ok::<(), simpletextim_server::store::StoreError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let many = start.elapsed();
    println!(
        "history, 64 at once: {} pages in {:.2} s: {:.0} pages/s",
        queries.len(),
        many.as_secs_f64(),
        queries.len() as f64 / many.as_secs_f64(),
    );

    // 3. Pruning half the table, 1000 rows a transaction.
    let keep = Retention {
        max_age: None,
        max_messages: Some(MESSAGES / 2),
    };
    let mut longest = Duration::ZERO;
    let mut batches = 0u32;
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let n = store.prune_history(keep, t0_ms, PRUNE_BATCH).await?;
        longest = longest.max(t.elapsed());
        batches += 1;
        if n < PRUNE_BATCH {
            break;
        }
    }
    let pruned = start.elapsed();
    println!(
        "prune: {} rows in {batches} batches, {:.2} s: {:.1} ms a batch on average, longest {:.1} ms",
        MESSAGES / 2,
        pruned.as_secs_f64(),
        pruned.as_secs_f64() * 1000.0 / f64::from(batches),
        longest.as_secs_f64() * 1000.0,
    );
    Ok(())
}
