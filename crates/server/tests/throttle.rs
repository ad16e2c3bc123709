//! Login throttling: failed logins for an account, or from an address, make further
//! attempts wait (`fail 429`, saying when to try again), and an attacker cannot lock the
//! real user out. Clients connect from different loopback addresses (127.0.0.0/8).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use simpletextim_proto::{Client, ClientError, Command, ErrorCode, Failure};
use simpletextim_server::{Backoff, Config, ThrottlePolicy};
use tokio::net::TcpSocket;

/// A schedule: `free` failures, then a wait of a minute (so the reason's seconds are exact).
fn backoff(free: u32) -> Backoff {
    Backoff {
        free,
        base: Duration::from_secs(60),
        max: Duration::from_secs(600),
        forget: Duration::from_secs(3600),
    }
}

async fn start_throttled(per_address: u32, per_account: u32) -> TestServer {
    start_with(Config {
        login_throttle: ThrottlePolicy {
            per_address: backoff(per_address),
            per_account: backoff(per_account),
        },
        ..config()
    })
    .await
}

/// A client connected from `from` (a loopback address).
async fn connect_from(s: &TestServer, from: &str) -> Client {
    let sock = TcpSocket::new_v4().unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(local).unwrap();
    Client::from_stream(sock.connect(s.addr).await.unwrap())
}

/// Logs `user` in with `password` from `from`; the server's refusal if any.
async fn login_from(
    s: &TestServer,
    from: &str,
    user: &str,
    password: &str,
) -> (Client, Result<(), Failure>) {
    let mut c = connect_from(s, from).await;
    let result = match tokio::time::timeout(WAIT, c.login(user, password))
        .await
        .expect("no login answer in time")
    {
        Ok(pending) => {
            assert_eq!(pending, vec![]);
            Ok(())
        }
        Err(ClientError::Refused(f)) => Err(f),
        Err(e) => panic!("login of {user} from {from}: {e}"),
    };
    (c, result)
}

fn wrong() -> Result<(), Failure> {
    Err(Failure::new(
        ErrorCode::Unauthorized,
        "invalid user id or password",
    ))
}

fn throttled() -> Result<(), Failure> {
    Err(Failure::new(
        ErrorCode::RateLimited,
        "too many failed logins, try again in 60 s",
    ))
}

#[tokio::test]
async fn failures_for_an_account_make_it_wait_except_from_where_its_user_logged_in() {
    let s = start_throttled(100, 2).await;
    // alice registers from 127.0.0.1, then leaves.
    let (alice, r) = login_from(&s, "127.0.0.1", "alice", "pw-of-alice").await;
    assert_eq!(r, Ok(()));
    drop(alice);
    // Someone at 127.0.0.2 guesses twice: both checked and refused.
    for _ in 0..2 {
        let (_c, r) = login_from(&s, "127.0.0.2", "alice", "guess").await;
        assert_eq!(r, wrong());
    }
    // Now alice's account waits, even for the right password, from addresses that never
    // logged in to it…
    let (mut c, r) = login_from(&s, "127.0.0.2", "alice", "pw-of-alice").await;
    assert_eq!(r, throttled());
    let (_c, r) = login_from(&s, "127.0.0.3", "ALICE", "pw-of-alice").await;
    assert_eq!(r, throttled());
    // … and the refused connection stays open.
    c.send(&Command::List).await.unwrap();
    assert_eq!(
        next(&mut c).await,
        fail(ErrorCode::Unauthorized, "login required")
    );
    // alice, from where she logged in before, gets in; other accounts are not held back.
    let (_alice, r) = login_from(&s, "127.0.0.1", "alice", "pw-of-alice").await;
    assert_eq!(r, Ok(()));
    let (_bob, r) = login_from(&s, "127.0.0.2", "bob", "pw-of-bob").await;
    assert_eq!(r, Ok(()));
}

#[tokio::test]
async fn failures_from_an_address_make_it_wait_whatever_the_account() {
    let s = start_throttled(3, 100).await;
    for user in ["bob", "carol", "dave"] {
        let (_c, r) = login_from(&s, "127.0.0.1", user, &format!("pw-of-{user}")).await;
        assert_eq!(r, Ok(()));
    }
    for user in ["bob", "carol", "dave"] {
        let (_c, r) = login_from(&s, "127.0.0.4", user, "guess").await;
        assert_eq!(r, wrong());
    }
    // 127.0.0.4 now waits, for any account, a new one included (not even registered).
    let (_c, r) = login_from(&s, "127.0.0.4", "erin", "pw-of-erin").await;
    assert_eq!(r, throttled());
    let (_c, r) = login_from(&s, "127.0.0.5", "erin", "pw-of-erin").await;
    assert_eq!(r, Ok(()));
}
