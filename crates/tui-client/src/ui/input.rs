//! The input line: a prompt naming the conversation, the text scrolled sideways so the
//! cursor stays visible, and the count of characters left of the 140 allowed.

use ratatui::Frame;
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

use crate::app::App;
use crate::input::LineEditor;
use crate::text::width;
use crate::ui::name_color;

/// Width kept at the right for the counter.
const COUNTER_WIDTH: usize = 5;

/// The part of an editor's text that fits in `avail` cells with the cursor visible, and
/// the cursor's column within it. With `mask`, every character is shown as `mask`.
pub fn visible(editor: &LineEditor, avail: usize, mask: Option<char>) -> (String, usize) {
    let shown: Vec<String> = editor
        .chars()
        .iter()
        .map(|&c| mask.unwrap_or(c).to_string())
        .collect();
    let cursor = editor.cursor();
    let avail = avail.max(1);
    // Drop characters from the left until the cursor fits (one cell left for it).
    let mut start = 0;
    while start < cursor && shown[start..cursor].iter().map(|s| width(s)).sum::<usize>() >= avail {
        start += 1;
    }
    let cursor_x = shown[start..cursor].iter().map(|s| width(s)).sum();
    let mut text = String::new();
    let mut used = 0;
    for s in &shown[start..] {
        let w = width(s);
        if used + w > avail {
            break;
        }
        used += w;
        text.push_str(s);
    }
    (text, cursor_x)
}

/// Draws the input line and places the cursor.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    if area.height == 0 {
        return;
    }
    let id = &app.active_conversation().id;
    let name = id.name();
    let prompt_style = match id {
        crate::app::ConvId::Public => Style::new().add_modifier(Modifier::BOLD),
        crate::app::ConvId::Private(u) => Style::new()
            .fg(name_color(u.as_str()))
            .add_modifier(Modifier::BOLD),
    };
    let prompt = vec![
        Span::raw("["),
        Span::styled(name.to_owned(), prompt_style),
        Span::raw("] "),
    ];
    let prompt_w: usize = prompt.iter().map(|s| width(&s.content)).sum();
    let w = usize::from(area.width);
    let avail = w.saturating_sub(prompt_w + COUNTER_WIDTH);
    let (text, cursor_x) = visible(&app.input, avail, None);
    let mut spans = prompt;
    // Sent and waiting for the server's echo: dimmed until it comes back.
    let text_style = if app.input_locked() {
        Style::new().fg(Color::DarkGray)
    } else {
        Style::new()
    };
    spans.push(Span::styled(text, text_style));
    frame.render_widget(Line::from(spans), area);

    if let Some(left) = app.chars_left() {
        let style = match left {
            l if l < 0 => Style::new()
                .fg(Color::LightRed)
                .add_modifier(Modifier::BOLD),
            l if l < 20 => Style::new().fg(Color::Yellow),
            _ => Style::new().fg(Color::DarkGray),
        };
        let label = format!("{left:>width$}", width = COUNTER_WIDTH);
        let x = area.x + area.width.saturating_sub(COUNTER_WIDTH as u16);
        let counter_area = Rect::new(x, area.y, area.width.min(COUNTER_WIDTH as u16), 1);
        frame.render_widget(Line::styled(label, style), counter_area);
    }
    if !app.show_help {
        let x = area.x + (prompt_w + cursor_x).min(w.saturating_sub(1)) as u16;
        frame.set_cursor_position(Position::new(x, area.y));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_scrolls_to_keep_the_cursor_visible() {
        let mut e = LineEditor::new();
        e.set_text("abcdefghij");
        assert_eq!(visible(&e, 20, None), ("abcdefghij".into(), 10));
        assert_eq!(visible(&e, 5, None), ("ghij".into(), 4));
        e.home();
        assert_eq!(visible(&e, 5, None), ("abcde".into(), 0));
    }

    #[test]
    fn wide_characters_and_masks() {
        let mut e = LineEditor::new();
        e.set_text("漢字漢字");
        assert_eq!(visible(&e, 5, None), ("漢字".into(), 4));
        assert_eq!(visible(&e, 10, Some('•')), ("••••".into(), 4));
    }
}
