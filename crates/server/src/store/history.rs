//! The types of kept history: which conversation, which page of it, and how long it is kept.
//!
//! Every public and private message is kept with its id, sender, recipient, text and time
//! (see [`Store::append_history`](super::Store::append_history)), grouped by
//! [`Conversation`]: the public one, or the pair of users of a private one (both
//! directions). A client reads it a page at a time ([`HistoryQuery`], [`PageLimit`],
//! [`HistoryPage`]); the operator decides how much is kept ([`Retention`]).

use std::fmt;
use std::time::Duration;

use simpletextim_proto::{Recipient, UserId};

/// `u`'s key ([`UserId::key`]), byte by byte, without building it.
fn folded(u: &UserId) -> impl Iterator<Item = u8> + '_ {
    u.as_str().bytes().map(|c| c.to_ascii_lowercase())
}

/// The key of the public conversation.
const PUBLIC_KEY: &str = "*";

/// One conversation of the kept history: the public one, or the private one between two
/// users (both directions, whatever the spelling of their ids).
///
/// Its [`key`](Conversation::key) is what the store indexes: `*` for the public one; for a
/// private one the two users' case-folded keys ([`UserId::key`]) sorted and joined with
/// `/` (user ids never contain `/` nor `*`), so `Conversation::between(Bob, alice)` is
/// `alice/bob`. A user talking to themself has the conversation `alice/alice`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Conversation {
    key: String,
}

impl Conversation {
    /// The public conversation.
    pub fn public() -> Conversation {
        Conversation {
            key: PUBLIC_KEY.to_owned(),
        }
    }

    /// The private conversation between `a` and `b`, in either order.
    pub fn between(a: &UserId, b: &UserId) -> Conversation {
        // Compared and joined as their keys without building them: one allocation, as the
        // store makes one of these for every private message it keeps.
        let (first, second) = if folded(a).le(folded(b)) {
            (a, b)
        } else {
            (b, a)
        };
        let (first, second) = (first.as_str(), second.as_str());
        let mut key = String::with_capacity(first.len() + 1 + second.len());
        key.push_str(first);
        key.push('/');
        key.push_str(second);
        key.make_ascii_lowercase();
        Conversation { key }
    }

    /// The conversation `asker` asks for with the `with` of a `history` command: `*` is
    /// the public one, a user the private one between `asker` and that user.
    pub fn with(asker: &UserId, with: &Recipient) -> Conversation {
        match with {
            Recipient::Everyone => Conversation::public(),
            Recipient::User(other) => Conversation::between(asker, other),
        }
    }

    /// The conversation a message from `sender` to `to` belongs to.
    pub fn of(sender: &UserId, to: &Recipient) -> Conversation {
        Conversation::with(sender, to)
    }

    /// Whether this is the public conversation.
    pub fn is_public(&self) -> bool {
        self.key == PUBLIC_KEY
    }

    /// The key the store indexes it by (see the type's documentation).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The two users' keys of a private conversation, `None` for the public one.
    pub fn users(&self) -> Option<(&str, &str)> {
        self.key.split_once('/')
    }

    /// Whether `user_key` (a [`UserId::key`]) is one of the two users of this private
    /// conversation; never for the public one.
    pub fn involves(&self, user_key: &str) -> bool {
        self.users()
            .is_some_and(|(a, b)| a == user_key || b == user_key)
    }
}

impl fmt::Display for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// Which page of a conversation a `history` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HistoryQuery {
    /// The newest messages.
    Latest,
    /// The newest messages with an id below this one (paging back from the oldest message
    /// a client holds).
    Before(u64),
    /// The oldest messages with an id above this one (catching up from the newest message
    /// a client holds).
    After(u64),
}

impl HistoryQuery {
    /// Whether [`HistoryPage::more`] of this query looks at older messages (`Latest`,
    /// `Before`) rather than newer ones (`After`).
    pub fn goes_back(self) -> bool {
        !matches!(self, HistoryQuery::After(_))
    }
}

/// How many messages one history page holds at most: 1 to [`PageLimit::MAX`], by default
/// [`PageLimit::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageLimit(u8);

impl PageLimit {
    /// The largest page: 200 messages.
    pub const MAX: PageLimit = PageLimit(200);
    /// The page of a request that names no limit: 50 messages.
    pub const DEFAULT: PageLimit = PageLimit(50);

