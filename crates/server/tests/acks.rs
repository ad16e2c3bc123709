//! Protocol 1.1 acknowledged delivery (`"acks": true` at login, the `ack` command), over real
//! TCP, as exact JSON: the login ack's messages and the private messages sent live stay in
//! the mailbox until acked, whatever ends the session; `ack` deletes what it covers and
//! nothing else; a session without acks behaves as in version 1.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

/// A socket that sends JSON text and reads each reply frame as the exact text it holds.
struct Wire {
    write: tokio::net::tcp::OwnedWriteHalf,
    read: FramedRead<tokio::net::tcp::OwnedReadHalf, LengthDelimitedCodec>,
}

impl Wire {
    async fn connect(s: &TestServer) -> Wire {
        Wire::connect_to(s.addr).await
    }

    async fn connect_to(addr: std::net::SocketAddr) -> Wire {
        Wire::from_stream(TcpStream::connect(addr).await.unwrap())
    }

    /// Resets the connection (RST, not FIN): `SO_LINGER` 0, then close.
    fn reset(self) {
        let stream = self.write.reunite(self.read.into_inner()).unwrap();
        // Linger 0 never blocks the close: it discards what is unsent and resets.
        socket2::SockRef::from(&stream)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(stream);
    }

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

    fn from_stream(stream: TcpStream) -> Wire {
        let (r, w) = stream.into_split();
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(16 << 20)
            .new_codec();
        Wire {
            write: w,
            read: FramedRead::new(r, codec),
        }
    }

    async fn send(&mut self, json: &str) {
        let mut b = BytesMut::new();
        b.put_u32(json.len() as u32);
        b.put_slice(json.as_bytes());
        self.write.write_all(&b).await.unwrap();
    }

    /// The next frame, as text.
    async fn recv(&mut self) -> String {
        let frame = tokio::time::timeout(WAIT, self.read.next())
            .await
            .expect("no reply in time")
            .expect("connection closed")
            .unwrap();
        String::from_utf8(frame.to_vec()).unwrap()
    }

    /// The next frame that is not a presence notice (`joined`/`left`), as text.
    async fn recv_chat(&mut self) -> String {
        loop {
            let f = self.recv().await;
            if !f.starts_with(r#"{"command":"joined""#) && !f.starts_with(r#"{"command":"left""#) {
                return f;
            }
        }
    }

