//! The SQLite store against real temporary directories: the checks every durable store
//! passes (`common/store_suite.rs`: accounts, the offline mailbox and its cap, revocations,
//! the ordering contract under concurrent callers), then what only SQLite has: survival
//! across reopening, migrations (a version-1 database upgraded), open errors, file modes.

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use simpletextim_server::store::{
    AccountInfo, Conversation, DB_FILE_NAME, HistoryQuery, OpenError, PageLimit, REVOCATION_KEEP,
    RevocationKind, SCHEMA_VERSION, SqliteStore, Store, StoreError,
};

#[macro_use]
#[path = "common/store_suite.rs"]
mod store_suite;

use store_suite::{Backend, TestResult, account, ids, msg, uid};

/// A new SQLite store in a temporary directory, for [`store_suite!`].
async fn sqlite(cap: usize) -> Result<Backend, Box<dyn std::error::Error>> {
    let dir = tempdir()?;
    let store = Arc::new(open(dir.path(), cap)?);
    let lister = Arc::clone(&store);
    Ok(Backend {
        store,
        list_accounts: Box::new(move || lister.list_accounts()),
        keep: Box::new(dir),
    })
}

store_suite!(sqlite);

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
async fn revocations_survive_reopening() -> TestResult {
    let dir = tempdir()?;
    let store = open(dir.path(), 10)?;
    store.create_account(account("alice", 1)).await?;
    store.set_password_hash("alice".into(), "x".into()).await?;
    let all = store.revocations_after(0, 10).await?;
    assert_eq!(all.len(), 1, "{all:?}");
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
const SCHEMA_V1: &str = include_str!("common/schema_v1.sql");

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
