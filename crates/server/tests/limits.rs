//! Abuse limits over real sockets: flood control per user (kept across reconnects and
//! takeovers, `list` costing more), new accounts per address, connections and new
//! connections per address, the cap on connections not logged in, and exemptions. Clients
//! connect from different loopback addresses (127.0.0.0/8) to be different addresses.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use simpletextim_proto::{Client, ClientError, ErrorCode, Failure, Reply};
use simpletextim_server::{AddressLimits, Config, RateLimit};

/// A rate limit of `burst` tokens, then one per 100 s: a refused `send` waits 100 s.
fn slow(burst: u32) -> Option<RateLimit> {
    Some(RateLimit {
        per_sec: 0.01,
        burst,
    })
}

fn rate_limited(secs: u64) -> Reply {
    fail(
        ErrorCode::RateLimited,
        &format!("rate limit exceeded, try again in {secs} s"),
    )
}

/// Logs `user` in from `from`; the server's refusal if any.
async fn login_from(s: &TestServer, from: &str, user: &str) -> (Client, Result<(), Failure>) {
    let mut c = Client::from_stream(connect_from(s, from).await);
    let r = try_login(&mut c, user).await;
    (c, r)
}

/// Logs `user` in on `c` with the password [`login`] uses; the server's refusal if any.
async fn try_login(c: &mut Client, user: &str) -> Result<(), Failure> {
    let pw = format!("pw-of-{user}");
    match tokio::time::timeout(WAIT, c.login(user, &pw))
        .await
        .expect("no login answer in time")
    {
        Ok(pending) => {
            assert_eq!(pending, vec![]);
            Ok(())
        }
        Err(ClientError::Refused(f)) => Err(f),
        Err(e) => panic!("login of {user}: {e}"),
    }
}

/// Sends a public message and expects its echo.
async fn send_ok(c: &mut Client, me: &str, text: &str) {
    c.send_public(text).await.unwrap();
    let m = next_chat(c).await;
    assert_eq!(
        m,
        chat_like(&m, me, text, simpletextim_proto::Recipient::Everyone)
    );
}

#[tokio::test]
async fn a_users_flood_is_refused_and_reconnecting_does_not_refill_the_bucket() {
    let s = start_with(Config {
        rate_limit: slow(3),
        ..config()
    })
    .await;
    let (mut alice, _) = login(&s, "alice").await;
    for i in 0..3 {
        send_ok(&mut alice, "alice", &format!("m{i}")).await;
    }
    alice.send_public("m3").await.unwrap();
    assert_eq!(next(&mut alice).await, rate_limited(100));
    alice.exit().await.unwrap();
    assert_closed(&mut alice).await;
    // A new connection of the same user finds the bucket as it was left.
    let (mut alice, _) = login(&s, "alice").await;
    alice.send_public("m4").await.unwrap();
    assert_eq!(next(&mut alice).await, rate_limited(100));
    // Another user has a bucket of its own.
    let (mut bob, _) = login(&s, "bob").await;
    send_ok(&mut bob, "bob", "hello").await;
}

#[tokio::test]
async fn a_list_costs_ten_sends() {
    let s = start_with(Config {
        rate_limit: slow(12),
        ..config()
    })
    .await;
    let (mut alice, _) = login(&s, "alice").await;
    alice.list().await.unwrap();
    assert_eq!(
        next(&mut alice).await,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice")]
        }
    );
    // 2 tokens left: another list needs 8 more, 800 s; two sends still go.
    alice.list().await.unwrap();
    assert_eq!(next(&mut alice).await, rate_limited(800));
    send_ok(&mut alice, "alice", "one").await;
    send_ok(&mut alice, "alice", "two").await;
    alice.send_public("three").await.unwrap();
    assert_eq!(next(&mut alice).await, rate_limited(100));
}

