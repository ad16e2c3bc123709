//! The message pane: entries laid out as rows (time, sender, wrapped text, a date line when
//! the day changes), the bottom of the conversation shown unless scrolled up, and a
//! "N new messages" marker when messages arrive below a scrolled-up view.

use chrono::NaiveDate;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Clear;

use crate::app::{App, ConvId, Conversation, EntryKind, EntryLayout};
use crate::text::{truncate, width};
use crate::ui::name_color;

/// The rows of entry `index` of a conversation at a pane width, styled: the rows
/// [`crate::app::MsgArea::entry_layout`] lays out (the scroll arithmetic counts the same).
pub fn entry_block(conv: &Conversation, index: usize, pane_width: u16) -> Vec<Line<'static>> {
    let (Some(entry), Some(layout)) = (
        conv.msgs.entries().get(index),
        conv.msgs.entry_layout(index, pane_width),
    ) else {
        return Vec::new();
    };
    let w = usize::from(pane_width).max(1);
    let mut out = Vec::with_capacity(layout.rows());
    if let Some(date) = layout.date {
        out.push(date_line(date, w));
    }
    let (prefix, text_style) = prefix(&entry.kind, layout.time.clone());
    entry_rows(prefix, text_style, layout, &mut out);
    out
}

/// All rows of a conversation at a pane width, oldest first.
pub fn rows(conv: &Conversation, pane_width: u16) -> Vec<Line<'static>> {
    (0..conv.msgs.entries().len())
        .flat_map(|i| entry_block(conv, i, pane_width))
        .collect()
}

/// The last `needed` rows of a conversation (fewer when it has fewer), oldest first, and
/// whether they are all of its rows. Only the entries at the end are laid out, so drawing
/// a long scrollback costs what is shown.
pub fn last_rows(
    conv: &Conversation,
    pane_width: u16,
    needed: usize,
) -> (Vec<Line<'static>>, bool) {
    let mut blocks = Vec::new();
    let mut count = 0;
    let mut i = conv.msgs.entries().len();
    while i > 0 && count < needed {
        i -= 1;
        let block = entry_block(conv, i, pane_width);
        count += block.len();
        blocks.push(block);
    }
    let rows: Vec<Line<'static>> = blocks.into_iter().rev().flatten().collect();
    let skip = rows.len().saturating_sub(needed);
    (rows.into_iter().skip(skip).collect(), i == 0 && skip == 0)
}

fn date_line(date: NaiveDate, w: usize) -> Line<'static> {
    let label = format!("── {} ", date.format("%A %-d %B %Y"));
    let fill = w.saturating_sub(width(&label));
    let text = truncate(&format!("{label}{}", "─".repeat(fill)), w);
    Line::styled(text, Style::new().fg(Color::DarkGray))
}

/// The styled time and marker of an entry, and the style of its text.
fn prefix(kind: &EntryKind, time: String) -> (Vec<Span<'static>>, Style) {
    let dim = Style::new().fg(Color::DarkGray);
    let (before, name, after) = kind.marker();
    match kind {
        EntryKind::Chat { from, own, mention } => {
            let mut name_style = Style::new().fg(name_color(from.as_str()));
            if *own {
                name_style = name_style.add_modifier(Modifier::BOLD | Modifier::REVERSED);
            }
            let text_style = if *mention {
                Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
            } else {
                Style::new()
            };
            (
                vec![
                    Span::styled(time, dim),
                    Span::raw(before),
                    Span::styled(name.to_owned(), name_style),
                    Span::raw(after),
                ],
                text_style,
            )
        }
        EntryKind::Joined(_) | EntryKind::Left(_) => (
            vec![Span::styled(time, dim), Span::styled(before, dim)],
            dim,
        ),
        EntryKind::Info | EntryKind::Error => {
            let colour = if matches!(kind, EntryKind::Info) {
                Color::Cyan
            } else {
                Color::Red
            };
            let s = Style::new().fg(colour);
            (vec![Span::styled(time, dim), Span::styled(before, s)], s)
        }
    }
}

