//! Per-address limits on connections and new accounts, the cap on connections not logged
//! in yet, and the token bucket they (and flood control, `session/rate.rs`) use. Login
//! throttling is `throttle.rs`.
//!
//! Like Ergo's ip-limits, an address (an IPv4 address, an IPv6 /64, as the login throttle
//! counts them) may have at most [`AddressLimits::connections`] connections at once and open
//! at most [`AddressLimits::new_connections_per_minute`] a minute (a token bucket of that
//! burst); it may create [`AddressLimits::new_accounts`] accounts at once, then
//! [`AddressLimits::new_accounts_per_hour`]. Addresses in the exemption list (loopback with
//! `exempt_loopback`, `--exempt` networks) skip all of them.
//!
//! A connection is admitted or refused at accept, before any work (no read, no TLS
//! handshake): the accept loop never waits on a client. A refused connection still gets a
//! session, which only says why (`fail 503`) within the session's short final-write time
//! and closes.
//!
//! Memory is bounded: at most [`MAX_KEYS`] addresses are tracked; an address with no
//! connection whose buckets are full again is forgotten (when the map is full, or when its
//! last connection ends); when none can be, a new address is not tracked (its connections
//! go through uncounted), as in the login throttle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use simpletextim_proto::{ErrorCode, Failure};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::throttle::{MAX_KEYS, prefix};

/// The per-address limits; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressLimits {
    /// Connections open at once from one address.
    pub connections: u32,
    /// New connections a minute from one address (and at once).
    pub new_connections_per_minute: u32,
    /// New accounts (first logins with open registration) one address may create at once.
    pub new_accounts: u32,
    /// New accounts an hour from one address, once those are used.
    pub new_accounts_per_hour: u32,
}

impl Default for AddressLimits {
    /// 16 connections at once and 30 new ones a minute (a household or an office behind
    /// one NAT address, each person with a client or two reconnecting now and then; Ergo's
    /// defaults are 16 and 32 per 10 minutes); 3 new accounts, then 3 an hour (a family
    /// signing up together; a script gets 72 a day instead of 80 a second).
    fn default() -> AddressLimits {
        AddressLimits {
            connections: 16,
            new_connections_per_minute: 30,
            new_accounts: 3,
            new_accounts_per_hour: 3,
        }
    }
}

impl AddressLimits {
    /// No per-address limit at all.
    pub const UNLIMITED: AddressLimits = AddressLimits {
        connections: 0,
        new_connections_per_minute: 0,
        new_accounts: 0,
        new_accounts_per_hour: 0,
    };

    fn new_connections(&self) -> Option<Rate> {
        (self.new_connections_per_minute > 0)
            .then(|| Rate::per_minute(self.new_connections_per_minute))
    }

    fn new_accounts(&self) -> Option<Rate> {
        (self.new_accounts > 0).then(|| Rate {
            per_sec: f64::from(self.new_accounts_per_hour) / 3600.0,
            burst: f64::from(self.new_accounts),
        })
    }
}

/// The reason of the `fail 503` a connection gets past the cap on connections not logged in.
pub const SERVER_BUSY: &str = "server busy, try again";

/// What one address has used.
#[derive(Debug)]
struct Usage {
    connections: u32,
    new_connections: Option<TokenBucket>,
    new_accounts: Option<TokenBucket>,
}

impl Usage {
    /// Whether forgetting it changes nothing: no connection, and its buckets full again.
    fn forgettable(&self, limits: &AddressLimits, now: Instant) -> bool {
        let full = |b: &Option<TokenBucket>, r: Option<Rate>| match (b, r) {
            (Some(b), Some(r)) => b.is_full(r, now),
            _ => true,
        };
        self.connections == 0
            && full(&self.new_connections, limits.new_connections())
            && full(&self.new_accounts, limits.new_accounts())
    }
}

type Usages = HashMap<IpAddr, Usage>;

fn lock(m: &Mutex<Usages>) -> MutexGuard<'_, Usages> {
    // Every critical section leaves the map consistent: a poisoned lock still guards valid
    // data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server's per-address limits and its cap on connections not logged in.
#[derive(Debug)]
pub(crate) struct Limits {
    exempt_loopback: bool,
    exempt: Vec<IpNet>,
    shared: Arc<Tracked>,
    unauthenticated: Arc<Semaphore>,
}

