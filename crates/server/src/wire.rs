//! Server-side encoding: what goes into a session's outbox, and how a batch of outbox items
//! becomes frames on the socket.
//!
//! A chat message is serialized once, when it is accepted ([`encode_chat`]); every recipient
//! gets a cheap clone of the same [`Bytes`]. A session's writer then joins the chat messages
//! queued for it into one `message` frame ([`FrameWriter`]): a copy, not a serialization.

use bytes::{BufMut, Bytes, BytesMut};
use simpletextim_proto::{ChatMessage, Reply};

/// Chat messages joined into one frame stop growing past this many bytes (another frame
/// follows).
const MAX_BATCH_FRAME: usize = 64 * 1024;

/// One item of a session's outbox.
#[derive(Debug, Clone)]
pub enum Out {
    /// One chat message object, already JSON (`{"user_id":…,"message":…,…}`).
    Chat(Bytes),
    /// A whole reply payload, already JSON (`{"command":"joined",…}`).
    Frame(Bytes),
}

/// Serializes a chat message object once, for every recipient.
pub fn encode_chat(msg: &ChatMessage) -> Bytes {
    // Serializing a struct of strings and integers cannot fail.
    Bytes::from(serde_json::to_vec(msg).unwrap_or_default())
}

/// Serializes a whole reply.
pub fn encode_reply(reply: &Reply) -> Bytes {
    Bytes::from(reply.to_json())
}

const MESSAGE_FRAME_HEAD: &[u8] = br#"{"command":"message","messages":["#;
const MESSAGE_FRAME_TAIL: &[u8] = b"]}";

/// Builds length-prefixed frames into one write buffer, joining consecutive chat messages
/// into shared `message` frames.
#[derive(Debug, Default)]
pub struct FrameWriter {
    buf: BytesMut,
    /// Offset of the length header of the open `message` frame, if one is open.
    open_batch: Option<usize>,
}

impl FrameWriter {
    /// An empty writer.
    pub fn new() -> FrameWriter {
        FrameWriter::default()
    }

    /// Appends one outbox item.
    pub fn push(&mut self, item: &Out) {
        match item {
            Out::Chat(obj) => self.push_chat(obj),
            Out::Frame(payload) => self.push_frame(payload),
        }
    }

    /// Appends a chat message object to the open `message` frame, opening one if needed.
    pub fn push_chat(&mut self, obj: &[u8]) {
        match self.open_batch {
            Some(start) if self.buf.len() - start + obj.len() < MAX_BATCH_FRAME => {
                self.buf.put_u8(b',');
            }
            _ => {
                self.close_batch();
                self.open_batch = Some(self.buf.len());
                self.buf.put_u32(0); // patched in close_batch
                self.buf.put_slice(MESSAGE_FRAME_HEAD);
            }
        }
        self.buf.put_slice(obj);
    }

    /// Appends a whole reply frame.
    pub fn push_frame(&mut self, payload: &[u8]) {
        self.close_batch();
        self.buf.reserve(4 + payload.len());
        // Replies the server builds are far below the 16 MiB limit except a `list` of
        // hundreds of thousands of users, which still fits a u32 length.
        self.buf.put_u32(payload.len() as u32);
        self.buf.put_slice(payload);
    }

    /// Appends a reply, serializing it.
    pub fn push_reply(&mut self, reply: &Reply) {
        self.push_frame(&reply.to_json());
    }

    fn close_batch(&mut self) {
        if let Some(start) = self.open_batch.take() {
            self.buf.put_slice(MESSAGE_FRAME_TAIL);
            let len = (self.buf.len() - start - 4) as u32;
            self.buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// How many bytes are waiting.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Closes the open batch and returns everything to write. The writer is then empty.
    pub fn take(&mut self) -> BytesMut {
        self.close_batch();
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simpletextim_proto::{ClientCodec, Recipient, UserId};
    use tokio_util::codec::Decoder;

    fn msg(id: u64, text: &str) -> ChatMessage {
        ChatMessage {
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
        w.push(&Out::Frame(encode_reply(&joined)));
        let c = msg(3, "again");
        w.push(&Out::Chat(encode_chat(&c)));
        let replies = decode_all(w.take());
        assert_eq!(
            replies,
            vec![
                Reply::Message {
                    messages: vec![a.clone(), b.clone()]
                },
                joined,
                Reply::Message { messages: vec![c] },
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
                messages: vec![a, b]
            }
            .to_json()[..]
        );
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
                Reply::Message { messages } => messages,
                other => panic!("unexpected {other:?}"),
            })
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, (0..n).collect::<Vec<_>>());
    }
}
