//! The durable [`Store`]: accounts and offline mailboxes in one SQLite file.
//!
//! **Layout.** The data directory holds [`DB_FILE_NAME`] (`simpletextim.sqlite3`) plus, while
//! the server runs, SQLite's `-wal` and `-shm` side files. `sqlite3 simpletextim.sqlite3`
//! opens it. Tables (schema version [`SCHEMA_VERSION`], kept in `PRAGMA user_version`):
//! - `accounts(key PRIMARY KEY, user_id, password_hash, created_ms, mailbox_len)`: `key` is
//!   the case-folded id, `user_id` the spelling used at registration, `password_hash` an
//!   Argon2id PHC string, `mailbox_len` the number of its mailbox rows (kept by triggers);
//! - `mailbox(id PRIMARY KEY, recipient, sender, message, to_user, ts)`: `id` is the message id,
//!   `recipient` an account key; indexed by `(recipient, id)` so a login reads oldest first;
//! - `meta(name PRIMARY KEY, value)`: `max_message_id`, the highest message id ever stored,
//!   so ids keep increasing after the messages carrying them were delivered and deleted;
//! - `revocations(id PRIMARY KEY AUTOINCREMENT, key, at_ms, kind)` (version 2): one row per
//!   password change (`kind` `'password'`) or account deletion (`'deleted'`), written in the
//!   same transaction as the change, read by a running server to end the account's
//!   sessions ([`Revocation`]); `AUTOINCREMENT` so an id is never reused after pruning.
//!   Rows older than [`REVOCATION_KEEP`] are deleted by the next write of a row.
//! - `history(id PRIMARY KEY, conversation, sender, recipient, message, ts)` (version 3):
//!   every kept public and private message; `conversation` is [`Conversation::key`] (`*`,
//!   or `alice/bob`), `sender` and `recipient` the spellings as sent (`recipient` NULL for a
//!   public message). Indexed by `(conversation, id)` for the pages of
//!   [`Store::history`] and for deleting an account's conversations, and by `ts` for
//!   pruning by age. `meta.history_len` is its row count, for pruning by count, kept by
//!   every statement that inserts or deletes rows (version 4; triggers before). A private message to an
//!   offline user gets its row in the transaction of its mailbox row; version 3 copied the
//!   mailbox rows pending at the upgrade.
//!
//! **Permissions** (Unix). The directory is created 0700 and the database file 0600 (set
//! explicitly, whatever the umask) before SQLite opens it; SQLite gives the `-wal` and `-shm`
//! files the database file's mode, and a backup is created 0600 too. An existing directory or
//! database with a group or world permission bit is refused, with the `chmod` that fixes it
//! ([`OpenError::OpenToOthers`]). [`SqliteStore::open_existing`] (the administration
//! commands) creates nothing.
//!
//! **Threading.** One dedicated thread owns the [`Connection`]. Each [`Store`] method puts a
//! request into an unbounded FIFO channel *before* returning its future, and the future only
//! waits on a oneshot answer: that is the ordering contract of [`Store`], and no database
//! call ever runs on an async worker.
//!
//! **Group commit.** The thread takes every request queued at that moment (up to
//! [`MAX_BATCH`]) and runs them in one `BEGIN IMMEDIATE … COMMIT`, each write inside its own
//! savepoint, and answers them only after the commit returned. A request that fails (mailbox
//! full, no such user, even a constraint error) is rolled back to its savepoint and answered
//! with its error without touching the others; a failed `COMMIT` fails the whole batch. So
//! a burst of offline messages costs one fsync per batch instead of one per message.
//!
//! **Durability.** WAL mode with `synchronous=FULL`: every commit fsyncs the WAL before the
//! answer goes out, so an acknowledged message or account survives not only SIGKILL of the
//! process (which `NORMAL` would also survive) but a power cut or kernel crash, which `NORMAL`
//! in WAL mode does not. Group commit pays for the extra fsync. The exception is a batch
//! holding nothing but history handed over by the [`super::HistoryWriter`] (and reads): it
//! commits with `synchronous=NORMAL`, without an fsync, since that history was delivered
//! before it was written and a crash may lose its last moments anyway. Such a commit
//! survives SIGKILL of the process; a power cut may lose it until the next FULL commit or
//! checkpoint, which syncs the whole WAL and with it every commit before.
//!
//! **Backup.** [`SqliteStore::backup_to`] runs `VACUUM INTO`, a consistent snapshot taken
//! while the server keeps serving.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use rusqlite::{Connection, OptionalExtension, Statement, params};
use simpletextim_proto::{ChatMessage, Recipient, UserId};
use tokio::sync::oneshot;

use super::rows::{chat, corrupt, parse_user_id, to_i64, to_u64};
use super::{
    Account, Conversation, HistoryPage, HistoryQuery, PageLimit, REVOCATION_KEEP, Retention,
    Revocation, RevocationKind, Store, StoreError,
};

/// The database file inside the data directory.
pub const DB_FILE_NAME: &str = "simpletextim.sqlite3";

/// The schema version this build writes (`PRAGMA user_version`). Opening runs the
/// migrations from the file's version up to this one.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Most requests run in one transaction. Bounds the latency a huge backlog adds to the
/// first request of a batch, and the memory held by answers waiting for the commit.
const MAX_BATCH: usize = 4096;

/// How long a statement waits for a lock held by another process (an admin command such
/// as `simpletextim-server user add` running next to the server) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pages the WAL may hold before a commit checkpoints it into the database file.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;

/// SQLite's page cache, in KiB (SQLite's default is 2 MiB). The history's conversation
/// index takes rows at random places (one per conversation); with the default cache a
/// large index is read again from the OS for most inserts. Filled only as pages are used.
const CACHE_KIB: i64 = 32 * 1024;

