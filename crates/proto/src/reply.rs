//! Server → client replies.

use serde::{Deserialize, Serialize};

use crate::types::{ErrorCode, Failure, Recipient, Ref, UserId};

/// One chat message, as the server delivers it inside a [`Reply::Message`].
///
/// `to`, `id` and `ts` are protocol extensions: a server that omits them gives `"*"`, 0 and 0.
/// `ref` (protocol 1.1) is only in the sender's own copy of a message it sent with a `ref`
/// (the echo that answers its `send`); it comes first in the object.
///
/// ```
/// use simpletextim_proto::ChatMessage;
/// let m: ChatMessage = serde_json::from_str(
///     r#"{"user_id":"bob","message":"where is alice?","to":"alice","id":41,"ts":1764168000123}"#,
/// ).unwrap();
/// assert_eq!(m.user_id.as_str(), "bob");
/// assert!(m.is_private());
/// assert_eq!(m.r#ref, None);
///
/// let echo: ChatMessage = serde_json::from_str(
///     r#"{"ref":"m1","user_id":"bob","message":"hi","to":"*","id":42,"ts":1764168000124}"#,
/// ).unwrap();
/// assert_eq!(echo.r#ref, Some(simpletextim_proto::Ref::text("m1").unwrap()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The `ref` of the `send` this message answers: only in the sender's own copy.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<Ref>,
    /// The sender.
    pub user_id: UserId,
    /// The text. Kept as a plain string: text from the network is displayed, never trusted,
    /// so a client should still sanitize it before writing it to a terminal.
    pub message: String,
    /// `Everyone` for a public message, the recipient for a private one.
    #[serde(default)]
    pub to: Recipient,
    /// Unique, increasing in the order the server accepted the messages.
    #[serde(default)]
    pub id: u64,
    /// When the server accepted the message, in Unix milliseconds.
    #[serde(default)]
    pub ts: u64,
}

impl ChatMessage {
    /// Whether this is a private message.
    pub fn is_private(&self) -> bool {
        matches!(self.to, Recipient::User(_))
    }
}

/// A reply from the server to a client.
///
/// Non-exhaustive, and with a catch-all [`Reply::Unknown`]: a newer server may add reply
/// kinds, and a client built on this crate skips them instead of losing its connection.
///
/// ```
/// use simpletextim_proto::{ErrorCode, Failure, Ref, Reply};
/// let r: Reply = serde_json::from_str(
///     r#"{"command":"fail","fail":{"error_code":404,"reason":"no such user: carol"}}"#,
/// ).unwrap();
/// assert_eq!(r, Reply::fail(ErrorCode::NotFound, "no such user: carol"));
/// assert_eq!(
///     serde_json::to_string(&Reply::List { r#ref: None, list: vec!["alice".parse().unwrap()] })
///         .unwrap(),
///     r#"{"command":"list","list":["alice"]}"#
/// );
/// // Protocol 1.1: the reply to a command with a `ref` carries it.
/// let r = Reply::List { r#ref: None, list: vec![] }.with_ref(Some(Ref::Number(3)));
/// assert_eq!(r.to_json(), br#"{"command":"list","ref":3,"list":[]}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Reply {
    /// Chat messages, possibly several in one frame. Also the login acknowledgement, which
    /// carries the messages kept while the user was offline (possibly none).
    Message {
        /// The `ref` of the `login` this frame acknowledges (protocol 1.1); `None` in
        /// every other `message` frame.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
        /// The messages, oldest first.
        messages: Vec<ChatMessage>,
    },
    /// The users logged in now, the asker included, sorted case-insensitively.
    List {
        /// The `ref` of the `list` command this answers (protocol 1.1).
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
        /// Their ids.
        list: Vec<UserId>,
    },
    /// A request failed.
    Fail {
        /// The `ref` of the command that failed (protocol 1.1), when it had a valid one.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
        /// Why.
        fail: Failure,
    },
    /// Protocol 1.1: a page of one conversation's kept messages, the reply to `history`.
    ///
    /// ```
    /// use simpletextim_proto::{Recipient, Ref, Reply};
    /// let json = r#"{"command":"history","ref":9,"with":"*","messages":[{"user_id":"bob","message":"hi","to":"*","id":41,"ts":1764168000123}],"more":false}"#;
    /// let r = Reply::from_json(json.as_bytes()).unwrap();
    /// let Reply::History { r#ref, with, messages, more } = &r else { panic!("not history") };
    /// assert_eq!((r#ref, with, messages.len(), more), (&Some(Ref::Number(9)), &Recipient::Everyone, 1, &false));
    /// assert_eq!(r.to_json(), json.as_bytes());
    /// ```
    History {
        /// The `ref` of the `history` command this answers.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
        /// The conversation: `Everyone` for the public one, a user for the private
        /// conversation between the asker and that user.
        with: Recipient,
        /// The messages, oldest first.
        messages: Vec<ChatMessage>,
        /// Whether the kept history goes on past this page in the direction asked (older
        /// for the newest page or `before`, newer for `after`).
        more: bool,
    },
    /// Another user logged in.
    Joined {
        /// Who.
        user_id: UserId,
    },
    /// Another user's session ended.
    Left {
        /// Who.
        user_id: UserId,
    },
    /// A frame that is not a reply this crate can read: not JSON, not an object with a
    /// string `command`, or a known kind whose fields do not fit (a newer server that
    /// changed one, or a server bug). [`ClientCodec`](crate::ClientCodec), and so
    /// [`Client`](crate::Client), yields it instead of failing, because the framing is
    /// intact: skip it like [`Reply::Unknown`] (and perhaps log it); the next reply follows
    /// as usual.
    ///
    /// No server sends it: it is never parsed from JSON (`{"command":"unreadable"}` parses as
    /// [`Reply::Unknown`]), and it serializes as
    /// `{"command":"unreadable","kind":…,"error":…}` only so that it can be logged.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use simpletextim_proto::{ClientCodec, Reply};
    /// use tokio_util::codec::Decoder;
    ///
    /// let json = br#"{"command":"joined","user_id":42}"#;
    /// let mut frame = BytesMut::new();
    /// frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    /// frame.extend_from_slice(json);
    /// let Some(Reply::Unreadable { kind, error }) = ClientCodec::new().decode(&mut frame)? else {
    ///     panic!("not unreadable");
    /// };
    /// assert_eq!(kind.as_deref(), Some("joined"));
    /// assert!(error.contains("invalid type"), "{error}");
    /// # Ok::<(), simpletextim_proto::CodecError>(())
    /// ```
    #[serde(skip_deserializing)]
    Unreadable {
        /// The frame's `command`, when one can be read (`"message"`…).
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        /// Why it cannot be read: the JSON parser's message.
        error: String,
    },
    /// A reply kind this crate does not know (its `command` is none of the above), from a
    /// newer server: skip it. Its fields are not kept. This crate never produces it; it
    /// serializes as `{"command":"unknown"}`.
    ///
    /// ```
    /// use simpletextim_proto::Reply;
    /// let r = Reply::from_json(br#"{"command":"typing","user_id":"bob"}"#).unwrap();
    /// assert_eq!(r, Reply::Unknown);
    /// ```
    #[serde(other)]
    Unknown,
}

