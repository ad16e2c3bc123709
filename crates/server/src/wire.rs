//! Server-side encoding: what goes into a session's outbox, and how a batch of outbox items
//! becomes frames on the socket.
//!
//! A chat message is serialized once, when it is accepted ([`ChatHead`] before the hub's
//! lock, finished under it); every recipient
//! gets a cheap clone of the same [`Bytes`]. A session's writer then joins the chat messages
//! queued for it into one `message` frame ([`FrameWriter`]): a copy, not a serialization.
//!
//! Three framings carry the same JSON objects: the protocol's length-delimited frames,
//! (for `nc`/telnet debugging, on a listener of its own) one object per line, read by
//! [`LineCodec`], and WebSocket text messages (`websocket.rs`: the frame headers, and the
//! decoder of client frames).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use simpletextim_proto::{ChatMessage, CodecError, Recipient, Rejected, Reply, Request, UserId};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder};

use crate::outbox::Queued;
use crate::presence::{Notice, Sink};

/// How JSON objects are delimited on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// The protocol's frames: a 4-byte big-endian length, then the object.
    #[default]
    LengthDelimited,
    /// One object per line (`\n`-terminated, `\r\n` tolerated): the debugging listener.
    Lines,
    /// One object per WebSocket text message. A listener given this framing serves HTTP:
    /// the web client, `/healthz`, and `GET /ws`, whose upgraded connections use it.
    WebSocket,
}

/// Reads requests one per line, with the same limit and answers as the framed protocol:
/// a line that is not a valid request is a recoverable `fail` (400), a line longer than the
/// limit is fatal (413, then close). Blank lines are skipped.
#[derive(Debug)]
pub struct LineCodec {
    inner: AnyDelimiterCodec,
    max: usize,
}

impl LineCodec {
    /// A codec refusing lines longer than `max` bytes.
    pub fn new(max: usize) -> LineCodec {
        LineCodec {
            inner: AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), max),
            max,
        }
    }
}

impl Decoder for LineCodec {
    type Item = Result<Request, Rejected>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        loop {
            let line = match self.inner.decode(src) {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                    return Err(CodecError::FrameTooLarge { max: self.max });
                }
                Err(AnyDelimiterCodecError::Io(e)) => return Err(CodecError::Io(e)),
            };
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Request::from_json(line)));
        }
    }
}

/// Chat messages joined into one frame stop growing past this many bytes (another frame
/// follows).
const MAX_BATCH_FRAME: usize = 64 * 1024;

/// One item of a session's outbox. It says what it is, so that nothing is ever parsed back
/// from the bytes: a private message to the session's user carries the message beside its
/// encoding, to be kept in the mailbox if it does not reach the socket.
#[derive(Debug, Clone)]
pub enum Out {
    /// A chat message object, already JSON (`{"user_id":…,"message":…,…}`): a public
    /// message, or the echo of a private message the session's user sent.
    Chat(Bytes),
    /// A private message to the session's user.
    Private(Arc<Private>),
    /// The echo of a message the session's user sent with a `ref` (protocol 1.1): the
    /// object every other copy shares, written with the ref in front. Boxed: rare, and an
    /// `Out` stays small.
    Echo(Box<Echo>),
}

/// The sender's copy of a message it sent with a `ref`: the shared encoded object, untouched,
/// and the ref, which [`FrameWriter`] writes in front of it
/// (`{"ref":<ref>,"user_id":…`): only this copy carries the ref, and nothing is serialized
/// again.
#[derive(Debug, Clone)]
pub struct Echo {
    /// The ref, already JSON (`42` or `"r1"`).
    pub r#ref: Bytes,
    /// The chat object, as [`ChatHead`] writes it (starting with `{`).
    pub obj: Bytes,
    /// A private message the user sent to itself: the echo is also its delivery, kept in the
    /// mailbox (without the ref, which only [`FrameWriter`] adds) if it does not reach the
    /// socket.
    pub private: Option<Arc<Private>>,
}

/// What [`FrameWriter`] writes before an echo's ref, and after it (the object then goes on
/// from its second byte).
const ECHO_HEAD: &[u8] = br#"{"ref":"#;

