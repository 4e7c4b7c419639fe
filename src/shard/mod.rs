//! A shard: one thread, one `mio` event loop. Each turn it polls, accepts,
//! reads messages off its connections and hands them to its [`Router`],
//! delivers what other shards sent, sends its own messages as one batch per
//! shard, and flushes every connection it touched once. It reads the clock
//! once per turn and passes the time down; it holds no session itself.
//!
//! # Layout
//! - `mod.rs`: the loop and one turn.
//! - `connections`: the connection table, reads and flushes due, timeouts.
//! - `shutdown`: serving -> stopping -> drained.

mod connections;
mod shutdown;

pub use crate::router::Restored;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token as PollToken, Waker};
use rand::rngs::StdRng;

use crate::mesh::{Address, Inbox, MeshPost, ShardId, Ticket};
use crate::metrics::{Clock, CommandLabel, RequestMetrics, SlowRequests};
use crate::net::connection::{Limits, Permit, ReadOutcome};
use crate::net::handshake::{Endpoint, SERVER_FULL, http_text};
use crate::persist::SessionRecord;
use crate::protocol::{Command, CommandName, Status, answer, encode_status};
use crate::router::{LogSettings, Replies, Router, RouterConfig, SnapshotSchedule};
use crate::security::{Security, admit};
use crate::shared_names::SharedNames;
use crate::store::budget::MemoryBudget;
use crate::store::{Millis, SessionStore};
use connections::Connections;
use shutdown::Phase;

/// Connections taken past `--max-connections` for the HTTP endpoints only,
/// so probes still get their answer when clients fill the server.
pub(crate) const PROBE_RESERVE: usize = 8;

const LISTENER: PollToken = PollToken(usize::MAX - 1);
const WAKER: PollToken = PollToken(usize::MAX - 2);

/// Messages read from one connection per turn before others get a go.
const READ_BUDGET: usize = 256;
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);

/// What a shard needs from the server, fixed at start-up.
pub struct ShardContext {
    pub id: ShardId,
    pub shards: usize,
    pub limits: Limits,
    /// Open connections over all shards, and how many are allowed.
    pub connections: Arc<AtomicUsize>,
    pub max_connections: usize,
    /// The server-wide memory limit every shard borrows from (None: none).
    pub memory: Option<Arc<MemoryBudget>>,
    /// Where snapshots live; None: persistence is off (`SH_SAVE` -> 14).
    pub persist: Option<PathBuf>,
    /// Process start: the epoch of the shard clocks and of `uptimeSeconds`.
    pub started: Instant,
    /// The wall-clock time at `started`, in ms since the Unix epoch.
    pub wall_epoch_ms: u64,
    /// This run of the server (random), for event cursors.
    pub instance: u64,
    /// Events each shard keeps for subscribers.
    pub event_retention: usize,
    /// Set once owners are spread over shards (see `RouterConfig`).
    pub owners_scattered: Arc<AtomicBool>,
    pub names: Arc<SharedNames>,
    pub mesh: Arc<[Address]>,
    /// Set by the server to ask every shard to stop.
    pub stop: Arc<AtomicBool>,
    /// Set once start-up loading is done, cleared when shutdown begins
    /// (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// Requests are timed with it (one calibration for every shard).
    pub clock: Clock,
    /// Requests slower than this are logged (None: none are).
    pub slow_request: Option<Duration>,
    /// TLS and users for new connections (reloaded on SIGHUP).
    pub security: Arc<Security>,
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

pub struct Shard {
    ctx: ShardContext,
    poll: Poll,
    /// None once stopping: no new connections.
    listener: Option<TcpListener>,
    inbox: Inbox,
    conns: Connections,
    router: Router,
    last_housekeeping: Instant,
    phase: Phase,
    /// An accept failed (out of file descriptors?): retry without an edge.
    accept_again: bool,
    /// Memory was freed at the last housekeeping: ask the allocator once
    /// more at this one (measured: a single forced collect leaves a few
    /// MiB that the next one returns).
    give_back_again: bool,
}

impl Shard {
    /// A shard that accepts no connections until [`Shard::listen`].
    pub fn new(ctx: ShardContext, poll: Poll, inbox: Inbox) -> Self {
        let config = RouterConfig {
            id: ctx.id,
            shards: ctx.shards,
            memory: ctx.memory.clone(),
            persist: ctx.persist.clone(),
            names: ctx.names.clone(),
            owners_scattered: ctx.owners_scattered.clone(),
            wall_epoch_ms: ctx.wall_epoch_ms,
            instance: ctx.instance,
            max_payload: ctx.limits.max_payload,
            event_retention: ctx.event_retention,
            event_credit: (ctx.limits.max_output_buffer / (2 * ctx.shards)).clamp(1, 256 * 1024),
            snapshots: None,
        };
        let rng: StdRng = rand::make_rng();
        let post = Arc::new(MeshPost(ctx.mesh.clone()));
        let now = millis_since(ctx.started, Instant::now());
        Shard {
            router: Router::new(config, rng, post, now),
            conns: Connections::new(ctx.limits, Instant::now(), request_metrics(&ctx)),
            ctx,
            poll,
            listener: None,
            inbox,
            last_housekeeping: Instant::now(),
            phase: Phase::Serving,
            accept_again: false,
            give_back_again: false,
        }
    }

