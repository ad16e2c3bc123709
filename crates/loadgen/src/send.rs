//! The sending side: a sender writes `send` commands (or, for the Redis reference, `PUBLISH`
//! commands) either as fast as its window allows
//! (flood: at most W messages not yet echoed back) or on a fixed schedule (open loop, where
//! each message carries its *scheduled* time, so a server that falls behind is charged for
//! the wait and latency is not under-reported).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Semaphore;

use crate::net::{Error, Framer};
use crate::recv::Shared;
use crate::resp;
use crate::scan::{Marker, write_text};

/// Most frames written with one `write` call in flood mode.
const MAX_BATCH: u32 = 64;

/// How a sender paces itself.
#[derive(Debug, Clone)]
pub enum Pace {
    /// Flood: take a permit per message; the receiver gives one back per own echo.
    Window(Arc<Semaphore>),
    /// Open loop: message `seq` is due at `start + offset + seq × every`.
    Schedule {
        /// When the first message of sender 0 is due.
        start: tokio::time::Instant,
        /// This sender's offset, so that senders interleave evenly.
        offset: Duration,
        /// Time between two messages of this sender.
        every: Duration,
    },
}

/// Whom the messages go to.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Public messages.
    Everyone,
    /// Private messages: message `seq` goes to `{prefix}{ids[seq % ids.len()]}`.
    Users {
        /// The user id prefix.
        prefix: String,
        /// Recipient indices, one per message (cycled if shorter).
        ids: Vec<u32>,
    },
    /// Not our protocol: `PUBLISH` to this channel of a Redis server (the `redis-fanout`
    /// reference workload), the same text in the payload.
    RedisChannel(Vec<u8>),
}

/// One sender's work.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Sender index, written into every marker.
    pub me: u32,
    /// Messages to send.
    pub count: u32,
    /// Length of each text in bytes (at least the marker).
    pub size: usize,
    /// Recipients.
    pub to: Targets,
    /// Pacing.
    pub pace: Pace,
}

/// Sends the plan's messages; stops early when the run is stopped. Returns how many were
/// written.
///
/// # Errors
/// When the socket fails.
pub async fn send(writer: &mut OwnedWriteHalf, plan: &Plan, shared: &Shared) -> Result<u32, Error> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut text = Vec::with_capacity(plan.size.max(32));
    let mut to = Vec::with_capacity(40);
    let mut seq = 0u32;
    let base = tokio::time::Instant::from_std(shared.base);
    let mut lag = shared.send_lag.recorder();
    let mut framer = Framer::new(shared.transport, u64::from(plan.me));
    while seq < plan.count {
        let (n, sent_us) = match &plan.pace {
            Pace::Window(window) => {
                let permit = tokio::select! {
                    p = window.acquire() => p,
                    () = shared.stop.cancelled() => break,
                };
                match permit {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
                let mut n = 1;
                while n < MAX_BATCH && seq + n < plan.count {
                    match window.try_acquire() {
                        Ok(p) => p.forget(),
                        Err(_) => break,
                    }
                    n += 1;
                }
                (n, shared.now_us())
            }
            Pace::Schedule {
                start,
                offset,
                every,
            } => {
                let due = *start + *offset + *every * seq;
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = shared.stop.cancelled() => break,
                }
                (1, due.saturating_duration_since(base).as_micros() as u64)
            }
        };
        let written_us = match plan.pace {
            Pace::Schedule { .. } => shared.now_us().max(1),
            Pace::Window(_) => 0,
        };
        for i in 0..n {
            let marker = Marker {
                sender: plan.me,
                seq: seq + i,
                sent_us,
                written_us,
            };
            write_text(&mut text, marker, plan.size);
            to.clear();
            match &plan.to {
                Targets::Everyone => to.push(b'*'),
                Targets::Users { prefix, ids } => {
                    let idx = ids
                        .get(((seq + i) as usize) % ids.len().max(1))
                        .copied()
                        .unwrap_or(0);
                    to.extend_from_slice(prefix.as_bytes());
                    to.extend_from_slice(idx.to_string().as_bytes());
                }
                Targets::RedisChannel(channel) => {
                    resp::publish(channel, &text, &mut buf);
                    continue;
                }
            }
            framer.send(&text, &to, &mut buf);
        }
        writer
            .write_all(&buf)
            .await
            .map_err(|e| Error::io("cannot send", e))?;
        if let Pace::Schedule { .. } = plan.pace {
            lag.record(shared.now_us().saturating_sub(sent_us));
        }
        buf.clear();
        seq += n;
    }
    Ok(seq)
}
