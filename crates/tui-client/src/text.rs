//! Text from the network made safe and measurable for the terminal: sanitizing, display
//! widths of grapheme clusters, and word-wrapping to a width.
//!
//! Everything here measures with ratatui's own [`CellWidth`], grapheme by grapheme, so a
//! wrapped row is exactly as wide on screen as we computed.

use ratatui::buffer::CellWidth;
use unicode_segmentation::UnicodeSegmentation;

/// Makes text from the network safe to show: what could act on the terminal or reorder the
/// text is replaced with a visible `�`, what is invisible is removed.
///
/// - Shown as `�`: control characters (C0, DEL, C1 — ESC among them, so no escape sequence
///   survives), line and paragraph separators, and every bidirectional control — the
///   embeddings and overrides U+202A–U+202E, the isolates U+2066–U+2069, the marks
///   U+200E/U+200F and U+061C. A bidi control reorders what follows it ("Trojan Source",
///   `invoice\u{202E}txt.exe`); Unicode TR36 §2.4 and TR39 count them as always suspect in text
///   that is merely displayed, so the `�` shows that someone tried.
/// - Removed: the invisible format characters — zero-width space, non-joiner and joiner
///   U+200B–U+200D, word joiner and invisible operators U+2060–U+2065, the deprecated
///   format controls U+206A–U+206F, BOM/zero-width no-break space U+FEFF, soft hyphen
///   U+00AD, combining grapheme joiner U+034F, Mongolian vowel separator U+180E,
///   interlinear annotation U+FFF9–U+FFFB and the tag characters U+E0000–U+E007F. They
///   draw nothing, so removing them changes nothing the sender meant to show, while they
///   can hide text (tag characters spell ASCII invisibly) or make two different strings
///   look alike (`pay\u{200B}pal`). A terminal does no Arabic or Indic shaping, so the
///   non-joiner's legitimate use in Persian has no visible effect here anyway.
///
/// Two exceptions keep emoji whole, as chat clients such as Signal do:
///
/// - a zero-width joiner (U+200D) stays where Unicode's grapheme rules join it to the
///   character after it into one user-perceived character: an emoji ZWJ sequence
///   (`👨\u{200D}👩\u{200D}👧`, family — rule GB11) or an Indic conjunct (rule GB9c). Anywhere else (`a\u{200D}b`,
///   at the end of a message, before a combining mark) it joins nothing and is removed;
/// - tag characters stay in a subdivision flag: black flag U+1F3F4, a subdivision id of
///   2 to 7 lower-case letters and digits in tags, a cancel tag (🏴 + `gbeng` + cancel tag
///   is England's).
///
/// Variation selectors and skin-tone modifiers are visible parts of emoji and stay.
///
/// The server already rejects control characters, but the client never trusts the network.
///
/// ```
/// use simpletextim_tui::text::sanitize;
/// assert_eq!(sanitize("hi\u{1b}[31m red"), "hi�[31m red");
/// assert_eq!(sanitize("ab\u{202E}cd"), "ab�cd");
/// assert_eq!(sanitize("pay\u{200B}pal"), "paypal");
/// assert_eq!(sanitize("漢字 👋 👨\u{200D}👩\u{200D}👧"), "漢字 👋 👨\u{200D}👩\u{200D}👧");
/// ```
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // Grapheme by grapheme, so a joiner or a tag is judged by the cluster it belongs to.
    for g in s.graphemes(true) {
        let flag = is_flag_tag_sequence(g);
        let mut chars = g.chars().peekable();
        while let Some(c) = chars.next() {
            if is_shown_replaced(c) {
                out.push('\u{FFFD}');
            } else if c == ZWJ {
                if chars.peek().is_some_and(|&next| joins(next)) {
                    out.push(c);
                }
            } else if is_tag(c) {
                if flag {
                    out.push(c);
                }
            } else if !is_invisible(c) {
                out.push(c);
            }
        }
    }
    out
}

/// The zero-width joiner.
const ZWJ: char = '\u{200D}';
/// The base of emoji tag sequences (subdivision flags).
const BLACK_FLAG: char = '\u{1F3F4}';

/// Whether a zero-width joiner followed by `next` in one grapheme cluster joins two
/// characters. Inside a cluster, after a joiner comes either a character that only a
/// joining rule (GB11 emoji, GB9c Indic conjunct) keeps in the cluster, or one that extends
/// any cluster (a combining mark, another joiner). Unicode's own tables tell them apart:
/// after a plain letter, which no joining rule applies to, only the second kind stays in
/// the cluster.
fn joins(next: char) -> bool {
    let probe: String = ['a', ZWJ, next].into_iter().collect();
    probe.graphemes(true).count() == 2
}

/// Whether `c` must not reach the terminal as is and is shown as `�`.
fn is_shown_replaced(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}'        // line and paragraph separators
            | '\u{061C}'                    // Arabic letter mark
            | '\u{200E}' | '\u{200F}'        // LRM, RLM
            | '\u{202A}'..='\u{202E}'        // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}'        // bidi isolates
        )
}

