//! `history`: R readers ask for pages of the public conversation (`history`, the newest
//! `limit` messages), one request at a time each, P pages each, while C chatters send
//! public messages at a fixed total rate; a seeder fills the history with S messages first.
//! Measures pages per second and each page's round trip (request written to reply read).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use super::{BUSY_READ_BUFFER, Common, secs};
use crate::net::{self, Conn, Error};
use crate::report::Report;
use crate::scan::{self, Kind};
use crate::stats::SharedHistogram;

/// Options of `history`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryOpts {
    /// Clients asking for pages.
    #[arg(short, long, default_value_t = 50)]
    pub readers: usize,
    /// Pages each reader asks for, one after the other.
    #[arg(short, long, default_value_t = 200)]
    pub pages: u32,
    /// Messages a page holds at most (1–200).
    #[arg(short, long, default_value_t = 50)]
    pub limit: u32,
    /// Public messages sent before the readers start, so that pages are full.
    #[arg(long, default_value_t = 2000)]
    pub seed: u32,
    /// Clients chatting (public messages) while the readers read.
    #[arg(short, long, default_value_t = 10)]
    pub chatters: usize,
    /// Public messages per second, all chatters together (0: no chat).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
}

/// A reply frame that answers `history`.
fn is_history(frame: &[u8]) -> bool {
    frame.starts_with(br#"{"command":"history""#)
}

/// Sends `n` public messages from `conn`, at most `window` not yet echoed.
async fn seed(conn: &mut Conn, text: &[u8], n: u32, window: u32) -> Result<(), Error> {
    let (mut sent, mut echoed) = (0u32, 0u32);
    let mut buf = BytesMut::new();
    let scanner = scan::MessageScanner::new();
    while echoed < n {
        while sent < n && sent - echoed < window {
            net::send_frame(text, b"*", &mut buf);
            sent += 1;
        }
        if !buf.is_empty() {
            conn.writer
                .write_all(&buf)
                .await
                .map_err(|e| Error::io("cannot send a seed message", e))?;
            buf.clear();
        }
        match conn.reader.next().await {
            Some(Ok(frame)) if scan::kind(&frame) == Kind::Message => {
                echoed += u32::try_from(scanner.count(&frame)).unwrap_or(u32::MAX);
            }
            Some(Ok(frame)) if scan::kind(&frame) == Kind::Fail => {
                return Err(Error::Protocol(format!(
                    "a seed message was refused: {}",
                    String::from_utf8_lossy(&frame)
                )));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Error::io("seeder", e)),
            None => return Err(Error::Protocol("the server closed the seeder".into())),
        }
    }
    Ok(())
}

/// What one reader saw.
#[derive(Debug, Default)]
struct Read {
    pages: u64,
    fails: Vec<u16>,
}

/// Asks for `pages` pages one after the other, recording each round trip.
async fn read(
    mut conn: Conn,
    request: Arc<BytesMut>,
    pages: u32,
    latency: SharedHistogram,
) -> Result<Read, Error> {
    let mut rec = latency.recorder();
    let mut seen = Read::default();
    for _ in 0..pages {
        let asked = Instant::now();
        conn.writer
            .write_all(&request)
            .await
            .map_err(|e| Error::io("cannot send history", e))?;
        loop {
            match conn.reader.next().await {
                Some(Ok(frame)) if is_history(&frame) => {
                    rec.record(u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX));
                    seen.pages += 1;
                    break;
                }
                Some(Ok(frame)) if scan::kind(&frame) == Kind::Fail => {
                    seen.fails.push(scan::error_code(&frame).unwrap_or(0));
                    break;
                }
                // Chat, presence.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Error::io("reader", e)),
                None => return Err(Error::Protocol("the server closed a reader".into())),
            }
        }
    }
    rec.flush();
    Ok(seen)
}