impl Reply {
    /// A `fail` reply.
    pub fn fail(error_code: ErrorCode, reason: impl Into<String>) -> Reply {
        Reply::Fail {
            r#ref: None,
            fail: Failure::new(error_code, reason),
        }
    }

    /// The reply with its `ref` set to `r` (protocol 1.1), for the kinds that answer a
    /// command (`message` as the login ack, `list`, `fail`, `history`); other kinds are
    /// returned unchanged.
    pub fn with_ref(mut self, r: Option<Ref>) -> Reply {
        match &mut self {
            Reply::Message { r#ref, .. }
            | Reply::List { r#ref, .. }
            | Reply::Fail { r#ref, .. }
            | Reply::History { r#ref, .. } => *r#ref = r,
            _ => {}
        }
        self
    }

    /// The reply's top-level `ref` (protocol 1.1): the `ref` of the command it answers.
    /// A `send`'s answer is its echo, whose `ref` is in the message object instead
    /// (the `r#ref` of its [`ChatMessage`]).
    pub fn request_ref(&self) -> Option<&Ref> {
        match self {
            Reply::Message { r#ref, .. }
            | Reply::List { r#ref, .. }
            | Reply::Fail { r#ref, .. }
            | Reply::History { r#ref, .. } => r#ref.as_ref(),
            _ => None,
        }
    }

    /// Serializes the reply to its JSON payload (without the frame header).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect(
            "a Reply serializes: writing to a Vec cannot fail, every map key is a string, \
             and every field's Serialize impl writes a string, a number or a sequence of them",
        )
    }

    /// Parses a reply from the JSON payload of a frame.
    ///
    /// A payload whose `command` is a string this crate does not know parses as
    /// [`Reply::Unknown`].
    ///
    /// # Errors
    /// The `serde_json` error when the payload is not a JSON object with a string
    /// `command`, or when a known reply's fields are wrong.
    pub fn from_json(json: &[u8]) -> Result<Reply, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// Reads the payload of a well-formed frame: the reply, or [`Reply::Unreadable`] when
    /// [`Reply::from_json`] refuses it. Never fails: one frame, one reply.
    pub(crate) fn from_frame(json: &[u8]) -> Reply {
        Reply::from_json(json).unwrap_or_else(|e| {
            /// Just the `command` of an object, ignoring its other fields.
            #[derive(Deserialize)]
            struct Kind {
                command: String,
            }
            Reply::Unreadable {
                kind: serde_json::from_slice::<Kind>(json).ok().map(|k| k.command),
                error: e.to_string(),
            }
        })
    }
}

impl From<Failure> for Reply {
    fn from(fail: Failure) -> Reply {
        Reply::Fail { r#ref: None, fail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples_parse_and_serialize_back() {
        for s in [
            r#"{"command":"message","messages":[{"user_id":"bob","message":"where is alice?","to":"alice","id":41,"ts":1764168000123}]}"#,
            r#"{"command":"list","list":["alice","bob","mark"]}"#,
            r#"{"command":"fail","fail":{"error_code":404,"reason":"no such user: carol"}}"#,
            r#"{"command":"joined","user_id":"carol"}"#,
            r#"{"command":"left","user_id":"carol"}"#,
            r#"{"command":"message","messages":[]}"#,
        ] {
            let r = Reply::from_json(s.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(r.to_json()).unwrap(), s);
        }
    }

    #[test]
    fn seed_message_without_extensions() {
        let r = Reply::from_json(
            br#"{"command":"message","messages":[{"user_id":"a","message":"hi"}]}"#,
        )
        .unwrap();
        let Reply::Message { messages, .. } = r else {
            panic!("not a message reply")
        };
        assert_eq!(messages[0].to, Recipient::Everyone);
        assert_eq!((messages[0].id, messages[0].ts), (0, 0));
    }
}
