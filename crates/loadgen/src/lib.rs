//! The SimpleTextIM load generator as a library: the binary (`main.rs`) parses the command
//! line and calls one workload of [`workload`]; an end-to-end test calls them directly.
//!
//! Where to start reading: [`workload::chat`] (`fanout`, `private`): log clients in with
//! [`workload::login_all`], send with [`send::send`], receive with [`recv::receive`], whose
//! hot path is [`scan`] (no JSON deserialization per message), and sum up in a
//! [`report::Report`]. [`workload::redis`] runs the same fan-out through a Redis server's
//! pub/sub ([`resp`]), the reference the benchmark sets beside ours.
//!
//! **Architecture invariant:** the receive path never deserializes a `message` frame; it
//! classifies frames by prefix and reads each message's marker (sender, sequence number,
//! send time) with a substring search, so that the load generator is cheaper per delivery
//! than the server it measures.

pub mod net;
pub mod recv;
pub mod report;
pub mod resp;
pub mod scan;
pub mod send;
pub mod stats;
pub mod workload;
pub mod ws;
