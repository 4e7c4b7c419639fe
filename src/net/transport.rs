//! What a connection reads its client's bytes from and writes its answers
//! to. The WebSocket layer and the connection state machine are generic
//! over it (static dispatch: no cost on the hot path), so they run the same
//! over a client's TCP socket ([`super::socket::Socket`]), over scripted
//! bytes in memory ([`super::memory::MemoryTransport`], for tests and
//! fuzzing), and over TLS (the same socket with rustls in it).
//!
//! It must not know anything of WebSocket or HTTP: bytes in, bytes out.

use std::io::{self, Read, Write};
use std::net::Shutdown;

/// A non-blocking byte stream to one client.
///
/// `read` and `write` follow [`Read`] and [`Write`] for a non-blocking
/// stream: `WouldBlock` when nothing can be read or written for now (the
/// event loop calls again on the next readiness), `Ok(0)` from `read` at the
/// peer's end of stream. What `write` took is the transport's to send:
/// `flush` is called once everything is written, and says `WouldBlock`
/// while the transport still holds bytes it could not send (TLS records);
/// a writable event brings the caller back.
pub trait Transport: Read + Write {
    /// A hint from the event loop that the peer has shut its side (or the
    /// stream failed): its end of stream may be queued behind data with no
    /// further readiness to come, so reads must go on until `Ok(0)`
    /// instead of stopping at a short read.
    fn peer_closed(&mut self);

    /// A hint from the event loop that new readiness was signalled: bytes
    /// may have arrived since the last read, so a short read seen before
    /// (when reading then paused) no longer proves the stream empty.
    fn readiness(&mut self);

    /// Shuts down one or both halves: after our close frame, `Write` lets
    /// the peer see our end of stream; `Both` refuses a connection.
    fn shutdown(&mut self, how: Shutdown) -> io::Result<()>;

    /// Bytes read and written so far (for the metrics).
    fn traffic(&self) -> Traffic;
}

/// Bytes a transport read and wrote.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub received: u64,
    pub sent: u64,
}