/// What the places of the connections refer to.
#[derive(Debug)]
struct Tracked {
    limits: AddressLimits,
    usage: Mutex<Usages>,
}

/// A connection's verdict at accept and the places it holds until it ends: its place among
/// all connections (the caller's permit), one of its address's connections (none for an
/// exempt or untracked address), and one among the connections not logged in (given back at
/// login). A refused connection holds only the first, until it has said why and closed.
#[derive(Debug)]
pub(crate) struct Admission {
    _connection: OwnedSemaphorePermit,
    /// Boxed: exempt and untracked addresses (and benchmarks) have none, and every idle
    /// session would otherwise carry its room.
    _address: Option<Box<AddressPlace>>,
    unauthenticated: Option<OwnedSemaphorePermit>,
    /// Boxed: only refused connections have one.
    refusal: Option<Box<Failure>>,
}

impl Admission {
    /// Why the connection was refused (once).
    pub(crate) fn take_refusal(&mut self) -> Option<Failure> {
        self.refusal.take().map(|f| *f)
    }

    /// The connection logged in: it leaves the pool of connections not logged in.
    pub(crate) fn logged_in(&mut self) {
        self.unauthenticated = None;
    }
}

#[derive(Debug)]
struct AddressPlace {
    tracked: Arc<Tracked>,
    addr: IpAddr,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut usage = lock(&self.tracked.usage);
        if let Some(u) = usage.get_mut(&self.addr) {
            u.connections = u.connections.saturating_sub(1);
            if u.forgettable(&self.tracked.limits, Instant::now()) {
                usage.remove(&self.addr);
            }
        }
    }
}

