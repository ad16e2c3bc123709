//! Client → server commands, and the [`Request`] that carries one with its `ref`.

use std::borrow::Cow;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::reply::Reply;
use crate::types::{
    Anchor, ErrorCode, Failure, MessageText, PageLimit, Password, Recipient, Ref, RefField, UserId,
};

/// A command from a client to the server.
///
/// Parse one with [`Command::from_json`], which validates every field and reports a bad
/// command as the [`Failure`] the server answers with; serialize one with `serde_json`.
/// A login serializes to the seed form `{"command":"login alice/secret"}` (plus
/// `"acks":true` when it asks for acknowledged delivery). To send a command with a `ref`,
/// wrap it in a [`Request`].
///
/// ```
/// use simpletextim_proto::{Command, ErrorCode, Recipient};
/// let cmd = Command::from_json(br#"{"command":"send","message":"hi","to":"bob"}"#).unwrap();
/// assert_eq!(cmd, Command::send(Recipient::User("bob".parse().unwrap()), "hi".parse().unwrap()));
/// assert_eq!(
///     serde_json::to_string(&cmd).unwrap(),
///     r#"{"command":"send","message":"hi","to":"bob"}"#
/// );
///
/// let err = Command::from_json(br#"{"command":"dance"}"#).unwrap_err();
/// assert_eq!(err.error_code, ErrorCode::BadRequest);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Log in (and, where registration is open, create the account on first use).
    Login {
        /// Who logs in.
        user_id: UserId,
        /// Their password.
        password: Password,
        /// Protocol 1.1: acknowledged delivery (`"acks":true`): private messages count as
        /// delivered only once the client acks them. `false` (the field absent, `null` or
        /// `false`) is version 1's behaviour.
        acks: bool,
    },
    /// Send a message to everyone or to one user.
    Send {
        /// `Everyone` for a public message, a user for a private one.
        to: Recipient,
        /// The text.
        message: MessageText,
    },
    /// Ask for the users logged in now.
    List,
    /// End the session: the server flushes what it queued for this client, then closes.
    Exit,
    /// Protocol 1.1: ask for kept messages of one conversation.
    ///
    /// ```
    /// use simpletextim_proto::{Anchor, Command, PageLimit, Recipient};
    /// let cmd = Command::History {
    ///     with: Recipient::User("bob".parse().unwrap()),
    ///     anchor: Some(Anchor::Before(41)),
    ///     limit: Some(PageLimit::new(20).unwrap()),
    /// };
    /// let json = r#"{"command":"history","with":"bob","before":41,"limit":20}"#;
    /// assert_eq!(serde_json::to_string(&cmd).unwrap(), json);
    /// assert_eq!(Command::from_json(json.as_bytes()).unwrap(), cmd);
    /// // Both anchors, a limit out of range, or no `with`: 400.
    /// for bad in [
    ///     r#"{"command":"history","with":"*","before":1,"after":2}"#,
    ///     r#"{"command":"history","with":"*","limit":0}"#,
    ///     r#"{"command":"history","limit":5}"#,
    /// ] {
    ///     assert_eq!(Command::from_json(bad.as_bytes()).unwrap_err().error_code.as_u16(), 400);
    /// }
    /// ```
    History {
        /// `Everyone` for the public conversation, a user for the private conversation
        /// between the asker and that user.
        with: Recipient,
        /// Where the page starts; `None`: the newest messages.
        anchor: Option<Anchor>,
        /// How many messages at most; `None`: [`PageLimit::DEFAULT`].
        limit: Option<PageLimit>,
    },
    /// Protocol 1.1, in a session whose login carried `"acks":true`: the client holds every
    /// private message addressed to it with an id up to `id`.
    ///
    /// ```
    /// use simpletextim_proto::Command;
    /// let cmd = Command::from_json(br#"{"command":"ack","id":41}"#).unwrap();
    /// assert_eq!(cmd, Command::Ack { id: 41 });
    /// assert_eq!(serde_json::to_string(&cmd).unwrap(), r#"{"command":"ack","id":41}"#);
    /// ```
    Ack {
        /// The highest message id the client holds.
        id: u64,
    },
}

impl Command {
    /// A `login` command (without acknowledged delivery).
    pub fn login(user_id: UserId, password: Password) -> Command {
        Command::Login {
            user_id,
            password,
            acks: false,
        }
    }

