//! The HTTP listener: WebSocket sessions at `/ws` (every command and error with its exact
//! text, chat with a TCP user both ways, binary, oversized and fragmented messages, pings
//! both ways, the Origin rule, the slow consumer and per-address limits, `wss://`), the web
//! client's files with their headers, `/healthz` through a shutdown, and the binary's
//! `--listen-http`.
//!
//! The server runs with a framed listener and an HTTP listener on `127.0.0.1:0`; the
//! WebSocket client is tokio-tungstenite, and raw sockets speak HTTP or frames the client
//! would not send. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use simpletextim_proto::{Recipient, Reply};
use simpletextim_server::{Config, Framing, Tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
use tokio_tungstenite::{WebSocketStream, client_async};
use tokio_util::sync::CancellationToken;

use common::{TestServer, WAIT, config, fail_json, next, next_chat, uid};

const BIN: &str = env!("CARGO_BIN_EXE_simpletextim-server");

/// A server with a framed listener and an HTTP listener.
struct Server {
    s: TestServer,
    http: SocketAddr,
}

async fn start_with(config: Config) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let framed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, http_addr) = (framed.local_addr().unwrap(), http.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let store = config.store.clone();
    let handle = tokio::spawn(simpletextim_server::run_listeners(
        vec![
            (framed, Framing::LengthDelimited),
            (http, Framing::WebSocket),
        ],
        config,
        shutdown.clone(),
    ));
    Server {
        s: TestServer {
            addr,
            shutdown,
            handle,
            store,
        },
        http: http_addr,
    }
}

async fn start() -> Server {
    start_with(config()).await
}

type Ws = WebSocketStream<TcpStream>;

/// The `/ws` request for `addr`, with `origin` if given.
fn ws_request(addr: SocketAddr, origin: Option<&str>) -> tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(origin) = origin {
        req.headers_mut().insert("origin", origin.parse().unwrap());
    }
    req
}

/// Opens a WebSocket session from `stream`.
async fn ws_on(stream: TcpStream, addr: SocketAddr, origin: Option<&str>) -> Ws {
    let (ws, response) = tokio::time::timeout(WAIT, client_async(ws_request(addr, origin), stream))
        .await
        .expect("no upgrade in time")
        .unwrap();
    assert_eq!(response.status(), 101);
    ws
}

async fn ws_connect(s: &Server) -> Ws {
    ws_on(TcpStream::connect(s.http).await.unwrap(), s.http, None).await
}

