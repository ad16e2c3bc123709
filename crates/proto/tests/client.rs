//! The [`Client`] against a scripted server on a local socket.

use bytes::BytesMut;
use futures::StreamExt;
use simpletextim_proto::codec::encode_frame;
use simpletextim_proto::{
    Anchor, ChatMessage, Client, ClientError, Command, ErrorCode, HistoryPage, MAX_REQUEST_BACKLOG,
    PageLimit, Recipient, Ref, Reply, Request, UserId,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A client connected to a server that sends `payloads` as frames, then closes.
async fn client_reading(payloads: &[&[u8]]) -> Client {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let addr = listener.local_addr().expect("bound address");
    let mut bytes = BytesMut::new();
    for p in payloads {
        encode_frame(p, usize::MAX, &mut bytes).expect("no limit");
    }
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        socket.write_all(&bytes).await.expect("write");
        socket.shutdown().await.expect("shutdown");
    });
    Client::from_stream(TcpStream::connect(addr).await.expect("connect"))
}

const FRAMES: [&[u8]; 3] = [
    br#"{"command":"joined","user_id":"bob"}"#,
    br#"{"command":"message","messages":[{"id":"x"}]}"#,
    br#"{"command":"left","user_id":"bob"}"#,
];

fn bob() -> UserId {
    UserId::new("bob").expect("a valid id")
}

#[tokio::test]
async fn the_stream_skips_past_an_unreadable_reply_to_a_true_end() {
    let mut client = client_reading(&FRAMES).await;
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Reply::Joined { user_id: bob() }
    );
    let unreadable = client.next().await.unwrap().unwrap();
    assert!(
        matches!(&unreadable, Reply::Unreadable { kind: Some(k), .. } if k == "message"),
        "{unreadable:?}"
    );
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Reply::Left { user_id: bob() }
    );
    assert!(client.next().await.is_none());
}

