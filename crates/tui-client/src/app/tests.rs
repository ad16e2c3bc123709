//! Unit tests of the state updates: each feeds events to an [`App`] and checks the exact
//! state and actions that follow.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::layout::Rect;
use simpletextim_proto::{
    Anchor, ChatMessage, Command, ErrorCode, PageLimit, Password, Recipient, Ref, Reply, Request,
    UserId,
};

use crate::event::NetEvent;
use crate::layout;

use super::*;

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn settings() -> Settings {
    Settings {
        server: "127.0.0.1:5000".into(),
        bell: true,
        tz: TimeZone::utc(),
    }
}

/// 2025-11-26 12:00:00 UTC.
const NOON: u64 = 1_764_158_400_000;

fn msg(from: &str, to: &str, text: &str, id: u64) -> ChatMessage {
    ChatMessage {
        r#ref: None,
        user_id: uid(from),
        message: text.into(),
        to: to.parse().unwrap(),
        id,
        ts: NOON + id * 60_000,
    }
}

fn logged_in_with(pending: Vec<ChatMessage>) -> (App, Vec<Action>) {
    let mut app = App::new(settings(), Some("alice"));
    app.login_with("alice", "secret");
    let actions = app.update(Event::Net(NetEvent::LoggedIn {
        user: uid("alice"),
        pending,
        at_ms: NOON,
    }));
    (app, actions)
}

fn logged_in() -> App {
    let mut app = logged_in_with(Vec::new()).0;
    reply(
        &mut app,
        Reply::List {
            r#ref: None,
            list: vec![uid("alice"), uid("bob")],
        },
    );
    app
}

fn reply(app: &mut App, reply: Reply) -> Vec<Action> {
    app.update(Event::Net(NetEvent::Reply { reply, at_ms: NOON }))
}

fn messages(app: &mut App, msgs: Vec<ChatMessage>) -> Vec<Action> {
    reply(
        app,
        Reply::Message {
            r#ref: None,
            messages: msgs,
        },
    )
}

/// A key, and the actions it leads to with the refs of commands taken off (the tests of
/// refs look at them: `sent_with_refs`).
fn key(app: &mut App, code: KeyCode) -> Vec<Action> {
    without_refs(app.update(Event::Key(KeyEvent::new(code, KeyModifiers::NONE))))
}

fn without_refs(actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .map(|a| match a {
            Action::Net(NetRequest::Send(r)) => Action::Net(NetRequest::Send(r.command.into())),
            other => other,
        })
        .collect()
}

/// A command as sent, with its ref.
fn sent(command: Command, r: u64) -> Action {
    Action::Net(NetRequest::Send(Request::with_ref(command, Ref::Number(r))))
}

/// The history request for the newest page of a conversation.
fn latest(with: &str, r: u64) -> Action {
    sent(
        Command::History {
            with: with.parse().unwrap(),
            anchor: None,
            limit: Some(PageLimit::new(50).unwrap()),
        },
        r,
    )
}

fn ctrl(app: &mut App, c: char) -> Vec<Action> {
    app.update(Event::Key(KeyEvent::new(
        KeyCode::Char(c),
        KeyModifiers::CONTROL,
    )))
}

fn alt(app: &mut App, c: char) -> Vec<Action> {
    app.update(Event::Key(KeyEvent::new(
        KeyCode::Char(c),
        KeyModifiers::ALT,
    )))
}

