//! One shard's sessions. The store owns the sessions and their keys, keeps
//! the shard's totals, and runs expiry two ways: lazily on every access, so a
//! session past its deadline is never visible whatever background expiry has
//! done, and in the background from a timing wheel, a bounded batch per call,
//! so memory is freed soon after the deadline without stalling requests.
//!
//! It knows nothing of connections, shards or the wire format; time comes in
//! as milliseconds on the caller's monotonic clock, and the wheel ticks in
//! those same milliseconds, so a timer is due exactly when its session is.
//! Its only server-wide state is the memory budget it borrows from
//! ([`budget`]).

pub mod budget;
mod extras;
mod keymap;
#[cfg(test)]
mod log_test;
#[cfg(test)]
mod model_test;
#[cfg(test)]
mod owners_test;
mod reclaim;
mod snapshot;
mod table;
#[cfg(test)]
mod versions_test;

use std::sync::Arc;

use budget::{MemoryBudget, Reservation};
pub use extras::Extras;
use extras::{EXTRAS_OVERHEAD, ExtrasTable};
pub use keymap::KeyMap;
pub use reclaim::Reclaimed;
pub use snapshot::Chunk;
use snapshot::Snapshot;
use table::Sessions;

use crate::domain::{ExpirySettings, KeyValue, NewSession, Token};
use crate::events::{Event, EventKind, EventRing, Evicted, encode_keys};
use crate::expiry::{TimerKey, TimingWheel};
use crate::metrics::ExpiryFigures;
use crate::persist::log::{Batch, ChangeBuffer};
use crate::persist::{RecordHead, SessionRecord};
use crate::shared_names::SharedNames;

/// Milliseconds on the server's monotonic clock.
pub type Millis = u64;

#[derive(Debug)]
pub struct Session {
    pub tkn: Token,
    /// When the session (or its keys) expire next: the idle deadline, or
    /// the lifetime's end if earlier; moved by sliding expiry without
    /// touching the wheel.
    deadline: Millis,
    /// The keys, and the name given at creation (registered server-wide
    /// when shared), packed together.
    pub keys: KeyMap,
    /// Idle seconds; 0: no idle deadline (then it expires only if it has
    /// a lifetime).
    duration_s: u32,
    /// The session's one live wheel timer, if it expires. It may be due
    /// before `deadline` (the deadline slid since); when it fires, it is
    /// filed again.
    timer: TimerKey,
    /// Where its owner and lifetime are in the extras table, when
    /// `HAS_EXTRAS` (in the struct's padding: sessions without pay nothing).
    extras: u32,
    /// The low 24 bits of the session's version, little-endian; the bits
    /// above live in its extras once it passes 2^24 - 1 writes. Three bytes
    /// are what the 48 leave: a whole `u64` would make a session 56 bytes,
    /// 8 more for every session for a carry that a rare few ever make.
    version_low: [u8; 3],
    /// `SHARED`, the expiry flags, whether the session has extras (an
    /// owner, a lifetime, a version past 24 bits), and `SAVED`. Expiry is
    /// kept flat, not as an `Option<Expiry>` (24 bytes with padding), so a
    /// session takes 48 bytes instead of 56.
    flags: u8,
}

const SHARED: u8 = 1;
const DELETE_SESSION: u8 = 2;
const EXTEND_ON_SET_ADD: u8 = 4;
const EXTEND_ON_GET: u8 = 8;
/// The session has an entry in the extras table.
const HAS_EXTRAS: u8 = 16;
/// The session ends at its extras' `lifetime_end`; `deadline` is never later.
const HAS_LIFETIME: u8 = 32;
/// The snapshot under way holds this session already, or must not hold it
/// (created after it began). Set only while a full snapshot has not yet
/// reached the session's position: the walk clears it as it passes, so
/// with no snapshot under way it is clear on every session and beginning
/// one touches none (one bit does what a per-session epoch did).
const SAVED: u8 = 64;

/// The largest version the low bits hold; one more write carries into the
/// extras.
const VERSION_LOW_MAX: u32 = (1 << 24) - 1;
/// The largest version a session holds (24 bits here, 32 in its extras);
/// it stays there. Ten million writes a second take 228 years to reach it.
pub const VERSION_MAX: u64 = (1 << 56) - 1;

/// A session's expiry, as [`Session::expiry`] gives it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// Without the lifetime's length (`max_lifetime_s` is 0 here): that is
    /// in the session's extras.
    pub settings: ExpirySettings,
    /// The next deadline: the idle one, or the lifetime's end if earlier.
    pub deadline: Millis,
    timer: TimerKey,
    /// The session has an absolute end (in its extras).
    pub lifetime: bool,
}

impl Session {
    pub fn shared(&self) -> bool {
        self.flags & SHARED != 0
    }

    pub fn expiry(&self) -> Option<Expiry> {
        let lifetime = self.flags & HAS_LIFETIME != 0;
        (self.duration_s > 0 || lifetime).then_some(Expiry {
            settings: ExpirySettings::idle(
                self.duration_s,
                self.flags & DELETE_SESSION != 0,
                self.flags & EXTEND_ON_SET_ADD != 0,
                self.flags & EXTEND_ON_GET != 0,
            ),
            deadline: self.deadline,
            timer: self.timer,
            lifetime,
        })
    }

    /// Sets the expiry; None also forgets the lifetime (the session is
    /// about to go, its timer spent).
    fn set_expiry(&mut self, expiry: Option<Expiry>) {
        self.flags &= SHARED | HAS_EXTRAS | SAVED;
        let Some(e) = expiry else {
            self.duration_s = 0;
            return;
        };
        self.duration_s = e.settings.duration_s;
        self.deadline = e.deadline;
        self.timer = e.timer;
        for (on, flag) in [
            (e.lifetime, HAS_LIFETIME),
            (e.settings.delete_session, DELETE_SESSION),
            (e.settings.extend_on_set_add, EXTEND_ON_SET_ADD),
            (e.settings.extend_on_get, EXTEND_ON_GET),
        ] {
            if on {
                self.flags |= flag;
            }
        }
    }

    pub fn name(&self) -> Option<&str> {
        self.keys.name()
    }

    /// Its slot in the extras table, if it has an owner or a lifetime.
    fn extras_slot(&self) -> Option<u32> {
        (self.flags & HAS_EXTRAS != 0).then_some(self.extras)
    }

    fn version_low(&self) -> u32 {
        let [a, b, c] = self.version_low;
        u32::from_le_bytes([a, b, c, 0])
    }

    fn set_version_low(&mut self, low: u32) {
        let [a, b, c, _] = (low & VERSION_LOW_MAX).to_le_bytes();
        self.version_low = [a, b, c];
    }

    /// Counts one change to the keys. True when the low bits are full: the
    /// caller carries into the extras ([`SessionStore::carry_version`]).
    fn count_change(&mut self) -> bool {
        let low = self.version_low();
        if low == VERSION_LOW_MAX {
            return true;
        }
        self.set_version_low(low + 1);
        false
    }

    /// The whole version (its high bits are in `extras`, if it has any).
    fn version(&self, extras: &ExtrasTable) -> u64 {
        let high = self
            .extras_slot()
            .and_then(|slot| extras.get(slot))
            .map_or(0, |x| x.version_high);
        u64::from(high) << 24 | u64::from(self.version_low())
    }

    fn is_saved(&self) -> bool {
        self.flags & SAVED != 0
    }
}

impl Expiry {
    /// Whole seconds left, rounded up, never negative.
    pub fn remaining_s(&self, now: Millis) -> u64 {
        self.deadline.saturating_sub(now).div_ceil(1000)
    }
}

/// The next deadline after an access at `now`: idle (if the session has an
/// idle duration) or the lifetime's end, whichever comes first.
fn deadline_after(settings: ExpirySettings, now: Millis, lifetime_end: Option<Millis>) -> Millis {
    let idle = if settings.duration_s > 0 {
        now + duration_ms(settings)
    } else {
        Millis::MAX
    };
    idle.min(lifetime_end.unwrap_or(Millis::MAX))
}

/// The keys of a keys-only session expired at `deadline`, which counts as
/// "now" for its next deadline: `deadline + duration`, or as many periods on
/// as it takes to pass `now`. So when expiry runs (by the wheel, or lazily
/// on the next access) never changes what clients see.
fn next_period(deadline: Millis, settings: ExpirySettings, now: Millis) -> Millis {
    let period = duration_ms(settings);
    if period == 0 {
        // No idle deadline (lifetime only): its end is the lifetime's, and
        // callers end the session there; never divide by zero regardless.
        return Millis::MAX;
    }
    let periods = now.saturating_sub(deadline) / period + 1;
    deadline + periods * period
}

fn duration_ms(settings: ExpirySettings) -> Millis {
    u64::from(settings.duration_s) * 1000
}

/// Encodes `session` into `snapshot` (as it is now) and marks it saved.
fn save_into(snapshot: &mut Snapshot, session: &mut Session, extras: &ExtrasTable) {
    session.flags |= SAVED;
    let session = &*session;
    snapshot.save(
        session_extras(extras, session),
        session,
        session.version(extras),
    );
}

/// A session's extras, if it has any.
fn session_extras<'x>(extras: &'x ExtrasTable, session: &Session) -> Option<&'x Extras> {
    extras.get(session.extras_slot()?)
}

/// The absolute end of a session with a lifetime (from its extras).
fn lifetime_end(extras: &ExtrasTable, slot: Option<u32>, expiry: Expiry) -> Option<Millis> {
    if !expiry.lifetime {
        return None;
    }
    extras.get(slot?).map(|x| x.lifetime_end)
}

