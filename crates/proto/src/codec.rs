//! Framing: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! Both codecs wrap [`LengthDelimitedCodec`] (with its default header) and add JSON on top,
//! with separate limits for the frames they read and the frames they write. A frame whose
//! length header is over the read limit is refused before any of it is buffered, so no
//! allocation is ever sized from an untrusted length beyond the limit.

use std::io;

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::command::{Command, Rejected, Request};
use crate::reply::Reply;

/// Default limit of a client → server frame's payload, in bytes.
pub const DEFAULT_MAX_COMMAND_FRAME: usize = 4096;
/// Default limit of a server → client frame's payload, in bytes (16 MiB).
pub const DEFAULT_MAX_REPLY_FRAME: usize = 16 * 1024 * 1024;

/// A fatal framing error: after it the stream cannot be resynchronised.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A frame's length is over the limit (the server answers `fail 413` and closes).
    #[error("frame over the size limit of {max} bytes")]
    FrameTooLarge {
        /// The limit that was exceeded.
        max: usize,
    },
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn length_codec(max_read: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_read)
        .new_codec()
}

fn map_read_error(e: io::Error, max: usize) -> CodecError {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
    {
        CodecError::FrameTooLarge { max }
    } else {
        CodecError::Io(e)
    }
}

/// Writes one frame (header and payload) to `dst`.
///
/// # Errors
/// [`CodecError::FrameTooLarge`] when `payload` is longer than `max`.
pub fn encode_frame(payload: &[u8], max: usize, dst: &mut BytesMut) -> Result<(), CodecError> {
    if payload.len() > max || u32::try_from(payload.len()).is_err() {
        return Err(CodecError::FrameTooLarge { max });
    }
    dst.reserve(4 + payload.len());
    dst.put_u32(payload.len() as u32);
    dst.put_slice(payload);
    Ok(())
}

/// The server's side of the codec: decodes [`Request`]s (a command and its `ref`), encodes
/// [`Reply`]s.
///
/// A frame that is not a valid request decodes to `Ok(Some(Err(rejected)))`: a recoverable
/// error the server answers with `fail` (carrying the request's `ref` when it had a valid
/// one, [`Rejected::into_reply`]) before reading on. A frame over the size limit is a fatal
/// `Err(CodecError::FrameTooLarge)`.
///
/// ```
/// use bytes::BytesMut;
/// use simpletextim_proto::{Command, Ref, Request, ServerCodec};
/// use tokio_util::codec::Decoder;
///
/// let mut buf = BytesMut::new();
/// for json in [&br#"{"command":"list","ref":1}"#[..], br#"{"command":"nope","ref":"x"}"#] {
///     buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
///     buf.extend_from_slice(json);
/// }
/// let mut codec = ServerCodec::new();
/// let first = codec.decode(&mut buf)?.expect("a whole frame");
/// assert_eq!(first, Ok(Request::with_ref(Command::List, Ref::Number(1))));
/// let second = codec.decode(&mut buf)?.expect("a whole frame").unwrap_err();
/// assert_eq!(second.r#ref, Some(Ref::text("x").unwrap()));
/// # Ok::<(), simpletextim_proto::CodecError>(())
/// ```
#[derive(Debug)]
pub struct ServerCodec {
    inner: LengthDelimitedCodec,
    max_read: usize,
    max_write: usize,
}

impl ServerCodec {
    /// A codec with the default limits (4096-byte commands, 16 MiB replies).
    pub fn new() -> ServerCodec {
        ServerCodec::with_limits(DEFAULT_MAX_COMMAND_FRAME, DEFAULT_MAX_REPLY_FRAME)
    }

    /// A codec reading commands of at most `max_read` bytes and writing replies of at most
    /// `max_write` bytes.
    pub fn with_limits(max_read: usize, max_write: usize) -> ServerCodec {
        ServerCodec {
            inner: length_codec(max_read),
            max_read,
            max_write,
        }
    }

    /// The limit of a frame this codec writes.
    pub fn max_write(&self) -> usize {
        self.max_write
    }
}

impl Default for ServerCodec {
    fn default() -> Self {
        ServerCodec::new()
    }
}

impl Decoder for ServerCodec {
    type Item = Result<Request, Rejected>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        match self.inner.decode(src) {
            Ok(Some(frame)) => Ok(Some(Request::from_json(&frame))),
            Ok(None) => Ok(None),
            Err(e) => Err(map_read_error(e, self.max_read)),
        }
    }
}

impl Encoder<&Reply> for ServerCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&item.to_json(), self.max_write, dst)
    }
}

/// The client's side of the codec: decodes [`Reply`]s, encodes [`Command`]s and
/// [`Request`]s.
///
/// Every frame decodes to one reply. A frame whose payload is not a reply this crate can
/// read decodes to [`Reply::Unreadable`], not an error: the framing is intact, so the next
/// frame follows, and a `FramedRead` (which ends its stream after any decoder error) keeps
/// going. Only a frame over the size limit or a failing socket is an error, and a fatal one.
#[derive(Debug)]
pub struct ClientCodec {
    inner: LengthDelimitedCodec,
    max_read: usize,
    max_write: usize,
}

impl ClientCodec {
    /// A codec with the default limits (16 MiB replies, 4096-byte commands).
    pub fn new() -> ClientCodec {
        ClientCodec::with_limits(DEFAULT_MAX_REPLY_FRAME, DEFAULT_MAX_COMMAND_FRAME)
    }

