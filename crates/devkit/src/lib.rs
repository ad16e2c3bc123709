//! What the project's tests and `cargo xtask` share to run throwaway servers on this
//! machine: [`postgres`], a private PostgreSQL server (the distribution's programs, a
//! database cluster of its own in a directory of the caller's, loopback only). Nothing
//! here is part of the chat system; nothing here runs in production.

pub mod postgres;
