//! Connections: connect (optionally from a chosen loopback address), log in, and write
//! commands, over either [`Transport`]. Frames are read with a plain
//! [`LengthDelimitedCodec`] (TCP) or [`ws::TextDecoder`] (WebSocket), behind one
//! [`ReplyCodec`]: the payload bytes are handed to [`crate::scan`], never deserialized.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use simpletextim_proto::codec::DEFAULT_MAX_REPLY_FRAME;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{Decoder, FramedRead, LengthDelimitedCodec};

use crate::scan::{self, Kind};
use crate::workload::Rng;
use crate::ws;

/// The password of every load-generator account.
pub const PASSWORD: &str = "loadgen-pw";

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused a login.
    #[error("login of {user} refused: fail {code}")]
    LoginRefused {
        /// Who.
        user: String,
        /// The `error_code`.
        code: u16,
    },
    /// The server closed the connection or sent something unexpected.
    #[error("{0}")]
    Protocol(String),
    /// A phase did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// How the load generator talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Length-delimited JSON frames on the server's TCP listener (`--listen`).
    #[default]
    Tcp,
    /// JSON text messages on a WebSocket, `GET /ws` of the server's HTTP listener
    /// (`--listen-http`): the `--ws` option.
    WebSocket,
}

impl Transport {
    /// Its name in a report: `tcp` or `websocket`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
        }
    }
}

/// The decoder of the server's frames for a [`Transport`]: either yields each reply's JSON
/// object as the bytes of the read buffer it came in, for the same scanning.
#[derive(Debug)]
pub enum ReplyCodec {
    /// TCP: a 4-byte big-endian length, then the object.
    LengthDelimited(LengthDelimitedCodec),
    /// WebSocket: a text frame per object.
    WebSocket(ws::TextDecoder),
}

impl ReplyCodec {
    /// The decoder for `transport`, with the protocol's limit on a reply (16 MiB).
    pub fn new(transport: Transport) -> ReplyCodec {
        match transport {
            Transport::Tcp => ReplyCodec::LengthDelimited(
                LengthDelimitedCodec::builder()
                    .max_frame_length(DEFAULT_MAX_REPLY_FRAME)
                    .new_codec(),
            ),
            Transport::WebSocket => {
                ReplyCodec::WebSocket(ws::TextDecoder::new(DEFAULT_MAX_REPLY_FRAME))
            }
        }
    }
}

impl Decoder for ReplyCodec {
    type Item = BytesMut;
    type Error = io::Error;

    #[inline]
    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        match self {
            ReplyCodec::LengthDelimited(c) => c.decode(src),
            ReplyCodec::WebSocket(d) => d.decode(src),
        }
    }
}

/// Frames from the server, as raw payloads.
pub type Reader = FramedRead<OwnedReadHalf, ReplyCodec>;

/// Frames the commands of one connection for its [`Transport`]: a length prefix, or a
/// masked WebSocket text frame (with a new masking key per frame, drawn from a seeded
/// generator: see [`crate::ws`]). The command is written straight into the output buffer,
/// from its parts.
#[derive(Debug, Clone)]
pub struct Framer {
    transport: Transport,
    masks: Rng,
}

impl Framer {
    /// A framer for `transport`; `seed` seeds its masking keys.
    pub fn new(transport: Transport, seed: u64) -> Framer {
        Framer {
            transport,
            masks: Rng::new(seed ^ 0x6d61_736b),
        }
    }

    /// Appends one command whose JSON text is `parts` one after the other.
    #[inline]
    pub fn put(&mut self, parts: &[&[u8]], out: &mut BytesMut) {
        match self.transport {
            Transport::Tcp => {
                let len: usize = parts.iter().map(|p| p.len()).sum();
                let prefix = u32::try_from(len)
                    .expect("a command is far below the 4 GiB a length prefix can say");
                out.reserve(4 + len);
                out.put_u32(prefix);
                for p in parts {
                    out.put_slice(p);
                }
            }
            Transport::WebSocket => {
                let key = (self.masks.next_u64() as u32).to_ne_bytes();
                ws::put_text(parts, key, out);
            }
        }
    }

    /// Appends a `send` command. `text` must be plain ASCII without `"` or `\` (the load
    /// generator's marker and padding), `to` a user id or `*`.
    #[inline]
    pub fn send(&mut self, text: &[u8], to: &[u8], out: &mut BytesMut) {
        const HEAD: &[u8] = br#"{"command":"send","message":""#;
        const MID: &[u8] = br#"","to":""#;
        const TAIL: &[u8] = br#""}"#;
        self.put(&[HEAD, text, MID, to, TAIL], out);
    }

    /// Appends a `login` command (structured form).
    pub fn login(&mut self, user: &str, password: &str, out: &mut BytesMut) {
        let payload =
            serde_json::json!({"command": "login", "user_id": user, "password": password});
        self.put(&[payload.to_string().as_bytes()], out);
    }

