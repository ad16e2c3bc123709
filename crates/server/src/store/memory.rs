//! An in-memory [`Store`]: for tests and servers that need nothing to survive a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt, ready};
use simpletextim_proto::ChatMessage;

use super::{Account, REVOCATION_KEEP, Revocation, RevocationKind, Store, StoreError};

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
    /// Oldest first; none older than [`REVOCATION_KEEP`] after a revocation is recorded.
    revocations: VecDeque<Revocation>,
    last_revocation_id: u64,
}

impl Inner {
    /// Records that `key`'s sessions must end (under the store's one lock, so every lookup
    /// after this sees the change) and forgets revocations older than [`REVOCATION_KEEP`].
    fn revoke(&mut self, key: String, kind: RevocationKind) {
        let at_ms = crate::now_ms();
        self.last_revocation_id += 1;
        self.revocations.push_back(Revocation {
            id: self.last_revocation_id,
            key,
            at_ms,
            kind,
        });
        let keep = u64::try_from(REVOCATION_KEEP.as_millis()).unwrap_or(u64::MAX);
        let oldest = at_ms.saturating_sub(keep);
        while self.revocations.front().is_some_and(|r| r.at_ms < oldest) {
            self.revocations.pop_front();
        }
    }
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

    fn set_password_hash(
        &self,
        key: String,
        password_hash: String,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.with(move |i| {
            let account = i
                .accounts
                .get_mut(&key)
                .ok_or_else(|| StoreError::NoSuchUser(key.clone()))?;
            account.password_hash = password_hash;
            i.revoke(key, RevocationKind::PasswordChanged);
            Ok(())
        })
    }

    fn delete_account(&self, key: String) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.with(move |i| {
            if i.accounts.remove(&key).is_none() {
                return Err(StoreError::NoSuchUser(key));
            }
            let dropped = i.mailboxes.remove(&key).map_or(0, |m| m.len() as u64);
            i.revoke(key, RevocationKind::AccountDeleted);
            Ok(dropped)
        })
    }

    fn revocations_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Revocation>, StoreError>> {
        self.with(move |i| {
            // Ids increase from front to back.
            let from = i.revocations.partition_point(|r| r.id <= after_id);
            Ok(i.revocations
                .iter()
                .skip(from)
                .take(limit)
                .cloned()
                .collect())
        })
    }

    fn last_revocation_id(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.with(|i| Ok(i.last_revocation_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use simpletextim_proto::UserId;

    fn account(name: &str) -> Account {
        Account {
            user_id: UserId::new(name).expect("valid id"),
            password_hash: "hash".into(),
            created_ms: 1,
        }
    }

    #[test]
    fn changes_and_deletions_record_revocations_and_refusals_do_not() {
        let store = MemoryStore::new(10);
        block_on(async {
            store.create_account(account("alice")).await?;
            store.create_account(account("bob")).await?;
            let r = store.set_password_hash("nobody".into(), "x".into()).await;
            assert!(matches!(r, Err(StoreError::NoSuchUser(_))), "{r:?}");
            store
                .set_password_hash("alice".into(), "new".into())
                .await?;
            assert_eq!(
                store
                    .account("alice".into())
                    .await?
                    .map(|a| a.password_hash),
                Some("new".into())
            );
            assert_eq!(store.delete_account("bob".into()).await?, 0);
            let r = store.delete_account("bob".into()).await;
            assert!(matches!(r, Err(StoreError::NoSuchUser(_))), "{r:?}");
            let all = store.revocations_after(0, 10).await?;
            let got: Vec<_> = all.iter().map(|r| (r.id, r.key.as_str(), r.kind)).collect();
            assert_eq!(
                got,
                [
                    (1, "alice", RevocationKind::PasswordChanged),
                    (2, "bob", RevocationKind::AccountDeleted)
                ]
            );
            assert_eq!(store.revocations_after(0, 1).await?, all[..1].to_vec());
            assert_eq!(store.revocations_after(1, 10).await?, all[1..].to_vec());
            assert_eq!(store.last_revocation_id().await?, 2);
            Ok::<(), StoreError>(())
        })
        .expect("store operations succeed");
    }
}
