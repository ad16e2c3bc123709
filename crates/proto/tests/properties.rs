//! Property tests: every command and reply round-trips through JSON and through the codecs,
//! and arbitrary bytes fed to the decoders never panic.

use bytes::BytesMut;
use proptest::prelude::*;
use simpletextim_proto::codec::encode_frame;
use simpletextim_proto::{
    Anchor, ChatMessage, ClientCodec, Command, ErrorCode, Failure, MessageText, PageLimit,
    Password, Recipient, Ref, Rejected, Reply, Request, ServerCodec, UserId,
};
use tokio_util::codec::{Decoder, Encoder};

fn user_id() -> impl Strategy<Value = UserId> {
    "[A-Za-z0-9_.-]{1,32}".prop_filter_map("valid", |s| UserId::new(&s).ok())
}

fn text() -> impl Strategy<Value = MessageText> {
    "\\PC{1,140}".prop_filter_map("blank", |s| MessageText::new(&s).ok())
}

fn password() -> impl Strategy<Value = Password> {
    // Any characters, '/' and control characters included.
    any::<String>().prop_filter_map("length", |s| Password::new(&s).ok())
}

fn recipient() -> impl Strategy<Value = Recipient> {
    prop_oneof![
        Just(Recipient::Everyone),
        user_id().prop_map(Recipient::User)
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (user_id(), password(), any::<bool>()).prop_map(|(user_id, password, acks)| {
            Command::Login {
                user_id,
                password,
                acks,
            }
        }),
        (recipient(), text()).prop_map(|(to, m)| Command::send(to, m)),
        Just(Command::List),
        Just(Command::Exit),
        (
            recipient(),
            prop::option::of(prop_oneof![
                any::<u64>().prop_map(Anchor::Before),
                any::<u64>().prop_map(Anchor::After),
            ]),
            prop::option::of(1..=200u64),
        )
            .prop_map(|(with, anchor, limit)| Command::History {
                with,
                anchor,
                limit: limit.map(|n| PageLimit::new(n).expect("1..=200")),
            }),
        any::<u64>().prop_map(|id| Command::Ack { id }),
    ]
}

/// Any valid ref: strings of 1-64 characters of any kind, integers below 2^53 (the bounds
/// weighted in).
fn a_ref() -> impl Strategy<Value = Ref> {
    prop_oneof![
        "\\PC{1,64}|.{1,64}|[\\x00-\\x7f]{1,64}"
            .prop_map(|s| Ref::text(&s).expect("1-64 characters")),
        prop_oneof![Just(0u64), Just((1u64 << 53) - 1), 0..(1u64 << 53)]
            .prop_map(|n| Ref::number(n).expect("below 2^53")),
    ]
}

fn maybe_ref() -> impl Strategy<Value = Option<Ref>> {
    prop::option::of(a_ref())
}

/// A JSON value that is not a valid ref (and not `null`, which is no ref).
fn not_a_ref() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    prop_oneof![
        Just(json!("")),
        ".{65,80}"
            .prop_filter("over 64 characters", |s| s.chars().count() > 64)
            .prop_map(Value::from),
        ((1u64 << 53)..=u64::MAX).prop_map(Value::from),
        (i64::MIN..0).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        (0..(1u64 << 53)).prop_map(|n| Value::from(n as f64)),
        any::<bool>().prop_map(Value::from),
        prop::collection::vec(any::<u32>(), 0..3).prop_map(Value::from),
        any::<u32>().prop_map(|n| json!({ "ref": n })),
    ]
}

