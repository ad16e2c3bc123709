//! The WebSocket transport (`--ws`): the HTTP upgrade to the server's `GET /ws`, the
//! client's masked text frames, and a decoder of the server's frames that hands each text
//! payload to the same scanner as a TCP frame's.
//!
//! The server sends every reply as one unmasked, unfragmented text frame holding one JSON
//! object (docs/PROTOCOL.md, "WebSocket (1.1)"). Decoding one is reading its 2- to 10-byte
//! header (tungstenite's [`FrameHeader::parse`]) and splitting the payload off the read
//! buffer, as [`tokio_util::codec::LengthDelimitedCodec`] does after its 4-byte prefix: no
//! copy, nothing to unmask, no UTF-8 check (the scanner reads bytes). The load generator's
//! cost per frame is thus the same on both transports, and the TCP and WebSocket figures
//! compare the server's two framings, not two clients.
//!
//! A client must mask its frames (RFC 6455, section 5.3): a 4-byte key per frame, XORed
//! over the payload. The keys only have to be unpredictable to a browser's page (masking
//! protects proxies from payloads a script chose); the load generator, talking to a server on
//! loopback, draws them from a seeded generator, which still exercises the server's unmasking
//! with a different key per frame.
//!
//! **Not answered: the server's pings.** A client that sends nothing for 30 s gets a ping
//! and, silent 30 s more, is closed (1001). The receivers do not hold their connection's
//! write half (a sender task does, while it sends), so they skip pings: a run in which a
//! client sends nothing for a minute sees it closed, counted as *disconnected*. The
//! benchmark's runs last seconds.

use std::io::{self, Cursor};
use std::net::SocketAddr;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;
use tungstenite::handshake::client::{Response, generate_key};
use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::machine::TryParse;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::net::Error;

/// The path of the server's WebSocket.
pub const PATH: &str = "/ws";
/// The longest HTTP response head accepted for the upgrade (the server's 101 is about 130
/// bytes).
const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// The longest header of a client frame: 2 bytes, 8 of extended length, 4 of mask.
const MAX_CLIENT_HEADER: usize = 14;

