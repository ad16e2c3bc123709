//! What the network task reports: logging in and out, the connection's ups and downs, and
//! the server's replies (messages filed in their conversations, the online list, presence
//! notices, refusals).

use simpletextim_proto::{ChatMessage, Command, ErrorCode, Failure, Recipient, Reply, UserId};

use super::conversation::{ConvId, Entry, EntryKind};
use super::state::{Action, App, Connection, LoginField, Screen, StatusLine};
use crate::event::{NetEvent, NetRequest};
use crate::text::sanitize;

impl App {
    /// An event from the network task.
    pub(super) fn on_net(&mut self, event: NetEvent) -> Vec<Action> {
        match event {
            NetEvent::Connecting => {
                self.connection = Connection::Connecting;
                Vec::new()
            }
            NetEvent::LoggedIn {
                user,
                pending,
                at_ms,
            } => self.logged_in(user, pending, at_ms),
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
                self.keep_users_cursor_in_list();
                let text = format!("connection lost: {reason}");
                self.notice(0, at_ms, EntryKind::Error, text);
                Vec::new()
            }
            NetEvent::Reconnecting { in_secs } => {
                self.connection = Connection::Reconnecting { in_secs };
                Vec::new()
            }
            NetEvent::Offline { reason, at_ms } => self.offline(reason, at_ms),
        }
    }

    /// Logged in (again): the chat screen, the messages kept while offline, and a request
    /// for the online list.
    fn logged_in(&mut self, user: UserId, pending: Vec<ChatMessage>, at_ms: u64) -> Vec<Action> {
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

    /// The connection is gone for good: say why, and free the input line.
    fn offline(&mut self, reason: String, at_ms: u64) -> Vec<Action> {
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

    fn on_reply(&mut self, reply: Reply, at_ms: u64) -> Vec<Action> {
        let actions = self.apply_reply(reply, at_ms);
        // The online list may have changed under the selection.
        self.keep_users_cursor_in_list();
        actions
    }

    /// After the online list changed: the selection (F2) moves up to the last user, or
    /// ends with an empty list. The users panel counts on it pointing into the list.
    fn keep_users_cursor_in_list(&mut self) {
        self.users_cursor = match self.users_cursor {
            Some(_) if self.online.is_empty() => None,
            c => c.map(|i| i.min(self.online.len() - 1)),
        };
    }

    fn apply_reply(&mut self, reply: Reply, at_ms: u64) -> Vec<Action> {
        match reply {
            Reply::Message { messages, .. } => messages
                .into_iter()
                .flat_map(|m| self.add_message(m, at_ms, false))
                .collect(),
            Reply::List { list, .. } => {
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
            Reply::Fail { fail, .. } => self.on_fail(&fail),
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

    /// A join or leave: shown in "all", and in the private conversation with that user.
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

    /// Adds a notice (not a chat message) to conversation `index`.
    fn notice(&mut self, index: usize, ts_ms: u64, kind: EntryKind, text: String) {
        self.conversations[index]
            .msgs
            .push(Entry { ts_ms, kind, text }, false);
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
        self.conversations[index].msgs.push(entry, true);
        if (index != self.active || pending) && !own {
            let conv = &mut self.conversations[index];
            conv.unread += 1;
            if private || mention {
                conv.highlight = true;
            }
        }
        if !own && (private || mention) && self.settings.bell {
            actions.push(Action::Bell);
        }
        actions
    }
}
