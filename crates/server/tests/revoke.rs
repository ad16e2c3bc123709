//! `user passwd` and `user del` end the user's live session on a running server: the real
//! `simpletextim-server` binary serving, and the same binary's `user` subcommand run beside
//! it on the same database (another process), as an administrator does.
//!
//! Each test spawns the server on `127.0.0.1:0` with its own temporary `--data` directory
//! and reads the bound address from its `listening on` log line. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/node.rs"]
mod node;

use simpletextim_proto::{ChatMessage, Client, ErrorCode, Failure, Recipient, Reply, UserId};

const WAIT: Duration = Duration::from_secs(10);
/// How soon a running server must end a revoked session: it polls every second.
const NOTICED_WITHIN: Duration = Duration::from_secs(4);
/// More than two of the server's poll periods.
const TWO_POLLS: Duration = Duration::from_millis(2500);

/// A running server process ([`node::Node`], killed when dropped).
struct Server {
    proc: node::Node,
}

impl Server {
    /// Starts the binary on `data`; waits for `listening on`. Loopback clients are exempt
    /// from the per-address limits: every test client comes from 127.0.0.1.
    fn start(data: &Path) -> Server {
        let mut cmd = node::Node::command(&[
            "--listen",
            "127.0.0.1:0",
            "--listen-http",
            "off",
            "--insecure-fast-hash",
            "--exempt-loopback",
            "--data",
        ]);
        cmd.arg(data);
        Server {
            proc: node::Node::spawn_command(cmd),
        }
    }

