//! The web client (`crates/server/web`) in a real browser: Debian's headless Chromium driven
//! through WebDriver (chromedriver, with the `fantoccini` crate), against the real
//! `simpletextim-server` binary serving the page and its `/ws` WebSocket.
//!
//! Each test starts its own chromedriver on a free loopback port and its own server on
//! `127.0.0.1:0` with a temporary `--data` directory; guards kill both at the end, also when
//! the test fails. Each browser session has a fresh profile in a temporary directory.
//! Assertions are on the exact text the page shows; every wait has a deadline and says what
//! it waited for. Chromium and chromedriver must be installed (`cargo xtask test` installs
//! them): without them the tests fail, they never skip.
//!
//! `cargo test -p simpletextim-server --test browser -- --ignored screenshots` regenerates
//! docs/screenshots/desktop.png and phone.png.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fantoccini::{Client as WebDriver, ClientBuilder, Locator, key::Key};
use serde_json::{Value, json};
use simpletextim_proto::{ChatMessage, Client, Recipient, Reply};
use tempfile::TempDir;

const SERVER: &str = env!("CARGO_BIN_EXE_simpletextim-server");
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The longest one step may take (a page load, a message to show up): generous, because the
/// two cores may be busy building while the tests run.
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

// -----------------------------------------------------------------------------------------
// Processes: chromedriver and the server, each behind a guard that kills it on drop.

/// Fails with the fix when the browser or its driver is missing (the tests never skip).
fn require_browser() {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: the browser tests need Debian's chromium and chromium-driver \
             packages; `cargo xtask test` installs them (or: apt-get install chromium chromium-driver)"
        );
    }
}

/// Reads a child's output to its end on a thread (so its pipe never fills), sending each
/// line to the returned channel.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

/// A chromedriver process, in a process group of its own with the browsers it starts.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        require_browser();
        use std::os::unix::process::CommandExt;
        let child = Command::new(CHROMEDRIVER)
            .args(["--port=0", "--log-level=WARNING"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let mut driver = Chromedriver {
            url: String::new(),
            child,
        };
        let lines = lines_of(driver.child.stdout.take().expect("piped stdout"));
        let deadline = Instant::now() + WAIT;
        while driver.url.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!("chromedriver did not say its port within {WAIT:?}: {e}")
            });
            // "ChromeDriver was started successfully on port 45977."
            if let Some(port) = line.split("successfully on port ").nth(1) {
                let port: u16 = port.trim_end_matches('.').trim().parse().unwrap();
                driver.url = format!("http://127.0.0.1:{port}");
            }
        }
        driver
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every browser it started, even when a test
        // failed before closing its sessions.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `simpletextim-server`: its TCP and HTTP addresses.
struct Server {
    child: Child,
    tcp: SocketAddr,
    http: SocketAddr,
}

impl Server {
    /// Starts the binary on `data`, its web listener on `http` (`127.0.0.1:0` for any port).
    fn start(data: &Path, http: &str) -> Server {
        let mut child = Command::new(SERVER)
            .args(["--listen", "127.0.0.1:0", "--listen-http", http])
            .args([
                "--insecure-fast-hash",
                "--exempt-loopback",
                "--rate-limit",
                "0",
            ])
            .arg("--data")
            .arg(data.join("data")) // created 0700 by the server
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the server");
        let lines = lines_of(child.stderr.take().expect("piped stderr"));
        let (mut tcp, mut http) = (None, None);
        let deadline = Instant::now() + WAIT;
        let mut log = Vec::new();
        while tcp.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not log both its addresses within {WAIT:?} (tcp {tcp:?}, \
                     http {http:?}); its log:\n{}",
                    log.join("\n")
                );
            };
            if line.contains("HTTP on ") {
                http = http.or(addr_after_on(&line));
            } else if line.contains("listening on ") {
                tcp = tcp.or(addr_after_on(&line));
            }
            log.push(line);
        }
        // Keep reading the log (and show it with the test's output if it fails).
        std::thread::spawn(move || {
            for line in lines {
                eprintln!("server: {line}");
            }
        });
        Server {
            child,
            tcp: tcp.unwrap(),
            http: http.unwrap(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.http)
    }

    /// SIGTERM and wait for the exit: a graceful shutdown, history written.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {WAIT:?} of SIGTERM"
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address after the first " on " of a log line: "listening on 127.0.0.1:5000",
/// "HTTP on 127.0.0.1:5080: the web client at …".
fn addr_after_on(line: &str) -> Option<SocketAddr> {
    let word = line.split(" on ").nth(1)?.split_whitespace().next()?;
    word.trim_end_matches([':', ',', '.']).parse().ok()
}