#[tokio::test]
async fn a_takeover_keeps_the_bucket() {
    let s = start_with(Config {
        rate_limit: slow(2),
        ..config()
    })
    .await;
    let (mut first, _) = login(&s, "alice").await;
    send_ok(&mut first, "alice", "a").await;
    send_ok(&mut first, "alice", "b").await;
    let (mut second, _) = login(&s, "alice").await;
    assert_eq!(
        next(&mut first).await,
        fail(ErrorCode::Conflict, "logged in elsewhere")
    );
    assert_closed(&mut first).await;
    second.send_public("c").await.unwrap();
    assert_eq!(next(&mut second).await, rate_limited(100));
}

#[tokio::test]
async fn new_accounts_per_address_are_limited_before_hashing_and_logins_still_work() {
    let s = start_with(Config {
        address_limits: AddressLimits {
            new_accounts: 2,
            new_accounts_per_hour: 3,
            ..AddressLimits::UNLIMITED
        },
        ..config()
    })
    .await;
    let (_u1, r) = login_from(&s, "127.0.0.2", "u1").await;
    assert_eq!(r, Ok(()));
    let (_u2, r) = login_from(&s, "127.0.0.2", "u2").await;
    assert_eq!(r, Ok(()));
    // The third: refused (one more in 20 minutes), no account made, the connection open.
    let (mut c, r) = login_from(&s, "127.0.0.2", "u3").await;
    let over = Failure::new(
        ErrorCode::RateLimited,
        "too many new accounts from your address, try again in 20 min",
    );
    assert_eq!(r, Err(over.clone()));
    assert_eq!(s.store.account("u3".to_owned()).await.unwrap(), None);
    assert_eq!(try_login(&mut c, "u4").await, Err(over));
    // The same connection, and others from the address, log in to existing accounts.
    assert_eq!(try_login(&mut c, "u1").await, Ok(()));
    let (_u2, r) = login_from(&s, "127.0.0.2", "u2").await;
    assert_eq!(r, Ok(()));
    // Another address registers.
    let (_u3, r) = login_from(&s, "127.0.0.3", "u3").await;
    assert_eq!(r, Ok(()));
    assert!(s.store.account("u3".to_owned()).await.unwrap().is_some());
}

