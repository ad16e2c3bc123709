//! The private `redis-server` of `common/redis.rs`: it answers `PING`, several run side by
//! side, a killed one refuses connections, a restarted one answers again on the same port,
//! drop stops it and deletes its directory, and its watchdog kills it when the test
//! process itself is SIGKILLed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/redis.rs"]
mod redis;

use redis::RedisServer;

const WAIT: Duration = Duration::from_secs(10);

/// Whether process `pid` still runs (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the `(comm)` field, which may itself hold spaces or parens.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn start_ping_kill_restart_stop() {
    let mut r = RedisServer::start();
    assert_eq!(r.url(), format!("redis://127.0.0.1:{}", r.port()));
    assert!(r.ping(WAIT), "a started server answers PING");
    assert!(r.is_running());
    let first_pid = r.pid().expect("running");

    r.kill();
    assert!(!r.is_running());
    assert!(!alive(first_pid), "kill ends the process");
    let refused = TcpStream::connect_timeout(&r.addr(), WAIT);
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "a killed server refuses connections"
    );
    r.kill(); // a no-op when not running

    let port = r.port();
    r.restart();
    assert_eq!(r.port(), port, "restart keeps the port");
    assert!(r.ping(WAIT), "a restarted server answers PING");
    let second_pid = r.pid().expect("running");
    assert_ne!(first_pid, second_pid);
    // Restarting a running server replaces it.
    r.restart();
    assert!(!alive(second_pid));
    assert!(r.ping(WAIT));

    let pid = r.pid().expect("running");
    r.stop();
    assert!(!alive(pid), "stop ends the process");
    assert!(!r.ping(Duration::from_millis(500)));
}

#[test]
fn several_servers_side_by_side_and_drop_cleans_up() {
    let a = RedisServer::start();
    let mut b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert!(a.ping(WAIT) && b.ping(WAIT));
    b.kill();
    assert!(a.ping(WAIT), "killing one leaves the other running");
    let (pid, dir) = (a.pid().expect("running"), a.dir().to_path_buf());
    drop(a);
    assert!(!alive(pid), "drop stops the server");
    assert!(!dir.exists(), "drop deletes the directory");
}

/// Run only by [`watchdog_kills_the_server_when_the_test_process_dies`], as a child
/// process: starts a server, prints its pid and directory, and waits to be killed.
#[test]
#[ignore = "a helper process of another test"]
fn helper_start_and_wait_to_be_killed() {
    if std::env::var_os("REDIS_HARNESS_HELPER").is_none() {
        return;
    }
    let r = RedisServer::start();
    println!("REDIS {} {}", r.pid().expect("running"), r.dir().display());
    // The parent SIGKILLs this process long before; bounded all the same.
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn watchdog_kills_the_server_when_the_test_process_dies() {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "helper_start_and_wait_to_be_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("REDIS_HARNESS_HELPER", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the helper");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints `test NAME ... ` before the helper's own line, on the same line.
            if let Some((_, rest)) = line.split_once("REDIS ") {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("the helper printed its server");
    let (pid, dir) = line.split_once(' ').expect("pid and dir");
    let pid: u32 = pid.parse().expect("a pid");
    let dir = PathBuf::from(dir);
    wait_until("the watchdog kills the orphaned redis-server", || {
        !alive(pid)
    });
    wait_until("the watchdog deletes the directory", || {
        !Path::new(&dir).exists()
    });
}
