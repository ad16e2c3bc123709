//! End to end: client states driven by their real network tasks against a real server on
//! `127.0.0.1:0`, exactly as the event loop drives them (minus the terminal), and their
//! screens rendered on ratatui's `TestBackend`.
//!
//! Every wait is bounded: a loop pumps events until a condition holds, with a generous
//! timeout that only fires when something is broken.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use simpletextim_proto::Client;
use simpletextim_server::Config;
use simpletextim_server::store::SqliteStore;
use simpletextim_tui::app::{
    Action, App, Connection, ConvId, EntryKind, OlderHistory, Screen, Settings, TimeZone,
};
use simpletextim_tui::event::{Event, NetRequest};
use simpletextim_tui::{net, ui};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for anything; reached only when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn server_on(addr: &str) -> Server {
    server_with(addr, Config::default()).await
}

/// A server with `config`, fast password hashing whatever it says.
async fn server_with(addr: &str, config: Config) -> Server {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let config = Config {
        hash_cost: simpletextim_server::HashCost::InsecureFast,
        ..config
    };
    let task = tokio::spawn(simpletextim_server::run(listener, config, shutdown.clone()));
    Server {
        addr,
        shutdown,
        task,
    }
}

/// A server keeping its accounts, mailboxes and history in `dir` (created if missing).
async fn server_with_data(addr: &str, dir: &Path) -> Server {
    let dir = dir.to_owned();
    let store = tokio::task::spawn_blocking(move || {
        SqliteStore::open(&dir, simpletextim_server::DEFAULT_MAILBOX_CAP)
    })
    .await
    .expect("the store opens without panicking")
    .expect("open the store");
    let config = Config {
        store: Arc::new(store),
        ..Config::default()
    };
    server_with(addr, config).await
}

/// A data directory for one test, not there yet (the server creates it, mode 0700), removed
/// at the end.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> DataDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        DataDir(std::env::temp_dir().join(format!(
            "simpletextim-tui-e2e-{name}-{}-{nanos}",
            std::process::id()
        )))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(PATIENCE, self.task).await;
    }
}

/// One person's client: the state, its network task, and the event channel between them.
struct Peer {
    app: App,
    net: mpsc::UnboundedSender<NetRequest>,
    events: mpsc::Receiver<Event>,
    _task: JoinHandle<()>,
}

impl Peer {
    fn start(addr: SocketAddr, user: &str, password: &str) -> Peer {
        let (tx, events) = mpsc::channel(1024);
        let (net, task) = net::spawn(addr.to_string(), tx);
        let settings = Settings {
            server: addr.to_string(),
            bell: true,
            tz: TimeZone::utc(),
        };
        let mut app = App::new(settings, Some(user));
        app.update(Event::Resize {
            width: 100,
            height: 30,
        });
        let mut peer = Peer {
            app,
            net,
            events,
            _task: task,
        };
        let actions = peer.app.login_with(user, password);
        peer.perform(actions);
        peer
    }

    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            if let Action::Net(request) = action {
                self.net.send(request).expect("network task alive");
            }
        }
    }

    /// Applies an event and, as the event loop does after drawing, acknowledges what is on
    /// screen.
    fn update(&mut self, event: Event) {
        let actions = self.app.update(event);
        self.perform(actions);
        let acks = self.app.on_drawn();
        self.perform(acks);
    }

    /// Applies network events until `done` holds.
    async fn until(&mut self, what: &str, done: impl Fn(&App) -> bool) {
        let wait = async {
            while !done(&self.app) {
                let event = self.events.recv().await.expect("network task alive");
                self.update(event);
            }
        };
        if tokio::time::timeout(PATIENCE, wait).await.is_err() {
            panic!("waited too long for: {what}\n{}", self.screen());
        }
    }

    fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) {
        self.update(Event::Key(KeyEvent::new(code, modifiers)));
    }

    /// Types a line and presses Enter.
    fn say(&mut self, line: &str) {
        for c in line.chars() {
            self.key(KeyCode::Char(c), KeyModifiers::NONE);
        }
        self.key(KeyCode::Enter, KeyModifiers::NONE);
    }

    /// Shows conversation `n` (1-based), as Alt+n does.
    fn show(&mut self, n: char) {
        self.key(KeyCode::Char(n), KeyModifiers::ALT);
    }

    /// The whole screen as text, one line per row.
    fn screen(&self) -> String {
        let mut terminal = Terminal::new(TestBackend::new(100, 30)).expect("test terminal");
        terminal
            .draw(|frame| ui::draw(frame, &self.app))
            .expect("draw");
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            let mut skip = 0;
            for x in 0..buffer.area.width {
                // Skip the cells hidden behind a wide character.
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let symbol = buffer[(x, y)].symbol();
                skip = simpletextim_tui::text::width(symbol).saturating_sub(1);
                out.push_str(symbol);
            }
            out.push('\n');
        }
        out
    }

    fn online(&self) -> Vec<String> {
        self.app
            .online
            .iter()
            .map(|u| u.as_str().to_owned())
            .collect()
    }

    fn has_conversation(&self, name: &str) -> bool {
        self.app
            .conversations
            .iter()
            .any(|c| matches!(&c.id, ConvId::Private(u) if u.as_str() == name))
    }

    /// The chat messages of conversation `index` (no notices).
    fn chat(&self, index: usize) -> Vec<String> {
        self.app.conversations[index]
            .msgs
            .entries()
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Chat { .. }))
            .map(|e| e.text.clone())
            .collect()
    }

    /// The index of the private conversation with `name`.
    fn conversation_with(&self, name: &str) -> Option<usize> {
        self.app
            .conversations
            .iter()
            .position(|c| matches!(&c.id, ConvId::Private(u) if u.as_str() == name))
    }

    fn texts(&self, index: usize) -> Vec<String> {
        self.app.conversations[index]
            .msgs
            .entries()
            .iter()
            .map(|e| e.text.clone())
            .collect()
    }
}