impl Limits {
    pub(crate) fn new(
        limits: AddressLimits,
        max_unauthenticated: usize,
        exempt_loopback: bool,
        exempt: Vec<IpNet>,
    ) -> Limits {
        Limits {
            exempt_loopback,
            exempt,
            shared: Arc::new(Tracked {
                limits,
                usage: Mutex::new(HashMap::new()),
            }),
            unauthenticated: Arc::new(Semaphore::new(
                max_unauthenticated.clamp(1, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Whether `addr` skips the per-address limits (loopback with `exempt_loopback`, or in
    /// an exempt network).
    pub(crate) fn is_exempt(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        (self.exempt_loopback && addr.is_loopback())
            || self.exempt.iter().any(|n| n.contains(&addr))
    }

    /// Admits or refuses a just-accepted connection from `addr`, which holds `connection`
    /// (its place among all connections). Never waits.
    pub(crate) fn admit(&self, connection: OwnedSemaphorePermit, addr: IpAddr) -> Admission {
        let (address, unauthenticated, refusal) = match self.places(addr, Instant::now()) {
            Ok((address, unauthenticated)) => (address, Some(unauthenticated), None),
            Err(failure) => {
                tracing::debug!(%addr, reason = %failure.reason, "connection refused");
                (None, None, Some(Box::new(failure)))
            }
        };
        Admission {
            _connection: connection,
            _address: address.map(Box::new),
            unauthenticated,
            refusal,
        }
    }

    /// The places a new connection from `addr` takes.
    ///
    /// # Errors
    /// The `fail 503` to send before closing: too many new connections from the address,
    /// too many at once, or too many connections not logged in.
    fn places(
        &self,
        addr: IpAddr,
        now: Instant,
    ) -> Result<(Option<AddressPlace>, OwnedSemaphorePermit), Failure> {
        let address = if self.is_exempt(addr) {
            None
        } else {
            self.address_place(prefix(addr), now)?
        };
        let unauthenticated = self
            .unauthenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| Failure::new(ErrorCode::Unavailable, SERVER_BUSY))?;
        Ok((address, unauthenticated))
    }

    /// Counts a new connection from `addr` (a prefix): its place, `None` if the address is
    /// not tracked (no limit on, or no room).
    fn address_place(&self, addr: IpAddr, now: Instant) -> Result<Option<AddressPlace>, Failure> {
        let limits = self.shared.limits;
        if limits.connections == 0 && limits.new_connections_per_minute == 0 {
            return Ok(None);
        }
        let mut usage = lock(&self.shared.usage);
        let Some(u) = entry(&mut usage, addr, &limits, now) else {
            return Ok(None);
        };
        // Every connection counts, refused ones too: a client retrying at once is slowed
        // down.
        if let Some(rate) = limits.new_connections() {
            let bucket = u
                .new_connections
                .get_or_insert_with(|| TokenBucket::full(rate, now));
            if let Err(wait) = bucket.take(rate, 1.0, now) {
                let secs = ceil_secs(wait);
                let reason =
                    format!("too many new connections from your address, try again in {secs} s");
                return Err(Failure::new(ErrorCode::Unavailable, reason));
            }
        }
        if limits.connections > 0 && u.connections >= limits.connections {
            let reason = format!(
                "too many connections from your address (at most {}), close one and try again",
                limits.connections
            );
            return Err(Failure::new(ErrorCode::Unavailable, reason));
        }
        u.connections += 1;
        Ok(Some(AddressPlace {
            tracked: self.shared.clone(),
            addr,
        }))
    }

    /// Whether `addr` may create an account now (a first login with open registration),
    /// which it is then charged for; checked before the password is hashed.
    ///
    /// # Errors
    /// The `fail 429` saying when to try again.
    pub(crate) fn new_account(&self, addr: IpAddr, now: Instant) -> Result<(), Failure> {
        let limits = self.shared.limits;
        let Some(rate) = limits.new_accounts() else {
            return Ok(());
        };
        if self.is_exempt(addr) {
            return Ok(());
        }
        let mut usage = lock(&self.shared.usage);
        let Some(u) = entry(&mut usage, prefix(addr), &limits, now) else {
            return Ok(());
        };
        let bucket = u
            .new_accounts
            .get_or_insert_with(|| TokenBucket::full(rate, now));
        bucket.take(rate, 1.0, now).map_err(|wait| {
            let mins = ceil_secs(wait).div_ceil(60);
            let reason =
                format!("too many new accounts from your address, try again in {mins} min");
            Failure::new(ErrorCode::RateLimited, reason)
        })
    }
}

/// `addr`'s usage, made if new; `None` when the map is full of addresses that cannot be
/// forgotten.
fn entry<'a>(
    usage: &'a mut Usages,
    addr: IpAddr,
    limits: &AddressLimits,
    now: Instant,
) -> Option<&'a mut Usage> {
    if usage.len() >= MAX_KEYS && !usage.contains_key(&addr) {
        usage.retain(|_, u| !u.forgettable(limits, now));
        if usage.len() >= MAX_KEYS {
            return None;
        }
    }
    Some(usage.entry(addr).or_insert(Usage {
        connections: 0,
        new_connections: None,
        new_accounts: None,
    }))
}

/// A rate: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    pub(crate) per_sec: f64,
    pub(crate) burst: f64,
}

impl Rate {
    /// `n` a minute, `n` at once.
    pub(crate) fn per_minute(n: u32) -> Rate {
        Rate {
            per_sec: f64::from(n) / 60.0,
            burst: f64::from(n),
        }
    }
}

/// A token bucket: starts full, refills at its rate, never above its burst.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket holding its whole burst.
    pub(crate) fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * rate.per_sec;
        self.tokens = (self.tokens + refill).min(rate.burst);
        self.last = now;
    }

    /// Takes `cost` tokens (at most the burst, so that anything costly is still possible
    /// from a full bucket); if there are not enough, takes none and says how long until
    /// there will be.
    pub(crate) fn take(&mut self, rate: Rate, cost: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        let cost = cost.min(rate.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            return Ok(());
        }
        // A rate of 0 (or a nonsensical one from a hand-made config) never refills.
        Err(
            Duration::try_from_secs_f64((cost - self.tokens) / rate.per_sec)
                .unwrap_or(Duration::MAX),
        )
    }

    /// Whether the bucket has refilled to its burst by `now`: forgetting it then changes
    /// nothing, as a new bucket would be full too.
    pub(crate) fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * rate.per_sec;
        self.tokens + refill >= rate.burst
    }
}

