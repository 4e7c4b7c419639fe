//! The event loop: one thread drives many non-blocking connections.
//!
//! Owns: connections (socket, buffers, operations in flight), the schedule of
//! sends (closed or open loop), stop conditions and the stall timeout, and the
//! per-second statistics each thread hands to the collector. Knows nothing of
//! request bytes: [`Encoder`] writes them and says which replies to expect.
//!
//! Per connection, `pipeline` operation slots; an operation is one or more
//! phases of requests (see `workload`). Responses on a connection arrive in
//! request order, so a FIFO of expected replies maps each reply to its slot.
//! Each pass over a connection reads everything available, handles every
//! complete reply, refills the free slots and writes all new requests with one
//! `write`, so a busy connection costs one `read` and one `write` per batch.
//!
//! An operation whose phase leaves state on the connection (Redis cas's
//! WATCH, see [`Encoder::holds_connection`]) holds the connection until it
//! writes its next phase: meanwhile other slots' phases wait in a queue, in
//! order, and their time waiting counts in their latency. A compare-and-set
//! that lost starts again from phase 0, up to [`MAX_RETRIES`] times.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

use crate::config::{Protocol, Target};
use crate::net::{self, Stream};
use crate::resp;
use crate::rng::Rng;
use crate::save::SaveWindow;
use crate::timer::Timer;
use crate::workload::{Carry, Check, Encoder, Expect, Lifetime, Op, member_id};
use crate::ws;

/// Lost compare-and-sets one operation may retry; one more is an error (a
/// server that always answers "changed" must not spin a slot forever).
pub const MAX_RETRIES: u32 = 1000;

/// Where a phase's operations come from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// The configured workload ([`Encoder::choose`]).
    Timed,
    /// Untimed set-up: create sessions with this lifetime, collecting tokens.
    Setup(Lifetime),
    /// Untimed set-up of logout-all: create owners' sessions.
    SetupOwners,
    /// Untimed teardown: end the sessions (or owners) set-up created.
    Teardown,
}

/// One phase of a run (set-up or the timed workload), the same for all threads.
pub struct Plan {
    pub encoder: Arc<Encoder>,
    pub source: Source,
    /// Operation slots per connection.
    pub pipeline: usize,
    /// Total operations over all connections; `None` runs until `deadline`.
    pub requests: Option<u64>,
    /// When no more operations are issued (duration runs).
    pub deadline: Option<Instant>,
    /// Open loop: time between two sends of one connection.
    pub interval: Option<Duration>,
    /// A connection waiting this long for a reply is failed.
    pub timeout: Duration,
    /// Second 0 of the per-second series, shared by all threads.
    pub start: Instant,
    /// Total connections of the run (operation ids and quotas depend on it).
    pub connections: usize,
    /// Completed operations, for the progress bar (`None`: nobody watches).
    pub progress: Option<Arc<AtomicU64>>,
    /// `--save-at`: operations are sorted by whether they overlap the save.
    pub save: Option<Arc<SaveWindow>>,
}

/// What a thread reports to the collector.
pub enum Msg {
    /// Operations completed during second `second` of the run (the last one
    /// of a thread may be partial).
    Tick {
        second: u64,
        ops: u64,
        errors: u64,
        hist: Box<Histogram<u64>>,
    },
    /// The thread is finished; `at` is when its last operation completed.
    Done {
        at: Instant,
        failed_connections: u64,
        /// Replies that answered another request than the one they should
        /// have (a server that broke response order).
        mismatched: u64,
        /// Successful replies that echoed no token where the request had one
        /// (original NemesisDB servers, for SH_SET and SH_GET): checked by
        /// command name and order only.
        untokened: u64,
        /// Successful replies with no token where the workload needs the
        /// reply's (SH_NEW): errors, told apart from replies out of order.
        token_missing: u64,
        /// Compare-and-sets that lost and were tried again (cas).
        retries: u64,
        /// With `--save-at`: latencies of the operations in flight during
        /// the save, and of the others.
        save: Option<SplitLatency>,
    },
}

/// Latencies of the operations in flight during a save, and of the others.
pub type SplitLatency = Box<[Histogram<u64>; 2]>;

/// An operation in flight in one slot.
#[derive(Clone, Copy, Debug)]
struct Slot {
    op: Op,
    /// Send time (closed loop) or scheduled send time (open loop).
    start: Instant,
    phase: u8,
    /// Replies still expected for the current phase.
    outstanding: u8,
    /// Whether another phase follows the current one.
    more: bool,
    /// Replies that were not a success.
    errors: u32,
    /// The current phase's compare-and-set lost: start again from phase 0.
    lost: bool,
    /// Times the operation started again.
    retries: u32,
    /// What the replies so far returned, for the next phase.
    carry: Carry,
}

struct Pending {
    slot: u16,
    expect: Expect,
}

