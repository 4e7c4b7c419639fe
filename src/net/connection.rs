//! One client connection: an explicit state machine (handshake, open,
//! closing) over a non-blocking socket, plus the queue that keeps responses
//! in request order while some of them are still being computed on other
//! shards.
//!
//! It speaks WebSocket but knows nothing of commands: it hands out message
//! payloads and takes encoded responses. It runs over any [`Transport`] and
//! never reads the clock: the caller passes `now` to every method that
//! needs the time, and asks [`Connection::expired`] whether the connection
//! has waited on its peer too long.

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::protocol::frame::coding::CloseCode;

use super::handshake::{
    self, Authorization, Endpoint, MAX_REQUEST_BYTES, Outcome, SERVER_FULL, UNAUTHORIZED,
};
use super::socket::Socket;
use super::transport::{Traffic, Transport};
use super::websocket::{Discarded, Event, Flushed, WebSocket, write_from};
use crate::protocol::Role;
use crate::security::{Current, Identity, Users};

/// How long a closing connection may take to let us read its last bytes.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long a client has, from its accept, to finish the opening handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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

/// How long a connection may wait on its peer before
/// [`Connection::expired`] says it should be dropped.
#[derive(Copy, Clone, Debug)]
pub struct Timeouts {
    /// From the accept to the end of the opening handshake: a client that
    /// connects and says nothing must not hold a place forever.
    pub handshake: Duration,
    /// How long a client may leave our responses unread over the output
    /// limit (it sends nothing more meanwhile: we stopped reading it).
    pub output_stall: Duration,
}

impl Timeouts {
    /// The server's: [`HANDSHAKE_TIMEOUT`], and the stall timeout configured
    /// with the output limit.
    pub fn from_limits(limits: &Limits) -> Self {
        Timeouts {
            handshake: HANDSHAKE_TIMEOUT,
            output_stall: limits.output_stall_timeout,
        }
    }
}

/// Why [`Connection::expired`] says a connection should be dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Expired {
    /// The opening handshake took longer than [`Timeouts::handshake`].
    Handshake,
    /// The client left its responses unread for longer than
    /// [`Timeouts::output_stall`].
    OutputStall,
    /// The server has users and the client did not authenticate within
    /// [`Timeouts::handshake`] of its accept: it is closed with 1008.
    Unauthenticated,
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
    /// Its bytes are [`Connection::message`]: UTF-8 if it came in
    /// fragments, otherwise for the request parser to check.
    Text,
    Binary,
    /// A fragmented text message whose bytes were not UTF-8 (one-frame
    /// messages are checked by the request parser).
    InvalidUtf8,
}

/// Why the server refused or ended a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The opening handshake failed: not HTTP, a request that is not an
    /// upgrade, or the peer left before it was done.
    Handshake,
    /// A breach of the WebSocket protocol or of a limit.
    Protocol(&'static str),
    /// A WebSocket client that came in over the connection limit (on the
    /// room kept for probes).
    Limit,
    /// Credentials that name no user or carry a wrong password (Basic auth
    /// in the upgrade or a scrape, or `SV_AUTH`).
    Auth,
}

/// The result of trying to read one message.
#[derive(Debug)]
pub enum ReadOutcome {
    Message(Incoming),
    /// A request for an HTTP endpoint: answer it with
    /// [`Connection::respond`] (the ticket's sequence from
    /// [`Connection::next_request`]); the connection closes once it is sent.
    Http(Endpoint),
    /// Nothing more to read until the socket is readable again.
    WouldBlock,
    /// Input was taken but no message completed, and more may be waiting:
    /// read again, after other connections had their turn.
    Busy,
    /// The connection is finished; drop it.
    Closed,
}

/// Where the opening handshake stands after reading what there was.
enum Handshake {
    /// The 101 is sent: the connection speaks WebSocket now.
    Upgraded,
    /// The request head is not complete: wait for more bytes.
    NeedMore,
    /// A request for an HTTP endpoint, to be answered.
    Endpoint(Endpoint),
    /// Refused, not HTTP, or the peer went: the connection is over.
    Failed,
}

/// Answers a request that ends the connection (400, 401, 503) and closes
/// it. Best effort: a fresh socket's send buffer takes these few hundred
/// bytes without blocking.
fn refuse<T: Transport>(transport: &mut T, answer: &[u8]) {
    let _ = transport.write_all(answer);
    let _ = transport.flush();
    let _ = transport.shutdown(Shutdown::Both);
}

