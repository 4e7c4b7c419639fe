//! The name and keys of one session, in as few bytes as will do.
//!
//! Most sessions hold a handful of small keys, so they live packed in one
//! allocation: each key and value, then the name, length-prefixed. Reads
//! scan it (no hashing at this size), writes rebuild it. A session that
//! grows past `PACKED_MAX_KEYS` keys or `PACKED_MAX_BYTES` bytes moves to a
//! hash map, where each write is O(1) again.

use ahash::AHashMap;

/// Keys a packed session may hold before it becomes a map.
const PACKED_MAX_KEYS: usize = 16;
/// Bytes a packed session may hold before it becomes a map: rebuilding it
/// on every write must stay cheap.
const PACKED_MAX_BYTES: usize = 2048;

#[derive(Debug)]
pub enum KeyMap {
    /// `[key len][key][value len][value]` per key, then `[name len][name]`
    /// if the session has a name (a field left over after the pairs);
    /// lengths as LEB128. No name costs no byte, and a session with
    /// neither name nor keys no allocation.
    Packed(Box<[u8]>),
    /// Boxed so the packed case keeps `Session` small.
    Large(Box<Large>),
}

#[derive(Debug, Default)]
pub struct Large {
    name: Option<Box<str>>,
    keys: AHashMap<Box<str>, Box<[u8]>>,
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a length at `at`; returns it and the position after it.
fn get_len(bytes: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let mut n = 0usize;
    let mut shift = 0;
    loop {
        let byte = *bytes.get(at)?;
        at += 1;
        n |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((n, at));
        }
        shift += 7;
        if shift > 35 {
            return None;
        }
    }
}

/// The bytes `[len][bytes]` at `at`, and the position after them.
fn get_field(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let (len, at) = get_len(bytes, at)?;
    let end = at.checked_add(len)?;
    Some((bytes.get(at..end)?, end))
}

/// The entries of a packed buffer, in order.
pub struct Entries<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (key, at) = get_field(self.bytes, self.at)?;
        let (value, at) = get_field(self.bytes, at)?;
        self.at = at;
        // Keys are written from `&str` only, so this always holds.
        Some((std::str::from_utf8(key).ok()?, value))
    }
}

/// A session's keys and values, in no particular order.
pub enum Iter<'a> {
    Packed(Entries<'a>),
    Large(std::collections::hash_map::Iter<'a, Box<str>, Box<[u8]>>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Packed(entries) => entries.next(),
            Iter::Large(map) => map.next().map(|(k, v)| (&**k, &**v)),
        }
    }
}

