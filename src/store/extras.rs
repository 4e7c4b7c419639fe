//! What only some sessions have: an owner, an absolute lifetime, a
//! version past the 24 bits the session itself holds. Kept
//! beside the session table in a dense slab, so a session without either
//! pays nothing: the session holds a flag bit and, in what was padding, its
//! slot here. (A map keyed by token cost twice as much per owned session:
//! hash buckets are sized by powers of two.)
//!
//! An owner's sessions form a list threaded through their slots, in
//! creation order: adding and removing a session are O(1) however many
//! sessions its owner has (a client chooses that number). The owner map
//! holds the list's ends and the one copy of the owner's name that every
//! session of it shares.

use std::sync::Arc;

use ahash::AHashMap;

use super::Millis;
use crate::domain::Token;

/// No slot: the end of an owner's list.
const NONE: u32 = u32::MAX;

/// Slots, free-list entries and owners an empty table may keep (a few KiB):
/// see [`ExtrasTable::shrink_if_empty`].
const SHRINK_ABOVE: usize = 1024;

/// A session's owner and lifetime.
#[derive(Clone, Debug)]
pub struct Extras {
    pub owner: Option<Arc<str>>,
    /// Wall-clock creation time in ms since the Unix epoch: saved with the
    /// session, so a lifetime stays absolute across a save and a load.
    pub created_unix_ms: u64,
    /// The absolute end on the shard clock, when `max_lifetime_s > 0`.
    pub lifetime_end: Millis,
    /// 0: no lifetime.
    pub max_lifetime_s: u32,
    /// The session's version above its low 24 bits (in what was padding).
    pub version_high: u32,
    /// The session these are for, and its neighbours in its owner's list.
    tkn: Token,
    prev: u32,
    next: u32,
}

impl Extras {
    pub fn new(
        owner: Option<Arc<str>>,
        created_unix_ms: u64,
        lifetime_end: Millis,
        max_lifetime_s: u32,
    ) -> Self {
        Extras {
            owner,
            created_unix_ms,
            lifetime_end,
            max_lifetime_s,
            version_high: 0,
            tkn: 0,
            prev: NONE,
            next: NONE,
        }
    }

    pub fn has_lifetime(&self) -> bool {
        self.max_lifetime_s > 0
    }

    /// Accounted bytes (applied the same way in and out).
    pub fn cost(&self) -> u64 {
        EXTRAS_OVERHEAD + self.owner.as_deref().map_or(0, |o| o.len() as u64)
    }
}

/// Accounted bytes of a session's extras beyond its owner's name: its slot
/// and its share of the owner's entry.
pub const EXTRAS_OVERHEAD: u64 = 64;

/// The ends of one owner's list.
#[derive(Copy, Clone, Debug)]
struct OwnerList {
    head: u32,
    tail: u32,
}

/// Extras by slot, and sessions by owner.
#[derive(Default)]
pub struct ExtrasTable {
    /// None: a free slot (listed in `free`).
    slots: Vec<Option<Extras>>,
    free: Vec<u32>,
    owners: AHashMap<Arc<str>, OwnerList>,
}

impl ExtrasTable {
    pub fn get(&self, slot: u32) -> Option<&Extras> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Extras> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// The shared copy of `owner`'s name, made once per owner.
    pub fn owner_name(&mut self, owner: &str) -> Arc<str> {
        match self.owners.get_key_value(owner) {
            Some((name, _)) => name.clone(),
            None => Arc::from(owner),
        }
    }

    /// Files `extras` for session `tkn` (last in its owner's list);
    /// returns the slot the session keeps.
    pub fn insert(&mut self, tkn: Token, mut extras: Extras) -> u32 {
        // A shard holds far fewer than 4 billion sessions.
        let slot = self
            .free
            .pop()
            .unwrap_or_else(|| u32::try_from(self.slots.len()).unwrap_or(NONE - 1));
        extras.tkn = tkn;
        extras.prev = NONE;
        extras.next = NONE;
        if let Some(owner) = extras.owner.clone() {
            match self.owners.get_mut(&owner) {
                Some(list) => {
                    let tail = list.tail;
                    list.tail = slot;
                    extras.prev = tail;
                    if let Some(last) = self.get_mut(tail) {
                        last.next = slot;
                    }
                }
                None => {
                    self.owners.insert(
                        owner,
                        OwnerList {
                            head: slot,
                            tail: slot,
                        },
                    );
                }
            }
        }
        match self.slots.get_mut(slot as usize) {
            Some(free) => *free = Some(extras),
            None => self.slots.push(Some(extras)),
        }
        slot
    }