    /// A `send` command.
    pub fn send(to: Recipient, message: MessageText) -> Command {
        Command::Send { to, message }
    }

    /// The command's name on the wire (`login`, `send`, `list`, `exit`, `history`, `ack`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Login { .. } => "login",
            Command::Send { .. } => "send",
            Command::List => "list",
            Command::Exit => "exit",
            Command::History { .. } => "history",
            Command::Ack { .. } => "ack",
        }
    }

    /// Parses and validates one command from the JSON payload of a frame, ignoring its
    /// `ref` (use [`Request::from_json`] to read it too).
    ///
    /// Accepts both login forms (`"login alice/secret"` and the structured
    /// `{"command":"login","user_id":…,"password":…}`), ignores unknown fields, and treats
    /// an absent or `null` `to` as `"*"`. Optional fields of version 1.1 (`acks`, `before`,
    /// `after`, `limit`) that are `null` count as absent.
    ///
    /// # Errors
    /// The [`Failure`] the protocol prescribes: 400 for anything malformed or invalid,
    /// 413 for message text over 140 characters.
    pub fn from_json(json: &[u8]) -> Result<Command, Failure> {
        parse(json).and_then(|raw| raw.validate().map(|(_, c)| c).map_err(|(_, f)| f))
    }

    /// Serializes the command to its JSON payload (without the frame header).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect(
            "a Command serializes: writing to a Vec cannot fail, every key is a string and \
             every value a string, a number or a bool",
        )
    }

    /// Serializes the command's fields, with `"ref"` right after `"command"` when given.
    fn serialize_with_ref<S: Serializer>(&self, r: Option<&Ref>, s: S) -> Result<S::Ok, S::Error> {
        let extra = usize::from(r.is_some());
        match self {
            Command::Login {
                user_id,
                password,
                acks,
            } => {
                let mut m = s.serialize_map(Some(1 + extra + usize::from(*acks)))?;
                m.serialize_entry(
                    "command",
                    &format!("login {}/{}", user_id.as_str(), password.expose()),
                )?;
                if let Some(r) = r {
                    m.serialize_entry("ref", r)?;
                }
                if *acks {
                    m.serialize_entry("acks", &true)?;
                }
                m.end()
            }
            Command::Send { to, message } => {
                let mut m = s.serialize_map(Some(3 + extra))?;
                m.serialize_entry("command", "send")?;
                if let Some(r) = r {
                    m.serialize_entry("ref", r)?;
                }
                m.serialize_entry("message", message)?;
                m.serialize_entry("to", to)?;
                m.end()
            }
            Command::List | Command::Exit => {
                let mut m = s.serialize_map(Some(1 + extra))?;
                m.serialize_entry("command", self.name())?;
                if let Some(r) = r {
                    m.serialize_entry("ref", r)?;
                }
                m.end()
            }
            Command::History {
                with,
                anchor,
                limit,
            } => {
                let n = 2 + extra + usize::from(anchor.is_some()) + usize::from(limit.is_some());
                let mut m = s.serialize_map(Some(n))?;
                m.serialize_entry("command", "history")?;
                if let Some(r) = r {
                    m.serialize_entry("ref", r)?;
                }
                m.serialize_entry("with", with)?;
                match anchor {
                    Some(Anchor::Before(id)) => m.serialize_entry("before", id)?,
                    Some(Anchor::After(id)) => m.serialize_entry("after", id)?,
                    None => {}
                }
                if let Some(limit) = limit {
                    m.serialize_entry("limit", limit)?;
                }
                m.end()
            }
            Command::Ack { id } => {
                let mut m = s.serialize_map(Some(2 + extra))?;
                m.serialize_entry("command", "ack")?;
                if let Some(r) = r {
                    m.serialize_entry("ref", r)?;
                }
                m.serialize_entry("id", id)?;
                m.end()
            }
        }
    }
}

