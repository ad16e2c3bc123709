//! The workloads, and what they share: logging many clients in with a receiver each,
//! stopping the receivers and adding up what they saw.

pub mod chat;
pub mod conns;
pub mod history;
pub mod offline;
pub mod presence;
pub mod redis;
pub mod soak;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinHandle;

use crate::net::{self, Bind, Error, Transport};
use crate::recv::{self, Expect, Seen, Shared};
use crate::send::{self, Plan};

/// Read buffer of a client that receives a lot.
pub const BUSY_READ_BUFFER: usize = 64 * 1024;
/// Read buffer of a client that mostly idles.
pub const IDLE_READ_BUFFER: usize = 4 * 1024;

/// Options every workload shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// The server (loopback only); the first of [`Common::servers`] when there are several.
    pub server: SocketAddr,
    /// Every server of the run, when clients are spread over several (the nodes of a
    /// cluster): client `i` connects to `servers[i % servers.len()]`. Empty: all connect to
    /// `server`. Only the workloads that log in through [`login_all`] (`fanout`,
    /// `private`, `presence`) spread their clients.
    pub servers: Vec<SocketAddr>,
    /// Prefix of every user id this run logs in as (`lg` → `lg0`, `lg1`, …).
    pub prefix: String,
    /// The whole run's time limit.
    pub timeout: Duration,
    /// Logins in flight at once.
    pub login_concurrency: usize,
    /// Text length in bytes.
    pub size: usize,
    /// Pause between the logins (and their `joined` notices) and the first message.
    pub settle: Duration,
    /// Where client sockets are bound.
    pub bind: Bind,
    /// How the connections talk to the server (`--ws`: WebSocket, which `server` is then
    /// the HTTP listener of); only `fanout` and `private` speak WebSocket.
    pub transport: Transport,
}

impl Common {
    /// The server client `i` connects to.
    pub fn server_for(&self, i: usize) -> SocketAddr {
        match self.servers.len() {
            0 => self.server,
            n => self.servers[i % n],
        }
    }

    /// The servers as the report shows them: `a`, or `a,b,c`.
    pub fn servers_text(&self) -> String {
        if self.servers.is_empty() {
            return self.server.to_string();
        }
        let all: Vec<String> = self.servers.iter().map(ToString::to_string).collect();
        all.join(",")
    }

    /// The run's deadline, counted from now.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout
    }
}

/// A logged-in client whose receiver runs in its own task.
#[derive(Debug)]
pub struct Client {
    /// Commands to the server (taken by a sender task while it runs).
    pub writer: Option<OwnedWriteHalf>,
    /// The receiver.
    pub task: JoinHandle<Seen>,
    /// Messages in its login acknowledgement.
    pub pending: usize,
}

