//! An in-memory [`Store`]: for tests and servers that need nothing to survive a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt, ready};
use simpletextim_proto::ChatMessage;

use super::{
    Account, Conversation, HistoryPage, HistoryQuery, PageLimit, REVOCATION_KEEP, Retention,
    Revocation, RevocationKind, Store, StoreError,
};

/// Accounts, mailboxes and history in process memory. Each operation completes synchronously under
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
    history: History,
}

/// The kept history: every message by id, and the ids of each conversation.
#[derive(Debug, Default)]
struct History {
    /// Every kept message with its conversation's key, by id (so oldest id first).
    by_id: BTreeMap<u64, (String, ChatMessage)>,
    /// The ids of each conversation with kept messages, by its key.
    by_conversation: HashMap<String, BTreeSet<u64>>,
}

impl History {
    /// Keeps `message` unless its id is kept already.
    fn insert(&mut self, message: ChatMessage) {
        if self.by_id.contains_key(&message.id) {
            return;
        }
        let key = Conversation::of(&message.user_id, &message.to)
            .key()
            .to_owned();
        self.by_conversation
            .entry(key.clone())
            .or_default()
            .insert(message.id);
        self.by_id.insert(message.id, (key, message));
    }

    /// Forgets the message `id`.
    fn remove(&mut self, id: u64) {
        let Some((key, _)) = self.by_id.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_conversation.get_mut(&key) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_conversation.remove(&key);
            }
        }
    }

    fn page(&self, conversation: &Conversation, query: HistoryQuery, limit: usize) -> HistoryPage {
        let Some(ids) = self.by_conversation.get(conversation.key()) else {
            return HistoryPage::default();
        };
        // One more than the limit, in the direction asked: whether there is more.
        let mut picked: Vec<u64> = match query {
            HistoryQuery::Latest => ids.iter().rev().take(limit + 1).copied().collect(),
            HistoryQuery::Before(id) => ids.range(..id).rev().take(limit + 1).copied().collect(),
            HistoryQuery::After(id) => ids
                .range((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded))
                .take(limit + 1)
                .copied()
                .collect(),
        };
        let more = picked.len() > limit;
        picked.truncate(limit);
        if query.goes_back() {
            picked.reverse();
        }
        let messages = picked
            .iter()
            .filter_map(|id| self.by_id.get(id).map(|(_, m)| m.clone()))
            .collect();
        HistoryPage { messages, more }
    }

    /// What [`Store::prune_history`] does: the oldest ids beyond the count, then the
    /// oldest times (ties: lowest id) beyond the age, `max_rows` in all.
    fn prune(&mut self, retention: Retention, now_ms: u64, max_rows: u64) -> u64 {
        let budget = usize::try_from(max_rows).unwrap_or(usize::MAX);
        let mut deleted: usize = 0;
        if let Some(max) = retention.max_messages {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            let over = self.by_id.len().saturating_sub(max).min(budget);
            let oldest: Vec<u64> = self.by_id.keys().take(over).copied().collect();
            for id in oldest {
                self.remove(id);
                deleted += 1;
            }
        }
        if let Some(cutoff) = retention.cutoff_ms(now_ms) {
            let mut old: Vec<(u64, u64)> = self
                .by_id
                .iter()
                .filter(|(_, (_, m))| m.ts < cutoff)
                .map(|(&id, (_, m))| (m.ts, id))
                .collect();
            old.sort_unstable();
            for (_, id) in old.into_iter().take(budget - deleted) {
                self.remove(id);
                deleted += 1;
            }
        }
        deleted as u64
    }

    /// Forgets every private conversation of `user_key`.
    fn remove_user(&mut self, user_key: &str) {
        let keys: Vec<String> = self
            .by_conversation
            .keys()
            .filter(|k| {
                k.split_once('/')
                    .is_some_and(|(a, b)| a == user_key || b == user_key)
            })
            .cloned()
            .collect();
        for key in keys {
            for id in self.by_conversation.remove(&key).unwrap_or_default() {
                self.by_id.remove(&id);
            }
        }
    }
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
        // usable (a mutation cut short leaves at worst a history id without its message,
        // which pages skip), so carry on.
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
            mailbox.insert(at, message.clone());
            i.history.insert(message);
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
            i.history.remove_user(&key);
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

    fn append_history(
        &self,
        messages: Vec<ChatMessage>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.with(move |i| {
            for message in messages {
                i.max_id = i.max_id.max(message.id);
                i.history.insert(message);
            }
            Ok(())
        })
    }

    fn history(
        &self,
        conversation: Conversation,
        query: HistoryQuery,
        limit: PageLimit,
    ) -> BoxFuture<'static, Result<HistoryPage, StoreError>> {
        self.with(move |i| Ok(i.history.page(&conversation, query, limit.get())))
    }

    fn prune_history(
        &self,
        retention: Retention,
        now_ms: u64,
        max_rows: u64,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.with(move |i| Ok(i.history.prune(retention, now_ms, max_rows)))
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
