//! The router: what one shard does with a request once it is read, and with
//! what other shards send it. It owns the shard's sessions and decides, for
//! every command, where it runs: here, on the shard that owns the session
//! (a message there and the answer back), or on every shard (a fan-out whose
//! parts are gathered here). It never touches a socket or reads a clock: the
//! event loop (`shard`) gives it the time, takes its messages for other
//! shards ([`Router::take_outbox`]), and hands its answers to connections
//! ([`Replies`]). The in-process [`LocalDispatcher`] drives the same code
//! with no sockets at all, for the fuzzers and the property tests.
//!
//! # Layout
//! - `mod.rs`: decode, dispatch, route, fan out, gather, answer.
//! - `exec`: single-session commands on the owning shard's store.
//! - `gather`: fan-out commands in progress and their answers.
//! - `persistence`: this shard's side of `SH_SAVE` / `SH_LOAD`.
//! - `harness`: [`LocalDispatcher`], shards in one thread, no sockets.

mod durability;
mod events;
mod exec;
mod gather;
mod harness;
mod persistence;

pub use durability::{LogSettings, SnapshotSchedule};
pub use harness::LocalDispatcher;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::Rng as _;
use rand::rngs::StdRng;
use slab::Slab;

use crate::domain::{NewSession, Token};
use crate::mesh::{
    Envelope, Part, PartResult, PostBack, ReplyBatch, ShardCounts, ShardId, Ticket, shard_of,
    shard_of_owner,
};

use crate::metrics::{RequestFigures, ShardFigures, SnapshotFigures};
use crate::net::connection::Incoming;
use crate::persist::SessionRecord;
use crate::protocol::answer;
use crate::protocol::request::{reject_binary, reject_not_utf8};
use crate::protocol::{
    Command, CommandName, Rejection, RequestParser, Role, Status, encode_rejection, encode_status,
};
use crate::shared_names::SharedNames;
use crate::store::budget::MemoryBudget;
use crate::store::{Millis, Reclaimed, SessionStore};
use gather::{Gather, GatherKind};
use persistence::PersistJobs;

/// Sessions background expiry may settle per turn: a few milliseconds of
/// work at most, so requests never wait long behind a mass expiry, while a
/// million sessions due together are still gone well within a second.
pub const EXPIRY_BUDGET: usize = 4096;

/// Where the router's answers go: the shard's connections (or a harness's
/// collector). A ticket whose connection has gone is dropped quietly.
pub trait Replies {
    /// Hands `response` to the request `ticket` names; copied only if it
    /// must wait for earlier answers on its connection.
    fn answer(&mut self, ticket: Ticket, response: &[u8]);

    /// Writes a message no request asked for (an event) on the connection
    /// of `ticket`, after the answers it already owes; false when that
    /// connection is gone.
    fn push(&mut self, ticket: Ticket, message: Vec<u8>) -> bool;

    /// Whether the connection of `ticket` has taken most of its output
    /// (room for more events); None when it is gone.
    fn has_room(&self, ticket: Ticket) -> Option<bool>;

    /// [`Replies::answer`] for a response already owned (from another shard).
    fn answer_owned(&mut self, ticket: Ticket, response: Vec<u8>) {
        self.answer(ticket, &response);
    }

    /// Open connections on this shard, for `SV_INFO`.
    fn connections(&self) -> u64;

    /// Hands an HTTP endpoint's answer (head and body) to the connection
    /// that asked; not counted as a command's answer.
    fn answer_http(&mut self, ticket: Ticket, response: Vec<u8>) {
        self.answer_owned(ticket, response);
    }

    /// This shard's request figures, for a scrape.
    fn request_figures(&self) -> RequestFigures {
        RequestFigures::default()
    }
}

