//! The server-binary harness of `common/node.rs`: the framed and HTTP addresses read from
//! the log, a clean SIGTERM stop, a SIGKILL, and a node that cannot start failing with its
//! log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::time::Duration;

#[path = "common/node.rs"]
mod node;

use node::Node;

const WAIT: Duration = Duration::from_secs(10);

fn args<'a>(data: &'a str, http: &'a str) -> Vec<&'a str> {
    vec![
        "--listen",
        "127.0.0.1:0",
        "--listen-http",
        http,
        "--insecure-fast-hash",
        "--data",
        data,
    ]
}

#[test]
fn addresses_from_the_log_then_terminate_and_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let data = data.to_str().unwrap();

    let mut n = Node::spawn(&args(data, "127.0.0.1:0"));
    assert!(n.addr().ip().is_loopback() && n.addr().port() != 0);
    let http = n.http_addr().expect("HTTP on");
    assert_ne!(http.port(), n.addr().port());
    TcpStream::connect_timeout(&n.addr(), WAIT).expect("the framed port accepts");
    TcpStream::connect_timeout(&http, WAIT).expect("the HTTP port accepts");
    assert!(n.wait_for_log("listening on", WAIT).is_some());
    assert!(n.is_running());
    let status = n.terminate();
    assert!(status.success(), "{status}; log:\n{}", n.log_text());
    assert!(!n.is_running());
    assert!(n.wait_for_log("bye", WAIT).is_some(), "{}", n.log_text());

    let mut n = Node::spawn(&args(data, "off"));
    assert_eq!(n.http_addr(), None);
    let addr = n.addr();
    let status = n.kill().expect("reaped");
    assert!(!status.success());
    assert!(n.kill().is_none(), "a second kill is a no-op");
    assert!(TcpStream::connect_timeout(&addr, WAIT).is_err());
}

#[test]
fn a_node_that_exits_at_once_fails_with_its_log() {
    let got = std::panic::catch_unwind(|| {
        Node::spawn(&["--listen", "127.0.0.1:0", "--max-frame", "not-a-number"])
    });
    let err = got.expect_err("spawn must fail");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("before it exited"), "{msg}");
    assert!(msg.contains("not-a-number"), "{msg}");
}
