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

/// A socket that sends JSON text and reads each reply frame as the exact text it holds.
pub struct Wire {
    pub write: tokio::net::tcp::OwnedWriteHalf,
    pub read: tokio_util::codec::FramedRead<
        tokio::net::tcp::OwnedReadHalf,
        tokio_util::codec::LengthDelimitedCodec,
    >,
}

impl Wire {
    pub async fn connect(s: &TestServer) -> Wire {
        Wire::connect_to(s.addr).await
    }

    pub async fn connect_to(addr: SocketAddr) -> Wire {
        Wire::from_stream(TcpStream::connect(addr).await.unwrap())
    }

    /// Connects from `from`, a loopback address such as 127.0.0.2 (each address has its
    /// own few logins in progress).
    pub async fn connect_from(addr: SocketAddr, from: &str) -> Wire {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        Wire::from_stream(sock.connect(addr).await.unwrap())
    }

    pub fn from_stream(stream: TcpStream) -> Wire {
        let (r, w) = stream.into_split();
        let codec = tokio_util::codec::LengthDelimitedCodec::builder()
            .max_frame_length(16 << 20)
            .new_codec();
        Wire {
            write: w,
            read: tokio_util::codec::FramedRead::new(r, codec),
        }
    }

    /// Resets the connection (RST, not FIN): `SO_LINGER` 0, then close.
    pub fn reset(self) {
        let stream = self.write.reunite(self.read.into_inner()).unwrap();
        // Linger 0 never blocks the close: it discards what is unsent and resets.
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    }

    pub async fn send(&mut self, json: &str) {
        self.send_all(&[json]).await;
    }

    /// Sends several frames in one write.
    pub async fn send_all(&mut self, jsons: &[&str]) {
        let mut b = BytesMut::new();
        for json in jsons {
            b.put_u32(json.len() as u32);
            b.put_slice(json.as_bytes());
        }
        self.write.write_all(&b).await.unwrap();
    }

    /// The next frame, as text.
    pub async fn recv(&mut self) -> String {
        let frame = tokio::time::timeout(WAIT, self.read.next())
            .await
            .expect("no reply in time")
            .expect("connection closed")
            .unwrap();
        String::from_utf8(frame.to_vec()).unwrap()
    }

    /// The next frame that is not a presence notice (`joined`/`left`), as text.
    pub async fn recv_chat(&mut self) -> String {
        loop {
            let f = self.recv().await;
            if !f.starts_with(r#"{"command":"joined""#) && !f.starts_with(r#"{"command":"left""#) {
                return f;
            }
        }
    }

    /// Sends `json` and asserts the exact next frame.
    pub async fn expect(&mut self, json: &str, want: &str) {
        self.send(json).await;
        assert_eq!(self.recv().await, want, "in answer to {json}");
    }

    /// Sends `json` and asserts the exact reply, presence notices skipped.
    pub async fn expect_chat(&mut self, json: &str, want: &str) {
        self.send(json).await;
        assert_eq!(self.recv_chat().await, want, "in answer to {json}");
    }

    /// Logs `user` in (password `pw-of-USER`) without a ref and returns the login ack.
    pub async fn login_ack(s: &TestServer, user: &str) -> (Wire, String) {
        let mut w = Wire::connect(s).await;
        w.send(&format!(r#"{{"command":"login {user}/pw-of-{user}"}}"#))
            .await;
        let ack = w.recv().await;
        (w, ack)
    }

    /// Logs `user` in and checks the empty login ack.
    pub async fn login(s: &TestServer, user: &str) -> Wire {
        let (w, ack) = Wire::login_ack(s, user).await;
        assert_eq!(ack, r#"{"command":"message","messages":[]}"#);
        w
    }

    /// Asserts the server closes the connection, with no frame before.
    pub async fn expect_closed(&mut self) {
        let next = tokio::time::timeout(WAIT, self.read.next())
            .await
            .expect("not closed in time");
        assert!(
            matches!(next, None | Some(Err(_))),
            "expected the connection to close, got {next:?}"
        );
    }
}

/// A `fail` reply's exact JSON, with `r` (JSON) as its ref when given.
pub fn fail_json(r: Option<&str>, code: u16, reason: &str) -> String {
    let reason = serde_json::to_string(reason).unwrap();
    match r {
        Some(r) => format!(
            r#"{{"command":"fail","ref":{r},"fail":{{"error_code":{code},"reason":{reason}}}}}"#
        ),
        None => format!(r#"{{"command":"fail","fail":{{"error_code":{code},"reason":{reason}}}}}"#),
    }
}