    /// Sends `json` and asserts the exact reply.
    async fn expect(&mut self, json: &str, want: &str) {
        self.send(json).await;
        assert_eq!(self.recv().await, want, "in answer to {json}");
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

    /// Asserts the server closes the connection, with no frame before.
    async fn expect_closed(&mut self) {
        let next = tokio::time::timeout(WAIT, self.read.next())
            .await
            .expect("not closed in time");
        assert!(
            matches!(next, None | Some(Err(_))),
            "expected the connection to close, got {next:?}"
        );
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

/// A `fail` reply's exact JSON, with `r` (JSON) as its ref when given.
fn fail_json(r: Option<&str>, code: u16, reason: &str) -> String {
    let reason = serde_json::to_string(reason).unwrap();
    match r {
        Some(r) => format!(
            r#"{{"command":"fail","ref":{r},"fail":{{"error_code":{code},"reason":{reason}}}}}"#
        ),
        None => format!(r#"{{"command":"fail","fail":{{"error_code":{code},"reason":{reason}}}}}"#),
    }
}

/// Logs `user` in with acknowledged delivery (seed form) and asserts the exact login ack.
async fn login_acks(s: &TestServer, user: &str, pending: &[Msg]) -> Wire {
    let mut w = Wire::connect(s).await;
    w.expect(
        &format!(r#"{{"command":"login {user}/pw-of-{user}","acks":true}}"#),
        &message_frame(None, pending),
    )
    .await;
    w
}

/// Logs `user` in without acks and asserts the exact login ack.
async fn login_v1(s: &TestServer, user: &str, pending: &[Msg]) -> Wire {
    let mut w = Wire::connect(s).await;
    w.expect(
        &format!(r#"{{"command":"login {user}/pw-of-{user}"}}"#),
        &message_frame(None, pending),
    )
    .await;
    w
}

/// Creates the accounts of `users` (a login each, then `exit`).
async fn register(s: &TestServer, users: &[&str]) {
    for u in users {
        let mut w = login_v1(s, u, &[]).await;
        w.send(r#"{"command":"exit"}"#).await;
        w.expect_closed().await;
    }
}

/// `alice` sends `n` private messages to `bob` (offline), numbered from `first`.
async fn offline_messages(s: &TestServer, first: usize, n: usize) -> Vec<Msg> {
    let mut alice = login_v1(s, "alice", &[]).await;
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
    register(&s, &["bob"]).await;
    let m = offline_messages(&s, 1, 3).await;
    // Both login forms, with and without a ref: the same messages, the same ids.
    drop(login_acks(&s, "bob", &m).await);
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
    let mut bob = login_acks(&s, "bob", &m[2..]).await;
    // An id above everything: all of it.
    bob.send(&format!(
        r#"{{"command":"ack","id":{},"ref":"a"}}"#,
        u64::MAX
    ))
    .await;
    bob.expect_nothing_then_list(r#""bob""#).await;
    drop(bob);
    login_acks(&s, "bob", &[]).await;
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
    register(&s, &["bob"]).await;
    let m = offline_messages(&s, 1, 2).await;
    let mut bob = login_acks(&s, "bob", &m).await;
    // Below every message sent: covers none of them.
    bob.send(r#"{"command":"ack","id":1,"ref":"x"}"#).await;
    bob.expect_nothing_then_list(r#""bob""#).await;
    drop(bob);
    login_acks(&s, "bob", &m).await;
}

#[tokio::test]
async fn a_session_without_acks_deletes_the_login_acks_messages() {
    let s = start().await;
    register(&s, &["bob"]).await;
    let m = offline_messages(&s, 1, 2).await;
    let mut bob = login_v1(&s, "bob", &m).await;
    bob.expect_nothing_then_list(r#""bob""#).await;
    drop(bob);
    login_acks(&s, "bob", &[]).await;
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
        register(&s, &["bob"]).await;
        let early = offline_messages(&s, 0, 1).await;
        let mut bob = login_acks(&s, "bob", &early).await;
        let mut alice = login_v1(&s, "alice", &[]).await;
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
            None => login_acks(&s, "bob", &m[2..]).await,
        };
        // Acked now: gone for good.
        bob.send(&format!(r#"{{"command":"ack","id":{}}}"#, m[3].id))
            .await;
        bob.expect_nothing_then_list(r#""alice","bob""#).await;
        drop(bob);
        login_acks(&s, "bob", &[]).await;
        s.shutdown.cancel();
    }
}

#[tokio::test]
async fn a_private_message_to_oneself_with_acks_is_echoed_once_and_kept() {
    let s = start().await;
    let mut bob = login_acks(&s, "bob", &[]).await;
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
    let mut bob = login_acks(&s, "bob", std::slice::from_ref(&note)).await;
    bob.send(&format!(r#"{{"command":"ack","id":{}}}"#, note.id))
        .await;
    bob.expect_nothing_then_list(r#""bob""#).await;
    drop(bob);
    login_acks(&s, "bob", &[]).await;
}

#[tokio::test]
async fn a_session_without_acks_is_sent_live_messages_once() {
    let s = start().await;
    let mut bob = login_v1(&s, "bob", &[]).await;
    let mut alice = login_v1(&s, "alice", &[]).await;
    let m = alice.send_private("bob", "hi").await;
    bob.expect_messages(std::slice::from_ref(&m)).await;
    bob.expect_nothing_then_list(r#""alice","bob""#).await;
    drop(bob);
    login_acks(&s, "bob", &[]).await;
}

#[tokio::test]
async fn a_full_mailbox_refuses_a_live_message_and_the_recipient_never_sees_it() {
    let s = start_with(simpletextim_server::Config {
        store: std::sync::Arc::new(simpletextim_server::MemoryStore::new(2)),
        ..config()
    })
    .await;
    let mut bob = login_acks(&s, "bob", &[]).await;
    let mut alice = login_v1(&s, "alice", &[]).await;
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
    login_acks(&s, "bob", &[m4]).await;
}
