//! Change-log records: encoding on the shard, sealing (CRC32) on the log
//! writer thread, decoding on recovery. The byte layout is
//! `docs/PERSISTENCE.md`, "Change log".
//!
//! A record is self-delimiting: its length comes first, then a CRC32 of
//! everything after the CRC field, then a fixed head (sequence number,
//! leadership epoch, hash slot, kind, token) and a body that depends on the
//! kind. The shard writes records with a zero CRC into its turn's buffer;
//! the writer thread fills the CRCs in ([`seal`]) so the event loop never
//! computes them.

use crate::domain::Token;
use crate::persist::format::{
    Cursor, DecodeResult, FORMAT_VERSION, RecordHead, SessionRecord, decode_record as decode_put,
    encode_record, le_u32, le_u64, put_bytes, varint_encode,
};

/// Length, CRC32, sequence number, epoch, slot, kind, reserved, token.
pub const RECORD_HEAD_LEN: usize = 4 + 4 + 8 + 4 + 2 + 1 + 1 + 8;
/// The largest record a reader accepts (a session is bounded far below
/// this by the largest request the server takes).
pub const MAX_RECORD_LEN: usize = 1 << 30;
/// Hash slots: a record's slot is its token modulo this (for a future
/// slot-based router and for replicas that follow some slots only).
pub const SLOTS: u64 = 16384;
/// The slot of a record that is about no single session (`EndAll`).
pub const NO_SLOT: u16 = u16::MAX;
/// The most a turn's buffer reserves up front.
const MAX_KEPT_CAPACITY: usize = 1 << 20;
/// The snapshot record format a `Put` body is written in.
const PUT_FORMAT: u32 = FORMAT_VERSION;

/// What a record says happened.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The whole session as it now is (created, or loaded).
    Put = 1,
    /// Keys set to these values (`SH_SET`, the keys `SH_ADD` added, `SH_INCR`).
    Set = 2,
    /// Keys removed.
    Remove = 3,
    /// Every key removed.
    Clear = 4,
    /// Every key removed, then these set.
    ClearSet = 5,
    /// The session is gone (ended, expired, ended with its owner).
    End = 6,
    /// Idle expiry cleared its keys; the session stays with a new deadline.
    KeysExpired = 7,
    /// Its idle deadline moved.
    Deadline = 8,
    /// Every session of the shard that wrote the record is gone.
    EndAll = 9,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Put,
            2 => Kind::Set,
            3 => Kind::Remove,
            4 => Kind::Clear,
            5 => Kind::ClearSet,
            6 => Kind::End,
            7 => Kind::KeysExpired,
            8 => Kind::Deadline,
            9 => Kind::EndAll,
            _ => return None,
        })
    }
}

/// The hash slot of a token.
pub fn slot_of(tkn: Token) -> u16 {
    (tkn % SLOTS) as u16
}

/// One shard's records since the last [`ChangeBuffer::take`], unsealed.
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// The sequence number of the last record in `bytes`.
    pub last_seq: u64,
}

/// Where a shard encodes its records during a turn.
#[derive(Debug)]
pub struct ChangeBuffer {
    buf: Vec<u8>,
    next_seq: u64,
    /// Where the record being written began.
    start: usize,
}

impl ChangeBuffer {
    /// A buffer whose first record will be `next_seq`.
    pub fn new(next_seq: u64) -> ChangeBuffer {
        ChangeBuffer {
            buf: Vec::with_capacity(64 * 1024),
            next_seq,
            start: 0,
        }
    }

    /// The sequence number of the last record written (0: none ever).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether records are waiting to be taken.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes of records waiting to be taken.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The records written since the last call, if any; the next ones go
    /// into `spare` (an emptied buffer of an earlier batch) when given.
    pub fn take(&mut self, spare: Option<Vec<u8>>) -> Option<Batch> {
        if self.buf.is_empty() {
            return None;
        }
        let next = spare.unwrap_or_else(|| {
            // As large as this one, up to a bound (one huge turn, a load,
            // must not make later turns allocate as much).
            Vec::with_capacity(self.buf.capacity().min(MAX_KEPT_CAPACITY))
        });
        Some(Batch {
            bytes: std::mem::replace(&mut self.buf, next),
            last_seq: self.last_seq(),
        })
    }

    fn begin(&mut self, kind: Kind, tkn: Token) {
        self.start = self.buf.len();
        let slot = if kind == Kind::EndAll {
            NO_SLOT
        } else {
            slot_of(tkn)
        };
        let mut head = [0u8; RECORD_HEAD_LEN];
        head[8..16].copy_from_slice(&self.next_seq.to_le_bytes());
        // 16..20: leadership epoch, 0 until replication exists.
        head[20..22].copy_from_slice(&slot.to_le_bytes());
        head[22] = kind as u8;
        head[24..32].copy_from_slice(&tkn.to_le_bytes());
        self.buf.extend_from_slice(&head);
        self.next_seq += 1;
    }

