//! Property tests: every command and reply round-trips through JSON and through the codecs,
//! and arbitrary bytes fed to the decoders never panic.

use bytes::BytesMut;
use proptest::prelude::*;
use simpletextim_proto::codec::encode_frame;
use simpletextim_proto::{
    ChatMessage, ClientCodec, Command, ErrorCode, Failure, MessageText, Password, Recipient, Reply,
    ServerCodec, UserId,
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
        (user_id(), password()).prop_map(|(u, p)| Command::login(u, p)),
        (recipient(), text()).prop_map(|(to, m)| Command::send(to, m)),
        Just(Command::List),
        Just(Command::Exit),
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
        .prop_map(|(user_id, message, to, id, ts)| ChatMessage {
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
        prop::collection::vec(chat(), 0..5).prop_map(|messages| Reply::Message { messages }),
        prop::collection::vec(user_id(), 0..10).prop_map(|list| Reply::List { list }),
        (error_code(), any::<String>()).prop_map(|(c, r)| Reply::Fail {
            fail: Failure::new(c, r)
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
            },
            Command::Login {
                user_id: u2,
                password: p2,
            },
        ) => u1.as_str() == u2.as_str() && p1 == p2,
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
            prop_assert!(same_spelling_command(c, &got));
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
}
