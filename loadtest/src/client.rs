//! A blocking client of either target, one connection, for the work that is
//! not a driver's closed or open loop: the event subscriber, and
//! expiry-events' set-up and probe.
//!
//! Owns: one stream (plain or TLS, see `net`) with its read buffer, cutting
//! received bytes into whole messages (a WebSocket text message, or one
//! RESP reply) in place, and answering pings. Knows nothing of what the
//! messages mean.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::time::Duration;

use crate::config::{Protocol, Target};
use crate::net::{self, Blocking};
use crate::resp;
use crate::rng::Rng;
use crate::ws;

pub struct Client {
    stream: Blocking,
    protocol: Protocol,
    buf: Vec<u8>,
    /// Received bytes not yet handed out are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Requests queued by [`Client::queue`], written by [`Client::flush`].
    wbuf: Vec<u8>,
    /// WebSocket masks.
    rng: Rng,
}

impl Client {
    /// Connects (with TLS and credentials, as the target says, and upgrades,
    /// for ws); `stream` picks the mask generator's stream, so two clients
    /// of a run never share one.
    pub fn connect(target: &Target, seed: u64, stream: u64) -> io::Result<Client> {
        let (s, leftover) = net::connect(target)?;
        let mut buf = vec![0u8; (64 * 1024).max(leftover.len() * 2)];
        buf[..leftover.len()].copy_from_slice(&leftover);
        Ok(Client {
            stream: s,
            protocol: target.protocol,
            buf,
            start: 0,
            end: leftover.len(),
            wbuf: Vec::with_capacity(64 * 1024),
            rng: Rng::new(seed, stream),
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// How long one [`Client::read_more`] may block (`None`: forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.socket().set_read_timeout(t)
    }

    /// Queues one request: a JSON text (ws, framed here) or whole RESP
    /// commands (Redis, as given).
    pub fn queue(&mut self, request: &[u8]) {
        match self.protocol {
            Protocol::Ws => ws::write_frame(&mut self.wbuf, ws::OP_TEXT, &[request], &mut self.rng),
            Protocol::Redis => self.wbuf.extend_from_slice(request),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.wbuf)?;
        // TLS: records written but still in rustls's buffer go out.
        self.stream.flush()?;
        self.wbuf.clear();
        Ok(())
    }

    pub fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.queue(request);
        self.flush()
    }

    /// One `read` into the buffer (blocking, up to the read timeout); the
    /// bytes read. A timeout is `WouldBlock` or `TimedOut`; 0 bytes is an
    /// `UnexpectedEof` error.
    pub fn read_more(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < 16 * 1024 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < 16 * 1024 {
                let len = self.buf.len() * 2;
                self.buf.resize(len, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.end += n;
        Ok(n)
    }

    /// The next whole message already received, as a range for
    /// [`Client::message`]; `None` until more is read. ws: the payload of a
    /// text or binary message (pings are answered, pongs skipped, a close
    /// is an error); Redis: one whole reply.
    pub fn next_message(&mut self) -> io::Result<Option<Range<usize>>> {
        loop {
            let bytes = &self.buf[self.start..self.end];
            match self.protocol {
                Protocol::Redis => {
                    return match resp::parse_reply(bytes) {
                        Ok(Some((len, _))) => {
                            let r = self.start..self.start + len;
                            self.start += len;
                            Ok(Some(r))
                        }
                        Ok(None) => Ok(None),
                        Err(_) => Err(invalid("the server sent bytes that are not RESP")),
                    };
                }
                Protocol::Ws => {
                    let frame = match ws::parse_frame(bytes) {
                        Ok(Some(f)) => f,
                        Ok(None) => return Ok(None),
                        Err(e) => {
                            return Err(invalid(&format!("bad frame from the server: {e:?}")));
                        }
                    };
                    let payload = self.start + frame.header_len
                        ..self.start + frame.header_len + frame.payload_len;
                    self.start += frame.total_len();
                    match frame.opcode {
                        ws::OP_TEXT | ws::OP_BINARY if frame.fin => return Ok(Some(payload)),
                        ws::OP_PING => {
                            let body = self.buf[payload].to_vec();
                            ws::write_frame(&mut self.wbuf, ws::OP_PONG, &[&body], &mut self.rng);
                            self.flush()?;
                        }
                        ws::OP_PONG => {}
                        ws::OP_CLOSE => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "the server closed the WebSocket",
                            ));
                        }
                        _ => return Err(invalid("fragmented messages are not supported")),
                    }
                }
            }
        }
    }

    pub fn message(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Waits for the next whole message and returns a copy.
    pub fn recv(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(r) = self.next_message()? {
                return Ok(self.buf[r].to_vec());
            }
            self.read_more()?;
        }
    }

    /// Sends one request and waits for the next message.
    pub fn call(&mut self, request: &[u8]) -> io::Result<Vec<u8>> {
        self.send(request)?;
        self.recv()
    }

    /// Ends the connection politely (a close frame on ws), best effort.
    pub fn close(mut self) {
        if self.protocol == Protocol::Ws {
            self.wbuf.clear();
            ws::write_frame(
                &mut self.wbuf,
                ws::OP_CLOSE,
                &[&1000u16.to_be_bytes()],
                &mut self.rng,
            );
            let _ = self.flush();
        }
        self.stream.shutdown();
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// One RESP command from its arguments.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        resp::bulk(&mut out, a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn target(port: u16, protocol: Protocol) -> Target {
        Target {
            protocol,
            addr: ([127, 0, 0, 1], port).into(),
            host: format!("127.0.0.1:{port}"),
            path: "/".into(),
            url: String::new(),
            tls: None,
            auth: None,
        }
    }

    #[test]
    fn redis_replies_come_out_whole_however_they_are_cut() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 64];
            let _ = s.read(&mut req).unwrap();
            let all = b"+OK\r\n*2\r\n$3\r\nabc\r\n:5\r\n";
            for b in all {
                s.write_all(&[*b]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let mut c = Client::connect(&target(port, Protocol::Redis), 1, 1).unwrap();
        c.send(&command(&[b"PING"])).unwrap();
        assert_eq!(c.recv().unwrap(), b"+OK\r\n");
        assert_eq!(c.recv().unwrap(), b"*2\r\n$3\r\nabc\r\n:5\r\n");
        server.join().unwrap();
        assert_eq!(
            command(&[b"GET", b"k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }
}