// -----------------------------------------------------------------------------------------
// Browser sessions.

/// One headless Chromium session with its own profile directory.
struct Browser {
    wd: WebDriver,
    name: &'static str,
    _profile: TempDir,
}

impl Browser {
    /// A new session at `url`, its viewport `width` × `height`.
    async fn open(
        driver: &Chromedriver,
        name: &'static str,
        url: &str,
        size: (u32, u32),
    ) -> Browser {
        let profile = TempDir::new().unwrap();
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(), // CI runs as root
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-background-networking".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--lang=en-US".to_owned(),
            format!("--window-size={},{}", size.0, size.1),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": args,
                // The viewport exactly this size (a window's size would include the browser's
                // own bars); below 700 px a phone's (the page's viewport meta, touch).
                "mobileEmulation": { "deviceMetrics": {
                    "width": size.0, "height": size.1, "pixelRatio": 1.0,
                    "mobile": size.0 < 700, "touch": size.0 < 700,
                } },
            }),
        );
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        let wd = builder
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot start a browser session: {e}"));
        wd.goto(url)
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot open {url}: {e}"));
        let browser = Browser {
            wd,
            name,
            _profile: profile,
        };
        browser
            .wait_for("the login form", "return document.querySelector('#user') !== null && document.activeElement === document.querySelector('#user')")
            .await;
        browser
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.wd
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.name))
    }

    /// Polls `script` until it returns `true`; fails after [`WAIT`] naming `what`.
    async fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.run(script, vec![]).await == Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: waited {WAIT:?} for {what}; the page shows:\n{}",
                self.name,
                self.page_text().await
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The text of every element matching `css`, in document order; for the sidebar's
    /// conversations ([`CONVS`]), each one's name and, when it has one, its unread count
    /// in parentheses.
    async fn texts(&self, css: &str) -> Vec<String> {
        let value = self
            .run(
                "return [...document.querySelectorAll(arguments[0])].map(e => {
                   const name = e.querySelector('.conv-name'), badge = e.querySelector('.badge');
                   if (!name) return e.textContent;
                   return badge.hidden ? name.textContent
                                       : `${name.textContent} (${badge.textContent})`;
                 })",
                vec![json!(css)],
            )
            .await;
        serde_json::from_value(value).unwrap()
    }

    /// Waits until the elements matching `css` have exactly the texts `expected` (as
    /// [`Browser::texts`] reads them).
    async fn wait_texts(&self, css: &str, expected: &[&str]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let texts = self.texts(css).await;
            if texts == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: waited {WAIT:?} for {css} to be {expected:?}, it is {texts:?}",
                self.name
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the one element matching `css` has the text `expected`.
    async fn wait_text(&self, css: &str, expected: &str) {
        self.wait_texts(css, &[expected]).await;
    }

    /// The page's visible text, for failure messages.
    async fn page_text(&self) -> String {
        match self
            .wd
            .execute("return document.body.innerText", vec![])
            .await
        {
            Ok(Value::String(text)) => text,
            other => format!("(cannot read the page: {other:?})"),
        }
    }

    async fn click(&self, css: &str) {
        self.wd
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no {css}: {e}", self.name))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: cannot click {css}: {e}", self.name));
    }

    /// Types `text` into the element `css` (as keys, the way a person does).
    async fn type_into(&self, css: &str, text: &str) {
        self.wd
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no {css}: {e}", self.name))
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot type into {css}: {e}", self.name));
    }

    /// Fills the login form and presses Enter; does not wait for the answer.
    async fn submit_login(&self, user: &str, password: &str) {
        self.run(
            "document.querySelector('#user').value = ''; document.querySelector('#password').value = ''",
            vec![],
        )
        .await;
        self.type_into("#user", user).await;
        self.type_into(
            "#password",
            &format!("{password}{}", char::from(Key::Enter)),
        )
        .await;
    }

    /// Logs in and waits until the page says it is online.
    async fn login(&self, user: &str, password: &str) {
        self.submit_login(user, password).await;
        self.wait_text("#conn", &format!("Online as {user}")).await;
    }

    /// Types `text` in the message field and presses Enter.
    async fn say(&self, text: &str) {
        self.type_into("#text", &format!("{text}{}", char::from(Key::Enter)))
            .await;
    }

    /// Selects the conversation named `name` in the sidebar ("Everyone" or a user id).
    async fn open_conversation(&self, name: &str) {
        let found = self
            .run(
                "const b = [...document.querySelectorAll('#convs .conv')]
                   .find(b => b.querySelector('.conv-name').textContent === arguments[0]);
                 if (b) b.click();
                 return Boolean(b)",
                vec![json!(name)],
            )
            .await;
        assert_eq!(
            found,
            Value::Bool(true),
            "{}: no conversation {name} in the sidebar",
            self.name
        );
        self.wait_text("#conv-title", &title(name)).await;
    }

    async fn close(self) {
        let name = self.name;
        self.wd
            .close()
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot close the session: {e}"));
    }
}

