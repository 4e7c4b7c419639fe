//! A shard's connections: the table they live in, which of them have input
//! to read or output to flush this turn, and their timeouts. It knows
//! nothing of commands: the router answers through [`Replies`], and the
//! event loop reads messages off the connections it is handed.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token as PollToken};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::mesh::Ticket;
use crate::metrics::{RequestFigures, RequestMetrics};
use crate::net::connection::{Connection, Expired, Limits, Permit, Refusal, Timeouts};
use crate::router::Replies;
use crate::security::Current;

pub struct Connections {
    slab: Slab<Connection>,
    /// The id the next connection gets: unique for the shard's lifetime,
    /// so an answer for a closed connection never reaches its slot's reuse.
    next_id: u64,
    /// Connections that may have input left to read.
    ready: Vec<usize>,
    /// Connections touched this turn: to flush, or to drop when closed.
    touched: Vec<usize>,
    limits: Limits,
    timeouts: Timeouts,
    /// The time of the current turn (connections never read the clock).
    now: Instant,
    /// Answers by command and status, their times, connections and bytes.
    pub metrics: RequestMetrics,
}

impl Replies for Connections {
    fn answer(&mut self, ticket: Ticket, response: &[u8]) {
        self.metrics
            .answered(ticket.command, ticket.started, response);
        let now = self.now;
        if let Some(conn) = self.live(ticket) {
            conn.respond_slice(ticket.seq, response, now);
            self.touch(ticket.conn);
        }
    }

    fn answer_owned(&mut self, ticket: Ticket, response: Vec<u8>) {
        self.metrics
            .answered(ticket.command, ticket.started, &response);
        let now = self.now;
        if let Some(conn) = self.live(ticket) {
            conn.respond(ticket.seq, response, now);
            self.touch(ticket.conn);
        }
    }

    fn push(&mut self, ticket: Ticket, message: Vec<u8>) -> bool {
        let now = self.now;
        match self.live(ticket) {
            Some(conn) if conn.is_open() => {
                conn.push(message, now);
                self.touch(ticket.conn);
                true
            }
            _ => false,
        }
    }

    fn has_room(&self, ticket: Ticket) -> Option<bool> {
        self.slab
            .get(ticket.conn)
            .filter(|conn| conn.id == ticket.conn_id && conn.is_open())
            .map(Connection::has_room)
    }

    fn answer_http(&mut self, ticket: Ticket, response: Vec<u8>) {
        let now = self.now;
        if let Some(conn) = self.live(ticket) {
            conn.respond(ticket.seq, response, now);
            self.touch(ticket.conn);
        }
    }

    fn connections(&self) -> u64 {
        self.slab.len() as u64
    }

    fn request_figures(&self) -> RequestFigures {
        let mut figures = self.metrics.figures().clone();
        for (_, conn) in self.slab.iter() {
            let traffic = conn.traffic();
            figures.bytes_received += traffic.received;
            figures.bytes_sent += traffic.sent;
        }
        figures
    }
}

impl Connections {
    pub fn new(limits: Limits, now: Instant, metrics: RequestMetrics) -> Self {
        Connections {
            metrics,
            slab: Slab::new(),
            next_id: 0,
            ready: Vec::new(),
            touched: Vec::new(),
            timeouts: Timeouts::from_limits(&limits),
            limits,
            now,
        }
    }

    /// Sets the time of the turn that begins.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The connection a ticket was issued for, if it is still there.
    fn live(&mut self, ticket: Ticket) -> Option<&mut Connection> {
        self.slab
            .get_mut(ticket.conn)
            .filter(|conn| conn.id == ticket.conn_id)
    }

