//! Flood control: a token bucket per user (not per connection), charged by `send`,
//! `history` and `list`, so that reconnecting or logging in again elsewhere (a takeover) does not refill it.
//!
//! The buckets live in a map from account key to bucket, bounded by
//! [`crate::throttle::MAX_KEYS`]. A session takes its user's bucket at login and keeps it;
//! each command then locks only that bucket (uncontended but for a takeover), never the map.
//! An entry no session holds and that has refilled to its burst is worth forgetting (a new
//! bucket would be the same): when the map is full, those are dropped first; if none is, a new
//! user gets a bucket of its own outside the map (its reconnects then start full).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use simpletextim_proto::Command;
use tokio::time::Instant;

use crate::limits::{Rate, TokenBucket};
use crate::throttle::MAX_KEYS;

/// A token bucket: `burst` commands at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained commands (tokens) per second.
    pub per_sec: f64,
    /// Commands (tokens) allowed in one burst.
    pub burst: u32,
}

impl RateLimit {
    fn rate(self) -> Rate {
        Rate {
            per_sec: self.per_sec,
            burst: f64::from(self.burst),
        }
    }
}

/// Tokens a `list` costs: its reply is O(users), built under the hub's lock.
pub const LIST_COST: u32 = 10;

/// Tokens `command` costs (`login` and `exit` cost none). A `history` page costs
/// what a message does: one indexed read of at most 200 rows, on the store thread.
///
/// `ack` costs none either: it writes to the store only when it covers private messages
/// the session was sent and not acked yet, and then deletes at least one of them, each of
/// which cost its sender a token; an ack that covers nothing (repeated, or of an id never
/// sent) touches nothing but the session's own memory. Charging it would make a client that
/// acks each message it reads pay twice for what others sent it.
fn cost(command: &Command) -> f64 {
    match command {
        Command::List => f64::from(LIST_COST),
        Command::Send { .. } | Command::History { .. } => 1.0,
        _ => 0.0,
    }
}

/// One user's bucket, shared by all of the user's sessions.
pub(crate) type UserBucket = Arc<Mutex<TokenBucket>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent (no panic between two changes):
    // a poisoned lock still guards valid data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server's flood control: the users' buckets.
#[derive(Debug)]
pub(crate) struct FloodControl {
    limit: Option<RateLimit>,
    buckets: Mutex<HashMap<String, UserBucket>>,
}

impl FloodControl {
    /// Flood control at `limit`; `None` for none.
    pub(crate) fn new(limit: Option<RateLimit>) -> FloodControl {
        FloodControl {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The bucket of the user whose account key is `key`, for a session logging in; `None`
    /// without a limit.
    pub(crate) fn bucket(&self, key: &str) -> Option<UserBucket> {
        let rate = self.limit?.rate();
        let now = Instant::now();
        let mut map = lock(&self.buckets);
        if let Some(b) = map.get(key) {
            return Some(b.clone());
        }
        let fresh = Arc::new(Mutex::new(TokenBucket::full(rate, now)));
        if map.len() >= MAX_KEYS {
            map.retain(|_, b| Arc::strong_count(b) > 1 || !lock(b).is_full(rate, now));
            if map.len() >= MAX_KEYS {
                return Some(fresh);
            }
        }
        map.insert(key.to_owned(), fresh.clone());
        Some(fresh)
    }

    /// Charges `command` to `bucket`; if it has not enough tokens, how long until it will.
    pub(crate) fn charge(&self, bucket: &UserBucket, command: &Command) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let cost = cost(command);
        if cost == 0.0 {
            return Ok(());
        }
        lock(bucket).take(limit.rate(), cost, Instant::now())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.buckets).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_sessions_share_one_bucket_and_list_costs_more() {
        let flood = FloodControl::new(Some(RateLimit {
            per_sec: 0.001,
            burst: 12,
        }));
        let first = flood.bucket("alice").expect("a limit");
        let again = flood.bucket("alice").expect("a limit");
        assert!(Arc::ptr_eq(&first, &again));
        let send = Command::Send {
            to: simpletextim_proto::Recipient::Everyone,
            message: simpletextim_proto::MessageText::new("hi").expect("valid text"),
        };
        assert_eq!(flood.charge(&first, &Command::List), Ok(()));
        assert_eq!(flood.charge(&again, &send), Ok(()));
        assert_eq!(flood.charge(&first, &send), Ok(()));
        assert!(flood.charge(&again, &send).is_err());
        // Others have their own.
        let bob = flood.bucket("bob").expect("a limit");
        assert_eq!(flood.charge(&bob, &Command::List), Ok(()));
        assert_eq!(flood.charge(&bob, &Command::Exit), Ok(()));
        assert_eq!(flood.len(), 2);
    }

    #[test]
    fn without_a_limit_there_are_no_buckets() {
        let flood = FloodControl::new(None);
        assert!(flood.bucket("alice").is_none());
        assert_eq!(flood.len(), 0);
    }
}