/// Bytes `put_len` writes for `n`.
fn len_size(n: usize) -> usize {
    (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize
}

/// Bytes `put_entry` writes.
fn entry_size(key: &str, value: &[u8]) -> usize {
    len_size(key.len()) + key.len() + len_size(value.len()) + value.len()
}

fn put_entry(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    put_len(out, key.len());
    out.extend_from_slice(key.as_bytes());
    put_len(out, value.len());
    out.extend_from_slice(value);
}

impl KeyMap {
    pub fn new(name: Option<&str>) -> Self {
        let mut out = Vec::new();
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            out.reserve_exact(len_size(name.len()) + name.len());
            put_len(&mut out, name.len());
            out.extend_from_slice(name.as_bytes());
        }
        KeyMap::Packed(out.into_boxed_slice())
    }

    /// A session's name and keys at once (a snapshot load): packed in one
    /// go when they fit, a map otherwise. Keys repeated keep the last value.
    pub fn with_entries(name: Option<&str>, entries: Vec<(Box<str>, Box<[u8]>)>) -> Self {
        let mut keys = KeyMap::new(name);
        let KeyMap::Packed(bytes) = &mut keys else {
            return keys;
        };
        let size: usize = entries.iter().map(|(k, v)| entry_size(k, v)).sum();
        let fits = entries.len() <= PACKED_MAX_KEYS && bytes.len() + size <= PACKED_MAX_BYTES;
        // At most PACKED_MAX_KEYS names to compare, so the scan is short.
        let distinct = || {
            entries
                .iter()
                .enumerate()
                .all(|(i, (k, _))| entries[..i].iter().all(|(other, _)| other != k))
        };
        if fits && distinct() {
            let mut out = Vec::with_capacity(bytes.len() + size);
            for (k, v) in &entries {
                put_entry(&mut out, k, v);
            }
            // The name (all there is so far) goes last.
            out.extend_from_slice(bytes);
            *bytes = out.into_boxed_slice();
        } else {
            for (k, v) in entries {
                keys.set(k, v);
            }
        }
        keys
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            KeyMap::Packed(bytes) => {
                let (name, _) = get_field(bytes, Self::entries_end(bytes))?;
                std::str::from_utf8(name).ok()
            }
            KeyMap::Large(large) => large.name.as_deref(),
        }
    }

    /// Where the key/value pairs of a packed buffer end: the name's field
    /// starts there, if there is one.
    fn entries_end(bytes: &[u8]) -> usize {
        let mut at = 0;
        while let Some((_, after_key)) = get_field(bytes, at)
            && let Some((_, after_value)) = get_field(bytes, after_key)
        {
            at = after_value;
        }
        at
    }

    pub fn len(&self) -> usize {
        match self {
            KeyMap::Packed(_) => self.iter().count(),
            KeyMap::Large(large) => large.keys.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        match self {
            KeyMap::Packed(bytes) => Self::packed_value(bytes, key).map(|range| &bytes[range]),
            KeyMap::Large(large) => large.keys.get(key).map(|v| &**v),
        }
    }

    /// Where `key`'s value is in a packed buffer. Compared as bytes: no
    /// UTF-8 check, no iterator object.
    fn packed_value(bytes: &[u8], key: &str) -> Option<std::ops::Range<usize>> {
        let mut at = 0;
        loop {
            let (k, after_key) = get_field(bytes, at)?;
            let (value, after_value) = get_field(bytes, after_key)?;
            if k == key.as_bytes() {
                return Some(after_value - value.len()..after_value);
            }
            at = after_value;
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> Iter<'_> {
        match self {
            // The name, a lone field at the end, ends the pairs.
            KeyMap::Packed(bytes) => Iter::Packed(Entries { bytes, at: 0 }),
            KeyMap::Large(large) => Iter::Large(large.keys.iter()),
        }
    }

    /// Sets `key`; returns the length of the value it replaces, if any.
    pub fn set(&mut self, key: Box<str>, value: Box<[u8]>) -> Option<usize> {
        let bytes = match self {
            KeyMap::Large(large) => return large.keys.insert(key, value).map(|old| old.len()),
            KeyMap::Packed(bytes) => bytes,
        };
        // A value replaced by one of the same length (a counter, a flag, an
        // id) is overwritten in place: no rebuild.
        let replaced = Self::packed_value(bytes, &key);
        if let Some(old) = replaced.clone()
            && old.len() == value.len()
        {
            bytes[old].copy_from_slice(&value);
            return Some(value.len());
        }
        // Sized exactly: an allocation shrunk after the fact keeps its
        // bigger size class.
        let size = match &replaced {
            Some(old) => {
                bytes.len() - len_size(old.len()) - old.len() + len_size(value.len()) + value.len()
            }
            None => bytes.len() + entry_size(&key, &value),
        };
        let mut out = Vec::with_capacity(size);
        let (mut old, mut count) = (None, 0);
        for (k, v) in (Entries { bytes, at: 0 }) {
            count += 1;
            let v = if k == &*key {
                old = Some(v.len());
                &*value
            } else {
                v
            };
            put_entry(&mut out, k, v);
        }
        if old.is_none() {
            count += 1;
            put_entry(&mut out, &key, &value);
        }
        out.extend_from_slice(&bytes[Self::entries_end(bytes)..]);
        if count > PACKED_MAX_KEYS || out.len() > PACKED_MAX_BYTES {
            self.make_large();
            return self.set(key, value);
        }
        debug_assert_eq!(out.len(), size);
        *bytes = out.into_boxed_slice();
        old
    }

    /// Overwrites `key`'s value in place with one of the same length;
    /// false (and nothing changed) when the key is absent or the length
    /// differs.
    pub fn overwrite(&mut self, key: &str, value: &[u8]) -> bool {
        let old = match self {
            KeyMap::Packed(bytes) => Self::packed_value(bytes, key).map(|range| &mut bytes[range]),
            KeyMap::Large(large) => large.keys.get_mut(key).map(|v| &mut **v),
        };
        match old {
            Some(old) if old.len() == value.len() => {
                old.copy_from_slice(value);
                true
            }
            _ => false,
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

    /// Removes `key`; returns the length of its value if it existed.
    pub fn remove(&mut self, key: &str) -> Option<usize> {
        let bytes = match self {
            KeyMap::Large(large) => return large.keys.remove(key).map(|old| old.len()),
            KeyMap::Packed(bytes) => bytes,
        };
        let removed = Self::packed_value(bytes, key)?;
        let removed_size = entry_size(key, &bytes[removed.clone()]);
        let mut out = Vec::with_capacity(bytes.len() - removed_size);
        let mut old = None;
        for (k, v) in (Entries { bytes, at: 0 }) {
            if k == key {
                old = Some(v.len());
            } else {
                put_entry(&mut out, k, v);
            }
        }
        if old.is_some() {
            out.extend_from_slice(&bytes[Self::entries_end(bytes)..]);
            *bytes = out.into_boxed_slice();
        }
        old
    }

    /// Removes every key (the name stays); returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.len();
        let name = self.name().map(Box::<str>::from);
        *self = KeyMap::new(name.as_deref());
        n
    }

    fn make_large(&mut self) {
        let large = Large {
            name: self.name().map(Box::from),
            keys: self
                .iter()
                .map(|(k, v)| (Box::from(k), Box::from(v)))
                .collect(),
        };
        *self = KeyMap::Large(Box::new(large));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_the_same_length_is_replaced_in_place() {
        let mut keys = KeyMap::new(Some("n"));
        keys.set("a".into(), b"\"xy\"".as_slice().into());
        keys.set("b".into(), b"1".as_slice().into());
        let before = match &keys {
            KeyMap::Packed(bytes) => bytes.as_ptr(),
            KeyMap::Large(_) => unreachable!("two small keys stay packed"),
        };
        assert_eq!(keys.set("a".into(), b"\"zw\"".as_slice().into()), Some(4));
        let after = match &keys {
            KeyMap::Packed(bytes) => bytes.as_ptr(),
            KeyMap::Large(_) => unreachable!("two small keys stay packed"),
        };
        assert_eq!(before, after, "rebuilt for a same-length value");
        assert_eq!(keys.get("a"), Some(&b"\"zw\""[..]));
        assert_eq!(keys.get("b"), Some(&b"1"[..]));
        assert_eq!(keys.name(), Some("n"));
        // Another length still rebuilds, and nothing else moves.
        assert_eq!(keys.set("a".into(), b"12345".as_slice().into()), Some(4));
        assert_eq!(keys.get("a"), Some(&b"12345"[..]));
        assert_eq!(keys.get("b"), Some(&b"1"[..]));
        assert_eq!(keys.len(), 2);
    }

    fn v(s: &str) -> Box<[u8]> {
        s.as_bytes().into()
    }

    #[test]
    fn set_add_remove_across_the_packed_to_map_switch() {
        let mut keys = KeyMap::new(Some("basket"));
        for i in 0..40 {
            assert!(
                keys.set(format!("k{i}").into(), v(&i.to_string()))
                    .is_none()
            );
            assert_eq!(keys.len(), i + 1);
            assert_eq!(keys.name(), Some("basket"));
        }
        assert!(matches!(keys, KeyMap::Large(_)));
        assert_eq!(keys.set("k3".into(), v("\"x\"")), Some(1));
        assert_eq!(keys.get("k3"), Some(&b"\"x\""[..]));
        assert!(!keys.add("k4".into(), v("9")));
        assert_eq!(keys.get("k4"), Some(&b"4"[..]));
        assert_eq!(keys.remove("k4"), Some(1));
        assert_eq!(keys.remove("k4"), None);
        assert_eq!(keys.iter().count(), 39);
        assert_eq!(keys.clear(), 39);
        assert!(keys.is_empty());
        assert_eq!(keys.name(), Some("basket"));
        assert!(matches!(keys, KeyMap::Packed(_)));
    }

    #[test]
    fn packed_sessions_keep_order_and_values_of_any_size() {
        let mut keys = KeyMap::new(None);
        assert_eq!(keys.name(), None);
        for k in ["b", "a", "c"] {
            keys.set(k.into(), v("1"));
        }
        assert_eq!(keys.set("a".into(), v(&"x".repeat(300))), Some(1));
        let names: Vec<_> = keys.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(keys.get("a").map(<[u8]>::len), Some(300));
        assert_eq!(keys.remove("b"), Some(1));
        assert_eq!(keys.remove("zz"), None);
        assert_eq!(keys.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "c"]);
        // A big value moves the session to a map.
        keys.set("big".into(), v(&"y".repeat(5000)));
        assert!(matches!(keys, KeyMap::Large(_)));
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn with_entries_packs_or_maps_like_sets_would() {
        let few = vec![("a".into(), v("1")), ("b".into(), v("2"))];
        let keys = KeyMap::with_entries(Some("n"), few);
        assert!(matches!(keys, KeyMap::Packed(_)));
        assert_eq!(
            (keys.name(), keys.len(), keys.get("b")),
            (Some("n"), 2, Some(&b"2"[..]))
        );
        let repeated = vec![("a".into(), v("1")), ("a".into(), v("2"))];
        let keys = KeyMap::with_entries(None, repeated);
        assert_eq!((keys.len(), keys.get("a")), (1, Some(&b"2"[..])));
        let many: Vec<_> = (0..30).map(|i| (format!("k{i}").into(), v("x"))).collect();
        let keys = KeyMap::with_entries(None, many);
        assert!(matches!(keys, KeyMap::Large(_)));
        assert_eq!(keys.len(), 30);
    }

    /// The name is the lone field after the pairs: every change to the
    /// keys keeps it, and it is never taken for a key.
    #[test]
    fn the_name_survives_every_change_and_is_never_a_key() {
        let long = "n".repeat(300);
        for name in [None, Some("user"), Some(long.as_str())] {
            let mut keys = KeyMap::new(name);
            assert_eq!((keys.name(), keys.len()), (name, 0));
            if name.is_none() {
                assert!(
                    matches!(&keys, KeyMap::Packed(b) if b.is_empty()),
                    "no allocation"
                );
            }
            // A key named like the session is a key like any other.
            keys.set("user".into(), v("1"));
            keys.set("cart".into(), v("[2]"));
            keys.set("user".into(), v("33"));
            assert_eq!(keys.get("user"), Some(&b"33"[..]));
            assert_eq!(keys.remove("cart"), Some(3));
            assert_eq!(keys.remove("nope"), None);
            assert_eq!(keys.iter().collect::<Vec<_>>(), [("user", &b"33"[..])]);
            assert_eq!(keys.name(), name);
            assert_eq!(keys.clear(), 1);
            assert_eq!((keys.name(), keys.len()), (name, 0));
            let loaded =
                KeyMap::with_entries(name, vec![("a".into(), v("1")), ("b".into(), v("2"))]);
            assert_eq!(
                (loaded.name(), loaded.len(), loaded.get("b")),
                (name, 2, Some(&b"2"[..]))
            );
        }
    }

    #[test]
    fn lengths_round_trip() {
        for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, 1 << 28] {
            let mut out = Vec::new();
            put_len(&mut out, n);
            assert_eq!(get_len(&out, 0), Some((n, out.len())));
            assert_eq!(len_size(n), out.len(), "{n}");
        }
        assert_eq!(get_len(&[0x80, 0x80], 0), None);
    }
}
