//! `redis-fanout`: the reference for `fanout`, run against a Redis server's pub/sub instead
//! of ours, so that the benchmark can set the two side by side in one run
//! (`cargo xtask bench` starts a private `redis-server` for it).
//!
//! C *subscriber* connections `SUBSCRIBE` to one channel (named by `--prefix`); S
//! *publisher* connections, separate from the subscribers, `PUBLISH` M messages each to it,
//! paced exactly as `fanout`'s senders are (the same [`crate::send::send`] loop and
//! schedule: flood with a window, or open loop with `--rate`), every payload the same text
//! with the same marker as our messages. Each subscriber reads the marker of every message
//! and records its latency with the same code as our receivers ([`recv::receive_resp`]).
//!
//! **How the counts compare.** Both runs have C receivers, each expecting S × M messages:
//! `expected` is C × S × M in both, so deliveries per second and latencies compare one to
//! one. In `fanout` the S senders are among the C clients (each also gets its own message,
//! the echo that releases its flood window); here they are S more connections that receive
//! nothing but `PUBLISH`'s reply, which releases the window instead (Redis has sent the
//! message to every subscriber's output buffer when it replies, as our server has queued it
//! for every recipient when the echo is queued). `echoes` counts those replies. Logging in
//! becomes subscribing (`login_s`), and the pause before the first message is only
//! `--settle-ms`: subscriptions send no presence notices to wait for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::pin;

use bytes::{Buf, BytesMut};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Semaphore;

use super::chat::pace;
use super::{BUSY_READ_BUFFER, Client, Common, finish, join_senders, secs, spawn_senders};
use crate::net::{self, Error};
use crate::recv::{self, Expect, Seen, Shared};
use crate::report::Report;
use crate::resp::{self, Item};
use crate::send::{Pace, Plan, Targets};

/// Options of `redis-fanout`: those of `fanout`, for a Redis server.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisFanoutOpts {
    /// Subscriber connections (the receivers).
    #[arg(short, long, default_value_t = 1000)]
    pub clients: usize,
    /// Publisher connections, besides the subscribers (at most `--clients`, as in `fanout`).
    #[arg(short, long, default_value_t = 10)]
    pub senders: usize,
    /// Messages per publisher.
    #[arg(short, long, default_value_t = 200)]
    pub messages: u32,
    /// Flood: messages a publisher may have sent but not yet seen answered.
    #[arg(short, long, default_value_t = 16)]
    pub window: usize,
    /// Open loop: messages per second, all publishers together (no window).
    #[arg(long)]
    pub rate: Option<f64>,
}

/// Runs `redis-fanout` against the Redis server at `common.server`.
///
/// # Errors
/// When a connection, a subscription or a socket fails.
pub async fn fanout(common: &Common, o: &RedisFanoutOpts) -> Result<Report, Error> {
    let deadline = common.deadline();
    let clients = o.clients.max(1);
    let senders = o.senders.min(clients).max(1);
    let channel = common.prefix.as_bytes().to_vec();
    let shared = Shared::new(clients);
    let per_receiver = senders as u64 * u64::from(o.messages);

    let started = Instant::now();
    let subscribers =
        match subscribe_all(common, clients, senders, per_receiver, &shared, deadline).await {
            Ok(s) => s,
            Err(e) => {
                shared.stop();
                return Err(e);
            }
        };
    let subscribed = started.elapsed();

    // Schedules start after the subscriptions; the real start is set when sending begins.
    let placeholder = tokio::time::Instant::now();
    let mut plans = Vec::with_capacity(senders);
    let mut publishers = Vec::with_capacity(senders);
    for i in 0..senders {
        let pace = pace(i, senders, o.window, o.rate, placeholder);
        let window = match &pace {
            Pace::Window(w) => Some(w.clone()),
            Pace::Schedule { .. } => None,
        };
        let stream = match net::connect(common.server, common.bind.addr(clients + i)).await {
            Ok(s) => s,
            Err(e) => {
                shared.stop();
                return Err(e);
            }
        };
        let (reader, writer) = stream.into_split();
        publishers.push(Client {
            writer: Some(writer),
            task: tokio::spawn(replies(reader, window, shared.clone())),
            pending: 0,
        });
        plans.push(Plan {
            me: i as u32,
            count: o.messages,
            size: common.size,
            to: Targets::RedisChannel(channel.clone()),
            pace,
        });
    }
    tokio::time::sleep(common.settle).await;

    // Open-loop schedules begin a little after now, the same instant for every publisher.
    let start_at = tokio::time::Instant::now() + Duration::from_millis(5);
    for p in &mut plans {
        if let Pace::Schedule { start, .. } = &mut p.pace {
            *start = start_at;
        }
    }
    let sending = Instant::now();
    let tasks = spawn_senders(&mut publishers, plans, &shared);
    let all = shared.wait_all(deadline).await;
    let ended = Instant::now();
    shared.stop();
    let (sent, send_error) = join_senders(&mut publishers, tasks).await;
    let (mut seen, closed, _) = finish(&shared, subscribers).await;
    let (answers, publishers_closed, _) = finish(&shared, publishers).await;
    let end = if all {
        seen.done_at.unwrap_or(ended)
    } else {
        ended
    };
    // The publishers' replies (as `echoes`) and errors; they received no messages.
    seen.add(&answers);

    let mut report = Report {
        workload: "redis-fanout".into(),
        server: common.server.to_string(),
        clients,
        senders,
        messages_per_sender: o.messages,
        size: common.size,
        window: o.rate.is_none().then_some(o.window),
        rate: o.rate,
        login_s: secs(subscribed),
        logins_per_s: clients as f64 / secs(subscribed).max(1e-9),
        settle_s: Some(secs(common.settle)),
        sent,
        disconnected: closed + publishers_closed,
        timed_out: !all,
        ..Report::default()
    };
    report.deliveries(
        &seen,
        per_receiver * clients as u64,
        secs(end.saturating_duration_since(sending)),
    );
    report.latency_us = shared.latency.summary();
    report.echoes = Some(seen.echoes);
    if report.rate.is_some() {
        report.send_lag_us = Some(shared.send_lag.summary());
        report.latency_from_write_us = Some(shared.latency_from_write.summary());
    }
    report.send_error = send_error.map(|e| e.to_string());
    Ok(report)
}