/// A command with the client's optional `ref` (protocol 1.1): what a server reads from a
/// frame, and what a client that wants to match replies to its requests sends.
///
/// It serializes as the command's JSON plus `"ref"` (right after `"command"`) when there is
/// one. [`Request::from_json`] validates both; a command refused with a valid `ref` is
/// [`Rejected`] *with* that ref, so the `fail` that answers it carries it.
///
/// ```
/// use simpletextim_proto::{Command, Ref, Request};
///
/// let req = Request::from_json(br#"{"command":"list","ref":"r1"}"#).unwrap();
/// assert_eq!(req, Request::with_ref(Command::List, Ref::text("r1").unwrap()));
/// assert_eq!(req.to_json(), br#"{"command":"list","ref":"r1"}"#);
///
/// // `"ref": null` is no ref.
/// let req = Request::from_json(br#"{"command":"list","ref":null}"#).unwrap();
/// assert_eq!(req, Request::new(Command::List));
/// assert_eq!(req.to_json(), br#"{"command":"list"}"#);
///
/// // A bad command with a good ref: rejected with the ref.
/// let rejected = Request::from_json(br#"{"command":"dance","ref":7}"#).unwrap_err();
/// assert_eq!(rejected.r#ref, Some(Ref::Number(7)));
/// assert_eq!(
///     rejected.into_reply().to_json(),
///     br#"{"command":"fail","ref":7,"fail":{"error_code":400,"reason":"unknown command: \"dance\""}}"#
/// );
///
/// // A bad ref: rejected without one.
/// let rejected = Request::from_json(br#"{"command":"list","ref":1.5}"#).unwrap_err();
/// assert_eq!(rejected.r#ref, None);
/// assert_eq!(
///     rejected.failure.reason,
///     "ref must be a string of 1-64 characters or an integer 0 <= n < 2^53"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The client's reference, copied into the reply that answers the command.
    pub r#ref: Option<Ref>,
    /// The command.
    pub command: Command,
}

/// A frame the server refuses as a command: the `fail` to answer with, and the request's
/// `ref` when it had a valid one (the `fail` then carries it).
///
/// Invalid JSON, a payload that is not an object and a bad `ref` itself are rejected
/// without a ref.
///
/// ```
/// use simpletextim_proto::{ErrorCode, Ref, Request};
///
/// let long = format!(r#"{{"command":"send","message":"{}","ref":"m7"}}"#, "x".repeat(141));
/// let rejected = Request::from_json(long.as_bytes()).unwrap_err();
/// assert_eq!(rejected.r#ref, Some(Ref::text("m7").unwrap()));
/// assert_eq!(rejected.failure.error_code, ErrorCode::TooLarge);
///
/// let rejected = Request::from_json(b"not json").unwrap_err();
/// assert_eq!(rejected.r#ref, None);
/// assert_eq!(
///     rejected.into_reply().to_json(),
///     br#"{"command":"fail","fail":{"error_code":400,"reason":"invalid JSON: expected ident at line 1 column 2"}}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{failure}")]
pub struct Rejected {
    /// The request's valid `ref`, if it had one.
    pub r#ref: Option<Ref>,
    /// Why the command is refused: the body of the `fail` reply.
    pub failure: Failure,
}

impl Rejected {
    /// The `fail` reply answering the rejected request, with its `ref`.
    pub fn into_reply(self) -> Reply {
        Reply::Fail {
            r#ref: self.r#ref,
            fail: self.failure,
        }
    }
}

impl From<Rejected> for Failure {
    fn from(r: Rejected) -> Failure {
        r.failure
    }
}

impl Request {
    /// A request without `ref`.
    pub fn new(command: Command) -> Request {
        Request {
            r#ref: None,
            command,
        }
    }

    /// A request with a `ref`.
    pub fn with_ref(command: Command, r: Ref) -> Request {
        Request {
            r#ref: Some(r),
            command,
        }
    }

    /// Parses and validates one request from the JSON payload of a frame: the command as
    /// [`Command::from_json`] reads it, and its `ref` (absent or `null`: none).
    ///
    /// # Errors
    /// [`Rejected`]: the [`Failure`] [`Command::from_json`] would give (or `400` for a bad
    /// `ref`), and the `ref` when it is valid. When both the `ref` and the command are bad,
    /// the failure is the `ref`'s: a client cannot match a `fail` without its ref anyway.
    pub fn from_json(json: &[u8]) -> Result<Request, Rejected> {
        let raw = match parse(json) {
            Ok(raw) => raw,
            Err(failure) => {
                return Err(Rejected {
                    r#ref: ref_only(json),
                    failure,
                });
            }
        };
        match raw.validate() {
            Ok((RefField::Invalid, _)) | Err((RefField::Invalid, _)) => Err(Rejected {
                r#ref: None,
                failure: Ref::invalid(),
            }),
            Ok((r, command)) => Ok(Request {
                r#ref: r.into_option(),
                command,
            }),
            Err((r, failure)) => Err(Rejected {
                r#ref: r.into_option(),
                failure,
            }),
        }
    }

