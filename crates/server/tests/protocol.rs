//! One test per rule of the protocol (`shared/spec/protocol.md`), over real TCP against the
//! server on `127.0.0.1:0`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use simpletextim_proto::{ClientError, Command, ErrorCode, Password, Recipient, Reply};
use simpletextim_server::auth::{HashCost, hash_password};
use simpletextim_server::store::Account;
use simpletextim_server::{Config, MemoryStore, RateLimit, Registration};

// ---- login -------------------------------------------------------------------------

#[tokio::test]
async fn login_ack_is_first_frame_with_no_pending_messages() {
    let s = start().await;
    let mut raw = Raw::connect(&s).await;
    raw.frame(br#"{"command":"login alice/se/cret"}"#).await;
    assert_eq!(
        raw.reply().await,
        Reply::Message {
            r#ref: None,
            messages: vec![]
        }
    );
    // The password was split at the first '/': the same password logs in again.
    let mut raw2 = Raw::connect(&s).await;
    raw2.frame(br#"{"command":"login","user_id":"alice","password":"se/cret"}"#)
        .await;
    assert_eq!(
        raw2.reply().await,
        Reply::Message {
            r#ref: None,
            messages: vec![]
        }
    );
}

#[tokio::test]
async fn wrong_password_is_401_and_connection_stays_open() {
    let s = start().await;
    let (_alice, _) = login(&s, "alice").await;
    let mut c = simpletextim_proto::Client::connect(s.addr).await.unwrap();
    let err = c.login("alice", "wrong").await.unwrap_err();
    assert_eq!(
        err.failure(),
        Some(&simpletextim_proto::Failure::new(
            ErrorCode::Unauthorized,
            "invalid user id or password"
        ))
    );
    // Still open: the right password works on the same connection.
    assert_eq!(c.login("alice", "pw-of-alice").await.unwrap(), vec![]);
}

#[tokio::test]
async fn three_failed_logins_close_the_connection() {
    let s = start().await;
    let (_alice, _) = login(&s, "alice").await;
    let mut raw = Raw::connect(&s).await;
    for _ in 0..3 {
        raw.frame(br#"{"command":"login alice/nope"}"#).await;
        assert_eq!(
            raw.reply().await,
            fail(ErrorCode::Unauthorized, "invalid user id or password")
        );
    }
    raw.assert_closed().await;
}

#[tokio::test]
async fn a_connection_that_does_not_log_in_in_time_gets_401_and_is_closed() {
    let s = start_with(Config {
        login_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    // Silent from the start.
    let mut silent = Raw::connect(&s).await;
    // A failed login does not stop the clock.
    let mut failing = Raw::connect(&s).await;
    failing.frame(br#"{"command":"list"}"#).await;
    assert_eq!(
        failing.reply().await,
        fail(ErrorCode::Unauthorized, "login required")
    );
    for raw in [&mut silent, &mut failing] {
        assert_eq!(
            raw.reply().await,
            fail(ErrorCode::Unauthorized, "login timed out")
        );
        raw.assert_closed().await;
    }
    // A session that logged in is not timed out.
    let (mut alice, _) = login(&s, "alice").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_nothing_before_marker(&mut alice, "alice", "still here").await;
}

#[tokio::test]
async fn closed_registration_gives_the_same_401_for_unknown_user_and_wrong_password() {
    let store = Arc::new(MemoryStore::new(10));
    let phc = hash_password("right", HashCost::InsecureFast).unwrap();
    simpletextim_server::Store::create_account(
        &*store,
        Account {
            user_id: uid("Admin"),
            password_hash: phc,
            created_ms: 0,
        },
    )
    .await
    .unwrap();
    let s = start_with(Config {
        registration: Registration::Closed,
        store,
        ..config()
    })
    .await;
    let mut c = simpletextim_proto::Client::connect(s.addr).await.unwrap();
    let unknown = c.login("nobody", "x").await.unwrap_err();
    let wrong = c.login("admin", "wrong").await.unwrap_err();
    let expected =
        simpletextim_proto::Failure::new(ErrorCode::Unauthorized, "invalid user id or password");
    assert_eq!(unknown.failure(), Some(&expected));
    assert_eq!(wrong.failure(), Some(&expected));
    // The right password works, and the id is reported as registered.
    assert_eq!(c.login("ADMIN", "right").await.unwrap(), vec![]);
    c.list().await.unwrap();
    assert_eq!(
        next(&mut c).await,
        Reply::List {
            r#ref: None,
            list: vec![uid("Admin")]
        }
    );
}

#[tokio::test]
async fn commands_before_login_get_401_and_exit_closes() {
    let s = start().await;
    let mut raw = Raw::connect(&s).await;
    raw.frame(br#"{"command":"send","message":"hi"}"#).await;
    assert_eq!(
        raw.reply().await,
        fail(ErrorCode::Unauthorized, "login required")
    );
    raw.frame(br#"{"command":"list"}"#).await;
    assert_eq!(
        raw.reply().await,
        fail(ErrorCode::Unauthorized, "login required")
    );
    raw.frame(br#"{"command":"exit"}"#).await;
    raw.assert_closed().await;
}

#[tokio::test]
async fn second_login_on_same_session_is_409_and_stays_open() {
    let s = start().await;
    let (mut alice, _) = login(&s, "alice").await;
    let err = alice.login("bob", "pw").await.unwrap_err();
    assert_eq!(
        err.failure(),
        Some(&simpletextim_proto::Failure::new(
            ErrorCode::Conflict,
            "already logged in as alice"
        ))
    );
    assert_nothing_before_marker(&mut alice, "alice", "still here").await;
}

#[tokio::test]
async fn user_ids_are_case_insensitive_and_keep_their_registered_spelling() {
    let s = start().await;
    let (mut first, _) = login(&s, "Alice").await;
    first.exit().await.unwrap();
    assert_closed(&mut first).await;
    let mut c = simpletextim_proto::Client::connect(s.addr).await.unwrap();
    c.login("aLiCe", "pw-of-Alice").await.unwrap();
    c.list().await.unwrap();
    assert_eq!(
        next(&mut c).await,
        Reply::List {
            r#ref: None,
            list: vec![uid("Alice")]
        }
    );
    let (mut bob, _) = login(&s, "bob").await;
    assert_eq!(
        next(&mut c).await,
        Reply::Joined {
            user_id: uid("bob")
        }
    );
    bob.send_private("ALICE", "hi").await.unwrap();
    let got = next_chat(&mut c).await;
    assert_eq!(
        got,
        chat_like(&got, "bob", "hi", Recipient::User(uid("Alice")))
    );
    assert_eq!(got.to.as_str(), "Alice");
    assert_eq!(next_chat(&mut bob).await, got);
}

// ---- public messages, echo, order --------------------------------------------------

#[tokio::test]
async fn public_message_reaches_everyone_including_sender_identically() {
    let s = start().await;
    let (mut alice, _) = login(&s, "alice").await;
    let mut bob = login_seen_by(&s, "bob", &mut [&mut alice]).await;
    let mut carol = login_seen_by(&s, "carol", &mut [&mut alice, &mut bob]).await;
    let before = simpletextim_server::now_ms();
    bob.send_public("hello everyone 👋").await.unwrap();
    let a = next_chat(&mut alice).await;
    assert_eq!(
        a,
        chat_like(&a, "bob", "hello everyone 👋", Recipient::Everyone)
    );
    assert_eq!(next_chat(&mut bob).await, a);
    assert_eq!(next_chat(&mut carol).await, a);
    let after = simpletextim_server::now_ms();
    assert!(
        before <= a.ts && a.ts <= after,
        "ts {} not in [{before}, {after}]",
        a.ts
    );
}

#[tokio::test]
async fn ids_increase_and_each_senders_order_is_kept() {
    let s = start().await;
    let (mut carol, _) = login(&s, "carol").await;
    let mut alice = login_seen_by(&s, "alice", &mut [&mut carol]).await;
    let mut bob = login_seen_by(&s, "bob", &mut [&mut carol, &mut alice]).await;
    // Both send at once, without waiting for echoes.
    let (ra, rb) = tokio::join!(
        async {
            for i in 0..10 {
                alice.send_public(&format!("a{i}")).await?;
            }
            Ok::<_, ClientError>(())
        },
        async {
            for i in 0..10 {
                bob.send_public(&format!("b{i}")).await?;
            }
            Ok::<_, ClientError>(())
        }
    );
    ra.unwrap();
    rb.unwrap();
    let mut got = Vec::new();
    while got.len() < 20 {
        match next(&mut carol).await {
            Reply::Message { messages, .. } => got.extend(messages),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        got.windows(2).all(|w| w[0].id < w[1].id),
        "ids not increasing"
    );
    for who in ["a", "b"] {
        let texts: Vec<&str> = got
            .iter()
            .filter(|m| m.message.starts_with(who))
            .map(|m| m.message.as_str())
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("{who}{i}")).collect();
        assert_eq!(texts, expected);
    }
}

#[tokio::test]
async fn message_text_is_counted_in_characters() {
    let s = start().await;
    let (mut alice, _) = login(&s, "alice").await;
    let cjk = "漢".repeat(140);
    alice.send_public(&cjk).await.unwrap();
    assert_eq!(next_chat(&mut alice).await.message, cjk);
    let mut raw = Raw::connect(&s).await;
    raw.frame(br#"{"command":"login bob/pw"}"#).await;
    assert_eq!(
        raw.reply().await,
        Reply::Message {
            r#ref: None,
            messages: vec![]
        }
    );
    let too_long = format!(r#"{{"command":"send","message":"{}"}}"#, "漢".repeat(141));
    raw.frame(too_long.as_bytes()).await;
    assert_eq!(
        raw.reply().await,
        fail(
            ErrorCode::TooLarge,
            "message too long: 141 characters (at most 140)"
        )
    );
    // Stays open.
    raw.frame(br#"{"command":"list"}"#).await;
    assert_eq!(
        raw.reply().await,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice"), uid("bob")]
        }
    );
}

// ---- private messages and the mailbox ------------------------------------------------

#[tokio::test]
async fn private_message_goes_to_recipient_and_echoes_to_sender_only() {
    let s = start().await;
    let (mut alice, _) = login(&s, "alice").await;
    let mut bob = login_seen_by(&s, "bob", &mut [&mut alice]).await;
    let mut carol = login_seen_by(&s, "carol", &mut [&mut alice, &mut bob]).await;
    bob.send_private("alice", "where is carol?").await.unwrap();
    let got = next_chat(&mut alice).await;
    assert_eq!(
        got,
        chat_like(
            &got,
            "bob",
            "where is carol?",
            Recipient::User(uid("alice"))
        )
    );
    assert_eq!(next_chat(&mut bob).await, got);
    // carol saw nothing of it.
    assert_nothing_before_marker(&mut carol, "carol", "marker").await;
}

#[tokio::test]
async fn private_message_to_offline_user_is_delivered_once_at_next_login_oldest_first() {
    let s = start().await;
    let (mut dave, _) = login(&s, "dave").await;
    dave.exit().await.unwrap();
    assert_closed(&mut dave).await;
    let (mut bob, _) = login(&s, "bob").await;
    let mut sent = Vec::new();
    for text in ["first", "second", "third"] {
        bob.send_private("dave", text).await.unwrap();
        let echo = next_chat(&mut bob).await;
        assert_eq!(
            echo,
            chat_like(&echo, "bob", text, Recipient::User(uid("dave")))
        );
        sent.push(echo);
    }
    let (mut dave, pending) = login(&s, "dave").await;
    assert_eq!(pending, sent);
    assert_eq!(
        next(&mut bob).await,
        Reply::Joined {
            user_id: uid("dave")
        }
    );
    dave.exit().await.unwrap();
    assert_closed(&mut dave).await;
    let (_dave, pending) = login(&s, "dave").await;
    assert_eq!(pending, vec![], "delivered twice");
}

#[tokio::test]
async fn private_message_to_unknown_user_is_404_and_nothing_is_stored() {
    let s = start().await;
    let (mut bob, _) = login(&s, "bob").await;
    bob.send_private("carol", "hello?").await.unwrap();
    assert_eq!(
        next(&mut bob).await,
        fail(ErrorCode::NotFound, "no such user: carol")
    );
    // carol registers later: her mailbox is empty.
    let (_carol, pending) = login(&s, "carol").await;
    assert_eq!(pending, vec![]);
}

#[tokio::test]
async fn full_mailbox_is_503_and_nothing_more_is_stored() {
    let s = start_with(Config {
        store: Arc::new(MemoryStore::new(2)),
        ..config()
    })
    .await;
    let (mut dave, _) = login(&s, "dave").await;
    dave.exit().await.unwrap();
    assert_closed(&mut dave).await;
    let (mut bob, _) = login(&s, "bob").await;
    for text in ["one", "two"] {
        bob.send_private("dave", text).await.unwrap();
        assert_eq!(next_chat(&mut bob).await.message, text);
    }
    bob.send_private("dave", "three").await.unwrap();
    assert_eq!(
        next(&mut bob).await,
        fail(
            ErrorCode::Unavailable,
            "mailbox full: dave has too many unread messages"
        )
    );
    let (_dave, pending) = login(&s, "dave").await;
    let texts: Vec<&str> = pending.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(texts, ["one", "two"]);
}

// ---- list, presence ------------------------------------------------------------------

#[tokio::test]
async fn list_is_sorted_case_insensitively_and_includes_the_asker() {
    let s = start().await;
    let (mut zed, _) = login(&s, "zed").await;
    let mut bea = login_seen_by(&s, "Bea", &mut [&mut zed]).await;
    let _alice = login_seen_by(&s, "alice", &mut [&mut zed, &mut bea]).await;
    zed.list().await.unwrap();
    assert_eq!(
        next(&mut zed).await,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice"), uid("Bea"), uid("zed")]
        }
    );
}

#[tokio::test]
async fn joined_goes_to_others_and_left_on_exit_and_on_disconnect() {
    let s = start().await;
    let (mut alice, _) = login(&s, "alice").await;
    let bob = login_seen_by(&s, "bob", &mut [&mut alice]).await;
    let mut carol = login_seen_by(&s, "carol", &mut [&mut alice]).await;
    // bob disconnects without exit: EOF.
    drop(bob);
    assert_eq!(
        next(&mut alice).await,
        Reply::Left {
            user_id: uid("bob")
        }
    );
    assert_eq!(
        next(&mut carol).await,
        Reply::Left {
            user_id: uid("bob")
        }
    );
    carol.exit().await.unwrap();
    assert_closed(&mut carol).await;
    assert_eq!(
        next(&mut alice).await,
        Reply::Left {
            user_id: uid("carol")
        }
    );
    alice.list().await.unwrap();
    assert_eq!(
        next(&mut alice).await,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice")]
        }
    );
}

/// What a client reads until `joined <until>`, flattened: each notice as `+user`/`-user`,
/// each chat message as `user:text`.
async fn stream_until_joined(c: &mut simpletextim_proto::Client, until: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        match next(c).await {
            Reply::Joined { user_id } if user_id.as_str() == until => return got,
            Reply::Joined { user_id } => got.push(format!("+{user_id}")),
            Reply::Left { user_id } => got.push(format!("-{user_id}")),
            Reply::Message { messages, .. } => got.extend(
                messages
                    .into_iter()
                    .map(|m| format!("{}:{}", m.user_id, m.message)),
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Forty users log in at once, each says something, half of them leave; bob logs in in the
/// middle of it. Alice sees everything in the hub's order; bob sees exactly what alice saw
/// after bob's own `joined`: no notice or message from before his login, nothing twice,
/// the same order of notices and chat (each user's `joined` before its message, its message
/// before its `left`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_the_middle_of_a_storm_sees_exactly_what_follows_it_in_order() {
    // Forty logins at once from one address: the address's logins in progress are not
    // limited.
    let s = start_with(Config {
        exempt_loopback: true,
        ..config()
    })
    .await;
    let (mut alice, _) = login(&s, "alice").await;
    let storm: Vec<_> = (0..40)
        .map(|i| {
            let addr = s.addr;
            tokio::spawn(async move {
                let mut c = simpletextim_proto::Client::connect(addr).await.unwrap();
                let name = format!("s{i:02}");
                c.login(&name, "pw").await.unwrap();
                c.send_public(&format!("hello from {name}")).await.unwrap();
                if i % 2 == 0 {
                    c.exit().await.unwrap();
                    // Its echo and the notices before its exit, then the close.
                    tokio::time::timeout(WAIT, async {
                        while let Some(Ok(_)) = futures::StreamExt::next(&mut c).await {}
                    })
                    .await
                    .expect("closed after exit");
                    None
                } else {
                    Some(c)
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (mut bob, pending) = login(&s, "bob").await;
    assert_eq!(pending, vec![]);
    let mut stay = Vec::new();
    for t in storm {
        stay.push(t.await.unwrap());
    }
    // Everything of the storm is over; zed's login marks the end of both streams.
    let (_zed, _) = login(&s, "zed").await;
    let seen_by_alice = stream_until_joined(&mut alice, "zed").await;
    let seen_by_bob = stream_until_joined(&mut bob, "zed").await;
    let at = seen_by_alice
        .iter()
        .position(|e| e == "+bob")
        .expect("alice saw bob join");
    assert_eq!(seen_by_bob, seen_by_alice[at + 1..]);
    // Alice's stream is the storm: each user once in, their message, half once out, in
    // that order.
    for i in 0..40 {
        let name = format!("s{i:02}");
        let pos = |e: String| seen_by_alice.iter().position(|x| *x == e);
        let joined = pos(format!("+{name}")).expect("joined");
        let said = pos(format!("{name}:hello from {name}")).expect("said");
        assert!(joined < said, "{name}: message before its joined");
        if i % 2 == 0 {
            assert!(said < pos(format!("-{name}")).expect("left"), "{name}");
        }
    }
    assert_eq!(seen_by_alice.len(), 40 + 40 + 20 + 1);
    drop(stay);
}

#[tokio::test]
async fn takeover_closes_old_session_with_409_and_broadcasts_nothing() {
    let s = start().await;
    let (mut watcher, _) = login(&s, "watcher").await;
    let (mut old, _) = login(&s, "alice").await;
    assert_eq!(
        next(&mut watcher).await,
        Reply::Joined {
            user_id: uid("alice")
        }
    );
    let (mut new, pending) = login(&s, "alice").await;
    assert_eq!(pending, vec![]);
    assert_eq!(
        next(&mut old).await,
        fail(ErrorCode::Conflict, "logged in elsewhere")
    );
    assert_closed(&mut old).await;
    // The watcher saw neither left nor joined: its next frame is the new session's message.
    new.send_public("I moved").await.unwrap();
    let m = next_chat(&mut watcher).await;
    assert_eq!(m, chat_like(&m, "alice", "I moved", Recipient::Everyone));
    assert_eq!(next_chat(&mut new).await, m);
    watcher.list().await.unwrap();
    assert_eq!(
        next(&mut watcher).await,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice"), uid("watcher")]
        }
    );
}

#[tokio::test]
async fn exit_flushes_queued_replies_then_closes() {
    let s = start().await;
    let (mut alice, _) = login(&s, "alice").await;
    alice
        .send(&Command::send(Recipient::Everyone, "bye".parse().unwrap()))
        .await
        .unwrap();
    alice.exit().await.unwrap();
    let m = next_chat(&mut alice).await;
    assert_eq!(m, chat_like(&m, "alice", "bye", Recipient::Everyone));
    assert_closed(&mut alice).await;
}

// ---- bad input -----------------------------------------------------------------------

#[tokio::test]
async fn malformed_requests_get_400_and_the_connection_stays_open() {
    let s = start().await;
    let mut raw = Raw::connect(&s).await;
    raw.frame(br#"{"command":"login alice/pw"}"#).await;
    assert_eq!(
        raw.reply().await,
        Reply::Message {
            r#ref: None,
            messages: vec![]
        }
    );
    let cases: &[(&[u8], &str)] = &[
        (
            b"not json",
            "invalid JSON: expected ident at line 1 column 2",
        ),
        (
            b"\xff\xfe",
            "invalid JSON: expected value at line 1 column 1",
        ),
        (b"[1,2]", "a command must be a JSON object"),
        (b"  42", "a command must be a JSON object"),
        (br#"{"command":"dance"}"#, r#"unknown command: "dance""#),
        (br#"{"command":"send"}"#, "send: missing field message"),
        (br#"{"command":"send","message":""}"#, "message is empty"),
        (
            br#"{"command":"send","message":" \u3000 "}"#,
            "message is empty",
        ),
        (
            br#"{"command":"send","message":"a\u001b[2Jb"}"#,
            "message contains control characters",
        ),
        (
            br#"{"command":"send","message":"hi","to":"no one"}"#,
            "invalid user id: \"no one\" (allowed: A-Z a-z 0-9 _ . -)",
        ),
        (br#"{"command":"send","message":"hi","to":"*"}"#, ""),
    ];
    for (payload, reason) in cases {
        raw.frame(payload).await;
        let got = raw.reply().await;
        if reason.is_empty() {
            assert!(matches!(got, Reply::Message { .. }), "{got:?}");
        } else {
            assert_eq!(
                got,
                fail(ErrorCode::BadRequest, reason),
                "for {:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }
    raw.frame(br#"{"command":"list"}"#).await;
    assert_eq!(
        raw.reply().await,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice")]
        }
    );
}

#[tokio::test]
async fn oversized_frame_is_413_then_closed_and_others_are_undisturbed() {
    let s = start().await;
    let (mut alice, _) = login(&s, "alice").await;
    let mut raw = Raw::connect(&s).await;
    raw.frame(br#"{"command":"login mallory/pw"}"#).await;
    assert_eq!(
        raw.reply().await,
        Reply::Message {
            r#ref: None,
            messages: vec![]
        }
    );
    assert_eq!(
        next(&mut alice).await,
        Reply::Joined {
            user_id: uid("mallory")
        }
    );
    // A header announcing 1 GiB: refused from the header alone.
    raw.bytes(&(1u32 << 30).to_be_bytes()).await;
    assert_eq!(
        raw.reply().await,
        fail(
            ErrorCode::TooLarge,
            "frame over the size limit of 4096 bytes"
        )
    );
    raw.assert_closed().await;
    assert_eq!(
        next(&mut alice).await,
        Reply::Left {
            user_id: uid("mallory")
        }
    );
    assert_nothing_before_marker(&mut alice, "alice", "fine").await;
}

#[tokio::test]
async fn rate_limit_is_429_and_stays_open() {
    let s = start_with(Config {
        // Three at once, then one per 100 s: the fourth is always refused.
        rate_limit: Some(RateLimit {
            per_sec: 0.01,
            burst: 3,
        }),
        ..config()
    })
    .await;
    let (mut alice, _) = login(&s, "alice").await;
    for i in 0..3 {
        alice.send_public(&format!("m{i}")).await.unwrap();
        assert_eq!(next_chat(&mut alice).await.message, format!("m{i}"));
    }
    // The reason says when a token will be there (100 s), and for a `list`, which costs
    // as much as the whole burst here, when three will.
    alice.send_public("m3").await.unwrap();
    assert_eq!(
        next(&mut alice).await,
        fail(
            ErrorCode::RateLimited,
            "rate limit exceeded, try again in 100 s"
        )
    );
    alice.list().await.unwrap();
    assert_eq!(
        next(&mut alice).await,
        fail(
            ErrorCode::RateLimited,
            "rate limit exceeded, try again in 300 s"
        )
    );
}

#[tokio::test]
async fn client_refuses_invalid_input_without_sending() {
    let s = start().await;
    let (mut alice, _) = login(&s, "alice").await;
    let err = alice.send_public(&"x".repeat(141)).await.unwrap_err();
    assert!(matches!(err, ClientError::Invalid(ref f) if f.error_code == ErrorCode::TooLarge));
    assert!(Password::new("").is_err());
    assert_nothing_before_marker(&mut alice, "alice", "ok").await;
}

// ---- shutdown ------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_sends_503_to_every_session_and_returns() {
    let s = start().await;
    let (mut alice, _) = login(&s, "alice").await;
    let mut bob = login_seen_by(&s, "bob", &mut [&mut alice]).await;
    let mut anon = Raw::connect(&s).await;
    // Make sure the anonymous connection was accepted before shutting down.
    anon.frame(br#"{"command":"list"}"#).await;
    assert_eq!(
        anon.reply().await,
        fail(ErrorCode::Unauthorized, "login required")
    );
    s.shutdown.cancel();
    for c in [&mut alice, &mut bob] {
        assert_eq!(
            next(c).await,
            fail(ErrorCode::Unavailable, "server shutting down")
        );
        assert_closed(c).await;
    }
    assert_eq!(
        anon.reply().await,
        fail(ErrorCode::Unavailable, "server shutting down")
    );
    anon.assert_closed().await;
    tokio::time::timeout(WAIT, s.handle)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}

/// The debugging listener: the same protocol, one JSON object per line, sharing the hub
/// with the framed listener.
#[tokio::test]
async fn the_line_listener_speaks_the_protocol_one_object_per_line() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    let framed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lines = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (framed_addr, lines_addr) = (framed.local_addr().unwrap(), lines.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(simpletextim_server::run_listeners(
        vec![
            (framed, simpletextim_server::Framing::LengthDelimited),
            (lines, simpletextim_server::Framing::Lines),
        ],
        config(),
        shutdown.clone(),
    ));

    let (r, mut w) = TcpStream::connect(lines_addr).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut read_line = async |r: &mut BufReader<_>| {
        line.clear();
        tokio::time::timeout(WAIT, r.read_line(&mut line))
            .await
            .expect("no line in time")
            .unwrap();
        line.clone()
    };
    w.write_all(b"{\"command\":\"login alice/pw\"}\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_line(&mut r).await,
        "{\"command\":\"message\",\"messages\":[]}\n"
    );

    // A framed client and a line client see each other.
    let mut bob = simpletextim_proto::Client::connect(framed_addr)
        .await
        .unwrap();
    bob.login("bob", "pw").await.unwrap();
    assert_eq!(
        read_line(&mut r).await,
        "{\"command\":\"joined\",\"user_id\":\"bob\"}\n"
    );
    w.write_all(b"\n{\"command\":\"send\",\"message\":\"hi bob\"}\n")
        .await
        .unwrap();
    let echo = read_line(&mut r).await;
    let m = next_chat(&mut bob).await;
    assert_eq!(m, chat_like(&m, "alice", "hi bob", Recipient::Everyone));
    assert_eq!(
        echo,
        format!(
            "{{\"command\":\"message\",\"messages\":[{{\"user_id\":\"alice\",\"message\":\"hi bob\",\"to\":\"*\",\"id\":{},\"ts\":{}}}]}}\n",
            m.id, m.ts
        )
    );
    // Bad input: 400, and the connection stays open.
    w.write_all(b"hello?\n{\"command\":\"list\"}\n")
        .await
        .unwrap();
    assert_eq!(
        read_line(&mut r).await,
        "{\"command\":\"fail\",\"fail\":{\"error_code\":400,\"reason\":\"invalid JSON: expected value at line 1 column 1\"}}\n"
    );
    assert_eq!(
        read_line(&mut r).await,
        "{\"command\":\"list\",\"list\":[\"alice\",\"bob\"]}\n"
    );
    // A line over the limit: 413, then close.
    w.write_all(&[b'x'; 5000]).await.unwrap();
    assert_eq!(
        read_line(&mut r).await,
        "{\"command\":\"fail\",\"fail\":{\"error_code\":413,\"reason\":\"frame over the size limit of 4096 bytes\"}}\n"
    );
    assert_eq!(read_line(&mut r).await, "");
    assert_eq!(
        next(&mut bob).await,
        Reply::Left {
            user_id: uid("alice")
        }
    );

    shutdown.cancel();
    server.await.unwrap().unwrap();
}
