//! Fuzzing the frame decoder and the command parser (issue 10), with proptest in place of
//! cargo-fuzz (which needs a nightly toolchain).
//!
//! Hostile byte streams, cut into arbitrary chunks and fed piece by piece into a `BytesMut`
//! as a server reading a socket does, must decode exactly as a small reference model of the
//! framing says: every frame within the limit is one item (the parser's answer for its
//! payload), the first length header over the limit is the fatal `FrameTooLarge { max }`
//! and nothing follows it. No decode ever panics, and none allocates more than the limit
//! allows: a counting allocator watches every allocation made inside `decode`.
//!
//! `properties.rs` holds the round trips and the unchunked checks; this file adds the
//! chunking, the limits, the hostile generators and an exact corpus.
//!
//! Each property runs [`DEFAULT_CASES`] cases, so that `cargo test` stays fast; set
//! `PROPTEST_CASES` for more (`cargo xtask fuzz --cases N` does, on a release build).

// The counting allocator below is the only unsafe code: it forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use serde::Deserialize;
use simpletextim_proto::Ref;
use simpletextim_proto::codec::{DEFAULT_MAX_COMMAND_FRAME, encode_frame};
use simpletextim_proto::{
    ClientCodec, CodecError, Command, ErrorCode, Failure, Rejected, Reply, Request, ServerCodec,
};
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------------------
// A counting allocator: the largest allocation this thread asked for while measuring.

struct Counting;

thread_local! {
    /// `Some(largest size so far)` while this thread measures; `None` otherwise.
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note(size: usize) {
    // `try_with`: the thread may be tearing down its locals.
    let _ = LARGEST.try_with(|l| {
        if let Some(m) = l.get() {
            l.set(Some(m.max(size)));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; `note`
// neither allocates nor unwinds (a const-initialised `Cell` needs no lazy initialisation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`, returning its result and the largest single allocation it made on this thread.
fn largest_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(Some(0)));
    let r = f();
    let largest = LARGEST.with(|l| l.replace(None)).unwrap_or(0);
    (r, largest)
}

#[test]
fn the_counting_allocator_sees_allocations() {
    let (v, largest) = largest_alloc(|| vec![0u8; 10_000]);
    assert!(largest >= 10_000 && v.len() == 10_000);
    let (_, none) = largest_alloc(|| ());
    assert_eq!(none, 0);
}

// ---------------------------------------------------------------------------------------
// Case counts.

/// Cases per property in a plain `cargo test` (each property then takes well under a
/// second in a debug build).
const DEFAULT_CASES: u32 = 256;

/// `PROPTEST_CASES` when it is set (`ProptestConfig::default()` reads it; `with_cases`
/// would ignore it), [`DEFAULT_CASES`] otherwise. No regression files: a failure prints its
/// minimal input, and these tests write nothing into the tree.
fn config() -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = DEFAULT_CASES;
    }
    c.failure_persistence = None;
    c
}

// ---------------------------------------------------------------------------------------
// Feeding a decoder the way a server reads a socket.

/// What a decoder made of a stream: its items, and the fatal error that ended it, if any.
#[derive(Debug, PartialEq)]
struct Outcome<T> {
    items: Vec<T>,
    too_large: Option<usize>,
}

/// Cuts `stream` at `cuts` (positions taken modulo its length; all of them when
/// `bytewise`), appends the pieces one by one to a buffer, and after each piece decodes
/// until `None` or an error. An error is fatal: nothing is decoded after it.
///
/// Checks on every `decode` call: a waiting decoder holds less than one frame (`len <
/// max + 4`), and no allocation inside `decode` exceeds what the limit allows (twice the
/// larger of the buffer's capacity and a whole frame, for the buffer's own growth, plus a
/// little for parser bookkeeping).
fn feed<D>(
    mut codec: D,
    max: usize,
    stream: &[u8],
    cuts: &[Index],
    bytewise: bool,
) -> Outcome<D::Item>
where
    D: Decoder<Error = CodecError>,
{
    let mut points: Vec<usize> = if bytewise {
        (1..stream.len()).collect()
    } else {
        cuts.iter().map(|i| i.index(stream.len() + 1)).collect()
    };
    points.push(stream.len());
    points.sort_unstable();
    points.dedup();
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut from = 0;
    for to in points {
        buf.extend_from_slice(&stream[from..to]);
        from = to;
        loop {
            let (len, cap) = (buf.len(), buf.capacity());
            let bound = 2 * cap.max(len + max + 4) + 1024;
            let (r, largest) = largest_alloc(|| codec.decode(&mut buf));
            assert!(
                largest <= bound,
                "decode allocated {largest} bytes (buffer {len}/{cap}, limit {max})"
            );
            match r {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    assert!(
                        buf.len() < max + 4,
                        "waiting with {} bytes buffered",
                        buf.len()
                    );
                    break;
                }
                Err(CodecError::FrameTooLarge { max: m }) => {
                    assert_eq!(m, max);
                    return Outcome {
                        items,
                        too_large: Some(m),
                    };
                }
                Err(CodecError::Io(e)) => panic!("an in-memory decode failed with {e}"),
            }
        }
    }
    Outcome {
        items,
        too_large: None,
    }
}

