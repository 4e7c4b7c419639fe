//! One client connection: an explicit state machine (handshake, open,
//! closing) over a non-blocking socket, plus the queue that keeps responses
//! in request order while some of them are still being computed on other
//! shards.
//!
//! It speaks WebSocket but knows nothing of commands: it hands out message
//! payloads and takes encoded responses.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocket, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use super::handshake::{self, MAX_REQUEST_BYTES, Outcome};
use super::socket::Socket;

/// How long a closing connection may take to let us read its last bytes.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Requests a connection may have unanswered (or answered but not yet
/// written) before we stop reading it. With the output limit this bounds
/// what one client can make us hold: the limit plus this many responses.
const MAX_IN_FLIGHT: usize = 128;

/// Per-connection WebSocket limits and buffer sizes.
#[derive(Copy, Clone, Debug)]
pub struct Limits {
    /// Largest message (and frame) accepted; larger ones close with 1009.
    pub max_payload: usize,
    /// Response bytes a client may leave unread before we stop reading
    /// its requests (backpressure instead of unbounded buffering).
    pub max_output_buffer: usize,
    /// How long a client may stay over that limit before it is dropped.
    pub output_stall_timeout: Duration,
}

impl Limits {
    fn websocket_config(self) -> WebSocketConfig {
        // Small read buffers keep thousands of idle connections cheap; the
        // write buffer only fills between our once-per-turn flushes.
        WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(256 * 1024)
            .max_message_size(Some(self.max_payload))
            .max_frame_size(Some(self.max_payload))
    }
}

/// A place in the server-wide connection limit, given back on drop.
pub struct Permit(Arc<AtomicUsize>);