    /// Serializes the request to its JSON payload (without the frame header).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect(
            "a Request serializes: writing to a Vec cannot fail, every key is a string and \
             every value a string, a number or a bool",
        )
    }
}

impl From<Command> for Request {
    fn from(command: Command) -> Request {
        Request::new(command)
    }
}

impl RefField {
    fn into_option(self) -> Option<Ref> {
        match self {
            RefField::Valid(r) => Some(r),
            RefField::Absent | RefField::Invalid => None,
        }
    }
}

/// Reads a payload into its raw fields: a JSON object whose fields have the right JSON
/// types (the values are checked by [`RawCommand::validate`]).
fn parse(json: &[u8]) -> Result<RawCommand<'_>, Failure> {
    // serde would read a JSON array as a struct's fields in order: refuse anything but
    // an object up front.
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(Failure::bad_request(
            match serde_json::from_slice::<serde::de::IgnoredAny>(json) {
                Ok(_) => "a command must be a JSON object".to_owned(),
                Err(e) => format!("invalid JSON: {e}"),
            },
        ));
    }
    serde_json::from_slice(json).map_err(|e| {
        Failure::bad_request(if e.is_syntax() || e.is_eof() {
            format!("invalid JSON: {e}")
        } else {
            format!("malformed command: {e}")
        })
    })
}

/// The valid `ref` of a payload whose command fields could not be read (a field of the
/// wrong JSON type, a missing `command`…), so that the `fail` still carries it. Only on
/// that rare path is the payload read a second time.
fn ref_only(json: &[u8]) -> Option<Ref> {
    #[derive(Deserialize)]
    struct RefOnly {
        #[serde(rename = "ref", default)]
        r: RefField,
    }
    if json.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<RefOnly>(json)
        .ok()
        .and_then(|o| o.r.into_option())
}

/// The wire shape of a command before validation. Borrowing keeps parsing allocation-free
/// for strings without escapes. The fields of version 1.1 whose values are numbers or
/// bools are read as any JSON value and checked in [`RawCommand::validate`], for clear
/// reasons; boxed, as they are rarely there: the struct, moved a few times by every parse,
/// stays small.
#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow)]
    command: Cow<'a, str>,
    #[serde(rename = "ref", default)]
    r#ref: RefField,
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    password: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(default)]
    acks: Option<Box<serde_json::Value>>,
    #[serde(borrow, default)]
    with: Option<Cow<'a, str>>,
    #[serde(default)]
    before: Option<Box<serde_json::Value>>,
    #[serde(default)]
    after: Option<Box<serde_json::Value>>,
    #[serde(default)]
    limit: Option<Box<serde_json::Value>>,
    #[serde(default)]
    id: Option<Box<serde_json::Value>>,
}

/// A message id field (`before`, `after`, `id`): a JSON integer `0 <= n < 2^64`.
fn message_id(v: &serde_json::Value, what: &str) -> Result<u64, Failure> {
    v.as_u64().ok_or_else(|| {
        Failure::bad_request(format!(
            "{what} must be a message id (an integer 0 <= n < 2^64)"
        ))
    })
}