/// The framing's reference model: frames read in order until the bytes run out, a length
/// header over `max` ends the stream, `item` is what a frame's payload decodes to.
fn model<T>(max: usize, stream: &[u8], item: impl Fn(&[u8]) -> T) -> Outcome<T> {
    let mut items = Vec::new();
    let mut rest = stream;
    while let Some((head, body)) = rest.split_first_chunk::<4>() {
        let n = u32::from_be_bytes(*head) as usize;
        if n > max {
            return Outcome {
                items,
                too_large: Some(max),
            };
        }
        if body.len() < n {
            break;
        }
        items.push(item(&body[..n]));
        rest = &body[n..];
    }
    Outcome {
        items,
        too_large: None,
    }
}

/// What `ClientCodec` must make of a frame: the reply, or `Unreadable` with the frame's
/// `command` (when it has a string one) and the parser's message.
fn reply_of(payload: &[u8]) -> Reply {
    #[derive(Deserialize)]
    struct Kind {
        command: String,
    }
    Reply::from_json(payload).unwrap_or_else(|e| Reply::Unreadable {
        kind: serde_json::from_slice::<Kind>(payload)
            .ok()
            .map(|k| k.command),
        error: e.to_string(),
    })
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_frame(payload, usize::MAX, &mut b).expect("no limit");
    b.to_vec()
}

/// A rejection without `ref`.
fn rejected(failure: Failure) -> Rejected {
    Rejected {
        r#ref: None,
        failure,
    }
}

