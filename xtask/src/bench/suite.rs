//! The scenarios of the suite (full and quick) and the targets the report checks.

use simpletextim_loadgen::report::Report;

use super::markdown::{ms, opt, si};
use super::server::Limits;

/// What a scenario's median is taken over, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    DeliveriesPerS,
    MessagesPerS,
    P99,
    BytesPerConn,
    /// `history`: pages answered per second.
    PagesPerS,
    /// The soak: the normal users' round-trip p99 under attack over that of the quiet run.
    SoakRatio,
}

impl Metric {
    /// The metric of a run; `None` where the run does not measure it.
    pub fn of(self, run: &Report) -> Option<f64> {
        match self {
            Metric::DeliveriesPerS => Some(run.deliveries_per_s),
            Metric::MessagesPerS => Some(run.messages_per_s),
            Metric::P99 => Some(run.latency_us.p99 as f64),
            Metric::BytesPerConn => run.bytes_per_conn,
            Metric::PagesPerS => run.pages_per_s,
            Metric::SoakRatio => soak_ratio(run),
        }
    }
}

/// The soak's hostile round-trip p99 over its quiet run's; `None` without both.
pub fn soak_ratio(run: &Report) -> Option<f64> {
    let hostile = run.echo_latency_us?.p99;
    let quiet = run.quiet.as_ref()?.echo_latency_us?.p99;
    (quiet > 0).then(|| hostile as f64 / quiet as f64)
}

/// One benchmark scenario: a load-generator command line run against a fresh server.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short name, unique in the suite (`--only` matches it).
    pub id: String,
    /// What it runs, in words.
    pub title: String,
    /// Load-generator arguments after `--server ADDR --timeout T --prefix P`.
    pub args: Vec<String>,
    /// Runs (the median is reported).
    pub runs: usize,
    /// What the median is taken over.
    pub metric: Metric,
    /// Loadgen time limit, seconds.
    pub timeout: u64,
    /// The server's options.
    pub limits: Limits,
    /// Load-generator arguments of a quiet run on a fresh server before each run, whose
    /// report goes into the run's as [`Report::quiet`] (the soak).
    pub quiet: Option<Vec<String>>,
    /// Load-generator arguments of the reference run against a private `redis-server`
    /// beside each run (`redis-fanout`, the same load through Redis pub/sub), in alternate
    /// order; its runs have a median of their own ([`super::results::Reference`]).
    pub reference: Option<Vec<String>>,
    /// Run against a cluster of this many nodes (`cargo xtask cluster`'s: private
    /// PostgreSQL and Redis) instead of one server, the clients spread over the nodes.
    pub cluster: Option<usize>,
}

impl Scenario {
    /// The load generator's command line as the report shows it.
    pub fn command(&self) -> String {
        format!(
            "simpletextim-loadgen --server {} --timeout {} {}",
            self.server_text(),
            self.timeout,
            self.args.join(" ")
        )
    }

    /// The quiet run's command line as the report shows it.
    pub fn quiet_command(&self) -> Option<String> {
        let args = self.quiet.as_ref()?;
        Some(format!(
            "simpletextim-loadgen --server {} --timeout {} {}",
            self.server_text(),
            self.timeout,
            args.join(" ")
        ))
    }

    /// `ADDR`, or `NODE1,NODE2,…` for a cluster, in the command lines the report shows.
    fn server_text(&self) -> String {
        match self.cluster {
            Some(n) => (1..=n)
                .map(|i| format!("NODE{i}"))
                .collect::<Vec<_>>()
                .join(","),
            None => "ADDR".to_owned(),
        }
    }

    /// The reference run's command line as the report shows it.
    pub fn reference_command(&self) -> Option<String> {
        let args = self.reference.as_ref()?;
        Some(format!(
            "simpletextim-loadgen --server ADDR --timeout {} {}",
            self.timeout,
            args.join(" ")
        ))
    }

    /// The `conns` and `soak` workloads measure the server's memory, so they need the
    /// server's pid.
    pub fn needs_server_pid(&self) -> bool {
        self.args
            .first()
            .is_some_and(|w| w == "conns" || w == "soak")
    }

    /// The soak's form of a scenario: the server's default limits, and a quiet run with
    /// `quiet` as the load generator's arguments before each run.
    fn soak(mut self, quiet: &str) -> Scenario {
        self.limits = Limits::Soak;
        self.quiet = Some(quiet.split_whitespace().map(str::to_owned).collect());
        self
    }

    /// Whether its clients speak WebSocket (the load generator's `--ws`), against the
    /// server's HTTP listener.
    pub fn websocket(&self) -> bool {
        self.args.iter().any(|a| a == "--ws")
    }

