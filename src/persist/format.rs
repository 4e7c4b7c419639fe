//! The shard file format (version 4; versions 1 to 3 still load), byte for byte as `docs/PERSISTENCE.md`
//! describes it: encoding records, and decoding and verifying a whole file.
//!
//! Decoding trusts nothing it reads: every length is checked against the bytes
//! that remain before anything is allocated or sliced, so arbitrary bytes give
//! an error, never a panic or a huge allocation. Nothing here touches the disk
//! except [`read_shard_file`].

use std::fs;
use std::io::Read;
use std::path::Path;

use crate::domain::{ExpirySettings, Token};

use super::PersistError;

/// First 8 bytes of every shard file.
pub const FILE_MAGIC: [u8; 8] = *b"NDBSNAP\0";
/// First 8 bytes of the footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"NDBFOOT\0";
/// The shard file format this code writes. It reads this one and every
/// older one (`OLDEST_READABLE_VERSION`..=`FORMAT_VERSION`).
pub const FORMAT_VERSION: u32 = 4;
/// Version 1 had no owners or lifetimes (flag bits 6 and 7 unused);
/// version 2 no session versions (their sessions load at version 1);
/// version 3 no idle deadlines (recovery gives their sessions now + duration).
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// Magic, format version, shard index.
pub const HEADER_LEN: usize = 8 + 4 + 4;
/// Magic, sessions, keys, CRC32.
pub const FOOTER_LEN: usize = 8 + 8 + 8 + 4;

const FLAG_SHARED: u8 = 1 << 0;
const FLAG_NAME: u8 = 1 << 1;
const FLAG_EXPIRY: u8 = 1 << 2;
const FLAG_DELETE_SESSION: u8 = 1 << 3;
const FLAG_EXTEND_ON_SET_ADD: u8 = 1 << 4;
const FLAG_EXTEND_ON_GET: u8 = 1 << 5;
/// Version 2: an owner follows, then the creation time.
const FLAG_OWNER: u8 = 1 << 6;
/// Version 2: a lifetime follows the duration, then the creation time.
const FLAG_LIFETIME: u8 = 1 << 7;
const FLAGS_EXPIRY_DETAIL: u8 =
    FLAG_DELETE_SESSION | FLAG_EXTEND_ON_SET_ADD | FLAG_EXTEND_ON_GET | FLAG_LIFETIME;
const FLAGS_KNOWN_V1: u8 = FLAG_SHARED
    | FLAG_NAME
    | FLAG_EXPIRY
    | FLAG_DELETE_SESSION
    | FLAG_EXTEND_ON_SET_ADD
    | FLAG_EXTEND_ON_GET;
const FLAGS_KNOWN: u8 = FLAGS_KNOWN_V1 | FLAG_OWNER | FLAG_LIFETIME;

/// A session as saved: everything needed to recreate it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub tkn: Token,
    pub name: Option<Box<str>>,
    pub shared: bool,
    pub expiry: Option<ExpirySettings>,
    pub owner: Option<Box<str>>,
    /// Wall-clock creation time in ms since the Unix epoch; kept for
    /// sessions with an owner or a lifetime (0 for the others, and for
    /// every session of a version 1 file).
    pub created_unix_ms: u64,
    /// The session's version (1 for every session of a version 1 or 2 file).
    pub version: u64,
    /// The idle deadline when it was saved, in wall-clock ms since the Unix
    /// epoch; 0 when it has none or the file predates version 4. Recovery
    /// keeps it; `SH_LOAD` gives now + duration instead.
    pub idle_deadline_unix_ms: u64,
    /// Key names and their values as compact JSON text (valid UTF-8 on load).
    pub keys: Vec<(Box<str>, Box<[u8]>)>,
}

impl SessionRecord {
    /// Appends this record's encoding to `out`; the same bytes as [`encode_record`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        let head = RecordHead {
            tkn: self.tkn,
            name: self.name.as_deref(),
            shared: self.shared,
            expiry: self.expiry,
            owner: self.owner.as_deref(),
            created_unix_ms: self.created_unix_ms,
            idle_deadline_unix_ms: self.idle_deadline_unix_ms,
            version: self.version,
        };
        encode_record(out, &head, self.keys.iter().map(|(k, v)| (&**k, &**v)));
    }
}