/// Logs in every `(user id, expectation)` pair, `common.login_concurrency` at a time, and
/// starts each one's receiver as soon as its login is acknowledged (so `joined` notices
/// never pile up in the server). Returns the clients in order and how long it took.
///
/// # Errors
/// The first login that fails; the receivers already started are stopped.
pub async fn login_all(
    common: &Common,
    users: Vec<(String, Expect)>,
    shared: &Arc<Shared>,
    read_buffer: usize,
    deadline: tokio::time::Instant,
) -> Result<(Vec<Client>, Duration), Error> {
    let started = Instant::now();
    let n = users.len();
    let bind = common.bind;
    let transport = common.transport;
    let logins = futures::stream::iter(users.into_iter().enumerate())
        .map(|(i, (user, expect))| {
            let shared = shared.clone();
            let server = common.server_for(i);
            async move {
                let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                let from = bind.addr(i);
                let conn =
                    net::login_via(transport, server, from, &user, read_buffer, wait).await?;
                let task = tokio::spawn(recv::receive(conn.reader, expect, shared));
                Ok::<_, Error>((
                    i,
                    Client {
                        writer: Some(conn.writer),
                        task,
                        pending: conn.pending,
                    },
                ))
            }
        })
        .buffer_unordered(common.login_concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await;
    match logins {
        Ok(mut clients) => {
            clients.sort_unstable_by_key(|(i, _)| *i);
            debug_assert_eq!(clients.len(), n);
            Ok((
                clients.into_iter().map(|(_, c)| c).collect(),
                started.elapsed(),
            ))
        }
        Err(e) => {
            shared.stop();
            Err(e)
        }
    }
}

/// Stops the receivers and adds up what they saw. Returns the sum, how many connections
/// the server closed, and how many receivers ended with a correct presence view.
pub async fn finish(shared: &Shared, clients: Vec<Client>) -> (Seen, u64, usize) {
    shared.stop();
    let mut total = Seen::default();
    let mut closed = 0;
    let mut views_ok = 0;
    for c in clients {
        let Client { writer, task, .. } = c;
        if let Ok(seen) = task.await {
            total.add(&seen);
            closed += u64::from(seen.closed);
            views_ok += usize::from(seen.churn_ok);
        }
        drop(writer);
    }
    (total, closed, views_ok)
}

/// Waits until the `joined` notices of `n` logins have all arrived (exactly n(n−1)/2: each
/// pair of clients makes one, to whichever logged in first), bounded by `deadline`, then
/// `common.settle` more; returns how long it waited. Without this, a run's first messages
/// would compete with the tail of its own login storm.
///
/// Also ends when no notice has come for [`SETTLE_QUIET`] while some are still missing
/// (a server that lost one would otherwise hold the run until its deadline); the shortfall
/// is printed and can be read with [`missing_joined`].
pub async fn settle(
    common: &Common,
    shared: &Shared,
    n: usize,
    deadline: tokio::time::Instant,
) -> Duration {
    let t = Instant::now();
    let all = expected_joined(n);
    let seen = || {
        shared
            .joined_seen
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut last = seen();
    let mut last_change = tokio::time::Instant::now();
    while seen() < all && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now_seen = seen();
        if now_seen != last {
            last = now_seen;
            last_change = tokio::time::Instant::now();
        } else if last_change.elapsed() >= SETTLE_QUIET {
            eprintln!(
                "simpletextim-loadgen: only {now_seen} of the {all} `joined` notices of the logins came (none for {} s); going on",
                SETTLE_QUIET.as_secs()
            );
            break;
        }
    }
    tokio::time::sleep(common.settle).await;
    t.elapsed()
}

/// How long [`settle`] waits for a `joined` notice that is missing before it goes on.
pub const SETTLE_QUIET: Duration = Duration::from_secs(3);

/// The `joined` notices `n` logins make: one per pair.
fn expected_joined(n: usize) -> u64 {
    (n as u64) * (n as u64).saturating_sub(1) / 2
}

/// How many of the `joined` notices of `n` logins have not come (0 when all have).
pub fn missing_joined(shared: &Shared, n: usize) -> u64 {
    expected_joined(n).saturating_sub(
        shared
            .joined_seen
            .load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Sender tasks, each holding its client's write half while it runs.
pub type Senders = Vec<(usize, JoinHandle<(OwnedWriteHalf, Result<u32, Error>)>)>;

/// Starts one task per plan, on the write half of client `plan.me`.
pub fn spawn_senders(clients: &mut [Client], plans: Vec<Plan>, shared: &Arc<Shared>) -> Senders {
    let mut tasks = Vec::with_capacity(plans.len());
    for plan in plans {
        let i = plan.me as usize;
        let Some(mut writer) = clients.get_mut(i).and_then(|c| c.writer.take()) else {
            continue;
        };
        let shared = shared.clone();
        tasks.push((
            i,
            tokio::spawn(async move {
                let r = send::send(&mut writer, &plan, &shared).await;
                (writer, r)
            }),
        ));
    }
    tasks
}

/// Waits for the sender tasks (stop the run first), gives the write halves back, and
/// returns how many messages were sent and the last error, if any.
pub async fn join_senders(clients: &mut [Client], senders: Senders) -> (u64, Option<Error>) {
    let mut sent = 0u64;
    let mut error = None;
    for (i, t) in senders {
        match t.await {
            Ok((writer, r)) => {
                if let Some(c) = clients.get_mut(i) {
                    c.writer = Some(writer);
                }
                match r {
                    Ok(n) => sent += u64::from(n),
                    Err(e) => error = Some(e),
                }
            }
            Err(e) => error = Some(Error::Protocol(format!("sender task failed: {e}"))),
        }
    }
    (sent, error)
}

/// A small deterministic generator (splitmix64) for recipient choices: runs repeat exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Seconds as `f64`.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..1000).map(|_| a.below(10)).collect();
        let ys: Vec<u64> = (0..1000).map(|_| b.below(10)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&x| x < 10));
        // Every value shows up: it is not stuck.
        for v in 0..10 {
            assert!(xs.contains(&v));
        }
    }
}
