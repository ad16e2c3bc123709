//! The login screen: server, user id, a masked password field, and the reason the last
//! attempt failed.

use ratatui::Frame;
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Padding};

use crate::app::{App, LoginField};
use crate::text::{sanitize, truncate};
use crate::ui::input::visible;

/// Width of the field labels.
const LABEL_WIDTH: usize = 10;

/// Draws the login form, centred.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let w = area.width.min(56);
    let h = area.height.min(11);
    let form = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, form);
    let block = Block::bordered()
        .title(" SimpleTextIM ")
        .padding(Padding::horizontal(1));
    let inner = block.inner(form);
    frame.render_widget(block, form);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let iw = usize::from(inner.width);
    let mut lines: Vec<Line> = Vec::new();
    let dim = Style::new().fg(Color::DarkGray);
    lines.push(Line::from(vec![
        Span::styled(format!("{:<LABEL_WIDTH$}", "server"), dim),
        Span::raw(truncate(
            &sanitize(&app.settings.server),
            iw.saturating_sub(LABEL_WIDTH),
        )),
    ]));
    lines.push(Line::raw(""));
    let cursor = fields(app, iw, &mut lines);
    lines.push(Line::raw(""));
    lines.push(status(app, iw));
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        truncate("Enter: log in · Tab: next field · Esc: quit", iw),
        dim,
    ));
    for (i, line) in lines.into_iter().enumerate() {
        let y = inner.y + i as u16;
        if y < inner.bottom() {
            frame.render_widget(line, Rect::new(inner.x, y, inner.width, 1));
        }
    }
    if let Some((row, x)) = cursor
        && inner.y + (row as u16) < inner.bottom()
    {
        frame.set_cursor_position(Position::new(inner.x + x as u16, inner.y + row as u16));
    }
}

/// Adds the user id and password rows to `lines`; returns where the cursor goes (row of
/// `lines`, column) when a field has the focus.
fn fields(app: &App, iw: usize, lines: &mut Vec<Line>) -> Option<(usize, usize)> {
    let dim = Style::new().fg(Color::DarkGray);
    let mut cursor = None;
    for field in [LoginField::User, LoginField::Password] {
        let (label, editor, mask) = match field {
            LoginField::User => ("user", &app.login.user, None),
            LoginField::Password => ("password", &app.login.password, Some('•')),
        };
        let focused = app.login.focus == field && !app.login.busy;
        let label_style = if focused {
            Style::new().add_modifier(Modifier::BOLD)
        } else {
            dim
        };
        let (text, cx) = visible(editor, iw.saturating_sub(LABEL_WIDTH + 1), mask);
        if focused {
            cursor = Some((lines.len(), LABEL_WIDTH + cx));
        }
        let text_style = Style::new().add_modifier(Modifier::UNDERLINED);
        let pad = " ".repeat(iw.saturating_sub(LABEL_WIDTH + 1 + crate::text::width(&text)));
        lines.push(Line::from(vec![
            Span::styled(format!("{label:<LABEL_WIDTH$}"), label_style),
            Span::styled(format!("{text}{pad}"), text_style),
        ]));
    }
    cursor
}

/// The row under the fields: "connecting…", why the last attempt failed, or nothing.
fn status(app: &App, iw: usize) -> Line<'static> {
    if app.login.busy {
        Line::styled("connecting…", Style::new().fg(Color::Yellow))
    } else if let Some(e) = &app.login.error {
        Line::styled(
            truncate(&sanitize(e), iw),
            Style::new()
                .fg(Color::LightRed)
                .add_modifier(Modifier::BOLD),
        )
    } else {
        Line::raw("")
    }
}
