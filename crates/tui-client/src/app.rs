//! The application state and its one update function.
//!
//! [`App`] is plain data: conversations, who is online, the input line, scroll positions,
//! the connection state. [`App::update`] applies one [`Event`] (a key, a mouse click, a
//! reply from the server…) and returns the [`Action`]s the event loop must carry out (send
//! a command, ring the bell, quit). It does no I/O and reads no clock: times come inside
//! the events, and the time zone is a [`Settings`] field, so tests are exact.

use std::collections::VecDeque;

use chrono::{DateTime, FixedOffset, Local, NaiveDateTime};
use crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEventKind,
};
use ratatui::layout::{Position, Rect};
use simpletextim_proto::types::MAX_MESSAGE_CHARS;
use simpletextim_proto::{
    ChatMessage, Command, ErrorCode, Failure, MessageText, Password, Recipient, Reply, UserId,
};

use crate::event::{Event, NetEvent, NetRequest};
use crate::input::LineEditor;
use crate::text::sanitize;
use crate::ui;

/// Most entries kept per conversation; older ones are dropped.
pub const MAX_ENTRIES: usize = 5000;

/// Rows the mouse wheel scrolls.
const WHEEL_ROWS: usize = 3;

/// The commands the input line understands, for `/help` and Tab completion.
pub const COMMANDS: [&str; 7] = [
    "/msg", "/query", "/list", "/clear", "/close", "/help", "/quit",
];

/// How local times are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeZone {
    /// The machine's time zone.
    Local,
    /// A fixed offset from UTC (tests use this to stay independent of the machine).
    Fixed(FixedOffset),
}

impl TimeZone {
    /// UTC.
    pub fn utc() -> TimeZone {
        TimeZone::Fixed(chrono::Offset::fix(&chrono::Utc))
    }

    /// The local date and time of a Unix-milliseconds timestamp.
    pub fn local(self, ts_ms: u64) -> NaiveDateTime {
        let utc = DateTime::from_timestamp_millis(i64::try_from(ts_ms).unwrap_or(i64::MAX))
            .unwrap_or_default();
        match self {
            TimeZone::Local => utc.with_timezone(&Local).naive_local(),
            TimeZone::Fixed(offset) => utc.with_timezone(&offset).naive_local(),
        }
    }
}

/// What the person chose on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The server address, for the status bar.
    pub server: String,
    /// Whether to ring the terminal bell on private messages and mentions.
    pub bell: bool,
    /// How to show times.
    pub tz: TimeZone,
}

/// A conversation's identity: the public one, or one per private peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvId {
    /// "all": public messages.
    Public,
    /// Private messages with this user.
    Private(UserId),
}

impl ConvId {
    /// The name shown in the sidebar and prompt.
    pub fn name(&self) -> &str {
        match self {
            ConvId::Public => "all",
            ConvId::Private(u) => u.as_str(),
        }
    }
}

/// What an entry of a conversation is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A chat message.
    Chat {
        /// The sender.
        from: UserId,
        /// Sent by us.
        own: bool,
        /// Names us (and is not ours).
        mention: bool,
    },
    /// Someone logged in.
    Joined(UserId),
    /// Someone left.
    Left(UserId),
    /// A notice from the client (online list, reconnection…).
    Info,
    /// A problem (connection lost…).
    Error,
}

/// One line of a conversation, before wrapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When, in Unix milliseconds.
    pub ts_ms: u64,
    /// What it is.
    pub kind: EntryKind,
    /// The text, already sanitized for the terminal.
    pub text: String,
}

/// A conversation: its entries and what the person has seen of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Which conversation.
    pub id: ConvId,
    /// Its entries, oldest first.
    pub entries: Vec<Entry>,
    /// Messages that arrived while it was not shown.
    pub unread: usize,
    /// A private message or a mention arrived while it was not shown.
    pub highlight: bool,
    /// Rows scrolled up from the bottom (0: following new messages).
    pub scroll: usize,
    /// Messages that arrived below the view while scrolled up.
    pub new_below: usize,
}

impl Conversation {
    fn new(id: ConvId) -> Conversation {
        Conversation {
            id,
            entries: Vec::new(),
            unread: 0,
            highlight: false,
            scroll: 0,
            new_below: 0,
        }
    }
}