/// The HTTP status (and body) of an upgrade the server refused.
async fn ws_refused(stream: TcpStream, addr: SocketAddr, origin: Option<&str>) -> (u16, String) {
    match tokio::time::timeout(WAIT, client_async(ws_request(addr, origin), stream))
        .await
        .expect("no answer in time")
    {
        Err(tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8(response.body().clone().unwrap_or_default()).unwrap(),
        ),
        Ok(_) => panic!("the upgrade was accepted"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

async fn send(ws: &mut Ws, json: &str) {
    ws.send(Message::text(json)).await.unwrap();
}

/// The next message, pings and pongs included.
async fn recv_any<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no message in time")
        .expect("connection closed")
        .unwrap()
}

/// The next text message, exactly.
async fn recv(ws: &mut Ws) -> String {
    match recv_any(ws).await {
        Message::Text(t) => t.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The next text message that is not a presence notice.
async fn recv_chat(ws: &mut Ws) -> String {
    loop {
        let t = recv(ws).await;
        if !t.starts_with(r#"{"command":"joined""#) && !t.starts_with(r#"{"command":"left""#) {
            return t;
        }
    }
}

async fn expect(ws: &mut Ws, json: &str, want: &str) {
    send(ws, json).await;
    assert_eq!(recv(ws).await, want, "in answer to {json}");
}

/// Asserts the next message is a close with `code` and `reason`, then the end.
async fn expect_close(ws: &mut Ws, code: u16, reason: &str) {
    match recv_any(ws).await {
        Message::Close(Some(CloseFrame { code: c, reason: r })) => {
            assert_eq!((u16::from(c), r.as_str()), (code, reason));
        }
        other => panic!("expected a close {code}, got {other:?}"),
    }
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("not closed in time");
    assert!(
        matches!(end, None | Some(Err(_))),
        "expected the end, got {end:?}"
    );
}

async fn ws_login(s: &Server, user: &str) -> Ws {
    let mut ws = ws_connect(s).await;
    expect(
        &mut ws,
        &format!(r#"{{"command":"login {user}/pw-of-{user}"}}"#),
        r#"{"command":"message","messages":[]}"#,
    )
    .await;
    ws
}

/// The id and ts of the one message of a `message` frame.
fn id_ts(frame: &str) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap();
    let m = &v["messages"][0];
    (m["id"].as_u64().unwrap(), m["ts"].as_u64().unwrap())
}

/// A one-message `message` frame, with the id and ts of `frame` and `r` (JSON) as its ref.
fn chat_json(r: Option<&str>, from: &str, text: &str, to: &str, frame: &str) -> String {
    let (id, ts) = id_ts(frame);
    let r = r.map(|r| format!(r#""ref":{r},"#)).unwrap_or_default();
    format!(
        r#"{{"command":"message","messages":[{{{r}"user_id":"{from}","message":"{text}","to":"{to}","id":{id},"ts":{ts}}}]}}"#
    )
}

#[tokio::test]
async fn every_command_and_error_over_a_websocket() {
    let s = start().await;
    let mut ws = ws_connect(&s).await;
    // Before login.
    expect(
        &mut ws,
        r#"{"command":"list"}"#,
        &fail_json(None, 401, "login required"),
    )
    .await;
    expect(
        &mut ws,
        r#"{"command":"send","message":"hi","ref":"r0"}"#,
        &fail_json(Some(r#""r0""#), 401, "login required"),
    )
    .await;
    let reason = simpletextim_proto::Command::from_json(b"not json")
        .unwrap_err()
        .reason;
    expect(&mut ws, "not json", &fail_json(None, 400, &reason)).await;
    // Login, with a ref.
    expect(
        &mut ws,
        r#"{"command":"login","user_id":"alice","password":"pw-of-alice","ref":1}"#,
        r#"{"command":"message","ref":1,"messages":[]}"#,
    )
    .await;
    // Public: the echo carries the ref.
    send(
        &mut ws,
        r#"{"command":"send","message":"hello","ref":"s1"}"#,
    )
    .await;
    let echo = recv(&mut ws).await;
    assert_eq!(
        echo,
        chat_json(Some(r#""s1""#), "alice", "hello", "*", &echo)
    );
    let (public_id, _) = id_ts(&echo);
    // Private to oneself.
    send(
        &mut ws,
        r#"{"command":"send","message":"note","to":"alice"}"#,
    )
    .await;
    let private = recv(&mut ws).await;
    assert_eq!(private, chat_json(None, "alice", "note", "alice", &private));
    expect(
        &mut ws,
        r#"{"command":"list","ref":7}"#,
        r#"{"command":"list","ref":7,"list":["alice"]}"#,
    )
    .await;
    // History of the public conversation.
    send(&mut ws, r#"{"command":"history","with":"*"}"#).await;
    let (_, ts) = id_ts(&echo);
    assert_eq!(
        recv(&mut ws).await,
        format!(
            r#"{{"command":"history","with":"*","messages":[{{"user_id":"alice","message":"hello","to":"*","id":{public_id},"ts":{ts}}}],"more":false}}"#
        )
    );
    // Errors that leave the session open.
    expect(
        &mut ws,
        r#"{"command":"send","message":"hi","to":"carol"}"#,
        &fail_json(None, 404, "no such user: carol"),
    )
    .await;
    let long = "x".repeat(141);
    let json = format!(r#"{{"command":"send","message":"{long}"}}"#);
    let reason = simpletextim_proto::Command::from_json(json.as_bytes())
        .unwrap_err()
        .reason;
    expect(&mut ws, &json, &fail_json(None, 413, &reason)).await;
    expect(
        &mut ws,
        r#"{"command":"ack","id":5}"#,
        &fail_json(None, 400, r#"ack needs a login with "acks": true"#),
    )
    .await;
    expect(
        &mut ws,
        r#"{"command":"login bob/pw"}"#,
        &fail_json(None, 409, "already logged in as alice"),
    )
    .await;
    // Exit: a close 1000 after what was queued.
    send(&mut ws, r#"{"command":"exit"}"#).await;
    expect_close(&mut ws, 1000, "bye").await;
}

#[tokio::test]
async fn acknowledged_delivery_over_a_websocket() {
    let s = start().await;
    let mut alice = ws_login(&s, "alice").await;
    // bob has an account, and is offline.
    let mut bob = ws_login(&s, "bob").await;
    send(&mut bob, r#"{"command":"exit"}"#).await;
    expect_close(&mut bob, 1000, "bye").await;
    send(
        &mut alice,
        r#"{"command":"send","message":"for bob","to":"bob"}"#,
    )
    .await;
    let echo = recv_chat(&mut alice).await;
    assert_eq!(echo, chat_json(None, "alice", "for bob", "bob", &echo));
    let (id, _) = id_ts(&echo);
    // Not acked: it comes again with the next login.
    for _ in 0..2 {
        let mut bob = ws_connect(&s).await;
        send(&mut bob, r#"{"command":"login bob/pw-of-bob","acks":true}"#).await;
        assert_eq!(recv(&mut bob).await, echo);
        drop(bob);
    }
    let mut bob = ws_connect(&s).await;
    send(&mut bob, r#"{"command":"login bob/pw-of-bob","acks":true}"#).await;
    assert_eq!(recv(&mut bob).await, echo);
    send(&mut bob, &format!(r#"{{"command":"ack","id":{id}}}"#)).await;
    // The ack is done before the next command is read: list proves it.
    expect(
        &mut bob,
        r#"{"command":"list"}"#,
        r#"{"command":"list","list":["alice","bob"]}"#,
    )
    .await;
    send(&mut bob, r#"{"command":"exit"}"#).await;
    expect_close(&mut bob, 1000, "bye").await;
    let _ = ws_login(&s, "bob").await;
}

#[tokio::test]
async fn a_tcp_user_and_a_websocket_user_chat_both_ways() {
    let s = start().await;
    let mut web = ws_login(&s, "web").await;
    let (mut tcp, pending) = common::login(&s.s, "tcp").await;
    assert_eq!(pending, vec![]);
    assert_eq!(
        recv(&mut web).await,
        r#"{"command":"joined","user_id":"tcp"}"#
    );
    // TCP → everyone.
    tcp.send_public("from tcp").await.unwrap();
    let m = next_chat(&mut tcp).await;
    let frame = recv(&mut web).await;
    assert_eq!(frame, chat_json(None, "tcp", "from tcp", "*", &frame));
    assert_eq!(id_ts(&frame), (m.id, m.ts));
    // WebSocket → everyone.
    send(&mut web, r#"{"command":"send","message":"from web"}"#).await;
    let frame = recv(&mut web).await;
    assert_eq!(frame, chat_json(None, "web", "from web", "*", &frame));
    let m = next_chat(&mut tcp).await;
    assert_eq!(
        m,
        common::chat_like(&m, "web", "from web", Recipient::Everyone)
    );
    assert_eq!(id_ts(&frame), (m.id, m.ts));
    // Private, both ways.
    tcp.send_private("web", "psst web").await.unwrap();
    let m = next_chat(&mut tcp).await;
    let frame = recv(&mut web).await;
    assert_eq!(frame, chat_json(None, "tcp", "psst web", "web", &frame));
    assert_eq!(id_ts(&frame), (m.id, m.ts));
    send(
        &mut web,
        r#"{"command":"send","message":"psst tcp","to":"tcp"}"#,
    )
    .await;
    let echo = recv(&mut web).await;
    assert_eq!(echo, chat_json(None, "web", "psst tcp", "tcp", &echo));
    let m = next_chat(&mut tcp).await;
    assert_eq!(
        m,
        common::chat_like(&m, "web", "psst tcp", Recipient::User(uid("tcp")))
    );
    // The WebSocket user leaves: the TCP user hears it.
    drop(web);
    assert_eq!(
        next(&mut tcp).await,
        Reply::Left {
            user_id: uid("web")
        }
    );
}

#[tokio::test]
async fn a_binary_message_is_a_400_and_the_session_goes_on() {
    let s = start().await;
    let mut ws = ws_login(&s, "alice").await;
    ws.send(Message::binary(&b"{\"command\":\"list\"}"[..]))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut ws).await,
        fail_json(
            None,
            400,
            "binary messages are not supported: send each JSON object as a text message"
        )
    );
    expect(
        &mut ws,
        r#"{"command":"list"}"#,
        r#"{"command":"list","list":["alice"]}"#,
    )
    .await;
}

#[tokio::test]
async fn a_message_over_the_limit_is_a_413_then_close_1009() {
    let s = start_with(Config {
        max_command_frame: 256,
        ..config()
    })
    .await;
    let mut ws = ws_login(&s, "alice").await;
    let json = format!(r#"{{"command":"send","message":"{}"}}"#, "x".repeat(240));
    send(&mut ws, &json).await;
    assert_eq!(
        recv(&mut ws).await,
        fail_json(None, 413, "frame over the size limit of 256 bytes")
    );
    expect_close(&mut ws, 1009, "message over the size limit").await;
}

#[tokio::test]
async fn a_fragmented_message_is_joined() {
    let s = start().await;
    let mut ws = ws_login(&s, "alice").await;
    let json = br#"{"command":"list","ref":"fragments"}"#;
    ws.send(Message::Frame(Frame::message(
        &json[..10],
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    // A ping between the fragments is answered at once.
    ws.send(Message::Ping(b"mid"[..].into())).await.unwrap();
    ws.send(Message::Frame(Frame::message(
        &json[10..20],
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        &json[20..],
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(recv_any(&mut ws).await, Message::Pong(b"mid"[..].into()));
    assert_eq!(
        recv(&mut ws).await,
        r#"{"command":"list","ref":"fragments","list":["alice"]}"#
    );
}

#[tokio::test]
async fn a_ping_is_answered_with_a_pong_before_login_too() {
    let s = start().await;
    let mut ws = ws_connect(&s).await;
    ws.send(Message::Ping(b"are you there"[..].into()))
        .await
        .unwrap();
    assert_eq!(
        recv_any(&mut ws).await,
        Message::Pong(b"are you there"[..].into())
    );
}

/// A raw WebSocket: the handshake by hand, then frames as bytes.
struct RawWs {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawWs {
    async fn connect(addr: SocketAddr) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = RawWs {
            stream,
            buf: BytesMut::new(),
        };
        let head = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return raw.buf.split_to(end + 4);
                }
                assert!(
                    raw.stream.read_buf(&mut raw.buf).await.unwrap() > 0,
                    "EOF in the head"
                );
            }
        })
        .await
        .expect("no answer in time");
        let head = String::from_utf8(head.to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
            "{head}"
        );
        raw
    }

    /// Sends a client frame: `first` is FIN, RSV and the opcode; masked unless `mask` is
    /// `None`.
    async fn frame(&mut self, first: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
        let mut out = vec![first];
        assert!(payload.len() < 126);
        out.push(payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 });
        match mask {
            Some(m) => {
                out.extend_from_slice(&m);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next server frame: its header and payload; `None` at EOF.
    async fn next(&mut self) -> Option<(FrameHeader, Vec<u8>)> {
        tokio::time::timeout(WAIT, async {
            loop {
                let mut cursor = std::io::Cursor::new(&self.buf[..]);
                if let Some((header, len)) = FrameHeader::parse(&mut cursor).unwrap() {
                    let start = cursor.position() as usize;
                    if self.buf.len() >= start + len as usize {
                        let frame = self.buf.split_to(start + len as usize);
                        return Some((header, frame[start..].to_vec()));
                    }
                }
                if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("no frame in time")
    }

    /// The next frame must be a close with `code` and `reason`, then EOF.
    async fn expect_close(&mut self, code: u16, reason: &str) {
        let (header, payload) = self.next().await.expect("closed without a close frame");
        assert_eq!(
            header.opcode,
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Close)
        );
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
        assert_eq!(std::str::from_utf8(&payload[2..]).unwrap(), reason);
        assert!(self.next().await.is_none(), "expected EOF after the close");
    }
}

#[tokio::test]
async fn frames_the_protocol_forbids_end_the_session_with_close_1002() {
    let s = start().await;
    let cases: [(u8, Option<[u8; 4]>, &str); 3] = [
        (0x81, None, "client frames must be masked"),
        (0x83, Some([1, 2, 3, 4]), "reserved opcode"),
        (
            0x80,
            Some([1, 2, 3, 4]),
            "continuation frame outside a message",
        ),
    ];
    for (first, mask, why) in cases {
        let mut raw = RawWs::connect(s.http).await;
        raw.frame(first, mask, br#"{"command":"list"}"#).await;
        raw.expect_close(1002, why).await;
    }
    // Several frames in one write, right after the handshake, are all read.
    let mut raw = RawWs::connect(s.http).await;
    let mut both = Vec::new();
    for json in [&br#"{"command":"list"}"#[..], br#"{"command":"exit"}"#] {
        both.push(0x81);
        both.push(0x80 | json.len() as u8);
        both.extend_from_slice(&[0; 4]);
        both.extend_from_slice(json);
    }
    raw.stream.write_all(&both).await.unwrap();
    let (_, payload) = raw.next().await.unwrap();
    assert_eq!(payload, fail_json(None, 401, "login required").as_bytes());
    raw.expect_close(1000, "bye").await;
}

#[tokio::test]
async fn the_client_s_close_is_answered_and_the_others_hear_left() {
    let s = start().await;
    let (mut tcp, _) = common::login(&s.s, "tcp").await;
    let mut ws = ws_login(&s, "web").await;
    assert_eq!(
        next(&mut tcp).await,
        Reply::Joined {
            user_id: uid("web")
        }
    );
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "tab closed".into(),
    }))
    .await
    .unwrap();
    // The server echoes the status code.
    match recv_any(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(
        next(&mut tcp).await,
        Reply::Left {
            user_id: uid("web")
        }
    );
}

#[tokio::test]
async fn the_server_pings_a_quiet_client_and_ends_one_that_never_answers() {
    let s = start_with(Config {
        websocket_ping_interval: Duration::from_millis(300),
        ..config()
    })
    .await;
    // A client that answers pings (tungstenite does, while it reads) stays: it reads for
    // a few ping intervals.
    let mut alive = ws_login(&s, "alive").await;
    let reading = tokio::spawn(async move {
        let started = Instant::now();
        let mut pings = 0;
        while started.elapsed() < Duration::from_millis(1500) {
            match tokio::time::timeout(Duration::from_millis(100), alive.next()).await {
                Ok(Some(Ok(Message::Ping(p)))) => {
                    assert!(p.is_empty());
                    pings += 1;
                }
                Err(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        (alive, pings)
    });
    // A raw one that never answers is pinged, then closed.
    let mut silent = RawWs::connect(s.http).await;
    let (header, payload) = silent.next().await.unwrap();
    assert_eq!(
        header.opcode,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping)
    );
    assert!(payload.is_empty());
    silent.expect_close(1001, "no answer to ping").await;
    let (mut alive, pings) = reading.await.unwrap();
    assert!(pings >= 2, "the quiet client was pinged {pings} times");
    // Still logged in. Pings keep coming every 300 ms: the answer is the next text message.
    send(&mut alive, r#"{"command":"list"}"#).await;
    let answer = loop {
        match recv_any(&mut alive).await {
            Message::Ping(_) => {}
            Message::Text(t) => break t.as_str().to_owned(),
            other => panic!("expected the list, got {other:?}"),
        }
    };
    assert_eq!(answer, r#"{"command":"list","list":["alive"]}"#);
}

#[tokio::test]
async fn origins_other_than_the_server_s_own_and_the_allowed_ones_are_refused() {
    let s = start_with(Config {
        allowed_origins: vec!["https://chat.example.org".to_owned()],
        ..config()
    })
    .await;
    let connect = || async { TcpStream::connect(s.http).await.unwrap() };
    assert_eq!(
        ws_refused(connect().await, s.http, Some("http://evil.example")).await,
        (403, "origin not allowed\n".to_owned())
    );
    assert_eq!(
        ws_refused(connect().await, s.http, Some("null")).await.0,
        403
    );
    let own = format!("http://{}", s.http);
    for origin in [own.as_str(), "https://chat.example.org"] {
        let mut ws = ws_on(connect().await, s.http, Some(origin)).await;
        expect(
            &mut ws,
            r#"{"command":"list"}"#,
            &fail_json(None, 401, "login required"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_consumer_is_cut_off_and_the_others_hear_left() {
    let s = start_with(Config {
        outbox_capacity: 64,
        ..config()
    })
    .await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(s.http).await.unwrap();
    let mut slow = ws_on(stream, s.http, None).await;
    expect(
        &mut slow,
        r#"{"command":"login slow/pw-of-slow"}"#,
        r#"{"command":"message","messages":[]}"#,
    )
    .await;
    let (fast, _) = common::login(&s.s, "fast").await;
    let (mut tx, rx) = fast.into_split();
    let reader = tokio::spawn(async move {
        let mut rx = rx;
        // Read until `left slow`, bounded in time.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, rx.next()).await {
                Err(_) => return Err("no left in time".to_owned()),
                Ok(Some(Ok(Reply::Left { user_id }))) if user_id.as_str() == "slow" => {
                    return Ok(());
                }
                Ok(Some(Ok(Reply::Message { .. }))) => {}
                other => return Err(format!("unexpected {other:?}")),
            }
        }
    });
    // Flood until the reader has seen `left` (or a bound: 200 000 messages).
    let text = "x".repeat(140);
    let mut sent = 0usize;
    while !reader.is_finished() && sent < 200_000 {
        for _ in 0..100 {
            tx.feed(&simpletextim_proto::Command::send(
                Recipient::Everyone,
                text.parse().unwrap(),
            ))
            .await
            .unwrap();
        }
        tx.flush().await.unwrap();
        sent += 100;
        tokio::task::yield_now().await;
    }
    reader.await.unwrap().unwrap();
    // The slow client's connection ends (a close 1008 if it did not stop mid-frame).
    let drained = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = slow.next().await {
            if let Message::Close(Some(f)) = m {
                assert_eq!(f.code, CloseCode::Policy);
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the slow client was not closed");
}

#[tokio::test]
async fn the_per_address_connection_limit_counts_websockets() {
    let s = start_with(Config {
        address_limits: simpletextim_server::AddressLimits {
            connections: 1,
            ..simpletextim_server::AddressLimits::UNLIMITED
        },
        ..config()
    })
    .await;
    let from = |host: &'static str, to: SocketAddr| async move {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(host.parse().unwrap(), 0))
            .unwrap();
        sock.connect(to).await.unwrap()
    };
    let mut first = ws_on(from("127.0.0.2", s.http).await, s.http, None).await;
    let reason = "too many connections from your address (at most 1), close one and try again";
    assert_eq!(
        ws_refused(from("127.0.0.2", s.http).await, s.http, None).await,
        (503, format!("{reason}\n"))
    );
    // A TCP connection from the same address is refused too.
    let mut tcp = common::Wire::from_stream(from("127.0.0.2", s.s.addr).await);
    assert_eq!(tcp.recv().await, fail_json(None, 503, reason));
    // Another address is not.
    let mut other = ws_on(from("127.0.0.3", s.http).await, s.http, None).await;
    expect(
        &mut other,
        r#"{"command":"list"}"#,
        &fail_json(None, 401, "login required"),
    )
    .await;
    expect(
        &mut first,
        r#"{"command":"list"}"#,
        &fail_json(None, 401, "login required"),
    )
    .await;
}

/// A raw HTTP/1.1 request on a new connection (closed after it): the status line, the
/// headers (names in lower case) and the body.
async fn http(addr: SocketAddr, request: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    http_on(&mut stream, request).await
}

async fn http_on(
    stream: &mut TcpStream,
    request: &str,
) -> (String, Vec<(String, String)>, Vec<u8>) {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 {
                break;
            }
            // A whole response with a Content-Length is enough (keep-alive).
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                if let Some(len) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|l| l.trim().parse::<usize>().ok())
                    && buf.len() >= end + 4 + len
                {
                    break;
                }
            }
        }
    })
    .await
    .expect("no response in time");
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no head");
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    (status, headers, buf[end + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn the_web_client_s_files_with_their_types_and_headers() {
    let s = start().await;
    let files: [(&str, &str, &[u8]); 3] = [
        (
            "/",
            "text/html; charset=utf-8",
            include_bytes!("../web/index.html"),
        ),
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../web/app.js"),
        ),
        (
            "/style.css",
            "text/css; charset=utf-8",
            include_bytes!("../web/style.css"),
        ),
    ];
    for (path, content_type, body) in files {
        let (status, headers, got) = http(s.http, &get(path)).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
        assert_eq!(got, body, "{path}");
        assert_eq!(header(&headers, "content-type"), Some(content_type));
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
        assert_eq!(
            header(&headers, "content-security-policy"),
            Some(simpletextim_server::CONTENT_SECURITY_POLICY)
        );
    }
    let csp = simpletextim_server::CONTENT_SECURITY_POLICY;
    assert!(csp.contains("script-src 'self';") && csp.contains("connect-src 'self';"));
    assert!(!csp.contains("unsafe-inline"));
    // Anything else: 404; a known path with another method: 405.
    let (status, _, body) = http(s.http, &get("/nothing-here")).await;
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 404 Not Found", &b"not found\n"[..])
    );
    let (status, _, _) = http(
        s.http,
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    // GET /ws without the upgrade headers.
    let (status, _, _) = http(s.http, &get("/ws")).await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_200_then_503_while_shutting_down() {
    let s = start().await;
    let (status, _, body) = http(s.http, &get("/healthz")).await;
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 200 OK", &b"ok\n"[..])
    );
    // A session that takes its time to close holds the shutdown open: it never reads, and
    // its replies fill the socket, so its goodbye waits (2 s at most).
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(s.s.addr).await.unwrap();
    let (_read, mut write) = stream.into_split();
    let (progress_tx, mut progress) = tokio::sync::mpsc::channel(64);
    let flood = tokio::spawn(async move {
        let mut frame = Vec::new();
        for _ in 0..1000 {
            frame.extend_from_slice(&2u32.to_be_bytes());
            frame.extend_from_slice(b"{}");
        }
        for _ in 0..100 {
            if write.write_all(&frame).await.is_err() {
                break;
            }
            let _ = progress_tx.send(()).await;
        }
    });
    // 10 000 bad requests: 10 000 `fail 400` replies, far more than the sockets hold.
    for _ in 0..10 {
        tokio::time::timeout(WAIT, progress.recv())
            .await
            .unwrap()
            .unwrap();
    }
    // Time for the server to read some of them (a few kilobytes make its replies fill the
    // sockets).
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.s.shutdown.cancel();
    let (status, _, body) = http(s.http, &get("/healthz")).await;
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 503 Service Unavailable", &b"shutting down\n"[..])
    );
    // An upgrade is refused as well.
    assert_eq!(
        ws_refused(TcpStream::connect(s.http).await.unwrap(), s.http, None).await,
        (503, "server shutting down\n".to_owned())
    );
    flood.abort();
    tokio::time::timeout(WAIT, s.s.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

// ---- TLS ----

/// A self-signed certificate for `localhost` and the server's TLS settings presenting it.
fn self_signed(dir: &std::path::Path) -> (Tls, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        Tls::from_pem_files(&cert_path, &key_path).unwrap(),
        cert.der().clone(),
    )
}

#[tokio::test]
async fn wss_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, der) = self_signed(dir.path());
    let s = start_with(Config {
        tls: Some(tls),
        ..config()
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(s.http).await.unwrap();
    let stream = connector.connect(name.clone(), tcp).await.unwrap();
    let mut req = format!("wss://localhost:{}/ws", s.http.port())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "origin",
        format!("https://localhost:{}", s.http.port())
            .parse()
            .unwrap(),
    );
    let (mut ws, response) = tokio::time::timeout(WAIT, client_async(req, stream))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 101);
    // Login and command in one write each, right after the upgrade.
    ws.send(Message::text(r#"{"command":"login alice/pw-of-alice"}"#))
        .await
        .unwrap();

    assert_eq!(
        recv_any(&mut ws).await,
        Message::text(r#"{"command":"message","messages":[]}"#)
    );
    // A TCP user over TLS is not needed: a second wss user chats with the first.
    ws.send(Message::text(r#"{"command":"send","message":"over tls"}"#))
        .await
        .unwrap();
    let Message::Text(echo) = recv_any(&mut ws).await else {
        panic!("expected the echo");
    };
    assert_eq!(
        echo.as_str(),
        chat_json(None, "alice", "over tls", "*", echo.as_str())
    );
    // The static files too, over HTTPS.
    let tcp = TcpStream::connect(s.http).await.unwrap();
    let mut https = connector.connect(name, tcp).await.unwrap();
    https.write_all(get("/healthz").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, https.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
    ws.send(Message::text(r#"{"command":"exit"}"#))
        .await
        .unwrap();
    assert_eq!(
        recv_any(&mut ws).await,
        Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into()
        }))
    );
}

/// A TLS client trusting exactly `root`.
fn connector(root: rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(client))
}

#[tokio::test]
async fn wss_presents_the_certificate_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, old) = self_signed(dir.path());
    let s = start_with(Config {
        tls: Some(tls.clone()),
        ..config()
    })
    .await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let wss = |root| {
        let name = name.clone();
        async move {
            let tcp = TcpStream::connect(s.http).await.unwrap();
            let stream = connector(root).connect(name, tcp).await?;
            let req = format!("wss://localhost:{}/ws", s.http.port());
            let (ws, _) = client_async(req, stream).await.unwrap();
            Ok::<_, std::io::Error>(ws)
        }
    };
    let mut before = wss(old.clone()).await.unwrap();
    // New files, then the reload (what SIGHUP does in the binary).
    let (_, new) = self_signed(dir.path());
    tls.reload().unwrap();
    assert!(
        wss(old).await.is_err(),
        "the old certificate is still presented"
    );
    let mut after = wss(new).await.unwrap();
    // The session from before goes on with its own.
    for ws in [&mut before, &mut after] {
        ws.send(Message::text(r#"{"command":"list"}"#))
            .await
            .unwrap();
        assert_eq!(
            recv_any(ws).await,
            Message::text(
                r#"{"command":"fail","fail":{"error_code":401,"reason":"login required"}}"#
            )
        );
    }
}

#[tokio::test]
async fn http_connections_are_bounded_per_address_and_in_time() {
    let s = start_with(Config {
        http_connections_per_address: 1,
        http_header_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let from = |host: &'static str| async move {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(host.parse().unwrap(), 0))
            .unwrap();
        sock.connect(s.http).await.unwrap()
    };
    let closed = |mut stream: TcpStream| async move {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("not closed in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "expected the close, got {read:?}"
        );
    };
    // A keep-alive connection is served...
    let mut first = from("127.0.0.2").await;
    let (status, _, body) = http_on(
        &mut first,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 200 OK", &b"ok\n"[..])
    );
    // ...a second one from its address is closed at once, one from another address is not.
    closed(from("127.0.0.2").await).await;
    let (status, _, _) = http_on(&mut from("127.0.0.3").await, &get("/healthz")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    // The idle keep-alive connection is closed after the header timeout, and so is one
    // that sends half a request.
    closed(first).await;
    let mut slow = from("127.0.0.4").await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    closed(slow).await;
    // The address has its place back once its connection is gone.
    let mut served = false;
    for _ in 0..20 {
        let mut again = from("127.0.0.2").await;
        again.write_all(get("/healthz").as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(WAIT, again.read_to_end(&mut response)).await;
        if response.starts_with(b"HTTP/1.1 200 OK") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the address was not served again");
}

// ---- the binary ----

/// The binary with its log lines read by a thread.
struct Proc {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl Proc {
    fn start(data: &std::path::Path, args: &[&str]) -> Proc {
        let mut child = Process::new(BIN)
            .args(["--insecure-fast-hash", "--listen", "127.0.0.1:0", "--data"])
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

    /// The log lines up to the first with `text` (included).
    fn lines_until(&self, text: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(text);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(e) => panic!("no log line with {text:?}: {e}; got {lines:?}"),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_binary_serves_http_on_listen_http_and_not_with_off() {
    let dir = tempfile::tempdir().unwrap();
    let on = Proc::start(&dir.path().join("on"), &["--listen-http", "127.0.0.1:0"]);
    let lines = on.lines_until("listening on ");
    let http_line = lines
        .iter()
        .find(|l| l.contains("HTTP on "))
        .unwrap_or_else(|| panic!("no HTTP line in {lines:?}"));
    let addr: SocketAddr = http_line
        .split("HTTP on ")
        .nth(1)
        .unwrap()
        .split(':')
        .take(2)
        .collect::<Vec<_>>()
        .join(":")
        .parse()
        .unwrap();
    assert!(
        http_line.contains(&format!("the web client at http://{addr}/")),
        "{http_line}"
    );
    let (status, _, body) = http(addr, &get("/healthz")).await;
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 200 OK", &b"ok\n"[..])
    );
    let mut ws = ws_on(TcpStream::connect(addr).await.unwrap(), addr, None).await;
    expect(
        &mut ws,
        r#"{"command":"login alice/pw-of-alice"}"#,
        r#"{"command":"message","messages":[]}"#,
    )
    .await;

    let off = Proc::start(&dir.path().join("off"), &["--listen-http", "off"]);
    let lines = off.lines_until("listening on ");
    assert!(!lines.iter().any(|l| l.contains("HTTP on")), "{lines:?}");

    // On an address that is not loopback, without TLS: the framed listener's warning.
    let public = Proc::start(&dir.path().join("public"), &["--listen-http", "0.0.0.0:0"]);
    let lines = public.lines_until("without TLS");
    let warning = lines.last().unwrap();
    assert!(
        warning.contains("WARN")
            && warning.contains("listening on 0.0.0.0:")
            && warning.ends_with(
                "without TLS: passwords would cross the network in clear; use --tls-cert/--tls-key"
            ),
        "{warning}"
    );
}