/// What a router needs to know about the server, fixed at start-up.
#[derive(Clone)]
pub struct RouterConfig {
    pub id: ShardId,
    pub shards: usize,
    /// The server-wide memory limit, shared by every shard's store (None:
    /// no limit). A store borrows from it in chunks, so a request only
    /// touches it when its shard's reservation runs out.
    pub memory: Option<Arc<MemoryBudget>>,
    /// Where snapshots live; None: persistence is off (`SH_SAVE` -> 14).
    pub persist: Option<PathBuf>,
    pub names: Arc<SharedNames>,
    /// Set (for good) once a load put a session with an owner on a shard
    /// other than its owner's (the shard count changed since the save):
    /// from then on owner commands ask every shard, not just the owner's.
    pub owners_scattered: Arc<AtomicBool>,
    /// Wall-clock time (ms since the Unix epoch) at shard-clock 0.
    pub wall_epoch_ms: u64,
    /// This run of the server, in event cursors: a cursor of an earlier
    /// run is recognised as such.
    pub instance: u64,
    /// The largest message: bounds the keys copied into an event.
    pub max_payload: usize,
    /// Events each shard keeps for subscribers.
    pub event_retention: usize,
    /// Bytes of events a shard may send one subscription before its
    /// connection has read them: with every shard's in flight, a subscriber
    /// never has more than its output limit unread.
    pub event_credit: usize,
    /// Periodic snapshots, on the shard that starts them.
    pub snapshots: Option<SnapshotSchedule>,
}

impl RouterConfig {
    /// `--max-memory`, server-wide (0: none).
    pub fn max_memory(&self) -> u64 {
        self.memory.as_ref().map_or(0, |b| b.limit())
    }

    /// A restored session whose owner's shard is another one: owner
    /// commands must ask every shard from now on.
    fn note_owner_placement(&self, record: &SessionRecord) {
        if let Some(owner) = &record.owner
            && shard_of_owner(owner, self.shards) != self.id
        {
            self.owners_scattered.store(true, Ordering::Relaxed);
        }
    }
}

/// Where a part's result goes: a gather on this shard, or another shard's.
#[derive(Copy, Clone, Debug)]
enum PartReply {
    Local { gather: usize },
    Remote { from: ShardId, gather: usize },
}

/// How many sessions and keys a start-up load added to one shard.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub sessions: u64,
    pub keys: u64,
}

pub struct Router {
    config: RouterConfig,
    store: SessionStore,
    /// Decodes requests, reusing its buffers from one to the next.
    parser: RequestParser,
    /// Token source: a CSPRNG seeded by the OS (or a fixed seed in tests).
    rng: StdRng,
    /// Fan-outs this shard started and is gathering.
    gathers: Slab<Gather>,
    /// Messages for each shard, sent as one batch at the end of the turn.
    outbox: Vec<Vec<Envelope>>,
    /// Responses to other shards' forwarded requests, by asking shard;
    /// they join the outbox when it is taken.
    reply_batches: Vec<ReplyBatch>,
    /// How helper threads post their results back to a shard.
    post: Arc<dyn PostBack>,
    /// Where responses computed here are built (see `answer_here`).
    reply: Vec<u8>,
    /// The time of the current turn, in ms since the server's epoch.
    now: Millis,
    /// `SessionNotExist` answers given: a rising count can mean someone is
    /// guessing tokens.
    session_not_exist: u64,
    /// Requests sent to the shard that owns their session.
    cross_shard_requests: u64,
    /// Snapshots this shard started, for the metrics.
    snapshot_figures: SnapshotFigures,
    /// Background expiry ran out of budget: more is due right now.
    expiry_pending: bool,
    /// Count requests waiting for background expiry to catch up, so they
    /// neither count expired sessions nor stall the shard to settle them.
    deferred_counts: Vec<PartReply>,
    /// Saves and loads under way on this shard.
    persist: PersistJobs,
    /// Event subscriptions: of this shard's connections, and positions in
    /// this shard's ring.
    events: events::EventSubscriptions,
    /// The change log, answers waiting for it, periodic snapshots.
    durability: durability::Durability,
}

