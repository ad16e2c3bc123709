//! Cluster mode with real processes: three `simpletextim-server` nodes (the built binary,
//! `--cluster-redis` and `--database`) on a private Redis (`common/redis.rs`) and a private
//! PostgreSQL (`common/pg.rs`), each test its own. Clients speak raw frames, and every
//! reply is compared as exact JSON (ids and times read from one reply and expected in the
//! others).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

#[path = "common/node.rs"]
mod node;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/redis.rs"]
mod redis;

const WAIT: Duration = Duration::from_secs(10);
/// Longer than a node's expiry (5 s) plus a heartbeat and the presence tick.
const REAP_WAIT: Duration = Duration::from_secs(12);

/// A node: the server process ([`node::Node`]) on the test's PostgreSQL and Redis.
struct Node {
    proc: node::Node,
    addr: SocketAddr,
}

impl Node {
    fn start(db: &pg::TestDb, redis: &redis::RedisServer, node_id: &str) -> Node {
        Node::start_on(db, &redis.url(), node_id)
    }

    /// A node on the Redis at `redis_url`.
    fn start_on(db: &pg::TestDb, redis_url: &str, node_id: &str) -> Node {
        let mut cmd = node::Node::command(&[
            "--listen",
            "127.0.0.1:0",
            "--listen-http",
            "off",
            "--insecure-fast-hash",
            "--exempt-loopback",
            "--rate-limit",
            "0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--node-id",
            node_id,
        ]);
        cmd.env("SIMPLETEXTIM_DATABASE", &db.url)
            .env("SIMPLETEXTIM_CLUSTER_REDIS", redis_url);
        let proc = node::Node::spawn_command(cmd);
        let addr = proc.addr();
        Node { proc, addr }
    }

    fn log(&self) -> Vec<String> {
        self.proc.log()
    }

    /// The node's metrics (`--metrics-listen`), as text.
    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self
            .log()
            .iter()
            .find_map(|l| {
                l.split("metrics on http://")
                    .nth(1)
                    .map(|a| a.trim_end_matches("/metrics").trim().to_owned())
            })
            .expect("the metrics address in the log");
        let mut s = timeout(WAIT, TcpStream::connect(addr.as_str()))
            .await
            .unwrap()
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        timeout(WAIT, s.read_to_string(&mut text))
            .await
            .unwrap()
            .unwrap();
        text
    }

    /// Logs `user` in (password `pw-USER`, the account created by the first login) and
    /// checks the login ack: no pending messages.
    async fn login(&self, user: &str) -> Conn {
        let mut c = Conn::connect(self.addr, user).await;
        c.send(json!({"command":"login","user_id":user,"password":format!("pw-{user}")}))
            .await;
        c.expect(json!({"command":"message","messages":[]})).await;
        c
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("node {} log:\n{}", self.addr, self.proc.log_text());
        }
    }
}

/// A client on raw frames. Batched `message` frames are split into one message each, so
/// that what a client is expected to receive does not depend on batching.
struct Conn {
    name: String,
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    queued: VecDeque<Value>,
}

impl Conn {
    async fn connect(addr: SocketAddr, name: &str) -> Conn {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Conn {
            name: name.to_owned(),
            framed: Framed::new(stream, LengthDelimitedCodec::new()),
            queued: VecDeque::new(),
        }
    }

    async fn send(&mut self, v: Value) {
        let bytes = Bytes::from(serde_json::to_vec(&v).unwrap());
        timeout(WAIT, self.framed.send(bytes))
            .await
            .expect("send timed out")
            .expect("send");
    }

