//! Rendering: a pure function of the [`App`] state onto a ratatui [`Frame`].
//!
//! One file per pane. Nothing here changes state; [`layout`] is shared with the state code
//! so mouse clicks and page scrolls agree with what is drawn.

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

/// Width of the conversations sidebar.
pub const SIDEBAR_WIDTH: u16 = 14;
/// Width of the online users panel.
pub const USERS_WIDTH: u16 = 16;
/// Narrowest terminal that shows the sidebar.
const SIDEBAR_MIN_TERMINAL: u16 = 50;
/// Narrowest terminal that shows the users panel.
const USERS_MIN_TERMINAL: u16 = 80;

/// Where each pane of the chat screen goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    /// Top row: the conversation's title.
    pub title: Rect,
    /// Conversations list, when the terminal is wide enough.
    pub sidebar: Option<Rect>,
    /// The messages.
    pub messages: Rect,
    /// Online users, when the terminal is wide enough.
    pub users: Option<Rect>,
    /// The status bar, above the input line.
    pub status: Rect,
    /// The input line, at the bottom.
    pub input: Rect,
}

/// Splits the terminal into the chat screen's panes.
pub fn layout(area: Rect) -> Areas {
    let (x, y, w, h) = (area.x, area.y, area.width, area.height);
    let body_h = h.saturating_sub(3);
    let title = Rect::new(x, y, w, h.min(1));
    let status = Rect::new(x, y + h.saturating_sub(2), w, u16::from(h >= 3));
    let input = Rect::new(x, y + h.saturating_sub(1), w, u16::from(h >= 2));
    let mut mx = x;
    let mut mw = w;
    let sidebar = (w >= SIDEBAR_MIN_TERMINAL).then(|| {
        mx += SIDEBAR_WIDTH + 1;
        mw -= SIDEBAR_WIDTH + 1;
        Rect::new(x, y + 1, SIDEBAR_WIDTH, body_h)
    });
    let users = (w >= USERS_MIN_TERMINAL).then(|| {
        mw -= USERS_WIDTH + 1;
        Rect::new(x + w - USERS_WIDTH, y + 1, USERS_WIDTH, body_h)
    });
    Areas {
        title,
        sidebar,
        messages: Rect::new(mx, y + 1, mw, body_h),
        users,
        status,
        input,
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if app.screen == Screen::Login {
        login::draw(frame, area, app);
        return;
    }
    let areas = layout(area);
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
    fn layout_drops_panels_on_narrow_terminals() {
        let wide = layout(Rect::new(0, 0, 100, 30));
        assert_eq!(wide.sidebar, Some(Rect::new(0, 1, 14, 27)));
        assert_eq!(wide.users, Some(Rect::new(84, 1, 16, 27)));
        assert_eq!(wide.messages, Rect::new(15, 1, 68, 27));
        assert_eq!(wide.status, Rect::new(0, 28, 100, 1));
        assert_eq!(wide.input, Rect::new(0, 29, 100, 1));

        let mid = layout(Rect::new(0, 0, 60, 20));
        assert_eq!(mid.users, None);
        assert_eq!(mid.messages, Rect::new(15, 1, 45, 17));

        let narrow = layout(Rect::new(0, 0, 40, 10));
        assert_eq!((narrow.sidebar, narrow.users), (None, None));
        assert_eq!(narrow.messages, Rect::new(0, 1, 40, 7));

        let tiny = layout(Rect::new(0, 0, 5, 1));
        assert_eq!(tiny.messages.height, 0);
    }

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
