//! The checks every durable [`Store`] passes (accounts, the offline mailbox and its cap,
//! revocations, the ordering contract under concurrent callers), over a [`Backend`]:
//! `store_sqlite.rs` runs them against the SQLite store, `store_postgres.rs` against
//! PostgreSQL, through [`store_suite!`]. What only one backend has (files, reopening,
//! migrations) stays in that backend's file.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use futures::future::BoxFuture;
use simpletextim_proto::{ChatMessage, Recipient, UserId};
use simpletextim_server::store::{
    Account, AccountInfo, Revocation, RevocationKind, Store, StoreError,
};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A store under test, its `list_accounts` (an inherent method of each durable store), and
/// what must outlive it (a temporary directory, a test database).
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub list_accounts:
        Box<dyn Fn() -> BoxFuture<'static, Result<Vec<AccountInfo>, StoreError>> + Send + Sync>,
    pub keep: Box<dyn std::any::Any + Send + Sync>,
}

pub fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap_or_else(|e| panic!("bad test user id {s:?}: {e:?}"))
}

pub fn account(name: &str, created_ms: u64) -> Account {
    Account {
        user_id: uid(name),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${name}"),
        created_ms,
    }
}

pub fn msg(id: u64, from: &str, to: &str) -> ChatMessage {
    ChatMessage {
        r#ref: None,
        user_id: uid(from),
        message: format!("message {id} from {from}"),
        to: Recipient::User(uid(to)),
        id,
        ts: 1_764_168_000_000 + id,
    }
}