    /// Appends a command without fields (`list`, `exit`).
    pub fn simple(&mut self, command: &str, out: &mut BytesMut) {
        self.put(&[br#"{"command":""#, command.as_bytes(), br#""}"#], out);
    }
}

/// A logged-in connection.
#[derive(Debug)]
pub struct Conn {
    /// Frames from the server.
    pub reader: Reader,
    /// Commands to the server.
    pub writer: OwnedWriteHalf,
    /// Messages in the login acknowledgement (the offline mailbox).
    pub pending: usize,
}

/// Where client sockets are bound before they connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// Let the kernel choose (the server's address family's loopback).
    Any,
    /// Connection `i` binds to `127.0.0.(first + (offset + i) / per_addr)`, so that many
    /// connections get past one source address's ephemeral ports.
    Spread {
        /// The last octet of the first address (2 for 127.0.0.2).
        first: u8,
        /// Connections per source address.
        per_addr: usize,
        /// Global number of connection 0 (when several processes share the plan).
        offset: usize,
    },
}

impl Bind {
    /// The source address of connection `i`, if bound.
    pub fn addr(self, i: usize) -> Option<IpAddr> {
        match self {
            Bind::Any => None,
            Bind::Spread {
                first,
                per_addr,
                offset,
            } => {
                let octet = usize::from(first) + (offset + i) / per_addr.max(1);
                let octet = u8::try_from(octet.min(254)).unwrap_or(254);
                Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)))
            }
        }
    }
}

/// Refuses any server address outside loopback: this tool sends load.
///
/// # Errors
/// When `addr` is not a loopback address.
pub fn check_loopback(addr: SocketAddr) -> Result<(), Error> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(Error::Protocol(format!(
            "{addr} is not a loopback address: the load generator only targets 127.0.0.0/8 or ::1"
        )))
    }
}

/// Connects to `server`, from `from` when given.
///
/// # Errors
/// When the socket cannot be created, bound or connected.
pub async fn connect(server: SocketAddr, from: Option<IpAddr>) -> Result<TcpStream, Error> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| Error::io("cannot create a socket", e))?;
    if let Some(ip) = from {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| Error::io(format!("cannot bind to {ip}"), e))?;
    }
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| Error::io(format!("cannot connect to {server}"), e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Error::io("cannot set TCP_NODELAY", e))?;
    Ok(stream)
}

/// The codec for server frames over TCP (up to 16 MiB, as the protocol allows).
pub fn reply_codec() -> ReplyCodec {
    ReplyCodec::new(Transport::Tcp)
}

/// Appends a `login` command frame (structured form) for TCP.
pub fn login_frame(user: &str, password: &str, out: &mut BytesMut) {
    Framer::new(Transport::Tcp, 0).login(user, password, out);
}

/// Appends a `send` command frame for TCP. `text` must be plain ASCII without `"` or `\`
/// (the load generator's marker and padding), `to` a user id or `*`.
pub fn send_frame(text: &[u8], to: &[u8], out: &mut BytesMut) {
    Framer::new(Transport::Tcp, 0).send(text, to, out);
}

/// Appends a command frame without fields (`list`, `exit`) for TCP.
pub fn simple_frame(command: &str, out: &mut BytesMut) {
    Framer::new(Transport::Tcp, 0).simple(command, out);
}

/// Connects and logs in as `user` over TCP: [`login_via`] with [`Transport::Tcp`].
///
/// # Errors
/// As [`login_via`].
pub async fn login(
    server: SocketAddr,
    from: Option<IpAddr>,
    user: &str,
    read_capacity: usize,
    wait: Duration,
) -> Result<Conn, Error> {
    login_via(Transport::Tcp, server, from, user, read_capacity, wait).await
}

