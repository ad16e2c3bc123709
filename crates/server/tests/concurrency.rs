//! Many clients at once, and a client that stops reading.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use simpletextim_proto::{ChatMessage, Client, Reply};
use simpletextim_server::Config;
use tokio::net::TcpSocket;

const CLIENTS: usize = 200;
const SENDERS: usize = 20;
const PER_SENDER: usize = 10;

/// 200 clients; 20 of them send 10 public messages each, all at once. Every client gets
/// every message exactly once, each sender's in the order sent, and in one global order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_message_reaches_every_client_once_in_per_sender_order() {
    let s = start().await;
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let (c, pending) = login(&s, &format!("user{i:03}")).await;
        assert_eq!(pending, vec![]);
        clients.push(c);
    }
    let total = SENDERS * PER_SENDER;
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    // Dropping a write half sends FIN, which the server takes as a disconnect: keep them.
    let mut idle_writers = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (mut tx, mut rx) = c.into_split();
        if i >= SENDERS {
            idle_writers.push(tx);
        } else {
            senders.push(tokio::spawn(async move {
                for n in 0..PER_SENDER {
                    tx.send_public(&format!("{i}:{n}")).await?;
                }
                Ok::<_, simpletextim_proto::ClientError>(tx)
            }));
        }
        readers.push(tokio::spawn(async move {
            let mut got: Vec<ChatMessage> = Vec::with_capacity(total);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while got.len() < total {
                let reply = tokio::time::timeout_at(deadline, rx.next())
                    .await
                    .map_err(|_| format!("client {i}: only {} of {total} in time", got.len()))?
                    .ok_or_else(|| format!("client {i}: closed"))?
                    .map_err(|e| format!("client {i}: {e}"))?;
                match reply {
                    Reply::Message { messages, .. } => got.extend(messages),
                    // Later logins' joins reach the earlier clients; they don't count.
                    Reply::Joined { .. } => {}
                    other => return Err(format!("client {i}: unexpected {other:?}")),
                }
            }
            Ok::<_, String>(got)
        }));
    }
    let mut keep = Vec::new();
    for h in senders {
        keep.push(h.await.unwrap().unwrap());
    }
    let mut first_order: Option<Vec<u64>> = None;
    for h in readers {
        let got = h.await.unwrap().unwrap();
        assert_eq!(got.len(), total);
        let mut next_expected: HashMap<String, usize> = HashMap::new();
        for m in &got {
            let (sender, n) = m.message.split_once(':').unwrap();
            assert_eq!(
                m.user_id.as_str(),
                format!("user{:03}", sender.parse::<usize>().unwrap())
            );
            let expected = next_expected.entry(sender.to_owned()).or_insert(0);
            assert_eq!(
                n.parse::<usize>().unwrap(),
                *expected,
                "out of order from {sender}"
            );
            *expected += 1;
        }
        assert_eq!(next_expected.len(), SENDERS);
        assert!(next_expected.values().all(|&n| n == PER_SENDER));
        // One global order: every client saw the same sequence of ids, increasing.
        let ids: Vec<u64> = got.iter().map(|m| m.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        match &first_order {
            None => first_order = Some(ids),
            Some(first) => assert_eq!(&ids, first),
        }
    }
}

/// Outboxes of 64 items at most.
fn small_outboxes() -> Config {
    Config {
        outbox_capacity: 64,
        ..config()
    }
}

/// A server with `config` and a client `slow` logged in with a small receive buffer, so
/// that the kernel stops taking the server's writes to it early.
#[allow(clippy::unwrap_used)]
async fn server_with_a_slow_client(config: Config) -> (TestServer, Client) {
    let s = start_with(config).await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(s.addr).await.unwrap();
    let mut slow = Client::from_stream(stream);
    assert_eq!(slow.login("slow", "pw-of-slow").await.unwrap(), vec![]);
    (s, slow)
}

/// A client that never reads is cut off once its outbox is full; the others hear `left`
/// and keep chatting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_without_stalling_others() {
    slow_consumer_is_cut_off(small_outboxes()).await;
}

