//! Client → server commands.

use std::borrow::Cow;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::{ErrorCode, Failure, MessageText, Password, Recipient, UserId};

/// A command from a client to the server.
///
/// Parse one with [`Command::from_json`], which validates every field and reports a bad
/// command as the [`Failure`] the server answers with; serialize one with `serde_json`.
/// A login serializes to the seed form `{"command":"login alice/secret"}`.
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
}

impl Command {
    /// A `login` command.
    pub fn login(user_id: UserId, password: Password) -> Command {
        Command::Login { user_id, password }
    }

    /// A `send` command.
    pub fn send(to: Recipient, message: MessageText) -> Command {
        Command::Send { to, message }
    }

    /// The command's name on the wire (`login`, `send`, `list`, `exit`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Login { .. } => "login",
            Command::Send { .. } => "send",
            Command::List => "list",
            Command::Exit => "exit",
        }
    }

    /// Parses and validates one command from the JSON payload of a frame.
    ///
    /// Accepts both login forms (`"login alice/secret"` and the structured
    /// `{"command":"login","user_id":…,"password":…}`), ignores unknown fields, and treats
    /// an absent or `null` `to` as `"*"`.
    ///
    /// # Errors
    /// The [`Failure`] the protocol prescribes: 400 for anything malformed or invalid,
    /// 413 for message text over 140 characters.
    pub fn from_json(json: &[u8]) -> Result<Command, Failure> {
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
        let raw: RawCommand<'_> = serde_json::from_slice(json).map_err(|e| {
            Failure::bad_request(if e.is_syntax() || e.is_eof() {
                format!("invalid JSON: {e}")
            } else {
                format!("malformed command: {e}")
            })
        })?;
        raw.validate()
    }

    /// Serializes the command to its JSON payload (without the frame header).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect(
            "a Command serializes: writing to a Vec cannot fail and every field is a string",
        )
    }
}

/// The wire shape of a command before validation. Borrowing keeps parsing allocation-free
/// for strings without escapes.
#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow)]
    command: Cow<'a, str>,
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    password: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
}

impl RawCommand<'_> {
    fn validate(self) -> Result<Command, Failure> {
        match &*self.command {
            "login" => {
                let user_id = self
                    .user_id
                    .ok_or_else(|| Failure::bad_request("login: missing field user_id"))?;
                let password = self
                    .password
                    .ok_or_else(|| Failure::bad_request("login: missing field password"))?;
                Ok(Command::Login {
                    user_id: UserId::new(&user_id)?,
                    password: Password::new(&password)?,
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
            other => match other.strip_prefix("login ") {
                Some(rest) => {
                    let (user_id, password) = rest.split_once('/').ok_or_else(|| {
                        Failure::bad_request("login: expected \"login USER_ID/PASSWORD\"")
                    })?;
                    Ok(Command::Login {
                        user_id: UserId::new(user_id)?,
                        password: Password::new(password)?,
                    })
                }
                None => Err(Failure::new(
                    ErrorCode::BadRequest,
                    format!("unknown command: {:?}", truncate(other, 40)),
                )),
            },
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
        match self {
            Command::Login { user_id, password } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "command",
                    &format!("login {}/{}", user_id.as_str(), password.expose()),
                )?;
                m.end()
            }
            Command::Send { to, message } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("command", "send")?;
                m.serialize_entry("message", message)?;
                m.serialize_entry("to", to)?;
                m.end()
            }
            Command::List | Command::Exit => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("command", self.name())?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawCommand::deserialize(d)?;
        raw.validate()
            .map_err(|e| serde::de::Error::custom(e.reason))
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
}
