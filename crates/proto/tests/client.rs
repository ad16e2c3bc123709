//! The [`Client`] against a scripted server on a local socket.

use bytes::BytesMut;
use futures::StreamExt;
use simpletextim_proto::codec::encode_frame;
use simpletextim_proto::{Client, ClientError, Reply, UserId};
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
