//! The one piece of state no shard owns: shared session names, server-wide.
//!
//! A mutex is fine here: only `SH_NEW` with `shared`, `SH_OPEN` and the
//! deletion of a shared session touch it, never the key read/write path.

use std::sync::{Mutex, MutexGuard};

use ahash::AHashMap;

use crate::domain::Token;

#[derive(Default)]
pub struct SharedNames {
    names: Mutex<AHashMap<Box<str>, Token>>,
}

impl SharedNames {
    fn map(&self) -> MutexGuard<'_, AHashMap<Box<str>, Token>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (each operation is a single insert/remove), so poisoning is ignored.
        self.names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims `name` for `tkn`; false when the name is taken.
    pub fn register(&self, name: &str, tkn: Token) -> bool {
        let mut names = self.map();
        if names.contains_key(name) {
            return false;
        }
        names.insert(name.into(), tkn);
        true
    }

    pub fn lookup(&self, name: &str) -> Option<Token> {
        self.map().get(name).copied()
    }

    /// Releases `name` if it still belongs to `tkn`.
    pub fn release(&self, name: &str, tkn: Token) {
        let mut names = self.map();
        if names.get(name) == Some(&tkn) {
            names.remove(name);
        }
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_lookup_release() {
        let names = SharedNames::default();
        assert!(names.register("a", 1));
        assert!(!names.register("a", 2));
        assert_eq!(names.lookup("a"), Some(1));
        names.release("a", 2);
        assert_eq!(names.lookup("a"), Some(1));
        names.release("a", 1);
        assert_eq!(names.lookup("a"), None);
        assert!(names.is_empty());
    }
}
