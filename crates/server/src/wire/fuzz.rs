//! Fuzzing the line codec of the debugging listener (issue 10), with proptest in place of
//! cargo-fuzz (which needs a nightly toolchain).
//!
//! Hostile byte streams, cut into arbitrary chunks and fed piece by piece as a session
//! reading a socket does, must decode exactly as a small model of the line framing says:
//! every `\n`-terminated line of at most `max` bytes (its `\r` included) that is not blank
//! is one item, the parser's answer for it; the first line over `max` bytes, complete or
//! still unterminated, is the fatal `FrameTooLarge { max }` and nothing follows it. No
//! decode panics, none grows the buffer, and a waiting codec never holds more than `max`
//! bytes.
//!
//! Each property runs [`DEFAULT_CASES`] cases, so that `cargo test` stays fast; set
//! `PROPTEST_CASES` for more (`cargo xtask fuzz --cases N` does, on a release build).

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use simpletextim_proto::ErrorCode;

use super::{CodecError, LineCodec};
use simpletextim_proto::{Command, Failure, Rejected, Request};
use tokio_util::codec::Decoder;

/// Cases per property in a plain `cargo test` (each property then takes well under a
/// second in a debug build).
const DEFAULT_CASES: u32 = 256;

/// `PROPTEST_CASES` when it is set (`Config::default()` reads it; `with_cases` would ignore
/// it), [`DEFAULT_CASES`] otherwise. No regression files: a failure prints its minimal
/// input, and these tests write nothing into the tree.
fn config() -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = DEFAULT_CASES;
    }
    c.failure_persistence = None;
    c
}

/// What the codec made of a stream: its items, and the fatal error that ended it, if any.
#[derive(Debug, PartialEq)]
struct Outcome {
    items: Vec<Result<Request, Rejected>>,
    too_large: bool,
}

/// Cuts `stream` at `cuts` (all positions when `bytewise`), appends the pieces one by one
/// and decodes until `None` or an error (fatal: nothing is decoded after it). On every call:
/// the decoder does not grow the buffer, and when it waits it holds at most `max` bytes.
fn feed(max: usize, stream: &[u8], cuts: &[Index], bytewise: bool) -> Outcome {
    let mut points: Vec<usize> = if bytewise {
        (1..stream.len()).collect()
    } else {
        cuts.iter().map(|i| i.index(stream.len() + 1)).collect()
    };
    points.push(stream.len());
    points.sort_unstable();
    points.dedup();
    let mut codec = LineCodec::new(max);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut from = 0;
    for to in points {
        buf.extend_from_slice(&stream[from..to]);
        from = to;
        loop {
            let cap = buf.capacity();
            let r = codec.decode(&mut buf);
            assert!(buf.capacity() <= cap, "decode grew the buffer");
            match r {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    assert!(
                        buf.len() <= max,
                        "waiting with {} bytes buffered",
                        buf.len()
                    );
                    break;
                }
                Err(CodecError::FrameTooLarge { max: m }) => {
                    assert_eq!(m, max);
                    return Outcome {
                        items,
                        too_large: true,
                    };
                }
                Err(CodecError::Io(e)) => panic!("an in-memory decode failed with {e}"),
            }
        }
    }
    Outcome {
        items,
        too_large: false,
    }
}

/// The line framing's model.
fn model(max: usize, stream: &[u8]) -> Outcome {
    let mut items = Vec::new();
    let mut rest = stream;
    loop {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            // An unterminated line waits, unless it is already too long.
            return Outcome {
                items,
                too_large: rest.len() > max,
            };
        };
        let line = &rest[..end];
        if line.len() > max {
            return Outcome {
                items,
                too_large: true,
            };
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.iter().all(u8::is_ascii_whitespace) {
            items.push(Request::from_json(line));
        }
        rest = &rest[end + 1..];
    }
}

