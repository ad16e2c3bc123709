//! Protocol 1.1 `ref`s, over real TCP, as exact JSON: the reply that answers a command
//! carries its `ref` (every kind of `fail`, `list`, the login ack), the answer to a `send` is
//! the sender's echo with the `ref` inside its message object, and nobody else's copy of
//! that message carries it (byte for byte the frame a second user receives).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use simpletextim_proto::Command;
use simpletextim_server::{Config, MemoryStore, RateLimit};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The `id` and `ts` of the only message of a `message` frame.
fn id_ts(frame: &str) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap();
    let m = &v["messages"][0];
    (m["id"].as_u64().unwrap(), m["ts"].as_u64().unwrap())
}

/// The exact frame of one chat message, with `r` (JSON) first in the object when given.
fn chat_json(r: Option<&str>, from: &str, text: &str, to: &str, frame: &str) -> String {
    let (id, ts) = id_ts(frame);
    let r = r.map(|r| format!(r#""ref":{r},"#)).unwrap_or_default();
    format!(
        r#"{{"command":"message","messages":[{{{r}"user_id":"{from}","message":"{text}","to":"{to}","id":{id},"ts":{ts}}}]}}"#
    )
}

/// Refs of both kinds, at their bounds, as JSON.
const REFS: &[&str] = &[
    r#""a-1""#,
    "42",
    "0",
    "9007199254740991",
    r#""é🎉 \"quoted\"""#,
    r#""xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx""#,
];

#[tokio::test]
async fn every_reply_to_a_command_carries_its_ref() {
    for &r in REFS {
        let s = start().await;
        let mut w = Wire::connect(&s).await;
        // Before login: 401, with the ref.
        for cmd in ["list", "history", "ack"] {
            w.expect(
                &format!(r#"{{"command":"{cmd}","ref":{r},"with":"*","id":1}}"#),
                &fail_json(Some(r), 401, "login required"),
            )
            .await;
        }
        // The login ack.
        w.expect(
            &format!(r#"{{"command":"login alice/pw-of-alice","ref":{r}}}"#),
            &format!(r#"{{"command":"message","ref":{r},"messages":[]}}"#),
        )
        .await;
        // list.
        w.expect(
            &format!(r#"{{"ref":{r},"command":"list"}}"#),
            &format!(r#"{{"command":"list","ref":{r},"list":["alice"]}}"#),
        )
        .await;
        // 409: a second login on the session.
        w.expect(
            &format!(r#"{{"command":"login","user_id":"bob","password":"x","ref":{r}}}"#),
            &fail_json(Some(r), 409, "already logged in as alice"),
        )
        .await;
        // history (nothing kept yet); ack: only with acks.
        w.expect(
            &format!(r#"{{"command":"history","with":"*","ref":{r}}}"#),
            &format!(r#"{{"command":"history","ref":{r},"with":"*","messages":[],"more":false}}"#),
        )
        .await;
        w.expect(
            &format!(r#"{{"command":"ack","id":5,"ref":{r}}}"#),
            &fail_json(Some(r), 400, r#"ack needs a login with "acks": true"#),
        )
        .await;
        // 404: a private message to a user with no account.
        w.expect(
            &format!(r#"{{"command":"send","message":"hi","to":"carol","ref":{r}}}"#),
            &fail_json(Some(r), 404, "no such user: carol"),
        )
        .await;
        // Commands the parser refuses, at every stage, keep their valid ref.
        let long = "x".repeat(141);
        for (payload, code) in [
            (r#"{"command":"dance""#.to_owned(), 400),
            (r#"{"command":"send""#.to_owned(), 400),
            (r#"{"command":"send","message":5"#.to_owned(), 400),
            (r#"{"command":"send","message":"a\nb""#.to_owned(), 400),
            (format!(r#"{{"command":"send","message":"{long}""#), 413),
            (
                r#"{"command":"history","with":"*","before":1,"after":2"#.to_owned(),
                400,
            ),
            (
                r#"{"command":"history","with":"*","limit":201"#.to_owned(),
                400,
            ),
            (r#"{"command":"ack","id":-1"#.to_owned(), 400),
            (
                r#"{"command":"login alice/pw","acks":"yes""#.to_owned(),
                400,
            ),
        ] {
            let json = format!(r#"{payload},"ref":{r}}}"#);
            let reason = Command::from_json(json.as_bytes()).unwrap_err().reason;
            w.expect(&json, &fail_json(Some(r), code, &reason)).await;
        }
        // The answer to a send is its echo, the ref inside the message object.
        w.send(&format!(r#"{{"command":"send","message":"hi","ref":{r}}}"#))
            .await;
        let echo = w.recv().await;
        assert_eq!(echo, chat_json(Some(r), "alice", "hi", "*", &echo));
        s.shutdown.cancel();
    }
}

#[tokio::test]
async fn a_refused_login_carries_its_ref() {
    let s = start().await;
    let _alice = Wire::login(&s, "alice").await;
    let mut w = Wire::connect(&s).await;
    w.expect(
        r#"{"command":"login alice/wrong","ref":"l1"}"#,
        &fail_json(Some(r#""l1""#), 401, "invalid user id or password"),
    )
    .await;
    w.expect(
        r#"{"command":"login","user_id":"alice","password":"wrong","ref":2}"#,
        &fail_json(Some("2"), 401, "invalid user id or password"),
    )
    .await;
    // Still open: the right password, with another ref.
    w.expect(
        r#"{"command":"login alice/pw-of-alice","ref":3}"#,
        r#"{"command":"message","ref":3,"messages":[]}"#,
    )
    .await;
}

#[tokio::test]
async fn the_rate_limits_429_carries_the_ref() {
    let s = start_with(Config {
        rate_limit: Some(RateLimit {
            per_sec: 0.01,
            burst: 1,
        }),
        ..config()
    })
    .await;
    let mut w = Wire::login(&s, "alice").await;
    w.send(r#"{"command":"send","message":"one"}"#).await;
    let echo = w.recv().await;
    assert_eq!(echo, chat_json(None, "alice", "one", "*", &echo));
    w.expect(
        r#"{"command":"send","message":"two","ref":"r"}"#,
        &fail_json(
            Some(r#""r""#),
            429,
            "rate limit exceeded, try again in 100 s",
        ),
    )
    .await;
    w.expect(
        r#"{"command":"send","message":"two"}"#,
        &fail_json(None, 429, "rate limit exceeded, try again in 100 s"),
    )
    .await;
}

#[tokio::test]
async fn a_full_mailboxs_503_carries_the_ref() {
    let s = start_with(Config {
        store: Arc::new(MemoryStore::new(1)),
        ..config()
    })
    .await;
    let mut dave = Wire::login(&s, "dave").await;
    dave.send(r#"{"command":"exit"}"#).await;
    let mut bob = Wire::login(&s, "bob").await;
    // Wait until dave is gone: bob's list shows only bob.
    loop {
        bob.send(r#"{"command":"list"}"#).await;
        if bob.recv_chat().await == r#"{"command":"list","list":["bob"]}"# {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    bob.send(r#"{"command":"send","message":"one","to":"dave","ref":1}"#)
        .await;
    let echo = bob.recv_chat().await;
    assert_eq!(echo, chat_json(Some("1"), "bob", "one", "dave", &echo));
    bob.send(r#"{"command":"send","message":"two","to":"dave","ref":2}"#)
        .await;
    assert_eq!(
        bob.recv_chat().await,
        fail_json(
            Some("2"),
            503,
            "mailbox full: dave has too many unread messages"
        )
    );
}

#[tokio::test]
async fn only_the_senders_copy_of_a_public_message_carries_the_ref() {
    let s = start().await;
    let mut alice = Wire::login(&s, "alice").await;
    let mut bob = Wire::login(&s, "bob").await;
    let mut carol = Wire::login(&s, "carol").await;
    for r in [r#""p1""#, "7"] {
        bob.send(&format!(
            r#"{{"command":"send","message":"hi all","ref":{r}}}"#
        ))
        .await;
        let echo = bob.recv_chat().await;
        assert_eq!(echo, chat_json(Some(r), "bob", "hi all", "*", &echo));
        // The others: exactly the same message, without the ref.
        let plain = chat_json(None, "bob", "hi all", "*", &echo);
        assert_eq!(alice.recv_chat().await, plain);
        assert_eq!(carol.recv_chat().await, plain);
    }
    // Without a ref, the sender's copy is the others' too.
    bob.send(r#"{"command":"send","message":"again"}"#).await;
    let echo = bob.recv_chat().await;
    let plain = chat_json(None, "bob", "again", "*", &echo);
    assert_eq!(echo, plain);
    assert_eq!(alice.recv_chat().await, plain);
    assert_eq!(carol.recv_chat().await, plain);
}

#[tokio::test]
async fn only_the_senders_copy_of_a_private_message_carries_the_ref() {
    let s = start().await;
    let mut alice = Wire::login(&s, "alice").await;
    let mut bob = Wire::login(&s, "bob").await;
    bob.send(r#"{"command":"send","message":"psst","to":"alice","ref":"q"}"#)
        .await;
    let echo = bob.recv_chat().await;
    assert_eq!(
        echo,
        chat_json(Some(r#""q""#), "bob", "psst", "alice", &echo)
    );
    assert_eq!(
        alice.recv_chat().await,
        chat_json(None, "bob", "psst", "alice", &echo)
    );
    // To oneself: one copy, the echo, with the ref.
    bob.send(r#"{"command":"send","message":"note","to":"bob","ref":99}"#)
        .await;
    let echo = bob.recv_chat().await;
    assert_eq!(echo, chat_json(Some("99"), "bob", "note", "bob", &echo));
    // Nothing else came: the next reply is the list's.
    bob.expect(
        r#"{"command":"list","ref":100}"#,
        r#"{"command":"list","ref":100,"list":["alice","bob"]}"#,
    )
    .await;
}

#[tokio::test]
async fn a_private_message_to_an_offline_user_is_echoed_with_the_ref_and_stored_without() {
    let s = start().await;
    let mut carol = Wire::login(&s, "carol").await;
    carol.send(r#"{"command":"exit"}"#).await;
    let mut bob = Wire::login(&s, "bob").await;
    loop {
        bob.send(r#"{"command":"list"}"#).await;
        if bob.recv_chat().await == r#"{"command":"list","list":["bob"]}"# {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    bob.send(r#"{"command":"send","message":"later","to":"carol","ref":"off"}"#)
        .await;
    let echo = bob.recv_chat().await;
    assert_eq!(
        echo,
        chat_json(Some(r#""off""#), "bob", "later", "carol", &echo)
    );
    // Carol's login ack: her own login's ref at the top, the message without bob's.
    let (id, ts) = id_ts(&echo);
    let mut carol = Wire::connect(&s).await;
    carol
        .expect(
            r#"{"command":"login carol/pw-of-carol","ref":"L"}"#,
            &format!(
                r#"{{"command":"message","ref":"L","messages":[{{"user_id":"bob","message":"later","to":"carol","id":{id},"ts":{ts}}}]}}"#
            ),
        )
        .await;
}

#[tokio::test]
async fn a_bad_ref_is_400_without_a_ref_and_the_connection_stays_open() {
    let s = start().await;
    let bad = [
        r#""""#.to_owned(),
        format!(r#""{}""#, "é".repeat(65)),
        "1.5".to_owned(),
        "1.0".to_owned(),
        "-1".to_owned(),
        "9007199254740992".to_owned(),
        "18446744073709551616".to_owned(),
        "true".to_owned(),
        "[1]".to_owned(),
        r#"{"ref":1}"#.to_owned(),
    ];
    let reason = "ref must be a string of 1-64 characters or an integer 0 <= n < 2^53";
    let mut w = Wire::connect(&s).await;
    for b in &bad {
        // Before login, a good command and a bad one alike.
        w.expect(
            &format!(r#"{{"command":"login alice/pw-of-alice","ref":{b}}}"#),
            &fail_json(None, 400, reason),
        )
        .await;
        w.expect(
            &format!(r#"{{"command":"dance","ref":{b}}}"#),
            &fail_json(None, 400, reason),
        )
        .await;
    }
    let mut w = Wire::login(&s, "alice").await;
    for b in &bad {
        w.expect(
            &format!(r#"{{"command":"list","ref":{b}}}"#),
            &fail_json(None, 400, reason),
        )
        .await;
        // Nothing was sent.
        w.expect(
            &format!(r#"{{"command":"send","message":"no","ref":{b}}}"#),
            &fail_json(None, 400, reason),
        )
        .await;
    }
    w.expect(
        r#"{"command":"list"}"#,
        r#"{"command":"list","list":["alice"]}"#,
    )
    .await;
}

#[tokio::test]
async fn without_a_ref_or_with_a_null_one_no_reply_carries_one() {
    let s = start().await;
    let mut w = Wire::connect(&s).await;
    w.expect(
        r#"{"command":"list"}"#,
        &fail_json(None, 401, "login required"),
    )
    .await;
    w.expect(
        r#"{"command":"list","ref":null}"#,
        &fail_json(None, 401, "login required"),
    )
    .await;
    w.expect(
        r#"{"command":"login alice/pw-of-alice","ref":null}"#,
        r#"{"command":"message","messages":[]}"#,
    )
    .await;
    w.expect(
        r#"{"command":"list","ref":null}"#,
        r#"{"command":"list","list":["alice"]}"#,
    )
    .await;
    w.expect(
        r#"{"command":"dance"}"#,
        &fail_json(None, 400, r#"unknown command: "dance""#),
    )
    .await;
    w.expect(
        "not json",
        &fail_json(None, 400, "invalid JSON: expected ident at line 1 column 2"),
    )
    .await;
    w.send(r#"{"command":"send","message":"hi","to":"alice","ref":null}"#)
        .await;
    let echo = w.recv().await;
    assert_eq!(echo, chat_json(None, "alice", "hi", "alice", &echo));
}

#[tokio::test]
async fn the_proto_clients_request_gets_its_answers_from_the_server() {
    use simpletextim_proto::{Recipient, Ref, Reply};

    let s = start().await;
    let (mut alice, _) = login(&s, "alice").await;
    let (mut bob, _) = login(&s, "bob").await;
    // bob's public message reaches alice while she waits for her list: kept for later.
    bob.send_public("hello").await.unwrap();
    let first = next_chat(&mut bob).await;
    let list = alice.request(Command::List).await.unwrap();
    assert_eq!(
        list,
        Reply::List {
            r#ref: Some(Ref::Number(1)),
            list: vec![uid("alice"), uid("bob")]
        }
    );
    let send = Command::send(Recipient::User(uid("bob")), "psst".parse().unwrap());
    let Reply::Message {
        r#ref: None,
        messages,
    } = alice.request(send).await.unwrap()
    else {
        panic!("the echo answers a send");
    };
    assert_eq!(messages.len(), 1);
    let echo = &messages[0];
    assert_eq!(
        echo,
        &simpletextim_proto::ChatMessage {
            r#ref: Some(Ref::Number(2)),
            ..chat_like(echo, "alice", "psst", Recipient::User(uid("bob")))
        }
    );
    let unknown = Command::send(Recipient::User(uid("nobody")), "hi".parse().unwrap());
    assert_eq!(
        alice.request(unknown).await.unwrap(),
        fail(
            simpletextim_proto::ErrorCode::NotFound,
            "no such user: nobody"
        )
        .with_ref(Some(Ref::Number(3)))
    );
    // What came meanwhile follows, in order: bob's joined, then his message.
    assert_eq!(
        next(&mut alice).await,
        Reply::Joined {
            user_id: uid("bob")
        }
    );
    let m = next_chat(&mut alice).await;
    assert_eq!(m, chat_like(&first, "bob", "hello", Recipient::Everyone));
    // bob's copy of alice's message has no ref.
    let got = next_chat(&mut bob).await;
    assert_eq!(got.r#ref, None);
    assert_eq!(got.id, echo.id);
}

/// The debugging listener (one object per line) reads refs and answers with them the same.
#[tokio::test]
async fn the_line_listener_carries_refs_too() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    let lines = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = lines.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(simpletextim_server::run_listeners(
        vec![(lines, simpletextim_server::Framing::Lines)],
        config(),
        shutdown.clone(),
    ));
    let (r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    let mut ask = async |json: &str| {
        w.write_all(format!("{json}\r\n").as_bytes()).await.unwrap();
        let mut line = String::new();
        tokio::time::timeout(WAIT, r.read_line(&mut line))
            .await
            .expect("no line in time")
            .unwrap();
        line
    };
    assert_eq!(
        ask(r#"{"command":"login alice/pw","ref":"l"}"#).await,
        "{\"command\":\"message\",\"ref\":\"l\",\"messages\":[]}\n"
    );
    assert_eq!(
        ask(r#"{"command":"list","ref":1.5}"#).await,
        format!(
            "{}\n",
            fail_json(
                None,
                400,
                "ref must be a string of 1-64 characters or an integer 0 <= n < 2^53"
            )
        )
    );
    let echo = ask(r#"{"command":"send","message":"hi","ref":3}"#).await;
    assert_eq!(
        echo,
        format!("{}\n", chat_json(Some("3"), "alice", "hi", "*", &echo))
    );
    shutdown.cancel();
}
