//! Conversations and their message areas.
//!
//! A [`Conversation`] is its identity, its unread marks and a [`MsgArea`] (after osa1/tiny's
//! type of that name): the entries, how far the view is scrolled up, and the layout height
//! of the entries at the message pane's width, cached so scrolling does not lay out the
//! whole scrollback again. How an entry is laid out in rows ([`MsgArea::entry_layout`]) is
//! decided here, once: the message pane's renderer styles these rows and the scroll
//! arithmetic counts them, so both always agree.
//!
//! This module is a leaf of `app`: it imports nothing from the rest of the crate but
//! [`crate::text`].

use std::collections::{BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use chrono::{DateTime, FixedOffset, Local, NaiveDate, NaiveDateTime, TimeZone as _};
use simpletextim_proto::UserId;

use crate::text::{width, wrap};

/// Most entries kept per conversation; older ones are dropped.
pub const MAX_ENTRIES: usize = 5000;

/// Narrowest text column kept beside the time and sender before continuation rows give
/// up the indentation.
const MIN_TEXT_WIDTH: usize = 10;

/// How local times are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeZone {
    /// The machine's time zone.
    Local,
    /// A fixed offset from UTC (tests use this to stay independent of the machine).
    Fixed(FixedOffset),
}

impl TimeZone {
    /// UTC.
    pub fn utc() -> TimeZone {
        TimeZone::Fixed(chrono::Offset::fix(&chrono::Utc))
    }

    /// The local date and time of a Unix-milliseconds timestamp, or `None` when chrono
    /// cannot represent it (past year 262 143, or pushed past it by the offset; only a
    /// misbehaving server sends one). The entry is still shown, its time as `?`.
    ///
    /// The offset is applied with `checked_add_offset`: chrono's `naive_local` panics when
    /// the sum leaves its range.
    pub fn local(self, ts_ms: u64) -> Option<NaiveDateTime> {
        let utc = DateTime::from_timestamp_millis(i64::try_from(ts_ms).ok()?)?.naive_utc();
        let offset = match self {
            TimeZone::Local => Local.offset_from_utc_datetime(&utc),
            TimeZone::Fixed(offset) => offset,
        };
        utc.checked_add_offset(offset)
    }
}

/// A conversation's identity: the public one, or one per private peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvId {
    /// "all": public messages.
    Public,
    /// Private messages with this user.
    Private(UserId),
}

impl ConvId {
    /// The name shown in the sidebar and prompt.
    pub fn name(&self) -> &str {
        match self {
            ConvId::Public => "all",
            ConvId::Private(u) => u.as_str(),
        }
    }
}

/// What an entry of a conversation is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A chat message.
    Chat {
        /// The sender.
        from: UserId,
        /// Sent by us.
        own: bool,
        /// Names us (and is not ours).
        mention: bool,
    },
    /// Someone logged in.
    Joined(UserId),
    /// Someone left.
    Left(UserId),
    /// A notice from the client (online list, reconnection…).
    Info,
    /// A problem (connection lost…).
    Error,
}

impl EntryKind {
    /// The marker between the time and the text, in three parts so the sender's name can be
    /// styled apart: `("<", name, "> ")` for a chat message, `("--> ", "", "")` for a join,
    /// `("<-- ", "", "")` for a leave, `("-!- ", "", "")` for a notice or an error.
    pub fn marker(&self) -> (&'static str, &str, &'static str) {
        match self {
            EntryKind::Chat { from, .. } => ("<", from.as_str(), "> "),
            EntryKind::Joined(_) => ("--> ", "", ""),
            EntryKind::Left(_) => ("<-- ", "", ""),
            EntryKind::Info | EntryKind::Error => ("-!- ", "", ""),
        }
    }
}

/// One line of a conversation, before wrapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The server's id of a chat message (`None` for notices, and for messages from a
    /// server that gives no ids). Entries with ids are kept in id order.
    pub id: Option<u64>,
    /// When, in Unix milliseconds.
    pub ts_ms: u64,
    /// What it is.
    pub kind: EntryKind,
    /// The text, already sanitized for the terminal.
    pub text: String,
}