/// Every answer the parser gives is a request that survives its own round trip, a 400, or
/// a 413 for a message over 140 characters.
fn check_answer(payload: &[u8], answer: &Result<Request, Rejected>) -> Result<(), TestCaseError> {
    // Reading only the command gives the same answer, unless the ref itself is refused.
    let command = Command::from_json(payload);
    match answer {
        Ok(req) => prop_assert_eq!(&command, &Ok(req.command.clone())),
        Err(r) if r.failure == Ref::invalid() => prop_assert_eq!(&r.r#ref, &None),
        Err(r) => prop_assert_eq!(&command, &Err(r.failure.clone())),
    }
    match answer {
        Ok(req) => prop_assert_eq!(&Request::from_json(&req.to_json()), answer),
        Err(Rejected { failure: f, .. }) => match f.error_code {
            ErrorCode::BadRequest => prop_assert!(!f.reason.is_empty()),
            ErrorCode::TooLarge => prop_assert!(
                f.reason.starts_with("message too long: ")
                    && f.reason.ends_with(" characters (at most 140)"),
                "{:?} for {:?}",
                f,
                String::from_utf8_lossy(payload)
            ),
            other => prop_assert!(
                false,
                "code {} for {:?}",
                other,
                String::from_utf8_lossy(payload)
            ),
        },
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The exact corpus.

/// `Ok(json)`: decodes to the command whose canonical JSON is `json`; `Err((code, reason))`:
/// decodes to exactly that failure.
type Expect = Result<&'static str, (u16, &'static str)>;

/// Hostile payloads and exactly what the parser answers (docs/PROTOCOL.md: 400 for anything
/// malformed, 413 for text over 140 characters; the reasons are command.rs's and types.rs's).
const CORPUS: &[(&[u8], Expect)] = &[
    (
        br#"{"command":"send","message":"","to":"*"}"#,
        Err((400, "message is empty")),
    ),
    (
        br#"{"command":"send","message":" \u3000 ","to":"*"}"#,
        Err((400, "message is empty")),
    ),
    (
        br#"{"command":"send","message":"a\u0000b"}"#,
        Err((400, "message contains control characters")),
    ),
    (
        br#"{"command":"send","message":"\u001b[2J"}"#,
        Err((400, "message contains control characters")),
    ),
    (
        br#"{"command":"send","message":"\u0085"}"#,
        Err((400, "message contains control characters")),
    ),
    (
        br#"{"command":"send","message":"hi","to":"\u002a"}"#,
        Ok(r#"{"command":"send","message":"hi","to":"*"}"#),
    ),
    (
        br#"{"command":"send","message":"hi","to":null,"to2":[1,{"a":null}]}"#,
        Ok(r#"{"command":"send","message":"hi","to":"*"}"#),
    ),
    (
        br#"{"command":"send","message":"hi","to":""}"#,
        Err((400, "invalid user id: empty")),
    ),
    (
        br#"{"command":"send","message":"hi","to":"**"}"#,
        Err((400, r#"invalid user id: "**" (allowed: A-Z a-z 0-9 _ . -)"#)),
    ),
    (
        br#"{"command":"send","message":"hi","to":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
        Err((400, "invalid user id: longer than 32 characters")),
    ),
    (
        br#"{"command":"send","message":"\u00e9\u00e9\u00e9"}"#,
        Ok(r#"{"command":"send","message":"ééé","to":"*"}"#),
    ),
    (
        br#"{"command":"send"}"#,
        Err((400, "send: missing field message")),
    ),
    (
        br#"{"command":"list","command":"exit"}"#,
        Err((
            400,
            "malformed command: duplicate field `command` at line 1 column 27",
        )),
    ),
    (
        br#"{"command":"list","extra":{"deep":[[[[[]]]]]},"n":1e999}"#,
        Ok(r#"{"command":"list"}"#),
    ),
    (
        br#"{"command":"list","n":123456789012345678901234567890}"#,
        Ok(r#"{"command":"list"}"#),
    ),
    (
        br#"{"command":"send","message":"\ud800"}"#,
        Err((
            400,
            "invalid JSON: unexpected end of hex escape at line 1 column 36",
        )),
    ),
    (
        br#"{"command":"send","message":"\udc00x"}"#,
        Err((
            400,
            "invalid JSON: lone leading surrogate in hex escape at line 1 column 35",
        )),
    ),
    (
        br#"{"command":"send","message":"\ud83d\ude00"}"#,
        Ok(r#"{"command":"send","message":"😀","to":"*"}"#),
    ),
    (
        br#"{"command":"login alice/"}"#,
        Err((400, "invalid password: empty")),
    ),
    (
        br#"{"command":"login /pw"}"#,
        Err((400, "invalid user id: empty")),
    ),
    (
        br#"{"command":"login alice"}"#,
        Err((400, r#"login: expected "login USER_ID/PASSWORD""#)),
    ),
    (
        br#"{"command":"login al/ice/pw"}"#,
        Ok(r#"{"command":"login al/ice/pw"}"#),
    ),
    (
        br#"{"command":"login  alice/pw"}"#,
        Err((
            400,
            r#"invalid user id: " alice" (allowed: A-Z a-z 0-9 _ . -)"#,
        )),
    ),
    (
        br#"{"command":"login \u00e9/pw"}"#,
        Err((400, r#"invalid user id: "é" (allowed: A-Z a-z 0-9 _ . -)"#)),
    ),
    (
        br#"{"command":"login alice\u0000/pw"}"#,
        Err((
            400,
            r#"invalid user id: "alice\0" (allowed: A-Z a-z 0-9 _ . -)"#,
        )),
    ),
    (
        br#"{"command":"login alice/\u0000"}"#,
        Ok("{\"command\":\"login alice/\\u0000\"}"),
    ),
    (
        br#"{"command":"login ","user_id":"a","password":"b"}"#,
        Err((400, r#"login: expected "login USER_ID/PASSWORD""#)),
    ),
    (
        br#"{"command":"login","user_id":"alice","password":7}"#,
        Err((
            400,
            "malformed command: invalid type: integer `7`, expected a string at line 1 column 49",
        )),
    ),
    (
        br#"{"command":"login","user_id":"alice"}"#,
        Err((400, "login: missing field password")),
    ),
    (
        br#"{"command":"Login alice/pw"}"#,
        Err((400, r#"unknown command: "Login alice/pw""#)),
    ),
    (
        br#"{"command":"login\talice/pw"}"#,
        Err((400, r#"unknown command: "login\talice/pw""#)),
    ),
    (
        br#"{"command":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        Err((
            400,
            r#"unknown command: "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx""#,
        )),
    ),
    (
        br#"{"command":null}"#,
        Err((
            400,
            "malformed command: invalid type: null, expected a string at line 1 column 15",
        )),
    ),
    (
        br#"{"command":["list"]}"#,
        Err((
            400,
            "malformed command: invalid type: sequence, expected a string at line 1 column 11",
        )),
    ),
    (
        br#"{}"#,
        Err((
            400,
            "malformed command: missing field `command` at line 1 column 2",
        )),
    ),
    (
        br#"[{"command":"list"}]"#,
        Err((400, "a command must be a JSON object")),
    ),
    (
        br#"{"command":"list"} {"command":"exit"}"#,
        Err((400, "invalid JSON: trailing characters at line 1 column 20")),
    ),
    (
        b"  \t\r\n{\"command\":\"list\"}  \n",
        Ok(r#"{"command":"list"}"#),
    ),
    (
        b"\xef\xbb\xbf{\"command\":\"list\"}",
        Err((400, "invalid JSON: expected value at line 1 column 1")),
    ),
    (
        b"{\"command\":\"li\xffst\"}",
        Err((
            400,
            "invalid JSON: invalid unicode code point at line 1 column 15",
        )),
    ),
    (
        b"",
        Err((
            400,
            "invalid JSON: EOF while parsing a value at line 1 column 0",
        )),
    ),
    (
        b"{",
        Err((
            400,
            "invalid JSON: EOF while parsing an object at line 1 column 1",
        )),
    ),
    (
        b"\x00\x00\x00\x00",
        Err((400, "invalid JSON: expected value at line 1 column 1")),
    ),
];

fn corpus_answer(expect: &Expect) -> Result<Command, Failure> {
    match expect {
        Ok(json) => {
            Ok(Command::from_json(json.as_bytes()).expect("the corpus's commands are valid"))
        }
        Err((code, reason)) => Err(Failure::new(ErrorCode::from_u16(*code), *reason)),
    }
}

#[test]
fn the_corpus_decodes_exactly_whole_and_byte_by_byte() {
    let mut stream = Vec::new();
    let mut want = Vec::new();
    let mut wrong = Vec::new();
    for (payload, expect) in CORPUS {
        let answer = Command::from_json(payload);
        if answer != corpus_answer(expect) {
            wrong.push(format!("{}: {answer:?}", String::from_utf8_lossy(payload)));
        }
        // Without a ref, a request is its command.
        let request = Request::from_json(payload);
        assert_eq!(
            request.clone().map(|r| r.command).map_err(|r| r.failure),
            answer.clone()
        );
        assert!(
            request.as_ref().is_ok_and(|r| r.r#ref.is_none())
                || request.as_ref().is_err_and(|r| r.r#ref.is_none())
        );
        // Canonical forms keep their exact spelling (`UserId` equality ignores case).
        if let (Ok(cmd), Ok(json)) = (&answer, expect) {
            assert_eq!(String::from_utf8(cmd.to_json()).unwrap(), *json);
        }
        stream.extend_from_slice(&frame(payload));
        want.push(request);
    }
    assert!(
        wrong.is_empty(),
        "answers differ from the corpus:\n{}",
        wrong.join("\n")
    );
    let max = DEFAULT_MAX_COMMAND_FRAME;
    for bytewise in [false, true] {
        let got = feed(ServerCodec::new(), max, &stream, &[], bytewise);
        assert_eq!(
            got,
            Outcome {
                items: want.clone(),
                too_large: None
            }
        );
    }
}

/// Nesting to the frame's limit is parsed without recursion (or within serde_json's limit):
/// a 400, never a stack overflow.
#[test]
fn deep_nesting_is_a_400_not_a_stack_overflow() {
    let max = DEFAULT_MAX_COMMAND_FRAME;
    let mut wrong = Vec::new();
    for (open, close, want) in [
        ("[", "]", Err("a command must be a JSON object")),
        (
            "[",
            "",
            Err("invalid JSON: EOF while parsing a list at line 1 column 4092"),
        ),
        (
            "{\"a\":",
            "}",
            Err("malformed command: missing field `command` at line 1 column 4096"),
        ),
        (
            "{\"a\":",
            "",
            Err("invalid JSON: EOF while parsing a value at line 1 column 4090"),
        ),
        (
            "{\"command\":",
            "}",
            Err("malformed command: invalid type: map, expected a string at line 1 column 11"),
        ),
        // Unknown fields are skipped however deep they go.
        ("{\"command\":\"list\",\"a\":", "}", Ok(Command::List)),
    ] {
        let depth = (max - 4) / (open.len() + close.len());
        let mut payload = open.repeat(depth);
        if !close.is_empty() {
            payload.push_str("null");
            payload.push_str(&close.repeat(depth));
        }
        let got = feed(
            ServerCodec::new(),
            max,
            &frame(payload.as_bytes()),
            &[],
            false,
        );
        if got.items
            != [want
                .map(Request::new)
                .map_err(|r| rejected(Failure::bad_request(r)))]
        {
            wrong.push(format!("{open}…{close}: {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn length_headers_of_zero_max_and_max_plus_one() {
    let max = DEFAULT_MAX_COMMAND_FRAME;
    // A frame of exactly `max` bytes: a list padded with an ignored field.
    let head = br#"{"command":"list","pad":""#;
    let mut full = head.to_vec();
    full.resize(max - 2, b'x');
    full.extend_from_slice(br#""}"#);
    assert_eq!(full.len(), max);
    let mut stream = frame(b"");
    stream.extend_from_slice(&frame(&full));
    stream.extend_from_slice(&((max + 1) as u32).to_be_bytes());
    stream.extend_from_slice(&frame(br#"{"command":"exit"}"#));
    let got = feed(ServerCodec::new(), max, &stream, &[], true);
    assert_eq!(
        got,
        Outcome {
            items: vec![
                Err(rejected(Failure::bad_request(
                    "invalid JSON: EOF while parsing a value at line 1 column 0"
                ))),
                Ok(Request::new(Command::List)),
            ],
            too_large: Some(max),
        }
    );
}

// ---------------------------------------------------------------------------------------
// Generators.

/// Characters that trouble validators: separators, `*`, multi-byte, combining marks,
/// zero-width, controls (C0, C1, DEL), line separators, a BOM.
const NASTY_CHARS: &[char] = &[
    'a', 'Z', '9', '_', '.', '-', '/', ' ', '*', '"', '\\', 'é', '\u{301}', '漢', '🎉', '\u{200b}',
    '\u{85}', '\u{7f}', '\u{1b}', '\n', '\t', '\0', '\u{feff}', '\u{2028}', '\u{3000}',
];

/// Raw text to splice inside a JSON string literal: escapes serde_json accepts and refuses
/// (lone surrogates, a bad escape, a raw control byte).
const RAW_ESCAPES: &[&str] = &[
    r"\u0000",
    r"\ud800",
    r"\udfff",
    r"\ud800\u0041",
    r"\ud83d\ude00",
    r"\u0301",
    r"\/",
    r"\\",
    r#"\""#,
    r"\u002a",
    r"\u00e9",
    r"\x",
    r"\u12",
    "\u{1}",
    "\t",
    r"\n",
];

/// The inside of a JSON string literal (without quotes), possibly invalid.
fn string_body() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::collection::vec(prop::sample::select(NASTY_CHARS), 1..12).prop_map(|cs| {
                let s: String = cs.into_iter().collect();
                let quoted = serde_json::to_string(&s).expect("a string serializes");
                quoted[1..quoted.len() - 1].to_owned()
            }),
            2 => "[A-Za-z0-9_.-]{1,40}",
            1 => prop::sample::select(RAW_ESCAPES).prop_map(str::to_owned),
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat())
}

/// A message of 139 to 142 characters, mostly multi-byte, some of them combining marks.
fn message_near_the_limit() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(&['é', '漢', '🎉', 'e', '\u{301}', 'x', ' '][..]),
        139..=142,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

/// A JSON value for a field: strings of every sort and values of the wrong type.
fn odd_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => string_body().prop_map(|b| format!("\"{b}\"")),
        1 => prop::sample::select(&[
            "null", "true", "0", "-0", "1e400", "-1.5e-400", "[]", "{}", "[\"*\"]", "{\"a\":1}",
            "\"\"", "\"*\"", "\"**\"", "\" *\"", "\"ALICE\"", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
            "\"bob\\u0000\"", "18446744073709551616",
        ][..])
        .prop_map(str::to_owned),
        1 => "[0-9]{1,400}",
    ]
}

/// Bytes to put before or after a command: whitespace, a BOM, a brace, NUL, non-UTF-8.
const JUNK: &[&[u8]] = &[b"", b" ", b"\n", b"\xef\xbb\xbf", b"}", b"\0", b"\xff"];

/// Structured hostile commands: plausible shapes with hostile contents.
fn hostile_json() -> impl Strategy<Value = Vec<u8>> {
    let send = (
        prop_oneof![
            2 => message_near_the_limit().prop_map(|m| serde_json::to_string(&m).expect("a string serializes")),
            2 => odd_value(),
        ],
        proptest::option::of(odd_value()),
        prop::collection::vec(("[a-z_]{1,8}", odd_value()), 0..3),
    )
        .prop_map(|(message, to, extra)| {
            let mut fields = vec![r#""command":"send""#.to_owned(), format!(r#""message":{message}"#)];
            if let Some(to) = to {
                fields.push(format!(r#""to":{to}"#));
            }
            fields.extend(extra.into_iter().map(|(k, v)| format!(r#""{k}":{v}"#)));
            fields
        });
    let seed_login = (string_body(), string_body(), "[/ ]{0,3}")
        .prop_map(|(u, p, sep)| vec![format!(r#""command":"login {u}/{sep}{p}""#)]);
    let login =
        (odd_value(), odd_value(), proptest::option::of(odd_value())).prop_map(|(u, p, extra)| {
            let mut fields = vec![
                r#""command":"login""#.to_owned(),
                format!(r#""user_id":{u}"#),
                format!(r#""password":{p}"#),
            ];
            fields.extend(extra.map(|v| format!(r#""command":{v}"#)));
            fields
        });
    let any_command = (
        odd_value(),
        prop::collection::vec(("[a-z_]{1,8}", odd_value()), 0..3),
    )
        .prop_map(|(c, extra)| {
            let mut fields = vec![format!(r#""command":{c}"#)];
            fields.extend(extra.into_iter().map(|(k, v)| format!(r#""{k}":{v}"#)));
            fields
        });
    let object = prop_oneof![send, seed_login, login, any_command]
        .prop_shuffle()
        .prop_map(|fields| format!("{{{}}}", fields.join(",")).into_bytes());
    let nesting = (
        prop::sample::select(&["[", "{\"a\":", "[{\"command\":"][..]),
        1..400usize,
        any::<bool>(),
    )
        .prop_map(|(open, depth, closed)| {
            let mut s = open.repeat(depth);
            if closed {
                for c in s.clone().chars().rev() {
                    match c {
                        '[' => s.push(']'),
                        '{' => s.push('}'),
                        ':' => s.push_str("null"),
                        _ => {}
                    }
                }
            }
            s.into_bytes()
        });
    prop_oneof![
        8 => object,
        1 => nesting,
        // Cut or padded: truncation, trailing garbage, leading whitespace and BOMs.
        1 => (prop_oneof![Just(b"{\"command\":\"list\"}".to_vec()), Just(b"{\"command\":\"send\",\"message\":\"hi\"}".to_vec())],
              any::<Index>(),
              prop::sample::select(JUNK),
              any::<bool>())
            .prop_map(|(json, cut, junk, before)| {
                let mut v = json[..cut.index(json.len() + 1)].to_vec();
                if before { v.splice(0..0, junk.iter().copied()); } else { v.extend_from_slice(junk); }
                v
            }),
    ]
}

/// Payloads for frames: hostile JSON, arbitrary bytes and strings, and the corpus.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => hostile_json(),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => prop::sample::select(CORPUS).prop_map(|(p, _)| p.to_vec()),
    ]
}

/// Limits to decode with: mostly the default, also tiny ones (most frames refused) and one
/// between.
fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(0usize),
        1 => 1..64usize,
        1 => Just(300usize),
        4 => Just(DEFAULT_MAX_COMMAND_FRAME),
    ]
}

/// One piece of a hostile stream.
#[derive(Debug, Clone)]
enum Piece {
    /// A well-formed frame around a payload.
    Frame(Vec<u8>),
    /// Raw bytes that break the framing (they become headers and bodies of their own).
    Junk(Vec<u8>),
    /// A bare length header: `0`, `max`, `max + 1` or `u32::MAX`, or any.
    Header(HeaderLen),
}

#[derive(Debug, Clone, Copy)]
enum HeaderLen {
    Zero,
    Max,
    MaxPlusOne,
    U32Max,
    Any(u32),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        24 => payload().prop_map(Piece::Frame),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Piece::Junk),
        1 => prop_oneof![
            Just(HeaderLen::Zero),
            Just(HeaderLen::Max),
            Just(HeaderLen::MaxPlusOne),
            Just(HeaderLen::U32Max),
            any::<u32>().prop_map(HeaderLen::Any),
        ]
        .prop_map(Piece::Header),
    ]
}

fn stream_of(pieces: &[Piece], max: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in pieces {
        match p {
            Piece::Frame(payload) => out.extend_from_slice(&frame(payload)),
            Piece::Junk(bytes) => out.extend_from_slice(bytes),
            Piece::Header(h) => out.put_u32(match *h {
                HeaderLen::Zero => 0,
                HeaderLen::Max => u32::try_from(max).unwrap_or(u32::MAX),
                HeaderLen::MaxPlusOne => u32::try_from(max + 1).unwrap_or(u32::MAX),
                HeaderLen::U32Max => u32::MAX,
                HeaderLen::Any(n) => n,
            }),
        }
    }
    out.to_vec()
}

// ---------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(config())]

    /// Any stream, any chunking, any limit: the server's decoder yields exactly what the
    /// framing model says, never panics, never buffers a refused frame, never over-allocates.
    #[test]
    fn server_codec_decodes_hostile_streams_exactly_in_any_chunking(
        pieces in prop::collection::vec(piece(), 0..8),
        max in limit(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        bytewise in prop::bool::weighted(0.1),
    ) {
        let stream = stream_of(&pieces, max);
        let got = feed(ServerCodec::with_limits(max, max), max, &stream, &cuts, bytewise);
        let want = model(max, &stream, Request::from_json);
        prop_assert_eq!(&got, &want);
        for (item, payload) in got.items.iter().zip(frames_of(&stream)) {
            check_answer(payload, item)?;
        }
    }

    /// The same for the client's decoder: every frame is one reply (`Unreadable` when it is
    /// not one this crate reads), whatever its payload and however it arrives.
    #[test]
    fn client_codec_decodes_hostile_streams_exactly_in_any_chunking(
        pieces in prop::collection::vec(piece(), 0..8),
        max in limit(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        bytewise in prop::bool::weighted(0.1),
    ) {
        let stream = stream_of(&pieces, max);
        let got = feed(ClientCodec::with_limits(max, max), max, &stream, &cuts, bytewise);
        prop_assert_eq!(got, model(max, &stream, reply_of));
    }

    /// Well-framed junk does not desynchronise the framing: a valid command after any
    /// number of junk frames (within the limit) decodes exactly, and nothing follows it.
    #[test]
    fn a_command_after_junk_frames_decodes_exactly(
        junk in prop::collection::vec(payload(), 0..6),
        cmd in prop::sample::select(&[
            r#"{"command":"login Alice/se/cret"}"#,
            r#"{"command":"send","message":"héllo 🎉","to":"bob"}"#,
            r#"{"command":"list"}"#,
            r#"{"command":"exit"}"#,
        ][..]),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let max = DEFAULT_MAX_COMMAND_FRAME;
        let mut stream = Vec::new();
        for j in junk.iter().filter(|j| j.len() <= max) {
            stream.extend_from_slice(&frame(j));
        }
        stream.extend_from_slice(&frame(cmd.as_bytes()));
        let got = feed(ServerCodec::new(), max, &stream, &cuts, false);
        prop_assert_eq!(got.too_large, None);
        let last = got.items.last().expect("at least the command").clone();
        let cmd_back = last.expect("the command is valid");
        prop_assert_eq!(String::from_utf8(cmd_back.to_json()).unwrap(), cmd);
        prop_assert_eq!(got.items.len(), junk.iter().filter(|j| j.len() <= max).count() + 1);
    }

    /// A length header over the limit is refused on the header itself: before its body is
    /// buffered, without reserving room for it, with exactly `FrameTooLarge { max }`.
    #[test]
    fn an_oversized_header_is_refused_before_its_body_is_buffered(
        max in limit(),
        over in prop_oneof![Just(1u64), 2..1000u64, Just(u64::MAX)],
        before in prop::collection::vec(payload(), 0..3),
        body in prop::collection::vec(any::<u8>(), 0..64),
        header_cut in 0..=4usize,
        client in any::<bool>(),
    ) {
        let n = u32::try_from((max as u64).saturating_add(over)).unwrap_or(u32::MAX);
        let mut server = ServerCodec::with_limits(max, max);
        let mut client_codec = ClientCodec::with_limits(max, max);
        let mut decode = |buf: &mut BytesMut| if client {
            client_codec.decode(buf).map(|o| o.map(|_| ()))
        } else {
            server.decode(buf).map(|o| o.map(|_| ()))
        };
        let mut buf = BytesMut::new();
        for p in before.iter().filter(|p| p.len() <= max) {
            buf.extend_from_slice(&frame(p));
            while decode(&mut buf).expect("within the limit").is_some() {}
        }
        prop_assert!(buf.is_empty());
        let header = n.to_be_bytes();
        buf.extend_from_slice(&header[..header_cut]);
        if header_cut < 4 {
            prop_assert!(decode(&mut buf).expect("a partial header waits").is_none());
            buf.extend_from_slice(&header[header_cut..]);
        }
        buf.extend_from_slice(&body);
        let (len, cap) = (buf.len(), buf.capacity());
        let (r, largest) = largest_alloc(|| decode(&mut buf));
        prop_assert!(matches!(r, Err(CodecError::FrameTooLarge { max: m }) if m == max), "{:?}", r);
        prop_assert_eq!(buf.capacity(), cap, "the decoder reserved room for a refused frame");
        prop_assert!(buf.len() <= len);
        prop_assert!(largest <= 1024, "allocated {} bytes while refusing", largest);
    }
}

/// The frames of a stream the model reads, with their payloads (for `check_answer`).
fn frames_of(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some((head, body)) = rest.split_first_chunk::<4>() {
        let n = u32::from_be_bytes(*head) as usize;
        if body.len() < n {
            break;
        }
        out.push(&body[..n]);
        rest = &body[n..];
    }
    out
}