impl Router {
    pub fn new(config: RouterConfig, rng: StdRng, post: Arc<dyn PostBack>, now: Millis) -> Self {
        let mut store = SessionStore::new(config.names.clone());
        store.set_wall_epoch(config.wall_epoch_ms);
        store.set_event_retention(config.event_retention);
        store.set_memory_budget(config.memory.clone());
        Router {
            outbox: (0..config.shards).map(|_| Vec::new()).collect(),
            reply_batches: (0..config.shards).map(|_| ReplyBatch::default()).collect(),
            config,
            store,
            parser: RequestParser::default(),
            rng,
            gathers: Slab::new(),
            post,
            reply: Vec::with_capacity(4096),
            now,
            session_not_exist: 0,
            cross_shard_requests: 0,
            snapshot_figures: SnapshotFigures::default(),
            expiry_pending: false,
            deferred_counts: Vec::new(),
            persist: PersistJobs::default(),
            events: events::EventSubscriptions::default(),
            durability: durability::Durability::default(),
        }
    }

    /// Adds sessions loaded at start-up (all owned by this shard), before
    /// serving; `keep_deadlines` (recovery) keeps their idle deadlines.
    pub fn restore(&mut self, records: Vec<SessionRecord>, keep_deadlines: bool) -> Restored {
        let mut restored = Restored::default();
        for record in records {
            self.config.note_owner_placement(&record);
            if let Some(keys) = self.store.restore(record, self.now, keep_deadlines) {
                restored.sessions += 1;
                restored.keys += keys;
            }
        }
        // Shards restore one after another: what this one borrowed and
        // does not use must be in the pool for the next.
        self.store.trim_memory();
        // Logged loads go to the log writer now: an idle shard may not
        // run a turn for a long time.
        self.flush_log();
        restored
    }

    /// The time for everything until the next call, in ms since the
    /// server's epoch.
    pub fn set_now(&mut self, now: Millis) {
        self.now = now;
    }

    /// Decodes one message into a command (or the rejection to answer).
    pub fn decode(&mut self, incoming: Incoming, message: &[u8]) -> Result<Command, Rejection> {
        match incoming {
            Incoming::Text => self.parser.parse(message),
            Incoming::Binary => Err(reject_binary()),
            Incoming::InvalidUtf8 => Err(reject_not_utf8()),
        }
    }

