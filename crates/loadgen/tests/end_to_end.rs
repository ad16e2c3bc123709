//! The workloads against the real server library on `127.0.0.1:0`, with small counts: every
//! message expected arrives, and the figures add up. Not a benchmark: nothing is timed.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use simpletextim_loadgen::net::Transport;
use simpletextim_loadgen::workload::chat::{self, FanoutOpts, PrivateOpts};
use simpletextim_loadgen::workload::history::{self, HistoryOpts};
use simpletextim_loadgen::workload::offline::{self, OfflineOpts};
use simpletextim_loadgen::workload::presence::{self, PresenceOpts};
use simpletextim_loadgen::workload::soak::{self, SoakOpts};
use simpletextim_server::{Config, MemoryStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod common;
use common::{assert_complete, common, server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_flood_and_open_loop_deliver_everything() {
    let (addr, _, shutdown) = server().await;
    let flood = FanoutOpts {
        clients: 20,
        senders: 3,
        messages: 25,
        window: 4,
        rate: None,
    };
    let r = chat::fanout(&common(addr, "ff", Transport::Tcp), &flood)
        .await
        .unwrap();
    assert_complete(&r);
    assert_eq!((r.clients, r.sent, r.expected), (20, 75, 20 * 75));
    assert_eq!(r.echoes, Some(75));

    let open = FanoutOpts {
        rate: Some(200.0),
        messages: 5,
        ..flood
    };
    let r = chat::fanout(&common(addr, "fo", Transport::Tcp), &open)
        .await
        .unwrap();
    assert_complete(&r);
    assert_eq!((r.sent, r.expected), (15, 20 * 15));
    shutdown.cancel();
}

/// Clients spread over several servers (`--server a,b`: client i on server i mod n). Over
/// one server listed twice, everything arrives in id order; over two servers that are not
/// a cluster, the clients of each miss the other's messages, and the run says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_spread_over_servers_checks_every_client() {
    let (a, _, stop_a) = server().await;
    let (b, _, stop_b) = server().await;
    let o = FanoutOpts {
        clients: 10,
        senders: 2,
        messages: 10,
        window: 4,
        rate: None,
    };
    let mut same = common(a, "sp", Transport::Tcp);
    same.servers = vec![a, a];
    let r = chat::fanout(&same, &o).await.unwrap();
    assert_complete(&r);
    assert_eq!(r.server, format!("{a},{a}"));

    let mut apart = common(a, "sq", Transport::Tcp);
    apart.servers = vec![a, b];
    apart.timeout = Duration::from_secs(3);
    assert_eq!(apart.server_for(3), b);
    let r = chat::fanout(&apart, &o).await.unwrap();
    assert_eq!(r.server, format!("{a},{b}"));
    // Each client can get only the messages of the sender on its own server (and the run
    // waits for the other server's `joined` notices until its deadline): never all.
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.expected, 200);
    assert!(r.delivered <= 100 && r.lost >= 100, "{r:?}");
    assert_eq!(r.out_of_order, 0);
    stop_a.cancel();
    stop_b.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_reach_their_recipients() {
    let (addr, _, shutdown) = server().await;
    let o = PrivateOpts {
        clients: 10,
        messages: 12,
        window: 3,
    };
    let r = chat::private(&common(addr, "pv", Transport::Tcp), &o)
        .await
        .unwrap();
    assert_complete(&r);
    // Every message is delivered twice: to its recipient and as the sender's echo.
    assert_eq!((r.sent, r.expected), (120, 240));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_views_end_correct() {
    let (addr, _, shutdown) = server().await;
    let o = PresenceOpts {
        clients: 15,
        churn: 6,
        churn_secs: 0.3,
        senders: 2,
        rate: 40.0,
        chat_secs: 0.5,
    };
    let r = presence::run(&common(addr, "pr", Transport::Tcp), &o)
        .await
        .unwrap();
    assert_complete(&r);
    assert_eq!(r.views_correct, Some(15));
    assert_eq!(r.views_wrong, Some(0));
    assert_eq!(r.list_len, Some(15));
    assert_eq!(r.churn_logins, Some(6));
    assert_eq!(r.presence_errors, Some(0));
    // Each online client saw each churning user leave once.
    assert_eq!(r.left_seen, Some(15 * 6));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mailboxes_are_delivered_at_login() {
    let (addr, _, shutdown) = server().await;
    let o = OfflineOpts {
        recipients: 6,
        senders: 2,
        messages: 30,
        window: 8,
    };
    let r = offline::run(&common(addr, "of", Transport::Tcp), &o)
        .await
        .unwrap();
    assert_complete(&r);
    assert_eq!(r.sent, 60);
    assert_eq!(r.stored, Some(60));
    assert_eq!(r.mailbox_delivered, Some(60));
    assert_eq!(r.mailbox_lost, Some(0));
    assert_eq!(r.mailbox_max, Some(10));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_readers_get_every_page_while_others_chat() {
    let (addr, _, shutdown) = server().await;
    let o = HistoryOpts {
        readers: 4,
        pages: 20,
        limit: 50,
        seed: 120,
        chatters: 2,
        rate: 200.0,
    };
    let r = history::run(&common(addr, "hi", Transport::Tcp), &o)
        .await
        .unwrap();
    assert!(!r.timed_out, "{}", r.to_json_line());
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    assert_eq!(r.pages, Some(80));
    assert_eq!(r.page_latency_us.map(|l| l.count), Some(80));
    assert_eq!(r.clients, 6);
    assert!(r.human().starts_with("history: 6 clients"), "{}", r.human());
    shutdown.cancel();
}

/// The soak against a server with its default limits and only 127.0.0.1 exempt: the
/// normal users lose nothing, and every kind of hostile connection is answered as the
/// limits say (the figures themselves are the benchmark's business).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_loses_nothing_and_counts_every_hostile_kind() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let config = Config {
        hash_cost: simpletextim_server::HashCost::InsecureFast,
        exempt: vec!["127.0.0.1/32".parse().unwrap()],
        store: Arc::new(MemoryStore::new(1000)),
        ..Config::default()
    };
    tokio::spawn(simpletextim_server::run(listener, config, shutdown.clone()));
    let o = SoakOpts {
        users: 5,
        user_rate: 2.0,
        secs: 2.0,
        hostile: 50,
        per_addr: 10,
        warmup_secs: 0.5,
        pause_ms: 200,
        slow_every_ms: 500,
        garbage_every_ms: 50,
        flood_rate: 20.0,
        server_pid: None,
    };
    let r = soak::run(&common(addr, "sk", Transport::Tcp), &o)
        .await
        .unwrap();
    assert_complete(&r);
    assert_eq!(r.sent, 20);
    assert_eq!(r.echo_latency_us.unwrap().count, 20);
    let hostile = r.hostile.clone().unwrap();
    let kind = |name: &str| hostile.iter().find(|k| k.kind == name).unwrap().clone();
    let names: Vec<&str> = hostile.iter().map(|k| k.kind.as_str()).collect();
    assert_eq!(
        names,
        ["slowloris", "garbage", "guesser", "never-reader", "flooder"]
    );
    assert!(kind("slowloris").actions > 0, "{hostile:?}");
    assert!(kind("garbage").fails.contains_key(&400), "{hostile:?}");
    let guesser = kind("guesser");
    assert_eq!(guesser.logins, 0, "a wrong password got in: {hostile:?}");
    assert!(!guesser.fails.is_empty(), "{hostile:?}");
    assert!(kind("never-reader").logins > 0, "{hostile:?}");
    // 20 commands a second against 1 a second with a burst of 20.
    assert!(kind("flooder").fails.contains_key(&429), "{hostile:?}");
    shutdown.cancel();
}