fn title(name: &str) -> String {
    if name == "Everyone" {
        "Everyone".to_owned()
    } else {
        format!("Private: {name}")
    }
}

/// The message texts of the conversation shown.
const SHOWN_BODIES: &str = ".scroller:not([hidden]) .msg:not(.pending) .body";
/// The presence notices of the public conversation (shown or not).
const NOTICES: &str = ".log .notice";
/// The sidebar: each conversation's name and unread count.
const CONVS: &str = "#convs .conv";
const USERS: &str = "#users li";

// -----------------------------------------------------------------------------------------
// The TCP client's side.

async fn tcp_login(server: &Server, user: &str, password: &str) -> Client {
    let mut client = Client::connect(server.tcp).await.expect("TCP connect");
    client.login(user, password).await.expect("TCP login");
    client
}

/// Reads replies until a chat message with `text` arrives; fails after [`WAIT`].
async fn tcp_expect(client: &mut Client, text: &str) -> ChatMessage {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = tokio::time::timeout(left, client.next_reply())
            .await
            .unwrap_or_else(|_| panic!("TCP client: waited {WAIT:?} for {text:?}; saw {seen:?}"))
            .expect("TCP client: connection lost");
        if let Reply::Message { messages, .. } = &reply
            && let Some(m) = messages.iter().find(|m| m.message == text)
        {
            return m.clone();
        }
        seen.push(reply);
    }
}

// -----------------------------------------------------------------------------------------
// The scenarios.

