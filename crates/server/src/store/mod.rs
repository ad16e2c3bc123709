//! Persistence: accounts and the offline mailbox, behind the [`Store`] trait.
//!
//! [`MemoryStore`] keeps everything in memory (tests, throw-away servers); the embedded
//! SQLite store is the durable default.
//!
//! **Ordering contract.** Every method starts its operation when it is *called* and returns
//! a future that only waits for the outcome. Operations take effect in the order their
//! methods were called. The hub relies on this: it calls [`Store::enqueue`] for an offline
//! recipient while it still holds its membership lock, so a login that registers afterwards
//! and then calls [`Store::pending`] is guaranteed to see the message.

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::{AccountInfo, DB_FILE_NAME, OpenError, SCHEMA_VERSION, SqliteStore};

use futures::future::BoxFuture;
use simpletextim_proto::{ChatMessage, UserId};

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

/// Accounts and offline messages. Keys are case-folded user ids ([`UserId::key`]).
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

    /// Stores a private message for the offline user `recipient_key`. Durable when the
    /// future resolves.
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
}