/// An entry laid out at a pane width, before styling: the rows it takes, top to bottom,
/// are the date line (when there is one), then the prefix (time and marker) with the
/// first text row beside it and the other text rows indented below it — or, on panes too
/// narrow for that, the prefix alone and every text row below it at full width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryLayout {
    /// The local day, when it differs from the previous entry's: a date line goes first.
    pub date: Option<NaiveDate>,
    /// The local time, `HH:MM `, or `?     ` when the timestamp is out of range.
    pub time: String,
    /// Width of the time and marker, in cells.
    pub prefix_width: usize,
    /// The text rows sit beside the prefix (else below it).
    pub beside: bool,
    /// The wrapped text, at least one row.
    pub text: Vec<String>,
}

impl EntryLayout {
    /// How many rows the entry takes.
    pub fn rows(&self) -> usize {
        let prefix_row = usize::from(!self.beside);
        usize::from(self.date.is_some()) + prefix_row + self.text.len()
    }
}

/// The message area of one conversation: its entries, its scroll position and the layout
/// height of its entries at the pane's width (kept up to date as entries come and go, so
/// page scrolls and the scrolled-up view's anchoring cost what one entry costs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgArea {
    /// The entries, oldest first, at most [`MAX_ENTRIES`].
    entries: VecDeque<Entry>,
    /// Rows scrolled up from the bottom (0: following new messages).
    scroll: usize,
    /// Messages that arrived below the view while scrolled up.
    new_below: usize,
    /// The message pane's width and height, in cells.
    size: (u16, u16),
    /// How times (and so date lines) are computed.
    tz: TimeZone,
    /// Rows of all entries at the pane's width: the sum of their [`EntryLayout::rows`].
    rows: usize,
    /// The [`MsgArea::key`] of every entry with an id: what a message shown again (a
    /// history page overlapping what is shown, a redelivery) is recognised by.
    keys: BTreeSet<(u64, u64)>,
    /// The highest message id ever added (kept through `/clear` and dropped entries): where
    /// catching up after a reconnection starts.
    high_water: Option<u64>,
}

impl MsgArea {
    /// An empty area for a message pane of `size` (width, height).
    pub fn new(size: (u16, u16), tz: TimeZone) -> MsgArea {
        MsgArea {
            entries: VecDeque::new(),
            scroll: 0,
            new_below: 0,
            size,
            tz,
            rows: 0,
            keys: BTreeSet::new(),
            high_water: None,
        }
    }

    /// What identifies a message entry: its id and a fingerprint of its sender, time and
    /// text. One message delivered twice has one key; two messages a misbehaving server
    /// gave one id keep two (both are shown).
    fn key(entry: &Entry) -> Option<(u64, u64)> {
        let id = entry.id?;
        let mut h = DefaultHasher::new();
        if let EntryKind::Chat { from, .. } = &entry.kind {
            from.as_str().hash(&mut h);
        }
        entry.ts_ms.hash(&mut h);
        entry.text.hash(&mut h);
        Some((id, h.finish()))
    }

    /// The lowest id of the messages held (where older history is asked from).
    pub fn min_id(&self) -> Option<u64> {
        self.keys.first().map(|k| k.0)
    }

    /// The highest message id ever added, even if cleared or dropped since.
    pub fn max_id(&self) -> Option<u64> {
        self.high_water
    }

    /// Whether the view shows the oldest row (or the entries fit the pane).
    pub fn at_top(&self) -> bool {
        self.scroll >= self.rows.saturating_sub(usize::from(self.size.1))
    }

    /// Adds a chat message in id order (at the bottom when it is the newest, as live
    /// messages are; above newer ones when it comes from history). An entry without id goes
    /// at the bottom. Returns false, adding nothing, when the same message is already held.
    pub fn add_message(&mut self, entry: Entry) -> bool {
        let Some(key) = Self::key(&entry) else {
            self.push(entry, true);
            return true;
        };
        if self.keys.contains(&key) {
            return false;
        }
        let pos = self.position_after(key.0);
        self.keys.insert(key);
        self.high_water = self.high_water.max(Some(key.0));
        self.insert(pos, entry, true);
        true
    }

    /// Adds a notice just after the messages with ids up to `id` (before the first newer
    /// one, after the notices that follow them): a gap marker's place.
    pub fn insert_after_id(&mut self, id: u64, entry: Entry) {
        let pos = self.position_after(id);
        self.insert(pos, entry, false);
    }

    /// Adds a notice above every entry ("beginning of history").
    pub fn push_front(&mut self, entry: Entry) {
        self.insert(0, entry, false);
    }