/// The state of the connection, for the status bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Not logged in yet.
    LoggedOut,
    /// Connecting and logging in.
    Connecting,
    /// Logged in.
    Connected,
    /// Lost; the next attempt is this many seconds away.
    Reconnecting {
        /// Seconds left.
        in_secs: u64,
    },
    /// Gone for good.
    Offline {
        /// Why.
        reason: String,
    },
}

/// Which screen is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// The login form.
    Login,
    /// The chat.
    Chat,
}

/// The field of the login form that has the focus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginField {
    /// The user id.
    User,
    /// The password (shown masked).
    Password,
}

/// The login form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginForm {
    /// The user id being typed.
    pub user: LineEditor,
    /// The password being typed.
    pub password: LineEditor,
    /// Which field has the focus.
    pub focus: LoginField,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// An attempt is under way.
    pub busy: bool,
}

/// A line for the status bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    /// The text.
    pub text: String,
    /// Shown as an error.
    pub error: bool,
}

/// A message sent and not yet echoed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Awaiting {
    /// The message text, to recognise the echo.
    text: String,
    /// The input line that sent it, cleared when the echo arrives.
    line: String,
}

/// What the event loop must do after an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pass this to the network task.
    Net(NetRequest),
    /// Ring the terminal bell.
    Bell,
    /// Repaint the whole terminal (it may hold garbage from another program).
    Redraw,
    /// Leave the application.
    Quit,
}

/// The whole client state.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// Command-line choices.
    pub settings: Settings,
    /// Who we are, once logged in.
    pub me: Option<UserId>,
    /// Which screen is shown.
    pub screen: Screen,
    /// The login form.
    pub login: LoginForm,
    /// The connection state.
    pub connection: Connection,
    /// Conversations, "all" first, then private ones in the order they opened.
    pub conversations: Vec<Conversation>,
    /// Index of the conversation shown.
    pub active: usize,
    /// Who is online now, sorted case-insensitively.
    pub online: Vec<UserId>,
    /// The input line.
    pub input: LineEditor,
    /// The status bar's message.
    pub status: Option<StatusLine>,
    /// The help overlay is shown.
    pub show_help: bool,
    /// Rows the help overlay is scrolled down (Up/Down/PageUp/PageDown while it is shown;
    /// the renderer keeps it within the text).
    pub help_scroll: u16,
    /// The user selected in the online panel while it has the keyboard (F2).
    pub users_cursor: Option<usize>,
    /// The terminal's size.
    pub size: (u16, u16),
    /// Logged in at least once (so a new login is a reconnection).
    was_logged_in: bool,
    /// Messages sent and not yet echoed, oldest first.
    awaiting: VecDeque<Awaiting>,
    /// Editing keys and pastes typed while the input line waits for an echo, applied once
    /// it is free (so a fast typist's next line never sticks to the one being sent).
    typeahead: Vec<Event>,
    /// `list` replies still expected for a `/list` typed by the person.
    list_requests: usize,
}

impl App {
    /// A new client, on the login screen with the user id pre-filled when given.
    pub fn new(settings: Settings, user: Option<&str>) -> App {
        let mut login_user = LineEditor::new();
        let mut focus = LoginField::User;
        if let Some(u) = user {
            login_user.set_text(u);
            focus = LoginField::Password;
        }
        App {
            settings,
            me: None,
            screen: Screen::Login,
            login: LoginForm {
                user: login_user,
                password: LineEditor::new(),
                focus,
                error: None,
                busy: false,
            },
            connection: Connection::LoggedOut,
            conversations: vec![Conversation::new(ConvId::Public)],
            active: 0,
            online: Vec::new(),
            input: LineEditor::new(),
            status: None,
            show_help: false,
            help_scroll: 0,
            users_cursor: None,
            size: (80, 24),
            was_logged_in: false,
            awaiting: VecDeque::new(),
            typeahead: Vec::new(),
            list_requests: 0,
        }
    }

    /// Starts logging in with known credentials (password from the environment or a file).
    pub fn login_with(&mut self, user: &str, password: &str) -> Vec<Action> {
        self.login.user.set_text(user);
        self.login.password.set_text(password);
        self.submit_login()
    }

    /// The conversation shown.
    pub fn active_conversation(&self) -> &Conversation {
        // `active` always indexes `conversations`, which is never empty.
        &self.conversations[self.active.min(self.conversations.len() - 1)]
    }