    /// Drops a connection, counting what it leaves behind: its bytes, and
    /// why we refused it if we did.
    fn retire(&mut self, slot: usize, why: &'static str) {
        let Some(conn) = self.slab.try_remove(slot) else {
            return;
        };
        let traffic = conn.traffic();
        self.metrics.add_bytes(traffic.received, traffic.sent);
        let reason = match conn.refusal() {
            Some(Refusal::Handshake) => {
                self.metrics.rejected_in_handshake();
                "handshake failed"
            }
            Some(Refusal::Limit) => {
                self.metrics.rejected_at_limit();
                "connection limit reached"
            }
            Some(Refusal::Protocol(reason)) => {
                self.metrics.closed_for_protocol();
                reason
            }
            Some(Refusal::Auth) => {
                let user = conn.failed_user().unwrap_or_default();
                self.metrics.auth_failed(conn.peer(), user);
                "authentication failed"
            }
            None => why,
        };
        tracing::debug!(
            connection = conn.id,
            reason,
            received = traffic.received,
            sent = traffic.sent,
            "connection closed: {reason}"
        );
    }

    /// Registers an accepted stream and queues it for its first read.
    pub fn add(
        &mut self,
        registry: &Registry,
        mut stream: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        probes_only: bool,
        security: Current,
    ) -> io::Result<()> {
        let entry = self.slab.vacant_entry();
        let slot = entry.key();
        registry.register(
            &mut stream,
            PollToken(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let id = self.next_id;
        self.next_id += 1;
        let mut conn = Connection::new(id, stream, security, self.limits, permit, self.now)?;
        conn.set_peer(peer);
        if probes_only {
            conn.serve_probes_only();
        }
        entry.insert(conn);
        self.ready.push(slot);
        Ok(())
    }

    /// Notes what a poll event says of connection `slot`.
    pub fn on_event(&mut self, slot: usize, readable: bool, writable: bool, peer_gone: bool) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        if peer_gone {
            conn.peer_closed();
        }
        if readable {
            conn.readiness();
        }
        if readable || peer_gone {
            conn.readable = true;
            self.ready.push(slot);
        }
        if writable {
            self.touched.push(slot);
        }
    }

    /// The connections to read this turn (the list is handed over).
    pub fn take_ready(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.ready)
    }

