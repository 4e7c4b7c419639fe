//! Answers on the listening port while start-up loads (recovery, or a
//! dataset named with `--load-name`): `/healthz` says the process lives,
//! `/readyz` and everything else say "not yet" (503), so an orchestrator's
//! probes see a server that is loading rather than a port that hangs.
//!
//! One thread, one connection at a time, each bounded by a short timeout:
//! it only has to outlast the load. The listeners are handed back to the
//! shards untouched when loading is done; connections not yet accepted wait
//! in their backlogs for the shards.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::handshake::{Endpoint, MAX_REQUEST_BYTES, Outcome, examine, http_text};

const WAKER: Token = Token(usize::MAX);
/// A peer gets this long, all told, to send its request and take the
/// answer: one that trickles bytes cannot hold the thread longer.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);

/// The thread answering while start-up loads.
pub struct LoadingResponder {
    done: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<io::Result<Vec<TcpListener>>>>,
}

impl LoadingResponder {
    /// Answers on `listeners` (over TLS with `tls`) until [`Self::finish`].
    pub fn start(
        mut listeners: Vec<TcpListener>,
        tls: Option<Arc<ServerConfig>>,
    ) -> io::Result<LoadingResponder> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        for (i, listener) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(listener, Token(i), Interest::READABLE)?;
        }
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::Builder::new()
            .name("loading".into())
            .spawn(move || serve(poll, listeners, tls, &stop))?;
        Ok(LoadingResponder {
            done,
            waker,
            thread: Some(thread),
        })
    }

    /// Loading is done: stops answering and hands the listeners back.
    pub fn finish(mut self) -> io::Result<Vec<TcpListener>> {
        self.done.store(true, Ordering::Release);
        self.waker.wake()?;
        let thread = self
            .thread
            .take()
            .ok_or_else(|| io::Error::other("finished twice"))?;
        thread
            .join()
            .map_err(|_| io::Error::other("the loading responder panicked"))?
    }
}