/// Why a command was not carried out. Nothing changed in either case.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No live session with that token.
    NoSession,
    /// The write would take the store past its memory limit.
    MemoryLimit,
    /// `SH_INCR` on a value that is not a JSON integer within i64.
    NotInteger,
    /// `SH_INCR` would leave the i64 range.
    Overflow,
    /// `ifVersion` named another version; this is the session's.
    VersionMismatch(u64),
}

pub use Refusal::NoSession;

/// Accounted bytes of a session beyond its name and keys: the map entry,
/// the session record and its timer. An estimate, applied the same way on
/// the way in and out, so the total always returns to zero.
const SESSION_OVERHEAD: u64 = 128;
/// Accounted bytes of a key beyond its name and value.
const KEY_OVERHEAD: u64 = 48;

/// Whether a request names a key more than once.
fn names_repeat(keys: &[KeyValue]) -> bool {
    const SCAN_MAX: usize = 16;
    if keys.len() <= SCAN_MAX {
        return keys
            .iter()
            .enumerate()
            .any(|(i, (name, _))| keys[..i].iter().any(|(seen, _)| seen == name));
    }
    let mut seen = ahash::AHashSet::with_capacity(keys.len());
    keys.iter().any(|(name, _)| !seen.insert(name))
}

fn entry_cost(key: &str, value: &[u8]) -> u64 {
    KEY_OVERHEAD + key.len() as u64 + value.len() as u64
}

fn keys_cost(keys: &KeyMap) -> u64 {
    keys.iter().map(|(k, v)| entry_cost(k, v)).sum()
}

fn session_cost(name: Option<&str>, keys: &KeyMap) -> u64 {
    SESSION_OVERHEAD + name.map_or(0, |n| n.len() as u64) + keys_cost(keys)
}

/// A stored value read as a JSON integer (`-?(0|[1-9][0-9]*)`) within
/// i64: None for anything else (floats, exponents, strings, bigger numbers).
fn json_i64(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    // ASCII digits with an optional sign: valid UTF-8, and i64's own
    // parser does the range check.
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// When an inserted session's idle period runs from: now, or (recovery)
/// a deadline it already had.
#[derive(Copy, Clone, Debug)]
struct Start {
    now: Millis,
    idle_deadline: Option<Millis>,
}

impl Start {
    fn now(now: Millis) -> Start {
        Start {
            now,
            idle_deadline: None,
        }
    }
}

/// Which access is happening, for sliding expiry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Get,
    SetAdd,
}

pub struct SessionStore {
    sessions: Sessions,
    /// Keys over all sessions here, kept so totals cost O(1).
    key_count: u64,
    /// Accounted bytes held (see `SESSION_OVERHEAD`).
    used_bytes: u64,
    /// `used_bytes` when `reclaim` last looked: keys freed without ending
    /// sessions (keys-only expiry, `SH_CLEAR`) count as a fall too.
    checked_used: u64,
    /// This store's share of the server-wide memory limit: growth past it
    /// borrows from the pool, and is refused when the pool is short.
    memory: Reservation,
    names: Arc<SharedNames>,
    /// One timer per session that expires; the timer's value is the token.
    wheel: TimingWheel,
    /// Reused buffer for the timers one background pass fires.
    fired: Vec<(u64, u64)>,
    /// The snapshot being taken, if any; one at a time.
    snapshot: Option<Snapshot>,
    /// Owners and lifetimes, for the sessions that have them.
    extras: ExtrasTable,
    /// Wall-clock time (ms since the Unix epoch) at shard-clock 0: creation
    /// times are kept and saved in wall-clock time.
    wall_epoch_ms: u64,
    /// This shard's session events (created, ended, expired), kept for
    /// subscribers whether or not any is listening: one may resume.
    events: EventRing,
    /// Copy a session's keys into its end and expiry events, up to this
    /// many bytes: set only while some subscriber asked for keys.
    event_keys: Option<usize>,
    /// Events the ring let go this turn, with their numbers, kept (only
    /// while subscribers are registered here) so each subscriber can count
    /// what it lost.
    evicted: Option<Vec<Evicted>>,
    /// Every change, as change-log records for this turn (None: no log).
    log: Option<ChangeBuffer>,
    /// Expiries by kind and how late they came, for the metrics.
    expiry_figures: ExpiryFigures,
}

/// A snapshot is already being taken on this shard.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotBusy;

impl SessionStore {
    pub fn new(names: Arc<SharedNames>) -> Self {
        SessionStore {
            sessions: Sessions::new(),
            key_count: 0,
            used_bytes: 0,
            checked_used: 0,
            memory: Reservation::default(),
            names,
            wheel: TimingWheel::new(0),
            fired: Vec::new(),
            snapshot: None,
            extras: ExtrasTable::default(),
            wall_epoch_ms: 0,
            events: EventRing::new(crate::events::DEFAULT_RETENTION),
            event_keys: None,
            evicted: None,
            log: None,
            expiry_figures: ExpiryFigures::default(),
        }
    }

    /// Records every change from now on, the first as `next_seq`.
    pub fn enable_log(&mut self, next_seq: u64) {
        self.log = Some(ChangeBuffer::new(next_seq));
    }

    /// The change-log records written since the last call; later ones go
    /// into `spare` when given (a buffer the log writer has emptied).
    pub fn take_log(&mut self, spare: Option<Vec<u8>>) -> Option<Batch> {
        self.log.as_mut()?.take(spare)
    }

    /// Bytes of change-log records waiting to be taken.
    pub fn log_pending(&self) -> usize {
        self.log.as_ref().map_or(0, ChangeBuffer::len)
    }

    /// The sequence number of the last change-log record (0: none, or no log).
    pub fn log_seq(&self) -> u64 {
        self.log.as_ref().map_or(0, ChangeBuffer::last_seq)
    }

    /// Logs session `tkn` whole, as it now is (created or loaded).
    fn log_put(&mut self, tkn: Token) {
        let (Some(log), Some(session)) = (&mut self.log, self.sessions.get(tkn)) else {
            return;
        };
        let extras = session_extras(&self.extras, session);
        let expiry = session.expiry();
        let head = RecordHead {
            tkn,
            name: session.name(),
            shared: session.shared(),
            expiry: expiry.map(|e| ExpirySettings {
                max_lifetime_s: extras.map_or(0, |x| x.max_lifetime_s),
                ..e.settings
            }),
            owner: extras.and_then(|x| x.owner.as_deref()),
            created_unix_ms: extras.map_or(0, |x| x.created_unix_ms),
            version: session.version(&self.extras),
            idle_deadline_unix_ms: expiry
                .filter(|e| e.settings.duration_s > 0)
                .map_or(0, |e| self.wall_epoch_ms + e.deadline),
        };
        log.put(&head, session.keys.iter());
    }

    /// Logs a write to session `tkn`: `write` gets the log and the version
    /// the session has once the write counts.
    fn log_write(&mut self, tkn: Token, write: impl FnOnce(&mut ChangeBuffer, u64)) {
        if let (Some(log), Some(session)) = (&mut self.log, self.sessions.get(tkn)) {
            let next = session.version(&self.extras).saturating_add(1);
            write(log, next.min(VERSION_MAX));
        }
    }

    /// Logs that idle expiry cleared the keys of `tkn` (now at its new
    /// deadline and version).
    fn log_keys_expired(&mut self, tkn: Token) {
        if let (Some(log), Some(session)) = (&mut self.log, self.sessions.get(tkn)) {
            let deadline = self.wall_epoch_ms + session.deadline;
            log.keys_expired(tkn, session.version(&self.extras), deadline);
        }
    }

    /// Whether to keep the events the ring lets go, for subscribers to
    /// count what they lost ([`SessionStore::take_evicted`]).
    pub fn keep_evicted(&mut self, keep: bool) {
        self.evicted = keep.then(|| self.evicted.take().unwrap_or_default());
    }