/// `wait` in whole seconds, rounded up (a client told "1 s" must not be refused again).
pub(crate) fn ceil_secs(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_bucket_gives_its_burst_then_refills_at_its_rate() {
        let rate = Rate {
            per_sec: 2.0,
            burst: 4.0,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        for _ in 0..4 {
            assert_eq!(b.take(rate, 1.0, t0), Ok(()));
        }
        assert_eq!(b.take(rate, 1.0, t0), Err(SEC / 2));
        assert!(!b.is_full(rate, t0 + SEC));
        assert_eq!(b.take(rate, 1.0, t0 + SEC / 2), Ok(()));
        // A cost above the burst costs the burst.
        assert_eq!(b.take(rate, 10.0, t0 + SEC / 2), Err(2 * SEC));
        assert!(b.is_full(rate, t0 + SEC / 2 + 2 * SEC));
        assert_eq!(b.take(rate, 10.0, t0 + SEC / 2 + 2 * SEC), Ok(()));
        assert_eq!(ceil_secs(SEC / 2), 1);
        assert_eq!(ceil_secs(2 * SEC), 2);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid address")
    }

    fn admit(limits: &Limits, addr: &str) -> Admission {
        let overall = Arc::new(Semaphore::new(100));
        let permit = overall.try_acquire_owned().expect("room");
        limits.admit(permit, ip(addr))
    }

    fn limits(connections: u32, exempt: &[&str]) -> Limits {
        let exempt = exempt.iter().map(|n| n.parse().expect("CIDR")).collect();
        let per_address = AddressLimits {
            connections,
            ..AddressLimits::UNLIMITED
        };
        Limits::new(per_address, 100, true, exempt)
    }

    #[test]
    fn an_ipv6_64_is_one_address_and_a_mapped_ipv4_its_ipv4() {
        let l = limits(1, &[]);
        let mut first = admit(&l, "2001:db8:1:2::1");
        assert_eq!(first.take_refusal(), None);
        let mut same_64 = admit(&l, "2001:db8:1:2:ffff::9");
        assert!(same_64.take_refusal().is_some());
        let mut other_64 = admit(&l, "2001:db8:1:3::1");
        assert_eq!(other_64.take_refusal(), None);
        let mut v4 = admit(&l, "192.0.2.1");
        assert_eq!(v4.take_refusal(), None);
        let mut mapped = admit(&l, "::ffff:192.0.2.1");
        assert!(mapped.take_refusal().is_some());
    }

    #[test]
    fn an_address_is_forgotten_when_its_last_connection_ends() {
        let l = limits(2, &[]);
        let a = admit(&l, "192.0.2.1");
        let b = admit(&l, "192.0.2.1");
        assert_eq!(lock(&l.shared.usage).len(), 1);
        drop(a);
        assert_eq!(lock(&l.shared.usage).len(), 1);
        drop(b);
        assert_eq!(lock(&l.shared.usage).len(), 0);
    }

    #[test]
    fn exempt_networks_and_loopback_are_not_counted() {
        let l = limits(1, &["10.0.0.0/8", "2001:db8::/32"]);
        for addr in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "2001:db8:9::1",
            "127.0.0.9",
            "::1",
        ] {
            assert!(l.is_exempt(ip(addr)), "{addr}");
            let kept: Vec<_> = (0..3).map(|_| admit(&l, addr)).collect();
            assert!(kept.iter().all(|a| a.refusal.is_none()), "{addr}");
        }
        assert!(!l.is_exempt(ip("11.0.0.1")));
        assert_eq!(lock(&l.shared.usage).len(), 0);
    }

    #[test]
    fn the_pool_of_connections_not_logged_in_is_left_at_login() {
        let l = Limits::new(AddressLimits::UNLIMITED, 1, false, Vec::new());
        let mut first = admit(&l, "192.0.2.1");
        let mut second = admit(&l, "192.0.2.2");
        assert_eq!(
            second.take_refusal(),
            Some(Failure::new(ErrorCode::Unavailable, SERVER_BUSY))
        );
        first.logged_in();
        let mut third = admit(&l, "192.0.2.3");
        assert_eq!(third.take_refusal(), None);
    }

    #[test]
    fn a_rate_of_zero_never_refills_and_does_not_panic() {
        let rate = Rate {
            per_sec: 0.0,
            burst: 1.0,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert_eq!(b.take(rate, 1.0, t0), Ok(()));
        assert_eq!(b.take(rate, 1.0, t0 + 1000 * SEC), Err(Duration::MAX));
    }
}