impl Drop for LoadingResponder {
    /// A start-up that failed: the thread stops and closes the listeners.
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

fn serve(
    mut poll: Poll,
    mut listeners: Vec<TcpListener>,
    tls: Option<Arc<ServerConfig>>,
    done: &AtomicBool,
) -> io::Result<Vec<TcpListener>> {
    let mut events = Events::with_capacity(64);
    while !done.load(Ordering::Acquire) {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let Some(listener) = listeners.get(event.token().0) else {
                continue;
            };
            // Edge-triggered: take every waiting connection, unless loading
            // ends meanwhile (the rest are the shards').
            while !done.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, tls.as_ref()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
    }
    for listener in &mut listeners {
        poll.registry().deregister(listener)?;
    }
    Ok(listeners)
}

/// Reads one request and answers it; any failure just drops the peer.
fn answer(stream: TcpStream, tls: Option<&Arc<ServerConfig>>) {
    // SAFETY: the descriptor comes straight from `stream`, which gives it up.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(stream.into_raw_fd()) };
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let peer = Deadline {
        stream,
        at: Instant::now() + PEER_TIMEOUT,
    };
    match tls {
        None => answer_over(peer),
        Some(config) => {
            let Ok(session) = ServerConnection::new(config.clone()) else {
                return;
            };
            // Blocking: the handshake runs inside the first read, under the
            // same deadline as the request.
            answer_over(StreamOwned::new(session, peer));
        }
    }
}

/// A blocking socket that gives up at a deadline: every read and write
/// waits at most the time left, so a peer that trickles bytes (a TLS
/// handshake takes many reads inside one of ours) cannot hold the thread.
struct Deadline {
    stream: std::net::TcpStream,
    at: Instant,
}

impl Deadline {
    fn time_left(&self) -> io::Result<Duration> {
        Some(self.at.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
            .ok_or_else(|| io::ErrorKind::TimedOut.into())
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.time_left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.time_left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`answer`] reads and writes through: the socket, or TLS over it.
trait Peer: Read + Write {
    /// Ends our side once the answer is out.
    fn finish(&mut self);
}

impl Peer for Deadline {
    fn finish(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

impl Peer for StreamOwned<ServerConnection, Deadline> {
    fn finish(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        self.sock.finish();
    }
}

/// [`answer`] over a plain or TLS peer.
fn answer_over(mut peer: impl Peer) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 2048];
    let response = loop {
        match peer.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
        match examine(&received) {
            Outcome::Incomplete if received.len() < MAX_REQUEST_BYTES => continue,
            Outcome::Incomplete | Outcome::NotHttp => return,
            Outcome::Endpoint(Endpoint::Health, _) => {
                break http_text(200, "ok\n");
            }
            Outcome::Refuse { response } => break response.to_vec(),
            // Readiness, metrics and WebSocket clients: not yet.
            Outcome::Endpoint(..) | Outcome::Upgrade { .. } => {
                break http_text(503, "loading\n");
            }
        }
    };
    if peer
        .write_all(&response)
        .and_then(|()| peer.flush())
        .is_ok()
    {
        peer.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::listener::bind_shared;

    fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn answers_probes_while_loading_then_hands_the_listeners_back() {
        let listeners = bind_shared("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let responder = LoadingResponder::start(listeners, None).unwrap();
        for _ in 0..4 {
            let health = get(addr, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(health.starts_with("HTTP/1.1 200 ") && health.ends_with("ok\n"));
            let ready = get(addr, "GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(ready.starts_with("HTTP/1.1 503 "), "{ready}");
            let other = get(addr, "GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(other.starts_with("HTTP/1.1 400 "), "{other}");
        }
        let listeners = responder.finish().unwrap();
        assert_eq!(listeners.len(), 2);
        assert_eq!(listeners[1].local_addr().unwrap(), addr);
    }

    /// A peer that trickles a TLS handshake one byte at a time is dropped
    /// at its deadline, and the probe after it is answered.
    #[test]
    fn a_trickling_tls_peer_cannot_hold_the_responder() {
        let (server, client) = crate::security::tls::tests::localhost_pair();
        let listeners = bind_shared("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let responder = LoadingResponder::start(listeners, Some(server)).unwrap();
        let trickler = std::thread::spawn(move || {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            // A ClientHello's record header claiming 16 KiB, then a byte
            // every 100 ms for 20 s: each read well within any timeout.
            tcp.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00]).unwrap();
            (0..200).any(|_| {
                std::thread::sleep(Duration::from_millis(100));
                tcp.write_all(&[0x01]).is_err()
            })
        });
        std::thread::sleep(Duration::from_millis(50));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let session = rustls::ClientConnection::new(client, name).unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        // Far less than the trickler's 20 s, far more than its 500 ms.
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(session, tcp);
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 200 "),
            "answered while the trickler trickles: {:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(trickler.join().unwrap(), "the trickler was dropped");
        responder.finish().unwrap();
    }

    #[test]
    fn over_tls_probes_are_answered_in_tls() {
        let (server, client) = crate::security::tls::tests::localhost_pair();
        let listeners = bind_shared("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let responder = LoadingResponder::start(listeners, Some(server)).unwrap();
        let get_tls = |path: &str| {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let session = rustls::ClientConnection::new(client.clone(), name).unwrap();
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            let mut tls = rustls::StreamOwned::new(session, tcp);
            tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
                .unwrap();
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer);
            String::from_utf8(answer).unwrap()
        };
        assert!(get_tls("/healthz").starts_with("HTTP/1.1 200 "));
        assert!(get_tls("/readyz").starts_with("HTTP/1.1 503 "));
        // A plain request gets nothing it could take for an answer.
        let plain = get(addr, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(!plain.contains("200"), "{plain}");
        responder.finish().unwrap();
    }
}
