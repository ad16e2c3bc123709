//! Durability and administration, against the real `simpletextim-server` binary with its
//! SQLite store: restart and SIGKILL survival of accounts and mailboxes, delivered-once,
//! the mailbox cap, closed registration, the `user` and `backup` subcommands, a bad data
//! directory and the schema of a fresh one.
//!
//! Each test spawns the binary on `127.0.0.1:0` with its own temporary `--data` directory
//! and reads the bound address from its `listening on` log line. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[path = "common/node.rs"]
mod node;

use simpletextim_proto::{ChatMessage, Client, ErrorCode, Failure, Recipient, Reply, UserId};

const WAIT: Duration = Duration::from_secs(10);

/// A running server process ([`node::Node`], killed when dropped).
struct Server {
    proc: node::Node,
    addr: SocketAddr,
}

impl Server {
    /// Starts the binary on `data` with `extra` options; waits for `listening on`.
    fn start(data: &Path, extra: &[&str]) -> Server {
        Server::start_with(Command::new(node::BIN), data, extra)
    }

    /// [`Server::start`] with `cmd` running the binary (e.g. [`with_umask_000`]).
    fn start_with(mut cmd: Command, data: &Path, extra: &[&str]) -> Server {
        cmd.args(["--listen", "127.0.0.1:0", "--listen-http", "off"])
            .args(["--insecure-fast-hash", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        let proc = node::Node::spawn_command(cmd);
        let addr = proc.addr();
        Server { proc, addr }
    }

    /// SIGKILL: no chance to flush or close anything.
    fn kill9(mut self) {
        assert!(self.proc.kill().is_some(), "the server was running");
    }

    /// SIGTERM, then the exit status (graceful shutdown must finish within 5 s).
    fn terminate(mut self) -> ExitStatus {
        let started = Instant::now();
        let status = self.proc.terminate();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no exit within 5 s of SIGTERM: {:?}",
            started.elapsed()
        );
        status
    }

    async fn login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(Client, Vec<ChatMessage>), Failure> {
        let mut c = tokio::time::timeout(WAIT, Client::connect(self.addr))
            .await
            .expect("connect timed out")
            .unwrap();
        match tokio::time::timeout(WAIT, c.login(user, password))
            .await
            .expect("login timed out")
        {
            Ok(pending) => Ok((c, pending)),
            Err(e) => Err(e.failure().cloned().unwrap_or_else(|| panic!("login: {e}"))),
        }
    }

    /// Logs in with the test password `pw-USER`, which must succeed.
    async fn user(&self, user: &str) -> (Client, Vec<ChatMessage>) {
        self.login(user, &format!("pw-{user}"))
            .await
            .unwrap_or_else(|f| panic!("login of {user} refused: {f:?}"))
    }
}

async fn next(c: &mut Client) -> Reply {
    tokio::time::timeout(WAIT, c.next_reply())
        .await
        .expect("no reply in time")
        .expect("connection failed")
}

/// Sends a private message and returns the server's echo of it.
async fn send_private(c: &mut Client, to: &str, text: &str) -> ChatMessage {
    c.send_private(to, text).await.unwrap();
    match next(c).await {
        Reply::Message { mut messages, .. } if messages.len() == 1 => messages.remove(0),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// Logs `c` out and waits for the server to close the connection.
async fn exit(mut c: Client) {
    c.exit().await.unwrap();
    let end = tokio::time::timeout(WAIT, c.next_reply())
        .await
        .expect("not closed in time");
    assert!(end.is_err(), "expected EOF after exit, got {end:?}");
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn private(from: &str, to: &str, text: &str, got: &ChatMessage) -> ChatMessage {
    ChatMessage {
        r#ref: None,
        user_id: uid(from),
        message: text.into(),
        to: Recipient::User(uid(to)),
        id: got.id,
        ts: got.ts,
    }
}

fn bad_credentials() -> Failure {
    Failure::new(ErrorCode::Unauthorized, "invalid user id or password")
}

/// Runs a subcommand to completion with `stdin` as its input.
fn admin(data: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let (code, out, err) = admin_with(Command::new(node::BIN), data, args, stdin);
    (code == Some(0), out, err)
}

/// [`admin`] with `cmd` running the binary; the exit code instead of success.
fn admin_with(
    mut cmd: Command,
    data: &Path,
    args: &[&str],
    stdin: &str,
) -> (Option<i32>, String, String) {
    let mut child = cmd
        .arg("--data")
        .arg(data)
        .arg("--insecure-fast-hash")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses to start (no database) exits without reading its input: the
    // pipe is then closed, which is not the test's failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing stdin: {e}"
        );
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A temporary directory of mode 0700, as the server requires of an existing data directory
/// (`tempfile` leaves the mode to the umask).
fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o700);
    dir
}

/// A command that runs the binary with umask 000, which alone would make every file it
/// creates readable and writable by everyone.
#[cfg(unix)]
fn with_umask_000() -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"umask 000; exec "$0" "$@""#, node::BIN]);
    cmd
}

/// The permission bits of `path`.
#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Sets the permission bits of `path` (nothing elsewhere than on Unix).
fn chmod(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// Makes `dir` a data directory holding a fresh database: the server creates it on its
/// first start, which the administration commands need.
fn first_start(dir: &Path) {
    assert!(Server::start(dir, &[]).terminate().success());
}

#[tokio::test]
async fn accounts_and_mailbox_survive_a_restart() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let (bob, _) = server.user("bob").await;
    exit(bob).await;
    let (mut alice, _) = server.user("alice").await;
    let first = send_private(&mut alice, "bob", "see you after the restart").await;
    assert_eq!(
        first,
        private("alice", "bob", "see you after the restart", &first)
    );
    drop(alice);
    assert!(server.terminate().success(), "SIGTERM must exit 0");

    let server = Server::start(dir.path(), &[]);
    // The account is there: a wrong password is refused rather than creating a new one.
    assert_eq!(
        server.login("bob", "not-bobs").await.err(),
        Some(bad_credentials())
    );
    let (_bob, pending) = server.user("bob").await;
    assert_eq!(pending, vec![first.clone()]);
    // Ids keep increasing across the restart.
    let (mut alice, _) = server.user("alice").await;
    let second = send_private(&mut alice, "bob", "and after it").await;
    assert!(
        second.id > first.id,
        "id {} after restart not above {}",
        second.id,
        first.id
    );
}

#[tokio::test]
async fn echoed_private_messages_survive_sigkill() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let (bob, _) = server.user("bob").await;
    exit(bob).await;
    let (mut alice, _) = server.user("alice").await;
    let mut echoed = Vec::new();
    for i in 0..20 {
        echoed.push(send_private(&mut alice, "bob", &format!("message {i}")).await);
    }
    // Killed right after the last echo: every echoed message was committed before it.
    server.kill9();