    /// The events the ring let go since the last call (while kept).
    pub fn take_evicted(&mut self) -> Vec<Evicted> {
        self.evicted
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Keeps the last `capacity` events (forgetting any kept so far).
    pub fn set_event_retention(&mut self, capacity: usize) {
        self.events = EventRing::new(capacity);
    }

    /// Whether events copy the session's keys, and up to how many bytes.
    pub fn set_event_keys(&mut self, max_bytes: Option<usize>) {
        self.event_keys = max_bytes;
    }

    pub fn events(&self) -> &EventRing {
        &self.events
    }

    /// Records the expiry of a session about to be deleted: at its idle
    /// deadline (`deleteSession`), or at its lifetime's end. Settled late
    /// (a backlog, or a request finding it first), a keys-only session past
    /// both says both: its keys expired at the idle deadline, then it ended
    /// with its lifetime.
    fn record_expiry(&mut self, tkn: Token, e: Expiry, lifetime_end: Option<Millis>, now: Millis) {
        let ended_by_lifetime = lifetime_end
            .filter(|&end| now >= end && (!e.settings.delete_session || end <= e.deadline));
        let figures = &mut self.expiry_figures;
        match ended_by_lifetime {
            Some(end) => {
                figures.lifetime += 1;
                figures.lag_ms.observe(now.saturating_sub(end));
            }
            None => {
                figures.idle += 1;
                figures.lag_ms.observe(now.saturating_sub(e.deadline));
            }
        }
        match ended_by_lifetime {
            Some(end) => {
                let keys_first =
                    e.deadline < end && self.sessions.get(tkn).is_some_and(|s| !s.keys.is_empty());
                if keys_first {
                    self.record(tkn, EventKind::KeysExpired, Some(e.deadline), now);
                }
                // Its keys went at the idle deadline: none are left to end with.
                let event = (EventKind::Expired { lifetime: true }, Some(end));
                self.record_keys(tkn, event, now, !keys_first);
            }
            None => self.record(
                tkn,
                EventKind::Expired { lifetime: false },
                Some(e.deadline),
                now,
            ),
        }
    }

    /// Records what happens to session `tkn` (which still holds what it
    /// held), at `now`; `deadline` for expiry events.
    fn record(&mut self, tkn: Token, kind: EventKind, deadline: Option<Millis>, now: Millis) {
        self.record_keys(tkn, (kind, deadline), now, true);
    }

    /// [`SessionStore::record`]; `with_keys` false: the event says the
    /// session held no keys (they expired just before).
    fn record_keys(
        &mut self,
        tkn: Token,
        (kind, deadline): (EventKind, Option<Millis>),
        now: Millis,
        with_keys: bool,
    ) {
        let Some(position) = self.sessions.position(tkn) else {
            return;
        };
        let event = self.event_at(position, (kind, deadline), now, with_keys);
        self.push_event(event);
    }

    /// The event `kind` of the session at `position` (see `record_keys`).
    fn event_at(
        &self,
        position: usize,
        (kind, deadline): (EventKind, Option<Millis>),
        now: Millis,
        with_keys: bool,
    ) -> Event {
        let session = self.sessions.at(position);
        let keys = match self.event_keys {
            Some(max) if kind != EventKind::Created => {
                let held = session.keys.iter().filter(|_| with_keys);
                Some(encode_keys(held, max))
            }
            _ => None,
        };
        Event::new(
            kind,
            session.tkn,
            self.wall_epoch_ms + now,
            deadline.map(|d| self.wall_epoch_ms + d),
            session.name().map(Box::from),
            session_extras(&self.extras, session).and_then(|x| x.owner.clone()),
            keys,
        )
    }

    /// Appends to the ring, keeping what subscribers need of an event it
    /// lets go.
    fn push_event(&mut self, event: Event) {
        if let Some((seq, evicted)) = self.events.push(event)
            && let Some(kept) = &mut self.evicted
        {
            kept.push(Evicted::of(seq, &evicted));
        }
    }

    /// The wall-clock time at shard-clock 0, in ms since the Unix epoch.
    pub fn set_wall_epoch(&mut self, unix_ms: u64) {
        self.wall_epoch_ms = unix_ms;
    }

    /// Begins a point-in-time snapshot: of every session (walked a slice
    /// per [`snapshot_step`](Self::snapshot_step), in table order; nothing
    /// is listed up front), or (`only`) of the listed ones that exist,
    /// which are encoded at once.
    pub fn begin_snapshot(
        &mut self,
        now: Millis,
        only: Option<&[Token]>,
    ) -> Result<(), SnapshotBusy> {
        if self.snapshot.is_some() {
            return Err(SnapshotBusy);
        }
        let snapshot = match only {
            None => Snapshot::new(true, now, self.wall_epoch_ms),
            Some(tkns) => {
                let mut snapshot = Snapshot::new(false, now, self.wall_epoch_ms);
                // A token listed twice is saved once.
                for &tkn in tkns {
                    if let Some(session) = self.sessions.get_mut(tkn)
                        && !session.is_saved()
                    {
                        save_into(&mut snapshot, session, &self.extras);
                    }
                }
                // Clear again: SAVED is set only ahead of a full walk.
                for &tkn in tkns {
                    if let Some(session) = self.sessions.get_mut(tkn) {
                        session.flags &= !SAVED;
                    }
                }
                snapshot
            }
        };
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// Encodes up to `budget` more sessions of the snapshot and hands out
    /// everything encoded so far; None when no snapshot is being taken.
    /// The chunk with `done` set ends the snapshot.
    pub fn snapshot_step(&mut self, budget: usize) -> Option<Chunk> {
        self.snapshot_walk(budget);
        let snapshot = self.snapshot.as_mut()?;
        let chunk = snapshot.take(self.sessions.len());
        if chunk.done {
            self.snapshot = None;
        }
        Some(chunk)
    }

    /// Moves a full snapshot's walk on by up to `budget` positions: a
    /// session not yet saved is saved as it is now; the bit of one that
    /// was (copy-on-write) or is new since the start is cleared.
    fn snapshot_walk(&mut self, budget: usize) {
        let Some(snapshot) = self.snapshot.as_mut().filter(|s| s.copy_on_write) else {
            return;
        };
        let end = self
            .sessions
            .len()
            .min(snapshot.next.saturating_add(budget));
        while snapshot.next < end {
            let session = self.sessions.at_mut(snapshot.next);
            snapshot.next += 1;
            if !session.is_saved() {
                save_into(snapshot, session, &self.extras);
            }
            session.flags &= !SAVED;
        }
    }

    /// After a removal moved the table's last session to `position`: if
    /// the walk had passed `position` but not the last one, the moved
    /// session is saved now (unless it was saved or is new) and counts as
    /// passed.
    fn snapshot_moved(&mut self, position: usize) {
        let Some(snapshot) = self.snapshot.as_mut().filter(|s| s.copy_on_write) else {
            return;
        };
        // The moved session was at the old last position, now `len`.
        if position < snapshot.next && self.sessions.len() >= snapshot.next {
            let session = self.sessions.at_mut(position);
            if !session.is_saved() {
                save_into(snapshot, session, &self.extras);
            }
            session.flags &= !SAVED;
        }
    }

    /// Adds a saved session with a fresh idle deadline (now + duration)
    /// and its absolute lifetime end as it was (creation + lifetime, in
    /// wall-clock time). Returns its key count, or None when it is not
    /// added: its token exists (that session is left as it is), its
    /// lifetime is over, its shared name belongs to another session, or it
    /// would pass the memory limit.
    ///
    /// With `keep_deadline` (recovery), the idle deadline the record carries
    /// is kept as it was (what passed it meanwhile expires at once).
    pub fn restore(
        &mut self,
        record: SessionRecord,
        now: Millis,
        keep_deadline: bool,
    ) -> Option<u64> {
        if record.tkn == 0 || self.sessions.contains(record.tkn) {
            return None;
        }
        let lifetime_s = record.expiry.map_or(0, |e| e.max_lifetime_s);
        let version = record.version.clamp(1, VERSION_MAX);
        let version_high = (version >> 24) as u32;
        let has_extras = record.owner.is_some() || lifetime_s > 0 || version_high > 0;
        let extras = has_extras.then(|| {
            // Saturating: a file's creation time is not trusted to be sane.
            let end_unix = record
                .created_unix_ms
                .saturating_add(u64::from(lifetime_s) * 1000);
            let mut extras = Extras::new(
                record.owner.as_deref().map(|o| self.extras.owner_name(o)),
                record.created_unix_ms,
                end_unix.saturating_sub(self.wall_epoch_ms),
                lifetime_s,
            );
            extras.version_high = version_high;
            extras
        });
        if extras
            .as_ref()
            .is_some_and(|x| x.has_lifetime() && x.lifetime_end <= now)
        {
            return None;
        }
        let cost = session_cost(record.name.as_deref(), &KeyMap::new(None))
            + record
                .keys
                .iter()
                .map(|(k, v)| entry_cost(k, v))
                .sum::<u64>()
            + extras.as_ref().map_or(0, Extras::cost);
        if !self.fits(cost as i64) {
            return None;
        }
        if record.shared {
            let name = record.name.as_deref()?;
            if !self.names.register(name, record.tkn) {
                return None;
            }
        }
        let deadline = (keep_deadline && record.idle_deadline_unix_ms > 0).then(|| {
            record
                .idle_deadline_unix_ms
                .saturating_sub(self.wall_epoch_ms)
        });
        let keys = KeyMap::with_entries(record.name.as_deref(), record.keys);
        let count = keys.len() as u64;
        let tkn = record.tkn;
        self.insert(
            tkn,
            keys,
            record.shared,
            record.expiry,
            extras,
            Start {
                now,
                idle_deadline: deadline,
            },
        );
        if let Some(session) = self.sessions.get_mut(tkn) {
            session.set_version_low(version as u32);
        }
        self.log_put(tkn);
        Some(count)
    }

    /// Stops the snapshot being taken (its file is abandoned).
    pub fn abort_snapshot(&mut self) {
        // What the walk had not reached may hold SAVED: clear it, as the
        // walk would have (one pass over the rest; aborts are rare).
        if let Some(snapshot) = self.snapshot.take().filter(|s| s.copy_on_write) {
            for position in snapshot.next..self.sessions.len() {
                self.sessions.at_mut(position).flags &= !SAVED;
            }
        }
    }

    /// Whether a full snapshot's walk is under way (new sessions are
    /// marked so it passes them by).
    fn snapshot_walking(&self) -> bool {
        self.snapshot.as_ref().is_some_and(|s| s.copy_on_write)
    }

    /// Bytes encoded by copy-on-write and not yet handed out: the shard
    /// takes them out early when they pile up.
    pub fn snapshot_backlog(&self) -> usize {
        self.snapshot.as_ref().map_or(0, Snapshot::pending_bytes)
    }

    /// Called before a session changes: a snapshot that has not reached it
    /// yet saves it as it still is.
    fn preserve(&mut self, tkn: Token) {
        if let Some(snapshot) = &mut self.snapshot
            && snapshot.copy_on_write
            && let Some(position) = self.sessions.position(tkn)
            && position >= snapshot.next
        {
            let session = self.sessions.at_mut(position);
            if !session.is_saved() {
                save_into(snapshot, session, &self.extras);
            }
        }
    }

    /// Borrows from `budget` (shared with the other shards) from now on,
    /// claiming first what is used already; None: no limit. What was held
    /// of an earlier budget goes back to it.
    pub fn set_memory_budget(&mut self, budget: Option<Arc<MemoryBudget>>) {
        self.memory = Reservation::new(budget);
        self.memory.claim(self.used_bytes);
    }

    /// A budget of `max_bytes` for this store alone (0 = no limit): refuse
    /// writes that would take the accounted bytes past it.
    pub fn set_memory_limit(&mut self, max_bytes: u64) {
        self.set_memory_budget((max_bytes > 0).then(|| Arc::new(MemoryBudget::new(max_bytes, 1))));
    }

    /// Bytes this store holds of the memory budget (used or not).
    pub fn memory_reserved(&self) -> u64 {
        self.memory.held()
    }

    /// Hands back every reserved byte not in use (after start-up restores).
    pub fn trim_memory(&mut self) {
        self.memory.trim(self.used_bytes);
    }

    /// Keys over every session here (expired ones not yet reached by
    /// expiry included).
    pub fn key_count(&self) -> u64 {
        self.key_count
    }

    /// Expiries so far, by kind, and how late they came.
    pub fn expiry_figures(&self) -> &ExpiryFigures {
        &self.expiry_figures
    }

    /// A session's keys were cleared at `deadline` (the session stays).
    fn note_keys_expired(&mut self, deadline: Millis, now: Millis) {
        self.expiry_figures.keys += 1;
        self.expiry_figures
            .lag_ms
            .observe(now.saturating_sub(deadline));
    }

    /// Accounted bytes held now.
    pub fn memory_used(&self) -> u64 {
        self.used_bytes
    }

    /// Whether growing by `delta` bytes stays within the limit: a local
    /// comparison, unless the reservation must grow from the shared pool.
    fn fits(&mut self, delta: i64) -> bool {
        self.memory.fits(self.used_bytes, delta)
    }

    /// After bytes were freed: hands what this store holds past its need
    /// back to the other shards (a local comparison when there is none).
    fn settle_memory(&mut self) {
        self.memory.settle(self.used_bytes);
    }

    /// The earliest time background expiry may have work (never later
    /// than the true earliest deadline); None when nothing expires.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.wheel.next_deadline()
    }

    /// Background expiry: settles at most `budget` due timers. Returns true
    /// when due work is left for the next call.
    pub fn expire_due(&mut self, now: Millis, budget: usize) -> bool {
        let mut fired = std::mem::take(&mut self.fired);
        let more = self.wheel.advance_to(now, budget, &mut fired);
        for (_, tkn) in fired.drain(..) {
            self.settle_fired(tkn, now);
        }
        self.fired = fired;
        // Once a turn: also returns what lazy expiry on reads freed.
        self.settle_memory();
        more
    }

    /// A session's timer fired: expire it, or file it again if its
    /// deadline slid meanwhile.
    fn settle_fired(&mut self, tkn: Token, now: Millis) {
        if self
            .sessions
            .get(tkn)
            .and_then(Session::expiry)
            .is_some_and(|e| now >= e.deadline)
        {
            self.preserve(tkn);
        }
        let Some(session) = self.sessions.get_mut(tkn) else {
            return;
        };
        let Some(mut expiry) = session.expiry() else {
            return;
        };
        let lifetime_end = lifetime_end(&self.extras, session.extras_slot(), expiry);
        if now < expiry.deadline {
            expiry.timer = self.wheel.insert(expiry.deadline, tkn);
            session.set_expiry(Some(expiry));
        } else if expiry.settings.delete_session || lifetime_end.is_some_and(|end| now >= end) {
            // The timer is spent already; only the session goes.
            self.record_expiry(tkn, expiry, lifetime_end, now);
            let Some(session) = self.sessions.get_mut(tkn) else {
                return;
            };
            session.set_expiry(None);
            self.remove(tkn);
        } else {
            if !session.keys.is_empty() {
                self.record(tkn, EventKind::KeysExpired, Some(expiry.deadline), now);
            }
            let Some(session) = self.sessions.get_mut(tkn) else {
                return;
            };
            self.used_bytes -= keys_cost(&session.keys);
            let cleared = session.keys.clear();
            self.key_count -= cleared as u64;
            if cleared > 0 {
                self.note_keys_expired(expiry.deadline, now);
            }
            let Some(session) = self.sessions.get_mut(tkn) else {
                return;
            };
            expiry.deadline = next_period(expiry.deadline, expiry.settings, now)
                .min(lifetime_end.unwrap_or(Millis::MAX));
            expiry.timer = self.wheel.insert(expiry.deadline, tkn);
            session.set_expiry(Some(expiry));
            if cleared > 0 && session.count_change() {
                self.carry_version(tkn);
            }
            self.log_keys_expired(tkn);
        }
    }

    /// Live sessions (may include expired ones not yet reached by expiry;
    /// use [`SessionStore::live_counts`] for what clients may see).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn contains_token(&self, tkn: Token) -> bool {
        self.sessions.contains(tkn)
    }