pub fn ids(messages: &[ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

/// One `#[tokio::test]` per check of this file, each on a new backend made by
/// `$make(mailbox_cap).await?` (an async fn of the including file returning `Result<Backend, _>`).
macro_rules! store_suite {
    ($make:ident) => {
        mod suite {
            use super::store_suite as checks;
            use super::store_suite::TestResult;

            #[tokio::test]
            async fn accounts_are_created_read_and_unique_case_insensitively() -> TestResult {
                checks::accounts_are_created_read_and_unique_case_insensitively(
                    &super::$make(10).await?,
                )
                .await
            }

            #[tokio::test]
            async fn enqueue_to_unknown_user_stores_nothing() -> TestResult {
                checks::enqueue_to_unknown_user_stores_nothing(&super::$make(10).await?).await
            }

            #[tokio::test]
            async fn pending_is_oldest_first_and_per_recipient() -> TestResult {
                checks::pending_is_oldest_first_and_per_recipient(&super::$make(10).await?).await
            }

            #[tokio::test]
            async fn delete_delivered_deletes_exactly_the_ids_given() -> TestResult {
                checks::delete_delivered_deletes_exactly_the_ids_given(&super::$make(10).await?)
                    .await
            }

            #[tokio::test]
            async fn mailbox_cap_is_exact_and_a_full_mailbox_stores_nothing() -> TestResult {
                checks::mailbox_cap_is_exact_and_a_full_mailbox_stores_nothing(
                    &super::$make(3).await?,
                )
                .await
            }

            #[tokio::test]
            async fn failures_inside_one_burst_do_not_poison_the_others() -> TestResult {
                checks::failures_inside_one_burst_do_not_poison_the_others(&super::$make(5).await?)
                    .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_enqueues_all_land() -> TestResult {
                checks::concurrent_enqueues_all_land(&super::$make(250).await?).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn an_operation_sees_every_operation_called_before_it() -> TestResult {
                checks::an_operation_sees_every_operation_called_before_it(
                    &super::$make(1000).await?,
                )
                .await
            }

            #[tokio::test]
            async fn password_changes_and_deletions_record_revocations() -> TestResult {
                checks::password_changes_and_deletions_record_revocations(&super::$make(10).await?)
                    .await
            }
        }
    };
}

/// Run with a mailbox cap of 10.
pub async fn accounts_are_created_read_and_unique_case_insensitively(b: &Backend) -> TestResult {
    let store = &*b.store;
    assert_eq!(store.account("alice".into()).await?, None);
    store.create_account(account("Alice", 42)).await?;
    assert_eq!(
        store.account("alice".into()).await?,
        Some(account("Alice", 42))
    );
    let dup = store.create_account(account("ALICE", 43)).await;
    assert!(
        matches!(dup, Err(StoreError::AccountExists(ref id)) if id == "ALICE"),
        "{dup:?}"
    );
    // The first spelling and password stay.
    assert_eq!(
        store.account("alice".into()).await?,
        Some(account("Alice", 42))
    );
    Ok(())
}

/// Run with a mailbox cap of 10.
pub async fn enqueue_to_unknown_user_stores_nothing(b: &Backend) -> TestResult {
    let store = &*b.store;
    let r = store.enqueue("carol".into(), msg(5, "bob", "carol")).await;
    assert!(
        matches!(r, Err(StoreError::NoSuchUser(ref k)) if k == "carol"),
        "{r:?}"
    );
    assert_eq!(store.max_message_id().await?, 0);
    // An account created later finds an empty mailbox.
    store.create_account(account("carol", 1)).await?;
    assert_eq!(store.pending("carol".into()).await?, vec![]);
    Ok(())
}

/// Run with a mailbox cap of 10.
pub async fn pending_is_oldest_first_and_per_recipient(b: &Backend) -> TestResult {
    let store = &*b.store;
    store.create_account(account("alice", 1)).await?;
    store.create_account(account("dave", 1)).await?;
    for (id, to) in [(3, "alice"), (4, "dave"), (7, "alice"), (9, "alice")] {
        store.enqueue(to.into(), msg(id, "bob", to)).await?;
    }
    let alice = store.pending("alice".into()).await?;
    assert_eq!(
        alice,
        vec![
            msg(3, "bob", "alice"),
            msg(7, "bob", "alice"),
            msg(9, "bob", "alice")
        ]
    );
    assert_eq!(ids(&store.pending("dave".into()).await?), [4]);
    // Reading does not consume.
    assert_eq!(ids(&store.pending("alice".into()).await?), [3, 7, 9]);
    assert_eq!(store.max_message_id().await?, 9);
    Ok(())
}

/// Run with a mailbox cap of 10.
pub async fn delete_delivered_deletes_exactly_the_ids_given(b: &Backend) -> TestResult {
    let store = &*b.store;
    store.create_account(account("alice", 1)).await?;
    store.create_account(account("dave", 1)).await?;
    for (id, to) in [(1, "alice"), (2, "dave"), (3, "alice"), (4, "alice")] {
        store.enqueue(to.into(), msg(id, "bob", to)).await?;
    }
    // 2 is dave's, 9 does not exist: both ignored.
    store
        .delete_delivered("alice".into(), vec![1, 3, 2, 9])
        .await?;
    assert_eq!(ids(&store.pending("alice".into()).await?), [4]);
    assert_eq!(ids(&store.pending("dave".into()).await?), [2]);
    // The per-account count the cap check reads follows inserts and deletes.
    let counts = |v: Vec<AccountInfo>| -> Vec<(String, u64)> {
        v.iter()
            .map(|a| (a.user_id.to_string(), a.pending))
            .collect()
    };
    assert_eq!(
        counts((b.list_accounts)().await?),
        [("alice".to_owned(), 1), ("dave".to_owned(), 1)]
    );
    // A message stored after the ack was read, with a lower id, is not deleted with it.
    store
        .enqueue("alice".into(), msg(0, "bob", "alice"))
        .await?;
    assert_eq!(ids(&store.pending("alice".into()).await?), [0, 4]);
    store.delete_delivered("alice".into(), vec![4]).await?;
    assert_eq!(ids(&store.pending("alice".into()).await?), [0]);
    store.delete_delivered("alice".into(), vec![0]).await?;
    assert_eq!(store.pending("alice".into()).await?, vec![]);
    assert_eq!(
        counts((b.list_accounts)().await?),
        [("alice".to_owned(), 0), ("dave".to_owned(), 1)]
    );
    // The high-water mark counts delivered and deleted messages.
    assert_eq!(store.max_message_id().await?, 4);
    Ok(())
}

/// Run with a mailbox cap of 3.
pub async fn mailbox_cap_is_exact_and_a_full_mailbox_stores_nothing(b: &Backend) -> TestResult {
    let store = &*b.store;
    store.create_account(account("alice", 1)).await?;
    store.create_account(account("dave", 1)).await?;
    for id in 1..=3 {
        store
            .enqueue("alice".into(), msg(id, "bob", "alice"))
            .await?;
    }
    let full = store.enqueue("alice".into(), msg(4, "bob", "alice")).await;
    assert!(
        matches!(full, Err(StoreError::MailboxFull(ref k)) if k == "alice"),
        "{full:?}"
    );
    assert_eq!(ids(&store.pending("alice".into()).await?), [1, 2, 3]);
    assert_eq!(store.max_message_id().await?, 3);
    // Another mailbox is not affected.
    store.enqueue("dave".into(), msg(5, "bob", "dave")).await?;
    // Delivering frees room.
    store.delete_delivered("alice".into(), vec![1]).await?;
    store
        .enqueue("alice".into(), msg(6, "bob", "alice"))
        .await?;
    assert_eq!(ids(&store.pending("alice".into()).await?), [2, 3, 6]);
    Ok(())
}

/// Run with a mailbox cap of 5.
pub async fn failures_inside_one_burst_do_not_poison_the_others(b: &Backend) -> TestResult {
    let store = &*b.store;
    store.create_account(account("alice", 1)).await?;
    store.create_account(account("dave", 1)).await?;
    // All issued before any is awaited, so they queue together and share transactions.
    let mut futures = Vec::new();
    for id in 1..=20u64 {
        let to = match id % 3 {
            0 => "alice",
            1 => "dave",
            _ => "nobody",
        };
        futures.push((id, to, store.enqueue(to.into(), msg(id, "bob", to))));
    }
    let (mut ok, mut full, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    for (id, to, f) in futures {
        match f.await {
            Ok(()) => ok.push(id),
            Err(StoreError::MailboxFull(k)) if k == to => full.push(id),
            Err(StoreError::NoSuchUser(k)) if k == to => unknown.push(id),
            Err(e) => return Err(e.into()),
        }
    }
    // alice: 3 6 9 12 15 | 18; dave: 1 4 7 10 13 | 16 19; nobody: the rest.
    assert_eq!(ok, [1, 3, 4, 6, 7, 9, 10, 12, 13, 15]);
    assert_eq!(full, [16, 18, 19]);
    assert_eq!(unknown, [2, 5, 8, 11, 14, 17, 20]);
    assert_eq!(
        ids(&store.pending("alice".into()).await?),
        [3, 6, 9, 12, 15]
    );
    assert_eq!(ids(&store.pending("dave".into()).await?), [1, 4, 7, 10, 13]);
    assert_eq!(store.max_message_id().await?, 15);
    Ok(())
}

/// Run with a mailbox cap of 250.
pub async fn concurrent_enqueues_all_land(b: &Backend) -> TestResult {
    let store = Arc::clone(&b.store);
    const USERS: u64 = 8;
    const PER_USER: u64 = 250;
    for u in 0..USERS {
        store.create_account(account(&format!("u{u}"), u)).await?;
    }
    let mut tasks = Vec::new();
    for u in 0..USERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let to = format!("u{u}");
            let mut futures = Vec::new();
            for i in 0..PER_USER {
                let id = 1 + i * USERS + u;
                futures.push(store.enqueue(to.clone(), msg(id, "bob", &to)));
                // Let the other tasks interleave their calls with ours.
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for f in futures {
                f.await?;
            }
            Ok::<(), StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    for u in 0..USERS {
        let got = ids(&store.pending(format!("u{u}")).await?);
        let want: Vec<u64> = (0..PER_USER).map(|i| 1 + i * USERS + u).collect();
        assert_eq!(got, want, "mailbox of u{u}");
    }
    assert_eq!(store.max_message_id().await?, USERS * PER_USER);
    Ok(())
}

/// Run with a mailbox cap of 1000.
pub async fn an_operation_sees_every_operation_called_before_it(b: &Backend) -> TestResult {
    let store = Arc::clone(&b.store);
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("user{t}");
            // Not awaited before the next call: the call order alone must decide.
            let created = store.create_account(account(&name, t));
            let mut last = Vec::new();
            for i in 0..100u64 {
                let id = 1 + t * 1000 + i;
                let enqueued = store.enqueue(name.clone(), msg(id, "bob", &name));
                let seen = store.pending(name.clone());
                let deleted = if i % 10 == 9 {
                    // Everything this user was sent so far.
                    Some(store.delete_delivered(name.clone(), (1 + t * 1000..=id).collect()))
                } else {
                    None
                };
                let after_delete = store.pending(name.clone());
                enqueued.await?;
                let seen = ids(&seen.await?);
                if seen.last() != Some(&id) {
                    return Err(format!("{name}: pending after enqueue {id} saw {seen:?}").into());
                }
                if let Some(d) = deleted {
                    d.await?;
                    let rest = after_delete.await?;
                    if !rest.is_empty() {
                        return Err(format!("{name}: left after delete: {rest:?}").into());
                    }
                } else {
                    last = ids(&after_delete.await?);
                }
            }
            created.await?;
            Ok::<Vec<u64>, Box<dyn std::error::Error + Send + Sync>>(last)
        }));
    }
    for (t, task) in tasks.into_iter().enumerate() {
        let last = task.await?.map_err(|e| e.to_string())?;
        // After the last delete (i = 99) the final non-delete read was at i = 98.
        let base = 1 + t as u64 * 1000;
        assert_eq!(last, (base + 90..=base + 98).collect::<Vec<_>>());
    }
    Ok(())
}

/// Run with a mailbox cap of 10.
pub async fn password_changes_and_deletions_record_revocations(b: &Backend) -> TestResult {
    let store = &*b.store;
    store.create_account(account("Alice", 1)).await?;
    store.create_account(account("bob", 2)).await?;
    assert_eq!(store.last_revocation_id().await?, 0);
    assert_eq!(store.revocations_after(0, 10).await?, vec![]);

    let before = simpletextim_server::now_ms();
    store
        .set_password_hash("alice".into(), "$argon2id$new".into())
        .await?;
    assert_eq!(store.delete_account("bob".into()).await?, 0);
    let after = simpletextim_server::now_ms();
    // Refused changes record nothing (the savepoint takes the row back with the change).
    let r = store.set_password_hash("nobody".into(), "x".into()).await;
    assert!(matches!(r, Err(StoreError::NoSuchUser(_))), "{r:?}");
    let r = store.delete_account("bob".into()).await;
    assert!(matches!(r, Err(StoreError::NoSuchUser(_))), "{r:?}");

    let all = store.revocations_after(0, 10).await?;
    assert_eq!(all.len(), 2, "{all:?}");
    for r in &all {
        assert!(
            (before..=after).contains(&r.at_ms),
            "{r:?} not in {before}..={after}"
        );
    }
    assert_eq!(
        all,
        vec![
            Revocation {
                id: 1,
                key: "alice".into(),
                at_ms: all[0].at_ms,
                kind: RevocationKind::PasswordChanged,
            },
            Revocation {
                id: 2,
                key: "bob".into(),
                at_ms: all[1].at_ms,
                kind: RevocationKind::AccountDeleted,
            },
        ]
    );
    assert!(all[0].at_ms <= all[1].at_ms);
    // Paged by id.
    assert_eq!(store.revocations_after(0, 1).await?, all[..1].to_vec());
    assert_eq!(store.revocations_after(1, 10).await?, all[1..].to_vec());
    assert_eq!(store.revocations_after(2, 10).await?, vec![]);
    assert_eq!(store.revocations_after(u64::MAX, 10).await?, vec![]);
    assert_eq!(store.last_revocation_id().await?, 2);
    Ok(())
}