/// Schema migrations: entry `i` takes a database from version `i` to `i + 1`. Never edit a
/// released entry; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, offline mailbox, message-id high-water mark.
    "CREATE TABLE accounts (
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
     INSERT INTO meta (name, value) VALUES ('max_message_id', 0);",
    // 2: revocations (password changes and deletions) for running servers to act on.
    "CREATE TABLE revocations (
         id    INTEGER PRIMARY KEY AUTOINCREMENT,
         key   TEXT NOT NULL,
         at_ms INTEGER NOT NULL,
         kind  TEXT NOT NULL CHECK (kind IN ('password', 'deleted'))
     );
     CREATE INDEX revocations_by_time ON revocations (at_ms);",
    // 3: the kept history of every conversation, with the pending private messages as its
    // first rows (their history row is written with their mailbox row from now on).
    "CREATE TABLE history (
         id           INTEGER PRIMARY KEY,
         conversation TEXT NOT NULL,
         sender       TEXT NOT NULL,
         recipient    TEXT,
         message      TEXT NOT NULL,
         ts           INTEGER NOT NULL
     );
     -- Latest, before and after pages of one conversation (scanned either way); the
     -- account deletion's range of conversations whose first user is the account.
     CREATE INDEX history_by_conversation ON history (conversation, id);
     -- Pruning by age, oldest first.
     CREATE INDEX history_by_time ON history (ts);
     -- The account deletion's private conversations whose second user is the account.
     CREATE INDEX history_by_second_user
         ON history (substr(conversation, instr(conversation, '/') + 1))
         WHERE recipient IS NOT NULL;
     -- Keeps meta.history_len equal to the row count whoever writes, so pruning by count
     -- is one row lookup, not a count of the table.
     INSERT INTO meta (name, value) VALUES ('history_len', 0);
     CREATE TRIGGER history_insert AFTER INSERT ON history BEGIN
         UPDATE meta SET value = value + 1 WHERE name = 'history_len';
     END;
     CREATE TRIGGER history_delete AFTER DELETE ON history BEGIN
         UPDATE meta SET value = value - 1 WHERE name = 'history_len';
     END;
     INSERT INTO history (id, conversation, sender, recipient, message, ts)
         SELECT id,
                CASE WHEN lower(sender) <= recipient
                     THEN lower(sender) || '/' || recipient
                     ELSE recipient || '/' || lower(sender) END,
                sender, to_user, message, ts
         FROM mailbox ORDER BY id;",
    // 4: cheaper history inserts (the live path writes one row per message). The count is
    // kept by the statements that insert and delete rows (one update per statement, not a
    // trigger per row), and an account's conversations where it is the second user are
    // found by reading the conversation index, not through an index of their own.
    "DROP TRIGGER history_insert;
     DROP TRIGGER history_delete;
     DROP INDEX history_by_second_user;",
];

