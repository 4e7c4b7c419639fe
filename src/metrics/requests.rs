//! The request path's figures, kept by a shard's connections: answers by
//! command and status, how long each took, connections and their bytes.
//!
//! A request is timed from the moment its shard turned to it to the moment
//! its answer reached its connection, wherever it ran. One clock read per
//! answer does it: the read that ends one request's time starts the next
//! one's on the same shard, and a connection's first message of a turn
//! reads the clock once more (so time spent elsewhere is not counted).

use std::time::{Duration, Instant};

use super::{
    CommandLabel, DURATION_BOUNDS_NS, Histogram, MEMORY_LIMIT_SLOT, STATUS_SLOTS, status_slot,
};
use crate::logging::RateLimited;
use crate::protocol::response::status_in;

/// The clock requests are timed with: the CPU's time-stamp counter where
/// it is reliable (a read costs ~13 ns on our machines, `Instant::now`
/// ~33 ns), the OS clock elsewhere.
pub type Clock = quanta::Clock;

/// How often a shard may log a slow request (the ones between are counted
/// and the count is logged with the next).
const SLOW_LOG_EVERY: Duration = Duration::from_secs(1);

/// A shard's request figures at the moment it was asked.
#[derive(Clone, Debug)]
pub struct RequestFigures {
    /// Answers, by command label then status column.
    pub answers: Vec<[u64; STATUS_SLOTS]>,
    /// Nanoseconds from a request to its answer, by command label.
    pub durations_ns: Vec<Histogram>,
    /// Connections accepted (probes and scrapes included).
    pub accepted: u64,
    /// Refused at accept: the connection limit was reached.
    pub rejected_limit: u64,
    /// Ended before a WebSocket session began: not HTTP, not an upgrade,
    /// too slow, or gone.
    pub rejected_handshake: u64,
    /// Closed by us for a breach of the WebSocket protocol or a limit.
    pub rejected_protocol: u64,
    /// Credentials that named no user or carried a wrong password.
    pub auth_failures: u64,
    /// Socket bytes of every connection, closed or open.
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl Default for RequestFigures {
    fn default() -> Self {
        RequestFigures {
            answers: vec![[0; STATUS_SLOTS]; CommandLabel::COUNT],
            durations_ns: vec![Histogram::new(DURATION_BOUNDS_NS); CommandLabel::COUNT],
            accepted: 0,
            rejected_limit: 0,
            rejected_handshake: 0,
            rejected_protocol: 0,
            auth_failures: 0,
            bytes_received: 0,
            bytes_sent: 0,
        }
    }
}

impl RequestFigures {
    pub fn add(&mut self, other: &RequestFigures) {
        for (mine, theirs) in self.answers.iter_mut().zip(&other.answers) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        for (mine, theirs) in self.durations_ns.iter_mut().zip(&other.durations_ns) {
            mine.add(theirs);
        }
        self.accepted += other.accepted;
        self.rejected_limit += other.rejected_limit;
        self.rejected_handshake += other.rejected_handshake;
        self.rejected_protocol += other.rejected_protocol;
        self.auth_failures += other.auth_failures;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
    }
}

/// Logs requests slower than a threshold, at most once a second per shard.
#[derive(Debug)]
pub struct SlowRequests {
    threshold_ns: u64,
    shard: usize,
    limit: RateLimited,
}

impl SlowRequests {
    pub fn new(threshold: Duration, shard: usize) -> Self {
        SlowRequests {
            threshold_ns: u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX),
            shard,
            limit: RateLimited::new(SLOW_LOG_EVERY),
        }
    }

    fn note(&mut self, command: CommandLabel, took_ns: u64) {
        if took_ns <= self.threshold_ns {
            return;
        }
        // Only past the threshold: the OS clock is read for rare requests.
        let Some(suppressed) = self.limit.allow(Instant::now()) else {
            return;
        };
        tracing::warn!(
            command = command.name(),
            shard = self.shard,
            duration_ms = took_ns as f64 / 1e6,
            threshold_ms = self.threshold_ns as f64 / 1e6,
            suppressed,
            "slow request: {} took {:.3} ms on shard {}",
            command.name(),
            took_ns as f64 / 1e6,
            self.shard
        );
    }
}

/// A shard's request figures as they are being counted.
#[derive(Debug)]
pub struct RequestMetrics {
    clock: Clock,
    /// When this shard last answered a request or turned to a connection:
    /// the start of the next request read.
    mark: u64,
    figures: RequestFigures,
    slow: Option<SlowRequests>,
    shard: usize,
    /// Writes refused for memory (status 150) are logged, rate-limited.
    memory_refusals: RateLimited,
    /// So are failed authentications (a guessing client sends many).
    auth_failure_lines: RateLimited,
}

impl RequestMetrics {
    pub fn new(clock: Clock, slow: Option<SlowRequests>, shard: usize) -> Self {
        RequestMetrics {
            mark: clock.raw(),
            clock,
            figures: RequestFigures::default(),
            slow,
            shard,
            memory_refusals: RateLimited::new(SLOW_LOG_EVERY),
            auth_failure_lines: RateLimited::new(SLOW_LOG_EVERY),
        }
    }

