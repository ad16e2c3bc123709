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

/// Width of the key column when there is room for two columns.
const KEY_COLUMN: usize = 30;

/// The help text for a popup `inner_width` cells wide: two columns when they fit, else
/// each key on its own row with its meaning indented below.
pub fn lines(inner_width: u16) -> Vec<Line<'static>> {
    let key_style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
    let head = Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED);
    let two_columns = usize::from(inner_width) >= KEY_COLUMN + 40;
    let mut lines = Vec::new();
    for (title, table) in [("Keys", KEYS), ("Commands", COMMANDS)] {
        lines.push(Line::styled(title, head));
        for (k, what) in table {
            if two_columns {
                lines.push(Line::from(vec![
                    Span::styled(format!("{k:<KEY_COLUMN$}"), key_style),
                    Span::raw(*what),
                ]));
            } else {
                lines.push(Line::styled(*k, key_style));
                let width = usize::from(inner_width).saturating_sub(2);
                for row in crate::text::wrap(what, width) {
                    lines.push(Line::raw(format!("  {row}")));
                }
            }
        }
    }
    lines
}

/// The most the overlay can scroll on a terminal of this size.
pub fn max_scroll(area: Rect) -> u16 {
    let w = area.width.min(80);
    let rows = lines(w.saturating_sub(2)).len() as u16;
    let h = area.height.min(rows + 2);
    rows.saturating_sub(h.saturating_sub(2))
}

/// Draws the overlay, centred over `area`, scrolled down by `scroll` rows (kept within
/// the text).
pub fn draw(frame: &mut Frame, area: Rect, scroll: u16) {
    let w = area.width.min(80);
    let text = lines(w.saturating_sub(2));
    let rows = text.len() as u16;
    let h = area.height.min(rows + 2);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let scroll = scroll.min(rows.saturating_sub(h.saturating_sub(2)));
    let title = if rows + 2 > h {
        " Help · ↑↓ scroll · Esc close "
    } else {
        " Help · Esc to close "
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(text)
            .scroll((scroll, 0))
            .block(Block::bordered().title(title)),
        popup,
    );
}
