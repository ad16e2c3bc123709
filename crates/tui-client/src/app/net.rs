//! What the network task reports: logging in and out, the connection's ups and downs, and
//! the server's replies (messages filed in their conversations, the online list, presence
//! notices, refusals).

use simpletextim_proto::{
    Anchor, ChatMessage, Command, ErrorCode, Failure, PageLimit, Recipient, Ref, Reply, UserId,
};

use super::conversation::{ConvId, Entry, EntryKind, OlderHistory};
use super::state::{Action, App, Connection, HistoryKind, LoginField, Pending, Screen, StatusLine};
use crate::event::NetEvent;
use crate::text::sanitize;

/// Messages asked for per page when catching up after a reconnection (the most a page
/// holds).
pub(super) const GAP_PAGE: u8 = 200;
/// Pages asked for at most when catching up one conversation; past them a marker says
/// messages may be missing.
pub(super) const GAP_PAGES: u32 = 20;
/// Messages asked for at the first login, and per PageUp at the top.
pub(super) const PAGE: u8 = 50;
/// The marker where messages could not be fetched.
pub const GAP_MARKER: &str = "… messages may be missing here …";
/// The notice above the oldest message the server keeps.
pub const BEGINNING: &str = "beginning of history";

/// Where a chat message comes from: how it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Delivered now: unread when not shown, a bell for private messages and mentions.
    Live,
    /// In the login ack (kept while offline): unread even in the conversation shown.
    Pending,
    /// Caught up from history after a reconnection: unread, but no bell.
    Missed,
    /// Old history (the newest page at the first login, PageUp): seen before, or never
    /// addressed to us; no marks.
    Old,
}

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
                // Nothing more will answer: pages asked for are asked again after the
                // reconnection, from the last message held.
                self.requests.clear();
                for conv in &mut self.conversations {
                    if conv.older == OlderHistory::Loading {
                        conv.older = OlderHistory::Idle;
                    }
                }
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

    /// Logged in (again): the chat screen, the messages kept while offline, a request for
    /// the online list, and history: the newest page of each conversation at the first
    /// login; after a reconnection, for each conversation, what came after the last message
    /// held (page after page, up to [`GAP_PAGES`]).
    fn logged_in(&mut self, user: UserId, pending: Vec<ChatMessage>, at_ms: u64) -> Vec<Action> {
        self.me = Some(user);
        self.connection = Connection::Connected;
        self.screen = Screen::Chat;
        self.login.busy = false;
        self.login.error = None;
        self.login.password.clear();
        let reconnected = self.was_logged_in;
        if reconnected {
            self.notice(0, at_ms, EntryKind::Info, "reconnected".into());
            // An error of the lost connection ("server shutting down") is over.
            if self.status.as_ref().is_some_and(|s| s.error) {
                self.status = None;
            }
        }
        self.was_logged_in = true;
        self.server_refs = false;
        // A new session: what the last one did not acknowledge comes again in its login ack.
        self.acks = super::state::Acks {
            on: true,
            ..Default::default()
        };
        // Where each conversation stood before the messages kept while offline.
        let last_held: Vec<(ConvId, Option<u64>)> = self
            .conversations
            .iter()
            .map(|c| (c.id.clone(), c.msgs.max_id()))
            .collect();
        let mut actions = Vec::new();
        for m in pending {
            actions.extend(self.add_message(m, at_ms, Source::Pending));
        }
        actions.push(self.request(Command::List, Pending::List { show: false }));
        let ids: Vec<ConvId> = self.conversations.iter().map(|c| c.id.clone()).collect();
        for id in ids {
            let held = last_held
                .iter()
                .find(|(c, _)| *c == id)
                .and_then(|(_, max)| *max);
            let kind = match held {
                Some(after) if reconnected => HistoryKind::Gap { after, page: 0 },
                _ => HistoryKind::Latest,
            };
            actions.push(self.ask_history(id, kind));
        }
        actions
    }

    /// Asks for a page of history of conversation `conv`.
    pub(super) fn ask_history(&mut self, conv: ConvId, kind: HistoryKind) -> Action {
        let with = match &conv {
            ConvId::Public => Recipient::Everyone,
            ConvId::Private(u) => Recipient::User(u.clone()),
        };
        let (anchor, limit) = match kind {
            HistoryKind::Latest => (None, PAGE),
            HistoryKind::Gap { after, .. } => (Some(Anchor::After(after)), GAP_PAGE),
            HistoryKind::Older => {
                let before = self
                    .conversation_index(&conv)
                    .and_then(|i| self.conversations[i].msgs.min_id());
                (before.map(Anchor::Before), PAGE)
            }
        };
        let command = Command::History {
            with,
            anchor,
            limit: PageLimit::new(u64::from(limit)).ok(),
        };
        self.request(command, Pending::History { conv, kind })
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
                .flat_map(|m| self.add_message(m, at_ms, Source::Live))
                .collect(),
            Reply::List { r#ref, list } => {
                self.online = list;
                self.online.sort();
                let show = match self.answered(r#ref.as_ref()) {
                    Some((_, Pending::List { show })) => show,
                    Some(_) => false,
                    // From a server that gives no refs: the answer to the oldest `list`.
                    None => match self
                        .requests
                        .iter()
                        .find(|(_, p)| matches!(p, Pending::List { .. }))
                        .map(|(n, _)| *n)
                        .and_then(|n| self.requests.remove(&n))
                    {
                        Some(Pending::List { show }) => show,
                        _ => false,
                    },
                };
                if show {
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
            Reply::History {
                r#ref,
                messages,
                more,
                ..
            } => match self.answered(r#ref.as_ref()) {
                Some((_, Pending::History { conv, kind })) => {
                    self.history_page(&conv, kind, messages, more, at_ms)
                }
                // Not asked for (or not with this ref): shown where the messages belong,
                // as old history.
                _ => {
                    for m in messages {
                        self.add_message(m, at_ms, Source::Old);
                    }
                    Vec::new()
                }
            },
            Reply::Fail { r#ref, fail } => self.on_fail(r#ref.as_ref(), &fail, at_ms),
            // A kind of reply from a newer server: nothing to show.
            _ => Vec::new(),
        }
    }

    /// A page of history asked for conversation `conv`: its messages in place, and what
    /// follows: the next page of a catch-up (or a marker where it stops short), the end of
    /// loading older messages.
    fn history_page(
        &mut self,
        conv: &ConvId,
        kind: HistoryKind,
        messages: Vec<ChatMessage>,
        more: bool,
        at_ms: u64,
    ) -> Vec<Action> {
        let Some(index) = self.conversation_index(conv) else {
            // Closed meanwhile.
            return Vec::new();
        };
        let last = messages.last().map(|m| m.id);
        let first_ts = messages.first().map(|m| m.ts);
        let source = match kind {
            HistoryKind::Gap { .. } => Source::Missed,
            HistoryKind::Latest | HistoryKind::Older => Source::Old,
        };
        for m in messages {
            self.add_message(m, at_ms, source);
        }
        match kind {
            HistoryKind::Latest => Vec::new(),
            HistoryKind::Gap { after, page } => {
                if !more {
                    return Vec::new();
                }
                match last {
                    Some(last) if last > after && page + 1 < GAP_PAGES => {
                        let next = HistoryKind::Gap {
                            after: last,
                            page: page + 1,
                        };
                        vec![self.ask_history(conv.clone(), next)]
                    }
                    _ => {
                        let why = format!(
                            "{GAP_MARKER} (more than {} messages)",
                            u32::from(GAP_PAGE) * GAP_PAGES
                        );
                        self.gap_marker(index, last.unwrap_or(after).max(after), at_ms, why);
                        Vec::new()
                    }
                }
            }
            HistoryKind::Older => {
                let c = &mut self.conversations[index];
                if more {
                    c.older = OlderHistory::Idle;
                } else {
                    c.older = OlderHistory::Done;
                    // Dated like the oldest message, so no date line of today goes above it.
                    let ts_ms = c
                        .msgs
                        .entries()
                        .front()
                        .map_or(first_ts.unwrap_or(at_ms), |e| e.ts_ms);
                    c.msgs.push_front(Entry {
                        id: None,
                        ts_ms,
                        kind: EntryKind::Info,
                        text: BEGINNING.into(),
                    });
                }
                Vec::new()
            }
        }
    }

    /// Adds the marker saying messages after `after` may be missing from conversation
    /// `index`.
    fn gap_marker(&mut self, index: usize, after: u64, at_ms: u64, text: String) {
        self.conversations[index].msgs.insert_after_id(
            after,
            Entry {
                id: None,
                ts_ms: at_ms,
                kind: EntryKind::Error,
                text,
            },
        );
    }

    /// A `fail`: shown against the command it answers (found by its ref). One without a
    /// ref (from a server that gives none, or about the session: taken over, shutting down)
    /// goes to the status bar; from a server that answered nothing with a ref yet, and
    /// except for those two, it answers the oldest message sent, as replies come in order.
    fn on_fail(&mut self, r: Option<&Ref>, fail: &Failure, at_ms: u64) -> Vec<Action> {
        let why = format!("{}: {}", fail.error_code, sanitize(&fail.reason));
        match self.answered(r) {
            Some((n, Pending::Send { conv, text })) => {
                let to = match &conv {
                    ConvId::Public => "everyone".to_owned(),
                    ConvId::Private(u) => u.as_str().to_owned(),
                };
                self.status = Some(StatusLine {
                    text: format!("not sent to {to}: {why}"),
                    error: true,
                });
                if let Some(i) = self.conversation_index(&conv) {
                    let text = format!("not sent ({why}): {}", sanitize(&text));
                    self.notice(i, at_ms, EntryKind::Error, text);
                }
                match self.awaiting.iter().position(|a| a.r#ref == n) {
                    Some(i) => {
                        self.awaiting.remove(i);
                        self.release_input(true)
                    }
                    None => Vec::new(),
                }
            }
            Some((_, Pending::List { .. })) => {
                self.status = Some(StatusLine {
                    text: format!("/list: {why}"),
                    error: true,
                });
                Vec::new()
            }
            Some((_, Pending::History { conv, kind })) => {
                self.history_refused(&conv, kind, &why, at_ms);
                Vec::new()
            }
            // The server takes no acks: the session is an ordinary one, where delivering
            // is enough. Nothing to show.
            Some((_, Pending::Ack)) => {
                self.acks.on = false;
                Vec::new()
            }
            None => {
                self.status = Some(StatusLine {
                    text: why,
                    error: true,
                });
                if r.is_none()
                    && !self.server_refs
                    && fail.error_code != ErrorCode::Conflict
                    && fail.error_code != ErrorCode::Unavailable
                {
                    self.awaiting.pop_front();
                    return self.release_input(true);
                }
                Vec::new()
            }
        }
    }

    /// A history page was refused: where it was to fill a gap, a marker says messages may be
    /// missing; PageUp says so in the status bar. The newest page at the first login only
    /// leaves the conversation as it is.
    fn history_refused(&mut self, conv: &ConvId, kind: HistoryKind, why: &str, at_ms: u64) {
        let Some(index) = self.conversation_index(conv) else {
            return;
        };
        match kind {
            HistoryKind::Latest => {}
            HistoryKind::Gap { after, .. } => {
                self.gap_marker(
                    index,
                    after,
                    at_ms,
                    format!("{GAP_MARKER} (history: {why})"),
                );
            }
            HistoryKind::Older => {
                self.conversations[index].older = OlderHistory::Idle;
                self.status = Some(StatusLine {
                    text: format!("older messages: {why}"),
                    error: true,
                });
            }
        }
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
        self.conversations[index].msgs.push(
            Entry {
                id: None,
                ts_ms,
                kind,
                text,
            },
            false,
        );
    }

    /// Whether `text` names `me` as a word (`alice`, `@alice:`, `ALICE!`).
    fn mentions(&self, text: &str) -> bool {
        let Some(me) = &self.me else { return false };
        text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .map(|w| w.trim_end_matches('.'))
            .any(|w| w.eq_ignore_ascii_case(me.as_str()))
    }

    /// Files a chat message in its conversation, in id order, unless it is there already
    /// (opening the conversation for a new private peer, except for old history).
    fn add_message(&mut self, m: ChatMessage, at_ms: u64, source: Source) -> Vec<Action> {
        let own = self.me.as_ref() == Some(&m.user_id);
        let id = match &m.to {
            Recipient::Everyone => ConvId::Public,
            Recipient::User(to) if own => ConvId::Private(to.clone()),
            Recipient::User(_) => ConvId::Private(m.user_id.clone()),
        };
        let private = m.is_private();
        let mention = !own && self.mentions(&m.message);
        let index = match source {
            Source::Live | Source::Pending => self.conversation(&id),
            Source::Missed | Source::Old => match self.conversation_index(&id) {
                Some(i) => i,
                None => return Vec::new(),
            },
        };
        let mut actions = if own && source == Source::Live {
            self.echoed(m.r#ref.as_ref(), &m.message)
        } else {
            Vec::new()
        };
        // Addressed to us: to acknowledge once shown.
        if !own
            && private
            && m.id != 0
            && self.acks.on
            && matches!(source, Source::Live | Source::Pending)
        {
            self.acks.unshown.insert(m.id, id);
        }
        let ts_ms = if m.ts == 0 { at_ms } else { m.ts };
        let entry = Entry {
            id: (m.id != 0).then_some(m.id),
            ts_ms,
            kind: EntryKind::Chat {
                from: m.user_id,
                own,
                mention,
            },
            text: sanitize(&m.message),
        };
        if !self.conversations[index].msgs.add_message(entry) {
            // Shown already (a history page overlapping, a message delivered again).
            return actions;
        }
        let marks = match source {
            Source::Live => index != self.active,
            Source::Pending => true,
            Source::Missed => index != self.active,
            Source::Old => false,
        };
        if marks && !own {
            let conv = &mut self.conversations[index];
            conv.unread += 1;
            if private || mention {
                conv.highlight = true;
            }
        }
        if !own
            && (private || mention)
            && self.settings.bell
            && matches!(source, Source::Live | Source::Pending)
        {
            actions.push(Action::Bell);
        }
        actions
    }

    /// The screen was drawn: the private messages addressed to us in the conversation shown,
    /// when it shows its newest messages, have been on screen. Acknowledges the highest id
    /// below every message not shown yet, when it is new: at most one `ack` per drawing.
    pub fn on_drawn(&mut self) -> Vec<Action> {
        if !self.acks.on
            || self.connection != Connection::Connected
            || self.screen != Screen::Chat
            || self.show_help
        {
            return Vec::new();
        }
        let conv = self.active_conversation();
        if conv.msgs.scroll() == 0 {
            let id = conv.id.clone();
            let now_shown: Vec<u64> = self
                .acks
                .unshown
                .iter()
                .filter(|(_, c)| **c == id)
                .map(|(n, _)| *n)
                .collect();
            for n in now_shown {
                self.acks.unshown.remove(&n);
                self.acks.shown.insert(n);
            }
        }
        let first_unshown = self.acks.unshown.keys().next().copied().unwrap_or(u64::MAX);
        let Some(&upto) = self.acks.shown.range(..first_unshown).next_back() else {
            return Vec::new();
        };
        self.acks.shown.retain(|&n| n > upto);
        if upto <= self.acks.acked {
            return Vec::new();
        }
        self.acks.acked = upto;
        vec![self.request(Command::Ack { id: upto }, Pending::Ack)]
    }
}
