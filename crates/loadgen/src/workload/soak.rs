//! `soak`: normal users chatting while hostile connections attack the server. Does the
//! server keep its normal users' round trip, deliver everything, and hold its memory?
//!
//! **Normal users**: `--users` clients from the kernel's choice of source address
//! (127.0.0.1 for a server on 127.0.0.1), logged in, each sending public messages on an
//! open-loop schedule of `--user-rate` per second for `--secs` seconds. Their round trip
//! is a send to its own echo; every normal user expects every message any normal user
//! sends (they are all logged in throughout), so `lost` is exact.
//!
//! **Hostile connections**: `--hostile` of them, from 127.0.0.2, 127.0.0.3, …
//! (`--per-addr` each, in blocks of one kind, so a source address does one thing), in
//! fixed shares ([`SHARES`]). Each one reconnects `--pause-ms` after the server closes it
//! (or after its own turn ends) until the run stops it:
//! - *slowloris*: a frame header announcing 4000 bytes, then one byte every
//!   `--slow-every-ms`; the frame never completes;
//! - *garbage*: a frame of junk every `--garbage-every-ms` (text that is not JSON, JSON
//!   that is not a command, bytes that are not UTF-8, a length header over the limit, or
//!   unframed random bytes);
//! - *guesser*: one login with a wrong password for a normal user's account per
//!   connection (fresh connections, as a guesser avoids the per-connection count);
//! - *never-reader*: logs in (its own account) with a 4 KiB receive buffer, reads the
//!   login acknowledgement and nothing after it; every 2 s it writes a 5-byte probe frame
//!   to notice when the server has closed it;
//! - *flooder*: logs in (its own account) and sends `--flood-rate` commands per second —
//!   public messages, every fifth a `list` — reading everything it is sent.
//!
//! Every `fail` the hostile connections receive is counted by kind and code, with the
//! connections the server closed. With `--server-pid` the server's RSS is sampled every
//! second (peak `VmHWM`, the end, and a few seconds after the hostile connections stop).
//!
//! The timeline: normal users log in and settle; the hostile connections start; after
//! `--warmup-secs` the chat starts; the run waits for every normal user's last expected
//! message (at most [`DRAIN`] after the chat ends), then stops the hostile connections.
//! `--hostile 0` is the quiet run of the same timeline.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::{
    BUSY_READ_BUFFER, Common, Rng, finish, join_senders, login_all, secs, settle, spawn_senders,
};
use crate::net::{self, Error, Reader, reply_codec};
use crate::recv::{Expect, Shared};
use crate::report::{HostileCounts, Report};
use crate::scan::{self, Kind as FrameKind};
use crate::send::{Pace, Plan, Targets};
use crate::stats::{peak_rss_bytes, rss_bytes};

/// The kinds of hostile connection and their share of `--hostile`, in percent; the
/// remainder of the rounding goes to the first.
pub const SHARES: [(Kind, usize); 5] = [
    (Kind::Slowloris, 40),
    (Kind::Garbage, 20),
    (Kind::Guesser, 20),
    (Kind::NeverReader, 16),
    (Kind::Flooder, 4),
];
/// How long after the chat's end the run waits for the last expected messages.
pub const DRAIN: Duration = Duration::from_secs(20);
/// How often the server's RSS goes into the report's samples (it is read every second).
pub const RSS_SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How long the server gets after the hostile connections stop before its RSS is read
/// again (the allocator returns freed pages within about a second).
const RELEASE_WAIT: Duration = Duration::from_secs(3);
/// Longest wait for a connect, a write or a login answer of a hostile connection.
const IO_WAIT: Duration = Duration::from_secs(5);
/// How often a never-reader probes whether the server has closed it.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Receive buffer of a never-reader's socket: the server's writes stall soon.
const NEVER_READER_RCVBUF: u32 = 4096;
/// The length a slowloris frame header announces (under the server's 4096-byte limit).
const SLOW_FRAME_LEN: u32 = 4000;

