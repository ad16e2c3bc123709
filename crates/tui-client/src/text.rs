//! Text from the network made safe and measurable for the terminal: sanitizing, display
//! widths of grapheme clusters, and word-wrapping to a width.
//!
//! Everything here measures with ratatui's own [`CellWidth`], grapheme by grapheme, so a
//! wrapped row is exactly as wide on screen as we computed.

use ratatui::buffer::CellWidth;
use unicode_segmentation::UnicodeSegmentation;

/// Replaces everything that could act on the terminal instead of being shown: control
/// characters (C0, DEL, C1 — ESC among them, so no escape sequence survives), bidirectional
/// overrides and isolates, and line/paragraph separators. Each becomes `�`.
///
/// The server already rejects such text, but the client never trusts the network.
///
/// ```
/// use simpletextim_tui::text::sanitize;
/// assert_eq!(sanitize("hi\u{1b}[31m red"), "hi�[31m red");
/// assert_eq!(sanitize("漢字 👋"), "漢字 👋");
/// ```
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if is_unsafe(c) { '\u{FFFD}' } else { c })
        .collect()
}

/// Whether `c` must not reach the terminal as is.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200E}' | '\u{200F}'          // LRM, RLM
            | '\u{2028}' | '\u{2029}'        // line and paragraph separators
            | '\u{202A}'..='\u{202E}'        // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}'        // bidi isolates
        )
}

/// Display width of `s` in terminal cells, as ratatui will draw it.
pub fn width(s: &str) -> usize {
    s.graphemes(true).map(grapheme_width).sum()
}

/// Width of one grapheme cluster, as ratatui will draw it (zero-width ones are dropped).
pub fn grapheme_width(g: &str) -> usize {
    if g.contains(char::is_control) {
        0
    } else {
        usize::from(g.cell_width())
    }
}

/// Cuts `s` to at most `max` cells, ending with `…` when something was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for g in s.graphemes(true) {
        let w = grapheme_width(g);
        if used + w > max - 1 {
            break;
        }
        used += w;
        out.push_str(g);
    }
    out.push('…');
    out
}

/// Wraps `s` into rows of at most `width` cells (`width` ≥ 1 is assumed; 0 is treated as 1).
///
/// Breaks after spaces where it can, and inside a word only when the word alone is wider
/// than a row. A wide character (CJK, emoji) is never split across rows. Always returns at
/// least one row.
///
/// ```
/// use simpletextim_tui::text::wrap;
/// assert_eq!(wrap("hello big world", 10), ["hello big ", "world"]);
/// assert_eq!(wrap("漢字漢字漢", 4), ["漢字", "漢字", "漢"]);
/// ```
pub fn wrap(s: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut rows = Vec::new();
    let mut row = String::new();
    let mut row_w = 0;
    // Words carry their trailing spaces; a space that does not fit at the end of a row is
    // dropped there.
    for word in s.split_word_bounds_with_spaces() {
        let core = word.trim_end_matches(' ');
        let spaces = word.len() - core.len();
        let cw = self::width(core);
        if row_w + cw <= width {
            row.push_str(core);
            row_w += cw;
        } else if cw <= width {
            rows.push(std::mem::take(&mut row));
            row.push_str(core);
            row_w = cw;
        } else {
            // A word wider than a row: on rows of its own, cut grapheme by grapheme.
            if row_w > 0 {
                rows.push(std::mem::take(&mut row));
                row_w = 0;
            }
            for g in core.graphemes(true) {
                let gw = grapheme_width(g);
                if row_w + gw > width && row_w > 0 {
                    rows.push(std::mem::take(&mut row));
                    row_w = 0;
                }
                row.push_str(g);
                row_w += gw;
            }
        }
        for _ in 0..spaces {
            if row_w >= width {
                break;
            }
            row.push(' ');
            row_w += 1;
        }
    }
    if !row.is_empty() || rows.is_empty() {
        rows.push(row);
    }
    rows
}

/// Splitting into words that carry their trailing whitespace.
trait SplitWords {
    fn split_word_bounds_with_spaces(&self) -> Vec<String>;
}

impl SplitWords for str {
    fn split_word_bounds_with_spaces(&self) -> Vec<String> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut in_space = false;
        for c in self.chars() {
            let space = c == ' ';
            if in_space && !space {
                words.push(std::mem::take(&mut cur));
            }
            in_space = space;
            cur.push(c);
        }
        if !cur.is_empty() {
            words.push(cur);
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_replaces_controls_escapes_and_bidi() {
        assert_eq!(sanitize("a\nb\tc\u{7f}\u{9b}d"), "a�b�c��d");
        assert_eq!(sanitize("\u{202E}evil"), "�evil");
        assert_eq!(sanitize("\u{1b}]0;title\u{7}"), "�]0;title�");
        assert_eq!(sanitize("plain é 漢 🎉"), "plain é 漢 🎉");
    }

    #[test]
    fn widths_of_wide_characters() {
        assert_eq!(width("abc"), 3);
        assert_eq!(width("漢字"), 4);
        assert_eq!(width("👋"), 2);
        assert_eq!(width("e\u{301}"), 1);
    }

    #[test]
    fn wrap_prefers_spaces_and_cuts_long_words() {
        assert_eq!(wrap("aaaa bbbb cccc", 9), ["aaaa bbbb", "cccc"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 5), [""]);
        assert_eq!(wrap("ab 漢字漢字", 5), ["ab ", "漢字", "漢字"]);
        // A wide character never straddles the edge: the row stays one cell short.
        assert_eq!(wrap("a漢字", 4), ["a漢", "字"]);
        assert_eq!(wrap("🎉🎉🎉", 3), ["🎉", "🎉", "🎉"]);
    }

    #[test]
    fn wrapped_rows_fit() {
        let s = "mixed 漢字 and 👋 emoji with some-very-long-words-that-must-be-cut ok";
        for w in 1..30 {
            for row in wrap(s, w) {
                assert!(width(&row) <= w.max(2), "{row:?} wider than {w}");
            }
        }
    }

    #[test]
    fn truncate_adds_ellipsis() {
        assert_eq!(truncate("alice", 10), "alice");
        assert_eq!(truncate("alexander", 5), "alex…");
        assert_eq!(truncate("漢字漢字", 5), "漢字…");
    }
}
