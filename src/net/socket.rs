//! A client's socket, plain or TLS.
//!
//! Plain: with edge-triggered readiness a reader must read until
//! `WouldBlock`, but a read that returned less than it asked for has
//! already drained the socket: any byte that arrives later raises a new
//! edge. Answering the next read with `WouldBlock` straight away saves one
//! `read` syscall per connection per turn, which at one request per turn is
//! a third of them.
//!
//! TLS: rustls driven sans-I/O over that same socket, on the shard's
//! thread. A read decrypts what arrived and answers with plaintext; a write
//! encrypts and sends what the socket takes, and what it does not take
//! waits in rustls (bounded by its buffer limit) for [`Socket::flush`]. The
//! connection above sees the same non-blocking byte stream either way, so
//! pipelining, backpressure and every limit work the same over TLS.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

use super::transport::{Traffic, Transport};

/// Encrypted bytes rustls may hold for a connection beyond what the socket
/// took (about four full records). The output limit is the WebSocket's;
/// this only bounds what sits below it.
const TLS_PENDING_LIMIT: usize = 64 * 1024;

/// A client's socket: the production [`Transport`].
pub struct Socket {
    raw: RawSocket,
    /// Present on a TLS port; boxed, so a plain socket stays small.
    tls: Option<Box<ServerConnection>>,
    /// The peer ended its stream (TCP end or TLS close_notify).
    tls_eof: bool,
}

/// The TCP socket under it, counting bytes and remembering short reads.
struct RawSocket {
    stream: TcpStream,
    /// The last read was short: the kernel buffer was empty after it.
    drained: bool,
    /// The peer shut its side: its end of stream may already be queued
    /// behind the data, with no further edge to come, so every read asks.
    peer_closed: bool,
    traffic: Traffic,
}

impl Socket {
    /// A plain socket.
    pub fn new(stream: TcpStream) -> Self {
        Socket {
            raw: RawSocket {
                stream,
                drained: false,
                peer_closed: false,
                traffic: Traffic::default(),
            },
            tls: None,
            tls_eof: false,
        }
    }

    /// A socket that speaks TLS as the server of `config`.
    pub fn tls(stream: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let mut tls = ServerConnection::new(config).map_err(io::Error::other)?;
        tls.set_buffer_limit(Some(TLS_PENDING_LIMIT));
        let mut socket = Socket::new(stream);
        socket.tls = Some(Box::new(tls));
        Ok(socket)
    }
}

impl Transport for Socket {
    fn peer_closed(&mut self) {
        self.raw.peer_closed = true;
        self.raw.drained = false;
    }

    // Reading may have paused right after a short read (too many requests
    // in flight, the turn's budget spent): bytes that came since raised
    // this edge, and no other edge will come for them.
    fn readiness(&mut self) {
        self.raw.drained = false;
    }

    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            // Best effort: the peer learns the stream ended cleanly.
            tls.send_close_notify();
            let _ = send_records(tls, &mut self.raw);
        }
        self.raw.stream.shutdown(how)
    }

    fn traffic(&self) -> Traffic {
        self.raw.traffic
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.raw.read(buf),
            Some(tls) => read_tls(tls, &mut self.raw, &mut self.tls_eof, buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.raw.write(buf),
            Some(tls) => {
                // Records from earlier writes go first, and hold the buffer.
                send_records(tls, &mut self.raw)?;
                let taken = tls.writer().write(buf)?;
                match send_records(tls, &mut self.raw) {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                    // The rest waits in rustls for the next write or flush.
                    _ => Ok(taken),
                }
            }
        }
    }

    /// Sends the records rustls still holds: `WouldBlock` until the socket
    /// took them all.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            None => Ok(()),
            Some(tls) => send_records(tls, &mut self.raw),
        }
    }
}

/// Plaintext from a TLS connection: what rustls has decrypted, else what
/// the socket has for it. Handshake messages it must answer go out as they
/// come (what the socket does not take waits for a flush).
fn read_tls(
    tls: &mut ServerConnection,
    raw: &mut RawSocket,
    eof: &mut bool,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The peer closed TCP without close_notify: an end all the same
            // (the WebSocket close frame, if any, came before it).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        if *eof {
            return Ok(0);
        }
        match tls.read_tls(raw) {
            Ok(0) => *eof = true,
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        if let Err(error) = tls.process_new_packets() {
            // The alert rustls queued tells the peer why; then we are done.
            let _ = send_records(tls, raw);
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
        match send_records(tls, raw) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
    }
}