/// Options of `soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakOpts {
    /// Normal users, all sending.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Public messages per second of each normal user.
    #[arg(long, default_value_t = 1.0)]
    pub user_rate: f64,
    /// Seconds the normal users chat for.
    #[arg(long, default_value_t = 60.0)]
    pub secs: f64,
    /// Hostile connections (0: the quiet run).
    #[arg(long, default_value_t = 1000)]
    pub hostile: usize,
    /// Hostile connections per source address (127.0.0.2, 127.0.0.3, …).
    #[arg(long, default_value_t = 10)]
    pub per_addr: usize,
    /// Seconds between the start of the hostile connections and the start of the chat.
    #[arg(long, default_value_t = 3.0)]
    pub warmup_secs: f64,
    /// Milliseconds a hostile connection waits before it connects again.
    #[arg(long, default_value_t = 500)]
    pub pause_ms: u64,
    /// Milliseconds between two bytes of a slowloris connection.
    #[arg(long, default_value_t = 3000)]
    pub slow_every_ms: u64,
    /// Milliseconds between two junk frames of a garbage connection.
    #[arg(long, default_value_t = 100)]
    pub garbage_every_ms: u64,
    /// Commands per second of each flooder.
    #[arg(long, default_value_t = 50.0)]
    pub flood_rate: f64,
    /// The server's process id, to sample its memory from `/proc/PID/status`.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// A kind of hostile connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A frame that never completes, one byte at a time.
    Slowloris,
    /// Junk frames and bytes.
    Garbage,
    /// Wrong passwords for the normal users' accounts.
    Guesser,
    /// Logs in, then never reads.
    NeverReader,
    /// Logs in and sends faster than the server allows.
    Flooder,
}

impl Kind {
    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Slowloris => "slowloris",
            Kind::Garbage => "garbage",
            Kind::Guesser => "guesser",
            Kind::NeverReader => "never-reader",
            Kind::Flooder => "flooder",
        }
    }
}

/// How many connections of each kind make `total`, in the order of [`SHARES`].
pub fn split(total: usize) -> Vec<(Kind, usize)> {
    let mut counts: Vec<(Kind, usize)> =
        SHARES.iter().map(|&(k, p)| (k, total * p / 100)).collect();
    let given: usize = counts.iter().map(|(_, n)| n).sum();
    if let Some(first) = counts.first_mut() {
        first.1 += total - given;
    }
    counts
}

/// Each kind's count and the slot of its first connection: every kind starts on an
/// address of its own, so one address does one thing.
fn layout(total: usize, per_addr: usize) -> Vec<(Kind, usize, usize)> {
    let per_addr = per_addr.max(1);
    let mut next = 0;
    split(total)
        .into_iter()
        .map(|(kind, count)| {
            let first = next;
            next = (first + count).div_ceil(per_addr) * per_addr;
            (kind, count, first)
        })
        .collect()
}

/// The source address of hostile connection slot `i` (counted over all kinds).
fn source(i: usize, per_addr: usize) -> Option<IpAddr> {
    let octet = u8::try_from(2 + i / per_addr.max(1))
        .ok()
        .filter(|&o| o < 255)?;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)))
}

