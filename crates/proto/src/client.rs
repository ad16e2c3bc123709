//! An async client: connect (plain TCP or TLS), log in, send, and read replies as a
//! [`Stream`].
//!
//! With `tls.rs`, which loads trusted certificates, the only module of the crate that does
//! I/O.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{SinkExt, Stream, StreamExt};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::codec::{ClientCodec, CodecError};
use crate::command::{Command, Request};
use crate::reply::{ChatMessage, Reply};
use crate::tls::{TlsConfig, TlsSetupError};
use crate::types::{
    Anchor, Failure, MessageText, PageLimit, Password, REF_NUMBER_BOUND, Recipient, Ref, UserId,
};

/// Most replies [`Client::request`] keeps aside while it waits for its answer.
pub const MAX_REQUEST_BACKLOG: usize = 4096;

/// What can go wrong in a [`Client`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS configuration could not be made (a CA file unreadable or holding no
    /// certificate, no trusted roots, a server name that is not one); nothing was sent.
    #[error("TLS setup: {0}")]
    TlsSetup(#[from] TlsSetupError),
    /// The TLS handshake failed: the server's certificate is not trusted (rustls says
    /// "UnknownIssuer") or not valid for the name asked for, the server does not speak TLS,
    /// or the connection broke during the handshake. The error holds rustls' reason.
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(#[source] std::io::Error),
    /// Framing or I/O failed; the connection is unusable. (A readable frame holding an
    /// unreadable reply is not an error: it is [`Reply::Unreadable`].)
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An argument was refused before sending (invalid user id, text over 140 characters…).
    /// The [`Failure`] is the one the server would have answered with.
    #[error("invalid request: {0}")]
    Invalid(#[source] Failure),
    /// The server answered with a `fail` reply.
    #[error("server refused: {0}")]
    Refused(#[source] Failure),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
    /// The server answered with a reply that does not fit the request.
    #[error("unexpected reply from the server: {0:?}")]
    Unexpected(Box<Reply>),
    /// [`Client::request`] kept more than [`MAX_REQUEST_BACKLOG`] other replies aside while waiting
    /// for its answer (a server that does not answer with refs, version 1, never answers).
    /// Nothing is lost: the replies kept aside, the one over the bound included, come next
    /// on the stream, and the answer may still come after them. The connection is fine.
    #[error("more than {MAX_REQUEST_BACKLOG} other replies arrived before the answer")]
    Backlog,
}

impl ClientError {
    /// The [`Failure`] behind this error, if the server (or local validation) refused.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            ClientError::Invalid(f) | ClientError::Refused(f) => Some(f),
            _ => None,
        }
    }
}

/// A page of one conversation's kept messages: what [`Client::history`] returns (the fields
/// of a [`Reply::History`] but its `ref`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The conversation: `Everyone` for the public one, a user for the private conversation
    /// between the client's user and that user.
    pub with: Recipient,
    /// The messages, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Whether the kept history goes on past this page in the direction asked (older for
    /// the newest page or [`Anchor::Before`], newer for [`Anchor::After`]).
    pub more: bool,
}

/// A connection to a SimpleTextIM server.
///
/// `Client` sends commands through its methods and is a [`Stream`] of the server's
/// replies. To send from one task and read in another, split it with
/// [`Client::into_split`].
///
/// The stream yields one item per frame the server sent and ends when the server closes
/// the connection. A reply this crate cannot read arrives as `Ok(`[`Reply::Unreadable`]`)`
/// and a reply kind it does not know as `Ok(`[`Reply::Unknown`]`)`: skip them and read on,
/// the connection is fine. An `Err` is fatal (framing or I/O failed): the stream ends
/// after it.
///
/// ```no_run
/// use futures::StreamExt;
/// use simpletextim_proto::{Client, Reply};
///
/// # async fn run() -> Result<(), simpletextim_proto::ClientError> {
/// let mut client = Client::connect("127.0.0.1:5000").await?;
/// let pending = client.login("alice", "secret").await?;
/// println!("{} messages while you were away", pending.len());
/// client.send_public("hello, everyone").await?;
/// while let Some(reply) = client.next().await {
///     match reply? {
///         Reply::Message { messages, .. } => {
///             for m in messages {
///                 println!("<{}> {}", m.user_id, m.message);
///             }
///         }
///         Reply::Unreadable { kind, error } => eprintln!("skipped a {kind:?} reply: {error}"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    sender: ClientSender,
    receiver: ClientReceiver,
    /// The ref of the next [`Client::request`].
    next_ref: u64,
    /// Who logged in, once logged in: whose private messages [`Client::set_auto_ack`]
    /// acknowledges.
    me: Option<UserId>,
    /// [`Client::set_auto_ack`]'s mode.
    auto_ack: bool,
    /// The highest id of a private message addressed to `me` handed to the caller.
    seen: u64,
    /// The highest id acknowledged.
    acked: u64,
}