/// Who a connection is, and whom it may become.
struct Authentication {
    /// The users it may authenticate as, as they were when it was
    /// accepted; None: the server has none.
    users: Option<Arc<Users>>,
    /// Who it is: None until it authenticates (always someone on a server
    /// without users).
    identity: Option<Identity>,
    /// The name that failed credentials gave (for the log).
    failed_user: Option<Box<str>>,
}

impl Authentication {
    /// With users, and nobody yet.
    fn is_anonymous(&self) -> bool {
        self.users.is_some() && self.identity.is_none()
    }

    /// Checks Basic credentials from the request head. Ok, still nobody,
    /// when none came (the first message may be `SV_AUTH`); Err when they
    /// are wrong. Without users the header is ignored, as it always was.
    fn check(&mut self, authorization: Authorization) -> Result<(), ()> {
        let Some(users) = &self.users else {
            return Ok(());
        };
        let identity = match &authorization {
            Authorization::Absent => return Ok(()),
            Authorization::Basic(credentials) => users.verify(credentials),
            Authorization::Malformed => None,
        };
        match identity {
            Some(identity) => {
                self.identity = Some(identity);
                Ok(())
            }
            None => {
                self.failed_user = Some(match authorization {
                    Authorization::Basic(credentials) => credentials.user.into(),
                    _ => "(unreadable Authorization header)".into(),
                });
                Err(())
            }
        }
    }
}

enum State<T: Transport> {
    Handshake {
        transport: T,
        received: Vec<u8>,
    },
    Open(Box<WebSocket<T>>),
    /// Answering an HTTP endpoint: `out[sent..]` is still to go, and the
    /// connection ends once the answer is in it and sent.
    Http {
        transport: T,
        out: Vec<u8>,
        sent: usize,
        answered: bool,
    },
    /// Our close frame is queued or sent; input is read and discarded until
    /// the peer closes or the linger time runs out.
    Closing {
        ws: Box<WebSocket<T>>,
        since: Instant,
        write_shut: bool,
    },
    Closed,
}

/// One client connection over a transport `T` (a client's TCP socket
/// unless said).
pub struct Connection<T: Transport = Socket> {
    /// Unique within the shard for its lifetime: tells a reply for a closed
    /// connection from one for a new connection in the same slot.
    pub id: u64,
    /// When it was accepted: the handshake timeout runs from here.
    accepted_at: Instant,
    state: State<T>,
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
    /// Bytes of responses computed but still waiting in `pending`.
    held: usize,
    /// When the client stopped taking our responses (output over the limit).
    blocked_since: Option<Instant>,
    /// The connection must end (a protocol breach, a message too big):
    /// nothing more is read, and the close frame follows the answers due.
    close_when_answered: Option<(CloseCode, &'static str)>,
    /// The peer ended its stream: nothing more to read, and the connection
    /// ends once our answers and close frame are written.
    peer_eof: bool,
    /// Why the server ended it, when that was a refusal (for the metrics
    /// and the log).
    refused: Option<Refusal>,
    /// What the transport had read and written when the connection closed.
    final_traffic: Traffic,
    /// Taken over the connection limit: HTTP endpoints only.
    probes_only: bool,
    auth: Authentication,
    peer: Option<std::net::SocketAddr>,
    _permit: Permit,
}

impl Connection<Socket> {
    /// A client's TCP connection, accepted at `now`, speaking TLS and
    /// asking for users as `security` says.
    pub fn new(
        id: u64,
        stream: TcpStream,
        security: Current,
        limits: Limits,
        permit: Permit,
        now: Instant,
    ) -> io::Result<Self> {
        let socket = match security.tls {
            Some(config) => Socket::tls(stream, config)?,
            None => Socket::new(stream),
        };
        let mut conn = Connection::over(socket, id, limits, permit, now);
        conn.require_users(security.users);
        Ok(conn)
    }
}

impl<T: Transport> Connection<T> {
    /// A connection over any transport, accepted at `now`; it starts with
    /// the opening handshake.
    pub fn over(transport: T, id: u64, limits: Limits, permit: Permit, now: Instant) -> Self {
        Connection {
            id,
            accepted_at: now,
            state: State::Handshake {
                transport,
                received: Vec::new(),
            },
            limits,
            pending: VecDeque::new(),
            pending_base: 0,
            next_seq: 0,
            readable: true,
            needs_flush: false,
            held: 0,
            blocked_since: None,
            close_when_answered: None,
            peer_eof: false,
            refused: None,
            final_traffic: Traffic::default(),
            probes_only: false,
            auth: Authentication {
                users: None,
                identity: Some(Identity::anyone()),
                failed_user: None,
            },
            peer: None,
            _permit: permit,
        }
    }