/// Why [`SqliteStore::open`] failed. The `Display` form is one line naming the path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory does not exist and cannot be created.
    #[error("cannot create data directory {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// SQLite cannot open, configure or migrate the database (unwritable directory, not a
    /// database, disk full…).
    #[error("cannot open database {}: {source}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The database was written by a newer version of the server.
    #[error(
        "database {} has schema version {found}, newer than this server's {supported}; \
         use a newer server",
        path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: u32,
        /// [`SCHEMA_VERSION`].
        supported: u32,
    },
    /// The store thread could not be started.
    #[error("cannot start the store thread: {0}")]
    Thread(std::io::Error),
    /// [`SqliteStore::open_existing`]: the directory (or the database in it) does not exist.
    #[error(
        "no database in {}; the server creates {DB_FILE_NAME} on its first start",
        dir.display()
    )]
    NoDatabase {
        /// The data directory.
        dir: PathBuf,
    },
    /// The data directory or the database is open to other users (group or world
    /// permission bits set). Nothing is changed: the message says the `chmod` that fixes it.
    #[error(
        "{} is {} by other users (mode {mode:04o}); run: chmod {:o} {}",
        path.display(),
        exposure(*.mode),
        if *.is_dir { 0o700 } else { 0o600 },
        path.display()
    )]
    OpenToOthers {
        /// The directory or file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Whether it is the data directory (fixed with `chmod 700`) or the database (600).
        is_dir: bool,
    },
    /// The empty database file cannot be created.
    #[error("cannot create database {}: {source}", path.display())]
    CreateFile {
        /// The database file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The permissions of the data directory or of a database file cannot be read or set.
    #[error("cannot check or set the permissions of {}: {source}", path.display())]
    Permissions {
        /// The directory or file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// How [`OpenError::OpenToOthers`] describes `mode`: its worst exposure.
fn exposure(mode: u32) -> &'static str {
    if mode & 0o044 != 0 {
        "readable"
    } else if mode & 0o022 != 0 {
        "writable"
    } else {
        "accessible"
    }
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

/// One account as `user list` shows it: no password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    /// The id as spelled when the account was created.
    pub user_id: UserId,
    /// When the account was created, in Unix milliseconds.
    pub created_ms: u64,
    /// Messages waiting in its offline mailbox.
    pub pending: u64,
}

/// The SQLite-backed [`Store`]. See the module documentation for the file layout, the
/// threading model and the durability guarantees.
///
/// Dropping it (or [`SqliteStore::close`]) lets the store thread finish every request
/// already queued, then joins it.
pub struct SqliteStore {
    requests: mpsc::Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it and `dir` if missing) the database `dir/`[`DB_FILE_NAME`], runs
    /// the schema migrations, and starts the store thread. Mailboxes hold at most
    /// `mailbox_cap` messages each. What the server does when it starts.
    ///
    /// On Unix a directory it creates gets mode 0700 and a database it creates 0600, set
    /// explicitly whatever the umask; SQLite gives the `-wal` and `-shm` files it creates
    /// the database file's mode. An existing directory or database with any group or world
    /// permission bit is refused ([`OpenError::OpenToOthers`]) rather than changed: the
    /// directory may be one the operator shares with other things (`--data .`).
    ///
    /// This blocks on disk I/O: call it before starting the async runtime, or from
    /// `spawn_blocking`.
    ///
    /// # Errors
    /// [`OpenError`] when the directory cannot be created, the directory or the database is
    /// open to other users, the database cannot be opened or written, its schema is newer
    /// than [`SCHEMA_VERSION`], or the thread cannot start.
    pub fn open(dir: &Path, mailbox_cap: usize) -> Result<SqliteStore, OpenError> {
        if !dir.exists() {
            create_private_dir(dir)?;
        }
        let path = dir.join(DB_FILE_NAME);
        check_private(dir, true)?;
        if !path.exists() {
            create_private_file(&path)?;
        }
        Self::start(path, mailbox_cap)
    }

    /// Like [`SqliteStore::open`], but only an existing database: what the administration
    /// commands use, so a wrong `--data` is an error instead of a new, empty database.
    ///
    /// # Errors
    /// [`OpenError::NoDatabase`] when `dir` or its database does not exist (nothing is
    /// created); otherwise as [`SqliteStore::open`].
    pub fn open_existing(dir: &Path, mailbox_cap: usize) -> Result<SqliteStore, OpenError> {
        let path = dir.join(DB_FILE_NAME);
        if !path.exists() {
            return Err(OpenError::NoDatabase {
                dir: dir.to_owned(),
            });
        }
        check_private(dir, true)?;
        Self::start(path.clone(), mailbox_cap).map_err(|e| match e {
            // Deleted between the check and the open: still no database, and none made.
            OpenError::Database { .. } if !path.exists() => OpenError::NoDatabase {
                dir: dir.to_owned(),
            },
            e => e,
        })
    }

    /// Checks the existing database's mode, tightens side files left by a crash, opens the
    /// connection and starts the thread.
    fn start(path: PathBuf, mailbox_cap: usize) -> Result<SqliteStore, OpenError> {
        check_private(&path, false)?;
        tighten_side_files(&path)?;
        let conn = open_connection(&path)?;
        let (requests, rx) = mpsc::channel();
        let worker = Worker {
            conn,
            mailbox_cap,
            synchronous: std::cell::Cell::new(Synchronous::Full),
            #[cfg(test)]
            commits: std::cell::Cell::new(0),
        };
        let thread = std::thread::Builder::new()
            .name("sqlite-store".into())
            .spawn(move || worker.run(&rx))
            .map_err(OpenError::Thread)?;
        Ok(SqliteStore {
            requests,
            thread: Mutex::new(Some(thread)),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every account, sorted by key (case-insensitively), with its mailbox size.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the database fails.
    pub fn list_accounts(&self) -> BoxFuture<'static, Result<Vec<AccountInfo>, StoreError>> {
        self.submit(Kind::Read, |w| w.list_accounts())
    }

    /// Writes a consistent copy of the whole database to `dest` (`VACUUM INTO`) while the
    /// store keeps serving; it reflects every request made before this call. The copy is a
    /// plain SQLite file that [`SqliteStore::open`] accepts once named [`DB_FILE_NAME`].
    ///
    /// # Errors
    /// [`StoreError::Backend`] when `dest` exists already, is not valid UTF-8, or cannot be
    /// written.
    pub fn backup_to(&self, dest: PathBuf) -> BoxFuture<'static, Result<(), StoreError>> {
        self.submit(Kind::OutsideTransaction, move |w| w.backup_to(&dest))
    }

    /// Finishes every request already queued, stops the store thread and waits for it.
    /// Requests made afterwards fail with [`StoreError::Backend`]. Dropping the store does
    /// the same; calling this twice is harmless.
    ///
    /// Blocks until the thread has committed its last batch: from async code, call it
    /// from `spawn_blocking` or at the very end of shutdown.
    pub fn close(&self) {
        // The send fails only if the thread is gone already; then there is nothing to stop.
        let _ = self.requests.send(Msg::Close);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!(db = %self.path.display(), "the store thread panicked");
        }
    }

    /// Queues `f` for the store thread and returns a future of its answer. The request is
    /// in the queue when this returns, which is what gives the ordering contract.
    fn submit<T, F>(&self, kind: Kind, f: F) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&Worker) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let call = Call {
            kind,
            f: Some(f),
            result: None,
            tx,
        };
        let queued = self.requests.send(Msg::Request(Box::new(call))).is_ok();
        async move {
            if !queued {
                return Err(closed());
            }
            // A dropped answer means the thread stopped (closed or panicked) first.
            rx.await.unwrap_or_else(|_| Err(closed()))
        }
        .boxed()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for SqliteStore {
    fn account(&self, key: String) -> BoxFuture<'static, Result<Option<Account>, StoreError>> {
        self.submit(Kind::Read, move |w| w.account(&key))
    }

    fn create_account(&self, account: Account) -> BoxFuture<'static, Result<(), StoreError>> {
        self.submit(Kind::Write, move |w| w.create_account(&account))
    }

    fn enqueue(
        &self,
        recipient_key: String,
        message: ChatMessage,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.submit(Kind::Write, move |w| w.enqueue(&recipient_key, &message))
    }

    fn pending(&self, key: String) -> BoxFuture<'static, Result<Vec<ChatMessage>, StoreError>> {
        self.submit(Kind::Read, move |w| w.pending(&key))
    }

    fn delete_delivered(
        &self,
        key: String,
        ids: Vec<u64>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.submit(Kind::Write, move |w| w.delete_delivered(&key, &ids))
    }

    fn max_message_id(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.submit(Kind::Read, |w| w.max_message_id())
    }

    fn set_password_hash(
        &self,
        key: String,
        password_hash: String,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.submit(Kind::Write, move |w| {
            w.set_password_hash(&key, &password_hash)
        })
    }

    fn delete_account(&self, key: String) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.submit(Kind::Write, move |w| w.delete_account(&key))
    }

    fn revocations_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Revocation>, StoreError>> {
        self.submit(Kind::Read, move |w| w.revocations_after(after_id, limit))
    }

    fn last_revocation_id(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.submit(Kind::Read, |w| w.last_revocation_id())
    }

    fn append_history(
        &self,
        messages: Vec<ChatMessage>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.submit(Kind::History, move |w| w.append_history(&messages))
    }

    fn history(
        &self,
        conversation: Conversation,
        query: HistoryQuery,
        limit: PageLimit,
    ) -> BoxFuture<'static, Result<HistoryPage, StoreError>> {
        self.submit(Kind::Read, move |w| w.history(&conversation, query, limit))
    }

    fn prune_history(
        &self,
        retention: Retention,
        now_ms: u64,
        max_rows: u64,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.submit(Kind::Write, move |w| {
            w.prune_history(retention, now_ms, max_rows)
        })
    }
}

fn closed() -> StoreError {
    StoreError::Backend("the store is closed".into())
}

/// Creates `dir` (and missing parents) with mode 0700, set explicitly after creation so the
/// umask cannot loosen or narrow it.
fn create_private_dir(dir: &Path) -> Result<(), OpenError> {
    let create_err = |source| OpenError::CreateDir {
        dir: dir.to_owned(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(create_err)?;
        set_mode(dir, 0o700)
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(create_err)
}

/// Creates the empty database file `path` with mode 0600 before SQLite opens it (an empty
/// file is a database of schema version 0). SQLite gives its `-wal` and `-shm` files the mode
/// of this file, so they are 0600 too.
fn create_private_file(path: &Path) -> Result<(), OpenError> {
    match create_new_private(path) {
        // Created meanwhile (another process starting): checked and opened as existing.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        result => result.map_err(|source| OpenError::CreateFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates the empty file `path`, which must not exist, with mode 0600 whatever the umask
/// (the mode is set again after the creation, which the umask masks).
fn create_new_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Sets the permission bits of `path` to `mode`.
#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), OpenError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        OpenError::Permissions {
            path: path.to_owned(),
            source,
        }
    })
}