    /// Whether `new` (its name, owner and keys) fits in memory.
    pub fn can_create_session(&mut self, new: &NewSession) -> bool {
        let has_extras = new.owner.is_some() || new.expiry.is_some_and(|e| e.max_lifetime_s > 0);
        let extras = if has_extras {
            EXTRAS_OVERHEAD + new.owner.as_deref().map_or(0, |o| o.len() as u64)
        } else {
            0
        };
        let keys: u64 = new.keys.iter().map(|(k, v)| entry_cost(k, v)).sum();
        let name = new.name.as_deref().map_or(0, |n| n.len() as u64);
        self.fits((SESSION_OVERHEAD + name + keys + extras) as i64)
    }

    /// Creates a session under a token the caller minted. Shared names must
    /// already be registered, and room checked with `can_create_session`, by the
    /// caller (a session is never refused after its name is claimed).
    pub fn create(
        &mut self,
        tkn: Token,
        name: Option<Box<str>>,
        shared: bool,
        expiry: Option<ExpirySettings>,
        now: Millis,
    ) {
        self.insert(
            tkn,
            KeyMap::new(name.as_deref()),
            shared,
            expiry,
            None,
            Start::now(now),
        );
        self.log_put(tkn);
    }

    /// [`SessionStore::create`] with everything `SH_NEW` may give: an owner,
    /// a lifetime, initial keys (set as `SH_SET` sets them). Room is checked
    /// with `can_create_session` by the caller.
    pub fn create_session(&mut self, tkn: Token, new: NewSession, now: Millis) {
        let lifetime_s = new.expiry.map_or(0, |e| e.max_lifetime_s);
        let owner = new.owner.as_deref().map(|o| self.extras.owner_name(o));
        // Built from what was asked: no lookup of the session just made.
        let created = Event::new(
            EventKind::Created,
            tkn,
            self.wall_epoch_ms + now,
            None,
            new.name.clone(),
            owner.clone(),
            None,
        );
        let extras = (owner.is_some() || lifetime_s > 0).then(|| {
            Extras::new(
                owner,
                self.wall_epoch_ms + now,
                now + u64::from(lifetime_s) * 1000,
                lifetime_s,
            )
        });
        let mut keys = KeyMap::new(new.name.as_deref());
        for (key, value) in new.keys {
            keys.set(key, value);
        }
        self.insert(tkn, keys, new.shared, new.expiry, extras, Start::now(now));
        self.log_put(tkn);
        self.push_event(created);
    }

    fn insert(
        &mut self,
        tkn: Token,
        keys: KeyMap,
        shared: bool,
        expiry: Option<ExpirySettings>,
        extras: Option<Extras>,
        start: Start,
    ) {
        let Start { now, idle_deadline } = start;
        // Callers check for collisions first; keep everything right regardless.
        self.remove(tkn);
        self.used_bytes += session_cost(keys.name(), &keys);
        self.key_count += keys.len() as u64;
        let lifetime_end = extras
            .as_ref()
            .filter(|x| x.has_lifetime())
            .map(|x| x.lifetime_end);
        let expiry = expiry.map(|settings| {
            let deadline = match idle_deadline {
                Some(d) if settings.duration_s > 0 => d.min(lifetime_end.unwrap_or(Millis::MAX)),
                _ => deadline_after(settings, now, lifetime_end),
            };
            Expiry {
                settings,
                deadline,
                timer: self.wheel.insert(deadline, tkn),
                lifetime: lifetime_end.is_some(),
            }
        });
        let mut flags = if shared { SHARED } else { 0 };
        let mut slot = 0;
        if let Some(extras) = extras {
            flags |= HAS_EXTRAS;
            self.used_bytes += extras.cost();
            slot = self.extras.insert(tkn, extras);
        }
        let mut session = Session {
            tkn,
            deadline: 0,
            keys,
            duration_s: 0,
            timer: TimerKey::default(),
            extras: slot,
            version_low: [1, 0, 0],
            // Not part of a snapshot already under way.
            flags: flags | if self.snapshot_walking() { SAVED } else { 0 },
        };
        session.set_expiry(expiry);
        self.sessions.insert(session);
    }