/// Two browser users and a TCP client chat publicly and privately; the user list, presence
/// notices, unread counts, the 140-character limit, text shown as text, and a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_and_a_tcp_client_chat() {
    let driver = Chromedriver::start();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), "127.0.0.1:0");

    // carol, on the terminal protocol, has an account before anyone else comes.
    let mut carol = tcp_login(&server, "carol", "carol-pw").await;

    let alice = Browser::open(&driver, "alice", &server.url(), (1280, 800)).await;
    alice.login("alice", "alice-pw").await;
    alice.wait_texts(USERS, &["alice (you)", "carol"]).await;
    alice.wait_texts(CONVS, &["Everyone"]).await;

    // A wrong password: the server's reason, on the login form.
    // bob is on a phone.
    let bob = Browser::open(&driver, "bob", &server.url(), (390, 844)).await;
    bob.submit_login("carol", "not-carols").await;
    bob.wait_text("#login-error", "invalid user id or password")
        .await;
    // A user id the server would refuse never leaves the page.
    bob.submit_login("no one", "x").await;
    bob.wait_text(
        "#login-error",
        "A user id is 1–32 characters of A–Z a–z 0–9 _ . - (no spaces).",
    )
    .await;
    bob.login("bob", "bob-pw").await;
    bob.wait_texts(USERS, &["alice", "bob (you)", "carol"])
        .await;
    alice
        .wait_texts(USERS, &["alice (you)", "bob", "carol"])
        .await;
    alice.wait_texts(NOTICES, &["bob joined"]).await;

    // Public, from each side.
    alice.say("hello everyone").await;
    tcp_expect(&mut carol, "hello everyone").await;
    carol.send_public("hi from the terminal").await.unwrap();
    for page in [&alice, &bob] {
        page.wait_texts(SHOWN_BODIES, &["hello everyone", "hi from the terminal"])
            .await;
    }
    // The input was emptied, its counter back to zero.
    alice.wait_text("#counter", "0/140").await;

    // Private, browser to browser: bob clicks alice in the user list, which a phone shows
    // behind the Chats button.
    const SIDEBAR_SHOWN: &str =
        "return getComputedStyle(document.querySelector('#sidebar')).display !== 'none'";
    assert_eq!(
        bob.run(SIDEBAR_SHOWN, vec![]).await,
        json!(false),
        "bob: sidebar shown"
    );
    bob.click("#menu").await;
    bob.wait_for("the sidebar shown", SIDEBAR_SHOWN).await;
    bob.click("#users button[aria-label='Talk privately with alice']")
        .await;
    bob.wait_text("#conv-title", "Private: alice").await;
    assert_eq!(
        bob.run(SIDEBAR_SHOWN, vec![]).await,
        json!(false),
        "bob: sidebar still shown"
    );
    bob.wait_text("#text-label", "Message to alice").await;
    bob.say("psst alice").await;
    bob.wait_texts(SHOWN_BODIES, &["psst alice"]).await;
    alice
        .wait_texts(CONVS, &["Everyone", "bob (1 unread)"])
        .await;
    alice.open_conversation("bob").await;
    alice.wait_texts(SHOWN_BODIES, &["psst alice"]).await;
    alice.wait_texts(CONVS, &["Everyone", "bob"]).await;
    alice.say("hi bob, only you see this").await;
    bob.wait_texts(SHOWN_BODIES, &["psst alice", "hi bob, only you see this"])
        .await;

    // Private, TCP to browser and back.
    carol
        .send_private("alice", "carol here, privately")
        .await
        .unwrap();
    alice
        .wait_texts(CONVS, &["Everyone", "bob", "carol (1 unread)"])
        .await;
    alice.open_conversation("carol").await;
    alice
        .wait_texts(SHOWN_BODIES, &["carol here, privately"])
        .await;
    alice.say("hello carol").await;
    let answer = tcp_expect(&mut carol, "hello carol").await;
    assert_eq!(answer.user_id.as_str(), "alice");
    assert_eq!(answer.to, Recipient::User("carol".parse().unwrap()));
    // Nothing private reached bob's public conversation.
    bob.open_conversation("Everyone").await;
    bob.wait_texts(SHOWN_BODIES, &["hello everyone", "hi from the terminal"])
        .await;

    // 141 characters are refused in the page; 140 are sent.
    alice.open_conversation("Everyone").await;
    let long: String = "0123456789".repeat(14);
    alice.type_into("#text", &format!("{long}x")).await;
    alice.wait_text("#counter", "141/140").await;
    alice
        .wait_text("#text-error", "Too long: 141 characters, at most 140.")
        .await;
    alice
        .wait_for(
            "the send button disabled",
            "return document.querySelector('#send').disabled",
        )
        .await;
    alice
        .type_into("#text", &char::from(Key::Enter).to_string())
        .await;
    alice
        .type_into("#text", &char::from(Key::Backspace).to_string())
        .await;
    alice.wait_text("#counter", "140/140").await;
    alice.wait_text("#text-error", "").await;
    alice
        .type_into("#text", &char::from(Key::Enter).to_string())
        .await;
    tcp_expect(&mut carol, &long).await;
    bob.wait_texts(
        SHOWN_BODIES,
        &["hello everyone", "hi from the terminal", &long],
    )
    .await;
    // The count is of characters, not of UTF-16 units: 140 emoji are 280 units.
    let emoji = "\u{1F600}".repeat(140);
    alice
        .run(
            "const t = document.querySelector('#text'); t.value = arguments[0];
             t.dispatchEvent(new Event('input'))",
            vec![json!(emoji)],
        )
        .await;
    alice.wait_text("#counter", "140/140").await;
    alice
        .wait_for(
            "the send button enabled",
            "return !document.querySelector('#send').disabled",
        )
        .await;
    alice
        .type_into("#text", &char::from(Key::Enter).to_string())
        .await;
    tcp_expect(&mut carol, &emoji).await;

    // Markup in a message is shown as text, and no element is made from it.
    let markup = "<script>alert(1)</script><b>x</b>";
    bob.say(markup).await;
    let expected = [
        "hello everyone",
        "hi from the terminal",
        &long,
        &emoji,
        markup,
    ];
    for page in [&alice, &bob] {
        page.wait_texts(SHOWN_BODIES, &expected).await;
        let made = page
            .run(
                "return document.querySelectorAll('#logs b, #logs script').length + ':' +
                        document.scripts.length",
                vec![],
            )
            .await;
        assert_eq!(
            made,
            json!("0:1"),
            "{}: elements made from a message",
            page.name
        );
    }

    // bob leaves: alice's list and notices follow.
    bob.close().await;
    alice.wait_texts(USERS, &["alice (you)", "carol"]).await;
    alice.wait_texts(NOTICES, &["bob joined", "bob left"]).await;
    alice.close().await;
    drop(carol);

    // The page acked the private messages it showed: none waits for alice's next login.
    let mut again = Client::connect(server.tcp).await.expect("TCP connect");
    let pending = again.login("alice", "alice-pw").await.expect("TCP login");
    assert_eq!(
        pending,
        Vec::<ChatMessage>::new(),
        "private messages not acked"
    );
}

