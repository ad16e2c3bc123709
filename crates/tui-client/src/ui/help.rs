//! The help overlay (F1 or `/help`): every key and command, from the tables the state code
//! keeps beside the code that handles them ([`crate::app::KEYS`], [`crate::app::COMMANDS`]),
//! laid out by [`crate::layout::help`].

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

pub use crate::app::{COMMANDS, HELP, KEYS};
use crate::layout::{self, HELP_KEY_COLUMN, HelpRow};

/// The help text, styled, for a popup `inner_width` cells wide.
pub fn lines(inner_width: u16) -> Vec<Line<'static>> {
    let key_style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
    let head = Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED);
    layout::help_rows(&HELP, inner_width)
        .into_iter()
        .map(|row| match row {
            HelpRow::Title(title) => Line::styled(title, head),
            HelpRow::KeyAndMeaning(key, what) => Line::from(vec![
                Span::styled(format!("{key:<HELP_KEY_COLUMN$}"), key_style),
                Span::raw(what),
            ]),
            HelpRow::Key(key) => Line::styled(key, key_style),
            HelpRow::Meaning(row) => Line::raw(format!("  {row}")),
        })
        .collect()
}

/// Draws the overlay, centred over `area`, scrolled down by `scroll` rows (kept within
/// the text).
pub fn draw(frame: &mut Frame, area: Rect, scroll: u16) {
    let help = layout::help(&HELP, area);
    let title = if help.scrolls() {
        " Help · ↑↓ scroll · Esc close "
    } else {
        " Help · Esc to close "
    };
    frame.render_widget(Clear, help.popup);
    frame.render_widget(
        Paragraph::new(lines(help.popup.width.saturating_sub(2)))
            .scroll((scroll.min(help.max_scroll), 0))
            .block(Block::bordered().title(title)),
        help.popup,
    );
}
