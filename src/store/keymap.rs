//! The keys of one session. Most sessions hold a handful of keys, so they
//! start as a small vector scanned linearly (no hash table, one allocation
//! per key and value) and become a hash map only when they grow.

use ahash::AHashMap;

/// Above this many keys a session switches to a hash map.
const SMALL_MAX: usize = 12;

#[derive(Debug)]
pub enum KeyMap {
    /// Insertion-ordered pairs; linear search beats hashing at this size.
    Small(Vec<(Box<str>, Box<[u8]>)>),
    /// Boxed so the small case keeps `Session` compact.
    Large(Box<AHashMap<Box<str>, Box<[u8]>>>),
}

impl Default for KeyMap {
    fn default() -> Self {
        KeyMap::Small(Vec::new())
    }
}

impl KeyMap {
    pub fn len(&self) -> usize {
        match self {
            KeyMap::Small(v) => v.len(),
            KeyMap::Large(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        match self {
            KeyMap::Small(v) => v.iter().find(|(k, _)| k.as_ref() == key).map(|(_, v)| &**v),
            KeyMap::Large(m) => m.get(key).map(|v| &**v),
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`; returns the value it replaces, if any.
    pub fn set(&mut self, key: Box<str>, value: Box<[u8]>) -> Option<Box<[u8]>> {
        match self {
            KeyMap::Small(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(&mut slot.1, value));
                }
                if v.len() < SMALL_MAX {
                    v.push((key, value));
                    return None;
                }
                let mut map: AHashMap<Box<str>, Box<[u8]>> = v.drain(..).collect();
                map.insert(key, value);
                *self = KeyMap::Large(Box::new(map));
                None
            }
            KeyMap::Large(m) => m.insert(key, value),
        }
    }

    /// Sets `key` only if absent; returns true when it was added.
    pub fn add(&mut self, key: Box<str>, value: Box<[u8]>) -> bool {
        if self.contains(&key) {
            return false;
        }
        self.set(key, value);
        true
    }

    /// Removes `key`; returns its value if it existed.
    pub fn remove(&mut self, key: &str) -> Option<Box<[u8]>> {
        match self {
            KeyMap::Small(v) => {
                let i = v.iter().position(|(k, _)| k.as_ref() == key)?;
                Some(v.remove(i).1)
            }
            KeyMap::Large(m) => m.remove(key),
        }
    }

    /// Removes every key; returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.len();
        *self = KeyMap::default();
        n
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = (&str, &[u8])> + '_> {
        match self {
            KeyMap::Small(v) => Box::new(v.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))),
            KeyMap::Large(m) => Box::new(m.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Box<[u8]> {
        s.as_bytes().into()
    }

    #[test]
    fn set_add_remove_across_the_small_to_large_switch() {
        let mut keys = KeyMap::default();
        for i in 0..40 {
            assert!(
                keys.set(format!("k{i}").into(), v(&i.to_string()))
                    .is_none()
            );
            assert_eq!(keys.len(), i + 1);
        }
        assert!(matches!(keys, KeyMap::Large(_)));
        assert_eq!(keys.set("k3".into(), v("\"x\"")), Some(v("3")));
        assert_eq!(keys.get("k3"), Some(&b"\"x\""[..]));
        assert!(!keys.add("k4".into(), v("9")));
        assert_eq!(keys.get("k4"), Some(&b"4"[..]));
        assert_eq!(keys.remove("k4"), Some(v("4")));
        assert_eq!(keys.remove("k4"), None);
        assert_eq!(keys.iter().count(), 39);
        assert_eq!(keys.clear(), 39);
        assert!(keys.is_empty());
        assert!(matches!(keys, KeyMap::Small(_)));
    }

    #[test]
    fn small_maps_keep_insertion_order() {
        let mut keys = KeyMap::default();
        for k in ["b", "a", "c"] {
            keys.set(k.into(), v("1"));
        }
        keys.set("a".into(), v("2"));
        let names: Vec<_> = keys.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["b", "a", "c"]);
    }
}