/// One connection and its operations. Lives across phases; a failed one is
/// closed and stays dead.
pub struct Conn {
    stream: Option<Stream>,
    /// Global connection number: the stream of its generator and operation ids.
    index: usize,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    pending: VecDeque<Pending>,
    slots: Vec<Option<Slot>>,
    free: Vec<u16>,
    rng: Rng,
    /// Operations this connection may still start in this phase.
    quota: u64,
    /// Operations started in this phase (for ids).
    issued: u64,
    /// Open loop: the scheduled time of the next send.
    next_send: Instant,
    /// Last time a reply arrived or the connection became busy.
    last_progress: Instant,
    /// Tokens collected in set-up, as (operation id, token).
    tokens: Vec<(u64, u64)>,
    /// The server shard serving this connection, once known (`--locality`).
    pub shard: Option<usize>,
    /// The replies a phase being written expects (reused).
    expects: Vec<Expect>,
    /// The slot whose operation holds the connection (see
    /// [`Encoder::holds_connection`]).
    holder: Option<u16>,
    /// Slots waiting to write a phase while another holds the connection.
    waiting: VecDeque<u16>,
}

const READ_CHUNK: usize = 64 * 1024;

impl Conn {
    /// Connects (TLS, upgrade, credentials, as the target says) with
    /// blocking I/O, then turns the stream non-blocking. Not timed.
    pub fn connect(target: &Target, index: usize, seed: u64) -> io::Result<Conn> {
        let (s, mut leftover) = net::connect(target)?;
        let stream = Stream::from_blocking(s, &mut leftover)?;
        let mut rbuf = vec![0u8; READ_CHUNK.max(leftover.len() * 2)];
        rbuf[..leftover.len()].copy_from_slice(&leftover);
        let now = Instant::now();
        Ok(Conn {
            stream: Some(stream),
            index,
            rbuf,
            rstart: 0,
            rend: leftover.len(),
            wbuf: Vec::with_capacity(16 * 1024),
            wpos: 0,
            pending: VecDeque::new(),
            slots: Vec::new(),
            free: Vec::new(),
            rng: Rng::new(seed, index as u64),
            quota: 0,
            issued: 0,
            next_send: now,
            last_progress: now,
            tokens: Vec::new(),
            shard: None,
            expects: Vec::new(),
            holder: None,
            waiting: VecDeque::new(),
        })
    }

    pub fn alive(&self) -> bool {
        self.stream.is_some()
    }

    /// The agreed TLS protocol and cipher suite; `None` for plain TCP.
    pub fn tls(&self) -> Option<String> {
        self.stream.as_ref().and_then(Stream::tls)
    }