impl Client {
    /// Connects to a server (no login yet).
    ///
    /// # Errors
    /// [`ClientError::Connect`] when the TCP connection cannot be made.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(ClientError::Connect)?;
        Ok(Client::from_stream(stream))
    }

    /// Connects to a server over TLS (no login yet), trusting the certificates `tls` says
    /// and verifying that the server's certificate is valid for `server_name` (a DNS name or
    /// an IP address; usually the host part of `addr`). See [`TlsConfig`] for an example.
    ///
    /// # Errors
    /// [`ClientError::TlsSetup`] when `server_name` is not a name (nothing is sent);
    /// [`ClientError::Connect`] when the TCP connection cannot be made;
    /// [`ClientError::TlsHandshake`] when the handshake fails (an untrusted certificate, one
    /// for another name, a server that does not speak TLS).
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        server_name: &str,
        tls: &TlsConfig,
    ) -> Result<Client, ClientError> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
            TlsSetupError::InvalidServerName {
                name: server_name.to_owned(),
            }
        })?;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        let stream = TlsConnector::from(tls.rustls().clone())
            .connect(name, stream)
            .await
            .map_err(ClientError::TlsHandshake)?;
        let (r, w) = tokio::io::split(stream);
        Ok(Client::from_halves(ReadHalf::Tls(r), WriteHalf::Tls(w)))
    }

    /// Wraps an already connected socket, with the default frame limits.
    pub fn from_stream(stream: TcpStream) -> Client {
        // Chat is many small frames: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Client::from_halves(ReadHalf::Tcp(r), WriteHalf::Tcp(w))
    }

    fn from_halves(r: ReadHalf, w: WriteHalf) -> Client {
        Client {
            sender: ClientSender {
                inner: FramedWrite::new(w, ClientCodec::new()),
            },
            receiver: ClientReceiver {
                inner: FramedRead::new(r, ClientCodec::new()),
                backlog: VecDeque::new(),
            },
            next_ref: 1,
            me: None,
            auto_ack: false,
            seen: 0,
            acked: 0,
        }
    }

    /// Logs in and waits for the answer. Returns the messages kept for this user while
    /// offline (oldest first, possibly none).
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a malformed user id or password (nothing is sent);
    /// [`ClientError::Refused`] when the server answers `fail` (401 bad credentials,
    /// 409 already logged in…); [`ClientError::Closed`] if it hangs up;
    /// [`ClientError::Unexpected`] for any other reply ([`Reply::Unreadable`] included).
    pub async fn login(
        &mut self,
        user_id: &str,
        password: &str,
    ) -> Result<Vec<ChatMessage>, ClientError> {
        self.login_as(user_id, password, false).await
    }

    /// Logs in asking for acknowledged delivery (protocol 1.1, `"acks": true`), and waits
    /// for the answer, like [`Client::login`]. In such a session a private message addressed
    /// to this user (and every message of the login ack returned here) counts as delivered
    /// only once the client acknowledges an id at least as large with [`Client::ack`]: the
    /// server keeps every unacknowledged one and hands it over again, in id order, at the
    /// next login. A message may so come twice; its `id` tells. A server of protocol 1.0
    /// ignores the field: the session is then an ordinary one.
    ///
    /// ```no_run
    /// use simpletextim_proto::Client;
    ///
    /// # async fn run() -> Result<(), simpletextim_proto::ClientError> {
    /// let mut client = Client::connect("127.0.0.1:5000").await?;
    /// let pending = client.login_with_acks("alice", "secret").await?;
    /// for m in &pending {
    ///     println!("<{}> {}", m.user_id, m.message);
    /// }
    /// // Shown: the server may forget them.
    /// if let Some(last) = pending.last() {
    ///     client.ack(last.id).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::login`].
    pub async fn login_with_acks(
        &mut self,
        user_id: &str,
        password: &str,
    ) -> Result<Vec<ChatMessage>, ClientError> {
        self.login_as(user_id, password, true).await
    }

    async fn login_as(
        &mut self,
        user_id: &str,
        password: &str,
        acks: bool,
    ) -> Result<Vec<ChatMessage>, ClientError> {
        let user_id = UserId::new(user_id).map_err(ClientError::Invalid)?;
        let password = Password::new(password).map_err(ClientError::Invalid)?;
        let login = Command::Login {
            user_id: user_id.clone(),
            password,
            acks,
        };
        self.sender.send(&login).await?;
        // From the socket: replies a `request` kept aside came before the login was sent.
        match self.receiver.read_reply().await? {
            Reply::Message { messages, .. } => {
                self.me = Some(user_id);
                self.note_private(&messages);
                Ok(messages)
            }
            Reply::Fail { fail, .. } => Err(ClientError::Refused(fail)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Turns the automatic acknowledgement on or off (off at first), for a session logged
    /// in with [`Client::login_with_acks`]. When on, [`Client::next_reply`] first sends an
    /// `ack` of the highest id of the private messages addressed to this user that the
    /// client has handed over so far (from the login ack and from earlier
    /// [`Client::next_reply`] calls), when that id was not acknowledged yet: at most one
    /// `ack` per call, and only for messages the caller already holds.
    ///
    /// Only [`Client::next_reply`] acknowledges: the [`Stream`] implementation and the
    /// halves of [`Client::into_split`] never do (a stream cannot send), and a client that
    /// crashes before its next call has acknowledged nothing it did not hold.
    ///
    /// ```no_run
    /// use simpletextim_proto::{Client, Reply};
    ///
    /// # async fn run() -> Result<(), simpletextim_proto::ClientError> {
    /// let mut client = Client::connect("127.0.0.1:5000").await?;
    /// client.login_with_acks("alice", "secret").await?;
    /// client.set_auto_ack(true);
    /// loop {
    ///     // Acknowledges the private messages printed by the previous turns, then reads.
    ///     if let Reply::Message { messages, .. } = client.next_reply().await? {
    ///         for m in messages {
    ///             println!("<{}> {}", m.user_id, m.message);
    ///         }
    ///     }
    /// }
    /// # }
    /// ```
    pub fn set_auto_ack(&mut self, on: bool) {
        self.auto_ack = on;
    }

    /// Notes the private messages addressed to us among `messages`, for the automatic
    /// acknowledgement.
    fn note_private(&mut self, messages: &[ChatMessage]) {
        let Some(me) = &self.me else { return };
        for m in messages {
            if m.to == Recipient::User(me.clone()) && &m.user_id != me {
                self.seen = self.seen.max(m.id);
            }
        }
    }

    /// Asks for a page of one conversation's kept messages (protocol 1.1) and waits for it,
    /// with [`Client::request`] (so replies that come meanwhile are kept for the stream).
    /// `with` is [`Recipient::Everyone`] for the public conversation, a user for the private
    /// conversation with that user; `anchor` `None` asks for the newest messages,
    /// [`Anchor::Before`] for those just older than an id, [`Anchor::After`] for those just
    /// newer; `limit` `None` is the server's default (50).
    ///
    /// Unlike [`Client::request`], which returns a `fail` as a reply, a refusal here is an
    /// error, [`ClientError::Refused`], as for [`Client::login`].
    ///
    /// ```no_run
    /// use simpletextim_proto::{Anchor, Client, PageLimit, Recipient};
    ///
    /// # async fn run() -> Result<(), simpletextim_proto::ClientError> {
    /// let mut client = Client::connect("127.0.0.1:5000").await?;
    /// client.login("alice", "secret").await?;
    /// // What was said in public while we were away, after the last message we saw (41).
    /// let mut after = 41;
    /// loop {
    ///     let page = client
    ///         .history(Recipient::Everyone, Some(Anchor::After(after)), Some(PageLimit::MAX))
    ///         .await?;
    ///     for m in &page.messages {
    ///         println!("{} <{}> {}", m.id, m.user_id, m.message);
    ///     }
    ///     match page.messages.last() {
    ///         Some(last) if page.more => after = last.id,
    ///         _ => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Refused`] when the server answers `fail` (400 from a server without
    /// history, 401 before login…); [`ClientError::Unexpected`] when it answers the ref with
    /// another kind of reply; otherwise as [`Client::request`].
    pub async fn history(
        &mut self,
        with: Recipient,
        anchor: Option<Anchor>,
        limit: Option<PageLimit>,
    ) -> Result<HistoryPage, ClientError> {
        let command = Command::History {
            with,
            anchor,
            limit,
        };
        match self.request(command).await? {
            Reply::History {
                with,
                messages,
                more,
                ..
            } => Ok(HistoryPage {
                with,
                messages,
                more,
            }),
            Reply::Fail { fail, .. } => Err(ClientError::Refused(fail)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Acknowledges every private message addressed to this user with an id up to `id`
    /// (protocol 1.1, in a session logged in with [`Client::login_with_acks`]): the server
    /// may forget them. See [`ClientSender::ack`].
    ///
    /// # Errors
    /// As [`ClientSender::ack`].
    pub async fn ack(&mut self, id: u64) -> Result<(), ClientError> {
        self.sender.ack(id).await
    }

    /// Waits for the next reply, which may be [`Reply::Unreadable`] or [`Reply::Unknown`]
    /// (skip those and call again). With [`Client::set_auto_ack`] on, first acknowledges
    /// the private messages handed over before.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the server closed the connection, or the framing error;
    /// with the automatic acknowledgement, the I/O error of sending it.
    pub async fn next_reply(&mut self) -> Result<Reply, ClientError> {
        if self.auto_ack && self.seen > self.acked {
            self.sender.ack(self.seen).await?;
            self.acked = self.seen;
        }
        let reply = self.receiver.next_reply().await?;
        if let Reply::Message { messages, .. } = &reply {
            self.note_private(messages);
        }
        Ok(reply)
    }

    /// Sends any command.
    ///
    /// # Errors
    /// The I/O error when the connection is broken.
    pub async fn send(&mut self, command: &Command) -> Result<(), ClientError> {
        self.sender.send(command).await
    }

    /// Sends a public message. See [`ClientSender::send_public`].
    ///
    /// # Errors
    /// As [`ClientSender::send_public`].
    pub async fn send_public(&mut self, text: &str) -> Result<(), ClientError> {
        self.sender.send_public(text).await
    }

    /// Sends a private message. See [`ClientSender::send_private`].
    ///
    /// # Errors
    /// As [`ClientSender::send_private`].
    pub async fn send_private(&mut self, to: &str, text: &str) -> Result<(), ClientError> {
        self.sender.send_private(to, text).await
    }

    /// Asks for the users online; the answer arrives as a [`Reply::List`] on the stream.
    ///
    /// # Errors
    /// The I/O error when the connection is broken.
    pub async fn list(&mut self) -> Result<(), ClientError> {
        self.sender.send(&Command::List).await
    }

    /// Asks the server to end the session. Replies already queued still arrive on the
    /// stream, which then ends.
    ///
    /// # Errors
    /// The I/O error when the connection is broken.
    pub async fn exit(&mut self) -> Result<(), ClientError> {
        self.sender.send(&Command::Exit).await
    }

    /// Sends `command` with the next integer `ref` (1, 2, 3…) and waits for the reply that
    /// answers it (protocol 1.1): the one carrying that ref. For a `send`, that is the echo:
    /// a [`Reply::Message`] holding only the sender's copy of the message (its
    /// [`ChatMessage`]'s `r#ref` set); for any other command, the `fail`, `list`,
    /// `history` or login ack with the ref. A `fail` is returned as `Ok(Reply::Fail {..})`,
    /// like any answer.
    ///
    /// Every other reply that arrives meanwhile (chat, presence notices, other messages of
    /// the echo's frame) is kept, in order, and the stream (or [`Client::next_reply`])
    /// yields it afterwards, before anything newer. `exit` is answered by nothing: do not
    /// send it with `request`.
    ///
    /// ```no_run
    /// use simpletextim_proto::{Client, Command, Reply};
    ///
    /// # async fn run() -> Result<(), simpletextim_proto::ClientError> {
    /// let mut client = Client::connect("127.0.0.1:5000").await?;
    /// client.login("alice", "secret").await?;
    /// let Reply::List { list, .. } = client.request(Command::List).await? else {
    ///     panic!("a list answers a list");
    /// };
    /// println!("online: {list:?}");
    /// let command = Command::send("bob".parse().unwrap(), "hi".parse().unwrap());
    /// match client.request(command).await? {
    ///     Reply::Message { messages, .. } => println!("sent as id {}", messages[0].id),
    ///     Reply::Fail { fail, .. } => println!("refused: {fail}"),
    ///     other => println!("unexpected: {other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Backlog`] when more than [`MAX_REQUEST_BACKLOG`] other replies arrive first
    /// (nothing is lost); [`ClientError::Closed`] when the server closes the connection; the
    /// framing or I/O error.
    pub async fn request(&mut self, command: Command) -> Result<Reply, ClientError> {
        let r = Ref::Number(self.next_ref);
        // Below 2^53, as a ref must be; wraps (after 2^53 requests).
        self.next_ref = (self.next_ref + 1) % REF_NUMBER_BOUND;
        self.sender
            .send_request(&Request::with_ref(command, r.clone()))
            .await?;
        self.receiver.wait_for(&r).await
    }

    /// Splits the client into a sending half and a receiving half, for use from two tasks.
    /// Replies kept aside by [`Client::request`] stay with the receiving half.
    pub fn into_split(self) -> (ClientSender, ClientReceiver) {
        (self.sender, self.receiver)
    }
}

impl Stream for Client {
    type Item = Result<Reply, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

/// The sending half of a [`Client`].
#[derive(Debug)]
pub struct ClientSender {
    inner: FramedWrite<WriteHalf, ClientCodec>,
}

impl ClientSender {
    /// Sends a command and flushes it to the socket.
    ///
    /// # Errors
    /// The I/O error when the connection is broken.
    pub async fn send(&mut self, command: &Command) -> Result<(), ClientError> {
        self.inner.send(command).await.map_err(ClientError::from)
    }

    /// Sends a request (a command with its `ref`) and flushes it to the socket.
    ///
    /// # Errors
    /// The I/O error when the connection is broken.
    pub async fn send_request(&mut self, request: &Request) -> Result<(), ClientError> {
        self.inner.send(request).await.map_err(ClientError::from)
    }

    /// Queues a command without flushing; many fed commands leave in one write at the
    /// next [`ClientSender::flush`] (or when the buffer fills).
    ///
    /// # Errors
    /// The I/O error when the connection is broken.
    pub async fn feed(&mut self, command: &Command) -> Result<(), ClientError> {
        self.inner.feed(command).await.map_err(ClientError::from)
    }

    /// Writes out everything fed so far.
    ///
    /// # Errors
    /// The I/O error when the connection is broken.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        SinkExt::<&Command>::flush(&mut self.inner)
            .await
            .map_err(ClientError::from)
    }

    /// Acknowledges every private message addressed to this user with an id up to `id`
    /// (protocol 1.1, in a session logged in with [`Client::login_with_acks`]). The server
    /// answers nothing when it takes the ack, so the ack is sent without a ref and not
    /// waited for: a refusal (a server without acks answers `fail 400`) arrives on the
    /// stream as a [`Reply::Fail`] without a ref. An id the session was never sent is
    /// harmless.
    ///
    /// # Errors
    /// The I/O error when the connection is broken.
    pub async fn ack(&mut self, id: u64) -> Result<(), ClientError> {
        self.send(&Command::Ack { id }).await
    }

    /// Sends a public message to everyone logged in.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] when the text is not valid message text (nothing is sent);
    /// the I/O error when the connection is broken.
    pub async fn send_public(&mut self, text: &str) -> Result<(), ClientError> {
        let message = MessageText::new(text).map_err(ClientError::Invalid)?;
        self.send(&Command::Send {
            to: Recipient::Everyone,
            message,
        })
        .await
    }

    /// Sends a private message to `to`.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] when `to` is not a user id or the text is not valid message
    /// text (nothing is sent); the I/O error when the connection is broken.
    pub async fn send_private(&mut self, to: &str, text: &str) -> Result<(), ClientError> {
        let to = UserId::new(to).map_err(ClientError::Invalid)?;
        let message = MessageText::new(text).map_err(ClientError::Invalid)?;
        self.send(&Command::Send {
            to: Recipient::User(to),
            message,
        })
        .await
    }
}

/// The receiving half of a [`Client`]: a [`Stream`] of replies that ends when the server
/// closes the connection. Its items are those of [`Client`]'s stream: an unreadable reply
/// is the recoverable `Ok(`[`Reply::Unreadable`]`)`, an `Err` is fatal. Replies
/// [`Client::request`] kept aside come first, in the order they arrived.
#[derive(Debug)]
pub struct ClientReceiver {
    inner: FramedRead<ReadHalf, ClientCodec>,
    /// Replies that arrived while [`Client::request`] waited for its answer.
    backlog: VecDeque<Reply>,
}

impl ClientReceiver {
    /// Waits for the next reply, which may be [`Reply::Unreadable`] or [`Reply::Unknown`]
    /// (skip those and call again).
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the server closed the connection, or the framing error.
    pub async fn next_reply(&mut self) -> Result<Reply, ClientError> {
        if let Some(r) = self.backlog.pop_front() {
            return Ok(r);
        }
        self.read_reply().await
    }

    /// The next reply from the socket, past the backlog.
    async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        match self.inner.next().await {
            Some(r) => r.map_err(ClientError::from),
            None => Err(ClientError::Closed),
        }
    }

    /// Reads replies until the one answering the request with ref `r`, keeping the others
    /// in the backlog. An echo's frame is split: the echo is the answer, the messages
    /// around it go to the backlog (those before it, then those after it).
    async fn wait_for(&mut self, r: &Ref) -> Result<Reply, ClientError> {
        loop {
            let reply = self.read_reply().await?;
            let reply = match reply {
                Reply::Message {
                    r#ref: None,
                    mut messages,
                } => match messages.iter().position(|m| m.r#ref.as_ref() == Some(r)) {
                    Some(i) => {
                        let after = messages.split_off(i + 1);
                        // `i` is the echo's index: it is the last of what is left.
                        let echo = messages.pop();
                        // The answer came: these are kept even past the bound (one frame).
                        for part in [messages, after] {
                            if !part.is_empty() {
                                self.backlog.push_back(Reply::Message {
                                    r#ref: None,
                                    messages: part,
                                });
                            }
                        }
                        if let Some(echo) = echo {
                            return Ok(Reply::Message {
                                r#ref: None,
                                messages: vec![echo],
                            });
                        }
                        continue;
                    }
                    None => Reply::Message {
                        r#ref: None,
                        messages,
                    },
                },
                other => other,
            };
            if reply.request_ref() == Some(r) {
                return Ok(reply);
            }
            self.keep(reply)?;
        }
    }

    /// Keeps a reply for later; past [`MAX_REQUEST_BACKLOG`] it is still kept, and the request
    /// gives up.
    fn keep(&mut self, reply: Reply) -> Result<(), ClientError> {
        self.backlog.push_back(reply);
        if self.backlog.len() > MAX_REQUEST_BACKLOG {
            return Err(ClientError::Backlog);
        }
        Ok(())
    }
}

impl Stream for ClientReceiver {
    type Item = Result<Reply, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(r) = self.backlog.pop_front() {
            return Poll::Ready(Some(Ok(r)));
        }
        Pin::new(&mut self.inner)
            .poll_next(cx)
            .map(|o| o.map(|r| r.map_err(ClientError::from)))
    }
}

/// A TLS stream over TCP, as the client uses it.
type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The reading half of a connection, plain or TLS. (A plain socket splits without the lock
/// `tokio::io::split` puts between the halves of a TLS stream.)
#[derive(Debug)]
enum ReadHalf {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream>),
}

/// The writing half of a connection, plain or TLS.
#[derive(Debug)]
enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            // A peer that closes without TLS's close_notify is an end of stream, not an
            // error: frames carry their length, so a frame cut short is still caught (by
            // the codec, as bytes remaining at the end), and servers commonly just close.
            ReadHalf::Tls(r) => match Pin::new(r).poll_read(cx, buf) {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(w) => w.is_write_vectored(),
            WriteHalf::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