/// The same with outboxes bounded by bytes only (32 KiB, about 160 messages of 140
/// characters; the item limit and the write timeout far out of reach of the flood).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_when_its_outbox_holds_too_many_bytes() {
    slow_consumer_is_cut_off(Config {
        outbox_capacity: 1_000_000,
        outbox_bytes: 32 * 1024,
        // Out of reach too: the byte limit alone cuts the client off.
        write_timeout: Duration::from_secs(600),
        ..config()
    })
    .await;
}

/// Floods public messages beside a client that never reads, until it is cut off; checks
/// what each side sees.
#[allow(clippy::unwrap_used)]
async fn slow_consumer_is_cut_off(config: Config) {
    let (s, mut slow) = server_with_a_slow_client(config).await;

    let (fast, _) = login(&s, "fast").await;
    let (mut tx, rx) = fast.into_split();
    let text = "x".repeat(140);
    let reader = tokio::spawn(async move {
        let mut rx = rx;
        // Read until `left slow`, bounded in time.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut chats = 0usize;
        loop {
            match tokio::time::timeout_at(deadline, rx.next()).await {
                Err(_) => return Err(format!("no left in time after {chats} messages")),
                Ok(None) => return Err("fast was closed".to_owned()),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(Reply::Left { user_id }))) if user_id.as_str() == "slow" => {
                    return Ok((chats, rx));
                }
                Ok(Some(Ok(Reply::Message { messages, .. }))) => chats += messages.len(),
                Ok(Some(Ok(other))) => return Err(format!("unexpected {other:?}")),
            }
        }
    });
    // Flood until the reader has seen `left` (or a bound: 200 000 messages).
    let mut sent = 0usize;
    while !reader.is_finished() && sent < 200_000 {
        for _ in 0..100 {
            tx.feed(&simpletextim_proto::Command::send(
                simpletextim_proto::Recipient::Everyone,
                text.parse().unwrap(),
            ))
            .await
            .unwrap();
        }
        tx.flush().await.unwrap();
        sent += 100;
        tokio::task::yield_now().await;
    }
    let (chats, mut rx) = reader.await.unwrap().unwrap();
    assert!(chats <= sent);
    // The slow client's connection was closed by the server: reading it to the end
    // finds EOF (no fail frame: a slow consumer cannot be told anything).
    let drained = tokio::time::timeout(WAIT, async {
        let mut n = 0usize;
        while let Some(r) = slow.next().await {
            match r {
                Ok(Reply::Message { messages, .. }) => n += messages.len(),
                Ok(Reply::Joined { .. }) => {}
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            }
        }
        n
    })
    .await
    .expect("slow consumer not closed");
    assert!(
        drained < sent,
        "slow consumer got everything: {drained} of {sent}"
    );
    // The fast client keeps chatting: its next own message comes back.
    tx.send_public("still fine").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = tokio::time::timeout_at(deadline, rx.next())
            .await
            .expect("no echo in time")
            .expect("closed")
            .expect("bad reply");
        if let Reply::Message { messages, .. } = r {
            if messages.iter().any(|m| m.message == "still fine") {
                break;
            }
        }
    }
}

