//! The kept history of every store: one suite of checks over `&dyn Store`, run against the
//! SQLite store (in a temporary directory), the in-memory store and the PostgreSQL store (a
//! database of its own on the private server of `common/pg.rs`), including the
//! [`HistoryWriter`] in front of each; then what only the SQLite store has: the migration
//! from schema version 2, atomic batches, survival across reopening.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use simpletextim_proto::{ChatMessage, Recipient, UserId};
use simpletextim_server::store::{
    Account, Conversation, DB_FILE_NAME, HISTORY_BATCH, HistoryPage, HistoryQuery, HistoryStats,
    HistoryWriter, MemoryStore, PageLimit, PgOptions, PostgresStore, ReserveError, Retention,
    SCHEMA_VERSION, SqliteStore, Store, StoreError,
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

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap_or_else(|e| panic!("bad test user id {s:?}: {e:?}"))
}

/// Message `id` from `from` to `to` (`*`: everyone), sent at `1_000_000 + id` ms.
fn msg(id: u64, from: &str, to: &str) -> ChatMessage {
    msg_at(id, from, to, 1_000_000 + id)
}

fn msg_at(id: u64, from: &str, to: &str, ts: u64) -> ChatMessage {
    let to = to
        .parse::<Recipient>()
        .unwrap_or_else(|e| panic!("bad recipient {to:?}: {e:?}"));
    chat(uid(from), format!("message {id} from {from}"), to, id, ts)
}

fn account(name: &str) -> Account {
    Account {
        user_id: uid(name),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${name}"),
        created_ms: 1,
    }
}

fn ids(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.id).collect()
}

fn limit(n: u64) -> PageLimit {
    PageLimit::new(n).unwrap_or_else(|| panic!("bad test limit {n}"))
}

fn public() -> Conversation {
    Conversation::public()
}

fn between(a: &str, b: &str) -> Conversation {
    Conversation::between(&uid(a), &uid(b))
}

/// A temporary directory of mode 0700, as the store requires of an existing data directory.
fn tempdir() -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    chmod(dir.path(), 0o700)?;
    Ok(dir)
}

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

#[path = "common/pg.rs"]
mod pg;

/// A store under test and what must outlive it (the SQLite store's directory).
struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

/// Mailboxes of the stores under test hold this many messages.
const CAP: usize = 2;

async fn sqlite() -> Result<Backend, Box<dyn std::error::Error>> {
    let dir = tempdir()?;
    let store = SqliteStore::open(dir.path(), CAP)?;
    Ok(Backend {
        store: Arc::new(store),
        _dir: Some(dir),
    })
}

async fn memory() -> Result<Backend, Box<dyn std::error::Error>> {
    Ok(Backend {
        store: Arc::new(MemoryStore::new(CAP)),
        _dir: None,
    })
}

async fn postgres() -> Result<Backend, Box<dyn std::error::Error>> {
    let db = pg::migrated_database().await;
    let store = PostgresStore::connect(&db.database_url(), PgOptions::new(CAP)).await?;
    Ok(Backend {
        store: Arc::new(store),
        _dir: None,
    })
}

/// The checks every [`Store`] passes.
mod suite {
    use super::*;

    async fn page(
        store: &dyn Store,
        c: Conversation,
        q: HistoryQuery,
        n: u64,
    ) -> Result<(Vec<u64>, bool), StoreError> {
        let p = store.history(c, q, limit(n)).await?;
        Ok((ids(&p), p.more))
    }

    pub async fn an_empty_conversation_has_empty_pages(store: &dyn Store) -> TestResult {
        for q in [
            HistoryQuery::Latest,
            HistoryQuery::Before(5),
            HistoryQuery::After(0),
        ] {
            assert_eq!(page(store, public(), q, 50).await?, (vec![], false));
            assert_eq!(
                page(store, between("a", "b"), q, 50).await?,
                (vec![], false)
            );
        }
        Ok(())
    }

