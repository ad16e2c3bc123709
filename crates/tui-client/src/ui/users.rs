//! The online users panel: a header with the count, then one row per user (own name in
//! bold). Clicking a name opens a private conversation with that user.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;

use crate::app::App;
use crate::layout::{self, USERS_HEADER_ROWS};
use crate::text::truncate;
use crate::ui::name_color;

/// Draws the panel: a header, then from the first user shown (see
/// [`layout::first_user_shown`]; mouse clicks find users with the same arithmetic) one name
/// a row.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    if area.height == 0 {
        return;
    }
    let w = usize::from(area.width);
    let header = Line::styled(
        truncate(&format!("{} online", app.online.len()), w),
        Style::new().add_modifier(Modifier::BOLD),
    );
    frame.render_widget(header, Rect::new(area.x, area.y, area.width, 1));
    let rows = layout::user_rows(area);
    let first = layout::first_user_shown(app.users_cursor, area);
    let overflow = app.online.len() - first > rows;
    for (i, user) in app.online.iter().skip(first).enumerate() {
        if i >= rows {
            break;
        }
        let y = area.y + (USERS_HEADER_ROWS + i) as u16;
        let selected = app.users_cursor == Some(first + i);
        let line = if overflow && i + 1 == rows && !selected {
            let more = app.online.len() - first - i;
            Line::styled(
                truncate(&format!("+{more} more"), w),
                Style::new().fg(Color::DarkGray),
            )
        } else {
            let mut style = Style::new().fg(name_color(user.as_str()));
            if app.me.as_ref() == Some(user) {
                style = style.add_modifier(Modifier::BOLD);
            }
            if selected {
                style = style.add_modifier(Modifier::REVERSED);
            }
            Line::styled(truncate(user.as_str(), w), style)
        };
        frame.render_widget(line, Rect::new(area.x, y, area.width, 1));
    }
}