    /// Applies an overdue expiry, then returns the session if it still lives.
    fn live(&mut self, tkn: Token, now: Millis, access: Access) -> Option<&mut Session> {
        // One index lookup on the usual path (no expiry due).
        let mut position = self.sessions.position(tkn)?;
        let expired = match self.sessions.at_mut(position).expiry() {
            Some(e) if now >= e.deadline => Some(e),
            _ => None,
        };
        if let Some(e) = expired {
            self.preserve(tkn);
            let lifetime_end = lifetime_end(
                &self.extras,
                self.sessions.at_mut(position).extras_slot(),
                e,
            );
            if e.settings.delete_session || lifetime_end.is_some_and(|end| now >= end) {
                self.record_expiry(tkn, e, lifetime_end, now);
                self.remove(tkn);
                return None;
            }
            if !self.sessions.at_mut(position).keys.is_empty() {
                self.record(tkn, EventKind::KeysExpired, Some(e.deadline), now);
            }
            let session = self.sessions.get_mut(tkn)?;
            self.used_bytes -= keys_cost(&session.keys);
            let cleared = session.keys.clear();
            self.key_count -= cleared as u64;
            if cleared > 0 {
                self.note_keys_expired(e.deadline, now);
            }
            let session = self.sessions.get_mut(tkn)?;
            session.deadline =
                next_period(e.deadline, e.settings, now).min(lifetime_end.unwrap_or(Millis::MAX));
            self.wheel.reschedule(e.timer, session.deadline);
            if cleared > 0 && session.count_change() {
                self.carry_version(tkn);
            }
            self.log_keys_expired(tkn);
            // The rare path: look again rather than rely on the position.
            position = self.sessions.position(tkn)?;
        }
        let session = self.sessions.at_mut(position);
        let extend = match access {
            Access::Read => 0,
            Access::Get => EXTEND_ON_GET,
            Access::SetAdd => EXTEND_ON_SET_ADD,
        };
        if session.flags & extend != 0
            && session.duration_s > 0
            && let Some(e) = session.expiry()
        {
            // O(1): the wheel is not touched; the timer re-files on fire.
            let before = session.deadline;
            session.deadline = deadline_after(
                e.settings,
                now,
                lifetime_end(&self.extras, session.extras_slot(), e),
            );
            // Logged when it crosses into a later step of max(1 s,
            // duration / 10): so the logged deadline is never more than a
            // step behind, at one record per step, not per read.
            if let Some(log) = &mut self.log {
                let step = (u64::from(session.duration_s) * 100).max(1000);
                if before / step != session.deadline / step {
                    log.deadline(tkn, self.wall_epoch_ms + session.deadline);
                }
            }
        }
        Some(session)
    }

    /// Removes a session, its timer, its extras, and its shared name.
    fn remove(&mut self, tkn: Token) -> Option<Session> {
        let (session, moved_to) = self.sessions.remove(tkn)?;
        if let Some(log) = &mut self.log {
            log.end_session(tkn);
        }
        if let Some(position) = moved_to {
            self.snapshot_moved(position);
        }
        self.key_count -= session.keys.len() as u64;
        self.used_bytes -= session_cost(session.name(), &session.keys);
        if let Some(e) = session.expiry() {
            self.wheel.remove(e.timer);
        }
        if let Some(slot) = session.extras_slot()
            && let Some(extras) = self.extras.remove(slot, tkn)
        {
            self.used_bytes -= extras.cost();
        }
        if session.shared()
            && let Some(name) = session.name()
        {
            self.names.release(name, tkn);
        }
        Some(session)
    }

    pub fn exists(&mut self, tkn: Token, now: Millis) -> bool {
        self.live(tkn, now, Access::Read).is_some()
    }

    /// A session for reading (`SH_INFO`, `SH_COUNT`, `SH_KEYS`, `SH_CONTAINS`).
    pub fn read(&mut self, tkn: Token, now: Millis) -> Result<&Session, Refusal> {
        self.live(tkn, now, Access::Read)
            .map(|s| &*s)
            .ok_or(NoSession)
    }

    /// `SH_GET`: a read that may slide the deadline.
    pub fn get(&mut self, tkn: Token, now: Millis) -> Result<&Session, Refusal> {
        self.live(tkn, now, Access::Get)
            .map(|s| &*s)
            .ok_or(NoSession)
    }

    pub fn end(&mut self, tkn: Token, now: Millis) -> Result<(), Refusal> {
        self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        self.preserve(tkn);
        self.record(tkn, EventKind::Ended, None, now);
        self.remove(tkn);
        self.settle_memory();
        Ok(())
    }

    /// Ends every session here; returns how many were live.
    /// One pass over every session: an admin command, not a hot path.
    pub fn end_all(&mut self, now: Millis) -> u64 {
        // A snapshot under way keeps what it has not reached yet.
        self.snapshot_walk(usize::MAX);
        // Expiry due first (with its events): a session past its deadline
        // expired, it was not ended. Only those few go by token; the rest
        // are read in table order, with no lookup each: a lookup per
        // session stalled the shard's other clients for hundreds of ms at
        // a million sessions (benches/end_all.rs).
        let due: Vec<Token> = self
            .sessions
            .iter()
            .filter(|s| s.expiry().is_some_and(|e| now >= e.deadline))
            .map(|s| s.tkn)
            .collect();
        for tkn in due {
            self.live(tkn, now, Access::Read);
        }
        let live = self.sessions.len();
        // With no subscriber to tell of the events the ring lets go, only
        // the last `capacity` of these stay: number the rest, make none of
        // them (pushing them was most of an end-all's time).
        let unseen = match self.evicted {
            None => live.saturating_sub(self.events.capacity()),
            Some(_) => 0,
        };
        self.events.skip_before_refill(unseen as u64);
        for position in unseen..live {
            let event = self.event_at(position, (EventKind::Ended, None), now, true);
            self.push_event(event);
        }
        if let Some(log) = &mut self.log {
            log.end_all();
        }
        for session in self.sessions.drain() {
            if session.shared()
                && let Some(name) = session.keys.name()
            {
                self.names.release(name, session.tkn);
            }
        }
        // The walk passed every position; the table is empty now. Sessions
        // created before the next step are marked saved (new since the
        // snapshot began) at positions from 0: the walk must visit them
        // to clear that mark, or a later snapshot would skip them.
        if let Some(snapshot) = &mut self.snapshot {
            snapshot.next = 0;
        }
        self.key_count = 0;
        self.used_bytes = 0;
        self.settle_memory();
        self.extras.clear();
        self.wheel = TimingWheel::new(now);
        live as u64
    }

    /// `SH_SET`: all keys or, past the memory limit, none.
    pub fn set(&mut self, tkn: Token, keys: Vec<KeyValue>, now: Millis) -> Result<(), Refusal> {
        let limited = self.memory.is_limited();
        let session = self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        let growth: i64 = if limited {
            // A name given twice would subtract its old value twice: then
            // no mention may lower the estimate (a bound, not exact).
            let repeats = names_repeat(&keys);
            keys.iter()
                .map(|(k, v)| match session.keys.get(k) {
                    Some(old) if repeats => (v.len() as i64 - old.len() as i64).max(0),
                    Some(old) => v.len() as i64 - old.len() as i64,
                    None => entry_cost(k, v) as i64,
                })
                .sum()
        } else {
            0
        };
        if !self.fits(growth) {
            return Err(Refusal::MemoryLimit);
        }
        self.preserve(tkn);
        if !keys.is_empty() {
            self.log_write(tkn, |log, version| {
                log.set(tkn, false, version, keys.iter().map(|(k, v)| (&**k, &**v)));
            });
        }
        // Only a write that is carried out slides the deadline.
        let session = self.live(tkn, now, Access::SetAdd).ok_or(NoSession)?;
        let (mut added, mut bytes) = (0u64, 0i64);
        // Setting a key counts as a change even to the value it had.
        let carry = !keys.is_empty() && session.count_change();
        for (key, value) in keys {
            let (len, cost) = (value.len() as i64, entry_cost(&key, &value) as i64);
            match session.keys.set(key, value) {
                Some(old) => bytes += len - old as i64,
                None => {
                    added += 1;
                    bytes += cost;
                }
            }
        }
        self.key_count += added;
        self.used_bytes = self.used_bytes.saturating_add_signed(bytes);
        if carry {
            self.carry_version(tkn);
        }
        if bytes < 0 {
            self.settle_memory();
        }
        Ok(())
    }

    /// `SH_ADD`: keys that exist keep their value.
    pub fn add(&mut self, tkn: Token, keys: Vec<KeyValue>, now: Millis) -> Result<(), Refusal> {
        let session = self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        let growth: u64 = keys
            .iter()
            .filter(|(k, _)| !session.keys.contains(k))
            .map(|(k, v)| entry_cost(k, v))
            .sum();
        if !self.fits(growth as i64) {
            return Err(Refusal::MemoryLimit);
        }
        self.preserve(tkn);
        if self.log.is_some() {
            self.log_added(tkn, &keys);
        }
        // Only a write that is carried out slides the deadline.
        let session = self.live(tkn, now, Access::SetAdd).ok_or(NoSession)?;
        let (mut added, mut bytes) = (0, 0);
        for (key, value) in keys {
            let cost = entry_cost(&key, &value);
            if session.keys.add(key, value) {
                added += 1;
                bytes += cost;
            }
        }
        if added > 0 && session.count_change() {
            self.carry_version(tkn);
        }
        self.key_count += added;
        self.used_bytes += bytes;
        Ok(())
    }

    /// Logs the keys an `SH_ADD` of `keys` is about to add: those absent,
    /// each at its first mention (a later one is not added).
    fn log_added(&mut self, tkn: Token, keys: &[KeyValue]) {
        let Some(session) = self.sessions.get(tkn) else {
            return;
        };
        let added: Vec<(&str, &[u8])> = keys
            .iter()
            .enumerate()
            .filter(|&(i, (k, _))| {
                !session.keys.contains(k) && !keys[..i].iter().any(|(e, _)| e == k)
            })
            .map(|(_, (k, v))| (&**k, &**v))
            .collect();
        if !added.is_empty()
            && let Some(log) = &mut self.log
        {
            let next = session.version(&self.extras).saturating_add(1);
            log.set(tkn, false, next.min(VERSION_MAX), added.into_iter());
        }
    }

