//! What the project's tests and `cargo xtask` share to run throwaway servers on this
//! machine: [`postgres`], a private PostgreSQL server (the distribution's programs, a
//! database cluster of its own in a directory of the caller's, loopback only), and
//! [`free_port`]. Nothing here is part of the chat system; nothing here runs in production.

pub mod postgres;

/// A port of 127.0.0.1 that was free a moment ago (bound to port 0, then released), for a
/// server started as a child process. Another process may take it first: callers retry.
///
/// # Errors
/// When no socket can be bound on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}
