//! The sessions of one shard: a dense vector, and an index from token to
//! position holding 4 bytes a session (a map of token to session would
//! hold the whole session in every bucket, empty ones included).

use hashbrown::HashTable;

use super::Session;
use crate::domain::Token;

pub struct Sessions {
    /// Live sessions, in no particular order; removal swaps the last in.
    slots: Vec<Session>,
    /// Positions in `slots`, hashed by their session's token.
    index: HashTable<u32>,
    /// Keyed per shard, so clients cannot choose tokens that collide.
    hasher: ahash::RandomState,
    /// The population at the last [`Sessions::fell_since_checked`].
    checked_len: usize,
}

/// Capacity a table keeps however few sessions are left: a shard that
/// cycles through a few thousand sessions never reallocates for them.
const KEEP_CAPACITY: usize = 4096;

impl Sessions {
    pub fn new() -> Self {
        Sessions {
            slots: Vec::new(),
            index: HashTable::new(),
            hasher: ahash::RandomState::new(),
            checked_len: 0,
        }
    }

    fn hash(&self, tkn: Token) -> u64 {
        self.hasher.hash_one(tkn)
    }

    /// Where the session is: valid until the next insert or remove.
    pub fn position(&self, tkn: Token) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(self.hash(tkn), |&i| slots[i as usize].tkn == tkn)
            .map(|&i| i as usize)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, tkn: Token) -> bool {
        self.position(tkn).is_some()
    }

    pub fn get(&self, tkn: Token) -> Option<&Session> {
        self.position(tkn).map(|i| &self.slots[i])
    }

    pub fn get_mut(&mut self, tkn: Token) -> Option<&mut Session> {
        self.position(tkn).map(|i| &mut self.slots[i])
    }

    /// The session at a [`Sessions::position`].
    pub fn at(&self, position: usize) -> &Session {
        &self.slots[position]
    }

    /// The session at a [`Sessions::position`].
    pub fn at_mut(&mut self, position: usize) -> &mut Session {
        &mut self.slots[position]
    }

    /// Adds a session whose token is not present (the caller checks).
    pub fn insert(&mut self, session: Session) {
        let position = self.slots.len() as u32;
        let hash = self.hash(session.tkn);
        self.slots.push(session);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, position, |&i| hasher.hash_one(slots[i as usize].tkn));
    }

    /// Removes a session; the last one moves into its place, and the
    /// position it moved to comes back with it (a snapshot's walk by
    /// position must hear of it).
    pub fn remove(&mut self, tkn: Token) -> Option<(Session, Option<usize>)> {
        let hash = self.hash(tkn);
        let slots = &self.slots;
        let entry = self
            .index
            .find_entry(hash, |&i| slots[i as usize].tkn == tkn)
            .ok()?;
        let (position, _) = entry.remove();
        let position = position as usize;
        let session = self.slots.swap_remove(position);
        // The last session moved into the hole: point its index entry there.
        let Some(moved) = self.slots.get(position) else {
            return Some((session, None));
        };
        let (moved_tkn, last) = (moved.tkn, self.slots.len() as u32);
        if let Some(i) = self
            .index
            .find_mut(self.hasher.hash_one(moved_tkn), |&i| i == last)
        {
            *i = position as u32;
        }
        Some((session, Some(position)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.slots.iter()
    }

    /// Gives back capacity once the sessions fell well below it, keeping
    /// room for twice those left: growing doubles, so a table that just
    /// shrank must lose half its sessions again, or double them, before it
    /// reallocates again (no thrashing at the edge). Returns whether it
    /// shrank. Housekeeping only, never on a request: the slots are copied
    /// (below a quarter full), the index rehashed (below a sixteenth:
    /// on a loaded 2-core machine, rehashing the 240k left of a million
    /// took 125 ms, a stall, the 60k left 38 ms; copying the 240k slots
    /// took 8.5 ms; the index is a tenth of the slots' bytes).
    pub fn shrink_if_sparse(&mut self) -> bool {
        let len = self.slots.len();
        let keep = (len * 2).max(KEEP_CAPACITY);
        let mut shrank = false;
        if self.slots.capacity() > KEEP_CAPACITY && len < self.slots.capacity() / 4 {
            self.slots.shrink_to(keep);
            shrank = true;
        }
        // An index holds up to 7/8 of its power-of-two buckets: one sized
        // for `KEEP_CAPACITY` may hold nearly twice that.
        if self.index.capacity() > 2 * KEEP_CAPACITY && len < self.index.capacity() / 16 {
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.index
                .shrink_to(keep, |&i| hasher.hash_one(slots[i as usize].tkn));
            shrank = true;
        }
        shrank
    }

    /// Whether a quarter or more of the sessions (and at least
    /// `KEEP_CAPACITY`) went since the last call: their keys' memory is
    /// free in the allocator, which an idle thread never hands back by
    /// itself.
    /// Whether the population changed since [`Sessions::fell_since_checked`]
    /// last looked: an idle shard stays awake until it has looked.
    pub fn changed_since_checked(&self) -> bool {
        self.slots.len() != self.checked_len
    }

    pub fn fell_since_checked(&mut self) -> bool {
        let (len, checked) = (self.slots.len(), self.checked_len);
        self.checked_len = len;
        checked.saturating_sub(len) >= (checked / 4).max(KEEP_CAPACITY)
    }

    /// About the bytes held by the slots and the index, spare capacity
    /// included (for the log line of a shrink).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Session>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
    }

    /// Removes every session, handing them out.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Session> {
        self.index.clear();
        self.slots.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expiry::TimerKey;
    use crate::store::KeyMap;

    fn session(tkn: Token) -> Session {
        Session {
            tkn,
            deadline: 0,
            keys: KeyMap::Packed(Box::new([])),
            duration_s: 0,
            timer: TimerKey::default(),
            extras: 0,
            version_low: [0; 3],
            flags: 0,
        }
    }

    fn table(n: u64) -> Sessions {
        let mut t = Sessions::new();
        for tkn in 1..=n {
            t.insert(session(tkn));
        }
        t
    }

    #[test]
    fn shrinks_below_a_quarter_and_keeps_every_session_findable() {
        let mut t = table(100_000);
        let quarter = (t.slots.capacity() / 4) as u64;
        for tkn in quarter + 1..=100_000 {
            t.remove(tkn);
        }
        assert!(!t.shrink_if_sparse(), "at a quarter it keeps its capacity");
        for tkn in 20_001..=quarter {
            t.remove(tkn);
        }
        assert!(t.shrink_if_sparse());
        assert!((20_000..=40_000).contains(&t.slots.capacity()));
        assert!(
            !t.shrink_if_sparse(),
            "no thrashing: twice what is left is kept"
        );
        for tkn in 1..=20_000 {
            assert_eq!(t.get(tkn).map(|s| s.tkn), Some(tkn));
        }
        assert!(!t.contains(20_001));
        // It grows again as before.
        for tkn in 200_000..260_000 {
            t.insert(session(tkn));
        }
        assert_eq!(t.len(), 80_000);
        assert!(t.contains(259_999) && t.contains(7));
    }

    #[test]
    fn small_tables_keep_their_capacity() {
        let mut t = table(KEEP_CAPACITY as u64);
        t.drain();
        assert!(!t.shrink_if_sparse());
    }

    #[test]
    fn empty_after_a_drain_gives_back_all_but_the_floor() {
        let mut t = table(50_000);
        t.drain();
        assert!(t.shrink_if_sparse());
        assert!(t.heap_bytes() <= KEEP_CAPACITY * (std::mem::size_of::<Session>() + 16));
    }

    #[test]
    fn a_fall_of_a_quarter_is_reported_once() {
        let mut t = table(40_000);
        assert!(!t.fell_since_checked(), "it grew");
        for tkn in 1..=9_000 {
            t.remove(tkn);
        }
        assert!(!t.fell_since_checked(), "less than a quarter went");
        for tkn in 9_001..=20_000 {
            t.remove(tkn);
        }
        assert!(t.fell_since_checked());
        assert!(!t.fell_since_checked());
    }
}
