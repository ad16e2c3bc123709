//! `fanout` and `private` over WebSocket (`--ws`) against the real server library, its TCP
//! listener and its HTTP listener on `127.0.0.1:0`: every message arrives, exactly as over
//! TCP, and the report says which transport carried it. Not a benchmark: nothing is timed.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use simpletextim_loadgen::net::Transport;
use simpletextim_loadgen::report::Report;
use simpletextim_loadgen::workload::chat::{self, FanoutOpts, PrivateOpts};

mod common;
use common::{assert_complete, common, server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_websocket_delivers_everything() {
    let (_, http, shutdown) = server().await;
    let flood = FanoutOpts {
        clients: 10,
        senders: 3,
        messages: 20,
        window: 4,
        rate: None,
    };
    let r = chat::fanout(&common(http, "wf", Transport::WebSocket), &flood)
        .await
        .unwrap();
    assert_complete(&r);
    assert_eq!((r.clients, r.sent, r.expected), (10, 60, 10 * 60));
    assert_eq!(r.echoes, Some(60));
    assert_eq!(r.transport.as_deref(), Some("websocket"));
    assert!(r.human().starts_with("fanout over WebSocket: 10 clients"));

    // Open loop: the same accounting from the scheduled send.
    let open = FanoutOpts {
        rate: Some(200.0),
        messages: 5,
        ..flood
    };
    let r = chat::fanout(&common(http, "wo", Transport::WebSocket), &open)
        .await
        .unwrap();
    assert_complete(&r);
    assert_eq!((r.sent, r.expected), (15, 10 * 15));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_over_websocket_reaches_every_recipient() {
    let (_, http, shutdown) = server().await;
    let o = PrivateOpts {
        clients: 10,
        messages: 20,
        window: 3,
    };
    let r = chat::private(&common(http, "wp", Transport::WebSocket), &o)
        .await
        .unwrap();
    assert_complete(&r);
    // Every message is delivered twice: to its recipient and as the sender's echo.
    assert_eq!((r.sent, r.expected), (200, 400));
    assert_eq!(r.transport.as_deref(), Some("websocket"));
    shutdown.cancel();
}

/// The same server, one fan-out over each transport: the same counts, each report naming
/// its transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_websocket_runs_count_the_same() {
    let (tcp, http, shutdown) = server().await;
    let o = FanoutOpts {
        clients: 10,
        senders: 3,
        messages: 20,
        window: 4,
        rate: None,
    };
    let over_tcp = chat::fanout(&common(tcp, "tt", Transport::Tcp), &o)
        .await
        .unwrap();
    let over_ws = chat::fanout(&common(http, "tw", Transport::WebSocket), &o)
        .await
        .unwrap();
    for r in [&over_tcp, &over_ws] {
        assert_complete(r);
        assert_eq!((r.sent, r.expected, r.echoes), (60, 600, Some(60)));
    }
    assert_eq!(over_tcp.transport.as_deref(), Some("tcp"));
    assert_eq!(over_ws.transport.as_deref(), Some("websocket"));
    shutdown.cancel();
}

/// A WebSocket client pointed at the TCP listener fails its login with an error that says
/// the upgrade failed, within the time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_port_is_a_clear_error() {
    let (tcp, _, shutdown) = server().await;
    let o = FanoutOpts {
        clients: 2,
        senders: 1,
        messages: 1,
        window: 1,
        rate: None,
    };
    let mut c = common(tcp, "wx", Transport::WebSocket);
    c.timeout = Duration::from_secs(5);
    let e = chat::fanout(&c, &o).await.unwrap_err().to_string();
    assert!(e.contains("WebSocket upgrade"), "{e}");
    shutdown.cancel();
}

/// The binary: `--ws` with `fanout` prints a report whose transport is `websocket`; with a
/// workload that does not speak WebSocket it refuses in one line before connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_speaks_websocket_with_ws() {
    let (_, http, shutdown) = server().await;
    let bin = env!("CARGO_BIN_EXE_simpletextim-loadgen");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["--server", &http.to_string(), "--ws", "--timeout", "30"])
            .args(["--prefix", "wb", "--settle-ms", "50", "--threads", "1"])
            .args(["fanout", "-c", "6", "-s", "2", "-m", "10", "-w", "4"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_str(stdout.trim()).unwrap();
    assert_complete(&r);
    assert_eq!((r.sent, r.expected), (20, 120));
    assert_eq!(r.transport.as_deref(), Some("websocket"));
    shutdown.cancel();

    let out = Command::new(bin)
        .args(["--ws", "presence"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "simpletextim-loadgen: --ws: only the fanout and private workloads speak WebSocket\n"
    );
}