/// Everything of a record but its keys, borrowed from wherever it lives.
#[derive(Copy, Clone, Debug)]
pub struct RecordHead<'a> {
    pub tkn: Token,
    pub name: Option<&'a str>,
    pub shared: bool,
    pub expiry: Option<ExpirySettings>,
    pub owner: Option<&'a str>,
    pub created_unix_ms: u64,
    pub version: u64,
    /// 0: none (see [`SessionRecord::idle_deadline_unix_ms`]).
    pub idle_deadline_unix_ms: u64,
}

/// Appends one record's encoding to `out`. Parts are borrowed so a shard can
/// encode straight from its store without cloning.
pub fn encode_record<'a>(
    out: &mut Vec<u8>,
    head: &RecordHead<'_>,
    keys: impl Iterator<Item = (&'a str, &'a [u8])>,
) {
    let RecordHead {
        tkn,
        name,
        shared,
        expiry,
        owner,
        created_unix_ms,
        version,
        idle_deadline_unix_ms,
    } = *head;
    let lifetime_s = expiry.map_or(0, |e| e.max_lifetime_s);
    let mut flags = 0u8;
    if owner.is_some() {
        flags |= FLAG_OWNER;
    }
    if lifetime_s > 0 {
        flags |= FLAG_LIFETIME;
    }
    if shared {
        flags |= FLAG_SHARED;
    }
    if name.is_some() {
        flags |= FLAG_NAME;
    }
    if let Some(e) = expiry {
        flags |= FLAG_EXPIRY;
        if e.delete_session {
            flags |= FLAG_DELETE_SESSION;
        }
        if e.extend_on_set_add {
            flags |= FLAG_EXTEND_ON_SET_ADD;
        }
        if e.extend_on_get {
            flags |= FLAG_EXTEND_ON_GET;
        }
    }
    out.extend_from_slice(&tkn.to_le_bytes());
    out.push(flags);
    if let Some(name) = name {
        put_bytes(out, name.as_bytes());
    }
    if let Some(e) = expiry {
        out.extend_from_slice(&e.duration_s.to_le_bytes());
        if lifetime_s > 0 {
            out.extend_from_slice(&lifetime_s.to_le_bytes());
        }
    }
    if let Some(owner) = owner {
        put_bytes(out, owner.as_bytes());
    }
    if flags & (FLAG_OWNER | FLAG_LIFETIME) != 0 {
        out.extend_from_slice(&created_unix_ms.to_le_bytes());
    }
    let mut varint = [0u8; 10];
    let n = varint_encode(version, &mut varint);
    out.extend_from_slice(&varint[..n]);
    let n = varint_encode(idle_deadline_unix_ms, &mut varint);
    out.extend_from_slice(&varint[..n]);
    // The key count precedes the keys. Store iterators know their length, so
    // the count is written from the size hint; should the iterator yield a
    // different number, the count is rewritten in place (a shift of this
    // record's key bytes only).
    let (low, high) = keys.size_hint();
    let hinted = if high == Some(low) { low as u64 } else { 0 };
    let hinted_len = varint_encode(hinted, &mut varint);
    let count_at = out.len();
    out.extend_from_slice(&varint[..hinted_len]);
    let mut count = 0u64;
    for (k, v) in keys {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v);
        count += 1;
    }
    if count != hinted {
        let n = varint_encode(count, &mut varint);
        out.splice(count_at..count_at + hinted_len, varint[..n].iter().copied());
    }
}

#[inline]
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut varint = [0u8; 10];
    let n = varint_encode(bytes.len() as u64, &mut varint);
    out.extend_from_slice(&varint[..n]);
    out.extend_from_slice(bytes);
}

/// Unsigned LEB128: 7 bits per byte, low group first, high bit = more follow.
#[inline]
pub(crate) fn varint_encode(mut v: u64, buf: &mut [u8; 10]) -> usize {
    let mut i = 0;
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[i] = low;
            return i + 1;
        }
        buf[i] = low | 0x80;
        i += 1;
    }
}

/// The file header: magic, format version, shard index.
pub(crate) fn header(shard: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&FILE_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // Shard counts are bounded far below u32::MAX by the config (<= 1024).
    h[12..16].copy_from_slice(&(shard as u32).to_le_bytes());
    h
}