    /// Removes the extras in `slot` (session `tkn`'s) and unlinks the
    /// session from its owner's list.
    pub fn remove(&mut self, slot: u32, tkn: Token) -> Option<Extras> {
        let extras = self.slots.get_mut(slot as usize)?.take()?;
        debug_assert_eq!(extras.tkn, tkn, "a session's slot holds its extras");
        self.free.push(slot);
        if let Some(owner) = &extras.owner {
            let (prev, next) = (extras.prev, extras.next);
            if let Some(before) = self.get_mut(prev) {
                before.next = next;
            }
            if let Some(after) = self.get_mut(next) {
                after.prev = prev;
            }
            if let Some(list) = self.owners.get_mut(owner) {
                if list.head == slot {
                    list.head = next;
                }
                if list.tail == slot {
                    list.tail = prev;
                }
                if list.head == NONE {
                    self.owners.remove(owner);
                }
            }
        }
        Some(extras)
    }

    /// The sessions of `owner`, in creation order (may include sessions
    /// past their deadline not yet settled).
    pub fn sessions_of(&self, owner: &str) -> Vec<Token> {
        let mut tkns = Vec::new();
        let mut at = self.owners.get(owner).map_or(NONE, |list| list.head);
        while let Some(extras) = self.get(at) {
            tkns.push(extras.tkn);
            at = extras.next;
        }
        tkns
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.owners.clear();
    }

    /// Gives back the capacity of a table left empty (by `SH_END_ALL`, or
    /// the last owned session's end): sessions hold slot numbers, so
    /// slots in use never move, and an empty table is the one safe time.
    /// Returns whether it gave any back.
    pub fn shrink_if_empty(&mut self) -> bool {
        let held = self.slots.capacity() + self.free.capacity() + self.owners.capacity();
        // Every slot is on the free list once none is in use. A small
        // table stays: resetting it would count as memory freed and have
        // the allocator's forced collect run at every housekeeping.
        if held < SHRINK_ABOVE || self.slots.len() != self.free.len() {
            return false;
        }
        *self = ExtrasTable::default();
        true
    }

    /// Every owner and its list (model tests).
    #[cfg(test)]
    pub fn owners(&self) -> Vec<(String, Vec<Token>)> {
        self.owners
            .keys()
            .map(|o| (o.to_string(), self.sessions_of(o)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extras(table: &mut ExtrasTable, owner: &str) -> Extras {
        Extras::new(Some(table.owner_name(owner)), 0, 0, 0)
    }

    /// The version's high bits sit in what was padding.
    #[test]
    fn a_slot_takes_64_bytes() {
        assert_eq!(std::mem::size_of::<Option<Extras>>(), 64);
    }

    #[test]
    fn owners_keep_creation_order_and_one_name() {
        let mut t = ExtrasTable::default();
        let mut slots = Vec::new();
        for tkn in [5, 3, 9] {
            let e = extras(&mut t, "ann");
            slots.push(t.insert(tkn, e));
        }
        let e = extras(&mut t, "bob");
        t.insert(7, e);
        assert_eq!(t.sessions_of("ann"), [5, 3, 9]);
        assert!(Arc::ptr_eq(
            t.get(slots[0]).unwrap().owner.as_ref().unwrap(),
            t.get(slots[2]).unwrap().owner.as_ref().unwrap()
        ));
        t.remove(slots[1], 3);
        assert_eq!(t.sessions_of("ann"), [5, 9]);
        let e = extras(&mut t, "cid");
        assert_eq!(t.insert(11, e), slots[1], "a free slot is reused");
        let e = extras(&mut t, "ann");
        let last = t.insert(12, e);
        assert_eq!(t.sessions_of("ann"), [5, 9, 12]);
        t.remove(slots[0], 5);
        assert_eq!(t.sessions_of("ann"), [9, 12], "the head goes");
        t.remove(last, 12);
        assert_eq!(t.sessions_of("ann"), [9], "the tail goes");
        t.remove(slots[2], 9);
        assert_eq!(t.sessions_of("ann"), [] as [Token; 0]);
        assert_eq!(t.owners().len(), 2, "an owner with no session is dropped");
        assert!(t.remove(slots[2], 9).is_none());
    }

    /// Removal does not walk the list: ending a large owner's sessions one
    /// by one, from either end or the middle, is linear in total.
    #[test]
    fn a_large_owner_keeps_its_order_through_removals() {
        let mut t = ExtrasTable::default();
        let n = 100_000u64;
        let slots: Vec<u32> = (0..n)
            .map(|tkn| {
                let e = extras(&mut t, "tenant");
                t.insert(tkn, e)
            })
            .collect();
        for tkn in (0..n).filter(|t| t % 3 == 1) {
            t.remove(slots[tkn as usize], tkn);
        }
        let left: Vec<Token> = (0..n).filter(|t| t % 3 != 1).collect();
        assert_eq!(t.sessions_of("tenant"), left);
        for tkn in left {
            t.remove(slots[tkn as usize], tkn);
        }
        assert!(t.owners().is_empty());
    }
}
