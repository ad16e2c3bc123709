//! The PostgreSQL store against a private PostgreSQL server (`common/pg.rs`, a database per
//! test): the checks every durable store passes (`common/store_suite.rs`), then what is
//! PostgreSQL's own: migrations (twice, concurrently, refused versions), the ordering
//! contract across tasks, the id high-water mark shared by two stores on one database,
//! backpressure of a full queue, revocation pruning, and closing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use simpletextim_proto::ChatMessage;
use simpletextim_server::store::{
    Migrated, PG_SCHEMA_VERSION, PgError, PgOptions, PostgresStore, REVOCATION_KEEP,
    RevocationKind, Store, StoreError,
};

#[macro_use]
#[path = "common/store_suite.rs"]
mod store_suite;

#[path = "common/pg.rs"]
mod pg;

use store_suite::{Backend, TestResult, account, ids, msg};

/// A new PostgreSQL store on a new, migrated database, for [`store_suite!`].
async fn postgres(cap: usize) -> Result<Backend, Box<dyn std::error::Error>> {
    let db = pg::migrated_database().await;
    let store = Arc::new(PostgresStore::connect(&db.database_url(), PgOptions::new(cap)).await?);
    let lister = Arc::clone(&store);
    Ok(Backend {
        store,
        list_accounts: Box::new(move || lister.list_accounts()),
        keep: Box::new(db),
    })
}

store_suite!(postgres);

/// A raw connection to `db`, for looking behind the store.
async fn raw(db: &pg::TestDb) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    client
}

async fn versions(db: &pg::TestDb) -> Vec<i32> {
    raw(db)
        .await
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .await
        .expect("schema_version")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn all_versions() -> Vec<i32> {
    (1..=i32::try_from(PG_SCHEMA_VERSION).unwrap()).collect()
}

#[tokio::test]
async fn migrating_twice_changes_nothing_the_second_time() -> TestResult {
    let db = pg::database().await;
    let options = PgOptions::new(10);
    let first = PostgresStore::migrate(&db.database_url(), &options).await?;
    assert_eq!(
        first,
        Migrated {
            from: 0,
            to: PG_SCHEMA_VERSION
        }
    );
    let second = PostgresStore::migrate(&db.database_url(), &options).await?;
    assert_eq!(
        second,
        Migrated {
            from: PG_SCHEMA_VERSION,
            to: PG_SCHEMA_VERSION
        }
    );
    assert_eq!(versions(&db).await, all_versions());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_run_one_after_the_other() -> TestResult {
    let db = pg::database().await;
    let url = db.database_url();
    let options = PgOptions::new(10);
    let (a, b) = tokio::join!(
        PostgresStore::migrate(&url, &options),
        PostgresStore::migrate(&url, &options)
    );
    let mut froms = vec![a?.from, b?.from];
    froms.sort_unstable();
    // One created the schema; the other waited for the lock and found it done.
    assert_eq!(froms, [0, PG_SCHEMA_VERSION]);
    assert_eq!(versions(&db).await, all_versions());
    Ok(())
}

#[tokio::test]
async fn a_server_refuses_an_unmigrated_or_newer_schema() -> TestResult {
    let db = pg::database().await;
    let url = db.database_url();
    let refused = PostgresStore::connect(&url, PgOptions::new(10)).await;
    match refused {
        Err(PgError::NotMigrated { found: 0, ref url }) => {
            assert!(!url.contains(&db.password), "{url}");
        }
        other => panic!("expected NotMigrated, got {other:?}"),
    }
    let text = PostgresStore::connect(&url, PgOptions::new(10))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        text.contains("simpletextim-server migrate --database URL"),
        "{text}"
    );
    assert!(!text.contains(&db.password), "{text}");

    PostgresStore::migrate(&url, &PgOptions::new(10)).await?;
    raw(&db)
        .await
        .execute("INSERT INTO schema_version (version) VALUES (999)", &[])
        .await?;
    let newer = PostgresStore::connect(&url, PgOptions::new(10)).await;
    assert!(
        matches!(newer, Err(PgError::TooNew { found: 999, .. })),
        "{newer:?}"
    );
    let newer = PostgresStore::migrate(&url, &PgOptions::new(10)).await;
    assert!(
        matches!(newer, Err(PgError::TooNew { found: 999, .. })),
        "{newer:?}"
    );
    Ok(())
}

/// A version no server writes (a hand edit) is named, not taken for "never migrated".
#[tokio::test]
async fn a_negative_schema_version_is_a_clear_error() -> TestResult {
    let db = pg::migrated_database().await;
    let url = db.database_url();
    raw(&db)
        .await
        .batch_execute(
            "DELETE FROM schema_version; INSERT INTO schema_version (version) VALUES (-1)",
        )
        .await?;
    let want = format!("database {url}: schema_version holds version -1, which no server writes");
    let connect = PostgresStore::connect(&url, PgOptions::new(10)).await;
    assert_eq!(connect.err().map(|e| e.to_string()), Some(want.clone()));
    let migrate = PostgresStore::migrate(&url, &PgOptions::new(10)).await;
    assert_eq!(migrate.err().map(|e| e.to_string()), Some(want));
    assert_eq!(versions(&db).await, [-1]);
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_without_the_password() -> TestResult {
    let db = pg::migrated_database().await;
    let wrong = db.url.replace(&db.password, "not-the-password-42");
    let e = PostgresStore::connect(&wrong.parse()?, PgOptions::new(10))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-password-42"), "{e}");
    Ok(())
}

/// The hub's pattern: one task calls `enqueue` (under its lock, not awaiting it), then a
/// login in another task, told afterwards, calls `pending` and must see the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_called_after_enqueue_in_another_task_sees_it() -> TestResult {
    let db = pg::migrated_database().await;
    let store: Arc<dyn Store> =
        Arc::new(PostgresStore::connect(&db.database_url(), PgOptions::new(1000)).await?);
    store.create_account(account("alice", 1)).await?;
    for id in 1..=100u64 {
        let (told, heard) = tokio::sync::oneshot::channel();
        let reader = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                heard.await.expect("told");
                store.pending("alice".into()).await
            })
        };
        let enqueued = store.enqueue("alice".into(), msg(id, "bob", "alice"));
        told.send(()).expect("reader waits");
        let seen = ids(&reader.await??);
        assert_eq!(seen.last(), Some(&id), "pending after enqueue {id}");
        assert_eq!(seen.len() as u64, id);
        enqueued.await?;
    }
    Ok(())
}