    /// The WebSocket form of a scenario: the same load-generator arguments after `--ws`,
    /// against a server whose HTTP listener is on ([`Limits::WebSocket`]).
    fn over_websocket(mut self) -> Scenario {
        self.args.insert(0, "--ws".to_owned());
        self.limits = Limits::WebSocket;
        self
    }

    /// The scenario against a cluster of `nodes` nodes, the clients spread over them,
    /// each run after a short run (`short`: the same logins, fewer messages) on a fresh
    /// cluster of its own, so that the cost of a message can be told from that of the
    /// logins: the difference of the two runs' CPU over the difference of their messages.
    fn on_cluster(mut self, nodes: usize, short: &str) -> Scenario {
        self.cluster = Some(nodes);
        self.quiet = Some(short.split_whitespace().map(str::to_owned).collect());
        self
    }

    /// A `fanout` scenario with the Redis pub/sub reference beside it: the same arguments
    /// to `redis-fanout` (C subscribers, S separate publishers, the same messages and pace).
    fn with_redis(mut self) -> Scenario {
        debug_assert_eq!(self.args.first().map(String::as_str), Some("fanout"));
        let mut args = self.args.clone();
        if let Some(w) = args.first_mut() {
            *w = "redis-fanout".to_owned();
        }
        self.reference = Some(args);
        self
    }
}

/// A scenario; `args` is split at whitespace.
fn scenario(
    id: &str,
    title: &str,
    args: &str,
    runs: usize,
    metric: Metric,
    timeout: u64,
) -> Scenario {
    Scenario {
        id: id.to_owned(),
        title: title.to_owned(),
        args: args.split_whitespace().map(str::to_owned).collect(),
        runs,
        metric,
        timeout,
        limits: Limits::Bench,
        quiet: None,
        reference: None,
        cluster: None,
    }
}

/// The open-loop rates (messages per second) of the latency chart.
const FULL_RATES: &[u32] = &[100, 200, 400, 800, 1600];
/// The client counts of the throughput chart.
const FULL_SCALE: &[u32] = &[100, 250, 500, 1000, 2000];

/// The standard suite, or the quick one, each scenario run `runs` times (default: 3, or 1
/// for the quick one).
pub fn suite(quick: bool, runs: Option<usize>) -> Vec<Scenario> {
    let r = runs.unwrap_or(if quick { 1 } else { 3 }).max(1);
    if quick { quick_suite(r) } else { full_suite(r) }
}

/// A tiny version of every scenario: a smoke check, about a minute.
fn quick_suite(r: usize) -> Vec<Scenario> {
    use Metric::*;
    let mut s = Vec::new();
    s.push(scenario(
        "fanout-flood",
        "fanout flood, 200 clients, 5 senders × 50",
        "fanout -c 200 -s 5 -m 50 -w 16",
        r,
        DeliveriesPerS,
        60,
    ));
    s.push(
        scenario(
            "fanout-ws",
            "fanout flood over WebSocket, 200 clients, 5 senders × 50",
            "fanout -c 200 -s 5 -m 50 -w 16",
            r,
            DeliveriesPerS,
            60,
        )
        .over_websocket(),
    );
    for c in [50, 100] {
        s.push(scenario(
            &format!("fanout-scale-{c}"),
            &format!("fanout flood, {c} clients, 5 senders × 50"),
            &format!("fanout -c {c} -s 5 -m 50 -w 16"),
            r,
            DeliveriesPerS,
            60,
        ));
    }
    for rate in [100, 200] {
        s.push(
            scenario(
                &format!("fanout-rate-{rate}"),
                &format!("fanout open loop, 200 clients, {rate} messages/s"),
                &format!("fanout -c 200 -s 10 -m {} --rate {rate}", rate / 10),
                r,
                P99,
                60,
            )
            .with_redis(),
        );
    }
    s.push(scenario(
        "private-flood",
        "private flood, 200 clients × 20",
        "private -c 200 -m 20 -w 16",
        r,
        MessagesPerS,
        60,
    ));
    s.push(scenario(
        "presence",
        "presence, 300 online + 50 churning, 100 messages/s",
        "presence -c 300 -k 50 --churn-secs 1 --chat-secs 2 -s 10 --rate 100",
        r,
        P99,
        60,
    ));
    s.push(scenario(
        "conns",
        "conns, 500 idle connections (2 processes)",
        "conns -n 500 --per-process 300 --hold-ms 300",
        r,
        BytesPerConn,
        60,
    ));
    s.push(scenario(
        "offline",
        "offline, 5 senders × 200 to 100 offline users",
        "offline -r 100 -s 5 -m 200 -w 64",
        r,
        MessagesPerS,
        60,
    ));
    s.push(scenario(
        "history",
        "history, 10 readers × 50 pages of 50 while 5 clients chat at 100 messages/s",
        "history -r 10 -p 50 -l 50 --seed 500 -c 5 --rate 100",
        r,
        PagesPerS,
        60,
    ));
    s.push(
        scenario(
            "cluster",
            "cluster fanout flood, 3 nodes, 60 clients, 3 senders × 50",
            "fanout -c 60 -s 3 -m 50 -w 16",
            r,
            DeliveriesPerS,
            60,
        )
        .on_cluster(3, "fanout -c 60 -s 3 -m 10 -w 16"),
    );
    s.push(
        scenario(
            "soak",
            "soak, 50 normal users at 1 message/s beside 100 hostile connections, 5 s",
            "soak --users 50 --secs 5 --hostile 100",
            r,
            SoakRatio,
            60,
        )
        .soak("soak --users 50 --secs 5 --hostile 0"),
    );
    s
}