impl Echo {
    /// The echo of `obj` (a public message, or a private one to another user) with the
    /// JSON-encoded `ref`, or the plain shared object without one.
    pub fn of(r#ref: Option<&Bytes>, obj: Bytes) -> Out {
        match r#ref {
            None => Out::Chat(obj),
            Some(r) => Out::Echo(Box::new(Echo {
                r#ref: r.clone(),
                obj,
                private: None,
            })),
        }
    }

    /// The item for a private message the user sent to itself: with the JSON-encoded
    /// `ref`, an echo that still counts as the message's delivery.
    pub fn of_private(r#ref: Option<&Bytes>, private: Arc<Private>) -> Out {
        match r#ref {
            None => Out::Private(private),
            Some(r) => Out::Echo(Box::new(Echo {
                r#ref: r.clone(),
                obj: private.obj.clone(),
                private: Some(private),
            })),
        }
    }
}

/// A ref as the JSON an [`Echo`] carries.
pub fn encode_ref(r: &simpletextim_proto::Ref) -> Bytes {
    Bytes::from(r.to_string())
}

/// A private message on its way to its recipient: the encoded object every copy shares (the
/// sender's echo too), and what the recipient's session needs to store the message back in
/// its mailbox when it ends before the socket took it. The recipient is not kept: it is that
/// session's own user.
#[derive(Debug)]
pub struct Private {
    /// The chat object, as [`ChatHead`] writes it.
    pub obj: Bytes,
    /// The sender.
    pub from: UserId,
    /// The text.
    pub text: String,
    /// The message's id.
    pub id: u64,
    /// When it was accepted, in Unix milliseconds.
    pub ts: u64,
}

impl Private {
    /// The message, addressed to `to`, its recipient as registered.
    pub fn message(&self, to: UserId) -> ChatMessage {
        ChatMessage {
            r#ref: None,
            user_id: self.from.clone(),
            message: self.text.clone(),
            to: Recipient::User(to),
            id: self.id,
            ts: self.ts,
        }
    }
}

impl Out {
    /// The encoded bytes of the item (of an echo: the shared object, without its ref).
    pub fn bytes(&self) -> &Bytes {
        match self {
            Out::Chat(b) => b,
            Out::Private(p) => &p.obj,
            Out::Echo(e) => &e.obj,
        }
    }

    /// How many bytes the item takes in a frame (an echo's ref included).
    pub fn encoded_len(&self) -> usize {
        match self {
            Out::Echo(e) => e.obj.len() + ECHO_HEAD.len() + e.r#ref.len(),
            _ => self.bytes().len(),
        }
    }
}

/// Serializes a chat message object with serde: what [`ChatHead`] must write, byte for byte.
#[cfg(test)]
pub fn encode_chat(msg: &ChatMessage) -> Bytes {
    Bytes::from(
        serde_json::to_vec(msg)
            .expect("a ChatMessage is strings and integers, which serde_json always serializes"),
    )
}

/// A chat object encoded up to its `to` field: `{"user_id":…,"message":…,"to":`. The
/// costly part of encoding a message (escaping its text) is done with it before the hub's
/// lock is taken; under the lock, [`ChatHead::finish`] only appends the recipient, the id and
/// the time the hub assigns. The result is byte for byte serde_json's serialization of the
/// [`ChatMessage`] (a unit test and a property test hold it to that).
#[derive(Debug)]
pub struct ChatHead(Vec<u8>);

/// Room for `"to":"<32-character user id>","id":<20 digits>,"ts":<20 digits>}`.
const CHAT_TAIL_ROOM: usize = 96;