#[tokio::test]
async fn two_stores_on_one_database_share_the_id_high_water_mark() -> TestResult {
    let db = pg::migrated_database().await;
    let a = PostgresStore::connect(&db.database_url(), PgOptions::new(10)).await?;
    let b = PostgresStore::connect(&db.database_url(), PgOptions::new(10)).await?;
    a.create_account(account("alice", 1)).await?;
    a.append_history(vec![msg(100, "bob", "alice")]).await?;
    assert_eq!(b.max_message_id().await?, 100);
    // A lower id stored later through the other store does not lower it.
    b.enqueue("alice".into(), msg(50, "bob", "alice")).await?;
    assert_eq!(a.max_message_id().await?, 100);
    b.append_history(vec![msg(200, "bob", "alice")]).await?;
    assert_eq!(a.max_message_id().await?, 200);
    // Deleting what carried the ids keeps the mark.
    a.delete_delivered("alice".into(), vec![50]).await?;
    a.delete_account("alice".into()).await?;
    assert_eq!(b.max_message_id().await?, 200);

    // Interleaved raises from both, in no particular order: the mark is the highest.
    let mut calls = Vec::new();
    for i in 0..50u64 {
        let (store, id) = if i % 2 == 0 {
            (&a, 1000 + i * 7 % 50)
        } else {
            (&b, 1000 + i * 13 % 50)
        };
        calls.push(store.append_history(vec![msg(id, "bob", "carol")]));
    }
    for c in futures::future::join_all(calls).await {
        c?;
    }
    let want = (0..50u64)
        .map(|i| 1000 + if i % 2 == 0 { i * 7 % 50 } else { i * 13 % 50 })
        .max()
        .unwrap();
    assert_eq!(a.max_message_id().await?, want);
    assert_eq!(b.max_message_id().await?, want);
    Ok(())
}