/// The footer without its CRC32 (which covers these bytes too).
pub(crate) fn footer_without_crc(sessions: u64, keys: u64) -> [u8; FOOTER_LEN - 4] {
    let mut f = [0u8; FOOTER_LEN - 4];
    f[..8].copy_from_slice(&FOOTER_MAGIC);
    f[8..16].copy_from_slice(&sessions.to_le_bytes());
    f[16..24].copy_from_slice(&keys.to_le_bytes());
    f
}

/// What a verified shard file holds.
#[derive(Debug)]
pub struct DecodedFile {
    pub shard: u32,
    pub crc32: u32,
    pub keys: u64,
    pub records: Vec<SessionRecord>,
}

/// Verifies and decodes a whole shard file held in memory: magic, format
/// version, CRC32, every record, and the footer counts against the records.
/// `path` is only for messages.
pub fn decode_file(path: &Path, bytes: &[u8]) -> Result<DecodedFile, PersistError> {
    let corrupt =
        |offset: usize, reason: String| PersistError::corrupt(path, Some(offset as u64), reason);
    if bytes.len() < HEADER_LEN + FOOTER_LEN {
        return Err(PersistError::corrupt(
            path,
            None,
            format!(
                "{} bytes is too short for a header and a footer (truncated?)",
                bytes.len()
            ),
        ));
    }
    if bytes[..8] != FILE_MAGIC {
        return Err(corrupt(
            0,
            "not a nemesisdb snapshot file (bad magic)".into(),
        ));
    }
    let version = le_u32(&bytes[8..12]);
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(corrupt(
            8,
            format!(
                "format version {version}, this server reads {OLDEST_READABLE_VERSION} to {FORMAT_VERSION}"
            ),
        ));
    }
    let shard = le_u32(&bytes[12..16]);

    let crc_at = bytes.len() - 4;
    let stored_crc = le_u32(&bytes[crc_at..]);
    let actual_crc = crc32fast::hash(&bytes[..crc_at]);
    if stored_crc != actual_crc {
        return Err(corrupt(
            crc_at,
            format!(
                "CRC32 mismatch: footer says {stored_crc:#010x}, contents give {actual_crc:#010x} (damaged or truncated)"
            ),
        ));
    }
    let footer_at = bytes.len() - FOOTER_LEN;
    if bytes[footer_at..footer_at + 8] != FOOTER_MAGIC {
        return Err(corrupt(footer_at, "bad footer magic".into()));
    }
    let sessions = le_u64(&bytes[footer_at + 8..footer_at + 16]);
    let keys = le_u64(&bytes[footer_at + 16..footer_at + 24]);

    let mut cur = Cursor {
        bytes: &bytes[..footer_at],
        pos: HEADER_LEN,
    };
    // Each record takes at least 10 bytes, which bounds the reservation.
    let mut records =
        Vec::with_capacity(usize::try_from(sessions).unwrap_or(0).min(footer_at / 10));
    let mut key_total = 0u64;
    while cur.pos < cur.bytes.len() {
        let start = cur.pos;
        let record = decode_record(&mut cur, version).map_err(|(at, reason)| {
            corrupt(
                at,
                format!(
                    "record {} (starting at byte {start}): {reason}",
                    records.len()
                ),
            )
        })?;
        key_total += record.keys.len() as u64;
        records.push(record);
    }
    if records.len() as u64 != sessions || key_total != keys {
        return Err(corrupt(
            footer_at,
            format!(
                "footer counts {sessions} sessions and {keys} keys, the file holds {} and {key_total}",
                records.len()
            ),
        ));
    }
    Ok(DecodedFile {
        shard,
        crc32: stored_crc,
        keys,
        records,
    })
}

