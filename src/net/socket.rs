//! A client socket that remembers when a read came back short.
//!
//! With edge-triggered readiness a reader must read until `WouldBlock`, but
//! a read that returned less than it asked for has already drained the
//! socket: any byte that arrives later raises a new edge. Answering the next
//! read with `WouldBlock` straight away saves one `read` syscall per
//! connection per turn, which at one request per turn is a third of them.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use super::transport::{Traffic, Transport};

/// A client's TCP socket: the production [`Transport`].
pub struct Socket {
    stream: TcpStream,
    /// The last read was short: the kernel buffer was empty after it.
    drained: bool,
    /// The peer shut its side: its end of stream may already be queued
    /// behind the data, with no further edge to come, so every read asks.
    peer_closed: bool,
    traffic: Traffic,
}

impl Socket {
    pub fn new(stream: TcpStream) -> Self {
        Socket {
            stream,
            drained: false,
            peer_closed: false,
            traffic: Traffic::default(),
        }
    }
}

impl Transport for Socket {
    fn peer_closed(&mut self) {
        self.peer_closed = true;
        self.drained = false;
    }

    // Reading may have paused right after a short read (too many requests
    // in flight, the turn's budget spent): bytes that came since raised
    // this edge, and no other edge will come for them.
    fn readiness(&mut self) {
        self.drained = false;
    }

    fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }

    fn traffic(&self) -> Traffic {
        self.traffic
    }
}

impl Read for Socket {
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

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.traffic.sent += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
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
