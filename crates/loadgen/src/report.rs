//! The result of one run: printed as one JSON line on stdout for machines, and as a few
//! human lines on stderr.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::recv::Seen;
use crate::stats::Summary;

/// The result of one run. Fields that do not apply to a workload are `null`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// `fanout`, `private`, `presence`, `conns` or `offline`.
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
    /// Seconds the logins took.
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
    /// Workload-specific figures.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
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

    /// Adds a workload-specific figure.
    pub fn set(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.extra.insert(key.to_owned(), value.into());
    }

    /// The one-line JSON form.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }

    /// A short human summary.
    pub fn human(&self) -> String {
        let l = &self.latency_us;
        if self.workload == "conns" {
            let per = self
                .extra
                .get("bytes_per_conn")
                .and_then(serde_json::Value::as_f64);
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
        let mut s = format!(
            "{}: {} clients, {} senders × {} messages: {} of {} delivered ({} lost) in {:.3} s = {:.0} deliveries/s, {:.0} messages/s",
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
            s.push_str(&format!(
                "\n  logins: {:.3} s, {:.0}/s",
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
        r.set("bytes_per_conn", 1234);
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
                r#""bytes_per_conn":1234}"#
            )
        );
    }
}
