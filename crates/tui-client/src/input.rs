//! The line editor of the input line: a cursor over characters, readline-style kills and
//! word moves, a history browsed with Up/Down, and Tab completion that cycles through
//! candidates.
//!
//! Plain data and pure methods: no terminal, no I/O.

/// A one-line text editor.
///
/// The text is kept as `char`s, so the cursor and the 140-character limit of the protocol
/// both count Unicode scalar values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineEditor {
    chars: Vec<char>,
    cursor: usize,
    history: Vec<String>,
    /// Position while browsing the history, and the draft that was being typed.
    browsing: Option<(usize, String)>,
    completion: Option<Completion>,
}

/// An ongoing Tab completion: repeated Tabs cycle through `candidates`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Completion {
    /// Where the completed word starts.
    start: usize,
    candidates: Vec<String>,
    index: usize,
}

/// Most entries kept in the history.
const HISTORY_LEN: usize = 200;

impl LineEditor {
    /// An empty editor.
    pub fn new() -> LineEditor {
        LineEditor::default()
    }

    /// The text.
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// The text as characters.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The cursor position, in characters from the start.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// Replaces the text and puts the cursor at its end.
    pub fn set_text(&mut self, text: &str) {
        self.chars = text.chars().collect();
        self.cursor = self.chars.len();
        self.completion = None;
    }

    /// Empties the line (the history stays).
    pub fn clear(&mut self) {
        self.set_text("");
        self.browsing = None;
    }

    /// Inserts a character at the cursor.
    pub fn insert(&mut self, c: char) {
        self.chars.insert(self.cursor, c);
        self.cursor += 1;
        self.edited();
    }

    /// Inserts text at the cursor (a paste). Control characters, newlines among them,
    /// become spaces: a message is one line.
    pub fn insert_str(&mut self, s: &str) {
        for c in s.chars() {
            let c = if c.is_control() { ' ' } else { c };
            self.chars.insert(self.cursor, c);
            self.cursor += 1;
        }
        self.edited();
    }

