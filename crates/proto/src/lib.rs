//! The wire protocol of SimpleTextIM, a small instant-messaging system speaking JSON over TCP.
//!
//! - [`Command`] (client → server) and [`Reply`] (server → client) serialize to exactly the
//!   JSON of the protocol; [`Command::from_json`] validates and reports a bad command as the
//!   [`Failure`] (error code and reason) the server answers with.
//! - Validated types: [`UserId`] (case-insensitive, spelling kept), [`Password`],
//!   [`MessageText`] (1–140 characters), [`Recipient`], [`ErrorCode`].
//! - [`ServerCodec`] and [`ClientCodec`]: `tokio_util` length-delimited frames of JSON.
//! - [`Client`]: an async client to build bots and user interfaces on, over plain TCP or
//!   TLS ([`Client::connect_tls`] with a [`TlsConfig`]: the system's roots, a CA file, or
//!   both).
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
//!         let Reply::Message { messages } = reply? else { continue };
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

pub use client::{Client, ClientError, ClientReceiver, ClientSender};
pub use codec::{ClientCodec, CodecError, ServerCodec};
pub use command::Command;
pub use reply::{ChatMessage, Reply};
pub use tls::{TlsConfig, TlsSetupError};
pub use types::{ErrorCode, Failure, MessageText, Password, Recipient, UserId};