/// A queue of one request and one connection: nearly every call finds the channel full
/// and waits with a ticket. Every operation still happens, in call order; a waiting
/// future dropped before its turn gives the turn up.
#[tokio::test]
async fn a_full_queue_delays_calls_in_order_and_loses_none() -> TestResult {
    let db = pg::migrated_database().await;
    let options = PgOptions {
        queue: 1,
        pool_size: 1,
        ..PgOptions::new(1000)
    };
    let store = PostgresStore::connect(&db.database_url(), options).await?;
    store.create_account(account("alice", 1)).await?;
    let mut enqueues = Vec::new();
    let mut reads = Vec::new();
    let mut dropped = Vec::new();
    for id in 1..=60u64 {
        enqueues.push(store.enqueue("alice".into(), msg(id, "bob", "alice")));
        let read = store.pending("alice".into());
        if id % 10 == 0 {
            dropped.push(read);
        } else {
            reads.push((id, read));
        }
    }
    // Given up before their turn: the ones behind them must not wait for them.
    drop(dropped);
    for (id, read) in reads {
        let seen = ids(&read.await?);
        assert_eq!(seen, (1..=id).collect::<Vec<_>>(), "pending after {id}");
    }
    for e in enqueues {
        e.await?;
    }
    assert_eq!(ids(&store.pending("alice".into()).await?).len(), 60);
    Ok(())
}

#[tokio::test]
async fn old_revocations_are_pruned_and_their_ids_never_reused() -> TestResult {
    let db = pg::migrated_database().await;
    let store = PostgresStore::connect(&db.database_url(), PgOptions::new(10)).await?;
    store.create_account(account("alice", 1)).await?;
    store.set_password_hash("alice".into(), "a".into()).await?;
    store.set_password_hash("alice".into(), "b".into()).await?;
    let keep = i64::try_from(REVOCATION_KEEP.as_millis())?;
    raw(&db)
        .await
        .execute("UPDATE revocations SET at_ms = at_ms - $1 - 1000", &[&keep])
        .await?;
    assert_eq!(store.revocations_after(0, 10).await?.len(), 2);
    assert_eq!(store.delete_account("alice".into()).await?, 0);
    let left = store.revocations_after(0, 10).await?;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        (left[0].id, left[0].key.as_str(), left[0].kind),
        (3, "alice", RevocationKind::AccountDeleted)
    );
    assert_eq!(store.last_revocation_id().await?, 3);
    Ok(())
}

#[tokio::test]
async fn everything_survives_a_new_store_and_close_finishes_what_was_queued() -> TestResult {
    let db = pg::migrated_database().await;
    {
        let store = PostgresStore::connect(&db.database_url(), PgOptions::new(10)).await?;
        store.create_account(account("Alice", 11)).await?;
        // Queued and not awaited: closing must still finish it.
        let last = store.enqueue("alice".into(), msg(21, "dave", "Alice"));
        store.close().await;
        last.await?;
        let after = store.account("alice".into()).await;
        assert!(
            matches!(after, Err(StoreError::Backend(ref m)) if m.contains("closed")),
            "{after:?}"
        );
        store.close().await;
    }
    let store = PostgresStore::connect(&db.database_url(), PgOptions::new(10)).await?;
    assert_eq!(
        store.account("alice".into()).await?,
        Some(account("Alice", 11))
    );
    let pending: Vec<ChatMessage> = store.pending("alice".into()).await?;
    assert_eq!(pending, vec![msg(21, "dave", "Alice")]);
    assert_eq!(store.max_message_id().await?, 21);
    Ok(())
}