fn type_str(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn enter(app: &mut App, line: &str) -> Vec<Action> {
    type_str(app, line);
    key(app, KeyCode::Enter)
}

fn send_action(to: Recipient, text: &str) -> Action {
    Action::Net(NetRequest::Send(
        Command::send(to, text.parse().unwrap()).into(),
    ))
}

fn names(app: &App) -> Vec<(String, usize, bool)> {
    app.conversations
        .iter()
        .map(|c| (c.id.name().to_owned(), c.unread, c.highlight))
        .collect()
}

fn status(app: &App) -> Option<&str> {
    app.status.as_ref().map(|s| s.text.as_str())
}

#[test]
fn login_with_known_password_asks_the_network() {
    let mut app = App::new(settings(), Some("alice"));
    let actions = app.login_with("alice", "secret");
    assert_eq!(
        actions,
        [Action::Net(NetRequest::Login {
            user: uid("alice"),
            password: Password::new("secret").unwrap(),
        })]
    );
    assert!(app.login.busy);
    assert_eq!(app.connection, Connection::Connecting);
    assert_eq!(app.screen, Screen::Login);
}

#[test]
fn failed_login_shows_the_reason_and_allows_another_try() {
    let mut app = App::new(settings(), Some("alice"));
    app.login_with("alice", "wrong");
    app.update(Event::Net(NetEvent::LoginFailed {
        reason: "401: bad user id or password".into(),
    }));
    assert_eq!(app.screen, Screen::Login);
    assert_eq!(
        app.login.error.as_deref(),
        Some("401: bad user id or password")
    );
    assert!(!app.login.busy);
    assert!(app.login.password.is_empty());
    assert_eq!(app.login.focus, LoginField::Password);

    type_str(&mut app, "right");
    let actions = key(&mut app, KeyCode::Enter);
    assert_eq!(
        actions,
        [Action::Net(NetRequest::Login {
            user: uid("alice"),
            password: Password::new("right").unwrap(),
        })]
    );
}

#[test]
fn login_form_validates_before_sending() {
    let mut app = App::new(settings(), None);
    assert_eq!(app.login.focus, LoginField::User);
    type_str(&mut app, "bad name");
    assert_eq!(key(&mut app, KeyCode::Enter), []);
    // Enter on the user field with no password moves to the password field.
    assert_eq!(app.login.focus, LoginField::Password);
    type_str(&mut app, "pw");
    assert_eq!(key(&mut app, KeyCode::Enter), []);
    assert!(
        app.login
            .error
            .as_deref()
            .unwrap()
            .starts_with("invalid user id")
    );
    assert_eq!(app.login.focus, LoginField::User);
    assert_eq!(
        key(&mut app, KeyCode::Esc),
        [Action::Net(NetRequest::Exit), Action::Quit]
    );
}

#[test]
fn pending_messages_land_in_their_conversations_unread() {
    let (app, actions) = logged_in_with(vec![
        msg("bob", "alice", "are you there?", 1),
        msg("carol", "alice", "hi", 2),
        msg("bob", "alice", "ping", 3),
    ]);
    assert_eq!(app.screen, Screen::Chat);
    assert_eq!(app.connection, Connection::Connected);
    assert_eq!(
        names(&app),
        [
            ("all".into(), 0, false),
            ("bob".into(), 2, true),
            ("carol".into(), 1, true),
        ]
    );
    assert_eq!(app.active, 0);
    // Three private messages ring three times, and the online list is asked for.
    assert_eq!(
        actions,
        [
            Action::Bell,
            Action::Bell,
            Action::Bell,
            sent(Command::List, 1),
            latest("*", 2),
            latest("bob", 3),
            latest("carol", 4),
        ]
    );
}

#[test]
fn private_message_from_someone_new_opens_a_conversation_and_rings() {
    let mut app = logged_in();
    let actions = messages(&mut app, vec![msg("dave", "alice", "psst", 1)]);
    assert_eq!(actions, [Action::Bell]);
    assert_eq!(
        names(&app),
        [("all".into(), 0, false), ("dave".into(), 1, true),]
    );
    let entry = &app.conversations[1].msgs.entries()[0];
    assert_eq!(entry.text, "psst");
    assert_eq!(
        entry.kind,
        EntryKind::Chat {
            from: uid("dave"),
            own: false,
            mention: false,
        }
    );
    assert_eq!(entry.ts_ms, NOON + 60_000);
}

#[test]
fn no_bell_when_turned_off() {
    let mut app = logged_in();
    app.settings.bell = false;
    assert_eq!(
        messages(&mut app, vec![msg("dave", "alice", "psst", 1)]),
        []
    );
    assert!(app.conversations[1].highlight);
}

#[test]
fn a_line_naming_me_rings_and_marks_its_conversation() {
    let mut app = logged_in();
    app.open_query(uid("bob"));
    let actions = messages(
        &mut app,
        vec![
            msg("bob", "*", "where is @Alice?", 1),
            msg("bob", "*", "alicea is not me", 2),
            msg("bob", "*", "nobody", 3),
        ],
    );
    assert_eq!(actions, [Action::Bell]);
    assert_eq!(app.conversations[0].unread, 3);
    assert!(app.conversations[0].highlight);
    let mentions: Vec<bool> = app.conversations[0]
        .msgs
        .entries()
        .iter()
        .map(|e| matches!(e.kind, EntryKind::Chat { mention: true, .. }))
        .collect();
    assert_eq!(mentions, [true, false, false]);
}

#[test]
fn public_message_in_the_active_conversation_is_not_unread() {
    let mut app = logged_in();
    assert_eq!(messages(&mut app, vec![msg("bob", "*", "hi all", 1)]), []);
    assert_eq!(names(&app), [("all".into(), 0, false)]);
    assert_eq!(app.conversations[0].msgs.entries().len(), 1);
}

#[test]
fn sent_text_stays_in_the_input_until_the_server_echoes_it() {
    let mut app = logged_in();
    let actions = enter(&mut app, "hello everyone");
    assert_eq!(
        actions,
        [send_action(Recipient::Everyone, "hello everyone")]
    );
    assert_eq!(app.input.text(), "hello everyone");
    assert_eq!(app.awaiting_echo(), 1);
    assert!(app.conversations[0].msgs.entries().is_empty());

    messages(&mut app, vec![msg("alice", "*", "hello everyone", 7)]);
    assert_eq!(app.input.text(), "");
    assert_eq!(app.awaiting_echo(), 0);
    assert_eq!(app.input.history(), ["hello everyone"]);
    assert_eq!(
        app.conversations[0].msgs.entries()[0].kind,
        EntryKind::Chat {
            from: uid("alice"),
            own: true,
            mention: false,
        }
    );
}

#[test]
fn a_fail_reply_is_shown_and_the_input_kept() {
    let mut app = logged_in();
    enter(&mut app, "/msg carol hi");
    reply(
        &mut app,
        Reply::fail(ErrorCode::NotFound, "no such user: carol"),
    );
    assert_eq!(status(&app), Some("404: no such user: carol"));
    assert!(app.status.as_ref().unwrap().error);
    assert_eq!(app.input.text(), "/msg carol hi");
    assert_eq!(app.awaiting_echo(), 0);
}

#[test]
fn over_140_characters_is_refused_with_the_reason() {
    let mut app = logged_in();
    let long = "é".repeat(141);
    type_str(&mut app, &long);
    assert_eq!(app.chars_left(), Some(-1));
    assert_eq!(key(&mut app, KeyCode::Enter), []);
    assert_eq!(status(&app), Some("not sent: 141 > 140 characters (413)"));
    assert_eq!(app.input.text(), long);
}

#[test]
fn chars_left_counts_only_the_text_sent() {
    let mut app = logged_in();
    type_str(&mut app, "/msg bob 漢字");
    assert_eq!(app.chars_left(), Some(138));
    app.input.set_text("/query bob");
    assert_eq!(app.chars_left(), None);
    app.input.set_text("//slash");
    assert_eq!(app.chars_left(), Some(134));
}

#[test]
fn text_in_a_private_conversation_goes_to_the_peer() {
    let mut app = logged_in();
    enter(&mut app, "/query bob");
    assert_eq!(app.active, 1);
    assert_eq!(app.input.text(), "");
    let actions = enter(&mut app, "just us");
    assert_eq!(
        actions,
        [send_action(Recipient::User(uid("bob")), "just us")]
    );
    // The echo of our private message is filed under the recipient.
    messages(&mut app, vec![msg("alice", "bob", "just us", 3)]);
    assert_eq!(app.conversations[1].msgs.entries().len(), 1);
    assert_eq!(app.input.text(), "");
}

#[test]
fn commands() {
    let mut app = logged_in();
    assert_eq!(
        enter(&mut app, "/msg bob hi there"),
        [
            send_action(Recipient::User(uid("bob")), "hi there"),
            // The conversation opened: its newest history.
            without_refs(vec![latest("bob", 0)]).remove(0),
        ]
    );
    assert_eq!(names(&app).len(), 2, "/msg opens the conversation");
    assert_eq!(app.active, 0, "/msg does not switch");
    messages(&mut app, vec![msg("alice", "bob", "hi there", 1)]);
    assert_eq!(app.input.text(), "");
    assert_eq!(
        names(&app)[1],
        ("bob".into(), 0, false),
        "our own line is not unread"
    );

    assert_eq!(
        enter(&mut app, "/list"),
        [Action::Net(NetRequest::Send(Command::List.into()))]
    );
    reply(
        &mut app,
        Reply::List {
            r#ref: None,
            list: vec![uid("bob"), uid("alice")],
        },
    );
    let last = app.conversations[0].msgs.entries().back().unwrap();
    assert_eq!(last.text, "online (2): alice, bob");
    assert_eq!(last.kind, EntryKind::Info);

    assert_eq!(enter(&mut app, "/clear"), []);
    assert!(app.conversations[0].msgs.entries().is_empty());

    assert_eq!(enter(&mut app, "/help"), []);
    assert!(app.show_help);
    key(&mut app, KeyCode::Esc);
    assert!(!app.show_help);

    assert_eq!(enter(&mut app, "/dance now"), []);
    assert_eq!(
        status(&app),
        Some("unknown command /dance: /help lists the commands (start with // to send a /)")
    );
    assert_eq!(app.input.text(), "/dance now");
    app.input.clear();

    assert_eq!(
        enter(&mut app, "//dance"),
        [send_action(Recipient::Everyone, "/dance")]
    );
    messages(&mut app, vec![msg("alice", "*", "/dance", 2)]);
    assert_eq!(app.input.text(), "");

    assert_eq!(enter(&mut app, "/msg bob"), []);
    assert_eq!(status(&app), Some("usage: /msg NAME TEXT"));
    app.input.clear();

    assert_eq!(
        enter(&mut app, "/quit"),
        [Action::Net(NetRequest::Exit), Action::Quit]
    );
}

#[test]
fn close_removes_a_private_conversation() {
    let mut app = logged_in();
    enter(&mut app, "/query bob");
    enter(&mut app, "/close");
    assert_eq!(names(&app), [("all".into(), 0, false)]);
    assert_eq!(app.active, 0);
    enter(&mut app, "/close");
    assert_eq!(
        status(&app),
        Some("the public conversation cannot be closed")
    );
}

#[test]
fn switching_conversations_clears_their_marks() {
    let mut app = logged_in();
    messages(
        &mut app,
        vec![msg("bob", "alice", "1", 1), msg("carol", "alice", "2", 2)],
    );
    alt(&mut app, '3');
    assert_eq!(app.active, 2);
    assert_eq!(names(&app)[2], ("carol".into(), 0, false));
    ctrl(&mut app, 'n');
    assert_eq!(app.active, 0);
    ctrl(&mut app, 'p');
    assert_eq!(app.active, 2);
    ctrl(&mut app, 'p');
    assert_eq!(app.active, 1);
    assert_eq!(names(&app)[1], ("bob".into(), 0, false));
    alt(&mut app, '9');
    assert_eq!(app.active, 1, "no conversation 9: nothing changes");
}

#[test]
fn presence_keeps_the_users_panel_live() {
    let mut app = logged_in();
    app.open_query(uid("carol"));
    reply(
        &mut app,
        Reply::Joined {
            user_id: uid("carol"),
        },
    );
    reply(
        &mut app,
        Reply::Joined {
            user_id: uid("Aaron"),
        },
    );
    let online: Vec<&str> = app.online.iter().map(UserId::as_str).collect();
    assert_eq!(online, ["Aaron", "alice", "bob", "carol"]);
    reply(
        &mut app,
        Reply::Left {
            user_id: uid("BOB"),
        },
    );
    let online: Vec<&str> = app.online.iter().map(UserId::as_str).collect();
    assert_eq!(online, ["Aaron", "alice", "carol"]);
    let public: Vec<&str> = app.conversations[0]
        .msgs
        .entries()
        .iter()
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(public, ["carol joined", "Aaron joined", "BOB left"]);
    // Carol's own conversation hears about her too; notices are not unread messages.
    assert_eq!(app.conversations[1].msgs.entries().len(), 1);
    assert_eq!(app.conversations[0].unread, 0);
}

#[test]
fn scrolled_up_view_stays_put_and_counts_new_messages() {
    let mut app = logged_in();
    app.update(Event::Resize {
        width: 80,
        height: 12,
    });
    let page = usize::from(app.layout().messages.height) - 1;
    let batch: Vec<ChatMessage> = (1..=30)
        .map(|i| msg("bob", "*", &format!("line {i}"), i))
        .collect();
    messages(&mut app, batch);
    key(&mut app, KeyCode::PageUp);
    assert_eq!(app.conversations[0].msgs.scroll(), page);
    messages(
        &mut app,
        vec![
            msg("bob", "*", "new one", 31),
            msg("bob", "*", "new two", 32),
        ],
    );
    let conv = &app.conversations[0];
    assert_eq!(conv.msgs.scroll(), page + 2, "view kept on the same rows");
    assert_eq!(conv.msgs.new_below(), 2);
    key(&mut app, KeyCode::PageDown);
    key(&mut app, KeyCode::PageDown);
    let conv = &app.conversations[0];
    assert_eq!((conv.msgs.scroll(), conv.msgs.new_below()), (0, 0));
    // Scrolling up stops at the oldest row (30 messages, 2 new, 1 date line).
    for _ in 0..20 {
        key(&mut app, KeyCode::PageUp);
    }
    let max = 33 - usize::from(app.layout().messages.height);
    assert_eq!(app.conversations[0].msgs.scroll(), max);
}

#[test]
fn mouse_wheel_and_clicks() {
    let mut app = logged_in();
    app.update(Event::Resize {
        width: 100,
        height: 20,
    });
    messages(
        &mut app,
        (1..=40)
            .map(|i| msg("bob", "*", &format!("line {i}"), i))
            .collect(),
    );
    let mouse = |kind, column, row| {
        Event::Mouse(MouseEvent {
            kind,
            column,
            row,
            modifiers: KeyModifiers::NONE,
        })
    };
    app.update(mouse(MouseEventKind::ScrollUp, 40, 5));
    assert_eq!(app.conversations[0].msgs.scroll(), 3);
    app.update(mouse(MouseEventKind::ScrollDown, 40, 5));
    assert_eq!(app.conversations[0].msgs.scroll(), 0);
    // The users panel: header row 1, then alice on row 2, bob on row 3.
    let users = app.layout().users.unwrap();
    app.update(mouse(
        MouseEventKind::Down(MouseButton::Left),
        users.x + 1,
        users.y + 2,
    ));
    assert_eq!(app.active, 1);
    assert_eq!(app.active_conversation().id, ConvId::Private(uid("bob")));
    // The sidebar: row 0 is "all".
    let sidebar = app.layout().sidebar.unwrap();
    app.update(mouse(
        MouseEventKind::Down(MouseButton::Left),
        sidebar.x + 2,
        sidebar.y,
    ));
    assert_eq!(app.active, 0);
}

#[test]
fn tab_completes_users_and_commands() {
    let mut app = logged_in();
    type_str(&mut app, "/q");
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.input.text(), "/query ");
    type_str(&mut app, "b");
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.input.text(), "/query bob ");
    app.input.clear();
    type_str(&mut app, "B");
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.input.text(), "bob: ");
}