/// The prefix and text rows of an entry, as laid out: the first text row beside the
/// prefix and the others indented, or (too narrow) the prefix alone and the text below.
fn entry_rows(
    mut prefix: Vec<Span<'static>>,
    text_style: Style,
    layout: EntryLayout,
    out: &mut Vec<Line<'static>>,
) {
    if layout.beside {
        let mut rows = layout.text.into_iter();
        let first = rows.next().expect("wrap returns at least one row");
        prefix.push(Span::styled(first, text_style));
        out.push(Line::from(prefix));
        let indent = " ".repeat(layout.prefix_width);
        for row in rows {
            out.push(Line::from(vec![
                Span::raw(indent.clone()),
                Span::styled(row, text_style),
            ]));
        }
    } else {
        out.push(Line::from(prefix));
        for row in layout.text {
            out.push(Line::styled(row, text_style));
        }
    }
}

/// Draws the active conversation into `area`.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    if area.height == 0 || area.width == 0 {
        return;
    }
    let conv = app.active_conversation();
    if conv.msgs.entries().is_empty() {
        let hint = match &conv.id {
            ConvId::Public => "No messages yet: type to talk to everyone. F1: help".to_owned(),
            ConvId::Private(u) => format!("Private conversation with {u}. F1: help"),
        };
        let y = area.y + area.height / 2;
        let line = Line::styled(
            truncate(&hint, usize::from(area.width)),
            Style::new().fg(Color::DarkGray),
        );
        frame.render_widget(line.centered(), Rect::new(area.x, y, area.width, 1));
        return;
    }
    let h = usize::from(area.height);
    let (all, _) = last_rows(conv, area.width, conv.msgs.scroll() + h);
    // Scrolled past the oldest row: show the top of the conversation.
    let scroll = conv.msgs.scroll().min(all.len().saturating_sub(h));
    let end = all.len() - scroll;
    let start = end.saturating_sub(h);
    let shown = end - start;
    // Chat grows upwards from the input line: few rows sit at the bottom of the pane.
    let top = area.y + (area.height - shown as u16);
    for (i, line) in all[start..end].iter().enumerate() {
        frame.render_widget(line, Rect::new(area.x, top + i as u16, area.width, 1));
    }
    if scroll > 0 && conv.msgs.new_below() > 0 {
        let n = conv.msgs.new_below();
        let label = format!(
            " ↓ {n} new message{} (PageDown) ",
            if n == 1 { "" } else { "s" }
        );
        let marker = Line::styled(
            truncate(&label, usize::from(area.width)),
            Style::new()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        );
        let row = Rect::new(area.x, area.bottom() - 1, area.width, 1);
        frame.render_widget(Clear, row);
        frame.render_widget(marker.centered(), row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Entry;
    use simpletextim_proto::UserId;

    fn conv(n: u64) -> Conversation {
        let mut c = crate::app::tests_support::conversation();
        for i in 0..n {
            c.msgs.push(
                Entry {
                    id: None,
                    // Three entries a day.
                    ts_ms: i * 8 * 3_600_000,
                    kind: EntryKind::Chat {
                        from: UserId::new("bob").unwrap(),
                        own: false,
                        mention: false,
                    },
                    text: format!("message {i} that is long enough to wrap on narrow panes"),
                },
                true,
            );
        }
        c
    }

    fn text(lines: &[Line]) -> Vec<String> {
        lines.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn last_rows_is_the_tail_of_rows() {
        let mut c = conv(10);
        for w in [20, 40, 80] {
            let all = text(&rows(&c, w));
            // The row count the scroll arithmetic keeps is the rows drawn.
            c.msgs.resize((w, 10));
            assert_eq!(c.msgs.total_rows(), all.len());
            for needed in [0, 1, 5, 17, all.len(), all.len() + 3] {
                let (tail, complete) = last_rows(&c, w, needed);
                let n = needed.min(all.len());
                assert_eq!(text(&tail), all[all.len() - n..], "w={w} needed={needed}");
                assert_eq!(complete, needed >= all.len(), "w={w} needed={needed}");
            }
        }
    }

    #[test]
    fn a_date_line_starts_each_day() {
        let c = conv(4);
        let all = text(&rows(&c, 80));
        let dates: Vec<&String> = all.iter().filter(|r| r.starts_with("──")).collect();
        assert_eq!(dates.len(), 2);
        assert!(all[0].starts_with("── Thursday 1 January 1970 "));
        assert_eq!(
            all[1],
            "00:00 <bob> message 0 that is long enough to wrap on narrow panes"
        );
    }
}