    /// The next reply within `wait`; `None` when the connection closed. Panics on timeout.
    async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.queued.pop_front() {
            return Some(v);
        }
        let frame = match timeout(wait, self.framed.next()).await {
            Ok(Some(Ok(f))) => f,
            Ok(_) => return None,
            Err(_) => panic!("{}: nothing received within {wait:?}", self.name),
        };
        let v: Value = serde_json::from_slice(&frame).expect("a JSON reply");
        if v["command"] == "message"
            && let Some(msgs) = v["messages"].as_array()
            && msgs.len() > 1
        {
            for m in msgs {
                self.queued
                    .push_back(json!({"command":"message","messages":[m]}));
            }
            return self.queued.pop_front();
        }
        Some(v)
    }

    async fn next(&mut self) -> Value {
        let name = self.name.clone();
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("{name}: connection closed"))
    }

    /// The next frame as it is, a batch not split (for a login ack).
    async fn expect_frame(&mut self, expected: Value) {
        assert!(self.queued.is_empty(), "{}: {:?}", self.name, self.queued);
        let frame = match timeout(WAIT, self.framed.next()).await {
            Ok(Some(Ok(f))) => f,
            other => panic!("{}: no frame: {other:?}", self.name),
        };
        let got: Value = serde_json::from_slice(&frame).expect("a JSON reply");
        assert_eq!(
            got, expected,
            "{} received {got} instead of {expected}",
            self.name
        );
    }

    async fn expect(&mut self, expected: Value) {
        let got = self.next().await;
        assert_eq!(
            got, expected,
            "{} received {got} instead of {expected}",
            self.name
        );
    }

    /// The next chat message: (its object, id, ts).
    async fn chat(&mut self) -> (Value, u64, u64) {
        let v = self.next().await;
        assert_eq!(v["command"], "message", "{}: {v}", self.name);
        let m = v["messages"][0].clone();
        let (id, ts) = (m["id"].as_u64().unwrap(), m["ts"].as_u64().unwrap());
        (m, id, ts)
    }

    /// Nothing arrives for `quiet`.
    async fn expect_nothing(&mut self, quiet: Duration) {
        assert!(self.queued.is_empty(), "{}: {:?}", self.name, self.queued);
        if let Ok(got) = timeout(quiet, self.framed.next()).await {
            panic!("{}: unexpected {got:?}", self.name);
        }
    }

    /// Reads until the connection closes (bounded), returning what came.
    async fn until_closed(&mut self) -> Vec<Value> {
        let mut got = Vec::new();
        while let Some(v) = self.next_within(WAIT).await {
            got.push(v);
        }
        got
    }
}

fn public(from: &str, text: &str, id: u64, ts: u64) -> Value {
    json!({"command":"message","messages":[{"user_id":from,"message":text,"to":"*","id":id,"ts":ts}]})
}

fn public_echo(r: Value, from: &str, text: &str, id: u64, ts: u64) -> Value {
    json!({"command":"message","messages":[{"ref":r,"user_id":from,"message":text,"to":"*","id":id,"ts":ts}]})
}

fn private(from: &str, to: &str, text: &str, id: u64, ts: u64) -> Value {
    json!({"command":"message","messages":[{"user_id":from,"message":text,"to":to,"id":id,"ts":ts}]})
}

fn joined(user: &str) -> Value {
    json!({"command":"joined","user_id":user})
}

fn left(user: &str) -> Value {
    json!({"command":"left","user_id":user})
}

fn unavailable(r: Value) -> Value {
    json!({"command":"fail","ref":r,"fail":{"error_code":503,"reason":"cluster bus unavailable, try again"}})
}