/// Connects (and upgrades to a WebSocket, for [`Transport::WebSocket`]) and logs in as
/// `user`, waiting for the login acknowledgement (the first frame). `read_capacity` is the
/// initial size of the read buffer: large for busy clients (fewer `read` calls), small for
/// idle ones.
///
/// # Errors
/// When the connection or the upgrade fails, the server refuses the login, or no
/// acknowledgement comes within `wait`.
pub async fn login_via(
    transport: Transport,
    server: SocketAddr,
    from: Option<IpAddr>,
    user: &str,
    read_capacity: usize,
    wait: Duration,
) -> Result<Conn, Error> {
    let attempt = async {
        let mut stream = connect(server, from).await?;
        // What the server sent past the upgrade's response, if anything, comes first.
        let early = match transport {
            Transport::Tcp => BytesMut::new(),
            Transport::WebSocket => ws::upgrade(&mut stream, server).await?,
        };
        let (r, mut writer) = stream.into_split();
        let mut reader = FramedRead::with_capacity(r, ReplyCodec::new(transport), read_capacity);
        reader.read_buffer_mut().extend_from_slice(&early);
        let mut buf = BytesMut::new();
        Framer::new(transport, user.len() as u64).login(user, PASSWORD, &mut buf);
        writer
            .write_all(&buf)
            .await
            .map_err(|e| Error::io(format!("cannot send login of {user}"), e))?;
        let first = match reader.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(Error::io(format!("login of {user}"), e)),
            None => {
                return Err(Error::Protocol(format!(
                    "server closed the connection during login of {user}"
                )));
            }
        };
        match scan::kind(&first) {
            Kind::Message => Ok(Conn {
                pending: scan::MessageScanner::new().count(&first),
                reader,
                writer,
            }),
            Kind::Fail => Err(Error::LoginRefused {
                user: user.to_owned(),
                // 0: the `fail` had no readable error code.
                code: scan::error_code(&first).unwrap_or(0),
            }),
            _ => Err(Error::Protocol(format!(
                "unexpected first frame after login of {user}: {}",
                String::from_utf8_lossy(&first[..first.len().min(200)])
            ))),
        }
    };
    tokio::time::timeout(wait, attempt)
        .await
        .map_err(|_| Error::Timeout(format!("login of {user}")))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use simpletextim_proto::{Command, Recipient};

    #[test]
    fn frames_are_valid_commands() {
        let mut out = BytesMut::new();
        send_frame(b"~1~2~3~xx", b"*", &mut out);
        send_frame(b"~1~2~4~", b"lg7", &mut out);
        login_frame("lg1", PASSWORD, &mut out);
        simple_frame("list", &mut out);
        let mut codec = simpletextim_proto::ServerCodec::new();
        let mut got = Vec::new();
        while let Some(c) = tokio_util::codec::Decoder::decode(&mut codec, &mut out).unwrap() {
            got.push(c.unwrap().command);
        }
        assert_eq!(
            got,
            vec![
                Command::send(Recipient::Everyone, "~1~2~3~xx".parse().unwrap()),
                Command::send(
                    Recipient::User("lg7".parse().unwrap()),
                    "~1~2~4~".parse().unwrap()
                ),
                Command::login(
                    "lg1".parse().unwrap(),
                    simpletextim_proto::Password::new(PASSWORD).unwrap()
                ),
                Command::List,
            ]
        );
    }

    /// Over WebSocket, the same commands as over TCP, each in one final text frame masked
    /// with a key of its own.
    #[test]
    fn websocket_frames_hold_the_same_commands_masked() {
        use tungstenite::protocol::frame::FrameHeader;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        let write = |transport| {
            let mut f = Framer::new(transport, 7);
            let mut out = BytesMut::new();
            f.send(b"~1~2~3~xx", b"*", &mut out);
            f.login("lg1", PASSWORD, &mut out);
            f.simple("list", &mut out);
            f.send(&[b'x'; 200], b"lg7", &mut out); // a 16-bit length
            out
        };
        let mut tcp = write(Transport::Tcp);
        let mut codec = ReplyCodec::new(Transport::Tcp);
        let mut over_tcp = Vec::new();
        while let Some(payload) = codec.decode(&mut tcp).unwrap() {
            over_tcp.push(payload.to_vec());
        }
        let ws = write(Transport::WebSocket);
        let (mut over_ws, mut keys) = (Vec::new(), Vec::new());
        let mut at = 0;
        while at < ws.len() {
            let mut cursor = std::io::Cursor::new(&ws[at..]);
            let (h, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!((h.opcode, h.is_final), (OpCode::Data(Data::Text), true));
            let start = at + cursor.position() as usize;
            let mut payload = ws[start..start + len as usize].to_vec();
            let key = h.mask.unwrap();
            crate::ws::apply_mask(&mut payload, key);
            over_ws.push(payload);
            keys.push(key);
            at = start + len as usize;
        }
        assert_eq!(over_tcp.len(), 4);
        assert_eq!(over_ws, over_tcp);
        keys.dedup();
        assert_eq!(keys.len(), 4, "a key per frame: {keys:?}");
    }

    #[test]
    fn spread_binds_to_successive_addresses() {
        let b = Bind::Spread {
            first: 2,
            per_addr: 10,
            offset: 0,
        };
        assert_eq!(b.addr(0), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(b.addr(9), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(b.addr(10), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))));
        let shifted = Bind::Spread {
            first: 2,
            per_addr: 10,
            offset: 25,
        };
        assert_eq!(
            shifted.addr(0),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)))
        );
        assert_eq!(Bind::Any.addr(5), None);
        assert!(check_loopback("127.0.0.1:5000".parse().unwrap()).is_ok());
        assert!(check_loopback("10.0.0.1:5000".parse().unwrap()).is_err());
    }
}