impl RawCommand<'_> {
    /// Validates the fields; either way the `ref` field comes back beside the result.
    fn validate(self) -> Result<(RefField, Command), (RefField, Failure)> {
        let RawCommand {
            command,
            r#ref,
            user_id,
            password,
            message,
            to,
            acks,
            with,
            before,
            after,
            limit,
            id,
        } = self;
        let fields = Fields {
            user_id,
            password,
            message,
            to,
            acks,
            with,
            before,
            after,
            limit,
            id,
        };
        match fields.command(&command) {
            Ok(c) => Ok((r#ref, c)),
            Err(f) => Err((r#ref, f)),
        }
    }
}

/// The fields of a [`RawCommand`] besides `command` and `ref`.
struct Fields<'a> {
    user_id: Option<Cow<'a, str>>,
    password: Option<Cow<'a, str>>,
    message: Option<Cow<'a, str>>,
    to: Option<Cow<'a, str>>,
    acks: Option<Box<serde_json::Value>>,
    with: Option<Cow<'a, str>>,
    before: Option<Box<serde_json::Value>>,
    after: Option<Box<serde_json::Value>>,
    limit: Option<Box<serde_json::Value>>,
    id: Option<Box<serde_json::Value>>,
}

impl Fields<'_> {
    fn command(self, command: &str) -> Result<Command, Failure> {
        match command {
            "login" => {
                let user_id = self
                    .user_id
                    .as_deref()
                    .ok_or_else(|| Failure::bad_request("login: missing field user_id"))?;
                let password = self
                    .password
                    .as_deref()
                    .ok_or_else(|| Failure::bad_request("login: missing field password"))?;
                Ok(Command::Login {
                    user_id: UserId::new(user_id)?,
                    password: Password::new(password)?,
                    acks: self.acks()?,
                })
            }
            "send" => {
                let message = self
                    .message
                    .ok_or_else(|| Failure::bad_request("send: missing field message"))?;
                let to = match self.to.as_deref() {
                    None => Recipient::Everyone,
                    Some(to) => to.parse()?,
                };
                let message = match message {
                    Cow::Owned(s) => MessageText::from_string(s)?,
                    Cow::Borrowed(s) => MessageText::new(s)?,
                };
                Ok(Command::Send { to, message })
            }
            "list" => Ok(Command::List),
            "exit" => Ok(Command::Exit),
            "history" => {
                let with = self
                    .with
                    .as_deref()
                    .ok_or_else(|| Failure::bad_request("history: missing field with"))?
                    .parse()?;
                let anchor = match (&self.before, &self.after) {
                    (Some(_), Some(_)) => {
                        return Err(Failure::bad_request(
                            "history: give before or after, not both",
                        ));
                    }
                    (Some(b), None) => Some(Anchor::Before(message_id(b, "history: before")?)),
                    (None, Some(a)) => Some(Anchor::After(message_id(a, "history: after")?)),
                    (None, None) => None,
                };
                let limit = match &self.limit {
                    None => None,
                    Some(v) => Some(PageLimit::new(v.as_u64().unwrap_or(0))?),
                };
                Ok(Command::History {
                    with,
                    anchor,
                    limit,
                })
            }
            "ack" => {
                let id = self
                    .id
                    .as_ref()
                    .ok_or_else(|| Failure::bad_request("ack: missing field id"))?;
                Ok(Command::Ack {
                    id: message_id(id, "ack: id")?,
                })
            }
            other => match other.strip_prefix("login ") {
                Some(rest) => {
                    let (user_id, password) = rest.split_once('/').ok_or_else(|| {
                        Failure::bad_request("login: expected \"login USER_ID/PASSWORD\"")
                    })?;
                    Ok(Command::Login {
                        user_id: UserId::new(user_id)?,
                        password: Password::new(password)?,
                        acks: self.acks()?,
                    })
                }
                None => Err(Failure::new(
                    ErrorCode::BadRequest,
                    format!("unknown command: {:?}", truncate(other, 40)),
                )),
            },
        }
    }

    /// The login's `acks`: absent, `null` or `false` is `false`.
    fn acks(&self) -> Result<bool, Failure> {
        match self.acks.as_deref() {
            None => Ok(false),
            Some(serde_json::Value::Bool(b)) => Ok(*b),
            Some(_) => Err(Failure::bad_request("login: acks must be true or false")),
        }
    }
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_with_ref(None, s)
    }
}

impl<'de> Deserialize<'de> for Command {
    /// Reads and validates a command as [`Command::from_json`] does (its `ref` ignored).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawCommand::deserialize(d)?;
        raw.validate()
            .map(|(_, c)| c)
            .map_err(|(_, e)| serde::de::Error::custom(e.reason))
    }
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.command.serialize_with_ref(self.r#ref.as_ref(), s)
    }
}

