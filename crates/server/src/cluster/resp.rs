//! The subscriber's connection: a minimal RESP2 reader and writer over a plain socket,
//! read one reply at a time. The node reads the next payload only once it has handed the
//! last one to the hub, so a node that cannot keep up leaves the backlog in Redis's output
//! buffer for it, where `client-output-buffer-limit pubsub` bounds it and closes the
//! connection past it (the node then subscribes again). Nothing is queued in the process
//! beyond one read buffer. (redis-rs's own pub/sub connection reads eagerly into an
//! unbounded queue.)

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder};

/// The longest reply the subscriber accepts: a bus payload is under 2 KiB.
const MAX_REPLY: usize = 1 << 20;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 4;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The bytes of a bulk or simple string.
    pub(super) fn bytes(&self) -> Option<&[u8]> {
        match self {
            Resp::Bulk(Some(b)) => Some(b),
            Resp::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

/// Decodes RESP2 replies; encodes commands already packed (`redis::Cmd::get_packed_command`).
#[derive(Debug, Default)]
pub(super) struct RespCodec;

impl Decoder for RespCodec {
    type Item = Resp;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Resp>> {
        match parse(src, 0, 0)? {
            Some((reply, used)) => {
                src.advance(used);
                Ok(Some(reply))
            }
            None if src.len() > MAX_REPLY => Err(invalid("reply over the size limit")),
            None => Ok(None),
        }
    }
}

impl Encoder<Vec<u8>> for RespCodec {
    type Error = io::Error;
    fn encode(&mut self, item: Vec<u8>, dst: &mut BytesMut) -> io::Result<()> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// A socket the subscriber can use: TCP or a unix socket.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad reply from Redis: {what}"),
    )
}

/// The line starting at `pos` (without its CRLF) and where the next one starts; `None` if
/// it is not complete yet.
fn line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], pos + end + 2))
}

fn number(line: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("not a number"))
}

/// One reply starting at `pos`: the reply and where the next starts, or `None` if it is not
/// all there yet.
fn parse(buf: &[u8], pos: usize, depth: usize) -> io::Result<Option<(Resp, usize)>> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((text, next)) = line(buf, pos + 1) else {
        return Ok(None);
    };
    let reply = match kind {
        b'+' => Resp::Simple(String::from_utf8_lossy(text).into_owned()),
        b'-' => Resp::Error(String::from_utf8_lossy(text).into_owned()),
        b':' => Resp::Int(number(text)?),
        b'$' => {
            let n = number(text)?;
            if n < 0 {
                return Ok(Some((Resp::Bulk(None), next)));
            }
            let n = usize::try_from(n).map_err(|_| invalid("length"))?;
            if n > MAX_REPLY {
                return Err(invalid("bulk string over the size limit"));
            }
            if buf.len() < next + n + 2 {
                return Ok(None);
            }
            if &buf[next + n..next + n + 2] != b"\r\n" {
                return Err(invalid("bulk string not ended by CRLF"));
            }
            let data = Bytes::copy_from_slice(&buf[next..next + n]);
            return Ok(Some((Resp::Bulk(Some(data)), next + n + 2)));
        }
        b'*' => {
            let n = number(text)?;
            if n < 0 {
                return Ok(Some((Resp::Array(None), next)));
            }
            if depth >= MAX_DEPTH || n > 1024 {
                return Err(invalid("array too deep or too long"));
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut at = next;
            for _ in 0..n {
                match parse(buf, at, depth + 1)? {
                    Some((item, after)) => {
                        items.push(item);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            return Ok(Some((Resp::Array(Some(items)), at)));
        }
        _ => return Err(invalid("unknown type")),
    };
    Ok(Some((reply, next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<Resp>, usize) {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = RespCodec.decode(&mut buf).expect("valid") {
            out.push(r);
        }
        (out, buf.len())
    }

    #[test]
    fn pub_sub_replies_decode_and_a_partial_one_waits_for_the_rest() {
        let bulk = |s: &str| Resp::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())));
        let input = b"*3\r\n$9\r\nsubscribe\r\n$8\r\nstim:bus\r\n:1\r\n+OK\r\n*3\r\n$7\r\nmessage\r\n$8\r\nstim:bus\r\n$2\r\n{}\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n-ERR no\r\n";
        let (got, left) = decode_all(input);
        assert_eq!(left, 0);
        assert_eq!(
            got,
            [
                Resp::Array(Some(vec![
                    bulk("subscribe"),
                    bulk("stim:bus"),
                    Resp::Int(1)
                ])),
                Resp::Simple("OK".into()),
                Resp::Array(Some(vec![bulk("message"), bulk("stim:bus"), bulk("{}")])),
                Resp::Array(Some(vec![bulk("pong"), bulk("")])),
                Resp::Error("ERR no".into()),
            ]
        );
        // Every cut of a reply is incomplete, never an error.
        let one = b"*3\r\n$7\r\nmessage\r\n$8\r\nstim:bus\r\n$2\r\n{}\r\n";
        for cut in 0..one.len() {
            let (got, left) = decode_all(&one[..cut]);
            assert!(got.is_empty());
            assert_eq!(left, cut);
        }
    }

    #[test]
    fn malformed_or_oversized_replies_are_errors() {
        for bad in [
            &b"?\r\n"[..],
            b":x\r\n",
            b"$2\r\nabcd\r\n",
            b"$99999999\r\n",
        ] {
            assert!(
                RespCodec.decode(&mut BytesMut::from(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
