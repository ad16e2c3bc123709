//! Cheap reading of server frames: classify a frame by its `command`, count the chat
//! messages in a `message` frame and read the load generator's marker out of each text,
//! without deserializing anything into owned types.
//!
//! The server writes every reply as a JSON object whose first key is `command` (serde's
//! internally tagged enum, and the server's own `{"command":"message","messages":[` batch
//! head), so a prefix comparison classifies a frame; a search for `"command":"` is the
//! fallback for other key orders.
//!
//! **Why counting `"message":"` is exact:** inside a JSON string every `"` is escaped as
//! `\"`, so the nine bytes `"message":` followed by `"` can only be the key `message` of a
//! chat object followed by its string value. `"command":"message"` is followed by `,`, and
//! the key `"messages"` by `s`, so neither matches.
//!
//! # The marker
//! Every message the load generator sends starts with `~SENDER~SEQ~MICROS~`: the sender's
//! index, the message's sequence number from that sender, and when it was sent (or, open
//! loop, scheduled), in microseconds since the run's base instant. Open loop adds
//! `WRITTEN~`, when the message was actually written. Padding (`x`) makes the text the
//! requested length. Only ASCII, so the server never escapes it.

use memchr::memmem;

/// What a frame is, by its `command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Chat messages (or the login acknowledgement).
    Message,
    /// Another user logged in.
    Joined,
    /// Another user logged out.
    Left,
    /// A request failed.
    Fail,
    /// A `list` reply.
    List,
    /// Anything else (a newer server's reply this tool does not know).
    Other,
}

const KEY_COMMAND: &[u8] = br#""command":""#;
const KEY_MESSAGE: &[u8] = br#""message":""#;
const KEY_USER_ID: &[u8] = br#""user_id":""#;
const KEY_ERROR_CODE: &[u8] = br#""error_code":"#;
const KEY_LIST: &[u8] = br#""list":["#;

/// Classifies a frame's payload by its `command`.
pub fn kind(frame: &[u8]) -> Kind {
    let rest = if let Some(rest) = frame.strip_prefix(b"{\"command\":\"") {
        rest
    } else if let Some(at) = memmem::find(frame, KEY_COMMAND) {
        &frame[at + KEY_COMMAND.len()..]
    } else {
        return Kind::Other;
    };
    let name_end = memchr::memchr(b'"', rest).unwrap_or(rest.len());
    match &rest[..name_end] {
        b"message" => Kind::Message,
        b"joined" => Kind::Joined,
        b"left" => Kind::Left,
        b"fail" => Kind::Fail,
        b"list" => Kind::List,
        _ => Kind::Other,
    }
}

/// The load generator's marker at the start of a message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Index of the sending client among the run's senders.
    pub sender: u32,
    /// The message's number in that sender's sequence, from 0.
    pub seq: u32,
    /// When it was sent (or scheduled), in microseconds since the run's base instant.
    pub sent_us: u64,
    /// Open loop: when it was actually written (at or after `sent_us`); 0 when absent.
    pub written_us: u64,
}

/// Writes a message text: the marker, then `x` up to `len` bytes (the marker alone when it
/// is longer). `out` is cleared first.
pub fn write_text(out: &mut Vec<u8>, marker: Marker, len: usize) {
    use std::io::Write;
    out.clear();
    write!(out, "~{}~{}~{}~", marker.sender, marker.seq, marker.sent_us)
        .expect("writing to a Vec does not fail");
    if marker.written_us != 0 {
        write!(out, "{}~", marker.written_us).expect("writing to a Vec does not fail");
    }
    if out.len() < len {
        out.resize(len, b'x');
    }
}

/// Parses an unsigned decimal number (1 to 19 digits, so it cannot overflow) at the start
/// of `s`, which must be followed by `end`. Returns the number and how many bytes it and
/// `end` took.
#[inline]
fn number(s: &[u8], end: u8) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut i = 0;
    while i < s.len() {
        let d = s[i].wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        if i == 19 {
            return None; // a 20th digit could overflow
        }
        n = n * 10 + u64::from(d);
        i += 1;
    }
    if i == 0 || s.get(i) != Some(&end) {
        return None;
    }
    Some((n, i + 1))
}

