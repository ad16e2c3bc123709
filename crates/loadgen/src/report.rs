//! The result of one run: printed as one JSON line on stdout for machines, and as a few
//! human lines on stderr.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::recv::Seen;
use crate::stats::Summary;

/// The result of one run. The common fields are always in the JSON line (`window` and
/// `rate` are `null` where they do not apply); the figures of some workloads only are left
/// out of the others' lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Report {
    /// `fanout`, `redis-fanout` (the Redis pub/sub reference), `private`, `presence`,
    /// `conns`, `offline`, `history` or `soak`.
    pub workload: String,
    /// The server address.
    pub server: String,
    /// Clients logged in for the measured phase.
    pub clients: usize,
    /// Clients that send.
    pub senders: usize,
    /// Messages each sender sends.
    pub messages_per_sender: u32,
    /// Text length in bytes.
    pub size: usize,
    /// Flood window (messages not yet echoed per sender), if flooding.
    pub window: Option<usize>,
    /// Open-loop rate in messages per second (all senders together), if paced.
    pub rate: Option<f64>,
    /// Seconds the logins took (`redis-fanout`: the subscriptions).
    pub login_s: f64,
    /// Logins per second.
    pub logins_per_s: f64,
    /// Messages sent.
    pub sent: u64,
    /// Deliveries expected (every recipient's copy, echoes included).
    pub expected: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// `expected - delivered` (never negative).
    pub lost: u64,
    /// Deliveries that came at or before one already seen from the same sender.
    pub out_of_order: u64,
    /// `fail` replies by error code.
    pub fails: BTreeMap<u16, u64>,
    /// Connections the server closed during the run (slow consumers are cut off).
    pub disconnected: u64,
    /// Seconds from the first send to the last expected delivery (or the timeout).
    pub elapsed_s: f64,
    /// `delivered / elapsed_s`.
    pub deliveries_per_s: f64,
    /// `sent / elapsed_s`.
    pub messages_per_s: f64,
    /// End-to-end latency of every delivery, in microseconds.
    pub latency_us: Summary,
    /// Whether the run hit `--timeout` before everything expected arrived.
    pub timed_out: bool,

    // Figures of some workloads only, absent from the JSON line of the others. They are
    // declared in alphabetical order, the order of the JSON line's keys.
    /// A cluster run: CPU seconds of the bus (`redis-server`) over the run; the harness
    /// that started the cluster (`cargo xtask bench`) fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus_cpu_s: Option<f64>,
    /// `conns`: server RSS per connection (after − before, over the connections), rounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_conn: Option<f64>,
    /// `presence`: users logged in and out during the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn: Option<usize>,
    /// `presence`: churning login attempts refused with `fail 503` (server busy), each
    /// retried after a back-off as a client would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn_busy: Option<u64>,
    /// `presence`: churning users that never logged in (an error other than 503, or no
    /// success before the deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn_failures: Option<usize>,
    /// `presence`: median churning login time, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn_login_ms_p50: Option<f64>,
    /// `presence`: 99th percentile churning login time, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn_login_ms_p99: Option<f64>,
    /// `presence`: churning logins that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn_logins: Option<usize>,
    /// `presence`: seconds the churning logins are spread over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn_secs: Option<f64>,
    /// `conns`: connections asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conns: Option<usize>,
    /// A cluster run: CPU seconds of the record (the PostgreSQL server and its backends)
    /// over the run; the harness fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_cpu_s: Option<f64>,
    /// `soak`: round trip of the normal users (a send to the sender's own echo),
    /// microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_latency_us: Option<Summary>,
    /// `fanout`, `private`: echoes the senders received; `redis-fanout`: replies to
    /// `PUBLISH` the publishers received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echoes: Option<u64>,
    /// `soak`: chat messages from the flooders that reached the normal users (every
    /// normal user's copy counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood_seen: Option<u64>,
    /// `soak`: what each kind of hostile connection did and how the server answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostile: Option<Vec<HostileCounts>>,
    /// `presence`, `conns`: `joined` notices received. `fanout`, `private`: those of the
    /// logins received by the end of the settle, present only when fewer than one per pair
    /// of clients came (a server, or cluster, that lost some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_seen: Option<u64>,
    /// `presence`: latency of the chat messages sent during the churn, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_during_churn_us: Option<Summary>,
    /// Open loop (`fanout --rate`, `presence`): latency counted from the actual write
    /// instead of the scheduled send time, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_from_write_us: Option<Summary>,
    /// `presence`: `left` notices received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_seen: Option<u64>,
    /// `presence`: length of the `list` reply at the end; -1 when none came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_len: Option<i64>,
    /// CPU seconds (user + system) of the load generator itself, its child processes
    /// included; absent where `/proc` cannot tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadgen_cpu_s: Option<f64>,
    /// `offline`: messages per second delivered in the recipients' login acknowledgements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_deliveries_per_s: Option<f64>,
    /// `offline`: messages delivered in the recipients' login acknowledgements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_delivered: Option<usize>,
    /// `offline`: seconds the recipients' logins took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_login_s: Option<f64>,
    /// `offline`: stored messages not delivered at login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_lost: Option<u64>,
    /// `offline`: the largest mailbox (messages to one recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_max: Option<usize>,
    /// A cluster run: CPU seconds of each node over the run, in node order (their sum is
    /// [`Report::server_cpu_s`]); the harness fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_cpu_s: Option<Vec<f64>>,
    /// `history`: round trip of each page (request written to reply read), microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_latency_us: Option<Summary>,
    /// `history`: pages received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u64>,
    /// `history`: `pages / elapsed_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_per_s: Option<f64>,
    /// `presence`: presence events that contradict what came before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_errors: Option<u64>,
    /// `conns`: load-generator processes holding the connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<usize>,
    /// `soak`: the same run without hostile connections, on a fresh server of its own;
    /// the harness (`cargo xtask bench`) fills it in, the load generator never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet: Option<Box<Report>>,
    /// `conns`: server RSS extrapolated to 100 000 connections, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_at_100k: Option<f64>,
    /// `conns`: server RSS extrapolated to 1 000 000 connections, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_at_1m: Option<f64>,
    /// The first error of a sender, which stopped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_error: Option<String>,
    /// Open loop: how late the sends were against their schedule, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_lag_us: Option<Summary>,
    /// CPU seconds of the server over the run; the harness that started the server
    /// (`cargo xtask bench`) fills it in, the load generator never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    /// `conns`: server RSS after the connections logged in; `soak`: at the end of the
    /// chat, the hostile connections still on. Bytes (needs `--server-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_after: Option<u64>,
    /// `conns`: server RSS before the first connection; `soak`: once the normal users
    /// are logged in, before the hostile connections. Bytes (needs `--server-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_before: Option<u64>,
    /// `soak`: the server's peak RSS since it started (`VmHWM`), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_peak: Option<u64>,
    /// `soak`: server RSS a few seconds after the hostile connections stopped, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_released: Option<u64>,
    /// `soak`: server RSS every [`crate::workload::soak::RSS_SAMPLE_EVERY`] from the start
    /// of the hostile connections to the end of the chat, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_samples: Option<Vec<u64>>,
    /// `fanout`, `private`, `presence`: seconds waited after the logins for the
    /// `joined` notices to drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_s: Option<f64>,
    /// `soak`: seconds the normal users chat for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_secs: Option<f64>,
    /// `offline`: messages stored (confirmed by their echo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<u64>,
    /// `fanout`, `private`: how the clients talked to the server, `tcp` or `websocket`
    /// (`--ws`); absent from the reports of the other workloads, which speak TCP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// `presence`: clients whose view of who is online ended correct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views_correct: Option<usize>,
    /// `presence`: clients whose view ended wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views_wrong: Option<usize>,
    /// Wall seconds of the load-generator process; filled in by the harness, like
    /// [`Report::server_cpu_s`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
}

