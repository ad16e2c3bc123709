//! TLS on the listeners: the protocol over TLS 1.3 and 1.2 (framed and line listeners), a
//! plaintext client and an untrusted certificate refused, a handshake that never ends closed
//! at the login deadline, the certificate reloaded while sessions go on (library API and
//! SIGHUP to the real binary), a bad key file at start, and the warning for a public address
//! without TLS.
//!
//! Certificates are self-signed for `localhost`, made with `rcgen` in each test; the client
//! side is tokio-rustls with a root store holding them. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use simpletextim_proto::{
    ChatMessage, ClientCodec, Command, ErrorCode, MessageText, Password, Recipient, Reply,
};
use simpletextim_server::{Config, Framing, Tls};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use common::{WAIT, chat_like, uid};

const BIN: &str = env!("CARGO_BIN_EXE_simpletextim-server");

/// A certificate and its key, as PEM and DER.
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

/// A self-signed pair for `localhost`, its subject unique among the test's pairs (so a
/// root store holding several finds the right one).
fn pair() -> Pair {
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let name = format!(
        "simpletextim test {}",
        SERIAL.fetch_add(1, Ordering::Relaxed)
    );
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key_pair).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key_pair.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Writes `pair` as `cert.pem` and `key.pem` in `dir` (replacing them).
fn write_pair(dir: &Path, pair: &Pair) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    (cert, key)
}

/// A server [`Tls`] presenting `pair`, from files in `dir`.
fn server_tls(dir: &Path, pair: &Pair) -> Tls {
    let (cert, key) = write_pair(dir, pair);
    Tls::from_pem_files(&cert, &key).unwrap()
}

/// The test config (cheap hashing, no rate limit) over TLS.
fn tls_config(tls: Tls) -> Config {
    Config {
        tls: Some(tls),
        ..common::config()
    }
}

/// A client trusting exactly `roots`, with the given protocol versions, that never resumes
/// a session.
fn connector_with(
    roots: &[&CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    // Every connection a full handshake: a resumed session shows no certificate (the
    // client reports the one of the session it resumed).
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// A TLS 1.2/1.3 client trusting exactly `roots`.
fn connector(roots: &[&CertificateDer<'static>]) -> TlsConnector {
    connector_with(roots, rustls::DEFAULT_VERSIONS)
}

/// Connects to `addr` and completes the handshake for `localhost`.
async fn tls_connect(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    tokio::time::timeout(WAIT, async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await
    })
    .await
    .expect("TLS connect timed out")
}

/// The certificate the server presented.
fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A protocol client over TLS (length-delimited frames).
struct TlsClient {
    framed: Framed<TlsStream<TcpStream>, ClientCodec>,
}

impl TlsClient {
    async fn connect(addr: SocketAddr, connector: &TlsConnector) -> TlsClient {
        let stream = tls_connect(addr, connector).await.unwrap();
        TlsClient {
            framed: Framed::new(stream, ClientCodec::new()),
        }
    }

    fn certificate(&self) -> CertificateDer<'static> {
        presented(self.framed.get_ref())
    }

    async fn send(&mut self, command: Command) {
        tokio::time::timeout(WAIT, self.framed.send(&command))
            .await
            .expect("send timed out")
            .unwrap();
    }

    async fn next(&mut self) -> Reply {
        tokio::time::timeout(WAIT, self.framed.next())
            .await
            .expect("no reply in time")
            .expect("connection closed")
            .unwrap()
    }

    /// The next reply, which must be one chat message.
    async fn chat(&mut self) -> ChatMessage {
        match self.next().await {
            Reply::Message { mut messages, .. } if messages.len() == 1 => messages.remove(0),
            other => panic!("expected one message, got {other:?}"),
        }
    }

    /// Logs in as `user` (password `pw-USER`); the ack must carry no pending message.
    async fn login(&mut self, user: &str) {
        let password = Password::new(&format!("pw-{user}")).unwrap();
        self.send(Command::login(uid(user), password)).await;
        assert_eq!(
            self.next().await,
            Reply::Message {
                r#ref: None,
                messages: vec![]
            }
        );
    }

    async fn say(&mut self, to: Recipient, text: &str) {
        self.send(Command::send(to, MessageText::new(text).unwrap()))
            .await;
    }
}

/// Reads until EOF (or a reset), bounded; returns what came and how long it took.
async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server did not close the connection");
    (got, start.elapsed())
}

