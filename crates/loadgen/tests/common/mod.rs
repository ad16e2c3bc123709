//! What the load generator's integration tests share: a server of the real library on
//! `127.0.0.1:0` (memory store), the workloads' common options, and the check that a run
//! delivered everything.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use simpletextim_loadgen::net::{Bind, Transport};
use simpletextim_loadgen::report::Report;
use simpletextim_loadgen::workload::Common;
use simpletextim_server::{Config, Framing, MemoryStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A server with a framed TCP listener and an HTTP one (`GET /ws`), exempt from the
/// per-address limits (hundreds of clients log in at once from 127.0.0.1) and with no flood
/// control. Returns both addresses and the token that stops it.
pub async fn server() -> (SocketAddr, SocketAddr, CancellationToken) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tcp_addr, http_addr) = (tcp.local_addr().unwrap(), http.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let config = Config {
        hash_cost: simpletextim_server::HashCost::InsecureFast,
        exempt_loopback: true,
        rate_limit: None,
        store: Arc::new(MemoryStore::new(1000)),
        ..Config::default()
    };
    let listeners = vec![(tcp, Framing::LengthDelimited), (http, Framing::WebSocket)];
    tokio::spawn(simpletextim_server::run_listeners(
        listeners,
        config,
        shutdown.clone(),
    ));
    (tcp_addr, http_addr, shutdown)
}

/// The workloads' common options for small test runs against `server`.
pub fn common(server: SocketAddr, prefix: &str, transport: Transport) -> Common {
    Common {
        server,
        servers: Vec::new(),
        prefix: prefix.to_owned(),
        timeout: Duration::from_secs(30),
        login_concurrency: 8,
        size: 40,
        settle: Duration::from_millis(50),
        bind: Bind::Any,
        transport,
    }
}

/// Every expected message arrived once, in order, timed; no fail and no disconnection.
pub fn assert_complete(r: &Report) {
    assert!(!r.timed_out, "{}", r.to_json_line());
    assert_eq!(r.delivered, r.expected, "{}", r.to_json_line());
    assert_eq!(r.lost, 0);
    assert_eq!(r.out_of_order, 0);
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    assert_eq!(r.disconnected, 0);
    assert_eq!(r.latency_us.count, r.delivered);
}
