//! `presence`: C clients online while S of them chat at a fixed rate; after one second,
//! K more clients log in and out, spread over `--churn-secs`. What does the `joined`/`left`
//! fan-out cost the chat's latency, and does every client's view of who is online end
//! correct?
//!
//! Every online client keeps a bit per churning user (set by `joined`, cleared by `left`);
//! its view is correct when it saw each churning user join once and leave once, in that
//! order, and ends with nobody of them online. A `list` at the end checks the server's own
//! view: exactly the C clients.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{
    BUSY_READ_BUFFER, Client, Common, IDLE_READ_BUFFER, finish, join_senders, login_all, secs,
    spawn_senders,
};
use crate::net::{self, Error};
use crate::recv::{Churn, Expect, Shared};
use crate::report::Report;
use crate::send::{Plan, Targets};

/// Options of `presence`.
#[derive(Debug, Clone, clap::Args)]
pub struct PresenceOpts {
    /// Clients online throughout.
    #[arg(short, long, default_value_t = 10_000)]
    pub clients: usize,
    /// Clients that log in and out during the chat.
    #[arg(short = 'k', long, default_value_t = 1000)]
    pub churn: usize,
    /// Seconds over which the churning logins are spread.
    #[arg(long, default_value_t = 8.0)]
    pub churn_secs: f64,
    /// Online clients that chat.
    #[arg(short, long, default_value_t = 10)]
    pub senders: usize,
    /// Public messages per second, all senders together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of chat (the churn starts after one).
    #[arg(long, default_value_t = 10.0)]
    pub chat_secs: f64,
}

/// What the churning clients measured.
#[derive(Debug, Default)]
struct ChurnResult {
    logins: usize,
    failures: usize,
    busy: u64,
    login_ms: Vec<f64>,
}

/// Runs `presence`.
///
/// # Errors
/// When a login of an online client or a socket fails.
pub async fn run(common: &Common, o: &PresenceOpts) -> Result<Report, Error> {
    let deadline = common.deadline();
    let n = o.clients.max(1);
    let senders = o.senders.clamp(1, n);
    let rate = o.rate.max(0.1);
    let per_sender = ((rate * o.chat_secs.max(0.1)) / senders as f64).ceil() as u32;
    let shared = Shared::new(n);
    let churn_prefix = format!("{}c", common.prefix);
    let (users, mut plans) = online_users(common, o, senders, per_sender, rate, &churn_prefix);
    let (mut clients, login) =
        login_all(common, users, &shared, BUSY_READ_BUFFER, deadline).await?;
    let settled = super::settle(common, &shared, n, deadline).await;

    let (churn_start, churn_len) = schedule(&mut plans, &shared, o.churn_secs);
    let started = Instant::now();
    let sender_tasks = spawn_senders(&mut clients, plans, &shared);
    let churn = tokio::spawn(churn_burst(
        common.clone(),
        churn_prefix,
        o.churn,
        churn_start,
        churn_len,
        deadline,
    ));

    let all = shared.wait_all(deadline).await;
    let ended = Instant::now();
    // Nothing aborts the churn task, so it can only fail by panicking: pass the panic on.
    let churned = churn
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let list_len = server_list_len(&mut clients, &shared, deadline).await;
    shared.stop();
    let (sent, send_error) = join_senders(&mut clients, sender_tasks).await;
    let (seen, closed, views_ok) = finish(&shared, clients).await;

    let mut report = Report {
        workload: "presence".into(),
        server: common.servers_text(),
        clients: n,
        senders,
        messages_per_sender: per_sender,
        size: common.size,
        rate: Some(rate),
        login_s: secs(login),
        logins_per_s: n as f64 / secs(login).max(1e-9),
        sent,
        disconnected: closed,
        timed_out: !all,
        send_error: send_error.map(|e| e.to_string()),
        ..Report::default()
    };
    let end = if all {
        seen.done_at.unwrap_or(ended)
    } else {
        ended
    };
    let expected = n as u64 * senders as u64 * u64::from(per_sender);
    report.deliveries(
        &seen,
        expected,
        secs(end.saturating_duration_since(started)),
    );
    report.latency_us = shared.latency.summary();
    report.latency_during_churn_us = Some(shared.latency_in_window.summary());
    report.send_lag_us = Some(shared.send_lag.summary());
    report.latency_from_write_us = Some(shared.latency_from_write.summary());
    report.settle_s = Some(secs(settled));
    report.churn = Some(o.churn);
    report.churn_secs = Some(o.churn_secs);
    churned.fill(&mut report);
    report.views_correct = Some(views_ok);
    report.views_wrong = Some(n - views_ok);
    report.list_len = Some(list_len);
    report.presence_errors = Some(seen.churn_errors);
    report.joined_seen = Some(seen.joined);
    report.left_seen = Some(seen.left);
    Ok(report)
}

/// The online clients (user id, what each expects) and the plans of the first `senders`
/// of them, whose schedules start when the runner sets them.
fn online_users(
    common: &Common,
    o: &PresenceOpts,
    senders: usize,
    per_sender: u32,
    rate: f64,
    churn_prefix: &str,
) -> (Vec<(String, Expect)>, Vec<Plan>) {
    let start_placeholder = tokio::time::Instant::now();
    let mut plans = Vec::with_capacity(senders);
    let users = (0..o.clients.max(1))
        .map(|i| {
            let mut expect = Expect {
                messages: senders as u64 * u64::from(per_sender),
                senders,
                churn: Some(Churn {
                    prefix: churn_prefix.as_bytes().to_vec(),
                    users: o.churn,
                }),
                ..Expect::default()
            };
            if i < senders {
                expect.me = Some(i as u32);
                plans.push(Plan {
                    me: i as u32,
                    count: per_sender,
                    size: common.size,
                    to: Targets::Everyone,
                    pace: super::chat::pace(i, senders, 0, Some(rate), start_placeholder),
                });
            }
            (format!("{}{i}", common.prefix), expect)
        })
        .collect();
    (users, plans)
}

