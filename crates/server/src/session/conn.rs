//! A client connection: the socket, the read and write buffers, and the framing.
//!
//! Everything below the protocol lives here. The session above it sees commands coming in
//! ([`Connection::fill`], [`Connection::next_command`]) and outbox items and replies going
//! out ([`Connection::queue_all`], [`Connection::queue_reply`], [`Connection::try_flush`]); it
//! never touches bytes, and only this file touches the socket.
//!
//! An idle connection holds no buffers: the socket is polled for readiness and then read
//! with `try_read_buf` into a buffer that is freed once it holds no partial frame, and the
//! write buffer is freed once written. That keeps tens of thousands of idle connections
//! cheap.
//!
//! **Where a transport plugs in.** A connection is readiness-based: wait until the socket is
//! readable or writable, then read or write without blocking. A new framing is a [`Framing`]
//! of the frame writer plus a decoder in [`Codec`]. The session, the hub and the outbox stay
//! as they are.
//!
//! **WebSocket** is such a framing: the HTTP listener (`http.rs`) answers the upgrade, takes
//! the socket (and, over TLS, the `rustls::ServerConnection`) back from hyper, and makes a
//! connection of it with [`Connection::upgraded`], carrying over the bytes hyper and rustls
//! had read past the request. The frame writer puts a text frame header before each object
//! (the outbox's shared bytes go out unchanged); the decoder (`wire/websocket.rs`) turns
//! client frames into requests, and the control frames are handled here: a ping is answered
//! with a pong in the write buffer, a close ends the session like an EOF (and is answered in
//! the goodbye), and the keepalive pings a client that has sent nothing for a while.
//!
//! **TLS** is a byte transport inside the connection: a `rustls::ServerConnection` driven
//! sans-IO (boxed, so a plain connection only carries a null pointer more). `fill` hands
//! rustls what the socket has, lets it process the records, and moves the plaintext into
//! `rbuf`; `try_flush` hands rustls the frame writer's bytes and writes its records to the
//! socket. The handshake is driven by the same two calls (no separate phase), so the login
//! deadline and the write-stall limit apply to it unchanged. A plain connection pays one
//! `if let` on the `Option<Box<_>>` per call and nothing else. An idle TLS connection frees
//! both of our buffers, but holds rustls' state: its keys and the 4 KiB receive buffer its
//! buffered API keeps between reads.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use simpletextim_proto::{CodecError, Rejected, Reply, Request, ServerCodec};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tungstenite::protocol::frame::coding::Control;

use crate::wire::websocket::{self, WsDecoder, WsError, WsItem};
use crate::wire::{FrameWriter, Framing, LineCodec, Private};

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 4096;
/// TCP keepalive: a peer that vanished (no FIN, no RST) is found out after this much
/// silence plus the kernel's probes, and its session ends with `left`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// The socket's send buffer (Linux doubles it, for its bookkeeping). Left to the kernel's
/// autotuning it grows to `net.ipv4.tcp_wmem`'s maximum (4 MiB here) for a peer that does
/// not read: kernel memory per connection, and minutes of chat absorbed before the write
/// stall limit even starts. 64 KiB holds hundreds of messages, far more than a reading
/// client ever has in flight.
const SEND_BUFFER: usize = 64 * 1024;

/// One client's socket with its buffers and framing.
pub(crate) struct Connection {
    stream: TcpStream,
    /// The TLS state of a TLS listener's connection; `None` on a plain one.
    tls: Option<Box<TlsState>>,
    peer: SocketAddr,
    /// Bytes read and not yet decoded; empty (no allocation) between commands.
    rbuf: BytesMut,
    codec: Codec,
    /// Frames waiting to be written; empty (no allocation) when all is written.
    out: FrameWriter,
    /// How much of `out` the socket has taken. Over TLS: how much of `out` had been handed
    /// to rustls the last time rustls had no record left to write, so a frame is counted
    /// as written only once all its records are on the socket.
    written: usize,
}

/// A TLS connection's state beside the socket.
struct TlsState {
    conn: rustls::ServerConnection,
    /// How much of the frame writer's bytes rustls has taken (encrypted, or buffered
    /// before the handshake ends); `written <= fed`.
    fed: usize,
    /// Records rustls holds will never be written (the output was forgotten mid-record,
    /// or the connection failed): nothing more is written, not even `close_notify`.
    abandoned: bool,
}