/// Runs `soak`.
///
/// # Errors
/// When a normal user's login or socket fails, the hostile connections need more source
/// addresses than 127.0.0.2–127.0.0.254, or the server's memory cannot be read.
pub async fn run(common: &Common, o: &SoakOpts) -> Result<Report, Error> {
    let deadline = common.deadline();
    let n = o.users.max(1);
    let slots = layout(o.hostile, o.per_addr)
        .last()
        .map_or(0, |&(_, count, first)| first + count);
    if slots > 0 && source(slots - 1, o.per_addr).is_none() {
        return Err(Error::Protocol(format!(
            "{} hostile connections at {} per address need more than 127.0.0.2–127.0.0.254",
            o.hostile, o.per_addr
        )));
    }
    if o.hostile > 0 && !common.server.is_ipv4() {
        return Err(Error::Protocol(
            "hostile connections come from 127.0.0.x: the server must listen on IPv4".into(),
        ));
    }
    let rate = o.user_rate.max(0.01) * n as f64;
    let per_sender = (o.user_rate.max(0.01) * o.secs.max(0.1)).ceil() as u32;
    let shared = Shared::new(n);
    let placeholder = Instant::now();
    let mut plans = Vec::with_capacity(n);
    let users = (0..n)
        .map(|i| {
            plans.push(Plan {
                me: i as u32,
                count: per_sender,
                size: common.size,
                to: Targets::Everyone,
                pace: super::chat::pace(i, n, 0, Some(rate), placeholder),
            });
            let expect = Expect {
                me: Some(i as u32),
                messages: n as u64 * u64::from(per_sender),
                senders: n,
                ..Expect::default()
            };
            (format!("{}{i}", common.prefix), expect)
        })
        .collect();
    let (mut clients, login) =
        login_all(common, users, &shared, BUSY_READ_BUFFER, deadline).await?;
    let settled = settle(common, &shared, n, deadline).await;

    let read_rss = |pid: Option<u32>| {
        pid.map(rss_bytes)
            .transpose()
            .map_err(|e| Error::io("cannot read the server's memory", e))
    };
    let rss_before = read_rss(o.server_pid)?;
    let memory = o.server_pid.map(MemoryWatch::start);
    let hostile = Hostile::start(common, o, n);
    tokio::time::sleep(Duration::from_secs_f64(o.warmup_secs.max(0.0))).await;

    let start_at = Instant::now() + Duration::from_millis(5);
    for p in &mut plans {
        if let Pace::Schedule { start, .. } = &mut p.pace {
            *start = start_at;
        }
    }
    let started = std::time::Instant::now();
    let senders = spawn_senders(&mut clients, plans, &shared);
    let chat_end = start_at + Duration::from_secs_f64(o.secs.max(0.1));
    let all = shared.wait_all(deadline.min(chat_end + DRAIN)).await;
    let ended = std::time::Instant::now();
    let rss_after = read_rss(o.server_pid)?;
    let samples = match memory {
        Some(m) => Some(m.stop().await),
        None => None,
    };
    let hostile = hostile.stop().await;
    let rss_released = if o.server_pid.is_some() && o.hostile > 0 {
        tokio::time::sleep(RELEASE_WAIT).await;
        read_rss(o.server_pid)?
    } else {
        rss_after
    };
    let peak = o
        .server_pid
        .map(peak_rss_bytes)
        .transpose()
        .map_err(|e| Error::io("cannot read the server's memory", e))?;

    shared.stop();
    let (sent, send_error) = join_senders(&mut clients, senders).await;
    let (seen, closed, _) = finish(&shared, clients).await;
    let mut report = Report {
        workload: "soak".into(),
        server: common.server.to_string(),
        clients: n,
        senders: n,
        messages_per_sender: per_sender,
        size: common.size,
        rate: Some(rate),
        login_s: secs(login),
        logins_per_s: n as f64 / secs(login).max(1e-9),
        sent,
        disconnected: closed,
        timed_out: !all,
        send_error: send_error.map(|e| e.to_string()),
        settle_s: Some(secs(settled)),
        soak_secs: Some(o.secs),
        ..Report::default()
    };
    let end = if all {
        seen.done_at.unwrap_or(ended)
    } else {
        ended
    };
    let expected = n as u64 * n as u64 * u64::from(per_sender);
    report.deliveries(
        &seen,
        expected,
        secs(end.saturating_duration_since(started)),
    );
    report.latency_us = shared.latency.summary();
    report.echo_latency_us = Some(shared.echo_latency.summary());
    report.echoes = Some(seen.echoes);
    report.send_lag_us = Some(shared.send_lag.summary());
    report.latency_from_write_us = Some(shared.latency_from_write.summary());
    report.flood_seen = Some(seen.unmarked);
    report.hostile = Some(hostile);
    report.server_rss_before = rss_before;
    report.server_rss_after = rss_after;
    report.server_rss_released = rss_released;
    report.server_rss_peak = peak;
    report.server_rss_samples = samples;
    Ok(report)
}

/// Samples the server's RSS every second until stopped.
struct MemoryWatch {
    stop: CancellationToken,
    task: JoinHandle<Vec<u64>>,
}