    /// Accepts connections on `listener` once running.
    pub fn listen(&mut self, mut listener: TcpListener) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        self.listener = Some(listener);
        Ok(())
    }

    /// Adds sessions loaded at start-up that this shard owns, before
    /// serving; `keep_deadlines` for recovery.
    pub fn restore(&mut self, records: Vec<SessionRecord>, keep_deadlines: bool) -> Restored {
        self.router.restore(records, keep_deadlines)
    }

    /// Logs every change from now on.
    pub fn start_log(&mut self, settings: LogSettings) -> io::Result<()> {
        self.router.start_log(settings)
    }

    /// Knows the snapshot dataset; with `periodic`, takes the periodic
    /// snapshots (one shard does).
    pub fn schedule_snapshots(&mut self, schedule: SnapshotSchedule, periodic: bool) {
        self.router.schedule_snapshots(schedule, periodic);
    }

    /// Runs the event loop until the server stops; hands back the sessions
    /// (for a save on shutdown).
    pub fn run(mut self) -> io::Result<SessionStore> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.ctx.stop.load(Ordering::Acquire) && self.phase.is_serving() {
                self.begin_stopping(Instant::now());
            }
            // A save under way (or being committed) finishes first.
            if self.phase == Phase::Drained
                && self.ctx.draining.load(Ordering::Acquire) == 0
                && self.router.is_idle()
            {
                return Ok(self.router.into_store());
            }
            let mut timeout = self.poll_timeout(Instant::now());
            if timeout != Some(Duration::ZERO)
                && let Some(batch) = self.inbox.prepare_to_sleep()
            {
                let now = Instant::now();
                self.conns.set_now(now);
                self.router.set_now(self.millis(now));
                self.router.receive(batch, &mut self.conns);
                timeout = Some(Duration::ZERO);
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.inbox.awake();
            let now = Instant::now();
            self.conns.set_now(now);
            self.router.set_now(self.millis(now));
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    PollToken(slot) => self.conns.on_event(
                        slot,
                        event.is_readable(),
                        event.is_writable(),
                        event.is_read_closed() || event.is_error(),
                    ),
                }
            }
            // Bounded: at most what other shards sent before this point.
            for _ in 0..self.ctx.shards * 4 {
                match self.inbox.try_take() {
                    Some(batch) => self.router.receive(batch, &mut self.conns),
                    None => break,
                }
            }
            self.read_connections();
            self.router.end_turn(&mut self.conns);
            if let Some(why) = self.router.log_failure() {
                return Err(io::Error::other(format!("change log: {why}")));
            }
            self.send_outbox();
            self.conns.finish_turn();
            self.router.after_flush(&mut self.conns);
            self.send_outbox();
            self.housekeeping(now);
        }
    }

    fn millis(&self, now: Instant) -> Millis {
        millis_since(self.ctx.started, now)
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.conns.has_ready() || self.router.has_work() {
            return Some(Duration::ZERO);
        }
        let housekeeping = match self.phase {
            // Idle: asleep until something arrives, once memory freed by
            // the last requests (SH_END_ALL, a client's last SH_END) has
            // been given back.
            Phase::Serving
                if self.conns.is_empty()
                    && !self.accept_again
                    && !self.give_back_again
                    && !self.router.may_reclaim() =>
            {
                None
            }
            Phase::Serving => Some(HOUSEKEEPING_EVERY),
            Phase::Stopping { .. } | Phase::Drained => Some(Duration::from_millis(10)),
        };
        // Sleep no longer than the next session deadline.
        let expiry = self
            .router
            .next_deadline()
            .map(|due| Duration::from_millis(due.saturating_sub(self.millis(now))));
        match (housekeeping, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn accept(&mut self) {
        self.accept_again = false;
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            let (mut stream, peer) = match listener.accept() {
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
            let max = self.ctx.max_connections;
            let (permit, probes_only) = match Permit::acquire(&self.ctx.connections, max) {
                Some(permit) => (permit, false),
                // Full: a probe may still come in; a WebSocket client is
                // told 503 once its request shows it is one.
                None => match Permit::acquire(&self.ctx.connections, max + PROBE_RESERVE) {
                    Some(permit) => (permit, true),
                    // A TLS port speaks no plain HTTP: the peer sees a close.
                    None => {
                        self.conns.metrics.rejected_at_limit();
                        if self.ctx.security.settings().tls.is_none() {
                            let _ = std::io::Write::write_all(&mut stream, SERVER_FULL);
                        }
                        continue;
                    }
                },
            };
            self.conns.metrics.accepted();
            let _ = stream.set_nodelay(true);
            // A stream that cannot be registered is dropped (closed).
            let security = self.ctx.security.current();
            let _ = self.conns.add(
                self.poll.registry(),
                stream,
                peer,
                permit,
                probes_only,
                security,
            );
        }
    }

    /// Reads messages off every connection with input, READ_BUDGET each,
    /// and hands them to the router.
    fn read_connections(&mut self) {
        let now = self.conns.now();
        let mut still_ready = Vec::new();
        for slot in self.conns.take_ready() {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            if !conn.readable {
                continue;
            }
            // While stopping, open connections take no new requests.
            if !self.phase.is_serving() && conn.is_open() {
                continue;
            }
            self.conns.touch(slot);
            let mut budget = READ_BUDGET;
            let mut timing = false;
            while let Some(conn) = self.conns.get_mut(slot) {
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
                        if !timing {
                            // Its first request is timed from here.
                            self.conns.metrics.turn_to_connection();
                            timing = true;
                        }
                        budget -= 1;
                        let Some(conn) = self.conns.get_mut(slot) else {
                            break;
                        };
                        let (conn_id, seq) = (conn.id, conn.next_request());
                        let role = conn.role();
                        let request = self.router.decode(incoming, conn.message());
                        let ticket = Ticket {
                            conn: slot,
                            conn_id,
                            seq,
                            command: CommandLabel::of_request(&request),
                            started: self.conns.metrics.request_started(),
                        };
                        match admit(role, request) {
                            Ok(Command::Auth { user, password })
                                if self.ctx.security.has_users() =>
                            {
                                self.authenticate(ticket, &user, &password.0);
                            }
                            request => self.router.dispatch(ticket, request, &mut self.conns),
                        }
                    }
                    ReadOutcome::Http(endpoint) => {
                        let ticket = Ticket {
                            conn: slot,
                            conn_id: conn.id,
                            seq: conn.next_request(),
                            ..Ticket::default()
                        };
                        self.serve_http(endpoint, ticket);
                        break;
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
        self.conns.ready_again(still_ready);
    }

    /// `SV_AUTH` on a server with users: on success the connection's
    /// requests run as the user from now on; a failure is answered 17, and
    /// the connection closes with 1008 after it.
    fn authenticate(&mut self, ticket: Ticket, user: &str, password: &str) {
        let identity = self
            .ctx
            .security
            .users()
            .and_then(|users| users.check(user, password));
        let mut out = Vec::new();
        match &identity {
            Some(identity) => answer::authenticated(&mut out, &identity.user, identity.role.name()),
            None => encode_status(
                &mut out,
                CommandName::Auth,
                Status::AuthFailed,
                None,
                Some("unknown user or wrong password"),
            ),
        }
        self.conns.answer_owned(ticket, out);
        let now = self.conns.now();
        let Some(conn) = self.conns.get_mut(ticket.conn) else {
            return;
        };
        match identity {
            Some(identity) => conn.authenticated(identity),
            None => conn.refuse_credentials(user, now),
        }
    }

    /// Answers a request for one of the HTTP endpoints.
    fn serve_http(&mut self, endpoint: Endpoint, ticket: Ticket) {
        let answer = match endpoint {
            Endpoint::Health => http_text(200, "ok\n"),
            Endpoint::Ready => {
                let ready = self.phase.is_serving() && self.ctx.ready.load(Ordering::Acquire);
                match ready {
                    true => http_text(200, "ready\n"),
                    false => http_text(503, "not ready\n"),
                }
            }
            // Answered once every shard has sent its figures.
            Endpoint::Metrics => return self.router.scrape(ticket, &mut self.conns),
        };
        self.conns.answer_http(ticket, answer);
    }

    fn send_outbox(&mut self) {
        for (shard, batch) in self.router.take_outbox() {
            // A shard that is gone has stopped the server; nothing to do.
            let _ = self.ctx.mesh[shard].send(batch);
        }
    }

    fn begin_stopping(&mut self, now: Instant) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // Answer what was already read: one last read of every connection.
        self.conns.read_all_once();
        self.read_connections();
        self.phase = Phase::Stopping { since: now };
    }

    fn housekeeping(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            if self.phase.step(now, &mut self.conns, &self.ctx.draining) {
                for address in self.ctx.mesh.iter() {
                    address.wake();
                }
            }
            return;
        }
        if now.saturating_duration_since(self.last_housekeeping) < HOUSEKEEPING_EVERY {
            return;
        }
        self.last_housekeeping = now;
        if self.accept_again {
            self.accept();
        }
        self.conns.expire();
        self.reclaim_memory();
    }

    /// Shrinks the store's tables once their population fell, and has the
    /// allocator hand what was freed back to the OS: an idle shard's
    /// allocator never would by itself.
    fn reclaim_memory(&mut self) {
        let started = Instant::now();
        let reclaimed = self.router.reclaim_memory();
        if reclaimed.freed() || std::mem::take(&mut self.give_back_again) {
            crate::allocator::give_back();
            self.give_back_again = reclaimed.freed();
        }
        if reclaimed.freed() {
            tracing::debug!(
                shard = self.ctx.id,
                table_before = reclaimed.table_before,
                table_after = reclaimed.table_after,
                micros = started.elapsed().as_micros() as u64,
                "gave memory back"
            );
        }
    }
}

fn request_metrics(ctx: &ShardContext) -> RequestMetrics {
    let slow = ctx
        .slow_request
        .map(|threshold| SlowRequests::new(threshold, ctx.id));
    RequestMetrics::new(ctx.clock.clone(), slow, ctx.id)
}

/// Milliseconds from the server's epoch to `now`: the shard clock.
fn millis_since(epoch: Instant, now: Instant) -> Millis {
    now.saturating_duration_since(epoch).as_millis() as Millis
}
