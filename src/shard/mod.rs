//! A shard: one thread, one `mio` event loop, and everything it owns: the
//! connections it accepted, its share of the sessions, its inbox.
//!
//! Nothing here is shared with other shards except through the mesh
//! (messages) and the shared-name map. A request about a session another
//! shard owns is sent there and its encoded answer comes back; commands
//! about every shard fan out as [`Part`]s and are gathered here.

mod exec;
mod gather;
mod local;
mod persistence;

pub use local::LocalDispatcher;

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token as PollToken, Waker};
use rand::Rng as _;
use rand::rngs::StdRng;
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::mesh::{Address, Envelope, Inbox, Part, PartResult, ShardId, Ticket, shard_of};
use crate::net::connection::{Connection, Incoming, Limits, Permit, ReadOutcome, Timeouts};
use crate::persist::{SessionRecord, ShardFileWriter};
use crate::protocol::request::{reject_binary, reject_not_utf8};
use crate::protocol::{
    Command, NewSession, RequestParser, Status, encode_rejection, encode_status,
};
use crate::shared_names::SharedNames;
use crate::store::{Millis, SessionStore};
use gather::{Gather, GatherKind};

const SERVER_FULL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

const LISTENER: PollToken = PollToken(usize::MAX - 1);
const WAKER: PollToken = PollToken(usize::MAX - 2);

/// Messages read from one connection per turn before others get a go.
const READ_BUDGET: usize = 256;
/// Longest a shutdown waits for clients to take their last responses.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);
/// Sessions background expiry may settle per turn: a few milliseconds of
/// work at most, so requests never wait long behind a mass expiry, while a
/// million sessions due together are still gone well within a second.
const EXPIRY_BUDGET: usize = 4096;

/// What a shard needs from the server, fixed at start-up.
pub struct ShardContext {
    pub id: ShardId,
    pub shards: usize,
    pub limits: Limits,
    /// Open connections over all shards, and how many are allowed.
    pub connections: Arc<AtomicUsize>,
    pub max_connections: usize,
    /// Server-wide memory limit in bytes (0 = none); each shard enforces
    /// its equal share, so the data path needs no shared counter.
    pub max_memory: u64,
    /// Where snapshots live; None: persistence is off (`SH_SAVE` -> 14).
    pub persist: Option<PathBuf>,
    /// Process start: the epoch of the shard clocks and of `uptimeSeconds`.
    pub started: Instant,
    pub names: Arc<SharedNames>,
    pub mesh: Arc<[Address]>,
    /// Set by the server to ask every shard to stop.
    pub stop: Arc<AtomicBool>,
    /// Shards still finishing their connections; every shard serves its
    /// inbox until this is 0, so no shard waits on one that has left.
    pub draining: Arc<AtomicUsize>,
}

/// Creates the poll and the waker that the mesh uses to reach a shard.
pub fn new_poll() -> io::Result<(Poll, Arc<Waker>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    Ok((poll, waker))
}

/// Where a part's result goes: a gather on this shard, or another shard's.
#[derive(Copy, Clone, Debug)]
enum PartReply {
    Local { gather: usize },
    Remote { from: ShardId, gather: usize },
}

#[derive(PartialEq, Eq)]
enum Phase {
    Serving,
    /// Answering what was read, then closing connections.
    Stopping {
        since: Instant,
    },
    /// Connections are gone; still answering other shards' requests.
    Drained,
}

