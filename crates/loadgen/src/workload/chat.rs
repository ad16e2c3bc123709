//! `fanout` (public messages to everyone) and `private` (private messages to random
//! others): log everyone in, let the senders send, wait until every receiver has every
//! message it expects (or the deadline), report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{
    BUSY_READ_BUFFER, Common, Rng, finish, join_senders, login_all, secs, settle, spawn_senders,
};
use crate::net::Error;
use crate::recv::{Expect, Shared};
use crate::report::Report;
use crate::send::{Pace, Plan, Targets};

/// Options of `fanout`.
#[derive(Debug, Clone)]
pub struct FanoutOpts {
    /// Clients logged in (the senders among them).
    pub clients: usize,
    /// Clients that send.
    pub senders: usize,
    /// Messages per sender.
    pub messages: u32,
    /// Flood window per sender (ignored with `rate`).
    pub window: usize,
    /// Open loop: messages per second, all senders together.
    pub rate: Option<f64>,
}

/// Options of `private`.
#[derive(Debug, Clone)]
pub struct PrivateOpts {
    /// Clients, every one of them sending.
    pub clients: usize,
    /// Messages per client, each to a random other client.
    pub messages: u32,
    /// Flood window per sender.
    pub window: usize,
}

/// The pacing of sender `me` of `senders`.
pub fn pace(
    me: usize,
    senders: usize,
    window: usize,
    rate: Option<f64>,
    start: tokio::time::Instant,
) -> Pace {
    match rate {
        Some(rate) if rate > 0.0 => {
            // Every sender sends at rate / senders; sender k starts k / rate after sender 0,
            // so that together they send one message every 1 / rate seconds.
            let every = Duration::from_secs_f64(senders as f64 / rate);
            let offset = Duration::from_secs_f64(me as f64 / rate);
            Pace::Schedule {
                start,
                offset,
                every,
            }
        }
        _ => Pace::Window(Arc::new(Semaphore::new(window.max(1)))),
    }
}