#[tokio::test]
async fn next_reply_skips_past_an_unreadable_reply_to_closed() {
    let (_, mut rx) = client_reading(&FRAMES).await.into_split();
    assert_eq!(
        rx.next_reply().await.unwrap(),
        Reply::Joined { user_id: bob() }
    );
    assert!(matches!(
        rx.next_reply().await.unwrap(),
        Reply::Unreadable { .. }
    ));
    assert_eq!(
        rx.next_reply().await.unwrap(),
        Reply::Left { user_id: bob() }
    );
    assert!(matches!(rx.next_reply().await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn an_unreadable_login_answer_is_unexpected_not_fatal_framing() {
    let mut client = client_reading(&[br#"{"command":"message","messages":7}"#]).await;
    let err = client.login("alice", "secret").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Unexpected(r) if matches!(**r, Reply::Unreadable { .. })),
        "{err:?}"
    );
}

// ---- Client::request (protocol 1.1 refs) -------------------------------------------

/// A client connected to a fake server that reads requests and, for each, sends back the
/// frames `answer` gives (it sees the request's ref); it stays open until the client goes.
async fn client_answered_by(answer: impl Fn(&Request) -> Vec<String> + Send + 'static) -> Client {
    use simpletextim_proto::ServerCodec;
    use tokio_util::codec::FramedRead;

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let (r, mut w) = socket.into_split();
        let mut requests = FramedRead::new(r, ServerCodec::new());
        while let Some(Ok(Ok(request))) = requests.next().await {
            let mut bytes = BytesMut::new();
            for payload in answer(&request) {
                encode_frame(payload.as_bytes(), usize::MAX, &mut bytes).expect("no limit");
            }
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    Client::from_stream(TcpStream::connect(addr).await.expect("connect"))
}

/// A request's ref as JSON.
fn ref_json(request: &Request) -> String {
    serde_json::to_string(&request.r#ref).expect("a ref serializes")
}

fn chat(from: &str, text: &str, id: u64, r#ref: Option<Ref>) -> ChatMessage {
    ChatMessage {
        r#ref,
        user_id: UserId::new(from).expect("a valid id"),
        message: text.to_owned(),
        to: Recipient::Everyone,
        id,
        ts: 1_764_168_000_000,
    }
}

fn chat_json(m: &ChatMessage) -> String {
    serde_json::to_string(m).expect("a message serializes")
}

async fn next(client: &mut Client) -> Reply {
    tokio::time::timeout(std::time::Duration::from_secs(10), client.next())
        .await
        .expect("a reply in time")
        .expect("not closed")
        .expect("no error")
}

#[tokio::test]
async fn a_request_returns_its_answer_and_the_stream_then_yields_what_came_before_in_order() {
    let mut client = client_answered_by(|req| {
        let r = ref_json(req);
        let id = match &req.r#ref {
            Some(Ref::Number(n)) => *n,
            other => panic!("an integer ref, got {other:?}"),
        };
        vec![
            r#"{"command":"joined","user_id":"bob"}"#.to_owned(),
            format!(
                r#"{{"command":"message","messages":[{}]}}"#,
                chat_json(&chat("bob", "hi", id, None))
            ),
            format!(r#"{{"command":"list","ref":{r},"list":["alice","bob"]}}"#),
        ]
    })
    .await;
    let list = |n: u64| Reply::List {
        r#ref: Some(Ref::Number(n)),
        list: vec![
            UserId::new("alice").expect("valid"),
            UserId::new("bob").expect("valid"),
        ],
    };
    // Refs count up from 1.
    assert_eq!(client.request(Command::List).await.unwrap(), list(1));
    assert_eq!(client.request(Command::List).await.unwrap(), list(2));
    for id in [1, 2] {
        assert_eq!(next(&mut client).await, Reply::Joined { user_id: bob() });
        assert_eq!(
            next(&mut client).await,
            Reply::Message {
                r#ref: None,
                messages: vec![chat("bob", "hi", id, None)]
            }
        );
    }
}

#[tokio::test]
async fn a_sends_answer_is_its_echo_cut_from_its_frame_and_the_rest_comes_after() {
    let mut client = client_answered_by(|req| {
        let echo = chat("alice", "mine", 2, req.r#ref.clone());
        vec![format!(
            r#"{{"command":"message","messages":[{},{},{}]}}"#,
            chat_json(&chat("carol", "before", 1, None)),
            chat_json(&echo),
            chat_json(&chat("dave", "after", 3, None)),
        )]
    })
    .await;
    let send = Command::send(Recipient::Everyone, "mine".parse().expect("valid text"));
    assert_eq!(
        client.request(send).await.unwrap(),
        Reply::Message {
            r#ref: None,
            messages: vec![chat("alice", "mine", 2, Some(Ref::Number(1)))]
        }
    );
    for m in [
        chat("carol", "before", 1, None),
        chat("dave", "after", 3, None),
    ] {
        assert_eq!(
            next(&mut client).await,
            Reply::Message {
                r#ref: None,
                messages: vec![m]
            }
        );
    }
}

#[tokio::test]
async fn a_fail_with_the_ref_is_the_answer_and_one_without_waits_its_turn() {
    let mut client = client_answered_by(|req| {
        vec![
            r#"{"command":"fail","fail":{"error_code":400,"reason":"not yours"}}"#.to_owned(),
            format!(
                r#"{{"command":"fail","ref":{},"fail":{{"error_code":404,"reason":"no such user: carol"}}}}"#,
                ref_json(req)
            ),
        ]
    })
    .await;
    let send = Command::send(
        Recipient::User(UserId::new("carol").expect("valid")),
        "hi".parse().expect("valid text"),
    );
    assert_eq!(
        client.request(send).await.unwrap(),
        Reply::fail(ErrorCode::NotFound, "no such user: carol").with_ref(Some(Ref::Number(1)))
    );
    assert_eq!(
        next(&mut client).await,
        Reply::fail(ErrorCode::BadRequest, "not yours")
    );
}

#[tokio::test]
async fn a_server_that_never_answers_ends_the_request_with_backlog_and_nothing_is_lost() {
    let mut client = client_answered_by(|_| {
        (0..=MAX_REQUEST_BACKLOG)
            .map(|i| format!(r#"{{"command":"joined","user_id":"u{i}"}}"#))
            .collect()
    })
    .await;
    let err = client.request(Command::List).await.unwrap_err();
    assert!(matches!(err, ClientError::Backlog), "{err:?}");
    for i in 0..=MAX_REQUEST_BACKLOG {
        assert_eq!(
            next(&mut client).await,
            Reply::Joined {
                user_id: UserId::new(&format!("u{i}")).expect("valid")
            }
        );
    }
    // The connection is fine: a second request reads on (and again gets only notices).
    let err = client.request(Command::List).await.unwrap_err();
    assert!(matches!(err, ClientError::Backlog), "{err:?}");
}

#[tokio::test]
async fn the_backlog_goes_with_the_receiving_half() {
    let mut client = client_answered_by(|req| {
        vec![
            r#"{"command":"left","user_id":"bob"}"#.to_owned(),
            format!(r#"{{"command":"list","ref":{},"list":[]}}"#, ref_json(req)),
        ]
    })
    .await;
    assert_eq!(
        client.request(Command::List).await.unwrap(),
        Reply::List {
            r#ref: Some(Ref::Number(1)),
            list: vec![]
        }
    );
    let (_tx, mut rx) = client.into_split();
    assert_eq!(
        rx.next_reply().await.unwrap(),
        Reply::Left { user_id: bob() }
    );
}

// ---- Client::history, Client::ack, Client::login_with_acks ------------------------------

#[tokio::test]
async fn history_returns_the_page_answering_its_ref_and_keeps_the_rest() {
    let mut client = client_answered_by(|req| {
        let Command::History {
            with,
            anchor,
            limit,
        } = &req.command
        else {
            return vec![format!(
                r#"{{"command":"fail","ref":{},"fail":{{"error_code":400,"reason":"not history"}}}}"#,
                ref_json(req)
            )];
        };
        // The page echoes what was asked, so the test sees the command's fields.
        let (before, after) = match anchor {
            Some(Anchor::Before(id)) => (*id, 0),
            Some(Anchor::After(id)) => (0, *id),
            None => (0, 0),
        };
        let limit = limit.map_or(0, PageLimit::get) as u64;
        vec![
            r#"{"command":"joined","user_id":"bob"}"#.to_owned(),
            format!(
                r#"{{"command":"history","ref":{},"with":"{with}","messages":[{},{}],"more":true}}"#,
                ref_json(req),
                chat_json(&chat("bob", "old", before, None)),
                chat_json(&chat("carol", "older", after + limit, None)),
            ),
        ]
    })
    .await;
    let page = client
        .history(
            Recipient::User(bob()),
            Some(Anchor::Before(41)),
            Some(PageLimit::new(20).expect("valid")),
        )
        .await
        .unwrap();
    assert_eq!(
        page,
        HistoryPage {
            with: Recipient::User(bob()),
            messages: vec![
                chat("bob", "old", 41, None),
                chat("carol", "older", 20, None)
            ],
            more: true,
        }
    );
    let page = client
        .history(Recipient::Everyone, Some(Anchor::After(7)), None)
        .await
        .unwrap();
    assert_eq!(
        page.messages,
        [chat("bob", "old", 0, None), chat("carol", "older", 7, None)]
    );
    assert_eq!(page.with, Recipient::Everyone);
    // The notices that came before each page wait on the stream.
    for _ in 0..2 {
        assert_eq!(next(&mut client).await, Reply::Joined { user_id: bob() });
    }
}

#[tokio::test]
async fn a_refused_history_is_the_refused_error_with_the_failure() {
    let mut client = client_answered_by(|req| {
        vec![format!(
            r#"{{"command":"fail","ref":{},"fail":{{"error_code":400,"reason":"history is not available on this server yet"}}}}"#,
            ref_json(req)
        )]
    })
    .await;
    let err = client
        .history(Recipient::Everyone, None, None)
        .await
        .unwrap_err();
    let ClientError::Refused(failure) = &err else {
        panic!("refused, got {err:?}");
    };
    assert_eq!(failure.error_code, ErrorCode::BadRequest);
    assert_eq!(
        failure.reason,
        "history is not available on this server yet"
    );
    assert_eq!(err.failure(), Some(failure));
}

#[tokio::test]
async fn a_history_answered_by_another_kind_is_unexpected() {
    let mut client = client_answered_by(|req| {
        vec![format!(
            r#"{{"command":"list","ref":{},"list":[]}}"#,
            ref_json(req)
        )]
    })
    .await;
    let err = client
        .history(Recipient::Everyone, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Unexpected(r) if **r == Reply::List { r#ref: Some(Ref::Number(1)), list: vec![] }),
        "{err:?}"
    );
}

/// The fake server reports every request it reads as a `joined` notice naming it, so the
/// test sees exactly what was sent (a user id holds `_` and `-`, not JSON).
fn report(req: &Request) -> String {
    let what = match &req.command {
        Command::Login { acks, .. } => format!("login-acks-{acks}"),
        Command::Ack { id } => format!("ack-{id}"),
        other => other.name().to_owned(),
    };
    let r = match &req.r#ref {
        Some(Ref::Number(n)) => format!("-ref-{n}"),
        Some(Ref::Text(t)) => format!("-ref-{t}"),
        None => String::new(),
    };
    format!(r#"{{"command":"joined","user_id":"{what}{r}"}}"#)
}

#[tokio::test]
async fn login_with_acks_asks_for_acks_and_ack_sends_the_id_without_a_ref() {
    let mut client = client_answered_by(|req| match &req.command {
        Command::Login { .. } => vec![
            format!(
                r#"{{"command":"message","messages":[{}]}}"#,
                chat_json(&ChatMessage {
                    to: Recipient::User(UserId::new("alice").expect("valid")),
                    ..chat("bob", "while you were away", 41, None)
                })
            ),
            report(req),
        ],
        _ => vec![report(req)],
    })
    .await;
    let pending = client.login_with_acks("alice", "secret").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].id, pending[0].message.as_str()),
        (41, "while you were away")
    );
    client.ack(41).await.unwrap();
    let (mut tx, mut rx) = client.into_split();
    tx.ack(42).await.unwrap();
    for expected in ["login-acks-true", "ack-41", "ack-42"] {
        assert_eq!(
            rx.next_reply().await.unwrap(),
            Reply::Joined {
                user_id: UserId::new(expected).expect("valid")
            }
        );
    }
}

#[tokio::test]
async fn login_without_acks_does_not_ask_for_them() {
    let mut client = client_answered_by(|req| {
        vec![
            r#"{"command":"message","messages":[]}"#.to_owned(),
            report(req),
        ]
    })
    .await;
    assert_eq!(client.login("alice", "secret").await.unwrap(), []);
    assert_eq!(
        next(&mut client).await,
        Reply::Joined {
            user_id: UserId::new("login-acks-false").expect("valid")
        }
    );
}

#[tokio::test]
async fn auto_ack_acknowledges_what_next_reply_handed_over_once_before_reading_on() {
    let alice = || Recipient::User(UserId::new("alice").expect("valid"));
    let mut client = client_answered_by(move |req| match &req.command {
        Command::Login { .. } => vec![format!(
            r#"{{"command":"message","messages":[{}]}}"#,
            chat_json(&ChatMessage {
                to: alice(),
                ..chat("bob", "kept for you", 5, None)
            })
        )],
        Command::Ack { id: 5 } => vec![
            report(req),
            // A private message to alice, one of hers to bob, a public one.
            format!(
                r#"{{"command":"message","messages":[{},{},{}]}}"#,
                chat_json(&ChatMessage {
                    to: alice(),
                    ..chat("bob", "to alice", 7, None)
                }),
                chat_json(&ChatMessage {
                    to: Recipient::User(bob()),
                    ..chat("alice", "to bob", 8, None)
                }),
                chat_json(&chat("carol", "to all", 9, None)),
            ),
        ],
        _ => vec![report(req)],
    })
    .await;
    client.login_with_acks("alice", "secret").await.unwrap();
    client.set_auto_ack(true);
    // The login ack's message is acknowledged before the first read.
    assert_eq!(
        client.next_reply().await.unwrap(),
        Reply::Joined {
            user_id: UserId::new("ack-5").expect("valid")
        }
    );
    let Reply::Message { messages, .. } = client.next_reply().await.unwrap() else {
        panic!("the messages");
    };
    assert_eq!(messages.len(), 3);
    // 7 is acknowledged (not 8, alice's own, nor 9, public)…
    assert_eq!(
        client.next_reply().await.unwrap(),
        Reply::Joined {
            user_id: UserId::new("ack-7").expect("valid")
        }
    );
    // … once: nothing new since.
    client.send(&Command::List).await.unwrap();
    assert_eq!(
        client.next_reply().await.unwrap(),
        Reply::Joined {
            user_id: UserId::new("list").expect("valid")
        }
    );
    // Off: nothing is acknowledged.
    client.set_auto_ack(false);
    client.send(&Command::List).await.unwrap();
    assert_eq!(
        client.next_reply().await.unwrap(),
        Reply::Joined {
            user_id: UserId::new("list").expect("valid")
        }
    );
}
