//! The receiving side of every client: one task per connection that reads frames, counts
//! chat messages, records their latency and releases its sender's window on its own echo.
//!
//! The hot path per frame is: classify by prefix, one clock read, then per message a
//! substring search and a few digits parsed. Nothing is allocated per message.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::net::{Reader, Transport};
use crate::resp::{self, Item};
use crate::scan::{self, Kind, Marker, MessageScanner};
use crate::stats::{Recorder, SharedHistogram};

/// State shared by every task of one run.
#[derive(Debug)]
pub struct Shared {
    /// The instant message timestamps count from.
    pub base: Instant,
    /// Latency of every delivered message.
    pub latency: SharedHistogram,
    /// Round trip of every sender's own messages (the send to its echo).
    pub echo_latency: SharedHistogram,
    /// Latency of messages sent inside the window below (presence: during the churn).
    pub latency_in_window: SharedHistogram,
    /// Open loop: latency from when each message was actually written rather than
    /// scheduled (without the load generator's own send lag).
    pub latency_from_write: SharedHistogram,
    /// Open loop: how late each send left after its scheduled time (the load generator's
    /// own timer lag, part of the latency it reports), in microseconds.
    pub send_lag: SharedHistogram,
    /// Start of the send-time window, in microseconds since `base`, whose messages also go
    /// to `latency_in_window` (presence: the churn); both 0 for none.
    pub window_from_us: AtomicU64,
    /// End of that window.
    pub window_to_us: AtomicU64,
    /// Receivers that have not yet seen everything they expect.
    pub remaining: AtomicUsize,
    /// Notified when `remaining` reaches zero.
    pub all_done: Notify,
    /// Cancelled to stop every receiver (through [`Shared::stop`]).
    pub stop: CancellationToken,
    /// Set by [`Shared::stop`] before `stop` is cancelled: what a receiver checks per frame
    /// (an atomic load; `CancellationToken::is_cancelled` takes a mutex that every receiver
    /// shares).
    stopped: AtomicBool,
    /// `joined` notices received by all receivers together (to know when a login storm has
    /// drained: N logins make exactly N(N−1)/2 of them).
    pub joined_seen: AtomicU64,
    /// The length of the last `list` reply any receiver saw, or -1.
    pub last_list: AtomicI64,
    /// How the run's connections talk to the server (how its senders frame commands).
    pub transport: Transport,
}

impl Shared {
    /// Fresh state for a run of `receivers` receivers over TCP.
    pub fn new(receivers: usize) -> Arc<Shared> {
        Shared::over(receivers, Transport::Tcp)
    }

    /// Fresh state for a run of `receivers` receivers over `transport`.
    pub fn over(receivers: usize, transport: Transport) -> Arc<Shared> {
        Arc::new(Shared {
            base: Instant::now(),
            latency: SharedHistogram::new(),
            echo_latency: SharedHistogram::new(),
            latency_in_window: SharedHistogram::new(),
            send_lag: SharedHistogram::new(),
            latency_from_write: SharedHistogram::new(),
            window_from_us: AtomicU64::new(0),
            window_to_us: AtomicU64::new(0),
            remaining: AtomicUsize::new(receivers),
            all_done: Notify::new(),
            stop: CancellationToken::new(),
            stopped: AtomicBool::new(false),
            joined_seen: AtomicU64::new(0),
            last_list: AtomicI64::new(-1),
            transport,
        })
    }