/// The upgrade request for the server at `host`, with `key` as `Sec-WebSocket-Key`. No
/// `Origin`: the server accepts a request without one (not a browser).
pub fn request(host: SocketAddr, key: &str) -> String {
    format!(
        "GET {PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
}

/// Checks the start of the server's answer to an upgrade request sent with `key`: `None`
/// while the response head is incomplete, else the length of the head (the frames start
/// after it).
///
/// # Errors
/// A response that is not HTTP, not `101 Switching Protocols` (the server's refusals say
/// why in a one-line body, shown as far as it was read), or whose `Sec-WebSocket-Accept` is
/// not the one `key` asks for.
pub fn check_response(buf: &[u8], key: &str) -> Result<Option<usize>, Error> {
    let parsed = Response::try_parse(buf)
        .map_err(|e| Error::Protocol(format!("bad answer to the WebSocket upgrade: {e}")))?;
    let Some((head, response)) = parsed else {
        return Ok(None);
    };
    if response.status().as_u16() != 101 {
        let body = &buf[head..buf.len().min(head + 200)];
        return Err(Error::Protocol(format!(
            "WebSocket upgrade refused: {} {}",
            response.status(),
            String::from_utf8_lossy(body).trim()
        )));
    }
    let expected = derive_accept_key(key.as_bytes());
    match response.headers().get("sec-websocket-accept") {
        Some(accept) if accept.as_bytes() == expected.as_bytes() => Ok(Some(head)),
        other => Err(Error::Protocol(format!(
            "WebSocket upgrade: Sec-WebSocket-Accept {other:?}, expected {expected}"
        ))),
    }
}

/// Upgrades a socket connected to the HTTP listener at `server` to a WebSocket: sends the
/// request, reads the response head (at most 8 KiB) and checks it.
/// Returns what was read past the head (the start of the server's frames, if any).
///
/// # Errors
/// When the socket fails, the server closes it, or [`check_response`] refuses the answer.
pub async fn upgrade(stream: &mut TcpStream, server: SocketAddr) -> Result<BytesMut, Error> {
    let key = generate_key();
    stream
        .write_all(request(server, &key).as_bytes())
        .await
        .map_err(|e| Error::io("cannot send the WebSocket upgrade", e))?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(head) = check_response(&buf, &key)? {
            buf.advance(head);
            return Ok(buf);
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(Error::Protocol(format!(
                "WebSocket upgrade: no complete response head in {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| Error::io("WebSocket upgrade", e))?;
        if n == 0 {
            return Err(Error::Protocol(
                "the server closed the connection during the WebSocket upgrade".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// XORs `payload` with a frame's masking key, in place: the same call masks and unmasks
/// (RFC 6455, section 5.3). Four bytes at a time; tungstenite's own `apply_mask` is not
/// public.
pub fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut words = payload.chunks_exact_mut(4);
    for w in &mut words {
        let bytes: [u8; 4] = (*w).try_into().expect("chunks_exact_mut gives 4 bytes");
        w.copy_from_slice(&(u32::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // The rest starts at a multiple of 4: its byte i takes the key's byte i.
    for (b, k) in words.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// Appends one masked, final text frame whose payload is `parts` one after the other (one
/// JSON command, assembled without an intermediate buffer), masked with `key`.
pub fn put_text(parts: &[&[u8]], key: [u8; 4], out: &mut BytesMut) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode: OpCode::Data(Data::Text),
        mask: Some(key),
    };
    out.reserve(MAX_CLIENT_HEADER + len);
    header
        .format(len as u64, &mut (&mut *out).writer())
        .expect("writing to a BytesMut does not fail");
    let start = out.len();
    for p in parts {
        out.put_slice(p);
    }
    apply_mask(&mut out[start..], key);
}

/// Decodes the server's frames into the payloads of its text frames, for the same
/// [`crate::scan`] code as TCP frames. Pings and pongs are skipped (see the module's
/// documentation); a close frame ends the stream with an error that says its status and
/// reason, as does anything the server never sends (a masked, fragmented or binary frame,
/// a reserved bit or opcode) and a payload over the limit, refused from its header before
/// it is buffered.
#[derive(Debug, Clone, Copy)]
pub struct TextDecoder {
    max_payload: usize,
}

impl TextDecoder {
    /// A decoder of frames up to `max_payload` bytes.
    pub fn new(max_payload: usize) -> TextDecoder {
        TextDecoder { max_payload }
    }
}

/// An error for a frame the server should not have sent.
fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The error that ends the stream at a close frame whose payload is `payload`.
fn closed(payload: &[u8]) -> io::Error {
    let what = match payload {
        [a, b, reason @ ..] => format!(
            "the server closed the WebSocket: {} {}",
            u16::from_be_bytes([*a, *b]),
            String::from_utf8_lossy(reason)
        ),
        _ => "the server closed the WebSocket".to_owned(),
    };
    io::Error::new(io::ErrorKind::ConnectionAborted, what)
}

impl Decoder for TextDecoder {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        // Each turn either returns or takes a whole control frame off `src`: bounded by
        // what was read.
        loop {
            let mut cursor = Cursor::new(&src[..]);
            let parsed = FrameHeader::parse(&mut cursor)
                .map_err(|e| invalid(format!("bad WebSocket frame header: {e}")))?;
            let Some((header, len)) = parsed else {
                return Ok(None);
            };
            let head = usize::try_from(cursor.position()).expect("a header is at most 14 bytes");
            if header.mask.is_some() || header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(invalid("a masked frame or a reserved bit from the server"));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= self.max_payload)
                .ok_or_else(|| {
                    invalid(format!(
                        "a frame of {len} bytes, over the limit of {}",
                        self.max_payload
                    ))
                })?;
            let whole = head + len;
            if src.len() < whole {
                src.reserve(whole - src.len());
                return Ok(None);
            }
            match header.opcode {
                OpCode::Data(Data::Text) if header.is_final => {
                    src.advance(head);
                    return Ok(Some(src.split_to(len)));
                }
                OpCode::Control(Control::Ping | Control::Pong) => src.advance(whole),
                OpCode::Control(Control::Close) => return Err(closed(&src[head..whole])),
                other => {
                    return Err(invalid(format!(
                        "an unexpected frame from the server: {other:?}, final {}",
                        header.is_final
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A server frame: unmasked and final.
    fn server_frame(opcode: u8, payload: &[u8], out: &mut BytesMut) {
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode: OpCode::from(opcode),
            mask: None,
        };
        header
            .format(payload.len() as u64, &mut (&mut *out).writer())
            .unwrap();
        out.put_slice(payload);
    }

    /// Every payload the decoder yields from `bytes` fed in pieces of `step` bytes.
    fn decode_in_steps(bytes: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut decoder = TextDecoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in bytes.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                got.push(frame.to_vec());
            }
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        got
    }

    #[test]
    fn masking_twice_gives_the_payload_back_at_every_length() {
        let key = [0x6d, 0xb6, 0xb2, 0x80];
        for len in 0..=11u8 {
            let plain: Vec<u8> = (0..len).map(|i| i * 7 + 1).collect();
            let mut masked = plain.clone();
            apply_mask(&mut masked, key);
            // Byte i is XORed with key[i % 4] (RFC 6455, section 5.3).
            let by_hand: Vec<u8> = (plain.iter().enumerate())
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(masked, by_hand, "length {len}");
            apply_mask(&mut masked, key);
            assert_eq!(masked, plain);
        }
    }

    #[test]
    fn client_frames_are_masked_text_frames_that_tungstenite_reads_back() {
        let mut out = BytesMut::new();
        let key = [1, 2, 3, 4];
        put_text(&[b"{\"command\":", b"\"list\"}"], key, &mut out);
        // 125 bytes fit the first length byte; 126 to 65 535 take two more.
        let long = vec![b'x'; 300];
        put_text(&[&long], [9, 8, 7, 6], &mut out);
        let mut cursor = Cursor::new(&out[..]);
        let (h, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.is_final, h.mask, len),
            (OpCode::Data(Data::Text), true, Some(key), 18)
        );
        let at = cursor.position() as usize;
        assert_eq!(at, 6);
        let mut payload = out[at..at + 18].to_vec();
        assert_ne!(payload, b"{\"command\":\"list\"}");
        apply_mask(&mut payload, key);
        assert_eq!(payload, b"{\"command\":\"list\"}");
        let mut cursor = Cursor::new(&out[at + 18..]);
        let (h, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!(
            (h.mask, len, cursor.position()),
            (Some([9, 8, 7, 6]), 300, 8)
        );
        assert_eq!(out.len(), 6 + 18 + 8 + 300);
    }

    #[test]
    fn decodes_frames_split_anywhere_and_several_per_read() {
        let mut bytes = BytesMut::new();
        let long = vec![b'y'; 70_000]; // a 64-bit length
        let medium = vec![b'z'; 300]; // a 16-bit length
        server_frame(0x1, br#"{"command":"message","messages":[]}"#, &mut bytes);
        server_frame(0x9, b"ping?", &mut bytes); // skipped
        server_frame(0x1, &medium, &mut bytes);
        server_frame(0xA, b"", &mut bytes); // skipped
        server_frame(0x1, &long, &mut bytes);
        server_frame(0x1, b"", &mut bytes);
        let expected = vec![
            br#"{"command":"message","messages":[]}"#.to_vec(),
            medium,
            long,
            Vec::new(),
        ];
        // One byte at a time (every header cut everywhere), odd pieces, everything at once.
        for step in [1, 3, 7, 126, 4096, bytes.len()] {
            assert_eq!(decode_in_steps(&bytes, step), expected, "step {step}");
        }
    }

    #[test]
    fn a_close_frame_ends_the_stream_with_its_status() {
        let mut buf = BytesMut::new();
        server_frame(0x1, b"{}", &mut buf);
        server_frame(0x8, b"\x03\xe8bye", &mut buf);
        let mut d = TextDecoder::new(100);
        assert_eq!(&d.decode(&mut buf).unwrap().unwrap()[..], b"{}");
        let e = d.decode(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(e.to_string(), "the server closed the WebSocket: 1000 bye");
    }

    #[test]
    fn refuses_what_the_server_never_sends() {
        let refused = |bytes: &[u8]| {
            let mut buf = BytesMut::from(bytes);
            TextDecoder::new(100).decode(&mut buf).unwrap_err().kind()
        };
        let mut binary = BytesMut::new();
        server_frame(0x2, b"\x00", &mut binary);
        assert_eq!(refused(&binary), io::ErrorKind::InvalidData);
        // A first fragment (FIN clear) of a text message.
        assert_eq!(refused(b"\x01\x02ab"), io::ErrorKind::InvalidData);
        // Masked.
        assert_eq!(
            refused(b"\x81\x82\x01\x02\x03\x04ab"),
            io::ErrorKind::InvalidData
        );
        // A reserved bit, a reserved opcode.
        assert_eq!(refused(b"\xc1\x02ab"), io::ErrorKind::InvalidData);
        assert_eq!(refused(b"\x83\x02ab"), io::ErrorKind::InvalidData);
        // Over the limit, said by the header before any of the payload came.
        assert_eq!(refused(b"\x81\x7e\x01\x00"), io::ErrorKind::InvalidData);
        // An incomplete header or payload waits for more.
        let mut d = TextDecoder::new(100);
        assert!(
            d.decode(&mut BytesMut::from(&b"\x81"[..]))
                .unwrap()
                .is_none()
        );
        assert!(
            d.decode(&mut BytesMut::from(&b"\x81\x05ab"[..]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn checks_the_upgrade_response() {
        // The example of RFC 6455, section 1.3.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02{}";
        let head = ok.len() - 4;
        assert_eq!(check_response(ok, key).unwrap(), Some(head));
        // Incomplete: wait.
        assert_eq!(check_response(&ok[..head - 3], key).unwrap(), None);
        assert_eq!(check_response(b"", key).unwrap(), None);
        // Another key's accept value.
        assert!(check_response(ok, "x3JJHMbDL1EzLkh9GBhXDw==").is_err());
        // A refusal says why.
        let refused =
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 21\r\n\r\nserver shutting down\n";
        let e = check_response(refused, key).unwrap_err().to_string();
        assert!(
            e.contains("503") && e.contains("server shutting down"),
            "{e}"
        );
        assert!(check_response(b"SSH-2.0-OpenSSH\r\n\r\n", key).is_err());
        let req = request("127.0.0.1:5080".parse().unwrap(), key);
        assert!(
            req.starts_with("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:5080\r\n"),
            "{req}"
        );
        assert!(
            req.ends_with(&format!("Sec-WebSocket-Key: {key}\r\n\r\n")),
            "{req}"
        );
    }
}