/// Every answer is a command that survives its own round trip, a 400, or a 413 for text
/// over 140 characters.
fn check_answer(answer: &Result<Request, Rejected>) -> Result<(), TestCaseError> {
    match answer {
        Ok(req) => prop_assert_eq!(&Request::from_json(&req.to_json()), answer),
        Err(Rejected { failure: f, .. }) => prop_assert!(
            f.error_code == ErrorCode::BadRequest
                || (f.error_code == ErrorCode::TooLarge
                    && f.reason.starts_with("message too long: ")),
            "{:?}",
            f
        ),
    }
    Ok(())
}

/// A `list` command padded with an ignored field to exactly `len` bytes (`len >= 29`).
fn padded_list(len: usize) -> Vec<u8> {
    let mut line = br#"{"command":"list","pad":""#.to_vec();
    line.resize(len - 2, b'x');
    line.extend_from_slice(br#""}"#);
    line
}

#[test]
fn lines_of_max_and_max_plus_one_bytes() {
    let max = 64;
    let exact = padded_list(max);
    for bytewise in [false, true] {
        // Exactly `max` bytes before the `\n`: read.
        let mut s = exact.clone();
        s.push(b'\n');
        let want = Outcome {
            items: vec![Ok(Request::new(Command::List))],
            too_large: false,
        };
        assert_eq!(feed(max, &s, &[], bytewise), want);
        // `max + 1`: refused, and nothing after it is read.
        let mut s = padded_list(max + 1);
        s.extend_from_slice(b"\n{\"command\":\"exit\"}\n");
        let refused = Outcome {
            items: vec![],
            too_large: true,
        };
        assert_eq!(feed(max, &s, &[], bytewise), refused);
        // The limit counts a `\r\n` line's `\r`: `max` bytes then `\r\n` are over it.
        let mut s = exact.clone();
        s.extend_from_slice(b"\r\n");
        assert_eq!(feed(max, &s, &[], bytewise), refused);
        let mut s = padded_list(max - 1);
        s.extend_from_slice(b"\r\n");
        assert_eq!(feed(max, &s, &[], bytewise), want);
    }
}

#[test]
fn no_newline_is_refused_as_soon_as_max_plus_one_bytes_are_buffered() {
    let max = 100;
    let mut codec = LineCodec::new(max);
    let mut buf = BytesMut::new();
    for i in 1..=max {
        buf.extend_from_slice(b"x");
        assert!(codec.decode(&mut buf).unwrap().is_none(), "refused at {i}");
    }
    buf.extend_from_slice(b"x");
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::FrameTooLarge { max: 100 })
    ));
    // A megabyte in one read: refused after one decode, whatever the size.
    let mut codec = LineCodec::new(max);
    let mut buf = BytesMut::from(&vec![b'{'; 1 << 20][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::FrameTooLarge { max: 100 })
    ));
}

/// Whitespace-only lines (`\r`, form feed) are skipped, a `\r\n` line is read without its
/// `\r`, and an unterminated last line waits.
#[test]
fn blank_lines_and_line_endings_exactly() {
    let stream = b"\n\r\n \t \r\n\x0c\n{\"command\":\"list\"}\r\n\r\n{\"command\":\"exit\"}\n \
        {\"command\":\"send\",\"message\":\"\"}\n\r\r\n{\"command\":\"list\"}";
    let got = feed(4096, stream, &[], true);
    assert_eq!(
        got,
        Outcome {
            items: vec![
                Ok(Request::new(Command::List)),
                Ok(Request::new(Command::Exit)),
                Err(Rejected {
                    r#ref: None,
                    failure: Failure::bad_request("message is empty"),
                }),
            ],
            too_large: false,
        }
    );
}

/// Bytes that matter to the line framing and the JSON parser.
const NASTY: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"\t",
    b"\0",
    b"\xff",
    b"\xef\xbb\xbf",
    b"{",
    b"}",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    "é漢🎉\u{301}".as_bytes(),
];