/// `soak`: what the hostile connections of one kind did, and how the server answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostileCounts {
    /// `slowloris`, `garbage`, `guesser`, `never-reader` or `flooder`.
    pub kind: String,
    /// Connections of this kind held at once (each reconnects after the server closes it).
    pub conns: usize,
    /// Source addresses they come from (127.0.0.2, …).
    pub addresses: usize,
    /// Connections opened, reconnections included.
    pub connects: u64,
    /// Connections that could not be opened (refused, reset or timed out).
    pub connect_errors: u64,
    /// Successful logins (flooders and never-readers log in; a guesser never should).
    pub logins: u64,
    /// What this kind sent: bytes (slowloris), frames (garbage), guesses, commands
    /// (flooders), probes (never-readers).
    pub actions: u64,
    /// Connections the server closed.
    pub closed: u64,
    /// `fail` replies by error code.
    pub fails: BTreeMap<u16, u64>,
}

impl Report {
    /// Fills the delivery fields from the receivers' counts.
    pub fn deliveries(&mut self, seen: &Seen, expected: u64, elapsed_s: f64) {
        self.expected = expected;
        self.delivered = seen.messages;
        self.lost = expected.saturating_sub(seen.messages);
        self.out_of_order = seen.out_of_order;
        self.fails = seen.fails.clone();
        self.elapsed_s = elapsed_s;
        if elapsed_s > 0.0 {
            self.deliveries_per_s = seen.messages as f64 / elapsed_s;
            self.messages_per_s = self.sent as f64 / elapsed_s;
        }
    }

