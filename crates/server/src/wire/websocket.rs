//! WebSocket framing (RFC 6455) of the connections the HTTP listener upgrades on `GET /ws`:
//! each text message carries one JSON object, with the same rules and limit as a frame of the
//! framed protocol.
//!
//! Writing: a server frame is a header (FIN, an opcode, no mask, the shortest length form),
//! then the payload as it is; `FrameWriter` writes a text header in front of each object, so
//! the outbox's shared bytes go out unchanged. Headers are made by tungstenite's
//! [`FrameHeader::format`].
//!
//! Reading: [`WsDecoder`] parses client frames with tungstenite's [`FrameHeader::parse`] and
//! checks what RFC 6455 requires of them (masked, no reserved bits, no reserved opcode,
//! control frames final and at most 125 bytes, continuation frames only inside a message). A
//! message is refused as soon as its length says it is over the limit, before its payload is
//! buffered: the read buffer never holds more than one frame of at most the limit. Text
//! messages become requests (invalid UTF-8 is not JSON: `fail 400`), a binary message is a
//! `fail 400` (the connection stays open), a ping is answered with a pong by the connection,
//! a pong is only traffic, and a close ends the session like an EOF.

use std::io::Cursor;

use bytes::{Buf, BufMut, BytesMut};
use simpletextim_proto::{ErrorCode, Failure, Rejected, Request};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// The longest header of a server frame (no mask): 2 bytes, then a 64-bit length.
pub(crate) const MAX_HEADER: usize = 10;
/// The header a `message` batch is opened with: the 16-bit length form, patched (and moved
/// to the shortest form) when the batch is closed.
pub(crate) const BATCH_HEADER: usize = 4;
/// The longest payload of a control frame.
const MAX_CONTROL: usize = 125;

/// Close status codes the server sends (RFC 6455, section 7.4.1).
pub(crate) mod close {
    /// The session ended normally (`exit`, the client's own close, a takeover).
    pub(crate) const NORMAL: u16 = 1000;
    /// The server is shutting down, or the client stopped answering pings.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (an unmasked frame, a bad opcode, ...).
    pub(crate) const PROTOCOL: u16 = 1002;
    /// The session was ended for a policy: slow consumer, failed logins, login timeout,
    /// a revoked login.
    pub(crate) const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub(crate) const TOO_BIG: u16 = 1009;
}

/// A server frame's header, unmasked.
fn server_header(opcode: OpCode) -> FrameHeader {
    FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    }
}

/// Writes the header of a server frame of `opcode` carrying `len` bytes into `out`; returns
/// its length.
fn write_header(opcode: OpCode, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    let mut cursor = Cursor::new(&mut out[..]);
    server_header(opcode)
        .format(len as u64, &mut cursor)
        .expect("a header of at most 10 bytes fits a 10-byte buffer");
    cursor.position() as usize
}

/// Appends the header of a final text frame of `len` bytes.
pub(crate) fn put_text_header(buf: &mut BytesMut, len: usize) {
    let mut header = [0; MAX_HEADER];
    let n = write_header(OpCode::Data(Data::Text), len, &mut header);
    buf.put_slice(&header[..n]);
}

/// Finishes the text frame opened at `start` with a [`BATCH_HEADER`]-byte placeholder and
/// followed by its whole payload: writes its header in the shortest form, moving the payload
/// if that form is not the placeholder's.
pub(crate) fn patch_text_header(buf: &mut BytesMut, start: usize) {
    let payload = buf.len() - start - BATCH_HEADER;
    let mut header = [0; MAX_HEADER];
    let n = write_header(OpCode::Data(Data::Text), payload, &mut header);
    let from = start + BATCH_HEADER;
    let to = start + n;
    if n > BATCH_HEADER {
        buf.resize(buf.len() + (n - BATCH_HEADER), 0);
    }
    if to != from {
        buf.copy_within(from..from + payload, to);
    }
    buf.truncate(to + payload);
    buf[start..start + n].copy_from_slice(&header[..n]);
}