/// Starts the senders' schedules a little after now, all at the same instant, and the
/// churn a second later; the latency window is the churn's. Returns the churn's start and
/// length.
fn schedule(
    plans: &mut [Plan],
    shared: &Shared,
    churn_secs: f64,
) -> (tokio::time::Instant, Duration) {
    let start_at = tokio::time::Instant::now() + Duration::from_millis(5);
    for p in plans {
        if let crate::send::Pace::Schedule { start, .. } = &mut p.pace {
            *start = start_at;
        }
    }
    let base = tokio::time::Instant::from_std(shared.base);
    let churn_start = start_at + Duration::from_secs(1);
    let churn_len = Duration::from_secs_f64(churn_secs.max(0.0));
    let from_us = churn_start.saturating_duration_since(base).as_micros() as u64;
    shared.window_from_us.store(from_us, Ordering::Relaxed);
    shared
        .window_to_us
        .store(from_us + churn_len.as_micros() as u64, Ordering::Relaxed);
    (churn_start, churn_len)
}

/// The server's own view: the length of a `list` reply to the last client (not a sender,
/// whose write half its sender task holds); -1 when none came.
async fn server_list_len(
    clients: &mut [Client],
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> i64 {
    let Some(w) = clients.last_mut().and_then(|c| c.writer.as_mut()) else {
        return -1;
    };
    let mut buf = BytesMut::new();
    net::simple_frame("list", &mut buf);
    if w.write_all(&buf).await.is_ok() {
        // Bounded polling: at most 10 s (or the deadline), every 10 ms.
        let until = deadline.min(tokio::time::Instant::now() + Duration::from_secs(10));
        while shared.last_list.load(Ordering::Acquire) < 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    shared.last_list.load(Ordering::Acquire)
}

impl ChurnResult {
    /// Puts the churning logins' figures in the report.
    fn fill(mut self, report: &mut Report) {
        report.churn_logins = Some(self.logins);
        report.churn_failures = Some(self.failures);
        report.churn_busy = Some(self.busy);
        self.login_ms.sort_by(f64::total_cmp);
        let ms = &self.login_ms;
        // Without a successful churning login there is no time to report: left out.
        let pct = |q: f64| -> Option<f64> {
            let last = ms.len().checked_sub(1)?;
            Some(ms[(last as f64 * q).round() as usize])
        };
        report.churn_login_ms_p50 = pct(0.5);
        report.churn_login_ms_p99 = pct(0.99);
    }
}

/// First wait before a churning login refused with `fail 503` is tried again; it doubles
/// up to [`BUSY_BACKOFF_MAX`].
const BUSY_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts of a churning login refused with `fail 503`.
const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Logs `k` users in and out, their logins spread evenly from `start` over `len`; each
/// waits for its login acknowledgement, says `exit` and waits for the server to close. A
/// login refused with `fail 503` (server busy) is tried again after a back-off, as a
/// client would, until the deadline; its time counts from the first attempt.
async fn churn_burst(
    common: Common,
    prefix: String,
    k: usize,
    start: tokio::time::Instant,
    len: Duration,
    deadline: tokio::time::Instant,
) -> ChurnResult {
    let step = if k > 0 { len / k as u32 } else { len };
    let tasks: Vec<_> = (0..k)
        .map(|j| {
            let user = format!("{prefix}{j}");
            let server = common.server_for(j);
            let due = start + step * j as u32;
            tokio::spawn(async move {
                tokio::time::sleep_until(due).await;
                let t = Instant::now();
                let mut busy = 0u64;
                let mut backoff = BUSY_BACKOFF;
                let mut conn = loop {
                    let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match net::login(server, None, &user, IDLE_READ_BUFFER, wait).await {
                        Err(Error::LoginRefused { code: 503, .. })
                            if tokio::time::Instant::now() + backoff < deadline =>
                        {
                            busy += 1;
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(BUSY_BACKOFF_MAX);
                        }
                        other => break other.map_err(|e| (e, busy))?,
                    }
                };
                let login_ms = t.elapsed().as_secs_f64() * 1e3;
                let mut buf = BytesMut::new();
                net::simple_frame("exit", &mut buf);
                conn.writer
                    .write_all(&buf)
                    .await
                    .map_err(|e| (Error::io("cannot send exit", e), busy))?;
                // Read until the server closes: its `left` goes out after that.
                let _ = tokio::time::timeout_at(deadline, async {
                    while let Some(Ok(_)) = conn.reader.next().await {}
                })
                .await;
                Ok::<(f64, u64), (Error, u64)>((login_ms, busy))
            })
        })
        .collect();
    let mut r = ChurnResult::default();
    for t in tasks {
        match t.await {
            Ok(Ok((ms, busy))) => {
                r.logins += 1;
                r.busy += busy;
                r.login_ms.push(ms);
            }
            Ok(Err((_, busy))) => {
                r.failures += 1;
                r.busy += busy;
            }
            Err(_) => r.failures += 1,
        }
    }
    r
}
