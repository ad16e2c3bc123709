//! Validated value types of the protocol: [`UserId`], [`Password`], [`MessageText`],
//! [`Recipient`], [`Ref`], [`Anchor`], [`PageLimit`], [`ErrorCode`] and the [`Failure`]
//! body of a `fail` reply.
//!
//! Every constructor validates and, on failure, returns a [`Failure`] carrying the protocol's
//! error code, so a server can answer a bad request with the error directly.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest user id, in characters.
pub const MAX_USER_ID_LEN: usize = 32;
/// Longest password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 256;
/// Longest message text, in Unicode scalar values (Rust `char`s).
pub const MAX_MESSAGE_CHARS: usize = 140;

/// A protocol error code, as carried in a `fail` reply.
///
/// Serializes as its number. Numbers outside the protocol's table are kept as
/// [`ErrorCode::Other`], so a client keeps working against a newer server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: not JSON, not an object, unknown command, missing or invalid field.
    BadRequest,
    /// 401: login required, or bad credentials.
    Unauthorized,
    /// 404: private message to a user id with no account.
    NotFound,
    /// 409: login on a session already logged in, or the session was taken over.
    Conflict,
    /// 413: message over 140 characters, or frame over the size limit.
    TooLarge,
    /// 429: rate limit exceeded.
    RateLimited,
    /// 503: server shutting down, or the recipient's offline mailbox is full.
    Unavailable,
    /// A code this version of the protocol does not know.
    Other(u16),
}

impl ErrorCode {
    /// The numeric code sent on the wire.
    ///
    /// ```
    /// use simpletextim_proto::ErrorCode;
    /// assert_eq!(ErrorCode::NotFound.as_u16(), 404);
    /// ```
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code for a number; numbers outside the table become [`ErrorCode::Other`].
    ///
    /// ```
    /// use simpletextim_proto::ErrorCode;
    /// assert_eq!(ErrorCode::from_u16(409), ErrorCode::Conflict);
    /// assert_eq!(ErrorCode::from_u16(418), ErrorCode::Other(418));
    /// ```
    pub fn from_u16(n: u16) -> ErrorCode {
        match n {
            400 => ErrorCode::BadRequest,
            401 => ErrorCode::Unauthorized,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::TooLarge,
            429 => ErrorCode::RateLimited,
            503 => ErrorCode::Unavailable,
            n => ErrorCode::Other(n),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u16::deserialize(d).map(ErrorCode::from_u16)
    }
}

/// The body of a `fail` reply: an error code and a human-readable reason.
///
/// It is also the error type of every validation in this crate, so a server answers a bad
/// request by sending the `Failure` it got back.
///
/// ```
/// use simpletextim_proto::{ErrorCode, MessageText};
/// let err = MessageText::new(&"x".repeat(141)).unwrap_err();
/// assert_eq!(err.error_code, ErrorCode::TooLarge);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error_code}: {reason}")]
pub struct Failure {
    /// What went wrong, for programs to branch on.
    pub error_code: ErrorCode,
    /// What went wrong, for people to read.
    pub reason: String,
}

impl Failure {
    /// A failure with a code and a reason.
    pub fn new(error_code: ErrorCode, reason: impl Into<String>) -> Failure {
        Failure {
            error_code,
            reason: reason.into(),
        }
    }

    /// A `400 bad request` failure.
    pub fn bad_request(reason: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::BadRequest, reason)
    }
}

/// A user id: 1–32 characters of `A-Z a-z 0-9 _ . -`.
///
/// Equality, ordering and hashing ignore ASCII case (`Alice` and `alice` are one account),
/// while [`UserId::as_str`] keeps the spelling it was made with.
///
/// ```
/// use simpletextim_proto::UserId;
/// let a: UserId = "Alice".parse().unwrap();
/// let b: UserId = "alice".parse().unwrap();
/// assert_eq!(a, b);
/// assert_eq!(a.as_str(), "Alice");
/// assert_eq!(a.key(), "alice");
/// assert!("not valid!".parse::<UserId>().is_err());
/// ```
#[derive(Clone)]
pub struct UserId(Box<str>);

impl UserId {
    /// Validates `s` as a user id.
    ///
    /// # Errors
    /// A [`Failure`] with [`ErrorCode::BadRequest`] when `s` is empty, longer than 32
    /// characters, or has a character outside `A-Z a-z 0-9 _ . -`.
    pub fn new(s: &str) -> Result<UserId, Failure> {
        if s.is_empty() {
            return Err(Failure::bad_request("invalid user id: empty"));
        }
        if s.len() > MAX_USER_ID_LEN {
            return Err(Failure::bad_request(format!(
                "invalid user id: longer than {MAX_USER_ID_LEN} characters"
            )));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(Failure::bad_request(format!(
                "invalid user id: {:?} (allowed: A-Z a-z 0-9 _ . -)",
                s
            )));
        }
        Ok(UserId(s.into()))
    }