/// Runs `fanout`.
///
/// # Errors
/// When a login or a socket fails.
pub async fn fanout(common: &Common, o: &FanoutOpts) -> Result<Report, Error> {
    let deadline = common.deadline();
    let senders = o.senders.min(o.clients).max(1);
    let shared = Shared::over(o.clients, common.transport);
    let per_receiver = senders as u64 * u64::from(o.messages);
    // Schedules start after login; the real start is set when sending begins.
    let start_placeholder = tokio::time::Instant::now();
    let mut plans = Vec::with_capacity(senders);
    let users = (0..o.clients)
        .map(|i| {
            let mut expect = Expect {
                messages: per_receiver,
                senders,
                // One public conversation: every client sees it in id order.
                id_order: true,
                ..Expect::default()
            };
            if i < senders {
                let pace = pace(i, senders, o.window, o.rate, start_placeholder);
                if let Pace::Window(w) = &pace {
                    expect.window = Some(w.clone());
                }
                expect.me = Some(i as u32);
                plans.push(Plan {
                    me: i as u32,
                    count: o.messages,
                    size: common.size,
                    to: Targets::Everyone,
                    pace,
                });
            }
            (format!("{}{i}", common.prefix), expect)
        })
        .collect();
    let mut report = Report {
        workload: "fanout".into(),
        senders,
        messages_per_sender: o.messages,
        window: o.rate.is_none().then_some(o.window),
        rate: o.rate,
        ..Report::default()
    };
    run_chat(
        common,
        &shared,
        users,
        plans,
        per_receiver * o.clients as u64,
        deadline,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// Runs `private`.
///
/// # Errors
/// When a login or a socket fails.
pub async fn private(common: &Common, o: &PrivateOpts) -> Result<Report, Error> {
    let deadline = common.deadline();
    let n = o.clients.max(2);
    let shared = Shared::over(n, common.transport);
    // Everyone's recipients, drawn up front so every receiver knows what to expect.
    let mut expected = vec![u64::from(o.messages); n]; // the echoes of one's own messages
    let mut plans = Vec::with_capacity(n);
    let mut windows = Vec::with_capacity(n);
    for me in 0..n {
        let mut rng = Rng::new(0x5EED ^ me as u64);
        let ids: Vec<u32> = (0..o.messages)
            .map(|_| {
                // A random other client.
                let r = rng.below(n as u64 - 1) as usize;
                let to = if r >= me { r + 1 } else { r };
                expected[to] += 1;
                to as u32
            })
            .collect();
        let window = Arc::new(Semaphore::new(o.window.max(1)));
        windows.push(window.clone());
        plans.push(Plan {
            me: me as u32,
            count: o.messages,
            size: common.size,
            to: Targets::Users {
                prefix: common.prefix.clone(),
                ids,
            },
            pace: Pace::Window(window),
        });
    }
    let total: u64 = expected.iter().sum();
    let users = expected
        .iter()
        .zip(windows)
        .enumerate()
        .map(|(i, (&messages, window))| {
            let expect = Expect {
                me: Some(i as u32),
                window: Some(window),
                messages,
                senders: n,
                churn: None,
                id_order: false,
            };
            (format!("{}{i}", common.prefix), expect)
        })
        .collect();
    let mut report = Report {
        workload: "private".into(),
        senders: n,
        messages_per_sender: o.messages,
        window: Some(o.window),
        ..Report::default()
    };
    run_chat(common, &shared, users, plans, total, deadline, &mut report).await?;
    Ok(report)
}

/// Logs everyone in, sends every plan, waits, and fills the report.
async fn run_chat(
    common: &Common,
    shared: &Arc<Shared>,
    users: Vec<(String, crate::recv::Expect)>,
    mut plans: Vec<Plan>,
    expected: u64,
    deadline: tokio::time::Instant,
    report: &mut Report,
) -> Result<(), Error> {
    let n = users.len();
    let (mut clients, login) = login_all(common, users, shared, BUSY_READ_BUFFER, deadline).await?;
    report.server = common.servers_text();
    report.transport = Some(common.transport.name().to_owned());
    report.clients = n;
    report.size = common.size;
    report.login_s = secs(login);
    report.logins_per_s = n as f64 / secs(login).max(1e-9);
    let settled = settle(common, shared, n, deadline).await;
    report.settle_s = Some(secs(settled));
    // Shown only when some never came (a cluster that lost presence notices).
    let missing = super::missing_joined(shared, n);
    if missing > 0 {
        report.joined_seen = Some(
            shared
                .joined_seen
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }

    // Open-loop schedules begin a little after now, the same instant for every sender.
    let start_at = tokio::time::Instant::now() + Duration::from_millis(5);
    for p in &mut plans {
        if let Pace::Schedule { start, .. } = &mut p.pace {
            *start = start_at;
        }
    }
    let started = Instant::now();
    let senders = spawn_senders(&mut clients, plans, shared);
    let all = shared.wait_all(deadline).await;
    let ended = Instant::now();
    shared.stop();
    let (sent, send_error) = join_senders(&mut clients, senders).await;
    let (seen, closed, _) = finish(shared, clients).await;
    let end = if all {
        seen.done_at.unwrap_or(ended)
    } else {
        ended
    };
    report.sent = sent;
    report.disconnected = closed;
    report.timed_out = !all;
    report.deliveries(
        &seen,
        expected,
        secs(end.saturating_duration_since(started)),
    );
    report.latency_us = shared.latency.summary();
    report.echoes = Some(seen.echoes);
    if report.rate.is_some() {
        report.send_lag_us = Some(shared.send_lag.summary());
        report.latency_from_write_us = Some(shared.latency_from_write.summary());
    }
    report.send_error = send_error.map(|e| e.to_string());
    Ok(())
}