#[test]
fn editing_keys_reach_the_input_line() {
    let mut app = logged_in();
    type_str(&mut app, "one two three");
    ctrl(&mut app, 'w');
    assert_eq!(app.input.text(), "one two ");
    ctrl(&mut app, 'a');
    ctrl(&mut app, 'k');
    assert_eq!(app.input.text(), "");
    enter(&mut app, "hello");
    messages(&mut app, vec![msg("alice", "*", "hello", 1)]);
    key(&mut app, KeyCode::Up);
    assert_eq!(app.input.text(), "hello");
    key(&mut app, KeyCode::Down);
    assert_eq!(app.input.text(), "");
    app.update(Event::Paste("multi\nline".into()));
    assert_eq!(app.input.text(), "multi line");
}

#[test]
fn reconnection_keeps_the_screen() {
    let mut app = logged_in();
    messages(&mut app, vec![msg("bob", "*", "before", 1)]);
    enter(&mut app, "unsent");
    app.update(Event::Net(NetEvent::Disconnected {
        reason: "connection closed by the server".into(),
        at_ms: NOON,
    }));
    assert_eq!(app.connection, Connection::Reconnecting { in_secs: 0 });
    app.update(Event::Net(NetEvent::Reconnecting { in_secs: 4 }));
    assert_eq!(app.connection, Connection::Reconnecting { in_secs: 4 });
    assert!(app.online.is_empty());
    // Sending while away is refused, the text kept.
    assert_eq!(key(&mut app, KeyCode::Enter), []);
    assert_eq!(
        status(&app),
        Some("not connected: the message is kept, send it again later")
    );
    let actions = app.update(Event::Net(NetEvent::LoggedIn {
        user: uid("alice"),
        pending: vec![],
        at_ms: NOON,
    }));
    // The online list, and what was said in public after the last message held.
    assert_eq!(
        actions,
        [
            sent(Command::List, 4),
            sent(
                Command::History {
                    with: Recipient::Everyone,
                    anchor: Some(Anchor::After(1)),
                    limit: Some(PageLimit::new(200).unwrap()),
                },
                5
            ),
        ]
    );
    assert_eq!(app.connection, Connection::Connected);
    // The error of the lost connection is over.
    assert_eq!(status(&app), None);
    assert_eq!(app.input.text(), "unsent");
    let texts: Vec<&str> = app.conversations[0]
        .msgs
        .entries()
        .iter()
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "before",
            "connection lost: connection closed by the server",
            "reconnected"
        ]
    );
}

