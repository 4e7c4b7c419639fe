//! Session events: the per-shard ring they are kept in, what a
//! subscription asks for, their wire encoding, and cursors.
//!
//! Owns: the ring of one shard's events and the pure functions around it.
//! Must not touch: sessions, connections or the mesh. The store appends
//! events as they happen; the router reads them out for subscribers.
//!
//! A subscriber is a position (a sequence number) in every shard's ring,
//! not a queue of copies: a slow subscriber costs its position, and when
//! the ring has overwritten events it had not read, it is told how many.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::domain::Token;
use crate::protocol::response::write_json_str;

/// Events a shard keeps by default (`--event-retention`).
pub const DEFAULT_RETENTION: usize = 100_000;

/// What happened to a session.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Ended,
    /// Deleted at its idle deadline (`deleteSession`) or lifetime's end.
    Expired {
        lifetime: bool,
    },
    /// Keys cleared at an idle deadline (`deleteSession:false`).
    KeysExpired,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Ended => "ended",
            EventKind::Expired { .. } => "expired",
            EventKind::KeysExpired => "keysExpired",
        }
    }

    /// The bit of this kind in an [`EventFilter`]'s `kinds`.
    fn bit(self) -> u8 {
        match self {
            EventKind::Created => 1,
            EventKind::Ended => 2,
            EventKind::Expired { .. } => 4,
            EventKind::KeysExpired => 8,
        }
    }

    /// The kind named `name` on the wire, as a filter bit.
    pub fn bit_of(name: &str) -> Option<u8> {
        Some(match name {
            "created" => 1,
            "ended" => 2,
            "expired" => 4,
            "keysExpired" => 8,
            _ => return None,
        })
    }

    pub const ALL_BITS: u8 = 15;
}

/// One event, as the shard that owns the session recorded it: 32 bytes in
/// the ring (a full ring of 100,000 is 3.2 MB), what most sessions lack
/// (a name, an owner, keys) in one allocation beside it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub tkn: Token,
    /// When it happened, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// How long before `at` the deadline passed (expiry events; a deadline
    /// is never after the expiry it causes); `u32::MAX`: none.
    deadline_before_ms: u32,
    pub kind: EventKind,
    /// `keys` holds only the whole keys that fit.
    pub keys_truncated: bool,
    detail: Option<Box<EventDetail>>,
}

#[derive(Clone, Debug, PartialEq)]
struct EventDetail {
    name: Option<Box<str>>,
    owner: Option<Arc<str>>,
    /// The keys the session held, as a JSON object, when a subscriber on
    /// the server asked for keys at the time.
    keys: Option<Box<[u8]>>,
}

impl Event {
    pub fn new(
        kind: EventKind,
        tkn: Token,
        at_unix_ms: u64,
        deadline_unix_ms: Option<u64>,
        name: Option<Box<str>>,
        owner: Option<Arc<str>>,
        keys: Option<(Box<[u8]>, bool)>,
    ) -> Self {
        let deadline_before_ms = deadline_unix_ms.map_or(u32::MAX, |d| {
            u32::try_from(at_unix_ms.saturating_sub(d)).unwrap_or(u32::MAX - 1)
        });
        let keys_truncated = keys.as_ref().is_some_and(|(_, cut)| *cut);
        let keys = keys.map(|(k, _)| k);
        let detail = (name.is_some() || owner.is_some() || keys.is_some())
            .then(|| Box::new(EventDetail { name, owner, keys }));
        Event {
            tkn,
            at_unix_ms,
            deadline_before_ms,
            kind,
            keys_truncated,
            detail,
        }
    }

    pub fn deadline_unix_ms(&self) -> Option<u64> {
        (self.deadline_before_ms != u32::MAX)
            .then(|| self.at_unix_ms - u64::from(self.deadline_before_ms))
    }

    pub fn name(&self) -> Option<&str> {
        self.detail.as_ref()?.name.as_deref()
    }

    pub fn owner(&self) -> Option<&str> {
        self.detail.as_ref()?.owner.as_deref()
    }

    pub fn keys(&self) -> Option<&[u8]> {
        self.detail.as_ref()?.keys.as_deref()
    }
}

/// What a subscription receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFilter {
    /// [`EventKind`] bits.
    pub kinds: u8,
    /// Only this owner's sessions.
    pub owner: Option<Box<str>>,
    pub with_keys: bool,
}

impl EventFilter {
    pub fn passes(&self, event: &Event) -> bool {
        self.passes_parts(event.kind, event.owner())
    }

    pub fn passes_evicted(&self, event: &Evicted) -> bool {
        self.passes_parts(event.kind, event.owner.as_deref())
    }

