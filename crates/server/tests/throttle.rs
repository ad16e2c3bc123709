//! Login throttling: failed logins for an account, or from an address, make further
//! attempts wait (`fail 429`, saying when to try again), and an attacker cannot lock the
//! real user out; the login queue is bounded, per address too, and a login waiting in it
//! counts against the login deadline. Clients connect from different loopback addresses
//! (127.0.0.0/8).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::future::BoxFuture;
use simpletextim_proto::{
    ChatMessage, Client, ClientError, Command, ErrorCode, Failure, Password, Reply,
};
use simpletextim_server::store::{Account, StoreError};
use simpletextim_server::{Backoff, Config, MemoryStore, Store, ThrottlePolicy};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

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
            ..ThrottlePolicy::default()
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

/// A store whose account lookups wait until the gate opens: logins stay in the queue.
struct GatedStore {
    inner: MemoryStore,
    gate: Arc<Semaphore>,
}

impl GatedStore {
    fn new() -> (Arc<GatedStore>, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let store = GatedStore {
            inner: MemoryStore::new(100),
            gate: gate.clone(),
        };
        (Arc::new(store), gate)
    }
}

impl Store for GatedStore {
    fn account(&self, key: String) -> BoxFuture<'static, Result<Option<Account>, StoreError>> {
        let gate = self.gate.clone();
        let lookup = self.inner.account(key);
        Box::pin(async move {
            let _open = gate.acquire().await;
            lookup.await
        })
    }
    fn create_account(&self, account: Account) -> BoxFuture<'static, Result<(), StoreError>> {
        self.inner.create_account(account)
    }
    fn enqueue(&self, key: String, m: ChatMessage) -> BoxFuture<'static, Result<(), StoreError>> {
        self.inner.enqueue(key, m)
    }
    fn pending(&self, key: String) -> BoxFuture<'static, Result<Vec<ChatMessage>, StoreError>> {
        self.inner.pending(key)
    }
    fn delete_delivered(
        &self,
        key: String,
        ids: Vec<u64>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.inner.delete_delivered(key, ids)
    }
    fn max_message_id(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.inner.max_message_id()
    }
}

/// Opens the gate for good.
fn open(gate: &Semaphore) {
    gate.add_permits(Semaphore::MAX_PERMITS / 2);
}

/// Sends a login on a raw connection from `from`, without waiting for its answer.
async fn send_login(s: &TestServer, from: &str, user: &str) -> Client {
    let mut c = connect_from(s, from).await;
    c.send(&Command::Login {
        acks: false,
        user_id: uid(user),
        password: Password::new(&format!("pw-of-{user}")).unwrap(),
    })
    .await
    .unwrap();
    c
}

/// The login ack of a login sent with [`send_login`].
async fn logged_in(c: &mut Client) {
    assert_eq!(
        next(c).await,
        Reply::Message {
            r#ref: None,
            messages: vec![]
        }
    );
}

#[tokio::test]
async fn a_full_login_queue_answers_503_and_a_client_that_leaves_gives_its_place_back() {
    let (store, gate) = GatedStore::new();
    let s = start_with(Config {
        login_queue: 1,
        store,
        ..config()
    })
    .await;
    let leaving = send_login(&s, "127.0.0.1", "alice").await;
    // alice's login holds the one place: bob's is refused at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_bob, r) = login_from(&s, "127.0.0.2", "bob", "pw-of-bob").await;
    assert_eq!(
        r,
        Err(Failure::new(
            ErrorCode::Unavailable,
            "server busy, try again"
        ))
    );
    // alice goes away before her login is checked: her place comes back, carol gets it.
    drop(leaving);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut carol = send_login(&s, "127.0.0.3", "carol").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    open(&gate);
    logged_in(&mut carol).await;
}

#[tokio::test]
async fn the_login_deadline_counts_the_time_a_login_waits_in_the_queue() {
    let (store, _gate) = GatedStore::new();
    let s = start_with(Config {
        login_timeout: Duration::from_millis(300),
        store,
        ..config()
    })
    .await;
    let mut c = send_login(&s, "127.0.0.1", "alice").await;
    assert_eq!(
        next(&mut c).await,
        fail(ErrorCode::Unauthorized, "login timed out")
    );
    assert_closed(&mut c).await;
}

#[tokio::test]
async fn one_address_has_a_bounded_number_of_logins_in_progress() {
    let (store, gate) = GatedStore::new();
    let s = start_with(Config {
        login_throttle: ThrottlePolicy {
            in_flight_per_address: 1,
            ..ThrottlePolicy::default()
        },
        store,
        ..config()
    })
    .await;
    let mut alice = send_login(&s, "127.0.0.1", "alice").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_bob, r) = login_from(&s, "127.0.0.1", "bob", "pw-of-bob").await;
    assert_eq!(
        r,
        Err(Failure::new(
            ErrorCode::Unavailable,
            "too many logins in progress from this address, try again"
        ))
    );
    let mut carol = send_login(&s, "127.0.0.2", "carol").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    open(&gate);
    logged_in(&mut alice).await;
    logged_in(&mut carol).await;
}

#[tokio::test]
async fn loopback_clients_can_be_exempt_from_the_per_address_limit() {
    let (store, gate) = GatedStore::new();
    let s = start_with(Config {
        login_throttle: ThrottlePolicy {
            in_flight_per_address: 1,
            ..ThrottlePolicy::default()
        },
        exempt_loopback: true,
        store,
        ..config()
    })
    .await;
    let mut alice = send_login(&s, "127.0.0.1", "alice").await;
    let mut bob = send_login(&s, "127.0.0.1", "bob").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    open(&gate);
    logged_in(&mut alice).await;
    logged_in(&mut bob).await;
}
