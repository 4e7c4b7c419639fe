//! A shard's way out: serving, then stopping (answer what was read, close
//! every connection, a grace period at most), then drained (no connection
//! left, still answering other shards until every shard is drained, so no
//! shard waits on one that has left).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::connections::Connections;

/// Longest a shutdown waits for clients to take their last responses.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Answering what was read, then closing connections.
    Stopping {
        since: Instant,
    },
    /// Connections are gone; still answering other shards' requests.
    Drained,
}

impl Phase {
    /// Whether connections may send new requests.
    pub fn is_serving(self) -> bool {
        self == Phase::Serving
    }

    /// One shutdown step: closes what can be closed, and moves to
    /// `Drained` (counting this shard out of `draining`) once no
    /// connection is left. Returns true when it just drained.
    pub fn step(&mut self, now: Instant, conns: &mut Connections, draining: &AtomicUsize) -> bool {
        let Phase::Stopping { since } = *self else {
            return false;
        };
        let overdue = now.saturating_duration_since(since) > SHUTDOWN_GRACE;
        if !conns.close_for_shutdown(overdue) {
            return false;
        }
        *self = Phase::Drained;
        draining.fetch_sub(1, Ordering::AcqRel);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::connections::tests::{limits, metrics};

    #[test]
    fn a_stopping_shard_with_no_connection_drains_once() {
        let draining = AtomicUsize::new(2);
        let mut conns = Connections::new(limits(), Instant::now(), metrics());
        let now = Instant::now();
        let mut phase = Phase::Serving;
        assert!(
            !phase.step(now, &mut conns, &draining),
            "serving never drains"
        );
        phase = Phase::Stopping { since: now };
        assert!(!phase.is_serving());
        assert!(phase.step(now, &mut conns, &draining));
        assert_eq!(phase, Phase::Drained);
        assert_eq!(draining.load(Ordering::Acquire), 1);
        assert!(!phase.step(now + SHUTDOWN_GRACE * 2, &mut conns, &draining));
        assert_eq!(draining.load(Ordering::Acquire), 1, "counted out once");
    }
}
