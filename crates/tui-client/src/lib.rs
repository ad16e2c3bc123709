//! The SimpleTextIM full-screen terminal client, as a library (the `simpletextim` binary in
//! `main.rs` only parses the command line, sets up logging and the terminal, and calls
//! [`run::run`]).
//!
//! The shape follows the ratatui templates and osa1/tiny:
//!
//! - [`app`]: the state ([`app::App`]) — conversations, online users, input line, scroll —
//!   and the pure function [`app::App::update`] from an [`event::Event`] to
//!   [`app::Action`]s. Start reading here.
//! - [`ui`]: rendering, a pure function of the state, one file per pane.
//! - [`layout`]: screen geometry (where panes go, which row shows what) that `app` and
//!   `ui` both use: `ui` reads `app`, `app` never imports `ui`.
//! - [`input`]: the line editor; [`text`]: sanitizing, widths and wrapping.
//! - [`net`]: the network task around [`simpletextim_proto::Client`], with reconnection.
//! - [`run`]: the event loop joining the terminal task and the network task;
//!   [`terminal`]: set-up and restoration of the terminal.
//!
//! Architecture invariant: only `net`, `run` and `terminal` do I/O; `app` and `ui` never
//! read a clock, the terminal or the network, so they are tested exactly.

pub mod app;
pub mod event;
pub mod input;
pub mod layout;
pub mod net;
pub mod run;
pub mod terminal;
pub mod text;
pub mod ui;