#[test]
fn taken_over_goes_offline_with_the_reason() {
    let mut app = logged_in();
    reply(
        &mut app,
        Reply::fail(ErrorCode::Conflict, "logged in elsewhere"),
    );
    assert_eq!(status(&app), Some("409: logged in elsewhere"));
    app.update(Event::Net(NetEvent::Offline {
        reason: "logged in elsewhere (409); not reconnecting".into(),
        at_ms: NOON,
    }));
    assert_eq!(
        app.connection,
        Connection::Offline {
            reason: "logged in elsewhere (409); not reconnecting".into()
        }
    );
    assert_eq!(
        status(&app),
        Some("offline: logged in elsewhere (409); not reconnecting")
    );
}

#[test]
fn network_text_is_sanitized() {
    let mut app = logged_in();
    messages(
        &mut app,
        vec![msg("bob", "*", "x\u{1b}[2J\u{7}y\u{202e}", 1)],
    );
    assert_eq!(app.conversations[0].msgs.entries()[0].text, "x�[2J�y�");
}

#[test]
fn scrollback_is_bounded() {
    let mut app = logged_in();
    let batch: Vec<ChatMessage> = (1..=(MAX_ENTRIES as u64 + 10))
        .map(|i| msg("bob", "*", "x", i))
        .collect();
    messages(&mut app, batch);
    assert_eq!(app.conversations[0].msgs.entries().len(), MAX_ENTRIES);
}

#[test]
fn f2_picks_a_user_from_the_online_list() {
    let mut app = logged_in();
    reply(
        &mut app,
        Reply::Joined {
            user_id: uid("carol"),
        },
    );
    key(&mut app, KeyCode::F(2));
    assert_eq!(app.users_cursor, Some(0));
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    assert_eq!(app.users_cursor, Some(2), "stops at the last user");
    // Carol leaves: the selection stays within the list.
    reply(
        &mut app,
        Reply::Left {
            user_id: uid("carol"),
        },
    );
    assert_eq!(app.users_cursor, Some(1));
    type_str(&mut app, "x");
    assert_eq!(
        app.input.text(),
        "",
        "typing does not reach the input meanwhile"
    );
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.users_cursor, None);
    assert_eq!(app.active_conversation().id, ConvId::Private(uid("bob")));

    key(&mut app, KeyCode::F(2));
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.users_cursor, None);
    assert_eq!(app.active, 1);
}