    pub async fn pages_are_exact_at_every_boundary(store: &dyn Store) -> TestResult {
        // Public messages have the even ids 2..=20, a private conversation the odd ones.
        let messages: Vec<ChatMessage> = (1..=20)
            .map(|id| {
                if id % 2 == 0 {
                    msg(id, "alice", "*")
                } else {
                    msg(id, "bob", "carol")
                }
            })
            .collect();
        store.append_history(messages.clone()).await?;
        use HistoryQuery::{After, Before, Latest};
        let p = public;
        // Latest: the newest `limit`, oldest first; `more` whether older ones exist.
        assert_eq!(page(store, p(), Latest, 3).await?, (vec![16, 18, 20], true));
        assert_eq!(
            page(store, p(), Latest, 9).await?,
            ((4..=20).step_by(2).collect(), true),
            "limit - 1"
        );
        assert_eq!(
            page(store, p(), Latest, 10).await?,
            ((2..=20).step_by(2).collect(), false),
            "exactly the limit"
        );
        assert_eq!(
            page(store, p(), Latest, 200).await?,
            ((2..=20).step_by(2).collect(), false)
        );
        // Before: just below the anchor.
        assert_eq!(
            page(store, p(), Before(16), 3).await?,
            (vec![10, 12, 14], true)
        );
        assert_eq!(
            page(store, p(), Before(17), 3).await?,
            (vec![12, 14, 16], true)
        );
        assert_eq!(
            page(store, p(), Before(8), 3).await?,
            (vec![2, 4, 6], false)
        );
        assert_eq!(page(store, p(), Before(4), 3).await?, (vec![2], false));
        assert_eq!(
            page(store, p(), Before(2), 3).await?,
            (vec![], false),
            "first id"
        );
        assert_eq!(page(store, p(), Before(0), 3).await?, (vec![], false));
        assert_eq!(
            page(store, p(), Before(u64::MAX), 3).await?,
            (vec![16, 18, 20], true)
        );
        // After: just above the anchor; `more` whether newer ones exist.
        assert_eq!(page(store, p(), After(0), 3).await?, (vec![2, 4, 6], true));
        assert_eq!(
            page(store, p(), After(12), 3).await?,
            (vec![14, 16, 18], true)
        );
        assert_eq!(
            page(store, p(), After(14), 3).await?,
            (vec![16, 18, 20], false)
        );
        assert_eq!(
            page(store, p(), After(13), 3).await?,
            (vec![14, 16, 18], true)
        );
        assert_eq!(page(store, p(), After(18), 3).await?, (vec![20], false));
        assert_eq!(
            page(store, p(), After(20), 3).await?,
            (vec![], false),
            "last id"
        );
        assert_eq!(page(store, p(), After(u64::MAX), 3).await?, (vec![], false));
        // The messages come back as they were appended.
        let full = store.history(p(), After(17), limit(1)).await?;
        assert_eq!(full.messages, vec![messages[17].clone()]);
        // The private conversation holds the odd ids, whoever asks and however spelled.
        assert_eq!(
            page(store, between("CAROL", "bob"), Latest, 200).await?,
            ((1..=19).step_by(2).collect(), false)
        );
        assert_eq!(
            page(store, between("bob", "carol"), Before(5), 1).await?,
            (vec![3], true)
        );
        Ok(())
    }