    /// Stops every receiver: frames received from now on are not counted.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.cancel();
    }

    /// Whether [`Shared::stop`] was called.
    #[inline]
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Microseconds since `base`.
    #[inline]
    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// Waits until every receiver is done or `deadline` passes; returns whether all were.
    pub async fn wait_all(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.all_done.notified();
            if self.remaining.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.remaining.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// Presence tracking: which of the churning users this client believes online.
#[derive(Debug, Clone)]
pub struct Churn {
    /// The churning users' id prefix (`lgc` for `lgc0`, `lgc1`, …).
    pub prefix: Vec<u8>,
    /// How many churning users there are; each must be seen joining once and leaving once.
    pub users: usize,
}

/// What one receiver expects and does.
#[derive(Debug, Default)]
pub struct Expect {
    /// This client's sender index, when it sends.
    pub me: Option<u32>,
    /// Released by one permit per own echo (or per `fail`, which answers a send too).
    pub window: Option<Arc<Semaphore>>,
    /// Marked messages to receive before this receiver is done.
    pub messages: u64,
    /// Senders in the run (size of the per-sender order check).
    pub senders: usize,
    /// Presence tracking, if any.
    pub churn: Option<Churn>,
    /// Check that messages come in increasing `id` order (one public conversation: what
    /// every client of a cluster must see, whichever node it is on).
    pub id_order: bool,
}

/// What one receiver saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Marked messages received (echoes included).
    pub messages: u64,
    /// Of which this client's own echoes.
    pub echoes: u64,
    /// Chat messages without a marker (not sent by this run).
    pub unmarked: u64,
    /// Marked messages that came at or before a message already seen from the same sender
    /// (duplicates or reordering), or, where ids are checked ([`Expect::id_order`]), with
    /// an id not above the last one seen.
    pub out_of_order: u64,
    /// `joined` frames.
    pub joined: u64,
    /// `left` frames.
    pub left: u64,
    /// `fail` replies by error code.
    pub fails: BTreeMap<u16, u64>,
    /// Frames received.
    pub frames: u64,
    /// Whether the server closed the connection (or it failed) before the run stopped it.
    pub closed: bool,
    /// Whether the presence view ended as expected (every churning user joined then left).
    pub churn_ok: bool,
    /// Presence events that contradicted the view (joined twice, left while not joined).
    pub churn_errors: u64,
    /// When this receiver had everything it expected.
    pub done_at: Option<Instant>,
}