/// Connects and subscribes `n` subscribers, `common.login_concurrency` at a time, each
/// one's receiver started as soon as its subscription is confirmed. In order.
async fn subscribe_all(
    common: &Common,
    n: usize,
    senders: usize,
    per_receiver: u64,
    shared: &Arc<Shared>,
    deadline: tokio::time::Instant,
) -> Result<Vec<Client>, Error> {
    let mut subscribers = futures::stream::iter(0..n)
        .map(|i| {
            let shared = shared.clone();
            async move {
                let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                let stream = net::connect(common.server, common.bind.addr(i)).await?;
                let (reader, mut writer) = stream.into_split();
                let (reader, buf) =
                    tokio::time::timeout(wait, subscribe(reader, &mut writer, &common.prefix))
                        .await
                        .map_err(|_| Error::Timeout(format!("subscription {i}")))??;
                let expect = Expect {
                    messages: per_receiver,
                    senders,
                    ..Expect::default()
                };
                let task = tokio::spawn(recv::receive_resp(
                    reader,
                    buf,
                    BUSY_READ_BUFFER,
                    expect,
                    shared,
                ));
                Ok::<_, Error>((
                    i,
                    Client {
                        // Kept: dropping the write half would shut the socket down for
                        // writing, and Redis closes a connection at its end of file.
                        writer: Some(writer),
                        task,
                        pending: 0,
                    },
                ))
            }
        })
        .buffer_unordered(common.login_concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    subscribers.sort_unstable_by_key(|(i, _)| *i);
    Ok(subscribers.into_iter().map(|(_, c)| c).collect())
}

/// Sends `SUBSCRIBE channel` and reads until its confirmation. Returns the read half and
/// what was read after the confirmation.
async fn subscribe(
    mut reader: OwnedReadHalf,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    channel: &str,
) -> Result<(OwnedReadHalf, BytesMut), Error> {
    let mut buf = BytesMut::with_capacity(BUSY_READ_BUFFER);
    resp::command(&[b"SUBSCRIBE", channel.as_bytes()], &mut buf);
    writer
        .write_all(&buf)
        .await
        .map_err(|e| Error::io("cannot send SUBSCRIBE", e))?;
    buf.clear();
    // The confirmation is the first reply; anything before it is read past, but a
    // connection that sends values forever without it is bounded by the caller's timeout.
    loop {
        let mut used = 0;
        loop {
            match resp::next(&buf[used..]).map_err(|e| Error::Protocol(e.to_string()))? {
                Some((Item::Subscribed { .. }, n)) => {
                    buf.advance(used + n);
                    return Ok((reader, buf));
                }
                Some((Item::Error(e), _)) => {
                    return Err(Error::Protocol(format!(
                        "SUBSCRIBE refused: {}",
                        String::from_utf8_lossy(e)
                    )));
                }
                Some((_, n)) => used += n,
                None => break,
            }
        }
        buf.advance(used);
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(BUSY_READ_BUFFER);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => {
                return Err(Error::Protocol(
                    "the server closed the connection before confirming SUBSCRIBE".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(Error::io("cannot read the SUBSCRIBE confirmation", e)),
        }
    }
}

/// Reads a publisher's replies until the run stops: each `PUBLISH` reply (an integer, how
/// many subscribers got the message) counts as the publisher's `echo` and gives a flood
/// window slot back; an error reply counts under `fails` (code 0) and gives its slot back
/// too, as a `fail` does for our senders.
async fn replies(
    mut reader: OwnedReadHalf,
    window: Option<Arc<Semaphore>>,
    shared: Arc<Shared>,
) -> Seen {
    let mut seen = Seen::default();
    let mut buf = BytesMut::with_capacity(4096);
    let stop = shared.stop.clone();
    let mut stopped = pin!(stop.cancelled());
    loop {
        let mut used = 0;
        let mut answered = 0;
        loop {
            match resp::next(&buf[used..]) {
                Ok(Some((item, n))) => {
                    used += n;
                    seen.frames += 1;
                    match item {
                        Item::Integer(_) => {
                            seen.echoes += 1;
                            answered += 1;
                        }
                        Item::Error(_) => {
                            *seen.fails.entry(0).or_default() += 1;
                            answered += 1;
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    seen.closed = true;
                    return seen;
                }
            }
        }
        buf.advance(used);
        if answered > 0 {
            if let Some(w) = &window {
                w.add_permits(answered);
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let read = tokio::select! {
            biased;
            n = reader.read_buf(&mut buf) => n,
            () = &mut stopped => break,
        };
        if shared.stopped() {
            break;
        }
        if !matches!(read, Ok(n) if n > 0) {
            seen.closed = true;
            break;
        }
    }
    seen
}