    fn passes_parts(&self, kind: EventKind, owner: Option<&str>) -> bool {
        self.kinds & kind.bit() != 0 && self.owner.as_deref().is_none_or(|o| owner == Some(o))
    }
}

/// What is kept of an event the ring let go while subscribers were
/// registered: what their filters need to count it as lost, no more (never
/// its keys: a mass end would otherwise hold a copy of every session's).
#[derive(Clone, Debug, PartialEq)]
pub struct Evicted {
    pub seq: u64,
    pub kind: EventKind,
    pub owner: Option<Arc<str>>,
}

impl Evicted {
    pub fn of(seq: u64, event: &Event) -> Self {
        Evicted {
            seq,
            kind: event.kind,
            owner: event.detail.as_ref().and_then(|d| d.owner.clone()),
        }
    }
}

/// The last `capacity` events of one shard.
pub struct EventRing {
    events: VecDeque<Event>,
    capacity: usize,
    /// The sequence number of the latest event (0: none yet).
    head: u64,
}

impl EventRing {
    pub fn new(capacity: usize) -> Self {
        EventRing {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            head: 0,
        }
    }

    /// Appends an event as number `head() + 1`; returns the oldest (and
    /// its number) when it had to make room.
    pub fn push(&mut self, event: Event) -> Option<(u64, Event)> {
        if self.events.capacity() == 0 {
            // Sized once, exactly: a ring that doubled its way up would
            // hold up to twice the memory.
            self.events.reserve_exact(self.capacity);
        }
        let evicted = if self.events.len() == self.capacity {
            let seq = self.oldest();
            self.events.pop_front().map(|e| (seq, e))
        } else {
            None
        };
        self.head += 1;
        self.events.push_back(event);
        evicted
    }

    /// Events it keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Numbers `n` events that no one could read, without making them:
    /// what pushing them leaves once `capacity` more follow (the caller's
    /// promise), since those push out everything older anyway. For bulk
    /// events (`SH_END_ALL` of a million sessions) with no subscriber to
    /// tell what was lost.
    pub fn skip_before_refill(&mut self, n: u64) {
        if n > 0 {
            self.events.clear();
            self.head += n;
        }
    }

    /// The latest sequence number (0 before any event).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The oldest sequence number still kept (head + 1 when empty).
    pub fn oldest(&self) -> u64 {
        self.head + 1 - self.events.len() as u64
    }

    /// The event `seq`, if still kept.
    pub fn get(&self, seq: u64) -> Option<&Event> {
        let index = seq.checked_sub(self.oldest())?;
        self.events.get(usize::try_from(index).ok()?)
    }
}

/// Appends `{"SH_EVENT":{...,"cursor":"` for `event` (the receiver of the
/// event ends it with the subscriber's cursor and `"}}`).
pub fn encode_event_head(out: &mut Vec<u8>, event: &Event, with_keys: bool) {
    out.extend_from_slice(b"{\"SH_EVENT\":{\"event\":\"");
    out.extend_from_slice(event.kind.name().as_bytes());
    out.extend_from_slice(b"\",\"tkn\":");
    push_u64(out, event.tkn);
    if let Some(name) = event.name() {
        out.extend_from_slice(b",\"name\":");
        write_json_str(out, &[name]);
    }
    if let Some(owner) = event.owner() {
        out.extend_from_slice(b",\"owner\":");
        write_json_str(out, &[owner]);
    }
    out.extend_from_slice(b",\"at\":");
    push_u64(out, event.at_unix_ms);
    if let Some(deadline) = event.deadline_unix_ms() {
        out.extend_from_slice(b",\"deadline\":");
        push_u64(out, deadline);
    }
    if let EventKind::Expired { lifetime } = event.kind {
        out.extend_from_slice(if lifetime {
            b",\"reason\":\"lifetime\""
        } else {
            b",\"reason\":\"idle\""
        });
    }
    if with_keys
        && event.kind != EventKind::Created
        && let Some(keys) = event.keys()
    {
        out.extend_from_slice(b",\"keys\":");
        out.extend_from_slice(keys);
        if event.keys_truncated {
            out.extend_from_slice(b",\"keysTruncated\":true");
        }
    }
    out.extend_from_slice(b",\"cursor\":\"");
}

/// Appends `{"SH_EVENT":{"event":"lost","lost":N,"cursor":"`.
pub fn encode_lost_head(out: &mut Vec<u8>, lost: u64) {
    out.extend_from_slice(b"{\"SH_EVENT\":{\"event\":\"lost\",\"lost\":");
    push_u64(out, lost);
    out.extend_from_slice(b",\"cursor\":\"");
}