    let server = Server::start(dir.path(), &[]);
    let (_bob, pending) = server.user("bob").await;
    let expected: Vec<ChatMessage> = echoed
        .iter()
        .enumerate()
        .map(|(i, m)| private("alice", "bob", &format!("message {i}"), m))
        .collect();
    assert_eq!(pending, expected);
}

#[tokio::test]
async fn a_just_created_account_survives_sigkill() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    // The login ack is the account's creation.
    let (_carol, pending) = server.user("Carol").await;
    assert_eq!(pending, vec![]);
    server.kill9();

    let server = Server::start(dir.path(), &[]);
    assert_eq!(
        server.login("carol", "another password").await.err(),
        Some(bad_credentials())
    );
    // Still spelled as registered, whatever the spelling of the login.
    let (mut carol, _) = server.login("CAROL", "pw-Carol").await.unwrap();
    carol.list().await.unwrap();
    assert_eq!(
        next(&mut carol).await,
        Reply::List {
            r#ref: None,
            list: vec![uid("Carol")]
        }
    );
}

#[tokio::test]
async fn the_mailbox_is_delivered_once() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let (bob, _) = server.user("bob").await;
    exit(bob).await;
    let (mut alice, _) = server.user("alice").await;
    let m1 = send_private(&mut alice, "bob", "one").await;
    let m2 = send_private(&mut alice, "bob", "two").await;

    let (bob, pending) = server.user("bob").await;
    assert_eq!(
        pending,
        vec![
            private("alice", "bob", "one", &m1),
            private("alice", "bob", "two", &m2)
        ]
    );
    exit(bob).await;
    let (bob, pending) = server.user("bob").await;
    assert_eq!(pending, vec![]);
    exit(bob).await;
    drop(alice);

    // Still delivered after a restart.
    assert!(server.terminate().success());
    let server = Server::start(dir.path(), &[]);
    let (_bob, pending) = server.user("bob").await;
    assert_eq!(pending, vec![]);
}

