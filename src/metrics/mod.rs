//! What the server counts, and how `GET /metrics` shows it.
//!
//! Every figure is counted by one shard, in plain integers: nothing shared
//! is written on the request path. A scrape asks every shard for a copy of
//! its figures ([`ShardFigures`]), adds them up and encodes the sum in the
//! Prometheus text format with `prometheus-client` ([`exposition`]).
//!
//! # Layout
//! - `mod.rs`: histograms, command and status labels, the figures a shard
//!   keeps and their sum.
//! - `requests`: the request path's figures, kept by a shard's connections.
//! - `exposition`: the text format, with the figures no shard keeps (the
//!   process, the build, the limits).
//! - `process`: CPU time, resident memory and descriptors of the process.

mod exposition;
mod process;
mod requests;

pub use exposition::{ScrapeFacts, encode};
pub use requests::{Clock, RequestFigures, RequestMetrics, SlowRequests};

use crate::protocol::request::RejectTo;
use crate::protocol::response::status_at;
use crate::protocol::{Command, CommandName, Rejection, Status};

/// The exposition's media type (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds of request durations, in nanoseconds (5 µs to 2.5 s).
pub const DURATION_BOUNDS_NS: &[u64] = &[
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// Bucket bounds of expiry lag, in milliseconds (the shard clock's unit).
pub const LAG_BOUNDS_MS: &[u64] = &[1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Bucket bounds of snapshot durations, in milliseconds (10 ms to 10 min).
pub const SNAPSHOT_BOUNDS_MS: &[u64] = &[
    10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000, 600_000,
];

/// Bucket bounds of change-log fsyncs, in microseconds (50 µs to 5 s).
pub const FSYNC_BOUNDS_US: &[u64] = &[
    50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// Counts of observations at or below each bound and above the one
/// before (the encoder adds them up), the overflow last, and their sum, all in the
/// unit of its bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    bounds: &'static [u64],
    counts: Box<[u64]>,
    sum: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0,
        }
    }

    #[inline]
    pub fn observe(&mut self, value: u64) {
        // Most observations fall in the first buckets: a scan from the
        // bottom beats a binary search.
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Adds another histogram with the same bounds.
    pub fn add(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// `(upper bound, count)` per bucket, as `prometheus-client` takes
    /// them (it adds them up): bounds divided by `per_second` (the unit's
    /// count in one second), `+Inf` (as `f64::MAX`) last.
    pub fn buckets(&self, per_second: f64) -> Vec<(f64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let bound = self
                    .bounds
                    .get(i)
                    // prometheus-client writes f64::MAX as `+Inf`.
                    .map_or(f64::MAX, |&b| b as f64 / per_second);
                (bound, n)
            })
            .collect()
    }
}

/// What a request is counted under: one of our commands, or `unknown` (a
/// name we do not know, or a message that is not a command at all). A
/// small integer, so it rides in every ticket for free.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CommandLabel(u8);

impl Default for CommandLabel {
    fn default() -> Self {
        Self::UNKNOWN
    }
}

impl CommandLabel {
    /// How many labels there are: every command, then `unknown`.
    pub const COUNT: usize = CommandName::ALL.len() + 1;
    pub const UNKNOWN: CommandLabel = CommandLabel(CommandName::ALL.len() as u8);

    pub fn of(command: Option<CommandName>) -> Self {
        match command {
            Some(name) => CommandLabel(name as u8),
            None => Self::UNKNOWN,
        }
    }

    /// The label of a decoded request, or of the rejection it got.
    pub fn of_request(request: &Result<Command, Rejection>) -> Self {
        match request {
            Ok(command) => Self::of(Some(command.kind())),
            Err(Rejection {
                to: RejectTo::Command(name),
                ..
            }) => Self::of(CommandName::from_wire(name)),
            Err(_) => Self::UNKNOWN,
        }
    }

    pub fn command(self) -> Option<CommandName> {
        CommandName::ALL.get(usize::from(self.0)).copied()
    }

