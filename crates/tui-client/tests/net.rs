//! The network task against a scripted server on `127.0.0.1:0` speaking raw frames: what
//! a real server does not do (yet), like replies this client does not know.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use simpletextim_proto::{Password, Reply, UserId};
use simpletextim_tui::event::{Event, NetEvent, NetRequest};
use simpletextim_tui::net;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Longest wait for anything; reached only when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

async fn next_net(events: &mut mpsc::Receiver<Event>) -> NetEvent {
    match tokio::time::timeout(PATIENCE, events.recv()).await {
        Ok(Some(Event::Net(e))) => e,
        other => panic!("expected a network event, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_and_unreadable_replies_are_skipped_without_dropping_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(socket, LengthDelimitedCodec::new());
        let login = framed.next().await.unwrap().unwrap();
        // Acknowledged delivery: the application acks private messages once shown.
        assert_eq!(&login[..], br#"{"command":"login alice/pw","acks":true}"#);
        for frame in [
            r#"{"command":"message","messages":[]}"#,
            r#"{"command":"message","messages":[{"id":"x"}]}"#,
            r#"{"command":"typing","user_id":"bob"}"#,
        ] {
            framed.send(Bytes::from(frame)).await.unwrap();
        }
        let list = framed.next().await.unwrap().unwrap();
        assert_eq!(&list[..], br#"{"command":"list"}"#);
        framed
            .send(Bytes::from(r#"{"command":"joined","user_id":"bob"}"#))
            .await
            .unwrap();
        // Wait for the client's exit, then close.
        let exit = framed.next().await.unwrap().unwrap();
        assert_eq!(&exit[..], br#"{"command":"exit"}"#);
    });

    let (tx, mut events) = mpsc::channel(16);
    let (requests, task) = net::spawn(addr.to_string(), tx);
    requests
        .send(NetRequest::Login {
            user: UserId::new("alice").unwrap(),
            password: Password::new("pw").unwrap(),
        })
        .unwrap();
    assert_eq!(next_net(&mut events).await, NetEvent::Connecting);
    assert!(matches!(
        next_net(&mut events).await,
        NetEvent::LoggedIn { pending, .. } if pending.is_empty()
    ));
    // Neither the unreadable `message` nor the unknown `typing` reaches the application, and
    // neither drops the connection: the next event answers the next command.
    requests
        .send(NetRequest::Send(simpletextim_proto::Command::List.into()))
        .unwrap();
    match next_net(&mut events).await {
        NetEvent::Reply {
            reply: Reply::Joined { user_id },
            ..
        } => assert_eq!(user_id.as_str(), "bob"),
        other => panic!("expected bob joining, got {other:?}"),
    }
    requests.send(NetRequest::Exit).unwrap();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    server.await.unwrap();
    assert!(events.try_recv().is_err(), "no event after the exit");
}

#[tokio::test]
async fn an_unreachable_server_fails_the_login_with_the_reason() {
    // Bind and drop: nothing listens on that port any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (tx, mut events) = mpsc::channel(16);
    let (requests, _task) = net::spawn(addr.to_string(), tx);
    requests
        .send(NetRequest::Login {
            user: UserId::new("alice").unwrap(),
            password: Password::new("pw").unwrap(),
        })
        .unwrap();
    assert_eq!(next_net(&mut events).await, NetEvent::Connecting);
    match next_net(&mut events).await {
        NetEvent::LoginFailed { reason } => {
            assert!(
                reason.starts_with(&format!("cannot connect to {addr}: ")),
                "{reason}"
            );
        }
        other => panic!("expected a failed login, got {other:?}"),
    }
}