    /// Applies one event; returns what the event loop must do.
    pub fn update(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Key(key) => {
                if key.kind == KeyEventKind::Release {
                    return Vec::new();
                }
                match self.screen {
                    Screen::Login => self.on_login_key(key),
                    Screen::Chat => self.on_chat_key(key),
                }
            }
            Event::Mouse(m) => {
                if self.screen == Screen::Chat && !self.show_help {
                    self.on_mouse(m.kind, Position::new(m.column, m.row));
                }
                Vec::new()
            }
            Event::Paste(s) => {
                if self.screen == Screen::Chat && self.input_locked() {
                    self.typeahead.push(Event::Paste(s));
                    return Vec::new();
                }
                match (self.screen, self.login.focus) {
                    (Screen::Chat, _) => self.input.insert_str(&s),
                    (Screen::Login, LoginField::User) => self.login.user.insert_str(&s),
                    (Screen::Login, LoginField::Password) => self.login.password.insert_str(&s),
                }
                Vec::new()
            }
            Event::Resize { width, height } => {
                self.size = (width, height);
                self.clamp_scroll();
                Vec::new()
            }
            Event::Net(n) => self.on_net(n),
        }
    }

    // ---- login screen ----

    fn on_login_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d'))
            || key.code == KeyCode::Esc
        {
            return vec![Action::Net(NetRequest::Exit), Action::Quit];
        }
        if self.login.busy {
            return Vec::new();
        }
        match key.code {
            KeyCode::Tab | KeyCode::BackTab | KeyCode::Up | KeyCode::Down => {
                self.login.focus = match self.login.focus {
                    LoginField::User => LoginField::Password,
                    LoginField::Password => LoginField::User,
                };
            }
            KeyCode::Enter => {
                if self.login.focus == LoginField::User && self.login.password.is_empty() {
                    self.login.focus = LoginField::Password;
                } else {
                    return self.submit_login();
                }
            }
            _ => {
                let editor = match self.login.focus {
                    LoginField::User => &mut self.login.user,
                    LoginField::Password => &mut self.login.password,
                };
                edit_key(editor, key);
            }
        }
        Vec::new()
    }

    fn submit_login(&mut self) -> Vec<Action> {
        let user = match UserId::new(self.login.user.text().trim()) {
            Ok(u) => u,
            Err(f) => {
                self.login.error = Some(f.reason);
                self.login.focus = LoginField::User;
                return Vec::new();
            }
        };
        let password = match Password::new(&self.login.password.text()) {
            Ok(p) => p,
            Err(f) => {
                self.login.error = Some(f.reason);
                self.login.focus = LoginField::Password;
                return Vec::new();
            }
        };
        self.login.busy = true;
        self.login.error = None;
        self.connection = Connection::Connecting;
        vec![Action::Net(NetRequest::Login { user, password })]
    }

    // ---- chat screen: keys ----

    fn on_chat_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        if ctrl && key.code == KeyCode::Char('c') {
            return self.quit();
        }
        if self.show_help {
            match key.code {
                KeyCode::Esc | KeyCode::Enter | KeyCode::F(1) | KeyCode::Char('q') => {
                    self.show_help = false;
                    self.help_scroll = 0;
                }
                KeyCode::Up => self.help_scroll = self.help_scroll.saturating_sub(1),
                KeyCode::Down => self.help_scroll = self.help_scroll.saturating_add(1),
                KeyCode::PageUp => self.help_scroll = self.help_scroll.saturating_sub(10),
                KeyCode::PageDown => self.help_scroll = self.help_scroll.saturating_add(10),
                _ => {}
            }
            let screen = Rect::new(0, 0, self.size.0, self.size.1);
            self.help_scroll = self.help_scroll.min(ui::help::max_scroll(screen));
            return Vec::new();
        }
        if let Some(i) = self.users_cursor {
            let last = self.online.len().saturating_sub(1);
            match key.code {
                KeyCode::Up => self.users_cursor = Some(i.saturating_sub(1)),
                KeyCode::Down => self.users_cursor = Some((i + 1).min(last)),
                KeyCode::Home => self.users_cursor = Some(0),
                KeyCode::End => self.users_cursor = Some(last),
                KeyCode::Enter => {
                    self.users_cursor = None;
                    if let Some(user) = self.online.get(i).cloned() {
                        self.open_query(user);
                    }
                }
                KeyCode::Esc | KeyCode::F(2) => self.users_cursor = None,
                _ => {}
            }
            return Vec::new();
        }
        if self.input_locked() {
            if key.code == KeyCode::Esc {
                // The echo is late: stop waiting, keep the line as it is.
                self.awaiting.clear();
                return self.release_input(false);
            }
            if is_line_key(&key) {
                self.typeahead.push(Event::Key(key));
                return Vec::new();
            }
        }
        match key.code {
            KeyCode::Enter => return self.submit(),
            KeyCode::F(2) if !self.online.is_empty() => self.users_cursor = Some(0),
            KeyCode::Char('l') if ctrl => return vec![Action::Redraw],
            KeyCode::Char('n') if ctrl => self.switch_by(1),
            KeyCode::Char('p') if ctrl => self.switch_by(-1),
            KeyCode::Char(d @ '1'..='9') if alt => {
                self.switch_to(usize::from(d as u8 - b'1'));
            }
            KeyCode::Up => self.input.history_prev(),
            KeyCode::Down => self.input.history_next(),
            KeyCode::PageUp => self.scroll_up(self.page()),
            KeyCode::PageDown => self.scroll_down(self.page()),
            KeyCode::Tab => self.complete(),
            KeyCode::F(1) => self.show_help = true,
            KeyCode::Esc => self.status = None,
            _ => edit_key(&mut self.input, key),
        }
        Vec::new()
    }

    fn quit(&mut self) -> Vec<Action> {
        vec![Action::Net(NetRequest::Exit), Action::Quit]
    }

    /// Rows a page scroll moves: the message pane's height less one row of context.
    fn page(&self) -> usize {
        let h = usize::from(self.layout().messages.height);
        h.saturating_sub(1).max(1)
    }

    /// The screen areas for the current terminal size.
    pub fn layout(&self) -> ui::Areas {
        ui::layout(Rect::new(0, 0, self.size.0, self.size.1))
    }

    fn total_rows(&self, index: usize) -> usize {
        let width = self.layout().messages.width;
        ui::messages::row_count(&self.conversations[index], width, self.settings.tz)
    }

    fn max_scroll(&self, index: usize) -> usize {
        let h = usize::from(self.layout().messages.height);
        self.total_rows(index).saturating_sub(h)
    }

    fn scroll_up(&mut self, rows: usize) {
        let max = self.max_scroll(self.active);
        let conv = &mut self.conversations[self.active];
        conv.scroll = (conv.scroll + rows).min(max);
    }

    fn scroll_down(&mut self, rows: usize) {
        let conv = &mut self.conversations[self.active];
        conv.scroll = conv.scroll.saturating_sub(rows);
        if conv.scroll == 0 {
            conv.new_below = 0;
        }
    }

    fn clamp_scroll(&mut self) {
        for i in 0..self.conversations.len() {
            let max = self.max_scroll(i);
            let conv = &mut self.conversations[i];
            conv.scroll = conv.scroll.min(max);
            if conv.scroll == 0 {
                conv.new_below = 0;
            }
        }
    }

    /// Shows conversation `index` (if it exists) and marks it read.
    pub fn switch_to(&mut self, index: usize) {
        if let Some(conv) = self.conversations.get_mut(index) {
            conv.unread = 0;
            conv.highlight = false;
            self.active = index;
        }
    }

    fn switch_by(&mut self, delta: isize) {
        let n = self.conversations.len() as isize;
        let next = (self.active as isize + delta).rem_euclid(n);
        self.switch_to(next as usize);
    }

    /// The index of a conversation, opening it (at the end of the list) if needed.
    fn conversation(&mut self, id: &ConvId) -> usize {
        match self.conversations.iter().position(|c| &c.id == id) {
            Some(i) => i,
            None => {
                self.conversations.push(Conversation::new(id.clone()));
                self.conversations.len() - 1
            }
        }
    }

    /// Opens (if needed) and shows the private conversation with `user`.
    pub fn open_query(&mut self, user: UserId) {
        let i = self.conversation(&ConvId::Private(user));
        self.switch_to(i);
    }

    fn complete(&mut self) {
        let line_start = self.input.chars()[..self.input.cursor()]
            .iter()
            .all(|c| !c.is_whitespace());
        if line_start && self.input.chars().first() == Some(&'/') {
            let commands: Vec<String> = COMMANDS.iter().map(|c| (*c).to_owned()).collect();
            self.input.complete(&commands, " ");
            return;
        }
        let mut names: Vec<String> = self.online.iter().map(|u| u.as_str().to_owned()).collect();
        for c in &self.conversations {
            if let ConvId::Private(u) = &c.id
                && !self.online.contains(u)
            {
                names.push(u.as_str().to_owned());
            }
        }
        // After `/msg ` or `/query ` a name is not the first word: no ": ".
        self.input.complete(&names, ": ");
    }

    // ---- chat screen: the input line ----

    /// Characters left before the 140 limit for what the input line would send, or
    /// `None` when it is a command that sends no text.
    pub fn chars_left(&self) -> Option<i64> {
        let line = self.input.text();
        let text = match parse_line(&line) {
            Line::Text(t) => t,
            Line::Command { name: "/msg", args } => args
                .trim_start()
                .split_once(' ')
                .map_or("", |(_, text)| text),
            Line::Command { .. } => return None,
        };
        Some(MAX_MESSAGE_CHARS as i64 - text.chars().count() as i64)
    }

    fn submit(&mut self) -> Vec<Action> {
        let line = self.input.text();
        if line.trim().is_empty() {
            return Vec::new();
        }
        self.status = None;
        match parse_line(&line) {
            Line::Text(text) => {
                let to = match &self.active_conversation().id {
                    ConvId::Public => Recipient::Everyone,
                    ConvId::Private(u) => Recipient::User(u.clone()),
                };
                self.send(to, text, &line)
            }
            Line::Command { name, args } => self.command(name, args.trim(), &line),
        }
    }

    fn command(&mut self, name: &str, args: &str, line: &str) -> Vec<Action> {
        let done = |app: &mut App| {
            app.input.push_history(line);
            app.input.clear();
        };
        match name {
            "/msg" => {
                let (who, text) = args.split_once(' ').unwrap_or((args, ""));
                let user = match UserId::new(who) {
                    Ok(u) => u,
                    Err(f) => return self.error(format!("/msg: {}", f.reason)),
                };
                if text.trim().is_empty() {
                    return self.error("usage: /msg NAME TEXT".into());
                }
                self.conversation(&ConvId::Private(user.clone()));
                self.send(Recipient::User(user), text, line)
            }
            "/query" => match UserId::new(args) {
                Ok(u) => {
                    self.open_query(u);
                    done(self);
                    Vec::new()
                }
                Err(_) if args.is_empty() => self.error("usage: /query NAME".into()),
                Err(f) => self.error(format!("/query: {}", f.reason)),
            },
            "/list" => {
                if self.connection != Connection::Connected {
                    return self.error("not connected".into());
                }
                self.list_requests += 1;
                done(self);
                vec![Action::Net(NetRequest::Send(Command::List))]
            }
            "/clear" => {
                let conv = &mut self.conversations[self.active];
                conv.entries.clear();
                conv.scroll = 0;
                conv.new_below = 0;
                done(self);
                Vec::new()
            }
            "/close" => {
                if self.active == 0 {
                    return self.error("the public conversation cannot be closed".into());
                }
                self.conversations.remove(self.active);
                self.active -= 1;
                done(self);
                Vec::new()
            }
            "/help" => {
                self.show_help = true;
                done(self);
                Vec::new()
            }
            "/quit" => {
                done(self);
                self.quit()
            }
            other => self.error(format!(
                "unknown command {other}: /help lists the commands (start with // to send a /)"
            )),
        }
    }

    fn send(&mut self, to: Recipient, text: &str, line: &str) -> Vec<Action> {
        if self.connection != Connection::Connected {
            return self.error("not connected: the message is kept, send it again later".into());
        }
        let message = match MessageText::new(text) {
            Ok(m) => m,
            Err(f) if f.error_code == ErrorCode::TooLarge => {
                // The server would answer 413: say so before sending.
                return self.error(format!(
                    "not sent: {} > {MAX_MESSAGE_CHARS} characters (413)",
                    text.chars().count()
                ));
            }
            Err(f) => return self.error(format!("not sent: {}", f.reason)),
        };
        self.awaiting.push_back(Awaiting {
            text: text.to_owned(),
            line: line.to_owned(),
        });
        vec![Action::Net(NetRequest::Send(Command::send(to, message)))]
    }

    fn error(&mut self, text: String) -> Vec<Action> {
        self.status = Some(StatusLine { text, error: true });
        Vec::new()
    }

    // ---- mouse ----

    fn on_mouse(&mut self, kind: MouseEventKind, at: Position) {
        let areas = self.layout();
        match kind {
            MouseEventKind::ScrollUp => self.scroll_up(WHEEL_ROWS),
            MouseEventKind::ScrollDown => self.scroll_down(WHEEL_ROWS),
            MouseEventKind::Down(MouseButton::Left) => {
                if let Some(sidebar) = areas.sidebar
                    && sidebar.contains(at)
                {
                    self.switch_to(usize::from(at.y - sidebar.y));
                } else if let Some(users) = areas.users
                    && users.contains(at)
                    && let Some(row) =
                        usize::from(at.y - users.y).checked_sub(ui::users::HEADER_ROWS)
                    && let Some(user) = self
                        .online
                        .get(ui::users::first_shown(self, users) + row)
                        .cloned()
                {
                    self.open_query(user);
                }
            }
            _ => {}
        }
    }

    // ---- network ----

    fn on_net(&mut self, event: NetEvent) -> Vec<Action> {
        match event {
            NetEvent::Connecting => {
                self.connection = Connection::Connecting;
                Vec::new()
            }
            NetEvent::LoggedIn {
                user,
                pending,
                at_ms,
            } => {
                self.me = Some(user);
                self.connection = Connection::Connected;
                self.screen = Screen::Chat;
                self.login.busy = false;
                self.login.error = None;
                self.login.password.clear();
                if self.was_logged_in {
                    self.notice(0, at_ms, EntryKind::Info, "reconnected".into());
                    // An error of the lost connection ("server shutting down") is over.
                    if self.status.as_ref().is_some_and(|s| s.error) {
                        self.status = None;
                    }
                }
                self.was_logged_in = true;
                let mut actions = Vec::new();
                for m in pending {
                    actions.extend(self.add_message(m, at_ms, true));
                }
                actions.push(Action::Net(NetRequest::Send(Command::List)));
                actions
            }
            NetEvent::LoginFailed { reason } => {
                self.screen = Screen::Login;
                self.connection = Connection::LoggedOut;
                self.login.busy = false;
                self.login.error = Some(reason);
                self.login.password.clear();
                self.login.focus = LoginField::Password;
                Vec::new()
            }
            NetEvent::Reply { reply, at_ms } => self.on_reply(reply, at_ms),
            NetEvent::Disconnected { reason, at_ms } => {
                self.connection = Connection::Reconnecting { in_secs: 0 };
                self.awaiting.clear();
                self.online.clear();
                self.notice(
                    0,
                    at_ms,
                    EntryKind::Error,
                    format!("connection lost: {reason}"),
                );
                Vec::new()
            }
            NetEvent::Reconnecting { in_secs } => {
                self.connection = Connection::Reconnecting { in_secs };
                Vec::new()
            }
            NetEvent::Offline { reason, at_ms } => {
                self.connection = Connection::Offline {
                    reason: reason.clone(),
                };
                self.online.clear();
                self.users_cursor = None;
                self.notice(0, at_ms, EntryKind::Error, format!("offline: {reason}"));
                self.status = Some(StatusLine {
                    text: format!("offline: {reason}"),
                    error: true,
                });
                self.awaiting.clear();
                self.release_input(true)
            }
        }
    }

    fn on_reply(&mut self, reply: Reply, at_ms: u64) -> Vec<Action> {
        let actions = self.apply_reply(reply, at_ms);
        // The online list may have changed under the selection.
        self.users_cursor = match self.users_cursor {
            Some(_) if self.online.is_empty() => None,
            c => c.map(|i| i.min(self.online.len() - 1)),
        };
        actions
    }

    fn apply_reply(&mut self, reply: Reply, at_ms: u64) -> Vec<Action> {
        match reply {
            Reply::Message { messages } => messages
                .into_iter()
                .flat_map(|m| self.add_message(m, at_ms, false))
                .collect(),
            Reply::List { list } => {
                self.online = list;
                self.online.sort();
                if self.list_requests > 0 {
                    self.list_requests -= 1;
                    let names: Vec<&str> = self.online.iter().map(UserId::as_str).collect();
                    let text = format!("online ({}): {}", names.len(), names.join(", "));
                    self.notice(self.active, at_ms, EntryKind::Info, text);
                }
                Vec::new()
            }
            Reply::Joined { user_id } => {
                if let Err(i) = self.online.binary_search(&user_id) {
                    self.online.insert(i, user_id.clone());
                }
                let text = format!("{} joined", sanitize(user_id.as_str()));
                self.presence_notice(&user_id, at_ms, EntryKind::Joined(user_id.clone()), text);
                Vec::new()
            }
            Reply::Left { user_id } => {
                self.online.retain(|u| u != &user_id);
                let text = format!("{} left", sanitize(user_id.as_str()));
                self.presence_notice(&user_id, at_ms, EntryKind::Left(user_id.clone()), text);
                Vec::new()
            }
            Reply::Fail { fail } => self.on_fail(&fail),
            // A kind of reply from a newer server: nothing to show.
            _ => Vec::new(),
        }
    }

    fn on_fail(&mut self, fail: &Failure) -> Vec<Action> {
        let text = format!("{}: {}", fail.error_code, sanitize(&fail.reason));
        self.status = Some(StatusLine { text, error: true });
        // Replies come in order: a `fail` after a `send` answers the oldest one unechoed.
        if fail.error_code != ErrorCode::Conflict && fail.error_code != ErrorCode::Unavailable {
            self.awaiting.pop_front();
            return self.release_input(true);
        }
        Vec::new()
    }

    fn presence_notice(&mut self, user: &UserId, at_ms: u64, kind: EntryKind, text: String) {
        self.notice(0, at_ms, kind.clone(), text.clone());
        if let Some(i) = self
            .conversations
            .iter()
            .position(|c| c.id == ConvId::Private(user.clone()))
        {
            self.notice(i, at_ms, kind, text);
        }
    }

    fn notice(&mut self, index: usize, ts_ms: u64, kind: EntryKind, text: String) {
        self.push_entry(index, Entry { ts_ms, kind, text }, false);
    }

    /// Adds an entry to conversation `index`, keeping a scrolled-up view where it is.
    fn push_entry(&mut self, index: usize, entry: Entry, is_message: bool) {
        let width = self.layout().messages.width;
        let tz = self.settings.tz;
        let conv = &mut self.conversations[index];
        conv.entries.push(entry);
        if conv.entries.len() > MAX_ENTRIES {
            conv.entries.remove(0);
        }
        if conv.scroll > 0 {
            let last = conv.entries.len() - 1;
            let added = ui::messages::entry_block(conv, last, width, tz).len();
            conv.scroll += added;
            if is_message {
                conv.new_below += 1;
            }
        }
    }

    /// Whether `text` names `me` as a word (`alice`, `@alice:`, `ALICE!`).
    fn mentions(&self, text: &str) -> bool {
        let Some(me) = &self.me else { return false };
        text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .map(|w| w.trim_end_matches('.'))
            .any(|w| w.eq_ignore_ascii_case(me.as_str()))
    }

    /// Files a chat message in its conversation (opening it for a new private peer).
    fn add_message(&mut self, m: ChatMessage, at_ms: u64, pending: bool) -> Vec<Action> {
        let own = self.me.as_ref() == Some(&m.user_id);
        let id = match &m.to {
            Recipient::Everyone => ConvId::Public,
            Recipient::User(to) if own => ConvId::Private(to.clone()),
            Recipient::User(_) => ConvId::Private(m.user_id.clone()),
        };
        let private = m.is_private();
        let mention = !own && self.mentions(&m.message);
        let index = self.conversation(&id);
        let mut actions = if own {
            self.echoed(&m.message)
        } else {
            Vec::new()
        };
        let ts_ms = if m.ts == 0 { at_ms } else { m.ts };
        let entry = Entry {
            ts_ms,
            kind: EntryKind::Chat {
                from: m.user_id,
                own,
                mention,
            },
            text: sanitize(&m.message),
        };
        self.push_entry(index, entry, true);
        if (index != self.active || pending) && !own {
            let conv = &mut self.conversations[index];
            conv.unread += 1;
            if !own && (private || mention) {
                conv.highlight = true;
            }
        }
        if !own && (private || mention) && self.settings.bell {
            actions.push(Action::Bell);
        }
        actions
    }

    /// Our own message came back: it was sent, so the input line that sent it goes.
    fn echoed(&mut self, text: &str) -> Vec<Action> {
        if self.awaiting.front().is_some_and(|a| a.text == text)
            && let Some(a) = self.awaiting.pop_front()
        {
            self.input.push_history(&a.line);
            if self.input.text() == a.line {
                self.input.clear();
            }
            return self.release_input(false);
        }
        Vec::new()
    }

    /// Whether the input line is waiting for the echo of what it sent.
    pub fn input_locked(&self) -> bool {
        !self.awaiting.is_empty()
    }

    /// The input line is free again: apply what was typed meanwhile. When the line was not
    /// sent (`failed`) and something was typed meanwhile, the unsent line moves to the
    /// history so the new typing starts on an empty line.
    fn release_input(&mut self, failed: bool) -> Vec<Action> {
        if self.input_locked() || self.typeahead.is_empty() {
            return Vec::new();
        }
        if failed {
            let line = self.input.text();
            self.input.push_history(&line);
            self.input.clear();
            if let Some(status) = &mut self.status {
                status.text.push_str(" (the line is in the history: Up)");
            }
        }
        let mut actions = Vec::new();
        for event in std::mem::take(&mut self.typeahead) {
            actions.extend(self.update(event));
        }
        actions
    }

    /// Messages sent and not yet echoed by the server.
    pub fn awaiting_echo(&self) -> usize {
        self.awaiting.len()
    }
}