    /// Where an entry with id `id` goes: before the first entry with a larger id, or at
    /// the end. Ids held are in order, so the search starts from the nearer end.
    fn position_after(&self, id: u64) -> usize {
        let len = self.entries.len();
        match (self.keys.first(), self.keys.last()) {
            (_, None) => len,
            (_, Some(last)) if last.0 <= id => len,
            (Some(first), _) if id < first.0 => self
                .entries
                .iter()
                .position(|e| e.id.is_some_and(|e| e > id))
                .unwrap_or(len),
            _ => {
                let mut pos = len;
                for (i, e) in self.entries.iter().enumerate().rev() {
                    match e.id {
                        Some(e) if e > id => pos = i,
                        Some(_) => break,
                        None => {}
                    }
                }
                pos
            }
        }
    }

    /// Inserts an entry at `pos`, keeping the row count, and the view on the rows it shows:
    /// an entry that lands below a scrolled-up view pushes the view up with it (and counts
    /// as new below when it is a message), one above it changes nothing shown.
    fn insert(&mut self, pos: usize, entry: Entry, is_message: bool) {
        if pos >= self.entries.len() {
            self.push(entry, is_message);
            return;
        }
        let below_view = self.scroll > 0 && self.rows_from(pos) < self.scroll;
        // The entry at `pos` moves down one: its date line may go.
        let before = self.entry_rows(pos);
        self.entries.insert(pos, entry);
        let after = self.entry_rows(pos) + self.entry_rows(pos + 1);
        let added = after.saturating_sub(before);
        self.rows = (self.rows + after).saturating_sub(before);
        if below_view {
            self.scroll += added;
            if is_message {
                self.new_below += 1;
            }
        }
        if self.entries.len() > MAX_ENTRIES {
            self.drop_oldest();
        }
    }

    /// Rows of the entries from `pos` to the end, counted from the nearer end, and no
    /// further than needed to compare with the scroll position.
    fn rows_from(&self, pos: usize) -> usize {
        let len = self.entries.len();
        if pos < len / 2 {
            let mut above = 0;
            for i in 0..pos {
                above += self.entry_rows(i);
            }
            self.rows.saturating_sub(above)
        } else {
            let mut below = 0;
            for i in (pos..len).rev() {
                below += self.entry_rows(i);
                if below >= self.scroll {
                    break;
                }
            }
            below
        }
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &VecDeque<Entry> {
        &self.entries
    }

    /// Rows scrolled up from the bottom (0: following new messages).
    pub fn scroll(&self) -> usize {
        self.scroll
    }

    /// Messages that arrived below the view while scrolled up.
    pub fn new_below(&self) -> usize {
        self.new_below
    }

    /// How times are shown.
    pub fn tz(&self) -> TimeZone {
        self.tz
    }

    /// Rows of all entries at the pane's width.
    pub fn total_rows(&self) -> usize {
        self.rows
    }

    /// Entry `index` laid out at `pane_width` (`None` past the last entry).
    pub fn entry_layout(&self, index: usize, pane_width: u16) -> Option<EntryLayout> {
        let entry = self.entries.get(index)?;
        let w = usize::from(pane_width).max(1);
        let local = self.tz.local(entry.ts_ms);
        let day = local.map(|t| t.date());
        let previous_day = index
            .checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .and_then(|e| self.tz.local(e.ts_ms))
            .map(|t| t.date());
        // An unknown time keeps the width of `HH:MM ` so the messages stay aligned.
        let time = local.map_or_else(
            || format!("{:<5} ", '?'),
            |t| t.format("%H:%M ").to_string(),
        );
        let (before, name, after) = entry.kind.marker();
        let prefix_width = width(&time) + width(before) + width(name) + width(after);
        let beside = prefix_width + MIN_TEXT_WIDTH <= w;
        let text_width = if beside { w - prefix_width } else { w };
        Some(EntryLayout {
            // No date line for an unknown day.
            date: day.filter(|d| previous_day != Some(*d)),
            time,
            prefix_width,
            beside,
            text: wrap(&entry.text, text_width),
        })
    }

    /// Rows of entry `index` at the pane's width (0 past the last entry).
    fn entry_rows(&self, index: usize) -> usize {
        self.entry_layout(index, self.size.0)
            .map_or(0, |l| l.rows())
    }

    /// Adds an entry at the bottom, dropping the oldest past [`MAX_ENTRIES`]. A
    /// scrolled-up view stays on the rows it shows; a chat message (`is_message`) added
    /// below it is counted for the "new messages" marker.
    pub fn push(&mut self, entry: Entry, is_message: bool) {
        self.entries.push_back(entry);
        let added = self.entry_rows(self.entries.len() - 1);
        self.rows += added;
        if self.entries.len() > MAX_ENTRIES {
            self.drop_oldest();
        }
        if self.scroll > 0 {
            self.scroll += added;
            if is_message {
                self.new_below += 1;
            }
        }
    }

    /// Drops the oldest entry. The next one becomes the first, which always opens with a
    /// date line, so its rows are counted again.
    fn drop_oldest(&mut self) {
        let before = self.entry_rows(0) + self.entry_rows(1);
        if let Some(key) = self.entries.pop_front().as_ref().and_then(Self::key) {
            self.keys.remove(&key);
        }
        self.rows = self.rows + self.entry_rows(0) - before;
    }

    /// Empties the area (`/clear`). The highest id stays known: catching up after a
    /// reconnection does not bring the cleared messages back.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.keys.clear();
        self.rows = 0;
        self.scroll = 0;
        self.new_below = 0;
    }

