//! TLS in the terminal client: its network task, given `--server simpletextims://…` and
//! `--ca` (read by [`Target::parse`], as `main` reads them), against the real server on
//! `127.0.0.1:0` serving TLS with a self-signed pair made here with rcgen (the kind
//! `cargo xtask cert` writes); and the binary's refusal of a bad CA file or a contradiction
//! before the screen opens.
//!
//! Every wait is bounded by [`PATIENCE`], reached only when something is broken.

// Helpers unwrap too: a failure anywhere in them is the test's failure.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use simpletextim_proto::{
    ChatMessage, Command, ErrorCode, MessageText, Password, Recipient, Reply, UserId,
};
use simpletextim_server::{Config, HashCost, Tls};
use simpletextim_tui::event::{Event, NetEvent, NetRequest};
use simpletextim_tui::net::{self, Endpoint, Target};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for anything; reached only when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

/// A self-signed certificate and its key, as PEM files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

/// A fresh pair for `localhost` and 127.0.0.1 in a directory of its own, with a subject of
/// its own (two pairs with one subject would look like one authority with two keys).
fn pair(name: &str, names: &[&str]) -> Pair {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tui-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("SimpleTextIM test {name}"),
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pair = Pair {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&pair.cert, cert.pem()).unwrap();
    std::fs::write(&pair.key, key.serialize_pem()).unwrap();
    pair
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

/// The server library on `addr`, every listener TLS with `pair`.
async fn tls_server_on(addr: &str, pair: &Pair) -> Server {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let config = Config {
        hash_cost: HashCost::InsecureFast,
        tls: Some(Tls::from_pem_files(&pair.cert, &pair.key).unwrap()),
        ..Config::default()
    };
    let task = tokio::spawn(simpletextim_server::run(listener, config, shutdown.clone()));
    Server {
        addr,
        shutdown,
        task,
    }
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// The endpoint `--server <server> --ca <ca>` makes.
fn endpoint(server: &str, ca: &Path) -> Endpoint {
    let target = Target::parse(server, false, Some(ca)).unwrap();
    target.endpoint().unwrap()
}

/// One network task and its event channel.
struct Peer {
    requests: mpsc::UnboundedSender<NetRequest>,
    events: mpsc::Receiver<Event>,
    task: JoinHandle<()>,
}

impl Peer {
    fn start(endpoint: Endpoint, user: &str, password: &str) -> Peer {
        let (tx, events) = mpsc::channel(64);
        let (requests, task) = net::spawn(endpoint, tx);
        requests
            .send(NetRequest::Login {
                user: UserId::new(user).unwrap(),
                password: Password::new(password).unwrap(),
            })
            .unwrap();
        Peer {
            requests,
            events,
            task,
        }
    }

    async fn next(&mut self) -> NetEvent {
        match tokio::time::timeout(PATIENCE, self.events.recv()).await {
            Ok(Some(Event::Net(e))) => e,
            other => panic!("expected a network event, got {other:?}"),
        }
    }

    /// The next event, which must be a reply.
    async fn reply(&mut self) -> Reply {
        match self.next().await {
            NetEvent::Reply { reply, .. } => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// Connecting, then logged in as `user` with nothing pending.
    async fn logged_in(&mut self, user: &str) {
        assert_eq!(self.next().await, NetEvent::Connecting);
        match self.next().await {
            NetEvent::LoggedIn {
                user: u, pending, ..
            } => {
                assert_eq!(u.as_str(), user);
                assert_eq!(pending, []);
            }
            other => panic!("expected {user} logged in, got {other:?}"),
        }
    }

    fn send(&self, command: Command) {
        self.requests
            .send(NetRequest::Send(command.into()))
            .unwrap();
    }

    async fn exit(self) {
        self.requests.send(NetRequest::Exit).unwrap();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn say(to: Recipient, text: &str) -> Command {
    Command::Send {
        to,
        message: MessageText::new(text).unwrap(),
    }
}

/// The single message of a `message` reply.
fn one_message(reply: Reply) -> ChatMessage {
    match reply {
        Reply::Message { mut messages, .. } if messages.len() == 1 => messages.remove(0),
        other => panic!("expected one message, got {other:?}"),
    }
}

#[tokio::test]
async fn two_people_log_in_and_chat_over_tls_trusting_the_ca_file() {
    let pair = pair("chat", &["localhost", "127.0.0.1"]);
    let server = tls_server_on("127.0.0.1:0", &pair).await;
    let port = server.addr.port();

    // Both spellings: the scheme, and a bare address with --ca (which implies TLS).
    let alice_at = endpoint(&format!("simpletextims://localhost:{port}"), &pair.cert);
    assert!(alice_at.is_tls());
    assert_eq!(
        alice_at.to_string(),
        format!("simpletextims://localhost:{port}")
    );
    let mut alice = Peer::start(alice_at, "alice", "alice-pw");
    alice.logged_in("alice").await;
    let mut bob = Peer::start(
        endpoint(&format!("127.0.0.1:{port}"), &pair.cert),
        "bob",
        "bob-pw",
    );
    bob.logged_in("bob").await;
    assert_eq!(
        alice.reply().await,
        Reply::Joined {
            user_id: uid("bob")
        }
    );

    alice.send(Command::List);
    assert_eq!(
        alice.reply().await,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice"), uid("bob")]
        }
    );

    alice.send(say(Recipient::Everyone, "hello over TLS"));
    let echo = one_message(alice.reply().await);
    assert_eq!(
        (echo.user_id.as_str(), echo.message.as_str(), &echo.to),
        ("alice", "hello over TLS", &Recipient::Everyone)
    );
    assert_eq!(one_message(bob.reply().await), echo);

    bob.send(say(Recipient::User(uid("alice")), "psst"));
    let private = one_message(alice.reply().await);
    assert_eq!(
        (
            private.user_id.as_str(),
            private.message.as_str(),
            &private.to
        ),
        ("bob", "psst", &Recipient::User(uid("alice")))
    );
    assert!(private.id > echo.id);
    assert_eq!(one_message(bob.reply().await), private);

    bob.exit().await;
    assert_eq!(
        alice.reply().await,
        Reply::Left {
            user_id: uid("bob")
        }
    );
    alice.exit().await;
    server.stop().await;
}

#[tokio::test]
async fn reconnections_keep_using_tls() {
    let pair = pair("reconnect", &["localhost"]);
    let server = tls_server_on("127.0.0.1:0", &pair).await;
    let addr = server.addr;
    let mut erin = Peer::start(
        endpoint(
            &format!("simpletextims://localhost:{}", addr.port()),
            &pair.cert,
        ),
        "erin",
        "erin-pw",
    );
    erin.logged_in("erin").await;

    server.stop().await;
    match erin.reply().await {
        Reply::Fail { fail, .. } => assert_eq!(fail.error_code, ErrorCode::Unavailable),
        other => panic!("expected the shutdown's fail 503, got {other:?}"),
    }
    // The server closed its TLS sessions: a close, not an error.
    match erin.next().await {
        NetEvent::Disconnected { reason, .. } => {
            assert_eq!(reason, "connection closed by the server");
        }
        other => panic!("expected a disconnection, got {other:?}"),
    }
    assert_eq!(erin.next().await, NetEvent::Reconnecting { in_secs: 1 });
    // The server is back, TLS only: logging in again proves the reconnection used TLS.
    let server = tls_server_on(&addr.to_string(), &pair).await;
    erin.logged_in("erin").await;
    erin.send(Command::List);
    assert_eq!(
        erin.reply().await,
        Reply::List {
            r#ref: None,
            list: vec![uid("erin")]
        }
    );
    erin.exit().await;
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_the_ca_file_does_not_vouch_for_fails_the_login_with_the_reason() {
    let served = pair("served", &["localhost"]);
    let other = pair("other", &["localhost"]);
    let server = tls_server_on("127.0.0.1:0", &served).await;
    let at = format!("simpletextims://localhost:{}", server.addr.port());
    let mut carol = Peer::start(endpoint(&at, &other.cert), "carol", "carol-pw");
    assert_eq!(carol.next().await, NetEvent::Connecting);
    assert_eq!(
        carol.next().await,
        NetEvent::LoginFailed {
            reason: format!(
                "TLS handshake with {at} failed: invalid peer certificate: UnknownIssuer"
            )
        }
    );
    carol.exit().await;
    server.stop().await;
}

#[tokio::test]
async fn the_name_verified_is_the_host_of_the_address() {
    let pair = pair("name", &["localhost"]);
    let server = tls_server_on("127.0.0.1:0", &pair).await;
    let at = format!("simpletextims://127.0.0.1:{}", server.addr.port());
    let mut dave = Peer::start(endpoint(&at, &pair.cert), "dave", "dave-pw");
    assert_eq!(dave.next().await, NetEvent::Connecting);
    assert_eq!(
        dave.next().await,
        NetEvent::LoginFailed {
            reason: format!(
                "TLS handshake with {at} failed: invalid peer certificate: certificate not \
                 valid for name \"127.0.0.1\"; certificate is only valid for \
                 DnsName(\"localhost\")"
            )
        }
    );
    dave.exit().await;
    server.stop().await;
}

/// Runs the client binary with `args` and no terminal (under `setsid`, stdin from
/// /dev/null, as in password_env.rs): its exit status and stderr.
fn run_client(args: &[&str]) -> (bool, String) {
    let output = Process::new("setsid")
        .arg(env!("CARGO_BIN_EXE_simpletextim"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setsid (util-linux) runs the client");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_missing_ca_file_stops_the_client_with_one_line_before_the_screen_opens() {
    let missing = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-such-ca.pem");
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tui-tls-{}-ca-missing.log", std::process::id()));
    let (ok, stderr) = run_client(&[
        "--ca",
        missing.to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(
        stderr,
        format!(
            "simpletextim: cannot read the CA file {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    assert!(!log.exists(), "it stopped before even opening its log");
}

#[test]
fn a_key_given_as_ca_file_stops_the_client_with_one_line() {
    let pair = pair("key-as-ca", &["localhost"]);
    let (ok, stderr) = run_client(&[
        "--server",
        "simpletextims://localhost:5000",
        "--ca",
        pair.key.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(
        stderr,
        format!(
            "simpletextim: the CA file {} holds no PEM certificate\n",
            pair.key.display()
        )
    );
}

#[test]
fn tls_options_with_a_plain_address_stop_the_client_with_one_line() {
    let (ok, stderr) = run_client(&["--server", "simpletextim://localhost:5000", "--tls"]);
    assert!(!ok);
    assert_eq!(
        stderr,
        "simpletextim: --server: simpletextim:// is plain TCP, but --tls or --ca asks for \
         TLS: use simpletextims://localhost:5000\n"
    );
}

#[test]
fn the_help_shows_the_tls_options() {
    let output = Process::new(env!("CARGO_BIN_EXE_simpletextim"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--server <ADDRESS>",
        "simpletextims://host:port",
        "--tls",
        "--ca <FILE>",
    ] {
        assert!(help.contains(needle), "{needle:?} not in:\n{help}");
    }
}