/// Sends public messages at `per_sec` until `stop`, draining what the server sends back;
/// returns how many it sent.
async fn chat(conn: Conn, text: Vec<u8>, per_sec: f64, stop: Arc<AtomicBool>) -> u64 {
    let Conn {
        mut reader,
        mut writer,
        ..
    } = conn;
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = reader.next().await {} });
    let mut sent = 0;
    if per_sec > 0.0 {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = BytesMut::new();
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            net::send_frame(&text, b"*", &mut buf);
            if writer.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
            sent += 1;
        }
    }
    drop(writer);
    drain.abort();
    sent
}

/// Runs `history`.
///
/// # Errors
/// When a login or a socket fails, or a seed message is refused.
pub async fn run(common: &Common, o: &HistoryOpts) -> Result<Report, Error> {
    let deadline = common.deadline();
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let text = vec![b'h'; common.size.max(1)];
    let p = &common.prefix;
    let mut seeder = net::login(
        common.server,
        None,
        &format!("{p}seed"),
        BUSY_READ_BUFFER,
        left(),
    )
    .await?;
    tokio::time::timeout(left(), seed(&mut seeder, &text, o.seed, 64))
        .await
        .map_err(|_| Error::Timeout("seeding the history".into()))??;
    drop(seeder);

    let readers = o.readers.max(1);
    let users: Vec<String> = (0..readers)
        .map(|i| format!("{p}r{i}"))
        .chain((0..o.chatters).map(|i| format!("{p}c{i}")))
        .collect();
    let n = users.len();
    let logins = Instant::now();
    let server = common.server;
    let mut conns: Vec<Conn> = futures::stream::iter(users)
        .map(|user| async move { net::login(server, None, &user, BUSY_READ_BUFFER, left()).await })
        .buffered(common.login_concurrency.max(1))
        .try_collect()
        .await?;
    let login_s = secs(logins.elapsed());
    tokio::time::sleep(common.settle).await;

    let stop = Arc::new(AtomicBool::new(false));
    let per_chatter = if o.chatters == 0 {
        0.0
    } else {
        o.rate / o.chatters as f64
    };
    let chatters: Vec<_> = conns
        .split_off(readers)
        .into_iter()
        .map(|conn| tokio::spawn(chat(conn, text.clone(), per_chatter, stop.clone())))
        .collect();
    let limit = o.limit.clamp(1, 200);
    let mut request = BytesMut::new();
    let payload = format!(r#"{{"command":"history","with":"*","limit":{limit}}}"#);
    simpletextim_proto::codec::encode_frame(payload.as_bytes(), usize::MAX, &mut request)
        .map_err(|e| Error::Protocol(format!("cannot encode history: {e}")))?;
    let request = Arc::new(request);
    let latency = SharedHistogram::new();
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| tokio::spawn(read(conn, request.clone(), o.pages, latency.clone())))
        .collect();
    let pages = AtomicU64::new(0);
    let mut report = Report {
        workload: "history".into(),
        senders: o.chatters,
        clients: n,
        size: common.size,
        rate: Some(o.rate),
        login_s,
        logins_per_s: n as f64 / login_s.max(1e-9),
        ..Report::default()
    };
    let mut first_error = None;
    for joined in futures::future::join_all(tasks).await {
        match joined {
            Ok(Ok(seen)) => {
                pages.fetch_add(seen.pages, Ordering::Relaxed);
                for code in seen.fails {
                    *report.fails.entry(code).or_default() += 1;
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::Protocol(format!("a reader panicked: {e}")));
            }
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for c in chatters {
        sent += c.await.unwrap_or(0);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let pages = pages.load(Ordering::Relaxed);
    let elapsed_s = secs(elapsed);
    report.sent = sent;
    report.elapsed_s = elapsed_s;
    report.messages_per_s = sent as f64 / elapsed_s.max(1e-9);
    report.pages = Some(pages);
    report.pages_per_s = Some(pages as f64 / elapsed_s.max(1e-9));
    report.page_latency_us = Some(latency.summary());
    report.timed_out = left().is_zero();
    Ok(report)
}
