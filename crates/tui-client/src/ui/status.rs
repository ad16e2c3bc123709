//! The title bar (top: the conversation shown) and the status bar (above the input: server,
//! own user id, connection state, active conversation, activity in the other
//! conversations, and the last error or notice).

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

use crate::app::{App, Connection, ConvId, OlderHistory};
use crate::text::sanitize;

fn bar_style() -> Style {
    Style::new().fg(Color::White).bg(Color::Blue)
}

/// Draws the title bar.
pub fn draw_title(frame: &mut Frame, area: Rect, app: &App) {
    let conv = app.active_conversation();
    let mut text = match &conv.id {
        ConvId::Public => format!(" all · public conversation · {} online", app.online.len()),
        ConvId::Private(u) => format!(
            " {u} · private conversation · {}",
            if app.online.contains(u) {
                "online"
            } else {
                "offline"
            }
        ),
    };
    if conv.older == OlderHistory::Loading {
        text.push_str(" · loading older…");
    }
    let line = Line::from(vec![
        Span::styled(text, Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(" │ F1: help"),
    ])
    .style(bar_style());
    frame.render_widget(line, area);
}

/// The connection state in words, and its colour.
pub fn connection_label(c: &Connection) -> (String, Color) {
    match c {
        Connection::LoggedOut => ("logged out".into(), Color::Gray),
        Connection::Connecting => ("connecting…".into(), Color::Yellow),
        Connection::Connected => ("connected".into(), Color::LightGreen),
        Connection::Reconnecting { in_secs: 0 } => ("reconnecting…".into(), Color::Yellow),
        Connection::Reconnecting { in_secs } => {
            (format!("reconnecting in {in_secs}s"), Color::Yellow)
        }
        Connection::Offline { .. } => ("offline".into(), Color::LightRed),
    }
}

/// Draws the status bar.
pub fn draw_status(frame: &mut Frame, area: Rect, app: &App) {
    let sep = Span::styled(" │ ", Style::new().fg(Color::Gray));
    let (conn, conn_color) = connection_label(&app.connection);
    let me = app.me.as_ref().map_or("-", |u| u.as_str());
    let mut spans = vec![Span::raw(" ")];
    // On a narrow terminal the server's address gives way to what changes.
    if area.width >= 60 {
        spans.push(Span::raw(sanitize(&app.settings.server)));
        spans.push(sep.clone());
    }
    spans.extend([
        Span::styled(me.to_owned(), Style::new().add_modifier(Modifier::BOLD)),
        sep.clone(),
        Span::styled(
            conn,
            Style::new().fg(conn_color).add_modifier(Modifier::BOLD),
        ),
        sep.clone(),
        Span::raw(app.active_conversation().id.name().to_owned()),
    ]);
    // Activity elsewhere, WeeChat style: the numbers of conversations with unread
    // messages, highlighted ones (private message, mention) in yellow.
    let active: Vec<(usize, bool)> = app
        .conversations
        .iter()
        .enumerate()
        .filter(|(i, c)| *i != app.active && c.unread > 0)
        .map(|(i, c)| (i + 1, c.highlight))
        .collect();
    if !active.is_empty() {
        spans.push(sep.clone());
        spans.push(Span::raw("act "));
        for (n, (number, highlight)) in active.into_iter().enumerate() {
            if n > 0 {
                spans.push(Span::raw(","));
            }
            let style = if highlight {
                Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
            } else {
                Style::new().add_modifier(Modifier::BOLD)
            };
            spans.push(Span::styled(number.to_string(), style));
        }
    }
    if app.active_conversation().msgs.scroll() > 0 {
        spans.push(sep.clone());
        spans.push(Span::raw("scrolled"));
    }
    if let Some(user) = app.users_cursor.and_then(|i| app.online.get(i)) {
        spans.push(sep.clone());
        spans.push(Span::styled(
            format!("talk privately to {user}? ↑↓ choose · Enter open · Esc cancel"),
            Style::new()
                .fg(Color::LightYellow)
                .add_modifier(Modifier::BOLD),
        ));
    } else if let Some(status) = &app.status {
        spans.push(sep);
        let style = if status.error {
            Style::new()
                .fg(Color::LightRed)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        spans.push(Span::styled(status.text.clone(), style));
    }
    frame.render_widget(Line::from(spans).style(bar_style()), area);
}
