//! The message pane: entries laid out as rows (time, sender, wrapped text, a date line when
//! the day changes), the bottom of the conversation shown unless scrolled up, and a
//! "N new messages" marker when messages arrive below a scrolled-up view.

use chrono::NaiveDate;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Clear;

use crate::app::{App, ConvId, Conversation, Entry, EntryKind, TimeZone};
use crate::text::{truncate, width, wrap};
use crate::ui::name_color;

/// Narrowest text column kept beside the time and sender before continuation rows give
/// up the indentation.
const MIN_TEXT_WIDTH: usize = 10;

/// The rows of entry `index` of a conversation at a pane width: a date line first when
/// its local day differs from the previous entry's, then its wrapped text.
pub fn entry_block(
    conv: &Conversation,
    index: usize,
    pane_width: u16,
    tz: TimeZone,
) -> Vec<Line<'static>> {
    let w = usize::from(pane_width).max(1);
    let mut out = Vec::new();
    let Some(entry) = conv.entries.get(index) else {
        return out;
    };
    let local = tz.local(entry.ts_ms);
    let previous_day = index
        .checked_sub(1)
        .and_then(|i| conv.entries.get(i))
        .map(|e| tz.local(e.ts_ms).date());
    if previous_day != Some(local.date()) {
        out.push(date_line(local.date(), w));
    }
    entry_rows(entry, local.format("%H:%M ").to_string(), w, &mut out);
    out
}

/// All rows of a conversation at a pane width, oldest first.
pub fn rows(conv: &Conversation, pane_width: u16, tz: TimeZone) -> Vec<Line<'static>> {
    (0..conv.entries.len())
        .flat_map(|i| entry_block(conv, i, pane_width, tz))
        .collect()
}

/// How many rows [`rows`] gives.
pub fn row_count(conv: &Conversation, pane_width: u16, tz: TimeZone) -> usize {
    (0..conv.entries.len())
        .map(|i| entry_block(conv, i, pane_width, tz).len())
        .sum()
}

/// The last `needed` rows of a conversation (fewer when it has fewer), oldest first, and
/// whether they are all of its rows. Only the entries at the end are laid out, so drawing
/// a long scrollback costs what is shown.
pub fn last_rows(
    conv: &Conversation,
    pane_width: u16,
    tz: TimeZone,
    needed: usize,
) -> (Vec<Line<'static>>, bool) {
    let mut blocks = Vec::new();
    let mut count = 0;
    let mut i = conv.entries.len();
    while i > 0 && count < needed {
        i -= 1;
        let block = entry_block(conv, i, pane_width, tz);
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

fn entry_rows(entry: &Entry, time: String, w: usize, out: &mut Vec<Line<'static>>) {
    let dim = Style::new().fg(Color::DarkGray);
    let (mut prefix, text_style) = match &entry.kind {
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
                    Span::raw("<"),
                    Span::styled(from.as_str().to_owned(), name_style),
                    Span::raw("> "),
                ],
                text_style,
            )
        }
        EntryKind::Joined(_) => (
            vec![Span::styled(time, dim), Span::styled("--> ", dim)],
            dim,
        ),
        EntryKind::Left(_) => (
            vec![Span::styled(time, dim), Span::styled("<-- ", dim)],
            dim,
        ),
        EntryKind::Info => {
            let s = Style::new().fg(Color::Cyan);
            (vec![Span::styled(time, dim), Span::styled("-!- ", s)], s)
        }
        EntryKind::Error => {
            let s = Style::new().fg(Color::Red);
            (vec![Span::styled(time, dim), Span::styled("-!- ", s)], s)
        }
    };
    let prefix_w: usize = prefix.iter().map(|s| width(&s.content)).sum();
    if prefix_w + MIN_TEXT_WIDTH <= w {
        let mut rows = wrap(&entry.text, w - prefix_w).into_iter();
        let first = rows.next().unwrap_or_default();
        prefix.push(Span::styled(first, text_style));
        out.push(Line::from(prefix));
        let indent = " ".repeat(prefix_w);
        for row in rows {
            out.push(Line::from(vec![
                Span::raw(indent.clone()),
                Span::styled(row, text_style),
            ]));
        }
    } else {
        // Too narrow to indent: the prefix on its own row, the text below at full width.
        out.push(Line::from(prefix));
        for row in wrap(&entry.text, w) {
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
    if conv.entries.is_empty() {
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
    let (all, _) = last_rows(conv, area.width, app.settings.tz, conv.scroll + h);
    // Scrolled past the oldest row: show the top of the conversation.
    let scroll = conv.scroll.min(all.len().saturating_sub(h));
    let end = all.len() - scroll;
    let start = end.saturating_sub(h);
    let shown = end - start;
    // Chat grows upwards from the input line: few rows sit at the bottom of the pane.
    let top = area.y + (area.height - shown as u16);
    for (i, line) in all[start..end].iter().enumerate() {
        frame.render_widget(line, Rect::new(area.x, top + i as u16, area.width, 1));
    }
    if scroll > 0 && conv.new_below > 0 {
        let n = conv.new_below;
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
    use simpletextim_proto::UserId;

    fn conv(n: u64) -> Conversation {
        let mut c = crate::app::tests_support::conversation();
        for i in 0..n {
            c.entries.push(Entry {
                // Three entries a day.
                ts_ms: i * 8 * 3_600_000,
                kind: EntryKind::Chat {
                    from: UserId::new("bob").unwrap(),
                    own: false,
                    mention: false,
                },
                text: format!("message {i} that is long enough to wrap on narrow panes"),
            });
        }
        c
    }

    fn text(lines: &[Line]) -> Vec<String> {
        lines.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn last_rows_is_the_tail_of_rows() {
        let c = conv(10);
        for w in [20, 40, 80] {
            let all = text(&rows(&c, w, TimeZone::utc()));
            assert_eq!(row_count(&c, w, TimeZone::utc()), all.len());
            for needed in [0, 1, 5, 17, all.len(), all.len() + 3] {
                let (tail, complete) = last_rows(&c, w, TimeZone::utc(), needed);
                let n = needed.min(all.len());
                assert_eq!(text(&tail), all[all.len() - n..], "w={w} needed={needed}");
                assert_eq!(complete, needed >= all.len(), "w={w} needed={needed}");
            }
        }
    }

    #[test]
    fn a_date_line_starts_each_day() {
        let c = conv(4);
        let all = text(&rows(&c, 80, TimeZone::utc()));
        let dates: Vec<&String> = all.iter().filter(|r| r.starts_with("──")).collect();
        assert_eq!(dates.len(), 2);
        assert!(all[0].starts_with("── Thursday 1 January 1970 "));
        assert_eq!(
            all[1],
            "00:00 <bob> message 0 that is long enough to wrap on narrow panes"
        );
    }
}
