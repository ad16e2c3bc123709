//! The per-session rate limit on `send` and `list`: a token bucket.

use tokio::time::Instant;

/// A token bucket: `burst` commands at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained commands per second.
    pub per_sec: f64,
    /// Commands allowed in one burst.
    pub burst: u32,
}

/// A session's tokens. `f32`: a few bytes less in every session, and precise enough for
/// counts up to the burst.
#[derive(Debug)]
pub(super) struct Bucket {
    tokens: f32,
    last: Instant,
}

impl Bucket {
    /// A bucket holding its whole burst.
    pub(super) fn full(limit: RateLimit) -> Bucket {
        Bucket {
            tokens: limit.burst as f32,
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one, after refilling for the time since the last call.
    pub(super) fn allow(&mut self, limit: RateLimit) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * limit.per_sec;
        self.tokens = (f64::from(self.tokens) + refill).min(f64::from(limit.burst)) as f32;
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
