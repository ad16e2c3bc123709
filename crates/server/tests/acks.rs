//! Protocol 1.1 acknowledged delivery (`"acks": true` at login, the `ack` command), over real
//! TCP, as exact JSON: the login ack's messages and the private messages sent live stay in
//! the mailbox until acked, whatever ends the session; `ack` deletes what it covers and
//! nothing else; a session without acks behaves as in version 1.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use futures::StreamExt;

impl Wire {
    /// Receives `want` (private messages to this client, in this order), asserting each
    /// frame exactly (several messages may share one frame).
    async fn expect_messages(&mut self, want: &[Msg]) {
        let mut at = 0;
        while at < want.len() {
            let frame = self.recv_chat().await;
            let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
            let n = v["messages"].as_array().map_or(0, Vec::len).max(1);
            let end = (at + n).min(want.len());
            assert_eq!(frame, message_frame(None, &want[at..end]), "message {at}");
            at = end;
        }
    }

    /// Asserts that nothing was queued for this client before the answer to a `list`:
    /// a command answered with nothing (`ack`) was handled, and answered nothing.
    async fn expect_nothing_then_list(&mut self, users: &str) {
        self.expect(
            r#"{"command":"list","ref":"sync"}"#,
            &format!(r#"{{"command":"list","ref":"sync","list":[{users}]}}"#),
        )
        .await;
    }

    /// Sends a private message and returns the sender's echo, as the message's JSON object.
    async fn send_private(&mut self, to: &str, text: &str) -> Msg {
        self.send(&format!(
            r#"{{"command":"send","to":"{to}","message":"{text}"}}"#
        ))
        .await;
        let echo = self.recv_chat().await;
        let v: serde_json::Value = serde_json::from_str(&echo).unwrap();
        let m = &v["messages"][0];
        let msg = Msg {
            from: m["user_id"].as_str().unwrap().to_owned(),
            text: text.to_owned(),
            to: to.to_owned(),
            id: m["id"].as_u64().unwrap(),
            ts: m["ts"].as_u64().unwrap(),
        };
        assert_eq!(
            echo,
            message_frame(None, std::slice::from_ref(&msg)),
            "the echo"
        );
        msg
    }
}

/// A chat message as the test saw it accepted (its echo).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    from: String,
    text: String,
    to: String,
    id: u64,
    ts: u64,
}

impl Msg {
    fn json(&self) -> String {
        format!(
            r#"{{"user_id":"{}","message":"{}","to":"{}","id":{},"ts":{}}}"#,
            self.from, self.text, self.to, self.id, self.ts
        )
    }
}

