//! Opening a connection to the target, and the two transports above a
//! socket: plain TCP or TLS.
//!
//! Owns: connecting (TCP, then the TLS handshake, then the WebSocket
//! upgrade or Redis's `AUTH`), all blocking and untimed; [`Blocking`], the
//! stream a [`crate::client::Client`] reads and writes; and [`Stream`], the
//! non-blocking one a driver connection becomes. Knows nothing of requests
//! or replies beyond the upgrade and `AUTH`.
//!
//! The plain path stays what it was: [`Stream::Plain`] is mio's socket, and
//! each call is one match away from it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};

use crate::config::{Credentials, Protocol, Target};
use crate::resp;
use crate::tls::{self, TlsStream};
use crate::ws;

/// How long connecting, the TLS handshake, and the upgrade may each wait.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A blocking stream to the target.
pub enum Blocking {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Blocking {
    pub fn socket(&self) -> &TcpStream {
        match self {
            Blocking::Plain(s) => s,
            Blocking::Tls(s) => &s.sock,
        }
    }

    /// Ends the TLS session (if any) and our direction of the socket, best
    /// effort.
    pub fn shutdown(&mut self) {
        if let Blocking::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.socket().shutdown(Shutdown::Write);
    }
}

impl Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(s) => s.read(buf),
            Blocking::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Blocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(s) => s.write(buf),
            Blocking::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Blocking::Plain(s) => s.flush(),
            Blocking::Tls(s) => s.flush(),
        }
    }
}

/// Connects, shakes hands (TLS), upgrades (ws) or authenticates (Redis with
/// `--user`). Returns the stream, with no timeouts left on it, and the bytes
/// the server sent after its answer (normally none), which belong to the
/// message stream.
pub fn connect(target: &Target) -> io::Result<(Blocking, Vec<u8>)> {
    let s = TcpStream::connect_timeout(&target.addr, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    s.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    let mut stream = match &target.tls {
        None => Blocking::Plain(s),
        Some(t) => {
            let mut tls = StreamOwned::new(t.connection()?, s);
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock).map_err(tls::explain)?;
            }
            Blocking::Tls(Box::new(tls))
        }
    };
    let leftover = match target.protocol {
        Protocol::Ws => ws::handshake(
            &mut stream,
            &target.host,
            &target.path,
            target.auth.as_ref(),
        )?,
        Protocol::Redis => match &target.auth {
            Some(auth) => redis_auth(&mut stream, auth)?,
            None => Vec::new(),
        },
    };
    stream.socket().set_read_timeout(None)?;
    stream.socket().set_write_timeout(None)?;
    Ok((stream, leftover))
}

/// `AUTH user password`; returns what came after its `+OK`.
fn redis_auth(stream: &mut Blocking, auth: &Credentials) -> io::Result<Vec<u8>> {
    let mut request = b"*3\r\n".to_vec();
    for arg in [&b"AUTH"[..], auth.user.as_bytes(), auth.password.as_bytes()] {
        resp::bulk(&mut request, arg);
    }
    stream.write_all(&request)?;
    stream.flush()?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection after AUTH",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        match resp::parse_reply(&buf) {
            Ok(Some((len, resp::Reply::Value))) if buf.starts_with(b"+") => {
                return Ok(buf.split_off(len));
            }
            Ok(Some((len, _))) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "AUTH (--user/--password) answered {}",
                        String::from_utf8_lossy(&buf[..len]).trim_end()
                    ),
                ));
            }
            Ok(None) if buf.len() < 64 * 1024 => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "AUTH's answer is not RESP",
                ));
            }
        }
    }
}

/// A non-blocking stream to the target, for the driver's mio loop.
pub enum Stream {
    Plain(mio::net::TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    /// Turns a connected stream non-blocking. Plaintext rustls already
    /// decrypted (after the upgrade's answer) is appended to `leftover`, so
    /// no data waits inside rustls while the socket itself stays quiet.
    pub fn from_blocking(stream: Blocking, leftover: &mut Vec<u8>) -> io::Result<Stream> {
        match stream {
            Blocking::Plain(s) => {
                s.set_nonblocking(true)?;
                Ok(Stream::Plain(mio::net::TcpStream::from_std(s)))
            }
            Blocking::Tls(tls) => {
                let StreamOwned { mut conn, sock } = *tls;
                let mut chunk = [0u8; 4096];
                loop {
                    match conn.reader().read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => leftover.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                sock.set_nonblocking(true)?;
                let sock = mio::net::TcpStream::from_std(sock);
                Ok(Stream::Tls(Box::new(TlsStream::new(conn, sock))))
            }
        }
    }

    /// The agreed TLS protocol and cipher suite; `None` for plain TCP.
    pub fn tls(&self) -> Option<String> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => Some(t.describe()),
        }
    }

    /// The socket, to register with mio.
    pub fn socket(&mut self) -> &mut mio::net::TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.socket(),
        }
    }

    /// Reads what is there; see [`TlsStream::read`] for TLS's `Ok(n)`.
    #[inline]
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }

    #[inline]
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    /// Sends what a write left in rustls's buffer (nothing for plain TCP).
    #[inline]
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.flush(),
        }
    }

    /// Sends `last` (a close frame, or nothing), ends the TLS session, and
    /// shuts our direction of the socket; best effort.
    pub fn close(&mut self, last: &[u8]) {
        match self {
            Stream::Plain(s) => {
                let _ = s.write(last);
            }
            Stream::Tls(t) => {
                let _ = t.write(last);
                t.close();
            }
        }
        let _ = self.socket().shutdown(Shutdown::Write);
    }
}