/// The socket as the blocking `io::Read`/`io::Write` rustls reads and writes records
/// through: `WouldBlock` when the socket has nothing or is full (which also clears tokio's
/// readiness, so the session waits for the next).
struct SocketIo<'a>(&'a TcpStream);

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`Connection::fill`] found on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    /// Bytes were read (there may be commands to decode).
    Data,
    /// The peer closed its side; what was read before may still hold commands.
    Eof,
    /// Nothing was there after all (a spurious readiness).
    Nothing,
}

/// The command decoder of the connection's framing.
enum Codec {
    LengthDelimited(ServerCodec),
    /// Boxed: rare (the debugging listener), and larger.
    Lines(Box<LineCodec>),
    /// Boxed: the decoder and the WebSocket's state beside it.
    WebSocket(Box<WsState>),
}

/// A WebSocket connection's state beside its decoder.
struct WsState {
    decoder: WsDecoder,
    /// When the client last sent anything (the keepalive pings after a quiet spell).
    last_read: Instant,
    /// A ping was sent and nothing came since.
    ping_sent: bool,
    /// The client sent a close, with this status code if it gave one.
    peer_close: Option<Option<u16>>,
    /// Nothing more may be written: a close frame was queued, or the write buffer was
    /// dropped in the middle of a frame.
    done: bool,
}

/// Why no more commands can be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// A frame or message over the limit (`fail 413`, then close).
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The WebSocket client sent a close.
    Closed,
    /// The WebSocket client broke the protocol (close 1002).
    Protocol(&'static str),
    /// The socket failed.
    Io(io::Error),
}

impl From<CodecError> for ReadError {
    fn from(e: CodecError) -> ReadError {
        match e {
            CodecError::FrameTooLarge { max } => ReadError::TooLarge { max },
            CodecError::Io(e) => ReadError::Io(e),
        }
    }
}

/// What the keepalive found ([`Connection::keepalive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keepalive {
    /// Look again at this time.
    At(Instant),
    /// A ping went unanswered: the client is gone.
    Dead,
}

