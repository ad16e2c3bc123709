//! The real `simpletextim-server` binary on PostgreSQL (`--database`, a database of its own
//! on the private server of `common/pg.rs`): refused before `migrate`, `migrate`, the
//! `user` subcommands, two users chatting, an offline private message that survives a
//! restart, `backup` pointing to `pg_dump`, and the password never printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use simpletextim_proto::{ChatMessage, Client, Recipient, Reply, UserId};

#[path = "common/node.rs"]
mod node;
#[path = "common/pg.rs"]
mod pg;

use node::Node;

const BIN: &str = env!("CARGO_BIN_EXE_simpletextim-server");
const WAIT: Duration = Duration::from_secs(10);

/// Starts the binary on `db` (the URL in `SIMPLETEXTIM_DATABASE`); waits for
/// `listening on`.
fn start(db: &pg::TestDb) -> Node {
    let mut cmd = Node::command(&[
        "--listen",
        "127.0.0.1:0",
        "--listen-http",
        "off",
        "--insecure-fast-hash",
    ]);
    cmd.env("SIMPLETEXTIM_DATABASE", &db.url);
    Node::spawn_command(cmd)
}

/// Connects to `node` and logs `user` in (password `pw-USER`).
async fn login(node: &Node, user: &str) -> (Client, Vec<ChatMessage>) {
    let mut c = tokio::time::timeout(WAIT, Client::connect(node.addr()))
        .await
        .expect("connect timed out")
        .unwrap();
    let pending = tokio::time::timeout(WAIT, c.login(user, &format!("pw-{user}")))
        .await
        .expect("login timed out")
        .unwrap_or_else(|e| panic!("login of {user}: {e}"));
    (c, pending)
}