/// After a restart of the server (same data, same web address) the page reconnects by itself
/// and shows the public messages sent while it was away, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_and_fills_the_gap() {
    let driver = Chromedriver::start();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), "127.0.0.1:0");
    let http = server.http.to_string();

    let alice = Browser::open(&driver, "alice", &server.url(), (1280, 800)).await;
    alice.login("alice", "alice-pw").await;
    alice.say("before the restart").await;
    alice
        .wait_texts(SHOWN_BODIES, &["before the restart"])
        .await;

    // The server goes away; meanwhile, on a server the page cannot reach (same data, another
    // web address), carol talks.
    server.stop();
    // Why, then (once a first attempt failed) that it keeps trying.
    alice
        .wait_for(
            "the page to say it is offline",
            "return /^Offline \\((server shutting down|connection closed)\\): reconnecting in [0-9]+ s$/
                      .test(document.querySelector('#conn').textContent)",
        )
        .await;
    let away = Server::start(data.path(), "127.0.0.1:0");
    let mut carol = tcp_login(&away, "carol", "carol-pw").await;
    for text in ["while you were away 1", "while you were away 2"] {
        carol.send_public(text).await.unwrap();
        tcp_expect(&mut carol, text).await;
    }
    drop(carol);
    away.stop();

    // Back at the page's address: it logs in again by itself and fills the gap.
    let back = Server::start(data.path(), &http);
    alice.wait_text("#conn", "Online as alice").await;
    alice
        .wait_texts(
            SHOWN_BODIES,
            &[
                "before the restart",
                "while you were away 1",
                "while you were away 2",
            ],
        )
        .await;
    let mut carol = tcp_login(&back, "carol", "carol-pw").await;
    alice.say("after the restart").await;
    tcp_expect(&mut carol, "after the restart").await;
    alice
        .wait_texts(
            SHOWN_BODIES,
            &[
                "before the restart",
                "while you were away 1",
                "while you were away 2",
                "after the restart",
            ],
        )
        .await;

    // Logging out ends the session (carol sees alice leave) and shows the login form.
    alice.click("#logout").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = tokio::time::timeout(left, carol.next_reply())
            .await
            .expect("carol: waited for alice to leave")
            .expect("carol: connection lost");
        if let Reply::Left { user_id } = reply {
            assert_eq!(user_id.as_str(), "alice");
            break;
        }
    }
    alice
        .wait_for(
            "the login form after logging out",
            "return !document.querySelector('#login-view').hidden &&
                    document.querySelector('#chat-view').hidden",
        )
        .await;
    alice.wait_text("#conn", "Not connected").await;
    alice.close().await;
}