/// The exact `message` frame carrying `msgs`, with `r` (JSON) as its ref when given.
fn message_frame(r: Option<&str>, msgs: &[Msg]) -> String {
    let r = r.map(|r| format!(r#""ref":{r},"#)).unwrap_or_default();
    let list: Vec<String> = msgs.iter().map(Msg::json).collect();
    format!(
        r#"{{"command":"message",{r}"messages":[{}]}}"#,
        list.join(",")
    )
}

/// Logs `user` in with acknowledged delivery (seed form) and asserts the exact login ack.
async fn login_acks(addr: SocketAddr, user: &str, pending: &[Msg]) -> Wire {
    let mut w = Wire::connect_to(addr).await;
    w.expect(
        &format!(r#"{{"command":"login {user}/pw-of-{user}","acks":true}}"#),
        &message_frame(None, pending),
    )
    .await;
    w
}

/// Logs `user` in without acks and asserts the exact login ack.
async fn login_v1(addr: SocketAddr, user: &str, pending: &[Msg]) -> Wire {
    let mut w = Wire::connect_to(addr).await;
    w.expect(
        &format!(r#"{{"command":"login {user}/pw-of-{user}"}}"#),
        &message_frame(None, pending),
    )
    .await;
    w
}

/// Creates the accounts of `users` (a login each, then `exit`).
async fn register(addr: SocketAddr, users: &[&str]) {
    for u in users {
        let mut w = login_v1(addr, u, &[]).await;
        w.send(r#"{"command":"exit"}"#).await;
        w.expect_closed().await;
    }
}

/// `alice` sends `n` private messages to `bob` (offline), numbered from `first`.
async fn offline_messages(addr: SocketAddr, first: usize, n: usize) -> Vec<Msg> {
    let mut alice = login_v1(addr, "alice", &[]).await;
    let mut sent = Vec::new();
    for i in first..first + n {
        sent.push(alice.send_private("bob", &format!("m{i}")).await);
    }
    alice.send(r#"{"command":"exit"}"#).await;
    alice.expect_closed().await;
    sent
}

#[tokio::test]
async fn the_login_acks_messages_come_again_until_acked() {
    let s = start().await;
    register(s.addr, &["bob"]).await;
    let m = offline_messages(s.addr, 1, 3).await;
    // Both login forms, with and without a ref: the same messages, the same ids.
    drop(login_acks(s.addr, "bob", &m).await);
    let mut bob = Wire::connect(&s).await;
    bob.expect(
        r#"{"command":"login","user_id":"bob","password":"pw-of-bob","acks":true,"ref":7}"#,
        &message_frame(Some("7"), &m),
    )
    .await;
    // Partial: up to the middle one. No answer.
    bob.send(&format!(r#"{{"command":"ack","id":{}}}"#, m[1].id))
        .await;
    bob.expect_nothing_then_list(r#""bob""#).await;
    drop(bob);
    let mut bob = login_acks(s.addr, "bob", &m[2..]).await;
    // An id above everything: all of it.
    bob.send(&format!(
        r#"{{"command":"ack","id":{},"ref":"a"}}"#,
        u64::MAX
    ))
    .await;
    bob.expect_nothing_then_list(r#""bob""#).await;
    drop(bob);
    login_acks(s.addr, "bob", &[]).await;
}

#[tokio::test]
async fn ack_errors_are_exact_and_carry_the_ref() {
    let s = start().await;
    let mut w = Wire::connect(&s).await;
    w.expect(
        r#"{"command":"ack","id":1,"ref":"r0"}"#,
        &fail_json(Some(r#""r0""#), 401, "login required"),
    )
    .await;
    w.expect(
        r#"{"command":"login alice/pw-of-alice","ref":1}"#,
        r#"{"command":"message","ref":1,"messages":[]}"#,
    )
    .await;
    w.expect(
        r#"{"command":"ack","id":1,"ref":"r1"}"#,
        &fail_json(
            Some(r#""r1""#),
            400,
            r#"ack needs a login with "acks": true"#,
        ),
    )
    .await;
    w.expect(
        r#"{"command":"ack","id":1}"#,
        &fail_json(None, 400, r#"ack needs a login with "acks": true"#),
    )
    .await;
}

#[tokio::test]
async fn an_ack_of_an_id_never_sent_is_harmless() {
    let s = start().await;
    register(s.addr, &["bob"]).await;
    let m = offline_messages(s.addr, 1, 2).await;
    let mut bob = login_acks(s.addr, "bob", &m).await;
    // Below every message sent: covers none of them.
    bob.send(r#"{"command":"ack","id":1,"ref":"x"}"#).await;
    bob.expect_nothing_then_list(r#""bob""#).await;
    drop(bob);
    login_acks(s.addr, "bob", &m).await;
}

#[tokio::test]
async fn a_session_without_acks_deletes_the_login_acks_messages() {
    let s = start().await;
    register(s.addr, &["bob"]).await;
    let m = offline_messages(s.addr, 1, 2).await;
    let mut bob = login_v1(s.addr, "bob", &m).await;
    bob.expect_nothing_then_list(r#""bob""#).await;
    drop(bob);
    login_acks(s.addr, "bob", &[]).await;
}

/// How a test ends a session with acknowledged delivery.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Eof,
    Reset,
    TakenOver,
    Exit,
}

#[tokio::test]
async fn live_messages_not_acked_come_again_however_the_session_ends() {
    for ending in [Ending::Eof, Ending::Reset, Ending::TakenOver, Ending::Exit] {
        let s = start().await;
        register(s.addr, &["bob"]).await;
        let early = offline_messages(s.addr, 0, 1).await;
        let mut bob = login_acks(s.addr, "bob", &early).await;
        let mut alice = login_v1(s.addr, "alice", &[]).await;
        let mut m = early.clone();
        for i in 1..4 {
            m.push(alice.send_private("bob", &format!("m{i}")).await);
        }
        bob.expect_messages(&m[1..]).await;
        // The login ack's message and the first live one.
        bob.send(&format!(r#"{{"command":"ack","id":{}}}"#, m[1].id))
            .await;
        bob.expect_nothing_then_list(r#""alice","bob""#).await;
        let next = match ending {
            Ending::Eof => {
                drop(bob);
                None
            }
            Ending::Reset => {
                bob.reset();
                None
            }
            Ending::Exit => {
                bob.send(r#"{"command":"exit"}"#).await;
                bob.expect_closed().await;
                None
            }
            Ending::TakenOver => {
                let mut next = Wire::connect(&s).await;
                next.expect(
                    r#"{"command":"login","user_id":"bob","password":"pw-of-bob","acks":true}"#,
                    &message_frame(None, &m[2..]),
                )
                .await;
                assert_eq!(
                    bob.recv().await,
                    fail_json(None, 409, "logged in elsewhere"),
                    "{ending:?}"
                );
                bob.expect_closed().await;
                Some(next)
            }
        };
        let mut bob = match next {
            Some(bob) => bob,
            None => login_acks(s.addr, "bob", &m[2..]).await,
        };
        // Acked now: gone for good.
        bob.send(&format!(r#"{{"command":"ack","id":{}}}"#, m[3].id))
            .await;
        bob.expect_nothing_then_list(r#""alice","bob""#).await;
        drop(bob);
        login_acks(s.addr, "bob", &[]).await;
        s.shutdown.cancel();
    }
}

#[tokio::test]
async fn a_private_message_to_oneself_with_acks_is_echoed_once_and_kept() {
    let s = start().await;
    let mut bob = login_acks(s.addr, "bob", &[]).await;
    bob.send(r#"{"command":"send","to":"bob","message":"note","ref":"n"}"#)
        .await;
    let echo = bob.recv_chat().await;
    let v: serde_json::Value = serde_json::from_str(&echo).unwrap();
    let note = Msg {
        from: "bob".into(),
        text: "note".into(),
        to: "bob".into(),
        id: v["messages"][0]["id"].as_u64().unwrap(),
        ts: v["messages"][0]["ts"].as_u64().unwrap(),
    };
    let with_ref = format!(r#"{{"ref":"n",{}"#, &note.json()[1..]);
    assert_eq!(
        echo,
        format!(r#"{{"command":"message","messages":[{with_ref}]}}"#)
    );
    // Once: the next frame answers the list.
    bob.expect_nothing_then_list(r#""bob""#).await;
    drop(bob);
    let mut bob = login_acks(s.addr, "bob", std::slice::from_ref(&note)).await;
    bob.send(&format!(r#"{{"command":"ack","id":{}}}"#, note.id))
        .await;
    bob.expect_nothing_then_list(r#""bob""#).await;
    drop(bob);
    login_acks(s.addr, "bob", &[]).await;
}

#[tokio::test]
async fn a_session_without_acks_is_sent_live_messages_once() {
    let s = start().await;
    let mut bob = login_v1(s.addr, "bob", &[]).await;
    let mut alice = login_v1(s.addr, "alice", &[]).await;
    let m = alice.send_private("bob", "hi").await;
    bob.expect_messages(std::slice::from_ref(&m)).await;
    bob.expect_nothing_then_list(r#""alice","bob""#).await;
    drop(bob);
    login_acks(s.addr, "bob", &[]).await;
}

#[tokio::test]
async fn a_full_mailbox_refuses_a_live_message_and_the_recipient_never_sees_it() {
    let s = start_with(simpletextim_server::Config {
        store: std::sync::Arc::new(simpletextim_server::MemoryStore::new(2)),
        ..config()
    })
    .await;
    let mut bob = login_acks(s.addr, "bob", &[]).await;
    let mut alice = login_v1(s.addr, "alice", &[]).await;
    let m1 = alice.send_private("bob", "m1").await;
    let m2 = alice.send_private("bob", "m2").await;
    // Two not acked fill bob's mailbox: the third is refused, and never reaches bob.
    alice
        .expect(
            r#"{"command":"send","to":"bob","message":"m3","ref":3}"#,
            &fail_json(
                Some("3"),
                503,
                "mailbox full: bob has too many unread messages",
            ),
        )
        .await;
    bob.expect_messages(&[m1, m2.clone()]).await;
    bob.expect_nothing_then_list(r#""alice","bob""#).await;
    // Acked: room again.
    bob.send(&format!(r#"{{"command":"ack","id":{}}}"#, m2.id))
        .await;
    bob.expect_nothing_then_list(r#""alice","bob""#).await;
    let m4 = alice.send_private("bob", "m4").await;
    bob.expect_messages(std::slice::from_ref(&m4)).await;
    drop(bob);
    login_acks(s.addr, "bob", &[m4]).await;
}

/// A temporary directory of mode 0700, as the server requires of a data directory.
fn tempdir_0700() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// The real binary on its SQLite store, for a SIGKILL.
struct Binary {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Binary {
    /// Starts the binary on `data`; waits for its `listening on` line.
    fn start(data: &std::path::Path) -> Binary {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_simpletextim-server"))
            .args(["--listen", "127.0.0.1:0", "--listen-http", "off"])
            .args(["--insecure-fast-hash", "--data"])
            .arg(data)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot spawn the server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the log to its end (so the pipe never fills), reporting the address once.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>());
                }
            }
        });
        match rx.recv_timeout(WAIT) {
            Ok(Ok(addr)) => Binary { child, addr },
            other => {
                let _ = child.kill();
                panic!("server did not log its address: {other:?}");
            }
        }
    }

    /// SIGKILL: no chance to flush or close anything.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn messages_received_but_not_acked_survive_a_sigkill_of_the_server() {
    let dir = tempdir_0700();
    let server = Binary::start(dir.path());
    register(server.addr, &["bob"]).await;
    let early = offline_messages(server.addr, 0, 1).await;
    let mut bob = login_acks(server.addr, "bob", &early).await;
    let mut alice = login_v1(server.addr, "alice", &[]).await;
    let mut m = early;
    for i in 1..4 {
        m.push(alice.send_private("bob", &format!("m{i}")).await);
    }
    bob.expect_messages(&m[1..]).await;
    bob.send(&format!(r#"{{"command":"ack","id":{}}}"#, m[1].id))
        .await;
    bob.expect_nothing_then_list(r#""alice","bob""#).await;
    // Received, the last two not acked: killed with both connections open.
    server.kill9();

    let server = Binary::start(dir.path());
    let mut bob = login_acks(server.addr, "bob", &m[2..]).await;
    bob.send(&format!(r#"{{"command":"ack","id":{}}}"#, m[3].id))
        .await;
    bob.expect_nothing_then_list(r#""bob""#).await;
    server.kill9();

    let server = Binary::start(dir.path());
    login_acks(server.addr, "bob", &[]).await;
}

/// xorshift64*: a seeded generator, so that a failing storm can be replayed
/// (`ACKS_STORM_SEED`).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The messages of a `message` frame.
fn messages_of(frame: &str) -> Vec<Msg> {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Msg {
            from: m["user_id"].as_str().unwrap().to_owned(),
            text: m["message"].as_str().unwrap().to_owned(),
            to: m["to"].as_str().unwrap().to_owned(),
            id: m["id"].as_u64().unwrap(),
            ts: m["ts"].as_u64().unwrap(),
        })
        .collect()
}

/// What one recipient received, by id; a message received again must be the same.
/// Returns how many were received again.
fn record(got: &mut std::collections::BTreeMap<u64, Msg>, msgs: Vec<Msg>, me: &str) -> u64 {
    let mut again = 0;
    for m in msgs {
        assert_eq!(m.to, me, "{m:?}");
        if let Some(before) = got.insert(m.id, m.clone()) {
            assert_eq!(before, m, "a duplicate carries the same id and content");
            again += 1;
        }
    }
    again
}

/// Several senders send private messages to a few recipients with acknowledged delivery,
/// whose connections are reset at random points, reconnect and ack some of what they got:
/// every message whose echo its sender saw reaches its recipient at least once, and a
/// message seen twice is the same message (same id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_resets_loses_no_echoed_message() {
    // A mailbox as large as everything sent: a recipient that seldom acks is not refused.
    storm(std::sync::Arc::new(simpletextim_server::MemoryStore::new(
        100_000,
    )))
    .await;
}

/// The storm on the SQLite store, whose commits take a while: messages wait, held, in the
/// recipients' outboxes while their mailbox rows are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_resets_on_sqlite_loses_no_echoed_message() {
    let dir = tempdir_0700();
    let store = simpletextim_server::store::SqliteStore::open(dir.path(), 100_000).unwrap();
    storm(std::sync::Arc::new(store)).await;
}

async fn storm(store: std::sync::Arc<dyn simpletextim_server::Store>) {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const SENDERS: u64 = 6;
    const RECIPIENTS: u64 = 3;
    const PER_SENDER: u64 = 300;
    let seed = std::env::var("ACKS_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_acc5_u64);
    eprintln!("ACKS_STORM_SEED={seed}");
    let s = start_with(simpletextim_server::Config { store, ..config() }).await;
    let names: Vec<String> = (0..RECIPIENTS).map(|r| format!("r{r}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    register(s.addr, &refs).await;
    let sent: Arc<Mutex<Vec<Msg>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let started = std::time::Instant::now();

    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let (addr, sent) = (s.addr, sent.clone());
        let mut rng = Rng(seed ^ (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        senders.push(tokio::spawn(async move {
            let mut w = Wire::connect_from(addr, &format!("127.0.0.{}", 10 + i)).await;
            w.expect(
                &format!(r#"{{"command":"login s{i}/pw-of-s{i}"}}"#),
                r#"{"command":"message","messages":[]}"#,
            )
            .await;
            for k in 0..PER_SENDER {
                let to = format!("r{}", rng.below(RECIPIENTS));
                let m = w.send_private(&to, &format!("s{i}-{k}")).await;
                sent.lock().unwrap().push(m);
            }
        }));
    }
    let mut recipients = Vec::new();
    for r in 0..RECIPIENTS {
        let (addr, done) = (s.addr, done.clone());
        let mut rng = Rng(seed ^ (r + 100).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        recipients.push(tokio::spawn(async move {
            let me = format!("r{r}");
            let mut got: BTreeMap<u64, Msg> = BTreeMap::new();
            let mut sessions = 0u32;
            let mut again = 0;
            loop {
                let last = done.load(Ordering::Acquire);
                let mut w = Wire::connect_from(addr, &format!("127.0.0.{}", 20 + r)).await;
                w.send(&format!(
                    r#"{{"command":"login {me}/pw-of-{me}","acks":true}}"#
                ))
                .await;
                again += record(&mut got, messages_of(&w.recv().await), &me);
                sessions += 1;
                if last {
                    // Everything not acked came in this login ack: ack it all.
                    if let Some(&max) = got.keys().next_back() {
                        w.send(&format!(r#"{{"command":"ack","id":{max}}}"#)).await;
                    }
                    w.expect_nothing_then_list_containing(&me).await;
                    return (got, sessions, again);
                }
                // Read a few frames (or wait a little), acking now and then, then reset.
                for _ in 0..rng.below(6) {
                    let wait = Duration::from_millis(1 + rng.below(20));
                    let Ok(Some(frame)) = tokio::time::timeout(wait, w.read.next()).await else {
                        continue;
                    };
                    let frame = String::from_utf8(frame.unwrap().to_vec()).unwrap();
                    if frame.starts_with(r#"{"command":"message""#) {
                        again += record(&mut got, messages_of(&frame), &me);
                    }
                    if rng.below(3) == 0
                        && let Some(&max) = got.keys().next_back()
                    {
                        w.send(&format!(r#"{{"command":"ack","id":{max}}}"#)).await;
                    }
                }
                w.reset();
            }
        }));
    }
    for t in senders {
        t.await.unwrap();
    }
    done.store(true, Ordering::Release);
    let mut got = Vec::new();
    let (mut sessions, mut again) = (0, 0);
    for t in recipients {
        let (g, n, a) = t.await.unwrap();
        got.push(g);
        sessions += n;
        again += a;
    }
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len() as u64, SENDERS * PER_SENDER);
    for m in &sent {
        let r: usize = m.to[1..].parse().unwrap();
        assert_eq!(got[r].get(&m.id), Some(m), "echoed but never delivered");
    }
    let received: usize = got.iter().map(BTreeMap::len).sum();
    assert_eq!(received, sent.len(), "nothing received that was not sent");
    eprintln!(
        "storm: {} messages, {sessions} sessions, {again} received again, {:?}",
        sent.len(),
        started.elapsed()
    );
    assert!(
        sessions as u64 > RECIPIENTS * 3,
        "the storm reset too few sessions"
    );
}

impl Wire {
    /// As [`Wire::expect_nothing_then_list`], whoever else is logged in: the next frame
    /// that is not a presence notice answers the list and names `me`.
    async fn expect_nothing_then_list_containing(&mut self, me: &str) {
        self.send(r#"{"command":"list","ref":"sync"}"#).await;
        let frame = self.recv_chat().await;
        assert!(
            frame.starts_with(r#"{"command":"list","ref":"sync","list":["#)
                && frame.contains(&format!(r#""{me}""#)),
            "{frame}"
        );
    }
}

#[tokio::test]
async fn messages_not_acked_survive_a_shutdown_and_a_slow_consumer_cut() {
    let store: std::sync::Arc<dyn simpletextim_server::Store> =
        std::sync::Arc::new(simpletextim_server::MemoryStore::new(1000));
    let with_store = || simpletextim_server::Config {
        store: store.clone(),
        // Two messages not acked beyond the login ack's make a slow consumer.
        outbox_capacity: 2,
        ..config()
    };
    let s = start_with(with_store()).await;
    let mut bob = login_acks(s.addr, "bob", &[]).await;
    let mut alice = login_v1(s.addr, "alice", &[]).await;
    let m1 = alice.send_private("bob", "m1").await;
    bob.expect_messages(std::slice::from_ref(&m1)).await;
    // Shutdown: bob is told, and nothing is lost.
    s.shutdown.cancel();
    assert_eq!(
        bob.recv().await,
        fail_json(None, 503, "server shutting down")
    );
    bob.expect_closed().await;
    tokio::time::timeout(WAIT, s.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let s = start_with(with_store()).await;
    let mut bob = login_acks(s.addr, "bob", std::slice::from_ref(&m1)).await;
    let mut alice = login_v1(s.addr, "alice", &[]).await;
    let mut m = vec![m1];
    for i in 2..4 {
        m.push(alice.send_private("bob", &format!("m{i}")).await);
    }
    bob.expect_messages(&m[1..]).await;
    // One more than the login ack's count plus the outbox's two: cut off, no goodbye.
    m.push(alice.send_private("bob", "m4").await);
    bob.expect_closed().await;
    login_acks(s.addr, "bob", &m).await;
}
