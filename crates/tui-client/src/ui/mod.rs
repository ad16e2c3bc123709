//! Rendering: a pure function of the [`App`] state onto a ratatui [`Frame`].
//!
//! One file per pane. Nothing here changes state. `ui` reads [`crate::app`]'s state; where
//! panes go comes from [`crate::layout`], which the state code uses too, so mouse clicks
//! and page scrolls agree with what is drawn.

pub mod help;
pub mod input;
pub mod login;
pub mod messages;
pub mod sidebar;
pub mod status;
pub mod users;

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;

use crate::app::{App, Screen};
use crate::layout;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if app.screen == Screen::Login {
        login::draw(frame, area, app);
        return;
    }
    let areas = layout::areas(area);
    status::draw_title(frame, areas.title, app);
    if let Some(sidebar) = areas.sidebar {
        sidebar::draw(frame, sidebar, app);
        separator(frame, sidebar.right(), sidebar);
    }
    messages::draw(frame, areas.messages, app);
    if let Some(users) = areas.users {
        separator(frame, users.x - 1, users);
        users::draw(frame, users, app);
    }
    status::draw_status(frame, areas.status, app);
    input::draw(frame, areas.input, app);
    if app.show_help {
        help::draw(frame, area, app.help_scroll);
    }
}

/// A vertical line at column `x`, as tall as `beside`.
fn separator(frame: &mut Frame, x: u16, beside: Rect) {
    let style = Style::new().fg(Color::DarkGray);
    for y in beside.top()..beside.bottom() {
        frame.render_widget(Line::styled("│", style), Rect::new(x, y, 1, 1));
    }
}

/// The colour of a user's name: always the same for one name (whatever its case), spread
/// over a palette readable on dark and light backgrounds.
pub fn name_color(name: &str) -> Color {
    const PALETTE: [Color; 10] = [
        Color::Red,
        Color::Green,
        Color::Yellow,
        Color::Blue,
        Color::Magenta,
        Color::Cyan,
        Color::LightRed,
        Color::LightGreen,
        Color::LightBlue,
        Color::LightMagenta,
    ];
    // FNV-1a: stable across runs and platforms, unlike std's randomly seeded hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        hash ^= u32::from(b.to_ascii_lowercase());
        hash = hash.wrapping_mul(0x0100_0193);
    }
    PALETTE[hash as usize % PALETTE.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_colours_are_stable_and_case_blind() {
        assert_eq!(name_color("alice"), name_color("ALICE"));
        assert_eq!(name_color("alice"), name_color("alice"));
        let colours: std::collections::HashSet<_> =
            ["alice", "bob", "carol", "dave", "erin", "frank"]
                .iter()
                .map(|n| format!("{:?}", name_color(n)))
                .collect();
        assert!(colours.len() >= 3, "too few colours: {colours:?}");
    }
}