/// The standard suite. One list, not split up: the scenarios read best side by side, in
/// the order they run.
fn full_suite(r: usize) -> Vec<Scenario> {
    use Metric::*;
    let mut s = Vec::new();
    s.push(scenario(
        "fanout-flood",
        "fanout flood, 1000 clients, 10 senders × 200",
        "fanout -c 1000 -s 10 -m 200 -w 16",
        r,
        DeliveriesPerS,
        120,
    ));
    // The same fan-out with every client on a WebSocket instead of a TCP connection.
    s.push(
        scenario(
            "fanout-ws",
            "fanout flood over WebSocket, 1000 clients, 10 senders × 200",
            "fanout -c 1000 -s 10 -m 200 -w 16",
            r,
            DeliveriesPerS,
            120,
        )
        .over_websocket(),
    );
    for &c in FULL_SCALE {
        if c == 1000 {
            continue; // the flood scenario above
        }
        s.push(scenario(
            &format!("fanout-scale-{c}"),
            &format!("fanout flood, {c} clients, 10 senders × 200"),
            &format!("fanout -c {c} -s 10 -m 200 -w 16"),
            r,
            DeliveriesPerS,
            120,
        ));
    }
    for &rate in FULL_RATES {
        // Three seconds of traffic at each rate, and the same through Redis pub/sub
        // beside it (the target at 200 messages/s: a p99 not above Redis's).
        s.push(
            scenario(
                &format!("fanout-rate-{rate}"),
                &format!("fanout open loop, 1000 clients, {rate} messages/s"),
                &format!("fanout -c 1000 -s 10 -m {} --rate {rate}", rate * 3 / 10),
                r,
                P99,
                120,
            )
            .with_redis(),
        );
    }
    s.push(scenario(
        "private-flood",
        "private flood, 1000 clients × 100",
        "private -c 1000 -m 100 -w 16",
        r,
        MessagesPerS,
        120,
    ));
    // The same for ten times longer: the 100-message run lasts about 0.4 s, ramp included.
    s.push(scenario(
        "private-flood-long",
        "private flood, 1000 clients × 1000",
        "private -c 1000 -m 1000 -w 16",
        r,
        MessagesPerS,
        120,
    ));
    s.push(scenario(
        "offline",
        "offline, 100 senders × 500 to 1000 offline users",
        "offline -r 1000 -s 100 -m 500 -w 64",
        r,
        MessagesPerS,
        120,
    ));
    // The same 50 000 messages from 10 senders: a session waits for each store commit
    // before its next command, so fewer senders means smaller group commits.
    s.push(scenario(
        "offline-10-senders",
        "offline, 10 senders × 5000 to 1000 offline users",
        "offline -r 1000 -s 10 -m 5000 -w 64",
        r,
        MessagesPerS,
        120,
    ));
    // The two big ones run once: their login storms (N² / 2 `joined` notices) take minutes.
    s.push(scenario(
        "presence",
        "presence, 10 000 online + 1 000 churning in 8 s, 100 messages/s",
        "presence -c 10000 -k 1000 --churn-secs 8 --chat-secs 10 -s 10 --rate 100",
        1,
        P99,
        600,
    ));
    // The chat of `presence` alone (10 000 receivers, 100 messages/s: a million deliveries a
    // second), beside the same load through Redis pub/sub: what this machine allows at that
    // scale, churn aside.
    s.push(
        scenario(
            "presence-chat",
            "presence's chat without the churn: 10 000 clients, 100 messages/s",
            "fanout -c 10000 -s 10 -m 100 --rate 100",
            r,
            P99,
            300,
        )
        .with_redis(),
    );
    s.push(scenario(
        "conns",
        "conns, 19 000 idle logged-in connections",
        "conns -n 19000 --per-process 9500 --hold-ms 3000",
        1,
        BytesPerConn,
        900,
    ));
    // Newest pages of the public conversation, asked one at a time by each reader, while
    // a public chat runs (every message of it written to the history as it goes).
    s.push(scenario(
        "history",
        "history, 50 readers × 1000 pages of 50 while 10 clients chat at 200 messages/s",
        "history -r 50 -p 1000 -l 50 --seed 2000 -c 10 --rate 200",
        r,
        PagesPerS,
        120,
    ));
    // The fan-out through the cluster's bus: 3 nodes (PostgreSQL and Redis private), the
    // clients spread over them (client i on node i mod 3); what the nodes, redis-server and
    // PostgreSQL spend per message, beyond a short run of the same logins.
    s.push(
        scenario(
            "cluster",
            "cluster fanout flood, 3 nodes, 300 clients, 10 senders × 500",
            "fanout -c 300 -s 10 -m 500 -w 16",
            r,
            DeliveriesPerS,
            120,
        )
        .on_cluster(3, "fanout -c 300 -s 10 -m 50 -w 16"),
    );
    // A quiet run and a hostile run on fresh servers, one minute of chat each.
    s.push(
        scenario(
            "soak",
            "soak, 200 normal users at 1 message/s beside 1000 hostile connections, 60 s",
            "soak --users 200 --secs 60 --hostile 1000",
            r,
            SoakRatio,
            240,
        )
        .soak("soak --users 200 --secs 60 --hostile 0"),
    );
    s
}

