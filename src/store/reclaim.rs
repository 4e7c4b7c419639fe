//! Giving memory back once a shard's population fell (`SH_END_ALL`, a mass
//! expiry): the tables keep the capacity of their peak otherwise, for the
//! life of the shard. Runs at housekeeping only, never on a request: a
//! shrink rehashes what is left.

use super::SessionStore;

/// Accounted bytes that must go (and a quarter of them) before the
/// allocator is asked to give memory back: its forced collect walks the
/// whole heap.
const BYTES_FELL_MIN: u64 = 8 << 20;

/// What one [`SessionStore::reclaim`] did, for the shard's log line and
/// its allocator.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Bytes the session table held before, and after a shrink.
    pub table_before: usize,
    pub table_after: usize,
    /// Some table shrank.
    pub shrank: bool,
    /// Many sessions went since the last call (their memory is free, if
    /// not given back by the allocator yet).
    pub fell: bool,
}

impl Reclaimed {
    /// Memory was freed: worth asking the allocator to give it back.
    pub fn freed(&self) -> bool {
        self.shrank || self.fell
    }
}

impl SessionStore {
    /// Whether [`SessionStore::reclaim`] has anything to look at: the
    /// population changed since it last ran.
    pub fn may_reclaim(&self) -> bool {
        self.sessions.changed_since_checked() || self.used_bytes != self.checked_used
    }

    /// Shrinks the tables whose population fell well below their capacity
    /// (see `Sessions::shrink_if_sparse` for the hysteresis).
    pub fn reclaim(&mut self) -> Reclaimed {
        let table_before = self.sessions.heap_bytes();
        let checked_used = std::mem::replace(&mut self.checked_used, self.used_bytes);
        let bytes_fell =
            checked_used.saturating_sub(self.used_bytes) >= (checked_used / 4).max(BYTES_FELL_MIN);
        // Not `||`: the session count's mark moves either way.
        let fell = self.sessions.fell_since_checked() | bytes_fell;
        // Not `||`: both run.
        let shrank = self.sessions.shrink_if_sparse() | self.extras.shrink_if_empty();
        Reclaimed {
            table_before,
            table_after: self.sessions.heap_bytes(),
            shrank,
            fell,
        }
    }
}