fn chat() -> impl Strategy<Value = ChatMessage> {
    (
        user_id(),
        any::<String>(),
        recipient(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_flat_map(|t| (Just(t), maybe_ref()))
        .prop_map(|((user_id, message, to, id, ts), r#ref)| ChatMessage {
            r#ref,
            user_id,
            message,
            to,
            id,
            ts,
        })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    any::<u16>().prop_map(ErrorCode::from_u16)
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (maybe_ref(), prop::collection::vec(chat(), 0..5))
            .prop_map(|(r#ref, messages)| Reply::Message { r#ref, messages }),
        (maybe_ref(), prop::collection::vec(user_id(), 0..10))
            .prop_map(|(r#ref, list)| Reply::List { r#ref, list }),
        (maybe_ref(), error_code(), any::<String>()).prop_map(|(r#ref, c, r)| Reply::Fail {
            r#ref,
            fail: Failure::new(c, r)
        }),
        (
            maybe_ref(),
            recipient(),
            prop::collection::vec(chat(), 0..5),
            any::<bool>()
        )
            .prop_map(|(r#ref, with, messages, more)| Reply::History {
                r#ref,
                with,
                messages,
                more
            }),
        user_id().prop_map(|user_id| Reply::Joined { user_id }),
        user_id().prop_map(|user_id| Reply::Left { user_id }),
    ]
}

/// `UserId` equality ignores case; round trips must keep the exact spelling too.
fn same_spelling_command(a: &Command, b: &Command) -> bool {
    match (a, b) {
        (
            Command::Login {
                user_id: u1,
                password: p1,
                acks: a1,
            },
            Command::Login {
                user_id: u2,
                password: p2,
                acks: a2,
            },
        ) => u1.as_str() == u2.as_str() && p1 == p2 && a1 == a2,
        (
            Command::Send {
                to: t1,
                message: m1,
            },
            Command::Send {
                to: t2,
                message: m2,
            },
        ) => t1.as_str() == t2.as_str() && m1 == m2,
        (Command::History { with: w1, .. }, Command::History { with: w2, .. }) => {
            w1.as_str() == w2.as_str() && a == b
        }
        _ => a == b,
    }
}

proptest! {
    #[test]
    fn command_round_trips_through_json(cmd in command()) {
        let back = Command::from_json(&cmd.to_json()).unwrap();
        prop_assert!(same_spelling_command(&cmd, &back), "{cmd:?} came back as {back:?}");
        let via_serde: Command = serde_json::from_slice(&serde_json::to_vec(&cmd).unwrap()).unwrap();
        prop_assert!(same_spelling_command(&cmd, &via_serde));
    }

    #[test]
    fn commands_round_trip_through_the_codecs(cmds in prop::collection::vec(command(), 1..8)) {
        let mut client = ClientCodec::new();
        let mut server = ServerCodec::new();
        let mut buf = BytesMut::new();
        for c in &cmds {
            client.encode(c, &mut buf).unwrap();
        }
        for c in &cmds {
            let got = server.decode(&mut buf).unwrap().unwrap().unwrap();
            prop_assert_eq!(&got.r#ref, &None);
            prop_assert!(same_spelling_command(c, &got.command));
        }
        prop_assert!(server.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn reply_round_trips_through_json_and_codecs(replies in prop::collection::vec(reply(), 1..5)) {
        let mut server = ServerCodec::new();
        let mut client = ClientCodec::new();
        let mut buf = BytesMut::new();
        for r in &replies {
            prop_assert_eq!(&Reply::from_json(&r.to_json()).unwrap(), r);
            server.encode(r, &mut buf).unwrap();
        }
        for r in &replies {
            let got = client.decode(&mut buf).unwrap().unwrap();
            // Byte-identical re-encoding proves spellings survived.
            prop_assert_eq!(got.to_json(), r.to_json());
        }
    }

    #[test]
    fn every_frame_decodes_to_one_reply_whatever_its_payload(
        frames in prop::collection::vec(
            prop_oneof![
                reply().prop_map(|r| r.to_json()),
                any::<String>().prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..64),
            ],
            1..8,
        ),
    ) {
        let mut client = ClientCodec::new();
        let mut buf = BytesMut::new();
        for f in &frames {
            encode_frame(f, usize::MAX, &mut buf).unwrap();
        }
        for f in &frames {
            let got = client.decode(&mut buf).unwrap().unwrap();
            match Reply::from_json(f) {
                Ok(want) => prop_assert_eq!(got, want),
                Err(_) => prop_assert!(matches!(got, Reply::Unreadable { .. }), "{:?}", got),
            }
        }
        prop_assert!(client.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut server = ServerCodec::with_limits(256, 256);
        let mut buf = BytesMut::from(&bytes[..]);
        // Each Ok(Some) consumes a frame, so this ends; Err is fatal by design.
        while let Ok(Some(_)) = server.decode(&mut buf) {}
        let mut client = ClientCodec::with_limits(256, 256);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = client.decode(&mut buf) {}
    }

    #[test]
    fn arbitrary_json_payloads_give_a_command_or_a_400_or_413(payload in any::<String>()) {
        match Command::from_json(payload.as_bytes()) {
            Ok(_) => {}
            Err(f) => prop_assert!(matches!(f.error_code, ErrorCode::BadRequest | ErrorCode::TooLarge)),
        }
    }

    #[test]
    fn any_valid_ref_round_trips_through_json(r in a_ref()) {
        let json = serde_json::to_string(&r).unwrap();
        prop_assert_eq!(&serde_json::from_str::<Ref>(&json).unwrap(), &r);
        prop_assert!(r.is_valid());
        match &r {
            Ref::Number(n) => prop_assert_eq!(json, n.to_string()),
            Ref::Text(t) => prop_assert_eq!(json, serde_json::to_string(&**t).unwrap()),
        }
    }

    #[test]
    fn any_request_round_trips_through_json_and_the_codecs(
        reqs in prop::collection::vec((maybe_ref(), command()), 1..6),
    ) {
        let mut client = ClientCodec::new();
        let mut server = ServerCodec::new();
        let mut buf = BytesMut::new();
        for (r, c) in &reqs {
            let req = Request { r#ref: r.clone(), command: c.clone() };
            let back = Request::from_json(&req.to_json()).unwrap();
            prop_assert_eq!(&back.r#ref, r);
            prop_assert!(same_spelling_command(c, &back.command), "{c:?} came back as {back:?}");
            // Reading only the command ignores the ref.
            let cmd = Command::from_json(&req.to_json()).unwrap();
            prop_assert!(same_spelling_command(c, &cmd));
            let via_serde: Request = serde_json::from_slice(&req.to_json()).unwrap();
            prop_assert_eq!(&via_serde, &req);
            client.encode(&req, &mut buf).unwrap();
        }
        for (r, c) in &reqs {
            let got = server.decode(&mut buf).unwrap().unwrap().unwrap();
            prop_assert_eq!(&got.r#ref, r);
            prop_assert!(same_spelling_command(c, &got.command));
        }
        prop_assert!(server.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn any_json_value_that_is_not_a_ref_is_refused_with_400(
        bad in not_a_ref(),
        cmd in command(),
    ) {
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&cmd.to_json()).unwrap();
        obj.insert("ref".into(), bad.clone());
        let json = serde_json::to_vec(&obj).unwrap();
        prop_assert_eq!(
            Request::from_json(&json),
            Err(Rejected { r#ref: None, failure: Ref::invalid() })
        );
        prop_assert_eq!(Ref::invalid().error_code, ErrorCode::BadRequest);
        prop_assert!(serde_json::from_value::<Ref>(bad).is_err());
        // The command alone still reads.
        prop_assert!(Command::from_json(&json).is_ok());
    }

    #[test]
    fn a_refused_command_keeps_its_valid_ref(
        r in a_ref(),
        payload in prop_oneof![
            Just(r#"{"command":"dance"}"#),
            Just(r#"{"command":"send"}"#),
            Just(r#"{"command":"send","message":7}"#),
            Just(r#"{"command":"history","with":"*","limit":0}"#),
            Just(r#"{"command":"ack","id":-1}"#),
            Just(r#"{"command":"login","user_id":"a","password":"b","acks":"yes"}"#),
        ],
    ) {
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(payload).unwrap();
        obj.insert("ref".into(), serde_json::to_value(&r).unwrap());
        let json = serde_json::to_vec(&obj).unwrap();
        let want = Command::from_json(&json).unwrap_err();
        prop_assert_eq!(
            Request::from_json(&json),
            Err(Rejected { r#ref: Some(r.clone()), failure: want.clone() })
        );
        let reply = Reply::from_json(&Rejected { r#ref: Some(r.clone()), failure: want }.into_reply().to_json()).unwrap();
        prop_assert_eq!(reply.request_ref(), Some(&r));
    }
}