    /// With users, the connection is nobody until it authenticates.
    pub fn require_users(&mut self, users: Option<Arc<Users>>) {
        if users.is_some() {
            self.auth.identity = None;
        }
        self.auth.users = users;
    }

    /// What it may do (None: it has not authenticated yet).
    pub fn role(&self) -> Option<Role> {
        self.auth.identity.as_ref().map(|identity| identity.role)
    }

    /// It authenticated (`SV_AUTH`): its requests run as `identity` now.
    pub fn authenticated(&mut self, identity: Identity) {
        self.auth.identity = Some(identity);
    }

    /// Its credentials were wrong (`SV_AUTH`): nothing more is read, and it
    /// closes with 1008 once its answers are written.
    pub fn refuse_credentials(&mut self, user: &str, now: Instant) {
        self.refused = Some(Refusal::Auth);
        self.auth.failed_user = Some(user.into());
        self.end_after_answers(CloseCode::Policy, "authentication failed", now);
    }

    /// The name that failed to authenticate, if one did.
    pub fn failed_user(&self) -> Option<&str> {
        self.auth.failed_user.as_deref()
    }

    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.peer
    }

    /// Where it came from (for the log of a failed authentication).
    pub fn set_peer(&mut self, peer: std::net::SocketAddr) {
        self.peer = Some(peer);
    }

    /// Whether to read more requests now: not while too many are
    /// unanswered, nor while the client is not reading its responses.
    pub fn wants_input(&self) -> bool {
        self.pending.len() < MAX_IN_FLIGHT
            && self.close_when_answered.is_none()
            && self.blocked_since.is_none()
            && self.unsent() + self.held < self.limits.max_output_buffer
    }

    /// Framed response bytes not yet taken by the socket.
    fn unsent(&self) -> usize {
        match &self.state {
            State::Open(ws) | State::Closing { ws, .. } => ws.unsent(),
            State::Http { out, sent, .. } => out.len() - sent,
            State::Handshake { .. } | State::Closed => 0,
        }
    }

    /// The text message the last [`Incoming::Text`] announced.
    pub fn message(&self) -> &[u8] {
        match &self.state {
            State::Open(ws) => ws.message(),
            _ => &[],
        }
    }

    /// Whether the connection has waited on its peer longer than
    /// `timeouts` allow at `now`, and so should be dropped.
    pub fn expired(&self, now: Instant, timeouts: &Timeouts) -> Option<Expired> {
        let over = |since: Instant, limit: Duration| now.saturating_duration_since(since) > limit;
        if self.is_handshaking() && over(self.accepted_at, timeouts.handshake) {
            return Some(Expired::Handshake);
        }
        // With users, a connection that has not said who it is by the end
        // of the handshake time holds a place it may not use.
        if self.auth.is_anonymous() && self.is_open() && over(self.accepted_at, timeouts.handshake)
        {
            return Some(Expired::Unauthenticated);
        }
        match self.blocked_since {
            Some(since) if over(since, timeouts.output_stall) => Some(Expired::OutputStall),
            _ => None,
        }
    }