    /// The shard turns to a connection's messages: what came before is
    /// not theirs to count.
    #[inline]
    pub fn turn_to_connection(&mut self) {
        self.mark = self.clock.raw();
    }

    /// The start of the request being read now (goes in its ticket).
    #[inline]
    pub fn request_started(&self) -> u64 {
        self.mark
    }

    /// An answer reached its connection: counts it under its command and
    /// the status it carries, and times it from `started`.
    #[inline(always)]
    pub fn answered(&mut self, command: CommandLabel, started: u64, response: &[u8]) {
        let now = self.clock.raw();
        let took_ns = self.clock.delta_as_nanos(started, now);
        let label = command.index();
        if let Some(histogram) = self.figures.durations_ns.get_mut(label) {
            histogram.observe(took_ns);
        }
        let status = status_slot(status_in(response, command.status_at()));
        if let Some(row) = self.figures.answers.get_mut(label) {
            row[status] += 1;
        }
        if status == MEMORY_LIMIT_SLOT {
            self.memory_refused(command);
        }
        if let Some(slow) = &mut self.slow {
            slow.note(command, took_ns);
        }
        self.mark = now;
    }

    #[cold]
    fn memory_refused(&mut self, command: CommandLabel) {
        if let Some(suppressed) = self.memory_refusals.allow(Instant::now()) {
            tracing::warn!(
                command = command.name(),
                shard = self.shard,
                suppressed,
                "memory limit reached: {} refused on shard {} (--max-memory)",
                command.name(),
                self.shard
            );
        }
    }

    pub fn accepted(&mut self) {
        self.figures.accepted += 1;
    }

    pub fn rejected_at_limit(&mut self) {
        self.figures.rejected_limit += 1;
    }

    pub fn rejected_in_handshake(&mut self) {
        self.figures.rejected_handshake += 1;
    }

    pub fn closed_for_protocol(&mut self) {
        self.figures.rejected_protocol += 1;
    }

    /// Counts a failed authentication and logs it (at most one line a
    /// second per shard, saying how many were held back).
    pub fn auth_failed(&mut self, peer: Option<std::net::SocketAddr>, user: &str) {
        self.figures.auth_failures += 1;
        if let Some(suppressed) = self.auth_failure_lines.allow(Instant::now()) {
            let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            tracing::warn!(
                peer = %peer,
                user,
                shard = self.shard,
                suppressed,
                "authentication failed for user {user:?} from {peer}"
            );
        }
    }

    /// Bytes of a connection that is gone (live ones are added when asked).
    pub fn add_bytes(&mut self, received: u64, sent: u64) {
        self.figures.bytes_received += received;
        self.figures.bytes_sent += sent;
    }

    pub fn figures(&self) -> &RequestFigures {
        &self.figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::response::Response;
    use crate::protocol::{CommandName, Status};

    fn response(command: CommandName, status: Status) -> Vec<u8> {
        let mut out = Vec::new();
        Response::new(&mut out, command, status).finish();
        out
    }

    #[test]
    fn answers_are_counted_by_command_and_status_and_timed() {
        let mut metrics = RequestMetrics::new(Clock::new(), None, 0);
        let get = CommandLabel::of(Some(CommandName::Get));
        metrics.turn_to_connection();
        let started = metrics.request_started();
        metrics.answered(get, started, &response(CommandName::Get, Status::Ok));
        let second = metrics.request_started();
        assert!(second >= started, "the next request starts at the answer");
        metrics.answered(
            get,
            second,
            &response(CommandName::Get, Status::SessionNotExist),
        );
        let figures = metrics.figures();
        let row = &figures.answers[get.index()];
        assert_eq!(row[status_slot(Some(1))], 1);
        assert_eq!(row[status_slot(Some(100))], 1);
        assert_eq!(row.iter().sum::<u64>(), 2);
        assert_eq!(figures.durations_ns[get.index()].count(), 2);
        let others: u64 = figures
            .answers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != get.index())
            .map(|(_, row)| row.iter().sum::<u64>())
            .sum();
        assert_eq!(others, 0);
    }

    #[test]
    fn figures_add_up_over_shards() {
        let mut a = RequestMetrics::new(Clock::new(), None, 0);
        a.accepted();
        a.rejected_at_limit();
        a.rejected_in_handshake();
        a.closed_for_protocol();
        a.add_bytes(10, 20);
        let unknown = CommandLabel::UNKNOWN;
        a.answered(unknown, a.request_started(), b"{\"ERR\":{\"st\":3}}");
        let mut sum = RequestFigures::default();
        sum.add(a.figures());
        sum.add(a.figures());
        assert_eq!(
            (
                sum.accepted,
                sum.rejected_limit,
                sum.rejected_handshake,
                sum.rejected_protocol
            ),
            (2, 2, 2, 2)
        );
        assert_eq!((sum.bytes_received, sum.bytes_sent), (20, 40));
        assert_eq!(sum.answers[unknown.index()][status_slot(Some(3))], 2);
    }
}
