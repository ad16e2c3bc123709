//! Connections: connect (optionally from a chosen loopback address), log in, and write
//! commands. Frames are read with a plain [`LengthDelimitedCodec`]: the payload bytes are
//! handed to [`crate::scan`], never deserialized.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use simpletextim_proto::codec::{DEFAULT_MAX_REPLY_FRAME, encode_frame};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::scan::{self, Kind};

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

/// Frames from the server, as raw payloads.
pub type Reader = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;

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

/// The codec for server frames (up to 16 MiB, as the protocol allows).
pub fn reply_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(DEFAULT_MAX_REPLY_FRAME)
        .new_codec()
}

/// Appends a `login` command frame (structured form).
pub fn login_frame(user: &str, password: &str, out: &mut BytesMut) {
    let payload = serde_json::json!({"command": "login", "user_id": user, "password": password});
    encode_frame(payload.to_string().as_bytes(), usize::MAX, out)
        .expect("a login frame is far below the 4 GiB a length prefix can say");
}

/// Appends a `send` command frame. `text` must be plain ASCII without `"` or `\` (the
/// load generator's marker and padding), `to` a user id or `*`.
pub fn send_frame(text: &[u8], to: &[u8], out: &mut BytesMut) {
    const HEAD: &[u8] = br#"{"command":"send","message":""#;
    const MID: &[u8] = br#"","to":""#;
    const TAIL: &[u8] = br#""}"#;
    let len = HEAD.len() + text.len() + MID.len() + to.len() + TAIL.len();
    out.reserve(4 + len);
    out.put_u32(len as u32);
    out.put_slice(HEAD);
    out.put_slice(text);
    out.put_slice(MID);
    out.put_slice(to);
    out.put_slice(TAIL);
}

/// Appends a command frame without fields (`list`, `exit`).
pub fn simple_frame(command: &str, out: &mut BytesMut) {
    let payload = format!(r#"{{"command":"{command}"}}"#);
    encode_frame(payload.as_bytes(), usize::MAX, out)
        .expect("a command without fields is far below the 4 GiB a length prefix can say");
}

/// Connects and logs in as `user`, waiting for the login acknowledgement (the first frame).
/// `read_capacity` is the initial size of the read buffer: large for busy clients (fewer
/// `read` calls), small for idle ones.
///
/// # Errors
/// When the connection fails, the server refuses the login, or no acknowledgement comes
/// within `wait`.
pub async fn login(
    server: SocketAddr,
    from: Option<IpAddr>,
    user: &str,
    read_capacity: usize,
    wait: Duration,
) -> Result<Conn, Error> {
    let attempt = async {
        let stream = connect(server, from).await?;
        let (r, mut writer) = stream.into_split();
        let mut reader = FramedRead::with_capacity(r, reply_codec(), read_capacity);
        let mut buf = BytesMut::new();
        login_frame(user, PASSWORD, &mut buf);
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