    /// The message pane is now `size` (width, height): the entries are counted again at
    /// the new width and the view kept within them.
    pub fn resize(&mut self, size: (u16, u16)) {
        let width_changed = size.0 != self.size.0;
        self.size = size;
        if width_changed {
            self.rows = (0..self.entries.len()).map(|i| self.entry_rows(i)).sum();
        }
        self.scroll_up(0);
        if self.scroll == 0 {
            self.new_below = 0;
        }
    }

    /// Rows a page scroll moves: the pane's height less one row of context.
    pub fn page(&self) -> usize {
        usize::from(self.size.1).saturating_sub(1).max(1)
    }

    /// Scrolls `rows` up, no further than the oldest row at the top of the pane.
    pub fn scroll_up(&mut self, rows: usize) {
        let max = self.rows.saturating_sub(usize::from(self.size.1));
        self.scroll = (self.scroll + rows).min(max);
    }

    /// Scrolls `rows` down; at the bottom the "new messages" count is over.
    pub fn scroll_down(&mut self, rows: usize) {
        self.scroll = self.scroll.saturating_sub(rows);
        if self.scroll == 0 {
            self.new_below = 0;
        }
    }
}

/// Where loading older history (PageUp at the top) stands, for one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OlderHistory {
    /// Nothing asked; PageUp at the top asks.
    #[default]
    Idle,
    /// A page was asked for ("loading older…").
    Loading,
    /// The server keeps nothing older ("beginning of history"): PageUp asks no more.
    Done,
}

/// A conversation: its identity, its marks in the sidebar and its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Which conversation.
    pub id: ConvId,
    /// Messages that arrived while it was not shown.
    pub unread: usize,
    /// A private message or a mention arrived while it was not shown.
    pub highlight: bool,
    /// Its entries and scroll position.
    pub msgs: MsgArea,
    /// Loading older history.
    pub older: OlderHistory,
}