    fn end(&mut self) {
        let len = (self.buf.len() - self.start - 4) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
    }

    #[inline]
    fn varint(&mut self, v: u64) {
        let mut b = [0u8; 10];
        let n = varint_encode(v, &mut b);
        self.buf.extend_from_slice(&b[..n]);
    }

    /// The whole session (`head` carries its idle deadline).
    pub fn put<'a>(
        &mut self,
        head: &RecordHead<'_>,
        keys: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) {
        self.begin(Kind::Put, head.tkn);
        encode_record(&mut self.buf, head, keys);
        self.end();
    }

    /// Keys set (`Set`) or every key replaced (`ClearSet`), and the
    /// version the session has after it.
    pub fn set<'a>(
        &mut self,
        tkn: Token,
        clear_first: bool,
        version: u64,
        keys: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
    ) {
        self.begin(
            if clear_first {
                Kind::ClearSet
            } else {
                Kind::Set
            },
            tkn,
        );
        self.varint(version);
        self.varint(keys.len() as u64);
        for (k, v) in keys {
            put_bytes(&mut self.buf, k.as_bytes());
            put_bytes(&mut self.buf, v);
        }
        self.end();
    }

    /// Keys removed, and the version after.
    pub fn remove<'a>(
        &mut self,
        tkn: Token,
        version: u64,
        keys: impl ExactSizeIterator<Item = &'a str>,
    ) {
        self.begin(Kind::Remove, tkn);
        self.varint(version);
        self.varint(keys.len() as u64);
        for k in keys {
            put_bytes(&mut self.buf, k.as_bytes());
        }
        self.end();
    }

    /// Every key removed, and the version after.
    pub fn clear(&mut self, tkn: Token, version: u64) {
        self.begin(Kind::Clear, tkn);
        self.varint(version);
        self.end();
    }

    /// The session is gone.
    pub fn end_session(&mut self, tkn: Token) {
        self.begin(Kind::End, tkn);
        self.end();
    }

    /// Idle expiry cleared its keys: its version and next deadline after.
    pub fn keys_expired(&mut self, tkn: Token, version: u64, deadline_unix_ms: u64) {
        self.begin(Kind::KeysExpired, tkn);
        self.varint(version);
        self.varint(deadline_unix_ms);
        self.end();
    }

    /// Its idle deadline is now this (wall-clock ms).
    pub fn deadline(&mut self, tkn: Token, deadline_unix_ms: u64) {
        self.begin(Kind::Deadline, tkn);
        self.varint(deadline_unix_ms);
        self.end();
    }

    /// Every session of this shard is gone.
    pub fn end_all(&mut self) {
        self.begin(Kind::EndAll, 0);
        self.end();
    }
}

/// Fills in the CRC32 of every record in `bytes` (whole records, as a
/// [`ChangeBuffer`] wrote them).
pub fn seal(bytes: &mut [u8]) {
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = le_u32(&bytes[at..at + 4]) as usize;
        let end = at + 4 + len;
        debug_assert!(end <= bytes.len() && len >= RECORD_HEAD_LEN - 4);
        let end = end.min(bytes.len());
        let crc = crc32fast::hash(&bytes[at + 8..end]);
        bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// What a decoded record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(SessionRecord),
    Set {
        clear_first: bool,
        version: u64,
        keys: Vec<(Box<str>, Box<[u8]>)>,
    },
    Remove {
        version: u64,
        keys: Vec<Box<str>>,
    },
    Clear {
        version: u64,
    },
    End,
    KeysExpired {
        version: u64,
        deadline_unix_ms: u64,
    },
    Deadline {
        deadline_unix_ms: u64,
    },
    EndAll,
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: u64,
    pub epoch: u32,
    pub slot: u16,
    pub tkn: Token,
    pub change: Change,
}

/// Why bytes are not a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes remain than the record needs: a write cut short (or a
    /// damaged length).
    Incomplete { needed: usize, available: usize },
    /// The bytes are all there but wrong: the reason says how.
    Corrupt(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Incomplete { needed, available } => write!(
                f,
                "incomplete record: {needed} bytes needed, {available} remain"
            ),
            RecordError::Corrupt(reason) => f.write_str(reason),
        }
    }
}