#[test]
fn typing_while_waiting_for_the_echo_starts_the_next_line() {
    let mut app = logged_in();
    assert_eq!(
        enter(&mut app, "first"),
        [send_action(Recipient::Everyone, "first")]
    );
    assert!(app.input_locked());
    // Typed (and sent) before the echo: held back, the kept line untouched.
    assert_eq!(enter(&mut app, "second"), []);
    app.update(Event::Paste(" pasted".into()));
    assert_eq!(app.input.text(), "first");
    // The echo frees the line: what was typed is applied, sending the second line.
    let actions = messages(&mut app, vec![msg("alice", "*", "first", 1)]);
    assert_eq!(
        actions,
        [sent(
            Command::send(Recipient::Everyone, "second".parse().unwrap()),
            4
        )]
    );
    assert_eq!(app.input.text(), "second");
    // The paste waits for the second echo.
    messages(&mut app, vec![msg("alice", "*", "second", 2)]);
    assert_eq!(app.input.text(), " pasted");
    assert_eq!(app.input.history(), ["first", "second"]);
}

#[test]
fn a_refused_line_with_typing_after_it_goes_to_the_history() {
    let mut app = logged_in();
    enter(&mut app, "/msg nobody hi");
    type_str(&mut app, "next");
    reply(
        &mut app,
        Reply::fail(ErrorCode::NotFound, "no such user: nobody"),
    );
    assert_eq!(app.input.text(), "next");
    assert_eq!(app.input.history(), ["/msg nobody hi"]);
    assert_eq!(
        status(&app),
        Some("404: no such user: nobody (the line is in the history: Up)")
    );
}

#[test]
fn esc_stops_waiting_for_a_late_echo() {
    let mut app = logged_in();
    enter(&mut app, "hello");
    type_str(&mut app, "!");
    key(&mut app, KeyCode::Esc);
    assert!(!app.input_locked());
    assert_eq!(app.input.text(), "hello!");
}

#[test]
fn ctrl_l_repaints() {
    let mut app = logged_in();
    assert_eq!(ctrl(&mut app, 'l'), [Action::Redraw]);
}

#[test]
fn help_scrolls_within_its_text() {
    let mut app = logged_in();
    app.update(Event::Resize {
        width: 40,
        height: 12,
    });
    key(&mut app, KeyCode::F(1));
    for _ in 0..100 {
        key(&mut app, KeyCode::Down);
    }
    let max = layout::help(&HELP, Rect::new(0, 0, 40, 12)).max_scroll;
    assert!(max > 0);
    assert_eq!(app.help_scroll, max);
    key(&mut app, KeyCode::Up);
    assert_eq!(app.help_scroll, max - 1);
    key(&mut app, KeyCode::Esc);
    assert_eq!((app.show_help, app.help_scroll), (false, 0));
}

#[test]
fn a_click_on_the_users_panel_after_f2_scrolled_it_opens_the_user_shown() {
    let mut app = logged_in();
    app.update(Event::Resize {
        width: 100,
        height: 20,
    });
    let list: Vec<UserId> = (0..30).map(|i| uid(&format!("user{i:02}"))).collect();
    reply(&mut app, Reply::List { r#ref: None, list });
    // F2 then End: the selection is the last user, so the panel shows the end of the list.
    key(&mut app, KeyCode::F(2));
    key(&mut app, KeyCode::End);
    let users = app.layout().users.unwrap();
    let rows = usize::from(users.height) - 1;
    let first = 30 - rows;
    assert!(first > 0, "the panel must be scrolled for this test");
    // The first name row shows `online[first]`: a click there opens that user.
    app.update(Event::Mouse(MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column: users.x + 1,
        row: users.y + 1,
        modifiers: KeyModifiers::NONE,
    }));
    assert_eq!(
        app.active_conversation().id,
        ConvId::Private(uid(&format!("user{first:02}")))
    );
}

#[test]
fn every_command_completed_and_listed_in_the_help_is_understood() {
    assert_eq!(
        command_names().collect::<Vec<_>>(),
        [
            "/msg", "/query", "/list", "/clear", "/close", "/help", "/quit"
        ]
    );
    for name in command_names() {
        let mut app = logged_in();
        enter(&mut app, name);
        assert!(
            !status(&app).is_some_and(|s| s.starts_with("unknown command")),
            "{name} is not understood"
        );
    }
}

/// A `ts` chrono cannot represent in local time, from a misbehaving server, neither panics
/// (chrono's `naive_local` did, for the last representable instant east of UTC) nor shows
/// a made-up time: the time reads "?" and no date line is drawn for it.
#[test]
fn an_out_of_range_timestamp_shows_as_a_question_mark() {
    let east = chrono::FixedOffset::east_opt(2 * 3600).expect("+02:00 is a valid offset");
    let mut app = App::new(
        Settings {
            tz: TimeZone::Fixed(east),
            ..settings()
        },
        Some("alice"),
    );
    app.login_with("alice", "secret");
    app.update(Event::Net(NetEvent::LoggedIn {
        user: uid("alice"),
        pending: vec![],
        at_ms: NOON,
    }));
    let last_utc = u64::try_from(chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis())
        .expect("chrono's last instant is after 1970");
    let tss = [last_utc, i64::MAX as u64 - 1, i64::MAX as u64, u64::MAX];
    let batch = tss
        .iter()
        .zip(1..)
        .map(|(&ts, id)| ChatMessage {
            ts,
            ..msg("bob", "*", "late", id)
        })
        .collect();
    messages(&mut app, batch);
    let msgs = &app.conversations[0].msgs;
    assert_eq!(msgs.entries().len(), tss.len());
    for (i, ts) in tss.iter().enumerate() {
        let layout = msgs.entry_layout(i, 80).expect("an entry");
        assert_eq!(
            (layout.date, layout.time.as_str()),
            (None, "?     "),
            "ts {ts}"
        );
        assert_eq!(layout.text, ["late"]);
    }
}

// ---- refs, history, acks (protocol 1.1) -------------------------------------------------

/// Presses a key and returns the actions as they are, refs included.
fn press(app: &mut App, code: KeyCode) -> Vec<Action> {
    app.update(Event::Key(KeyEvent::new(code, KeyModifiers::NONE)))
}

fn history(
    app: &mut App,
    r: u64,
    with: &str,
    messages: Vec<ChatMessage>,
    more: bool,
) -> Vec<Action> {
    reply(
        app,
        Reply::History {
            r#ref: Some(Ref::Number(r)),
            with: with.parse().unwrap(),
            messages,
            more,
        },
    )
}

fn history_request(with: &str, anchor: Option<Anchor>, limit: u64, r: u64) -> Action {
    sent(
        Command::History {
            with: with.parse().unwrap(),
            anchor,
            limit: Some(PageLimit::new(limit).unwrap()),
        },
        r,
    )
}

fn texts(app: &App, index: usize) -> Vec<String> {
    app.conversations[index]
        .msgs
        .entries()
        .iter()
        .map(|e| e.text.clone())
        .collect()
}

fn fail_ref(app: &mut App, r: u64, code: ErrorCode, reason: &str) -> Vec<Action> {
    reply(
        app,
        Reply::fail(code, reason).with_ref(Some(Ref::Number(r))),
    )
}

fn reconnect(app: &mut App, pending: Vec<ChatMessage>) -> Vec<Action> {
    app.update(Event::Net(NetEvent::Disconnected {
        reason: "connection reset".into(),
        at_ms: NOON,
    }));
    app.update(Event::Net(NetEvent::LoggedIn {
        user: uid("alice"),
        pending,
        at_ms: NOON,
    }))
}

const LOST: &str = "connection lost: connection reset";

#[test]
fn a_refused_send_is_shown_against_it_found_by_its_ref() {
    let mut app = logged_in();
    type_str(&mut app, "/msg carol hi");
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        [
            sent(
                Command::send(Recipient::User(uid("carol")), "hi".parse().unwrap()),
                3
            ),
            latest("carol", 4),
        ]
    );
    // Someone else's refusal (another ref) is not this line's.
    fail_ref(&mut app, 99, ErrorCode::TooLarge, "not yours");
    assert!(app.input_locked());
    fail_ref(&mut app, 3, ErrorCode::NotFound, "no such user: carol");
    fail_ref(&mut app, 4, ErrorCode::NotFound, "no such user: carol");
    assert!(!app.input_locked());
    assert_eq!(app.input.text(), "/msg carol hi");
    assert_eq!(
        status(&app),
        Some("not sent to carol: 404: no such user: carol")
    );
    assert_eq!(names(&app)[1], ("carol".into(), 0, false));
    assert_eq!(texts(&app, 1), ["not sent (404: no such user: carol): hi"]);
    assert_eq!(
        app.conversations[1].msgs.entries()[0].kind,
        EntryKind::Error
    );
}