    /// Deletes the character before the cursor (Backspace).
    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.chars.remove(self.cursor);
        }
        self.edited();
    }

    /// Deletes the character under the cursor (Delete).
    pub fn delete(&mut self) {
        if self.cursor < self.chars.len() {
            self.chars.remove(self.cursor);
        }
        self.edited();
    }

    /// Moves the cursor one character left.
    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
        self.completion = None;
    }

    /// Moves the cursor one character right.
    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.chars.len());
        self.completion = None;
    }

    /// Moves the cursor to the start (Home, Ctrl+A).
    pub fn home(&mut self) {
        self.cursor = 0;
        self.completion = None;
    }

    /// Moves the cursor to the end (End, Ctrl+E).
    pub fn end(&mut self) {
        self.cursor = self.chars.len();
        self.completion = None;
    }

    /// Start of the word before the cursor (skipping spaces first).
    fn word_start_before(&self, from: usize) -> usize {
        let mut i = from;
        while i > 0 && self.chars[i - 1].is_whitespace() {
            i -= 1;
        }
        while i > 0 && !self.chars[i - 1].is_whitespace() {
            i -= 1;
        }
        i
    }

    /// Moves to the start of the previous word (Ctrl+Left, Alt+B).
    pub fn word_left(&mut self) {
        self.cursor = self.word_start_before(self.cursor);
        self.completion = None;
    }

    /// Moves past the end of the next word (Ctrl+Right, Alt+F).
    pub fn word_right(&mut self) {
        let n = self.chars.len();
        let mut i = self.cursor;
        while i < n && self.chars[i].is_whitespace() {
            i += 1;
        }
        while i < n && !self.chars[i].is_whitespace() {
            i += 1;
        }
        self.cursor = i;
        self.completion = None;
    }

    /// Deletes the word before the cursor (Ctrl+W, Alt+Backspace).
    pub fn delete_word_before(&mut self) {
        let start = self.word_start_before(self.cursor);
        self.chars.drain(start..self.cursor);
        self.cursor = start;
        self.edited();
    }

    /// Deletes from the start of the line to the cursor (Ctrl+U).
    pub fn kill_to_start(&mut self) {
        self.chars.drain(..self.cursor);
        self.cursor = 0;
        self.edited();
    }

    /// Deletes from the cursor to the end of the line (Ctrl+K).
    pub fn kill_to_end(&mut self) {
        self.chars.truncate(self.cursor);
        self.edited();
    }

    fn edited(&mut self) {
        self.completion = None;
    }

    /// Adds a line to the history (not twice in a row), and stops browsing.
    pub fn push_history(&mut self, line: &str) {
        if !line.is_empty() && self.history.last().map(String::as_str) != Some(line) {
            self.history.push(line.to_owned());
            if self.history.len() > HISTORY_LEN {
                self.history.remove(0);
            }
        }
        self.browsing = None;
    }

    /// The history, oldest first.
    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// Shows the previous history entry (Up); the draft is kept for coming back.
    pub fn history_prev(&mut self) {
        if self.history.is_empty() {
            return;
        }
        let index = match &self.browsing {
            None => {
                self.browsing = Some((self.history.len(), self.text()));
                self.history.len() - 1
            }
            Some((0, _)) => 0,
            Some((i, _)) => i - 1,
        };
        if let Some((i, _)) = &mut self.browsing {
            *i = index;
        }
        let entry = self.history[index].clone();
        self.set_text(&entry);
    }

    /// Shows the next history entry, or the draft after the newest (Down).
    pub fn history_next(&mut self) {
        let Some((i, draft)) = self.browsing.take() else {
            return;
        };
        if i + 1 < self.history.len() {
            self.browsing = Some((i + 1, draft));
            let entry = self.history[i + 1].clone();
            self.set_text(&entry);
        } else {
            self.set_text(&draft);
        }
    }

    /// Completes the word before the cursor from `candidates` (Tab). The first Tab picks the
    /// first candidate starting with the word (ignoring ASCII case), each next Tab the
    /// following one. A completed word at the start of the line gets `first_suffix` (": "
    /// for a name, " " for a command), elsewhere a space.
    ///
    /// Returns whether anything was completed.
    pub fn complete(&mut self, candidates: &[String], first_suffix: &str) -> bool {
        if let Some(c) = &mut self.completion {
            // Next candidate: replace what the last Tab inserted.
            c.index = (c.index + 1) % c.candidates.len();
            let (start, word) = (c.start, c.candidates[c.index].clone());
            self.replace_word(start, &word, first_suffix);
            return true;
        }
        let start = self.word_start_before(self.cursor);
        if start < self.cursor && self.chars[self.cursor - 1].is_whitespace() {
            return false;
        }
        let prefix: String = self.chars[start..self.cursor].iter().collect();
        let prefix = prefix.to_ascii_lowercase();
        let mut found: Vec<String> = candidates
            .iter()
            .filter(|c| c.to_ascii_lowercase().starts_with(&prefix))
            .cloned()
            .collect();
        found.dedup();
        let Some(first) = found.first().cloned() else {
            return false;
        };
        self.replace_word(start, &first, first_suffix);
        self.completion = Some(Completion {
            start,
            candidates: found,
            index: 0,
        });
        true
    }

    /// Replaces from `start` to the cursor with `word` plus its suffix.
    fn replace_word(&mut self, start: usize, word: &str, first_suffix: &str) {
        let suffix = if start == 0 { first_suffix } else { " " };
        self.chars.drain(start..self.cursor);
        let new: Vec<char> = word.chars().chain(suffix.chars()).collect();
        let n = new.len();
        self.chars.splice(start..start, new);
        self.cursor = start + n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn editor(text: &str, cursor: usize) -> LineEditor {
        let mut e = LineEditor::new();
        e.set_text(text);
        e.cursor = cursor;
        e
    }

    #[test]
    fn typing_and_moving() {
        let mut e = LineEditor::new();
        for c in "hllo".chars() {
            e.insert(c);
        }
        e.home();
        e.right();
        e.insert('e');
        assert_eq!((e.text().as_str(), e.cursor()), ("hello", 2));
        e.end();
        e.backspace();
        assert_eq!((e.text().as_str(), e.cursor()), ("hell", 4));
        e.home();
        e.delete();
        assert_eq!((e.text().as_str(), e.cursor()), ("ell", 0));
        e.left();
        e.backspace();
        assert_eq!((e.text().as_str(), e.cursor()), ("ell", 0));
    }

    #[test]
    fn cursor_counts_chars_not_bytes() {
        let mut e = LineEditor::new();
        e.insert_str("漢字👋");
        assert_eq!(e.cursor(), 3);
        e.left();
        e.insert('x');
        assert_eq!(e.text(), "漢字x👋");
    }

    #[test]
    fn paste_turns_newlines_into_spaces() {
        let mut e = LineEditor::new();
        e.insert_str("a\nb\tc");
        assert_eq!(e.text(), "a b c");
    }

    #[test]
    fn kills_and_word_moves() {
        let mut e = editor("one two  three", 14);
        e.delete_word_before();
        assert_eq!((e.text().as_str(), e.cursor()), ("one two  ", 9));
        e.delete_word_before();
        assert_eq!((e.text().as_str(), e.cursor()), ("one ", 4));

        let mut e = editor("one two three", 5);
        e.kill_to_end();
        assert_eq!((e.text().as_str(), e.cursor()), ("one t", 5));
        e.left();
        e.kill_to_start();
        assert_eq!((e.text().as_str(), e.cursor()), ("t", 0));

        let mut e = editor("one two three", 0);
        e.word_right();
        assert_eq!(e.cursor(), 3);
        e.word_right();
        assert_eq!(e.cursor(), 7);
        e.word_left();
        assert_eq!(e.cursor(), 4);
        e.word_left();
        assert_eq!(e.cursor(), 0);
    }

    #[test]
    fn history_browses_and_restores_draft() {
        let mut e = LineEditor::new();
        e.push_history("first");
        e.push_history("second");
        e.push_history("second");
        assert_eq!(e.history(), ["first", "second"]);
        e.set_text("draft");
        e.history_prev();
        assert_eq!(e.text(), "second");
        e.history_prev();
        assert_eq!(e.text(), "first");
        e.history_prev();
        assert_eq!(e.text(), "first");
        e.history_next();
        assert_eq!(e.text(), "second");
        e.history_next();
        assert_eq!(e.text(), "draft");
        e.history_next();
        assert_eq!(e.text(), "draft");
    }

    #[test]
    fn tab_completion_cycles() {
        let names = vec!["alice".to_owned(), "Albert".to_owned(), "bob".to_owned()];
        let mut e = editor("al", 2);
        assert!(e.complete(&names, ": "));
        assert_eq!(e.text(), "alice: ");
        assert!(e.complete(&names, ": "));
        assert_eq!(e.text(), "Albert: ");
        assert!(e.complete(&names, ": "));
        assert_eq!(e.text(), "alice: ");

        let mut e = editor("hi B", 4);
        assert!(e.complete(&names, ": "));
        assert_eq!((e.text().as_str(), e.cursor()), ("hi bob ", 7));

        let mut e = editor("hi zed", 6);
        assert!(!e.complete(&names, ": "));
        assert_eq!(e.text(), "hi zed");
    }
}
