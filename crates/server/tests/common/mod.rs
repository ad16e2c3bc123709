//! Test harness: a real server on `127.0.0.1:0`, clients through the proto `Client`, and raw
//! sockets for malformed input. Every wait is bounded by [`WAIT`].

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use simpletextim_proto::{
    ChatMessage, Client, ClientCodec, ErrorCode, Failure, Recipient, Reply, UserId,
};
use simpletextim_server::{Config, MemoryStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

/// The longest any single step of a test may wait.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<std::io::Result<()>>,
    pub store: Arc<dyn Store>,
}

/// A config for tests: cheap hashing, in-memory store, no rate limit, and no per-address
/// limit on connections or new accounts (tests open hundreds of connections from
/// 127.0.0.1; the login throttle's per-address limits stay on, as `throttle.rs` tests them).
pub fn config() -> Config {
    Config {
        hash_cost: simpletextim_server::HashCost::InsecureFast,
        rate_limit: None,
        address_limits: simpletextim_server::AddressLimits::UNLIMITED,
        store: Arc::new(MemoryStore::new(1000)),
        ..Config::default()
    }
}

pub async fn start() -> TestServer {
    start_with(config()).await
}

pub async fn start_with(config: Config) -> TestServer {
    // Server logs show with a failing test's output (RUST_LOG to change the level).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let store = config.store.clone();
    let handle = tokio::spawn(simpletextim_server::run(listener, config, shutdown.clone()));
    TestServer {
        addr,
        shutdown,
        handle,
        store,
    }
}

/// A socket connected to the server from `from`, a loopback address such as 127.0.0.2
/// (all of 127.0.0.0/8 is loopback on Linux), so that a test can be several addresses.
pub async fn connect_from(server: &TestServer, from: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    let local = SocketAddr::new(from.parse().unwrap(), 0);
    sock.bind(local).unwrap();
    sock.connect(server.addr).await.unwrap()
}

pub fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

/// Connects and logs in; returns the client and the login ack's messages.
pub async fn login(server: &TestServer, user: &str) -> (Client, Vec<ChatMessage>) {
    let mut c = Client::connect(server.addr).await.unwrap();
    let pw = format!("pw-of-{user}");
    let pending = tokio::time::timeout(WAIT, c.login(user, &pw))
        .await
        .expect("login timed out")
        .unwrap();
    (c, pending)
}

/// Logs in a user and has everyone in `others` see their `joined` first.
pub async fn login_seen_by(server: &TestServer, user: &str, others: &mut [&mut Client]) -> Client {
    let (c, pending) = login(server, user).await;
    assert_eq!(pending, vec![]);
    for o in others.iter_mut() {
        assert_eq!(next(o).await, Reply::Joined { user_id: uid(user) });
    }
    c
}

pub async fn next(c: &mut Client) -> Reply {
    tokio::time::timeout(WAIT, c.next())
        .await
        .expect("no reply in time")
        .expect("connection closed")
        .expect("bad reply")
}

/// The next reply must be a single chat message; returns it.
pub async fn next_chat(c: &mut Client) -> ChatMessage {
    match next(c).await {
        Reply::Message { mut messages, .. } if messages.len() == 1 => messages.remove(0),
        other => panic!("expected one chat message, got {other:?}"),
    }
}

/// Asserts the connection ends (EOF) without any further reply.
pub async fn assert_closed(c: &mut Client) {
    match tokio::time::timeout(WAIT, c.next())
        .await
        .expect("not closed in time")
    {
        None => {}
        Some(other) => panic!("expected EOF, got {other:?}"),
    }
}

pub fn fail(code: ErrorCode, reason: &str) -> Reply {
    Reply::Fail {
        r#ref: None,
        fail: Failure::new(code, reason),
    }
}

/// A chat message as the server should deliver it, with `id`/`ts` taken from `got`
/// (checked separately).
pub fn chat_like(got: &ChatMessage, from: &str, text: &str, to: Recipient) -> ChatMessage {
    ChatMessage {
        r#ref: None,
        user_id: uid(from),
        message: text.into(),
        to,
        id: got.id,
        ts: got.ts,
    }
}

/// Sends a public marker from `c` and asserts it is `c`'s next reply: proof that nothing
/// else (no `joined`, `left`, stray message) was queued for `c` before it.
pub async fn assert_nothing_before_marker(c: &mut Client, me: &str, marker: &str) {
    c.send_public(marker).await.unwrap();
    let m = next_chat(c).await;
    assert_eq!(m, chat_like(&m, me, marker, Recipient::Everyone));
}

/// A raw socket speaking frames, for input the proto client refuses to produce.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: ClientCodec,
}

impl Raw {
    pub async fn connect(server: &TestServer) -> Raw {
        Raw::from_stream(TcpStream::connect(server.addr).await.unwrap())
    }

    /// Connects from `from`, a loopback address such as 127.0.0.2.
    pub async fn connect_from(server: &TestServer, from: &str) -> Raw {
        Raw::from_stream(connect_from(server, from).await)
    }

    fn from_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: BytesMut::new(),
            codec: ClientCodec::new(),
        }
    }

    /// Sends one frame with `payload` as its body.
    pub async fn frame(&mut self, payload: &[u8]) {
        let mut b = BytesMut::new();
        b.put_u32(payload.len() as u32);
        b.put_slice(payload);
        self.stream.write_all(&b).await.unwrap();
    }

    pub async fn bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next reply, or `None` at EOF.
    pub async fn next(&mut self) -> Option<Reply> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(r) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(r);
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap_or(0);
                if n == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("no reply in time")
    }

    pub async fn reply(&mut self) -> Reply {
        self.next().await.expect("connection closed")
    }

    pub async fn assert_closed(&mut self) {
        if let Some(r) = self.next().await {
            panic!("expected EOF, got {r:?}");
        }
    }
}