/// Public and private chat, `list`, `joined`/`left` and a takeover between users of three
/// nodes: one order of public messages with the same ids on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_chat_presence_and_takeover() {
    let db = pg::migrated_database().await;
    let bus = redis::RedisServer::start();
    let (a, b, c) = (
        Node::start(&db, &bus, "node-a"),
        Node::start(&db, &bus, "node-b"),
        Node::start(&db, &bus, "node-c"),
    );
    let mut alice = a.login("alice").await;
    let mut bob = b.login("bob").await;
    alice.expect(joined("bob")).await;
    let mut carol = c.login("carol").await;
    alice.expect(joined("carol")).await;
    bob.expect(joined("carol")).await;

    carol.send(json!({"command":"list","ref":1})).await;
    carol
        .expect(json!({"command":"list","ref":1,"list":["alice","bob","carol"]}))
        .await;

    // A public message from node A: the same id and time everywhere, the ref only in the
    // sender's echo.
    alice
        .send(json!({"command":"send","message":"hello all","ref":"a1"}))
        .await;
    let (_, id1, ts1) = alice.chat().await;
    for (who, c) in [("bob", &mut bob), ("carol", &mut carol)] {
        c.expect(public("alice", "hello all", id1, ts1)).await;
        let _ = who;
    }
    // The echo, exactly.
    bob.send(json!({"command":"send","message":"hi","ref":7}))
        .await;
    let got = bob.next().await;
    let (id2, ts2) = (
        got["messages"][0]["id"].as_u64().unwrap(),
        got["messages"][0]["ts"].as_u64().unwrap(),
    );
    assert_eq!(got, public_echo(json!(7), "bob", "hi", id2, ts2));
    assert!(id2 > id1);
    alice.expect(public("bob", "hi", id2, ts2)).await;
    carol.expect(public("bob", "hi", id2, ts2)).await;

    // Three senders on three nodes at once: every node sees one order, the same ids, and
    // each sender's messages in the order sent.
    const N: usize = 10;
    for i in 0..N {
        alice
            .send(json!({"command":"send","message":format!("a{i}")}))
            .await;
        bob.send(json!({"command":"send","message":format!("b{i}")}))
            .await;
        carol
            .send(json!({"command":"send","message":format!("c{i}")}))
            .await;
    }
    let mut seen = Vec::new();
    for c in [&mut alice, &mut bob, &mut carol] {
        let mut got = Vec::new();
        for _ in 0..3 * N {
            let (m, id, _) = c.chat().await;
            got.push((
                id,
                m["user_id"].as_str().unwrap().to_owned(),
                m["message"].as_str().unwrap().to_owned(),
            ));
        }
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "ids increase: {got:?}"
        );
        for p in ["a", "b", "c"] {
            let mine: Vec<&str> = got
                .iter()
                .filter(|g| g.2.starts_with(p))
                .map(|g| g.2.as_str())
                .collect();
            let sent: Vec<String> = (0..N).map(|i| format!("{p}{i}")).collect();
            assert_eq!(mine, sent, "a sender's order");
        }
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);

    // Private, node A to node B: the echo (with the ref) and the delivery are one message.
    alice
        .send(json!({"command":"send","to":"Bob","message":"psst","ref":"p1"}))
        .await;
    let echo = alice.next().await;
    let (id, ts) = (
        echo["messages"][0]["id"].as_u64().unwrap(),
        echo["messages"][0]["ts"].as_u64().unwrap(),
    );
    assert_eq!(
        echo,
        json!({"command":"message","messages":[{"ref":"p1","user_id":"alice","message":"psst","to":"bob","id":id,"ts":ts}]})
    );
    bob.expect(private("alice", "bob", "psst", id, ts)).await;
    // Node C to node A, no ref.
    carol
        .send(json!({"command":"send","to":"alice","message":"hey"}))
        .await;
    let (_, id, ts) = carol.chat().await;
    alice.expect(private("carol", "alice", "hey", id, ts)).await;
    carol.expect_nothing(Duration::from_millis(200)).await;
    // No such user: 404, with the ref.
    carol
        .send(json!({"command":"send","to":"zed","message":"?","ref":3}))
        .await;
    carol
        .expect(json!({"command":"fail","ref":3,"fail":{"error_code":404,"reason":"no such user: zed"}}))
        .await;

    // Bob logs in on node C: the session on node B is taken over (409, closed); nobody is
    // told bob left or joined.
    let mut bob2 = c.login("bob").await;
    let closing = bob.until_closed().await;
    assert_eq!(
        closing,
        vec![json!({"command":"fail","fail":{"error_code":409,"reason":"logged in elsewhere"}})]
    );
    carol
        .send(json!({"command":"send","message":"after"}))
        .await;
    let (_, id, ts) = carol.chat().await;
    alice.expect(public("carol", "after", id, ts)).await;
    bob2.expect(public("carol", "after", id, ts)).await;
    // Private to the user taken over goes to its new node.
    alice
        .send(json!({"command":"send","to":"bob","message":"where are you"}))
        .await;
    let (_, id, ts) = alice.chat().await;
    bob2.expect(private("alice", "bob", "where are you", id, ts))
        .await;

    // Carol exits: `left` on the other nodes; `list` over all of them.
    carol.send(json!({"command":"exit"})).await;
    assert!(carol.until_closed().await.is_empty());
    alice.expect(left("carol")).await;
    bob2.expect(left("carol")).await;
    alice.send(json!({"command":"list"})).await;
    alice
        .expect(json!({"command":"list","list":["alice","bob"]}))
        .await;
    bob2.expect_nothing(Duration::from_millis(300)).await;

    // Node C shuts down (SIGTERM): its user is told, and closed; the others are told at
    // once that bob left (not after the expiry, by reaping).
    let started = Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &c.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert_eq!(
        bob2.until_closed().await,
        vec![json!({"command":"fail","fail":{"error_code":503,"reason":"server shutting down"}})]
    );
    alice.expect(left("bob")).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop((a, b, c));
}