    /// The id as spelled when it was made.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form (lower-case), the same for every spelling of one id.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl PartialEq for UserId {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for UserId {}

impl Hash for UserId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
        state.write_u8(0xff);
    }
}

impl Ord for UserId {
    fn cmp(&self, other: &Self) -> Ordering {
        let a = self.0.bytes().map(|b| b.to_ascii_lowercase());
        let b = other.0.bytes().map(|b| b.to_ascii_lowercase());
        a.cmp(b)
    }
}

impl PartialOrd for UserId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UserId {
    type Err = Failure;
    fn from_str(s: &str) -> Result<Self, Failure> {
        UserId::new(s)
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        UserId::new(&s).map_err(|e| serde::de::Error::custom(e.reason))
    }
}

/// A password: 1–256 bytes, any characters. Its `Debug` output is redacted.
///
/// ```
/// use simpletextim_proto::Password;
/// let p = Password::new("s3cret/with/slashes").unwrap();
/// assert_eq!(p.expose(), "s3cret/with/slashes");
/// assert_eq!(format!("{p:?}"), "Password(***)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Validates `s` as a password.
    ///
    /// # Errors
    /// [`ErrorCode::BadRequest`] when `s` is empty or longer than 256 bytes.
    pub fn new(s: &str) -> Result<Password, Failure> {
        if s.is_empty() {
            return Err(Failure::bad_request("invalid password: empty"));
        }
        if s.len() > MAX_PASSWORD_LEN {
            return Err(Failure::bad_request(format!(
                "invalid password: longer than {MAX_PASSWORD_LEN} bytes"
            )));
        }
        Ok(Password(s.to_owned()))
    }

    /// The password in clear, for hashing or sending. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// The text of a chat message: 1–140 Unicode scalar values, not blank, no control characters.
///
/// ```
/// use simpletextim_proto::{ErrorCode, MessageText};
/// assert_eq!(MessageText::new("héllo 👋").unwrap().as_str(), "héllo 👋");
/// assert_eq!(MessageText::new("   ").unwrap_err().error_code, ErrorCode::BadRequest);
/// assert_eq!(MessageText::new("a\nb").unwrap_err().error_code, ErrorCode::BadRequest);
/// assert_eq!(MessageText::new(&"é".repeat(141)).unwrap_err().error_code, ErrorCode::TooLarge);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageText(String);

impl MessageText {
    /// Validates `s` as message text.
    ///
    /// # Errors
    /// [`ErrorCode::TooLarge`] when `s` has more than 140 characters;
    /// [`ErrorCode::BadRequest`] when it is empty, whitespace only, or holds a control
    /// character (Unicode category Cc: `\n`, `\t`, ESC, …).
    pub fn new(s: &str) -> Result<MessageText, Failure> {
        Self::check(s)?;
        Ok(MessageText(s.to_owned()))
    }

    /// Like [`MessageText::new`], taking ownership of `s` without copying it.
    ///
    /// # Errors
    /// As [`MessageText::new`].
    pub fn from_string(s: String) -> Result<MessageText, Failure> {
        Self::check(&s)?;
        Ok(MessageText(s))
    }