impl Permit {
    /// Takes a place if fewer than `max` are taken.
    pub fn acquire(count: &Arc<AtomicUsize>, max: usize) -> Option<Permit> {
        let taken = count.fetch_add(1, Ordering::AcqRel);
        if taken >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit(count.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A message from the client, as far as this layer understands it.
#[derive(Debug)]
pub enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// A text message whose bytes were not UTF-8.
    InvalidUtf8,
}

/// The result of trying to read one message.
#[derive(Debug)]
pub enum ReadOutcome {
    Message(Incoming),
    /// Nothing more to read until the socket is readable again.
    WouldBlock,
    /// The connection is finished; drop it.
    Closed,
}

enum State {
    Handshake {
        stream: Socket,
        received: Vec<u8>,
    },
    Open(Box<WebSocket<Socket>>),
    /// Our close frame is queued or sent; input is read and discarded until
    /// the peer closes or the linger time runs out.
    Closing {
        ws: Box<WebSocket<Socket>>,
        since: Instant,
        write_shut: bool,
    },
    Closed,
}

pub struct Connection {
    /// Unique within the shard for its lifetime: tells a reply for a closed
    /// connection from one for a new connection in the same slot.
    pub id: u64,
    pub accepted_at: Instant,
    state: State,
    limits: Limits,
    /// Responses not yet handed to the socket; `pending[0]` answers request
    /// number `pending_base`. `None` is a response still being computed.
    pending: VecDeque<Option<Vec<u8>>>,
    pending_base: u64,
    next_seq: u64,
    /// There may be unread input (the last read did not end in WouldBlock).
    pub readable: bool,
    /// Something was written since the last flush.
    needs_flush: bool,
    /// Bytes handed to the WebSocket since it last flushed completely: an
    /// upper bound on what sits unsent in its buffer.
    unflushed: usize,
    /// Bytes of responses computed but still waiting in `pending`.
    held: usize,
    /// When the client stopped taking our responses (output over the limit).
    blocked_since: Option<Instant>,
    /// The connection must end (a protocol breach, a message too big):
    /// nothing more is read, and the close frame follows the answers due.
    close_when_answered: Option<(CloseCode, &'static str)>,
    _permit: Permit,
}

impl Connection {
    pub fn new(id: u64, stream: TcpStream, limits: Limits, permit: Permit) -> Self {
        Connection {
            id,
            accepted_at: Instant::now(),
            state: State::Handshake {
                stream: Socket::new(stream),
                received: Vec::new(),
            },
            limits,
            pending: VecDeque::new(),
            pending_base: 0,
            next_seq: 0,
            readable: true,
            needs_flush: false,
            unflushed: 0,
            held: 0,
            blocked_since: None,
            close_when_answered: None,
            _permit: permit,
        }
    }

    /// Whether to read more requests now: not while too many are
    /// unanswered, nor while the client is not reading its responses.
    pub fn wants_input(&self) -> bool {
        self.pending.len() < MAX_IN_FLIGHT
            && self.close_when_answered.is_none()
            && self.blocked_since.is_none()
            && self.unflushed + self.held < self.limits.max_output_buffer
    }

    /// How long the client has left its responses unread, if it has.
    pub fn blocked_for(&self) -> Option<Duration> {
        self.blocked_since.map(|since| since.elapsed())
    }

    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshake { .. })
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Requests whose responses have not been written yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Reads the next message, driving the handshake or the close as needed.
    pub fn read(&mut self) -> ReadOutcome {
        loop {
            match &mut self.state {
                State::Handshake { .. } => match self.advance_handshake() {
                    Ok(true) => continue,
                    Ok(false) => return ReadOutcome::WouldBlock,
                    Err(_) => {
                        self.state = State::Closed;
                        return ReadOutcome::Closed;
                    }
                },
                // Ending: read nothing more, the close follows the answers.
                State::Open(_) if self.close_when_answered.is_some() => {
                    return ReadOutcome::WouldBlock;
                }
                State::Open(ws) => {
                    return match ws.read() {
                        Ok(Message::Text(text)) => ReadOutcome::Message(Incoming::Text(text)),
                        Ok(Message::Binary(_)) => ReadOutcome::Message(Incoming::Binary),
                        // Pings are answered by tungstenite (queued, sent on
                        // flush); a peer's close is echoed the same way.
                        Ok(_) => {
                            self.needs_flush = true;
                            continue;
                        }
                        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                            ReadOutcome::WouldBlock
                        }
                        Err(WsError::Utf8(detail)) => {
                            // A single frame is checked whole (std's
                            // Utf8Error); fragments by a collector whose
                            // errors read differently. After a broken
                            // fragmented message tungstenite cannot find the
                            // next one: the connection ends as RFC 6455 asks,
                            // once this message's ERR 3 is answered.
                            let fragmented = !detail.starts_with("invalid utf-8")
                                && !detail.starts_with("incomplete utf-8");
                            if fragmented {
                                self.close_when_answered =
                                    Some((CloseCode::Invalid, "invalid UTF-8 in a text message"));
                            }
                            ReadOutcome::Message(Incoming::InvalidUtf8)
                        }
                        Err(WsError::Capacity(_)) => {
                            self.end_after_answers(CloseCode::Size, "message too big");
                            continue;
                        }
                        // A breach of RFC 6455 ends the connection, with a
                        // close frame after the answers already due.
                        Err(WsError::Protocol(_)) => {
                            self.end_after_answers(CloseCode::Protocol, "WebSocket protocol error");
                            continue;
                        }
                        Err(_) => {
                            self.state = State::Closed;
                            ReadOutcome::Closed
                        }
                    };
                }
                State::Closing { ws, since, .. } => {
                    let mut sink = [0u8; 4096];
                    return match ws.get_mut().read(&mut sink) {
                        Ok(0) => {
                            self.state = State::Closed;
                            ReadOutcome::Closed
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if since.elapsed() > CLOSE_LINGER {
                                self.state = State::Closed;
                                return ReadOutcome::Closed;
                            }
                            ReadOutcome::WouldBlock
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => {
                            self.state = State::Closed;
                            ReadOutcome::Closed
                        }
                    };
                }
                State::Closed => return ReadOutcome::Closed,
            }
        }
    }

    /// Reads request bytes; Ok(true) once the connection is upgraded,
    /// Ok(false) when more bytes are needed, Err when it must close.
    fn advance_handshake(&mut self) -> io::Result<bool> {
        let State::Handshake { stream, received } = &mut self.state else {
            return Ok(true);
        };
        let mut chunk = [0u8; 2048];
        loop {
            let room = (MAX_REQUEST_BYTES + chunk.len() - received.len()).min(chunk.len());
            let n = match stream.read(&mut chunk[..room]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            received.extend_from_slice(&chunk[..n]);
            match handshake::examine(received) {
                Outcome::Incomplete => continue,
                Outcome::NotHttp => return Err(io::ErrorKind::InvalidData.into()),
                Outcome::Refuse { response } => {
                    // Best effort: a fresh socket's send buffer takes a few
                    // hundred bytes without blocking.
                    let _ = stream.write_all(response);
                    let _ = stream.shutdown(Shutdown::Both);
                    return Err(io::ErrorKind::InvalidData.into());
                }
                Outcome::Upgrade { response, head_len } => {
                    // 101 responses are ~130 bytes: a fresh socket never
                    // blocks on them; if it does, the peer is not reading.
                    stream.write_all(&response)?;
                    let rest = received[head_len..].to_vec();
                    let State::Handshake { stream, .. } =
                        std::mem::replace(&mut self.state, State::Closed)
                    else {
                        unreachable!("matched above");
                    };
                    let ws = WebSocket::from_partially_read(
                        stream,
                        rest,
                        Role::Server,
                        Some(self.limits.websocket_config()),
                    );
                    self.state = State::Open(Box::new(ws));
                    return Ok(true);
                }
            }
        }
    }

    /// Ends the connection once every request read so far is answered.
    fn end_after_answers(&mut self, code: CloseCode, reason: &'static str) {
        self.close_when_answered = Some((code, reason));
        self.close_if_answered();
    }

    fn close_if_answered(&mut self) {
        if self.pending.is_empty()
            && let Some((code, reason)) = self.close_when_answered.take()
        {
            self.close(code, reason);
        }
    }

    /// The peer has shut its side (or the socket failed): read to the end
    /// instead of trusting a short read.
    pub fn peer_closed(&mut self) {
        let socket = match &mut self.state {
            State::Handshake { stream, .. } => stream,
            State::Open(ws) | State::Closing { ws, .. } => ws.get_mut(),
            State::Closed => return,
        };
        socket.peer_closed();
    }

    /// Queues a close frame at once, dropping answers not yet written (a
    /// shutdown past its grace, a client stuck over its limit); input is
    /// then discarded until the peer goes.
    pub fn close(&mut self, code: CloseCode, reason: &'static str) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        if let State::Open(mut ws) = state {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            // The frame is queued even when this reports WouldBlock.
            let _ = ws.close(Some(frame));
            self.needs_flush = true;
            self.state = State::Closing {
                ws,
                since: Instant::now(),
                write_shut: false,
            };
        }
        self.pending.clear();
        self.held = 0;
    }

    /// Takes a sequence number for the next request.
    pub fn next_request(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(None);
        seq
    }

    /// Delivers the response to request `seq` and writes every response
    /// that is now next in line.
    pub fn respond(&mut self, seq: u64, response: Vec<u8>) {
        let Some(index) = seq.checked_sub(self.pending_base) else {
            return;
        };
        let Some(slot) = self.pending.get_mut(index as usize) else {
            return;
        };
        self.held += response.len();
        *slot = Some(response);
        self.write_ready();
    }

    /// Hands every response that is next in line to the WebSocket, until
    /// the output limit; the rest wait here until the client reads.
    /// Returns whether anything was written.
    fn write_ready(&mut self) -> bool {
        let mut wrote = false;
        while let Some(Some(_)) = self.pending.front() {
            if self.unflushed >= self.limits.max_output_buffer {
                break;
            }
            let Some(Some(response)) = self.pending.pop_front() else {
                break;
            };
            self.pending_base += 1;
            self.held -= response.len();
            self.unflushed += response.len();
            self.write_message(response);
            wrote = true;
        }
        if self.unflushed >= self.limits.max_output_buffer {
            self.blocked_since.get_or_insert_with(Instant::now);
        }
        self.close_if_answered();
        wrote
    }

    fn write_message(&mut self, response: Vec<u8>) {
        let State::Open(ws) = &mut self.state else {
            return;
        };
        // Responses are built from valid UTF-8 pieces only; were one not,
        // the client still gets an answer in its place.
        let text = match String::from_utf8(response) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        match ws.write(Message::text(text)) {
            Ok(()) => {}
            // Buffered; the flush at the end of the turn sends it.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.state = State::Closed,
        }
        self.needs_flush = true;
    }

    pub fn needs_flush(&self) -> bool {
        self.needs_flush
    }

    /// Writes out everything buffered. Leaves `needs_flush` set when the
    /// socket is full; a writable event brings us back.
    pub fn flush(&mut self) {
        loop {
            self.flush_once();
            // Everything went out: responses held back by the limit may go.
            if self.needs_flush || self.unflushed > 0 || !self.write_ready() {
                return;
            }
        }
    }

    fn flush_once(&mut self) {
        let result = match &mut self.state {
            State::Open(ws) => ws.flush(),
            State::Closing { ws, write_shut, .. } => {
                let result = ws.flush();
                if !matches!(&result, Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock)
                    && !*write_shut
                {
                    // Close frame sent (or the peer is gone): half-close so
                    // the peer sees EOF after it.
                    let _ = ws.get_mut().shutdown(Shutdown::Write);
                    *write_shut = true;
                }
                match result {
                    Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => Ok(()),
                    other => other,
                }
            }
            State::Handshake { .. } | State::Closed => Ok(()),
        };
        match result {
            Ok(()) => {
                self.needs_flush = false;
                self.unflushed = 0;
                self.blocked_since = None;
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(WsError::ConnectionClosed) | Err(_) => {
                self.needs_flush = false;
                self.state = State::Closed;
            }
        }
    }
}