/// Refuses `path` (the data directory if `is_dir`, else the database) when any group or
/// world permission bit is set.
fn check_private(path: &Path, is_dir: bool) -> Result<(), OpenError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| OpenError::Permissions {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(OpenError::OpenToOthers {
                path: path.to_owned(),
                mode,
                is_dir,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, is_dir);
    Ok(())
}

/// Sets the `-wal` and `-shm` files beside the database to 0600 if they exist with a looser
/// mode: SQLite reuses existing ones as they are, and a crash of a server from before the
/// database was private (or before its owner ran `chmod 600` on it) leaves them behind. They
/// are SQLite's files of a database already found private, so they are fixed, not refused.
fn tighten_side_files(db: &Path) -> Result<(), OpenError> {
    #[cfg(unix)]
    for suffix in ["-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        let Ok(meta) = std::fs::metadata(&side) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %side.display(), mode = format!("{mode:04o}"), "open to other users; setting it to 0600");
            set_mode(&side, 0o600)?;
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

/// Opens the file, sets the connection up and brings the schema to [`SCHEMA_VERSION`].
/// The file must exist: SQLite never creates it (it would with its own mode, 0644 less the
/// umask); [`SqliteStore::open`] creates it with mode 0600 first.
fn open_connection(path: &Path) -> Result<Connection, OpenError> {
    let db_err = |source| OpenError::Database {
        path: path.to_owned(),
        source,
    };
    let mut flags = rusqlite::OpenFlags::default();
    flags.remove(rusqlite::OpenFlags::SQLITE_OPEN_CREATE);
    let mut conn = Connection::open_with_flags(path, flags).map_err(db_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
    // Switching to WAL writes the file header: the first point where an unwritable
    // directory or a file that is not a database shows up.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(db_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Still durable (rollback journal), only slower and blocking readers; some
        // network file systems cannot do WAL.
        tracing::warn!(db = %path.display(), mode, "SQLite refused WAL mode");
    }
    // FULL, not NORMAL: see the module docs (durability across power loss, paid for by
    // group commit).
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db_err)?;
    // The WAL is reset after each checkpoint, but a huge batch can grow it; give the
    // space back instead of keeping a large file forever.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(db_err)?;
    // Checkpoint (copy the WAL back into the database file) every 8192 pages (32 MiB)
    // instead of SQLite's 1000: a checkpoint writes each page once however many commits
    // changed it, and mailbox inserts touch the same index and account pages again and
    // again, so rarer checkpoints write less.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(db_err)?;
    // Negative: in KiB.
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(db_err)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Runs the migrations from the file's `user_version` up to [`SCHEMA_VERSION`], each in its
/// own transaction together with the version bump, so a crash leaves a consistent version.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), OpenError> {
    let db_err = |source| OpenError::Database {
        path: path.to_owned(),
        source,
    };
    let found: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    if found > SCHEMA_VERSION {
        return Err(OpenError::TooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        tx.execute_batch(sql).map_err(db_err)?;
        tx.pragma_update(None, "user_version", from + 1)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(db = %path.display(), version = from + 1, "database schema migrated");
    }
    Ok(())
}

/// What the store thread receives.
enum Msg {
    Request(Box<dyn Request>),
    /// Finish what is queued before this, then stop.
    Close,
}

/// Where a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Inside the batch transaction, without a savepoint.
    Read,
    /// Inside the batch transaction, in its own savepoint.
    Write,
    /// As [`Kind::Write`], for a write whose last moments a power cut may lose (history
    /// handed over by the [`super::HistoryWriter`], which never promised more): a batch of
    /// nothing else is committed with `synchronous=NORMAL` (no fsync).
    History,
    /// Between transactions (`VACUUM INTO` cannot run inside one): the batch so far is
    /// committed first.
    OutsideTransaction,
}

/// A queued request with its answer channel, its result type erased.
trait Request: Send {
    fn kind(&self) -> Kind;
    /// Runs the request; whether it succeeded.
    fn execute(&mut self, worker: &Worker) -> bool;
    /// Sends the result, or `batch_error` when the transaction holding the request was
    /// not committed.
    fn answer(self: Box<Self>, batch_error: Option<&str>);
}

struct Call<T, F> {
    kind: Kind,
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    tx: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Request for Call<T, F>
where
    T: Send,
    F: FnOnce(&Worker) -> Result<T, StoreError> + Send,
{
    fn kind(&self) -> Kind {
        self.kind
    }

    fn execute(&mut self, worker: &Worker) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let result = f(worker);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, batch_error: Option<&str>) {
        let result = match (batch_error, self.result) {
            (Some(e), _) => Err(StoreError::Backend(e.to_owned())),
            (None, Some(r)) => r,
            (None, None) => Err(StoreError::Backend("request was not executed".into())),
        };
        // The caller may have dropped its future; nobody to tell then.
        let _ = self.tx.send(result);
    }
}

/// The store thread's state: the connection and the settings requests need.
struct Worker {
    conn: Connection,
    mailbox_cap: usize,
    /// The connection's `synchronous` setting now.
    synchronous: std::cell::Cell<Synchronous>,
    /// Transactions committed, so tests can see requests share them.
    #[cfg(test)]
    commits: std::cell::Cell<u64>,
}

/// SQLite's `synchronous` settings the store uses (WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synchronous {
    /// Every commit fsyncs the WAL: durable across a power cut.
    Full,
    /// Commits do not fsync: durable across a crash of the process, not of the machine,
    /// until the next FULL commit or checkpoint.
    Normal,
}

/// The requests run in the open transaction, waiting for its commit to be answered.
#[derive(Default)]
struct Batch {
    open: bool,
    done: Vec<Box<dyn Request>>,
}

impl Worker {
    /// The thread's loop: take what is queued, run it as one transaction, answer, repeat
    /// until [`Msg::Close`] or every sender is gone.
    fn run(self, rx: &mpsc::Receiver<Msg>) {
        let mut queue = Vec::with_capacity(MAX_BATCH);
        loop {
            let Ok(first) = rx.recv() else {
                return;
            };
            queue.push(first);
            while queue.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => queue.push(m),
                    Err(_) => break,
                }
            }
            if self.run_batch(&mut queue) {
                return;
            }
        }
    }

    /// Runs the queued messages in order; whether a [`Msg::Close`] was among them. Everything
    /// before the close is answered; what follows it is dropped, so its callers see the
    /// store as closed.
    fn run_batch(&self, queue: &mut Vec<Msg>) -> bool {
        // FULL (an fsync per commit) whenever the batch holds a write that was promised
        // durable; NORMAL for history and reads alone. In WAL mode the next FULL commit
        // syncs the whole log, so it makes the NORMAL commits before it durable too.
        let durable = queue
            .iter()
            .any(|m| matches!(m, Msg::Request(r) if matches!(r.kind(), Kind::Write | Kind::OutsideTransaction)));
        self.set_synchronous(if durable {
            Synchronous::Full
        } else {
            Synchronous::Normal
        });
        let mut batch = Batch::default();
        let mut close = false;
        for msg in queue.drain(..) {
            if close {
                continue;
            }
            let mut req = match msg {
                Msg::Close => {
                    close = true;
                    continue;
                }
                Msg::Request(r) => r,
            };
            match req.kind() {
                Kind::OutsideTransaction => {
                    self.finish(&mut batch);
                    req.execute(self);
                    req.answer(None);
                }
                kind => {
                    if !batch.open {
                        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
                            req.answer(Some(&format!("cannot start a transaction: {e}")));
                            continue;
                        }
                        batch.open = true;
                    }
                    if kind != Kind::Read {
                        self.execute_in_savepoint(&mut *req);
                    } else {
                        req.execute(self);
                    }
                    batch.done.push(req);
                    if self.conn.is_autocommit() {
                        // SQLite rolled the whole transaction back on its own (it does on
                        // some I/O errors and on a full disk): nothing in it was stored.
                        batch.open = false;
                        fail_all(&mut batch.done, "transaction rolled back by the database");
                    }
                }
            }
        }
        self.finish(&mut batch);
        close
    }

    /// Sets `synchronous` between transactions, if it changes. (Setting it outside a
    /// transaction does not fail in practice; if it did, the error is logged and the
    /// setting stays as it was.)
    fn set_synchronous(&self, to: Synchronous) {
        if self.synchronous.get() == to {
            return;
        }
        let value = match to {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        match self.conn.pragma_update(None, "synchronous", value) {
            Ok(()) => self.synchronous.set(to),
            Err(e) => tracing::warn!(error = %e, value, "cannot set synchronous"),
        }
    }

    /// Runs a write so that, when it fails, none of its statements stay in the batch.
    fn execute_in_savepoint(&self, req: &mut dyn Request) {
        if let Err(e) = self.exec_cached("SAVEPOINT request") {
            tracing::error!(error = %e, "cannot open a savepoint");
            // Not executed: its answer says so.
            return;
        }
        let ok = req.execute(self);
        let end = if ok {
            self.exec_cached("RELEASE request")
        } else {
            self.exec_cached("ROLLBACK TO request")
                .and_then(|()| self.exec_cached("RELEASE request"))
        };
        if let Err(e) = end {
            // The transaction itself is gone then; the caller sees `is_autocommit`.
            tracing::error!(error = %e, "cannot close a savepoint");
        }
    }

    fn exec_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Commits the open transaction, if any, and answers the requests run in it.
    fn finish(&self, batch: &mut Batch) {
        if !batch.open {
            return;
        }
        batch.open = false;
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                #[cfg(test)]
                self.commits.set(self.commits.get() + 1);
                tracing::trace!(requests = batch.done.len(), "batch committed");
                for req in batch.done.drain(..) {
                    req.answer(None);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.done.len(), "commit failed");
                // A failed COMMIT can leave the transaction open (SQLITE_BUSY); end it so
                // the next batch starts clean. Failing again just means it is gone already.
                let _ = self.conn.execute_batch("ROLLBACK");
                fail_all(&mut batch.done, &format!("commit failed: {e}"));
            }
        }
    }

    fn account(&self, key: &str) -> Result<Option<Account>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT user_id, password_hash, created_ms FROM accounts WHERE key = ?1",
            )?
            .query_row([key], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()?;
        row.map(|(user_id, password_hash, created_ms)| {
            Ok(Account {
                user_id: parse_user_id(&user_id)?,
                password_hash,
                created_ms: to_u64(created_ms)?,
            })
        })
        .transpose()
    }

    fn create_account(&self, account: &Account) -> Result<(), StoreError> {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO accounts (key, user_id, password_hash, created_ms)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO NOTHING",
            )?
            .execute(params![
                account.user_id.key(),
                account.user_id.as_str(),
                account.password_hash,
                to_i64(account.created_ms)?,
            ])?;
        if inserted == 0 {
            return Err(StoreError::AccountExists(account.user_id.to_string()));
        }
        Ok(())
    }

    fn enqueue(&self, recipient_key: &str, message: &ChatMessage) -> Result<(), StoreError> {
        // Checked and inserted in one transaction on the only writing thread, under the
        // database write lock (BEGIN IMMEDIATE): no other writer can slip in between.
        let count: i64 = self
            .conn
            .prepare_cached("SELECT mailbox_len FROM accounts WHERE key = ?1")?
            .query_row([recipient_key], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NoSuchUser(recipient_key.to_owned()))?;
        if usize::try_from(count).map_or(true, |c| c >= self.mailbox_cap) {
            return Err(StoreError::MailboxFull(recipient_key.to_owned()));
        }
        let id = to_i64(message.id)?;
        self.conn
            .prepare_cached(
                "INSERT INTO mailbox (id, recipient, sender, message, to_user, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id,
                recipient_key,
                message.user_id.as_str(),
                message.message,
                message.to.as_str(),
                to_i64(message.ts)?,
            ])?;
        let inserted = self.insert_history(message)?;
        self.count_history(inserted)?;
        self.raise_max_message_id(id)
    }

    /// Adds `delta` (negative: rows deleted) to `meta.history_len`, the row count of
    /// `history`, in the statement's transaction.
    fn count_history(&self, delta: i64) -> Result<(), StoreError> {
        if delta != 0 {
            self.conn
                .prepare_cached("UPDATE meta SET value = value + ?1 WHERE name = 'history_len'")?
                .execute([delta])?;
        }
        Ok(())
    }

    /// Raises the message-id high-water mark to `id`.
    fn raise_max_message_id(&self, id: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE meta SET value = max(value, ?1) WHERE name = 'max_message_id'")?
            .execute([id])?;
        Ok(())
    }

    /// Inserts the history row of `message`, unless its id has one already; returns how
    /// many rows it inserted (1 or 0). The caller counts them in `history_len`.
    fn insert_history(&self, message: &ChatMessage) -> Result<i64, StoreError> {
        let mut insert = self.conn.prepare_cached(INSERT_HISTORY)?;
        insert_history_with(&mut insert, message)
    }

    fn append_history(&self, messages: &[ChatMessage]) -> Result<(), StoreError> {
        // In the caller's savepoint: any failure undoes the rows inserted so far.
        // Statements of HISTORY_ROWS_PER_INSERT rows, then one row at a time: a statement's
        // own work (its start, its cursors, its end) is paid once for many rows.
        let mut inserted = 0;
        let mut chunks = messages.chunks_exact(HISTORY_ROWS_PER_INSERT);
        if chunks.len() > 0 {
            let mut insert = self.conn.prepare_cached(insert_history_rows_sql())?;
            for chunk in &mut chunks {
                inserted += insert_history_rows(&mut insert, chunk)?;
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut insert = self.conn.prepare_cached(INSERT_HISTORY)?;
            for message in rest {
                inserted += insert_history_with(&mut insert, message)?;
            }
        }
        self.count_history(inserted)?;
        if let Some(max) = messages.iter().map(|m| m.id).max() {
            self.raise_max_message_id(to_i64(max)?)?;
        }
        Ok(())
    }

    fn history(
        &self,
        conversation: &Conversation,
        query: HistoryQuery,
        limit: PageLimit,
    ) -> Result<HistoryPage, StoreError> {
        const COLUMNS: &str = "SELECT sender, recipient, message, id, ts FROM history";
        // One row more than the limit, in the direction asked: whether there is more.
        let fetch = i64::try_from(limit.get() + 1).unwrap_or(i64::MAX);
        let key = conversation.key();
        let (sql, anchor) = match query {
            HistoryQuery::Latest => (
                format!("{COLUMNS} WHERE conversation = ?1 AND id <= ?2 ORDER BY id DESC LIMIT ?3"),
                i64::MAX,
            ),
            // An anchor above i64::MAX is above every stored id.
            HistoryQuery::Before(id) => (
                format!("{COLUMNS} WHERE conversation = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"),
                i64::try_from(id).unwrap_or(i64::MAX),
            ),
            HistoryQuery::After(id) => match i64::try_from(id) {
                Ok(id) => (
                    format!("{COLUMNS} WHERE conversation = ?1 AND id > ?2 ORDER BY id LIMIT ?3"),
                    id,
                ),
                Err(_) => return Ok(HistoryPage::default()),
            },
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![key, anchor, fetch], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut messages = Vec::with_capacity(limit.get() + 1);
        for row in rows {
            let (sender, recipient, message, id, ts) = row?;
            let to = match recipient {
                None => Recipient::Everyone,
                Some(r) => Recipient::User(parse_user_id(&r)?),
            };
            messages.push(chat(
                parse_user_id(&sender)?,
                message,
                to,
                to_u64(id)?,
                to_u64(ts)?,
            ));
        }
        let more = messages.len() > limit.get();
        messages.truncate(limit.get());
        if query.goes_back() {
            messages.reverse();
        }
        Ok(HistoryPage { messages, more })
    }

    fn prune_history(
        &self,
        retention: Retention,
        now_ms: u64,
        max_rows: u64,
    ) -> Result<u64, StoreError> {
        let budget = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let mut deleted: i64 = 0;
        if let Some(max) = retention.max_messages {
            let kept: i64 = self
                .conn
                .prepare_cached("SELECT value FROM meta WHERE name = 'history_len'")?
                .query_row([], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let over = kept
                .saturating_sub(i64::try_from(max).unwrap_or(i64::MAX))
                .clamp(0, budget);
            if over > 0 {
                let n = self
                    .conn
                    .prepare_cached(
                        "DELETE FROM history WHERE id IN
                         (SELECT id FROM history ORDER BY id LIMIT ?1)",
                    )?
                    .execute([over])?;
                deleted += i64::try_from(n).unwrap_or(i64::MAX);
            }
        }
        if let Some(cutoff) = retention.cutoff_ms(now_ms)
            && deleted < budget
        {
            let n = self
                .conn
                .prepare_cached(
                    "DELETE FROM history WHERE id IN
                     (SELECT id FROM history WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
                )?
                .execute([i64::try_from(cutoff).unwrap_or(i64::MAX), budget - deleted])?;
            deleted += i64::try_from(n).unwrap_or(i64::MAX);
        }
        self.count_history(-deleted)?;
        to_u64(deleted)
    }

    fn pending(&self, key: &str) -> Result<Vec<ChatMessage>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sender, message, to_user, id, ts FROM mailbox
             WHERE recipient = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut messages = Vec::new();
        for row in rows {
            let (sender, message, to, id, ts) = row?;
            let to = to
                .parse::<Recipient>()
                .map_err(|e| corrupt(format!("recipient {to:?}: {}", e.reason)))?;
            messages.push(chat(
                parse_user_id(&sender)?,
                message,
                to,
                to_u64(id)?,
                to_u64(ts)?,
            ));
        }
        Ok(messages)
    }

    fn delete_delivered(&self, key: &str, ids: &[u64]) -> Result<(), StoreError> {
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM mailbox WHERE recipient = ?1 AND id = ?2")?;
        // Ids above i64::MAX cannot have been stored.
        for id in ids.iter().filter_map(|&id| i64::try_from(id).ok()) {
            delete.execute(params![key, id])?;
        }
        Ok(())
    }

    fn max_message_id(&self) -> Result<u64, StoreError> {
        let v: i64 = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE name = 'max_message_id'")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        to_u64(v)
    }

    fn list_accounts(&self) -> Result<Vec<AccountInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT user_id, created_ms, mailbox_len FROM accounts ORDER BY key")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut accounts = Vec::new();
        for row in rows {
            let (user_id, created_ms, pending) = row?;
            accounts.push(AccountInfo {
                user_id: parse_user_id(&user_id)?,
                created_ms: to_u64(created_ms)?,
                pending: to_u64(pending)?,
            });
        }
        Ok(accounts)
    }

    fn delete_account(&self, key: &str) -> Result<u64, StoreError> {
        // Mailbox first, while the account row its triggers update still exists; the
        // savepoint around every write undoes it if the account turns out not to exist.
        let messages = self
            .conn
            .prepare_cached("DELETE FROM mailbox WHERE recipient = ?1")?
            .execute([key])?;
        // Its private conversations: those where it is the first user (a range of the
        // conversation index: '0' follows '/'), then those where it is the second, found
        // by reading the private part of the conversation index alone (every key sorts
        // after '*'; no table row is read), then deleted a conversation at a time. A
        // rare administrator's command pays for the index the live path no longer keeps
        // (version 4): tens of milliseconds per million private messages.
        let first = self
            .conn
            .prepare_cached(
                "DELETE FROM history
                 WHERE conversation >= ?1 || '/' AND conversation < ?1 || '0'",
            )?
            .execute([key])?;
        let second = self
            .conn
            .prepare_cached(
                "DELETE FROM history WHERE conversation IN
                 (SELECT DISTINCT conversation FROM history INDEXED BY history_by_conversation
                  WHERE conversation > '*'
                  AND substr(conversation, instr(conversation, '/') + 1) = ?1)",
            )?
            .execute([key])?;
        self.count_history(-i64::try_from(first + second).expect("a row count fits in an i64"))?;
        let removed = self
            .conn
            .prepare_cached("DELETE FROM accounts WHERE key = ?1")?
            .execute([key])?;
        if removed == 0 {
            return Err(StoreError::NoSuchUser(key.to_owned()));
        }
        self.record_revocation(key, RevocationKind::AccountDeleted)?;
        Ok(messages as u64)
    }

    fn set_password_hash(&self, key: &str, password_hash: &str) -> Result<(), StoreError> {
        let changed = self
            .conn
            .prepare_cached("UPDATE accounts SET password_hash = ?2 WHERE key = ?1")?
            .execute([key, password_hash])?;
        if changed == 0 {
            return Err(StoreError::NoSuchUser(key.to_owned()));
        }
        self.record_revocation(key, RevocationKind::PasswordChanged)
    }

    /// Records that `key`'s sessions must end, and prunes revocations older than
    /// [`REVOCATION_KEEP`]. Runs inside the write transaction of the change (the caller's
    /// savepoint): the time is taken while this connection holds the database's write lock,
    /// so every account lookup of a server on this database either ended before it (and
    /// may have seen the old account) or starts after the commit (and sees the new one).
    /// That is the guarantee of [`Revocation::at_ms`].
    fn record_revocation(&self, key: &str, kind: RevocationKind) -> Result<(), StoreError> {
        let at_ms = to_i64(crate::now_ms())?;
        let kind = match kind {
            RevocationKind::PasswordChanged => "password",
            RevocationKind::AccountDeleted => "deleted",
        };
        self.conn
            .prepare_cached("INSERT INTO revocations (key, at_ms, kind) VALUES (?1, ?2, ?3)")?
            .execute(params![key, at_ms, kind])?;
        let keep = i64::try_from(REVOCATION_KEEP.as_millis()).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached("DELETE FROM revocations WHERE at_ms < ?1")?
            .execute([at_ms.saturating_sub(keep)])?;
        Ok(())
    }

    fn revocations_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<Revocation>, StoreError> {
        // Ids above i64::MAX cannot have been stored: nothing is after them.
        let Ok(after_id) = i64::try_from(after_id) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, key, at_ms, kind FROM revocations WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map([after_id, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut revocations = Vec::new();
        for row in rows {
            let (id, key, at_ms, kind) = row?;
            let kind = match kind.as_str() {
                "password" => RevocationKind::PasswordChanged,
                "deleted" => RevocationKind::AccountDeleted,
                other => return Err(corrupt(format!("revocation kind {other:?}"))),
            };
            revocations.push(Revocation {
                id: to_u64(id)?,
                key,
                at_ms: to_u64(at_ms)?,
                kind,
            });
        }
        Ok(revocations)
    }

    fn last_revocation_id(&self) -> Result<u64, StoreError> {
        // The highest id still stored: every later revocation gets a higher one
        // (AUTOINCREMENT), even after every row was pruned.
        let v: i64 = self
            .conn
            .prepare_cached("SELECT coalesce(max(id), 0) FROM revocations")?
            .query_row([], |r| r.get(0))?;
        to_u64(v)
    }

    fn backup_to(&self, dest: &Path) -> Result<(), StoreError> {
        let dest_str = dest.to_str().ok_or_else(|| {
            StoreError::Backend(format!("backup path {} is not valid UTF-8", dest.display()))
        })?;
        // Created empty with mode 0600 first (VACUUM INTO accepts an empty file): SQLite
        // would create it 0644 less the umask, and it holds password hashes and messages.
        match create_new_private(dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Backend(format!(
                    "{} exists already",
                    dest.display()
                )));
            }
            Err(e) => {
                // It may have been created before its mode could be set.
                let _ = std::fs::remove_file(dest);
                return Err(StoreError::Backend(format!("{}: {e}", dest.display())));
            }
        }
        let result = self
            .conn
            .execute("VACUUM INTO ?1", [dest_str])
            .map(drop)
            .map_err(|e| e.to_string());
        if let Err(e) = result {
            // Only the file this call created; a partial copy is no backup.
            let _ = std::fs::remove_file(dest);
            return Err(StoreError::Backend(format!(
                "backup to {}: {e}",
                dest.display()
            )));
        }
        Ok(())
    }
}

fn fail_all(done: &mut Vec<Box<dyn Request>>, reason: &str) {
    for req in done.drain(..) {
        req.answer(Some(reason));
    }
}

/// Inserts a history row, unless its id has one already.
const INSERT_HISTORY: &str =
    "INSERT INTO history (id, conversation, sender, recipient, message, ts)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING";

/// Rows of one multi-row history insert ([`insert_history_rows_sql`]): 6 parameters a row.
const HISTORY_ROWS_PER_INSERT: usize = 32;

/// [`INSERT_HISTORY`] for [`HISTORY_ROWS_PER_INSERT`] rows, in the order given. `OR IGNORE`
/// (an id kept already is skipped, as `DO NOTHING` does; no value bound is ever NULL):
/// with the default `ABORT` of the NOT NULL columns, SQLite gives a multi-row statement a
/// statement journal, a temporary file written with every page it changes, which tripled
/// the store thread's system time in the private flood.
fn insert_history_rows_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let rows: Vec<String> = (0..HISTORY_ROWS_PER_INSERT)
            .map(|i| {
                let p = i * 6;
                format!(
                    "(?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6
                )
            })
            .collect();
        format!(
            "INSERT OR IGNORE INTO history (id, conversation, sender, recipient, message, ts)
             VALUES {}",
            rows.join(", ")
        )
    })
}