    /// Ends the connection politely: a WebSocket close frame (1000, normal
    /// closure) so the server sees a clean goodbye rather than a reset.
    /// Best effort: the run is over either way.
    pub fn close(mut self, protocol: Protocol) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        self.wbuf.clear();
        if protocol == Protocol::Ws {
            ws::write_frame(
                &mut self.wbuf,
                ws::OP_CLOSE,
                &[&1000u16.to_be_bytes()],
                &mut self.rng,
            );
        }
        stream.close(&self.wbuf);
    }

    /// Tokens collected by the last set-up phase.
    pub fn take_tokens(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.tokens)
    }

    fn busy(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn prepare(&mut self, plan: &Plan) {
        self.slots = vec![None; plan.pipeline];
        self.free = (0..plan.pipeline as u16).rev().collect();
        self.pending.clear();
        self.holder = None;
        self.waiting.clear();
        self.issued = 0;
        let c = plan.connections as u64;
        self.quota = match plan.requests {
            Some(n) => n / c + u64::from((self.index as u64) < n % c),
            None => u64::MAX,
        };
        if let Some(iv) = plan.interval {
            // Stagger connections evenly over one interval.
            self.next_send = plan.start + iv.mul_f64(self.index as f64 / c as f64);
        }
        self.last_progress = plan.start;
    }

    fn finished(&self, now: Instant, plan: &Plan) -> bool {
        if !self.alive() {
            return true;
        }
        let may_issue = self.quota > 0 && plan.deadline.is_none_or(|d| now < d);
        !may_issue && self.busy() == 0
    }

    /// Starts operations in free slots: all of them (closed loop) or those
    /// whose scheduled time has come (open loop).
    fn fill(&mut self, now: Instant, plan: &Plan, c: &mut Collector) {
        if !self.alive() || plan.deadline.is_some_and(|d| now >= d) {
            return;
        }
        while self.quota > 0 && !self.free.is_empty() {
            let start = match plan.interval {
                None => now,
                Some(iv) => {
                    if self.next_send > now || plan.deadline.is_some_and(|d| self.next_send >= d) {
                        break;
                    }
                    let s = self.next_send;
                    self.next_send += iv;
                    s
                }
            };
            let id = self.issued * plan.connections as u64 + self.index as u64;
            self.issued += 1;
            self.quota -= 1;
            if self.busy() == 0 {
                self.last_progress = now;
            }
            let Some(slot) = self.free.pop() else { break };
            // Unique among the operations in flight over all connections.
            let lane = self.index as u64 + plan.connections as u64 * u64::from(slot);
            let op = match plan.source {
                Source::Timed => plan.encoder.choose(&mut self.rng, id, lane, self.shard),
                Source::Setup(lifetime) => Op::Create {
                    index: id,
                    lifetime,
                },
                Source::SetupOwners => Op::OwnerFill { owner: id },
                // Quotas split `requests` = what set-up created, so id < it.
                Source::Teardown => plan.encoder.teardown(id),
            };
            self.slots[slot as usize] = Some(Slot {
                op,
                start,
                phase: 0,
                outstanding: 0,
                more: false,
                errors: 0,
                lost: false,
                retries: 0,
                carry: Carry::default(),
            });
            self.send_phase(slot, plan, c);
        }
    }

    /// Writes the current phase of the operation in `slot`, or queues it
    /// while another slot holds the connection; a phase that lets go of the
    /// connection lets the queued ones go out, in order, after it.
    fn send_phase(&mut self, slot: u16, plan: &Plan, c: &mut Collector) {
        if self.holder.is_some_and(|h| h != slot) {
            self.waiting.push_back(slot);
            return;
        }
        self.write_phase(slot, plan, c);
        self.send_waiting(plan, c);
    }

    /// Writes the queued phases, in order, while nobody holds the connection.
    fn send_waiting(&mut self, plan: &Plan, c: &mut Collector) {
        while self.holder.is_none()
            && let Some(next) = self.waiting.pop_front()
        {
            self.write_phase(next, plan, c);
        }
    }

    fn write_phase(&mut self, slot: u16, plan: &Plan, c: &mut Collector) {
        let Some(s) = self.slots[slot as usize].as_mut() else {
            return;
        };
        self.holder = if plan.encoder.holds_connection(s.op, s.phase) {
            Some(slot)
        } else {
            self.holder.filter(|&h| h != slot)
        };
        self.expects.clear();
        s.more = plan.encoder.encode(
            s.op,
            s.phase,
            &s.carry,
            &mut self.wbuf,
            &mut self.expects,
            &mut self.rng,
        );
        s.outstanding = u8::try_from(self.expects.len()).unwrap_or(u8::MAX);
        for &expect in &self.expects {
            self.pending.push_back(Pending { slot, expect });
        }
        if s.outstanding == 0 {
            // Nothing to wait for (cannot happen with our workloads).
            self.complete(slot, Instant::now(), plan, c);
        }
    }

    /// Writes until the buffer is empty or the socket is full.
    fn flush(&mut self, c: &mut Collector) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        while self.wpos < self.wbuf.len() {
            match stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return self.fail(c),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(c),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        // TLS: records a write left in rustls's buffer (plain: nothing).
        match stream.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.fail(c),
        }
    }

    /// Reads everything available and handles every complete reply.
    fn on_readable(&mut self, plan: &Plan, c: &mut Collector) {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            if self.rbuf.len() - self.rend < READ_CHUNK / 4 {
                if self.rstart > 0 {
                    self.rbuf.copy_within(self.rstart..self.rend, 0);
                    self.rend -= self.rstart;
                    self.rstart = 0;
                }
                if self.rbuf.len() - self.rend < READ_CHUNK / 4 {
                    let len = self.rbuf.len() * 2;
                    self.rbuf.resize(len, 0);
                }
            }
            let space = self.rbuf.len() - self.rend;
            match stream.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return self.fail(c),
                Ok(n) => {
                    self.rend += n;
                    let now = Instant::now();
                    self.last_progress = now;
                    self.handle_replies(now, plan, c);
                    // A short read drained the socket: with edge-triggered
                    // readiness, data arriving later raises a new event, so
                    // the read that would only say WouldBlock is skipped.
                    if n < space {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(c),
            }
        }
    }

    fn handle_replies(&mut self, now: Instant, plan: &Plan, c: &mut Collector) {
        while self.alive() && self.rstart < self.rend {
            let buf = &self.rbuf[self.rstart..self.rend];
            // What this reply hands on: SH_NEW's token, SMEMBERS' list,
            // cas's read (version, counter); whether cas's write lost.
            let mut token = 0;
            let mut listed = None;
            let mut read = None;
            let mut lost = false;
            let (used, ok) = match plan.encoder.protocol() {
                Protocol::Ws => match ws::parse_frame(buf) {
                    Ok(None) => break,
                    Err(_) => return self.fail(c),
                    Ok(Some(f)) => {
                        let body = &buf[f.header_len..f.total_len()];
                        match f.opcode {
                            ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONTINUATION => {
                                // Only a whole text frame can be a good reply.
                                let whole_text = f.opcode == ws::OP_TEXT && f.fin;
                                let Some(e) = self.pending.front().map(|p| p.expect) else {
                                    // A reply to nothing: the stream is out of step.
                                    return self.fail(c);
                                };
                                let j = judge_ws(&c.scanner, body, whole_text, &e);
                                match j.fault {
                                    Some(Fault::OtherCommand | Fault::OtherToken) => {
                                        c.mismatched += 1
                                    }
                                    Some(Fault::NoToken) => c.untokened += 1,
                                    Some(Fault::TokenMissing) => c.token_missing += 1,
                                    None => {}
                                }
                                token = j.token.unwrap_or(0);
                                read = j.read;
                                lost = j.lost;
                                (f.total_len(), j.ok)
                            }
                            ws::OP_PING => {
                                let payload = body.to_vec();
                                self.rstart += f.total_len();
                                ws::write_frame(
                                    &mut self.wbuf,
                                    ws::OP_PONG,
                                    &[&payload],
                                    &mut self.rng,
                                );
                                continue;
                            }
                            ws::OP_PONG => {
                                self.rstart += f.total_len();
                                continue;
                            }
                            ws::OP_CLOSE => return self.fail(c),
                            _ => return self.fail(c),
                        }
                    }
                },
                Protocol::Redis => match resp::parse_reply(buf) {
                    Ok(None) => break,
                    Err(_) => return self.fail(c),
                    Ok(Some((used, reply))) => {
                        let check = self.pending.front().map(|p| p.expect.check);
                        let ok = match (reply, check) {
                            (resp::Reply::Error, _) => false,
                            (_, Some(Check::Members)) => {
                                members(&buf[..used], listed.insert(Carry::default()))
                            }
                            (_, Some(Check::Filled)) => {
                                let mut n = 0;
                                resp::array_bulks(&buf[..used], |_| n += 1).is_some() && n == 4
                            }
                            (_, Some(Check::Read)) => {
                                // Redis has no version: EXEC checks WATCH's.
                                read = redis_counter(&buf[..used]).map(|n| (0, n));
                                read.is_some()
                            }
                            (_, Some(Check::Swapped)) => match resp::exec_ran(&buf[..used]) {
                                Some(ran) => {
                                    lost = !ran;
                                    true
                                }
                                None => false,
                            },
                            (resp::Reply::Integer(n), Some(Check::Positive)) => n >= 1,
                            (resp::Reply::Value, Some(Check::Positive)) => false,
                            _ => true,
                        };
                        (used, ok)
                    }
                },
            };
            self.rstart += used;
            let Some(p) = self.pending.pop_front() else {
                // A reply to nothing: the stream is out of step.
                return self.fail(c);
            };
            let Some(s) = self.slots[p.slot as usize].as_mut() else {
                return self.fail(c);
            };
            if !ok {
                s.errors += 1;
            } else if lost {
                s.lost = true;
            } else if p.expect.check == Check::Token {
                s.carry.token = token;
            } else if let Some(listed) = listed {
                s.carry = listed;
            } else if let Some((version, counter)) = read {
                s.carry.version = version;
                s.carry.counter = counter;
            }
            s.outstanding = s.outstanding.saturating_sub(1);
            if s.outstanding == 0 {
                if s.lost && s.errors == 0 && s.retries < MAX_RETRIES {
                    // Another write came first: read again, write again.
                    c.retries += 1;
                    s.retries += 1;
                    s.lost = false;
                    s.phase = 0;
                    s.carry = Carry::default();
                    self.send_phase(p.slot, plan, c);
                } else if s.more && s.errors == 0 && !s.lost {
                    s.phase += 1;
                    self.send_phase(p.slot, plan, c);
                } else {
                    // A write still lost after MAX_RETRIES retries is an error.
                    s.errors += u32::from(s.lost && s.errors == 0);
                    self.complete(p.slot, now, plan, c);
                }
            }
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
    }

    fn complete(&mut self, slot: u16, now: Instant, plan: &Plan, c: &mut Collector) {
        let Some(s) = self.slots[slot as usize].take() else {
            return;
        };
        self.free.push(slot);
        if self.holder == Some(slot) {
            // It failed before its next phase: the others may go on.
            self.holder = None;
            self.send_waiting(plan, c);
        }
        c.record(now, now.saturating_duration_since(s.start), s.errors as u64);
        if let (Source::Setup(_), Op::Create { index, .. }, 0) = (plan.source, s.op, s.errors) {
            self.tokens.push((index, s.carry.token));
        }
    }

    /// Closes the connection; its operations in flight count as errors.
    fn fail(&mut self, c: &mut Collector) {
        if let Some(stream) = self.stream.take() {
            drop(stream);
            // Each operation in flight is lost; a connection that dies idle
            // still counts once.
            c.interval.errors += (self.busy() as u64).max(1);
            c.failed_connections += 1;
        }
        self.pending.clear();
        self.holder = None;
        self.waiting.clear();
        self.free = (0..self.slots.len() as u16).collect();
        self.slots.iter_mut().for_each(|s| *s = None);
        self.wbuf.clear();
        self.wpos = 0;
    }
}