    /// The one-line JSON form.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self)
            .expect("a Report serializes: its map keys are numbers, and a float that is not finite becomes null")
    }

    /// A short human summary.
    pub fn human(&self) -> String {
        let l = &self.latency_us;
        if self.workload == "conns" {
            let per = self.bytes_per_conn;
            return format!(
                "conns: {} connections logged in in {:.3} s ({:.0}/s); server RSS per connection: {}",
                self.clients,
                self.login_s,
                self.logins_per_s,
                per.map_or("unknown (no --server-pid)".to_owned(), |b| format!(
                    "{b:.0} bytes"
                )),
            );
        }
        if let (Some(pages), Some(per_s), Some(l)) =
            (self.pages, self.pages_per_s, &self.page_latency_us)
        {
            return format!(
                "history: {} clients ({} chatting, {} public messages sent): {pages} pages in {:.3} s = {per_s:.0} pages/s\n  page round trip µs: p50 {} p99 {} p99.9 {} max {}",
                self.clients, self.senders, self.sent, self.elapsed_s, l.p50, l.p99, l.p999, l.max,
            );
        }
        let over = match self.transport.as_deref() {
            Some("websocket") => " over WebSocket",
            _ => "",
        };
        let mut s = format!(
            "{}{over}: {} clients, {} senders × {} messages: {} of {} delivered ({} lost) in {:.3} s = {:.0} deliveries/s, {:.0} messages/s",
            self.workload,
            self.clients,
            self.senders,
            self.messages_per_sender,
            self.delivered,
            self.expected,
            self.lost,
            self.elapsed_s,
            self.deliveries_per_s,
            self.messages_per_s,
        );
        if l.count > 0 {
            s.push_str(&format!(
                "\n  latency µs: p50 {} p99 {} p99.9 {} max {}",
                l.p50, l.p99, l.p999, l.max
            ));
        }
        if self.login_s > 0.0 {
            // The Redis reference subscribes where our clients log in.
            let what = if self.workload == "redis-fanout" {
                "subscriptions"
            } else {
                "logins"
            };
            s.push_str(&format!(
                "\n  {what}: {:.3} s, {:.0}/s",
                self.login_s, self.logins_per_s
            ));
        }
        if !self.fails.is_empty() || self.disconnected > 0 || self.timed_out {
            s.push_str(&format!(
                "\n  fails {:?}, disconnected {}, timed out {}",
                self.fails, self.disconnected, self.timed_out
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_flat_and_exact() {
        let mut r = Report {
            workload: "fanout".into(),
            server: "127.0.0.1:5000".into(),
            clients: 3,
            senders: 1,
            messages_per_sender: 2,
            size: 32,
            window: Some(8),
            sent: 2,
            ..Report::default()
        };
        let seen = Seen {
            messages: 5,
            out_of_order: 0,
            ..Seen::default()
        };
        r.deliveries(&seen, 6, 0.5);
        r.bytes_per_conn = Some(1234.0);
        assert_eq!(r.lost, 1);
        assert_eq!(r.deliveries_per_s, 10.0);
        assert_eq!(r.messages_per_s, 4.0);
        assert_eq!(
            r.to_json_line(),
            concat!(
                r#"{"workload":"fanout","server":"127.0.0.1:5000","clients":3,"senders":1,"#,
                r#""messages_per_sender":2,"size":32,"window":8,"rate":null,"login_s":0.0,"#,
                r#""logins_per_s":0.0,"sent":2,"expected":6,"delivered":5,"lost":1,"#,
                r#""out_of_order":0,"fails":{},"disconnected":0,"elapsed_s":0.5,"#,
                r#""deliveries_per_s":10.0,"messages_per_s":4.0,"latency_us":{"count":0,"#,
                r#""p50":0,"p90":0,"p99":0,"p999":0,"max":0,"mean":0},"timed_out":false,"#,
                r#""bytes_per_conn":1234.0}"#
            )
        );
        // What the harness reads back is what was printed.
        let back: Report = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn json_line_reads_back_with_fails_and_open_loop_figures() {
        let r = Report {
            workload: "presence".into(),
            fails: BTreeMap::from([(503, 2)]),
            rate: Some(100.0),
            send_lag_us: Some(Summary {
                count: 1,
                p50: 7,
                ..Summary::default()
            }),
            list_len: Some(-1),
            send_error: Some("cannot send".into()),
            ..Report::default()
        };
        let line = r.to_json_line();
        assert!(line.contains(r#""fails":{"503":2}"#), "{line}");
        assert!(!line.contains("bytes_per_conn"), "{line}");
        let back: Report = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }
}