/// Inserts the history rows of `messages` (exactly [`HISTORY_ROWS_PER_INSERT`]) with
/// `insert` ([`insert_history_rows_sql`]), each unless its id has one already; returns how
/// many rows it inserted.
fn insert_history_rows(
    insert: &mut Statement<'_>,
    messages: &[ChatMessage],
) -> Result<i64, StoreError> {
    debug_assert_eq!(messages.len(), HISTORY_ROWS_PER_INSERT);
    let conversations: Vec<Conversation> = messages
        .iter()
        .map(|m| Conversation::of(&m.user_id, &m.to))
        .collect();
    for (i, (message, conversation)) in messages.iter().zip(&conversations).enumerate() {
        let p = i * 6;
        let recipient = match &message.to {
            Recipient::Everyone => None,
            Recipient::User(u) => Some(u.as_str()),
        };
        insert.raw_bind_parameter(p + 1, to_i64(message.id)?)?;
        insert.raw_bind_parameter(p + 2, conversation.key())?;
        insert.raw_bind_parameter(p + 3, message.user_id.as_str())?;
        insert.raw_bind_parameter(p + 4, recipient)?;
        insert.raw_bind_parameter(p + 5, message.message.as_str())?;
        insert.raw_bind_parameter(p + 6, to_i64(message.ts)?)?;
    }
    let inserted = insert.raw_execute()?;
    Ok(i64::try_from(inserted).expect("a row count fits in an i64"))
}