#[test]
fn the_echo_is_found_by_its_ref() {
    let (mut app, _) = logged_in_with(vec![]);
    // The server answers with refs.
    reply(
        &mut app,
        Reply::List {
            r#ref: Some(Ref::Number(1)),
            list: vec![uid("alice")],
        },
    );
    type_str(&mut app, "same words");
    press(&mut app, KeyCode::Enter);
    // Our own line from another client of ours, same text, no ref: not the echo.
    messages(&mut app, vec![msg("alice", "*", "same words", 1)]);
    assert!(app.input_locked());
    let echo = ChatMessage {
        r#ref: Some(Ref::Number(3)),
        ..msg("alice", "*", "same words", 2)
    };
    messages(&mut app, vec![echo]);
    assert!(!app.input_locked());
    assert_eq!(app.input.text(), "");
}

#[test]
fn a_refused_list_names_the_command() {
    let mut app = logged_in();
    type_str(&mut app, "/list");
    assert_eq!(press(&mut app, KeyCode::Enter), [sent(Command::List, 3)]);
    fail_ref(&mut app, 3, ErrorCode::RateLimited, "slow down");
    assert_eq!(status(&app), Some("/list: 429: slow down"));
}

#[test]
fn the_first_login_asks_for_the_newest_pages_and_merges_them_without_doubles() {
    let (mut app, actions) = logged_in_with(vec![msg("bob", "alice", "while away", 5)]);
    assert_eq!(
        actions,
        [
            Action::Bell,
            sent(Command::List, 1),
            latest("*", 2),
            latest("bob", 3)
        ]
    );
    // The page holds the pending message too: shown once, the older ones above it.
    let page = vec![
        msg("bob", "alice", "earlier", 2),
        msg("alice", "bob", "mine", 3),
        msg("bob", "alice", "while away", 5),
    ];
    assert_eq!(history(&mut app, 3, "bob", page, true), []);
    assert_eq!(texts(&app, 1), ["earlier", "mine", "while away"]);
    // Old history is not unread: the pending message alone is.
    assert_eq!(names(&app)[1], ("bob".into(), 1, true));
    assert_eq!(
        history(
            &mut app,
            2,
            "*",
            vec![msg("carol", "*", "old news", 1)],
            false
        ),
        []
    );
    assert_eq!(texts(&app, 0), ["old news"]);
    assert_eq!(names(&app)[0], ("all".into(), 0, false));
    // Refused at the first login (a server without history): nothing is missing.
    let (mut app, _) = logged_in_with(vec![]);
    fail_ref(
        &mut app,
        2,
        ErrorCode::BadRequest,
        "history is not available",
    );
    assert_eq!(texts(&app, 0), Vec::<String>::new());
    assert_eq!(status(&app), None);
}

