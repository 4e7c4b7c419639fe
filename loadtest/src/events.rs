//! Session events: the one subscriber connection of a run (`--subscribe`
//! beside any workload on nemesisdb, and expiry-events' on both targets),
//! reading what the server pushes as fast as it arrives, and the lag of each
//! event.
//!
//! Owns: subscribing (nemesisdb `SH_SUBSCRIBE`; Redis `CONFIG SET
//! notify-keyspace-events Ex` + `PSUBSCRIBE __keyevent@0__:expired`), the
//! subscriber thread, reading pushed events, and [`EventStats`] /
//! [`EventSummary`]. Knows nothing of workloads.
//!
//! The lag of an event is its arrival (wall clock, taken right after the
//! `read` that brought it) minus the moment it is about: the `deadline` of
//! `expired` and `keysExpired`, the `at` of the others. Redis's expired
//! notification names the key only, so on Redis the deadline comes from the
//! key's name ([`Accept::RedisKeys`]): only expiry-events, which sets every
//! key's expiry time itself, can measure it; `--subscribe` is nemesisdb's.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use memchr::memmem;
use serde::Serialize;

use crate::client::{Client, command};
use crate::config::{Protocol, Target};
use crate::resp;
use crate::stats::group;
use crate::ws;

/// The channel Redis publishes db 0's expirations on.
pub const REDIS_EXPIRED: &[u8] = b"__keyevent@0__:expired";

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Created,
    Ended,
    Expired,
    KeysExpired,
    /// `lost`: events this subscriber will never see.
    Lost,
    /// A name this generator does not know.
    Unknown,
}

/// The fields of one pushed event that the statistics use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    pub at: Option<u64>,
    pub deadline: Option<u64>,
    pub lost: Option<i64>,
}

impl Event {
    /// The moment the event is about, ms since the Unix epoch: its deadline
    /// for expiries, else when it happened.
    pub fn reference_ms(&self) -> Option<u64> {
        match self.kind {
            Kind::Expired | Kind::KeysExpired => self.deadline,
            _ => self.at,
        }
    }
}

/// Finds an `SH_EVENT`'s members without building a JSON tree. A quoted
/// name cannot occur inside a JSON string (a quote in a string is escaped),
/// only as a member name (followed by `:`) or a string value (followed by
/// `,` or `}`); and subscriptions here never ask for `keys`, the only nested
/// object an event has, so the first quoted name followed by `:` is the
/// member.
pub struct EventScanner {
    event: memmem::Finder<'static>,
    at: memmem::Finder<'static>,
    deadline: memmem::Finder<'static>,
    lost: memmem::Finder<'static>,
}

impl Default for EventScanner {
    fn default() -> Self {
        EventScanner {
            event: memmem::Finder::new(b"\"event\""),
            at: memmem::Finder::new(b"\"at\""),
            deadline: memmem::Finder::new(b"\"deadline\""),
            lost: memmem::Finder::new(b"\"lost\""),
        }
    }
}

impl EventScanner {
    /// The event in a message, `None` when the message is no `SH_EVENT`.
    pub fn parse(&self, body: &[u8]) -> Option<Event> {
        if ws::reply_name(body) != Some(b"SH_EVENT") {
            return None;
        }
        let kind = member(body, &self.event)
            .and_then(string_value)
            .map_or(Kind::Unknown, |name| match name {
                b"created" => Kind::Created,
                b"ended" => Kind::Ended,
                b"expired" => Kind::Expired,
                b"keysExpired" => Kind::KeysExpired,
                b"lost" => Kind::Lost,
                _ => Kind::Unknown,
            });
        let number = |f: &memmem::Finder| member(body, f).and_then(signed_value);
        let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        Some(Event {
            kind,
            at: unsigned(number(&self.at)),
            deadline: unsigned(number(&self.deadline)),
            lost: number(&self.lost),
        })
    }
}

/// What follows the colon after member name `f` (quoted): the first match
/// followed by a colon, as a value (`"event":"lost"`) is followed by none.
fn member<'a>(body: &'a [u8], f: &memmem::Finder) -> Option<&'a [u8]> {
    let len = f.needle().len();
    f.find_iter(body)
        .find_map(|i| skip_ws(&body[i + len..]).strip_prefix(b":"))
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