/// Inserts the history row of `message` with `insert` ([`INSERT_HISTORY`]), unless its id
/// has one already; returns how many rows it inserted (1 or 0).
fn insert_history_with(
    insert: &mut Statement<'_>,
    message: &ChatMessage,
) -> Result<i64, StoreError> {
    let conversation = Conversation::of(&message.user_id, &message.to);
    let recipient = match &message.to {
        Recipient::Everyone => None,
        Recipient::User(u) => Some(u.as_str()),
    };
    let inserted = insert.execute(params![
        to_i64(message.id)?,
        conversation.key(),
        message.user_id.as_str(),
        recipient,
        message.message,
        to_i64(message.ts)?,
    ])?;
    Ok(i64::try_from(inserted).expect("a row count fits in an i64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, to: &str) -> ChatMessage {
        chat(
            UserId::new("bob").unwrap_or_else(|e| panic!("{e:?}")),
            format!("m{id}"),
            Recipient::User(UserId::new(to).unwrap_or_else(|e| panic!("{e:?}"))),
            id,
            id / 2,
        )
    }

    /// A temporary directory of mode 0700, as [`SqliteStore::open`] requires of an existing
    /// data directory (`tempfile` leaves the mode to the umask).
    fn tempdir() -> std::io::Result<tempfile::TempDir> {
        let dir = tempfile::tempdir()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(dir)
    }

    fn account(name: &str) -> Account {
        Account {
            user_id: UserId::new(name).unwrap_or_else(|e| panic!("{e:?}")),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            created_ms: 7,
        }
    }

    #[tokio::test]
    async fn a_failing_write_is_rolled_back_alone() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempdir()?;
        let store = SqliteStore::open(dir.path(), 10)?;
        store.create_account(account("alice")).await?;
        // Queued together, so most likely one batch; the outcome must not depend on it.
        let ok1 = store.enqueue("alice".into(), msg(1, "alice"));
        // Same id: passes the checks, then the INSERT hits the primary key.
        let dup = store.enqueue("alice".into(), msg(1, "alice"));
        let big = store.enqueue("alice".into(), msg(u64::MAX, "alice"));
        let ok2 = store.enqueue("alice".into(), msg(2, "alice"));
        ok1.await?;
        assert!(matches!(dup.await, Err(StoreError::Backend(_))));
        assert!(matches!(big.await, Err(StoreError::Backend(_))));
        ok2.await?;
        let ids: Vec<u64> = store
            .pending("alice".into())
            .await?
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(store.max_message_id().await?, 2);
        Ok(())
    }

    #[tokio::test]
    async fn queued_requests_share_one_commit() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempdir()?;
        let store = SqliteStore::open(dir.path(), 1000)?;
        store.create_account(account("alice")).await?;
        let commits = || store.submit(Kind::Read, |w| Ok(w.commits.get()));
        let before = commits().await?;
        // Hold the store thread inside a request while 500 writes queue up behind it.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let held = store.submit(Kind::Read, move |_| {
            wait.recv()
                .map_err(|_| StoreError::Backend("test gate dropped".into()))
        });
        let writes: Vec<_> = (1..=500)
            .map(|id| store.enqueue("alice".into(), msg(id, "alice")))
            .collect();
        release.send(())?;
        held.await?;
        for w in writes {
            w.await?;
        }
        // Commits since `before` was read: the batch of that read, the held request's
        // batch, and at most one more for what queued behind it (MAX_BATCH exceeds 500).
        // One fsync per write would make this about 500.
        let n = commits().await? - before;
        assert!((2..=3).contains(&n), "{n} commits");
        assert_eq!(store.pending("alice".into()).await?.len(), 500);
        Ok(())
    }

    #[tokio::test]
    async fn requests_after_close_fail_cleanly() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempdir()?;
        let store = SqliteStore::open(dir.path(), 10)?;
        let before = store.create_account(account("alice"));
        store.close();
        before.await?;
        let after = store.account("alice".into()).await;
        assert!(matches!(after, Err(StoreError::Backend(ref m)) if m.contains("closed")));
        store.close();
        Ok(())
    }

    #[test]
    fn schema_version_is_recorded() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempdir()?;
        drop(SqliteStore::open(dir.path(), 1)?);
        let conn = Connection::open(dir.path().join(DB_FILE_NAME))?;
        let v: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        assert_eq!(mode, "wal");
        Ok(())
    }
}