/// Reads a marker at the start of a message text (the bytes right after `"message":"`).
#[inline]
pub fn parse_marker(text: &[u8]) -> Option<Marker> {
    parse_marker_len(text).map(|(m, _)| m)
}

/// Reads a marker and returns its length in bytes too.
#[inline]
fn parse_marker_len(text: &[u8]) -> Option<(Marker, usize)> {
    if text.first() != Some(&b'~') {
        return None;
    }
    let mut at = 1;
    let (sender, n) = number(&text[at..], b'~')?;
    at += n;
    let (seq, n) = number(&text[at..], b'~')?;
    at += n;
    let (sent_us, n) = number(&text[at..], b'~')?;
    at += n;
    let mut written_us = 0;
    if text.get(at).is_some_and(u8::is_ascii_digit) {
        let (w, n) = number(&text[at..], b'~')?;
        written_us = w;
        at += n;
    }
    Some((
        Marker {
            sender: u32::try_from(sender).ok()?,
            seq: u32::try_from(seq).ok()?,
            sent_us,
            written_us,
        },
        at,
    ))
}

/// Finds the chat messages of a `message` frame. Build one per task and reuse it.
///
/// After a marker it jumps to the next `"` (a one-byte search, much cheaper than the
/// substring search) instead of searching through the rest of the text. That quote is at
/// or before the end of the text (an escaped one comes earlier), so no key is skipped and
/// the count stays exact.
#[derive(Debug, Clone)]
pub struct MessageScanner {
    finder: memmem::Finder<'static>,
}

impl Default for MessageScanner {
    fn default() -> Self {
        MessageScanner::new()
    }
}

impl MessageScanner {
    /// A scanner.
    pub fn new() -> MessageScanner {
        MessageScanner {
            finder: memmem::Finder::new(KEY_MESSAGE),
        }
    }

    /// Calls `each` once per chat message in the frame, with its marker if the text starts
    /// with one; returns how many messages there were.
    #[inline]
    pub fn for_each(&self, frame: &[u8], mut each: impl FnMut(Option<Marker>)) -> usize {
        let mut n = 0;
        let mut pos = 0;
        while let Some(found) = self.finder.find(&frame[pos..]) {
            n += 1;
            let text = pos + found + KEY_MESSAGE.len();
            match parse_marker_len(&frame[text..]) {
                Some((marker, len)) => {
                    each(Some(marker));
                    let after = text + len;
                    pos = memchr::memchr(b'"', &frame[after..]).map_or(frame.len(), |q| after + q);
                }
                None => {
                    each(None);
                    pos = text;
                }
            }
        }
        n
    }

    /// [`MessageScanner::for_each`] that also reads each message's `id` (when its object
    /// has one): for the check that a receiver gets the public conversation in id order.
    #[inline]
    pub fn for_each_with_id(
        &self,
        frame: &[u8],
        mut each: impl FnMut(Option<Marker>, Option<u64>),
    ) -> usize {
        let mut n = 0;
        let mut pos = 0;
        while let Some(found) = self.finder.find(&frame[pos..]) {
            n += 1;
            let key = pos + found;
            let text = key + KEY_MESSAGE.len();
            let marker = parse_marker_len(&frame[text..]);
            let after = text + marker.map_or(0, |(_, len)| len);
            // The end of the text: the next `"` (inside a JSON string every `"` is escaped).
            let close = memchr::memchr(b'"', &frame[after..]).map_or(frame.len(), |q| after + q);
            each(marker.map(|(m, _)| m), message_id(frame, key, close));
            pos = close.max(text);
        }
        n
    }

    /// How many chat messages the frame holds.
    pub fn count(&self, frame: &[u8]) -> usize {
        self.finder.find_iter(frame).count()
    }
}

const KEY_ID: &[u8] = br#""id":"#;

