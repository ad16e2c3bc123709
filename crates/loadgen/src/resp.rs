//! Just enough RESP (the Redis protocol) for the Redis pub/sub reference workload
//! (`redis-fanout`, [`crate::workload::redis`]): the `SUBSCRIBE` and `PUBLISH` commands, and
//! a scanner of what comes back — published messages, the subscription confirmation, and
//! the replies to `PUBLISH`.
//!
//! **Why a scanner of our own and not the `redis` crate:** the comparison is only fair if a
//! Redis subscriber costs the load generator no more than one of our receivers, which reads
//! each message's marker out of the frame bytes without parsing anything into owned values
//! ([`crate::scan`]). redis-rs's pub/sub stream turns every push into a `Msg` holding a
//! parsed `Value` (an owned array of owned byte strings) and hands it through a channel:
//! allocations and a task hop per delivery that the server under test does not pay for,
//! which would add load-generator time to Redis's latency. Here a push is recognised by its
//! fixed prefix (`*3\r\n$7\r\nmessage\r\n`, a comparison like [`crate::scan::kind`]'s), its
//! two lengths are read and the payload is handed out as a slice of the read buffer:
//! nothing is allocated per message. It also keeps the load generator free of a client
//! library (and its dependencies) it needs for nothing else.
//!
//! Both RESP2 arrays (`*`) and RESP3 pushes (`>`) are read; the workload speaks RESP2 (it
//! never sends `HELLO 3`). Every length is checked against [`MAX_BULK`] and the nesting of
//! arrays against [`MAX_DEPTH`] before anything is buffered for it, so a hostile or broken
//! server cannot make the reader's buffer grow without bound.

use bytes::{BufMut, BytesMut};

/// The largest bulk string (a published payload) the scanner accepts: 1 MiB, far above any
/// message the load generator publishes.
pub const MAX_BULK: usize = 1 << 20;
/// The largest array the scanner accepts, in elements.
pub const MAX_ARRAY: usize = 1024;
/// How deeply arrays may nest.
pub const MAX_DEPTH: usize = 4;

/// The fixed head of a published message on a RESP2 connection (`["message", ch, payload]`).
const MESSAGE_HEAD: &[u8] = b"*3\r\n$7\r\nmessage\r\n";
/// The same as a RESP3 push.
const MESSAGE_PUSH_HEAD: &[u8] = b">3\r\n$7\r\nmessage\r\n";

/// One complete value read from a Redis connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A message published on a channel this connection subscribed to.
    Message {
        /// The channel.
        channel: &'a [u8],
        /// What was published.
        payload: &'a [u8],
    },
    /// The confirmation of a `SUBSCRIBE`: the channel and how many channels this
    /// connection is now subscribed to.
    Subscribed {
        /// The channel.
        channel: &'a [u8],
        /// Subscriptions of the connection.
        count: i64,
    },
    /// An integer reply (`PUBLISH` answers with how many subscribers got the message).
    Integer(i64),
    /// An error reply (`-ERR …`), without its `-` and line end.
    Error(&'a [u8]),
    /// Anything else, skipped whole (another push, a status reply, a nil).
    Other,
}

