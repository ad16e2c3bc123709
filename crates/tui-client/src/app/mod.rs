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
//! - this file: [`App::update`], dispatching each event, and moving between conversations;
//! - `state`: the state's types ([`App`], the login form, the status line…), the
//!   constructor and the accessors every concern uses;
//! - `conversation`: conversations and their message areas (entries, scroll, cached
//!   layout height);
//! - `login`: the login form's keys; `keys`: the chat screen's keys and mouse;
//!   `commands`: the input line, `/commands` and the wait for a sent line's echo;
//!   `net`: what the network task reports (replies matched to their command by `ref`,
//!   history pages merged in id order, gap markers) and [`App::on_drawn`], the `ack` of
//!   what the last drawing showed.
//!
//! Imports run one way: `conversation` is a leaf, `state` imports it, the concern modules
//! import those two (`keys` also takes the command names from `commands`, `login` the line
//! editing keys from `keys`), and only this file imports the concern modules. `app` never
//! imports [`crate::ui`]: the screen geometry both need lives in [`crate::layout`].

mod commands;
mod conversation;
mod keys;
mod login;
mod net;
mod state;

use crossterm::event::KeyEventKind;
use ratatui::layout::Position;
use simpletextim_proto::UserId;

pub use self::commands::{COMMANDS, command_names};
pub use self::conversation::{
    ConvId, Conversation, Entry, EntryKind, EntryLayout, MAX_ENTRIES, MsgArea, OlderHistory,
    TimeZone,
};
pub use self::keys::{HELP, KEYS};
use self::state::HistoryKind;
use self::state::pane_size;
pub use self::state::{
    Action, App, Connection, LoginField, LoginForm, Screen, Settings, StatusLine,
};
use crate::event::{Event, NetRequest};

impl App {
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
                    return self.on_mouse(m.kind, Position::new(m.column, m.row));
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

    /// Opens (if needed) and shows the private conversation with `user`. A conversation
    /// opened now asks for its newest page of history (when connected).
    pub fn open_query(&mut self, user: UserId) -> Vec<Action> {
        let id = ConvId::Private(user);
        let new = self.conversation_index(&id).is_none();
        let i = self.conversation(&id);
        self.switch_to(i);
        if new && self.connection == Connection::Connected {
            return vec![self.ask_history(id, HistoryKind::Latest)];
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests;

/// Helpers for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::{ConvId, Conversation, TimeZone, pane_size};

    /// An empty public conversation, for an 80×24 terminal's message pane.
    pub(crate) fn conversation() -> Conversation {
        Conversation::new(ConvId::Public, pane_size((80, 24)), TimeZone::utc())
    }
}
