//! The chat screen's keys and mouse: the help overlay's keys, the online users selection
//! (F2), moving between conversations, scrolling, Tab completion, and the line editing
//! keys (shared with the login form). [`KEYS`] documents them for the help overlay and the
//! README; a key that changes meaning here changes there.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEventKind};
use ratatui::layout::{Position, Rect};

use super::commands::{COMMANDS, command_names};
use super::conversation::{ConvId, MAX_ENTRIES, OlderHistory};
use super::state::{Action, App, Connection, HistoryKind};
use crate::event::Event;
use crate::input::LineEditor;
use crate::layout::{self, HelpSection};

/// Rows the mouse wheel scrolls.
const WHEEL_ROWS: usize = 3;

/// Keys, as (key, what it does), for the help overlay.
pub const KEYS: &[(&str, &str)] = &[
    ("Enter", "send the line to the conversation shown"),
    (
        "Alt+1..9, Ctrl+N / Ctrl+P",
        "show conversation 1..9, next / previous",
    ),
    (
        "PageUp / PageDown, wheel",
        "scroll the messages; at the top, load older",
    ),
    ("Up / Down", "previous / next line from the history"),
    ("Tab", "complete a user id or a /command"),
    (
        "Left/Right, Ctrl+Left/Right",
        "move by a character / a word (Alt+B / F too)",
    ),
    (
        "Home / End, Ctrl+A / Ctrl+E",
        "to the start / end of the line",
    ),
    (
        "Ctrl+W / Ctrl+U / Ctrl+K",
        "delete the word before / to the start / to end",
    ),
    ("F2", "choose a user in the online list (↑↓, Enter)"),
    (
        "Mouse click",
        "show a conversation / talk privately to a user",
    ),
    ("F1 / Esc, Ctrl+L, Ctrl+C", "help / close it, repaint, quit"),
];

/// The help overlay's sections: the keys, then the commands.
pub const HELP: [HelpSection; 2] = [("Keys", KEYS), ("Commands", COMMANDS)];

impl App {
    /// A key on the chat screen: the help overlay or the users selection take it when
    /// shown; while the input line waits for an echo, editing keys wait too.
    pub(super) fn on_chat_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        if ctrl && key.code == KeyCode::Char('c') {
            return self.quit();
        }
        if self.show_help {
            self.on_help_key(key);
            return Vec::new();
        }
        if let Some(i) = self.users_cursor {
            return self.on_users_key(key, i);
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
            KeyCode::PageUp => {
                let msgs = &mut self.active_conversation_mut().msgs;
                let at_top = msgs.at_top();
                msgs.scroll_up(msgs.page());
                if at_top {
                    return self.load_older();
                }
            }
            KeyCode::PageDown => {
                let msgs = &mut self.active_conversation_mut().msgs;
                msgs.scroll_down(msgs.page());
            }
            KeyCode::Tab => self.complete(),
            KeyCode::F(1) => self.show_help = true,
            KeyCode::Esc => self.status = None,
            _ => edit_key(&mut self.input, key),
        }
        Vec::new()
    }

    /// PageUp at the top of the conversation shown: asks for the page of history before its
    /// oldest message (once at a time, and no more once the server has nothing older).
    fn load_older(&mut self) -> Vec<Action> {
        if self.connection != Connection::Connected {
            return Vec::new();
        }
        let conv = self.active_conversation_mut();
        if conv.older != OlderHistory::Idle {
            return Vec::new();
        }
        if conv.msgs.entries().len() >= MAX_ENTRIES {
            // Older entries would be dropped as they come.
            return self.error(format!(
                "no older messages: the scrollback holds {MAX_ENTRIES} entries at most"
            ));
        }
        conv.older = OlderHistory::Loading;
        let id = conv.id.clone();
        vec![self.ask_history(id, HistoryKind::Older)]
    }

    /// A key while the help overlay is shown: scroll it (within its text) or close it.
    fn on_help_key(&mut self, key: KeyEvent) {
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
        let max = layout::help(&HELP, screen).max_scroll;
        self.help_scroll = self.help_scroll.min(max);
    }

    /// A key while a user of the online list is selected (`i`, F2).
    fn on_users_key(&mut self, key: KeyEvent, i: usize) -> Vec<Action> {
        let last = self.online.len().saturating_sub(1);
        match key.code {
            KeyCode::Up => self.users_cursor = Some(i.saturating_sub(1)),
            KeyCode::Down => self.users_cursor = Some((i + 1).min(last)),
            KeyCode::Home => self.users_cursor = Some(0),
            KeyCode::End => self.users_cursor = Some(last),
            KeyCode::Enter => {
                self.users_cursor = None;
                if let Some(user) = self.online.get(i).cloned() {
                    return self.open_query(user);
                }
            }
            KeyCode::Esc | KeyCode::F(2) => self.users_cursor = None,
            _ => {}
        }
        Vec::new()
    }

    /// The mouse: the wheel scrolls the messages (up at the top: loads older ones, as
    /// PageUp), a click on the sidebar shows that conversation, a click on a name of the
    /// online list opens a private conversation.
    pub(super) fn on_mouse(&mut self, kind: MouseEventKind, at: Position) -> Vec<Action> {
        let areas = self.layout();
        match kind {
            MouseEventKind::ScrollUp => {
                let msgs = &mut self.active_conversation_mut().msgs;
                let at_top = msgs.at_top();
                msgs.scroll_up(WHEEL_ROWS);
                if at_top {
                    return self.load_older();
                }
            }
            MouseEventKind::ScrollDown => {
                self.active_conversation_mut().msgs.scroll_down(WHEEL_ROWS);
            }
            MouseEventKind::Down(MouseButton::Left) => {
                if let Some(sidebar) = areas.sidebar
                    && sidebar.contains(at)
                {
                    self.switch_to(usize::from(at.y - sidebar.y));
                } else if let Some(users) = areas.users
                    && users.contains(at)
                    && let Some(i) = layout::user_at(self.users_cursor, users, at.y)
                    && let Some(user) = self.online.get(i).cloned()
                {
                    return self.open_query(user);
                }
            }
            _ => {}
        }
        Vec::new()
    }

    /// Tab: completes a `/command` at the start of the line, else a user id (online, or
    /// with a private conversation open).
    fn complete(&mut self) {
        let line_start = self.input.chars()[..self.input.cursor()]
            .iter()
            .all(|c| !c.is_whitespace());
        if line_start && self.input.chars().first() == Some(&'/') {
            let commands: Vec<String> = command_names().map(str::to_owned).collect();
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

/// Applies an editing key to a line editor (the input line or a login field).
pub(super) fn edit_key(e: &mut LineEditor, key: KeyEvent) {
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