    /// Connections to read again next turn (their budget ran out).
    pub fn ready_again(&mut self, slots: impl IntoIterator<Item = usize>) {
        self.ready.extend(slots);
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Connection> {
        self.slab.get_mut(slot)
    }

    /// Marks a connection to flush (or drop) at the end of the turn.
    pub fn touch(&mut self, slot: usize) {
        // A connection's answers mostly come one after another (its
        // pipelined requests run in turn): skip the repeats here, so the
        // turn's sort has one entry per connection, not one per answer.
        if self.touched.last() != Some(&slot) {
            self.touched.push(slot);
        }
    }

    /// One write per touched connection; drops the ones that closed.
    pub fn finish_turn(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for &slot in &touched {
            let Some(conn) = self.slab.get_mut(slot) else {
                continue;
            };
            if conn.needs_flush() {
                conn.flush(self.now);
            }
            if conn.is_closed() {
                self.retire(slot, "closed");
            } else if conn.readable && conn.wants_input() {
                // Reading paused on in-flight answers resumes here.
                self.ready.push(slot);
            }
        }
        self.ready.sort_unstable();
        self.ready.dedup();
        touched.clear();
        self.touched = touched;
    }

    /// Drops connections past a timeout (a handshake too slow, a client
    /// not reading its answers), and lets closing ones notice their linger
    /// time is over.
    pub fn expire(&mut self) {
        let now = self.now;
        let mut expired = Vec::new();
        for (slot, conn) in self.slab.iter_mut() {
            if let Some(why) = conn.expired(now, &self.timeouts) {
                expired.push((slot, why, conn.is_http()));
            } else if !conn.is_open() {
                // Closing: a read notices when the linger time is over.
                conn.readable = true;
                self.ready.push(slot);
            }
        }
        for (slot, expired, http) in expired {
            if expired == Expired::Unauthenticated {
                if let Some(conn) = self.slab.get_mut(slot) {
                    conn.close(CloseCode::Policy, "authentication timed out", now);
                    self.touched.push(slot);
                }
                continue;
            }
            let why = match expired {
                // An HTTP answer not taken in time was no refusal of ours.
                Expired::Handshake if http => "HTTP answer not taken in time",
                Expired::Handshake => {
                    self.metrics.rejected_in_handshake();
                    "handshake timed out"
                }
                Expired::OutputStall => "not reading its answers (output stall timeout)",
                Expired::Unauthenticated => "not authenticated in time",
            };
            self.retire(slot, why);
        }
    }

    /// Queues one last read of every connection (shutdown: answer what
    /// was already sent).
    pub fn read_all_once(&mut self) {
        for (slot, conn) in self.slab.iter_mut() {
            conn.readable = true;
            self.ready.push(slot);
        }
    }

    /// Shutdown: closes every open connection that has nothing in flight
    /// (all of them once `overdue`), and keeps reading closing ones so they
    /// see the peer's end. Returns whether none is left.
    pub fn close_for_shutdown(&mut self, overdue: bool) -> bool {
        for (slot, conn) in self.slab.iter_mut() {
            if conn.is_open() && (conn.in_flight() == 0 || overdue) {
                conn.close(CloseCode::Away, "server shutting down", self.now);
                self.touched.push(slot);
            }
            self.ready.push(slot);
        }
        if overdue {
            let slots: Vec<usize> = self.slab.iter().map(|(slot, _)| slot).collect();
            for slot in slots {
                self.retire(slot, "server shutting down");
            }
        }
        self.finish_turn();
        self.slab.is_empty()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;
    use crate::net::connection::HANDSHAKE_TIMEOUT;

    pub(in crate::shard) fn metrics() -> RequestMetrics {
        RequestMetrics::new(crate::metrics::Clock::new(), None, 0)
    }

    /// Limits for tests of the table and the shard around it.
    pub(in crate::shard) fn limits() -> Limits {
        Limits {
            max_payload: 1 << 20,
            max_output_buffer: 1 << 20,
            output_stall_timeout: Duration::from_secs(30),
        }
    }

    /// A table with one accepted (still handshaking) loopback connection.
    fn table_with_one(now: Instant) -> (Connections, mio::Poll, std::net::TcpStream) {
        let poll = mio::Poll::new().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let permit = Permit::acquire(&Arc::new(AtomicUsize::new(0)), 10).unwrap();
        let mut conns = Connections::new(limits(), now, metrics());
        conns
            .add(
                poll.registry(),
                TcpStream::from_std(server),
                peer,
                permit,
                false,
                Current::default(),
            )
            .unwrap();
        (conns, poll, client)
    }

    #[test]
    fn a_handshake_past_its_timeout_is_dropped_on_the_turns_clock() {
        let start = Instant::now();
        let (mut conns, _poll, _client) = table_with_one(start);
        assert!(conns.has_ready(), "a new connection is read at once");
        conns.set_now(start + HANDSHAKE_TIMEOUT);
        conns.expire();
        assert_eq!(conns.connections(), 1, "not before the timeout has passed");
        conns.set_now(start + HANDSHAKE_TIMEOUT + Duration::from_millis(1));
        conns.expire();
        assert!(conns.is_empty());
    }

    #[test]
    fn an_answer_for_a_connection_that_is_gone_is_dropped() {
        let start = Instant::now();
        let (mut conns, _poll, _client) = table_with_one(start);
        // The slot is taken by connection id 0; id 7 was an older one.
        let stale = Ticket {
            conn: 0,
            conn_id: 7,
            seq: 0,
            ..Ticket::default()
        };
        conns.answer(stale, b"{}");
        conns.answer_owned(stale, b"{}".to_vec());
        let gone = Ticket {
            conn: 5,
            conn_id: 0,
            seq: 0,
            ..Ticket::default()
        };
        conns.answer(gone, b"{}");
        conns.finish_turn();
        assert_eq!(conns.connections(), 1);
    }
}