impl Connection {
    /// Wraps a just-accepted socket: no Nagle delay (replies are written in batches
    /// already), and TCP keepalive to find vanished peers. Commands longer than
    /// `max_command_frame` bytes are refused. With `tls`, everything on the socket is TLS
    /// records, starting with the client's handshake.
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        framing: Framing,
        max_command_frame: usize,
        tls: Option<rustls::ServerConnection>,
    ) -> Connection {
        // All three are refinements of a socket that works without them: a failure is logged,
        // not fatal.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let keepalive = TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        let sock = SockRef::from(&stream);
        if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
            tracing::debug!(%peer, error = %e, "cannot set TCP keepalive");
        }
        if let Err(e) = sock.set_send_buffer_size(SEND_BUFFER) {
            tracing::debug!(%peer, error = %e, "cannot set the socket's send buffer size");
        }
        let codec = match framing {
            Framing::LengthDelimited => Codec::LengthDelimited(ServerCodec::with_limits(
                max_command_frame,
                simpletextim_proto::codec::DEFAULT_MAX_REPLY_FRAME,
            )),
            Framing::Lines => Codec::Lines(Box::new(LineCodec::new(max_command_frame))),
            Framing::WebSocket => Codec::WebSocket(Box::new(WsState {
                decoder: WsDecoder::new(max_command_frame),
                last_read: Instant::now(),
                ping_sent: false,
                peer_close: None,
                done: false,
            })),
        };
        Connection {
            stream,
            tls: tls.map(|conn| {
                Box::new(TlsState {
                    conn,
                    fed: 0,
                    abandoned: false,
                })
            }),
            peer,
            rbuf: BytesMut::new(),
            codec,
            out: FrameWriter::with_framing(framing),
            written: 0,
        }
    }

    /// How its frames are delimited (which transport it is, for the metrics).
    pub(crate) fn framing(&self) -> Framing {
        self.out.framing()
    }

    /// A WebSocket connection on a socket the HTTP listener upgraded: `read` is what was
    /// read past the upgrade request (hyper's buffer), and over TLS, `tls` may hold more,
    /// decrypted or not; both are read before the socket.
    pub(crate) fn upgraded(
        stream: TcpStream,
        peer: SocketAddr,
        max_command_frame: usize,
        tls: Option<rustls::ServerConnection>,
        read: Bytes,
    ) -> Connection {
        let mut conn = Connection::new(stream, peer, Framing::WebSocket, max_command_frame, tls);
        conn.rbuf.extend_from_slice(&read);
        if let Some(tls) = &mut conn.tls {
            // Records tokio-rustls read and did not process, then the plaintext it did not
            // hand to hyper. An error is the session's first read error.
            let _ = tls.conn.process_new_packets();
            let mut chunk = [0u8; READ_CHUNK];
            while let Ok(n @ 1..) = tls.conn.reader().read(&mut chunk) {
                conn.rbuf.extend_from_slice(&chunk[..n]);
            }
        }
        conn
    }

    /// The peer's address, for the log.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether this is a WebSocket connection.
    pub(crate) fn is_websocket(&self) -> bool {
        matches!(self.codec, Codec::WebSocket(_))
    }

    // ---- reading ----

    /// Polls until the socket has something to read (or is closed). It keeps the waker in
    /// the socket's reader slot: no waiter list to join and leave at every wake-up, and a
    /// smaller future than `readable()`.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.poll_read_ready(cx)
    }

    /// Reads what the socket has into the read buffer, without waiting.
    ///
    /// # Errors
    /// The socket's error: the connection is dead.
    pub(crate) fn fill(&mut self) -> io::Result<Filled> {
        let filled = if let Some(tls) = &mut self.tls {
            tls_fill(&self.stream, tls, &mut self.rbuf)?
        } else {
            self.rbuf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => Filled::Eof,
                Ok(_) => Filled::Data,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.release_read_buffer();
                    Filled::Nothing
                }
                Err(e) => return Err(e),
            }
        };
        if filled == Filled::Data
            && let Codec::WebSocket(ws) = &mut self.codec
        {
            ws.last_read = Instant::now();
            ws.ping_sent = false;
        }
        Ok(filled)
    }

    /// The next complete request in the read buffer: `Ok(None)` when there is none (yet),
    /// `Ok(Some(Err(rejected)))` for a frame that is not a valid request (recoverable: the
    /// session answers with the failure, and the request's `ref` if it had a valid one).
    ///
    /// On a WebSocket, control frames are handled on the way: a ping is answered (a pong
    /// queued in the write buffer), a pong is only traffic.
    ///
    /// # Errors
    /// Nothing more can be read: a frame over the limit, the client's WebSocket close, a
    /// WebSocket protocol error.
    pub(crate) fn next_command(&mut self) -> Result<Option<Result<Request, Rejected>>, ReadError> {
        match &mut self.codec {
            Codec::LengthDelimited(c) => Ok(c.decode(&mut self.rbuf)?),
            Codec::Lines(c) => Ok(c.decode(&mut self.rbuf)?),
            Codec::WebSocket(ws) => loop {
                match ws.decoder.decode(&mut self.rbuf) {
                    Ok(None) => return Ok(None),
                    Ok(Some(WsItem::Request(r))) => return Ok(Some(r)),
                    Ok(Some(WsItem::Ping(payload))) => {
                        if !ws.done {
                            self.out.push_control(Control::Pong, &payload);
                        }
                    }
                    Ok(Some(WsItem::Close(code))) => {
                        ws.peer_close = Some(code);
                        return Err(ReadError::Closed);
                    }
                    Err(WsError::TooLarge { max }) => return Err(ReadError::TooLarge { max }),
                    Err(WsError::Protocol(why)) => return Err(ReadError::Protocol(why)),
                }
            },
        }
    }

    /// WebSocket keepalive, when its timer fires: a client that has sent nothing for
    /// `idle` is pinged (the ping queued in the write buffer); one that has sent nothing
    /// for `idle` after that is dead. On other framings, never fires again.
    pub(crate) fn keepalive(&mut self, idle: Duration) -> Keepalive {
        let Codec::WebSocket(ws) = &mut self.codec else {
            return Keepalive::At(Instant::now() + Duration::from_secs(86_400 * 365));
        };
        let now = Instant::now();
        if ws.ping_sent {
            return Keepalive::Dead;
        }
        let quiet_until = ws.last_read + idle;
        if now < quiet_until {
            return Keepalive::At(quiet_until);
        }
        if !ws.done {
            self.out.push_control(Control::Ping, b"");
        }
        ws.ping_sent = true;
        Keepalive::At(now + idle)
    }

    /// WebSocket only: queues the close frame with `code` and `reason` as the last thing
    /// written, unless one was queued already or the write buffer was dropped in the middle
    /// of a frame (the client could not read it then). `None`: echo the client's own close
    /// (its status code, if it gave one), if it sent one; otherwise nothing.
    pub(crate) fn queue_close(&mut self, close: Option<(u16, &str)>) {
        let Codec::WebSocket(ws) = &mut self.codec else {
            return;
        };
        if ws.done {
            return;
        }
        let payload = match (close, ws.peer_close) {
            (Some((code, reason)), _) => websocket::close_payload(code, reason),
            (None, Some(Some(code))) => websocket::close_payload(code, ""),
            (None, Some(None)) => Vec::new(),
            (None, None) => return,
        };
        self.out.push_control(Control::Close, &payload);
        ws.done = true;
    }

    /// Bytes read and not decoded yet.
    pub(crate) fn read_buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// Frees the read buffer when it holds no partial frame.
    pub(crate) fn release_read_buffer(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    // ---- writing ----

    /// The frame writer, for what a drain of the outbox and the presence log writes.
    pub(crate) fn writer(&mut self) -> &mut FrameWriter {
        &mut self.out
    }

    /// Appends a reply, serializing it.
    pub(crate) fn queue_reply(&mut self, reply: &Reply) {
        self.out.push_reply(reply);
    }

    /// Appends a `list` reply: the ref (JSON) when given, and the shared JSON array of ids.
    pub(crate) fn queue_list(&mut self, r#ref: Option<&[u8]>, list: &[u8]) {
        self.out.push_list(r#ref, list);
    }

    /// Bytes in the write buffer (written or not).
    pub(crate) fn buffered(&self) -> usize {
        self.out.len()
    }

    /// Whether there are bytes the socket has not taken: in the write buffer (a buffer
    /// wholly written is cleared at once), or, over TLS, records rustls has to send
    /// (handshake, alerts, encrypted frames). Before the TLS handshake ends the write
    /// buffer waits for it and does not count: there is nothing to write until the client
    /// sends its next handshake message.
    pub(crate) fn has_output(&self) -> bool {
        match &self.tls {
            None => !self.out.is_empty(),
            Some(tls) => {
                !tls.abandoned
                    && (tls.conn.wants_write()
                        || (!self.out.is_empty() && !tls.conn.is_handshaking()))
            }
        }
    }

    /// Writes the buffer on from what the socket took already, until done or the socket is
    /// full, and returns how many bytes the socket took. Once all is written the buffer is
    /// freed.
    ///
    /// # Errors
    /// The socket's error: the connection is dead (what was not written stays, see
    /// [`Connection::unwritten_private`]).
    pub(crate) fn try_flush(&mut self) -> io::Result<usize> {
        if let Some(tls) = &mut self.tls {
            let taken = tls_flush(&self.stream, tls, self.out.pending(), &mut self.written)?;
            if self.written == self.out.len() && !self.out.is_empty() {
                tls.fed = 0;
                self.out.clear();
                self.written = 0;
            }
            return Ok(taken);
        }
        let buf = self.out.pending();
        let from = self.written;
        while self.written < buf.len() {
            match self.stream.try_write(&buf[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(self.written - from),
                Err(e) => return Err(e),
            }
        }
        let taken = self.written - from;
        self.clear_output();
        Ok(taken)
    }

    /// Waits until the socket can take more bytes.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.stream.writable().await
    }

    /// The private messages to this connection's user that are in the write buffer and
    /// were not wholly written (their frame was not entirely taken by the socket). Over TLS
    /// this errs on the side of keeping: a frame whose records rustls still held counts as
    /// unwritten even if some of them reached the socket, so a message may come twice,
    /// never not at all.
    pub(crate) fn unwritten_private(&mut self) -> impl Iterator<Item = &Private> {
        self.out.unwritten_private(self.written)
    }

    /// Forgets the write buffer, written or not, and frees it. Over TLS, records rustls
    /// still holds cannot be taken back: if there are any, nothing more is written on this
    /// connection.
    pub(crate) fn clear_output(&mut self) {
        // A frame cut in the middle: the client cannot read anything written after it.
        if self.written > 0
            && self.written < self.out.len()
            && let Codec::WebSocket(ws) = &mut self.codec
        {
            ws.done = true;
        }
        if let Some(tls) = &mut self.tls {
            tls.fed = 0;
            if tls.conn.wants_write() {
                tls.abandoned = true;
            }
        }
        self.out.clear();
        self.written = 0;
    }

    /// Closes the sending side (the peer reads EOF after what was written). Over TLS it
    /// sends `close_notify` first, unless the connection was abandoned; the caller bounds
    /// the time this may wait for the socket.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls
            && !tls.abandoned
        {
            tls.conn.send_close_notify();
            while tls.conn.wants_write() {
                match tls.conn.write_tls(&mut SocketIo(&self.stream)) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.stream.writable().await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.stream.shutdown().await
    }
}

/// [`Connection::fill`] over TLS: one read of records from the socket, processed, and the
/// plaintext they held appended to `rbuf`.
///
/// # Errors
/// The socket's error, or a TLS error (a bad handshake, a record that does not decrypt, a
/// peer that is not speaking TLS): the alert rustls has for it is sent if the socket takes
/// it at once, and the connection is abandoned.
fn tls_fill(stream: &TcpStream, tls: &mut TlsState, rbuf: &mut BytesMut) -> io::Result<Filled> {
    match tls.conn.read_tls(&mut SocketIo(stream)) {
        Ok(0) => return Ok(Filled::Eof),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            if rbuf.is_empty() {
                *rbuf = BytesMut::new();
            }
            return Ok(Filled::Nothing);
        }
        Err(e) => {
            tls.abandoned = true;
            return Err(e);
        }
    }
    let state = match tls.conn.process_new_packets() {
        Ok(state) => state,
        Err(e) => {
            // Tell the peer why (the alert is queued by the failed call), if the socket
            // takes it now; the session ends either way.
            while tls.conn.wants_write() {
                if !matches!(tls.conn.write_tls(&mut SocketIo(stream)), Ok(n) if n > 0) {
                    break;
                }
            }
            tls.abandoned = true;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    };
    let n = state.plaintext_bytes_to_read();
    if n > 0 {
        let start = rbuf.len();
        rbuf.resize(start + n, 0);
        tls.conn.reader().read_exact(&mut rbuf[start..])?;
    }
    if state.peer_has_closed() {
        return Ok(Filled::Eof);
    }
    Ok(Filled::Data)
}

/// [`Connection::try_flush`] over TLS: writes rustls' records to the socket and hands it
/// `buf` from where it stopped, in turns (rustls takes what its buffer limit allows), until
/// all is written or the socket is full. Each time rustls has no record left, everything it
/// took is on the socket, and `written` moves up to it. Returns how many bytes of records
/// the socket took.
///
/// # Errors
/// The socket's error, or rustls refusing plaintext (it does not once the handshake is
/// done).
fn tls_flush(
    stream: &TcpStream,
    tls: &mut TlsState,
    buf: &[u8],
    written: &mut usize,
) -> io::Result<usize> {
    if tls.abandoned {
        return Ok(0);
    }
    let mut taken = 0;
    loop {
        while tls.conn.wants_write() {
            match tls.conn.write_tls(&mut SocketIo(stream)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => taken += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(taken),
                Err(e) => return Err(e),
            }
        }
        *written = tls.fed;
        // Before the handshake ends the frames wait in the write buffer (see `has_output`).
        if tls.fed >= buf.len() || tls.conn.is_handshaking() {
            return Ok(taken);
        }
        let n = tls.conn.writer().write(&buf[tls.fed..])?;
        if n == 0 {
            // rustls' buffer is empty here, so it always takes something; if it did not,
            // the session would wait on a writable socket for ever: end it instead.
            return Err(io::Error::other("TLS connection takes no more data"));
        }
        tls.fed += n;
    }
}