pub struct Shard {
    ctx: ShardContext,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Inbox,
    conns: Slab<Connection>,
    next_conn_id: u64,
    store: SessionStore,
    /// Messages for each shard, sent as one batch at the end of the turn.
    outbox: Vec<Vec<Envelope>>,
    gathers: Slab<Gather>,
    /// Token source: a CSPRNG seeded by the OS.
    rng: StdRng,
    /// Decodes requests, reusing its buffers from one to the next.
    parser: RequestParser,
    /// Where responses computed here are built (see `answer_here`).
    reply: Vec<u8>,
    /// Connections that may have input left to read.
    ready: Vec<usize>,
    /// Connections touched this turn: to flush, or to drop when closed.
    touched: Vec<usize>,
    now: Millis,
    /// `SessionNotExist` answers given: a rising count can mean someone is
    /// guessing tokens.
    session_not_exist: u64,
    /// Background expiry ran out of budget: more is due right now.
    expiry_pending: bool,
    /// Count requests waiting for background expiry to catch up, so they
    /// neither count expired sessions nor stall the shard to settle them.
    deferred_counts: Vec<PartReply>,
    /// This shard's file of a save in progress.
    save: Option<ShardFileWriter>,
    /// Saves asked of this shard while another ran: they start in turn.
    save_queue: VecDeque<(PartReply, PathBuf, Option<Vec<crate::protocol::Token>>)>,
    /// Saved sessions waiting to be added, a batch per turn.
    loading: VecDeque<persistence::LoadJob>,
    /// Save versions being committed by helper threads.
    commits_in_flight: usize,
    last_housekeeping: Instant,
    phase: Phase,
    /// An accept failed (out of file descriptors?): retry without an edge.
    accept_again: bool,
}