#[tokio::test]
async fn the_mailbox_cap_refuses_with_503_and_stores_nothing() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &["--mailbox-cap", "3"]);
    let (bob, _) = server.user("bob").await;
    exit(bob).await;
    let (mut alice, _) = server.user("alice").await;
    let mut kept = Vec::new();
    for text in ["a", "b", "c"] {
        let m = send_private(&mut alice, "bob", text).await;
        kept.push(private("alice", "bob", text, &m));
    }
    alice.send_private("bob", "d").await.unwrap();
    assert_eq!(
        next(&mut alice).await,
        Reply::Fail {
            r#ref: None,
            fail: Failure::new(
                ErrorCode::Unavailable,
                "mailbox full: bob has too many unread messages"
            )
        }
    );
    // The session goes on.
    alice.list().await.unwrap();
    assert_eq!(
        next(&mut alice).await,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice")]
        }
    );
    drop(alice);
    assert!(server.terminate().success());

    let server = Server::start(dir.path(), &["--mailbox-cap", "3"]);
    let (_bob, pending) = server.user("bob").await;
    assert_eq!(pending, kept);
}

#[tokio::test]
async fn closed_registration_admits_only_accounts_made_by_user_add() {
    let dir = tempdir();
    first_start(dir.path());
    let (ok, out, err) = admin(dir.path(), &["user", "add", "alice"], "pw-alice\n");
    assert!(ok, "user add failed: {err}");
    assert_eq!(out, "created alice\n");

    let server = Server::start(dir.path(), &["--registration", "closed"]);
    // An unknown user id and a wrong password get the same reason.
    assert_eq!(
        server.login("mallory", "whatever").await.err(),
        Some(bad_credentials())
    );
    assert_eq!(
        server.login("alice", "wrong").await.err(),
        Some(bad_credentials())
    );
    let (_alice, pending) = server.user("alice").await;
    assert_eq!(pending, vec![]);
    // A failed login created nothing.
    let (ok, out, _) = admin(dir.path(), &["user", "list"], "");
    assert!(ok);
    assert_eq!(out.lines().count(), 2, "header and alice only: {out}");
    assert!(out.lines().nth(1).unwrap().starts_with("alice "), "{out}");
}

#[tokio::test]
async fn user_subcommands_manage_accounts() {
    let dir = tempdir();
    let d = dir.path();
    first_start(d);
    assert_eq!(
        admin(d, &["user", "add", "Dave"], "first\n"),
        (true, "created Dave\n".into(), String::new())
    );
    assert_eq!(
        admin(d, &["user", "add", "dave"], "other\n"),
        (
            false,
            String::new(),
            "simpletextim-server: user dave exists already\n".into()
        )
    );
    let (ok, out, _) = admin(d, &["user", "list"], "");
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("USER "), "{out}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], "Dave");
    assert_eq!(row[row.len() - 1], "0", "unread count: {out}");

    assert_eq!(
        admin(d, &["user", "passwd", "DAVE"], "second\n"),
        (true, "password of DAVE changed\n".into(), String::new())
    );
    {
        let server = Server::start(d, &["--registration", "closed"]);
        assert_eq!(
            server.login("dave", "first").await.err(),
            Some(bad_credentials())
        );
        assert!(server.login("dave", "second").await.is_ok());
    }
    assert_eq!(
        admin(d, &["user", "passwd", "erin"], "x\n"),
        (
            false,
            String::new(),
            "simpletextim-server: no such user: erin\n".into()
        )
    );
    assert_eq!(
        admin(d, &["user", "del", "dave"], ""),
        (
            true,
            "deleted dave (0 unread messages dropped)\n".into(),
            String::new()
        )
    );
    assert_eq!(
        admin(d, &["user", "del", "dave"], ""),
        (
            false,
            String::new(),
            "simpletextim-server: no such user: dave\n".into()
        )
    );
    let (ok, out, _) = admin(d, &["user", "list"], "");
    assert!(ok);
    assert_eq!(out.lines().count(), 1, "header only: {out}");
    // Bad input: one line, non-zero exit.
    let (ok, out, err) = admin(d, &["user", "add", "no spaces"], "pw\n");
    assert!(!ok);
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("simpletextim-server: "), "{err}");
    let (ok, _, err) = admin(d, &["user", "add", "frank"], "\n");
    assert!(!ok, "an empty password must be refused");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn user_del_drops_the_mailbox() {
    let dir = tempdir();
    let d = dir.path();
    {
        let server = Server::start(d, &[]);
        let (bob, _) = server.user("bob").await;
        exit(bob).await;
        let (mut alice, _) = server.user("alice").await;
        send_private(&mut alice, "bob", "lost with the account").await;
        send_private(&mut alice, "bob", "this one too").await;
        // `user del` works beside the running server.
        assert_eq!(
            admin(d, &["user", "del", "bob"], ""),
            (
                true,
                "deleted bob (2 unread messages dropped)\n".into(),
                String::new()
            )
        );
    }
    let server = Server::start(d, &[]);
    // A fresh account, with an empty mailbox.
    let (_bob, pending) = server.login("bob", "a new bob").await.unwrap();
    assert_eq!(pending, vec![]);
}