    /// Answers a request: runs it here, or sends it (or its parts) where
    /// it must run.
    pub fn dispatch(
        &mut self,
        ticket: Ticket,
        request: Result<Command, Rejection>,
        replies: &mut dyn Replies,
    ) {
        let command = match request {
            Ok(command) => command,
            Err(rejection) => {
                self.answer_here(ticket, replies, |_, out| encode_rejection(out, &rejection));
                return;
            }
        };
        match command {
            Command::New(new) => self.new_session(ticket, new, replies),
            Command::Open { ref name, .. } => match self.config.names.lookup(name) {
                Some(tkn) => self.route(ticket, tkn, command, replies),
                None => self.answer_here(ticket, replies, |_, out| {
                    encode_status(out, CommandName::Open, Status::SessionOpenFail, None, None)
                }),
            },
            Command::OwnerSessions { owner } if self.owners_scattered() => {
                let parts = (0..self.config.shards)
                    .map(|s| (s, Part::OwnerSessions(owner.clone())))
                    .collect();
                let kind = GatherKind::OwnerSessions {
                    owner,
                    found: Vec::new(),
                };
                self.fan_out(ticket, kind, parts, replies);
            }
            Command::OwnerEnd { owner, except } if self.owners_scattered() => {
                let parts = (0..self.config.shards)
                    .map(|s| {
                        let owner = owner.clone();
                        (s, Part::OwnerEnd { owner, except })
                    })
                    .collect();
                let kind = GatherKind::OwnerEnd { owner, ended: 0 };
                self.fan_out(ticket, kind, parts, replies);
            }
            Command::OwnerSessions { .. } | Command::OwnerEnd { .. } => {
                let owner = shard_of_owner(command.owner().unwrap_or_default(), self.config.shards);
                self.run_on(owner, ticket, command, replies);
            }
            Command::EndAll => {
                self.fan_out_all(ticket, GatherKind::end_all(), || Part::EndAll, replies)
            }
            Command::InfoAll => {
                self.fan_out_all(ticket, GatherKind::info_all(), || Part::Counts, replies)
            }
            Command::ServerInfo => {
                self.fan_out_all(ticket, GatherKind::server_info(), || Part::Counts, replies)
            }
            Command::Exists { tkns } => {
                let shards = self.config.shards;
                let mut per_shard: Vec<Vec<(u32, Token)>> = vec![Vec::new(); shards];
                for (i, &tkn) in tkns.iter().enumerate() {
                    per_shard[shard_of(tkn, shards)].push((i as u32, tkn));
                }
                let parts = per_shard
                    .into_iter()
                    .enumerate()
                    .filter(|(_, list)| !list.is_empty())
                    .map(|(shard, list)| (shard, Part::Exists(list)))
                    .collect();
                self.fan_out(ticket, GatherKind::exists(tkns), parts, replies);
            }
            Command::Save { name, tkns } => match self.config.persist.clone() {
                Some(root) => self.start_save(Some(ticket), &root, name, tkns, replies),
                None => self.persistence_disabled(ticket, CommandName::Save, replies),
            },
            Command::Load { name } => match self.config.persist.clone() {
                Some(root) => self.start_load(ticket, &root, name, replies),
                None => self.persistence_disabled(ticket, CommandName::Load, replies),
            },
            Command::Subscribe { filter, after } => self.subscribe(ticket, filter, after, replies),
            Command::Unsubscribe => self.unsubscribe(ticket, replies),
            // Reaches the router only on a server without users (the shard
            // checks credentials when there are some): anyone is admin.
            Command::Auth { user, .. } => self.answer_here(ticket, replies, |_, out| {
                answer::authenticated(out, &user, Role::Admin.name())
            }),
            _ => match command.token() {
                Some(tkn) => self.route(ticket, tkn, command, replies),
                None => {
                    // Every command is covered above; answer rather than drop.
                    let name = command.kind();
                    self.answer_here(ticket, replies, |_, out| {
                        encode_status(out, name, Status::Unknown, None, None)
                    });
                }
            },
        }
    }

    /// Handles what another shard (or a helper thread) sent this one.
    pub fn receive(&mut self, batch: Vec<Envelope>, replies: &mut dyn Replies) {
        for envelope in batch {
            match envelope {
                Envelope::Call {
                    from,
                    ticket,
                    command,
                } => self.answer_call(from, ticket, command),
                Envelope::Reply { ticket, response } => replies.answer_owned(ticket, response),
                Envelope::Replies(batch) => {
                    for (ticket, response) in batch.iter() {
                        replies.answer(ticket, response);
                    }
                }
                Envelope::Part { from, gather, part } => {
                    self.answer_part(PartReply::Remote { from, gather }, part, replies);
                }
                Envelope::PartDone { gather, result } => self.merge_part(gather, result, replies),
                Envelope::SaveVersionReady {
                    ticket,
                    name,
                    tkns,
                    result,
                } => self.save_version_ready(ticket, name, tkns, *result, replies),
                Envelope::LoadRead { gather, result } => {
                    self.loaded_from_disk(gather, result, replies)
                }
                Envelope::SaveSettled { gather, result } => {
                    self.persist.commit_settled();
                    if let Some(g) = self.gathers.get_mut(gather) {
                        g.save_settled(result);
                        self.finish_gather(gather, replies);
                    }
                }
                envelope @ (Envelope::Events { .. }
                | Envelope::EventCredit { .. }
                | Envelope::Unsubscribe { .. }) => self.receive_events(envelope, replies),
                Envelope::LogSynced(seq) => self.log_report(Ok(seq), replies),
                Envelope::LogFailed(why) => self.log_report(Err(why), replies),
            }
        }
    }