/// Ends an event begun by `encode_*_head` with its cursor.
pub fn encode_event_tail(out: &mut Vec<u8>, instance: u64, positions: &[u64]) {
    Cursor::write_parts(out, instance, positions);
    out.extend_from_slice(b"\"}}");
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Keys as the JSON object `SH_GET` would answer, holding only the whole
/// keys that fit in `max_bytes`; true when some did not fit.
pub fn encode_keys<'a>(
    keys: impl Iterator<Item = (&'a str, &'a [u8])>,
    max_bytes: usize,
) -> (Box<[u8]>, bool) {
    let mut out = vec![b'{'];
    let mut truncated = false;
    let mut entry = Vec::new();
    for (key, value) in keys {
        entry.clear();
        if out.len() > 1 {
            entry.push(b',');
        }
        write_json_str(&mut entry, &[key]);
        entry.push(b':');
        entry.extend_from_slice(value);
        // The closing brace must fit too.
        if out.len() + entry.len() + 1 > max_bytes {
            truncated = true;
            continue;
        }
        out.extend_from_slice(&entry);
    }
    out.push(b'}');
    (out.into_boxed_slice(), truncated)
}

/// Where a subscriber is: the server instance, and the last sequence
/// number it has seen (or skipped) in each shard's ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub instance: u64,
    pub positions: Vec<u64>,
}

/// Why a string is not a cursor of this server.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CursorError {
    /// Not `<16 hex>.<n>.<n>...` at all.
    Malformed,
    /// Another instance: a cursor from before a restart.
    OtherInstance,
    /// This instance, but another number of shards (cannot happen with a
    /// cursor we made).
    WrongShards,
}

impl Cursor {
    /// `<instance, 16 hex digits>.<position of shard 0>.<shard 1>...`
    pub fn write(&self, out: &mut Vec<u8>) {
        Cursor::write_parts(out, self.instance, &self.positions);
    }