    /// `n` as a limit, `None` unless `1 <= n <= 200`.
    pub fn new(n: u64) -> Option<PageLimit> {
        u8::try_from(n)
            .ok()
            .filter(|&n| (1..=Self::MAX.0).contains(&n))
            .map(PageLimit)
    }

    /// The number of messages.
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

impl Default for PageLimit {
    fn default() -> PageLimit {
        PageLimit::DEFAULT
    }
}

/// One page of a conversation's kept history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// At most the asked [`PageLimit`] of messages, oldest (lowest id) first.
    pub messages: Vec<simpletextim_proto::ChatMessage>,
    /// Exactly whether the kept history goes on past this page in the direction asked:
    /// older messages for [`HistoryQuery::Latest`] and [`HistoryQuery::Before`], newer ones
    /// for [`HistoryQuery::After`]. A store finds it by reading one message more than the
    /// limit.
    pub more: bool,
}

/// How much history a store keeps: a message is pruned once it is older than `max_age`
/// *or* once more than `max_messages` newer ones are kept (`None`: no such limit).
///
/// The default keeps [`Retention::DEFAULT_DAYS`] (90) days and at most
/// [`Retention::DEFAULT_MAX_MESSAGES`] (1 000 000) messages in all: a small community's
/// three months, in a few hundred MB of disk at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages whose `ts` is older than this are pruned.
    pub max_age: Option<Duration>,
    /// At most this many messages are kept (all conversations together); the oldest
    /// (lowest ids) go first.
    pub max_messages: Option<u64>,
}

impl Retention {
    /// Days of history kept by default.
    pub const DEFAULT_DAYS: u64 = 90;
    /// Messages kept at most by default.
    pub const DEFAULT_MAX_MESSAGES: u64 = 1_000_000;
    /// Keep everything (no pruning).
    pub const FOREVER: Retention = Retention {
        max_age: None,
        max_messages: None,
    };

    /// A retention of `days` days and no count limit.
    pub fn days(days: u64) -> Retention {
        Retention {
            max_age: Some(Duration::from_secs(days.saturating_mul(24 * 60 * 60))),
            max_messages: None,
        }
    }

    /// The `ts` below which a message is too old at `now_ms`, if there is an age limit
    /// (0 when the limit reaches back before 1970: nothing is too old).
    pub fn cutoff_ms(&self, now_ms: u64) -> Option<u64> {
        self.max_age.map(|age| {
            let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            now_ms.saturating_sub(age)
        })
    }
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_age: Some(Duration::from_secs(Self::DEFAULT_DAYS * 24 * 60 * 60)),
            max_messages: Some(Self::DEFAULT_MAX_MESSAGES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new(s).expect("valid test id")
    }

    #[test]
    fn conversation_keys_are_case_folded_and_sorted() {
        let ab = Conversation::between(&uid("Bob"), &uid("alice"));
        assert_eq!(ab.key(), "alice/bob");
        assert_eq!(ab, Conversation::between(&uid("ALICE"), &uid("bob")));
        assert_eq!(ab.users(), Some(("alice", "bob")));
        assert!(ab.involves("bob"));
        assert!(!ab.involves("carol"));
        assert_eq!(
            Conversation::with(&uid("bob"), &Recipient::User(uid("Alice"))),
            ab
        );
        let public = Conversation::with(&uid("bob"), &Recipient::Everyone);
        assert_eq!(public.key(), "*");
        assert!(public.is_public());
        assert!(!public.involves("*"));
        assert_eq!(public.users(), None);
        assert_eq!(
            Conversation::between(&uid("x"), &uid("X")).key(),
            "x/x",
            "a note to oneself"
        );
    }

    #[test]
    fn page_limits_are_1_to_200() {
        assert_eq!(PageLimit::new(0), None);
        assert_eq!(PageLimit::new(1).map(PageLimit::get), Some(1));
        assert_eq!(PageLimit::new(200).map(PageLimit::get), Some(200));
        assert_eq!(PageLimit::new(201), None);
        assert_eq!(PageLimit::new(256 + 50), None);
        assert_eq!(PageLimit::default().get(), 50);
    }

    #[test]
    fn retention_defaults_and_cutoff() {
        let r = Retention::default();
        assert_eq!(r.max_age, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(r.max_messages, Some(1_000_000));
        assert_eq!(Retention::days(1).cutoff_ms(86_400_000 + 5), Some(5));
        assert_eq!(Retention::days(1).cutoff_ms(5), Some(0));
        assert_eq!(Retention::FOREVER.cutoff_ms(5), None);
    }
}