/// Writes the records rustls holds until none is left or the socket is full.
fn send_records(tls: &mut ServerConnection, raw: &mut RawSocket) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(raw) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Read for RawSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if std::mem::take(&mut self.drained) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.stream.read(buf)?;
        self.traffic.received += n as u64;
        // 0 is end of stream, not a short read: let it through as it is.
        self.drained = !self.peer_closed && n > 0 && n < buf.len();
        Ok(n)
    }
}

impl Write for RawSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.traffic.sent += n as u64;
        Ok(n)
    }

    // rustls hands over its records as a vector: one syscall for them all.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.stream.write_vectored(bufs)?;
        self.traffic.sent += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that has just read "hello" (a short read), and its peer.
    fn after_a_short_read() -> (Socket, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut socket = Socket::new(TcpStream::from_std(server));
        client.write_all(b"hello").unwrap();
        let mut buf = [0u8; 64];
        loop {
            match socket.read(&mut buf) {
                Ok(n) => {
                    assert_eq!(&buf[..n], b"hello");
                    return (socket, client);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_short_read_spares_the_next_syscall_only() {
        let (mut socket, mut client) = after_a_short_read();
        let mut buf = [0u8; 64];
        client.write_all(b"more").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Short read: the next read says WouldBlock without asking...
        assert_eq!(
            socket.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // ...and the one after reads what came meanwhile.
        assert_eq!(socket.read(&mut buf).unwrap(), 4);
    }

    /// A TLS socket and its peer's blocking TCP stream, before any byte.
    fn tls_socket() -> (Socket, std::net::TcpStream, Arc<rustls::ClientConfig>) {
        let (server, client) = crate::security::tls::tests::localhost_pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        peer.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let socket = Socket::tls(TcpStream::from_std(accepted), server).unwrap();
        (socket, peer, client)
    }

    /// Reads from a non-blocking socket until `want` bytes came (or the end).
    fn read_exactly(socket: &mut Socket, want: usize) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < want && std::time::Instant::now() < deadline {
            socket.readiness();
            match socket.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    #[test]
    fn tls_carries_requests_in_and_a_large_answer_out_in_order() {
        let (mut socket, peer, client) = tls_socket();
        let (blocked_tx, blocked_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let session = rustls::ClientConnection::new(client, name).unwrap();
            let mut tls = rustls::StreamOwned::new(session, peer);
            tls.write_all(b"hello over tls").unwrap();
            tls.flush().unwrap();
            // Nothing is read until the server's socket is full.
            blocked_rx.recv().unwrap();
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer);
            answer
        });
        assert_eq!(read_exactly(&mut socket, 14).unwrap(), b"hello over tls");
        let answer: Vec<u8> = (0..64u32 << 20).map(|i| (i % 253) as u8).collect();
        let mut sent = 0;
        let mut end = answer.len();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let result = match sent < end {
                true => socket.write(&answer[sent..end]).map(|n| sent += n),
                false => socket.flush(),
            };
            match result {
                Ok(()) if sent == end => match socket.flush() {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                },
                Ok(()) => {}
                // Full: the peer may read now, and a little more follows.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && end == answer.len() => {
                    end = sent + (1 << 20);
                    blocked_tx.send(()).unwrap();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(end < answer.len(), "the socket never filled");
        socket.shutdown(Shutdown::Write).unwrap();
        assert_eq!(reader.join().unwrap(), &answer[..end]);
        assert!(socket.traffic().sent > end as u64, "records cost bytes");
    }

    #[test]
    fn bytes_that_are_not_tls_are_an_error_and_the_end_of_stream_an_end() {
        let (mut socket, mut peer, _) = tls_socket();
        peer.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let error = read_exactly(&mut socket, 1).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);

        let (mut socket, peer, _) = tls_socket();
        drop(peer);
        assert_eq!(read_exactly(&mut socket, 1).unwrap(), b"");
    }

    /// Reading paused right after a short read; bytes came, and their edge
    /// was signalled: the next read must ask the kernel, or they would wait
    /// for an edge that never comes (a stall found by loadtest's logout-all).
    #[test]
    fn new_readiness_after_a_short_read_reads_again() {
        let (mut socket, mut client) = after_a_short_read();
        let mut buf = [0u8; 64];
        client.write_all(b"more").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        socket.readiness();
        assert_eq!(socket.read(&mut buf).unwrap(), 4);
    }
}
