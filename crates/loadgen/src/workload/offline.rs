//! `offline`: the durable mailbox path. R recipients register (log in, `exit`); S senders
//! flood M private messages each to them while they are offline (each send is confirmed by
//! its echo, which the server sends once the message is stored); then the recipients log
//! in, and every login acknowledgement must carry all of that recipient's messages.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use super::{
    BUSY_READ_BUFFER, Common, IDLE_READ_BUFFER, finish, join_senders, login_all, secs,
    spawn_senders,
};
use crate::net::{self, Error};
use crate::recv::{Expect, Shared};
use crate::report::Report;
use crate::send::{Pace, Plan, Targets};

/// Options of `offline`.
#[derive(Debug, Clone, clap::Args)]
pub struct OfflineOpts {
    /// Offline recipients.
    #[arg(short, long, default_value_t = 1000)]
    pub recipients: usize,
    /// Senders.
    #[arg(short, long, default_value_t = 10)]
    pub senders: usize,
    /// Messages per sender (spread evenly over the recipients; keep
    /// senders × messages / recipients under the server's mailbox cap).
    #[arg(short, long, default_value_t = 2000)]
    pub messages: u32,
    /// Messages a sender may have sent but not yet seen echoed (stored).
    #[arg(short, long, default_value_t = 64)]
    pub window: usize,
}

/// Logs each user in and out (`exit`, then waits for the server to close).
async fn register(
    common: &Common,
    users: Vec<String>,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    futures::stream::iter(users)
        .map(|user| async move {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut conn = net::login(common.server, None, &user, IDLE_READ_BUFFER, wait).await?;
            let mut buf = BytesMut::new();
            net::simple_frame("exit", &mut buf);
            conn.writer
                .write_all(&buf)
                .await
                .map_err(|e| Error::io("cannot send exit", e))?;
            let _ = tokio::time::timeout_at(deadline, async {
                while let Some(Ok(_)) = conn.reader.next().await {}
            })
            .await;
            Ok::<(), Error>(())
        })
        .buffer_unordered(common.login_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

/// The senders (user id, what each expects), their plans (message `q` of sender `i` goes
/// to recipient `(q × s + i) mod r`), and how many messages each recipient's mailbox gets.
fn senders(
    common: &Common,
    o: &OfflineOpts,
    r: usize,
    rprefix: &str,
    sprefix: &str,
) -> (Vec<(String, Expect)>, Vec<Plan>, Vec<usize>) {
    let s = o.senders.max(1);
    let mut plans = Vec::with_capacity(s);
    let mut per_recipient = vec![0usize; r];
    let users = (0..s)
        .map(|i| {
            let ids: Vec<u32> = (0..o.messages as usize)
                .map(|q| {
                    let to = (q * s + i) % r;
                    per_recipient[to] += 1;
                    to as u32
                })
                .collect();
            let window = std::sync::Arc::new(tokio::sync::Semaphore::new(o.window.max(1)));
            plans.push(Plan {
                me: i as u32,
                count: o.messages,
                size: common.size,
                to: Targets::Users {
                    prefix: rprefix.to_owned(),
                    ids,
                },
                pace: Pace::Window(window.clone()),
            });
            let expect = Expect {
                me: Some(i as u32),
                window: Some(window),
                messages: u64::from(o.messages),
                senders: s,
                churn: None,
                id_order: false,
            };
            (format!("{sprefix}{i}"), expect)
        })
        .collect();
    (users, plans, per_recipient)
}

/// Logs the `r` recipients in; returns the messages their login acknowledgements carried
/// and the seconds the logins took.
async fn open_mailboxes(
    common: &Common,
    r: usize,
    rprefix: &str,
    deadline: tokio::time::Instant,
) -> Result<(usize, f64), Error> {
    let t = Instant::now();
    let delivered: Vec<usize> = futures::stream::iter(0..r)
        .map(|j| {
            let user = format!("{rprefix}{j}");
            async move {
                let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                let conn = net::login(common.server, None, &user, BUSY_READ_BUFFER, wait).await?;
                Ok::<usize, Error>(conn.pending)
            }
        })
        .buffer_unordered(common.login_concurrency.max(1))
        .try_collect()
        .await?;
    Ok((delivered.iter().sum(), secs(t.elapsed())))
}

/// Runs `offline`.
///
/// # Errors
/// When a login or a socket fails.
pub async fn run(common: &Common, o: &OfflineOpts) -> Result<Report, Error> {
    let deadline = common.deadline();
    let r = o.recipients.max(1);
    let s = o.senders.max(1);
    let rprefix = format!("{}o", common.prefix);
    let sprefix = format!("{}s", common.prefix);

    // 1. The recipients get accounts and go offline.
    register(
        common,
        (0..r).map(|j| format!("{rprefix}{j}")).collect(),
        deadline,
    )
    .await?;
    // The server closes a session just before it removes it from the hub: give the last
    // ones a moment, or a message could still find them online.
    tokio::time::sleep(Duration::from_millis(300).max(common.settle)).await;

    // 2. The senders flood the mailboxes.
    let shared = Shared::new(s);
    let (users, plans, per_recipient) = senders(common, o, r, &rprefix, &sprefix);
    let (mut clients, _) = login_all(common, users, &shared, BUSY_READ_BUFFER, deadline).await?;
    let started = Instant::now();
    let sender_tasks = spawn_senders(&mut clients, plans, &shared);
    let all = shared.wait_all(deadline).await;
    let ended = Instant::now();
    shared.stop();
    let (sent, send_error) = join_senders(&mut clients, sender_tasks).await;
    let (seen, closed, _) = finish(&shared, clients).await;
    let end = if all {
        seen.done_at.unwrap_or(ended)
    } else {
        ended
    };
    let stored = seen.echoes;

    // 3. The recipients log in: each acknowledgement carries their mailbox.
    let (mailbox_delivered, login_all_s) = open_mailboxes(common, r, &rprefix, deadline).await?;

    let mut report = Report {
        workload: "offline".into(),
        server: common.server.to_string(),
        clients: r,
        senders: s,
        messages_per_sender: o.messages,
        size: common.size,
        window: Some(o.window),
        sent,
        disconnected: closed,
        timed_out: !all,
        login_s: login_all_s,
        logins_per_s: r as f64 / login_all_s.max(1e-9),
        ..Report::default()
    };
    // Deliveries here are the senders' echoes: each confirms a message stored.
    report.deliveries(&seen, sent, secs(end.saturating_duration_since(started)));
    report.messages_per_s = stored as f64 / report.elapsed_s.max(1e-9);
    report.latency_us = shared.latency.summary();
    report.stored = Some(stored);
    report.mailbox_delivered = Some(mailbox_delivered);
    report.mailbox_lost = Some(stored.saturating_sub(mailbox_delivered as u64));
    // No recipients, no mailboxes: the largest holds nothing.
    report.mailbox_max = Some(per_recipient.iter().copied().max().unwrap_or(0));
    report.mailbox_login_s = Some(login_all_s);
    report.mailbox_deliveries_per_s = Some(mailbox_delivered as f64 / login_all_s.max(1e-9));
    report.send_error = send_error.map(|e| e.to_string());
    Ok(report)
}
