//! A client connection: the socket, the read and write buffers, and the framing.
//!
//! Everything below the protocol lives here. The session above it sees commands coming in
//! ([`Connection::fill`], [`Connection::next_command`]) and outbox items and replies going
//! out ([`Connection::queue`], [`Connection::queue_reply`], [`Connection::try_flush`]); it
//! never touches bytes, and only this file touches the socket.
//!
//! An idle connection holds no buffers: the socket is polled for readiness and then read
//! with `try_read_buf` into a buffer that is freed once it holds no partial frame, and the
//! write buffer is freed once written. That keeps tens of thousands of idle connections
//! cheap.
//!
//! **Where a transport plugs in.** A connection is readiness-based: wait until the socket is
//! readable or writable, then read or write without blocking. A new byte transport (TLS)
//! wraps the socket here — its records are decrypted into `rbuf` in `fill` and encrypted
//! from the frame writer's bytes in `try_flush` — and a new framing (WebSocket messages)
//! is a [`Framing`] of the frame writer plus a decoder in [`Codec`]. The session, the hub
//! and the outbox stay as they are.

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use simpletextim_proto::{CodecError, Command, Failure, Reply, ServerCodec};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::wire::{FrameWriter, Framing, LineCodec, Out, Private};

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 4096;
/// TCP keepalive: a peer that vanished (no FIN, no RST) is found out after this much
/// silence plus the kernel's probes, and its session ends with `left`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// One client's socket with its buffers and framing.
pub(crate) struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    /// Bytes read and not yet decoded; empty (no allocation) between commands.
    rbuf: BytesMut,
    codec: Codec,
    /// Frames waiting to be written; empty (no allocation) when all is written.
    out: FrameWriter,
    /// How much of `out` the socket has taken.
    written: usize,
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
}

impl Connection {
    /// Wraps a just-accepted socket: no Nagle delay (replies are written in batches
    /// already), and TCP keepalive to find vanished peers. Commands longer than
    /// `max_command_frame` bytes are refused.
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        framing: Framing,
        max_command_frame: usize,
    ) -> Connection {
        // Both are optimisations of a socket that works without them: a failure is logged,
        // not fatal.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let keepalive = TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        if let Err(e) = SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%peer, error = %e, "cannot set TCP keepalive");
        }
        let codec = match framing {
            Framing::LengthDelimited => Codec::LengthDelimited(ServerCodec::with_limits(
                max_command_frame,
                simpletextim_proto::codec::DEFAULT_MAX_REPLY_FRAME,
            )),
            Framing::Lines => Codec::Lines(Box::new(LineCodec::new(max_command_frame))),
        };
        Connection {
            stream,
            peer,
            rbuf: BytesMut::new(),
            codec,
            out: FrameWriter::with_framing(framing),
            written: 0,
        }
    }

    /// The peer's address, for the log.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
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
        self.rbuf.reserve(READ_CHUNK);
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Ok(Filled::Eof),
            Ok(_) => Ok(Filled::Data),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.release_read_buffer();
                Ok(Filled::Nothing)
            }
            Err(e) => Err(e),
        }
    }

    /// The next complete command in the read buffer: `Ok(None)` when there is none (yet),
    /// `Ok(Some(Err(failure)))` for a frame that is not a valid command (recoverable: the
    /// session answers with the failure).
    ///
    /// # Errors
    /// A fatal framing error ([`CodecError::FrameTooLarge`]): nothing more can be read.
    pub(crate) fn next_command(&mut self) -> Result<Option<Result<Command, Failure>>, CodecError> {
        match &mut self.codec {
            Codec::LengthDelimited(c) => c.decode(&mut self.rbuf),
            Codec::Lines(c) => c.decode(&mut self.rbuf),
        }
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

    /// Appends a batch of outbox items, making room for all of them at once.
    pub(crate) fn queue_all<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a Out> + Clone) {
        if items.len() > 1 {
            self.out.reserve_for(items.clone());
        }
        for item in items {
            self.out.push(item);
        }
    }

    /// Appends a reply, serializing it.
    pub(crate) fn queue_reply(&mut self, reply: &Reply) {
        self.out.push_reply(reply);
    }

    /// Bytes in the write buffer (written or not).
    pub(crate) fn buffered(&self) -> usize {
        self.out.len()
    }

    /// Whether the write buffer holds bytes the socket has not taken (a buffer wholly
    /// written is cleared at once).
    pub(crate) fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes the buffer on from what the socket took already, until done or the socket is
    /// full, and returns how many bytes the socket took. Once all is written the buffer is
    /// freed.
    ///
    /// # Errors
    /// The socket's error: the connection is dead (what was not written stays, see
    /// [`Connection::unwritten_private`]).
    pub(crate) fn try_flush(&mut self) -> io::Result<usize> {
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
    /// were not wholly written (their frame was not entirely taken by the socket).
    pub(crate) fn unwritten_private(&mut self) -> impl Iterator<Item = &Private> {
        self.out.unwritten_private(self.written)
    }

    /// Forgets the write buffer, written or not, and frees it.
    pub(crate) fn clear_output(&mut self) {
        self.out.clear();
        self.written = 0;
    }

    /// Closes the sending side (the peer reads EOF after what was written).
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }
}