    fn check(s: &str) -> Result<(), Failure> {
        // Cheap bound first: 140 chars are at most 560 bytes.
        if s.len() > MAX_MESSAGE_CHARS && s.chars().count() > MAX_MESSAGE_CHARS {
            return Err(Failure::new(
                ErrorCode::TooLarge,
                format!(
                    "message too long: {} characters (at most {MAX_MESSAGE_CHARS})",
                    s.chars().count()
                ),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(Failure::bad_request("message contains control characters"));
        }
        if s.trim().is_empty() {
            return Err(Failure::bad_request("message is empty"));
        }
        Ok(())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, as an owned `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for MessageText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for MessageText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MessageText {
    type Err = Failure;
    fn from_str(s: &str) -> Result<Self, Failure> {
        MessageText::new(s)
    }
}

impl AsRef<str> for MessageText {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for MessageText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MessageText::from_string(s).map_err(|e| serde::de::Error::custom(e.reason))
    }
}

/// Who a message is for: everyone logged in (`"*"` on the wire) or one user.
///
/// ```
/// use simpletextim_proto::Recipient;
/// assert_eq!("*".parse::<Recipient>().unwrap(), Recipient::Everyone);
/// assert_eq!("bob".parse::<Recipient>().unwrap().to_string(), "bob");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Recipient {
    /// A public message (`"*"`).
    #[default]
    Everyone,
    /// A private message to this user.
    User(UserId),
}

impl Recipient {
    /// The wire form: `"*"` or the user id.
    pub fn as_str(&self) -> &str {
        match self {
            Recipient::Everyone => "*",
            Recipient::User(u) => u.as_str(),
        }
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Recipient {
    type Err = Failure;
    fn from_str(s: &str) -> Result<Self, Failure> {
        if s == "*" {
            Ok(Recipient::Everyone)
        } else {
            UserId::new(s).map(Recipient::User)
        }
    }
}

impl From<UserId> for Recipient {
    fn from(u: UserId) -> Recipient {
        Recipient::User(u)
    }
}

impl Serialize for Recipient {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|e: Failure| serde::de::Error::custom(e.reason))
    }
}

/// Longest `ref` string, in Unicode scalar values (Rust `char`s).
pub const MAX_REF_CHARS: usize = 64;
/// The bound of a `ref` integer: a ref number is `0 <= n < 2^53` (exactly representable as
/// an IEEE double, so every JSON implementation reads it back unchanged).
pub const REF_NUMBER_BOUND: u64 = 1 << 53;

/// The reason of the `400` for a bad `ref`.
const BAD_REF: &str = "ref must be a string of 1-64 characters or an integer 0 <= n < 2^53";

/// A client-chosen request reference (protocol 1.1): the server copies it into the reply
/// that answers the command (`fail`, `list`, `history`, the login ack, and the sender's own
/// copy of a sent message), so a client can match replies to its requests.
///
/// On the wire it is a JSON string of 1–64 characters (Unicode scalar values) or a JSON
/// integer `0 <= n < 2^53`, and it serializes back to exactly that. Anything else (a float
/// such as `1.0`, a negative number, `2^53`, `""`, 65 characters, `true`, an array, an
/// object) is refused with `400`. `"ref": null` in a command is the same as no `ref`.
///
/// ```
/// use simpletextim_proto::{ErrorCode, Ref};
///
/// let r = Ref::text("req-1").unwrap();
/// assert_eq!(serde_json::to_string(&r).unwrap(), r#""req-1""#);
/// let n: Ref = serde_json::from_str("42").unwrap();
/// assert_eq!(n, Ref::Number(42));
/// assert_eq!(serde_json::to_string(&n).unwrap(), "42");
///
/// assert_eq!(Ref::text("").unwrap_err().error_code, ErrorCode::BadRequest);
/// assert_eq!(Ref::number(1 << 53).unwrap_err().error_code, ErrorCode::BadRequest);
/// for bad in ["1.0", "-1", "9007199254740992", "\"\"", "true", "[1]", "{}", "null"] {
///     assert!(serde_json::from_str::<Ref>(bad).is_err(), "{bad}");
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    /// A string ref: 1–64 characters. Build one with [`Ref::text`].
    Text(Box<str>),
    /// An integer ref: `0 <= n < 2^53`. Build one with [`Ref::number`].
    Number(u64),
}

impl Ref {
    /// Validates `s` as a string ref.
    ///
    /// # Errors
    /// A `400` [`Failure`] when `s` is empty or longer than 64 characters.
    pub fn text(s: &str) -> Result<Ref, Failure> {
        if s.is_empty() || (s.len() > MAX_REF_CHARS && s.chars().count() > MAX_REF_CHARS) {
            return Err(Failure::bad_request(BAD_REF));
        }
        Ok(Ref::Text(s.into()))
    }

    /// Validates `n` as an integer ref.
    ///
    /// # Errors
    /// A `400` [`Failure`] when `n >= 2^53`.
    pub fn number(n: u64) -> Result<Ref, Failure> {
        if n >= REF_NUMBER_BOUND {
            return Err(Failure::bad_request(BAD_REF));
        }
        Ok(Ref::Number(n))
    }

    /// Whether the ref is valid: variants built directly (not through [`Ref::text`] or
    /// [`Ref::number`]) may not be.
    pub fn is_valid(&self) -> bool {
        match self {
            Ref::Text(s) => !s.is_empty() && s.chars().count() <= MAX_REF_CHARS,
            Ref::Number(n) => *n < REF_NUMBER_BOUND,
        }
    }

    /// The `400` failure a bad ref is answered with.
    pub fn invalid() -> Failure {
        Failure::bad_request(BAD_REF)
    }
}

impl fmt::Display for Ref {
    /// The ref as JSON: `42` or `"req-1"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Number(n) => write!(f, "{n}"),
            Ref::Text(s) => f.write_str(&serde_json::to_string(&**s).map_err(|_| fmt::Error)?),
        }
    }
}