impl<'de> Deserialize<'de> for Request {
    /// Reads and validates a request as [`Request::from_json`] does; the error is only the
    /// failure's reason.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawCommand::deserialize(d)?;
        match raw.validate() {
            Ok((RefField::Invalid, _)) | Err((RefField::Invalid, _)) => {
                Err(serde::de::Error::custom(Ref::invalid().reason))
            }
            Ok((r, command)) => Ok(Request {
                r#ref: r.into_option(),
                command,
            }),
            Err((_, e)) => Err(serde::de::Error::custom(e.reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, Failure> {
        Command::from_json(s.as_bytes())
    }

    fn uid(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn seed_login_form_splits_at_first_slash() {
        let c = parse(r#"{"command":"login alice/se/cret"}"#).unwrap();
        assert_eq!(
            c,
            Command::login(uid("alice"), Password::new("se/cret").unwrap())
        );
        assert_eq!(
            String::from_utf8(c.to_json()).unwrap(),
            r#"{"command":"login alice/se/cret"}"#
        );
    }

    #[test]
    fn structured_login_form() {
        let c = parse(r#"{"command":"login","user_id":"Bob","password":"pw","x":[1]}"#).unwrap();
        assert_eq!(c, Command::login(uid("Bob"), Password::new("pw").unwrap()));
    }

    #[test]
    fn bad_logins_are_400() {
        for s in [
            r#"{"command":"login alice"}"#,
            r#"{"command":"login /pw"}"#,
            r#"{"command":"login alice/"}"#,
            r#"{"command":"login a b/pw"}"#,
            r#"{"command":"login"}"#,
            r#"{"command":"login","user_id":"a"}"#,
        ] {
            assert_eq!(
                parse(s).unwrap_err().error_code,
                ErrorCode::BadRequest,
                "{s}"
            );
        }
    }

    #[test]
    fn send_defaults_to_everyone() {
        assert_eq!(
            parse(r#"{"command":"send","message":"hi"}"#).unwrap(),
            Command::send(Recipient::Everyone, MessageText::new("hi").unwrap())
        );
        assert_eq!(
            parse(r#"{"command":"send","message":"hi","to":null}"#).unwrap(),
            Command::send(Recipient::Everyone, MessageText::new("hi").unwrap())
        );
        assert_eq!(
            parse(r#"{"command":"send","message":"a\u0041","to":"*"}"#).unwrap(),
            Command::send(Recipient::Everyone, MessageText::new("aA").unwrap())
        );
    }

    #[test]
    fn send_validation_codes() {
        let long = format!(r#"{{"command":"send","message":"{}"}}"#, "x".repeat(141));
        assert_eq!(parse(&long).unwrap_err().error_code, ErrorCode::TooLarge);
        for s in [
            r#"{"command":"send"}"#,
            r#"{"command":"send","message":""}"#,
            r#"{"command":"send","message":"  "}"#,
            r#"{"command":"send","message":"a\nb"}"#,
            r#"{"command":"send","message":5}"#,
            r#"{"command":"send","message":"hi","to":"no body"}"#,
        ] {
            assert_eq!(
                parse(s).unwrap_err().error_code,
                ErrorCode::BadRequest,
                "{s}"
            );
        }
    }

    #[test]
    fn not_commands_are_400() {
        for s in [
            "",
            "nope",
            "[]",
            r#"["login alice/pw"]"#,
            "42",
            r#"{"cmd":"list"}"#,
            r#"{"command":"LIST"}"#,
            r#"{"command":"dance"}"#,
            r#"{"command":7}"#,
        ] {
            assert_eq!(
                parse(s).unwrap_err().error_code,
                ErrorCode::BadRequest,
                "{s}"
            );
        }
        assert_eq!(
            parse(r#"{"command":"dance"}"#).unwrap_err().reason,
            r#"unknown command: "dance""#
        );
    }

    #[test]
    fn list_and_exit() {
        assert_eq!(
            parse(r#"{"command":"list","extra":true}"#).unwrap(),
            Command::List
        );
        assert_eq!(parse(r#"{"command":"exit"}"#).unwrap(), Command::Exit);
        assert_eq!(
            serde_json::to_string(&Command::Exit).unwrap(),
            r#"{"command":"exit"}"#
        );
    }

    fn request(s: &str) -> Result<Request, Rejected> {
        Request::from_json(s.as_bytes())
    }

    fn bad(s: &str) -> String {
        parse(s).unwrap_err().reason
    }

    #[test]
    fn login_acks_in_both_forms() {
        let acks = Command::Login {
            user_id: uid("alice"),
            password: Password::new("pw").unwrap(),
            acks: true,
        };
        for s in [
            r#"{"command":"login alice/pw","acks":true}"#,
            r#"{"command":"login","user_id":"alice","password":"pw","acks":true}"#,
        ] {
            assert_eq!(parse(s).unwrap(), acks, "{s}");
        }
        for s in [
            r#"{"command":"login alice/pw","acks":false}"#,
            r#"{"command":"login alice/pw","acks":null}"#,
            r#"{"command":"login","user_id":"alice","password":"pw"}"#,
        ] {
            assert_eq!(
                parse(s).unwrap(),
                Command::login(uid("alice"), Password::new("pw").unwrap()),
                "{s}"
            );
        }
        for s in [
            r#"{"command":"login alice/pw","acks":1}"#,
            r#"{"command":"login alice/pw","acks":"true"}"#,
            r#"{"command":"login","user_id":"alice","password":"pw","acks":[]}"#,
        ] {
            assert_eq!(bad(s), "login: acks must be true or false", "{s}");
        }
        assert_eq!(
            String::from_utf8(acks.to_json()).unwrap(),
            r#"{"command":"login alice/pw","acks":true}"#
        );
        assert_eq!(
            String::from_utf8(Command::login(uid("alice"), Password::new("pw").unwrap()).to_json())
                .unwrap(),
            r#"{"command":"login alice/pw"}"#
        );
    }

    #[test]
    fn history_fields() {
        let h = |with: Recipient, anchor, limit: Option<u64>| Command::History {
            with,
            anchor,
            limit: limit.map(|n| PageLimit::new(n).unwrap()),
        };
        let bob = Recipient::User(uid("bob"));
        for (s, want, back) in [
            (
                r#"{"command":"history","with":"*"}"#,
                h(Recipient::Everyone, None, None),
                r#"{"command":"history","with":"*"}"#,
            ),
            (
                r#"{"command":"history","with":"bob","before":18446744073709551615,"limit":200}"#,
                h(bob.clone(), Some(Anchor::Before(u64::MAX)), Some(200)),
                r#"{"command":"history","with":"bob","before":18446744073709551615,"limit":200}"#,
            ),
            (
                r#"{"limit":1,"after":0,"with":"bob","command":"history","before":null}"#,
                h(bob.clone(), Some(Anchor::After(0)), Some(1)),
                r#"{"command":"history","with":"bob","after":0,"limit":1}"#,
            ),
        ] {
            let got = parse(s).unwrap();
            assert_eq!(got, want, "{s}");
            assert_eq!(String::from_utf8(got.to_json()).unwrap(), back);
        }
        for (s, reason) in [
            (r#"{"command":"history"}"#, "history: missing field with"),
            (
                r#"{"command":"history","with":"*","before":1,"after":2}"#,
                "history: give before or after, not both",
            ),
            (
                r#"{"command":"history","with":"*","before":-1}"#,
                "history: before must be a message id (an integer 0 <= n < 2^64)",
            ),
            (
                r#"{"command":"history","with":"*","after":1.0}"#,
                "history: after must be a message id (an integer 0 <= n < 2^64)",
            ),
            (
                r#"{"command":"history","with":"*","after":"5"}"#,
                "history: after must be a message id (an integer 0 <= n < 2^64)",
            ),
            (
                r#"{"command":"history","with":"*","limit":0}"#,
                "history: limit must be an integer from 1 to 200",
            ),
            (
                r#"{"command":"history","with":"*","limit":201}"#,
                "history: limit must be an integer from 1 to 200",
            ),
            (
                r#"{"command":"history","with":"*","limit":5.5}"#,
                "history: limit must be an integer from 1 to 200",
            ),
            (
                r#"{"command":"history","with":"no body"}"#,
                r#"invalid user id: "no body" (allowed: A-Z a-z 0-9 _ . -)"#,
            ),
        ] {
            assert_eq!(bad(s), reason, "{s}");
        }
        assert_eq!(
            parse(r#"{"command":"history","with":""}"#)
                .unwrap_err()
                .error_code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn ack_fields() {
        assert_eq!(
            parse(r#"{"command":"ack","id":7}"#).unwrap(),
            Command::Ack { id: 7 }
        );
        assert_eq!(bad(r#"{"command":"ack"}"#), "ack: missing field id");
        assert_eq!(
            bad(r#"{"command":"ack","id":null}"#),
            "ack: missing field id"
        );
        for s in [
            r#"{"command":"ack","id":-3}"#,
            r#"{"command":"ack","id":3.0}"#,
            r#"{"command":"ack","id":"3"}"#,
            r#"{"command":"ack","id":18446744073709551616}"#,
        ] {
            assert_eq!(
                bad(s),
                "ack: id must be a message id (an integer 0 <= n < 2^64)",
                "{s}"
            );
        }
        assert_eq!(Command::Ack { id: 1 }.name(), "ack");
        assert_eq!(
            Command::History {
                with: Recipient::Everyone,
                anchor: None,
                limit: None
            }
            .name(),
            "history"
        );
    }

    #[test]
    fn requests_carry_their_ref() {
        assert_eq!(
            request(r#"{"command":"list","ref":"a"}"#).unwrap(),
            Request::with_ref(Command::List, Ref::text("a").unwrap())
        );
        assert_eq!(
            request(r#"{"ref":9007199254740991,"command":"exit"}"#).unwrap(),
            Request::with_ref(Command::Exit, Ref::Number(9_007_199_254_740_991))
        );
        assert_eq!(
            request(r#"{"command":"list","ref":null}"#).unwrap(),
            Request::new(Command::List)
        );
        // Command::from_json ignores the ref, even a bad one.
        assert_eq!(
            parse(r#"{"command":"list","ref":[1]}"#).unwrap(),
            Command::List
        );
        let with_ref = |r: Ref, f: Failure| Rejected {
            r#ref: Some(r),
            failure: f,
        };
        // Bad commands with a good ref keep the ref, whatever stage refuses them.
        for (s, r) in [
            (r#"{"command":"dance","ref":1}"#, Ref::Number(1)),
            (r#"{"command":"send","ref":"x"}"#, Ref::text("x").unwrap()),
            (
                r#"{"command":"send","message":5,"ref":"x"}"#,
                Ref::text("x").unwrap(),
            ),
            (r#"{"ref":2}"#, Ref::Number(2)),
            (r#"{"command":7,"ref":2}"#, Ref::Number(2)),
        ] {
            let got = request(s).unwrap_err();
            assert_eq!(got, with_ref(r, parse(s).unwrap_err()), "{s}");
        }
        // A bad ref: 400 without a ref, whatever the command.
        for s in [
            r#"{"command":"list","ref":""}"#,
            r#"{"command":"list","ref":1.5}"#,
            r#"{"command":"list","ref":-1}"#,
            r#"{"command":"list","ref":9007199254740992}"#,
            r#"{"command":"list","ref":true}"#,
            r#"{"command":"list","ref":{"a":1}}"#,
            r#"{"command":"dance","ref":[]}"#,
        ] {
            assert_eq!(
                request(s).unwrap_err(),
                Rejected {
                    r#ref: None,
                    failure: Ref::invalid()
                },
                "{s}"
            );
        }
        let long = format!(r#"{{"command":"list","ref":"{}"}}"#, "é".repeat(65));
        assert_eq!(request(&long).unwrap_err().failure, Ref::invalid());
        // Not an object, or not JSON: no ref.
        for s in [r#"[{"ref":1}]"#, r#"{"ref":1"#] {
            assert_eq!(request(s).unwrap_err().r#ref, None, "{s}");
        }
        // Serialized: the command's JSON with the ref after "command".
        let req = Request::with_ref(
            Command::send(Recipient::Everyone, MessageText::new("hi").unwrap()),
            Ref::text("r\"1").unwrap(),
        );
        assert_eq!(
            String::from_utf8(req.to_json()).unwrap(),
            r#"{"command":"send","ref":"r\"1","message":"hi","to":"*"}"#
        );
        let req = Request::with_ref(
            Command::Login {
                user_id: uid("a"),
                password: Password::new("b").unwrap(),
                acks: true,
            },
            Ref::Number(0),
        );
        assert_eq!(
            String::from_utf8(req.to_json()).unwrap(),
            r#"{"command":"login a/b","ref":0,"acks":true}"#
        );
        assert_eq!(request(&String::from_utf8(req.to_json()).unwrap()), Ok(req));
    }
}
