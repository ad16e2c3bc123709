//! Login throttling: after a few failed logins for one account, or from one source address,
//! further attempts are refused (`fail 429`, with when to try again) without being hashed,
//! for a time that doubles with each further failure.
//!
//! Two counters, in memory (a restart forgets them):
//! - **per source address** (an IPv4 address, or an IPv6 /64: one host or one site), against
//!   one attacker guessing many accounts;
//! - **per account**, against many addresses guessing one account. So that an attacker
//!   cannot lock the real user out, an address that logged in to the account successfully
//!   (one of its last [`KNOWN_PER_ACCOUNT`]) is not held back by the account's counter, only
//!   by its own.
//!
//! The schedule (fail2ban's and Ergo's idea: a small burst, then exponential back-off):
//! after `free` failures, each further attempt waits `base × 2^(failures − free)`, at most
//! `max`, counted from the last failure; a key with no failure for `forget` starts again.
//! A success clears nothing: an attacker owning one account must not reset its address's
//! counter by logging in to it.
//!
//! Memory is bounded: at most [`MAX_KEYS`] keys of each kind; when full, forgotten keys are
//! dropped, and if none is, a new key is not tracked (its attempts go through, each still
//! hashed and each address still counted).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Most keys of each kind tracked at once.
pub const MAX_KEYS: usize = 100_000;
/// Addresses remembered per account as having logged in to it.
pub const KNOWN_PER_ACCOUNT: usize = 4;

/// One counter's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Failures allowed before any wait.
    pub free: u32,
    /// The first wait; each further failure doubles it.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
    /// A key with no failure for this long starts again.
    pub forget: Duration,
}

/// The schedules of both counters, and the logins one address may have in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failed logins from one source address.
    pub per_address: Backoff,
    /// Failed logins for one account.
    pub per_account: Backoff,
    /// Logins from one source address waiting to be checked at once (one per connection):
    /// more get `fail 503`, so that one address cannot fill the login queue.
    pub in_flight_per_address: u32,
}

impl Default for ThrottlePolicy {
    /// 10 failures from an address and 5 for an account go through; then waits of 1 s,
    /// 2 s, 4 s … up to 10 minutes; forgotten after an hour without a failure. A person
    /// mistyping a password never waits; one address guessing gets about 20 guesses in
    /// its first half hour and 6 an hour after that. 4 logins in progress per address.
    fn default() -> ThrottlePolicy {
        ThrottlePolicy {
            per_address: Backoff {
                free: 10,
                base: Duration::from_secs(1),
                max: Duration::from_secs(600),
                forget: Duration::from_secs(3600),
            },
            per_account: Backoff {
                free: 5,
                base: Duration::from_secs(1),
                max: Duration::from_secs(600),
                forget: Duration::from_secs(3600),
            },
            in_flight_per_address: 4,
        }
    }
}

/// Failures of one key.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    /// Until when the next attempt must wait, if it must.
    fn wait_until(&self, b: &Backoff, now: Instant) -> Option<Instant> {
        if now.duration_since(self.last) >= b.forget || self.count < b.free {
            return None;
        }
        let doublings = (self.count - b.free).min(31);
        let wait = b.base.saturating_mul(1 << doublings).min(b.max);
        let until = self.last + wait;
        (until > now).then_some(until)
    }
}

#[derive(Debug, Default)]
struct State {
    addresses: HashMap<IpAddr, Failures>,
    accounts: HashMap<String, Failures>,
    /// Per account key, the addresses that last logged in to it, newest last. Boxed
    /// slices, not `String` and `Vec`: an entry for every account that logged in, so
    /// 32 bytes a slot rather than 48.
    known: HashMap<Box<str>, Box<[IpAddr]>>,
    /// Logins in progress per address (no entry: none).
    in_flight: HashMap<IpAddr, u32>,
}

/// The login throttle of a server.
#[derive(Debug)]
pub struct LoginThrottle {
    policy: ThrottlePolicy,
    state: Mutex<State>,
}