    pub async fn a_private_conversation_is_both_directions_and_nothing_else(
        store: &dyn Store,
    ) -> TestResult {
        store
            .append_history(vec![
                msg(1, "Alice", "bob"),
                msg(2, "bob", "ALICE"),
                msg(3, "alice", "carol"),
                msg(4, "carol", "bob"),
                msg(5, "alice", "*"),
                msg(6, "bob", "Bob"),
                msg(7, "BOB", "alice"),
            ])
            .await?;
        let alice_bob = store
            .history(
                Conversation::with(&uid("bob"), &"aLiCe".parse()?),
                HistoryQuery::Latest,
                PageLimit::DEFAULT,
            )
            .await?;
        // Spellings as sent.
        assert_eq!(
            alice_bob.messages,
            vec![
                msg(1, "Alice", "bob"),
                msg(2, "bob", "ALICE"),
                msg(7, "BOB", "alice")
            ]
        );
        assert_eq!(
            alice_bob.messages[0].user_id.as_str(),
            "Alice",
            "spelling kept"
        );
        assert_eq!(alice_bob.messages[1].to.as_str(), "ALICE", "spelling kept");
        assert!(!alice_bob.more);
        let l = PageLimit::DEFAULT;
        let latest = |c| store.history(c, HistoryQuery::Latest, l);
        assert_eq!(ids(&latest(between("carol", "alice")).await?), [3]);
        assert_eq!(ids(&latest(between("bob", "carol")).await?), [4]);
        assert_eq!(ids(&latest(between("bob", "bob")).await?), [6]);
        assert_eq!(ids(&latest(public()).await?), [5]);
        assert_eq!(ids(&latest(between("alice", "dave")).await?), [0u64; 0]);
        Ok(())
    }

    pub async fn appending_is_idempotent_and_raises_the_id_mark(store: &dyn Store) -> TestResult {
        assert_eq!(store.max_message_id().await?, 0);
        store
            .append_history(vec![msg(3, "a", "*"), msg(9, "a", "*")])
            .await?;
        assert_eq!(store.max_message_id().await?, 9);
        // The same id again (a message stored twice) keeps the first row.
        let mut again = msg(9, "b", "*");
        again.message = "other text".into();
        store.append_history(vec![again, msg(4, "a", "*")]).await?;
        store.append_history(vec![]).await?;
        let page = store
            .history(public(), HistoryQuery::Latest, PageLimit::DEFAULT)
            .await?;
        assert_eq!(
            page.messages,
            vec![msg(3, "a", "*"), msg(4, "a", "*"), msg(9, "a", "*")]
        );
        assert_eq!(store.max_message_id().await?, 9);
        Ok(())
    }

    pub async fn a_large_write_keeps_each_id_once_and_counts_what_it_kept(
        store: &dyn Store,
    ) -> TestResult {
        // More rows than one multi-row statement takes, public and private mixed.
        let first: Vec<ChatMessage> = (1..=100)
            .map(|id| match id % 3 {
                0 => msg(id, "Bob", "carol"),
                _ => msg(id, "alice", "*"),
            })
            .collect();
        store.append_history(first.clone()).await?;
        // Again with other text, interleaved with new ids, across the statements' edges.
        let again: Vec<ChatMessage> = (51..=150)
            .map(|id| {
                let mut m = msg(id, "alice", "*");
                m.message = format!("again {id}");
                m
            })
            .collect();
        store.append_history(again.clone()).await?;
        assert_eq!(store.max_message_id().await?, 150);
        let public_ids: Vec<u64> = (1..=150).filter(|id| id > &100 || id % 3 != 0).collect();
        let page = store
            .history(public(), HistoryQuery::Latest, PageLimit::MAX)
            .await?;
        assert_eq!(ids(&page), public_ids);
        for m in &page.messages {
            let expected = if m.id <= 100 {
                &first[m.id as usize - 1]
            } else {
                &again[m.id as usize - 51]
            };
            assert_eq!(m, expected, "the first row of id {} is kept", m.id);
        }
        let private = store
            .history(
                between("bob", "Carol"),
                HistoryQuery::Latest,
                PageLimit::MAX,
            )
            .await?;
        assert_eq!(ids(&private), (3..=99).step_by(3).collect::<Vec<u64>>());
        // 150 rows counted, not 200: pruning by count down to 10 deletes 140.
        let keep10 = Retention {
            max_age: None,
            max_messages: Some(10),
        };
        assert_eq!(store.prune_history(keep10, 0, 1000).await?, 140);
        Ok(())
    }

