//! Protocol 1.1 `history`, over real TCP, as exact JSON: the newest page and `before`/`after`
//! pages with `more` exact at their boundaries, the public conversation and a private one
//! seen from both users, nobody reading another pair's conversation, read-your-writes (a
//! page asked right after a message was echoed or delivered holds it, on the SQLite store
//! too), offline messages, retention, the flood control, and every refusal (401, 404,
//! 400, 429, 503) with its `ref`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::future::{BoxFuture, FutureExt};
use simpletextim_proto::ChatMessage;
use simpletextim_server::store::{
    Account, Conversation, HistoryPage, HistoryQuery, PageLimit, SqliteStore, StoreError,
};
use simpletextim_server::{Config, MemoryStore, RateLimit, Retention};

impl Wire {
    /// Sends a message (`to`: `*` or a user) and returns its chat object as echoed, which
    /// is exactly how history shows it (no ref is given, so the echo carries none).
    async fn say(&mut self, to: &str, text: &str) -> String {
        self.send(&format!(
            r#"{{"command":"send","message":"{text}","to":"{to}"}}"#
        ))
        .await;
        let echo = self.recv_chat().await;
        one_object(&echo)
    }
}

/// The chat objects of a `message` frame, as the exact text of each (split where one ends
/// and the next starts: the tests' texts hold no braces).
fn objects(frame: &str) -> Vec<String> {
    let objs = frame
        .strip_prefix(r#"{"command":"message","messages":["#)
        .and_then(|f| f.strip_suffix("]}"))
        .unwrap_or_else(|| panic!("not a message frame: {frame}"));
    if objs.is_empty() {
        return Vec::new();
    }
    let parts: Vec<&str> = objs.split("},{").collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let open = if i == 0 { "" } else { "{" };
            let close = if i == last { "" } else { "}" };
            format!("{open}{p}{close}")
        })
        .collect()
}

/// The chat object of a `message` frame holding exactly one.
fn one_object(frame: &str) -> String {
    let mut objs = objects(frame);
    assert_eq!(objs.len(), 1, "not one message in {frame}");
    objs.remove(0)
}

