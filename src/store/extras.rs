//! What only some sessions have: an owner, an absolute lifetime. Kept
//! beside the session table in a dense slab, so a session without either
//! pays nothing: the session holds a flag bit and, in what was padding, its
//! slot here. (A map keyed by token cost twice as much per owned session:
//! hash buckets are sized by powers of two.)
//!
//! The owner index maps each owner to its sessions in creation order. It
//! holds one copy of the owner's name, shared with the sessions' extras.

use std::sync::Arc;

use ahash::AHashMap;

use super::Millis;
use crate::domain::Token;

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
}

impl Extras {
    pub fn has_lifetime(&self) -> bool {
        self.max_lifetime_s > 0
    }

    /// Accounted bytes (applied the same way in and out).
    pub fn cost(&self) -> u64 {
        EXTRAS_OVERHEAD + self.owner.as_deref().map_or(0, |o| o.len() as u64)
    }
}

/// Accounted bytes of a session's extras beyond its owner's name: the map
/// entry and the index's slot.
pub const EXTRAS_OVERHEAD: u64 = 64;

/// Extras by slot, and sessions by owner.
#[derive(Default)]
pub struct ExtrasTable {
    /// None: a free slot (listed in `free`).
    slots: Vec<Option<Extras>>,
    free: Vec<u32>,
    owners: AHashMap<Arc<str>, Vec<Token>>,
}

impl ExtrasTable {
    pub fn get(&self, slot: u32) -> Option<&Extras> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The shared copy of `owner`'s name, made once per owner.
    pub fn owner_name(&mut self, owner: &str) -> Arc<str> {
        match self.owners.get_key_value(owner) {
            Some((name, _)) => name.clone(),
            None => Arc::from(owner),
        }
    }

    /// Files `extras` for session `tkn` (its owner's list gets `tkn`
    /// last); returns the slot the session keeps.
    pub fn insert(&mut self, tkn: Token, extras: Extras) -> u32 {
        if let Some(owner) = &extras.owner {
            self.owners.entry(owner.clone()).or_default().push(tkn);
        }
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(extras);
                slot
            }
            None => {
                // A shard holds far fewer than 4 billion sessions.
                let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some(extras));
                slot
            }
        }
    }

    /// Removes the extras in `slot` (session `tkn`'s) and takes the session
    /// off its owner's list.
    pub fn remove(&mut self, slot: u32, tkn: Token) -> Option<Extras> {
        let extras = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        if let Some(owner) = &extras.owner
            && let Some(list) = self.owners.get_mut(owner)
        {
            // Lists are short (one user's devices); order is kept.
            if let Some(at) = list.iter().position(|&t| t == tkn) {
                list.remove(at);
            }
            if list.is_empty() {
                self.owners.remove(owner);
            }
        }
        Some(extras)
    }

    /// The sessions of `owner`, in creation order (may include sessions
    /// past their deadline not yet settled).
    pub fn sessions_of(&self, owner: &str) -> &[Token] {
        self.owners.get(owner).map_or(&[], Vec::as_slice)
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.owners.clear();
    }

    /// Every owner and its list (model tests).
    #[cfg(test)]
    pub fn owners(&self) -> impl Iterator<Item = (&str, &[Token])> {
        self.owners.iter().map(|(o, l)| (&**o, l.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extras(table: &mut ExtrasTable, owner: &str) -> Extras {
        Extras {
            owner: Some(table.owner_name(owner)),
            created_unix_ms: 0,
            lifetime_end: 0,
            max_lifetime_s: 0,
        }
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
        t.remove(slots[0], 5);
        t.remove(slots[2], 9);
        assert_eq!(t.sessions_of("ann"), [] as [Token; 0]);
        assert_eq!(t.owners().count(), 2, "an owner with no session is dropped");
        assert!(t.remove(slots[2], 9).is_none());
    }
}