impl LoginThrottle {
    /// A throttle with nothing counted yet.
    pub fn new(policy: ThrottlePolicy) -> LoginThrottle {
        LoginThrottle {
            policy,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent: a panic cannot leave them
        // half-changed, so a poisoned lock still guards valid data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a login for `account` (case-folded) from `addr` may be tried now; if not,
    /// how long until it may.
    pub fn check(&self, addr: IpAddr, account: &str, now: Instant) -> Result<(), Duration> {
        let addr = prefix(addr);
        let s = self.lock();
        let by_address = s
            .addresses
            .get(&addr)
            .and_then(|f| f.wait_until(&self.policy.per_address, now));
        let known = s.known.get(account).is_some_and(|k| k.contains(&addr));
        let by_account = if known {
            None
        } else {
            s.accounts
                .get(account)
                .and_then(|f| f.wait_until(&self.policy.per_account, now))
        };
        match by_address.max(by_account) {
            Some(until) => Err(until - now),
            None => Ok(()),
        }
    }

    /// Counts a failed login (a wrong password, or an unknown user id).
    pub fn failed(&self, addr: IpAddr, account: &str, now: Instant) {
        let addr = prefix(addr);
        let mut s = self.lock();
        let policy = self.policy;
        count(&mut s.addresses, addr, &policy.per_address, now);
        count(
            &mut s.accounts,
            account.to_owned(),
            &policy.per_account,
            now,
        );
    }

    /// Takes one of `addr`'s places for a login in progress; `false` when it has none
    /// left. Give it back with [`LoginThrottle::end`].
    pub fn begin(&self, addr: IpAddr) -> bool {
        let addr = prefix(addr);
        let mut s = self.lock();
        let n = s.in_flight.entry(addr).or_insert(0);
        if *n >= self.policy.in_flight_per_address {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a place taken by [`LoginThrottle::begin`].
    pub fn end(&self, addr: IpAddr) {
        let addr = prefix(addr);
        let mut s = self.lock();
        if let Some(n) = s.in_flight.get_mut(&addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.in_flight.remove(&addr);
            }
        }
    }

    /// Remembers that `addr` logged in to `account`: the account's counter no longer holds
    /// it back.
    pub fn succeeded(&self, addr: IpAddr, account: &str) {
        let addr = prefix(addr);
        let mut s = self.lock();
        if let Some(known) = s.known.get_mut(account) {
            if known.last() == Some(&addr) {
                return;
            }
            let mut list: Vec<IpAddr> = known.iter().copied().filter(|a| *a != addr).collect();
            if list.len() == KNOWN_PER_ACCOUNT {
                list.remove(0);
            }
            list.push(addr);
            *known = list.into_boxed_slice();
        } else if s.known.len() < MAX_KEYS {
            s.known.insert(account.into(), Box::new([addr]));
        }
    }
}

/// Adds a failure to `key`'s counter, starting it again if it was forgotten. A full map
/// first drops its forgotten keys; if it is still full, a new key is not tracked.
fn count<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Failures>,
    key: K,
    b: &Backoff,
    now: Instant,
) {
    if map.len() >= MAX_KEYS && !map.contains_key(&key) {
        map.retain(|_, f| now.duration_since(f.last) < b.forget);
        if map.len() >= MAX_KEYS {
            return;
        }
    }
    let f = map.entry(key).or_insert(Failures {
        count: 0,
        last: now,
    });
    if now.duration_since(f.last) >= b.forget {
        f.count = 0;
    }
    f.count = f.count.saturating_add(1);
    f.last = now;
}

/// The part of an address that identifies one client: an IPv4 address, an IPv6 /64 (an
/// IPv4-mapped IPv6 address counts as its IPv4 address).
pub(crate) fn prefix(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        let b = |free| Backoff {
            free,
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
            forget: Duration::from_secs(60),
        };
        ThrottlePolicy {
            per_address: b(4),
            per_account: b(2),
            in_flight_per_address: 2,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid address")
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn an_account_waits_after_its_free_failures_doubling_up_to_the_max() {
        let t = LoginThrottle::new(policy());
        let t0 = Instant::now();
        // Each failure from another address, so only the account's counter counts.
        let now = t0;
        for (i, wait) in [0, 0, 1, 2, 4, 8, 8].into_iter().enumerate() {
            let expected = if wait == 0 { Ok(()) } else { Err(SEC * wait) };
            assert_eq!(t.check(ip(&format!("10.0.0.{i}")), "alice", now), expected);
            t.failed(ip(&format!("10.0.0.{i}")), "alice", now);
        }
        // The wait counts from the last failure.
        let last = now;
        assert_eq!(
            t.check(ip("10.0.1.1"), "alice", last + 3 * SEC),
            Err(5 * SEC)
        );
        assert_eq!(t.check(ip("10.0.1.1"), "alice", last + 8 * SEC), Ok(()));
        // Other accounts are not held back.
        assert_eq!(t.check(ip("10.0.1.1"), "bob", now), Ok(()));
    }

    #[test]
    fn an_address_waits_after_its_free_failures_whatever_the_account() {
        let t = LoginThrottle::new(policy());
        let now = Instant::now();
        for i in 0..4 {
            assert_eq!(t.check(ip("192.0.2.7"), &format!("user{i}"), now), Ok(()));
            t.failed(ip("192.0.2.7"), &format!("user{i}"), now);
        }
        assert_eq!(t.check(ip("192.0.2.7"), "someone-else", now), Err(SEC));
        assert_eq!(t.check(ip("192.0.2.8"), "someone-else", now), Ok(()));
    }

    #[test]
    fn a_known_address_is_not_held_back_by_its_accounts_counter() {
        let t = LoginThrottle::new(policy());
        let now = Instant::now();
        t.succeeded(ip("198.51.100.1"), "alice");
        for i in 0..3 {
            t.failed(ip(&format!("203.0.113.{i}")), "alice", now);
        }
        assert_eq!(t.check(ip("203.0.113.9"), "alice", now), Err(2 * SEC));
        assert_eq!(t.check(ip("198.51.100.1"), "alice", now), Ok(()));
    }

    #[test]
    fn an_account_knows_the_last_four_addresses_that_logged_in_to_it() {
        let t = LoginThrottle::new(policy());
        let now = Instant::now();
        for i in 1..=5 {
            t.succeeded(ip(&format!("198.51.100.{i}")), "alice");
        }
        // .1 was pushed out by .5; logging in again from .2 makes it the newest, so .3 is
        // the one pushed out by .6.
        t.succeeded(ip("198.51.100.2"), "alice");
        t.succeeded(ip("198.51.100.6"), "alice");
        t.succeeded(ip("198.51.100.6"), "alice");
        for i in 0..3 {
            t.failed(ip(&format!("203.0.113.{i}")), "alice", now);
        }
        for i in [1, 3] {
            let addr = ip(&format!("198.51.100.{i}"));
            assert_eq!(t.check(addr, "alice", now), Err(2 * SEC), "{addr}");
        }
        for i in [2, 4, 5, 6] {
            let addr = ip(&format!("198.51.100.{i}"));
            assert_eq!(t.check(addr, "alice", now), Ok(()), "{addr}");
        }
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_time_and_success_clears_nothing() {
        let t = LoginThrottle::new(policy());
        let now = Instant::now();
        for _ in 0..3 {
            t.failed(ip("192.0.2.1"), "alice", now);
        }
        t.succeeded(ip("192.0.2.2"), "carol");
        assert_eq!(t.check(ip("192.0.2.3"), "alice", now), Err(2 * SEC));
        let later = now + 60 * SEC;
        assert_eq!(t.check(ip("192.0.2.3"), "alice", later), Ok(()));
        // Counting starts again: two more failures are free.
        t.failed(ip("192.0.2.1"), "alice", later);
        t.failed(ip("192.0.2.1"), "alice", later);
        assert_eq!(t.check(ip("192.0.2.3"), "alice", later), Err(SEC));
    }

    #[test]
    fn an_address_has_a_few_logins_in_progress_at_once() {
        let t = LoginThrottle::new(policy());
        assert!(t.begin(ip("192.0.2.1")));
        assert!(t.begin(ip("192.0.2.1")));
        assert!(!t.begin(ip("192.0.2.1")));
        assert!(t.begin(ip("192.0.2.2")));
        t.end(ip("192.0.2.1"));
        assert!(t.begin(ip("192.0.2.1")));
        t.end(ip("192.0.2.1"));
        t.end(ip("192.0.2.1"));
        t.end(ip("192.0.2.2"));
        assert!(t.lock().in_flight.is_empty());
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(prefix(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(prefix(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        let t = LoginThrottle::new(policy());
        let now = Instant::now();
        for i in 0..4 {
            t.failed(ip(&format!("2001:db8:1:2::{i}")), &format!("u{i}"), now);
        }
        assert_eq!(t.check(ip("2001:db8:1:2:ffff::9"), "x", now), Err(SEC));
        assert_eq!(t.check(ip("2001:db8:1:3::1"), "x", now), Ok(()));
    }
}