/// `to` values: everyone, a user, and invalid ones.
const TO: &[&str] = &["*", "bob", "", "**", "a/b"];
/// Plain lines: commands, nothing, blanks.
const PLAIN: &[&[u8]] = &[
    br#"{"command":"list"}"#,
    br#"{"command":"exit"}"#,
    b"",
    b"   ",
    b"\t\x0b",
];
/// Openings to nest.
const OPEN: &[&[u8]] = &[b"[", b"{\"a\":"];
/// Line ends (and none: lines run together).
const ENDS: &[&[u8]] = &[b"\n", b"\r\n", b""];

/// A hostile line (without its terminator).
fn line() -> impl Strategy<Value = Vec<u8>> {
    let text = prop::collection::vec(
        prop_oneof![
            3 => "[a-z*/ .]{1,10}".prop_map(String::into_bytes),
            1 => prop::sample::select(NASTY).prop_map(<[u8]>::to_vec),
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat());
    prop_oneof![
        3 => (text.clone(), prop::sample::select(TO)).prop_map(|(m, to)| {
            let mut l = br#"{"command":"send","message":""#.to_vec();
            l.extend_from_slice(&m);
            l.extend_from_slice(format!(r#"","to":"{to}"}}"#).as_bytes());
            l
        }),
        2 => (text.clone(), text.clone()).prop_map(|(u, p)| {
            let mut l = br#"{"command":"login "#.to_vec();
            l.extend_from_slice(&u);
            l.push(b'/');
            l.extend_from_slice(&p);
            l.extend_from_slice(br#""}"#);
            l
        }),
        1 => prop::sample::select(PLAIN)
            .prop_map(<[u8]>::to_vec),
        1 => text,
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => (1..600usize, prop::sample::select(OPEN)).prop_map(|(n, open)| open.repeat(n)),
    ]
}

/// A stream: lines joined by `\n` or `\r\n`, the last one perhaps unterminated.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(
        (line(), prop::sample::select(ENDS)),
        0..10,
    ),)
        .prop_map(|(lines,)| {
            let mut s = Vec::new();
            for (l, end) in lines {
                s.extend_from_slice(&l);
                s.extend_from_slice(end);
            }
            s
        })
}

fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), 1..64usize, Just(300usize), Just(4096usize)]
}

proptest! {
    #![proptest_config(config())]

    /// Any stream, any chunking, any limit: exactly what the model says.
    #[test]
    fn line_codec_decodes_hostile_streams_exactly_in_any_chunking(
        s in stream(),
        max in limit(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        bytewise in prop::bool::weighted(0.1),
    ) {
        let got = feed(max, &s, &cuts, bytewise);
        prop_assert_eq!(&got, &model(max, &s));
        for item in &got.items {
            check_answer(item)?;
        }
    }

    /// Arbitrary bytes, arbitrary chunking: the same.
    #[test]
    fn line_codec_survives_arbitrary_bytes(
        s in prop::collection::vec(any::<u8>(), 0..1024),
        max in limit(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        prop_assert_eq!(feed(max, &s, &cuts, false), model(max, &s));
    }

    /// A valid command after any junk lines within the limit is read exactly: the framing
    /// resynchronises at every newline.
    #[test]
    fn a_command_after_junk_lines_decodes_exactly(
        junk in prop::collection::vec(line(), 0..6),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let max = 4096;
        let mut s = Vec::new();
        for j in junk.iter().filter(|j| j.len() <= max && !j.contains(&b'\n')) {
            s.extend_from_slice(j);
            s.push(b'\n');
        }
        s.extend_from_slice(b"{\"command\":\"login Alice/pw\"}\r\n");
        let got = feed(max, &s, &cuts, false);
        prop_assert!(!got.too_large);
        let last = got.items.last().expect("at least the command").clone();
        prop_assert_eq!(
            String::from_utf8(last.expect("a valid command").to_json()).unwrap(),
            r#"{"command":"login Alice/pw"}"#
        );
    }
}