#[tokio::test]
async fn the_17th_connection_from_an_address_is_refused_and_closed() {
    let s = start_with(Config {
        address_limits: AddressLimits {
            connections: 16,
            ..AddressLimits::UNLIMITED
        },
        ..config()
    })
    .await;
    let mut open = Vec::new();
    for i in 0..16 {
        let (c, r) = login_from(&s, "127.0.0.2", &format!("user{i}")).await;
        assert_eq!(r, Ok(()));
        open.push(c);
    }
    let mut refused = Raw::connect_from(&s, "127.0.0.2").await;
    let too_many = fail(
        ErrorCode::Unavailable,
        "too many connections from your address (at most 16), close one and try again",
    );
    assert_eq!(refused.reply().await, too_many);
    refused.assert_closed().await;
    // Another address is not held back.
    let (_other, r) = login_from(&s, "127.0.0.3", "other").await;
    assert_eq!(r, Ok(()));
    // Once one of the 16 has gone, the address gets a place again.
    let mut gone = open.pop().unwrap();
    gone.exit().await.unwrap();
    drop(gone);
    let mut again = None;
    for _ in 0..100 {
        let mut c = Raw::connect_from(&s, "127.0.0.2").await;
        c.frame(br#"{"command":"login","user_id":"user15","password":"pw-of-user15"}"#)
            .await;
        match c.reply().await {
            Reply::Message { messages, .. } if messages.is_empty() => {
                again = Some(c);
                break;
            }
            r => assert_eq!(r, too_many),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the address never got its place back");
}

#[tokio::test]
async fn new_connections_per_address_are_limited_per_minute() {
    let s = start_with(Config {
        address_limits: AddressLimits {
            new_connections_per_minute: 3,
            ..AddressLimits::UNLIMITED
        },
        ..config()
    })
    .await;
    // Three at once, closed at once: the rate counts connections made, not open.
    for i in 0..3 {
        let (mut c, r) = login_from(&s, "127.0.0.2", &format!("user{i}")).await;
        assert_eq!(r, Ok(()));
        c.exit().await.unwrap();
        assert_closed(&mut c).await;
    }
    let mut refused = Raw::connect_from(&s, "127.0.0.2").await;
    assert_eq!(
        refused.reply().await,
        fail(
            ErrorCode::Unavailable,
            "too many new connections from your address, try again in 20 s"
        )
    );
    refused.assert_closed().await;
    let (_c, r) = login_from(&s, "127.0.0.3", "other").await;
    assert_eq!(r, Ok(()));
}

#[tokio::test]
async fn past_the_cap_on_connections_not_logged_in_a_connection_is_refused_at_once() {
    let s = start_with(Config {
        max_unauthenticated: 3,
        ..config()
    })
    .await;
    // A logged-in user does not count.
    let (_alice, _) = login(&s, "alice").await;
    // Three connections that never log in (slowloris) fill the pool.
    let mut idle = Vec::new();
    for i in 2..5 {
        idle.push(Raw::connect_from(&s, &format!("127.0.0.{i}")).await);
    }
    let started = std::time::Instant::now();
    let mut refused = Raw::connect_from(&s, "127.0.0.5").await;
    assert_eq!(
        refused.reply().await,
        fail(ErrorCode::Unavailable, "server busy, try again")
    );
    refused.assert_closed().await;
    assert!(
        started.elapsed() < WAIT / 2,
        "refused late: {:?}",
        started.elapsed()
    );
    // One of them leaves: a real user from another address gets its place.
    drop(idle.pop());
    let mut joined = false;
    for _ in 0..100 {
        let mut c = Client::from_stream(connect_from(&s, "127.0.0.6").await);
        match tokio::time::timeout(WAIT, c.login("bob", "pw-of-bob")).await {
            Ok(Ok(_)) => {
                joined = true;
                break;
            }
            Ok(Err(ClientError::Refused(f))) => {
                assert_eq!(
                    f,
                    Failure::new(ErrorCode::Unavailable, "server busy, try again")
                );
            }
            other => panic!("unexpected: {other:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(joined, "bob never got a place");
    // A logged-in connection left the pool: another one not logged in fits.
    let mut fits = Raw::connect_from(&s, "127.0.0.7").await;
    fits.frame(br#"{"command":"list"}"#).await;
    assert_eq!(
        fits.reply().await,
        fail(ErrorCode::Unauthorized, "login required")
    );
}

#[tokio::test]
async fn exempt_networks_skip_the_per_address_limits_but_not_flood_control() {
    let s = start_with(Config {
        address_limits: AddressLimits {
            connections: 2,
            new_connections_per_minute: 2,
            new_accounts: 1,
            new_accounts_per_hour: 1,
        },
        exempt: vec!["127.0.0.2/32".parse().unwrap()],
        rate_limit: slow(1),
        ..config()
    })
    .await;
    let mut open = Vec::new();
    for i in 0..4 {
        let (c, r) = login_from(&s, "127.0.0.2", &format!("user{i}")).await;
        assert_eq!(r, Ok(()));
        open.push(c);
    }
    // The last one in has no `joined` queued before its echo.
    send_ok(&mut open[3], "user3", "one").await;
    open[3].send_public("two").await.unwrap();
    assert_eq!(next(&mut open[3]).await, rate_limited(100));
    // 127.0.0.3 is not exempt: one account, two connections a minute.
    let (_c, r) = login_from(&s, "127.0.0.3", "carol").await;
    assert_eq!(r, Ok(()));
    let (_c, r) = login_from(&s, "127.0.0.3", "dave").await;
    assert_eq!(
        r,
        Err(Failure::new(
            ErrorCode::RateLimited,
            "too many new accounts from your address, try again in 60 min"
        ))
    );
    let mut refused = Raw::connect_from(&s, "127.0.0.3").await;
    assert_eq!(
        refused.reply().await,
        fail(
            ErrorCode::Unavailable,
            "too many new connections from your address, try again in 30 s"
        )
    );
    refused.assert_closed().await;
}