/// An offline message kept through node A is in the login ack on node C; a node killed
/// (SIGKILL) mid-chat is reaped by the others (`left` for its users) and nothing accepted
/// is lost: a private message to its user while it is dead waits in the mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_message_crosses_nodes_and_a_killed_node_is_reaped() {
    let db = pg::migrated_database().await;
    let bus = redis::RedisServer::start();
    let (a, b, c) = (
        Node::start(&db, &bus, "a"),
        Node::start(&db, &bus, "b"),
        Node::start(&db, &bus, "c"),
    );
    // Erin's account exists; she is offline.
    let mut erin = c.login("erin").await;
    erin.send(json!({"command":"exit"})).await;
    assert!(erin.until_closed().await.is_empty());

    let mut alice = a.login("alice").await;
    alice
        .send(json!({"command":"send","to":"erin","message":"later","ref":"m"}))
        .await;
    let (_, id, ts) = alice.chat().await;
    let mut erin = Conn::connect(c.addr, "erin").await;
    erin.send(json!({"command":"login","user_id":"erin","password":"pw-erin"}))
        .await;
    erin.expect(json!({"command":"message","messages":[{"user_id":"alice","message":"later","to":"erin","id":id,"ts":ts}]}))
        .await;
    alice.expect(joined("erin")).await;

    // Frank on node B; node B is killed while alice and erin chat.
    let frank = b.login("frank").await;
    alice.expect(joined("frank")).await;
    erin.expect(joined("frank")).await;
    let mut b = b;
    let chatter = async {
        let mut sent = Vec::new();
        // While the dead node still counts as alive, a public message is refused (503):
        // not accepted, so sent again.
        let mut refused = 0;
        for i in 0..20 {
            loop {
                alice
                    .send(json!({"command":"send","message":format!("m{i}"),"ref":i}))
                    .await;
                let got = alice.next().await;
                if got == unavailable(json!(i)) {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let m = &got["messages"][0];
                assert_eq!(m["ref"], json!(i));
                sent.push(m["id"].as_u64().unwrap());
                break;
            }
        }
        assert!(refused < 50, "refused for too long");
        sent
    };
    let kill = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(b.proc.kill().is_some(), "node B was running");
    };
    let (sent, ()) = tokio::join!(chatter, kill);
    // Everything alice was echoed reached erin, in order.
    for id in &sent {
        let (m, got, _) = erin.chat().await;
        assert_eq!((got, m["user_id"].as_str()), (*id, Some("alice")));
    }
    drop(frank);
    // Frank's node is dead but not reaped yet: he is still registered there, and a private
    // message to him finds no subscriber on its channel, so it is kept in his mailbox.
    let started = Instant::now();
    alice
        .send(json!({"command":"send","to":"frank","message":"are you there"}))
        .await;
    let (_, id0, ts0) = alice.chat().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "sent before the reaping"
    );
    // Within the heartbeat expiry, the others are told frank left.
    let deadline = started + REAP_WAIT;
    for c in [&mut alice, &mut erin] {
        let got = timeout_at(deadline, c.next()).await.expect("left in time");
        assert_eq!(got, left("frank"));
    }
    alice.send(json!({"command":"list"})).await;
    alice
        .expect(json!({"command":"list","list":["alice","erin"]}))
        .await;
    // A private message to frank now: kept, and in his login ack on node C.
    alice
        .send(json!({"command":"send","to":"frank","message":"you vanished"}))
        .await;
    let (_, id, ts) = alice.chat().await;
    let mut frank = Conn::connect(c.addr, "frank").await;
    frank
        .send(json!({"command":"login","user_id":"frank","password":"pw-frank"}))
        .await;
    frank
        .expect_frame(json!({"command":"message","messages":[
            {"user_id":"alice","message":"are you there","to":"frank","id":id0,"ts":ts0},
            {"user_id":"alice","message":"you vanished","to":"frank","id":id,"ts":ts},
        ]}))
        .await;
    alice.expect(joined("frank")).await;
    drop((a, c));
}