#[test]
fn a_reconnection_fills_the_gap_page_after_page_in_id_order() {
    let mut app = logged_in();
    messages(&mut app, vec![msg("bob", "*", "before", 10)]);
    assert_eq!(
        reconnect(&mut app, vec![]),
        [
            sent(Command::List, 3),
            history_request("*", Some(Anchor::After(10)), 200, 4)
        ]
    );
    // A live message comes before the missed ones.
    messages(&mut app, vec![msg("carol", "*", "live", 500)]);
    let page: Vec<ChatMessage> = (11..=210)
        .map(|id| msg("bob", "*", &format!("missed {id}"), id))
        .collect();
    assert_eq!(
        history(&mut app, 4, "*", page, true),
        [history_request("*", Some(Anchor::After(210)), 200, 5)]
    );
    // The last page overlaps the live message: it is not shown twice.
    let page = vec![
        msg("bob", "*", "missed 211", 211),
        msg("carol", "*", "live", 500),
    ];
    assert_eq!(history(&mut app, 5, "*", page, false), []);
    let texts = texts(&app, 0);
    let mut expected = vec!["before".to_owned(), LOST.into(), "reconnected".into()];
    expected.extend((11..=211).map(|id| format!("missed {id}")));
    expected.push("live".into());
    assert_eq!(texts, expected);
    let ids: Vec<Option<u64>> = app.conversations[0]
        .msgs
        .entries()
        .iter()
        .map(|e| e.id)
        .collect();
    let mut expected_ids = vec![Some(10), None, None];
    expected_ids.extend((11..=211).map(Some));
    expected_ids.push(Some(500));
    assert_eq!(ids, expected_ids);
    // Only the online list is still unanswered.
    assert_eq!(app.requests.keys().copied().collect::<Vec<_>>(), [3]);
}

#[test]
fn a_gap_past_the_page_bound_gets_a_marker() {
    let mut app = logged_in();
    messages(&mut app, vec![msg("bob", "*", "before", 10)]);
    reconnect(&mut app, vec![]);
    // Pages of one message each, always with more: 20 pages, then a marker.
    for page in 0..20u64 {
        let id = 11 + page;
        let actions = history(
            &mut app,
            4 + page,
            "*",
            vec![msg("bob", "*", "m", id)],
            true,
        );
        if page < 19 {
            assert_eq!(
                actions,
                [history_request("*", Some(Anchor::After(id)), 200, 5 + page)]
            );
        } else {
            assert_eq!(actions, []);
        }
    }
    messages(&mut app, vec![msg("carol", "*", "newer", 1000)]);
    let texts = texts(&app, 0);
    assert_eq!(
        texts[texts.len() - 2..],
        [
            "… messages may be missing here … (more than 4000 messages)".to_owned(),
            "newer".into()
        ]
    );
}

#[test]
fn a_refused_gap_gets_a_marker_where_the_gap_is() {
    let mut app = logged_in();
    messages(&mut app, vec![msg("bob", "*", "before", 10)]);
    messages(&mut app, vec![msg("bob", "alice", "private before", 12)]);
    let actions = reconnect(&mut app, vec![]);
    assert_eq!(
        actions,
        [
            sent(Command::List, 3),
            history_request("*", Some(Anchor::After(10)), 200, 4),
            history_request("bob", Some(Anchor::After(12)), 200, 5),
        ]
    );
    messages(&mut app, vec![msg("carol", "*", "live", 500)]);
    fail_ref(
        &mut app,
        4,
        ErrorCode::BadRequest,
        "history is not available on this server yet",
    );
    assert_eq!(
        texts(&app, 0),
        [
            "before",
            LOST,
            "reconnected",
            "… messages may be missing here … (history: 400: history is not available on this server yet)",
            "live"
        ]
    );
    assert_eq!(
        app.conversations[0].msgs.entries()[3].kind,
        EntryKind::Error
    );
    // Not a status-bar error: the marker says it where it matters.
    assert_eq!(status(&app), None);
    // The private conversation caught up: missed messages are unread there.
    history(
        &mut app,
        5,
        "bob",
        vec![msg("bob", "alice", "missed", 13)],
        false,
    );
    assert_eq!(texts(&app, 1), ["private before", "missed"]);
    assert_eq!(names(&app)[1], ("bob".into(), 2, true));
}

#[test]
fn messages_delivered_again_are_not_shown_twice_and_the_gap_starts_before_them() {
    let mut app = logged_in();
    messages(&mut app, vec![msg("bob", "alice", "one", 5)]);
    alt(&mut app, '2');
    // The session ended before the ack: the login ack brings 5 again, with 9.
    let actions = reconnect(
        &mut app,
        vec![msg("bob", "alice", "one", 5), msg("bob", "alice", "two", 9)],
    );
    assert_eq!(
        actions,
        [
            Action::Bell,
            sent(Command::List, 3),
            latest("*", 4),
            history_request("bob", Some(Anchor::After(5)), 200, 5),
        ]
    );
    assert_eq!(texts(&app, 1), ["one", "two"]);
    assert_eq!(names(&app)[1], ("bob".into(), 1, true));
}

#[test]
fn page_up_at_the_top_loads_older_history_until_its_beginning() {
    let mut app = logged_in();
    messages(
        &mut app,
        vec![msg("bob", "*", "first", 40), msg("bob", "*", "second", 41)],
    );
    // Everything fits the pane: the top is shown, PageUp asks for older messages.
    assert_eq!(
        press(&mut app, KeyCode::PageUp),
        [history_request("*", Some(Anchor::Before(40)), 50, 3)]
    );
    assert_eq!(app.conversations[0].older, OlderHistory::Loading);
    // Once at a time.
    assert_eq!(press(&mut app, KeyCode::PageUp), []);
    let page = vec![msg("carol", "*", "older", 38), msg("carol", "*", "old", 39)];
    assert_eq!(history(&mut app, 3, "*", page, true), []);
    assert_eq!(app.conversations[0].older, OlderHistory::Idle);
    assert_eq!(texts(&app, 0), ["older", "old", "first", "second"]);
    assert_eq!(names(&app)[0], ("all".into(), 0, false));
    assert_eq!(
        press(&mut app, KeyCode::PageUp),
        [history_request("*", Some(Anchor::Before(38)), 50, 4)]
    );
    assert_eq!(
        history(
            &mut app,
            4,
            "*",
            vec![msg("dave", "*", "oldest", 37)],
            false
        ),
        []
    );
    assert_eq!(app.conversations[0].older, OlderHistory::Done);
    assert_eq!(
        texts(&app, 0),
        [
            "beginning of history",
            "oldest",
            "older",
            "old",
            "first",
            "second"
        ]
    );
    // The notice is dated like the oldest message: no date line of its own.
    let first = &app.conversations[0].msgs.entries()[0];
    assert_eq!(
        (first.ts_ms, &first.kind),
        (NOON + 37 * 60_000, &EntryKind::Info)
    );
    assert_eq!(press(&mut app, KeyCode::PageUp), []);
}

