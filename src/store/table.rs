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
}

impl Sessions {
    pub fn new() -> Self {
        Sessions {
            slots: Vec::new(),
            index: HashTable::new(),
            hasher: ahash::RandomState::new(),
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

    /// Removes every session, handing them out.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Session> {
        self.index.clear();
        self.slots.drain(..)
    }
}