/// Redis killed and restarted mid-chat: what needs the bus gets `fail 503` meanwhile, the
/// sessions stay open, and afterwards chat goes on with larger ids and `list` shows the
/// users of every node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_answers_503_meanwhile_and_the_cluster_recovers() {
    let db = pg::migrated_database().await;
    let mut bus = redis::RedisServer::start();
    let (a, b) = (Node::start(&db, &bus, "a"), Node::start(&db, &bus, "b"));
    let mut alice = a.login("alice").await;
    let mut bob = b.login("bob").await;
    alice.expect(joined("bob")).await;
    alice
        .send(json!({"command":"send","message":"before"}))
        .await;
    let (_, before, ts) = alice.chat().await;
    bob.expect(public("alice", "before", before, ts)).await;

    bus.kill();
    // Bounded: the node notices within its ping interval.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no 503 while Redis is down");
        alice
            .send(json!({"command":"send","message":"lost?","ref":"x"}))
            .await;
        let got = alice.next().await;
        if got == unavailable(json!("x")) {
            break;
        }
        // Sent before the node noticed: delivered (to bob too, if his node was still
        // subscribed), so read on.
        assert_eq!(got["messages"][0]["message"], "lost?", "{got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bob.send(json!({"command":"list","ref":"l"})).await;
    // Bob's node may still be reading, but never serves a wrong list: 503 or the truth.
    let got = bob.next().await;
    while bob.queued.front().is_some() {
        let _ = bob.next().await;
    }
    assert!(
        got == unavailable(json!("l"))
            || got == json!({"command":"list","ref":"l","list":["alice","bob"]})
            || got["command"] == "message",
        "{got}"
    );
    let mut bob = drain_messages(bob).await;

    bus.restart();
    // Back within the subscriber's back-off; the sessions stayed open. Presence converges:
    // both nodes registered their users again (a restarted Redis without persistence
    // forgot them, and forgot which nodes exist: until each node is back, what one sends
    // may miss the other, see docs/CLUSTER.md).
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "presence did not converge");
        bob.send(json!({"command":"list"})).await;
        if bob.next().await == json!({"command":"list","list":["alice","bob"]}) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + WAIT;
    let (after, ts) = loop {
        assert!(Instant::now() < deadline, "the bus did not come back");
        alice
            .send(json!({"command":"send","message":"after","ref":"y"}))
            .await;
        let got = alice.next().await;
        if got == unavailable(json!("y")) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let m = &got["messages"][0];
        break (m["id"].as_u64().unwrap(), m["ts"].as_u64().unwrap());
    };
    assert!(after > before);
    bob.expect(public("alice", "after", after, ts)).await;
    // Counted: one subscription lost, subscribed again.
    let metrics = a.metrics().await;
    for series in ["_cluster_bus_lost_total 1\n", "_cluster_bus_up 1\n"] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    // And the private path works across nodes again.
    bob.send(json!({"command":"send","to":"alice","message":"ok"}))
        .await;
    let (_, id, ts) = bob.chat().await;
    assert!(id > after);
    alice.expect(private("bob", "alice", "ok", id, ts)).await;
    drop((a, b));
}

