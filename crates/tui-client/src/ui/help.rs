//! The help overlay (F1 or `/help`): every key and command.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

/// Keys, as (key, what it does).
pub const KEYS: &[(&str, &str)] = &[
    ("Enter", "send the line to the conversation shown"),
    (
        "Alt+1..9, Ctrl+N / Ctrl+P",
        "show conversation 1..9, next / previous",
    ),
    ("PageUp / PageDown, wheel", "scroll the messages"),
    ("Up / Down", "previous / next line from the history"),
    ("Tab", "complete a user id or a /command"),
    (
        "Left / Right, Home / End",
        "move the cursor; to the start / end",
    ),
    ("Ctrl+A / Ctrl+E", "to the start / end of the line"),
    ("Ctrl+Left / Right, Alt+B / F", "previous / next word"),
    ("Ctrl+W, Alt+Backspace", "delete the word before the cursor"),
    ("Ctrl+U / Ctrl+K", "delete to the start / to the end"),
    ("Mouse click", "show a conversation / talk privately to a user"),
    ("F1 / Esc, Ctrl+C", "show / close this help, quit"),
];

/// Commands, as (command, what it does).
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

/// Draws the overlay, centred over `area`.
pub fn draw(frame: &mut Frame, area: Rect) {
    let key_style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
    let head = Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED);
    let mut lines = vec![Line::styled("Keys", head)];
    for (k, what) in KEYS {
        lines.push(Line::from(vec![
            Span::styled(format!("{k:<29}"), key_style),
            Span::raw(*what),
        ]));
    }
    lines.push(Line::styled("Commands", head));
    for (c, what) in COMMANDS {
        lines.push(Line::from(vec![
            Span::styled(format!("{c:<29}"), key_style),
            Span::raw(*what),
        ]));
    }
    let w = area.width.min(80);
    let h = area.height.min(lines.len() as u16 + 2);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Help · Esc to close ")),
        popup,
    );
}
