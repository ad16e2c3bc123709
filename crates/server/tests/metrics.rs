//! Prometheus metrics over real sockets: a server started through the library with its
//! metrics served by `metrics::serve` on `127.0.0.1:0`, scraped with a raw HTTP/1.1 `GET`
//! and parsed from the OpenMetrics text, while a scripted chat runs. Every value asserted
//! is exact, except where the kernel decides (how much a client that does not read takes
//! before the server cuts it off); there the bounds are stated.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use simpletextim_server::metrics::{self, CONTENT_TYPE, Metrics};
use simpletextim_server::{Backoff, Config, ThrottlePolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A server with its metrics served on a port of their own.
struct Observed {
    server: TestServer,
    metrics_addr: SocketAddr,
    /// Stops the metrics listener at the end of the test.
    _stop: tokio_util::sync::DropGuard,
}

async fn start_observed(config: Config) -> Observed {
    let metrics: Metrics = config.metrics.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(metrics::serve(listener, metrics, stop.clone()));
    Observed {
        server: start_with(config).await,
        metrics_addr,
        _stop: stop.drop_guard(),
    }
}

/// One scrape: every sample by its series (`name{labels}` as written), and the text.
struct Scrape {
    samples: BTreeMap<String, f64>,
    text: String,
}

impl Scrape {
    /// The value of `series`; fails with the whole exposition when it is missing.
    fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("no series {series} in:\n{}", self.text),
        }
    }

    /// The values of `series`, in order.
    fn values(&self, series: &[&str]) -> Vec<f64> {
        series.iter().map(|s| self.get(s)).collect()
    }
}

/// `GET /metrics` over a fresh connection; checks the status, the content type and the
/// length, and parses the body.
async fn scrape(addr: SocketAddr) -> Scrape {
    let response = tokio::time::timeout(WAIT, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    })
    .await
    .expect("no metrics in time");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"), "{head}");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some(CONTENT_TYPE)
    );
    assert_eq!(
        headers.get("content-length"),
        Some(&body.len().to_string()),
        "{head}"
    );
    parse(body)
}

/// Parses the OpenMetrics text: comments skipped, `# EOF` last, one `series value` a line.
fn parse(text: &str) -> Scrape {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    Scrape {
        samples,
        text: text.to_owned(),
    }
}

/// Scrapes until `series` has `value`; bounded by [`WAIT`].
async fn scrape_until(addr: SocketAddr, series: &str, value: f64) -> Scrape {
    scrape_until_all(addr, &[(series, value)]).await
}

/// Scrapes until every series has its value: for what the server does after the client
/// can see it (the history writer's commits, a session's end after its socket closed);
/// bounded by [`WAIT`].
async fn scrape_until_all(addr: SocketAddr, want: &[(&str, f64)]) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = scrape(addr).await;
        if want.iter().all(|(k, v)| s.samples.get(*k) == Some(v)) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {want:?}:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `json` and returns the next chat frame (presence notices skipped).
async fn say(w: &mut Wire, json: &str) -> String {
    w.send(json).await;
    w.recv_chat().await
}

const CONNS: [&str; 4] = [
    r#"simpletextim_connections{transport="tcp",state="unauthenticated"}"#,
    r#"simpletextim_connections{transport="tcp",state="logged_in"}"#,
    r#"simpletextim_connections{transport="lines",state="unauthenticated"}"#,
    r#"simpletextim_connections{transport="lines",state="logged_in"}"#,
];
const LOGINS: [&str; 4] = [
    r#"simpletextim_logins_total{result="ok"}"#,
    r#"simpletextim_logins_total{result="failed"}"#,
    r#"simpletextim_logins_total{result="throttled"}"#,
    r#"simpletextim_logins_total{result="refused"}"#,
];
const MESSAGES: [&str; 3] = [
    r#"simpletextim_messages_total{kind="public"}"#,
    r#"simpletextim_messages_total{kind="private"}"#,
    "simpletextim_deliveries_total",
];
const ONLINE: &str = "simpletextim_users_online";
const CREATED: &str = "simpletextim_accounts_created_total";
const OUTBOX: &str = "simpletextim_outbox_bytes";
const COMMITTED: &str = "simpletextim_history_messages_committed_total";
const COMMITS: &str = "simpletextim_history_commit_seconds_count";
const SLOW: &str = r#"simpletextim_sessions_ended_total{reason="slow_consumer"}"#;
const EXITS: &str = r#"simpletextim_sessions_ended_total{reason="exit"}"#;