fn assert_screen_has(peer: &Peer, needles: &[&str]) {
    let screen = peer.screen();
    for needle in needles {
        assert!(
            screen.contains(needle),
            "{needle:?} not on the screen:\n{screen}"
        );
    }
}

#[tokio::test]
async fn two_people_chat_publicly_and_privately() {
    let server = server_on("127.0.0.1:0").await;
    let mut alice = Peer::start(server.addr, "alice", "alice-pw");
    alice
        .until("alice logged in", |a| {
            a.connection == Connection::Connected && !a.online.is_empty()
        })
        .await;
    let mut bob = Peer::start(server.addr, "bob", "bob-pw");
    bob.until("bob logged in and listed", |a| a.online.len() == 2)
        .await;
    alice
        .until("alice sees bob join", |a| a.online.len() == 2)
        .await;
    assert_eq!(alice.online(), ["alice", "bob"]);

    // Public, with wide characters.
    alice.say("hello bob, 漢字 and 👋");
    assert_eq!(alice.app.input.text(), "hello bob, 漢字 and 👋");
    alice
        .until("alice's message echoed", |a| a.input.is_empty())
        .await;
    bob.until("bob gets the public message", |a| {
        a.conversations[0]
            .msgs
            .entries()
            .iter()
            .any(|e| e.text.starts_with("hello bob"))
    })
    .await;
    assert_eq!(
        bob.texts(0).last().map(String::as_str),
        Some("hello bob, 漢字 and 👋")
    );

    // Private, from bob to alice: it opens a conversation on alice's side.
    bob.say("/msg alice psst, just for you");
    bob.until("bob's private message echoed", |a| a.input.is_empty())
        .await;
    alice
        .until("alice gets the private message", |a| {
            a.conversations.len() == 2
        })
        .await;
    assert!(alice.has_conversation("bob"));
    assert_eq!(alice.app.conversations[1].unread, 1);
    assert!(alice.app.conversations[1].highlight);

    // Alice answers in the private conversation.
    alice.show('2');
    assert_eq!(alice.app.conversations[1].unread, 0);
    alice.say("got it 🙂");
    alice
        .until("alice's answer echoed", |a| a.input.is_empty())
        .await;
    bob.until("bob gets the answer", |a| {
        a.conversations.len() == 2 && a.conversations[1].msgs.entries().len() == 2
    })
    .await;

    assert_screen_has(
        &alice,
        &[
            " alice │ connected │ bob",
            "<bob> psst, just for you",
            "<alice> got it 🙂",
            "[bob]",
        ],
    );
    alice.show('1');
    assert_screen_has(
        &alice,
        &["<alice> hello bob, 漢字 and 👋", "--> bob joined"],
    );

    assert_screen_has(&bob, &["<alice> hello bob, 漢字 and 👋", " 2 alice"]);
    bob.show('2');
    assert_screen_has(
        &bob,
        &[
            "<bob> psst, just for you",
            "<alice> got it 🙂",
            "alice · private conversation · online",
        ],
    );

    // Failures are shown in the status bar, the input kept.
    alice.say("/msg nobody-here hi");
    alice
        .until("alice told the user does not exist", |a| a.status.is_some())
        .await;
    assert_screen_has(&alice, &["404: "]);
    assert_eq!(alice.app.input.text(), "/msg nobody-here hi");

    // Bob leaves; alice sees it.
    bob.say("/quit");
    alice
        .until("alice sees bob leave", |a| a.online.len() == 1)
        .await;
    alice.show('1');
    assert_screen_has(&alice, &["<-- bob left", "1 online"]);

    server.stop().await;
}