    pub async fn enqueue_keeps_history_with_the_mailbox_row(store: &dyn Store) -> TestResult {
        store.create_account(account("Bob")).await?;
        let conv = || between("alice", "bob");
        let latest = || store.history(conv(), HistoryQuery::Latest, PageLimit::DEFAULT);
        store.enqueue("bob".into(), msg(1, "alice", "BOB")).await?;
        let page = latest().await?;
        assert_eq!(page.messages, vec![msg(1, "alice", "BOB")]);
        assert_eq!(store.pending("bob".into()).await?, page.messages);
        // Refused: neither a mailbox row nor a history row.
        let r = store
            .enqueue("nobody".into(), msg(2, "alice", "nobody"))
            .await;
        assert!(matches!(r, Err(StoreError::NoSuchUser(_))), "{r:?}");
        assert_eq!(
            ids(&store
                .history(
                    between("alice", "nobody"),
                    HistoryQuery::Latest,
                    PageLimit::DEFAULT
                )
                .await?),
            [0u64; 0]
        );
        store.enqueue("bob".into(), msg(3, "alice", "bob")).await?;
        let r = store.enqueue("bob".into(), msg(4, "alice", "bob")).await;
        assert!(matches!(r, Err(StoreError::MailboxFull(_))), "{r:?}");
        assert_eq!(ids(&latest().await?), [1, 3]);
        // Delivered: the mailbox row goes, the history row stays.
        store.delete_delivered("bob".into(), vec![1, 3]).await?;
        assert_eq!(store.pending("bob".into()).await?, vec![]);
        assert_eq!(ids(&latest().await?), [1, 3]);
        // Stored again (a session cut off with it unsent): still one history row.
        store.enqueue("bob".into(), msg(3, "alice", "bob")).await?;
        assert_eq!(ids(&latest().await?), [1, 3]);
        Ok(())
    }

    pub async fn deleting_an_account_deletes_its_private_history(store: &dyn Store) -> TestResult {
        for name in ["al", "alice", "bob", "aaron"] {
            store.create_account(account(name)).await?;
        }
        store
            .append_history(vec![
                msg(1, "al", "bob"),     // al/bob: first user
                msg(2, "aaron", "AL"),   // aaron/al: second user
                msg(3, "alice", "bob"),  // alice/bob: "al" is a prefix only
                msg(4, "al", "*"),       // public: kept
                msg(5, "bob", "aaron"),  // aaron/bob
                msg(6, "al", "al"),      // al/al
                msg(7, "alice", "al-x"), // al-x/alice: a key beginning with "al"
            ])
            .await?;
        store.enqueue("al".into(), msg(8, "bob", "al")).await?;
        assert_eq!(store.delete_account("al".into()).await?, 1);
        let l = PageLimit::MAX;
        let latest = |c| store.history(c, HistoryQuery::Latest, l);
        assert_eq!(ids(&latest(between("al", "bob")).await?), [0u64; 0]);
        assert_eq!(ids(&latest(between("aaron", "al")).await?), [0u64; 0]);
        assert_eq!(ids(&latest(between("al", "al")).await?), [0u64; 0]);
        assert_eq!(ids(&latest(between("alice", "bob")).await?), [3]);
        assert_eq!(ids(&latest(public()).await?), [4]);
        assert_eq!(ids(&latest(between("bob", "aaron")).await?), [5]);
        assert_eq!(ids(&latest(between("alice", "al-x")).await?), [7]);
        Ok(())
    }

    /// All kept ids, every conversation (they are all public here).
    async fn kept(store: &dyn Store) -> Result<Vec<u64>, StoreError> {
        Ok(ids(&store
            .history(public(), HistoryQuery::Latest, PageLimit::MAX)
            .await?))
    }