/// Why a nemesisdb reply does not fit the request it should answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// It names another command (`SH_SET_RSP` for an SH_GET): out of order.
    OtherCommand,
    /// It echoes another token than its request's: out of order.
    OtherToken,
    /// A success that echoes no token where its request had one. Original
    /// NemesisDB servers answer SH_SET and SH_GET so: not an error, the
    /// reply is checked by its command name and order only.
    NoToken,
    /// A success with no token where the workload needs the reply's own
    /// (SH_NEW's answer names the new session): an error, but no sign of
    /// replies out of order.
    TokenMissing,
}

/// What one nemesisdb reply says.
#[derive(Debug, PartialEq, Eq)]
struct Judged {
    /// The reply is the success the request expects.
    ok: bool,
    /// The token it carries (read for SH_NEW and requests with a token).
    token: Option<u64>,
    fault: Option<Fault>,
    /// cas's read: the session's version and its counter (absent: 0).
    read: Option<(u64, u64)>,
    /// cas's write lost to another (`st` 104): `ok`, and to be retried.
    lost: bool,
}

/// Checks a reply against the request in front of the queue: a whole text
/// frame, naming that request's command (so replies come in request order),
/// `st` 1, what its check asks for, and, where the server echoes a token,
/// that request's token.
fn judge_ws(scanner: &ws::Scanner, body: &[u8], whole_text: bool, e: &Expect) -> Judged {
    if ws::reply_name(body) != Some(e.reply) {
        return Judged {
            ok: false,
            token: None,
            fault: Some(Fault::OtherCommand),
            read: None,
            lost: false,
        };
    }
    let status = scanner.status(body);
    // A compare-and-set another write beat: an answer, not an error.
    let lost = e.check == Check::Swapped && status == Some(104);
    let mut ok = whole_text && (status == Some(1) || lost);
    let mut token = None;
    let mut fault = None;
    if ok && (e.check == Check::Token || e.tkn.is_some()) {
        token = scanner.token(body);
        match (e.tkn, token) {
            (Some(want), Some(got)) if want != got => {
                ok = false;
                fault = Some(Fault::OtherToken);
            }
            (_, None) if e.check == Check::Token => {
                ok = false;
                fault = Some(Fault::TokenMissing);
            }
            (Some(_), None) => fault = Some(Fault::NoToken),
            _ => {}
        }
    }
    let mut read = None;
    ok = ok
        && match e.check {
            // SH_NEW's token is what the next phase uses.
            Check::Token => token.is_some(),
            Check::Ttl => scanner.ttl_ms(body).is_some(),
            Check::Ended => scanner.count(body).is_some_and(|n| n >= 1),
            Check::Filled => scanner.has_both_keys(body),
            Check::Counter => scanner.value(body).is_some_and(|n| n >= 1),
            Check::Read => {
                read = scanner.version(body).zip(scanner.counter(body));
                read.is_some()
            }
            // A win moves the version on by one; a loss reports the
            // session's version, which is not the one the write expected.
            Check::Swapped => match (scanner.version(body), e.version) {
                (Some(now), Some(sent)) if lost => now != sent,
                (Some(now), Some(sent)) => sent.checked_add(1) == Some(now),
                _ => false,
            },
            Check::Ok | Check::Positive | Check::Members => true,
        };
    Judged {
        ok,
        token,
        fault,
        read: read.filter(|_| ok),
        lost: ok && lost,
    }
}