/// What was read is not RESP, or breaks one of the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad reply from the Redis server: {0}")]
pub struct Malformed(pub &'static str);

/// Appends a command as a RESP array of bulk strings.
pub fn command(args: &[&[u8]], out: &mut BytesMut) {
    let len: usize = args.iter().map(|a| a.len() + 16).sum();
    out.reserve(len + 16);
    array_head(args.len(), out);
    for a in args {
        bulk(a, out);
    }
}

/// Appends `PUBLISH channel payload`.
#[inline]
pub fn publish(channel: &[u8], payload: &[u8], out: &mut BytesMut) {
    command(&[b"PUBLISH", channel, payload], out);
}

fn array_head(n: usize, out: &mut BytesMut) {
    out.put_u8(b'*');
    decimal(n, out);
    out.put_slice(b"\r\n");
}

fn bulk(s: &[u8], out: &mut BytesMut) {
    out.put_u8(b'$');
    decimal(s.len(), out);
    out.put_slice(b"\r\n");
    out.put_slice(s);
    out.put_slice(b"\r\n");
}

fn decimal(n: usize, out: &mut BytesMut) {
    let mut digits = [0; 20];
    out.put_slice(format_usize(n, &mut digits));
}

/// Writes `n` in decimal at the end of `buf`; returns the digits.
fn format_usize(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

/// Reads the value at the start of `buf`. Returns it and its length in bytes, or `None`
/// when `buf` holds only part of it (read more and call again with the same start).
///
/// # Errors
/// When the bytes are not RESP, or a length or nesting breaks the limits.
#[inline]
pub fn next(buf: &[u8]) -> Result<Option<(Item<'_>, usize)>, Malformed> {
    // The hot path: a published message, recognised by its fixed head.
    if buf.starts_with(MESSAGE_HEAD) || buf.starts_with(MESSAGE_PUSH_HEAD) {
        let at = MESSAGE_HEAD.len();
        let Some((channel, at)) = bulk_at(buf, at)? else {
            return Ok(None);
        };
        let Some((payload, at)) = bulk_at(buf, at)? else {
            return Ok(None);
        };
        return Ok(Some((Item::Message { channel, payload }, at)));
    }
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    match first {
        b':' => {
            let Some((line, end)) = line_at(buf, 1)? else {
                return Ok(None);
            };
            Ok(Some((Item::Integer(integer(line)?), end)))
        }
        b'-' => {
            let Some((line, end)) = line_at(buf, 1)? else {
                return Ok(None);
            };
            Ok(Some((Item::Error(line), end)))
        }
        b'*' | b'>' => array(buf),
        _ => Ok(skip(buf, 0, 0)?.map(|end| (Item::Other, end))),
    }
}

/// An array that is not a published message: a subscription confirmation, or anything
/// else (skipped).
fn array(buf: &[u8]) -> Result<Option<(Item<'_>, usize)>, Malformed> {
    let Some(end) = skip(buf, 0, 0)? else {
        return Ok(None);
    };
    // The whole array is in `buf`: `["subscribe", channel, count]` is read from it.
    let confirmation = (|| {
        let (line, at) = line_at(buf, 1).ok()??;
        if line != b"3" {
            return None;
        }
        let (kind, at) = bulk_at(buf, at).ok()??;
        if !kind.eq_ignore_ascii_case(b"subscribe") {
            return None;
        }
        let (channel, at) = bulk_at(buf, at).ok()??;
        if buf.get(at) != Some(&b':') {
            return None;
        }
        let (count, _) = line_at(buf, at + 1).ok()??;
        Some(Item::Subscribed {
            channel,
            count: integer(count).ok()?,
        })
    })();
    Ok(Some((confirmation.unwrap_or(Item::Other), end)))
}

/// The line starting at `at` (up to `\r\n`, which it must end with) and where the next
/// value starts; `None` when the line is not complete yet.
#[inline]
fn line_at(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, Malformed> {
    let rest = buf.get(at..).unwrap_or_default();
    match memchr::memchr(b'\r', rest) {
        Some(cr) => match rest.get(cr + 1) {
            Some(b'\n') => Ok(Some((&rest[..cr], at + cr + 2))),
            Some(_) => Err(Malformed("a line without \\n after its \\r")),
            None => Ok(None),
        },
        // A length or integer line is short: a long one without its end is not RESP.
        None if rest.len() > MAX_LINE => Err(Malformed("a line too long")),
        None => Ok(None),
    }
}

/// The longest simple line (status, error, integer, length) the scanner waits for.
const MAX_LINE: usize = 64 * 1024;

/// A bulk string (`$LEN\r\nBYTES\r\n`) starting at `at`, and where the next value starts.
#[inline]
fn bulk_at(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, Malformed> {
    if at >= buf.len() {
        return Ok(None);
    }
    if buf[at] != b'$' {
        return Err(Malformed("a bulk string expected"));
    }
    let Some((line, start)) = line_at(buf, at + 1)? else {
        return Ok(None);
    };
    let len = length(line, MAX_BULK)?;
    let end = start + len;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(Malformed("a bulk string without \\r\\n after it"));
    }
    Ok(Some((&buf[start..end], end + 2)))
}

/// Skips the value starting at `at` (nested `depth` arrays deep); returns where the next
/// value starts, or `None` when it is not complete yet.
fn skip(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, Malformed> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((line, mut next)) = line_at(buf, at + 1)? else {
        return Ok(None);
    };
    match kind {
        // Simple string, error, integer, RESP3 null, boolean, double, big number.
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Ok(Some(next)),
        // Bulk string, verbatim string, blob error (`$-1` is RESP2's nil).
        b'$' | b'=' | b'!' => {
            if line == b"-1" {
                return Ok(Some(next));
            }
            let end = next + length(line, MAX_BULK)?;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(Malformed("a bulk string without \\r\\n after it"));
            }
            Ok(Some(end + 2))
        }
        // Array, push, set, map (a map's length counts pairs).
        b'*' | b'>' | b'~' | b'%' => {
            if line == b"-1" {
                return Ok(Some(next));
            }
            if depth >= MAX_DEPTH {
                return Err(Malformed("arrays nested too deeply"));
            }
            let n = length(line, MAX_ARRAY)?;
            let n = if kind == b'%' { n * 2 } else { n };
            for _ in 0..n {
                match skip(buf, next, depth + 1)? {
                    Some(end) => next = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(next))
        }
        _ => Err(Malformed("an unknown type byte")),
    }
}

/// A length of at most `max`.
#[inline]
fn length(line: &[u8], max: usize) -> Result<usize, Malformed> {
    if line.is_empty() || line.len() > 10 || !line.iter().all(u8::is_ascii_digit) {
        return Err(Malformed("a bad length"));
    }
    let n = line
        .iter()
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    if n > max {
        return Err(Malformed("a length over the limit"));
    }
    Ok(n)
}

/// A signed decimal integer.
fn integer(line: &[u8]) -> Result<i64, Malformed> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed("a bad integer"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every item of `buf`, and how many bytes they took.
    fn all(buf: &[u8]) -> (Vec<Item<'_>>, usize) {
        let mut items = Vec::new();
        let mut at = 0;
        while let Some((item, n)) = next(&buf[at..]).unwrap() {
            items.push(item);
            at += n;
        }
        (items, at)
    }

    const CONFIRM: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nlg\r\n:1\r\n";
    const MSG1: &[u8] = b"*3\r\n$7\r\nmessage\r\n$2\r\nlg\r\n$9\r\n~0~1~500~\r\n";
    const MSG2: &[u8] = b"*3\r\n$7\r\nmessage\r\n$2\r\nlg\r\n$12\r\n~1~0~9~xx\r\nx\r\n";

    #[test]
    fn encodes_commands() {
        let mut out = BytesMut::new();
        command(&[b"SUBSCRIBE", b"lg"], &mut out);
        publish(b"lg", b"~0~1~500~", &mut out);
        assert_eq!(
            &out[..],
            &b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nlg\r\n*3\r\n$7\r\nPUBLISH\r\n$2\r\nlg\r\n$9\r\n~0~1~500~\r\n"[..]
        );
        let mut buf = [0; 20];
        assert_eq!(format_usize(0, &mut buf), b"0");
        assert_eq!(
            format_usize(usize::MAX, &mut buf),
            usize::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn reads_the_confirmation_then_several_messages_in_one_read() {
        let mut buf = CONFIRM.to_vec();
        buf.extend_from_slice(MSG1);
        buf.extend_from_slice(MSG2);
        let (items, used) = all(&buf);
        assert_eq!(used, buf.len());
        assert_eq!(
            items,
            vec![
                Item::Subscribed {
                    channel: b"lg",
                    count: 1
                },
                Item::Message {
                    channel: b"lg",
                    payload: b"~0~1~500~"
                },
                // A payload may hold \r\n: the length says where it ends.
                Item::Message {
                    channel: b"lg",
                    payload: b"~1~0~9~xx\r\nx"
                },
            ]
        );
    }

    #[test]
    fn a_partial_read_is_waited_for_at_every_cut() {
        let mut buf = MSG1.to_vec();
        buf.extend_from_slice(b":1000\r\n");
        buf.extend_from_slice(CONFIRM);
        for cut in 0..MSG1.len() {
            assert_eq!(next(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (items, used) = all(&buf[..MSG1.len() + 3]);
        assert_eq!(used, MSG1.len());
        assert_eq!(items.len(), 1);
        for cut in 0..CONFIRM.len() {
            assert_eq!(next(&CONFIRM[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (items, used) = all(&buf);
        assert_eq!(used, buf.len());
        assert_eq!(items[1], Item::Integer(1000));
    }

    #[test]
    fn replies_and_other_pushes_are_told_apart_or_skipped() {
        let buf = b"-ERR unknown command\r\n:-3\r\n+OK\r\n$-1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n*4\r\n$8\r\npmessage\r\n$2\r\nl*\r\n$2\r\nlg\r\n$1\r\nx\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n*3\r\n$11\r\nunsubscribe\r\n$2\r\nlg\r\n:0\r\n";
        let (items, used) = all(buf);
        assert_eq!(used, buf.len());
        assert_eq!(
            items,
            vec![
                Item::Error(b"ERR unknown command"),
                Item::Integer(-3),
                Item::Other,
                Item::Other,
                Item::Other,
                Item::Other,
                Item::Message {
                    channel: b"c",
                    payload: b"p"
                },
                Item::Other,
            ]
        );
    }

    #[test]
    fn refuses_what_is_not_resp_or_over_the_limits() {
        assert!(next(b"hello\r\n").is_err());
        assert!(next(b"*3\r\n$7\r\nmessage\r\n$x\r\n").is_err());
        assert!(next(b"*3\r\n$7\r\nmessage\r\n$1\r\nab\r\n").is_err());
        assert!(next(b":12x\r\n").is_err());
        assert!(next(b":1\rx").is_err());
        // A length over the limit fails at once, before its bytes are waited for.
        let big = format!("*3\r\n$7\r\nmessage\r\n$2\r\nlg\r\n${}\r\n", MAX_BULK + 1);
        assert!(next(big.as_bytes()).is_err());
        assert!(next(format!("*{}\r\n", MAX_ARRAY + 1).as_bytes()).is_err());
        assert!(next(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
        assert!(next(b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").unwrap().is_some());
        // A line that never ends is not waited for forever.
        let mut long = b"+".to_vec();
        long.resize(MAX_LINE + 2, b'a');
        assert!(next(&long).is_err());
        assert_eq!(next(b"").unwrap(), None);
    }
}