    /// A codec reading replies of at most `max_read` bytes and writing commands of at most
    /// `max_write` bytes.
    pub fn with_limits(max_read: usize, max_write: usize) -> ClientCodec {
        ClientCodec {
            inner: length_codec(max_read),
            max_read,
            max_write,
        }
    }
}

impl Default for ClientCodec {
    fn default() -> Self {
        ClientCodec::new()
    }
}

impl Decoder for ClientCodec {
    type Item = Reply;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, CodecError> {
        match self.inner.decode(src) {
            Ok(Some(frame)) => Ok(Some(Reply::from_frame(&frame))),
            Ok(None) => Ok(None),
            Err(e) => Err(map_read_error(e, self.max_read)),
        }
    }
}

impl Encoder<&Command> for ClientCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Command, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&item.to_json(), self.max_write, dst)
    }
}

impl Encoder<&Request> for ClientCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Request, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&item.to_json(), self.max_write, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ErrorCode;

    fn frame(payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        encode_frame(payload, usize::MAX, &mut b).unwrap();
        b
    }

    #[test]
    fn decodes_command_then_recovers_after_bad_json() {
        let mut codec = ServerCodec::new();
        let mut buf = frame(b"{not json");
        buf.extend_from_slice(&frame(br#"{"command":"list"}"#));
        let first = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(first.unwrap_err().failure.error_code, ErrorCode::BadRequest);
        assert_eq!(
            codec.decode(&mut buf).unwrap().unwrap(),
            Ok(Request::new(Command::List))
        );
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn unknown_reply_kinds_decode_as_unknown_and_the_next_frame_follows() {
        let mut codec = ClientCodec::new();
        let mut buf = frame(br#"{"command":"typing","user_id":"bob","extra":[1,2]}"#);
        buf.extend_from_slice(&frame(br#"{"command":"joined","user_id":"bob"}"#));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Reply::Unknown));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Reply::Joined {
                user_id: "bob".parse().unwrap()
            })
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[tokio::test]
    async fn an_unreadable_reply_is_one_item_and_the_stream_goes_on_to_its_true_end() {
        use futures::StreamExt;
        use tokio_util::codec::FramedRead;

        let mut bytes = frame(br#"{"command":"joined","user_id":"bob"}"#);
        bytes.extend_from_slice(&frame(br#"{"command":"message","messages":[{"id":"x"}]}"#));
        bytes.extend_from_slice(&frame(br#"{"command":"left","user_id":"bob"}"#));
        let mut stream = FramedRead::new(&bytes[..], ClientCodec::new());
        let bob: crate::UserId = "bob".parse().unwrap();
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            Reply::Joined {
                user_id: bob.clone()
            }
        );
        let Reply::Unreadable { kind, error } = stream.next().await.unwrap().unwrap() else {
            panic!("expected an unreadable reply");
        };
        assert_eq!(kind.as_deref(), Some("message"));
        assert!(
            error.contains("user_id") || error.contains("invalid type"),
            "{error}"
        );
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            Reply::Left { user_id: bob }
        );
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn frames_that_are_not_replies_decode_as_unreadable() {
        let mut codec = ClientCodec::new();
        for (payload, want_kind) in [
            (&b"{not json"[..], None),
            (b"", None),
            (b"[1,2]", None),
            (br#"{"command":17}"#, None),
            (br#"{"user_id":"bob"}"#, None),
            (br#"{"command":"list","list":"alice"}"#, Some("list")),
            (
                br#"{"command":"fail","fail":{"error_code":"x"}}"#,
                Some("fail"),
            ),
        ] {
            let mut buf = frame(payload);
            match codec.decode(&mut buf).unwrap() {
                Some(Reply::Unreadable { kind, .. }) => {
                    assert_eq!(kind.as_deref(), want_kind, "{payload:?}");
                }
                other => panic!("{payload:?} decoded as {other:?}"),
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn unreadable_is_never_parsed_from_the_wire_and_serializes_for_logs() {
        let r = Reply::from_json(br#"{"command":"unreadable","error":"x"}"#).unwrap();
        assert_eq!(r, Reply::Unknown);
        let r = Reply::Unreadable {
            kind: Some("message".into()),
            error: "bad".into(),
        };
        assert_eq!(
            r.to_json(),
            br#"{"command":"unreadable","kind":"message","error":"bad"}"#
        );
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut codec = ServerCodec::new();
        let whole = frame(br#"{"command":"exit"}"#);
        let mut buf = BytesMut::from(&whole[..7]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&whole[7..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap().unwrap(),
            Ok(Request::new(Command::Exit))
        );
    }

    #[test]
    fn oversized_header_is_fatal_without_buffering() {
        let mut codec = ServerCodec::new();
        let mut buf = BytesMut::new();
        buf.put_u32(4097);
        buf.put_slice(b"{}");
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, CodecError::FrameTooLarge { max: 4096 }),
            "{err:?}"
        );
        assert!(buf.capacity() < 4097);
    }

    #[test]
    fn write_limit_is_separate_from_read_limit() {
        let mut codec = ServerCodec::with_limits(16, 64);
        let mut dst = BytesMut::new();
        let list = Reply::List {
            r#ref: None,
            list: vec![],
        };
        codec.encode(&list, &mut dst).unwrap();
        assert_eq!(&dst[4..], br#"{"command":"list","list":[]}"#);
        let big = Reply::fail(ErrorCode::BadRequest, "x".repeat(100));
        assert!(matches!(
            codec.encode(&big, &mut dst),
            Err(CodecError::FrameTooLarge { max: 64 })
        ));
    }
}
