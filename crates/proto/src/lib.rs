//! The wire protocol of SimpleTextIM, a small instant-messaging system speaking JSON over TCP.
//!
//! - [`Command`] (client → server) and [`Reply`] (server → client) serialize to exactly the
//!   JSON of the protocol; [`Command::from_json`] validates and reports a bad command as the
//!   [`Failure`] (error code and reason) the server answers with.
//! - Validated types: [`UserId`] (case-insensitive, spelling kept), [`Password`],
//!   [`MessageText`] (1–140 characters), [`Recipient`], [`ErrorCode`], and those of
//!   protocol 1.1: [`Ref`] (a client's request reference), [`Anchor`] and [`PageLimit`]
//!   (a `history` page).
//! - [`Request`]: a command with its optional `ref`; [`Request::from_json`] refuses a bad
//!   one as [`Rejected`], the `fail` to answer with and the `ref` it carries.
//! - [`ServerCodec`] and [`ClientCodec`]: `tokio_util` length-delimited frames of JSON.
//! - [`Client`]: an async client to build bots and user interfaces on, over plain TCP or
//!   TLS ([`Client::connect_tls`] with a [`TlsConfig`]: the system's roots, a CA file, or
//!   both). Protocol 1.1: [`Client::request`] matches a reply to its command by ref;
//!   [`Client::history`] returns a [`HistoryPage`]; [`Client::login_with_acks`],
//!   [`Client::ack`] and the opt-in [`Client::set_auto_ack`] for acknowledged delivery.
//!
//! Start reading at [`Client`] to talk to a server, or at [`Command`] and [`Reply`] for the
//! messages themselves. The protocol is described in `docs/PROTOCOL.md` of the repository.
//!
//! # Example: a bot that answers private messages
//!
//! ```no_run
//! use futures::StreamExt;
//! use simpletextim_proto::{Client, Reply};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut client = Client::connect("127.0.0.1:5000").await?;
//!     client.login("echo-bot", "bot-password").await?;
//!     client.send_public("echo-bot here: send me a private message").await?;
//!     while let Some(reply) = client.next().await {
//!         let Reply::Message { messages, .. } = reply? else { continue };
//!         for m in messages {
//!             // Our own messages come back as echoes: answer only the others.
//!             if m.is_private() && m.user_id.as_str() != "echo-bot" {
//!                 let answer = format!("you said: {}", m.message);
//!                 let answer: String = answer.chars().take(140).collect();
//!                 client.send_private(m.user_id.as_str(), &answer).await?;
//!             }
//!         }
//!     }
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]

mod client;
pub mod codec;
mod command;
mod reply;
mod tls;
pub mod types;

pub use client::{
    Client, ClientError, ClientReceiver, ClientSender, HistoryPage, MAX_REQUEST_BACKLOG,
};
pub use codec::{ClientCodec, CodecError, ServerCodec};
pub use command::{Command, Rejected, Request};
pub use reply::{ChatMessage, Reply};
pub use tls::{TlsConfig, TlsSetupError};
pub use types::{
    Anchor, ErrorCode, Failure, MessageText, PageLimit, Password, Recipient, Ref, UserId,
};