/// Older history when scrolling to the top; a session revoked by `user passwd` asks for the
/// password again; a takeover stops the page, which does not reconnect by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_revocation_and_takeover() {
    let driver = Chromedriver::start();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), "127.0.0.1:0");

    // 60 public messages before alice comes: more than a page (50).
    let all: Vec<String> = (1..=60).map(|i| format!("message {i:02}")).collect();
    let mut carol = tcp_login(&server, "carol", "carol-pw").await;
    for text in &all {
        carol.send_public(text).await.unwrap();
    }
    tcp_expect(&mut carol, "message 60").await;
    let all: Vec<&str> = all.iter().map(String::as_str).collect();

    let alice = Browser::open(&driver, "alice", &server.url(), (1280, 800)).await;
    alice.login("alice", "alice-pw").await;
    alice.wait_texts(SHOWN_BODIES, &all[10..]).await;
    // Scrolling to the top asks for the page before.
    alice
        .run(
            "document.querySelector('.scroller:not([hidden])').scrollTop = 0",
            vec![],
        )
        .await;
    alice.wait_texts(SHOWN_BODIES, &all).await;
    alice
        .wait_for(
            "the older-messages button hidden (no more history)",
            "return document.querySelector('.scroller:not([hidden]) .older').hidden",
        )
        .await;

    // An administrator changes alice's password: the page asks for it, with the reason.
    let passwd = Command::new(SERVER)
        .args(["user", "passwd", "alice", "--insecure-fast-hash", "--data"])
        .arg(data.path().join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run user passwd");
    let mut stdin = passwd.stdin.as_ref().expect("piped stdin");
    std::io::Write::write_all(&mut stdin, b"new-pw\n").unwrap();
    let out = passwd.wait_with_output().unwrap();
    assert!(out.status.success(), "user passwd: {out:?}");
    alice
        .wait_text("#login-error", "your password was changed; log in again")
        .await;
    alice.login("alice", "new-pw").await;
    alice.wait_texts(SHOWN_BODIES, &all).await;

    // alice logs in elsewhere: the page stops, and stays stopped.
    let mut elsewhere = tcp_login(&server, "alice", "new-pw").await;
    alice
        .wait_text(
            "#conn",
            "Stopped: logged in elsewhere. Reconnect to continue here.",
        )
        .await;
    alice.wait_text("#retry", "Reconnect").await;
    alice
        .wait_for(
            "the send button disabled",
            "return document.querySelector('#send').disabled",
        )
        .await;
    // Longer than the first two reconnection delays would take (0.5 s and 1 s, each at most
    // 25 % longer): had the page logged in again, this session would have been taken over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    elsewhere.send_public("still here").await.unwrap();
    tcp_expect(&mut elsewhere, "still here").await;
    alice
        .wait_text(
            "#conn",
            "Stopped: logged in elsewhere. Reconnect to continue here.",
        )
        .await;
    // The user asks for it: the page takes the session back.
    alice.click("#retry").await;
    alice.wait_text("#conn", "Online as alice").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = tokio::time::timeout(left, elsewhere.next_reply())
            .await
            .expect("the TCP session: waited for its takeover")
            .expect("the TCP session: closed before its fail 409");
        if let Reply::Fail { fail, .. } = reply {
            assert_eq!(fail.error_code, simpletextim_proto::ErrorCode::Conflict);
            assert_eq!(fail.reason, "logged in elsewhere");
            break;
        }
    }
    alice.close().await;
}

/// Regenerates docs/screenshots/desktop.png (1280×800) and phone.png (390×844): a
/// conversation between two browser users and a bot on the terminal protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/screenshots: run it with -- --ignored screenshots"]
async fn screenshots() {
    let driver = Chromedriver::start();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), "127.0.0.1:0");
    let mut bot = tcp_login(&server, "build-bot", "bot-pw").await;

    let alice = Browser::open(&driver, "alice", &server.url(), (1280, 800)).await;
    alice.login("alice", "alice-pw").await;
    let bob = Browser::open(&driver, "bob", &server.url(), (390, 844)).await;
    bob.login("bob", "bob-pw").await;

    alice
        .say("Morning! Is the release branch ready for a last look?")
        .await;
    tcp_expect(
        &mut bot,
        "Morning! Is the release branch ready for a last look?",
    )
    .await;
    bot.send_public("build 1412 passed: 213 tests, 0 failures")
        .await
        .unwrap();
    bob.wait_texts(
        SHOWN_BODIES,
        &[
            "Morning! Is the release branch ready for a last look?",
            "build 1412 passed: 213 tests, 0 failures",
        ],
    )
    .await;
    bob.say("Yes, tagged it an hour ago. The changelog still needs a line about the web client.")
        .await;
    alice
        .say("I'll write it. <b>Tags</b> in messages show as typed, by the way.")
        .await;
    bob.click("#menu").await;
    bob.click("#users button[aria-label='Talk privately with alice']")
        .await;
    bob.say("Lunch at 12:30?").await;
    alice
        .wait_texts(CONVS, &["Everyone", "bob (1 unread)"])
        .await;
    bot.send_private("alice", "deploy to staging finished")
        .await
        .unwrap();
    alice
        .wait_texts(
            CONVS,
            &["Everyone", "bob (1 unread)", "build-bot (1 unread)"],
        )
        .await;
    alice.open_conversation("bob").await;
    alice.say("Sounds good. The usual place?").await;
    bob.wait_texts(
        SHOWN_BODIES,
        &["Lunch at 12:30?", "Sounds good. The usual place?"],
    )
    .await;
    bob.type_into("#text", "Yes, see you there").await;
    alice.open_conversation("Everyone").await;
    alice
        .type_into("#text", "Changelog line is in, please review")
        .await;

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    for (page, file) in [(&alice, "desktop.png"), (&bob, "phone.png")] {
        let png = page.wd.screenshot().await.unwrap();
        let path: PathBuf = dir.join(file);
        std::fs::write(&path, png).unwrap();
        eprintln!("wrote {}", path.display());
    }
    alice.close().await;
    bob.close().await;
}