/// Runs a subcommand with `--database URL` to completion; (success, stdout, stderr).
fn admin(db: &pg::TestDb, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(["--insecure-fast-hash", "--database", &db.url])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails first does not read its input: a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The next chat message `c` receives, presence notices and other replies skipped.
async fn next_chat(c: &mut Client) -> ChatMessage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = tokio::time::timeout_at(deadline, c.next_reply())
            .await
            .expect("no chat message in time")
            .expect("connection failed");
        if let Reply::Message { mut messages, .. } = reply
            && !messages.is_empty()
        {
            return messages.remove(0);
        }
    }
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_and_an_offline_message_survives_a_restart() {
    let db = pg::database().await;
    let password = db.password.clone();

    // Not migrated: the server refuses to start, in one line naming `migrate`.
    let out = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--listen-http",
            "off",
            "--database",
            &db.url,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("run: simpletextim-server migrate"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains(&password), "{err}");

    let (ok, stdout, stderr) = admin(&db, &["migrate"], "");
    assert!(ok, "migrate: {stderr}");
    assert!(
        stdout.contains("schema migrated from version 0 to 1"),
        "{stdout}"
    );
    assert!(!stdout.contains(&password) && !stderr.contains(&password));
    let (ok, stdout, _) = admin(&db, &["migrate"], "");
    assert!(ok);
    assert!(stdout.contains("nothing to do"), "{stdout}");

    let (ok, stdout, stderr) = admin(&db, &["user", "add", "Alice"], "pw-alice\n");
    assert!(ok, "user add: {stderr}");
    assert_eq!(stdout.trim(), "created Alice");

    let mut server = start(&db);
    let (mut alice, pending) = login(&server, "alice").await;
    assert_eq!(pending, vec![]);
    // Open registration creates bob's account.
    let (mut bob, pending) = login(&server, "bob").await;
    assert_eq!(pending, vec![]);

    alice.send_public("hello everyone").await.unwrap();
    let echo = next_chat(&mut alice).await;
    let got = next_chat(&mut bob).await;
    assert_eq!(got, echo);
    assert_eq!(
        (got.user_id.as_str(), got.message.as_str(), &got.to),
        ("Alice", "hello everyone", &Recipient::Everyone)
    );

    // Once the server has closed bob's connection, bob has left: what follows is kept.
    bob.exit().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::timeout_at(deadline, bob.next_reply())
        .await
        .expect("bob's connection not closed in time")
        .is_ok()
    {}
    drop(bob);
    alice
        .send_private("bob", "while you were away")
        .await
        .unwrap();
    let kept = next_chat(&mut alice).await;
    assert_eq!(kept.message, "while you were away");
    drop(alice);
    let status = server.terminate();
    let log = server.log();
    assert!(status.success(), "exit status {status}; log: {log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("store open") && l.contains("postgres://postgres@127.0.0.1:")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains(&password)), "{log:?}");

    let server = start(&db);
    let (_bob, pending) = login(&server, "bob").await;
    assert_eq!(
        pending,
        vec![ChatMessage {
            r#ref: None,
            user_id: uid("Alice"),
            message: "while you were away".into(),
            to: Recipient::User(uid("bob")),
            id: kept.id,
            ts: kept.ts,
        }]
    );
    drop(server);

    let (ok, stdout, stderr) = admin(&db, &["user", "list"], "");
    assert!(ok, "user list: {stderr}");
    let names: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["Alice", "bob"], "{stdout}");

    let (ok, stdout, stderr) = admin(&db, &["user", "passwd", "bob"], "new-pw\n");
    assert!(ok, "user passwd: {stderr}");
    assert_eq!(stdout.trim(), "password of bob changed");
    let (ok, stdout, stderr) = admin(&db, &["user", "del", "alice"], "");
    assert!(ok, "user del: {stderr}");
    assert_eq!(stdout.trim(), "deleted alice (0 unread messages dropped)");
    let (ok, _, stderr) = admin(&db, &["user", "del", "alice"], "");
    assert!(!ok);
    assert!(stderr.contains("no such user: alice"), "{stderr}");

    let (ok, _, stderr) = admin(&db, &["backup", "/nonexistent/copy"], "");
    assert!(!ok);
    assert!(stderr.contains("pg_dump"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// `user passwd` in another process ends the session on the PostgreSQL store too (the
/// revocation watcher reads the `revocations` table); a login with the new password stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_passwd_ends_the_session_and_the_new_password_logs_in() {
    let db = pg::migrated_database().await;
    let server = start(&db);
    let (mut bob, _) = login(&server, "bob").await;

    let (ok, stdout, stderr) = admin(&db, &["user", "passwd", "bob"], "new-pw\n");
    assert!(ok, "user passwd: {stderr}");
    assert_eq!(stdout, "password of bob changed\n");
    // Bounded by WAIT: the watcher polls every second.
    let deadline = tokio::time::Instant::now() + WAIT;
    let failure = loop {
        match tokio::time::timeout_at(deadline, bob.next_reply())
            .await
            .expect("session not ended in time")
            .expect("connection failed before the fail")
        {
            Reply::Fail { fail, .. } => break fail,
            _ => continue,
        }
    };
    assert_eq!(
        (failure.error_code, failure.reason.as_str()),
        (
            simpletextim_proto::ErrorCode::Unauthorized,
            "your password was changed; log in again"
        )
    );

    let mut c = Client::connect(server.addr()).await.unwrap();
    let old = tokio::time::timeout(WAIT, c.login("bob", "pw-bob"))
        .await
        .expect("login timed out");
    assert!(old.is_err(), "the old password still logs in");
    let mut c = Client::connect(server.addr()).await.unwrap();
    tokio::time::timeout(WAIT, c.login("bob", "new-pw"))
        .await
        .expect("login timed out")
        .expect("the new password is refused");
    // Still served after the watcher's next polls: a message comes back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.send_public("still here").await.unwrap();
    assert_eq!(next_chat(&mut c).await.message, "still here");
}

/// Runs the binary with `args` and no database; (success, stderr).
fn run_plain(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("SIMPLETEXTIM_DATABASE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_database_url_is_one_line_without_the_password() {
    let (ok, err) = run_plain(&[
        "--database",
        "postgres://alice:s3cret-pw@db:notaport/chat",
        "user",
        "list",
    ]);
    assert!(!ok);
    assert!(
        err.starts_with("simpletextim-server: --database: not a PostgreSQL URL"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");
}

#[test]
fn migrate_needs_a_database() {
    let (ok, err) = run_plain(&["migrate"]);
    assert!(!ok);
    assert!(
        err.starts_with("simpletextim-server: migrate needs --database URL"),
        "{err}"
    );
    let (ok, help) = {
        let out = Command::new(BIN)
            .arg("--help")
            .env("SIMPLETEXTIM_DATABASE", "postgres://u:hidden-pw@h/db")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(ok);
    assert!(help.contains("SIMPLETEXTIM_DATABASE"), "{help}");
    assert!(!help.contains("hidden-pw"), "{help}");
}