/// A slow consumer loses no private message that was echoed to its sender: what its socket
/// took arrives before the close, and the rest (its outbox, the unwritten part of its last
/// write, what was sent after the cut-off) is in its mailbox at the next login, in order.
#[tokio::test]
async fn private_messages_to_a_slow_consumer_are_kept_for_its_next_login() {
    let (s, mut slow) = server_with_a_slow_client(small_outboxes()).await;
    let (mut fast, _) = login(&s, "fast").await;
    assert_eq!(
        next(&mut slow).await,
        Reply::Joined {
            user_id: uid("fast")
        }
    );

    let text = "y".repeat(140);
    let mut echoed: Vec<ChatMessage> = Vec::new();
    let mut slow_left = false;
    let mut after_left = 0;
    // Batches of 50 (below fast's own outbox of 64), each waiting for its echoes, until
    // slow was cut off and 100 more were sent; bounded by 200 000 messages.
    while after_left < 100 && echoed.len() < 200_000 {
        for _ in 0..50 {
            fast.send(&simpletextim_proto::Command::send(
                simpletextim_proto::Recipient::User(uid("slow")),
                text.parse().unwrap(),
            ))
            .await
            .unwrap();
        }
        let mut got = 0;
        while got < 50 {
            match next(&mut fast).await {
                Reply::Message { messages, .. } => {
                    got += messages.len();
                    echoed.extend(messages);
                }
                Reply::Left { user_id } if user_id.as_str() == "slow" => slow_left = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        if slow_left {
            after_left += 50;
        }
    }
    assert!(
        slow_left,
        "slow was never cut off in {} messages",
        echoed.len()
    );

    // What slow's socket took, read to the end.
    let mut received: Vec<ChatMessage> = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = slow.next().await {
            match r {
                Ok(Reply::Message { messages, .. }) => received.extend(messages),
                Ok(Reply::Joined { .. }) => {}
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            }
        }
    })
    .await
    .expect("slow consumer not closed");
    assert!(received.len() < echoed.len(), "slow got everything");

    let (_slow, pending) = login(&s, "slow").await;
    let received_len = received.len();
    let mut delivered = received;
    delivered.extend(pending);
    assert_eq!(delivered.len(), echoed.len());
    if let Some(i) = (0..echoed.len()).find(|&i| delivered[i] != echoed[i]) {
        let ids = |v: &[ChatMessage]| v.iter().map(|m| m.id % 100_000).collect::<Vec<_>>();
        let lo = i.saturating_sub(3);
        let hi = (i + 5).min(echoed.len());
        panic!(
            "first difference at {i} (received {received_len}): delivered {:?} echoed {:?}",
            ids(&delivered[lo..hi]),
            ids(&echoed[lo..hi])
        );
    }
}

/// A peer that sends `list` before login (each answered `fail 401`) and never reads, until
/// the server closes the connection; returns the replies it then finds, and how many it
/// asked for. Bounded: at most 2 000 000 commands, and [`WAIT`] × 3 for the close.
#[allow(clippy::unwrap_used)]
async fn flood_without_reading(s: &TestServer) -> (Vec<Reply>, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(s.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let list = br#"{"command":"list"}"#;
    let mut frame = (list.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(list);
    let batch = frame.repeat(1000);
    // The writer stops when the server closes the connection (its writes then fail).
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        while sent < 2_000_000 && wr.write_all(&batch).await.is_ok() {
            sent += 1000;
        }
        sent
    });
    let sent = tokio::time::timeout(WAIT * 3, writer)
        .await
        .expect("the server did not close the connection")
        .unwrap();
    let mut bytes = Vec::new();
    // Reset or end of stream: either way the connection is over.
    let _ = tokio::time::timeout(WAIT, rd.read_to_end(&mut bytes))
        .await
        .expect("the rest was not readable in time");
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let mut codec = simpletextim_proto::ClientCodec::new();
    let mut replies = Vec::new();
    while let Some(r) = tokio_util::codec::Decoder::decode(&mut codec, &mut buf).unwrap() {
        replies.push(r);
    }
    (replies, sent)
}

/// Floods `s` without reading ([`flood_without_reading`]) until it closes the connection;
/// what came back is `fail 401 login required`s only, fewer than were asked for.
async fn assert_closed_while_flooding(s: &TestServer) {
    let (replies, sent) = flood_without_reading(s).await;
    assert!(replies.len() < sent, "{} of {sent}", replies.len());
    let required = fail(
        simpletextim_proto::ErrorCode::Unauthorized,
        "login required",
    );
    assert!(replies.iter().all(|r| *r == required), "{replies:?}");
}