    pub async fn retention_by_count_prunes_the_oldest_in_batches(store: &dyn Store) -> TestResult {
        store
            .append_history((1..=10).map(|id| msg(id, "a", "*")).collect())
            .await?;
        let keep4 = Retention {
            max_age: None,
            max_messages: Some(4),
        };
        assert_eq!(store.prune_history(keep4, 0, 4).await?, 4);
        assert_eq!(kept(store).await?, [5, 6, 7, 8, 9, 10]);
        assert_eq!(store.prune_history(keep4, 0, 4).await?, 2);
        assert_eq!(kept(store).await?, [7, 8, 9, 10]);
        assert_eq!(store.prune_history(keep4, 0, 4).await?, 0);
        assert_eq!(store.prune_history(Retention::FOREVER, 0, 4).await?, 0);
        // Counting goes on from what is left.
        store
            .append_history(vec![msg(11, "a", "*"), msg(12, "b", "c")])
            .await?;
        assert_eq!(store.prune_history(keep4, 0, 100).await?, 2);
        assert_eq!(kept(store).await?, [9, 10, 11]);
        Ok(())
    }

    pub async fn retention_by_age_prunes_the_oldest_in_batches(store: &dyn Store) -> TestResult {
        const DAY: u64 = 86_400_000;
        let now = 100 * DAY;
        // ids 1..=6 at days 10, 20, …, 60; id 7 with an older time than id 6 (a clock
        // stepped back); id 8 just inside the limit, id 9 exactly at the cutoff.
        let mut messages: Vec<ChatMessage> = (1..=6)
            .map(|id| msg_at(id, "a", "*", id * 10 * DAY))
            .collect();
        messages.push(msg_at(7, "a", "*", 15 * DAY));
        messages.push(msg_at(8, "a", "*", 70 * DAY + 1));
        messages.push(msg_at(9, "a", "*", 70 * DAY));
        store.append_history(messages).await?;
        let thirty_days = Retention::days(30);
        assert_eq!(store.prune_history(thirty_days, now, 3).await?, 3);
        // The oldest by time: days 10, 15, 20.
        assert_eq!(kept(store).await?, [3, 4, 5, 6, 8, 9]);
        assert_eq!(store.prune_history(thirty_days, now, 3).await?, 3);
        assert_eq!(kept(store).await?, [6, 8, 9]);
        assert_eq!(store.prune_history(thirty_days, now, 3).await?, 1);
        assert_eq!(kept(store).await?, [8, 9], "the cutoff itself is kept");
        assert_eq!(store.prune_history(thirty_days, now, 3).await?, 0);
        // Both limits: count first, then age, within one budget.
        let both = Retention {
            max_age: Some(Duration::from_millis(30 * DAY - 1)),
            max_messages: Some(1),
        };
        assert_eq!(store.prune_history(both, now, 1).await?, 1);
        assert_eq!(kept(store).await?, [9], "by count");
        assert_eq!(store.prune_history(both, now, 1).await?, 1);
        assert_eq!(kept(store).await?, [0u64; 0], "by age");
        Ok(())
    }

    pub async fn the_writer_group_commits_in_order(store: Arc<dyn Store>) -> TestResult {
        assert_eq!(HISTORY_BATCH, 8192);
        let writer = HistoryWriter::spawn(Arc::clone(&store), 20_000);
        // Pushed without yielding: the writer task (on this single-threaded runtime) finds
        // all 20 000 queued, and commits them HISTORY_BATCH (8192) at a time: 3 writes.
        for id in 1..=20_000 {
            writer
                .try_reserve()?
                .push(msg(id, "a", if id % 2 == 0 { "*" } else { "b" }));
        }
        assert_eq!(writer.stats().queued, 20_000);
        writer.flush().await;
        assert_eq!(
            writer.stats(),
            HistoryStats {
                queued: 0,
                committed: 20_000,
                failed: 0,
                batches: 20_000usize.div_ceil(HISTORY_BATCH) as u64,
                largest_batch: 8192,
                waits: 0,
            }
        );
        let page = store
            .history(public(), HistoryQuery::Latest, limit(3))
            .await?;
        assert_eq!(ids(&page), [19_996, 19_998, 20_000]);
        let page = store
            .history(between("a", "b"), HistoryQuery::After(0), limit(3))
            .await?;
        assert_eq!(ids(&page), [1, 3, 5]);
        assert_eq!(store.max_message_id().await?, 20_000);
        writer.close().await;
        assert!(matches!(writer.try_reserve(), Err(ReserveError::Closed)));
        assert!(matches!(writer.reserve().await, Err(ReserveError::Closed)));
        Ok(())
    }
}