impl MemoryWatch {
    /// Starts sampling process `pid`.
    fn start(pid: u32) -> MemoryWatch {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let every = RSS_SAMPLE_EVERY.as_secs().max(1);
            let mut k = 0u64;
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                // A server that is gone has no RSS: the run reports it elsewhere.
                if let Ok(rss) = rss_bytes(pid) {
                    if k % every == 0 {
                        samples.push(rss);
                    }
                }
                k += 1;
            }
            samples
        });
        MemoryWatch { stop, task }
    }

    /// Stops sampling; returns the samples.
    async fn stop(self) -> Vec<u64> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// The counts of one kind, shared by its connections.
#[derive(Debug, Default)]
struct Counters {
    connects: AtomicU64,
    connect_errors: AtomicU64,
    logins: AtomicU64,
    actions: AtomicU64,
    closed: AtomicU64,
    fails: Mutex<BTreeMap<u16, u64>>,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a frame from the server: only `fail` replies matter here.
    fn frame(&self, frame: &[u8]) {
        if scan::kind(frame) == FrameKind::Fail {
            // Counted under 0 when the `fail` has no readable error code.
            let code = scan::error_code(frame).unwrap_or(0);
            let mut fails = self.fails.lock().unwrap_or_else(PoisonError::into_inner);
            *fails.entry(code).or_default() += 1;
        }
    }
}

/// What every hostile connection needs to know.
#[derive(Debug)]
struct Ctx {
    server: SocketAddr,
    prefix: String,
    users: usize,
    stop: CancellationToken,
    pause: Duration,
    slow_every: Duration,
    garbage_every: Duration,
    flood_every: Duration,
}