    /// Logs the keys an `SH_RMV` of `keys` is about to remove: those present.
    fn log_removed(&mut self, tkn: Token, keys: &[Box<str>]) {
        let Some(session) = self.sessions.get(tkn) else {
            return;
        };
        let present: Vec<&str> = keys
            .iter()
            .filter(|k| session.keys.contains(k))
            .map(|k| &**k)
            .collect();
        if !present.is_empty()
            && let Some(log) = &mut self.log
        {
            let next = session.version(&self.extras).saturating_add(1);
            log.remove(tkn, next.min(VERSION_MAX), present.into_iter());
        }
    }

    /// `SH_CLEAR_SET`: returns how many keys were removed before setting.
    pub fn clear_set(
        &mut self,
        tkn: Token,
        keys: Vec<KeyValue>,
        now: Millis,
    ) -> Result<usize, Refusal> {
        let session = self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        let before = keys_cost(&session.keys);
        let after: u64 = keys.iter().map(|(k, v)| entry_cost(k, v)).sum();
        if !self.fits(after as i64 - before as i64) {
            return Err(Refusal::MemoryLimit);
        }
        self.preserve(tkn);
        let changes =
            !keys.is_empty() || self.sessions.get(tkn).is_some_and(|s| !s.keys.is_empty());
        if changes {
            self.log_write(tkn, |log, version| {
                log.set(tkn, true, version, keys.iter().map(|(k, v)| (&**k, &**v)));
            });
        }
        // Only a write that is carried out slides the deadline.
        let session = self.live(tkn, now, Access::SetAdd).ok_or(NoSession)?;
        let removed = session.keys.clear();
        let carry = (removed > 0 || !keys.is_empty()) && session.count_change();
        for (key, value) in keys {
            session.keys.set(key, value);
        }
        let (count, cost) = (session.keys.len(), keys_cost(&session.keys));
        if carry {
            self.carry_version(tkn);
        }
        self.key_count = self.key_count - removed as u64 + count as u64;
        self.used_bytes = self.used_bytes - before + cost;
        self.settle_memory();
        Ok(removed)
    }

    /// `SH_RMV`.
    pub fn remove_keys(
        &mut self,
        tkn: Token,
        keys: &[Box<str>],
        now: Millis,
    ) -> Result<(), Refusal> {
        self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        self.preserve(tkn);
        if self.log.is_some() {
            self.log_removed(tkn, keys);
        }
        let session = self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        let (mut removed, mut bytes) = (0, 0);
        for key in keys {
            if let Some(value_len) = session.keys.remove(key) {
                removed += 1;
                bytes += KEY_OVERHEAD + (key.len() + value_len) as u64;
            }
        }
        if removed > 0 && session.count_change() {
            self.carry_version(tkn);
        }
        self.key_count -= removed;
        self.used_bytes -= bytes;
        self.settle_memory();
        Ok(())
    }

    /// `SH_CLEAR`: returns how many keys were removed.
    pub fn clear(&mut self, tkn: Token, now: Millis) -> Result<usize, Refusal> {
        self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        self.preserve(tkn);
        if self.sessions.get(tkn).is_some_and(|s| !s.keys.is_empty()) {
            self.log_write(tkn, |log, version| log.clear(tkn, version));
        }
        let session = self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        let bytes = keys_cost(&session.keys);
        let removed = session.keys.clear();
        if removed > 0 && session.count_change() {
            self.carry_version(tkn);
        }
        self.key_count -= removed as u64;
        self.used_bytes -= bytes;
        self.settle_memory();
        Ok(removed)
    }

    /// `SH_INCR`: adds `by` to the integer at `key` (absent: 0) and returns
    /// the sum. The new digits overwrite the old ones in place when they are
    /// as wide. By 0 changes nothing (not even an absent key).
    pub fn incr(&mut self, tkn: Token, key: &str, by: i64, now: Millis) -> Result<i64, Refusal> {
        let session = self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        let old = session.keys.get(key);
        let current = match old {
            None => 0,
            Some(bytes) => json_i64(bytes).ok_or(Refusal::NotInteger)?,
        };
        let sum = current.checked_add(by).ok_or(Refusal::Overflow)?;
        if by == 0 {
            // A write all the same: it slides, as an SH_ADD that adds nothing does.
            self.live(tkn, now, Access::SetAdd).ok_or(NoSession)?;
            return Ok(sum);
        }
        let mut digits = itoa::Buffer::new();
        let text = digits.format(sum).as_bytes();
        let growth = match old {
            Some(old) => text.len() as i64 - old.len() as i64,
            None => entry_cost(key, text) as i64,
        };
        let added = old.is_none();
        if !self.fits(growth) {
            return Err(Refusal::MemoryLimit);
        }
        self.preserve(tkn);
        self.log_write(tkn, |log, version| {
            log.set(tkn, false, version, std::iter::once((key, text)));
        });
        let session = self.live(tkn, now, Access::SetAdd).ok_or(NoSession)?;
        if !session.keys.overwrite(key, text) {
            session.keys.set(key.into(), text.into());
        }
        let carry = session.count_change();
        self.key_count += u64::from(added);
        self.used_bytes = self.used_bytes.saturating_add_signed(growth);
        if carry {
            self.carry_version(tkn);
        }
        if growth < 0 {
            self.settle_memory();
        }
        Ok(sum)
    }

    /// The session's version (expiry due applied first), or None when it
    /// does not live.
    pub fn version(&mut self, tkn: Token, now: Millis) -> Option<u64> {
        self.live(tkn, now, Access::Read)?;
        let session = self.sessions.get(tkn)?;
        Some(session.version(&self.extras))
    }

    /// The session's low version bits were full: one more write moves the
    /// count into its extras (made now if it has none). At `VERSION_MAX`
    /// the version stays.
    fn carry_version(&mut self, tkn: Token) {
        let Some(session) = self.sessions.get_mut(tkn) else {
            return;
        };
        match session.extras_slot() {
            Some(slot) => {
                if let Some(extras) = self.extras.get_mut(slot)
                    && extras.version_high < u32::MAX
                {
                    extras.version_high += 1;
                    session.set_version_low(0);
                }
            }
            None => {
                let mut extras = Extras::new(None, 0, 0, 0);
                extras.version_high = 1;
                // Accounted but never refused: the write that carries has
                // been let in already. Borrowed for when the pool has it;
                // when not, this store uses a few bytes past its share.
                let cost = extras.cost();
                let _ = self.memory.fits(self.used_bytes, cost as i64);
                self.used_bytes += cost;
                session.extras = self.extras.insert(tkn, extras);
                session.flags |= HAS_EXTRAS;
                session.set_version_low(0);
            }
        }
    }

    /// A session with its extras (owner, lifetime), for `SH_INFO`.
    pub fn read_with_extras(
        &mut self,
        tkn: Token,
        now: Millis,
    ) -> Result<(&Session, Option<&Extras>), Refusal> {
        self.live(tkn, now, Access::Read).ok_or(NoSession)?;
        let session = self.sessions.get(tkn).ok_or(NoSession)?;
        Ok((session, session_extras(&self.extras, session)))
    }

    /// `SH_TOUCH`: with `slide`, the idle deadline moves to now + duration
    /// (capped at the lifetime) whatever the extend flags say. Returns the
    /// milliseconds to the next deadline, -1 for a session that never expires.
    pub fn touch(&mut self, tkn: Token, slide: bool, now: Millis) -> Result<i64, Refusal> {
        let expiry = self.live(tkn, now, Access::Read).ok_or(NoSession)?.expiry();
        let Some(e) = expiry else {
            return Ok(-1);
        };
        let end = lifetime_end(
            &self.extras,
            self.sessions.get(tkn).and_then(Session::extras_slot),
            e,
        );
        let session = self.sessions.get_mut(tkn).ok_or(NoSession)?;
        if slide && session.duration_s > 0 {
            session.deadline = deadline_after(e.settings, now, end);
            if let Some(log) = &mut self.log {
                log.deadline(tkn, self.wall_epoch_ms + session.deadline);
            }
        }
        Ok(i64::try_from(session.deadline.saturating_sub(now)).unwrap_or(i64::MAX))
    }

    /// `SH_OWNER_SESSIONS`: the owner's live sessions here, oldest first,
    /// each with its creation time (to merge lists from several shards).
    pub fn owner_sessions(&mut self, owner: &str, now: Millis) -> Vec<(u64, Token)> {
        let mut live: Vec<(u64, Token)> = Vec::new();
        for tkn in self.extras.sessions_of(owner) {
            if self.exists(tkn, now)
                && let Some(extras) = self
                    .sessions
                    .get(tkn)
                    .and_then(|s| session_extras(&self.extras, s))
            {
                live.push((extras.created_unix_ms, tkn));
            }
        }
        // Already in creation order, unless some came from a snapshot.
        live.sort_by_key(|&(created, _)| created);
        live
    }

    /// `SH_OWNER_END`: ends every live session of `owner` but `except`;
    /// returns how many ended.
    pub fn owner_end(&mut self, owner: &str, except: Option<Token>, now: Millis) -> u64 {
        let mut ended = 0;
        for tkn in self.extras.sessions_of(owner) {
            if Some(tkn) != except && self.end(tkn, now).is_ok() {
                ended += 1;
            }
        }
        ended
    }

    /// Every owner's list (model tests).
    #[cfg(test)]
    pub(crate) fn owner_index(&self) -> Vec<(String, Vec<Token>)> {
        let mut index = self.extras.owners();
        index.sort();
        index
    }

