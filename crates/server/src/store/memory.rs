//! An in-memory [`Store`]: for tests and servers that need nothing to survive a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt, ready};
use simpletextim_proto::ChatMessage;

use super::{Account, Store, StoreError};

/// Accounts and mailboxes in process memory. Each operation completes synchronously under
/// one lock, so the ordering contract of [`Store`] holds trivially.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    mailbox_cap: usize,
}

#[derive(Debug, Default)]
struct Inner {
    accounts: HashMap<String, Account>,
    mailboxes: HashMap<String, VecDeque<ChatMessage>>,
    max_id: u64,
}

impl MemoryStore {
    /// An empty store whose mailboxes hold at most `mailbox_cap` messages each.
    pub fn new(mailbox_cap: usize) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            mailbox_cap,
        }
    }

    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError>,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        // A poisoned lock means a panic while mutating plain maps; the data is still
        // consistent (every mutation is a single insert/remove), so carry on.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        ready(f(&mut inner)).boxed()
    }
}

impl Store for MemoryStore {
    fn account(&self, key: String) -> BoxFuture<'static, Result<Option<Account>, StoreError>> {
        self.with(move |i| Ok(i.accounts.get(&key).cloned()))
    }

    fn create_account(&self, account: Account) -> BoxFuture<'static, Result<(), StoreError>> {
        self.with(move |i| {
            let key = account.user_id.key();
            if i.accounts.contains_key(&key) {
                return Err(StoreError::AccountExists(account.user_id.to_string()));
            }
            i.accounts.insert(key, account);
            Ok(())
        })
    }

    fn enqueue(
        &self,
        recipient_key: String,
        message: ChatMessage,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let cap = self.mailbox_cap;
        self.with(move |i| {
            if !i.accounts.contains_key(&recipient_key) {
                return Err(StoreError::NoSuchUser(recipient_key));
            }
            let mailbox = i.mailboxes.entry(recipient_key.clone()).or_default();
            if mailbox.len() >= cap {
                return Err(StoreError::MailboxFull(recipient_key));
            }
            i.max_id = i.max_id.max(message.id);
            // Oldest (lowest id) first, even for a message kept with an older id.
            let at = mailbox.partition_point(|m| m.id < message.id);
            mailbox.insert(at, message);
            Ok(())
        })
    }

    fn pending(&self, key: String) -> BoxFuture<'static, Result<Vec<ChatMessage>, StoreError>> {
        self.with(move |i| {
            // No mailbox (it is removed when emptied): nothing waits.
            Ok(i.mailboxes
                .get(&key)
                .map_or_else(Vec::new, |m| m.iter().cloned().collect()))
        })
    }

    fn delete_delivered(
        &self,
        key: String,
        mut ids: Vec<u64>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        ids.sort_unstable();
        self.with(move |i| {
            if let Some(m) = i.mailboxes.get_mut(&key) {
                m.retain(|msg| ids.binary_search(&msg.id).is_err());
                if m.is_empty() {
                    i.mailboxes.remove(&key);
                }
            }
            Ok(())
        })
    }

    fn max_message_id(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.with(|i| Ok(i.max_id))
    }
}