    /// Where an answer to this command carries its status (None: unknown).
    #[inline]
    pub fn status_at(self) -> Option<usize> {
        match STATUS_AT.get(self.index()) {
            Some(&at) if at > 0 => Some(at),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub fn name(self) -> &'static str {
        self.command().map_or("unknown", CommandName::wire)
    }
}

/// [`status_at`] of every command, by label (0 for `unknown`).
static STATUS_AT: [usize; CommandLabel::COUNT] = status_offsets();

const fn status_offsets() -> [usize; CommandLabel::COUNT] {
    let mut table = [0; CommandLabel::COUNT];
    let mut i = 0;
    while i < CommandName::ALL.len() {
        table[i] = status_at(CommandName::ALL[i]);
        i += 1;
    }
    table
}

/// How many status columns there are: every status, then one for an
/// answer whose status could not be read (none should be).
pub const STATUS_SLOTS: usize = Status::ALL.len() + 1;
const UNREADABLE_STATUS: u8 = Status::ALL.len() as u8;

/// Status code -> its column, for every code up to the largest.
const SLOT_OF_CODE: [u8; Status::Unknown as usize + 1] = status_slots();
/// The same table in one place in memory, for lookups at run time.
static STATUS_SLOT: [u8; Status::Unknown as usize + 1] = SLOT_OF_CODE;

/// The column of status 150 (writes refused for memory, which are logged).
pub const MEMORY_LIMIT_SLOT: usize = SLOT_OF_CODE[Status::MemoryLimit as usize] as usize;

const fn status_slots() -> [u8; Status::Unknown as usize + 1] {
    let mut table = [UNREADABLE_STATUS; Status::Unknown as usize + 1];
    let mut i = 0;
    while i < Status::ALL.len() {
        table[Status::ALL[i] as usize] = i as u8;
        i += 1;
    }
    table
}

/// The column of status `code` (None: a status could not be read).
pub fn status_slot(code: Option<u16>) -> usize {
    code.and_then(|c| STATUS_SLOT.get(usize::from(c)))
        .map_or(usize::from(UNREADABLE_STATUS), |&slot| usize::from(slot))
}

/// The label value of a status column.
pub fn status_label(slot: usize) -> String {
    Status::ALL
        .get(slot)
        .map_or_else(|| "unreadable".to_string(), |s| s.code().to_string())
}

/// Sessions that expired, by how, and how late.
#[derive(Clone, Debug)]
pub struct ExpiryFigures {
    /// Sessions deleted at their idle deadline (`deleteSession`).
    pub idle: u64,
    /// Sessions ended by their lifetime.
    pub lifetime: u64,
    /// Times a session's keys were cleared at its deadline (the session
    /// stays).
    pub keys: u64,
    /// Milliseconds from each deadline to its expiry.
    pub lag_ms: Histogram,
}

impl Default for ExpiryFigures {
    fn default() -> Self {
        ExpiryFigures {
            idle: 0,
            lifetime: 0,
            keys: 0,
            lag_ms: Histogram::new(LAG_BOUNDS_MS),
        }
    }
}

impl ExpiryFigures {
    fn add(&mut self, other: &ExpiryFigures) {
        self.idle += other.idle;
        self.lifetime += other.lifetime;
        self.keys += other.keys;
        self.lag_ms.add(&other.lag_ms);
    }
}

/// Snapshots this shard started (periodic ones and `SH_SAVE`).
#[derive(Clone, Debug)]
pub struct SnapshotFigures {
    pub duration_ms: Histogram,
    /// When the last one succeeded, in ms since the Unix epoch (0: never).
    pub last_success_ms: u64,
    pub failures: u64,
}

impl Default for SnapshotFigures {
    fn default() -> Self {
        SnapshotFigures {
            duration_ms: Histogram::new(SNAPSHOT_BOUNDS_MS),
            last_success_ms: 0,
            failures: 0,
        }
    }
}

/// A shard's change-log writer: what it wrote and how long fsyncs took.
#[derive(Clone, Debug)]
pub struct LogFigures {
    pub records: u64,
    pub bytes: u64,
    pub fsync_us: Histogram,
}

impl Default for LogFigures {
    fn default() -> Self {
        LogFigures {
            records: 0,
            bytes: 0,
            fsync_us: Histogram::new(FSYNC_BOUNDS_US),
        }
    }
}

/// One shard's figures at the moment it was asked.
#[derive(Clone, Debug, Default)]
pub struct ShardFigures {
    pub shard: usize,
    /// Connections on the shard (WebSocket, handshaking and HTTP).
    pub connections: u64,
    pub sessions: u64,
    pub keys: u64,
    pub memory_used: u64,
    pub requests: RequestFigures,
    pub expiry: ExpiryFigures,
    pub session_not_exist: u64,
    pub cross_shard_requests: u64,
    pub snapshots: SnapshotFigures,
    /// None: the change log is off.
    pub log: Option<LogFigures>,
    pub event_subscribers: u64,
    pub events_lost: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_files_each_value_under_the_first_bound_it_fits() {
        let mut h = Histogram::new(&[10, 100]);
        for v in [0, 10, 11, 100, 101, u64::MAX] {
            h.observe(v);
        }
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum(), u64::MAX, "the sum saturates");
        assert_eq!(
            h.buckets(1000.0),
            vec![(0.01, 2), (0.1, 2), (f64::MAX, 2)],
            "bounds in seconds, counts per bucket"
        );
        let mut twice = h.clone();
        twice.add(&h);
        assert_eq!(twice.count(), 12);
    }

    #[test]
    fn every_command_and_status_has_its_own_column() {
        for &command in CommandName::ALL {
            let label = CommandLabel::of(Some(command));
            assert_eq!(label.command(), Some(command));
            assert_eq!(label.name(), command.wire());
            assert!(label.index() < CommandLabel::COUNT);
        }
        assert_eq!(CommandLabel::of(None).name(), "unknown");
        assert_eq!(CommandLabel::UNKNOWN.index(), CommandLabel::COUNT - 1);
        for (i, status) in Status::ALL.iter().enumerate() {
            assert_eq!(status_slot(Some(status.code())), i);
            assert_eq!(status_label(i), status.code().to_string());
        }
        for code in [None, Some(0), Some(999), Some(1001), Some(u16::MAX)] {
            assert_eq!(status_slot(code), STATUS_SLOTS - 1);
        }
        assert_eq!(status_label(STATUS_SLOTS - 1), "unreadable");
    }
}
