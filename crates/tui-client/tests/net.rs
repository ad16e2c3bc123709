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

/// The application and its network task against a scripted server of protocol 1.1: the
/// exact frames the client sends (the login with acks, a ref on every command, the newest
/// history pages, the ack of what was shown) and what it makes of the answers.
#[tokio::test]
async fn refs_history_pages_and_the_ack_on_the_wire() {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use simpletextim_tui::app::{Action, App, Settings, TimeZone};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Each frame the client must send, and the frames that answer it.
    let script: Vec<(&str, Vec<&str>)> = vec![
        (
            r#"{"command":"login alice/pw","acks":true}"#,
            vec![
                r#"{"command":"message","messages":[{"user_id":"bob","message":"hi","to":"alice","id":5,"ts":1764158400000}]}"#,
            ],
        ),
        (
            r#"{"command":"list","ref":1}"#,
            vec![r#"{"command":"list","ref":1,"list":["alice","bob"]}"#],
        ),
        (
            r#"{"command":"history","ref":2,"with":"*","limit":50}"#,
            vec![
                r#"{"command":"history","ref":2,"with":"*","messages":[{"user_id":"bob","message":"public","to":"*","id":3,"ts":1764158300000}],"more":false}"#,
            ],
        ),
        (
            r#"{"command":"history","ref":3,"with":"bob","limit":50}"#,
            vec![
                r#"{"command":"history","ref":3,"with":"bob","messages":[{"user_id":"bob","message":"earlier","to":"alice","id":4,"ts":1764158350000},{"user_id":"bob","message":"hi","to":"alice","id":5,"ts":1764158400000}],"more":false}"#,
            ],
        ),
        (r#"{"command":"ack","ref":4,"id":5}"#, vec![]),
        (r#"{"command":"exit"}"#, vec![]),
    ];
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(socket, LengthDelimitedCodec::new());
        for (expected, answers) in script {
            let frame = framed.next().await.expect("not closed").expect("a frame");
            assert_eq!(std::str::from_utf8(&frame).unwrap(), expected);
            for a in answers {
                framed.send(Bytes::from(a)).await.unwrap();
            }
        }
    });

    let (tx, mut events) = mpsc::channel(64);
    let (requests, task) = net::spawn(addr.to_string(), tx);
    let mut app = App::new(
        Settings {
            server: addr.to_string(),
            bell: false,
            tz: TimeZone::utc(),
        },
        Some("alice"),
    );
    let perform = |actions: Vec<Action>| {
        for a in actions {
            if let Action::Net(r) = a {
                requests.send(r).unwrap();
            }
        }
    };
    perform(app.login_with("alice", "pw"));
    // Events applied, and after each the acks of a drawing, until both pages are in.
    let pages_in = |app: &App| {
        app.conversations.len() == 2
            && app.conversations[0].msgs.entries().len() == 1
            && app.conversations[1].msgs.entries().len() == 2
    };
    while !pages_in(&app) {
        let Some(event) = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("an event in time")
        else {
            panic!("the network task ended");
        };
        perform(app.update(event));
        perform(app.on_drawn());
    }
    let texts = |i: usize| -> Vec<String> {
        app.conversations[i]
            .msgs
            .entries()
            .iter()
            .map(|e| e.text.clone())
            .collect()
    };
    assert_eq!(texts(0), ["public"]);
    // The login ack's message once, the older one above it.
    assert_eq!(texts(1), ["earlier", "hi"]);
    assert_eq!(app.online.len(), 2);
    // Shown: acknowledged (ref 4), then exit.
    perform(
        app.update(simpletextim_tui::event::Event::Key(KeyEvent::new(
            KeyCode::Char('2'),
            KeyModifiers::ALT,
        ))),
    );
    perform(app.on_drawn());
    requests.send(NetRequest::Exit).unwrap();
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the script ends in time")
        .expect("every frame as expected");
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
}