    /// The end of a turn's work: background expiry within its budget, a
    /// step of any save or load, and counts that were waiting for expiry.
    pub fn end_turn(&mut self, replies: &mut dyn Replies) {
        self.expiry_pending = self.store.expire_due(self.now, EXPIRY_BUDGET);
        self.snapshot_turn(replies);
        self.persistence_step(replies);
        self.events_turn(replies);
        if !self.expiry_pending {
            for reply in std::mem::take(&mut self.deferred_counts) {
                self.answer_part(reply, Part::Counts, replies);
            }
        }
        // Last: everything this turn changed.
        self.end_turn_log();
    }

    /// After the turn's output went to the sockets: subscriptions whose
    /// connection took its events give their credit back now (a connection
    /// that emptied into the kernel sends no further wake-up).
    pub fn after_flush(&mut self, replies: &mut dyn Replies) {
        self.return_event_credit(replies);
    }

    /// Whether work is waiting for the next turn (so the loop must not sleep).
    pub fn has_work(&self) -> bool {
        self.expiry_pending || self.persist.has_work() || self.events.pending()
    }

    /// Housekeeping: shrinks the store's tables if its population fell.
    pub fn reclaim_memory(&mut self) -> Reclaimed {
        self.store.reclaim()
    }

    /// Whether housekeeping may have memory to give back.
    pub fn may_reclaim(&self) -> bool {
        self.store.may_reclaim()
    }

    /// Whether the shard may exit: no save or load, no commit in flight,
    /// no answer waiting for the disk.
    pub fn is_idle(&self) -> bool {
        !self.persist.busy() && !self.persist.committing() && !self.durability.holding()
    }