#[tokio::test]
async fn pending_messages_wrong_password_and_take_over() {
    let server = server_on("127.0.0.1:0").await;
    // Carol exists, then goes away.
    let mut carol = Peer::start(server.addr, "carol", "carol-pw");
    carol
        .until("carol logged in", |a| a.connection == Connection::Connected)
        .await;
    carol.say("/quit");
    let mut dave = Peer::start(server.addr, "dave", "dave-pw");
    dave.until("dave logged in", |a| a.online.len() == 1).await;
    dave.say("/msg carol while you were out");
    dave.until("echoed", |a| a.input.is_empty()).await;

    // A wrong password: the reason on the login screen, and another try works.
    let mut carol = Peer::start(server.addr, "carol", "wrong");
    carol
        .until("login refused", |a| a.login.error.is_some())
        .await;
    assert_eq!(carol.app.screen, Screen::Login);
    assert_screen_has(&carol, &["401"]);
    for c in "carol-pw".chars() {
        carol.key(KeyCode::Char(c), KeyModifiers::NONE);
    }
    carol.key(KeyCode::Enter, KeyModifiers::NONE);
    carol
        .until("carol logged in", |a| a.screen == Screen::Chat)
        .await;
    // The message kept while she was away is in dave's conversation, unread.
    assert!(carol.has_conversation("dave"));
    assert_eq!(carol.app.conversations[1].unread, 1);
    assert_eq!(carol.texts(1), ["while you were out"]);
    assert_screen_has(&carol, &[" 2 dave      1"]);

    // Carol logs in elsewhere: the first session is taken over and stops for good.
    let mut carol2 = Peer::start(server.addr, "carol", "carol-pw");
    carol2
        .until("second carol logged in", |a| {
            a.connection == Connection::Connected
        })
        .await;
    carol
        .until("first carol taken over", |a| {
            matches!(a.connection, Connection::Offline { .. })
        })
        .await;
    assert_screen_has(
        &carol,
        &["offline: logged in elsewhere (409); not reconnecting"],
    );

    server.stop().await;
}

#[tokio::test]
async fn reconnects_after_the_server_restarts_keeping_the_screen() {
    let server = server_on("127.0.0.1:0").await;
    let addr = server.addr;
    let mut erin = Peer::start(addr, "erin", "erin-pw");
    erin.until("erin logged in", |a| a.online.len() == 1).await;
    erin.say("before the restart");
    erin.until("echoed", |a| a.input.is_empty()).await;

    server.stop().await;
    erin.until("erin notices", |a| {
        matches!(a.connection, Connection::Reconnecting { .. })
    })
    .await;
    let server = server_on(&addr.to_string()).await;
    erin.until("erin back", |a| a.connection == Connection::Connected)
        .await;
    erin.until("online list again", |a| a.online.len() == 1)
        .await;
    let texts = erin.texts(0);
    assert_eq!(
        texts.first().map(String::as_str),
        Some("before the restart")
    );
    assert_eq!(texts.last().map(String::as_str), Some("reconnected"));
    erin.say("after the restart");
    erin.until("echoed", |a| a.input.is_empty()).await;
    assert_screen_has(
        &erin,
        &[
            "<erin> before the restart",
            "-!- connection lost",
            "-!- reconnected",
            "<erin> after the restart",
        ],
    );
    server.stop().await;
}

/// The scenario: the server stops, another user talks while the client is away, the
/// server restarts on the same data: back, the client shows what it missed (public: caught up
/// with `history` after the last id it saw; private: the mailbox), each message once, and no
/// "missing" marker.
#[tokio::test]
async fn what_was_said_while_away_is_shown_after_the_server_restarts() {
    let data = DataDir::new("away");
    let server = server_with_data("127.0.0.1:0", &data.0).await;
    let addr = server.addr;
    let mut erin = Peer::start(addr, "erin", "erin-pw");
    erin.until("erin logged in", |a| a.online.len() == 1).await;
    let mut frank = Peer::start(addr, "frank", "frank-pw");
    frank
        .until("frank logged in", |a| a.online.len() == 2)
        .await;
    frank.say("before the restart");
    frank.until("echoed", |a| a.input.is_empty()).await;
    frank.say("/quit");
    erin.until("erin sees frank's message and him leave", |a| {
        a.online.len() == 1 && a.conversations[0].msgs.entries().len() >= 3
    })
    .await;
    assert_eq!(erin.chat(0), ["before the restart"]);

    server.stop().await;
    // Erin's second attempt failed: the next is four seconds away, time for frank to talk.
    erin.until("erin waits 4 s to reconnect", |a| {
        a.connection == Connection::Reconnecting { in_secs: 4 }
    })
    .await;
    let server = server_with_data(&addr.to_string(), &data.0).await;
    let mut frank = Peer::start(addr, "frank", "frank-pw");
    frank.until("frank back", |a| !a.online.is_empty()).await;
    assert_eq!(frank.app.connection, Connection::Connected);
    for line in ["said while you were away", "/msg erin and privately"] {
        frank.say(line);
        frank.until("echoed", |a| a.input.is_empty()).await;
    }
    frank.say("/quit");

    erin.until("erin caught up", |a| {
        a.conversations[0]
            .msgs
            .entries()
            .iter()
            .any(|e| e.text == "said while you were away")
            && a.conversations.len() == 2
    })
    .await;
    assert_eq!(
        erin.chat(0),
        ["before the restart", "said while you were away"]
    );
    let with_frank = erin
        .conversation_with("frank")
        .expect("frank's conversation");
    assert_eq!(erin.chat(with_frank), ["and privately"]);
    assert!(
        !erin
            .texts(0)
            .iter()
            .any(|t| t.contains("messages may be missing")),
        "{:?}",
        erin.texts(0)
    );
    assert_screen_has(
        &erin,
        &["<frank> said while you were away", "-!- reconnected"],
    );
    server.stop().await;
}