/// Decodes the record at the start of `bytes`; returns it and its length.
pub fn decode(bytes: &[u8]) -> Result<(LogRecord, usize), RecordError> {
    if bytes.len() < 4 {
        return Err(RecordError::Incomplete {
            needed: 4,
            available: bytes.len(),
        });
    }
    let len = le_u32(&bytes[..4]) as usize;
    if !(RECORD_HEAD_LEN - 4..=MAX_RECORD_LEN).contains(&len) {
        return Err(RecordError::Corrupt(format!(
            "record length {len} is out of range"
        )));
    }
    let total = 4 + len;
    if bytes.len() < total {
        return Err(RecordError::Incomplete {
            needed: total,
            available: bytes.len(),
        });
    }
    let stored = le_u32(&bytes[4..8]);
    let actual = crc32fast::hash(&bytes[8..total]);
    if stored != actual {
        return Err(RecordError::Corrupt(format!(
            "CRC32 mismatch: record says {stored:#010x}, contents give {actual:#010x}"
        )));
    }
    let seq = le_u64(&bytes[8..16]);
    let epoch = le_u32(&bytes[16..20]);
    let slot = u16::from_le_bytes([bytes[20], bytes[21]]);
    let kind = Kind::from_u8(bytes[22])
        .ok_or_else(|| RecordError::Corrupt(format!("unknown record kind {}", bytes[22])))?;
    let tkn = le_u64(&bytes[24..32]);
    let mut cur = Cursor {
        bytes: &bytes[..total],
        pos: RECORD_HEAD_LEN,
    };
    let change = decode_body(kind, tkn, &mut cur).map_err(|(at, reason)| {
        RecordError::Corrupt(format!("record {seq}, byte {at} of it: {reason}"))
    })?;
    if cur.pos != total {
        return Err(RecordError::Corrupt(format!(
            "record {seq}: {} bytes left over after its body",
            total - cur.pos
        )));
    }
    if kind != Kind::EndAll && (tkn == 0 || slot != slot_of(tkn)) {
        return Err(RecordError::Corrupt(format!(
            "record {seq}: token {tkn} and slot {slot} do not match"
        )));
    }
    Ok((
        LogRecord {
            seq,
            epoch,
            slot,
            tkn,
            change,
        },
        total,
    ))
}

fn decode_body(kind: Kind, tkn: Token, cur: &mut Cursor<'_>) -> DecodeResult<Change> {
    Ok(match kind {
        Kind::Put => {
            let at = cur.pos;
            let record = decode_put(cur, PUT_FORMAT)?;
            if record.tkn != tkn {
                return Err((at, "the session's token is not the record's".into()));
            }
            Change::Put(record)
        }
        Kind::Set | Kind::ClearSet => {
            let version = version(cur)?;
            let count = count(cur, 2)?;
            let mut keys = Vec::with_capacity(count);
            for _ in 0..count {
                let k = cur.utf8("key")?;
                let v = cur.bytes("value")?;
                keys.push((Box::from(k), Box::from(v)));
            }
            Change::Set {
                clear_first: kind == Kind::ClearSet,
                version,
                keys,
            }
        }
        Kind::Remove => {
            let version = version(cur)?;
            let count = count(cur, 1)?;
            let mut keys = Vec::with_capacity(count);
            for _ in 0..count {
                keys.push(Box::from(cur.utf8("key")?));
            }
            Change::Remove { version, keys }
        }
        Kind::Clear => Change::Clear {
            version: version(cur)?,
        },
        Kind::End => Change::End,
        Kind::KeysExpired => Change::KeysExpired {
            version: version(cur)?,
            deadline_unix_ms: cur.varint("deadline")?,
        },
        Kind::Deadline => Change::Deadline {
            deadline_unix_ms: cur.varint("deadline")?,
        },
        Kind::EndAll => Change::EndAll,
    })
}

fn version(cur: &mut Cursor<'_>) -> DecodeResult<u64> {
    let at = cur.pos;
    match cur.varint("session version")? {
        0 => Err((at, "session version 0".into())),
        v => Ok(v),
    }
}