/// `\s*"NAME"` -> NAME (no escapes: event names have none).
fn string_value(s: &[u8]) -> Option<&[u8]> {
    let s = skip_ws(s).strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', s)?;
    Some(&s[..end])
}

/// `\s*-?DIGITS` -> the number.
fn signed_value(s: &[u8]) -> Option<i64> {
    let s = skip_ws(s);
    let (neg, s) = match s.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 18 {
        return None;
    }
    let v = s[..digits]
        .iter()
        .fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
    Some(if neg { -v } else { v })
}

/// The key of a Redis `pmessage` push on [`REDIS_EXPIRED`]; `None` for any
/// other reply (the PSUBSCRIBE confirmation).
pub fn redis_expired_key(reply: &[u8]) -> Option<&[u8]> {
    let mut parts: [&[u8]; 4] = [b""; 4];
    let mut n = 0;
    resp::array_bulks(reply, |b| {
        if let Some(p) = parts.get_mut(n) {
            *p = b;
        }
        n += 1;
    })?;
    (n == 4 && parts[0] == b"pmessage" && parts[2] == REDIS_EXPIRED).then_some(parts[3])
}

/// Which events count, and what each is measured against.
#[derive(Clone, Debug)]
pub enum Accept {
    /// Every event (`--subscribe`).
    All,
    /// expiry-events on nemesisdb: `expired` events whose deadline lies in
    /// `from_ms..to_ms`; any other event is counted as `other`.
    ExpiryWindow { from_ms: u64, to_ms: u64 },
    /// expiry-events on Redis: the expiry of key `<prefix><i>`, i below `n`,
    /// whose deadline is `start_ms + i * 1000 / n` (the keys' PEXPIREAT);
    /// any other key is counted as `other`.
    RedisKeys {
        prefix: &'static [u8],
        n: u64,
        start_ms: u64,
    },
}

impl Accept {
    /// The deadline of key `<prefix><i>` of [`Accept::RedisKeys`].
    pub fn redis_deadline(start_ms: u64, n: u64, i: u64) -> u64 {
        start_ms + i * 1000 / n.max(1)
    }