    /// Still in its opening handshake, or answering an HTTP request: the
    /// handshake timeout applies.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshake { .. } | State::Http { .. })
    }

    /// Taken over the connection limit: it may ask an HTTP endpoint, and a
    /// WebSocket upgrade gets 503.
    pub fn serve_probes_only(&mut self) {
        self.probes_only = true;
    }

    /// Answering an HTTP endpoint (not a WebSocket in the making).
    pub fn is_http(&self) -> bool {
        matches!(self.state, State::Http { .. })
    }

    /// Why the server refused or ended the connection, if it did.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refused
    }

    /// Bytes read from and written to the peer so far.
    pub fn traffic(&self) -> Traffic {
        match &self.state {
            State::Handshake { transport, .. } | State::Http { transport, .. } => {
                transport.traffic()
            }
            State::Open(ws) | State::Closing { ws, .. } => ws.transport_ref().traffic(),
            State::Closed => self.final_traffic,
        }
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
    pub fn read(&mut self, now: Instant) -> ReadOutcome {
        loop {
            match &mut self.state {
                State::Handshake { .. } => match self.advance_handshake() {
                    Handshake::Upgraded => continue,
                    Handshake::NeedMore => return ReadOutcome::WouldBlock,
                    Handshake::Endpoint(endpoint) => return ReadOutcome::Http(endpoint),
                    Handshake::Failed => {
                        self.refused.get_or_insert(Refusal::Handshake);
                        self.set_closed();
                        return ReadOutcome::Closed;
                    }
                },
                // One request per connection: anything after it is ignored.
                State::Http { .. } => return ReadOutcome::WouldBlock,
                // Ending: read nothing more, the close follows the answers.
                State::Open(_) if self.close_when_answered.is_some() => {
                    return ReadOutcome::WouldBlock;
                }
                State::Open(ws) => {
                    let event = ws.read();
                    // A pong may be queued; a client that pings and reads
                    // nothing is a stalled client like any other.
                    let unsent = ws.unsent();
                    self.needs_flush |= unsent > 0;
                    if unsent >= self.limits.max_output_buffer {
                        self.blocked_since.get_or_insert(now);
                    }
                    return match event {
                        Event::Text => ReadOutcome::Message(Incoming::Text),
                        Event::Binary => ReadOutcome::Message(Incoming::Binary),
                        Event::InvalidUtf8 => {
                            // RFC 6455 §8.1 has the connection fail: it
                            // ends once this message's ERR 3 is answered.
                            self.close_when_answered =
                                Some((CloseCode::Invalid, "invalid UTF-8 in a text message"));
                            self.refused =
                                Some(Refusal::Protocol("invalid UTF-8 in a text message"));
                            ReadOutcome::Message(Incoming::InvalidUtf8)
                        }
                        Event::WouldBlock => ReadOutcome::WouldBlock,
                        Event::Busy => ReadOutcome::Busy,
                        // The peer is done: our close follows the answers
                        // to what it sent before.
                        Event::PeerClosed(code) => {
                            self.end_after_answers(code, "", now);
                            continue;
                        }
                        // A breach of RFC 6455 or of a limit ends the
                        // connection, with a close frame after the answers
                        // already due.
                        Event::Fail(code, reason) => {
                            self.refused = Some(Refusal::Protocol(reason));
                            self.end_after_answers(code, reason, now);
                            continue;
                        }
                        // Half-closed or gone: what it asked before is still
                        // answered (if it can still read), then we close.
                        Event::Eof => {
                            self.peer_eof = true;
                            self.end_after_answers(CloseCode::Normal, "", now);
                            continue;
                        }
                    };
                }
                // The flush that sends the last bytes ends it (flush_once),
                // unless the peer stops reading them.
                State::Closing { since, .. } if self.peer_eof => {
                    if now.saturating_duration_since(*since) > CLOSE_LINGER {
                        self.set_closed();
                        return ReadOutcome::Closed;
                    }
                    return ReadOutcome::WouldBlock;
                }
                State::Closing { ws, since, .. } => {
                    let lingered = now.saturating_duration_since(*since) > CLOSE_LINGER;
                    return match ws.discard_input() {
                        Ok(Discarded::PeerEnded) => {
                            self.peer_eof = true;
                            if ws.unsent() > 0 {
                                continue;
                            }
                            self.set_closed();
                            ReadOutcome::Closed
                        }
                        Ok(Discarded::MoreMayCome | Discarded::WouldBlock) if lingered => {
                            self.set_closed();
                            ReadOutcome::Closed
                        }
                        Ok(Discarded::MoreMayCome) => ReadOutcome::Busy,
                        Ok(Discarded::WouldBlock) => ReadOutcome::WouldBlock,
                        Err(_) => {
                            self.set_closed();
                            ReadOutcome::Closed
                        }
                    };
                }
                State::Closed => return ReadOutcome::Closed,
            }
        }
    }

    /// Reads request bytes, and answers the request once it is whole.
    fn advance_handshake(&mut self) -> Handshake {
        let State::Handshake {
            transport,
            received,
        } = &mut self.state
        else {
            return Handshake::Upgraded;
        };
        let mut chunk = [0u8; 2048];
        loop {
            let room = (MAX_REQUEST_BYTES + chunk.len() - received.len()).min(chunk.len());
            let n = match transport.read(&mut chunk[..room]) {
                Ok(0) => return Handshake::Failed,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // A TLS handshake may have answers the socket did not take.
                    self.needs_flush = true;
                    return Handshake::NeedMore;
                }
                Err(_) => return Handshake::Failed,
            };
            received.extend_from_slice(&chunk[..n]);
            match handshake::examine(received) {
                Outcome::Incomplete => continue,
                Outcome::Endpoint(endpoint, authorization) => {
                    // The figures are for users only, when there are users.
                    let allowed = match endpoint {
                        Endpoint::Metrics => self
                            .auth
                            .check(authorization)
                            .map(|()| !self.auth.is_anonymous()),
                        Endpoint::Health | Endpoint::Ready => Ok(true),
                    };
                    if allowed != Ok(true) {
                        if allowed.is_err() {
                            self.refused = Some(Refusal::Auth);
                        }
                        refuse(transport, UNAUTHORIZED);
                        return Handshake::Failed;
                    }
                    let State::Handshake { transport, .. } =
                        std::mem::replace(&mut self.state, State::Closed)
                    else {
                        unreachable!("matched above");
                    };
                    self.state = State::Http {
                        transport,
                        out: Vec::new(),
                        sent: 0,
                        answered: false,
                    };
                    return Handshake::Endpoint(endpoint);
                }
                Outcome::NotHttp => return Handshake::Failed,
                Outcome::Refuse { response } => {
                    refuse(transport, response);
                    return Handshake::Failed;
                }
                Outcome::Upgrade { .. } if self.probes_only => {
                    refuse(transport, SERVER_FULL);
                    self.refused = Some(Refusal::Limit);
                    return Handshake::Failed;
                }
                Outcome::Upgrade {
                    response,
                    head_len,
                    authorization,
                } => {
                    if self.auth.check(authorization).is_err() {
                        self.refused = Some(Refusal::Auth);
                        refuse(transport, UNAUTHORIZED);
                        return Handshake::Failed;
                    }
                    // 101 responses are ~130 bytes: a fresh socket never
                    // blocks on them; if it does, the peer is not reading.
                    // Over TLS the record may wait in rustls for a flush.
                    if transport.write_all(&response).is_err() {
                        return Handshake::Failed;
                    }
                    self.needs_flush = true;
                    let State::Handshake {
                        transport,
                        received,
                    } = std::mem::replace(&mut self.state, State::Closed)
                    else {
                        unreachable!("matched above");
                    };
                    let ws = WebSocket::new(
                        transport,
                        &received[head_len..],
                        self.limits.max_payload,
                        self.limits.max_output_buffer,
                    );
                    self.state = State::Open(Box::new(ws));
                    return Handshake::Upgraded;
                }
            }
        }
    }

    /// Ends the connection once every request read so far is answered.
    fn end_after_answers(&mut self, code: CloseCode, reason: &'static str, now: Instant) {
        self.close_when_answered = Some((code, reason));
        self.close_if_answered(now);
    }

    fn close_if_answered(&mut self, now: Instant) {
        if self.pending.is_empty()
            && let Some((code, reason)) = self.close_when_answered.take()
        {
            self.close(code, reason, now);
        }
    }

    /// The peer has shut its side (or the socket failed): read to the end
    /// instead of trusting a short read.
    pub fn peer_closed(&mut self) {
        if let Some(transport) = self.transport() {
            transport.peer_closed();
        }
    }

    /// New readiness was signalled for the socket: see [`Transport::readiness`].
    pub fn readiness(&mut self) {
        if let Some(transport) = self.transport() {
            transport.readiness();
        }
    }

    /// The client's stream, in any state but closed.
    fn transport(&mut self) -> Option<&mut T> {
        match &mut self.state {
            State::Handshake { transport, .. } | State::Http { transport, .. } => Some(transport),
            State::Open(ws) | State::Closing { ws, .. } => Some(ws.transport()),
            State::Closed => None,
        }
    }

    /// Queues a close frame at once, dropping answers not yet written (a
    /// shutdown past its grace, a client stuck over its limit); input is
    /// then discarded until the peer goes (or [`CLOSE_LINGER`] after `now`).
    pub fn close(&mut self, code: CloseCode, reason: &'static str, now: Instant) {
        self.final_traffic = self.traffic();
        let state = std::mem::replace(&mut self.state, State::Closed);
        if let State::Open(mut ws) = state {
            ws.queue_close(code, reason);
            self.needs_flush = true;
            self.state = State::Closing {
                ws,
                since: now,
                write_shut: false,
            };
        }
        self.pending.clear();
        self.held = 0;
    }

    /// Takes a sequence number for the next request.
    /// Writes a message no request asked for (an event) after the answers
    /// already owed, which keep their order.
    pub fn push(&mut self, message: Vec<u8>, now: Instant) {
        let seq = self.next_request();
        self.respond(seq, message, now);
    }

    /// Whether the client has read most of what it was sent: less than
    /// half the output limit waits.
    pub fn has_room(&self) -> bool {
        self.unsent() + self.held < self.limits.max_output_buffer / 2
    }

    pub fn next_request(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(None);
        seq
    }

    /// Delivers the response to request `seq` and writes every response
    /// that is now next in line.
    pub fn respond(&mut self, seq: u64, response: Vec<u8>, now: Instant) {
        if let Some(index) = self.write_if_next(seq, &response, now) {
            self.hold(index, response, now);
        }
    }

    /// [`Connection::respond`] for a borrowed response: it is copied only
    /// if it must wait for earlier ones.
    pub fn respond_slice(&mut self, seq: u64, response: &[u8], now: Instant) {
        if let Some(index) = self.write_if_next(seq, response, now) {
            self.hold(index, response.to_vec(), now);
        }
    }

    /// Writes the response at once when it is next in line and the output
    /// has room; otherwise says where in `pending` it must wait. None also
    /// when `seq` is not awaited (its connection closed meanwhile).
    fn write_if_next(&mut self, seq: u64, response: &[u8], now: Instant) -> Option<usize> {
        let index = usize::try_from(seq.checked_sub(self.pending_base)?).ok()?;
        if index >= self.pending.len() {
            return None;
        }
        if index == 0 && self.unsent() < self.limits.max_output_buffer {
            self.pending.pop_front();
            self.pending_base += 1;
            self.write_message(response);
            self.write_ready(now);
            return None;
        }
        Some(index)
    }

    fn hold(&mut self, index: usize, response: Vec<u8>, now: Instant) {
        self.held += response.len();
        self.pending[index] = Some(response);
        self.write_ready(now);
    }

    /// Hands every response that is next in line to the WebSocket, until
    /// the output limit; the rest wait here until the client reads.
    /// Returns whether anything was written.
    fn write_ready(&mut self, now: Instant) -> bool {
        let mut wrote = false;
        while let Some(Some(_)) = self.pending.front() {
            if self.unsent() >= self.limits.max_output_buffer {
                break;
            }
            let Some(Some(response)) = self.pending.pop_front() else {
                break;
            };
            self.pending_base += 1;
            self.held -= response.len();
            self.write_message(&response);
            wrote = true;
        }
        if self.unsent() >= self.limits.max_output_buffer {
            self.blocked_since.get_or_insert(now);
        }
        self.close_if_answered(now);
        wrote
    }

    fn write_message(&mut self, response: &[u8]) {
        match &mut self.state {
            State::Open(ws) => {
                ws.queue_text(response);
                self.needs_flush = true;
            }
            // An HTTP answer goes out as it is, and is the last.
            State::Http { out, answered, .. } if !*answered => {
                out.extend_from_slice(response);
                *answered = true;
                self.needs_flush = true;
            }
            _ => {}
        }
    }

    pub fn needs_flush(&self) -> bool {
        self.needs_flush
    }

    /// Writes out everything buffered. Leaves `needs_flush` set when the
    /// socket is full; a writable event brings us back.
    pub fn flush(&mut self, now: Instant) {
        loop {
            self.flush_once();
            // Everything went out: responses held back by the limit may go.
            if self.needs_flush || self.unsent() > 0 || !self.write_ready(now) {
                return;
            }
        }
    }

    fn flush_once(&mut self) {
        let result = match &mut self.state {
            State::Open(ws) => ws.flush(),
            State::Closing { ws, write_shut, .. } => {
                let result = ws.flush();
                if !matches!(result, Ok(Flushed::Partly)) && !*write_shut {
                    // Close frame sent (or the peer is gone): half-close so
                    // the peer sees EOF after it.
                    let _ = ws.transport().shutdown(Shutdown::Write);
                    *write_shut = true;
                }
                // A peer gone while we close is a close completed.
                let result = result.or(Ok(Flushed::All));
                if matches!(result, Ok(Flushed::All)) && self.peer_eof {
                    self.set_closed();
                    return;
                }
                result
            }
            State::Http {
                transport,
                out,
                sent,
                answered,
            } => {
                let result = write_from(transport, out, sent);
                if matches!(result, Ok(Flushed::All)) && *answered {
                    let _ = transport.shutdown(Shutdown::Write);
                    self.set_closed();
                    return;
                }
                result
            }
            // TLS handshake records the socket did not take at once.
            State::Handshake { transport, .. } => match transport.flush() {
                Ok(()) => Ok(Flushed::All),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Flushed::Partly),
                Err(e) => Err(e),
            },
            State::Closed => Ok(Flushed::All),
        };
        match result {
            Ok(Flushed::All) => {
                self.needs_flush = false;
                self.blocked_since = None;
            }
            Ok(Flushed::Partly) => {}
            Err(_) => {
                self.needs_flush = false;
                self.set_closed();
            }
        }
    }

    /// Ends the connection, keeping what it read and wrote for the metrics.
    fn set_closed(&mut self) {
        self.final_traffic = self.traffic();
        self.state = State::Closed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::memory::MemoryTransport;
    use crate::net::websocket::tests::masked;
    use proptest::prelude::*;

    const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    const SECOND: Duration = Duration::from_secs(1);
    const MILLI: Duration = Duration::from_millis(1);

    fn timeouts() -> Timeouts {
        Timeouts {
            handshake: 10 * SECOND,
            output_stall: 30 * SECOND,
        }
    }

    /// A connection over `transport`, accepted at `now`, with a 64-byte
    /// output limit.
    fn connection(transport: &MemoryTransport, now: Instant) -> Connection<MemoryTransport> {
        let limits = Limits {
            max_payload: 1 << 17,
            max_output_buffer: 64,
            output_stall_timeout: timeouts().output_stall,
        };
        let count = Arc::new(AtomicUsize::new(0));
        let permit = Permit::acquire(&count, 1).unwrap();
        Connection::over(transport.clone(), 7, limits, permit, now)
    }

    fn upgraded(now: Instant) -> (Connection<MemoryTransport>, MemoryTransport) {
        let transport = MemoryTransport::new(UPGRADE, &[]);
        let mut conn = connection(&transport, now);
        assert!(matches!(conn.read(now), ReadOutcome::WouldBlock));
        assert!(conn.is_open());
        (conn, transport)
    }

    #[test]
    fn a_handshake_not_finished_in_time_expires() {
        let base = Instant::now();
        let transport = MemoryTransport::new(&UPGRADE[..20], &[]);
        let mut conn = connection(&transport, base);
        assert!(matches!(conn.read(base + SECOND), ReadOutcome::WouldBlock));
        assert_eq!(conn.expired(base + 10 * SECOND, &timeouts()), None);
        assert_eq!(
            conn.expired(base + 10 * SECOND + MILLI, &timeouts()),
            Some(Expired::Handshake)
        );
        // Finished in time, it never expires for the handshake.
        transport.send(&UPGRADE[20..]);
        assert!(matches!(
            conn.read(base + 9 * SECOND),
            ReadOutcome::WouldBlock
        ));
        assert!(conn.is_open());
        assert_eq!(conn.expired(base + 3600 * SECOND, &timeouts()), None);
    }

    #[test]
    fn a_client_that_stops_reading_expires_after_the_output_stall_timeout() {
        let base = Instant::now();
        let (mut conn, transport) = upgraded(base);
        transport.send(&masked(0x1, true, b"{}"));
        transport.set_write_room(Some(0));
        let t1 = base + 5 * SECOND;
        assert!(matches!(
            conn.read(t1),
            ReadOutcome::Message(Incoming::Text)
        ));
        let seq = conn.next_request();
        conn.respond(seq, vec![b'x'; 100], t1);
        conn.flush(t1);
        assert!(!conn.wants_input(), "over the output limit");
        assert_eq!(conn.expired(t1 + 30 * SECOND, &timeouts()), None);
        assert_eq!(
            conn.expired(t1 + 30 * SECOND + MILLI, &timeouts()),
            Some(Expired::OutputStall)
        );
        // The client reads again before anyone asked: the stall is over.
        transport.set_write_room(None);
        conn.flush(t1 + 10 * SECOND);
        assert!(conn.wants_input());
        assert_eq!(conn.expired(t1 + 60 * SECOND, &timeouts()), None);
    }

    #[test]
    fn with_users_a_connection_that_never_authenticates_expires() {
        let base = Instant::now();
        let users = Arc::new(Users::parse(&mut b"[]".to_vec()).unwrap());
        let transport = MemoryTransport::new(UPGRADE, &[]);
        let mut conn = connection(&transport, base);
        conn.require_users(Some(users.clone()));
        assert!(matches!(conn.read(base), ReadOutcome::WouldBlock));
        assert!(conn.is_open() && conn.role().is_none());
        let late = base + 10 * SECOND + MILLI;
        assert_eq!(conn.expired(base + 10 * SECOND, &timeouts()), None);
        assert_eq!(
            conn.expired(late, &timeouts()),
            Some(Expired::Unauthenticated)
        );
        // Once it is someone, the clock stops mattering.
        conn.authenticated(Identity::anyone());
        assert_eq!(conn.expired(late, &timeouts()), None);
        // Without users nobody has to authenticate.
        let (conn, _) = upgraded(base);
        assert_eq!(conn.expired(late, &timeouts()), None);
    }

    #[test]
    fn a_closing_connection_lingers_for_the_peer_then_ends() {
        let base = Instant::now();
        let (mut conn, transport) = upgraded(base);
        let t1 = base + SECOND;
        conn.close(CloseCode::Away, "bye", t1);
        conn.flush(t1);
        assert!(transport.output().ends_with(b"\x88\x05\x03\xe9bye"));
        assert!(transport.write_shut(), "half-closed after the close frame");
        // The peer sends nothing and does not close: we wait, then end.
        assert!(matches!(
            conn.read(t1 + CLOSE_LINGER),
            ReadOutcome::WouldBlock
        ));
        assert!(!conn.is_closed());
        assert!(matches!(
            conn.read(t1 + CLOSE_LINGER + MILLI),
            ReadOutcome::Closed
        ));
        assert!(conn.is_closed());
    }

    #[test]
    fn a_peer_that_ends_its_stream_while_we_close_ends_it_at_once() {
        let base = Instant::now();
        let (mut conn, transport) = upgraded(base);
        conn.close(CloseCode::Normal, "", base);
        conn.flush(base);
        transport.end_input();
        assert!(matches!(conn.read(base), ReadOutcome::Closed));
    }

    #[test]
    fn over_the_limit_a_probe_is_answered_and_an_upgrade_refused() {
        let now = Instant::now();
        let transport = MemoryTransport::new(UPGRADE, &[]);
        let mut conn = connection(&transport, now);
        conn.serve_probes_only();
        assert!(matches!(conn.read(now), ReadOutcome::Closed));
        assert_eq!(conn.refusal(), Some(Refusal::Limit));
        assert_eq!(transport.output(), SERVER_FULL);

        let transport = MemoryTransport::new(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", &[]);
        let mut conn = connection(&transport, now);
        conn.serve_probes_only();
        assert!(matches!(
            conn.read(now),
            ReadOutcome::Http(Endpoint::Health)
        ));
        assert_eq!(conn.refusal(), None);
    }

    #[test]
    fn an_http_endpoint_is_answered_in_full_however_slowly_then_closed() {
        let now = Instant::now();
        let transport = MemoryTransport::new(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", &[]);
        let mut conn = connection(&transport, now);
        assert!(matches!(
            conn.read(now),
            ReadOutcome::Http(Endpoint::Metrics)
        ));
        assert!(conn.is_handshaking(), "the handshake timeout still applies");
        assert!(matches!(conn.read(now), ReadOutcome::WouldBlock));
        let seq = conn.next_request();
        let answer: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        transport.set_write_room(Some(1000));
        conn.respond(seq, answer.clone(), now);
        conn.flush(now);
        assert!(!conn.is_closed(), "not all of it went out");
        transport.set_write_room(None);
        conn.flush(now);
        assert!(conn.is_closed());
        assert!(transport.write_shut());
        assert_eq!(
            transport.output(),
            answer,
            "raw bytes, no WebSocket framing"
        );
    }

    /// What a connection fed `bytes` in `chunks` hands out (each message
    /// answered with its own bytes reversed), and everything it writes.
    fn serve(bytes: &[u8], chunks: &[usize]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let now = Instant::now();
        let transport = MemoryTransport::new(bytes, chunks);
        let mut conn = connection(&transport, now);
        let mut messages = Vec::new();
        loop {
            match conn.read(now) {
                ReadOutcome::Message(_) => {
                    let message = conn.message().to_vec();
                    let seq = conn.next_request();
                    conn.respond(seq, message.iter().rev().copied().collect(), now);
                    messages.push(message);
                }
                ReadOutcome::Busy => {}
                ReadOutcome::Http(_) => break,
                ReadOutcome::WouldBlock if transport.input_read() => break,
                ReadOutcome::WouldBlock => {}
                ReadOutcome::Closed => break,
            }
            conn.flush(now);
        }
        conn.flush(now);
        (messages, transport.output())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The upgrade request split anywhere, or read in any chunks, gets
        /// the same 101, and the frames after it the same answers.
        #[test]
        fn the_handshake_split_anywhere_changes_nothing(
            cut in 0..UPGRADE.len() + 8,
            chunks in prop::collection::vec(1usize..200, 1..6),
        ) {
            let mut bytes = UPGRADE.to_vec();
            bytes.extend(masked(0x1, true, b"{\"a\":1}"));
            bytes.extend(masked(0x9, true, b"hi"));
            bytes.extend(masked(0x1, true, b""));
            let whole = serve(&bytes, &[]);
            prop_assert!(whole.1.starts_with(b"HTTP/1.1 101 "));
            prop_assert_eq!(whole.0.len(), 2);
            let split = serve(&bytes, &[cut.max(1), bytes.len()]);
            prop_assert_eq!(&split, &whole);
            let chunked = serve(&bytes, &chunks);
            prop_assert_eq!(&chunked, &whole);
        }
    }
}