/// Reads a shard file that must be exactly `expected_len` bytes (checked before
/// anything is allocated, so a wrong size never costs memory) and decodes it
/// with [`decode_file`].
pub fn read_shard_file(path: &Path, expected_len: u64) -> Result<DecodedFile, PersistError> {
    let file = fs::File::open(path).map_err(|e| PersistError::io(path, "opening", e))?;
    let len = file
        .metadata()
        .map_err(|e| PersistError::io(path, "reading the size of", e))?
        .len();
    if len != expected_len {
        return Err(PersistError::corrupt(
            path,
            None,
            format!("{len} bytes, the metadata says {expected_len} (truncated or replaced?)"),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(expected_len)
        .read_to_end(&mut bytes)
        .map_err(|e| PersistError::io(path, "reading", e))?;
    decode_file(path, &bytes)
}

/// A position in bytes being decoded. Errors are (offset, reason).
pub(crate) struct Cursor<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) pos: usize,
}

pub(crate) type DecodeResult<T> = Result<T, (usize, String)>;

impl<'a> Cursor<'a> {
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize, what: &str) -> DecodeResult<&'a [u8]> {
        if n > self.remaining() {
            return Err((
                self.pos,
                format!(
                    "{what} needs {n} bytes, only {} remain before the footer",
                    self.remaining()
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self, what: &str) -> DecodeResult<u8> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &str) -> DecodeResult<u32> {
        Ok(le_u32(self.take(4, what)?))
    }

    pub(crate) fn u64(&mut self, what: &str) -> DecodeResult<u64> {
        Ok(le_u64(self.take(8, what)?))
    }

    pub(crate) fn varint(&mut self, what: &str) -> DecodeResult<u64> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            let low = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err((start, format!("{what}: varint overflows 64 bits")));
            }
            if i > 0 && b == 0 {
                return Err((start, format!("{what}: non-minimal varint")));
            }
            v |= low << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err((start, format!("{what}: varint longer than 10 bytes")))
    }

    /// A varint length followed by that many bytes.
    pub(crate) fn bytes(&mut self, what: &str) -> DecodeResult<&'a [u8]> {
        let at = self.pos;
        let len = self.varint(what)?;
        match usize::try_from(len) {
            Ok(n) if n <= self.remaining() => self.take(n, what),
            _ => Err((
                at,
                format!(
                    "{what} claims {len} bytes, only {} remain before the footer",
                    self.remaining()
                ),
            )),
        }
    }

    pub(crate) fn utf8(&mut self, what: &str) -> DecodeResult<&'a str> {
        let at = self.pos;
        let b = self.bytes(what)?;
        std::str::from_utf8(b).map_err(|e| (at, format!("{what} is not valid UTF-8: {e}")))
    }
}