#[tokio::test]
async fn login_messages_and_list_over_tls_get_the_exact_replies() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pair();
    let server = common::start_with(tls_config(server_tls(dir.path(), &cert))).await;
    let tls = connector(&[&cert.der]);

    let mut alice = TlsClient::connect(server.addr, &tls).await;
    assert_eq!(alice.certificate(), cert.der);
    alice.login("alice").await;
    let mut bob = TlsClient::connect(server.addr, &tls).await;
    bob.login("bob").await;
    assert_eq!(
        alice.next().await,
        Reply::Joined {
            user_id: uid("bob")
        }
    );

    alice.say(Recipient::Everyone, "hello over TLS").await;
    let echo = alice.chat().await;
    assert_eq!(
        echo,
        chat_like(&echo, "alice", "hello over TLS", Recipient::Everyone)
    );
    assert_eq!(bob.chat().await, echo);

    bob.say(Recipient::User(uid("alice")), "just you").await;
    let got = alice.chat().await;
    assert_eq!(
        got,
        chat_like(&got, "bob", "just you", Recipient::User(uid("alice")))
    );
    assert_eq!(bob.chat().await, got);
    assert!(got.id > echo.id);

    alice.send(Command::List).await;
    assert_eq!(
        alice.next().await,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice"), uid("bob")]
        }
    );
    // A command error is answered in the TLS stream like any reply.
    bob.say(Recipient::User(uid("nobody")), "hello?").await;
    assert_eq!(
        bob.next().await,
        common::fail(ErrorCode::NotFound, "no such user: nobody")
    );
    alice.send(Command::Exit).await;
    assert!(
        tokio::time::timeout(WAIT, alice.framed.next())
            .await
            .expect("no close in time")
            .is_none(),
        "exit closes the TLS stream"
    );
    assert_eq!(
        bob.next().await,
        Reply::Left {
            user_id: uid("alice")
        }
    );
    server.shutdown.cancel();
}

