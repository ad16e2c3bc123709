//! `redis-fanout`, the Redis pub/sub reference, against a private `redis-server` on a free
//! loopback port (never the system's service): every subscriber gets every message, in
//! order, and the figures add up. Not a benchmark: nothing is timed.
//!
//! `redis-server` must be installed: `cargo xtask test` installs it from the distribution's
//! packages. Without it this test fails, saying so; it never skips.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use simpletextim_loadgen::net::Transport;
use simpletextim_loadgen::report::Report;
use simpletextim_loadgen::workload::redis::{self, RedisFanoutOpts};

mod common;
use common::common;

/// A private `redis-server`, killed when dropped (also when the test fails).
struct Redis {
    child: Child,
    addr: SocketAddr,
    /// Its working directory (`--dir`), removed after it.
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Errors mean it has exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server` on the `PATH`, or where Debian puts it.
fn redis_server() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not installed: run the tests with `cargo xtask test`, which installs it (Debian package redis-server)"
            )
        })
}

impl Redis {
    /// Starts one on a free port of 127.0.0.1 (a few attempts: another process may take the
    /// port between the probe and the start) and waits until it answers `PING`.
    fn start() -> Redis {
        let bin = redis_server();
        let mut last = String::new();
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = tempfile::tempdir().unwrap();
            let child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut redis = Redis {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _dir: dir,
            };
            match redis.wait_ready() {
                Ok(()) => return redis,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// Waits up to 10 s for `+PONG`.
    fn wait_ready(&mut self) -> Result<(), String> {
        use std::io::{Read, Write};
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited ({status})"));
            }
            if let Ok(mut s) = TcpStream::connect(self.addr) {
                let mut reply = [0; 7];
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("no PONG within 10 s".into())
    }
}

fn assert_complete(r: &Report) {
    let line = r.to_json_line();
    assert_eq!(r.workload, "redis-fanout");
    assert!(!r.timed_out, "{line}");
    assert_eq!(r.delivered, r.expected, "{line}");
    assert_eq!(r.lost, 0, "{line}");
    assert_eq!(r.out_of_order, 0, "{line}");
    assert!(r.fails.is_empty(), "{line}");
    assert_eq!(r.disconnected, 0, "{line}");
    assert_eq!(r.latency_us.count, r.delivered, "{line}");
    assert_eq!(r.send_error, None, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fanout_flood_and_open_loop_deliver_everything() {
    let redis = Redis::start();
    // Five subscribers, two separate publishers × 20: every subscriber gets all 40.
    let flood = RedisFanoutOpts {
        clients: 5,
        senders: 2,
        messages: 20,
        window: 4,
        rate: None,
    };
    let r = redis::fanout(&common(redis.addr, "rf", Transport::Tcp), &flood)
        .await
        .unwrap();
    assert_complete(&r);
    assert_eq!((r.clients, r.senders, r.sent), (5, 2, 40));
    assert_eq!((r.expected, r.delivered), (5 * 40, 5 * 40));
    // Every PUBLISH was answered (what releases the flood window).
    assert_eq!(r.echoes, Some(40));
    assert_eq!(r.window, Some(4));
    assert!(r.send_lag_us.is_none());
    assert!(r.human().contains("\n  subscriptions: "), "{}", r.human());

    let open = RedisFanoutOpts {
        rate: Some(200.0),
        ..flood
    };
    let r = redis::fanout(&common(redis.addr, "ro", Transport::Tcp), &open)
        .await
        .unwrap();
    assert_complete(&r);
    assert_eq!((r.sent, r.expected, r.delivered), (40, 200, 200));
    assert_eq!(r.echoes, Some(40));
    assert_eq!((r.window, r.rate), (None, Some(200.0)));
    assert_eq!(r.send_lag_us.map(|l| l.count), Some(40));
    assert_eq!(r.latency_from_write_us.map(|l| l.count), Some(200));
}
