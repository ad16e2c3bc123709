//! What flows between the tasks: [`Event`]s into the one event loop (from the terminal task
//! and the network task), [`NetRequest`]s out of it to the network task.

use crossterm::event::{Event as TermEvent, KeyEvent, MouseEvent};
use simpletextim_proto::{ChatMessage, Password, Reply, Request, UserId};

/// Everything the application reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key was pressed.
    Key(KeyEvent),
    /// The mouse was clicked or its wheel turned.
    Mouse(MouseEvent),
    /// Text was pasted (bracketed paste).
    Paste(String),
    /// The terminal now has this size.
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// Something happened on the connection.
    Net(NetEvent),
}

impl Event {
    /// The application event for a terminal event, if it is one we use.
    pub fn from_terminal(event: TermEvent) -> Option<Event> {
        match event {
            TermEvent::Key(k) => Some(Event::Key(k)),
            TermEvent::Mouse(m) => Some(Event::Mouse(m)),
            TermEvent::Paste(s) => Some(Event::Paste(s)),
            TermEvent::Resize(width, height) => Some(Event::Resize { width, height }),
            TermEvent::FocusGained | TermEvent::FocusLost => None,
        }
    }
}

/// What the network task reports. Times are stamped by the network task when the event
/// happened (Unix milliseconds), so the application stays a pure function of its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// Connecting and logging in.
    Connecting,
    /// Logged in (first time or after a reconnection), with the messages kept while offline.
    LoggedIn {
        /// Who we are logged in as.
        user: UserId,
        /// Private messages received while offline, oldest first.
        pending: Vec<ChatMessage>,
        /// When.
        at_ms: u64,
    },
    /// The login did not succeed (bad credentials, server unreachable…): the person has to
    /// try again from the login screen.
    LoginFailed {
        /// Why, for people.
        reason: String,
    },
    /// A reply from the server.
    Reply {
        /// The reply.
        reply: Reply,
        /// When it arrived.
        at_ms: u64,
    },
    /// The connection was lost; the network task will reconnect.
    Disconnected {
        /// Why, for people.
        reason: String,
        /// When.
        at_ms: u64,
    },
    /// The next reconnection attempt is this many seconds away.
    Reconnecting {
        /// Seconds left.
        in_secs: u64,
    },
    /// The connection is gone for good (taken over by another login): no reconnection.
    Offline {
        /// Why, for people.
        reason: String,
        /// When.
        at_ms: u64,
    },
}

/// What the application asks of the network task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetRequest {
    /// Connect (if needed) and log in; the credentials are kept for reconnecting.
    Login {
        /// The user.
        user: UserId,
        /// The password.
        password: Password,
    },
    /// Send a command (with its `ref`) on the current session.
    Send(Request),
    /// Send `exit`, let the server close the session, and stop.
    Exit,
}