impl Conversation {
    /// An empty conversation for a message pane of `size` (width, height).
    pub fn new(id: ConvId, size: (u16, u16), tz: TimeZone) -> Conversation {
        Conversation {
            id,
            unread: 0,
            highlight: false,
            msgs: MsgArea::new(size, tz),
            older: OlderHistory::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64, text: &str) -> Entry {
        Entry {
            id: None,
            // Three entries a day.
            ts_ms: i * 8 * 3_600_000,
            kind: EntryKind::Chat {
                from: UserId::new("bob").expect("valid user id"),
                own: false,
                mention: false,
            },
            text: text.to_owned(),
        }
    }

    /// The cached row count is what laying every entry out again gives, through pushes,
    /// drops of the oldest entry (date lines move) and resizes.
    #[test]
    fn the_cached_height_follows_the_entries() {
        let mut area = MsgArea::new((30, 10), TimeZone::utc());
        let recount = |a: &MsgArea| {
            (0..a.entries().len())
                .map(|i| a.entry_rows(i))
                .sum::<usize>()
        };
        for i in 0..(MAX_ENTRIES as u64 + 7) {
            area.push(entry(i, "some words that wrap on a narrow pane"), true);
        }
        assert_eq!(area.entries().len(), MAX_ENTRIES);
        assert_eq!(area.total_rows(), recount(&area));
        area.resize((80, 10));
        assert_eq!(area.total_rows(), recount(&area));
        area.clear();
        assert_eq!(area.total_rows(), 0);
    }

    /// The machine's time zone takes the same checked path: the last instant chrono
    /// represents gives a time or `None` (east of UTC), never a panic, whatever the zone.
    #[test]
    fn local_times_at_the_end_of_chrono_s_range_do_not_panic() {
        let last = u64::try_from(DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis())
            .expect("chrono's last instant is after 1970");
        let _ = TimeZone::Local.local(last);
        assert_eq!(TimeZone::Local.local(u64::MAX), None);
        assert_eq!(TimeZone::utc().local(i64::MAX as u64), None);
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
        assert_eq!(TimeZone::utc().local(0), epoch);
    }

    fn message(id: u64, text: &str) -> Entry {
        Entry {
            id: Some(id),
            ..entry(id, text)
        }
    }

    fn texts(area: &MsgArea) -> Vec<&str> {
        area.entries().iter().map(|e| e.text.as_str()).collect()
    }

    /// Messages go in id order wherever they come from, once each; the cached height stays
    /// what laying the entries out again gives (date lines move as entries are inserted).
    #[test]
    fn messages_are_kept_in_id_order_once_each() {
        let mut area = MsgArea::new((30, 10), TimeZone::utc());
        let recount = |a: &MsgArea| {
            (0..a.entries().len())
                .map(|i| a.entry_rows(i))
                .sum::<usize>()
        };
        assert!(area.add_message(message(5, "five")));
        area.push(entry(6, "a notice"), false);
        assert!(area.add_message(message(9, "nine")));
        assert!(area.add_message(message(2, "two")));
        assert!(area.add_message(message(7, "seven")));
        assert!(area.add_message(message(1, "one")));
        assert!(!area.add_message(message(7, "seven")), "shown already");
        // One id, another message (a misbehaving server): both shown.
        assert!(area.add_message(message(7, "also seven")));
        area.insert_after_id(2, entry(3, "gap after two"));
        area.insert_after_id(9, entry(10, "gap after nine"));
        assert_eq!(
            texts(&area),
            [
                "one",
                "two",
                "gap after two",
                "five",
                "a notice",
                "seven",
                "also seven",
                "nine",
                "gap after nine"
            ]
        );
        assert_eq!(area.total_rows(), recount(&area));
        assert_eq!((area.min_id(), area.max_id()), (Some(1), Some(9)));
        area.push_front(entry(0, "beginning"));
        assert_eq!(texts(&area)[..2], ["beginning", "one"]);
        assert_eq!(area.total_rows(), recount(&area));
        // Cleared, the highest id stays known, and a message comes back.
        area.clear();
        assert_eq!((area.min_id(), area.max_id()), (None, Some(9)));
        assert!(area.add_message(message(5, "five")));
    }

    /// A message inserted below a scrolled-up view moves the view with it (and counts as
    /// new below); one inserted above it leaves the view's distance from the bottom alone.
    #[test]
    fn inserts_keep_a_scrolled_up_view_on_its_rows() {
        let mut area = MsgArea::new((80, 5), TimeZone::utc());
        for id in (10..40).step_by(2) {
            area.add_message(message(id, "m"));
        }
        area.scroll_up(6);
        let rows = area.total_rows();
        // Below the view: between the two newest.
        area.add_message(message(37, "m"));
        assert_eq!(area.total_rows(), rows + 1);
        assert_eq!((area.scroll(), area.new_below()), (7, 1));
        // Above the view: older than everything.
        area.add_message(message(1, "m"));
        assert_eq!((area.scroll(), area.new_below()), (7, 1));
    }

    #[test]
    fn narrow_panes_put_the_text_below_the_prefix() {
        let mut area = MsgArea::new((12, 5), TimeZone::utc());
        area.push(entry(0, "hello"), true);
        let layout = area.entry_layout(0, 12).expect("one entry");
        assert!(!layout.beside);
        assert_eq!((layout.prefix_width, layout.rows()), (12, 3));
        let wide = area.entry_layout(0, 40).expect("one entry");
        assert!(wide.beside);
        assert_eq!(wide.rows(), 2);
    }
}