#[test]
fn page_up_below_the_top_only_scrolls_and_a_refusal_is_shown() {
    let mut app = logged_in();
    let many: Vec<ChatMessage> = (1..=100).map(|i| msg("bob", "*", "line", i)).collect();
    messages(&mut app, many);
    assert_eq!(press(&mut app, KeyCode::PageUp), []);
    assert!(!app.conversations[0].msgs.at_top());
    // Scrolled to the top, PageUp asks; a refusal lets it ask again later.
    for _ in 0..20 {
        press(&mut app, KeyCode::PageUp);
        if app.conversations[0].older == OlderHistory::Loading {
            break;
        }
    }
    assert_eq!(app.conversations[0].older, OlderHistory::Loading);
    let r = *app.requests.keys().last().unwrap();
    fail_ref(
        &mut app,
        r,
        ErrorCode::BadRequest,
        "history is not available",
    );
    assert_eq!(app.conversations[0].older, OlderHistory::Idle);
    assert_eq!(
        status(&app),
        Some("older messages: 400: history is not available")
    );
}

#[test]
fn acks_go_up_to_what_was_on_screen_one_per_drawing() {
    let mut app = logged_in();
    messages(&mut app, vec![msg("bob", "alice", "one", 5)]);
    messages(&mut app, vec![msg("carol", "alice", "two", 7)]);
    // Public messages and our own are not acknowledged.
    messages(&mut app, vec![msg("dave", "*", "public", 8)]);
    // "all" is shown: neither private message was on screen.
    assert_eq!(app.on_drawn(), []);
    // carol's 7 is shown, bob's 5 not: acking 7 would cover 5.
    alt(&mut app, '3');
    assert_eq!(app.on_drawn(), []);
    alt(&mut app, '2');
    assert_eq!(app.on_drawn(), [sent(Command::Ack { id: 7 }, 3)]);
    assert_eq!(app.on_drawn(), []);
    // A new one in the conversation shown, at its bottom: acked at the next drawing.
    messages(&mut app, vec![msg("bob", "alice", "three", 9)]);
    assert_eq!(app.on_drawn(), [sent(Command::Ack { id: 9 }, 4)]);
    // Scrolled up, the newest is not on screen; back at the bottom it is.
    let many: Vec<ChatMessage> = (10..60).map(|i| msg("alice", "bob", "mine", i)).collect();
    messages(&mut app, many);
    press(&mut app, KeyCode::PageUp);
    messages(&mut app, vec![msg("bob", "alice", "four", 61)]);
    assert_eq!(app.on_drawn(), []);
    press(&mut app, KeyCode::PageDown);
    press(&mut app, KeyCode::PageDown);
    assert_eq!(app.conversations[1].msgs.scroll(), 0);
    // Nor under the help overlay.
    app.show_help = true;
    assert_eq!(app.on_drawn(), []);
    app.show_help = false;
    assert_eq!(app.on_drawn(), [sent(Command::Ack { id: 61 }, 5)]);
    // A server without acks refuses: no more acks this session, and nothing to show.
    fail_ref(&mut app, 5, ErrorCode::BadRequest, "ack is not available");
    assert_eq!(status(&app), None);
    messages(&mut app, vec![msg("bob", "alice", "five", 62)]);
    assert_eq!(app.on_drawn(), []);
    // The next session acks again.
    reconnect(&mut app, vec![msg("bob", "alice", "five", 62)]);
    // (After the list, 6, and the catch-up of the three conversations, 7 to 9.)
    assert_eq!(app.on_drawn(), [sent(Command::Ack { id: 62 }, 10)]);
}

#[test]
fn a_conversation_opened_asks_for_its_newest_history() {
    let mut app = logged_in();
    type_str(&mut app, "/query carol");
    assert_eq!(press(&mut app, KeyCode::Enter), [latest("carol", 3)]);
    // Open already: nothing to ask.
    type_str(&mut app, "/query carol");
    assert_eq!(press(&mut app, KeyCode::Enter), []);
    // From the online list (F2, Enter on bob).
    press(&mut app, KeyCode::F(2));
    press(&mut app, KeyCode::Down);
    assert_eq!(press(&mut app, KeyCode::Enter), [latest("bob", 4)]);
    assert_eq!(app.active_conversation().id, ConvId::Private(uid("bob")));
    history(
        &mut app,
        4,
        "bob",
        vec![msg("bob", "alice", "last week", 2)],
        false,
    );
    assert_eq!(texts(&app, 2), ["last week"]);
    // Not connected: opened without asking.
    app.update(Event::Net(NetEvent::Disconnected {
        reason: "connection reset".into(),
        at_ms: NOON,
    }));
    type_str(&mut app, "/query dave");
    assert_eq!(press(&mut app, KeyCode::Enter), []);
}

#[test]
fn page_up_asks_nothing_older_when_the_scrollback_is_full() {
    let mut app = logged_in();
    let many: Vec<ChatMessage> = (1..=MAX_ENTRIES as u64)
        .map(|i| msg("bob", "*", "x", i))
        .collect();
    messages(&mut app, many);
    let rows = app.conversations[0].msgs.total_rows();
    app.conversations[0].msgs.scroll_up(rows);
    assert!(app.conversations[0].msgs.at_top());
    assert_eq!(press(&mut app, KeyCode::PageUp), []);
    assert_eq!(app.conversations[0].older, OlderHistory::Idle);
    assert_eq!(
        status(&app),
        Some("no older messages: the scrollback holds 5000 entries at most")
    );
}

#[test]
fn the_wheel_up_at_the_top_loads_older_history_too() {
    let mut app = logged_in();
    messages(&mut app, vec![msg("bob", "*", "only", 40)]);
    let wheel = Event::Mouse(MouseEvent {
        kind: MouseEventKind::ScrollUp,
        column: 40,
        row: 5,
        modifiers: KeyModifiers::NONE,
    });
    assert_eq!(
        app.update(wheel.clone()),
        [history_request("*", Some(Anchor::Before(40)), 50, 3)]
    );
    assert_eq!(app.update(wheel), []);
}