/// A write that fails inside a shared transaction is rolled back to its savepoint alone.
#[tokio::test]
async fn a_failed_write_in_a_batch_is_rolled_back_alone() -> TestResult {
    let db = pg::migrated_database().await;
    let store = PostgresStore::connect(&db.database_url(), PgOptions::new(10)).await?;
    store.create_account(account("alice", 1)).await?;
    // Queued together, so most likely one transaction; the outcome must not depend on it.
    let ok1 = store.enqueue("alice".into(), msg(1, "bob", "alice"));
    // Same id: passes the checks, then the INSERT hits the primary key.
    let dup = store.enqueue("alice".into(), msg(1, "bob", "alice"));
    let too_big = ChatMessage {
        id: u64::MAX,
        ..msg(3, "bob", "alice")
    };
    let big = store.enqueue("alice".into(), too_big);
    let ok2 = store.enqueue("alice".into(), msg(2, "bob", "alice"));
    ok1.await?;
    assert!(matches!(dup.await, Err(StoreError::Backend(_))));
    assert!(matches!(big.await, Err(StoreError::Backend(_))));
    ok2.await?;
    assert_eq!(ids(&store.pending("alice".into()).await?), [1, 2]);
    assert_eq!(store.max_message_id().await?, 2);
    // The cap count was rolled back with the failed ones: two rows, two counted.
    let infos = store.list_accounts().await?;
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].pending, 2);
    Ok(())
}

/// Set in the child process of [`the_private_server_stops_when_the_test_process_dies`].
const WATCHDOG_CHILD_VAR: &str = "SIMPLETEXTIM_PG_WATCHDOG_CHILD";

/// The child half of [`the_private_server_stops_when_the_test_process_dies`]: a no-op in a
/// normal run. With the variable set, it starts the private server, says where it is on
/// stdout, then blocks on stdin until the parent kills it.
#[test]
fn watchdog_child() {
    if std::env::var_os(WATCHDOG_CHILD_VAR).is_none() {
        return;
    }
    let server = pg::server();
    println!("PG-SERVER {} {}", server.pid, server.dir.display());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Whether process `pid` is running (a zombie counts as gone).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// A test binary killed with SIGKILL (no destructor runs) leaves no PostgreSQL behind: the
/// watchdog stops the server and deletes its directory.
#[test]
fn the_private_server_stops_when_the_test_process_dies() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "watchdog_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WATCHDOG_CHILD_VAR, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child test");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print the test's name on the same line first.
            if let Some(rest) = line.split("PG-SERVER ").nth(1) {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let Ok(found) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        panic!("the child did not start its server");
    };
    let (pid, dir) = found.split_once(' ').expect("pid and directory");
    let pid: u32 = pid.parse().expect("pid");
    let dir = std::path::PathBuf::from(dir);
    assert!(running(pid), "postgres {pid} is not running");
    assert!(dir.exists());

    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(pid) || dir.exists() {
        assert!(
            Instant::now() < deadline,
            "postgres {pid} or {} still there 30 s after the test process died",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() -> TestResult {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("postgres://postgres:secret-pw@127.0.0.1:{port}/nothing");
    let e = PostgresStore::connect(&url.parse()?, PgOptions::new(10))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with(&format!(
            "database postgres://postgres@127.0.0.1:{port}/nothing: error connecting to server"
        )),
        "{e}"
    );
    assert!(!e.contains("secret-pw"), "{e}");
    Ok(())
}

/// The `at_ms` rule under MVCC: a lookup made while another process's password change is
/// in progress waits for it and reads the new hash (a plain read would see the old one at
/// once, after the change's `at_ms`).
#[tokio::test]
async fn a_lookup_during_a_password_change_waits_and_sees_the_new_hash() -> TestResult {
    let db = pg::migrated_database().await;
    let store = PostgresStore::connect(&db.database_url(), PgOptions::new(10)).await?;
    store.create_account(account("alice", 1)).await?;
    let mut admin = raw(&db).await;
    let change = admin.transaction().await?;
    let changed = change
        .execute(
            "UPDATE accounts SET password_hash = 'new-hash' WHERE key = 'alice'",
            &[],
        )
        .await?;
    assert_eq!(changed, 1);
    // Issued while the change holds the row; let it reach the database and wait there.
    let lookup = tokio::spawn(store.account("alice".into()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !lookup.is_finished(),
        "the lookup did not wait for the change"
    );
    change.commit().await?;
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), lookup)
        .await
        .expect("lookup still blocked after the commit")??
        .expect("alice exists");
    assert_eq!(seen.password_hash, "new-hash");
    Ok(())
}
