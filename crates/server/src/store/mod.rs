//! Persistence: accounts, the offline mailbox and the kept history, behind the [`Store`]
//! trait.
//!
//! [`MemoryStore`] keeps everything in memory (tests, throw-away servers); the embedded
//! SQLite store is the durable default; [`PostgresStore`] keeps the record in a PostgreSQL
//! database that several processes share (`--database`).
//!
//! **Ordering contract.** Every method starts its operation when it is *called* and returns
//! a future that only waits for the outcome. Operations take effect in the order their
//! methods were called. The hub relies on this: it calls [`Store::enqueue`] for an offline
//! recipient while it still holds its membership lock, so a login that registers afterwards
//! and then calls [`Store::pending`] is guaranteed to see the message.
//!
//! **Revocations.** Changing a password or deleting an account (the administration
//! commands, often another process on the same database) also records a [`Revocation`], in
//! the same transaction. A running server polls [`Store::revocations_after`] and ends the
//! sessions that logged in before it (see [`Revocation::at_ms`] for the rule that makes this
//! race-free).
//!
//! **History.** Every public and private message is kept per [`Conversation`] until the
//! operator's [`Retention`] prunes it ([`Store::append_history`], [`Store::history`],
//! [`Store::prune_history`]). The live path does not wait for it: [`HistoryWriter`] hands
//! messages to the store in group commits, and [`run_retention`] prunes in the background.
//! A private message to an offline user is the exception: [`Store::enqueue`] writes its
//! history row in the transaction of its mailbox row, before the sender's echo.

mod history;
mod memory;
mod postgres;
mod rows;
mod sqlite;
mod writer;

pub use history::{Conversation, HistoryPage, HistoryQuery, PageLimit, Retention};
pub use memory::MemoryStore;
pub use postgres::{
    DatabaseUrl, MIGRATION_LOCK, Migrated, PG_SCHEMA_VERSION, PgError, PgOptions, PostgresStore,
};
pub use sqlite::{AccountInfo, DB_FILE_NAME, OpenError, SCHEMA_VERSION, SqliteStore};
pub use writer::{
    HISTORY_BACKLOG, HISTORY_BATCH, HISTORY_QUEUE, HistoryPermit, HistoryStats, HistoryWriter,
    PRUNE_BATCH, ReserveError, run_retention,
};

use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, ready};
use simpletextim_proto::{ChatMessage, UserId};

/// How long a store keeps a [`Revocation`]: older ones are pruned by the next write that
/// records one. A running server reads them within seconds; a day leaves room for a server
/// whose store failed for a while.
pub const REVOCATION_KEEP: Duration = Duration::from_secs(24 * 60 * 60);

/// Why an account's sessions must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// Its password was changed.
    PasswordChanged,
    /// It was deleted (with its mailbox).
    AccountDeleted,
}

/// A record that an account's password was changed or the account deleted, so that a
/// running server ends the sessions that logged in with the old credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Increases with every revocation a store records, and is never reused (not even
    /// after old revocations are pruned).
    pub id: u64,
    /// The account's key ([`UserId::key`]).
    pub key: String,
    /// Unix milliseconds such that every account lookup of this store that *started*
    /// later sees the change, and every lookup that saw the account as it was before
    /// started earlier (the SQLite store takes it inside the write transaction, which no
    /// lookup of the server overlaps; the PostgreSQL store once the change has locked the
    /// account row, which its lookups read `FOR SHARE`). So a session whose login looked the account up at
    /// or before `at_ms` may hold the old credentials; one after it cannot.
    pub at_ms: u64,
    /// What happened.
    pub kind: RevocationKind,
}

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The id as spelled when the account was created.
    pub user_id: UserId,
    /// The Argon2id hash of the password, as a PHC string.
    pub password_hash: String,
    /// When the account was created, in Unix milliseconds.
    pub created_ms: u64,
}

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The recipient has no account.
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// The recipient's mailbox holds the maximum number of messages already.
    #[error("mailbox of {0} is full")]
    MailboxFull(String),
    /// The account exists already.
    #[error("user {0} exists already")]
    AccountExists(String),
    /// The storage backend failed (disk full, I/O error, corrupt database…).
    #[error("storage failure: {0}")]
    Backend(String),
}