/// Runs every check of [`suite`] against the backend `$make` builds.
macro_rules! suite_for {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            macro_rules! check {
                ($name:ident) => {
                    #[tokio::test]
                    async fn $name() -> TestResult {
                        let backend = super::$backend().await?;
                        suite::$name(&*backend.store).await
                    }
                };
            }

            check!(an_empty_conversation_has_empty_pages);
            check!(pages_are_exact_at_every_boundary);
            check!(a_private_conversation_is_both_directions_and_nothing_else);
            check!(appending_is_idempotent_and_raises_the_id_mark);
            check!(a_large_write_keeps_each_id_once_and_counts_what_it_kept);
            check!(enqueue_keeps_history_with_the_mailbox_row);
            check!(deleting_an_account_deletes_its_private_history);
            check!(retention_by_count_prunes_the_oldest_in_batches);
            check!(retention_by_age_prunes_the_oldest_in_batches);

            #[tokio::test]
            async fn the_writer_group_commits_in_order() -> TestResult {
                let backend = super::$backend().await?;
                suite::the_writer_group_commits_in_order(Arc::clone(&backend.store)).await
            }
        }
    };
}

suite_for!(sqlite);
suite_for!(memory);
suite_for!(postgres);

/// The schema of version 2, exactly as the version-2 server wrote it (migrations 1 and 2).
const SCHEMA_V2: &str = concat!(
    include_str!("common/schema_v1.sql"),
    "CREATE TABLE revocations (
         id    INTEGER PRIMARY KEY AUTOINCREMENT,
         key   TEXT NOT NULL,
         at_ms INTEGER NOT NULL,
         kind  TEXT NOT NULL CHECK (kind IN ('password', 'deleted'))
     );
     CREATE INDEX revocations_by_time ON revocations (at_ms);"
);