/// cas's Redis read (HGET of the counter): its value, 0 when the field is
/// absent (nil); `None` when it is not an unsigned integer.
fn redis_counter(reply: &[u8]) -> Option<u64> {
    match resp::bulk_string(reply)? {
        None => Some(0),
        Some(digits) => resp::unsigned(digits),
    }
}

/// Reads an SMEMBERS reply into `carry`: true when it lists 1 to
/// `MAX_MEMBERS` sessions this generator named.
fn members(reply: &[u8], carry: &mut Carry) -> bool {
    let mut all_ours = true;
    let whole = resp::array_bulks(reply, |name| {
        all_ours &= member_id(name).is_some_and(|id| carry.push_member(id));
    });
    whole.is_some() && all_ours && carry.n_members > 0
}

/// One thread's statistics for the current second.
struct Interval {
    ops: u64,
    errors: u64,
    hist: Box<Histogram<u64>>,
}

impl Interval {
    fn new() -> Interval {
        Interval {
            ops: 0,
            errors: 0,
            hist: Box::new(new_histogram()),
        }
    }
}

/// Latencies in nanoseconds, 3 significant digits, growing as needed.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are valid constants; new_with_bounds fails only on bad bounds.
    Histogram::new_with_bounds(1, 60 * 1_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!("3 digits is valid")))
}

/// A thread's statistics and its line to the collector.
struct Collector {
    scanner: ws::Scanner,
    interval: Interval,
    second: u64,
    next_tick: Instant,
    start: Instant,
    tx: Sender<Msg>,
    /// Completions not yet added to the shared progress counter.
    unpublished: u64,
    failed_connections: u64,
    mismatched: u64,
    untokened: u64,
    token_missing: u64,
    retries: u64,
    last_completion: Instant,
    /// `--save-at`: the save's window, and latencies during it and outside.
    save: Option<(Arc<SaveWindow>, SplitLatency)>,
}

impl Collector {
    fn record(&mut self, now: Instant, latency: Duration, errors: u64) {
        self.interval.ops += 1;
        self.interval.errors += errors;
        self.unpublished += 1;
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.interval.hist.saturating_record(ns);
        if let Some((window, hists)) = &mut self.save {
            let during = window.overlaps(now.checked_sub(latency).unwrap_or(now), now);
            hists[usize::from(!during)].saturating_record(ns);
        }
        self.last_completion = now.max(self.last_completion);
    }