    fn redis_key_deadline(&self, key: &[u8]) -> Option<u64> {
        let Accept::RedisKeys {
            prefix,
            n,
            start_ms,
        } = self
        else {
            return None;
        };
        let i = resp::unsigned(key.strip_prefix(*prefix)?)?;
        (i < *n).then(|| Accept::redis_deadline(*start_ms, *n, i))
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What the subscriber saw.
pub struct EventStats {
    pub accept: Accept,
    /// Counted events by kind: created, ended, expired, keysExpired.
    pub counts: [u64; 4],
    /// The sum of `lost` events' counts (-1, unknown, counts as 0).
    pub lost: u64,
    /// Events that did not pass `accept`, or of an unknown kind.
    pub other: u64,
    /// Counted events with no time to measure against.
    pub untimed: u64,
    /// Counted events that arrived before the moment they are about (their
    /// lag is recorded as 0).
    pub early: u64,
    /// Lag in microseconds.
    pub lag: Histogram<u64>,
    /// Earliest and latest deadline of counted expiries, ms.
    pub deadlines: Option<(u64, u64)>,
    /// When the last counted event arrived, µs since the Unix epoch.
    pub last_arrival_us: u64,
    /// Why the subscriber's connection ended early, if it did.
    pub failure: Option<String>,
}

impl EventStats {
    pub fn new(accept: Accept) -> EventStats {
        EventStats {
            accept,
            counts: [0; 4],
            lost: 0,
            other: 0,
            untimed: 0,
            early: 0,
            // Valid constant bounds: 1 µs to an hour, 3 digits.
            lag: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
            deadlines: None,
            last_arrival_us: 0,
            failure: None,
        }
    }

    pub fn received(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Counts one nemesisdb event that arrived at `arrival_us`.
    pub fn add_ws(&mut self, e: &Event, arrival_us: u64) {
        if e.kind == Kind::Lost {
            self.lost += e.lost.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
            return;
        }
        let slot = match e.kind {
            Kind::Created => 0,
            Kind::Ended => 1,
            Kind::Expired => 2,
            Kind::KeysExpired => 3,
            Kind::Lost | Kind::Unknown => {
                self.other += 1;
                return;
            }
        };
        if let Accept::ExpiryWindow { from_ms, to_ms } = self.accept
            && !(e.kind == Kind::Expired
                && e.deadline.is_some_and(|d| (from_ms..to_ms).contains(&d)))
        {
            self.other += 1;
            return;
        }
        self.counts[slot] += 1;
        match e.reference_ms() {
            Some(ms) => self.measure(slot, ms, e.deadline, arrival_us),
            None => self.untimed += 1,
        }
    }

    /// Counts one Redis expired notification for `key`.
    pub fn add_redis(&mut self, key: &[u8], arrival_us: u64) {
        match self.accept.redis_key_deadline(key) {
            Some(deadline) => {
                self.counts[2] += 1;
                self.measure(2, deadline, Some(deadline), arrival_us);
            }
            None => self.other += 1,
        }
    }

    fn measure(&mut self, slot: usize, reference_ms: u64, deadline: Option<u64>, arrival_us: u64) {
        let reference_us = reference_ms.saturating_mul(1000);
        if arrival_us < reference_us {
            self.early += 1;
        }
        self.lag
            .saturating_record(arrival_us.saturating_sub(reference_us));
        if slot >= 2
            && let Some(d) = deadline
        {
            self.deadlines = Some(match self.deadlines {
                Some((lo, hi)) => (lo.min(d), hi.max(d)),
                None => (d, d),
            });
        }
        self.last_arrival_us = self.last_arrival_us.max(arrival_us);
    }

    pub fn summary(&self, expected: Option<u64>) -> EventSummary {
        let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
        let q = |p: f64| {
            if self.lag.is_empty() {
                0.0
            } else {
                ms(self.lag.value_at_quantile(p))
            }
        };
        EventSummary {
            received: self.received(),
            expected,
            created: self.counts[0],
            ended: self.counts[1],
            expired: self.counts[2],
            keys_expired: self.counts[3],
            lost: self.lost,
            other: self.other,
            untimed: self.untimed,
            early: self.early,
            lag_ms: LagMs {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: if self.lag.is_empty() {
                    0.0
                } else {
                    ms(self.lag.max())
                },
            },
            deadline_spread_ms: self.deadlines.map(|(lo, hi)| hi - lo),
            last_after_last_deadline_ms: self.deadlines.map(|(_, hi)| {
                let us = self.last_arrival_us as i64 - (hi as i64) * 1000;
                (us as f64 / 100.0).round() / 10.0
            }),
            failure: self.failure.clone(),
        }
    }
}

/// The events of a run, as `report.json`'s `events` and the summary show them.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    /// Counted events (all four kinds).
    pub received: u64,
    /// expiry-events: the expiries set up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    pub created: u64,
    pub ended: u64,
    pub expired: u64,
    #[serde(rename = "keysExpired")]
    pub keys_expired: u64,
    /// The sum of `lost` events.
    pub lost: u64,
    /// Events not counted (not the run's, or of an unknown kind).
    pub other: u64,
    /// Counted events without the time their lag is measured from.
    pub untimed: u64,
    /// Counted events that arrived before their deadline (or `at`).
    pub early: u64,
    /// Arrival minus deadline (expiries) or `at` (the rest).
    pub lag_ms: LagMs,
    /// Latest minus earliest deadline of the counted expiries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_spread_ms: Option<u64>,
    /// When the last counted event arrived, after the latest deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_after_last_deadline_ms: Option<f64>,
    /// Why the subscriber's connection ended before the run did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LagMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl EventSummary {
    /// The human lines under the summary table.
    pub fn print(&self) {
        let mut kinds = Vec::new();
        for (name, n) in [
            ("created", self.created),
            ("ended", self.ended),
            ("expired", self.expired),
            ("keysExpired", self.keys_expired),
        ] {
            if n > 0 {
                kinds.push(format!("{name} {}", group(n as f64)));
            }
        }
        let of = self
            .expected
            .map_or(String::new(), |e| format!(" of {}", group(e as f64)));
        println!(
            "  events        {}{of} received{}, {} lost, {} early, {} other",
            group(self.received as f64),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            },
            group(self.lost as f64),
            self.early,
            self.other
        );
        if let (Some(spread), Some(last)) =
            (self.deadline_spread_ms, self.last_after_last_deadline_ms)
        {
            println!(
                "  deadlines     spread over {spread} ms; the last event arrived {last:.1} ms after the latest"
            );
        }
        if let Some(f) = &self.failure {
            println!("  subscriber    failed: {f}");
        }
        println!("  event lag (ms) p50     p90      p99      p99.9    max");
        let l = &self.lag_ms;
        println!(
            "                {:<8.1} {:<8.1} {:<8.1} {:<8.1} {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
    }

    /// One line for stderr (with `--json`, whose object has fixed fields).
    pub fn line(&self) -> String {
        let l = &self.lag_ms;
        format!(
            "events: {} received{}, {} lost, {} early, {} other; lag ms p50 {} p90 {} p99 {} p99.9 {} max {}",
            self.received,
            self.expected.map_or(String::new(), |e| format!(" of {e}")),
            self.lost,
            self.early,
            self.other,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        )
    }
}

/// How the subscriber thread is told to end.
const RUN: u8 = 0;
/// End once no event came for [`QUIET`] (or [`DRAIN_MAX`] after being told).
const FINISH: u8 = 1;
const STOP: u8 = 2;
const QUIET: Duration = Duration::from_millis(250);
const DRAIN_MAX: Duration = Duration::from_secs(3);

struct Control {
    state: AtomicU8,
    /// The thread has ended (expected count reached, told to, or failed).
    done: AtomicBool,
}

/// The subscriber connection and its thread.
pub struct Subscriber {
    control: Arc<Control>,
    thread: JoinHandle<EventStats>,
    /// Redis: `notify-keyspace-events` as it was before, to put back.
    pub redis_notify: Option<Vec<u8>>,
}

impl Subscriber {
    /// Connects and subscribes (before returning, so every event after it
    /// is seen), then reads on a thread of its own. `events`: nemesisdb's
    /// event names to ask for (empty: all). `expect`: end when this many
    /// events were counted.
    pub fn start(
        target: &Target,
        seed: u64,
        events: &[&str],
        accept: Accept,
        expect: Option<u64>,
    ) -> Result<Subscriber, String> {
        let fail = |e: io::Error| format!("subscriber on {}: {e}", target.url);
        let mut client = Client::connect(target, seed, u64::MAX - 1).map_err(fail)?;
        let redis_notify = match target.protocol {
            Protocol::Ws => {
                subscribe_ws(&mut client, events).map_err(|e| format!("subscriber: {e}"))?;
                None
            }
            Protocol::Redis => {
                Some(subscribe_redis(&mut client).map_err(|e| format!("subscriber: {e}"))?)
            }
        };
        client
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(fail)?;
        let control = Arc::new(Control {
            state: AtomicU8::new(RUN),
            done: AtomicBool::new(false),
        });
        let c = Arc::clone(&control);
        let protocol = target.protocol;
        let thread = std::thread::Builder::new()
            .name("subscriber".into())
            .spawn(move || {
                let stats = read_events(client, protocol, accept, expect, &c);
                c.done.store(true, Ordering::Release);
                stats
            })
            .map_err(|e| format!("subscriber thread: {e}"))?;
        Ok(Subscriber {
            control,
            thread,
            redis_notify,
        })
    }

    /// Whether the thread has ended (all expected events came, or it failed).
    pub fn done(&self) -> bool {
        self.control.done.load(Ordering::Acquire)
    }

    /// Lets events still on their way arrive (until none came for a
    /// moment), then ends the thread.
    pub fn finish(self) -> Result<EventStats, String> {
        self.control.state.store(FINISH, Ordering::Release);
        self.join()
    }

    /// Ends the thread now.
    pub fn stop(self) -> Result<EventStats, String> {
        self.control.state.store(STOP, Ordering::Release);
        self.join()
    }

    fn join(self) -> Result<EventStats, String> {
        let stats = self
            .thread
            .join()
            .map_err(|_| "the subscriber thread panicked".to_string())?;
        if let Some(f) = &stats.failure {
            eprintln!(
                "loadtest: the subscriber's connection failed after {} events: {f}",
                stats.received()
            );
        }
        Ok(stats)
    }
}

/// `SH_SUBSCRIBE`, and its answer (`st` 1 or the subscription failed).
fn subscribe_ws(client: &mut Client, events: &[&str]) -> Result<(), String> {
    let names: Vec<String> = events.iter().map(|e| format!("\"{e}\"")).collect();
    let request = if names.is_empty() {
        r#"{"SH_SUBSCRIBE":{"withKeys":false}}"#.to_string()
    } else {
        format!(
            r#"{{"SH_SUBSCRIBE":{{"events":[{}],"withKeys":false}}}}"#,
            names.join(",")
        )
    };
    client.send(request.as_bytes()).map_err(|e| e.to_string())?;
    let scanner = ws::Scanner::default();
    loop {
        let reply = client.recv().map_err(|e| e.to_string())?;
        match ws::reply_name(&reply) {
            Some(b"SH_EVENT") => continue,
            Some(b"SH_SUBSCRIBE_RSP") if scanner.status(&reply) == Some(1) => return Ok(()),
            _ => {
                return Err(format!(
                    "{request} was answered {} (does the server have session events, #16?)",
                    String::from_utf8_lossy(&reply)
                ));
            }
        }
    }
}

/// Turns on expired notifications and subscribes to them; returns the
/// notification setting it replaced.
fn subscribe_redis(client: &mut Client) -> Result<Vec<u8>, String> {
    let io = |e: io::Error| e.to_string();
    let old = client
        .call(&command(&[b"CONFIG", b"GET", b"notify-keyspace-events"]))
        .map_err(io)?;
    let mut parts = Vec::new();
    resp::array_bulks(&old, |b| parts.push(b.to_vec()));
    let previous = parts.get(1).cloned().unwrap_or_default();
    let set = client
        .call(&command(&[
            b"CONFIG",
            b"SET",
            b"notify-keyspace-events",
            b"Ex",
        ]))
        .map_err(io)?;
    if set != b"+OK\r\n" {
        return Err(format!(
            "CONFIG SET notify-keyspace-events Ex answered {}",
            String::from_utf8_lossy(&set).trim_end()
        ));
    }
    let sub = client
        .call(&command(&[b"PSUBSCRIBE", REDIS_EXPIRED]))
        .map_err(io)?;
    if !sub.starts_with(b"*3\r\n$10\r\npsubscribe\r\n") {
        return Err(format!(
            "PSUBSCRIBE answered {}",
            String::from_utf8_lossy(&sub).trim_end()
        ));
    }
    Ok(previous)
}

fn read_events(
    mut client: Client,
    protocol: Protocol,
    accept: Accept,
    expect: Option<u64>,
    control: &Control,
) -> EventStats {
    let scanner = EventScanner::default();
    let mut stats = EventStats::new(accept);
    let mut last_event = Instant::now();
    let mut told: Option<Instant> = None;
    loop {
        let read = client.read_more().and_then(|_| {
            let arrival = now_unix_us();
            last_event = Instant::now();
            while let Some(r) = client.next_message()? {
                let m = client.message(r);
                match protocol {
                    Protocol::Ws => {
                        if let Some(e) = scanner.parse(m) {
                            stats.add_ws(&e, arrival);
                        }
                    }
                    Protocol::Redis => {
                        if let Some(key) = redis_expired_key(m) {
                            stats.add_redis(key, arrival);
                        }
                    }
                }
            }
            Ok(())
        });
        match read {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                if control.state.load(Ordering::Acquire) != STOP {
                    stats.failure = Some(e.to_string());
                }
                return stats;
            }
        }
        // Lost events never come: they count towards the expected.
        if expect.is_some_and(|n| stats.received() + stats.lost >= n) {
            break;
        }
        match control.state.load(Ordering::Acquire) {
            STOP => break,
            FINISH => {
                let now = Instant::now();
                let since = *told.get_or_insert(now);
                if now.duration_since(last_event) >= QUIET || now.duration_since(since) >= DRAIN_MAX
                {
                    break;
                }
            }
            _ => {}
        }
    }
    client.close();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_from_their_members() {
        let s = EventScanner::default();
        let e = s
            .parse(
                br#"{"SH_EVENT":{"event":"expired","tkn":7,"name":"n","owner":"ann","at":1764430000123,"deadline":1764430000120,"reason":"idle","cursor":"c1"}}"#,
            )
            .unwrap();
        assert_eq!(
            e,
            Event {
                kind: Kind::Expired,
                at: Some(1764430000123),
                deadline: Some(1764430000120),
                lost: None
            }
        );
        assert_eq!(e.reference_ms(), Some(1764430000120));
        let c = s
            .parse(br#"{"SH_EVENT":{"event":"created","tkn":"8","at":5,"cursor":"x"}}"#)
            .unwrap();
        assert_eq!((c.kind, c.reference_ms()), (Kind::Created, Some(5)));
        let l = s
            .parse(br#"{"SH_EVENT": {"event" : "lost", "lost" : 42, "cursor":"x"}}"#)
            .unwrap();
        assert_eq!((l.kind, l.lost, l.at), (Kind::Lost, Some(42), None));
        // A name or owner holding member-like text is still a string, and
        // a value equal to a member name is no member.
        let tricky = s
            .parse(
                br#"{"SH_EVENT":{"event":"ended","tkn":1,"name":"\"at\":9","owner":"at","at":3,"cursor":"x"}}"#,
            )
            .unwrap();
        assert_eq!(tricky.at, Some(3));
        assert_eq!(
            s.parse(br#"{"SH_EVENT":{"event":"renamed","at":3}}"#)
                .unwrap()
                .kind,
            Kind::Unknown
        );
        assert_eq!(s.parse(br#"{"SH_GET_RSP":{"st":1,"at":3}}"#), None);
    }

    #[test]
    fn redis_notifications_name_the_key() {
        let push = b"*4\r\n$8\r\npmessage\r\n$22\r\n__keyevent@0__:expired\r\n$22\r\n__keyevent@0__:expired\r\n$5\r\nee:17\r\n";
        assert_eq!(redis_expired_key(push), Some(&b"ee:17"[..]));
        let confirm = b"*3\r\n$10\r\npsubscribe\r\n$22\r\n__keyevent@0__:expired\r\n:1\r\n";
        assert_eq!(redis_expired_key(confirm), None);
        let other = b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$3\r\nfoo\r\n$1\r\nk\r\n";
        assert_eq!(redis_expired_key(other), None);
    }

    #[test]
    fn lag_is_measured_from_the_deadline_or_at() {
        let mut st = EventStats::new(Accept::All);
        let ev = |kind, at, deadline| Event {
            kind,
            at: Some(at),
            deadline,
            lost: None,
        };
        // Expired 5 ms after its deadline, though `at` says 1 ms.
        st.add_ws(&ev(Kind::Expired, 1_001, Some(1_000)), 1_005_000);
        st.add_ws(&ev(Kind::Created, 2_000, None), 2_000_300);
        st.add_ws(
            &Event {
                kind: Kind::Lost,
                at: None,
                deadline: None,
                lost: Some(7),
            },
            3_000_000,
        );
        // Before its `at`: early, lag 0.
        st.add_ws(&ev(Kind::Ended, 4_000, None), 3_999_000);
        let s = st.summary(None);
        assert_eq!((s.received, s.expired, s.created, s.ended), (3, 1, 1, 1));
        assert_eq!((s.lost, s.early, s.other), (7, 1, 0));
        assert_eq!(s.lag_ms.max, 5.0);
        assert_eq!(s.deadline_spread_ms, Some(0));
        assert_eq!(s.last_after_last_deadline_ms, Some(2_999.0));

        // A window counts only expiries with a deadline inside it.
        let mut w = EventStats::new(Accept::ExpiryWindow {
            from_ms: 1_000,
            to_ms: 2_000,
        });
        w.add_ws(&ev(Kind::Expired, 1_500, Some(1_499)), 1_510_000);
        w.add_ws(&ev(Kind::Expired, 2_500, Some(2_000)), 2_510_000);
        w.add_ws(&ev(Kind::Created, 1_500, None), 1_510_000);
        let s = w.summary(Some(1));
        assert_eq!((s.received, s.other, s.expected), (1, 2, Some(1)));
        assert_eq!(s.lag_ms.p50, 11.0);
        assert_eq!(s.last_after_last_deadline_ms, Some(11.0));
    }

    #[test]
    fn redis_keys_carry_their_deadline() {
        let accept = Accept::RedisKeys {
            prefix: b"ee:",
            n: 4,
            start_ms: 10_000,
        };
        assert_eq!(accept.redis_key_deadline(b"ee:0"), Some(10_000));
        assert_eq!(accept.redis_key_deadline(b"ee:3"), Some(10_750));
        assert_eq!(accept.redis_key_deadline(b"ee:4"), None);
        assert_eq!(accept.redis_key_deadline(b"s:1"), None);
        let mut st = EventStats::new(accept);
        st.add_redis(b"ee:2", 10_600_000);
        st.add_redis(b"other", 10_600_000);
        let s = st.summary(Some(4));
        assert_eq!((s.received, s.other), (1, 1));
        assert_eq!(s.lag_ms.max, 100.0);
    }
}