/// A count of items each at least `min_len` bytes long, checked against
/// what remains before anything is reserved.
fn count(cur: &mut Cursor<'_>, min_len: usize) -> DecodeResult<usize> {
    let at = cur.pos;
    let n = cur.varint("key count")?;
    if n > (cur.remaining() / min_len) as u64 {
        return Err((at, format!("key count {n} cannot fit in the record")));
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ExpirySettings;

    fn sealed(buf: &mut ChangeBuffer) -> Vec<u8> {
        let mut batch = buf.take(None).unwrap();
        seal(&mut batch.bytes);
        batch.bytes
    }

    fn decode_all(mut bytes: &[u8]) -> Vec<LogRecord> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (record, len) = decode(bytes).unwrap();
            out.push(record);
            bytes = &bytes[len..];
        }
        out
    }

    fn every_kind() -> (ChangeBuffer, Vec<Change>) {
        let mut buf = ChangeBuffer::new(7);
        let expiry = ExpirySettings {
            duration_s: 60,
            delete_session: true,
            extend_on_set_add: false,
            extend_on_get: true,
            max_lifetime_s: 0,
        };
        let head = RecordHead {
            tkn: 42,
            name: Some("cart"),
            shared: true,
            expiry: Some(expiry),
            owner: None,
            created_unix_ms: 0,
            version: 1,
            idle_deadline_unix_ms: 1_800_000_000_000,
        };
        let kv: [(&str, &[u8]); 2] = [("a", b"1"), ("b", b"\"x\"")];
        buf.put(&head, kv.iter().copied());
        buf.set(42, false, 2, kv.iter().copied());
        buf.set(42, true, 3, kv[..1].iter().copied());
        buf.remove(42, 4, ["a", "zz"].into_iter());
        buf.clear(42, 5);
        buf.keys_expired(42, 6, 1_800_000_060_000);
        buf.deadline(42, 1_800_000_120_000);
        buf.end_session(42);
        buf.end_all();
        let owned = |kv: &[(&str, &[u8])]| {
            kv.iter()
                .map(|(k, v)| (Box::from(*k), Box::from(*v)))
                .collect::<Vec<_>>()
        };
        let expected = vec![
            Change::Put(SessionRecord {
                tkn: 42,
                name: Some("cart".into()),
                shared: true,
                expiry: Some(expiry),
                owner: None,
                created_unix_ms: 0,
                version: 1,
                idle_deadline_unix_ms: 1_800_000_000_000,
                keys: owned(&kv),
            }),
            Change::Set {
                clear_first: false,
                version: 2,
                keys: owned(&kv),
            },
            Change::Set {
                clear_first: true,
                version: 3,
                keys: owned(&kv[..1]),
            },
            Change::Remove {
                version: 4,
                keys: vec!["a".into(), "zz".into()],
            },
            Change::Clear { version: 5 },
            Change::KeysExpired {
                version: 6,
                deadline_unix_ms: 1_800_000_060_000,
            },
            Change::Deadline {
                deadline_unix_ms: 1_800_000_120_000,
            },
            Change::End,
            Change::EndAll,
        ];
        (buf, expected)
    }

    #[test]
    fn every_kind_round_trips_with_consecutive_numbers() {
        let (mut buf, expected) = every_kind();
        assert_eq!(buf.last_seq(), 15);
        let records = decode_all(&sealed(&mut buf));
        assert_eq!(records.len(), expected.len());
        for (i, (record, change)) in records.iter().zip(expected).enumerate() {
            assert_eq!(record.seq, 7 + i as u64);
            assert_eq!(record.epoch, 0);
            assert_eq!(record.change, change);
            if change == Change::EndAll {
                assert_eq!((record.tkn, record.slot), (0, NO_SLOT));
            } else {
                assert_eq!((record.tkn, record.slot), (42, 42));
            }
        }
        assert!(buf.take(None).is_none(), "taking empties the buffer");
    }

    #[test]
    fn an_unsealed_record_fails_its_crc() {
        let mut buf = ChangeBuffer::new(1);
        buf.end_session(9);
        let bytes = buf.take(None).unwrap().bytes;
        assert!(matches!(decode(&bytes), Err(RecordError::Corrupt(_))));
    }

    #[test]
    fn every_cut_is_incomplete_and_every_flipped_bit_is_caught() {
        let (mut buf, _) = every_kind();
        let bytes = sealed(&mut buf);
        let (_, first) = decode(&bytes).unwrap();
        for cut in 0..first {
            assert!(
                matches!(
                    decode(&bytes[..cut]),
                    Err(RecordError::Incomplete { .. } | RecordError::Corrupt(_))
                ),
                "cut at {cut}"
            );
        }
        for byte in 4..first {
            for bit in 0..8 {
                let mut damaged = bytes[..first].to_vec();
                damaged[byte] ^= 1 << bit;
                assert!(decode(&damaged).is_err(), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let mut bytes: Vec<u8> = (0..len)
                .map(|i| (state >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            if bytes.len() >= 8 {
                let crc = crc32fast::hash(&bytes[8..]);
                bytes[..4].copy_from_slice(&((len - 4) as u32).to_le_bytes());
                bytes[4..8].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = decode(&bytes);
        }
    }
}