    /// The next session deadline or periodic snapshot, for the event
    /// loop's sleep.
    pub fn next_deadline(&self) -> Option<Millis> {
        [
            self.store.next_expiry(),
            self.next_snapshot(),
            self.log_hand_off_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// This turn's messages for other shards, one batch per shard.
    pub fn take_outbox(&mut self) -> impl Iterator<Item = (ShardId, Vec<Envelope>)> + '_ {
        for (outbox, replies) in self.outbox.iter_mut().zip(&mut self.reply_batches) {
            if !replies.is_empty() {
                let next = ReplyBatch::like(replies);
                outbox.push(Envelope::Replies(std::mem::replace(replies, next)));
            }
        }
        // The next turn's batch starts with room for as many as this one
        // carried: a steady stream never regrows it from nothing, and a
        // burst's size lasts one turn, not for good.
        self.outbox
            .iter_mut()
            .enumerate()
            .filter(|(_, batch)| !batch.is_empty())
            .map(|(shard, batch)| {
                let next = Vec::with_capacity(batch.len());
                (shard, std::mem::replace(batch, next))
            })
    }

    /// Runs a request another shard forwarded here and packs its response
    /// into the batch going back there.
    fn answer_call(&mut self, from: ShardId, ticket: Ticket, command: Command) {
        let Some(batch) = self.reply_batches.get_mut(from) else {
            return;
        };
        let mut batch = std::mem::take(batch);
        let before = self.store.log_seq();
        self.run_owned(command, batch.open());
        if self.must_hold(before) {
            let response = batch.unseal();
            self.hold(durability::Held::Send(
                from,
                Envelope::Reply { ticket, response },
            ));
        } else {
            batch.seal(ticket);
        }
        if let Some(slot) = self.reply_batches.get_mut(from) {
            *slot = batch;
        }
    }

    /// Stops: abandons a save in progress, writes what the log holds (the
    /// writer fsyncs it as it ends) and hands back the sessions (for a save
    /// on shutdown).
    pub fn into_store(mut self) -> SessionStore {
        self.persist.abort();
        self.flush_log();
        self.durability = durability::Durability::default();
        self.store
    }

    fn owners_scattered(&self) -> bool {
        self.config.owners_scattered.load(Ordering::Relaxed)
    }

    /// Runs a single-session command on the shard that owns its token.
    fn route(&mut self, ticket: Ticket, tkn: Token, command: Command, replies: &mut dyn Replies) {
        self.run_on(shard_of(tkn, self.config.shards), ticket, command, replies);
    }

    /// Runs a command on shard `owner`: here, or by message.
    fn run_on(
        &mut self,
        owner: ShardId,
        ticket: Ticket,
        command: Command,
        replies: &mut dyn Replies,
    ) {
        if owner == self.config.id {
            self.answer_here(ticket, replies, |router, out| {
                router.run_owned(command, out)
            });
        } else {
            self.cross_shard_requests += 1;
            self.outbox[owner].push(Envelope::Call {
                from: self.config.id,
                ticket,
                command,
            });
        }
    }

    /// Runs a command whose session (or owner) this shard owns.
    fn run_owned(&mut self, command: Command, out: &mut Vec<u8>) {
        let status = match command {
            Command::Open {
                name,
                report_version,
            } => exec::open_session(
                &mut self.store,
                &self.config.names,
                &name,
                report_version,
                self.now,
                out,
            ),
            Command::New(new) => {
                self.create_session(new, out);
                return;
            }
            Command::OwnerSessions { owner } => {
                let found = self.store.owner_sessions(&owner, self.now);
                answer::owner_sessions(out, &owner, found.into_iter().map(|(_, t)| t));
                return;
            }
            Command::OwnerEnd { owner, except } => {
                let ended = self.store.owner_end(&owner, except, self.now);
                answer::owner_ended(out, &owner, ended);
                return;
            }
            command => exec::run(&mut self.store, command, self.now, out),
        };
        if status == Status::SessionNotExist {
            self.session_not_exist += 1;
        }
    }

    /// `SH_NEW`: created here (or on its owner's shard), once a session on
    /// another shard that holds its shared name has settled its expiry (the
    /// name may be free once it is applied).
    fn new_session(&mut self, ticket: Ticket, new: NewSession, replies: &mut dyn Replies) {
        let shards = self.config.shards;
        // Where the session will be created: here, or its owner's shard.
        let creator = new
            .owner
            .as_deref()
            .map_or(self.config.id, |o| shard_of_owner(o, shards));
        let holder = new
            .name
            .as_deref()
            .filter(|_| new.shared)
            .and_then(|name| self.config.names.lookup(name))
            .filter(|&tkn| shard_of(tkn, shards) != creator);
        match holder {
            Some(tkn) => {
                let parts = vec![(shard_of(tkn, shards), Part::Settle(tkn))];
                self.fan_out(ticket, GatherKind::NewShared(new), parts, replies);
            }
            None => self.create_where_owned(ticket, new, replies),
        }
    }

    /// Creates a session here, or on its owner's shard (every session of an
    /// owner lives on one shard).
    fn create_where_owned(&mut self, ticket: Ticket, new: NewSession, replies: &mut dyn Replies) {
        match new
            .owner
            .as_deref()
            .map(|o| shard_of_owner(o, self.config.shards))
        {
            Some(shard) if shard != self.config.id => {
                self.run_on(shard, ticket, Command::New(new), replies)
            }
            _ => self.answer_here(ticket, replies, |router, out| {
                router.create_session(new, out)
            }),
        }
    }

    fn create_session(&mut self, new: NewSession, out: &mut Vec<u8>) {
        let (id, shards) = (self.config.id, self.config.shards);
        let rng = &mut self.rng;
        // Draw until the token lands on this shard: the creator's later
        // requests then never cross shards.
        let mint = || loop {
            let tkn = rng.next_u64();
            if shard_of(tkn, shards) == id {
                break tkn;
            }
        };
        exec::new_session(
            &mut self.store,
            &self.config.names,
            mint,
            new,
            self.now,
            out,
        );
    }

    fn fan_out_all(
        &mut self,
        ticket: Ticket,
        kind: GatherKind,
        part: fn() -> Part,
        replies: &mut dyn Replies,
    ) {
        let parts = (0..self.config.shards).map(|s| (s, part())).collect();
        self.fan_out(ticket, kind, parts, replies);
    }

    /// Sends each part to its shard (running ours directly) and gathers.
    fn fan_out(
        &mut self,
        ticket: Ticket,
        kind: GatherKind,
        parts: Vec<(ShardId, Part)>,
        replies: &mut dyn Replies,
    ) {
        let gather = self
            .gathers
            .insert(Gather::new(Some(ticket), kind, parts.len()));
        self.send_parts(gather, parts, replies);
    }

    /// Sends each part of gather `gather` to its shard, running ours here.
    fn send_parts(
        &mut self,
        gather: usize,
        parts: Vec<(ShardId, Part)>,
        replies: &mut dyn Replies,
    ) {
        let mut local = Vec::new();
        for (shard, part) in parts {
            if shard == self.config.id {
                local.push(part);
            } else {
                self.outbox[shard].push(Envelope::Part {
                    from: self.config.id,
                    gather,
                    part,
                });
            }
        }
        for part in local {
            self.answer_part(PartReply::Local { gather }, part, replies);
        }
        // No parts at all (e.g. SH_EXISTS with no valid token).
        if self.gathers.get(gather).is_some_and(Gather::is_complete) {
            self.finish_gather(gather, replies);
        }
    }

    /// Runs a part here and sends its result where it belongs (or defers
    /// a count until background expiry has caught up).
    fn answer_part(&mut self, reply: PartReply, part: Part, replies: &mut dyn Replies) {
        let result = match part {
            Part::EndAll => PartResult::Ended(self.store.end_all(self.now)),
            Part::Counts => match self.store.live_counts(self.now, EXPIRY_BUDGET) {
                Some((sessions, keys)) => PartResult::Counts(ShardCounts {
                    sessions,
                    keys,
                    connections: replies.connections(),
                    memory_used: self.store.memory_used(),
                    session_not_exist: self.session_not_exist,
                }),
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
                self.begin_shard_save(reply, &dir, only, replies);
                return;
            }
            Part::Load(records) => {
                // Answered once every record is added, a batch per turn.
                self.persist.queue_load(reply, records);
                return;
            }
            Part::Settle(tkn) => {
                self.store.exists(tkn, self.now);
                PartResult::Settled
            }
            Part::OwnerSessions(owner) => {
                PartResult::OwnerSessions(self.store.owner_sessions(&owner, self.now))
            }
            Part::OwnerEnd { owner, except } => {
                PartResult::Ended(self.store.owner_end(&owner, except, self.now))
            }
            Part::Subscribe { sub, filter, after } => {
                self.register_subscriber(reply, sub, filter, after)
            }
            // Figures need no fsync: a scrape never waits on the disk.
            Part::Metrics => {
                let figures = PartResult::Metrics(Box::new(self.figures(replies)));
                return self.send_part_result(reply, figures, replies);
            }
        };
        self.send_part_result_durably(reply, result, replies);
    }

    fn send_part_result(
        &mut self,
        reply: PartReply,
        result: PartResult,
        replies: &mut dyn Replies,
    ) {
        match reply {
            PartReply::Local { gather } => self.merge_part(gather, result, replies),
            PartReply::Remote { from, gather } => {
                self.outbox[from].push(Envelope::PartDone { gather, result });
            }
        }
    }

    fn merge_part(&mut self, gather: usize, result: PartResult, replies: &mut dyn Replies) {
        let Some(g) = self.gathers.get_mut(gather) else {
            return;
        };
        g.merge(result);
        if g.is_complete() {
            self.finish_gather(gather, replies);
        }
    }

    fn finish_gather(&mut self, gather: usize, replies: &mut dyn Replies) {
        let mut g = self.gathers.remove(gather);
        if let Some(mut settlement) = g.take_save_settlement() {
            let upkeep = self.upkeep_after(settlement.dataset());
            settlement.set_context(self.durability.generation(), upkeep);
            // Back in the slab until the commit reports.
            let gather = self.gathers.insert(g);
            self.settle_save(gather, settlement, replies);
            return;
        }
        if let Some((started, committed)) = g.save_outcome() {
            self.note_snapshot(started, committed);
        }
        let Some(ticket) = g.ticket else {
            // The server's own: a periodic snapshot.
            self.snapshot_done(g.kind());
            return;
        };
        if let Some(new) = g.take_new_session() {
            self.create_where_owned(ticket, new, replies);
            return;
        }
        let server = gather::ServerFacts {
            shards: self.config.shards,
            persist_enabled: self.config.persist.is_some(),
            uptime_s: self.now / 1000,
            max_memory: self.config.max_memory(),
            instance: self.config.instance,
            wall_epoch_ms: self.config.wall_epoch_ms,
        };
        if g.is_metrics() {
            return replies.answer_http(ticket, g.encode(&server, self.now));
        }
        let subscription = g.subscription();
        replies.answer_owned(ticket, g.encode(&server, self.now));
        if let Some((sub, positions)) = subscription {
            self.subscription_answered(sub, positions, replies);
        }
    }

    /// Builds a response here, in a buffer reused from one to the next,
    /// and hands it to its connection.
    fn answer_here(
        &mut self,
        ticket: Ticket,
        replies: &mut dyn Replies,
        build: impl FnOnce(&mut Self, &mut Vec<u8>),
    ) {
        let mut out = std::mem::take(&mut self.reply);
        out.clear();
        let before = self.store.log_seq();
        build(self, &mut out);
        if self.must_hold(before) {
            self.hold(durability::Held::Answer(ticket, out.clone()));
        } else {
            replies.answer(ticket, &out);
        }
        self.reply = out;
    }

    /// A snapshot (periodic or `SH_SAVE`) this shard started has ended.
    fn note_snapshot(&mut self, started: Millis, committed: bool) {
        let figures = &mut self.snapshot_figures;
        if committed {
            figures
                .duration_ms
                .observe(self.now.saturating_sub(started));
            figures.last_success_ms = self.config.wall_epoch_ms + self.now;
        } else {
            figures.failures += 1;
        }
    }

    /// `GET /metrics`: gathers every shard's figures.
    pub fn scrape(&mut self, ticket: Ticket, replies: &mut dyn Replies) {
        let kind = GatherKind::Metrics(Vec::with_capacity(self.config.shards));
        self.fan_out_all(ticket, kind, || Part::Metrics, replies);
    }

    /// This shard's figures, as they are now.
    fn figures(&self, replies: &dyn Replies) -> ShardFigures {
        ShardFigures {
            shard: self.config.id,
            connections: replies.connections(),
            sessions: self.store.len() as u64,
            keys: self.store.key_count(),
            memory_used: self.store.memory_used(),
            requests: replies.request_figures(),
            expiry: self.store.expiry_figures().clone(),
            session_not_exist: self.session_not_exist,
            cross_shard_requests: self.cross_shard_requests,
            snapshots: self.snapshot_figures.clone(),
            log: self.log_figures(),
            event_subscribers: self.events.subscriber_count(),
            events_lost: self.events.lost_count(),
        }
    }

    /// Answers `SH_SAVE` / `SH_LOAD` when persistence is off.
    fn persistence_disabled(
        &mut self,
        ticket: Ticket,
        command: CommandName,
        replies: &mut dyn Replies,
    ) {
        let m = Some("persistence is disabled (start with --persist-path)");
        self.answer_here(ticket, replies, |_, out| {
            encode_status(out, command, Status::CommandDisabled, None, m)
        });
    }
}
