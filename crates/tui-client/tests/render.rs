//! Whole-screen rendering tests: an [`App`] state is built from events, drawn on ratatui's
//! `TestBackend`, and the full screen compared with a committed `insta` snapshot
//! (`tests/snapshots/`). Times use a fixed UTC+02:00 offset, so the snapshots do not depend
//! on the machine's time zone or date.

use chrono::FixedOffset;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::{Color, Modifier};
use simpletextim_proto::{ChatMessage, ErrorCode, Reply, UserId};
use simpletextim_tui::app::{App, Settings, TimeZone};
use simpletextim_tui::event::{Event, NetEvent};
use simpletextim_tui::ui;

/// 2025-11-26 21:58:00 UTC, 23:58 at UTC+02:00: the day changes two minutes later.
const T0: u64 = 1_764_194_280_000;

fn uid(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

fn new_app() -> App {
    let tz = FixedOffset::east_opt(2 * 3600).expect("valid offset");
    App::new(
        Settings {
            server: "127.0.0.1:5000".into(),
            bell: true,
            tz: TimeZone::Fixed(tz),
        },
        Some("alice"),
    )
}

fn msg(from: &str, to: &str, text: &str, minute: u64) -> ChatMessage {
    ChatMessage {
        r#ref: None,
        user_id: uid(from),
        message: text.into(),
        to: to.parse().expect("valid recipient"),
        id: minute,
        ts: T0 + minute * 60_000,
    }
}

fn net(app: &mut App, event: NetEvent) {
    app.update(Event::Net(event));
}

fn reply(app: &mut App, reply: Reply, minute: u64) {
    net(
        app,
        NetEvent::Reply {
            reply,
            at_ms: T0 + minute * 60_000,
        },
    );
}

fn resize(app: &mut App, width: u16, height: u16) {
    app.update(Event::Resize { width, height });
}

fn key(app: &mut App, code: KeyCode) {
    app.update(Event::Key(KeyEvent::new(code, KeyModifiers::NONE)));
}

fn type_str(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn logged_in(pending: Vec<ChatMessage>) -> App {
    let mut app = new_app();
    app.login_with("alice", "secret");
    net(
        &mut app,
        NetEvent::LoggedIn {
            user: uid("alice"),
            pending,
            at_ms: T0,
        },
    );
    reply(
        &mut app,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice"), uid("bob"), uid("li.xiaolong")],
        },
        0,
    );
    app
}

/// A conversation with everything the message pane shows: a day change, notices, wide
/// characters, a long wrapped line, our own message, a mention, control characters.
fn busy_app() -> App {
    let mut app = logged_in(vec![msg("carol", "alice", "sorry I missed you", 0)]);
    reply(
        &mut app,
        Reply::Joined {
            user_id: uid("dave"),
        },
        0,
    );
    reply(
        &mut app,
        Reply::Message {
            r#ref: None,
            messages: vec![
                msg("bob", "*", "evening all", 1),
                msg("alice", "*", "hi bob 👋", 1),
                msg(
                    "bob",
                    "*",
                    "漢字とかなカナ、表示テスト。全角の文字は二つのセルを使います。",
                    2,
                ),
                msg(
                    "dave",
                    "*",
                    "a long line that keeps going and going so that it has to wrap onto several rows of the message pane without breaking words",
                    3,
                ),
                msg("bob", "*", "alice: did you see this? 🎉🎉", 4),
                msg(
                    "dave",
                    "*",
                    "bell\u{7} and \u{1b}[31mred\u{1b}[0m are shown harmless",
                    5,
                ),
            ],
        },
        5,
    );
    reply(
        &mut app,
        Reply::Left {
            user_id: uid("dave"),
        },
        6,
    );
    reply(
        &mut app,
        Reply::Message {
            r#ref: None,
            messages: vec![msg("bob", "alice", "psst, private", 7)],
        },
        7,
    );
    type_str(&mut app, "typing a reply to 李小龙 🙂");
    app
}

fn render(app: &App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal
        .draw(|frame| ui::draw(frame, app))
        .expect("draw on a test terminal");
    terminal
}

fn snapshot(name: &str, app: &mut App, width: u16, height: u16) {
    resize(app, width, height);
    let terminal = render(app, width, height);
    insta::assert_snapshot!(name, terminal.backend());
}

#[test]
fn chat_80x24() {
    snapshot("chat_80x24", &mut busy_app(), 80, 24);
}

#[test]
fn chat_120x30() {
    snapshot("chat_120x30", &mut busy_app(), 120, 30);
}

#[test]
fn chat_narrow_40x14() {
    snapshot("chat_40x14", &mut busy_app(), 40, 14);
}

#[test]
fn private_conversation_with_status_error() {
    let mut app = busy_app();
    app.update(Event::Key(KeyEvent::new(
        KeyCode::Char('2'),
        KeyModifiers::ALT,
    )));
    reply(
        &mut app,
        Reply::fail(ErrorCode::RateLimited, "slow down"),
        8,
    );
    snapshot("private_80x24", &mut app, 80, 24);
}

fn long_scrollback() -> App {
    let mut app = logged_in(vec![]);
    let batch: Vec<ChatMessage> = (1..=300)
        .map(|i| {
            let from = ["bob", "alice", "li.xiaolong"][i as usize % 3];
            msg(from, "*", &format!("message number {i} 数字 {i}"), i)
        })
        .collect();
    reply(
        &mut app,
        Reply::Message {
            r#ref: None,
            messages: batch,
        },
        300,
    );
    app
}

#[test]
fn long_scrollback_at_the_bottom() {
    snapshot("scrollback_bottom_80x24", &mut long_scrollback(), 80, 24);
}

#[test]
fn long_scrollback_scrolled_up_with_new_messages() {
    for (w, h) in [(80, 24), (120, 30)] {
        let mut app = long_scrollback();
        resize(&mut app, w, h);
        for _ in 0..3 {
            key(&mut app, KeyCode::PageUp);
        }
        reply(
            &mut app,
            Reply::Message {
                r#ref: None,
                messages: vec![
                    msg("bob", "*", "new while scrolled", 301),
                    msg("bob", "*", "another", 302),
                ],
            },
            302,
        );
        snapshot(&format!("scrollback_scrolled_{w}x{h}"), &mut app, w, h);
    }
}

#[test]
fn login_screen_masks_the_password_and_shows_the_failure() {
    let mut app = new_app();
    type_str(&mut app, "hunter2");
    key(&mut app, KeyCode::Enter);
    net(
        &mut app,
        NetEvent::LoginFailed {
            reason: "401: wrong user id or password".into(),
        },
    );
    type_str(&mut app, "p4ss");
    snapshot("login_80x24", &mut app, 80, 24);
    snapshot("login_40x12", &mut app, 40, 12);
}

#[test]
fn help_overlay() {
    let mut app = busy_app();
    key(&mut app, KeyCode::F(1));
    snapshot("help_80x24", &mut app, 80, 24);
}

#[test]
fn help_overlay_on_a_small_terminal_scrolls() {
    let mut app = busy_app();
    resize(&mut app, 40, 14);
    key(&mut app, KeyCode::F(1));
    for _ in 0..3 {
        key(&mut app, KeyCode::Down);
    }
    snapshot("help_scrolled_40x14", &mut app, 40, 14);
}

#[test]
fn choosing_a_user_with_the_keyboard() {
    let mut app = busy_app();
    key(&mut app, KeyCode::F(2));
    key(&mut app, KeyCode::Down);
    snapshot("users_cursor_100x20", &mut app, 100, 20);
}

#[test]
fn reconnecting_status() {
    let mut app = busy_app();
    net(
        &mut app,
        NetEvent::Disconnected {
            reason: "connection closed by the server".into(),
            at_ms: T0 + 9 * 60_000,
        },
    );
    net(&mut app, NetEvent::Reconnecting { in_secs: 4 });
    snapshot("reconnecting_80x24", &mut app, 80, 24);
}

#[test]
fn over_the_limit_counter() {
    let mut app = logged_in(vec![]);
    type_str(&mut app, &"x".repeat(150));
    key(&mut app, KeyCode::Enter);
    snapshot("over_limit_80x24", &mut app, 80, 24);
}

#[test]
fn own_messages_and_mentions_are_styled_apart() {
    let mut app = busy_app();
    resize(&mut app, 120, 30);
    let terminal = render(&app, 120, 30);
    let buffer = terminal.backend().buffer();
    let find = |needle: &str| {
        (0..buffer.area.height)
            .find_map(|y| {
                let row: String = (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect();
                row.find(needle).map(|byte| {
                    let x = row[..byte].chars().count() as u16;
                    (x, y)
                })
            })
            .unwrap_or_else(|| panic!("{needle:?} not on screen"))
    };
    // Our own name is bold and reversed; bob's is neither.
    let (x, y) = find("<alice>");
    let own = &buffer[(x + 1, y)];
    assert!(own.modifier.contains(Modifier::BOLD | Modifier::REVERSED));
    let (x, y) = find("<bob> evening");
    assert!(!buffer[(x + 1, y)].modifier.contains(Modifier::REVERSED));
    // A line naming us stands out.
    let (x, y) = find("alice: did you see");
    assert_eq!(buffer[(x, y)].fg, Color::Yellow);
    // Presence notices are dimmed.
    let (x, y) = find("dave joined");
    assert_eq!(buffer[(x, y)].fg, Color::DarkGray);
}

#[test]
fn tiny_terminals_do_not_break_the_layout() {
    let mut screens = vec![busy_app(), new_app(), long_scrollback()];
    let mut help = busy_app();
    key(&mut help, KeyCode::F(1));
    screens.push(help);
    let mut picking = busy_app();
    key(&mut picking, KeyCode::F(2));
    screens.push(picking);
    for app in &mut screens {
        for (w, h) in [(1, 1), (2, 2), (5, 3), (10, 4), (20, 6), (49, 5), (80, 3)] {
            resize(app, w, h);
            for _ in 0..2 {
                key(app, KeyCode::PageUp);
            }
            let terminal = render(app, w, h);
            assert_eq!(terminal.backend().buffer().area.width, w);
        }
    }
}

/// The connection drops while F2 has scrolled the online panel down its list: the list is
/// emptied, and so is the selection into it. Drawing used to subtract the first user shown
/// (14) from the emptied list's length (0) and panic.
#[test]
fn a_disconnect_while_choosing_a_user_empties_the_panel() {
    let mut app = logged_in(vec![]);
    let list = (0..30).map(|i| uid(&format!("user{i:02}"))).collect();
    reply(&mut app, Reply::List { r#ref: None, list }, 0);
    resize(&mut app, 100, 20);
    key(&mut app, KeyCode::F(2));
    key(&mut app, KeyCode::End);
    assert_eq!(app.users_cursor, Some(29));
    net(
        &mut app,
        NetEvent::Disconnected {
            reason: "connection reset".into(),
            at_ms: T0 + 60_000,
        },
    );
    assert_eq!(app.users_cursor, None);
    let terminal = render(&app, 100, 20);
    let buffer = terminal.backend().buffer();
    let panel: Vec<String> = (1..18)
        .map(|y| (84..100).map(|x| buffer[(x, y)].symbol()).collect())
        .collect();
    let mut expected = vec![format!("{:<16}", "0 online")];
    expected.extend(std::iter::repeat_n(" ".repeat(16), 16));
    assert_eq!(panel, expected);
}

/// A message whose `ts` chrono cannot represent (here the last instant it can, at
/// UTC+02:00, and `i64::MAX`) is drawn with `?` for its time and no date line.
#[test]
fn an_out_of_range_time_is_drawn_as_a_question_mark() {
    let mut app = logged_in(vec![]);
    let last = u64::try_from(chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis())
        .expect("chrono's last instant is after 1970");
    let messages = [(last, "late"), (i64::MAX as u64, "later")]
        .into_iter()
        .map(|(ts, text)| ChatMessage {
            ts,
            ..msg("bob", "*", text, 1)
        })
        .collect();
    reply(
        &mut app,
        Reply::Message {
            r#ref: None,
            messages,
        },
        1,
    );
    resize(&mut app, 80, 24);
    let terminal = render(&app, 80, 24);
    let buffer = terminal.backend().buffer();
    let row = |y: u16| -> String { (15..63).map(|x| buffer[(x, y)].symbol()).collect() };
    assert_eq!(row(20).trim_end(), "?     <bob> late");
    assert_eq!(row(21).trim_end(), "?     <bob> later");
}

/// History (protocol 1.1): after a reconnection whose catch-up the server refused, the
/// marker where messages may be missing; PageUp at the top, "loading older…" in the title.
#[test]
fn gap_marker_and_loading_older() {
    let mut app = logged_in(vec![]);
    reply(
        &mut app,
        Reply::Message {
            r#ref: None,
            messages: vec![msg("bob", "*", "before the break", 1)],
        },
        1,
    );
    net(
        &mut app,
        NetEvent::Disconnected {
            reason: "connection reset".into(),
            at_ms: T0 + 2 * 60_000,
        },
    );
    net(
        &mut app,
        NetEvent::LoggedIn {
            user: uid("alice"),
            pending: vec![],
            at_ms: T0 + 3 * 60_000,
        },
    );
    // The list (ref 3), then the catch-up of "all" (ref 4), refused.
    reply(
        &mut app,
        Reply::fail(
            ErrorCode::BadRequest,
            "history is not available on this server yet",
        )
        .with_ref(Some(simpletextim_proto::Ref::Number(4))),
        3,
    );
    reply(
        &mut app,
        Reply::Message {
            r#ref: None,
            messages: vec![msg("bob", "*", "after the break", 4)],
        },
        4,
    );
    key(&mut app, KeyCode::PageUp);
    snapshot("gap_and_loading_80x24", &mut app, 80, 24);
}