/// Reads and drops the chat messages already waiting for `c` (up to a short quiet time).
async fn drain_messages(mut c: Conn) -> Conn {
    c.queued.clear();
    while let Ok(Some(_)) = timeout(Duration::from_millis(300), c.framed.next()).await {}
    c
}

/// `--cluster-redis` needs `--database`; a bad URL is one line without its password.
#[test]
fn the_cluster_flags_are_checked_and_the_password_never_shown() {
    let out = Command::new(node::BIN)
        .args(["--cluster-redis", "redis://:s3cret@127.0.0.1:1"])
        .env_remove("SIMPLETEXTIM_DATABASE")
        .env_remove("SIMPLETEXTIM_CLUSTER_REDIS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--database"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// Sends one command to Redis on a connection of its own (RESP), returns its first line.
async fn redis_command(addr: SocketAddr, args: &[&str]) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut s = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).await.unwrap();
    let mut line = String::new();
    let mut r = tokio::io::BufReader::new(s);
    timeout(WAIT, r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    line
}

/// The id of the Redis client named `name` (`CLIENT LIST`), waiting (bounded by [`WAIT`])
/// for it to be connected: a subscriber cut off a moment ago reconnects after a back-off.
async fn subscriber_id(addr: SocketAddr, name: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let clients = client_list(addr).await;
        let needle = format!(" name={name} ");
        if let Some(line) = clients.lines().find(|l| l.contains(&needle)) {
            let id = line.split_whitespace().next().unwrap();
            return id.trim_start_matches("id=").to_owned();
        }
        assert!(Instant::now() < deadline, "no client {name} in {clients}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis's `CLIENT LIST`: a line per connected client.
async fn client_list(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n")
        .await
        .unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "CLIENT LIST cut short");
        text.extend_from_slice(&buf[..n]);
        if text.ends_with(b"\r\n") && text.len() > 4 {
            let text = String::from_utf8_lossy(&text);
            let (head, body) = text.split_once("\r\n").unwrap();
            let len: usize = head.trim_start_matches('$').parse().unwrap();
            if body.len() >= len + 2 {
                return body.to_owned();
            }
        }
    }
}

/// A subscriber cut off by Redis (`CLIENT KILL TYPE pubsub`: the server closes the
/// connection, as its pub/sub output buffer limit does) is a lost subscription: logged,
/// counted, subscribed again; the sessions stay, and chat goes on between the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_cut_off_by_redis_subscribes_again() {
    let db = pg::migrated_database().await;
    let bus = redis::RedisServer::start();
    let (a, b) = (Node::start(&db, &bus, "a"), Node::start(&db, &bus, "b"));
    let alice = a.login("alice").await;
    let mut bob = b.login("bob").await;
    let kill = ["CLIENT", "KILL", "TYPE", "pubsub"];
    assert_eq!(redis_command(bus.addr(), &kill).await, ":2\r\n");
    let deadline = Instant::now() + WAIT;
    for node in [&a, &b] {
        while !node.log().iter().any(|l| l.contains("subscription lost")) {
            assert!(Instant::now() < deadline, "the cut-off was not noticed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut alice = drain_messages(alice).await;
    // Subscribed again: chat goes on between the nodes.
    let deadline = Instant::now() + WAIT;
    let (id, ts) = loop {
        assert!(Instant::now() < deadline, "the bus did not come back");
        alice
            .send(json!({"command":"send","message":"back","ref":1}))
            .await;
        let got = alice.next().await;
        if got == unavailable(json!(1)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let m = &got["messages"][0];
        break (m["id"].as_u64().unwrap(), m["ts"].as_u64().unwrap());
    };
    bob.expect(public("alice", "back", id, ts)).await;
    let metrics = a.metrics().await;
    assert!(
        !metrics.contains("_cluster_bus_lost_total 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("_cluster_bus_up 1\n"), "{metrics}");
    drop((a, b));
}

/// A recipient with acknowledged delivery on another node gets its private messages through
/// the mailbox (committed first, then delivered from there by its node), keeps them until
/// it acks, and not after; a message to oneself is one copy, with the ref.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_delivery_and_messages_to_oneself_across_nodes() {
    let db = pg::migrated_database().await;
    let bus = redis::RedisServer::start();
    let (a, b) = (Node::start(&db, &bus, "a"), Node::start(&db, &bus, "b"));
    let mut alice = a.login("alice").await;
    let mut bob = Conn::connect(b.addr, "bob").await;
    bob.send(json!({"command":"login","user_id":"bob","password":"pw-bob","acks":true}))
        .await;
    bob.expect(json!({"command":"message","messages":[]})).await;
    alice.expect(joined("bob")).await;

    alice
        .send(json!({"command":"send","to":"bob","message":"kept","ref":"k"}))
        .await;
    let echo = alice.next().await;
    let m = &echo["messages"][0];
    let (id, ts) = (m["id"].as_u64().unwrap(), m["ts"].as_u64().unwrap());
    assert_eq!(
        echo,
        json!({"command":"message","messages":[{"ref":"k","user_id":"alice","message":"kept","to":"bob","id":id,"ts":ts}]})
    );
    bob.expect(private("alice", "bob", "kept", id, ts)).await;

    // Not acked: it comes again with the next login (here on node A).
    drop(bob);
    alice.expect(left("bob")).await;
    let mut bob = Conn::connect(a.addr, "bob").await;
    bob.send(json!({"command":"login","user_id":"bob","password":"pw-bob","acks":true}))
        .await;
    bob.expect(json!({"command":"message","messages":[{"user_id":"alice","message":"kept","to":"bob","id":id,"ts":ts}]}))
        .await;
    alice.expect(joined("bob")).await;
    // Acked: gone for good.
    bob.send(json!({"command":"ack","id":id})).await;
    bob.send(json!({"command":"send","to":"bob","message":"me","ref":2}))
        .await;
    let (m, id2, ts2) = bob.chat().await;
    assert_eq!(
        m,
        json!({"ref":2,"user_id":"bob","message":"me","to":"bob","id":id2,"ts":ts2})
    );
    bob.send(json!({"command":"ack","id":id2})).await;
    bob.expect_nothing(Duration::from_millis(300)).await;
    bob.send(json!({"command":"exit"})).await;
    assert!(bob.until_closed().await.is_empty());
    alice.expect(left("bob")).await;
    let mut bob = b.login("bob").await;
    bob.expect_nothing(Duration::from_millis(300)).await;
    alice.expect(joined("bob")).await;
    drop((a, b));
}

/// A Redis that needs a password: both connections of each node authenticate, and the
/// password is never in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_password_is_used_and_never_logged() {
    let db = pg::migrated_database().await;
    let bus = redis::RedisServer::start();
    let set = ["CONFIG", "SET", "requirepass", "s3cret-bus"];
    assert_eq!(redis_command(bus.addr(), &set).await, "+OK\r\n");
    let url = format!("redis://:s3cret-bus@127.0.0.1:{}", bus.port());
    let (a, b) = (
        Node::start_on(&db, &url, "a"),
        Node::start_on(&db, &url, "b"),
    );
    let mut alice = a.login("alice").await;
    let mut bob = b.login("bob").await;
    alice.expect(joined("bob")).await;
    bob.send(json!({"command":"send","message":"hi"})).await;
    let (_, id, ts) = bob.chat().await;
    alice.expect(public("bob", "hi", id, ts)).await;
    for node in [&a, &b] {
        let log = node.log().join("\n");
        assert!(log.contains("redis://127.0.0.1:"), "{log}");
        assert!(!log.contains("s3cret-bus"), "{log}");
    }
    // A wrong password: the node does not start, and says so without it.
    let out = Command::new(node::BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--listen-http",
            "off",
            "--node-id",
            "c",
        ])
        .env("SIMPLETEXTIM_DATABASE", &db.url)
        .env(
            "SIMPLETEXTIM_CLUSTER_REDIS",
            format!("redis://:wrong-pw@127.0.0.1:{}", bus.port()),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot reach Redis at redis://127.0.0.1:"),
        "{err}"
    );
    assert!(!err.contains("wrong-pw"), "{err}");
    drop((a, b));
}

/// Private messages sent while the recipient's node is resubscribing (its subscriber cut
/// off by Redis) are not left in the mailbox of a user who is online: the node delivers
/// them once it listens again. Every message echoed reaches its recipient, without a new
/// login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_sent_while_a_node_resubscribes_reach_its_online_user() {
    let db = pg::migrated_database().await;
    let bus = redis::RedisServer::start();
    let (a, b) = (Node::start(&db, &bus, "a"), Node::start(&db, &bus, "b"));
    let mut alice = a.login("alice").await;
    let mut bob = b.login("bob").await;
    alice.expect(joined("bob")).await;
    let mut echoed = Vec::new();
    for round in 0..3 {
        // Only node B's subscriber: node A goes on numbering and routing meanwhile.
        let id = subscriber_id(bus.addr(), "stim-sub:b").await;
        let kill = ["CLIENT", "KILL", "ID", id.as_str()];
        assert_eq!(redis_command(bus.addr(), &kill).await, ":1\r\n");
        for i in 0..30 {
            let text = format!("r{round}m{i}");
            alice
                .send(json!({"command":"send","to":"bob","message":text,"ref":i}))
                .await;
            let got = alice.next().await;
            if got == unavailable(json!(i)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let m = &got["messages"][0];
            assert_eq!(m["message"], json!(text), "{got}");
            echoed.push(m["id"].as_u64().unwrap());
        }
    }
    assert!(!echoed.is_empty());
    // Each echoed message reaches bob once (in any order: live ones and those from the
    // mailbox interleave), without a new login.
    let mut got = Vec::new();
    while got.len() < echoed.len() {
        let (m, id, _) = bob.chat().await;
        assert_eq!(m["user_id"], "alice");
        got.push(id);
    }
    bob.expect_nothing(Duration::from_millis(300)).await;
    got.sort_unstable();
    echoed.sort_unstable();
    assert_eq!(got, echoed);
    drop((a, b));
}

/// Concurrent logins on three nodes: of any two users, exactly one is told the other
/// `joined` (the one that was registered first), whatever the nodes: every node announces
/// the `joined`s in the bus's order, and a session reads them from its own login's place in
/// that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_on_three_nodes_see_each_later_joined_once() {
    let db = pg::migrated_database().await;
    let bus = redis::RedisServer::start();
    let nodes = [
        Node::start(&db, &bus, "a"),
        Node::start(&db, &bus, "b"),
        Node::start(&db, &bus, "c"),
    ];
    const N: usize = 90;
    let names: Vec<String> = (0..N).map(|i| format!("u{i:02}")).collect();
    let logins = names.iter().enumerate().map(|(i, name)| {
        let node = &nodes[i % 3];
        async move { node.login(name).await }
    });
    let mut conns = futures::future::join_all(logins).await;
    // Every notice is out within a few presence ticks of the last login. (Before logins
    // read presence from their place in the bus's order, 90 concurrent logins missed a
    // pair's joined about one run in two.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut seen = Vec::new();
    for c in &mut conns {
        let mut joined = std::collections::BTreeSet::new();
        while let Ok(Some(frame)) = timeout(Duration::from_millis(50), c.framed.next()).await {
            let v: Value = serde_json::from_slice(&frame.unwrap()).unwrap();
            assert_eq!(v["command"], "joined", "{}: {v}", c.name);
            let who = v["user_id"].as_str().unwrap().to_owned();
            assert_ne!(who, c.name, "its own joined");
            assert!(joined.insert(who), "{}: a joined twice", c.name);
        }
        seen.push(joined);
    }
    for i in 0..N {
        for j in i + 1..N {
            let (a, b) = (seen[i].contains(&names[j]), seen[j].contains(&names[i]));
            assert!(
                a ^ b,
                "{} saw {}'s joined: {a}; {} saw {}'s: {b}",
                names[i],
                names[j],
                names[j],
                names[i]
            );
        }
    }
    drop(nodes);
}
