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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credentials, Protocol, Target};
    use crate::tls::{Options, Tls, Trust};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ServerConfig, ServerConnection};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Instant;

    /// A certificate for 127.0.0.1 and localhost, and a rustls server
    /// configuration (ring) that shows it.
    fn server_config() -> (Arc<ServerConfig>, CertificateDer<'static>) {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], key)
                .unwrap();
        (Arc::new(config), cert)
    }

    type TlsServerStream = StreamOwned<ServerConnection, TcpStream>;

    /// Accepts one TLS connection on the loopback and hands it to `serve`
    /// on a thread; returns the port.
    fn serve_once(
        config: Arc<ServerConfig>,
        serve: impl FnOnce(&mut TlsServerStream) + Send + 'static,
    ) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let conn = ServerConnection::new(config).unwrap();
            let mut s = StreamOwned::new(conn, sock);
            serve(&mut s);
        });
        port
    }

    /// Sends back every byte it reads until the client is done.
    fn echo(s: &mut TlsServerStream) {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).and_then(|_| s.flush()).is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn target(port: u16, protocol: Protocol, trust: &Trust) -> Target {
        let host = format!("127.0.0.1:{port}");
        Target {
            protocol,
            addr: ([127, 0, 0, 1], port).into(),
            tls: Some(
                Tls::new(
                    &Options {
                        trust: trust.clone(),
                        identity: None,
                    },
                    &host,
                )
                .unwrap(),
            ),
            host,
            path: "/".into(),
            url: String::new(),
            auth: None,
        }
    }

    #[test]
    fn the_non_blocking_tls_stream_carries_a_megabyte_both_ways() {
        let (config, cert) = server_config();
        let port = serve_once(config, echo);
        let t = target(port, Protocol::Redis, &Trust::Ca(Arc::new(vec![cert])));
        let (blocking, mut leftover) = connect(&t).unwrap();
        let mut stream = Stream::from_blocking(blocking, &mut leftover).unwrap();
        assert!(leftover.is_empty());
        assert!(stream.tls().unwrap().starts_with("TLSv1_3 "));
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(8);
        poll.registry()
            .register(
                stream.socket(),
                mio::Token(0),
                mio::Interest::READABLE | mio::Interest::WRITABLE,
            )
            .unwrap();
        let sent: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let (mut wpos, mut got) = (0, Vec::with_capacity(sent.len()));
        let mut buf = vec![0u8; 20_000];
        let deadline = Instant::now() + Duration::from_secs(20);
        // The driver's way: write and read until WouldBlock, then wait.
        while got.len() < sent.len() {
            assert!(
                Instant::now() < deadline,
                "stuck at {} bytes back",
                got.len()
            );
            while wpos < sent.len() {
                // Uneven pieces, as batches of requests are.
                let end = (wpos + 3000 + wpos % 7000).min(sent.len());
                match stream.write(&sent[wpos..end]) {
                    Ok(n) => wpos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            match stream.flush() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => panic!("flush: {e}"),
                _ => {}
            }
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => panic!("the server closed early"),
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            if got.len() < sent.len() {
                poll.poll(&mut events, Some(Duration::from_millis(100)))
                    .unwrap();
            }
        }
        assert!(got == sent, "the bytes came back changed");
        stream.close(b"");
    }

    #[test]
    fn blocking_clients_speak_tls_and_trust_what_they_are_told() {
        let (config, cert) = server_config();
        let ca = Trust::Ca(Arc::new(vec![cert]));
        for trust in [&ca, &Trust::Any] {
            let port = serve_once(Arc::clone(&config), echo);
            let mut c = crate::client::Client::connect(&target(port, Protocol::Redis, trust), 1, 1)
                .unwrap();
            // The echo answers a RESP reply with itself.
            assert_eq!(c.call(b"+PONG\r\n").unwrap(), b"+PONG\r\n");
            assert_eq!(c.call(b":42\r\n").unwrap(), b":42\r\n");
            c.close();
        }
        // The bundled roots do not know a self-signed certificate.
        let port = serve_once(Arc::clone(&config), echo);
        let e = connect(&target(port, Protocol::Redis, &Trust::Roots))
            .err()
            .unwrap();
        assert!(e.to_string().contains("--tls-ca"), "{e}");
    }

    /// Answers one upgrade over TLS: 101 when it carries `want` as its
    /// Authorization, else 401.
    fn upgrade(want: &'static str) -> impl FnOnce(&mut TlsServerStream) + Send + 'static {
        move |s| {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Request::new(&mut headers);
            r.parse(&req).unwrap();
            let header = |name: &str| {
                r.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value.to_vec())
            };
            let answer = if header("authorization").as_deref() == Some(want.as_bytes()) {
                let key = header("sec-websocket-key").unwrap();
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    tungstenite::handshake::derive_accept_key(&key)
                )
            } else {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = s.write_all(answer.as_bytes());
            let _ = s.flush();
            // Wait for the client to go.
            let _ = s.read(&mut buf);
        }
    }

    #[test]
    fn the_upgrade_over_tls_carries_basic_credentials() {
        let (config, _) = server_config();
        let right = Credentials {
            user: "alice".into(),
            password: "s3cret".into(),
        };
        // base64("alice:s3cret")
        let want = "Basic YWxpY2U6czNjcmV0";
        let mut t = target(0, Protocol::Ws, &Trust::Any);
        for (auth, ok) in [
            (Some(right.clone()), true),
            (
                Some(Credentials {
                    password: "wrong".into(),
                    ..right.clone()
                }),
                false,
            ),
            (None, false),
        ] {
            let port = serve_once(Arc::clone(&config), upgrade(want));
            t.addr.set_port(port);
            t.auth = auth;
            match connect(&t) {
                Ok((mut s, leftover)) => {
                    assert!(ok, "{:?} got in", t.auth);
                    assert!(leftover.is_empty());
                    s.shutdown();
                }
                Err(e) => {
                    assert!(!ok, "{:?}: {e}", t.auth);
                    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
                }
            }
        }
    }
}