pub(crate) fn decode_record(cur: &mut Cursor<'_>, version: u32) -> DecodeResult<SessionRecord> {
    let at = cur.pos;
    let tkn = cur.u64("token")?;
    if tkn == 0 {
        return Err((at, "token 0 (never minted)".into()));
    }
    let flags_at = cur.pos;
    let flags = cur.u8("flags")?;
    let known = if version == 1 {
        FLAGS_KNOWN_V1
    } else {
        FLAGS_KNOWN
    };
    if flags & !known != 0 {
        return Err((flags_at, format!("unknown flag bits in {flags:#04x}")));
    }
    if flags & FLAG_EXPIRY == 0 && flags & FLAGS_EXPIRY_DETAIL != 0 {
        return Err((
            flags_at,
            format!("expiry flag bits without expiry in {flags:#04x}"),
        ));
    }
    let name = if flags & FLAG_NAME != 0 {
        let at = cur.pos;
        let name = cur.utf8("session name")?;
        // Names are 1 to 256 bytes; an empty one could be registered as a
        // shared name that nothing ever releases.
        if name.is_empty() {
            return Err((at, "empty session name".into()));
        }
        Some(Box::from(name))
    } else {
        None
    };
    let expiry = if flags & FLAG_EXPIRY != 0 {
        let at = cur.pos;
        let duration_s = cur.u32("expiry duration")?;
        let max_lifetime_s = if flags & FLAG_LIFETIME != 0 {
            let at = cur.pos;
            let lifetime = cur.u32("lifetime")?;
            if lifetime == 0 {
                return Err((at, "lifetime 0 (must be >= 1)".into()));
            }
            lifetime
        } else {
            0
        };
        if duration_s == 0 && max_lifetime_s == 0 {
            return Err((at, "expiry duration 0 without a lifetime".into()));
        }
        Some(ExpirySettings {
            duration_s,
            delete_session: flags & FLAG_DELETE_SESSION != 0,
            extend_on_set_add: flags & FLAG_EXTEND_ON_SET_ADD != 0,
            extend_on_get: flags & FLAG_EXTEND_ON_GET != 0,
            max_lifetime_s,
        })
    } else {
        None
    };
    let owner = if flags & FLAG_OWNER != 0 {
        let at = cur.pos;
        let owner = cur.utf8("owner")?;
        if owner.is_empty() {
            return Err((at, "empty owner".into()));
        }
        Some(Box::from(owner))
    } else {
        None
    };
    let created_unix_ms = if flags & (FLAG_OWNER | FLAG_LIFETIME) != 0 {
        cur.u64("creation time")?
    } else {
        0
    };
    let version_number = if version >= 3 {
        let at = cur.pos;
        let v = cur.varint("session version")?;
        if v == 0 {
            return Err((at, "session version 0 (versions start at 1)".into()));
        }
        v
    } else {
        1
    };
    let idle_deadline_unix_ms = if version >= 4 {
        cur.varint("idle deadline")?
    } else {
        0
    };
    let count_at = cur.pos;
    let count = cur.varint("key count")?;
    // Every key takes at least 2 bytes (two empty lengths).
    if count > (cur.remaining() / 2) as u64 {
        return Err((
            count_at,
            format!(
                "key count {count} cannot fit in the {} bytes before the footer",
                cur.remaining()
            ),
        ));
    }
    let mut keys = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let key = Box::from(cur.utf8("key name")?);
        let value = cur.utf8("value")?;
        keys.push((key, Box::from(value.as_bytes())));
    }
    Ok(SessionRecord {
        tkn,
        name,
        shared: flags & FLAG_SHARED != 0,
        expiry,
        owner,
        created_unix_ms,
        version: version_number,
        idle_deadline_unix_ms,
        keys,
    })
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A whole file as the writer produces it, built in memory.
    pub(crate) fn file_bytes(shard: usize, records: &[SessionRecord]) -> Vec<u8> {
        file_bytes_as(FORMAT_VERSION, shard, records)
    }

    /// A file in format `version`: before 4, records carry no idle
    /// deadline (theirs must be 0); before 3, no session version either
    /// (theirs must be 1). Those varints sit just before the key section.
    fn file_bytes_as(version: u32, shard: usize, records: &[SessionRecord]) -> Vec<u8> {
        let mut out = header(shard).to_vec();
        out[8..12].copy_from_slice(&version.to_le_bytes());
        let mut keys = 0;
        for r in records {
            let mut record = Vec::new();
            r.encode(&mut record);
            let mut section = Vec::new();
            let mut varint = [0u8; 10];
            let n = varint_encode(r.keys.len() as u64, &mut varint);
            section.extend_from_slice(&varint[..n]);
            for (k, v) in &r.keys {
                put_bytes(&mut section, k.as_bytes());
                put_bytes(&mut section, v);
            }
            let before_keys = record.len() - section.len() - 1;
            if version < 4 {
                assert_eq!(
                    r.idle_deadline_unix_ms, 0,
                    "older formats have no deadlines"
                );
                assert_eq!(record.remove(before_keys), 0);
            }
            if version < 3 {
                assert_eq!(r.version, 1, "older formats have no versions");
                assert_eq!(record.remove(before_keys - 1), 1);
            }
            out.extend_from_slice(&record);
            keys += r.keys.len() as u64;
        }
        out.extend_from_slice(&footer_without_crc(records.len() as u64, keys));
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn expiry(duration_s: u32, bits: u8) -> ExpirySettings {
        ExpirySettings {
            duration_s,
            delete_session: bits & 1 != 0,
            extend_on_set_add: bits & 2 != 0,
            extend_on_get: bits & 4 != 0,
            max_lifetime_s: 0,
        }
    }

    fn head(r: &SessionRecord) -> RecordHead<'_> {
        RecordHead {
            tkn: r.tkn,
            name: r.name.as_deref(),
            shared: r.shared,
            expiry: r.expiry,
            owner: r.owner.as_deref(),
            created_unix_ms: r.created_unix_ms,
            idle_deadline_unix_ms: r.idle_deadline_unix_ms,
            version: 1,
        }
    }

    fn kv(k: &str, v: &[u8]) -> (Box<str>, Box<[u8]>) {
        (k.into(), v.into())
    }

    /// Every kind of value, names, shared flags, all expiry combinations, no
    /// keys, many keys, a 512 KiB value.
    pub(crate) fn sample_records() -> Vec<SessionRecord> {
        let mut records = Vec::new();
        let values: Vec<&[u8]> = vec![
            b"null",
            b"true",
            b"false",
            b"0",
            b"-12.5e3",
            b"18446744073709551615",
            b"\"\"",
            b"\"h\\u00e9llo \\\"w\\\" \xc3\xa9 \xf0\x9f\x98\x80\"",
            b"[]",
            b"[1,\"a\",null,[{}]]",
            b"{}",
            b"{\"a\":{\"b\":[1,2,{\"c\":null}]}}",
        ];
        records.push(SessionRecord {
            tkn: 1,
            name: None,
            shared: false,
            expiry: None,
            owner: None,
            created_unix_ms: 0,
            idle_deadline_unix_ms: 0,
            version: 1,
            keys: values
                .iter()
                .enumerate()
                .map(|(i, v)| kv(&format!("k{i}"), v))
                .collect(),
        });
        for bits in 0..8u8 {
            records.push(SessionRecord {
                tkn: 100 + u64::from(bits),
                name: if bits % 2 == 0 {
                    Some(format!("name-{bits} é").into())
                } else {
                    None
                },
                shared: bits % 3 == 0,
                expiry: Some(expiry(1 + u32::from(bits) * 1000, bits)),
                owner: None,
                created_unix_ms: 0,
                idle_deadline_unix_ms: 0,
                version: 1,
                keys: vec![kv("", b"\"empty key name\""), kv("ключ", b"1")],
            });
        }
        records.push(SessionRecord {
            tkn: u64::MAX,
            name: Some("shared and keyless".into()),
            shared: true,
            expiry: Some(expiry(u32::MAX, 7)),
            owner: None,
            created_unix_ms: 0,
            idle_deadline_unix_ms: 0,
            version: 1,
            keys: Vec::new(),
        });
        records.push(SessionRecord {
            tkn: 7,
            name: None,
            shared: false,
            expiry: None,
            owner: None,
            created_unix_ms: 0,
            idle_deadline_unix_ms: 0,
            version: 1,
            keys: (0..1000)
                .map(|i| kv(&format!("key{i}"), format!("{i}").as_bytes()))
                .collect(),
        });
        let mut big = vec![b'"'];
        big.extend(std::iter::repeat_n(b'x', 512 * 1024));
        big.push(b'"');
        records.push(SessionRecord {
            tkn: 8,
            name: Some("big".into()),
            shared: false,
            expiry: None,
            owner: None,
            created_unix_ms: 0,
            idle_deadline_unix_ms: 0,
            version: 1,
            keys: vec![kv("big", &big)],
        });
        records
    }

    #[test]
    fn varint_round_trips_and_rejects_bad_encodings() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16383,
            16384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = [0u8; 10];
            let n = varint_encode(v, &mut buf);
            let mut cur = Cursor {
                bytes: &buf[..n],
                pos: 0,
            };
            assert_eq!(cur.varint("v"), Ok(v));
            assert_eq!(cur.pos, n);
        }
        let bad: [&[u8]; 4] = [
            &[0x80],                                                       // truncated
            &[0x80, 0x00],                                                 // non-minimal
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], // overflow
            &[0xff; 11],
        ];
        for b in bad {
            let mut cur = Cursor { bytes: b, pos: 0 };
            assert!(cur.varint("v").is_err(), "{b:?}");
        }
    }

    #[test]
    fn records_round_trip() {
        let records = sample_records();
        let bytes = file_bytes(3, &records);
        let decoded = decode_file(Path::new("mem"), &bytes).unwrap();
        assert_eq!(decoded.shard, 3);
        assert_eq!(decoded.records, records);
        assert_eq!(
            decoded.keys,
            records.iter().map(|r| r.keys.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn encode_record_matches_from_borrowed_parts() {
        let r = &sample_records()[1];
        let mut a = Vec::new();
        r.encode(&mut a);
        let mut b = Vec::new();
        let keys: Vec<(String, Vec<u8>)> = r
            .keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        encode_record(
            &mut b,
            &head(r),
            keys.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        );
        assert_eq!(a, b);
    }

    /// An iterator whose size hint is wrong (or absent) still gives the right count.
    #[test]
    fn key_count_does_not_trust_the_size_hint() {
        let records = sample_records();
        let r = &records[10];
        assert_eq!(r.keys.len(), 1000);
        let mut expected = Vec::new();
        r.encode(&mut expected);
        let filtered = r.keys.iter().filter(|_| true).map(|(k, v)| (&**k, &**v));
        let mut a = Vec::new();
        encode_record(&mut a, &head(r), filtered);
        assert_eq!(a, expected);

        struct Liar<I>(I, usize);
        impl<'a, I: Iterator<Item = (&'a str, &'a [u8])>> Iterator for Liar<I> {
            type Item = (&'a str, &'a [u8]);
            fn next(&mut self) -> Option<Self::Item> {
                self.0.next()
            }
            fn size_hint(&self) -> (usize, Option<usize>) {
                (self.1, Some(self.1))
            }
        }
        for claimed in [0, 1, 999, 1001, 100_000] {
            let liar = Liar(r.keys.iter().map(|(k, v)| (&**k, &**v)), claimed);
            let mut b = Vec::new();
            encode_record(&mut b, &head(r), liar);
            assert_eq!(b, expected, "claimed {claimed}");
        }
    }

    fn plain(
        tkn: Token,
        name: Option<&str>,
        shared: bool,
        expiry: Option<ExpirySettings>,
    ) -> RecordHead<'_> {
        RecordHead {
            tkn,
            name,
            shared,
            expiry,
            owner: None,
            created_unix_ms: 0,
            idle_deadline_unix_ms: 0,
            version: 1,
        }
    }

    /// The worked examples in docs/PERSISTENCE.md.
    #[test]
    fn bytes_match_the_documented_example() {
        let mut out = Vec::new();
        encode_record(
            &mut out,
            &plain(5, None, false, None),
            [("a", b"1".as_slice())].into_iter(),
        );
        assert_eq!(out, [5, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, b'a', 1, b'1']);
        assert_eq!(header(7), *b"NDBSNAP\0\x04\0\0\0\x07\0\0\0");
        let mut out = Vec::new();
        let e = ExpirySettings::idle(300, true, false, true);
        encode_record(
            &mut out,
            &plain(1, Some("n"), true, Some(e)),
            std::iter::empty(),
        );
        let flags = 0b10_1111;
        assert_eq!(
            out,
            [1, 0, 0, 0, 0, 0, 0, 0, flags, 1, b'n', 44, 1, 0, 0, 1, 0, 0]
        );
        // Version 2: an owner, a lifetime (no idle duration), the creation time.
        let mut out = Vec::new();
        let e = ExpirySettings {
            max_lifetime_s: 3600,
            ..ExpirySettings::idle(0, false, false, false)
        };
        let head = RecordHead {
            owner: Some("ann"),
            created_unix_ms: 1,
            idle_deadline_unix_ms: 0,
            version: 300,
            ..plain(2, None, false, Some(e))
        };
        encode_record(&mut out, &head, std::iter::empty());
        let flags = 0b1100_0100;
        assert_eq!(
            out,
            [
                2, 0, 0, 0, 0, 0, 0, 0, flags, 0, 0, 0, 0, 0x10, 0x0e, 0, 0, 3, b'a', b'n', b'n',
                1, 0, 0, 0, 0, 0, 0, 0, 0xac, 0x02, 0, 0
            ]
        );
    }

    #[test]
    fn empty_file_round_trips() {
        let bytes = file_bytes(0, &[]);
        assert_eq!(bytes.len(), HEADER_LEN + FOOTER_LEN);
        let decoded = decode_file(Path::new("mem"), &bytes).unwrap();
        assert!(decoded.records.is_empty());
    }

    fn small_file() -> Vec<u8> {
        let records: Vec<SessionRecord> = sample_records()
            .into_iter()
            .filter(|r| r.keys.iter().map(|(_, v)| v.len()).sum::<usize>() < 1000)
            .collect();
        file_bytes(1, &records)
    }

    #[test]
    fn any_flipped_byte_is_an_error() {
        let bytes = small_file();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                assert!(
                    decode_file(Path::new("mem"), &b).is_err(),
                    "flip {flip:#x} at {i} accepted"
                );
            }
        }
    }

    #[test]
    fn any_truncation_is_an_error() {
        let bytes = small_file();
        for len in 0..bytes.len() {
            let err = decode_file(Path::new("mem"), &bytes[..len]).unwrap_err();
            assert!(err.to_string().contains("mem"), "{err}");
        }
    }

    #[test]
    fn wrong_magic_or_version_is_an_error() {
        let mut b = small_file();
        b[0] = b'X';
        let err = decode_file(Path::new("mem"), &b).unwrap_err().to_string();
        assert!(err.contains("bad magic"), "{err}");

        let mut b = small_file();
        b[8..12].copy_from_slice(&5u32.to_le_bytes());
        let err = decode_file(Path::new("mem"), &b).unwrap_err().to_string();
        assert!(err.contains("format version 5"), "{err}");
    }

    #[test]
    fn version_1_files_load_and_know_no_owner_or_lifetime() {
        let records: Vec<SessionRecord> = sample_records()
            .into_iter()
            .filter(|r| r.owner.is_none() && r.expiry.is_none_or(|e| e.max_lifetime_s == 0))
            .collect();
        let v1 = file_bytes_as(1, 0, &records);
        assert_eq!(decode_file(Path::new("mem"), &v1).unwrap().records, records);

        let owned = SessionRecord {
            owner: Some("ann".into()),
            created_unix_ms: 7,
            idle_deadline_unix_ms: 0,
            ..records[0].clone()
        };
        let v2 = file_bytes_as(2, 0, std::slice::from_ref(&owned));
        assert_eq!(
            decode_file(Path::new("mem"), &v2).unwrap().records,
            std::slice::from_ref(&owned)
        );
        let err = decode_file(Path::new("mem"), &file_bytes_as(1, 0, &[owned]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown flag bits"), "{err}");
    }

    #[test]
    fn version_3_keeps_session_versions_and_refuses_0() {
        let mut records = sample_records();
        for (r, version) in records
            .iter_mut()
            .zip([1, 2, 127, 128, u64::MAX].iter().cycle())
        {
            r.version = *version;
        }
        let bytes = file_bytes(0, &records);
        assert_eq!(
            decode_file(Path::new("mem"), &bytes).unwrap().records,
            records
        );

        let zero = SessionRecord {
            version: 0,
            ..records[0].clone()
        };
        let err = decode_file(Path::new("mem"), &file_bytes(0, &[zero]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("session version 0"), "{err}");
    }

    /// Bytes with a valid CRC but garbage records: the structural checks alone
    /// must reject them without panicking or allocating wildly.
    #[test]
    fn garbage_with_a_valid_crc_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            let len = (next() % 200) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // Plausible start: a nonzero token and sane flags.
                body.splice(0..0, [1, 0, 0, 0, 0, 0, 0, 0, (next() % 64) as u8]);
            }
            let mut out = header(0).to_vec();
            out.extend_from_slice(&body);
            out.extend_from_slice(&footer_without_crc(1, 1));
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_le_bytes());
            let _ = decode_file(Path::new("mem"), &out);
        }
    }

    #[test]
    fn huge_claimed_lengths_are_rejected_before_allocating() {
        let mut body = Vec::new();
        body.extend_from_slice(&5u64.to_le_bytes());
        body.extend_from_slice(&[0, 1, 0]); // flags, version 1, no deadline
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let mut out = header(0).to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&footer_without_crc(1, 0));
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let err = decode_file(Path::new("mem"), &out).unwrap_err().to_string();
        assert!(err.contains("key count"), "{err}");
    }

    #[test]
    fn invalid_utf8_value_is_an_error() {
        let r = SessionRecord {
            tkn: 9,
            name: None,
            shared: false,
            expiry: None,
            owner: None,
            created_unix_ms: 0,
            idle_deadline_unix_ms: 0,
            version: 1,
            keys: vec![kv("k", b"\"\xff\"")],
        };
        let bytes = file_bytes(0, &[r]);
        let err = decode_file(Path::new("mem"), &bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn an_empty_session_name_is_an_error() {
        let r = SessionRecord {
            tkn: 9,
            name: Some("".into()),
            shared: true,
            expiry: None,
            owner: None,
            created_unix_ms: 0,
            idle_deadline_unix_ms: 0,
            version: 1,
            keys: Vec::new(),
        };
        let bytes = file_bytes(0, &[r]);
        let err = decode_file(Path::new("mem"), &bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty session name"), "{err}");
    }

    #[test]
    fn footer_counts_must_match_the_records() {
        let records = &sample_records()[..3];
        let mut out = header(0).to_vec();
        for r in records {
            r.encode(&mut out);
        }
        out.extend_from_slice(&footer_without_crc(4, 2));
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let err = decode_file(Path::new("mem"), &out).unwrap_err().to_string();
        assert!(err.contains("footer counts"), "{err}");
    }
}
