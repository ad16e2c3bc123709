//! Terminal set-up and restoration: raw mode, alternate screen, mouse capture and bracketed
//! paste on the way in; all of it undone on the way out — on a normal exit, on an error
//! (the [`Restore`] guard's `Drop`) and on a panic (the hook installed by [`init`]).

use std::io::{self, Stdout, stdout};

use crossterm::cursor::Show;
use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

/// The terminal the client draws on.
pub type Tui = Terminal<CrosstermBackend<Stdout>>;

/// Restores the terminal when dropped.
#[derive(Debug)]
pub struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        restore();
    }
}

/// Takes over the terminal and installs a panic hook that gives it back before the panic
/// message is printed. Keep the returned guard alive as long as the terminal is used.
///
/// # Errors
/// The I/O error when the terminal cannot be set up (not a terminal, for one); what was
/// already changed is undone by the guard, which is dropped on that path too.
pub fn init() -> io::Result<(Tui, Restore)> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        hook(info);
    }));
    let guard = Restore;
    enable_raw_mode()?;
    execute!(
        stdout(),
        EnterAlternateScreen,
        EnableMouseCapture,
        EnableBracketedPaste
    )?;
    let terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
    Ok((terminal, guard))
}

/// Gives the terminal back: raw mode off, alternate screen left, cursor shown. Every step
/// is tried even if an earlier one fails; running it twice is harmless.
pub fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(
        stdout(),
        DisableBracketedPaste,
        DisableMouseCapture,
        LeaveAlternateScreen,
        Show
    );
}
