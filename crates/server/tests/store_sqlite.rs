//! The SQLite store against real temporary directories: accounts, the offline mailbox and
//! its cap, survival across reopening, migrations (a version-1 database upgraded), the
//! revocations recorded by password changes and deletions, open errors, and the ordering
//! contract under concurrent callers.

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use simpletextim_proto::{ChatMessage, Recipient, UserId};
use simpletextim_server::store::{
    Account, AccountInfo, Conversation, DB_FILE_NAME, HistoryQuery, OpenError, PageLimit,
    REVOCATION_KEEP, Revocation, RevocationKind, SCHEMA_VERSION, SqliteStore, Store, StoreError,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap_or_else(|e| panic!("bad test user id {s:?}: {e:?}"))
}

fn account(name: &str, created_ms: u64) -> Account {
    Account {
        user_id: uid(name),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${name}"),
        created_ms,
    }
}

fn msg(id: u64, from: &str, to: &str) -> ChatMessage {
    ChatMessage {
        r#ref: None,
        user_id: uid(from),
        message: format!("message {id} from {from}"),
        to: Recipient::User(uid(to)),
        id,
        ts: 1_764_168_000_000 + id,
    }
}

fn ids(messages: &[ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

fn open(dir: &Path, cap: usize) -> Result<SqliteStore, OpenError> {
    SqliteStore::open(dir, cap)
}

/// A temporary directory of mode 0700, as the store requires of an existing data directory
/// (`tempfile` leaves the mode to the umask).
fn tempdir() -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    chmod(dir.path(), 0o700)?;
    Ok(dir)
}

/// Sets the permission bits of `path` (nothing elsewhere than on Unix).
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

#[tokio::test]
async fn accounts_are_created_read_and_unique_case_insensitively() -> TestResult {
    let dir = tempdir()?;
    let store = open(dir.path(), 10)?;
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

#[tokio::test]
async fn enqueue_to_unknown_user_stores_nothing() -> TestResult {
    let dir = tempdir()?;
    let store = open(dir.path(), 10)?;
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

#[tokio::test]
async fn pending_is_oldest_first_and_per_recipient() -> TestResult {
    let dir = tempdir()?;
    let store = open(dir.path(), 10)?;
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

#[tokio::test]
async fn delete_delivered_deletes_exactly_the_ids_given() -> TestResult {
    let dir = tempdir()?;
    let store = open(dir.path(), 10)?;
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
        counts(store.list_accounts().await?),
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
        counts(store.list_accounts().await?),
        [("alice".to_owned(), 0), ("dave".to_owned(), 1)]
    );
    // The high-water mark counts delivered and deleted messages.
    assert_eq!(store.max_message_id().await?, 4);
    Ok(())
}

#[tokio::test]
async fn mailbox_cap_is_exact_and_a_full_mailbox_stores_nothing() -> TestResult {
    let dir = tempdir()?;
    let store = open(dir.path(), 3)?;
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

#[tokio::test]
async fn failures_inside_one_burst_do_not_poison_the_others() -> TestResult {
    let dir = tempdir()?;
    let store = open(dir.path(), 5)?;
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

#[tokio::test]
async fn everything_survives_reopening_the_directory() -> TestResult {
    let dir = tempdir()?;
    {
        let store = open(dir.path(), 10)?;
        store.create_account(account("Alice", 11)).await?;
        store.create_account(account("dave", 12)).await?;
        for id in [5, 6, 8] {
            store
                .enqueue("alice".into(), msg(id, "dave", "Alice"))
                .await?;
        }
        store
            .enqueue("dave".into(), msg(20, "Alice", "dave"))
            .await?;
        store.delete_delivered("dave".into(), vec![20]).await?;
        // Queued and not awaited: closing must still finish it.
        let last = store.enqueue("alice".into(), msg(21, "dave", "Alice"));
        drop(store);
        last.await?;
    }
    let store = open(dir.path(), 10)?;
    assert_eq!(
        store.account("alice".into()).await?,
        Some(account("Alice", 11))
    );
    assert_eq!(
        store.account("dave".into()).await?,
        Some(account("dave", 12))
    );
    assert_eq!(
        store.pending("alice".into()).await?,
        vec![
            msg(5, "dave", "Alice"),
            msg(6, "dave", "Alice"),
            msg(8, "dave", "Alice"),
            msg(21, "dave", "Alice"),
        ]
    );
    assert_eq!(store.pending("dave".into()).await?, vec![]);
    assert_eq!(store.max_message_id().await?, 21);
    Ok(())
}

#[tokio::test]
async fn administration_lists_changes_deletes_and_backs_up() -> TestResult {
    let dir = tempdir()?;
    let store = open(dir.path(), 10)?;
    store.create_account(account("bob", 2)).await?;
    store.create_account(account("Alice", 1)).await?;
    store
        .enqueue("alice".into(), msg(1, "bob", "Alice"))
        .await?;
    store
        .enqueue("alice".into(), msg(2, "bob", "Alice"))
        .await?;
    assert_eq!(
        store.list_accounts().await?,
        vec![
            AccountInfo {
                user_id: uid("Alice"),
                created_ms: 1,
                pending: 2
            },
            AccountInfo {
                user_id: uid("bob"),
                created_ms: 2,
                pending: 0
            },
        ]
    );

    store
        .set_password_hash("alice".into(), "$argon2id$new".into())
        .await?;
    let alice = store.account("alice".into()).await?;
    assert_eq!(
        alice.map(|a| a.password_hash),
        Some("$argon2id$new".to_owned())
    );
    let r = store.set_password_hash("nobody".into(), "x".into()).await;
    assert!(matches!(r, Err(StoreError::NoSuchUser(_))), "{r:?}");

    // Backup taken now: both accounts and alice's two messages.
    let backup_dir = tempdir()?;
    let backup = backup_dir.path().join(DB_FILE_NAME);
    store.backup_to(backup.clone()).await?;
    // VACUUM INTO refuses to overwrite.
    let again = store.backup_to(backup.clone()).await;
    assert!(matches!(again, Err(StoreError::Backend(_))), "{again:?}");

    assert_eq!(store.delete_account("ALICE".to_lowercase()).await?, 2);
    assert_eq!(store.account("alice".into()).await?, None);
    assert_eq!(store.pending("alice".into()).await?, vec![]);
    let r = store.delete_account("alice".into()).await;
    assert!(matches!(r, Err(StoreError::NoSuchUser(_))), "{r:?}");
    assert_eq!(store.max_message_id().await?, 2);
    // A new account of that name does not inherit the old mailbox.
    store.create_account(account("alice", 3)).await?;
    assert_eq!(store.pending("alice".into()).await?, vec![]);

    let restored = open(backup_dir.path(), 10)?;
    assert_eq!(
        restored
            .list_accounts()
            .await?
            .iter()
            .map(|a| (a.user_id.to_string(), a.pending))
            .collect::<Vec<_>>(),
        [("Alice".to_owned(), 2), ("bob".to_owned(), 0)]
    );
    assert_eq!(ids(&restored.pending("alice".into()).await?), [1, 2]);
    assert_eq!(restored.max_message_id().await?, 2);
    Ok(())
}

#[test]
fn an_empty_directory_is_created_and_migrated() -> TestResult {
    let tmp = tempdir()?;
    let dir = tmp.path().join("not").join("there").join("yet");
    let store = open(&dir, 10)?;
    assert_eq!(store.path(), dir.join(DB_FILE_NAME));
    drop(store);
    let conn = Connection::open(dir.join(DB_FILE_NAME))?;
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    assert_eq!(version, SCHEMA_VERSION);
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    // `sqlite_sequence` is SQLite's own, for the AUTOINCREMENT of `revocations`.
    assert_eq!(
        tables,
        [
            "accounts",
            "history",
            "mailbox",
            "meta",
            "revocations",
            "sqlite_sequence"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn an_empty_database_file_is_version_zero_and_migrates() -> TestResult {
    let dir = tempdir()?;
    // What an interrupted first start can leave: the file exists, no schema yet.
    std::fs::write(dir.path().join(DB_FILE_NAME), b"")?;
    chmod(&dir.path().join(DB_FILE_NAME), 0o600)?;
    let store = open(dir.path(), 10)?;
    store.create_account(account("alice", 1)).await?;
    assert_eq!(store.max_message_id().await?, 0);
    Ok(())
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_error() -> TestResult {
    let dir = tempdir()?;
    {
        let conn = Connection::open(dir.path().join(DB_FILE_NAME))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
    }
    chmod(&dir.path().join(DB_FILE_NAME), 0o600)?;
    let err = open(dir.path(), 10).map(drop).err();
    assert!(
        matches!(err, Some(OpenError::TooNew { found, supported, .. })
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("newer"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    Ok(())
}

#[test]
fn a_data_dir_that_cannot_be_created_is_a_clear_error() -> TestResult {
    let tmp = tempdir()?;
    let file = tmp.path().join("file.txt");
    std::fs::write(&file, b"not a directory")?;
    // Even root cannot create a directory below a regular file.
    let dir = file.join("sub");
    let err = open(&dir, 10).map(drop).err();
    assert!(matches!(err, Some(OpenError::CreateDir { .. })), "{err:?}");
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.starts_with("cannot create data directory "), "{text}");
    assert!(text.contains("file.txt/sub"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    Ok(())
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_error() -> TestResult {
    let dir = tempdir()?;
    std::fs::write(
        dir.path().join(DB_FILE_NAME),
        "this is no SQLite file, but long enough to have a header ...................",
    )?;
    chmod(&dir.path().join(DB_FILE_NAME), 0o600)?;
    let err = open(dir.path(), 10).map(drop).err();
    assert!(matches!(err, Some(OpenError::Database { .. })), "{err:?}");
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.starts_with("cannot open database "), "{text}");
    assert!(text.contains(DB_FILE_NAME), "{text}");
    Ok(())
}

#[test]
fn open_existing_refuses_a_missing_database_and_creates_nothing() -> TestResult {
    let tmp = tempdir()?;
    let missing = tmp.path().join("missing");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty)?;
    chmod(&empty, 0o700)?;
    for dir in [&missing, &empty] {
        let err = SqliteStore::open_existing(dir, 10).map(drop).err();
        assert!(matches!(err, Some(OpenError::NoDatabase { .. })), "{err:?}");
        assert_eq!(
            err.map(|e| e.to_string()).unwrap_or_default(),
            format!(
                "no database in {}; the server creates {DB_FILE_NAME} on its first start",
                dir.display()
            )
        );
    }
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(&empty)?.count(), 0);
    // Once the server made it, it opens.
    drop(open(&empty, 10)?);
    drop(SqliteStore::open_existing(&empty, 10)?);
    Ok(())
}

#[cfg(unix)]
#[test]
fn files_are_created_private_and_a_database_open_to_others_is_refused() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| -> std::io::Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    let tmp = tempdir()?;
    let dir = tmp.path().join("data");
    let db = dir.join(DB_FILE_NAME);
    drop(open(&dir, 10)?);
    assert_eq!((mode(&dir)?, mode(&db)?), (0o700, 0o600));
    for loose in [0o640, 0o604, 0o620] {
        chmod(&db, loose)?;
        for err in [
            open(&dir, 10).map(drop).err(),
            SqliteStore::open_existing(&dir, 10).map(drop).err(),
        ] {
            assert!(
                matches!(err, Some(OpenError::OpenToOthers { mode, is_dir: false, .. }) if mode == loose),
                "{err:?}"
            );
        }
    }
    chmod(&db, 0o600)?;
    // A side file left loose (by a crash of an older server) is tightened.
    let wal = dir.join(format!("{DB_FILE_NAME}-wal"));
    std::fs::write(&wal, b"")?;
    chmod(&wal, 0o644)?;
    let store = open(&dir, 10)?;
    assert_eq!(mode(&wal)?, 0o600);
    let backup = tmp.path().join("backup.sqlite3");
    futures::executor::block_on(store.backup_to(backup.clone()))?;
    assert_eq!(mode(&backup)?, 0o600);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_all_land() -> TestResult {
    const USERS: u64 = 8;
    const PER_USER: u64 = 250;
    let dir = tempdir()?;
    let store = Arc::new(open(dir.path(), PER_USER as usize)?);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operation_sees_every_operation_called_before_it() -> TestResult {
    let dir = tempdir()?;
    let store = Arc::new(open(dir.path(), 1000)?);
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

/// Set in the child process of [`an_acknowledged_write_survives_sigkill`].
const CHILD_DIR_VAR: &str = "SIMPLETEXTIM_STORE_SIGKILL_CHILD_DIR";
const COMMITTED: &str = "STORE-CHILD-COMMITTED";

/// The child half of [`an_acknowledged_write_survives_sigkill`]: a no-op in a normal run.
/// With the variable set, it stores an account and a message, says so on stdout, and
/// then blocks on stdin until the parent kills it.
#[test]
fn sigkill_child_writer() -> TestResult {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return Ok(());
    };
    let store = open(Path::new(&dir), 10)?;
    futures::executor::block_on(async {
        store.create_account(account("alice", 1)).await?;
        store.enqueue("alice".into(), msg(77, "bob", "alice")).await
    })?;
    println!("{COMMITTED}");
    std::io::Write::flush(&mut std::io::stdout())?;
    // Never returns normally: no destructor, no clean close of the database.
    let mut sink = String::new();
    std::io::stdin().read_line(&mut sink)?;
    std::process::abort();
}

#[test]
fn an_acknowledged_write_survives_sigkill() -> TestResult {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let dir = tempdir()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "sigkill_child_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_VAR, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut committed = false;
    for line in std::io::BufReader::new(stdout).lines() {
        // libtest may print "test NAME ... " before it on the same line.
        if line?.contains(COMMITTED) {
            committed = true;
            break;
        }
    }
    // SIGKILL on Unix, with the store thread still running and the database open.
    child.kill()?;
    child.wait()?;
    assert!(committed, "the child never reported its commit");

    let store = open(dir.path(), 10)?;
    futures::executor::block_on(async {
        assert_eq!(
            store.account("alice".into()).await?,
            Some(account("alice", 1))
        );
        assert_eq!(
            store.pending("alice".into()).await?,
            vec![msg(77, "bob", "alice")]
        );
        assert_eq!(store.max_message_id().await?, 77);
        Ok(())
    })
}

#[tokio::test]
async fn password_changes_and_deletions_record_revocations() -> TestResult {
    let dir = tempdir()?;
    let store = open(dir.path(), 10)?;
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

    // Durable like everything else.
    drop(store);
    let store = open(dir.path(), 10)?;
    assert_eq!(store.revocations_after(0, 10).await?, all);
    Ok(())
}

#[tokio::test]
async fn old_revocations_are_pruned_and_their_ids_never_reused() -> TestResult {
    let dir = tempdir()?;
    let store = open(dir.path(), 10)?;
    store.create_account(account("alice", 1)).await?;
    store.set_password_hash("alice".into(), "a".into()).await?;
    store.set_password_hash("alice".into(), "b".into()).await?;
    drop(store);
    // Both recorded just over REVOCATION_KEEP ago.
    let keep = i64::try_from(REVOCATION_KEEP.as_millis())?;
    {
        let conn = Connection::open(dir.path().join(DB_FILE_NAME))?;
        conn.execute("UPDATE revocations SET at_ms = at_ms - ?1 - 1000", [keep])?;
    }
    let store = open(dir.path(), 10)?;
    assert_eq!(store.revocations_after(0, 10).await?.len(), 2);
    // The next revocation prunes them, and its id follows theirs although the table is
    // left with no row below it.
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

/// The schema of version 1, exactly as the version-1 server wrote it (migration 1).
const SCHEMA_V1: &str = "CREATE TABLE accounts (
         key           TEXT PRIMARY KEY NOT NULL,
         user_id       TEXT NOT NULL,
         password_hash TEXT NOT NULL,
         created_ms    INTEGER NOT NULL,
         mailbox_len   INTEGER NOT NULL DEFAULT 0
     ) WITHOUT ROWID;
     CREATE TABLE mailbox (
         id        INTEGER PRIMARY KEY,
         recipient TEXT NOT NULL,
         sender    TEXT NOT NULL,
         message   TEXT NOT NULL,
         to_user   TEXT NOT NULL,
         ts        INTEGER NOT NULL
     );
     CREATE INDEX mailbox_by_recipient ON mailbox (recipient, id);
     -- Keeps accounts.mailbox_len equal to the recipient's row count whoever writes (even
     -- the sqlite3 shell), so the cap check is one row lookup, not a count of the mailbox.
     CREATE TRIGGER mailbox_insert AFTER INSERT ON mailbox BEGIN
         UPDATE accounts SET mailbox_len = mailbox_len + 1 WHERE key = NEW.recipient;
     END;
     CREATE TRIGGER mailbox_delete AFTER DELETE ON mailbox BEGIN
         UPDATE accounts SET mailbox_len = mailbox_len - 1 WHERE key = OLD.recipient;
     END;
     CREATE TABLE meta (
         name  TEXT PRIMARY KEY NOT NULL,
         value INTEGER NOT NULL
     ) WITHOUT ROWID;
     INSERT INTO meta (name, value) VALUES ('max_message_id', 0);";

/// The definitions of every table, index and trigger of the database `db`, by name.
fn schema(db: &Path) -> Result<Vec<(String, String)>, rusqlite::Error> {
    let conn = Connection::open(db)?;
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY type, name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

#[tokio::test]
async fn a_version_1_database_is_migrated_to_the_current_version_and_keeps_its_data() -> TestResult
{
    let dir = tempdir()?;
    let db = dir.path().join(DB_FILE_NAME);
    // A version-1 database with an account, a second one holding a message, and the
    // message-id high-water mark, as a version-1 server leaves them.
    std::fs::write(&db, b"")?;
    chmod(&db, 0o600)?;
    {
        let conn = Connection::open(&db)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(SCHEMA_V1)?;
        conn.pragma_update(None, "user_version", 1)?;
        let bob = account("bob", 2);
        conn.execute(
            "INSERT INTO accounts (key, user_id, password_hash, created_ms) VALUES \
             ('alice', 'Alice', ?1, 1), ('bob', 'bob', ?2, 2)",
            [account("Alice", 1).password_hash, bob.password_hash],
        )?;
        conn.execute(
            "INSERT INTO mailbox (id, recipient, sender, message, to_user, ts) \
             VALUES (41, 'alice', 'bob', 'message 41 from bob', 'alice', ?1)",
            [msg(41, "bob", "alice").ts],
        )?;
        conn.execute(
            "UPDATE meta SET value = 41 WHERE name = 'max_message_id'",
            [],
        )?;
    }

    let store = open(dir.path(), 10)?;
    assert_eq!(
        store.account("alice".into()).await?,
        Some(account("Alice", 1))
    );
    assert_eq!(store.account("bob".into()).await?, Some(account("bob", 2)));
    assert_eq!(
        store.pending("alice".into()).await?,
        vec![msg(41, "bob", "alice")]
    );
    assert_eq!(store.max_message_id().await?, 41);
    // Version 3 kept the pending message as the first row of its conversation's history.
    let page = store
        .history(
            Conversation::between(&uid("bob"), &uid("alice")),
            HistoryQuery::Latest,
            PageLimit::DEFAULT,
        )
        .await?;
    assert_eq!(page.messages, vec![msg(41, "bob", "alice")]);
    assert!(!page.more);
    let listed: Vec<u64> = store
        .list_accounts()
        .await?
        .iter()
        .map(|a| a.pending)
        .collect();
    assert_eq!(listed, [1, 0], "mailbox_len kept");
    // Version 2's table works.
    assert_eq!(store.last_revocation_id().await?, 0);
    store.set_password_hash("bob".into(), "x".into()).await?;
    assert_eq!(store.last_revocation_id().await?, 1);
    drop(store);

    let conn = Connection::open(&db)?;
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    assert_eq!((version, SCHEMA_VERSION), (4, 4));
    drop(conn);
    // The same schema as a database created by this version.
    let fresh = tempdir()?;
    drop(open(fresh.path(), 10)?);
    assert_eq!(schema(&db)?, schema(&fresh.path().join(DB_FILE_NAME))?);
    Ok(())
}