/// A `history` reply's exact JSON.
fn page(r: Option<&str>, with: &str, objects: &[&String], more: bool) -> String {
    let r = r.map(|r| format!(r#""ref":{r},"#)).unwrap_or_default();
    let objects: Vec<&str> = objects.iter().map(|o| o.as_str()).collect();
    format!(
        r#"{{"command":"history",{r}"with":"{with}","messages":[{}],"more":{more}}}"#,
        objects.join(",")
    )
}

/// A temporary directory of mode 0700, as the SQLite store requires.
fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

#[tokio::test]
async fn latest_before_and_after_pages_have_exact_more_at_their_boundaries() {
    let s = start().await;
    let mut a = Wire::login(&s, "alice").await;
    let mut m = Vec::new();
    for i in 1..=5 {
        m.push(a.say("*", &format!("m{i}")).await);
    }
    let id = |o: &String| -> u64 {
        let v: serde_json::Value = serde_json::from_str(o).unwrap();
        v["id"].as_u64().unwrap()
    };
    let h = |extra: &str| format!(r#"{{"command":"history","with":"*"{extra}}}"#);
    // Newest: all five without a limit (the default is 50); the newest two with 2.
    a.expect_chat(
        &h(""),
        &page(None, "*", &m.iter().collect::<Vec<_>>(), false),
    )
    .await;
    a.expect_chat(
        &h(r#","limit":5"#),
        &page(None, "*", &[&m[0], &m[1], &m[2], &m[3], &m[4]], false),
    )
    .await;
    a.expect_chat(
        &h(r#","limit":4"#),
        &page(None, "*", &[&m[1], &m[2], &m[3], &m[4]], true),
    )
    .await;
    a.expect_chat(&h(r#","limit":2"#), &page(None, "*", &[&m[3], &m[4]], true))
        .await;
    // Back from m4, two at a time: m2 m3 (more: m1), then m1 alone.
    let before = |o: &String, limit: u8| format!(r#","before":{},"limit":{limit}"#, id(o));
    a.expect_chat(
        &h(&before(&m[3], 2)),
        &page(None, "*", &[&m[1], &m[2]], true),
    )
    .await;
    a.expect_chat(&h(&before(&m[1], 2)), &page(None, "*", &[&m[0]], false))
        .await;
    // Exactly as many older ones as the limit: no more.
    a.expect_chat(
        &h(&before(&m[2], 2)),
        &page(None, "*", &[&m[0], &m[1]], false),
    )
    .await;
    a.expect_chat(&h(&before(&m[0], 2)), &page(None, "*", &[], false))
        .await;
    // Forward from m1: m2 m3 (more: m4 m5), then exactly m4 m5 (no more), then nothing.
    let after = |o: &String, limit: u8| format!(r#","after":{},"limit":{limit}"#, id(o));
    a.expect_chat(
        &h(&after(&m[0], 2)),
        &page(None, "*", &[&m[1], &m[2]], true),
    )
    .await;
    a.expect_chat(
        &h(&after(&m[2], 2)),
        &page(None, "*", &[&m[3], &m[4]], false),
    )
    .await;
    a.expect_chat(&h(&after(&m[4], 2)), &page(None, "*", &[], false))
        .await;
    // Catching up from 0 (a client that saw nothing): the oldest first.
    a.expect_chat(
        &h(r#","after":0,"limit":1"#),
        &page(None, "*", &[&m[0]], true),
    )
    .await;
}

#[tokio::test]
async fn a_private_conversation_is_the_same_for_both_users_and_nobody_elses() {
    let s = start().await;
    let mut alice = Wire::login(&s, "alice").await;
    let mut bob = Wire::login(&s, "Bob").await;
    let mut carol = Wire::login(&s, "carol").await;
    let a1 = alice.say("bob", "a1").await;
    assert_eq!(one_object(&bob.recv_chat().await), a1);
    let b1 = bob.say("alice", "b1").await;
    assert_eq!(one_object(&alice.recv_chat().await), b1);
    let public = alice.say("*", "to all").await;
    let a2 = alice.say("BOB", "a2").await;
    assert_eq!(one_object(&bob.recv_chat().await), public);
    assert_eq!(one_object(&bob.recv_chat().await), a2);
    assert_eq!(one_object(&carol.recv_chat().await), public);
    let c1 = carol.say("alice", "c1").await;
    assert_eq!(one_object(&alice.recv_chat().await), c1);
    // Both directions, oldest first, and the same page from either side; `with` as
    // registered ("Bob"), however it was spelled in the request.
    alice
        .expect_chat(
            r#"{"command":"history","with":"bob"}"#,
            &page(None, "Bob", &[&a1, &b1, &a2], false),
        )
        .await;
    bob.expect_chat(
        r#"{"command":"history","with":"ALICE"}"#,
        &page(None, "alice", &[&a1, &b1, &a2], false),
    )
    .await;
    // carol asking about alice sees her own conversation with alice, nothing of bob's.
    carol
        .expect_chat(
            r#"{"command":"history","with":"alice"}"#,
            &page(None, "alice", &[&c1], false),
        )
        .await;
    alice
        .expect_chat(
            r#"{"command":"history","with":"carol"}"#,
            &page(None, "carol", &[&c1], false),
        )
        .await;
    // Nobody wrote carol and bob: empty. The public conversation has the public message only.
    carol
        .expect_chat(
            r#"{"command":"history","with":"bob"}"#,
            &page(None, "Bob", &[], false),
        )
        .await;
    carol
        .expect_chat(
            r#"{"command":"history","with":"*"}"#,
            &page(None, "*", &[&public], false),
        )
        .await;
    // A note to oneself is one message of the conversation with oneself.
    let note = carol.say("carol", "note").await;
    carol
        .expect_chat(
            r#"{"command":"history","with":"carol"}"#,
            &page(None, "carol", &[&note], false),
        )
        .await;
}

#[tokio::test]
async fn refusals_are_exact_and_carry_the_ref() {
    let s = start().await;
    let mut w = Wire::connect(&s).await;
    w.expect_chat(
        r#"{"command":"history","with":"*","ref":"h0"}"#,
        &fail_json(Some(r#""h0""#), 401, "login required"),
    )
    .await;
    w.expect_chat(
        r#"{"command":"login alice/pw-of-alice"}"#,
        r#"{"command":"message","messages":[]}"#,
    )
    .await;
    // The same 404 as a private message to a user without an account.
    w.expect_chat(
        r#"{"command":"history","with":"carol","ref":7}"#,
        &fail_json(Some("7"), 404, "no such user: carol"),
    )
    .await;
    w.expect_chat(
        r#"{"command":"send","message":"hi","to":"carol"}"#,
        &fail_json(None, 404, "no such user: carol"),
    )
    .await;
    for (cmd, reason) in [
        (
            r#"{"command":"history","with":"*","limit":0,"ref":1}"#,
            "history: limit must be an integer from 1 to 200",
        ),
        (
            r#"{"command":"history","with":"*","limit":201,"ref":1}"#,
            "history: limit must be an integer from 1 to 200",
        ),
        (
            r#"{"command":"history","with":"*","before":5,"after":3,"ref":1}"#,
            "history: give before or after, not both",
        ),
        (
            r#"{"command":"history","ref":1}"#,
            "history: missing field with",
        ),
    ] {
        w.expect_chat(cmd, &fail_json(Some("1"), 400, reason)).await;
    }
    // The connection stays open and the refs are kept on a page.
    w.expect_chat(
        r#"{"command":"history","with":"*","ref":"page-1"}"#,
        &page(Some(r#""page-1""#), "*", &[], false),
    )
    .await;
    w.expect_chat(
        r#"{"command":"history","with":"alice","ref":9007199254740991}"#,
        &page(Some("9007199254740991"), "alice", &[], false),
    )
    .await;
}

/// Messages sent just before a `history` (in the same write) and messages delivered just
/// before it are on the page.
async fn read_your_writes(s: &TestServer) {
    let mut alice = Wire::login(s, "alice").await;
    let mut bob = Wire::login(s, "bob").await;
    // alice: 40 public messages and a history in one write; the page holds all of them.
    let sends: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"command":"send","message":"p{i}"}}"#))
        .collect();
    let mut frames: Vec<&str> = sends.iter().map(String::as_str).collect();
    frames.push(r#"{"command":"history","with":"*","limit":200}"#);
    alice.send_all(&frames).await;
    let mut echoed = Vec::new();
    while echoed.len() < 40 {
        echoed.extend(objects(&alice.recv_chat().await));
    }
    assert_eq!(echoed.len(), 40);
    let want = page(None, "*", &echoed.iter().collect::<Vec<_>>(), false);
    assert_eq!(alice.recv_chat().await, want);
    // bob: once the last private message from alice is delivered, his page has them all.
    for i in 0..20 {
        alice
            .send(&format!(
                r#"{{"command":"send","message":"q{i}","to":"bob"}}"#
            ))
            .await;
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        // bob also gets the public messages before.
        let frame = bob.recv_chat().await;
        got.extend(
            objects(&frame)
                .into_iter()
                .filter(|o| o.contains(r#""to":"bob""#)),
        );
    }
    bob.expect_chat(
        r#"{"command":"history","with":"alice","limit":20}"#,
        &page(None, "alice", &got.iter().collect::<Vec<_>>(), false),
    )
    .await;
}

#[tokio::test]
async fn a_page_holds_what_was_just_echoed_or_delivered() {
    let s = start().await;
    read_your_writes(&s).await;
}

#[tokio::test]
async fn a_page_holds_what_was_just_echoed_or_delivered_on_sqlite() {
    let dir = tempdir();
    let store = Arc::new(SqliteStore::open(dir.path(), 1000).unwrap());
    let s = start_with(Config { store, ..config() }).await;
    read_your_writes(&s).await;
}

#[tokio::test]
async fn offline_private_messages_are_in_the_history() {
    let s = start().await;
    let mut bob = Wire::login(&s, "bob").await;
    bob.send(r#"{"command":"exit"}"#).await;
    drop(bob);
    let mut alice = Wire::login(&s, "alice").await;
    let o1 = alice.say("bob", "while you were out").await;
    let o2 = alice.say("bob", "again").await;
    alice
        .expect_chat(
            r#"{"command":"history","with":"bob"}"#,
            &page(None, "bob", &[&o1, &o2], false),
        )
        .await;
    let (mut bob, ack) = Wire::login_ack(&s, "bob").await;
    assert_eq!(
        ack,
        format!(r#"{{"command":"message","messages":[{o1},{o2}]}}"#)
    );
    bob.expect_chat(
        r#"{"command":"history","with":"alice","limit":1}"#,
        &page(None, "alice", &[&o2], true),
    )
    .await;
}

#[tokio::test]
async fn retention_prunes_down_to_the_configured_count() {
    let s = start_with(Config {
        history_retention: Retention {
            max_age: None,
            max_messages: Some(3),
        },
        history_prune_interval: Duration::from_millis(20),
        ..config()
    })
    .await;
    let mut a = Wire::login(&s, "alice").await;
    let mut m = Vec::new();
    for i in 0..8 {
        m.push(a.say("*", &format!("r{i}")).await);
    }
    let want = page(None, "*", &[&m[5], &m[6], &m[7]], false);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        a.send(r#"{"command":"history","with":"*"}"#).await;
        let got = a.recv_chat().await;
        if got == want {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {got}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn history_is_charged_to_the_flood_control() {
    let s = start_with(Config {
        rate_limit: Some(RateLimit {
            per_sec: 0.01,
            burst: 2,
        }),
        ..config()
    })
    .await;
    let mut w = Wire::login(&s, "alice").await;
    for _ in 0..2 {
        w.expect_chat(
            r#"{"command":"history","with":"*"}"#,
            &page(None, "*", &[], false),
        )
        .await;
    }
    w.expect_chat(
        r#"{"command":"history","with":"*","ref":"h"}"#,
        &fail_json(
            Some(r#""h""#),
            429,
            "rate limit exceeded, try again in 100 s",
        ),
    )
    .await;
}

/// A [`MemoryStore`] whose history pages fail (a broken disk).
struct PagesFail(MemoryStore);

impl simpletextim_server::Store for PagesFail {
    fn account(&self, key: String) -> BoxFuture<'static, Result<Option<Account>, StoreError>> {
        self.0.account(key)
    }
    fn create_account(&self, account: Account) -> BoxFuture<'static, Result<(), StoreError>> {
        self.0.create_account(account)
    }
    fn enqueue(&self, key: String, m: ChatMessage) -> BoxFuture<'static, Result<(), StoreError>> {
        self.0.enqueue(key, m)
    }
    fn pending(&self, key: String) -> BoxFuture<'static, Result<Vec<ChatMessage>, StoreError>> {
        self.0.pending(key)
    }
    fn delete_delivered(
        &self,
        key: String,
        ids: Vec<u64>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.0.delete_delivered(key, ids)
    }
    fn max_message_id(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.0.max_message_id()
    }
    fn history(
        &self,
        _: Conversation,
        _: HistoryQuery,
        _: PageLimit,
    ) -> BoxFuture<'static, Result<HistoryPage, StoreError>> {
        futures::future::ready(Err(StoreError::Backend("disk on fire".into()))).boxed()
    }
}

#[tokio::test]
async fn a_store_that_fails_a_page_is_503_and_the_session_goes_on() {
    let s = start_with(Config {
        store: Arc::new(PagesFail(MemoryStore::new(10))),
        ..config()
    })
    .await;
    let mut w = Wire::login(&s, "alice").await;
    w.expect_chat(
        r#"{"command":"history","with":"*","ref":"h"}"#,
        &fail_json(Some(r#""h""#), 503, "storage unavailable, try again later"),
    )
    .await;
    let echo = w.say("*", "still here").await;
    assert!(echo.contains(r#""message":"still here""#), "{echo}");
}
