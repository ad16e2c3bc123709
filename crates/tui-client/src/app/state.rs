//! The state's types: [`App`] and what it is made of, its constructor and the accessors
//! every concern uses. Plain data; the behaviour is in the sibling modules, which import
//! this one (it imports none of them but the leaf [`super::conversation`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ratatui::layout::Rect;
use simpletextim_proto::types::REF_NUMBER_BOUND;
use simpletextim_proto::{Command, Ref, Request, UserId};

use super::conversation::{ConvId, Conversation, TimeZone};
use crate::event::{Event, NetRequest};
use crate::input::LineEditor;
use crate::layout::{self, Areas};

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
    /// The user selected in the online panel while it has the keyboard (F2). Always an
    /// index into `online` (`None` when that is empty): the panel's layout depends on it.
    pub users_cursor: Option<usize>,
    /// The terminal's size.
    pub size: (u16, u16),
    /// Logged in at least once (so a new login is a reconnection).
    pub(super) was_logged_in: bool,
    /// Messages sent and not yet echoed, oldest first.
    pub(super) awaiting: VecDeque<Awaiting>,
    /// Editing keys and pastes typed while the input line waits for an echo, applied once
    /// it is free (so a fast typist's next line never sticks to the one being sent).
    pub(super) typeahead: Vec<Event>,
    /// The `ref` of the next command sent (every command but `exit` carries one).
    pub(super) next_ref: u64,
    /// Commands sent and not answered yet, by ref: what a reply (or a `fail`) answers.
    /// Emptied when the connection is lost.
    pub(super) requests: BTreeMap<u64, Pending>,
    /// Acknowledged delivery of private messages.
    pub(super) acks: Acks,
    /// The server of this session answered a command with its ref (protocol 1.1): replies
    /// are matched by ref only. Until then, a `fail` or an echo without ref answers the
    /// oldest message sent, as with a server of protocol 1.0.
    pub(super) server_refs: bool,
}

/// A message sent and not yet echoed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Awaiting {
    /// The `ref` it was sent with.
    pub(super) r#ref: u64,
    /// The message text, to recognise the echo of a server that gives no refs.
    pub(super) text: String,
    /// The input line that sent it, cleared when the echo arrives.
    pub(super) line: String,
}

/// A command sent and not answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pending {
    /// A message to a conversation (answered by its echo).
    Send {
        /// Where it goes.
        conv: ConvId,
        /// Its text, for the note when it is refused.
        text: String,
    },
    /// `list`; `show`: typed as `/list`, the answer is shown.
    List {
        /// Show the answer in the conversation.
        show: bool,
    },
    /// A page of history for a conversation.
    History {
        /// Which conversation.
        conv: ConvId,
        /// Why it was asked.
        kind: HistoryKind,
    },
    /// An `ack` (answered only when refused).
    Ack,
}

/// Why a history page was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HistoryKind {
    /// The newest page, at the first login (or for a conversation with nothing yet).
    Latest,
    /// Catching up after a reconnection: the page after `after`, the `page`-th (from 0).
    Gap {
        /// The id the page follows.
        after: u64,
        /// How many pages came before it.
        page: u32,
    },
    /// PageUp at the top: the page before the oldest message shown.
    Older,
}

/// Acknowledged delivery (protocol 1.1): which private messages addressed to us came, which
/// have been on screen, and how far they were acknowledged. An `ack` covers every id up to
/// it, so it never goes past a message that was not shown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Acks {
    /// The session acknowledges (the login asked for it and no `ack` was refused).
    pub(super) on: bool,
    /// The highest id acknowledged in this session.
    pub(super) acked: u64,
    /// Private messages addressed to us not on screen yet, and their conversation.
    pub(super) unshown: BTreeMap<u64, ConvId>,
    /// Private messages addressed to us that were on screen, not acknowledged yet.
    pub(super) shown: BTreeSet<u64>,
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

impl LoginForm {
    /// An empty form, with the user id pre-filled (and the focus on the password) when
    /// given.
    fn new(user: Option<&str>) -> LoginForm {
        let mut login_user = LineEditor::new();
        let mut focus = LoginField::User;
        if let Some(u) = user {
            login_user.set_text(u);
            focus = LoginField::Password;
        }
        LoginForm {
            user: login_user,
            password: LineEditor::new(),
            focus,
            error: None,
            busy: false,
        }
    }
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
            next_ref: 1,
            requests: BTreeMap::new(),
            acks: Acks::default(),
            server_refs: false,
        }
    }

    /// Sends `command` with the next ref, remembering what it was for.
    pub(super) fn request(&mut self, command: Command, pending: Pending) -> Action {
        let n = self.next_ref;
        // Below 2^53, as a ref must be (it wraps after 2^53 commands).
        self.next_ref = (self.next_ref + 1) % REF_NUMBER_BOUND;
        self.requests.insert(n, pending);
        Action::Net(NetRequest::Send(Request::with_ref(command, Ref::Number(n))))
    }

    /// The command a reply with ref `r` answers, forgotten as it is answered.
    pub(super) fn answered(&mut self, r: Option<&Ref>) -> Option<(u64, Pending)> {
        let answered = match r {
            Some(Ref::Number(n)) => self.requests.remove(n).map(|p| (*n, p)),
            _ => None,
        };
        self.server_refs |= answered.is_some();
        answered
    }

    /// The index of an open conversation.
    pub(super) fn conversation_index(&self, id: &ConvId) -> Option<usize> {
        self.conversations.iter().position(|c| &c.id == id)
    }

    /// The conversation shown.
    pub fn active_conversation(&self) -> &Conversation {
        // `active` always indexes `conversations`, which is never empty.
        &self.conversations[self.active.min(self.conversations.len() - 1)]
    }

    /// The conversation shown, to change it.
    pub(super) fn active_conversation_mut(&mut self) -> &mut Conversation {
        let last = self.conversations.len() - 1;
        &mut self.conversations[self.active.min(last)]
    }

    /// The screen areas for the current terminal size.
    pub fn layout(&self) -> Areas {
        layout::areas(Rect::new(0, 0, self.size.0, self.size.1))
    }
}

/// The message pane's (width, height) on a terminal of `size`.
pub(super) fn pane_size(size: (u16, u16)) -> (u16, u16) {
    let pane = layout::areas(Rect::new(0, 0, size.0, size.1)).messages;
    (pane.width, pane.height)
}
