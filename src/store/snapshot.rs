//! Point-in-time snapshots of one shard's sessions, encoded a chunk per
//! event-loop turn so a save never freezes the shard.
//!
//! The snapshot is the sessions as they were when it began. A full
//! snapshot walks the session table by position, a slice per turn, so
//! beginning one costs nothing however many sessions there are; a session
//! about to change before the walk reaches it is encoded first, as it still
//! is (copy-on-write, as in Dragonfly's versioned snapshots). A `SAVED` bit
//! marks sessions ahead of the walk that must not be encoded again (saved
//! early) or at all (created since the start); the walk clears it as it
//! passes, and a removal that moves the table's last session behind the
//! walk saves it then (see `SessionStore::snapshot_moved`).

use super::{Extras, Millis, Session};
use crate::persist::{RecordHead, encode_record};

/// A snapshot in progress.
pub struct Snapshot {
    /// The next table position the walk visits: sessions before it are
    /// done (a full snapshot only).
    pub(super) next: usize,
    /// Whether sessions not yet reached must be saved before they change:
    /// false when the snapshot is an explicit list encoded up front.
    pub(super) copy_on_write: bool,
    /// When the snapshot began: what had expired by then is not saved.
    started: Millis,
    /// Wall-clock ms at shard-clock 0: deadlines are saved in wall time.
    wall_epoch_ms: u64,
    /// Encoded records not yet handed out.
    out: Vec<u8>,
    records: u64,
    keys: u64,
}

/// Encoded records for the snapshot file.
#[derive(Debug, Default)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub records: u64,
    pub keys: u64,
    /// The snapshot is complete: this is the last chunk.
    pub done: bool,
}

impl Snapshot {
    pub(super) fn new(copy_on_write: bool, started: Millis, wall_epoch_ms: u64) -> Self {
        Snapshot {
            next: 0,
            copy_on_write,
            started,
            wall_epoch_ms,
            out: Vec::new(),
            records: 0,
            keys: 0,
        }
    }

    /// Encodes `session` (with its extras and whole version) as it was at
    /// the start, unless it had expired by then. The caller marks it saved.
    pub(super) fn save(&mut self, extras: Option<&Extras>, session: &Session, version: u64) {
        let tkn = session.tkn;
        let expiry = session.expiry();
        let expired = expiry.is_some_and(|e| self.started >= e.deadline);
        let lifetime_over =
            extras.is_some_and(|x| x.has_lifetime() && self.started >= x.lifetime_end);
        if expired && (expiry.is_some_and(|e| e.settings.delete_session) || lifetime_over) {
            return;
        }
        let settings = expiry.map(|e| {
            let mut settings = e.settings;
            settings.max_lifetime_s = extras.map_or(0, |x| x.max_lifetime_s);
            settings
        });
        // Keys-only expiry had emptied it by the start, counting a change
        // if there was anything to clear.
        let (keys, version) = match (expired, session.keys.is_empty()) {
            (true, false) => (0, version.saturating_add(1).min(super::VERSION_MAX)),
            (true, true) => (0, version),
            (false, _) => (session.keys.len(), version),
        };
        let head = RecordHead {
            tkn,
            name: session.name(),
            shared: session.shared(),
            expiry: settings,
            owner: extras.and_then(|x| x.owner.as_deref()),
            created_unix_ms: extras.map_or(0, |x| x.created_unix_ms),
            // An idle deadline of its own (not only a lifetime), still ahead.
            idle_deadline_unix_ms: match expiry {
                Some(e) if !expired && e.settings.duration_s > 0 => self.wall_epoch_ms + e.deadline,
                _ => 0,
            },
            version,
        };
        encode_record(&mut self.out, &head, session.keys.iter().take(keys));
        self.records += 1;
        self.keys += keys as u64;
    }

    pub(super) fn pending_bytes(&self) -> usize {
        self.out.len()
    }

    /// Hands out what is encoded so far; `sessions` is the table's size
    /// (a full snapshot is done once its walk has passed them all).
    pub(super) fn take(&mut self, sessions: usize) -> Chunk {
        Chunk {
            bytes: std::mem::take(&mut self.out),
            records: std::mem::take(&mut self.records),
            keys: std::mem::take(&mut self.keys),
            done: !self.copy_on_write || self.next >= sessions,
        }
    }
}