/// Appends a control frame (close, ping, pong) with `payload` (at most 125 bytes; more is
/// cut).
pub(crate) fn put_control(buf: &mut BytesMut, control: Control, payload: &[u8]) {
    let payload = &payload[..payload.len().min(MAX_CONTROL)];
    let mut header = [0; MAX_HEADER];
    let n = write_header(OpCode::Control(control), payload.len(), &mut header);
    buf.put_slice(&header[..n]);
    buf.put_slice(payload);
}

/// The payload of a close frame: the status code, then the reason (cut to fit 125 bytes at
/// a character boundary).
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// What a client sent, one item at a time.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WsItem {
    /// A text message (a request, or the `fail` answering it), or a binary one (`fail 400`).
    Request(Result<Request, Rejected>),
    /// A ping, with its payload, to be answered with a pong carrying it.
    Ping(Vec<u8>),
    /// A close: the client's status code, if it gave one. Nothing after it is read.
    Close(Option<u16>),
}

/// Why no more can be read from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WsError {
    /// A message over the limit (`fail 413`, then close 1009).
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// A frame RFC 6455 forbids (close 1002), and what is wrong with it.
    Protocol(&'static str),
}

/// The reason of the `fail 400` answering a binary message.
pub(crate) const BINARY_REFUSED: &str =
    "binary messages are not supported: send each JSON object as a text message";

/// Decodes the frames a client sends into [`WsItem`]s.
#[derive(Debug)]
pub(crate) struct WsDecoder {
    max: usize,
    /// The message being received in several frames: its kind, and for a text message the
    /// payload so far (unmasked). Empty, without an allocation, between messages.
    partial: Option<Data>,
    message: Vec<u8>,
    /// Length of the message so far (a binary message's payload is not kept).
    message_len: usize,
    /// A close was received: nothing more is decoded.
    closed: bool,
}

impl WsDecoder {
    /// A decoder refusing messages over `max` bytes.
    pub(crate) fn new(max: usize) -> WsDecoder {
        WsDecoder {
            max,
            partial: None,
            message: Vec::new(),
            message_len: 0,
            closed: false,
        }
    }

    /// The next item in `src`, consuming its frames; `Ok(None)` until a whole one is there.
    ///
    /// # Errors
    /// A message over the limit, or a frame the protocol forbids: nothing more can be read.
    pub(crate) fn decode(&mut self, src: &mut BytesMut) -> Result<Option<WsItem>, WsError> {
        loop {
            if self.closed {
                src.clear();
                return Ok(None);
            }
            let mut cursor = Cursor::new(&src[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                Err(_) => return Err(WsError::Protocol("reserved opcode")),
            };
            let header_len = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(WsError::Protocol("reserved bits set"));
            }
            let Some(mask) = header.mask else {
                return Err(WsError::Protocol("client frames must be masked"));
            };
            let control = matches!(header.opcode, OpCode::Control(_));
            if control && (!header.is_final || len > MAX_CONTROL as u64) {
                return Err(WsError::Protocol(
                    "control frames must be final and at most 125 bytes",
                ));
            }
            if !control {
                match (header.opcode, self.partial) {
                    (OpCode::Data(Data::Continue), None) => {
                        return Err(WsError::Protocol("continuation frame outside a message"));
                    }
                    (OpCode::Data(Data::Text | Data::Binary), Some(_)) => {
                        return Err(WsError::Protocol("new message inside a fragmented one"));
                    }
                    _ => {}
                }
                // Refused on its length, before its payload is buffered.
                if (self.message_len as u64).saturating_add(len) > self.max as u64 {
                    return Err(WsError::TooLarge { max: self.max });
                }
            }
            // At most the limit (or 125) here: the frame fits a bounded buffer.
            let len = len as usize;
            if src.len() < header_len + len {
                src.reserve(header_len + len - src.len());
                return Ok(None);
            }
            src.advance(header_len);
            let mut payload = src.split_to(len);
            unmask(&mut payload, mask);
            match header.opcode {
                OpCode::Control(Control::Ping) => return Ok(Some(WsItem::Ping(payload.to_vec()))),
                // Traffic, which the connection has counted already; nothing to answer.
                OpCode::Control(Control::Pong) => continue,
                OpCode::Control(Control::Close) => {
                    self.closed = true;
                    src.clear();
                    return close_code(&payload).map(|code| Some(WsItem::Close(code)));
                }
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    return Err(WsError::Protocol("reserved opcode"));
                }
                OpCode::Data(data) => {
                    let kind = match data {
                        Data::Continue => self.partial.unwrap_or(Data::Text),
                        other => other,
                    };
                    if !header.is_final {
                        self.partial = Some(kind);
                        self.message_len += len;
                        if kind == Data::Text {
                            self.message.extend_from_slice(&payload);
                        }
                        continue;
                    }
                    let fragmented = self.partial.take().is_some();
                    self.message_len = 0;
                    if kind == Data::Binary {
                        self.message = Vec::new();
                        return Ok(Some(WsItem::Request(Err(Rejected {
                            r#ref: None,
                            failure: Failure::new(ErrorCode::BadRequest, BINARY_REFUSED),
                        }))));
                    }
                    let request = if fragmented {
                        self.message.extend_from_slice(&payload);
                        let request = Request::from_json(&self.message);
                        self.message = Vec::new();
                        request
                    } else {
                        Request::from_json(&payload)
                    };
                    return Ok(Some(WsItem::Request(request)));
                }
            }
        }
    }
}

