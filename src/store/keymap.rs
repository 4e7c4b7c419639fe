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

    /// Sets `key`; returns true when the key is new.
    pub fn set(&mut self, key: Box<str>, value: Box<[u8]>) -> bool {
        match self {
            KeyMap::Small(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = value;
                    return false;
                }
                if v.len() < SMALL_MAX {
                    v.push((key, value));
                    return true;
                }
                let mut map: AHashMap<Box<str>, Box<[u8]>> = v.drain(..).collect();
                map.insert(key, value);
                *self = KeyMap::Large(Box::new(map));
                true
            }
            KeyMap::Large(m) => m.insert(key, value).is_none(),
        }
    }

    /// Sets `key` only if absent; returns true when it was added.
    pub fn add(&mut self, key: Box<str>, value: Box<[u8]>) -> bool {
        if self.contains(&key) {
            return false;
        }
        self.set(key, value)
    }

    /// Removes `key`; returns true when it existed.
    pub fn remove(&mut self, key: &str) -> bool {
        match self {
            KeyMap::Small(v) => match v.iter().position(|(k, _)| k.as_ref() == key) {
                Some(i) => {
                    v.remove(i);
                    true
                }
                None => false,
            },
            KeyMap::Large(m) => m.remove(key).is_some(),
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
            assert!(keys.set(format!("k{i}").into(), v(&i.to_string())));
            assert_eq!(keys.len(), i + 1);
        }
        assert!(matches!(keys, KeyMap::Large(_)));
        assert!(!keys.set("k3".into(), v("\"x\"")));
        assert_eq!(keys.get("k3"), Some(&b"\"x\""[..]));
        assert!(!keys.add("k4".into(), v("9")));
        assert_eq!(keys.get("k4"), Some(&b"4"[..]));
        assert!(keys.remove("k4"));
        assert!(!keys.remove("k4"));
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
