//! The input line of the chat screen: what Enter sends (text to the conversation shown, or
//! a `/command`), the one table of commands ([`COMMANDS`], read by Tab completion, the help
//! overlay and the README test), and the wait for the server's echo of a sent line (the
//! line stays, locked, until the echo or a refusal; keys typed meanwhile are replayed).

use simpletextim_proto::types::MAX_MESSAGE_CHARS;
use simpletextim_proto::{Command, ErrorCode, MessageText, Recipient, Ref, UserId};

use super::conversation::ConvId;
use super::state::{Action, App, Awaiting, Connection, HistoryKind, Pending, StatusLine};

/// Commands, as (usage, what it does), for the help overlay; the first word of each usage
/// is the command Tab completes, except `//text` (an escape, not a command).
pub const COMMANDS: &[(&str, &str)] = &[
    ("/msg NAME TEXT", "send a private message"),
    ("/query NAME", "open the private conversation with NAME"),
    ("/list", "show who is online"),
    ("/clear", "clear the conversation shown"),
    ("/close", "close the private conversation shown"),
    ("/help", "this help"),
    ("/quit", "log out and leave"),
    ("//text", "send text that starts with /"),
];

/// The commands the input line understands (`/msg`, `/query`…), in [`COMMANDS`]' order.
pub fn command_names() -> impl Iterator<Item = &'static str> {
    COMMANDS
        .iter()
        .filter_map(|(usage, _)| usage.split(' ').next())
        .filter(|name| !name.starts_with("//"))
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

impl App {
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

    /// Whether the input line is waiting for the echo of what it sent.
    pub fn input_locked(&self) -> bool {
        !self.awaiting.is_empty()
    }

    /// Messages sent and not yet echoed by the server.
    pub fn awaiting_echo(&self) -> usize {
        self.awaiting.len()
    }

    /// Enter: sends the input line's text or runs its command.
    pub(super) fn submit(&mut self) -> Vec<Action> {
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

    /// Runs a `/command` typed as `line`; a command that is done leaves the history.
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
                let id = ConvId::Private(user.clone());
                let new = self.conversation_index(&id).is_none();
                self.conversation(&id);
                let mut actions = self.send(Recipient::User(user), text, line);
                // A conversation opened now shows what was said in it before.
                if new && !actions.is_empty() {
                    actions.push(self.ask_history(id, HistoryKind::Latest));
                }
                actions
            }
            "/query" => match UserId::new(args) {
                Ok(u) => {
                    let actions = self.open_query(u);
                    done(self);
                    actions
                }
                Err(_) if args.is_empty() => self.error("usage: /query NAME".into()),
                Err(f) => self.error(format!("/query: {}", f.reason)),
            },
            "/list" => {
                if self.connection != Connection::Connected {
                    return self.error("not connected".into());
                }
                done(self);
                vec![self.request(Command::List, Pending::List { show: true })]
            }
            "/clear" => {
                self.active_conversation_mut().msgs.clear();
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

    /// Sends `text` (typed as `line`) to `to`, refusing it here when the server would.
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
        let conv = match &to {
            Recipient::Everyone => ConvId::Public,
            Recipient::User(u) => ConvId::Private(u.clone()),
        };
        let pending = Pending::Send {
            conv,
            text: text.to_owned(),
        };
        let r#ref = self.next_ref;
        let action = self.request(Command::send(to, message), pending);
        self.awaiting.push_back(Awaiting {
            r#ref,
            text: text.to_owned(),
            line: line.to_owned(),
        });
        vec![action]
    }

    /// Shows an error in the status bar.
    pub(super) fn error(&mut self, text: String) -> Vec<Action> {
        self.status = Some(StatusLine { text, error: true });
        Vec::new()
    }

    /// Our own message came back: it was sent, so the input line that sent it goes. The
    /// echo carries the `ref` of the `send` it answers; from a server that gives none (that
    /// answered nothing with a ref yet), it is the oldest message awaited when the text is
    /// the same.
    pub(super) fn echoed(&mut self, r: Option<&Ref>, text: &str) -> Vec<Action> {
        let index = match self.answered(r) {
            Some((n, _)) => self.awaiting.iter().position(|a| a.r#ref == n),
            None if r.is_none() && !self.server_refs => self
                .awaiting
                .front()
                .is_some_and(|a| a.text == text)
                .then_some(0),
            None => None,
        };
        if let Some(a) = index.and_then(|i| self.awaiting.remove(i)) {
            self.input.push_history(&a.line);
            if self.input.text() == a.line {
                self.input.clear();
            }
            return self.release_input(false);
        }
        Vec::new()
    }

    /// The input line is free again: apply what was typed meanwhile. When the line was not
    /// sent (`failed`) and something was typed meanwhile, the unsent line moves to the
    /// history so the new typing starts on an empty line.
    pub(super) fn release_input(&mut self, failed: bool) -> Vec<Action> {
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
}