/// PageUp at the top of a conversation loads what the server keeps before it, page by page,
/// down to "beginning of history".
#[tokio::test]
async fn page_up_loads_older_messages_from_the_server() {
    // Sixty lines in a row: no flood control.
    let config = Config {
        rate_limit: None,
        ..Config::default()
    };
    let server = server_with("127.0.0.1:0", config).await;
    let mut gina = Peer::start(server.addr, "gina", "gina-pw");
    gina.until("gina logged in", |a| a.online.len() == 1).await;
    for i in 1..=60 {
        gina.say(&format!("line {i}"));
        gina.until("echoed", |a| a.input.is_empty()).await;
    }
    gina.say("/quit");

    let mut hank = Peer::start(server.addr, "hank", "hank-pw");
    // The newest page at login: the last 50.
    hank.until("hank has the newest page", |a| {
        a.conversations[0].msgs.entries().len() == 50
    })
    .await;
    let expected: Vec<String> = (11..=60).map(|i| format!("line {i}")).collect();
    assert_eq!(hank.chat(0), expected);
    // PageUp up to the top, then once more: the 10 older ones, and the beginning.
    for _ in 0..100 {
        if hank.app.conversations[0].older != OlderHistory::Idle {
            break;
        }
        hank.key(KeyCode::PageUp, KeyModifiers::NONE);
    }
    hank.until("older messages loaded", |a| {
        a.conversations[0].older == OlderHistory::Done
    })
    .await;
    let expected: Vec<String> = (1..=60).map(|i| format!("line {i}")).collect();
    assert_eq!(hank.chat(0), expected);
    assert_eq!(hank.texts(0)[0], "beginning of history");
    server.stop().await;
}

/// With acks, a private message not shown before the session ends comes again at the next
/// login (shown once), and one shown is acknowledged: it does not come again.
#[tokio::test]
async fn private_messages_are_acknowledged_once_shown() {
    let server = server_on("127.0.0.1:0").await;
    let mut ivan = Peer::start(server.addr, "ivan", "ivan-pw");
    ivan.until("ivan logged in", |a| a.online.len() == 1).await;
    let mut jane = Peer::start(server.addr, "jane", "jane-pw");
    jane.until("jane logged in", |a| a.online.len() == 2).await;
    jane.say("/msg ivan not shown yet");
    jane.until("echoed", |a| a.input.is_empty()).await;
    ivan.until("ivan got it", |a| a.conversations.len() == 2)
        .await;
    // "all" is shown: the message was never on screen, so not acknowledged.
    assert_eq!(ivan.app.active, 0);
    ivan.say("/quit");
    let ivan_left = |a: &App| {
        a.conversations[0]
            .msgs
            .entries()
            .iter()
            .filter(|e| e.text == "ivan left")
            .count()
    };
    jane.until("jane sees ivan leave", |a| ivan_left(a) == 1)
        .await;

    let mut ivan = Peer::start(server.addr, "ivan", "ivan-pw");
    ivan.until("ivan back", |a| a.screen == Screen::Chat).await;
    let with_jane = ivan.conversation_with("jane").expect("jane's conversation");
    assert_eq!(ivan.chat(with_jane), ["not shown yet"]);
    // Shown now: acknowledged at once.
    ivan.show('2');
    ivan.say("/quit");
    // Gone for good (the ack went before the exit): nothing of the session is pending.
    jane.until("jane sees ivan leave again", |a| ivan_left(a) == 2)
        .await;

    let mut client = Client::connect(server.addr).await.expect("connect");
    let pending = client
        .login_with_acks("ivan", "ivan-pw")
        .await
        .expect("log in");
    assert_eq!(pending, []);
    server.stop().await;
}
