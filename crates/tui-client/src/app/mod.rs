//! The application state and its one update function.
//!
//! [`App`] is plain data: conversations, who is online, the input line, scroll positions,
//! the connection state. [`App::update`] applies one [`Event`] (a key, a mouse click, a
//! reply from the server…) and returns the [`Action`]s the event loop must carry out (send
//! a command, ring the bell, quit). It does no I/O and reads no clock: times come inside
//! the events, and the time zone is a [`Settings`] field, so tests are exact.
//!
//! One concern per file, each adding methods to [`App`]:
//!
//! - this file: the state, [`App::update`] dispatching each event, and moving between
//!   conversations;
//! - [`conversation`]: conversations and their message areas (entries, scroll, cached
//!   layout height), a leaf the others use;
//! - [`login`]: the login form; [`keys`]: the chat screen's keys and mouse;
//!   [`commands`]: the input line, `/commands` and the wait for a sent line's echo;
//!   [`net`]: what the network task reports.
//!
//! `app` never imports [`crate::ui`]: screen geometry both need lives in [`crate::layout`].

mod commands;
mod conversation;
mod keys;
mod login;
mod net;

use std::collections::VecDeque;

use crossterm::event::KeyEventKind;
use ratatui::layout::{Position, Rect};
use simpletextim_proto::UserId;

use self::commands::Awaiting;
pub use self::commands::{COMMANDS, command_names};
pub use self::conversation::{
    ConvId, Conversation, Entry, EntryKind, EntryLayout, MAX_ENTRIES, MsgArea, TimeZone,
};
pub use self::keys::KEYS;
pub use self::login::{LoginField, LoginForm};
use crate::event::{Event, NetRequest};
use crate::input::LineEditor;
use crate::layout::{self, Areas, HelpSection};

/// The help overlay's sections: the keys, then the commands.
pub const HELP: [HelpSection; 2] = [("Keys", KEYS), ("Commands", COMMANDS)];

/// What the person chose on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The server address, for the status bar.
    pub server: String,
    /// Whether to ring the terminal bell on private messages and mentions.
    pub bell: bool,
    /// How to show times. Conversations copy it when they open (they lay out their entries
    /// with it), so it is set once, before the first event.
    pub tz: TimeZone,
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

/// A line for the status bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    /// The text.
    pub text: String,
    /// Shown as an error.
    pub error: bool,
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
    /// Rows the help overlay is scrolled down (Up/Down/PageUp/PageDown while it is shown),
    /// at most what its text allows on this terminal.
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
        let size = (80, 24);
        let public = Conversation::new(ConvId::Public, pane_size(size), settings.tz);
        App {
            settings,
            me: None,
            screen: Screen::Login,
            login: LoginForm::new(user),
            connection: Connection::LoggedOut,
            conversations: vec![public],
            active: 0,
            online: Vec::new(),
            input: LineEditor::new(),
            status: None,
            show_help: false,
            help_scroll: 0,
            users_cursor: None,
            size,
            was_logged_in: false,
            awaiting: VecDeque::new(),
            typeahead: Vec::new(),
            list_requests: 0,
        }
    }

    /// The conversation shown.
    pub fn active_conversation(&self) -> &Conversation {
        // `active` always indexes `conversations`, which is never empty.
        &self.conversations[self.active.min(self.conversations.len() - 1)]
    }

    /// The conversation shown, to change it.
    fn active_conversation_mut(&mut self) -> &mut Conversation {
        let last = self.conversations.len() - 1;
        &mut self.conversations[self.active.min(last)]
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
                let pane = pane_size(self.size);
                for conv in &mut self.conversations {
                    conv.msgs.resize(pane);
                }
                Vec::new()
            }
            Event::Net(n) => self.on_net(n),
        }
    }

    /// The screen areas for the current terminal size.
    pub fn layout(&self) -> Areas {
        layout::areas(Rect::new(0, 0, self.size.0, self.size.1))
    }

    fn quit(&mut self) -> Vec<Action> {
        vec![Action::Net(NetRequest::Exit), Action::Quit]
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
                let pane = pane_size(self.size);
                let conv = Conversation::new(id.clone(), pane, self.settings.tz);
                self.conversations.push(conv);
                self.conversations.len() - 1
            }
        }
    }

    /// Opens (if needed) and shows the private conversation with `user`.
    pub fn open_query(&mut self, user: UserId) {
        let i = self.conversation(&ConvId::Private(user));
        self.switch_to(i);
    }
}

/// The message pane's (width, height) on a terminal of `size`.
fn pane_size(size: (u16, u16)) -> (u16, u16) {
    let pane = layout::areas(Rect::new(0, 0, size.0, size.1)).messages;
    (pane.width, pane.height)
}

#[cfg(test)]
mod tests;

/// Helpers for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::{ConvId, Conversation, TimeZone};

    /// An empty public conversation, for an 80×24 terminal's message pane.
    pub(crate) fn conversation() -> Conversation {
        Conversation::new(ConvId::Public, super::pane_size((80, 24)), TimeZone::utc())
    }
}