/// Whether the grapheme cluster `g` is a subdivision flag: a black flag, then the tag
/// characters of a subdivision id (UTS #51 and #35: 2 to 7 lower-case letters and digits,
/// such as `gbeng`) and a cancel tag. Longer runs would spell hidden text.
fn is_flag_tag_sequence(g: &str) -> bool {
    let Some(tags) = g.strip_prefix(BLACK_FLAG) else {
        return false;
    };
    let Some(spec) = tags.strip_suffix('\u{E007F}') else {
        return false;
    };
    (2..=7).contains(&spec.chars().count())
        && spec
            .chars()
            .all(|c| matches!(c, '\u{E0030}'..='\u{E0039}' | '\u{E0061}'..='\u{E007A}'))
}

/// Whether `c` is a tag character (U+E0000–U+E007F).
fn is_tag(c: char) -> bool {
    matches!(c, '\u{E0000}'..='\u{E007F}')
}

/// Whether `c` draws nothing and is removed (the joiner and tags are judged apart).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}'                       // soft hyphen
        | '\u{034F}'                     // combining grapheme joiner
        | '\u{180E}'                     // Mongolian vowel separator
        | '\u{200B}'..='\u{200D}'         // zero-width space, non-joiner, joiner
        | '\u{2060}'..='\u{2065}'         // word joiner, invisible operators
        | '\u{206A}'..='\u{206F}'         // deprecated format controls
        | '\u{FEFF}'                     // BOM, zero-width no-break space
        | '\u{FFF9}'..='\u{FFFB}'         // interlinear annotation
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

    /// Every bidirectional control (embeddings, overrides, isolates, marks, the Arabic
    /// letter mark) is shown as `�`: each reorders or can reorder what follows it.
    #[test]
    fn sanitize_shows_every_bidi_control() {
        let bidi = [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
            '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ];
        for c in bidi {
            assert_eq!(sanitize(&format!("x{c}y")), "x�y", "U+{:04X}", u32::from(c));
        }
        // The classic: a file name that reads "exe.txt" backwards.
        assert_eq!(sanitize("invoice\u{202E}txt.exe"), "invoice�txt.exe");
    }

    /// Invisible characters are removed: they have nothing to show, and could hide text
    /// or make two different strings look the same.
    #[test]
    fn sanitize_removes_invisible_characters() {
        let invisible = [
            '\u{00AD}',
            '\u{034F}',
            '\u{180E}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{2061}',
            '\u{2062}',
            '\u{2063}',
            '\u{2064}',
            '\u{2065}',
            '\u{206A}',
            '\u{206F}',
            '\u{FEFF}',
            '\u{FFF9}',
            '\u{FFFA}',
            '\u{FFFB}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{E007F}',
        ];
        for c in invisible {
            assert_eq!(sanitize(&format!("x{c}y")), "xy", "U+{:04X}", u32::from(c));
        }
        assert_eq!(sanitize("\u{FEFF}pay\u{200B}pal\u{2060}"), "paypal");
        // Text smuggled in tag characters, outside a flag or too long for one.
        assert_eq!(sanitize("hi\u{E0069}\u{E0067}\u{E006E}\u{E007F}"), "hi");
        let smuggled: String = "ignoreall"
            .chars()
            .map(|c| char::from_u32(0xE0000 + u32::from(c)).expect("a tag"))
            .collect();
        assert_eq!(sanitize(&format!("🏴{smuggled}\u{E007F}")), "🏴");
        assert_eq!(
            sanitize("🏴\u{E0047}\u{E0042}\u{E007F}"),
            "🏴",
            "upper case"
        );
    }

    /// A zero-width joiner stays where it joins two characters into one (emoji ZWJ
    /// sequences; Indic conjuncts), and goes everywhere else. Tag characters stay in a flag's
    /// tag sequence. Variation selectors and skin tones are visible parts of emoji and stay.
    #[test]
    fn sanitize_keeps_joiners_that_join() {
        for kept in [
            "👨\u{200D}👩\u{200D}👧",
            "🏳\u{FE0F}\u{200D}🌈",
            "👩\u{1F3FD}\u{200D}💻",
            "❤\u{FE0F}\u{200D}🔥",
            "क्\u{200D}ष",
            "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
            "a 👨\u{200D}👩\u{200D}👧 b",
        ] {
            assert_eq!(sanitize(kept), kept);
        }
        assert_eq!(sanitize("a\u{200D}b"), "ab");
        assert_eq!(sanitize("👨\u{200D}"), "👨");
        assert_eq!(sanitize("\u{200D}👩"), "👩");
        // Two joiners in a row join nothing (Unicode breaks before the 👩).
        assert_eq!(sanitize("👨\u{200D}\u{200D}👩"), "👨👩");
        assert_eq!(sanitize("👨\u{200D} 👩"), "👨 👩");
        assert_eq!(sanitize("e\u{200D}\u{301}"), "e\u{301}");
        // Removing one invisible character does not glue a joiner to what followed it.
        assert_eq!(sanitize("👨\u{200D}\u{200B}👩"), "👨👩");
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