/// Accounts, offline messages and the kept history. Keys are case-folded user ids
/// ([`UserId::key`]).
///
/// See the module documentation for the ordering contract every implementation keeps.
pub trait Store: Send + Sync + 'static {
    /// The account of `key`, if any.
    fn account(&self, key: String) -> BoxFuture<'static, Result<Option<Account>, StoreError>>;

    /// Creates an account. Durable when the future resolves.
    ///
    /// Fails with [`StoreError::AccountExists`] when the key is taken (two first logins
    /// racing for one id: the loser then verifies against the winner's password).
    fn create_account(&self, account: Account) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Stores a private message for the offline user `recipient_key`, and its history row
    /// (as [`Store::append_history`] would: kept once per id, so storing again a message
    /// that a cut-off session still held adds no second row) in the same transaction.
    /// Durable when the future resolves.
    ///
    /// Fails with [`StoreError::NoSuchUser`] when the recipient has no account and with
    /// [`StoreError::MailboxFull`] when the mailbox is at its cap; nothing is stored then.
    fn enqueue(
        &self,
        recipient_key: String,
        message: ChatMessage,
    ) -> BoxFuture<'static, Result<(), StoreError>>;

    /// The messages waiting for `key`, oldest first. They stay stored until
    /// [`Store::delete_delivered`].
    fn pending(&self, key: String) -> BoxFuture<'static, Result<Vec<ChatMessage>, StoreError>>;

    /// Deletes the messages of `key` with these ids (the ones a login acknowledgement
    /// carried, once it has been written to the socket). Exactly those: a message stored
    /// meanwhile with a lower id (one a slow consumer's session kept when it was cut off)
    /// stays for the next login. Ids that are not there are ignored.
    fn delete_delivered(
        &self,
        key: String,
        ids: Vec<u64>,
    ) -> BoxFuture<'static, Result<(), StoreError>>;

    /// The highest message id ever stored, counting messages since delivered and deleted
    /// (0 when none), so ids keep increasing across restarts.
    fn max_message_id(&self) -> BoxFuture<'static, Result<u64, StoreError>>;

    /// Replaces the password hash (a PHC string) of the account `key` and records a
    /// [`RevocationKind::PasswordChanged`] revocation, in one transaction.
    ///
    /// The default refuses: a store that supports administration overrides it.
    ///
    /// # Errors
    /// [`StoreError::NoSuchUser`] when there is no such account (nothing is recorded);
    /// [`StoreError::Backend`] when the store fails.
    fn set_password_hash(
        &self,
        key: String,
        password_hash: String,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let _ = (key, password_hash);
        ready(Err(unsupported("changing a password"))).boxed()
    }

    /// Deletes the account `key`, its offline mailbox and its private history (every
    /// private conversation it took part in, both directions; the other users lose their
    /// side of it too, and its public messages stay) and records a
    /// [`RevocationKind::AccountDeleted`] revocation, in one transaction; returns how many
    /// messages the mailbox held. The message-id high-water mark is kept.
    ///
    /// Private messages of the account that a [`HistoryWriter`] still holds (the last few
    /// milliseconds before the deletion) are written after it.
    ///
    /// The default refuses: a store that supports administration overrides it.
    ///
    /// # Errors
    /// [`StoreError::NoSuchUser`] when there is no such account (nothing is recorded);
    /// [`StoreError::Backend`] when the store fails.
    fn delete_account(&self, key: String) -> BoxFuture<'static, Result<u64, StoreError>> {
        let _ = key;
        ready(Err(unsupported("deleting an account"))).boxed()
    }

    /// The revocations with an id above `after_id`, lowest id first, at most `limit` of
    /// them (call again from the last id for more). Revocations older than
    /// [`REVOCATION_KEEP`] may be gone.
    ///
    /// The default has none: a store that nothing revokes in (a test double).
    fn revocations_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Revocation>, StoreError>> {
        let _ = (after_id, limit);
        ready(Ok(Vec::new())).boxed()
    }

    /// An id at least as high as every revocation recorded so far (0 when none): a server
    /// starts polling [`Store::revocations_after`] from it.
    ///
    /// The default is 0, as [`Store::revocations_after`] has none.
    fn last_revocation_id(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        ready(Ok(0)).boxed()
    }

    /// Keeps `messages` in the history of their conversations ([`Conversation::of`] their
    /// sender and recipient), all in one transaction: all are kept or none. A message whose
    /// id is kept already is skipped (so writing one twice is harmless). Raises the
    /// message-id high-water mark of [`Store::max_message_id`] to their highest id.
    ///
    /// The default keeps nothing: a store without history (a test double).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store fails (nothing of the call is kept).
    fn append_history(
        &self,
        messages: Vec<ChatMessage>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let _ = messages;
        ready(Ok(())).boxed()
    }

    /// One page of the kept history of `conversation`: at most `limit` messages, oldest
    /// first, chosen by `query`, with [`HistoryPage::more`] exact.
    ///
    /// The default has none: an empty page.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store fails.
    fn history(
        &self,
        conversation: Conversation,
        query: HistoryQuery,
        limit: PageLimit,
    ) -> BoxFuture<'static, Result<HistoryPage, StoreError>> {
        let _ = (conversation, query, limit);
        ready(Ok(HistoryPage::default())).boxed()
    }

    /// Deletes at most `max_rows` kept messages that `retention` no longer keeps at
    /// `now_ms` (Unix milliseconds): first the oldest (lowest ids) beyond
    /// [`Retention::max_messages`], then the oldest (lowest `ts`) older than
    /// [`Retention::max_age`]. One short transaction, so a background task calls it
    /// repeatedly until it returns less than `max_rows` (see [`run_retention`]). Returns
    /// how many it deleted.
    ///
    /// The default has nothing to delete.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store fails (nothing is deleted).
    fn prune_history(
        &self,
        retention: Retention,
        now_ms: u64,
        max_rows: u64,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let _ = (retention, now_ms, max_rows);
        ready(Ok(0)).boxed()
    }
}

fn unsupported(what: &str) -> StoreError {
    StoreError::Backend(format!("{what} is not supported by this store"))
}