/// A goal the report checks against the median run of one scenario.
#[derive(Debug)]
pub struct Target {
    /// The scenario.
    pub id: &'static str,
    /// The goal, in words.
    pub goal: &'static str,
    /// What the median run measured, as shown, and whether it meets the goal (`None`
    /// where a figure the goal needs is missing).
    pub judge: fn(&Report) -> (String, Option<bool>),
}

/// The targets of the report, in its order.
pub const TARGETS: &[Target] = &[
    Target {
        id: "fanout-flood",
        goal: "≥ 3.5 M deliveries/s, none lost",
        judge: |r| {
            let shown = format!("{} deliveries/s, {} lost", si(r.deliveries_per_s), r.lost);
            (shown, Some(r.deliveries_per_s >= 3.5e6 && r.lost == 0))
        },
    },
    Target {
        id: "fanout-rate-200",
        goal: "p99 ≤ 10 ms",
        judge: |r| {
            let p99 = r.latency_us.p99;
            (format!("p99 {} ms", ms(p99)), Some(p99 <= 10_000))
        },
    },
    Target {
        id: "private-flood",
        goal: "≥ 300 k messages/s",
        judge: |r| {
            let shown = format!("{} messages/s", si(r.messages_per_s));
            (shown, Some(r.messages_per_s >= 3e5))
        },
    },
    Target {
        id: "conns",
        goal: "≥ 19 000 held at ≤ 2 KiB of server RSS each",
        judge: |r| {
            let per = r.bytes_per_conn;
            let shown = format!(
                "{} held, {} bytes each",
                r.clients,
                opt(per.map(|b| format!("{b:.0}")))
            );
            (shown, per.map(|b| b <= 2048.0 && r.clients >= 19_000))
        },
    },
    Target {
        id: "presence",
        goal: "chat p99 ≤ 50 ms, every view correct",
        judge: |r| {
            let p99 = r.latency_us.p99;
            let shown = format!("p99 {} ms, {} wrong views", ms(p99), opt(r.views_wrong));
            (shown, r.views_wrong.map(|w| p99 <= 50_000 && w == 0))
        },
    },
    Target {
        id: "offline",
        goal: "≥ 20 k messages/s stored, every one delivered at login",
        judge: |r| {
            let lost = r.mailbox_lost;
            let shown = format!("{} messages/s, {} lost", si(r.messages_per_s), opt(lost));
            (shown, lost.map(|l| r.messages_per_s >= 2e4 && l == 0))
        },
    },
    Target {
        id: "soak",
        goal: "round-trip p99 hostile ≤ 2× quiet, lost = 0",
        judge: |r| {
            let quiet = r.quiet.as_deref();
            let p99 = |r: &Report| r.echo_latency_us.map(|l| l.p99);
            let quiet_lost = quiet.map(|q| q.lost);
            let ratio = soak_ratio(r);
            let shown = format!(
                "p99 {} ms against {} ms quiet (× {}), {} + {} lost",
                ms(p99(r)),
                ms(quiet.and_then(p99)),
                opt(ratio.map(|x| format!("{x:.2}"))),
                r.lost,
                opt(quiet_lost),
            );
            let met = ratio
                .zip(quiet_lost)
                .map(|(x, ql)| x <= 2.0 && r.lost == 0 && ql == 0);
            (shown, met)
        },
    },
];