/// The status code of a close frame's payload, if it has one.
///
/// # Errors
/// A payload of one byte, a code no endpoint may send, or a reason that is not UTF-8.
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(WsError::Protocol(
                    "close frame with a status code not allowed",
                ));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::Protocol("close reason not UTF-8"));
            }
            Ok(Some(code))
        }
    }
}

/// Unmasks a client frame's payload (RFC 6455, section 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;
    use simpletextim_proto::Command;

    /// A client frame: `opcode` with FIN `fin`, masked with `mask`.
    fn frame(opcode: u8, fin: bool, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn text(payload: &[u8]) -> Vec<u8> {
        frame(0x1, true, [1, 2, 3, 4], payload)
    }

    fn decode_all(d: &mut WsDecoder, bytes: &[u8]) -> Result<Vec<WsItem>, WsError> {
        let mut src = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = d.decode(&mut src)? {
            out.push(item);
        }
        Ok(out)
    }

    fn list() -> WsItem {
        WsItem::Request(Ok(Request::new(Command::List)))
    }

    const LIST: &[u8] = br#"{"command":"list"}"#;

    #[test]
    fn a_masked_text_frame_is_a_request_and_a_binary_one_a_400() {
        let mut d = WsDecoder::new(4096);
        let mut bytes = text(LIST);
        bytes.extend(frame(0x2, true, [9, 9, 9, 9], b"\x00\x01"));
        bytes.extend(text(b"not json"));
        let items = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0], list());
        assert_eq!(
            items[1],
            WsItem::Request(Err(Rejected {
                r#ref: None,
                failure: Failure::new(ErrorCode::BadRequest, BINARY_REFUSED)
            }))
        );
        assert!(
            matches!(&items[2], WsItem::Request(Err(r)) if r.failure.error_code == ErrorCode::BadRequest)
        );
    }

    #[test]
    fn invalid_utf8_text_is_a_400_and_the_connection_goes_on() {
        let mut d = WsDecoder::new(4096);
        let mut bytes = text(b"{\"command\":\"list\xff\"}");
        bytes.extend(text(LIST));
        let items = decode_all(&mut d, &bytes).unwrap();
        assert!(
            matches!(&items[0], WsItem::Request(Err(r)) if r.failure.error_code == ErrorCode::BadRequest)
        );
        assert_eq!(items[1], list());
    }

    #[test]
    fn fragments_are_joined_with_control_frames_between_them() {
        let mut d = WsDecoder::new(4096);
        let mut bytes = frame(0x1, false, [5, 6, 7, 8], &LIST[..5]);
        bytes.extend(frame(0x9, true, [1, 1, 1, 1], b"hi"));
        bytes.extend(frame(0xA, true, [1, 1, 1, 1], b"pong"));
        bytes.extend(frame(0x0, false, [0, 0, 0, 0], &LIST[5..10]));
        bytes.extend(frame(0x0, true, [7, 7, 7, 7], &LIST[10..]));
        let items = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(items, vec![WsItem::Ping(b"hi".to_vec()), list()]);
        assert!(d.message.capacity() == 0 && d.partial.is_none());
    }

    #[test]
    fn a_message_over_the_limit_is_refused_on_its_length() {
        let mut d = WsDecoder::new(64);
        // Only the header is there: refused before the payload comes.
        let bytes = text(&[b'x'; 65]);
        assert_eq!(
            decode_all(&mut d, &bytes[..8]),
            Err(WsError::TooLarge { max: 64 })
        );
        // Fragments adding up to more than the limit.
        let mut d = WsDecoder::new(64);
        let mut bytes = frame(0x1, false, [1, 2, 3, 4], &[b' '; 40]);
        bytes.extend(frame(0x0, true, [1, 2, 3, 4], &[b' '; 25]));
        assert_eq!(
            decode_all(&mut d, &bytes),
            Err(WsError::TooLarge { max: 64 })
        );
        // A 64-bit length that would overflow.
        let mut d = WsDecoder::new(64);
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(
            decode_all(&mut d, &huge),
            Err(WsError::TooLarge { max: 64 })
        );
    }

    #[test]
    fn frames_the_protocol_forbids_are_refused() {
        let unmasked = {
            let mut f = vec![0x81, LIST.len() as u8];
            f.extend_from_slice(LIST);
            f
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (unmasked, "client frames must be masked"),
            (frame(0x3, true, [0; 4], b""), "reserved opcode"),
            (frame(0xB, true, [0; 4], b""), "reserved opcode"),
            (frame(0x41, true, [0; 4], b"{}"), "reserved bits set"),
            (
                frame(0x9, false, [0; 4], b""),
                "control frames must be final and at most 125 bytes",
            ),
            (
                frame(0x9, true, [0; 4], &[0; 126]),
                "control frames must be final and at most 125 bytes",
            ),
            (
                frame(0x0, true, [0; 4], b"{}"),
                "continuation frame outside a message",
            ),
            (
                [
                    frame(0x1, false, [0; 4], b"{"),
                    frame(0x1, true, [0; 4], b"}"),
                ]
                .concat(),
                "new message inside a fragmented one",
            ),
            (
                frame(0x8, true, [0; 4], &[3]),
                "close frame with a 1-byte payload",
            ),
            (
                frame(0x8, true, [0; 4], &1005u16.to_be_bytes()),
                "close frame with a status code not allowed",
            ),
        ];
        for (bytes, why) in cases {
            let mut d = WsDecoder::new(4096);
            assert_eq!(
                decode_all(&mut d, &bytes),
                Err(WsError::Protocol(why)),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn a_close_ends_the_stream_with_its_code() {
        let mut d = WsDecoder::new(4096);
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        let mut bytes = frame(0x8, true, [3, 3, 3, 3], &close);
        bytes.extend(text(LIST));
        assert_eq!(
            decode_all(&mut d, &bytes).unwrap(),
            vec![WsItem::Close(Some(1000))]
        );
        let mut d = WsDecoder::new(4096);
        assert_eq!(
            decode_all(&mut d, &frame(0x8, true, [3, 3, 3, 3], b"")).unwrap(),
            vec![WsItem::Close(None)]
        );
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        for (len, header) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65535, vec![0x81, 126, 0xff, 0xff]),
            (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut put = BytesMut::new();
            put_text_header(&mut put, len);
            assert_eq!(&put[..], &header[..], "{len}");
            // A batch opened with the placeholder and patched gives the same bytes.
            let mut patched = BytesMut::from(&b"xy"[..]);
            patched.put_bytes(0, BATCH_HEADER);
            patched.put_bytes(b'p', len);
            patch_text_header(&mut patched, 2);
            let mut want = BytesMut::from(&b"xy"[..]);
            want.put_slice(&header);
            want.put_bytes(b'p', len);
            assert_eq!(patched, want, "{len}");
        }
        let mut close = BytesMut::new();
        put_control(&mut close, Control::Close, &close_payload(1009, "too big"));
        assert_eq!(&close[..], b"\x88\x09\x03\xf1too big");
        assert_eq!(close_payload(1000, &"é".repeat(100)).len(), 2 + 122);
    }

    /// `PROPTEST_CASES` when set, 256 cases otherwise, and no regression files written
    /// into the tree (as in `wire/fuzz.rs`).
    fn config() -> ProptestConfig {
        let mut c = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            c.cases = 256;
        }
        c.failure_persistence = None;
        c
    }

    proptest! {
        #![proptest_config(config())]

        /// Arbitrary bytes, in arbitrary reads: no panic, and a decoder waiting for more
        /// never holds more than one frame of at most the limit, or 125 bytes for a control
        /// frame (and its header of at most 14 bytes).
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            stream in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(1usize..64, 0..40),
            max in 1usize..300,
        ) {
            let mut d = WsDecoder::new(max);
            let mut src = BytesMut::new();
            let mut rest = &stream[..];
            let mut cuts = cuts.into_iter();
            'feed: while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                src.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                loop {
                    match d.decode(&mut src) {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            // A control frame may carry 125 bytes whatever the limit.
                            let bound = max.max(MAX_CONTROL) + 14;
                            prop_assert!(src.len() <= bound, "{} bytes waiting", src.len());
                            break;
                        }
                        Err(_) => break 'feed,
                    }
                }
            }
        }

        /// Any messages, any masks, any fragmentation, any split of the byte stream into
        /// reads: the same requests, in order, with pings between them.
        #[test]
        fn any_fragmentation_and_masks_decode_the_same(
            messages in proptest::collection::vec(
                (0usize..3, proptest::collection::vec(1usize..40, 1..4), any::<[u8; 4]>(), any::<bool>()),
                1..8,
            ),
            cuts in proptest::collection::vec(1usize..50, 0..20),
        ) {
            let payloads: [&[u8]; 3] = [
                LIST,
                br#"{"command":"send","message":"h\u00e9llo w\u00f6rld, quite a long message"}"#,
                br#"{"command":"exit","ref":"r-1"}"#,
            ];
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (which, sizes, mask, ping) in &messages {
                let payload = payloads[*which];
                // Split the payload at the sizes given (the last fragment takes the rest).
                let mut parts = Vec::new();
                let mut at = 0;
                for size in sizes {
                    let end = (at + size).min(payload.len());
                    parts.push(&payload[at..end]);
                    at = end;
                }
                if at < payload.len() {
                    parts.push(&payload[at..]);
                }
                for (i, part) in parts.iter().enumerate() {
                    let opcode = if i == 0 { 0x1 } else { 0x0 };
                    let last = i + 1 == parts.len();
                    stream.extend(frame(opcode, last, *mask, part));
                    if last {
                        want.push(WsItem::Request(Request::from_json(payload)));
                    }
                    // A ping after the first frame: inside the message, or after it.
                    if *ping && i == 0 {
                        stream.extend(frame(0x9, true, *mask, b"p"));
                        want.push(WsItem::Ping(b"p".to_vec()));
                    }
                }
            }
            let mut d = WsDecoder::new(4096);
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            let mut rest = &stream[..];
            let mut cuts = cuts.into_iter();
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                src.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                while let Some(item) = d.decode(&mut src).unwrap() {
                    got.push(item);
                }
            }
            prop_assert!(src.is_empty());
            prop_assert_eq!(got, want);
        }
    }
}