#[tokio::test]
async fn tls_1_2_works_and_many_messages_cross_several_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pair();
    let server = common::start_with(tls_config(server_tls(dir.path(), &cert))).await;
    let tls12 = connector_with(&[&cert.der], &[&rustls::version::TLS12]);
    let tls13 = connector(&[&cert.der]);

    let mut alice = TlsClient::connect(server.addr, &tls12).await;
    assert_eq!(
        alice.framed.get_ref().get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    alice.login("alice").await;
    let mut bob = TlsClient::connect(server.addr, &tls13).await;
    assert_eq!(
        bob.framed.get_ref().get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    bob.login("bob").await;
    assert_eq!(
        alice.next().await,
        Reply::Joined {
            user_id: uid("bob")
        }
    );

    // Far more than rustls may buffer for one connection: the rest waits in the session's
    // write buffer and goes out as the socket takes it.
    const N: usize = 400;
    let text = |i: usize| format!("{i:04} {}", "x".repeat(130));
    for i in 0..N {
        bob.say(Recipient::Everyone, &text(i)).await;
    }
    let mut seen = 0;
    let mut last_id = 0;
    while seen < N {
        match alice.next().await {
            Reply::Message { messages, .. } => {
                for m in messages {
                    assert_eq!(m, chat_like(&m, "bob", &text(seen), Recipient::Everyone));
                    assert!(m.id > last_id);
                    last_id = m.id;
                    seen += 1;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    server.shutdown.cancel();
}

#[tokio::test]
async fn a_plaintext_client_on_a_tls_port_gets_no_plaintext_and_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pair();
    let server = common::start_with(tls_config(server_tls(dir.path(), &cert))).await;

    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let login = br#"{"command":"login alice/pw"}"#;
    let mut frame = (login.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(login);
    raw.write_all(&frame).await.unwrap();
    let (got, _) = read_to_close(&mut raw).await;
    // At most a TLS alert record (content type 21), never a JSON reply.
    assert!(
        got.is_empty() || (got[0] == 21 && got.len() <= 7),
        "got {got:?}"
    );
    // Nobody logged in.
    let mut bob = TlsClient::connect(server.addr, &connector(&[&cert.der])).await;
    bob.login("bob").await;
    bob.send(Command::List).await;
    assert_eq!(
        bob.next().await,
        Reply::List {
            r#ref: None,
            list: vec![uid("bob")]
        }
    );
    server.shutdown.cancel();
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pair();
    let other = pair();
    let server = common::start_with(tls_config(server_tls(dir.path(), &cert))).await;

    let err = tls_connect(server.addr, &connector(&[&other.der]))
        .await
        .expect_err("an untrusted certificate must fail the handshake");
    let rustls_error = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {err:?}"));
    assert_eq!(
        *rustls_error,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
    server.shutdown.cancel();
}

#[tokio::test]
async fn the_line_listener_speaks_tls_too() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pair();
    let framed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lines = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (framed_addr, lines_addr) = (framed.local_addr().unwrap(), lines.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(simpletextim_server::run_listeners(
        vec![(framed, Framing::LengthDelimited), (lines, Framing::Lines)],
        tls_config(server_tls(dir.path(), &cert)),
        shutdown.clone(),
    ));
    let tls = connector(&[&cert.der]);

    let stream = tls_connect(lines_addr, &tls).await.unwrap();
    let (r, mut w) = tokio::io::split(stream);
    let mut r = AsyncBufReader::new(r);
    let mut line = String::new();
    let mut read_line = async |r: &mut AsyncBufReader<_>| {
        line.clear();
        tokio::time::timeout(WAIT, r.read_line(&mut line))
            .await
            .expect("no line in time")
            .unwrap();
        line.clone()
    };
    w.write_all(b"{\"command\":\"login alice/pw\"}\n")
        .await
        .unwrap();
    w.flush().await.unwrap();
    assert_eq!(
        read_line(&mut r).await,
        "{\"command\":\"message\",\"messages\":[]}\n"
    );
    // The framed TLS listener shares the hub.
    let mut bob = TlsClient::connect(framed_addr, &tls).await;
    bob.login("bob").await;
    assert_eq!(
        read_line(&mut r).await,
        "{\"command\":\"joined\",\"user_id\":\"bob\"}\n"
    );
    w.write_all(b"{\"command\":\"list\"}\n").await.unwrap();
    w.flush().await.unwrap();
    assert_eq!(
        read_line(&mut r).await,
        "{\"command\":\"list\",\"list\":[\"alice\",\"bob\"]}\n"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_handshake_that_never_ends_is_closed_at_the_login_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pair();
    let timeout = Duration::from_millis(300);
    let server = common::start_with(Config {
        login_timeout: timeout,
        ..tls_config(server_tls(dir.path(), &cert))
    })
    .await;

    // Half a ClientHello, then silence.
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut hello = rustls::ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut bytes = Vec::new();
    hello.write_tls(&mut bytes).unwrap();
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(&bytes[..bytes.len() / 2]).await.unwrap();
    let (_, took) = read_to_close(&mut raw).await;
    assert!(
        took >= timeout - Duration::from_millis(50),
        "closed after {took:?}"
    );

    // And one that sends nothing at all.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let (got, took) = read_to_close(&mut silent).await;
    assert!(
        took >= timeout - Duration::from_millis(50),
        "closed after {took:?}"
    );
    assert!(!got.windows(4).any(|w| w == b"fail"), "got {got:?}");
    server.shutdown.cancel();
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_connections_and_keeps_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (pair(), pair());
    let tls = server_tls(dir.path(), &old);
    let server = common::start_with(tls_config(tls.clone())).await;
    let both = connector(&[&old.der, &new.der]);

    let mut alice = TlsClient::connect(server.addr, &both).await;
    alice.login("alice").await;
    assert_eq!(alice.certificate(), old.der);

    // A broken pair changes nothing.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    assert!(matches!(
        tls.reload(),
        Err(simpletextim_server::TlsError::Key { .. })
    ));
    let probe = tls_connect(server.addr, &both).await.unwrap();
    assert_eq!(presented(&probe), old.der);

    write_pair(dir.path(), &new);
    tls.reload().unwrap();
    let mut bob = TlsClient::connect(server.addr, &both).await;
    assert_eq!(bob.certificate(), new.der);
    bob.login("bob").await;
    assert_eq!(
        alice.next().await,
        Reply::Joined {
            user_id: uid("bob")
        }
    );

    // The session from before the reload goes on.
    alice.say(Recipient::Everyone, "still here").await;
    let echo = alice.chat().await;
    assert_eq!(
        echo,
        chat_like(&echo, "alice", "still here", Recipient::Everyone)
    );
    assert_eq!(bob.chat().await, echo);
    server.shutdown.cancel();
}

/// A TLS client that stops reading is cut off as a slow consumer; the private messages to
/// it that rustls or the socket did not wholly deliver come again at its next login. Over
/// TLS the server counts a frame as written only once rustls holds none of its records, so
/// the login ack may repeat the last few messages read before the cut, never miss one.
#[tokio::test]
async fn private_messages_to_a_slow_tls_consumer_are_kept_for_its_next_login() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pair();
    let server = common::start_with(Config {
        outbox_capacity: 64,
        ..tls_config(server_tls(dir.path(), &cert))
    })
    .await;
    let tls = connector(&[&cert.der]);
    // A small receive buffer: the kernel soon stops taking the server's writes.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let stream = tokio::time::timeout(WAIT, tls.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    let mut slow = TlsClient {
        framed: Framed::new(stream, ClientCodec::new()),
    };
    slow.login("slow").await;
    let mut fast = TlsClient::connect(server.addr, &tls).await;
    fast.login("fast").await;

    let text = "y".repeat(140);
    let mut echoed: Vec<ChatMessage> = Vec::new();
    let mut slow_left = false;
    let mut after_left = 0;
    // Batches of 50 (below fast's own outbox of 64), each waiting for its echoes, until
    // slow was cut off and 100 more were sent; bounded by 100 000 messages.
    while after_left < 100 && echoed.len() < 100_000 {
        for _ in 0..50 {
            fast.say(Recipient::User(uid("slow")), &text).await;
        }
        let mut got = 0;
        while got < 50 {
            match fast.next().await {
                Reply::Message { messages, .. } => {
                    got += messages.len();
                    echoed.extend(messages);
                }
                Reply::Left { user_id } if user_id.as_str() == "slow" => slow_left = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        if slow_left {
            after_left += 50;
        }
    }
    assert!(
        slow_left,
        "slow was never cut off in {} messages",
        echoed.len()
    );

    // What reached slow, read to the end (the stream ends without close_notify: an error).
    let mut received: Vec<ChatMessage> = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(reply)) = slow.framed.next().await {
            match reply {
                Reply::Message { messages, .. } => received.extend(messages),
                Reply::Joined { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("slow consumer not closed");
    let k = received.len();
    assert!(k < echoed.len(), "slow got everything");
    assert_eq!(received, echoed[..k], "slow read a prefix, in order");

    let mut again = TlsClient::connect(server.addr, &tls).await;
    let password = Password::new("pw-slow").unwrap();
    again.send(Command::login(uid("slow"), password)).await;
    let Reply::Message {
        messages: pending, ..
    } = again.next().await
    else {
        panic!("no login ack");
    };
    // The rest of the messages, from at most a few already read: none missing.
    let j = echoed
        .iter()
        .position(|m| Some(m) == pending.first())
        .expect("the login ack holds the messages not read");
    assert!(j <= k, "a message between {k} and {j} was lost");
    assert_eq!(pending, echoed[j..]);
    server.shutdown.cancel();
}

// ---- the real binary ----

/// The server binary with its log lines, read by a thread into a channel.
struct Proc {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl Proc {
    fn start(data: &Path, args: &[&str]) -> Proc {
        let mut child = Process::new(BIN)
            .args(["--insecure-fast-hash", "--listen-http", "off", "--data"])
            .arg(data)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot spawn the server");
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, log }
    }

    /// The first log line from now that contains `text`.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {text:?}: {e}"),
            }
        }
    }

    /// The address of its `listening on` line.
    fn addr(&self) -> SocketAddr {
        let line = self.wait_for("listening on ");
        line.split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let ok = Process::new("kill").args([signal, &pid]).status().unwrap();
        assert!(ok.success(), "kill {signal} failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_binary_reloads_its_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (pair(), pair());
    let (cert, key) = write_pair(dir.path(), &old);
    let server = Proc::start(
        &dir.path().join("data"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let addr = server.addr();
    let both = connector(&[&old.der, &new.der]);
    let mut alice = TlsClient::connect(addr, &both).await;
    assert_eq!(alice.certificate(), old.der);
    alice.login("alice").await;

    write_pair(dir.path(), &new);
    server.signal("-HUP");
    server.wait_for("SIGHUP: TLS certificate reloaded");
    let mut bob = TlsClient::connect(addr, &both).await;
    assert_eq!(bob.certificate(), new.der);
    bob.login("bob").await;
    assert_eq!(
        alice.next().await,
        Reply::Joined {
            user_id: uid("bob")
        }
    );

    // A bad pair is logged and the current one kept; the process lives on.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    server.signal("-HUP");
    let line = server.wait_for("keeping the current certificate");
    assert!(line.contains("WARN"), "{line}");
    let probe = tls_connect(addr, &both).await.unwrap();
    assert_eq!(presented(&probe), new.der);
    alice.send(Command::List).await;
    assert_eq!(
        alice.next().await,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice"), uid("bob")]
        }
    );
}

#[test]
fn the_binary_refuses_a_bad_key_file_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &pair());
    std::fs::write(&key, "this is not a key\n").unwrap();
    let data = dir.path().join("data");
    let out = Process::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--listen-http",
            "off",
            "--tls-cert",
        ])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--data")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        format!(
            "simpletextim-server: cannot read the TLS key file {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)\n",
            key.display()
        )
    );
    assert!(!data.exists(), "nothing is created before the pair loads");

    // Half a pair is a usage error.
    let out = Process::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--listen-http",
            "off",
            "--tls-cert",
        ])
        .arg(&cert)
        .arg("--data")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("--tls-key <FILE>"),
        "clap names the missing option"
    );
}

#[test]
fn the_binary_warns_when_a_public_address_has_no_tls() {
    let dir = tempfile::tempdir().unwrap();
    let server = Proc::start(&dir.path().join("data"), &["--listen", "0.0.0.0:0"]);
    let line = server.wait_for("without TLS");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("passwords would cross the network in clear; use --tls-cert/--tls-key"),
        "{line}"
    );
}