#[test]
fn a_data_directory_that_cannot_be_created_is_a_one_line_error() {
    let dir = tempdir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let bad = file.join("data");
    let out = Command::new(node::BIN)
        .args(["--listen", "127.0.0.1:0", "--listen-http", "off", "--data"])
        .arg(&bad)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err,
        format!(
            "simpletextim-server: cannot create data directory {}: Not a directory (os error 20)\n",
            bad.display()
        )
    );
}

#[test]
fn a_file_that_is_not_a_database_is_a_one_line_error() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("simpletextim.sqlite3"),
        "this is not SQLite, but it is long enough to have a header and then some more",
    )
    .unwrap();
    chmod(&dir.path().join("simpletextim.sqlite3"), 0o600);
    let (ok, out, err) = admin(dir.path(), &["user", "list"], "");
    assert!(!ok);
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "simpletextim-server: cannot open database {}: file is not a database",
            dir.path().join("simpletextim.sqlite3").display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_directory_gets_the_current_schema_in_wal_mode() {
    let dir = tempdir();
    let data: PathBuf = dir.path().join("new").join("nested");
    let server = Server::start(&data, &[]);
    let (_alice, _) = server.user("alice").await;
    let db = data.join("simpletextim.sqlite3");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, simpletextim_server::store::SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let accounts: i64 = conn
        .query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(accounts, 1);
}

#[tokio::test]
async fn backup_copies_a_running_servers_database() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let (bob, _) = server.user("bob").await;
    exit(bob).await;
    let (mut alice, _) = server.user("alice").await;
    let m = send_private(&mut alice, "bob", "in the backup").await;

    let copy = dir.path().join("copy.sqlite3");
    let (ok, out, err) = admin(dir.path(), &["backup", copy.to_str().unwrap()], "");
    assert!(ok, "backup failed: {err}");
    assert!(out.starts_with("backed up "), "{out}");
    // Refuses to overwrite.
    let (ok, _, err) = admin(dir.path(), &["backup", copy.to_str().unwrap()], "");
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");

    // The copy is a data directory of its own: the mailbox is in it.
    drop(alice);
    drop(server);
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    chmod(&restored, 0o700);
    std::fs::copy(&copy, restored.join("simpletextim.sqlite3")).unwrap();
    let server = Server::start(&restored, &[]);
    let (_bob, pending) = server.user("bob").await;
    assert_eq!(pending, vec![private("alice", "bob", "in the backup", &m)]);
}

