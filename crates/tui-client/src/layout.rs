//! Screen geometry, in one place for the state code and the renderer: where each pane of
//! the chat screen goes, which row of the online users panel shows which user, and how the
//! help overlay is laid out. [`crate::app`] uses it to turn mouse clicks and page scrolls
//! into state changes, [`crate::ui`] to draw, so what is clicked is what is drawn.
//!
//! It imports neither `app` nor `ui` (only [`crate::text`]): both import it.

use ratatui::layout::Rect;

use crate::text::wrap;

/// Width of the conversations sidebar.
pub const SIDEBAR_WIDTH: u16 = 14;
/// Width of the online users panel.
pub const USERS_WIDTH: u16 = 16;
/// Narrowest terminal that shows the sidebar.
const SIDEBAR_MIN_TERMINAL: u16 = 50;
/// Narrowest terminal that shows the users panel.
const USERS_MIN_TERMINAL: u16 = 80;

/// Rows of the online users panel above the first name.
pub const USERS_HEADER_ROWS: usize = 1;

/// Widest the help overlay gets.
const HELP_MAX_WIDTH: u16 = 80;
/// Width of the help's key column when there is room for two columns.
pub const HELP_KEY_COLUMN: usize = 30;
/// Narrowest meaning column beside the key column.
const HELP_MIN_MEANING: usize = 40;

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
pub fn areas(area: Rect) -> Areas {
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

/// Rows of the online users panel `panel` that show names.
pub fn user_rows(panel: Rect) -> usize {
    usize::from(panel.height).saturating_sub(USERS_HEADER_ROWS)
}

/// Index in the online list of the first user the panel `panel` shows: 0, unless the
/// keyboard selection (`cursor`, F2) is further down than the panel is tall.
pub fn first_user_shown(cursor: Option<usize>, panel: Rect) -> usize {
    let rows = user_rows(panel).max(1);
    cursor.map_or(0, |i| (i + 1).saturating_sub(rows))
}

/// Index in the online list of the user shown on screen row `y` of the panel `panel`
/// (`None` on the header or outside the panel; the index may be past the list's end).
pub fn user_at(cursor: Option<usize>, panel: Rect, y: u16) -> Option<usize> {
    if !(panel.top()..panel.bottom()).contains(&y) {
        return None;
    }
    let row = usize::from(y - panel.y).checked_sub(USERS_HEADER_ROWS)?;
    Some(first_user_shown(cursor, panel) + row)
}

/// A section of the help: its title and its (key or command, what it does) rows.
pub type HelpSection = (&'static str, &'static [(&'static str, &'static str)]);

/// One row of the help text, before styling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelpRow {
    /// A section title.
    Title(&'static str),
    /// A key in the key column and what it does beside it (wide overlays).
    KeyAndMeaning(&'static str, &'static str),
    /// A key on its own row (narrow overlays: its meaning follows, indented).
    Key(&'static str),
    /// A row of a key's meaning below it (narrow overlays), without the indentation.
    Meaning(String),
}

/// The help overlay laid out on a screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Help {
    /// The popup, centred on the screen, border included.
    pub popup: Rect,
    /// The text rows, top to bottom.
    pub rows: Vec<HelpRow>,
    /// The most the text can scroll down.
    pub max_scroll: u16,
}

impl Help {
    /// The text does not fit: it scrolls.
    pub fn scrolls(&self) -> bool {
        self.max_scroll > 0
    }
}

/// The help text for a popup `inner_width` cells wide: two columns when they fit, else
/// each key on its own row with its meaning indented below.
pub fn help_rows(sections: &[HelpSection], inner_width: u16) -> Vec<HelpRow> {
    let two_columns = usize::from(inner_width) >= HELP_KEY_COLUMN + HELP_MIN_MEANING;
    let meaning_width = usize::from(inner_width).saturating_sub(2);
    let mut rows = Vec::new();
    for (title, table) in sections {
        rows.push(HelpRow::Title(title));
        for (key, what) in table.iter() {
            if two_columns {
                rows.push(HelpRow::KeyAndMeaning(key, what));
            } else {
                rows.push(HelpRow::Key(key));
                rows.extend(wrap(what, meaning_width).into_iter().map(HelpRow::Meaning));
            }
        }
    }
    rows
}

/// The help overlay on a screen `area`: at most 80 cells wide, as tall as its text and the
/// border (or the screen), centred.
pub fn help(sections: &[HelpSection], area: Rect) -> Help {
    let w = area.width.min(HELP_MAX_WIDTH);
    let rows = help_rows(sections, w.saturating_sub(2));
    let count = u16::try_from(rows.len()).unwrap_or(u16::MAX);
    let h = area.height.min(count.saturating_add(2));
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    Help {
        popup,
        rows,
        max_scroll: count.saturating_sub(h.saturating_sub(2)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_drops_panels_on_narrow_terminals() {
        let wide = areas(Rect::new(0, 0, 100, 30));
        assert_eq!(wide.sidebar, Some(Rect::new(0, 1, 14, 27)));
        assert_eq!(wide.users, Some(Rect::new(84, 1, 16, 27)));
        assert_eq!(wide.messages, Rect::new(15, 1, 68, 27));
        assert_eq!(wide.status, Rect::new(0, 28, 100, 1));
        assert_eq!(wide.input, Rect::new(0, 29, 100, 1));

        let mid = areas(Rect::new(0, 0, 60, 20));
        assert_eq!(mid.users, None);
        assert_eq!(mid.messages, Rect::new(15, 1, 45, 17));

        let narrow = areas(Rect::new(0, 0, 40, 10));
        assert_eq!((narrow.sidebar, narrow.users), (None, None));
        assert_eq!(narrow.messages, Rect::new(0, 1, 40, 7));

        let tiny = areas(Rect::new(0, 0, 5, 1));
        assert_eq!(tiny.messages.height, 0);
    }

    #[test]
    fn user_rows_follow_the_keyboard_selection() {
        // A header and four names.
        let panel = Rect::new(10, 1, 16, 5);
        assert_eq!(user_at(None, panel, 1), None, "the header");
        assert_eq!(user_at(None, panel, 2), Some(0));
        assert_eq!(user_at(None, panel, 6), None, "below the panel");
        assert_eq!(first_user_shown(Some(9), panel), 6);
        assert_eq!(user_at(Some(9), panel, 2), Some(6));
        assert_eq!(user_at(Some(9), panel, 5), Some(9));
    }
}