/// The definitions of every table, index and trigger of the database `db`, by name.
fn schema(db: &Path) -> Result<Vec<(String, String)>, rusqlite::Error> {
    let conn = Connection::open(db)?;
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY type, name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

#[tokio::test]
async fn a_version_2_database_gets_history_and_keeps_its_data() -> TestResult {
    let dir = tempdir()?;
    let db = dir.path().join(DB_FILE_NAME);
    std::fs::write(&db, b"")?;
    chmod(&db, 0o600)?;
    {
        let conn = Connection::open(&db)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(SCHEMA_V2)?;
        conn.pragma_update(None, "user_version", 2)?;
        conn.execute(
            "INSERT INTO accounts (key, user_id, password_hash, created_ms) VALUES \
             ('alice', 'Alice', ?1, 1), ('bob', 'bob', ?2, 1)",
            [account("Alice").password_hash, account("bob").password_hash],
        )?;
        // Two messages waiting for alice, from "Bob" to "ALICE" and from "carol".
        conn.execute(
            "INSERT INTO mailbox (id, recipient, sender, message, to_user, ts) VALUES \
             (41, 'alice', 'Bob', 'message 41 from Bob', 'ALICE', 1000041), \
             (43, 'alice', 'zed', 'message 43 from zed', 'alice', 1000043)",
            [],
        )?;
        conn.execute(
            "UPDATE meta SET value = 43 WHERE name = 'max_message_id'",
            [],
        )?;
        conn.execute(
            "INSERT INTO revocations (key, at_ms, kind) VALUES ('bob', 5, 'password')",
            [],
        )?;
    }

    let store = SqliteStore::open(dir.path(), CAP)?;
    assert_eq!(store.account("alice".into()).await?, Some(account("Alice")));
    assert_eq!(
        store.pending("alice".into()).await?,
        vec![msg(41, "Bob", "ALICE"), msg(43, "zed", "alice")]
    );
    assert_eq!(store.max_message_id().await?, 43);
    assert_eq!(store.last_revocation_id().await?, 1);
    // The pending messages are the first rows of their conversations' history.
    let latest = |c| store.history(c, HistoryQuery::Latest, PageLimit::DEFAULT);
    assert_eq!(
        latest(between("bob", "alice")).await?.messages,
        vec![msg(41, "Bob", "ALICE")]
    );
    assert_eq!(ids(&latest(between("alice", "zed")).await?), [43]);
    // Counted for retention: keeping one prunes one, the oldest.
    let keep1 = Retention {
        max_age: None,
        max_messages: Some(1),
    };
    assert_eq!(store.prune_history(keep1, 0, 10).await?, 1);
    assert_eq!(ids(&latest(between("bob", "alice")).await?), [0u64; 0]);
    assert_eq!(ids(&latest(between("alice", "zed")).await?), [43]);
    drop(store);

    let conn = Connection::open(&db)?;
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    assert_eq!((version, SCHEMA_VERSION), (4, 4));
    drop(conn);
    let fresh = tempdir()?;
    drop(SqliteStore::open(fresh.path(), CAP)?);
    assert_eq!(schema(&db)?, schema(&fresh.path().join(DB_FILE_NAME))?);
    Ok(())
}

#[tokio::test]
async fn a_batch_that_fails_keeps_nothing() -> TestResult {
    let backend = sqlite().await?;
    let store = &backend.store;
    // An id SQLite cannot hold fails the whole call, the rows before it included.
    let r = store
        .append_history(vec![msg(1, "a", "*"), msg_at(u64::MAX, "a", "*", 1)])
        .await;
    assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    let latest = || store.history(public(), HistoryQuery::Latest, PageLimit::DEFAULT);
    assert_eq!(ids(&latest().await?), [0u64; 0]);
    assert_eq!(store.max_message_id().await?, 0);
    store.append_history(vec![msg(1, "a", "*")]).await?;
    assert_eq!(ids(&latest().await?), [1]);
    // Also when the bad id comes after whole multi-row statements were inserted.
    let mut many: Vec<ChatMessage> = (2..=80).map(|id| msg(id, "a", "*")).collect();
    many[70] = msg_at(u64::MAX, "a", "*", 1);
    let r = store.append_history(many).await;
    assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    assert_eq!(ids(&latest().await?), [1]);
    assert_eq!(store.max_message_id().await?, 1);
    Ok(())
}

#[tokio::test]
async fn history_survives_reopening() -> TestResult {
    let dir = tempdir()?;
    let store = SqliteStore::open(dir.path(), CAP)?;
    store
        .append_history(vec![msg(1, "a", "*"), msg(2, "a", "B")])
        .await?;
    drop(store);
    let store = SqliteStore::open(dir.path(), CAP)?;
    let p = store
        .history(public(), HistoryQuery::Latest, PageLimit::DEFAULT)
        .await?;
    assert_eq!(p.messages, vec![msg(1, "a", "*")]);
    let p = store
        .history(between("b", "A"), HistoryQuery::Latest, PageLimit::DEFAULT)
        .await?;
    assert_eq!(p.messages, vec![msg(2, "a", "B")]);
    assert_eq!(store.max_message_id().await?, 2);
    Ok(())
}