/// Serving on `data`, which must end (a refusal) within [`WAIT`]: exit code, stdout, stderr.
fn serve_refused(data: &Path) -> (Option<i32>, String, String) {
    let mut child = Command::new(node::BIN)
        .args(["--listen", "127.0.0.1:0", "--listen-http", "off", "--data"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still serving: {}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[cfg(unix)]
#[tokio::test]
async fn a_fresh_start_makes_the_directory_0700_and_the_database_files_0600_under_umask_000() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let server = Server::start_with(with_umask_000(), &data, &[]);
    // A login writes (the account), so the WAL and its index exist beside the database.
    let (_alice, _) = server.user("alice").await;
    let db = data.join("simpletextim.sqlite3");
    let wal = data.join("simpletextim.sqlite3-wal");
    let shm = data.join("simpletextim.sqlite3-shm");
    assert_eq!(
        [mode(&data), mode(&db), mode(&wal), mode(&shm)],
        [0o700, 0o600, 0o600, 0o600]
    );
}

#[cfg(unix)]
#[test]
fn a_backup_is_0600_under_umask_000() {
    let dir = tempdir();
    first_start(dir.path());
    let copy = dir.path().join("copy.sqlite3");
    let (code, out, err) = admin_with(
        with_umask_000(),
        dir.path(),
        &["backup", copy.to_str().unwrap()],
        "",
    );
    assert_eq!(
        (code, out, err),
        (
            Some(0),
            format!(
                "backed up {} to {}\n",
                dir.path().join("simpletextim.sqlite3").display(),
                copy.display()
            ),
            String::new()
        )
    );
    assert_eq!(mode(&copy), 0o600);
}

#[cfg(unix)]
#[test]
fn a_database_readable_by_others_is_refused_with_the_fix() {
    let dir = tempdir();
    first_start(dir.path());
    let db = dir.path().join("simpletextim.sqlite3");
    chmod(&db, 0o644);
    let refusal = format!(
        "simpletextim-server: {db} is readable by other users (mode 0644); run: chmod 600 {db}\n",
        db = db.display()
    );
    assert_eq!(
        serve_refused(dir.path()),
        (Some(1), String::new(), refusal.clone())
    );
    assert_eq!(
        admin_with(Command::new(node::BIN), dir.path(), &["user", "list"], ""),
        (Some(1), String::new(), refusal)
    );
    assert_eq!(mode(&db), 0o644, "the refusal changes nothing");
    // After the fix the database works as before.
    chmod(&db, 0o600);
    let (ok, out, err) = admin(dir.path(), &["user", "list"], "");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(Server::start(dir.path(), &[]).terminate().success());
}

#[cfg(unix)]
#[test]
fn a_data_directory_open_to_others_is_refused_with_the_fix() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    first_start(&data);
    chmod(&data, 0o755);
    assert_eq!(
        serve_refused(&data),
        (
            Some(1),
            String::new(),
            format!(
                "simpletextim-server: {d} is readable by other users (mode 0755); \
                 run: chmod 700 {d}\n",
                d = data.display()
            )
        )
    );
    chmod(&data, 0o701);
    assert_eq!(
        admin_with(Command::new(node::BIN), &data, &["user", "list"], ""),
        (
            Some(1),
            String::new(),
            format!(
                "simpletextim-server: {d} is accessible by other users (mode 0701); \
                 run: chmod 700 {d}\n",
                d = data.display()
            )
        )
    );
    assert_eq!(mode(&data), 0o701, "the refusal changes nothing");
    chmod(&data, 0o700);
    assert!(Server::start(&data, &[]).terminate().success());
}

#[test]
fn admin_commands_refuse_a_directory_without_a_database_and_create_nothing() {
    let tmp = tempdir();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = tmp.path().join("missing");
    let copy = tmp.path().join("copy.sqlite3");
    let commands: [&[&str]; 5] = [
        &["user", "list"],
        &["user", "add", "alice"],
        &["user", "passwd", "alice"],
        &["user", "del", "alice"],
        &["backup", copy.to_str().unwrap()],
    ];
    for dir in [&empty, &missing] {
        for args in commands {
            assert_eq!(
                admin_with(Command::new(node::BIN), dir, args, "pw-alice\n"),
                (
                    Some(1),
                    String::new(),
                    format!(
                        "simpletextim-server: no database in {}; the server creates \
                         simpletextim.sqlite3 on its first start\n",
                        dir.display()
                    )
                ),
                "{args:?} on {}",
                dir.display()
            );
        }
    }
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert!(!missing.exists());
    assert!(!copy.exists());
}

/// The binary's allocator is jemalloc with the options of its `malloc_conf` symbol: the
/// background thread that returns freed pages to the system (what keeps an idle connection
/// under 2 KiB after a login storm) runs, however the binary was built.
#[cfg(target_os = "linux")]
#[test]
fn the_binary_runs_jemalloc_with_its_background_thread() {
    let data = tempdir();
    let server = Server::start(data.path(), &[]);
    let tasks = format!("/proc/{}/task", server.proc.pid());
    let deadline = Instant::now() + WAIT;
    let names = loop {
        let names: Vec<String> = std::fs::read_dir(&tasks)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect();
        if names.iter().any(|n| n == "jemalloc_bg_thd") || Instant::now() > deadline {
            break names;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        names.iter().any(|n| n == "jemalloc_bg_thd"),
        "no jemalloc background thread among {names:?}"
    );
}