/// The `id` of the chat object whose `"message":"` key is at `key` and whose text's closing
/// quote is at `close`: searched after the text up to the object's end (the server's key
/// order), else before the key back to the object's start. Neither range holds a string
/// that could contain `"id":` (user ids and the marker text have no quotes).
fn message_id(frame: &[u8], key: usize, close: usize) -> Option<u64> {
    let tail = frame.get(close..)?;
    // Up to the object's `}` included: it ends the id when the id is the last key.
    let tail = &tail[..memchr::memchr(b'}', tail).map_or(tail.len(), |e| e + 1)];
    let digits = match memmem::find(tail, KEY_ID) {
        Some(at) => &tail[at + KEY_ID.len()..],
        None => {
            let head = &frame[..key];
            let head = &head[memchr::memrchr(b'{', head).map_or(0, |b| b + 1)..];
            &head[memmem::find(head, KEY_ID)? + KEY_ID.len()..]
        }
    };
    number(digits, b',')
        .or_else(|| number(digits, b'}'))
        .map(|(id, _)| id)
}

/// The `user_id` of a `joined` or `left` frame.
pub fn user_id(frame: &[u8]) -> Option<&[u8]> {
    // The server's layout first (no search), any key order second.
    let rest = match frame
        .strip_prefix(br#"{"command":"joined","user_id":""#)
        .or_else(|| frame.strip_prefix(br#"{"command":"left","user_id":""#))
    {
        Some(rest) => rest,
        None => &frame[memmem::find(frame, KEY_USER_ID)? + KEY_USER_ID.len()..],
    };
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// The `error_code` of a `fail` frame.
pub fn error_code(frame: &[u8]) -> Option<u16> {
    let at = memmem::find(frame, KEY_ERROR_CODE)? + KEY_ERROR_CODE.len();
    let rest = frame[at..].trim_ascii_start();
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// How many user ids a `list` frame holds (user ids never contain `"`, so two quotes each).
pub fn list_len(frame: &[u8]) -> Option<usize> {
    let at = memmem::find(frame, KEY_LIST)? + KEY_LIST.len();
    let rest = &frame[at..];
    let end = memchr::memchr(b']', rest)?;
    Some(memchr::memchr_iter(b'"', &rest[..end]).count() / 2)
}

/// Parses a decimal user index after `prefix` in a user id (`lg17` → 17 for prefix `lg`).
pub fn index_after(user_id: &[u8], prefix: &[u8]) -> Option<u32> {
    let digits = user_id.strip_prefix(prefix)?;
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const BATCH: &[u8] = br#"{"command":"message","messages":[{"user_id":"lg1","message":"~1~0~1500~xxxx","to":"*","id":7,"ts":1},{"user_id":"bob","message":"say \"message\":\"hi\" ~2~3~4~","to":"*","id":8,"ts":2},{"user_id":"lg12","message":"~12~34~5678901234~","to":"lg3","id":9,"ts":3}]}"#;

    #[test]
    fn classifies_frames() {
        assert_eq!(kind(BATCH), Kind::Message);
        assert_eq!(kind(br#"{"command":"joined","user_id":"a"}"#), Kind::Joined);
        assert_eq!(kind(br#"{"command":"left","user_id":"a"}"#), Kind::Left);
        assert_eq!(
            kind(br#"{"command":"fail","fail":{"error_code":429,"reason":"x"}}"#),
            Kind::Fail
        );
        assert_eq!(kind(br#"{"command":"list","list":[]}"#), Kind::List);
        assert_eq!(
            kind(br#"{"user_id":"a", "command":"joined"}"#),
            Kind::Joined
        );
        assert_eq!(kind(br#"{"command":"dance"}"#), Kind::Other);
        assert_eq!(kind(b"{}"), Kind::Other);
    }

    #[test]
    fn counts_every_message_and_reads_markers() {
        let scanner = MessageScanner::new();
        let mut seen = Vec::new();
        let n = scanner.for_each(BATCH, |m| seen.push(m));
        assert_eq!(n, 3);
        assert_eq!(scanner.count(BATCH), 3);
        assert_eq!(
            seen,
            vec![
                Some(Marker {
                    sender: 1,
                    seq: 0,
                    sent_us: 1500,
                    written_us: 0
                }),
                // An escaped quote inside a text is not a key: still three messages, and
                // this text has no marker at its start.
                None,
                Some(Marker {
                    sender: 12,
                    seq: 34,
                    sent_us: 5_678_901_234,
                    written_us: 0
                }),
            ]
        );
        assert_eq!(scanner.count(br#"{"command":"message","messages":[]}"#), 0);
    }

    #[test]
    fn reads_message_ids_in_either_key_order() {
        let frame = br#"{"command":"message","messages":[{"user_id":"a","message":"~1~0~5~xx","to":"*","id":41,"ts":7},{"id":42,"user_id":"b","message":"~2~0~6~","to":"*"},{"user_id":"c","message":"no marker","to":"*","id":43},{"user_id":"d","message":"~3~0~7~","to":"*"}]}"#;
        let mut got = Vec::new();
        let n = MessageScanner::new()
            .for_each_with_id(frame, |m, id| got.push((m.map(|m| m.sender), id)));
        assert_eq!(n, 4);
        assert_eq!(
            got,
            vec![
                (Some(1), Some(41)),
                (Some(2), Some(42)),
                (None, Some(43)),
                (Some(3), None)
            ]
        );
    }

    #[test]
    fn escaped_quotes_and_fake_keys_inside_a_text_are_not_messages() {
        let tricky = br#"{"command":"message","messages":[{"user_id":"a","message":"~1~2~3~\"message\":\"~4~5~6~","to":"*"},{"user_id":"b","message":"~7~8~9~","to":"*"}]}"#;
        let mut senders = Vec::new();
        let n = MessageScanner::new().for_each(tricky, |m| senders.push(m.map(|m| m.sender)));
        assert_eq!(n, 2);
        assert_eq!(senders, vec![Some(1), Some(7)]);
    }

    #[test]
    fn text_round_trips_through_the_marker() {
        let marker = Marker {
            sender: 9,
            seq: 199,
            sent_us: 123_456,
            written_us: 0,
        };
        let mut text = Vec::new();
        write_text(&mut text, marker, 40);
        assert_eq!(text, b"~9~199~123456~xxxxxxxxxxxxxxxxxxxxxxxxxx");
        assert_eq!(parse_marker(&text), Some(marker));
        write_text(&mut text, marker, 3);
        assert_eq!(text, b"~9~199~123456~");
        let open_loop = Marker {
            written_us: 123_789,
            ..marker
        };
        write_text(&mut text, open_loop, 24);
        assert_eq!(text, b"~9~199~123456~123789~xxx");
        assert_eq!(parse_marker(&text), Some(open_loop));
    }

    #[test]
    fn refuses_malformed_markers() {
        assert_eq!(parse_marker(b"~1~2~"), None);
        assert_eq!(parse_marker(b"~~2~3~"), None);
        assert_eq!(parse_marker(b"1~2~3~"), None);
        assert_eq!(parse_marker(b"~1~2~3"), None);
        assert_eq!(parse_marker(b"~99999999999~2~3~"), None);
        assert_eq!(parse_marker(b"~1~2~99999999999999999999999~"), None);
        assert_eq!(parse_marker(b"~1~2~99999999999999999999~"), None);
        assert_eq!(
            parse_marker(b"~1~2~9999999999999999999~").map(|m| m.sent_us),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_marker(b""), None);
        assert_eq!(parse_marker(b"~1~2~3"), None);
    }

    #[test]
    fn reads_user_ids_codes_and_lists() {
        assert_eq!(
            user_id(br#"{"command":"joined","user_id":"lgc17"}"#),
            Some(&b"lgc17"[..])
        );
        assert_eq!(
            user_id(br#"{"command":"left","user_id":"a.b"}"#),
            Some(&b"a.b"[..])
        );
        assert_eq!(
            user_id(br#"{"user_id":"x_1","command":"left"}"#),
            Some(&b"x_1"[..])
        );
        assert_eq!(
            error_code(br#"{"command":"fail","fail":{"error_code":429,"reason":"slow down"}}"#),
            Some(429)
        );
        assert_eq!(error_code(br#"{"command":"fail"}"#), None);
        assert_eq!(
            list_len(br#"{"command":"list","list":["a","b","c.d"]}"#),
            Some(3)
        );
        assert_eq!(list_len(br#"{"command":"list","list":[]}"#), Some(0));
        assert_eq!(index_after(b"lgc17", b"lgc"), Some(17));
        assert_eq!(index_after(b"lg17", b"lgc"), None);
        assert_eq!(index_after(b"lgc", b"lgc"), None);
        assert_eq!(index_after(b"lgc1x", b"lgc"), None);
    }
}