/// One failure for an account lets the next attempt through; the second waits a minute
/// (from an address that never logged in to it). Logins in progress: none from an address
/// outside 127.0.0.0/29, which is exempt.
fn throttling() -> Config {
    let minute = Backoff {
        free: 1,
        base: Duration::from_secs(60),
        max: Duration::from_secs(600),
        forget: Duration::from_secs(3600),
    };
    Config {
        login_throttle: ThrottlePolicy {
            per_account: minute,
            in_flight_per_address: 0,
            ..ThrottlePolicy::default()
        },
        exempt: vec!["127.0.0.0/29".parse().unwrap()],
        ..config()
    }
}

#[tokio::test]
async fn a_scripted_chat_moves_each_counter_exactly() {
    let o = start_observed(throttling()).await;
    let (s, m) = (&o.server, o.metrics_addr);

    let before = scrape(m).await;
    assert_eq!(before.values(&CONNS), [0.0; 4]);
    assert_eq!(before.values(&LOGINS), [0.0; 4]);
    assert_eq!(before.values(&MESSAGES), [0.0; 3]);
    assert_eq!(
        before.values(&[ONLINE, CREATED, OUTBOX, COMMITTED]),
        [0.0; 4]
    );
    assert_eq!(before.get(COMMITS), 0.0);
    assert_eq!(before.get("simpletextim_login_queue_depth"), 0.0);
    assert_eq!(before.get("simpletextim_history_queue_depth"), 0.0);

    // alice registers; a connection that has not logged in is answered (so it exists).
    let mut alice = Wire::login(s, "alice").await;
    let mut guest = Wire::connect_from(s.addr, "127.0.0.2").await;
    guest
        .expect(
            r#"{"command":"list"}"#,
            &fail_json(None, 401, "login required"),
        )
        .await;
    let now = scrape(m).await;
    assert_eq!(now.values(&CONNS), [1.0, 1.0, 0.0, 0.0]);
    assert_eq!(now.values(&LOGINS), [1.0, 0.0, 0.0, 0.0]);
    assert_eq!(now.values(&[ONLINE, CREATED]), [1.0, 1.0]);

    // From 127.0.0.2: a wrong password, then a wait; from 127.0.0.9, no login in progress
    // allowed at all.
    guest
        .expect(
            r#"{"command":"login alice/guess"}"#,
            &fail_json(None, 401, "invalid user id or password"),
        )
        .await;
    guest
        .expect(
            r#"{"command":"login alice/pw-of-alice"}"#,
            &fail_json(None, 429, "too many failed logins, try again in 60 s"),
        )
        .await;
    let mut far = Wire::connect_from(s.addr, "127.0.0.9").await;
    far.expect(
        r#"{"command":"login bob/pw-of-bob"}"#,
        &fail_json(
            None,
            503,
            "too many logins in progress from this address, try again",
        ),
    )
    .await;
    let now = scrape(m).await;
    assert_eq!(now.values(&LOGINS), [1.0, 1.0, 1.0, 1.0]);
    assert_eq!(now.values(&CONNS), [2.0, 1.0, 0.0, 0.0]);
    // Refused logins create nothing.
    assert_eq!(now.values(&[ONLINE, CREATED]), [1.0, 1.0]);

    // Both leave: the gauge goes back down as their sessions end.
    drop((guest, far));
    let now = scrape_until(m, CONNS[0], 0.0).await;
    assert_eq!(now.values(&CONNS), [0.0, 1.0, 0.0, 0.0]);
    assert_eq!(
        now.get(r#"simpletextim_sessions_ended_total{reason="eof"}"#),
        2.0
    );

    // carol registers and leaves; bob registers and stays.
    let mut carol = Wire::login(s, "carol").await;
    carol.send(r#"{"command":"exit"}"#).await;
    carol.expect_closed().await;
    let mut bob = Wire::login(s, "bob").await;
    let now = scrape_until_all(m, &[(EXITS, 1.0), (CONNS[1], 2.0)]).await;
    assert_eq!(now.values(&CONNS), [0.0, 2.0, 0.0, 0.0]);
    assert_eq!(now.values(&LOGINS), [3.0, 1.0, 1.0, 1.0]);
    assert_eq!(now.values(&[ONLINE, CREATED]), [2.0, 3.0]);
    assert_eq!(now.values(&MESSAGES), [0.0; 3]);

    // A public message reaches both users online: 2 deliveries. Its history is written.
    let hi = say(&mut alice, r#"{"command":"send","message":"hi"}"#).await;
    assert_eq!(bob.recv_chat().await, hi);
    let now = scrape_until(m, COMMITTED, 1.0).await;
    assert_eq!(now.values(&MESSAGES), [1.0, 0.0, 2.0]);
    assert_eq!(now.get(COMMITS), 1.0);
    assert_eq!(now.get(OUTBOX), 0.0);

    // A private message to bob, online: 1 delivery (the echo is not one).
    let to_bob = say(
        &mut alice,
        r#"{"command":"send","message":"psst","to":"bob"}"#,
    )
    .await;
    assert_eq!(bob.recv_chat().await, to_bob);
    let now = scrape_until(m, COMMITTED, 2.0).await;
    assert_eq!(now.values(&MESSAGES), [1.0, 1.0, 3.0]);
    assert_eq!(now.get(COMMITS), 2.0);

    // A private message to carol, offline: accepted into her mailbox, delivered to nobody
    // yet (and its history written with the mailbox row, not by the writer).
    let to_carol = say(
        &mut alice,
        r#"{"command":"send","message":"later","to":"carol"}"#,
    )
    .await;
    assert!(
        to_carol.contains(r#""message":"later","to":"carol""#),
        "{to_carol}"
    );
    let now = scrape(m).await;
    assert_eq!(now.values(&MESSAGES), [1.0, 2.0, 3.0]);
    assert_eq!(now.values(&[COMMITTED, COMMITS]), [2.0, 2.0]);

    // A message to an unknown user is refused: not counted.
    alice
        .expect(
            r#"{"command":"send","message":"?","to":"nobody"}"#,
            &fail_json(None, 404, "no such user: nobody"),
        )
        .await;
    assert_eq!(scrape(m).await.values(&MESSAGES), [1.0, 2.0, 3.0]);

    // bob leaves: one user online, one connection.
    bob.send(r#"{"command":"exit"}"#).await;
    bob.expect_closed().await;
    let now = scrape_until_all(m, &[(EXITS, 2.0), (CONNS[1], 1.0)]).await;
    assert_eq!(now.values(&CONNS), [0.0, 1.0, 0.0, 0.0]);
    assert_eq!(now.get(ONLINE), 1.0);
    assert_eq!(now.get(SLOW), 0.0);
}

/// A line-protocol connection counts under `transport="lines"`.
#[tokio::test]
async fn the_line_listener_counts_as_its_own_transport() {
    let config = config();
    let metrics = config.metrics.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(metrics::serve(listener, metrics, stop.clone()));
    let _stop = stop.drop_guard();
    let lines = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = lines.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(simpletextim_server::run_listeners(
        vec![(lines, simpletextim_server::Framing::Lines)],
        config,
        shutdown.clone(),
    ));

    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut reply = Vec::new();
    conn.write_all(b"{\"command\":\"login dave/pw-of-dave\"}\n")
        .await
        .unwrap();
    // The login ack, one line.
    tokio::time::timeout(WAIT, async {
        while !reply.ends_with(b"\n") {
            let mut buf = [0u8; 256];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed");
            reply.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no login ack in time");
    assert_eq!(reply, b"{\"command\":\"message\",\"messages\":[]}\n");
    let now = scrape(metrics_addr).await;
    assert_eq!(now.values(&CONNS), [0.0, 0.0, 0.0, 1.0]);
    drop(conn);
    let now = scrape_until(metrics_addr, CONNS[3], 0.0).await;
    assert_eq!(now.values(&CONNS), [0.0; 4]);
    assert_eq!(now.get(ONLINE), 0.0);
    shutdown.cancel();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}

/// A client that does not read fills its outbox (the outbox bytes rise), is cut off as a
/// slow consumer (counted once), and the gauges come back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_counted_and_its_outbox_bytes_rise_then_fall() {
    let o = start_observed(Config {
        outbox_capacity: 1_000_000,
        outbox_bytes: 32 * 1024,
        write_timeout: Duration::from_secs(600),
        ..config()
    })
    .await;
    let (s, m) = (&o.server, o.metrics_addr);
    // A small receive buffer: the kernel soon stops taking the server's writes.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = Wire::from_stream(sock.connect(s.addr).await.unwrap());
    slow.send(r#"{"command":"login slow/pw-of-slow"}"#).await;
    assert_eq!(slow.recv().await, r#"{"command":"message","messages":[]}"#);
    let mut fast = Wire::login(s, "fast").await;
    let text = "x".repeat(140);
    let send = format!(r#"{{"command":"send","message":"{text}"}}"#);
    // Floods in rounds of 50, each read back (so that only slow's outbox fills), until
    // slow is cut off; at most 2000 rounds.
    let mut sent = 0u32;
    let mut most_queued = 0.0f64;
    let cut = loop {
        assert!(sent < 100_000, "slow was never cut off");
        fast.send_all(&vec![send.as_str(); 50]).await;
        sent += 50;
        let mut echoes = 0;
        while echoes < 50 {
            echoes += fast.recv().await.matches(r#""message":"x"#).count();
        }
        let now = scrape(m).await;
        most_queued = most_queued.max(now.get(OUTBOX));
        if now.get(SLOW) == 1.0 {
            break now;
        }
    };
    // The session is counted as ended before its goodbye; its connection closes after.
    let cut = if cut.get(CONNS[1]) == 1.0 {
        cut
    } else {
        scrape_until(m, CONNS[1], 1.0).await
    };
    // What slow's session held once its socket was full: at most the outbox's limit.
    assert!(
        most_queued > 0.0 && most_queued <= 32.0 * 1024.0 + 300.0,
        "{most_queued}"
    );
    assert_eq!(
        cut.get(r#"simpletextim_messages_total{kind="public"}"#),
        f64::from(sent)
    );
    assert_eq!(cut.get(ONLINE), 1.0);
    assert_eq!(cut.values(&CONNS[..2]), [0.0, 1.0]);
    // Everything sent reached fast; slow got some of it before the cut, not all.
    let delivered = cut.get("simpletextim_deliveries_total");
    assert!(
        delivered > f64::from(sent) && delivered < f64::from(2 * sent),
        "{delivered} deliveries for {sent} messages"
    );
    // fast has read everything; slow is gone: nothing stays queued (the `left` notice to
    // fast is in the presence log, never in an outbox).
    let now = scrape_until(m, OUTBOX, 0.0).await;
    assert_eq!(now.get(SLOW), 1.0);
    // slow's connection was closed: what its socket took, then the end.
    tokio::time::timeout(WAIT, async {
        use futures::StreamExt;
        while let Some(Ok(_)) = slow.read.next().await {}
    })
    .await
    .expect("slow was not closed");
}

/// A running binary, killed however the test ends.
struct Binary(std::process::Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on `127.0.0.1:0` with `extra` options and a fresh data directory (in
/// `data`); returns it, its address, and the log up to `listening on`.
fn start_binary(data: &std::path::Path, extra: &[&str]) -> (Binary, SocketAddr, Vec<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_simpletextim-server"))
        .args(["--listen", "127.0.0.1:0", "--listen-http", "off"])
        .arg("--insecure-fast-hash")
        .args(extra)
        // A directory the server creates (an existing one must be private already).
        .arg("--data")
        .arg(data.join("data"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot spawn the server");
    let stderr = child.stderr.take().unwrap();
    let child = Binary(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the log to its end (so the pipe never fills), reporting what came up to
    // `listening on` and the address.
    std::thread::spawn(move || {
        let mut head = Vec::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.split("listening on ").nth(1)
                && let Some(tx) = tx.take()
            {
                let addr = addr.trim().to_owned();
                let _ = tx.send((addr, std::mem::take(&mut head)));
            } else if tx.is_some() {
                head.push(line);
            }
        }
    });
    let (addr, head) = rx.recv_timeout(WAIT).expect("no `listening on` in time");
    (child, addr.parse().unwrap(), head)
}

/// The address in the `metrics on http://ADDR/metrics` line of `log`.
fn metrics_address(log: &[String]) -> Option<SocketAddr> {
    log.iter().find_map(|line| {
        let rest = line.split("metrics on http://").nth(1)?;
        rest.split('/').next()?.parse().ok()
    })
}

/// The binary with `--metrics-listen 127.0.0.1:0`: the log names the metrics address, a
/// scrape counts a login, and the SQLite store's history commits move the histogram.
#[tokio::test]
async fn the_binary_serves_metrics_on_its_own_listener() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, addr, log) = start_binary(data.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics_addr = metrics_address(&log).expect("no `metrics on` line");
    assert!(
        !log.iter().any(|l| l.contains("not a loopback address")),
        "{log:?}"
    );

    let before = scrape(metrics_addr).await;
    assert_eq!(before.values(&LOGINS), [0.0; 4]);
    assert_eq!(before.get(COMMITS), 0.0);
    let mut w = Wire::connect_to(addr).await;
    w.send(r#"{"command":"login erin/pw-of-erin"}"#).await;
    assert_eq!(w.recv().await, r#"{"command":"message","messages":[]}"#);
    say(&mut w, r#"{"command":"send","message":"kept"}"#).await;
    let now = scrape_until(metrics_addr, COMMITTED, 1.0).await;
    assert_eq!(now.get(COMMITS), 1.0);
    assert_eq!(now.values(&LOGINS), [1.0, 0.0, 0.0, 0.0]);
    assert_eq!(now.values(&CONNS), [0.0, 1.0, 0.0, 0.0]);
    assert_eq!(now.values(&MESSAGES), [1.0, 0.0, 1.0]);
    assert_eq!(now.values(&[ONLINE, CREATED]), [1.0, 1.0]);

    // SIGTERM: the server and its metrics listener stop, and it exits 0.
    let pid = child.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(TcpStream::connect(metrics_addr).await.is_err());
}

/// Without `--metrics-listen` nothing serves metrics; on an address that is not loopback,
/// the server warns before it says it listens.
#[tokio::test]
async fn metrics_are_off_by_default_and_a_public_address_is_warned_about() {
    let data = tempfile::tempdir().unwrap();
    let (_quiet, _, log) = start_binary(data.path(), &[]);
    assert_eq!(metrics_address(&log), None, "{log:?}");
    assert!(!log.iter().any(|l| l.contains("metrics")), "{log:?}");

    let data = tempfile::tempdir().unwrap();
    let (_public, _, log) = start_binary(data.path(), &["--metrics-listen", "0.0.0.0:0"]);
    let bound = metrics_address(&log).expect("no `metrics on` line");
    let warning = format!(
        "metrics served on {bound}, not a loopback address: anyone who can reach it sees how busy the server is"
    );
    assert!(
        log.iter()
            .any(|l| l.contains(" WARN ") && l.ends_with(&warning)),
        "no warning {warning:?} in {log:?}"
    );
    // It serves all the same (here, from loopback).
    let local = SocketAddr::from(([127, 0, 0, 1], bound.port()));
    assert_eq!(scrape(local).await.get(ONLINE), 0.0);
}

/// A WebSocket session (after the HTTP listener's upgrade) counts under
/// `transport="websocket"`; the HTTP request before the upgrade is no session.
#[tokio::test]
async fn a_websocket_session_counts_as_its_own_transport() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let config = config();
    let metrics = config.metrics.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(metrics::serve(listener, metrics, stop.clone()));
    let _stop = stop.drop_guard();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(simpletextim_server::run_listeners(
        vec![(http, simpletextim_server::Framing::WebSocket)],
        config,
        shutdown.clone(),
    ));

    let request = format!("ws://{addr}/ws").into_client_request().unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("no upgrade in time")
        .unwrap();
    ws.send(Message::text(r#"{"command":"list"}"#))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no reply");
    let reply = reply.expect("closed").unwrap();
    assert_eq!(reply, Message::text(fail_json(None, 401, "login required")));
    let websocket = [
        r#"simpletextim_connections{transport="websocket",state="unauthenticated"}"#,
        r#"simpletextim_connections{transport="websocket",state="logged_in"}"#,
    ];
    let now = scrape(metrics_addr).await;
    assert_eq!(now.values(&CONNS), [0.0; 4]);
    assert_eq!(now.values(&websocket), [1.0, 0.0]);

    ws.send(Message::text(r#"{"command":"login wendy/pw-of-wendy"}"#))
        .await
        .unwrap();
    let ack = tokio::time::timeout(WAIT, ws.next()).await.expect("no ack");
    let ack = ack.expect("closed").unwrap();
    assert_eq!(ack, Message::text(r#"{"command":"message","messages":[]}"#));
    let now = scrape(metrics_addr).await;
    assert_eq!(now.values(&websocket), [0.0, 1.0]);
    assert_eq!(now.values(&LOGINS), [1.0, 0.0, 0.0, 0.0]);

    ws.send(Message::text(r#"{"command":"exit"}"#))
        .await
        .unwrap();
    let now = scrape_until_all(metrics_addr, &[(EXITS, 1.0), (websocket[1], 0.0)]).await;
    assert_eq!(now.values(&websocket), [0.0, 0.0]);
    assert_eq!(now.get(ONLINE), 0.0);
    shutdown.cancel();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}