    async fn login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(Client, Vec<ChatMessage>), Failure> {
        let mut c = tokio::time::timeout(WAIT, Client::connect(self.proc.addr()))
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

    /// Logs in with `password`, which must succeed.
    async fn user(&self, user: &str, password: &str) -> Client {
        let (c, pending) = self
            .login(user, password)
            .await
            .unwrap_or_else(|f| panic!("login of {user} refused: {f:?}"));
        assert_eq!(pending, vec![], "{user}'s mailbox");
        c
    }
}

/// Runs a subcommand to completion with `stdin` as its input: success, stdout, stderr.
fn admin(data: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(node::BIN)
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
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A temporary directory of mode 0700, as the server requires of an existing data directory.
fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

async fn next(c: &mut Client) -> Reply {
    tokio::time::timeout(WAIT, c.next_reply())
        .await
        .expect("no reply in time")
        .expect("connection failed")
}

/// The server closes the connection (after what it sent before).
async fn assert_closed(c: &mut Client) {
    let end = tokio::time::timeout(WAIT, c.next_reply())
        .await
        .expect("not closed in time");
    assert!(end.is_err(), "expected EOF, got {end:?}");
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn fail(code: ErrorCode, reason: &str) -> Reply {
    Reply::Fail {
        r#ref: None,
        fail: Failure::new(code, reason),
    }
}

fn bad_credentials() -> Failure {
    Failure::new(ErrorCode::Unauthorized, "invalid user id or password")
}

/// `c` is still logged in, and its session still served: `list` is answered with `users`.
async fn assert_served(c: &mut Client, users: &[&str]) {
    c.list().await.unwrap();
    assert_eq!(
        next(c).await,
        Reply::List {
            r#ref: None,
            list: users.iter().map(|u| uid(u)).collect()
        }
    );
}

#[tokio::test]
async fn user_passwd_ends_the_session_and_a_login_with_the_new_password_stays() {
    let dir = tempdir();
    let d = dir.path();
    let server = Server::start(d);
    let mut bob = server.user("bob", "pw-bob").await;
    let mut alice = server.user("alice", "old-pw").await;
    assert_eq!(
        next(&mut bob).await,
        Reply::Joined {
            user_id: uid("alice")
        }
    );

    assert_eq!(
        admin(d, &["user", "passwd", "alice"], "new-pw\n"),
        (true, "password of alice changed\n".into(), String::new())
    );
    let changed = Instant::now();
    assert_eq!(
        next(&mut alice).await,
        fail(
            ErrorCode::Unauthorized,
            "your password was changed; log in again"
        )
    );
    assert!(
        changed.elapsed() < NOTICED_WITHIN,
        "noticed after {:?}",
        changed.elapsed()
    );
    assert_closed(&mut alice).await;
    assert_eq!(
        next(&mut bob).await,
        Reply::Left {
            user_id: uid("alice")
        }
    );

    assert_eq!(
        server.login("alice", "old-pw").await.err(),
        Some(bad_credentials())
    );
    let mut alice = server.user("alice", "new-pw").await;
    assert_eq!(
        next(&mut bob).await,
        Reply::Joined {
            user_id: uid("alice")
        }
    );
    // The revocation was read long ago, and the server polls on: it ends nobody now.
    tokio::time::sleep(TWO_POLLS).await;
    assert_served(&mut alice, &["alice", "bob"]).await;
    assert_served(&mut bob, &["alice", "bob"]).await;
}

#[tokio::test]
async fn a_login_right_after_user_passwd_is_not_ended_by_it() {
    let dir = tempdir();
    let d = dir.path();
    let server = Server::start(d);
    let mut bob = server.user("bob", "pw-bob").await;
    drop(server.user("alice", "old-pw").await);
    // The login starts as soon as the command returns, most likely before the server has
    // read the revocation: it must still be told apart from the sessions before it.
    assert!(admin(d, &["user", "passwd", "alice"], "new-pw\n").0);
    let mut alice = server.user("alice", "new-pw").await;
    tokio::time::sleep(TWO_POLLS).await;
    assert_served(&mut alice, &["alice", "bob"]).await;
    // Bob saw the first session come and go, and the new one come only.
    for notice in [
        Reply::Joined {
            user_id: uid("alice"),
        },
        Reply::Left {
            user_id: uid("alice"),
        },
        Reply::Joined {
            user_id: uid("alice"),
        },
    ] {
        assert_eq!(next(&mut bob).await, notice);
    }
    assert_served(&mut bob, &["alice", "bob"]).await;
}

#[tokio::test]
async fn user_del_ends_the_session_and_the_others_see_it_leave() {
    let dir = tempdir();
    let d = dir.path();
    let server = Server::start(d);
    let mut bob = server.user("bob", "pw-bob").await;
    let mut alice = server.user("alice", "pw-alice").await;
    assert_eq!(
        next(&mut bob).await,
        Reply::Joined {
            user_id: uid("alice")
        }
    );
    assert_eq!(
        admin(d, &["user", "del", "alice"], ""),
        (
            true,
            "deleted alice (0 unread messages dropped)\n".into(),
            String::new()
        )
    );
    let deleted = Instant::now();
    assert_eq!(
        next(&mut alice).await,
        fail(ErrorCode::Unauthorized, "your account was deleted")
    );
    assert!(
        deleted.elapsed() < NOTICED_WITHIN,
        "noticed after {:?}",
        deleted.elapsed()
    );
    assert_closed(&mut alice).await;
    assert_eq!(
        next(&mut bob).await,
        Reply::Left {
            user_id: uid("alice")
        }
    );
    // No account any more: a private message to alice is refused.
    bob.send_private("alice", "are you there?").await.unwrap();
    assert_eq!(
        next(&mut bob).await,
        fail(ErrorCode::NotFound, "no such user: alice")
    );
    // Registration is open: a new alice is a new account, which the deletion does not end.
    let mut alice = server.user("alice", "another-pw").await;
    tokio::time::sleep(TWO_POLLS).await;
    assert_served(&mut alice, &["alice", "bob"]).await;
}

/// The schema of version 1, exactly as the version-1 server wrote it (migration 1).
const SCHEMA_V1: &str = include_str!("common/schema_v1.sql");

#[tokio::test]
async fn a_version_1_database_is_served_after_its_migration_and_revokes() {
    use simpletextim_server::auth::{HashCost, hash_password};

    let dir = tempdir();
    let d = dir.path();
    let db = d.join("simpletextim.sqlite3");
    // What a version-1 server leaves: carol's account, and a message from dave waiting
    // for her.
    let ts = 1_764_168_000_123u64;
    {
        std::fs::File::create(&db).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let phc = hash_password("pw-carol", HashCost::InsecureFast).unwrap();
        conn.execute(
            "INSERT INTO accounts (key, user_id, password_hash, created_ms) \
             VALUES ('carol', 'Carol', ?1, 1), ('dave', 'dave', ?1, 2)",
            [phc],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO mailbox (id, recipient, sender, message, to_user, ts) \
             VALUES (7, 'carol', 'dave', 'kept across versions', 'Carol', ?1)",
            [ts],
        )
        .unwrap();
        conn.execute(
            "UPDATE meta SET value = 7 WHERE name = 'max_message_id'",
            [],
        )
        .unwrap();
    }

    let server = Server::start(d);
    let (mut carol, pending) = server.login("carol", "pw-carol").await.unwrap();
    assert_eq!(
        pending,
        vec![ChatMessage {
            r#ref: None,
            user_id: uid("dave"),
            message: "kept across versions".into(),
            to: Recipient::User(uid("Carol")),
            id: 7,
            ts,
        }]
    );
    let version: u32 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, simpletextim_server::store::SCHEMA_VERSION);
    // The migrated database records revocations, and the server acts on them.
    assert!(admin(d, &["user", "passwd", "carol"], "new-pw\n").0);
    assert_eq!(
        next(&mut carol).await,
        fail(
            ErrorCode::Unauthorized,
            "your password was changed; log in again"
        )
    );
    assert_closed(&mut carol).await;
}