    /// Sessions and keys that clients can see, or None while background
    /// expiry is still behind after `budget` more timers: totals must not
    /// count anything past its deadline, and must not make everyone wait
    /// on a mass expiry either, so the caller asks again next turn.
    pub fn live_counts(&mut self, now: Millis, budget: usize) -> Option<(u64, u64)> {
        if self.expire_due(now, budget) {
            return None;
        }
        Some((self.sessions.len() as u64, self.key_count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory per session is a product target (see the README's
    /// performance section): the struct must not grow back unnoticed.
    #[test]
    fn a_session_takes_48_bytes() {
        assert_eq!(std::mem::size_of::<Session>(), 48);
    }

    fn store() -> SessionStore {
        SessionStore::new(Arc::new(SharedNames::default()))
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        (k.into(), v.as_bytes().into())
    }

    fn expiry(duration_s: u32, delete_session: bool, on_set: bool, on_get: bool) -> ExpirySettings {
        ExpirySettings {
            duration_s,
            delete_session,
            extend_on_set_add: on_set,
            extend_on_get: on_get,
            max_lifetime_s: 0,
        }
    }

    #[test]
    fn keys_and_totals() {
        let mut s = store();
        s.create(1, None, false, None, 0);
        s.create(2, None, false, None, 0);
        s.set(1, vec![kv("a", "1"), kv("b", "2")], 0).unwrap();
        s.add(1, vec![kv("a", "9"), kv("c", "3")], 0).unwrap();
        s.set(2, vec![kv("a", "1")], 0).unwrap();
        assert_eq!(s.live_counts(0, usize::MAX).unwrap(), (2, 4));
        assert_eq!(s.read(1, 0).unwrap().keys.get("a"), Some(&b"1"[..]));
        assert_eq!(s.clear_set(1, vec![kv("z", "0")], 0), Ok(3));
        assert_eq!(s.live_counts(0, usize::MAX).unwrap(), (2, 2));
        s.remove_keys(2, &["a".into(), "nope".into()], 0).unwrap();
        assert_eq!(s.clear(1, 0), Ok(1));
        assert_eq!(s.live_counts(0, usize::MAX).unwrap(), (2, 0));
        assert_eq!(s.set(3, vec![], 0), Err(NoSession));
        assert_eq!(s.end(2, 0), Ok(()));
        assert_eq!(s.end(2, 0), Err(NoSession));
        assert_eq!(s.end_all(0), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn totals_wait_for_background_expiry_to_catch_up() {
        let mut s = store();
        for tkn in 1..=10 {
            s.create(tkn, None, false, Some(expiry(1, true, false, false)), 0);
        }
        s.create(11, None, false, None, 0);
        // None only ever means "ask again": a pass may be busy cascading.
        let before = loop {
            if let Some(counts) = s.live_counts(999, 2) {
                break counts;
            }
        };
        assert_eq!(before, (11, 0));
        let mut turns = 0;
        let counts = loop {
            turns += 1;
            if let Some(counts) = s.live_counts(1000, 3) {
                break counts;
            }
        };
        assert_eq!(counts, (1, 0));
        assert!(turns >= 4, "bounded work per call: {turns}");
    }

    /// Writes a snapshot's chunks to a real shard file and reads it back.
    fn snapshot_records(
        s: &mut SessionStore,
        budget: usize,
        mut between_steps: impl FnMut(&mut SessionStore),
    ) -> Vec<crate::persist::SessionRecord> {
        let dir =
            std::env::temp_dir().join(format!("ndb-store-snap-{}-{}", std::process::id(), budget));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = crate::persist::ShardFileWriter::start(
            &dir,
            0,
            Box::new(move |result| tx.send(result).unwrap()),
        )
        .unwrap();
        loop {
            let chunk = s.snapshot_step(budget).expect("a snapshot is under way");
            writer.write_chunk(chunk.bytes, chunk.records, chunk.keys);
            if chunk.done {
                break;
            }
            between_steps(s);
        }
        writer.finish();
        let summary = rx.recv().unwrap().unwrap();
        let path = dir.join(&summary.file_name);
        let file = crate::persist::read_shard_file(&path, summary.bytes).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut records = file.records;
        records.sort_by_key(|r| r.tkn);
        records
    }

    #[test]
    fn snapshots_are_point_in_time_while_sessions_change() {
        let mut s = store();
        for tkn in 1..=50 {
            s.create(tkn, None, false, None, 0);
            s.set(tkn, vec![kv("v", &tkn.to_string())], 0).unwrap();
        }
        s.create(
            51,
            Some("exp".into()),
            false,
            Some(expiry(1, true, false, false)),
            0,
        );
        s.begin_snapshot(0, None).unwrap();
        assert_eq!(s.begin_snapshot(0, None), Err(SnapshotBusy));
        let mut step = 0;
        let records = snapshot_records(&mut s, 7, |s| {
            step += 1;
            // Every kind of change, to sessions reached and not yet reached.
            let t = step * 6;
            s.set(t, vec![kv("v", "changed"), kv("new", "1")], 0)
                .unwrap();
            let _ = s.end(t + 1, 0);
            let _ = s.clear(t + 2, 0);
            let _ = s.remove_keys(t + 3, &["v".into()], 0);
            s.create(1000 + t, None, false, None, 0);
        });
        assert_eq!(records.len(), 51, "exactly the sessions of the start");
        for (i, r) in records.iter().take(50).enumerate() {
            let tkn = i as u64 + 1;
            assert_eq!(r.tkn, tkn);
            assert_eq!(
                r.keys,
                vec![("v".into(), tkn.to_string().into_bytes().into())]
            );
            assert_eq!(r.version, 2, "the version as it was at the start");
        }
        assert_eq!(records[50].name.as_deref(), Some("exp"));
        assert!(s.snapshot_step(10).is_none(), "finished");
        // A session past its deadline when the snapshot starts is not saved.
        s.begin_snapshot(5000, None).unwrap();
        let records = snapshot_records(&mut s, 1000, |_| {});
        assert!(records.iter().all(|r| r.tkn != 51));
        // A list: only those, at once, each once.
        s.begin_snapshot(5000, Some(&[2, 3, 999, 2])).unwrap();
        let records = snapshot_records(&mut s, 1, |_| {});
        assert_eq!(records.iter().map(|r| r.tkn).collect::<Vec<_>>(), [2, 3]);
        // Saved again by the next full snapshot, with their versions now.
        s.begin_snapshot(5000, None).unwrap();
        let records = snapshot_records(&mut s, 3, |_| {});
        // 51 at the start, less 7 ended and the expired one, plus 7 created.
        assert_eq!(records.len(), 50);
        assert_eq!(records.iter().find(|r| r.tkn == 6).unwrap().version, 3);
        assert_eq!(records.iter().find(|r| r.tkn == 2).unwrap().version, 2);
    }

    #[test]
    fn the_walk_by_position_keeps_sessions_that_removals_move_behind_it() {
        let mut s = store();
        for tkn in 1..=10 {
            s.create(tkn, None, false, None, 0);
        }
        s.begin_snapshot(0, None).unwrap();
        let mut first = true;
        let records = snapshot_records(&mut s, 5, |s| {
            if std::mem::take(&mut first) {
                // The walk has passed 1..=5. A new session goes last; each
                // end moves the last session behind the walk: first the
                // new one (not to be saved), then 10 (saved there and then).
                s.create(11, None, false, None, 0);
                s.end(2, 0).unwrap();
                s.end(3, 0).unwrap();
            }
        });
        let tkns: Vec<Token> = records.iter().map(|r| r.tkn).collect();
        assert_eq!(tkns, (1..=10).collect::<Vec<_>>());
        // An aborted walk leaves no mark: the next snapshot saves them all.
        s.begin_snapshot(0, None).unwrap();
        let _ = s.snapshot_step(2);
        s.set(9, vec![kv("k", "v")], 0).unwrap();
        s.create(12, None, false, None, 0);
        s.abort_snapshot();
        s.begin_snapshot(0, None).unwrap();
        let records = snapshot_records(&mut s, 3, |_| {});
        let tkns: Vec<Token> = records.iter().map(|r| r.tkn).collect();
        assert_eq!(tkns, [1, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(records[6].keys.len(), 1, "9 as it is now");
    }

    #[test]
    fn keys_freed_without_ending_sessions_count_as_memory_to_give_back() {
        let mut s = store();
        let big = "x".repeat(1 << 20);
        for tkn in 1..=10 {
            s.create(tkn, None, false, None, 0);
            s.set(tkn, vec![kv("k", &big)], 0).unwrap();
        }
        assert!(s.may_reclaim());
        let _ = s.reclaim();
        assert!(!s.may_reclaim(), "looked: nothing new since");
        s.clear(1, 0).unwrap();
        assert!(s.may_reclaim());
        assert!(!s.reclaim().freed(), "1 MiB of 10: not worth a collect");
        for tkn in 2..=10 {
            s.clear(tkn, 0).unwrap();
        }
        assert!(s.reclaim().freed(), "9 MiB went, the sessions stayed");
        assert!(!s.reclaim().freed(), "told once");
    }

    /// SH_END_ALL in the middle of a snapshot: sessions created after it
    /// are not in that snapshot, and are in the next one.
    #[test]
    fn sessions_created_after_an_end_all_during_a_snapshot_are_in_the_next() {
        let mut s = store();
        for tkn in 1..=10 {
            s.create(tkn, None, false, None, 0);
        }
        s.begin_snapshot(0, None).unwrap();
        let mut first = true;
        let records = snapshot_records(&mut s, 3, |s| {
            if std::mem::take(&mut first) {
                assert_eq!(s.end_all(0), 10);
                s.create(21, None, false, None, 0);
                s.create(22, None, false, None, 0);
            }
        });
        let tkns: Vec<Token> = records.iter().map(|r| r.tkn).collect();
        assert_eq!(tkns, (1..=10).collect::<Vec<_>>(), "as at the start");
        s.begin_snapshot(0, None).unwrap();
        let records = snapshot_records(&mut s, 3, |_| {});
        let tkns: Vec<Token> = records.iter().map(|r| r.tkn).collect();
        assert_eq!(tkns, [21, 22]);
    }

    #[test]
    fn a_snapshot_saves_keys_only_expiry_as_clients_would_see_it() {
        let mut s = store();
        s.create(1, None, false, Some(expiry(1, false, false, false)), 0);
        s.set(1, vec![kv("a", "1")], 0).unwrap();
        s.create(2, None, false, Some(expiry(1, false, false, false)), 0);
        s.begin_snapshot(1500, None).unwrap();
        let records = snapshot_records(&mut s, 10, |_| {});
        assert_eq!((records[0].keys.len(), records[0].version), (0, 3));
        assert_eq!((records[1].keys.len(), records[1].version), (0, 1));
        assert_eq!(s.version(1, 1500), Some(3), "what the session itself says");
    }

    #[test]
    fn memory_limit_refuses_growth_and_nothing_else() {
        let mut s = store();
        s.set_memory_limit(SESSION_OVERHEAD + 2 * KEY_OVERHEAD + 20);
        let empty = NewSession {
            name: None,
            shared: false,
            expiry: None,
            owner: None,
            keys: Vec::new(),
            report_version: false,
        };
        assert!(s.can_create_session(&empty));
        s.create(1, None, false, None, 0);
        assert!(!s.can_create_session(&empty));
        s.set(1, vec![kv("a", "1234")], 0).unwrap();
        let used = s.memory_used();
        assert_eq!(
            s.set(1, vec![kv("b", "1"), kv("c", "1")], 0),
            Err(Refusal::MemoryLimit)
        );
        assert_eq!(s.memory_used(), used, "a refused write changes nothing");
        assert_eq!(s.read(1, 0).unwrap().keys.len(), 1);
        // Shrinking and same-size writes still work; so do reads and deletes.
        s.set(1, vec![kv("a", "1")], 0).unwrap();
        s.set(1, vec![kv("b", "12")], 0).unwrap();
        assert_eq!(
            s.add(1, vec![kv("z", "123456789")], 0),
            Err(Refusal::MemoryLimit)
        );
        assert_eq!(
            s.clear_set(1, vec![kv("a", "1"), kv("b", "1"), kv("c", "1")], 0),
            Err(Refusal::MemoryLimit)
        );
        s.remove_keys(1, &["a".into()], 0).unwrap();
        s.clear(1, 0).unwrap();
        s.end(1, 0).unwrap();
        assert_eq!(s.memory_used(), 0, "accounting returns to zero");
    }

    /// A key named again with a shorter value must not hide the growth of
    /// the rest of the request.
    #[test]
    fn a_key_named_twice_cannot_carry_a_write_past_the_limit() {
        let mut s = store();
        let limit = 10_000;
        s.set_memory_limit(limit);
        s.create(1, None, false, None, 0);
        let old = "x".repeat(1_000);
        s.set(1, vec![kv("a", &old)], 0).unwrap();
        let mut keys: Vec<KeyValue> = (0..100).map(|_| kv("a", "")).collect();
        keys.push(kv("a", &old));
        keys.push(kv("big", &"y".repeat(50_000)));
        assert_eq!(s.set(1, keys, 0), Err(Refusal::MemoryLimit));
        assert!(s.memory_used() <= limit);
        // Without repeats the estimate stays exact: shrinking one key pays
        // for growing another.
        let near = limit - s.memory_used() - KEY_OVERHEAD - 1;
        s.set(
            1,
            vec![kv("a", ""), kv("b", &"z".repeat(near as usize + 900))],
            0,
        )
        .unwrap();
        assert!(s.memory_used() <= limit);
    }

    /// Two shards' stores on one budget: either may use nearly all of it,
    /// and what one frees the other can use at once.
    #[test]
    fn stores_share_one_budget_and_freed_bytes_flow_back() {
        const LIMIT: u64 = 64 * 1024;
        let budget = Arc::new(MemoryBudget::new(LIMIT, 2));
        let (mut a, mut b) = (store(), store());
        a.set_memory_budget(Some(budget.clone()));
        b.set_memory_budget(Some(budget.clone()));
        let value = "v".repeat(1000);
        let fill = |s: &mut SessionStore, tkn: Token| {
            s.create(tkn, None, false, None, 0);
            let mut i = 0;
            while s.set(tkn, vec![kv(&format!("k{i}"), &value)], 0).is_ok() {
                i += 1;
                assert!(s.memory_used() <= s.memory_reserved());
            }
            i
        };
        let keys = fill(&mut a, 1);
        assert!(a.memory_used() > LIMIT * 9 / 10, "one store alone");
        assert!(a.memory_used() + b.memory_used() <= LIMIT);
        // b cannot even have a session's worth until a frees some.
        let session = NewSession {
            name: None,
            shared: false,
            expiry: None,
            owner: None,
            keys: vec![kv("k", &value)],
            report_version: false,
        };
        assert!(!b.can_create_session(&session));
        let half: Vec<Box<str>> = (0..keys / 2).map(|i| format!("k{i}").into()).collect();
        a.remove_keys(1, &half, 0).unwrap();
        assert!(
            a.memory_reserved() <= a.memory_used() + 2 * budget.chunk(),
            "what a freed went back"
        );
        fill(&mut b, 2);
        let total = a.memory_used() + b.memory_used();
        assert!(
            total <= LIMIT && total > LIMIT - budget.slack(2) - 1100,
            "{total}"
        );
        assert_eq!(
            a.memory_reserved() + b.memory_reserved() + budget.free(),
            LIMIT
        );
        // Ending everything gives all but a chunk each back.
        a.end_all(0);
        b.end(2, 0).unwrap();
        assert!(budget.free() >= LIMIT - 2 * budget.chunk());
    }

    #[test]
    fn accounting_returns_to_zero_through_expiry() {
        let mut s = store();
        s.create(
            1,
            Some("n".into()),
            false,
            Some(expiry(1, false, false, false)),
            0,
        );
        s.create(2, None, false, Some(expiry(1, true, false, false)), 0);
        s.set(1, vec![kv("a", "1"), kv("b", "22")], 0).unwrap();
        s.set(2, vec![kv("a", "1")], 0).unwrap();
        s.clear_set(1, vec![kv("c", "333")], 0).unwrap();
        s.expire_due(1000, 100);
        assert_eq!(s.memory_used(), SESSION_OVERHEAD + 1);
        s.end_all(1000);
        assert_eq!(s.memory_used(), 0);
    }

    #[test]
    fn expired_sessions_are_never_visible() {
        let mut s = store();
        s.create(1, None, false, Some(expiry(2, true, false, false)), 0);
        s.set(1, vec![kv("a", "1")], 0).unwrap();
        assert!(s.exists(1, 1999));
        assert!(!s.exists(1, 2000));
        assert_eq!(s.live_counts(2000, usize::MAX).unwrap(), (0, 0));
    }

    #[test]
    fn keys_only_expiry_keeps_the_session_with_a_fresh_deadline() {
        let mut s = store();
        s.create(1, None, false, Some(expiry(2, false, false, false)), 0);
        s.set(1, vec![kv("a", "1")], 0).unwrap();
        let session = s.read(1, 2500).unwrap();
        assert!(session.keys.is_empty());
        assert_eq!(session.expiry().unwrap().deadline, 4000);
        assert_eq!(s.live_counts(2500, usize::MAX).unwrap(), (1, 0));
        s.set(1, vec![kv("b", "1")], 2500).unwrap();
        // Several periods unobserved: one clear, the deadline rolls past now.
        assert_eq!(s.read(1, 9100).unwrap().expiry().unwrap().deadline, 10000);
        assert_eq!(s.live_counts(9100, usize::MAX).unwrap(), (1, 0));
    }

    #[test]
    fn sliding_expiry_follows_the_flags() {
        let mut s = store();
        s.create(1, None, false, Some(expiry(2, true, false, true)), 0);
        s.create(2, None, false, Some(expiry(2, true, true, false)), 0);
        s.get(1, 1500).unwrap();
        s.read(1, 1600).unwrap();
        s.set(2, vec![kv("a", "1")], 1500).unwrap();
        s.get(2, 1600).unwrap();
        assert!(s.exists(1, 3400) && s.exists(2, 3400));
        assert!(!s.exists(1, 3500) && !s.exists(2, 3500));
        assert_eq!(s.read(1, 0).map(|_| ()), Err(NoSession));
    }

    #[test]
    fn remaining_is_whole_seconds_rounded_up() {
        let e = Expiry {
            settings: expiry(10, false, false, false),
            deadline: 10_000,
            timer: TimingWheel::new(0).insert(0, 0),
            lifetime: false,
        };
        assert_eq!(e.remaining_s(0), 10);
        assert_eq!(e.remaining_s(1), 10);
        assert_eq!(e.remaining_s(9001), 1);
        assert_eq!(e.remaining_s(20000), 0);
    }

    #[test]
    fn deleting_a_shared_session_releases_its_name() {
        let names = Arc::new(SharedNames::default());
        let mut s = SessionStore::new(names.clone());
        assert!(names.register("n", 7));
        s.create(
            7,
            Some("n".into()),
            true,
            Some(expiry(1, true, false, false)),
            0,
        );
        assert_eq!(names.lookup("n"), Some(7));
        assert!(!s.exists(7, 1000));
        assert_eq!(names.lookup("n"), None);
    }
}