/// The hostile connections of a run.
struct Hostile {
    ctx: Arc<Ctx>,
    kinds: Vec<(Kind, usize, usize, Arc<Counters>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Hostile {
    /// Starts `o.hostile` connections; their first connects are spread over a second.
    fn start(common: &Common, o: &SoakOpts, users: usize) -> Hostile {
        let ctx = Arc::new(Ctx {
            server: common.server,
            prefix: common.prefix.clone(),
            users,
            stop: CancellationToken::new(),
            pause: Duration::from_millis(o.pause_ms),
            slow_every: Duration::from_millis(o.slow_every_ms.max(1)),
            garbage_every: Duration::from_millis(o.garbage_every_ms.max(1)),
            flood_every: Duration::from_secs_f64(1.0 / o.flood_rate.max(0.01)),
        });
        let mut kinds = Vec::new();
        let mut tasks = Vec::with_capacity(o.hostile);
        for (kind, count, first) in layout(o.hostile, o.per_addr) {
            let counters = Arc::new(Counters::default());
            for j in 0..count {
                // Checked by `run`: every connection has a source address.
                let Some(from) = source(first + j, o.per_addr) else {
                    continue;
                };
                let delay = Duration::from_millis(((first + j) % 1000) as u64);
                tasks.push(tokio::spawn(connection(
                    ctx.clone(),
                    kind,
                    j,
                    from,
                    delay,
                    counters.clone(),
                )));
            }
            let addresses = count.div_ceil(o.per_addr.max(1));
            kinds.push((kind, count, addresses, counters));
        }
        Hostile { ctx, kinds, tasks }
    }

    /// Stops every connection and returns the counts by kind.
    async fn stop(self) -> Vec<HostileCounts> {
        self.ctx.stop.cancel();
        // Every connection stops within IO_WAIT of the token (its longest wait that does
        // not watch it); one still running after twice that is aborted. A task that
        // panicked has counted what it did.
        let until = Instant::now() + IO_WAIT * 2;
        for mut t in self.tasks {
            if tokio::time::timeout_at(until, &mut t).await.is_err() {
                t.abort();
            }
        }
        self.kinds
            .into_iter()
            .map(|(kind, conns, addresses, c)| HostileCounts {
                kind: kind.name().to_owned(),
                conns,
                addresses,
                connects: c.connects.load(Ordering::Relaxed),
                connect_errors: c.connect_errors.load(Ordering::Relaxed),
                logins: c.logins.load(Ordering::Relaxed),
                actions: c.actions.load(Ordering::Relaxed),
                closed: c.closed.load(Ordering::Relaxed),
                fails: c
                    .fails
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            })
            .collect()
    }
}

/// How one connection of a hostile kind ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closed it (or reset it).
    Closed,
    /// It finished its turn (a guess answered, a login refused, a write that stalled).
    Done,
    /// The run is over.
    Stopped,
}

/// One hostile connection: connects, plays its kind, pauses, and again until the run
/// stops.
async fn connection(
    ctx: Arc<Ctx>,
    kind: Kind,
    j: usize,
    from: IpAddr,
    delay: Duration,
    c: Arc<Counters>,
) {
    let mut rng = Rng::new(0x50A4 ^ ((j as u64) << 8) ^ kind as u64);
    let mut wait = delay;
    let mut turn = 0u64;
    loop {
        tokio::select! {
            () = ctx.stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = ctx.pause;
        Counters::add(&c.connects);
        let rcvbuf = (kind == Kind::NeverReader).then_some(NEVER_READER_RCVBUF);
        let stream = match open(ctx.server, from, rcvbuf).await {
            Ok(s) => s,
            Err(_) => {
                Counters::add(&c.connect_errors);
                continue;
            }
        };
        let end = match kind {
            Kind::Slowloris => slowloris(&ctx, stream, &c).await,
            Kind::Garbage => garbage(&ctx, stream, &c, &mut rng).await,
            Kind::Guesser => guess(&ctx, stream, &c, j, turn).await,
            Kind::NeverReader => never_read(&ctx, stream, &c, j).await,
            Kind::Flooder => flood(&ctx, stream, &c, j).await,
        };
        turn += 1;
        match end {
            End::Closed => Counters::add(&c.closed),
            End::Done => {}
            End::Stopped => return,
        }
    }
}

/// Connects from `from`, with a small receive buffer when asked.
async fn open(server: SocketAddr, from: IpAddr, rcvbuf: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = tokio::time::timeout(IO_WAIT, socket.connect(server))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes `bytes`; `false` when the socket failed or took nothing for [`IO_WAIT`].
async fn put(w: &mut OwnedWriteHalf, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(IO_WAIT, w.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// What a connection that reads does with the next frame: `None` to go on, or how the
/// connection ended when the server closed it.
fn on_frame(frame: Option<Result<BytesMut, std::io::Error>>, c: &Counters) -> Option<End> {
    match frame {
        Some(Ok(f)) => {
            c.frame(&f);
            None
        }
        _ => Some(End::Closed),
    }
}

/// A frame header announcing [`SLOW_FRAME_LEN`] bytes, then one byte of a login command
/// per tick.
async fn slowloris(ctx: &Ctx, stream: TcpStream, c: &Counters) -> End {
    let (r, mut w) = stream.into_split();
    let mut reader: Reader = FramedRead::new(r, reply_codec());
    let mut bytes = SLOW_FRAME_LEN.to_be_bytes().to_vec();
    bytes.extend_from_slice(br#"{"command":"login","user_id":"slow","password":""#);
    let mut tick = tokio::time::interval(ctx.slow_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut k = 0usize;
    loop {
        tokio::select! {
            () = ctx.stop.cancelled() => return End::Stopped,
            f = reader.next() => if let Some(end) = on_frame(f, c) { return end },
            _ = tick.tick() => {
                // Past the prepared bytes, padding inside the password string.
                let b = bytes.get(k).copied().unwrap_or(b'a');
                if !put(&mut w, &[b]).await {
                    return End::Closed;
                }
                k += 1;
                Counters::add(&c.actions);
            }
        }
    }
}

/// One piece of junk: mostly frames the server answers `fail 400` (or 401) and stays
/// open, sometimes a length over the limit or unframed bytes, which end the connection.
fn junk(rng: &mut Rng, out: &mut BytesMut) {
    out.clear();
    let frame = |payload: &[u8], out: &mut BytesMut| {
        out.put_u32(payload.len() as u32);
        out.put_slice(payload);
    };
    match rng.below(100) {
        // Printable text that is not JSON.
        0..=39 => {
            let len = 1 + rng.below(200) as usize;
            let text: Vec<u8> = (0..len).map(|_| b' ' + rng.below(95) as u8).collect();
            frame(&text, out);
        }
        // JSON that is not a command the server accepts before login.
        40..=79 => {
            const JSON: [&[u8]; 6] = [
                b"[1,2,3]",
                b"\"login\"",
                br#"{"command":"nope"}"#,
                br#"{"command":"send","message":"hi","to":"*"}"#,
                br#"{"command":"login","user_id":"bad id!","password":"x"}"#,
                br#"{"command":"list","ref":{"deep":[[[[[[[[[[1]]]]]]]]]]}}"#,
            ];
            frame(JSON[rng.below(JSON.len() as u64) as usize], out);
        }
        // Bytes that are not UTF-8.
        80..=91 => {
            let len = 1 + rng.below(64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| 0x80 | rng.below(128) as u8).collect();
            frame(&bytes, out);
        }
        // A length over the limit (`fail 413`, closed).
        92..=95 => {
            out.put_u32(0x7FFF_0000 + rng.below(0xFFFF) as u32);
            out.put_slice(b"{\"command\":");
        }
        // Unframed random bytes: whatever length their first four bytes say.
        _ => {
            for _ in 0..8 {
                out.put_u64(rng.next_u64());
            }
        }
    }
}

/// Junk every `--garbage-every-ms` until the server closes the connection.
async fn garbage(ctx: &Ctx, stream: TcpStream, c: &Counters, rng: &mut Rng) -> End {
    let (r, mut w) = stream.into_split();
    let mut reader: Reader = FramedRead::new(r, reply_codec());
    let mut tick = tokio::time::interval(ctx.garbage_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buf = BytesMut::new();
    loop {
        tokio::select! {
            () = ctx.stop.cancelled() => return End::Stopped,
            f = reader.next() => if let Some(end) = on_frame(f, c) { return end },
            _ = tick.tick() => {
                junk(rng, &mut buf);
                if !put(&mut w, &buf).await {
                    return End::Closed;
                }
                Counters::add(&c.actions);
            }
        }
    }
}

/// One wrong password for a normal user's account; waits for the answer, then hangs up.
async fn guess(ctx: &Ctx, stream: TcpStream, c: &Counters, j: usize, turn: u64) -> End {
    let (r, mut w) = stream.into_split();
    let mut reader: Reader = FramedRead::new(r, reply_codec());
    let target = format!("{}{}", ctx.prefix, (j + turn as usize) % ctx.users.max(1));
    let mut buf = BytesMut::new();
    net::login_frame(&target, &format!("guess-{j}-{turn}"), &mut buf);
    if !put(&mut w, &buf).await {
        return End::Closed;
    }
    Counters::add(&c.actions);
    let answer = tokio::select! {
        () = ctx.stop.cancelled() => return End::Stopped,
        a = tokio::time::timeout(IO_WAIT, reader.next()) => a,
    };
    match answer {
        Ok(Some(Ok(frame))) => {
            if scan::kind(&frame) == FrameKind::Message {
                // A guess that got in: a wrong password accepted.
                Counters::add(&c.logins);
            }
            c.frame(&frame);
            End::Done
        }
        Ok(_) => End::Closed,
        Err(_) => End::Done,
    }
}

/// Logs in as this connection's own account; `Err` with how the connection ended when
/// the login did not succeed.
async fn hostile_login(
    ctx: &Ctx,
    w: &mut OwnedWriteHalf,
    reader: &mut Reader,
    c: &Counters,
    user: &str,
) -> Result<(), End> {
    let mut buf = BytesMut::new();
    net::login_frame(user, net::PASSWORD, &mut buf);
    if !put(w, &buf).await {
        return Err(End::Closed);
    }
    let answer = tokio::select! {
        () = ctx.stop.cancelled() => return Err(End::Stopped),
        a = tokio::time::timeout(IO_WAIT * 2, reader.next()) => a,
    };
    match answer {
        Ok(Some(Ok(frame))) => {
            c.frame(&frame);
            if scan::kind(&frame) == FrameKind::Message {
                Counters::add(&c.logins);
                Ok(())
            } else {
                Err(End::Done)
            }
        }
        Ok(_) => Err(End::Closed),
        Err(_) => Err(End::Done),
    }
}

/// Logs in, reads the acknowledgement and nothing more; probes every [`PROBE_EVERY`]
/// until a write fails (the server has closed the connection).
async fn never_read(ctx: &Ctx, stream: TcpStream, c: &Counters, j: usize) -> End {
    let (r, mut w) = stream.into_split();
    // Kept, never polled after the login: the socket stays open and unread.
    let mut reader: Reader = FramedRead::with_capacity(r, reply_codec(), 4096);
    let user = format!("{}n{j}", ctx.prefix);
    if let Err(end) = hostile_login(ctx, &mut w, &mut reader, c, &user).await {
        return end;
    }
    // A frame of one byte that is not JSON: `fail 400`, which this client never reads.
    const PROBE: &[u8] = b"\0\0\0\x01x";
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = ctx.stop.cancelled() => return End::Stopped,
            _ = tick.tick() => {
                if !put(&mut w, PROBE).await {
                    return End::Closed;
                }
                Counters::add(&c.actions);
            }
        }
    }
}

/// Logs in, then sends `--flood-rate` commands a second (public messages, every fifth a
/// `list`), reading everything it is sent.
async fn flood(ctx: &Ctx, stream: TcpStream, c: &Counters, j: usize) -> End {
    let (r, mut w) = stream.into_split();
    let mut reader: Reader = FramedRead::with_capacity(r, reply_codec(), BUSY_READ_BUFFER);
    let user = format!("{}f{j}", ctx.prefix);
    if let Err(end) = hostile_login(ctx, &mut w, &mut reader, c, &user).await {
        return end;
    }
    let mut tick = tokio::time::interval(ctx.flood_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut buf = BytesMut::new();
    let mut k = 0u64;
    loop {
        tokio::select! {
            () = ctx.stop.cancelled() => return End::Stopped,
            f = reader.next() => if let Some(end) = on_frame(f, c) { return end },
            _ = tick.tick() => {
                buf.clear();
                if k % 5 == 4 {
                    net::simple_frame("list", &mut buf);
                } else {
                    // No marker: the normal users count these apart from their own.
                    let text = format!("flood {j} {k}");
                    net::send_frame(text.as_bytes(), b"*", &mut buf);
                }
                if !put(&mut w, &buf).await {
                    return End::Closed;
                }
                k += 1;
                Counters::add(&c.actions);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_the_shares_and_adds_up() {
        let s = split(1000);
        assert_eq!(
            s,
            vec![
                (Kind::Slowloris, 400),
                (Kind::Garbage, 200),
                (Kind::Guesser, 200),
                (Kind::NeverReader, 160),
                (Kind::Flooder, 40),
            ]
        );
        let odd: usize = split(33).iter().map(|(_, n)| n).sum();
        assert_eq!(odd, 33);
        assert!(split(0).iter().all(|(_, n)| *n == 0));
    }

    #[test]
    fn every_kind_starts_on_an_address_of_its_own() {
        let l = layout(100, 10);
        let firsts: Vec<usize> = l.iter().map(|&(_, _, first)| first).collect();
        // 40, 20, 20, 16 and 4 connections.
        assert_eq!(firsts, vec![0, 40, 60, 80, 100]);
        assert_eq!(layout(1000, 10).last(), Some(&(Kind::Flooder, 40, 960)));
    }

    #[test]
    fn sources_start_at_127_0_0_2_and_stop_before_255() {
        assert_eq!(source(0, 10), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(
            source(19, 10),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
        );
        assert_eq!(
            source(2520, 10),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 254)))
        );
        assert_eq!(source(2530, 10), None);
    }

    #[test]
    fn junk_is_bounded_and_mostly_framed() {
        let mut rng = Rng::new(1);
        let mut buf = BytesMut::new();
        let mut framed = 0;
        for _ in 0..1000 {
            junk(&mut rng, &mut buf);
            assert!(!buf.is_empty() && buf.len() <= 4 + 200, "{}", buf.len());
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len + 4 == buf.len() {
                framed += 1;
            }
        }
        assert!(framed > 800, "{framed}");
    }
}
