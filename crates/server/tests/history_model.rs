//! The SQLite store's history against the in-memory store's as a model: random sequences of
//! appends (with repeated ids), offline messages, prunes, account deletions and page
//! requests must give the same answers from both.

use std::sync::Arc;

use proptest::prelude::*;
use simpletextim_proto::{ChatMessage, Recipient, UserId};
use simpletextim_server::store::{
    Account, Conversation, HistoryQuery, MemoryStore, PageLimit, Retention, SqliteStore, Store,
};

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

/// Spellings of three accounts (`al`, `alice`, `bob`), several for each.
const NAMES: [&str; 6] = ["al", "AL", "alice", "Alice", "bob", "BOB"];

fn user(n: usize) -> UserId {
    UserId::new(NAMES[n % NAMES.len()]).unwrap_or_else(|e| panic!("{e:?}"))
}

#[derive(Debug, Clone)]
enum Op {
    /// Messages `(from, to: None = public, ts step)`, with fresh ids; `repeat` also appends
    /// the message of an earlier id again (with other text).
    Append(Vec<(usize, Option<usize>, u64)>, bool),
    /// A private message for an offline user.
    Enqueue(usize, usize),
    Prune(Option<u64>, Option<u64>, u64),
    Delete(usize),
    /// A page: conversation (`None` = public), kind (0 latest, 1 before, 2 after), anchor
    /// as a share of the highest id so far (in per-mille), limit.
    Page(Option<(usize, usize)>, u8, u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..NAMES.len();
    prop_oneof![
        3 => (
            prop::collection::vec((user.clone(), prop::option::of(user.clone()), 0..3u64), 1..8),
            any::<bool>()
        )
            .prop_map(|(m, r)| Op::Append(m, r)),
        1 => (user.clone(), user.clone()).prop_map(|(a, b)| Op::Enqueue(a, b)),
        1 => (
            prop::option::of(0..20u64),
            prop::option::of(0..15u64),
            1..6u64
        )
            .prop_map(|(age, count, rows)| Op::Prune(age, count, rows)),
        1 => user.clone().prop_map(Op::Delete),
        4 => (
            prop::option::of((user.clone(), user)),
            0..3u8,
            0..1100u64,
            1..7u64
        )
            .prop_map(|(c, k, a, l)| Op::Page(c, k, a, l)),
    ]
}

/// Runs `ops` on both stores, comparing every answer.
async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    let sqlite =
        SqliteStore::open(dir.path(), 1000).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let stores: [Arc<dyn Store>; 2] = [Arc::new(sqlite), Arc::new(MemoryStore::new(1000))];
    for name in ["al", "alice", "bob"] {
        for store in &stores {
            let account = Account {
                user_id: UserId::new(name).map_err(|e| TestCaseError::fail(e.reason))?,
                password_hash: "x".into(),
                created_ms: 1,
            };
            store
                .create_account(account)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
    let mut next_id = 0u64;
    let mut ts = 0u64;
    let mut sent: Vec<ChatMessage> = Vec::new();
    for op in ops {
        match op {
            Op::Append(messages, repeat) => {
                let mut batch: Vec<ChatMessage> = messages
                    .into_iter()
                    .map(|(from, to, step)| {
                        next_id += 1 + step % 2;
                        ts += step;
                        let to = to.map_or(Recipient::Everyone, |t| Recipient::User(user(t)));
                        chat(user(from), format!("m{next_id}"), to, next_id, ts)
                    })
                    .collect();
                sent.extend(batch.iter().cloned());
                if repeat && let Some(old) = sent.get(sent.len() / 2) {
                    let mut again = old.clone();
                    again.message = "again".into();
                    batch.push(again);
                }
                for store in &stores {
                    let r = store.append_history(batch.clone()).await;
                    prop_assert!(r.is_ok(), "{r:?}");
                }
            }
            Op::Enqueue(from, to) => {
                next_id += 1;
                ts += 1;
                let m = chat(
                    user(from),
                    format!("m{next_id}"),
                    Recipient::User(user(to)),
                    next_id,
                    ts,
                );
                sent.push(m.clone());
                let a = stores[0].enqueue(user(to).key(), m.clone()).await;
                let b = stores[1].enqueue(user(to).key(), m).await;
                prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            }
            Op::Prune(age, count, rows) => {
                let retention = Retention {
                    max_age: age.map(std::time::Duration::from_millis),
                    max_messages: count,
                };
                let a = stores[0].prune_history(retention, ts, rows).await;
                let b = stores[1].prune_history(retention, ts, rows).await;
                prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            }
            Op::Delete(u) => {
                let a = stores[0].delete_account(user(u).key()).await;
                let b = stores[1].delete_account(user(u).key()).await;
                prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            }
            Op::Page(conversation, kind, anchor, limit) => {
                let conversation = conversation.map_or_else(Conversation::public, |(a, b)| {
                    Conversation::between(&user(a), &user(b))
                });
                let anchor = next_id * anchor / 1000;
                let query = match kind {
                    0 => HistoryQuery::Latest,
                    1 => HistoryQuery::Before(anchor),
                    _ => HistoryQuery::After(anchor),
                };
                let limit = PageLimit::new(limit).ok_or_else(|| TestCaseError::fail("limit"))?;
                let a = stores[0].history(conversation.clone(), query, limit).await;
                let b = stores[1].history(conversation, query, limit).await;
                prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_history_behaves_like_the_memory_model(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        rt.block_on(run(ops))?;
    }
}
