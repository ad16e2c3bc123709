//! The conversations sidebar: "all" and one row per private peer, with its Alt+number,
//! unread count and highlight (a private message or a mention arrived).

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

use crate::app::{App, ConvId};
use crate::text::{truncate, width};

/// Draws the sidebar; row `i` is conversation `i` (mouse clicks rely on it).
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let w = usize::from(area.width);
    for (i, conv) in app.conversations.iter().enumerate() {
        if i >= usize::from(area.height) {
            break;
        }
        let number = if i < 9 {
            format!("{:>2} ", i + 1)
        } else {
            "   ".to_owned()
        };
        let unread = if conv.unread > 0 {
            format!(" {}", conv.unread)
        } else {
            String::new()
        };
        let name_w = w.saturating_sub(width(&number) + width(&unread));
        let name = truncate(conv.id.name(), name_w);
        let pad = " ".repeat(name_w.saturating_sub(width(&name)));
        let mut style = match conv.id {
            ConvId::Public => Style::new().add_modifier(Modifier::BOLD),
            ConvId::Private(_) => Style::new(),
        };
        if conv.highlight {
            style = style.fg(Color::Yellow).add_modifier(Modifier::BOLD);
        } else if conv.unread > 0 {
            style = style.fg(Color::White).add_modifier(Modifier::BOLD);
        }
        if i == app.active {
            style = style.add_modifier(Modifier::REVERSED);
        }
        let line = Line::from(vec![
            Span::styled(number, Style::new().fg(Color::DarkGray)),
            Span::raw(name),
            Span::raw(pad),
            Span::styled(unread, Style::new().fg(Color::Yellow)),
        ])
        .style(style);
        frame.render_widget(line, Rect::new(area.x, area.y + i as u16, area.width, 1));
    }
}