/// Whether a key edits or sends the input line (as opposed to moving around the screen).
fn is_line_key(key: &KeyEvent) -> bool {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let alt = key.modifiers.contains(KeyModifiers::ALT);
    match key.code {
        KeyCode::Char(c) if alt => matches!(c, 'b' | 'f'),
        KeyCode::Char(c) if ctrl => matches!(c, 'a' | 'e' | 'w' | 'u' | 'k'),
        KeyCode::Char(_)
        | KeyCode::Enter
        | KeyCode::Tab
        | KeyCode::Backspace
        | KeyCode::Delete
        | KeyCode::Left
        | KeyCode::Right
        | KeyCode::Home
        | KeyCode::End
        | KeyCode::Up
        | KeyCode::Down => true,
        _ => false,
    }
}

/// Applies an editing key to a line editor.
fn edit_key(e: &mut LineEditor, key: KeyEvent) {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let alt = key.modifiers.contains(KeyModifiers::ALT);
    match key.code {
        KeyCode::Char('a') if ctrl => e.home(),
        KeyCode::Char('e') if ctrl => e.end(),
        KeyCode::Char('w') if ctrl => e.delete_word_before(),
        KeyCode::Char('u') if ctrl => e.kill_to_start(),
        KeyCode::Char('k') if ctrl => e.kill_to_end(),
        KeyCode::Char('b') if alt => e.word_left(),
        KeyCode::Char('f') if alt => e.word_right(),
        KeyCode::Char(c) if !ctrl && !alt => e.insert(c),
        KeyCode::Left if ctrl || alt => e.word_left(),
        KeyCode::Right if ctrl || alt => e.word_right(),
        KeyCode::Left => e.left(),
        KeyCode::Right => e.right(),
        KeyCode::Home => e.home(),
        KeyCode::End => e.end(),
        KeyCode::Backspace if ctrl || alt => e.delete_word_before(),
        KeyCode::Backspace => e.backspace(),
        KeyCode::Delete => e.delete(),
        _ => {}
    }
}

/// What an input line is.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// Text to send to the conversation.
    Text(&'a str),
    /// A `/command` and its arguments.
    Command { name: &'a str, args: &'a str },
}

/// Splits an input line into text or command; `//text` sends `/text`.
fn parse_line(line: &str) -> Line<'_> {
    if line.starts_with("//") {
        return Line::Text(&line[1..]);
    }
    if line.starts_with('/') {
        let (name, args) = line.split_once(' ').unwrap_or((line, ""));
        return Line::Command { name, args };
    }
    Line::Text(line)
}

#[cfg(test)]
mod tests;

/// Helpers for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::{ConvId, Conversation};

    /// An empty public conversation.
    pub(crate) fn conversation() -> Conversation {
        Conversation::new(ConvId::Public)
    }
}