impl From<u32> for Ref {
    fn from(n: u32) -> Ref {
        Ref::Number(u64::from(n))
    }
}

impl Serialize for Ref {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ref::Text(t) => s.serialize_str(t),
            Ref::Number(n) => s.serialize_u64(*n),
        }
    }
}

/// What a `ref` field held: nothing (absent or `null`), a valid ref, or something else.
/// Reading it never fails, so a command's other fields are still read and a bad `ref` is
/// told apart from a bad command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum RefField {
    #[default]
    Absent,
    Valid(Ref),
    Invalid,
}

impl RefField {
    fn from_number(n: Option<u64>) -> RefField {
        match n.map(Ref::number) {
            Some(Ok(r)) => RefField::Valid(r),
            _ => RefField::Invalid,
        }
    }

    fn from_text(s: &str) -> RefField {
        match Ref::text(s) {
            Ok(r) => RefField::Valid(r),
            Err(_) => RefField::Invalid,
        }
    }
}

/// Accepts any JSON value and sorts it into a [`RefField`].
struct RefFieldVisitor;

impl<'de> serde::de::Visitor<'de> for RefFieldVisitor {
    type Value = RefField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(BAD_REF)
    }
    fn visit_bool<E>(self, _: bool) -> Result<RefField, E> {
        Ok(RefField::Invalid)
    }
    fn visit_i64<E>(self, n: i64) -> Result<RefField, E> {
        Ok(RefField::from_number(u64::try_from(n).ok()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<RefField, E> {
        Ok(RefField::from_number(Some(n)))
    }
    fn visit_i128<E>(self, n: i128) -> Result<RefField, E> {
        Ok(RefField::from_number(u64::try_from(n).ok()))
    }
    fn visit_u128<E>(self, n: u128) -> Result<RefField, E> {
        Ok(RefField::from_number(u64::try_from(n).ok()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<RefField, E> {
        Ok(RefField::Invalid)
    }
    fn visit_str<E>(self, s: &str) -> Result<RefField, E> {
        Ok(RefField::from_text(s))
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<RefField, E> {
        Ok(RefField::Invalid)
    }
    fn visit_unit<E>(self) -> Result<RefField, E> {
        Ok(RefField::Absent)
    }
    fn visit_none<E>(self) -> Result<RefField, E> {
        Ok(RefField::Absent)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RefField, D::Error> {
        d.deserialize_any(RefFieldVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RefField, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(RefField::Invalid)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RefField, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(RefField::Invalid)
    }
}

impl<'de> Deserialize<'de> for RefField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RefFieldVisitor)
    }
}

impl<'de> Deserialize<'de> for Ref {
    /// Reads a valid ref; anything else (`null` included: an absent ref is an
    /// `Option<Ref>`) is an error.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RefField::deserialize(d)? {
            RefField::Valid(r) => Ok(r),
            RefField::Absent | RefField::Invalid => Err(serde::de::Error::custom(BAD_REF)),
        }
    }
}

/// Where a `history` page starts (protocol 1.1): just before or just after a message id.
/// Without one, a `history` asks for the newest messages.
///
/// ```
/// use simpletextim_proto::{Anchor, Command, PageLimit, Recipient};
/// let cmd = Command::from_json(br#"{"command":"history","with":"*","after":41}"#).unwrap();
/// assert_eq!(
///     cmd,
///     Command::History { with: Recipient::Everyone, anchor: Some(Anchor::After(41)), limit: None }
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Anchor {
    /// The messages just before this id (older), `"before"` on the wire.
    Before(u64),
    /// The messages just after this id (newer), `"after"` on the wire.
    After(u64),
}

/// How many messages a `history` page holds at most (protocol 1.1): 1–200, 50 when the
/// command gives no `limit`.
///
/// ```
/// use simpletextim_proto::{ErrorCode, PageLimit};
/// assert_eq!(PageLimit::new(20).unwrap().get(), 20);
/// assert_eq!(PageLimit::DEFAULT.get(), 50);
/// assert_eq!(PageLimit::MAX.get(), 200);
/// assert_eq!(PageLimit::new(0).unwrap_err().error_code, ErrorCode::BadRequest);
/// assert_eq!(PageLimit::new(201).unwrap_err().error_code, ErrorCode::BadRequest);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageLimit(u8);

impl PageLimit {
    /// The limit of a `history` without `limit`: 50.
    pub const DEFAULT: PageLimit = PageLimit(50);
    /// The largest limit: 200.
    pub const MAX: PageLimit = PageLimit(200);

    /// Validates `n` as a page limit.
    ///
    /// # Errors
    /// A `400` [`Failure`] when `n` is 0 or over 200.
    pub fn new(n: u64) -> Result<PageLimit, Failure> {
        match u8::try_from(n) {
            Ok(n) if (1..=Self::MAX.0).contains(&n) => Ok(PageLimit(n)),
            _ => Err(Failure::bad_request(
                "history: limit must be an integer from 1 to 200",
            )),
        }
    }

    /// The limit.
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

impl Default for PageLimit {
    fn default() -> Self {
        PageLimit::DEFAULT
    }
}

impl Serialize for PageLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for PageLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        PageLimit::new(n).map_err(|e| serde::de::Error::custom(e.reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn user_id_rules() {
        assert!(UserId::new(&"a".repeat(32)).is_ok());
        assert_eq!(
            UserId::new(&"a".repeat(33)).unwrap_err().error_code,
            ErrorCode::BadRequest
        );
        for bad in ["", "*", "a b", "é", "a/b", "a\n"] {
            assert!(UserId::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["A-z_0.9", "x", "..."] {
            assert_eq!(UserId::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn user_id_case_insensitive_eq_hash_ord() {
        let a = UserId::new("Alice").unwrap();
        let b = UserId::new("aLICE").unwrap();
        let set: HashSet<UserId> = [a.clone(), b.clone()].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert_eq!(a.cmp(&b), Ordering::Equal);
        let mut v: Vec<UserId> = ["bob", "Alice", "carol", "Bea"]
            .iter()
            .map(|s| UserId::new(s).unwrap())
            .collect();
        v.sort();
        let names: Vec<&str> = v.iter().map(UserId::as_str).collect();
        assert_eq!(names, ["Alice", "Bea", "bob", "carol"]);
    }

    #[test]
    fn message_text_counts_chars_not_bytes() {
        assert!(MessageText::new(&"漢".repeat(140)).is_ok());
        let e = MessageText::new(&"漢".repeat(141)).unwrap_err();
        assert_eq!(e.error_code, ErrorCode::TooLarge);
        assert_eq!(e.reason, "message too long: 141 characters (at most 140)");
        assert_eq!(
            MessageText::new("").unwrap_err(),
            Failure::bad_request("message is empty")
        );
        assert_eq!(
            MessageText::new("hi\u{1b}[31m").unwrap_err(),
            Failure::bad_request("message contains control characters")
        );
        assert_eq!(
            MessageText::new("\u{85}").unwrap_err().error_code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn error_code_table() {
        for n in [400, 401, 404, 409, 413, 429, 503, 500] {
            assert_eq!(ErrorCode::from_u16(n).as_u16(), n);
        }
        assert_eq!(
            serde_json::to_string(&ErrorCode::Unavailable).unwrap(),
            "503"
        );
    }

    #[test]
    fn ref_bounds() {
        assert_eq!(
            Ref::text(&"é".repeat(64)).unwrap(),
            Ref::Text("é".repeat(64).into())
        );
        assert_eq!(Ref::text(&"é".repeat(65)).unwrap_err(), Ref::invalid());
        assert_eq!(Ref::text(&"x".repeat(65)).unwrap_err(), Ref::invalid());
        assert_eq!(
            Ref::number((1 << 53) - 1).unwrap(),
            Ref::Number((1 << 53) - 1)
        );
        assert_eq!(Ref::number(1 << 53).unwrap_err(), Ref::invalid());
        assert_eq!(
            Ref::invalid().reason,
            "ref must be a string of 1-64 characters or an integer 0 <= n < 2^53"
        );
        for (json, want) in [
            ("0", Some(Ref::Number(0))),
            ("9007199254740991", Some(Ref::Number(9_007_199_254_740_991))),
            ("9007199254740992", None),
            ("-1", None),
            ("-0", None),
            ("1.0", None),
            ("1e2", None),
            ("123456789012345678901234567890", None),
            (r#""a""#, Some(Ref::Text("a".into()))),
            (r#""""#, None),
            ("true", None),
            ("[]", None),
            (r#"{"a":1}"#, None),
            ("null", None),
        ] {
            assert_eq!(serde_json::from_str::<Ref>(json).ok(), want, "{json}");
        }
        assert_eq!(Ref::Text("a\"b".into()).to_string(), r#""a\"b""#);
        assert_eq!(Ref::Number(7).to_string(), "7");
    }
}