impl Shard {
    /// A shard, with `restore`: sessions loaded at start-up that it owns;
    /// also returns how many sessions and keys of those it added.
    pub fn new(
        ctx: ShardContext,
        poll: Poll,
        mut listener: TcpListener,
        inbox: Inbox,
        restore: Vec<SessionRecord>,
    ) -> io::Result<(Self, u64, u64)> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let shards = ctx.shards;
        let mut store = SessionStore::new(ctx.names.clone());
        if ctx.max_memory > 0 {
            store.set_memory_limit((ctx.max_memory / shards as u64).max(1));
        }
        let mut shard = Shard {
            store,
            ctx,
            poll,
            listener: Some(listener),
            inbox,
            conns: Slab::new(),
            next_conn_id: 0,
            outbox: (0..shards).map(|_| Vec::new()).collect(),
            gathers: Slab::new(),
            rng: rand::make_rng(),
            parser: RequestParser::default(),
            reply: Vec::with_capacity(4096),
            ready: Vec::new(),
            touched: Vec::new(),
            now: 0,
            session_not_exist: 0,
            expiry_pending: false,
            deferred_counts: Vec::new(),
            save: None,
            save_queue: VecDeque::new(),
            loading: VecDeque::new(),
            commits_in_flight: 0,
            last_housekeeping: Instant::now(),
            phase: Phase::Serving,
            accept_again: false,
        };
        shard.now = shard.clock();
        let (sessions, keys) = shard.restore_now(restore);
        Ok((shard, sessions, keys))
    }

    /// Runs the event loop until the server stops; hands back the sessions
    /// (for a save on shutdown).
    pub fn run(mut self) -> io::Result<SessionStore> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.ctx.stop.load(Ordering::Acquire) && self.phase == Phase::Serving {
                self.begin_stopping()?;
            }
            // A save under way (or being committed) finishes first.
            if self.phase == Phase::Drained
                && self.ctx.draining.load(Ordering::Acquire) == 0
                && !self.persistence_busy()
                && self.commits_in_flight == 0
            {
                if let Some(writer) = self.save.take() {
                    writer.abort();
                }
                return Ok(self.store);
            }
            let mut timeout = self.poll_timeout();
            if timeout != Some(Duration::ZERO)
                && let Some(batch) = self.inbox.prepare_to_sleep()
            {
                self.handle_batch(batch);
                timeout = Some(Duration::ZERO);
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.inbox.awake();
            self.now = self.clock();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    PollToken(slot) => {
                        if let Some(conn) = self.conns.get_mut(slot) {
                            if event.is_read_closed() || event.is_error() {
                                conn.peer_closed();
                            }
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                conn.readable = true;
                                self.ready.push(slot);
                            }
                            if event.is_writable() {
                                self.touched.push(slot);
                            }
                        }
                    }
                }
            }
            // Bounded: at most what other shards sent before this point.
            for _ in 0..self.ctx.shards * 4 {
                match self.inbox.try_take() {
                    Some(batch) => self.handle_batch(batch),
                    None => break,
                }
            }
            self.read_connections();
            self.expiry_pending = self.store.expire_due(self.now, EXPIRY_BUDGET);
            self.persistence_step();
            if !self.expiry_pending {
                for reply in std::mem::take(&mut self.deferred_counts) {
                    self.answer_part(reply, Part::Counts);
                }
            }
            self.send_outbox();
            self.finish_turn();
            self.housekeeping();
        }
    }

    fn clock(&self) -> Millis {
        self.ctx.started.elapsed().as_millis() as Millis
    }

    /// The turn's clock as an `Instant`, for connections (they never read
    /// the clock themselves).
    fn instant(&self) -> Instant {
        self.ctx.started + Duration::from_millis(self.now)
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() || self.expiry_pending || self.persistence_busy() {
            return Some(Duration::ZERO);
        }
        let housekeeping = match self.phase {
            Phase::Serving if self.conns.is_empty() && !self.accept_again => None,
            Phase::Serving => Some(HOUSEKEEPING_EVERY),
            Phase::Stopping { .. } | Phase::Drained => Some(Duration::from_millis(10)),
        };
        // Sleep no longer than the next session deadline.
        let expiry = self
            .store
            .next_expiry()
            .map(|due| Duration::from_millis(due.saturating_sub(self.clock())));
        match (housekeeping, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn accept(&mut self) {
        self.accept_again = false;
        let now = self.instant();
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            let (mut stream, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EMFILE and friends: connections wait in the backlog, and
                // no new edge may come for them; housekeeping tries again.
                Err(_) => {
                    self.accept_again = true;
                    return;
                }
            };
            let Some(permit) = Permit::acquire(&self.ctx.connections, self.ctx.max_connections)
            else {
                // Full: say so to an HTTP client, then close.
                let _ = std::io::Write::write_all(&mut stream, SERVER_FULL);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let slot = entry.key();
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    PollToken(slot),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            let id = self.next_conn_id;
            self.next_conn_id += 1;
            entry.insert(Connection::new(id, stream, self.ctx.limits, permit, now));
            self.ready.push(slot);
        }
    }

    fn read_connections(&mut self) {
        let now = self.instant();
        let ready = std::mem::take(&mut self.ready);
        let mut still_ready = Vec::new();
        for slot in ready {
            let Some(conn) = self.conns.get(slot) else {
                continue;
            };
            if !conn.readable {
                continue;
            }
            // While stopping, open connections take no new requests.
            if self.phase != Phase::Serving && conn.is_open() {
                continue;
            }
            self.touched.push(slot);
            let mut budget = READ_BUDGET;
            loop {
                let conn = &mut self.conns[slot];
                if budget == 0 {
                    // Others get a go; come back next turn.
                    still_ready.push(slot);
                    break;
                }
                if !conn.wants_input() {
                    // Resumed by finish_turn once answers drain.
                    break;
                }
                match conn.read(now) {
                    ReadOutcome::Message(incoming) => {
                        budget -= 1;
                        self.handle_message(slot, incoming);
                    }
                    // Frames taken, no message yet: charged like one.
                    ReadOutcome::Busy => budget -= 1,
                    ReadOutcome::WouldBlock => {
                        conn.readable = false;
                        break;
                    }
                    ReadOutcome::Closed => break,
                }
            }
        }
        // Duplicates are harmless: a slot with nothing left reads WouldBlock.
        still_ready.dedup();
        self.ready.extend(still_ready);
    }

    fn handle_message(&mut self, slot: usize, incoming: Incoming) {
        let conn = &mut self.conns[slot];
        let ticket = Ticket {
            conn: slot,
            conn_id: conn.id,
            seq: conn.next_request(),
        };
        let parsed = match incoming {
            Incoming::Text => self.parser.parse(self.conns[slot].message()),
            Incoming::Binary => Err(reject_binary()),
            Incoming::InvalidUtf8 => Err(reject_not_utf8()),
        };
        match parsed {
            Ok(command) => self.dispatch(ticket, command),
            Err(rejection) => {
                self.answer_here(ticket, |_, out| encode_rejection(out, &rejection));
            }
        }
    }

    /// Runs a command here, or sends it (or its parts) where it must run.
    fn dispatch(&mut self, ticket: Ticket, command: Command) {
        match command {
            Command::New(new) => {
                let holder = new
                    .name
                    .as_deref()
                    .filter(|_| new.shared)
                    .and_then(|name| self.ctx.names.lookup(name))
                    .map(|tkn| (tkn, shard_of(tkn, self.ctx.shards)))
                    .filter(|&(_, owner)| owner != self.ctx.id);
                match holder {
                    // The name may be free once its holder's expiry is
                    // applied there: ask, then claim.
                    Some((tkn, owner)) => self.fan_out_to(
                        ticket,
                        GatherKind::NewShared(new),
                        std::iter::once((owner, Part::Settle(tkn))),
                    ),
                    None => self.answer_here(ticket, |shard, out| shard.create_session(new, out)),
                }
            }
            Command::Open { ref name } => match self.ctx.names.lookup(name) {
                Some(tkn) => self.route(shard_of(tkn, self.ctx.shards), ticket, command),
                None => {
                    let mut out = Vec::with_capacity(64);
                    encode_status(&mut out, "SH_OPEN", Status::SessionOpenFail, None, None);
                    self.deliver(ticket, out);
                }
            },
            Command::EndAll => self.fan_out(ticket, GatherKind::end_all(), |_| Part::EndAll),
            Command::InfoAll => self.fan_out(ticket, GatherKind::info_all(), |_| Part::Counts),
            Command::ServerInfo => {
                self.fan_out(ticket, GatherKind::server_info(), |_| Part::Counts)
            }
            Command::Exists { tkns } => {
                let shards = self.ctx.shards;
                let mut per_shard: Vec<Vec<(u32, u64)>> = vec![Vec::new(); shards];
                for (i, &tkn) in tkns.iter().enumerate() {
                    per_shard[shard_of(tkn, shards)].push((i as u32, tkn));
                }
                let kind = GatherKind::exists(tkns);
                self.fan_out_to(
                    ticket,
                    kind,
                    per_shard
                        .into_iter()
                        .enumerate()
                        .filter_map(|(shard, list)| {
                            (!list.is_empty()).then_some((shard, Part::Exists(list)))
                        }),
                );
            }
            Command::Save { name, tkns } => match self.ctx.persist.clone() {
                Some(root) => self.start_save(ticket, &root, name, tkns),
                None => self.persistence_disabled(ticket, "SH_SAVE"),
            },
            Command::Load { name } => match self.ctx.persist.clone() {
                Some(root) => self.start_load(ticket, &root, name),
                None => self.persistence_disabled(ticket, "SH_LOAD"),
            },
            _ => match command.token() {
                Some(tkn) => self.route(shard_of(tkn, self.ctx.shards), ticket, command),
                None => {
                    let mut out = Vec::with_capacity(64);
                    // Every command is covered above; answer rather than drop.
                    encode_status(&mut out, command.name(), Status::Unknown, None, None);
                    self.deliver(ticket, out);
                }
            },
        }
    }

    /// Runs a single-session command on `owner`: here, or by message.
    fn route(&mut self, owner: ShardId, ticket: Ticket, command: Command) {
        if owner == self.ctx.id {
            self.answer_here(ticket, |shard, out| shard.run_owned(command, out));
        } else {
            self.outbox[owner].push(Envelope::Call {
                from: self.ctx.id,
                ticket,
                command,
            });
        }
    }

    /// Runs a command whose session this shard owns.
    fn run_owned(&mut self, command: Command, out: &mut Vec<u8>) {
        let status = match command {
            Command::Open { name } => {
                exec::open_session(&mut self.store, &self.ctx.names, &name, self.now, out)
            }
            command => exec::run(&mut self.store, command, self.now, out),
        };
        if status == Status::SessionNotExist {
            self.session_not_exist += 1;
        }
    }

    fn create_session(&mut self, new: NewSession, out: &mut Vec<u8>) {
        let (id, shards) = (self.ctx.id, self.ctx.shards);
        let rng = &mut self.rng;
        // Draw until the token lands on this shard: the creator's later
        // requests then never cross shards.
        let mint = || loop {
            let tkn = rng.next_u64();
            if shard_of(tkn, shards) == id {
                break tkn;
            }
        };

        exec::new_session(&mut self.store, &self.ctx.names, mint, new, self.now, out);
    }

    fn fan_out(&mut self, ticket: Ticket, kind: GatherKind, part: impl Fn(ShardId) -> Part) {
        let parts: Vec<_> = (0..self.ctx.shards).map(|s| (s, part(s))).collect();
        self.fan_out_to(ticket, kind, parts.into_iter());
    }

    /// Sends each part to its shard (running ours directly) and gathers.
    fn fan_out_to(
        &mut self,
        ticket: Ticket,
        kind: GatherKind,
        parts: impl Iterator<Item = (ShardId, Part)>,
    ) {
        let parts: Vec<_> = parts.collect();
        let gather = self.gathers.insert(Gather::new(ticket, kind, parts.len()));
        let mut local = Vec::new();
        for (shard, part) in parts {
            if shard == self.ctx.id {
                local.push(part);
            } else {
                self.outbox[shard].push(Envelope::Part {
                    from: self.ctx.id,
                    gather,
                    part,
                });
            }
        }
        for part in local {
            self.answer_part(PartReply::Local { gather }, part);
        }
        // No parts at all (e.g. SH_EXISTS with no valid token).
        if self.gathers.get(gather).is_some_and(Gather::is_complete) {
            self.finish_gather(gather);
        }
    }

    /// Runs a part here and sends its result where it belongs (or defers
    /// a count until background expiry has caught up).
    fn answer_part(&mut self, reply: PartReply, part: Part) {
        let result = match part {
            Part::EndAll => PartResult::Ended(self.store.end_all(self.now)),
            Part::Counts => match self.store.live_counts(self.now, EXPIRY_BUDGET) {
                Some((sessions, keys)) => PartResult::Counts {
                    sessions,
                    keys,
                    connections: self.conns.len() as u64,
                    memory_used: self.store.memory_used(),
                    session_not_exist: self.session_not_exist,
                },
                None => {
                    self.deferred_counts.push(reply);
                    self.expiry_pending = true;
                    return;
                }
            },
            Part::Exists(list) => PartResult::Exists(
                list.into_iter()
                    .filter(|&(_, tkn)| self.store.exists(tkn, self.now))
                    .map(|(i, _)| i)
                    .collect(),
            ),
            Part::Save { dir, only } => {
                // Answered by the file writer when the file is on disk.
                self.begin_shard_save(reply, &dir, only);
                return;
            }
            Part::Load(records) => {
                // Answered once every record is added, a batch per turn.
                self.queue_load(reply, records);
                return;
            }
            Part::Settle(tkn) => {
                self.store.exists(tkn, self.now);
                PartResult::Settled
            }
        };
        match reply {
            PartReply::Local { gather } => self.merge_part(gather, result),
            PartReply::Remote { from, gather } => {
                self.outbox[from].push(Envelope::PartDone { gather, result });
            }
        }
    }

    fn merge_part(&mut self, gather: usize, result: PartResult) {
        let Some(g) = self.gathers.get_mut(gather) else {
            return;
        };
        g.merge(result);
        if g.is_complete() {
            self.finish_gather(gather);
        }
    }

    fn finish_gather(&mut self, gather: usize) {
        let mut g = self.gathers.remove(gather);
        let ticket = g.ticket;
        if let Some(new) = g.take_new_session() {
            self.answer_here(ticket, |shard, out| shard.create_session(new, out));
            return;
        }
        if let Some(settlement) = g.take_save_settlement() {
            // Back in the slab until the commit reports.
            let gather = self.gathers.insert(g);
            self.settle_save(gather, settlement);
            return;
        }
        let uptime = self.ctx.started.elapsed().as_secs();
        let server = gather::ServerFacts {
            shards: self.ctx.shards,
            persist_enabled: self.ctx.persist.is_some(),
            uptime_s: uptime,
            max_memory: self.ctx.max_memory,
        };
        let out = g.encode(&server);
        self.deliver(ticket, out);
    }

    fn handle_batch(&mut self, batch: Vec<Envelope>) {
        self.now = self.clock();
        for envelope in batch {
            match envelope {
                Envelope::Call {
                    from,
                    ticket,
                    command,
                } => {
                    let mut response = Vec::with_capacity(96);
                    self.run_owned(command, &mut response);
                    self.outbox[from].push(Envelope::Reply { ticket, response });
                }
                Envelope::Reply { ticket, response } => self.deliver(ticket, response),
                Envelope::Part { from, gather, part } => {
                    self.answer_part(PartReply::Remote { from, gather }, part);
                }
                Envelope::PartDone { gather, result } => self.merge_part(gather, result),
                Envelope::LoadRead { gather, result } => self.loaded_from_disk(gather, result),
                Envelope::SaveSettled { gather, result } => {
                    self.commits_in_flight = self.commits_in_flight.saturating_sub(1);
                    if let Some(g) = self.gathers.get_mut(gather) {
                        g.save_settled(result);
                        self.finish_gather(gather);
                    }
                }
            }
        }
    }

    /// Builds a response here, in a buffer reused from one to the next,
    /// and hands it to its connection (which copies it only if it must
    /// wait for earlier answers).
    fn answer_here(&mut self, ticket: Ticket, build: impl FnOnce(&mut Self, &mut Vec<u8>)) {
        let mut out = std::mem::take(&mut self.reply);
        out.clear();
        build(self, &mut out);
        let now = self.instant();
        if let Some(conn) = self.conns.get_mut(ticket.conn)
            && conn.id == ticket.conn_id
        {
            conn.respond_slice(ticket.seq, &out, now);
            self.touched.push(ticket.conn);
        }
        self.reply = out;
    }

    /// Hands a response to its connection, which writes it in order.
    fn deliver(&mut self, ticket: Ticket, response: Vec<u8>) {
        let now = self.instant();
        if let Some(conn) = self.conns.get_mut(ticket.conn)
            && conn.id == ticket.conn_id
        {
            conn.respond(ticket.seq, response, now);
            self.touched.push(ticket.conn);
        }
    }

    fn send_outbox(&mut self) {
        for (shard, batch) in self.outbox.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let batch = std::mem::take(batch);
            // A shard that is gone has stopped the server; nothing to do.
            let _ = self.ctx.mesh[shard].send(batch);
        }
    }

    /// One write per touched connection; drops the ones that closed.
    fn finish_turn(&mut self) {
        let now = self.instant();
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for &slot in &touched {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            if conn.needs_flush() {
                conn.flush(now);
            }
            if conn.is_closed() {
                self.conns.remove(slot);
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

    fn begin_stopping(&mut self) -> io::Result<()> {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // Answer what was already read: one last read of every connection.
        for (slot, conn) in self.conns.iter_mut() {
            conn.readable = true;
            self.ready.push(slot);
        }
        self.read_connections();
        self.phase = Phase::Stopping {
            since: Instant::now(),
        };
        Ok(())
    }

    fn housekeeping(&mut self) {
        let now = self.instant();
        if let Phase::Stopping { since } = self.phase {
            let overdue = since.elapsed() > SHUTDOWN_GRACE;
            for (slot, conn) in self.conns.iter_mut() {
                if conn.is_open() && (conn.in_flight() == 0 || overdue) {
                    conn.close(CloseCode::Away, "server shutting down", now);
                    self.touched.push(slot);
                }
                // Closing connections need reads to see the peer's EOF.
                self.ready.push(slot);
            }
            if overdue {
                self.conns.clear();
            }
            self.finish_turn();
            if self.conns.is_empty() {
                self.phase = Phase::Drained;
                self.ctx.draining.fetch_sub(1, Ordering::AcqRel);
                for address in self.ctx.mesh.iter() {
                    address.wake();
                }
            }
            return;
        }
        if self.last_housekeeping.elapsed() < HOUSEKEEPING_EVERY {
            return;
        }
        self.last_housekeeping = Instant::now();
        if self.accept_again {
            self.accept();
        }
        let timeouts = Timeouts::from_limits(&self.ctx.limits);
        let mut expired = Vec::new();
        for (slot, conn) in self.conns.iter_mut() {
            if conn.expired(now, &timeouts).is_some() {
                expired.push(slot);
            } else if !conn.is_open() {
                // Closing: a read notices when the linger time is over.
                conn.readable = true;
                self.ready.push(slot);
            }
        }
        for slot in expired {
            self.conns.remove(slot);
        }
    }
}