/// A peer that never reads is closed once its socket has taken nothing for the write
/// timeout, without waiting for the (far) login deadline: what it got is `fail 401`s only,
/// fewer than it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_closed_after_the_write_timeout() {
    let s = start_with(Config {
        write_timeout: Duration::from_secs(1),
        login_timeout: Duration::from_secs(600),
        ..config()
    })
    .await;
    assert_closed_while_flooding(&s).await;
}

/// The login deadline holds while the server waits to write: a peer that never logs in
/// and never reads is closed at the deadline, not at the (far) write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_deadline_holds_while_a_write_waits() {
    let s = start_with(Config {
        write_timeout: Duration::from_secs(600),
        login_timeout: Duration::from_secs(1),
        ..config()
    })
    .await;
    assert_closed_while_flooding(&s).await;
}

/// A client that never reads falls behind the presence log while notices keep coming: once
/// the log (8 notices here) no longer holds one it was due, it is cut off as a slow
/// consumer, and the others get its `left` among the notices, each once, in order. Its
/// outbox alone would never cut it off (a million items), nor would the write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_once_the_presence_log_passes_it() {
    let (s, mut slow) = server_with_a_slow_client(Config {
        presence_log: 8,
        outbox_capacity: 1_000_000,
        outbox_bytes: 256 << 20,
        write_timeout: Duration::from_secs(600),
        ..config()
    })
    .await;
    let (mut watcher, _) = login(&s, "watcher").await;
    // Fill slow's socket (and the server's send buffer): its session then waits to write.
    let text = "z".repeat(140);
    let total = 3000;
    for chunk in 0..total / 100 {
        for _ in 0..100 {
            watcher
                .send(&simpletextim_proto::Command::send(
                    simpletextim_proto::Recipient::Everyone,
                    text.parse().unwrap(),
                ))
                .await
                .unwrap();
        }
        let mut echoed = 0;
        while echoed < 100 {
            match next(&mut watcher).await {
                Reply::Message { messages, .. } => echoed += messages.len(),
                other => panic!("chunk {chunk}: unexpected {other:?}"),
            }
        }
    }
    // Ten users come and go: twenty notices, more than the log keeps, but two per tick or
    // so, which the watcher's session (reading at each tick) keeps up with.
    let mut churn = Vec::new();
    for i in 0..10 {
        let name = format!("c{i}");
        let (mut c, _) = login(&s, &name).await;
        c.exit().await.unwrap();
        assert_closed(&mut c).await;
        churn.push(Reply::Joined {
            user_id: uid(&name),
        });
        churn.push(Reply::Left {
            user_id: uid(&name),
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The watcher hears all of them, and slow's `left` once, within a tick or so.
    let mut notices = Vec::new();
    let mut slow_left_at = None;
    while notices.len() < churn.len() || slow_left_at.is_none() {
        match next(&mut watcher).await {
            Reply::Left { user_id } if user_id.as_str() == "slow" => {
                assert_eq!(slow_left_at, None, "slow left twice");
                slow_left_at = Some(notices.len());
            }
            n @ (Reply::Joined { .. } | Reply::Left { .. }) => notices.push(n),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(notices, churn);
    // Cut off only once the log had passed it: at least 8 notices after its last read.
    let at = slow_left_at.expect("slow left");
    assert!(at >= 7, "cut off after only {at} notices");
    watcher.list().await.unwrap();
    assert_eq!(
        next(&mut watcher).await,
        Reply::List {
            r#ref: None,
            list: vec![uid("watcher")]
        }
    );
    // Slow's connection was closed: reading it to the end finds chat and notices, no
    // `fail` (a slow consumer is told nothing), then EOF, and less than it was due.
    let (chats, _) = tokio::time::timeout(WAIT, async {
        let (mut n, mut presence) = (0usize, 0usize);
        while let Some(r) = slow.next().await {
            match r {
                Ok(Reply::Message { messages, .. }) => n += messages.len(),
                Ok(Reply::Joined { .. } | Reply::Left { .. }) => presence += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            }
        }
        (n, presence)
    })
    .await
    .expect("slow consumer not closed");
    assert!(chats < total, "slow got all {total} messages");
}