impl Seen {
    /// Adds another receiver's counts.
    pub fn add(&mut self, o: &Seen) {
        self.messages += o.messages;
        self.echoes += o.echoes;
        self.unmarked += o.unmarked;
        self.out_of_order += o.out_of_order;
        self.joined += o.joined;
        self.left += o.left;
        for (code, n) in &o.fails {
            *self.fails.entry(*code).or_default() += n;
        }
        self.frames += o.frames;
        self.churn_errors += o.churn_errors;
        self.done_at = match (self.done_at, o.done_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Presence view of one client: a bit per churning user.
#[derive(Debug)]
struct View {
    users: usize,
    online: Vec<u64>,
    joined: usize,
    left: usize,
}

impl View {
    fn new(users: usize) -> View {
        View {
            users,
            online: vec![0; users.div_ceil(64)],
            joined: 0,
            left: 0,
        }
    }

    /// Applies an event; returns false when it contradicts the view.
    fn apply(&mut self, idx: usize, joined: bool) -> bool {
        if idx >= self.users {
            return false;
        }
        let (word, bit) = (idx / 64, 1u64 << (idx % 64));
        let Some(w) = self.online.get_mut(word) else {
            return false;
        };
        let was = *w & bit != 0;
        if joined {
            self.joined += 1;
            *w |= bit;
        } else {
            self.left += 1;
            *w &= !bit;
        }
        was != joined
    }

    fn complete(&self, users: usize) -> bool {
        self.joined >= users && self.left >= users
    }

    fn all_offline(&self) -> bool {
        self.online.iter().all(|w| *w == 0)
    }
}

/// Reads frames until the run stops or the server closes the connection.
pub async fn receive(mut reader: Reader, expect: Expect, shared: Arc<Shared>) -> Seen {
    let scanner = MessageScanner::new();
    let mut r = Receiver::new(expect, &shared);
    let stop = shared.stop.clone();
    let mut stopped = pin!(stop.cancelled());
    r.check_done();
    loop {
        // A frame that is ready is taken without polling the stop (whose poll takes a lock
        // every receiver shares); the flag checked after it keeps frames that come once the
        // run is over (the `left` notices of clients already closing) from being counted.
        let frame = tokio::select! {
            biased;
            f = reader.next() => f,
            () = &mut stopped => break,
        };
        if shared.stopped() {
            break;
        }
        let Some(Ok(frame)) = frame else {
            r.closed();
            break;
        };
        r.frame(&scanner, &frame);
    }
    r.finish()
}

/// Free room below which [`receive_resp`] makes its read buffer larger before a read.
const MIN_READ_ROOM: usize = 4096;

/// The receiver of a Redis subscriber (the `redis-fanout` reference workload,
/// [`crate::workload::redis`]): reads the connection until the run stops, the server closes
/// it, or it sends something that is not RESP. Each published payload is a text with the
/// marker, counted and timed by the same code as [`receive`]'s chat messages, with one
/// clock read per socket read (ours take one per frame, and a frame batches messages).
///
/// `buf` holds what was read after the subscription confirmation, if anything. It grows to
/// `read_buffer` bytes of free room per read, plus at most one incomplete value, which
/// [`resp::next`] bounds.
pub async fn receive_resp(
    mut reader: OwnedReadHalf,
    mut buf: BytesMut,
    read_buffer: usize,
    expect: Expect,
    shared: Arc<Shared>,
) -> Seen {
    let mut r = Receiver::new(expect, &shared);
    let stop = shared.stop.clone();
    let mut stopped = pin!(stop.cancelled());
    r.check_done();
    'read: loop {
        if !buf.is_empty() {
            let batch = r.batch();
            let mut used = 0;
            let mut echoes = 0;
            loop {
                match resp::next(&buf[used..]) {
                    Ok(Some((item, n))) => {
                        used += n;
                        r.seen.frames += 1;
                        match item {
                            Item::Message { payload, .. } => {
                                echoes += u64::from(r.marked(batch, scan::parse_marker(payload)));
                            }
                            // Counted under 0: a Redis error has no numeric code.
                            Item::Error(_) => *r.seen.fails.entry(0).or_default() += 1,
                            Item::Subscribed { .. } | Item::Integer(_) | Item::Other => {}
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        r.closed();
                        break 'read;
                    }
                }
            }
            buf.advance(used);
            r.echoes(echoes);
            r.check_done();
        }
        if buf.capacity() - buf.len() < MIN_READ_ROOM {
            buf.reserve(read_buffer.max(MIN_READ_ROOM));
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
            r.closed();
            break;
        }
    }
    r.finish()
}

/// The clock and the latency window of one frame (or one read), the same for every
/// message in it.
#[derive(Debug, Clone, Copy)]
struct Batch {
    now: u64,
    win_from: u64,
    win_to: u64,
}

/// The state of one receiver.
struct Receiver<'a> {
    expect: Expect,
    shared: &'a Shared,
    latency: Recorder,
    echo_latency: Recorder,
    latency_in_window: Recorder,
    latency_from_write: Recorder,
    /// The last sequence number seen from each sender (`u32::MAX`: none yet).
    last_seq: Vec<u32>,
    /// The last message id seen, where ids are checked.
    last_id: Option<u64>,
    view: Option<View>,
    seen: Seen,
    /// Whether everything expected has come (counted once in `shared.remaining`).
    done: bool,
}

impl<'a> Receiver<'a> {
    fn new(expect: Expect, shared: &'a Shared) -> Receiver<'a> {
        Receiver {
            latency: shared.latency.recorder(),
            echo_latency: shared.echo_latency.recorder(),
            latency_in_window: shared.latency_in_window.recorder(),
            latency_from_write: shared.latency_from_write.recorder(),
            last_seq: vec![u32::MAX; expect.senders],
            last_id: None,
            view: expect.churn.as_ref().map(|c| View::new(c.users)),
            seen: Seen::default(),
            done: false,
            expect,
            shared,
        }
    }

    /// Counts one frame.
    fn frame(&mut self, scanner: &MessageScanner, frame: &[u8]) {
        self.seen.frames += 1;
        match scan::kind(frame) {
            Kind::Message => self.messages(scanner, frame),
            kind @ (Kind::Joined | Kind::Left) => self.presence(frame, kind == Kind::Joined),
            Kind::Fail => {
                // Counted under 0 when the `fail` has no readable error code.
                let code = scan::error_code(frame).unwrap_or(0);
                *self.seen.fails.entry(code).or_default() += 1;
                // A refused send gets no echo: give its window slot back.
                if let Some(w) = &self.expect.window {
                    w.add_permits(1);
                }
            }
            Kind::List => {
                if let Some(n) = scan::list_len(frame) {
                    self.shared.last_list.store(n as i64, Ordering::Release);
                }
            }
            Kind::Other => {}
        }
        self.check_done();
    }

    /// A `message` frame (one or more messages): counts, latencies, order, own echoes.
    fn messages(&mut self, scanner: &MessageScanner, frame: &[u8]) {
        let batch = self.batch();
        let mut echoes = 0;
        if self.expect.id_order {
            scanner.for_each_with_id(frame, |marker, id| {
                let in_order = match (id, self.last_id) {
                    (Some(id), Some(last)) => id > last,
                    _ => true,
                };
                if id.is_some() {
                    self.last_id = id;
                }
                let before = self.seen.out_of_order;
                echoes += u64::from(self.marked(batch, marker));
                // Counted once, whether its sender's order or the id order (or both) broke.
                if !in_order && marker.is_some() && self.seen.out_of_order == before {
                    self.seen.out_of_order += 1;
                }
            });
        } else {
            scanner.for_each(frame, |marker| {
                echoes += u64::from(self.marked(batch, marker));
            });
        }
        self.echoes(echoes);
    }

    /// The clock and latency window for the messages of a frame just read.
    #[inline]
    fn batch(&self) -> Batch {
        let shared = self.shared;
        Batch {
            now: shared.now_us(),
            win_from: shared.window_from_us.load(Ordering::Relaxed),
            win_to: shared.window_to_us.load(Ordering::Relaxed),
        }
    }

    /// One chat message (its marker, if it has one): counted, its latencies recorded, its
    /// order checked. Returns whether it is this client's own echo.
    #[inline]
    fn marked(&mut self, b: Batch, marker: Option<Marker>) -> bool {
        let Some(m) = marker else {
            self.seen.unmarked += 1;
            return false;
        };
        self.seen.messages += 1;
        let us = b.now.saturating_sub(m.sent_us);
        self.latency.record(us);
        if m.sent_us >= b.win_from && m.sent_us < b.win_to {
            self.latency_in_window.record(us);
        }
        if m.written_us != 0 {
            self.latency_from_write
                .record(b.now.saturating_sub(m.written_us));
        }
        let echo = Some(m.sender) == self.expect.me;
        if echo {
            self.echo_latency.record(us);
        }
        if let Some(last) = self.last_seq.get_mut(m.sender as usize) {
            if *last != u32::MAX && m.seq <= *last {
                self.seen.out_of_order += 1;
            }
            *last = m.seq;
        }
        echo
    }

    /// Counts this client's own echoes of a frame and gives their window slots back.
    fn echoes(&mut self, echoes: u64) {
        self.seen.echoes += echoes;
        if echoes > 0 {
            if let Some(w) = &self.expect.window {
                w.add_permits(echoes as usize);
            }
        }
    }

    /// A `joined` or `left` notice: counted, and applied to the view of the churning users.
    fn presence(&mut self, frame: &[u8], joined: bool) {
        if joined {
            self.seen.joined += 1;
            self.shared.joined_seen.fetch_add(1, Ordering::Relaxed);
        } else {
            self.seen.left += 1;
        }
        if let (Some(v), Some(c)) = (&mut self.view, &self.expect.churn) {
            let idx = scan::user_id(frame).and_then(|u| scan::index_after(u, &c.prefix));
            if let Some(idx) = idx {
                if !v.apply(idx as usize, joined) {
                    self.seen.churn_errors += 1;
                }
            }
        }
    }

    /// Marks this receiver done once everything it expects has come, and wakes the run
    /// when it was the last one.
    fn check_done(&mut self) {
        if self.done || self.seen.messages < self.expect.messages {
            return;
        }
        if let (Some(v), Some(c)) = (&self.view, &self.expect.churn) {
            if !v.complete(c.users) {
                return;
            }
        }
        self.done = true;
        self.seen.done_at = Some(Instant::now());
        self.release_run();
    }

    /// The server closed the connection (or it failed).
    fn closed(&mut self) {
        self.seen.closed = true;
        // Whatever it still expected is lost: do not make the run wait for it.
        if !self.done {
            self.release_run();
        }
    }

    /// Takes this receiver off the run's count of receivers still waiting.
    fn release_run(&self) {
        if self.shared.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.all_done.notify_one();
        }
    }

    /// Flushes the latencies; returns what was seen.
    fn finish(mut self) -> Seen {
        if let (Some(v), Some(c)) = (&self.view, &self.expect.churn) {
            self.seen.churn_ok =
                v.complete(c.users) && v.all_offline() && self.seen.churn_errors == 0;
        }
        self.latency.flush();
        self.echo_latency.flush();
        self.latency_in_window.flush();
        self.latency_from_write.flush();
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_tracks_join_then_leave() {
        let mut v = View::new(70);
        assert!(v.apply(3, true));
        assert!(v.apply(69, true));
        assert!(!v.complete(2));
        assert!(v.apply(3, false));
        assert!(!v.all_offline());
        assert!(v.apply(69, false));
        assert!(v.all_offline());
        assert!(v.complete(2));
        // Leaving twice, or an index out of range, contradicts the view.
        assert!(!v.apply(3, false));
        assert!(!v.apply(70, true));
    }
}