    fn done(&mut self) -> Msg {
        Msg::Done {
            at: self.last_completion,
            failed_connections: self.failed_connections,
            mismatched: self.mismatched,
            untokened: self.untokened,
            token_missing: self.token_missing,
            retries: self.retries,
            save: self.save.take().map(|(_, hists)| hists),
        }
    }

    /// Hands finished seconds to the collector.
    fn tick(&mut self, now: Instant) {
        while now >= self.next_tick {
            self.send_interval();
            self.second += 1;
            self.next_tick = self.start + Duration::from_secs(self.second + 1);
        }
    }

    fn send_interval(&mut self) {
        let i = std::mem::replace(&mut self.interval, Interval::new());
        if i.ops > 0 || i.errors > 0 {
            // The collector outlives every thread; a closed channel only
            // means the run is being torn down.
            let _ = self.tx.send(Msg::Tick {
                second: self.second,
                ops: i.ops,
                errors: i.errors,
                hist: i.hist,
            });
        }
    }
}

/// Runs one phase on this thread's connections; returns them for the next.
pub fn run_thread(mut conns: Vec<Conn>, plan: &Plan, tx: Sender<Msg>) -> Vec<Conn> {
    let mut c = Collector {
        scanner: ws::Scanner::default(),
        interval: Interval::new(),
        second: 0,
        next_tick: plan.start + Duration::from_secs(1),
        start: plan.start,
        tx,
        unpublished: 0,
        failed_connections: 0,
        mismatched: 0,
        untokened: 0,
        token_missing: 0,
        retries: 0,
        last_completion: plan.start,
        save: plan.save.as_ref().map(|w| {
            let hists = Box::new([new_histogram(), new_histogram()]);
            (Arc::clone(w), hists)
        }),
    };
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(_) => {
            for conn in &mut conns {
                conn.fail(&mut c);
            }
            c.send_interval();
            c.last_completion = Instant::now();
            let done = c.done();
            let _ = c.tx.send(done);
            return conns;
        }
    };
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.prepare(plan);
        let registered = conn.stream.as_mut().map(|s| {
            poll.registry().register(
                s.socket(),
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
        });
        if let Some(Err(_)) = registered {
            conn.fail(&mut c);
        }
    }
    const TIMER: Token = Token(usize::MAX);
    let mut timer = match plan.interval {
        Some(_) => Timer::new(poll.registry(), TIMER).ok(),
        None => None,
    };
    let mut events = Events::with_capacity(1024);
    let now = Instant::now();
    for conn in &mut conns {
        // Bytes that came with the handshake, or were left by the last phase.
        conn.handle_replies(now, plan, &mut c);
        conn.fill(now, plan, &mut c);
        conn.flush(&mut c);
    }
    let mut next_check = now;
    loop {
        let now = Instant::now();
        if now >= next_check {
            next_check = now + Duration::from_millis(50);
            for conn in &mut conns {
                if conn.alive()
                    && conn.busy() > 0
                    && now.saturating_duration_since(conn.last_progress) > plan.timeout
                {
                    conn.fail(&mut c);
                }
            }
            if let Some(p) = &plan.progress {
                p.fetch_add(std::mem::take(&mut c.unpublished), Ordering::Relaxed);
            }
            if conns.iter().all(|k| k.finished(now, plan)) {
                break;
            }
        }
        c.tick(now);
        let mut wake = next_check.min(c.next_tick);
        if let Some(d) = plan.deadline
            && d > now
        {
            wake = wake.min(d);
        }
        if plan.interval.is_some() {
            for conn in &conns {
                // Only sends that will happen: a send due after the deadline
                // never does, and must not keep the thread spinning.
                if conn.alive()
                    && conn.quota > 0
                    && !conn.free.is_empty()
                    && plan.deadline.is_none_or(|d| conn.next_send < d)
                {
                    wake = wake.min(conn.next_send);
                }
            }
            if let Some(t) = timer.as_mut()
                && t.arm(wake, now).is_err()
            {
                timer = None;
            }
        }
        // With the timer armed, the poll timeout is only a fallback.
        let timeout = wake.saturating_duration_since(now)
            + if timer.is_some() {
                Duration::from_millis(1)
            } else {
                Duration::ZERO
            };
        if let Err(e) = poll.poll(&mut events, Some(timeout))
            && e.kind() != io::ErrorKind::Interrupted
        {
            for conn in &mut conns {
                conn.fail(&mut c);
            }
            break;
        }
        for ev in events.iter() {
            if ev.token() == TIMER {
                if let Some(t) = timer.as_mut() {
                    t.fired();
                }
                continue;
            }
            let Some(conn) = conns.get_mut(ev.token().0) else {
                continue;
            };
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                conn.on_readable(plan, &mut c);
            }
            if plan.interval.is_none() {
                conn.fill(Instant::now(), plan, &mut c);
            }
            conn.flush(&mut c);
        }
        if plan.interval.is_some() {
            let now = Instant::now();
            for conn in &mut conns {
                conn.fill(now, plan, &mut c);
                conn.flush(&mut c);
            }
        }
        if events.is_empty() {
            // An idle turn: maybe everything is done.
            next_check = Instant::now();
        }
    }
    for conn in &mut conns {
        if let Some(s) = conn.stream.as_mut() {
            let _ = poll.registry().deregister(s.socket());
        }
    }
    if let Some(p) = &plan.progress {
        p.fetch_add(std::mem::take(&mut c.unpublished), Ordering::Relaxed);
    }
    c.send_interval();
    let done = c.done();
    let _ = c.tx.send(done);
    conns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::MAX_MEMBERS;

    fn expect(check: Check, reply: &'static [u8], tkn: Option<u64>) -> Expect {
        Expect {
            check,
            reply,
            tkn,
            version: None,
        }
    }

    fn judge(body: &str, e: Expect) -> Judged {
        judge_ws(&ws::Scanner::default(), body.as_bytes(), true, &e)
    }

    #[test]
    fn replies_are_judged_by_name_order_and_echoed_token() {
        let get = expect(Check::Ok, b"SH_GET_RSP", Some(7));
        let good = judge(r#"{"SH_GET_RSP":{"st":1,"tkn":7,"keys":{}}}"#, get);
        assert_eq!((good.ok, good.fault), (true, None));
        // An original NemesisDB server echoes no token for SH_GET/SH_SET:
        // still a success, and said so, not blamed on the order.
        let bare = judge(r#"{"SH_GET_RSP":{"st":1,"keys":{"user":"v"}}}"#, get);
        assert_eq!((bare.ok, bare.fault), (true, Some(Fault::NoToken)));
        let set = expect(Check::Ok, b"SH_SET_RSP", Some(7));
        let bare = judge(r#"{"SH_SET_RSP":{"st":1}}"#, set);
        assert_eq!((bare.ok, bare.fault), (true, Some(Fault::NoToken)));
        // The workload's own check still applies (lifecycle's SH_GET).
        let filled = expect(Check::Filled, b"SH_GET_RSP", Some(7));
        let bare = judge(
            r#"{"SH_GET_RSP":{"st":1,"keys":{"user":"v","cart":"v"}}}"#,
            filled,
        );
        assert_eq!((bare.ok, bare.fault), (true, Some(Fault::NoToken)));
        let half = judge(r#"{"SH_GET_RSP":{"st":1,"keys":{"user":"v"}}}"#, filled);
        assert!(!half.ok);
        // Another session's token, or another command: out of order.
        let other = judge(r#"{"SH_GET_RSP":{"st":1,"tkn":8,"keys":{}}}"#, get);
        assert_eq!((other.ok, other.fault), (false, Some(Fault::OtherToken)));
        let other = judge(r#"{"SH_SET_RSP":{"st":1,"tkn":7}}"#, get);
        assert_eq!((other.ok, other.fault), (false, Some(Fault::OtherCommand)));
        // A failure is an error, whatever it echoes.
        let failed = judge(r#"{"SH_GET_RSP":{"st":22}}"#, get);
        assert_eq!((failed.ok, failed.fault), (false, None));
        // A reply cut into fragments is no success.
        let e = ws::Scanner::default();
        let cut = judge_ws(&e, br#"{"SH_GET_RSP":{"st":1,"tkn":7}}"#, false, &get);
        assert!(!cut.ok);
    }

    #[test]
    fn checks_read_what_the_next_phase_needs() {
        let new = expect(Check::Token, b"SH_NEW_RSP", None);
        let j = judge(r#"{"SH_NEW_RSP":{"st":1,"tkn":"42"}}"#, new);
        assert_eq!((j.ok, j.token, j.fault), (true, Some(42), None));
        // SH_NEW's token is the new session: without it the reply fails,
        // and says so rather than blaming the order.
        let bare = judge(r#"{"SH_NEW_RSP":{"st":1}}"#, new);
        assert_eq!((bare.ok, bare.fault), (false, Some(Fault::TokenMissing)));
        // A refusal is an error of its own, whatever it carries.
        let refused = judge(r#"{"SH_NEW_RSP":{"st":22}}"#, new);
        assert_eq!((refused.ok, refused.fault), (false, None));
        let other = judge(r#"{"SH_GET_RSP":{"st":1,"tkn":42}}"#, new);
        assert_eq!((other.ok, other.fault), (false, Some(Fault::OtherCommand)));
        let touch = expect(Check::Ttl, b"SH_TOUCH_RSP", Some(3));
        assert!(
            judge(
                r#"{"SH_TOUCH_RSP":{"st":1,"tkn":3,"ttlMs":3600000}}"#,
                touch
            )
            .ok
        );
        assert!(!judge(r#"{"SH_TOUCH_RSP":{"st":1,"tkn":3,"ttlMs":-1}}"#, touch).ok);
        let get = expect(Check::Filled, b"SH_GET_RSP", Some(3));
        assert!(
            judge(
                r#"{"SH_GET_RSP":{"st":1,"tkn":3,"keys":{"user":"v","cart":"v"}}}"#,
                get
            )
            .ok
        );
        assert!(!judge(r#"{"SH_GET_RSP":{"st":1,"tkn":3,"keys":{}}}"#, get).ok);
        let end = expect(Check::Ended, b"SH_OWNER_END_RSP", None);
        assert!(judge(r#"{"SH_OWNER_END_RSP":{"st":1,"owner":"u1","cnt":5}}"#, end).ok);
        assert!(!judge(r#"{"SH_OWNER_END_RSP":{"st":1,"owner":"u1","cnt":0}}"#, end).ok);
    }

    #[test]
    fn incr_and_cas_replies() {
        let incr = expect(Check::Counter, b"SH_INCR_RSP", Some(3));
        let j = judge(
            r#"{"SH_INCR_RSP":{"st":1,"tkn":3,"key":"counter","value":8}}"#,
            incr,
        );
        assert_eq!((j.ok, j.fault, j.lost), (true, None, false));
        assert!(!judge(r#"{"SH_INCR_RSP":{"st":1,"tkn":3,"key":"counter"}}"#, incr).ok);
        assert!(!judge(r#"{"SH_INCR_RSP":{"st":43,"tkn":3}}"#, incr).ok);

        // The read hands on the version and the counter (absent: 0).
        let read = expect(Check::Read, b"SH_GET_RSP", Some(3));
        let j = judge(
            r#"{"SH_GET_RSP":{"st":1,"tkn":3,"keys":{"counter":12},"version":40}}"#,
            read,
        );
        assert_eq!((j.ok, j.read), (true, Some((40, 12))));
        let j = judge(
            r#"{"SH_GET_RSP":{"st":1,"tkn":3,"keys":{},"version":1}}"#,
            read,
        );
        assert_eq!((j.ok, j.read), (true, Some((1, 0))));
        // No version (a server without withVersion), or a counter that is no
        // unsigned integer: an error, nothing handed on.
        let j = judge(
            r#"{"SH_GET_RSP":{"st":1,"tkn":3,"keys":{"counter":1}}}"#,
            read,
        );
        assert_eq!((j.ok, j.read), (false, None));
        let j = judge(
            r#"{"SH_GET_RSP":{"st":1,"tkn":3,"keys":{"counter":"1"},"version":2}}"#,
            read,
        );
        assert_eq!((j.ok, j.read), (false, None));
        let j = judge(
            r#"{"SH_GET_RSP":{"st":1,"tkn":4,"keys":{},"version":2}}"#,
            read,
        );
        assert_eq!(
            (j.ok, j.fault, j.read),
            (false, Some(Fault::OtherToken), None)
        );

        // The write: a win moves the version on by exactly one; a loss (104)
        // reports another version and is retried, not counted as an error.
        let write = Expect {
            version: Some(40),
            ..expect(Check::Swapped, b"SH_SET_RSP", Some(3))
        };
        let won = judge(r#"{"SH_SET_RSP":{"st":1,"tkn":3,"version":41}}"#, write);
        assert_eq!((won.ok, won.lost), (true, false));
        assert!(!judge(r#"{"SH_SET_RSP":{"st":1,"tkn":3,"version":43}}"#, write).ok);
        assert!(!judge(r#"{"SH_SET_RSP":{"st":1,"tkn":3}}"#, write).ok);
        let lost = judge(r#"{"SH_SET_RSP":{"st":104,"tkn":3,"version":42}}"#, write);
        assert_eq!((lost.ok, lost.lost), (true, true));
        let odd = judge(r#"{"SH_SET_RSP":{"st":104,"tkn":3,"version":40}}"#, write);
        assert_eq!((odd.ok, odd.lost), (false, false));
        let other = judge(r#"{"SH_SET_RSP":{"st":104,"tkn":5,"version":42}}"#, write);
        assert_eq!((other.ok, other.lost), (false, false));
        // 104 is a loss for a compare-and-set only.
        let set = expect(Check::Ok, b"SH_SET_RSP", Some(3));
        let j = judge(r#"{"SH_SET_RSP":{"st":104,"tkn":3,"version":42}}"#, set);
        assert_eq!((j.ok, j.lost), (false, false));

        assert_eq!(redis_counter(b"$-1\r\n"), Some(0));
        assert_eq!(redis_counter(b"$3\r\n123\r\n"), Some(123));
        assert_eq!(redis_counter(b"$2\r\n-1\r\n"), None);
        assert_eq!(redis_counter(b":5\r\n"), None);
    }

    #[test]
    fn smembers_lists_our_sessions_only() {
        let mut carry = Carry::default();
        assert!(members(b"*2\r\n$4\r\nls:5\r\n$4\r\nls:9\r\n", &mut carry));
        assert_eq!(carry.members(), [5, 9]);
        assert!(!members(b"*0\r\n", &mut Carry::default()));
        assert!(!members(b"*1\r\n$3\r\nabc\r\n", &mut Carry::default()));
        let mut many = format!("*{}\r\n", MAX_MEMBERS + 1);
        for i in 0..=MAX_MEMBERS {
            many.push_str(&format!("$4\r\nls:{}\r\n", i % 10));
        }
        assert!(!members(many.as_bytes(), &mut Carry::default()));
    }
}