    /// [`Cursor::write`] from its parts (no cursor built for each event).
    pub fn write_parts(out: &mut Vec<u8>, instance: u64, positions: &[u64]) {
        let mut hex = [0u8; 16];
        for (i, digit) in hex.iter_mut().enumerate() {
            let nibble = (instance >> (60 - 4 * i)) & 0xf;
            *digit = b"0123456789abcdef"[nibble as usize];
        }
        out.extend_from_slice(&hex);
        for &position in positions {
            out.push(b'.');
            push_u64(out, position);
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = Vec::new();
        self.write(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Reads a cursor for this server (`instance`, `shards`).
    pub fn parse(text: &str, instance: u64, shards: usize) -> Result<Cursor, CursorError> {
        let mut parts = text.split('.');
        let head = parts.next().unwrap_or_default();
        // Exactly as `write` makes them: lower-case hex, no leading zeros.
        if head.len() != 16 || !head.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(CursorError::Malformed);
        }
        let found = u64::from_str_radix(head, 16).map_err(|_| CursorError::Malformed)?;
        let positions = parts
            .map(|p| {
                let leading_zero = p.len() > 1 && p.starts_with('0');
                if p.is_empty() || leading_zero || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CursorError::Malformed);
                }
                p.parse::<u64>().map_err(|_| CursorError::Malformed)
            })
            .collect::<Result<Vec<u64>, CursorError>>()?;
        if positions.is_empty() {
            return Err(CursorError::Malformed);
        }
        if found != instance {
            return Err(CursorError::OtherInstance);
        }
        if positions.len() != shards {
            return Err(CursorError::WrongShards);
        }
        Ok(Cursor {
            instance,
            positions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_before_a_refill_numbers_as_pushing_would() {
        let tagged = |tkn: u64| Event::new(EventKind::Ended, tkn, 0, None, None, None, None);
        let (mut pushed, mut skipped) = (EventRing::new(3), EventRing::new(3));
        for tkn in 1..=2 {
            pushed.push(tagged(tkn));
            skipped.push(tagged(tkn));
        }
        for tkn in 3..=10 {
            pushed.push(tagged(tkn));
        }
        skipped.skip_before_refill(5);
        for tkn in 8..=10 {
            skipped.push(tagged(tkn));
        }
        assert_eq!(
            (skipped.head(), skipped.oldest()),
            (pushed.head(), pushed.oldest())
        );
        for seq in 8..=10 {
            assert_eq!(skipped.get(seq), pushed.get(seq));
        }
    }

    fn event(kind: EventKind, owner: Option<&str>) -> Event {
        let expiry = matches!(kind, EventKind::Expired { .. } | EventKind::KeysExpired);
        Event::new(
            kind,
            7,
            1000,
            expiry.then_some(990),
            Some("n\"".into()),
            owner.map(Arc::from),
            Some((b"{\"a\":1}".to_vec().into(), false)),
        )
    }

    #[test]
    fn an_event_takes_32_bytes_in_the_ring() {
        assert_eq!(std::mem::size_of::<Event>(), 32);
    }

    #[test]
    fn the_ring_keeps_the_last_events_and_numbers_them() {
        let mut ring = EventRing::new(3);
        assert_eq!((ring.head(), ring.oldest()), (0, 1));
        let mut evicted = Vec::new();
        for tkn in 1..=5 {
            let e = Event::new(EventKind::Created, tkn, 0, None, None, None, None);
            evicted.extend(ring.push(e).map(|(seq, e)| (seq, e.tkn)));
        }
        assert_eq!(evicted, [(1, 1), (2, 2)]);
        assert_eq!((ring.head(), ring.oldest()), (5, 3));
        assert!(ring.get(2).is_none());
        assert_eq!(ring.get(3).map(|e| e.tkn), Some(3));
        assert_eq!(ring.get(5).map(|e| e.tkn), Some(5));
        assert!(ring.get(6).is_none());
    }

    #[test]
    fn filters_by_kind_and_owner() {
        let f = EventFilter {
            kinds: EventKind::bit_of("expired").unwrap(),
            owner: Some("ann".into()),
            with_keys: false,
        };
        assert!(f.passes(&event(EventKind::Expired { lifetime: true }, Some("ann"))));
        assert!(!f.passes(&event(EventKind::Expired { lifetime: true }, Some("bob"))));
        assert!(!f.passes(&event(EventKind::Expired { lifetime: true }, None)));
        assert!(!f.passes(&event(EventKind::Ended, Some("ann"))));
    }

    #[test]
    fn events_encode_as_the_protocol_shows() {
        let cursor = Cursor {
            instance: 0xab,
            positions: vec![3, 0],
        };
        let mut out = Vec::new();
        encode_event_head(
            &mut out,
            &event(EventKind::Expired { lifetime: false }, Some("ann")),
            true,
        );
        encode_event_tail(&mut out, cursor.instance, &cursor.positions);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"SH_EVENT":{"event":"expired","tkn":7,"name":"n\"","owner":"ann","at":1000,"deadline":990,"reason":"idle","keys":{"a":1},"cursor":"00000000000000ab.3.0"}}"#
        );
        let mut out = Vec::new();
        encode_event_head(&mut out, &event(EventKind::Created, None), true);
        encode_event_tail(&mut out, cursor.instance, &cursor.positions);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"SH_EVENT":{"event":"created","tkn":7,"name":"n\"","at":1000,"cursor":"00000000000000ab.3.0"}}"#
        );
        let mut out = Vec::new();
        encode_lost_head(&mut out, 12);
        encode_event_tail(&mut out, cursor.instance, &cursor.positions);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"SH_EVENT":{"event":"lost","lost":12,"cursor":"00000000000000ab.3.0"}}"#
        );
    }

    #[test]
    fn keys_are_truncated_to_whole_keys() {
        let keys = [("a", &b"1"[..]), ("bb", &b"[1,2,3]"[..]), ("c", &b"2"[..])];
        let (all, cut) = encode_keys(keys.into_iter(), 1000);
        assert_eq!((&*all, cut), (&br#"{"a":1,"bb":[1,2,3],"c":2}"#[..], false));
        let (some, cut) = encode_keys(keys.into_iter(), 16);
        assert_eq!((&*some, cut), (&br#"{"a":1,"c":2}"#[..], true));
        let (none, cut) = encode_keys(keys.into_iter(), 2);
        assert_eq!((&*none, cut), (&b"{}"[..], true));
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_is_not_ours() {
        let c = Cursor {
            instance: 0x0123_4567_89ab_cdef,
            positions: vec![0, 18446744073709551615],
        };
        let text = c.to_text();
        assert_eq!(text, "0123456789abcdef.0.18446744073709551615");
        assert_eq!(Cursor::parse(&text, c.instance, 2), Ok(c.clone()));
        assert_eq!(Cursor::parse(&text, 1, 2), Err(CursorError::OtherInstance));
        assert_eq!(
            Cursor::parse(&text, c.instance, 3),
            Err(CursorError::WrongShards)
        );
        for bad in [
            "",
            "x",
            "0123456789abcdef",
            "0123456789abcdef.",
            "0123456789abcdef.1.",
            "0123456789abcdeg.1",
            "0123456789abcde.1",
            "0123456789abcdef.-1",
            "0123456789abcdef.+1",
            "0123456789abcdef.18446744073709551616",
            "0123456789abcdef.1 ",
            "0123456789ABCDEF.1",
            "0123456789abcdef.01",
        ] {
            assert_eq!(
                Cursor::parse(bad, c.instance, 1),
                Err(CursorError::Malformed),
                "{bad:?}"
            );
        }
    }
}