impl ChatHead {
    /// Encodes the sender and the text.
    pub fn new(from: &UserId, text: &str) -> ChatHead {
        let mut buf = Vec::with_capacity(32 + from.as_str().len() + text.len() + CHAT_TAIL_ROOM);
        buf.extend_from_slice(br#"{"user_id":"#);
        json_str(&mut buf, from.as_str());
        buf.extend_from_slice(br#","message":"#);
        json_str(&mut buf, text);
        buf.extend_from_slice(br#","to":"#);
        ChatHead(buf)
    }

    /// Completes the object with the recipient (`"*"` or a user id), id and timestamp.
    pub fn finish(self, to: &str, id: u64, ts: u64) -> Bytes {
        let mut buf = self.0;
        json_str(&mut buf, to);
        buf.extend_from_slice(br#","id":"#);
        buf.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        buf.extend_from_slice(br#","ts":"#);
        buf.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
        buf.push(b'}');
        Bytes::from(buf)
    }
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *buf, s).expect("writing a JSON string into a Vec cannot fail");
}

/// Serializes a whole reply.
#[cfg(test)]
pub fn encode_reply(reply: &Reply) -> Bytes {
    Bytes::from(reply.to_json())
}

const LIST_HEAD: &[u8] = br#"{"command":"list""#;
const LIST_REF: &[u8] = br#","ref":"#;
const LIST_FIELD: &[u8] = br#","list":"#;

const MESSAGE_FRAME_HEAD: &[u8] = br#"{"command":"message","messages":["#;
const MESSAGE_FRAME_TAIL: &[u8] = b"]}";

/// Builds frames into one write buffer, joining consecutive chat messages into shared
/// `message` frames, and records where each private message to the session's user ends up,
/// so that what a failed write did not deliver is known without reading the bytes back.
#[derive(Debug, Default)]
pub struct FrameWriter {
    buf: BytesMut,
    /// Offset of the open `message` frame (of its length header), if one is open.
    open_batch: Option<usize>,
    framing: Framing,
    /// The private messages in `buf`, each with the end offset of its frame: it is
    /// delivered once the socket has taken that many bytes. While its frame is open the end
    /// is [`OPEN`].
    private: Vec<(usize, Arc<Private>)>,
}

/// The end offset of a private message whose frame is still open.
const OPEN: usize = usize::MAX;

impl FrameWriter {
    /// An empty writer of length-delimited frames.
    #[cfg(test)]
    pub fn new() -> FrameWriter {
        FrameWriter::default()
    }

    /// An empty writer of frames in `framing`.
    pub fn with_framing(framing: Framing) -> FrameWriter {
        FrameWriter {
            framing,
            ..FrameWriter::default()
        }
    }

    /// How it delimits frames.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Appends one outbox item.
    pub fn push(&mut self, item: &Out) {
        match item {
            Out::Chat(obj) => self.push_chat(obj),
            Out::Private(p) => {
                self.push_chat(&p.obj);
                self.private.push((OPEN, p.clone()));
            }
            Out::Echo(e) => {
                self.push_object(Some(&e.r#ref), &e.obj);
                if let Some(p) = &e.private {
                    self.private.push((OPEN, p.clone()));
                }
            }
        }
    }

    /// Appends a chat message object to the open `message` frame, opening one if needed.
    pub fn push_chat(&mut self, obj: &[u8]) {
        self.push_object(None, obj);
    }

    /// Appends a chat message object, with `r#ref` (JSON) in front when given, to the open
    /// `message` frame, opening one if needed.
    fn push_object(&mut self, r#ref: Option<&[u8]>, obj: &[u8]) {
        let len = obj.len() + r#ref.map_or(0, |r| ECHO_HEAD.len() + r.len());
        match self.open_batch {
            Some(start) if self.buf.len() - start + len < MAX_BATCH_FRAME => {
                self.buf.put_u8(b',');
            }
            _ => {
                self.close_batch();
                self.open_batch = Some(self.buf.len());
                match self.framing {
                    LengthDelimited => self.buf.put_u32(0), // patched in close_batch
                    WebSocket => self.buf.put_bytes(0, websocket::BATCH_HEADER), // likewise
                    Lines => {}
                }
                self.buf.put_slice(MESSAGE_FRAME_HEAD);
            }
        }
        match r#ref {
            None => self.buf.put_slice(obj),
            Some(r) => {
                // `{"ref":<ref>,` then the object after its `{`: `"user_id":…}`.
                debug_assert_eq!(obj.first(), Some(&b'{'));
                self.buf.put_slice(ECHO_HEAD);
                self.buf.put_slice(r);
                self.buf.put_u8(b',');
                self.buf.put_slice(obj.strip_prefix(b"{").unwrap_or(obj));
            }
        }
    }

    /// Appends a whole reply frame.
    pub fn push_frame(&mut self, payload: &[u8]) {
        self.close_batch();
        self.buf.reserve(websocket::MAX_HEADER + payload.len());
        match self.framing {
            LengthDelimited => {
                // Replies the server builds are far below the 16 MiB limit except a `list`
                // of hundreds of thousands of users, which still fits a u32 length.
                self.buf.put_u32(payload.len() as u32);
                self.buf.put_slice(payload);
            }
            // serde_json escapes newlines inside strings: a payload is one line.
            Lines => {
                self.buf.put_slice(payload);
                self.buf.put_u8(b'\n');
            }
            WebSocket => {
                websocket::put_text_header(&mut self.buf, payload.len());
                self.buf.put_slice(payload);
            }
        }
    }

    /// Appends a presence notice as a frame of its own, from its parts (nothing serialized).
    pub fn push_notice(&mut self, notice: &Notice) {
        let (head, id, tail) = notice.parts();
        self.push_frame_parts(&[head, id], tail);
    }

    /// Appends a WebSocket control frame (close, ping, pong); on another framing, nothing.
    pub fn push_control(
        &mut self,
        control: tungstenite::protocol::frame::coding::Control,
        payload: &[u8],
    ) {
        if self.framing == WebSocket {
            self.close_batch();
            websocket::put_control(&mut self.buf, control, payload);
        }
    }

    /// Appends a `list` reply from its parts, without serializing: the ref (JSON) when
    /// given, and the ids as a JSON array shared by every reply until membership changes
    /// (`{"command":"list","ref":7,"list":["alice"]}`, byte for byte what serde_json writes
    /// for [`Reply::List`]).
    pub fn push_list(&mut self, r#ref: Option<&[u8]>, list: &[u8]) {
        let mut parts: [&[u8]; 5] = [LIST_HEAD, b"", b"", LIST_FIELD, list];
        if let Some(r) = r#ref {
            parts[1] = LIST_REF;
            parts[2] = r;
        }
        self.push_frame_parts(&parts, b"}");
    }

    /// Appends a whole reply frame made of `parts` then `tail`.
    fn push_frame_parts(&mut self, parts: &[&[u8]], tail: &[u8]) {
        self.close_batch();
        let len = parts.iter().map(|p| p.len()).sum::<usize>() + tail.len();
        self.buf.reserve(websocket::MAX_HEADER + len);
        match self.framing {
            LengthDelimited => self.buf.put_u32(len as u32),
            WebSocket => websocket::put_text_header(&mut self.buf, len),
            Lines => {}
        }
        for p in parts {
            self.buf.put_slice(p);
        }
        self.buf.put_slice(tail);
        if self.framing == Framing::Lines {
            self.buf.put_u8(b'\n');
        }
    }

    /// Appends a reply, serializing it.
    pub fn push_reply(&mut self, reply: &Reply) {
        self.push_frame(&reply.to_json());
    }

    fn close_batch(&mut self) {
        if let Some(start) = self.open_batch.take() {
            self.buf.put_slice(MESSAGE_FRAME_TAIL);
            match self.framing {
                LengthDelimited => {
                    let len = (self.buf.len() - start - 4) as u32;
                    self.buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
                }
                Lines => self.buf.put_u8(b'\n'),
                WebSocket => websocket::patch_text_header(&mut self.buf, start),
            }
            let end = self.buf.len();
            for (at, _) in self.private.iter_mut().rev() {
                if *at != OPEN {
                    break;
                }
                *at = end;
            }
        }
    }

    /// The private messages whose frames are not entirely within the first `written` bytes:
    /// what a session that failed mid-write did not deliver, oldest first.
    pub fn unwritten_private(&mut self, written: usize) -> impl Iterator<Item = &Private> {
        self.close_batch();
        self.private
            .iter()
            .filter(move |(end, _)| *end > written)
            .map(|(_, p)| &**p)
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Makes room for `items` at once, so that a batch is copied into one allocation
    /// instead of a buffer that grows (and is copied) several times.
    pub fn reserve_for<'a>(&mut self, items: impl IntoIterator<Item = &'a Out>) {
        // Each item: its bytes, a separator or a line end, and at worst a frame of its own.
        let frame = websocket::MAX_HEADER + MESSAGE_FRAME_HEAD.len() + MESSAGE_FRAME_TAIL.len();
        let n: usize = items.into_iter().map(|item| item.encoded_len() + 1).sum();
        self.buf.reserve(n + frame);
    }

    /// How many bytes are waiting.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Closes the open batch and returns everything to write. The writer is then empty.
    #[cfg(test)]
    pub fn take(&mut self) -> BytesMut {
        self.close_batch();
        self.private.clear();
        self.buf.split()
    }

    /// Closes the open batch and gives the bytes to write; call [`FrameWriter::clear`]
    /// once they are written.
    pub fn pending(&mut self) -> &[u8] {
        self.close_batch();
        &self.buf
    }

    /// Forgets everything and frees the buffer: an idle session holds no write memory.
    pub fn clear(&mut self) {
        self.buf = BytesMut::new();
        self.open_batch = None;
        self.private = Vec::new();
    }
}

impl Sink for FrameWriter {
    fn reserve(&mut self, items: &std::collections::VecDeque<Queued>) {
        self.reserve_for(items.iter().map(|q| &q.item));
    }

    fn notice(&mut self, notice: &Notice) {
        self.push_notice(notice);
    }

    fn item(&mut self, item: &Out) {
        self.push(item);
    }
}

use Framing::{LengthDelimited, Lines, WebSocket};

#[cfg(test)]
mod tests {
    use super::*;
    use simpletextim_proto::ClientCodec;
    use tokio_util::codec::Decoder;

    fn msg(id: u64, text: &str) -> ChatMessage {
        ChatMessage {
            r#ref: None,
            user_id: UserId::new("bob").unwrap(),
            message: text.into(),
            to: Recipient::Everyone,
            id,
            ts: 1_764_168_000_000 + id,
        }
    }

    fn decode_all(mut bytes: BytesMut) -> Vec<Reply> {
        let mut codec = ClientCodec::new();
        let mut out = Vec::new();
        while let Some(r) = codec.decode(&mut bytes).unwrap() {
            out.push(r);
        }
        assert!(bytes.is_empty());
        out
    }

    fn chat(from: &str, text: &str, to: Recipient, id: u64, ts: u64) -> ChatMessage {
        ChatMessage {
            r#ref: None,
            user_id: UserId::new(from).unwrap(),
            message: text.to_owned(),
            to,
            id,
            ts,
        }
    }

    #[test]
    fn a_chat_head_finished_is_byte_for_byte_the_serialized_message() {
        let cases = [
            chat("bob", "hello", Recipient::Everyone, 1, 2),
            chat(
                "B.o-b_9",
                "say \"hi\" \\ back/slash",
                Recipient::Everyone,
                41,
                1764168000123,
            ),
            chat(
                "x",
                "wörld 中文 🎉 \u{7f}",
                Recipient::User(UserId::new("Alice").unwrap()),
                u64::MAX,
                0,
            ),
        ];
        for m in cases {
            let obj = ChatHead::new(&m.user_id, &m.message).finish(m.to.as_str(), m.id, m.ts);
            assert_eq!(obj, encode_chat(&m), "{m:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn chat_heads_match_serde_for_any_text(
            from in "[A-Za-z0-9_.-]{1,32}",
            text in "\\PC{0,140}|[\\x00-\\x7f]{0,40}",
            to in proptest::option::of("[A-Za-z0-9_.-]{1,32}"),
            id: u64,
            ts: u64,
        ) {
            let to = match to {
                Some(u) => Recipient::User(UserId::new(&u).unwrap()),
                None => Recipient::Everyone,
            };
            let m = chat(&from, &text, to, id, ts);
            let obj = ChatHead::new(&m.user_id, &m.message).finish(m.to.as_str(), m.id, m.ts);
            proptest::prop_assert_eq!(obj, encode_chat(&m));
        }
    }

    #[test]
    fn consecutive_chats_share_one_frame_and_decode_exactly() {
        let mut w = FrameWriter::new();
        let a = msg(1, "hello");
        let b = msg(2, "wörld \"quoted\"");
        w.push(&Out::Chat(encode_chat(&a)));
        w.push(&Out::Chat(encode_chat(&b)));
        let joined = Reply::Joined {
            user_id: UserId::new("carol").unwrap(),
        };
        w.push_notice(&Notice::joined(&UserId::new("carol").unwrap()));
        let c = msg(3, "again");
        w.push(&Out::Chat(encode_chat(&c)));
        let replies = decode_all(w.take());
        assert_eq!(
            replies,
            vec![
                Reply::Message {
                    r#ref: None,
                    messages: vec![a.clone(), b.clone()]
                },
                joined,
                Reply::Message {
                    r#ref: None,
                    messages: vec![c]
                },
            ]
        );
        // The joined frame is byte-for-byte what Reply serializes to.
        let mut w = FrameWriter::new();
        w.push_chat(&encode_chat(&a));
        w.push_chat(&encode_chat(&b));
        let bytes = w.take();
        assert_eq!(
            &bytes[4..],
            &Reply::Message {
                r#ref: None,
                messages: vec![a, b]
            }
            .to_json()[..]
        );
    }

    #[test]
    fn reserve_for_makes_room_for_the_whole_batch_at_once() {
        let mut items = vec![Out::Chat(encode_chat(&msg(100, "first")))];
        items.extend((0..50).map(|i| Out::Chat(encode_chat(&msg(i, "some text")))));
        let mut w = FrameWriter::new();
        w.reserve_for(&items);
        let room = w.buf.capacity();
        for item in &items {
            w.push(item);
        }
        let bytes = w.take();
        assert!(bytes.len() <= room, "{} > {room}", bytes.len());
        assert_eq!(decode_all(bytes).len(), 1);
    }

    #[test]
    fn big_batches_split_into_several_frames() {
        let mut w = FrameWriter::new();
        let text = "x".repeat(140);
        let n = 1000;
        for i in 0..n {
            w.push_chat(&encode_chat(&msg(i, &text)));
        }
        let replies = decode_all(w.take());
        assert!(replies.len() > 1);
        let ids: Vec<u64> = replies
            .into_iter()
            .flat_map(|r| match r {
                Reply::Message { messages, .. } => messages,
                other => panic!("unexpected {other:?}"),
            })
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn a_notice_from_its_parts_is_what_serde_writes_in_every_framing_and_closes_a_batch() {
        let carol = UserId::new("carol").unwrap();
        for framing in [Framing::LengthDelimited, Framing::Lines, Framing::WebSocket] {
            for (notice, reply) in [
                (
                    Notice::joined(&carol),
                    Reply::Joined {
                        user_id: carol.clone(),
                    },
                ),
                (
                    Notice::left(&carol),
                    Reply::Left {
                        user_id: carol.clone(),
                    },
                ),
            ] {
                let mut w = FrameWriter::with_framing(framing);
                w.push_chat(&encode_chat(&msg(1, "hi")));
                w.push_notice(&notice);
                w.push_chat(&encode_chat(&msg(2, "again")));
                let mut expected = FrameWriter::with_framing(framing);
                expected.push_chat(&encode_chat(&msg(1, "hi")));
                expected.push_frame(&reply.to_json());
                expected.push_chat(&encode_chat(&msg(2, "again")));
                assert_eq!(w.take(), expected.take(), "{framing:?}");
            }
        }
    }

    #[test]
    fn a_list_from_its_parts_is_what_serde_writes_in_both_framings() {
        use simpletextim_proto::Ref;
        let list: Vec<UserId> = ["alice", "Bob"]
            .iter()
            .map(|n| UserId::new(n).unwrap())
            .collect();
        let array = serde_json::to_vec(&list).unwrap();
        for r in [None, Some(Ref::Number(7)), Some(Ref::text("r\"1").unwrap())] {
            for ids in [&list[..], &[]] {
                let array = if ids.is_empty() {
                    b"[]".to_vec()
                } else {
                    array.clone()
                };
                let want = Reply::List {
                    r#ref: r.clone(),
                    list: ids.to_vec(),
                }
                .to_json();
                let r = r.as_ref().map(encode_ref);
                for framing in [Framing::LengthDelimited, Framing::Lines, Framing::WebSocket] {
                    let mut w = FrameWriter::with_framing(framing);
                    w.push_chat(&encode_chat(&msg(1, "hi")));
                    w.push_list(r.as_deref(), &array);
                    let mut expected = FrameWriter::with_framing(framing);
                    expected.push_chat(&encode_chat(&msg(1, "hi")));
                    expected.push_frame(&want);
                    assert_eq!(w.take(), expected.take());
                }
            }
        }
    }

    #[test]
    fn lines_framing_writes_one_object_per_line() {
        let mut w = FrameWriter::with_framing(Framing::Lines);
        let (a, b) = (msg(1, "hi"), msg(2, "there"));
        w.push_chat(&encode_chat(&a));
        w.push_chat(&encode_chat(&b));
        w.push_reply(&Reply::Joined {
            user_id: UserId::new("carol").unwrap(),
        });
        w.push_chat(&encode_chat(&a));
        let bytes = w.take();
        let text = std::str::from_utf8(&bytes).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert!(text.ends_with('\n'));
        let batch = |m: Vec<ChatMessage>| {
            String::from_utf8(
                Reply::Message {
                    r#ref: None,
                    messages: m,
                }
                .to_json(),
            )
            .unwrap()
        };
        assert_eq!(
            lines,
            [
                batch(vec![a.clone(), b]).as_str(),
                r#"{"command":"joined","user_id":"carol"}"#,
                batch(vec![a]).as_str(),
            ]
        );
    }

    fn private(id: u64, text: &str) -> Out {
        let msg = chat(
            "bob",
            text,
            Recipient::User(UserId::new("alice").unwrap()),
            id,
            id,
        );
        Out::Private(Arc::new(Private {
            obj: encode_chat(&msg),
            from: msg.user_id,
            text: msg.message,
            id,
            ts: id,
        }))
    }

    fn ids<'a>(msgs: impl Iterator<Item = &'a Private>) -> Vec<u64> {
        msgs.map(|m| m.id).collect()
    }

    #[test]
    fn unwritten_private_are_those_whose_frames_were_not_wholly_written() {
        for framing in [Framing::LengthDelimited, Framing::Lines, Framing::WebSocket] {
            let mut w = FrameWriter::with_framing(framing);
            w.push(&private(1, "a"));
            w.push_reply(&Reply::Joined {
                user_id: UserId::new("carol").unwrap(),
            });
            let first_len = w.pending().len();
            // A public message and a private one share the second frame.
            w.push(&Out::Chat(encode_chat(&msg(2, "public"))));
            w.push(&private(3, "b"));
            let all = w.pending().len();
            assert_eq!(ids(w.unwritten_private(0)), [1, 3]);
            // The first frame (private 1 alone) ends before the joined notice.
            let first_frame = {
                let mut alone = FrameWriter::with_framing(framing);
                alone.push(&private(1, "a"));
                alone.pending().len()
            };
            assert_eq!(ids(w.unwritten_private(first_frame - 1)), [1, 3]);
            assert_eq!(ids(w.unwritten_private(first_frame)), [3]);
            assert_eq!(ids(w.unwritten_private(first_len)), [3]);
            assert_eq!(ids(w.unwritten_private(all - 1)), [3]);
            assert_eq!(ids(w.unwritten_private(all)), Vec::<u64>::new());
            // The bytes are the ordinary frames.
            assert_eq!(
                decode_all_framed(w.take(), framing)
                    .iter()
                    .map(|r| match r {
                        Reply::Message { messages, .. } => messages.len(),
                        _ => 0,
                    })
                    .collect::<Vec<_>>(),
                [1, 0, 2]
            );
            assert_eq!(ids(w.unwritten_private(0)), Vec::<u64>::new());
        }
    }

    fn decode_all_framed(bytes: BytesMut, framing: Framing) -> Vec<Reply> {
        match framing {
            Framing::LengthDelimited => decode_all(bytes),
            Framing::Lines => std::str::from_utf8(&bytes)
                .unwrap()
                .lines()
                .map(|l| Reply::from_json(l.as_bytes()).unwrap())
                .collect(),
            Framing::WebSocket => {
                use tungstenite::protocol::frame::FrameHeader;
                use tungstenite::protocol::frame::coding::{Data, OpCode};
                let mut out = Vec::new();
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let mut cursor = std::io::Cursor::new(rest);
                    let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
                    assert!(header.is_final && header.mask.is_none());
                    assert_eq!(header.opcode, OpCode::Data(Data::Text));
                    let start = cursor.position() as usize;
                    // The shortest length form.
                    assert_eq!(start, header.len(len));
                    let end = start + len as usize;
                    out.push(Reply::from_json(&rest[start..end]).unwrap());
                    rest = &rest[end..];
                }
                out
            }
        }
    }

    #[test]
    fn websocket_batches_of_every_length_form_decode_in_order() {
        // One short chat (7-bit length), a few (16-bit), many (64-bit is never needed: a
        // batch stops growing at 64 KiB, but its last object may carry it just over).
        for n in [1u64, 5, 3000] {
            let mut w = FrameWriter::with_framing(Framing::WebSocket);
            let text = if n == 1 {
                "a".to_owned()
            } else {
                "x".repeat(140)
            };
            for i in 0..n {
                w.push(&Out::Chat(encode_chat(&msg(i, &text))));
            }
            w.push_reply(&Reply::Joined {
                user_id: UserId::new("carol").unwrap(),
            });
            let replies = decode_all_framed(w.take(), Framing::WebSocket);
            let ids: Vec<u64> = replies
                .iter()
                .flat_map(|r| match r {
                    Reply::Message { messages, .. } => messages.iter().map(|m| m.id).collect(),
                    _ => vec![],
                })
                .collect();
            assert_eq!(ids, (0..n).collect::<Vec<_>>());
            assert!(matches!(replies.last(), Some(Reply::Joined { .. })));
        }
    }

    #[test]
    fn an_out_stays_small_with_echoes_boxed() {
        assert_eq!(std::mem::size_of::<Out>(), std::mem::size_of::<Bytes>() + 8);
    }

    #[test]
    fn an_echo_is_the_shared_object_with_the_ref_in_front_in_the_same_batch() {
        let a = encode_chat(&msg(1, "a"));
        let b = encode_chat(&msg(2, "b \"quoted\""));
        for (r, json) in [
            (simpletextim_proto::Ref::text("x\"y").unwrap(), r#""x\"y""#),
            (
                simpletextim_proto::Ref::Number(9_007_199_254_740_991),
                "9007199254740991",
            ),
        ] {
            let encoded = encode_ref(&r);
            assert_eq!(&encoded[..], json.as_bytes());
            let mut w = FrameWriter::new();
            w.push(&Out::Chat(a.clone()));
            w.push(&Echo::of(Some(&encoded), b.clone()));
            w.push(&Out::Chat(a.clone()));
            let item = Echo::of(Some(&encoded), b.clone());
            assert_eq!(item.encoded_len(), b.len() + 7 + json.len());
            let bytes = w.take();
            let want = format!(
                r#"{{"command":"message","messages":[{},{{"ref":{json},{},{}]}}"#,
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b[1..]),
                String::from_utf8_lossy(&a),
            );
            assert_eq!(String::from_utf8_lossy(&bytes[4..]), want);
            // Byte for byte what serde writes for the message with its ref.
            let with_ref = ChatMessage {
                r#ref: Some(r.clone()),
                ..msg(2, "b \"quoted\"")
            };
            assert!(want.contains(&String::from_utf8(encode_chat(&with_ref).to_vec()).unwrap()));
            let replies = decode_all(bytes);
            let [
                Reply::Message {
                    r#ref: None,
                    messages,
                },
            ] = &replies[..]
            else {
                panic!("one message frame, got {replies:?}");
            };
            assert_eq!(messages, &vec![msg(1, "a"), with_ref, msg(1, "a")]);
        }
        // Without a ref, the plain shared object.
        assert!(matches!(Echo::of(None, b.clone()), Out::Chat(o) if o == b));
    }

    #[test]
    fn line_codec_reads_commands_skips_blank_lines_and_limits_length() {
        let mut c = LineCodec::new(64);
        let mut buf = BytesMut::from(
            &b"{\"command\":\"list\"}\r\n\n  \r\nnot json\n{\"command\":\"exit\"}\n{\"comm"[..],
        );
        assert_eq!(
            c.decode(&mut buf).unwrap(),
            Some(Ok(Request::new(simpletextim_proto::Command::List)))
        );
        match c.decode(&mut buf).unwrap() {
            Some(Err(f)) => assert_eq!(
                f.failure.error_code,
                simpletextim_proto::ErrorCode::BadRequest
            ),
            other => panic!("expected a 400, got {other:?}"),
        }
        assert_eq!(
            c.decode(&mut buf).unwrap(),
            Some(Ok(Request::new(simpletextim_proto::Command::Exit)))
        );
        // A partial line waits for more.
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[b'x'; 100]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(CodecError::FrameTooLarge { max: 64 })
        ));
    }
}
#[cfg(test)]
mod fuzz;
pub(crate) mod websocket;
